/*
 * tests/cluster_driver.c - the cluster limiter (floodgate/cluster.h) against
 * a real redis-server, for tests/test_cluster.sh, which starts the server
 * (and stops, kills and pauses it) and runs one or more of these at once.
 *
 *   cluster_driver available
 *       prints 1 or 0 (fg_cluster_available) and exits 0.
 *   cluster_driver load OPTIONS
 *       waits for --start-at (ns on CLOCK_REALTIME, shared by every process
 *       of a run), then makes its limiter and runs --threads threads of
 *       requests until start-at + --duration-ms; prints one "load" line of
 *       key=value figures for the script to sum across processes.
 *   cluster_driver outage OPTIONS
 *       the same loop for a run during which the script stops Redis; every
 *       try is timed; prints the mode changes its listener saw ("event"
 *       lines, with CLOCK_REALTIME stamps the script compares with the
 *       times it stopped and restarted Redis) and one "outage" line.
 *   cluster_driver refund OPTIONS
 *       single-process checks of lease refunds at free and lease expiry,
 *       partial leases, and the same per key, with several limiters
 *       (several instances as far as Redis knows).
 *
 * Requests that are rejected sleep --pace-us before the next try (admitted
 * ones do not): the offered load stays far above any rate tested, while a
 * two-CPU machine keeps time for redis-server and the background threads
 * (under TSan especially).
 *
 * Each driver checks what it can see alone and prints "FAIL cluster_driver
 * <mode>: <what>: want <x>, got <y> (file:line)" for each failure; it exits 1
 * after any, 2 on a usage error. Output goes to stdout; stderr is left to
 * the sanitizers, which the script searches.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <floodgate.h>

#define MS  FG_NS_PER_MS
#define SEC FG_NS_PER_S

/* Bounds on every loop, whatever the clock says. */
#define MAX_THREADS          16
#define MAX_TRIES_PER_THREAD UINT64_C(200000000)
#define MAX_EVENTS           64
#define MAX_SAMPLES          2000

static const char *mode_name = "?";
static int failures;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            failures++;                                                                       \
            printf("FAIL cluster_driver %s: ", mode_name);                                    \
            printf(__VA_ARGS__);                                                              \
            printf(" (%s:%d)\n", __FILE__, __LINE__);                                         \
            fflush(stdout);                                                                   \
        }                                                                                     \
    } while (0)

static uint64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * SEC + (uint64_t)ts.tv_nsec;
}

