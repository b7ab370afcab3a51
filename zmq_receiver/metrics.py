"""The receiver's counters, kept in one place.

Every message read from the network ends in exactly one of: forwarded,
rejected (refused before reaching an outlet), dropped (an outlet could not
keep or deliver it), or still queued in a backlog. :meth:`Counters.snapshot`
reports all of them, with the live figures of each outlet, for the logs now
and for the metrics endpoint and admin tool later.
"""

import collections

# Reasons an outlet drops a message it accepted. Counter labels: stable.
BACKLOG_FULL = 'backlog_full'
BACKLOG_BYTES_FULL = 'backlog_bytes_full'
NO_SUBSCRIBER = 'no_subscriber'
#: Still queued when its outlet was closed for having no consumer, or at a
#: stop, when no consumer was connected to receive it.
NO_CONSUMER = 'no_consumer'
SHUTDOWN = 'shutdown'
#: Sent by a PUB outlet past a subscriber that was full for
#: delivery.SLOW_SUBSCRIBER_GRACE, or while one does not read: the
#: subscribers with room got it, that one did not (once per message, not
#: per subscriber: see delivery.Delivery._past_full_subscriber).
SLOW_SUBSCRIBER = 'slow_subscriber'
#: Refused by its outlet's socket with an error other than "full" (EAGAIN).
SEND_FAILED = 'send_failed'

# Reasons, beside routing's, a message is refused before an outlet.
OVERSIZED = 'oversized_message'
TOO_MANY_FRAMES = 'too_many_frames'
TOO_MANY_TOPICS = 'too_many_topics'
OUT_OF_DESCRIPTORS = 'out_of_descriptors'
IPC_PERMISSION = 'ipc_permission_denied'
IPC_DIR_MISSING = 'ipc_dir_missing'
OUTLET_ERROR = 'outlet_error'

# Outcomes of a request on the control socket (Counters.control).
CONTROL_ANSWERED = 'answered'
CONTROL_UNKNOWN = 'unknown_request'
CONTROL_MALFORMED = 'malformed_request'
#: The peer did not read its earlier replies: this one is dropped.
CONTROL_PEER_FULL = 'reply_dropped_peer_full'
CONTROL_PEER_GONE = 'reply_dropped_peer_gone'

DROP_REASONS = (BACKLOG_FULL, BACKLOG_BYTES_FULL, NO_SUBSCRIBER, NO_CONSUMER,
                SHUTDOWN, SLOW_SUBSCRIBER, SEND_FAILED)


class Counters:
    """Totals since start. Plain attributes: the loop increments them."""

    def __init__(self):
        self.received = 0
        self.forwarded = 0
        self.rejected = collections.Counter()
        self.dropped = collections.Counter()
        #: Connections refused by access control (zmq_receiver.access), by
        #: reason: connections, not messages, since a refused peer sends
        #: none.
        self.denied = collections.Counter()
        #: Requests on the control socket, by outcome.
        self.control = collections.Counter()
        self.outlets_created = 0
        self.outlets_reaped = 0
        #: Times the loop stopped reading the network for a moment because
        #: all it read went into backlogs (reading.Reader.read_paced).
        self.read_pauses = 0
        #: Listeners unbound because their socket file vanished more often
        #: than ipcdir.STALE_LISTENERS allows.
        self.stale_listeners_closed = 0

    def snapshot(self, outlets=()):
        """A plain dict of every total and of each outlet in *outlets*."""
        per_topic = {o.key: o.stats() for o in outlets}
        return {
            'received': self.received,
            'forwarded': self.forwarded,
            'rejected': dict(self.rejected),
            'dropped': dict(self.dropped),
            'denied': dict(self.denied),
            'control': dict(self.control),
            'queued': sum(t['backlog'] for t in per_topic.values()),
            'queued_bytes': sum(t['backlog_bytes']
                                for t in per_topic.values()),
            'outlets': len(per_topic),
            'outlets_created': self.outlets_created,
            'outlets_reaped': self.outlets_reaped,
            'read_pauses': self.read_pauses,
            'stale_listeners_closed': self.stale_listeners_closed,
            'topics': per_topic,
        }


def format_snapshot(snap):
    """One log line for a :meth:`Counters.snapshot`."""
    def reasons(counts):
        return ','.join('%s=%d' % kv for kv in sorted(counts.items())) or '0'
    return ('received=%d forwarded=%d rejected[%s] dropped[%s] queued=%d '
            '(%d bytes) outlets=%d (created %d, reaped %d) '
            'denied_connections[%s]' % (
                snap['received'], snap['forwarded'],
                reasons(snap['rejected']), reasons(snap['dropped']),
                snap['queued'], snap['queued_bytes'], snap['outlets'],
                snap['outlets_created'], snap['outlets_reaped'],
                reasons(snap.get('denied', {}))))
