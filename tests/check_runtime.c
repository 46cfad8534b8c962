/*
 * tests/check_runtime.c - the runtime (floodgate/runtime.h): the current
 * chain, swaps while requests run (sync and split), when old chains are
 * freed, and a stress of two request threads against a swapping thread
 * (run it under TSAN=1 and SANITIZE=1). The cluster listener: the mode
 * changes of a config's cluster limiter, by name, against a port that
 * refuses connections and then a minimal stand-in for Redis on it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <floodgate.h>

#include "suites.h"

#define ALIVE 0x414c4956u
#define DEAD  0x44454144u

/* A stage that knows which chain it belongs to and whether it was freed. */
struct tag {
    uint32_t magic;
    int id;
    int *destroyed; /* counter, atomic */
    int *entered;   /* counter, atomic */
};

static int tag_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    struct tag *t = state;
    ck_assert_uint_eq(__atomic_load_n(&t->magic, __ATOMIC_RELAXED), ALIVE);
    *slot = (uint64_t)t->id;
    ctx->user = t;
    __atomic_fetch_add(t->entered, 1, __ATOMIC_RELAXED);
    return 0;
}

static int tag_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    struct tag *t = state;
    (void)ctx;
    (void)outcome;
    ck_assert_uint_eq(__atomic_load_n(&t->magic, __ATOMIC_RELAXED), ALIVE);
    ck_assert_int_eq((int)slot, t->id);
    return 0;
}

static void tag_destroy(void *state) {
    struct tag *t = state;
    __atomic_store_n(&t->magic, DEAD, __ATOMIC_RELAXED);
    __atomic_fetch_add(t->destroyed, 1, __ATOMIC_RELAXED);
    free(t);
}

static const fg_stage_ops tag_ops = {"tag", tag_enter, tag_exit, tag_destroy};

static fg_chain *tagged_chain(int id, int *destroyed, int *entered) {
    fg_chain *c = NULL;
    ck_assert_int_eq(fg_chain_new(NULL, &c), 0);
    struct tag *t = malloc(sizeof(*t));
    ck_assert_ptr_nonnull(t);
    *t = (struct tag){ALIVE, id, destroyed, entered};
    fg_stage *s = NULL;
    ck_assert_int_eq(fg_stage_new(&tag_ops, t, "tag", &s), 0);
    ck_assert_int_eq(fg_chain_use(c, s), 0);
    return c;
}

static int handler_ok(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

START_TEST(test_runtime_basics) {
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, handler_ok, NULL), FG_ESTATE);
    char v[16];
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), FG_ESTATE);
    ck_assert_uint_eq(fg_runtime_generation(rt), 0);

    int destroyed = 0, entered = 0;
    ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(1, &destroyed, &entered), "v1"), 0);
    ck_assert_uint_eq(fg_runtime_generation(rt), 1);
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, "v1");
    ck_assert_int_eq(fg_runtime_version(rt, v, 2), 0);
    ck_assert_str_eq(v, "v");
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, handler_ok, NULL), 0);
    ck_assert_int_eq(((struct tag *)ctx.user)->id, 1);
    ck_assert_int_eq(entered, 1);

    /* Errors take the chain. */
    ck_assert_int_eq(fg_runtime_swap(NULL, tagged_chain(9, &destroyed, &entered), "x"),
                     FG_EINVAL);
    ck_assert_int_eq(destroyed, 1);
    char long_version[300];
    memset(long_version, 'v', sizeof(long_version) - 1);
    long_version[sizeof(long_version) - 1] = '\0';
    ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(9, &destroyed, &entered), long_version),
                     FG_ETOOLONG);
    ck_assert_int_eq(destroyed, 2);
    ck_assert_int_eq(fg_runtime_swap(rt, NULL, "x"), FG_EINVAL);
    ck_assert_uint_eq(fg_runtime_generation(rt), 1);
    ck_assert_int_eq(fg_runtime_call(NULL, &ctx, handler_ok, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_enter(rt, NULL), FG_EINVAL);
    fg_runtime_free(rt);
    ck_assert_int_eq(destroyed, 3);
    fg_runtime_free(NULL);
}
END_TEST

/* A split request that entered chain 1 exits on chain 1 after a swap, and
 * chain 1 outlives any number of swaps until that exit. */
