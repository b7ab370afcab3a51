"""The ring matchmaker (PROTOCOL.md section 6) and how a matchmaker is
chosen from ``rpc_zmq_matchmaker`` (section 5).

Pure lookups and parsing; the only I/O is the ring file in a temporary
directory.
"""

import collections
import json
import logging
import os

from oslo_config import cfg
import pytest

from zmq_receiver import matchmaker
from zmq_receiver import opts
from zmq_receiver.matchmaker import local
from zmq_receiver.matchmaker import ring

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RING = {'scheduler': ['host1', 'host2'],
        'conductor': ['host1', 'host2', 'host3']}

# The old deployment guide's example, as operators copy it: single quotes
# and a trailing comma.
GUIDE_EXAMPLE = """{
'scheduler': ['host1', 'host2'],
'conductor': ['host1', 'host2'],
}
"""


def write(tmp_path, text, name='matchmaker_ring.json'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def ring_file(tmp_path):
    return write(tmp_path, json.dumps(RING))


@pytest.fixture
def mm(ring_file):
    return ring.RingMatchMaker(ring_file)


# -- lookups -----------------------------------------------------------------


def test_bare_topic_goes_round_robin_to_one_host_at_a_time(mm):
    picked = [mm.queues('scheduler') for _ in range(5)]
    assert picked == [
        [('scheduler.host1', 'host1')], [('scheduler.host2', 'host2')],
        [('scheduler.host1', 'host1')], [('scheduler.host2', 'host2')],
        [('scheduler.host1', 'host1')]]


def test_round_robin_is_kept_per_topic(mm):
    assert mm.queues('conductor') == [('conductor.host1', 'host1')]
    assert mm.queues('scheduler') == [('scheduler.host1', 'host1')]
    assert mm.queues('conductor') == [('conductor.host2', 'host2')]
    assert mm.queues('conductor') == [('conductor.host3', 'host3')]
    assert mm.queues('scheduler') == [('scheduler.host2', 'host2')]


def test_round_robin_spreads_evenly(mm):
    counts = collections.Counter(mm.queues('conductor')[0][1]
                                 for _ in range(300))
    assert counts == {'host1': 100, 'host2': 100, 'host3': 100}


def test_fanout_goes_to_every_listed_host(mm):
    assert mm.queues('fanout~conductor') == [
        ('fanout~conductor.host1', 'host1'),
        ('fanout~conductor.host2', 'host2'),
        ('fanout~conductor.host3', 'host3')]
    # ...every time: a fanout does not move the round-robin.
    assert mm.queues('fanout~conductor') == mm.queues('fanout~conductor')
    assert mm.queues('conductor') == [('conductor.host1', 'host1')]


def test_directed_topic_needs_no_lookup(mm):
    # Even for a host or topic the ring does not list.
    assert mm.queues('scheduler.host2') == [('scheduler.host2', 'host2')]
    assert mm.queues('compute.host9') == [('compute.host9', 'host9')]
    assert mm.queues('compute.host9.example.org') == [
        ('compute.host9.example.org', 'host9.example.org')]


def test_unlisted_topic_has_no_queue(mm):
    assert mm.queues('compute') == []
    assert mm.queues('fanout~compute') == []
    # As the legacy exchange: a fanout of a directed topic is no lookup
    # of the bare one.
    assert mm.queues('fanout~scheduler.host1') == []


def test_hosts_and_topics(mm):
    assert mm.hosts('conductor') == ['host1', 'host2', 'host3']
    assert mm.hosts('compute') == []
    assert mm.served_by('host1') == ['conductor', 'scheduler']
    assert mm.served_by('host3') == ['conductor']
    assert mm.served_by('host9') == []
    assert mm.topics() == RING
    mm.topics()['scheduler'].append('mutated')
    assert mm.hosts('scheduler') == ['host1', 'host2']


def test_registration_is_a_no_op_on_a_static_ring(mm):
    assert not mm.dynamic
    mm.register_server('compute', 'host9')
    mm.unregister('scheduler', 'host1')
    assert mm.topics() == RING


# -- reload (SIGHUP) ---------------------------------------------------------


def test_reload_reads_the_changed_file(tmp_path, ring_file, mm):
    assert mm.queues('scheduler') == [('scheduler.host1', 'host1')]
    assert mm.reload() is False
    write(tmp_path, json.dumps({'scheduler': ['host7', 'host8', 'host9']}))
    assert mm.reload() is True
    assert mm.hosts('conductor') == []
    # The round-robin goes on from where it was.
    assert mm.queues('scheduler') == [('scheduler.host8', 'host8')]


def test_reload_of_a_broken_file_keeps_the_ring_in_use(tmp_path, ring_file,
                                                       mm):
    write(tmp_path, GUIDE_EXAMPLE)
    with pytest.raises(ring.RingFileError) as info:
        mm.reload()
    assert info.value.path == ring_file
    assert mm.topics() == RING
    assert mm.queues('fanout~scheduler') == [
        ('fanout~scheduler.host1', 'host1'),
        ('fanout~scheduler.host2', 'host2')]


# -- broken files ------------------------------------------------------------


def test_single_quotes_get_their_own_hint_with_line_and_column(tmp_path):
    path = write(tmp_path, "{\"scheduler\": ['host1']}")
    with pytest.raises(ring.RingFileError) as info:
        ring.load(path)
    error = info.value
    assert (error.path, error.line, error.column) == (path, 1, 16)
    assert len(error.hints) == 1
    assert 'single quotes at line 1, column 16' in error.hints[0]
    assert 'double quotes' in error.hints[0]
    message = str(error)
    assert message.startswith('Ring file %s, line 1, column 16: not valid '
                              'JSON' % path)
    assert 'old deployment guide' in message


def test_trailing_comma_gets_its_own_hint_with_its_place(tmp_path):
    path = write(tmp_path, '{\n  "scheduler": ["host1", "host2"],\n'
                           '  "conductor": ["host1"],\n}\n')
    with pytest.raises(ring.RingFileError) as info:
        ring.load(path)
    error = info.value
    # json stops at the closing brace; the hint points at the comma.
    assert (error.line, error.column) == (4, 1)
    assert len(error.hints) == 1
    assert 'trailing comma at line 3, column 25' in error.hints[0]
    assert 'remove it' in error.hints[0]


def test_trailing_comma_in_a_host_list(tmp_path):
    path = write(tmp_path, '{"scheduler": ["host1", "host2",]}')
    with pytest.raises(ring.RingFileError) as info:
        ring.load(path)
    assert (info.value.line, info.value.column) == (1, 33)
    assert ['trailing comma at line 1, column 32' in h
            for h in info.value.hints] == [True]


def test_the_guides_example_gets_both_hints(tmp_path):
    path = write(tmp_path, GUIDE_EXAMPLE)
    with pytest.raises(ring.RingFileError) as info:
        ring.load(path)
    error = info.value
    assert (error.line, error.column) == (2, 1)
    assert len(error.hints) == 2
    assert 'single quotes at line 2, column 1' in error.hints[0]
    assert 'trailing comma at line 3, column 32' in error.hints[1]


def test_other_json_mistakes_give_the_place_and_no_guide_hint(tmp_path):
    path = write(tmp_path, '{"scheduler": ["host1", "it\'s"]\n"x": []}')
    with pytest.raises(ring.RingFileError) as info:
        ring.load(path)
    assert (info.value.line, info.value.column) == (2, 1)
    assert "Expecting ',' delimiter" in str(info.value)
    # The quote inside a JSON string is not the guide's mistake.
    assert info.value.hints == []


def test_host_list_given_as_a_string(tmp_path):
    path = write(tmp_path, '{"scheduler": ["host1"],\n "conductor": "host1"}')
    with pytest.raises(ring.RingFileError) as info:
        ring.load(path)
    assert info.value.line == 2
    assert 'must be a list, not a string' in str(info.value)
    assert '"conductor": ["host1"]' in str(info.value)


@pytest.mark.parametrize('text, expected', [
    ('["host1"]', 'not an object'),
    ('{"scheduler": [1]}', 'is 1, not a string'),
    ('{"scheduler": ["host 1"]}', "contains ' '"),
    ('{"scheduler": [""]}', 'is empty'),
    ('{"sched/uler": ["host1"]}', "contains '/'"),
    ('{"scheduler": {"host1": 1}}', 'must be a list of host names'),
])
def test_unusable_content_is_refused(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ring.RingFileError) as info:
        ring.load(path)
    assert expected in str(info.value)


def test_missing_file_names_the_option(tmp_path):
    path = str(tmp_path / 'absent.json')
    with pytest.raises(ring.RingFileError) as info:
        ring.RingMatchMaker(path)
    assert path in str(info.value)
    assert '[matchmaker_ring] ringfile' in str(info.value)


def test_not_utf8_has_a_place(tmp_path):
    path = tmp_path / 'ring.json'
    path.write_bytes(b'{"scheduler":\n ["h\xffst1"]}')
    with pytest.raises(ring.RingFileError) as info:
        ring.load(str(path))
    assert (info.value.line, info.value.column) == (2, 5)


def test_suspicious_but_usable_content_gives_warnings(tmp_path):
    path = write(tmp_path, json.dumps({
        'scheduler': ['host1', 'host1'],
        'compute.host1': ['host1'],
        'cert': [],
        'conductor': ['host2.example.org'],
    }))
    loaded = ring.load(path)
    assert loaded.topics['scheduler'] == ['host1', 'host1']
    text = '\n'.join(loaded.warnings)
    assert len(loaded.warnings) == 4, text
    assert "'scheduler' lists a host more than once" in text
    assert "'compute.host1' has a dot" in text
    assert "'cert' lists no host" in text
    assert 'host2.example.org' in text


def test_duplicate_topic_is_a_warning_and_the_last_wins(tmp_path):
    path = write(tmp_path, '{"scheduler": ["host1"],\n'
                           '"scheduler": ["host2"]}')
    loaded = ring.load(path)
    assert loaded.topics == {'scheduler': ['host2']}
    assert loaded.warnings == ["topic 'scheduler' is listed twice; the last "
                               "list wins (line 1)"]


def test_the_sample_ring_file_is_clean():
    loaded = ring.load(os.path.join(REPO, 'etc',
                                    'matchmaker_ring.json.sample'))
    assert loaded.warnings == []
    assert loaded.topics['compute'] == ['compute1', 'compute2', 'compute3']


def test_written_ring_loads_back(tmp_path):
    path = str(tmp_path / 'out.json')
    ring.write(path, {'b': ['h2', 'h1'], 'a': ['h1']})
    assert ring.load(path).topics == {'a': ['h1'], 'b': ['h2', 'h1']}
    assert list(tmp_path.iterdir()) == [tmp_path / 'out.json']


# -- choosing a matchmaker ---------------------------------------------------


@pytest.mark.parametrize('value, name', [
    ('local', 'local'),
    ('ring', 'ring'),
    ('redis', 'redis'),
    (' Redis ', 'redis'),
])
def test_names_select_without_warning(value, name):
    assert matchmaker.resolve_name(value) == (name, None)


@pytest.mark.parametrize('value, name', [
    ('oslo.messaging._drivers.matchmaker_ring.MatchMakerRing', 'ring'),
    ('oslo_messaging._drivers.matchmaker_ring.MatchMakerRing', 'ring'),
    ('oslo.messaging._drivers.matchmaker_redis.MatchMakerRedis', 'redis'),
    ('oslo_messaging._drivers.matchmaker_redis.MatchMakerRedis', 'redis'),
    ('oslo.messaging._drivers.matchmaker.MatchMakerLocalhost', 'local'),
    ('oslo_messaging._drivers.matchmaker.MatchMakerLocalhost', 'local'),
    ('nova.openstack.common.rpc.matchmaker_ring.MatchMakerRing', 'ring'),
    # Written before the ring had a module of its own.
    ('oslo.messaging._drivers.matchmaker.MatchMakerRing', 'ring'),
])
def test_legacy_class_paths_select_with_a_deprecation(value, name):
    got, warning = matchmaker.resolve_name(value)
    assert got == name
    assert 'deprecated' in warning
    assert 'rpc_zmq_matchmaker = %s' % name in warning
    assert 'typo' not in warning


def test_the_guides_typo_means_redis_and_says_so():
    name, warning = matchmaker.resolve_name(
        'oslo.messaging._drivers.matchmaker_ring.MatchMakerRedis')
    assert name == 'redis'
    assert 'deprecated' in warning and 'typo' in warning


@pytest.mark.parametrize('value, expected', [
    ('zookeeper', 'no such matchmaker'),
    ('', 'no such matchmaker'),
    ('oslo.messaging._drivers.matchmaker_ring.MatchMakerRings',
     'no such matchmaker'),
    ('oslo.messaging._drivers.matchmaker.MatchMakerStub', 'stub'),
])
def test_anything_else_is_refused(value, expected):
    with pytest.raises(matchmaker.MatchMakerError) as info:
        matchmaker.resolve_name(value)
    assert expected in str(info.value)
    assert 'local, ring or redis' in str(info.value)


def make_conf(tmp_path, text):
    path = tmp_path / 'service.conf'
    path.write_text(text)
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], default_config_files=[])
    return conf


