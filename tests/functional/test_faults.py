"""Faults around a running receiver, each measured in messages (issue 5).

A consumer killed and restarted mid-stream, a graceful receiver restart
under legacy PUSH senders, the IPC directory removed or made unwritable
while running, and the descriptor limit reached. Every test sends numbered
messages at a fixed rate, counts what arrived, and reports sent, delivered,
lost, duplicated and dropped/rejected by reason: printed (``pytest -rA``
shows it) and written to ``numbers.json`` in the test's tmp directory. A
SIGKILL of the receiver is tests/functional/test_lifecycle.py's
test_restart_after_sigkill; Redis faults are the matchmaker tests'.

``ZR_FAULT_SECONDS`` stretches the streams (default: about a second each)
for a longer run on demand.
"""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time

import pytest
import zmq

from tests import support
from tests.support import assert_balanced, cast, free_port, pull, recv

#: Messages per second of each fixed-rate sender.
RATE = 1000
#: How long each phase of a stream lasts (ZR_FAULT_SECONDS for longer).
PHASE = float(os.environ.get('ZR_FAULT_SECONDS', '0.5'))

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason='needs root (CI runs as root)')


# -- helpers -------------------------------------------------------------


class ConsumerProc:
    """tests/consumer_proc.py as a child process: its lines are events."""

    def __init__(self, endpoint, kind='pull'):
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.consumer_proc', endpoint, kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=support.REPO,
            env=support.clean_env())
        self.got = []
        self.other = []
        self._cond = threading.Condition()
        self._done = False
        threading.Thread(target=self._read, daemon=True).start()
        self.wait(lambda: self.other, 'connected')

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                if line.startswith(b'got '):
                    self.got.append(line[4:].rstrip(b'\n'))
                else:
                    self.other.append(line)
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait(self, predicate, what, timeout=support.TIMEOUT):
        """Block until *predicate*() holds (checked on each new line)."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate() or self._done,
                                       timeout) or not predicate():
                raise AssertionError('consumer: %s did not happen; it got '
                                     '%d messages, said %r' % (
                                         what, len(self.got), self.other))

    def wait_count(self, n, timeout=support.TIMEOUT):
        self.wait(lambda: len(self.got) >= n, '%d messages' % n, timeout)

    def kill(self):
        """SIGKILL; returns what it had printed when it died."""
        self.proc.kill()
        self.proc.wait()
        with self._cond:
            self._cond.wait_for(lambda: self._done, support.TIMEOUT)
            return list(self.got)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def consumers():
    started = []

    def start(endpoint, kind='pull'):
        consumer = ConsumerProc(endpoint, kind)
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        consumer.stop()


class RateSender(threading.Thread):
    """A legacy-style PUSH sender at a fixed rate, in its own thread.

    Bodies are ``<name>:<seq>``. Its send blocks when libzmq's queue is
    full (as an oslo.messaging sender does), so it loses nothing itself.
    Pacing by the clock is load generation, not synchronisation.
    """

    def __init__(self, endpoint, topic, name='s', rate=RATE, ctx=None):
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.topic = topic.encode()
        self.name_ = name.encode()
        self.rate = rate
        self.ctx = ctx or zmq.Context.instance()
        self.sent = 0
        self.halt = threading.Event()
        self.error = None

    def run(self):
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 10000)
        sock.setsockopt(zmq.SNDHWM, 100000)
        sock.connect(self.endpoint)
        try:
            start = time.monotonic()
            while not self.halt.is_set():
                due = int((time.monotonic() - start) * self.rate) + 1
                while self.sent < due:
                    sock.send_multipart(cast(self.topic, b'%s:%d' % (
                        self.name_, self.sent)))
                    self.sent += 1
                self.halt.wait(0.005)
            # Not counted: once it arrives, everything sent before it on
            # this connection has arrived or is lost for good (order holds).
            sock.send_multipart(cast(self.topic, self.name_ + b':end'))
        except Exception as exc:  # reported by finish()
            self.error = exc
        finally:
            sock.close()

    def finish(self):
        """Stop sending; returns how many were sent."""
        self.halt.set()
        self.join(support.TIMEOUT)
        assert self.error is None, self.error
        return self.sent


def seqs(bodies, name=b's'):
    prefix = name + b':'
    return [int(b[len(prefix):]) for b in bodies
            if b.startswith(prefix) and b[len(prefix):].isdigit()]


def wait_end(consumer, *names):
    """Until the end marker of each sender in *names* arrived."""
    for name in names:
        marker = name + b':end'
        consumer.wait(lambda: marker in consumer.got,
                      'the end marker of %s' % name.decode())


def report(tmp_path, case, **numbers):
    """Print the measured numbers and keep them in numbers.json."""
    numbers = dict(case=case, **numbers)
    path = os.path.join(str(tmp_path), 'numbers.json')
    with open(path, 'w') as f:
        json.dump(numbers, f, indent=2, sort_keys=True)
    print('FAULT %s' % json.dumps(numbers, sort_keys=True))
    return numbers


def topic(stats, key):
    return stats['topics'].get(key, {})


# -- a consumer killed and restarted --------------------------------------


def test_consumer_killed_and_restarted_mid_stream(daemons, short_dir,
                                                  consumers, tmp_path):
    key = 'steady.host1'
    daemon = daemons(short_dir, {'DEFAULT': {'rpc_zmq_topic_backlog':
                                             100000}})
    first = consumers(daemon.outlet(key))
    sender = RateSender(daemon.endpoint, key)
    sender.start()
    first.wait_count(int(RATE * PHASE))
    before = first.kill()
    # The receiver notices the consumer left; from then on it keeps what
    # comes (nothing else is lost) until a consumer is back.
    stats = daemon.wait_stats(lambda s: topic(s, key).get('consumers') == 0)
    handed = stats['forwarded']
    stats = daemon.wait_stats(
        lambda s: topic(s, key).get('backlog', 0) >= RATE * PHASE)
    buffered = topic(stats, key)['backlog']
    second = consumers(daemon.outlet(key))
    second.wait_count(buffered + int(RATE * PHASE))
    sent = sender.finish()
    wait_end(second, b's')
    got1, got2 = seqs(before), seqs(second.got)
    stats = daemon.wait_stats(lambda s: s['received'] == sent + 1)
    lost = sorted(set(range(sent)) - set(got1) - set(got2))
    numbers = report(
        tmp_path, 'consumer killed and restarted', sent=sent,
        delivered=len(got1) + len(got2), delivered_before_kill=len(got1),
        delivered_after_restart=len(got2), buffered_while_away=buffered,
        lost=len(lost), duplicated=len(got1) + len(got2) -
        len(set(got1) | set(got2)), handed_to_dead_consumer=handed -
        len(got1), dropped=stats['dropped'], rejected=stats['rejected'])
    assert numbers['duplicated'] == 0, numbers
    # One consumer at a time, order kept: the first got a prefix, the
    # second everything from some point on, and the gap between is lost.
    assert got1 == list(range(len(got1))), numbers
    assert got2 == list(range(sent - len(got2), sent)), numbers
    # Loss is only what the receiver had already handed to the dead
    # consumer's connection (libzmq's pipe, the kernel buffer, its own
    # receive queue) before it saw it leave; everything after was kept.
    assert all(len(got1) <= seq < handed for seq in lost), numbers
    assert stats['dropped'] == {} and stats['rejected'] == {}, numbers
    assert buffered >= RATE * PHASE
    assert_balanced(stats)


# -- a graceful receiver restart -----------------------------------------


@pytest.mark.parametrize('backlog', [None, 100000],
                         ids=['default-backlog', 'large-backlog'])
def test_graceful_restart_under_legacy_push_senders(daemons, short_dir,
                                                    consumers, tmp_path,
                                                    backlog):
    """Senders queue what they cannot send while no receiver listens and
    send it all at once to the new one, before the consumer has
    reconnected (libzmq retries every 100 ms): the new outlet's backlog
    must hold that burst. With the default (1000) at this rate the excess
    is dropped and counted (backlog_full); with a backlog sized for rate x
    restart time nothing is.

    Nothing may be lost at the stop itself: the stopping receiver
    half-closes the senders' connections and reads until they close, so
    that what was in the kernel's socket buffers arrives (legacy ZMTP has
    no acknowledgement; closing first lost a few per sender under load).
    """
    key = 'restart.host1'
    options = {'DEFAULT': {'rpc_zmq_port': free_port()}}
    if backlog:
        options['DEFAULT']['rpc_zmq_topic_backlog'] = backlog
    first = daemons(short_dir, options)
    consumer = consumers(first.outlet(key))
    senders = [RateSender(first.endpoint, key, name) for name in 'ab']
    for sender in senders:
        sender.start()
    consumer.wait_count(int(RATE * PHASE))
    assert first.stop() == 0
    stopped = re.search(r'Stopped\. .*', first.log()).group(0)
    second = daemons(short_dir, options)
    assert second.endpoint == first.endpoint
    at_restart = len(consumer.got)
    # The consumer reconnects to the new socket file by itself.
    consumer.wait_count(at_restart + int(RATE * PHASE))
    sent = {s.name_: s.finish() for s in senders}
    wait_end(consumer, *sent)
    stats = second.wait_stats(lambda s: s['queued'] == 0)
    lost = dup = 0
    lost_ranges = {}
    for name, n in sent.items():
        got = seqs(consumer.got, name)
        missing = sorted(set(range(n)) - set(got))
        lost += len(missing)
        if missing:
            lost_ranges[name.decode()] = [missing[0], missing[-1]]
        dup += len(got) - len(set(got))
        assert got == sorted(got), 'order broken for %s' % name
    numbers = report(
        tmp_path, 'graceful receiver restart (backlog %s)' % (
            backlog or 'default'), sent=sum(sent.values()),
        delivered=len(consumer.got) - len(sent), lost=lost, duplicated=dup,
        lost_ranges=lost_ranges, delivered_before_restart=at_restart,
        first_receiver=stopped, second_dropped=stats['dropped'],
        second_rejected=stats['rejected'])
    assert dup == 0, numbers
    # The first receiver delivered all it took in before it stopped.
    assert 'dropped[0]' in stopped, numbers
    assert stats['rejected'] == {}, numbers
    # Whatever is missing was dropped by the new receiver, and counted.
    assert lost == sum(stats['dropped'].values()), numbers
    assert set(stats['dropped']) <= {'backlog_full'}, numbers
    if backlog:
        assert stats['dropped'] == {}, numbers
    assert_balanced(stats)


# -- the IPC directory removed, or made unwritable, while running --------


def test_ipc_dir_removed_while_running_then_recreated(ctx, daemons,
                                                      short_dir, tmp_path):
    daemon = daemons(short_dir)
    out = support.sender(ctx, daemon)
    connected = pull(ctx, daemon, 'kept.host1')
    out.send_multipart(cast('kept.host1', b'before'))
    assert recv(connected)[3] == b'before'
    out.send_multipart(cast('waiting.host1', b'queued'))
    daemon.wait_stats(lambda s: s['queued'] == 1)
    st = os.stat(daemon.ipc_dir)

    shutil.rmtree(daemon.ipc_dir)
    gone = daemon.wait_for(r'ERROR .*The IPC directory .* is gone.*').group(0)
    # What happened, what still works, and the command that fixes it.
    assert 'install -d -o %d -g %d -m %o %s' % (
        st.st_uid, st.st_gid, st.st_mode & 0o7777, daemon.ipc_dir) in gone
    assert 'its 2 outlets' in gone
    # A consumer already connected keeps its connection ...
    out.send_multipart(cast('kept.host1', b'while gone'))
    assert recv(connected)[3] == b'while gone'
    # ... a new topic is refused and counted ...
    out.send_multipart(cast('new.host1', b'refused'))
    daemon.wait_for(r'Cannot open outlet .*new\.host1 .*\(ipc_dir_missing\)'
                    r'.*recreate it')
    # ... and a consumer that starts now waits (libzmq retries the
    # connect) for the file, which comes back with the directory.
    late = pull(ctx, daemon, 'waiting.host1')
    assert support.nothing_arrives(late, 0.2)

    os.mkdir(daemon.ipc_dir, st.st_mode & 0o7777)
    os.chown(daemon.ipc_dir, st.st_uid, st.st_gid)
    daemon.wait_for(r'The IPC directory .* is back')
    assert recv(late)[3] == b'queued'
    daemon.wait_for(r'Control socket .* binding it again')
    out.send_multipart(cast('kept.host1', b'after'))
    assert recv(connected)[3] == b'after'
    fresh = pull(ctx, daemon, 'new.host1')
    out.send_multipart(cast('new.host1', b'now'))
    assert recv(fresh)[3] == b'now'
    stats = daemon.wait_stats(lambda s: s['received'] == 6 and
                              s['queued'] == 0)
    report(tmp_path, 'IPC directory removed and recreated', sent=6,
           delivered=5, lost=0, duplicated=0, dropped=stats['dropped'],
           rejected=stats['rejected'])
    assert stats['rejected'] == {'ipc_dir_missing': 1}
    assert stats['dropped'] == {}
    assert_balanced(stats)
    assert sorted(os.listdir(daemon.ipc_dir)) == [
        '.zmq-receiver-control', '.zmq-receiver.lock',
        'zmq_topic_kept.host1', 'zmq_topic_new.host1',
        'zmq_topic_waiting.host1']
    # The directory is locked again: a second receiver is still refused.
    status, output = support.run_receiver(['--config-file',
                                           daemon.config_file])
    assert status == 69, output
    assert 'pid %d' % daemon.proc.pid in output
    # A refused outlet used to leave its sockets open: the context never
    # terminated and the receiver hung here.
    assert daemon.stop() == 0
    assert os.listdir(daemon.ipc_dir) == []


@needs_root
def test_ipc_dir_made_unwritable_while_running_then_fixed(ctx, daemons,
                                                          short_dir,
                                                          tmp_path):
    # Root ignores modes: the receiver drops to nobody, the test stays
    # root and can still connect.
    os.chmod(short_dir, 0o755)
    daemon = daemons(short_dir, {'zmq_receiver': {'user': 'nobody'}})
    out = support.sender(ctx, daemon)
    connected = pull(ctx, daemon, 'kept.host1')
    out.send_multipart(cast('kept.host1', b'before'))
    assert recv(connected)[3] == b'before'
    mode = os.stat(daemon.ipc_dir).st_mode & 0o7777
    os.chmod(daemon.ipc_dir, 0)
    try:
        out.send_multipart(cast('new.host1', b'refused'))
        daemon.wait_for(r'Cannot open outlet .*new\.host1 '
                        r'\(ipc_permission_denied\).*make the directory '
                        r'writable')
        out.send_multipart(cast('kept.host1', b'while denied'))
        assert recv(connected)[3] == b'while denied'
    finally:
        os.chmod(daemon.ipc_dir, mode)
    fresh = pull(ctx, daemon, 'new.host1')
    out.send_multipart(cast('new.host1', b'now'))
    assert recv(fresh)[3] == b'now'
    stats = daemon.wait_stats(lambda s: s['received'] == 4)
    report(tmp_path, 'IPC directory made unwritable', sent=4, delivered=3,
           lost=0, duplicated=0, dropped=stats['dropped'],
           rejected=stats['rejected'])
    assert stats['rejected'] == {'ipc_permission_denied': 1}
    assert stats['dropped'] == {}
    assert_balanced(stats)
    assert daemon.stop() == 0


# -- the descriptor limit ------------------------------------------------


def test_descriptor_limit_refuses_new_topics_existing_keep_flowing(
        ctx, daemons, short_dir, tmp_path):
    limit = 64

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    original = subprocess.Popen

    class LowLimitPopen(original):
        def __init__(self, *args, **kwargs):
            kwargs['preexec_fn'] = low_limit
            super().__init__(*args, **kwargs)

    subprocess.Popen = LowLimitPopen
    try:
        daemon = daemons(short_dir, {'zmq_receiver': {
            'max_topics': 500, 'shutdown_timeout': 0.5}})
    finally:
        subprocess.Popen = original
    pid = daemon.proc.pid
    out = support.sender(ctx, daemon)
    kept = pull(ctx, daemon, 'kept.host1')
    out.send_multipart(cast('kept.host1', b'before'))
    assert recv(kept)[3] == b'before'
    topics = 40
    for i in range(topics):
        out.send_multipart(cast('t%d.host1' % i))
    stats = daemon.wait_stats(lambda s: s['received'] == topics + 1)
    refused = stats['rejected'].get('out_of_descriptors', 0)
    fds = len(os.listdir('/proc/%d/fd' % pid))
    # More consumers of the kept topic can still connect (libzmq 4.3
    # aborts the process when it cannot accept one), and it still flows.
    more = [pull(ctx, daemon, 'kept.host1') for _ in range(4)]
    daemon.wait_stats(
        lambda s: s['topics']['kept.host1']['consumers'] == 5)
    sent = 1 + topics
    for i in range(5):
        out.send_multipart(cast('kept.host1', b'after %d' % i))
        sent += 1
    poller = zmq.Poller()
    for sock in [kept] + more:
        poller.register(sock, zmq.POLLIN)
    got = []
    deadline = time.monotonic() + support.TIMEOUT
    while len(got) < 5 and time.monotonic() < deadline:
        for sock, _ in poller.poll(100):
            got.append(sock.recv_multipart()[3])
    stats = daemon.wait_stats(lambda s: s['received'] == sent)
    report(tmp_path, 'descriptor limit %d' % limit, sent=sent,
           delivered=1 + len(got), lost=0, duplicated=0,
           outlets=stats['outlets'], open_files=fds,
           dropped=stats['dropped'], rejected=stats['rejected'])
    assert sorted(got) == [b'after %d' % i for i in range(5)]
    assert daemon.proc.poll() is None
    assert 0 < refused < topics, stats
    assert stats['rejected'] == {'out_of_descriptors': refused}
    assert stats['outlets'] == 1 + topics - refused
    assert fds <= limit - 8, fds
    assert_balanced(stats)
    assert 'descriptors free for connections' in daemon.log()
    # The outlets of the flood held one message each, with no consumer.
    assert daemon.stop() == 0
    assert 'dropped[shutdown=%d]' % (topics - refused) in daemon.log()
