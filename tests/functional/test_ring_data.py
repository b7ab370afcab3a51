"""``ring build`` as an operator runs it; ``/topics``, ``ring learn`` and
``ring diff`` on a small real cloud.

Three receivers on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (rpc_zmq_host
node1, node2, node3), each with its metrics endpoint on its own address.
node1 runs a compute and a scheduler service, node2 a compute service,
node3 nothing; each service is shaped as a legacy RPC server: PULL on
``topic`` and ``topic.host``, SUB on ``fanout~topic``. The ring under test
lists compute on node1 and node3, scheduler on node1: node2 is missing and
node3 serves nothing, which ``diff`` must report, and nothing else. The
same cloud asked through an inventory names each receiver by its address
(an inventory holds host names, no ports: one metrics port for all).
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from tests import support
from tests.functional.test_admin import admin
from tests.functional.test_observability import http_get
from tests.functional.test_observability import metrics_url
from tests.support import pull, recv, sub
from tests.unit.test_ring_build import ANSIBLE_INI, SIMPLE_INI, WANTED
from tests.unit.test_ring_build import _write

NODES = {'node1': '127.0.0.1', 'node2': '127.0.0.2', 'node3': '127.0.0.3'}
SERVICES = {'node1': ('compute', 'scheduler'), 'node2': ('compute',),
            'node3': ()}
RING = {'compute': ['node1', 'node3'], 'scheduler': ['node1']}
TRUTH = {'compute': ['node1', 'node2'], 'scheduler': ['node1']}
#: What diff must report for RING, and only that.
WRONG = {('compute', 'node2'): 'unlisted',
         ('compute', 'node3'): 'no-consumer'}


class Cloud:
    """The three receivers and their services.

    *names* gives each node's rpc_zmq_host (default: node1, node2, node3);
    *metrics_port* the port of every metrics endpoint (default: any, each
    its own), one port for all being what an inventory, which holds no
    ports, needs.
    """

    def __init__(self, daemons, ctx, directory, names=None, metrics_port=0):
        self.directory = directory
        self.names = names or {node: node for node in NODES}
        self.receivers = {}
        self.urls = {}
        self.consumers = []
        for node, address in NODES.items():
            node_dir = os.path.join(directory, node)
            os.mkdir(node_dir)
            self.receivers[node] = daemons(node_dir, {
                'DEFAULT': {'rpc_zmq_bind_address': address,
                            'rpc_zmq_host': self.names[node]},
                'zmq_receiver': {'metrics_port': metrics_port,
                                 'metrics_address': address}})
            self.urls[node] = metrics_url(self.receivers[node])
        for node, topics in SERVICES.items():
            for topic in topics:
                self.serve(ctx, self.receivers[node], self.names[node],
                           topic)
        for node, topics in SERVICES.items():
            host = self.names[node]
            for topic in topics:
                self.wait_consumers(node, [topic, '%s.%s' % (topic, host),
                                           'fanout~' + topic])

    def serve(self, ctx, daemon, host, topic):
        """A legacy RPC server of *topic* on *host*: its three consumers,
        each proven connected by a message through the receiver (which
        also opens the outlet, as traffic does)."""
        consumers = [(pull(ctx, daemon, topic), topic),
                     (pull(ctx, daemon, '%s.%s' % (topic, host)),
                      '%s.%s' % (topic, host)),
                     (sub(ctx, daemon, 'fanout~' + topic),
                      'fanout~%s.%s' % (topic, host))]
        out = support.sender(ctx, daemon)
        for sock, frame_topic in consumers:
            out.send_multipart(support.cast(frame_topic))
            assert recv(sock)[1] == frame_topic.encode()
            self.consumers.append(sock)
        out.close()

    def document(self, name):
        status, body = http_get(self.urls[name] + '/topics',
                                timeout=support.TIMEOUT)
        assert status == 200, body
        return json.loads(body)

    def wait_consumers(self, name, keys):
        """Until *name*'s /topics shows a consumer on every key (the loop
        publishes its snapshot once a tick)."""
        def seen():
            topics = self.document(name)['topics']
            return all(topics.get(k, {}).get('consumers') for k in keys)
        support.wait_until(seen, '%s reporting consumers of %s' % (
            name, ', '.join(keys)))

    def targets(self, names=NODES):
        return ['%s=%s' % (n, self.urls[n][len('http://'):]) for n in names]

    def renamed(self, topics):
        """*topics* ({topic: [node]} or {(topic, node): state}) with each
        node by its rpc_zmq_host."""
        if all(isinstance(k, tuple) for k in topics):
            return {(t, self.names[n]): v for (t, n), v in topics.items()}
        return {t: sorted(self.names[n] for n in nodes)
                for t, nodes in topics.items()}

    def ring_file(self, topics, name='ring.json'):
        path = os.path.join(self.directory, name)
        with open(path, 'w') as f:
            json.dump(topics, f)
        return path


@pytest.fixture
def cloud(daemons, ctx):
    directory = tempfile.mkdtemp(prefix='zr', dir='/tmp')
    made = Cloud(daemons, ctx, directory)
    yield made
    support.close_all(*made.consumers)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def inventory_cloud(daemons, ctx):
    """The cloud as an inventory knows it: each receiver named by its
    address (rpc_zmq_host = 127.0.0.N, the name its ring uses), every
    metrics endpoint on one port, given with --port."""
    port = _port_free_on_every_node()
    directory = tempfile.mkdtemp(prefix='zr', dir='/tmp')
    made = Cloud(daemons, ctx, directory, names=dict(NODES),
                 metrics_port=port)
    made.port = port
    yield made
    support.close_all(*made.consumers)
    shutil.rmtree(directory, ignore_errors=True)


def _port_free_on_every_node():
    """A TCP port free on all of 127.0.0.1, .2 and .3 right now."""
    for _ in range(20):
        port = support.free_port()
        held = []
        try:
            for address in NODES.values():
                sock = socket.socket()
                held.append(sock)
                sock.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    pytest.fail('no port free on every node address')


def cells(result):
    doc = json.loads(result.stdout)
    return {(c['topic'], c['host']): c['state'] for c in doc['cells']}, doc


def disagreements(found):
    return {k: v for k, v in found.items() if v != 'ok'}


# -- build -------------------------------------------------------------------


def test_command_writes_one_validated_ring_per_project(tmp_path):
    inv = _write(tmp_path, 'inv.ini', SIMPLE_INI + (
        '[net1]\nservices = neutron-server, neutron-l3-agent\n'))
    out = tmp_path / 'rings'
    out.mkdir()
    result = admin('ring', 'build', inv, '--release', 'kilo',
                    '--output-dir', str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ['neutron_matchmaker_ring.json',
                                       'nova_matchmaker_ring.json']
    nova = out / 'nova_matchmaker_ring.json'
    text = nova.read_text()
    # Stable: sorted keys, indented, so that it diffs well.
    assert text == json.dumps(json.loads(text), indent=2,
                              sort_keys=True) + '\n'
    assert json.loads(text) == WANTED
    check = admin('ring', 'validate', str(nova))
    assert check.returncode == 0, check.stderr
    assert 'OK' in check.stdout
    # The same twice: byte for byte.
    again = admin('ring', 'build', inv, '--project', 'nova')
    assert again.stdout == text


def test_command_with_groups_and_project_config(tmp_path):
    inv = _write(tmp_path, 'hosts', ANSIBLE_INI)
    conf = support.write_config(str(tmp_path / 'nova.conf'), {
        'DEFAULT': {'scheduler_topic': 'sched'}})
    result = admin('ring', 'build', inv, '--project', 'nova',
                    '--group', 'computes=nova-compute',
                    '--project-config', 'nova=' + conf)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        'conductor': ['ctl1', 'ctl2'], 'sched': ['ctl1'], 'compute': ['cmp1']}
    assert 'controllers' in result.stderr


@pytest.mark.parametrize('args,message', [
    (['--project', 'swift'], "Unknown project 'swift'"),
    (['--project', 'sahara', '--release', 'havana'],
     "no sahara for release 'havana'"),
    (['--project-config', 'nova=/nonexistent/nova.conf', '--project',
      'nova'], 'cannot be read'),
])
def test_command_errors_name_the_fix(tmp_path, args, message):
    inv = _write(tmp_path, 'inv.ini', SIMPLE_INI)
    result = admin('ring', 'build', inv, *args)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr


def test_several_projects_need_an_output_dir(tmp_path):
    inv = _write(tmp_path, 'inv.ini', SIMPLE_INI + (
        '[net1]\nservices = neutron-server\n'))
    result = admin('ring', 'build', inv)
    assert result.returncode == 1
    assert '--output-dir' in result.stderr
    result = admin('ring', 'build', inv, '--project', 'all')
    assert result.returncode == 0, result.stderr
    ring = json.loads(result.stdout)
    assert ring['q-plugin'] == ['net1'] and ring['compute'] == ['cmp1']


# -- /topics -----------------------------------------------------------------


def test_topics_document_shows_consumers_and_kinds(cloud):
    doc = cloud.document('node2')
    daemon = cloud.receivers['node2']
    assert doc['host'] == 'node2'
    assert doc['port'] == daemon.port
    assert doc['format'] == 1 and doc['ready'] is True
    topics = doc['topics']
    assert topics['compute.node2'] == {
        'consumers': 1, 'kind': 'directed', 'socket': 'push',
        'topic': 'compute'}
    assert topics['compute'] == {'consumers': 1, 'kind': 'bare',
                                 'socket': 'push', 'topic': 'compute'}
    assert topics['fanout~compute'] == {
        'consumers': 1, 'kind': 'fanout', 'socket': 'pub',
        'topic': 'compute'}
    assert not any(k.startswith('scheduler') for k in topics)


def test_topics_refused_outside_the_allowed_networks(daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {
        'metrics_port': 0, 'topics_allowed_networks': '192.0.2.0/24'}})
    url = metrics_url(daemon)
    status, body = http_get(url + '/topics', timeout=support.TIMEOUT)
    assert status == 403
    assert '127.0.0.1 may not read /topics' in body
    assert 'topics_allowed_networks' in body
    # The rest of the endpoint is unaffected.
    assert http_get(url + '/healthz', timeout=support.TIMEOUT)[0] == 200


def test_topics_off_when_no_network_is_allowed(daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {
        'metrics_port': 0, 'topics_allowed_networks': ''}})
    status, body = http_get(metrics_url(daemon) + '/topics',
                            timeout=support.TIMEOUT)
    assert status == 404
    assert 'topics_allowed_networks' in body


# -- learn -------------------------------------------------------------------


def test_learn_writes_the_ring_reality_implies(cloud):
    output = os.path.join(cloud.directory, 'learned.json')
    result = admin('ring', 'learn', *cloud.targets(), '--output', output)
    assert result.returncode == 0, result.stderr
    with open(output) as f:
        assert json.load(f) == TRUTH
    assert '3 of 3 receivers answered' in result.stderr
    # Learned from the ring's own hosts, the same.
    ring = cloud.ring_file(RING)
    result = admin('ring', 'learn', *cloud.targets(), '--from-ring', ring)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == TRUTH


def test_learn_refuses_a_partial_ring_unless_asked(cloud):
    cloud.receivers['node2'].kill()
    result = admin('ring', 'learn', *cloud.targets())
    assert result.returncode == 1
    assert '1 of 3 receivers did not answer (node2)' in result.stderr
    assert result.stdout == ''
    result = admin('ring', 'learn', *cloud.targets(), '--partial')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {'compute': ['node1'],
                                         'scheduler': ['node1']}


# -- diff --------------------------------------------------------------------


def test_diff_reports_exactly_the_missing_and_the_idle_host(cloud):
    ring = cloud.ring_file(RING)
    result = admin('ring', 'diff', '--ring', ring, *cloud.targets(),
                   '--json')
    assert result.returncode == 1, result.stderr
    found, doc = cells(result)
    assert disagreements(found) == WRONG
    assert found[('compute', 'node1')] == 'ok'
    assert found[('scheduler', 'node1')] == 'ok'
    assert doc['no_answer'] == {}
    text = admin('ring', 'diff', '--ring', ring, *cloud.targets())
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert any(l.split() == ['compute', 'node2', '-', 'CONSUMER,', 'NOT',
                             'LISTED'] for l in lines), text.stdout
    assert any(l.split() == ['compute', 'node3', 'listed', 'NO',
                             'CONSUMER'] for l in lines), text.stdout
    assert ('DISAGREE (%s): 1 listed without a consumer, 1 consumers not '
            'listed, 0 hosts did not answer' % ring) in text.stdout


def test_diff_agrees_with_the_learned_ring(cloud):
    ring = cloud.ring_file(TRUTH)
    result = admin('ring', 'diff', '--ring', ring, *cloud.targets())
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'AGREE' in result.stdout and 'DISAGREE' not in result.stdout


def test_a_host_that_is_down_or_silent_is_reported(cloud):
    cloud.receivers['node2'].kill()
    # A port that accepts connections and never answers: the per-host
    # timeout ends the wait for it.
    silent = socket.socket()
    silent.bind(('127.0.0.1', 0))
    silent.listen(8)
    try:
        ring = cloud.ring_file(dict(RING, scheduler=['node1', 'node4']))
        result = admin('ring', 'diff', '--ring', ring, *cloud.targets(),
                       'node4=127.0.0.1:%d' % silent.getsockname()[1],
                       '--timeout', '1', '--json')
    finally:
        silent.close()
    assert result.returncode == 1, result.stderr
    found, doc = cells(result)
    assert set(doc['no_answer']) == {'node2', 'node4'}
    assert 'refused' in doc['no_answer']['node2'].lower()
    assert 'timed out' in doc['no_answer']['node4'].lower()
    assert found[('scheduler', 'node4')] == 'no-answer'
    assert found[('compute', 'node3')] == 'no-consumer'
    # node2 is in no ring entry; it is a host that did not answer.
    assert ('compute', 'node2') not in found


def test_diff_against_redis(cloud, redis_plain):
    conf = support.write_config(os.path.join(cloud.directory, 'mm.conf'), {
        'DEFAULT': {'rpc_zmq_matchmaker': 'redis'},
        'matchmaker_redis': {'host': '127.0.0.1', 'port': redis_plain.port,
                             'socket_timeout': 2000}})
    ring = cloud.ring_file(RING)
    imported = admin('--config-file', conf, 'redis', 'import-ring', ring)
    assert imported.returncode == 0, imported.stderr
    result = admin('ring', 'diff', '--redis', '--config-file', conf,
                   *cloud.targets(), '--json')
    assert result.returncode == 1, result.stderr
    found, doc = cells(result)
    assert disagreements(found) == WRONG
    assert doc['listed_in'] == 'Redis at 127.0.0.1:%d' % redis_plain.port
    # Registered as reality has it: they agree.
    fix = admin('--config-file', conf, 'redis', 'register', 'compute',
                'node2', '--ttl', '0')
    assert fix.returncode == 0, fix.stderr
    fix = admin('--config-file', conf, 'redis', 'unregister', 'compute',
                'node3')
    assert fix.returncode == 0, fix.stderr
    result = admin('ring', 'diff', '--redis', '--config-file', conf,
                   *cloud.targets())
    assert result.returncode == 0, result.stdout + result.stderr


def test_diff_needs_someone_to_ask(tmp_path):
    ring = tmp_path / 'ring.json'
    ring.write_text('{}')
    result = admin('ring', 'diff', '--ring', str(ring))
    assert result.returncode == 1
    assert 'No receiver to ask' in result.stderr


# -- learn and diff from an inventory ----------------------------------------

#: The inventory the operator built the ring from: compute on .1 and .3,
#: scheduler on .1 (what RING says), in the host -> services form.
INVENTORY_INI = """\
[127.0.0.1]
services = nova-compute, nova-scheduler
[127.0.0.2]
services = nova-conductor
[127.0.0.3]
services = nova-compute
"""
#: The same hosts as an Ansible YAML inventory of groups.
INVENTORY_ANSIBLE = """\
all:
  children:
    nova_compute:
      hosts:
        127.0.0.1:
        127.0.0.3:
    nova_scheduler:
      hosts:
        127.0.0.1:
    controllers:
      hosts:
        127.0.0.2:
