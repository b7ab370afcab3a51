"""The Redis matchmaker against real Redis servers and Sentinels.

Records are laid out by hand exactly as PROTOCOL.md section 6 says real
oslo.messaging services write them, and the matchmaker's own records are
compared key by key with that layout, so that both are interchangeable.
"""

import queue
import shutil
import threading
import time

import pytest

from tests import redis_server
from tests.redis_server import PASSWORD
from zmq_receiver import matchmaker
from zmq_receiver.matchmaker import redis as redis_mm


@pytest.fixture
def raw(redis_plain):
    """A plain client, to lay out and read keys by hand."""
    client = redis_plain.client()
    yield client
    client.close()


@pytest.fixture
def mm(redis_plain):
    made = redis_mm.RedisMatchMaker(port=redis_plain.port,
                                    socket_timeout=5.0)
    yield made
    made.close()


def service_registers(raw, topic, host, ttl=600):
    """What a legacy RPC server on *host* writes for *topic* at start:
    register(topic, host) and register(topic.host, host), each a MULTI of
    two SADDs followed by an EXPIRE (its first heartbeat)."""
    for key in (topic, '%s.%s' % (topic, host)):
        member = '%s.%s' % (key, host)
        pipe = raw.pipeline(transaction=True)
        pipe.sadd(key, member)
        pipe.sadd(member, '')
        pipe.execute()
        raw.expire(member, ttl)


def everything(raw):
    """{key: (members, ttl)} of the whole database."""
    return {key: (raw.smembers(key), raw.ttl(key)) for key in raw.keys()}


def wait_gone(raw, key):
    redis_server.wait_until(lambda: not raw.exists(key),
                            what='key %s expiring' % key)


# -- interoperability --------------------------------------------------------


def test_records_laid_out_by_a_service_are_found(raw, mm):
    service_registers(raw, 'compute', 'host1')
    service_registers(raw, 'compute', 'host2')
    assert mm.hosts('compute') == ['host1', 'host2']
    # Fanout with Redis goes out as directed topics.
    assert mm.queues('fanout~compute') == [('compute.host1', 'host1'),
                                           ('compute.host2', 'host2')]
    picked = {mm.queues('compute')[0] for _ in range(200)}
    assert picked == {('compute.host1', 'host1'), ('compute.host2', 'host2')}
    assert mm.queues('compute.host7') == [('compute.host7', 'host7')]
    assert mm.queues('scheduler') == []
    assert mm.topics() == {'compute': ['host1', 'host2']}
    assert mm.served_by('host2') == ['compute']


def test_register_writes_exactly_what_a_service_writes(raw, mm):
    service_registers(raw, 'compute', 'host1', ttl=600)
    by_hand = everything(raw)
    raw.flushall()
    mm.register_server('compute', 'host1', ttl=600)
    ours = everything(raw)
    assert {k: members for k, (members, ttl) in ours.items()} == {
        'compute': {'compute.host1'},
        'compute.host1': {'', 'compute.host1.host1'},
        'compute.host1.host1': {''},
    }
    assert {k: members for k, (members, _) in ours.items()} == {
        k: members for k, (members, _) in by_hand.items()}
    # The topic set never expires; the liveness keys carry the TTL.
    assert ours['compute'][1] == -1
    assert 590 <= ours['compute.host1'][1] <= 600
    assert 590 <= ours['compute.host1.host1'][1] <= 600


def test_unregister_removes_what_register_wrote(raw, mm):
    service_registers(raw, 'compute', 'host2')
    mm.register_server('compute', 'host1')
    mm.unregister_server('compute', 'host1')
    assert set(raw.keys()) == {'compute', 'compute.host2',
                               'compute.host2.host2'}
    assert raw.smembers('compute') == {'compute.host2'}
    assert mm.hosts('compute') == ['host2']


def test_a_member_whose_key_expired_is_removed_by_the_lookup(raw, mm):
    service_registers(raw, 'compute', 'host1')
    service_registers(raw, 'compute', 'host2')
    raw.pexpire('compute.host2', 50)
    wait_gone(raw, 'compute.host2')
    # Dead but still listed: TTL answers -2.
    assert raw.smembers('compute') == {'compute.host1', 'compute.host2'}
    assert raw.ttl('compute.host2') == -2
    assert mm.queues('compute') == [('compute.host1', 'host1')]
    assert raw.smembers('compute') == {'compute.host1'}


