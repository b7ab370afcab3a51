"""The read-pacing rule (zmq_receiver.reading) and the stop's states
(zmq_receiver.stopping): pure, tested in process, with a fake clock."""

import pytest

from zmq_receiver import reading
from zmq_receiver import stopping
from zmq_receiver.reading import should_pause, may_resume

MARK = reading.READ_AHEAD_BYTES


@pytest.mark.parametrize('received, enqueued, buffered, stopping_, pause', [
    # Every message of the batch queued, the backlogs past the mark: pause.
    (256, 256, MARK + 1, False, True),
    (1, 1, MARK + 1, False, True),
    # At the mark is not past it.
    (256, 256, MARK, False, False),
    # One message sent on (a topic with a free consumer): read on.
    (256, 255, MARK * 4, False, False),
    # Nothing read: nothing to pace.
    (0, 0, MARK * 4, False, False),
    # A stop reads everything.
    (256, 256, MARK * 4, True, False),
])
def test_should_pause(received, enqueued, buffered, stopping_, pause):
    assert should_pause(received, enqueued, buffered, stopping_) is pause


def test_should_pause_takes_its_mark():
    assert should_pause(3, 3, 11, False, limit=10)
    assert not should_pause(3, 3, 10, False, limit=10)


@pytest.mark.parametrize('buffered, now, stopping_, resume', [
    # Still past the mark and paused: wait.
    (MARK + 1, 5.0, False, False),
    # The backlogs went below the mark.
    (MARK, 5.0, False, True),
    # The pause (until 10.0) is over.
    (MARK + 1, 10.0, False, True),
    # A stop began.
    (MARK + 1, 5.0, True, True),
])
def test_may_resume(buffered, now, stopping_, resume):
    assert may_resume(buffered, now, 10.0, stopping_) is resume


class FakeClock:
    def __init__(self, now=50.0):
        self.now = now

    def __call__(self):
        return self.now


def test_stop_waits_for_the_senders_within_the_shutdown_time():
    clock = FakeClock()
    stop = stopping.Stop(clock, shutdown_timeout=10.0)
    assert stop.state is stopping.RUNNING and not stop.stopping
    assert stop.remaining() == 0.0
    assert stop.begin()
    assert stop.state is stopping.CLOSING_INPUTS and stop.stopping
    assert stop.inputs_until == 50.0 + stopping.STOP_CLOSE_WAIT
    assert stop.deadline == 60.0
    # A second begin changes nothing.
    clock.now = 52.0
    assert not stop.begin()
    assert stop.deadline == 60.0
    stop.inputs_closed()
    assert stop.state is stopping.DRAINING
    assert stop.remaining() == 8.0
    assert not stop.past_deadline()
    clock.now = 60.0
    assert stop.past_deadline()
    stop.finish()
    assert stop.done and not stop.aborted


def test_stop_with_a_short_shutdown_time_closes_the_inputs_at_its_end():
    stop = stopping.Stop(FakeClock(), shutdown_timeout=0.25)
    stop.begin()
    assert stop.inputs_until == stop.deadline == 50.25


def test_a_second_request_aborts():
    stop = stopping.Stop(FakeClock(), shutdown_timeout=10.0)
    stop.begin()
    stop.abort()
    assert stop.done and stop.aborted
    # inputs_closed after the end does not bring it back.
    stop.inputs_closed()
    assert stop.state is stopping.DONE
