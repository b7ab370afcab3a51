"""ZMTP 1.0 and 2.0 senders and allowed_networks, through the real daemon.

Distro stacks of Grizzly to Icehouse send with libzmq 2.x (ZMTP 1.0,
ZeroMQ RFC 13) and 3.x (ZMTP 2.0, RFC 15). Neither has a security
handshake, so libzmq's ZAP cannot check them: the receiver enforces the
allow-list of its legacy port with a kernel filter and a check at accept
(zmq_receiver/peerfilter.py, connections.py). The peers here are written by
hand over plain TCP sockets, from an allowed (127.0.0.1) and a refused
(127.0.0.2) loopback address; tests/functional/test_access.py has the ZMTP
3 and CURVE cases.
"""

import os
import re
import signal
import socket
import struct

import pytest
import zmq

from tests import support
from tests.functional.test_access import ALLOWED_SOURCE, DENIED_SOURCE
from tests.functional.test_access import denied, pull, sender_from
from tests.support import cast, recv
from zmq_receiver import errors
from zmq_receiver import inputs

ZMTP_PUSH = 0x08
#: Refused connections per case: enough that a message slipping through
#: before the refusal would show (it did, before the kernel filter).
REFUSED_CONNECTIONS = 20


class LegacyPeer:
    """A PUSH sender speaking ZMTP 1.0 (*version* 1) or 2.0 (2) over a
    plain TCP connection from address *source* to *port*."""

    def __init__(self, version, port, source):
        self.version = version
        self.conn = socket.socket()
        self.conn.settimeout(support.TIMEOUT)
        self.conn.bind((source, 0))
        self.conn.connect(('127.0.0.1', port))

    def greeting(self):
        """What the peer sends first."""
        if self.version == 1:
            # RFC 13: the greeting is the identity message, here anonymous.
            return self.message([b''])
        # RFC 15: signature (libzmq 3.x puts the ZMTP 1.0 identity length
        # + 1 in its padding), revision 1, socket type, identity frame.
        return (b'\xff' + struct.pack('>Q', 1) + b'\x7f' + b'\x01' +
                bytes([ZMTP_PUSH]) + self.message([b'']))

    def message(self, frames):
        """*frames* encoded as one ZMTP 1.0 or 2.0 message."""
        out = b''
        for i, body in enumerate(frames):
            more = int(i < len(frames) - 1)
            if self.version == 1:
                # length (counting the flags octet), flags, body
                size = len(body) + 1
                head = (bytes([size]) if size < 255 else
                        b'\xff' + struct.pack('>Q', size))
                out += head + bytes([more]) + body
            elif len(body) < 256:
                out += bytes([more, len(body)]) + body
            else:
                out += bytes([more | 0x02]) + struct.pack('>Q', len(body))
                out += body
        return out

    def send(self, *messages, greeting=False):
        """Send *messages* (lists of frames), after the greeting if asked,
        in one write, as a peer that does not wait for the receiver."""
        data = self.greeting() if greeting else b''
        self.conn.sendall(data + b''.join(self.message(m) for m in messages))

    def closed_by_receiver(self):
        """Whether the receiver ends the connection (before the timeout);
        what it sent before (its greeting) is read and ignored."""
        try:
            while self.conn.recv(4096):
                pass
        except socket.timeout:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self):
        self.conn.close()


@pytest.fixture
def peers():
    """Make LegacyPeer(version, port, source); all closed at the end."""
    made = []

    def make(version, port, source):
        peer = LegacyPeer(version, port, source)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def allow_only(daemons, short_dir, networks='127.0.0.1'):
    return daemons(short_dir, {'zmq_receiver': {
        'allowed_networks': networks, 'log_interval': 3600}})


LONG = b'x' * 300  # a long frame: the 8-octet length of both versions


@pytest.mark.parametrize('version', [1, 2])
def test_legacy_sender_without_an_allow_list(ctx, receiver, peers, version):
    consumer = pull(ctx, receiver, 'compute.host1')
    peer = peers(version, receiver.port, DENIED_SOURCE)
    peer.send(cast('compute.host1', b'plain'), greeting=True)
    assert recv(consumer) == cast('compute.host1', b'plain')
    support.close_all(consumer)