"""


@pytest.mark.parametrize('name,text', [('inv.ini', INVENTORY_INI),
                                        ('hosts.yml', INVENTORY_ANSIBLE)])
def test_learn_asks_every_host_of_an_inventory(inventory_cloud, name, text):
    cloud = inventory_cloud
    inv = _write_file(cloud.directory, name, text)
    output = os.path.join(cloud.directory, 'learned.json')
    result = admin('ring', 'learn', '--inventory', inv,
                   '--port', str(cloud.port), '--output', output)
    assert result.returncode == 0, result.stderr
    with open(output) as f:
        assert json.load(f) == cloud.renamed(TRUTH)
    assert '3 of 3 receivers answered' in result.stderr


def test_diff_asks_every_host_of_an_inventory(inventory_cloud):
    cloud = inventory_cloud
    inv = _write_file(cloud.directory, 'inv.ini', INVENTORY_INI)
    ring = cloud.ring_file(cloud.renamed(RING))
    result = admin('ring', 'diff', '--ring', ring, '--inventory', inv,
                   '--port', str(cloud.port), '--json')
    assert result.returncode == 1, result.stderr
    found, doc = cells(result)
    assert disagreements(found) == cloud.renamed(WRONG)
    assert doc['no_answer'] == {}
    # A host of the inventory that is down is one that did not answer.
    cloud.receivers['node2'].kill()
    result = admin('ring', 'diff', '--ring', ring, '--inventory', inv,
                   '--port', str(cloud.port), '--json')
    assert result.returncode == 1, result.stderr
    found, doc = cells(result)
    assert set(doc['no_answer']) == {NODES['node2']}
    assert 'refused' in doc['no_answer'][NODES['node2']].lower()
    assert disagreements(found) == {
        ('compute', NODES['node3']): 'no-consumer'}


def _write_file(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


# -- the page ----------------------------------------------------------------


def chromium():
    """The headless browser's command, or None (with why) when missing."""
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        path = shutil.which(name)
        if path:
            return path, None
    return None, ('chromium is not installed (./dev installs it with '
                  'apt-get: apt-get install chromium)')


