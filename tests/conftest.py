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


#: Lines for the end of the run's output (the ``notes`` fixture).
NOTES = pytest.StashKey[list]()


def pytest_configure(config):
    # As the daemon does at start: in-process tests (test_wire) get the
    # compiled functions, when they were built.
    wire.use_compiled()
    config.stash[NOTES] = []


@pytest.fixture(scope='session')
def notes(request):
    """A list: each line appended is printed in a "notes" section at the
    end of the run, whether the tests passed or not.

    For numbers a run must always show (the real-systemd test's timings):
    CI runs plain ``pytest`` (``-ra``), which shows nothing a passing test
    prints, and output printed past the capture lands between the progress
    dots, where nobody looks.
    """
    return request.config.stash[NOTES]


FUNCTIONAL = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'functional')


def pytest_collection_modifyitems(config, items):
    # By place, not by hand: a new functional test cannot forget the
    # marker that keeps it out of ./dev check.
    for item in items:
        if str(item.path).startswith(FUNCTIONAL + os.sep):
            item.add_marker(pytest.mark.functional)


@pytest.fixture
def short_dir():
    """A fresh directory with a short path (unix socket paths are short)."""
    path = tempfile.mkdtemp(prefix='zr', dir='/tmp')
    yield path
    shutil.rmtree(path, ignore_errors=True)


#: Where the tests' measured tables wait for the end of the run.
_MEASURED = pytest.StashKey()


@pytest.fixture
def measured(request):
    """``measured(text)``: show *text* (a table of measured numbers) in the
    terminal summary at the end of the run, under the test's id.

    CI runs plain ``pytest`` (``-ra``), which shows a passing test's output
    to nobody: a table printed by a test that passed would be lost, and the
    numbers matter most then.
    """
    shown = request.config.stash.setdefault(_MEASURED, [])

    def show(text):
        shown.append((request.node.nodeid, text))

    return show


def pytest_terminal_summary(terminalreporter, config):
    # What the ``notes`` and ``measured`` fixtures collected.
    lines = config.stash.get(NOTES, [])
    if lines:
        terminalreporter.write_sep('=', 'notes')
        for line in lines:
            terminalreporter.write_line(line)
    shown = config.stash.get(_MEASURED, [])
    if shown:
        terminalreporter.section('measured')
        for nodeid, text in shown:
            terminalreporter.write_line(nodeid)
            terminalreporter.write_line(text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Each phase's report on the item, for fixtures that must know in their
    # teardown whether the test itself failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, 'report_' + report.when, report)


@pytest.fixture
def ctx(request):
    """A ZeroMQ context that fails its test when the test leaves a socket
    of it open.

    As pyzmq's own fixtures do: every socket made through it is tracked
    (strongly, so that one the test dropped is still seen rather than
    closed by garbage collection), and after the test any still open is
    closed with linger 0 and named in the failure. The context is then
    terminated with a time limit, so that a leak fails instead of hanging.
    """
    context = support.TrackingContext()
    yield context
    leaked = context.close_leaked()
    terminated = context.term_within(support.TIMEOUT)
    # A test that failed halfway left its sockets open for that reason:
    # its own failure says more than a list of them.
    call = getattr(request.node, 'report_call', None)
    if leaked and call is not None and call.passed:
        pytest.fail('the test left %d socket(s) open:\n  %s' % (
            len(leaked), '\n  '.join(leaked)), pytrace=False)
    if not terminated:
        pytest.fail('the context did not terminate within %.0f s'
                    % support.TIMEOUT, pytrace=False)


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
