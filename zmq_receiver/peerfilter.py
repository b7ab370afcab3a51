"""A kernel socket filter that keeps refused peers' bytes out of libzmq.

``allowed_networks`` cannot be left to ZAP on the legacy port: libzmq asks
ZAP only during a ZMTP 3 security handshake, and once a socket has a ZAP
domain it rejects every ZMTP 1.0 and 2.0 peer outright (they have no
handshake to ask about), allowed or not. Checking the peer after libzmq
accepts it (the socket monitor's ``EVENT_ACCEPTED`` gives the descriptor)
is not enough by itself either: libzmq starts reading a connection as soon
as it accepts it, and a ZMTP 1.0/2.0 peer needs no round trip, so its first
messages are in the inbound socket before the receiver can look. Those
messages carry nothing that names their connection (libzmq attaches the
``Peer-Address`` property only to ZMTP 3 messages), so they could not be
sorted out afterwards.

So the legacy port's listening socket is created here, with a classic BPF
socket filter (``SO_ATTACH_FILTER``, see socket(7)) that drops every TCP
segment *carrying data* from an address outside the allowed networks, and
handed to libzmq (``ZMQ_USE_FD``). The kernel runs the filter before a
segment reaches a receive queue, and each accepted connection inherits the
listener's filter, so libzmq never reads a byte from a refused peer,
whatever protocol it speaks. Segments without data (the TCP handshake,
acknowledgements, FIN, RST) pass: the connection is accepted, the monitor
reports it, and :mod:`zmq_receiver.connections` names the peer, counts the
refusal and shuts the connection down.

Nothing happens at import.
"""

import ctypes
import errno
import ipaddress
import socket
import struct

import zmq

from zmq_receiver import errors
from zmq_receiver import opts

# Classic BPF (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS = 0x20
_LD_H_ABS = 0x28
_LD_B_ABS = 0x30
_LD_W_LEN = 0x80
_ALU_AND_K = 0x54
_ALU_RSH_K = 0x74
_JA = 0x05
_JEQ_K = 0x15
_JGT_X = 0x2d
_RET_K = 0x06
_TAX = 0x07
_SKF_AD_PROTOCOL = -0x1000  # SKF_AD_OFF + SKF_AD_PROTOCOL
_SKF_NET_OFF = -0x100000
_IPV4_SOURCE = _SKF_NET_OFF + 12
_IPV6_SOURCE = _SKF_NET_OFF + 8
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86dd
_KEEP = 0xffffffff
_DROP = 0
#: socket(7); socket.SO_ATTACH_FILTER is not exposed by Python.
SO_ATTACH_FILTER = 26
#: libzmq's default ZMQ_BACKLOG.
BACKLOG = 100
#: The most instructions the kernel takes in one filter (BPF_MAXINSNS).
MAX_INSTRUCTIONS = 4096


def _insn(code, k=0, jt=0, jf=0):
    return (code, jt, jf, k & 0xffffffff)


def _words(network):
    """(offset of each 32-bit word of the source address, mask, value),
    for the words the prefix covers."""
    raw_net = network.network_address.packed
    raw_mask = network.netmask.packed
    base = _IPV4_SOURCE if network.version == 4 else _IPV6_SOURCE
    words = []
    for i in range(0, len(raw_net), 4):
        mask = struct.unpack('>I', raw_mask[i:i + 4])[0]
        if mask:
            words.append((base + i, mask,
                          struct.unpack('>I', raw_net[i:i + 4])[0]))
    return words


def _matches(network):
    """Instructions that return KEEP when the source is in *network*, and
    fall through otherwise."""
    words = _words(network)
    if not words:  # 0.0.0.0/0 or ::/0
        return [_insn(_RET_K, _KEEP)]
    out = []
    for n, (offset, mask, value) in enumerate(words):
        left = len(words) - n - 1
        out.append(_insn(_LD_W_ABS, offset))
        out.append(_insn(_ALU_AND_K, mask))
        # On a mismatch, skip this network's remaining words and its RET.
        out.append(_insn(_JEQ_K, value, jt=0, jf=3 * left + 1))
    out.append(_insn(_RET_K, _KEEP))
    return out


