"""Outlets: one IPC socket per topic key, its bounded backlog and counters.

An outlet sends straight to its socket while its backlog is empty and the
socket takes the message; otherwise the message joins the backlog (FIFO, so
per-key order holds) and the outlet asks the loop for ``POLLOUT`` until the
backlog is empty again. No call here blocks.

PUB outlets (fanout, replies) bind an XPUB socket so that they learn every
subscription. A message that no current subscription matches would be lost
by plain PUB; instead it waits, up to the join window, for a subscriber that
matches it, without holding up the messages that do have one. A subscriber
that is full holds a message up for everyone (XPUB_NODROP) only for
SLOW_SUBSCRIBER_GRACE: then the messages go on to the subscribers with
room, and count as dropped (slow_subscriber) for as long as a subscriber
does not read (see :meth:`Outlets._past_full_subscriber`).

Nothing a socket says when sent to ends the loop: a full socket keeps the
message in the backlog (so does a PUSH whose consumer left half way through
a message: libzmq takes the parts back, and the message goes again, whole),
any other error drops it, counted.

Consumers of PUSH outlets are counted from the socket's monitor (accepted
and disconnected connections; for PUB outlets it gives the subscribers'
descriptors); an outlet with no consumer, no queued message and no traffic
for the idle timeout is closed and its file removed.

A new PUSH outlet is *joining* for its first join window: after a restart
the senders' queued bursts arrive before the consumers, which retry the
socket file every 100 to 200 ms, have found it, and one sender's burst may
come after another's was delivered; a backlog capped at its usual length
would drop most of them. While joining, it is bounded by what all
backlogs together may hold (max_backlog_bytes, and as many messages as
every outlet's backlog), not by its own length. The other outlets still
fill their own backlogs meanwhile, so the messages held can reach twice
backlog x max_topics; max_backlog_bytes, which counts each frame's cost,
is the bound on memory. At the end, one that no
consumer joined keeps the usual number. Its first SETTLE seconds it sends nothing, so that every
consumer already retrying its path is connected before the backlog is
dealt out among them.
"""

import collections
import errno
import fcntl
import logging
import os
import resource
import socket
import struct
import termios
import time

import zmq

from zmq_receiver import connections
from zmq_receiver import errors
from zmq_receiver import ipcfile
from zmq_receiver import metrics
from zmq_receiver import routing
from zmq_receiver import wire

LOG = logging.getLogger(__name__)

#: Seconds before a PUB outlet whose subscriber was full tries again. An
#: XPUB socket always reports POLLOUT (libzmq cannot tell which subscriber
#: would take the next message), so a timer stands in for the poll. It
#: starts short, since subscribers that keep up drain libzmq's queue in
#: about a millisecond (a fixed 10 ms left fanout idle most of the time, at
#: a third of its rate), and doubles up to the longest while a retry sends
#: nothing, so that a stuck subscriber costs few turns of the loop.
PUB_RETRY = 0.001
PUB_RETRY_MAX = 0.016

#: Seconds a PUB outlet lets a full subscriber hold up a message for every
#: subscriber (XPUB_NODROP refuses it for all, and libzmq cannot say which
#: one is full) before it sends the message anyway, without NODROP. Sooner
#: when the outlet's backlog is full. A subscriber that paused only loses
#: nothing; a stalled one (a hung service, a suspended admin tap) costs the
#: others this delay once per stall, not at every message.
SLOW_SUBSCRIBER_GRACE = 1.0
#: Seconds between two looks at the subscribers' connections while one
#: does not read (see Outlets._skipping).
STALL_CHECK = 0.01
#: Seconds a new PUSH outlet holds its messages for the consumers already
#: retrying its path: libzmq retries a failed connect after
#: RECONNECT_IVL (100 ms) plus a random part as long, so all of them are
#: connected within 200 ms of the bind. Sending on the first connection
#: instead gave one of two servers all 8 messages (oslo.messaging's
#: test_multiple_servers).
SETTLE = 0.2

_MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

#: Listeners a socket keeps bound, beside its current one, after its file
#: vanished and it was bound again: the consumers connected through them
#: stay connected. Past it the oldest is unbound, which cuts its consumers
#: (they reconnect to the current file by themselves). Without a bound, a
#: user who may remove files in the IPC directory (a member of a shared
#: group directory without the sticky bit) would make the receiver keep a
#: descriptor for every removal, until libzmq aborts for want of one.
STALE_LISTENERS = 1

#: listen(2) backlog of the unix sockets (outlets, control; libzmq's
#: default is 100). Connections over a cap are shut down only once libzmq
#: has accepted them and the loop has read its monitor; a short backlog
#: makes a local flood of connections wait for libzmq's accepts, so that
#: the loop mostly keeps up (under 256 descriptors, with 100 three flooding
#: processes made libzmq abort the receiver; with 2, two never did, six
#: did once in two runs: see README, "Limits"). A consumer that finds it
#: full retries after libzmq's reconnect interval (0.1 s).
LISTEN_BACKLOG = 2
#: Topics whose outlet :attr:`Outlets.routes` remembers; past it the memo
#: is cleared, so that a flood of distinct topics costs no memory.
ROUTE_MEMO = 4096

