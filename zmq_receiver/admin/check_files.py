"""``check``'s file checks: who the receiver runs as, its IPC directory, the
sockets' permissions for a service's user, and a config file this process
may not read.

Each check writes its lines to a :class:`~zmq_receiver.admin.check.Report`
and changes nothing: a missing directory is only looked at, not made.
"""

import grp
import os
import pwd
import stat

from zmq_receiver import errors
from zmq_receiver import opts
from zmq_receiver import privileges
from zmq_receiver import routing
from zmq_receiver import rundir

#: The permission bits of :func:`may`.
ENTER, WRITE, READ = 1, 2, 4


def may(st, uid, gids, bits):
    """Whether *uid* with groups *gids* has *bits* (r=4, w=2, x=1) on a
    file with stat *st*."""
    if uid == 0:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid:
        return mode >> 6 & bits == bits
    if st.st_gid in gids:
        return mode >> 3 & bits == bits
    return mode & bits == bits


def unreachable(path, uid, gids):
    """The first directory from / to *path* that *uid* may not enter, or
    None."""
    parts = path.strip('/').split('/')
    for i in range(len(parts) + 1):
        current = '/' + '/'.join(parts[:i])
        if not may(os.stat(current), uid, gids, ENTER):
            return current
    return None


def user_label(uid):
    """The name of user *uid*, or ``uid N`` for one without a name."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return 'uid %d' % uid


def group_label(gid):
    """The name of group *gid*, or ``gid N`` for one without a name."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return 'gid %d' % gid


# -- a config file this process may not read -------------------------------


def unreadable_config(path):
    """(text, fix) for config file *path*, which this process may not read
    (as the receiver would exit 77 for it): whose it is and its mode, and
    what would let this user read it."""
    who = privileges.current()
    # The groups this process has, which a unit's Group= or sudo -g may
    # make other than the user's own.
    gids = set(os.getgroups()) | {os.getegid()}
    text = 'cannot read %s as %s (permission denied)' % (path, who.label)
    alternative = '' if who.uid == 0 else ', or run check as root'
    try:
        blocked = unreachable(os.path.dirname(os.path.abspath(path)),
                              who.uid, gids)
        if blocked:
            return ('%s: it may not enter %s' % (text, blocked),
                    'chmod o+x %s, or give %s its group%s' % (
                        blocked, who.label, alternative))
        st = os.stat(path)
    except OSError as exc:
        return ('%s: %s' % (text, exc.strerror),
                'make it and its directories readable for %s%s'
                % (who.label, alternative))
    text += ': it is %04o %s:%s' % (stat.S_IMODE(st.st_mode),
                                    user_label(st.st_uid),
                                    group_label(st.st_gid))
    return text, _read_fix(path, st, who, gids) + alternative


def _read_fix(path, st, who, gids):
    """What lets *who*, with the groups *gids* of this process, read the
    file *path* of stat *st*."""
    group = group_label(st.st_gid)
    if st.st_uid == who.uid:
        return 'chmod u+r %s' % path
    if st.st_gid in gids:
        return 'chmod g+r %s' % path
    if not st.st_mode & stat.S_IRGRP:
        return 'chgrp %s %s; chmod g+r %s' % (
            group_label(who.gid), path, path)
    if st.st_gid in who.groups():
        # Its account has the group, this process does not.
        return 'run check with the groups of %s (runuser -u %s --)' % (
            who.label, who.label)
    return 'add %s to group %s (usermod -a -G %s %s)' % (
        who.label, group, group, who.label)


# -- the receiver's user ---------------------------------------------------


def receiver_identity(conf, path, receiver_user=None):
    """(Identity, why) of the user the receiver will run as, and what
    says so: *receiver_user* (--receiver-user), ``[zmq_receiver] user``, or,
    with neither (a unit's ``User=`` is not in the config), the owner of
    the IPC directory *path* when it exists, else the user running this
    check. Raises ReceiverError for a user or group that does not exist."""
    group = conf[opts.GROUP]
    if receiver_user:
        ident = privileges.resolve(receiver_user, group.group)
        return ident, '--receiver-user'
    if group.user:
        return (privileges.resolve(group.user, group.group),
                '[zmq_receiver] user')
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        ident = privileges.resolve(str(st.st_uid), group.group)
        return ident, ('the owner of %s, as [zmq_receiver] user is unset; '
                       'give --receiver-user if the unit\'s User= says '
                       'otherwise' % path)
    return (privileges.resolve('', group.group),
            'the user running this check, as [zmq_receiver] user is unset '
            'and %s does not exist; give --receiver-user if the unit\'s '
            'User= says otherwise' % path)


