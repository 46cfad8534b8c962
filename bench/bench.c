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
 *     retry_success_path threads=1     ns_per_op <= 3 x floor_cas
 *     route_match_1000 threads=1       ns_per_op <= 2 x route_match_10's
 *                                      (ratio_route_match_10=, on every
 *                                      route_match_<n> line after the 10's)
 *     histogram_record threads=1       ns_per_op <= 15
 *     bulkhead_enter_exit threads=1    ns_per_op <= 3 x floor_cas
 *     cluster_try_leased threads=1     ns_per_op <= 2 x limiter_try_ctxclock's,
 *                                      measured again beside it (ratio_ctxclock=)
 *     cluster_roundtrips_per_1e6       Redis calls per 1e6 admitted <= 1e6 / lease
 *     etcd_change_to_swap_ms           put to serving <= 100 ms (median)
 * The single-bucket and closed-breaker targets are uncontended costs, so
 * they are judged on threads=1 only; the threads=2 lines are two threads on
 * one shared object and report what contention costs.
 *
 * The last three need Redis and etcd (bench/scaleout.c): their addresses
 * come in FG_BENCH_REDIS and FG_BENCH_ETCD, which bench/servers.sh sets
 * after starting both (`make bench` runs the binary through it); without
 * them those figures print ns_per_op=0.00 skipped=<why>.
 *
 * Usage: bench [--quick] [--filter SUBSTRING]
 * Figure names are a stable interface: scripts compare them across versions.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ck_pr.h>
#include <floodgate.h>

#include "bench.h"

uint64_t ops_per_thread = 2000000;
static const char *filter;
double floor_cas_ns, floor_clock_ns;

/* ---- allocation counting ------------------------------------------------- */

static uint64_t alloc_count;

static void *counting_malloc(size_t size) {
    ck_pr_inc_64(&alloc_count);
    return malloc(size);
}

/* ---- timing -------------------------------------------------------------- */

uint64_t now_ns(void) { return fg_clock_monotonic_now(NULL); }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double median(double *v, int n) {
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
double run_once(const char *name, op_loop loop, void *const *args, int nthreads,
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
int measure(const char *name, op_loop loop, void *const *args, int nthreads, double *ns,
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

int selected(const char *name) { return filter == NULL || strstr(name, filter) != NULL; }

void report(const char *name, int threads, double ns, const char *extra) {
    printf("bench=%s threads=%d ns_per_op=%.2f%s%s\n", name, threads, ns, extra ? " " : "",
           extra ? extra : "");
    (void)fflush(stdout);
}

const char *yes_no(int met) { return met ? "yes" : "no"; }

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

/* ---- deadlines ------------------------------------------------------------------------ */

/*
 * deadline_check: what checking deadlines costs a request: the chain's own
 * checks (canceled before each stage and before the handler, now + wait
 * against the deadline) on a request that carries a deadline, plus a
 * handler that asks fg_ctx_canceled and fg_ctx_remaining as a long handler
 * would; minus the same loop without a deadline and with a plain handler.
 * Every loop does fg_ctx_init and adds an inbound "grpc-timeout: 250m"
 * header, and runs fg_chain_call on a chain of one no-op stage, so only the
 * deadline work differs. timeout_stage_ns is what replacing the no-op stage
 * with a timeout stage that reads that header (find, parse, set the
 * deadline, count) adds, measured the same way. Differences are taken per repetition with the
 * runs back to back, median over REPS; a negative one (noise) prints as 0. Budget: 3 x
 * floor_cas for the check on one thread.
 */
#define TARGET_DEADLINE_RATIO_CAS 3.0

static int deadline_handler(fg_ctx *ctx, void *arg) {
    (void)arg;
    /* A cancel or a spent deadline here would make the figure meaningless. */
    return fg_ctx_canceled(ctx) || fg_ctx_remaining(ctx, ctx->now_ns) == 0 ? FG_ETIMEDOUT : 0;
}

struct deadline_job {
    const fg_chain *chain;
    fg_handler_fn handler;
    uint64_t deadline_ns; /* set on the ctx before the call; 0: none */
};

static uint64_t loop_deadline(void *arg, int index, uint64_t ops) {
    const struct deadline_job *job = arg;
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/bench");
        ctx.deadline_ns = job->deadline_ns;
        failures += fg_ctx_add_header_n(&ctx, "grpc-timeout", 12, "250m", 4) != 0;
        failures += fg_chain_call(job->chain, &ctx, job->handler, NULL) != 0;
    }
    return failures;
}

/* Returns 0, or -1 when a request failed. */
static int bench_deadline(const char *name) {
    if (!selected(name))
        return 0;
    fg_timeout_options to = FG_TIMEOUT_OPTIONS_INIT;
    to.timeout_ns = FG_NS_PER_S;
    to.header = "grpc-timeout";
    fg_chain *plain = make_chain(1), *timed = NULL;
    fg_stage *stage;
    if (fg_chain_new(NULL, &timed) != 0 || fg_stage_timeout(&to, NULL, &stage) != 0 ||
        fg_chain_use(timed, stage) != 0)
        abort();
    /* A deadline far ahead on the monotonic clock: checked, never reached. */
    uint64_t far = fg_clock_monotonic_now(NULL) + UINT64_C(3600) * FG_NS_PER_S;
    struct deadline_job jo = {plain, ok_handler, 0}, jc = {plain, deadline_handler, far},
                        js = {timed, deadline_handler, 0};
    void *ao[MAX_THREADS] = {&jo, &jo}, *ac[MAX_THREADS] = {&jc, &jc},
         *as[MAX_THREADS] = {&js, &js};
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double d[REPS], ds[REPS];
        uint64_t allocs = 0;
        for (int r = 0; r < REPS && rc == 0; r++) {
            double o = run_once(name, loop_deadline, ao, threads, &allocs);
            double c = run_once(name, loop_deadline, ac, threads, &allocs);
            double t = run_once(name, loop_deadline, as, threads, &allocs);
            rc = o < 0 || c < 0 || t < 0 ? -1 : 0;
            d[r] = c - o;
            ds[r] = t - o;
        }
        if (rc != 0)
            break;
        double ns = median(d, REPS), stage_ns = median(ds, REPS);
        ns = ns > 0 ? ns : 0;
        stage_ns = stage_ns > 0 ? stage_ns : 0;
        double allocs_per_op =
            (double)allocs / (3.0 * REPS * (double)ops_per_thread * threads);
        double ratio = ns / floor_cas_ns;
        char extra[200];
        int n = snprintf(extra, sizeof(extra),
                         "ratio_cas=%.2f timeout_stage_ns=%.2f allocs_per_op=%.4f", ratio,
                         stage_ns, allocs_per_op);
        if (threads == 1 && n > 0 && (size_t)n < sizeof(extra))
            (void)snprintf(extra + n, sizeof(extra) - (size_t)n,
                           " target=%.0fxfloor_cas met=%s", TARGET_DEADLINE_RATIO_CAS,
                           yes_no(ratio <= TARGET_DEADLINE_RATIO_CAS));
        report(name, threads, ns, extra);
    }
    fg_chain_free(plain);
    fg_chain_free(timed);
    return rc;
}

/* ---- the runtime ------------------------------------------------------------ */

static uint64_t loop_runtime_call(void *arg, int index, uint64_t ops) {
    fg_runtime *rt = arg;
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/bench");
        failures += fg_runtime_call(rt, &ctx, ok_handler, NULL) != 0;
    }
    return failures;
}

/* What going through a runtime adds to a request: fg_runtime_call on an
 * empty chain minus fg_chain_call on the same chain, measured back to back
 * at each thread count. Budget: at most 10 ns. */
#define TARGET_RUNTIME_INDIRECTION_NS 10.0

static int bench_runtime(const char *name) {
    if (!selected(name))
        return 0;
    fg_chain *chain = make_chain(0);
    fg_runtime *rt = NULL;
    if (fg_runtime_new(&rt) != 0 || fg_runtime_swap(rt, chain, "bench") != 0)
        abort();
    const fg_chain *direct = make_chain(0);
    void *rargs[MAX_THREADS] = {rt, rt};
    void *cargs[MAX_THREADS] = {(void *)direct, (void *)direct};
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double rns, cns, rallocs, callocs;
        rc = measure(name, loop_chain_call, cargs, threads, &cns, &callocs);
        if (rc == 0)
            rc = measure(name, loop_runtime_call, rargs, threads, &rns, &rallocs);
        if (rc != 0)
            break;
        double d = rns > cns ? rns - cns : 0; /* noise can make it negative: report 0 */
        char extra[200];
        if (threads == 1)
            (void)snprintf(
                extra, sizeof(extra),
                "runtime_ns=%.2f chain_ns=%.2f allocs_per_op=%.4f target=%.0fns met=%s", rns,
                cns, rallocs, TARGET_RUNTIME_INDIRECTION_NS,
                d <= TARGET_RUNTIME_INDIRECTION_NS ? "yes" : "no");
        else
            (void)snprintf(extra, sizeof(extra),
                           "runtime_ns=%.2f chain_ns=%.2f allocs_per_op=%.4f", rns, cns,
                           rallocs);
        report(name, threads, d, extra);
    }
    fg_runtime_free(rt);
    fg_chain_free((fg_chain *)direct);
    return rc;
}

