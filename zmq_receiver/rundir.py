"""The IPC directory: made ready at startup and locked for one receiver.

libzmq silently replaces a socket file that another process still serves,
so two receivers on one directory would steal each other's consumers. The
lock file makes the second one stop at once and name the first.
"""

import errno
import fcntl
import os
import stat

from zmq_receiver import errors

LOCK_NAME = '.zmq-receiver.lock'


def prepare(path, mode=0o755):
    """Create *path* if missing and check that this process can use it.

    Returns the absolute path. Raises :class:`errors.PermissionProblem`
    with the fix when the directory is unusable.
    """
    path = os.path.abspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(path, mode)
        except OSError as exc:
            raise errors.PermissionProblem(
                'IPC directory %s does not exist and cannot be created: '
                '%s; create it (mkdir -p %s) and give it to the user the '
                'receiver runs as' % (path, exc.strerror, path))
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise errors.PermissionProblem(
            'IPC directory %s is a symbolic link, which another user could '
            'redirect: set rpc_zmq_ipc_dir to the real directory (%s)' % (
                path, os.path.realpath(path)))
    if not stat.S_ISDIR(st.st_mode):
        raise errors.PermissionProblem(
            'IPC directory %s is not a directory: remove it, or set '
            'rpc_zmq_ipc_dir to a directory' % path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise errors.PermissionProblem(
            'IPC directory %s is owned by uid %d with mode %o, but the '
            'receiver runs as uid %d and cannot create sockets in it: '
            'chown %d %s' % (path, st.st_uid, stat.S_IMODE(st.st_mode),
                             os.geteuid(), os.geteuid(), path))
    return path


class InstanceLock:
    """An exclusive ``flock`` on a file in the IPC directory.

    The lock goes with the process: a receiver killed with SIGKILL leaves
    the file, but not the lock, so the next start succeeds.
    """

    def __init__(self, directory):
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd = None

    def acquire(self):
        """Take the lock or raise :class:`errors.AlreadyRunning`."""
        while True:
            fd = self._try_acquire()
            # A stopping receiver unlinks the file it locked; a lock taken
            # on that unlinked file would exclude nobody, so take it again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, b'%d\n' % os.getpid())
        self._fd = fd

    def _try_acquire(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o644)
        except OSError as exc:
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
