"""Warnings that a flood of bad input cannot turn into a flood of log lines.

Each kind of warning is logged at most once per interval; the ones in
between are counted and reported with the next one, or by :meth:`flush`
when the interval is over and no new one came.
"""

import time


class RateLimitedLog:
    """Log through *logger* at most one warning per key per *interval* s."""

    def __init__(self, logger, interval, clock=time.monotonic):
        self.logger = logger
        self.interval = interval
        self._clock = clock
        # key -> [time of the last line logged, suppressed since, last text]
        self._state = {}

    def warning(self, key, msg, *args):
        """Log ``msg % args`` unless a *key* warning was logged recently."""
        now = self._clock()
        state = self._state.get(key)
        if state is not None and now - state[0] < self.interval:
            state[1] += 1
            state[2] = (msg, args)
            return
        suppressed = state[1] if state else 0
        if suppressed:
            msg += ' (and %d more like it in the last %.0f s)'
            args = args + (suppressed, now - state[0])
        self.logger.warning(msg, *args)
        self._state[key] = [now, 0, None]

    def flush(self):
        """Report suppressed warnings whose interval has ended."""
        now = self._clock()
        for key, state in self._state.items():
            if state[1] and now - state[0] >= self.interval:
                msg, args = state[2]
                self.logger.warning(
                    msg + ' (%d like it in the last %.0f s)',
                    *(args + (state[1], now - state[0])))
                self._state[key] = [now, 0, None]
