"""The matchmaker agent's decisions, tick by tick, on a clock of the test's.

No sockets and no Redis: the outlets and the worker are stand-ins that
record what the agent asks of them (tests/functional/test_agent.py runs the
real thing).
"""

import pytest

from zmq_receiver.matchmaker import agent
from zmq_receiver import routing
from zmq_receiver.matchmaker import ring

HOST = 'h1'


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeOutlet:
    def __init__(self, key, kind):
        self.key = key
        self.kind = kind
        self.consumers = 0
        self.pinned = False


class FakeOutlets:
    ipc_dir = '/run/x'

    def __init__(self):
        self.by_key = {}

    def pin(self, route):
        outlet = self.by_key.setdefault(route.key,
                                        FakeOutlet(route.key, route.kind))
        outlet.pinned = True
        return outlet

    def unpin(self, key):
        self.by_key[key].pinned = False

    def add(self, key, consumers=0):
        outlet = FakeOutlet(key, routing.route(key.encode(), 100).kind)
        outlet.consumers = consumers
        self.by_key[key] = outlet
        return outlet


class FakeWorker:
    errors = 0

    def __init__(self):
        self.wanted = frozenset()
        self.found = None

    def start(self):
        pass

    def want(self, topics):
        self.wanted = topics

    def take_found(self):
        found, self.found = self.found, None
        return found

    def snapshot(self):
        return {}


def test_served_topic():
    assert agent.served_topic('compute.h1', HOST) == 'compute'
    assert agent.served_topic('compute.h1.example.org',
                              'h1.example.org') == 'compute'
    assert agent.served_topic('compute.h2', HOST) is None
    assert agent.served_topic('.h1', HOST) is None
    assert agent.served_topic('a.b.h1', HOST) is None


@pytest.fixture
def redis_agent():
    clock = Clock()
    made = agent.Agent(HOST, worker=FakeWorker(), grace_period=30.0,
                       clock=clock)
    made.start(FakeOutlets())
    return made, clock


def test_records_live_while_a_consumer_is_there_and_grace_after(
        redis_agent):
    made, clock = redis_agent
    outlets, worker = made.outlets, made.worker
    assert set(outlets.by_key) == {'zmq_replies.h1'}
    compute = outlets.add('compute.h1', consumers=1)
    made.tick()
    assert worker.wanted == {'compute'}
    assert compute.pinned
    compute.consumers = 0
    clock.now += 1.0
    made.tick()
    gone_seen = clock.now
    # Kept for the whole grace period, and not one tick longer.
    while clock.now + 1.0 - gone_seen < 30.0:
        clock.now += 1.0
        made.tick()
        assert worker.wanted == {'compute'}, clock.now - gone_seen
    clock.now += 1.0
    made.tick()
    assert worker.wanted == frozenset()
    assert made.no_consumer == frozenset()
    # Released to the idle timeout once neither listed nor owned.
    assert not compute.pinned


def test_a_consumer_back_within_the_grace_period_keeps_them(redis_agent):
    made, clock = redis_agent
    compute = made.outlets.add('compute.h1', consumers=1)
    made.tick()
    compute.consumers = 0
    clock.now += 29.0
    made.tick()
    compute.consumers = 1
    clock.now += 1.0
    made.tick()
    compute.consumers = 0
    clock.now += 29.0
    made.tick()
    assert made.worker.wanted == {'compute'}


def test_registrations_found_are_pinned_but_not_owned(redis_agent):
    made, clock = redis_agent
    made.worker.found = {'cert', 'conductor'}
    made.tick()
    assert made.outlets.by_key['cert.h1'].pinned
    assert made.worker.wanted == frozenset()
    clock.now += 31.0
    made.tick()
    assert made.no_consumer == {'cert', 'conductor'}
    assert made.worker.wanted == frozenset()
    # Gone from Redis: let go.
    made.worker.found = set()
    made.tick()
    assert not made.outlets.by_key['cert.h1'].pinned
    assert made.no_consumer == frozenset()


def test_pub_outlets_never_make_records(redis_agent):
    made, clock = redis_agent
    made.outlets.by_key['zmq_replies.h1'].consumers = 3
    made.outlets.add('fanout~compute', consumers=2)
    made.tick()
    assert made.worker.wanted == frozenset()


def test_ring_topics_are_pinned_with_their_fanout_and_reported():
    clock = Clock()
    mm = ring.RingMatchMaker('<test>', topics={
        'compute': [HOST, 'h2'], 'scheduler': ['h2'], 'a.b': [HOST]})
    made = agent.Agent(HOST, ring=mm, grace_period=5.0, clock=clock)
    made.start(FakeOutlets())
    assert made.pinned == {'compute.h1', 'fanout~compute', 'zmq_replies.h1'}
    made.tick()
    clock.now += 5.0
    made.tick()
    assert made.no_consumer == {'compute'}
    made.outlets.by_key['compute.h1'].consumers = 1
    made.tick()
    assert made.no_consumer == frozenset()
    assert made.snapshot()['errors'] == 0


def test_a_key_too_long_for_a_socket_path_is_counted_once():
    clock = Clock()
    mm = ring.RingMatchMaker('<test>', topics={'t' * 120: [HOST]})
    made = agent.Agent(HOST, ring=mm, clock=clock)
    made.start(FakeOutlets())
    made.tick()
    made.tick()
    assert made.errors == 2   # topic.h1 and fanout~topic
    assert made.pinned == {'zmq_replies.h1'}
