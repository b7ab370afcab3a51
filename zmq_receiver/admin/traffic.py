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
import re
import socket
import sys
import time

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from zmq_receiver.admin import envelope
from zmq_receiver import errors
from zmq_receiver import matchmaker
from zmq_receiver import opts
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
    send.add_argument('--curve-server-key', metavar='FILE',
                      help='send with CURVE encryption to the receivers\' '
                           'curve_port (default port: [zmq_receiver] '
                           'curve_port); FILE is the receiver\'s public '
                           'certificate (.key)')
    send.add_argument('--curve-client-cert', metavar='FILE',
                      help='with --curve-server-key: this sender\'s secret '
                           'certificate (.key_secret), whose public key is '
                           'in the receiver\'s curve_allowed_clients_dir')

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


def resolved(url):
    """The endpoints to connect to for *url*: one per address its host
    name resolves to here, in the resolver's order, or *url* itself for an
    address.

    libzmq connects only to the first address of a name: on a stock Debian
    /etc/hosts, ``localhost`` is ``::1`` first, where a receiver bound to
    127.0.0.1 does not listen. Raises OSError when the name does not
    resolve.
    """
    match = re.match(r'tcp://(\[[^\]]*\]|[^:/\[]+):(\d+)$', url)
    if not match:
        return [url]
    host, port = match.group(1), int(match.group(2))
    try:
        ipaddress.ip_address(host.strip('[]'))
        return [url]
    except ValueError:
        pass
    urls = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6):
            address = tcp_url(sockaddr[0], port)
            if address not in urls:
                urls.append(address)
    return urls or [url]


def default_port(conf, command):
    """The receivers' port when --port is not given: the CURVE port with
    --curve-server-key, rpc_zmq_port otherwise."""
    if not getattr(command, 'curve_server_key', None):
        return conf.rpc_zmq_port
    port = conf[opts.GROUP].curve_port
    if not port:
        raise errors.ConfigError(
            '--curve-server-key sends to the receivers\' CURVE port, but '
            '[zmq_receiver] curve_port is not set in the config files: give '
            '--port or --endpoint')
    return port


def curve_keys(command):
    """(server public, client public, client secret) z85 keys from the
    --curve-* files, or None without them."""
    server, client = command.curve_server_key, command.curve_client_cert
    if not server and not client:
        return None
    if not (server and client):
        raise errors.ConfigError(
            'CURVE needs both --curve-server-key (the receiver\'s public '
            'certificate) and --curve-client-cert (this sender\'s secret '
            'certificate)')
    keys = []
    for path, option in ((server, '--curve-server-key'),
                         (client, '--curve-client-cert')):
        try:
            keys.append(zmq.auth.load_certificate(path))
        except (OSError, ValueError) as exc:
            raise errors.ConfigError(
                '%s %s: %s; give a certificate made by '
                'zmq.auth.create_certificates' % (option, path, exc))
    (server_public, _), (client_public, client_secret) = keys
    if not client_secret:
        raise errors.ConfigError(
            '--curve-client-cert %s holds no secret key: give the '
            '.key_secret file, not the public .key' % client)
    return server_public, client_public, client_secret


#: The handshake failures :func:`wait_accepted` watches for.
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                     zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                     zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def wait_accepted(sock, monitor, url, timeout, curve):
    """None once a receiver accepted *sock*'s connection, else why not.

    *monitor* reports *sock*'s handshake failures: a refusal by the
    receiver's access control is final (libzmq does not retry it), so it
    ends the wait at once; any other failure is retried until *timeout*.
    """
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLOUT)
    poller.register(monitor, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    why = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return why or ('no receiver accepted a connection at %s '
                           'within %.1f s' % (url, timeout))
        ready = dict(poller.poll(left * 1000))
        if sock in ready:
            return None
        if monitor not in ready:
            continue
        event = recv_monitor_message(monitor)
        if event['event'] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return ('the receiver at %s refused the connection (status '
                    '%d): this host\'s address is not in its '
                    '[zmq_receiver] allowed_networks%s' % (
                        url, event['value'],
                        ', or our client key is not in its '
                        'curve_allowed_clients_dir' if curve else ''))
        if (not curve and
                event['event'] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            # The legacy port checks allowed_networks by closing the
            # connection as soon as it is accepted, not through ZAP. (A
            # CURVE port's mechanism mismatch, once seen, says more.)
            why = why or (
                'the receiver at %s closed every connection before the '
                'handshake ended, for %.1f s: this host\'s address may not '
                'be in its [zmq_receiver] allowed_networks (its log and its '
                'denied counter say), or it has max_connections open' % (
                    url, timeout))
            continue
        why = 'the security handshake with %s failed for %.1f s: %s' % (
            url, timeout,
            'check that --curve-server-key is the receiver\'s current '
            'public certificate and that the port is its curve_port'
            if curve else 'the port may be a CURVE port; give '
            '--curve-server-key and --curve-client-cert')


def destinations(conf, command):
    """``[(frame 1 topic, endpoint)]`` the message goes to."""
    topic = command.topic
    if command.endpoint:
        return [('fanout~' + topic if command.fanout else topic,
                 command.endpoint)]
    port = command.port or default_port(conf, command)
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
    curve = curve_keys(command)
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
            if curve is not None:
                server_key, public_key, secret_key = curve
                sock.curve_serverkey = server_key
                sock.curve_publickey = public_key
                sock.curve_secretkey = secret_key
            # To tell a refusal from a receiver that is not there.
            monitor = sock.get_monitor_socket(
                _HANDSHAKE_EVENTS[0] | _HANDSHAKE_EVENTS[1] |
                _HANDSHAKE_EVENTS[2])
            try:
                try:
                    targets = resolved(url)
                except OSError as exc:
                    print('FAIL %s: the host of %s does not resolve here (%s)'
                          % (topic, url, exc.strerror or exc), file=out)
                    failed += 1
                    continue
                # To every address at once: PUSH sends to a connection a
                # receiver accepted, whichever address that was.
                for target in targets:
                    sock.connect(target)
                why = wait_accepted(sock, monitor, url, command.timeout,
                                    curve is not None)
                if why is not None:
                    print('FAIL %s: %s' % (topic, why), file=out)
                    failed += 1
                    continue
                sock.send_multipart(frames)
                print('sent %s %s to %s at %s' % (
                    'fanout' if command.fanout else 'cast', command.method,
                    topic, url), file=out)
            finally:
                sock.disable_monitor()
                monitor.close(linger=0)
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
