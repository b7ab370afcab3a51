"""The HTTP endpoint: Prometheus metrics, ``/healthz`` and ``/readyz``.

It serves from a thread of its own, but never touches the loop's state: the
loop hands it a finished snapshot once per tick and a timestamp per turn
(plain attribute stores, atomic under the GIL), and scrapes read those. So a
scrape costs the loop nothing but the GIL it briefly shares, and a frozen
loop shows as a stale turn on ``/healthz``.
"""

import errno
import logging
import socket
import threading
import time
from wsgiref import simple_server

import prometheus_client
from prometheus_client import core as prom_core
from prometheus_client import exposition

from zmq_receiver import errors

LOG = logging.getLogger(__name__)

#: ``/healthz`` fails when the loop has not turned for this many seconds.
#: The loop turns at least once a second even when idle.
HEALTH_MAX_AGE = 5.0
PREFIX = 'zmq_receiver_'
#: The label of the topics beyond the busiest N.
OTHER = 'other'


class LoopState:
    """What the loop publishes for the endpoint; written by the loop only."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.last_turn = clock()
        self.ready = False
        self.snapshot = None
        self.iterations = 0
        self.busy_seconds = 0.0
        #: Longest turn of the tick in progress, and of the last full one.
        self.max_iteration = 0.0
        self.last_max_iteration = 0.0


class Collector:
    """Turns the latest published snapshot into metric families.

    The per-topic counters are kept here, not read from the outlets: each
    scrape attributes what every topic forwarded and dropped since the last
    one to that topic's label if it is among the busiest N now, else to
    ``other``. So every series, ``other`` included, only grows while topics
    move in and out of the top N, and the labels still sum to the totals.
    """

    def __init__(self, state, top_topics):
        self.state = state
        self.top_topics = top_topics
        # Scrapes may come from several HTTP threads at once.
        self._lock = threading.Lock()
        #: topic -> (forwarded, dropped) of its outlet at the last scrape.
        self._seen = {}
        #: label -> [forwarded, dropped] attributed to it so far.
        self._totals = {OTHER: [0, 0]}

    def describe(self):
        return []

    def collect(self):
        state = self.state
        snap = state.snapshot
        if snap is None:
            return
        yield _counter('received', 'Messages read from the network.',
                       snap['received'])
        yield _counter('forwarded', 'Messages handed to an outlet socket.',
                       snap['forwarded'])
        yield _by_reason('rejected', 'Messages refused before an outlet, by '
                         'reason.', snap['rejected'])
        yield _by_reason('dropped', 'Messages an outlet dropped, by reason.',
                         snap['dropped'])
        yield _by_reason('denied', 'Connections refused by access control '
                         '(allowed_networks, CURVE keys), by reason.',
                         snap.get('denied', {}))
        yield _gauge('backlog_messages', 'Messages queued in all backlogs.',
                     snap['queued'])
        yield _gauge('backlog_bytes', 'Bytes queued in all backlogs.',
                     snap['queued_bytes'])
        yield _gauge('outlets', 'Open outlets (IPC sockets).',
                     snap['outlets'])
        yield _counter('outlets_created', 'Outlets opened since start.',
                       snap['outlets_created'])
        yield _counter('outlets_reaped', 'Idle outlets closed since start.',
                       snap['outlets_reaped'])
        agent = snap.get('agent')
        if agent is not None:
            yield _counter('agent_errors', 'Matchmaker agent operations that '
                           'failed (Redis away, outlets that cannot be '
                           'bound).', agent['errors'])
            yield _gauge('agent_no_consumer', 'Topics listed for this host '
                         'without a consumer for the grace period.',
                         len(agent['no_consumer']))
        yield _counter('loop_iterations', 'Turns of the forwarding loop.',
                       state.iterations)
        yield _counter('loop_busy_seconds', 'Time the loop spent working '
                       '(not waiting in poll).', state.busy_seconds)
        yield _gauge('loop_max_iteration_seconds', 'Longest single turn of '
                     'the loop during the last second.',
                     state.last_max_iteration)
        yield _gauge('ready', '1 once bound and ready, 0 while stopping.',
                     int(state.ready))
        with self._lock:
            families = self._topics(snap['topics'])
        yield from families

    def _topics(self, topics):
        # The busiest N topics by name, the rest summed as "other", so that
        # a flood of distinct topics cannot blow up the label cardinality.
        # A real topic called "other" joins the aggregate, so that no label
        # value stands for two series.
        ranked = sorted(topics.items(),
                        key=lambda kv: (kv[1]['forwarded'] + kv[1]['backlog']),
                        reverse=True)
        shown = [key for key, _ in ranked if key != OTHER][:self.top_topics]
        totals = self._totals
        seen = {}
        gauges = {key: [0, 0] for key in shown}
        gauges[OTHER] = [0, 0]
        for key, t in topics.items():
            now = (t['forwarded'], sum(t['dropped'].values()))
            # A topic missing from the last scrape is new (or a new outlet
            # of a reaped one): everything it counted is new.
            before = self._seen.get(key, (0, 0))
            if now[0] < before[0] or now[1] < before[1]:
                before = (0, 0)
            seen[key] = now
            label = key if key in gauges else OTHER
            total = totals.setdefault(label, [0, 0])
            total[0] += now[0] - before[0]
            total[1] += now[1] - before[1]
            gauges[label][0] += t['backlog']
            gauges[label][1] += t['consumers']
        self._seen = seen
        # A label whose topic is gone starts again from zero if it returns,
        # like any counter of a restarted target.
        for key in [k for k in totals if k != OTHER and k not in topics]:
            del totals[key]
        fams = {
            'topic_forwarded': prom_core.CounterMetricFamily(
                PREFIX + 'topic_forwarded', 'Messages forwarded per topic.',
                labels=['topic']),
            'topic_dropped': prom_core.CounterMetricFamily(
                PREFIX + 'topic_dropped', 'Messages dropped per topic.',
                labels=['topic']),
            'topic_backlog': prom_core.GaugeMetricFamily(
                PREFIX + 'topic_backlog_messages', 'Messages queued per '
                'topic.', labels=['topic']),
            'topic_consumers': prom_core.GaugeMetricFamily(
                PREFIX + 'topic_consumers', 'Connected consumers (PUSH) or '
                'subscriptions (PUB) per topic.', labels=['topic']),
        }
        for key in shown + [OTHER]:
            if key == OTHER and not len(topics) > len(shown) and \
                    totals[OTHER] == [0, 0]:
                continue
            forwarded, dropped = totals.get(key, (0, 0))
            backlog, consumers = gauges[key]
            fams['topic_forwarded'].add_metric([key], forwarded)
            fams['topic_dropped'].add_metric([key], dropped)
            fams['topic_backlog'].add_metric([key], backlog)
            fams['topic_consumers'].add_metric([key], consumers)
        return list(fams.values())


def _counter(name, doc, value):
    return prom_core.CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name, doc, value):
    return prom_core.GaugeMetricFamily(PREFIX + name, doc, value=value)


def _by_reason(name, doc, counts):
    fam = prom_core.CounterMetricFamily(PREFIX + name, doc,
                                        labels=['reason'])
    for reason, count in sorted(counts.items()):
        fam.add_metric([reason], count)
    return fam


class _QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format, *args):
        """Scrapes are not worth a log line each."""


class Exporter:
    """The HTTP server of the metrics and health endpoints."""

    def __init__(self, address, port, state, top_topics=20):
        self.address = address
        self.port = port
        self.state = state
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(Collector(state, top_topics))
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        self._metrics_app = prometheus_client.make_wsgi_app(self.registry)
        self._server = None
        self._thread = None

    def bind(self):
        """Bind the port (before privileges are dropped); returns the URL."""
        address = self.address.strip()
        if address.startswith('[') and address.endswith(']'):
            address = address[1:-1]
        try:
            # The family follows the address: an IPv6 literal or a name
            # that resolves only to IPv6 needs an AF_INET6 server.
            family = socket.getaddrinfo(address, self.port,
                                        type=socket.SOCK_STREAM,
                                        flags=socket.AI_PASSIVE)[0][0]
            server_class = type('Server', (exposition.ThreadingWSGIServer,),
                                {'address_family': family})
            self._server = simple_server.make_server(
                address, self.port, self._app, server_class=server_class,
                handler_class=_QuietHandler)
        except socket.gaierror as exc:
            raise errors.ConfigError(
                'Cannot serve metrics on %s:%d: %s; fix [zmq_receiver] '
                'metrics_address' % (self.address, self.port, exc.strerror))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise errors.AddressInUse(
                    'Metrics address %s:%d is already in use: set '
                    '[zmq_receiver] metrics_port to a free port' % (
                        self.address, self.port))
            raise errors.ConfigError(
                'Cannot serve metrics on %s:%d: %s; fix [zmq_receiver] '
                'metrics_address' % (self.address, self.port, exc.strerror))
        host, port = self._server.server_address[:2]
        if ':' in host:
            host = '[%s]' % host
        return 'http://%s:%d' % (host, port)

    def start(self):
        """Serve from a daemon thread (after any fork)."""
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name='metrics', daemon=True)
        self._thread.start()

    def stop(self):
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ, start_response):
        path = environ.get('PATH_INFO', '/')
        if path == '/healthz':
            age = self.state.clock() - self.state.last_turn
            ok = age <= HEALTH_MAX_AGE
            return _text(start_response, ok, 'ok\n' if ok else
                         'loop stuck: last turn %.1f s ago\n' % age)
        if path == '/readyz':
            ok = self.state.ready
            return _text(start_response, ok, 'ready\n' if ok else
                         'not ready\n')
        return self._metrics_app(environ, start_response)


def _text(start_response, ok, body):
    start_response('200 OK' if ok else '503 Service Unavailable',
                   [('Content-Type', 'text/plain; charset=utf-8')])
    return [body.encode()]