def rendered_dom(page, profile):
    """The DOM of *page* after its scripts ran, as headless Chromium
    renders it."""
    browser, why = chromium()
    if browser is None:
        pytest.skip(why)
    argv = [browser, '--headless', '--no-sandbox', '--disable-gpu',
            '--disable-background-networking', '--disable-component-update',
            '--disable-sync', '--no-first-run', '--disable-dev-shm-usage',
            '--user-data-dir=%s' % profile, '--dump-dom',
            'file://' + os.path.abspath(page)]
    result = subprocess.run(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


# Chromium's first start (a profile, its GPU and network processes) took
# 20 to 40 s on a loaded 2-core machine.
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_diff_page_in_a_headless_browser(cloud):
    html_parser = pytest.importorskip('html.parser')
    cloud.receivers['node2'].kill()
    ring = cloud.ring_file(dict(RING, scheduler=['node1', 'node2']))
    page = os.path.join(cloud.directory, 'diff.html')
    result = admin('ring', 'diff', '--ring', ring, *cloud.targets(),
                   '--html', page)
    assert result.returncode == 1, result.stderr
    assert 'wrote %s' % page in result.stderr
    dom = rendered_dom(page, os.path.join(cloud.directory, 'profile'))

    class Cells(html_parser.HTMLParser):
        """Each cell's (topic, host) -> (state, text); the summary."""

        def __init__(self):
            super().__init__()
            self.found, self.summary, self.down = {}, None, set()
            self._topic = self._cell = self._text = None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == 'tr' and 'data-topic' in attrs:
                self._topic = attrs['data-topic']
            elif tag == 'td' and 'data-state' in attrs:
                self._cell = (self._topic, attrs['data-host'],
                              attrs['data-state'])
                self._text = ''
            elif tag == 'p' and attrs.get('id') == 'summary':
                self.summary = attrs.get('data-disagreements'), ''
                self._cell, self._text = 'summary', ''
            elif tag == 'th' and 'down' in attrs.get('class', ''):
                self.down.add(attrs['data-host'])

        def handle_data(self, data):
            if self._text is not None:
                self._text += data

        def handle_endtag(self, tag):
            if self._cell == 'summary' and tag == 'p':
                self.summary = (self.summary[0], self._text)
            elif self._cell and tag == 'td':
                topic, host, state = self._cell
                self.found[(topic, host)] = (state, self._text.strip())
            else:
                return
            self._cell = self._text = None

    parsed = Cells()
    parsed.feed(dom)
    assert parsed.found == {
        ('compute', 'node1'): ('ok', 'consumer'),
        ('compute', 'node3'): ('no-consumer', 'listed, no consumer'),
        ('scheduler', 'node1'): ('ok', 'consumer'),
        ('scheduler', 'node2'): ('no-answer', 'no answer'),
    }
    assert parsed.down == {'node2'}
    # Written by the page's script, so only there once it has run.
    assert parsed.summary == ('2', '2 disagreements: 1 listed without a '
                              'consumer, 0 consumers not listed, 1 hosts '
                              'did not answer')
