/* zbench: the benchmark's traffic generator, consumer and forwarder.
 *
 *   zbench gen   -s SIZE -n COUNT [-r RATE] ENDPOINT TOPIC...
 *   zbench sink  -n COUNT [-s SIZE] [-S] [-b] [-i IDLE_MS] ENDPOINT...
 *   zbench conn  -s SIZE -n COUNT [-c SENDERS] [-k] ENDPOINT TOPIC
 *   zbench proxy [-p] FRONTEND BACKEND
 *
 * "conn" is the traffic of oslo.messaging 1.4 to 1.10, which opened a new
 * connection for every cast (pooling came in 1.11): SENDERS threads (8 by
 * default) that each make, for every message, a context and a PUSH socket,
 * connect, send the one message and close, as fast as they can. With -k
 * each sender keeps one context (as oslo.messaging's impl_zmq did, one per
 * process) and makes a socket per message, whose close returns at once and
 * leaves libzmq to write the message.
 *
 * Compiled by bench/build.py against the libzmq inside pyzmq, so that the
 * endpoints cost a small fraction of what they measure. Messages use the
 * legacy oslo.messaging layout: b'0' | topic | b'cast' | JSON body, where
 * the body carries a kind letter (w: warm-up, m: measured, l: latency
 * probe) and, for probes, the send time.
 *
 * The orchestrator talks to each process through lines: on stdout the
 * process reports events ("endpoint=...", "ready", "sent ...", "done ..."),
 * on stdin it is told "go" (start measuring) or "report" (stop waiting and
 * say what arrived). Nothing here sleeps to synchronise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifdef __has_include
#if __has_include(<zmq.h>)
#define HAVE_ZMQ_H
#endif
#endif
#ifdef HAVE_ZMQ_H
#include <zmq.h>
#else
#include "zmq_min.h"
#endif

/* The body: valid JSON of exactly the requested size. */
#define P1 "[\"{}\", {\"method\": \""
#define P2 "\", \"args\": {\"t\": \""
#define P3 "\", \"pad\": \""
#define P4 "\"}}]"
#define KIND_OFF (sizeof(P1) - 1)
#define T_OFF (KIND_OFF + 1 + sizeof(P2) - 1)
#define T_DIGITS 20
#define MIN_BODY (T_OFF + T_DIGITS + sizeof(P3) - 1 + sizeof(P4) - 1)

