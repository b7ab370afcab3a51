"""zmq_receiver.wire: whole messages on and off real sockets, both ways.

The compiled functions (zmq_receiver._wire) and the pure-Python ones keep
one contract, so most tests run against both and against each other (one
sends, the other receives). forward(), the compiled loop, is tested with an
outlet-like object and real sockets. The leak tests push 100k messages
through and require memory and object counts to stay level: a zmq_msg_t or
a reference lost per message would show as megabytes.
"""

import collections
import ctypes
import errno
import gc
import json
import os
import subprocess
import sys
import threading

import pytest
import zmq

from tests import support
from zmq_receiver import wire

fast = pytest.mark.skipif(not wire.FAST, reason='no compiled _wire: %s'
                          % wire.FAST_PROBLEM)

IMPLS = {
    'c': (wire.recv_message, wire.send_message) if wire.FAST else None,
    'py': (wire.py_recv_message, wire.py_send_message),
}

LARGE = wire.ZERO_COPY_MIN

SHAPES = [
    [b'only'],
    [b'id', b'topic'],
    [b'msg-1', b'compute.host1', b'cast', b'["{}", {"method": "m"}]'],
    [b'', b'', b'', b''],
    [b'id', b'topic', b'', b'x' * (LARGE - 1)],
    [b'id', b'topic', b'', b'y' * LARGE],
    [b'i' * LARGE, b't' * LARGE, b'', b'z' * 65536],
    [b'id', b'topic', b'impl_zmq_v2', b'{}', b'oslo.message', b'{}' * 3000,
     b'oslo.version', b'2.0'],
]


def impl(name):
    if IMPLS[name] is None:
        pytest.skip('no compiled _wire: %s' % wire.FAST_PROBLEM)
    return IMPLS[name]


def as_bytes(parts):
    return [bytes(p) for p in parts]


def recv(recv_message, sock, timeout=support.TIMEOUT):
    """One message through *recv_message*, waiting for it to arrive."""
    assert sock.poll(timeout * 1000), 'nothing arrived'
    return recv_message(sock)


def pair(ctx, transport, directory, name='a'):
    """A connected (PUSH, PULL) pair over *transport*."""
    pull = ctx.socket(zmq.PULL)
    if transport == 'tcp':
        port = pull.bind_to_random_port('tcp://127.0.0.1')
        endpoint = 'tcp://127.0.0.1:%d' % port
    elif transport == 'ipc':
        endpoint = 'ipc://%s/%s' % (directory, name)
        pull.bind(endpoint)
    else:
        endpoint = 'inproc://%s-%s' % (name, id(pull))
        pull.bind(endpoint)
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoint)
    return push, pull


@pytest.fixture
def inproc(ctx):
    push, pull = pair(ctx, 'inproc', None)
    yield push, pull
    support.close_all(push, pull)


def test_fast_in_this_environment():
    # CI and the image install gcc: the compiled path must be there.
    print('FAST_PROBLEM:', wire.FAST_PROBLEM)
    assert wire.FAST, wire.FAST_PROBLEM
    from zmq_receiver import _wire
    assert wire.recv_message is _wire.recv_message
    assert _wire.ZERO_COPY_MIN == wire.ZERO_COPY_MIN


def wire_in_new_process(setup, **env):
    """What a fresh interpreter prints of wire after *setup* (code)."""
    code = ('from zmq_receiver import wire; %s; '
            'print(wire.FAST, wire.recv_message is wire.py_recv_message, '
            'wire.forward, wire.FAST_PROBLEM)' % setup)
    return subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True,
        cwd=support.REPO, env=support.clean_env(env),
        timeout=support.TIMEOUT, check=True).stdout


def test_nothing_is_bound_at_import():
    out = wire_in_new_process('pass')
    assert out.split()[:3] == ['False', 'True', 'None']


def test_pure_python_forced_by_environment():
    out = wire_in_new_process('wire.use_compiled()',
                              ZMQ_RECEIVER_PURE_PYTHON='1')
    assert out.split()[:3] == ['False', 'True', 'None']
    assert 'ZMQ_RECEIVER_PURE_PYTHON' in out


@fast
def test_bound_to_the_libzmq_pyzmq_loaded():
    from zmq_receiver import _wire
    backend = wire._backend_file()
    paths = wire._loaded_libzmq(backend)
    assert os.path.basename(paths[0]).startswith('libzmq')
    assert paths[-1] == backend
    # The same library again: nothing changes.
    _wire.bind(paths[0], zmq.backend.Socket, wire.zmq_error, backend)
    assert _wire.strerror(errno.EAGAIN) == zmq.strerror(errno.EAGAIN)
    # Never loads a library itself.
    with pytest.raises(OSError, match='not loaded'):
        _wire.bind('/nonexistent/libzmq.so.5', zmq.backend.Socket,
                   wire.zmq_error)
    # Nor another loaded library once bound.
    libc = [p for p in maps() if os.path.basename(p).startswith('libc.so')]
    with pytest.raises(RuntimeError, match='already bound'):
        _wire.bind(libc[0], zmq.backend.Socket, wire.zmq_error)


