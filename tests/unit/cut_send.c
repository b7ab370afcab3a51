/* A zmq_msg_send that refuses a later part of a message on request, as
 * libzmq's PUSH does when its consumer's pipe closes between two parts.
 *
 * libzmq does that only when it processes the pipe's termination between
 * two parts of one message, which it checks at most once a millisecond or
 * so (its command throttle): a real consumer leaving hits it by chance only
 * (tests/functional/test_chaos.py). tests/unit/test_wire.py builds this
 * file as a library that links to the libzmq pyzmq loaded and binds
 * zmq_receiver._wire to it: every function but zmq_msg_send is libzmq's
 * own (dlsym on this library's handle finds them in what it links to).
 *
 * After cut_next(k), the next message's parts are held here instead of
 * sent, and its part k is refused with EAGAIN: the parts held are released
 * unsent, as libzmq takes back those its pipe had taken, so the consumer
 * never sees any of them. A message shorter than that is sent whole when
 * its last part comes. Only one socket at a time may be armed.
 *
 * Then, as libzmq's PUSH (lb.cpp, since 4.3.1) when the refused part said
 * more were coming: every part sent next is taken and dropped, unseen,
 * up to and including one that says none is, so that the rest of the
 * refused message never reaches the next consumer. */

#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>

typedef struct zmq_msg_t {
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
} zmq_msg_t;

#define ZMQ_SNDMORE 2
#define MAX_HELD 64

static int (*real_send)(zmq_msg_t *, void *, int);
static int (*real_init)(zmq_msg_t *);
static int (*real_move)(zmq_msg_t *, zmq_msg_t *);
static int (*real_close)(zmq_msg_t *);
static size_t (*real_size)(const zmq_msg_t *);

static int cut_at = -1;
static int dropping = 0;
static zmq_msg_t held[MAX_HELD];
static int held_flags[MAX_HELD];
static int n_held = 0;
static unsigned long cuts = 0;

/* Use the libzmq at *path* (already loaded); 0 when all was found. */
int
cut_setup(const char *path)
{
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);

    if (lib == NULL)
        return -1;
    *(void **)&real_send = dlsym(lib, "zmq_msg_send");
    *(void **)&real_init = dlsym(lib, "zmq_msg_init");
    *(void **)&real_move = dlsym(lib, "zmq_msg_move");
    *(void **)&real_close = dlsym(lib, "zmq_msg_close");
    *(void **)&real_size = dlsym(lib, "zmq_msg_size");
    return real_send && real_init && real_move && real_close && real_size
        ? 0 : -1;
}

/* Refuse part *part* (1 or more) of the next message, once. */
void
cut_next(int part)
{
    cut_at = part;
}

/* Messages refused part way so far. */
unsigned long
cut_count(void)
{
    return cuts;
}

static void
release_held(void)
{
    for (int i = 0; i < n_held; i++)
        real_close(&held[i]);
    n_held = 0;
}

int
zmq_msg_send(zmq_msg_t *msg, void *sock, int flags)
{
    if (dropping) {
        dropping = flags & ZMQ_SNDMORE;
        real_close(msg);
        real_init(msg);
        return 0;
    }
    if (cut_at < 0)
        return real_send(msg, sock, flags);
    if (n_held == cut_at) {
        release_held();
        cut_at = -1;
        cuts++;
        dropping = flags & ZMQ_SNDMORE;
        errno = EAGAIN;
        return -1;
    }
    if ((flags & ZMQ_SNDMORE) && n_held < MAX_HELD) {
        int size = (int)real_size(msg);

        /* Taken, as libzmq takes a part: the caller's message is empty. */
        real_init(&held[n_held]);
        real_move(&held[n_held], msg);
        held_flags[n_held++] = flags;
        return size;
    }
    cut_at = -1;
    for (int i = 0; i < n_held; i++) {
        if (real_send(&held[i], sock, held_flags[i]) < 0) {
            int err = errno;

            for (int j = i; j < n_held; j++)
                real_close(&held[j]);
            n_held = 0;
            errno = err;
            return -1;
        }
    }
    n_held = 0;
    return real_send(msg, sock, flags);
}
