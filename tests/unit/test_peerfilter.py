"""The allowed_networks socket filter, run by the real kernel.

Each case listens on loopback with the filter attached, connects from a
loopback source address (all of 127.0.0.0/8, and ::1, are this host) and
sends a few bytes: the accepted connection must receive them if and only
if the source is allowed. The connection itself is accepted either way
(the filter keeps segments without data), which is what lets the receiver
name and count a refused peer.
"""

import ipaddress
import socket

import pytest

from tests import support
from zmq_receiver import peerfilter

V6 = support.ipv6_loopback()


def delivered(networks, family, source):
    """Whether bytes sent from *source* reach a filtered listener of
    *family* (AF_INET6: dual stack) on loopback."""
    nets = [ipaddress.ip_network(n) for n in networks]
    with socket.socket(family) as listener:
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        peerfilter.attach(listener, nets)
        listener.bind(('::' if family == socket.AF_INET6 else '127.0.0.1',
                       0))
        listener.listen(4)
        listener.settimeout(support.TIMEOUT)
        port = listener.getsockname()[1]
        v6_source = ':' in source
        with socket.socket(socket.AF_INET6 if v6_source
                           else socket.AF_INET) as peer:
            peer.bind((source, 0))
            peer.connect(('::1' if v6_source else '127.0.0.1', port))
            conn, _ = listener.accept()
            with conn:
                peer.sendall(b'hello')
                conn.settimeout(0.3)  # a negative case waits this long
                try:
                    return conn.recv(16) == b'hello'
                except socket.timeout:
                    return False


@pytest.mark.parametrize('networks, source, expected', [
    (['127.0.0.1/32'], '127.0.0.1', True),
    (['127.0.0.1/32'], '127.0.0.2', False),
    (['10.0.0.0/8', '127.0.0.0/30'], '127.0.0.3', True),
    (['10.0.0.0/8', '127.0.0.0/30'], '127.0.0.4', False),
    (['0.0.0.0/0'], '127.9.9.9', True),
    # IPv6 networks say nothing of IPv4 peers.
    (['::/0'], '127.0.0.1', False),
])
def test_ipv4_listener(networks, source, expected):
    assert delivered(networks, socket.AF_INET, source) is expected


@pytest.mark.skipif(not V6, reason='no IPv6 loopback here')
@pytest.mark.parametrize('networks, source, expected', [
    (['::1/128'], '::1', True),
    (['2001:db8::/32'], '::1', False),
    (['::/1'], '::1', True),
    (['127.0.0.1', '::/1'], '127.0.0.1', True),
    # An IPv4 peer of a dual-stack socket is checked as IPv4.
    (['::1/128'], '127.0.0.1', False),
    (['127.0.0.0/8'], '::1', False),
])
def test_dual_stack_listener(networks, source, expected):
    assert delivered(networks, socket.AF_INET6, source) is expected


def test_many_networks_keep_every_jump_in_range():
    # 300 IPv4 networks put the IPv6 ones more than 255 instructions
    # from the protocol test; conditional jumps cannot reach that far.
    networks = ['10.%d.%d.0/24' % (i // 256, i % 256) for i in range(300)]
    assert delivered(networks + ['127.0.0.2'], socket.AF_INET, '127.0.0.2')
    assert not delivered(networks, socket.AF_INET, '127.0.0.2')
    for code, jt, jf, k in peerfilter.program(
            [ipaddress.ip_network(n) for n in networks + ['::1']]):
        assert 0 <= jt < 256 and 0 <= jf < 256
