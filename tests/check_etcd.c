/*
 * tests/check_etcd.c - the etcd config source (fg_runtime_watch_etcd,
 * floodgate/config.h) without an etcd: argument and endpoint checks, an
 * unreachable endpoint and one that never answers (FG_ESYS within the
 * timeout), and, against a fake etcd in a thread of the test, every code
 * of a first load, the watch stream (events applied, stale ones skipped, a
 * DELETE reported, a malformed message, a compaction, a message over the
 * bound, a stream never established, the start revision asked for),
 * fg_watch_stop (prompt with a stream
 * open, from inside the callback) and every out-of-memory path of the
 * first load. tests/test_etcd.sh runs the real etcd.
 *
 * The fake etcd answers each connection with the next of a test's canned
 * answers for that path (/v3/kv/range or /v3/watch; the last one repeats)
 * and closes it, except a stream marked hold, which stays open until the
 * fake stops. Waits poll a condition for up to 5 s.
 *
 * Built without libcurl every entry point must say FG_ESTATE: the tests
 * check that instead.
 */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

#define KEY "/fg/config"

/* ---- time ---------------------------------------------------------------------------- */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- base64, for canned answers ------------------------------------------------------- */

static void b64(const char *in, char *out) {
    static const char d[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(in), o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(unsigned char)in[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)in[i + 2];
        out[o++] = d[v >> 18 & 63];
        out[o++] = d[v >> 12 & 63];
        out[o++] = i + 1 < n ? d[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? d[v & 63] : '=';
    }
    out[o] = '\0';
}

/* A config of that version, in base64. */
static const char *cfg(const char *version) {
    static char bufs[8][256];
    static int next;
    char text[160];
    snprintf(text, sizeof(text),
             "{\"version\": \"%s\", \"chain\": [], \"handler\": \"hello\"}", version);
    char *out = bufs[next++ % 8];
    b64(text, out);
    return out;
}

/* A range answer: the key at mod_rev with that value (base64), as of rev. */
static char *range_body(int64_t rev, int64_t mod_rev, const char *value_b64) {
    char *s = malloc(1024);
    char key[64];
    ck_assert_ptr_nonnull(s);
    b64(KEY, key);
    if (value_b64 == NULL)
        snprintf(s, 1024, "{\"header\":{\"cluster_id\":\"1\",\"revision\":\"%lld\"}}",
                 (long long)rev);
    else
        snprintf(
            s, 1024,
            "{\"header\":{\"cluster_id\":\"1\",\"revision\":\"%lld\"},\"kvs\":[{\"key\":"
            "\"%s\",\"create_revision\":\"2\",\"mod_revision\":\"%lld\",\"version\":\"1\","
            "\"value\":\"%s\"}],\"count\":\"1\"}",
            (long long)rev, key, (long long)mod_rev, value_b64);
    return s;
}

/* A watch message with one event (type NULL: a PUT, written without "type"). */
static char *event(const char *type, int64_t mod_rev, const char *value_b64) {
    char *s = malloc(1024);
    char key[64];
    ck_assert_ptr_nonnull(s);
    b64(KEY, key);
    snprintf(s, 1024,
             "{\"result\":{\"header\":{\"revision\":\"%lld\"},\"events\":[{%s%s%s\"kv\":{"
             "\"key\":\"%s\",\"mod_revision\":\"%lld\"%s%s%s}}]}}",
             (long long)mod_rev, type ? "\"type\":\"" : "", type ? type : "",
             type ? "\"," : "", key, (long long)mod_rev, value_b64 ? ",\"value\":\"" : "",
             value_b64 ? value_b64 : "", value_b64 ? "\"" : "");
    return s;
}

#define CREATED "{\"result\":{\"header\":{\"revision\":\"5\"},\"created\":true}}"

/* ---- the fake etcd ---------------------------------------------------------------------- */

struct answer {
    int status;           /* HTTP status; 0: 200 */
    const char *body;     /* a plain answer's body */
    const char *lines[8]; /* a stream's messages, each sent with a '\n' */
    size_t big;           /* then a line of this many bytes (no '\n') */
    int hold;             /* keep the stream open until the fake stops */
};

struct fake {
    int lfd, port;
    int stop[2]; /* a pipe: written to stop the thread */
    pthread_t thread;
    const struct answer *range, *watch;
    int nrange, nwatch;
    int range_n, watch_n; /* requests so far (atomic) */
    pthread_mutex_t lock;
    char watch_body[8][512]; /* the watch requests' bodies */
    int held[16], nheld;
};

static struct fake fake;

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_chunk(int fd, const char *p, size_t n) {
    char head[32];
    int hl = snprintf(head, sizeof(head), "%zx\r\n", n);
    return send_all(fd, head, (size_t)hl) || send_all(fd, p, n) || send_all(fd, "\r\n", 2);
}

/* Reads one request: its path and body (small). Returns 0 or -1. */
static int read_request(int fd, char *path, size_t pcap, char *body, size_t bcap) {
    char buf[4096];
    size_t len = 0;
    char *end = NULL;
    while (end == NULL) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 2000) <= 0 || len + 1 >= sizeof(buf))
            return -1;
        ssize_t r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (r <= 0)
            return -1;
        len += (size_t)r;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (sscanf(buf, "POST %255s", path) != 1)
        return -1;
    (void)pcap;
    const char *cl = strstr(buf, "Content-Length: ");
    size_t want = cl ? (size_t)strtoul(cl + 16, NULL, 10) : 0;
    size_t have = len - (size_t)(end + 4 - buf);
    while (have < want && len + 1 < sizeof(buf)) {
        ssize_t r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (r <= 0)
            return -1;
        len += (size_t)r;
        have += (size_t)r;
    }
    buf[len] = '\0';
    snprintf(body, bcap, "%s", end + 4);
    return 0;
}

