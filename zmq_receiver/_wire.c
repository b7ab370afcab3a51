/* zmq_receiver._wire: the message hot path, on libzmq directly.
 *
 * wire.py's pure-Python functions spend most of their time in pyzmq's
 * per-frame objects and calls; these do the same work on zmq_msg_t's.
 *
 * Nothing here links against libzmq or needs zmq.h: bind() resolves the few
 * functions used from the libzmq that pyzmq has already loaded (dlopen with
 * RTLD_NOLOAD), so that sockets made by pyzmq are used by the very library
 * that made them, and a second copy of libzmq can never be loaded.
 *
 * Every libzmq call here is non-blocking (ZMQ_DONTWAIT), so the GIL is held
 * throughout: releasing and taking it again would cost more than the call.
 * The module keeps its state in statics (one libzmq per process), so it
 * does not support subinterpreters.
 *
 * guard_accept() also changes how that libzmq sees a failed accept (see
 * "the accept guard"): the one thing here that reaches its I/O thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef RTLD_NOLOAD
#error "needs RTLD_NOLOAD (glibc, musl)"
#endif

/* libzmq's stable ABI, as in its zmq.h (bench/c/zmq_min.h): 64 bytes is
 * the largest zmq_msg_t of any 4.x release, so it is safe for all. */
typedef struct zmq_msg_t {
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
} zmq_msg_t;

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2
#ifndef ENOTSOCK
#define ENOTSOCK 88
#endif

/* Parts from this size on (after the first two) stay zmq messages. Keep in
 * step with wire.ZERO_COPY_MIN. */
#define ZERO_COPY_MIN 4096

/* Parts held on the C stack per message; longer messages still work, the
 * rest of their parts go straight into the Python list. */
#define MAX_PARTS 16

/* Bytes each part costs in the receiver's byte limits beside its content.
 * Keep in step with wire.FRAME_COST. */
#define FRAME_COST 64

/* Parts kept of a message when at most *max_frames* are allowed (-1: no
 * limit): one more than allowed shows that it has too many; the rest are
 * received and discarded. */
static Py_ssize_t
parts_kept(Py_ssize_t max_frames)
{
    return max_frames < 0 || max_frames >= PY_SSIZE_T_MAX - 1 ?
        PY_SSIZE_T_MAX : max_frames + 1;
}

/* *keep* from a max_frames argument: 0, or -1 with an exception set. */
static int
keep_arg(PyObject *arg, Py_ssize_t *keep)
{
    Py_ssize_t max_frames = PyLong_AsSsize_t(arg);

    if (max_frames == -1 && PyErr_Occurred())
        return -1;
    *keep = parts_kept(max_frames);
    return 0;
}

/* libzmq's functions, resolved by bind(). */
struct api {
    void (*version)(int *, int *, int *);
    int (*msg_init)(zmq_msg_t *);
    int (*msg_init_size)(zmq_msg_t *, size_t);
    int (*msg_recv)(zmq_msg_t *, void *, int);
    int (*msg_send)(zmq_msg_t *, void *, int);
    int (*msg_close)(zmq_msg_t *);
    int (*msg_copy)(zmq_msg_t *, zmq_msg_t *);
    int (*msg_move)(zmq_msg_t *, zmq_msg_t *);
    void *(*msg_data)(zmq_msg_t *);
    size_t (*msg_size)(const zmq_msg_t *);
    int (*msg_more)(const zmq_msg_t *);
    int (*errno_)(void);
    const char *(*strerror)(int);
};
static struct api Z;
static void *bound_lib = NULL;

/* error(errno) -> the exception pyzmq raises for it (wire.zmq_error). */
static PyObject *ErrorFor = NULL;
/* zmq.backend.Socket: the only objects whose handle is used. */
static PyTypeObject *SocketType = NULL;
/* Messages a send cut mid-way (a consumer left between two parts: libzmq's
 * PUSH takes the parts back and refuses the next), for rollbacks(). */
static unsigned long long cut_sends = 0;
/* Whether the bound libzmq's PUSH drops what follows a part it refused in
 * mid-message (4.3.1 on): see end_dropped(). */
static int drops_after_cut = 0;

static PyObject *s_underlying, *s_direct, *s_forwarded, *s_last_active,
    *s_popleft;

/* ---- errors ------------------------------------------------------------ */

/* Raise what pyzmq raises for *err* (zmq.Again for EAGAIN, whichever part
 * it came from; zmq.ContextTerminated for ETERM; zmq.ZMQError otherwise),
 * so callers catch what they catch from pyzmq. Always returns NULL. */
static PyObject *
raise_zmq(int err)
{
    PyObject *exc = PyObject_CallFunction(ErrorFor, "i", err);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static int
check_bound(void)
{
    if (bound_lib == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "zmq_receiver._wire: bind() was not called");
        return -1;
    }
    return 0;
}

/* The libzmq socket behind *sock*, a pyzmq Socket: its ``underlying``
 * address, read now. Anything else is a TypeError: a bare address may be
 * stale (its socket closed and freed), and libzmq would crash on it. pyzmq
 * sets ``underlying`` to 0 on close: then NULL with no exception. */
static void *
open_handle(PyObject *sock)
{
    PyObject *addr;
    void *handle;

    if (!PyObject_TypeCheck(sock, SocketType)) {
        PyErr_Format(PyExc_TypeError, "expected a zmq.Socket, not %.100s",
                     Py_TYPE(sock)->tp_name);
        return NULL;
    }
    addr = PyObject_GetAttr(sock, s_underlying);
    if (addr == NULL)
        return NULL;
    handle = PyLong_AsVoidPtr(addr);
    Py_DECREF(addr);
    return handle;
}

/* open_handle, with ENOTSOCK raised for a closed socket. */
static void *
socket_handle(PyObject *sock)
{
    void *handle = open_handle(sock);

    if (handle == NULL && !PyErr_Occurred())
        raise_zmq(ENOTSOCK);
    return handle;
}

/* ---- Part -------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    zmq_msg_t msg;
} PartObject;

static PyTypeObject PartType;

static void
part_dealloc(PartObject *self)
{
    /* Buffers exported from the part hold a reference to it, so none can
     * outlive the message. */
    Z.msg_close(&self->msg);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
part_length(PartObject *self)
{
    return (Py_ssize_t)Z.msg_size(&self->msg);
}

static int
part_getbuffer(PartObject *self, Py_buffer *view, int flags)
{
    /* Read-only: the same content may be queued in libzmq for other
     * sockets (zmq_msg_copy shares it). */
    return PyBuffer_FillInfo(view, (PyObject *)self, Z.msg_data(&self->msg),
                             (Py_ssize_t)Z.msg_size(&self->msg), 1, flags);
}

static PyObject *
part_bytes(PartObject *self, void *closure)
{
    return PyBytes_FromStringAndSize(Z.msg_data(&self->msg),
                                     (Py_ssize_t)Z.msg_size(&self->msg));
}

static PyObject *
part_repr(PartObject *self)
{
    return PyUnicode_FromFormat("<_wire.Part %zd bytes>",
                                (Py_ssize_t)Z.msg_size(&self->msg));
}

static PySequenceMethods part_as_sequence = {
    .sq_length = (lenfunc)part_length,
};

static PyBufferProcs part_as_buffer = {
    .bf_getbuffer = (getbufferproc)part_getbuffer,
};

static PyGetSetDef part_getset[] = {
    {"bytes", (getter)part_bytes, NULL, "A copy of the content.", NULL},
    {NULL},
};

static PyTypeObject PartType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zmq_receiver._wire.Part",
    .tp_basicsize = sizeof(PartObject),
    .tp_dealloc = (destructor)part_dealloc,
    .tp_repr = (reprfunc)part_repr,
    .tp_as_sequence = &part_as_sequence,
    .tp_as_buffer = &part_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One received message part, kept as libzmq's message so that "
              "send_message\nsends it on without a copy (and may do so "
              "again). len(), read-only\nbuffer, .bytes for a copy. Made "
              "only by recv_message and forward.",
    .tp_getset = part_getset,
};

