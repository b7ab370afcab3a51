"""Benchmarks of the receiver against the physical limit (issue 6).

``./dev bench`` (or ``make bench``, or ``python -m bench``) measures, with
one traffic generator and the same consumers:

(a) a direct PUSH -> PULL connection over TCP loopback: the transport limit;
(b) libzmq's own ``zmq_proxy`` from a TCP PULL to one IPC PUSH: the
    forwarding limit, no demultiplexing;
(c) the real receiver process: 1 topic; 100 topics over 4 consumer
    processes; one fanout topic to 4 subscribers;

plus latency one message at a time through (a), (b) and (c). The endpoints
are small C programs (``c/zbench.c``) compiled at bench time against the
libzmq inside pyzmq. See ``run.py`` for the order of runs and the report.
"""
