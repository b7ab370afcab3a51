"""Hostile and malformed input from the network, through the real daemon.

PROTOCOL.md section 4 lists what killed or exhausted the old receiver: short
messages, non-ASCII topics, topics that are not safe file names, over-long
socket paths, oversized messages, and one socket file per distinct topic
for ever. Each case here must be refused and counted under its own reason,
must leave no file behind, and must not stop the next ordinary cast.
"""

import os
import shutil
import tempfile

import hypothesis
from hypothesis import strategies as st
import pytest
import zmq
from zmq.utils import monitor

from tests import support
from tests.support import assert_balanced, cast, pull, recv
from zmq_receiver import wire

#: Files in the IPC directory that are not outlets.
NOT_OUTLETS = {'.zmq-receiver.lock', '.zmq-receiver-control'}


def outlet_files(daemon):
    return sorted(set(os.listdir(daemon.ipc_dir)) - NOT_OUTLETS)


def max_key_length(daemon):
    """The longest key whose socket path fits in sun_path (107 bytes)."""
    return 107 - len(('%s/zmq_topic_' % daemon.ipc_dir).encode())


def assert_still_forwards(out, consumer, body, topic='compute.host1'):
    frames = cast(topic, body)
    out.send_multipart(frames)
    assert recv(consumer) == frames


def assert_refused(ctx, daemon, frames, reason):
    """Send *frames*, see them refused for *reason*, then a normal cast."""
    consumer = pull(ctx, daemon, 'compute.host1')
    out = support.sender(ctx, daemon)
    # The consumer is connected before the hostile message is sent, so the
    # cast after it goes straight through instead of waiting in a backlog.
    assert_still_forwards(out, consumer, b'before')
    out.send_multipart(frames)
    stats = daemon.wait_stats(lambda s: s['received'] == 2)
    assert stats['rejected'] == {reason: 1}
    assert stats['dropped'] == {}
    assert stats['outlets'] == 1
    assert_balanced(stats)
    # The same sender is still heard: the daemon neither died nor cut it.
    assert_still_forwards(out, consumer, b'after')
    assert outlet_files(daemon) == ['zmq_topic_compute.host1']
    assert daemon.proc.poll() is None
    return out, consumer


HOSTILE = [
    ('one frame', [b'compute.host1'], 'short_message'),
    ('empty topic', [b'0', b'', b'cast', b'{}'], 'empty_topic'),
    ('empty fanout base', cast('fanout~'), 'empty_topic'),
    ('empty fanout base before dot', cast('fanout~.host1'), 'empty_topic'),
    ('slash', cast('compute/host1'), 'forbidden_character'),
    ('path escape', cast('../../etc/passwd'), 'forbidden_character'),
    ('backslash', cast(b'compute\\host1'), 'forbidden_character'),
    ('NUL', cast(b'compute\x00host1'), 'forbidden_character'),
    ('escape char', cast(b'compute\x1b[2Jhost1'), 'forbidden_character'),
    ('newline', cast(b'compute.host1\nforged log line'),
     'forbidden_character'),
    ('DEL', cast(b'compute\x7f'), 'forbidden_character'),
    ('space', cast(b'compute host1'), 'forbidden_character'),
    ('UTF-8', cast('compute.h\u00f4st1'.encode()), 'non_ascii_topic'),
    ('not UTF-8', cast(b'compute.\xff\xfe'), 'non_ascii_topic'),
    ('dot dot', cast('..'), 'dot_dot_in_topic'),
    ('dot dot inside', cast('compute..host1'), 'dot_dot_in_topic'),
    ('dot dot in fanout', cast('fanout~..'), 'dot_dot_in_topic'),
]


@pytest.mark.parametrize('frames, reason', [case[1:] for case in HOSTILE],
                         ids=[case[0] for case in HOSTILE])
def test_hostile_message_is_refused_and_counted(ctx, receiver, frames,
                                                reason):
    support.close_all(*assert_refused(ctx, receiver, frames, reason))


def test_topic_whose_socket_path_is_too_long(ctx, receiver):
    longest = 'x' * max_key_length(receiver)
    support.close_all(*assert_refused(ctx, receiver, cast(longest + 'y'),
                                      'topic_too_long'))
    # The boundary: a path of exactly 107 bytes still works.
    consumer = pull(ctx, receiver, longest)
    frames = cast(longest)
    out = support.sender(ctx, receiver)
    out.send_multipart(frames)
    assert recv(consumer) == frames
    assert len(receiver.path(longest).encode()) == 107
    support.close_all(consumer, out)


