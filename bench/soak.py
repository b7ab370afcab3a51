"""Soak: the real receiver at a fixed rate, with topic churn and consumer
restarts, accounting for every message.

    ./dev soak                       # 10 minutes at 500 msg/s
    ./dev soak --minutes 60 --rate 2000
    ./dev soak --seconds 20          # CI: tests/functional/test_soak.py

One sender (a PUSH in this process, as a legacy service sends) spreads
``--rate`` messages per second over the stable topics and the current
generation of churned ones. Every ``--churn`` seconds a new generation of
churned topics replaces the last; the old outlets, left without consumer
or traffic, are reaped by the receiver (``idle_timeout``). Every
``--restart`` seconds the consumer of the stable topics is killed
(SIGKILL) and a new one started. Consumers are separate processes that
print each message as they take it.

Every second it samples the receiver's counters, RSS and open files; a row
of the table is printed every ``--report`` seconds. At the end, each topic's
numbered messages are checked: every message sent must have been received,
be counted as dropped or rejected by the receiver, or fall in the gap a
killed consumer left (what it had taken and not printed). The table goes to
stdout, everything to ``--json`` (default bench/results/soak-latest.json).
Exit status 0 when no loss is unexplained, nothing was duplicated or
reordered, and RSS and open files stayed within ``--max-rss-mib`` and
``--max-files``; 1 otherwise.
"""

import argparse
import collections
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import zmq

from bench.procs import receiver_config
from tests.consumer_proc import serve
from tests.support import control_stats, open_files, rss_kib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = b'["{}", {"method": "soak", "args": {"seq": %d}}]'
SEQ = re.compile(rb'"seq": (\d+)')
TIMEOUT = 20.0
#: Seconds the receiver's control socket may take to answer.
STATS_TIMEOUT = 5.0


# -- the consumer process ------------------------------------------------


def consume(argv):
    """``python -m bench.soak consume``: PULL from the endpoints named on
    stdin (``connect EP`` / ``disconnect EP``); print ``got TOPIC SEQ``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    out = sys.stdout.buffer
    pending = b''

    def on_input(data):
        nonlocal pending
        pending += data
        while b'\n' in pending:
            line, pending = pending.split(b'\n', 1)
            verb, _, endpoint = line.decode().partition(' ')
            if verb == 'connect':
                sock.connect(endpoint)
            elif verb == 'disconnect':
                try:
                    sock.disconnect(endpoint)
                except zmq.ZMQError:
                    pass
            out.write(b'ok ' + line + b'\n')
            out.flush()

    def on_message(frames):
        found = SEQ.search(frames[3]) if len(frames) > 3 else None
        out.write(b'got %s %s\n' % (
            frames[1], found.group(1) if found else b'-1'))
        out.flush()

    return serve(sock, on_message, on_input)


# -- the orchestrator ----------------------------------------------------


class Lines:
    """A child process whose stdout lines are read by a thread."""

    def __init__(self, argv, on_line=None, cwd=None):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=cwd,
            env=dict(os.environ, PYTHONPATH=REPO))
        self.pid = self.proc.pid
        self.on_line = on_line
        self.lines = collections.deque(maxlen=200)
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors='replace').rstrip('\n')
            if self.on_line is None or not self.on_line(line):
                self.lines.append(line)
                self.events.put(line)
        self.events.put(None)

    def expect(self, pattern, timeout=TIMEOUT):
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.events.get(timeout=max(0.0, deadline -
                                                   time.monotonic()))
            except queue.Empty:
                raise RuntimeError('no line matching %r within %.0f s; '
                                   'last lines:\n%s' % (
                                       pattern, timeout, self.tail()))
            if line is None:
                self.events.put(None)
                raise RuntimeError('process ended (status %s) before %r:\n%s'
                                   % (self.proc.wait(), pattern, self.tail()))
            match = regex.search(line)
            if match:
                return match

    def send(self, line):
        self.proc.stdin.write(line.encode() + b'\n')
        self.proc.stdin.flush()

    def tail(self):
        return '\n'.join(self.lines)


class Consumer(Lines):
    """A consumer process; what it prints goes to the shared ledger."""

    def __init__(self, ledger, instance):
        self.instance = instance
        self.ledger = ledger
        super().__init__([sys.executable, '-m', 'bench.soak', 'consume'],
                         on_line=self._got, cwd=REPO)

    def _got(self, line):
        if not line.startswith('got '):
            return False
        _, topic, seq = line.split(' ')
        self.ledger.record(topic, int(seq), self.instance)
        return True

    def command(self, line):
        self.send(line)
        self.expect(r'^ok ' + re.escape(line) + '$')


class Ledger:
    """What each consumer instance received, per topic, in order."""

    def __init__(self):
        self.lock = threading.Condition()
        self.received = collections.defaultdict(list)  # topic -> [(seq, i)]
        self.highest = {}
        self.count = 0

    def record(self, topic, seq, instance):
        with self.lock:
            self.received[topic].append((seq, instance))
            if seq > self.highest.get(topic, -1):
                self.highest[topic] = seq
            self.count += 1
            self.lock.notify_all()

    def wait_last(self, last, timeout):
        """Wait until each topic's *last* seq (topic -> seq) arrived."""
        def done():
            return all(self.highest.get(t, -1) >= seq
                       for t, seq in last.items())
        with self.lock:
            return self.lock.wait_for(done, timeout)