START_TEST(test_runtime_split_across_swap) {
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    int d1 = 0, d2 = 0, e = 0;
    ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(1, &d1, &e), "one"), 0);
    fg_ctx held;
    ck_assert_int_eq(fg_ctx_init(&held, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_enter(rt, &held), 0);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(2, &d2, &e), "two"), 0);
    ck_assert_int_eq(d1, 0); /* still held by the split request */
    ck_assert_int_ge(d2, 8); /* the intermediate chains went (grace periods allowing) */
    fg_ctx now;
    ck_assert_int_eq(fg_ctx_init(&now, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &now, handler_ok, NULL), 0);
    ck_assert_int_eq(((struct tag *)now.user)->id, 2);
    ck_assert_int_eq(fg_runtime_exit(rt, &held, 0), 0);
    ck_assert_int_eq(d1, 1); /* retired and now unreferenced: freed at once */
    ck_assert_int_eq(fg_runtime_exit(rt, &held, 0), FG_ESTATE);
    fg_ctx never;
    ck_assert_int_eq(fg_ctx_init(&never, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_exit(rt, &never, 0), FG_ESTATE);
    fg_runtime_free(rt);
    ck_assert_int_eq(d2, 10);
}
END_TEST

/* Two runtimes in one thread, and a runtime freed and another made (its
 * address may be reused: the thread's cached record must not be). */
START_TEST(test_runtime_many) {
    int d = 0, e = 0;
    for (int round = 0; round < 20; round++) {
        fg_runtime *a = NULL, *b = NULL;
        ck_assert_int_eq(fg_runtime_new(&a), 0);
        ck_assert_int_eq(fg_runtime_new(&b), 0);
        ck_assert_int_eq(fg_runtime_swap(a, tagged_chain(1, &d, &e), "a"), 0);
        ck_assert_int_eq(fg_runtime_swap(b, tagged_chain(2, &d, &e), "b"), 0);
        for (int i = 0; i < 3; i++) {
            fg_ctx ctx;
            ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
            ck_assert_int_eq(fg_runtime_call(i % 2 ? a : b, &ctx, handler_ok, NULL), 0);
            ck_assert_int_eq(((struct tag *)ctx.user)->id, i % 2 ? 1 : 2);
        }
        fg_runtime_free(a);
        fg_runtime_free(b);
    }
    ck_assert_int_eq(d, 40);
}
END_TEST

/* ---- stress: requests on two threads, swaps on a third ------------------------- */

struct stress {
    fg_runtime *rt;
    int stop; /* atomic */
    long requests[2];
    int failures; /* atomic */
};