def test_fanout_key_length_counts_not_the_whole_topic(ctx, receiver):
    room = max_key_length(receiver) - len('fanout~')
    support.close_all(*assert_refused(
        ctx, receiver, cast('fanout~' + 'x' * (room + 1) + '.h'),
        'topic_too_long'))
    # Only the key names a file: a long host part after the dot is fine.
    listener = ctx.socket(zmq.SUB)
    listener.setsockopt(zmq.SUBSCRIBE, b'')
    listener.connect(receiver.outlet('fanout~ok'))
    frames = cast('fanout~ok.' + 'h' * 500)
    out = support.sender(ctx, receiver)
    out.send_multipart(frames)
    assert recv(listener) == frames
    support.close_all(listener, out)


# -- size --


def test_oversized_multipart_message_is_rejected(ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'max_message_size': 1000}})
    head = cast('compute.host1', b'')
    # Each of the 5 frames counts wire.FRAME_COST beside its content.
    room = 1000 - sum(map(len, head)) - 5 * wire.FRAME_COST
    # Every frame fits, the whole does not.
    too_big = head[:3] + [b'a' * (room // 2), b'b' * (room - room // 2 + 1)]
    assert all(len(f) < 1000 for f in too_big)
    out, consumer = assert_refused(ctx, daemon, too_big, 'oversized_message')
    # Exactly the limit is accepted, byte for byte.
    exact = head[:3] + [b'a' * (room // 2), b'b' * (room - room // 2)]
    assert wire.message_cost(exact) == 1000
    out.send_multipart(exact)
    assert recv(consumer) == exact
    support.close_all(out, consumer)


def test_single_frame_over_the_limit_disconnects_only_its_sender(
        ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'max_message_size': 1000}})
    consumer = pull(ctx, daemon, 'compute.host1')
    hostile = ctx.socket(zmq.PUSH)
    hostile.setsockopt(zmq.LINGER, 0)
    events = hostile.get_monitor_socket(zmq.EVENT_CONNECTED |
                                        zmq.EVENT_DISCONNECTED)
    hostile.connect(daemon.endpoint)
    hostile.send_multipart(cast('compute.host1', b'x' * 1001))
    seen = []
    while zmq.EVENT_DISCONNECTED not in seen:
        assert events.poll(support.TIMEOUT * 1000), (
            'the receiver never cut the sender: %s' % seen)
        seen.append(monitor.recv_monitor_message(events)['event'])
    hostile.disable_monitor()
    hostile.close()
    assert daemon.proc.poll() is None
    # libzmq refused it before the receiver saw anything.
    stats = daemon.stats()
    assert stats['received'] == 0
    frames = cast('compute.host1', b'from a new sender')
    out = support.sender(ctx, daemon)
    out.send_multipart(frames)
    assert recv(consumer) == frames
    assert_balanced(daemon.stats())
    support.close_all(consumer, events, out)


# -- number of topics --


def test_topic_beyond_max_topics_is_rejected_while_others_flow(
        ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'max_topics': 3}})
    out = support.sender(ctx, daemon)
    keys = ['one.host1', 'two.host1', 'three.host1']
    consumers = [pull(ctx, daemon, key) for key in keys]
    for key, consumer in zip(keys, consumers):
        frames = cast(key)
        out.send_multipart(frames)
        assert recv(consumer) == frames
    out.send_multipart(cast('four.host1'))
    stats = daemon.wait_stats(lambda s: s['received'] == 4)
    assert stats['rejected'] == {'too_many_topics': 1}
    assert stats['outlets'] == 3
    assert 'four.host1' not in stats['topics']
    assert not os.path.exists(daemon.path('four.host1'))
    for key, consumer in zip(keys, consumers):
        frames = cast(key, b'still here')
        out.send_multipart(frames)
        assert recv(consumer) == frames
    assert_balanced(daemon.stats())
    support.close_all(out, *consumers)


