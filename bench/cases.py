"""One measurement each: a throughput run, a latency run, the endpoints alone.

Every run starts its own processes in its own temporary directory and ends
them all, so runs can be interleaved in any order. A run's steps:

1. start the forwarder, if any: nothing for (a), ``zbench proxy`` for (b),
   ``python -m zmq_receiver`` for (c) (its "listening on" line is the event
   that it is ready);
2. start the consumers, then the generator, which sends warm-up messages
   to every topic until told "go"; each consumer says "ready" once a
   warm-up arrived from each of its topics (so every connection, and
   every subscription, is in place); in the connection-per-message cases
   the generator is ``zbench conn``, which warms up over one lasting
   connection and then sends each measured message over a new one;
3. "go": the generator stamps t0 and sends the measured messages; each
   consumer says "done" with its count and the time of its last message.

A consumer that falls silent for ``IDLE_MS`` after its first message, or
that has not finished by the deadline, reports what it got: the run is then
marked incomplete and gives no rate.
"""

import shutil
import tempfile
import threading
import time
import urllib.request

from bench.procs import BenchError, Proc, Receiver, parse_kv, peak_rss_kib
from bench.procs import rss_kib, thread_cpu

#: The topic of the single-topic cases; an ordinary (PUSH) outlet.
TOPIC = 'compute.bench'
#: The fanout case's topic; the receiver publishes it on key fanout~compute.
FANOUT_TOPIC = 'fanout~compute.bench'
FANOUT_KEY = 'fanout~compute'
#: Topics of the many-topics case (``recv100``) unless --topics says
#: otherwise, and the consumer processes sharing them.
TOPICS = 100
CONSUMERS = 4


def many_topics(count=TOPICS):
    """The topics of the many-topics case, *count* of them."""
    return ['compute.b%03d' % i for i in range(count)]

#: A consumer silent this long after its first message has lost some.
IDLE_MS = 3000
#: Seconds for processes to start, connect and warm up.
SETUP_TIMEOUT = 30.0

#: case -> (group, label). Group a/b/c as in the issue.
CASES = {
    'direct': ('a', 'direct PUSH->PULL, tcp'),
    'proxy': ('b', 'zmq_proxy tcp->ipc PUSH'),
    'proxypub': ('b', 'zmq_proxy tcp->ipc PUB, 4SUB'),
    'recv1': ('c', 'receiver, 1 topic'),
    'recv1m': ('c', 'receiver, 1 topic, scraped'),
    'recv100': ('c', 'receiver, 100 topics/4 procs'),
    'fanout': ('c', 'receiver, fanout, 4 SUB'),
    'proxyconn': ('b', 'zmq_proxy, conn per msg'),
    'conn1': ('c', 'receiver, conn per msg'),
    'conn1acl': ('c', 'receiver, conn/msg, ACL'),
}


def label(case, topic_count=TOPICS):
    """*case*'s label in the report, with the topics it ran with."""
    text = CASES[case][1]
    if case == 'recv100':
        text = text.replace('100 topics', '%d topics' % topic_count)
    return text


#: Senders that open a connection per message (oslo.messaging 1.4 to
#: 1.10): the cases, and how many senders by default.
CONN_CASES = ('proxyconn', 'conn1', 'conn1acl')
SENDERS = 8
#: Where those senders' libzmq context lives: 'message', a new one for
#: every message (each close then waits until its message is written);
#: 'sender', one per sender, as oslo.messaging's impl_zmq kept one per
#: process (ZMQ_CTX), whose socket closes return at once.
CONTEXTS = ('message', 'sender')
CONTEXT = 'message'
#: What a run of all of them would add to the default run (a minute or
#: more of new connections) is not what most runs are for: they are run
#: when asked for with --cases.
DEFAULT_CASES = tuple(c for c in CASES if c not in CONN_CASES)
#: The (b) each (c) is paired with: the same traffic through zmq_proxy.
#: Without it in the run, a case is paired with ``proxy``.
BASELINES = {'fanout': 'proxypub', 'conn1': 'proxyconn',
             'conn1acl': 'proxyconn'}
