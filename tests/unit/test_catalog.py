"""The topic catalog's shape, and that it covers the community ring files.

The community rings are the ones operators started from (one per project,
github.com/skywalker-nick/zmq-for-oslo, matchmakers/*_matchmaker_ring.json):
their topics are written out here, with their placeholder host names, so
that ``ring build`` can be asked to reproduce them from an inventory that
matches them.
"""

import copy
import json

import pytest

from zmq_receiver.admin import catalog as catalog_mod
from zmq_receiver.admin import ring_build

CEILO = 'ceilometer_host'
NEUTRON = 'neutron_hosts'
COMMUNITY = {
    'nova': {t: ['controller1'] for t in (
        'conductor', 'scheduler', 'network', 'cert', 'console',
        'consoleauth')} | {'compute': ['computer1'], 'metering': [CEILO],
                           'notifications-info': [CEILO],
                           'notifications-error': [CEILO]},
    'neutron': {t: [NEUTRON] for t in (
        'q-plugin', 'q-l3-plugin', 'q-firewall-plugin', 'q-metering-plugin',
        'l3_agent', 'dhcp_agent', 'metering_agent', 'ipsec_driver',
        'ipsec_agent', 'cisco_csr_ipsec_driver', 'cisco_csr_ipsec_agent',
        'n-lbaas-plugin', 'n-lbaas_agent', 'zmq_replies',
        'q-agent-notifier-l2population-update',
        'q-agent-notifier-network-delete', 'q-agent-notifier-port-update',
        'q-agent-notifier-security_group-update',
        'q-agent-notifier-dvr-update')} | {
            'notifications-info': [CEILO], 'notifications-error': [CEILO],
            'metering': [CEILO]},
    'cinder': {'cinder-scheduler': ['controller1'],
               'cinder-volume': ['controller1'],
               'cinder-backup': ['controller1'],
               'notifications': [CEILO], 'notifications-error': [CEILO],
               'notifications-info': [CEILO]},
    'heat': {'engine': ['heat_host']},
    'ceilometer': {t: [CEILO] for t in (
        'metering', 'notifications-info', 'notifications-error',
        'alarm_notifier', 'alarm_partition_coordination')},
    'sahara': {'sahara-ops': ['sahara_host'], 'metering': [CEILO],
               'notifications-info': [CEILO],
               'notifications-error': [CEILO]},
    'trove': {t: ['trove_hosts'] for t in (
        'trove', 'taskmanager', 'trove-conductor', 'guestagent',
        'zmq_replies')},
}
#: The inventory those rings imply (placeholder hosts as they have them).
INVENTORY = {
    'controller1': {'nova-conductor', 'nova-scheduler', 'nova-network',
                    'nova-cert', 'nova-console', 'nova-consoleauth',
                    'cinder-scheduler', 'cinder-volume', 'cinder-backup'},
    'computer1': {'nova-compute'},
    CEILO: {'ceilometer-collector', 'ceilometer-agent-notification',
            'ceilometer-alarm-notifier', 'ceilometer-alarm-evaluator'},
    NEUTRON: {'neutron-server', 'neutron-openvswitch-agent',
              'neutron-dhcp-agent', 'neutron-l3-agent',
              'neutron-metering-agent', 'neutron-lbaas-agent',
              'neutron-vpn-agent'},
    'heat_host': {'heat-engine'},
    'sahara_host': {'sahara-engine'},
    'trove_hosts': {'trove-taskmanager', 'trove-conductor',
                    'trove-guestagent'},
}
#: What a built ring has beyond the community one, and why.
NOTIFICATIONS = {'notifications-info', 'notifications-error'}
EXTRA = {
    # GRE/VXLAN tunnels; missing from the community neutron ring.
    'neutron': {'q-agent-notifier-tunnel-update'},
    # Their services send notifications, which these rings had nowhere to
    # send (the driver finds no host and drops them).
    'heat': NOTIFICATIONS,
    'trove': NOTIFICATIONS,
}
PROJECTS = ('nova', 'neutron', 'cinder', 'heat', 'ceilometer', 'glance',
            'keystone', 'trove', 'sahara', 'ironic')
RELEASES = ('icehouse', 'juno', 'kilo', 'liberty')


@pytest.fixture(scope='module')
def catalog():
    return catalog_mod.load()


#: The topics whose source could not be read at any of RELEASES, by name,
#: so that they stay in sight; each says in the catalog what was searched.
UNVERIFIED = {('nova', 'consoleauth'), ('nova', 'cells')}


def test_every_project_and_release_is_there(catalog):
    assert set(PROJECTS) <= set(catalog.projects)
    for name in PROJECTS:
        assert set(RELEASES) <= set(catalog.project(name)['releases']), name


def test_every_topic_cites_its_source_or_says_it_could_not(catalog):
    unverified = set()
    for name, project in catalog.projects.items():
        for key, topic in project['topics'].items():
            if topic.get('verified') is False:
                unverified.add((name, key))
                assert topic['searched'], (name, key)
                continue
            for citation in topic['sources']:
                assert citation['file'].endswith('.py'), (name, key)
                assert '/' in citation['repo'], (name, key)
                assert isinstance(citation['line'], int), (name, key)
                assert len(citation['commit']) == 40, (name, key)
                assert set(citation['releases']) <= set(RELEASES), (name, key)
    assert unverified == UNVERIFIED, (
        'unverified topics changed: now %s' % sorted(unverified))
    assert [(p, k) for p, k, _ in catalog.unverified()] == sorted(UNVERIFIED)


def test_every_project_has_a_cited_release(catalog):
    # Not every release of every topic could be read; each project has at
    # least one topic cited at a version judged to be of a named release.
    for name in PROJECTS:
        cited = {r for topic in catalog.project(name)['topics'].values()
                 for citation in topic.get('sources', ())
                 for r in citation['releases']}
        assert cited, name


