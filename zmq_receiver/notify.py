"""Telling systemd how the receiver is doing (the ``sd_notify`` protocol).

A no-op outside systemd (no ``NOTIFY_SOCKET``). Under systemd each
notification is one datagram of ``KEY=value`` lines on an ``AF_UNIX``
``SOCK_DGRAM`` socket to the address in ``NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``); see sd_notify(3). That is all
the protocol is, so it is spoken here directly rather than through
systemd-python, which needs libsystemd-dev and a compiler to install: a
plain ``pip install`` runs under the shipped ``Type=notify`` unit.
(systemd-python stays an optional extra for oslo.log's ``use_journal``.)

The socket is connected once, when the :class:`Notifier` is made, which is
before the privilege drop: Linux checks the right to write to a socket
file at connect(), so a ``NOTIFY_SOCKET`` only root may write (a container
manager's, say) keeps working after the receiver becomes its service user.

Sending never blocks the loop and never ends the process: a notification
that cannot be sent is counted and logged, at most once a minute, and
the next one tries again (reconnecting if systemd's end went away).
"""

import errno
import logging
import os
import socket

from zmq_receiver import ratelimit

LOG = logging.getLogger(__name__)

#: Seconds between two warnings about notifications that failed.
WARN_INTERVAL = 60.0

#: Errors after which the connected socket is useless: connect again.
_RECONNECT = (errno.ECONNREFUSED, errno.ENOTCONN, errno.ECONNRESET,
              errno.EPIPE, errno.ENOENT)


def under_systemd():
    """Whether systemd waits for our notifications."""
    return bool(os.environ.get('NOTIFY_SOCKET'))


def socket_address(value):
    """The ``AF_UNIX`` address for a ``NOTIFY_SOCKET`` *value*, or None
    for a kind this module does not speak (``vsock:`` ...)."""
    if value.startswith('@'):
        # An abstract name: no file, no permission check on it.
        return '\0' + value[1:]
    if value.startswith('/'):
        return value
    return None


class Notifier:
    """Sends state changes and watchdog pings to systemd."""

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        #: The NOTIFY_SOCKET value, or '' outside systemd.
        self.target = environ.get('NOTIFY_SOCKET', '')
        self.enabled = bool(self.target)
        #: Notifications that could not be sent.
        self.failed = 0
        self._warn = ratelimit.RateLimitedLog(LOG, WARN_INTERVAL)
        self._sock = None
        self._address = None
        #: Seconds between two watchdog pings, or None without a watchdog.
        self.watchdog_interval = None
        if not self.enabled:
            return
        self._address = socket_address(self.target)
        if self._address is None:
            LOG.warning(
                'NOTIFY_SOCKET=%s is not a socket path or an @abstract '
                'name, the only kinds this receiver speaks: systemd will '
                'not hear from it; run it under a service manager that '
                'gives an AF_UNIX notify socket, or as Type=simple',
                self.target)
        else:
            self._connect()
        usec = environ.get('WATCHDOG_USEC')
        pid = environ.get('WATCHDOG_PID')
        if usec and (not pid or pid == str(os.getpid())):
            try:
                # Half the timeout, as sd_watchdog_enabled(3) advises.
                self.watchdog_interval = int(usec) / 2e6
            except ValueError:
                pass

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self._address)
        except OSError as exc:
            sock.close()
            self._failed(exc)
            return False
        # A full queue on systemd's side drops this notification rather
        # than stalling the loop.
        sock.setblocking(False)
        self._sock = sock
        return True

    def _failed(self, exc):
        self.failed += 1
        self._warn.warning(
            'notify', 'Cannot notify systemd through NOTIFY_SOCKET=%s: %s; '
            'the receiver keeps running, but systemd may time out its '
            'start or its watchdog: check that the socket exists and that '
            'the receiver may write to it', self.target,
            exc.strerror or exc)

    def _send(self, state):
        if self._address is None:
            return
        self._warn.flush()
        if self._sock is None and not self._connect():
            return
        try:
            self._sock.send(state.encode('utf-8'))
        except OSError as exc:
            if exc.errno in _RECONNECT:
                self._sock.close()
                self._sock = None
            self._failed(exc)

    def ready(self, status):
        """The port is bound and privileges dropped."""
        self._send('READY=1\nSTATUS=%s\nMAINPID=%d' % (status, os.getpid()))

    def status(self, status):
        """A one-line status for ``systemctl status``."""
        self._send('STATUS=%s' % status)

    def reloading(self):
        """A reload (SIGHUP) begins; :meth:`ready` ends it."""
        self._send('RELOADING=1')

    def stopping(self):
        """A graceful stop begins."""
        self._send('STOPPING=1')

    def watchdog(self):
        """The loop is alive."""
        self._send('WATCHDOG=1')