_ERRNO_REASONS = {
    errno.EMFILE: metrics.OUT_OF_DESCRIPTORS,
    errno.ENFILE: metrics.OUT_OF_DESCRIPTORS,
    errno.EACCES: metrics.IPC_PERMISSION,
    errno.EPERM: metrics.IPC_PERMISSION,
    errno.ENOENT: metrics.IPC_DIR_MISSING,
}


class Limits:
    """The bounds outlets keep to; the mutable ones change on reload."""

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


class Outlet:
    """One topic key's socket, backlog and counters."""

    __slots__ = ('key', 'kind', 'path', 'socket', 'monitor', 'backlog',
                 'waiting', 'backlog_bytes', 'subscriptions', 'peers',
                 'forwarded', 'dropped', 'last_active', 'polling_out',
                 'retry_at', 'retry_delay', 'pinned', 'direct',
                 'blocked_since', 'slow', 'stall_checked', 'fds',
                 'joining_until', 'settle_until')

    def __init__(self, key, kind, path, socket, monitor, now):
        self.key = key
        self.kind = kind
        self.path = path
        self.socket = socket
        self.monitor = monitor
        #: (frames, size) the socket did not take yet, oldest first.
        self.backlog = collections.deque()
        #: PUB only: (deadline, frames, size) no subscription matches yet.
        self.waiting = collections.deque()
        self.backlog_bytes = 0
        #: PUB only: subscribed prefix -> number of subscribers.
        self.subscriptions = collections.Counter()
        #: PUSH only: connected consumers, from the monitor.
        self.peers = 0
        self.forwarded = 0
        self.dropped = collections.Counter()
        self.last_active = now
        self.polling_out = False
        #: PUB only: when to try the backlog again (None: not waiting).
        self.retry_at = None
        #: PUB only: the wait before the next retry (PUB_RETRY doubled
        #: while retries send nothing).
        self.retry_delay = PUB_RETRY
        #: Kept open even when idle (the matchmaker agent serves its topic).
        self.pinned = False
        #: The socket while a message may be sent straight to it,
        #: bypassing :meth:`Outlets.deliver` (wire.forward): PUSH with an
        #: empty backlog. None otherwise. Always the pyzmq Socket, never
        #: its libzmq address: that would outlive the socket.
        self.direct = socket if kind is routing.Kind.PUSH else None
        #: PUB only: when a full subscriber began to hold up the messages
        #: (None: the last send went); whether messages go past one that
        #: does not read (see Outlets._past_full_subscriber), and when its
        #: connection was last looked at.
        self.blocked_since = None
        self.slow = False
        self.stall_checked = 0.0
        #: The descriptors of the connected consumers, from the monitor,
        #: and (PUB, while slow) the bytes unread on each at the last look.
        self.fds = {}
        #: PUSH only: until when it may be joining (see the module's
        #: docstring); None once it is not (or never was).
        self.joining_until = None
        #: PUSH only: until when it sends nothing (SETTLE); None after.
        self.settle_until = None

    @property
    def consumers(self):
        """Connected consumers (PUSH) or live subscriptions (PUB)."""
        if self.kind is routing.Kind.PUSH:
            return self.peers
        return sum(self.subscriptions.values())

    @property
    def queued(self):
        """Messages held: backlog plus those waiting for a subscriber."""
        return len(self.backlog) + len(self.waiting)

    def subscribed(self, msg_id):
        """Whether some subscription matches frame 0 *msg_id* (PUB only)."""
        subs = self.subscriptions
        if not subs:
            return False
        if b'' in subs or msg_id in subs:
            return True
        return any(msg_id.startswith(prefix) for prefix in subs)

    def stats(self):
        """This outlet's live figures as a plain dict."""
        return {
            'kind': self.kind.value,
            'consumers': self.consumers,
            'backlog': self.queued,
            'backlog_bytes': self.backlog_bytes,
            'forwarded': self.forwarded,
            'dropped': dict(self.dropped),
        }


