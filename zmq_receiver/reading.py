"""The read path: inbound messages read in paced batches and dispatched.

Each message read from an inbound PULL socket is routed by its topic frame
(:mod:`zmq_receiver.routing`) and handed to its outlet
(:mod:`zmq_receiver.outlets`), or rejected and counted. Reading pauses when
it would only fill backlogs (:func:`should_pause`).
"""

import logging

import zmq

from zmq_receiver import memory
from zmq_receiver import metrics
from zmq_receiver import routing
from zmq_receiver import wire

# The receiver's logger, as before this module was split out of it: its
# lines keep the name operators and their log filters know.
LOG = logging.getLogger('zmq_receiver.receiver')

#: Messages read from the inbound socket before the loop looks at its other
#: sockets again, so that a busy sender cannot starve outlet flushing. The
#: compiled loop sends a batch grouped by outlet (_wire.c, GROUP_MSGS, kept
#: equal): with 100 topics, 512 rather than 256 halves the wake-ups of
#: libzmq's I/O thread and of the consumers per message (CPU per message
#: 3.6 -> 2.8 us, median of 5 paired runs; bench/README.md).
INBOUND_BATCH = 512
#: ... or until they add up to this many bytes (one more message is always
#: read): a batch of large messages must not hold the loop for long, nor
#: read far past the mark of READ_AHEAD_BYTES.
INBOUND_BATCH_BYTES = 1024 * 1024
#: Bytes the backlogs may hold before the loop stops reading ahead of its
#: consumers when nothing it reads can be sent on (see should_pause).
READ_AHEAD_BYTES = 8 * 1024 * 1024
#: Longest pause (s) of an inbound socket's reading for that.
READ_PAUSE = 0.02


def should_pause(received, enqueued, buffered_bytes, stopping,
                 limit=READ_AHEAD_BYTES):
    """Whether to pause reading a socket after a batch of *received*
    messages, *enqueued* of which went into a backlog, left the backlogs
    holding *buffered_bytes*.

    When every message of a batch went into a backlog and the backlogs
    hold more than *limit*, reading on only moves messages from libzmq's
    bounded queue into this process's memory, at a cost in CPU and memory
    the consumers would rather have (the receiver ran 600 MiB ahead of one
    64 KiB consumer). Like zmq_proxy, the senders' TCP windows slow them
    down meanwhile. Topics with a free consumer are not held back: one of
    their messages in a batch keeps the reading going. Nor is a stuck
    consumer: once its backlog is full, its messages are dropped, not
    queued. A stop reads everything.
    """
    # Each message read ends in one place (forwarded, queued, dropped,
    # rejected): all queued means none could be sent.
    return bool(received and enqueued == received and
                buffered_bytes > limit and not stopping)


def may_resume(buffered_bytes, now, until, stopping,
               limit=READ_AHEAD_BYTES):
    """Whether a socket paused until *until* may be read again: the
    backlogs are below the mark, the pause is over, or a stop began."""
    return buffered_bytes <= limit or now >= until or stopping


