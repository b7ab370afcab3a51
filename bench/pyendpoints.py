"""Python stand-ins for c/zbench.c, used only when it cannot be compiled.

Same command line, same messages, same lines on stdout; see zbench.c for
the protocol. They cap out well below the receiver's own rate on small
messages, so numbers measured with them understate (a) and (b) most.
"""

import argparse
import os
import resource
import select
import sys
import threading
import time

import zmq

P1 = b'["{}", {"method": "'
P2 = b'", "args": {"t": "'
P3 = b'", "pad": "'
P4 = b'"}}]'
KIND_OFF = len(P1)
T_OFF = KIND_OFF + 1 + len(P2)
T_DIGITS = 20
MIN_BODY = T_OFF + T_DIGITS + len(P3) + len(P4)


def body(size, kind):
    size = max(size, MIN_BODY)
    return (P1 + kind + P2 + b'0' * T_DIGITS + P3 +
            b'x' * (size - MIN_BODY) + P4)


def cpu_us():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return int((ru.ru_utime + ru.ru_stime) * 1e6)


def say(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def read_command():
    data = os.read(0, 256)
    if not data or b'report' in data:
        return 'r'
    return 'g' if b'go' in data else None



def warm_up(sock, topics):
    """Send warm-up casts to every topic until told to go (True) or to
    give up (False), as zbench.c's warm_up."""
    warm = body(MIN_BODY, b'w')
    wait = 0.001
    while True:
        for t in topics:
            sock.send_multipart([b'0', t, b'cast', warm])
        if select.select([0], [], [], wait)[0]:
            c = read_command()
            if c == 'g':
                return True
            if c == 'r':
                return False
        wait = min(wait * 2, 0.05)

def gen(argv):
    p = argparse.ArgumentParser(prog='gen')
    p.add_argument('-s', type=int, default=200)
    p.add_argument('-n', type=int, default=0)
    p.add_argument('-r', type=int, default=0)
    p.add_argument('endpoint')
    p.add_argument('topics', nargs='+')
    a = p.parse_args(argv)
    size = max(a.s, MIN_BODY)
    topics = [t.encode() for t in a.topics]
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(a.endpoint)
    if not warm_up(s, topics):
        return 1
    payload = body(size, b'l' if a.r else b'm')
    t0 = time.monotonic_ns()
    send = s.send_multipart
    if not a.r:
        n = len(topics)
        for i in range(a.n):
            send([b'0', topics[i % n], b'cast', payload])
    else:
        step = 1e9 / a.r
        payload = bytearray(payload)
        for i in range(a.n):
            delay = (t0 + (i + 1) * step - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)  # pacing the probes, not synchronising
            payload[T_OFF:T_OFF + T_DIGITS] = b'%020d' % time.monotonic_ns()
            send([b'0', topics[i % len(topics)], b'cast', bytes(payload)])
    say('sent t0=%d t1=%d' % (t0, time.monotonic_ns()))
    s.close(linger=-1)
    ctx.term()
    say('flushed t2=%d cpu_us=%d' % (time.monotonic_ns(), cpu_us()))
    return 0


def conn(argv):
    p = argparse.ArgumentParser(prog='conn')
    p.add_argument('-s', type=int, default=200)
    p.add_argument('-n', type=int, default=0)
    p.add_argument('-c', type=int, default=8)
    p.add_argument('-k', action='store_true')
    p.add_argument('endpoint')
    p.add_argument('topic')
    a = p.parse_args(argv)
    size = max(a.s, MIN_BODY)
    topic = a.topic.encode()
    ctx = zmq.Context()
    w = ctx.socket(zmq.PUSH)
    w.connect(a.endpoint)
    if not warm_up(w, [topic]):
        return 1
    w.close(linger=-1)
    ctx.term()
    payload = body(size, b'm')

    def sender(count):
        # A socket per message, and a context per message (or, with -k,
        # per sender), as zbench.c's conn does.
        c = zmq.Context() if a.k else None
        for _ in range(count):
            if not a.k:
                c = zmq.Context()
            s = c.socket(zmq.PUSH)
            s.connect(a.endpoint)
            s.send_multipart([b'0', topic, b'cast', payload])
            s.close(linger=-1)
            if not a.k:
                c.term()
        if a.k:
            c.term()
    threads = [threading.Thread(target=sender,
                                args=(a.n // a.c + (k < a.n % a.c),))
               for k in range(a.c)]
    t0 = time.monotonic_ns()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1 = time.monotonic_ns()
    say('sent t0=%d t1=%d connections=%d senders=%d' % (t0, t1, a.n, a.c))
    say('flushed t2=%d cpu_us=%d' % (t1, cpu_us()))
    return 0


def sink(argv):
    p = argparse.ArgumentParser(prog='sink')
    p.add_argument('-n', type=int, required=True)
    p.add_argument('-s', type=int, default=0)
    p.add_argument('-S', action='store_true')
    p.add_argument('-b', action='store_true')
    p.add_argument('-i', type=int, default=0)
    p.add_argument('endpoints', nargs='+')
    a = p.parse_args(argv)
    size = max(a.s, MIN_BODY) if a.s else 0
    ctx = zmq.Context()
    # One socket for every endpoint, as zbench.c does.
    s = ctx.socket(zmq.SUB if a.S else zmq.PULL)
    s.setsockopt(zmq.LINGER, 0)
    if a.S:
        s.setsockopt(zmq.SUBSCRIBE, b'')
    for ep in a.endpoints:
        if a.b:
            s.bind(ep)
            say('endpoint=%s' % s.getsockopt_string(zmq.LAST_ENDPOINT))
        else:
            s.connect(ep)
    st = {'count': 0, 'bad': 0, 'first': 0, 'last': 0}
    lat = []
    warm = set()  # topics whose warm-up arrived: one per endpoint

    def finish():
        line = ('done complete=%d count=%d bad=%d first=%d last=%d '
                'cpu_us=%d' % (st['count'] == a.n, st['count'], st['bad'],
                               st['first'], st['last'], cpu_us()))
        if lat:
            lat.sort()
            n = len(lat)

            def pct(q):
                return lat[min(n - 1, max(0, int(q * n + 0.999999) - 1))]
            line += ' p50=%d p99=%d p999=%d max=%d' % (
                pct(0.5), pct(0.99), pct(0.999), lat[-1])
        say(line)
        os._exit(0)

    poller = zmq.Poller()
    poller.register(0, zmq.POLLIN)
    poller.register(s, zmq.POLLIN)
    while True:
        timeout = a.i if st['count'] and a.i else None
        events = dict(poller.poll(timeout))
        if not events:
            finish()
        if 0 in events and read_command() == 'r':
            finish()
        if s not in events:
            continue
        for _ in range(4096):
            try:
                frames = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            ok = len(frames) == 4 and frames[2] == b'cast'
            kind = frames[3][KIND_OFF:KIND_OFF + 1] if ok else b'?'
            if kind == b'w':
                if len(warm) < len(a.endpoints) and frames[1] not in warm:
                    warm.add(frames[1])
                    if len(warm) == len(a.endpoints):
                        say('ready')
            elif kind in (b'm', b'l') and (
                    kind == b'l' or not size or len(frames[3]) == size):
                now = time.monotonic_ns()
                if kind == b'l':
                    lat.append(now - int(frames[3][T_OFF:T_OFF + T_DIGITS]))
                st['last'] = now
                if not st['count']:
                    st['first'] = now
                st['count'] += 1
                if st['count'] == a.n:
                    finish()
            else:
                st['bad'] += 1


def proxy(argv):
    pub = argv[:1] == ['-p']
    front_ep, back_ep = argv[pub:]
    ctx = zmq.Context()
    front = ctx.socket(zmq.PULL)
    back = ctx.socket(zmq.PUB if pub else zmq.PUSH)
    if pub:
        # Held back rather than dropped, as the receiver's fanout outlet.
        back.setsockopt(zmq.XPUB_NODROP, 1)
    front.bind(front_ep)
    back.bind(back_ep)
    say('endpoint=%s' % front.getsockopt_string(zmq.LAST_ENDPOINT))
    # zmq.proxy is libzmq's own loop; it releases the GIL.
    zmq.proxy(front, back)
    return 0


def main():
    roles = {'gen': gen, 'conn': conn, 'sink': sink, 'proxy': proxy}
    if len(sys.argv) < 2 or sys.argv[1] not in roles:
        sys.exit('usage: python -m bench.pyendpoints gen|conn|sink|proxy '
                 '...')
    sys.exit(roles[sys.argv[1]](sys.argv[2:]))


if __name__ == '__main__':
    main()
