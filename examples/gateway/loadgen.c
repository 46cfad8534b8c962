/*
 * examples/gateway/loadgen.c - the small load generator behind `make demo`.
 *
 * It drives the gateway example (examples/gateway/gateway.c) for a bounded
 * time with a handful of simulated clients, one thread and one keep-alive
 * HTTP/1.1 connection each: polite users on /api/orders (one of them sends
 * x-env: gray, one a W3C traceparent), misbehaving users far above the
 * per-user limit, a payments client that keeps POSTing through the flaky
 * payments backend (so the breaker opens and closes), and a sweep of many user
 * ids that shows the sticky 95/5 split. It then asks the gateway for its
 * breaker transitions (GET /-/events) and config (GET /-/config) and prints a
 * report (--report) or a JSON summary (--json).
 *
 * Plain POSIX sockets and pthreads: no libevent, no floodgate. Everything is
 * bounded: each thread stops at the deadline or its share of --max-requests,
 * sockets have receive and send timeouts, a response's header block is at
 * most 16 KiB, and all statistics live in fixed-size per-thread tables
 * (latency in log-linear histograms) that main() adds up after the join.
 *
 * Exit status: 0 after a run in which the gateway answered, 1 when it never
 * answered (cannot connect, or no response at all), 2 for a usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__)
#define LG_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define LG_PRINTF(f, a)
#endif

#define NS_PER_MS  INT64_C(1000000)
#define NS_PER_SEC INT64_C(1000000000)

#define HDR_MAX       16384      /* bytes of status line + headers accepted */
#define RBUF_CAP      32768      /* a connection's read buffer */
#define LINE_MAX_LEN  4096       /* a chunk-size or trailer line */
#define BODY_KEEP     1024       /* bytes of a load request's body kept (to check it) */
#define CTL_BODY_MAX  (4u << 20) /* bytes kept of /-/events, /-/config, /metrics */
#define STATUS_N      600        /* status codes 0..599; 0 = no response */
#define MAX_USERS     64
#define MAX_EVENTS    256  /* breaker transitions kept from /-/events */
#define SLOT_MS       100  /* resolution of the payments timeline */
#define IO_TIMEOUT_MS 2000 /* SO_RCVTIMEO / SO_SNDTIMEO, and connect() */
#define GRACE_MS      3000 /* how long an in-flight request may run past the deadline */

/* ---- options ------------------------------------------------------------------- */

struct options {
    const char *host;
    const char *port;
    int64_t duration_ms;
    int users;               /* simulated users on /api/orders */
    int abusers;             /* how many of them misbehave */
    double rate;             /* a polite user's requests per second */
    double abuse_rate;       /* a misbehaving user's requests per second */
    double payments_rate;    /* the payments client's POSTs per second, 0 = none */
    int sweep;               /* distinct user ids swept (each asked twice), 0 = none */
    int64_t max_requests;    /* across all threads */
    int64_t flaky_period_ms; /* the gateway's --flaky-period-ms, for the report; 0 = unknown */
    int report;
    int json;
};

static struct options opt = {
    .host = "127.0.0.1",
    .port = NULL,
    .duration_ms = 12000,
    .users = 8,
    .abusers = 2,
    .rate = 5.0,
    .abuse_rate = 50.0,
    .payments_rate = 80.0,
    .sweep = 1000,
    .max_requests = 500000,
    .flaky_period_ms = 0,
    .report = 0,
    .json = 0,
};

/* Set by main() before any thread starts, read-only afterwards. */
static struct sockaddr_storage server_addr;
static socklen_t server_addrlen;
static char host_header[300];
static int64_t t0_ns;       /* the load starts (CLOCK_MONOTONIC) */
static int64_t deadline_ns; /* no new request after this */

/* ---- small helpers ------------------------------------------------------------- */

static int64_t mono_ns(void) {
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

static void sleep_ns(int64_t ns) {
    if (ns <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)(ns / NS_PER_SEC),
                          .tv_nsec = (long)(ns % NS_PER_SEC)};
    (void)nanosleep(&ts, NULL);
}

static void errtext(int e, char *buf, size_t n) {
    if (strerror_r(e, buf, n) != 0)
        (void)snprintf(buf, n, "error %d", e);
}

static void say(FILE *o, const char *fmt, ...) LG_PRINTF(2, 3);
static void say(FILE *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    (void)vfprintf(o, fmt, ap);
    va_end(ap);
}

/* xorshift64*: each thread has its own state; good enough for jitter and ids. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

static double rng_unit(uint64_t *s) {
    return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

static int ci_eq(const char *a, size_t alen, const char *b) {
    return alen == strlen(b) && strncasecmp(a, b, alen) == 0;
}

/* Whether the comma-separated header value v (length n) lists token tok. */
static int ci_has_token(const char *v, size_t n, const char *tok) {
    size_t tl = strlen(tok);
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',' && v[i] != ';')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return 1;
        while (i < n && v[i] != ',')
            i++;
    }
    return 0;
}

/* Copies at most cap - 1 bytes, control characters replaced (they may reach a terminal). */
static void copy_field(char *dst, size_t cap, const char *src, size_t n) {
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++) {
        char ch = src[i];
        if ((unsigned char)ch < 0x20 || ch == 0x7f)
            ch = '?';
        dst[i] = ch;
    }
    dst[n] = '\0';
}

static int is_hex32(const char *s) {
    size_t n = strlen(s);
    if (n != 32)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return 0;
    }
    return 1;
}

/* Parses a decimal number in [lo, hi]; returns 0 or -1. */
static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = (int64_t)v;
    return 0;
}

static int parse_double(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

/* ---- JSON, just enough for the gateway's flat answers ----------------------------- */

/* A minimal reader for the flat JSON the gateway writes: find "key": and read its value. */
static const char *json_key(const char *p, const char *end, const char *key) {
    size_t kl = strlen(key);
    for (const char *q = p; q + kl + 2 <= end; q++) {
        if (q[0] != '"' || strncmp(q + 1, key, kl) != 0 || q[kl + 1] != '"')
            continue;
        const char *v = q + kl + 2;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r'))
            v++;
        if (v >= end || *v != ':')
            continue;
        v++;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r'))
            v++;
        return v < end ? v : NULL;
    }
    return NULL;
}

static int json_str(const char *p, const char *end, const char *key, char *out, size_t cap) {
    const char *v = json_key(p, end, key);
    out[0] = '\0';
    if (v == NULL || *v != '"')
        return -1;
    size_t n = 0;
    for (v++; v < end && *v != '"'; v++) {
        if (*v == '\\' && v + 1 < end)
            v++;
        char ch = *v;
        if ((unsigned char)ch < 0x20 || ch == '"' || ch == '\\')
            ch = '?'; /* nothing that would upset a terminal or our own JSON */
        if (n + 1 < cap)
            out[n++] = ch;
    }
    out[n] = '\0';
    return 0;
}

static int json_num(const char *p, const char *end, const char *key, double *out) {
    const char *v = json_key(p, end, key);
    char tmp[48];
    size_t n = 0;
    if (v == NULL)
        return -1;
    while (v + n < end && n + 1 < sizeof(tmp) && strchr("+-.0123456789eE", v[n]) != NULL)
        n++;
    memcpy(tmp, v, n);
    tmp[n] = '\0';
    return parse_double(tmp, -1e18, 1e18, out);
}

/* Where the object starting at p ('{') ends (just past its '}'), or NULL. */
static const char *json_object_end(const char *p, const char *end) {
    int depth = 0, in_str = 0;
    for (const char *q = p; q < end; q++) {
        if (in_str) {
            if (*q == '\\')
                q++;
            else if (*q == '"')
                in_str = 0;
        } else if (*q == '"') {
            in_str = 1;
        } else if (*q == '{' || *q == '[') {
            depth++;
        } else if (*q == '}' || *q == ']') {
            if (--depth == 0)
                return q + 1;
        }
    }
    return NULL;
}

/* ---- latency histogram ---------------------------------------------------------- */
/*
 * Log-linear in microseconds: exact below 64 µs, then 32 buckets per power of
 * two, so a bucket's midpoint is within 1.6 % of any value in it. 864 buckets
 * reach 2^31 µs (36 minutes); longer values land in the last one.
 */
#define HIST_SUB 32
#define HIST_N   (2 * HIST_SUB + 25 * HIST_SUB)

struct hist {
    uint64_t n;
    uint64_t max_us;
    uint32_t b[HIST_N];
};

static int hist_index(uint64_t us) {
    if (us < (uint64_t)2 * HIST_SUB)
        return (int)us;
    int msb = 0;
    for (uint64_t v = us; v > 1; v >>= 1)
        msb++;
    int shift = msb - 5; /* (us >> shift) is in [32, 63] */
    int idx = 2 * HIST_SUB + (shift - 1) * HIST_SUB + (int)((us >> shift) - HIST_SUB);
    return idx < HIST_N ? idx : HIST_N - 1;
}

static uint64_t hist_value(int idx) {
    if (idx < 2 * HIST_SUB)
        return (uint64_t)idx;
    int k = idx - 2 * HIST_SUB;
    int shift = k / HIST_SUB + 1;
    uint64_t low = (uint64_t)(k % HIST_SUB + HIST_SUB) << shift;
    return low + ((UINT64_C(1) << shift) >> 1);
}

static void hist_add(struct hist *h, uint64_t us) {
    h->n++;
    if (us > h->max_us)
        h->max_us = us;
    h->b[hist_index(us)]++;
}

static void hist_merge(struct hist *into, const struct hist *h) {
    into->n += h->n;
    if (h->max_us > into->max_us)
        into->max_us = h->max_us;
    for (int i = 0; i < HIST_N; i++)
        into->b[i] += h->b[i];
}

/* The q-quantile in milliseconds (the bucket's midpoint, never above the max). */
static double hist_quantile_ms(const struct hist *h, double q) {
    if (h->n == 0)
        return 0.0;
    uint64_t rank = (uint64_t)((double)h->n * q + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_N; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return (double)(v < h->max_us ? v : h->max_us) / 1000.0;
        }
    }
    return (double)h->max_us / 1000.0;
}

