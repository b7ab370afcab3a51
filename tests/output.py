"""A child process's output, read line by line as events.

Shared by the tests' processes (the receiver, Redis servers) and the
benchmark's: a thread per process reads its output into a queue, so that
the caller waits on an event (a line arriving, the output ending) with a
timeout, never on a sleep. Each caller words its own failures.
"""

import queue
import re
import threading
import time


class ProcessOutput:
    """The lines of *stream* (by default *proc*'s stdout, opened as text).

    ``lines`` holds every line taken from the queue so far, by wait_for()
    or log(), without the newline.
    """

    def __init__(self, proc, stream=None):
        self.proc = proc
        self.lines = []
        self._queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream or proc.stdout,),
                         daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self._queue.put(line.rstrip('\n'))
        # None marks the end of the output.
        self._queue.put(None)

    def _take(self, timeout):
        """The next line, or None at the end; queue.Empty on a timeout."""
        line = self._queue.get(timeout=timeout)
        if line is None:
            # Put the end mark back, so that every later call sees it too.
            self._queue.put(None)
        else:
            self.lines.append(line)
        return line

    def wait_for(self, pattern, timeout):
        """The match of the next line that *pattern* (a regex) matches.

        Raises TimeoutError when *timeout* seconds pass first, EOFError
        when the output ends first. Lines that do not match are consumed
        (they stay in ``lines``).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            # Checked before each line, so that a stream of lines that do
            # not match cannot stretch the wait past the deadline.
            if remaining <= 0:
                raise TimeoutError(pattern)
            try:
                line = self._take(remaining)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(pattern)
            match = regex.search(line)
            if match:
                return match

    def log(self, last=None):
        """All the lines so far (the *last* ones only, if given), joined
        by newlines; it does not wait."""
        while True:
            try:
                if self._take(0) is None:
                    break
            except queue.Empty:
                break
        return '\n'.join(self.lines[-last:] if last else self.lines)
