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

static double run_floor_clock(uint64_t n) {
    uint64_t acc = 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++)
        acc += fg_clock_monotonic_now(NULL);
    uint64_t t1 = now_ns();
    sink = acc;
    return (double)(t1 - t0) / (double)n;
}

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

enum mode { MODE_CALL, MODE_SPLIT };

struct worker {
    const fg_chain *chain;
    enum mode mode;
    uint64_t ops;
    pthread_barrier_t *start;
    uint64_t failures;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    uint64_t failures = 0;
    pthread_barrier_wait(w->start);
    for (uint64_t i = 0; i < w->ops; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/bench");
        if (w->mode == MODE_CALL) {
            failures += fg_chain_call(w->chain, &ctx, ok_handler, NULL) != 0;
        } else {
            failures += fg_chain_enter(w->chain, &ctx) != 0;
            failures += fg_chain_exit(w->chain, &ctx, 0) != 0;
        }
    }
    w->failures = failures;
    return NULL;
}

/* One repetition: wall time of nthreads workers / all their operations;
 * negative when a request failed (the figure would be meaningless). */
static double run_chain_once(const fg_chain *chain, enum mode mode, int nthreads,
                             uint64_t *allocs) {
    pthread_t tid[MAX_THREADS];
    struct worker w[MAX_THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++) {
        w[i] = (struct worker){chain, mode, ops_per_thread, &start, 0};
        pthread_create(&tid[i], NULL, worker_main, &w[i]);
    }
    uint64_t a0 = ck_pr_load_64(&alloc_count);
    pthread_barrier_wait(&start);
    uint64_t t0 = now_ns();
    for (int i = 0; i < nthreads; i++)
        pthread_join(tid[i], NULL);
    uint64_t t1 = now_ns();
    *allocs += ck_pr_load_64(&alloc_count) - a0;
    pthread_barrier_destroy(&start);
    for (int i = 0; i < nthreads; i++) {
        if (w[i].failures) {
            (void)fprintf(stderr, "bench: %llu requests failed\n",
                          (unsigned long long)w[i].failures);
            return -1.0;
        }
    }
    return (double)(t1 - t0) / (double)(ops_per_thread * (uint64_t)nthreads);
}

static int selected(const char *name) {
    return filter == NULL || strstr(name, filter) != NULL;
}

static void report(const char *name, int threads, double ns, const char *extra) {
    printf("bench=%s threads=%d ns_per_op=%.2f%s%s\n", name, threads, ns, extra ? " " : "",
           extra ? extra : "");
    (void)fflush(stdout);
}

/* Returns 0, or -1 when a request failed. */
static int bench_chain(const char *name, int nstages, enum mode mode) {
    if (!selected(name))
        return 0;
    fg_chain *chain = make_chain(nstages);
    int rc = 0;
    for (int threads = 1; threads <= MAX_THREADS; threads++) {
        double v[REPS];
        uint64_t allocs = 0;
        for (int r = 0; r < REPS && rc == 0; r++) {
            v[r] = run_chain_once(chain, mode, threads, &allocs);
            rc = v[r] < 0 ? -1 : 0;
        }
        if (rc != 0)
            break;
        double ns = median(v, REPS);
        char extra[160];
        (void)snprintf(extra, sizeof(extra),
                       "ratio_cas=%.2f ratio_clock_cas=%.2f allocs_per_op=%.4f",
                       ns / floor_cas_ns, ns / (floor_clock_ns + floor_cas_ns),
                       (double)allocs / (double)(REPS * ops_per_thread * (uint64_t)threads));
        report(name, threads, ns, extra);
    }
    fg_chain_free(chain);
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

    int rc = bench_chain("chain_empty", 0, MODE_CALL);
    rc |= bench_chain("chain_4noop", 4, MODE_CALL);
    rc |= bench_chain("chain_4noop_split", 4, MODE_SPLIT);
    return rc ? 1 : 0;
}
