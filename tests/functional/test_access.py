"""Access control through the real daemon: allowed_networks and CURVE.

The receiver binds 127.0.0.1; senders connect from another loopback
address (all of 127.0.0.0/8 is loopback on Linux) by giving ZeroMQ a
source address: ``tcp://127.0.0.2:0;127.0.0.1:PORT``.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from tests import support
from tests.support import recv
from zmq_receiver import access
from zmq_receiver import errors
from zmq_receiver import metrics

ALLOWED_SOURCE = '127.0.0.1'
DENIED_SOURCE = '127.0.0.2'


def sender_from(ctx, daemon, source, endpoint=None):
    """A legacy PUSH sender connected to *daemon* from address *source*."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    port = (endpoint or daemon.endpoint).rsplit(':', 1)[1]
    sock.connect('tcp://%s:0;127.0.0.1:%s' % (source, port))
    return sock


def pull(ctx, daemon, key):
    sock = ctx.socket(zmq.PULL)
    sock.connect(daemon.outlet(key))
    return sock


def wait_event(monitor, event, timeout=support.TIMEOUT):
    """The monitor message of the first *event*; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not monitor.poll(left * 1000):
            raise AssertionError('no %s within %.0f s' % (event, timeout))
        message = recv_monitor_message(monitor)
        if message['event'] == event:
            return message


def denied(stats, reason=access.NETWORK_NOT_ALLOWED):
    return stats['denied'].get(reason, 0)


# -- allowed_networks ------------------------------------------------------

def test_sender_in_an_allowed_network_is_forwarded(ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {
        'allowed_networks': '10.0.0.0/8, 127.0.0.1/32'}})
    assert re.search(r'Access control: connections only from '
                     r'allowed_networks 10\.0\.0\.0/8, 127\.0\.0\.1/32',
                     daemon.log())
    consumer = pull(ctx, daemon, 'compute.host1')
    out = sender_from(ctx, daemon, ALLOWED_SOURCE)
    out.send_multipart(support.cast('compute.host1', b'allowed'))
    assert recv(consumer) == support.cast('compute.host1', b'allowed')
    assert daemon.stats()['denied'] == {}
    support.close_all(consumer, out)


def test_sender_outside_the_networks_is_refused_counted_and_logged(
        ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {
        'allowed_networks': '127.0.0.1', 'log_interval': 3600}})
    consumer = pull(ctx, daemon, 'compute.host1')
    outcasts = []
    for _ in range(3):
        out = sender_from(ctx, daemon, DENIED_SOURCE)
        monitor = out.get_monitor_socket()
        out.send_multipart(support.cast('compute.host1', b'denied'))
        # As the sender sees it: the receiver closes the connection (no
        # ZAP on the legacy port, see test_legacy_peers.py).
        wait_event(monitor, zmq.EVENT_DISCONNECTED)
        outcasts += [out, monitor]
    daemon.wait_stats(lambda s: denied(s) >= 3)
    # An allowed sender's message, sent after, arrives; the refused
    # senders' messages, sent before it, never do.
    friend = sender_from(ctx, daemon, ALLOWED_SOURCE)
    friend.send_multipart(support.cast('compute.host1', b'allowed'))
    assert recv(consumer)[3] == b'allowed'
    assert support.nothing_arrives(consumer, 0.5)
    stats = daemon.stats()
    assert stats['received'] == 1
    # One line in the log interval (an hour), however many peers.
    daemon.wait_for(r'Refused a connection from 127\.0\.0\.2: its address '
                    r'is in none of \[zmq_receiver\] allowed_networks; if '
                    r'it is a legitimate sender, add its network there')
    daemon.signal(signal.SIGUSR1)
    daemon.wait_for(r'denied_connections\[network_not_allowed=\d+\]')
    assert len(re.findall('Refused a connection', daemon.log())) == 1
    support.close_all(consumer, friend, *outcasts)


@pytest.mark.skipif(not support.ipv6_loopback(),
                    reason='no IPv6 loopback here')
@pytest.mark.parametrize('networks, arrives', [
    ('::1/128', True),
    ('192.0.2.0/24, ::/1', True),
    ('127.0.0.0/8', False),
])
def test_ipv6_peer_is_checked_against_the_networks(ctx, daemons, short_dir,
                                                   networks, arrives):
    daemon = daemons(short_dir, {
        'DEFAULT': {'rpc_zmq_bind_address': '::1'},
        'zmq_receiver': {'allowed_networks': networks}})
    consumer = pull(ctx, daemon, 'compute.v6')
    out = ctx.socket(zmq.PUSH)
    out.setsockopt(zmq.IPV6, 1)
    out.setsockopt(zmq.LINGER, 0)
    out.connect(daemon.endpoint)
    out.send_multipart(support.cast('compute.v6'))
    if arrives:
        assert recv(consumer)[1] == b'compute.v6'
    else:
        daemon.wait_stats(lambda s: denied(s) >= 1)
        assert support.nothing_arrives(consumer, 0.3)
    support.close_all(consumer, out)


def test_bad_network_is_a_config_error(short_dir):
    status, output = support.run_receiver(
        ['--config-file', support.write_config(
            os.path.join(short_dir, 'bad.conf'), {
                'DEFAULT': {'rpc_zmq_ipc_dir': os.path.join(short_dir, 'i'),
                            'rpc_zmq_port': 0,
                            'rpc_zmq_bind_address': '127.0.0.1'},
                'zmq_receiver': {
                    'allowed_networks': '10.0.0.0/8, 10.1.2.3/16'},
            })])
    assert status == errors.EXIT_CONFIG, output
    assert ("[zmq_receiver] allowed_networks: '10.1.2.3/16' is not a "
            "network" in output), output
    assert 'write 10.1.0.0/16 for the network it is in' in output


# -- pure functions --------------------------------------------------------

@pytest.mark.parametrize('text, networks, expected', [
    ('192.0.2.7', '192.0.2.0/24', True),
    ('192.0.2.7', '198.51.100.0/24', False),
    # An IPv4 peer of a dual-stack socket, as libzmq reports it.
    ('::ffff:192.0.2.7', '192.0.2.0/24', True),
    ('::ffff:192.0.2.7', '198.51.100.0/24', False),
    ('2001:db8::7', '2001:db8::/32', True),
    ('2001:db8::7', '192.0.2.0/24', False),
    ('192.0.2.7', '2001:db8::/32', False),
    ('fe80::1%eth0', 'fe80::/10', True),
    ('2001:db8::7', '2001:db8::7', True),
    ('not an address', '0.0.0.0/0', False),
    ('', '0.0.0.0/0, ::/0', False),
])
def test_allowed(text, networks, expected):
    parsed = access.parse_networks(networks.split(','))
    assert access.allowed(text, parsed) is expected


def test_parse_networks_reports_the_bad_item():
    assert access.parse_networks([' 2001:db8::/32 ', '']) == (
        access.ipaddress.ip_network('2001:db8::/32'),)
    with pytest.raises(errors.ConfigError) as info:
        access.parse_networks(['2001:db8::1/32'])
    assert "'2001:db8::1/32' is not a network" in str(info.value)
    assert 'write 2001:db8::/32' in str(info.value)
    with pytest.raises(errors.ConfigError) as info:
        access.parse_networks(['eth0'])
    assert 'CIDR form' in str(info.value)


def test_counters_snapshot_reports_denied():
    counters = metrics.Counters()
    counters.denied[access.NETWORK_NOT_ALLOWED] += 2
    snap = counters.snapshot()
    assert snap['denied'] == {'network_not_allowed': 2}
    assert ('denied_connections[network_not_allowed=2]'
            in metrics.format_snapshot(snap))


# -- CURVE -----------------------------------------------------------------

ADMIN = [sys.executable, '-m', 'zmq_receiver.admin']


def admin(*args):
    return subprocess.run(
        ADMIN + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True, timeout=support.TIMEOUT * 2,
        env=support.clean_env())


class Keys:
    """A receiver certificate, two sender certificates (``alice`` allowed,
    ``mallory`` not) and the receiver's allowed-clients directory."""

    def __init__(self, directory):
        self.dir = os.path.join(directory, 'keys')
        self.allowed = os.path.join(directory, 'allowed')
        os.mkdir(self.dir)
        os.mkdir(self.allowed)
        self.server_public, self.server_secret = (
            zmq.auth.create_certificates(self.dir, 'receiver'))
        os.chmod(self.server_secret, 0o600)
        self.alice_public, self.alice_secret = (
            zmq.auth.create_certificates(self.dir, 'alice'))
        self.mallory_public, self.mallory_secret = (
            zmq.auth.create_certificates(self.dir, 'mallory'))
        shutil.copy(self.alice_public, self.allowed)

    def options(self, **extra):
        values = {'curve_port': 0,
                  'curve_secret_key_file': self.server_secret,
                  'curve_allowed_clients_dir': self.allowed}
        values.update(extra)
        return {'zmq_receiver': values}


