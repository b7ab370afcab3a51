"""Delivery: sending to the outlets, their backlogs, and their timers.

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
does not read (see :meth:`Delivery._past_full_subscriber`). In the
common case (a subscriber of everything, nothing held, none full) the
compiled loop sends to a PUB outlet straight, as to a PUSH one with an
empty backlog (see :meth:`Delivery._pub_direct`).

Nothing a socket says when sent to ends the loop: a full socket keeps the
message in the backlog (so does a PUSH whose consumer left half way through
a message: libzmq takes the parts back, and the message goes again, whole),
any other error drops it, counted.

A new PUSH outlet is *joining* for its first join window: after a restart
the senders' queued bursts arrive before the consumers, which retry the
socket file every 100 to 200 ms, have found it, and one sender's burst may
come after another's was delivered; a backlog capped at its usual length
would drop most of them. While joining, it is bounded by what all
backlogs together may hold (max_backlog_bytes, and as many messages as
every outlet's backlog), not by its own length. The other outlets still
fill their own backlogs meanwhile, so the messages held can reach twice
backlog x max_topics; max_backlog_bytes, which counts each frame's cost,
is the bound on memory. At the end, one that no consumer joined keeps the
usual number. Its first SETTLE seconds it sends nothing, so that every
consumer already retrying its path is connected before the backlog is
dealt out among them.
"""

import collections
import fcntl
import logging
import socket
import struct
import termios

import zmq

from zmq_receiver import metrics
from zmq_receiver import routing
from zmq_receiver import wire
from zmq_receiver.outlet import PUB_RETRY
from zmq_receiver.outlet import PUB_RETRY_MAX

LOG = logging.getLogger(__name__)

#: Seconds a PUB outlet lets a full subscriber hold up a message for every
#: subscriber (XPUB_NODROP refuses it for all, and libzmq cannot say which
#: one is full) before it sends the message anyway, without NODROP. Sooner
#: when the outlet's backlog is full. A subscriber that paused only loses
#: nothing; a stalled one (a hung service, a suspended admin tap) costs the
#: others this delay once per stall, not at every message.
SLOW_SUBSCRIBER_GRACE = 1.0
#: Seconds between two looks at the subscribers' connections while one
#: does not read (see Delivery._skipping).
STALL_CHECK = 0.01
#: Seconds a new PUSH outlet holds its messages for the consumers already
#: retrying its path: libzmq retries a failed connect after
#: RECONNECT_IVL (100 ms) plus a random part as long, so all of them are
#: connected within 200 ms of the bind, when their processes run on time;
#: the rest is for a loaded host, where 200 ms gave one of two servers all
#: 8 messages once in 12 runs with two cores busy (0 in 16 with 300 ms).
#: Sending on the first connection instead did so every time
#: (oslo.messaging's test_multiple_servers).
SETTLE = 0.3