def test_fanout_lookup_removes_dead_members_too(raw, mm):
    service_registers(raw, 'network', 'host1')
    raw.sadd('network', 'network.host3')  # listed, with no key at all
    assert mm.queues('fanout~network') == [('network.host1', 'host1')]
    assert raw.smembers('network') == {'network.host1'}


def test_a_record_without_ttl_stays_alive(raw, mm):
    raw.sadd('cert', 'cert.host1')
    raw.sadd('cert.host1', '')
    assert raw.ttl('cert.host1') == -1
    assert mm.hosts('cert') == ['host1']
    mm.register('cert', 'host2', ttl=0)
    assert raw.ttl('cert.host2') == -1
    assert mm.hosts('cert') == ['host1', 'host2']


def test_a_registration_expires_after_its_ttl(raw, mm):
    mm.register('compute', 'host1', ttl=1)
    assert mm.hosts('compute') == ['host1']
    wait_gone(raw, 'compute.host1')
    assert mm.hosts('compute') == []
    assert not raw.exists('compute')


def test_ack_alive_refreshes_the_ttl(raw, mm):
    mm.register('compute', 'host1', ttl=600)
    raw.expire('compute.host1', 5)
    mm.ack_alive('compute', 'host1')
    assert 590 <= raw.ttl('compute.host1') <= 600


def test_ack_alive_registers_again_after_expiry_and_pruning(raw, mm):
    mm.register('compute', 'host1', ttl=600)
    raw.pexpire('compute.host1', 50)
    wait_gone(raw, 'compute.host1')
    assert mm.hosts('compute') == []  # the lookup removed it
    mm.ack_alive('compute', 'host1')
    assert mm.hosts('compute') == ['host1']
    assert 590 <= raw.ttl('compute.host1') <= 600


def test_expire_spares_a_member_that_came_back(raw, mm):
    service_registers(raw, 'compute', 'host1')
    assert mm.expire('compute', 'compute.host1') is False
    assert raw.smembers('compute') == {'compute.host1'}


def test_prune_removes_only_the_dead(raw, mm):
    service_registers(raw, 'compute', 'host1')
    service_registers(raw, 'compute', 'host2')
    raw.sadd('scheduler', 'scheduler.host9')
    raw.pexpire('compute.host2.host2', 50)
    raw.pexpire('compute.host2', 50)
    wait_gone(raw, 'compute.host2')
    wait_gone(raw, 'compute.host2.host2')
    # The set compute.host2 expired with its member compute.host2.host2:
    # what is left dead is what the bare topics list.
    dead = [('compute', 'compute.host2'), ('scheduler', 'scheduler.host9')]
    assert mm.prune(dry_run=True) == dead
    assert raw.smembers('scheduler') == {'scheduler.host9'}
    assert mm.prune() == dead
    assert mm.prune() == []
    assert set(raw.keys()) == {'compute', 'compute.host1',
                               'compute.host1.host1'}


def test_records_ignore_other_data_in_the_database(raw, mm):
    service_registers(raw, 'compute', 'host1')
    raw.set('some-app:counter', 3)
    raw.sadd('some-app:set', 'a', 'b')
    raw.sadd('nodots', 'x')
    raw.hset('some-app:hash', 'k', 'v')
    assert mm.topics() == {'compute': ['host1']}
    assert [r[:3] for r in mm.records()] == [
        ('compute', 'compute.host1', 'host1'),
        ('compute.host1', 'compute.host1.host1', 'host1')]


def test_a_topic_key_of_another_type_is_named(raw, mm):
    raw.set('compute', 'not a set')
    with pytest.raises(matchmaker.MatchMakerError) as info:
        mm.hosts('compute')
    assert 'another application' in str(info.value)


# -- password and availability -----------------------------------------------


def test_password_is_used(redis_locked):
    with redis_mm.RedisMatchMaker(port=redis_locked.port,
                                  password=PASSWORD) as mm:
        mm.register_server('compute', 'host1')
        assert mm.hosts('compute') == ['host1']
        assert mm.ping().endswith('master at 127.0.0.1:%d'
                                  % redis_locked.port)
    assert redis_locked.client().smembers('compute') == {'compute.host1'}


