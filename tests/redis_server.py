"""Real Redis servers and Sentinels for the tests, never a fake.

Each one is a ``redis-server`` (or ``redis-sentinel``) process on a free
loopback port, with its config and files in a directory of its own. Every
wait is on an event (a log line, an answer) with a timeout.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time

import redis

from tests.output import ProcessOutput
# free_port is also used by the tests as redis_server.free_port.
from tests.support import clean_env, free_port

#: Seconds any single wait may take before the test fails.
TIMEOUT = 10.0
#: The password of the servers that want one (the redis_locked fixture).
PASSWORD = 'pa55-w0rd'
#: How often a condition on a server's state is asked again.
POLL = 0.02

REDIS_SERVER = shutil.which('redis-server') or '/usr/bin/redis-server'
REDIS_SENTINEL = shutil.which('redis-sentinel') or '/usr/bin/redis-sentinel'


def wait_until(predicate, timeout=TIMEOUT, what='a condition'):
    """Ask *predicate* until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
        except redis.RedisError as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('%s did not happen within %.0f s%s' % (
                what, timeout, ' (last error: %s)' % last_error
                if last_error else ''))
        # Between two questions to a server; each answer is the event.
        time.sleep(POLL)


class RedisProcess:
    """One ``redis-server`` or ``redis-sentinel`` process.

    *settings* are config lines written after the port and files; the port
    is picked when the process starts (again if it was taken meanwhile).
    """

    def __init__(self, directory, name, settings=(), sentinel=False,
                 password=None, port=None):
        self.directory = os.path.join(directory, name)
        os.makedirs(self.directory, exist_ok=True)
        self.name = name
        self.settings = list(settings)
        self.sentinel = sentinel
        self.password = password
        self.port = port
        self.proc = None
        self.output = None

    @property
    def config_file(self):
        return os.path.join(self.directory, 'redis.conf')

    def _write_config(self):
        lines = [
            'port %d' % self.port,
            'bind 127.0.0.1',
            'dir %s' % self.directory,
            'daemonize no',
            'logfile ""',
            'loglevel notice',
        ]
        if not self.sentinel:
            lines += ['save ""', 'appendonly no']
        if self.password and not self.sentinel:
            lines.append('requirepass %s' % self.password)
        lines += self.settings
        with open(self.config_file, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def start(self, attempts=5):
        """Start it and wait until it accepts connections."""
        fixed = self.port is not None
        for _ in range(attempts):
            if not fixed:
                self.port = free_port()
            self._write_config()
            self.proc = subprocess.Popen(
                [REDIS_SENTINEL if self.sentinel else REDIS_SERVER,
                 self.config_file],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True, cwd=self.directory,
                env=clean_env())
            self.output = ProcessOutput(self.proc)
            try:
                self.wait_for(r'\+monitor master' if self.sentinel
                              else r'Ready to accept connections')
                return self
            except ProcessLookupError:
                if fixed or not re.search('(?i)address already in use',
                                          self.log()):
                    raise AssertionError('%s did not start:\n%s' % (
                        self.name, self.log()))
            except BaseException:
                self.kill()
                raise
        raise AssertionError('%s found no free port' % self.name)

    def wait_for(self, pattern, timeout=TIMEOUT):
        """The match of the first new log line matching *pattern*; raises
        ProcessLookupError when the process ends first."""
        try:
            return self.output.wait_for(pattern, timeout)
        except TimeoutError:
            raise AssertionError('%s logged no line matching %r within '
                                 '%.0f s:\n%s' % (self.name, pattern,
                                                  timeout, self.log())
                                 ) from None
        except EOFError:
            self.proc.wait()
            raise ProcessLookupError(self.name) from None

    def log(self):
        """What the process logged so far (since it last started)."""
        return self.output.log() if self.output else ''

    def client(self, **kwargs):
        """A redis-py client of this process (str answers)."""
        kwargs.setdefault('password', self.password)
        kwargs.setdefault('socket_timeout', TIMEOUT)
        kwargs.setdefault('decode_responses', True)
        return redis.Redis('127.0.0.1', self.port, **kwargs)

    @property
    def address(self):
        return '127.0.0.1:%d' % self.port

    def kill(self):
        """SIGKILL: a crash, as far as its peers can tell."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)

    def stop(self):
        """SIGTERM, or SIGKILL when it does not end in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()


def start_server(directory, name='redis', password=None, settings=()):
    """A running ``redis-server``."""
    return RedisProcess(directory, name, settings, password=password).start()


class SentinelCluster:
    """A master, one replica and three Sentinels watching them as *group*.

    The Sentinels fail over within about a second of losing the master
    (``down-after-milliseconds`` 500). They are told about the replica
    and about each other in their config files, so nothing has to be
    discovered before a failover can happen.
    """

    def __init__(self, directory, group='oslo-messaging-zeromq',
                 password=None):
        self.directory = directory
        self.group = group
        self.password = password
        self.master = None
        self.replica = None
        self.sentinels = []

    def start(self):
        # Redis 7 waits 5 s for more replicas before a diskless full sync.
        auth = ['repl-diskless-sync-delay 0']
        if self.password:
            auth.append('masterauth %s' % self.password)
        # Each process is known before it starts, so that stop() ends it
        # even when it never became ready.
        self.master = RedisProcess(self.directory, 'master', auth,
                                   password=self.password)
        self.master.start()
        self.replica = RedisProcess(
            self.directory, 'replica',
            auth + ['replicaof 127.0.0.1 %d' % self.master.port],
            password=self.password)
        self.replica.start()
        replica = self.replica.client()
        wait_until(lambda: replica.info('replication').get(
            'master_link_status') == 'up', what='replication')
        ports = [free_port() for _ in range(3)]
        ids = ['%040x' % (i + 1) for i in range(3)]
        for i, port in enumerate(ports):
            settings = [
                'sentinel myid %s' % ids[i],
                'sentinel monitor %s 127.0.0.1 %d 2' % (self.group,
                                                        self.master.port),
                'sentinel down-after-milliseconds %s 500' % self.group,
                'sentinel failover-timeout %s 3000' % self.group,
                'sentinel parallel-syncs %s 1' % self.group,
                'sentinel known-replica %s 127.0.0.1 %d' % (
                    self.group, self.replica.port),
            ]
            if self.password:
                settings.append('sentinel auth-pass %s %s' % (
                    self.group, self.password))
            for j, other in enumerate(ports):
                if j != i:
                    settings.append('sentinel known-sentinel %s 127.0.0.1 '
                                    '%d %s' % (self.group, other, ids[j]))
            self.sentinels.append(RedisProcess(
                self.directory, 'sentinel%d' % i, settings, sentinel=True,
                port=port))
            self.sentinels[-1].start()
        for sentinel in self.sentinels:
            client = sentinel.client(password=None)
            wait_until(lambda: self._sees_everyone(client),
                       what='%s seeing the replica and the other sentinels'
                       % sentinel.name)
        return self

    def _sees_everyone(self, client):
        state = client.sentinel_master(self.group)
        others = client.sentinel_sentinels(self.group)
        return (state['num-slaves'] == 1 and state['is_master'] and
                not state['is_sdown'] and len(others) == 2 and
                not any(other['is_sdown'] for other in others))

    @property
    def sentinel_hosts(self):
        """The Sentinels as ``[(host, port)]``."""
        return [('127.0.0.1', s.port) for s in self.sentinels]

    def master_port(self, sentinel=0):
        """The master's port according to one Sentinel."""
        client = self.sentinels[sentinel].client(password=None)
        host, port = client.sentinel_get_master_addr_by_name(self.group)
        return int(port)

    def stop(self):
        for process in self.sentinels + [self.replica, self.master]:
            if process is not None:
                process.stop()


def temp_dir():
    """A fresh directory for servers' files (short: socket paths)."""
    return tempfile.mkdtemp(prefix='zrredis', dir='/tmp')