@fast
def test_bind_in_a_fresh_process():
    code = r'''
import os, zmq
from zmq_receiver import wire, _wire
assert not wire.FAST
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL)
try:
    _wire.recv_message(pull)
except RuntimeError as e:
    print('unbound:', e)
libc = [p for p in open('/proc/self/maps').read().split()
        if os.path.basename(p).startswith('libc.so')][0]
try:
    _wire.bind(libc, zmq.backend.Socket, wire.zmq_error)
except OSError as e:
    print('libc:', e)
# pyzmq's extension finds, through its own links, the libzmq it uses.
backend = wire._backend_file()
_wire.bind(backend, zmq.backend.Socket, wire.zmq_error, backend)
pull.bind('inproc://x')
push = ctx.socket(zmq.PUSH)
push.connect('inproc://x')
_wire.send_message(push, [b'a', b'b'])
print('bound:', _wire.recv_message(pull))
# A bare address is never taken for a socket: it may be stale (this one
# is not even mapped), and libzmq would crash on it.
for call in (lambda: _wire.send_message(0x1000, [b'x']),
             lambda: _wire.recv_message(push.underlying),
             lambda: _wire.forward(0x1000, {}, 1, 1, 0.0, print)):
    try:
        call()
    except TypeError as e:
        print('stale:', e)
'''
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True,
        cwd=support.REPO, env=support.clean_env(ZMQ_RECEIVER_PURE_PYTHON='1'),
        timeout=support.TIMEOUT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == 'unbound: zmq_receiver._wire: bind() was not called'
    assert lines[1].startswith('libc: ') and 'has no zmq_' in lines[1]
    assert lines[2] == "bound: [b'a', b'b']"
    assert lines[3:] == ['stale: expected a zmq.Socket, not int'] * 3


def maps():
    with open('/proc/self/maps') as f:
        return {line.split(None, 5)[5].strip() for line in f
                if len(line.split(None, 5)) == 6}


@pytest.mark.parametrize('transport', ['inproc', 'ipc', 'tcp'])
@pytest.mark.parametrize('receiver', ['c', 'py'])
@pytest.mark.parametrize('sender', ['c', 'py'])
def test_round_trip(ctx, short_dir, transport, sender, receiver):
    send_message = impl(sender)[1]
    recv_message = impl(receiver)[0]
    push, pull = pair(ctx, transport, short_dir)
    for frames in SHAPES:
        send_message(push, frames)
    for frames in SHAPES:
        got = recv(recv_message, pull)
        assert as_bytes(got) == frames
        assert type(got[0]) is bytes
        if len(frames) > 1:
            assert type(got[1]) is bytes
        for part, sent in zip(got[2:], frames[2:]):
            if len(sent) < LARGE:
                assert type(part) is bytes
            else:
                assert type(part) is (wire.Part if receiver == 'c'
                                      else zmq.Frame)
                assert len(part) == len(sent)
    with pytest.raises(zmq.Again):
        recv_message(pull)
    support.close_all(push, pull)


@fast
def test_part_zero_copy_resent(inproc, ctx):
    push, pull = inproc
    push2, pull2 = pair(ctx, 'inproc', None, 'b')
    body = bytes(range(256)) * 256
    wire.send_message(push, [b'id', b'topic', b'', body])
    msg = recv(wire.recv_message, pull)
    part = msg[3]
    assert isinstance(part, wire.Part)
    assert len(part) == len(body)
    assert bytes(part) == body and part.bytes == body
    view = memoryview(part)
    assert view.readonly and view.nbytes == len(body) and view == body
    assert repr(part) == '<_wire.Part 65536 bytes>'
    # The same message, twice through C and once each through the pure
    # Python path and pyzmq itself; the part stays whole throughout.
    wire.send_message(push2, msg)
    wire.send_message(push2, msg)
    wire.py_send_message(push2, msg)
    push2.send_multipart(msg)
    for _ in range(4):
        again = recv(wire.recv_message, pull2)
        assert as_bytes(again) == [b'id', b'topic', b'', body]
    assert bytes(part) == body
    del view
    with pytest.raises(TypeError):
        wire.Part()
    support.close_all(push2, pull2)


@fast
def test_send_takes_any_buffer(inproc):
    push, pull = inproc
    frames = [bytearray(b'id'), memoryview(b'topic'), zmq.Frame(b'x' * 5000),
              type('B', (bytes,), {})(b'sub')]
    wire.send_message(push, frames)
    wire.send_message(push, tuple(frames))
    for _ in range(2):
        assert recv(wire.recv_message, pull)[:2] == [b'id', b'topic']


@fast
def test_bad_part_sends_nothing(inproc):
    push, pull = inproc
    for bad in ('text', 7, None):
        with pytest.raises(TypeError):
            wire.send_message(push, [b'id', b'topic', b'', bad])
    with pytest.raises(ValueError):
        wire.send_message(push, [])
    with pytest.raises(TypeError):
        wire.send_message(push, b'not a list of parts'[0])
    wire.send_message(push, [b'id', b'ok'])
    # Nothing half sent before: the next message arrives whole.
    assert recv(wire.recv_message, pull) == [b'id', b'ok']


@pytest.mark.parametrize('name', ['c', 'py'])
def test_again_when_no_peer(ctx, name):
    recv_message, send_message = impl(name)
    push = ctx.socket(zmq.PUSH)
    push.bind('inproc://nobody-%s' % name)
    with pytest.raises(zmq.Again):
        send_message(push, [b'id', b'topic', b'', b'body'])
    pull = ctx.socket(zmq.PULL)
    pull.bind('inproc://empty-%s' % name)
    with pytest.raises(zmq.Again):
        recv_message(pull)
    support.close_all(push, pull)


