"""The ``redis`` matchmaker: registrations in Redis with a liveness TTL.

The key layout is the one oslo.messaging 1.7 and later write (PROTOCOL.md
section 6), so that the records of real services and of this project are
interchangeable. For a service ``compute`` on ``host1``:

- the set ``compute`` holds the member ``compute.host1``;
- the set ``compute.host1`` holds the member ``''`` and carries the TTL
  (``matchmaker_heartbeat_ttl``), refreshed by each heartbeat (``EXPIRE``);
  an RPC server also registers its directed topic, which adds the member
  ``compute.host1.host1`` to it and makes the set ``compute.host1.host1``.

A member whose key no longer exists (``TTL`` answers -2) is dead: the lookup
that finds it removes it (``DEL member``, ``SREM topic member``). A record
without a TTL (``TTL`` -1) never dies by itself.

The connection is redis-py's: a connection pool, socket timeouts, and
retries with exponential backoff on connection errors; with
``[matchmaker_redis] sentinel_hosts``, the master is found through Redis
Sentinel and found again after a failover.
"""

import contextlib
import logging
import random

import redis
from redis import backoff as redis_backoff
from redis import exceptions as redis_exc
from redis import retry as redis_retry
from redis import sentinel as redis_sentinel

from zmq_receiver.matchmaker import base

LOG = logging.getLogger(__name__)

DEFAULT_SENTINEL_PORT = 26379
#: Retries of a command after a connection error, and their backoff: about
#: 5 s in all, enough for a restart, or a Sentinel failover with a short
#: down-after-milliseconds. A longer outage raises RegistryUnavailable, and
#: the caller tries again at its next heartbeat.
RETRIES = 5
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0


class _Refused(Exception):
    """Carries an error through redis-py's retry loop without a retry."""

    def __init__(self, error):
        super().__init__(error)
        self.error = error


