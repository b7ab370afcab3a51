"""libzmq's abort on EMFILE in its IPC listener, and the guard against it
(issue 12: local connections exhaust descriptors).

libzmq 4.3 aborts the process when ``accept`` on a unix socket fails with
EMFILE (an errno_assert in ipc_listener.cpp); zmq_receiver.wire.guard_accept
makes it see ENFILE instead, which it survives. To reach EMFILE at once
rather than by racing the receiver's connection caps, the test lowers the
running daemon's descriptor limit (prlimit) to a few above what it has
open, then connects to an outlet until the listen backlog is full: by then
libzmq has run out of descriptors and tried to accept more. With the guard
the daemon lives and forwards on its open connections; with it turned off
(ZMQ_RECEIVER_NO_ACCEPT_PATCH=1, for this test only) it aborts.
"""

import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import support
from tests.functional.test_hostile_local import forward_casts
from tests.support import assert_balanced, cast, pull, recv, wait_until
from zmq_receiver import wire

#: The daemon's limit at start: its caps are computed from it (8 unix
#: connections per socket), well above what it is left with.
NOFILE = 256
#: Descriptors left free once the limit is lowered: fewer than the cap of
#: one outlet, so that none of the connections is refused by the receiver
#: (which would free its descriptor) before libzmq runs out.
SPARE = 3
#: Connections made: SPARE accepted, the rest queued in the backlog
#: (outlets.LISTEN_BACKLOG) while libzmq has no descriptor for them.
FLOOD = SPARE + 2
UNGUARDED = 'ZMQ_RECEIVER_NO_ACCEPT_PATCH'
WARNING = 'cannot be kept from it because'


def open_fds(pid):
    return [int(name) for name in os.listdir('/proc/%d/fd' % pid)]


def leave_spare(pid, spare):
    """Lower *pid*'s soft descriptor limit so that *spare* descriptors
    remain free below it (holes below its highest one count)."""
    fds = set(open_fds(pid))
    limit = len(fds)
    while limit - len([fd for fd in fds if fd < limit]) < spare:
        limit += 1
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, NOFILE))
    return limit


def flood(path, wanted):
    """Connect to *path* until *wanted* connections are in (accepted or
    queued: the listen backlog takes a few more than libzmq accepts) or
    it is gone; the connections, still open."""
    conns = []
    deadline = time.monotonic() + support.TIMEOUT
    while len(conns) < wanted:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.setblocking(False)
        try:
            conn.connect(path)
        except BlockingIOError:
            # The backlog is full until libzmq accepts more.
            conn.close()
            assert time.monotonic() < deadline, len(conns)
            time.sleep(0.001)
            continue
        except (ConnectionRefusedError, FileNotFoundError):
            conn.close()  # no one listens any more
            break
        conns.append(conn)
    return conns


def start(ctx, daemons, short_dir, env):
    daemon = daemons(short_dir, nofile=NOFILE, env=env)
    key = 'guard.host1'
    consumer = pull(ctx, daemon, key)
    out = support.sender(ctx, daemon)
    # The outlet exists, its consumer and the sender are connected: what
    # follows needs no new descriptor.
    forward_casts(out, consumer, key, 1, b'before')
    return daemon, key, consumer, out


@pytest.mark.parametrize('pure_python', [False, True],
                         ids=['compiled', 'pure-python'])
def test_guarded_receiver_survives_emfile_on_its_outlets(
        ctx, daemons, short_dir, pure_python):
    # The guard is the extension's, whichever loop forwards.
    assert wire.FAST, wire.FAST_PROBLEM
    env = {'ZMQ_RECEIVER_PURE_PYTHON': '1'} if pure_python else {}
    daemon, key, consumer, out = start(ctx, daemons, short_dir, env)
    assert WARNING not in daemon.log()
    pid = daemon.proc.pid
    limit = leave_spare(pid, SPARE)
    conns = []
    try:
        conns = flood(daemon.path(key), FLOOD)
        assert conns, 'no connection got in'
        # Every descriptor below the limit is used: libzmq's accept has
        # failed with EMFILE, and the kernel queues the rest.
        wait_until(lambda: daemon.proc.poll() is not None or
                   len(open_fds(pid)) >= limit,
                   'the daemon using its %d descriptors' % limit)
        assert daemon.proc.poll() is None, daemon.log()[-2000:]
        forward_casts(out, consumer, key, 3, b'during')
        assert daemon.proc.poll() is None
    finally:
        for conn in conns:
            conn.close()
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    # The queued connections are accepted (and shut down over the cap) as
    # descriptors come back; the control socket answers again.
    stats = daemon.wait_stats(lambda s: s['local_connections'] == 1 + 1)
    print('GUARD: %d connections under a limit of %d; denied %s; accepts '
          'retried %d' % (len(conns), limit, stats['denied'],
                          stats['accept_emfile_retries']))
    # Counted where the operator sees it.
    assert stats['accept_emfile_retries'] > 0
    assert 'Too many open files' not in daemon.log()
    fresh = pull(ctx, daemon, 'fresh.host1')
    frames = cast('fresh.host1', b'new consumer')
    out.send_multipart(frames)
    assert recv(fresh) == frames
    forward_casts(out, consumer, key, 1, b'after')
    assert_balanced(daemon.stats())
    assert daemon.proc.poll() is None
    support.close_all(fresh, consumer, out)