#: A first guess of a case's rate where its group's is far off, only to
#: size the pilots: a connection per message is a hundred times slower.
PRIOR_RATE = {c: 3000 for c in CONN_CASES}
#: allowed_networks of the conn1acl case: the legacy port then has its
#: kernel filter, and checks every connection at accept.
ACL_NETWORKS = '127.0.0.0/8'
#: Cases that also get a latency run (one message at a time).
LATENCY_CASES = ('direct', 'proxy', 'recv1')


def baseline(case, run_cases):
    """The (b) case that *case* is paired with when *run_cases* run."""
    base = BASELINES.get(case, 'proxy')
    return base if base in run_cases else 'proxy'


def message_bytes(topic, size):
    """Bytes of one legacy message: all four frames."""
    return len(b'0') + len(topic) + len(b'cast') + size


class Run:
    """The processes and temporary directory of one run."""

    def __init__(self, endpoints, tmp_root):
        self.endpoints = endpoints
        # Short, under /tmp: a unix socket path holds at most 107 bytes.
        self.dir = tempfile.mkdtemp(prefix='zb-', dir=tmp_root)
        self.procs = []
        self.receiver = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # Reverse order: consumers and generator go before the forwarder.
        for proc in reversed(self.procs):
            proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, name, role, *args):
        proc = Proc(name, self.endpoints.argv(role, *args))
        self.procs.append(proc)
        return proc

    def start_receiver(self, deadline, metrics=False, allowed_networks=None,
                       topics=1):
        receiver = Receiver(self.dir, deadline, metrics, allowed_networks,
                            topics)
        self.procs.append(receiver)
        self.receiver = receiver
        return receiver


def _topology(run, case, n, size, deadline, topic_count=TOPICS):
    """Start forwarder and consumers: (endpoint, topics, [(sink, expect)],
    processes to watch). *topic_count*: the topics of ``recv100``."""
    sink_args = ['-s', size, '-i', IDLE_MS]

    def sink(name, count, endpoints, *extra):
        args = ['-n', count] + sink_args + list(extra) + list(endpoints)
        return run.start(name, 'sink', *args), count

    if case == 'direct':
        s = sink('consumer', n, ['tcp://127.0.0.1:*'], '-b')
        endpoint = s[0].expect(r'^endpoint=(\S+)', deadline).group(1)
        return endpoint, [TOPIC], [s], []
    if case in ('proxy', 'proxyconn'):
        backend = 'ipc://%s/proxy' % run.dir
        proxy = run.start('proxy', 'proxy', 'tcp://127.0.0.1:*', backend)
        endpoint = proxy.expect(r'^endpoint=(\S+)', deadline).group(1)
        return endpoint, [TOPIC], [sink('consumer', n, [backend])], [proxy]
    if case == 'proxypub':
        backend = 'ipc://%s/proxy' % run.dir
        proxy = run.start('proxy', 'proxy', '-p', 'tcp://127.0.0.1:*',
                          backend)
        endpoint = proxy.expect(r'^endpoint=(\S+)', deadline).group(1)
        sinks = [sink('subscriber%d' % c, n, [backend], '-S')
                 for c in range(CONSUMERS)]
        return endpoint, [FANOUT_TOPIC], sinks, [proxy]
    many = many_topics(topic_count)
    receiver = run.start_receiver(
        deadline, metrics=case == 'recv1m',
        allowed_networks=ACL_NETWORKS if case == 'conn1acl' else None,
        topics=len(many) if case == 'recv100' else 1)
    if case in ('recv1', 'recv1m', 'conn1', 'conn1acl'):
        sinks = [sink('consumer', n, [receiver.outlet(TOPIC)])]
        return receiver.endpoint, [TOPIC], sinks, [receiver]
    if case == 'recv100':
        sinks = []
        for c in range(CONSUMERS):
            # The generator sends message i to topic i % len(many).
            mine = range(c, len(many), CONSUMERS)
            expect = sum(len(range(t, n, len(many))) for t in mine)
            sinks.append(sink('consumer%d' % c, expect,
                              [receiver.outlet(many[t]) for t in mine]))
        return receiver.endpoint, many, sinks, [receiver]
    if case == 'fanout':
        sinks = [sink('subscriber%d' % c, n, [receiver.outlet(FANOUT_KEY)],
                      '-S') for c in range(CONSUMERS)]
        return receiver.endpoint, [FANOUT_TOPIC], sinks, [receiver]
    raise ValueError('unknown case %r' % case)


