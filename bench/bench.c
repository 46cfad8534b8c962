/*
 * bench/bench.c - the benchmark harness (`make bench`).
 *
 * Prints one line per figure:
 *     bench=<name> threads=<n> ns_per_op=<x> [key=value ...]
 * ns_per_op is the median over REPS repetitions of wall time divided by the
 * operations of all threads together, so perfect scaling on 2 threads halves
 * it. The floors (one uncontended CAS, one monotonic clock read) are
 * measured in the same run and every other figure is also given as a ratio
 * to them, because only ratios compare across machines and noisy neighbours.
 * allocs_per_op counts heap allocations during the timed loop through the
 * allocator hook; the budget is 0.
 *
 * Targets (the design's performance budget; docs/building.md) are printed
 * as `target=<t> met=yes|no` on the figures they apply to; they are never a
 * reason for a non-zero exit, which is kept for figures that went wrong
 * (a failed request, a rejected try):
 *     limiter_try_ctxclock threads=1   ns_per_op <= 2.5 x floor_cas
 *     keyed_try_1e5 (both lines)       ns_per_op <= 100
 *     keyed_bytes_per_key              bytes <= 96 per key, 1e5 keys
 *     breaker_closed threads=1         ns_per_op <= 3 x floor_cas
 * The single-bucket and closed-breaker targets are uncontended costs, so
 * they are judged on threads=1 only; the threads=2 lines are two threads on
 * one shared object and report what contention costs.
 *
 * Usage: bench [--quick] [--filter SUBSTRING]
 * Figure names are a stable interface: scripts compare them across versions.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ck_pr.h>
#include <floodgate.h>

#define REPS        5
#define MAX_THREADS 2

static uint64_t ops_per_thread = 2000000;
static const char *filter;
static double floor_cas_ns, floor_clock_ns;

/* ---- allocation counting ------------------------------------------------- */

static uint64_t alloc_count;

static void *counting_malloc(size_t size) {
    ck_pr_inc_64(&alloc_count);
    return malloc(size);
}

/* ---- timing -------------------------------------------------------------- */

static uint64_t now_ns(void) { return fg_clock_monotonic_now(NULL); }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return v[n / 2];
}

static volatile uint64_t sink;

/* ---- floors -------------------------------------------------------------- */

static double run_floor_cas(uint64_t n) {
    uint64_t word = 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++)
        ck_pr_cas_64(&word, i, i + 1);
    uint64_t t1 = now_ns();
    sink = word;
    return (double)(t1 - t0) / (double)n;
}

static fg_clock fast_clock; /* fg_clock_fast's pick */
static int fast_is_tsc;

static double run_floor_clock_fast(uint64_t n) {
    uint64_t acc = 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++)
        acc += fg_clock_read(&fast_clock);
    uint64_t t1 = now_ns();
    sink = acc;
    return (double)(t1 - t0) / (double)n;
}

static double run_floor_clock(uint64_t n) {
    uint64_t acc = 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++)
        acc += fg_clock_monotonic_now(NULL);
    uint64_t t1 = now_ns();
    sink = acc;
    return (double)(t1 - t0) / (double)n;
}

/* ---- the threaded runner ------------------------------------------------- */

/* A figure's timed loop: `ops` operations as thread `index` on arg; returns
 * how many of them did not succeed (each is counted, checked after timing). */
typedef uint64_t (*op_loop)(void *arg, int index, uint64_t ops);

struct worker {
    op_loop loop;
    void *arg;
    int index;
    uint64_t ops;
    pthread_barrier_t *start;
    uint64_t failures;
    uint64_t t0, t1; /* when this thread began and ended its loop */
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    pthread_barrier_wait(w->start);
    w->t0 = now_ns();
    w->failures = w->loop(w->arg, w->index, w->ops);
    w->t1 = now_ns();
    return NULL;
}

/* One repetition: wall time of nthreads workers (thread i runs loop on
 * args[i]) / all their operations; negative when an operation failed (the
 * figure would be meaningless). The wall time runs from the first worker's
 * start to the last one's end, read by the workers themselves: on 2 cores
 * the main thread, a third one, may be scheduled only after they are done. */