/* ---- receiving --------------------------------------------------------- */

/* Part *index* of a message as a Python object; consumes *msg* (closed or
 * moved) whatever happens. */
static PyObject *
part_object(zmq_msg_t *msg, Py_ssize_t index)
{
    size_t size = Z.msg_size(msg);
    PyObject *obj;

    if (index < 2 || size < ZERO_COPY_MIN) {
        obj = PyBytes_FromStringAndSize(Z.msg_data(msg), (Py_ssize_t)size);
        Z.msg_close(msg);
        return obj;
    }
    obj = (PyObject *)PyObject_New(PartObject, &PartType);
    if (obj == NULL) {
        Z.msg_close(msg);
        return NULL;
    }
    /* zmq_msg_move, not a struct copy: a small message keeps its data
     * inside the zmq_msg_t itself. */
    Z.msg_init(&((PartObject *)obj)->msg);
    Z.msg_move(&((PartObject *)obj)->msg, msg);
    Z.msg_close(msg);
    return obj;
}

/* zmq_msg_recv / zmq_msg_send, again after EINTR (a signal arrived during
 * libzmq's command processing; DONTWAIT does not prevent that). 0, an
 * errno, or -1 with an exception set. *at_start* (no part of the message
 * taken or given yet) runs the Python signal handlers first, as pyzmq does,
 * so that Ctrl-C or a handler's exception is seen; in mid-message the rest
 * is there already, so the call is simply made again. */
static unsigned long handlers_ran = 0;  /* forward() reads state again */

/* zmq_msg_recv or zmq_msg_send (same signature), made again after EINTR. */
static int
msg_op(int (*op)(zmq_msg_t *, void *, int), zmq_msg_t *msg, void *sock,
       int flags, int at_start)
{
    for (;;) {
        int err;

        if (op(msg, sock, flags) >= 0)
            return 0;
        err = Z.errno_();
        if (err != EINTR)
            return err;
        if (at_start) {
            handlers_ran++;
            if (PyErr_CheckSignals() < 0)
                return -1;
        }
    }
}

static int
recv_msg(zmq_msg_t *msg, void *sock, int at_start)
{
    return msg_op(Z.msg_recv, msg, sock, ZMQ_DONTWAIT, at_start);
}

static int
send_msg(zmq_msg_t *msg, void *sock, int flags, int at_start)
{
    return msg_op(Z.msg_send, msg, sock, flags, at_start);
}

/* After a failure half way through a message: take in its remaining parts,
 * so that the next receive starts at a message boundary. */
static void
drain(void *sock, int more)
{
    zmq_msg_t msg;

    while (more) {
        Z.msg_init(&msg);
        if (recv_msg(&msg, sock, 0) != 0) {
            Z.msg_close(&msg);
            return;
        }
        more = Z.msg_more(&msg);
        Z.msg_close(&msg);
    }
}

static void
close_msgs(zmq_msg_t *msgs, int n)
{
    for (int i = 0; i < n; i++)
        Z.msg_close(&msgs[i]);
}

/* Receive parts into msgs[0..MAX_PARTS) until the last part, the array
 * is full or *keep* parts are held. Returns the number received (0:
 * nothing waits) and sets *more when parts remain; -1 with an exception set
 * and nothing held. *total is their size with FRAME_COST each. The first
 * part may be refused with EAGAIN; libzmq hands over whole messages, so a
 * later one never is. */
static int
recv_parts(void *sock, zmq_msg_t *msgs, int *more, size_t *total,
           Py_ssize_t keep)
{
    int n = 0;

    *more = 1;
    *total = 0;
    while (*more && n < MAX_PARTS && n < keep) {
        int err;

        Z.msg_init(&msgs[n]);
        err = recv_msg(&msgs[n], sock, n == 0);
        if (err != 0) {
            close_msgs(msgs, n + 1);
            if (n == 0 && err == EAGAIN)
                return 0;
            if (err > 0)
                raise_zmq(err);
            return -1;
        }
        *total += Z.msg_size(&msgs[n]) + FRAME_COST;
        *more = Z.msg_more(&msgs[n]);
        n++;
    }
    return n;
}

/* The list recv_message returns, from the *n* parts held in *msgs* (all
 * consumed) and, when *more*, the parts still waiting on *sock*, up to
 * *keep* parts in all: the rest of a longer message is discarded. */
static PyObject *
parts_list(void *sock, zmq_msg_t *msgs, int n, int more, Py_ssize_t keep)
{
    PyObject *list = PyList_New(n);
    Py_ssize_t index;

    if (list == NULL) {
        close_msgs(msgs, n);
        drain(sock, more);
        return NULL;
    }
    for (index = 0; index < n; index++) {
        PyObject *obj = part_object(&msgs[index], index);
        if (obj == NULL) {
            close_msgs(msgs + index + 1, n - (int)index - 1);
            drain(sock, more);
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, index, obj);
    }
    while (more && index < keep) {
        zmq_msg_t msg;
        PyObject *obj;
        int rc;

        Z.msg_init(&msg);
        rc = recv_msg(&msg, sock, 0);
        if (rc != 0) {
            Z.msg_close(&msg);
            Py_DECREF(list);
            return rc > 0 ? raise_zmq(rc) : NULL;
        }
        more = Z.msg_more(&msg);
        obj = part_object(&msg, index++);
        rc = obj == NULL ? -1 : PyList_Append(list, obj);
        Py_XDECREF(obj);
        if (rc < 0) {
            drain(sock, more);
            Py_DECREF(list);
            return NULL;
        }
    }
    /* Over the limit: frame by frame, never held. */
    drain(sock, more);
    return list;
}

PyDoc_STRVAR(recv_message_doc,
"recv_message(sock, max_frames=-1) -> list\n\n"
"The next whole message on *sock* (a zmq.Socket) as a list of parts,\n"
"without blocking. Parts 0 and 1 are\n"
"``bytes``; a later part is ``bytes`` below ZERO_COPY_MIN (4096) bytes and\n"
"a :class:`Part` from there on. With *max_frames* of 0 or more, at most\n"
"max_frames + 1 parts are kept and the rest received and discarded.\n"
"Raises zmq.Again when no message waits, zmq.ZMQError on any other\n"
"failure (ENOTSOCK for a closed socket).");

static PyObject *
recv_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    zmq_msg_t msgs[MAX_PARTS];
    void *handle;
    size_t total;
    Py_ssize_t keep = PY_SSIZE_T_MAX;
    int more, n;

    if (nargs != 1 && nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "recv_message() takes 1 or 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    if (nargs == 2 && keep_arg(args[1], &keep) < 0)
        return NULL;
    if (check_bound() < 0 || (handle = socket_handle(args[0])) == NULL)
        return NULL;
    n = recv_parts(handle, msgs, &more, &total, keep);
    if (n == 0)
        return raise_zmq(EAGAIN);
    if (n < 0)
        return NULL;
    return parts_list(handle, msgs, n, more, keep);
}

/* ---- sending ----------------------------------------------------------- */

/* *obj* as a message to send, in *msg*: a Part shares its content (libzmq
 * counts references), anything else is copied. 0, or -1 with an exception
 * set and *msg* not initialised. */
