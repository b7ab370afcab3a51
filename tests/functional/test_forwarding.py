"""PROTOCOL.md sections 2 and 3 through the real daemon, byte for byte."""

import pytest
import zmq

from tests import support
from tests.support import pull, recv, sub
# Every test here runs on the compiled and the pure-Python path.
from tests.support import daemons_on_both_paths as daemons  # noqa: F401

# The captured vectors of PROTOCOL.md section 2.
CAST = [
    b'0',
    b'compute.host1',
    b'cast',
    b'["{\\"project_id\\": \\"p1\\", \\"user\\": \\"u1\\"}", {"args": {"a": 1, '
    b'"b": "x"}, "method": "do_thing", "version": "3.0"}]',
]
CALL = [
    b'0',
    b'compute.host1',
    b'cast',
    b'["{\\"user\\": \\"u1\\", \\"project_id\\": \\"p1\\"}", {"method": '
    b'"-reply", "args": {"msg_id": "ab1fb67af25447328e916488de4373c4", '
    b'"topic": "zmq_replies.callerhost", "msg": ["{\\"user\\": \\"u1\\", '
    b'\\"project_id\\": \\"p1\\"}", {"method": "get_thing", "args": {"a": '
    b'1}}]}}]',
]
REPLY = [
    b'2bb283a2578f4ec89a8d5f0a14b175f7',
    b'zmq_replies.callerhost',
    b'cast',
    b'["{\\"project_id\\": \\"p1\\", \\"user\\": \\"u1\\"}", {"args": '
    b'{"msg_id": "2bb283a2578f4ec89a8d5f0a14b175f7", "response": '
    b'[[{"answer": 42}]]}, "method": "-process_reply"}]',
]
NOTIFICATION_V2 = [
    b'0',
    b'notifications-info.host1',
    b'impl_zmq_v2',
    b'{"project_id": "p1", "user": "u1"}',
    b'oslo.message',
    b'{"priority": "INFO", "event_type": "compute.instance.create.end", '
    b'"publisher_id": "compute.host1", "payload": {"k": "v"}, '
    b'"message_id": "m1", "timestamp": "t"}',
    b'oslo.version',
    b'2.0',
]


def test_cast_vector_reaches_pull_consumer_unchanged(ctx, receiver):
    consumer = pull(ctx, receiver, 'compute.host1')
    out = support.sender(ctx, receiver)
    out.send_multipart(CAST)
    assert recv(consumer) == CAST
    support.close_all(consumer, out)


def test_v2_notification_vector_reaches_pull_consumer_unchanged(ctx,
                                                                 receiver):
    consumer = pull(ctx, receiver, 'notifications-info.host1')
    out = support.sender(ctx, receiver)
    out.send_multipart(NOTIFICATION_V2)
    assert recv(consumer) == NOTIFICATION_V2
    support.close_all(consumer, out)


def test_fanout_goes_to_every_subscriber_of_the_cut_key(ctx, receiver):
    subs = [sub(ctx, receiver, 'fanout~compute') for _ in range(3)]
    out = support.sender(ctx, receiver)
    # The outlet exists from the first message on; the subscribers join it.
    out.send_multipart(support.cast('fanout~compute.host9', b'opening'))
    receiver.wait_stats(
        lambda s: s['topics'].get('fanout~compute', {}).get('consumers') == 3)
    frames = support.cast('fanout~compute.host1')
    out.send_multipart(frames)
    for s in subs:
        got = recv(s)
        if got[3] == b'opening':  # the first joiner also had that one
            got = recv(s)
        assert got == frames  # frame 1 uncut
    support.close_all(*subs, out)


def test_fanout_waits_for_its_first_subscriber(ctx, receiver):
    out = support.sender(ctx, receiver)
    frames = support.cast('fanout~network.host1')
    out.send_multipart(frames)
    receiver.wait_stats(lambda s: 'fanout~network' in s['topics'])
    late = sub(ctx, receiver, 'fanout~network')
    assert recv(late) == frames
    assert receiver.stats()['dropped'] == {}
    support.close_all(out, late)


def test_reply_vector_reaches_only_the_matching_subscriber(ctx, receiver):
    key = 'zmq_replies.callerhost'
    other_id = b'ffffffffffffffffffffffffffffffff'
    waiting = sub(ctx, receiver, key, REPLY[0])
    other = sub(ctx, receiver, key, other_id)
    out = support.sender(ctx, receiver)
    # The outlet is made by the first reply; it waits for its subscriber.
    out.send_multipart(REPLY)
    assert recv(waiting) == REPLY
    receiver.wait_stats(
        lambda s: s['topics'].get(key, {}).get('consumers') == 2)
    second = [other_id] + REPLY[1:]
    out.send_multipart(second)
    assert recv(other) == second
    assert support.nothing_arrives(waiting, 0.3)
    assert receiver.stats()['forwarded'] == 2
    support.close_all(waiting, other, out)


