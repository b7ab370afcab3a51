"""The admin tool's side of the control socket (:mod:`zmq_receiver.control`).

One request, one answer, bounded by a timeout: what ``health``, ``stats``
and ``check`` ask the running receiver.
"""

import zmq

from zmq_receiver import control
from zmq_receiver import errors


def ask(ipc_dir, request, timeout):
    """Send *request* to the receiver serving *ipc_dir*; the JSON answer.

    Raises :class:`errors.ReceiverError` when nobody answers in time.
    """
    path = control.path(ipc_dir)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect('ipc://' + path)
        sock.send(request)
        if not sock.poll(timeout * 1000):
            raise errors.ReceiverError(
                'No receiver answered on %s within %.1f s: is it running, '
                'with this rpc_zmq_ipc_dir, and may this user write to the '
                'socket?' % (path, timeout))
        return control.decode(sock.recv())
    finally:
        sock.close()