static int
prepare(zmq_msg_t *msg, PyObject *obj)
{
    if (PyBytes_CheckExact(obj)) {
        Py_ssize_t size = PyBytes_GET_SIZE(obj);
        if (Z.msg_init_size(msg, (size_t)size) < 0) {
            raise_zmq(Z.errno_());
            return -1;
        }
        memcpy(Z.msg_data(msg), PyBytes_AS_STRING(obj), (size_t)size);
        return 0;
    }
    if (Py_IS_TYPE(obj, &PartType)) {
        Z.msg_init(msg);
        if (Z.msg_copy(msg, &((PartObject *)obj)->msg) < 0) {
            int err = Z.errno_();
            Z.msg_close(msg);
            raise_zmq(err);
            return -1;
        }
        return 0;
    }
    if (PyUnicode_Check(obj)) {
        PyErr_SetString(PyExc_TypeError,
                        "str is not a message part; encode it first");
        return -1;
    }
    {
        Py_buffer view;
        if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
            return -1;
        if (Z.msg_init_size(msg, (size_t)view.len) < 0) {
            PyBuffer_Release(&view);
            raise_zmq(Z.errno_());
            return -1;
        }
        memcpy(Z.msg_data(msg), view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        return 0;
    }
}

/* After libzmq's PUSH refused, with EAGAIN, a part that said more were
 * coming (its consumer left half way through the message), it drops every
 * part sent next up to one that says none is, so that the rest of the
 * message never reaches another consumer (lb.cpp, libzmq 4.3.1 on). The
 * message sent again, whole, would be dropped so, and counted as sent: one
 * empty last part ends the dropping at once, and reaches no one. (Only a
 * PUSH refuses a part after the first: XPUB takes the whole message or
 * refuses its first part.) */
static void
end_dropped(void *sock)
{
    zmq_msg_t end;

    if (!drops_after_cut)
        return;
    Z.msg_init(&end);
    send_msg(&end, sock, ZMQ_DONTWAIT, 0);
    Z.msg_close(&end);
}

/* Send msgs[0..n) as one message. Returns 0 (all sent, every message
 * taken), or the errno of the failed send, or -1 with an exception set
 * (from a signal handler, before the first part): then the message was not
 * sent. A failure after the first part is no broken promise: a PUSH whose
 * consumer left between two parts takes the parts back (the consumer never
 * sees them) and refuses the next with EAGAIN; the message can be sent
 * again, whole (end_dropped() sees to that).
 *
 * On failure, with *keep* NULL, every message is closed (the caller still
 * has the parts); with *keep*, room for n - 1 messages, msgs[0..n) is whole
 * again and still the caller's: the parts but the last are copied into it
 * first (cheap: libzmq shares the content, it does not copy it), since
 * libzmq empties the parts it takes. */
static int
send_parts(void *sock, zmq_msg_t *msgs, int n, zmq_msg_t *keep)
{
    int i, err = 0;

    if (keep != NULL) {
        for (i = 0; i < n - 1; i++) {
            Z.msg_init(&keep[i]);
            Z.msg_copy(&keep[i], &msgs[i]);
        }
    }
    for (i = 0; i < n; i++) {
        int flags = i < n - 1 ? ZMQ_SNDMORE | ZMQ_DONTWAIT : ZMQ_DONTWAIT;

        err = send_msg(&msgs[i], sock, flags, i == 0);
        if (err != 0)
            break;
    }
    if (err != 0 && i > 0) {
        cut_sends++;
        if (err == EAGAIN && i < n - 1)
            end_dropped(sock);
    }
    if (keep != NULL) {
        /* Taken parts come back from their copies (zmq_msg_move closes
         * the emptied part first); the other copies go. */
        int j;

        for (j = 0; j < n - 1; j++) {
            if (err != 0 && j < i)
                Z.msg_move(&msgs[j], &keep[j]);
            Z.msg_close(&keep[j]);
        }
    }
    else if (err != 0) {
        close_msgs(msgs, n);
    }
    return err;
}

PyDoc_STRVAR(send_message_doc,
"send_message(sock, frames)\n\n"
"Send the sequence *frames* as one message on *sock* (a zmq.Socket)\n"
"without blocking. Parts may be bytes,\n"
":class:`Part` (sent without a copy; it stays usable, so the same message\n"
"can be sent again) or any other buffer (copied). Every part is checked\n"
"before the first is sent, so a bad part sends nothing. Raises zmq.Again,\n"
"with nothing sent, when *sock* cannot take the message now, including\n"
"when a PUSH's consumer left half way through it (libzmq takes back the\n"
"parts it took: send the message again, whole); other errors as pyzmq\n"
"raises them. *sock* must be a zmq.Socket (TypeError otherwise).");

/* Send the sequence *frames* on *handle* as send_message() does: 0 when
 * sent, the errno of a refused send (no exception), or -1 with an
 * exception set (a bad part, or from a signal handler). */
static int
send_frames(void *handle, PyObject *frames)
{
    zmq_msg_t stack[MAX_PARTS], *msgs = stack;
    PyObject *seq;
    Py_ssize_t n, i;
    int err = -1;

    seq = PySequence_Fast(frames, "frames must be a sequence");
    if (seq == NULL)
        return -1;
    n = PySequence_Fast_GET_SIZE(seq);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "a message has at least one part");
        goto done;
    }
    if (n > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many parts");
        goto done;
    }
    if (n > MAX_PARTS) {
        msgs = PyMem_Malloc((size_t)n * sizeof(zmq_msg_t));
        if (msgs == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (i = 0; i < n; i++) {
        /* A buffer export may run Python code that changes the list. */
        if (PySequence_Fast_GET_SIZE(seq) != n) {
            PyErr_SetString(PyExc_RuntimeError, "frames changed size");
            close_msgs(msgs, (int)i);
            goto done;
        }
        if (prepare(&msgs[i], PySequence_Fast_GET_ITEM(seq, i)) < 0) {
            close_msgs(msgs, (int)i);
            goto done;
        }
    }
    err = send_parts(handle, msgs, (int)n, NULL);
done:
    if (msgs != stack)
        PyMem_Free(msgs);
    Py_DECREF(seq);
    return err;
}

/* The libzmq socket of a (sock, what) call's first argument: NULL with an
 * exception set when the call has not exactly 2 arguments, bind() was not
 * called or *sock* is no open zmq.Socket. */
static void *
sock_and_one(const char *name, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)",
                     name, nargs);
        return NULL;
    }
    if (check_bound() < 0)
        return NULL;
    return socket_handle(args[0]);
}

static PyObject *
send_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    void *handle = sock_and_one("send_message", args, nargs);
    int err;

    if (handle == NULL)
        return NULL;
    err = send_frames(handle, args[1]);
    if (err > 0)
        return raise_zmq(err);
    if (err < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(send_backlog_doc,
"send_backlog(sock, backlog) -> (count, size)\n\n"
"Send messages from the left of *backlog* (a collections.deque of\n"
"(frames, size) pairs, frames as send_message takes them) while *sock*\n"
"takes each one whole, taking it off the deque. Returns how many were\n"
"sent and the sum of their sizes. Stops at the first send that fails in\n"
"any way, with that message still first in *backlog* and no exception:\n"
"the caller sends it again with send_message to learn why. A bad part\n"
"or an exception from a signal handler propagates, nothing taken off\n"
"for that message.");

static PyObject *
send_backlog(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *backlog, *item, *res;
    Py_ssize_t count = 0, size = 0, cost;
    void *handle = sock_and_one("send_backlog", args, nargs);
    int err;

    if (handle == NULL)
        return NULL;
    backlog = args[1];
    for (;;) {
        Py_ssize_t left = PyObject_Length(backlog);

        if (left < 0)
            return NULL;
        if (left == 0)
            break;
        item = PySequence_GetItem(backlog, 0);
        if (item == NULL)
            return NULL;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            Py_DECREF(item);
            PyErr_SetString(PyExc_TypeError,
                            "backlog items must be (frames, size) pairs");
            return NULL;
        }
        cost = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 1));
        if (cost == -1 && PyErr_Occurred()) {
            Py_DECREF(item);
            return NULL;
        }
        err = send_frames(handle, PyTuple_GET_ITEM(item, 0));
        Py_DECREF(item);
        if (err < 0)
            return NULL;
        if (err > 0)
            break;
        res = PyObject_CallMethodNoArgs(backlog, s_popleft);
        if (res == NULL)
            return NULL;
        Py_DECREF(res);
        count++;
        size += cost;
    }
    return Py_BuildValue("(nn)", count, size);
}

