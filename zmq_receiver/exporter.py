"""The HTTP endpoint: Prometheus metrics, ``/healthz``, ``/readyz`` and
``/topics`` (:mod:`zmq_receiver.topics_doc`).

It serves from a thread of its own, but never touches the loop's state: the
loop hands it a finished snapshot once per tick and a timestamp per turn
(plain attribute stores, atomic under the GIL), and scrapes read those. So a
scrape costs the loop nothing but the GIL it briefly shares, and a frozen
loop shows as a stale turn on ``/healthz``.
"""

import errno
import heapq
import ipaddress
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
#: Connections served at once; the next wait in the listen backlog, which
#: holds no descriptor of the receiver's.
HTTP_WORKERS = 8
#: Connections the kernel queues for the workers (listen(2); the kernel
#: may lower it to net.core.somaxconn): 200 scrapers at once all get in.
HTTP_BACKLOG = 1024
#: Seconds a connection may take from its accept to its answer; one that
#: takes longer (a peer that holds it open, or sends slowly) is shut down.
HTTP_REQUEST_TIMEOUT = 5.0


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

    def count_turn(self, started, now):
        """A turn of the loop, busy from *started* until *now*."""
        self.last_turn = now
        self.iterations += 1
        busy = now - started
        self.busy_seconds += busy
        if busy > self.max_iteration:
            self.max_iteration = busy

    def publish(self, snapshot, ready=None):
        """A fresh *snapshot* (once per tick); *ready*, when not None,
        for the readiness check."""
        self.snapshot = snapshot
        self.last_max_iteration = self.max_iteration
        self.max_iteration = 0.0
        if ready is not None:
            self.ready = ready


class Collector:
    """Turns the latest published snapshot into metric families.

    The per-topic counters are kept here, not read from the outlets: a
    label counts what its topic forwarded and dropped while it was among
    the busiest N, and ``other`` is the rest of the totals. So every series,
    ``other`` included, only grows while topics move in and out of the top
    N, and the labels sum to the totals.
    """

    def __init__(self, state, top_topics):
        self.state = state
        self.top_topics = top_topics
        # Scrapes may come from several HTTP threads at once.
        self._lock = threading.Lock()
        #: Shown topic -> (forwarded, dropped) of its outlet at the last
        #: scrape, and what its label counted so far.
        self._seen = {}
        self._totals = {}
        self._other = (0, 0)
        self._last_snap = self._last_families = None
        #: Returns the HTTP connections shut down at their deadline
        #: (the Exporter sets it once its server exists).
        self.http_timed_out = lambda: 0

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
                         '(allowed_networks, CURVE keys) or over a cap '
                         '(max_connections; the unix sockets\' caps), by '
                         'reason.', snap.get('denied', {}))
        yield _gauge('connections', 'Open TCP connections from senders.',
                     snap.get('connections', 0))
        yield _gauge('local_connections', 'Open unix connections to the '
                     'outlets and the control socket.',
                     snap.get('local_connections', 0))
        yield _by_reason('control_requests', 'Requests on the control '
                         'socket, by outcome (answered, or why not).',
                         snap.get('control', {}))
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
        yield _counter('read_pauses', 'Times the loop paused reading the '
                       'network because all it read went into backlogs '
                       '(consumers behind).', snap.get('read_pauses', 0))
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
        yield _counter('http_timed_out', 'Connections to this endpoint shut '
                       'down unanswered after %g s.' % HTTP_REQUEST_TIMEOUT,
                       self.http_timed_out())
        with self._lock:
            families = self._topics(snap)
        yield from families

    def _topics(self, snap):
        # A scrape between two ticks sees the same snapshot: answer it
        # with the same families instead of ranking every topic again.
        if snap is self._last_snap:
            return self._last_families
        topics = snap['topics']
        shown = self._shown(topics)
        seen, totals, new = self._label_totals(topics, shown)
        other = self._other_total(snap, totals, new)
        self._seen, self._totals, self._other = seen, totals, other
        rows = _topic_rows(topics, shown, totals, other)
        self._last_snap, self._last_families = snap, _topic_families(rows)
        return self._last_families

    def _shown(self, topics):
        # The busiest N topics by name, the rest summed as "other", so that
        # a flood of distinct topics cannot blow up the label cardinality.
        # A real topic called "other" joins the aggregate, so that no label
        # value stands for two series.
        return heapq.nlargest(
            self.top_topics, (key for key in topics if key != OTHER),
            key=lambda key: topics[key]['forwarded'] + topics[key]['backlog'])

    def _label_totals(self, topics, shown):
        """The outlets' (forwarded, dropped) of the *shown* topics, their
        labels' totals, and the topics newly shown."""
        seen, totals, new = {}, {}, []
        for key in shown:
            t = topics[key]
            now = (t['forwarded'], sum(t['dropped'].values()))
            if key in self._seen:
                totals[key] = self._grown(key, now)
            else:
                totals[key] = now
                new.append(key)
            seen[key] = now
        return seen, totals, new

    def _grown(self, key, now):
        """The label total of a topic shown before, grown by what its
        outlet counted since."""
        before = self._seen[key]
        if now[0] < before[0] or now[1] < before[1]:
            before = (0, 0)  # a new outlet of a reaped topic
        total = self._totals[key]
        return (total[0] + now[0] - before[0],
                total[1] + now[1] - before[1])

    def _other_total(self, snap, totals, new):
        # "other" is the rest of the totals. It only grows: a label gains
        # only what its topic counted meanwhile, and one leaving the top N
        # hands its count back. A newly shown topic takes along what it
        # counted so far, unless that was already shown as "other": then
        # its label starts from zero.
        totals_now = (snap['forwarded'], sum(snap['dropped'].values()))
        other = [totals_now[i] - sum(v[i] for v in totals.values())
                 for i in (0, 1)]
        for i in (0, 1):
            if other[i] < self._other[i]:
                other[i] += _take_back(totals, new, i)
        return tuple(other)