class Sender(threading.Thread):
    """The legacy PUSH sender: a fixed total rate over the live topics."""

    def __init__(self, endpoint, rate):
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.rate = rate
        self.topics = []
        self.lock = threading.Lock()
        self.sent = collections.Counter()
        self.halt = threading.Event()
        self.error = None

    def set_topics(self, topics):
        with self.lock:
            self.topics = list(topics)

    def total(self):
        return sum(self.sent.values())

    def run(self):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 5000)
        sock.setsockopt(zmq.SNDHWM, 1000000)
        sock.connect(self.endpoint)
        try:
            start = time.monotonic()
            done = 0
            i = 0
            while not self.halt.is_set():
                # Pacing by the clock: load generation, not synchronisation.
                due = int((time.monotonic() - start) * self.rate)
                with self.lock:
                    while done < due:
                        topic = self.topics[i % len(self.topics)]
                        i += 1
                        seq = self.sent[topic]
                        sock.send_multipart([b'0', topic.encode(), b'cast',
                                             BODY % seq])
                        self.sent[topic] = seq + 1
                        done += 1
                self.halt.wait(0.005)
        except Exception as exc:  # reported by the orchestrator
            self.error = repr(exc)
        finally:
            sock.close()
            ctx.term()


def account(sent, ledger, killed):
    """Per-topic accounting: lost, explained by a killed consumer, dups,
    order breaks."""
    result = {'lost': 0, 'restart_gap': 0, 'unexplained': 0,
              'duplicated': 0, 'reordered': 0, 'unexplained_examples': []}
    for topic, n in sent.items():
        got = ledger.received.get(topic, [])
        seqs = [s for s, _ in got]
        result['duplicated'] += len(seqs) - len(set(seqs))
        result['reordered'] += sum(1 for a, b in zip(seqs, seqs[1:])
                                   if b < a)
        by_seq = {}
        for seq, inst in got:
            by_seq.setdefault(seq, inst)
        missing = [s for s in range(n) if s not in by_seq]
        result['lost'] += len(missing)
        for seq in missing:
            before = max((s for s in by_seq if s < seq), default=None)
            after = min((s for s in by_seq if s > seq), default=None)
            # A gap is a killed consumer's when the seq just before it was
            # printed by a consumer that was killed and the one after by
            # another consumer.
            if (before is not None and after is not None and
                    by_seq[before] in killed and
                    by_seq[after] != by_seq[before]):
                result['restart_gap'] += 1
            else:
                result['unexplained'] += 1
                if len(result['unexplained_examples']) < 10:
                    result['unexplained_examples'].append([topic, seq])
    return result