def _a_topic(data, project='heat', key='engine'):
    return data['projects'][project]['topics'][key]


@pytest.mark.parametrize('change,problem', [
    (lambda t: t.pop('sources'), 'heat: topic engine cites no source'),
    (lambda t: t['sources'][0].update(line=None),
     'heat: topic engine has a source without line'),
    (lambda t: t['sources'][0].pop('commit'),
     'heat: topic engine has a source without commit'),
    (lambda t: t['sources'][0].update(commit='009c2a21'),
     "heat: topic engine cites commit '009c2a21', not 40 hex digits"),
    (lambda t: t['sources'][0].update(releases=['havana']),
     "heat: topic engine cites releases ['havana'] outside"),
    (lambda t: (t.pop('sources'), t.update(verified=False)),
     'heat: topic engine is unverified without saying what was searched'),
    (lambda t: t.update(verified=False, searched='x'),
     'heat: topic engine is marked unverified but cites sources'),
    (lambda t: t.update(verified=True),
     'heat: topic engine has "verified": True (only false is allowed)'),
    (lambda t: t.update(releases=['havana']),
     "heat: topic engine exists at releases ['havana'] outside"),
])
def test_a_topic_without_a_checkable_source_is_refused(catalog, change,
                                                        problem):
    data = copy.deepcopy(catalog.data)
    change(_a_topic(data))
    with pytest.raises(catalog_mod.CatalogError) as info:
        catalog_mod.Catalog(data)
    assert problem in str(info.value)


def test_a_topic_that_did_not_exist_at_a_release_is_left_out(catalog):
    # DVR came with Juno; sahara's engine (sahara-ops) too.
    assert 'q-agent-notifier-dvr-update' in catalog.ring_topics('neutron')
    assert 'q-agent-notifier-dvr-update' not in catalog.ring_topics(
        'neutron', 'icehouse')
    assert 'q-agent-notifier-dvr-update' in catalog.ring_topics(
        'neutron', 'juno')
    built, _ = ring_build.build(catalog, 'sahara', INVENTORY,
                                release='icehouse')
    assert 'sahara-ops' not in built
    built, _ = ring_build.build(catalog, 'sahara', INVENTORY, release='juno')
    assert built['sahara-ops'] == ['sahara_host']


def test_renaming_options_are_the_known_ones(catalog):
    options = {(name, key): (t['group'], t['option'])
               for name, p in catalog.projects.items()
               for key, t in p['topics'].items() if t['option']}
    assert options[('nova', 'compute')] == ('DEFAULT', 'compute_topic')
    assert options[('nova', 'scheduler')] == ('DEFAULT', 'scheduler_topic')
    assert options[('nova', 'conductor')] == ('conductor', 'topic')
    assert options[('cinder', 'cinder-volume')] == ('DEFAULT', 'volume_topic')
    assert options[('nova', 'notifications-info')] == (
        'DEFAULT', 'notification_topics')
    # neutron's topics are constants of neutron/common/topics.py.
    assert not [k for (n, k) in options if n == 'neutron' and
                not k.startswith('notifications-')]


def test_rpc_servers_consume_all_three_kinds(catalog):
    nova = catalog.project('nova')['topics']
    assert nova['compute']['kinds'] == ['bare', 'directed', 'fanout']
    assert nova['notifications-info']['kinds'] == ['bare']
    agent = catalog.project('neutron')['topics']
    assert agent['q-agent-notifier-port-update']['kinds'] == ['fanout']


@pytest.mark.parametrize('project', sorted(COMMUNITY))
def test_covers_the_community_ring(catalog, project):
    covered = catalog.ring_topics(project) | set(catalog.not_in_ring)
    missing = set(COMMUNITY[project]) - covered
    assert not missing


@pytest.mark.parametrize('project', sorted(COMMUNITY))
def test_build_reproduces_the_community_ring(catalog, project):
    built, notes = ring_build.build(catalog, project, INVENTORY)
    wanted = {t: h for t, h in COMMUNITY[project].items()
              if t not in catalog.not_in_ring}
    assert {t: built[t] for t in wanted if t in built} == wanted
    assert set(built) - set(wanted) == EXTRA.get(project, set())


def test_notifications_only_projects(catalog):
    for name in ('glance', 'keystone'):
        project = catalog.project(name)
        assert all(not s['consumes'] for s in project['services'].values())
        built, _ = ring_build.build(catalog, name, INVENTORY)
        assert built == {'notifications-error': [CEILO],
                         'notifications-info': [CEILO]}


def test_ironic_topic_is_left_out_with_the_reason(catalog):
    built, notes = ring_build.build(
        catalog, 'ironic', {'ir1': {'ironic-conductor'}})
    assert 'ironic.conductor_manager' not in built
    assert any('ironic.conductor_manager left out' in n and 'dot' in n
               for n in notes)


def test_malformed_catalog_is_refused_naming_the_problem(catalog):
    data = copy.deepcopy(catalog.data)
    data['projects']['nova']['services']['nova-compute']['consumes'].append(
        'nonesuch')
    del data['projects']['heat']['topics']['engine']['sources'][0]['file']
    with pytest.raises(catalog_mod.CatalogError) as info:
        catalog_mod.Catalog(data)
    assert 'nova: service nova-compute consumes unknown topic nonesuch' in \
        str(info.value)
    assert 'heat: topic engine has a source without file' in str(info.value)


def test_catalog_file_is_stable_json():
    with open(catalog_mod.PATH) as f:
        text = f.read()
    assert text == json.dumps(json.loads(text), indent=1,
                              sort_keys=True) + '\n'
