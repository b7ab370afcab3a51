"""The processes the suite starts get the environment their test sets, not
the caller's.

Run under a notify service or a container manager, pytest itself has
NOTIFY_SOCKET, JOURNAL_STREAM or LISTEN_FDS: a receiver that inherited them
would try to notify a socket no one reads, or log for a journal that is not
there. support.clean_env builds every child's environment from an
allow-list, and support.Daemon.start checks each daemon's
/proc/<pid>/environ.
"""

import subprocess
import sys

import pytest

from tests import support

#: What a service manager puts in the environment of whatever it starts.
POLLUTION = {'NOTIFY_SOCKET': '/nonexistent', 'JOURNAL_STREAM': '1:1',
             'LISTEN_FDS': '3', 'LISTEN_PID': '1',
             'OS_DEFAULT__RPC_ZMQ_PORT': '1'}


@pytest.fixture
def polluted(monkeypatch):
    """The pytest process's environment as a notify service gives it."""
    for name, value in POLLUTION.items():
        monkeypatch.setenv(name, value)


def test_a_daemon_gets_only_what_its_test_sets(ctx, daemons, short_dir,
                                               polluted):
    daemon = daemons(short_dir, env={'ZMQ_RECEIVER_TEST_MARK': 'yes'})
    env = support.process_env(daemon.proc.pid)
    assert env['ZMQ_RECEIVER_TEST_MARK'] == 'yes'
    assert env['PYTHONPATH'] == support.REPO
    assert not set(POLLUTION) & set(env), env
    # And it works: the port came from its config, not OS_DEFAULT__*.
    assert daemon.port != 1
    out = support.sender(ctx, daemon)
    consumer = support.pull(ctx, daemon, 'compute.h')
    frames = support.cast('compute.h')
    out.send_multipart(frames)
    assert support.recv(consumer) == frames
    support.close_all(out, consumer)


def started(**popen):
    """A child that waits on its stdin, once it runs: /proc/<pid>/environ
    shows the child's own environment only after its exec, before that the
    one pytest started with."""
    proc = subprocess.Popen(
        [sys.executable, '-c', 'import sys; print(flush=True); '
                               'sys.stdin.read()'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, **popen)
    proc.stdout.readline()
    return proc


def test_what_a_test_asks_for_is_passed(polluted, tmp_path):
    asked = str(tmp_path / 'notify')
    proc = started(env=support.clean_env(NOTIFY_SOCKET=asked))
    try:
        assert support.process_env(proc.pid)['NOTIFY_SOCKET'] == asked
        support.check_not_inherited(proc.pid, {'NOTIFY_SOCKET': asked})
    finally:
        proc.communicate()


def test_the_check_fails_on_an_inherited_variable(polluted):
    # What a helper that passed os.environ on would start.
    proc = started()
    try:
        with pytest.raises(AssertionError, match='inherited JOURNAL_STREAM, '
                                                 'LISTEN_FDS, LISTEN_PID, '
                                                 'NOTIFY_SOCKET'):
            support.check_not_inherited(proc.pid, {})
    finally:
        proc.communicate()
