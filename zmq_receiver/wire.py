"""Receiving and sending whole multipart messages, on the hot path.

pyzmq's convenience layer (``send_multipart``, ``recv_multipart``) spends
more time on flag enums and type checks than libzmq spends on the message.
These functions call the compiled backend methods with plain integer flags.

Each part is received as a :class:`zmq.Frame` (``copy=False``), whose
``more`` attribute replaces a ``getsockopt(RCVMORE)`` call per part. Small
parts are then copied into ``bytes``, which is cheaper to keep and to send
again than a frame; large parts stay frames and are sent on without being
copied at all. Measured in one process over inproc, 4-frame messages, per
message: 200 B 6.2 -> 4.4 us, 1 KiB 6.2 -> 4.6 us, 64 KiB 15.9 -> 5.4 us.

The compiled extension ``zmq_receiver._wire`` does the same on libzmq
directly, cheaper still, and adds ``forward``, a whole receive-and-send
loop. Measured the same way (``python -m bench.wire_micro``), receive and
send per message: 200 B 4.1 -> 0.65 us (forward 0.33 us), 64 KiB 4.4 ->
0.84 us (forward 0.54 us). :func:`use_compiled` (called once at start;
nothing happens at import) switches to it when it was built and finds the
libzmq that pyzmq loaded: then :data:`FAST` is true and
:func:`recv_message` and :func:`send_message` are its functions (large parts
are then :class:`zmq_receiver._wire.Part`, not frames). Otherwise
:data:`FAST_PROBLEM` says why and the pure-Python functions, always
available as :func:`py_recv_message` and :func:`py_send_message`, are used.
Setting ``ZMQ_RECEIVER_PURE_PYTHON=1`` in the environment forces them.

:func:`guard_accept`, also called once at start, uses the extension to keep
libzmq from aborting the process when it runs out of descriptors while
accepting a unix connection, whichever loop forwards.
"""

import errno
import glob
import os

import zmq
from zmq import backend as _backend

_recv = _backend.Socket.recv
_send = _backend.Socket.send

_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK

#: Parts at least this long are forwarded as frames, without a copy.
ZERO_COPY_MIN = 4096
#: Bytes each frame of a message costs in every byte limit
#: (max_message_size, the backlogs), beside its content: what a frame costs
#: held, whatever its size (measured: README, "Limits"). Keep in step with
#: _wire.c's FRAME_COST.
FRAME_COST = 64

#: Messages py_send_message found cut after their first part.
_py_rollbacks = 0


def message_cost(frames):
    """The bytes *frames* count as in the limits: content plus
    FRAME_COST per frame."""
    return sum(map(len, frames)) + FRAME_COST * len(frames)


def py_recv_message(sock, max_frames=-1):
    """The next whole message on *sock* as a list of parts.

    The first two parts (message id and topic, which routing reads) are
    always ``bytes``; a later part is ``bytes`` or, from
    :data:`ZERO_COPY_MIN` bytes on, a :class:`zmq.Frame`. Both have
    ``len()`` and :func:`send_message` takes both.

    With *max_frames* of 0 or more, at most ``max_frames + 1`` parts are
    kept (one more than allowed shows that the message is too long); the
    rest are received and discarded, so that a message of millions of empty
    frames never becomes a list of them.

    Raises :class:`zmq.Again` when none is waiting. libzmq delivers a
    multipart message whole, so the parts after the first never wait.
    """
    frame = _recv(sock, _NOBLOCK, False)
    frames = [frame.bytes]
    if frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        frames.append(frame.bytes)
        keep = max_frames + 1 if max_frames >= 0 else -1
        while frame.more:
            frame = _recv(sock, _NOBLOCK, False)
            if len(frames) >= keep > 0:
                _discard(sock, frame.more)
                break
            frames.append(frame if len(frame) >= ZERO_COPY_MIN
                          else frame.bytes)
    return frames


def _discard(sock, more):
    """Receive and drop the rest of a message (about 1 us a frame)."""
    while more:
        more = _recv(sock, _NOBLOCK, False).more


def py_send_message(sock, frames):
    """Send *frames* as one message without blocking.

    Raises :class:`zmq.Again`, with nothing sent, when *sock* cannot take it
    now. That includes a PUSH whose consumer left between two parts: libzmq
    takes back the parts it took (the consumer never sees them) and refuses
    the next, and the message can be sent again, whole (counted in
    :meth:`Implementation.rollbacks`; see :func:`_end_dropped`).
    """
    global _py_rollbacks
    last = len(frames) - 1
    _send(sock, frames[0], _MORE if last else _NOBLOCK)
    part = 1
    try:
        for part in range(1, last):
            _send(sock, frames[part], _MORE)
        part = last
        if last:
            _send(sock, frames[last], _NOBLOCK)
    except zmq.ZMQError as exc:
        _py_rollbacks += 1
        if exc.errno == errno.EAGAIN and part < last:
            _end_dropped(sock)
        raise


