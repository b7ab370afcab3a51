"""The IPC directory: made ready at startup and locked for one receiver.

libzmq silently replaces a socket file that another process still serves,
so two receivers on one directory would steal each other's consumers. The
lock file makes the second one stop at once and name the first.
"""

import errno
import fcntl
import os
import pwd
import stat

from zmq_receiver import errors

LOCK_NAME = '.zmq-receiver.lock'


def prepare(path, ident, mode=0o755, gid=-1, allow_world_writable=False):
    """Create *path* if missing and check that *ident* can use it.

    *ident* (a :class:`privileges.Identity`) is who the receiver will run
    as. A directory made here, as root, is given to *ident* with group *gid*
    (-1: *ident*'s group) and *mode*. Returns the absolute path. Raises
    :class:`errors.PermissionProblem` with the fix when it is unusable.
    """
    path = os.path.abspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = _create(path, ident, mode, gid)
    if on_read_only_fs(path):
        raise errors.PermissionProblem(read_only_message(path))
    if stat.S_ISLNK(st.st_mode):
        raise errors.PermissionProblem(
            'IPC directory %s is a symbolic link, which another user could '
            'redirect: set rpc_zmq_ipc_dir to the real directory (%s)' % (
                path, os.path.realpath(path)))
    if not stat.S_ISDIR(st.st_mode):
        raise errors.PermissionProblem(
            'IPC directory %s is not a directory: remove it, or set '
            'rpc_zmq_ipc_dir to a directory' % path)
    if st.st_mode & stat.S_IWOTH and not allow_world_writable:
        raise errors.PermissionProblem(
            'IPC directory %s is world-writable (mode %04o): any local user '
            'could replace its sockets: chmod o-w %s (or set [zmq_receiver] '
            'allow_world_writable = true if you really mean it)' % (
                path, stat.S_IMODE(st.st_mode), path))
    _check_reachable(path, ident)
    if not writable_by(st, ident):
        raise errors.PermissionProblem(
            'IPC directory %s is owned by %s with mode %04o, but the '
            'receiver runs as %s and cannot create sockets in it: chown %s '
            '%s' % (path, _owner(st.st_uid), stat.S_IMODE(st.st_mode),
                    ident.label, ident.label, path))
    return path


def _create(path, ident, mode, gid):
    try:
        os.makedirs(path, exist_ok=True)
        # makedirs applies the umask; the configured mode is meant as is.
        os.chmod(path, mode)
        if os.geteuid() == 0:
            os.chown(path, ident.uid, ident.gid if gid == -1 else gid)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise errors.PermissionProblem(read_only_message(path,
                                                             ident.label))
        raise errors.PermissionProblem(
            'IPC directory %s does not exist and cannot be created: %s; '
            'create it (install -d -o %s %s) or start the receiver as root'
            % (path, exc.strerror, ident.label, path))
    return os.lstat(path)