def test_idle_outlet_is_reaped_and_made_again_on_demand(ctx, daemons,
                                                       short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'idle_timeout': 0.5}})
    consumer = pull(ctx, daemon, 'idle.host1')
    out = support.sender(ctx, daemon)
    out.send_multipart(cast('idle.host1', b'1'))
    assert recv(consumer)[3] == b'1'
    path = daemon.path('idle.host1')
    assert os.path.exists(path)
    # The consumer leaves and the backlog is empty: nothing needs the file.
    consumer.close(linger=0)
    stats = daemon.wait_stats(lambda s: s['outlets_reaped'] == 1, timeout=5)
    assert stats['outlets'] == 0
    assert not os.path.exists(path)
    assert os.listdir(daemon.ipc_dir) != []  # lock and control remain

    consumer = pull(ctx, daemon, 'idle.host1')
    out.send_multipart(cast('idle.host1', b'2'))
    assert recv(consumer)[3] == b'2'
    stats = daemon.stats()
    assert stats['outlets_created'] == 2
    assert os.path.exists(path)
    assert_balanced(stats)
    support.close_all(consumer, out)


def test_outlet_with_a_connected_consumer_is_not_reaped(ctx, daemons,
                                                        short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'idle_timeout': 0.5}})
    out = support.sender(ctx, daemon)
    out.send_multipart(cast('kept.host1', b'1'))
    # Connected once the outlet exists: a consumer that connects in the
    # instant between the outlet's bind and its monitor is not counted
    # (see the report), which is not what this test is about.
    daemon.wait_stats(lambda s: 'kept.host1' in s['topics'])
    kept = pull(ctx, daemon, 'kept.host1')
    assert recv(kept)[3] == b'1'
    daemon.wait_stats(
        lambda s: s['topics']['kept.host1']['consumers'] == 1)
    # Opened later, left sooner: when it is reaped, the kept one has been
    # idle at least as long and would have gone in the same pass.
    passing = pull(ctx, daemon, 'passing.host1')
    out.send_multipart(cast('passing.host1'))
    recv(passing)
    passing.close(linger=0)
    stats = daemon.wait_stats(lambda s: s['outlets_reaped'] == 1, timeout=5)
    assert 'passing.host1' not in stats['topics']
    assert stats['topics']['kept.host1']['consumers'] == 1
    assert os.path.exists(daemon.path('kept.host1'))
    out.send_multipart(cast('kept.host1', b'2'))
    assert recv(kept)[3] == b'2'
    assert daemon.stats()['outlets_created'] == 2
    support.close_all(out, kept, passing)


def _flood(daemon, out, topics, max_files):
    """Send one message to each of *topics*, counting files as it goes."""
    start = daemon.stats()['received']

    def files_within_bounds():
        files = sorted(os.listdir(daemon.ipc_dir))
        assert len(files) <= max_files, files

    for i, topic in enumerate(topics, 1):
        out.send_multipart(cast(topic))
        if i % 100 == 0:
            files_within_bounds()

    def all_read(stats):
        files_within_bounds()
        return stats['received'] - start == len(topics)

    return daemon.wait_stats(all_read)


def test_flood_of_distinct_topics_is_capped(ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'max_topics': 50,
                                                  'idle_timeout': 0.5}})
    steady = pull(ctx, daemon, 'steady.host1')
    out = support.sender(ctx, daemon)
    assert_still_forwards(out, steady, b'before', 'steady.host1')
    stats = _flood(daemon, out, ['flood%d.host1' % i for i in range(2000)],
                   max_files=50 + 2)
    assert daemon.proc.poll() is None
    assert stats['outlets'] == 50
    # 49 flood topics got an outlet (holding their message for a consumer
    # that may still come); every other one was refused.
    assert stats['rejected'] == {'too_many_topics': 2000 - 49}
    assert stats['queued'] == 49
    assert_balanced(stats)
    assert_still_forwards(out, steady, b'after', 'steady.host1')
    assert len(os.listdir(daemon.ipc_dir)) <= 52
    support.close_all(steady, out)


def test_outlets_of_a_fanout_flood_are_reaped_and_make_room(ctx, daemons,
                                                           short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {
        'max_topics': 50, 'idle_timeout': 0.5, 'join_window': 0}})
    out = support.sender(ctx, daemon)
    stats = _flood(daemon, out,
                   ['fanout~flood%d.host1' % i for i in range(2000)],
                   max_files=50 + 2)
    assert stats['outlets'] == 50
    assert stats['dropped'] == {'no_subscriber': 50}
    assert stats['rejected'] == {'too_many_topics': 1950}
    # Nobody listens and nothing waits: the flood's outlets go.
    daemon.wait_stats(lambda s: s['outlets'] == 0, timeout=5)
    assert len(os.listdir(daemon.ipc_dir)) == 2
    consumer = pull(ctx, daemon, 'newcomer.host1')
    frames = cast('newcomer.host1')
    out.send_multipart(frames)
    assert recv(consumer) == frames
    assert_balanced(daemon.stats())
    support.close_all(out, consumer)


