"""From a topic frame to an outlet key, or to the reason it is refused.

Pure functions of their arguments: no sockets, no files, no clock. The rules
are PROTOCOL.md section 3; the refusals are the old receiver's defects of
section 4 (a topic becomes part of a file name, so it is checked as one).
"""

import collections
import enum


class Kind(enum.Enum):
    """The kind of socket an outlet binds."""

    #: Round-robin to the connected PULL consumers (ordinary topics).
    PUSH = 'push'
    #: Published to every matching SUB (fanout and replies).
    PUB = 'pub'


#: Where a topic goes: the outlet key and the kind of its socket.
Route = collections.namedtuple('Route', ['key', 'kind'])

#: ``sun_path`` holds 108 bytes, the last of which is the terminating NUL.
UNIX_PATH_MAX = 107

SOCKET_PREFIX = 'zmq_topic_'
FANOUT_PREFIX = b'fanout~'
REPLIES_PREFIX = b'zmq_replies'

# Reasons a message is refused before it reaches an outlet. They are counter
# labels, so they never change once released.
SHORT_MESSAGE = 'short_message'
EMPTY_TOPIC = 'empty_topic'
NON_ASCII_TOPIC = 'non_ascii_topic'
FORBIDDEN_CHARACTER = 'forbidden_character'
DOT_DOT = 'dot_dot_in_topic'
TOPIC_TOO_LONG = 'topic_too_long'

REJECT_REASONS = (SHORT_MESSAGE, EMPTY_TOPIC, NON_ASCII_TOPIC,
                  FORBIDDEN_CHARACTER, DOT_DOT, TOPIC_TOO_LONG)

# Printable ASCII without space, '/' and '\\': what may stand in a file name
# under the IPC directory without escaping it or confusing an operator.
_ALLOWED = bytes(b for b in range(0x21, 0x7f) if b not in b'/\\')


def socket_path(ipc_dir, key):
    """Path of the IPC socket file of outlet *key* (a str) in *ipc_dir*."""
    return '%s/%s%s' % (ipc_dir, SOCKET_PREFIX, key)


def endpoint(ipc_dir, key):
    """ZeroMQ endpoint of outlet *key* in *ipc_dir*."""
    return 'ipc://' + socket_path(ipc_dir, key)


def max_key_length(ipc_dir):
    """Longest key whose socket path still fits a unix socket address."""
    return UNIX_PATH_MAX - len(socket_path(ipc_dir, '').encode())


def route(topic, max_key_len):
    """Route the topic frame *topic* (bytes).

    Returns a :data:`Route` whose key is a str, or the reason (a str from
    :data:`REJECT_REASONS`) why no outlet may be made for it.
    """
    if not topic:
        return EMPTY_TOPIC
    bad = topic.translate(None, _ALLOWED)
    if bad:
        if max(bad) > 0x7f:
            return NON_ASCII_TOPIC
        return FORBIDDEN_CHARACTER
    if b'..' in topic:
        return DOT_DOT
    if topic.startswith(FANOUT_PREFIX):
        key = topic.split(b'.', 1)[0]
        if len(key) == len(FANOUT_PREFIX):
            return EMPTY_TOPIC
        kind = Kind.PUB
    elif topic.startswith(REPLIES_PREFIX):
        key, kind = topic, Kind.PUB
    else:
        key, kind = topic, Kind.PUSH
    if len(key) > max_key_len:
        return TOPIC_TOO_LONG
    return Route(key.decode('ascii'), kind)
