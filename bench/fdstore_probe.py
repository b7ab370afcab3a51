"""What keeping an outlet's listening socket across a restart would buy.

``.venv/bin/python -m bench.fdstore_probe [--runs N]`` measures, for a
consumer PULL that has been retrying its IPC path for a while (as a
service's is while the receiver restarts), the time from the new outlet's
bind to the consumer's first message:

- today: the socket file is made at the bind, and the consumer finds it on
  its next retry (libzmq's RECONNECT_IVL of 100 ms plus a random part as
  long);
- kept: the listening socket outlived the old process (what systemd's fd
  store, FDSTORE=1, would keep), so the consumer's connect succeeded into
  the kernel's accept queue, and the new outlet binds it with ZMQ_USE_FD.

Issue 13 point 2; the receiver does the first (a new PUSH outlet is
joining, and settles SETTLE seconds). Nothing here starts the receiver.
"""

import argparse
import os
import socket
import statistics
import tempfile
import time

import zmq

#: How long the consumer has been retrying before the bind (s): the
#: restart's gap, spread so that the bind falls anywhere in its cycle.
GAP = 0.35
SPREAD = 0.031


def _retrying_consumer(ctx, path, kept):
    """A PULL connecting to *path*; with *kept*, a listener there first."""
    listener = None
    if kept:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(100)
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect('ipc://' + path)
    return pull, listener


def probe(ctx, directory, i, kept):
    """Milliseconds from the bind to the consumer's first message."""
    path = os.path.join(directory, 'p%d' % i)
    pull, listener = _retrying_consumer(ctx, path, kept)
    # Load shaping, not synchronisation: the consumer retries meanwhile.
    time.sleep(GAP + (i % 7) * SPREAD)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    if listener is not None:
        push.setsockopt(zmq.USE_FD, os.dup(listener.fileno()))
    start = time.monotonic()
    push.bind('ipc://' + path)
    push.send(b'x')
    if not pull.poll(5000):
        raise SystemExit('the consumer got nothing within 5 s')
    pull.recv()
    elapsed = (time.monotonic() - start) * 1000
    push.close()
    pull.close()
    if listener is not None:
        listener.close()
    os.unlink(path)
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=20)
    args = parser.parse_args()
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix='zrfd') as directory:
        for name, kept in (('socket file made at the bind', False),
                           ('listener kept (ZMQ_USE_FD)', True)):
            ms = [probe(ctx, directory, i, kept) for i in range(args.runs)]
            print('%-30s bind -> first message: min %6.1f  median %6.1f  '
                  'max %6.1f ms (%d runs)' % (
                      name, min(ms), statistics.median(ms), max(ms),
                      args.runs))
    ctx.term()


if __name__ == '__main__':
    main()
