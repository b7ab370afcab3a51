"""Outlets.check_files: socket files that vanish under a running receiver.

The daemon-level cases are in tests/functional/test_faults.py; here the
branch that a process cannot reach on demand: the directory comes back,
but another receiver locked it first.
"""

import logging
import os
import shutil

import pytest

from zmq_receiver import errors
from zmq_receiver import metrics
from zmq_receiver import outlets
from zmq_receiver import ratelimit
from zmq_receiver import routing


class Loop:
    def register(self, sock, events, handler):
        pass

    def modify(self, sock, events):
        pass

    def unregister(self, sock):
        pass


@pytest.fixture
def made(short_dir, ctx):
    ipc_dir = os.path.join(short_dir, 'ipc')
    os.mkdir(ipc_dir)
    limits = outlets.Limits(10, 0, 10, 300, 5)
    log = logging.getLogger('test_outlet_files')
    made = outlets.Outlets(ctx, Loop(), ipc_dir, limits, metrics.Counters(),
                           ratelimit.RateLimitedLog(log, 10))
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

    made.reclaim = taken
    shutil.rmtree(made.ipc_dir)
    made.check_files()
    assert made.dir_missing
    os.mkdir(made.ipc_dir)
    made.check_files()
    # Its files are the other receiver's: none is bound over them.
    assert made.dir_missing
    assert not os.path.exists(outlet.path)
    assert 'cannot lock it again' in caplog.text
    made.reclaim = lambda: None
    made.check_files()
    assert not made.dir_missing
    assert os.path.exists(outlet.path)


def test_failed_outlet_leaves_no_socket_open(made, ctx):
    shutil.rmtree(made.ipc_dir)
    assert made.get(routing.route(b'b.host1', 100)) is None
    assert made.counters.rejected == {'ipc_dir_missing': 1}
    # Before the fix the PUSH and its monitor stayed open (ZMQError is no
    # OSError) and the context never terminated.
    assert [s for s in ctx._sockets if not s.closed] == []
