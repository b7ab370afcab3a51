"""A new PUSH outlet joining and settling (issue 13 point 2), on a clock
the test moves: the state changes that the daemon-level tests in
tests/functional/test_backlog.py and test_faults.py only see from outside.
"""


import pytest
import zmq

from tests import support
from zmq_receiver import metrics
from zmq_receiver import outlets
from zmq_receiver import routing
from tests.unit.test_outlet_files import make_outlets
from tests.unit.test_ratelimit import Clock

BACKLOG = 4
WINDOW = 5.0


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def made(short_dir, ctx, clock):
    made = make_outlets(ctx, short_dir,
                        outlets.Limits(BACKLOG, 0, 3, 300, WINDOW),
                        'test_outlet_joining', clock)
    yield made
    made.close_all()


def put(made, outlet, n, start=0):
    for i in range(start, start + n):
        frames = support.cast(outlet.key, b'%d' % i)
        made.deliver(outlet, frames, sum(map(len, frames)))


def assert_held(made):
    assert made.delivery.held == made.queued
    assert made.buffered_bytes == sum(o.backlog_bytes for o in made)


def test_joining_outlet_keeps_a_burst_then_the_usual_backlog(made, clock):
    outlet = made.get(routing.route(b'burst.host1', 100))
    put(made, outlet, 3 * BACKLOG)
    assert outlet.queued == 3 * BACKLOG
    assert made.counters.dropped == {}
    assert_held(made)
    clock.advance(WINDOW)
    made.tick()
    # Nobody joined: the newest beyond the backlog go, as on arrival.
    assert outlet.joining_until is None
    assert [f[3] for f, _ in outlet.backlog] == [
        b'%d' % i for i in range(BACKLOG)]
    assert made.counters.dropped == {metrics.BACKLOG_FULL: 2 * BACKLOG}
    assert_held(made)
    put(made, outlet, 1, 99)
    assert outlet.queued == BACKLOG
    assert made.counters.dropped == {metrics.BACKLOG_FULL: 2 * BACKLOG + 1}
    made.close(outlet)
    assert made.delivery.held == 0 and made.buffered_bytes == 0


def test_joining_outlets_share_the_count_of_all_backlogs(made):
    # max_topics 3 x backlog 4: twelve messages for all joining outlets.
    a = made.get(routing.route(b'a.host1', 100))
    put(made, a, 20)
    assert a.queued == 12
    b = made.get(routing.route(b'b.host1', 100))
    put(made, b, 6)
    assert b.queued == BACKLOG
    assert made.counters.dropped == {metrics.BACKLOG_FULL: 8 + 2}
    assert_held(made)


def test_zero_join_window_means_no_joining(made):
    made.limits.join_window = 0
    outlet = made.get(routing.route(b'capped.host1', 100))
    put(made, outlet, BACKLOG + 2)
    assert outlet.queued == BACKLOG
    assert made.counters.dropped == {metrics.BACKLOG_FULL: 2}


def test_new_outlet_sends_nothing_until_settled(made, ctx, clock):
    outlet = made.get(routing.route(b'settle.host1', 100))
    consumer = ctx.socket(zmq.PULL)
    consumer.connect('ipc://' + outlet.path)
    assert outlet.socket.poll(int(support.TIMEOUT * 1000), zmq.POLLOUT)
    put(made, outlet, 3)
    # A consumer could take them, but others may still be on their way.
    assert outlet.queued == 3 and outlet.direct is None
    assert made.next_due() == outlet.settle_until
    clock.now = outlet.settle_until
    made.run_due()
    assert outlet.settle_until is None and made.next_due() is None
    # The Socket itself, never its libzmq address, which outlives it.
    assert outlet.queued == 0 and outlet.direct is outlet.socket
    assert [support.recv(consumer)[3] for _ in range(3)] == [
        b'0', b'1', b'2']
    consumer.close()
    assert_held(made)
