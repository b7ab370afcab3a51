"""The receiver's loop: one thread, one poller, every socket.

The inbound PULL socket is read in batches; each message is routed by its
topic frame (:mod:`zmq_receiver.routing`) and handed to its outlet
(:mod:`zmq_receiver.outlets`), which sends it on or keeps it. Signals arrive
as readable bytes (:mod:`zmq_receiver.signals`) and are handled as methods
between two messages. Nothing in the loop blocks.
"""

import errno
import logging
import math
import resource
import signal
import time

import zmq

from zmq_receiver import access as access_mod
from zmq_receiver import connections as connections_mod
from zmq_receiver import control
from zmq_receiver.endpoints import tcp_endpoint
from zmq_receiver import errors
from zmq_receiver import memory
from zmq_receiver import metrics
from zmq_receiver import notify
from zmq_receiver import outlets as outlets_mod
from zmq_receiver import peerfilter
from zmq_receiver import ratelimit
from zmq_receiver import routing
from zmq_receiver import signals
from zmq_receiver import wire

LOG = logging.getLogger(__name__)

#: Messages read from the inbound socket before the loop looks at its other
#: sockets again, so that a busy sender cannot starve outlet flushing.
INBOUND_BATCH = 256
#: ... or until they add up to this many bytes (one more message is always
#: read): a batch of large messages must not hold the loop for long, nor
#: read far past the mark of READ_AHEAD_BYTES.
INBOUND_BATCH_BYTES = 1024 * 1024
#: Bytes the backlogs may hold before the loop stops reading ahead of its
#: consumers when nothing it reads can be sent on (see _read_paced).
READ_AHEAD_BYTES = 8 * 1024 * 1024
#: Longest pause (s) of an inbound socket's reading for that.
READ_PAUSE = 0.02
#: Seconds between housekeeping passes (reaping, suppressed warnings).
TICK = 1.0
#: Topics whose routing is remembered; past it the memo is cleared, so
#: that a flood of distinct topics costs no memory.
ROUTE_MEMO = 4096
#: At a stop, how long (ms) the unbound inbound socket must stay quiet
#: before it is closed (see :meth:`Receiver._close_inputs`).
STOP_QUIET_MS = 100
#: At a stop, how long (s) the senders get to close the connections the
#: receiver half-closed, before it closes them itself (within the shutdown
#: time). A legacy sender's libzmq closes at once.
STOP_CLOSE_WAIT = 1.0
#: Connections the receiver raises its descriptor limit for, when
#: [zmq_receiver] max_connections is 0 (automatic).
DEFAULT_CONNECTIONS = 16384
#: Control requests answered per turn of the loop: the rest wait in libzmq
#: (CONTROL_HWM per peer), so that a flood of them cannot take the loop
#: away from forwarding.
CONTROL_BATCH = 8
#: Snapshots built for control requests per tick; beyond, the last one is
#: answered again. Enough for an operator or a poller at 50 a second to
#: always read fresh figures; a flood of stats costs at most this many.
CONTROL_FRESH_PER_TICK = 64
#: Messages libzmq queues per control peer in each direction: a peer that
#: sends without reading fills its few and loses the rest of its replies
#: (counted), instead of growing the receiver's memory.
CONTROL_HWM = 4


class Settings:
    """What the receiver loop needs, read and checked once from config."""

    def __init__(self, bind_address, port, ipc_dir, limits,
                 max_message_size, io_threads=1, shutdown_timeout=10.0,
                 log_interval=10.0, access=None, max_connections=0,
                 max_frames=32):
        self.bind_address = bind_address
        self.port = port
        self.ipc_dir = ipc_dir
        self.limits = limits
        self.max_message_size = max_message_size
        self.io_threads = io_threads
        self.shutdown_timeout = shutdown_timeout
        self.log_interval = log_interval
        #: An :class:`access.Policy`, or None: anyone may connect.
        self.access = access
        #: Inbound TCP connections allowed at once; 0: automatic.
        self.max_connections = max_connections
        #: Frames a message may have.
        self.max_frames = max_frames


