"""Test helpers: the receiver as a real process, and waiting on sockets.

Nothing here sleeps to synchronise: every wait is on an event (a line of the
daemon's log, a socket becoming readable, a process ending) with a timeout,
and a timeout fails the test.
"""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import zmq

#: Seconds any single wait may take before the test fails.
TIMEOUT = 10.0

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    127.0.0.1 on a port the kernel picks.
    """

    def __init__(self, directory, options=None, args=(), env=None,
                 config=True):
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
        self.env = dict(os.environ, **(env or {}))
        self.env['PYTHONPATH'] = REPO
        self.proc = None
        self.endpoint = None
        self.lines = []
        self._queue = queue.Queue()

    def start(self, wait_ready=True):
        """Start the process; by default wait until it listens."""
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'zmq_receiver'] + self.args,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=self.env, text=True,
            cwd=self.directory)
        threading.Thread(target=self._read, daemon=True).start()
        if wait_ready:
            match = self.wait_for(r'listening on (tcp://\S+),')
            self.endpoint = match.group(1)
        return self

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip('\n'))
        self._queue.put(None)

    def wait_for(self, pattern, timeout=TIMEOUT):
        """The match of the first new log line matching *pattern*."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError('no log line matching %r within %.0f s;'
                                     ' log:\n%s' % (pattern, timeout,
                                                    self.log()))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise AssertionError('receiver ended (status %s) before a '
                                     'line matching %r; log:\n%s' % (
                                         self.proc.wait(), pattern,
                                         self.log()))
            self.lines.append(line)
            match = regex.search(line)
            if match:
                return match

    def log(self):
        """Everything the process printed so far."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)
                break
            self.lines.append(line)
        return '\n'.join(self.lines)

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
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect('ipc://%s/.zmq-receiver-control' % self.ipc_dir)
            sock.send(b'stats')
            if not sock.poll(timeout * 1000):
                raise AssertionError('no answer from the control socket')
            return json.loads(sock.recv())
        finally:
            sock.close()

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


def run_receiver(args, env=None, cwd=None, timeout=TIMEOUT):
    """Run the receiver to completion: (status, output)."""
    proc = subprocess.run(
        [sys.executable, '-m', 'zmq_receiver'] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, timeout=timeout, cwd=cwd,
        env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))
    return proc.returncode, proc.stdout


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


def cast(topic, body=b'["{}", {"method": "m", "args": {}}]', msg_id=b'0'):
    """Frames of a legacy cast to *topic* (str or bytes)."""
    if isinstance(topic, str):
        topic = topic.encode()
    return [msg_id, topic, b'cast', body]
