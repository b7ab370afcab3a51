"""RateLimitedLog: one warning per key per interval, the rest counted.

The clock is injected (a plain variable the test moves forward) and the
logger is a real :class:`logging.Logger` whose handler keeps the formatted
lines, so every assertion is on the text an operator would read.
"""

import logging

import pytest

from zmq_receiver import ratelimit

INTERVAL = 10.0


class Clock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Lines(logging.Handler):
    """Keeps (level, formatted message) of every record."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append((record.levelname, record.getMessage()))

    def texts(self):
        return [text for _, text in self.lines]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def lines():
    return Lines()


@pytest.fixture
def log(clock, lines):
    # Not from logging.getLogger: nothing global, nothing propagated.
    logger = logging.Logger('test-ratelimit', logging.DEBUG)
    logger.propagate = False
    logger.addHandler(lines)
    return ratelimit.RateLimitedLog(logger, INTERVAL, clock=clock)


def test_first_warning_is_logged_at_once(log, lines):
    log.warning('bad', 'Rejected %s from %s', 'topic', 'peer')
    assert lines.lines == [('WARNING', 'Rejected topic from peer')]


def test_repeats_within_the_interval_are_suppressed(log, lines, clock):
    log.warning('bad', 'Rejected %d', 1)
    for i in range(2, 6):
        clock.advance(1.0)
        log.warning('bad', 'Rejected %d', i)
    assert lines.texts() == ['Rejected 1']


def test_next_warning_after_the_interval_carries_the_count(log, lines,
                                                           clock):
    log.warning('bad', 'Rejected %d', 1)
    clock.advance(2.0)
    log.warning('bad', 'Rejected %d', 2)
    clock.advance(3.0)
    log.warning('bad', 'Rejected %d', 3)
    clock.advance(7.0)  # 12 s after the first line
    log.warning('bad', 'Rejected %d', 4)
    assert lines.texts() == [
        'Rejected 1',
        'Rejected 4 (and 2 more like it in the last 12 s)',
    ]


def test_the_count_starts_again_after_it_is_reported(log, lines, clock):
    log.warning('bad', 'x')
    log.warning('bad', 'x')
    clock.advance(INTERVAL)
    log.warning('bad', 'x')
    clock.advance(INTERVAL)
    # Nothing was suppressed since the last line: no count this time.
    log.warning('bad', 'x')
    assert lines.texts() == [
        'x', 'x (and 1 more like it in the last 10 s)', 'x']


def test_the_interval_ends_exactly_after_interval_seconds(log, lines, clock):
    log.warning('bad', 'x')
    clock.advance(INTERVAL - 0.001)
    log.warning('bad', 'x')
    assert len(lines.lines) == 1
    clock.advance(0.001)
    log.warning('bad', 'x')
    assert len(lines.lines) == 2


def test_keys_are_limited_independently(log, lines, clock):
    log.warning('short', 'short message')
    log.warning('empty', 'empty topic')
    log.warning('short', 'short message')
    log.warning('empty', 'empty topic')
    log.warning('empty', 'empty topic')
    clock.advance(INTERVAL)
    log.warning('short', 'short message')
    log.warning('empty', 'empty topic')
    assert lines.texts() == [
        'short message',
        'empty topic',
        'short message (and 1 more like it in the last 10 s)',
        'empty topic (and 2 more like it in the last 10 s)',
    ]


def test_flush_reports_pending_suppressed_counts(log, lines, clock):
    log.warning('bad', 'Rejected topic %r', 'a')
    clock.advance(1.0)
    log.warning('bad', 'Rejected topic %r', 'b')
    log.warning('bad', 'Rejected topic %r', 'c')
    clock.advance(INTERVAL)
    log.flush()
    # The last suppressed text stands for them all, with their number.
    assert lines.texts() == [
        "Rejected topic 'a'",
        "Rejected topic 'c' (2 like it in the last 11 s)",
    ]


def test_flush_waits_for_the_interval_to_end(log, lines, clock):
    log.warning('bad', 'x')
    log.warning('bad', 'x')
    clock.advance(INTERVAL / 2)
    log.flush()
    assert lines.texts() == ['x']
    clock.advance(INTERVAL / 2)
    log.flush()
    assert lines.texts() == ['x', 'x (1 like it in the last 10 s)']


def test_flush_reports_each_count_once(log, lines, clock):
    log.warning('bad', 'x')
    log.warning('bad', 'x')
    clock.advance(INTERVAL)
    log.flush()
    clock.advance(INTERVAL)
    log.flush()
    # The flushed line counts as the key's last line: a new warning just
    # after it waits its turn, and nothing is counted twice.
    log.warning('bad', 'x')
    assert lines.texts() == ['x', 'x (1 like it in the last 10 s)', 'x']


def test_flush_with_nothing_suppressed_logs_nothing(log, lines, clock):
    log.flush()
    log.warning('bad', 'x')
    clock.advance(INTERVAL * 5)
    log.flush()
    assert lines.texts() == ['x']


def test_flush_covers_every_key(log, lines, clock):
    for key in ('a', 'b', 'c'):
        log.warning(key, 'warning %s', key)
        log.warning(key, 'warning %s', key)
    log.warning('quiet', 'only once')
    clock.advance(INTERVAL)
    log.flush()
    assert sorted(lines.texts()[4:]) == [
        'warning a (1 like it in the last 10 s)',
        'warning b (1 like it in the last 10 s)',
        'warning c (1 like it in the last 10 s)',
    ]


def test_suppression_survives_a_flush_inside_the_interval(log, lines,
                                                          clock):
    # A flush before the interval ends must not lose the count.
    log.warning('bad', 'x')
    log.warning('bad', 'x')
    clock.advance(1.0)
    log.flush()
    log.warning('bad', 'x')
    clock.advance(INTERVAL)
    log.warning('bad', 'x')
    assert lines.texts() == ['x', 'x (and 2 more like it in the last 11 s)']


def test_works_with_the_default_clock(lines):
    # The receiver builds it without a clock: the real one must do.
    logger = logging.Logger('test-ratelimit-default')
    logger.addHandler(lines)
    log = ratelimit.RateLimitedLog(logger, 3600.0)
    log.warning('bad', 'x')
    log.warning('bad', 'x')
    log.flush()
    assert lines.texts() == ['x']
