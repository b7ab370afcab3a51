"""Classic daemon mode (``--daemon``) with python-daemon.

It must run before any ZeroMQ context exists: a context's I/O threads do
not survive ``fork``.
"""

import logging
import os

import daemon

LOG = logging.getLogger(__name__)


class PidFile:
    """Write the daemon's pid on entry, remove the file on exit.

    No lock of its own: the IPC directory's instance lock already keeps a
    second receiver out, and a file left by a killed daemon is overwritten.
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            f.write('%d\n' % os.getpid())
        # Atomic: a reader never sees an empty or half-written pid.
        os.replace(tmp, self.path)
        return self

    def __exit__(self, *exc_info):
        try:
            os.unlink(self.path)
        except OSError as exc:
            LOG.warning('Cannot remove pid file %s: %s', self.path,
                        exc.strerror)


def detach(pid_file, preserve_fds):
    """Fork into the background; only *preserve_fds* and log files stay."""
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
        pidfile=PidFile(pid_file),
        detach_process=True,
        files_preserve=preserve,
        # The receiver handles its signals in its own loop.
        signal_map={},
    )
    context.open()
    return context
