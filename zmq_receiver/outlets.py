"""Outlets: one IPC socket per topic key, opened on demand, reaped when idle.

:class:`Outlets` opens an outlet (:class:`zmq_receiver.outlet.Outlet`) for
each topic key a message names, within max_topics and the descriptors the
process has (:class:`zmq_receiver.ipcdir.DescriptorBudget`), counts its
consumers, and closes it once idle. What happens to a message once its
outlet is known (sent, kept in the backlog, dropped; PUB subscriptions and
the join windows) is :mod:`zmq_receiver.delivery`; keeping the socket files
bound when someone removes them is :mod:`zmq_receiver.ipcdir`.

Consumers of PUSH outlets are counted from the socket's monitor (accepted
and disconnected connections; for PUB outlets it gives the subscribers'
descriptors); an outlet with no consumer, no queued message and no traffic
for the idle timeout is closed and its file removed.
"""

import errno
import logging
import os
import time

import zmq

from zmq_receiver import connections as connections_mod
from zmq_receiver import delivery
from zmq_receiver import ipcdir
from zmq_receiver import metrics
from zmq_receiver import outlet as outlet_mod
from zmq_receiver import routing
from zmq_receiver import wire

LOG = logging.getLogger(__name__)

_MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

# Kept here for the modules that bind beside the outlets (receiver.py,
# cli.py) and name them outlets.X; they live in ipcdir.
LISTEN_BACKLOG = ipcdir.LISTEN_BACKLOG
STALE_LISTENERS = ipcdir.STALE_LISTENERS
bind_ipc = ipcdir.bind_ipc
descriptors_needed = ipcdir.descriptors_needed
remove_socket_file = ipcdir.remove_socket_file
Outlet = outlet_mod.Outlet

#: Topics whose outlet :attr:`Outlets.routes` remembers; past it the memo
#: is cleared, so that a flood of distinct topics costs no memory.
ROUTE_MEMO = 4096


class Limits:
    """The bounds outlets keep to; the mutable ones change on reload.

    One object, shared by everything that reads a bound (the settings, the
    outlets, the delivery, the control socket), and changed in place by
    :meth:`update`: a reload reaches every reader at once, and nobody
    holds an old copy.
    """

    #: What a reload may change: the options declared ``mutable=True``.
    MUTABLE = ('backlog', 'backlog_bytes', 'idle_timeout', 'join_window')

    def __init__(self, backlog, backlog_bytes, max_topics, idle_timeout,
                 join_window, socket_mode=0o660, socket_gid=-1):
        self.backlog = backlog
        #: 0 means no cap.
        self.backlog_bytes = backlog_bytes
        self.max_topics = max_topics
        self.idle_timeout = idle_timeout
        self.join_window = join_window
        self.socket_mode = socket_mode
        #: -1 leaves the group the file gets from the directory.
        self.socket_gid = socket_gid

    def update(self, new):
        """Take the mutable bounds of *new* (a reload's :class:`Limits`)."""
        for name in self.MUTABLE:
            setattr(self, name, getattr(new, name))


