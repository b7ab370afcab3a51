"""PROTOCOL.md section 3 (topic to outlet) and the refusals of section 4.

``routing.route`` is a pure function, so it is tested table by table, at the
exact unix-socket-path boundary, and with hypothesis over arbitrary bytes.
One test binds real IPC sockets at that boundary, so that the limit the
code assumes is the limit the kernel enforces.
"""

import os

import hypothesis
from hypothesis import strategies as st
import pytest
import zmq

from zmq_receiver import routing
from zmq_receiver.routing import Kind, Route

# A typical deployment directory; its limit leaves room for every row below.
IPC_DIR = '/var/run/openstack'
MAX = routing.max_key_length(IPC_DIR)

ACCEPTED = [
    # (topic, key, kind): PROTOCOL.md section 3, in its order.
    # 1. fanout~: PUB, cut at the first dot.
    (b'fanout~compute.host1', 'fanout~compute', Kind.PUB),
    (b'fanout~compute', 'fanout~compute', Kind.PUB),
    (b'fanout~cells.intercell.host1', 'fanout~cells', Kind.PUB),
    (b'fanout~q-agent-notifier-port-update.net1',
     'fanout~q-agent-notifier-port-update', Kind.PUB),
    (b'fanout~compute.', 'fanout~compute', Kind.PUB),
    # 2. zmq_replies: PUB, the whole topic.
    (b'zmq_replies.callerhost', 'zmq_replies.callerhost', Kind.PUB),
    (b'zmq_replies.host1.example.org', 'zmq_replies.host1.example.org',
     Kind.PUB),
    (b'zmq_replies', 'zmq_replies', Kind.PUB),
    # 3. anything else: PUSH, the whole topic, host part included.
    (b'compute.host1', 'compute.host1', Kind.PUSH),
    (b'compute.host2', 'compute.host2', Kind.PUSH),
    (b'compute', 'compute', Kind.PUSH),
    (b'conductor.host1.example.org', 'conductor.host1.example.org',
     Kind.PUSH),
    (b'notifications-info.host1', 'notifications-info.host1', Kind.PUSH),
    (b'notifications.info', 'notifications.info', Kind.PUSH),
    (b'q-plugin', 'q-plugin', Kind.PUSH),
    (b'cert.host_1', 'cert.host_1', Kind.PUSH),
    # Only a prefix at the very start decides: these are ordinary topics.
    (b'compute.fanout~x', 'compute.fanout~x', Kind.PUSH),
    (b'xfanout~compute.host1', 'xfanout~compute.host1', Kind.PUSH),
    (b'my_zmq_replies.host1', 'my_zmq_replies.host1', Kind.PUSH),
    (b'fanout.compute', 'fanout.compute', Kind.PUSH),
    # Printable punctuation that is harmless in a file name.
    (b'a-b_c.d~e:f@g+h=i', 'a-b_c.d~e:f@g+h=i', Kind.PUSH),
    (b'.', '.', Kind.PUSH),
]


@pytest.mark.parametrize('topic, key, kind', ACCEPTED,
                         ids=[row[0].decode() for row in ACCEPTED])
def test_route_accepts(topic, key, kind):
    assert routing.route(topic, MAX) == Route(key, kind)


def test_route_key_is_a_str():
    # The key names a file and a metrics label: str, not bytes.
    assert type(routing.route(b'compute.host1', MAX).key) is str


