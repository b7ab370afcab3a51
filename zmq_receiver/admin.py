"""``oslo-messaging-zmq-admin``: the operator's tool beside the receiver.

It reads the same config files as the receiver (``--config-file``, before
or after the subcommand) to find the IPC directory and the matchmaker, and
asks the running receiver over its control socket.

Subcommands:

``health``
    exit 0 when the receiver answers within ``--timeout`` seconds, 1
    otherwise (for container health checks: no curl needed).
``stats``
    the live counters and per-topic figures, as a table or ``--json``.
``check``
    a preflight of this host (:mod:`zmq_receiver.admin_check`).
``ring validate|show|from-redis|build|learn|diff``
    a ring file (:mod:`zmq_receiver.admin_registry`); made from an
    inventory (:mod:`zmq_receiver.admin_ring_build`), learnt from the
    running receivers and compared with them
    (:mod:`zmq_receiver.admin_learn`).
``redis show|register|unregister|prune|import-ring``
    the Redis registrations (:mod:`zmq_receiver.admin_registry`).
``send``, ``tap``
    put a legacy message on a path, and watch an outlet
    (:mod:`zmq_receiver.admin_traffic`).

Exit status: 0 on success, 1 when the thing asked for failed, 2 for a bad
command line, 78 when the config files cannot be read.
"""

import json
import sys
import time

from oslo_config import cfg
import zmq

from zmq_receiver import __version__
from zmq_receiver import admin_check
from zmq_receiver import admin_registry
from zmq_receiver import admin_traffic
from zmq_receiver import control
from zmq_receiver import errors
from zmq_receiver import opts

PROG = 'oslo-messaging-zmq-admin'

#: Options of the whole tool that operators also write after the
#: subcommand (``check --config-file nova.conf``); argparse wants them
#: before it.
GLOBAL_OPTIONS = ('--config-file', '--config-dir')


def hoist_global_options(argv):
    """*argv* with every :data:`GLOBAL_OPTIONS` and its value moved to the
    front, in order, so that they may follow the subcommand."""
    front, rest = [], []
    args = iter(argv)
    for arg in args:
        if arg == '--':
            rest.append(arg)
            rest.extend(args)
            break
        if arg in GLOBAL_OPTIONS:
            front.append(arg)
            value = next(args, None)
            if value is not None:
                front.append(value)
        elif arg.startswith(tuple(o + '=' for o in GLOBAL_OPTIONS)):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest


def _subcommand(argv):
    """The subcommand named in *argv* (after hoisting), or None."""
    args = iter(argv)
    for arg in args:
        if arg in GLOBAL_OPTIONS:
            next(args, None)
        elif not arg.startswith('-'):
            return arg
    return None


def _add_parsers(subparsers):
    health = subparsers.add_parser(
        'health', help='exit 0 when the running receiver answers')
    health.add_argument('--timeout', type=float, default=3.0)
    stats = subparsers.add_parser(
        'stats', help='print the running receiver\'s counters')
    stats.add_argument('--json', action='store_true',
                       help='machine-readable output')
    stats.add_argument('--timeout', type=float, default=3.0)
    stats.add_argument('--watch', type=float, metavar='SECONDS',
                       help='refresh every SECONDS until interrupted')
    admin_check.add_parser(subparsers)
    admin_registry.add_parsers(subparsers)
    admin_traffic.add_parsers(subparsers)


def ask(ipc_dir, request, timeout):
    """Send *request* to the receiver serving *ipc_dir*; the JSON answer.

    Raises :class:`errors.ReceiverError` when nobody answers in time.
    """
    path = control.path(ipc_dir)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect('ipc://' + path)
        sock.send(request)
        if not sock.poll(timeout * 1000):
            raise errors.ReceiverError(
                'No receiver answered on %s within %.1f s: is it running, '
                'with this rpc_zmq_ipc_dir, and may this user write to the '
                'socket?' % (path, timeout))
        return control.decode(sock.recv())
    finally:
        sock.close()


def format_table(stats):
    """The stats as a table an operator can read."""
    lines = ['received %d  forwarded %d  rejected %d  dropped %d  queued %d '
             '(%d bytes)  outlets %d  connections %d' % (
                 stats['received'], stats['forwarded'],
                 sum(stats['rejected'].values()),
                 sum(stats['dropped'].values()), stats['queued'],
                 stats['queued_bytes'], stats['outlets'],
                 stats.get('connections', 0))]
    for title, counts in (('rejected', stats['rejected']),
                          ('dropped', stats['dropped']),
                          # Connections, not messages (access control,
                          # max_connections).
                          ('denied', stats.get('denied', {}))):
        for reason, count in sorted(counts.items()):
            lines.append('  %s %-24s %d' % (title, reason, count))
    lines.append('')
    lines.append('%-44s %-4s %9s %8s %10s %9s' % (
        'TOPIC', 'KIND', 'CONSUMERS', 'BACKLOG', 'FORWARDED', 'DROPPED'))
    for key, t in sorted(stats['topics'].items()):
        lines.append('%-44s %-4s %9d %8d %10d %9d' % (
            key, t['kind'], t['consumers'], t['backlog'], t['forwarded'],
            sum(t['dropped'].values())))
    return '\n'.join(lines)


def health_or_stats(conf, command):
    """The ``health`` and ``stats`` subcommands; the exit status."""
    ipc_dir = conf.rpc_zmq_ipc_dir
    watch = getattr(command, 'watch', None)
    while True:
        answer = ask(ipc_dir, control.STATS, command.timeout)
        if command.name == 'stats':
            if watch:
                # Clear the terminal, like watch(1).
                sys.stdout.write('\x1b[H\x1b[2J')
            print(json.dumps(answer, indent=2, sort_keys=True)
                  if command.json else format_table(answer), flush=True)
        if not watch:
            return 0
        time.sleep(watch)


HANDLERS = {
    'health': health_or_stats,
    'stats': health_or_stats,
    'check': admin_check.run,
    'ring': admin_registry.ring_command,
    'redis': admin_registry.redis_command,
    'send': admin_traffic.send,
    'tap': admin_traffic.tap,
}


def main(argv=None):
    """Console entry point; returns the exit status."""
    argv = hoist_global_options(sys.argv[1:] if argv is None else argv)
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf.register_cli_opt(cfg.SubCommandOpt(
        'command', handler=_add_parsers,
        help='what to do'))
    try:
        conf(argv, project=PROG, prog=PROG, version=__version__,
             default_config_files=[])
    except cfg.Error as exc:
        if _subcommand(argv) == 'check':
            admin_check.config_error_line(exc)
        else:
            print('%s: error: %s' % (PROG, exc), file=sys.stderr)
        if isinstance(exc, cfg.ConfigFilesPermissionDeniedError):
            # As the receiver exits for it.
            return errors.EXIT_PERMISSION
        return errors.EXIT_CONFIG
    command = conf.command
    try:
        return HANDLERS[command.name](conf, command)
    except errors.ReceiverError as exc:
        print('%s: %s' % (PROG, exc), file=sys.stderr)
        return 1
    except cfg.Error as exc:
        # A value of the wrong type is only found when it is read.
        print('%s: error: %s' % (PROG, exc), file=sys.stderr)
        return errors.EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


if __name__ == '__main__':
    sys.exit(main())
