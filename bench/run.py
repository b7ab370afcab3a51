"""The benchmark: what to run, in which order, and the report.

Order: the endpoints alone (so that we know they are not the bottleneck),
one short pilot per case and size (to size the measured runs to a target
duration), then rounds in which every case runs once per size, interleaved
(a b c a b c ...) so that drift in the machine's speed hits every case
alike, with latency runs in each round. The report gives medians with the
min-max spread over rounds; ratios to (b) are paired within a round.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import zmq

from bench import build as build_mod
from bench import cases
from bench import pyendpoints
from bench.procs import BenchError

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')

SIZES = (200, 1024, 65536)
#: A first guess of each group's rate, only to size the pilots.
PRIOR_RATE = {'a': 500000, 'b': 300000, 'c': 50000}
PRIOR_BYTES_PER_S = 1e9
#: Payload one run may move: bounds memory if a backlog builds up.
MAX_RUN_BYTES = 1 << 30
MIN_N = 1000
#: Senders of the connection-per-message cases at most: each is a thread
#: that makes a libzmq context (two more threads) per message.
MAX_SENDERS = 64
#: Topics of the many-topics case at most: each is an IPC socket in the
#: receiver and one in a consumer.
MAX_TOPICS = 4096


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='./dev bench',
        description='Throughput and latency of the receiver against a '
                    'direct connection (a) and libzmq\'s own forwarder (b).')
    p.add_argument('--quick', action='store_true',
                   help='a smoke run of about 30 s: one round, short runs')
    p.add_argument('--repeat', type=int, default=None, metavar='N',
                   help='interleaved rounds (default 3; 1 with --quick)')
    p.add_argument('--sizes', default=','.join(map(str, SIZES)),
                   help='body sizes in bytes, comma-separated '
                        '(default %(default)s)')
    p.add_argument('--cases', default=','.join(cases.DEFAULT_CASES),
                   help='cases, comma-separated (default %%(default)s; '
                        'also known: %s, a connection per message)' %
                        ','.join(cases.CONN_CASES))
    p.add_argument('--senders', type=int, default=cases.SENDERS,
                   metavar='N',
                   help='senders at once in the connection-per-message '
                        'cases (default %(default)s; 4 to 16 is what the '
                        'issue asks about)')
    p.add_argument('--conn-context', choices=cases.CONTEXTS,
                   default=cases.CONTEXT,
                   help='in those cases, a libzmq context per message, or '
                        'one per sender as oslo.messaging kept one per '
                        'process (default %(default)s)')
    p.add_argument('--topics', type=int, default=cases.TOPICS, metavar='N',
                   help='topics of the recv100 case, spread over %d '
                        'consumer processes (default %%(default)s)'
                        % cases.CONSUMERS)
    p.add_argument('--duration', type=float, default=None, metavar='S',
                   help='target seconds of one throughput run (default 1.5;'
                        ' 0.25 with --quick)')
    p.add_argument('--latency', type=int, default=None, metavar='N',
                   help='probes per latency run (default 10000; 1000 with '
                        '--quick; 0 skips latency)')
    p.add_argument('--latency-rate', type=int, default=1000, metavar='R',
                   help='probes per second (default %(default)s)')
    p.add_argument('--python-endpoints', action='store_true',
                   help='use the Python generator and consumers instead of '
                        'the compiled ones (to see what they cost)')
    p.add_argument('--output', default=os.path.join(RESULTS, 'latest.json'),
                   help='JSON results file (default bench/results/'
                        'latest.json)')
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 0.25 if args.quick else 1.5
    if args.latency is None:
        args.latency = 1000 if args.quick else 10000
    try:
        args.sizes = [int(s) for s in args.sizes.split(',') if s]
    except ValueError:
        p.error('--sizes takes integers, e.g. 200,1024,65536')
    if any(s < pyendpoints.MIN_BODY for s in args.sizes):
        p.error('sizes start at %d bytes: the body carries a kind and a '
                'timestamp' % pyendpoints.MIN_BODY)
    args.cases = [c for c in args.cases.split(',') if c]
    unknown = [c for c in args.cases if c not in cases.CASES]
    if unknown:
        p.error('unknown case(s) %s; known: %s' % (
            ','.join(unknown), ','.join(cases.CASES)))
    if not cases.CONSUMERS <= args.topics <= MAX_TOPICS:
        p.error('--topics takes %d to %d' % (cases.CONSUMERS, MAX_TOPICS))
    if not 1 <= args.senders <= MAX_SENDERS:
        p.error('--senders takes 1 to %d' % MAX_SENDERS)
    if args.repeat < 1 or not args.sizes or not args.cases:
        p.error('nothing to run')
    return args


def log(msg):
    sys.stderr.write(msg + '\n')
    sys.stderr.flush()


class Bench:
    """Runs the plan and keeps every result."""

    def __init__(self, args, endpoints, tmp_root):
        self.args = args
        self.endpoints = endpoints
        self.tmp = tmp_root
        #: (case, size) -> estimated msg/s, refined after each run.
        self.rate = {}
        self.runs = []
        self.latency_runs = []
        self.alone_runs = []
        self.errors = []

    def n_for(self, case, size, seconds):
        """Messages that take about *seconds* at the estimated rate."""
        group = cases.CASES[case][0]
        msg = cases.message_bytes(cases.TOPIC, size)
        prior = cases.PRIOR_RATE.get(case, PRIOR_RATE[group])
        rate = self.rate.get((case, size)) or min(
            prior, PRIOR_BYTES_PER_S / msg)
        return max(MIN_N, min(int(rate * seconds), MAX_RUN_BYTES // msg))

    def _guard(self, what, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except (BenchError, OSError) as exc:
            # One run failing (a process that would not start, a /proc
            # file gone with its process) does not lose the others.
            log('  ERROR in %s: %s' % (what, exc))
            self.errors.append({'what': what, 'error': str(exc)})
            return None

    def run_alone(self):
        for size in self.args.sizes:
            n = self.n_for('direct', size, self.args.duration)
            r = self._guard('alone %d B' % size, cases.alone, self.endpoints,
                            self.tmp, size, n)
            if r is None:
                continue
            self.alone_runs.append(r)
            if r['complete']:
                # Sizes the first direct runs, like a pilot.
                self.rate[('direct', size)] = r['msgs_per_s']
                log('  alone %6d B: generator %.2f us/msg (%s msg/s on a '
                    'core), consumer %.2f us/msg (%s msg/s); together %s '
                    'msg/s' % (size, r['generator_cpu_us_per_msg'],
                               si(r['generator_msgs_per_core_s']),
                               r['consumers_cpu_us_per_msg'],
                               si(r['consumers_msgs_per_core_s']),
                               si(r['msgs_per_s'])))
            else:
                log('  alone %6d B: %s' % (size, describe(r)))

    def run_one(self, case, size, seconds, record=True):
        n = self.n_for(case, size, seconds)
        rate = self.rate.get((case, size))
        timeout = 20.0 + (20.0 * n / rate if rate else 60.0)
        r = self._guard('%s %d B' % (case, size), cases.throughput,
                        self.endpoints, self.tmp, case, size, n, timeout,
                        senders=self.args.senders,
                        context=self.args.conn_context,
                        topic_count=self.args.topics)
        if r is None:
            return
        if r['complete']:
            # Later runs aim at the target duration from the latest rate.
            self.rate[(case, size)] = r['msgs_per_s']
        if record:
            r['round'] = self.round
            self.runs.append(r)
        log('  %-9s %6d B  n=%-8d %s' % (case, size, n, describe(r)))

    def run_latency(self, case):
        r = self._guard('latency %s' % case, cases.latency, self.endpoints,
                        self.tmp, case, self.args.latency,
                        self.args.latency_rate)
        if r is None:
            return
        r['round'] = self.round
        self.latency_runs.append(r)
        if r['complete']:
            lat = r['latency_us']
            log('  latency %-8s p50 %.0f us  p99 %.0f us  p99.9 %.0f us' % (
                case, lat['p50'], lat['p99'], lat['p999']))
        else:
            log('  latency %-8s LOST %d of %d' % (
                case, r['expected'] - r['received'], r['expected']))

    def run(self):
        a = self.args
        self.round = None
        log('endpoints alone:')
        self.run_alone()
        log('pilots (size the runs, not recorded):')
        for size in a.sizes:
            for case in a.cases:
                self.run_one(case, size, a.duration / 4, record=False)
        lat_cases = [c for c in cases.LATENCY_CASES if c in a.cases]
        for self.round in range(a.repeat):
            log('round %d of %d:' % (self.round + 1, a.repeat))
            for size in a.sizes:
                for case in a.cases:
                    self.run_one(case, size, a.duration)
            if a.latency:
                for case in lat_cases:
                    self.run_latency(case)


# -- summary -----------------------------------------------------------------

def si(x):
    if x is None:
        return '-'
    for div, suffix in ((1e6, 'M'), (1e3, 'k')):
        if abs(x) >= div:
            return '%.3g%s' % (x / div, suffix)
    return '%.3g' % x


def spread(values):
    """{median, min, max, n} of *values*, or None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {'median': statistics.median(values), 'min': min(values),
            'max': max(values), 'n': len(values)}