REJECTED = [
    # (id, topic, reason)
    ('empty', b'', routing.EMPTY_TOPIC),
    ('slash', b'compute/host1', routing.FORBIDDEN_CHARACTER),
    ('leading-slash', b'/etc/passwd', routing.FORBIDDEN_CHARACTER),
    ('backslash', b'compute\\host1', routing.FORBIDDEN_CHARACTER),
    ('nul', b'compute\x00host1', routing.FORBIDDEN_CHARACTER),
    ('trailing-nul', b'compute.host1\x00', routing.FORBIDDEN_CHARACTER),
    ('bell', b'compute\x07', routing.FORBIDDEN_CHARACTER),
    ('escape', b'\x1b[31mcompute', routing.FORBIDDEN_CHARACTER),
    ('del', b'compute\x7f', routing.FORBIDDEN_CHARACTER),
    ('carriage-return', b'compute\r', routing.FORBIDDEN_CHARACTER),
    ('space', b'compute host1', routing.FORBIDDEN_CHARACTER),
    ('tab', b'compute\thost1', routing.FORBIDDEN_CHARACTER),
    ('newline', b'compute\nhost1', routing.FORBIDDEN_CHARACTER),
    ('latin1', b'compute.h\xe9te', routing.NON_ASCII_TOPIC),
    ('utf8', 'compute.hôte'.encode(), routing.NON_ASCII_TOPIC),
    ('invalid-utf8', b'\xff\xfe', routing.NON_ASCII_TOPIC),
    ('high-byte-and-slash', b'a/\xff', routing.NON_ASCII_TOPIC),
    ('dot-dot', b'..', routing.DOT_DOT),
    ('dot-dot-inside', b'compute..host1', routing.DOT_DOT),
    ('dot-dot-fanout', b'fanout~compute.a..b', routing.DOT_DOT),
    ('dot-dot-replies', b'zmq_replies..', routing.DOT_DOT),
    ('fanout-alone', b'fanout~', routing.EMPTY_TOPIC),
    ('fanout-empty-base', b'fanout~.host1', routing.EMPTY_TOPIC),
    ('too-long', b'c' * (MAX + 1), routing.TOPIC_TOO_LONG),
    ('replies-too-long', b'zmq_replies.' + b'h' * MAX,
     routing.TOPIC_TOO_LONG),
]


@pytest.mark.parametrize('topic, reason', [row[1:] for row in REJECTED],
                         ids=[row[0] for row in REJECTED])
def test_route_rejects(topic, reason):
    assert routing.route(topic, MAX) == reason


def test_every_rejection_reason_is_a_stable_label():
    # Counter labels: each is listed once, and route() can return each one
    # except short_message, which the loop decides from the frame count.
    assert len(set(routing.REJECT_REASONS)) == len(routing.REJECT_REASONS)
    returned = {row[2] for row in REJECTED}
    assert returned == set(routing.REJECT_REASONS) - {routing.SHORT_MESSAGE}


@pytest.mark.parametrize('ipc_dir', ['/run/nova', IPC_DIR,
                                     '/tmp/' + 'd' * 60])
class TestPathLimit:
    """A key of max_key_length fits a socket address, one more does not."""

    def test_max_key_length_is_what_fits(self, ipc_dir):
        longest = routing.max_key_length(ipc_dir)
        path = routing.socket_path(ipc_dir, 'k' * longest)
        assert len(path.encode()) == routing.UNIX_PATH_MAX == 107

    def test_plain_topic_boundary(self, ipc_dir):
        longest = routing.max_key_length(ipc_dir)
        assert routing.route(b'k' * longest, longest) == Route(
            'k' * longest, Kind.PUSH)
        assert routing.route(b'k' * (longest + 1),
                             longest) == routing.TOPIC_TOO_LONG

    def test_replies_topic_boundary(self, ipc_dir):
        longest = routing.max_key_length(ipc_dir)
        fits = b'zmq_replies.' + b'h' * (longest - len(b'zmq_replies.'))
        assert routing.route(fits, longest) == Route(fits.decode(), Kind.PUB)
        assert routing.route(fits + b'h', longest) == routing.TOPIC_TOO_LONG

    def test_fanout_is_measured_by_its_cut_key(self, ipc_dir):
        # Only the cut key names a file: a long host part is harmless.
        longest = routing.max_key_length(ipc_dir)
        key = b'fanout~' + b'b' * (longest - len(b'fanout~'))
        topic = key + b'.' + b'h' * 300
        assert len(topic) > longest
        assert routing.route(topic, longest) == Route(key.decode(), Kind.PUB)
        assert routing.route(b'fanout~b' + topic[len(b'fanout~'):],
                             longest) == routing.TOPIC_TOO_LONG


def test_max_key_length_counts_bytes_not_characters():
    # A non-ASCII directory name takes more bytes than characters.
    assert routing.max_key_length('/run/é') == (
        routing.max_key_length('/run/e') - 1)


