"""Test helpers: the receiver as a real process, and waiting on sockets.

Nothing here sleeps to synchronise: every wait is on an event (a line of the
daemon's log, a socket becoming readable, a process ending) with a timeout,
and a timeout fails the test.
"""

import contextlib
import grp
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import pytest
import zmq

from tests.output import ProcessOutput
from zmq_receiver import wire

#: Seconds any single wait may take before the test fails.
TIMEOUT = 10.0

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The caller's variables a process started by a test inherits; anything
#: else (NOTIFY_SOCKET from a notify service, OS_* from a shell) would change
#: what the process does.
INHERITED = ('PATH', 'HOME', 'LANG', 'LC_ALL', 'TMPDIR')
#: Variables that make the receiver behave as under systemd or socket
#: activation: a process has them only when its test set them.
SERVICE_MANAGER = ('NOTIFY_SOCKET', 'JOURNAL_STREAM', 'LISTEN_FDS',
                   'LISTEN_PID', 'LISTEN_FDNAMES', 'WATCHDOG_USEC',
                   'WATCHDOG_PID', 'INVOCATION_ID')


def clean_env(extra=None, **more):
    """The environment for a process a test starts: :data:`INHERITED` from
    the caller, PYTHONPATH to this checkout, then *extra* and *more* (what
    the test itself sets). Never the whole of os.environ."""
    env = {name: os.environ[name] for name in INHERITED
           if name in os.environ}
    env['PYTHONPATH'] = REPO
    env.update(extra or {})
    env.update(more)
    return env


def process_env(pid):
    """The environment process *pid* was started with ({} once it ended)."""
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            raw = f.read()
    except OSError:
        return {}
    pairs = (item.partition(b'=') for item in raw.split(b'\0') if item)
    return {k.decode(): v.decode('utf-8', 'replace') for k, _, v in pairs}


def check_not_inherited(pid, asked):
    """Fail when process *pid* has a :data:`SERVICE_MANAGER` variable that
    its test did not put in *asked*: it came from the caller."""
    leaked = sorted(name for name in process_env(pid)
                    if name in SERVICE_MANAGER and name not in asked)
    if leaked:
        raise AssertionError('process %d inherited %s from the caller\'s '
                             'environment' % (pid, ', '.join(leaked)))


def write_config(path, options):
    """Write an ini file from {section: {option: value}}."""
    with open(path, 'w') as f:
        for section, values in options.items():
            f.write('[%s]\n' % section)
            for key, value in values.items():
                f.write('%s = %s\n' % (key, value))
            f.write('\n')
    return path