/* ---- what the gateway says ---------------------------------------------------------- */

enum route { RT_ORDERS, RT_GRAY, RT_PAYMENTS, RT_HEALTH, RT_NONE, RT_N };
static const char *const route_names[RT_N] = {"orders", "orders-gray", "payments", "health",
                                              "(not routed)"};

enum target { TG_NONE, TG_STABLE, TG_CANARY, TG_OTHER, TG_N };
static const char *const target_names[TG_N] = {"-", "stable", "canary", "(other)"};

/* x-fg-outcome values (fg_outcome_name), then "no header" and "something else". */
enum outcome {
    OC_OK,
    OC_RATE_LIMITED,
    OC_BREAKER_OPEN,
    OC_NO_ROUTE,
    OC_TIMED_OUT,
    OC_OVERLOADED,
    OC_FAULT_INJECTED,
    OC_HANDLER_FAILED,
    OC_CANCELED,
    OC_REJECTED,
    OC_NONE,
    OC_OTHER,
    OC_N
};
static const char *const outcome_names[OC_N] = {
    "ok",         "rate_limited",   "breaker_open",   "no_route", "timed_out",
    "overloaded", "fault_injected", "handler_failed", "canceled", "rejected",
    "-",          "(other)"};

static enum route route_of(const char *s) {
    for (int i = 0; i < RT_NONE; i++)
        if (strcmp(s, route_names[i]) == 0)
            return (enum route)i;
    return RT_NONE;
}

static enum target target_of(const char *s) {
    if (s[0] == '\0')
        return TG_NONE;
    if (strcmp(s, "stable") == 0)
        return TG_STABLE;
    if (strcmp(s, "canary") == 0)
        return TG_CANARY;
    return TG_OTHER;
}

static enum outcome outcome_of(const char *s) {
    if (s[0] == '\0')
        return OC_NONE;
    for (int i = 0; i < OC_NONE; i++)
        if (strcmp(s, outcome_names[i]) == 0)
            return (enum outcome)i;
    return OC_OTHER;
}

/* ---- one HTTP/1.1 connection ------------------------------------------------------- */

enum {
    E_OK = 0,
    E_CONNECT = -1,  /* connect() failed or timed out */
    E_EARLY = -2,    /* closed before the first byte of a response */
    E_TIMEOUT = -3,  /* no data within IO_TIMEOUT_MS, or past the hard deadline */
    E_IO = -4,       /* send or receive failed, or the response was cut short */
    E_PROTOCOL = -5, /* not an HTTP/1.x response we can frame */
};

struct conn {
    int fd;
    int last_errno;  /* of the last connect failure, for the message */
    int64_t hard_ns; /* give up on any response after this */
    size_t off, len; /* unread bytes are buf[off, len) */
    char buf[RBUF_CAP];
};

struct resp {
    int status;
    int close; /* the server will close: Connection: close, HTTP/1.0, or read-to-EOF */
    int chunked;
    int64_t content_length; /* -1 when absent */
    int64_t retry_after;    /* seconds, -1 when absent */
    char outcome[32];
    char route[48];
    char target[48];
    char trace_id[64];
    char traceparent[80];
};

/* Keeps up to cap bytes of a body and counts all of it. */
struct sink {
    char *p;
    size_t cap, kept, total;
};

static void sink_put(struct sink *s, const char *data, size_t n) {
    if (s != NULL) {
        size_t room = s->cap > s->kept + 1 ? s->cap - s->kept - 1 : 0;
        size_t k = n < room ? n : room;
        memcpy(s->p + s->kept, data, k);
        s->kept += k;
        s->p[s->kept] = '\0';
        s->total += n;
    }
}

static void conn_init(struct conn *c, int64_t hard_ns) {
    c->fd = -1;
    c->last_errno = 0;
    c->hard_ns = hard_ns;
    c->off = c->len = 0;
}

static void conn_close(struct conn *c) {
    if (c->fd >= 0)
        (void)close(c->fd);
    c->fd = -1;
    c->off = c->len = 0;
}

static int conn_open(struct conn *c) {
    int fd = socket(server_addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        c->last_errno = errno;
        return E_CONNECT;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        c->last_errno = errno;
        (void)close(fd);
        return E_CONNECT;
    }
    int rc = connect(fd, (const struct sockaddr *)&server_addr, server_addrlen);
    if (rc != 0 && errno != EINPROGRESS) {
        c->last_errno = errno;
        (void)close(fd);
        return E_CONNECT;
    }
    if (rc != 0) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        int n;
        do
            n = poll(&p, 1, IO_TIMEOUT_MS);
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
            c->last_errno = n == 0 ? ETIMEDOUT : errno;
            (void)close(fd);
            return E_CONNECT;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
            c->last_errno = soerr != 0 ? soerr : errno;
            (void)close(fd);
            return E_CONNECT;
        }
    }
    struct timeval tv = {.tv_sec = IO_TIMEOUT_MS / 1000,
                         .tv_usec = (suseconds_t)(IO_TIMEOUT_MS % 1000) * 1000};
    int one = 1;
    if (fcntl(fd, F_SETFL, flags) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
        c->last_errno = errno;
        (void)close(fd);
        return E_CONNECT;
    }
    c->fd = fd;
    c->off = c->len = 0;
    return E_OK;
}

static int send_all(struct conn *c, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? E_TIMEOUT : E_IO;
        p += k;
        n -= (size_t)k;
    }
    return E_OK;
}