/* ---- forward ----------------------------------------------------------- */

/* The socket an outlet's ``direct`` names: NULL (with no exception) when
 * direct sending is off: None, or a closed socket. Anything but None or a
 * zmq.Socket is a TypeError. */
static void *
direct_handle(PyObject *direct)
{
    return direct == Py_None ? NULL : open_handle(direct);
}

/* Outlet counters for a run of messages sent straight to one outlet, kept
 * in C and written once per run. */
typedef struct {
    PyObject *outlet;  /* strong reference, or NULL */
    Py_ssize_t count;
} Run;

static int
run_flush(Run *run, PyObject *now)
{
    PyObject *outlet = run->outlet, *old, *new;
    int rc = -1;

    if (outlet == NULL)
        return 0;
    run->outlet = NULL;
    old = PyObject_GetAttr(outlet, s_forwarded);
    if (old != NULL) {
        PyObject *count = PyLong_FromSsize_t(run->count);
        new = count == NULL ? NULL : PyNumber_Add(old, count);
        Py_XDECREF(count);
        if (new != NULL) {
            rc = PyObject_SetAttr(outlet, s_forwarded, new);
            Py_DECREF(new);
        }
        Py_DECREF(old);
    }
    if (rc == 0)
        rc = PyObject_SetAttr(outlet, s_last_active, now);
    Py_DECREF(outlet);
    return rc;
}

/* The messages of a batch that may go straight to their outlets, held
 * until the batch ends or a message must go to slow(), then sent outlet by
 * outlet. With many topics, consecutive messages name different outlets;
 * sent as they come, each one wakes libzmq's I/O thread for its pipe (a
 * command, two epoll_ctl and a write of its own) and its consumer; a group
 * pays that once per outlet and batch. Only the order within a topic
 * matters to the services, and it is kept. */
/* reading.INBOUND_BATCH: a whole batch of legacy 4-part messages (a batch
 * of v2 notifications, 8 parts each, takes two groups). */
#define GROUP_MSGS 512
/* Parts for GROUP_MSGS messages of the legacy 4 (one with more sends the
 * group early, see group_full): 130 KiB, touched only as used. */
#define GROUP_PARTS (GROUP_MSGS * 4 + MAX_PARTS)

typedef struct {
    PyObject *outlet;  /* strong reference */
    int first, n;      /* its parts, parts[first, first + n); n 0: handled */
    int next;          /* the next held message of its outlet, or -1 */
} Held;

/* An outlet's place in a group's index: the last message held for it, so
 * that a new one is chained to it without a scan. Valid while *round* is
 * the group's. */
typedef struct {
    PyObject *outlet;  /* borrowed: a Held holds the reference */
    int last;
    unsigned round;
} Slot;

/* Slots of the shared group's index: a power of two, at least twice
 * GROUP_MSGS, so that probes stay short and a free one always exists. */
#define GROUP_SLOT_BITS 10
#define GROUP_SLOTS (1 << GROUP_SLOT_BITS)
#if GROUP_SLOTS < 2 * GROUP_MSGS
#error "GROUP_SLOTS must be at least twice GROUP_MSGS"
#endif

typedef struct {
    zmq_msg_t *parts;
    Held *held;
    int parts_cap, held_cap;
    int parts_used, count;
    Slot *slots;       /* GROUP_SLOTS of them, or NULL: one message only */
    unsigned round;    /* grows at each emptying: the old slots lapse */
} Group;

/* Allocated once; one forward() at a time holds it (a forward() that
 * slow() calls gets a group of one message on its stack). */
static Group shared_group = {NULL, NULL, GROUP_PARTS, GROUP_MSGS, 0, 0,
                             NULL, 0};
static int shared_busy = 0;

static Group *
group_take(Group *local)
{
    if (shared_busy)
        return local;
    if (shared_group.parts == NULL) {
        zmq_msg_t *parts = PyMem_RawMalloc(GROUP_PARTS * sizeof(zmq_msg_t));
        Held *held = PyMem_RawMalloc(GROUP_MSGS * sizeof(Held));
        Slot *slots = PyMem_RawCalloc(GROUP_SLOTS, sizeof(Slot));

        if (parts == NULL || held == NULL || slots == NULL) {
            /* Slower, not wrong: one message at a time. */
            PyMem_RawFree(parts);
            PyMem_RawFree(held);
            PyMem_RawFree(slots);
            return local;
        }
        shared_group.parts = parts;
        shared_group.held = held;
        shared_group.slots = slots;
        /* Round 0 is what calloc's slots say: start past it. */
        shared_group.round = 1;
    }
    shared_busy = 1;
    shared_group.parts_used = shared_group.count = 0;
    return &shared_group;
}

/* Hold the message whose *n* parts were received at parts_used, for
 * *outlet* (a new reference is taken), chained after the last message held
 * for the same outlet: group_send then finds each outlet's messages
 * without scanning the group once per outlet. */
static void
group_hold(Group *g, PyObject *outlet, int n)
{
    int index = g->count++;
    Held *h = &g->held[index];

    Py_INCREF(outlet);
    h->outlet = outlet;
    h->first = g->parts_used;
    h->n = n;
    h->next = -1;
    g->parts_used += n;
    if (g->slots != NULL) {
        /* Fibonacci hashing of the address: its top bits. */
        uint64_t hash = (uint64_t)(uintptr_t)outlet * 0x9E3779B97F4A7C15ULL;
        size_t i = (size_t)(hash >> (64 - GROUP_SLOT_BITS));

        for (; ; i++) {
            Slot *slot = &g->slots[i & (GROUP_SLOTS - 1)];

            if (slot->round != g->round) {
                slot->outlet = outlet;
                slot->last = index;
                slot->round = g->round;
                return;
            }
            if (slot->outlet == outlet) {
                g->held[slot->last].next = index;
                slot->last = index;
                return;
            }
        }
    }
    /* One message at a time: the local group holds one, no chain. */
}

static void
group_give(Group *group)
{
    if (group == &shared_group)
        shared_busy = 0;
}

static int
group_full(Group *group)
{
    return group->count == group->held_cap ||
        group->parts_used + MAX_PARTS > group->parts_cap;
}

/* Send what *group* holds, an outlet at a time, each outlet's messages in
 * the order they came and the outlets in the order of their first one.
 * The outlet's ``direct`` is read again first (Python may have run since:
 * a signal handler, slow()). From a message the outlet refuses on, its
 * messages go to slow(), whole and in order. Returns 1 when slow() was
 * called, 0 when not, -1 with an exception set; the group is empty after,
 * on failure too (what it still held is then released, unsent). */