class Daemon:
    """``python -m zmq_receiver`` on loopback with its IPC dir in *directory*.

    *options* ({section: {option: value}}) is merged over a config that binds
    127.0.0.1 on a port the kernel picks. With *journal*, its stdout and
    stderr are one pipe that ``JOURNAL_STREAM`` names, as systemd's stream
    to journald is.
    """

    def __init__(self, directory, options=None, args=(), env=None,
                 config=True, journal=False, nofile=None):
        self.directory = directory
        self.ipc_dir = os.path.join(directory, 'ipc')
        merged = {
            'DEFAULT': {
                'rpc_zmq_bind_address': '127.0.0.1',
                'rpc_zmq_port': 0,
                'rpc_zmq_ipc_dir': self.ipc_dir,
                'rpc_zmq_host': 'testhost',
            },
            'zmq_receiver': {},
        }
        for section, values in (options or {}).items():
            merged.setdefault(section, {}).update(values)
        self.config_file = os.path.join(directory, 'receiver.conf')
        self.args = list(args)
        if config:
            write_config(self.config_file, merged)
            self.args = ['--config-file', self.config_file] + self.args
        self.env = clean_env(env)
        self.journal = journal
        #: RLIMIT_NOFILE (soft and hard) to start the process with, or None.
        self.nofile = nofile
        self.proc = None
        self.endpoint = None
        self.output = None

    def command(self):
        """(argv, extra Popen keyword arguments) that run the receiver;
        subclasses change how it is run (as another user, say)."""
        return [sys.executable, '-m', 'zmq_receiver'] + self.args, {}

    def start(self, wait_ready=True):
        """Start the process; by default wait until it listens."""
        argv, kwargs = self.command()
        if self.nofile is not None:
            limit = self.nofile
            kwargs['preexec_fn'] = lambda: resource.setrlimit(
                resource.RLIMIT_NOFILE, (limit, limit))
        stream = None
        out = subprocess.PIPE
        if self.journal:
            read_end, out = os.pipe()
            st = os.fstat(out)
            self.env['JOURNAL_STREAM'] = '%d:%d' % (st.st_dev, st.st_ino)
            stream = os.fdopen(read_end, 'r')
        try:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, text=True,
                cwd=self.directory, **kwargs)
        finally:
            if self.journal:
                os.close(out)
        self.output = ProcessOutput(self.proc, stream)
        check_not_inherited(self.proc.pid, self.env)
        if wait_ready:
            match = self.wait_for(r'listening on (tcp://\S+),')
            self.endpoint = match.group(1)
        return self

    def wait_for(self, pattern, timeout=TIMEOUT):
        """The match of the first new log line matching *pattern*."""
        try:
            return self.output.wait_for(pattern, timeout)
        except TimeoutError:
            raise AssertionError('no log line matching %r within %.0f s;'
                                 ' log:\n%s' % (pattern, timeout,
                                                self.log())) from None
        except EOFError:
            raise AssertionError('receiver ended (status %s) before a '
                                 'line matching %r; log:\n%s' % (
                                     self.proc.wait(), pattern,
                                     self.log())) from None

    @property
    def lines(self):
        """The log lines read so far (by wait_for() and log())."""
        return self.output.lines if self.output else []

    def log(self):
        """Everything the process printed so far."""
        return self.output.log() if self.output else ''

    @property
    def port(self):
        return int(self.endpoint.rsplit(':', 1)[1])

    def outlet(self, key):
        """The ZeroMQ endpoint of outlet *key*."""
        return 'ipc://%s/zmq_topic_%s' % (self.ipc_dir, key)

    def path(self, key):
        """The socket file of outlet *key*."""
        return '%s/zmq_topic_%s' % (self.ipc_dir, key)

    def stats(self, timeout=TIMEOUT):
        """The live counters, asked over the control socket."""
        stats = control_stats(self.ipc_dir, timeout)
        if stats is None:
            raise AssertionError('no answer from the control socket')
        return stats

    def wait_stats(self, predicate, timeout=TIMEOUT):
        """Poll the counters until *predicate*(stats) holds."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError('counters never matched: %s' % stats)
            # Between two questions; the answer itself is the event.
            time.sleep(0.02)

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self, timeout=TIMEOUT):
        """SIGTERM, then the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout=TIMEOUT):
        status = self.proc.wait(timeout)
        self.log()
        return status

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class TrackingContext(zmq.Context):
    """A context that remembers every socket made through it and where.

    The ``ctx`` fixture's: pyzmq's own context holds its sockets weakly, so
    one a test dropped is closed by garbage collection and nobody hears of
    it; here it stays referenced until close_leaked() names it.
    """

    #: (socket, where it was made), in the order they were made. Declared
    #: here: pyzmq takes an unknown attribute set on a context for an option.
    made = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made = []
        # Linger 0 for every socket, so that term() never waits on messages
        # held for a peer that is gone (a daemon the test killed).
        self.setsockopt(zmq.LINGER, 0)

    def socket(self, socket_type, *args, **kwargs):
        sock = super().socket(socket_type, *args, **kwargs)
        self.made.append((sock, _caller()))
        return sock

    def close_leaked(self):
        """Close, linger 0, every socket still open: their descriptions."""
        leaked = []
        for sock, where in self.made:
            if not sock.closed:
                leaked.append('%s made at %s' % (_describe(sock), where))
                sock.close(linger=0)
        self.made = []
        return leaked

    def term_within(self, timeout):
        """Terminate the context; False when that takes over *timeout* s
        (a socket closed elsewhere with a linger still holding it)."""
        done = threading.Event()

        def term():
            self.term()
            done.set()
        threading.Thread(target=term, daemon=True,
                         name='ctx-term').start()
        return done.wait(timeout)