class Reader:
    """Read and dispatch what the inbound sockets receive.

    *loop* is the :class:`loop.Loop` the sockets are registered with;
    *stop* the receiver's :class:`stopping.Stop` (a stop reads on, never
    pauses); *settings* its :class:`receiver.Settings`.
    """

    def __init__(self, loop, outlets, settings, counters, warn, clock, stop):
        self.loop = loop
        self.outlets = outlets
        self.settings = settings
        self.counters = counters
        self.warn = warn
        self.clock = clock
        self.stop = stop
        #: How messages are received (wire.Implementation): see use().
        self.wire = wire.PURE_PYTHON
        #: Per-message detail costs time; only at debug level (re-read on
        #: reload, where the level may change).
        self.debug = LOG.isEnabledFor(logging.DEBUG)
        self._max_key_len = routing.max_key_length(settings.ipc_dir)
        #: Inbound socket -> (until when its reading is paused, the
        #: loop's timer that resumes it).
        self._paused = {}
        #: Messages rejected for too many frames, at the last tick.
        self._long_seen = 0

    def use(self, implementation):
        """Receive with *implementation* (wire.Implementation) from now
        on; with a compiled one, messages go through its forward loop."""
        self.wire = implementation

    def read_paced(self, sock):
        """:meth:`read`, then pause reading *sock* when that only filled
        backlogs (see :func:`should_pause`), until the backlogs are below
        the mark again or READ_PAUSE has passed."""
        counters = self.counters
        outlets = self.outlets
        received = counters.received
        enqueued = outlets.enqueued
        self.read(sock)
        if should_pause(counters.received - received,
                        outlets.enqueued - enqueued, outlets.buffered_bytes,
                        self.stop.stopping):
            self.loop.modify(sock, 0)
            until = self.clock() + READ_PAUSE
            self._paused[sock] = (until, self.loop.call_at(
                until, self.resume))
            counters.read_pauses += 1

    def resume(self):
        """Read the paused inbound sockets again that may be (see
        :func:`may_resume`)."""
        if not self._paused:
            return
        now = self.clock()
        buffered = self.outlets.buffered_bytes
        stopping = self.stop.stopping
        for sock, (until, timer) in list(self._paused.items()):
            if may_resume(buffered, now, until, stopping):
                timer.cancel()
                del self._paused[sock]
                self.loop.modify(sock, zmq.POLLIN)

    def forget(self, sock):
        """Stop pacing *sock* (about to be unregistered)."""
        paused = self._paused.pop(sock, None)
        if paused is not None:
            paused[1].cancel()

    def read(self, sock):
        """Dispatch the messages waiting on inbound *sock*, at most
        INBOUND_BATCH, so that a busy sender cannot starve the outlets;
        returns whether more may be waiting."""
        if self.wire.forward is not None and not self.debug:
            return self._read_fast(sock)
        recv_message = self.wire.recv_message
        dispatch = self.dispatch
        max_frames = self.settings.max_frames
        read = 0
        for _ in range(INBOUND_BATCH):
            try:
                frames = recv_message(sock, max_frames)
            except zmq.Again:
                return False
            dispatch(frames)
            read += wire.message_cost(frames)
            if read >= INBOUND_BATCH_BYTES:
                break
        return True

    def _read_fast(self, sock):
        """:meth:`read` in the compiled loop (its forward): a message
        for a known topic whose outlet is ``direct`` (a PUSH with no
        backlog, a fanout in the common case: see
        delivery.Delivery._pub_direct) goes straight to its socket; every
        other one comes back to :meth:`dispatch`, which counts it. The
        ones sent straight are counted here."""
        counters = self.counters
        before = counters.received
        try:
            direct = self.wire.forward(
                sock, self.outlets.routes, INBOUND_BATCH,
                self.settings.max_message_size, self.outlets.now,
                self.dispatch, INBOUND_BATCH_BYTES, self.settings.max_frames)
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
        self.counters.received += 1
        size = self._check(frames)
        if size is None:
            return
        topic = frames[1]
        if self.debug:
            LOG.debug('Received %d frames, %d bytes, topic %r', len(frames),
                      size, topic[:128])
        outlets = self.outlets
        outlet = outlets.routes.get(topic)
        if outlet is None:
            route = routing.route(topic, self._max_key_len)
            if not isinstance(route, routing.Route):
                self._reject(route, topic, 'the topic cannot name a socket '
                             'file')
                return
            outlet = outlets.route(topic, route)
            if outlet is None:
                return
        outlets.deliver(outlet, frames, size)

    def _check(self, frames):
        """The cost of *frames* (wire.message_cost), or None when they
        were rejected (and counted)."""
        settings = self.settings
        if len(frames) < 2:
            self._reject(routing.SHORT_MESSAGE, None,
                         '%d frame(s), fewer than the 2 of the legacy '
                         'protocol' % len(frames))
            return None
        if len(frames) > settings.max_frames:
            # The receive kept one frame more than allowed, and discarded
            # the rest.
            self._reject(metrics.TOO_MANY_FRAMES, frames[1],
                         'more than the %d frames of [zmq_receiver] '
                         'max_frames' % settings.max_frames,
                         'raise max_frames if a real service sends '
                         'messages of more frames')
            return None
        size = wire.message_cost(frames)
        if size > settings.max_message_size:
            self._reject(metrics.OVERSIZED, frames[1],
                         '%d bytes (%d per frame included), more than '
                         '[zmq_receiver] max_message_size (%d)' % (
                             size, wire.FRAME_COST,
                             settings.max_message_size),
                         'raise max_message_size if a real service sends '
                         'messages this large')
            return None
        return size

    def _reject(self, reason, topic, why,
                fix='its sender does not speak the legacy protocol or is '
                    'hostile'):
        self.counters.rejected[reason] += 1
        self.warn.warning('reject-' + reason,
                          'Rejected a message from the network (%s): %s%s; '
                          '%s', reason, why,
                          '' if topic is None else ', topic %r' % topic[:128],
                          fix)

    def trim_after_long_messages(self):
        """Give back what libzmq held of the messages rejected for too
        many frames since the last tick (see :mod:`memory`)."""
        count = self.counters.rejected[metrics.TOO_MANY_FRAMES]
        if count != self._long_seen:
            self._long_seen = count
            memory.trim()
