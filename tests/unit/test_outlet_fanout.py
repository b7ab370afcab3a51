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
from zmq_receiver.outlet import PUB_RETRY
from zmq_receiver.outlet import PUB_RETRY_MAX

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


class Filled:
    """A PUB outlet whose one subscriber read nothing until XPUB_NODROP
    refused: messages wait in the backlog. Its send_backlog calls are
    recorded (*compiled*: _wire's, else wire.py_send_backlog)."""

    def __init__(self, ctx, made, clock, compiled_send):
        self.made = made
        self.outlet = outlet = fanout(made)
        self.sub = subscribe(ctx, made, outlet, RCVHWM=1, RCVBUF=4096)
        support.wait_until(lambda: consumers(outlet, clock) == 1,
                           'the subscriber connected')
        self.runs = []
        send_backlog = (wire.implementation().send_backlog if compiled_send
                        else made.delivery._send_backlog)

        def recording(sock, backlog):
            sent = send_backlog(sock, backlog)
            self.runs.append(sent[0])
            return sent
        made.delivery._send_backlog = recording
        self.sent = []
        while len(outlet.backlog) < 50:
            assert len(self.sent) < 20000, 'the subscriber never filled'
            self.deliver(b'%d ' % len(self.sent) + b'x' * 4096)
        self.queued = len(outlet.backlog)
        assert outlet.direct is None
        # Each new message tried the backlog first, and the socket took
        # none of it.
        assert sum(self.runs) == 0
        self.runs.clear()
        # What libzmq took: after it, there is room for the backlog.
        self.got = bodies(self.sub, len(self.sent) - self.queued)

    def deliver(self, body):
        frames = support.cast(TOPIC, body)
        self.sent.append(body)
        self.made.deliver(self.outlet, frames, wire.message_cost(frames))


both_sends = pytest.mark.parametrize('compiled_send', [
    False, pytest.param(True, marks=compiled)], ids=['pure-python',
                                                     'compiled'])


@both_sends
def test_a_new_message_sends_a_pub_backlog_on_before_it(ctx, made, clock,
                                                        compiled_send):
    """Once a full subscriber reads again, a new message first sends the
    PUB outlet's backlog on, a run in one send_backlog call (not a Python
    call per message), instead of queuing behind it: in order, each
    counted once, and direct sending resumes."""
    filled = Filled(ctx, made, clock, compiled_send)
    outlet = filled.outlet
    # As if its retries had found it full for a while: the progress a new
    # message makes must bring the retries back to their shortest.
    outlet.retry_delay = PUB_RETRY_MAX
    filled.deliver(b'last')
    assert not outlet.backlog
    assert outlet.retry_delay == PUB_RETRY
    assert outlet.direct is outlet.socket
    assert sum(filled.runs) == filled.queued
    assert max(filled.runs) > 1
    assert filled.got + bodies(filled.sub, filled.queued + 1) == filled.sent
    assert outlet.forwarded == len(filled.sent)
    assert dict(outlet.dropped) == {}
    filled.sub.close()


@both_sends
def test_the_retry_timer_sends_a_pub_backlog_a_run_at_a_time(
        ctx, made, clock, compiled_send):
    filled = Filled(ctx, made, clock, compiled_send)
    outlet = filled.outlet
    assert outlet in made.delivery._retry
    clock.advance(outlet.retry_delay)
    made.delivery.run_due()
    assert not outlet.backlog
    assert filled.runs == [filled.queued]
    assert outlet.retry_delay == PUB_RETRY
    assert filled.got + bodies(filled.sub, filled.queued) == filled.sent
    assert outlet.forwarded == len(filled.sent)
    filled.sub.close()


@both_sends
def test_a_slow_pub_outlet_sends_its_backlog_one_counted_message_at_a_time(
        ctx, made, clock, compiled_send):
    """While a subscriber is skipped (slow), each message sent counts as
    dropped for it (slow_subscriber): no run, which would count them
    forwarded."""
    filled = Filled(ctx, made, clock, compiled_send)
    outlet = filled.outlet
    # What Delivery._past_full_subscriber sets when a subscriber stalls;
    # just looked at, so that _skipping keeps it slow.
    outlet.slow = True
    outlet.stall_checked = clock()
    forwarded = outlet.forwarded
    made.delivery.flush(outlet)
    assert not outlet.backlog
    assert filled.runs == []
    assert outlet.forwarded == forwarded
    assert dict(outlet.dropped) == {
        metrics.SLOW_SUBSCRIBER: filled.queued}
    assert filled.got + bodies(filled.sub, filled.queued) == filled.sent
    filled.sub.close()