def _caller():
    """file:line of the test code that made a socket (the outermost frame
    in tests/: the test or fixture), and the helper it went through."""
    tests = os.path.dirname(os.path.abspath(__file__))
    where = helper = None
    # Innermost first, without this function and TrackingContext.socket.
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(frame.filename)
        if not path.startswith(tests + os.sep):
            continue
        if where is not None and helper is None:
            helper = where
        where = frame
    if where is None:
        return 'an unknown place'
    text = '%s:%d' % (os.path.relpath(where.filename, REPO), where.lineno)
    if helper is not None:
        text += ' (through %s)' % helper.name
    return text


def _describe(sock):
    kind = zmq.SocketType(sock.type).name
    try:
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except zmq.ZMQError:
        endpoint = ''
    return '%s socket%s' % (kind, ' on %s' % endpoint if endpoint
                            else '')


def close_all(*socks):
    """Close every one of *socks* (a test's sockets at its end)."""
    for sock in socks:
        sock.close()


def control_stats(ipc_dir, timeout=TIMEOUT):
    """The counters of the receiver serving *ipc_dir*, asked over its
    control socket, or None when it does not answer within *timeout* s."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect('ipc://%s/.zmq-receiver-control' % ipc_dir)
        sock.send(b'stats')
        if not sock.poll(timeout * 1000):
            return None
        return json.loads(sock.recv())
    finally:
        sock.close()


def _run(args, stderr, env, cwd, timeout):
    return subprocess.run(
        [sys.executable, '-m', 'zmq_receiver'] + list(args),
        stdout=subprocess.PIPE, stderr=stderr,
        stdin=subprocess.DEVNULL, text=True, timeout=timeout, cwd=cwd,
        env=clean_env(env))


def run_receiver(args, env=None, cwd=None, timeout=TIMEOUT):
    """Run the receiver to completion: (status, output)."""
    proc = _run(args, subprocess.STDOUT, env, cwd, timeout)
    return proc.returncode, proc.stdout


def run_split(args, env=None, cwd=None, timeout=TIMEOUT):
    """Run the receiver to completion: (status, stdout, stderr), apart.

    Apart, because what the operator reads is stderr: it must carry the one
    clear line, while the log (stdout here) may say more.
    """
    proc = _run(args, subprocess.PIPE, env, cwd, timeout)
    return proc.returncode, proc.stdout, proc.stderr


#: /etc/hosts as a stock Debian 12 writes it, with the IPv6 line before or
#: after the IPv4 one: glibc may give ::1 first either way.
DEBIAN_HOSTS = {
    'ipv6-first': '::1\tlocalhost ip6-localhost ip6-loopback\n'
                  '127.0.0.1\tlocalhost\n',
    'ipv6-last': '127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n'
                 '# The following lines are desirable for IPv6 capable hosts\n'
                 '::1     localhost ip6-localhost ip6-loopback\n'
                 'ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n',
}


#: Run in the command's own mount namespace, just before it: the addresses
#: ``localhost`` resolves to there, in order, by getaddrinfo() as libzmq's
#: connect does.
_RESOLVE_LOCALHOST = (
    'import socket; print(" ".join(a[4][0] for a in socket.getaddrinfo('
    '"localhost", None, type=socket.SOCK_STREAM)))')


def run_with_hosts(hosts, argv, env=None, cwd=None, timeout=TIMEOUT):
    """Run *argv* to completion with *hosts* (text) as its /etc/hosts:
    bound over the real one in a mount namespace of its own, which ends
    with it. Skips, saying why, where that cannot be done.

    The result (a CompletedProcess) also has ``localhost``: the addresses
    ``localhost`` resolved to in that same namespace, in order, so that a
    test can show the hosts file was in effect for *argv*.
    """
    unshare = shutil.which('unshare')
    if unshare is None or os.geteuid() != 0:
        pytest.skip('needs root and unshare (util-linux) to give a process '
                    'an /etc/hosts of its own')
    directory = tempfile.mkdtemp(prefix='zrhosts')
    path = os.path.join(directory, 'hosts')
    resolved = os.path.join(directory, 'localhost')
    with open(path, 'w') as f:
        f.write(hosts)
    mount = 'mount --bind "$0" /etc/hosts || exit 125; '
    try:
        probe = subprocess.run(
            [unshare, '--mount', 'sh', '-c', mount + 'exec "$@"', path,
             'cat', '/etc/hosts'], capture_output=True, text=True,
            timeout=timeout)
        if probe.returncode != 0 or probe.stdout != hosts:
            pytest.skip('cannot bind-mount a hosts file in a mount namespace '
                        'here: %s' % (probe.stderr.strip() or probe.stdout))
        result = subprocess.run(
            [unshare, '--mount', 'sh', '-c',
             mount + '"$1" -c "$2" > "$3" || exit 125; shift 3; exec "$@"',
             path, sys.executable, _RESOLVE_LOCALHOST, resolved] + list(argv),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, timeout=timeout, cwd=cwd,
            env=clean_env(env))
        with open(resolved) as f:
            result.localhost = f.read().split()
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def assert_debian_localhost(name, result):
    """Fail unless ``localhost`` resolved, for run_with_hosts()'s *result*
    with DEBIAN_HOSTS[*name*], as on a stock Debian: to both loopback
    addresses, and for 'ipv6-first' to ::1 first (what libzmq, which
    connects to the first address only, then tries)."""
    seen = result.localhost
    assert '::1' in seen and '127.0.0.1' in seen, (
        'localhost resolved to %s beside the command, not to ::1 and '
        '127.0.0.1: the hosts file %r was not in effect' % (seen, name))
    if name == 'ipv6-first':
        assert seen[0] == '::1', (
            'localhost resolved to %s beside the command: ::1 is not first, '
            'so the test does not show what a stock Debian does' % seen)


def recv(sock, timeout=TIMEOUT):
    """One multipart message from *sock*, or fail after *timeout*."""
    if not sock.poll(timeout * 1000):
        raise AssertionError('nothing arrived within %.1f s' % timeout)
    return sock.recv_multipart()


def nothing_arrives(sock, within):
    """True when *sock* stays empty for *within* seconds (a negative test)."""
    return not sock.poll(within * 1000)


def sender(ctx, daemon):
    """A legacy-style PUSH sender connected to *daemon*."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(daemon.endpoint)
    return sock