static int
group_send(Group *g, PyObject *now, PyObject *slow, Py_ssize_t kept,
           Run *run, Py_ssize_t *direct)
{
    zmq_msg_t keep[MAX_PARTS];
    int i, j, rc = 0, called = 0;

    for (i = 0; i < g->count && rc == 0; i++) {
        PyObject *outlet = g->held[i].outlet, *attr;
        void *out;
        int refused = 0;

        if (g->held[i].n == 0)
            continue;
        attr = PyObject_GetAttr(outlet, s_direct);
        if (attr == NULL) {
            rc = -1;
            break;
        }
        out = direct_handle(attr);
        Py_DECREF(attr);
        if (out == NULL && PyErr_Occurred()) {
            rc = -1;
            break;
        }
        /* i is the outlet's first held message: its chain holds the
         * rest, in order (so a message met later in i is handled). */
        for (j = i; j >= 0 && rc == 0; j = g->held[j].next) {
            Held *h = &g->held[j];
            zmq_msg_t *msgs = g->parts + h->first;
            PyObject *parts, *res;

            if (h->n == 0)
                continue;
            if (out != NULL && !refused) {
                int err = send_parts(out, msgs, h->n, keep);

                if (err == 0) {
                    h->n = 0;
                    if (run->outlet != outlet) {
                        if (run_flush(run, now) < 0) {
                            rc = -1;
                            break;
                        }
                        Py_INCREF(outlet);
                        run->outlet = outlet;
                        run->count = 0;
                    }
                    run->count++;
                    (*direct)++;
                    continue;
                }
                if (err < 0) {
                    rc = -1;
                    break;
                }
                /* Refused (full, or its consumer left mid-message, or
                 * any other error), the message whole again: slow()
                 * queues it or counts it (and will see why the outlet
                 * refused), and this outlet's later ones after it. */
                refused = 1;
            }
            /* Counters as they are, before Python looks at them. */
            if (run_flush(run, now) < 0) {
                rc = -1;
                break;
            }
            parts = parts_list(NULL, msgs, h->n, 0, kept);
            h->n = 0;
            if (parts == NULL) {
                rc = -1;
                break;
            }
            res = PyObject_CallOneArg(slow, parts);
            Py_DECREF(parts);
            called = 1;
            if (res == NULL) {
                rc = -1;
                break;
            }
            Py_DECREF(res);
        }
    }
    if (rc == 0 && run_flush(run, now) < 0)
        rc = -1;
    for (i = 0; i < g->count; i++) {
        close_msgs(g->parts + g->held[i].first, g->held[i].n);
        Py_DECREF(g->held[i].outlet);
    }
    g->count = g->parts_used = 0;
    /* Every slot lapses: the outlets they name may be gone. */
    if (++g->round == 0)
        g->round = 1;
    return rc < 0 ? -1 : called;
}

PyDoc_STRVAR(forward_doc,
"forward(sock, routes, batch, max_size, now, slow, max_bytes=0,\n"
"        max_frames=-1) -> int\n\n"
"Receive up to *batch* messages from *sock* without blocking (stopping\n"
"when none waits, and once they add up to *max_bytes* if that is above\n"
"0: one more message is always read) and send each one that can go straight to its outlet:\n"
"at least 2 parts and at most *max_frames* (if 0 or more), at most\n"
"*max_size* bytes in all (FRAME_COST counted per part), ``routes.get(part 1)``\n"
"(*routes*: a dict of topic bytes to outlet) an outlet whose ``direct`` is\n"
"a zmq.Socket (None: not now; anything else: TypeError), and that\n"
"socket takes it at once, whole. For those, outlet.forwarded grows by one and\n"
"outlet.last_active becomes *now*. Every other message goes, as the list\n"
"recv_message(sock, max_frames) would return, to ``slow(parts)``.\n\n"
"The direct ones are held and sent grouped by outlet when the batch ends\n"
"or before the next slow() call, so that each outlet's socket is woken\n"
"once per group: the order within an outlet is kept, and every message\n"
"reaches slow() after the ones received before it were sent.\n\n"
"Returns the number of messages sent directly. routes and each outlet's\n"
"``direct`` are read once per topic and read again after every slow()\n"
"call, and ``direct`` again before a group is sent: only slow() may\n"
"change them while forward runs. A send the\n"
"outlet refuses, at any part, is never an error: the message goes to\n"
"slow(), whole, and so do that outlet's later ones in the group.\n"
"An exception from slow() or from receiving\n"
"propagates with every message released; it then carries the number sent\n"
"directly before it as its ``wire_forwarded`` attribute.");