static double run_once(const char *name, op_loop loop, void *const *args, int nthreads,
                       uint64_t *allocs) {
    pthread_t tid[MAX_THREADS];
    struct worker w[MAX_THREADS];
    pthread_barrier_t start;
    if (pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1) != 0)
        abort();
    for (int i = 0; i < nthreads; i++) {
        w[i] = (struct worker){loop, args[i], i, ops_per_thread, &start, 0, 0, 0};
        /* The barrier waits for every thread: without one, nothing can go on. */
        if (pthread_create(&tid[i], NULL, worker_main, &w[i]) != 0) {
            (void)fprintf(stderr, "bench: %s: cannot create a thread\n", name);
            abort();
        }
    }
    uint64_t a0 = ck_pr_load_64(&alloc_count);
    pthread_barrier_wait(&start);
    for (int i = 0; i < nthreads; i++)
        pthread_join(tid[i], NULL);
    *allocs += ck_pr_load_64(&alloc_count) - a0;
    pthread_barrier_destroy(&start);
    uint64_t t0 = w[0].t0, t1 = w[0].t1;
    for (int i = 0; i < nthreads; i++) {
        t0 = w[i].t0 < t0 ? w[i].t0 : t0;
        t1 = w[i].t1 > t1 ? w[i].t1 : t1;
        if (w[i].failures) {
            (void)fprintf(stderr, "bench: %s: %llu operations failed\n", name,
                          (unsigned long long)w[i].failures);
            return -1.0;
        }
    }
    return (double)(t1 - t0) / (double)(ops_per_thread * (uint64_t)nthreads);
}

/* REPS repetitions: the median ns per operation and the allocations per
 * operation over all of them. Returns 0, or -1 when an operation failed. */
static int measure(const char *name, op_loop loop, void *const *args, int nthreads, double *ns,
                   double *allocs_per_op) {
    double v[REPS];
    uint64_t allocs = 0;
    for (int r = 0; r < REPS; r++) {
        v[r] = run_once(name, loop, args, nthreads, &allocs);
        if (v[r] < 0)
            return -1;
    }
    *ns = median(v, REPS);
    *allocs_per_op = (double)allocs / (double)(REPS * ops_per_thread * (uint64_t)nthreads);
    return 0;
}

static int selected(const char *name) {
    return filter == NULL || strstr(name, filter) != NULL;
}

static void report(const char *name, int threads, double ns, const char *extra) {
    printf("bench=%s threads=%d ns_per_op=%.2f%s%s\n", name, threads, ns, extra ? " " : "",
           extra ? extra : "");
    (void)fflush(stdout);
}

static const char *yes_no(int met) { return met ? "yes" : "no"; }

/* ---- chains -------------------------------------------------------------- */

static int noop_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)state;
    (void)ctx;
    *slot = 1;
    return 0;
}

static int noop_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    (void)state;
    (void)ctx;
    (void)outcome;
    (void)slot;
    return 0;
}

static const fg_stage_ops noop_ops = {"noop", noop_enter, noop_exit, NULL};

static int ok_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

static fg_chain *make_chain(int nstages) {
    fg_chain *chain;
    if (fg_chain_new(NULL, &chain) != 0)
        abort();
    for (int i = 0; i < nstages; i++) {
        fg_stage *stage;
        char name[16];
        (void)snprintf(name, sizeof(name), "noop%d", i);
        if (fg_stage_new(&noop_ops, NULL, name, &stage) != 0 ||
            fg_chain_use(chain, stage) != 0)
            abort();
    }
    return chain;
}

static uint64_t loop_chain_call(void *arg, int index, uint64_t ops) {
    const fg_chain *chain = arg;
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/bench");
        failures += fg_chain_call(chain, &ctx, ok_handler, NULL) != 0;
    }
    return failures;
}

static uint64_t loop_chain_split(void *arg, int index, uint64_t ops) {
    const fg_chain *chain = arg;
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/bench");
        failures += fg_chain_enter(chain, &ctx) != 0;
        failures += fg_chain_exit(chain, &ctx, 0) != 0;
    }
    return failures;
}

