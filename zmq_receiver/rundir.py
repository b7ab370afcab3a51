"""The IPC directory: made ready at startup and locked for one receiver.

libzmq silently replaces a socket file that another process still serves,
so two receivers on one directory would steal each other's consumers. The
lock file makes the second one stop at once and name the first.
"""

import errno
import fcntl
import logging
import os
import pwd
import stat

from zmq_receiver import errors
from zmq_receiver import procfs

LOG = logging.getLogger(__name__)

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
        fd = _make_dirs(path)
        try:
            # By the descriptor: the directory is the receiver's only from
            # the fchown on, and no path to it could be swapped meanwhile.
            # mkdir applied the umask; the configured mode is meant as is.
            os.fchmod(fd, mode)
            if os.geteuid() == 0:
                os.fchown(fd, ident.uid, ident.gid if gid == -1 else gid)
            return os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise errors.PermissionProblem(read_only_message(path,
                                                             ident.label))
        raise errors.PermissionProblem(
            'IPC directory %s does not exist and cannot be created: %s; '
            'create it (install -d -o %s %s) or start the receiver as root'
            % (path, exc.strerror, ident.label, path))


def _make_dirs(path):
    """A descriptor of the new directory *path*, made with its missing
    parents (as ``makedirs`` would, but safe for root).

    The part of *path* that exists is resolved once; below it each missing
    directory is made and entered through its parent's descriptor, never
    following a symlink, and must be ours: a user who may write one of
    the directories on the way cannot redirect root into another one.
    """
    missing = []
    head = path
    while not os.path.lexists(head):
        head, name = os.path.split(head)
        missing.append(name)
    fd = os.open(head, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, name in enumerate(reversed(missing), 1):
            # The last one stays closed to others until its fchmod. The
            # ones on the way are 0755 whatever the umask: under umask 0 a
            # 0777 one let any user rename the IPC directory away and put
            # their own in its place for the consumers to connect to.
            last = depth == len(missing)
            try:
                os.mkdir(name, 0o700 if last else 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY |
                            os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
            if os.fstat(fd).st_uid != os.geteuid():
                raise OSError(errno.EEXIST, 'made meanwhile by uid %d, '
                              'not by the receiver' % os.fstat(fd).st_uid)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    left by an earlier receiver that did not stop in order. A file gone or
    another user's is skipped; an OSError on *path* itself (replaced, or its
    permissions changed) is raised for the caller to report.
    """
    removed = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if (entry.name.startswith(prefixes) and stat.S_ISSOCK(
                    entry.stat(follow_symlinks=False).st_mode)):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
                except PermissionError:
                    # Another user's, in a sticky directory: the bind
                    # then says which topic cannot be served.
                    pass
    return removed


#: Attempts at a lock file that keeps changing under the receiver.
_ATTEMPTS = 5


class InstanceLock:
    """An exclusive ``flock`` on a file in the IPC directory.

    The lock goes with the process: a receiver killed with SIGKILL leaves
    the file, but not the lock, so the next start succeeds.

    ``flock`` works on any descriptor, a read-only one too: whoever may
    open the file may hold its lock and keep every receiver out. So the
    file is mode 0600 and the run-as user's (only that user and root can
    open it), made with ``O_EXCL | O_NOFOLLOW``. A file at the path that is
    not such a file (another owner, a symlink, more than one name, group
    or other bits: what an older receiver made, 0644, or what someone
    planted) is not trusted: since the directory is the receiver's, it is
    unlinked and a new one made, unless a process of root or of the run-as
    user has it open (an older receiver that still runs).
    """

    def __init__(self, directory):
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd = None
        #: Who the file is given to (uid, gid), when not the process.
        self._owner = None
        #: Uids whose processes may hold the lock: root and the run-as user.
        self._trusted = {0, os.geteuid()}

    def acquire(self, owner=None):
        """Take the lock or raise :class:`errors.AlreadyRunning`.

        *owner* (an Identity) gets the file when we are root, so that a
        later receiver started directly as that user can open it again.
        Better still, call it with the owner's rights
        (:func:`privileges.acting_as`): nothing the path leads to is then
        opened with more.
        """
        self._trusted = {0, os.geteuid()}
        if owner is not None:
            self._trusted.add(owner.uid)
            if os.geteuid() == 0 and owner.uid != 0:
                self._owner = (owner.uid, owner.gid)
        fd = self._lock()
        if self._owner is not None:
            os.fchown(fd, *self._owner)
        self._fd = fd
        self.update_pid()

    def _lock(self):
        """A descriptor of the file at the path, locked; raises
        :class:`errors.AlreadyRunning` when another receiver holds it."""
        for _ in range(_ATTEMPTS):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = os.pread(fd, 32, 0).decode(
                    'ascii', 'replace').strip()
                os.close(fd)
                raise self._running(holder or 'unknown')
            # A stopping receiver unlinks the file it locked; a lock taken
            # on that unlinked file would exclude nobody, so take it again.
            if self._at_path(fd):
                return fd
            os.close(fd)
        raise self._unstable()

    def _open(self):
        """A descriptor of a trusted file at the path: a new one, made when
        there is none or the one there is not trusted."""
        for _ in range(_ATTEMPTS):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT |
                               os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                               0o600)
            except FileExistsError:
                pass
            except OSError as exc:
                raise errors.PermissionProblem(
                    'Cannot create the lock file %s: %s; make the IPC '
                    'directory writable for the receiver\'s user' % (
                        self.path, exc.strerror))
            fd = None
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW |
                             # Whatever it is, opening it must not block.
                             os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as exc:
                problem = ('a symbolic link' if exc.errno == errno.ELOOP
                           else exc.strerror)
            else:
                problem = self._distrust(os.fstat(fd))
                if problem is None:
                    return fd
            self._replace(fd, problem)
        raise self._unstable()

    def _distrust(self, st):
        """Why the file with stat *st* is not one only we can open (None:
        it is)."""
        if not stat.S_ISREG(st.st_mode):
            return 'not a regular file'
        if st.st_nlink != 1:
            return '%d names (hard links)' % st.st_nlink
        if st.st_uid not in self._trusted:
            return 'owned by %s' % _owner(st.st_uid)
        if st.st_mode & 0o077:
            return 'mode %04o: other users may open it' % stat.S_IMODE(
                st.st_mode)
        return None

    def _replace(self, fd, problem):
        """Unlink the untrusted file at the path (*fd*, closed here, is
        open on it, or None) unless a receiver of ours has it open."""
        try:
            holders = self._trusted_holders(fd)
        finally:
            if fd is not None:
                os.close(fd)
        if holders:
            raise self._running(', '.join(map(str, sorted(holders))))
        LOG.warning('The lock file %s is not safe to use (%s): a process '
                    'of anyone who can open it could hold its lock and keep '
                    'every receiver out; replacing it with a new one (mode '
                    '0600)', self.path, problem)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise errors.PermissionProblem(read_only_message(
                    os.path.dirname(self.path)))
            raise errors.PermissionProblem(
                'The lock file %s is not safe to use (%s) and cannot be '
                'replaced: %s; remove it (rm %s)' % (
                    self.path, problem, exc.strerror, self.path))

    def _trusted_holders(self, fd):
        """Pids of root's and the run-as user's processes that lock or
        have open the file (*fd* is open on it, or None): an older
        receiver that still runs. Another user's are not counted."""
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return set()  # unlocked: no receiver has it
            except OSError:
                pass
            st = os.fstat(fd)
        else:
            try:
                st = os.lstat(self.path)
            except OSError:
                return set()
        pids = procfs.lockers(st) | procfs.openers(st)
        pids.discard(os.getpid())
        return {pid for pid in pids if procfs.euid(pid) in self._trusted}

    def _at_path(self, fd):
        """Whether the path still names the file *fd* is open on."""
        try:
            st = os.lstat(self.path)
        except OSError:  # gone, or the directory is no longer one
            return False
        here = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)

    def _running(self, holder):
        return errors.AlreadyRunning(
            'Another receiver (pid %s) already serves the IPC directory '
            '%s: stop it first, or give this one its own '
            'rpc_zmq_ipc_dir' % (holder, os.path.dirname(self.path)))

    def _unstable(self):
        return errors.PermissionProblem(
            'The lock file %s kept changing while the receiver took it: '
            'another process replaces it; let no other user write the IPC '
            'directory %s (chmod g-w,o-w, or chmod +t if it is shared)' % (
                self.path, os.path.dirname(self.path)))

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
        """Drop the lock and remove the file (when it is still ours)."""
        if self._fd is None:
            return
        try:
            if self._at_path(self._fd):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