static void die(const char *what)
{
    fprintf(stderr, "zbench: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000L +
           ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

static char *make_body(size_t size, char kind)
{
    if (size < MIN_BODY)
        size = MIN_BODY;
    char *b = malloc(size);
    size_t pad = size - MIN_BODY;
    char *p = b;
    p += sprintf(p, "%s%c%s%0*d%s", P1, kind, P2, T_DIGITS, 0, P3);
    memset(p, 'x', pad);
    memcpy(p + pad, P4, sizeof(P4) - 1);
    return b;
}

static void stamp(char *body, uint64_t t)
{
    for (int i = T_DIGITS - 1; i >= 0; i--, t /= 10)
        body[T_OFF + i] = (char)('0' + t % 10);
}

/* Read what stdin has: 'g' for "go", 'r' for "report" or end of input. */
static int read_command(void)
{
    char buf[256];
    ssize_t n = read(0, buf, sizeof buf - 1);
    if (n <= 0)
        return 'r';
    buf[n] = 0;
    if (strstr(buf, "report"))
        return 'r';
    return strstr(buf, "go") ? 'g' : 0;
}

static void xsend(void *s, const void *buf, size_t len, int flags)
{
    while (zmq_send(s, buf, len, flags) < 0)
        if (zmq_errno() != EINTR)
            die("send");
}

static void send_msg(void *s, const char *topic, char *body, size_t len,
                     int zero_copy)
{
    xsend(s, "0", 1, ZMQ_SNDMORE);
    xsend(s, topic, strlen(topic), ZMQ_SNDMORE);
    xsend(s, "cast", 4, ZMQ_SNDMORE);
    if (!zero_copy) {
        xsend(s, body, len, 0);
        return;
    }
    /* A constant body: libzmq sends it from our buffer without copying,
     * so that 64 KiB messages do not make the generator the bottleneck. */
    zmq_msg_t m;
    zmq_msg_init_data(&m, body, len, NULL, NULL);
    while (zmq_msg_send(&m, s, 0) < 0)
        if (zmq_errno() != EINTR)
            die("send");
}

/* Warm up until told to go (1) or to give up (0, "r"): every round
 * reaches every topic, so each consumer (and each subscriber, which may
 * join late) sees one. The poll timeout only paces the rounds; "go" ends
 * the wait at once. */
static int warm_up(void *s, char **topics, int ntopics)
{
    char *warm = make_body(MIN_BODY, 'w');
    long wait_ms = 1;
    for (;;) {
        for (int t = 0; t < ntopics; t++)
            send_msg(s, topics[t], warm, MIN_BODY, 0);
        zmq_pollitem_t in = {NULL, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&in, 1, wait_ms) > 0) {
            int c = read_command();
            if (c == 'g') break;
            if (c == 'r') { free(warm); return 0; }
        }
        if (wait_ms < 50) wait_ms *= 2;
    }
    free(warm);
    return 1;
}

static int gen(int argc, char **argv)
{
    size_t size = 200;
    long count = 0, rate = 0;
    int opt;
    while ((opt = getopt(argc, argv, "s:n:r:")) != -1) {
        if (opt == 's') size = strtoul(optarg, NULL, 10);
        else if (opt == 'n') count = strtol(optarg, NULL, 10);
        else if (opt == 'r') rate = strtol(optarg, NULL, 10);
        else return 2;
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: zbench gen -s SIZE -n COUNT [-r RATE] "
                        "ENDPOINT TOPIC...\n");
        return 2;
    }
    const char *endpoint = argv[optind];
    char **topics = argv + optind + 1;
    int ntopics = argc - optind - 1;
    if (size < MIN_BODY) size = MIN_BODY;

    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_PUSH);
    if (!s || zmq_connect(s, endpoint) < 0) die("connect");

    if (!warm_up(s, topics, ntopics)) return 1;

    char *body = make_body(size, rate ? 'l' : 'm');
    uint64_t t0 = now_ns(), next = t0;
    for (long i = 0; i < count; i++) {
        const char *topic = topics[i % ntopics];
        if (!rate) {
            send_msg(s, topic, body, size, 1);
            continue;
        }
        /* Latency probes: one at a time at a fixed rate, each stamped
         * just before it is sent (so it is copied, not zero-copy). */
        next += 1000000000u / (uint64_t)rate;
        struct timespec ts = {(time_t)(next / 1000000000u),
                              (long)(next % 1000000000u)};
        /* Behind (a sleep wakes tens of us late): catch up without one,
         * so that high rates hold on average. */
        if (now_ns() < next)
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL))
                ;
        stamp(body, now_ns());
        send_msg(s, topic, body, size, 0);
    }
    uint64_t t1 = now_ns();
    printf("sent t0=%llu t1=%llu\n", (unsigned long long)t0,
           (unsigned long long)t1);
    fflush(stdout);
    /* The default linger waits until libzmq has written every message. */
    zmq_close(s);
    zmq_ctx_term(ctx);
    printf("flushed t2=%llu cpu_us=%ld\n", (unsigned long long)now_ns(),
           cpu_us());
    return 0;
}

/* -- conn: a connection per message --------------------------------------- */

struct conn_sender {
    pthread_t thread;
    const char *endpoint, *topic;
    char *body;
    size_t size;
    long count;
    int keep_ctx;
};

/* One sender: for every message a context and a socket of its own, as
 * oslo.messaging 1.4 to 1.10 did; the close waits (default linger) until
 * libzmq has written the message, then the context goes with its threads. */
static void *conn_send(void *arg)
{
    struct conn_sender *c = arg;
    void *ctx = c->keep_ctx ? zmq_ctx_new() : NULL;
    for (long i = 0; i < c->count; i++) {
        if (!c->keep_ctx)
            ctx = zmq_ctx_new();
        void *s = ctx ? zmq_socket(ctx, ZMQ_PUSH) : NULL;
        if (!s || zmq_connect(s, c->endpoint) < 0) die("connect");
        send_msg(s, c->topic, c->body, c->size, 1);
        zmq_close(s);
        if (!c->keep_ctx || i == c->count - 1)
            while (zmq_ctx_term(ctx) < 0)
                if (zmq_errno() != EINTR)
                    die("ctx_term");
    }
    return NULL;
}