def py_send_backlog(sock, backlog):
    """Send messages from the left of *backlog* (a deque of (frames, size)
    pairs) while *sock* takes each one whole, taking it off; returns
    (count, size) of those sent. Stops at the first send that fails in any
    way, that message still first and nothing raised: the caller sends it
    again to learn why (as _wire.send_backlog)."""
    count = size = 0
    while backlog:
        frames, cost = backlog[0]
        try:
            py_send_message(sock, frames)
        except zmq.ZMQError:
            break
        backlog.popleft()
        count += 1
        size += cost
    return count, size


#: libzmq's version, from which its PUSH drops what follows a part it
#: refused in mid-message (see _end_dropped).
_DROPS_AFTER_CUT = (4, 3, 1)


def _end_dropped(sock):
    """After libzmq's PUSH refused, with EAGAIN, a part that said more were
    coming (its consumer left half way through the message), it drops every
    part sent next up to one that says none is, so that the rest of the
    message never reaches another consumer (lb.cpp, libzmq 4.3.1 on). The
    message sent again, whole, would be dropped so, and counted as sent:
    one empty last part ends the dropping at once, and reaches no one.
    (Only a PUSH refuses a part after the first: XPUB takes the whole
    message or refuses its first part.)"""
    if zmq.zmq_version_info() < _DROPS_AFTER_CUT:
        return
    try:
        _send(sock, b'', _NOBLOCK)
    except zmq.ZMQError:
        # The original error is the one to report.
        pass


#: What pyzmq raises for libzmq's errnos, as zmq.error._check_rc does.
_ERRORS = {
    errno.EAGAIN: zmq.Again,
    zmq.ETERM: zmq.ContextTerminated,
    errno.EINTR: zmq.InterruptedSystemCall,
}


def zmq_error(err):
    """The exception pyzmq raises for libzmq's errno *err*: the compiled
    functions raise the same."""
    return _ERRORS.get(err, zmq.ZMQError)(err)


def _backend_file():
    """The file of pyzmq's compiled backend, when it is the Cython one."""
    try:
        from zmq.backend.cython import _zmq
    except ImportError:
        return None
    return getattr(_zmq, '__file__', None)


def _loaded_libzmq(backend):
    """Files that may hold the libzmq in this process: a mapped
    ``libzmq*`` (pyzmq's own copy or the system's), then pyzmq's backend
    extension (which holds it when linked statically)."""
    paths = []
    try:
        with open('/proc/self/maps') as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6:
                    path = fields[5].strip()
                    if (os.path.basename(path).startswith('libzmq') and
                            path not in paths):
                        paths.append(path)
    except OSError:
        pass
    if backend is not None:
        paths.append(backend)
    else:
        cython = os.path.join(os.path.dirname(zmq.__file__), 'backend',
                              'cython')
        paths.extend(sorted(glob.glob(os.path.join(cython, '_zmq*.so'))))
    return paths


def _bind(pure_python_ok=True):
    """The bound extension module, or None and why not. With
    *pure_python_ok*, ZMQ_RECEIVER_PURE_PYTHON makes it None."""
    if pure_python_ok and os.environ.get('ZMQ_RECEIVER_PURE_PYTHON'):
        return None, 'ZMQ_RECEIVER_PURE_PYTHON is set'
    try:
        from zmq_receiver import _wire
    except ImportError as e:
        return None, 'zmq_receiver._wire was not built (%s)' % e
    backend = _backend_file()
    problems = []
    for path in _loaded_libzmq(backend):
        try:
            _wire.bind(path, _backend.Socket, zmq_error, backend)
        except (OSError, RuntimeError) as e:
            problems.append(str(e))
        else:
            return _wire, ''
    return None, 'no usable libzmq in this process: %s' % (
        '; '.join(problems) or 'none found')


class Implementation:
    """One way of receiving and sending whole messages, chosen once at
    start (:func:`implementation`) and handed to the read path.

    ``recv_message(sock, max_frames)``, ``send_message(sock, frames)`` and
    ``send_backlog(sock, backlog)`` as :func:`py_recv_message`,
    :func:`py_send_message` and :func:`py_send_backlog`; ``forward`` the
    compiled loop (see _wire.forward), None in pure Python.
    """

    def __init__(self, name, recv_message, send_message, forward=None,
                 part=None, problem='', module=None,
                 send_backlog=py_send_backlog):
        self.name = name
        #: The extension module, for the compiled one.
        self.module = module
        self.recv_message = recv_message
        self.send_message = send_message
        self.send_backlog = send_backlog
        self.forward = forward
        #: The type of large received parts, when not zmq.Frame.
        self.Part = part
        #: Why the compiled one is not in use ('' when it is).
        self.problem = problem

    @property
    def compiled(self):
        """Whether it is the compiled extension's."""
        return self.forward is not None

    def rollbacks(self):
        """Messages whose send was cut after its first part since the
        start, by this implementation and the pure-Python sends beside it."""
        return _py_rollbacks + (self.module.rollbacks()
                                if self.module is not None else 0)


