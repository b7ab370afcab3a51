"""Outlet: one topic key's IPC socket, its backlog and its counters.

The state only; :mod:`zmq_receiver.outlets` and :mod:`zmq_receiver.delivery`
decide what happens to it. Part of it is shared with C: the compiled
forwarding path (``_wire.forward``, see :data:`WIRE_ATTRIBUTES`) sends
straight to an outlet's socket and counts what it sent on the outlet,
bypassing Python.
"""

import collections

from zmq_receiver import routing

#: Seconds before a PUB outlet whose subscriber was full tries again. An
#: XPUB socket always reports POLLOUT (libzmq cannot tell which subscriber
#: would take the next message), so a timer stands in for the poll. It
#: starts short, since subscribers that keep up drain libzmq's queue in
#: about a millisecond (a fixed 10 ms left fanout idle most of the time, at
#: a third of its rate), and doubles up to the longest while a retry sends
#: nothing, so that a stuck subscriber costs few turns of the loop.
PUB_RETRY = 0.001
PUB_RETRY_MAX = 0.016

#: The attributes ``_wire.forward`` (zmq_receiver/_wire.c) reads and writes
#: on an Outlet by name, bypassing every Python method: it reads ``direct``
#: (the socket it may send to, or None) once per topic, and after a run of
#: messages sent straight adds their number to ``forwarded`` and sets
#: ``last_active`` to the loop's time. Renaming one of them breaks the
#: compiled path silently (AttributeError at the first message, or a count
#: that never grows); tests/unit/test_outlet.py checks _wire.c against this.
WIRE_ATTRIBUTES = ('direct', 'forwarded', 'last_active')


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
        #: Messages sent: counted by delivery.Delivery.count_forwarded in
        #: Python, and by _wire.forward in C (see WIRE_ATTRIBUTES).
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
        #: bypassing delivery.Delivery.deliver (wire.forward): PUSH with an
        #: empty backlog; PUB with an empty backlog, a subscription to
        #: everything and no full subscriber (delivery.Delivery._pub_direct).
        #: None otherwise. Always the pyzmq Socket, never its libzmq
        #: address: that would outlive the socket.
        self.direct = socket if kind is routing.Kind.PUSH else None
        #: PUB only: when a full subscriber began to hold up the messages
        #: (None: the last send went); whether messages go past one that
        #: does not read (see delivery.Delivery._past_full_subscriber), and
        #: when its connection was last looked at.
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
