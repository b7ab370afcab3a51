"""The log file, made ready by root for the user the receiver runs as.

Distro packages give the log directory to the service's user
(``/var/log/nova`` owned by nova), so that user can put any link at the log
path. Root therefore never opens that path as root for oslo.log: it opens
it once itself, without following a symlink, refuses a hard link to a file
that is not the user's, and gives the file to the user by its descriptor;
oslo.log then opens the path with the user's rights only
(:func:`privileges.acting_as`), so a link swapped in meanwhile reaches
nothing the user could not write anyway. Root opens it first, rather than
leaving it all to the user, so that ``--log-file`` may name a file in a
directory only root may write (``/var/log/zmq-receiver.log``).
"""

import errno
import logging
import os
import stat
import sys

from oslo_log import log as oslo_log

from zmq_receiver import errors
from zmq_receiver import privileges

#: A log file the receiver creates: the user's, readable by its group.
MODE = 0o640

_FLAGS = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
          # A FIFO planted at the path must not hold up the start.
          os.O_NONBLOCK | os.O_CLOEXEC)


def path_of(conf):
    """The file oslo.log will open for *conf*, or None (no log file, or
    handlers of the operator's own ``log_config_append``)."""
    if conf.log_config_append:
        return None
    # oslo.log's own rule (log_file, log_dir, or both), so that the file
    # made ready here is the one it opens.
    path = oslo_log._get_log_file_path(conf)
    return os.path.abspath(path) if path else None


def prepare(path, ident):
    """Open or create the log file *path* as root for *ident*; returns a
    descriptor of it (close it once oslo.log has opened the file).

    Raises :class:`errors.PermissionProblem` for a symlink, a file that is
    not a regular one, a hard link to a file that is not *ident*'s, and a
    file of a third user (neither root nor *ident*).
    """
    try:
        parent = _open_parent(path)
    except OSError as exc:
        raise cannot_open(path, exc.strerror)
    try:
        fd = _open_in(parent, path)
    finally:
        os.close(parent)
    try:
        _check_and_give(fd, path, ident)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_in(parent, path):
    """A descriptor of the log file *path*, opened or created by its name
    in the directory *parent* without following a symlink."""
    try:
        return os.open(os.path.basename(path), _FLAGS, MODE, dir_fd=parent)
    except OSError as exc:
        raise _open_error(path, exc)


def _open_error(path, exc):
    """The problem to raise for *exc*, the failed open of *path*."""
    if exc.errno == errno.ELOOP:
        return errors.PermissionProblem(
            'The log file %s is a symbolic link, which whoever may write '
            '%s can point at any file: remove it (the receiver creates '
            'the file) or set --log-file to the real file' % (
                path, os.path.dirname(path)))
    if exc.errno == errno.ENXIO:
        return _not_regular(path)
    return cannot_open(path, exc.strerror)


def _check_and_give(fd, path, ident):
    """Refuse the open log file *fd* unless it is a regular file that is
    safe to write for *ident*; give it to *ident* by its descriptor."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path)
    if st.st_nlink > 1 and st.st_uid != ident.uid:
        raise errors.PermissionProblem(
            'The log file %s has %d names (hard links) and belongs to '
            'uid %d, not to %s: another of its names may be a file the '
            'receiver must never write; remove %s (the receiver creates '
            'a new one)' % (path, st.st_nlink, st.st_uid, ident.label,
                            path))
    if ident.uid != 0:
        _give(fd, st, path, ident)


def _give(fd, st, path, ident):
    """Give the log file *fd* (stat *st*) to *ident*, the user who will
    write it, unless a third user owns it."""
    if st.st_uid not in (0, ident.uid):
        raise errors.PermissionProblem(
            'The log file %s belongs to uid %d, neither root nor '
            '%s, who will write it: chown %s %s, or remove it' % (
                path, st.st_uid, ident.label, ident.label, path))
    if st.st_uid != ident.uid or st.st_gid != ident.gid:
        os.fchown(fd, ident.uid, ident.gid)


def _open_parent(path):
    """A descriptor of the directory of *path* (absolute), reached
    without following a symlink in a directory that anyone but root may
    write.

    O_NOFOLLOW guards the last component only: with /var/log/nova the
    user's, a link /var/log/nova/sub -> /etc had root create (and give the
    user) /etc/<name>.
    """
    fd = os.open('/', os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in [p for p in os.path.dirname(path).split('/') if p]:
            st = os.fstat(fd)
            trusted = st.st_uid == 0 and not st.st_mode & 0o022
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            try:
                child = os.open(name, flags | (0 if trusted else
                                               os.O_NOFOLLOW), dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and not trusted:
                    raise errors.PermissionProblem(
                        'The directory of the log file %s is reached through '
                        '%s, a symbolic link or not a directory, in a '
                        'directory that users other than root may write: '
                        'they can point it anywhere; set --log-file or '
                        '--log-dir to the real directory' % (
                            path, name)) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_as(ident):
    """Have every file handler of the root logger open its file with
    *ident*'s rights from now on.

    Until the privilege drop the receiver logs as root, and a
    WatchedFileHandler opens its path again whenever the file there
    changed: the user could swap in a symlink to /etc/shadow in between.
    A file that cannot be opened again is said once on stderr, and the log
    lines go to the other handlers until it can be: logging's own open
    would raise into whatever was logging (the loop, the privilege drop).
    """
    for handler in logging.getLogger().handlers:
        if getattr(handler, 'baseFilename', None):
            _open_as(handler, ident)


def _open_as(handler, ident):
    # On the instance: oslo.log picks the class (watched, rotating by size
    # or by time); all of them open the file through _open().
    opener = handler._open
    failing = []

    def open_as_user():
        try:
            with privileges.acting_as(ident):
                stream = opener()
        except OSError as exc:
            if not failing:
                failing.append(exc)
                sys.stderr.write(
                    'Cannot open the log file %s again: %s; its lines are '
                    'lost until it can be (check what is at that path)\n'
                    % (handler.baseFilename, exc.strerror))
            return None
        failing.clear()
        return stream

    handler._open = open_as_user
    reopen = getattr(handler, 'reopenIfNeeded', None)
    if reopen is not None:
        def reopen_quietly():
            try:
                reopen()
            except OSError:
                pass  # a stat that failed: try again on the next line

        handler.reopenIfNeeded = reopen_quietly


def cannot_open(path, reason):
    """The error for a log file that cannot be opened for *reason*."""
    return errors.PermissionProblem(
        'Cannot open the log file: %s: %s; create its directory and make '
        'it writable for the receiver\'s user' % (path, reason))


def _not_regular(path):
    return errors.PermissionProblem(
        'The log file %s is not a regular file: remove it, or set '
        '--log-file to a file' % path)
