"""The graceful stop as a state machine, and its timings.

::

    RUNNING -begin-> CLOSING_INPUTS -inputs_closed-> DRAINING -finish-> DONE
                     \\_________ abort (a second request) _________/

CLOSING_INPUTS: the senders were asked to close their connections (a
half-close); they get STOP_CLOSE_WAIT, within the shutdown time, before the
receiver unbinds the inbound sockets itself. DRAINING: the backlogs go to
their consumers until none is pending or the shutdown time has passed.
The receiver decides when each transition happens; this class keeps the
state and the times, so that the rules read in one place.
"""

#: Forwarding; no stop was asked for.
RUNNING = 'running'
#: Waiting for the senders to close their connections.
CLOSING_INPUTS = 'closing inputs'
#: Inputs closed: delivering the backlogs.
DRAINING = 'draining'
#: Stopped: the loop ends.
DONE = 'done'

#: At a stop, how long (ms) the unbound inbound socket must stay quiet
#: before it is closed (see :meth:`inputs.Inputs.close_for_stop`).
STOP_QUIET_MS = 100
#: At a stop, how long (s) the senders get to close the connections the
#: receiver half-closed, before it closes them itself (within the shutdown
#: time). A legacy sender's libzmq closes at once.
STOP_CLOSE_WAIT = 1.0


class Stop:
    """Where a receiver is in its stop, and until when each step may
    last."""

    def __init__(self, clock, shutdown_timeout):
        self.clock = clock
        self.shutdown_timeout = shutdown_timeout
        self.state = RUNNING
        #: When the whole stop must end (None while RUNNING).
        self.deadline = None
        #: When the senders' time to close their connections ends.
        self.inputs_until = None
        #: Whether a second request cut the stop short: nothing more is
        #: delivered, nothing waited for.
        self.aborted = False

    @property
    def stopping(self):
        """Whether a stop has begun."""
        return self.state is not RUNNING

    @property
    def done(self):
        """Whether the loop must end."""
        return self.state is DONE

    def begin(self):
        """RUNNING -> CLOSING_INPUTS; returns whether it was RUNNING."""
        if self.state is not RUNNING:
            return False
        now = self.clock()
        self.state = CLOSING_INPUTS
        self.deadline = now + self.shutdown_timeout
        self.inputs_until = min(self.deadline, now + STOP_CLOSE_WAIT)
        return True

    def inputs_closed(self):
        """CLOSING_INPUTS -> DRAINING."""
        if self.state is CLOSING_INPUTS:
            self.state = DRAINING

    def finish(self):
        """-> DONE: nothing left to deliver, or no time left for it."""
        self.state = DONE

    def abort(self):
        """-> DONE at once (a second stop request)."""
        self.aborted = True
        self.state = DONE

    def past_deadline(self):
        """Whether the shutdown time has run out."""
        return self.deadline is not None and self.clock() >= self.deadline

    def remaining(self):
        """Seconds left of the shutdown time (0 without a stop)."""
        if self.deadline is None:
            return 0.0
        return max(0.0, self.deadline - self.clock())
