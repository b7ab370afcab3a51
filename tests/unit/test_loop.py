"""zmq_receiver.loop: the poller registry and the timers, in process.

Real sockets (inproc, and an ipc pair for a socket polled by descriptor
number) and a fake clock: a timer is due when the test says the time has
come, and a poll whose timer is due returns at once (timeout 0).
"""

import os
import time
import types

import pytest
import zmq

from zmq_receiver import loop as loop_mod
from tests import support

#: How long (ms) a test waits for a message to arrive in a poll.
WAIT_MS = 5000


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def pair(ctx):
    """A connected (PUSH, PULL) pair over inproc."""
    pull = ctx.socket(zmq.PULL)
    pull.bind('inproc://loop-test')
    push = ctx.socket(zmq.PUSH)
    push.connect('inproc://loop-test')
    yield push, pull
    support.close_all(push, pull)


def test_poll_timeout_rounds_up_to_whole_milliseconds():
    """zmq_poll takes whole ms: 0.1 ms ahead is 1 ms, not a spin at 0."""
    timeout = loop_mod.poll_timeout_ms
    assert timeout(10.0, 10.0001) == 1
    assert timeout(10.0, 10.001) == 1
    assert timeout(10.0, 10.0011) == 2
    assert timeout(10.0, 10.25) == 250
    # Past due: at once.
    assert timeout(10.0, 9.0) == 0
    # Nothing due: wait for an event.
    assert timeout(10.0, None) is None


def test_handler_called_with_ready_events(clock, pair):
    push, pull = pair
    loop = loop_mod.Loop(clock)
    seen = []
    loop.register(pull, zmq.POLLIN, lambda events: seen.append(
        (events, pull.recv())))
    # A far timer: the poll ends by the message, not by the timer.
    loop.call_at(clock.now + WAIT_MS / 1000, lambda: None)
    push.send(b'hello')
    loop.poll()
    assert seen == [(zmq.POLLIN, b'hello')]


def test_on_wake_comes_before_the_handlers(clock, pair):
    push, pull = pair
    order = []
    loop = loop_mod.Loop(clock, on_wake=lambda now: order.append(
        ('wake', now)))
    loop.register(pull, zmq.POLLIN, lambda events: order.append(
        ('read', pull.recv())))
    push.send(b'x')
    assert loop.poll() == clock.now
    assert order == [('wake', clock.now), ('read', b'x')]


def test_modify_to_zero_keeps_the_socket_but_does_not_poll_it(clock, pair):
    push, pull = pair
    loop = loop_mod.Loop(clock)
    seen = []
    loop.register(pull, zmq.POLLIN, seen.append)
    loop.modify(pull, 0)
    assert loop.registered(pull) == 0
    push.send(b'waits')
    # Due now: the poll returns at once, without the paused socket.
    loop.call_at(clock.now, lambda: None)
    loop.poll()
    assert seen == []
    loop.modify(pull, zmq.POLLIN)
    loop.poll()
    assert seen == [zmq.POLLIN]


def test_unregister_forgets_the_socket(clock, pair):
    push, pull = pair
    loop = loop_mod.Loop(clock)
    seen = []
    loop.register(pull, zmq.POLLIN, seen.append)
    loop.unregister(pull)
    assert loop.registered(pull) is None
    push.send(b'unseen')
    loop.call_at(clock.now, lambda: None)
    loop.poll()
    assert seen == []
    # Twice is harmless (a socket closed on two paths).
    loop.unregister(pull)


def test_a_file_descriptor_is_polled_too(clock):
    """The signal wakeup is a pipe, registered by descriptor number."""
    read_fd, write_fd = os.pipe()
    try:
        loop = loop_mod.Loop(clock)
        seen = []
        loop.register(read_fd, zmq.POLLIN,
                      lambda events: seen.append(os.read(read_fd, 16)))
        os.write(write_fd, b'\x0f')
        loop.call_at(clock.now + WAIT_MS / 1000, lambda: None)
        loop.poll()
        assert seen == [b'\x0f']
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_timers_run_when_due_earliest_first(clock):
    loop = loop_mod.Loop(clock)
    ran = []
    loop.call_at(clock.now + 2, lambda: ran.append('b'))
    loop.call_at(clock.now + 1, lambda: ran.append('a'))
    loop.call_at(clock.now + 2, lambda: ran.append('c'))
    loop.run_timers()
    assert ran == []
    assert loop.next_due() == clock.now + 1
    clock.now += 1
    loop.run_timers()
    assert ran == ['a']
    clock.now += 5
    loop.run_timers()
    # Equal times: in the order they were set.
    assert ran == ['a', 'b', 'c']
    assert loop.next_due() is None


def test_a_cancelled_timer_does_not_run(clock):
    loop = loop_mod.Loop(clock)
    ran = []
    timer = loop.call_at(clock.now + 1, lambda: ran.append('cancelled'))
    loop.call_at(clock.now + 3, lambda: ran.append('kept'))
    timer.cancel()
    assert not timer.active
    # It no longer sets the poll's timeout.
    assert loop.next_due() == clock.now + 3
    clock.now += 10
    loop.run_timers()
    assert ran == ['kept']


def test_a_timer_may_set_the_next_one(clock):
    """As the tick and the watchdog ping do: each sets its successor."""
    loop = loop_mod.Loop(clock)
    ran = []

    def tick():
        ran.append(clock.now)
        loop.call_at(clock.now + 1, tick)

    loop.call_at(clock.now, tick)
    for _ in range(3):
        loop.run_timers()
        clock.now += 1
    assert ran == [100.0, 101.0, 102.0]