static PyObject *
forward(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    zmq_msg_t one_parts[MAX_PARTS];
    Held one_held[1];
    Group local = {one_parts, one_held, MAX_PARTS, 1, 0, 0, NULL, 0};
    Group *group;
    PyObject *sock, *routes, *now, *slow;
    Py_ssize_t batch, max_size, max_bytes = 0, received = 0, direct = 0;
    /* Parts kept of a message (see parts_kept). */
    Py_ssize_t kept = PY_SSIZE_T_MAX;
    /* Bytes read so far: a batch of large messages ends early, so that
     * one turn of the loop stays short. */
    size_t read_bytes = 0;
    /* The last topic looked up, and what it gave, for runs of messages to
     * one topic (the common case under load): its outlet, and whether that
     * outlet sends directly. */
    PyObject *topic = NULL, *outlet = NULL;
    int straight = 0;
    Run run = {NULL, 0};
    unsigned long handlers_seen = handlers_ran;
    void *handle;
    int sent;

    if (nargs < 6 || nargs > 8) {
        PyErr_Format(PyExc_TypeError,
                     "forward() takes 6 to 8 arguments (%zd given)", nargs);
        return NULL;
    }
    sock = args[0];
    routes = args[1];
    now = args[4];
    slow = args[5];
    if (!PyDict_Check(routes)) {
        PyErr_SetString(PyExc_TypeError, "routes must be a dict");
        return NULL;
    }
    batch = PyLong_AsSsize_t(args[2]);
    if (batch == -1 && PyErr_Occurred())
        return NULL;
    max_size = PyLong_AsSsize_t(args[3]);
    if (max_size == -1 && PyErr_Occurred())
        return NULL;
    if (nargs >= 7) {
        max_bytes = PyLong_AsSsize_t(args[6]);
        if (max_bytes == -1 && PyErr_Occurred())
            return NULL;
    }
    if (nargs == 8 && keep_arg(args[7], &kept) < 0)
        return NULL;
    if (check_bound() < 0 || (handle = socket_handle(sock)) == NULL)
        return NULL;
    group = group_take(&local);

    while (received < batch &&
           (max_bytes <= 0 || read_bytes < (size_t)max_bytes)) {
        size_t total;
        int more, n;
        zmq_msg_t *msgs;
        PyObject *parts, *res;

        if (group_full(group)) {
            sent = group_send(group, now, slow, kept, &run, &direct);
            if (sent < 0)
                goto fail;
            if (sent) {
                /* slow() ran: as after the slow() call below. */
                Py_CLEAR(topic);
                Py_CLEAR(outlet);
                straight = 0;
                handle = open_handle(sock);
                if (handle == NULL) {
                    if (PyErr_Occurred())
                        goto fail;
                    break;
                }
            }
        }
        msgs = group->parts + group->parts_used;
        n = recv_parts(handle, msgs, &more, &total, kept);
        if (n == 0)
            break;
        if (n < 0)
            goto fail;
        received++;
        read_bytes += total;
        if (handlers_ran != handlers_seen) {
            /* Python signal handlers ran: as after slow(), below. */
            handlers_seen = handlers_ran;
            Py_CLEAR(topic);
            Py_CLEAR(outlet);
            straight = 0;
        }

        /* (n == kept: one part more than allowed.) */
        if (!more && n >= 2 && n < kept && max_size >= 0 &&
                total <= (size_t)max_size) {
            const char *data = Z.msg_data(&msgs[1]);
            Py_ssize_t size = (Py_ssize_t)Z.msg_size(&msgs[1]);

            if (topic == NULL || PyBytes_GET_SIZE(topic) != size ||
                    memcmp(PyBytes_AS_STRING(topic), data, size) != 0) {
                Py_CLEAR(topic);
                Py_CLEAR(outlet);
                straight = 0;
                topic = PyBytes_FromStringAndSize(data, size);
                if (topic == NULL) {
                    close_msgs(msgs, n);
                    goto fail;
                }
                outlet = PyDict_GetItemWithError(routes, topic);
                if (outlet != NULL) {
                    PyObject *attr;

                    Py_INCREF(outlet);
                    attr = PyObject_GetAttr(outlet, s_direct);
                    if (attr != NULL) {
                        straight = direct_handle(attr) != NULL;
                        Py_DECREF(attr);
                    }
                }
                if (PyErr_Occurred()) {
                    close_msgs(msgs, n);
                    goto fail;
                }
            }
            if (straight) {
                group_hold(group, outlet, n);
                continue;
            }
        }

        /* The whole message first (the rest of a long one waits on sock),
         * then what was received before it, then the message. */
        parts = parts_list(handle, msgs, n, more, kept);
        if (parts == NULL)
            goto fail;
        if (group_send(group, now, slow, kept, &run, &direct) < 0) {
            Py_DECREF(parts);
            goto fail;
        }
        res = PyObject_CallOneArg(slow, parts);
        Py_DECREF(parts);
        if (res == NULL)
            goto fail;
        Py_DECREF(res);
        /* slow() is Python: routes, outlets and even sock may have
         * changed. */
        Py_CLEAR(topic);
        Py_CLEAR(outlet);
        straight = 0;
        handle = open_handle(sock);
        if (handle == NULL) {
            if (PyErr_Occurred())
                goto fail;
            break;  /* closed by slow(): nothing more to read */
        }
    }
    Py_XDECREF(topic);
    Py_XDECREF(outlet);
    sent = group_send(group, now, slow, kept, &run, &direct);
    group_give(group);
    if (sent < 0 || run_flush(&run, now) < 0)
        goto failed;
    return PyLong_FromSsize_t(direct);

fail:
    Py_XDECREF(topic);
    Py_XDECREF(outlet);
    if (group->count > 0) {
        /* What was received before the failure still goes out. */
        PyObject *type, *value, *tb;

        PyErr_Fetch(&type, &value, &tb);
        if (group_send(group, now, slow, kept, &run, &direct) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    group_give(group);
failed:
    {
        PyObject *type, *value, *tb, *count;

        PyErr_Fetch(&type, &value, &tb);
        if (run_flush(&run, now) < 0)
            PyErr_Clear();
        PyErr_NormalizeException(&type, &value, &tb);
        count = PyLong_FromSsize_t(direct);
        if (value != NULL && count != NULL &&
                PyObject_SetAttrString(value, "wire_forwarded", count) < 0)
            PyErr_Clear();
        Py_XDECREF(count);
        PyErr_Restore(type, value, tb);
    }
    return NULL;
}

/* ---- binding ----------------------------------------------------------- */

PyDoc_STRVAR(bind_doc,
"bind(path, socket_type, error, backend=None)\n\n"
"Use the libzmq already loaded from *path* (never loads another copy) on\n"
"instances of *socket_type* (zmq.backend.Socket) only, and raise\n"
"``error(errno)`` (wire.zmq_error: the exception pyzmq raises for it).\n"
"*backend*, pyzmq's loaded extension module file, if given,\n"
"must use that very libzmq. Raises OSError when *path* is not loaded, lacks\n"
"a function or is not *backend*'s libzmq. Binding again to the same\n"
"library does nothing.");

static PyObject *
wire_bind(PyObject *module, PyObject *args)
{
    PyObject *path_obj, *socket_type, *error, *backend = Py_None;
    PyObject *path_bytes;
    struct api z;
    void *lib;
    int major = 0, minor = 0, patch = 0;

    if (!PyArg_ParseTuple(args, "OOO|O:bind", &path_obj, &socket_type,
                          &error, &backend))
        return NULL;
    if (!PyType_Check(socket_type) || !PyCallable_Check(error)) {
        PyErr_SetString(PyExc_TypeError,
                        "socket_type is a class and error a callable");
        return NULL;
    }
    if (!PyUnicode_FSConverter(path_obj, &path_bytes))
        return NULL;
    lib = dlopen(PyBytes_AS_STRING(path_bytes), RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        const char *why = dlerror();
        PyErr_Format(PyExc_OSError, "%s is not loaded: %s",
                     PyBytes_AS_STRING(path_bytes), why ? why : "?");
        Py_DECREF(path_bytes);
        return NULL;
    }
    if (bound_lib != NULL) {
        /* Live Parts hold messages of the bound libzmq: never switch. */
        dlclose(lib);
        Py_DECREF(path_bytes);
        if (lib != bound_lib) {
            PyErr_SetString(PyExc_RuntimeError,
                            "already bound to another libzmq");
            return NULL;
        }
        Py_RETURN_NONE;
    }

#define SYM(field, name) do { \
        *(void **)&z.field = dlsym(lib, name); \
        if (z.field == NULL) { \
            PyErr_Format(PyExc_OSError, "%s has no %s", \
                         PyBytes_AS_STRING(path_bytes), name); \
            goto fail; \
        } \
    } while (0)

    SYM(version, "zmq_version");
    SYM(msg_init, "zmq_msg_init");
    SYM(msg_init_size, "zmq_msg_init_size");
    SYM(msg_recv, "zmq_msg_recv");
    SYM(msg_send, "zmq_msg_send");
    SYM(msg_close, "zmq_msg_close");
    SYM(msg_copy, "zmq_msg_copy");
    SYM(msg_move, "zmq_msg_move");
    SYM(msg_data, "zmq_msg_data");
    SYM(msg_size, "zmq_msg_size");
    SYM(msg_more, "zmq_msg_more");
    SYM(errno_, "zmq_errno");
    SYM(strerror, "zmq_strerror");
#undef SYM

    if (backend != Py_None) {
        /* Two copies of libzmq may be loaded (another extension may bring
         * the system's): pyzmq's sockets work only with pyzmq's. dlsym on
         * the extension's handle searches it and then what it links to, so
         * it finds the functions pyzmq calls. */
        PyObject *backend_bytes;
        void *ext, *theirs;

        if (!PyUnicode_FSConverter(backend, &backend_bytes))
            goto fail;
        ext = dlopen(PyBytes_AS_STRING(backend_bytes),
                     RTLD_NOW | RTLD_NOLOAD);
        theirs = ext == NULL ? NULL : dlsym(ext, "zmq_msg_init");
        if (ext != NULL)
            dlclose(ext);
        if (theirs != NULL && theirs != *(void **)&z.msg_init) {
            PyErr_Format(PyExc_OSError, "%s is not the libzmq %s uses",
                         PyBytes_AS_STRING(path_bytes),
                         PyBytes_AS_STRING(backend_bytes));
            Py_DECREF(backend_bytes);
            goto fail;
        }
        Py_DECREF(backend_bytes);
    }

    /* zmq_msg_recv's argument order and zmq_msg_t's size are libzmq 4's. */
    z.version(&major, &minor, &patch);
    if (major < 4) {
        PyErr_Format(PyExc_OSError, "%s is libzmq %d.%d.%d, not 4.x",
                     PyBytes_AS_STRING(path_bytes), major, minor, patch);
        goto fail;
    }
    drops_after_cut = major > 4 || minor > 3 || (minor == 3 && patch >= 1);
    Py_INCREF(socket_type);
    Py_XSETREF(SocketType, (PyTypeObject *)socket_type);
    Py_INCREF(error);
    Py_XSETREF(ErrorFor, error);
    Z = z;
    /* lib stays open: pyzmq keeps libzmq loaded for the process anyway. */
    bound_lib = lib;
    Py_DECREF(path_bytes);
    Py_RETURN_NONE;

fail:
    dlclose(lib);
    Py_DECREF(path_bytes);
    return NULL;
}

/* ---- the accept guard -------------------------------------------------- */

/* libzmq 4.3's IPC listener treats ENFILE from accept as "not now" and
 * retries on its next poll, as its TCP listener does for EMFILE too, but it
 * aborts the process on EMFILE (an errno_assert in ipc_listener.cpp): a
 * local user who opens connections to the outlets faster than the receiver
 * can shut them down could end it. The accept runs on libzmq's I/O thread,
 * out of the receiver's reach, so guard_accept() points libzmq's own
 * relocation slots for accept4 and accept (its GOT; no other library's
 * calls change) at wrappers that report EMFILE on a unix socket as ENFILE.
 * Both mean the same to the caller: no descriptor for the connection now. */

#if defined(__x86_64__)
#define GUARD_ARCH 1
#define R_SLOT R_X86_64_JUMP_SLOT
#define R_GLOB R_X86_64_GLOB_DAT
#elif defined(__aarch64__)
#define GUARD_ARCH 1
#define R_SLOT R_AARCH64_JUMP_SLOT
#define R_GLOB R_AARCH64_GLOB_DAT
#else
#define GUARD_ARCH 0
#endif

#if GUARD_ARCH
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);