class Retry(redis_retry.Retry):
    """redis-py's retry with backoff, except after a refused password,
    which no retry can fix."""

    def call_with_retry(self, do, fail, *args, **kwargs):
        def once():
            try:
                return do()
            except redis_exc.AuthenticationError as exc:
                raise _Refused(exc)
        try:
            return super().call_with_retry(once, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error


def parse_sentinel_hosts(values):
    """``[(host, port)]`` from ``host:port`` strings (port optional,
    IPv6 in brackets). Raises :class:`base.MatchMakerError`."""
    hosts = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        address = _sentinel_address(value)
        if address is None:
            raise base.MatchMakerError(
                '[matchmaker_redis] sentinel_hosts: %r is not host:port; '
                'write for example sentinel1:26379,sentinel2:26379' % value)
        hosts.append(address)
    return hosts


def _sentinel_address(value):
    """``(host, port)`` of one ``host:port`` (stripped, not empty), or
    None when it is not one."""
    host, port = _split_host_port(value)
    if not host:
        return None
    port = _port_number(port)
    if port is None:
        return None
    return host, port


def _split_host_port(value):
    """(host, port text) of *value*; host None when it cannot be one."""
    if value.startswith('['):
        host, bracket, rest = value[1:].partition(']')
        if not bracket or (rest and not rest.startswith(':')):
            return None, None
        return host, (rest[1:] if rest else DEFAULT_SENTINEL_PORT)
    if value.count(':') == 1:
        host, port = value.split(':')
        return host, port
    return value, DEFAULT_SENTINEL_PORT


def _port_number(port):
    """*port* as a TCP port number, or None."""
    try:
        port = int(port)
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


class RedisMatchMaker(base.MatchMaker):
    """Registrations in a Redis server, or in the master that the Redis
    Sentinels *sentinel_hosts* ([(host, port)]) name for *sentinel_group*.

    *socket_timeout* is in seconds. *heartbeat_ttl* is the TTL of a
    registration, *heartbeat_freq* how often its owner should refresh it
    (kept here for the caller that does). *retries* bounds the retries of
    a command after a connection error.
    """

    name = 'redis'
    dynamic = True

    def __init__(self, host='127.0.0.1', port=6379, password=None,
                 sentinel_hosts=(), sentinel_group='oslo-messaging-zeromq',
                 socket_timeout=10.0, heartbeat_ttl=600, heartbeat_freq=300,
                 retries=RETRIES, max_connections=None):
        if heartbeat_ttl is None or heartbeat_ttl <= 0:
            raise base.MatchMakerError(
                'matchmaker_heartbeat_ttl = %s: a registration must live a '
                'positive number of seconds; the default is 600'
                % heartbeat_ttl)
        self.heartbeat_ttl = heartbeat_ttl
        self.heartbeat_freq = heartbeat_freq
        self.host = host
        self.port = port
        self.sentinel_hosts = list(sentinel_hosts)
        self.sentinel_group = sentinel_group
        self.sentinel = None
        self.password = password or None
        retry = Retry(
            redis_backoff.ExponentialBackoff(cap=BACKOFF_CAP,
                                             base=BACKOFF_BASE),
            retries)
        options = dict(
            password=self.password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=retry,
            retry_on_error=[redis_exc.ConnectionError,
                            redis_exc.TimeoutError],
            # Member names come back as str; a name that is not UTF-8 makes
            # the same bytes again when sent back (DEL, SREM).
            decode_responses=True,
            encoding_errors='surrogateescape',
            max_connections=max_connections)
        if self.sentinel_hosts:
            # A dead sentinel is skipped at once, not retried: the next one
            # answers instead.
            self.sentinel = redis_sentinel.Sentinel(
                self.sentinel_hosts,
                sentinel_kwargs=dict(
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_timeout,
                    retry=redis_retry.Retry(redis_backoff.NoBackoff(), 0),
                    decode_responses=True))
            self.client = self.sentinel.master_for(sentinel_group, **options)
        else:
            self.client = redis.Redis(host=host, port=port, **options)

    # -- errors --------------------------------------------------------------

    @property
    def where(self):
        """Where the registry is, for messages."""
        if self.sentinel is not None:
            return 'the master %r of the Redis Sentinels %s' % (
                self.sentinel_group, ', '.join(
                    '%s:%d' % hp for hp in self.sentinel_hosts))
        return 'Redis at %s:%d' % (self.host, self.port)

    @contextlib.contextmanager
    def talking(self):
        """Turn redis-py's errors into ones that name the fix."""
        try:
            yield
        except redis_exc.AuthenticationError as exc:
            if self.password is None:
                # Its own words (NOAUTH, or about HELLO) say less.
                raise base.MatchMakerError(
                    '%s requires a password, and none is set: set '
                    '[matchmaker_redis] password to the server\'s '
                    'requirepass' % self.where)
            raise base.MatchMakerError(
                '%s refused the password (%s): set [matchmaker_redis] '
                'password to the server\'s requirepass' % (self.where, exc))
        except redis_sentinel.MasterNotFoundError as exc:
            raise base.RegistryUnavailable(
                'No Redis Sentinel of %s names a master for %r (%s): check '
                'that the sentinels run and that [matchmaker_redis] '
                'sentinel_group_name is the name they monitor' % (
                    ', '.join('%s:%d' % hp for hp in self.sentinel_hosts),
                    self.sentinel_group, exc))
        except (redis_exc.ConnectionError, redis_exc.TimeoutError) as exc:
            raise base.RegistryUnavailable(
                '%s does not answer (%s): start it, or fix [matchmaker_redis] '
                '%s' % (self.where, exc, 'sentinel_hosts'
                        if self.sentinel is not None else 'host and port'))
        except redis_exc.ReadOnlyError as exc:
            raise base.MatchMakerError(
                '%s is a read-only replica (%s): point [matchmaker_redis] '
                'host at the master, or use sentinel_hosts' % (
                    self.where, exc))
        except redis_exc.ResponseError as exc:
            if str(exc).startswith('WRONGTYPE'):
                raise base.MatchMakerError(
                    '%s holds a key of the matchmaker\'s names that is not a '
                    'set (%s): another application uses this database; give '
                    'the matchmaker its own Redis' % (self.where, exc))
            raise base.MatchMakerError('%s: %s' % (self.where, exc))

    # -- registration --------------------------------------------------------

    def _ttl(self, ttl):
        return self.heartbeat_ttl if ttl is None else ttl

    def register(self, topic, host, ttl=None):
        """``SADD topic topic.host``, ``SADD topic.host ''`` and its TTL, in
        one transaction (the legacy driver's register and first
        heartbeat). *ttl* 0 keeps the record without a TTL."""
        member = base.queue_name(topic, host)
        ttl = self._ttl(ttl)
        with self.talking():
            pipe = self.client.pipeline(transaction=True)
            pipe.sadd(topic, member)
            # No value is needed, only a key that can expire: sets can.
            pipe.sadd(member, '')
            if ttl > 0:
                pipe.expire(member, ttl)
            else:
                pipe.persist(member)
            pipe.execute()

    def unregister(self, topic, host):
        """``SREM topic topic.host``, ``DEL topic.host`` (a service's
        close)."""
        member = base.queue_name(topic, host)
        with self.talking():
            pipe = self.client.pipeline(transaction=True)
            pipe.srem(topic, member)
            pipe.delete(member)
            pipe.execute()

    def ack_alive(self, topic, host, ttl=None):
        """``EXPIRE topic.host ttl``; registers again when the key has
        expired meanwhile (it may have been pruned)."""
        member = base.queue_name(topic, host)
        ttl = self._ttl(ttl)
        with self.talking():
            if ttl > 0:
                alive = self.client.expire(member, ttl)
            else:
                alive = self.client.exists(member)
            member_listed = alive and self.client.sismember(topic, member)
        if not member_listed:
            self.register(topic, host, ttl)

    # -- lookups -------------------------------------------------------------

    @staticmethod
    def host_of(topic, member):
        """The host of *member* of set *topic*, or None if it names none."""
        if member.startswith(topic + '.') and len(member) > len(topic) + 1:
            return member[len(topic) + 1:]
        return None

    def _ttls(self, members):
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.ttl(member)
        return pipe.execute()

    def expire(self, topic, member):
        """Remove the dead *member* of *topic*: ``DEL member``,
        ``SREM topic member``. Nothing happens when the member came back to
        life meanwhile (a service registered again). True when removed."""
        with self.talking():
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(member)
                    if pipe.ttl(member) != -2:
                        return False
                    pipe.multi()
                    pipe.delete(member)
                    pipe.srem(topic, member)
                    pipe.execute()
                except redis_exc.WatchError:
                    return False
        LOG.info('Matchmaker: removed the expired registration %s of %s',
                 member, topic)
        return True

    def alive_members(self, topic):
        """The live members of set *topic*; dead ones are removed."""
        with self.talking():
            members = sorted(m for m in self.client.smembers(topic)
                             if self.host_of(topic, m))
            ttls = self._ttls(members) if members else []
        alive = []
        for member, ttl in zip(members, ttls):
            if ttl == -2:
                self.expire(topic, member)
            else:
                alive.append(member)
        return alive

    def hosts(self, topic):
        return [self.host_of(topic, m) for m in self.alive_members(topic)]

    def fanout_queues(self, topic):
        # With Redis, a fanout is sent as directed topics (legacy).
        bare = topic[len(base.FANOUT_PREFIX):]
        return [(m, self.host_of(bare, m)) for m in self.alive_members(bare)]

    def pick_queue(self, topic):
        alive = self.alive_members(topic)
        if not alive:
            return []
        member = random.choice(alive)
        return [(member, self.host_of(topic, member))]

    def records(self, topics=None):
        """Every registration, read only: ``[(topic, member, host, ttl)]``
        with ttl -1 (no TTL) or -2 (dead, not removed yet), sorted.

        *topics* limits it to those sets; otherwise every set of the
        database whose members name hosts is one.
        """
        with self.talking():
            if topics is None:
                topics = self._set_keys()
            found = self._members_with_hosts(topics)
            ttls = self._ttls([m for _, m, _ in found]) if found else []
        return sorted((t, m, h, ttl) for (t, m, h), ttl in zip(found, ttls))

    def _set_keys(self):
        """Every key of the database that holds a set, sorted."""
        keys = sorted(set(self.client.scan_iter(count=1000)))
        # TYPE, not SCAN's TYPE option, which Redis < 6 lacks.
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        return [k for k, t in zip(keys, pipe.execute()) if t == 'set']

    def _members_with_hosts(self, topics):
        """``[(topic, member, host)]`` of the members of *topics* that
        name a host."""
        pipe = self.client.pipeline(transaction=False)
        for topic in topics:
            pipe.smembers(topic)
        found = []
        for topic, members in zip(topics, pipe.execute()):
            for member in sorted(members):
                host = self.host_of(topic, member)
                if host:
                    found.append((topic, member, host))
        return found

    def topics(self):
        """``{topic: [host]}`` of the live registrations of bare topics,
        as a ring file would list them."""
        result = {}
        for topic, member, host, ttl in self.records():
            if ttl != -2 and '.' not in topic:
                result.setdefault(topic, []).append(host)
        return result

    def prune(self, dry_run=False):
        """Remove every dead registration; the ``(topic, member)`` pairs
        removed (or, with *dry_run*, that would be)."""
        removed = []
        for topic, member, host, ttl in self.records():
            if ttl == -2 and (dry_run or self.expire(topic, member)):
                removed.append((topic, member))
        return removed

    # -- life --------------------------------------------------------------

    def master_address(self):
        """``(host, port)`` of the server that takes the writes."""
        if self.sentinel is None:
            return self.host, self.port
        with self.talking():
            return self.sentinel.discover_master(self.sentinel_group)

    def ping(self):
        """Ask the server; a line naming its version and address."""
        with self.talking():
            self.client.ping()
            info = self.client.info('server')
            role = self.client.info('replication').get('role', '?')
        version = str(info.get('redis_version', '?'))
        try:
            major_minor = tuple(int(x) for x in version.split('.')[:2])
        except ValueError:
            major_minor = None
        if major_minor is not None and major_minor < (2, 8):
            raise base.MatchMakerError(
                '%s runs Redis %s: the matchmaker needs 2.8 or later, whose '
                'TTL tells a missing key (-2) from a key without expiry'
                % (self.where, version))
        if role == 'slave':
            raise base.MatchMakerError(
                '%s is a read-only replica: point [matchmaker_redis] host at '
                'the master, or use sentinel_hosts' % self.where)
        host, port = self.master_address()
        return 'Redis %s %s at %s:%s' % (version, role, host, port)

    def describe(self):
        return 'redis (%s)' % self.where

    def close(self):
        self.client.close()
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                client.close()