def _check_receiver_user(conf, report, path, receiver_user):
    """The ``user`` line: (Identity, socket gid or -1) of the receiver, or
    None when its user or socket group does not exist."""
    group = conf[opts.GROUP]
    try:
        ident, why = receiver_identity(conf, path, receiver_user)
        socket_gid = (privileges.group_id(group.socket_group, 'socket_group')
                      if group.socket_group else -1)
    except errors.ReceiverError as exc:
        # The error names the option; here the user may come from the
        # command line instead.
        report.fail('user', str(exc).replace(
            '[zmq_receiver] user', '--receiver-user' if receiver_user else
            '[zmq_receiver] user'))
        return None
    report.ok('user', 'the receiver runs as %s (%s)' % (ident.label, why))
    return ident, socket_gid


# -- the IPC directory -----------------------------------------------------


def check_ipc_dir(conf, report, service_user, receiver_user=None):
    """The ``user`` and ``ipc-dir`` lines, and with *service_user* the
    ``service`` line: whether the receiver's user may make its sockets in
    ``rpc_zmq_ipc_dir``, and the service's user connect to them."""
    path = os.path.abspath(conf.rpc_zmq_ipc_dir)
    found = _check_receiver_user(conf, report, path, receiver_user)
    if found is None:
        return
    ident, socket_gid = found
    if not _socket_paths_fit(conf, report, path):
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        _check_missing_ipc_dir(conf, report, path, ident, receiver_user)
        return
    except OSError as exc:
        report.fail('ipc-dir', '%s: %s' % (path, exc.strerror))
        return
    if not _check_existing_ipc_dir(conf, report, path, st, ident):
        return
    if service_user:
        check_service_user(report, path, st, ident, socket_gid,
                           opts.socket_mode(conf), service_user)


def _socket_paths_fit(conf, report, path):
    """Whether the longest socket path the receiver makes in *path*, the
    replies of this host, fits a unix socket address; FAIL if not."""
    longest = 'zmq_replies.' + opts.rpc_zmq_host(conf)
    if len(longest) <= routing.max_key_length(path):
        return True
    socket_path = routing.socket_path(path, longest)
    report.fail('ipc-dir', 'the socket %s would be %d bytes, longer than '
                'a unix socket path may be (%d): replies to this host '
                'would be refused' % (socket_path, len(socket_path.encode()),
                                      routing.UNIX_PATH_MAX),
                'set rpc_zmq_ipc_dir to a shorter path')
    return False


def _existing_parent(path):
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent


def _check_missing_ipc_dir(conf, report, path, ident, receiver_user):
    """The ``ipc-dir`` line for a directory that does not exist: whether
    the receiver may create it."""
    parent = _existing_parent(path)
    # Started as root to become [zmq_receiver] user, root creates it;
    # started as its user (a unit's User=), that user does.
    creator = (privileges.current()
               if conf[opts.GROUP].user and not receiver_user else ident)
    if rundir.on_read_only_fs(parent):
        report.fail('ipc-dir', '%s does not exist, and %s is on a '
                    'read-only file system' % (path, parent),
                    'set rpc_zmq_ipc_dir to a path on a writable one')
    elif may(os.stat(parent), creator.uid, creator.groups(), WRITE | ENTER):
        report.ok('ipc-dir', '%s does not exist; the receiver creates it'
                  % path)
    else:
        report.fail('ipc-dir', '%s does not exist, and %s may not create '
                    'it in %s' % (path, creator.label, parent),
                    'install -d -o %s %s, or start the receiver as root'
                    % (ident.label, path))


# Each takes (group, path, stat, ident) of an existing rpc_zmq_ipc_dir and
# returns (text, fix) of what keeps the receiver from using it, or None.


def _symlink(group, path, st, ident):
    if stat.S_ISLNK(st.st_mode):
        return ('%s is a symbolic link' % path,
                'set rpc_zmq_ipc_dir to the real directory, %s'
                % os.path.realpath(path))
    return None