/* Reads more bytes into the buffer: > 0 bytes read, 0 at EOF, or an E_ code. */
static int conn_fill(struct conn *c) {
    if (c->off == c->len)
        c->off = c->len = 0;
    if (c->len == sizeof(c->buf)) {
        if (c->off == 0)
            return E_PROTOCOL;
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    for (;;) {
        if (mono_ns() > c->hard_ns)
            return E_TIMEOUT;
        ssize_t k = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? E_TIMEOUT : E_IO;
        c->len += (size_t)k;
        return (int)(k > 0);
    }
}

/* One line (without its CR LF) into out; E_OK or an E_ code. */
static int conn_line(struct conn *c, char *out, size_t cap) {
    for (;;) {
        const char *nl = memchr(c->buf + c->off, '\n', c->len - c->off);
        if (nl != NULL) {
            size_t n = (size_t)(nl - (c->buf + c->off));
            size_t m = n > 0 && c->buf[c->off + n - 1] == '\r' ? n - 1 : n;
            copy_field(out, cap, c->buf + c->off, m);
            c->off += n + 1;
            return E_OK;
        }
        if (c->len - c->off > LINE_MAX_LEN)
            return E_PROTOCOL;
        int r = conn_fill(c);
        if (r == 0)
            return E_IO;
        if (r < 0)
            return r;
    }
}

/* Exactly n body bytes into the sink. */
static int conn_body(struct conn *c, uint64_t n, struct sink *s) {
    while (n > 0) {
        if (c->off == c->len) {
            int r = conn_fill(c);
            if (r == 0)
                return E_IO;
            if (r < 0)
                return r;
        }
        size_t avail = c->len - c->off;
        size_t k = (uint64_t)avail < n ? avail : (size_t)n;
        sink_put(s, c->buf + c->off, k);
        c->off += k;
        n -= k;
    }
    return E_OK;
}

/* Where the header block in buf[off, len) ends (just past its empty line), or 0. */
static size_t header_end(const struct conn *c) {
    const char *p = c->buf + c->off;
    size_t n = c->len - c->off;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n')
            continue;
        if (i + 1 < n && p[i + 1] == '\n')
            return i + 2;
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

static int parse_header(struct resp *r, const char *line, size_t n) {
    const char *colon = memchr(line, ':', n);
    if (colon == NULL || colon == line)
        return E_PROTOCOL;
    size_t nl = (size_t)(colon - line);
    const char *v = colon + 1;
    size_t vn = n - nl - 1;
    while (vn > 0 && (*v == ' ' || *v == '\t'))
        v++, vn--;
    while (vn > 0 && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
        vn--;
    if (ci_eq(line, nl, "content-length")) {
        int64_t cl = 0;
        if (vn == 0 || vn > 15)
            return E_PROTOCOL;
        for (size_t i = 0; i < vn; i++) {
            if (v[i] < '0' || v[i] > '9')
                return E_PROTOCOL;
            cl = cl * 10 + (v[i] - '0');
        }
        if (r->content_length >= 0 && r->content_length != cl)
            return E_PROTOCOL;
        r->content_length = cl;
    } else if (ci_eq(line, nl, "transfer-encoding")) {
        r->chunked = ci_has_token(v, vn, "chunked");
    } else if (ci_eq(line, nl, "connection")) {
        if (ci_has_token(v, vn, "close"))
            r->close = 1;
        else if (ci_has_token(v, vn, "keep-alive"))
            r->close = 0;
    } else if (ci_eq(line, nl, "retry-after")) {
        int64_t ra = 0;
        size_t i = 0;
        for (; i < vn && i < 9 && v[i] >= '0' && v[i] <= '9'; i++)
            ra = ra * 10 + (v[i] - '0');
        r->retry_after = i > 0 && i == vn ? ra : 0; /* an HTTP date counts as "present" */
    } else if (ci_eq(line, nl, "x-fg-outcome")) {
        copy_field(r->outcome, sizeof(r->outcome), v, vn);
    } else if (ci_eq(line, nl, "x-fg-route")) {
        copy_field(r->route, sizeof(r->route), v, vn);
    } else if (ci_eq(line, nl, "x-fg-target")) {
        copy_field(r->target, sizeof(r->target), v, vn);
    } else if (ci_eq(line, nl, "x-fg-trace-id")) {
        copy_field(r->trace_id, sizeof(r->trace_id), v, vn);
    } else if (ci_eq(line, nl, "traceparent")) {
        copy_field(r->traceparent, sizeof(r->traceparent), v, vn);
    }
    return E_OK;
}

/* The status line and headers, from buf[off, off + n). */
static int parse_head(struct resp *r, const char *p, size_t n) {
    memset(r, 0, sizeof(*r));
    r->content_length = -1;
    r->retry_after = -1;
    const char *eol = memchr(p, '\n', n);
    if (eol == NULL)
        return E_PROTOCOL;
    size_t ln = (size_t)(eol - p);
    if (ln < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ')
        return E_PROTOCOL;
    if (p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
        return E_PROTOCOL;
    r->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    r->close = p[7] == '0'; /* HTTP/1.0 closes unless it says keep-alive */
    const char *q = eol + 1;
    const char *end = p + n;
    while (q < end) {
        const char *e = memchr(q, '\n', (size_t)(end - q));
        if (e == NULL)
            return E_PROTOCOL;
        size_t len = (size_t)(e - q);
        if (len > 0 && q[len - 1] == '\r')
            len--;
        if (len == 0)
            break; /* the empty line */
        if (q[0] == ' ' || q[0] == '\t')
            return E_PROTOCOL; /* obsolete line folding */
        int rc = parse_header(r, q, len);
        if (rc != E_OK)
            return rc;
        q = e + 1;
    }
    return E_OK;
}

/* Reads one response (its body into s, which may be NULL). */
static int read_response(struct conn *c, struct resp *r, struct sink *s, int is_head) {
    size_t hend;
    int got_any = c->len > c->off;
    for (;;) {
        while ((hend = header_end(c)) == 0) {
            if (c->len - c->off >= HDR_MAX)
                return E_PROTOCOL;
            int k = conn_fill(c);
            if (k == 0)
                return got_any ? E_IO : E_EARLY;
            if (k < 0)
                return k == E_IO && !got_any ? E_EARLY : k;
            got_any = 1;
        }
        if (hend > HDR_MAX)
            return E_PROTOCOL;
        int rc = parse_head(r, c->buf + c->off, hend);
        c->off += hend;
        if (rc != E_OK)
            return rc;
        if (r->status >= 200)
            break;
        /* 1xx: an interim response, then the real one. */
    }
    if (is_head || r->status == 204 || r->status == 304)
        return E_OK;
    if (r->chunked) {
        char line[LINE_MAX_LEN + 1];
        for (;;) {
            int rc = conn_line(c, line, sizeof(line));
            if (rc != E_OK)
                return rc;
            char *end;
            errno = 0;
            unsigned long long size = strtoull(line, &end, 16);
            if (errno != 0 || end == line || size > (1ull << 30) ||
                (*end != '\0' && *end != ';' && *end != ' '))
                return E_PROTOCOL;
            if (size == 0)
                break;
            rc = conn_body(c, size, s);
            if (rc == E_OK)
                rc = conn_line(c, line, sizeof(line));
            if (rc != E_OK)
                return rc;
            if (line[0] != '\0')
                return E_PROTOCOL;
        }
        for (int i = 0; i < 64; i++) { /* trailers, up to the empty line */
            int rc = conn_line(c, line, sizeof(line));
            if (rc != E_OK)
                return rc;
            if (line[0] == '\0')
                return E_OK;
        }
        return E_PROTOCOL;
    }
    if (r->content_length >= 0)
        return conn_body(c, (uint64_t)r->content_length, s);
    /* Neither: the body runs to the end of the connection (bounded). */
    r->close = 1;
    for (uint64_t total = 0; total < (64u << 20);) {
        if (c->off < c->len) {
            size_t k = c->len - c->off;
            sink_put(s, c->buf + c->off, k);
            c->off = c->len;
            total += k;
        }
        int k = conn_fill(c);
        if (k == 0)
            return E_OK;
        if (k < 0)
            return k;
    }
    return E_PROTOCOL;
}

/*
 * Sends one request and reads its response, reconnecting when needed. A
 * reused keep-alive connection the server has closed in the meantime shows
 * up as a failed send or as EOF before any byte of the response; then the
 * request is sent once more on a fresh connection. *lat_ns is the time from
 * the send that got the answer to its last byte.
 */
static int exchange(struct conn *c, const char *req, size_t n, struct resp *r, struct sink *s,
                    int64_t *lat_ns, uint64_t *reconnects) {
    for (int attempt = 0; attempt < 2; attempt++) {
        int fresh = 0;
        if (c->fd < 0) {
            int rc = conn_open(c);
            if (rc != E_OK)
                return rc;
            fresh = 1;
            if (attempt > 0 && reconnects != NULL)
                (*reconnects)++;
        }
        if (s != NULL) {
            s->kept = s->total = 0;
            s->p[0] = '\0';
        }
        int64_t start = mono_ns();
        int rc = send_all(c, req, n);
        int retry = rc == E_IO; /* EPIPE, ECONNRESET: the server closed it */
        if (rc == E_OK) {
            rc = read_response(c, r, s, strncmp(req, "HEAD ", 5) == 0);
            retry = rc == E_EARLY;
        }
        *lat_ns = mono_ns() - start;
        if (rc == E_OK) {
            if (r->close)
                conn_close(c);
            return E_OK;
        }
        conn_close(c);
        if (fresh || !retry)
            return rc;
    }
    return E_IO;
}

/* ---- the simulated clients ---------------------------------------------------------- */

enum role { ROLE_POLITE, ROLE_GRAY, ROLE_TRACED, ROLE_ABUSER, ROLE_PAYMENTS, ROLE_SWEEP };

/* What one thread saw; summed by main() after the join. */
struct stats {
    uint64_t sent, answered, reconnects;
    uint64_t err[6]; /* by -E_ code */
    uint64_t status_outcome[STATUS_N][OC_N];
    uint64_t route_target[RT_N][TG_N];
    struct hist lat_all;
    struct hist lat_route[RT_N];
    uint64_t ok, limited, other; /* 2xx, 429, anything else (for the per-user table) */
    uint64_t targets[TG_N + 1];  /* per user: stable, canary, ...; [TG_N] = gray route */
    uint64_t trace_sent, trace_matched;
    char trace_example[33];
    /* contract checks */
    uint64_t no_retry_after, bad_trace_id, no_outcome, wrong_version;
};

enum { PAY_OK, PAY_FAILED, PAY_REFUSED, PAY_N };

/* The payments client's connections: enough that a few slow calls (up to the
 * 300 ms timeout) do not stall it, far below the bulkhead's 16. */
#define PAY_CONNS 4

struct client {
    char name[32];
    enum role role;
    double rate;
    int index;
    int64_t cap; /* requests */
    pthread_t thread;
    struct stats *st;
    uint32_t (*pay)[PAY_N]; /* ROLE_PAYMENTS: outcomes per SLOT_MS since t0 */
    size_t pay_slots;
    uint8_t *sweep_first, *sweep_second; /* ROLE_SWEEP: the target per id, per pass */
};

static const char *const polite_names[] = {"alice", "bob",   "carol", "dave", "erin",
                                           "frank", "grace", "heidi", "ivan", "judy",
                                           "ken",   "liz",   "mike",  "nina", "olga"};
static const char *const abuser_names[] = {"mallory", "trudy", "oscar", "chuck"};

static void record(struct client *cl, const char *path, int rc, const struct resp *r,
                   int64_t lat_ns, const char *body, int64_t sent_ns) {
    struct stats *st = cl->st;
    st->sent++;
    if (rc != E_OK) {
        st->err[-rc]++;
        st->status_outcome[0][OC_NONE]++;
        st->other++;
        return;
    }
    st->answered++;
    enum outcome oc = outcome_of(r->outcome);
    enum route rt = route_of(r->route);
    /* A route without a split names itself as the target: no split there. */
    enum target tg = strcmp(r->target, r->route) == 0 ? TG_NONE : target_of(r->target);
    st->status_outcome[r->status < STATUS_N ? r->status : 0][oc]++;
    st->route_target[rt][tg]++;
    uint64_t us = (uint64_t)(lat_ns > 0 ? lat_ns / 1000 : 0);
    hist_add(&st->lat_all, us);
    hist_add(&st->lat_route[rt], us);
    if (r->status >= 200 && r->status < 300)
        st->ok++;
    else if (r->status == 429)
        st->limited++;
    else
        st->other++;
    if (rt == RT_GRAY)
        st->targets[TG_N]++;
    else
        st->targets[tg]++;

    /* What README.md promises, checked on every answer. */
    if ((r->status == 429 || r->status == 503) && r->retry_after < 1)
        st->no_retry_after++;
    int chained = strncmp(path, "/api/", 5) == 0 || strcmp(path, "/healthz") == 0;
    if (chained && r->status != 400 && r->outcome[0] == '\0')
        st->no_outcome++;
    if (chained && r->status != 400 && !is_hex32(r->trace_id))
        st->bad_trace_id++;
    if (r->status == 200 && (rt == RT_ORDERS || rt == RT_GRAY)) {
        const char *want = rt == RT_GRAY ? "gray" : tg == TG_CANARY ? "v2" : "v1";
        char got[16];
        if (json_str(body, body + strlen(body), "version", got, sizeof(got)) != 0 ||
            strcmp(got, want) != 0)
            st->wrong_version++;
    }
    if (cl->pay != NULL) {
        size_t slot = (size_t)((sent_ns - t0_ns) / (SLOT_MS * NS_PER_MS));
        if (sent_ns >= t0_ns && slot < cl->pay_slots) {
            if (r->status >= 200 && r->status < 300)
                cl->pay[slot][PAY_OK]++;
            else if (oc == OC_BREAKER_OPEN || oc == OC_OVERLOADED)
                cl->pay[slot][PAY_REFUSED]++;
            else
                cl->pay[slot][PAY_FAILED]++;
        }
    }
}

static int build_request(char *buf, size_t cap, const char *method, const char *path,
                         const char *extra, const char *body) {
    int n;
    if (body != NULL)
        n = snprintf(buf, cap,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: floodgate-loadgen\r\n%s"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, host_header, extra, strlen(body), body);
    else
        n = snprintf(buf, cap,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: floodgate-loadgen\r\n%s\r\n",
                     method, path, host_header, extra);
    return n > 0 && (size_t)n < cap ? n : -1;
}

/* A few requests that show the other answers: health, no route, no user id. */
static void sweep_probes(struct client *cl, struct conn *c) {
    static const char *const probes[][2] = {
        {"/healthz", ""}, {"/no/such/path", "x-user-id: sweep\r\n"}, {"/api/orders", ""}};
    char req[1024], body[BODY_KEEP];
    struct sink s = {body, sizeof(body), 0, 0};
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        struct resp r;
        int64_t lat = 0;
        int n = build_request(req, sizeof(req), "GET", probes[i][0], probes[i][1], NULL);
        if (n < 0)
            continue;
        int64_t now = mono_ns();
        int rc = exchange(c, req, (size_t)n, &r, &s, &lat, &cl->st->reconnects);
        record(cl, probes[i][0], rc, &r, lat, body, now);
    }
}

static void *client_main(void *arg) {
    struct client *cl = arg;
    struct conn *c = malloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    conn_init(c, deadline_ns + GRACE_MS * NS_PER_MS);
    uint64_t rng =
        UINT64_C(0x9e3779b97f4a7c15) * (uint64_t)(cl->index + 1) ^ (uint64_t)mono_ns();
    if (rng == 0)
        rng = 1;
    int64_t interval = (int64_t)((double)NS_PER_SEC / cl->rate);
    int64_t next = t0_ns + (int64_t)(rng_unit(&rng) * (double)interval);
    char req[2048], body[BODY_KEEP], path[128], extra[512], payload[128];
    struct sink s = {body, sizeof(body), 0, 0};
    int64_t k = 0;

    sleep_ns(t0_ns - mono_ns());
    if (cl->role == ROLE_SWEEP)
        sweep_probes(cl, c);
    while ((int64_t)cl->st->sent < cl->cap) {
        int64_t now = mono_ns();
        if (now >= deadline_ns)
            break;
        if (next > now) {
            sleep_ns((next < deadline_ns ? next : deadline_ns) - now);
            continue;
        }
        if (now - next > NS_PER_SEC)
            next = now; /* fell behind (a slow answer): no catch-up burst */
        next += interval;

        const char *method = "GET";
        const char *pl = NULL;
        char sent_trace[33] = "";
        int sweep_id = -1, sweep_pass = 0;
        extra[0] = '\0';
        switch (cl->role) {
        case ROLE_PAYMENTS:
            method = "POST";
            (void)snprintf(path, sizeof(path), "/api/payments/%d%06" PRId64, cl->index, k);
            (void)snprintf(payload, sizeof(payload),
                           "{\"amount\":%" PRIu64 ",\"currency\":\"EUR\"}",
                           rng_next(&rng) % 10000 + 100);
            pl = payload;
            break;
        case ROLE_SWEEP:
            if (k >= 2 * (int64_t)opt.sweep)
                goto done;
            sweep_id = (int)(k % opt.sweep);
            sweep_pass = (int)(k / opt.sweep);
            (void)snprintf(path, sizeof(path), "/api/orders/%" PRId64, k);
            (void)snprintf(extra, sizeof(extra), "x-user-id: sweep-%04d\r\n", sweep_id);
            break;
        case ROLE_GRAY:
            (void)snprintf(path, sizeof(path), "/api/orders/%" PRId64, k);
            (void)snprintf(extra, sizeof(extra), "x-user-id: %s\r\nx-env: gray\r\n", cl->name);
            break;
        case ROLE_TRACED:
            (void)snprintf(sent_trace, sizeof(sent_trace), "%016" PRIx64 "%016" PRIx64,
                           rng_next(&rng), rng_next(&rng) | 1);
            (void)snprintf(path, sizeof(path), "/api/orders/%" PRId64, k);
            (void)snprintf(extra, sizeof(extra),
                           "x-user-id: %s\r\ntraceparent: 00-%s-%016" PRIx64 "-01\r\n",
                           cl->name, sent_trace, rng_next(&rng) | 1);
            break;
        case ROLE_POLITE:
        case ROLE_ABUSER:
            (void)snprintf(path, sizeof(path), "/api/orders/%" PRId64, k);
            (void)snprintf(extra, sizeof(extra), "x-user-id: %s\r\n", cl->name);
            break;
        }
        k++;
        int n = build_request(req, sizeof(req), method, path, extra, pl);
        if (n < 0)
            break;
        struct resp r;
        int64_t lat = 0;
        int rc = exchange(c, req, (size_t)n, &r, &s, &lat, &cl->st->reconnects);
        record(cl, path, rc, &r, lat, body, now);
        if (rc == E_CONNECT)
            sleep_ns(100 * NS_PER_MS); /* the gateway is gone or full: do not spin */
        if (rc != E_OK)
            continue;
        if (sent_trace[0] != '\0') {
            cl->st->trace_sent++;
            if (strcasecmp(sent_trace, r.trace_id) == 0) {
                cl->st->trace_matched++;
                if (cl->st->trace_example[0] == '\0')
                    copy_field(cl->st->trace_example, sizeof(cl->st->trace_example),
                               sent_trace, 32);
            }
        }
        if (sweep_id >= 0) {
            enum target tg = target_of(r.target);
            uint8_t code = (uint8_t)(tg == TG_NONE ? 0 : tg);
            if (sweep_pass == 0)
                cl->sweep_first[sweep_id] = code;
            else
                cl->sweep_second[sweep_id] = code;
        }
        /* A polite client waits as long as Retry-After asks; a misbehaving one does not. */
        if (r.status == 429 && r.retry_after > 0 && cl->role != ROLE_ABUSER &&
            cl->role != ROLE_PAYMENTS) {
            int64_t until = mono_ns() + r.retry_after * NS_PER_SEC;
            if (until > next)
                next = until;
        }
    }
done:
    conn_close(c);
    free(c);
    return NULL;
}

/* ---- control requests: /-/events, /-/config, /metrics ------------------------------ */

/* GET path on a fresh connection; the body (NUL-terminated) in *s. */
static int control_get(const char *path, const char *extra, struct resp *r, struct sink *s,
                       int *err_no) {
    struct conn *c = malloc(sizeof(*c));
    char req[1024];
    int64_t lat;
    if (c == NULL)
        return E_IO;
    conn_init(c, mono_ns() + 5 * NS_PER_SEC);
    int n = build_request(req, sizeof(req), "GET", path, extra, NULL);
    int rc = n < 0 ? E_PROTOCOL : exchange(c, req, (size_t)n, r, s, &lat, NULL);
    if (err_no != NULL)
        *err_no = c->last_errno;
    conn_close(c);
    free(c);
    return rc;
}

struct transition {
    char breaker[32], from[16], to[16];
    double at_ms;
};

struct gateway_info {
    int have_events;
    double uptime_ms;
    int n_events;
    struct transition ev[MAX_EVENTS];
    int have_config;
    char version[64], source[128];
    double generation;
    int64_t metrics_lines; /* -1 when /metrics did not answer */
    char trace_sent[33], trace_back[64], traceparent_back[80];
};

static void parse_events(struct gateway_info *gi, const char *p, size_t n) {
    const char *end = p + n;
    gi->n_events = 0;
    if (json_num(p, end, "uptime_ms", &gi->uptime_ms) != 0)
        return;
    gi->have_events = 1;
    const char *a = json_key(p, end, "breaker_transitions");
    if (a == NULL || *a != '[')
        return;
    const char *q = a + 1;
    while (q < end && gi->n_events < MAX_EVENTS) {
        while (q < end && *q != '{' && *q != ']')
            q++;
        if (q >= end || *q == ']')
            break;
        const char *oe = json_object_end(q, end);
        if (oe == NULL)
            break;
        struct transition *t = &gi->ev[gi->n_events];
        if (json_str(q, oe, "from", t->from, sizeof(t->from)) == 0 &&
            json_str(q, oe, "to", t->to, sizeof(t->to)) == 0 &&
            json_num(q, oe, "at_ms", &t->at_ms) == 0) {
            if (json_str(q, oe, "breaker", t->breaker, sizeof(t->breaker)) != 0)
                (void)snprintf(t->breaker, sizeof(t->breaker), "?");
            gi->n_events++;
        }
        q = oe;
    }
}

/* ---- the report --------------------------------------------------------------------- */

static const char *role_label(const struct client *cl, char *buf, size_t n) {
    switch (cl->role) {
    case ROLE_POLITE:
        (void)snprintf(buf, n, "polite, %.0f/s", cl->rate);
        break;
    case ROLE_GRAY:
        (void)snprintf(buf, n, "polite, %.0f/s, x-env: gray", cl->rate);
        break;
    case ROLE_TRACED:
        (void)snprintf(buf, n, "polite, %.0f/s, traceparent", cl->rate);
        break;
    case ROLE_ABUSER:
        (void)snprintf(buf, n, "misbehaving, %.0f/s", cl->rate);
        break;
    case ROLE_PAYMENTS:
        (void)snprintf(buf, n, "payments, %.0f/s", cl->rate);
        break;
    case ROLE_SWEEP:
        (void)snprintf(buf, n, "sweep");
        break;
    }
    return buf;
}

static const char *outcome_meaning(int status, enum outcome oc) {
    if (status == 0)
        return "no answer: connection failed or timed out";
    if (status == 400)
        return "bad request: /api/orders needs x-user-id (a deliberate probe)";
    switch (oc) {
    case OC_OK:
        return "served by the backend";
    case OC_RATE_LIMITED:
        return "rate limited: per-user 10/s, burst 20 (the misbehaving users)";
    case OC_BREAKER_OPEN:
        return "refused at once: the payments breaker is open";
    case OC_NO_ROUTE:
        return "no route for the path (a deliberate probe)";
    case OC_TIMED_OUT:
        return "the backend took longer than the 300 ms timeout";
    case OC_OVERLOADED:
        return "overloaded: more than 16 payments in flight (bulkhead)";
    case OC_HANDLER_FAILED:
        return "the backend failed (payments in its failing phase)";
    case OC_FAULT_INJECTED:
        return "a fault injection stage answered";
    case OC_CANCELED:
        return "canceled";
    case OC_REJECTED:
        return "rejected by a stage";
    case OC_NONE:
        return "answered outside the chain";
    case OC_OTHER:
    case OC_N:
        break;
    }
    return "";
}

static const char *transition_meaning(const struct transition *t) {
    if (strcmp(t->from, "closed") == 0 && strcmp(t->to, "open") == 0)
        return "failures reached 50% of the calls in the last 2 s";
    if (strcmp(t->from, "open") == 0 && strncmp(t->to, "half", 4) == 0)
        return "open for 1 s: now 3 trial calls go through";
    if (strncmp(t->from, "half", 4) == 0 && strcmp(t->to, "open") == 0)
        return "a trial call failed: open again";
    if (strncmp(t->from, "half", 4) == 0 && strcmp(t->to, "closed") == 0)
        return "the trial calls succeeded: traffic flows again";
    return "";
}

static double pct(uint64_t a, uint64_t b) {
    return b > 0 ? 100.0 * (double)a / (double)b : 0.0;
}

struct totals {
    struct stats all;
    uint32_t (*pay)[PAY_N];
    size_t pay_slots;
    int sweep_ids, sweep_stable, sweep_canary, sweep_checked, sweep_same;
    char canary_example[4][24];
    int64_t elapsed_ns;
    double offset_ms; /* gateway uptime at t0, when known */
    int have_offset;
};

static void report_status(FILE *o, const struct totals *T) {
    const struct stats *a = &T->all;
    struct row {
        int status;
        int oc;
        uint64_t n;
    } rows[64];
    int nrows = 0;
    for (int s = 0; s < STATUS_N; s++)
        for (int oc = 0; oc < OC_N; oc++)
            if (a->status_outcome[s][oc] > 0 && nrows < 64)
                rows[nrows++] = (struct row){s, oc, a->status_outcome[s][oc]};
    for (int i = 1; i < nrows; i++) /* by count, descending */
        for (int j = i; j > 0 && rows[j].n > rows[j - 1].n; j--) {
            struct row t = rows[j];
            rows[j] = rows[j - 1];
            rows[j - 1] = t;
        }
    say(o, "\nRequests by status (x-fg-outcome says why)\n");
    for (int i = 0; i < nrows; i++) {
        char st[8];
        if (rows[i].status == 0)
            (void)snprintf(st, sizeof(st), "---");
        else
            (void)snprintf(st, sizeof(st), "%d", rows[i].status);
        say(o, "  %-4s %-15s %7" PRIu64 " %5.1f%%  %s\n", st, outcome_names[rows[i].oc],
            rows[i].n, pct(rows[i].n, a->sent), outcome_meaning(rows[i].status, rows[i].oc));
    }
    uint64_t errs = 0;
    for (int i = 1; i < 6; i++)
        errs += a->err[i];
    if (errs > 0)
        say(o,
            "  transport errors: %" PRIu64 " connect, %" PRIu64 " timeout, %" PRIu64
            " closed early, %" PRIu64 " i/o, %" PRIu64 " protocol\n",
            a->err[-E_CONNECT], a->err[-E_TIMEOUT], a->err[-E_EARLY], a->err[-E_IO],
            a->err[-E_PROTOCOL]);
}

static void report_split(FILE *o, const struct totals *T) {
    const struct stats *a = &T->all;
    say(o, "\nRoutes and split targets (x-fg-route, x-fg-target)\n");
    for (int rt = 0; rt < RT_N; rt++) {
        uint64_t total = 0;
        for (int tg = 0; tg < TG_N; tg++)
            total += a->route_target[rt][tg];
        if (total == 0)
            continue;
        for (int tg = 0; tg < TG_N; tg++) {
            uint64_t n = a->route_target[rt][tg];
            if (n == 0)
                continue;
            say(o, "  %-12s %-8s %7" PRIu64, route_names[rt], target_names[tg], n);
            if (tg != TG_NONE)
                say(o, "  %5.1f%% of the route's requests", pct(n, total));
            else if (rt == RT_GRAY)
                say(o, "  x-env: gray goes to the gray build");
            say(o, "\n");
        }
    }
    if (T->sweep_ids > 0) {
        int known = T->sweep_stable + T->sweep_canary;
        say(o,
            "  The split is per user (sticky on x-user-id), so count users, not requests:\n");
        say(o,
            "  of %d distinct user ids, %d went to stable and %d to canary (%.1f%%; weights "
            "95/5)",
            T->sweep_ids, T->sweep_stable, T->sweep_canary,
            pct((uint64_t)T->sweep_canary, (uint64_t)known));
        say(o, T->sweep_canary > 0 ? ", e.g.\n " : ".\n");
        for (int i = 0; i < 4 && T->sweep_canary > 0 && T->canary_example[i][0] != '\0'; i++)
            say(o, "%s %s", i > 0 ? "," : "", T->canary_example[i]);
        if (T->sweep_canary > 0)
            say(o, ".\n");
        if (T->sweep_checked > 0)
            say(o, "  Asked again later, %d of %d ids got the same target%s\n", T->sweep_same,
                T->sweep_checked,
                T->sweep_same == T->sweep_checked ? "." : "  <-- NOT sticky");
    }
}

static void report_breaker(FILE *o, const struct totals *T, const struct gateway_info *gi) {
    say(o, "\nCircuit breaker \"payments\" (t = seconds since the gateway started)\n");
    if (opt.flaky_period_ms > 0) {
        double p = (double)opt.flaky_period_ms / 1000.0;
        say(o,
            "  The payments backend fails from t=%.1fs to t=%.1fs (and again every %.0f s).\n",
            p / 4, p / 2, p);
    }
    if (!gi->have_events) {
        say(o, "  (GET /-/events did not answer: no transitions to show)\n");
    } else if (gi->n_events == 0) {
        say(o, "  No transitions: the breaker stayed closed.\n");
    } else {
        int shown = 0;
        for (int i = 0; i < gi->n_events; i++) {
            const struct transition *t = &gi->ev[i];
            if (shown == 12) {
                say(o, "  ... and %d more (GET /-/events)\n", gi->n_events - i);
                break;
            }
            say(o, "  t=%6.2fs  %-9s -> %-9s  %s\n", t->at_ms / 1000.0, t->from, t->to,
                transition_meaning(t));
            shown++;
        }
    }
    if (T->pay == NULL || T->pay_slots == 0)
        return;
    /* The payments answers as a strip, one column per W ms of gateway time. */
    double off = T->have_offset ? T->offset_ms : 0.0;
    int64_t span = (int64_t)((double)T->elapsed_ns / (double)NS_PER_MS) + SLOT_MS;
    static const int64_t widths[] = {250, 500, 1000, 2000, 5000, 10000, 30000, 60000};
    int64_t w = widths[0];
    for (size_t i = 0; i < sizeof(widths) / sizeof(widths[0]); i++) {
        w = widths[i];
        if (span / w + 2 <= 64)
            break;
    }
    int64_t first = (int64_t)off / w;
    int64_t last = ((int64_t)off + span) / w;
    if (last - first + 1 > 64)
        last = first + 63;
    int ncol = (int)(last - first + 1);
    uint32_t col[64][PAY_N];
    memset(col, 0, sizeof(col));
    for (size_t i = 0; i < T->pay_slots; i++) {
        int64_t gt = (int64_t)off + (int64_t)i * SLOT_MS + SLOT_MS / 2;
        int64_t j = gt / w - first;
        if (j < 0 || j >= ncol)
            continue;
        for (int k = 0; k < PAY_N; k++)
            col[j][k] += T->pay[i][k];
    }
    char strip[65], phase[65];
    int any_phase = 0;
    for (int j = 0; j < ncol; j++) {
        const uint32_t *c = col[j];
        char ch = ' ';
        if (c[PAY_REFUSED] > 0 && c[PAY_REFUSED] >= c[PAY_FAILED] &&
            c[PAY_REFUSED] >= c[PAY_OK])
            ch = 'O';
        else if (c[PAY_FAILED] > 0 && c[PAY_FAILED] >= c[PAY_OK])
            ch = 'x';
        else if (c[PAY_OK] > 0)
            ch = c[PAY_FAILED] + c[PAY_REFUSED] > 0 ? ':' : '.';
        strip[j] = ch;
        phase[j] = ' ';
        if (opt.flaky_period_ms > 0 && T->have_offset) {
            int64_t mid = (first + j) * w + w / 2;
            int64_t ph = mid % opt.flaky_period_ms;
            if (ph >= opt.flaky_period_ms / 4 && ph < opt.flaky_period_ms / 2) {
                phase[j] = '#';
                any_phase = 1;
            }
        }
    }
    while (ncol > 1 && strip[ncol - 1] == ' ') /* after the last request */
        ncol--;
    strip[ncol] = phase[ncol] = '\0';
    say(o, "  payments |%s|  one column = %.2f s, from t=%.2fs\n", strip, (double)w / 1000.0,
        (double)(first * w) / 1000.0);
    if (any_phase)
        say(o, "  backend  |%s|  # = the backend's failing phase\n", phase);
    say(o,
        "  . all ok   : mostly ok   x mostly failed (500/504)   O mostly refused by the open "
        "breaker (503)\n");
}

static void report_users(FILE *o, struct client *cls, int ncl) {
    struct stats pay = {0};
    int npay = 0;
    say(o, "\nUsers (each x-user-id may send 10/s with a burst of 20; the rest get 429 and a "
           "Retry-After)\n");
    say(o, "  %-9s %-28s %6s %6s %6s %6s  %s\n", "user", "behaviour", "sent", "2xx", "429",
        "other", "target");
    for (int i = 0; i < ncl; i++) {
        const struct client *cl = &cls[i];
        char lb[64];
        const char *tg;
        if (cl->role == ROLE_PAYMENTS) {
            pay.sent += cl->st->sent;
            pay.ok += cl->st->ok;
            pay.limited += cl->st->limited;
            pay.other += cl->st->other;
            npay++;
            continue;
        }
        if (cl->role == ROLE_SWEEP)
            continue;
        const uint64_t *t = cl->st->targets;
        if (t[TG_STABLE] > 0 && t[TG_CANARY] > 0)
            tg = "stable AND canary (not sticky!)";
        else
            tg = t[TG_N] > 0        ? "gray"
                 : t[TG_CANARY] > 0 ? "canary"
                 : t[TG_STABLE] > 0 ? "stable"
                                    : "-";
        say(o, "  %-9s %-28s %6" PRIu64 " %6" PRIu64 " %6" PRIu64 " %6" PRIu64 "  %s\n",
            cl->name, role_label(cl, lb, sizeof(lb)), cl->st->sent, cl->st->ok,
            cl->st->limited, cl->st->other, tg);
    }
    if (npay > 0) {
        char lb[64];
        (void)snprintf(lb, sizeof(lb), "POST %.0f/s, %d connections", opt.payments_rate, npay);
        say(o, "  %-9s %-28s %6" PRIu64 " %6" PRIu64 " %6" PRIu64 " %6" PRIu64 "  %s\n",
            "payments", lb, pay.sent, pay.ok, pay.limited, pay.other, "(no user limit)");
    }
}

static void report_latency(FILE *o, const struct totals *T) {
    const struct stats *a = &T->all;
    say(o, "\nLatency in ms, as the client saw it (answers of every status)\n");
    say(o, "  %-12s %7s %8s %8s %8s %8s\n", "route", "count", "p50", "p90", "p99", "max");
    for (int rt = -1; rt < RT_N; rt++) {
        const struct hist *h = rt < 0 ? &a->lat_all : &a->lat_route[rt];
        if (h->n == 0 || (rt == RT_HEALTH && h->n < 10) || (rt == RT_NONE && h->n < 10))
            continue;
        say(o, "  %-12s %7" PRIu64 " %8.2f %8.2f %8.2f %8.2f\n",
            rt < 0 ? "all" : route_names[rt], h->n, hist_quantile_ms(h, 0.50),
            hist_quantile_ms(h, 0.90), hist_quantile_ms(h, 0.99), (double)h->max_us / 1000.0);
    }
}

static void report_trace(FILE *o, const struct totals *T, const struct gateway_info *gi) {
    const struct stats *a = &T->all;
    say(o, "\nTrace context (W3C traceparent in, x-fg-trace-id and traceparent out)\n");
    if (gi->trace_back[0] != '\0') {
        say(o, "  sent    traceparent: 00-%s-00f067aa0ba902b7-01\n", gi->trace_sent);
        say(o, "  got back x-fg-trace-id: %s  %s\n", gi->trace_back,
            strcasecmp(gi->trace_back, gi->trace_sent) == 0 ? "(same trace)" : "(DIFFERENT)");
        if (gi->traceparent_back[0] != '\0')
            say(o, "  and     traceparent: %s (the gateway's own span)\n",
                gi->traceparent_back);
    }
    if (a->trace_sent > 0)
        say(o,
            "  %" PRIu64 " of %" PRIu64 " requests sent with a traceparent came back in the "
            "same trace.\n",
            a->trace_matched, a->trace_sent);
}

static void report(FILE *o, struct client *cls, int ncl, const struct totals *T,
                   const struct gateway_info *gi) {
    const struct stats *a = &T->all;
    double secs = (double)T->elapsed_ns / 1e9;
    say(o, "\n== floodgate gateway demo: %.1f s of traffic against http://%s ==\n", secs,
        host_header);
    if (gi->have_config)
        say(o, "config \"%s\" (generation %.0f, %s)\n", gi->version, gi->generation,
            gi->source);
    say(o, "%d users on /api/orders (%d polite at %.0f/s, %d misbehaving at %.0f/s)",
        opt.users, opt.users - opt.abusers, opt.rate, opt.abusers, opt.abuse_rate);
    if (opt.payments_rate > 0)
        say(o, ", payments at %.0f/s", opt.payments_rate);
    if (opt.sweep > 0)
        say(o, ",\na sweep over %d user ids", opt.sweep);
    say(o, ": %" PRIu64 " requests, %" PRIu64 " answered (%.0f/s).\n", a->sent, a->answered,
        secs > 0 ? (double)a->sent / secs : 0.0);
    report_status(o, T);
    report_split(o, T);
    report_breaker(o, T, gi);
    report_users(o, cls, ncl);
    report_latency(o, T);
    report_trace(o, T, gi);
    uint64_t broken = a->no_retry_after + a->bad_trace_id + a->no_outcome + a->wrong_version;
    if (broken > 0) {
        say(o, "\nNot as README.md says:\n");
        if (a->no_retry_after > 0)
            say(o, "  %" PRIu64 " answers 429/503 without Retry-After >= 1\n",
                a->no_retry_after);
        if (a->no_outcome > 0)
            say(o, "  %" PRIu64 " answers through the chain without x-fg-outcome\n",
                a->no_outcome);
        if (a->bad_trace_id > 0)
            say(o, "  %" PRIu64 " answers through the chain without a 32-hex x-fg-trace-id\n",
                a->bad_trace_id);
        if (a->wrong_version > 0)
            say(o,
                "  %" PRIu64 " orders answers whose \"version\" does not match the target\n",
                a->wrong_version);
    }
    say(o, "\nWhere to look\n");
    say(o, "  curl http://%s/metrics    Prometheus text: requests by route and outcome,\n",
        host_header);
    say(o, "  %*s latency, rejections by stage, breaker state", (int)strlen(host_header) + 23,
        "");
    if (gi->metrics_lines >= 0)
        say(o, " (%" PRId64 " samples)", gi->metrics_lines);
    say(o, "\n  curl http://%s/-/config   the config version and its reloads\n", host_header);
    say(o, "  curl http://%s/-/events   breaker transitions with their times\n", host_header);
    say(o,
        "  curl -i -H 'x-user-id: alice' http://%s/api/orders   one request, every header\n",
        host_header);
}

/* ---- JSON summary ------------------------------------------------------------------- */

static void json_hist(FILE *o, const char *name, const struct hist *h, int comma) {
    say(o,
        "%s\"%s\":{\"count\":%" PRIu64 ",\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}",
        comma ? "," : "", name, h->n, hist_quantile_ms(h, 0.5), hist_quantile_ms(h, 0.9),
        hist_quantile_ms(h, 0.99), (double)h->max_us / 1000.0);
}

static void json_report(FILE *o, struct client *cls, int ncl, const struct totals *T,
                        const struct gateway_info *gi) {
    const struct stats *a = &T->all;
    int first = 1;
    say(o, "{\"elapsed_ms\":%.0f,\"requests\":%" PRIu64 ",\"answered\":%" PRIu64,
        (double)T->elapsed_ns / 1e6, a->sent, a->answered);
    say(o,
        ",\"errors\":{\"connect\":%" PRIu64 ",\"timeout\":%" PRIu64
        ",\"closed_early\":%" PRIu64 ",\"io\":%" PRIu64 ",\"protocol\":%" PRIu64
        "},\"reconnects\":%" PRIu64,
        a->err[-E_CONNECT], a->err[-E_TIMEOUT], a->err[-E_EARLY], a->err[-E_IO],
        a->err[-E_PROTOCOL], a->reconnects);
    say(o, ",\"status\":{");
    for (int s = 1; s < STATUS_N; s++) {
        uint64_t n = 0;
        for (int oc = 0; oc < OC_N; oc++)
            n += a->status_outcome[s][oc];
        if (n > 0) {
            say(o, "%s\"%d\":%" PRIu64, first ? "" : ",", s, n);
            first = 0;
        }
    }
    say(o, "},\"outcome\":{");
    first = 1;
    for (int oc = 0; oc < OC_N; oc++) {
        uint64_t n = 0;
        for (int s = 1; s < STATUS_N; s++)
            n += a->status_outcome[s][oc];
        if (n > 0) {
            say(o, "%s\"%s\":%" PRIu64, first ? "" : ",", outcome_names[oc], n);
            first = 0;
        }
    }
    say(o, "},\"routes\":{");
    first = 1;
    for (int rt = 0; rt < RT_N; rt++) {
        uint64_t total = 0;
        for (int tg = 0; tg < TG_N; tg++)
            total += a->route_target[rt][tg];
        if (total == 0)
            continue;
        say(o, "%s\"%s\":{\"total\":%" PRIu64, first ? "" : ",", route_names[rt], total);
        for (int tg = 1; tg < TG_N; tg++)
            if (a->route_target[rt][tg] > 0)
                say(o, ",\"%s\":%" PRIu64, target_names[tg], a->route_target[rt][tg]);
        say(o, "}");
        first = 0;
    }
    say(o, "},\"sweep\":{\"ids\":%d,\"stable\":%d,\"canary\":%d,\"checked\":%d,\"same\":%d}",
        T->sweep_ids, T->sweep_stable, T->sweep_canary, T->sweep_checked, T->sweep_same);
    say(o, ",\"users\":[");
    first = 1;
    for (int i = 0; i < ncl; i++) {
        const struct client *cl = &cls[i];
        char lb[64];
        if (cl->role == ROLE_SWEEP)
            continue;
        const uint64_t *t = cl->st->targets;
        say(o,
            "%s{\"user\":\"%s\",\"behaviour\":\"%s\",\"sent\":%" PRIu64 ",\"ok\":%" PRIu64
            ",\"rate_limited\":%" PRIu64 ",\"other\":%" PRIu64 ",\"stable\":%" PRIu64
            ",\"canary\":%" PRIu64 ",\"gray\":%" PRIu64 "}",
            first ? "" : ",", cl->name, role_label(cl, lb, sizeof(lb)), cl->st->sent,
            cl->st->ok, cl->st->limited, cl->st->other, t[TG_STABLE], t[TG_CANARY], t[TG_N]);
        first = 0;
    }
    say(o, "],\"breaker_transitions\":[");
    for (int i = 0; i < gi->n_events; i++)
        say(o, "%s{\"breaker\":\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"at_ms\":%.0f}",
            i > 0 ? "," : "", gi->ev[i].breaker, gi->ev[i].from, gi->ev[i].to,
            gi->ev[i].at_ms);
    say(o, "],\"latency_ms\":{");
    json_hist(o, "all", &a->lat_all, 0);
    for (int rt = 0; rt < RT_N; rt++)
        if (a->lat_route[rt].n > 0)
            json_hist(o, route_names[rt], &a->lat_route[rt], 1);
    say(o, "},\"trace\":{\"sent\":%" PRIu64 ",\"matched\":%" PRIu64 ",\"probe_matched\":%s}",
        a->trace_sent, a->trace_matched,
        gi->trace_back[0] != '\0' && strcasecmp(gi->trace_back, gi->trace_sent) == 0
            ? "true"
            : "false");
    say(o,
        ",\"contract\":{\"no_retry_after\":%" PRIu64 ",\"no_outcome\":%" PRIu64
        ",\"bad_trace_id\":%" PRIu64 ",\"wrong_version\":%" PRIu64 "}",
        a->no_retry_after, a->no_outcome, a->bad_trace_id, a->wrong_version);
    say(o, ",\"config\":{\"version\":\"%s\",\"generation\":%.0f}}\n", gi->version,
        gi->generation);
}

/* ---- main --------------------------------------------------------------------------- */

static void usage(FILE *o) {
    say(o,
        "usage: loadgen --port N [options]\n"
        "Drives the floodgate gateway example with simulated users, then reports.\n"
        "  --host HOST          gateway address (default 127.0.0.1)\n"
        "  --port N             gateway port (required)\n"
        "  --duration-ms N      how long to send (default 12000; 100..600000)\n"
        "  --users N            users on /api/orders (default 8; 1..%d)\n"
        "  --abusers N          how many of them misbehave (default 2)\n"
        "  --rate R             a polite user's requests/s (default 5)\n"
        "  --abuse-rate R       a misbehaving user's requests/s (default 50)\n"
        "  --payments-rate R    payments POSTs/s over %d connections (default 80; 0: none)\n"
        "  --sweep N            distinct user ids, each asked twice (default 1000; 0: none)\n"
        "  --max-requests N     about this many requests at most (default 500000)\n"
        "  --flaky-period-ms N  the gateway's --flaky-period-ms, to mark the backend's\n"
        "                       failing phase in the report (default: not shown)\n"
        "  --report             print the readable report\n"
        "  --json               print a JSON summary (after the report, if both)\n"
        "Exit status: 0 when the gateway answered, 1 when it never did, 2 for bad usage.\n",
        MAX_USERS, PAY_CONNS);
}

static int parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t n = 0;
        int bad = 0;
        if (strcmp(a, "--report") == 0) {
            opt.report = 1;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            opt.json = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0); // NOLINT(concurrency-mt-unsafe): before any thread starts
        }
        if (v == NULL) {
            say(stderr, "loadgen: %s: unknown option or missing value\n", a);
            return -1;
        }
        i++;
        if (strcmp(a, "--host") == 0)
            opt.host = v;
        else if (strcmp(a, "--port") == 0) {
            bad = parse_i64(v, 1, 65535, &n);
            opt.port = v;
        } else if (strcmp(a, "--duration-ms") == 0) {
            bad = parse_i64(v, 100, 600000, &opt.duration_ms);
        } else if (strcmp(a, "--users") == 0) {
            bad = parse_i64(v, 1, MAX_USERS, &n);
            opt.users = (int)n;
        } else if (strcmp(a, "--abusers") == 0) {
            bad = parse_i64(v, 0, MAX_USERS, &n);
            opt.abusers = (int)n;
        } else if (strcmp(a, "--rate") == 0) {
            bad = parse_double(v, 0.1, 1000, &opt.rate);
        } else if (strcmp(a, "--abuse-rate") == 0) {
            bad = parse_double(v, 0.1, 10000, &opt.abuse_rate);
        } else if (strcmp(a, "--payments-rate") == 0) {
            bad = parse_double(v, 0, 10000, &opt.payments_rate);
        } else if (strcmp(a, "--sweep") == 0) {
            bad = parse_i64(v, 0, 4000, &n);
            opt.sweep = (int)n;
        } else if (strcmp(a, "--max-requests") == 0) {
            bad = parse_i64(v, 1, INT64_C(100000000), &opt.max_requests);
        } else if (strcmp(a, "--flaky-period-ms") == 0) {
            bad = parse_i64(v, 0, INT64_C(86400000), &opt.flaky_period_ms);
        } else {
            say(stderr, "loadgen: unknown option %s (try --help)\n", a);
            return -1;
        }
        if (bad != 0) {
            say(stderr, "loadgen: %s: bad value \"%s\"\n", a, v);
            return -1;
        }
    }
    if (opt.port == NULL) {
        say(stderr, "loadgen: --port is required (try --help)\n");
        return -1;
    }
    if (opt.abusers > opt.users) {
        say(stderr, "loadgen: --abusers %d is more than --users %d\n", opt.abusers, opt.users);
        return -1;
    }
    return 0;
}

static int resolve(void) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(opt.host, opt.port, &hints, &res);
    if (rc != 0 || res == NULL) {
        say(stderr, "loadgen: cannot resolve %s: %s\n", opt.host,
            rc != 0 ? gai_strerror(rc) : "no address");
        return -1;
    }
    memcpy(&server_addr, res->ai_addr, res->ai_addrlen);
    server_addrlen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    int v6 = strchr(opt.host, ':') != NULL;
    (void)snprintf(host_header, sizeof(host_header), v6 ? "[%s]:%s" : "%s:%s", opt.host,
                   opt.port);
    return 0;
}

static const char *err_name(int rc) {
    switch (rc) {
    case E_CONNECT:
        return "cannot connect";
    case E_EARLY:
        return "connection closed without an answer";
    case E_TIMEOUT:
        return "timed out";
    case E_IO:
        return "connection broke";
    case E_PROTOCOL:
        return "not an HTTP/1.1 answer";
    default:
        return "failed";
    }
}

/*
 * Before the load: is the gateway there? GET /healthz, retried for up to 2 s
 * (it may still be starting). Then GET /-/events to learn the gateway's
 * uptime, so that times in the report can be the gateway's.
 */
static int preflight(double *offset_ms, int *have_offset) {
    struct resp r;
    char body[BODY_KEEP];
    struct sink s = {body, sizeof(body), 0, 0};
    int err_no = 0, rc = E_CONNECT;
    int64_t until = mono_ns() + 2 * NS_PER_SEC;
    for (;;) {
        rc = control_get("/healthz", "", &r, &s, &err_no);
        if (rc == E_OK || mono_ns() > until)
            break;
        sleep_ns(100 * NS_PER_MS);
    }
    if (rc == E_CONNECT) {
        char e[128];
        errtext(err_no, e, sizeof(e));
        say(stderr, "loadgen: cannot connect to %s: %s\n", host_header, e);
        return -1;
    }
    if (rc != E_OK) {
        say(stderr, "loadgen: %s did not answer GET /healthz: %s\n", host_header,
            err_name(rc));
        return -1;
    }
    if (r.status != 200)
        say(stderr, "loadgen: warning: GET /healthz answered %d\n", r.status);
    struct sink es = {malloc(CTL_BODY_MAX), CTL_BODY_MAX, 0, 0};
    if (es.p == NULL)
        return 0;
    int64_t before = mono_ns();
    rc = control_get("/-/events", "", &r, &es, NULL);
    int64_t after = mono_ns();
    if (rc == E_OK && r.status == 200) {
        struct gateway_info tmp;
        memset(&tmp, 0, sizeof(tmp));
        parse_events(&tmp, es.p, es.kept);
        if (tmp.have_events) {
            /* uptime at the midpoint of the request; t0 is later, main() adds the gap. */
            *offset_ms = tmp.uptime_ms - ((double)before + (double)after) / 2e6;
            *have_offset = 1;
        }
    }
    free(es.p);
    return 0;
}

/* After the load: transitions, config, metrics, and one traced request. */
static void collect(struct gateway_info *gi) {
    struct resp r;
    struct sink s = {malloc(CTL_BODY_MAX), CTL_BODY_MAX, 0, 0};
    if (s.p == NULL)
        return;
    if (control_get("/-/events", "", &r, &s, NULL) == E_OK && r.status == 200)
        parse_events(gi, s.p, s.kept);
    if (control_get("/-/config", "", &r, &s, NULL) == E_OK && r.status == 200) {
        const char *end = s.p + s.kept;
        gi->have_config = json_str(s.p, end, "version", gi->version, sizeof(gi->version)) == 0;
        (void)json_str(s.p, end, "source", gi->source, sizeof(gi->source));
        (void)json_num(s.p, end, "generation", &gi->generation);
    }
    gi->metrics_lines = -1;
    if (control_get("/metrics", "", &r, &s, NULL) == E_OK && r.status == 200) {
        gi->metrics_lines = 0;
        for (const char *p = s.p; *p != '\0';) {
            const char *nl = strchr(p, '\n');
            if (*p != '#' && *p != '\n')
                gi->metrics_lines++;
            if (nl == NULL)
                break;
            p = nl + 1;
        }
    }
    (void)snprintf(gi->trace_sent, sizeof(gi->trace_sent), "4bf92f3577b34da6a3ce929d0e0e4736");
    char extra[256];
    (void)snprintf(extra, sizeof(extra),
                   "x-user-id: tracer\r\ntraceparent: 00-%s-00f067aa0ba902b7-01\r\n",
                   gi->trace_sent);
    if (control_get("/api/orders/trace-demo", extra, &r, &s, NULL) == E_OK) {
        copy_field(gi->trace_back, sizeof(gi->trace_back), r.trace_id, strlen(r.trace_id));
        copy_field(gi->traceparent_back, sizeof(gi->traceparent_back), r.traceparent,
                   strlen(r.traceparent));
    }
    free(s.p);
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) != 0)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    (void)sigaction(SIGPIPE, &sa, NULL);
    if (resolve() != 0)
        return 1;

    static struct gateway_info gi;
    double offset_ms = 0.0;
    int have_offset = 0;
    if (preflight(&offset_ms, &have_offset) != 0)
        return 1;

    /* The clients: users, then two payments connections, then the sweep. */
    int npay = opt.payments_rate > 0 ? PAY_CONNS : 0;
    int ncl = opt.users + npay + (opt.sweep > 0 ? 1 : 0);
    struct client *cls = calloc((size_t)ncl, sizeof(*cls));
    if (cls == NULL) {
        say(stderr, "loadgen: out of memory\n");
        return 1;
    }
    int64_t cap = opt.max_requests / ncl > 0 ? opt.max_requests / ncl : 1;
    size_t pay_slots = (size_t)(opt.duration_ms / SLOT_MS) + GRACE_MS / SLOT_MS + 2;
    int npolite = opt.users - opt.abusers;
    int ok = 1;
    for (int i = 0; i < ncl; i++) {
        struct client *cl = &cls[i];
        cl->index = i;
        cl->cap = cap;
        cl->st = calloc(1, sizeof(*cl->st));
        ok = ok && cl->st != NULL;
        if (i < npolite) {
            static const enum role first_roles[] = {ROLE_POLITE, ROLE_GRAY, ROLE_TRACED};
            cl->role = i < 3 ? first_roles[i] : ROLE_POLITE;
            cl->rate = opt.rate;
            if (i < (int)(sizeof(polite_names) / sizeof(polite_names[0])))
                (void)snprintf(cl->name, sizeof(cl->name), "%s", polite_names[i]);
            else
                (void)snprintf(cl->name, sizeof(cl->name), "user-%02d", i);
        } else if (i < opt.users) {
            int j = i - npolite;
            cl->role = ROLE_ABUSER;
            cl->rate = opt.abuse_rate;
            if (j < (int)(sizeof(abuser_names) / sizeof(abuser_names[0])))
                (void)snprintf(cl->name, sizeof(cl->name), "%s", abuser_names[j]);
            else
                (void)snprintf(cl->name, sizeof(cl->name), "abuser-%02d", j);
        } else if (i < opt.users + npay) {
            cl->role = ROLE_PAYMENTS;
            cl->rate = opt.payments_rate / npay;
            (void)snprintf(cl->name, sizeof(cl->name), "payments%d", i - opt.users + 1);
            cl->pay = calloc(pay_slots, sizeof(*cl->pay));
            cl->pay_slots = pay_slots;
            ok = ok && cl->pay != NULL;
        } else {
            cl->role = ROLE_SWEEP;
            /* Both passes within three quarters of the run, at 20/s at least. */
            cl->rate = 2.0 * opt.sweep / ((double)opt.duration_ms * 0.75 / 1000.0);
            if (cl->rate < 20.0)
                cl->rate = 20.0;
            (void)snprintf(cl->name, sizeof(cl->name), "sweep");
            cl->sweep_first = calloc((size_t)opt.sweep, 1);
            cl->sweep_second = calloc((size_t)opt.sweep, 1);
            ok = ok && cl->sweep_first != NULL && cl->sweep_second != NULL;
        }
    }
    if (!ok) {
        say(stderr, "loadgen: out of memory\n");
        return 1;
    }

    t0_ns = mono_ns() + 50 * NS_PER_MS;
    deadline_ns = t0_ns + opt.duration_ms * NS_PER_MS;
    if (have_offset)
        offset_ms += (double)t0_ns / 1e6;
    int started = 0;
    for (int i = 0; i < ncl; i++) {
        int rc = pthread_create(&cls[i].thread, NULL, client_main, &cls[i]);
        if (rc != 0) {
            char e[128];
            errtext(rc, e, sizeof(e));
            say(stderr, "loadgen: cannot start a thread: %s\n", e);
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++)
        (void)pthread_join(cls[i].thread, NULL);
    int64_t t_end = mono_ns();

    static struct totals T;
    T.elapsed_ns = (t_end < deadline_ns ? t_end : deadline_ns) - t0_ns;
    T.offset_ms = offset_ms;
    T.have_offset = have_offset;
    if (npay > 0) {
        T.pay = calloc(pay_slots, sizeof(*T.pay));
        T.pay_slots = T.pay != NULL ? pay_slots : 0;
    }
    for (int i = 0; i < ncl; i++) {
        const struct client *cl = &cls[i];
        struct stats *a = &T.all;
        const struct stats *s = cl->st;
        a->sent += s->sent;
        a->answered += s->answered;
        a->reconnects += s->reconnects;
        for (int k = 0; k < 6; k++)
            a->err[k] += s->err[k];
        for (int k = 0; k < STATUS_N; k++)
            for (int m = 0; m < OC_N; m++)
                a->status_outcome[k][m] += s->status_outcome[k][m];
        for (int k = 0; k < RT_N; k++) {
            for (int m = 0; m < TG_N; m++)
                a->route_target[k][m] += s->route_target[k][m];
            hist_merge(&a->lat_route[k], &s->lat_route[k]);
        }
        hist_merge(&a->lat_all, &s->lat_all);
        a->trace_sent += s->trace_sent;
        a->trace_matched += s->trace_matched;
        a->no_retry_after += s->no_retry_after;
        a->bad_trace_id += s->bad_trace_id;
        a->no_outcome += s->no_outcome;
        a->wrong_version += s->wrong_version;
        if (cl->pay != NULL && T.pay != NULL)
            for (size_t k = 0; k < pay_slots; k++)
                for (int m = 0; m < PAY_N; m++)
                    T.pay[k][m] += cl->pay[k][m];
        if (cl->role == ROLE_SWEEP) {
            int ne = 0;
            for (int k = 0; k < opt.sweep; k++) {
                uint8_t f = cl->sweep_first[k], g = cl->sweep_second[k];
                if (f == 0)
                    continue;
                T.sweep_ids++;
                T.sweep_stable += f == TG_STABLE;
                T.sweep_canary += f == TG_CANARY;
                if (f == TG_CANARY && ne < 4)
                    (void)snprintf(T.canary_example[ne++], sizeof(T.canary_example[0]),
                                   "sweep-%04d", k);
                if (g != 0) {
                    T.sweep_checked++;
                    T.sweep_same += f == g;
                }
            }
        }
    }

    collect(&gi);
    if (opt.report)
        report(stdout, cls, ncl, &T, &gi);
    if (opt.json)
        json_report(stdout, cls, ncl, &T, &gi);
    if (!opt.report && !opt.json)
        say(stdout, "loadgen: %" PRIu64 " requests, %" PRIu64 " answered in %.1f s\n",
            T.all.sent, T.all.answered, (double)T.elapsed_ns / 1e9);
    int answered = T.all.answered > 0;
    for (int i = 0; i < ncl; i++) {
        free(cls[i].st);
        free(cls[i].pay);
        free(cls[i].sweep_first);
        free(cls[i].sweep_second);
    }
    free(cls);
    free(T.pay);
    if (!answered) {
        say(stderr, "loadgen: the gateway at %s never answered\n", host_header);
        return 1;
    }
    return 0;
}