class Receiver:
    """Bind, then forward until told to stop.

    Use :meth:`bind` (may raise :class:`errors.ReceiverError`), then
    :meth:`run`, which returns once a graceful stop has finished.
    """

    def __init__(self, settings, reload=None, notifier=None, state=None,
                 clock=time.monotonic, agent=None):
        self.settings = settings
        #: The matchmaker agent (:class:`agent.Agent`), or None.
        self.agent = agent
        self.clock = clock
        self.notifier = notifier or notify.Notifier()
        #: What the metrics endpoint reads; None without one.
        self.state = state
        #: Called on SIGHUP; returns new :class:`outlets.Limits` or None.
        self._reload = reload
        self.counters = metrics.Counters()
        self.warn = ratelimit.RateLimitedLog(LOG, settings.log_interval,
                                             clock)
        self.ctx = None
        self.inbound = None
        self.control = None
        self.endpoint = None
        #: The ZAP handler (access.AccessControl) and the CURVE socket, when
        #: settings.access asks for them.
        self.access = None
        self.curve_inbound = None
        self.curve_endpoint = None
        #: The inbound sockets' connections (connections.Connections).
        self.connections = None
        #: The unix sockets' (outlets, control) connections.
        self.local = None
        #: During a stop: until when the senders may take to close their
        #: connections; None once the inbound sockets are unbound.
        self._inputs_until = None
        self.poller = zmq.Poller()
        self._handlers = {}
        self._events = {}
        #: Inbound socket -> until when its reading is paused (see
        #: _read_paced).
        self._paused = {}
        self.outlets = None
        self._routes = {}
        self._max_key_len = routing.max_key_length(settings.ipc_dir)
        self._wakeup = signals.SignalWakeup(
            (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1))
        self._stopping = False
        self._stop_now = False
        #: Per-message detail costs time; only at debug level (re-read on
        #: reload, where the level may change).
        self.debug = LOG.isEnabledFor(logging.DEBUG)
        self._deadline = None
        #: The last encoded stats reply, the turn it was built in, and how
        #: many more may be built in this tick (see _stats_reply).
        self._control_reply = None
        self._control_turn = None
        self._control_fresh = CONTROL_FRESH_PER_TICK
        #: Messages rejected for too many frames, at the last tick.
        self._long_seen = 0

    # -- the loop's socket registry, used by the outlets -------------------

    def register(self, sock, events, handler):
        """Call ``handler(events)`` when *sock* has any of *events*."""
        self._handlers[sock] = handler
        self.modify(sock, events)

    def modify(self, sock, events):
        """Poll *sock* for *events* (0: keep it, but do not poll it)."""
        if events:
            self.poller.register(sock, events)
        elif self._events.get(sock):
            self.poller.unregister(sock)
        self._events[sock] = events

    def unregister(self, sock):
        """Forget *sock*."""
        self._paused.pop(sock, None)
        if self._events.pop(sock, 0):
            self.poller.unregister(sock)
        self._handlers.pop(sock, None)

    # -- start -------------------------------------------------------------

    def bind(self):
        """Take over the signals, create the context, bind the TCP port.

        The signals come first (DESIGN.md section 2): from the bind on, a
        HUP or TERM must wait for the loop instead of killing a process
        that already owns the port.
        """
        self._wakeup.install()
        try:
            return self._bind()
        except BaseException:
            self._wakeup.restore()
            raise

    def _bind(self):
        s = self.settings
        self.ctx = zmq.Context(s.io_threads)
        # Each outlet holds a socket and, for PUSH, a monitor socket.
        self.ctx.set(zmq.MAX_SOCKETS, 3 * s.limits.max_topics + 64)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # The unix sockets' connections (consumers, the admin tool) have a
        # share of the descriptors the network cannot take.
        local, per_outlet = connections_mod.local_caps(nofile)
        self.local = connections_mod.Connections(
            local, self.counters, self.warn, per_socket=per_outlet)
        self.outlets = outlets_mod.Outlets(
            self.ctx, self, s.ipc_dir, s.limits, self.counters, self.warn,
            self.clock, connections=self.local)
        self.connections = connections_mod.Connections(
            connections_mod.connection_cap(
                s.max_connections, nofile,
                outlets_mod.descriptors_needed(s.limits.max_topics) + local),
            self.counters, self.warn)
        policy = s.access
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
                s.port, 'rpc_zmq_port',
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
            self.connections.close()
            for sock in (self.inbound, self.curve_inbound):
                if sock is not None:
                    sock.close(linger=0)
            self.inbound = self.curve_inbound = None
            if self.access is not None:
                self.access.stop()
                self.access = None
            self.ctx.term()
            self.ctx = None
            raise
        if self.access is not None and self.access.zap_socket is not None:
            self.register(self.access.zap_socket, zmq.POLLIN,
                          self.access.on_zap)
        for monitor in self.connections.monitors:
            self.register(monitor, zmq.POLLIN,
                          lambda events, m=monitor:
                          self.connections.on_events(m))
        self.register(self.inbound, zmq.POLLIN, self._on_inbound)
        if self.curve_inbound is not None:
            self.register(self.curve_inbound, zmq.POLLIN,
                          self._on_curve_inbound)
        if self.access is not None:
            LOG.info('Access control: %s%s', self.access.describe(),
                     '' if self.curve_endpoint is None else
                     '; CURVE port %s' % self.curve_endpoint)
        return self.endpoint

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
        if secure is not None:
            secure(sock)
        # Before the bind: no connection may go uncounted.
        monitor = self.connections.watch(
            sock, port, admits=access_mod.NetworkCheck(
                networks, self.counters, self.warn).admits
            if networks else None)
        try:
            if networks:
                bound = peerfilter.bind(sock, endpoint, ipv6, networks)
            else:
                sock.bind(endpoint)
                bound = int(sock.getsockopt_string(
                    zmq.LAST_ENDPOINT).rsplit(':', 1)[1])
        except errors.ReceiverError:
            self.connections.unwatch(monitor)
            sock.close(linger=0)
            raise
        except zmq.ZMQError as exc:
            self.connections.unwatch(monitor)
            sock.close(linger=0)
            if exc.errno == errno.EADDRINUSE:
                raise errors.AddressInUse(
                    'TCP address %s is already in use by another process: '
                    'stop it (ss -ltnp \'sport = :%d\' names it) or set '
                    '%s to a free port' % (endpoint, port, option))
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise errors.PermissionProblem(
                    'Cannot bind %s: %s; a port below 1024 needs root or '
                    'CAP_NET_BIND_SERVICE' % (endpoint, exc.strerror))
            raise errors.ConfigError(
                'Cannot bind %s (rpc_zmq_bind_address=%s, %s=%d): '
                '%s; set rpc_zmq_bind_address to *, an address of this host '
                'or one of its interface names' % (
                    endpoint, s.bind_address, option, port, exc.strerror))
        if port == 0:
            self.connections.set_port(monitor, bound)
        return sock

    def _bind_control(self):
        """Answer ``stats`` requests on a socket beside the outlets.

        The outlets keep its file bound like theirs (it vanishes with the
        IPC directory), and bind it once they can when this first bind
        fails. A ROUTER socket, not REP, so that a reply a peer does not
        read is refused at once (ROUTER_MANDATORY, NOBLOCK) and counted,
        instead of being queued or dropped unseen.
        """
        path = control.path(self.settings.ipc_dir)
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, CONTROL_HWM)
        sock.setsockopt(zmq.RCVHWM, CONTROL_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, control.MAX_FRAME)
        sock.setsockopt(zmq.BACKLOG, outlets_mod.LISTEN_BACKLOG)
        # Before the bind, as for every socket: no connection uncapped.
        monitor = self.local.watch(
            sock, path, min(connections_mod.CONTROL_CONNECTIONS,
                            self.local.per_socket),
            connections_mod.TOO_MANY_CONTROL)
        self.register(monitor, zmq.POLLIN,
                      lambda events: self.local.on_events(monitor))
        failure = None
        try:
            # Owned and moded like the outlets: whoever may connect to a
            # topic may also read the stats.
            outlets_mod.bind_ipc(sock, path, self.settings.limits)
            self.outlets.note_bound(sock, path)
        except OSError as exc:
            failure = exc
        if failure is not None:
            LOG.warning('No control socket %s (%s): stats are not available '
                        'from the admin tool until it can be bound (tried '
                        'again every second)', path, failure.strerror)
        self.control = sock
        self.register(sock, zmq.POLLIN, self._on_control)
        self.outlets.keep_bound(sock, path, 'Control socket',
                                'the admin tool')

    def _on_control(self, events):
        """Answer at most CONTROL_BATCH requests (one snapshot per turn)."""
        for _ in range(CONTROL_BATCH):
            try:
                frames = wire.py_recv_message(self.control,
                                              control.MAX_FRAMES)
            except zmq.Again:
                return
            self._answer(frames)

    def _answer(self, frames):
        outcome = self.counters.control
        split = control.split_request(frames)
        if split is None:
            # Not a request: no answer.
            outcome[metrics.CONTROL_MALFORMED] += 1
            return
        envelope, request = split
        if request == control.STATS:
            reply = self._stats_reply()
        else:
            outcome[metrics.CONTROL_UNKNOWN] += 1
            reply = control.unknown(request)
        try:
            self.control.send_multipart(envelope + [reply], zmq.NOBLOCK)
        except zmq.Again:
            outcome[metrics.CONTROL_PEER_FULL] += 1
        except zmq.ZMQError:
            # EHOSTUNREACH: gone before its answer.
            outcome[metrics.CONTROL_PEER_GONE] += 1
        else:
            outcome[metrics.CONTROL_ANSWERED] += 1

    def _stats_reply(self):
        """The encoded snapshot: built again unless one was built in this
        turn, or CONTROL_FRESH_PER_TICK were built in this tick."""
        turn = self.outlets.now
        if self._control_reply is None or (
                self._control_turn != turn and self._control_fresh > 0):
            self._control_reply = control.encode(self.snapshot())
            self._control_turn = turn
            self._control_fresh -= 1
        return self._control_reply

    # -- run ---------------------------------------------------------------

    def run(self):
        """Forward until a graceful stop completes.

        Call it after privileges are dropped: the control socket it opens
        belongs to the user it runs as.
        """
        self.poller.register(self._wakeup.fileno(), zmq.POLLIN)
        self._bind_control()
        if self.agent is not None:
            # Before READY=1: the served topics' files exist once ready.
            self.agent.start(self.outlets)
        self.notifier.ready(self.status_line())
        self._publish(ready=True)
        try:
            self._loop()
        finally:
            self.poller.unregister(self._wakeup.fileno())
            self._wakeup.restore()
            self._close()

    def _loop(self):
        next_tick = self.clock() + TICK
        poll = self.poller.poll
        handlers = self._handlers
        wakeup_fd = self._wakeup.fileno()
        watchdog = self.notifier.watchdog_interval
        next_ping = self.clock()
        state = self.state
        outlets = self.outlets
        while not self._stop_now:
            if self._stopping:
                if self._inputs_until is not None and (
                        not self.connections.open or
                        self.clock() >= self._inputs_until):
                    self._close_inputs()
                if self._inputs_until is None and not outlets.pending():
                    return
            if watchdog is not None and self.clock() >= next_ping:
                # From the loop itself: a stuck loop stops the pings and
                # systemd restarts the receiver.
                self.notifier.watchdog()
                next_ping = self.clock() + watchdog
            timeout = max(0.0, next_tick - self.clock())
            if watchdog is not None:
                timeout = min(timeout, max(0.0, next_ping - self.clock()))
            if self._deadline is not None:
                timeout = min(timeout, max(0.0, self._deadline -
                                           self.clock()))
            if self._inputs_until is not None:
                timeout = min(timeout, max(0.0, self._inputs_until -
                                           self.clock()))
            due = outlets.next_due()
            if due is not None:
                timeout = min(timeout, max(0.0, due - self.clock()))
            for until in self._paused.values():
                timeout = min(timeout, max(0.0, until - self.clock()))
            # zmq_poll takes whole milliseconds: rounding down would spin
            # through the last fraction of one before every timer.
            ready = poll(math.ceil(timeout * 1000))
            turn = outlets.now = self.clock()
            for sock, events in ready:
                if sock == wakeup_fd:
                    self._on_signals()
                    continue
                handler = handlers.get(sock)
                if handler is not None:
                    handler(events)
            now = self.clock()
            if self._paused:
                self._resume(now)
            if state is not None:
                state.last_turn = now
                state.iterations += 1
                busy = now - turn
                state.busy_seconds += busy
                if busy > state.max_iteration:
                    state.max_iteration = busy
            if (self._deadline is not None and now >= self._deadline and
                    self._inputs_until is None):
                # (The inputs are closed first, at the top of the loop:
                # what libzmq holds is always taken in.)
                return
            if now >= next_tick:
                if self.agent is not None:
                    # First: it pins what it serves before idle reaping.
                    self.agent.tick()
                if outlets.tick():
                    self._routes.clear()
                self.warn.flush()
                self._control_fresh = CONTROL_FRESH_PER_TICK
                self._trim_after_long_messages()
                self.notifier.status(self.status_line())
                self._publish()
                next_tick = now + TICK
            elif due is not None and now >= due:
                # What fell due during this turn falls due later than the
                # earliest one known before the poll.
                outlets.run_due()

    def _trim_after_long_messages(self):
        """Give back what libzmq held of the messages rejected for too
        many frames since the last tick (see :mod:`memory`)."""
        count = self.counters.rejected[metrics.TOO_MANY_FRAMES]
        if count != self._long_seen:
            self._long_seen = count
            memory.trim()

    def _on_inbound(self, events):
        self._read_paced(self.inbound)

    def _on_curve_inbound(self, events):
        self._read_paced(self.curve_inbound)

    def _read_paced(self, sock):
        """:meth:`_read`, then pause reading *sock* when that only filled
        backlogs.

        When every message of a batch went into a backlog and the backlogs
        hold more than READ_AHEAD_BYTES, reading on only moves messages
        from libzmq's bounded queue into this process's memory, at a cost
        in CPU and memory the consumers would rather have (the receiver
        ran 600 MiB ahead of one 64 KiB consumer). The socket is then left
        alone until the backlogs are below the mark again or READ_PAUSE
        has passed: like zmq_proxy, the senders' TCP windows slow them
        down meanwhile. Topics with a free consumer are not held back: one
        of their messages in a batch keeps the reading going. Nor is a
        stuck consumer: once its backlog is full, its messages are dropped,
        not queued.
        """
        counters = self.counters
        outlets = self.outlets
        received = counters.received
        enqueued = outlets.enqueued
        self._read(sock)
        received = counters.received - received
        # Each message read ends in one place (forwarded, queued, dropped,
        # rejected): all queued means none could be sent.
        if (received and outlets.enqueued - enqueued == received and
                outlets.buffered_bytes > READ_AHEAD_BYTES and
                not self._stopping):
            self.modify(sock, 0)
            self._paused[sock] = self.clock() + READ_PAUSE
            counters.read_pauses += 1

    def _resume(self, now):
        """Read the paused inbound sockets again once the backlogs are
        below the mark, or their pause has ended."""
        below = self.outlets.buffered_bytes <= READ_AHEAD_BYTES
        for sock, until in list(self._paused.items()):
            if below or now >= until or self._stopping:
                del self._paused[sock]
                self.modify(sock, zmq.POLLIN)

    def _read(self, sock):
        """Dispatch the messages waiting on inbound *sock*, at most
        INBOUND_BATCH, so that a busy sender cannot starve the outlets;
        returns whether more may be waiting."""
        if wire.forward is not None and not self.debug:
            return self._read_fast(sock)
        dispatch = self.dispatch
        max_frames = self.settings.max_frames
        read = 0
        for _ in range(INBOUND_BATCH):
            try:
                frames = wire.recv_message(sock, max_frames)
            except zmq.Again:
                return False
            dispatch(frames)
            read += wire.message_cost(frames)
            if read >= INBOUND_BATCH_BYTES:
                break
        return True

    def _read_fast(self, sock):
        """:meth:`_read` in the compiled loop (wire.forward): a message
        for a known topic whose PUSH outlet has no backlog goes straight to
        its socket; every other one comes back to :meth:`dispatch`, which
        counts it. The ones sent straight are counted here."""
        counters = self.counters
        before = counters.received
        try:
            direct = wire.forward(sock, self._routes, INBOUND_BATCH,
                                  self.settings.max_message_size,
                                  self.outlets.now, self.dispatch,
                                  INBOUND_BATCH_BYTES,
                                  self.settings.max_frames)
        except BaseException as exc:
            direct = getattr(exc, 'wire_forwarded', 0)
            counters.received += direct
            counters.forwarded += direct
            raise
        read = direct + counters.received - before
        counters.received += direct
        counters.forwarded += direct
        # A batch may end early at INBOUND_BATCH_BYTES: anything read means
        # more may wait.
        return read > 0

    def dispatch(self, frames):
        """Route one received message and hand it to its outlet."""
        counters = self.counters
        counters.received += 1
        if len(frames) < 2:
            self._reject(routing.SHORT_MESSAGE, None,
                         '%d frame(s), fewer than the 2 of the legacy '
                         'protocol' % len(frames))
            return
        if len(frames) > self.settings.max_frames:
            # The receive kept one frame more than allowed, and discarded
            # the rest.
            self._reject(metrics.TOO_MANY_FRAMES, frames[1],
                         'more than the %d frames of [zmq_receiver] '
                         'max_frames' % self.settings.max_frames,
                         'raise max_frames if a real service sends '
                         'messages of more frames')
            return
        size = wire.message_cost(frames)
        if size > self.settings.max_message_size:
            self._reject(metrics.OVERSIZED, frames[1],
                         '%d bytes (%d per frame included), more than '
                         '[zmq_receiver] max_message_size (%d)' % (
                             size, wire.FRAME_COST,
                             self.settings.max_message_size),
                         'raise max_message_size if a real service sends '
                         'messages this large')
            return
        topic = frames[1]
        if self.debug:
            LOG.debug('Received %d frames, %d bytes, topic %r', len(frames),
                      size, topic[:128])
        outlet = self._routes.get(topic)
        if outlet is None:
            route = routing.route(topic, self._max_key_len)
            if not isinstance(route, routing.Route):
                self._reject(route, topic, 'the topic cannot name a socket '
                             'file')
                return
            outlet = self.outlets.get(route)
            if outlet is None:
                return
            if len(self._routes) >= ROUTE_MEMO:
                self._routes.clear()
            self._routes[topic] = outlet
        self.outlets.deliver(outlet, frames, size)

    def _reject(self, reason, topic, why,
                fix='its sender does not speak the legacy protocol or is '
                    'hostile'):
        self.counters.rejected[reason] += 1
        self.warn.warning('reject-' + reason,
                          'Rejected a message from the network (%s): %s%s; '
                          '%s', reason, why,
                          '' if topic is None else ', topic %r' % topic[:128],
                          fix)

    # -- signals -----------------------------------------------------------

    def _on_signals(self):
        for signum in self._wakeup.read():
            getattr(self, 'handle_' + signum.name[3:].lower())()

    def handle_term(self):
        """Stop gracefully; a second request stops at once."""
        if self._stopping:
            LOG.warning('Second stop request: stopping without delivering '
                        'the remaining backlog')
            self._stop_now = True
            return
        self.stop()

    handle_int = handle_term

    def handle_hup(self):
        """Re-read the mutable options, keeping sockets and backlogs."""
        if self._reload is None:
            return
        self.notifier.reloading()
        try:
            limits = self._reload()
        except errors.ReceiverError as exc:
            LOG.error('Reload failed, keeping the running settings: %s', exc)
        else:
            if limits is not None:
                self.settings.limits = limits
                self.outlets.limits = limits
            if self.access is not None:
                self.access.reload()
            LOG.info('Reloaded configuration')
        self.debug = LOG.isEnabledFor(logging.DEBUG)
        self.notifier.ready(self.status_line())

    def handle_usr1(self):
        """Log the counters."""
        LOG.info('Counters: %s', metrics.format_snapshot(self.snapshot()))

    def stop(self):
        """Begin a graceful stop: take no more input, drain the backlogs.

        The senders are asked to close their connections first (a
        half-close, see :mod:`zmq_receiver.connections`), so that what
        they already sent is read instead of cut off; the loop closes the
        inbound sockets once they have, or after STOP_CLOSE_WAIT.
        """
        if self._stopping:
            return
        self._stopping = True
        if self.agent is not None:
            # Senders stop routing here while the backlogs drain.
            self.agent.stop()
        self.notifier.stopping()
        self._publish(ready=False)
        now = self.clock()
        self._deadline = now + self.settings.shutdown_timeout
        self._inputs_until = min(self._deadline, now + STOP_CLOSE_WAIT)
        self.connections.half_close()
        LOG.info('Stopping: waiting for %d sender connection(s) to close '
                 '(at most %.1f s)', self.connections.open,
                 self._inputs_until - now)

    def _close_inputs(self):
        """Unbind the inbound sockets, taking in what libzmq holds."""
        self._inputs_until = None
        if self.connections.open:
            LOG.warning('%d sender connection(s) still open after %.1f s: '
                        'closing them; what they still carry is lost',
                        self.connections.open, STOP_CLOSE_WAIT)
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
                while self._read(sock):
                    pass
                if (self.clock() >= self._deadline or
                        not sock.poll(STOP_QUIET_MS)):
                    break
            self.unregister(sock)
        # Only to a consumer that is there: a backlog with none (or a
        # message still waiting for its first subscriber) would hold the
        # stop for the whole shutdown time, to be dropped at its end.
        deliverable = self.outlets.deliverable
        LOG.info('Stopping: delivering %d queued messages to connected '
                 'consumers (at most %.1f s); %d more have no consumer to '
                 'take them and are dropped at exit', deliverable,
                 max(0.0, self._deadline - self.clock()),
                 self.outlets.queued - deliverable)

    def _publish(self, ready=None):
        """Hand the metrics endpoint a fresh snapshot (once per tick)."""
        state = self.state
        if state is None:
            return
        state.snapshot = self.snapshot()
        state.last_max_iteration = state.max_iteration
        state.max_iteration = 0.0
        if ready is not None:
            state.ready = ready

    def status_line(self):
        """A one-line summary for systemd's STATUS=."""
        c = self.counters
        return ('%s on %s: received %d, forwarded %d, rejected %d, dropped '
                '%d, queued %d, outlets %d' % (
                    'Stopping' if self._stopping else 'Forwarding',
                    self.endpoint, c.received, c.forwarded,
                    sum(c.rejected.values()), sum(c.dropped.values()),
                    self.outlets.queued, len(self.outlets)))

    def snapshot(self):
        """The counters and per-outlet figures as a plain dict."""
        snap = self.counters.snapshot(self.outlets or ())
        snap['connections'] = (self.connections.open
                               if self.connections is not None else 0)
        snap['local_connections'] = (self.local.open
                                     if self.local is not None else 0)
        # Consumers that left half way through a message being sent to
        # them: each such message was taken back by libzmq and sent again.
        snap['send_rollbacks'] = wire.rollbacks()
        if self.agent is not None:
            snap['agent'] = self.agent.snapshot()
        return snap

    def _close(self):
        def remaining():
            return (max(0.0, self._deadline - self.clock())
                    if self._deadline is not None else 0.0)

        if self.agent is not None:
            # Its removals began with the stop; they may take what is left.
            self.agent.close(timeout=remaining())
        if self.outlets is not None:
            # Messages already handed to libzmq for a connected consumer
            # get what is then left of the shutdown time to leave (the
            # context's termination below waits for them); none after a
            # second stop request, which must not wait for a stalled one.
            self.outlets.close_all(
                linger=0 if self._stop_now else int(remaining() * 1000))
        if self.connections is not None:
            self.connections.close()
        if self.inbound is not None:
            self.inbound.close(linger=0)
            self.inbound = None
        if self.curve_inbound is not None:
            self.curve_inbound.close(linger=0)
            self.curve_inbound = None
        if self.access is not None:
            self.access.stop()
            self.access = None
        if self.local is not None:
            self.local.close()
        if self.control is not None:
            outlets_mod.remove_socket_file(
                control.path(self.settings.ipc_dir))
            self.control.close(linger=0)
            self.control = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        LOG.info('Stopped. %s', metrics.format_snapshot(self.snapshot()))