/* Returns 0, or -1 when a request failed. */
static int bench_chain(const char *name, int nstages, op_loop loop) {
    if (!selected(name))
        return 0;
    fg_chain *chain = make_chain(nstages);
    void *args[MAX_THREADS] = {chain, chain};
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double ns, allocs;
        rc = measure(name, loop, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        char extra[160];
        (void)snprintf(extra, sizeof(extra),
                       "ratio_cas=%.2f ratio_clock_cas=%.2f allocs_per_op=%.4f",
                       ns / floor_cas_ns, ns / (floor_clock_ns + floor_cas_ns), allocs);
        report(name, threads, ns, extra);
    }
    fg_chain_free(chain);
    return rc;
}

/* ---- one bucket ---------------------------------------------------------- */

/* Budget: a try with the clock supplied by the ctx costs <= 2.5 CAS. */
#define TARGET_CTXCLOCK_RATIO_CAS 2.5

/* A bucket on which every try of a run is an admission, so each one does
 * its CAS: a token per ns (1e9 per second) and the largest burst, i.e. 2^40
 * ns (18 minutes) of tokens, far more than a run takes. */
static fg_limiter *make_limiter(fg_clock clock) {
    fg_limiter_options o = FG_LIMITER_OPTIONS_INIT;
    o.clock = clock;
    o.rate = 1000000000;
    o.burst = FG_LIMITER_MAX_TOKENS;
    fg_limiter *l;
    if (fg_limiter_new(&o, &l) != 0)
        abort();
    return l;
}

/* The clock as a ctx supplies it: read once, outside the operation; here it
 * advances 1 ns per request, at no cost, so the try sees time move. */
static uint64_t loop_try_ctxclock(void *arg, int index, uint64_t ops) {
    fg_limiter *l = arg;
    uint64_t now = now_ns(), failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        uint64_t wait;
        failures += fg_limiter_try(l, now + i, 1, &wait) != 0;
    }
    return failures;
}

static uint64_t loop_try_ownclock(void *arg, int index, uint64_t ops) {
    fg_limiter *l = arg;
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        uint64_t wait;
        failures += fg_limiter_try_now(l, 1, &wait) != 0;
    }
    return failures;
}

/* OWNCLOCK reads fg_clock_fast's clock (the TSC where the CPU has an
 * invariant one, see docs/adr/0003-fast-clock.md), MONOCLOCK the default
 * CLOCK_MONOTONIC: the same try, two clock sources. */
enum bucket_figure { CTXCLOCK, OWNCLOCK, MONOCLOCK, TWO_BUCKETS };

