"""The receiver as this host's matchmaker agent, against real Redis servers.

The daemon is the real process; consumers are real PULL sockets, in a
process of their own where a test kills them; Redis servers are started
by the tests. The bounds checked are the documented ones: a record appears
within one loop tick of its first consumer, and goes within
``agent_grace_period`` + agent.BOUND_SLACK of its last consumer, never
before the grace period.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests import redis_server
from tests import support
from zmq_receiver.matchmaker import agent

HOST = 'testhost'
GRACE = 1.5
#: Allowance for a loaded test machine (two cores, shared) on top of a
#: documented bound.
SLACK = 1.5
#: The loop's tick: the agent looks at the consumers once per tick.
TICK = 1.0

CONSUMER = '''
import sys, zmq
sock = zmq.Context().socket(zmq.PULL)
sock.connect(sys.argv[1])
print('connected', flush=True)
while True:
    sock.recv_multipart()
'''


@pytest.fixture
def registry():
    """A Redis server of the test's own (no persistence: a restart loses
    everything, the worst case for the agent)."""
    directory = redis_server.temp_dir()
    process = redis_server.start_server(directory)
    yield process
    process.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def consumers():
    """Start consumer processes on an endpoint; all are killed at the end."""
    started = []

    def start(endpoint):
        proc = subprocess.Popen(
            [sys.executable, '-c', CONSUMER, endpoint],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env=support.clean_env())
        started.append(proc)
        assert proc.stdout.readline().strip() == 'connected'
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def redis_options(port, **agent_options):
    options = {
        'DEFAULT': {
            'rpc_zmq_matchmaker': 'redis',
            'matchmaker_heartbeat_freq': 1,
            'matchmaker_heartbeat_ttl': 3,
        },
        'matchmaker_redis': {
            'host': '127.0.0.1',
            'port': port,
            'socket_timeout': 2000,
        },
        'zmq_receiver': {
            'matchmaker_agent': 'true',
            'agent_grace_period': GRACE,
            'log_interval': 0.5,
        },
    }
    options['zmq_receiver'].update(agent_options)
    return options


def records(raw, topic, host=HOST):
    """What Redis holds for *topic* on *host*, as a legacy RPC server
    writes it (PROTOCOL.md section 6), or None when any part is missing."""
    directed = '%s.%s' % (topic, host)
    if directed not in raw.smembers(topic):
        return None
    if raw.smembers(directed) != {'', '%s.%s' % (directed, host)}:
        return None
    if raw.smembers('%s.%s' % (directed, host)) != {''}:
        return None
    return raw.ttl(directed), raw.ttl('%s.%s' % (directed, host))


def gone(raw, topic, host=HOST):
    """Whether no record of *topic* on *host* is left at all."""
    directed = '%s.%s' % (topic, host)
    return (directed not in raw.smembers(topic) and
            not raw.exists(directed) and
            not raw.exists('%s.%s' % (directed, host)))


def wait_consumers(daemon, key, count):
    """Wait until *daemon* counts *count* consumers on *key*: the time."""
    daemon.wait_stats(lambda s: s['topics'].get(key, {}).get(
        'consumers', 0) == count)
    return time.monotonic()


# Waits out a TTL refresh and the grace period, and checks its bounds.
@pytest.mark.slow
def test_a_consumer_keeps_its_records_and_they_go_with_it(
        daemons, short_dir, registry, consumers, ctx):
    raw = registry.client()
    daemon = daemons(short_dir, redis_options(registry.port))
    daemon.wait_for(r'Matchmaker agent \(redis\) for host testhost')
    # The replies outlet is bound in advance, whatever the registry holds.
    assert os.path.exists(daemon.path('zmq_replies.' + HOST))
    # A message makes the outlet; a consumer connects to it.
    out = support.sender(ctx, daemon)
    out.send_multipart(support.cast('compute.' + HOST))
    daemon.wait_stats(lambda s: 'compute.' + HOST in s['topics'])
    victim = consumers(daemon.outlet('compute.' + HOST))
    seen = wait_consumers(daemon, 'compute.' + HOST, 1)
    # A caller waiting for replies is no service: no record for it.
    waiting = support.sub(ctx, daemon, 'zmq_replies.' + HOST, b'ab12')
    wait_consumers(daemon, 'zmq_replies.' + HOST, 1)

    ttls = redis_server.wait_until(lambda: records(raw, 'compute'),
                                   what='the records of compute')
    assert time.monotonic() - seen <= TICK + SLACK
    # Exactly a legacy service's layout, with the configured TTL.
    assert set(raw.keys()) == {'compute', 'compute.testhost',
                               'compute.testhost.testhost'}
    assert raw.ttl('compute') == -1
    assert all(0 < ttl <= 3 for ttl in ttls)
    # Kept fresh beyond the TTL: refreshed every heartbeat_freq. A refresh
    # shows as a TTL higher than the first reading less the time since (a
    # plain "higher than the first" can miss it when the first reading came
    # right after a refresh).
    read_at, first = time.monotonic(), raw.pttl('compute.testhost')

    def refreshed():
        now = time.monotonic()
        return raw.pttl('compute.testhost') > (
            first - (now - read_at) * 1000 + 100)

    redis_server.wait_until(refreshed, what='a refresh of the TTL')
    stats = daemon.stats()['agent']
    assert stats['live'] == ['compute']
    assert stats['registry']['up'] is True
    assert stats['errors'] == 0
    # The outlet is kept while it is served, and its records with it.
    assert 'compute.' + HOST in stats['pinned']

    killed = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    redis_server.wait_until(lambda: gone(raw, 'compute'),
                            timeout=GRACE + agent.BOUND_SLACK + SLACK + 5,
                            what='the removal of the records of compute')
    elapsed = time.monotonic() - killed
    assert GRACE <= elapsed <= GRACE + agent.BOUND_SLACK + SLACK, elapsed
    daemon.wait_for(r'topic compute has had no consumer on compute\.testhost'
                    r' for [\d.]+ s: removing its records')
    daemon.wait_for(r'unregistered compute on testhost')
    # Removed by the agent itself: not reported as a lonely record.
    stats = daemon.stats()['agent']
    assert stats['no_consumer'] == [] and stats['live'] == []
    support.close_all(out, waiting)


def test_a_consumer_back_within_the_grace_period_keeps_the_records(
        daemons, short_dir, registry, consumers, ctx):
    raw = registry.client()
    daemon = daemons(short_dir, redis_options(registry.port,
                                              agent_grace_period=30))
    out = support.sender(ctx, daemon)
    out.send_multipart(support.cast('compute.' + HOST))
    daemon.wait_stats(lambda s: 'compute.' + HOST in s['topics'])
    first = consumers(daemon.outlet('compute.' + HOST))
    wait_consumers(daemon, 'compute.' + HOST, 1)
    redis_server.wait_until(lambda: records(raw, 'compute'))
    first.kill()
    first.wait()
    wait_consumers(daemon, 'compute.' + HOST, 0)
    # A restarting service: away for a while, then back.
    consumers(daemon.outlet('compute.' + HOST))
    wait_consumers(daemon, 'compute.' + HOST, 1)
    syncs = daemon.stats()['agent']['registry']['syncs']
    daemon.wait_stats(
        lambda s: s['agent']['registry']['syncs'] >= syncs + 2)
    assert records(raw, 'compute')
    assert 'unregistered' not in daemon.log()
    support.close_all(out)


def test_records_come_back_after_redis_restarts(
        daemons, short_dir, registry, consumers, ctx):
    daemon = daemons(short_dir, redis_options(registry.port))
    out = support.sender(ctx, daemon)
    for topic in ('compute', 'scheduler'):
        out.send_multipart(support.cast('%s.%s' % (topic, HOST)))
        daemon.wait_stats(lambda s: '%s.%s' % (topic, HOST) in s['topics'])
        consumers(daemon.outlet('%s.%s' % (topic, HOST)))
        wait_consumers(daemon, '%s.%s' % (topic, HOST), 1)
    raw = registry.client()
    redis_server.wait_until(lambda: records(raw, 'compute') and
                            records(raw, 'scheduler'))
    port = registry.port

    registry.kill()
    # Down: the agent counts and says it, and forwarding goes on.
    daemon.wait_stats(lambda s: s['agent']['registry']['up'] is False)
    daemon.wait_for(r'Matchmaker agent: Redis at 127\.0\.0\.1:%d does not '
                    r'answer .*retrying in' % port)
    out.send_multipart(support.cast('compute.' + HOST))
    stats = daemon.wait_stats(lambda s: s['forwarded'] == 3)
    assert stats['agent']['errors'] >= 1

    # Back, empty (no persistence): every live record is written again.
    back = redis_server.RedisProcess(os.path.dirname(registry.directory),
                                     'redis', port=port).start()
    try:
        restarted = time.monotonic()
        raw = back.client()
        redis_server.wait_until(lambda: records(raw, 'compute') and
                                records(raw, 'scheduler'),
                                what='the records registered again')
        # Found at the next refresh (heartbeat_freq, 1 s here) or the
        # next retry (the backoff never waits longer than that).
        assert time.monotonic() - restarted <= 1.0 + TICK + SLACK
        daemon.wait_for(r'answers again; the records of 2 live topics')
        assert daemon.stats()['agent']['registry']['up'] is True
    finally:
        back.stop()
    support.close_all(out)


def test_registrations_of_this_host_are_bound_in_advance(
        daemons, short_dir, registry, consumers):
    raw = registry.client()
    service_ttl = 600

    def service_registers(topic, host):
        # What a legacy RPC server writes when it starts.
        for key in (topic, '%s.%s' % (topic, host)):
            member = '%s.%s' % (key, host)
            raw.sadd(key, member)
            raw.sadd(member, '')
            raw.expire(member, service_ttl)

    service_registers('conductor', HOST)
    service_registers('cert', HOST)
    service_registers('conductor', 'otherhost')
    daemon = daemons(short_dir, redis_options(
        registry.port, idle_timeout=0.1))
    daemon.wait_stats(lambda s: {'conductor.' + HOST, 'cert.' + HOST} <=
                      set(s['topics']))
    assert os.path.exists(daemon.path('conductor.' + HOST))
    assert not os.path.exists(daemon.path('conductor.otherhost'))
    # A service that was already there connects again at once.
    consumers(daemon.outlet('conductor.' + HOST))
    wait_consumers(daemon, 'conductor.' + HOST, 1)
    # cert's service never connects here: reported, but its records are
    # not the agent's to remove (they may be another project's receiver's
    # on this host); they end with their own TTL.
    daemon.wait_for(r'topics Redis holds records of for host testhost '
                    r'without a consumer for 1.5 s: cert;')
    syncs = daemon.stats()['agent']['registry']['syncs']
    stats = daemon.wait_stats(
        lambda s: s['agent']['registry']['syncs'] >= syncs + 2)
    assert records(raw, 'cert') and records(raw, 'conductor')
    assert stats['agent']['no_consumer'] == ['cert']
    assert stats['agent']['listed'] == ['cert', 'conductor']
    # Pinned: not reaped by the (tiny) idle timeout.
    assert stats['outlets_reaped'] == 0
    assert os.path.exists(daemon.path('cert.' + HOST))


def test_a_graceful_stop_removes_the_records_at_once(
        daemons, short_dir, registry, consumers, ctx):
    raw = registry.client()
    daemon = daemons(short_dir, redis_options(registry.port))
    out = support.sender(ctx, daemon)
    out.send_multipart(support.cast('compute.' + HOST))
    daemon.wait_stats(lambda s: 'compute.' + HOST in s['topics'])
    consumers(daemon.outlet('compute.' + HOST))
    wait_consumers(daemon, 'compute.' + HOST, 1)
    redis_server.wait_until(lambda: records(raw, 'compute'))
    assert daemon.stop() == 0
    # Removed before the process ended, with its consumer still there.
    assert gone(raw, 'compute')
    assert set(raw.keys()) == set()
    support.close_all(out)


def test_redis_down_at_start_and_at_the_stop(daemons, short_dir, consumers,
                                              ctx):
    directory = redis_server.temp_dir()
    port = redis_server.free_port()
    daemon = daemons(short_dir, redis_options(port))
    out = support.sender(ctx, daemon)
    out.send_multipart(support.cast('compute.' + HOST))
    daemon.wait_stats(lambda s: 'compute.' + HOST in s['topics'])
    consumers(daemon.outlet('compute.' + HOST))
    wait_consumers(daemon, 'compute.' + HOST, 1)
    stats = daemon.wait_stats(lambda s: s['agent']['errors'] >= 2)
    assert stats['agent']['registry']['up'] is False
    assert 'does not answer' in stats['agent']['registry']['last_error']
    assert stats['forwarded'] == 1
    server = redis_server.RedisProcess(directory, 'redis', port=port)
    try:
        server.start()
        raw = server.client()
        redis_server.wait_until(lambda: records(raw, 'compute'),
                                what='the records, once Redis is up')
        server.kill()
        daemon.wait_stats(lambda s: s['agent']['registry']['up'] is False)
        # Stops in order, without waiting for Redis.
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 5.0
        assert ('cannot remove the records of host testhost before '
                'stopping' in daemon.log())
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    support.close_all(out)


# -- ring ---------------------------------------------------------------------


def test_ring_topics_are_bound_in_advance_and_lonely_ones_reported(
        daemons, short_dir, ctx):
    ring = os.path.join(short_dir, 'ring.json')
    with open(ring, 'w') as f:
        json.dump({'compute': [HOST, 'other'], 'conductor': [HOST],
                   'scheduler': ['other']}, f)
    daemon = daemons(short_dir, {
        'DEFAULT': {'rpc_zmq_matchmaker': 'ring'},
        'matchmaker_ring': {'ringfile': ring},
        'zmq_receiver': {'matchmaker_agent': 'true',
                         'agent_grace_period': GRACE,
                         'idle_timeout': 0.1},
    })
    daemon.wait_for(r'Matchmaker agent \(ring\) for host testhost: '
                    r'pre-bound 5 outlets')
    for key in ('compute.' + HOST, 'fanout~compute', 'conductor.' + HOST,
                'fanout~conductor', 'zmq_replies.' + HOST):
        assert os.path.exists(daemon.path(key)), key
    assert not os.path.exists(daemon.path('scheduler.other'))
    assert not os.path.exists(daemon.path('fanout~scheduler'))
    consumer = support.pull(ctx, daemon, 'compute.' + HOST)
    wait_consumers(daemon, 'compute.' + HOST, 1)
    daemon.wait_for(r'topics the ring file lists for host testhost without '
                    r'a consumer for 1.5 s: conductor; .* remove this host '
                    r'from them in the ring file')
    stats = daemon.stats()
    assert stats['agent']['no_consumer'] == ['conductor']
    # Kept open although idle far beyond idle_timeout.
    assert stats['outlets_reaped'] == 0
    assert os.path.exists(daemon.path('conductor.' + HOST))
    # A ring sender's message reaches the pre-bound outlet's consumer.
    out = support.sender(ctx, daemon)
    out.send_multipart(support.cast('compute.' + HOST, b'hello'))
    assert support.recv(consumer)[3] == b'hello'

    # The consumer of conductor appears: the report is cleared.
    second = support.pull(ctx, daemon, 'conductor.' + HOST)
    daemon.wait_for(r'every topic the ring file lists for host testhost '
                    r'has a consumer')
    assert daemon.stats()['agent']['no_consumer'] == []
    second.close()

    # SIGHUP re-reads the ring: a new topic is bound, a removed one let go.
    with open(ring, 'w') as f:
        json.dump({'compute': [HOST], 'scheduler': [HOST, 'other']}, f)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(r'the ring file lists 2 topics for host testhost now: '
                    r'compute, scheduler')
    stats = daemon.wait_stats(
        lambda s: 'scheduler.' + HOST in s['topics'] and
        'fanout~conductor' not in s['topics'])
    assert os.path.exists(daemon.path('fanout~scheduler'))
    assert 'conductor.' + HOST not in stats['agent']['pinned']

    # A broken ring file on reload: logged, counted, the old ring kept.
    with open(ring, 'w') as f:
        f.write("{'compute': ['%s'],}" % HOST)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(r'keeping the ring read before, because Ring file')
    stats = daemon.wait_stats(lambda s: s['agent']['errors'] == 1)
    assert stats['agent']['listed'] == ['compute', 'scheduler']
    assert daemon.stop() == 0
    support.close_all(consumer, out, second)


# -- configuration errors -----------------------------------------------------


@pytest.mark.parametrize('options, expected', [
    ({'DEFAULT': {'rpc_zmq_matchmaker': 'local'}},
     r'rpc_zmq_matchmaker = local: the local matchmaker keeps no records'),
    ({'DEFAULT': {'rpc_zmq_matchmaker': 'redis',
                  'matchmaker_heartbeat_freq': 600,
                  'matchmaker_heartbeat_ttl': 600}},
     r'matchmaker_heartbeat_freq = 600 and matchmaker_heartbeat_ttl = 600'),
    ({'DEFAULT': {'rpc_zmq_matchmaker': 'ring'},
      'matchmaker_ring': {'ringfile': '/nonexistent/ring.json'}},
     r'Ring file /nonexistent/ring.json: no such file'),
    ({'DEFAULT': {'rpc_zmq_matchmaker': 'redis'},
      'matchmaker_redis': {'sentinel_hosts': 'sentinel1:notaport'}},
     r'sentinel_hosts: .* is not host:port'),
])
def test_a_matchmaker_mistake_is_a_configuration_error(short_dir, options,
                                                       expected):
    options = dict(options)
    options['zmq_receiver'] = {'matchmaker_agent': 'true'}
    daemon = support.Daemon(short_dir, options)
    status, output = support.run_receiver(daemon.args, cwd=short_dir)
    assert status == 78, output
    assert re.search(expected, output), output
    # Nothing was touched before the check.
    assert not os.path.exists(daemon.ipc_dir)