static void serve(int fd) {
    char path[256], body[512];
    if (read_request(fd, path, sizeof(path), body, sizeof(body)) != 0) {
        close(fd);
        return;
    }
    int watch = strcmp(path, "/v3/watch") == 0;
    int i = __atomic_fetch_add(watch ? &fake.watch_n : &fake.range_n, 1, __ATOMIC_ACQ_REL);
    const struct answer *a = watch ? fake.watch : fake.range;
    int n = watch ? fake.nwatch : fake.nrange;
    if (watch && i < 8) {
        pthread_mutex_lock(&fake.lock);
        snprintf(fake.watch_body[i], sizeof(fake.watch_body[i]), "%s", body);
        pthread_mutex_unlock(&fake.lock);
    }
    if (a == NULL || n == 0) {
        close(fd);
        return;
    }
    a += i < n ? i : n - 1;
    int status = a->status ? a->status : 200;
    char head[256];
    if (a->body != NULL) {
        int hl = snprintf(head, sizeof(head),
                          "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          status, strlen(a->body));
        (void)(send_all(fd, head, (size_t)hl) || send_all(fd, a->body, strlen(a->body)));
        close(fd);
        return;
    }
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n",
                      status);
    int err = send_all(fd, head, (size_t)hl);
    for (int l = 0; l < 8 && a->lines[l] != NULL && !err; l++) {
        char line[2048];
        int ll = snprintf(line, sizeof(line), "%s\n", a->lines[l]);
        err = send_chunk(fd, line, (size_t)ll);
    }
    if (a->big > 0 && !err) {
        static char block[65536];
        memset(block, 'x', sizeof(block));
        for (size_t sent = 0; sent < a->big && !err;) {
            size_t k = a->big - sent < sizeof(block) ? a->big - sent : sizeof(block);
            err = send_chunk(fd, block, k);
            sent += k;
        }
    }
    if (a->hold && !err && fake.nheld < 16)
        fake.held[fake.nheld++] = fd;
    else
        close(fd);
}

