"""The matchmaker agent: the receiver keeps this host's matchmaker records.

Opt-in (``[zmq_receiver] matchmaker_agent``). The receiver sees every
consumer of this host connect and leave (:attr:`outlets.Outlet.consumers`),
which makes it the one place that knows, within a second, whether a topic's
service is still there. With it:

* the outlets of the topics this host serves are bound in advance and kept
  (pinned) while they are served, so that a service connects to a file that
  exists: ``<topic>.<host>`` for every topic the ring file lists this host
  under (and ``fanout~<topic>``, where ring senders publish), or that Redis
  holds a registration of this host for, and ``zmq_replies.<host>``;
* with Redis, the records (PROTOCOL.md section 6) of every topic whose
  outlet ``<topic>.<host>`` has a consumer are registered and refreshed
  with ``matchmaker_heartbeat_ttl`` every ``matchmaker_heartbeat_freq``, as
  a live service does, and removed once its last consumer has been gone
  for ``agent_grace_period``: senders stop routing to a dead service within
  ``agent_grace_period`` + 2 s (:data:`BOUND_SLACK`);
* the topics listed for this host (ring file or Redis) that have had no
  consumer for the grace period are logged, once per change, and shown in
  the stats (``agent`` / ``no_consumer``).

The agent removes only the records of topics it has seen a consumer of: a
registration of this host whose consumer never connected here may belong
to another project's receiver on this host (its own IPC directory, the
same Redis and ``rpc_zmq_host``); it is reported and left to its TTL.

Two halves, so that the receiver loop never blocks: :class:`Agent` runs in
the loop, once per tick, and only reads outlets and local files (the ring
file, at start and on SIGHUP); :class:`RegistryWorker` is a thread that
does all the Redis I/O, fed with the wanted state through a one-slot
mailbox, and retries with backoff while Redis is away.
"""

import logging
import queue
import threading
import time

from zmq_receiver import errors
from zmq_receiver import matchmaker
from zmq_receiver import opts
from zmq_receiver import ratelimit
from zmq_receiver import routing
from zmq_receiver.matchmaker import base

LOG = logging.getLogger(__name__)

#: The agent looks at the consumers once per loop tick (1 s): noticing that
#: the last consumer left takes up to one tick, acting on the end of the
#: grace period up to one more. The bound on a dead service's record is
#: ``agent_grace_period`` + this, plus one Redis round trip.
BOUND_SLACK = 2.0
#: First wait after a failed Redis operation; it doubles up to BACKOFF_CAP
#: (and never beyond ``matchmaker_heartbeat_freq``).
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
#: Seconds a graceful stop waits, at least, for the records to be removed.
STOP_TIMEOUT = 1.0


def from_conf(conf):
    """The :class:`Agent` *conf* asks for; raises ConfigError (naming the
    option, the problem and the fix) when it cannot work."""
    group = conf[opts.GROUP]
    host = opts.rpc_zmq_host(conf)
    try:
        name, deprecation = matchmaker.resolve_name(conf.rpc_zmq_matchmaker)
    except matchmaker.MatchMakerError as exc:
        raise errors.ConfigError('%s (needed by [zmq_receiver] '
                                 'matchmaker_agent)' % exc)
    if deprecation:
        LOG.warning('%s', deprecation)
    if name == 'local':
        raise errors.ConfigError(
            '[zmq_receiver] matchmaker_agent = true, but rpc_zmq_matchmaker '
            '= %s: the local matchmaker keeps no records for the agent to '
            'maintain; set rpc_zmq_matchmaker to ring or redis (as the '
            'services have it), or matchmaker_agent = false'
            % conf.rpc_zmq_matchmaker)
    worker = ring = None
    if name == 'ring':
        # A bad file raises RingFileError (a ConfigError) naming the file,
        # the line and the fix.
        ring = matchmaker.ring_from_conf(conf)
        for warning in ring.ring.warnings:
            LOG.warning('Ring file %s: %s', ring.path, warning)
    else:
        freq = conf.matchmaker_heartbeat_freq
        ttl = conf.matchmaker_heartbeat_ttl
        if freq is None or ttl is None or not 0 < freq < ttl:
            raise errors.ConfigError(
                'matchmaker_heartbeat_freq = %s and matchmaker_heartbeat_ttl '
                '= %s: the matchmaker agent refreshes its Redis records every '
                'freq seconds and they live ttl seconds, so freq must be '
                'positive and below ttl (the defaults are 300 and 600)'
                % (freq, ttl))
        # No retries inside redis-py: the worker retries with its own
        # backoff, and meanwhile hears about newer wanted states.
        registry = matchmaker.redis_from_conf(conf, retries=0)
        worker = RegistryWorker(registry, host, freq, group.log_interval)
    return Agent(host, ring=ring, worker=worker,
                 grace_period=group.agent_grace_period,
                 log_interval=group.log_interval)