def test_push_flood_does_not_lock_new_topics_out_for_ever(ctx, daemons,
                                                          short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'max_topics': 20,
                                                  'idle_timeout': 0.5}})
    out = support.sender(ctx, daemon)
    _flood(daemon, out, ['junk%d.host1' % i for i in range(20)],
           max_files=22)
    # Several idle timeouts and housekeeping ticks later, some room is made.
    daemon.wait_stats(lambda s: s['outlets'] < 20, timeout=3)
    caller = ctx.socket(zmq.SUB)
    caller.setsockopt(zmq.SUBSCRIBE, b'a' * 32)
    caller.connect(daemon.outlet('zmq_replies.testhost'))
    frames = cast('zmq_replies.testhost', msg_id=b'a' * 32)
    out.send_multipart(frames)
    assert recv(caller) == frames
    support.close_all(out, caller)


# -- random input --

#: Messages of up to 8 frames fit or not at random (each frame costs
#: FRAME_COST beside its content).
FUZZ_MAX_SIZE = 200 + 8 * wire.FRAME_COST
#: Fewer than some of the random messages have.
FUZZ_MAX_FRAMES = 8
STEADY = b'steady.fuzz'
TOPICS = st.sampled_from([
    STEADY, b'fanout~fuzz.h', b'fanout~', b'zmq_replies.fuzz', b'fuzz.h',
    b'', b'..', b'a/b', b'a\x00b', b'\xff', b'x' * 120])


@st.composite
def messages(draw):
    # libzmq cannot send a message of no frames: one is the least.
    frames = draw(st.lists(st.binary(max_size=64), min_size=1,
                           max_size=FUZZ_MAX_FRAMES + 3))
    if len(frames) >= 2 and draw(st.booleans()):
        frames[1] = draw(TOPICS)
    return frames


@pytest.fixture(scope='module')
def fuzzed():
    """One receiver for every random message, with a steady consumer."""
    directory = tempfile.mkdtemp(prefix='zr', dir='/tmp')
    daemon = support.Daemon(directory, {'zmq_receiver': {
        # Small enough that random messages reach it, larger than any one
        # frame (64 bytes), so that libzmq never cuts the sender.
        'max_message_size': FUZZ_MAX_SIZE,
        'max_frames': FUZZ_MAX_FRAMES,
        'join_window': 0.2,
    }})
    context = zmq.Context()
    try:
        daemon.start()
        steady = context.socket(zmq.PULL)
        steady.connect(daemon.outlet(STEADY.decode()))
        out = support.sender(context, daemon)
        yield {'daemon': daemon, 'out': out, 'steady': steady, 'sent': 0}
    finally:
        daemon.kill()
        context.destroy(linger=0)
        shutil.rmtree(directory, ignore_errors=True)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(frames=messages())
def test_random_frames_never_hurt_the_receiver(fuzzed, frames):
    daemon, out, steady = fuzzed['daemon'], fuzzed['out'], fuzzed['steady']
    out.send_multipart(frames)
    normal = cast(STEADY, b'normal %d' % fuzzed['sent'])
    out.send_multipart(normal)
    fuzzed['sent'] += 2
    # A random message that is a valid cast to the steady topic arrives
    # first, unchanged; anything else must not arrive at all.
    if (2 <= len(frames) <= FUZZ_MAX_FRAMES and frames[1] == STEADY and
            wire.message_cost(frames) <= FUZZ_MAX_SIZE):
        assert recv(steady) == frames
    assert recv(steady) == normal
    stats = daemon.wait_stats(lambda s: s['received'] == fuzzed['sent'])
    assert_balanced(stats)
    assert daemon.proc.poll() is None


def test_after_random_frames_the_receiver_is_whole(ctx, fuzzed):
    daemon = fuzzed['daemon']
    stats = daemon.wait_stats(lambda s: s['received'] == fuzzed['sent'])
    assert_balanced(stats)
    # Fanout messages wait 0.2 s at most; the rest are final already.
    stats = daemon.wait_stats(
        lambda s: all(t['kind'] == 'push' or not t['backlog']
                      for t in s['topics'].values()))
    assert_balanced(stats)
    assert daemon.proc.poll() is None
    frames = cast(STEADY, b'last')
    out = support.sender(ctx, daemon)
    out.send_multipart(frames)
    assert recv(fuzzed['steady']) == frames
    assert set(os.listdir(daemon.ipc_dir)) >= NOT_OUTLETS
    support.close_all(out)
