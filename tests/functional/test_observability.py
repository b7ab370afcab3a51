"""Issue 5 through real processes: metrics, health, the stats tool, logs.

A real HTTP client (urllib) scrapes the daemon's Prometheus endpoint while
real traffic flows over TCP to real IPC consumers, and the exposition is
parsed with prometheus_client's own parser, so the figures asserted are the
ones a Prometheus server would store. The admin tool runs as the installed
console script against the daemon's own config file. Log assertions are on
the lines the process printed.

The snapshot behind ``/metrics`` is refreshed once a second, so every figure
is awaited with a bounded poll of the endpoint (a poll is the event: the
answer either matches or the wait goes on, up to a deadline that fails the
test), and then compared with exact equality.

A frozen loop is made two ways: SIGSTOP (the whole process, as the issue
asks: ``/healthz`` cannot answer at all) and ptrace on the loop's thread
alone (the HTTP thread keeps answering, so the 503 branch is exercised).

Tests marked ``xfail(strict=True)`` expose package bugs found while writing
these; each reason says what is wrong. Once fixed, they pass and strict
xfail turns that into a failure, so that the mark is removed.
"""

import ctypes
import errno
import json
import os
import pwd
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import parser as prom_parser

from tests import support
from tests.support import pull, recv, sub
from zmq_receiver import __version__
from zmq_receiver import errors
from zmq_receiver import exporter
from zmq_receiver import wire

ADMIN = os.path.join(os.path.dirname(sys.executable),
                     'oslo-messaging-zmq-admin')
METRICS_ON = {'zmq_receiver': {'metrics_port': 0}}
TOPIC_FAMILIES = ('zmq_receiver_topic_forwarded_total',
                  'zmq_receiver_topic_dropped_total',
                  'zmq_receiver_topic_backlog_messages',
                  'zmq_receiver_topic_consumers')


# -- helpers -----------------------------------------------------------------


def metrics_url(daemon):
    """The endpoint's base URL, from the startup line that announces it."""
    # The line comes before "listening on", which Daemon.start waited for.
    for line in daemon.lines:
        match = re.search(r'Metrics on (http://\S+)/metrics,', line)
        if match:
            return match.group(1)
    raise AssertionError('no "Metrics on" line; log:\n%s' % daemon.log())


def http_get(url, timeout=2.0):
    """(status, body) of a GET; (None, None) when no answer in *timeout*."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except TimeoutError:
        return None, None
    except urllib.error.URLError as exc:
        # A timeout while connecting comes wrapped; anything else (refused)
        # is a real failure and must not pass for "unhealthy".
        if isinstance(exc.reason, TimeoutError):
            return None, None
        raise


def scrape(url):
    """Every sample of ``/metrics``: {(sample name, labels): value}."""
    status, body = http_get(url + '/metrics', timeout=support.TIMEOUT)
    assert status == 200, (status, body)
    samples = {}
    for family in prom_parser.text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def labelled(samples, name):
    """The samples of *name* as {the value of its one label: value}."""
    return {labels[0][1]: value for (sample, labels), value in samples.items()
            if sample == name and labels}


def plain(samples, name):
    return samples.get((name, ()))


def wait_metrics(url, predicate, timeout=support.TIMEOUT):
    """Scrape until *predicate*(samples) holds; the samples that matched."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if predicate(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError('metrics never matched within %.0f s: %s' %
                                 (timeout, sorted(samples.items())))
        # Between two scrapes; the answer itself is the event.
        time.sleep(0.05)


def wait_http(url, status, timeout=support.TIMEOUT):
    """GET *url* until it answers *status*; every answer seen on the way."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        got, body = http_get(url, timeout=2.0)
        seen.append(got)
        if got == status:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError('%s never answered %s within %.0f s: %s' % (
                url, status, timeout, seen))
        time.sleep(0.05)


def listening_tcp_ports(pid):
    """TCP ports that sockets held by process *pid* listen on."""
    inodes = set()
    fd_dir = '/proc/%d/fd' % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        match = re.fullmatch(r'socket:\[(\d+)\]', target)
        if match:
            inodes.add(match.group(1))
    ports = set()
    for table in ('tcp', 'tcp6'):
        with open('/proc/%d/net/%s' % (pid, table)) as f:
            next(f)
            for line in f:
                fields = line.split()
                # st 0A is TCP_LISTEN; field 9 is the socket's inode.
                if fields[3] == '0A' and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(':', 1)[1], 16))
    return ports


def admin(daemon, *args, timeout=support.TIMEOUT):
    """Run the installed admin tool against *daemon*'s config file."""
    return subprocess.run(
        [ADMIN, '--config-file', daemon.config_file] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, timeout=timeout, env=support.clean_env())


