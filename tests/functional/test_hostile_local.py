"""Hostile local peers and hostile frame counts, through the real daemon
(issue 12, defects 3 to 5).

A member of the socket group may connect to every outlet and to the
control socket; a network peer may send messages of any number of frames.
Each attack here runs as such a peer would run it: a flood of control
requests from DEALER sockets that never read their replies, about a
thousand unix connections held to the outlets and the control socket under
a low descriptor limit, HTTP connections held to the metrics port beside
200 concurrent scrapes, and messages of millions of empty frames. After
each, the daemon is up, a normal cast arrives, the counters balance and
its memory is within the bound stated here.
"""

import collections
import concurrent.futures
import re
import resource
import socket
import subprocess
import sys
import time

import pytest
import zmq

from tests import support
from tests.support import assert_balanced, cast, pull, recv, rss_kib
from tests.support import open_files, wait_until
# Every test here runs on the compiled and the pure-Python path.
from tests.support import daemons_on_both_paths as daemons  # noqa: F401
from tests.functional.test_observability import http_get, metrics_url
from zmq_receiver import control
from zmq_receiver import exporter
from zmq_receiver import metrics
from zmq_receiver import receiver as receiver_mod
from zmq_receiver import wire


def forward_casts(out, consumer, key, count, tag, timeout=30):
    """Send *count* casts to *key* and receive them all, in order; the
    seconds it took (printed, never asserted: the machine is shared)."""
    started = time.monotonic()
    sent = [cast(key, b'%s %d' % (tag, i)) for i in range(count)]
    for frames in sent:
        out.send_multipart(frames)
    got = [recv(consumer, timeout=timeout) for _ in range(count)]
    assert got == sent
    return time.monotonic() - started


# -- a flood of control requests -----------------------------------------

#: Four local peers, each a DEALER that sends without ever reading: a
#: REQ-shaped request, a bare one, a malformed one (too many frames) and
#: an unknown one, as fast as its libzmq takes them.
FLOODER = r'''
import sys, zmq
ctx = zmq.Context()
shapes = [[b'', b'stats'], [b'stats'], [b'x'] * 10, [b'', b'y' * 200]]
peers = []
for shape in shapes:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(sys.argv[1])
    peers.append((s, shape))
print('flooding', flush=True)
while True:
    for s, shape in peers:
        try:
            s.send_multipart(shape, zmq.NOBLOCK)
        except zmq.Again:
            pass
'''

#: What a control flood may add to the daemon's RSS: a few requests and
#: replies queued per peer (CONTROL_HWM), and the one snapshot reused.
CONTROL_FLOOD_RSS_KIB = 16 * 1024
#: Fewer than the outlet's backlog (1000): none may be dropped.
PROBES = 900


