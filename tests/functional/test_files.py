"""The files the daemon makes in the IPC directory, and a graceful stop.

PROTOCOL.md section 5: consumers need write permission on the socket files,
so their mode and group decide who can connect (a directory per project, or
a shared setgid group directory). Section 4: the old receiver left every
socket file behind and dropped everything in flight on SIGTERM; this one
drains its backlogs for up to shutdown_timeout, removes every file it made
and exits 0, and a second SIGTERM stops it at once.
"""

import grp
import os
import re
import signal
import socket
import stat
import time

import pytest
import zmq

from tests import support
from tests.support import cast, pull, recv

LOCK = '.zmq-receiver.lock'
CONTROL = '.zmq-receiver-control'


def other_group():
    """An existing group that is not root's, or skip."""
    for name in ('daemon', 'nogroup', 'bin', 'sys', 'adm', 'users'):
        try:
            entry = grp.getgrnam(name)
        except KeyError:
            continue
        if entry.gr_gid != os.getgid():
            return entry
    pytest.skip('no group other than the test user\'s own exists')


def open_outlets(ctx, daemon, topics):
    """Make an outlet for each topic and wait until they all exist."""
    out = support.sender(ctx, daemon)
    for topic in topics:
        out.send_multipart(cast(topic))
    daemon.wait_stats(lambda s: s['outlets'] == len(topics))
    # All read by the receiver: the sender has done its part.
    out.close()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def stop_when_ready(daemon, signum=signal.SIGTERM):
    # Only once the control socket answers are the signal handlers in
    # place; before that a SIGTERM would simply kill the process.
    daemon.stats()
    daemon.signal(signum)


# -- modes and groups --


def test_socket_files_are_0660_by_default(ctx, receiver):
    open_outlets(ctx, receiver, ['compute.host1', 'fanout~compute.host1'])
    for key in ('compute.host1', 'fanout~compute'):
        path = receiver.path(key)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert mode(path) == 0o660, oct(mode(path))
    assert mode(os.path.join(receiver.ipc_dir, CONTROL)) == 0o660


def test_socket_mode_0600_when_configured(ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'socket_mode': '0600'}})
    open_outlets(ctx, daemon, ['compute.host1', 'zmq_replies.testhost'])
    for key in ('compute.host1', 'zmq_replies.testhost'):
        assert mode(daemon.path(key)) == 0o600, oct(mode(daemon.path(key)))
    assert mode(os.path.join(daemon.ipc_dir, CONTROL)) == 0o600


def test_stale_socket_file_from_an_earlier_run_is_replaced(ctx, daemons,
                                                          short_dir):
    ipc_dir = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc_dir, 0o755)
    path = os.path.join(ipc_dir, 'zmq_topic_compute.host1')
    # What a receiver killed with SIGKILL leaves: a socket file nobody
    # listens on.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    stale_inode = os.stat(path).st_ino
    # A service that kept running meanwhile, retrying its connect.
    consumer = ctx.socket(zmq.PULL)
    consumer.connect('ipc://' + path)
    daemon = daemons(short_dir)
    frames = cast('compute.host1')
    out = support.sender(ctx, daemon)
    out.send_multipart(frames)
    assert recv(consumer) == frames
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert st.st_ino != stale_inode
    assert stat.S_IMODE(st.st_mode) == 0o660
    support.close_all(consumer, out)


def test_setgid_directory_gives_its_group_to_the_sockets(ctx, daemons,
                                                        short_dir):
    group = other_group()
    ipc_dir = os.path.join(short_dir, 'ipc')
    # The shared-group model: install -d -m 2775 -g <group> <dir>.
    os.mkdir(ipc_dir)
    os.chown(ipc_dir, -1, group.gr_gid)
    os.chmod(ipc_dir, 0o2775)
    daemon = daemons(short_dir)
    open_outlets(ctx, daemon, ['compute.host1', 'fanout~compute.host1'])
    for key in ('compute.host1', 'fanout~compute'):
        st = os.stat(daemon.path(key))
        assert st.st_gid == group.gr_gid, (st.st_gid, group)
        assert stat.S_IMODE(st.st_mode) == 0o660
    assert os.stat(ipc_dir).st_mode & stat.S_ISGID


def test_socket_group_sets_the_group_of_the_files(ctx, daemons, short_dir):
    group = other_group()
    daemon = daemons(short_dir, {'zmq_receiver': {
        'socket_group': group.gr_name}})
    open_outlets(ctx, daemon, ['compute.host1', 'zmq_replies.testhost'])
    for key in ('compute.host1', 'zmq_replies.testhost'):
        assert os.stat(daemon.path(key)).st_gid == group.gr_gid
    # It works through the file, not just on it.
    consumer = pull(ctx, daemon, 'compute.host1')
    frames = cast('compute.host1', b'second')
    out = support.sender(ctx, daemon)
    out.send_multipart(frames)
    assert recv(consumer)[1] == b'compute.host1'
    support.close_all(consumer, out)


