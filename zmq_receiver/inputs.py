"""The inbound TCP sockets: bound with their caps and access control, and
unbound at a stop.

The legacy port's PULL socket, and the CURVE port's when
``[zmq_receiver] curve_port`` asks for one; the ZAP handler
(:class:`access.AccessControl`) and the connections' cap and half-close
(:class:`connections.Connections`) that watch them.
"""

import errno
import logging

import zmq

from zmq_receiver import access as access_mod
from zmq_receiver import connections as connections_mod
from zmq_receiver.endpoints import tcp_endpoint
from zmq_receiver import errors
from zmq_receiver import peerfilter
from zmq_receiver import stopping

# The receiver's logger, as before this module was split out of it: its
# lines keep the name operators and their log filters know.
LOG = logging.getLogger('zmq_receiver.receiver')

#: listen(2) backlog of the TCP ports (libzmq's default is 100). Legacy
#: senders (oslo.messaging before 1.11) connect anew for every cast and
#: close at once: a burst of them overflowed 100 (the kernel then drops
#: the SYN, and the sender waits a second to retry), where zmq_proxy's
#: own listener did too. Connections waiting there hold kernel memory,
#: not the receiver's descriptors; the kernel caps it at somaxconn.
TCP_BACKLOG = 1024


class Inputs:
    """The receiver's inbound sockets, from their bind to their close.

    *settings* is the receiver's :class:`receiver.Settings`; *cap* the
    connections the inbound sockets may have at once.
    """

    def __init__(self, ctx, settings, counters, warn, cap):
        self.ctx = ctx
        self.settings = settings
        self.counters = counters
        self.warn = warn
        #: The inbound sockets' connections (connections.Connections).
        self.connections = connections_mod.Connections(cap, counters, warn)
        #: The ZAP handler (access.AccessControl) and the CURVE socket, when
        #: settings.access asks for them.
        self.access = None
        self.inbound = None
        self.endpoint = None
        self.curve_inbound = None
        self.curve_endpoint = None

    def bind(self):
        """Bind the inbound sockets; returns the legacy port's endpoint.
        On an :class:`errors.ReceiverError`, everything is closed again."""
        policy = self.settings.access
        try:
            if policy is not None:
                # Before any TCP socket binds, so that no connection is
                # ever accepted without being asked about.
                self.access = access_mod.AccessControl(
                    self.ctx, policy, self.counters, self.warn)
                self.access.start()
            # No ZAP on the legacy port: libzmq would refuse every ZMTP
            # 1.0/2.0 sender (see access.py); a kernel filter and a check
            # at accept enforce allowed_networks there.
            self.inbound = self._bind_tcp(
                self.settings.port, 'rpc_zmq_port',
                networks=policy.networks if policy is not None else ())
            self.endpoint = self.inbound.getsockopt_string(
                zmq.LAST_ENDPOINT)
            if policy is not None and policy.curve is not None:
                self.curve_inbound = self._bind_tcp(
                    policy.curve.port, '[zmq_receiver] curve_port',
                    self.access.secure_curve)
                self.curve_endpoint = self.curve_inbound.getsockopt_string(
                    zmq.LAST_ENDPOINT)
        except errors.ReceiverError:
            self.close()
            raise
        if self.access is not None:
            LOG.info('Access control: %s%s', self.access.describe(),
                     '' if self.curve_endpoint is None else
                     '; CURVE port %s' % self.curve_endpoint)
        return self.endpoint

    def register(self, loop, read):
        """Register the sockets with *loop*: ``read(sock)`` reads an
        inbound one."""
        if self.access is not None and self.access.zap_socket is not None:
            loop.register(self.access.zap_socket, zmq.POLLIN,
                          self.access.on_zap)
        for monitor in self.connections.monitors:
            loop.register(monitor, zmq.POLLIN,
                          lambda events, m=monitor:
                          self.connections.on_events(m))
        for sock in self.sockets():
            loop.register(sock, zmq.POLLIN,
                          lambda events, s=sock: read(s))

    def sockets(self):
        """The inbound sockets that are open."""
        return [sock for sock in (self.inbound, self.curve_inbound)
                if sock is not None]

    def _bind_tcp(self, port, option, secure=None, networks=()):
        """A PULL socket bound on *port* of rpc_zmq_bind_address, made
        ready by *secure(sock)* before the bind; *option* names the port
        in errors. With *networks*, only peers in them may send (see
        :mod:`zmq_receiver.peerfilter`)."""
        s = self.settings
        endpoint, ipv6 = tcp_endpoint(s.bind_address, port)
        sock = self.ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, int(ipv6))
        # libzmq disconnects a peer that sends a larger frame.
        sock.setsockopt(zmq.MAXMSGSIZE, s.max_message_size)
        sock.setsockopt(zmq.BACKLOG, TCP_BACKLOG)
        if secure is not None:
            secure(sock)
        # Before the bind: no connection may go uncounted.
        monitor = self.connections.watch(
            sock, port, admits=access_mod.NetworkCheck(
                networks, self.counters, self.warn).admits
            if networks else None)
        try:
            bound = self._bind_socket(sock, endpoint, ipv6, networks)
        except errors.ReceiverError:
            self.connections.unwatch(monitor)
            sock.close(linger=0)
            raise
        except zmq.ZMQError as exc:
            self.connections.unwatch(monitor)
            sock.close(linger=0)
            raise _bind_error(exc, endpoint, port, option, s.bind_address)
        if port == 0:
            self.connections.set_port(monitor, bound)
        return sock

    @staticmethod
    def _bind_socket(sock, endpoint, ipv6, networks):
        """Bind *sock*; returns the port it got."""
        if networks:
            return peerfilter.bind(sock, endpoint, ipv6, networks)
        sock.bind(endpoint)
        return int(sock.getsockopt_string(
            zmq.LAST_ENDPOINT).rsplit(':', 1)[1])

    def close_for_stop(self, read, deadline_passed):
        """Unbind the inbound sockets, taking in what libzmq holds:
        ``read(sock)`` reads a batch and returns whether more may wait;
        *deadline_passed()* says whether the shutdown time has run out.
        Returns the sockets, for their handlers to be forgotten."""
        if self.connections.open:
            LOG.warning('%d sender connection(s) still open after %.1f s: '
                        'closing them; what they still carry is lost',
                        self.connections.open, stopping.STOP_CLOSE_WAIT)
        # Unbinding closes the listener and the connections it accepted, so
        # senders keep what they have not sent yet instead of losing it here.
        for sock, endpoint in ((self.inbound, self.endpoint),
                               (self.curve_inbound, self.curve_endpoint)):
            if sock is None:
                continue
            try:
                sock.unbind(endpoint)
            except zmq.ZMQError as exc:
                LOG.warning('Cannot unbind %s (%s): its senders keep '
                            'sending until the process exits', endpoint,
                            exc.strerror)
            self.connections.forget(sock)
            # What the connections carried until they closed may still be
            # on its way into the socket: read until it has been quiet a
            # moment, within the shutdown time (a sender that is never cut
            # off would otherwise stretch it for ever). What libzmq already
            # holds is always taken in (shutdown_timeout may be 0).
            while True:
                while read(sock):
                    pass
                if deadline_passed() or not sock.poll(
                        stopping.STOP_QUIET_MS):
                    break
        return self.sockets()

    def close(self):
        """Close the connections' watch, the sockets and the ZAP handler."""
        self.connections.close()
        for sock in self.sockets():
            sock.close(linger=0)
        self.inbound = self.curve_inbound = None
        if self.access is not None:
            self.access.stop()
            self.access = None


def _bind_error(exc, endpoint, port, option, bind_address):
    """The :class:`errors.ReceiverError` for a failed bind of *endpoint*."""
    if exc.errno == errno.EADDRINUSE:
        return errors.AddressInUse(
            'TCP address %s is already in use by another process: '
            'stop it (ss -ltnp \'sport = :%d\' names it) or set '
            '%s to a free port' % (endpoint, port, option))
    if exc.errno in (errno.EACCES, errno.EPERM):
        return errors.PermissionProblem(
            'Cannot bind %s: %s; a port below 1024 needs root or '
            'CAP_NET_BIND_SERVICE' % (endpoint, exc.strerror))
    return errors.ConfigError(
        'Cannot bind %s (rpc_zmq_bind_address=%s, %s=%d): '
        '%s; set rpc_zmq_bind_address to *, an address of this host '
        'or one of its interface names' % (
            endpoint, bind_address, option, port, exc.strerror))