static void *fake_main(void *arg) {
    (void)arg;
    for (;;) {
        struct pollfd p[2] = {{fake.stop[0], POLLIN, 0}, {fake.lfd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0)
            continue;
        if (p[0].revents != 0)
            break;
        int fd = accept(fake.lfd, NULL, NULL);
        if (fd >= 0)
            serve(fd);
    }
    for (int i = 0; i < fake.nheld; i++)
        close(fake.held[i]);
    return NULL;
}

static void fake_start(const struct answer *range, int nrange, const struct answer *watch,
                       int nwatch) {
    memset(&fake, 0, sizeof(fake));
    pthread_mutex_init(&fake.lock, NULL);
    fake.range = range;
    fake.nrange = nrange;
    fake.watch = watch;
    fake.nwatch = nwatch;
    fake.lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fake.lfd, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fake.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t al = sizeof(a);
    ck_assert_int_eq(getsockname(fake.lfd, (struct sockaddr *)&a, &al), 0);
    fake.port = ntohs(a.sin_port);
    ck_assert_int_eq(listen(fake.lfd, 16), 0);
    ck_assert_int_eq(pipe(fake.stop), 0);
    ck_assert_int_eq(pthread_create(&fake.thread, NULL, fake_main, NULL), 0);
}

static void fake_stop(void) {
    ck_assert_int_eq(write(fake.stop[1], "x", 1), 1);
    pthread_join(fake.thread, NULL);
    close(fake.lfd);
    close(fake.stop[0]);
    close(fake.stop[1]);
    pthread_mutex_destroy(&fake.lock);
}

static const char *fake_url(void) {
    static char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", fake.port);
    return url;
}

/* ---- what on_reload saw ---------------------------------------------------------------- */

struct rec {
    int calls;
    int rcs[32];
    char first_error[32][424]; /* "path: message" of errors->items[0] */
    int bad_errors;            /* errors NULL when rc != 0, or not NULL when rc == 0 */
    int stop_at;               /* call fg_watch_stop(self) at this call (1-based) */
    fg_watch *self;
};

static struct rec rec;

static int hello(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

static void on_reload(fg_runtime *rt, int rc, const fg_config_errors *errors, void *arg) {
    (void)rt;
    (void)arg;
    int i = __atomic_load_n(&rec.calls, __ATOMIC_RELAXED);
    if ((rc == 0) != (errors == NULL))
        rec.bad_errors++;
    if (i < 32) {
        rec.rcs[i] = rc;
        if (errors != NULL && errors->count > 0)
            snprintf(rec.first_error[i], sizeof(rec.first_error[i]), "%s: %s",
                     errors->items[0].path, errors->items[0].message);
    }
    if (rec.stop_at == i + 1)
        fg_watch_stop(__atomic_load_n(&rec.self, __ATOMIC_ACQUIRE));
    /* Last: the test reads the other fields once it sees the count. */
    __atomic_store_n(&rec.calls, i + 1, __ATOMIC_RELEASE);
}

static int calls(void) { return __atomic_load_n(&rec.calls, __ATOMIC_ACQUIRE); }

static int wait_calls(int n) {
    for (int i = 0; i < 1000 && calls() < n; i++)
        sleep_ms(5);
    return calls() >= n;
}

struct env {
    fg_registry *reg;
    fg_runtime *rt;
    fg_watch_options o;
};

static void env_new(struct env *e) {
    memset(&rec, 0, sizeof(rec));
    ck_assert_int_eq(fg_registry_new(&e->reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(e->reg, "hello", hello, NULL), 0);
    ck_assert_int_eq(fg_runtime_new(&e->rt), 0);
    fg_watch_options o = FG_WATCH_OPTIONS_INIT;
    o.on_reload = on_reload;
    o.timeout_ns = 2000000000u;
    o.backoff_min_ns = 10000000u; /* 10 ms: quick reconnections */
    o.backoff_max_ns = 40000000u;
    e->o = o;
}

static void env_free(struct env *e) {
    fg_runtime_free(e->rt);
    fg_registry_free(e->reg);
    ck_assert_int_eq(rec.bad_errors, 0);
}

static void assert_version(fg_runtime *rt, const char *want) {
    char v[64];
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, want);
}

/* ---- arguments ---------------------------------------------------------------------------
 */

START_TEST(test_args) {
    struct env e;
    env_new(&e);
    fg_watch *w = (fg_watch *)&w; /* not NULL: failures must clear it */
    int avail = fg_etcd_available();
    ck_assert_int_eq(avail == 0 || avail == 1, 1);
    int inval = avail ? FG_EINVAL : FG_ESTATE;
    int toolong = avail ? FG_ETOOLONG : FG_ESTATE;
    const char *url = "http://127.0.0.1:2379";

    ck_assert_int_eq(fg_runtime_watch_etcd(NULL, e.reg, url, KEY, &e.o, &w), inval);
    ck_assert_ptr_null(w);
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, NULL, url, KEY, &e.o, &w), inval);
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, NULL, KEY, &e.o, &w), inval);
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, url, NULL, &e.o, &w), inval);
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, url, KEY, &e.o, NULL), inval);
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, url, "", &e.o, &w), inval);

    static const char *const bad[] = {
        "",           "127.0.0.1:2379",      "ftp://127.0.0.1:2379", "http://",
        "https://",   "http:///v3",          "http://127.0.0.1 :1",  "http://h?x=1",
        "http://h#f", "HTTP://127.0.0.1:1x", "http://h\tx",          "unix:///tmp/etcd.sock",
    };
    for (int i = 0; i < TH_NELEM(bad); i++) {
        w = (fg_watch *)&w;
        ck_assert_msg(fg_runtime_watch_etcd(e.rt, e.reg, bad[i], KEY, &e.o, &w) == inval,
                      "endpoint \"%s\"", bad[i]);
        ck_assert_ptr_null(w);
    }

    char longer[FG_ETCD_ENDPOINT_MAX + 16];
    memset(longer, 'h', sizeof(longer));
    memcpy(longer, "http://", 7);
    longer[sizeof(longer) - 1] = '\0';
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, longer, KEY, &e.o, &w), toolong);
    char longkey[FG_ETCD_KEY_MAX + 2];
    memset(longkey, 'k', sizeof(longkey));
    longkey[sizeof(longkey) - 1] = '\0';
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, url, longkey, &e.o, &w), toolong);
    ck_assert_ptr_null(w);
    ck_assert_int_eq(calls(), 0); /* none of these was a load attempt */
    env_free(&e);
}
END_TEST

