"""``health`` and ``stats``: the running receiver's answer on its control
socket, as an exit status or its counters."""

import json
import sys
import time

from zmq_receiver import control
from zmq_receiver.admin import client


def add_parsers(subparsers):
    """Add ``health`` and ``stats`` to the tool's *subparsers*."""
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
        answer = client.ask(ipc_dir, control.STATS, command.timeout)
        if command.name == 'stats':
            if watch:
                # Clear the terminal, like watch(1).
                sys.stdout.write('\x1b[H\x1b[2J')
            print(json.dumps(answer, indent=2, sort_keys=True)
                  if command.json else format_table(answer), flush=True)
        if not watch:
            return 0
        time.sleep(watch)
