"""A PUB outlet in the compiled path (issue 17 item 2): when its ``direct``
is the socket, so that _wire.forward sends fanout straight to it, and that
what forward does then is what Delivery.deliver would have done.

In-process, on real sockets and a clock the test moves; the daemon-level
side (both loops) is in tests/functional/test_backlog.py.
"""


import pytest
import zmq

from tests import support
from tests.unit.test_outlet_files import make_outlets
from tests.unit.test_ratelimit import Clock
from zmq_receiver import delivery
from zmq_receiver import metrics
from zmq_receiver import outlets
from zmq_receiver import routing
from zmq_receiver import wire

# Larger than any test's burst: only the grace ends a hold-up here.
BACKLOG = 1000
TOPIC = b'fanout~t.host1'

compiled = pytest.mark.skipif(not wire.FAST, reason='no compiled _wire: %s'
                              % wire.FAST_PROBLEM)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def made(short_dir, ctx, clock):
    made = make_outlets(ctx, short_dir,
                        outlets.Limits(BACKLOG, 0, 10, 300, 5.0),
                        'test_outlet_fanout', clock)
    yield made
    made.close_all()


def fanout(made):
    outlet = made.get(routing.route(TOPIC, 100))
    made.routes[TOPIC] = outlet
    return outlet


def subscribe(ctx, made, outlet, prefix=b'', **options):
    """A SUB of *outlet* whose subscription the outlet has read."""
    before = sum(outlet.subscriptions.values())
    sock = ctx.socket(zmq.SUB)
    for option, value in options.items():
        sock.setsockopt(getattr(zmq, option), value)
    sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect('ipc://' + outlet.path)
    read_subscriptions(made, outlet, lambda: sum(
        outlet.subscriptions.values()) > before)
    return sock


def read_subscriptions(made, outlet, done):
    """What the loop does on POLLIN of the XPUB, until *done*()."""
    while not done():
        assert outlet.socket.poll(5000), 'no (un)subscription arrived'
        made.delivery.read_subscriptions(outlet)


class Sender:
    """A PUSH to an inbound PULL: the input forward() reads."""

    def __init__(self, ctx):
        self.pull = ctx.socket(zmq.PULL)
        port = self.pull.bind_to_random_port('tcp://127.0.0.1')
        self.push = ctx.socket(zmq.PUSH)
        self.push.connect('tcp://127.0.0.1:%d' % port)

    def send(self, bodies):
        for body in bodies:
            wire.send_message(self.push, support.cast(TOPIC, body))

    def forward(self, made, n):
        """Read *n* messages through wire.forward, those it does not send
        itself through deliver (as reading.Reader.dispatch does); returns
        the number forward sent."""
        direct = 0
        read = [0]

        def slow(frames):
            read[0] += 1
            outlet = made.routes[frames[1]]
            made.deliver(outlet, frames, wire.message_cost(frames))
        while direct + read[0] < n:
            assert self.pull.poll(5000), 'the messages did not arrive'
            direct += wire.forward(self.pull, made.routes, n, 1 << 20,
                                   made.now, slow)
        return direct

    def close(self):
        support.close_all(self.pull, self.push)


def bodies(sock, n):
    got = []
    for _ in range(n):
        assert sock.poll(5000), 'got %d of %d' % (len(got), n)
        got.append(sock.recv_multipart()[3])
    return got


def test_pub_outlet_is_direct_exactly_while_one_subscribes_to_all(ctx, made):
    outlet = fanout(made)
    assert outlet.direct is None
    # A prefix does not match every message: deliver must look at each.
    prefix = subscribe(ctx, made, outlet, b'0')
    assert outlet.direct is None
    everything = subscribe(ctx, made, outlet)
    assert outlet.direct is outlet.socket
    # A subscriber that leaves unsubscribes (XPUB_VERBOSER): from its
    # next message on, Python decides again.
    everything.close()
    read_subscriptions(made, outlet, lambda: b'' not in outlet.subscriptions)
    assert outlet.direct is None
    prefix.close()


@compiled
def test_fanout_in_the_compiled_path_reaches_every_subscriber(ctx, made):
    outlet = fanout(made)
    subs = [subscribe(ctx, made, outlet) for _ in range(3)]
    sender = Sender(ctx)
    n = 200
    sender.send([b'%d' % i for i in range(n)])
    assert sender.forward(made, n) == n
    # Counted on the outlet by forward; reading.Reader adds it to the
    # totals, as for PUSH.
    assert outlet.forwarded == n
    assert made.counters.forwarded == 0
    assert dict(outlet.dropped) == {}
    for sock in subs:
        assert bodies(sock, n) == [b'%d' % i for i in range(n)]
    sender.close()
    support.close_all(*subs)