/* ---- retries -------------------------------------------------------------- */

/*
 * retry_success_path: what a retry stage with a budget (the defaults: full
 * jitter, 3 attempts, a 0.2 / 10 per s / 10 s budget on the chain's
 * monotonic clock) adds to a request whose handler succeeds: fg_chain_call
 * through a chain of that one stage minus through an empty chain, the two
 * runs back to back in each repetition so drift cancels, median of the
 * differences over REPS (a negative one, noise, prints as 0). with_ns /
 * without_ns are the two chains' own medians. The stage's enter deposits
 * into the budget (a few loads and one store into the calling thread's own
 * shard: no atomic read-modify-write); unseeded full jitter needs no draw
 * until a failure; its exit returns at once for a success. Budget:
 * 3 x floor_cas on one thread; threads=2 share the stage and the budget
 * (each thread its own shard). The run is checked: every request
 * deposited, nothing was withdrawn.
 */
#define TARGET_RETRY_RATIO_CAS 3.0

/* Returns 0, or -1 when a request failed or the budget's counts are off. */
static int bench_retry(const char *name) {
    if (!selected(name))
        return 0;
    fg_retry_budget *budget;
    fg_retry_options o = FG_RETRY_OPTIONS_INIT;
    fg_stage *stage;
    fg_chain *with = make_chain(0), *without = make_chain(0);
    if (fg_retry_budget_new(NULL, &budget) != 0)
        abort();
    o.budget = budget;
    if (fg_stage_retry(&o, NULL, &stage) != 0 || fg_chain_use(with, stage) != 0)
        abort();
    void *aw[MAX_THREADS] = {with, with}, *ao[MAX_THREADS] = {without, without};
    uint64_t want = 0;
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double d[REPS], w[REPS], n[REPS];
        uint64_t allocs = 0;
        for (int r = 0; r < REPS && rc == 0; r++) {
            n[r] = run_once(name, loop_chain_call, ao, threads, &allocs);
            w[r] = run_once(name, loop_chain_call, aw, threads, &allocs);
            rc = n[r] < 0 || w[r] < 0 ? -1 : 0;
            d[r] = w[r] - n[r];
        }
        if (rc != 0)
            break;
        want += (uint64_t)REPS * ops_per_thread * (uint64_t)threads;
        double ns = median(d, REPS);
        ns = ns > 0 ? ns : 0;
        double with_ns = median(w, REPS), without_ns = median(n, REPS);
        double allocs_per_op =
            (double)allocs / (double)(UINT64_C(2) * REPS * ops_per_thread * (uint64_t)threads);
        double ratio = ns / floor_cas_ns;
        char extra[200];
        int len = snprintf(extra, sizeof(extra),
                           "ratio_cas=%.2f with_ns=%.2f without_ns=%.2f allocs_per_op=%.4f",
                           ratio, with_ns, without_ns, allocs_per_op);
        if (threads == 1 && len > 0 && (size_t)len < sizeof(extra))
            (void)snprintf(extra + len, sizeof(extra) - (size_t)len,
                           " target=%.0fxfloor_cas met=%s", TARGET_RETRY_RATIO_CAS,
                           yes_no(ratio <= TARGET_RETRY_RATIO_CAS));
        report(name, threads, ns, extra);
    }
    fg_retry_budget_stats st;
    if (rc == 0 && (fg_retry_budget_stats_get(budget, &st) != 0 || st.deposits != want ||
                    st.allowed + st.refused != 0)) {
        (void)fprintf(stderr, "bench: %s: %llu deposits for %llu requests\n", name,
                      (unsigned long long)st.deposits, (unsigned long long)want);
        rc = -1;
    }
    fg_chain_free(with);
    fg_chain_free(without);
    fg_retry_budget_free(budget);
    return rc;
}

/* ---- compiling a config -------------------------------------------------- */

/* config_compile_1000routes: fg_config_check (parse, validate, build every
 * limiter, stage and the router, then free it) of a config with 1,000
 * routes of mixed path kinds. Not a per-request cost, so it reports
 * milliseconds per compile (median of 5) rather than allocations.
 * Budget: at most 10 ms. */
#define CONFIG_ROUTES 1000

static int bench_config_compile(const char *name) {
    if (!selected(name))
        return 0;
    size_t cap = 256 + (size_t)CONFIG_ROUTES * 200, len = 0;
    char *text = malloc(cap);
    if (text == NULL)
        abort();
    len +=
        (size_t)snprintf(text + len, cap - len,
                         "{\"version\": \"bench\", \"limiters\": {\"api\": {\"rate\": "
                         "\"1000/s\", \"burst\": 100}}, \"chain\": [{\"limiter\": \"api\"}], "
                         "\"routes\": [");
    for (int i = 0; i < CONFIG_ROUTES; i++) {
        static const char *const kinds[] = {"exact", "prefix", "pattern"};
        char path[64];
        if (i % 3 == 2)
            (void)snprintf(path, sizeof(path), "/api/v1/svc%d/items/:id", i);
        else
            (void)snprintf(path, sizeof(path), "/api/v1/svc%d/items", i);
        len +=
            (size_t)snprintf(text + len, cap - len,
                             "%s{\"name\": \"r%d\", \"match\": {\"path\": {\"%s\": \"%s\"}, "
                             "\"methods\": [\"GET\"]}, \"handler\": \"h%d\"}",
                             i ? ", " : "", i, kinds[i % 3], path, i % 8);
    }
    len += (size_t)snprintf(text + len, cap - len, "]}");
    if (len >= cap)
        abort();
    double v[5];
    for (int r = 0; r < 5; r++) {
        uint64_t t0 = now_ns();
        fg_config_errors errors;
        if (fg_config_check(NULL, text, len, &errors) != 0) {
            char msg[512];
            (void)fg_config_errors_format(&errors, msg, sizeof(msg));
            (void)fprintf(stderr, "bench: %s: %s", name, msg);
            free(text);
            return -1;
        }
        v[r] = (double)(now_ns() - t0);
    }
    free(text);
    double ns = median(v, 5);
    char extra[96];
    (void)snprintf(extra, sizeof(extra), "ms=%.3f routes=%d target=10ms met=%s", ns / 1e6,
                   CONFIG_ROUTES, ns <= 10e6 ? "yes" : "no");
    report(name, 1, ns, extra);
    return 0;
}