static int conn(int argc, char **argv)
{
    size_t size = 200;
    long count = 0, senders = 8;
    int opt, keep_ctx = 0;
    while ((opt = getopt(argc, argv, "s:n:c:k")) != -1) {
        if (opt == 's') size = strtoul(optarg, NULL, 10);
        else if (opt == 'n') count = strtol(optarg, NULL, 10);
        else if (opt == 'c') senders = strtol(optarg, NULL, 10);
        else if (opt == 'k') keep_ctx = 1;
        else return 2;
    }
    if (argc - optind != 2 || senders < 1 || count < senders) {
        fprintf(stderr, "usage: zbench conn -s SIZE -n COUNT [-c SENDERS] "
                        "[-k] ENDPOINT TOPIC (COUNT >= SENDERS >= 1)\n");
        return 2;
    }
    const char *endpoint = argv[optind], *topic = argv[optind + 1];
    if (size < MIN_BODY) size = MIN_BODY;

    /* Warm up over one lasting connection until told to go, as gen does:
     * the consumer is then known to be connected. */
    void *wctx = zmq_ctx_new();
    void *w = zmq_socket(wctx, ZMQ_PUSH);
    if (!w || zmq_connect(w, endpoint) < 0) die("connect");
    if (!warm_up(w, argv + optind + 1, 1)) return 1;
    /* Its warm-ups are written before the measured messages start. */
    zmq_close(w);
    zmq_ctx_term(wctx);

    char *body = make_body(size, 'm');
    struct conn_sender *c = calloc((size_t)senders, sizeof *c);
    uint64_t t0 = now_ns();
    for (long k = 0; k < senders; k++) {
        c[k] = (struct conn_sender){.endpoint = endpoint, .topic = topic,
                                    .body = body, .size = size,
                                    .keep_ctx = keep_ctx,
                                    .count = count / senders +
                                             (k < count % senders)};
        if (pthread_create(&c[k].thread, NULL, conn_send, &c[k])) {
            fprintf(stderr, "zbench: pthread_create failed\n");
            exit(2);
        }
    }
    for (long k = 0; k < senders; k++)
        pthread_join(c[k].thread, NULL);
    uint64_t t1 = now_ns();
    /* Every sender's context was terminated (the last one, with -k), so
     * every message is written: sent and flushed at once. */
    printf("sent t0=%llu t1=%llu connections=%ld senders=%ld\n",
           (unsigned long long)t0, (unsigned long long)t1, count, senders);
    printf("flushed t2=%llu cpu_us=%ld\n", (unsigned long long)t1, cpu_us());
    fflush(stdout);
    return 0;
}

/* -- sink ---------------------------------------------------------------- */

static long expect, count, bad;
static uint64_t first, last, *lat;
static int probes; /* latency probes seen: print percentiles */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t pct(double q)
{
    long i = (long)(q * count + 0.999999) - 1;
    return lat[i < 0 ? 0 : i >= count ? count - 1 : i];
}

static void finish(void)
{
    printf("done complete=%d count=%ld bad=%ld first=%llu last=%llu "
           "cpu_us=%ld",
           count == expect, count, bad, (unsigned long long)first,
           (unsigned long long)last, cpu_us());
    if (probes && count) {
        qsort(lat, count, sizeof *lat, cmp_u64);
        printf(" p50=%llu p99=%llu p999=%llu max=%llu",
               (unsigned long long)pct(0.5), (unsigned long long)pct(0.99),
               (unsigned long long)pct(0.999),
               (unsigned long long)lat[count - 1]);
    }
    printf("\n");
    fflush(stdout);
    _exit(0);
}

static char topic[256]; /* frame 1 of the last message, NUL-terminated */

/* Receive one whole message; its kind, or -1 when none is waiting. */
static int recv_one(void *s, size_t size)
{
    zmq_msg_t m;
    int nf = 0, more, ok = 1, kind = 0;
    do {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, nf ? 0 : ZMQ_DONTWAIT) < 0) {
            if (nf == 0 && (zmq_errno() == EAGAIN || zmq_errno() == EINTR))
                return -1;
            die("recv");
        }
        size_t len = zmq_msg_size(&m);
        const char *d = zmq_msg_data(&m);
        if (nf == 1) {
            size_t t = len < sizeof topic - 1 ? len : sizeof topic - 1;
            memcpy(topic, d, t);
            topic[t] = 0;
        }
        if (nf == 2)
            ok = ok && len == 4 && memcmp(d, "cast", 4) == 0;
        if (nf == 3 && len >= MIN_BODY) {
            kind = d[KIND_OFF];
            if (kind == 'm' && size && len != size) ok = 0;
            if (kind == 'l') {
                uint64_t t = 0;
                for (int i = 0; i < T_DIGITS; i++)
                    t = t * 10 + (uint64_t)(d[T_OFF + i] - '0');
                if (count < expect) lat[count] = now_ns() - t;
                probes = 1;
            }
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        nf++;
    } while (more);
    return ok && nf == 4 ? kind : '?';
}