@pytest.mark.parametrize('password, expected', [
    ('wrong', 'refused the password'),
    (None, 'requires a password, and none is set'),
    ('', 'requires a password, and none is set'),
])
def test_a_wrong_or_missing_password_is_named_at_once(redis_locked,
                                                     password, expected):
    started = time.monotonic()
    with redis_mm.RedisMatchMaker(port=redis_locked.port,
                                  password=password) as mm:
        with pytest.raises(matchmaker.MatchMakerError) as info:
            mm.hosts('compute')
    assert expected in str(info.value)
    assert '[matchmaker_redis] password' in str(info.value)
    # No retry with backoff (about 5 s) for what no retry can fix.
    assert time.monotonic() - started < 2.0


def test_a_server_that_does_not_answer_is_named():
    port = redis_server.free_port()
    with redis_mm.RedisMatchMaker(port=port, retries=0,
                                  socket_timeout=2.0) as mm:
        with pytest.raises(matchmaker.RegistryUnavailable) as info:
            mm.queues('compute')
    assert 'Redis at 127.0.0.1:%d does not answer' % port in str(info.value)


def test_retries_ride_out_a_restart():
    # The server goes away and comes back on the same port: a lookup made
    # while it is down is answered once it is back.
    directory = redis_server.temp_dir()
    first = redis_server.start_server(directory, 'redis')
    second = None
    try:
        with redis_mm.RedisMatchMaker(port=first.port,
                                      socket_timeout=2.0) as mm:
            mm.register('compute', 'host1', ttl=0)
            first.client().save()
            first.stop()
            answers = queue.Queue()
            lookup = threading.Thread(
                target=lambda: answers.put(mm.hosts('compute')), daemon=True)
            lookup.start()
            # The same directory and port: it loads what the first saved.
            second = redis_server.RedisProcess(directory, 'redis',
                                               port=first.port).start()
            assert answers.get(timeout=redis_server.TIMEOUT) == ['host1']
    finally:
        first.stop()
        if second is not None:
            second.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- Sentinel ----------------------------------------------------------------


@pytest.fixture
def cluster():
    directory = redis_server.temp_dir()
    started = redis_server.SentinelCluster(directory, group='zmq-test',
                                           password=PASSWORD)
    try:
        yield started.start()
    finally:
        started.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_the_registry_survives_the_loss_of_its_master(cluster):
    old_master = cluster.master.port
    with redis_mm.RedisMatchMaker(
            sentinel_hosts=cluster.sentinel_hosts, sentinel_group='zmq-test',
            password=PASSWORD, socket_timeout=1.0, retries=30) as mm:
        assert mm.master_address() == ('127.0.0.1', old_master)
        mm.register_server('compute', 'host1')
        mm.register_server('compute', 'host2')
        # Both records are on the replica before the master dies.
        assert cluster.master.client().wait(1, 5000) == 1
        cluster.master.kill()
        # Asked at once, while the Sentinels are still noticing: redis-py
        # retries with backoff and finds the new master through them.
        assert mm.hosts('compute') == ['host1', 'host2']
        assert cluster.master_port() == cluster.replica.port
        assert mm.master_address() == ('127.0.0.1', cluster.replica.port)
        mm.register_server('compute', 'host3')
        assert mm.hosts('compute') == ['host1', 'host2', 'host3']
        assert 'master at 127.0.0.1:%d' % cluster.replica.port in mm.ping()
    promoted = cluster.replica.client()
    assert promoted.smembers('compute') == {'compute.host1', 'compute.host2',
                                            'compute.host3'}


def test_a_dead_sentinel_is_skipped(cluster):
    cluster.sentinels[0].kill()
    with redis_mm.RedisMatchMaker(
            sentinel_hosts=cluster.sentinel_hosts, sentinel_group='zmq-test',
            password=PASSWORD, socket_timeout=1.0) as mm:
        mm.register('compute', 'host1')
        assert mm.hosts('compute') == ['host1']


def test_an_unknown_sentinel_group_is_named(cluster):
    with redis_mm.RedisMatchMaker(
            sentinel_hosts=cluster.sentinel_hosts, sentinel_group='nope',
            password=PASSWORD, socket_timeout=1.0, retries=0) as mm:
        with pytest.raises(matchmaker.RegistryUnavailable) as info:
            mm.hosts('compute')
    assert "master for 'nope'" in str(info.value)
    assert 'sentinel_group_name' in str(info.value)