/* ---- requests while a config reloads ---------------------------------------- */

/* runtime_steady_p99 / runtime_reload_p99: the 99th percentile of one
 * request's latency through fg_runtime_call (a config with a limiter, a
 * trace stage and ten routes), alone, and while another thread loads a new
 * config every millisecond. Latency per request is read with the fast clock
 * around each call. The target is that reloading leaves p99 unchanged
 * within noise (ratio_steady= near 1). */
#define RELOAD_SAMPLES 400000

static int bench_ok_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

static const char *reload_config(int variant, char *buf, size_t cap) {
    size_t len = (size_t)snprintf(buf, cap,
                                  "{\"version\": \"v%d\", \"limiters\": {\"api\": {\"rate\": "
                                  "\"%d/s\", \"burst\": 1000000000}}, \"chain\": [\"trace\", "
                                  "{\"limiter\": \"api\"}], \"routes\": [",
                                  variant, 1000000000 - variant % 2);
    for (int i = 0; i < 10; i++)
        len += (size_t)snprintf(buf + len, cap - len,
                                "%s{\"name\": \"r%d\", \"match\": {\"path\": {\"prefix\": "
                                "\"/api/r%d\"}}, \"handler\": \"ok\"}",
                                i ? ", " : "", i, i);
    (void)snprintf(buf + len, cap - len, ", {\"name\": \"rest\", \"handler\": \"ok\"}]}");
    return buf;
}

struct reloader {
    fg_runtime *rt;
    const fg_registry *reg;
    int stop; /* atomic */
    int reloads;
    int failures;
};

static void *reload_loop(void *arg) {
    struct reloader *r = arg;
    char text[4096];
    for (int v = 1; !__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE); v++) {
        (void)reload_config(v, text, sizeof(text));
        fg_config_errors errs;
        if (fg_runtime_load_json(r->rt, r->reg, text, strlen(text), &errs) != 0)
            r->failures++;
        r->reloads++;
        struct timespec ms = {0, 1000000};
        (void)nanosleep(&ms, NULL);
    }
    return NULL;
}

static double request_p99(fg_runtime *rt, double *lat) {
    for (int i = 0; i < RELOAD_SAMPLES; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/api/r3/x");
        uint64_t t0 = fg_clock_read(&fast_clock);
        int rc = fg_runtime_call(rt, &ctx, NULL, NULL);
        uint64_t t1 = fg_clock_read(&fast_clock);
        if (rc != 0)
            return -1;
        lat[i] = (double)(t1 - t0);
    }
    qsort(lat, RELOAD_SAMPLES, sizeof(double), cmp_double);
    return lat[RELOAD_SAMPLES * 99 / 100];
}

static int bench_runtime_reload(void) {
    if (!selected("runtime_steady_p99") && !selected("runtime_reload_p99"))
        return 0;
    fg_registry *reg = NULL;
    fg_runtime *rt = NULL;
    char text[4096];
    fg_config_errors errs;
    double *lat = malloc(sizeof(double) * RELOAD_SAMPLES);
    (void)reload_config(0, text, sizeof(text));
    if (lat == NULL || fg_registry_new(&reg) != 0 ||
        fg_registry_add_handler(reg, "ok", bench_ok_handler, NULL) != 0 ||
        fg_runtime_new(&rt) != 0 ||
        fg_runtime_load_json(rt, reg, text, strlen(text), &errs) != 0)
        abort();
    double steady = request_p99(rt, lat);
    struct reloader r = {rt, reg, 0, 0, 0};
    pthread_t th;
    if (pthread_create(&th, NULL, reload_loop, &r) != 0)
        abort();
    double reloading = request_p99(rt, lat);
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    (void)pthread_join(th, NULL);
    int rc = steady < 0 || reloading < 0 || r.failures != 0 ? -1 : 0;
    char extra[160];
    (void)snprintf(extra, sizeof(extra), "samples=%d", RELOAD_SAMPLES);
    report("runtime_steady_p99", 1, steady, extra);
    (void)snprintf(extra, sizeof(extra), "samples=%d reloads=%d ratio_steady=%.2f",
                   RELOAD_SAMPLES, r.reloads, reloading / steady);
    report("runtime_reload_p99", 1, reloading, extra);
    fg_runtime_free(rt);
    fg_registry_free(reg);
    free(lat);
    return rc;
}

/* ---- one bucket ---------------------------------------------------------- */

/* Budget: a try with the clock supplied by the ctx costs <= 2.5 CAS. */
#define TARGET_CTXCLOCK_RATIO_CAS 2.5

/* A bucket on which every try of a run is an admission, so each one does
 * its CAS: a token per ns (1e9 per second) and the largest burst, i.e. 2^40
 * ns (18 minutes) of tokens, far more than a run takes. */
fg_limiter *make_limiter(fg_clock clock) {
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
uint64_t loop_try_ctxclock(void *arg, int index, uint64_t ops) {
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

/* A trace figure at threads=1 and 2 (thread i runs loop on args[i]);
 * target_ns > 0 adds target=/met= to the threads=1 line. */
static int trace_figure(const char *name, op_loop loop, void *const *args, double target_ns) {
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS; threads++) {
        double ns, allocs;
        rc = measure(name, loop, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        char extra[160];
        if (threads == 1 && target_ns > 0)
            (void)snprintf(extra, sizeof(extra), "allocs_per_op=%.4f target=%.0fns met=%s",
                           allocs, target_ns, yes_no(ns <= target_ns));
        else
            (void)snprintf(extra, sizeof(extra), "allocs_per_op=%.4f", allocs);
        report(name, threads, ns, extra);
    }
    return rc;
}

static int bench_trace(const char *name) {
    if (!selected(name))
        return 0;
    void *args[MAX_THREADS] = {NULL, NULL};
    return trace_figure(name, loop_trace_parse_child, args, TARGET_TRACE_PARSE_NS);
}

/* A 32-member tracestate (the most a list may hold), 20 characters a
 * member, "v00=00f067aa0ba90200,v01=...": built once by bench_tracestate. */
static char bench_tracestate_32[32 * 21];

static uint64_t loop_tracestate_parse_32(void *arg, int index, uint64_t ops) {
    const fg_str *header = arg;
    uint64_t failures = 0, acc = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        fg_tracestate ts;
        failures += fg_tracestate_parse(&ts, header->ptr, header->len) != 0 ||
                    ts.n != FG_TRACESTATE_MAX_MEMBERS;
        acc += ts.n;
    }
    sink = acc;
    return failures;
}

static int bench_tracestate(const char *name) {
    if (!selected(name))
        return 0;
    size_t len = 0;
    for (int i = 0; i < FG_TRACESTATE_MAX_MEMBERS; i++) {
        int n = snprintf(bench_tracestate_32 + len, sizeof(bench_tracestate_32) - len,
                         "%sv%02d=00f067aa0ba902%02x", i ? "," : "", i, (unsigned)i);
        if (n < 0 || (size_t)n >= sizeof(bench_tracestate_32) - len)
            abort();
        len += (size_t)n;
    }
    fg_str header = {bench_tracestate_32, len};
    void *args[MAX_THREADS] = {&header, &header};
    return trace_figure(name, loop_tracestate_parse_32, args, 0);
}

/* A request as a downstream call sees it: a valid traceparent, a
 * tracestate of four members among them our vendor key's, and three
 * baggage entries. */
#define BENCH_VENDOR_KEY "fg"
static const char bench_in_tracestate[] =
    "rojo=00f067aa0ba902b7,fg=b7ad6b7169203331,congo=t61rcWkgMzE,dd=s:1;o:rum";
static const char bench_in_baggage[] = "userId=alice,serverNode=DF%2028,isProduction=false";

/* fg_trace_outgoing on a ctx that is inside a chain whose trace stage has
 * run: the headers for one downstream call, in a buffer on the stack. */
static uint64_t loop_trace_outgoing(void *arg, int index, uint64_t ops) {
    const fg_ctx *ctx = arg;
    uint64_t failures = 0, acc = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        char buf[FG_TRACE_HEADERS_MAX];
        fg_trace_headers h;
        failures += fg_trace_outgoing(ctx, BENCH_VENDOR_KEY, buf, sizeof(buf), &h) != 0;
        acc += h.traceparent.len + h.tracestate.len + h.baggage.len;
    }
    sink = acc;
    return failures;
}