#: The pure-Python implementation, always available.
PURE_PYTHON = Implementation('pure Python', py_recv_message, py_send_message,
                             problem='use_compiled() was not called')
#: The compiled one once bound (the extension binds once per process).
_compiled = None


def implementation(compiled=True):
    """The compiled implementation when *compiled* and it can be bound
    (see the module's docstring), else :data:`PURE_PYTHON`, or a copy of
    it whose ``problem`` says why not."""
    global _compiled
    if not compiled:
        return PURE_PYTHON
    if _compiled is None:
        module, problem = _bind()
        if module is None:
            return Implementation('pure Python', py_recv_message,
                                  py_send_message, problem=problem)
        _compiled = Implementation(
            'compiled (zmq_receiver._wire)', module.recv_message,
            module.send_message, module.forward, module.Part, module=module,
            send_backlog=module.send_backlog)
    return _compiled


#: Whether the compiled functions are in use; if not, FAST_PROBLEM says why.
FAST = False
FAST_PROBLEM = 'use_compiled() was not called'
# The functions in use: callers look them up here at each call
# (wire.send_message), so that use_compiled() reaches them.
recv_message = py_recv_message
send_message = py_send_message
#: forward(sock, routes, batch, max_size, now, slow, max_bytes): see
#: _wire.forward; None without the extension.
forward = None
#: The compiled type of large received parts; None without the extension.
Part = None


def use_compiled():
    """Use the compiled functions from now on, when they can be; returns
    :data:`FAST`. Call it once at start, before any message is received:
    parts received by one implementation are sent by either, but a
    process should not mix them without reason.

    It sets this module's functions (:func:`recv_message`,
    :func:`send_message`, :data:`forward`) to :func:`implementation`'s,
    for the callers that look them up here (the tests, the benchmarks).
    The receiver does not: it is handed its :class:`Implementation` at
    start (``startup.choose_wire``).
    """
    global FAST, FAST_PROBLEM, recv_message, send_message, forward, Part
    if FAST:
        return True
    chosen = implementation()
    FAST_PROBLEM = chosen.problem
    if chosen.compiled:
        FAST = True
        recv_message = chosen.recv_message
        send_message = chosen.send_message
        forward = chosen.forward
        Part = chosen.Part
    return FAST


#: Why libzmq's accept is not guarded, '' when it is: see guard_accept().
ACCEPT_GUARD_PROBLEM = 'guard_accept() was not called'


def guard_accept():
    """Keep libzmq from aborting the process when it cannot accept a unix
    connection for want of a descriptor; returns whether it now cannot
    (else :data:`ACCEPT_GUARD_PROBLEM` says why). Call it once at start,
    before the sockets bind.

    libzmq 4.3's IPC listener aborts on EMFILE from ``accept`` (an
    errno_assert) and retries on ENFILE, as its TCP listener does on both.
    The accept runs on libzmq's I/O thread, where nothing in Python can
    catch it: ``zmq_receiver._wire.guard_accept`` points libzmq's own
    relocation slots for accept4 and accept at wrappers that report EMFILE
    on a unix socket as ENFILE. It needs the extension, whichever loop
    forwards (ZMQ_RECEIVER_PURE_PYTHON does not turn it off), and leaves
    everything as it was when libzmq does not look as expected. Setting
    ``ZMQ_RECEIVER_NO_ACCEPT_PATCH=1`` turns it off, for the test that
    shows the abort it prevents.
    """
    global ACCEPT_GUARD_PROBLEM
    if os.environ.get('ZMQ_RECEIVER_NO_ACCEPT_PATCH'):
        ACCEPT_GUARD_PROBLEM = 'ZMQ_RECEIVER_NO_ACCEPT_PATCH is set'
        return False
    module, problem = _bind(pure_python_ok=False)
    if module is not None:
        problem = module.guard_accept()
    ACCEPT_GUARD_PROBLEM = problem
    return not problem


def guarded_emfiles():
    """Unix connections libzmq could not accept for want of a descriptor
    since the start, which the guard kept from aborting the process."""
    if ACCEPT_GUARD_PROBLEM:
        return 0
    from zmq_receiver import _wire
    return _wire.guarded_emfiles()