static uint64_t real_ns(void) { return clock_ns(CLOCK_REALTIME); }
static uint64_t mono_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / SEC), (long)(ns % SEC)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void sleep_until_real(uint64_t at) {
    struct timespec ts = {(time_t)(at / SEC), (long)(at % SEC)};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static const char *mode_str(fg_cluster_mode m) {
    return m == FG_CLUSTER_MODE_CLUSTER    ? "cluster"
           : m == FG_CLUSTER_MODE_FALLBACK ? "fallback"
                                           : "?";
}

/* ---- arguments ----------------------------------------------------------------------------
 */

typedef struct args {
    const char *redis, *prefix, *name, *fallback;
    uint64_t rate, period_ms, burst, lease, lease_ttl_ms, timeout_ms, instances;
    uint64_t backoff_min_ms, backoff_max_ms, threads, start_at, duration_ms, pace_us;
    uint64_t margin_ms, expect_outages;
} args;

typedef struct arg_def {
    const char *flag;
    size_t str_off;  /* offset of a const char * field, or SIZE_MAX */
    size_t uint_off; /* offset of a uint64_t field, or SIZE_MAX */
} arg_def;

#define STR_ARG(f)                                                                            \
    { "--" #f, offsetof(args, f), SIZE_MAX }
#define UINT_ARG(f)                                                                           \
    { "--" #f, SIZE_MAX, offsetof(args, f) }

static const arg_def arg_defs[] = {
    STR_ARG(redis),           STR_ARG(prefix),     STR_ARG(name),
    STR_ARG(fallback),        UINT_ARG(rate),      UINT_ARG(period_ms),
    UINT_ARG(burst),          UINT_ARG(lease),     UINT_ARG(lease_ttl_ms),
    UINT_ARG(timeout_ms),     UINT_ARG(instances), UINT_ARG(backoff_min_ms),
    UINT_ARG(backoff_max_ms), UINT_ARG(threads),   UINT_ARG(start_at),
    UINT_ARG(duration_ms),    UINT_ARG(pace_us),   UINT_ARG(margin_ms),
    UINT_ARG(expect_outages),
};

static void usage(const char *why) {
    fprintf(stderr,
            "cluster_driver: %s\n"
            "usage: cluster_driver available | load|outage|refund --redis HOST:PORT "
            "--name KEY [--prefix P] [--rate N --burst N --lease N --period_ms N "
            "--lease_ttl_ms N --timeout_ms N --instances N --fallback local|closed "
            "--backoff_min_ms N --backoff_max_ms N --threads N --start_at REALTIME_NS "
            "--duration_ms N --pace_us N --margin_ms N --expect_outages N]\n",
            why);
    exit(2);
}

static void parse_args(int argc, char **argv, args *a) {
    memset(a, 0, sizeof(*a));
    a->threads = 2;
    a->pace_us = 100;
    a->timeout_ms = 250;
    for (int i = 2; i < argc; i += 2) {
        const arg_def *d = NULL;
        for (size_t k = 0; k < sizeof(arg_defs) / sizeof(arg_defs[0]); k++) {
            if (strcmp(argv[i], arg_defs[k].flag) == 0) {
                d = &arg_defs[k];
            }
        }
        if (d == NULL || i + 1 >= argc) {
            usage(d == NULL ? "unknown option" : "option without a value");
        }
        if (d->str_off != SIZE_MAX) {
            *(const char **)(void *)((char *)a + d->str_off) = argv[i + 1];
        } else {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(argv[i + 1], &end, 10);
            if (errno != 0 || *end != '\0' || end == argv[i + 1]) {
                usage("not a number");
            }
            *(uint64_t *)(void *)((char *)a + d->uint_off) = (uint64_t)v;
        }
    }
    if (a->redis == NULL || a->name == NULL) {
        usage("--redis and --name are required");
    }
    if (a->threads < 1 || a->threads > MAX_THREADS) {
        usage("--threads: 1 .. 16");
    }
}

static fg_cluster_options opts_of(const args *a) {
    fg_cluster_options o = FG_CLUSTER_OPTIONS_INIT;
    o.redis = a->redis;
    o.prefix = a->prefix;
    o.name = a->name;
    o.rate = a->rate;
    o.period_ns = a->period_ms * MS;
    o.burst = a->burst;
    o.lease = a->lease;
    o.lease_ttl_ns = a->lease_ttl_ms * MS;
    o.timeout_ns = a->timeout_ms * MS;
    o.instances = (uint32_t)a->instances;
    o.backoff_min_ns = a->backoff_min_ms * MS;
    o.backoff_max_ns = a->backoff_max_ms * MS;
    o.fallback = a->fallback != NULL && strcmp(a->fallback, "closed") == 0
                     ? FG_CLUSTER_FALLBACK_CLOSED
                     : FG_CLUSTER_FALLBACK_LOCAL;
    return o;
}

static fg_cluster_limiter *make(const fg_cluster_options *o, uint64_t *took_ns) {
    fg_cluster_limiter *cl = NULL;
    uint64_t t = mono_ns();
    int rc = fg_cluster_limiter_new(o, &cl);
    if (took_ns != NULL) {
        *took_ns = mono_ns() - t;
    }
    if (rc != 0) {
        printf("FAIL cluster_driver %s: fg_cluster_limiter_new(%s, %s): %s\n", mode_name,
               o->redis, o->name, fg_err_name(rc));
        exit(1);
    }
    return cl;
}

/* The counters once they hold still (each is atomic, the set is not one
 * snapshot): two equal readings in a row, or the last of 50. */
static fg_cluster_stats stable_stats(const fg_cluster_limiter *cl) {
    fg_cluster_stats a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    fg_cluster_limiter_stats(cl, &a);
    for (int i = 0; i < 50; i++) {
        sleep_ns(2 * MS);
        fg_cluster_limiter_stats(cl, &b);
        if (memcmp(&a, &b, sizeof(a)) == 0) {
            break;
        }
        a = b;
    }
    return b;
}

static void print_stats(const fg_cluster_stats *s) {
    printf(" mode=%s admitted_stat=%" PRIu64 " rejected_stat=%" PRIu64
           " fallback_admitted=%" PRIu64 " fallback_rejected=%" PRIu64 " roundtrips=%" PRIu64
           " leased=%" PRIu64 " refunded=%" PRIu64 " errors=%" PRIu64 " fallbacks=%" PRIu64
           " recoveries=%" PRIu64 " held=%" PRIu64,
           mode_str(s->mode), s->admitted, s->rejected, s->fallback_admitted,
           s->fallback_rejected, s->roundtrips, s->leased, s->refunded, s->errors,
           s->fallbacks, s->recoveries, s->held);
}

/* ---- the request loop (load and outage) ---------------------------------------------------
 */

typedef struct worker {
    pthread_t th;
    fg_cluster_limiter *cl;
    uint64_t end_real, pace_ns, slow_ns, timeout_ns;
    /* results, read after the join */
    uint64_t tries, admitted, rejected, other, last_real, max_try_ns, slow, over_timeout;
    uint64_t min_wait, max_wait, zero_wait;
    int other_rc;
} worker;

static void *worker_run(void *p) {
    worker *w = p;
    w->min_wait = UINT64_MAX;
    while (w->tries < MAX_TRIES_PER_THREAD) {
        uint64_t wait = UINT64_MAX;
        uint64_t t0 = mono_ns();
        int rc = fg_cluster_limiter_try(w->cl, t0, 1, &wait);
        uint64_t took = mono_ns() - t0;
        uint64_t now = real_ns();

        w->tries++;
        w->last_real = now;
        if (took > w->max_try_ns) {
            w->max_try_ns = took;
        }
        if (took > w->slow_ns) {
            w->slow++;
        }
        if (took > w->timeout_ns) {
            w->over_timeout++;
        }
        if (rc == 0) {
            w->admitted++;
        } else if (rc == FG_ELIMITED) {
            w->rejected++;
            if (wait == 0) {
                w->zero_wait++;
            }
            if (wait < w->min_wait) {
                w->min_wait = wait;
            }
            if (wait > w->max_wait) {
                w->max_wait = wait;
            }
        } else {
            w->other++;
            w->other_rc = rc;
        }
        if (now >= w->end_real) {
            break;
        }
        if (rc != 0 && w->pace_ns > 0) {
            sleep_ns(w->pace_ns);
        }
    }
    return NULL;
}

typedef struct run_totals {
    uint64_t tries, admitted, rejected, other, end_real, max_try_ns, slow, over_timeout;
    uint64_t min_wait, max_wait, zero_wait;
    int other_rc;
} run_totals;

static void start_workers(worker *ws, uint64_t n, fg_cluster_limiter *cl, uint64_t end_real,
                          uint64_t pace_ns, uint64_t slow_ns, uint64_t timeout_ns) {
    for (uint64_t i = 0; i < n; i++) {
        memset(&ws[i], 0, sizeof(ws[i]));
        ws[i].cl = cl;
        ws[i].end_real = end_real;
        ws[i].pace_ns = pace_ns;
        ws[i].slow_ns = slow_ns;
        ws[i].timeout_ns = timeout_ns;
        if (pthread_create(&ws[i].th, NULL, worker_run, &ws[i]) != 0) {
            printf("FAIL cluster_driver %s: pthread_create\n", mode_name);
            exit(1);
        }
    }
}

static run_totals join_workers(worker *ws, uint64_t n) {
    run_totals t;
    memset(&t, 0, sizeof(t));
    t.min_wait = UINT64_MAX;
    for (uint64_t i = 0; i < n; i++) {
        pthread_join(ws[i].th, NULL);
        t.tries += ws[i].tries;
        t.admitted += ws[i].admitted;
        t.rejected += ws[i].rejected;
        t.other += ws[i].other;
        t.slow += ws[i].slow;
        t.over_timeout += ws[i].over_timeout;
        t.zero_wait += ws[i].zero_wait;
        if (ws[i].other != 0) {
            t.other_rc = ws[i].other_rc;
        }
        if (ws[i].last_real > t.end_real) {
            t.end_real = ws[i].last_real;
        }
        if (ws[i].max_try_ns > t.max_try_ns) {
            t.max_try_ns = ws[i].max_try_ns;
        }
        if (ws[i].min_wait < t.min_wait) {
            t.min_wait = ws[i].min_wait;
        }
        if (ws[i].max_wait > t.max_wait) {
            t.max_wait = ws[i].max_wait;
        }
    }
    if (t.min_wait == UINT64_MAX) {
        t.min_wait = 0;
    }
    return t;
}

/* ---- load ----------------------------------------------------------------------------------
 */

/*
 * The limiter is made after start-at, so the bucket (a fresh key per run)
 * is created inside the window [start-at, last try] that the script uses as
 * elapsed, and every admission counted lies inside it too.
 */
static int cmd_load(const args *a) {
    fg_cluster_options o = opts_of(a), got;
    worker ws[MAX_THREADS];
    uint64_t new_ns, late;

    if (a->start_at == 0 || a->duration_ms == 0) {
        usage("load needs --start_at and --duration_ms");
    }
    sleep_until_real(a->start_at);
    late = real_ns() - a->start_at;
    fg_cluster_limiter *cl = make(&o, &new_ns);
    fg_cluster_limiter_get(cl, &got);
    start_workers(ws, a->threads, cl, a->start_at + a->duration_ms * MS, a->pace_us * 1000,
                  UINT64_MAX, got.timeout_ns);
    run_totals t = join_workers(ws, a->threads);
    fg_cluster_stats s = stable_stats(cl);

    printf("load name=%s admitted=%" PRIu64 " rejected=%" PRIu64 " tries=%" PRIu64
           " start_ns=%" PRIu64 " end_ns=%" PRIu64 " elapsed_ns=%" PRIu64 " late_ns=%" PRIu64
           " new_ns=%" PRIu64 " lease=%" PRIu64 " rate=%" PRIu64 " burst=%" PRIu64
           " timeout_ns=%" PRIu64 " max_try_ns=%" PRIu64,
           a->name, t.admitted, t.rejected, t.tries, a->start_at, t.end_real,
           t.end_real - a->start_at, late, new_ns, got.lease, got.rate, got.burst,
           got.timeout_ns, t.max_try_ns);
    print_stats(&s);
    printf("\n");
    fflush(stdout);

    CHECK(t.other == 0, "%" PRIu64 " tries returned neither 0 nor FG_ELIMITED (last: %s)",
          t.other, fg_err_name(t.other_rc));
    CHECK(a->lease == 0 || got.lease == a->lease, "lease: want %" PRIu64 ", got %" PRIu64,
          a->lease, got.lease);
    CHECK(s.fallbacks == 0 && s.fallback_admitted + s.fallback_rejected == 0,
          "Redis is up and the timeout %" PRIu64 " ms, yet %" PRIu64
          " switch(es) to fallback, %" PRIu64 " fallback decisions",
          a->timeout_ms, s.fallbacks, s.fallback_admitted + s.fallback_rejected);
    CHECK(s.admitted + s.fallback_admitted == t.admitted,
          "stats.admitted + fallback_admitted: want %" PRIu64 " (tries that returned 0), "
          "got %" PRIu64,
          t.admitted, s.admitted + s.fallback_admitted);
    CHECK(s.rejected + s.fallback_rejected == t.rejected,
          "stats.rejected + fallback_rejected: want %" PRIu64 " (tries that returned "
          "FG_ELIMITED), got %" PRIu64,
          t.rejected, s.rejected + s.fallback_rejected);
    if (s.fallbacks == 0) {
        /* Every token taken from the bucket was spent, given back, or is held. */
        CHECK(s.leased == s.admitted + s.refunded + s.held,
              "leased %" PRIu64 " != admitted %" PRIu64 " + refunded %" PRIu64
              " + held %" PRIu64,
              s.leased, s.admitted, s.refunded, s.held);
    }
    CHECK(s.mode == FG_CLUSTER_MODE_CLUSTER, "mode at the end: want cluster, got %s",
          mode_str(s.mode));
    if (got.lease == 1) {
        /* lease 1 is exact: every admission was its own Redis call. */
        CHECK(s.roundtrips >= s.admitted,
              "lease 1: roundtrips %" PRIu64 " < admitted %" PRIu64, s.roundtrips, s.admitted);
        CHECK(s.held <= 1, "lease 1: held %" PRIu64 " tokens", s.held);
    }
    uint64_t t0 = mono_ns();
    fg_cluster_limiter_free(cl);
    printf("load-free name=%s free_ns=%" PRIu64 "\n", a->name, mono_ns() - t0);
    return failures == 0 ? 0 : 1;
}

/* ---- outage --------------------------------------------------------------------------------
 */

typedef struct ev_rec {
    fg_cluster_event ev;
    char name[FG_CLUSTER_NAME_MAX + 1];
    uint64_t real_ns;
    atomic_int ready;
} ev_rec;

static ev_rec events[MAX_EVENTS];
static atomic_int n_events;

/* Non-blocking: one atomic increment and a copy into a slot of our own. */
static void on_event(const char *name, const fg_cluster_event *e, void *arg) {
    (void)arg;
    int i = atomic_fetch_add(&n_events, 1);
    if (i < MAX_EVENTS) {
        events[i].ev = *e;
        snprintf(events[i].name, sizeof(events[i].name), "%s", name != NULL ? name : "");
        events[i].real_ns = real_ns();
        atomic_store_explicit(&events[i].ready, 1, memory_order_release);
    }
}

typedef struct sample {
    uint64_t real_ns;
    fg_cluster_stats s;
} sample;

static sample samples[MAX_SAMPLES];

/* The first sample taken at or after real time t (the last one if none). */
static const sample *sample_after(int n, uint64_t t) {
    for (int i = 0; i < n; i++) {
        if (samples[i].real_ns >= t) {
            return &samples[i];
        }
    }
    return &samples[n - 1];
}

static int cmd_outage(const args *a) {
    fg_cluster_options o = opts_of(a), got;
    worker ws[MAX_THREADS];
    int n_samples = 0;
    const int closed = o.fallback == FG_CLUSTER_FALLBACK_CLOSED;

    if (a->start_at == 0 || a->duration_ms == 0 || a->fallback == NULL) {
        usage("outage needs --start_at, --duration_ms and --fallback");
    }
    o.on_event = on_event;
    sleep_until_real(a->start_at);
    fg_cluster_limiter *cl = make(&o, NULL);
    fg_cluster_limiter_get(cl, &got);
    const uint64_t end = a->start_at + a->duration_ms * MS;
    const uint64_t slow_ns = got.timeout_ns + a->margin_ms * MS;
    start_workers(ws, a->threads, cl, end, a->pace_us * 1000, slow_ns, got.timeout_ns);
    /* Sample the counters every 10 ms meanwhile (bounded by MAX_SAMPLES). */
    while (n_samples < MAX_SAMPLES) {
        samples[n_samples].real_ns = real_ns();
        fg_cluster_limiter_stats(cl, &samples[n_samples].s);
        n_samples++;
        if (real_ns() >= end) {
            break;
        }
        sleep_ns(10 * MS);
    }
    run_totals t = join_workers(ws, a->threads);
    fg_cluster_stats s = stable_stats(cl);
    samples[n_samples < MAX_SAMPLES ? n_samples : MAX_SAMPLES - 1] = (sample){real_ns(), s};
    n_samples = n_samples < MAX_SAMPLES ? n_samples + 1 : MAX_SAMPLES;
    uint64_t f0 = mono_ns();
    fg_cluster_limiter_free(cl); /* joins the background thread: events are final */
    uint64_t free_ns = mono_ns() - f0;

    int ne = atomic_load(&n_events);
    CHECK(ne <= MAX_EVENTS, "%d mode changes, more than the %d recorded", ne, MAX_EVENTS);
    ne = ne < MAX_EVENTS ? ne : MAX_EVENTS;
    uint64_t to_fb = 0, to_cl = 0, fb_time = 0, fb_since = 0, last_rec_real = 0;
    uint64_t fb_budget = 0, episodes = 0;
    const uint64_t rate_l = o.rate / got.instances > 0 ? o.rate / got.instances : 1;
    const uint64_t burst_l = o.burst / got.instances > 0 ? o.burst / got.instances : 1;
    const uint64_t period = got.period_ns != 0 ? got.period_ns : SEC;
    for (int i = 0; i < ne; i++) {
        const ev_rec *r = &events[i];
        CHECK(atomic_load_explicit(&r->ready, memory_order_acquire) == 1,
              "event %d announced but not written", i);
        printf("event name=%s i=%d from=%s to=%s real_ns=%" PRIu64 " at_ns=%" PRIu64
               " reason=\"%s\"\n",
               a->name, i, mode_str(r->ev.from), mode_str(r->ev.to), r->real_ns, r->ev.at_ns,
               r->ev.reason);
        CHECK(strcmp(r->name, a->name) == 0, "event %d: listener name: want %s, got %s", i,
              a->name, r->name);
        CHECK(r->ev.from != r->ev.to, "event %d: from %s to %s", i, mode_str(r->ev.from),
              mode_str(r->ev.to));
        /* Alternating, starting with the switch to fallback. */
        fg_cluster_mode want_to =
            i % 2 == 0 ? FG_CLUSTER_MODE_FALLBACK : FG_CLUSTER_MODE_CLUSTER;
        CHECK(r->ev.to == want_to, "event %d: want a switch to %s, got one to %s", i,
              mode_str(want_to), mode_str(r->ev.to));
        if (i > 0) {
            CHECK(r->ev.at_ns >= events[i - 1].ev.at_ns,
                  "event %d: at_ns %" PRIu64 " before the previous event's %" PRIu64, i,
                  r->ev.at_ns, events[i - 1].ev.at_ns);
        }
        if (r->ev.to == FG_CLUSTER_MODE_FALLBACK) {
            to_fb++;
            CHECK(r->ev.reason[0] != '\0', "event %d (to fallback): empty reason", i);
            fb_since = r->ev.at_ns;
        } else {
            to_cl++;
            CHECK(r->ev.reason[0] == '\0',
                  "event %d (back to cluster): reason \"%s\", want \"\"", i, r->ev.reason);
            if (fb_since != 0 && r->ev.at_ns >= fb_since) {
                uint64_t d = r->ev.at_ns - fb_since;
                fb_time += d;
                episodes++;
                /* The local bucket: at most burst_l at the start of an episode,
                 * then rate_l per period (+1 for the rounding). A request
                 * that waited the timeout for the Redis lock while the switch
                 * was being detected is decided by the fallback too, before
                 * the event's time: up to one timeout's refill more. */
                fb_budget += burst_l +
                             (uint64_t)((double)rate_l * (double)(d + got.timeout_ns) /
                                        (double)period) +
                             2;
            }
            fb_since = 0;
            last_rec_real = r->real_ns;
        }
    }
    if (fb_since != 0) { /* still in fallback at the end (a failure checked below) */
        uint64_t d = mono_ns() - fb_since;
        fb_time += d;
        fb_budget += burst_l + (uint64_t)((double)rate_l * (double)d / (double)period) + 1;
    }

    printf("outage name=%s policy=%s tries=%" PRIu64 " admitted=%" PRIu64 " rejected=%" PRIu64
           " max_try_ns=%" PRIu64 " over_timeout=%" PRIu64 " slow=%" PRIu64
           " slow_bound_ns=%" PRIu64 " min_wait_ns=%" PRIu64 " max_wait_ns=%" PRIu64
           " zero_wait=%" PRIu64 " events=%d episodes=%" PRIu64 " fallback_time_ns=%" PRIu64
           " free_ns=%" PRIu64,
           a->name, closed ? "closed" : "local", t.tries, t.admitted, t.rejected, t.max_try_ns,
           t.over_timeout, t.slow, slow_ns, t.min_wait, t.max_wait, t.zero_wait, ne, episodes,
           fb_time, free_ns);
    print_stats(&s);
    printf("\n");
    fflush(stdout);

    CHECK(t.other == 0, "%" PRIu64 " tries returned neither 0 nor FG_ELIMITED (last: %s)",
          t.other, fg_err_name(t.other_rc));
    CHECK(t.max_try_ns <= slow_ns,
          "slowest try: want <= timeout %" PRIu64 " ms + margin %" PRIu64 " ms, got %.1f ms "
          "(%" PRIu64 " of %" PRIu64 " tries over)",
          got.timeout_ns / MS, a->margin_ms, (double)t.max_try_ns / 1e6, t.slow, t.tries);
    CHECK(s.fallbacks >= a->expect_outages,
          "stats.fallbacks: want >= %" PRIu64 ", got %" PRIu64, a->expect_outages,
          s.fallbacks);
    CHECK(s.recoveries >= a->expect_outages,
          "stats.recoveries: want >= %" PRIu64 ", got %" PRIu64, a->expect_outages,
          s.recoveries);
    CHECK(s.mode == FG_CLUSTER_MODE_CLUSTER && s.recoveries == s.fallbacks,
          "at the end: want cluster mode (recoveries == fallbacks), got %s with %" PRIu64
          " fallbacks, %" PRIu64 " recoveries",
          mode_str(s.mode), s.fallbacks, s.recoveries);
    CHECK(to_fb == s.fallbacks && to_cl == s.recoveries,
          "listener saw %" PRIu64 " switches to fallback and %" PRIu64
          " back, stats count %" PRIu64 " and %" PRIu64,
          to_fb, to_cl, s.fallbacks, s.recoveries);
    CHECK(s.errors >= s.fallbacks, "errors %" PRIu64 " < fallbacks %" PRIu64, s.errors,
          s.fallbacks);
    CHECK(s.admitted + s.fallback_admitted == t.admitted,
          "stats.admitted + fallback_admitted: want %" PRIu64 ", got %" PRIu64, t.admitted,
          s.admitted + s.fallback_admitted);
    CHECK(s.rejected + s.fallback_rejected == t.rejected,
          "stats.rejected + fallback_rejected: want %" PRIu64 ", got %" PRIu64, t.rejected,
          s.rejected + s.fallback_rejected);
    CHECK(t.zero_wait == 0, "%" PRIu64 " rejections with retry-after 0", t.zero_wait);
    /* Every token received was spent, given back or is held; a refund whose
     * call failed is lost (Redis may or may not have applied it). */
    CHECK(s.leased >= s.admitted + s.refunded + s.held,
          "leased %" PRIu64 " < admitted %" PRIu64 " + refunded %" PRIu64 " + held %" PRIu64,
          s.leased, s.admitted, s.refunded, s.held);
    if (closed) {
        CHECK(s.fallback_admitted == 0, "closed: fallback_admitted want 0, got %" PRIu64,
              s.fallback_admitted);
        CHECK(s.fallback_rejected > 0, "closed: fallback_rejected want > 0, got 0");
        CHECK(t.max_wait <= got.backoff_max_ns + got.timeout_ns,
              "closed: longest retry-after %" PRIu64 " ms, want <= backoff_max %" PRIu64
              " ms + timeout",
              t.max_wait / MS, got.backoff_max_ns / MS);
    } else {
        CHECK(s.fallback_admitted > 0, "local: fallback_admitted want > 0, got 0");
        CHECK(s.fallback_admitted <= fb_budget,
              "local: fallback_admitted %" PRIu64 " > %" PRIu64
              " (burst/instances per episode + rate/instances x %.3f s in fallback)",
              s.fallback_admitted, fb_budget, (double)fb_time / 1e9);
        double want = 0.7 * (double)rate_l * (double)fb_time / (double)period;
        CHECK((double)s.fallback_admitted >= want,
              "local: fallback_admitted %" PRIu64 " < 70%% of rate/instances x time in "
              "fallback (%.0f)",
              s.fallback_admitted, want);
    }
    if (last_rec_real != 0 && n_samples > 0) {
        const sample *at = sample_after(n_samples, last_rec_real);
        CHECK(s.admitted > at->s.admitted,
              "after the last recovery no admission from leases (admitted %" PRIu64
              " then, %" PRIu64 " at the end)",
              at->s.admitted, s.admitted);
        CHECK(s.leased > at->s.leased,
              "after the last recovery no lease taken (leased %" PRIu64 " then, %" PRIu64
              " at the end)",
              at->s.leased, s.leased);
        printf("outage-after name=%s admitted_after_recovery=%" PRIu64 "\n", a->name,
               s.admitted - at->s.admitted);
    }
    /* Requests kept flowing: each fallback episode saw fallback decisions. */
    for (int i = 0; i + 1 < ne; i += 2) {
        const sample *b = sample_after(n_samples, events[i].real_ns);
        const sample *e = sample_after(n_samples, events[i + 1].real_ns);
        uint64_t decided = (e->s.fallback_admitted + e->s.fallback_rejected) -
                           (b->s.fallback_admitted + b->s.fallback_rejected);
        uint64_t admitted = e->s.fallback_admitted - b->s.fallback_admitted;
        printf("episode name=%s i=%d ms=%.1f fallback_decisions=%" PRIu64
               " fallback_admitted=%" PRIu64 "\n",
               a->name, i / 2, (double)(events[i + 1].ev.at_ns - events[i].ev.at_ns) / 1e6,
               decided, admitted);
        if (events[i + 1].ev.at_ns - events[i].ev.at_ns >= 100 * MS) {
            CHECK(decided > 0, "fallback episode %d: no request decided during it", i / 2);
        }
    }
    fflush(stdout);
    return failures == 0 ? 0 : 1;
}

/* ---- refund and expiry
 * ---------------------------------------------------------------------- */

/* Admit until the first rejection (at most `cap` tries); the count admitted. */
static uint64_t drain(fg_cluster_limiter *cl, uint64_t cap, uint64_t *wait) {
    uint64_t n = 0;
    for (uint64_t i = 0; i < cap; i++) {
        int rc = fg_cluster_limiter_try(cl, mono_ns(), 1, wait);
        if (rc != 0) {
            CHECK(rc == FG_ELIMITED, "try: want 0 or FG_ELIMITED, got %s", fg_err_name(rc));
            break;
        }
        n++;
    }
    return n;
}

/* drain for one key of a per-key limiter. */
static uint64_t drain_key(fg_cluster_limiter *cl, const char *k, uint64_t cap) {
    uint64_t n = 0;
    for (uint64_t i = 0; i < cap; i++) {
        int rc = fg_cluster_limiter_try_key(cl, k, strlen(k), mono_ns(), 1, NULL);
        if (rc != 0) {
            CHECK(rc == FG_ELIMITED, "try_key(%s): want 0 or FG_ELIMITED, got %s", k,
                  fg_err_name(rc));
            break;
        }
        n++;
    }
    return n;
}

/*
 * Rate 1 a minute: nothing refills while these run, so every count is exact.
 * burst 10, A's lease 5.
 */
static int cmd_refund(const args *a) {
    char key[FG_CLUSTER_NAME_MAX];
    uint64_t wait = 0, n;
    fg_cluster_options o = FG_CLUSTER_OPTIONS_INIT;
    o.redis = a->redis;
    o.prefix = a->prefix;
    o.rate = 1;
    o.period_ns = 60 * SEC;
    o.burst = 10;
    o.timeout_ns = 250 * MS;
    o.name = key;
    const uint64_t ttl = (a->lease_ttl_ms != 0 ? a->lease_ttl_ms : 200) * MS;

    /* 1. free gives the unspent lease back: A takes 5, spends 1, frees; the
     * bucket holds 9 again. B (lease 1) must admit exactly 9. */
    snprintf(key, sizeof(key), "%s-free", a->name);
    o.lease = 5;
    fg_cluster_limiter *A = make(&o, NULL);
    CHECK(fg_cluster_limiter_try(A, mono_ns(), 1, NULL) == 0, "free: A's first try rejected");
    fg_cluster_stats sa = stable_stats(A);
    CHECK(sa.leased == 5 && sa.held == 4 && sa.admitted == 1,
          "free: A after one try: want leased 5 held 4 admitted 1, got leased %" PRIu64
          " held %" PRIu64 " admitted %" PRIu64,
          sa.leased, sa.held, sa.admitted);
    fg_cluster_limiter_free(A);
    o.lease = 1;
    fg_cluster_limiter *B = make(&o, NULL);
    n = drain(B, 20, &wait);
    printf("refund-free admitted_by_B=%" PRIu64 " want=9 retry_after_ms=%.1f\n", n,
           (double)wait / 1e6);
    CHECK(n == 9,
          "free: B (lease 1) after A freed its lease: want 9 admitted, got %" PRIu64 "%s", n,
          n == 5 ? " (A's 4 unspent tokens were not given back)" : "");
    fg_cluster_limiter_free(B);

    /* 2. The same with B's lease 5: the bucket holds 9, and a request is
     * rejected only when the bucket is empty (cluster.h, stats.rejected), so
     * B's leases must be cut to what is left: 5 + 4. */
    snprintf(key, sizeof(key), "%s-partial", a->name);
    o.lease = 5;
    A = make(&o, NULL);
    CHECK(fg_cluster_limiter_try(A, mono_ns(), 1, NULL) == 0,
          "partial: A's first try rejected");
    fg_cluster_limiter_free(A);
    B = make(&o, NULL);
    n = drain(B, 20, &wait);
    fg_cluster_stats sb = stable_stats(B);
    printf("refund-partial admitted_by_B=%" PRIu64 " want=9 leased=%" PRIu64 "\n", n,
           sb.leased);
    CHECK(n == 9,
          "partial: B (lease 5) with 9 tokens in the bucket: want 9 admitted, got %" PRIu64
          "%s",
          n,
          n == 5 ? " (a lease of 5 is refused while the bucket holds 4: requests rejected "
                   "though the bucket is not empty)"
                 : "");
    fg_cluster_limiter_free(B);

    /* 3. Lease expiry: A (lease 5, ttl) spends 1 and stays alive, idle; B
     * (lease 1) empties the bucket (5); after the ttl A's 4 go back, and a
     * new instance C takes exactly those 4. */
    snprintf(key, sizeof(key), "%s-ttl", a->name);
    o.lease = 5;
    o.lease_ttl_ns = ttl;
    A = make(&o, NULL);
    uint64_t leased_at = mono_ns();
    CHECK(fg_cluster_limiter_try(A, leased_at, 1, NULL) == 0, "ttl: A's first try rejected");
    o.lease = 1;
    o.lease_ttl_ns = 0;
    B = make(&o, NULL);
    n = drain(B, 20, &wait);
    CHECK(n == 5, "ttl: B (lease 1) while A holds 4: want 5 admitted, got %" PRIu64, n);
    /* Poll A until its 4 are refunded (bounded: ttl + 2 s). */
    uint64_t refunded_after = 0;
    for (;;) {
        fg_cluster_stats s;
        fg_cluster_limiter_stats(A, &s);
        if (s.refunded >= 4 && s.held == 0) {
            refunded_after = mono_ns() - leased_at;
            break;
        }
        if (mono_ns() - leased_at > ttl + 2 * SEC) {
            CHECK(0,
                  "ttl: A (idle, lease_ttl %" PRIu64 " ms) still holds %" PRIu64
                  " (refunded %" PRIu64 ") after %" PRIu64 " ms",
                  ttl / MS, s.held, s.refunded, (mono_ns() - leased_at) / MS);
            break;
        }
        sleep_ns(5 * MS);
    }
    printf("refund-ttl lease_ttl_ms=%" PRIu64 " refunded_after_ms=%.1f\n", ttl / MS,
           (double)refunded_after / 1e6);
    if (refunded_after != 0) {
        CHECK(refunded_after >= ttl,
              "ttl: A's lease given back after %.1f ms, before its ttl %" PRIu64 " ms",
              (double)refunded_after / 1e6, ttl / MS);
        CHECK(refunded_after <= ttl + a->margin_ms * MS,
              "ttl: A's lease given back after %.1f ms, want <= ttl %" PRIu64 " ms + %" PRIu64
              " ms",
              (double)refunded_after / 1e6, ttl / MS, a->margin_ms);
    }
    fg_cluster_limiter *C = make(&o, NULL);
    n = drain(C, 20, &wait);
    printf("refund-ttl admitted_by_C=%" PRIu64 " want=4\n", n);
    CHECK(n == 4, "ttl: C after A's lease expired: want 4 admitted, got %" PRIu64, n);
    /* A has nothing left and the bucket is empty: rejected. */
    int rc = fg_cluster_limiter_try(A, mono_ns(), 1, &wait);
    CHECK(rc == FG_ELIMITED,
          "ttl: A after its lease expired, bucket empty: want "
          "FG_ELIMITED, got %s",
          fg_err_name(rc));
    sa = stable_stats(A);
    CHECK(sa.admitted == 1 && sa.refunded == 4 && sa.leased == 5,
          "ttl: A's counters: want admitted 1 leased 5 refunded 4, got %" PRIu64 " %" PRIu64
          " %" PRIu64,
          sa.admitted, sa.leased, sa.refunded);
    fg_cluster_limiter_free(C);
    fg_cluster_limiter_free(B);
    fg_cluster_limiter_free(A);

    /* 4. Per key: one bucket per key, shared by name across instances; free
     * gives back every key's lease, and an idle key's lease expires. */
    snprintf(key, sizeof(key), "%s-keyed", a->name);
    o.max_keys = 16;
    o.lease = 5;
    o.lease_ttl_ns = 0;
    fg_cluster_limiter *X = make(&o, NULL);
    CHECK(fg_cluster_limiter_try_key(X, "t1", 2, mono_ns(), 1, NULL) == 0,
          "keyed: X's first try on t1 rejected");
    CHECK(fg_cluster_limiter_try_key(X, "t3", 2, mono_ns(), 1, NULL) == 0,
          "keyed: X's first try on t3 rejected");
    o.lease = 1;
    fg_cluster_limiter *Y = make(&o, NULL);
    uint64_t t2 = drain_key(Y, "t2", 20), t1 = drain_key(Y, "t1", 20);
    CHECK(t2 == 10, "keyed: Y on t2 (a bucket of its own): want 10 admitted, got %" PRIu64,
          t2);
    CHECK(t1 == 5, "keyed: Y on t1 while X holds 4 of it: want 5 admitted, got %" PRIu64, t1);
    fg_cluster_limiter_free(X);
    fg_cluster_limiter *Z = make(&o, NULL);
    uint64_t z1 = drain_key(Z, "t1", 20), z3 = drain_key(Z, "t3", 20);
    printf("refund-keyed t2=%" PRIu64 " t1=%" PRIu64 " after_free_t1=%" PRIu64
           " after_free_t3=%" PRIu64 "\n",
           t2, t1, z1, z3);
    CHECK(z1 == 4, "keyed: Z on t1 after X freed: want 4 admitted, got %" PRIu64, z1);
    CHECK(z3 == 9, "keyed: Z on t3 after X freed: want 9 admitted, got %" PRIu64, z3);
    fg_cluster_limiter_free(Z);
    fg_cluster_limiter_free(Y);

    o.lease = 5;
    o.lease_ttl_ns = ttl;
    fg_cluster_limiter *W = make(&o, NULL);
    leased_at = mono_ns();
    CHECK(fg_cluster_limiter_try_key(W, "t4", 2, leased_at, 1, NULL) == 0,
          "keyed: W's first try on t4 rejected");
    refunded_after = 0;
    for (;;) {
        fg_cluster_stats s;
        fg_cluster_limiter_stats(W, &s);
        if (s.refunded >= 4 && s.held == 0) {
            refunded_after = mono_ns() - leased_at;
            break;
        }
        if (mono_ns() - leased_at > ttl + 2 * SEC) {
            CHECK(0,
                  "keyed: W (idle on t4, lease_ttl %" PRIu64 " ms) still holds %" PRIu64
                  " after %" PRIu64 " ms",
                  ttl / MS, s.held, (mono_ns() - leased_at) / MS);
            break;
        }
        sleep_ns(5 * MS);
    }
    o.lease = 1;
    o.lease_ttl_ns = 0;
    fg_cluster_limiter *V = make(&o, NULL);
    uint64_t v4 = drain_key(V, "t4", 20);
    printf("refund-keyed-ttl refunded_after_ms=%.1f after_expiry_t4=%" PRIu64 "\n",
           (double)refunded_after / 1e6, v4);
    if (refunded_after != 0) {
        /* The sweep covers the table about twice per lease lifetime. */
        CHECK(refunded_after <= ttl + ttl / 2 + a->margin_ms * MS,
              "keyed: W's lease on t4 given back after %.1f ms, want <= 1.5 x ttl + %" PRIu64
              " ms",
              (double)refunded_after / 1e6, a->margin_ms);
    }
    CHECK(v4 == 9, "keyed: V on t4 after W's lease expired: want 9 admitted, got %" PRIu64,
          v4);
    fg_cluster_limiter_free(V);
    fg_cluster_limiter_free(W);
    fflush(stdout);
    return failures == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    args a;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        usage("no command");
    }
    mode_name = argv[1];
    if (strcmp(argv[1], "available") == 0) {
        printf("%d\n", fg_cluster_available());
        return 0;
    }
    parse_args(argc, argv, &a);
    if (strcmp(argv[1], "load") == 0) {
        return cmd_load(&a);
    }
    if (strcmp(argv[1], "outage") == 0) {
        return cmd_outage(&a);
    }
    if (strcmp(argv[1], "refund") == 0) {
        return cmd_refund(&a);
    }
    usage("unknown command");
    return 2;
}
