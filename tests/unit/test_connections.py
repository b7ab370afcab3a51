"""Connections: the cap on inbound TCP connections and the half-close.

Real libzmq sockets bound on loopback TCP, real peers (plain sockets, so
that the test sees exactly what a peer sees: libzmq's greeting, then the
end of the stream), and the monitor events libzmq really sends.
"""

import logging
import os
import socket
import time

import pytest
import zmq

from tests.support import TIMEOUT
from zmq_receiver import connections
from zmq_receiver import ipcfile
from zmq_receiver import metrics
from zmq_receiver import ratelimit


# -- connection_cap --------------------------------------------------------


def test_automatic_cap_leaves_the_outlets_their_share():
    assert connections.connection_cap(0, 65536, 2112) == 65536 - 2112


def test_automatic_cap_is_half_the_limit_when_the_outlets_want_more():
    assert connections.connection_cap(0, 1024, 2112) == 512


def test_configured_cap_is_kept_when_it_fits():
    assert connections.connection_cap(100, 65536, 2112) == 100


def test_configured_cap_too_large_is_lowered_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert connections.connection_cap(5000, 1024, 2112) == 512
    assert ('max_connections is 5000, but the descriptor limit of 1024 '
            'leaves room for 512' in caplog.text)
    assert 'raise LimitNOFILE=' in caplog.text


# -- against a real socket -------------------------------------------------