def served_topic(key, host):
    """The bare topic of outlet *key* when it is ``<topic>.<host>`` (the
    PULL a legacy service of that topic connects on this host), or None."""
    suffix = '.' + host
    if not key.endswith(suffix):
        return None
    topic = key[:-len(suffix)]
    if not topic or '.' in topic or topic.startswith(base.FANOUT_PREFIX):
        return None
    return topic


class Agent:
    """The loop's half: pins outlets, watches consumers, decides.

    Exactly one of *ring* (a :class:`matchmaker.ring.RingMatchMaker`) and
    *worker* (a :class:`RegistryWorker`) is given. Call :meth:`start` once
    the outlets exist, :meth:`tick` once per loop tick, :meth:`reload` on
    SIGHUP, :meth:`stop` when a graceful stop begins and :meth:`close` at
    the end. All of them run in the loop's thread and never block, except
    :meth:`reload` (reads the ring file) and :meth:`close` (joins the
    worker for at most its *timeout*).
    """

    def __init__(self, host, ring=None, worker=None, grace_period=30.0,
                 log_interval=10.0, clock=time.monotonic):
        self.host = host
        self.ring = ring
        self.worker = worker
        self.mode = 'ring' if ring is not None else 'redis'
        self.grace_period = grace_period
        self.clock = clock
        self.warn = ratelimit.RateLimitedLog(LOG, log_interval, clock)
        self.outlets = None
        #: Errors of the loop's half (outlets that cannot be bound, a ring
        #: file that cannot be read again); the worker counts its own.
        self.errors = 0
        #: Topics listed for this host: by the ring file, or by Redis.
        self.listed = set()
        #: Topics a consumer was seen on, whose records the agent keeps.
        self.owned = set()
        #: Topics whose records must exist now (sent to the worker).
        self.live = frozenset()
        #: Listed topics without a consumer for the grace period.
        self.no_consumer = frozenset()
        #: Outlet keys the agent keeps open.
        self.pinned = set()
        self._idle_since = {}
        #: Topics whose records the agent removed, until Redis no longer
        #: lists them: not reported as without a consumer meanwhile.
        self._released = set()
        self._failed = set()
        self._stopped = False
        self.replies_key = 'zmq_replies.' + host
        if ring is not None:
            self.listed = self._ring_topics()

    # -- the loop's calls -----------------------------------------------------

    def start(self, outlets):
        """Bind the served outlets in advance and start the worker."""
        self.outlets = outlets
        self._pin_all()
        LOG.info('Matchmaker agent (%s) for host %s: pre-bound %d outlets '
                 '(%s); %s %g s without a consumer', self.mode, self.host,
                 len(self.pinned), ', '.join(sorted(self.pinned)),
                 'the Redis records of a topic go after'
                 if self.worker is not None else
                 'topics of the ring file are reported after',
                 self.grace_period)
        if self.worker is not None:
            self.worker.start()

    def tick(self):
        """Once per loop tick: update what is served, pinned and live."""
        if self._stopped or self.outlets is None:
            return
        now = self.clock()
        if self.worker is not None:
            found = self.worker.take_found()
            if found is not None:
                self.listed = found
                self._released &= found
        self._watch(now)
        self._pin_all()
        if self.worker is not None:
            self.worker.want(self.live)
        self.warn.flush()

    def reload(self, grace_period):
        """SIGHUP: take the new grace period; re-read the ring file (a
        broken one is logged, and the old ring kept) or ask Redis again."""
        self.grace_period = grace_period
        if self.ring is not None:
            try:
                changed = self.ring.reload()
            except matchmaker.RingFileError as exc:
                self.errors += 1
                LOG.error('Matchmaker agent: keeping the ring read before, '
                          'because %s', exc)
                return
            if changed:
                self.listed = self._ring_topics()
                LOG.info('Matchmaker agent: the ring file lists %d topics '
                         'for host %s now: %s', len(self.listed), self.host,
                         ', '.join(sorted(self.listed)) or 'none')
                self._pin_all()
        elif self.worker is not None:
            self.worker.rescan()

    def stop(self):
        """A graceful stop begins: remove this host's records at once, so
        that senders stop routing here while the backlogs drain."""
        if self._stopped:
            return
        self._stopped = True
        if self.worker is not None:
            self.worker.finish()

    def close(self, timeout=STOP_TIMEOUT):
        """Wait up to *timeout* s for the worker to finish its removals."""
        self.stop()
        if self.worker is not None:
            self.worker.join(max(timeout, STOP_TIMEOUT))

    def snapshot(self):
        """The agent's figures as a plain dict (for the stats)."""
        snap = {
            'mode': self.mode,
            'host': self.host,
            'grace_period': self.grace_period,
            'listed': sorted(self.listed),
            'pinned': sorted(self.pinned),
            'no_consumer': sorted(self.no_consumer),
            'errors': self.errors,
        }
        if self.worker is not None:
            snap['live'] = sorted(self.live)
            snap['errors'] += self.worker.errors
            snap['registry'] = self.worker.snapshot()
        return snap

    # -- internals ------------------------------------------------------------

    def _ring_topics(self):
        # Senders never look up a dotted topic in the ring (the parser
        # warns about those), so they have no outlet of this host.
        return {t for t in self.ring.served_by(self.host) if '.' not in t}

    def _wanted_keys(self):
        keys = {self.replies_key}
        if self.ring is not None:
            # Ring senders publish fanouts to fanout~topic.host; with
            # Redis they send them as directed topics instead.
            for topic in self.listed:
                keys.add(base.queue_name(topic, self.host))
                keys.add(base.FANOUT_PREFIX + topic)
            return keys
        for topic in self.listed | self.owned:
            keys.add(base.queue_name(topic, self.host))
        return keys

    def _pin_all(self):
        """Pin the outlets of the wanted keys (opening those missing) and
        release the ones no longer wanted to the idle timeout."""
        outlets = self.outlets
        if outlets is None:
            return
        wanted = self._wanted_keys()
        max_len = routing.max_key_length(outlets.ipc_dir)
        for key in sorted(wanted):
            outlet = outlets.by_key.get(key)
            if outlet is None or not outlet.pinned:
                self._pin(outlets, key, max_len)
        self._failed &= wanted
        for key in self.pinned - wanted:
            outlets.unpin(key)
        self.pinned = wanted - self._failed

    def _pin(self, outlets, key, max_len):
        """Pin the outlet of *key*, opening it if missing."""
        route = routing.route(key.encode('ascii', 'replace'), max_len)
        if not isinstance(route, routing.Route) or route.key != key:
            if self._count_failed(key):
                LOG.error('Matchmaker agent: topic key %r cannot name '
                          'a socket file (%s); its service cannot be '
                          'served here: shorten the topic or '
                          'rpc_zmq_host, or the rpc_zmq_ipc_dir path',
                          key, route)
            return
        if outlets.pin(route) is None:
            # Outlets.pin logged why; count a key once per failure.
            self._count_failed(key)
            return
        self._failed.discard(key)

    def _count_failed(self, key):
        """Count the failure of *key* once per failure: True when it had
        not failed already."""
        if key in self._failed:
            return False
        self._failed.add(key)
        self.errors += 1
        return True

    def _watch(self, now):
        """Consumers now: which topics are live, owned, without one."""
        consumers = self._consumers()
        # Only Redis records are the agent's to keep: with a ring file,
        # a topic matters only while the file lists it.
        keeps = self.worker is not None
        live = set()
        lonely = set()
        for topic in self.listed | self.owned | set(consumers):
            is_live, is_lonely = self._watch_topic(
                topic, consumers.get(topic), now, keeps)
            if is_live:
                live.add(topic)
            if is_lonely:
                lonely.add(topic)
        for topic in set(self._idle_since) - self.listed - self.owned:
            del self._idle_since[topic]
        self.live = frozenset(live)
        if lonely != self.no_consumer:
            self._report(lonely)
        self.no_consumer = frozenset(lonely)

    def _consumers(self):
        """Served topic -> its outlet's consumers."""
        host = self.host
        consumers = {}
        for key, outlet in self.outlets.by_key.items():
            # A service consumes its topic with a PULL; the PUB outlets
            # (fanout, replies) are not where senders look it up.
            if outlet.kind is not routing.Kind.PUSH:
                continue
            topic = served_topic(key, host)
            if topic is not None:
                consumers[topic] = outlet.consumers
        return consumers

    def _watch_topic(self, topic, consumers, now, keeps):
        """Whether *topic*, with *consumers* now, is live and whether it
        is listed without a consumer."""
        if consumers:
            self._idle_since.pop(topic, None)
            self._released.discard(topic)
            if keeps:
                self.owned.add(topic)
            return keeps, False
        if topic not in self.owned and topic not in self.listed:
            self._idle_since.pop(topic, None)
            return False, False
        since = self._idle_since.setdefault(topic, now)
        if now - since < self.grace_period:
            return topic in self.owned, False
        if topic in self.owned:
            self._release(topic, now - since)
        return False, topic in self.listed and topic not in self._released

    def _release(self, topic, idle):
        """Stop keeping the records of *topic*, idle for *idle* s."""
        self.owned.discard(topic)
        self._released.add(topic)
        LOG.warning('Matchmaker agent: topic %s has had no consumer '
                    'on %s for %.3g s: removing its records, so '
                    'that senders stop routing it here', topic,
                    base.queue_name(topic, self.host), idle)

    def _report(self, lonely):
        source = ('the ring file lists' if self.ring is not None
                  else 'Redis holds records of')
        if not lonely:
            LOG.info('Matchmaker agent: every topic %s for host %s has a '
                     'consumer', source, self.host)
            return
        self.warn.warning(
            'agent-no-consumer',
            'Matchmaker agent: topics %s for host %s without a consumer for '
            '%g s: %s; senders still route them here, where the messages '
            'wait in vain: start their services on %s, or %s', source,
            self.host, self.grace_period, ', '.join(sorted(lonely)),
            self.host, 'remove this host from them in the ring file'
            if self.ring is not None else
            'unregister them (oslo-messaging-zmq-admin redis unregister)')


