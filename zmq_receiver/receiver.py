"""The receiver: the policy of one loop that forwards until told to stop.

The loop (:mod:`zmq_receiver.loop`) polls every socket and runs the
timers; this module decides what they do: the inbound sockets
(:mod:`zmq_receiver.inputs`) are read in paced batches
(:mod:`zmq_receiver.reading`) into the outlets
(:mod:`zmq_receiver.outlets`); the control socket answers stats
(:mod:`zmq_receiver.control_server`); signals arrive as readable bytes
(:mod:`zmq_receiver.signals`) and are handled as methods between two
messages; a stop closes the inputs, then drains the backlogs
(:mod:`zmq_receiver.stopping`). Nothing in the loop blocks.
"""

import logging
import resource
import signal
import time

import zmq

from zmq_receiver import connections as connections_mod
from zmq_receiver import control_server
from zmq_receiver import errors
from zmq_receiver import inputs as inputs_mod
from zmq_receiver import loop as loop_mod
from zmq_receiver import metrics
from zmq_receiver import notify
from zmq_receiver import outlets as outlets_mod
from zmq_receiver import ratelimit
from zmq_receiver import reading
from zmq_receiver import signals
from zmq_receiver import stopping
from zmq_receiver import wire

LOG = logging.getLogger(__name__)