/* Returns 0, or -1 when a try was not admitted. */
static int bench_limiter(const char *name, enum bucket_figure fig) {
    if (!selected(name))
        return 0;
    fg_clock clock = fig == OWNCLOCK ? fast_clock : fg_clock_monotonic();
    fg_limiter *l[MAX_THREADS] = {make_limiter(clock), NULL};
    /* Shared: every thread tries the one bucket; else one bucket each. */
    l[1] = fig == TWO_BUCKETS ? make_limiter(clock) : l[0];
    void *args[MAX_THREADS] = {l[0], l[1]};
    op_loop loop =
        (fig == OWNCLOCK || fig == MONOCLOCK) ? loop_try_ownclock : loop_try_ctxclock;
    int rc = 0;
    for (int threads = fig == TWO_BUCKETS ? 2 : 1; threads <= MAX_THREADS; threads++) {
        double ns, allocs;
        rc = measure(name, loop, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        char extra[160];
        if (fig == OWNCLOCK || fig == MONOCLOCK) {
            (void)snprintf(extra, sizeof(extra),
                           "ratio_clock=%.2f allocs_per_op=%.4f clock=%s", ns / floor_clock_ns,
                           allocs, fig == OWNCLOCK && fast_is_tsc ? "tsc" : "monotonic");
        } else if (fig == CTXCLOCK && threads == 1) {
            double ratio = ns / floor_cas_ns;
            (void)snprintf(extra, sizeof(extra),
                           "ratio_cas=%.2f allocs_per_op=%.4f target=%.1fxfloor_cas met=%s",
                           ratio, allocs, TARGET_CTXCLOCK_RATIO_CAS,
                           yes_no(ratio <= TARGET_CTXCLOCK_RATIO_CAS));
        } else {
            (void)snprintf(extra, sizeof(extra), "ratio_cas=%.2f allocs_per_op=%.4f",
                           ns / floor_cas_ns, allocs);
        }
        report(name, threads, ns, extra);
    }
    if (l[1] != l[0])
        fg_limiter_free(l[1]);
    fg_limiter_free(l[0]);
    return rc;
}

/* ---- one bucket per key -------------------------------------------------- */

/* Budgets: a keyed try among 1e5 live keys <= 100 ns; <= 96 bytes per key. */
#define TARGET_KEYED_NS      100.0
#define TARGET_BYTES_PER_KEY 96.0

#define KEY_SIZE  16                  /* "user-<n>" (<= 14 bytes), NUL, length */
#define ORDER_LEN (UINT32_C(1) << 20) /* pre-drawn key choices, a power of 2 */

/* Key i is at keys + i * KEY_SIZE, NUL-terminated, its length in the last
 * byte: one 16-byte cell, so fetching a key touches one cache line. */
struct keyed_job {
    fg_keyed_limiter *keyed;
    const char *keys;
    const uint32_t *order; /* ORDER_LEN key indices, drawn before timing */
};

/* A server's key comes from the request it has just parsed: hot in cache.
 * The table of 1e5 keys is not, so each thread prefetches the key it will
 * use PREFETCH_AHEAD requests later; only the limiter's misses are timed. */
#define PREFETCH_AHEAD 8
#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

static fg_keyed_limiter *make_keyed(uint32_t max_keys) {
    fg_keyed_limiter_options o = FG_KEYED_LIMITER_OPTIONS_INIT;
    o.bucket.rate = 1000000000;
    o.bucket.burst = FG_LIMITER_MAX_TOKENS;
    o.max_keys = max_keys;
    fg_keyed_limiter *k;
    if (fg_keyed_limiter_new(&o, &k) != 0)
        abort();
    return k;
}

static uint64_t xorshift64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* Each thread walks the pre-drawn choices from its own starting point; the
 * clock advances as in loop_try_ctxclock. */
static uint64_t loop_keyed_try(void *arg, int index, uint64_t ops) {
    const struct keyed_job *job = arg;
    uint64_t now = now_ns(), failures = 0;
    uint32_t at = (uint32_t)index * (ORDER_LEN / MAX_THREADS);
    for (uint64_t i = 0; i < ops; i++) {
        uint32_t pos = at + (uint32_t)i;
        PREFETCH(job->keys +
                 (size_t)job->order[(pos + PREFETCH_AHEAD) & (ORDER_LEN - 1)] * KEY_SIZE);
        const char *key = job->keys + (size_t)job->order[pos & (ORDER_LEN - 1)] * KEY_SIZE;
        uint64_t wait;
        failures += fg_keyed_limiter_try(job->keyed, key, (unsigned char)key[KEY_SIZE - 1],
                                         now + i, 1, UINT64_MAX, &wait) != 0;
    }
    return failures;
}

/*
 * keyed_try_<nkeys>: a table of max_keys = nkeys, warmed with the keys
 * "user-0" ... so that they are live, then tries on keys drawn at random
 * among the live ones. live_keys= says how many the warm-up left in the
 * table: every key the table took is drawn, and none it refused (a refused
 * key would be rejected and the figure would not be a lookup).
 * Returns 0, or -1 when a try was not admitted.
 */
static int bench_keyed(const char *name, uint32_t nkeys, int has_target) {
    if (!selected(name))
        return 0;
    char *keys = malloc((size_t)nkeys * KEY_SIZE);
    uint32_t *live = malloc((size_t)nkeys * sizeof(*live));
    uint32_t *order = malloc((size_t)ORDER_LEN * sizeof(*order));
    if (keys == NULL || live == NULL || order == NULL)
        abort();
    fg_keyed_limiter *keyed = make_keyed(nkeys);
    uint64_t now = now_ns();
    uint32_t nlive = 0;
    for (uint32_t i = 0; i < nkeys; i++) {
        char *key = keys + (size_t)i * KEY_SIZE;
        int len = snprintf(key, KEY_SIZE - 1, "user-%u", (unsigned)i);
        if (len < 0 || len >= KEY_SIZE - 1)
            abort();
        key[KEY_SIZE - 1] = (char)len;
        uint64_t wait;
        if (fg_keyed_limiter_try(keyed, key, (size_t)len, now, 1, UINT64_MAX, &wait) == 0)
            live[nlive++] = i;
    }
    if (nlive == 0)
        abort();
    uint64_t seed = UINT64_C(0x9e3779b97f4a7c15);
    for (uint32_t i = 0; i < ORDER_LEN; i++)
        order[i] = live[xorshift64(&seed) % nlive];
    fg_keyed_stats st;
    if (fg_keyed_limiter_stats(keyed, &st) != 0)
        abort();
    struct keyed_job job = {keyed, keys, order};
    void *args[MAX_THREADS] = {&job, &job};
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS; threads++) {
        double ns, allocs;
        rc = measure(name, loop_keyed_try, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        char extra[160];
        int n = snprintf(extra, sizeof(extra), "live_keys=%llu allocs_per_op=%.4f",
                         (unsigned long long)st.keys, allocs);
        if (has_target && n > 0 && (size_t)n < sizeof(extra))
            (void)snprintf(extra + n, sizeof(extra) - (size_t)n, " target=%.0fns met=%s",
                           TARGET_KEYED_NS, yes_no(ns <= TARGET_KEYED_NS));
        report(name, threads, ns, extra);
    }
    fg_keyed_limiter_free(keyed);
    free(order);
    free(live);
    free(keys);
    return rc;
}

/* The memory a table for nkeys keys holds, per key (default key_max). */
static void bench_keyed_bytes(const char *name, uint32_t nkeys) {
    if (!selected(name))
        return;
    fg_keyed_limiter *keyed = make_keyed(nkeys);
    fg_keyed_stats st;
    if (fg_keyed_limiter_stats(keyed, &st) != 0)
        abort();
    fg_keyed_limiter_free(keyed);
    double bytes = (double)st.bytes / (double)nkeys;
    char extra[160];
    (void)snprintf(extra, sizeof(extra), "bytes=%.1f max_keys=%u target=%.0fbytes met=%s",
                   bytes, (unsigned)nkeys, TARGET_BYTES_PER_KEY,
                   yes_no(bytes <= TARGET_BYTES_PER_KEY));
    report(name, 1, 0.0, extra);
}

/* ---- the circuit breaker ------------------------------------------------ */

/* Budget: enter + exit on a closed breaker, time supplied by the caller,
 * <= 3 CAS. */
#define TARGET_BREAKER_RATIO_CAS 3.0
#define BREAKER_LATENCY_NS       FG_NS_PER_US          /* every call takes 1 us */
#define BREAKER_OPEN_FOR_NS      (FG_NS_PER_S * 86400) /* a day: never half-open here */

/*
 * One breaker shared by every thread of a figure. The caller's clock, as a
 * ctx supplies it, is base_ns + i * step_ns for request i: no clock read in
 * the loop. base_ns moves past the last reading of each repetition, so the
 * breaker never sees time run backwards from one repetition to the next
 * (the TIME window's step makes its clock run faster than the real one).
 */
struct breaker_job {
    fg_breaker *breaker;
    uint64_t step_ns;
    uint64_t base_ns; /* only grows; ck_pr between the workers */
};

/* Raise *base to at least to. Both workers of a repetition store the same
 * value, but one may start after the other has finished and already moved
 * it, so the store is a CAS loop that only ever raises it. */
static void raise_base(uint64_t *base, uint64_t to) {
    uint64_t cur = ck_pr_load_64(base);
    while (cur < to && !ck_pr_cas_64(base, cur, to))
        cur = ck_pr_load_64(base);
}

/* enter, then exit as a success 1 us later: the closed path, all of it. */
static uint64_t loop_breaker_closed(void *arg, int index, uint64_t ops) {
    struct breaker_job *job = arg;
    fg_breaker *b = job->breaker;
    const uint64_t step = job->step_ns, base = ck_pr_load_64(&job->base_ns);
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        uint64_t t = base + i * step, permit;
        if (fg_breaker_enter(b, t, &permit, NULL) != 0) {
            failures++;
            continue;
        }
        /* 0: counted; 1 (discarded) would mean the state moved, a failure here. */
        failures += fg_breaker_exit(b, permit, t + BREAKER_LATENCY_NS, FG_BREAKER_SUCCESS,
                                    BREAKER_LATENCY_NS) != 0;
    }
    raise_base(&job->base_ns, base + ops * step + BREAKER_LATENCY_NS);
    return failures;
}

