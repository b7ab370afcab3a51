"""Outlet and its boundary with C: what _wire.forward reads and writes on it.

_wire.forward finds an outlet's attributes by name, bypassing Python; a
name renamed on one side only would break the compiled loop (an
AttributeError at the first message, or counts that never grow) while the
pure-Python loop still passes. These tests hold both sides to
outlet.WIRE_ATTRIBUTES.
"""

import logging
import os
import re

import pytest
import zmq

from zmq_receiver import connections
from zmq_receiver import metrics
from zmq_receiver import outlet as outlet_mod
from zmq_receiver import outlets
from zmq_receiver import ratelimit
from zmq_receiver import reading
from zmq_receiver import routing
from zmq_receiver import wire
from tests import support
from tests.unit.test_outlet_files import Loop

WIRE_C = os.path.join(os.path.dirname(outlet_mod.__file__), '_wire.c')


def wire_outlet_attributes():
    """The attribute names _wire.c gets or sets on its ``outlet``: each
    ``PyObject_GetAttr(outlet, s_x)`` / ``SetAttr`` resolved through the
    ``s_x = PyUnicode_InternFromString("name")`` that interns it."""
    with open(WIRE_C) as f:
        source = f.read()
    interned = dict(re.findall(
        r'\b(s_\w+)\s*=\s*PyUnicode_InternFromString\("(\w+)"\)', source))
    used = set(re.findall(
        r'PyObject_(?:Get|Set)Attr\(\s*outlet\s*,\s*(s_\w+)', source))
    assert used, 'no outlet attribute found in _wire.c: the pattern is stale'
    assert used <= set(interned), used - set(interned)
    by_string = re.findall(
        r'PyObject_(?:Get|Set)AttrString\(\s*outlet\s*,\s*"(\w+)"', source)
    return {interned[name] for name in used} | set(by_string)


def test_wire_c_uses_exactly_the_declared_attributes():
    assert wire_outlet_attributes() == set(outlet_mod.WIRE_ATTRIBUTES)


def test_an_outlet_has_every_wire_attribute(ctx):
    sock = ctx.socket(zmq.PUSH)
    made = outlet_mod.Outlet(b'a.host1', routing.Kind.PUSH, '/nowhere',
                             sock, None, 12.5)
    for name in outlet_mod.WIRE_ATTRIBUTES:
        assert hasattr(made, name), name
    # What forward() expects of them: the socket to send to, a count it
    # adds to, and the time it sets.
    assert made.direct is sock
    assert made.forwarded == 0
    assert made.last_active == 12.5
    pub = outlet_mod.Outlet(b'f', routing.Kind.PUB, '/nowhere', sock, None,
                            0.0)
    assert pub.direct is None
    sock.close()


@pytest.mark.skipif(not wire.FAST, reason='no compiled _wire: %s'
                    % wire.FAST_PROBLEM)
def test_forward_counts_on_a_real_outlet(ctx):
    """wire.forward on an Outlet, not a stand-in: the counts land on it."""
    pull = ctx.socket(zmq.PULL)
    pull.bind('inproc://in')
    push = ctx.socket(zmq.PUSH)
    push.connect('inproc://in')
    consumer = ctx.socket(zmq.PULL)
    consumer.bind('inproc://out')
    out = ctx.socket(zmq.PUSH)
    out.connect('inproc://out')
    made = outlet_mod.Outlet(b'a.host1', routing.Kind.PUSH, '/nowhere',
                             out, None, 0.0)
    for i in range(3):
        wire.send_message(push, [b'%d' % i, b'a.host1', b'', b'{}'])
    assert pull.poll(5000)
    sent = wire.forward(pull, {b'a.host1': made}, 10, 1 << 20, 7.0,
                        lambda parts: None)
    assert sent == made.forwarded
    assert sent >= 1
    assert made.last_active == 7.0
    support.close_all(pull, push, consumer, out)


def test_outlets_takes_reclaim_and_connections(short_dir, ctx):
    """What cli.py and receiver.py used to set after construction."""
    ipc_dir = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc_dir)
    counters = metrics.Counters()
    warn = ratelimit.RateLimitedLog(logging.getLogger('test_outlet'), 10)
    local = connections.Connections(100, counters, warn, per_socket=10)
    reclaimed = []
    made = outlets.Outlets(
        ctx, Loop(), ipc_dir, outlets.Limits(10, 0, 10, 300, 5), counters,
        warn, reclaim=lambda: reclaimed.append(True), connections=local)
    try:
        assert made.watch.connections is local
        made.get(routing.route(b'a.host1', 100))
        os.rename(ipc_dir, ipc_dir + '.gone')
        made.check_files()
        assert made.watch.dir_missing
        os.mkdir(ipc_dir)
        made.check_files()
        assert reclaimed == [True]
        assert not made.watch.dir_missing
    finally:
        made.close_all()


def test_a_reload_updates_the_shared_limits_in_place():
    """Every holder of the Limits sees a reload's bounds; what a reload
    may not change (the options without mutable=True) stays."""
    running = outlets.Limits(10, 100, 5, 300, 5, socket_mode=0o660)
    held_by_someone = running
    running.update(outlets.Limits(20, 200, 99, 60, 1, socket_mode=0o600))
    assert (held_by_someone.backlog, held_by_someone.backlog_bytes,
            held_by_someone.idle_timeout, held_by_someone.join_window) == \
        (20, 200, 60, 1)
    assert held_by_someone.max_topics == 5
    assert held_by_someone.socket_mode == 0o660


def test_every_mutable_option_is_one_a_reload_applies():
    """An option declared mutable=True that no reload applies would make
    SIGHUP log 'Reloaded' and change nothing."""
    from zmq_receiver import opts
    mutable = {opt.dest for _, group in opts.list_opts() for opt in group
               if opt.mutable}
    # Limits.MUTABLE by option name; agent_grace_period: agent.reload.
    assert mutable == {'rpc_zmq_topic_backlog', 'max_backlog_bytes',
                       'idle_timeout', 'join_window', 'agent_grace_period'}
    assert outlets.Limits.MUTABLE == ('backlog', 'backlog_bytes',
                                      'idle_timeout', 'join_window')


@pytest.mark.skipif(not wire.FAST, reason='no compiled _wire: %s'
                    % wire.FAST_PROBLEM)
def test_a_batch_fits_the_compiled_loops_group():
    """A batch larger than _wire.forward's group would be sent in two
    groups, twice the wake-ups per outlet (reading.INBOUND_BATCH); the
    built module says its size, so a stale build fails too."""
    from zmq_receiver import _wire
    assert _wire.GROUP_MSGS == reading.INBOUND_BATCH
