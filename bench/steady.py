"""Steady state: the receiver's RSS at a fixed rate for minutes.

``python -m bench.steady --minutes 10 --rate 140000`` drives the real
receiver with the benchmark's compiled generator and consumers (the soak's
Python endpoints and its per-message accounting top out near 100k msg/s),
in the 100-topic case by default, and samples the receiver's RSS every
second. The consumers check that every message arrived. It prints the
median and the peak of each minute and fails (exit 1) when a message was
lost or when the median of the last minute is more than ``--max-growth``
above that of the second (the first holds start-up and warm-up).
"""

import argparse
import shutil
import statistics
import sys
import tempfile

from bench import build as build_mod
from bench import cases


def minutes(samples):
    """[(minute, median KiB, peak KiB)] of (seconds, KiB) *samples*."""
    by_minute = {}
    for t, kib in samples:
        by_minute.setdefault(int(t // 60), []).append(kib)
    return [(m, statistics.median(v), max(v))
            for m, v in sorted(by_minute.items())]


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='python -m bench.steady',
        description='The receiver\'s RSS at a fixed rate, C endpoints.')
    p.add_argument('--minutes', type=float, default=10.0)
    p.add_argument('--rate', type=int, default=140000,
                   help='messages per second (default: about half the '
                        '100-topic peak measured on 2 cores)')
    p.add_argument('--case', default='recv100',
                   choices=['recv1', 'recv100', 'fanout'])
    p.add_argument('--size', type=int, default=200, help='body bytes')
    p.add_argument('--max-growth', type=float, default=0.10,
                   help='allowed rise of the per-minute median RSS')
    args = p.parse_args(argv)
    seconds = args.minutes * 60
    tmp_root = tempfile.mkdtemp(prefix='zbench-', dir='/tmp')
    try:
        endpoints = build_mod.build(tmp_root)
        print('%s; %s at %d msg/s for %g min' % (
            endpoints.note or endpoints.kind, args.case, args.rate,
            args.minutes), file=sys.stderr)
        result = cases.throughput(
            endpoints, tmp_root, args.case, args.size,
            int(args.rate * seconds), seconds + 120, rate=args.rate,
            sample_rss=1.0)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    rows = minutes(result.get('rss_samples', []))
    print('minute  median RSS  peak RSS')
    for m, median, peak in rows:
        print('%6d  %7.1f MiB  %5.1f MiB' % (m, median / 1024, peak / 1024))
    print('sent %d, received %d of %d, complete %s; %.0f msg/s' % (
        result['n'], result['received'], result['expected'],
        result['complete'], result.get('msgs_per_s', 0)))
    ok = result['complete']
    if len(rows) >= 3:
        growth = rows[-1][1] / rows[1][1] - 1
        print('median RSS, last minute against the second: %+.1f %%' %
              (100 * growth))
        ok = ok and growth <= args.max_growth
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