def pull(ctx, daemon, key, **options):
    """A PULL consumer of *daemon*'s outlet *key*; *options* are socket
    options by name, e.g. ``RCVHWM=1``."""
    return _consumer(ctx, zmq.PULL, daemon, key, options)


def sub(ctx, daemon, key, prefix=b'', **options):
    """A SUB consumer of *daemon*'s outlet *key*, subscribed to *prefix*
    (everything by default); *options* as for pull()."""
    return _consumer(ctx, zmq.SUB, daemon, key,
                     dict(options, SUBSCRIBE=prefix))


def _consumer(ctx, kind, daemon, key, options):
    sock = ctx.socket(kind)
    # Options before connect(): some (the high-water marks) only apply to
    # connections made after them.
    for option, value in options.items():
        sock.setsockopt(getattr(zmq, option), value)
    sock.connect(daemon.outlet(key))
    return sock


def assert_balanced(stats):
    """Every message read is forwarded, rejected, dropped or queued."""
    assert stats['received'] == (
        stats['forwarded'] + sum(stats['rejected'].values()) +
        sum(stats['dropped'].values()) + stats['queued']), stats


def free_port():
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def cast(topic, body=b'["{}", {"method": "m", "args": {}}]', msg_id=b'0'):
    """Frames of a legacy cast to *topic* (str or bytes)."""
    if isinstance(topic, str):
        topic = topic.encode()
    return [msg_id, topic, b'cast', body]


def queue_casts(daemon, out, topic, n):
    """Send *n* casts to *topic* (bodies b'0', b'1', ...) through *out*,
    and wait until *daemon* holds all of them queued: the frames sent.

    For a topic with no consumer yet, on a daemon with nothing else queued.
    """
    sent = [cast(topic, b'%d' % i) for i in range(n)]
    for frames in sent:
        out.send_multipart(frames)
    daemon.wait_stats(lambda s: s['queued'] == n)
    return sent