static int sink(int argc, char **argv)
{
    size_t size = 0;
    int sub = 0, bind = 0, opt;
    long idle_ms = 0;
    while ((opt = getopt(argc, argv, "n:s:Sbi:")) != -1) {
        if (opt == 'n') expect = strtol(optarg, NULL, 10);
        else if (opt == 's') size = strtoul(optarg, NULL, 10);
        else if (opt == 'S') sub = 1;
        else if (opt == 'b') bind = 1;
        else if (opt == 'i') idle_ms = strtol(optarg, NULL, 10);
        else return 2;
    }
    int n = argc - optind;
    if (n < 1 || expect < 1) {
        fprintf(stderr, "usage: zbench sink -n COUNT [-s SIZE] [-S] [-b] "
                        "[-i IDLE_MS] ENDPOINT...\n");
        return 2;
    }
    if (size && size < MIN_BODY) size = MIN_BODY;
    lat = calloc((size_t)expect, sizeof *lat);
    void *ctx = zmq_ctx_new();
    /* One socket for every endpoint (fair-queued by libzmq): a consumer of
     * 25 topics then costs one poll item, not 25, per wake-up. */
    void *s = zmq_socket(ctx, sub ? ZMQ_SUB : ZMQ_PULL);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (sub) zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    for (int i = 0; i < n; i++) {
        if ((bind ? zmq_bind : zmq_connect)(s, argv[optind + i]) < 0)
            die(bind ? "bind" : "connect");
        if (bind) {
            char ep[256];
            size_t len = sizeof ep;
            zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &len);
            printf("endpoint=%s\n", ep);
        }
    }
    fflush(stdout);
    /* Each endpoint carries one topic: ready once a warm-up of n distinct
     * topics has arrived, i.e. every connection is up. */
    char (*warm)[sizeof topic] = calloc((size_t)n, sizeof *warm);
    int nwarm = 0;
    zmq_pollitem_t items[2] = {{s, 0, ZMQ_POLLIN, 0}, {NULL, 0, ZMQ_POLLIN, 0}};
    for (;;) {
        long timeout = count && idle_ms ? idle_ms : -1;
        int r = zmq_poll(items, 2, timeout);
        if (r < 0 && zmq_errno() == EINTR) continue;
        if (r < 0) die("poll");
        if (r == 0) finish(); /* silent for idle_ms after a start: lost */
        if (items[1].revents && read_command() == 'r') finish();
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        for (int k = 0; k < 4096; k++) {
            int kind = recv_one(s, size);
            if (kind < 0) break;
            if (kind == 'm' || kind == 'l') {
                last = now_ns();
                if (!count) first = last;
                if (++count == expect) finish();
            } else if (kind != 'w') {
                bad++;
            } else if (nwarm < n) {
                int i = 0;
                while (i < nwarm && strcmp(warm[i], topic)) i++;
                if (i == nwarm) {
                    strcpy(warm[nwarm++], topic);
                    if (nwarm == n) {
                        printf("ready\n");
                        fflush(stdout);
                    }
                }
            }
        }
    }
}

static int proxy(int argc, char **argv)
{
    /* -p: a PUB backend (for 4 subscribers, the fanout case's baseline),
     * which holds a message back rather than drop it (XPUB_NODROP) as
     * the receiver's fanout outlet does. */
    int pub = argc == 4 && !strcmp(argv[1], "-p");
    if (argc != 3 + pub) {
        fprintf(stderr, "usage: zbench proxy [-p] FRONTEND BACKEND\n");
        return 2;
    }
    void *ctx = zmq_ctx_new();
    void *front = zmq_socket(ctx, ZMQ_PULL);
    void *back = zmq_socket(ctx, pub ? ZMQ_PUB : ZMQ_PUSH);
    int one = 1;
    if (pub && zmq_setsockopt(back, ZMQ_XPUB_NODROP, &one, sizeof one) < 0)
        die("XPUB_NODROP");
    if (zmq_bind(front, argv[1 + pub]) < 0) die("bind frontend");
    if (zmq_bind(back, argv[2 + pub]) < 0) die("bind backend");
    char ep[256];
    size_t len = sizeof ep;
    zmq_getsockopt(front, ZMQ_LAST_ENDPOINT, ep, &len);
    printf("endpoint=%s\n", ep);
    fflush(stdout);
    zmq_proxy(front, back, NULL); /* until killed */
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "gen")) return gen(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "sink")) return sink(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "conn")) return conn(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "proxy")) return proxy(argc - 1, argv + 1);
    fprintf(stderr, "usage: zbench gen|conn|sink|proxy ...\n");
    return 2;
}