/* enter on an open breaker: every one must be rejected. */
static uint64_t loop_breaker_open(void *arg, int index, uint64_t ops) {
    struct breaker_job *job = arg;
    fg_breaker *b = job->breaker;
    const uint64_t step = job->step_ns, base = ck_pr_load_64(&job->base_ns);
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        uint64_t permit, retry_after;
        failures += fg_breaker_enter(b, base + i * step, &permit, &retry_after) != FG_EBREAKER;
    }
    raise_base(&job->base_ns, base + ops * step);
    return failures;
}

/* CLOSED: default options (a COUNT window of 100 calls). CLOSED_TIME: a
 * TIME window of 10 s in 10 buckets, its clock moving 1 us per request so
 * that a run of 2e6 requests crosses two bucket boundaries. OPEN: default
 * options, open for a day, tripped by real failures before timing. */
enum breaker_figure { BREAKER_CLOSED, BREAKER_CLOSED_TIME, BREAKER_OPEN };

/* Trip b by reporting failures until the state machine opens it (the
 * default window needs min_requests = 100 of them). */
static void trip_breaker(fg_breaker *b, uint64_t now) {
    for (int i = 0; i < 1000 && fg_breaker_state(b) == FG_BREAKER_CLOSED; i++) {
        uint64_t permit;
        if (fg_breaker_enter(b, now, &permit, NULL) != 0 ||
            fg_breaker_exit(b, permit, now, FG_BREAKER_FAILURE, BREAKER_LATENCY_NS) < 0)
            break;
    }
    fg_breaker_stats st;
    if (fg_breaker_snapshot(b, now, &st) != 0 || st.state != FG_BREAKER_OPEN ||
        st.mode != FG_BREAKER_AUTO) {
        (void)fprintf(stderr, "bench: the breaker did not trip\n");
        abort();
    }
}

