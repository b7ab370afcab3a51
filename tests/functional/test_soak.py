"""A short soak (bench/soak.py) as CI runs it: 20 s at 500 msg/s.

Topic churn every 5 s (the old outlets reaped after 2 s idle) and a
consumer killed and restarted every 6 s. Every message sent must be
received, counted by the receiver as dropped or rejected, or be one a
killed consumer had taken; nothing duplicated or reordered; the receiver's
RSS stays under 128 MiB and its open files under 128 (8 outlets of 4
descriptors each, two generations at a churn, plus connections and the
interpreter's own). ``./dev soak`` runs the long version.
"""

import json
import os
import subprocess
import sys

import pytest

from tests import support

# 20 s of traffic, plus the receiver's start and the accounting after: far
# over the suite's 30 s per test on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SECONDS = 20
MAX_RSS_MIB = 128
MAX_FILES = 128


def test_short_soak(tmp_path):
    out = str(tmp_path / 'soak.json')
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.soak', '--seconds', str(SECONDS),
         '--rate', '500', '--churn', '5', '--restart', '6',
         '--idle-timeout', '2', '--report', '5',
         '--max-rss-mib', str(MAX_RSS_MIB), '--max-files', str(MAX_FILES),
         '--json', out],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=support.REPO, timeout=SECONDS + 60,
        env=support.clean_env())
    print(proc.stdout)
    assert os.path.exists(out), proc.stdout
    with open(out) as f:
        result = json.load(f)
    summary = {k: v for k, v in result.items() if k != 'samples'}
    assert proc.returncode == 0, summary
    assert result['unexplained'] == 0, summary
    assert result['duplicated'] == 0 and result['reordered'] == 0, summary
    assert result['caught_up'], summary
    assert result['receiver_exit'] == 0, summary
    assert result['sent'] >= 500 * SECONDS * 0.9, summary
    assert result['consumer_restarts'] >= 2, summary
    assert result['topic_churns'] >= 2, summary
    # Churned topics were reaped, not kept for ever.
    assert result['outlets_reaped'] >= 4, summary
    assert result['max_rss_kib'] <= MAX_RSS_MIB * 1024, summary
    assert result['max_open_files'] <= MAX_FILES, summary
    # Every loss is explained: by a killed consumer, or by a counter.
    assert result['lost'] <= (result['lost_in_consumer_restarts'] +
                              result['counted_by_receiver']), summary
    assert len(result['samples']) >= SECONDS - 2, summary