def _collect(sinks, deadline, watch):
    """Each consumer's "done" line; past *deadline*, what it got so far."""
    results = []
    for proc, expect in sinks:
        try:
            line = proc.expect(r'^done ', deadline, watch).string
        except BenchError:
            # Lost messages (or a dead forwarder): ask what did arrive.
            proc.send('report')
            line = proc.expect(r'^done ', time.monotonic() + 5.0).string
        result = parse_kv(line)
        result['expect'] = expect
        results.append(result)
    return results


def generator_argv(case, size, n, endpoint, topics, rate=0,
                   senders=SENDERS, context=CONTEXT):
    """The generator's role and arguments for a run of *case*."""
    if case in CONN_CASES:
        return (['conn', '-s', size, '-n', n, '-c', senders] +
                (['-k'] if context == 'sender' else []) +
                [endpoint, topics[0]])
    return (['gen', '-s', size, '-n', n] + (['-r', rate] if rate else []) +
            [endpoint] + list(topics))


def throughput(endpoints, tmp_root, case, size, n, timeout, rate=0,
               sample_rss=0.0, senders=SENDERS, context=CONTEXT,
               topic_count=TOPICS):
    """One run of *case*: *n* messages of *size* bytes as fast as they go
    (or, with *rate*, latency probes at that rate). A result dict; with
    *sample_rss* (seconds), it holds the receiver's RSS over the run. In
    the CONN_CASES, *senders* send at once, each message over a connection
    of its own, with a libzmq context per *context* (CONTEXTS). *topic_count*:
    how many the many-topics case (``recv100``) spreads its messages over."""
    with Run(endpoints, tmp_root) as run:
        deadline = time.monotonic() + SETUP_TIMEOUT
        endpoint, topics, sinks, watch = _topology(run, case, n, size,
                                                   deadline, topic_count)
        gen = run.start('generator', *generator_argv(
            case, size, n, endpoint, topics, rate, senders, context))
        for proc, _ in sinks:
            proc.expect(r'^ready$', deadline, watch + [gen])
        receiver = run.receiver
        if receiver is not None:
            cpu_before = thread_cpu(receiver.pid)
        # zmq_proxy's own CPU: what libzmq alone spends per message (and
        # per connection), to set the receiver's against.
        forwarder = watch[0] if watch and receiver is None else None
        if forwarder is not None:
            fwd_before = thread_cpu(forwarder.pid)
        scraper = None
        if receiver is not None and receiver.metrics_url:
            scraper = Scraper(receiver.metrics_url + '/metrics')
        sampler = None
        if receiver is not None and sample_rss:
            sampler = RssSampler(receiver.pid, sample_rss)
        wall_before = time.monotonic()
        gen.send('go')
        try:
            sent = parse_kv(gen.expect(r'^sent ', time.monotonic() + timeout,
                                       watch).string)
            done = _collect(sinks, time.monotonic() + timeout, watch)
        finally:
            if scraper is not None:
                scraper.stop()
            if sampler is not None:
                sampler.stop()
        wall = time.monotonic() - wall_before
        result = {'case': case, 'size': size, 'n': n,
                  'expected': sum(d['expect'] for d in done),
                  'received': sum(d['count'] for d in done),
                  'bad': sum(d['bad'] for d in done)}
        result['complete'] = (result['received'] == result['expected'] and
                              not result['bad'] and
                              all(d['complete'] for d in done))
        if scraper is not None:
            result['scrapes'] = scraper.count
            result['scrape_errors'] = scraper.errors
        if sampler is not None:
            result['rss_samples'] = sampler.samples
        if receiver is not None and receiver.proc.poll() is not None:
            result['complete'] = False
            result['receiver'] = {'exited': receiver.proc.returncode}
        elif receiver is not None:
            cpu_after = thread_cpu(receiver.pid)
            cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
            result['receiver'] = {
                'cpu_s': sum(cpu.values()),
                'cpu_s_by_thread': cpu,
                'cpu_pct': 100.0 * sum(cpu.values()) / wall,
                'peak_rss_kib': peak_rss_kib(receiver.pid),
                'counters': receiver.stats(),
            }
        if forwarder is not None and forwarder.proc.poll() is None:
            fwd_after = thread_cpu(forwarder.pid)
            cpu = {k: fwd_after[k] - fwd_before[k] for k in fwd_after}
            result['forwarder'] = {'cpu_s': sum(cpu.values()),
                                   'cpu_s_by_thread': cpu,
                                   'cpu_pct': 100.0 * sum(cpu.values()) / wall}
        if not result['complete']:
            # The generator may still hold messages for a dead peer.
            return result
        flushed = parse_kv(gen.expect(r'^flushed ', time.monotonic() + 10.0)
                           .string)
        seconds = (max(d['last'] for d in done) - sent['t0']) / 1e9
        result['seconds'] = seconds
        result['msgs_per_s'] = n / seconds
        result['mb_per_s'] = n * message_bytes(topics[0], size) / seconds / 1e6
        # The endpoints' CPU includes their start and warm-up: a little high.
        cons_us = sum(d['cpu_us'] for d in done)
        result['generator_cpu_us_per_msg'] = flushed['cpu_us'] / n
        result['consumers_cpu_us_per_msg'] = cons_us / n
        result['generator_cpu_pct'] = 100.0 * flushed['cpu_us'] / 1e6 / seconds
        result['consumers_cpu_pct'] = 100.0 * cons_us / 1e6 / seconds
        if 'receiver' in result:
            result['receiver']['cpu_us_per_msg'] = (
                1e6 * result['receiver']['cpu_s'] / n)
        if case in CONN_CASES:
            # One message per connection: n connections, at n/s.
            result['senders'] = sent['senders']
            result['context'] = context
            result['connections'] = sent['connections']
            result['connections_per_s'] = sent['connections'] / seconds
            for who in ('receiver', 'forwarder'):
                if who in result:
                    result[who]['cpu_us_per_connection'] = (
                        1e6 * result[who]['cpu_s'] / sent['connections'])
        if rate:
            d = done[0]
            result['latency_us'] = {k: d[k] / 1e3 for k in
                                    ('p50', 'p99', 'p999', 'max')}
        return result