class RegistryWorker:
    """The thread that keeps this host's Redis records as the loop wants.

    The loop hands it the set of live topics (:meth:`want`); it registers
    the new ones at once, unregisters the ones that left, refreshes the
    rest every *heartbeat_freq* seconds, and reads the registrations of
    *host* (for pre-binding) at start, on :meth:`rescan` and with every
    refresh. While Redis does not answer it counts the error, logs at most
    once per *log_interval*, and retries with backoff; once Redis answers
    again it registers every live topic again (a restarted Redis may have
    lost them).
    """

    def __init__(self, registry, host, heartbeat_freq, log_interval=10.0,
                 clock=time.monotonic):
        self.registry = registry
        self.host = host
        self.heartbeat_freq = heartbeat_freq
        self.clock = clock
        self.warn = ratelimit.RateLimitedLog(LOG, log_interval, clock)
        #: Operations that failed (read by the loop for the stats).
        self.errors = 0
        #: None until the first operation; then whether it succeeded.
        self.up = None
        self.last_error = None
        #: Completed passes, for the stats (and tests).
        self.syncs = 0
        # The one-slot mailbox: the loop only ever needs its latest wish
        # handled, and it must never wait for the worker.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._wanted = frozenset()
        self._scan = True
        self._final = False
        self._found = queue.Queue()
        #: Topics whose records the worker wrote (and did not remove).
        self._registered = set()
        #: Whether every wanted record must be written again: after a
        #: failure, since Redis may have restarted empty.
        self._rewrite = False
        #: Topics whose records must still be removed.
        self._to_remove = set()
        self._next_refresh = 0.0
        self._thread = None

    # -- the loop's side --------------------------------------------------

    def start(self):
        """Start the thread (a daemon: a stuck Redis never holds the exit
        of the process)."""
        self._thread = threading.Thread(
            target=self._run, name='matchmaker-agent', daemon=True)
        self._thread.start()

    def want(self, topics):
        """The records of *topics* (a frozenset) must exist, no others."""
        with self._lock:
            if topics == self._wanted or self._final:
                return
            self._wanted = topics
        self._wake.set()

    def rescan(self):
        """Read this host's registrations again soon."""
        with self._lock:
            self._scan = True
        self._wake.set()

    def finish(self):
        """Remove every record of this host, then end the thread."""
        with self._lock:
            self._wanted = frozenset()
            self._final = True
        self._wake.set()

    def join(self, timeout):
        """Wait up to *timeout* s for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                LOG.warning('Matchmaker agent: Redis did not answer in '
                            '%.1f s; the records of host %s it still holds '
                            'end with their TTL', timeout, self.host)

    def take_found(self):
        """The latest topics registered for the host, or None (no read
        finished since the last call)."""
        found = None
        while True:
            try:
                found = self._found.get_nowait()
            except queue.Empty:
                return found

    def snapshot(self):
        """Plain figures for the stats."""
        return {
            'up': self.up,
            'registered': len(self._registered),
            'syncs': self.syncs,
            'errors': self.errors,
            'last_error': self.last_error,
        }

    # -- the thread -------------------------------------------------------

    def _run(self):
        backoff = 0.0
        retry_at = 0.0
        try:
            while True:
                wanted, final, scan = self._next_wish(
                    retry_at if backoff else self._next_refresh)
                now = self.clock()
                if backoff and now < retry_at and not final:
                    # Redis is away: a new wish waits for the retry.
                    self._keep_scan(scan)
                    continue
                try:
                    self._sync(wanted, scan, now)
                except Exception as exc:  # noqa: BLE001 - never die
                    self._keep_scan(scan)
                    backoff = self._next_backoff(backoff)
                    retry_at = self.clock() + backoff
                    self._failed(exc, backoff, final)
                    if final:
                        return
                    continue
                self._synced()
                backoff = 0.0
                if final:
                    return
        finally:
            self.registry.close()

    def _next_wish(self, deadline):
        """Wait until *deadline* or a wake-up; the mailbox then: (wanted,
        final, scan)."""
        wait = deadline - self.clock()
        if wait > 0:
            self._wake.wait(wait)
        self._wake.clear()
        with self._lock:
            wanted, final = self._wanted, self._final
            scan, self._scan = self._scan, False
        return wanted, final, scan

    def _keep_scan(self, scan):
        # A read of the registrations that did not happen is still owed.
        if scan:
            with self._lock:
                self._scan = True

    def _next_backoff(self, backoff):
        """The wait after one more failure."""
        return min(max(backoff * 2, BACKOFF_FIRST), BACKOFF_CAP,
                   max(self.heartbeat_freq, BACKOFF_FIRST))

    def _synced(self):
        """A pass succeeded."""
        if self.up is False:
            LOG.warning('Matchmaker agent: %s answers again; the '
                        'records of %d live topics of host %s are '
                        'registered again', self.registry.where,
                        len(self._registered), self.host)
        self.up = True
        self.syncs += 1
        self.warn.flush()

    def _sync(self, wanted, scan, now):
        registry = self.registry
        host = self.host
        gone = self._registered - wanted
        self._to_remove |= gone
        self._registered -= gone
        self._to_remove -= wanted
        for topic in sorted(self._to_remove):
            registry.unregister_server(topic, host)
            self._to_remove.discard(topic)
            LOG.info('Matchmaker agent: unregistered %s on %s', topic, host)
        new = wanted - self._registered
        for topic in sorted(wanted if self._rewrite else new):
            registry.register_server(topic, host)
            self._registered.add(topic)
            if topic in new:
                LOG.info('Matchmaker agent: registered %s on %s (TTL %d s)',
                         topic, host, registry.heartbeat_ttl)
        self._rewrite = False
        if now >= self._next_refresh:
            for topic in sorted(self._registered):
                # Registers again what a restarted Redis lost.
                registry.refresh_server(topic, host)
            scan = True
            self._next_refresh = now + self.heartbeat_freq
        if scan and not self._final:
            self._found.put(self._read_registrations())

    def _read_registrations(self):
        """The bare topics Redis holds a live record of this host for."""
        return {topic for topic, member, host, ttl in
                self.registry.records()
                if host == self.host and '.' not in topic and ttl != -2}

    def _failed(self, exc, backoff, final):
        self.errors += 1
        self.up = False
        self.last_error = str(exc)
        # What was written may be lost (a Redis restarted empty): write
        # every live record again once Redis answers.
        self._rewrite = True
        if final:
            LOG.warning('Matchmaker agent: cannot remove the records of '
                        'host %s before stopping: %s; they end with their '
                        'TTL (matchmaker_heartbeat_ttl = %d s)', self.host,
                        exc, self.registry.heartbeat_ttl)
            return
        if isinstance(exc, errors.ReceiverError):
            self.warn.warning(
                'agent-registry',
                'Matchmaker agent: %s; retrying in %.1f s. Meanwhile the '
                'records of host %s are not kept: senders may route to a '
                'service that is gone, and lose one that lives once its '
                'TTL ends', exc, backoff, self.host)
        else:
            LOG.exception('Matchmaker agent: internal error (please report '
                          'it with this log); retrying in %.1f s', backoff)
