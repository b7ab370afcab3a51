"""What each import of the receiver costs in memory at start.

``.venv/bin/python -m bench.imports`` imports the receiver's dependencies
one step at a time, in the order its startup loads them, in this fresh
interpreter, and prints the process's RSS after each step and what the
step added. A module two steps share is charged to the first (``ssl``,
for instance, which oslo.serialization's ``xmlrpc.client`` needs too, is
charged to wrapt 2, whose asyncio imports it first). Then the optional parts, which the receiver loads only
when their options are on (tests/unit/test_lazy_imports.py): what they
would add.

Only the start: what grows under load is ``./dev steady`` (RSS per minute
at a fixed rate) and the ``peakRSS`` column of ``./dev bench``.
"""

import argparse
import importlib
import json
import sys

#: (label, modules imported by the step), in the receiver's order.
STEPS = (
    ('interpreter', ()),
    ('pyzmq', ('zmq',)),
    ('importlib.metadata (stevedore, oslo.config)', ('importlib.metadata',)),
    ('wrapt (debtcollector; wrapt 2 imports asyncio, ssl)', ('wrapt',)),
    ('netaddr, yaml, rfc3986, stevedore', ('netaddr', 'yaml', 'rfc3986',
                                           'stevedore')),
    ('oslo.config', ('oslo_config.cfg',)),
    ('oslo.serialization (xmlrpc.client, http.client)',
     ('oslo_serialization.jsonutils',)),
    ('oslo.log (dateutil, oslo.context, systemd.journal)',
     ('oslo_log.log',)),
    ('daemon (python-daemon)', ('daemon',)),
    ('the receiver (zmq_receiver.cli, its startup)', ('zmq_receiver.cli',
                                                       'zmq_receiver.startup')),
)
#: Loaded only when their options are on.
OPTIONAL = (
    ('prometheus_client (metrics_port)', ('prometheus_client',
                                          'zmq_receiver.exporter')),
    ('redis-py (the Redis matchmaker, the agent)', (
        'redis', 'zmq_receiver.matchmaker.redis',
        'zmq_receiver.matchmaker.agent')),
)


def rss_kib():
    """This process's resident set, KiB (VmRSS).

    Not bench.procs.rss_kib: that module imports tests.support, which
    imports zmq, pytest and the receiver, the very costs being measured."""
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError('no VmRSS in /proc/self/status')


def measure(steps):
    """[(label, RSS KiB after the step, KiB the step added)]."""
    rows = []
    before = rss_kib()
    for label, modules in steps:
        for name in modules:
            importlib.import_module(name)
        now = rss_kib()
        rows.append((label, now, now - before))
        before = now
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='python -m bench.imports',
        description='The RSS each import of the receiver adds at start.')
    p.add_argument('--json', action='store_true',
                   help='print the rows as JSON instead of a table')
    args = p.parse_args(argv)
    rows = measure(STEPS)
    optional = measure(OPTIONAL)
    if args.json:
        print(json.dumps({'steps': rows, 'optional': optional}))
        return 0
    print('%-56s %9s %9s' % ('step', 'RSS', 'added'))
    for label, now, added in rows:
        print('%-56s %5.1f MiB %5.1f MiB' % (label, now / 1024, added / 1024))
    print('\nOnly when their options are on:')
    for label, now, added in optional:
        print('%-56s %5.1f MiB %5.1f MiB' % (label, now / 1024, added / 1024))
    return 0


if __name__ == '__main__':
    sys.exit(main())