class Delivery:
    """What happens to a message once its outlet is known: sent, kept in
    the outlet's backlog, or dropped (counted); and the timers that move
    the backlogs on (settling, PUB retries, join windows).

    *loop* polls the outlets' sockets (``modify``); *limits* is replaced
    on reload (outlets.Outlets.limits).
    """

    def __init__(self, loop, limits, counters, warn, clock,
                 send=wire.py_send_message, send_backlog=wire.py_send_backlog):
        self.loop = loop
        #: send(socket, frames) and send_backlog(socket, backlog): the
        #: chosen wire.Implementation's.
        self._send_message = send
        self._send_backlog = send_backlog
        self.limits = limits
        self.counters = counters
        self.warn = warn
        self.clock = clock
        #: The loop's time at the start of its current turn
        #: (outlets.Outlets.now).
        self.now = clock()
        #: Bytes held by every backlog together.
        self.buffered_bytes = 0
        #: Messages held by every backlog together (what
        #: outlets.Outlets.queued counts): whatever takes a message out of
        #: a backlog takes it off, as it takes its size off buffered_bytes.
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

    def deliver(self, outlet, frames, size):
        """Send *frames* through *outlet* now, or keep them in order."""
        outlet.last_active = self.now
        if outlet.kind is routing.Kind.PUB:
            self._deliver_pub(outlet, frames, size)
            # A send may have ended a hold-up, or started one.
            self._pub_direct(outlet)
            return
        self._deliver(outlet, frames, size)

    def _deliver_pub(self, outlet, frames, size):
        if not outlet.subscribed(frames[0]):
            self._wait_for_subscriber(outlet, frames, size)
            return
        if outlet.backlog and outlet.queued >= self.limits.backlog:
            # Full behind a full subscriber: send the oldest past it,
            # instead of dropping the newest for every subscriber.
            self.flush(outlet)
        self._deliver(outlet, frames, size)

    def _deliver(self, outlet, frames, size):
        if (outlet.backlog and not outlet.slow and
                outlet.settle_until is None):
            # The consumer may have made room since the socket refused:
            # waiting for the poll's POLLOUT (PUSH) or the retry timer
            # (PUB) would send the rest of this batch through here (a
            # Python call per message) where, once the backlog is out, the
            # compiled path sends it.
            self._send_run(outlet)
            if not outlet.backlog:
                self.flush(outlet)
        if not outlet.backlog and outlet.settle_until is None:
            sent = self._send(outlet, frames)
            if sent:
                self.count_forwarded(outlet)
                return
            if sent is None:
                return
        if self._admit(outlet, size):
            self._enqueue(outlet, frames, size)

    @staticmethod
    def _pub_direct(outlet):
        """Let _wire.forward send straight to PUB *outlet* (its
        ``direct``) exactly while :meth:`deliver` would only send each
        message at once: a subscription to everything (so every message
        has a subscriber), nothing in the backlog to overtake, and no full
        subscriber holding messages up (``blocked_since``) or being skipped
        (``slow``), which deliver must see at every send. A send the socket
        refuses there (XPUB_NODROP: for every subscriber, none got it) comes
        back to deliver whole, which tries it again and keeps or counts it.

        Called after everything that changes one of those: a delivery, a
        flush, a (un)subscription."""
        if (b'' in outlet.subscriptions and not outlet.backlog and
                outlet.blocked_since is None and not outlet.slow and
                outlet.settle_until is None):
            outlet.direct = outlet.socket
        else:
            outlet.direct = None

    def count_forwarded(self, outlet, count=1):
        """Count *count* messages sent on *outlet* from Python.

        The one place Python counts a message forwarded; _wire.forward
        counts those it sends itself on the outlet in C (outlet.
        WIRE_ATTRIBUTES), and the receiver adds them to the totals.
        """
        outlet.forwarded += count
        self.counters.forwarded += count

    def _wait_for_subscriber(self, outlet, frames, size):
        """Keep a PUB message no subscription matches for the join window
        (dropped at once when there is none)."""
        if self.limits.join_window <= 0:
            self.drop(outlet, metrics.NO_SUBSCRIBER)
            return
        if self._admit(outlet, size):
            outlet.waiting.append(
                (outlet.last_active + self.limits.join_window, frames,
                 size))
            self._waiting.add(outlet)

    def _send(self, outlet, frames):
        """Send *frames* on *outlet*'s socket now: True when sent; False
        when it cannot take them now, and the caller keeps them; None when
        they are dropped (counted). Whatever the socket says is the
        outlet's event, never an exception for the loop."""
        try:
            self._send_message(outlet.socket, frames)
        except zmq.Again:
            error = None
        except zmq.ZMQError as exc:
            error = exc
        else:
            outlet.blocked_since = None
            if outlet.slow and self._skipping(outlet):
                self.drop(outlet, metrics.SLOW_SUBSCRIBER)
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
                self._send_message(sock, frames)
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
        self.drop(outlet, metrics.SLOW_SUBSCRIBER)
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
        self.drop(outlet, metrics.SEND_FAILED)
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
            self.drop(outlet, metrics.BACKLOG_FULL)
            self.warn.warning(
                'backlog-full',
                'Backlog of outlet %s is full (%d messages): dropped the '
                'newest message; check that its consumer runs and keeps '
                'up, or raise rpc_zmq_topic_backlog', outlet.path,
                self.limits.backlog)
            return False
        cap = self.limits.backlog_bytes
        if cap and self.buffered_bytes + size > cap:
            self.drop(outlet, metrics.BACKLOG_BYTES_FULL)
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

    def drop(self, outlet, reason, count=1):
        """Count *count* messages of *outlet* as dropped for *reason*."""
        outlet.dropped[reason] += count
        self.counters.dropped[reason] += count

    def flush(self, outlet):
        """Send from the backlog until it is empty or the socket is full."""
        backlog = outlet.backlog
        sock = outlet.socket
        if not outlet.slow:
            # A slow PUB outlet counts each message it sends as dropped
            # (_send, _skipping): those go one at a time.
            self._send_run(outlet)
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
                self.count_forwarded(outlet)
        if outlet.kind is routing.Kind.PUSH:
            outlet.direct = sock
        else:
            self._pub_direct(outlet)
        if outlet.polling_out:
            # PUSH only: a PUB outlet waits on its retry timer instead.
            outlet.polling_out = False
            self.loop.modify(outlet.socket, 0)

    def _send_run(self, outlet):
        """Send the run of *outlet*'s backlog its socket takes, in one
        call: a backlog builds up whenever a consumer falls behind a
        burst (a PUB one whenever a subscriber does), and sending it a
        message at a time from Python cost more than forwarding it. The
        message it stops at stays first, for :meth:`flush` to send again
        and learn why (for PUB: XPUB_NODROP's refusal, which
        :meth:`_past_full_subscriber` times). Not for a slow PUB outlet,
        whose every send counts as dropped."""
        count, size = self._send_backlog(outlet.socket, outlet.backlog)
        if count:
            outlet.blocked_since = None
            # Its subscribers read: the retry timer, which measures
            # progress by its own flushes only, must not back off.
            outlet.retry_delay = PUB_RETRY
            outlet.backlog_bytes -= size
            self.buffered_bytes -= size
            self.held -= count
            self.count_forwarded(outlet, count)

    def read_subscriptions(self, outlet):
        """Count the (un)subscriptions XPUB *outlet* received, and send on
        the waiting messages a new one matches."""
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
        # Before the next message: one to everything may have come, or the
        # last one gone (a subscriber that leaves unsubscribes:
        # XPUB_VERBOSER).
        self._pub_direct(outlet)

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
            self.flush(outlet)

    def start_joining(self, outlet):
        """New PUSH *outlet* joins and settles (see the module's
        docstring) before it sends."""
        now = self.clock()
        if self.limits.join_window > 0:
            outlet.joining_until = now + self.limits.join_window
            self._joining.add(outlet)
        # Nothing is sent straight (wire.forward) until it has settled.
        outlet.direct = None
        outlet.settle_until = now + SETTLE
        self._settling.add(outlet)

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
        self._run_settled(now)
        self._run_retries(now)
        self._expire_waiting(now)

    def _run_settled(self, now):
        for outlet in [o for o in self._settling if o.settle_until <= now]:
            self._settling.discard(outlet)
            outlet.settle_until = None
            # With an empty backlog this turns direct sending on.
            self.flush(outlet)

    def _run_retries(self, now):
        for outlet in [o for o in self._retry if o.retry_at <= now]:
            self._retry.discard(outlet)
            outlet.retry_at = None
            sent = outlet.forwarded
            self.flush(outlet)
            if outlet.retry_at is None or outlet.forwarded != sent:
                outlet.retry_delay = PUB_RETRY
            else:
                outlet.retry_delay = min(2 * outlet.retry_delay,
                                         PUB_RETRY_MAX)
            if outlet.retry_at is not None:
                outlet.retry_at = now + outlet.retry_delay

    def _expire_waiting(self, now):
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
                self.drop(outlet, metrics.NO_SUBSCRIBER, expired)
                self.warn.warning(
                    'no-subscriber',
                    'No subscriber joined outlet %s within the join window '
                    '(%.1f s): dropped %d messages; check that the service '
                    'listening on it runs', outlet.path,
                    self.limits.join_window, expired)
            if not waiting:
                self._waiting.discard(outlet)

    def expire_joining(self, now):
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
            self.drop(outlet, metrics.BACKLOG_FULL, excess)
            self.warn.warning(
                'join-backlog-full',
                'No consumer connected to new outlet %s within the join '
                'window (%.1f s): dropped the newest %d of its messages, '
                'beyond rpc_zmq_topic_backlog (%d); check that the service '
                'listening on it runs', outlet.path,
                self.limits.join_window, excess, self.limits.backlog)

    def pending(self, outlets):
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
        for o in outlets:
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
        return self._draining(unread)

    def _draining(self, unread):
        """Whether the consumers' connections may still carry something
        unread: *unread* now, or for less than STALL_CHECK."""
        now = self.clock()
        if unread:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since >= STALL_CHECK:
            return False
        self._drain_check = now + STALL_CHECK
        return True

    def forget(self, outlet, reason):
        """*outlet* closes: drop (counted, for *reason*) what it holds."""
        outlet.direct = None
        if outlet.queued:
            LOG.warning('Outlet %s closed with %d undelivered messages '
                        '(%s)%s', outlet.path, outlet.queued, reason,
                        ': no consumer was connected to receive them'
                        if reason == metrics.NO_CONSUMER else '')
            self.drop(outlet, reason, outlet.queued)
        self.buffered_bytes -= outlet.backlog_bytes
        self.held -= outlet.queued
        outlet.backlog.clear()
        outlet.waiting.clear()
        outlet.backlog_bytes = 0
        self._waiting.discard(outlet)
        self._retry.discard(outlet)
        self._joining.discard(outlet)
        self._settling.discard(outlet)

    @staticmethod
    def deliverable(outlets):
        """Messages of *outlets* that :meth:`pending` waits for."""
        return sum(len(o.backlog) for o in outlets if o.consumers)


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