static void *stress_requests(void *arg) {
    struct stress *st = ((void **)arg)[0];
    long *count = ((void **)arg)[1];
    for (long i = 0; !__atomic_load_n(&st->stop, __ATOMIC_ACQUIRE) && i < 2000000; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/");
        int rc;
        if (i % 3 == 0) {
            rc = fg_runtime_enter(st->rt, &ctx);
            if (rc == 0)
                rc = fg_runtime_exit(st->rt, &ctx, 0);
        } else {
            rc = fg_runtime_call(st->rt, &ctx, handler_ok, NULL);
        }
        if (rc != 0)
            __atomic_fetch_add(&st->failures, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(count, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

START_TEST(test_runtime_stress) {
    int destroyed = 0, entered = 0;
    struct stress st = {0};
    ck_assert_int_eq(fg_runtime_new(&st.rt), 0);
    ck_assert_int_eq(fg_runtime_swap(st.rt, tagged_chain(0, &destroyed, &entered), "0"), 0);
    pthread_t th[2];
    void *args[2][2] = {{&st, &st.requests[0]}, {&st, &st.requests[1]}};
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, stress_requests, args[i]), 0);
    const int swaps = 1000;
    for (int i = 1; i <= swaps; i++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        ck_assert_int_eq(fg_runtime_swap(st.rt, tagged_chain(i, &destroyed, &entered), v), 0);
        /* Let requests run on this chain before the next swap (bounded). */
        long before = __atomic_load_n(&st.requests[0], __ATOMIC_RELAXED) +
                      __atomic_load_n(&st.requests[1], __ATOMIC_RELAXED);
        for (int spin = 0; spin < 100000; spin++) {
            long now = __atomic_load_n(&st.requests[0], __ATOMIC_RELAXED) +
                       __atomic_load_n(&st.requests[1], __ATOMIC_RELAXED);
            if (now - before >= 50)
                break;
            sched_yield();
        }
    }
    __atomic_store_n(&st.stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    ck_assert_int_eq(st.failures, 0);
    ck_assert_int_eq(entered, (int)(st.requests[0] + st.requests[1]));
    ck_assert_uint_eq(fg_runtime_generation(st.rt), (uint64_t)swaps + 1);
    fg_runtime_free(st.rt);
    ck_assert_int_eq(destroyed, swaps + 1); /* every chain freed exactly once */
    printf("runtime stress: %ld + %ld requests across %d swaps\n", st.requests[0],
           st.requests[1], swaps);
}
END_TEST

/* Threads that come and go each register a record and give it back. */
static void *one_call(void *arg) {
    fg_ctx ctx;
    fg_ctx_init(&ctx, "GET", "/");
    *(int *)((void **)arg)[1] = fg_runtime_call(((void **)arg)[0], &ctx, handler_ok, NULL);
    return NULL;
}

START_TEST(test_runtime_threads_come_and_go) {
    int d = 0, e = 0;
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(1, &d, &e), "x"), 0);
    for (int i = 0; i < 64; i++) {
        int rc = -1;
        void *arg[2] = {rt, &rc};
        pthread_t t;
        ck_assert_int_eq(pthread_create(&t, NULL, one_call, arg), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(rc, 0);
    }
    ck_assert_int_eq(e, 64);
    fg_runtime_free(rt);
    ck_assert_int_eq(d, 1);
}
END_TEST

/* ---- the cluster listener ---------------------------------------------------------- */

/*
 * A stand-in for Redis, enough for a cluster limiter: SCRIPT LOAD answers a
 * SHA1-shaped string, EVALSHA grants every token asked for (the bucket is
 * never empty here), anything else is an error. One connection at a time,
 * on a socket the test bound earlier (so the port refused connections until
 * it listens).
 */
typedef struct resp_server {
    int fd;
    pthread_t thread;
    int stop;     /* atomic */
    int commands; /* atomic: commands answered */
} resp_server;

/* One complete RESP array of bulk strings at buf[0..len): its argc and
 * argv (pointers into buf, cut to 63 bytes) and its length; 0 if
 * incomplete. */
static size_t resp_parse(const char *buf, size_t len, int *argc, char argv[8][64]) {
    const char *p = buf, *end = buf + len;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL || *p != '*')
        return 0;
    int n = atoi(p + 1);
    p = nl + 1;
    *argc = 0;
    for (int i = 0; i < n; i++) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL || *p != '$')
            return 0;
        size_t bl = (size_t)atol(p + 1);
        p = nl + 1;
        if ((size_t)(end - p) < bl + 2)
            return 0;
        if (i < 8) {
            size_t c = bl < 63 ? bl : 63;
            memcpy(argv[i], p, c);
            argv[i][c] = '\0';
            (*argc)++;
        }
        p += bl + 2;
    }
    return (size_t)(p - buf);
}

static void resp_answer(int c, int argc, char argv[8][64]) {
    char out[128];
    if (argc >= 2 && strcmp(argv[0], "SCRIPT") == 0)
        snprintf(out, sizeof(out), "$40\r\n0123456789abcdef0123456789abcdef01234567\r\n");
    else if (argc >= 8 && strcmp(argv[0], "EVALSHA") == 0)
        snprintf(out, sizeof(out), "*2\r\n:%s\r\n:0\r\n", argv[6]);
    else
        snprintf(out, sizeof(out), "-ERR unknown command\r\n");
    (void)send(c, out, strlen(out), MSG_NOSIGNAL); /* a short answer fails the client */
}

