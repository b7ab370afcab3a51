"""Issue 12, defects 1 and 2: the file attacks of local users, for real.

The receiver starts as root and works in directories that service users own
(the log directory, the IPC directory) or share (a setgid group
directory). Each test makes throwaway users and a group, plants real
symlinks and hard links to a file standing in for /etc/shadow, holds the
lock from another user's process, or races socket creation with an
inotify-driven process of another project's user; then checks that the
daemon is up (or refused, with the status and a message naming the file),
that a normal cast arrives, and that the target file is untouched.

CI runs as root; without root these cannot run (no users to switch to).
"""

import collections
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys

import pytest

from tests import support
from tests.functional.test_lifecycle import (  # noqa: F401 (fixture)
    config, detached, error_line, gone, read, traversable, wait_in_file)
from tests.output import ProcessOutput
from tests.support import cast, recv, run_split, wait_until
from zmq_receiver import errors

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason='needs root to create users and run the '
    'receiver as one of them (CI runs as root)')

LOCK = '.zmq-receiver.lock'

Accounts = collections.namedtuple('Accounts', 'shared service other')


# -- people, targets and attackers ---------------------------------------


@pytest.fixture(scope='module')
def accounts():
    """A group ``shared`` (the socket group of a shared directory), the
    receiver's user ``service`` (as nova) and another project's user
    ``other``, both in ``shared``. Module-scoped: userdel refuses a user
    that still owns a process, and every test's processes end first."""
    with contextlib.ExitStack() as stack:
        shared = stack.enter_context(support.throwaway_group())
        service = stack.enter_context(
            support.throwaway_user([shared.gr_name]))
        other = stack.enter_context(support.throwaway_user([shared.gr_name]))
        yield Accounts(shared, service, other)


class Target:
    """A file standing in for /etc/shadow (root's, 0600 by default): what
    an attacker would have root write, chown or chmod."""

    def __init__(self, path, uid=0, gid=0, mode=0o600):
        self.path = path
        with open(path, 'w') as f:
            f.write('root:$6$not-a-real-hash:19000:0:99999:7:::\n')
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        self.before = self.state()

    def state(self):
        st = os.stat(self.path)
        with open(self.path, 'rb') as f:
            content = f.read()
        return {'content': content, 'uid': st.st_uid, 'gid': st.st_gid,
                'mode': oct(stat.S_IMODE(st.st_mode)),
                'mtime': st.st_mtime_ns}

    def assert_untouched(self):
        assert self.state() == self.before


