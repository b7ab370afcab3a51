"""The receiver's process lifecycle through real processes (issue 3).

Startup refusals with their exit statuses, the privilege drop as seen by the
kernel (/proc/<pid>/status), ``--daemon``, sd_notify over a real datagram
socket standing in for systemd, the signals, and a restart after SIGKILL.

CI runs these as root: a privilege drop, a port below 1024 and a chown can
only be tested for real there. Tests that need root skip without it.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import types

import pytest
import zmq

from tests import support
from tests.support import free_port, queue_casts, recv, run_split, wait_until
from zmq_receiver import errors

PROG = 'oslo-messaging-zmq-receiver'

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason='needs root (CI runs as root)')

#: Uids with no passwd entry, as OpenShift assigns them.
ARBITRARY_UID = 4242421
FOREIGN_UID = 4242499


# -- helpers -------------------------------------------------------------


def config(directory, ipc_dir, receiver_options=None, default=None):
    """A config file in *directory* serving *ipc_dir* on a free port."""
    options = {
        'DEFAULT': {'rpc_zmq_bind_address': '127.0.0.1',
                    'rpc_zmq_port': 0,
                    'rpc_zmq_ipc_dir': ipc_dir},
        'zmq_receiver': dict(receiver_options or {}),
    }
    options['DEFAULT'].update(default or {})
    return support.write_config(os.path.join(directory, 'receiver.conf'),
                                options)


def error_line(stderr):
    """The receiver's ``error:`` line on stderr (there must be one)."""
    lines = [line for line in stderr.splitlines()
             if line.startswith(PROG + ': error: ')]
    assert len(lines) == 1, 'expected one error line on stderr:\n' + stderr
    return lines[0]