/* Returns 0, or -1 when the trace stage or fg_trace_outgoing failed. */
static int bench_trace_outgoing(const char *name) {
    if (!selected(name))
        return 0;
    fg_trace_options o = FG_TRACE_OPTIONS_INIT;
    fg_chain *chain;
    fg_stage *stage;
    if (fg_chain_new(NULL, &chain) != 0 || fg_stage_trace(&o, &stage) != 0 ||
        fg_chain_use(chain, stage) != 0)
        abort();
    /* One request (ctx) per thread, entered before timing. */
    static fg_ctx ctx[MAX_THREADS];
    void *args[MAX_THREADS];
    int rc = 0;
    for (int i = 0; i < MAX_THREADS; i++) {
        args[i] = &ctx[i];
        if (fg_ctx_init(&ctx[i], "GET", "/bench") != 0 ||
            fg_ctx_add_header(&ctx[i], "traceparent", bench_traceparent) != 0 ||
            fg_ctx_add_header(&ctx[i], "tracestate", bench_in_tracestate) != 0 ||
            fg_ctx_add_header(&ctx[i], "baggage", bench_in_baggage) != 0 ||
            fg_chain_enter(chain, &ctx[i]) != 0)
            abort();
        /* The figure is only worth having when every header comes out:
         * the vendor entry first among four, the three baggage entries. */
        char buf[FG_TRACE_HEADERS_MAX];
        fg_trace_headers h;
        if (fg_trace_outgoing(&ctx[i], BENCH_VENDOR_KEY, buf, sizeof(buf), &h) != 0 ||
            h.traceparent.len != FG_TRACEPARENT_LEN ||
            strncmp(h.tracestate.ptr, BENCH_VENDOR_KEY "=", 3) != 0 ||
            h.tracestate.len != sizeof(bench_in_tracestate) - 1 ||
            h.baggage.len != sizeof(bench_in_baggage) - 1) {
            (void)fprintf(stderr, "bench: %s: fg_trace_outgoing did not give the headers\n",
                          name);
            rc = -1;
        }
    }
    if (rc == 0)
        rc = trace_figure(name, loop_trace_outgoing, args, 0);
    for (int i = 0; i < MAX_THREADS; i++)
        if (fg_chain_exit(chain, &ctx[i], 0) != 0)
            abort();
    fg_chain_free(chain);
    return rc;
}

/* ---- the router ---------------------------------------------------------- */

/* Budget: matching among 1000 routes costs at most 2x matching among 10
 * (the tree makes the cost grow with the path's depth, not the routes). */
#define TARGET_ROUTE_SCALE 2.0
#define ROUTE_REQS         128 /* requests each thread cycles over, a power of 2 */
#define ROUTE_PATH_MAX     80

/*
 * route_match_<n>: a router of n routes shaped like a service's API, the
 * same shape at every size. Routes 0 and 1 are the exact paths /health and
 * /ready; the others come in four kinds, in turn, by (i - 2) % 4:
 *   0  pattern /api/v1/svc<i>/items/:id                    GET,POST
 *   1  pattern /api/v1/svc<i>/users/:uid/orders/:oid       GET
 *   2  prefix  /static/<i>/                                any method
 *   3  exact   /svc<i>/status                              GET
 * The requests (ROUTE_REQS, the same mix at every size) are, by j % 8:
 * /health, two items, an items with a query string, a users/orders, a
 * static file, a status, /ready; each names a route of its kind drawn
 * across the whole table, so a bigger table is also a colder one.
 */
static void route_path(uint32_t i, char *buf, size_t cap, fg_path_kind *kind,
                       const char **methods) {
    int n;
    if (i < 2) {
        n = snprintf(buf, cap, "%s", i == 0 ? "/health" : "/ready");
        *kind = FG_PATH_EXACT;
        *methods = NULL;
    } else {
        switch ((i - 2) % 4) {
        case 0:
            n = snprintf(buf, cap, "/api/v1/svc%u/items/:id", (unsigned)i);
            *kind = FG_PATH_PATTERN;
            *methods = "GET,POST";
            break;
        case 1:
            n = snprintf(buf, cap, "/api/v1/svc%u/users/:uid/orders/:oid", (unsigned)i);
            *kind = FG_PATH_PATTERN;
            *methods = "GET";
            break;
        case 2:
            n = snprintf(buf, cap, "/static/%u/", (unsigned)i);
            *kind = FG_PATH_PREFIX;
            *methods = NULL;
            break;
        default:
            n = snprintf(buf, cap, "/svc%u/status", (unsigned)i);
            *kind = FG_PATH_EXACT;
            *methods = "GET";
            break;
        }
    }
    if (n < 0 || (size_t)n >= cap)
        abort();
}

static fg_router *make_route_table(uint32_t nroutes) {
    fg_router *router;
    if (fg_router_new(&router) != 0)
        abort();
    fg_route_target target = {NULL, 0, ok_handler, NULL, NULL, 0};
    for (uint32_t i = 0; i < nroutes; i++) {
        char name[32], path[ROUTE_PATH_MAX];
        fg_route_spec spec = FG_ROUTE_SPEC_INIT;
        (void)snprintf(name, sizeof(name), "r%u", (unsigned)i);
        route_path(i, path, sizeof(path), &spec.path_kind, &spec.methods);
        spec.name = name;
        spec.path = path;
        spec.targets = &target;
        spec.ntargets = 1;
        fg_parse_error err;
        if (fg_router_add(router, &spec, &err) != 0) {
            (void)fprintf(stderr, "bench: route %s: %s\n", path, err.message);
            abort();
        }
    }
    if (fg_router_build(router) != 0 || fg_router_warning(router, 0) != NULL)
        abort();
    return router;
}