def fmt(s, f=si, width=0):
    if s is None:
        return '-'.ljust(width)
    if s['n'] == 1:
        text = f(s['median'])
    else:
        text = '%s [%s-%s]' % (f(s['median']), f(s['min']), f(s['max']))
    return text.ljust(width)


def describe(r):
    if not r['complete']:
        return 'LOST %d of %d messages (bad %d)%s' % (
            r['expected'] - r['received'], r['expected'], r['bad'],
            _counters_note(r))
    text = '%s msg/s  %.0f MB/s' % (si(r['msgs_per_s']), r['mb_per_s'])
    if 'connections_per_s' in r:
        text += '  %s conn/s (%d senders)' % (si(r['connections_per_s']),
                                              r['senders'])
    if 'receiver' in r:
        text += '  receiver %.1f us/msg, %.0f%% CPU' % (
            r['receiver']['cpu_us_per_msg'], r['receiver']['cpu_pct'])
    return text


def _counters_note(r):
    c = (r.get('receiver') or {}).get('counters')
    if not c:
        return ''
    return (' (receiver: received %d, forwarded %d, dropped %s, rejected %s)'
            % (c['received'], c['forwarded'], c['dropped'] or 0,
               c['rejected'] or 0))


def summarize(bench):
    """Medians and spreads per (case, size), paired ratios, latency."""
    a = bench.args
    out = {'throughput': [], 'latency': [], 'alone': []}
    for size in a.sizes:
        alone = [r for r in bench.alone_runs
                 if r['size'] == size and r['complete']]
        out['alone'].append({
            'size': size,
            'msgs_per_s': spread([r['msgs_per_s'] for r in alone]),
            'generator_cpu_us_per_msg': spread(
                [r['generator_cpu_us_per_msg'] for r in alone]),
            'consumer_cpu_us_per_msg': spread(
                [r['consumers_cpu_us_per_msg'] for r in alone]),
            'generator_msgs_per_core_s': spread(
                [r['generator_msgs_per_core_s'] for r in alone]),
            'consumer_msgs_per_core_s': spread(
                [r['consumers_msgs_per_core_s'] for r in alone]),
        })
        bases = {b: {r['round']: r for r in bench.runs
                     if r['case'] == b and r['size'] == size
                     and r['complete']}
                 for b in set(cases.baseline(c, a.cases) for c in a.cases)}
        for case in a.cases:
            base_case = cases.baseline(case, a.cases)
            base = bases[base_case]
            runs = [r for r in bench.runs
                    if r['case'] == case and r['size'] == size]
            ok = [r for r in runs if r['complete']]
            row = {'case': case, 'group': cases.CASES[case][0],
                   'label': cases.label(case, a.topics), 'size': size,
                   'runs': len(runs), 'lost_runs': len(runs) - len(ok),
                   'ratio_base': base_case}
            row['lost'] = [{'round': r['round'],
                            'missing': r['expected'] - r['received'],
                            'expected': r['expected']}
                           for r in runs if not r['complete']]
            if not row['lost']:
                row['msgs_per_s'] = spread([r['msgs_per_s'] for r in ok])
                row['mb_per_s'] = spread([r['mb_per_s'] for r in ok])
                row['ratio_to_b'] = spread(
                    [r['msgs_per_s'] / base[r['round']]['msgs_per_s']
                     for r in ok if r['round'] in base])
                row['consumers_cpu_pct'] = spread(
                    [r['consumers_cpu_pct'] for r in ok])
                row['generator_cpu_pct'] = spread(
                    [r['generator_cpu_pct'] for r in ok])
                fwd = [r['forwarder'] for r in ok if 'forwarder' in r]
                if fwd:
                    row['forwarder'] = {
                        'cpu_us_per_msg': spread(
                            [1e6 * x['cpu_s'] / r['n']
                             for x, r in zip(fwd, ok)]),
                        'main_thread_us_per_msg': spread(
                            [1e6 * x['cpu_s_by_thread']['main'] / r['n']
                             for x, r in zip(fwd, ok)]),
                        'zmq_io_us_per_msg': spread(
                            [1e6 * x['cpu_s_by_thread']['zmq_io'] / r['n']
                             for x, r in zip(fwd, ok)]),
                        'cpu_pct': spread([x['cpu_pct'] for x in fwd]),
                    }
                if case in cases.CONN_CASES:
                    row['senders'] = a.senders
                    row['context'] = a.conn_context
                    row['connections_per_s'] = spread(
                        [r['connections_per_s'] for r in ok])
            rcv = [r['receiver'] for r in ok if 'receiver' in r]
            if rcv:
                row['receiver'] = {
                    'cpu_us_per_msg': spread(
                        [x['cpu_us_per_msg'] for x in rcv]),
                    'main_thread_us_per_msg': spread(
                        [1e6 * x['cpu_s_by_thread']['main'] / r['n']
                         for x, r in zip(rcv, ok)]),
                    'zmq_io_us_per_msg': spread(
                        [1e6 * x['cpu_s_by_thread']['zmq_io'] / r['n']
                         for x, r in zip(rcv, ok)]),
                    'cpu_pct': spread([x['cpu_pct'] for x in rcv]),
                    'peak_rss_mib': spread(
                        [x['peak_rss_kib'] / 1024 for x in rcv]),
                }
                if case in cases.CONN_CASES:
                    row['receiver']['cpu_us_per_connection'] = spread(
                        [x['cpu_us_per_connection'] for x in rcv])
                    row['receiver']['main_thread_us_per_connection'] = (
                        row['receiver']['main_thread_us_per_msg'])
                    row['receiver']['zmq_io_us_per_connection'] = (
                        row['receiver']['zmq_io_us_per_msg'])
            out['throughput'].append(row)
    base = {r['round']: r for r in bench.latency_runs
            if r['case'] == 'proxy' and r['complete']}
    for case in cases.LATENCY_CASES:
        runs = [r for r in bench.latency_runs if r['case'] == case]
        if not runs:
            continue
        ok = [r for r in runs if r['complete']]
        row = {'case': case, 'group': cases.CASES[case][0],
               'label': cases.label(case, a.topics), 'runs': len(runs),
               'lost_runs': len(runs) - len(ok)}
        if not row['lost_runs']:
            for k in ('p50', 'p99', 'p999', 'max'):
                row[k + '_us'] = spread([r['latency_us'][k] for r in ok])
            row['p99_added_over_b_us'] = spread(
                [r['latency_us']['p99'] -
                 base[r['round']]['latency_us']['p99']
                 for r in ok if r['round'] in base])
        out['latency'].append(row)
    return out