def test_a_service_config_selects_the_ring_with_a_warning(tmp_path,
                                                          ring_file,
                                                          caplog):
    conf = make_conf(tmp_path, (
        '[DEFAULT]\n'
        'rpc_backend = zmq\n'
        'rpc_zmq_matchmaker = '
        'oslo.messaging._drivers.matchmaker_ring.MatchMakerRing\n'
        '[matchmaker_ring]\n'
        'ringfile = %s\n' % ring_file))
    with caplog.at_level(logging.WARNING):
        mm = matchmaker.from_conf(conf)
    assert isinstance(mm, ring.RingMatchMaker)
    assert mm.topics() == RING
    assert ['deprecated' in r.getMessage() for r in caplog.records] == [True]


def test_the_legacy_ringfile_option_in_default_still_works(tmp_path,
                                                           ring_file):
    conf = make_conf(tmp_path, '[DEFAULT]\nrpc_zmq_matchmaker = ring\n'
                               'matchmaker_ringfile = %s\n' % ring_file)
    assert matchmaker.from_conf(conf).topics() == RING


def test_local_sends_everything_to_this_host(tmp_path):
    conf = make_conf(tmp_path, '[DEFAULT]\nrpc_zmq_host = node1\n')
    mm = matchmaker.from_conf(conf)
    assert isinstance(mm, local.LocalMatchMaker)
    assert mm.queues('compute') == [('compute.node1', 'node1')]
    assert mm.queues('fanout~compute') == [('fanout~compute.node1',
                                            'node1')]
    assert mm.queues('compute.node2') == [('compute.node2', 'node2')]


