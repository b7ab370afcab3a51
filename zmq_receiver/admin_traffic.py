"""``send`` and ``tap``: put a message on a path, and watch one.

``send`` writes a legacy cast (or fanout) as a service would, to a host's
receiver or to wherever the matchmaker says. ``tap`` connects to a local
outlet of the receiver and prints what arrives, decoded.

A tap on a fanout or reply outlet (PUB) is one more subscriber: it sees a
copy of everything and takes nothing from anyone. A tap on any other topic
(PUSH) is one more consumer among whom the receiver deals messages
round-robin: what it prints never reaches the real consumer.
"""

import ipaddress
import json
import os
import sys
import time

import zmq

from zmq_receiver import envelope
from zmq_receiver import errors
from zmq_receiver import matchmaker
from zmq_receiver import routing


def add_parsers(subparsers):
    send = subparsers.add_parser(
        'send', help='send a legacy cast or fanout to a topic',
        description='Send a legacy-format cast (or, with --fanout, a fanout) '
                    'to TOPIC: at --host\'s receiver (tcp://HOST:'
                    'rpc_zmq_port), at --endpoint, or, with neither, '
                    'wherever rpc_zmq_matchmaker says.')
    send.add_argument('topic', help='topic, e.g. compute or compute.host1')
    send.add_argument('--method', default='ping',
                      help='method name in the message (default: ping)')
    send.add_argument('--args', default='{}', metavar='JSON',
                      help='the method\'s arguments, a JSON object')
    send.add_argument('--context', default='{}', metavar='JSON',
                      help='the request context, a JSON object')
    send.add_argument('--rpc-version', metavar='VERSION',
                      help='the message\'s "version" (the RPC API version)')
    send.add_argument('--fanout', action='store_true',
                      help='send a fanout (fanout~TOPIC) instead of a cast')
    where = send.add_mutually_exclusive_group()
    where.add_argument('--host', help='the host whose receiver gets it')
    where.add_argument('--endpoint', metavar='tcp://HOST:PORT',
                       help='the receiver\'s endpoint, port included')
    send.add_argument('--port', type=int,
                      help='the receivers\' port (default: rpc_zmq_port)')
    send.add_argument('--timeout', type=float, default=5.0,
                      help='seconds to wait for a receiver to accept the '
                           'connection (default: 5)')

    tap = subparsers.add_parser(
        'tap', help='print what arrives at a local outlet',
        description='Connect to the receiver\'s local outlet for TOPIC and '
                    'print each message that arrives, decoded. On a fanout '
                    'or reply outlet it is a silent extra subscriber; on '
                    'any other outlet it is one more consumer and TAKES '
                    'messages away from the real one.')
    tap.add_argument('topic', help='topic or outlet key, e.g. compute.host1, '
                                   'fanout~compute, zmq_replies.host1')
    tap.add_argument('--count', type=int, metavar='N',
                     help='stop after N messages')
    tap.add_argument('--timeout', type=float, metavar='SECONDS',
                     help='stop after SECONDS; exit 1 if fewer than --count '
                          'messages came')
    tap.add_argument('--json', action='store_true',
                     help='one JSON object per message')


def _load_json(text, what):
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise errors.ConfigError('--%s is not JSON (%s): %r' % (what, exc,
                                                                text))
    if not isinstance(value, dict):
        raise errors.ConfigError('--%s must be a JSON object, not %r' % (
            what, text))
    return value


def tcp_url(host, port):
    """``tcp://host:port``, with an IPv6 literal in brackets."""
    try:
        if ipaddress.ip_address(host.strip('[]')).version == 6:
            host = '[%s]' % host.strip('[]')
    except ValueError:
        pass
    return 'tcp://%s:%d' % (host, port)