def test_control_flood_does_not_stop_forwarding(ctx, daemons, short_dir):
    daemon = daemons(short_dir)
    key = 'probe.host1'
    consumer = pull(ctx, daemon, key)
    out = support.sender(ctx, daemon)
    # The consumer is connected before the casts are timed.
    forward_casts(out, consumer, key, 1, b'first')
    quiet = forward_casts(out, consumer, key, PROBES, b'quiet')
    rss0 = rss_kib(daemon.proc.pid)
    flooder = subprocess.Popen(
        [sys.executable, '-c', FLOODER,
         'ipc://' + control.path(daemon.ipc_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert flooder.stdout.readline() == 'flooding\n'
        # Until every kind of request was seen, and the replies of the
        # peers that never read were refused.
        stats = daemon.wait_stats(lambda s: all(
            s['control'].get(outcome, 0) > 10 for outcome in (
                metrics.CONTROL_PEER_FULL, metrics.CONTROL_MALFORMED,
                metrics.CONTROL_UNKNOWN)))
        flooded = forward_casts(out, consumer, key, PROBES, b'flood')
        # The operator's own request is still answered meanwhile, with
        # figures at most a tick old (the flood used up the fresh ones).
        stats = daemon.wait_stats(
            lambda s: s['forwarded'] == 2 * PROBES + 1)
        rss1 = rss_kib(daemon.proc.pid)
        assert flooder.poll() is None
    finally:
        flooder.kill()
        flooder.wait()
    print('CONTROL FLOOD: %d casts in %.2f s quiet, %.2f s flooded; RSS '
          '%d -> %d KiB; control %s' % (PROBES, quiet, flooded, rss0, rss1,
                                        stats['control']))
    assert stats['dropped'] == {} and stats['rejected'] == {}
    assert_balanced(stats)
    assert rss1 - rss0 <= CONTROL_FLOOD_RSS_KIB, (rss0, rss1)
    assert daemon.proc.poll() is None
    forward_casts(out, consumer, key, 1, b'after')
    support.close_all(consumer, out)


# -- messages of very many frames ----------------------------------------

#: What RSS may keep, once the housekeeping tick has run, after the frame
#: floods below (measured: 0 to 8 MiB on both paths). libzmq holds each
#: message whole while it arrives (64 bytes a frame: 3 million empty frames
#: are 190 MiB for a moment); the receiver keeps at most max_frames + 1 of
#: them, rejects the message and gives the freed memory back.
FRAME_FLOOD_RSS_KIB = 24 * 1024


# Messages of millions of frames, each built, sent and rejected, then the
# memory watched coming back: minutes under load.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_frame_floods_are_rejected_and_memory_comes_back(ctx, daemons,
                                                         short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'idle_timeout': 600}})
    pid = daemon.proc.pid
    key = 'steady.host1'
    consumer = pull(ctx, daemon, key)
    out = support.sender(ctx, daemon)
    forward_casts(out, consumer, key, 1, b'before')
    rss0 = rss_kib(pid)
    # Within the cap: accepted, and each frame costs FRAME_COST.
    longest = [b'id', b'nobody.long'] + [b''] * 30
    out.send_multipart(longest)
    stats = daemon.wait_stats(lambda s: s['received'] == 2)
    assert stats['queued_bytes'] == wire.message_cost(longest) == (
        2 + 11 + 32 * wire.FRAME_COST)
    # One frame more: rejected under its own reason.
    out.send_multipart(longest + [b''])
    # wire.send_message: pyzmq's send_multipart would take minutes.
    wire.send_message(out, [b'id', b'nobody.one'] + [b''] * 3000000)
    forward_casts(out, consumer, key, 1, b'after one')
    for i in range(300):
        wire.send_message(out, [b'id', b'nobody.%d' % i] + [b''] * 100000)
    # The pure-Python loop takes about 1 us to discard each frame: 30
    # million of them hold it for half a minute (the compiled one, 3 s).
    forward_casts(out, consumer, key, 1, b'after 300', timeout=120)
    stats = daemon.wait_stats(lambda s: s['received'] == 306)
    assert stats['rejected'] == {metrics.TOO_MANY_FRAMES: 302}
    assert stats['queued'] == 1
    assert stats['queued_bytes'] == wire.message_cost(longest)
    assert stats['dropped'] == {}
    assert_balanced(stats)
    peak = rss_kib(pid)
    # The tick after the rejections gives libzmq's share back.
    wait_until(lambda: rss_kib(pid) - rss0 <= FRAME_FLOOD_RSS_KIB,
               'RSS within %d KiB of %d KiB (now %d)' % (
                   FRAME_FLOOD_RSS_KIB, rss0, rss_kib(pid)))
    print('FRAME FLOOD: RSS %d KiB before, %d after the floods, %d a tick '
          'later' % (rss0, peak, rss_kib(pid)))
    assert 'Rejected a message from the network (too_many_frames): more ' \
        'than the 32 frames of [zmq_receiver] max_frames' in daemon.log()
    forward_casts(out, consumer, key, 1, b'last')
    assert daemon.proc.poll() is None
    support.close_all(consumer, out)


# -- unix connections held to every local socket -------------------------

#: The daemon's descriptor limit for the connection attacks.
LOW_NOFILE = 256
#: Raw unix connections the attacker opens and holds.
HELD = 1000
#: A ZMTP 3.0 greeting (NULL mechanism): a peer that then says nothing.
GREETING = (b'\xff' + b'\x00' * 8 + b'\x7f' + b'\x03\x00' +
            b'NULL'.ljust(20, b'\x00') + b'\x00' + b'\x00' * 31)


def raise_own_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip('RLIMIT_NOFILE hard limit %d < %d' % (hard, wanted))
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def hold_unix(path, greet):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(support.TIMEOUT)
    deadline = time.monotonic() + support.TIMEOUT
    while True:
        try:
            conn.connect(path)
            break
        except BlockingIOError:
            # The listen backlog is full until libzmq accepts more.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    if greet:
        try:
            conn.sendall(GREETING)
        except OSError:
            pass  # refused and shut down already: fine
    return conn