/* ---- unreachable --------------------------------------------------------------------------
 */

/* A loopback port nobody listens on: bound, then closed. */
static int closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t al = sizeof(a);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    return ntohs(a.sin_port);
}

START_TEST(test_unreachable) {
    struct env e;
    env_new(&e);
    fg_watch *w = (fg_watch *)&w;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", closed_port());
    e.o.timeout_ns = 1000000000u;
    uint64_t t0 = now_ns();
    int rc = fg_runtime_watch_etcd(e.rt, e.reg, url, KEY, &e.o, &w);
    uint64_t dt = now_ns() - t0;
    ck_assert_ptr_null(w);
    if (!fg_etcd_available()) {
        ck_assert_int_eq(rc, FG_ESTATE);
        ck_assert_int_eq(calls(), 0);
        env_free(&e);
        return;
    }
    ck_assert_int_eq(rc, FG_ESYS);
    ck_assert_uint_lt(dt, 1500000000u);
    /* The first attempt, reported: the key as path, the endpoint and why. */
    ck_assert_int_eq(calls(), 1);
    ck_assert_int_eq(rec.rcs[0], FG_ESYS);
    ck_assert_msg(strncmp(rec.first_error[0], KEY ": ", strlen(KEY) + 2) == 0 &&
                      strstr(rec.first_error[0], "cannot read from http://127.0.0.1:") != NULL,
                  "%s", rec.first_error[0]);
    ck_assert_int_eq(fg_runtime_version(e.rt, url, sizeof(url)), FG_ESTATE);
    env_free(&e);
}
END_TEST

/* A listener that accepts (the kernel does) and never answers. */
START_TEST(test_timeout) {
    struct env e;
    env_new(&e);
    fake_start(NULL, 0, NULL, 0);
    /* Stop the thread first: nobody accepts, the backlog takes the connection. */
    ck_assert_int_eq(write(fake.stop[1], "x", 1), 1);
    pthread_join(fake.thread, NULL);
    fg_watch *w = (fg_watch *)&w;
    e.o.timeout_ns = 300000000u; /* 300 ms */
    uint64_t t0 = now_ns();
    int rc = fg_runtime_watch_etcd(e.rt, e.reg, fake_url(), KEY, &e.o, &w);
    uint64_t dt = now_ns() - t0;
    ck_assert_ptr_null(w);
    if (fg_etcd_available()) {
        ck_assert_int_eq(rc, FG_ESYS);
        ck_assert_uint_ge(dt, 250000000u);
        ck_assert_uint_lt(dt, 1500000000u);
        ck_assert_int_eq(calls(), 1);
    } else {
        ck_assert_int_eq(rc, FG_ESTATE);
    }
    close(fake.lfd);
    close(fake.stop[0]);
    close(fake.stop[1]);
    pthread_mutex_destroy(&fake.lock);
    env_free(&e);
}
END_TEST

/* ---- the first load against the fake: every code -----------------------------------------
 */

struct first_case {
    const char *name;
    int status;
    const char *body; /* NULL: made by range_body from value */
    const char *value;
    int missing;
    int want;
    const char *want_error; /* a part of "path: message", or NULL */
};