def read(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except FileNotFoundError:
        return ''


def wait_in_file(path, pattern, timeout=support.TIMEOUT):
    """The first match of *pattern* in the file *path*, once it appears."""
    regex = re.compile(pattern)
    found = []

    def matched():
        match = regex.search(read(path))
        if match:
            found.append(match)
        return bool(match)

    wait_until(matched, '%r in %s' % (pattern, path), timeout)
    return found[0]


def process_state(pid):
    """The one-letter state of *pid* from /proc, or None when it is gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            # The command name may hold spaces; the state follows its ')'.
            return f.read().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def gone(pid):
    """Whether *pid* has exited.

    A daemon is not our child: it is reparented to the container's init,
    which may not reap it, so a zombie counts as gone (it has exited and
    released everything).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return process_state(pid) in (None, 'Z')


def ids(pid):
    """The Uid, Gid (real, effective, saved, fs) and Groups of *pid*."""
    fields = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('Uid', 'Gid', 'Groups'):
                fields[key] = [int(v) for v in value.split()]
    return fields


def free_low_port():
    """A free TCP port below 1024 on 127.0.0.1, highest first."""
    for port in range(1023, 900, -1):
        probe = socket.socket()
        try:
            probe.bind(('127.0.0.1', port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    pytest.skip('no free port between 901 and 1023')


def traversable(directory):
    """Let a dropped-privilege receiver reach the IPC dir inside it
    (mkdtemp makes it 0700)."""
    os.chmod(directory, 0o755)


def pull(ctx, daemon, key):
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.outlet(key))
    return sock


def forwards(ctx, daemon, topic='lifecycle.host1'):
    """Assert that a cast sent to *daemon* reaches a consumer of *topic*."""
    consumer = pull(ctx, daemon, topic)
    frames = support.cast(topic, b'["{}", {"method": "ping"}]')
    out = support.sender(ctx, daemon)
    out.send_multipart(frames)
    assert recv(consumer) == frames
    support.close_all(consumer, out)


class NotifySocket:
    """What systemd listens on for sd_notify: a bound datagram socket.

    :attr:`path` is the NOTIFY_SOCKET value: a file in *directory*, or an
    abstract name (``@...``, no file) with *abstract*.
    """

    def __init__(self, directory, abstract=False):
        if abstract:
            # Unique as the directory is (mkdtemp).
            self.path = '@zrtest-notify-' + os.path.basename(directory)
            address = '\0' + self.path[1:]
        else:
            self.path = address = os.path.join(directory, 'notify')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        #: Every datagram received so far, decoded, in order.
        self.seen = []

    def receive(self, timeout):
        """The next datagram as {field: value}, or None after *timeout*."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        text = data.decode()
        self.seen.append(text)
        return dict(line.split('=', 1) for line in text.splitlines()
                    if '=' in line)

    def wait_for(self, field, value=None, timeout=support.TIMEOUT):
        """The first new datagram that sets *field* (to *value*)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            message = self.receive(remaining) if remaining > 0 else None
            if message is None:
                raise AssertionError(
                    'no %s=%s notification within %.0f s; got:\n%s' % (
                        field, value or '*', timeout, '\n---\n'.join(
                            self.seen)))
            if field in message and (value is None or
                                     message[field] == value):
                return message

    def drain(self):
        """Forget whatever is queued now."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass

    def close(self):
        self.sock.close()


class DaemonAs(support.Daemon):
    """A receiver started directly as *uid*:*gid*, never root (as a unit's
    ``User=`` starts it)."""

    def __init__(self, directory, uid, gid, options=None):
        super().__init__(directory, options)
        self.uid, self.gid = uid, gid

    def command(self):
        """The command line that runs the receiver as the user."""
        # setpriv (util-linux) when present: here it could exec an
        # interpreter that Popen(user=...) was refused (EACCES).
        setpriv = shutil.which('setpriv')
        if setpriv is None:
            return [sys.executable, '-m', 'zmq_receiver'] + self.args, {
                'user': self.uid, 'group': self.gid, 'extra_groups': []}
        return [setpriv, '--reuid=%d' % self.uid, '--regid=%d' % self.gid,
                '--clear-groups', sys.executable, '-m',
                'zmq_receiver'] + self.args, {}

    def usable(self):
        """Whether the interpreter and the package run as the user."""
        argv, kwargs = self.command()
        argv = argv[:argv.index('-m')] + ['-c', 'import zmq_receiver.cli']
        return subprocess.run(argv, env=self.env, cwd=self.directory,
                              capture_output=True, **kwargs).returncode == 0


# -- fixtures ------------------------------------------------------------


@pytest.fixture
def spawn():
    """Start receivers (support.Daemon) with full control of their
    environment and of whether to wait for readiness; all are killed at the
    end."""
    started = []

    def start(directory, options=None, env=None, unset=(), args=(),
              wait_ready=True, pythonpath=()):
        daemon = support.Daemon(directory, options, args=args, env=env)
        for name in unset:
            daemon.env.pop(name, None)
        # Searched before the checkout (see no_systemd_python).
        daemon.env['PYTHONPATH'] = os.pathsep.join(
            list(pythonpath) + [daemon.env['PYTHONPATH']])
        started.append(daemon)
        return daemon.start(wait_ready=wait_ready)

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def detached():
    """Pids of ``--daemon`` receivers, SIGKILLed at the end if still up."""
    pids = []
    yield pids
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def notify_socket(short_dir):
    sock = NotifySocket(short_dir)
    yield sock
    sock.close()


@pytest.fixture
def no_systemd_python(short_dir):
    """A directory that, first on the receiver's PYTHONPATH, makes
    ``import systemd`` fail as if systemd-python were not installed (no
    [systemd] extra). In short_dir: a receiver that dropped its
    privileges still reads it, and does not fall through to the real one.
    """
    path = os.path.join(short_dir, 'hidden')
    os.makedirs(os.path.join(path, 'systemd'))
    with open(os.path.join(path, 'systemd', '__init__.py'), 'w') as f:
        f.write('raise ImportError("systemd-python is hidden")\n')
    return types.SimpleNamespace(path=path)


# -- startup refusals ----------------------------------------------------


def test_ipc_dir_that_is_a_symlink_is_refused(short_dir):
    real = os.path.join(short_dir, 'real')
    os.mkdir(real)
    link = os.path.join(short_dir, 'ipc')
    os.symlink(real, link)
    status, out, err = run_split(['--config-file', config(short_dir, link)])
    assert status == errors.EXIT_PERMISSION, out + err
    line = error_line(err)
    assert link in line and 'symbolic link' in line
    # The fix: the real directory to set instead.
    assert 'rpc_zmq_ipc_dir' in line and real in line
    assert 'Traceback' not in out + err
    # Nothing was created through the link.
    assert os.listdir(real) == []


@needs_root
def test_a_config_file_the_user_may_not_read_is_a_permission_problem(
        short_dir, system_user):
    # As a unit with Group=openstack instead of the user's own group finds
    # /etc/nova/nova.conf (0640 root:nova).
    name, uid, gid = system_user
    traversable(short_dir)
    daemon = DaemonAs(short_dir, uid, gid)
    if not daemon.usable():
        pytest.skip('%s cannot run %s here' % (name, sys.executable))
    os.chmod(daemon.config_file, 0o640)
    daemon.start(wait_ready=False)
    assert daemon.wait() == errors.EXIT_PERMISSION, daemon.log()
    line = error_line(daemon.log())
    assert daemon.config_file in line and 'permission denied' in line
    assert 'for %s' % name in line and 'SupplementaryGroups=' in line
    assert 'Traceback' not in daemon.log()


@needs_root
def test_ipc_dir_of_another_user_not_writable_by_the_user_is_refused(
        short_dir, system_user):
    name, uid, gid = system_user
    traversable(short_dir)
    ipc = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc, 0o755)
    os.chown(ipc, FOREIGN_UID, FOREIGN_UID)
    status, out, err = run_split(['--config-file', config(
        short_dir, ipc, {'user': name})])
    assert status == errors.EXIT_PERMISSION, out + err
    line = error_line(err)
    assert ipc in line and 'uid %d' % FOREIGN_UID in line
    # The fix names the user to give the directory to.
    assert 'chown %s %s' % (name, ipc) in line
    assert 'Traceback' not in out + err


@needs_root
def test_ipc_dir_the_user_cannot_reach_is_refused(short_dir, system_user):
    name, uid, gid = system_user
    # mkdtemp made short_dir 0700 root: the user cannot enter it.
    assert os.stat(short_dir).st_mode & 0o777 == 0o700
    ipc = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc, 0o755)
    os.chown(ipc, uid, gid)
    # A receiver that wrongly starts runs until the timeout ends it.
    try:
        status, out, err = run_split(['--config-file', config(
            short_dir, ipc, {'user': name})], timeout=5)
    except subprocess.TimeoutExpired as exc:
        pytest.fail('started although %s cannot reach %s:\n%s' % (
            name, ipc, exc.output or ''))
    assert status == errors.EXIT_PERMISSION, out + err
    assert ipc in error_line(err)


@needs_root
def test_world_writable_ipc_dir_is_refused(short_dir):
    ipc = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc)
    os.chmod(ipc, 0o777)
    status, out, err = run_split(['--config-file', config(short_dir, ipc)])
    assert status == errors.EXIT_PERMISSION, out + err
    line = error_line(err)
    assert ipc in line and 'world-writable' in line
    assert 'chmod o-w %s' % ipc in line and 'allow_world_writable' in line
    assert 'Traceback' not in out + err


@pytest.fixture
def read_only_mount():
    """mount(path): a read-only tmpfs on *path*, as ProtectSystem=strict
    leaves every path outside ReadWritePaths=; unmounted at the end.
    Skips, saying why, where mounting is not permitted."""
    mounted = []

    def mount(path):
        os.makedirs(path, exist_ok=True)
        result = subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', 'ro,mode=0755', 'tmpfs', path],
            capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip('cannot mount a read-only tmpfs here (%s)'
                        % result.stderr.strip())
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(['umount', path], capture_output=True)


@needs_root
@pytest.mark.parametrize('exists', [True, False], ids=['exists', 'missing'])
def test_ipc_dir_on_a_read_only_file_system_names_read_write_paths(
        short_dir, read_only_mount, exists):
    if exists:
        ipc = os.path.join(short_dir, 'ipc')
        read_only_mount(ipc)
    else:
        read_only_mount(os.path.join(short_dir, 'ro'))
        ipc = os.path.join(short_dir, 'ro', 'ipc')
    status, out, err = run_split(['--config-file', config(short_dir, ipc)])
    assert status == errors.EXIT_PERMISSION, out + err
    line = error_line(err)
    assert ipc in line and 'read-only file system' in line, line
    assert 'ProtectSystem=strict' in line, line
    assert 'add ReadWritePaths=%s to the unit' % ipc in line, line
    if not exists:
        assert 'install -d -o root %s' % ipc in line, line
    # Not mistaken for an ownership problem, and said once in the log.
    assert 'chown' not in out + err and 'lock file' not in out + err
    assert out.count('read-only file system') == 1, out


@needs_root
def test_read_only_ipc_dir_under_the_journal_is_one_error(short_dir,
                                                          read_only_mount):
    ipc = os.path.join(short_dir, 'ipc')
    read_only_mount(ipc)
    daemon = support.Daemon(short_dir, journal=True)
    try:
        daemon.start(wait_ready=False)
        assert daemon.wait() == errors.EXIT_PERMISSION
    finally:
        daemon.kill()
    said = [line for line in daemon.lines if 'read-only' in line]
    assert len(said) == 1 and said[0].startswith('<3>'), daemon.log()
    assert 'ReadWritePaths=%s' % ipc in said[0]


def test_world_writable_ipc_dir_is_allowed_when_configured(ctx, spawn,
                                                            short_dir):
    ipc = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc)
    os.chmod(ipc, 0o777)
    daemon = spawn(short_dir, {'zmq_receiver': {
        'allow_world_writable': 'true'}})
    forwards(ctx, daemon)
    assert daemon.stop() == errors.EXIT_OK


@pytest.mark.parametrize('option, value, words', [
    ('user', 'zrnosuchuser', ('no such user', 'useradd --system')),
    ('group', 'zrnosuchgroup', ('no such group', 'groupadd --system')),
])
def test_unknown_user_or_group_is_a_config_error(short_dir, option, value,
                                                 words):
    ipc = os.path.join(short_dir, 'ipc')
    status, out, err = run_split(['--config-file', config(
        short_dir, ipc, {option: value})])
    assert status == errors.EXIT_CONFIG, out + err
    line = error_line(err)
    assert '[zmq_receiver] %s = %s' % (option, value) in line
    for word in words:
        assert word in line
    assert 'Traceback' not in out + err
    # Refused before touching the directory.
    assert not os.path.exists(ipc)


def test_a_config_error_before_logging_is_one_line_on_stderr(short_dir):
    # oslo.log's temporary handler must not repeat it before the log is set.
    status, out, err = run_split(['--config-file', config(
        short_dir, os.path.join(short_dir, 'ipc'),
        {'user': 'zrnosuchuser'})])
    assert status == errors.EXIT_CONFIG
    assert len(err.splitlines()) == 1, err


# -- privileges ----------------------------------------------------------


@needs_root
def test_privilege_drop_for_real(ctx, spawn, short_dir, system_user):
    name, uid, gid = system_user
    traversable(short_dir)
    assert not os.path.exists(os.path.join(short_dir, 'ipc'))
    daemon = spawn(short_dir, {'zmq_receiver': {'user': name}})
    status = ids(daemon.proc.pid)
    # Real, effective, saved and filesystem ids: a saved uid 0 could be
    # used to become root again.
    assert status['Uid'] == [uid] * 4, status
    assert status['Gid'] == [gid] * 4, status
    # Root's supplementary groups are gone; only the user's own remain.
    assert sorted(status['Groups']) == sorted(set(os.getgrouplist(name,
                                                                  gid)))
    # The directory did not exist: it was made for the user.
    st = os.stat(daemon.ipc_dir)
    assert (st.st_uid, st.st_gid) == (uid, gid)
    forwards(ctx, daemon, 'owned.host1')
    for path in (daemon.path('owned.host1'),
                 os.path.join(daemon.ipc_dir, '.zmq-receiver-control')):
        st = os.stat(path)
        assert st.st_uid == uid, path
    assert 'RUNNING AS ROOT' not in daemon.log()
    assert daemon.stop() == errors.EXIT_OK
    # As the user, it could still remove its own files.
    assert not os.path.exists(daemon.path('owned.host1'))


@needs_root
def test_ipc_dir_is_created_for_the_user_when_missing(spawn, short_dir,
                                                      system_user):
    name, uid, gid = system_user
    traversable(short_dir)
    ipc = os.path.join(short_dir, 'ipc')
    assert not os.path.exists(ipc)
    spawn(short_dir, {'zmq_receiver': {'user': name,
                                       'ipc_dir_mode': '0750'}})
    st = os.stat(ipc)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o750)


@needs_root
def test_port_below_1024_binds_before_the_drop(ctx, spawn, short_dir,
                                               system_user):
    name, uid, _ = system_user
    traversable(short_dir)
    port = free_low_port()
    daemon = spawn(short_dir, {'DEFAULT': {'rpc_zmq_port': port},
                               'zmq_receiver': {'user': name}})
    assert daemon.port == port
    assert ids(daemon.proc.pid)['Uid'] == [uid] * 4
    forwards(ctx, daemon)


@needs_root
def test_arbitrary_uid_without_passwd_entry(ctx, spawn, short_dir):
    with pytest.raises(KeyError):
        pwd.getpwuid(ARBITRARY_UID)
    traversable(short_dir)
    ipc = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc, 0o755)
    os.chown(ipc, ARBITRARY_UID, ARBITRARY_UID)
    daemon = spawn(short_dir, {'zmq_receiver': {'user': ARBITRARY_UID}})
    status = ids(daemon.proc.pid)
    assert status['Uid'] == [ARBITRARY_UID] * 4
    # No passwd entry: the gid is the uid's number, no supplementary group.
    assert status['Gid'] == [ARBITRARY_UID] * 4
    assert status['Groups'] == []
    forwards(ctx, daemon)
    assert os.stat(daemon.path('lifecycle.host1')).st_uid == ARBITRARY_UID
    assert daemon.stop() == errors.EXIT_OK


@needs_root
def test_root_without_a_user_warns_loudly(spawn, short_dir):
    daemon = spawn(short_dir)
    assert re.search(r'WARNING .*RUNNING AS ROOT: set \[zmq_receiver\] user',
                     daemon.log())


# -- --daemon ------------------------------------------------------------


@pytest.mark.parametrize('configured_pid_file, as_user', [
    (False, False), (True, False), (False, True)])
def test_daemon_mode(ctx, detached, short_dir, request, configured_pid_file,
                     as_user):
    ipc = os.path.join(short_dir, 'ipc')
    log_file = os.path.join(short_dir, 'receiver.log')
    if configured_pid_file:
        pid_file = os.path.join(short_dir, 'custom.pid')
        options = {'pid_file': pid_file}
    else:
        pid_file = os.path.join(ipc, '.zmq-receiver.pid')
        options = {}
    if as_user:
        # What an init script does: start as root, run as the user.
        if os.geteuid() != 0:
            pytest.skip('needs root')
        name, uid, _ = request.getfixturevalue('system_user')
        traversable(short_dir)
        options['user'] = name
    conf = config(short_dir, ipc, options)
    started = time.monotonic()
    status, out, err = run_split(['--config-file', conf, '--daemon',
                                  '--log-file', log_file])
    # The launcher returns at once, with nothing to say.
    assert status == 0, out + err
    assert time.monotonic() - started < 5
    assert 'Traceback' not in out + err
    # The daemon writes its pid after the launcher returned.
    wait_until(lambda: read(pid_file).endswith('\n'), 'the pid file')
    pid = int(read(pid_file))
    detached.append(pid)
    assert not gone(pid)
    endpoint = wait_in_file(log_file, r'listening on (tcp://\S+),').group(1)
    if as_user:
        assert ids(pid)['Uid'] == [uid] * 4
    # The instance lock names the daemon, not the launcher.
    assert read(os.path.join(ipc, '.zmq-receiver.lock')).strip() == str(pid)
    # Detached: another session, so a terminal's hangup cannot reach it.
    assert os.getsid(pid) != os.getsid(0)

    consumer = ctx.socket(zmq.PULL)
    consumer.setsockopt(zmq.LINGER, 0)
    consumer.connect('ipc://%s/zmq_topic_detached.host1' % ipc)
    out_sock = ctx.socket(zmq.PUSH)
    out_sock.setsockopt(zmq.LINGER, 1000)
    out_sock.connect(endpoint)
    frames = support.cast('detached.host1')
    out_sock.send_multipart(frames)
    assert recv(consumer) == frames
    consumer.close()

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 'the daemon exiting after SIGTERM')
    assert wait_in_file(log_file, r'Stopped\.')
    assert not os.path.exists(pid_file)
    left = [f for f in os.listdir(ipc)]
    assert left == [], 'files left behind: %s' % left
    support.close_all(consumer, out_sock)


@needs_root
def test_daemon_never_leaves_a_stale_pid_file(detached, short_dir,
                                              system_user):
    name, _, _ = system_user
    traversable(short_dir)
    run_dir = os.path.join(short_dir, 'run')  # stands for /run
    os.mkdir(run_dir, 0o755)
    pid_file = os.path.join(run_dir, 'zmq-receiver-test.pid')
    log_file = os.path.join(short_dir, 'receiver.log')
    conf = config(short_dir, os.path.join(short_dir, 'ipc'),
                  {'user': name, 'pid_file': pid_file})
    status, out, err = run_split(['--config-file', conf, '--daemon',
                                  '--log-file', log_file])
    if status == errors.EXIT_PERMISSION:
        # Refusing at startup is a fine answer too, if it names the file.
        assert pid_file in error_line(err)
        return
    assert status == 0, out + err
    wait_until(lambda: read(pid_file).endswith('\n'), 'the pid file')
    pid = int(read(pid_file))
    detached.append(pid)
    wait_in_file(log_file, 'listening on')
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 'the daemon exiting after SIGTERM')
    assert not os.path.exists(pid_file), read(log_file)


def test_daemon_under_systemd_is_refused(short_dir):
    ipc = os.path.join(short_dir, 'ipc')
    status, out, err = run_split(
        ['--config-file', config(short_dir, ipc), '--daemon'],
        env={'NOTIFY_SOCKET': os.path.join(short_dir, 'notify')})
    assert status == errors.EXIT_CONFIG, out + err
    line = error_line(err)
    assert '--daemon' in line and 'NOTIFY_SOCKET' in line
    assert 'Traceback' not in out + err
    assert not os.path.exists(os.path.join(ipc, '.zmq-receiver.pid'))


def test_use_journal_without_systemd_python_is_a_config_error(
        spawn, short_dir, no_systemd_python):
    # A plain install (no [systemd] extra): oslo.log's journal handler
    # cannot exist, and the operator who asked for it is told at start.
    daemon = spawn(short_dir, args=('--use-journal',), wait_ready=False,
                   pythonpath=[no_systemd_python.path])
    assert daemon.wait() == errors.EXIT_CONFIG, daemon.log()
    line = error_line(daemon.log())
    assert '--use-journal needs systemd-python' in line
    assert "pip install 'oslo-messaging-zmq-receiver[systemd]'" in line
    assert 'or drop --use-journal' in line
    assert 'Traceback' not in daemon.log()
    assert not os.path.exists(os.path.join(short_dir, 'ipc'))
    # With systemd-python (./dev installs the extra) it is not refused;
    # use_stderr as well, to see it listening.
    daemon = spawn(short_dir, {'DEFAULT': {'use_stderr': True}},
                   args=('--use-journal',))
    assert daemon.proc.poll() is None, daemon.log()


# -- sd_notify -----------------------------------------------------------
#
# Every receiver here runs with systemd-python hidden (no_systemd_python):
# the notify protocol is spoken without it, as a plain install runs.


def test_ready_after_bind_status_and_stopping(ctx, spawn, short_dir,
                                              notify_socket,
                                              no_systemd_python):
    daemon = spawn(short_dir, env={'NOTIFY_SOCKET': notify_socket.path},
                   unset=('WATCHDOG_USEC', 'WATCHDOG_PID'), wait_ready=False,
                   pythonpath=[no_systemd_python.path])
    ready = notify_socket.wait_for('READY', '1')
    match = re.search(r'tcp://127\.0\.0\.1:(\d+)', ready.get('STATUS', ''))
    assert match, ready
    assert ready['MAINPID'] == str(daemon.proc.pid)
    # READY=1 means the port is bound: a connection succeeds right now.
    with socket.create_connection(('127.0.0.1', int(match.group(1))),
                                  timeout=support.TIMEOUT):
        pass
    daemon.wait_for(r'listening on (tcp://\S+),')
    daemon.endpoint = 'tcp://127.0.0.1:%s' % match.group(1)

    # Live counts in the periodic STATUS=.
    forwards(ctx, daemon)
    status = notify_socket.wait_for('STATUS', timeout=3)
    while 'forwarded 1' not in status['STATUS']:
        status = notify_socket.wait_for('STATUS', timeout=3)
    assert 'received 1' in status['STATUS']

    daemon.signal(signal.SIGTERM)
    notify_socket.wait_for('STOPPING', '1')
    assert daemon.wait() == errors.EXIT_OK


def test_reload_is_reloading_then_ready(spawn, short_dir, notify_socket,
                                        no_systemd_python):
    daemon = spawn(short_dir, env={'NOTIFY_SOCKET': notify_socket.path},
                   unset=('WATCHDOG_USEC', 'WATCHDOG_PID'),
                   pythonpath=[no_systemd_python.path])
    notify_socket.wait_for('READY', '1')
    daemon.signal(signal.SIGHUP)
    notify_socket.wait_for('RELOADING', '1')
    notify_socket.wait_for('READY', '1')
    reloading = next(i for i, text in enumerate(notify_socket.seen)
                     if 'RELOADING=1' in text)
    assert 'READY=1' in ''.join(notify_socket.seen[reloading + 1:])


def test_watchdog_pings_at_half_the_timeout(spawn, short_dir, notify_socket,
                                            no_systemd_python):
    spawn(short_dir, env={'NOTIFY_SOCKET': notify_socket.path,
                          'WATCHDOG_USEC': '400000'},
          unset=('WATCHDOG_PID',), pythonpath=[no_systemd_python.path])
    notify_socket.wait_for('WATCHDOG', '1')
    times = [time.monotonic()]
    while len(times) < 11:
        notify_socket.wait_for('WATCHDOG', '1', timeout=2)
        times.append(time.monotonic())
    intervals = [b - a for a, b in zip(times, times[1:])]
    assert 0.1 <= statistics.median(intervals) <= 0.3, intervals


def test_watchdog_for_another_pid_sends_no_pings(spawn, short_dir,
                                                 notify_socket,
                                                 no_systemd_python):
    # WATCHDOG_PID names the process systemd watches; not us.
    spawn(short_dir, env={'NOTIFY_SOCKET': notify_socket.path,
                          'WATCHDOG_USEC': '400000',
                          'WATCHDOG_PID': str(os.getpid())},
          pythonpath=[no_systemd_python.path])
    notify_socket.wait_for('READY', '1')
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        message = notify_socket.receive(deadline - time.monotonic())
        assert message is None or 'WATCHDOG' not in message, message


def test_a_stopped_process_stops_pinging(spawn, short_dir, notify_socket,
                                         no_systemd_python):
    daemon = spawn(short_dir, env={'NOTIFY_SOCKET': notify_socket.path,
                                   'WATCHDOG_USEC': '400000'},
                   unset=('WATCHDOG_PID',),
                   pythonpath=[no_systemd_python.path])
    notify_socket.wait_for('WATCHDOG', '1')
    pid = daemon.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: process_state(pid) == 'T', 'the stop')
        # Sent before it stopped: not a sign of life now.
        notify_socket.drain()
        assert notify_socket.receive(1.0) is None, notify_socket.seen[-1]
    finally:
        os.kill(pid, signal.SIGCONT)
    notify_socket.wait_for('WATCHDOG', '1', timeout=1.0)


def test_an_abstract_notify_socket(ctx, spawn, short_dir, no_systemd_python):
    # NOTIFY_SOCKET=@name: a socket in the abstract namespace, no file.
    abstract = NotifySocket(short_dir, abstract=True)
    try:
        daemon = spawn(short_dir, env={'NOTIFY_SOCKET': abstract.path,
                                       'WATCHDOG_USEC': '400000'},
                       unset=('WATCHDOG_PID',),
                       pythonpath=[no_systemd_python.path])
        ready = abstract.wait_for('READY', '1')
        assert ready['MAINPID'] == str(daemon.proc.pid)
        abstract.wait_for('WATCHDOG', '1')
        forwards(ctx, daemon)
    finally:
        abstract.close()


@needs_root
def test_a_notify_socket_only_root_may_write_works_after_the_drop(
        ctx, spawn, short_dir, system_user, no_systemd_python):
    # A container manager's or systemd's socket may be root's alone: it is
    # connected before the privilege drop, when the kernel checks it.
    name, uid, gid = system_user
    traversable(short_dir)
    private = os.path.join(short_dir, 'root-only')
    os.mkdir(private, 0o700)
    notify = NotifySocket(private)
    try:
        os.chmod(notify.path, 0o600)
        daemon = spawn(short_dir, {'zmq_receiver': {'user': name}},
                       env={'NOTIFY_SOCKET': notify.path,
                            'WATCHDOG_USEC': '400000'},
                       unset=('WATCHDOG_PID',),
                       pythonpath=[no_systemd_python.path])
        # READY=1 is sent after the drop, as the user.
        notify.wait_for('READY', '1')
        assert ids(daemon.proc.pid)['Uid'] == [uid] * 4
        notify.wait_for('WATCHDOG', '1')
        # Unwritable for everyone now: the socket is already connected.
        os.chmod(notify.path, 0)
        notify.drain()
        notify.wait_for('WATCHDOG', '1')
        forwards(ctx, daemon)
        assert 'Cannot notify' not in daemon.log()
        assert daemon.stop() == errors.EXIT_OK
    finally:
        notify.close()


def test_a_notify_socket_that_goes_away_is_logged_not_fatal(
        ctx, spawn, short_dir, notify_socket, no_systemd_python):
    daemon = spawn(short_dir, env={'NOTIFY_SOCKET': notify_socket.path,
                                   'WATCHDOG_USEC': '200000'},
                   unset=('WATCHDOG_PID',),
                   pythonpath=[no_systemd_python.path])
    notify_socket.wait_for('WATCHDOG', '1')
    # systemd's end closes: every ping (ten a second) now fails.
    notify_socket.close()
    os.unlink(notify_socket.path)
    daemon.wait_for(r'Cannot notify systemd through NOTIFY_SOCKET=%s: '
                    r'.*the receiver keeps running' % re.escape(
                        notify_socket.path))
    forwards(ctx, daemon)
    # It comes back (systemd re-executed): the receiver connects again.
    again = NotifySocket(short_dir)
    try:
        again.wait_for('WATCHDOG', '1')
    finally:
        again.close()
    assert daemon.proc.poll() is None
    # Many pings failed; one line said so (rate-limited).
    warnings = [line for line in daemon.log().splitlines() if 'Cannot notify' in line]
    assert len(warnings) == 1, warnings
    assert daemon.stop() == errors.EXIT_OK


# -- signals -------------------------------------------------------------


def test_hup_keeps_queued_messages(ctx, spawn, short_dir):
    daemon = spawn(short_dir)
    out = support.sender(ctx, daemon)
    # No consumer: all twenty wait in the backlog.
    sent = queue_casts(daemon, out, 'held.host1', 20)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for('Reloaded configuration')
    assert daemon.stats()['queued'] == 20
    consumer = pull(ctx, daemon, 'held.host1')
    assert [recv(consumer) for _ in sent] == sent
    support.close_all(out, consumer)


def test_hup_then_log_goes_to_a_new_file_after_rotation(spawn, short_dir):
    log_file = os.path.join(short_dir, 'receiver.log')
    # use_stderr as well, so that the test can wait on the log's events.
    daemon = spawn(short_dir, {'DEFAULT': {'use_stderr': 'true'}},
                   args=['--log-file', log_file])
    # The control socket answers from the loop, whose signal handlers are
    # in place by then (the 'listening' line comes earlier: see below).
    daemon.stats()
    assert 'listening on' in read(log_file)
    os.rename(log_file, log_file + '.1')  # what logrotate does
    daemon.signal(signal.SIGHUP)
    daemon.wait_for('Reloaded configuration')
    daemon.signal(signal.SIGUSR1)
    daemon.wait_for('Counters:')
    wait_in_file(log_file, 'Counters:')
    assert 'Counters:' not in read(log_file + '.1')


def ask_stats(ipc_dir, proc, timeout=support.TIMEOUT):
    """The counters from the control socket of *proc*, which must live."""
    with zmq.Context() as context:
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect('ipc://%s/.zmq-receiver-control' % ipc_dir)
        sock.send(b'stats')
        deadline = time.monotonic() + timeout
        # Poll in steps, to notice a process that died meanwhile.
        while not sock.poll(100):
            assert proc.poll() is None, (
                'the receiver ended with status %s' % proc.returncode)
            assert time.monotonic() < deadline, 'no answer'
        answer = sock.recv_json()
        sock.close()
        return answer


def full_pipe():
    """A pipe (read end, write end) whose buffer is already full, so that
    the first write of the process given the write end blocks."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    for chunk in (b'x' * 4096, b'x'):
        try:
            while True:
                os.write(w, chunk)
        except BlockingIOError:
            pass
    # The flag belongs to the open file, which the child shares.
    os.set_blocking(w, True)
    return r, w


@needs_root
def test_hup_right_after_the_bind_does_not_kill(short_dir, system_user):
    name, _, _ = system_user
    traversable(short_dir)
    port = free_port()
    conf = config(short_dir, os.path.join(short_dir, 'ipc'),
                  {'user': name}, {'rpc_zmq_port': port})
    # With a user, the first log line ('Dropped root privileges') comes
    # after the bind; a full stdout pipe holds the process right there.
    r, w = full_pipe()
    proc = subprocess.Popen(
        [sys.executable, '-m', 'zmq_receiver', '--config-file', conf],
        stdout=w, stderr=w, stdin=subprocess.DEVNULL,
        env=support.clean_env())
    os.close(w)
    drained = []
    try:
        def bound():
            assert proc.poll() is None, 'ended with status %s' % proc.poll()
            try:
                socket.create_connection(('127.0.0.1', port), 1).close()
            except OSError:
                return False
            return True

        wait_until(bound, 'the bind')
        proc.send_signal(signal.SIGHUP)
        # Let it write its log again: read (and keep) what it writes.
        threading.Thread(target=lambda: drained.extend(
            iter(lambda: os.read(r, 65536), b'')), daemon=True).start()
        # The HUP must wait for the loop, which then answers and reloads.
        answer = ask_stats(os.path.join(short_dir, 'ipc'), proc)
        assert answer['received'] == 0
    finally:
        proc.kill()
        proc.wait()


def test_usr1_logs_the_counters(ctx, spawn, short_dir):
    daemon = spawn(short_dir)
    forwards(ctx, daemon)
    daemon.signal(signal.SIGUSR1)
    line = daemon.wait_for(r'Counters: .*').group(0)
    assert 'received=1 forwarded=1' in line


def test_stop_with_a_backlog_and_no_consumer_does_not_wait(ctx, spawn,
                                                           short_dir):
    daemon = spawn(short_dir, {'zmq_receiver': {'shutdown_timeout': 10}})
    out = support.sender(ctx, daemon)
    # Nobody consumes the topic, nobody has subscribed to the fanout yet.
    out.send_multipart(support.cast('nobody.host1'))
    out.send_multipart(support.cast('fanout~nobody.host1'))
    daemon.wait_stats(lambda s: s['queued'] == 2)
    # The stop alone: from the signal to the exit status, the start and
    # the setup above left out.
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == errors.EXIT_OK
    took = time.monotonic() - started
    print('stop with a backlog and no consumer: %.2f s from SIGTERM to '
          'exit (shutdown_timeout 10)' % took)
    # Issue 13's bound: under a second (it took the whole 10 s; measured
    # since: 0.16 s, the senders' connections closing and the interpreter
    # exiting).
    assert took < 1.0, took
    log = daemon.log()
    assert re.search(r'Stopping: delivering 0 queued messages to connected '
                     r'consumers .*; 2 more have no consumer', log), log
    for key in ('nobody.host1', 'fanout~nobody'):
        assert re.search(r'Outlet \S+zmq_topic_%s closed with 1 undelivered '
                         r'messages \(no_consumer\): no consumer was '
                         r'connected' % re.escape(key), log), log
    assert 'dropped[no_consumer=2]' in log
    support.close_all(out)


def test_stop_loses_nothing_libzmq_still_buffers_for_a_consumer(
        ctx, spawn, short_dir):
    daemon = spawn(short_dir, {'zmq_receiver': {'shutdown_timeout': 10}})
    out = support.sender(ctx, daemon)
    body = b'x' * 4096
    sent = [support.cast('burst.host1', b'0 ' + body)]
    out.send_multipart(sent[0])
    daemon.wait_stats(lambda s: 'burst.host1' in s['topics'])
    # Small buffers: most of the burst is still in libzmq at the stop.
    consumer = support.pull(ctx, daemon, 'burst.host1', RCVHWM=1,
                            RCVBUF=4096)
    daemon.wait_stats(
        lambda s: s['topics']['burst.host1']['consumers'] == 1)
    for i in range(1, 201):
        sent.append(support.cast('burst.host1', b'%d ' % i + body))
        out.send_multipart(sent[-1])
    daemon.wait_stats(lambda s: s['received'] == len(sent))
    daemon.signal(signal.SIGTERM)
    # Closing the outlet, linger or not, dropped what libzmq still held
    # for the connection: 3 to 9 of these 201 were lost, yet counted as
    # forwarded.
    assert [recv(consumer) for _ in sent] == sent
    assert daemon.wait() == errors.EXIT_OK
    stopped = re.search(r'Stopped\. .*', daemon.log()).group(0)
    assert 'forwarded=201' in stopped and 'dropped[0]' in stopped
    support.close_all(out, consumer)


def test_second_term_during_the_drain_stops_at_once(ctx, spawn, short_dir):
    daemon = spawn(short_dir, {'zmq_receiver': {'shutdown_timeout': 10}})
    out = support.sender(ctx, daemon)
    # Kept: once collected, the consumer would be gone.
    consumer, _ = support.backlog_behind_consumer(ctx, daemon, out,
                                                  'stalled.host1')
    queued = daemon.stats()['queued']
    daemon.signal(signal.SIGTERM)
    daemon.wait_for('Stopping: delivering %d' % queued)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    daemon.wait_for('Second stop request')
    # Well before the 10 s the drain could still take.
    assert daemon.wait(timeout=5) == errors.EXIT_OK
    assert time.monotonic() - started < 5
    # What was not delivered is said, and counted.
    log = daemon.log()
    assert 'closed with %d undelivered messages' % queued in log
    assert 'dropped[shutdown=%d]' % queued in log
    support.close_all(out, consumer)


@needs_root
def test_restart_as_the_user_after_a_root_started_receiver_was_killed(
        ctx, spawn, short_dir, system_user):
    name, uid, gid = system_user
    traversable(short_dir)
    second = DaemonAs(short_dir, uid, gid)
    if not second.usable():
        pytest.skip('%s cannot run %s here' % (name, sys.executable))
    first = spawn(short_dir, {'zmq_receiver': {'user': name}})
    first.proc.kill()
    first.proc.wait()
    try:
        second.start()
        forwards(ctx, second)
    finally:
        second.kill()


def test_restart_after_sigkill(ctx, spawn, short_dir):
    first = spawn(short_dir)
    forwards(ctx, first, 'left.host1')
    first.proc.kill()
    first.proc.wait()
    # A killed receiver cannot clean up: its files stay ...
    for name in ('.zmq-receiver.lock', '.zmq-receiver-control',
                 'zmq_topic_left.host1'):
        assert os.path.exists(os.path.join(first.ipc_dir, name)), name
    # ... but its lock went with it, so the next one starts and serves.
    second = spawn(short_dir)
    forwards(ctx, second, 'left.host1')
    assert second.stop() == errors.EXIT_OK
