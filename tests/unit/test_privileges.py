"""privileges.drop, in-process, against a recorded fake of its ``os`` calls.

A test process cannot give up root and go on, so, as supervisor and
python-daemon test theirs, the calls are recorded by a fake that keeps the
ids as the kernel would: the order (groups, then gid, then uid: each step
needs the privilege the next one takes away), the check that root cannot
come back, and that a second drop does nothing.
"""

import pytest

from zmq_receiver import errors
from zmq_receiver import privileges


class FakeOS:
    """The ids of a process and the calls that change them, recorded.

    setuid() as Linux does it: root may set any uid (real, effective and
    saved: root is gone for good); anyone else only their own.
    """

    def __init__(self, uid=0, gid=0, groups=(0,), setuid_0_works=False):
        self.uid, self.gid, self.groups = uid, gid, list(groups)
        #: Whether setuid(0) succeeds after the drop (a broken kernel or a
        #: saved set-user-ID left behind).
        self.setuid_0_works = setuid_0_works
        self.calls = []

    def geteuid(self):
        return self.uid

    def getegid(self):
        return self.gid

    def getgroups(self):
        return list(self.groups)

    def initgroups(self, name, gid):
        self._need_root('initgroups')
        self.calls.append(('initgroups', name, gid))
        self.groups = [gid, 4242]

    def setgroups(self, groups):
        self._need_root('setgroups')
        self.calls.append(('setgroups', list(groups)))
        self.groups = list(groups)

    def setgid(self, gid):
        self._need_root('setgid')
        self.calls.append(('setgid', gid))
        self.gid = gid

    def setuid(self, uid):
        self.calls.append(('setuid', uid))
        if uid == 0 and self.setuid_0_works:
            self.uid = 0
            return
        if self.uid != 0 and uid != self.uid:
            raise PermissionError(1, 'Operation not permitted')
        self.uid = uid

    def _need_root(self, call):
        if self.uid != 0:
            raise PermissionError(1, '%s: Operation not permitted' % call)


@pytest.fixture
def fake_os(monkeypatch):
    fake = FakeOS()
    monkeypatch.setattr(privileges, 'os', fake)
    return fake


def test_a_named_user_gets_its_groups_then_its_gid_then_its_uid(fake_os):
    assert privileges.drop(privileges.Identity(1001, 1002, 'nova')) is True
    assert fake_os.calls == [
        ('initgroups', 'nova', 1002),
        ('setgid', 1002),
        ('setuid', 1001),
        # Then the proof: root cannot be had back.
        ('setuid', 0),
    ]
    assert (fake_os.uid, fake_os.gid) == (1001, 1002)
    assert fake_os.groups == [1002, 4242]


def test_an_arbitrary_uid_keeps_no_supplementary_group(fake_os):
    # No passwd entry (OpenShift's uids): root's own groups must go.
    assert privileges.drop(privileges.Identity(1000670000, 0)) is True
    assert fake_os.calls == [('setgroups', []), ('setgid', 0),
                             ('setuid', 1000670000), ('setuid', 0)]
    assert fake_os.groups == []


def test_a_second_drop_does_nothing(fake_os):
    ident = privileges.Identity(1001, 1002, 'nova')
    privileges.drop(ident)
    calls = list(fake_os.calls)
    assert privileges.drop(ident) is False
    assert fake_os.calls == calls


def test_already_the_identity_does_nothing(monkeypatch):
    fake = FakeOS(uid=1001, gid=1002, groups=[1002])
    monkeypatch.setattr(privileges, 'os', fake)
    assert privileges.drop(privileges.Identity(1001, 1002, 'nova')) is False
    assert fake.calls == []


def test_not_root_and_someone_else_is_a_permission_problem(monkeypatch):
    fake = FakeOS(uid=1001, gid=1002)
    monkeypatch.setattr(privileges, 'os', fake)
    with pytest.raises(errors.PermissionProblem) as e:
        privileges.drop(privileges.Identity(2002, 2002, 'neutron'))
    assert 'runs as uid 1001 and cannot switch to neutron' in str(e.value)
    assert fake.calls == []


def test_root_that_comes_back_is_refused(monkeypatch):
    fake = FakeOS(setuid_0_works=True)
    monkeypatch.setattr(privileges, 'os', fake)
    with pytest.raises(errors.PermissionProblem) as e:
        privileges.drop(privileges.Identity(1001, 1002, 'nova'))
    assert 'could become root again after setuid(1001)' in str(e.value)
    assert e.value.exit_code == errors.EXIT_PERMISSION