static const struct first_case first_cases[] = {
    {"ok", 0, NULL, "v1", 0, 0, NULL},
    {"http error", 404, "{\"error\":\"nope\",\"message\":\"not here\",\"code\":5}", NULL, 0,
     FG_ESYS, "answered HTTP 404: not here"},
    {"http 500 no json", 500, "oops", NULL, 0, FG_ESYS, "answered HTTP 500"},
    {"not json", 0, "{\"header\":", NULL, 0, FG_EPARSE, "malformed etcd answer"},
    {"no header", 0, "{\"kvs\":[]}", NULL, 0, FG_EPARSE, "malformed etcd answer"},
    {"bad revision", 0, "{\"header\":{\"revision\":\"12x\"}}", NULL, 0, FG_EPARSE, NULL},
    {"missing key", 0, NULL, NULL, 1, FG_ENOTFOUND, KEY ": no such key in http://"},
    {"value length", 0, NULL, "eyJ", 0, FG_EPARSE, "is not base64"},
    {"value padding", 0, NULL, "YQ=a", 0, FG_EPARSE, "is not base64"},
    {"value bits", 0, NULL, "YR==", 0, FG_EPARSE, "is not base64"},
    {"value alphabet", 0, NULL, "YW-j", 0, FG_EPARSE, "is not base64"},
    {"invalid config", 0, NULL, "e30=", 0, FG_ECONFIG, NULL}, /* "{}" */
    {"empty value", 0, NULL, "", 0, FG_ECONFIG, NULL},
};

START_TEST(test_first_load) {
    const struct first_case *c = &first_cases[_i];
    struct env e;
    env_new(&e);
    char *body = NULL;
    if (c->body == NULL) {
        const char *v = c->value && strcmp(c->value, "v1") == 0 ? cfg("v1") : c->value;
        body = range_body(5, 3, c->missing ? NULL : v);
    }
    struct answer range = {c->status, c->body ? c->body : body, {NULL}, 0, 0};
    struct answer watch = {0, NULL, {CREATED}, 0, 1};
    fake_start(&range, 1, &watch, 1);
    fg_watch *w = (fg_watch *)&w;
    int rc = fg_runtime_watch_etcd(e.rt, e.reg, fake_url(), KEY, &e.o, &w);
    if (!fg_etcd_available()) {
        ck_assert_int_eq(rc, FG_ESTATE);
    } else {
        ck_assert_msg(rc == c->want, "%s: %s, want %s (%s)", c->name, fg_err_name(rc),
                      fg_err_name(c->want), rec.first_error[0]);
        ck_assert_int_eq(calls(), 1);
        ck_assert_int_eq(rec.rcs[0], c->want);
        if (c->want_error != NULL)
            ck_assert_msg(strstr(rec.first_error[0], c->want_error) != NULL, "%s: \"%s\"",
                          c->name, rec.first_error[0]);
        if (rc == 0) {
            fg_watch_stats s;
            ck_assert_int_eq(fg_watch_stats_get(w, &s), 0);
            ck_assert_uint_eq(s.attempts, 1);
            ck_assert_uint_eq(s.loaded, 1);
            ck_assert_uint_eq(s.revision, 3);
            assert_version(e.rt, "v1");
            fg_watch_stop(w);
        } else {
            ck_assert_ptr_null(w);
        }
    }
    fake_stop();
    free(body);
    env_free(&e);
}
END_TEST

/* ---- the watch stream ----------------------------------------------------------------- */

static int watch_asked(int i, const char *start) {
    char want[64];
    snprintf(want, sizeof(want), "\"start_revision\":\"%s\"", start);
    pthread_mutex_lock(&fake.lock);
    int ok = strstr(fake.watch_body[i], want) != NULL;
    pthread_mutex_unlock(&fake.lock);
    return ok;
}

/*
 * Header revision 5, the value of 3. Stream 1 (from 6): a PUT at 6, one at 4
 * (stale: skipped), then a line that is not JSON: reported, the key read
 * afresh (v3 at 7, as of 7). Stream 2 (from 8): a batch of a stale PUT, a PUT
 * at 8 and a DELETE at 9 (the DELETE is the newest: reported, v3 keeps
 * serving), held open: fg_watch_stop must still be prompt.
 */
