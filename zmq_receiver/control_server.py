"""The control socket's server: ``stats`` answered from the loop.

The request/reply format is :mod:`zmq_receiver.control`'s (shared with the
admin tool); this module binds the socket beside the outlets and answers
on it without ever blocking the loop or growing its memory for a peer.
"""

import logging

import zmq

from zmq_receiver import connections as connections_mod
from zmq_receiver import control
from zmq_receiver import metrics
from zmq_receiver import outlets as outlets_mod
from zmq_receiver import wire

# The receiver's logger, as before this module was split out of it: its
# lines keep the name operators and their log filters know.
LOG = logging.getLogger('zmq_receiver.receiver')

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


class ControlServer:
    """Answer control requests with ``snapshot()``, the receiver's figures.

    *loop* is the :class:`loop.Loop` the socket is polled by, *outlets*
    the :class:`outlets.Outlets` that keep its file bound (and whose
    ``now`` marks the loop's turns), *local* the unix sockets'
    :class:`connections.Connections`.
    """

    def __init__(self, ctx, loop, ipc_dir, limits, outlets, local, counters,
                 snapshot):
        self.ctx = ctx
        self.loop = loop
        self.ipc_dir = ipc_dir
        self.limits = limits
        self.outlets = outlets
        self.local = local
        self.counters = counters
        self.snapshot = snapshot
        self.socket = None
        #: The last encoded stats reply, the turn it was built in, and how
        #: many more may be built in this tick (see _stats_reply).
        self._reply = None
        self._turn = None
        self._fresh = CONTROL_FRESH_PER_TICK

    def bind(self):
        """Answer ``stats`` requests on a socket beside the outlets.

        The outlets keep its file bound like theirs (it vanishes with the
        IPC directory), and bind it once they can when this first bind
        fails. A ROUTER socket, not REP, so that a reply a peer does not
        read is refused at once (ROUTER_MANDATORY, NOBLOCK) and counted,
        instead of being queued or dropped unseen. Returns itself.
        """
        path = control.path(self.ipc_dir)
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
        self.loop.register(monitor, zmq.POLLIN,
                           lambda events: self.local.on_events(monitor))
        failure = None
        try:
            # Owned and moded like the outlets: whoever may connect to a
            # topic may also read the stats.
            outlets_mod.bind_ipc(sock, path, self.limits)
            self.outlets.note_bound(sock, path)
        except OSError as exc:
            failure = exc
        if failure is not None:
            LOG.warning('No control socket %s (%s): stats are not available '
                        'from the admin tool until it can be bound (tried '
                        'again every second)', path, failure.strerror)
        self.socket = sock
        self.loop.register(sock, zmq.POLLIN, self.on_readable)
        self.outlets.keep_bound(sock, path, 'Control socket',
                                'the admin tool')
        return self

    def on_readable(self, events):
        """Answer at most CONTROL_BATCH requests (one snapshot per turn)."""
        for _ in range(CONTROL_BATCH):
            try:
                frames = wire.py_recv_message(self.socket,
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
            self.socket.send_multipart(envelope + [reply], zmq.NOBLOCK)
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
        if self._reply is None or (
                self._turn != turn and self._fresh > 0):
            self._reply = control.encode(self.snapshot())
            self._turn = turn
            self._fresh -= 1
        return self._reply

    def tick(self):
        """A new tick: CONTROL_FRESH_PER_TICK more fresh snapshots."""
        self._fresh = CONTROL_FRESH_PER_TICK

    def close(self):
        """Close the socket and remove its file."""
        if self.socket is not None:
            outlets_mod.remove_socket_file(control.path(self.ipc_dir))
            self.socket.close(linger=0)
            self.socket = None