def test_held_unix_connections_never_exhaust_descriptors(ctx, daemons,
                                                         short_dir):
    raise_own_limit(HELD + 512)
    daemon = daemons(short_dir, {'zmq_receiver': {'max_topics': 8}},
                     nofile=LOW_NOFILE)
    pid = daemon.proc.pid
    key = 'held.host1'
    consumer = pull(ctx, daemon, key)
    subscriber = support.sub(ctx, daemon, 'fanout~held')
    out = support.sender(ctx, daemon)
    forward_casts(out, consumer, key, 1, b'before')
    fanout = cast('fanout~held.h', b'fan')
    out.send_multipart(fanout)
    assert recv(subscriber) == fanout
    before = daemon.stats()
    assert before['local_connections'] == 2 + 1  # and the stats request
    targets = [daemon.path(key), daemon.path('fanout~held'),
               control.path(daemon.ipc_dir)]
    conns = []
    try:
        for i in range(HELD):
            conns.append(hold_unix(targets[i % 3], i % 2))
            assert daemon.proc.poll() is None, daemon.log()[-2000:]
        files = open_files(pid)
        # Forwarding goes on, and a consumer of another outlet gets in.
        forward_casts(out, consumer, key, 1, b'during')
        fresh = pull(ctx, daemon, 'fresh.host1')
        frames = cast('fresh.host1', b'new consumer')
        out.send_multipart(frames)
        assert recv(fresh) == frames
        assert daemon.proc.poll() is None
    finally:
        for conn in conns:
            conn.close()
    # Their connections closed, the control socket answers again.
    stats = daemon.wait_stats(lambda s: s['local_connections'] == 3 + 1)
    denied = stats['denied']
    print('HELD %d unix connections under ulimit -n %d: open files %d, '
          'denied %s' % (HELD, LOW_NOFILE, files, denied))
    assert files < LOW_NOFILE
    assert set(denied) == {'too_many_consumer_connections',
                           'too_many_control_connections'}
    # Each socket took its share (a quarter of an eighth of the limit),
    # and refused the rest.
    per_socket = LOW_NOFILE // 8 // 4
    assert sum(denied.values()) >= HELD - 3 * per_socket
    assert_balanced(stats)
    forward_casts(out, consumer, key, 1, b'after')
    assert daemon.proc.poll() is None
    support.close_all(consumer, subscriber, out, fresh)


# -- the metrics port: held connections and 200 scrapes at once ----------

#: Connections the attacker holds open without finishing a request: twice
#: the workers, so that some wait in the listen backlog.
HELD_HTTP = 2 * exporter.HTTP_WORKERS
SCRAPERS = 200


def test_metrics_answer_200_scrapes_beside_held_connections(ctx, daemons,
                                                            short_dir):
    daemon = daemons(short_dir, {'zmq_receiver': {'metrics_port': 0}},
                     nofile=LOW_NOFILE)
    url = metrics_url(daemon)
    host, port = url[len('http://'):].rsplit(':', 1)
    key = 'scraped.host1'
    consumer = pull(ctx, daemon, key)
    out = support.sender(ctx, daemon)
    forward_casts(out, consumer, key, 1, b'before')
    held = []
    try:
        for i in range(HELD_HTTP):
            conn = socket.create_connection((host, int(port)),
                                            timeout=support.TIMEOUT)
            if i % 2:
                conn.sendall(b'GET /metrics HTTP/1.1\r\n')  # and no more
            held.append(conn)
        with concurrent.futures.ThreadPoolExecutor(SCRAPERS) as pool:
            # Each waits its turn behind the held connections, which are
            # cut HTTP_REQUEST_TIMEOUT after their accept.
            answers = list(pool.map(
                lambda _: http_get(url + '/metrics', timeout=60),
                range(SCRAPERS)))
        files = open_files(daemon.proc.pid)
        statuses = collections.Counter(status for status, _ in answers)
        assert statuses == {200: SCRAPERS}, statuses
        # Every held connection was closed by the receiver: end of stream.
        for conn in held:
            conn.settimeout(exporter.HTTP_REQUEST_TIMEOUT + 30)
            try:
                while conn.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for conn in held:
            conn.close()
    status, body = http_get(url + '/metrics', timeout=support.TIMEOUT)
    assert status == 200
    cut = float(re.search(r'^zmq_receiver_http_timed_out_total (\S+)$',
                          body, re.M).group(1))
    print('SCRAPES: %d answered beside %d held connections; %d cut at '
          'their deadline; open files %d' % (SCRAPERS, HELD_HTTP, cut,
                                             files))
    # (A scrape slower than the deadline would be cut too.)
    assert cut >= HELD_HTTP
    assert files < LOW_NOFILE
    forward_casts(out, consumer, key, 1, b'after')
    assert_balanced(daemon.stats())
    assert daemon.proc.poll() is None
    support.close_all(consumer, out)
