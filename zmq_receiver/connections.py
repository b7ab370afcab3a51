"""The connections the receiver's sockets accept: caps, and a clean stop.

libzmq gives no handle on the connections a bound socket accepts, and no
option to limit them. Its socket monitor does report each one, with its
descriptor, as it is accepted and as it goes (``ZMQ_EVENT_ACCEPTED`` and
``ZMQ_EVENT_DISCONNECTED``). With those this module does what libzmq
cannot:

* **The allow-list of the legacy port.** A connection whose peer address
  is outside ``allowed_networks`` is shut down at once, counted as denied
  and logged with the address, whatever ZMTP version the peer speaks. The
  kernel filter of :mod:`zmq_receiver.peerfilter` has kept every byte it
  sent out of libzmq meanwhile, so nothing it sent is ever forwarded.

* **A cap on open connections.** Idle connections from the network, or
  from a local user to the outlets and the control socket, could otherwise
  use every descriptor, and libzmq 4.3 aborts the whole process when it
  then cannot accept a connection on an IPC socket (an errno_assert in its
  IPC listener). A connection over the cap is shut down at once
  (``shutdown(2)``, which libzmq sees as the peer leaving and cleans up
  itself) and counted as denied. The inbound TCP sockets have one cap
  (:func:`connection_cap`); the unix sockets (outlets, control) another,
  for all of them together and per socket (:func:`local_caps`), so that
  the network cannot take the descriptors the local consumers need, nor
  one local socket those of the others.
* **A stop that loses nothing in flight.** Closing a connection drops what
  its peer sent but the receiver has not read yet. At a stop the receiver
  half-closes each connection instead (``SHUT_WR``): a legacy sender's
  libzmq sees the end of the stream, closes its side and keeps its unsent
  messages for its next connection, and everything it sent before that
  arrives here ahead of its close.

Only ``shutdown(2)`` is used on libzmq's descriptors, never ``close(2)``,
so libzmq keeps owning them. A descriptor from an event may have been
closed and reused by the time the event is read; before acting on one,
its local address (TCP port, or socket file path) is checked to still be
the one of the socket that accepted it.
"""

import _socket
import collections
import errno
import logging
import os
import socket
import struct

import zmq
from zmq import backend

LOG = logging.getLogger(__name__)

#: Reasons, in the ``denied`` counter, of a connection over a cap: TCP
#: from senders, to an outlet, to the control socket.
TOO_MANY_CONNECTIONS = 'too_many_connections'
TOO_MANY_CONSUMERS = 'too_many_consumer_connections'
TOO_MANY_CONTROL = 'too_many_control_connections'

#: Connections the control socket takes at once: the admin tool needs one.
CONTROL_CONNECTIONS = 16
#: Unix connections in all take at most this share of the descriptor
#: limit, and at least LOCAL_MIN.
LOCAL_SHARE = 8
LOCAL_MIN = 32

_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED |
           zmq.EVENT_ACCEPT_FAILED)

_recv = backend.Socket.recv
_NOBLOCK = int(zmq.NOBLOCK)
_EVENT = struct.Struct('=HI')
_EVENTS_OPTION = int(zmq.EVENTS)
_SOCK_STREAM = int(socket.SOCK_STREAM)
_INET_FAMILIES = (int(socket.AF_INET), int(socket.AF_INET6))
_POLLIN = int(zmq.POLLIN)


def read_events(monitor):
    """The (event, value) pairs waiting on *monitor*, a libzmq socket
    monitor, without blocking: the value is the descriptor of ACCEPTED and
    DISCONNECTED, the errno of ACCEPT_FAILED.

    pyzmq's recv_monitor_message costs several times more per event (flag
    enums, the endpoint decoded): during a flood of connections, refusing
    them as fast as libzmq accepts them is what keeps descriptors free.
    """
    events = []
    try:
        while True:
            head = _recv(monitor, _NOBLOCK, True)
            _recv(monitor, _NOBLOCK, True)  # the endpoint: known already
            events.append(_EVENT.unpack_from(head))
            # Asking whether another event waits costs less than the
            # zmq.Again a recv raises when none does (one per connection
            # in a flood of them, each woken alone).
            if not monitor.getsockopt(_EVENTS_OPTION) & _POLLIN:
                return events
    except zmq.Again:
        # Woken with nothing to read: another handler of the same turn
        # read it, or the poll's wakeup was spurious.
        return events


