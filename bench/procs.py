"""The processes of one benchmark run, and what /proc says about them.

Every process (endpoint, forwarder, receiver) speaks in lines on stdout; a
thread per process (tests.output.ProcessOutput) queues them so that the
orchestrator waits on events (a line arriving, a process ending) with a
deadline, never on a sleep.
"""

import os
import signal
import subprocess
import sys
import time

from tests.output import ProcessOutput
from tests.support import control_stats, write_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICK = os.sysconf('SC_CLK_TCK')


class BenchError(Exception):
    """A run could not be carried out (not a measurement result)."""


def parse_kv(line):
    """``word k=v k=v`` -> {k: int or str}."""
    out = {}
    for token in line.split()[1:]:
        key, _, value = token.partition('=')
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


class Proc:
    """A child process whose stdout lines are read as events."""

    def __init__(self, name, argv, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=cwd,
            env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))
        self.pid = self.proc.pid
        self.output = ProcessOutput(self.proc)

    def expect(self, pattern, deadline, watch=()):
        """The match of the next line matching *pattern*.

        Raises BenchError at *deadline* (a time.monotonic() value), or when
        this process or one in *watch* has ended first.
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError('%s: no line matching %r in time; it said:'
                                 '\n%s' % (self.name, pattern, self.tail()))
            try:
                # Short waits so that a watched process's death is noticed;
                # a line that does not match is consumed all the same.
                return self.output.wait_for(pattern, min(remaining, 0.5))
            except TimeoutError:
                for other in watch:
                    if other.proc.poll() is not None:
                        raise BenchError('%s ended (status %s) while waiting '
                                         'for %s; it said:\n%s' % (
                                             other.name, other.proc.poll(),
                                             self.name, other.tail()))
            except EOFError:
                raise BenchError('%s ended (status %s) before a line matching'
                                 ' %r; it said:\n%s' % (
                                     self.name, self.proc.wait(), pattern,
                                     self.tail())) from None

    def tail(self, n=15):
        """The last *n* lines the process printed so far."""
        return self.output.log(last=n)

    def send(self, line):
        """Write one command line to the process's stdin."""
        try:
            self.proc.stdin.write(line + '\n')
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """End the process (if it still runs) and reap it."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin,):
            try:
                stream.close()
            except (BrokenPipeError, OSError):
                pass
        return self.proc.returncode


def _thread_seconds(task):
    """CPU seconds of one thread (*task*: its /proc directory), and name.

    ``sched`` (where the kernel has it) counts in nanoseconds; ``stat``
    counts in clock ticks (10 ms), too coarse for a run of a second.
    """
    with open(task + '/stat') as f:
        stat = f.read()
    # The name may hold spaces and parentheses: split after the last ')'.
    comm = stat[stat.index('(') + 1:stat.rindex(')')]
    try:
        with open(task + '/sched') as f:
            for line in f:
                if line.startswith('se.sum_exec_runtime'):
                    return float(line.split(':')[1]) / 1e3, comm
    except OSError:
        pass
    fields = stat[stat.rindex(')') + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK, comm


def thread_cpu(pid):
    """CPU seconds of *pid* by thread class: main, zmq I/O, other.

    The receiver's main thread is the Python loop; libzmq's background
    threads are named ``ZMQbg/IO/n`` and ``ZMQbg/Reaper``.
    """
    out = {'main': 0.0, 'zmq_io': 0.0, 'other': 0.0}
    task_dir = '/proc/%d/task' % pid
    for tid in os.listdir(task_dir):
        try:
            seconds, comm = _thread_seconds('%s/%s' % (task_dir, tid))
        except (OSError, ValueError):
            continue  # a thread that just ended
        if int(tid) == pid:
            out['main'] += seconds
        elif comm.startswith('ZMQbg/IO'):
            out['zmq_io'] += seconds
        else:
            out['other'] += seconds
    return out


def _status_kib(pid, field):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return None


def peak_rss_kib(pid):
    """VmHWM of *pid* in KiB: the peak resident set size so far."""
    return _status_kib(pid, 'VmHWM:')


def rss_kib(pid):
    """VmRSS of *pid* in KiB: its resident set size now."""
    return _status_kib(pid, 'VmRSS:')


def receiver_config(workdir, host, default=None, receiver=None):
    """Write *workdir*/receiver.conf: the receiver on 127.0.0.1, on a port
    the kernel picks, as *host*, with its IPC dir *workdir*/ipc; *default*
    and *receiver* ({option: value}) add to [DEFAULT] and [zmq_receiver].

    Returns (the config file, the IPC dir).
    """
    ipc_dir = os.path.join(workdir, 'ipc')
    options = {
        'DEFAULT': dict({'rpc_zmq_bind_address': '127.0.0.1',
                         'rpc_zmq_port': 0,
                         'rpc_zmq_ipc_dir': ipc_dir,
                         'rpc_zmq_host': host}, **(default or {})),
        'zmq_receiver': dict(receiver or {}),
    }
    return write_config(os.path.join(workdir, 'receiver.conf'),
                        options), ipc_dir


class Receiver(Proc):
    """``python -m zmq_receiver`` on loopback with a throw-away config."""

    LISTENING = r'listening on (tcp://\S+),'
    METRICS = r'Metrics on (http://\S+)/metrics'

    def __init__(self, workdir, deadline, metrics=False,
                 allowed_networks=None, topics=1):
        """With *metrics*, the metrics endpoint is on (``metrics_url``);
        *allowed_networks* sets [zmq_receiver] allowed_networks; *topics*:
        how many outlets the run needs (max_topics is raised for them)."""
        # Large limits: the benchmark measures speed, and a drop from a
        # full backlog would be a failed run rather than a slow one.
        receiver = {'max_backlog_bytes': 0, 'shutdown_timeout': 2,
                    'max_topics': max(512, 2 * topics)}
        if metrics:
            receiver['metrics_port'] = 0
        if allowed_networks:
            receiver['allowed_networks'] = allowed_networks
        config, self.ipc_dir = receiver_config(
            workdir, 'benchhost', {'rpc_zmq_topic_backlog': 10000000},
            receiver)
        super().__init__('receiver', [sys.executable, '-m', 'zmq_receiver',
                                      '--config-file', config], cwd=workdir)
        self.metrics_url = None
        if metrics:
            self.metrics_url = self.expect(self.METRICS, deadline).group(1)
        self.endpoint = self.expect(self.LISTENING, deadline).group(1)

    def outlet(self, key):
        return 'ipc://%s/zmq_topic_%s' % (self.ipc_dir, key)

    def stats(self, timeout=2.0):
        """The receiver's counters from its control socket, or None."""
        snap = control_stats(self.ipc_dir, timeout)
        if snap is not None:
            snap.pop('topics', None)
        return snap