def _not_a_directory(group, path, st, ident):
    if not stat.S_ISDIR(st.st_mode):
        return ('%s is not a directory' % path,
                'remove it, or set rpc_zmq_ipc_dir to a directory')
    return None


def _world_writable(group, path, st, ident):
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH and not group.allow_world_writable:
        return ('%s is world-writable (mode %04o): any local user could '
                'replace its sockets' % (path, mode), 'chmod o-w %s' % path)
    return None


def _not_enterable(group, path, st, ident):
    blocked = unreachable(path, ident.uid, ident.groups())
    if blocked:
        return ('%s may not enter %s, on the way to %s' % (
            ident.label, blocked, path),
            'chmod o+x %s, or give %s its group' % (blocked, ident.label))
    return None


def _not_writable(group, path, st, ident):
    if not may(st, ident.uid, ident.groups(), WRITE | ENTER):
        return ('%s (owner %s, group %s, mode %04o) is not writable by %s, '
                'who runs the receiver' % (
                    path, user_label(st.st_uid), group_label(st.st_gid),
                    stat.S_IMODE(st.st_mode), ident.label),
                'chown %s %s' % (ident.label, path))
    return None


def _read_only(group, path, st, ident):
    if rundir.on_read_only_fs(path):
        return ('%s is on a read-only file system' % path,
                'set rpc_zmq_ipc_dir to a path on a writable one')
    return None


#: In order: the first problem found is the one reported.
EXISTING_DIR_PROBLEMS = (_symlink, _not_a_directory, _world_writable,
                         _not_enterable, _not_writable, _read_only)


def _check_existing_ipc_dir(conf, report, path, st, ident):
    """The ``ipc-dir`` line for a path that exists; whether it passed."""
    group = conf[opts.GROUP]
    for problem in EXISTING_DIR_PROBLEMS:
        found = problem(group, path, st, ident)
        if found is not None:
            report.fail('ipc-dir', *found)
            return False
    report.ok('ipc-dir', '%s: %s may create its sockets (owner %s, mode '
              '%04o)' % (path, ident.label, user_label(st.st_uid),
                         stat.S_IMODE(st.st_mode)))
    return True


# -- the service's user ----------------------------------------------------


def _socket_group(socket_gid, dir_st, ident):
    """The group the receiver's sockets get: ``socket_group``, else the
    directory's when it is set-group-ID, else the receiver's own."""
    if socket_gid != -1:
        return socket_gid
    if dir_st.st_mode & stat.S_ISGID:
        return dir_st.st_gid
    return ident.gid


def check_service_user(report, path, st, ident, socket_gid, socket_mode,
                       name):
    """The ``service`` line: whether user *name* may reach the IPC
    directory *path* (of stat *st*) and connect to the sockets that
    *ident* makes there with *socket_mode*."""
    try:
        service = privileges.resolve(name)
    except errors.ReceiverError as exc:
        report.fail('service', str(exc).replace('[zmq_receiver] user',
                                                '--service-user'))
        return
    gids = service.groups()
    blocked = unreachable(path, service.uid, gids)
    if blocked:
        report.fail('service', '%s may not enter %s' % (service.label,
                                                        blocked),
                    'chmod o+x %s, or give %s its group' % (
                        blocked, service.label))
        return
    sock_gid = _socket_group(socket_gid, st, ident)
    sock_st = os.stat_result((stat.S_IFSOCK | socket_mode, 0, 0, 0,
                              ident.uid, sock_gid, 0, 0, 0, 0))
    sock_group = group_label(sock_gid)
    if not may(sock_st, service.uid, gids, WRITE):
        report.fail('service', '%s may not connect: the sockets will be '
                    'owned by %s, group %s, mode %04o' % (
                        service.label, ident.label, sock_group, socket_mode),
                    'add %s to group %s (usermod -a -G %s %s), or set '
                    '[zmq_receiver] socket_group to a group of %s' % (
                        service.label, sock_group, sock_group,
                        service.label, service.label))
        return
    report.ok('service', '%s may connect to the sockets (group %s, mode '
              '%04o)' % (service.label, sock_group, socket_mode))