def test_redis_options_read_as_a_service_writes_them(tmp_path):
    conf = make_conf(tmp_path, (
        '[DEFAULT]\nrpc_zmq_matchmaker = redis\n'
        'matchmaker_heartbeat_freq = 20\nmatchmaker_heartbeat_ttl = 60\n'
        '[matchmaker_redis]\nhost = 192.0.2.1\nport = 6380\n'
        'password = s3cret\n'
        'sentinel_hosts = s1:26379, s2, [2001:db8::1]:26380\n'
        'sentinel_group_name = mymaster\nsocket_timeout = 2500\n'))
    mm = matchmaker.from_conf(conf)
    try:
        assert (mm.name, mm.dynamic) == ('redis', True)
        assert mm.sentinel_hosts == [('s1', 26379), ('s2', 26379),
                                     ('2001:db8::1', 26380)]
        assert mm.sentinel_group == 'mymaster'
        assert (mm.heartbeat_freq, mm.heartbeat_ttl) == (20, 60)
        assert mm.password == 's3cret'
        kwargs = mm.client.connection_pool.connection_kwargs
        assert kwargs['socket_timeout'] == 2.5
    finally:
        mm.close()


@pytest.mark.parametrize('value', ['s1:port', 's1:0', '[::1', ':26379'])
def test_bad_sentinel_hosts_are_refused(value):
    from zmq_receiver.matchmaker import redis as redis_mm
    with pytest.raises(matchmaker.MatchMakerError) as info:
        redis_mm.parse_sentinel_hosts([value])
    assert 'sentinel_hosts' in str(info.value)