@pytest.mark.parametrize('name', ['c', 'py'])
def test_again_when_full_sends_nothing(ctx, name):
    recv_message, send_message = impl(name)
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.bind('inproc://full-%s' % name)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 1)
    push.connect('inproc://full-%s' % name)
    sent = 0
    with pytest.raises(zmq.Again):
        for sent in range(100):
            send_message(push, [b'%d' % sent, b'topic', b'', b'b' * 5000])
    assert 0 < sent < 100
    for i in range(sent):
        assert as_bytes(recv(recv_message, pull)) == [
            b'%d' % i, b'topic', b'', b'b' * 5000]
    with pytest.raises(zmq.Again):
        recv_message(pull)
    # Room again (once the writer hears of it): the message goes whole.
    assert push.poll(support.TIMEOUT * 1000, zmq.POLLOUT)
    send_message(push, [b'again', b'topic'])
    assert recv(recv_message, pull) == [b'again', b'topic']
    support.close_all(push, pull)


@pytest.mark.parametrize('name', ['c', 'py'])
def test_closed_socket_raises(ctx, name):
    recv_message, send_message = impl(name)
    push, pull = pair(ctx, 'inproc', None)
    push.close()
    pull.close()
    with pytest.raises(zmq.ZMQError) as e:
        recv_message(pull)
    assert e.value.errno == errno.ENOTSOCK
    with pytest.raises(zmq.ZMQError) as e:
        send_message(push, [b'id', b'topic'])
    assert e.value.errno == errno.ENOTSOCK


@pytest.mark.parametrize('name', ['c', 'py'])
def test_errors_are_the_ones_pyzmq_raises(name):
    recv_message, send_message = impl(name)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind('inproc://term-%s' % name)
    pull = context.socket(zmq.PULL)
    pull.bind('inproc://term-pull-%s' % name)
    with pytest.raises(zmq.Again):
        send_message(push, [b'id', b'topic'])
    term = threading.Thread(target=context.term)
    term.start()
    try:
        # Each socket hears of it when it next looks at its commands.
        with pytest.raises(zmq.ContextTerminated):
            pull.poll(support.TIMEOUT * 1000)
        with pytest.raises(zmq.ContextTerminated):
            push.poll(support.TIMEOUT * 1000, zmq.POLLOUT)
        with pytest.raises(zmq.ContextTerminated):
            send_message(push, [b'id', b'topic'])
        with pytest.raises(zmq.ContextTerminated):
            recv_message(pull)
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        term.join(support.TIMEOUT)
    assert not term.is_alive()
    assert type(wire.zmq_error(errno.ENOTSOCK)) is zmq.ZMQError
    assert wire.zmq_error(errno.ENOTSOCK).errno == errno.ENOTSOCK


# -- send_backlog ------------------------------------------------------------


@pytest.mark.parametrize('name', ['c', 'py'])
def test_send_backlog_sends_a_run_and_stops_at_a_refusal(ctx, name):
    impl(name)
    send_backlog = (wire.implementation().send_backlog if name == 'c'
                    else wire.py_send_backlog)
    if name == 'c':
        assert send_backlog is not wire.py_send_backlog
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 3
    push.bind('inproc://backlog-%s' % name)
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = 3
    pull.connect('inproc://backlog-%s' % name)
    backlog = collections.deque(
        (msg(i, body=b'b' * (i + 1) * 1000), 100 + i) for i in range(20))
    waiting = list(backlog)
    count, size = send_backlog(push, backlog)
    # The pipe took some (its high-water marks on both sides), in order;
    # the first it refused is still first, and nothing was raised.
    assert 0 < count < 20
    assert size == sum(100 + i for i in range(count))
    assert list(backlog) == waiting[count:]
    got = [as_bytes(wire.py_recv_message(pull)) for _ in range(count)]
    assert got == [frames for frames, _ in waiting[:count]]
    # Room again: the rest goes.
    while backlog:
        assert push.poll(support.TIMEOUT * 1000, zmq.POLLOUT)
        sent, _ = send_backlog(push, backlog)
        for _ in range(sent):
            got.append(as_bytes(recv(wire.py_recv_message, pull)))
    assert got == [frames for frames, _ in waiting]
    assert send_backlog(push, backlog) == (0, 0)
    support.close_all(push, pull)


@fast
def test_send_backlog_checks_its_items(ctx, inproc):
    push, pull = inproc
    send_backlog = wire.implementation().send_backlog
    with pytest.raises(TypeError):
        send_backlog(push, collections.deque([[msg(0), 1]]))
    bad = collections.deque([(msg(0), 1), ([object()], 2)])
    with pytest.raises(TypeError):
        send_backlog(push, bad)
    # The good one went and was taken off; the bad one stays.
    assert len(bad) == 1
    assert as_bytes(recv(wire.py_recv_message, pull)) == msg(0)


# -- forward -----------------------------------------------------------------


class Outlet:
    """What forward() needs of zmq_receiver.outlets.Outlet."""

    __slots__ = ('socket', 'direct', 'forwarded', 'last_active')

    def __init__(self, socket, direct=True):
        self.socket = socket
        self.direct = socket if direct else None
        self.forwarded = 0
        self.last_active = 0.0


class Slow:
    """A slow() that records what it gets, and may raise or act."""

    def __init__(self, action=None):
        self.calls = []
        self.action = action

    def __call__(self, parts):
        self.calls.append(parts)
        if self.action is not None:
            self.action(parts)

    @property
    def got(self):
        return [as_bytes(parts) for parts in self.calls]


@pytest.fixture
def fwd(ctx):
    """Inbound (PUSH -> PULL) and one outlet (PUSH -> PULL), inproc."""
    inbound = pair(ctx, 'inproc', None, 'in')
    out = pair(ctx, 'inproc', None, 'out')
    yield inbound, out
    support.close_all(*inbound, *out)


def feed(push, messages):
    for frames in messages:
        wire.send_message(push, frames)