def admin_json(daemon):
    result = admin(daemon, 'stats', '--json')
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- the metrics endpoint ----------------------------------------------------


def test_scraped_counters_equal_what_was_sent_forwarded_dropped_rejected(
        ctx, daemons, short_dir):
    daemon = daemons(short_dir, {
        'DEFAULT': {'rpc_zmq_topic_backlog': 3},
        'zmq_receiver': {'metrics_port': 0, 'max_message_size': 4096}})
    url = metrics_url(daemon)
    before = wait_metrics(
        url, lambda s: plain(s, 'zmq_receiver_received_total') is not None)
    assert plain(before, 'zmq_receiver_received_total') == 0

    # Scrape all along, so that serving is exercised while the loop forwards;
    # a counter that ever went backwards would be a torn snapshot.
    scrapes, problems, done = [], [], threading.Event()

    def keep_scraping():
        while not done.is_set():
            try:
                scrapes.append(plain(scrape(url),
                                     'zmq_receiver_received_total'))
            except Exception as exc:  # reported by the main thread
                problems.append(repr(exc))
                return

    scraper = threading.Thread(target=keep_scraping, daemon=True)
    scraper.start()
    try:
        out = support.sender(ctx, daemon)
        # metrics.a: a PULL consumer, connected (the first message proves
        # it) before the rest, so that the small backlog never fills.
        consumer = pull(ctx, daemon, 'metrics.a')
        out.send_multipart(support.cast('metrics.a', b'0'))
        assert recv(consumer)[3] == b'0'
        for i in range(1, 5):
            out.send_multipart(support.cast('metrics.a', b'%d' % i))
        assert [recv(consumer)[3] for _ in range(4)] == [b'1', b'2', b'3',
                                                         b'4']
        # fanout~metrics: a subscriber. The first message waits for it to
        # join (waiting counts against the small backlog, hence one first).
        subscriber = sub(ctx, daemon, 'fanout~metrics')
        out.send_multipart(support.cast('fanout~metrics.host1', b'0'))
        assert recv(subscriber)[3] == b'0'
        for i in range(1, 4):
            out.send_multipart(support.cast('fanout~metrics.host1',
                                            b'%d' % i))
        assert [recv(subscriber)[3] for _ in range(3)] == [b'1', b'2', b'3']
        # metrics.b: nobody consumes: 3 queued (the backlog), 2 dropped.
        queued_frames = support.cast('metrics.b', b'queued')
        for _ in range(5):
            out.send_multipart(queued_frames)
        # Hostile or broken input, a different count per reason, so that
        # a count landing under the wrong reason shows.
        hostile = {
            'short_message': [[b'0']],
            'empty_topic': [support.cast(b'')] * 2,
            'non_ascii_topic': [support.cast(b'caf\xc3\xa9')] * 3,
            'forbidden_character': [support.cast(b'../../etc/passwd')] * 4,
            'dot_dot_in_topic': [support.cast(b'a..b')] * 5,
            'topic_too_long': [support.cast(b'x' * 300)] * 6,
            # Two frames under the libzmq per-frame cap, too big together.
            'oversized_message': [[b'0', b'big', b'y' * 3000,
                                   b'z' * 3000]] * 7,
        }
        for messages in hostile.values():
            for frames in messages:
                out.send_multipart(frames)
        rejected = {reason: float(len(messages))
                    for reason, messages in hostile.items()}
        received = 5 + 4 + 5 + sum(rejected.values())
        expected = {
            'zmq_receiver_received_total': received,
            'zmq_receiver_forwarded_total': 9,
            'zmq_receiver_backlog_messages': 3,
            'zmq_receiver_backlog_bytes': 3 * wire.message_cost(
                queued_frames),
            'zmq_receiver_outlets': 3,
            'zmq_receiver_outlets_created_total': 3,
            'zmq_receiver_ready': 1,
        }
        by_label = {
            'zmq_receiver_rejected_total': rejected,
            'zmq_receiver_dropped_total': {'backlog_full': 2},
            'zmq_receiver_topic_forwarded_total': {
                'metrics.a': 5, 'fanout~metrics': 4, 'metrics.b': 0},
            'zmq_receiver_topic_dropped_total': {
                'metrics.a': 0, 'fanout~metrics': 0, 'metrics.b': 2},
            'zmq_receiver_topic_backlog_messages': {
                'metrics.a': 0, 'fanout~metrics': 0, 'metrics.b': 3},
            'zmq_receiver_topic_consumers': {
                'metrics.a': 1, 'fanout~metrics': 1, 'metrics.b': 0},
        }

        def figures(samples):
            return ({name: plain(samples, name) for name in expected},
                    {name: labelled(samples, name) for name in by_label})

        samples = wait_metrics(
            url, lambda s: figures(s) == (expected, by_label))
    finally:
        done.set()
        scraper.join(support.TIMEOUT)
    assert figures(samples) == (expected, by_label)
    # Every message read ends in exactly one place, as exported.
    assert plain(samples, 'zmq_receiver_received_total') == (
        plain(samples, 'zmq_receiver_forwarded_total') +
        sum(labelled(samples, 'zmq_receiver_rejected_total').values()) +
        sum(labelled(samples, 'zmq_receiver_dropped_total').values()) +
        plain(samples, 'zmq_receiver_backlog_messages'))
    assert not problems, problems
    assert scrapes, 'the concurrent scraper never got an answer'
    assert scrapes == sorted(scrapes), 'received went backwards: %s' % scrapes
    support.close_all(out, consumer, subscriber)


