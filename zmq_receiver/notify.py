"""Telling systemd how the receiver is doing (``sd_notify``).

A no-op outside systemd (no ``NOTIFY_SOCKET``). Under systemd it needs
systemd-python; without it the receiver refuses to start rather than let a
``Type=notify`` unit hang until its start timeout.
"""

import os

from zmq_receiver import errors

try:
    from systemd import daemon as sd_daemon
except ImportError:  # optional: only systemd hosts need it
    sd_daemon = None


def under_systemd():
    """Whether systemd waits for our notifications."""
    return bool(os.environ.get('NOTIFY_SOCKET'))


class Notifier:
    """Sends state changes and watchdog pings to systemd."""

    def __init__(self):
        self.enabled = under_systemd()
        if self.enabled and sd_daemon is None:
            raise errors.ConfigError(
                'NOTIFY_SOCKET is set (a Type=notify systemd unit) but '
                'systemd-python is not installed: pip install systemd-python '
                '(it builds against libsystemd-dev), or use Type=simple')
        #: Seconds between two watchdog pings, or None without a watchdog.
        self.watchdog_interval = None
        usec = os.environ.get('WATCHDOG_USEC')
        pid = os.environ.get('WATCHDOG_PID')
        if self.enabled and usec and (not pid or pid == str(os.getpid())):
            try:
                # Half the timeout, as sd_watchdog_enabled(3) advises.
                self.watchdog_interval = int(usec) / 2e6
            except ValueError:
                pass

    def _send(self, state):
        if self.enabled:
            sd_daemon.notify(state)

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
