"""``ring build`` from small inventories of every form, with renames read
from a project's real config file (the command itself: in
tests/functional/test_ring_data.py).
"""

import pytest

from tests import support
from zmq_receiver.admin import catalog as catalog_mod
from zmq_receiver.admin import inventory
from zmq_receiver.admin import ring_build

SIMPLE_INI = """\
# host -> services
[ctl1]
services = nova-conductor, nova-scheduler
[ctl2]
services = nova-conductor
[cmp1]
services = nova-compute
"""
SIMPLE_YAML = """\
ctl1: [nova-conductor, nova-scheduler]
ctl2: {services: nova-conductor}
cmp1: [nova-compute]
"""
ANSIBLE_INI = """\
[nova_conductor]
ctl1 ansible_host=192.0.2.1
ctl2

[nova-scheduler]
ctl1

[computes]
cmp1.example.org rpc_zmq_host=cmp1

[controllers:children]
nova_conductor

[computes:vars]
ansible_user=root
"""
ANSIBLE_YAML = """\
all:
  children:
    controllers:
      children:
        nova_conductor:
          hosts:
            ctl1: {ansible_host: 192.0.2.1}
            ctl2:
        nova-scheduler:
          hosts:
            ctl1:
    computes:
      hosts:
        cmp1.example.org: {rpc_zmq_host: cmp1}
"""
WANTED = {'conductor': ['ctl1', 'ctl2'], 'scheduler': ['ctl1'],
          'compute': ['cmp1']}


@pytest.fixture(scope='module')
def catalog():
    return catalog_mod.load()


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('name,text,groups', [
    ('inv.ini', SIMPLE_INI, {}),
    ('inv.yaml', SIMPLE_YAML, {}),
    ('hosts', ANSIBLE_INI, {'computes': ['nova-compute']}),
    ('hosts.yml', ANSIBLE_YAML, {'computes': ['nova-compute']}),
])
def test_every_inventory_form(tmp_path, catalog, name, text, groups):
    inv = inventory.load(_write(tmp_path, name, text))
    placements, ignored = inv.placements(catalog.services(), groups)
    built, _ = ring_build.build(catalog, 'nova', placements)
    assert {t: built[t] for t in WANTED} == WANTED
    if inv.ansible:
        assert 'controllers' in ignored


def test_an_unknown_service_is_named(tmp_path, catalog):
    inv = inventory.load(_write(tmp_path, 'i.ini',
                                '[h1]\nservices = nova-computer\n'))
    with pytest.raises(inventory.InventoryError) as info:
        inv.placements(catalog.services())
    assert "Host h1 runs service 'nova-computer'" in str(info.value)
    assert 'nova-compute' in str(info.value)


def test_host_ranges_are_refused_with_the_fix(tmp_path):
    with pytest.raises(inventory.InventoryError) as info:
        inventory.load(_write(tmp_path, 'hosts',
                              '[nova_compute]\ncmp[01:09]\n'))
    assert 'line 2' in str(info.value)
    assert 'one per line' in str(info.value)


def test_renames_come_from_the_projects_config_file(tmp_path, catalog):
    conf = support.write_config(str(tmp_path / 'nova.conf'), {
        'DEFAULT': {'compute_topic': 'compute-kvm',
                    'notification_topics': 'notifications,monitor',
                    'rpc_backend': 'zmq', 'unrelated_option': 'x'},
        'conductor': {'topic': 'conductor-eu'},
    })
    renames = catalog.renames('nova', conf)
    assert renames == {
        'compute': ['compute-kvm'], 'conductor': ['conductor-eu'],
        'notifications-info': ['notifications-info', 'monitor-info'],
        'notifications-error': ['notifications-error', 'monitor-error']}
    placements = {'c1': {'nova-compute', 'nova-conductor'},
                  'm1': {'ceilometer-agent-notification'}}
    built, _ = ring_build.build(catalog, 'nova', placements,
                                      {'nova': renames})
    assert built['compute-kvm'] == ['c1']
    assert built['conductor-eu'] == ['c1']
    assert built['monitor-info'] == ['m1']
    assert 'compute' not in built