def test_per_topic_label_values_are_bounded_by_top_topics(ctx, daemons,
                                                          short_dir):
    daemon = daemons(short_dir, {
        'DEFAULT': {'rpc_zmq_topic_backlog': 10},
        # join_window 0: busy.a's backlog holds 10 from the first message.
        'zmq_receiver': {'metrics_port': 0, 'metrics_top_topics': 3,
                         'join_window': 0}})
    url = metrics_url(daemon)
    out = support.sender(ctx, daemon)
    # 50 distinct topics. Three clear leaders (by forwarded + backlog);
    # busy.a overflows its backlog so that dropped is not all zeros.
    sent = {'busy.a': 12, 'busy.b': 8, 'busy.c': 6}
    sent.update(('flood.%02d' % i, 1) for i in range(46))
    for topic, count in sent.items():
        for _ in range(count):
            out.send_multipart(support.cast(topic))
    # fwd.x is consumed: its forwarded messages belong to "other".
    consumer = pull(ctx, daemon, 'fwd.x')
    out.send_multipart(support.cast('fwd.x'))
    out.send_multipart(support.cast('fwd.x'))
    recv(consumer)
    recv(consumer)
    assert len(sent) + 1 == 50

    samples = wait_metrics(url, lambda s: (
        plain(s, 'zmq_receiver_received_total') == sum(sent.values()) + 2 and
        plain(s, 'zmq_receiver_forwarded_total') == 2 and
        labelled(s, 'zmq_receiver_topic_consumers').get('other') == 1))
    expected_rows = {
        'zmq_receiver_topic_backlog_messages': {
            'busy.a': 10, 'busy.b': 8, 'busy.c': 6, 'other': 46},
        'zmq_receiver_topic_dropped_total': {
            'busy.a': 2, 'busy.b': 0, 'busy.c': 0, 'other': 0},
        'zmq_receiver_topic_forwarded_total': {
            'busy.a': 0, 'busy.b': 0, 'busy.c': 0, 'other': 2},
        'zmq_receiver_topic_consumers': {
            'busy.a': 0, 'busy.b': 0, 'busy.c': 0, 'other': 1},
    }
    for name in TOPIC_FAMILIES:
        rows = labelled(samples, name)
        assert len(rows) <= 4, (name, rows)
        assert rows == expected_rows[name], name
    # The aggregate loses no message: per-topic sums equal the totals.
    assert plain(samples, 'zmq_receiver_outlets') == 50
    assert sum(labelled(samples, 'zmq_receiver_topic_backlog_messages')
               .values()) == plain(samples, 'zmq_receiver_backlog_messages')
    assert sum(labelled(samples, 'zmq_receiver_topic_forwarded_total')
               .values()) == plain(samples, 'zmq_receiver_forwarded_total')
    assert sum(labelled(samples, 'zmq_receiver_topic_dropped_total')
               .values()) == sum(labelled(
                   samples, 'zmq_receiver_dropped_total').values())
    support.close_all(out, consumer)


