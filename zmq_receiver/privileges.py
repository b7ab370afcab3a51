"""Who the receiver runs as, and giving up root for good.

Started as root, the receiver binds its port and prepares the IPC directory
first, then drops supplementary groups, gid and uid (in that order: each step
needs the privilege the next one takes away) and checks that root cannot be
regained. Everything here is idempotent: run as the target user already, it
does nothing.
"""

import contextlib
import grp
import logging
import os
import pwd

from zmq_receiver import errors

LOG = logging.getLogger(__name__)


class Identity:
    """A uid and gid to run as; *name* is None for a uid with no passwd
    entry (an arbitrary uid, as OpenShift assigns)."""

    def __init__(self, uid, gid, name=None):
        self.uid = uid
        self.gid = gid
        self.name = name

    def __repr__(self):
        return '%s (uid %d, gid %d)' % (self.name or 'uid %d' % self.uid,
                                        self.uid, self.gid)

    @property
    def label(self):
        """The name an operator would write: the user name or the uid."""
        return self.name or str(self.uid)

    def groups(self):
        """Every gid this identity has: primary and supplementary."""
        gids = {self.gid}
        if self.name is not None:
            gids.update(os.getgrouplist(self.name, self.gid))
        return gids


def current():
    """The identity the process has now."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    return Identity(uid, gid, name)


def resolve(user, group=None):
    """The identity for ``[zmq_receiver] user`` and ``group``.

    Either may be a name or a number; a number needs no passwd or group
    entry. Unset *user* means the current identity. Raises
    :class:`errors.ConfigError` for a name that does not exist.
    """
    if not user:
        ident = current()
    elif user.isdigit():
        uid = int(user)
        try:
            entry = pwd.getpwuid(uid)
            ident = Identity(uid, entry.pw_gid, entry.pw_name)
        except KeyError:
            # No passwd entry: the primary group is the one set below, or
            # the uid's number, as container runtimes do.
            ident = Identity(uid, uid)
    else:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise errors.ConfigError(
                '[zmq_receiver] user = %s: no such user on this host; create '
                'it (useradd --system %s) or fix the name' % (user, user))
        ident = Identity(entry.pw_uid, entry.pw_gid, entry.pw_name)
    if group:
        ident.gid = group_id(group, 'group')
    return ident


def group_label(gid):
    """The name of group *gid*, or ``gid N`` without a group entry."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return 'gid %d' % gid


def group_id(group, option):
    """The gid of *group* (a name or a number) from option *option*."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise errors.ConfigError(
            '[zmq_receiver] %s = %s: no such group on this host; create it '
            '(groupadd --system %s) or fix the name' % (option, group, group))


@contextlib.contextmanager
def acting_as(ident):
    """Within the block, open files with *ident*'s rights (its effective
    uid, gid and groups), and be root again after it.

    For a path another user may have linked somewhere: whatever the open
    reaches, *ident* could reach itself. Nothing to do unless root acts for
    someone else. Use it before any other thread starts: effective ids are
    the process's.
    """
    if os.geteuid() != 0 or ident.uid == 0:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(sorted(ident.groups()))
    os.setegid(ident.gid)
    os.seteuid(ident.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def drop(ident):
    """Become *ident* for good; nothing to do when already it."""
    if os.geteuid() == ident.uid and os.getegid() == ident.gid:
        return False
    if os.geteuid() != 0:
        raise errors.PermissionProblem(
            'The receiver runs as uid %d and cannot switch to %r: start it '
            'as root, or as that user, or remove [zmq_receiver] user'
            % (os.geteuid(), ident))
    if ident.name is not None:
        os.initgroups(ident.name, ident.gid)
    else:
        os.setgroups([])
    os.setgid(ident.gid)
    os.setuid(ident.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise errors.PermissionProblem(
            'Dropping root failed: the process could become root again '
            'after setuid(%d); refusing to run' % ident.uid)
    LOG.info('Dropped root privileges: now %r, groups %s', ident,
             sorted(os.getgroups()))
    return True