def test_host_part_of_a_plain_topic_is_never_stripped(ctx, receiver):
    host1 = pull(ctx, receiver, 'compute.host1')
    host2 = pull(ctx, receiver, 'compute.host2')
    bare = pull(ctx, receiver, 'compute')
    out = support.sender(ctx, receiver)
    for topic in ('compute.host1', 'compute.host2', 'compute'):
        out.send_multipart(support.cast(topic))
    assert recv(host1)[1] == b'compute.host1'
    assert recv(host2)[1] == b'compute.host2'
    assert recv(bare)[1] == b'compute'
    support.close_all(host1, host2, bare, out)


def test_call_round_trip_like_the_legacy_driver(ctx, receiver):
    # The caller subscribes to its msg_id before it sends the request.
    msg_id = b'ab1fb67af25447328e916488de4373c4'
    caller = sub(ctx, receiver, 'zmq_replies.callerhost', msg_id)
    bystander = sub(ctx, receiver, 'zmq_replies.callerhost',
                    b'00000000000000000000000000000000')
    server = pull(ctx, receiver, 'compute.host1')
    out = support.sender(ctx, receiver)
    out.send_multipart(CALL)
    request = recv(server)
    assert request == CALL
    # The server answers through the caller's receiver (here the same one).
    reply = [msg_id, b'zmq_replies.callerhost', b'cast',
             b'["{}", {"args": {"msg_id": "%s", "response": [[42]]}, '
             b'"method": "-process_reply"}]' % msg_id]
    answer = support.sender(ctx, receiver)
    answer.send_multipart(reply)
    assert recv(caller) == reply
    assert support.nothing_arrives(bystander, 0.3)
    support.close_all(caller, bystander, server, out, answer)


def test_order_is_kept_per_key(ctx, receiver):
    out = support.sender(ctx, receiver)
    for i in range(500):
        out.send_multipart(support.cast('order.host1', b'%d' % i))
    consumer = pull(ctx, receiver, 'order.host1')
    got = [int(recv(consumer)[3]) for _ in range(500)]
    assert got == list(range(500))
    support.close_all(out, consumer)


def test_two_pull_consumers_share_one_key(ctx, receiver):
    a = pull(ctx, receiver, 'scheduler.host1')
    b = pull(ctx, receiver, 'scheduler.host1')
    receiver_stats = receiver.wait_stats  # consumers counted by the monitor
    out = support.sender(ctx, receiver)
    out.send_multipart(support.cast('scheduler.host1', b'first'))
    receiver_stats(lambda s: s['topics'].get('scheduler.host1', {}).get(
        'consumers') == 2)
    for i in range(100):
        out.send_multipart(support.cast('scheduler.host1', b'%d' % i))
    poller = zmq.Poller()
    poller.register(a, zmq.POLLIN)
    poller.register(b, zmq.POLLIN)
    counts = {a: 0, b: 0}
    while sum(counts.values()) < 101:
        ready = dict(poller.poll(support.TIMEOUT * 1000))
        assert ready, 'messages missing: got %s' % counts
        for sock in ready:
            sock.recv_multipart()
            counts[sock] += 1
    assert counts[a] > 10 and counts[b] > 10, counts
    support.close_all(a, b, out)


@pytest.mark.parametrize('address, connect', [
    ('*', 'tcp://127.0.0.1:%d'),
    ('lo', 'tcp://127.0.0.1:%d'),
    ('127.0.0.1', 'tcp://127.0.0.1:%d'),
    pytest.param('::1', 'tcp://[::1]:%d', marks=pytest.mark.skipif(
        not support.ipv6_loopback(), reason='no IPv6 loopback here')),
    pytest.param('*', 'tcp://[::1]:%d', marks=pytest.mark.skipif(
        not support.ipv6_loopback(), reason='no IPv6 loopback here')),
])
def test_every_kind_of_bind_address_forwards(ctx, daemons, short_dir,
                                             address, connect):
    """``*``, an interface name, an IPv4 and an IPv6 literal (PROTOCOL.md
    section 5); ``*`` takes IPv6 peers too."""
    daemon = daemons(short_dir, {'DEFAULT': {
        'rpc_zmq_bind_address': address}})
    consumer = pull(ctx, daemon, 'compute.host1')
    out = ctx.socket(zmq.PUSH)
    if connect.startswith('tcp://['):
        out.setsockopt(zmq.IPV6, 1)
    out.connect(connect % daemon.port)
    frames = support.cast('compute.host1')
    out.send_multipart(frames)
    assert recv(consumer) == frames
    support.close_all(consumer, out)


def test_the_log_names_the_forwarding_loop(receiver, request):
    if request.node.callspec.params['daemons'] == 'compiled':
        assert 'Forwarding loop: compiled (zmq_receiver._wire)' in \
            receiver.log()
    else:
        assert ('Forwarding loop: pure Python, at about three times the CPU '
                'per message, because ZMQ_RECEIVER_PURE_PYTHON is set'
                in receiver.log())
