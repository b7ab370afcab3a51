"""``ring`` and ``redis``: read, check and maintain the matchmaker's data.

``ring validate|show|from-redis`` work on a ring file (the one given, or
``[matchmaker_ring] ringfile``; ``build``, ``learn`` and ``diff`` are in
modules of their own); ``redis show|register|unregister|prune|
import-ring`` on the registry that ``[matchmaker_redis]`` names, whatever
``rpc_zmq_matchmaker`` says, so that a move from ring to Redis can be
prepared before it is switched on.
"""

import json
import sys

from zmq_receiver.admin import learn
from zmq_receiver.admin import ring_build
from zmq_receiver import errors
from zmq_receiver import matchmaker
from zmq_receiver import opts
from zmq_receiver.matchmaker import ring


def add_parsers(subparsers):
    ring_parser = subparsers.add_parser(
        'ring', help='check, show or make a ring file')
    actions = ring_parser.add_subparsers(dest='action', metavar='ACTION')
    actions.required = True
    validate = actions.add_parser(
        'validate', help='check a ring file: exit 1 when it is broken')
    validate.add_argument('file', nargs='?',
                          help='default: [matchmaker_ring] ringfile')
    show = actions.add_parser('show', help='list a ring file\'s topics')
    show.add_argument('file', nargs='?',
                      help='default: [matchmaker_ring] ringfile')
    show.add_argument('--json', action='store_true',
                      help='the ring as normalized JSON')
    from_redis = actions.add_parser(
        'from-redis', help='write the live Redis registrations as a ring '
                           'file')
    from_redis.add_argument('--output', '-o', metavar='FILE',
                            help='write FILE (atomically) instead of '
                                 'printing')
    from_redis.add_argument('--allow-empty', action='store_true',
                            help='write even when Redis holds no live '
                                 'registration')
    for module in _RING_MODULES:
        module.add_parser(actions)

    redis_parser = subparsers.add_parser(
        'redis', help='read or change the Redis registrations')
    actions = redis_parser.add_subparsers(dest='action', metavar='ACTION')
    actions.required = True
    show = actions.add_parser('show', help='list the registrations')
    show.add_argument('topics', nargs='*', metavar='TOPIC',
                      help='only these topics')
    show.add_argument('--all', action='store_true',
                      help='directed topics (topic.host) too')
    show.add_argument('--json', action='store_true')
    register = actions.add_parser(
        'register', help='register HOST as serving TOPIC, as a service does')
    unregister = actions.add_parser(
        'unregister', help='remove what register wrote, as a service does '
                           'when it stops')
    for parser in (register, unregister):
        parser.add_argument('topic')
        parser.add_argument('host')
        parser.add_argument('--topic-only', action='store_true',
                            help='only (TOPIC, HOST), not the directed '
                                 '(TOPIC.HOST, HOST) an RPC server adds')
    register.add_argument('--ttl', type=int, metavar='SECONDS',
                          help='lifetime without a refresh; 0: no expiry '
                               '(default: matchmaker_heartbeat_ttl)')
    prune = actions.add_parser(
        'prune', help='remove the registrations that have expired')
    prune.add_argument('--dry-run', action='store_true',
                       help='only list them')
    import_ring = actions.add_parser(
        'import-ring', help='register every host of a ring file')
    import_ring.add_argument('file', nargs='?',
                             help='default: [matchmaker_ring] ringfile')
    import_ring.add_argument('--ttl', type=int, default=0,
                             metavar='SECONDS',
                             help='lifetime without a refresh (default 0: '
                                  'no expiry, as the ring file had none)')


#: An operator waits for the answer: a short retry, not the agent's.
RETRIES = 2

#: Modules of ``ring`` actions of their own: each adds its actions with
#: ``add_parser`` and runs them with ``run``.
_RING_MODULES = (ring_build, learn)


def _ring_path(conf, command):
    return command.file or conf[opts.RING_GROUP].ringfile


# -- ring ------------------------------------------------------------------


def ring_command(conf, command, out=sys.stdout, err=sys.stderr):
    """The ``ring`` subcommands; the exit status."""
    for module in _RING_MODULES:
        if command.action in module.ACTIONS:
            return module.run(conf, command, out, err)
    if command.action == 'from-redis':
        return ring_from_redis(conf, command, out, err)
    path = _ring_path(conf, command)
    loaded = ring.load(path)
    if command.action == 'validate':
        for warning in loaded.warnings:
            print('warning: %s: %s' % (path, warning), file=err)
        print('OK %s: %d topics, %d hosts' % (
            path, len(loaded.topics), len(loaded.hosts())), file=out)
        return 0
    if command.json:
        out.write(ring.dumps(loaded.topics))
        return 0
    width = max([len(t) for t in loaded.topics] + [5])
    print('%-*s  %s' % (width, 'TOPIC', 'HOSTS'), file=out)
    for topic, hosts in sorted(loaded.topics.items()):
        print('%-*s  %s' % (width, topic, ' '.join(hosts) or '-'), file=out)
    return 0