def print_report(bench, summary, meta, out=sys.stdout):
    a = bench.args
    w = out.write
    w('\nEndpoints: %s\n' % bench.endpoints.note.splitlines()[0])
    if bench.endpoints.kind != 'C':
        w('WARNING: Python generator and consumers: they may be the '
          'bottleneck, (a) and (b) are understated and (c)/(b) overstated.\n')
    w('Machine: %s CPUs, %s; Python %s, pyzmq %s, libzmq %s\n' % (
        meta['cpus'], meta['platform'], meta['python'], meta['pyzmq'],
        meta['libzmq']))
    w('Load average before the start: %.2f%s. Medians of %d interleaved '
      'round(s), [min-max] across rounds.\n' % (
          meta['loadavg_before'][0],
          '' if meta.get('steal_percent') is None else
          '; CPU time stolen by the host during the run: %.1f %%' %
          meta['steal_percent'], a.repeat))

    w('\nGenerator and consumer alone (no forwarder): CPU per message of '
      'each process, the rate that\ngives on a core of its own, and the rate '
      'of the two together over tcp:\n')
    w('  %-8s %-24s %-24s %s\n' % ('size', 'generator', 'consumer',
                                   'together'))
    for row in summary['alone']:
        if not row['msgs_per_s']:
            w('  %-8s did not finish\n' % size_label(row['size']))
            continue
        w('  %-8s %-24s %-24s %s msg/s\n' % (
            size_label(row['size']),
            '%.2f us (%s msg/s)' % (row['generator_cpu_us_per_msg']['median'],
                                    si(row['generator_msgs_per_core_s']
                                       ['median'])),
            '%.2f us (%s msg/s)' % (row['consumer_cpu_us_per_msg']['median'],
                                    si(row['consumer_msgs_per_core_s']
                                       ['median'])),
            si(row['msgs_per_s']['median'])))

    w('\nThroughput (msg/s counts messages sent; fanout delivers each to 4)'
      '\n')
    head = '  %-7s %-32s %-21s %-6s %-17s %-18s %-6s %-8s %s\n'
    w(head % ('size', 'case', 'msg/s', 'MB/s', '(c)/(b)',
              'rcv us/msg (py+io)', 'rcvCPU', 'peakRSS', 'cons'))
    rows = [r for r in summary['throughput']
            if r['case'] not in cases.CONN_CASES]
    for row in rows:
        if _row_failed(w, row):
            continue
        ratio, cpu, pct, rss = _receiver_columns(row, 'msg')
        w(head % (size_label(row['size']), _label(row),
                  fmt(row['msgs_per_s']),
                  '%.0f' % row['mb_per_s']['median'], ratio, cpu, pct, rss,
                  '%.0f%%' % row['consumers_cpu_pct']['median']))

    rows = [r for r in summary['throughput'] if r['case'] in cases.CONN_CASES]
    if rows:
        w('\nA connection per message (oslo.messaging 1.4 to 1.10: each cast '
          'connects, sends and closes), %d senders\nat once, a libzmq '
          'context per %s; msg/s = conn/s. gen: the senders\' CPU, share '
          'of one core:\n' % (a.senders, a.conn_context))
        head = '  %-7s %-32s %-21s %-17s %-20s %-6s %-8s %s\n'
        w(head % ('size', 'case', 'msg/s = conn/s', '(c)/(b)',
                  'fwd us/conn (mn+io)', 'fwdCPU', 'peakRSS', 'gen'))
        for row in rows:
            if _row_failed(w, row):
                continue
            ratio, cpu, pct, rss = _receiver_columns(row, 'connection')
            fwd = row.get('forwarder')
            if fwd:
                # One message per connection: per message is per connection.
                cpu = '%.1f (%.1f+%.1f)' % (
                    fwd['cpu_us_per_msg']['median'],
                    fwd['main_thread_us_per_msg']['median'],
                    fwd['zmq_io_us_per_msg']['median'])
                pct = '%.0f%%' % fwd['cpu_pct']['median']
            w(head % (size_label(row['size']), _label(row),
                      fmt(row['connections_per_s']), ratio, cpu, pct, rss,
                      '%.0f%%' % row['generator_cpu_pct']['median']))

    if summary['latency']:
        w('\nLatency, one message at a time (%d probes per run at %d/s, '
          '200 B body), microseconds:\n' % (a.latency, a.latency_rate))
        w('  %-32s %-18s %-18s %-18s %-10s %s\n' % (
            'case', 'p50', 'p99', 'p99.9', 'max', 'p99 added over (b)'))
        for row in summary['latency']:
            label = '(%s) %s' % (row['group'], row['label'])
            if row['lost_runs']:
                w('  %-32s LOST messages in %d of %d runs\n' % (
                    label, row['lost_runs'], row['runs']))
                continue
            us = lambda x: '%.0f' % x  # noqa: E731
            w('  %-32s %-18s %-18s %-18s %-10s %s\n' % (
                label, fmt(row['p50_us'], us), fmt(row['p99_us'], us),
                fmt(row['p999_us'], us), us(row['max_us']['max']),
                fmt(row['p99_added_over_b_us'], us)
                if row['group'] == 'c' else ''))
    if any(r['case'] in cases.CONN_CASES for r in summary['throughput']):
        w('\nfwd us/conn: CPU time per connection of the forwarder (the '
          'receiver in (c), zmq_proxy in (b)), mn = its\nmain thread (the '
          'Python loop, or zmq_proxy\'s), io = libzmq\'s I/O thread; fwdCPU:'
          ' its share of one core.\n')
    w('\nrcv us/msg: receiver CPU time per message (all threads; py = the '
      'Python loop\'s thread, io = libzmq\'s I/O thread); rcvCPU: share of\n'
      'one core; peakRSS: the receiver\'s VmHWM; cons: consumer processes\' '
      'CPU, share of one core. (c)/(b): paired within each round, with the\n'
      '(b) of the same traffic: %s.\n' % ', '.join(sorted(
          '%s with %s' % (c, cases.baseline(c, a.cases)) for c in a.cases
          if cases.CASES[c][0] == 'c')))
    if bench.errors:
        w('\n%d run(s) failed to run (see the log above): %s\n' % (
            len(bench.errors), '; '.join(e['what'] for e in bench.errors)))


