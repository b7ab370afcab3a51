"""The entry point of ``oslo-messaging-zmq-admin`` (the subcommands are in
:mod:`zmq_receiver.admin`): the command line, the config files, and the
exit statuses.

Exit status: 0 on success, 1 when the thing asked for failed, 2 for a bad
command line, 78 when the config files cannot be read.
"""

import sys

from oslo_config import cfg

from zmq_receiver import __version__
from zmq_receiver.admin import check
from zmq_receiver.admin import registry
from zmq_receiver.admin import stats
from zmq_receiver.admin import traffic
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
    stats.add_parsers(subparsers)
    check.add_parser(subparsers)
    registry.add_parsers(subparsers)
    traffic.add_parsers(subparsers)


HANDLERS = {
    'health': stats.health_or_stats,
    'stats': stats.health_or_stats,
    'check': check.run,
    'ring': registry.ring_command,
    'redis': registry.redis_command,
    'send': traffic.send,
    'tap': traffic.tap,
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
            check.config_error_line(exc)
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