def drain(pull):
    got = []
    while True:
        try:
            got.append(as_bytes(wire.recv_message(pull)))
        except zmq.Again:
            return got


def msg(i, topic=b'compute.host1', body=b'["{}", {}]'):
    return [b'%d' % i, topic, b'', body]



@fast
def test_forward_direct(fwd):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush)
    sent = [msg(i) for i in range(10)] + [msg(10, body=b'L' * 70000)]
    feed(push, sent)
    slow = Slow()
    now = 1234.5
    assert wire.forward(pull, {b'compute.host1': outlet}, 100, 1 << 20, now,
                        slow) == 11
    assert slow.calls == []
    assert outlet.forwarded == 11
    assert outlet.last_active is now
    assert drain(opull) == sent
    # Nothing waiting: 0, nothing touched.
    assert wire.forward(pull, {b'compute.host1': outlet}, 100, 1 << 20, 9.0,
                        slow) == 0
    assert outlet.last_active is now


@fast
@pytest.mark.parametrize('direct', [True, 0, 0x1000, 'socket'])
def test_forward_direct_is_a_socket_or_none(fwd, direct):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush)
    feed(push, [msg(1)])
    assert wire.forward(pull, {b'compute.host1': outlet}, 10, 1 << 20, 1.0,
                        Slow()) == 1
    assert drain(opull) == [msg(1)]
    # Never a handle: a stale one would crash libzmq.
    outlet.direct = opush.underlying if direct == 'socket' else direct
    feed(push, [msg(2)])
    with pytest.raises(TypeError, match='expected a zmq.Socket'):
        wire.forward(pull, {b'compute.host1': outlet}, 10, 1 << 20, 1.0,
                     Slow())


@fast
def test_forward_direct_socket_closed_is_not_direct(ctx, fwd):
    (push, pull), _ = fwd
    gone = ctx.socket(zmq.PUSH)
    gone.close()
    outlet = Outlet(gone)
    feed(push, [msg(1)])
    slow = Slow()
    assert wire.forward(pull, {b'compute.host1': outlet}, 10, 1 << 20, 1.0,
                        slow) == 0
    assert slow.got == [msg(1)]


@fast
def test_forward_interleaved_outlets(ctx, fwd):
    (push, pull), (opush, opull) = fwd
    bpush, bpull = pair(ctx, 'inproc', None, 'b')
    a, b = Outlet(opush), Outlet(bpush)
    routes = {b'a': a, b'b': b}
    topics = [b'a', b'b', b'a', b'a', b'b', b'a']
    sent = [msg(i, t) for i, t in enumerate(topics)]
    feed(push, sent)
    assert wire.forward(pull, routes, 100, 1 << 20, 5.0, Slow()) == 6
    assert (a.forwarded, b.forwarded) == (4, 2)
    assert drain(opull) == [m for m in sent if m[1] == b'a']
    assert drain(bpull) == [m for m in sent if m[1] == b'b']
    support.close_all(bpush, bpull)