START_TEST(test_stream) {
    if (!fg_etcd_available())
        return;
    struct env e;
    env_new(&e);
    char key[64], *r1 = range_body(5, 3, cfg("v1")), *r2 = range_body(7, 7, cfg("v3"));
    char *put6 = event(NULL, 6, cfg("v2")), *put4 = event("PUT", 4, cfg("old"));
    char batch[2048];
    b64(KEY, key);
    snprintf(
        batch, sizeof(batch),
        "{\"result\":{\"header\":{\"revision\":\"9\"},\"events\":["
        "{\"kv\":{\"key\":\"%s\",\"mod_revision\":\"7\",\"value\":\"%s\"}},"
        "{\"type\":\"PUT\",\"kv\":{\"key\":\"%s\",\"mod_revision\":\"8\",\"value\":\"%s\"}},"
        "{\"type\":\"DELETE\",\"kv\":{\"key\":\"%s\",\"mod_revision\":\"9\"}}]}}",
        key, cfg("stale"), key, cfg("v4"), key);
    struct answer range[] = {{0, r1, {NULL}, 0, 0}, {0, r2, {NULL}, 0, 0}};
    struct answer watch[] = {{0, NULL, {CREATED, put6, put4, "{\"result\":"}, 0, 1},
                             {0, NULL, {CREATED, batch}, 0, 1}};
    fake_start(range, 2, watch, 2);
    fg_watch *w = NULL;
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, fake_url(), KEY, &e.o, &w), 0);
    ck_assert(wait_calls(5));
    sleep_ms(50);
    ck_assert_int_eq(calls(), 5);
    ck_assert_int_eq(rec.rcs[0], 0);         /* v1 at 3 */
    ck_assert_int_eq(rec.rcs[1], 0);         /* v2 at 6 */
    ck_assert_int_eq(rec.rcs[2], FG_EPARSE); /* the broken line */
    ck_assert_msg(strstr(rec.first_error[2], "malformed etcd watch message") != NULL, "%s",
                  rec.first_error[2]);
    ck_assert_int_eq(rec.rcs[3], 0); /* v3 at 7, read afresh */
    ck_assert_int_eq(rec.rcs[4], FG_ENOTFOUND);
    ck_assert_str_eq(rec.first_error[4], KEY
                     ": key deleted at revision 9; the config of revision 7 keeps serving");
    assert_version(e.rt, "v3");
    fg_watch_stats s;
    ck_assert_int_eq(fg_watch_stats_get(w, &s), 0);
    ck_assert_uint_eq(s.attempts, 5);
    ck_assert_uint_eq(s.loaded, 3);
    ck_assert_uint_eq(s.failed, 2);
    ck_assert_uint_eq(s.revision, 7);
    ck_assert_uint_ge(s.reconnects, 1);
    ck_assert(watch_asked(0, "6"));
    ck_assert(watch_asked(1, "8"));
    ck_assert_int_eq(__atomic_load_n(&fake.watch_n, __ATOMIC_ACQUIRE), 2);
    uint64_t t0 = now_ns();
    fg_watch_stop(w);
    ck_assert_uint_lt(now_ns() - t0, 500000000u);
    fake_stop();
    free(r1);
    free(r2);
    free(put6);
    free(put4);
    env_free(&e);
}
END_TEST

/* A stream that ends (etcd restarted): re-opened from the last revision
 * seen + 1, the next change applied. */
START_TEST(test_resume) {
    if (!fg_etcd_available())
        return;
    struct env e;
    env_new(&e);
    char *r1 = range_body(5, 3, cfg("v1")), *put8 = event(NULL, 8, cfg("v2"));
    char *put9 = event(NULL, 9, cfg("v3"));
    struct answer range = {0, r1, {NULL}, 0, 0};
    struct answer watch[] = {
        {0, NULL, {CREATED, put8}, 0, 0},
        {503, NULL, {"{\"error\":{\"message\":\"no leader\"}}"}, 0, 0},
        {0, NULL, {CREATED, "{\"error\":{\"message\":\"stopping\"}}"}, 0, 0},
        {0, NULL, {CREATED, put9}, 0, 1}};
    fake_start(&range, 1, watch, 4);
    fg_watch *w = NULL;
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, fake_url(), KEY, &e.o, &w), 0);
    ck_assert(wait_calls(3));
    sleep_ms(50);
    ck_assert_int_eq(calls(), 3);
    assert_version(e.rt, "v3");
    ck_assert(watch_asked(0, "6"));
    ck_assert(watch_asked(1, "9"));
    ck_assert(watch_asked(2, "9"));
    ck_assert(watch_asked(3, "9"));
    fg_watch_stats s;
    ck_assert_int_eq(fg_watch_stats_get(w, &s), 0);
    ck_assert_uint_eq(s.revision, 9);
    ck_assert_uint_eq(s.reconnects, 3);
    ck_assert_int_eq(__atomic_load_n(&fake.range_n, __ATOMIC_ACQUIRE), 1);
    fg_watch_stop(w);
    fake_stop();
    free(r1);
    free(put8);
    free(put9);
    env_free(&e);
}
END_TEST

