"""Outlets.routes, the topic -> outlet memo the read path and the compiled
loop share: filled by Outlets.route, emptied whenever an outlet closes, so
that no topic ever reaches a closed outlet. Real outlets on a real
loop.Loop, in one process."""


import pytest

from zmq_receiver import loop as loop_mod
from zmq_receiver import outlets
from zmq_receiver import routing
from tests.unit.test_outlet_files import make_outlets
from tests.unit.test_ratelimit import Clock


@pytest.fixture
def made(short_dir, ctx):
    clock = Clock()
    made = make_outlets(ctx, short_dir, outlets.Limits(10, 0, 10, 300, 5),
                        'test_route_memo', clock, loop=loop_mod.Loop(clock))
    yield made
    made.close_all()


def route(made, topic):
    return made.route(topic, routing.route(topic, 100))


def test_routes_remember_each_topic(made):
    outlet = route(made, b'compute.host1')
    assert made.routes == {b'compute.host1': outlet}
    # Another topic of the same outlet (PUB: cut at the first dot).
    fanout = route(made, b'fanout~compute.a')
    assert route(made, b'fanout~compute.b') is fanout
    assert made.routes[b'fanout~compute.a'] is fanout
    assert made.routes[b'fanout~compute.b'] is fanout


def test_closing_an_outlet_forgets_every_route(made):
    first = route(made, b'compute.host1')
    route(made, b'compute.host2')
    routes = made.routes
    made.close(first)
    # The same dict, emptied: the compiled loop may hold a reference.
    assert made.routes is routes and routes == {}
    again = route(made, b'compute.host1')
    assert again is not first and made.routes[b'compute.host1'] is again


def test_the_memo_is_bounded(made, monkeypatch):
    monkeypatch.setattr(outlets, 'ROUTE_MEMO', 3)
    for i in range(3):
        route(made, b'compute.host1.%d' % i)
    assert len(made.routes) == 3
    route(made, b'compute.host1.3')
    assert list(made.routes) == [b'compute.host1.3']