@fast
def test_forward_keeps_each_outlets_order_across_many_outlets_and_groups(
        ctx, fwd):
    """More outlets than half the group's index (so that their slots
    collide) and more messages than one group holds (so that the index is
    used again for the next group): every outlet gets its messages once,
    in order, and counts them."""
    (push, pull), _ = fwd
    pairs = [pair(ctx, 'inproc', None, 'many%d' % i) for i in range(300)]
    outlets = [Outlet(p) for p, _ in pairs]
    routes = {b't%d' % i: o for i, o in enumerate(outlets)}
    # Not round-robin: runs of one topic and jumps between them.
    order = [(i * 7 + i // 3) % 300 for i in range(1500)]
    sent = [msg(i, b't%d' % t) for i, t in enumerate(order)]
    feed(push, sent)
    assert wire.forward(pull, routes, 2000, 1 << 20, 1.0, Slow()) == 1500
    for t, (o, (_, opull)) in enumerate(zip(outlets, pairs)):
        mine = [m for m in sent if m[1] == b't%d' % t]
        assert drain(opull) == mine, t
        assert o.forwarded == len(mine)
    support.close_all(*[s for p in pairs for s in p])


@fast
def test_forward_sends_what_came_before_a_slow_message_first(ctx, fwd):
    (push, pull), (opush, opull) = fwd
    bpush, bpull = pair(ctx, 'inproc', None, 'b')
    a, b = Outlet(opush), Outlet(bpush)
    routes = {b'a': a, b'b': b}
    sent = [msg(0, b'a'), msg(1, b'b'), msg(2, b'a'), msg(3, b'other'),
            msg(4, b'b')]
    feed(push, sent)
    seen = []
    # Held for a group, the direct ones must still be out (and counted)
    # before slow() sees a later message.
    slow = Slow(lambda parts: seen.append(
        (drain(opull), drain(bpull), a.forwarded, b.forwarded)))
    assert wire.forward(pull, routes, 100, 1 << 20, 1.0, slow) == 4
    assert slow.got == [sent[3]]
    assert seen == [([sent[0], sent[2]], [sent[1]], 2, 1)]
    assert drain(bpull) == [sent[4]]
    assert (a.forwarded, b.forwarded) == (2, 2)
    support.close_all(bpush, bpull)


@fast
def test_forward_refused_in_a_group_goes_to_slow_in_order(ctx, fwd):
    (push, pull), _ = fwd
    full = ctx.socket(zmq.PUSH)
    full.sndhwm = 2
    full.bind('inproc://full')
    reader = ctx.socket(zmq.PULL)
    reader.rcvhwm = 2
    reader.connect('inproc://full')
    other_push, other_pull = pair(ctx, 'inproc', None, 'other')
    stuck, ok = Outlet(full), Outlet(other_push)
    routes = {b'stuck': stuck, b'ok': ok}
    sent = [msg(i, b'stuck' if i % 2 else b'ok') for i in range(20)]
    feed(push, sent)
    slow = Slow()
    direct = wire.forward(pull, routes, 100, 1 << 20, 1.0, slow)
    to_stuck = [m for m in sent if m[1] == b'stuck']
    # The pipe took some; from the first it refused on, the rest of that
    # outlet's messages reach slow() whole and in their order, and the
    # other outlet's go on directly.
    taken = stuck.forwarded
    assert 0 < taken < len(to_stuck)
    assert slow.got == to_stuck[taken:]
    assert drain(other_pull) == [m for m in sent if m[1] == b'ok']
    assert direct == taken + 10
    support.close_all(full, reader, other_push, other_pull)


@fast
@pytest.mark.parametrize('case', ['not direct', 'no route', 'too big',
                                  'one part', 'full', 'many parts'])
def test_forward_slow(ctx, fwd, case):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush)
    routes = {b'compute.host1': outlet}
    max_size = 1000
    frames = msg(1)
    if case == 'not direct':
        outlet.direct = None
    elif case == 'no route':
        frames = msg(1, b'elsewhere')
    elif case == 'too big':
        # 14 bytes of id and topic and FRAME_COST for each of the 4 frames:
        # this one is one byte too many, and one that is just max_size
        # goes straight.
        fits = max_size - 14 - 4 * wire.FRAME_COST
        frames = msg(1, body=b'x' * (fits + 1))
        feed(push, [msg(0, body=b'x' * fits)])
    elif case == 'one part':
        frames = [b'compute.host1']
    elif case == 'full':
        nobody = ctx.socket(zmq.PUSH)
        nobody.bind('inproc://nobody')
        outlet = Outlet(nobody)
        routes = {b'compute.host1': outlet}
    elif case == 'many parts':
        frames = msg(1) + [b'p%d' % i for i in range(30)] + [b'L' * LARGE]
        max_size = 1 << 20
    feed(push, [frames])
    slow = Slow()
    direct = wire.forward(pull, routes, 100, max_size, 1.0, slow)
    assert direct == (1 if case == 'too big' else 0)
    assert outlet.forwarded == direct
    assert slow.got == [frames]
    parts = slow.calls[0]
    assert [type(p) for p in parts[:2]] == [bytes] * min(2, len(parts))
    if case == 'many parts':
        assert isinstance(parts[-1], wire.Part)
        assert all(type(p) is bytes for p in parts[:-1])
    if case == 'full':
        nobody.close()


@fast
def test_forward_batch(fwd):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush)
    routes = {b'compute.host1': outlet}
    # Slow messages count towards the batch too.
    sent = [msg(i, b'compute.host1' if i % 2 else b'other')
            for i in range(10)]
    feed(push, sent)
    slow = Slow()
    assert wire.forward(pull, routes, 3, 1 << 20, 1.0, slow) == 1
    assert slow.got == [sent[0], sent[2]]
    assert drain(opull) == [sent[1]]
    assert drain(pull) == sent[3:]
    assert wire.forward(pull, routes, 0, 1 << 20, 1.0, slow) == 0


@fast
def test_forward_batch_ends_at_max_bytes(fwd):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush)
    routes = {b'compute.host1': outlet}
    sent = [[b'%d' % i, b'compute.host1', b'', b'x' * 1000]
            for i in range(10)]
    feed(push, sent)
    slow = Slow()
    # 1,015 bytes each: the third reaches 3,000, and the batch ends there.
    assert wire.forward(pull, routes, 100, 1 << 20, 1.0, slow, 3000) == 3
    assert drain(opull) == sent[:3]
    # One message at least, however small the cap.
    assert wire.forward(pull, routes, 100, 1 << 20, 1.0, slow, 1) == 1
    # 0: no cap.
    assert wire.forward(pull, routes, 100, 1 << 20, 1.0, slow, 0) == 6
    assert drain(opull) == sent[3:]
    assert slow.calls == []


@fast
def test_forward_slow_raises(fwd):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush)
    routes = {b'compute.host1': outlet}

    def fail(parts):
        raise ValueError('slow failed')

    sent = [msg(0), msg(1), msg(2, b'other'), msg(3), msg(4, b'other')]
    feed(push, sent)
    with pytest.raises(ValueError) as e:
        wire.forward(pull, routes, 100, 1 << 20, 7.0, Slow(fail))
    # The direct sends before the failure are counted on the outlet and
    # on the exception.
    assert e.value.wire_forwarded == 2
    assert outlet.forwarded == 2 and outlet.last_active == 7.0
    assert drain(opull) == sent[:2]
    # The rest still waits, at a message boundary.
    assert as_bytes(wire.recv_message(pull)) == sent[3]
    assert wire.forward(pull, routes, 100, 1 << 20, 7.0, Slow()) == 0


@fast
def test_forward_reads_routes_again_after_slow(fwd):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush, direct=False)
    routes = {b'compute.host1': outlet}

    def open_up(parts):
        # What Outlets.deliver does once the backlog empties.
        outlet.direct = opush

    sent = [msg(i) for i in range(4)]
    feed(push, sent)
    slow = Slow(open_up)
    assert wire.forward(pull, routes, 100, 1 << 20, 1.0, slow) == 3
    assert slow.got == sent[:1]
    assert drain(opull) == sent[1:]

    def close_down(parts):
        outlet.direct = None
        routes.clear()

    feed(push, [msg(i, b'other') for i in range(1)] + sent)
    slow = Slow(close_down)
    assert wire.forward(pull, routes, 100, 1 << 20, 1.0, slow) == 0
    assert len(slow.calls) == 5


