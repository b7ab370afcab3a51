"""Fixtures shared by the whole suite: real sockets, the real daemon and
real Redis servers."""

import shutil
import tempfile

import pytest
import zmq

from tests import redis_server
from tests import support
from zmq_receiver import wire


def pytest_configure(config):
    # As the daemon does at start: in-process tests (test_wire) get the
    # compiled functions, when they were built.
    wire.use_compiled()


@pytest.fixture
def short_dir():
    """A fresh directory with a short path (unix socket paths are short)."""
    path = tempfile.mkdtemp(prefix='zr', dir='/tmp')
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ctx():
    """A ZeroMQ context whose sockets are all closed, linger 0, at the end."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def daemons():
    """Start receiver processes; every one is stopped at the end."""
    started = []

    def start(directory, options=None, **kwargs):
        daemon = support.Daemon(directory, options, **kwargs)
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def receiver(daemons, short_dir):
    """One running receiver on loopback, with its IPC directory."""
    return daemons(short_dir)


def _redis(password=None):
    directory = redis_server.temp_dir()
    process = redis_server.start_server(directory, password=password)
    yield process
    process.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_plain():
    """A running ``redis-server`` that wants no password."""
    yield from _redis()


@pytest.fixture
def redis_locked():
    """A running ``redis-server`` that wants redis_server.PASSWORD."""
    yield from _redis(redis_server.PASSWORD)