class Attacker:
    """A process of another user (tests/attacker.py)."""

    def __init__(self, proc):
        self.proc = proc
        self.output = ProcessOutput(proc)

    def wait_for(self, pattern):
        try:
            return self.output.wait_for(pattern, support.TIMEOUT)
        except (TimeoutError, EOFError):
            raise AssertionError('attacker never said %r:\n%s' % (
                pattern, self.output.log())) from None

    def finish(self):
        """Close its stdin (it stops), then its exit status."""
        self.proc.stdin.close()
        return self.proc.wait(support.TIMEOUT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def attackers():
    """Start tests/attacker.py as a user: start(user, action, *args,
    groups=(gids)). Every one is ended at the end."""
    started = []

    def start(user, action, *args, groups=()):
        argv = [sys.executable, '-m', 'tests.attacker', str(user.pw_uid),
                str(user.pw_gid), ','.join(map(str, groups)) or '-', action]
        proc = subprocess.Popen(
            argv + list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=support.REPO,
            env=dict(os.environ, PYTHONPATH=support.REPO))
        attacker = Attacker(proc)
        started.append(attacker)
        return attacker

    yield start
    for attacker in started:
        attacker.kill()


#: The CPU the swapper and the receiver's loop share.
RACE_CPU = min(os.sched_getaffinity(0))


@contextlib.contextmanager
def on_race_cpu():
    """Processes started within run on RACE_CPU (they inherit it)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {RACE_CPU})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def owned_dir(path, user, mode=0o755):
    """A directory of *user*, as a distro package makes /var/log/nova."""
    os.mkdir(path)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, mode)
    return path


def plant_symlink(target, path, user):
    """A symlink at *path* to *target*, made by (and owned by) *user*."""
    os.symlink(target, path)
    os.lchown(path, user.pw_uid, user.pw_gid)


def as_service(accounts, options=None):
    return {'zmq_receiver': dict({'user': accounts.service.pw_name},
                                 **(options or {}))}


def forwards(ctx, daemon, topic):
    """A normal cast to *topic* reaches its consumer."""
    consumer = support.pull(ctx, daemon, topic)
    frames = cast(topic)
    out = support.sender(ctx, daemon)
    out.send_multipart(frames)
    assert recv(consumer) == frames
    support.close_all(consumer, out)


@pytest.fixture
def home(short_dir):
    """*short_dir*, which the service user may pass (mkdtemp made it
    0700 root), with the target in it."""
    traversable(short_dir)
    return short_dir


# -- the log file --------------------------------------------------------


def refused_log(home, accounts, log_file):
    conf = config(home, os.path.join(home, 'ipc'), as_service(
        accounts)['zmq_receiver'])
    status, out, err = run_split(['--config-file', conf,
                                  '--log-file', log_file])
    assert status == errors.EXIT_PERMISSION, out + err
    assert 'Traceback' not in out + err
    line = error_line(err)
    assert log_file in line, line
    return line


def test_log_file_symlinked_to_shadow_is_refused(home, accounts):
    target = Target(os.path.join(home, 'shadow'))
    logs = owned_dir(os.path.join(home, 'log'), accounts.service)
    log_file = os.path.join(logs, 'zmq-receiver.log')
    # What nova can do in /var/log/nova, which it owns.
    plant_symlink(target.path, log_file, accounts.service)
    line = refused_log(home, accounts, log_file)
    assert 'symbolic link' in line and 'remove it' in line
    target.assert_untouched()
    assert os.path.islink(log_file)


def test_log_file_symlink_to_a_missing_file_creates_nothing(home, accounts):
    logs = owned_dir(os.path.join(home, 'log'), accounts.service)
    log_file = os.path.join(logs, 'zmq-receiver.log')
    # O_CREAT through a dangling link would make a root file anywhere.
    missing = os.path.join(home, 'cron.d-evil')
    plant_symlink(missing, log_file, accounts.service)
    refused_log(home, accounts, log_file)
    assert not os.path.lexists(missing)


def test_log_directory_swapped_for_a_symlink_creates_nothing(home, accounts):
    logs = owned_dir(os.path.join(home, 'log'), accounts.service)
    # A root-only directory, as /etc is; nova links its subdirectory to it.
    root_only = os.path.join(home, 'etc')
    os.mkdir(root_only, 0o755)
    plant_symlink(root_only, os.path.join(logs, 'sub'), accounts.service)
    log_file = os.path.join(logs, 'sub', 'zmq-receiver.log')
    line = refused_log(home, accounts, log_file)
    assert 'symbolic link' in line and 'sub' in line, line
    # O_NOFOLLOW guards the last component only: root used to create
    # etc/zmq-receiver.log and give it to nova.
    assert os.listdir(root_only) == []


def test_log_file_hard_linked_to_shadow_is_refused(home, accounts):
    target = Target(os.path.join(home, 'shadow'))
    logs = owned_dir(os.path.join(home, 'log'), accounts.service)
    log_file = os.path.join(logs, 'zmq-receiver.log')
    # fs.protected_hardlinks (on here) stops nova from linking a file it
    # cannot write; the link made as root stands for a kernel without it.
    os.link(target.path, log_file)
    line = refused_log(home, accounts, log_file)
    assert 'hard links' in line, line
    target.assert_untouched()


def test_log_file_in_a_root_only_directory_works(ctx, daemons, home,
                                                 accounts):
    # /var/log itself: only root may create the file there.
    logs = os.path.join(home, 'log')
    os.mkdir(logs, 0o755)
    log_file = os.path.join(logs, 'zmq-receiver.log')
    daemon = daemons(home, dict(as_service(accounts),
                                DEFAULT={'use_stderr': 'true'}),
                     args=['--log-file', log_file])
    forwards(ctx, daemon, 'logged.host1')
    st = os.stat(log_file)
    assert (st.st_uid, st.st_gid) == (accounts.service.pw_uid,
                                      accounts.service.pw_gid)
    assert stat.S_IMODE(st.st_mode) == 0o640
    # Written after the drop, by the user, into the file root prepared.
    assert re.search(r'Dropped root privileges', read(log_file))
    assert daemon.stop() == errors.EXIT_OK


def test_existing_log_file_of_root_is_given_to_the_user(ctx, daemons, home,
                                                        accounts):
    logs = owned_dir(os.path.join(home, 'log'), accounts.service)
    log_file = os.path.join(logs, 'zmq-receiver.log')
    with open(log_file, 'w') as f:
        f.write('an earlier run as root\n')
    os.chmod(log_file, 0o600)
    daemon = daemons(home, dict(as_service(accounts),
                                DEFAULT={'use_stderr': 'true'}),
                     args=['--log-file', log_file])
    forwards(ctx, daemon, 'logged.host1')
    assert os.stat(log_file).st_uid == accounts.service.pw_uid
    text = read(log_file)
    assert text.startswith('an earlier run as root\n')
    assert 'listening on' in text


def test_log_file_swapped_for_a_symlink_during_the_start(ctx, home, accounts,
                                                         attackers):
    # From oslo.log's setup until the privilege drop the receiver logs as
    # root, and a WatchedFileHandler reopens its path whenever the file
    # there changed: nova swaps in a symlink as soon as the file appears.
    target = Target(os.path.join(home, 'shadow'))
    logs = owned_dir(os.path.join(home, 'log'), accounts.service)
    log_file = os.path.join(logs, 'zmq-receiver.log')
    # A socket file left by a killed receiver: its removal is logged as
    # root, after the file appeared.
    ipc = owned_dir(os.path.join(home, 'ipc'), accounts.service)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(os.path.join(ipc, 'zmq_topic_stale.host1'))
    # Once root closed its own descriptor: oslo.log has opened the file.
    swapper = attackers(accounts.service, 'swap', logs, 'zmq-receiver.log',
                        target.path, str(RACE_CPU), 'closed')
    swapper.wait_for('watching')
    daemon = support.Daemon(home, dict(as_service(accounts),
                                       DEFAULT={'use_stderr': 'true'}),
                            args=['--log-file', log_file])
    try:
        with on_race_cpu():
            daemon.start(wait_ready=False)
        # Swapped before oslo.log opened it: refused (77); after: up,
        # logging to stderr what it cannot write to the file.
        try:
            found = daemon.wait_for(
                r'listening on (tcp://\S+),|error: (.*)')
        finally:
            target.assert_untouched()
        assert swapper.finish() == 0
        assert swapper.wait_for(r'swapped (\d+)').group(1) == '1'
        assert os.path.islink(log_file)
        if found.group(2):
            assert daemon.wait() == errors.EXIT_PERMISSION
            assert log_file in found.group(2)
        else:
            daemon.endpoint = found.group(1)
            forwards(ctx, daemon, 'logged.host1')
            assert daemon.proc.poll() is None
        target.assert_untouched()
    finally:
        daemon.kill()


# -- the pid file --------------------------------------------------------


def test_pid_file_links_are_never_followed(ctx, detached, home, accounts):
    ipc = owned_dir(os.path.join(home, 'ipc'), accounts.service)
    tmp_target = Target(os.path.join(home, 'passwd'), mode=0o644)
    pid_target = Target(os.path.join(home, 'shadow'))
    pid_file = os.path.join(ipc, '.zmq-receiver.pid')
    # The old receiver wrote <pid_file>.tmp as root with open(..., 'w').
    plant_symlink(tmp_target.path, pid_file + '.tmp', accounts.service)
    plant_symlink(pid_target.path, pid_file, accounts.service)
    log_file = os.path.join(home, 'receiver.log')
    conf = config(home, ipc, as_service(accounts)['zmq_receiver'])
    status, out, err = run_split(['--config-file', conf, '--daemon',
                                  '--log-file', log_file])
    assert status == 0, out + err
    wait_until(lambda: not os.path.islink(pid_file) and
               read(pid_file).endswith('\n'), 'the pid file')
    pid = int(read(pid_file))
    detached.append(pid)
    assert stat.S_ISREG(os.lstat(pid_file).st_mode)
    endpoint = wait_in_file(log_file, r'listening on (tcp://\S+),').group(1)
    daemon = support.Daemon(home, config=False)
    daemon.endpoint = endpoint
    forwards(ctx, daemon, 'detached.host1')
    tmp_target.assert_untouched()
    pid_target.assert_untouched()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 'the daemon exiting after SIGTERM')
    assert not os.path.lexists(pid_file)
    # Its own temporary is gone; the planted link is the user's business.
    assert sorted(os.listdir(ipc)) == ['.zmq-receiver.pid.tmp']


# -- the socket files: an inotify-driven swapper -------------------------


@pytest.fixture
def shared_dir(home, accounts):
    """The shared-group model: install -d -m 2775 -g shared <dir>."""
    path = os.path.join(home, 'ipc')
    os.mkdir(path)
    os.chown(path, 0, accounts.shared.gr_gid)
    os.chmod(path, 0o2775)
    return path


def start_swapper(attackers, accounts, shared_dir, target):
    """Another project's user (in the shared group) renaming a symlink to
    *target* over every new entry of the receiver in *shared_dir*."""
    swapper = attackers(
        accounts.other, 'swap', shared_dir,
        # Every file of the receiver's but the sentinel's (see below).
        r'zmq_topic_(?!sentinel).*|\.zmq-receiver-control|'
        r'\.zmq-receiver-bind\..*',
        target.path, str(RACE_CPU), groups=[accounts.shared.gr_gid])
    swapper.wait_for('watching')
    return swapper


def swapped_daemon(daemons, home, accounts, options=None):
    """The receiver on the shared directory, its loop on the swapper's
    CPU."""
    daemon = daemons(home, as_service(accounts, dict(
        options or {}, socket_group=accounts.shared.gr_name)))
    # The main thread's id is the pid: the loop, which binds the sockets.
    os.sched_setaffinity(daemon.proc.pid, {RACE_CPU})
    return daemon


def test_socket_files_survive_a_swapper_racing_every_new_file(
        ctx, daemons, home, accounts, shared_dir, attackers):
    # A private file of the receiver's user: what the old chmod/chown by
    # path made group-readable (0660, group shared) when a symlink to it
    # was renamed over a new socket file in time.
    secret = owned_dir(os.path.join(home, 'private'), accounts.service,
                       0o700)
    target = Target(os.path.join(secret, 'id_rsa'),
                    accounts.service.pw_uid, accounts.service.pw_gid)
    swapper = start_swapper(attackers, accounts, shared_dir, target)
    daemon = swapped_daemon(daemons, home, accounts, {'max_topics': 2000})
    # The swapper takes the control socket's file too: the sentinel,
    # sent last by the same sender, says when every topic was handled.
    sentinel = support.pull(ctx, daemon, 'sentinel.host1')
    out = support.sender(ctx, daemon)
    topics = ['race%d.host1' % i for i in range(1500)]
    for topic in topics + ['sentinel.host1']:
        out.send_multipart(cast(topic))
    recv(sentinel, timeout=120)
    assert swapper.finish() == 0
    stats = _stats_without_the_swapper(daemon)
    assert stats['received'] == len(topics) + 1, stats
    swapped = int(swapper.wait_for(r'swapped (\d+)').group(1))
    # The attack ran: it saw the new files and replaced them.
    assert swapped > 0, swapper.output.log()
    print('swapper: %d entries replaced; rejected: %s' % (
        swapped, stats['rejected']))
    target.assert_untouched()
    support.assert_balanced(stats)
    assert daemon.proc.poll() is None
    # Every socket file that is still the receiver's has its mode and
    # group; the rest are the attacker's symlinks.
    for name in os.listdir(shared_dir):
        st = os.lstat(os.path.join(shared_dir, name))
        if stat.S_ISSOCK(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o660, name
            assert st.st_gid == accounts.shared.gr_gid, name
    forwards(ctx, daemon, 'after.host1')
    target.assert_untouched()
    support.close_all(sentinel, out)


def test_sticky_shared_directory_stops_the_swapper(
        ctx, daemons, home, accounts, shared_dir, attackers):
    # SECURITY.md's advice: chmod +t, and members of the group can no
    # longer rename or remove the receiver's files.
    os.chmod(shared_dir, 0o3775)
    target = Target(os.path.join(home, 'shadow'))
    swapper = start_swapper(attackers, accounts, shared_dir, target)
    daemon = swapped_daemon(daemons, home, accounts)
    out = support.sender(ctx, daemon)
    topics = ['sticky%d.host1' % i for i in range(200)]
    for topic in topics:
        out.send_multipart(cast(topic))
    stats = daemon.wait_stats(lambda s: s['received'] == len(topics))
    assert swapper.finish() == 0
    assert swapper.wait_for(r'swapped (\d+)').group(1) == '0'
    assert stats['outlets'] == len(topics), stats
    for topic in topics:
        st = os.lstat(daemon.path(topic))
        assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o660
    forwards(ctx, daemon, 'sticky0.host1')
    target.assert_untouched()
    support.close_all(out)


def _stats_without_the_swapper(daemon):
    """The stats, once the swapper stopped: the control socket's file may
    be its symlink, which the operator removes; the receiver then binds
    the file again (within a second)."""
    control = os.path.join(daemon.ipc_dir, '.zmq-receiver-control')
    if os.path.islink(control):
        os.unlink(control)
    return daemon.stats()


# -- a new IPC directory ---------------------------------------------------


def test_new_ipc_dir_in_a_users_directory_is_never_redirected(
        home, accounts, attackers):
    # rpc_zmq_ipc_dir = /var/run/nova/zmq, /var/run/nova being nova's:
    # root makes zmq there. The old makedirs then chmod/chown by path gave
    # nova whatever it had renamed a symlink to over the new directory.
    base = owned_dir(os.path.join(home, 'run'), accounts.service)
    ipc = os.path.join(base, 'zmq')
    target = Target(os.path.join(home, 'shadow'))
    swapper = attackers(accounts.service, 'swap', base, 'zmq', target.path,
                        str(RACE_CPU))
    swapper.wait_for('watching')
    # A port in use: each start ends (75) right after the directory and
    # the lock, or refuses the directory (77).
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen(1)
        conf = config(home, ipc, as_service(accounts)['zmq_receiver'],
                      {'rpc_zmq_port': busy.getsockname()[1]})
        raced = 0
        for _ in range(10):
            with on_race_cpu():
                status, out, err = run_split(['--config-file', conf])
            assert status in (errors.EXIT_ADDRESS_IN_USE,
                              errors.EXIT_PERMISSION), out + err
            assert 'Traceback' not in out + err
            target.assert_untouched()
            if os.path.islink(ipc):
                # Before the lock, it refuses (77); after, it went on in
                # the real directory, renamed away (75).
                raced += 1
                os.unlink(ipc)
            else:
                st = os.lstat(ipc)
                assert st.st_uid == accounts.service.pw_uid
                shutil.rmtree(ipc)
    assert swapper.finish() == 0
    # The swapper really replaced the new directory, at least once.
    assert raced > 0, swapper.output.log()
    target.assert_untouched()


# -- the lock ------------------------------------------------------------


def test_lock_file_is_0600_and_only_the_user_may_open_it(
        ctx, daemons, home, accounts, attackers):
    daemon = daemons(home, as_service(accounts))
    lock = os.path.join(daemon.ipc_dir, LOCK)
    st = os.stat(lock)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == accounts.service.pw_uid
    holder = attackers(accounts.other, 'flock', lock)
    assert holder.proc.wait(support.TIMEOUT) != 0
    assert 'PermissionError' in holder.output.log()
    forwards(ctx, daemon, 'locked.host1')


def _plant_legacy_lock(ipc, accounts):
    """What the old receiver left: 0644, the user's."""
    lock = os.path.join(ipc, LOCK)
    with open(lock, 'w') as f:
        f.write('12345\n')
    os.chown(lock, accounts.service.pw_uid, accounts.service.pw_gid)
    os.chmod(lock, 0o644)
    return lock


def test_lock_held_by_another_user_no_longer_blocks_a_start(
        ctx, daemons, home, accounts, attackers):
    ipc = owned_dir(os.path.join(home, 'ipc'), accounts.service)
    lock = _plant_legacy_lock(ipc, accounts)
    # Opened read-only while it was 0644, and held across the unclean
    # stop: every start used to exit 69.
    holder = attackers(accounts.other, 'flock', lock)
    holder.wait_for('locked')
    old_inode = os.stat(lock).st_ino
    daemon = daemons(home, as_service(accounts))
    assert re.search(r'lock file \S+ is not safe to use \(mode 0644',
                     daemon.log()), daemon.log()
    st = os.stat(lock)
    assert st.st_ino != old_inode and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == accounts.service.pw_uid
    forwards(ctx, daemon, 'unblocked.host1')
    assert holder.proc.poll() is None  # it holds a lock on nothing now
    # A real second receiver is still kept out.
    status, out, err = run_split(['--config-file', daemon.config_file])
    assert status == errors.EXIT_ALREADY_RUNNING, out + err
    assert 'pid %d' % daemon.proc.pid in error_line(err)


def test_untrusted_lock_held_by_an_older_receiver_still_exits_69(
        daemons, home, accounts, attackers):
    ipc = owned_dir(os.path.join(home, 'ipc'), accounts.service)
    lock = _plant_legacy_lock(ipc, accounts)
    # Root's process stands for an older receiver that still runs.
    older = attackers(pwd.getpwuid(0), 'flock', lock)
    older.wait_for('locked')
    conf = config(home, ipc, as_service(accounts)['zmq_receiver'])
    status, out, err = run_split(['--config-file', conf])
    assert status == errors.EXIT_ALREADY_RUNNING, out + err
    assert 'pid %d' % older.proc.pid in error_line(err)
    assert os.stat(lock).st_mode & 0o777 == 0o644  # left alone


@pytest.mark.parametrize('planted', [
    'symlink', 'hard link', 'owned by another user',
    'owned by another user, held'])
def test_lock_file_not_ours_is_replaced(ctx, daemons, home, accounts,
                                        attackers, shared_dir, planted):
    # In the shared directory any member of the group may plant files.
    target = Target(os.path.join(home, 'shadow'))
    lock = os.path.join(shared_dir, LOCK)
    if planted == 'symlink':
        plant_symlink(target.path, lock, accounts.other)
    elif planted == 'hard link':
        os.link(target.path, lock)  # as root: see the log file's test
    else:
        with open(lock, 'w') as f:
            f.write('1\n')
        os.chown(lock, accounts.other.pw_uid, accounts.other.pw_gid)
        os.chmod(lock, 0o600)
        if planted.endswith('held'):
            attackers(accounts.other, 'flock', lock).wait_for('locked')
    daemon = daemons(home, as_service(
        accounts, {'socket_group': accounts.shared.gr_name}))
    assert 'is not safe to use' in daemon.log()
    st = os.lstat(lock)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    assert st.st_uid == accounts.service.pw_uid
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert read(lock).strip() == str(daemon.proc.pid)
    forwards(ctx, daemon, 'replaced.host1')
    target.assert_untouched()