class Outlets:
    """Every outlet of the receiver, created on demand and reaped when idle.

    *loop* is the receiver loop: it owns the poller, and outlets register
    their sockets with it through ``register``, ``modify`` and
    ``unregister``. *reclaim* locks the IPC directory again once it is back
    after a removal, and *connections* caps the unix sockets' connections
    (see :class:`ipcdir.DirectoryWatch`; None: every one is taken).
    *send* sends a whole message and *send_backlog* a run of a backlog (the
    chosen wire.Implementation's ``send_message`` and ``send_backlog``).
    """

    def __init__(self, ctx, loop, ipc_dir, limits, counters, warn,
                 clock=time.monotonic, reclaim=None, connections=None,
                 send=wire.py_send_message,
                 send_backlog=wire.py_send_backlog):
        self.ctx = ctx
        self.loop = loop
        self.ipc_dir = ipc_dir
        self.counters = counters
        self.warn = warn
        self.clock = clock
        self.by_key = {}
        #: Topic frame -> its outlet, for the topics routed already: read
        #: by the read path and the compiled loop (wire.forward); cleared
        #: whenever an outlet closes.
        self.routes = {}
        self.watch = ipcdir.DirectoryWatch(
            ipc_dir, counters, warn, reclaim=reclaim,
            connections=connections)
        self.budget = ipcdir.DescriptorBudget()
        self.delivery = delivery.Delivery(loop, limits, counters, warn,
                                          clock, send, send_backlog)
        #: The :class:`Limits`, shared (a reload updates it in place).
        self.limits = limits
        # The message path, bound once: the loop calls it per message.
        self.deliver = self.delivery.deliver

    @property
    def now(self):
        """The loop's time at the start of its current turn: read per
        message instead of the clock, which costs a call each time."""
        return self.delivery.now

    @now.setter
    def now(self, now):
        self.delivery.now = now

    @property
    def buffered_bytes(self):
        """Bytes held by every backlog together."""
        return self.delivery.buffered_bytes

    @property
    def enqueued(self):
        """Messages ever put in a backlog (the loop paces its reading)."""
        return self.delivery.enqueued

    def __iter__(self):
        return iter(list(self.by_key.values()))

    def __len__(self):
        return len(self.by_key)

    @property
    def queued(self):
        """Messages held by all outlets together."""
        return sum(o.queued for o in self.by_key.values())

    # -- creating and closing ----------------------------------------------

    def get(self, route):
        """The outlet for *route*, created if needed.

        Returns None when it cannot be created; the message is then counted
        as rejected with the reason, and the reason is logged.
        """
        outlet = self.by_key.get(route.key)
        if outlet is not None:
            return outlet
        outlet = self._create(route)
        if isinstance(outlet, tuple):
            self._refuse(outlet[0], route.key, outlet[1])
            return None
        return outlet

    def route(self, topic, route):
        """The outlet for *topic*, whose routing is *route*, as
        :meth:`get`; remembered in :attr:`routes`."""
        outlet = self.get(route)
        if outlet is not None:
            if len(self.routes) >= ROUTE_MEMO:
                self.routes.clear()
            self.routes[topic] = outlet
        return outlet

    def pin(self, route):
        """Open the outlet for *route* ahead of any message, and keep it
        open, idle or not, until :meth:`unpin` (the matchmaker agent's
        topics). Returns None when it cannot be opened: the reason is
        logged, and no message is counted, since none was refused.
        """
        outlet = self.by_key.get(route.key)
        if outlet is None:
            outlet = self._create(route, ' in advance')
            if isinstance(outlet, tuple):
                reason, detail = outlet
                self.warn.warning(
                    'pin-' + reason, 'Cannot open outlet %s in advance '
                    '(%s): %s', routing.socket_path(self.ipc_dir, route.key),
                    reason, detail)
                return None
        outlet.pinned = True
        return outlet

    def _create(self, route, how=''):
        """Open a new outlet for *route* and add it; returns it, or
        ``(reason, detail)`` when it cannot (nothing counted or logged
        then). *how* ends the line that logs the opening.
        """
        if len(self.by_key) >= self.limits.max_topics:
            return metrics.TOO_MANY_TOPICS, (
                'already %d outlets (the limit): raise [zmq_receiver] '
                'max_topics if this host really serves that many topics'
                % len(self.by_key))
        short = self.budget.short()
        if short:
            return metrics.OUT_OF_DESCRIPTORS, (
                'a new outlet would leave fewer than %d of the %d '
                'descriptors free for connections; %s' % (
                    short, self.budget.limit, ipcdir.fix_for(
                        metrics.OUT_OF_DESCRIPTORS, self.ipc_dir)))
        if self.watch.dir_gone:
            # Known gone since the last check_files: the bind would fail
            # the same way, after making (and closing) a socket and its
            # monitor for each message.
            return metrics.IPC_DIR_MISSING, '%s; %s' % (
                os.strerror(errno.ENOENT),
                ipcdir.fix_for(metrics.IPC_DIR_MISSING, self.ipc_dir))
        error = None
        try:
            outlet = self._open(route)
        except zmq.ZMQError as exc:
            error = exc
        if error is not None:
            # Reported outside the except block: oslo.log would append the
            # exception being handled to the warning.
            reason = ipcdir.ERRNO_REASONS.get(error.errno,
                                              metrics.OUTLET_ERROR)
            return reason, '%s; %s' % (error.strerror,
                                       ipcdir.fix_for(reason, self.ipc_dir))
        self.by_key[route.key] = outlet
        self.budget.opened()
        self.counters.outlets_created += 1
        LOG.info('Opened %s outlet %s%s', outlet.kind.value.upper(),
                 outlet.path, how)
        return outlet

    def unpin(self, key):
        """Let outlet *key* be reaped once idle, from now on."""
        outlet = self.by_key.get(key)
        if outlet is not None and outlet.pinned:
            outlet.pinned = False
            outlet.last_active = self.clock()

    def _refuse(self, reason, key, detail):
        self.counters.rejected[reason] += 1
        self.warn.warning(
            'refuse-' + reason,
            'Cannot open outlet %s for topic %s (%s): %s; message rejected',
            routing.socket_path(self.ipc_dir, key), key, reason, detail)

    def _open(self, route):
        path = routing.socket_path(self.ipc_dir, route.key)
        sock, monitor = open_socket(self.ctx, route.kind, path, self.limits)
        self.watch.note_bound(sock, path)
        outlet = Outlet(route.key, route.kind, path, sock, monitor,
                        self.clock())
        send = self.delivery
        # Subscriptions and consumers' comings and goings may wait a few
        # ms while the loop is busy (loop.LAZY_MAX_S); with many outlets,
        # polling them at every turn cost more than the forwarding.
        if route.kind is routing.Kind.PUB:
            self.loop.register(sock, zmq.POLLIN,
                               lambda events: send.read_subscriptions(outlet),
                               urgent=False)
        else:
            self.loop.register(sock, 0, lambda events: send.flush(outlet))
        self.loop.register(monitor, zmq.POLLIN, lambda events: count_consumers(
            outlet, self.watch.connections, self.clock), urgent=False)
        if route.kind is routing.Kind.PUSH:
            send.start_joining(outlet)
        return outlet

    def close(self, outlet, reason=metrics.SHUTDOWN, linger=0):
        """Close *outlet*, counting what it still held as dropped."""
        self.delivery.forget(outlet, reason)
        self.watch.forget(outlet.socket, outlet.path)
        self.by_key.pop(outlet.key, None)
        self.routes.clear()
        self.loop.unregister(outlet.socket)
        if outlet.monitor is not None:
            self.loop.unregister(outlet.monitor)
            try:
                outlet.socket.disable_monitor()
            except zmq.ZMQError:
                pass  # the context is ending (ETERM): it goes anyway
            outlet.monitor.close(linger=0)
        # libzmq leaves the file behind. Removing it before the close, not
        # after, can never remove the file of a newer outlet of the same key.
        remove_socket_file(outlet.path)
        outlet.socket.close(linger=linger)

    def close_all(self, linger=0):
        """Close every outlet (at exit). What an outlet with no consumer
        holds is dropped as ``no_consumer``: nobody could have taken it."""
        for outlet in self:
            self.close(outlet, linger=linger, reason=metrics.SHUTDOWN
                       if outlet.consumers else metrics.NO_CONSUMER)

    # -- time and files ------------------------------------------------------

    def next_due(self):
        """When the loop must call :meth:`run_due` (see
        delivery.Delivery.next_due), or None."""
        return self.delivery.next_due()

    def run_due(self):
        """Run what is due now (delivery.Delivery.run_due)."""
        self.delivery.run_due()

    def tick(self):
        """Reap idle outlets; returns whether any was closed.

        An outlet with no consumer and no new message for the idle timeout
        goes even when it still holds messages: they are counted as dropped
        (``no_consumer``). Otherwise a sender could hold every outlet
        (max_topics) for ever with one message each to made-up topics, and
        a stale backlog would reach a service that starts much later.
        """
        self.delivery.run_due()
        now = self.clock()
        self.delivery.expire_joining(now)
        idle = self.limits.idle_timeout
        reaped = [o for o in self.by_key.values()
                  if not o.consumers and not o.pinned and
                  now - o.last_active >= idle]
        for outlet in reaped:
            LOG.info('Closing outlet %s: no consumer and no new message '
                     'for %.3g s', outlet.path, now - outlet.last_active)
            self.close(outlet, reason=metrics.NO_CONSUMER)
            self.counters.outlets_reaped += 1
        self.budget.recount()
        self.check_files()
        return bool(reaped)

    def note_bound(self, sock, path):
        """*sock* was just bound at *path* (ipcdir.DirectoryWatch)."""
        self.watch.note_bound(sock, path)

    def keep_bound(self, sock, path, name, clients):
        """Keep *sock* bound at *path* like an outlet
        (ipcdir.DirectoryWatch.keep_bound)."""
        self.watch.keep_bound(sock, path, name, clients)

    def check_files(self):
        """Bind again every socket whose file vanished
        (ipcdir.DirectoryWatch.check_files)."""
        self.watch.check_files(list(self.by_key.values()), self.limits)

    # -- the stop ------------------------------------------------------------

    def pending(self):
        """Whether a stop must still wait for a consumer
        (delivery.Delivery.pending)."""
        return self.delivery.pending(self.by_key.values())

    @property
    def deliverable(self):
        """Messages that :meth:`pending` waits for."""
        return self.delivery.deliverable(self.by_key.values())