def test_unguarded_libzmq_aborts_on_emfile(ctx, daemons, short_dir):
    """What the guard prevents, shown (and the flood above shown to reach
    EMFILE): without it, libzmq 4.3 aborts the receiver. Should a libzmq
    release stop doing so, this fails: the guard is then no longer
    needed with it."""
    # The consumer and the sender stay connected: each holds one of the
    # daemon's descriptors, which leave_spare counts as used.
    daemon, key, consumer, out = start(ctx, daemons, short_dir,
                                       {UNGUARDED: '1'})
    assert WARNING + ' %s is set' % UNGUARDED in daemon.log()
    pid = daemon.proc.pid
    # No core file for an abort that is expected.
    resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
    leave_spare(pid, SPARE)
    conns = flood(daemon.path(key), FLOOD)
    try:
        status = daemon.proc.wait(timeout=support.TIMEOUT)
    finally:
        for conn in conns:
            conn.close()
    assert status == -signal.SIGABRT, daemon.log()[-2000:]
    wait_until(lambda: 'Too many open files (src/ipc_listener.cpp' in
               daemon.log(), 'libzmq\'s assertion in the log')
    support.close_all(consumer, out)


#: A process that binds a unix and a TCP socket, guards libzmq's accept,
#: uses up its descriptors, and reports the errno of the first failed
#: accept on each socket (libzmq's ACCEPT_FAILED event) once the test has
#: connected to both.
CHILD = r'''
import errno, os, resource, sys, zmq
from zmq.utils.monitor import recv_monitor_message
from zmq_receiver import wire
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
ctx = zmq.Context()
unix, tcp = ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
monitors = [s.get_monitor_socket(zmq.EVENT_ACCEPT_FAILED) for s in (unix, tcp)]
unix.bind('ipc://' + sys.argv[1])
port = tcp.bind_to_random_port('tcp://127.0.0.1')
assert wire.guard_accept(), wire.ACCEPT_GUARD_PROBLEM
held = []
while True:
    try:
        held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE
        break
print(port, flush=True)
# libzmq's I/O thread waits while a monitor's queue is full (the failed
# accepts repeat): read both as events come, never one only.
poller = zmq.Poller()
for m in monitors:
    poller.register(m, zmq.POLLIN)
seen = {}
while len(seen) < 2:
    for m, _ in poller.poll():
        value = recv_monitor_message(m)['value']
        seen.setdefault(monitors.index(m), value)
for fd in held:
    os.close(fd)
print(errno.errorcode[seen[0]], errno.errorcode[seen[1]],
      wire.guarded_emfiles() > 0, flush=True)
'''


def test_guard_reports_emfile_as_enfile_on_unix_sockets_only(short_dir):
    path = os.path.join(short_dir, 'guarded')
    child = subprocess.Popen(
        [sys.executable, '-c', CHILD, path], stdout=subprocess.PIPE,
        env=support.clean_env(), text=True)
    conns = []
    try:
        port = int(child.stdout.readline())
        conns.append(socket.create_connection(('127.0.0.1', port)))
        conns.append(socket.socket(socket.AF_UNIX))
        conns[-1].connect(path)
        out, _ = child.communicate(timeout=support.TIMEOUT)
    finally:
        for conn in conns:
            conn.close()
        child.kill()
        child.wait()
    # (Unguarded, the unix socket's accept would have aborted it.)
    assert out.split() == ['ENFILE', 'EMFILE', 'True'], out
    assert child.returncode == 0