/* Returns 0, or -1 when a closed-breaker call was not admitted and counted
 * or an open-breaker call was not rejected. */
static int bench_breaker(const char *name, enum breaker_figure fig) {
    if (!selected(name))
        return 0;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    if (fig == BREAKER_CLOSED_TIME) {
        o.window = FG_BREAKER_WINDOW_TIME;
        o.window_ns = 10 * FG_NS_PER_S;
        o.window_buckets = 10;
    } else if (fig == BREAKER_OPEN) {
        o.open_for_ns = BREAKER_OPEN_FOR_NS;
    }
    struct breaker_job job = {NULL, fig == BREAKER_CLOSED_TIME ? FG_NS_PER_US : 1, now_ns()};
    if (fg_breaker_new(&o, &job.breaker) != 0)
        abort();
    if (fig == BREAKER_OPEN)
        trip_breaker(job.breaker, job.base_ns);
    void *args[MAX_THREADS] = {&job, &job};
    op_loop loop = fig == BREAKER_OPEN ? loop_breaker_open : loop_breaker_closed;
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS; threads++) {
        double ns, allocs;
        rc = measure(name, loop, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        double ratio = ns / floor_cas_ns;
        char extra[160];
        if (fig == BREAKER_CLOSED && threads == 1)
            (void)snprintf(extra, sizeof(extra),
                           "ratio_cas=%.2f allocs_per_op=%.4f target=%.0fxfloor_cas met=%s",
                           ratio, allocs, TARGET_BREAKER_RATIO_CAS,
                           yes_no(ratio <= TARGET_BREAKER_RATIO_CAS));
        else
            (void)snprintf(extra, sizeof(extra), "ratio_cas=%.2f allocs_per_op=%.4f", ratio,
                           allocs);
        report(name, threads, ns, extra);
    }
    fg_breaker_free(job.breaker);
    return rc;
}