def test_other_topic_counter_never_goes_backwards(ctx, daemons, short_dir):
    daemon = daemons(short_dir, {
        'zmq_receiver': {'metrics_port': 0, 'metrics_top_topics': 1}})
    url = metrics_url(daemon)
    out = support.sender(ctx, daemon)
    # rank.a leads with a backlog of 3 and nothing forwarded; rank.b has
    # forwarded 2 and sits in "other".
    for _ in range(3):
        out.send_multipart(support.cast('rank.a'))
    consumer = pull(ctx, daemon, 'rank.b')
    for _ in range(2):
        out.send_multipart(support.cast('rank.b'))
        recv(consumer)
    before = labelled(wait_metrics(url, lambda s: labelled(
        s, 'zmq_receiver_topic_forwarded_total') == {'rank.a': 0,
                                                     'other': 2}),
        'zmq_receiver_topic_forwarded_total')
    # rank.b's consumer leaves; two more for it queue: rank 4 > 3, so it
    # takes rank.a's place in the top 1.
    consumer.close()
    daemon.wait_stats(lambda s: s['topics']['rank.b']['consumers'] == 0)
    for _ in range(2):
        out.send_multipart(support.cast('rank.b'))
    after = labelled(wait_metrics(url, lambda s: 'rank.b' in labelled(
        s, 'zmq_receiver_topic_forwarded_total')),
        'zmq_receiver_topic_forwarded_total')
    assert after['other'] >= before['other'], (before, after)
    support.close_all(out)


def test_standard_process_metrics_are_exported(daemons, short_dir):
    daemon = daemons(short_dir, METRICS_ON)
    samples = scrape(metrics_url(daemon))
    # The daemon holds at least its TCP socket, its metrics socket and a
    # few ZeroMQ internals; its interpreter takes megabytes.
    assert plain(samples, 'process_open_fds') >= 3
    assert plain(samples, 'process_resident_memory_bytes') > 1024 * 1024
    assert plain(samples, 'process_max_fds') > 0
    assert plain(samples, 'process_start_time_seconds') > 0


def test_readyz_and_healthz_answer_200_when_running(daemons, short_dir):
    daemon = daemons(short_dir, METRICS_ON)
    url = metrics_url(daemon)
    # Ready is published when the loop starts, just after "listening on".
    wait_http(url + '/readyz', 200)
    assert http_get(url + '/readyz') == (200, 'ready\n')
    assert http_get(url + '/healthz') == (200, 'ok\n')
    port = int(url.rsplit(':', 1)[1])
    # Also checks listening_tcp_ports, which the "off" test relies on.
    assert listening_tcp_ports(daemon.proc.pid) == {daemon.port, port}


def test_healthz_fails_while_the_process_is_stopped_and_recovers(daemons,
                                                                  short_dir):
    daemon = daemons(short_dir, METRICS_ON)
    url = metrics_url(daemon) + '/healthz'
    wait_http(url, 200)
    frozen_for = exporter.HEALTH_MAX_AGE + 0.5
    daemon.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # Stopped, it cannot answer: a timeout or a 503 are both unhealthy.
        # Keep it stopped past HEALTH_MAX_AGE so that, when it wakes, its
        # loop's last turn really is stale; each probe waits up to 2 s, so
        # this is a bounded wait on the condition, not a sleep.
        statuses = []
        while time.monotonic() - stopped < frozen_for:
            status, _ = http_get(url, timeout=2.0)
            statuses.append(status)
            assert status != 200, 'healthy while stopped: %s' % statuses
            assert (time.monotonic() - stopped <
                    exporter.HEALTH_MAX_AGE + 10), statuses
    finally:
        daemon.signal(signal.SIGCONT)
    assert set(statuses) <= {None, 503}, statuses
    wait_http(url, 200)
    assert daemon.proc.poll() is None