@fast
def test_forward_socket_closed_by_slow(fwd):
    (push, pull), (opush, opull) = fwd
    feed(push, [msg(0), msg(1)])
    slow = Slow(lambda parts: pull.close())
    assert wire.forward(pull, {}, 100, 1 << 20, 1.0, slow) == 0
    assert len(slow.calls) == 1
    with pytest.raises(zmq.ZMQError) as e:
        wire.forward(pull, {}, 100, 1 << 20, 1.0, slow)
    assert e.value.errno == errno.ENOTSOCK


@fast
def test_forward_checks_arguments(fwd):
    (push, pull), (opush, opull) = fwd
    with pytest.raises(TypeError):
        wire.forward(pull, [], 1, 1, 1.0, Slow())
    with pytest.raises(TypeError):
        wire.forward(pull, {}, 1, 1, 1.0)


# -- leaks -------------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
        'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


def malloc_in_use_kib():
    """Bytes (KiB) malloc has handed out and not had back: where libzmq
    keeps message contents. RSS is no measure of that: glibc's moving mmap
    threshold makes it swing by megabytes with 64 KiB messages."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip('no mallinfo2 (not glibc 2.33+)')
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) // 1024


def usage():
    gc.collect()
    return (malloc_in_use_kib(), sys.getallocatedblocks(),
            len(gc.get_objects()))


def assert_level(run, rounds=5, per_round=20000):
    """Run *run(per_round)* *rounds* times (100k messages by default):
    after the first round, what malloc holds, Python's allocated blocks
    (every object, bytes included) and the objects the collector tracks
    must stay level."""
    run(per_round)
    before = usage()
    for _ in range(rounds - 1):
        run(per_round)
    after = usage()
    grown = [a - b for a, b in zip(after, before)]
    assert grown[0] < 256, 'malloc holds %d KiB more' % grown[0]
    assert grown[1] < 200, '%d more Python blocks' % grown[1]
    assert grown[2] < 50, '%d more objects' % grown[2]


def send_waiting(push, frames):
    """send_message once *push* may take more: a writer hears that its
    reader made room only when it processes commands, as poll does."""
    assert push.poll(support.TIMEOUT * 1000, zmq.POLLOUT)
    wire.send_message(push, frames)


@fast
def test_no_leak_recv_send(inproc, ctx):
    push, pull = inproc
    push2, pull2 = pair(ctx, 'inproc', None, 'b')
    small = msg(0, body=b'S' * 200)
    large = msg(0, body=b'L' * 65536)

    def run(n):
        for i in range(n // 500):
            frames = large if i % 4 == 0 else small
            for _ in range(500):
                send_waiting(push, frames)
            for _ in range(500):
                send_waiting(push2, wire.recv_message(pull))
            for _ in range(500):
                wire.recv_message(pull2)
            with pytest.raises(zmq.Again):
                wire.recv_message(pull)

    assert_level(run)
    support.close_all(push2, pull2)


@fast
def test_no_leak_forward(fwd):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush)
    routes = {b'compute.host1': outlet}
    messages = [msg(0, body=b'S' * 200), msg(0, b'other', b'S' * 200),
                msg(0, body=b'L' * 65536), msg(0, b'other', b'L' * 65536),
                [b'S' * 200]]
    now = 1.5
    calls = [0]

    def slow(parts):
        calls[0] += 1
        if calls[0] % 1000 == 0:
            raise ValueError('now and then')

    def run(n):
        for _ in range(n // 500):
            for i in range(500):
                send_waiting(push, messages[i % len(messages)])
            while True:
                try:
                    if not wire.forward(pull, routes, 64, 1 << 20, now,
                                        slow) and not pull.poll(0):
                        break
                except ValueError:
                    pass
            drain(opull)

    outlet.last_active = now
    refs = sys.getrefcount(now), sys.getrefcount(outlet)
    assert_level(run)
    assert (sys.getrefcount(now), sys.getrefcount(outlet)) == refs
    assert outlet.forwarded == 100000 * 2 // 5


# -- frames beyond max_frames: kept one over, the rest discarded -------------

@pytest.mark.parametrize('name', ['c', 'py'])
@pytest.mark.parametrize('count, kept', [(3, 3), (4, 4), (5, 5), (6, 5),
                                         (40, 5), (100000, 5)])
def test_recv_keeps_one_frame_over_max_frames(ctx, name, count, kept):
    recv_message, send_message = impl(name)
    push, pull = pair(ctx, 'inproc', None, 'cap-%s-%d' % (name, count))
    frames = [b'id', b'topic'] + [b'%d' % i for i in range(count - 2)]
    send_message(push, frames)
    send_message(push, [b'next', b'topic'])
    assert as_bytes(recv_cap(recv_message, pull, 4)) == frames[:kept]
    # The rest of the long message is gone: the next one starts whole.
    assert recv_cap(recv_message, pull, 4) == [b'next', b'topic']
    support.close_all(push, pull)


def recv_cap(recv_message, sock, max_frames):
    assert sock.poll(support.TIMEOUT * 1000), 'nothing arrived'
    return recv_message(sock, max_frames)


@pytest.mark.parametrize('name', ['c', 'py'])
def test_recv_without_a_cap_keeps_every_frame(ctx, name):
    recv_message, send_message = impl(name)
    push, pull = pair(ctx, 'inproc', None, 'nocap-%s' % name)
    frames = [b'id', b'topic'] + [b''] * 100
    send_message(push, frames)
    assert recv_cap(recv_message, pull, -1) == frames
    support.close_all(push, pull)


def test_frame_cost_is_the_same_in_c_and_python():
    if not wire.FAST:
        pytest.skip('no compiled _wire: %s' % wire.FAST_PROBLEM)
    from zmq_receiver import _wire
    assert _wire.FRAME_COST == wire.FRAME_COST
    assert wire.message_cost([b'ab', b'']) == 2 + 2 * wire.FRAME_COST


@fast
@pytest.mark.parametrize('count', [3, 4, 5, 17, 100000])
def test_forward_sends_a_message_over_max_frames_to_slow_cut(fwd, count):
    (push, pull), (opush, opull) = fwd
    outlet = Outlet(opush)
    routes = {b'compute.host1': outlet}
    frames = msg(0)[:2] + [b''] * (count - 2)
    feed(push, [frames, msg(1)])
    slow = Slow()
    direct = wire.forward(pull, routes, 100, 1 << 30, 1.0, slow, 0, 4)
    if count <= 4:
        # Within the cap: straight to the outlet.
        assert (direct, slow.got) == (2, [])
    else:
        assert direct == 1
        assert slow.got == [frames[:5]]
    assert drain(pull) == []


@fast
def test_guard_accept_is_installed_once_and_can_be_turned_off(monkeypatch):
    # (What it does to libzmq's accepts: tests/functional/test_accept_guard.)
    monkeypatch.setenv('ZMQ_RECEIVER_NO_ACCEPT_PATCH', '1')
    assert not wire.guard_accept()
    assert wire.ACCEPT_GUARD_PROBLEM == 'ZMQ_RECEIVER_NO_ACCEPT_PATCH is set'
    assert wire.guarded_emfiles() == 0
    monkeypatch.delenv('ZMQ_RECEIVER_NO_ACCEPT_PATCH')
    # The pure-Python loop does not turn it off: it is not the loop's.
    monkeypatch.setenv('ZMQ_RECEIVER_PURE_PYTHON', '1')
    assert wire.guard_accept(), wire.ACCEPT_GUARD_PROBLEM
    assert wire.guard_accept(), 'a second call changes nothing'
    assert wire.ACCEPT_GUARD_PROBLEM == ''
    assert wire.guarded_emfiles() >= 0


# -- a send cut part way (a PUSH's consumer left between two parts) ----------
#
# libzmq's PUSH takes the parts of a message as they come; when the pipe to
# its consumer closes before the last one, it takes them back (the consumer
# sees none of them) and refuses the next part with EAGAIN. It sees the
# pipe close only when it processes commands between two parts, at most
# about once a millisecond: a consumer that really leaves hits that by
# chance only (test_chaos). Here the send is cut on request, at any part,
# as libzmq cuts it: by a stand-in for zmq_msg_send (cut_send.c) for the
# compiled functions, and for _send, which py_send_message calls for
# each part, for the pure-Python ones.

CUT_SEND = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'cut_send.c')
#: A 6-part message, as oslo.messaging's impl_zmq_v2 envelope, with a part
#: that goes without a copy.
SIX = [b'id', b'compute.host1', b'impl_zmq_v2', b'{}', b'oslo.message',
       b'b' * LARGE]


class PyCut:
    """wire._send, cut as cut_send.c cuts zmq_msg_send: after arm(k), the
    next message's parts are held, and its part k is refused (zmq.Again)
    with the parts held released unsent; then, when that part said more
    were coming, the parts sent next are dropped up to one that says none
    is (libzmq's PUSH since 4.3.1)."""

    def __init__(self, send):
        self._send = send
        self.at = None
        self.held = []
        self.dropping = False

    def arm(self, part):
        self.at = part

    def __call__(self, sock, frame, flags):
        if self.dropping:
            self.dropping = bool(flags & zmq.SNDMORE)
            return None
        if self.at is None:
            return self._send(sock, frame, flags)
        if len(self.held) == self.at:
            self.at, self.held = None, []
            self.dropping = bool(flags & zmq.SNDMORE)
            raise zmq.Again(errno.EAGAIN)
        if flags & zmq.SNDMORE:
            self.held.append((frame, flags))
            return None
        self.at = None
        held, self.held = self.held, []
        for part, more in held:
            self._send(sock, part, more)
        return self._send(sock, frame, flags)


def check_cut_sends(ctx, send_message, cut_next, rollbacks):
    """Cut a message at each of its parts in turn: each time the send
    raises zmq.Again, counts one rollback and leaves the frames whole, and
    the message sent again arrives whole, with nothing of the refused
    attempt before it. Returns the rollbacks counted."""
    push, pull = pair(ctx, 'inproc', None, 'cut')
    first = rollbacks()
    for part in range(1, len(SIX)):
        frames = list(SIX)
        before = rollbacks()
        cut_next(part)
        with pytest.raises(zmq.Again):
            send_message(push, frames)
        assert rollbacks() == before + 1, part
        assert frames == SIX, part
        send_message(push, frames)
        send_message(push, [b'next', b'compute.host1'])
        assert pull.poll(support.TIMEOUT * 1000)
        assert pull.recv_multipart() == SIX, part
        assert pull.recv_multipart() == [b'next', b'compute.host1'], part
    support.close_all(push, pull)
    return rollbacks() - first


def test_py_send_cut_part_way_is_again_whole_and_counted(ctx, monkeypatch):
    cut = PyCut(wire._send)
    monkeypatch.setattr(wire, '_send', cut)
    # What the receiver reports as send_rollbacks.
    counted = check_cut_sends(ctx, wire.py_send_message, cut.arm,
                              wire.PURE_PYTHON.rollbacks)
    assert counted == len(SIX) - 1


def test_delivery_keeps_a_message_cut_part_way_and_sends_it_whole(
        ctx, short_dir, monkeypatch):
    from tests.unit.test_outlet_files import make_outlets
    from tests.unit.test_ratelimit import Clock
    from zmq_receiver import outlets, routing

    clock = Clock()
    made = make_outlets(ctx, short_dir, outlets.Limits(10, 0, 10, 300, 5),
                        'test_wire', clock)
    outlet = made.get(routing.route(b'compute.host1', 100))
    consumer = ctx.socket(zmq.PULL)
    consumer.connect('ipc://' + outlet.path)
    # A pipe to the consumer: a send reaches it instead of being refused
    # at its first part.
    assert outlet.socket.poll(support.TIMEOUT * 1000, zmq.POLLOUT)
    cut = PyCut(wire._send)
    monkeypatch.setattr(wire, '_send', cut)
    before = wire.PURE_PYTHON.rollbacks()
    made.deliver(outlet, list(SIX), wire.message_cost(SIX))
    # The new outlet settles first; then its backlog goes, and is cut.
    cut.arm(3)
    clock.advance(1.0)
    made.delivery.run_due()
    assert wire.PURE_PYTHON.rollbacks() == before + 1
    assert not outlet.dropped
    # The flush that was cut sends it again at once (send_backlog stops at
    # the cut, and the message-at-a-time send after it retries), or on the
    # next POLLOUT: either way whole, and counted once.
    if outlet.queued:
        assert outlet.polling_out
        made.delivery.flush(outlet)
    assert (outlet.queued, outlet.forwarded) == (0, 1)
    assert not outlet.dropped and not made.counters.dropped
    assert consumer.poll(support.TIMEOUT * 1000)
    assert consumer.recv_multipart() == SIX
    consumer.close()
    made.close_all()


CUT_C = r'''
import ctypes, json, sys
import pytest, zmq
from tests.unit import test_wire as t
from zmq_receiver import wire, _wire
shim, libzmq = sys.argv[1], sys.argv[2]
cut = ctypes.CDLL(shim)
assert cut.cut_setup(libzmq.encode()) == 0
# Every function but zmq_msg_send is libzmq's own, found through the links
# of the stand-in.
_wire.bind(shim, zmq.backend.Socket, wire.zmq_error)
compiled = wire.Implementation('compiled', _wire.recv_message,
                               _wire.send_message, _wire.forward,
                               _wire.Part, module=_wire)
ctx = zmq.Context()
sends = t.check_cut_sends(ctx, _wire.send_message, cut.cut_next,
                          compiled.rollbacks)
# The compiled loop: the message comes back to slow() whole, a Part and all.
(push, pull), (opush, opull) = (t.pair(ctx, 'inproc', None, 'in'),
                                t.pair(ctx, 'inproc', None, 'out'))
outlet = t.Outlet(opush)
assert opush.poll(5000, zmq.POLLOUT)
_wire.send_message(push, t.SIX)
assert pull.poll(5000)
slow = t.Slow()
before = compiled.rollbacks()
cut.cut_next(2)
direct = _wire.forward(pull, {b'compute.host1': outlet}, 10, 1 << 20, 1.0,
                       slow)
forwarded = [direct, outlet.forwarded, compiled.rollbacks() - before,
             slow.got == [t.SIX], type(slow.calls[0][-1]).__name__]
_wire.send_message(opush, slow.calls[0])
assert opull.poll(5000)
whole = opull.recv_multipart() == t.SIX
for s in (push, pull, opush, opull):
    s.close(linger=0)
ctx.term()
print(json.dumps(dict(sends=sends, cut=cut.cut_count(), forward=forwarded,
                      whole=whole)))
'''


@fast
def test_c_send_cut_part_way_is_again_whole_and_counted(tmp_path):
    libzmq = [p for p in wire._loaded_libzmq(None)
              if os.path.basename(p).startswith('libzmq')]
    if not libzmq:
        pytest.skip('libzmq is linked into pyzmq: nothing to link to')
    shim = str(tmp_path / 'cut_send.so')
    build = subprocess.run(
        # --no-as-needed: linked to libzmq though it calls none of its
        # functions by name, so that dlsym on it finds them.
        ['cc', '-shared', '-fPIC', '-O2', '-o', shim, CUT_SEND,
         '-Wl,--no-as-needed', libzmq[0],
         '-Wl,-rpath,' + os.path.dirname(libzmq[0]), '-ldl'],
        capture_output=True, text=True, timeout=support.TIMEOUT)
    assert build.returncode == 0, build.stderr
    # A process of its own: _wire binds one libzmq per process, and this
    # one's is bound to the real one.
    out = subprocess.run(
        [sys.executable, '-c', CUT_C, shim, libzmq[0]], capture_output=True,
        text=True, cwd=support.REPO, timeout=support.TIMEOUT,
        env=support.clean_env(ZMQ_RECEIVER_PURE_PYTHON='1'))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got['sends'] == got['cut'] - 1 == len(SIX) - 1, got
    # Not sent straight, not counted forwarded; one rollback; slow() got
    # it whole (its large part still a Part), and it went whole again.
    assert got['forward'] == [0, 0, 1, True, 'Part'], got
    assert got['whole'], got