def program(networks):
    """The filter for *networks*, as (code, jt, jf, k) instructions.

    A segment from an allowed source, or one that carries no data, is
    kept; a segment with data from any other source is dropped.
    """
    v4 = [_m for n in networks if n.version == 4 for _m in _matches(n)]
    v6 = [_m for n in networks if n.version == 6 for _m in _matches(n)]
    payload = [
        # X = the TCP header length: (data offset >> 4) * 4.
        _insn(_LD_B_ABS, 12),
        _insn(_ALU_RSH_K, 2),
        _insn(_ALU_AND_K, 0x3c),
        _insn(_TAX),
        # The filter sees the segment from its TCP header on.
        _insn(_LD_W_LEN),
        _insn(_JGT_X, jt=0, jf=1),
        _insn(_RET_K, _DROP),
        _insn(_RET_K, _KEEP),
    ]
    # Conditional jumps reach 255 instructions at most; the long ones
    # (over a list of networks) are unconditional. A packet that is
    # neither IPv4 nor IPv6 is not for this filter to judge.
    head = [
        _insn(_LD_H_ABS, _SKF_AD_PROTOCOL),
        _insn(_JEQ_K, _ETH_P_IP, jt=3, jf=0),
        _insn(_JEQ_K, _ETH_P_IPV6, jt=1, jf=0),
        _insn(_RET_K, _KEEP),
        _insn(_JA, len(v4) + 1),
    ]
    return head + v4 + [_insn(_JA, len(v6))] + v6 + payload


def attach(sock, networks):
    """Attach the filter of *networks* to the Python socket *sock*.

    Raises :class:`errors.ConfigError` when the kernel refuses it.
    """
    insns = program(networks)
    if len(insns) > MAX_INSTRUCTIONS:
        raise errors.ConfigError(
            '[%s] allowed_networks lists %d networks, more than the '
            'kernel socket filter that enforces them can hold; merge them '
            'into fewer, wider networks' % (opts.GROUP, len(networks)))
    filters = ctypes.create_string_buffer(
        b''.join(struct.pack('=HBBI', *i) for i in insns))
    fprog = struct.pack('@HP', len(insns), ctypes.addressof(filters))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        raise errors.ConfigError(
            'Cannot attach the socket filter that enforces [%s] '
            'allowed_networks (SO_ATTACH_FILTER: %s); run the receiver '
            'where the kernel allows it (a container\'s seccomp profile '
            'may forbid it), or unset allowed_networks and filter with a '
            'firewall' % (opts.GROUP, exc.strerror)) from None


def _resolve(ctx, endpoint, ipv6):
    """The address libzmq binds for *endpoint* (an interface name, ``*``
    or a literal), found by letting it bind that address on a free port."""
    probe = ctx.socket(zmq.PULL)
    probe.setsockopt(zmq.LINGER, 0)
    probe.setsockopt(zmq.IPV6, int(ipv6))
    try:
        probe.bind(endpoint.rsplit(':', 1)[0] + ':0')
        bound = probe.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        probe.close()
    host = bound[len('tcp://'):].rsplit(':', 1)[0]
    return host[1:-1] if host.startswith('[') else host


def bind(sock, endpoint, ipv6, networks):
    """Bind the libzmq socket *sock* to TCP *endpoint* on a listening
    socket filtered for *networks*; returns the port bound.

    Raises :class:`zmq.ZMQError` with the errno of whatever failed, as
    ``sock.bind`` would, or :class:`errors.ConfigError` when the filter
    cannot be attached.
    """
    host = _resolve(sock.context, endpoint, ipv6)
    address = ipaddress.ip_address(host.split('%', 1)[0])
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    port = int(endpoint.rsplit(':', 1)[1])
    try:
        listener = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise zmq.ZMQError(exc.errno or errno.EINVAL) from None
    try:
        # As libzmq sets up its own listeners.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Before listen(): every connection inherits the filter.
        attach(listener, networks)
        listener.bind((host, port))
        listener.listen(BACKLOG)
        port = listener.getsockname()[1]
        sock.setsockopt(zmq.USE_FD, listener.fileno())
        sock.bind('%s:%d' % (endpoint.rsplit(':', 1)[0], port))
    except OSError as exc:
        listener.close()
        raise zmq.ZMQError(exc.errno or errno.EINVAL) from None
    except (zmq.ZMQError, errors.ReceiverError):
        listener.close()
        raise
    # libzmq owns the descriptor now and closes it when it unbinds.
    listener.detach()
    return port