def connection_cap(configured, nofile, outlets_need):
    """The number of inbound connections to allow at once.

    *configured* is ``max_connections`` (0: automatic), *nofile* the soft
    descriptor limit, *outlets_need* the descriptors the outlets may use.
    Automatic leaves the outlets their share, but at least half of the
    limit to connections. A configured value above that is lowered, since
    the descriptors it would use are what keep libzmq alive.
    """
    fits = max(nofile - outlets_need, nofile // 2)
    if configured and configured <= fits:
        return configured
    if configured:
        LOG.warning('[zmq_receiver] max_connections is %d, but the '
                    'descriptor limit of %d leaves room for %d besides the '
                    'outlets: allowing %d; raise LimitNOFILE= (ulimit -n) '
                    'to allow more', configured, nofile, fits, fits)
    return fits


def local_caps(nofile):
    """(all unix connections, those to one socket) for the descriptor
    limit *nofile*: an eighth of it (at least LOCAL_MIN), and a quarter of
    that per socket, so that a local user who holds the connections of
    a few sockets leaves room for the consumers of the others."""
    total = max(LOCAL_MIN, nofile // LOCAL_SHARE)
    return total, total // 4


class Connections:
    """Tracks the connections of some sockets, caps and stops them.

    :meth:`watch` each socket before it binds, register :meth:`on_events`
    with the loop for every :attr:`monitors` socket, call
    :meth:`half_close` at a stop and wait for :attr:`open` to reach 0.
    Sockets that read their monitors themselves (the outlets, which count
    their consumers) call :meth:`admit` and :meth:`gone` instead.

    *cap* bounds the connections of all the sockets together; *per_socket*
    (0: no such cap) those of one address. The addresses are TCP ports
    (int) or socket file paths (str).
    """

    def __init__(self, cap, counters, warn, per_socket=0):
        self.cap = cap
        self.per_socket = per_socket
        self.counters = counters
        self.warn = warn
        #: Monitor socket -> (its socket, its address, its own cap or 0,
        #: the denied reason over it).
        self.monitors = {}
        #: Descriptor -> (monitor socket or None, address), of each open
        #: connection.
        self._open = {}
        #: Address -> its open connections.
        self._per_address = collections.Counter()
        #: Socket file path -> the names its listeners were bound with,
        #: which its connections carry (ipcfile binds in a private
        #: directory, then renames the file into place): see bound().
        self._names = {}
        #: Monitor socket -> the allow-list check of its socket's peers.
        self._admits = {}
        self._closing = False

    @property
    def open(self):
        """Connections accepted and not yet gone."""
        return len(self._open)

    def watch(self, sock, address, cap=0, reason=TOO_MANY_CONNECTIONS,
              admits=None):
        """Follow the connections *sock* accepts on *address* (TCP port or
        socket file path), at most *cap* at once if not 0; returns the
        monitor socket to poll. Call it before the bind, so that none is
        missed. *admits(address)*, when given, says whether a TCP peer at
        that address may stay connected (and counts and logs a refusal)."""
        monitor = sock.get_monitor_socket(_EVENTS)
        self.monitors[monitor] = (sock, address, cap, reason)
        if admits is not None:
            self._admits[monitor] = admits
        return monitor

    def unwatch(self, monitor):
        """Stop following what *monitor* watches (its bind failed)."""
        sock = self.monitors.pop(monitor)[0]
        self._admits.pop(monitor, None)
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(linger=0)

    def set_port(self, monitor, port):
        """The TCP port its socket has bound (known after a bind to 0)."""
        sock, _, cap, reason = self.monitors[monitor]
        self.monitors[monitor] = (sock, port, cap, reason)

    def on_events(self, monitor):
        """Read what *monitor* reports; refuse or half-close as needed."""
        _, port, cap, reason = self.monitors[monitor]
        for kind, fd in read_events(monitor):
            if kind == zmq.EVENT_ACCEPTED:
                self.admit(fd, port, cap, reason, monitor)
            elif kind == zmq.EVENT_DISCONNECTED:
                self.gone(fd, port)
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                # libzmq's listeners retry by themselves (its IPC one
                # thanks to wire.guard_accept); the value is the errno.
                self.warn.warning(
                    'accept-failed', 'Cannot accept a connection on %s: '
                    '%s; raise LimitNOFILE= (ulimit -n) or lower '
                    '[zmq_receiver] max_connections',
                    'TCP port %d' % port if isinstance(port, int) else port,
                    _strerror(fd))

    def bound(self, address, endpoint):
        """The socket of file *address* is now also bound as *endpoint*
        (its LAST_ENDPOINT after the bind): connections accepted there are
        named after that path, not the file's."""
        self._names.setdefault(address, set()).add(_path_of(endpoint))

    def unbound(self, address, endpoint):
        """The socket of file *address* is no longer bound as *endpoint*
        (see :meth:`bound`)."""
        names = self._names.get(address)
        if names is not None:
            names.discard(_path_of(endpoint))

    def _own(self, address):
        """What _shutdown checks a descriptor of *address* against."""
        if isinstance(address, int):
            return address
        return self._names.get(address) or {address}

    def admit(self, fd, address, cap=0, reason=TOO_MANY_CONSUMERS,
              monitor=None):
        """Connection *fd* was accepted on *address*: keep it, or shut it
        down when over a cap (*cap* for its socket, or per_socket, and the
        cap of all), counting it under *reason*. Returns whether it was
        kept; one already gone counts as neither."""
        admits = self._admits.get(monitor)
        if admits is not None:
            peer = _peer_address(fd, address)
            if peer is not None and not admits(peer):
                _shutdown(fd, address, socket.SHUT_RDWR)
                return False
        if self._closing:
            # A sender reconnecting during the stop: it sees the end of
            # the stream before it can send.
            _shutdown(fd, self._own(address), socket.SHUT_WR)
            self._keep(fd, address, monitor)
            return True
        cap = cap or self.per_socket
        held = self._per_address[address]
        if len(self._open) >= self.cap or (cap and held >= cap):
            if _shutdown(fd, self._own(address), socket.SHUT_RDWR):
                self.counters.denied[reason] += 1
                self._refused(address, held, cap, reason)
            return False
        self._keep(fd, address, monitor)
        return True

    def _keep(self, fd, address, monitor):
        # A descriptor still listed was closed unseen (its socket was
        # closed with its monitor): it is this connection's now.
        self._drop(fd)
        self._open[fd] = (monitor, address)
        self._per_address[address] += 1

    def _drop(self, fd, address=None):
        entry = self._open.get(fd)
        if entry is None or address is not None and entry[1] != address:
            return False
        del self._open[fd]
        address = entry[1]
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]
        return True

    def gone(self, fd, address):
        """Connection *fd* on *address* closed; whether it was one kept by
        :meth:`admit` (a refused one closes too)."""
        return self._drop(fd, address)

    def _refused(self, address, held, cap, reason):
        if isinstance(address, int):
            self.warn.warning(
                'too-many-connections', 'Refused a connection on TCP '
                'port %d: %d are open, [zmq_receiver] max_connections '
                'allows %d; find the peer that opens so many (ss -tn '
                "'sport = :%d'), or raise max_connections and "
                'LimitNOFILE=', address, len(self._open), self.cap, address)
            return
        self.warn.warning(
            'refused-' + reason, 'Refused a connection to %s (%s): %d are '
            'open to it (at most %d) and %d to all the unix sockets (at '
            'most %d, an eighth of the descriptor limit); find the local '
            'process that opens so many (ss -xp | grep %s), or raise '
            'LimitNOFILE= (ulimit -n)', address, reason, held, cap,
            len(self._open), self.cap, address)

    def half_close(self):
        """Stop: end the stream to every peer, who then closes its side."""
        self._closing = True
        for fd, (_, address) in list(self._open.items()):
            if not _shutdown(fd, self._own(address), socket.SHUT_WR):
                self._drop(fd)

    def forget(self, sock):
        """*sock* is unbound: its connections are closed by libzmq."""
        for fd, (monitor, _) in list(self._open.items()):
            if monitor is not None and self.monitors[monitor][0] is sock:
                self._drop(fd)

    def forget_address(self, address):
        """The socket bound at *address* is closed, and its connections
        with it (their monitor went with it, unread)."""
        for fd, (_, bound) in list(self._open.items()):
            if bound == address:
                self._drop(fd)
        self._names.pop(address, None)

    def close(self):
        """Stop monitoring; before the inbound sockets close."""
        for monitor in list(self.monitors):
            self.unwatch(monitor)
        self._open.clear()
        self._per_address.clear()
        self._names.clear()


def _borrow(fd, address):
    """*fd* as a socket object if it is still a connection on *address*
    (a TCP port, int; or the name, str, or names, a set, a unix socket
    was bound with), else None.

    The descriptor stays libzmq's: the socket object only borrows it, and
    the caller must give it back with detach() (a socket object left to
    the collector would close it). A plain function rather than a context
    manager, whose generator costs as much as the checks, once or twice a
    connection.
    """
    tcp = isinstance(address, int)
    try:
        # The C socket type, not socket.socket: its family and type are
        # plain ints rather than enums, and it has no Python __init__ or
        # detach (several µs a connection, in a flood of them). For TCP
        # the kernel is asked the family and type (getsockname and
        # SO_TYPE), not the protocol, which a stream socket of those
        # families does not need checked. For a unix path, not even
        # those: getsockname alone tells, since only a unix stream
        # connection accepted on that path has that name (a descriptor
        # of anything else gives another name, or fails).
        borrowed = (_socket.socket(-1, -1, 0, fd) if tcp else
                    _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0,
                                   fd))
    except OSError:
        return None  # closed meanwhile
    try:
        if tcp:
            ours = (borrowed.type == _SOCK_STREAM and
                    borrowed.family in _INET_FAMILIES and
                    borrowed.getsockname()[1] == address)
        else:
            names = {address} if isinstance(address, str) else address
            ours = borrowed.getsockname() in names
    except OSError:
        ours = False
    except BaseException:
        borrowed.detach()
        raise
    if ours:
        return borrowed
    borrowed.detach()
    return None


def _path_of(endpoint):
    """The path of an ``ipc://`` *endpoint*; any other as it is."""
    return (endpoint[len('ipc://'):] if endpoint.startswith('ipc://')
            else endpoint)


def _shutdown(fd, address, how):
    """shutdown(2) *fd* if it is still a connection on *address* (see
    _borrow). Returns whether it was.
    """
    sock = _borrow(fd, address)
    if sock is None:
        return False
    try:
        sock.shutdown(how)
        return True
    except OSError as exc:
        # ENOTCONN: the peer is already gone.
        if exc.errno != errno.ENOTCONN:
            LOG.debug('shutdown of descriptor %d failed: %s', fd, exc)
        return False
    finally:
        sock.detach()


def _peer_address(fd, port):
    """The peer address (text) of connection *fd* on TCP *port*, or None
    when it is gone."""
    sock = _borrow(fd, port)
    if sock is None:
        return None
    try:
        return sock.getpeername()[0]
    except OSError:
        return None  # ENOTCONN: the peer left already
    finally:
        sock.detach()


def _strerror(code):
    return '%s (%s)' % (errno.errorcode.get(code, code), os.strerror(code))
