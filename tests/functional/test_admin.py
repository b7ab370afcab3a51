"""``oslo-messaging-zmq-admin`` as an operator runs it: a real process
against real files, ports, receivers and Redis servers.

``check`` on a good setup and on each broken one; ``ring`` and ``redis``
on real files and a real Redis; ``send`` and ``tap`` through a running
receiver.
"""

import functools
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from tests import redis_server
from tests import support
from tests.output import ProcessOutput
from tests.redis_server import PASSWORD
from tests.support import pull, recv, sub

ADMIN = [sys.executable, '-m', 'zmq_receiver.admin']
RING = {'scheduler': ['localhost'], 'conductor': ['localhost']}
GUIDE_EXAMPLE = """{
'scheduler': ['host1', 'host2'],
'conductor': ['host1', 'host2'],
}
"""


def admin(*args, timeout=support.TIMEOUT):
    """Run the tool to completion."""
    return subprocess.run(
        ADMIN + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True, timeout=timeout,
        env=support.clean_env())


class Background:
    """The tool running in the background; its output read line by line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            ADMIN + list(args), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env=support.clean_env())
        # stderr is where it talks; stdout is its result, read at the end.
        self.errors = ProcessOutput(self.proc, self.proc.stderr)
        self._out = []
        self._out_reader = threading.Thread(target=self._read_out,
                                            daemon=True)
        self._out_reader.start()

    def _read_out(self):
        self._out.extend(self.proc.stdout)

    @property
    def err_lines(self):
        """The stderr lines read so far (by wait_err())."""
        return self.errors.lines

    def wait_err(self, pattern, timeout=support.TIMEOUT):
        """The first new stderr line matching *pattern*."""
        try:
            return self.errors.wait_for(pattern, timeout).string
        except TimeoutError:
            raise AssertionError('no line matching %r; stderr:\n%s' % (
                pattern, '\n'.join(self.err_lines))) from None
        except EOFError:
            raise AssertionError('ended (%s) before %r; stderr:\n%s' % (
                self.proc.wait(), pattern, '\n'.join(self.err_lines))
            ) from None

    def finish(self, timeout=support.TIMEOUT):
        """(status, stdout lines) once it has ended by itself."""
        status = self.proc.wait(timeout)
        self._out_reader.join(timeout)
        return status, [line.rstrip('\n') for line in self._out]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def background():
    started = []

    def start(*args):
        process = Background(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def report(result):
    """The check lines as [(status, name, text)]."""
    found = []
    for line in result.stdout.splitlines():
        match = re.match(r'(PASS|WARN|FAIL)  (\S+)\s+(.*)$', line)
        if match:
            found.append(match.groups())
    return found


def statuses(result):
    """{name: set of statuses} of a check run."""
    found = {}
    for status, name, _ in report(result):
        found.setdefault(name, set()).add(status)
    return found


def failures(result):
    return [(name, text) for status, name, text in report(result)
            if status == 'FAIL']


# -- a setup to check --------------------------------------------------------


class Setup:
    """A config file, its IPC directory and ring file, in *directory*."""

    def __init__(self, directory):
        self.directory = directory
        # As /var/run is: any user may pass through it.
        os.chmod(directory, 0o755)
        self.ipc_dir = os.path.join(directory, 'ipc')
        os.mkdir(self.ipc_dir, 0o755)
        self.ring_file = os.path.join(directory, 'ring.json')
        with open(self.ring_file, 'w') as f:
            json.dump(RING, f)
        self.options = {
            'DEFAULT': {
                'rpc_zmq_bind_address': '127.0.0.1',
                'rpc_zmq_port': redis_server.free_port(),
                'rpc_zmq_ipc_dir': self.ipc_dir,
                'rpc_zmq_host': 'localhost',
                'rpc_zmq_matchmaker': 'ring',
                # A real service's config holds much the receiver ignores.
                'rpc_backend': 'zmq',
                'rpc_cast_timeout': 30,
            },
            'matchmaker_ring': {'ringfile': self.ring_file},
            'database': {'connection': 'mysql://nova@db/nova'},
        }
        self.config_file = os.path.join(directory, 'nova.conf')

    def write(self):
        return support.write_config(self.config_file, self.options)

    def check(self, *args):
        self.write()
        # --config-file after the subcommand, as operators write it.
        return admin('check', '--config-file', self.config_file,
                     '--timeout', '2', *args)

    def write_ring(self, text):
        with open(self.ring_file, 'w') as f:
            f.write(text)


@pytest.fixture
def setup(short_dir):
    return Setup(short_dir)


def use_redis(setup, server, password=PASSWORD):
    setup.options['DEFAULT']['rpc_zmq_matchmaker'] = (
        'oslo.messaging._drivers.matchmaker_ring.MatchMakerRedis')
    setup.options['matchmaker_redis'] = {
        'host': '127.0.0.1', 'port': server.port, 'socket_timeout': 2000}
    if password is not None:
        setup.options['matchmaker_redis']['password'] = password


# -- check: good setups ------------------------------------------------------


def test_check_passes_on_a_good_ring_setup(setup):
    result = setup.check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert failures(result) == []
    found = statuses(result)
    for name in ('config', 'host', 'bind', 'ipc-dir', 'matchmaker',
                 'ring-file', 'ring-host'):
        assert 'PASS' in found[name], result.stdout
    lines = result.stdout
    assert 'localhost resolves to 127.0.0.1' in lines
    assert 'port %d is free' % setup.options['DEFAULT']['rpc_zmq_port'] in (
        lines)
    assert 'ring.json: 2 topics, 1 hosts' in lines
    assert re.search(r'\d+ checks: 0 failed', lines)


def test_check_passes_with_our_receiver_on_the_port_and_redis(
        setup, daemons, redis_locked):
    daemon = daemons(setup.directory, {'DEFAULT': {
        'rpc_zmq_ipc_dir': setup.ipc_dir}})
    setup.options['DEFAULT']['rpc_zmq_port'] = daemon.port
    use_redis(setup, redis_locked)
    result = setup.check()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout
    assert ('port %d is held by the running receiver of %s (pid %d)' % (
        daemon.port, setup.ipc_dir, daemon.proc.pid)) in lines
    assert re.search(r'PASS  redis +Redis \S+ master at 127.0.0.1:%d '
                     r'answers, password accepted' % redis_locked.port, lines)
    # The legacy class path works, with its deprecation.
    assert re.search(r'WARN  matchmaker .*deprecated.*= redis.*typo', lines)


def test_check_passes_with_redis_sentinel(setup):
    directory = redis_server.temp_dir()
    cluster = redis_server.SentinelCluster(directory, group='zmq-check',
                                           password=PASSWORD)
    try:
        cluster.start()
        setup.options['DEFAULT']['rpc_zmq_matchmaker'] = 'redis'
        setup.options['matchmaker_redis'] = {
            'sentinel_hosts': ','.join('%s:%d' % hp
                                       for hp in cluster.sentinel_hosts),
            'sentinel_group_name': 'zmq-check', 'password': PASSWORD}
        result = setup.check()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    master = '127.0.0.1:%d' % cluster.master.port
    sentinel_lines = [text for status, name, text in report(result)
                      if name == 'sentinel']
    assert sentinel_lines == [
        "%s names %s the master of 'zmq-check'" % (s.address, master)
        for s in cluster.sentinels]
    assert re.search(r'PASS  redis +Redis \S+ master at %s answers, '
                     r'password accepted' % master, result.stdout)


# -- check: each broken setup ------------------------------------------------


def _unparsable(setup, keep):
    setup.write()
    with open(setup.config_file, 'a') as f:
        f.write('this line is no option\n')
    setup.write = lambda: setup.config_file


def _port_value(setup, keep):
    setup.options['DEFAULT']['rpc_zmq_port'] = 'nine'


def _host(setup, keep):
    setup.options['DEFAULT']['rpc_zmq_host'] = 'no-such-host.invalid'


def _bind_address(setup, keep):
    setup.options['DEFAULT']['rpc_zmq_bind_address'] = '203.0.113.7'


def _bind_interface(setup, keep):
    setup.options['DEFAULT']['rpc_zmq_bind_address'] = 'nosuchif0'


def _port_in_use(setup, keep):
    holder = socket.socket()
    holder.bind(('127.0.0.1', 0))
    holder.listen(1)
    keep.append(holder)
    setup.options['DEFAULT']['rpc_zmq_port'] = holder.getsockname()[1]


def _world_writable(setup, keep):
    os.chmod(setup.ipc_dir, 0o777)


def _not_writable_by_the_user(setup, keep):
    setup.options['zmq_receiver'] = {'user': 'nobody'}


def _parent_not_enterable(setup, keep):
    setup.options['zmq_receiver'] = {'user': 'nobody'}
    os.chmod(setup.directory, 0o700)


def _path_too_long(setup, keep):
    setup.options['DEFAULT']['rpc_zmq_ipc_dir'] = os.path.join(
        setup.ipc_dir, 'd' * 60)


def _unknown_matchmaker(setup, keep):
    setup.options['DEFAULT']['rpc_zmq_matchmaker'] = 'zookeeper'


def _guide_ring(setup, keep):
    setup.write_ring(GUIDE_EXAMPLE)


def _ring_host(setup, keep):
    setup.write_ring(json.dumps({'scheduler': ['localhost',
                                               'no-such-host.invalid']}))


def _ring_missing(setup, keep):
    os.unlink(setup.ring_file)


def _redis_down(setup, keep):
    setup.options['DEFAULT']['rpc_zmq_matchmaker'] = 'redis'
    setup.options['matchmaker_redis'] = {'port': redis_server.free_port()}


def _sentinel_down(setup, keep):
    setup.options['DEFAULT']['rpc_zmq_matchmaker'] = 'redis'
    setup.options['matchmaker_redis'] = {
        'sentinel_hosts': '127.0.0.1:%d' % redis_server.free_port(),
        'socket_timeout': 1000}


def _heartbeat(setup, keep):
    setup.options['DEFAULT'].update(rpc_zmq_matchmaker='redis',
                                    matchmaker_heartbeat_freq=600,
                                    matchmaker_heartbeat_ttl=300)
    setup.options['matchmaker_redis'] = {'port': redis_server.free_port()}


BROKEN = [
    (_unparsable, 'config', 'cannot be parsed'),
    (_port_value, 'config', '[DEFAULT] rpc_zmq_port'),
    (_host, 'host', 'no-such-host.invalid does not resolve here'),
    (_bind_address, 'bind', '203.0.113.7 is not an address of this host'),
    (_bind_interface, 'bind', 'nosuchif0 is neither *, an IP address nor an '
                              'interface'),
    (_port_in_use, 'bind', 'in use by pid %d' % os.getpid()),
    (_world_writable, 'ipc-dir', 'is world-writable'),
    (_not_writable_by_the_user, 'ipc-dir', 'is not writable by nobody'),
    (_parent_not_enterable, 'ipc-dir', 'may not enter /tmp/zr'),
    (_path_too_long, 'ipc-dir', 'longer than a unix socket path'),
    (_unknown_matchmaker, 'matchmaker', 'no such matchmaker'),
    (_guide_ring, 'ring-file', 'Hint: single quotes at line 2, column 1'),
    (_ring_host, 'ring-host', 'no-such-host.invalid does not resolve here'),
    (_ring_missing, 'ring-file', 'no such file'),
    (_redis_down, 'redis', 'does not answer'),
    (_sentinel_down, 'sentinel', 'does not answer'),
    (_heartbeat, 'heartbeat', 'is not below matchmaker_heartbeat_ttl'),
]


@pytest.mark.parametrize('breaks, name, expected', BROKEN,
                         ids=[b[0].__name__.strip('_') for b in BROKEN])
def test_check_fails_on_each_broken_setup(setup, breaks, name, expected):
    if breaks in (_not_writable_by_the_user, _parent_not_enterable):
        try:
            pwd.getpwnam('nobody')
        except KeyError:
            pytest.skip('no user nobody here')
        if os.geteuid() == pwd.getpwnam('nobody').pw_uid:
            pytest.skip('running as nobody')
    keep = []
    try:
        breaks(setup, keep)
        result = setup.check()
    finally:
        for thing in keep:
            thing.close()
    assert result.returncode != 0, result.stdout
    failed = failures(result)
    assert [n for n, _ in failed if n == name], result.stdout
    text = ' | '.join(t for n, t in failed if n == name)
    assert expected in text, result.stdout
    if name in ('host', 'bind', 'ipc-dir', 'ring-host', 'sentinel',
                'heartbeat'):
        # The operator gets the fix on the same line (the other checks
        # report an error whose text already ends with it).
        assert 'fix: ' in text, text
    # Every failure is one line in the count.
    assert re.search(r'\d+ checks: %d failed' % len(failed), result.stdout)


def test_check_names_a_wrong_redis_password(setup, redis_locked):
    use_redis(setup, redis_locked, password='guess')
    result = setup.check()
    assert result.returncode == 1
    assert [n for n, t in failures(result)] == ['redis'], result.stdout
    assert 'refused the password' in failures(result)[0][1]
    use_redis(setup, redis_locked, password=None)
    result = setup.check()
    assert 'requires a password, and none is set' in failures(result)[0][1]


def test_check_fails_for_a_port_held_by_another_process_beside_a_receiver(
        setup, daemons):
    # The receiver of this IPC directory answers, but the configured port
    # is someone else's.
    daemons(setup.directory, {'DEFAULT': {'rpc_zmq_ipc_dir': setup.ipc_dir}})
    keep = []
    _port_in_use(setup, keep)
    try:
        result = setup.check()
    finally:
        keep[0].close()
    assert result.returncode == 1
    assert [n for n, _ in failures(result)] == ['bind'], result.stdout
    assert 'not by a receiver of %s' % setup.ipc_dir in result.stdout


def test_check_tells_whether_the_service_user_may_connect(setup):
    os.chmod(setup.directory, 0o700)
    result = setup.check('--service-user', 'nobody')
    assert result.returncode == 1
    assert failures(result) == [(
        'service', 'nobody may not enter %s; fix: chmod o+x %s, or give '
        'nobody its group' % (setup.directory, setup.directory))]
    os.chmod(setup.directory, 0o755)
    setup.options['zmq_receiver'] = {'socket_mode': '0600'}
    result = setup.check('--service-user', 'nobody')
    assert result.returncode == 1
    assert failures(result) == [(
        'service', 'nobody may not connect: the sockets will be owned by %s, '
        'group %s, mode 0600; fix: add nobody to group %s (usermod -a -G %s '
        'nobody), or set [zmq_receiver] socket_group to a group of nobody'
        % ((pwd.getpwuid(os.geteuid()).pw_name,) +
           (_group_name(os.getegid()),) * 3))]
    setup.options['zmq_receiver'] = {'socket_mode': '0666'}
    assert setup.check('--service-user', 'nobody').returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to own the '
                    'directory as another user')
def test_check_as_root_assumes_the_receiver_runs_as_the_directory_owner(
        setup, system_user):
    # A unit with User=<name> and no [zmq_receiver] user: the config does
    # not say who runs the receiver; the directory's owner does.
    name, uid, gid = system_user
    os.chown(setup.ipc_dir, uid, gid)
    result = setup.check('--service-user', name)
    assert result.returncode == 0, result.stdout
    lines = report(result)
    assert ('PASS', 'user', 'the receiver runs as %s (the owner of %s, as '
            '[zmq_receiver] user is unset; give --receiver-user if the '
            'unit\'s User= says otherwise)' % (name, setup.ipc_dir)) in lines
    assert ('PASS', 'service', '%s may connect to the sockets (group %s, '
            'mode 0660)' % (name, _group_name(gid))) in lines
    # Told that root runs it, the sockets are root's: the old answer.
    result = setup.check('--service-user', name, '--receiver-user', 'root')
    assert result.returncode == 1
    assert ('PASS', 'user', 'the receiver runs as root (--receiver-user)'
            ) in report(result)
    assert failures(result) == [(
        'service', '{0} may not connect: the sockets will be owned by root, '
        'group root, mode 0660; fix: add {0} to group root (usermod -a -G '
        'root {0}), or set [zmq_receiver] socket_group to a group of {0}'
        .format(name))]

@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('setpriv'),
                    reason='needs root and setpriv to run check as another '
                    'user')
def test_check_names_a_config_file_its_user_may_not_read(setup, system_user):
    # As /etc/nova/nova.conf (0640 root:nova) is for a user without the
    # group: the receiver would exit 77, "permission denied".
    name, uid, gid = system_user
    setup.write()

    def check_as_user():
        argv = ['setpriv', '--reuid=%d' % uid, '--regid=%d' % gid,
                '--clear-groups'] + ADMIN + [
                    'check', '--config-file', setup.config_file]
        return subprocess.run(argv, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env=support.clean_env(),
                              timeout=support.TIMEOUT)

    os.chmod(setup.config_file, 0o644)
    readable = check_as_user()
    if 'PASS  config' not in readable.stdout:
        pytest.skip('%s cannot run check here: %s' % (name, readable.stderr))
    os.chmod(setup.config_file, 0o640)
    result = check_as_user()
    assert result.returncode == 77, result.stdout + result.stderr
    assert failures(result) == [(
        'config', 'cannot read {0} as {1} (permission denied): it is 0640 '
        'root:root; fix: add {1} to group root (usermod -a -G root {1}), or '
        'run check as root'.format(setup.config_file, name))]
    # Its own group, without the read bit.
    os.chown(setup.config_file, 0, gid)
    os.chmod(setup.config_file, 0o600)
    result = check_as_user()
    assert failures(result) == [(
        'config', 'cannot read {0} as {1} (permission denied): it is 0600 '
        'root:{2}; fix: chmod g+r {0}, or run check as root'.format(
            setup.config_file, name, _group_name(gid)))]
    assert 'Traceback' not in result.stderr
    # A directory on the way it may not enter.
    os.chmod(setup.directory, 0o700)
    result = check_as_user()
    os.chmod(setup.directory, 0o755)
    assert failures(result) == [(
        'config', 'cannot read {0} as {1} (permission denied): it may not '
        'enter {2}; fix: chmod o+x {2}, or give {1} its group, or run check '
        'as root'.format(setup.config_file, name, setup.directory))]


def test_check_says_whom_it_assumes_without_a_directory(setup):
    os.rmdir(setup.ipc_dir)
    result = setup.check()
    assert result.returncode == 0, result.stdout
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert ('PASS', 'user', 'the receiver runs as %s (the user running this '
            'check, as [zmq_receiver] user is unset and %s does not exist; '
            'give --receiver-user if the unit\'s User= says otherwise)'
            % (me, setup.ipc_dir)) in report(result)
    unknown = setup.check('--receiver-user', 'zrnosuchuser')
    assert failures(unknown) == [(
        'user', '--receiver-user = zrnosuchuser: no such user on this host; '
        'create it (useradd --system zrnosuchuser) or fix the name')]


def _group_name(gid):
    import grp
    return grp.getgrgid(gid).gr_name


# -- ring --------------------------------------------------------------------


def test_ring_validate(setup):
    good = admin('ring', 'validate', setup.ring_file)
    assert (good.returncode, good.stdout) == (
        0, 'OK %s: 2 topics, 1 hosts\n' % setup.ring_file)
    setup.write_ring(GUIDE_EXAMPLE)
    bad = admin('ring', 'validate', setup.ring_file)
    assert bad.returncode == 1
    assert bad.stdout == ''
    assert '%s, line 2, column 1' % setup.ring_file in bad.stderr
    assert 'single quotes at line 2, column 1' in bad.stderr
    assert 'trailing comma at line 3, column 32' in bad.stderr


def test_ring_validate_reads_the_configured_file_and_warns(setup):
    setup.write_ring('{"scheduler": ["host1.example.org"], "cert": []}')
    result = admin('--config-file', setup.write(), 'ring', 'validate')
    assert result.returncode == 0
    assert 'OK %s: 2 topics, 1 hosts' % setup.ring_file in result.stdout
    assert "topic 'cert' lists no host" in result.stderr
    assert 'host1.example.org' in result.stderr


def test_ring_show(setup):
    setup.write_ring('{"b": ["h2", "h1"],\n  "a": ["h1"]}')
    table = admin('ring', 'show', setup.ring_file)
    assert table.stdout.splitlines() == ['TOPIC  HOSTS', 'a      h1',
                                         'b      h2 h1']
    as_json = admin('ring', 'show', '--json', setup.ring_file)
    assert json.loads(as_json.stdout) == {'a': ['h1'], 'b': ['h2', 'h1']}


# -- redis -------------------------------------------------------------------


def test_redis_import_show_export_round_trip(setup, redis_locked):
    use_redis(setup, redis_locked)
    setup.write_ring(json.dumps({'scheduler': ['host1', 'host2'],
                                 'conductor': ['host2']}))
    config = setup.write()
    imported = admin('--config-file', config, 'redis', 'import-ring')
    assert imported.returncode == 0, imported.stderr
    assert 'imported 3 registrations' in imported.stderr
    raw = redis_locked.client()
    # As a service writes them, without TTL: the ring had none.
    assert raw.smembers('scheduler') == {'scheduler.host1',
                                         'scheduler.host2'}
    assert raw.smembers('scheduler.host1') == {'', 'scheduler.host1.host1'}
    assert raw.ttl('scheduler.host1') == -1
    shown = admin('--config-file', config, 'redis', 'show')
    assert shown.stdout.splitlines() == [
        'TOPIC      HOST   TTL',
        'conductor  host2  no expiry',
        'scheduler  host1  no expiry',
        'scheduler  host2  no expiry']
    out = os.path.join(setup.directory, 'exported.json')
    exported = admin('--config-file', config, 'ring', 'from-redis', '-o',
                     out)
    assert exported.returncode == 0, exported.stderr
    with open(out) as f:
        assert json.load(f) == {'conductor': ['host2'],
                                'scheduler': ['host1', 'host2']}
    assert admin('ring', 'validate', out).returncode == 0


def test_redis_register_unregister_prune(setup, redis_plain):
    use_redis(setup, redis_plain, password=None)
    config = setup.write()
    raw = redis_plain.client()
    registered = admin('--config-file', config, 'redis', 'register',
                       'compute', 'host1', '--ttl', '120')
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.splitlines() == [
        'registered compute on host1 (TTL 120 s)',
        'registered compute.host1 on host1 (TTL 120 s)']
    assert 110 <= raw.ttl('compute.host1') <= 120
    # A service that died: listed, its key gone.
    raw.sadd('compute', 'compute.host2')
    shown = admin('--config-file', config, 'redis', 'show', 'compute',
                  '--json')
    assert [(r['host'], r['ttl'] == -2) for r in json.loads(shown.stdout)] == [
        ('host1', False), ('host2', True)]
    table = admin('--config-file', config, 'redis', 'show')
    assert 'host2  DEAD' in table.stdout
    dry = admin('--config-file', config, 'redis', 'prune', '--dry-run')
    assert dry.stdout == 'would remove compute.host2 from compute\n'
    assert raw.sismember('compute', 'compute.host2')
    pruned = admin('--config-file', config, 'redis', 'prune')
    assert pruned.stdout == 'removed compute.host2 from compute\n'
    assert raw.smembers('compute') == {'compute.host1'}
    gone = admin('--config-file', config, 'redis', 'unregister', 'compute',
                 'host1')
    assert gone.returncode == 0
    assert raw.keys() == []
    empty = admin('--config-file', config, 'ring', 'from-redis')
    assert empty.returncode == 1
    assert 'no live registration' in empty.stderr


def test_redis_tool_names_an_unreachable_server(setup):
    setup.options['matchmaker_redis'] = {'port': redis_server.free_port(),
                                         'socket_timeout': 500}
    result = admin('--config-file', setup.write(), 'redis', 'show',
                   timeout=30)
    assert result.returncode == 1
    assert 'does not answer' in result.stderr
    assert 'Traceback' not in result.stderr


# -- send and tap through a running receiver ---------------------------------


def consumers(daemon, key):
    return lambda s: s['topics'].get(key, {}).get('consumers')


def test_tap_on_a_fanout_outlet_is_a_silent_extra_subscriber(
        ctx, receiver, background):
    key = 'fanout~compute'
    service = sub(ctx, receiver, key)
    out = support.sender(ctx, receiver)
    out.send_multipart(support.cast('fanout~compute.h0', b'opening'))
    assert recv(service)[3] == b'opening'
    tap = background('--config-file', receiver.config_file, 'tap', key,
                     '--count', '1', '--json', '--timeout', '10')
    tap.wait_err('tapping .*zmq_topic_fanout~compute as a silent extra '
                 'subscriber')
    receiver.wait_stats(lambda s: consumers(receiver, key)(s) == 2)
    sent = admin('--config-file', receiver.config_file, 'send', 'compute',
                 '--fanout', '--endpoint', receiver.endpoint,
                 '--method', 'refresh', '--args', '{"id": 7}',
                 '--context', '{"user": "u1", "project_id": "p1"}')
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout == 'sent fanout refresh to fanout~compute at %s\n' % (
        receiver.endpoint)
    status, lines = tap.finish()
    assert status == 0
    assert len(lines) == 1
    seen = json.loads(lines[0])
    assert (seen['topic'], seen['layout'], seen['method'], seen['args'],
            seen['context']) == ('fanout~compute', 'cast', 'refresh',
                                 {'id': 7}, {'user': 'u1',
                                             'project_id': 'p1'})
    assert not any('WARNING' in line for line in tap.err_lines)
    # The service got it too, byte for byte the legacy layout.
    frames = recv(service)
    assert frames[:3] == [b'0', b'fanout~compute', b'cast']
    ctx_json, message = json.loads(frames[3])
    assert json.loads(ctx_json) == {'user': 'u1', 'project_id': 'p1'}
    assert message == {'method': 'refresh', 'args': {'id': 7}}
    support.close_all(service, out)


def test_tap_on_a_push_outlet_warns_and_takes_messages_away(
        ctx, receiver, background):
    key = 'compute.testhost'
    service = pull(ctx, receiver, key)
    out = support.sender(ctx, receiver)
    out.send_multipart(support.cast(key, b'opening'))
    assert recv(service)[3] == b'opening'
    tap = background('--config-file', receiver.config_file, 'tap', key,
                     '--count', '1', '--timeout', '10')
    warning = tap.wait_err('WARNING')
    assert 'PUSH outlet' in warning and 'TAKEN AWAY' in warning
    tap.wait_err('tapping .* as one more consumer of a PUSH outlet')
    receiver.wait_stats(lambda s: consumers(receiver, key)(s) == 2)
    for n in (1, 2):
        sent = admin('--config-file', receiver.config_file, 'send', key,
                     '--endpoint', receiver.endpoint, '--method', 'work',
                     '--args', '{"n": %d}' % n)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    status, lines = tap.finish()
    assert status == 0
    assert lines[:3] == ['--- compute.testhost  msg_id 0  cast',
                         'context: {}', 'method:  work']
    match = re.fullmatch(r'args:    \{"n": ([12])\}', lines[3])
    assert match and len(lines) == 4, lines
    tapped = int(match.group(1))
    # The receiver dealt one to each consumer: the service lost the other.
    got = json.loads(recv(service)[3])[1]['args']['n']
    assert {got, tapped} == {1, 2}
    assert support.nothing_arrives(service, 0.3)
    support.close_all(service, out)


# PROTOCOL.md section 2: a call request and a v2 notification, as captured.
CALL = [
    b'0', b'compute.testhost', b'cast',
    b'["{\\"user\\": \\"u1\\", \\"project_id\\": \\"p1\\"}", {"method": '
    b'"-reply", "args": {"msg_id": "ab1fb67af25447328e916488de4373c4", '
    b'"topic": "zmq_replies.callerhost", "msg": ["{\\"user\\": \\"u1\\", '
    b'\\"project_id\\": \\"p1\\"}", {"method": "get_thing", "args": {"a": '
    b'1}}]}}]',
]
NOTIFICATION_V2 = [
    b'0', b'compute.testhost', b'impl_zmq_v2',
    b'{"project_id": "p1", "user": "u1"}',
    b'oslo.message',
    b'{"priority": "INFO", "event_type": "compute.instance.create.end", '
    b'"publisher_id": "compute.host1", "payload": {"k": "v"}, '
    b'"message_id": "m1", "timestamp": "t"}',
    b'oslo.version', b'2.0',
]


def test_tap_decodes_a_call_and_a_v2_notification(ctx, receiver,
                                                  background):
    tap = background('--config-file', receiver.config_file, 'tap',
                     'compute.testhost', '--count', '2', '--json',
                     '--timeout', '10')
    tap.wait_err('tapping')
    out = support.sender(ctx, receiver)
    out.send_multipart(CALL)
    out.send_multipart(NOTIFICATION_V2)
    status, lines = tap.finish()
    assert status == 0
    call, notification = [json.loads(line) for line in lines]
    assert (call['layout'], call['method'], call['args'], call['context'],
            call['call']) == (
        'cast', 'get_thing', {'a': 1}, {'user': 'u1', 'project_id': 'p1'},
        {'msg_id': 'ab1fb67af25447328e916488de4373c4',
         'reply_topic': 'zmq_replies.callerhost'})
    assert notification['layout'] == 'impl_zmq_v2'
    assert notification['context'] == {'project_id': 'p1', 'user': 'u1'}
    assert notification['message']['event_type'] == (
        'compute.instance.create.end')
    assert notification['method'] is None
    assert notification['version'] == '2.0'
    support.close_all(out)


def test_tap_gives_up_after_its_timeout(receiver, background):
    tap = background('--config-file', receiver.config_file, 'tap',
                     'zmq_replies.testhost', '--count', '1', '--timeout',
                     '0.5')
    tap.wait_err('0 of 1 messages within 0.5 s')
    assert tap.finish() == (1, [])


def admin_with_hosts(hosts, *args):
    """admin() with *hosts* as its /etc/hosts (support.run_with_hosts)."""
    return support.run_with_hosts(hosts, ADMIN + list(args))


@pytest.mark.parametrize('hosts', [None] + sorted(support.DEBIAN_HOSTS))
def test_send_through_the_ring_matchmaker(ctx, daemons, short_dir, hosts):
    # The receiver listens on 127.0.0.1 only, as ./dev run's does.
    run = admin if hosts is None else functools.partial(
        admin_with_hosts, support.DEBIAN_HOSTS[hosts])
    ring_file = os.path.join(short_dir, 'ring.json')
    with open(ring_file, 'w') as f:
        json.dump({'compute': ['localhost']}, f)
    daemon = daemons(short_dir, {
        'DEFAULT': {'rpc_zmq_matchmaker': 'ring'},
        'matchmaker_ring': {'ringfile': ring_file}})
    consumer = pull(ctx, daemon, 'compute.localhost')
    subscriber = sub(ctx, daemon, 'fanout~compute')
    args = ('--config-file', daemon.config_file, 'send', 'compute',
            '--port', str(daemon.port), '--method', 'ping')
    sent = run(*args)
    if hosts is not None:
        support.assert_debian_localhost(hosts, sent)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout == ('sent cast ping to compute.localhost at '
                           'tcp://localhost:%d\n' % daemon.port)
    assert recv(consumer) == [
        b'0', b'compute.localhost', b'cast',
        b'["{}", {"method": "ping", "args": {}}]']
    fanout = run(*args + ('--fanout',))
    assert fanout.returncode == 0, fanout.stdout + fanout.stderr
    assert recv(subscriber)[:3] == [b'0', b'fanout~compute.localhost',
                                    b'cast']
    support.close_all(consumer, subscriber)


def test_send_fails_when_nobody_serves_the_topic_or_answers(setup):
    config = setup.write()
    unlisted = admin('--config-file', config, 'send', 'compute')
    assert unlisted.returncode == 1
    assert 'knows no host for compute' in unlisted.stderr
    assert setup.ring_file in unlisted.stderr
    nobody = admin('--config-file', config, 'send', 'scheduler',
                   '--host', '127.0.0.1', '--port',
                   str(redis_server.free_port()), '--timeout', '0.3')
    assert nobody.returncode == 1
    assert nobody.stdout == (
        'FAIL scheduler: no receiver accepted a connection at '
        'tcp://127.0.0.1:%s within 0.3 s\n' % nobody.args[-3])
