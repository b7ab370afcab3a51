"""The TCP connections the inbound sockets accept: a cap, and a clean stop.

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

* **A cap on open connections.** Idle connections from the network could
  otherwise use every descriptor, and libzmq 4.3 aborts the whole process
  when it then cannot accept a consumer on an IPC socket (an errno_assert
  in its IPC listener). A connection over the cap is shut down at once
  (``shutdown(2)``, which libzmq sees as the peer leaving and cleans up
  itself) and counted as denied.
* **A stop that loses nothing in flight.** Closing a connection drops what
  its peer sent but the receiver has not read yet. At a stop the receiver
  half-closes each connection instead (``SHUT_WR``): a legacy sender's
  libzmq sees the end of the stream, closes its side and keeps its unsent
  messages for its next connection, and everything it sent before that
  arrives here ahead of its close.

Only ``shutdown(2)`` is used on libzmq's descriptors, never ``close(2)``,
so libzmq keeps owning them. A descriptor from an event may have been
closed and reused by the time the event is read; before acting on one,
its local port is checked to still be an inbound port.
"""

import contextlib
import errno
import logging
import os
import socket

import zmq
from zmq.utils import monitor as zmq_monitor

LOG = logging.getLogger(__name__)

#: Reason, in the ``denied`` counter, of a connection over the cap.
TOO_MANY_CONNECTIONS = 'too_many_connections'

_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED |
           zmq.EVENT_ACCEPT_FAILED)


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


class Connections:
    """Tracks the connections of the inbound sockets, caps and stops them.

    :meth:`watch` each inbound socket before it binds, register
    :meth:`on_events` with the loop for every :attr:`monitors` socket, call
    :meth:`half_close` at a stop and wait for :attr:`open` to reach 0.
    """

    def __init__(self, cap, counters, warn):
        self.cap = cap
        self.counters = counters
        self.warn = warn
        #: Monitor socket -> (inbound socket, its TCP port).
        self.monitors = {}
        #: Descriptor -> monitor socket, of each open connection.
        self._open = {}
        #: Monitor socket -> the allow-list check of its socket's peers.
        self._admits = {}
        self._closing = False

    @property
    def open(self):
        """Connections accepted and not yet gone."""
        return len(self._open)

    def watch(self, sock, port, admits=None):
        """Follow the connections *sock* accepts on TCP *port*; returns the
        monitor socket to poll. Call it before the bind, so that none is
        missed. *admits(address)*, when given, says whether a peer at that
        address may stay connected (and counts and logs a refusal)."""
        monitor = sock.get_monitor_socket(_EVENTS)
        self.monitors[monitor] = (sock, port)
        if admits is not None:
            self._admits[monitor] = admits
        return monitor

    def unwatch(self, monitor):
        """Stop following what *monitor* watches (its bind failed)."""
        sock, _ = self.monitors.pop(monitor)
        self._admits.pop(monitor, None)
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(linger=0)

    def set_port(self, monitor, port):
        """The TCP port its socket has bound (known after a bind to 0)."""
        sock, _ = self.monitors[monitor]
        self.monitors[monitor] = (sock, port)

    def on_events(self, monitor):
        """Read what *monitor* reports; refuse or half-close as needed."""
        _, port = self.monitors[monitor]
        while True:
            try:
                event = zmq_monitor.recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event['event']
            fd = int(event['value'])
            if kind == zmq.EVENT_ACCEPTED:
                self._accepted(monitor, fd, port)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._open.pop(fd, None)
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                # libzmq's TCP listener retries by itself; the value is
                # the errno.
                self.warn.warning(
                    'accept-failed', 'Cannot accept a connection on TCP '
                    'port %d: %s; raise LimitNOFILE= (ulimit -n) or lower '
                    '[zmq_receiver] max_connections', port,
                    _strerror(fd))

    def _accepted(self, monitor, fd, port):
        admits = self._admits.get(monitor)
        if admits is not None:
            peer = _peer_address(fd, port)
            if peer is not None and not admits(peer):
                _shutdown(fd, port, socket.SHUT_RDWR)
                return
        if self._closing:
            # A sender reconnecting during the stop: it sees the end of
            # the stream before it can send.
            _shutdown(fd, port, socket.SHUT_WR)
            self._open[fd] = monitor
            return
        if len(self._open) >= self.cap:
            if _shutdown(fd, port, socket.SHUT_RDWR):
                self.counters.denied[TOO_MANY_CONNECTIONS] += 1
                self.warn.warning(
                    'too-many-connections', 'Refused a connection on TCP '
                    'port %d: %d are open, [zmq_receiver] max_connections '
                    'allows %d; find the peer that opens so many (ss -tn '
                    "'sport = :%d'), or raise max_connections and "
                    'LimitNOFILE=', port, len(self._open), self.cap, port)
            return
        self._open[fd] = monitor

    def half_close(self):
        """Stop: end the stream to every peer, who then closes its side."""
        self._closing = True
        for fd, monitor in list(self._open.items()):
            if not _shutdown(fd, self.monitors[monitor][1], socket.SHUT_WR):
                self._open.pop(fd, None)

    def forget(self, sock):
        """*sock* is unbound: its connections are closed by libzmq."""
        for fd, monitor in list(self._open.items()):
            if self.monitors[monitor][0] is sock:
                del self._open[fd]

    def close(self):
        """Stop monitoring; before the inbound sockets close."""
        for monitor in list(self.monitors):
            self.unwatch(monitor)
        self._open.clear()


@contextlib.contextmanager
def _borrowed(fd, port):
    """*fd* as a socket object if it is still a connection on TCP *port*,
    else None.

    The descriptor stays libzmq's: the socket object only borrows it and
    gives it back with detach().
    """
    try:
        borrowed = socket.socket(fileno=fd)
    except OSError:
        yield None  # closed meanwhile
        return
    try:
        try:
            ours = (borrowed.type == socket.SOCK_STREAM and
                    borrowed.family in (socket.AF_INET, socket.AF_INET6) and
                    borrowed.getsockname()[1] == port)
        except OSError:
            ours = False
        yield borrowed if ours else None
    finally:
        # Always: a socket object left to the collector would close it.
        borrowed.detach()


def _shutdown(fd, port, how):
    """shutdown(2) *fd* if it is still a connection on TCP *port*.

    Returns whether it was.
    """
    with _borrowed(fd, port) as sock:
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


def _peer_address(fd, port):
    """The peer address (text) of connection *fd* on TCP *port*, or None
    when it is gone."""
    with _borrowed(fd, port) as sock:
        if sock is None:
            return None
        try:
            return sock.getpeername()[0]
        except OSError:
            return None  # ENOTCONN: the peer left already


def _strerror(code):
    return '%s (%s)' % (errno.errorcode.get(code, code), os.strerror(code))