@pytest.mark.parametrize('version', [1, 2])
def test_allowed_legacy_sender_is_forwarded(ctx, daemons, short_dir, peers,
                                            version):
    daemon = allow_only(daemons, short_dir)
    consumer = pull(ctx, daemon, 'compute.host1')
    peer = peers(version, daemon.port, ALLOWED_SOURCE)
    sent = [cast('compute.host1', b'first'),
            cast('compute.host1', LONG),
            [b'7', b'compute.host1', b'cast', b'a', b'b', LONG],
            # Many large TCP segments through the kernel filter.
            cast('compute.host1', b'y' * (4 << 20))]
    peer.send(*sent, greeting=True)
    assert [recv(consumer) for _ in sent] == sent
    # Later writes on the same connection too.
    peer.send(cast('compute.host1', b'later'))
    assert recv(consumer)[3] == b'later'
    stats = daemon.stats()
    assert stats['denied'] == {}
    assert stats['connections'] == 1
    support.close_all(consumer)


@pytest.mark.parametrize('version', [1, 2])
def test_refused_legacy_sender_is_counted_logged_and_never_forwarded(
        ctx, daemons, short_dir, peers, version):
    daemon = allow_only(daemons, short_dir)
    consumer = pull(ctx, daemon, 'compute.host1')
    refused = []
    for i in range(REFUSED_CONNECTIONS):
        # Greeting and messages in one write, before the receiver can look
        # at the connection: the hardest case.
        peer = peers(version, daemon.port, DENIED_SOURCE)
        peer.send(cast('compute.host1', b'refused %d' % i),
                  cast('compute.host1', LONG), greeting=True)
        refused.append(peer)
    for peer in refused:
        assert peer.closed_by_receiver()
    daemon.wait_stats(lambda s: denied(s) == REFUSED_CONNECTIONS)
    # An allowed sender's message, sent after, arrives; none of the
    # refused ones' ever does.
    friend = peers(version, daemon.port, ALLOWED_SOURCE)
    friend.send(cast('compute.host1', b'allowed'), greeting=True)
    assert recv(consumer)[3] == b'allowed'
    assert support.nothing_arrives(consumer, 0.5)
    stats = daemon.stats()
    assert stats['received'] == 1, stats
    assert stats['connections'] == 1, stats
    # Named in the log, once in the interval (an hour).
    daemon.wait_for(r'Refused a connection from 127\.0\.0\.2: its address '
                    r'is in none of \[zmq_receiver\] allowed_networks')
    assert len(re.findall('Refused a connection', daemon.log())) == 1
    support.close_all(consumer)


def test_zmtp3_senders_from_both_addresses(ctx, daemons, short_dir, peers):
    """Today's senders on the same port, beside the old ones."""
    daemon = allow_only(daemons, short_dir)
    consumer = pull(ctx, daemon, 'compute.host1')
    outcast = sender_from(ctx, daemon, DENIED_SOURCE)
    monitor = outcast.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    outcast.send_multipart(cast('compute.host1', b'denied'))
    # The sender sees its connection closed (and retries: more denials).
    assert monitor.poll(support.TIMEOUT * 1000)
    daemon.wait_stats(lambda s: denied(s) >= 1)
    old = peers(2, daemon.port, ALLOWED_SOURCE)
    old.send(cast('compute.host1', b'zmtp2'), greeting=True)
    assert recv(consumer)[3] == b'zmtp2'
    friend = sender_from(ctx, daemon, ALLOWED_SOURCE)
    friend.send_multipart(cast('compute.host1', b'zmtp3'))
    assert recv(consumer)[3] == b'zmtp3'
    assert support.nothing_arrives(consumer, 0.5)
    assert daemon.stats()['received'] == 2
    support.close_all(consumer, outcast, monitor, friend)