# ptrace(2) requests: freeze one thread of another process, and let it go.
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_DETACH = 17
__WALL = 0x40000000


def test_healthz_answers_503_when_only_the_loop_is_stuck(daemons, short_dir):
    # SIGSTOP freezes the HTTP thread too, so it shows a timeout, never the
    # 503 branch. Freezing only the main thread (the loop) with ptrace
    # leaves the HTTP thread answering, and it must say the loop is stuck.
    daemon = daemons(short_dir, METRICS_ON)
    url = metrics_url(daemon) + '/healthz'
    wait_http(url, 200)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                            ctypes.c_void_p]
    tid = daemon.proc.pid  # the main thread runs the loop
    if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
        err = ctypes.get_errno()
        if err in (errno.EPERM, errno.EACCES):
            pytest.skip('ptrace not permitted here: %s' % os.strerror(err))
        raise OSError(err, os.strerror(err))
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0
        os.waitpid(tid, __WALL)  # the loop thread is now stopped
        frozen = time.monotonic()
        seen = []
        while True:
            status, body = http_get(url, timeout=2.0)
            seen.append((round(time.monotonic() - frozen, 1), status))
            if status != 200:
                break
            assert time.monotonic() - frozen < exporter.HEALTH_MAX_AGE + 10, \
                seen
            time.sleep(0.2)  # a probe interval; the answer is the event
        # Healthy answers only while the last turn was recent enough.
        assert all(t <= exporter.HEALTH_MAX_AGE + 1 for t, s in seen
                   if s == 200), seen
        assert status == 503, seen
        assert body.startswith('loop stuck: last turn '), body
    finally:
        libc.ptrace(PTRACE_DETACH, tid, None, None)
    wait_http(url, 200)


def test_metrics_are_off_by_default(daemons, short_dir):
    daemon = daemons(short_dir)
    assert not any('Metrics on' in line for line in daemon.lines), \
        daemon.log()
    # The ZeroMQ port is all this process listens on.
    assert listening_tcp_ports(daemon.proc.pid) == {daemon.port}


def test_metrics_port_in_use_exits_75_with_one_clear_line(short_dir):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = support.Daemon(short_dir, {
            'zmq_receiver': {'metrics_port': port}})
        status, output = support.run_receiver(daemon.args, cwd=short_dir)
    assert status == errors.EXIT_ADDRESS_IN_USE == 75, output
    assert ('oslo-messaging-zmq-receiver: error: Metrics address '
            '127.0.0.1:%d is already in use' % port) in output, output
    assert 'Traceback' not in output, output


@pytest.mark.skipif(not support.ipv6_loopback(),
                    reason='no IPv6 loopback here')
def test_metrics_on_an_ipv6_address(daemons, short_dir):
    daemon = daemons(short_dir, {
        'zmq_receiver': {'metrics_port': 0, 'metrics_address': '::1'}})
    url = metrics_url(daemon)
    assert url.startswith('http://[::1]:'), url
    assert http_get(url + '/healthz') == (200, 'ok\n')


# -- the admin tool ----------------------------------------------------------


def test_stats_json_shows_backlog_grow_while_consumer_away_then_drain(
        ctx, receiver):
    # No metrics endpoint here: stats must work through the control socket.
    n = 7
    out = support.sender(ctx, receiver)
    for i in range(n):
        out.send_multipart(support.cast('admin.away', b'%d' % i))
    receiver.wait_stats(lambda s: s['received'] == n)
    away = admin_json(receiver)['topics']['admin.away']
    assert (away['backlog'], away['forwarded'], away['consumers']) == (n, 0,
                                                                        0)
    consumer = pull(ctx, receiver, 'admin.away')
    assert [recv(consumer)[3] for _ in range(n)] == [b'%d' % i
                                                     for i in range(n)]
    receiver.wait_stats(lambda s: s['topics']['admin.away']['consumers'] == 1)
    stats = admin_json(receiver)
    back = stats['topics']['admin.away']
    assert (back['backlog'], back['forwarded'], back['consumers']) == (0, n,
                                                                        1)
    assert (stats['queued'], stats['forwarded'], stats['dropped']) == (0, n,
                                                                       {})
    support.close_all(out, consumer)