def open_socket(ctx, kind, path, limits):
    """A new outlet's socket for *kind*, bound at *path* (mode and group
    of *limits*), and its monitor, which is connected before the bind.

    Raises zmq.ZMQError (an OSError of the bind becomes one, with its
    errno) with nothing left open.
    """
    if kind is routing.Kind.PUSH:
        sock = ctx.socket(zmq.PUSH)
    else:
        sock = ctx.socket(zmq.XPUB)
        # Every (un)subscription, duplicates included, so that each
        # subscriber is counted and a leaving one is noticed.
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        # A full subscriber makes send() say EAGAIN, so the message is
        # kept in the backlog instead of being dropped silently.
        sock.setsockopt(zmq.XPUB_NODROP, 1)
    monitor = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        # Before the bind: a consumer that connects at once must be
        # counted (or its outlet would be reaped under it), and each
        # connection capped.
        monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        bind_ipc(sock, path, limits)
    except (OSError, zmq.ZMQError) as exc:
        # ZMQError is no OSError: a failed outlet used to stay open,
        # holding descriptors and hanging ctx.term() at exit.
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        sock.close(linger=0)
        if isinstance(exc, zmq.ZMQError):
            raise
        raise zmq.ZMQError(exc.errno, exc.strerror) from exc
    return sock, monitor


def count_consumers(outlet, conns, clock):
    """Count *outlet*'s consumers from what its monitor reports: each
    connection admitted by the caps *conns* (None: every one), or shut
    down there; each event makes it active at *clock*'s time."""
    for event, fd in connections_mod.read_events(outlet.monitor):
        # The outlet's own descriptors say who its consumers are, not
        # what the caps hold: another socket's connection may have
        # taken a closed consumer's descriptor number (the admin
        # tool's, say) before this monitor reports the close.
        if event == zmq.EVENT_ACCEPTED:
            if conns is None or conns.admit(fd, outlet.path):
                outlet.fds[fd] = None
        elif event == zmq.EVENT_DISCONNECTED:
            if conns is not None:
                conns.gone(fd, outlet.path)
            outlet.fds.pop(fd, None)
        outlet.peers = len(outlet.fds)
        outlet.last_active = clock()