@pytest.fixture
def keys(short_dir):
    return Keys(short_dir)


def curve_endpoint(daemon):
    return re.search(r'CURVE port (tcp://\S+)', daemon.log()).group(1)


def send(daemon, endpoint, *extra, topic='compute.host1'):
    return admin('--config-file', daemon.config_file, 'send', topic,
                 '--endpoint', endpoint, '--method', 'hello', *extra)


def test_curve_sender_with_an_allowed_key_is_forwarded(ctx, daemons,
                                                       short_dir, keys):
    daemon = daemons(short_dir, keys.options())
    endpoint = curve_endpoint(daemon)
    assert 'CURVE senders with one of the 1 client keys in %s' % (
        keys.allowed) in daemon.log()
    consumer = pull(ctx, daemon, 'compute.host1')
    sent = send(daemon, endpoint, '--curve-server-key', keys.server_public,
                '--curve-client-cert', keys.alice_secret)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert b'"method": "hello"' in recv(consumer)[3]
    # The legacy port keeps serving legacy (NULL) senders.
    legacy = sender_from(ctx, daemon, ALLOWED_SOURCE)
    legacy.send_multipart(support.cast('compute.host1', b'legacy'))
    assert recv(consumer)[3] == b'legacy'
    support.close_all(consumer, legacy)