/* The route request j names in an n-route table, and its path. */
static uint32_t route_request(uint32_t j, uint32_t nroutes, char *buf, size_t cap) {
    static const int kinds[8] = {-1, 0, 0, 0, 1, 2, 3, -2}; /* -1 /health, -2 /ready */
    int k = kinds[j % 8];
    if (k < 0) {
        (void)snprintf(buf, cap, "%s", k == -1 ? "/health" : "/ready");
        return k == -1 ? 0 : 1;
    }
    /* Routes of kind k are 2 + k + 4m for m < count; pick m spread out. */
    uint32_t count = (nroutes - 2 - (uint32_t)k + 3) / 4;
    if (nroutes < 6 || count == 0) /* every kind needs a route */
        abort();
    uint32_t m = (uint32_t)(((uint64_t)j * 2654435761u) % count);
    uint32_t i = 2 + (uint32_t)k + 4 * m;
    int n;
    switch (j % 8) {
    case 3:
        n = snprintf(buf, cap, "/api/v1/svc%u/items/%u?fields=name,price", (unsigned)i,
                     (unsigned)j * 7919);
        break;
    default:
        if (k == 0)
            n = snprintf(buf, cap, "/api/v1/svc%u/items/%u", (unsigned)i, (unsigned)j * 7919);
        else if (k == 1)
            n = snprintf(buf, cap, "/api/v1/svc%u/users/u%u/orders/%u", (unsigned)i,
                         (unsigned)j, (unsigned)j * 31);
        else if (k == 2)
            n = snprintf(buf, cap, "/static/%u/js/app.%u.js", (unsigned)i, (unsigned)j);
        else
            n = snprintf(buf, cap, "/svc%u/status", (unsigned)i);
        break;
    }
    if (n < 0 || (size_t)n >= cap)
        abort();
    return i;
}

struct route_job {
    const fg_router *router;
    fg_ctx *reqs; /* ROUTE_REQS, this thread's own: a match writes params */
};

static char route_paths[ROUTE_REQS][ROUTE_PATH_MAX];
static fg_ctx route_ctx[MAX_THREADS][ROUTE_REQS];
static double route_match_10_ns[MAX_THREADS + 1]; /* by threads; 0: not measured */

static uint64_t loop_route_match(void *arg, int index, uint64_t ops) {
    const struct route_job *job = arg;
    uint64_t failures = 0, acc = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        fg_route_match m;
        failures += fg_router_match(job->router, &job->reqs[i & (ROUTE_REQS - 1)], &m) != 0;
        acc += (uint64_t)m.route;
    }
    sink = acc;
    return failures;
}

/* Returns 0, or -1 when a request did not match its route. */
static int bench_route_match(const char *name, uint32_t nroutes) {
    if (!selected(name))
        return 0;
    fg_router *router = make_route_table(nroutes);
    struct route_job jobs[MAX_THREADS];
    void *args[MAX_THREADS];
    int rc = 0;
    for (uint32_t j = 0; j < ROUTE_REQS; j++) {
        uint32_t want = route_request(j, nroutes, route_paths[j], ROUTE_PATH_MAX);
        for (int t = 0; t < MAX_THREADS; t++) {
            fg_ctx *ctx = &route_ctx[t][j];
            fg_route_match m;
            if (fg_ctx_init(ctx, j % 8 == 5 ? "HEAD" : "GET", route_paths[j]) != 0)
                abort();
            if (fg_router_match(router, ctx, &m) != 0 || (uint32_t)m.route != want) {
                (void)fprintf(stderr, "bench: %s: %s did not match route %u\n", name,
                              route_paths[j], (unsigned)want);
                rc = -1;
            }
        }
    }
    for (int t = 0; t < MAX_THREADS; t++) {
        jobs[t] = (struct route_job){router, route_ctx[t]};
        args[t] = &jobs[t];
    }
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double ns, allocs;
        rc = measure(name, loop_route_match, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        if (nroutes == 10)
            route_match_10_ns[threads] = ns;
        char extra[200];
        size_t len = 0;
        int n = snprintf(extra, sizeof(extra), "ratio_cas=%.2f allocs_per_op=%.4f",
                         ns / floor_cas_ns, allocs);
        len += n > 0 ? (size_t)n : 0;
        /* The scale: only when route_match_10 ran in this process. */
        double base = route_match_10_ns[threads];
        if (nroutes != 10 && base > 0 && len < sizeof(extra)) {
            double scale = ns / base;
            n = snprintf(extra + len, sizeof(extra) - len, " ratio_route_match_10=%.2f",
                         scale);
            len += n > 0 ? (size_t)n : 0;
            if (nroutes == 1000 && threads == 1 && len < sizeof(extra))
                (void)snprintf(extra + len, sizeof(extra) - len,
                               " target=%.0fxroute_match_10 met=%s", TARGET_ROUTE_SCALE,
                               yes_no(scale <= TARGET_ROUTE_SCALE));
        }
        report(name, threads, ns, extra);
    }
    fg_router_free(router);
    return rc;
}

/* rule_eval_geo_age: a rule on two metadata entries, both read, both true. */
#define BENCH_RULE_GEO_AGE "meta.geo == \"beijing\" && meta.age > 25"

struct rule_job {
    const fg_expr *expr;
    const fg_ctx *ctx;
};

static uint64_t loop_rule_eval(void *arg, int index, uint64_t ops) {
    const struct rule_job *job = arg;
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++)
        failures += fg_expr_eval(job->expr, job->ctx) != 1;
    return failures;
}

/* Returns 0, or -1 when the rule was not true. */
static int bench_rule_eval(const char *name) {
    if (!selected(name))
        return 0;
    fg_expr *expr;
    fg_parse_error err;
    if (fg_expr_compile(BENCH_RULE_GEO_AGE, strlen(BENCH_RULE_GEO_AGE), &expr, &err) != 0) {
        (void)fprintf(stderr, "bench: %s: column %zu: %s\n", name, err.column, err.message);
        return -1;
    }
    static fg_ctx ctx[MAX_THREADS];
    struct rule_job jobs[MAX_THREADS];
    void *args[MAX_THREADS];
    for (int t = 0; t < MAX_THREADS; t++) {
        if (fg_ctx_init(&ctx[t], "GET", "/bench") != 0 ||
            fg_ctx_add_header(&ctx[t], "geo", "beijing") != 0 ||
            fg_ctx_add_header(&ctx[t], "age", "30") != 0)
            abort();
        jobs[t] = (struct rule_job){expr, &ctx[t]};
        args[t] = &jobs[t];
    }
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS; threads++) {
        double ns, allocs;
        rc = measure(name, loop_rule_eval, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        char extra[160];
        if (threads == 1)
            (void)snprintf(extra, sizeof(extra),
                           "ratio_cas=%.2f allocs_per_op=%.4f target=30ns met=%s",
                           ns / floor_cas_ns, allocs, ns <= 30.0 ? "yes" : "no");
        else
            (void)snprintf(extra, sizeof(extra), "ratio_cas=%.2f allocs_per_op=%.4f",
                           ns / floor_cas_ns, allocs);
        report(name, threads, ns, extra);
    }
    fg_expr_free(expr);
    return rc;
}

/* split_sticky: one route, split 95/5 sticky on the x-user-id header;
 * each request carries the next of SPLIT_USERS user ids. */
#define SPLIT_USERS 1024 /* a power of 2 */

static char split_user_ids[SPLIT_USERS][16];
static fg_str split_user_str[SPLIT_USERS];