class Periodic:
    """Calls :meth:`tick` every *interval* seconds from a thread until
    stopped, or until it returns False. Subclasses set their state before
    calling this __init__, which starts the thread."""

    def __init__(self, interval):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        # Event.wait paces the work; it synchronises nothing.
        while not self._stop.wait(self.interval):
            if self.tick() is False:
                return

    def tick(self):
        raise NotImplementedError

    def stop(self):
        self._stop.set()
        self._thread.join(10)


class RssSampler(Periodic):
    """A process's RSS every *interval* seconds: (seconds since the start,
    KiB) pairs in ``samples``."""

    def __init__(self, pid, interval):
        self.pid = pid
        self.samples = []
        self._start = time.monotonic()
        super().__init__(interval)

    def tick(self):
        try:
            kib = rss_kib(self.pid)
        except OSError:
            return False
        self.samples.append((time.monotonic() - self._start, kib))


class Scraper(Periodic):
    """GETs a URL every SCRAPE_INTERVAL seconds until stopped: a Prometheus
    server 150 times more eager than the usual 15 s, to show what serving
    the metrics costs the loop."""

    SCRAPE_INTERVAL = 0.1

    def __init__(self, url):
        self.url = url
        self.count = 0
        self.errors = 0
        super().__init__(self.SCRAPE_INTERVAL)

    def tick(self):
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                r.read()
            self.count += 1
        except OSError:
            self.errors += 1


def latency(endpoints, tmp_root, case, n, rate, size=200):
    """*n* probes at *rate* per second through *case*, one at a time."""
    return throughput(endpoints, tmp_root, case, size, n,
                      timeout=30.0 + 3.0 * n / rate, rate=rate)


def alone(endpoints, tmp_root, size, n):
    """The generator and a consumer with nothing between them.

    On two cores any two processes share the machine, so the useful
    "alone" figure is each one's CPU time per message (both its threads),
    and the rate that would give on a core of its own; the measured rate of
    the pair is case (a).
    """
    r = throughput(endpoints, tmp_root, 'direct', size, n, timeout=60.0)
    if r['complete']:
        for who in ('generator', 'consumers'):
            us = r[who + '_cpu_us_per_msg']
            r[who + '_msgs_per_core_s'] = 1e6 / us if us else None
    return r