def test_curve_sender_with_an_unknown_key_is_refused(ctx, daemons, short_dir,
                                                     keys):
    daemon = daemons(short_dir, keys.options())
    endpoint = curve_endpoint(daemon)
    consumer = pull(ctx, daemon, 'compute.host1')
    sent = send(daemon, endpoint, '--curve-server-key', keys.server_public,
                '--curve-client-cert', keys.mallory_secret)
    assert sent.returncode == 1
    assert 'refused the connection (status 400)' in sent.stdout, sent.stdout
    assert 'curve_allowed_clients_dir' in sent.stdout
    daemon.wait_stats(lambda s: denied(s, access.CURVE_KEY_UNKNOWN) == 1)
    mallory = zmq.auth.load_certificate(keys.mallory_public)[0].decode()
    daemon.wait_for(r'Refused a CURVE connection from 127\.0\.0\.1: its '
                    r'client key %s is not in \[zmq_receiver\] '
                    r'curve_allowed_clients_dir \(%s\)' % (
                        re.escape(mallory), re.escape(keys.allowed)))
    assert support.nothing_arrives(consumer, 0.3)
    support.close_all(consumer)


def test_curve_sender_with_the_wrong_server_key_never_gets_in(
        ctx, daemons, short_dir, keys):
    daemon = daemons(short_dir, keys.options())
    consumer = pull(ctx, daemon, 'compute.host1')
    # Mallory's public key where the receiver's should be.
    sent = send(daemon, curve_endpoint(daemon), '--curve-server-key',
                keys.mallory_public, '--curve-client-cert', keys.alice_secret,
                '--timeout', '1')
    assert sent.returncode == 1
    assert 'security handshake with' in sent.stdout, sent.stdout
    assert '--curve-server-key is the receiver\'s current' in sent.stdout
    assert support.nothing_arrives(consumer, 0.3)
    support.close_all(consumer)


def test_legacy_sender_cannot_use_the_curve_port(ctx, daemons, short_dir,
                                                 keys):
    daemon = daemons(short_dir, keys.options())
    consumer = pull(ctx, daemon, 'compute.host1')
    sent = send(daemon, curve_endpoint(daemon), '--timeout', '1')
    assert sent.returncode == 1
    assert 'the port may be a CURVE port' in sent.stdout, sent.stdout
    assert support.nothing_arrives(consumer, 0.3)
    support.close_all(consumer)


def test_refused_admin_send_names_allowed_networks(daemons, short_dir):
    # The legacy port refuses by closing the connection (no ZAP there).
    daemon = daemons(short_dir, {'zmq_receiver': {
        'allowed_networks': '10.0.0.0/8'}})
    sent = send(daemon, daemon.endpoint, '--timeout', '1')
    assert sent.returncode == 1
    assert 'closed every connection before the handshake ended' in (
        sent.stdout), sent.stdout
    assert "this host's address may not be in its [zmq_receiver] " \
        'allowed_networks' in sent.stdout
    assert 'CURVE' not in sent.stdout


def test_client_keys_rotate_on_sighup(ctx, daemons, short_dir, keys):
    daemon = daemons(short_dir, keys.options())
    endpoint = curve_endpoint(daemon)
    consumer = pull(ctx, daemon, 'compute.host1')
    # Add the new key, reload: both work.
    shutil.copy(keys.mallory_public, keys.allowed)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(r'Loaded 2 CURVE client keys from ')
    for secret in (keys.alice_secret, keys.mallory_secret):
        sent = send(daemon, endpoint, '--curve-server-key',
                    keys.server_public, '--curve-client-cert', secret)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        recv(consumer)
    # Remove the old one, reload: it is refused.
    os.remove(os.path.join(keys.allowed, 'alice.key'))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(r'Loaded 1 CURVE client keys from ')
    sent = send(daemon, endpoint, '--curve-server-key', keys.server_public,
                '--curve-client-cert', keys.alice_secret)
    assert sent.returncode == 1
    assert 'refused the connection' in sent.stdout
    support.close_all(consumer)