struct split_job {
    const fg_router *router;
    fg_ctx *ctx; /* this thread's; headers[0] is x-user-id */
};

/* The request is the same but for its user id, set by pointing the header's
 * value at the next one (ctx fields are public): one store, not a new ctx. */
static uint64_t loop_split_sticky(void *arg, int index, uint64_t ops) {
    const struct split_job *job = arg;
    uint64_t failures = 0, acc = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        fg_route_match m;
        job->ctx->headers[0].value = split_user_str[i & (SPLIT_USERS - 1)];
        failures += fg_router_match(job->router, job->ctx, &m) != 0;
        acc += (uint64_t)m.target;
    }
    sink = acc;
    return failures;
}

/* Returns 0, or -1 when a request did not match or a user moved target. */
static int bench_split_sticky(const char *name) {
    if (!selected(name))
        return 0;
    fg_router *router;
    fg_route_target targets[2] = {{"stable", 95, ok_handler, NULL, NULL, 0},
                                  {"canary", 5, ok_handler, NULL, NULL, 0}};
    fg_route_spec spec = FG_ROUTE_SPEC_INIT;
    spec.name = "checkout";
    spec.path_kind = FG_PATH_PREFIX;
    spec.path = "/checkout";
    spec.targets = targets;
    spec.ntargets = 2;
    spec.split_source = FG_SOURCE_HEADER;
    spec.split_key = "x-user-id";
    if (fg_router_new(&router) != 0 || fg_router_add(router, &spec, NULL) != 0 ||
        fg_router_build(router) != 0)
        abort();
    for (uint32_t u = 0; u < SPLIT_USERS; u++) {
        int n = snprintf(split_user_ids[u], sizeof(split_user_ids[u]), "u%07u",
                         (unsigned)(u * 7919 + 100003));
        if (n < 0 || (size_t)n >= sizeof(split_user_ids[u]))
            abort();
        split_user_str[u] = (fg_str){split_user_ids[u], (size_t)n};
    }
    static fg_ctx ctx[MAX_THREADS];
    struct split_job jobs[MAX_THREADS];
    void *args[MAX_THREADS];
    for (int t = 0; t < MAX_THREADS; t++) {
        if (fg_ctx_init(&ctx[t], "POST", "/checkout/cart") != 0 ||
            fg_ctx_add_header(&ctx[t], "x-user-id", split_user_ids[0]) != 0)
            abort();
        jobs[t] = (struct split_job){router, &ctx[t]};
        args[t] = &jobs[t];
    }
    /* Sticky: each user lands where fg_split_slot says, every time. */
    int rc = 0;
    uint32_t canary = 0;
    for (uint32_t u = 0; u < SPLIT_USERS && rc == 0; u++) {
        fg_route_match m;
        ctx[0].headers[0].value = split_user_str[u];
        uint32_t slot =
            fg_split_slot("checkout", 8, split_user_str[u].ptr, split_user_str[u].len);
        if (fg_router_match(router, &ctx[0], &m) != 0 || m.target != (slot < 9500 ? 0 : 1)) {
            (void)fprintf(stderr, "bench: %s: user %s not on its target\n", name,
                          split_user_ids[u]);
            rc = -1;
        }
        canary += m.target == 1;
    }
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double ns, allocs;
        rc = measure(name, loop_split_sticky, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        char extra[160];
        (void)snprintf(extra, sizeof(extra),
                       "ratio_cas=%.2f allocs_per_op=%.4f users=%u canary_share=%.3f",
                       ns / floor_cas_ns, allocs, (unsigned)SPLIT_USERS,
                       (double)canary / SPLIT_USERS);
        report(name, threads, ns, extra);
    }
    fg_router_free(router);
    return rc;
}

/* ---- counters and histograms ----------------------------------------------- */

/* counter_inc: fg_counter_add(c, 1) on one counter that every thread
 * shares (each thread adds to its own shard). The run is checked: the
 * counter must hold every add of every repetition. */
static uint64_t loop_counter_inc(void *arg, int index, uint64_t ops) {
    fg_counter *c = arg;
    (void)index;
    for (uint64_t i = 0; i < ops; i++)
        fg_counter_add(c, 1);
    return 0;
}

/* Returns 0, or -1 when the counter lost or invented an add. */
static int bench_counter(const char *name) {
    if (!selected(name))
        return 0;
    fg_counter *c;
    if (fg_counter_new(&c) != 0)
        abort();
    void *args[MAX_THREADS] = {c, c};
    uint64_t want = 0;
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double ns, allocs;
        rc = measure(name, loop_counter_inc, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        want += (uint64_t)REPS * ops_per_thread * (uint64_t)threads;
        char extra[160];
        (void)snprintf(extra, sizeof(extra), "ratio_cas=%.2f allocs_per_op=%.4f",
                       ns / floor_cas_ns, allocs);
        report(name, threads, ns, extra);
    }
    if (rc == 0 && fg_counter_read(c) != want) {
        (void)fprintf(stderr, "bench: %s: counter %llu, %llu adds\n", name,
                      (unsigned long long)fg_counter_read(c), (unsigned long long)want);
        rc = -1;
    }
    fg_counter_free(c);
    return rc;
}

/* histogram_record: fg_histogram_record into one histogram that every
 * thread shares, of latencies cycled from a table drawn before timing:
 * log-uniform over about 1 us .. 260 ms (a mantissa in [1000, 2000) shifted
 * by 0 .. 17 bits), so records spread over 1,115 buckets as a real
 * service's do. Budget: at most 15 ns on one thread. */
#define TARGET_HIST_RECORD_NS 15.0
#define HIST_LATENCIES        4096 /* a power of 2 */

static uint64_t hist_latencies[HIST_LATENCIES];

static uint64_t loop_histogram_record(void *arg, int index, uint64_t ops) {
    fg_histogram *h = arg;
    uint64_t at = (uint64_t)index * (HIST_LATENCIES / MAX_THREADS);
    for (uint64_t i = 0; i < ops; i++)
        fg_histogram_record(h, hist_latencies[(at + i) & (HIST_LATENCIES - 1)]);
    return 0;
}

/* Returns 0, or -1 when the histogram's count is not the records made. */
static int bench_histogram(const char *name) {
    if (!selected(name))
        return 0;
    uint64_t seed = UINT64_C(0x2545f4914f6cdd1d);
    for (int i = 0; i < HIST_LATENCIES; i++) {
        uint64_t r = xorshift64(&seed);
        hist_latencies[i] = (1000 + r % 1000) << ((r >> 32) % 18);
    }
    fg_histogram *h;
    if (fg_histogram_new(&h) != 0)
        abort();
    void *args[MAX_THREADS] = {h, h};
    uint64_t want = 0;
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double ns, allocs;
        rc = measure(name, loop_histogram_record, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        want += (uint64_t)REPS * ops_per_thread * (uint64_t)threads;
        char extra[160];
        if (threads == 1)
            (void)snprintf(extra, sizeof(extra),
                           "ratio_cas=%.2f allocs_per_op=%.4f target=%.0fns met=%s",
                           ns / floor_cas_ns, allocs, TARGET_HIST_RECORD_NS,
                           yes_no(ns <= TARGET_HIST_RECORD_NS));
        else
            (void)snprintf(extra, sizeof(extra), "ratio_cas=%.2f allocs_per_op=%.4f",
                           ns / floor_cas_ns, allocs);
        report(name, threads, ns, extra);
    }
    fg_histogram_stats st;
    if (rc == 0 && (fg_histogram_snapshot(h, &st) != 0 || st.count != want)) {
        (void)fprintf(stderr, "bench: %s: count %llu, %llu records\n", name,
                      (unsigned long long)st.count, (unsigned long long)want);
        rc = -1;
    }
    fg_histogram_free(h);
    return rc;
}

