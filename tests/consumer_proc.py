"""A consumer in its own process, for tests where killing it matters.

``python -m tests.consumer_proc ENDPOINT [pull|sub]`` connects a PULL (or a
SUB to everything) to ENDPOINT, then writes one line per message received:
``got <frame 3>``, flushed at once, so that what a SIGKILL takes away is
only what libzmq held for it and it had not printed yet. It runs until it is
killed or its stdin closes. The receive buffers are left at libzmq's
defaults, as a real service has them.
"""

import os
import sys

import zmq


def main(argv):
    endpoint = argv[0]
    kind = argv[1] if len(argv) > 1 else 'pull'
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL if kind == 'pull' else zmq.SUB)
    if kind == 'sub':
        sock.setsockopt(zmq.SUBSCRIBE, b'')
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    out = sys.stdout.buffer
    out.write(b'connected\n')
    out.flush()

    def on_message(frames):
        body = frames[3] if len(frames) > 3 else b''
        out.write(b'got ' + body + b'\n')
        out.flush()

    return serve(sock, on_message)


def serve(sock, on_message, on_input=None):
    """Hand each message of *sock* to *on_message* (its frames) and each
    chunk read from stdin to *on_input*, until stdin closes: then 0."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(0, zmq.POLLIN)
    while True:
        for what, _ in poller.poll():
            if what == 0:
                data = os.read(0, 65536)
                if not data:
                    return 0
                if on_input is not None:
                    on_input(data)
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                on_message(frames)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