static accept4_fn real_accept4 = NULL;
static accept_fn real_accept = NULL;
/* EMFILEs reported as ENFILE (atomic: counted on libzmq's I/O threads). */
static unsigned long long guarded_emfiles = 0;

/* EMFILE from accepting on *fd*, as the caller is to see it. The listening
 * socket's family costs no descriptor to learn; TCP listeners keep EMFILE
 * (libzmq's TCP listener tolerates it, and its monitor events say it). */
static int
guarded_errno(int fd, int err)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (err == EMFILE && getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
            ss.ss_family == AF_UNIX) {
        __atomic_add_fetch(&guarded_emfiles, 1, __ATOMIC_RELAXED);
        return ENFILE;
    }
    return err;
}

static int
guarded_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    int s = real_accept4(fd, addr, len, flags);

    if (s < 0)
        errno = guarded_errno(fd, errno);
    return s;
}

static int
guarded_accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    int s = real_accept(fd, addr, len);

    if (s < 0)
        errno = guarded_errno(fd, errno);
    return s;
}

/* The loaded object that holds one address: its base and headers. */
struct object {
    uintptr_t target;
    int found;
    uintptr_t base;
    const ElfW(Phdr) *phdr;
    int phnum;
};

static int
find_object(struct dl_phdr_info *info, size_t size, void *data)
{
    struct object *obj = data;

    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *p = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + p->p_vaddr;

        if (p->p_type == PT_LOAD && obj->target >= start &&
                obj->target < start + p->p_memsz) {
            obj->found = 1;
            obj->base = info->dlpi_addr;
            obj->phdr = info->dlpi_phdr;
            obj->phnum = info->dlpi_phnum;
            return 1;
        }
    }
    return 0;
}

/* Whether [addr, addr + size) lies in one of *obj*'s segments, writable
 * ones only when *writable*. */
static int
in_object(const struct object *obj, uintptr_t addr, size_t size,
          int writable)
{
    for (int i = 0; i < obj->phnum; i++) {
        const ElfW(Phdr) *p = &obj->phdr[i];
        uintptr_t start = obj->base + p->p_vaddr;

        if (p->p_type == PT_LOAD && (!writable || (p->p_flags & PF_W)) &&
                addr >= start && size <= p->p_memsz &&
                addr - start <= p->p_memsz - size)
            return 1;
    }
    return 0;
}

/* A pointer of the dynamic section as an address in *obj*, or 0: glibc
 * has relocated it in place, musl has not; either way it must land in the
 * object (the two readings cannot both: the base is above its size). */
static uintptr_t
dyn_addr(const struct object *obj, uintptr_t value, size_t size)
{
    if (in_object(obj, value, size, 0))
        return value;
    if (in_object(obj, obj->base + value, size, 0))
        return obj->base + value;
    return 0;
}

struct slot {
    void **where;
    void *old;
    void *wrapper;
};

/* The slots in *n* relocations at *rela* that bind accept or accept4, into
 * slots[0] (accept4) and slots[1] (accept). NULL, or why not. */
static const char *
scan_relocs(const struct object *obj, const ElfW(Rela) *rela, size_t n,
            const ElfW(Sym) *symtab, const char *strtab, size_t strsz,
            struct slot *slots)
{
    for (size_t i = 0; i < n; i++) {
        unsigned long type = ELF64_R_TYPE(rela[i].r_info);
        size_t sym = ELF64_R_SYM(rela[i].r_info);
        const ElfW(Sym) *s;
        const char *name;
        int which;

        if ((type != R_SLOT && type != R_GLOB) || sym == 0)
            continue;
        s = &symtab[sym];
        if (!in_object(obj, (uintptr_t)s, sizeof(*s), 0) ||
                s->st_name >= strsz ||
                memchr(strtab + s->st_name, 0, strsz - s->st_name) == NULL)
            return "a relocation names a symbol outside the symbol table";
        name = strtab + s->st_name;
        if (strcmp(name, "accept4") == 0)
            which = 0;
        else if (strcmp(name, "accept") == 0)
            which = 1;
        else
            continue;
        if (rela[i].r_addend != 0)
            return "its accept relocation has an addend";
        if (slots[which].where != NULL)
            return "it binds accept in more than one slot";
        slots[which].where = (void **)(obj->base + rela[i].r_offset);
        if (((uintptr_t)slots[which].where & (sizeof(void *) - 1)) != 0 ||
                !in_object(obj, (uintptr_t)slots[which].where,
                           sizeof(void *), 1))
            return "its accept slot is not in a writable segment";
    }
    return NULL;
}

/* Find libzmq's accept slots and point them at the wrappers. NULL when
 * done, or why not: nothing was changed then. */