@pytest.mark.skipif(os.geteuid() != 0,
                    reason='giving a file to another group needs root')
def test_control_socket_is_owned_and_moded_like_the_outlets(ctx, daemons,
                                                            short_dir):
    gid = 4242  # no group entry needed: a number is taken as it is
    daemon = daemons(short_dir, {
        'zmq_receiver': {'socket_group': gid, 'socket_mode': '0660'}})
    out = support.sender(ctx, daemon)
    out.send_multipart(support.cast('owned.topic'))
    daemon.wait_stats(lambda s: 'owned.topic' in s['topics'])
    outlet = os.stat(daemon.path('owned.topic'))
    control = os.stat(os.path.join(daemon.ipc_dir, '.zmq-receiver-control'))
    assert (outlet.st_gid, oct(outlet.st_mode)) == (gid, '0o140660')
    assert (control.st_uid, control.st_gid, oct(control.st_mode)) == (
        outlet.st_uid, outlet.st_gid, oct(outlet.st_mode))
    support.close_all(out)


def test_stats_table_names_the_topic_under_the_column_headers(ctx, receiver):
    out = support.sender(ctx, receiver)
    for _ in range(3):
        out.send_multipart(support.cast('admin.table'))
    receiver.wait_stats(lambda s: s['received'] == 3)
    result = admin(receiver, 'stats')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('received 3  forwarded 0  rejected 0  '
                               'dropped 0  queued 3'), lines
    headers = [line.split() for line in lines if line.startswith('TOPIC')]
    assert headers == [['TOPIC', 'KIND', 'CONSUMERS', 'BACKLOG', 'FORWARDED',
                        'DROPPED']], lines
    rows = [line.split() for line in lines if 'admin.table' in line]
    assert rows == [['admin.table', 'push', '0', '3', '0', '0']], lines
    support.close_all(out)


def test_health_exits_0_while_running_and_1_with_a_message_when_not(
        receiver):
    result = admin(receiver, 'health')
    assert (result.returncode, result.stderr) == (0, '')
    assert receiver.stop() == 0
    result = admin(receiver, 'health', '--timeout', '0.5')
    assert result.returncode == 1, result
    assert 'No receiver answered on %s/.zmq-receiver-control within 0.5 s' % (
        receiver.ipc_dir) in result.stderr, result.stderr


def test_health_exits_1_after_the_receiver_was_killed(receiver):
    # SIGKILL leaves the control socket file behind: a file is not a
    # receiver, and health must still say so. The socket is bound when the
    # loop starts, just after the startup line: wait until it answers.
    receiver.stats()
    receiver.kill()
    assert os.path.exists(os.path.join(receiver.ipc_dir,
                                       '.zmq-receiver-control'))
    result = admin(receiver, 'health', '--timeout', '0.5')
    assert result.returncode == 1, result
    assert 'No receiver answered' in result.stderr, result.stderr


