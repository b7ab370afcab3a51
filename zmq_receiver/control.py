"""The control socket's protocol, shared by the receiver and the admin tool.

A client (the admin tool: REQ; anyone: DEALER) sends one short request
word to the unix socket :func:`path` names in ``rpc_zmq_ipc_dir``; the
receiver's ROUTER answers with one JSON document. This module holds only
the format and its limits, so that the admin tool needs nothing of the
receiver's loop to speak it.
"""

import json
import os

#: The control socket's file; not a ``zmq_topic_`` name, so no topic hits it.
NAME = '.zmq-receiver-control'
#: The one request there is: the counters, as :meth:`Receiver.snapshot`.
STATS = b'stats'
#: Largest control frame: libzmq disconnects a peer that sends a larger
#: one. A request is a word.
MAX_FRAME = 256
#: Frames of a control request as the ROUTER socket reads it: the peer's
#: identity, REQ's empty delimiter, the request.
MAX_FRAMES = 3


def path(ipc_dir):
    """Path of the receiver's control socket in *ipc_dir*."""
    return os.path.join(ipc_dir, NAME)


def split_request(frames):
    """``(envelope, request)`` of what a ROUTER read, or None when it is
    not a request: ``[identity, request]`` from a DEALER, ``[identity,
    b'', request]`` from REQ. The envelope goes back in front of the
    reply."""
    if not 2 <= len(frames) <= MAX_FRAMES or (
            len(frames) == 3 and frames[1]):
        return None
    return frames[:-1], frames[-1]


def encode(document):
    """A reply: *document* as JSON."""
    return json.dumps(document).encode()


def unknown(request):
    """The reply to a request that is not :data:`STATS`."""
    return encode({'error': 'unknown request %r; try stats' % request[:64]})


def decode(reply):
    """The document of a reply."""
    return json.loads(reply)