@compiled
def test_a_stalled_subscriber_still_gets_the_slow_subscriber_treatment(
        ctx, made, clock):
    outlet = fanout(made)
    # One that takes everything, and one that holds one message and never
    # reads: once libzmq's pipe to it is full, XPUB_NODROP refuses.
    healthy = subscribe(ctx, made, outlet, RCVHWM=0)
    stalled = subscribe(ctx, made, outlet, RCVHWM=1, RCVBUF=4096)
    support.wait_until(lambda: consumers(outlet, clock) == 2,
                       'both subscribers connected')
    assert outlet.direct is outlet.socket
    sender = Sender(ctx)
    sent = []
    direct = 0
    refused = False
    for _ in range(100):
        batch = [b'%d ' % i + b'x' * 4096
                 for i in range(len(sent), len(sent) + 100)]
        sender.send(batch)
        sent.extend(batch)
        direct += sender.forward(made, len(batch))
        if outlet.direct is None and not refused:
            # Refused for all, handed back whole by forward, and kept by
            # deliver, in order, with nothing counted yet.
            refused = True
            assert outlet.backlog
            assert outlet.blocked_since is not None
            assert dict(outlet.dropped) == {}
        # Each retry past the grace sends on without the full one. (A
        # message libzmq still moved on to it meanwhile ended that
        # hold-up; the next refusal starts another.)
        for _ in range(20):
            if not outlet.backlog or outlet.slow:
                break
            clock.advance(delivery.SLOW_SUBSCRIBER_GRACE)
            made.delivery.run_due()
        if outlet.slow:
            break
    assert refused
    assert outlet.slow
    assert not outlet.backlog
    assert outlet.direct is None
    missed = outlet.dropped[metrics.SLOW_SUBSCRIBER]
    assert missed > 0
    assert dict(outlet.dropped) == {metrics.SLOW_SUBSCRIBER: missed}
    # Each message counted once: sent straight (by C or Python) or missed.
    assert outlet.forwarded + missed == len(sent)
    assert made.counters.forwarded == outlet.forwarded - direct
    # While it is slow, every message goes through Python, which counts
    # what it may miss.
    sender.send([b'more'])
    assert sender.forward(made, 1) == 0
    assert dict(outlet.dropped) == {metrics.SLOW_SUBSCRIBER: missed + 1}
    assert made.counters.dropped == outlet.dropped
    assert bodies(healthy, len(sent) + 1) == sent + [b'more']
    sender.close()
    support.close_all(stalled, healthy)


def consumers(outlet, clock):
    """The outlet's connected subscribers, from its monitor's events."""
    if outlet.monitor.poll(100):
        outlets.count_consumers(outlet, None, clock)
    return len(outlet.fds)


@pytest.mark.parametrize('compiled_send', [
    False, pytest.param(True, marks=compiled)], ids=['pure-python',
                                                     'compiled'])
def test_a_full_subscribers_backlog_goes_out_a_run_at_a_time(
        ctx, made, clock, compiled_send):
    """Once a full subscriber reads again, the PUB outlet's backlog goes
    out through send_backlog (one call for a run, not a Python call per
    message), and a new message first sends the backlog on instead of
    queuing behind it: both in order, each counted once."""
    outlet = fanout(made)
    sub = subscribe(ctx, made, outlet, RCVHWM=1, RCVBUF=4096)
    support.wait_until(lambda: consumers(outlet, clock) == 1,
                       'the subscriber connected')
    runs = []
    send_backlog = (wire.implementation().send_backlog if compiled_send
                    else made.delivery._send_backlog)

    def recording(sock, backlog):
        sent = send_backlog(sock, backlog)
        runs.append(sent[0])
        return sent
    made.delivery._send_backlog = recording

    sent = []

    def deliver(body):
        frames = support.cast(TOPIC, body)
        sent.append(body)
        made.deliver(outlet, frames, wire.message_cost(frames))
    # The subscriber reads nothing until libzmq's pipe to it is full and
    # XPUB_NODROP refuses: then the messages wait in the backlog.
    while len(outlet.backlog) < 50:
        assert len(sent) < 20000, 'the subscriber never filled'
        deliver(b'%d ' % len(sent) + b'x' * 4096)
    queued = len(outlet.backlog)
    assert outlet.direct is None
    assert sum(runs) == 0
    got = bodies(sub, len(sent) - queued)
    # libzmq has written all it took; a new message sends the backlog on
    # first, then goes itself, and direct sending resumes.
    deliver(b'last')
    assert not outlet.backlog
    assert outlet.direct is outlet.socket
    assert sum(runs) == queued
    assert max(runs) > 1
    got += bodies(sub, queued + 1)
    assert got == sent
    assert outlet.forwarded == len(sent)
    assert dict(outlet.dropped) == {}
    sub.close()