/* A stream etcd accepts but never says "created" on: ended after the
 * timeout, re-opened. */
START_TEST(test_not_created) {
    if (!fg_etcd_available())
        return;
    struct env e;
    env_new(&e);
    char *r1 = range_body(5, 3, cfg("v1")), *put6 = event(NULL, 6, cfg("v2"));
    struct answer range = {0, r1, {NULL}, 0, 0};
    struct answer watch[] = {{0, NULL, {NULL}, 0, 1}, {0, NULL, {CREATED, put6}, 0, 1}};
    fake_start(&range, 1, watch, 2);
    e.o.timeout_ns = 200000000u; /* 200 ms */
    fg_watch *w = NULL;
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, fake_url(), KEY, &e.o, &w), 0);
    uint64_t t0 = now_ns();
    ck_assert(wait_calls(2));
    uint64_t dt = now_ns() - t0;
    ck_assert_uint_ge(dt, 150000000u);
    ck_assert_uint_lt(dt, 2000000000u);
    assert_version(e.rt, "v2");
    ck_assert(watch_asked(1, "6"));
    fg_watch_stats s;
    ck_assert_int_eq(fg_watch_stats_get(w, &s), 0);
    ck_assert_uint_eq(s.reconnects, 1);
    fg_watch_stop(w);
    fake_stop();
    free(r1);
    free(put6);
    env_free(&e);
}
END_TEST

/* The start revision was compacted: the key is read afresh, the stream
 * re-opened after the revision of that read. */
START_TEST(test_compacted) {
    if (!fg_etcd_available())
        return;
    struct env e;
    env_new(&e);
    char *r1 = range_body(5, 3, cfg("v1")), *r2 = range_body(20, 18, cfg("v2"));
    struct answer range[] = {{0, r1, {NULL}, 0, 0}, {0, r2, {NULL}, 0, 0}};
    struct answer watch[] = {
        {0,
         NULL,
         {CREATED,
          "{\"result\":{\"header\":{},\"canceled\":true,\"compact_revision\":\"15\"}}"},
         0,
         1},
        {0, NULL, {CREATED}, 0, 1}};
    fake_start(range, 2, watch, 2);
    fg_watch *w = NULL;
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, fake_url(), KEY, &e.o, &w), 0);
    ck_assert(wait_calls(2));
    for (int i = 0; i < 1000 && __atomic_load_n(&fake.watch_n, __ATOMIC_ACQUIRE) < 2; i++)
        sleep_ms(5);
    ck_assert_int_eq(rec.rcs[1], 0);
    assert_version(e.rt, "v2");
    ck_assert(watch_asked(1, "21"));
    fg_watch_stats s;
    ck_assert_int_eq(fg_watch_stats_get(w, &s), 0);
    ck_assert_uint_eq(s.revision, 18);
    fg_watch_stop(w);
    fake_stop();
    free(r1);
    free(r2);
    env_free(&e);
}
END_TEST

/* A message past the bound (base64 of FG_CONFIG_MAX_BYTES + 64 KiB): a
 * failed attempt (FG_ETOOLONG), the key read afresh (nothing new there:
 * no attempt), the stream re-opened. */
START_TEST(test_oversize) {
    if (!fg_etcd_available())
        return;
    struct env e;
    env_new(&e);
    char *r1 = range_body(5, 3, cfg("v1"));
    size_t bound = ((size_t)FG_CONFIG_MAX_BYTES + 2) / 3 * 4 + 65536;
    struct answer range = {0, r1, {NULL}, 0, 0};
    struct answer watch[] = {{0, NULL, {CREATED}, bound + 1, 1}, {0, NULL, {CREATED}, 0, 1}};
    fake_start(&range, 1, watch, 2);
    fg_watch *w = NULL;
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, fake_url(), KEY, &e.o, &w), 0);
    ck_assert(wait_calls(2));
    for (int i = 0; i < 1000 && __atomic_load_n(&fake.watch_n, __ATOMIC_ACQUIRE) < 2; i++)
        sleep_ms(5);
    sleep_ms(50);
    ck_assert_int_eq(calls(), 2);
    ck_assert_int_eq(rec.rcs[1], FG_ETOOLONG);
    ck_assert_int_eq(__atomic_load_n(&fake.range_n, __ATOMIC_ACQUIRE), 2);
    ck_assert_int_eq(__atomic_load_n(&fake.watch_n, __ATOMIC_ACQUIRE), 2);
    assert_version(e.rt, "v1");
    fg_watch_stop(w);
    fake_stop();
    free(r1);
    env_free(&e);
}
END_TEST