def test_stats_watch_refreshes(ctx, receiver):
    proc = subprocess.Popen(
        [ADMIN, '--config-file', receiver.config_file, 'stats', '--watch',
         '0.2'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, env=support.clean_env())
    clear = '\x1b[H\x1b[2J'  # each refresh starts by clearing the screen
    tables = queue.Queue()

    def read():
        # A table is complete when the clear of the next one arrives.
        table = None
        for line in proc.stdout:
            if line.startswith(clear):
                if table is not None:
                    tables.put(table)
                table = [line[len(clear):]]
            elif table is not None:
                table.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        first = tables.get(timeout=support.TIMEOUT)
        assert first[0].startswith('received 0 '), first
        assert not any('watch.topic' in line for line in first)
        # A change after the first table must show in a later one: that
        # is a refresh, not the same text printed again.
        out = support.sender(ctx, receiver)
        out.send_multipart(support.cast('watch.topic'))
        deadline = time.monotonic() + support.TIMEOUT
        seen = [first]
        while not any('watch.topic' in line for line in seen[-1]):
            remaining = deadline - time.monotonic()
            assert remaining > 0, 'no table showed the new topic: %s' % seen
            seen.append(tables.get(timeout=remaining))
        assert len(seen) >= 2
        assert seen[-1][0].startswith('received 1 '), seen[-1]
    finally:
        proc.terminate()
        proc.wait(support.TIMEOUT)
    support.close_all(out)


# -- logs --------------------------------------------------------------------


def test_startup_line_names_version_address_ipc_dir_user_and_limits(
        daemons, short_dir):
    daemon = daemons(short_dir, {
        'DEFAULT': {'rpc_zmq_topic_backlog': 17},
        'zmq_receiver': {'max_backlog_bytes': 123456, 'max_topics': 33,
                         'idle_timeout': 42, 'join_window': 1.5,
                         'max_message_size': 54321}})
    line = [line for line in daemon.lines if 'listening on' in line]
    assert len(line) == 1, daemon.log()
    line = line[0]
    uid = os.geteuid()
    assert ('oslo-messaging-zmq-receiver %s listening on '
            'tcp://127.0.0.1:%d, forwarding to %s as ' % (
                __version__, daemon.port, daemon.ipc_dir)) in line, line
    user = line.split(' as ', 1)[1]
    assert user.startswith('%s (uid %d, gid %d)' % (
        pwd.getpwuid(uid).pw_name, uid, os.getegid())), line
    for limit in ('17 messages per topic', '123456 bytes in all backlogs',
                  '33 topics', 'idle outlets closed after 42 s',
                  'join window 1.5 s', 'messages up to 54321 bytes'):
        assert limit in line, (limit, line)


def test_a_flood_of_bad_topics_logs_a_few_lines_and_counts_the_rest(
        ctx, daemons, short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'log_interval': 1}})
    flood = 500
    out = support.sender(ctx, daemon)
    for _ in range(flood):
        out.send_multipart(support.cast(b'bad..topic'))
    daemon.wait_stats(lambda s: s['rejected'] == {'dot_dot_in_topic': flood})
    # Every rejection is either the message of a line or counted in one:
    # "(and N more like it ...)" is 1 + N, a flush "(N like it ...)" is N.
    # Wait for lines until all 500 are accounted for.
    accounted, lines = 0, []
    while accounted < flood:
        match = daemon.wait_for(
            r'Rejected a message from the network \(dot_dot_in_topic\)')
        line = match.string
        lines.append(line)
        more = re.search(r'\(and (\d+) more like it in the last', line)
        flushed = re.search(r'\((\d+) like it in the last \d+ s\)', line)
        if more:
            accounted += 1 + int(more.group(1))
        elif flushed:
            accounted += int(flushed.group(1))
        else:
            accounted += 1
    assert accounted == flood, lines
    # The flood takes milliseconds: one line for the first message and one
    # reporting the rest; a little slack for a slow machine.
    assert 2 <= len(lines) <= 4, lines
    assert re.search(r'like it in the last \d+ s\)', lines[-1]), lines
    support.close_all(out)


def forward_one(ctx, daemon, topic):
    consumer = pull(ctx, daemon, topic)
    frames = support.cast(topic)
    out = support.sender(ctx, daemon)
    out.send_multipart(frames)
    assert recv(consumer) == frames
    support.close_all(consumer, out)


def test_debug_logs_each_received_message(ctx, daemons, short_dir):
    daemon = daemons(short_dir, args=['--debug'])
    forward_one(ctx, daemon, 'debug.topic')
    daemon.wait_for(r"DEBUG zmq_receiver\.receiver .*Received 4 frames, "
                    r"\d+ bytes, topic b'debug\.topic'")


def test_without_debug_no_per_message_line(ctx, receiver):
    forward_one(ctx, receiver, 'quiet.topic')
    # SIGUSR1 logs the counters from the loop, after the message was
    # handled: once that line is here, a debug line would be too.
    receiver.signal(signal.SIGUSR1)
    receiver.wait_for(r'Counters: received=1 forwarded=1')
    assert not [line for line in receiver.lines
                if re.search(r'Received \d+ frames', line)], receiver.log()