def _label(row):
    return '(%s) %s' % (row['group'], row['label'])


def _row_failed(w, row):
    """Write the line of a row that has no rate; True if it was one."""
    label, size = _label(row), size_label(row['size'])
    if row['lost']:
        w('  %-7s %-32s LOST messages in %d of %d runs: %s\n' % (
            size, label, row['lost_runs'], row['runs'],
            ', '.join('%d of %d' % (x['missing'], x['expected'])
                      for x in row['lost'])))
        return True
    if not row.get('msgs_per_s'):
        w('  %-7s %-32s no run finished\n' % (size, label))
        return True
    return False


def _receiver_columns(row, per):
    """(c)/(b), receiver CPU per *per* ('msg' or 'connection') split by
    thread, its share of a core and its peak RSS, as text ('' if none)."""
    rcv = row.get('receiver')
    ratio = cpu = pct = rss = ''
    if row['group'] == 'c':
        ratio = fmt(row['ratio_to_b'], lambda x: '%.2f' % x)
    if rcv:
        cpu = '%.1f (%.1f+%.1f)' % (
            rcv['cpu_us_per_' + per]['median'],
            rcv['main_thread_us_per_' + per]['median'],
            rcv['zmq_io_us_per_' + per]['median'])
        pct = '%.0f%%' % rcv['cpu_pct']['median']
        rss = '%.0f MiB' % rcv['peak_rss_mib']['median']
    return ratio, cpu, pct, rss


