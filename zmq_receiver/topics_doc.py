"""``/topics``: which topics have consumers on this host, for the cloud.

One JSON document on the receiver's HTTP endpoint (see
:mod:`zmq_receiver.exporter`), read-only: this host's ``rpc_zmq_host``,
the project's ``rpc_zmq_port``, and every open outlet with its consumer
count and kind. ``oslo-messaging-zmq-admin ring learn|diff`` collect it
from many hosts (:mod:`zmq_receiver.admin.learn`).

It is built in the HTTP thread from the snapshot the loop already
publishes once per tick (:class:`exporter.LoopState`), never in the loop,
and only for the addresses of ``[zmq_receiver] topics_allowed_networks``:
the document maps which service runs where, which an attacker would like
to know, so by default only this host (loopback) may read it.
"""

import json

from zmq_receiver import __version__
from zmq_receiver import access

FORMAT = 1
#: The most ``ring learn`` reads of one document: ample for max_topics
#: outlets (about 100 bytes each), and a bound on what a peer can send.
MAX_BYTES = 16 * 1024 * 1024
FANOUT = 'fanout~'
REPLIES = 'zmq_replies'


def shape(key, host):
    """How a legacy service consumes outlet *key* on *host*: ``fanout``,
    ``reply``, ``directed`` (``topic.host``) or ``bare``; and the bare
    topic a ring lists for it (None for replies)."""
    if key.startswith(FANOUT):
        return 'fanout', key[len(FANOUT):]
    if key.startswith(REPLIES):
        return 'reply', None
    suffix = '.' + host
    if key.endswith(suffix) and len(key) > len(suffix):
        return 'directed', key[:-len(suffix)]
    return 'bare', key


def document(snapshot, host, port, ready):
    """The ``/topics`` document (a dict) for the loop's *snapshot*."""
    topics = {}
    for key, stats in (snapshot or {}).get('topics', {}).items():
        kind, bare = shape(key, host)
        topics[key] = {'consumers': stats['consumers'], 'kind': kind,
                       'socket': stats['kind'], 'topic': bare}
    return {'format': FORMAT, 'host': host, 'port': port, 'ready': ready,
            'version': __version__, 'topics': topics}


class TopicsApp:
    """The WSGI application of ``/topics`` for one receiver.

    :attr:`port` is set once the receiver has bound (``rpc_zmq_port`` may
    be 0: a free port).
    """

    def __init__(self, state, host, port, networks):
        self.state = state
        self.host = host
        self.port = port
        self.networks = tuple(networks)
        self._last = (None, None)

    def body(self):
        """The document as bytes, built once per published snapshot."""
        snap = self.state.snapshot
        last_snap, last_body = self._last
        if snap is not None and snap is last_snap:
            return last_body
        body = json.dumps(document(snap, self.host, self.port,
                                   self.state.ready),
                          indent=1, sort_keys=True).encode() + b'\n'
        # One tuple store: a concurrent scrape sees the old pair or the new.
        self._last = (snap, body)
        return body

    def __call__(self, environ, start_response):
        peer = environ.get('REMOTE_ADDR', '')
        if not access.allowed(peer, self.networks):
            start_response('403 Forbidden',
                           [('Content-Type', 'text/plain; charset=utf-8')])
            return [('%s may not read /topics: add its network to '
                     '[zmq_receiver] topics_allowed_networks\n'
                     % peer).encode()]
        start_response('200 OK', [('Content-Type', 'application/json')])
        return [self.body()]