def on_read_only_fs(path):
    """Whether *path* is on a file system mounted read-only (as every
    path outside a unit's writable ones is under ProtectSystem=strict)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def read_only_message(path, create_as=None):
    """The error for an IPC directory *path* on a read-only file system;
    with *create_as* (a user), it does not exist yet and must be made."""
    if create_as is None:
        problem, fix = 'is on a read-only file system', ''
    else:
        problem = ('does not exist and cannot be created on a read-only '
                   'file system')
        fix = 'create it (install -d -o %s %s) and ' % (create_as, path)
    return ('IPC directory %s %s (under systemd, ProtectSystem=strict makes '
            'every path read-only except the unit\'s ReadWritePaths= and '
            'RuntimeDirectory=): %sadd ReadWritePaths=%s to the unit, or set '
            'rpc_zmq_ipc_dir to a writable path' % (path, problem, fix, path))


def _permits(st, ident, bits):
    """Whether *ident* has the owner-class *bits* on a file with stat *st*,
    by the class (owner, group, other) the kernel would apply."""
    if ident.uid == 0:
        return True
    if st.st_uid == ident.uid:
        return st.st_mode & bits == bits
    bits >>= 3
    if st.st_gid in ident.groups():
        return st.st_mode & bits == bits
    bits >>= 3
    return st.st_mode & bits == bits


def writable_by(st, ident):
    """Whether *ident* may create and remove files in a directory with
    stat *st*."""
    return _permits(st, ident, stat.S_IWUSR | stat.S_IXUSR)


def _check_reachable(path, ident):
    """Raise PermissionProblem unless *ident* may pass every parent of
    *path*: a directory it owns is no use behind one it cannot enter."""
    parent = os.path.dirname(path)
    while True:
        st = os.stat(parent)
        if not _permits(st, ident, stat.S_IXUSR):
            raise errors.PermissionProblem(
                'IPC directory %s cannot be reached by %s: its parent %s '
                '(owner %s, mode %04o) does not let it pass: chmod o+x %s, '
                'or move rpc_zmq_ipc_dir to a path it can reach' % (
                    path, ident.label, parent, _owner(st.st_uid),
                    stat.S_IMODE(st.st_mode), parent))
        if parent == os.path.dirname(parent):
            return
        parent = os.path.dirname(parent)


def _owner(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return 'uid %d' % uid


def remove_stale_sockets(path, prefixes):
    """Remove the socket files in *path* whose names start with *prefixes*.

    Call it only while holding the instance lock: then every such file was
    left by an earlier receiver that did not stop in order.
    """
    removed = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if (entry.name.startswith(prefixes) and
                    stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode)):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


class InstanceLock:
    """An exclusive ``flock`` on a file in the IPC directory.

    The lock goes with the process: a receiver killed with SIGKILL leaves
    the file, but not the lock, so the next start succeeds.
    """

    def __init__(self, directory):
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd = None

    def acquire(self, owner=None):
        """Take the lock or raise :class:`errors.AlreadyRunning`.

        *owner* (an Identity) gets the file when we are root, so that a
        later receiver started directly as that user can open it again.
        """
        fd = self._lock()
        if owner is not None and os.geteuid() == 0 and owner.uid != 0:
            os.fchown(fd, owner.uid, owner.gid)
        self._fd = fd
        self.update_pid()

    def _lock(self):
        """A descriptor of the file at the path, locked; raises as
        :meth:`_try_acquire`."""
        while True:
            fd = self._try_acquire()
            # A stopping receiver unlinks the file it locked; a lock taken
            # on that unlinked file would exclude nobody, so take it again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _try_acquire(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise errors.PermissionProblem(read_only_message(
                    os.path.dirname(self.path)))
            raise errors.PermissionProblem(
                'Cannot open the lock file %s: %s; make the IPC directory '
                'writable for the receiver\'s user' % (
                    self.path, exc.strerror))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.read(fd, 32).decode('ascii', 'replace').strip()
            os.close(fd)
            raise errors.AlreadyRunning(
                'Another receiver (pid %s) already serves the IPC directory '
                '%s: stop it first, or give this one its own '
                'rpc_zmq_ipc_dir' % (holder or 'unknown',
                                     os.path.dirname(self.path)))
        return fd

    def reacquire(self):
        """Lock a new file at the same path, after the directory was
        removed and made again: the old lock is on a file no one else can
        open any more, so it excludes no one. Raises
        :class:`errors.AlreadyRunning` when another receiver took the
        directory meanwhile.
        """
        if self._fd is None:
            return
        fd = self._lock()
        os.close(self._fd)
        self._fd = fd
        self.update_pid()

    def fileno(self):
        """The lock's descriptor (to keep it open across daemonizing)."""
        return self._fd

    def update_pid(self):
        """Record the current pid (after daemonizing changed it)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, b'%d\n' % os.getpid(), 0)

    def release(self):
        """Drop the lock and remove the file."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