static void *resp_main(void *arg) {
    resp_server *rs = arg;
    int c = -1;
    char buf[8192];
    size_t have = 0;
    while (!__atomic_load_n(&rs->stop, __ATOMIC_ACQUIRE)) {
        struct pollfd pf = {c >= 0 ? c : rs->fd, POLLIN, 0};
        if (poll(&pf, 1, 20) <= 0)
            continue;
        if (c < 0) {
            c = accept(rs->fd, NULL, NULL);
            have = 0;
            continue;
        }
        ssize_t got = recv(c, buf + have, sizeof(buf) - have, 0);
        if (got <= 0) {
            close(c);
            c = -1;
            continue;
        }
        have += (size_t)got;
        int argc;
        char argv[8][64];
        size_t used;
        while ((used = resp_parse(buf, have, &argc, argv)) > 0) {
            /* Counted before the answer: once the client has it, so has the test. */
            __atomic_fetch_add(&rs->commands, 1, __ATOMIC_RELEASE);
            resp_answer(c, argc, argv);
            memmove(buf, buf + used, have - used);
            have -= used;
        }
    }
    if (c >= 0)
        close(c);
    return NULL;
}

/* Every listener call, recorded (the background thread calls it too). */
typedef struct cl_log {
    pthread_mutex_t mu;
    int n;
    char name[8][64];
    fg_cluster_event ev[8];
} cl_log;

static void cl_listener(const char *name, const fg_cluster_event *event, void *arg) {
    cl_log *log = arg;
    pthread_mutex_lock(&log->mu);
    if (log->n < 8) {
        snprintf(log->name[log->n], sizeof(log->name[0]), "%s", name);
        log->ev[log->n] = *event;
    }
    log->n++;
    pthread_mutex_unlock(&log->mu);
}

static int cl_count(cl_log *log) {
    pthread_mutex_lock(&log->mu);
    int n = log->n;
    pthread_mutex_unlock(&log->mu);
    return n;
}