#: Seconds between housekeeping passes (reaping, suppressed warnings).
TICK = 1.0
#: Connections the receiver raises its descriptor limit for, when
#: [zmq_receiver] max_connections is 0 (automatic).
DEFAULT_CONNECTIONS = 16384


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
                 clock=time.monotonic, agent=None, reclaim=None,
                 implementation=None):
        self.settings = settings
        #: For the outlets: locks the IPC directory again once it is back.
        self._reclaim = reclaim
        #: How whole messages are received and sent (wire.Implementation),
        #: chosen once at start; None: pure Python.
        self.wire = implementation or wire.PURE_PYTHON
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
        self.loop = loop_mod.Loop(clock, on_wake=self._on_wake)
        # Made by bind(): the context; the inbound sockets (inputs.Inputs)
        # and the legacy port's endpoint; the control socket's server
        # (control_server.ControlServer); the unix sockets' (outlets,
        # control) connections; the outlets; the read path (reading.Reader).
        self.ctx = self.inputs = self.endpoint = self.control = None
        self.local = self.outlets = self.reader = None
        self._stop = stopping.Stop(clock, settings.shutdown_timeout)
        self._wakeup = signals.SignalWakeup(
            (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1))

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
            self.ctx, self.loop, s.ipc_dir, s.limits, self.counters,
            self.warn, self.clock, reclaim=self._reclaim,
            connections=self.local, send=self.wire.send_message,
            send_backlog=self.wire.send_backlog)
        self.loop.add_source(self.outlets)
        self.inputs = inputs_mod.Inputs(
            self.ctx, s, self.counters, self.warn,
            connections_mod.connection_cap(
                s.max_connections, nofile,
                outlets_mod.descriptors_needed(s.limits.max_topics) + local))
        self.reader = reading.Reader(self.loop, self.outlets, s,
                                     self.counters, self.warn, self.clock,
                                     self._stop)
        try:
            self.endpoint = self.inputs.bind()
        except errors.ReceiverError:
            self.ctx.term()
            self.ctx = None
            raise
        self.inputs.register(self.loop, self.reader.read_paced)
        return self.endpoint

    # -- run ---------------------------------------------------------------

    def run(self):
        """Forward until a graceful stop completes. Call it after the
        privilege drop: the control socket it opens is the user's."""
        self.reader.use(self.wire)
        wakeup_fd = self._wakeup.fileno()
        self.loop.register(wakeup_fd, zmq.POLLIN,
                           lambda events: self._on_signals())
        self.control = control_server.ControlServer(
            self.ctx, self.loop, self.settings.ipc_dir, self.settings.limits,
            self.outlets, self.local, self.counters, self.snapshot).bind()
        if self.agent is not None:
            # Before READY=1: the served topics' files exist once ready.
            self.agent.start(self.outlets)
        self.notifier.ready(self.status_line())
        self._publish(ready=True)
        try:
            self._loop()
        finally:
            self.loop.unregister(wakeup_fd)
            self._wakeup.restore()
            self._close()

    def _loop(self):
        loop = self.loop
        if self.notifier.watchdog_interval is not None:
            # From the loop itself: a stuck loop stops the pings and
            # systemd restarts the receiver.
            loop.call_every(self.notifier.watchdog_interval,
                            self.notifier.watchdog, now=True)
        loop.call_every(TICK, self._tick)
        while self._stop_check():
            turn = loop.poll()
            self.reader.resume()
            if self.state is not None:
                self.state.count_turn(turn, self.clock())
            loop.run_timers()

    def _on_wake(self, now):
        # Read per message instead of the clock (see Outlets.now).
        self.outlets.now = now

    def _tick(self):
        if self.agent is not None:
            # First: it pins what it serves before idle reaping.
            self.agent.tick()
        self.outlets.tick()
        self.warn.flush()
        self.control.tick()
        self.reader.trim_after_long_messages()
        self.notifier.status(self.status_line())
        self._publish()

    # -- signals -----------------------------------------------------------

    def _on_signals(self):
        for signum in self._wakeup.read():
            getattr(self, 'handle_' + signum.name[3:].lower())()

    def handle_term(self):
        """Stop gracefully; a second request stops at once."""
        if self._stop.stopping:
            LOG.warning('Second stop request: stopping without delivering '
                        'the remaining backlog')
            self._stop.abort()
            self.loop.stop()
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
                # In place: the outlets, the delivery and the control
                # socket hold the same object.
                self.settings.limits.update(limits)
            if self.inputs.access is not None:
                self.inputs.access.reload()
            LOG.info('Reloaded configuration')
        self.reader.debug = reading.LOG.isEnabledFor(logging.DEBUG)
        self.notifier.ready(self.status_line())

    def handle_usr1(self):
        """Log the counters."""
        LOG.info('Counters: %s', metrics.format_snapshot(self.snapshot()))

    # -- stop --------------------------------------------------------------

    def stop(self):
        """Begin a graceful stop: take no more input, drain the backlogs.

        The senders are asked to close their connections first (a
        half-close, see :mod:`zmq_receiver.connections`), so that what
        they already sent is read instead of cut off; the loop closes the
        inbound sockets once they have, or after STOP_CLOSE_WAIT.
        """
        stop = self._stop
        if not stop.begin():
            return
        if self.agent is not None:
            # Senders stop routing here while the backlogs drain.
            self.agent.stop()
        self.notifier.stopping()
        self._publish(ready=False)
        connections = self.inputs.connections
        connections.half_close()
        LOG.info('Stopping: waiting for %d sender connection(s) to close '
                 '(at most %.1f s)', connections.open,
                 stop.inputs_until - self.clock())
        # A stop reads everything: no socket stays paused.
        self.reader.resume()
        self.loop.call_at(stop.inputs_until, self._stop_check)
        self.loop.call_at(stop.deadline, self._stop_check)

    def _stop_check(self):
        """At the top of each turn and at the stop's times: move the stop
        on when it can; returns whether the loop goes on.

        The inputs are closed before the end, even at the deadline: what
        libzmq holds is always taken in.
        """
        stop = self._stop
        if stop.state is stopping.CLOSING_INPUTS and (
                not self.inputs.connections.open or
                self.clock() >= stop.inputs_until):
            self._close_inputs()
        if stop.state is stopping.DRAINING and (
                stop.past_deadline() or not self.outlets.pending()):
            stop.finish()
            self.loop.stop()
        return self.loop.running

    def _close_inputs(self):
        """Unbind the inbound sockets, taking in what libzmq holds."""
        for sock in self.inputs.close_for_stop(self.reader.read,
                                               self._stop.past_deadline):
            self.reader.forget(sock)
            self.loop.unregister(sock)
        self._stop.inputs_closed()
        # Only to a consumer that is there: a backlog with none (or a
        # message still waiting for its first subscriber) would hold the
        # stop for the whole shutdown time, to be dropped at its end.
        deliverable = self.outlets.deliverable
        LOG.info('Stopping: delivering %d queued messages to connected '
                 'consumers (at most %.1f s); %d more have no consumer to '
                 'take them and are dropped at exit', deliverable,
                 self._stop.remaining(), self.outlets.queued - deliverable)

    def _publish(self, ready=None):
        """Hand the metrics endpoint a fresh snapshot (once per tick)."""
        if self.state is not None:
            self.state.publish(self.snapshot(), ready)

    def status_line(self):
        """A one-line summary for systemd's STATUS=."""
        c = self.counters
        return ('%s on %s: received %d, forwarded %d, rejected %d, dropped '
                '%d, queued %d, outlets %d' % (
                    'Stopping' if self._stop.stopping else 'Forwarding',
                    self.endpoint, c.received, c.forwarded,
                    sum(c.rejected.values()), sum(c.dropped.values()),
                    self.outlets.queued, len(self.outlets)))

    def snapshot(self):
        """The counters and per-outlet figures as a plain dict."""
        snap = self.counters.snapshot(self.outlets or ())
        snap['connections'] = (self.inputs.connections.open
                               if self.inputs is not None else 0)
        snap['local_connections'] = (self.local.open
                                     if self.local is not None else 0)
        # Consumers that left half way through a message being sent to
        # them: each such message was taken back by libzmq and sent again.
        snap['send_rollbacks'] = self.wire.rollbacks()
        # Unix accepts that found no descriptor: retried (wire.guard_accept).
        snap['accept_emfile_retries'] = wire.guarded_emfiles()
        if self.agent is not None:
            snap['agent'] = self.agent.snapshot()
        return snap

    def _close(self):
        remaining = self._stop.remaining
        if self.agent is not None:
            # Its removals began with the stop; they may take what is left.
            self.agent.close(timeout=remaining())
        if self.outlets is not None:
            # Messages already handed to libzmq for a connected consumer
            # get what is then left of the shutdown time to leave (the
            # context's termination below waits for them); none after a
            # second stop request, which must not wait for a stalled one.
            self.outlets.close_all(
                linger=0 if self._stop.aborted else int(remaining() * 1000))
        if self.inputs is not None:
            self.inputs.close()
        if self.local is not None:
            self.local.close()
        if self.control is not None:
            self.control.close()
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        LOG.info('Stopped. %s', metrics.format_snapshot(self.snapshot()))
