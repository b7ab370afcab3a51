"""Logging into systemd's journal stream: priorities, no doubled prefix.

The daemon's stdout and stderr are one pipe, and ``JOURNAL_STREAM`` holds
that pipe's real device and inode, as systemd sets them for a unit whose
output goes to journald (support.Daemon's *journal*). journald reads a
leading ``<N>`` as the line's priority and stamps time and pid itself.
"""

import os
import re
import signal

import pytest

from tests import support
from zmq_receiver import errors

#: oslo.log's default line: date, time, pid, level.
OSLO_PREFIX = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \d+ ')
JOURNAL_LINE = re.compile(r'^<[0-7]>[A-Z]+ [\w.]+: ')


def journal_daemon(directory, options=None, **kwargs):
    return support.Daemon(directory, options, journal=True, **kwargs)


@pytest.fixture
def started():
    """support.Daemon objects to kill at the end."""
    daemons = []
    yield daemons
    for daemon in daemons:
        daemon.kill()


@pytest.mark.skipif(os.geteuid() != 0,
                    reason='the RUNNING AS ROOT warning needs root')
def test_lines_carry_their_priority_and_no_timestamp(short_dir, started):
    daemon = journal_daemon(short_dir)
    started.append(daemon)
    daemon.start()
    # Before the listening line that start() waited for.
    assert any(line.startswith('<4>WARNING zmq_receiver.cli: RUNNING AS '
                               'ROOT') for line in daemon.lines), daemon.log()
    with open(daemon.config_file, 'a') as f:
        f.write('\n[zmq_receiver\nidle_timeout 5\n')
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(r'^<3>ERROR zmq_receiver\.receiver: Reload failed')
    assert daemon.stop() == errors.EXIT_OK
    lines = daemon.lines
    assert any(re.match(r'<6>INFO zmq_receiver\.cli: \S+ \S+ listening on '
                        r'tcp://127\.0\.0\.1:\d+,', line) for line in lines)
    for line in lines:
        assert JOURNAL_LINE.match(line), line
        assert str(daemon.proc.pid) not in line.split(':')[0], line
        assert not re.search(r'\d\d:\d\d:\d\d', line), line


def test_a_startup_error_is_one_error_line(short_dir, started):
    # After the logging setup: the log line, and not the stderr one again.
    ipc = os.path.join(short_dir, 'ipc')
    os.symlink(short_dir, ipc)
    daemon = journal_daemon(short_dir)
    started.append(daemon)
    daemon.start(wait_ready=False)
    assert daemon.wait() == errors.EXIT_PERMISSION
    said = [line for line in daemon.lines if 'symbolic link' in line]
    assert len(said) == 1, daemon.log()
    assert said[0].startswith('<3>ERROR zmq_receiver.cli: IPC directory %s '
                              'is a symbolic link' % ipc), said


def test_a_config_error_before_the_logging_setup_is_an_error_line(
        short_dir, started):
    daemon = journal_daemon(short_dir, {'DEFAULT': {'rpc_zmq_port': 'http'}})
    started.append(daemon)
    daemon.start(wait_ready=False)
    assert daemon.wait() == errors.EXIT_CONFIG
    assert [line[:3] for line in daemon.lines] == ['<3>'], daemon.log()
    assert 'rpc_zmq_port' in daemon.lines[0]


@pytest.mark.parametrize('env', [{}, {'JOURNAL_STREAM': '1:1'}],
                         ids=['unset', 'another-stream'])
def test_without_the_journal_stream_the_format_is_unchanged(
        short_dir, started, env):
    # A shell started from a unit inherits JOURNAL_STREAM; its output is a
    # terminal or pipe of its own.
    daemon = support.Daemon(short_dir, env=env)
    started.append(daemon)
    daemon.start()
    assert daemon.stop() == errors.EXIT_OK
    assert daemon.lines
    for line in daemon.lines:
        assert OSLO_PREFIX.match(line) and not line.startswith('<'), line