def test_networks_refuse_every_protocol_at_once(ctx, daemons, short_dir,
                                                peers):
    """ZMTP 1.0, 2.0 and 3 senders from a refused address, together with
    allowed ones, and a network (127.0.0.0/31) rather than one address."""
    daemon = allow_only(daemons, short_dir, '192.0.2.0/24, 127.0.0.0/31')
    consumer = pull(ctx, daemon, 'compute.host1')
    for version in (1, 2):
        peers(version, daemon.port, '127.0.0.3').send(
            cast('compute.host1', b'refused'), greeting=True)
    # Kept until counted: a socket dropped at once (linger 0) may close
    # before its I/O thread has even connected.
    zmtp3 = sender_from(ctx, daemon, '127.0.0.3')
    zmtp3.send_multipart(cast('compute.host1', b'refused'))
    daemon.wait_stats(lambda s: denied(s) >= 3)
    for version in (1, 2):
        peers(version, daemon.port, '127.0.0.1').send(
            cast('compute.host1', b'v%d' % version), greeting=True)
    got = sorted(recv(consumer)[3] for _ in range(2))
    assert got == [b'v1', b'v2']
    assert support.nothing_arrives(consumer, 0.5)
    support.close_all(consumer, zmtp3)


@pytest.mark.parametrize('bind_address', ['*', 'lo'])
def test_filter_follows_the_bind_address(ctx, daemons, short_dir, peers,
                                         bind_address):
    """Every address and IPv6 (dual stack), or an interface name: the
    listener the receiver makes for the filter is the one libzmq would."""
    daemon = daemons(short_dir, {
        'DEFAULT': {'rpc_zmq_bind_address': bind_address},
        'zmq_receiver': {'allowed_networks': '127.0.0.1'}})
    consumer = pull(ctx, daemon, 'compute.host1')
    outcast = peers(2, daemon.port, DENIED_SOURCE)
    outcast.send(cast('compute.host1', b'refused'), greeting=True)
    assert outcast.closed_by_receiver()
    daemon.wait_stats(lambda s: denied(s) == 1)
    # The IPv4 address, also from a dual-stack socket.
    daemon.wait_for(r'Refused a connection from 127\.0\.0\.2: ')
    peers(1, daemon.port, ALLOWED_SOURCE).send(
        cast('compute.host1', b'allowed'), greeting=True)
    assert recv(consumer)[3] == b'allowed'
    assert support.nothing_arrives(consumer, 0.3)
    support.close_all(consumer)


def run_with_networks(short_dir, **defaults):
    config = {'DEFAULT': dict({'rpc_zmq_ipc_dir': short_dir + '/ipc',
                               'rpc_zmq_bind_address': '127.0.0.1'},
                              **defaults),
              'zmq_receiver': {'allowed_networks': '127.0.0.1'}}
    return support.run_split(['--config-file', support.write_config(
        short_dir + '/receiver.conf', config)], cwd=short_dir)


def test_filtered_port_in_use_is_still_a_temporary_failure(short_dir):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err = run_with_networks(short_dir, rpc_zmq_port=port)
    assert status == errors.EXIT_ADDRESS_IN_USE, out + err
    assert 'tcp://127.0.0.1:%d is already in use' % port in err, err
    assert len(err.splitlines()) == 1, err


def test_filtered_bad_interface_is_a_config_error(short_dir):
    status, out, err = run_with_networks(
        short_dir, rpc_zmq_port=support.free_port(),
        rpc_zmq_bind_address='nosuchif0')
    assert status == errors.EXIT_CONFIG, out + err
    assert 'rpc_zmq_bind_address=nosuchif0' in err, err


def test_a_burst_of_connections_waits_in_the_listen_queue(ctx, receiver):
    """Legacy senders connect anew for every cast: a burst of them while
    the loop is busy must wait in the TCP listen queue, not be dropped
    (libzmq's default backlog, 100, drops the SYN past it, and the sender
    retries a second later). SIGSTOP stands for a busy loop: the kernel
    alone completes the handshakes, up to the backlog."""
    burst = 300
    assert burst < inputs.TCP_BACKLOG
    consumer = pull(ctx, receiver, 'burst.host1')
    conns = []
    os.kill(receiver.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(burst):
            # A dropped SYN would only be sent again after a second.
            conns.append(socket.create_connection(
                ('127.0.0.1', receiver.port), timeout=0.5))
    finally:
        os.kill(receiver.proc.pid, signal.SIGCONT)
        for conn in conns:
            conn.close()
    assert len(conns) == burst
    out = support.sender(ctx, receiver)
    frames = cast('burst.host1', b'after the burst')
    out.send_multipart(frames)
    assert recv(consumer) == frames
    support.close_all(consumer, out)
