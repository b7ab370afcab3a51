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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <string.h>

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

static PyObject *s_underlying, *s_direct, *s_forwarded, *s_last_active;

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

/* Send msgs[0..n) as one message. Returns 0 (all sent, every message
 * taken), or the errno of the failed send, or -1 with an exception set
 * (from a signal handler, before the first part): then the message was not
 * sent. A failure after the first part is no broken promise: a PUSH whose
 * consumer left between two parts takes the parts back (the consumer never
 * sees them) and refuses the next with EAGAIN; the message can be sent
 * again, whole.
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
    if (err != 0 && i > 0)
        cut_sends++;
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

static PyObject *
send_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    zmq_msg_t stack[MAX_PARTS], *msgs = stack;
    PyObject *seq, *result = NULL;
    Py_ssize_t n, i;
    void *handle;
    int err;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "send_message() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (check_bound() < 0 || (handle = socket_handle(args[0])) == NULL)
        return NULL;
    seq = PySequence_Fast(args[1], "frames must be a sequence");
    if (seq == NULL)
        return NULL;
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
    if (err) {
        if (err > 0)
            raise_zmq(err);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (msgs != stack)
        PyMem_Free(msgs);
    Py_DECREF(seq);
    return result;
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
"Returns the number of messages sent directly. routes and each outlet's\n"
"``direct`` are read once per topic and read again after every slow()\n"
"call: only slow() may change them while forward runs. A send the\n"
"outlet refuses, at any part, is never an error: the message goes to\n"
"slow(), whole. An exception from slow() or from receiving\n"
"propagates with every message released; it then carries the number sent\n"
"directly before it as its ``wire_forwarded`` attribute.");

static PyObject *
forward(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    zmq_msg_t msgs[MAX_PARTS], keep[MAX_PARTS];
    PyObject *sock, *routes, *now, *slow;
    Py_ssize_t batch, max_size, max_bytes = 0, received = 0, direct = 0;
    /* Parts kept of a message (see parts_kept). */
    Py_ssize_t kept = PY_SSIZE_T_MAX;
    /* Bytes read so far: a batch of large messages ends early, so that
     * one turn of the loop stays short. */
    size_t read_bytes = 0;
    /* The last topic looked up, and what it gave, for runs of messages to
     * one topic (the common case under load). */
    PyObject *topic = NULL, *outlet = NULL;
    void *out = NULL;
    Run run = {NULL, 0};
    unsigned long handlers_seen = handlers_ran;
    void *handle;

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

    while (received < batch &&
           (max_bytes <= 0 || read_bytes < (size_t)max_bytes)) {
        size_t total;
        int more, n, err;
        PyObject *parts, *res;

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
            out = NULL;
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
                out = NULL;
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
                        out = direct_handle(attr);
                        Py_DECREF(attr);
                    }
                }
                if (PyErr_Occurred()) {
                    close_msgs(msgs, n);
                    goto fail;
                }
            }
            if (out != NULL) {
                err = send_parts(out, msgs, n, keep);
                if (err == 0) {
                    if (run.outlet != outlet) {
                        if (run_flush(&run, now) < 0)
                            goto fail;
                        Py_INCREF(outlet);
                        run.outlet = outlet;
                        run.count = 0;
                    }
                    run.count++;
                    direct++;
                    continue;
                }
                if (err < 0) {
                    close_msgs(msgs, n);
                    goto fail;
                }
                /* Refused (full, or its consumer left mid-message, or
                 * any other error), the message whole again: slow() queues
                 * it or counts it (and will see why the outlet refused). */
                out = NULL;
            }
        }

        /* Counters as they are, before Python looks at them. */
        if (run_flush(&run, now) < 0) {
            close_msgs(msgs, n);
            drain(handle, more);
            goto fail;
        }
        parts = parts_list(handle, msgs, n, more, kept);
        if (parts == NULL)
            goto fail;
        res = PyObject_CallOneArg(slow, parts);
        Py_DECREF(parts);
        if (res == NULL)
            goto fail;
        Py_DECREF(res);
        /* slow() is Python: routes, outlets and even sock may have
         * changed. */
        Py_CLEAR(topic);
        Py_CLEAR(outlet);
        out = NULL;
        handle = open_handle(sock);
        if (handle == NULL) {
            if (PyErr_Occurred())
                goto fail;
            break;  /* closed by slow(): nothing more to read */
        }
    }
    Py_XDECREF(topic);
    Py_XDECREF(outlet);
    if (run_flush(&run, now) < 0)
        return NULL;
    return PyLong_FromSsize_t(direct);

fail:
    Py_XDECREF(topic);
    Py_XDECREF(outlet);
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
bind(PyObject *module, PyObject *args)
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
    {"bind", bind, METH_VARARGS, bind_doc},
    {"recv_message", (PyCFunction)(void (*)(void))recv_message,
     METH_FASTCALL, recv_message_doc},
    {"send_message", (PyCFunction)(void (*)(void))send_message,
     METH_FASTCALL, send_message_doc},
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL,
     forward_doc},
    {"strerror", wire_strerror, METH_O, strerror_doc},
    {"rollbacks", rollbacks, METH_NOARGS, rollbacks_doc},
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
                == NULL)
        return NULL;
    m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PartType);
    if (PyModule_AddObject(m, "Part", (PyObject *)&PartType) < 0 ||
            PyModule_AddIntConstant(m, "ZERO_COPY_MIN", ZERO_COPY_MIN) < 0 ||
            PyModule_AddIntConstant(m, "MAX_PARTS", MAX_PARTS) < 0 ||
            PyModule_AddIntConstant(m, "FRAME_COST", FRAME_COST) < 0) {
        Py_DECREF(&PartType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
