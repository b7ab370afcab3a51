"""Outlets in one process: the branches a daemon cannot reach on demand.

Outlets.check_files, socket files that vanish under a running receiver
(the daemon-level cases are in tests/functional/test_faults.py): the
directory comes back, but another receiver locked it first. And the send
path: a socket error other than "full" is the outlet's event, counted,
never the loop's exception.
"""

import logging
import os
import shutil
import threading
import time

import pytest
import zmq

from zmq_receiver import errors
from zmq_receiver import metrics
from zmq_receiver import outlets
from zmq_receiver import ratelimit
from zmq_receiver import routing
from tests import support
from tests.unit.test_ratelimit import Clock


class Loop:
    def register(self, sock, events, handler, urgent=True):
        pass

    def modify(self, sock, events):
        pass

    def unregister(self, sock):
        pass


def make_outlets(ctx, short_dir, limits, name, clock=time.monotonic,
                 loop=None):
    """Outlets over a new IPC directory in *short_dir*, logging as *name*
    (the unit tests' common setup; close with close_all())."""
    ipc_dir = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc_dir)
    warn = ratelimit.RateLimitedLog(logging.getLogger(name), 10, clock)
    return outlets.Outlets(ctx, loop if loop is not None else Loop(),
                           ipc_dir, limits, metrics.Counters(), warn, clock)


@pytest.fixture
def made(short_dir, ctx):
    made = make_outlets(ctx, short_dir, outlets.Limits(10, 0, 10, 300, 5),
                        'test_outlet_files')
    yield made
    made.close_all()


def test_vanished_file_is_bound_again(made):
    outlet = made.get(routing.route(b'a.host1', 100))
    os.unlink(outlet.path)
    made.check_files()
    assert os.path.exists(outlet.path)


def test_directory_taken_by_another_receiver_is_left_alone(made, caplog):
    outlet = made.get(routing.route(b'a.host1', 100))

    def taken():
        raise errors.AlreadyRunning('Another receiver (pid 1) already '
                                    'serves it')

    made.watch.reclaim = taken
    shutil.rmtree(made.ipc_dir)
    made.check_files()
    assert made.watch.dir_missing
    os.mkdir(made.ipc_dir)
    made.check_files()
    # Its files are the other receiver's: none is bound over them.
    assert made.watch.dir_missing
    assert not os.path.exists(outlet.path)
    assert 'cannot lock it again' in caplog.text
    made.watch.reclaim = lambda: None
    made.check_files()
    assert not made.watch.dir_missing
    assert os.path.exists(outlet.path)


def test_failed_outlet_leaves_no_socket_open(made, ctx):
    shutil.rmtree(made.ipc_dir)
    assert made.get(routing.route(b'b.host1', 100)) is None
    assert made.counters.rejected == {'ipc_dir_missing': 1}
    # Before the fix the PUSH and its monitor stayed open (ZMQError is no
    # OSError) and the context never terminated.
    assert [s for s in ctx._sockets if not s.closed] == []


def test_a_send_error_drops_and_counts_the_message(short_dir, caplog):
    ipc_dir = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc_dir)
    context = zmq.Context()
    counters = metrics.Counters()
    clock = Clock()
    made = outlets.Outlets(context, Loop(), ipc_dir,
                           outlets.Limits(10, 0, 10, 300, 5), counters,
                           ratelimit.RateLimitedLog(
                               logging.getLogger('test_outlet_files'), 10,
                               clock), clock)
    outlet = made.get(routing.route(b'a.host1', 100))
    # Settled (see test_outlet_joining): it sends at once from now on.
    clock.now = outlet.settle_until
    made.run_due()
    # Every send fails with ETERM once the context is being terminated.
    term = threading.Thread(target=context.term)
    term.start()
    try:
        with pytest.raises(zmq.ContextTerminated):
            outlet.socket.poll(10000, zmq.POLLOUT)
        made.deliver(outlet, [b'0', b'a.host1', b'cast', b'{}'], 16)
    finally:
        made.close_all()
        term.join(10)
    assert not term.is_alive()
    assert counters.dropped == {metrics.SEND_FAILED: 1}
    assert outlet.dropped == {metrics.SEND_FAILED: 1}
    assert 'refused a message (Context was terminated' in caplog.text


def test_a_file_removed_again_and_again_costs_no_descriptors(made):
    outlet = made.get(routing.route(b'a.host1', 100))
    os.unlink(outlet.path)
    made.check_files()
    before = len(os.listdir('/proc/self/fd'))
    for _ in range(20):
        os.unlink(outlet.path)
        made.check_files()
        assert os.path.exists(outlet.path)
    # One listener kept for the consumers of the copy before (their
    # connections stay); every older one unbound, and counted. libzmq's
    # I/O thread closes an unbound listener's descriptor after unbind()
    # returns, so the count may lag behind for a moment.
    support.wait_until(
        lambda: len(os.listdir('/proc/self/fd')) <= before,
        'the unbound listeners\' descriptors closed')
    assert made.counters.stale_listeners_closed == 20
    assert len(made.watch.stale[outlet.socket]) == outlets.STALE_LISTENERS