/* fg_watch_stop from on_reload: the watcher ends after the callback, no
 * further one runs. */
START_TEST(test_stop_in_callback) {
    if (!fg_etcd_available())
        return;
    struct env e;
    env_new(&e);
    char *r1 = range_body(5, 3, cfg("v1"));
    char *put6 = event(NULL, 6, cfg("v2")), *put7 = event(NULL, 7, cfg("v3"));
    struct answer range = {0, r1, {NULL}, 0, 0};
    struct answer watch = {0, NULL, {CREATED, put6, put7}, 0, 1};
    fake_start(&range, 1, &watch, 1);
    fg_watch *w = NULL;
    rec.stop_at = 2;
    ck_assert_int_eq(fg_runtime_watch_etcd(e.rt, e.reg, fake_url(), KEY, &e.o, &w), 0);
    __atomic_store_n(&rec.self, w, __ATOMIC_RELEASE);
    ck_assert(wait_calls(2));
    sleep_ms(100);
    ck_assert_int_eq(calls(), 2);
    assert_version(e.rt, "v2");
    fake_stop();
    free(r1);
    free(put6);
    free(put7);
    env_free(&e);
}
END_TEST

/* ---- out of memory: fail the Nth allocation of a first load ------------------------------
 */

START_TEST(test_oom) {
    if (!fg_etcd_available())
        return;
    char *r1 = range_body(5, 3, cfg("v1"));
    struct answer range = {0, r1, {NULL}, 0, 0};
    struct answer watch = {0, NULL, {CREATED}, 0, 1};
    fake_start(&range, 1, &watch, 1);
    fg_watch_options o = FG_WATCH_OPTIONS_INIT;
    int done = 0;
    for (long n = 1; n < 100000 && !done; n++) {
        th_alloc_reset();
        th_alloc.fail_at = n;
        ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
        fg_registry *reg = NULL;
        fg_runtime *rt = NULL;
        fg_watch *w = NULL;
        int rc = fg_registry_new(&reg);
        if (rc == 0)
            rc = fg_registry_add_handler(reg, "hello", hello, NULL);
        if (rc == 0)
            rc = fg_runtime_new(&rt);
        if (rc == 0)
            rc = fg_runtime_watch_etcd(rt, reg, fake_url(), KEY, &o, &w);
        if (rc == 0) {
            char v[64]; /* reading it may allocate too (a reader record) */
            int vr = fg_runtime_version(rt, v, sizeof(v));
            ck_assert_int_eq(vr == 0 ? strcmp(v, "v1") : vr, vr == 0 ? 0 : FG_ENOMEM);
            fg_watch_stop(w);
        } else {
            ck_assert_msg(rc == FG_ENOMEM, "allocation %ld: %s", n, fg_err_name(rc));
            ck_assert_ptr_null(w);
        }
        fg_runtime_free(rt);
        fg_registry_free(reg);
        ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
        ck_assert_int_eq(th_alloc.allocs, th_alloc.frees);
        done = th_alloc.attempts < n; /* the failure was never reached: every path walked */
        if (done)
            ck_assert_int_eq(rc, 0);
    }
    ck_assert_int_eq(done, 1);
    fake_stop();
    free(r1);
}
END_TEST

Suite *fg_suite_etcd(void) {
    Suite *s = suite_create("etcd");
    TCase *tc = tcase_create("arguments");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_args);
    tcase_add_test(tc, test_unreachable);
    tcase_add_test(tc, test_timeout);
    tcase_add_loop_test(tc, test_first_load, 0, TH_NELEM(first_cases));
    suite_add_tcase(s, tc);

    tc = tcase_create("stream");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_stream);
    tcase_add_test(tc, test_resume);
    tcase_add_test(tc, test_not_created);
    tcase_add_test(tc, test_compacted);
    tcase_add_test(tc, test_oversize);
    suite_add_tcase(s, tc);

    tc = tcase_create("oom");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_oom);
    suite_add_tcase(s, tc);

    /* Last, as in the watch suite: a watcher stopped from its own callback
     * ends unobserved (as documented), so with CK_FORK=no a later
     * fg_set_alloc_funcs, as in test_oom, would race with its final free. */
    tc = tcase_create("stop_in_callback");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_stop_in_callback);
    suite_add_tcase(s, tc);
    return s;
}