class Outlets:
    """Every outlet of the receiver, created on demand and reaped when idle.

    *loop* is the receiver loop: it owns the poller, and outlets register
    their sockets with it through ``register``, ``modify`` and
    ``unregister``.
    """

    def __init__(self, ctx, loop, ipc_dir, limits, counters, warn,
                 clock=time.monotonic, reclaim=None):
        self.ctx = ctx
        self.loop = loop
        self.ipc_dir = ipc_dir
        self.limits = limits
        self.counters = counters
        self.warn = warn
        self.clock = clock
        self.by_key = {}
        #: Topic frame -> its outlet, for the topics routed already: read
        #: by the read path and the compiled loop (wire.forward); cleared
        #: whenever an outlet closes.
        self.routes = {}
        #: The loop's time at the start of its current turn: read per
        #: message instead of the clock, which costs a call each time.
        self.now = clock()
        #: Bytes held by every backlog together.
        self.buffered_bytes = 0
        #: Messages held by every backlog together (what :attr:`queued`
        #: counts): whatever takes a message out of a backlog takes it
        #: off, as it takes its size off buffered_bytes.
        self.held = 0
        #: Messages ever put in a backlog: the loop paces its reading by
        #: it (Receiver._read_paced).
        self.enqueued = 0
        #: PUB outlets holding messages that wait for a subscriber.
        self._waiting = set()
        #: PUB outlets whose subscribers were full: retried on a timer.
        self._retry = set()
        #: New PUSH outlets still joining, and those still settling.
        self._joining = set()
        self._settling = set()
        #: At a stop (see :meth:`pending`): since when the consumers'
        #: connections carry nothing unread, and when to look again.
        self._quiet_since = None
        self._drain_check = None
        #: Called when the IPC directory is back after it was removed, to
        #: lock it again (rundir.InstanceLock.reacquire); may raise
        #: errors.ReceiverError.
        self.reclaim = reclaim
        #: The IPC directory's last stat (for its owner and mode once it
        #: is gone); False while it is gone (or back, but not ours again).
        try:
            self._dir_stat = os.stat(ipc_dir)
        except OSError:
            self._dir_stat = None
        #: Whether the last check_files found the directory gone: new
        #: outlets are refused without trying.
        self._dir_gone = False
        #: The directory's (st_dev, st_ino, st_mtime_ns, st_ctime_ns) when
        #: check_files last looked at its files: any file made or removed
        #: in it changes them, and so does a new directory.
        self._dir_key = None
        #: Whether check_files must look at the files even so (a bind
        #: failed, or the key may miss a change made in the same instant).
        self._rescan = True
        #: Sockets bound beside the outlets (the control socket) whose
        #: files check_files keeps too: path -> (socket, name, clients),
        #: as given to keep_bound.
        self._kept = {}
        #: (soft RLIMIT_NOFILE, open descriptors) counted once a tick when
        #: a new outlet needs them (None: to count again), and the outlets
        #: opened since.
        self._fds = None
        self._fds_opened = 0
        #: The unix sockets' connections.Connections: each consumer's
        #: connection is admitted there (caps on descriptors), or shut
        #: down. None: every one is taken.
        self.connections = None
        #: Socket -> the endpoints of its listeners whose file vanished,
        #: oldest first (at most STALE_LISTENERS).
        self._stale = {}

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
        short = self._descriptors_short()
        if short:
            return metrics.OUT_OF_DESCRIPTORS, (
                'a new outlet would leave fewer than %d of the %d '
                'descriptors free for connections; %s' % (
                    short, self._fds[0], _fix_for(
                        metrics.OUT_OF_DESCRIPTORS, self.ipc_dir)))
        if self._dir_gone:
            # Known gone since the last check_files: the bind would fail
            # the same way, after making (and closing) a socket and its
            # monitor for each message.
            return metrics.IPC_DIR_MISSING, '%s; %s' % (
                os.strerror(errno.ENOENT),
                _fix_for(metrics.IPC_DIR_MISSING, self.ipc_dir))
        error = None
        try:
            outlet = self._open(route)
        except zmq.ZMQError as exc:
            error = exc
        if error is not None:
            # Reported outside the except block: oslo.log would append the
            # exception being handled to the warning.
            reason = _ERRNO_REASONS.get(error.errno, metrics.OUTLET_ERROR)
            return reason, '%s; %s' % (error.strerror,
                                       _fix_for(reason, self.ipc_dir))
        self.by_key[route.key] = outlet
        self._fds_opened += 1
        self.counters.outlets_created += 1
        LOG.info('Opened %s outlet %s%s', outlet.kind.value.upper(),
                 outlet.path, how)
        return outlet

    def _descriptors_short(self):
        """The reserve a new outlet would cut into (0: there is room).

        Counts the open descriptors in /proc/self/fd at most once a tick
        (:meth:`tick` asks for a new count), and adds FDS_PER_OUTLET for
        each outlet opened since: a flood of new topics, refused or not,
        lists no directory per message. Closed outlets are not taken off
        until the next count. 0 where /proc is not.
        """
        if self._fds is None:
            self._fds = (_nofile(), _open_descriptors())
            self._fds_opened = 0
        limit, used = self._fds
        if used is None or limit == resource.RLIM_INFINITY:
            return 0
        used += self._fds_opened * FDS_PER_OUTLET
        reserve = min(FD_RESERVE, limit // 8)
        return reserve if used + FDS_PER_OUTLET + reserve > limit else 0

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
        if route.kind is routing.Kind.PUSH:
            sock = self.ctx.socket(zmq.PUSH)
        else:
            sock = self.ctx.socket(zmq.XPUB)
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
            bind_ipc(sock, path, self.limits)
            self.note_bound(sock, path)
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
        outlet = Outlet(route.key, route.kind, path, sock, monitor,
                        self.clock())
        if route.kind is routing.Kind.PUB:
            self.loop.register(sock, zmq.POLLIN,
                               lambda events: self._read_subscriptions(outlet))
        else:
            self.loop.register(sock, 0,
                               lambda events: self._flush(outlet))
        self.loop.register(monitor, zmq.POLLIN,
                           lambda events: self._on_monitor(outlet))
        if route.kind is routing.Kind.PUSH:
            self._start_joining(outlet)
        return outlet

    def _start_joining(self, outlet):
        now = self.clock()
        if self.limits.join_window > 0:
            outlet.joining_until = now + self.limits.join_window
            self._joining.add(outlet)
        # Nothing is sent straight (wire.forward) until it has settled.
        outlet.direct = None
        outlet.settle_until = now + SETTLE
        self._settling.add(outlet)

    def close(self, outlet, reason=metrics.SHUTDOWN, linger=0):
        """Close *outlet*, counting what it still held as dropped."""
        outlet.direct = None
        if outlet.queued:
            LOG.warning('Outlet %s closed with %d undelivered messages '
                        '(%s)%s', outlet.path, outlet.queued, reason,
                        ': no consumer was connected to receive them'
                        if reason == metrics.NO_CONSUMER else '')
            self._drop(outlet, reason, outlet.queued)
        self.buffered_bytes -= outlet.backlog_bytes
        self.held -= outlet.queued
        outlet.backlog.clear()
        outlet.waiting.clear()
        outlet.backlog_bytes = 0
        self._waiting.discard(outlet)
        self._retry.discard(outlet)
        self._joining.discard(outlet)
        self._settling.discard(outlet)
        self._stale.pop(outlet.socket, None)
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
        if self.connections is not None:
            self.connections.forget_address(outlet.path)
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

    # -- the message path --------------------------------------------------

    def deliver(self, outlet, frames, size):
        """Send *frames* through *outlet* now, or keep them in order."""
        outlet.last_active = self.now
        if outlet.kind is routing.Kind.PUB and not outlet.subscribed(
                frames[0]):
            if self.limits.join_window <= 0:
                self._drop(outlet, metrics.NO_SUBSCRIBER)
                return
            if self._admit(outlet, size):
                outlet.waiting.append(
                    (outlet.last_active + self.limits.join_window, frames,
                     size))
                self._waiting.add(outlet)
            return
        if (outlet.backlog and outlet.kind is routing.Kind.PUB and
                outlet.queued >= self.limits.backlog):
            # Full behind a full subscriber: send the oldest past it,
            # instead of dropping the newest for every subscriber.
            self._flush(outlet)
        if not outlet.backlog and outlet.settle_until is None:
            sent = self._send(outlet, frames)
            if sent:
                outlet.forwarded += 1
                self.counters.forwarded += 1
                return
            if sent is None:
                return
        if self._admit(outlet, size):
            self._enqueue(outlet, frames, size)

    def _send(self, outlet, frames):
        """Send *frames* on *outlet*'s socket now: True when sent; False
        when it cannot take them now, and the caller keeps them; None when
        they are dropped (counted). Whatever the socket says is the
        outlet's event, never an exception for the loop."""
        try:
            wire.send_message(outlet.socket, frames)
        except zmq.Again:
            error = None
        except zmq.ZMQError as exc:
            error = exc
        else:
            outlet.blocked_since = None
            if outlet.slow and self._skipping(outlet):
                self._drop(outlet, metrics.SLOW_SUBSCRIBER)
                return None
            return True
        # Outside the except blocks: oslo.log would append the exception
        # being handled to any warning logged there.
        if error is not None:
            self._send_failed(outlet, error)
            return None
        if outlet.kind is routing.Kind.PUB:
            return self._past_full_subscriber(outlet, frames)
        return False

    def _past_full_subscriber(self, outlet, frames):
        """A PUB send that XPUB_NODROP refused, a matching subscriber being
        full: False to keep the message for now, or, once that lasted
        SLOW_SUBSCRIBER_GRACE (at once when the backlog is full), None:
        sent without NODROP, so that libzmq gives it to every subscriber
        with room and none to a full one, and counted as dropped
        (slow_subscriber).

        From then on libzmq sends that subscriber nothing until it has read
        half its queue, and says nothing about it: the outlet is *slow*,
        and every message it sends counts as dropped too, for as long as a
        subscriber's connection holds bytes its peer does not read
        (:meth:`_skipping`).

        What the count can say, since libzmq keeps no count per subscriber:
        messages that at least one subscriber missed, not copies (the
        subscribers with room got them). It is exact for a subscriber that
        stopped reading. It counts too many when a full subscriber's
        subscription does not match them, and too few (at most half a
        queue, 500 messages by default) for one that reads again, slowly,
        while libzmq still skips it.
        """
        now = self.clock()
        if outlet.blocked_since is None:
            outlet.blocked_since = now
        if (outlet.queued < self.limits.backlog and
                now - outlet.blocked_since < SLOW_SUBSCRIBER_GRACE):
            # (Even when slow: libzmq skips the stalled subscriber by now,
            # so this one may be a subscriber that only paused.)
            return False
        sock = outlet.socket
        error = None
        try:
            sock.setsockopt(zmq.XPUB_NODROP, 0)
            try:
                wire.send_message(sock, frames)
            finally:
                sock.setsockopt(zmq.XPUB_NODROP, 1)
        except zmq.ZMQError as exc:
            error = exc
        if error is not None:
            self._send_failed(outlet, error)
            return None
        if not outlet.slow:
            outlet.slow = True
            outlet.stall_checked = now
            for fd in outlet.fds:
                outlet.fds[fd] = None
        self._drop(outlet, metrics.SLOW_SUBSCRIBER)
        self.warn.warning(
            'slow-subscriber',
            'A subscriber of outlet %s is full and holds up the others '
            '(%d messages queued, for %.1f s): sending on to the others '
            'without it, counting what it misses as dropped '
            '(slow_subscriber); check the services subscribed to it (a '
            'hung one, a suspended admin tap)', outlet.path, outlet.queued,
            now - outlet.blocked_since)
        return None

    def _skipping(self, outlet):
        """Whether libzmq may still skip a subscriber of slow *outlet*:
        one of its connections holds bytes that its peer did not read
        since the last look (every STALL_CHECK; at the first look, bytes
        at all). Ends the slow state otherwise."""
        now = self.clock()
        if now - outlet.stall_checked >= STALL_CHECK:
            outlet.stall_checked = now
            stalled = False
            fds = outlet.fds
            for fd, before in fds.items():
                unread = _unread(fd)
                fds[fd] = unread
                if unread and before in (None, unread):
                    stalled = True
            if not stalled:
                outlet.slow = False
                LOG.info('Every subscriber of outlet %s reads again: '
                         'messages go to all of them again', outlet.path)
        return outlet.slow

    def _send_failed(self, outlet, error):
        # Reported here, outside the except block: oslo.log would append
        # the exception being handled to the warning.
        self._drop(outlet, metrics.SEND_FAILED)
        self.warn.warning(
            'send-failed',
            'Outlet %s refused a message (%s, errno %d): dropped it '
            '(send_failed); if it goes on, restart the receiver and report '
            'it', outlet.path, error.strerror, error.errno)

    def _admit(self, outlet, size):
        """Whether the backlogs have room for one more message of *size*.

        A joining outlet may hold more than the backlog limit while all of
        them together hold fewer messages than every outlet's backlog could
        (rpc_zmq_topic_backlog x max_topics): within the bounds of memory
        the receiver always had, counted in messages and in bytes.
        """
        limits = self.limits
        if outlet.queued >= limits.backlog and (
                outlet.joining_until is None or
                self.held >= limits.backlog * limits.max_topics):
            self._drop(outlet, metrics.BACKLOG_FULL)
            self.warn.warning(
                'backlog-full',
                'Backlog of outlet %s is full (%d messages): dropped the '
                'newest message; check that its consumer runs and keeps '
                'up, or raise rpc_zmq_topic_backlog', outlet.path,
                self.limits.backlog)
            return False
        cap = self.limits.backlog_bytes
        if cap and self.buffered_bytes + size > cap:
            self._drop(outlet, metrics.BACKLOG_BYTES_FULL)
            self.warn.warning(
                'backlog-bytes-full',
                'All backlogs together hold %d bytes (limit %d): dropped '
                'a %d-byte message for %s; check the consumers that do not '
                'keep up, or raise [zmq_receiver] max_backlog_bytes',
                self.buffered_bytes, cap, size, outlet.path)
            return False
        outlet.backlog_bytes += size
        self.buffered_bytes += size
        self.held += 1
        return True

    def _enqueue(self, outlet, frames, size):
        # Later messages must queue behind this one, not overtake it.
        outlet.direct = None
        self.enqueued += 1
        outlet.backlog.append((frames, size))
        self._wait_for_room(outlet)

    def _wait_for_room(self, outlet):
        """Have the backlog flushed once the socket may take more."""
        if outlet.settle_until is not None:
            # run_due flushes it once it has settled.
            return
        if outlet.kind is routing.Kind.PUB:
            if outlet.retry_at is None:
                outlet.retry_at = self.clock() + outlet.retry_delay
                self._retry.add(outlet)
        elif not outlet.polling_out:
            outlet.polling_out = True
            self.loop.modify(outlet.socket, zmq.POLLOUT)

    def _drop(self, outlet, reason, count=1):
        outlet.dropped[reason] += count
        self.counters.dropped[reason] += count

    def _flush(self, outlet):
        """Send from the backlog until it is empty or the socket is full."""
        backlog = outlet.backlog
        sock = outlet.socket
        while backlog:
            frames, size = backlog[0]
            sent = self._send(outlet, frames)
            if sent is False:
                self._wait_for_room(outlet)
                return
            backlog.popleft()
            outlet.backlog_bytes -= size
            self.buffered_bytes -= size
            self.held -= 1
            if sent:
                outlet.forwarded += 1
                self.counters.forwarded += 1
        if outlet.kind is routing.Kind.PUSH:
            outlet.direct = sock
        if outlet.polling_out:
            # PUSH only: a PUB outlet waits on its retry timer instead.
            outlet.polling_out = False
            self.loop.modify(outlet.socket, 0)

    # -- consumers -------------------------------------------------------------

    def _read_subscriptions(self, outlet):
        joined = False
        while True:
            try:
                msg = outlet.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not msg:
                continue
            prefix = msg[1:]
            if msg[0] == 1:
                outlet.subscriptions[prefix] += 1
                joined = True
            elif msg[0] == 0 and outlet.subscriptions[prefix] > 0:
                outlet.subscriptions[prefix] -= 1
                if not outlet.subscriptions[prefix]:
                    del outlet.subscriptions[prefix]
        outlet.last_active = self.clock()
        if joined and outlet.waiting:
            self._release_waiting(outlet)

    def _release_waiting(self, outlet):
        """Move the waiting messages a subscription now matches, in order."""
        still = collections.deque()
        for entry in outlet.waiting:
            frames = entry[1]
            if outlet.subscribed(frames[0]):
                # Already admitted: its bytes stay counted while it moves.
                outlet.backlog.append((frames, entry[2]))
            else:
                still.append(entry)
        outlet.waiting = still
        if not still:
            self._waiting.discard(outlet)
        if outlet.backlog and outlet.retry_at is None:
            self._flush(outlet)

    def _on_monitor(self, outlet):
        conns = self.connections
        for event, fd in connections.read_events(outlet.monitor):
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
            outlet.last_active = self.clock()

    # -- time ------------------------------------------------------------------

    def next_due(self):
        """The earliest time a join window ends, a PUB outlet retries or a
        new PUSH outlet has settled, or None; the loop must call
        :meth:`run_due` then, not a tick later.
        """
        if (not self._waiting and not self._retry and not self._settling and
                self._drain_check is None):
            return None
        times = [o.waiting[0][0] for o in self._waiting]
        times.extend(o.retry_at for o in self._retry)
        times.extend(o.settle_until for o in self._settling)
        if self._drain_check is not None:
            times.append(self._drain_check)
        return min(times)

    def run_due(self):
        """Expire the join windows that ended; retry full PUB outlets;
        start sending from the new PUSH outlets that have settled."""
        now = self.clock()
        for outlet in [o for o in self._settling if o.settle_until <= now]:
            self._settling.discard(outlet)
            outlet.settle_until = None
            # With an empty backlog this turns direct sending on.
            self._flush(outlet)
        for outlet in [o for o in self._retry if o.retry_at <= now]:
            self._retry.discard(outlet)
            outlet.retry_at = None
            sent = outlet.forwarded
            self._flush(outlet)
            if outlet.retry_at is None or outlet.forwarded != sent:
                outlet.retry_delay = PUB_RETRY
            else:
                outlet.retry_delay = min(2 * outlet.retry_delay,
                                         PUB_RETRY_MAX)
            if outlet.retry_at is not None:
                outlet.retry_at = now + outlet.retry_delay
        for outlet in list(self._waiting):
            waiting = outlet.waiting
            expired = 0
            while waiting and waiting[0][0] <= now:
                size = waiting.popleft()[2]
                outlet.backlog_bytes -= size
                self.buffered_bytes -= size
                self.held -= 1
                expired += 1
            if expired:
                self._drop(outlet, metrics.NO_SUBSCRIBER, expired)
                self.warn.warning(
                    'no-subscriber',
                    'No subscriber joined outlet %s within the join window '
                    '(%.1f s): dropped %d messages; check that the service '
                    'listening on it runs', outlet.path,
                    self.limits.join_window, expired)
            if not waiting:
                self._waiting.discard(outlet)

    def _expire_joining(self, now):
        """End the joining of the outlets whose join window has passed.

        One that no consumer joined keeps no more than the backlog limit:
        the newest beyond it are dropped (``backlog_full``), as they would
        have been on arrival. One with a consumer keeps what it holds for
        it (within max_backlog_bytes); new messages wait for room again.
        """
        for outlet in [o for o in self._joining if o.joining_until <= now]:
            outlet.joining_until = None
            self._joining.discard(outlet)
            excess = len(outlet.backlog) - self.limits.backlog
            if outlet.peers or excess <= 0:
                continue
            for _ in range(excess):
                size = outlet.backlog.pop()[1]
                outlet.backlog_bytes -= size
                self.buffered_bytes -= size
                self.held -= 1
            self._drop(outlet, metrics.BACKLOG_FULL, excess)
            self.warn.warning(
                'join-backlog-full',
                'No consumer connected to new outlet %s within the join '
                'window (%.1f s): dropped the newest %d of its messages, '
                'beyond rpc_zmq_topic_backlog (%d); check that the service '
                'listening on it runs', outlet.path,
                self.limits.join_window, excess, self.limits.backlog)

    def tick(self):
        """Reap idle outlets; returns whether any was closed.

        An outlet with no consumer and no new message for the idle timeout
        goes even when it still holds messages: they are counted as dropped
        (``no_consumer``). Otherwise a sender could hold every outlet
        (max_topics) for ever with one message each to made-up topics, and
        a stale backlog would reach a service that starts much later.
        """
        self.run_due()
        now = self.clock()
        self._expire_joining(now)
        idle = self.limits.idle_timeout
        reaped = [o for o in self.by_key.values()
                  if not o.consumers and not o.pinned and
                  now - o.last_active >= idle]
        for outlet in reaped:
            LOG.info('Closing outlet %s: no consumer and no new message '
                     'for %.3g s', outlet.path, now - outlet.last_active)
            self.close(outlet, reason=metrics.NO_CONSUMER)
            self.counters.outlets_reaped += 1
        self._fds = None
        self.check_files()
        return bool(reaped)

    def note_bound(self, sock, path):
        """Tell the connection caps the name *sock* was just bound with at
        *path* (see connections.Connections.bound)."""
        if self.connections is not None:
            self.connections.bound(
                path, sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def keep_bound(self, sock, path, name, clients):
        """Have :meth:`check_files` bind *sock* at *path* again whenever
        its file is missing, like an outlet's (the control socket). *name*
        says what it is and *clients* who connect to it, in the log. A
        socket whose first bind failed is bound once it can be.
        """
        self._kept[path] = (sock, name, clients)
        self._rescan = True

    def check_files(self):
        """Bind again every outlet whose socket file vanished.

        Someone may remove the IPC directory (or a file in it) under a
        running receiver: connected consumers keep their connections, but
        no new one can connect. Once a second, one ``stat`` of the
        directory notices it; only when the directory changed since (a
        file made or removed in it, or a new directory) one ``lstat`` per
        outlet finds the files that vanished. Once the directory is back
        each outlet binds its path again, keeping its backlog and order,
        and so do the sockets of :meth:`keep_bound`. The old listener is
        kept, not unbound: unbinding would cut the consumers still
        connected through it.
        """
        try:
            st = os.stat(self.ipc_dir)
        except OSError as exc:
            st, error = None, exc.strerror
        if st is None:
            self._dir_gone = True
            if self._dir_stat is not False:
                self._dir_stat, known = False, self._dir_stat
                fix = ''
                if known is not None:
                    fix = ' (install -d -o %d -g %d -m %o %s)' % (
                        known.st_uid, known.st_gid,
                        known.st_mode & 0o7777, self.ipc_dir)
                LOG.error(
                    'The IPC directory %s is gone (%s): the socket files '
                    'of its %d outlets vanished with it, so no service can '
                    'connect to them (those connected keep their '
                    'connection) and new topics are refused (%s); recreate '
                    'it, owned by the receiver\'s user%s: the receiver '
                    'binds its sockets again within a second, and consumers '
                    'reconnect by themselves', self.ipc_dir, error,
                    len(self.by_key), metrics.IPC_DIR_MISSING, fix)
            return
        self._dir_gone = False
        if self._dir_stat is False:
            failure = None
            if self.reclaim is not None:
                try:
                    self.reclaim()
                except (errors.ReceiverError, OSError) as exc:
                    failure = exc
            if failure is not None:
                # Another receiver's files now, or not ours to write: keep
                # off (logged outside the except block, or oslo.log would
                # append the exception to the line).
                self.warn.warning(
                    'ipc-dir-taken', 'The IPC directory %s is back, but '
                    'this receiver cannot lock it again: %s; its socket '
                    'files are not bound again', self.ipc_dir, failure)
                return
            LOG.warning('The IPC directory %s is back: binding the socket '
                        'files of %d outlets again', self.ipc_dir,
                        len(self.by_key))
        self._dir_stat = st
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        if key == self._dir_key and not self._rescan:
            return
        self._dir_key = key
        # A change made within the timestamps' granularity of this stat
        # would leave them as they are: look again until they are older.
        self._rescan = time.time_ns() - st.st_mtime_ns < _RACY_NS
        for outlet in list(self.by_key.values()):
            if not self._rebind(outlet.socket, outlet.path, 'Socket file',
                                'its consumers'):
                continue
            LOG.warning('Socket file %s had vanished: bound it again (%d '
                        'messages queued for it); its consumers reconnect '
                        'by themselves', outlet.path, outlet.queued)
        for path, (sock, name, clients) in list(self._kept.items()):
            if sock.closed:
                del self._kept[path]
                self._stale.pop(sock, None)
            elif self._rebind(sock, path, name, clients):
                LOG.warning('%s %s was missing: binding it again; %s can '
                            'connect again', name, path, clients)

    def _rebind(self, sock, path, name, clients):
        """Bind *sock* at *path* again if its file is missing; whether it
        was, and is bound again. A failure is logged (*name* and *clients*
        say what and for whom) and retried on the next check."""
        try:
            os.lstat(path)
            return False
        except FileNotFoundError:
            pass
        except OSError:
            self._rescan = True
            return False
        failure = None
        previous = _last_endpoint(sock)
        try:
            bind_ipc(sock, path, self.limits)
        except OSError as exc:
            failure = exc
        if failure is None:
            self.note_bound(sock, path)
            if previous:
                self._retire(sock, path, previous)
            return True
        self._rescan = True
        reason = _ERRNO_REASONS.get(failure.errno, metrics.OUTLET_ERROR)
        self.warn.warning(
            'rebind-' + reason,
            '%s %s vanished and cannot be bound again (%s): %s; %s cannot '
            'connect until then', name, path, failure.strerror,
            _fix_for(reason, self.ipc_dir), clients)
        return False

    def _retire(self, sock, path, endpoint):
        """Keep *sock*'s listener *endpoint*, whose file at *path*
        vanished, for the consumers still connected through it; unbind the
        oldest beyond STALE_LISTENERS."""
        stale = self._stale.setdefault(sock, collections.deque())
        stale.append(endpoint)
        while len(stale) > STALE_LISTENERS:
            oldest = stale.popleft()
            try:
                sock.unbind(oldest)
            except zmq.ZMQError:
                pass  # gone with the context, or never bound: nothing held
            if self.connections is not None:
                self.connections.unbound(path, oldest)
            self.counters.stale_listeners_closed += 1
            self.warn.warning(
                'stale-listener',
                'Socket file %s vanished again: unbound the listener of an '
                'older copy of it, so that removals cannot use up the '
                'receiver\'s descriptors; its consumers reconnect by '
                'themselves. If nobody should remove files in %s, find who '
                'does (auditctl -w %s -p wa); in a shared directory, chmod '
                '+t %s', path, self.ipc_dir, self.ipc_dir, self.ipc_dir)

    @property
    def dir_missing(self):
        """Whether the IPC directory was found gone (and not yet ours
        again) by the last :meth:`check_files`."""
        return self._dir_stat is False

    def pending(self):
        """Whether an outlet with a consumer still holds a message for it,
        or a consumer has not read all that its connection carries yet: a
        stop waits for those only (what has no consumer, or waits for a
        subscriber that has not joined, cannot be delivered).

        libzmq's linger does not cover the second: closing a socket drops
        what its connections still buffer (measured: 8 to 11 of 201 4 KiB
        messages to a consumer that was reading). So the stop waits until
        the kernel has held nothing unread on any consumer's connection
        for STALL_CHECK, which libzmq, still open, uses to write what it
        has left; :meth:`next_due` wakes the loop to look again.
        """
        self._drain_check = None
        connected = unread = False
        for o in self.by_key.values():
            if not o.consumers:
                continue
            if o.backlog:
                self._quiet_since = None
                return True
            if o.fds:
                connected = True
                unread = unread or any(_unread(fd) for fd in o.fds)
        if not connected:
            return False
        now = self.clock()
        if unread:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since >= STALL_CHECK:
            return False
        self._drain_check = now + STALL_CHECK
        return True

    @property
    def deliverable(self):
        """Messages that :meth:`pending` waits for."""
        return sum(len(o.backlog) for o in self.by_key.values()
                   if o.consumers)


#: Nanoseconds within which a directory's mtime may miss a later change
#: (coarse kernel clocks; filesystems that keep whole seconds).
_RACY_NS = 2 * 10 ** 9

#: Descriptors one outlet takes: its socket's mailbox, its listener, and
#: the monitor pair's two mailboxes.
FDS_PER_OUTLET = 4
#: Descriptors kept free for connections (consumers, senders, the admin
#: tool), at most an eighth of the limit: libzmq 4.3 aborts the whole
#: process (errno_assert in ipc_listener.cpp) when it cannot accept a
#: connection to an IPC socket for want of a descriptor.
FD_RESERVE = 64


def descriptors_needed(max_topics):
    """Descriptors *max_topics* outlets may use, with the reserve."""
    return FDS_PER_OUTLET * max_topics + FD_RESERVE


def _nofile():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _open_descriptors():
    """The process's open descriptors, from /proc/self/fd; None where
    /proc is not."""
    try:
        return len(os.listdir('/proc/self/fd'))
    except OSError:
        return None


def bind_ipc(sock, path, limits):
    """Bind *sock* at *path* with the mode and group of *limits*, never
    following a link someone put in the directory (:mod:`ipcfile`).

    Raises OSError when it cannot (a zmq.ZMQError, which is not one, is
    turned into one with the same errno). A stale file left by an earlier
    run, or anything else at *path*, is replaced.
    """
    ipcfile.bind(sock, path, limits.socket_mode, limits.socket_gid)


def _unread(fd):
    """Bytes sent on unix stream socket *fd* (libzmq's: only borrowed)
    that its peer has not read yet (SIOCOUTQ); 0 for any other
    descriptor, or one closed meanwhile."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return 0
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            return 0
        return struct.unpack(
            'i', fcntl.ioctl(fd, termios.TIOCOUTQ, b'\0\0\0\0'))[0]
    except OSError:
        return 0
    finally:
        sock.detach()


def _last_endpoint(sock):
    """The endpoint *sock* was last bound at ('' when never)."""
    try:
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except zmq.ZMQError:
        return ''


def remove_socket_file(path):
    """Remove the socket file *path*; a failure is logged, not raised."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning('Cannot remove socket file %s: %s', path, exc.strerror)


def _fix_for(reason, ipc_dir):
    if reason == metrics.OUT_OF_DESCRIPTORS:
        return ('the process is out of file descriptors: raise its limit '
                '(LimitNOFILE= in the unit, ulimit -n) or lower '
                '[zmq_receiver] max_topics')
    if reason == metrics.IPC_PERMISSION:
        return ('the receiver (uid %d) may not create sockets in %s: make '
                'the directory writable for it' % (os.geteuid(), ipc_dir))
    if reason == metrics.IPC_DIR_MISSING:
        return ('the IPC directory %s is gone: recreate it (or restart '
                'the receiver, which creates it)' % ipc_dir)
    return 'see the error above'