def test_unknown_socket_group_is_a_configuration_error(short_dir):
    name = 'zr-no-such-group'
    with pytest.raises(KeyError):
        grp.getgrnam(name)
    daemon = support.Daemon(short_dir, {'zmq_receiver': {
        'socket_group': name}})
    status, output = support.run_receiver(daemon.args, cwd=short_dir)
    assert status == 78, output
    assert 'socket_group' in output and name in output
    assert 'Traceback' not in output
    # It stopped before making anything.
    assert not os.path.exists(daemon.ipc_dir)


# -- a graceful stop --


def test_sigterm_removes_every_file_and_exits_0(ctx, daemons, short_dir):
    # No join window: a reply nobody awaits would hold the drain for it.
    daemon = daemons(short_dir, {'zmq_receiver': {'join_window': 0}})
    consumer = pull(ctx, daemon, 'compute.host1')
    listener = ctx.socket(zmq.SUB)
    listener.setsockopt(zmq.SUBSCRIBE, b'')
    listener.connect(daemon.outlet('fanout~compute'))
    open_outlets(ctx, daemon, ['compute.host1', 'fanout~compute.host1',
                               'zmq_replies.testhost'])
    recv(consumer)
    assert sorted(os.listdir(daemon.ipc_dir)) == sorted([
        LOCK, CONTROL, 'zmq_topic_compute.host1',
        'zmq_topic_fanout~compute', 'zmq_topic_zmq_replies.testhost'])
    stop_when_ready(daemon)
    assert daemon.wait() == 0
    # Connected consumers are no reason to leave a file behind.
    assert os.listdir(daemon.ipc_dir) == []
    support.close_all(consumer, listener)


def test_connected_consumer_gets_the_backlog_at_a_stop(ctx, daemons,
                                                      short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'shutdown_timeout': 20}})
    out = support.sender(ctx, daemon)
    consumer, sent = support.backlog_behind_consumer(ctx, daemon, out,
                                                     'drain.host1')
    stop_when_ready(daemon)
    daemon.wait_for(r'Stopping: delivering [1-9]\d* queued messages to '
                    r'connected consumers')
    assert daemon.proc.poll() is None  # waiting for the consumer
    assert [recv(consumer) for _ in sent] == sent
    # Done as soon as the backlog is out, far within the 20 s.
    assert daemon.wait(timeout=support.TIMEOUT) == 0
    assert re.search(r'Stopped\. received=%d forwarded=%d rejected\[0\] '
                     r'dropped\[0\] queued=0' % (len(sent), len(sent)),
                     daemon.log()), daemon.log()
    assert os.listdir(daemon.ipc_dir) == []
    support.close_all(out, consumer)


def test_drain_to_a_stalled_consumer_gives_up_after_the_timeout(
        ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'shutdown_timeout': 0.3}})
    out = support.sender(ctx, daemon)
    # Kept: once collected, the consumer would be gone.
    consumer, _ = support.backlog_behind_consumer(ctx, daemon, out,
                                                  'stalled.host1')
    queued = daemon.stats()['queued']
    started = time.monotonic()
    stop_when_ready(daemon)
    assert daemon.wait(timeout=5) == 0
    assert time.monotonic() - started < 3
    log = daemon.log()
    assert re.search(r'Outlet \S+zmq_topic_stalled\.host1 closed with %d '
                     r'undelivered messages \(shutdown\)' % queued, log), log
    assert re.search(r'Stopped\. .*dropped\[shutdown=%d\] queued=0'
                     % queued, log), log
    assert os.listdir(daemon.ipc_dir) == []
    support.close_all(out, consumer)


def test_second_sigterm_during_the_drain_stops_at_once(ctx, daemons,
                                                      short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'shutdown_timeout': 60}})
    out = support.sender(ctx, daemon)
    # Kept: once collected, the consumer would be gone.
    consumer, _ = support.backlog_behind_consumer(ctx, daemon, out,
                                                  'stalled.host1')
    queued = daemon.stats()['queued']
    stop_when_ready(daemon)
    daemon.wait_for(r'Stopping: delivering %d queued messages' % queued)
    assert daemon.proc.poll() is None
    daemon.signal(signal.SIGTERM)
    daemon.wait_for(r'Second stop request')
    # Nowhere near the 60 s the first one allowed.
    assert daemon.wait(timeout=5) == 0
    assert re.search(r'dropped\[shutdown=%d\]' % queued,
                     daemon.log()), daemon.log()
    assert os.listdir(daemon.ipc_dir) == []
    support.close_all(out, consumer)