def backlog_behind_consumer(ctx, daemon, out, topic, body=b'x' * 4096):
    """A PULL consumer of *topic* (a PUSH topic) that is connected but does
    not read, and the casts sent through *out* until *daemon* holds some of
    them in the topic's backlog, behind what libzmq holds for the
    consumer: (consumer, frames sent), for a stop that has a backlog to
    deliver to a consumer that is there."""
    sent = []
    received = daemon.stats()['received']

    def send(n):
        for _ in range(n):
            sent.append(cast(topic, b'%d ' % len(sent) + body))
            out.send_multipart(sent[-1])
        return daemon.wait_stats(
            lambda s: s['received'] == received + len(sent))

    send(1)
    # The smallest buffers it may have: libzmq's own queue (about 1000
    # messages) and the kernel's fill first.
    consumer = pull(ctx, daemon, topic, RCVHWM=1, RCVBUF=4096)
    daemon.wait_stats(
        lambda s: s['topics'].get(topic, {}).get('consumers') == 1)
    for _ in range(40):
        # Forwarded too: a new outlet holds its first messages a moment
        # (delivery.SETTLE) whether a consumer could take them or not.
        stats = send(200)['topics'][topic]
        if stats['backlog'] and stats['forwarded']:
            return consumer, sent
    raise AssertionError('no backlog behind the consumer: %s'
                         % daemon.stats())


def wait_until(predicate, what, timeout=TIMEOUT):
    """Poll *predicate* until true, or fail naming *what*.

    For state that offers no event to wait on (a file appearing, a process
    that is not our child ending, /proc figures); the timeout bounds it.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('%s did not happen within %.0f s'
                                 % (what, timeout))
        time.sleep(0.02)


def rss_kib(pid):
    """The resident set size of process *pid* in KiB (VmRSS)."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS for pid %d' % pid)


def open_files(pid):
    """How many file descriptors process *pid* has open."""
    return len(os.listdir('/proc/%d/fd' % pid))


def ipv6_loopback():
    """True when this machine can bind the IPv6 loopback address ::1."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(('::1', 0))
        return True
    except OSError:
        return False


@pytest.fixture(name='daemons', params=['compiled', 'pure-python'])
def daemons_on_both_paths(request, daemons):
    """conftest's ``daemons``, once with the compiled forwarding loop
    (zmq_receiver.wire.forward) and once with the pure-Python one it falls
    back to. Import it into a test module to run that module both ways."""
    if request.param == 'compiled':
        # CI installs a compiler: a missing extension is a failure there,
        # not a silent fallback.
        assert wire.FAST, wire.FAST_PROBLEM
        return daemons

    def start(directory, options=None, env=None, **kwargs):
        env = dict(env or {}, ZMQ_RECEIVER_PURE_PYTHON='1')
        return daemons(directory, options, env=env, **kwargs)
    return start


@contextlib.contextmanager
def throwaway_group():
    """A new system group (its grp entry), removed afterwards. Root only."""
    name = 'zrg' + secrets.token_hex(3)
    _account_command('groupadd', '--system', name)
    try:
        yield grp.getgrnam(name)
    finally:
        _account_command('groupdel', name, check=False)


@contextlib.contextmanager
def throwaway_user(groups=()):
    """A new system user (its pwd entry) with its own group, also in the
    groups named *groups*, removed afterwards (after every process of it
    has ended: userdel refuses otherwise). Root only."""
    name = 'zru' + secrets.token_hex(3)
    extra = ['--groups', ','.join(groups)] if groups else []
    _account_command('useradd', '--system', '--user-group',
                     '--no-create-home', '--shell', '/usr/sbin/nologin',
                     *extra, name)
    try:
        yield pwd.getpwnam(name)
    finally:
        _account_command('userdel', name, check=False)


def _account_command(command, *args, check=True):
    path = shutil.which(command)
    if path is None:
        pytest.fail('%s is missing (the passwd package): the permission '
                    'tests need real users' % command)
    result = subprocess.run([path] + list(args), capture_output=True,
                            text=True)
    if check and result.returncode != 0:
        pytest.fail('%s %s failed: %s' % (command, ' '.join(args),
                                          result.stderr.strip()))