def test_curve_without_a_clients_dir_takes_any_key_and_warns(
        ctx, daemons, short_dir, keys):
    daemon = daemons(short_dir, keys.options(curve_allowed_clients_dir=''))
    assert 'curve_allowed_clients_dir is not set' in daemon.log()
    consumer = pull(ctx, daemon, 'compute.host1')
    sent = send(daemon, curve_endpoint(daemon), '--curve-server-key',
                keys.server_public, '--curve-client-cert',
                keys.mallory_secret)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    recv(consumer)
    support.close_all(consumer)


def test_curve_and_allowed_networks_together(ctx, daemons, short_dir, keys):
    # The network check applies to the CURVE port too, key or not.
    options = keys.options()
    options['zmq_receiver']['allowed_networks'] = '127.0.0.2/32'
    daemon = daemons(short_dir, options)
    sent = send(daemon, curve_endpoint(daemon), '--curve-server-key',
                keys.server_public, '--curve-client-cert', keys.alice_secret)
    assert sent.returncode == 1
    assert 'allowed_networks' in sent.stdout
    daemon.wait_stats(lambda s: denied(s) == 1)


def run_with(short_dir, options):
    config = {'DEFAULT': {'rpc_zmq_ipc_dir': os.path.join(short_dir, 'ipc'),
                          'rpc_zmq_port': 0,
                          'rpc_zmq_bind_address': '127.0.0.1'}}
    config.update(options)
    return support.run_receiver(['--config-file', support.write_config(
        os.path.join(short_dir, 'receiver.conf'), config)])


@pytest.mark.parametrize('change, expected', [
    ({'curve_secret_key_file': ''},
     'curve_port is set but curve_secret_key_file is not'),
    ({'curve_port': ''},
     'curve_secret_key_file is set but curve_port is not'),
    ({'curve_secret_key_file': 'PUBLIC'},
     'holds no secret key: it is a public certificate; give the '
     '.key_secret file'),
    ({'curve_secret_key_file': '/nonexistent/receiver.key_secret'},
     '/nonexistent/receiver.key_secret does not exist'),
    ({'curve_allowed_clients_dir': '/nonexistent'},
     '[zmq_receiver] curve_allowed_clients_dir: /nonexistent is not a '
     'directory'),
])
def test_curve_config_mistakes_stop_the_start(short_dir, keys, change,
                                              expected):
    if change.get('curve_secret_key_file') == 'PUBLIC':
        change = {'curve_secret_key_file': keys.server_public}
    status, output = run_with(short_dir, keys.options(**change))
    assert status == errors.EXIT_CONFIG, output
    assert expected in output, output


def test_send_needs_both_curve_files(short_dir, keys, receiver):
    sent = send(receiver, receiver.endpoint, '--curve-server-key',
                keys.server_public)
    assert sent.returncode == 1
    assert 'CURVE needs both --curve-server-key' in sent.stderr


def test_denied_connections_are_exported(ctx, daemons, short_dir):
    from tests.functional import test_observability as obs
    daemon = daemons(short_dir, {'zmq_receiver': {
        'allowed_networks': '127.0.0.1', 'metrics_port': 0}})
    url = obs.metrics_url(daemon)
    out = sender_from(ctx, daemon, DENIED_SOURCE)
    out.send_multipart(support.cast('compute.host1'))
    # A refused sender may try again: at least once.
    obs.wait_metrics(url, lambda s: obs.labelled(
        s, 'zmq_receiver_denied_total').get('network_not_allowed', 0) >= 1)
    support.close_all(out)


def test_send_uses_curve_port_from_the_config(ctx, daemons, short_dir, keys):
    daemon = daemons(short_dir, keys.options())
    port = curve_endpoint(daemon).rsplit(':', 1)[1]
    consumer = pull(ctx, daemon, 'compute.host1')
    config = support.write_config(os.path.join(short_dir, 'sender.conf'), {
        'DEFAULT': {'rpc_zmq_port': daemon.port},
        'zmq_receiver': {'curve_port': port}})
    curve = ('--curve-server-key', keys.server_public,
             '--curve-client-cert', keys.alice_secret)
    sent = admin('--config-file', config, 'send', 'compute.host1', '--host',
                 '127.0.0.1', *curve)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert 'at tcp://127.0.0.1:%s' % port in sent.stdout
    recv(consumer)
    unset = support.write_config(os.path.join(short_dir, 'unset.conf'), {})
    sent = admin('--config-file', unset, 'send', 'compute', '--host',
                 '127.0.0.1', *curve)
    assert sent.returncode == 1
    assert 'curve_port is not set in the config files: give --port' in (
        sent.stderr)
    support.close_all(consumer)