/* ---- the bulkhead ------------------------------------------------------------------- */

/*
 * bulkhead_enter_exit: fg_bulkhead_try_enter + fg_bulkhead_exit on one
 * bulkhead that every thread shares, with room for all of them, so every
 * enter is an admission (a rejection counts as a failure). Budget: the
 * pair at most 3 x floor_cas on one thread (it is one CAS and one
 * fetch-and-add). The run is checked: admitted must be every enter of
 * every repetition, and nothing may be left in flight.
 */
#define TARGET_BULKHEAD_RATIO_CAS 3.0

static uint64_t loop_bulkhead(void *arg, int index, uint64_t ops) {
    fg_bulkhead *b = arg;
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        failures += fg_bulkhead_try_enter(b) != 0;
        failures += fg_bulkhead_exit(b) != 0;
    }
    return failures;
}

/* Returns 0, or -1 when an enter was rejected or the counts are off. */
static int bench_bulkhead(const char *name) {
    if (!selected(name))
        return 0;
    fg_bulkhead_options o = FG_BULKHEAD_OPTIONS_INIT;
    o.max_concurrent = 64;
    fg_bulkhead *b;
    if (fg_bulkhead_new(&o, &b) != 0)
        abort();
    void *args[MAX_THREADS] = {b, b};
    uint64_t want = 0;
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double ns, allocs;
        rc = measure(name, loop_bulkhead, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        want += (uint64_t)REPS * ops_per_thread * (uint64_t)threads;
        char extra[160];
        double ratio = ns / floor_cas_ns;
        if (threads == 1)
            (void)snprintf(extra, sizeof(extra),
                           "ratio_cas=%.2f allocs_per_op=%.4f target=%.0fxfloor_cas met=%s",
                           ratio, allocs, TARGET_BULKHEAD_RATIO_CAS,
                           yes_no(ratio <= TARGET_BULKHEAD_RATIO_CAS));
        else
            (void)snprintf(extra, sizeof(extra), "ratio_cas=%.2f allocs_per_op=%.4f", ratio,
                           allocs);
        report(name, threads, ns, extra);
    }
    fg_bulkhead_stats st;
    if (rc == 0 && (fg_bulkhead_stats_get(b, &st) != 0 || st.admitted != want ||
                    st.rejected != 0 || st.in_flight != 0)) {
        (void)fprintf(stderr, "bench: %s: admitted %llu of %llu enters\n", name,
                      (unsigned long long)st.admitted, (unsigned long long)want);
        rc = -1;
    }
    fg_bulkhead_free(b);
    return rc;
}

/* ---- adaptive concurrency ------------------------------------------------------------ */

/*
 * adaptive_update: one fg_adaptive_try_enter + fg_adaptive_exit pair on one
 * limit that every thread shares, with default options (GRADIENT, probes).
 * The pair includes recording the sample and, amortised, the limit update:
 * with latencies of 1..4 us a window (50 samples and at least one mean
 * latency, 2.5 us) closes every few hundred pairs and is looked at every 64
 * pairs past its 50th, each look a clock read. The run is checked: nothing
 * rejected (a thread holds one slot at a time and the limit never goes
 * below 3), every pair counted. Target: threads=1 at most 3 x floor_cas.
 */
#define TARGET_ADAPTIVE_RATIO_CAS 3.0

static uint64_t loop_adaptive(void *arg, int index, uint64_t ops) {
    fg_adaptive *a = arg;
    uint64_t failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        uint64_t permit;
        if (fg_adaptive_try_enter(a, &permit) != 0) {
            failures++;
            continue;
        }
        failures += fg_adaptive_exit(a, permit, FG_NS_PER_US * (1 + (i & 3)), 0) != 0;
    }
    return failures;
}

/* Returns 0, or -1 when a pair was rejected or the counts do not add up. */
static int bench_adaptive(const char *name) {
    if (!selected(name))
        return 0;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    fg_adaptive *a;
    if (fg_adaptive_new(&o, &a) != 0)
        abort();
    void *args[MAX_THREADS] = {a, a};
    uint64_t want = 0;
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double ns, allocs;
        rc = measure(name, loop_adaptive, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        want += (uint64_t)REPS * ops_per_thread * (uint64_t)threads;
        char extra[160];
        double ratio = ns / floor_cas_ns;
        if (threads == 1)
            (void)snprintf(extra, sizeof(extra),
                           "ratio_cas=%.2f allocs_per_op=%.4f target=%.0fxfloor_cas met=%s",
                           ratio, allocs, TARGET_ADAPTIVE_RATIO_CAS,
                           yes_no(ratio <= TARGET_ADAPTIVE_RATIO_CAS));
        else
            (void)snprintf(extra, sizeof(extra), "ratio_cas=%.2f allocs_per_op=%.4f", ratio,
                           allocs);
        report(name, threads, ns, extra);
    }
    fg_adaptive_stats st;
    if (rc == 0 && (fg_adaptive_stats_get(a, &st) != 0 || st.admitted != want ||
                    st.rejected != 0 || st.in_flight != 0 || st.windows == 0)) {
        (void)fprintf(stderr, "bench: %s: admitted %llu of %llu, %llu windows\n", name,
                      (unsigned long long)st.admitted, (unsigned long long)want,
                      (unsigned long long)st.windows);
        rc = -1;
    }
    fg_adaptive_free(a);
    return rc;
}

/* ---- the full chain ---------------------------------------------------------------- */

/*
 * chain_full: what a request costs through the default chain a gateway
 * would run: metrics (first), trace (an incoming traceparent: a child
 * span), a global limiter, a limiter keyed on x-user-id (1,000 users), a
 * router of 100 prefix routes each behind its own breaker, and the
 * handler. Limits are set so high that nothing is rejected: the figure is
 * the admitted path. Each request is built from scratch (fg_ctx_init and
 * two headers) as a server would. Target: threads=1 at most
 * 5 x (floor_clock + floor_cas); threads=2 at least 1.6x the throughput.
 */
#define FULL_ROUTES       100
#define FULL_USERS        1000
#define FULL_REQS         4096
#define TARGET_FULL       5.0
#define TARGET_FULL_SCALE 1.6

struct full_req {
    char path[48];
    char user[16];
};

struct full_bench {
    fg_chain *chain;
    fg_metrics *metrics;
    fg_limiter *global;
    fg_keyed_limiter *keyed;
    fg_breaker *breakers[FULL_ROUTES];
    struct full_req reqs[FULL_REQS];
    const char *traceparent;
};

static uint64_t loop_full(void *arg, int index, uint64_t ops, int split) {
    const struct full_bench *fb = arg;
    uint64_t failures = 0;
    uint32_t j = (uint32_t)index * 7919u;
    for (uint64_t i = 0; i < ops; i++, j++) {
        const struct full_req *r = &fb->reqs[j % FULL_REQS];
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", r->path);
        fg_ctx_add_header(&ctx, "x-user-id", r->user);
        fg_ctx_add_header(&ctx, "traceparent", fb->traceparent);
        if (split) {
            failures += fg_chain_enter(fb->chain, &ctx) != 0;
            failures += fg_route_dispatch(&ctx) != 0;
            failures += fg_chain_exit(fb->chain, &ctx, 0) != 0;
        } else {
            failures += fg_chain_call(fb->chain, &ctx, NULL, NULL) != 0;
        }
    }
    return failures;
}

