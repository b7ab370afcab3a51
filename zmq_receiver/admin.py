"""``oslo-messaging-zmq-admin``: the operator's tool beside the receiver.

It reads the same config files as the receiver (``--config-file``) to find
the IPC directory, and asks the running receiver over its control socket.

Subcommands:

``health``
    exit 0 when the receiver answers within ``--timeout`` seconds, 1
    otherwise (for container health checks: no curl needed).
``stats``
    the live counters and per-topic figures, as a table or ``--json``.
"""

import json
import sys
import time

from oslo_config import cfg
import zmq

from zmq_receiver import __version__
from zmq_receiver import errors
from zmq_receiver import opts
from zmq_receiver import receiver

PROG = 'oslo-messaging-zmq-admin'


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


def ask(ipc_dir, request, timeout):
    """Send *request* to the receiver serving *ipc_dir*; the JSON answer.

    Raises :class:`errors.ReceiverError` when nobody answers in time.
    """
    path = receiver.control_path(ipc_dir)
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
        return json.loads(sock.recv())
    finally:
        sock.close()


def format_table(stats):
    """The stats as a table an operator can read."""
    lines = ['received %d  forwarded %d  rejected %d  dropped %d  queued %d '
             '(%d bytes)  outlets %d' % (
                 stats['received'], stats['forwarded'],
                 sum(stats['rejected'].values()),
                 sum(stats['dropped'].values()), stats['queued'],
                 stats['queued_bytes'], stats['outlets'])]
    for title, counts in (('rejected', stats['rejected']),
                          ('dropped', stats['dropped'])):
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


def main(argv=None):
    """Console entry point; returns the exit status."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf.register_cli_opt(cfg.SubCommandOpt(
        'command', handler=_add_parsers,
        help='what to do'))
    try:
        conf(sys.argv[1:] if argv is None else argv, project=PROG,
             prog=PROG, version=__version__, default_config_files=[])
        ipc_dir = conf.rpc_zmq_ipc_dir
    except cfg.Error as exc:
        print('%s: error: %s' % (PROG, exc), file=sys.stderr)
        return errors.EXIT_CONFIG
    command = conf.command
    watch = getattr(command, 'watch', None)
    try:
        while True:
            answer = ask(ipc_dir, b'stats', command.timeout)
            if command.name == 'stats':
                if watch:
                    # Clear the terminal, like watch(1).
                    sys.stdout.write('\x1b[H\x1b[2J')
                print(json.dumps(answer, indent=2, sort_keys=True)
                      if command.json else format_table(answer), flush=True)
            if not watch:
                return 0
            time.sleep(watch)
    except errors.ReceiverError as exc:
        print('%s: %s' % (PROG, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