def destinations(conf, command):
    """``[(frame 1 topic, endpoint)]`` the message goes to."""
    topic = command.topic
    port = command.port or conf.rpc_zmq_port
    if command.endpoint:
        return [('fanout~' + topic if command.fanout else topic,
                 command.endpoint)]
    if command.host:
        if command.fanout:
            # What a ring sender writes: fanout~topic.host.
            topic = 'fanout~' + (topic if '.' in topic else
                                 '%s.%s' % (topic, command.host))
        return [(topic, tcp_url(command.host, port))]
    # An operator waits for the answer: a short retry.
    with matchmaker.from_conf(conf, retries=2) as mm:
        key = 'fanout~' + topic if command.fanout else topic
        queues = mm.queues(key)
        if not queues:
            raise errors.ReceiverError(
                'The matchmaker, %s, knows no host for %s: register one, '
                'list it in the ring file, or give --host' % (
                    mm.describe(), key))
    return [(queue, tcp_url(host, port)) for queue, host in queues]


def send(conf, command, out=sys.stdout):
    """The ``send`` subcommand; the exit status."""
    args = _load_json(command.args, 'args')
    context = _load_json(command.context, 'context')
    failed = 0
    ctx = zmq.Context()
    try:
        for topic, url in destinations(conf, command):
            frames = envelope.cast_frames(topic, command.method, args,
                                          context,
                                          version=command.rpc_version)
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.IPV6, 1)
            # Queue only on a completed connection: then POLLOUT means a
            # receiver accepted us.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            try:
                sock.connect(url)
                if not sock.poll(command.timeout * 1000, zmq.POLLOUT):
                    print('FAIL %s: no receiver accepted a connection at %s '
                          'within %.1f s' % (topic, url, command.timeout),
                          file=out)
                    failed += 1
                    continue
                sock.send_multipart(frames)
                print('sent %s %s to %s at %s' % (
                    'fanout' if command.fanout else 'cast', command.method,
                    topic, url), file=out)
            finally:
                # Linger so that the message leaves before the exit.
                sock.close(linger=int(command.timeout * 1000))
    finally:
        ctx.term()
    return 1 if failed else 0


PUSH_WARNING = (
    'WARNING: %s is a PUSH outlet: the receiver deals its messages '
    'round-robin to every consumer, and this tap is one of them. Every '
    'message it prints is TAKEN AWAY from the real consumer (the service '
    'listening on %s), which never gets it. Stop the tap as soon as you '
    'are done, and do not tap a production topic that must not lose '
    'messages.')


def tap(conf, command, out=sys.stdout, err=sys.stderr):
    """The ``tap`` subcommand; the exit status."""
    ipc_dir = os.path.abspath(conf.rpc_zmq_ipc_dir)
    found = routing.route(command.topic.encode('utf-8', 'replace'),
                          routing.max_key_length(ipc_dir))
    if isinstance(found, str):
        raise errors.ConfigError('The receiver refuses the topic %r (%s): '
                                 'there is no outlet to tap' % (
                                     command.topic, found))
    key, kind = found
    url = routing.endpoint(ipc_dir, key)
    path = routing.socket_path(ipc_dir, key)
    ctx = zmq.Context()
    try:
        if kind is routing.Kind.PUB:
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b'')
            role = 'a silent extra subscriber of a PUB outlet'
        else:
            sock = ctx.socket(zmq.PULL)
            print(PUSH_WARNING % (key, url), file=err)
            role = 'one more consumer of a PUSH outlet'
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(url)
        if not os.path.exists(path):
            print('note: %s does not exist yet; the tap connects as soon as '
                  'the receiver makes the outlet (on its first message)'
                  % path, file=err)
        print('tapping %s as %s; Ctrl-C stops' % (url, role), file=err,
              flush=True)
        return _print_messages(sock, command, out, err)
    except KeyboardInterrupt:
        return 0
    finally:
        ctx.destroy(linger=0)


def _print_messages(sock, command, out, err):
    deadline = (None if command.timeout is None
                else time.monotonic() + command.timeout)
    seen = 0
    while command.count is None or seen < command.count:
        wait = None
        if deadline is not None:
            wait = max(0.0, deadline - time.monotonic())
        if not sock.poll(None if wait is None else wait * 1000):
            if command.count is not None:
                print('%d of %d messages within %.1f s' % (
                    seen, command.count, command.timeout), file=err)
                return 1
            return 0
        decoded = envelope.decode(sock.recv_multipart())
        if command.json:
            print(json.dumps(decoded, sort_keys=True), file=out, flush=True)
        else:
            print(envelope.format_text(decoded), file=out, flush=True)
        seen += 1
    return 0
