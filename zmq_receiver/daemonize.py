"""Classic daemon mode (``--daemon``) with python-daemon.

It must run before any ZeroMQ context exists: a context's I/O threads do
not survive ``fork``.
"""

import logging
import os
import tempfile

import daemon

from zmq_receiver import privileges

LOG = logging.getLogger(__name__)


class PidFile:
    """Write the daemon's pid on entry, remove the file on exit.

    No lock of its own: the IPC directory's instance lock already keeps a
    second receiver out, and a file left by a killed daemon is overwritten.
    """

    def __init__(self, path, ident=None):
        self.path = path
        #: Whose rights the file is written with (None: the process's).
        self.ident = ident

    def __enter__(self):
        if self.ident is None:
            return self._write()
        with privileges.acting_as(self.ident):
            return self._write()

    def _write(self):
        # In a directory the run-as user may write (the IPC directory by
        # default), so with its rights, and even so through a new file of
        # a name no one can guess (mkstemp: O_EXCL | O_NOFOLLOW), written
        # through its descriptor. The old fixed name <pid_file>.tmp,
        # opened by root with 'w', truncated whatever the user had linked
        # it to.
        fd, tmp = tempfile.mkstemp(
            prefix='.%s.' % os.path.basename(self.path), suffix='.tmp',
            dir=os.path.dirname(self.path))
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, b'%d\n' % os.getpid())
            # Atomic, and it replaces a link at the path rather than
            # following it: a reader never sees an empty or half-written
            # pid.
            os.replace(tmp, self.path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc_info):
        try:
            os.unlink(self.path)
        except OSError as exc:
            LOG.warning('Cannot remove pid file %s: %s', self.path,
                        exc.strerror)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def detach(pid_file, preserve_fds, ident=None):
    """Fork into the background; only *preserve_fds* and log files stay.
    The pid file is written with *ident*'s rights (it removes the file
    after the privilege drop, so it may write where it is)."""
    preserve = list(preserve_fds)
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, 'stream', None)
        if stream is not None and hasattr(stream, 'fileno'):
            preserve.append(stream)
        sock = getattr(handler, 'socket', None)  # syslog
        if sock is not None:
            preserve.append(sock)
    context = daemon.DaemonContext(
        working_directory='/',
        umask=0o022,
        pidfile=PidFile(pid_file, ident),
        detach_process=True,
        files_preserve=preserve,
        # The receiver handles its signals in its own loop.
        signal_map={},
    )
    context.open()
    return context
