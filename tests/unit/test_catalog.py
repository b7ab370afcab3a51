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


def test_every_project_and_release_is_there(catalog):
    assert set(PROJECTS) <= set(catalog.projects)
    for name in PROJECTS:
        project = catalog.project(name)
        # Sahara's distributed engine (sahara-ops) came with Juno.
        wanted = set(RELEASES) - ({'icehouse'} if name == 'sahara' else set())
        assert wanted <= set(project['releases']), name


def test_every_topic_cites_its_source(catalog):
    verified = 0
    for name, project in catalog.projects.items():
        for key, topic in project['topics'].items():
            source = topic['source']
            assert source['file'].endswith('.py'), (name, key)
            assert source['repo'].startswith('openstack/'), (name, key)
            assert set(source['verified_at']) <= set(RELEASES), (name, key)
            if source['verified_at']:
                verified += 1
                assert source['line'] or source['anchor'], (name, key)
                assert len(source['commit']) == 40, (name, key)
            else:
                # An unverified citation says why.
                assert source.get('note'), (name, key)
    assert verified >= 10


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
    del data['projects']['heat']['topics']['engine']['source']['file']
    with pytest.raises(catalog_mod.CatalogError) as info:
        catalog_mod.Catalog(data)
    assert 'nova: service nova-compute consumes unknown topic nonesuch' in \
        str(info.value)
    assert 'heat: topic engine cites no file' in str(info.value)


def test_catalog_file_is_stable_json():
    with open(catalog_mod.PATH) as f:
        text = f.read()
    assert text == json.dumps(json.loads(text), indent=1,
                              sort_keys=True) + '\n'