static int script_ok(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

static int rt_get(fg_runtime *rt) {
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    return fg_runtime_call(rt, &ctx, NULL, NULL);
}

/* The listener's rules; a cluster limiter whose Redis refuses connections
 * reports its fallback while the config loads (with its name and the
 * reason), then, once "Redis" answers on that port and its backoff (on the
 * runtime's fake clock) has passed, its return to cluster mode from its
 * background thread; the runtime's metrics follow. */
START_TEST(test_runtime_cluster_listener) {
    cl_log log;
    memset(&log, 0, sizeof(log));
    ck_assert_int_eq(pthread_mutex_init(&log.mu, NULL), 0);
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_set_cluster_listener(NULL, cl_listener, &log), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_set_cluster_listener(rt, NULL, NULL), 0);
    ck_assert_int_eq(fg_runtime_set_cluster_listener(rt, cl_listener, &log), 0);
    if (!fg_cluster_available()) {
        fg_runtime_free(rt);
        return; /* no cluster limiter can be configured (check_config) */
    }
    fg_fake_clock *fake = NULL;
    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1000000000), &fake), 0);
    ck_assert_int_eq(fg_runtime_set_clock(rt, fg_fake_clock_as_clock(fake)), 0);
    fg_registry *reg = NULL;
    ck_assert_int_eq(fg_registry_new(&reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(reg, "ok", script_ok, NULL), 0);

    resp_server rs;
    memset(&rs, 0, sizeof(rs));
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    rs.fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(rs.fd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(rs.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(rs.fd, (struct sockaddr *)&sa, &salen), 0);
    char addr[64], cfg[512];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    snprintf(cfg, sizeof(cfg),
             "{\"version\": \"1\", \"limiters\": {\"shared\": {\"rate\": \"100/s\", "
             "\"burst\": 50, \"cluster\": {\"redis\": \"%s\", \"lease\": 10, \"timeout\": "
             "\"1s\", \"backoff_min\": \"10ms\", \"backoff_max\": \"10ms\"}}}, \"chain\": "
             "[{\"limiter\": \"shared\"}], \"handler\": \"ok\"}",
             addr);
    fg_config_errors errs;
    ck_assert_int_eq(fg_runtime_load_json(rt, reg, cfg, strlen(cfg), &errs), 0);
    ck_assert_int_eq(fg_runtime_set_cluster_listener(rt, cl_listener, &log), FG_ESTATE);
    /* Reported during the load, by name, with the reason. */
    ck_assert_int_eq(cl_count(&log), 1);
    ck_assert_str_eq(log.name[0], "shared");
    ck_assert_int_eq(log.ev[0].from, FG_CLUSTER_MODE_CLUSTER);
    ck_assert_int_eq(log.ev[0].to, FG_CLUSTER_MODE_FALLBACK);
    ck_assert_uint_eq(log.ev[0].at_ns, UINT64_C(1000000000));
    char want[96];
    snprintf(want, sizeof(want), "connect %s: ", addr);
    ck_assert_msg(strncmp(log.ev[0].reason, want, strlen(want)) == 0, "reason \"%s\"",
                  log.ev[0].reason);
    /* Nothing more while the fake clock stands (the backoff runs on it). */
    struct timespec pause = {0, 100 * 1000000};
    nanosleep(&pause, NULL);
    ck_assert_int_eq(cl_count(&log), 1);

    /* "Redis" comes up on the port; the backoff passes. */
    ck_assert_int_eq(listen(rs.fd, 4), 0);
    ck_assert_int_eq(pthread_create(&rs.thread, NULL, resp_main, &rs), 0);
    fg_fake_clock_advance(fake, 20 * FG_NS_PER_MS);
    for (int i = 0; i < 500 && cl_count(&log) < 2; i++) {
        struct timespec ms10 = {0, 10 * 1000000};
        nanosleep(&ms10, NULL);
    }
    ck_assert_int_eq(cl_count(&log), 2);
    ck_assert_str_eq(log.name[1], "shared");
    ck_assert_int_eq(log.ev[1].from, FG_CLUSTER_MODE_FALLBACK);
    ck_assert_int_eq(log.ev[1].to, FG_CLUSTER_MODE_CLUSTER);
    ck_assert_str_eq(log.ev[1].reason, "");
    /* Requests are decided from leases now. */
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(rt_get(rt), 0);
    ck_assert_int_ge(__atomic_load_n(&rs.commands, __ATOMIC_ACQUIRE), 2);
    fg_metrics *m = fg_runtime_metrics(rt);
    size_t need = 0;
    ck_assert_int_eq(fg_metrics_prometheus(m, NULL, 0, &need), FG_ETOOLONG);
    char *text = malloc(need + 1);
    ck_assert_ptr_nonnull(text);
    ck_assert_int_eq(fg_metrics_prometheus(m, text, need + 1, &need), 0);
    ck_assert_ptr_nonnull(strstr(text, "\nfloodgate_cluster_mode{limiter=\"shared\"} 0\n"));
    ck_assert_ptr_nonnull(
        strstr(text, "\nfloodgate_cluster_fallbacks_total{limiter=\"shared\"} 1\n"));
    ck_assert_ptr_nonnull(
        strstr(text, "\nfloodgate_cluster_recoveries_total{limiter=\"shared\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nfloodgate_cluster_decisions_total{limiter="
                                       "\"shared\",mode=\"cluster\",decision=\"admitted\"} "
                                       "5\n"));
    free(text);
    fg_runtime_free(rt); /* gives the lease back while "Redis" still answers */
    __atomic_store_n(&rs.stop, 1, __ATOMIC_RELEASE);
    ck_assert_int_eq(pthread_join(rs.thread, NULL), 0);
    close(rs.fd);
    ck_assert_int_eq(cl_count(&log), 2);
    fg_registry_free(reg);
    fg_fake_clock_free(fake);
    pthread_mutex_destroy(&log.mu);
}
END_TEST

Suite *fg_suite_runtime(void) {
    Suite *s = suite_create("runtime");
    TCase *tc = tcase_create("swap");
    tcase_add_test(tc, test_runtime_basics);
    tcase_add_test(tc, test_runtime_split_across_swap);
    tcase_add_test(tc, test_runtime_many);
    tcase_add_test(tc, test_runtime_threads_come_and_go);
    suite_add_tcase(s, tc);
    TCase *stress = tcase_create("stress");
    tcase_set_timeout(stress, 120);
    tcase_add_test(stress, test_runtime_stress);
    suite_add_tcase(s, stress);
    TCase *cluster = tcase_create("cluster");
    tcase_set_timeout(cluster, 30);
    tcase_add_test(cluster, test_runtime_cluster_listener);
    suite_add_tcase(s, cluster);
    return s;
}