def test_kernel_takes_a_path_of_exactly_the_limit(ctx, short_dir):
    # The constant is the kernel's: the longest accepted key really binds,
    # and a path one byte longer really does not.
    longest = routing.max_key_length(short_dir)
    route = routing.route(b'k' * longest, longest)
    sock = ctx.socket(zmq.PUSH)
    sock.bind(routing.endpoint(short_dir, route.key))
    assert os.path.exists(routing.socket_path(short_dir, route.key))
    too_long = ctx.socket(zmq.PUSH)
    with pytest.raises(zmq.ZMQError):
        too_long.bind(routing.endpoint(short_dir, 'k' * (longest + 1)))
    sock.close()
    too_long.close()


# -- properties over arbitrary input ----------------------------------------

# Pieces that make real-looking topics, so that the search reaches the
# accepted branches and their boundaries, not only random rejections.
PIECES = [b'fanout~', b'zmq_replies', b'.', b'..', b'compute', b'host1',
          b'/', b'\\', b'\x00', b' ', b'\n', b'\xc3\xa9', b'~', b'-', b'_',
          b'k' * 40]
# Dotted names as services make them: prefix, service, host parts.
NAMES = st.text(alphabet='abcdefghijklmnopqrstuvwxyz0123456789-_',
                min_size=0, max_size=30)
DOTTED = st.tuples(
    st.sampled_from(['', 'fanout~', 'zmq_replies', 'zmq_replies.']),
    st.lists(NAMES, min_size=1, max_size=5).map('.'.join),
).map(lambda parts: ''.join(parts).encode())
# Lengths around the limits of the directories below (78 to 87 bytes).
NEAR_LIMIT = st.tuples(
    st.sampled_from([b'', b'fanout~', b'zmq_replies.']),
    st.integers(50, 110),
    st.sampled_from([b'', b'.host1']),
).map(lambda t: t[0] + b'k' * (t[1] - len(t[0])) + t[2])
TOPICS = st.one_of(
    DOTTED,
    NEAR_LIMIT,
    st.binary(max_size=200),
    st.lists(st.sampled_from(PIECES), max_size=12).map(b''.join),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
            max_size=150).map(str.encode),
)
IPC_DIRS = st.one_of(
    st.sampled_from(['/run/nova', IPC_DIR, '/tmp/zr1234']),
    st.text(alphabet='abcdefghij_-/', min_size=1, max_size=110).map(
        lambda s: '/' + s),
)


@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(topic=TOPICS, ipc_dir=IPC_DIRS)
def test_route_is_total_and_every_key_names_a_safe_socket(topic, ipc_dir):
    result = routing.route(topic, routing.max_key_length(ipc_dir))
    if not isinstance(result, Route):
        assert result in routing.REJECT_REASONS
        assert result != routing.SHORT_MESSAGE
        return
    key = result.key
    assert isinstance(key, str) and key
    encoded = key.encode('ascii')
    assert len(routing.socket_path(ipc_dir, key).encode()) <= 107
    # Nothing in the key can leave the directory or confuse a reader.
    assert '/' not in key and '\\' not in key and '..' not in key
    assert all(0x21 <= b <= 0x7e for b in encoded)
    # A prefix of the topic: the whole topic, or a fanout cut at a dot.
    assert topic.startswith(encoded)
    if encoded != topic:
        assert topic.startswith(b'fanout~')
        assert topic[len(encoded):len(encoded) + 1] == b'.'
        assert b'.' not in encoded
    assert result.kind == (
        Kind.PUB if topic.startswith((b'fanout~', b'zmq_replies'))
        else Kind.PUSH)


@hypothesis.given(topic=TOPICS, max_key_len=st.integers(-5, 300))
def test_route_never_raises_for_any_limit(topic, max_key_len):
    result = routing.route(topic, max_key_len)
    if isinstance(result, Route):
        assert len(result.key) <= max_key_len
    else:
        assert result in routing.REJECT_REASONS


@hypothesis.given(topic=TOPICS)
def test_a_longer_limit_never_refuses_what_a_shorter_one_accepts(topic):
    # The limit only ever adds topic_too_long; it changes no route.
    short = routing.route(topic, 40)
    if isinstance(short, Route):
        assert routing.route(topic, 107) == short