def test_call_every_repeats_from_when_it_last_ran(clock):
    loop = loop_mod.Loop(clock)
    ticks, pings = [], []
    loop.call_every(1.0, lambda: ticks.append(clock.now))
    loop.call_every(0.5, lambda: pings.append(clock.now), now=True)
    # At once: the first ping, before any turn.
    assert pings == [100.0] and ticks == []
    clock.now = 100.5
    loop.run_timers()
    assert pings == [100.0, 100.5] and ticks == []
    # A late turn: the next ping is due from this one, not from the last.
    clock.now = 101.7
    loop.run_timers()
    assert ticks == [101.7] and pings == [100.0, 100.5, 101.7]
    assert loop.next_due() == pytest.approx(102.2)


def test_a_due_timer_ends_the_poll_at_once(clock, pair):
    """Nothing to read and a timer due: the poll does not wait."""
    push, pull = pair
    loop = loop_mod.Loop(clock)
    loop.register(pull, zmq.POLLIN, lambda events: None)
    loop.call_at(clock.now - 1, lambda: None)
    started = time.monotonic()
    loop.poll()
    assert time.monotonic() - started < 1.0


class Source:
    """A timer source like Outlets: its own times, asked at each turn."""

    def __init__(self, due=None):
        self.due = due
        self.runs = []

    def next_due(self):
        return self.due

    def run_due(self, now=None):
        self.runs.append(self.due)
        self.due = None


def test_a_source_sets_the_timeout_and_runs_when_due(clock):
    loop = loop_mod.Loop(clock)
    source = Source(clock.now + 0.5)
    loop.add_source(source)
    loop.call_at(clock.now + 1, lambda: None)
    assert loop.next_due() == clock.now + 0.5
    loop.run_timers()
    assert source.runs == []
    clock.now += 0.5
    loop.run_timers()
    assert source.runs == [100.5]
    # Nothing more due: the timer is the next.
    assert loop.next_due() == 101.0
    source.due = None
    assert loop.next_due() == 101.0


def test_stop_ends_the_timers_of_the_turn(clock):
    """A stop at its deadline: nothing later runs, not even a due tick."""
    loop = loop_mod.Loop(clock)
    ran = []
    source = Source(clock.now)
    loop.add_source(source)
    loop.call_at(clock.now, lambda: (ran.append('deadline'), loop.stop()))
    loop.call_at(clock.now, lambda: ran.append('tick'))
    loop.run_timers()
    assert not loop.running
    assert ran == ['deadline']
    assert source.runs == []


@pytest.fixture
def two_pairs(ctx):
    """An urgent and a lazy (PUSH, PULL) pair over inproc."""
    socks = []
    for name in ('urgent', 'lazy'):
        pull = ctx.socket(zmq.PULL)
        pull.bind('inproc://loop-%s' % name)
        push = ctx.socket(zmq.PUSH)
        push.connect('inproc://loop-%s' % name)
        socks += [push, pull]
    yield socks
    support.close_all(*socks)


def test_a_lazy_socket_waits_out_busy_turns_but_never_a_wait(
        clock, two_pairs, monkeypatch):
    upush, upull, lpush, lpull = two_pairs
    # A long window, so that the test's own pace cannot end it.
    monkeypatch.setattr(loop_mod, 'LAZY_MIN_S', 60.0)
    monkeypatch.setattr(loop_mod, 'LAZY_MAX_S', 60.0)
    loop = loop_mod.Loop(clock)
    seen = []
    loop.register(upull, zmq.POLLIN, lambda e: seen.append(upull.recv()))
    loop.register(lpull, zmq.POLLIN, lambda e: seen.append(lpull.recv()),
                  urgent=False)
    for push, body in ((upush, b'u1'), (lpush, b'l1')):
        push.send(body)
    # Both ready before the first poll: it polls all.
    support.wait_until(lambda: lpull.poll(0) and upull.poll(0), 'both ready')
    loop.poll()
    assert sorted(seen) == [b'l1', b'u1']
    upush.send(b'u2')
    lpush.send(b'l2')
    support.wait_until(lambda: lpull.poll(0) and upull.poll(0), 'both ready')
    # An urgent one is ready: the lazy one waits.
    loop.poll()
    assert seen[2:] == [b'u2']
    # Nothing urgent: the poll that would wait polls every socket.
    loop.poll()
    assert seen[3:] == [b'l2']


def test_a_lazy_socket_is_polled_while_the_urgent_ones_stay_busy(
        clock, two_pairs, monkeypatch):
    upush, upull, lpush, lpull = two_pairs
    # The loop's own time for the lazy window, moved by the test.
    now = [1000.0]
    monkeypatch.setattr(loop_mod, 'time', types.SimpleNamespace(
        monotonic=lambda: now[0], thread_time=time.thread_time))
    loop = loop_mod.Loop(clock)
    lazy = []
    loop.register(upull, zmq.POLLIN, lambda e: upull.recv())
    loop.register(lpull, zmq.POLLIN, lambda e: lazy.append(lpull.recv()),
                  urgent=False)
    for i in range(10):
        upush.send(b'%d' % i)
    lpush.send(b'l1')
    support.wait_until(lambda: lpull.poll(0) and upull.poll(0), 'both ready')
    loop.poll()
    assert lazy == [b'l1']
    lpush.send(b'l2')
    support.wait_until(lambda: lpull.poll(0), 'the lazy one ready')
    loop.poll()
    assert lazy == [b'l1']
    # Past the longest window, with the urgent one still busy.
    now[0] += loop_mod.LAZY_MAX_S
    assert upull.poll(0)
    loop.poll()
    assert lazy == [b'l1', b'l2']
