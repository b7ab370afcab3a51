"""Binding an IPC socket file with its mode and group, and no race.

In a shared group directory (mode 2775) every member of the group may
rename entries: between a bind that creates ``zmq_topic_x`` and a
``chmod``/``chown`` by that path, another project's user can rename a
symlink over the new file and have the receiver's user change a file of
its own choosing (inotify makes the window easy to hit). So the socket is
bound inside a new private directory (mode 0700, made with ``mkdtemp``),
reached through a descriptor of it, where no one else can put anything;
its mode and group are set there; then ``rename`` moves it into place,
which replaces whatever is at the final path (a stale socket file, a
planted symlink) instead of following it.

libzmq (4.3) removes no socket file when the socket closes, and never
knows the final path: the receiver removes that file itself
(:func:`zmq_receiver.outlets.remove_socket_file`). The name bound inside
the private directory is unique, so a libzmq that unlinked its bound path
at close would find nothing there.
"""

import errno
import os
import stat
import tempfile

import zmq

#: Prefix of the private directories, which live only during a bind (one
#: left by a crash in the middle of a bind holds at most a socket file no
#: one listens on).
PREFIX = '.zmq-receiver-bind.'


#: Private directories tried before a bind gives up: each one may be
#: renamed away and replaced by a user who may rename entries in the IPC
#: directory, in the instant between its mkdir and its open.
ATTEMPTS = 8


def bind(sock, path, mode, gid=-1):
    """Bind *sock* at *path* with *mode* and group *gid* (-1: the group the
    directory gives). Raises OSError (a zmq.ZMQError is turned into one
    with the same errno).
    """
    directory = os.path.dirname(path)
    for _ in range(ATTEMPTS):
        private = tempfile.mkdtemp(prefix=PREFIX, dir=directory)
        try:
            fd = _open_private(private)
            if fd is not None:
                try:
                    return _bind_in(sock, fd, private, path, mode, gid)
                finally:
                    os.close(fd)
        finally:
            _rmdir_quietly(private)
    raise OSError(errno.EBUSY, 'the private directory the receiver made '
                  'for the bind was replaced before it could enter it, %d '
                  'times: a user who may rename entries in %s did it (chmod '
                  '+t %s stops that)' % (ATTEMPTS, directory, directory))


def _open_private(private):
    """A descriptor of the new directory *private*, or None when it is no
    longer the one this process made."""
    try:
        fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                     os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink now
            return None
        raise
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        return None
    return fd


def _bind_in(sock, fd, private, path, mode, gid):
    # Unique, never reused: a libzmq that unlinked its bound path when the
    # socket closes would find nothing there, whenever that happens.
    name = os.path.basename(private)[len(PREFIX):]
    # libzmq needs a path: through the descriptor, it leads to this very
    # directory even if someone renames it meanwhile. Without /proc, the
    # private path: should it lead elsewhere by then, the chmod below,
    # relative to the descriptor, finds no file and the bind fails.
    base = '/proc/self/fd/%d' % fd
    if not os.path.isdir(base):
        base = private
    inner = os.path.join(base, name)
    _bind_narrow(sock, inner, mode)
    try:
        # Relative to the descriptor, in a directory only this process may
        # write: the entry is the socket just bound, never a symlink.
        os.chmod(name, mode, dir_fd=fd)
        if gid != -1:
            os.chown(name, -1, gid, dir_fd=fd)
        # rename replaces whatever is at *path*, and follows nothing.
        os.rename(name, path, src_dir_fd=fd)
    except OSError:
        # Or an outlet bound again after a failure would keep one more
        # listener (and descriptor) for each try.
        _unbind_quietly(sock, inner, name, fd)
        raise


def remove_stale(directory):
    """Remove the private directories a receiver killed in the middle of
    a bind left in *directory*, with the socket file in each; how many
    socket files. Only directories of this process's user are touched,
    through a descriptor. Call it while holding the instance lock.
    """
    removed = 0
    for name in os.listdir(directory):
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(directory, name)
        try:
            fd = _open_private(path)
        except OSError:
            fd = None
        if fd is None:
            continue  # someone else's, or not a directory: not ours
        try:
            for entry in os.listdir(fd):
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode):
                    os.unlink(entry, dir_fd=fd)
                    removed += 1
        finally:
            os.close(fd)
        _rmdir_quietly(path)
    return removed


def _bind_narrow(sock, path, mode):
    # libzmq creates the file with the process umask; narrow it for the
    # bind so that the file never exists with wider permissions.
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind('ipc://' + path)
    except zmq.ZMQError as exc:
        raise OSError(exc.errno, exc.strerror) from None
    finally:
        os.umask(old_umask)


def _unbind_quietly(sock, inner, name, fd):
    try:
        sock.unbind('ipc://' + inner)
    except zmq.ZMQError:
        pass
    try:
        os.unlink(name, dir_fd=fd)
    except OSError:
        pass


def _rmdir_quietly(path):
    # rmdir follows no symlink and removes only an empty directory: at
    # worst an empty one someone put at the name.
    try:
        os.rmdir(path)
    except OSError:
        pass
