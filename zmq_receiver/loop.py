"""One poller and one timer heap: the receiver's event loop, without policy.

Sockets (or file descriptors) are registered with a handler called with
their ready events; timers are callbacks due at a time of the loop's
clock; a *timer source* (an object with ``next_due()`` and ``run_due()``,
like :class:`outlets.Outlets`) keeps its own times and is asked for the
earliest one at each turn. What the sockets and timers mean is the
caller's business: this module knows nothing of messages, stops or
watchdogs (as pyzmq's ``auth/base.py`` knows nothing of where it runs).

A turn is :meth:`Loop.poll` (wait for the earliest of a socket event and
the next timer, then call the ready sockets' handlers) and then
:meth:`Loop.run_timers` (call what fell due); the caller's loop runs turns
while :attr:`Loop.running`, doing its own bookkeeping between them.

A socket registered as not *urgent* (a monitor, an outlet's
subscriptions: events a few milliseconds may wait for) is left out of the
turns in which an urgent one is ready, and looked at again within
LAZY_MAX_S: zmq_poll costs a system call per socket (libzmq asks each
one's mailbox), so with a thousand outlets polling their monitors at every
turn cost more than forwarding the batch the turn read. A wait never
leaves them out.
"""

import heapq
import itertools
import math
import time

import zmq

#: Seconds the sockets that may wait are left out of the turns at most
#: while urgent ones are busy, and at least (a wait polls them anyway).
LAZY_MAX_S = 0.02
LAZY_MIN_S = 0.002
#: ... and the share of the loop's time polling them may take in between:
#: the pause after a poll of them is its cost divided by this.
LAZY_SHARE = 0.1


def poll_timeout_ms(now, due):
    """The zmq_poll timeout (whole ms) from *now* until *due* (None: no
    timer, wait for ever).

    Rounded up: rounding down would spin through the last fraction of a
    millisecond before every timer, polling with a timeout of 0.
    """
    if due is None:
        return None
    return math.ceil(max(0.0, due - now) * 1000)


class Timer:
    """A callback due at a time; :meth:`cancel` keeps it from being
    called."""

    __slots__ = ('when', 'callback')

    def __init__(self, when, callback):
        self.when = when
        self.callback = callback

    def cancel(self):
        """Do not call it (it leaves the heap when it reaches the top)."""
        self.callback = None

    @property
    def active(self):
        """Whether it is still to be called."""
        return self.callback is not None


class Loop:
    """The poller registry and the timers of one thread's loop."""

    def __init__(self, clock=time.monotonic, on_wake=None):
        self.clock = clock
        #: Called with the time each poll returned, before any handler:
        #: the caller's notion of "now" for the turn.
        self._on_wake = on_wake
        #: Every socket polled; the urgent ones, also in their own poller.
        self.poller = zmq.Poller()
        self._urgent = zmq.Poller()
        self._lazy = set()
        #: time.monotonic() until which a busy turn polls only the urgent.
        self._lazy_until = 0.0
        self._handlers = {}
        self._events = {}
        #: (when, sequence, Timer): equal times run in the order they
        #: were set.
        self._heap = []
        self._sequence = itertools.count()
        self._sources = []
        #: False once :meth:`stop` was called.
        self.running = True

    # -- the poller registry -------------------------------------------------

    def register(self, sock, events, handler, urgent=True):
        """Call ``handler(events)`` when *sock* has any of *events*; not
        *urgent*: within LAZY_MAX_S while others are busy (see the module
        docstring)."""
        self._handlers[sock] = handler
        if urgent:
            self._lazy.discard(sock)
        else:
            self._lazy.add(sock)
        self.modify(sock, events)

    def modify(self, sock, events):
        """Poll *sock* for *events* (0: keep it, but do not poll it)."""
        if events:
            self.poller.register(sock, events)
            if sock not in self._lazy:
                self._urgent.register(sock, events)
        elif self._events.get(sock):
            self.poller.unregister(sock)
            if sock not in self._lazy:
                self._urgent.unregister(sock)
        self._events[sock] = events

    def unregister(self, sock):
        """Forget *sock*."""
        if self._events.pop(sock, 0):
            self.poller.unregister(sock)
            if sock not in self._lazy:
                self._urgent.unregister(sock)
        self._lazy.discard(sock)
        self._handlers.pop(sock, None)

    def registered(self, sock):
        """The events *sock* is polled for (0: none), or None when it is
        not registered."""
        return self._events.get(sock)

    # -- timers --------------------------------------------------------------

    def call_at(self, when, callback):
        """Call ``callback()`` from :meth:`run_timers` once the clock has
        reached *when*; returns the :class:`Timer`."""
        timer = Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._sequence), timer))
        return timer

    def call_every(self, interval, callback, now=False):
        """Call ``callback()`` every *interval* seconds from the time it
        last began, for as long as the loop runs: the first time at once
        with *now*, else in *interval*."""
        def run():
            self.call_at(self.clock() + interval, run)
            callback()

        if now:
            run()
        else:
            self.call_at(self.clock() + interval, run)

    def add_source(self, source):
        """Ask *source* for its ``next_due()`` time (or None) at each turn
        and call its ``run_due()`` once that time has come."""
        self._sources.append(source)

    def next_due(self):
        """The earliest time a timer or a source falls due, or None."""
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        due = heap[0][0] if heap else None
        for source in self._sources:
            when = source.next_due()
            if when is not None and (due is None or when < due):
                due = when
        return due

    # -- turns ---------------------------------------------------------------

    def poll(self):
        """Wait for a socket event or the next timer, then call the ready
        sockets' handlers; returns the time the wait ended."""
        ready = None
        if self._lazy and time.monotonic() < self._lazy_until:
            ready = self._urgent.poll(0)
        if not ready:
            ready = self._poll_all()
        now = self.clock()
        if self._on_wake is not None:
            self._on_wake(now)
        handlers = self._handlers
        for sock, events in ready:
            handler = handlers.get(sock)
            if handler is not None:
                handler(events)
        return now

    def _poll_all(self):
        """Poll every socket, waiting up to the next timer; then leave the
        lazy ones out of busy turns for a while that keeps their cost
        within LAZY_SHARE of the loop's time."""
        if not self._lazy:
            return self.poller.poll(poll_timeout_ms(self.clock(),
                                                    self.next_due()))
        cpu = time.thread_time()
        ready = self.poller.poll(poll_timeout_ms(self.clock(),
                                                 self.next_due()))
        cost = time.thread_time() - cpu
        self._lazy_until = time.monotonic() + min(
            LAZY_MAX_S, max(LAZY_MIN_S, cost / LAZY_SHARE))
        return ready

    def run_timers(self):
        """Call the timers that fell due, earliest first, then the sources
        whose time has come; none once :meth:`stop` is called."""
        heap = self._heap
        now = self.clock()
        while heap and heap[0][0] <= now and self.running:
            timer = heapq.heappop(heap)[2]
            callback = timer.callback
            if callback is not None:
                timer.callback = None
                callback()
        for source in self._sources:
            if not self.running:
                return
            when = source.next_due()
            if when is not None and when <= now:
                source.run_due()

    def stop(self):
        """End the loop: :attr:`running` is False, no more timers run."""
        self.running = False