def _take_back(totals, new, i):
    """Zero field *i* of the *new* topics' totals; what they held."""
    taken = 0
    for key in new:
        taken += totals[key][i]
        totals[key] = ((0, totals[key][1]) if i == 0
                       else (totals[key][0], 0))
    return taken


def _topic_rows(topics, shown, totals, other):
    """(label, (forwarded, dropped), (backlog, consumers)) per series."""
    gauges = {key: (topics[key]['backlog'], topics[key]['consumers'])
              for key in shown}
    rest = [t for key, t in topics.items() if key not in gauges]
    rows = [(key, totals[key], gauges[key]) for key in shown]
    if rest or other != (0, 0):
        rows.append((OTHER, other,
                     (sum(t['backlog'] for t in rest),
                      sum(t['consumers'] for t in rest))))
    return rows


def _topic_families(rows):
    """The four per-topic metric families holding *rows*."""
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
    for key, (forwarded, dropped), (backlog, consumers) in rows:
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
    #: Per read or write, a backstop: the deadline of _BoundedServer
    #: bounds the whole request (and counts the connections it cuts).
    timeout = 2 * HTTP_REQUEST_TIMEOUT

    def log_message(self, format, *args):
        """Scrapes are not worth a log line each."""


class _BoundedServer(exposition.ThreadingWSGIServer):
    """prometheus_client's thread-per-request server, with a bound.

    At most HTTP_WORKERS connections are accepted at once (each with its
    thread); the rest wait in the kernel's listen backlog (HTTP_BACKLOG),
    so that held connections cost the receiver no more than that many
    descriptors. Each connection is shut down HTTP_REQUEST_TIMEOUT after
    its accept if it is not done by then, so that a peer that holds one
    (or trickles its request) frees its worker.
    """

    request_queue_size = HTTP_BACKLOG

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(HTTP_WORKERS)
        #: Connections shut down at their deadline (written by timer
        #: threads, read by scrapes: one int, under the GIL).
        self.timed_out = 0
        super().__init__(*args, **kwargs)

    def get_request(self):
        # Wait for a free worker before the accept, not after it.
        self._slots.acquire()
        try:
            return super().get_request()
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        timer = threading.Timer(HTTP_REQUEST_TIMEOUT, self._cut, (request,))
        timer.daemon = True
        timer.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer.cancel()

    def _cut(self, request):
        try:
            # Wakes the worker blocked on it; a socket already closed
            # (fileno -1) raises instead of touching a reused descriptor.
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            return
        self.timed_out += 1

    def shutdown_request(self, request):
        """Close *request* and free its worker: called once for every
        accepted connection, whatever happened to it."""
        try:
            super().shutdown_request(request)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        """A peer that went away or was cut is not worth a traceback."""


class Exporter:
    """The HTTP server of the metrics and health endpoints."""

    def __init__(self, address, port, state, top_topics=20, topics=None):
        self.address = address
        #: The ``/topics`` application, or None when it is off.
        self.topics = topics
        self.port = port
        self.state = state
        self.registry = prometheus_client.CollectorRegistry()
        self._collector = Collector(state, top_topics)
        self._collector.http_timed_out = lambda: (
            self._server.timed_out if self._server is not None else 0)
        self.registry.register(self._collector)
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
            family = _family(address)
            server_class = type('Server', (_BoundedServer,),
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
        if path == '/topics':
            if self.topics is None:
                start_response('404 Not Found', [
                    ('Content-Type', 'text/plain; charset=utf-8')])
                return [b'/topics is off: set [zmq_receiver] '
                        b'topics_allowed_networks\n']
            return self.topics(environ, start_response)
        return self._metrics_app(environ, start_response)


def _family(address):
    """AF_INET6 for an IPv6 literal, else AF_INET: a name such as
    localhost is served on its IPv4 address, where scrapers look, even
    where it resolves to ::1 first."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return socket.AF_INET6
    except ValueError:
        pass
    return socket.AF_INET


def _text(start_response, ok, body):
    start_response('200 OK' if ok else '503 Service Unavailable',
                   [('Content-Type', 'text/plain; charset=utf-8')])
    return [body.encode()]