static uint64_t loop_full_call(void *arg, int index, uint64_t ops) {
    return loop_full(arg, index, ops, 0);
}

static uint64_t loop_full_split(void *arg, int index, uint64_t ops) {
    return loop_full(arg, index, ops, 1);
}

static void full_check(int rc, const char *what) {
    if (rc != 0) {
        (void)fprintf(stderr, "bench: chain_full: %s: %s\n", what, fg_strerror(rc));
        abort();
    }
}

static struct full_bench *full_make(void) {
    struct full_bench *fb = calloc(1, sizeof(*fb));
    if (fb == NULL)
        abort();
    fb->traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    fg_limiter_options lo = FG_LIMITER_OPTIONS_INIT;
    lo.rate = UINT64_C(1000000000); /* 1e9/s: never the bottleneck */
    lo.burst = UINT64_C(1000000000);
    full_check(fg_limiter_new(&lo, &fb->global), "limiter");
    fg_keyed_limiter_options ko = FG_KEYED_LIMITER_OPTIONS_INIT;
    ko.bucket = lo;
    ko.max_keys = 4 * FULL_USERS;
    full_check(fg_keyed_limiter_new(&ko, &fb->keyed), "keyed limiter");
    fg_router *router = NULL;
    full_check(fg_router_new(&router), "router");
    for (int r = 0; r < FULL_ROUTES; r++) {
        fg_breaker_options bo = FG_BREAKER_OPTIONS_INIT;
        full_check(fg_breaker_new(&bo, &fb->breakers[r]), "breaker");
        fg_stage *bs = NULL;
        full_check(fg_stage_breaker(fb->breakers[r], NULL, NULL, "backend", &bs), "stage");
        char name[16], path[32];
        (void)snprintf(name, sizeof(name), "svc%d", r);
        (void)snprintf(path, sizeof(path), "/api/svc%d", r);
        fg_route_target t = {NULL, 0, ok_handler, NULL, &bs, 1};
        fg_route_spec spec = FG_ROUTE_SPEC_INIT;
        spec.name = name;
        spec.path_kind = FG_PATH_PREFIX;
        spec.path = path;
        spec.targets = &t;
        spec.ntargets = 1;
        full_check(fg_router_add(router, &spec, NULL), "route");
    }
    full_check(fg_router_build(router), "router build");
    full_check(fg_metrics_new(NULL, &fb->metrics), "metrics");
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    full_check(fg_chain_new(&co, &fb->chain), "chain");
    fg_stage *st = NULL;
    full_check(fg_stage_metrics(fb->metrics, router, "bench", NULL, &st), "metrics stage");
    full_check(fg_chain_use(fb->chain, st), "use");
    fg_trace_options to = FG_TRACE_OPTIONS_INIT;
    full_check(fg_stage_trace(&to, &st), "trace stage");
    full_check(fg_chain_use(fb->chain, st), "use");
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.name = "global";
    full_check(fg_stage_limit(fb->global, &so, &st), "limit stage");
    full_check(fg_chain_use(fb->chain, st), "use");
    so.name = "per_user";
    so.key_source = FG_KEY_HEADER;
    so.key_name = "x-user-id";
    full_check(fg_stage_limit_keyed(fb->keyed, &so, &st), "keyed stage");
    full_check(fg_chain_use(fb->chain, st), "use");
    full_check(fg_stage_router(router, "router", &st), "router stage");
    full_check(fg_chain_use(fb->chain, st), "use");
    for (uint32_t j = 0; j < FULL_REQS; j++) {
        uint32_t h = j * 2654435761u;
        (void)snprintf(fb->reqs[j].path, sizeof(fb->reqs[j].path), "/api/svc%u/items/%u",
                       (h >> 8) % FULL_ROUTES, j);
        (void)snprintf(fb->reqs[j].user, sizeof(fb->reqs[j].user), "u%u",
                       (h >> 4) % FULL_USERS);
    }
    return fb;
}

static void full_free(struct full_bench *fb) {
    fg_chain_free(fb->chain);
    fg_metrics_free(fb->metrics);
    fg_limiter_free(fb->global);
    fg_keyed_limiter_free(fb->keyed);
    for (int r = 0; r < FULL_ROUTES; r++)
        fg_breaker_free(fb->breakers[r]);
    free(fb);
}

static int bench_chain_full(const char *name, op_loop loop) {
    if (!selected(name))
        return 0;
    struct full_bench *fb = full_make();
    void *args[MAX_THREADS] = {fb, fb};
    int rc = 0;
    double one = 0;
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double ns, allocs;
        rc = measure(name, loop, args, threads, &ns, &allocs);
        if (rc != 0)
            break;
        char extra[200];
        double budget = ns / (floor_clock_ns + floor_cas_ns);
        if (threads == 1) {
            one = ns;
            (void)snprintf(extra, sizeof(extra),
                           "ratio_clock_cas=%.2f allocs_per_op=%.4f target=%.0fx(floor_clock+"
                           "floor_cas) met=%s",
                           budget, allocs, TARGET_FULL, yes_no(budget <= TARGET_FULL));
        } else {
            /* ns is wall time per request over both threads: throughput
             * relative to one thread is one / ns. */
            double scale = one / ns;
            (void)snprintf(extra, sizeof(extra),
                           "ratio_clock_cas=%.2f allocs_per_op=%.4f throughput_vs_1=%.2f "
                           "target=%.1fx met=%s",
                           budget, allocs, scale, TARGET_FULL_SCALE,
                           yes_no(scale >= TARGET_FULL_SCALE));
        }
        report(name, threads, ns, extra);
    }
    full_free(fb);
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
    rc |= bench_deadline("deadline_check");
    rc |= bench_runtime("runtime_indirection");
    rc |= bench_runtime_reload();
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
    rc |= bench_retry("retry_success_path");
    rc |= bench_trace("trace_parse_child");
    rc |= bench_tracestate("tracestate_parse_32");
    rc |= bench_trace_outgoing("trace_format_outgoing");
    rc |= bench_route_match("route_match_10", 10); /* first: the others' scale */
    rc |= bench_route_match("route_match_100", 100);
    rc |= bench_route_match("route_match_1000", 1000);
    rc |= bench_route_match("route_match_10000", 10000);
    rc |= bench_rule_eval("rule_eval_geo_age");
    rc |= bench_config_compile("config_compile_1000routes");
    rc |= bench_split_sticky("split_sticky");
    rc |= bench_chain_full("chain_full", loop_full_call);
    rc |= bench_chain_full("chain_full_split", loop_full_split);
    rc |= bench_counter("counter_inc");
    rc |= bench_histogram("histogram_record");
    rc |= bench_bulkhead("bulkhead_enter_exit");
    rc |= bench_adaptive("adaptive_update");
    /* Last: they need servers (bench/scaleout.c). */
    rc |= bench_cluster_try_leased("cluster_try_leased");
    rc |= bench_cluster_roundtrips("cluster_roundtrips_per_1e6");
    rc |= bench_etcd_change_to_swap("etcd_change_to_swap_ms");
    return rc ? 1 : 0;
}
