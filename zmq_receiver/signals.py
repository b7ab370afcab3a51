"""Signals as readable events for the poll loop.

The Python-level handlers do nothing; the interpreter's C handler writes
each signal's number to a non-blocking socket (``signal.set_wakeup_fd``),
whose other end the loop polls beside its ZeroMQ sockets. The loop then
calls a method named after the signal, at a point where no socket operation
is half done, and never blocks waiting for one.
"""

import signal
import socket


def _ignore(signum, frame):
    """Python-level handler: the wakeup byte already carries the signal."""


class SignalWakeup:
    """Route *signums* to a socket the loop can poll."""

    def __init__(self, signums):
        self.signums = tuple(signums)
        self._reader = None
        self._writer = None
        self._saved = {}
        self._saved_fd = -1

    def install(self):
        """Take over the signals; must run in the main thread."""
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._saved_fd = signal.set_wakeup_fd(self._writer.fileno(),
                                              warn_on_full_buffer=False)
        for signum in self.signums:
            self._saved[signum] = signal.signal(signum, _ignore)

    def fileno(self):
        """The descriptor that becomes readable when a signal arrived."""
        return self._reader.fileno()

    def read(self):
        """The signals received since the last call, in order."""
        received = []
        while True:
            try:
                data = self._reader.recv(4096)
            except BlockingIOError:
                return received
            if not data:
                return received
            received.extend(signal.Signals(b) for b in data
                            if b in self.signums)

    def restore(self):
        """Give the signals back to their earlier handlers."""
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()
        if self._reader is not None:
            signal.set_wakeup_fd(self._saved_fd)
            self._reader.close()
            self._writer.close()
            self._reader = self._writer = None