def size_label(size):
    if size % 1024 == 0:
        return '%d KiB' % (size // 1024)
    return '%d B' % size


def cpu_times(path='/proc/stat'):
    """The machine's CPU time so far, in clock ticks, from the first line
    of /proc/stat: {'total': all of it, 'steal': what the hypervisor gave
    other guests while this one wanted to run}; None where unreadable."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != 'cpu':
        return None
    ticks = [int(v) for v in fields[1:]]
    # guest and guest_nice (the 9th and 10th) are already in user and nice.
    return {'total': sum(ticks[:8]),
            'steal': ticks[7] if len(ticks) > 7 else 0}


def steal_percent(before, after):
    """The share of the machine's CPU time stolen by the host between
    two cpu_times() readings, in percent; None when either is missing."""
    if not before or not after or after['total'] <= before['total']:
        return None
    return 100.0 * (after['steal'] - before['steal']) / (
        after['total'] - before['total'])


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    load = os.getloadavg()
    # On a virtual machine the host's other guests are the noise no load
    # average shows: the time they took is steal.
    cpu_before = cpu_times()
    if load[0] > 0.5:
        # Two cores: anything else running skews every number, latency most.
        log('WARNING: load average %.2f before the start: other processes '
            'are running, expect noisy numbers' % load[0])
    tmp_root = tempfile.mkdtemp(prefix='zbench-', dir='/tmp')
    try:
        endpoints = build_mod.build(tmp_root, args.python_endpoints)
        log(endpoints.note)
        if endpoints.kind != 'C':
            log('WARNING: the generator and consumers are Python; they may '
                'be the bottleneck of (a) and (b).')
        bench = Bench(args, endpoints, tmp_root)
        bench.run()
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    meta = {
        'started': time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(started)),
        'seconds': round(time.time() - started, 1),
        'cpus': os.cpu_count(), 'platform': platform.platform(),
        'python': platform.python_version(), 'pyzmq': zmq.pyzmq_version(),
        'libzmq': zmq.zmq_version(), 'endpoints': endpoints.kind,
        'loadavg_before': load,
        'steal_percent': steal_percent(cpu_before, cpu_times()),
        'endpoints_note': endpoints.note,
        'args': {k: v for k, v in vars(args).items() if k != 'output'},
    }
    summary = summarize(bench)
    print_report(bench, summary, meta)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, 'w') as f:
        json.dump({'meta': meta, 'summary': summary,
                   'alone': bench.alone_runs, 'runs': bench.runs,
                   'latency': bench.latency_runs, 'errors': bench.errors},
                  f, indent=1)
    print('\nResults: %s (%.0f s)' % (args.output, meta['seconds']))
    lost = any(row['lost'] for row in summary['throughput']) or any(
        row['lost_runs'] for row in summary['latency'])
    return 1 if lost or bench.errors else 0