class Loop:
    """Sockets of one context, their Connections, and a loop of one that
    reads their monitors."""

    def __init__(self, cap, per_socket=0):
        self.ctx = zmq.Context()
        self.counters = metrics.Counters()
        self.conns = connections.Connections(
            cap, self.counters, ratelimit.RateLimitedLog(
                logging.getLogger('test'), 10.0), per_socket=per_socket)
        self.socks, self.monitors, self.peers = [], [], []

    def socket(self):
        sock = self.ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        self.socks.append(sock)
        return sock

    def run_until(self, predicate, what):
        """Handle monitor events until *predicate*() holds."""
        deadline = time.monotonic() + TIMEOUT
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError('%s: open %d, denied %s' % (
                    what, self.conns.open, dict(self.counters.denied)))
            for monitor in self.monitors:
                if monitor.poll(100 // len(self.monitors)):
                    self.conns.on_events(monitor)

    def close(self):
        for peer in self.peers:
            peer.close()
        self.conns.close()
        for sock in self.socks:
            sock.close(linger=0)
        self.ctx.term()


class Inbound(Loop):
    """A PULL bound on loopback TCP."""

    def __init__(self, cap):
        super().__init__(cap)
        self.sock = self.socket()
        self.monitor = self.conns.watch(self.sock, 0)
        self.monitors.append(self.monitor)
        self.sock.bind('tcp://127.0.0.1:0')
        self.port = int(self.sock.getsockopt_string(
            zmq.LAST_ENDPOINT).rsplit(':', 1)[1])
        self.conns.set_port(self.monitor, self.port)

    def connect(self):
        peer = socket.create_connection(('127.0.0.1', self.port),
                                        timeout=TIMEOUT)
        self.peers.append(peer)
        return peer


@pytest.fixture
def inbound():
    made = []

    def make(cap=10):
        made.append(Inbound(cap))
        return made[-1]

    yield make
    for each in made:
        each.close()


def read_to_end(peer):
    """Everything *peer* receives until the end of the stream."""
    data = b''
    while True:
        chunk = peer.recv(4096)
        if not chunk:
            return data
        data += chunk


def ended(peers):
    """How many of *peers* see the end of the stream (the others, kept
    open, see nothing within half a second)."""
    count = 0
    for peer in peers:
        peer.settimeout(0.5)
        try:
            read_to_end(peer)
        except socket.timeout:
            continue
        count += 1
    return count


def test_connections_over_the_cap_are_refused_and_counted(inbound):
    ib = inbound(cap=2)
    for _ in range(5):
        ib.connect()
    ib.run_until(lambda: ib.conns.open + ib.counters.denied[
        connections.TOO_MANY_CONNECTIONS] == 5, 'five connections seen')
    assert ib.conns.open == 2
    assert ib.counters.denied == {connections.TOO_MANY_CONNECTIONS: 3}
    # The refused ones are cut off: their peers see the end of the stream.
    assert ended(ib.peers) == 3


def test_a_closed_connection_frees_its_place(inbound):
    ib = inbound(cap=1)
    first = ib.connect()
    ib.run_until(lambda: ib.conns.open == 1, 'the first connection')
    first.close()
    ib.run_until(lambda: ib.conns.open == 0, 'the first one gone')
    ib.connect()
    ib.run_until(lambda: ib.conns.open == 1, 'the second connection')
    assert not ib.counters.denied


def test_half_close_ends_the_stream_and_waits_for_the_peer(inbound):
    ib = inbound()
    peers = [ib.connect() for _ in range(3)]
    ib.run_until(lambda: ib.conns.open == 3, 'three connections')
    ib.conns.half_close()
    for peer in peers:
        # libzmq's greeting, then the end: the peer may still send.
        read_to_end(peer)
        peer.sendall(b'still writable')
    assert ib.conns.open == 3
    for peer in peers:
        peer.close()
    ib.run_until(lambda: ib.conns.open == 0, 'the peers closing')


def test_a_connection_during_the_stop_is_half_closed_at_once(inbound):
    ib = inbound()
    ib.conns.half_close()
    peer = ib.connect()
    ib.run_until(lambda: ib.conns.open == 1, 'the connection')
    peer.settimeout(TIMEOUT)
    read_to_end(peer)
    peer.close()
    ib.run_until(lambda: ib.conns.open == 0, 'the peer closing')
    assert not ib.counters.denied


def test_shutdown_touches_only_connections_on_its_port(inbound):
    ib = inbound()
    # A descriptor that is no socket, a Unix socket, and a TCP connection
    # on another port: each may be what a stale event's number now is.
    read_end, write_end = os.pipe()
    unix_a, unix_b = socket.socketpair()
    other = socket.create_server(('127.0.0.1', 0))
    client = socket.create_connection(other.getsockname())
    accepted, _ = other.accept()
    try:
        for fd in (read_end, unix_a.fileno(), accepted.fileno()):
            assert not connections._shutdown(fd, ib.port, socket.SHUT_RDWR)
        # Untouched and still open: data still flows both ways.
        os.write(write_end, b'x')
        assert os.read(read_end, 1) == b'x'
        unix_b.sendall(b'y')
        assert unix_a.recv(1) == b'y'
        client.sendall(b'z')
        assert accepted.recv(1) == b'z'
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        for s in (unix_a, unix_b, other, client, accepted):
            s.close()
    closed = os.dup(0)
    os.close(closed)
    assert not connections._shutdown(closed, ib.port, socket.SHUT_RDWR)


# -- unix sockets: the outlets' and the control socket's caps ---------------


def test_local_caps_take_an_eighth_of_the_limit_a_quarter_per_socket():
    assert connections.local_caps(65536) == (8192, 2048)
    assert connections.local_caps(256) == (32, 8)
    # At least LOCAL_MIN, however low the limit.
    assert connections.local_caps(64) == (32, 8)


class Local(Loop):
    """Two PULL sockets bound on unix socket files, with a cap for all and
    one per socket."""

    def __init__(self, directory, cap, per_socket):
        super().__init__(cap, per_socket)
        self.paths = [os.path.join(directory, name) for name in 'ab']
        for path in self.paths:
            sock = self.socket()
            self.monitors.append(self.conns.watch(
                sock, path, reason=connections.TOO_MANY_CONSUMERS))
            sock.bind('ipc://' + path)

    def connect(self, index):
        peer = socket.socket(socket.AF_UNIX)
        peer.settimeout(TIMEOUT)
        peer.connect(self.paths[index])
        self.peers.append(peer)
        return peer


@pytest.fixture
def local(tmp_path):
    made = []

    def make(cap, per_socket):
        made.append(Local(str(tmp_path), cap, per_socket))
        return made[-1]

    yield make
    for each in made:
        each.close()


def denied(lc):
    return lc.counters.denied[connections.TOO_MANY_CONSUMERS]


def test_unix_connections_over_the_per_socket_cap_are_shut_down(local):
    lc = local(cap=10, per_socket=2)
    for _ in range(5):
        lc.connect(0)
    lc.run_until(lambda: lc.conns.open + denied(lc) == 5, 'five seen')
    assert (lc.conns.open, denied(lc)) == (2, 3)
    assert ended(lc.peers) == 3
    # The other socket still has its own share.
    lc.connect(1)
    lc.run_until(lambda: lc.conns.open == 3, 'the other socket')


def test_unix_connections_over_the_cap_of_all_are_shut_down(local):
    lc = local(cap=3, per_socket=2)
    for index in (0, 0, 1, 1):
        lc.connect(index)
    lc.run_until(lambda: lc.conns.open + denied(lc) == 4, 'four seen')
    assert (lc.conns.open, denied(lc)) == (3, 1)
    # A kept one that closes frees its place; a refused one frees none.
    lc.peers[0].close()
    lc.run_until(lambda: lc.conns.open == 2, 'a kept one gone')
    lc.connect(0)
    lc.run_until(lambda: lc.conns.open == 3, 'its place taken again')


def test_gone_counts_only_connections_that_were_admitted(local):
    # As the outlets use it: a consumer counts only when admitted, and
    # leaves only when it was.
    lc = local(cap=10, per_socket=2)
    assert not lc.conns.gone(12345, lc.paths[0])
    lc.connect(0)
    lc.run_until(lambda: lc.conns.open == 1, 'one connection')
    fd = next(iter(lc.conns._open))
    # A stale event of another socket with the same descriptor number.
    assert not lc.conns.gone(fd, lc.paths[1])
    assert lc.conns.gone(fd, lc.paths[0])
    assert lc.conns.open == 0


def test_forget_address_drops_the_connections_of_a_closed_socket(local):
    lc = local(cap=10, per_socket=5)
    for index in (0, 0, 1):
        lc.connect(index)
    lc.run_until(lambda: lc.conns.open == 3, 'three connections')
    lc.conns.forget_address(lc.paths[0])
    assert lc.conns.open == 1


def test_shutdown_on_a_unix_path_touches_only_its_own_connections(local,
                                                                   inbound):
    lc = local(cap=10, per_socket=10)
    ib = inbound()
    tcp = ib.connect()
    unix_a, unix_b = socket.socketpair()
    other = lc.connect(1)
    lc.run_until(lambda: lc.conns.open == 1, 'the connection to b')
    ib.run_until(lambda: ib.conns.open == 1, 'the TCP connection')
    try:
        # A TCP connection, an unnamed unix socket, and one accepted on
        # the other path are not connections on path a.
        fds = [fd for fd in list(ib.conns._open) + list(lc.conns._open)]
        fds.append(unix_a.fileno())
        for fd in fds:
            assert not connections._shutdown(fd, lc.paths[0],
                                             socket.SHUT_RDWR)
        unix_b.sendall(b'y')
        assert unix_a.recv(1) == b'y'
        # Still open: libzmq's greeting, not the end of the stream.
        assert other.recv(1)
    finally:
        unix_a.close()
        unix_b.close()
        tcp.close()


def test_a_socket_bound_in_a_private_directory_is_capped_too(tmp_path):
    # ipcfile binds in a private directory and renames the file into
    # place: its connections carry the name it was bound with, which
    # bound() gives; without it no connection would be recognised.
    lp = Loop(cap=10, per_socket=1)
    try:
        path = str(tmp_path / 'zmq_topic_x')
        sock = lp.socket()
        lp.monitors.append(lp.conns.watch(
            sock, path, reason=connections.TOO_MANY_CONSUMERS))
        ipcfile.bind(sock, path, 0o660)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        assert endpoint != 'ipc://' + path
        lp.conns.bound(path, endpoint)
        for _ in range(3):
            peer = socket.socket(socket.AF_UNIX)
            peer.settimeout(TIMEOUT)
            peer.connect(path)
            lp.peers.append(peer)
        lp.run_until(lambda: lp.conns.open + lp.counters.denied[
            connections.TOO_MANY_CONSUMERS] == 3, 'three seen')
        assert lp.conns.open == 1
        assert ended(lp.peers) == 2
    finally:
        lp.close()


# -- read_events -----------------------------------------------------------


def test_read_events_returns_every_waiting_event_and_nothing_when_none():
    # It stops on ZMQ_EVENTS rather than on a raised zmq.Again: no event
    # may be lost at the end of a read, and a read with none must not fail.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED |
                                      zmq.EVENT_DISCONNECTED)
    port = sock.bind_to_random_port('tcp://127.0.0.1')
    peers = []
    try:
        assert connections.read_events(monitor) == []
        for _ in range(5):
            peers.append(socket.create_connection(('127.0.0.1', port)))
        for peer in peers:
            peer.close()
        kinds = []
        deadline = time.monotonic() + TIMEOUT
        while len(kinds) < 10 and time.monotonic() < deadline:
            if monitor.poll(100):
                kinds.extend(kind for kind, _ in
                             connections.read_events(monitor))
        assert sorted(kinds) == sorted([zmq.EVENT_ACCEPTED] * 5 +
                                       [zmq.EVENT_DISCONNECTED] * 5)
        assert connections.read_events(monitor) == []
    finally:
        for peer in peers:
            peer.close()
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()
