"""Fixtures shared by the whole suite: real sockets, the real daemon and
real Redis servers."""

import os
import pwd
import secrets
import shutil
import subprocess
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
    # A socket a test dropped without closing is closed by its garbage
    # collection with the default linger, infinite: term would wait for ever
    # on what it still held for a daemon that is gone. Linger 0 for all.
    context.setsockopt(zmq.LINGER, 0)
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


@pytest.fixture(scope='module')
def system_user():
    """A throwaway system user: (name, uid, gid); 'nobody' without useradd.

    Module-scoped so that it is deleted only after every receiver running
    as it has been stopped (userdel refuses a user that owns a process).
    """
    if os.geteuid() != 0:
        pytest.skip('needs root to create a user')
    useradd = shutil.which('useradd')
    name = 'zrtest' + secrets.token_hex(3)
    created = False
    if useradd is not None:
        result = subprocess.run(
            [useradd, '--system', '--no-create-home', '--shell',
             '/usr/sbin/nologin', name], capture_output=True, text=True)
        created = result.returncode == 0
    if not created:
        name = 'nobody'
    entry = pwd.getpwnam(name)
    yield entry.pw_name, entry.pw_uid, entry.pw_gid
    if created:
        subprocess.run([shutil.which('userdel') or 'userdel', name],
                       capture_output=True)


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