static const char *
install_guard(void)
{
    struct object obj = {(uintptr_t)*(void **)&Z.msg_init, 0, 0, NULL, 0};
    const ElfW(Dyn) *dyn = NULL;
    const ElfW(Rela) *jmprel = NULL, *rela = NULL;
    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL, *why;
    size_t pltrelsz = 0, relasz = 0, strsz = 0, dynsz = 0;
    uintptr_t v_symtab = 0, v_strtab = 0, v_jmprel = 0, v_rela = 0;
    long pltrel = DT_RELA, relaent = sizeof(ElfW(Rela));
    long syment = sizeof(ElfW(Sym));
    uintptr_t relro_start = 0, relro_end = 0;
    long page = sysconf(_SC_PAGESIZE);
    struct slot slots[2] = {{NULL, NULL, (void *)guarded_accept4},
                            {NULL, NULL, (void *)guarded_accept}};
    void *reals[2];

    if (page <= 0 || (page & (page - 1)) != 0)
        return "no page size";
    dl_iterate_phdr(find_object, &obj);
    if (!obj.found)
        return "libzmq's code is in no loaded object";
    for (int i = 0; i < obj.phnum; i++) {
        const ElfW(Phdr) *p = &obj.phdr[i];

        if (p->p_type == PT_DYNAMIC) {
            dyn = (const ElfW(Dyn) *)(obj.base + p->p_vaddr);
            dynsz = p->p_memsz;
        } else if (p->p_type == PT_GNU_RELRO) {
            /* As ld.so rounds it: the last partial page stays writable. */
            relro_start = (obj.base + p->p_vaddr) & ~(uintptr_t)(page - 1);
            relro_end = (obj.base + p->p_vaddr + p->p_memsz) &
                ~(uintptr_t)(page - 1);
        }
    }
    if (dyn == NULL || !in_object(&obj, (uintptr_t)dyn, dynsz, 0))
        return "libzmq has no dynamic section";
    for (size_t i = 0; i < dynsz / sizeof(*dyn) && dyn[i].d_tag != DT_NULL;
         i++) {
        uintptr_t v = dyn[i].d_un.d_ptr;

        switch (dyn[i].d_tag) {
        case DT_SYMTAB: v_symtab = v; break;
        case DT_STRTAB: v_strtab = v; break;
        case DT_STRSZ: strsz = v; break;
        case DT_SYMENT: syment = (long)v; break;
        case DT_JMPREL: v_jmprel = v; break;
        case DT_PLTRELSZ: pltrelsz = v; break;
        case DT_PLTREL: pltrel = (long)v; break;
        case DT_RELA: v_rela = v; break;
        case DT_RELASZ: relasz = v; break;
        case DT_RELAENT: relaent = (long)v; break;
        }
    }
    if (syment != sizeof(ElfW(Sym)) || relaent != sizeof(ElfW(Rela)) ||
            pltrel != DT_RELA)
        return "libzmq's relocations are not of the expected kind";
    symtab = (const ElfW(Sym) *)dyn_addr(&obj, v_symtab, sizeof(*symtab));
    strtab = (const char *)dyn_addr(&obj, v_strtab, strsz);
    if (symtab == NULL || strtab == NULL || strsz == 0)
        return "libzmq's symbol table is not where its dynamic section says";
    if (v_jmprel != 0 && pltrelsz != 0 &&
            (jmprel = (const ElfW(Rela) *)dyn_addr(&obj, v_jmprel,
                                                   pltrelsz)) == NULL)
        return "libzmq's PLT relocations are not where it says";
    if (v_rela != 0 && relasz != 0 &&
            (rela = (const ElfW(Rela) *)dyn_addr(&obj, v_rela,
                                                 relasz)) == NULL)
        return "libzmq's relocations are not where it says";
    if (jmprel != NULL && (why = scan_relocs(
            &obj, jmprel, pltrelsz / sizeof(*jmprel), symtab, strtab, strsz,
            slots)) != NULL)
        return why;
    if (rela != NULL && (why = scan_relocs(
            &obj, rela, relasz / sizeof(*rela), symtab, strtab, strsz,
            slots)) != NULL)
        return why;
    if (slots[0].where == NULL && slots[1].where == NULL)
        return "libzmq calls accept through no relocation slot";

    /* Each slot holds the C library's function (bound at load), or still
     * an address in libzmq's own PLT (bound lazily, at the first call):
     * anything else is someone else's interposer, best left alone. */
    reals[0] = dlsym(RTLD_DEFAULT, "accept4");
    reals[1] = dlsym(RTLD_DEFAULT, "accept");
    for (int i = 0; i < 2; i++) {
        if (slots[i].where == NULL)
            continue;
        slots[i].old = __atomic_load_n(slots[i].where, __ATOMIC_SEQ_CST);
        if (slots[i].old == slots[i].wrapper)
            return NULL;  /* installed before */
        if (reals[i] == NULL)
            return "the C library has no accept or accept4";
        if (slots[i].old != reals[i] &&
                !in_object(&obj, (uintptr_t)slots[i].old, 1, 0))
            return "libzmq's accept slot points to neither the C "
                   "library's accept nor its own PLT";
    }
    real_accept4 = (accept4_fn)reals[0];
    real_accept = (accept_fn)reals[1];
    for (int i = 0; i < 2; i++) {
        uintptr_t at = (uintptr_t)slots[i].where;
        void *pg = (void *)(at & ~(uintptr_t)(page - 1));
        int relro = at >= relro_start && at < relro_end;

        if (slots[i].where == NULL)
            continue;
        /* ld.so made the RELRO pages read-only after relocating them. */
        if (relro && mprotect(pg, (size_t)page, PROT_READ | PROT_WRITE) < 0)
            return i == 0 ? "mprotect failed: nothing changed" :
                "mprotect failed after accept4 was guarded";
        /* One aligned store: a concurrent call sees one or the other. */
        __atomic_store_n(slots[i].where, slots[i].wrapper, __ATOMIC_SEQ_CST);
        if (relro)
            mprotect(pg, (size_t)page, PROT_READ);
    }
    return NULL;
}
#endif  /* GUARD_ARCH */

PyDoc_STRVAR(guard_accept_doc,
"guard_accept() -> str\n\n"
"Make the bound libzmq's accept and accept4 report EMFILE on a unix\n"
"socket as ENFILE, which its IPC listener survives (on EMFILE libzmq 4.3\n"
"aborts the process). Changes only libzmq's own relocation slots, and\n"
"only when they look as expected. Returns '' when the guard is in place\n"
"(calling it again does nothing), or why it is not: then nothing was\n"
"changed.");

static PyObject *
guard_accept(PyObject *module, PyObject *unused)
{
    const char *why;

    if (check_bound() < 0)
        return NULL;
#if GUARD_ARCH
    why = install_guard();
#else
    why = "not supported on this architecture";
#endif
    return PyUnicode_FromString(why == NULL ? "" : why);
}

PyDoc_STRVAR(guarded_emfiles_doc,
"guarded_emfiles() -> int\n\nTimes the guard reported EMFILE on a unix "
"socket as ENFILE since the start.");

static PyObject *
wire_guarded_emfiles(PyObject *module, PyObject *unused)
{
#if GUARD_ARCH
    return PyLong_FromUnsignedLongLong(
        __atomic_load_n(&guarded_emfiles, __ATOMIC_RELAXED));
#else
    return PyLong_FromLong(0);
#endif
}

PyDoc_STRVAR(strerror_doc,
"strerror(errno) -> str\n\nlibzmq's message for *errno* (a check that "
"bind() found a working libzmq).");

static PyObject *
wire_strerror(PyObject *module, PyObject *arg)
{
    long err = PyLong_AsLong(arg);

    if ((err == -1 && PyErr_Occurred()) || check_bound() < 0)
        return NULL;
    return PyUnicode_FromString(Z.strerror((int)err));
}

PyDoc_STRVAR(rollbacks_doc,
"rollbacks() -> int\n\nMessages whose send was cut after its first part "
"(a PUSH's consumer left\nhalf way through: libzmq took the parts back) "
"since the start.");

static PyObject *
rollbacks(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(cut_sends);
}

static PyMethodDef methods[] = {
    {"bind", wire_bind, METH_VARARGS, bind_doc},
    {"recv_message", (PyCFunction)(void (*)(void))recv_message,
     METH_FASTCALL, recv_message_doc},
    {"send_message", (PyCFunction)(void (*)(void))send_message,
     METH_FASTCALL, send_message_doc},
    {"send_backlog", (PyCFunction)(void (*)(void))send_backlog,
     METH_FASTCALL, send_backlog_doc},
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL,
     forward_doc},
    {"strerror", wire_strerror, METH_O, strerror_doc},
    {"rollbacks", rollbacks, METH_NOARGS, rollbacks_doc},
    {"guard_accept", guard_accept, METH_NOARGS, guard_accept_doc},
    {"guarded_emfiles", wire_guarded_emfiles, METH_NOARGS,
     guarded_emfiles_doc},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zmq_receiver._wire",
    .m_doc = "The message hot path of zmq_receiver.wire, in C on libzmq "
             "directly.\n\nCall bind() first; zmq_receiver.wire does.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__wire(void)
{
    PyObject *m;

    if (PyType_Ready(&PartType) < 0)
        return NULL;
    if ((s_underlying = PyUnicode_InternFromString("underlying")) == NULL ||
            (s_direct = PyUnicode_InternFromString("direct")) == NULL ||
            (s_forwarded = PyUnicode_InternFromString("forwarded")) == NULL ||
            (s_last_active = PyUnicode_InternFromString("last_active"))
                == NULL ||
            (s_popleft = PyUnicode_InternFromString("popleft")) == NULL)
        return NULL;
    m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PartType);
    if (PyModule_AddObject(m, "Part", (PyObject *)&PartType) < 0 ||
            PyModule_AddIntConstant(m, "ZERO_COPY_MIN", ZERO_COPY_MIN) < 0 ||
            PyModule_AddIntConstant(m, "MAX_PARTS", MAX_PARTS) < 0 ||
            PyModule_AddIntConstant(m, "FRAME_COST", FRAME_COST) < 0 ||
            PyModule_AddIntConstant(m, "GROUP_MSGS", GROUP_MSGS) < 0) {
        Py_DECREF(&PartType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
