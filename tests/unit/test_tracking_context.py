"""The ``ctx`` fixture's context: a socket left open is found and named.

The fixture itself fails a test with what close_leaked() returns; here the
context is used directly, so that a leak can be made on purpose.
"""

import inspect
import types

import zmq

from tests import support


def test_a_socket_left_open_is_named_with_where_it_was_made():
    context = support.TrackingContext()
    kept = context.socket(zmq.PULL)
    kept.bind('inproc://left-open')
    dropped_line = inspect.currentframe().f_lineno + 1
    context.socket(zmq.PUSH)  # dropped at once: still found
    closed = context.socket(zmq.PUB)
    closed.close()
    leaked = context.close_leaked()
    assert len(leaked) == 2, leaked
    assert leaked[0].startswith('PULL socket on inproc://left-open made at '
                                'tests/unit/test_tracking_context.py:')
    assert leaked[1] == ('PUSH socket made at tests/unit/'
                         'test_tracking_context.py:%d' % dropped_line)
    # Closed now, linger 0: the context ends at once.
    assert kept.closed
    assert context.term_within(support.TIMEOUT)


def test_a_socket_made_through_a_helper_names_the_test_and_the_helper():
    context = support.TrackingContext()
    # sender() needs only the daemon's endpoint; nothing listens there.
    support.sender(context, types.SimpleNamespace(
        endpoint='tcp://127.0.0.1:9'))
    (leak,) = context.close_leaked()
    assert leak.startswith('PUSH socket on tcp://127.0.0.1:9 made at '
                           'tests/unit/test_tracking_context.py:')
    assert leak.endswith('(through sender)')
    assert context.term_within(support.TIMEOUT)


def test_every_socket_closed_leaves_nothing_to_report(ctx):
    with ctx.socket(zmq.PAIR) as sock:
        sock.bind('inproc://closed-by-with')
    assert ctx.close_leaked() == []