/* ---- trace context ------------------------------------------------------- */

/* Budget: parse and validate a traceparent and make this hop's span id. */
#define TARGET_TRACE_PARSE_NS 40.0

static const char bench_traceparent[] =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

static uint64_t loop_trace_parse_child(void *arg, int index, uint64_t ops) {
    (void)arg;
    (void)index;
    uint64_t failures = 0, acc = 0;
    for (uint64_t i = 0; i < ops; i++) {
        fg_traceparent tp;
        uint8_t span[8];
        failures +=
            fg_traceparent_parse(bench_traceparent, sizeof(bench_traceparent) - 1, &tp) != 0;
        fg_span_id_new(span);
        acc += span[0] + tp.flags;
    }
    sink = acc;
    return failures;
}

static int bench_trace(const char *name) {
    if (!selected(name))
        return 0;
    void *args[MAX_THREADS] = {NULL, NULL};
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS; threads++) {
        double ns, allocs;
        rc = measure(name, loop_trace_parse_child, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        char extra[160];
        if (threads == 1)
            (void)snprintf(extra, sizeof(extra), "allocs_per_op=%.4f target=%.0fns met=%s",
                           allocs, TARGET_TRACE_PARSE_NS, yes_no(ns <= TARGET_TRACE_PARSE_NS));
        else
            (void)snprintf(extra, sizeof(extra), "allocs_per_op=%.4f", allocs);
        report(name, threads, ns, extra);
    }
    return rc;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            ops_per_thread = 20000;
        } else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
            filter = argv[++i];
        } else {
            (void)fprintf(stderr, "usage: %s [--quick] [--filter SUBSTRING]\n", argv[0]);
            return 2;
        }
    }
    if (fg_set_alloc_funcs(counting_malloc, free) != 0)
        return 1;

    /* The floors are always measured: every ratio needs them. */
    double v[REPS];
    for (int r = 0; r < REPS; r++)
        v[r] = run_floor_cas(ops_per_thread * 5);
    floor_cas_ns = median(v, REPS);
    report("floor_cas", 1, floor_cas_ns, NULL);
    for (int r = 0; r < REPS; r++)
        v[r] = run_floor_clock(ops_per_thread);
    floor_clock_ns = median(v, REPS);
    report("floor_clock", 1, floor_clock_ns, NULL);
    /* The cheaper clock fg_clock_fast offers (calibrates ~10 ms once). */
    fast_is_tsc = fg_clock_fast(&fast_clock) == 1;
    for (int r = 0; r < REPS; r++)
        v[r] = run_floor_clock_fast(ops_per_thread);
    char source[32];
    (void)snprintf(source, sizeof(source), "clock=%s", fast_is_tsc ? "tsc" : "monotonic");
    report("floor_clock_fast", 1, median(v, REPS), source);

    int rc = bench_chain("chain_empty", 0, loop_chain_call);
    rc |= bench_chain("chain_4noop", 4, loop_chain_call);
    rc |= bench_chain("chain_4noop_split", 4, loop_chain_split);
    rc |= bench_limiter("limiter_try_ctxclock", CTXCLOCK);
    rc |= bench_limiter("limiter_try_ownclock", OWNCLOCK);
    rc |= bench_limiter("limiter_try_monoclock", MONOCLOCK);
    rc |= bench_limiter("limiter_try_2buckets", TWO_BUCKETS);
    rc |= bench_keyed("keyed_try_1e3", 1000, 0);
    rc |= bench_keyed("keyed_try_1e5", 100000, 1);
    bench_keyed_bytes("keyed_bytes_per_key", 100000);
    rc |= bench_breaker("breaker_closed", BREAKER_CLOSED);
    rc |= bench_breaker("breaker_closed_time", BREAKER_CLOSED_TIME);
    rc |= bench_breaker("breaker_open_reject", BREAKER_OPEN);
    rc |= bench_trace("trace_parse_child");
    return rc ? 1 : 0;
}
