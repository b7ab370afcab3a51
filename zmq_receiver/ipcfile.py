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


def bind(sock, path, mode, gid=-1):
    """Bind *sock* at *path* with *mode* and group *gid* (-1: the group the
    directory gives). Raises OSError (a zmq.ZMQError is turned into one
    with the same errno).
    """
    directory, final = os.path.split(path)
    private = tempfile.mkdtemp(prefix=PREFIX, dir=directory)
    try:
        fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                     os.O_CLOEXEC)
    except OSError:
        _rmdir_quietly(private)
        raise
    # Unique, never reused: a libzmq that unlinked its bound path when the
    # socket closes would find nothing there, whenever that happens.
    name = os.path.basename(private)[len(PREFIX):]
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            # Renamed away and replaced before the open: not ours.
            raise OSError(errno.EACCES, 'the private directory %s was '
                          'replaced before the receiver could use it, by a '
                          'user who may rename files in %s (chmod +t %s '
                          'stops that)' % (private, directory, directory))
        # Through the descriptor: even if someone renames the private
        # directory meanwhile, this path still leads to it and nowhere
        # else. /proc is there on Linux; without it, the private path.
        base = '/proc/self/fd/%d' % fd
        if not os.path.isdir(base):
            base = private
        inner = os.path.join(base, name)
        _bind_narrow(sock, inner, mode)
        try:
            os.chmod(inner, mode)
            if gid != -1:
                os.chown(inner, -1, gid)
            os.rename(name, path, src_dir_fd=fd)
        except OSError:
            # Or an outlet bound again after a failure would keep one more
            # listener (and descriptor) for each try.
            _unbind_quietly(sock, inner)
            raise
    finally:
        os.close(fd)
        _rmdir_quietly(private)


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


def _unbind_quietly(sock, path):
    try:
        sock.unbind('ipc://' + path)
    except zmq.ZMQError:
        pass
    try:
        os.unlink(path)
    except OSError:
        pass


def _rmdir_quietly(path):
    # rmdir follows no symlink and removes only an empty directory: at
    # worst an empty one someone put at the name.
    try:
        os.rmdir(path)
    except OSError:
        pass