def run(args):
    workdir = tempfile.mkdtemp(prefix='zrsoak', dir='/tmp')
    config, ipc_dir = receiver_config(
        workdir, 'soakhost', {'rpc_zmq_topic_backlog': args.backlog},
        {'idle_timeout': '%g' % args.idle_timeout, 'shutdown_timeout': 5,
         'log_interval': 5})
    receiver = Lines([sys.executable, '-m', 'zmq_receiver', '--config-file',
                      config], cwd=workdir)
    consumers = []
    ledger = Ledger()
    killed = set()
    samples = []
    events = []
    sender = None
    status = None
    try:
        endpoint = receiver.expect(r'listening on (tcp://\S+),').group(1)

        def outlet(topic):
            return 'ipc://%s/zmq_topic_%s' % (ipc_dir, topic)

        stable = ['soak.stable%d' % i for i in range(args.topics)]

        def churn_topics(gen):
            return ['soak.churn%d_%d' % (gen, i) for i in range(args.topics)]

        instance = 0

        def new_consumer(topics):
            nonlocal instance
            instance += 1
            c = Consumer(ledger, instance)
            consumers.append(c)
            for t in topics:
                c.command('connect ' + outlet(t))
            return c

        stable_consumer = new_consumer(stable)
        gen = 0
        churn = churn_topics(gen)
        churn_consumer = new_consumer(churn)
        sender = Sender(endpoint, args.rate)
        sender.set_topics(stable + churn)
        sender.start()
        start = time.monotonic()
        next_sample = start + 1
        next_churn = start + args.churn
        next_restart = start + args.restart
        next_report = start + args.report
        header = ('%7s %9s %9s %9s %8s %8s %7s %8s %6s  %s' % (
            'time_s', 'sent', 'received', 'forwarded', 'queued', 'outlets',
            'files', 'rss_kib', 'events', 'dropped/rejected'))
        print(header)
        sys.stdout.flush()
        end = start + args.seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_restart:
                # Killed, not stopped: what it took and had not printed is
                # the loss this test allows, and accounts for.
                stable_consumer.proc.kill()
                stable_consumer.proc.wait()
                killed.add(stable_consumer.instance)
                stable_consumer = new_consumer(stable)
                events.append([round(now - start, 1), 'consumer restart'])
                next_restart = now + args.restart
            if now >= next_churn:
                gen += 1
                old, churn = churn, churn_topics(gen)
                for t in churn:
                    churn_consumer.command('connect ' + outlet(t))
                sender.set_topics(stable + churn)
                # The old topics' last messages must arrive before their
                # endpoints are dropped (a disconnect discards its queue).
                with sender.lock:
                    last = {t: sender.sent[t] - 1 for t in old
                            if sender.sent[t]}
                ledger.wait_last(last, TIMEOUT)
                for t in old:
                    churn_consumer.command('disconnect ' + outlet(t))
                events.append([round(now - start, 1), 'topic churn'])
                next_churn = now + args.churn
            if now >= next_sample:
                stats = control_stats(ipc_dir, STATS_TIMEOUT) or {}
                rss, files = rss_kib(receiver.pid), open_files(receiver.pid)
                sample = {
                    't': round(now - start, 1), 'sent': sender.total(),
                    'received': ledger.count,
                    'forwarded': stats.get('forwarded'),
                    'queued': stats.get('queued'),
                    'outlets': stats.get('outlets'),
                    'open_files': files, 'rss_kib': rss,
                    'dropped': stats.get('dropped'),
                    'rejected': stats.get('rejected'),
                }
                samples.append(sample)
                next_sample += 1
                if now >= next_report:
                    print('%7.1f %9d %9d %9s %8s %8s %7d %8d %6d  %s %s' % (
                        sample['t'], sample['sent'], sample['received'],
                        sample['forwarded'], sample['queued'],
                        sample['outlets'], files, rss, len(events),
                        sample['dropped'], sample['rejected']))
                    sys.stdout.flush()
                    next_report += args.report
            if receiver.proc.poll() is not None:
                raise RuntimeError('the receiver ended (status %s):\n%s' % (
                    receiver.proc.poll(), receiver.tail()))
            time.sleep(0.05)  # the orchestrator's own pace
        sender.halt.set()
        sender.join(TIMEOUT)
        last = {t: n - 1 for t, n in sender.sent.items()
                if t in stable or t in churn}
        caught_up = ledger.wait_last(last, TIMEOUT)
        final = control_stats(ipc_dir, STATS_TIMEOUT) or {}
        rss, files = rss_kib(receiver.pid), open_files(receiver.pid)
        samples.append({'t': round(time.monotonic() - start, 1),
                        'sent': sender.total(), 'received': ledger.count,
                        'forwarded': final.get('forwarded'),
                        'queued': final.get('queued'),
                        'outlets': final.get('outlets'),
                        'open_files': files, 'rss_kib': rss,
                        'dropped': final.get('dropped'),
                        'rejected': final.get('rejected')})
        receiver.proc.send_signal(signal.SIGTERM)
        status = receiver.proc.wait(TIMEOUT)
    finally:
        if sender is not None:
            sender.halt.set()
        for c in consumers:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        if receiver.proc.poll() is None:
            receiver.proc.kill()
            receiver.proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    acct = account(dict(sender.sent), ledger, killed)
    counted = (sum((final.get('dropped') or {}).values()) +
               sum((final.get('rejected') or {}).values()))
    max_rss = max(s['rss_kib'] for s in samples)
    max_files = max(s['open_files'] for s in samples)
    result = {
        'seconds': args.seconds, 'rate': args.rate,
        'topics': args.topics, 'churn_every': args.churn,
        'restart_every': args.restart,
        'sent': sender.total(), 'received': ledger.count,
        'lost': acct['lost'],
        'lost_in_consumer_restarts': acct['restart_gap'],
        'counted_by_receiver': counted,
        'dropped': final.get('dropped'), 'rejected': final.get('rejected'),
        'unexplained': max(0, acct['unexplained'] - counted),
        'unexplained_examples': acct['unexplained_examples'],
        'duplicated': acct['duplicated'], 'reordered': acct['reordered'],
        'consumer_restarts': len(killed),
        'topic_churns': gen, 'outlets_created':
        final.get('outlets_created'), 'outlets_reaped':
        final.get('outlets_reaped'),
        'caught_up': caught_up, 'sender_error': sender.error,
        'receiver_exit': status,
        'max_rss_kib': max_rss, 'max_open_files': max_files,
        'bounds': {'rss_mib': args.max_rss_mib, 'open_files':
                   args.max_files},
        'events': events, 'samples': samples,
    }
    ok = (result['unexplained'] == 0 and not acct['duplicated'] and
          not acct['reordered'] and status == 0 and sender.error is None
          and max_rss <= args.max_rss_mib * 1024 and
          max_files <= args.max_files)
    result['ok'] = ok
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['consume']:
        return consume(argv[1:])
    p = argparse.ArgumentParser(
        prog='./dev soak', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--minutes', type=float, default=10.0)
    p.add_argument('--seconds', type=float,
                   help='duration in seconds (overrides --minutes)')
    p.add_argument('--rate', type=int, default=500,
                   help='messages per second, all topics together')
    p.add_argument('--topics', type=int, default=4,
                   help='stable topics, and churned topics per generation')
    p.add_argument('--churn', type=float, default=30.0,
                   help='seconds between topic generations')
    p.add_argument('--restart', type=float, default=45.0,
                   help='seconds between consumer restarts (SIGKILL)')
    p.add_argument('--idle-timeout', type=float, default=5.0,
                   help="the receiver's idle_timeout (reaps churned topics)")
    p.add_argument('--backlog', type=int, default=10000,
                   help='rpc_zmq_topic_backlog')
    p.add_argument('--report', type=float, default=10.0,
                   help='seconds between table rows')
    p.add_argument('--max-rss-mib', type=float, default=256.0)
    p.add_argument('--max-files', type=int, default=256)
    p.add_argument('--json', default=os.path.join(REPO, 'bench', 'results',
                                                  'soak-latest.json'))
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = args.minutes * 60
    result = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
        json.dump(result, f, indent=1)
    summary = {k: v for k, v in result.items()
               if k not in ('samples', 'events')}
    print('\nsoak: sent %(sent)d, received %(received)d, lost %(lost)d '
          '(%(lost_in_consumer_restarts)d taken by killed consumers, '
          '%(counted_by_receiver)d counted by the receiver, %(unexplained)d '
          'unexplained), duplicated %(duplicated)d, reordered %(reordered)d'
          % result)
    print('soak: dropped %s, rejected %s; %d consumer restarts, %d topic '
          'churns (outlets created %s, reaped %s); max RSS %d KiB (bound '
          '%d), max open files %d (bound %d); receiver exit %s' % (
              result['dropped'], result['rejected'],
              result['consumer_restarts'], result['topic_churns'],
              result['outlets_created'], result['outlets_reaped'],
              result['max_rss_kib'], args.max_rss_mib * 1024,
              result['max_open_files'], args.max_files,
              result['receiver_exit']))
    print('soak: %s; figures in %s' % ('OK' if result['ok'] else 'FAILED',
                                       args.json))
    if not result['ok']:
        print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