def ring_from_redis(conf, command, out, err):
    with matchmaker.redis_from_conf(conf, retries=RETRIES) as mm:
        topics = {t: sorted(h) for t, h in mm.topics().items()}
    if not topics and not command.allow_empty:
        raise errors.ReceiverError(
            '%s holds no live registration of a bare topic: nothing to '
            'write (--allow-empty writes an empty ring anyway)' % mm.where)
    # What is written must load again.
    ring.parse(ring.dumps(topics), '<from redis>')
    if command.output:
        ring.write(command.output, topics)
        print('wrote %s: %d topics, %d hosts' % (
            command.output, len(topics),
            len({h for hosts in topics.values() for h in hosts})), file=err)
    else:
        out.write(ring.dumps(topics))
    return 0


# -- redis -----------------------------------------------------------------


def _ttl_text(ttl):
    if ttl == -1:
        return 'no expiry'
    if ttl == -2:
        return 'DEAD (expired; the next lookup or prune removes it)'
    return '%d s' % ttl


def redis_command(conf, command, out=sys.stdout, err=sys.stderr):
    """The ``redis`` subcommands; the exit status."""
    with matchmaker.redis_from_conf(conf, retries=RETRIES) as mm:
        return _REDIS_ACTIONS[command.action](mm, conf, command, out, err)


def redis_show(mm, conf, command, out, err):
    records = mm.records(command.topics or None)
    if not command.topics and not command.all:
        records = [r for r in records if '.' not in r[0]]
    if command.json:
        print(json.dumps([dict(topic=t, member=m, host=h, ttl=ttl)
                          for t, m, h, ttl in records], indent=2), file=out)
        return 0
    if not records:
        print('no registrations in %s' % mm.where, file=err)
        return 0
    width = max(len(r[0]) for r in records + [('TOPIC',)])
    hwidth = max(len(r[2]) for r in records + [('', '', 'HOST')])
    print('%-*s  %-*s  %s' % (width, 'TOPIC', hwidth, 'HOST', 'TTL'),
          file=out)
    for topic, member, host, ttl in records:
        print('%-*s  %-*s  %s' % (width, topic, hwidth, host,
                                  _ttl_text(ttl)), file=out)
    return 0


def _pairs(mm, command):
    if command.topic_only:
        return [(command.topic, command.host)]
    return mm.registrations(command.topic, command.host)


def redis_register(mm, conf, command, out, err):
    ttl = mm.heartbeat_ttl if command.ttl is None else command.ttl
    if ttl < 0:
        raise errors.ConfigError('--ttl must be 0 (no expiry) or more')
    for topic, host in _pairs(mm, command):
        mm.register(topic, host, ttl)
        print('registered %s on %s (%s)' % (
            topic, host, 'no expiry' if ttl == 0 else 'TTL %d s' % ttl),
            file=out)
    return 0


def redis_unregister(mm, conf, command, out, err):
    for topic, host in reversed(_pairs(mm, command)):
        mm.unregister(topic, host)
        print('unregistered %s on %s' % (topic, host), file=out)
    return 0


def redis_prune(mm, conf, command, out, err):
    removed = mm.prune(dry_run=command.dry_run)
    for topic, member in removed:
        print('%s %s from %s' % ('would remove' if command.dry_run
                                 else 'removed', member, topic), file=out)
    print('%d expired registrations %s' % (
        len(removed), 'found' if command.dry_run else 'removed'), file=err)
    return 0


def redis_import_ring(mm, conf, command, out, err):
    loaded = ring.load(_ring_path(conf, command))
    if command.ttl < 0:
        raise errors.ConfigError('--ttl must be 0 (no expiry) or more')
    count = 0
    for topic, hosts in sorted(loaded.topics.items()):
        for host in hosts:
            mm.register_server(topic, host, command.ttl)
            print('registered %s on %s' % (topic, host), file=out)
            count += 1
    print('imported %d registrations into %s' % (count, mm.where),
          file=err)
    return 0


_REDIS_ACTIONS = {
    'show': redis_show,
    'register': redis_register,
    'unregister': redis_unregister,
    'prune': redis_prune,
    'import-ring': redis_import_ring,
}
