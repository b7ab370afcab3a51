"""``check``'s network check: whether the receiver can bind
``rpc_zmq_bind_address`` and ``rpc_zmq_port`` here, and when the port is
taken, whether the receiver of this IPC directory holds it.

A port is bound only to be released at once: nothing stays bound.
"""

import errno
import fcntl
import ipaddress
import os
import socket
import struct

from zmq_receiver.admin import client
from zmq_receiver import control
from zmq_receiver import endpoints
from zmq_receiver import errors
from zmq_receiver import procfs
from zmq_receiver import rundir

SIOCGIFADDR = 0x8915

_ANY_ADDRESS_FIX = ('set rpc_zmq_bind_address to *, an address of this '
                    'host or one of its interface names')


def interface_ipv4(name):
    """The IPv4 address of interface *name*, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                 struct.pack('256s', name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _every_address():
    if socket.has_ipv6:
        return socket.AF_INET6, '::', 'every address'
    return socket.AF_INET, '0.0.0.0', 'every address'


def _interface_target(address, name):
    """``(family, address, label)`` for interface *name*, as given in
    *address*; ValueError when there is no such interface or it has no
    IPv4 address."""
    names = [n for _, n in socket.if_nameindex()]
    if name not in names:
        raise ValueError(
            '%s is neither *, an IP address nor an interface of this '
            'host (interfaces: %s)' % (address, ', '.join(names)))
    ipv4 = interface_ipv4(name)
    if ipv4 is None:
        raise ValueError('interface %s has no IPv4 address, which the '
                         'receiver binds' % name)
    return socket.AF_INET, ipv4, 'interface %s (%s)' % (name, ipv4)


def bind_target(address):
    """``(family, address, label)`` the receiver would bind for
    ``rpc_zmq_bind_address``, or raises ValueError with the reason."""
    address = address.strip()
    if address == '*':
        return _every_address()
    bare = address[1:-1] if address.startswith('[') else address
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return _interface_target(address, bare)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, str(ip), str(ip)


def try_bind(family, address, port):
    """Bind and release at once, as libzmq would bind; the OSError or
    None."""
    every_ipv6 = family == socket.AF_INET6 and address == '::'
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if every_ipv6:
            # IPv6 is off on this host; libzmq binds IPv4 then.
            return try_bind(socket.AF_INET, '0.0.0.0', port)
        return exc
    try:
        # libzmq sets SO_REUSEADDR: a port in TIME_WAIT is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if every_ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen(1)
    except OSError as exc:
        return exc
    finally:
        sock.close()
    return None


# -- who holds a port ------------------------------------------------------


def _listening_inodes(table, port):
    """The socket inodes listening on TCP *port* in /proc table *table*
    (empty when it cannot be read)."""
    inodes = set()
    try:
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                listening = state == '0A'  # TCP_LISTEN
                if listening and int(local.rsplit(':', 1)[1], 16) == port:
                    inodes.add('socket:[%s]' % inode)
    except OSError:
        pass
    return inodes


def listener_pids(port):
    """Pids of the processes listening on TCP *port*, where /proc tells
    (another user's processes are visible to root only)."""
    inodes = (_listening_inodes('/proc/net/tcp', port)
              | _listening_inodes('/proc/net/tcp6', port))
    if not inodes:
        return set()
    return procfs.pids_with_descriptor(
        lambda fd_path: os.readlink(fd_path) in inodes)


def _command_name(pid):
    try:
        with open('/proc/%d/comm' % pid) as f:
            return f.read().strip()
    except OSError:
        return '?'


def _lock_pid(ipc_dir):
    try:
        with open(os.path.join(ipc_dir, rundir.LOCK_NAME)) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _receiver_answers(ipc_dir, timeout):
    if not os.path.exists(control.path(ipc_dir)):
        return False
    try:
        client.ask(ipc_dir, control.STATS, timeout)
    except errors.ReceiverError:
        return False
    return True


# -- the check -------------------------------------------------------------


def check_bind(conf, report, host_addresses, timeout):
    """The ``bind`` lines: whether ``rpc_zmq_bind_address`` is of this
    host (and reachable at the addresses *host_addresses* of
    ``rpc_zmq_host``), and ``rpc_zmq_port`` free or held by the receiver of
    this IPC directory."""
    address, port = conf.rpc_zmq_bind_address, conf.rpc_zmq_port
    try:
        target = bind_target(address)
    except ValueError as exc:
        report.fail('bind', str(exc), _ANY_ADDRESS_FIX)
        return
    if address.strip() != '*' and not _check_bind_address(
            report, address, target, host_addresses):
        return
    _check_port(conf, report, target, timeout)


def _check_bind_address(report, address, target, host_addresses):
    """Whether the given bind address *address* (bound as *target*) is
    one of this host; WARN when ``rpc_zmq_host`` resolves elsewhere."""
    family, ip, _ = target
    problem = try_bind(family, ip, 0)
    if problem is not None and problem.errno == errno.EADDRNOTAVAIL:
        report.fail('bind', 'rpc_zmq_bind_address %s is not an address of '
                    'this host' % address, 'set it to *, an address of '
                    'this host or one of its interface names')
        return False
    if host_addresses and ip not in host_addresses:
        report.warn('bind', 'the receiver binds only %s, but rpc_zmq_host '
                    'resolves here to %s: services on this host cannot '
                    'reach their own receiver' % (
                        ip, ', '.join(host_addresses)),
                    'bind * or the address rpc_zmq_host resolves to')
    return True


def _check_port(conf, report, target, timeout):
    """The ``bind`` line of ``rpc_zmq_port`` on *target*."""
    family, ip, label = target
    port = conf.rpc_zmq_port
    endpoint, _ = endpoints.tcp_endpoint(conf.rpc_zmq_bind_address, port)
    if port == 0:
        report.ok('bind', '%s: port 0, the kernel picks a free one' %
                  endpoint)
        return
    problem = try_bind(family, ip, port)
    if problem is None:
        report.ok('bind', '%s (%s): port %d is free' % (
            endpoint, label, port))
    elif problem.errno in (errno.EACCES, errno.EPERM):
        report.warn('bind', 'this user may not bind port %d (%s)' % (
            port, problem.strerror), 'start the receiver as root (it drops '
            'to [zmq_receiver] user after binding) or give it '
            'CAP_NET_BIND_SERVICE')
    elif problem.errno == errno.EADDRINUSE:
        _check_port_holder(conf, report, port, timeout)
    else:
        report.fail('bind', 'cannot bind %s: %s' % (endpoint,
                                                    problem.strerror),
                    'set rpc_zmq_bind_address and rpc_zmq_port to an '
                    'address and port of this host')


def _check_port_holder(conf, report, port, timeout):
    """The ``bind`` line of a port in use: PASS when the receiver of this
    IPC directory answers and holds it (or /proc cannot tell who does)."""
    ipc_dir = os.path.abspath(conf.rpc_zmq_ipc_dir)
    ours = _lock_pid(ipc_dir)
    holders = listener_pids(port)
    answers = _receiver_answers(ipc_dir, timeout)
    if answers and (not holders or ours in holders):
        report.ok('bind', 'port %d is held by the running receiver of %s%s'
                  % (port, ipc_dir, ' (pid %d)' % ours if ours else ''))
        return
    who = ', '.join('pid %d (%s)' % (p, _command_name(p))
                    for p in sorted(holders)) or 'another process'
    report.fail('bind', 'port %d is in use by %s, not by a receiver of %s'
                % (port, who, ipc_dir), 'stop it (ss -ltnp \'sport = :%d\' '
                'names it) or set rpc_zmq_port to a free port' % port)
