"""Micro benchmark of zmq_receiver.wire: CPU per message of the hot path.

    .venv/bin/python -m bench.wire_micro
    .venv/bin/python -m bench.wire_micro --count 50000 --repeat 7 \
        --sizes 200,1024,65536

In one process, over inproc, with legacy 4-frame messages
``[msg_id, topic, b'', body]``::

    source PUSH -> inbound PULL -> (step measured) -> outlet PUSH -> sink PULL

The source fills the inbound socket with a batch of messages, the step
measured moves the batch from the inbound socket to the outlet, and the sink
empties the outlet; only the middle step is timed, with
``time.process_time`` (this process's CPU, so other load on the machine
matters little), and reported in microseconds per message:

- ``py``: ``wire.py_recv_message`` + ``wire.py_send_message`` per message,
  the pure-Python functions;
- ``c``: ``wire.recv_message`` + ``wire.send_message`` (the compiled
  ``zmq_receiver._wire``) per message;
- ``forward``: ``_wire.forward`` over the whole batch, in calls of
  ``reading.INBOUND_BATCH`` messages, each sent straight to the outlet
  (the direct path: routes lookup and outlet counters included).

None of them include the receiver's own per-message Python (``dispatch``,
``Outlets.deliver``, counters), which ``py`` and ``c`` would add and
``forward`` replaces. Each figure is the median of ``--repeat`` runs of
``--count`` messages; the min-max spread follows it.
"""

import argparse
import itertools
import statistics
import sys
import time

import zmq

from zmq_receiver import reading
from zmq_receiver import wire

BATCH = 500  # messages in flight; well under inproc's default HWM (2000)
TOPIC = b'compute.host1'
_ids = itertools.count()


class Outlet:
    __slots__ = ('direct', 'forwarded', 'last_active')


def sockets(ctx):
    """(source, inbound, outlet, sink), connected over inproc."""
    pairs = []
    for _ in range(2):
        # A fresh name each time: libzmq unbinds a closed one later.
        endpoint = 'inproc://wire-micro-%d' % next(_ids)
        pull = ctx.socket(zmq.PULL)
        pull.bind(endpoint)
        push = ctx.socket(zmq.PUSH)
        push.connect(endpoint)
        pairs.append((push, pull))
    (source, inbound), (outlet, sink) = pairs
    return source, inbound, outlet, sink


def fill(source, frames, n):
    for _ in range(n):
        source.poll(10000, zmq.POLLOUT)
        wire.send_message(source, frames)


def empty(sink, n):
    for _ in range(n):
        sink.poll(10000)
        wire.recv_message(sink)


def step_py(inbound, outlet, n):
    recv, send = wire.py_recv_message, wire.py_send_message
    for _ in range(n):
        send(outlet, recv(inbound))


def step_c(inbound, outlet, n):
    recv, send = wire.recv_message, wire.send_message
    for _ in range(n):
        send(outlet, recv(inbound))


def make_step_forward(outlet_sock):
    outlet = Outlet()
    outlet.direct = outlet_sock
    outlet.forwarded = 0
    outlet.last_active = 0.0
    routes = {TOPIC: outlet}

    def slow(parts):
        raise AssertionError('forward() took the slow path')

    def step_forward(inbound, _outlet, n):
        forward, batch = wire.forward, reading.INBOUND_BATCH
        done = 0
        while done < n:
            done += forward(inbound, routes, min(batch, n - done), 1 << 30,
                            1.0, slow)
    return step_forward


def measure(step, frames, count, ctx):
    """CPU seconds per message of *step* moving *count* messages."""
    source, inbound, outlet, sink = sockets(ctx)
    if step is None:
        step = make_step_forward(outlet)
    spent = 0.0
    left = count
    try:
        while left:
            n = min(BATCH, left)
            fill(source, frames, n)
            start = time.process_time()
            step(inbound, outlet, n)
            spent += time.process_time() - start
            empty(sink, n)
            left -= n
    finally:
        for sock in (source, inbound, outlet, sink):
            sock.close(linger=0)
    return spent / count


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m bench.wire_micro',
        description=__doc__.split('\n\n')[0])
    parser.add_argument('--count', type=int, default=20000,
                        help='messages per run (default %(default)s)')
    parser.add_argument('--repeat', type=int, default=5,
                        help='runs per figure (default %(default)s)')
    parser.add_argument('--sizes', default='200,65536',
                        help='body sizes in bytes (default %(default)s)')
    args = parser.parse_args(argv)
    if not wire.use_compiled():
        print('The compiled zmq_receiver._wire is not in use: %s'
              % wire.FAST_PROBLEM, file=sys.stderr)
        return 1
    steps = [('py', step_py), ('c', step_c), ('forward', None)]
    sizes = [int(s) for s in args.sizes.split(',')]
    ctx = zmq.Context()
    print('us/message (CPU, median of %d x %d messages, [min-max])'
          % (args.repeat, args.count))
    print('%-8s' % 'body' + ''.join('%22s' % name for name, _ in steps))
    for size in sizes:
        frames = [b'0123456789abcdef', TOPIC, b'', b'x' * size]
        # Interleaved, so that drift on a shared machine hits all alike.
        runs = {name: [] for name, _ in steps}
        measure(step_c, frames, min(args.count, 2000), ctx)  # warm up
        for _ in range(args.repeat):
            for name, step in steps:
                runs[name].append(measure(step, frames, args.count, ctx)
                                  * 1e6)
        cells = ['%8.2f [%.2f-%.2f]' % (statistics.median(r), min(r), max(r))
                 for r in (runs[name] for name, _ in steps)]
        print('%-8s' % size + ''.join('%22s' % c for c in cells))
    ctx.term()
    return 0


if __name__ == '__main__':
    sys.exit(main())
