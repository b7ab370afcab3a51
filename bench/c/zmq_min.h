/* The part of libzmq's public API (4.x, stable ABI) that zbench.c uses.
 *
 * pyzmq's wheels ship libzmq but not zmq.h, and the benchmark must link
 * against that very library, so when no zmq.h is found these declarations,
 * copied from libzmq 4.3's zmq.h, stand in for it. */
#ifndef ZMQ_MIN_H
#define ZMQ_MIN_H

#include <stddef.h>

#define ZMQ_PUB 1
#define ZMQ_SUB 2
#define ZMQ_PULL 7
#define ZMQ_PUSH 8

#define ZMQ_SUBSCRIBE 6
#define ZMQ_LINGER 17
#define ZMQ_LAST_ENDPOINT 32
#define ZMQ_XPUB_NODROP 69

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2
#define ZMQ_POLLIN 1

typedef struct zmq_msg_t {
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
} zmq_msg_t;

typedef void(zmq_free_fn)(void *data, void *hint);

typedef struct zmq_pollitem_t {
    void *socket;
    int fd;
    short events;
    short revents;
} zmq_pollitem_t;

int zmq_errno(void);
const char *zmq_strerror(int errnum);
void *zmq_ctx_new(void);
int zmq_ctx_term(void *context);
void *zmq_socket(void *context, int type);
int zmq_close(void *s);
int zmq_setsockopt(void *s, int option, const void *optval, size_t optvallen);
int zmq_getsockopt(void *s, int option, void *optval, size_t *optvallen);
int zmq_bind(void *s, const char *addr);
int zmq_connect(void *s, const char *addr);
int zmq_send(void *s, const void *buf, size_t len, int flags);
int zmq_msg_init(zmq_msg_t *msg);
int zmq_msg_init_data(zmq_msg_t *msg, void *data, size_t size,
                      zmq_free_fn *ffn, void *hint);
int zmq_msg_send(zmq_msg_t *msg, void *s, int flags);
int zmq_msg_recv(zmq_msg_t *msg, void *s, int flags);
int zmq_msg_close(zmq_msg_t *msg);
void *zmq_msg_data(zmq_msg_t *msg);
size_t zmq_msg_size(const zmq_msg_t *msg);
int zmq_msg_more(const zmq_msg_t *msg);
int zmq_poll(zmq_pollitem_t *items, int nitems, long timeout);
int zmq_proxy(void *frontend, void *backend, void *capture);

#endif
