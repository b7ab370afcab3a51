"""rundir.prepare, in-process, on the real filesystem in a temporary directory.

Directories, links, modes and owners are real; only where the test process
cannot be what it checks (root, or not root) is ``os`` seen through a
recording proxy, which passes every call on and notes the ownership ones.
"""

import os
import pathlib
import stat

import pytest

from zmq_receiver import errors
from zmq_receiver import privileges
from zmq_receiver import rundir

#: A uid and gid no account has: root may give a directory to them.
NOBODY_UID = NOBODY_GID = 64123


class RecordingOS:
    """The real os module, with fchown recorded (and done only when
    *really*), and geteuid answering *euid*."""

    def __init__(self, euid, really=True):
        self.euid = euid
        self.really = really
        self.fchowns = []

    def __getattr__(self, name):
        return getattr(os, name)

    def geteuid(self):
        return self.euid

    def fchown(self, fd, uid, gid):
        self.fchowns.append((uid, gid))
        if self.really:
            os.fchown(fd, uid, gid)


@pytest.fixture
def top(short_dir):
    """A directory under /tmp that any identity may pass (mkdtemp makes
    it 0700, and pytest's tmp_path sits below 0700 directories)."""
    os.chmod(short_dir, 0o711)
    return pathlib.Path(short_dir)


def me():
    return privileges.current()


def test_a_missing_directory_is_made_with_the_mode(top):
    path = top / 'a' / 'ipc'
    assert rundir.prepare(str(path), me(), mode=0o750) == str(path)
    st = path.stat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750


def test_a_relative_path_comes_back_absolute(top, monkeypatch):
    monkeypatch.chdir(top)
    assert rundir.prepare('ipc', me()) == str(top / 'ipc')


def test_prepare_twice_changes_nothing(top):
    path = str(top / 'ipc')
    rundir.prepare(path, me(), mode=0o750)
    before = os.stat(path)
    assert rundir.prepare(path, me(), mode=0o700) == path
    after = os.stat(path)
    # An existing directory is checked, never changed.
    assert (after.st_ino, after.st_mode, after.st_uid) == (
        before.st_ino, before.st_mode, before.st_uid)


def test_as_root_the_new_directory_is_given_to_the_identity(top,
                                                            monkeypatch):
    if os.geteuid() != 0:
        pytest.skip('needs root to give a directory away')
    recorded = RecordingOS(euid=0)
    monkeypatch.setattr(rundir, 'os', recorded)
    ident = privileges.Identity(NOBODY_UID, NOBODY_GID)
    path = top / 'ipc'
    rundir.prepare(str(path), ident, mode=0o750)
    assert recorded.fchowns == [(NOBODY_UID, NOBODY_GID)]
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (NOBODY_UID, NOBODY_GID)
    # Again: it exists, so nothing more is given away.
    rundir.prepare(str(path), ident)
    assert recorded.fchowns == [(NOBODY_UID, NOBODY_GID)]


def test_as_root_a_socket_group_is_the_directory_group(top, monkeypatch):
    recorded = RecordingOS(euid=0, really=os.geteuid() == 0)
    monkeypatch.setattr(rundir, 'os', recorded)
    ident = privileges.Identity(os.geteuid(), os.getegid())
    rundir.prepare(str(top / 'ipc'), ident, gid=4321)
    assert recorded.fchowns == [(os.geteuid(), 4321)]


def _not_root_gives_nothing_away(parent):
    recorded = RecordingOS(euid=os.geteuid())
    rundir.os = recorded
    rundir.prepare(os.path.join(parent, 'ipc'), me())
    assert recorded.fchowns == []
    assert os.stat(os.path.join(parent, 'ipc')).st_uid == os.geteuid()


def test_not_root_nothing_is_given_away(top, monkeypatch):
    # Not faked: _make_dirs checks that what it made is the process's own.
    if os.geteuid() != 0:
        monkeypatch.setattr(rundir, 'os', os)
        _not_root_gives_nothing_away(str(top))
        return
    # As root (CI): a real other identity, in a child that drops to it.
    parent = top / 'theirs'
    parent.mkdir()
    os.chown(parent, NOBODY_UID, NOBODY_GID)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        status = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY_GID)
            os.setuid(NOBODY_UID)
            _not_root_gives_nothing_away(str(parent))
            status = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, 'see the child\'s error'


def test_a_symlink_is_refused_naming_the_real_directory(top):
    real = top / 'real'
    real.mkdir()
    link = top / 'ipc'
    link.symlink_to(real)
    with pytest.raises(errors.PermissionProblem) as e:
        rundir.prepare(str(link), me())
    assert 'is a symbolic link' in str(e.value)
    assert str(real) in str(e.value)


def test_a_file_is_refused(top):
    path = top / 'ipc'
    path.write_text('')
    with pytest.raises(errors.PermissionProblem) as e:
        rundir.prepare(str(path), me())
    assert 'is not a directory' in str(e.value)


def test_a_world_writable_directory_is_refused_unless_allowed(top):
    path = top / 'ipc'
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(errors.PermissionProblem) as e:
        rundir.prepare(str(path), me())
    assert 'world-writable (mode 0777)' in str(e.value)
    assert 'chmod o-w %s' % path in str(e.value)
    assert rundir.prepare(str(path), me(), allow_world_writable=True) == (
        str(path))


def test_a_directory_the_identity_cannot_write_names_the_chown(top):
    if os.geteuid() != 0:
        pytest.skip('needs root to make a directory of another owner')
    path = top / 'ipc'
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY_UID, NOBODY_GID)
    ident = privileges.Identity(NOBODY_UID + 1, NOBODY_GID + 1)
    with pytest.raises(errors.PermissionProblem) as e:
        rundir.prepare(str(path), ident)
    assert 'cannot create sockets in it: chown %d %s' % (
        NOBODY_UID + 1, path) in str(e.value)
    assert e.value.exit_code == errors.EXIT_PERMISSION
