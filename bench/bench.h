/*
 * bench/bench.h - the harness bench/bench.c gives the figures in other
 * bench/ files: the timed runner, the floors, the line format and the
 * --filter / --quick settings. Figures are measured and printed as
 * bench/bench.c's header comment says.
 */
#ifndef FLOODGATE_BENCH_H
#define FLOODGATE_BENCH_H

#include <stdint.h>

#include <floodgate.h>

#define REPS        5 /* repetitions per figure; the median is reported */
#define MAX_THREADS 2

/* A figure's timed loop: `ops` operations as thread `index` on arg; returns
 * how many of them did not succeed (each is counted, checked after timing). */
typedef uint64_t (*op_loop)(void *arg, int index, uint64_t ops);

extern uint64_t ops_per_thread;             /* per thread per repetition (--quick: fewer) */
extern double floor_cas_ns, floor_clock_ns; /* the floors, measured first */

/* The monotonic clock, in ns. */
uint64_t now_ns(void);
/* The median of v[0..n) (sorts v). */
double median(double *v, int n);
/* One repetition of loop on nthreads threads (thread i on args[i]): wall ns
 * per operation, negative when an operation failed; adds the heap
 * allocations made meanwhile to *allocs. */
double run_once(const char *name, op_loop loop, void *const *args, int nthreads,
                uint64_t *allocs);
/* REPS repetitions: median ns per operation, allocations per operation.
 * 0, or -1 when an operation failed. */
int measure(const char *name, op_loop loop, void *const *args, int nthreads, double *ns,
            double *allocs_per_op);
/* Whether --filter selects the figure. */
int selected(const char *name);
/* Prints `bench=<name> threads=<n> ns_per_op=<ns>[ <extra>]`. */
void report(const char *name, int threads, double ns, const char *extra);
const char *yes_no(int met);

/* limiter_try_ctxclock's bucket (every try admitted) and its loop (the
 * clock supplied by the caller, as a ctx supplies it): other figures'
 * reference, measured again in their own run. */
fg_limiter *make_limiter(fg_clock clock);
uint64_t loop_try_ctxclock(void *arg, int index, uint64_t ops);

/* bench/scaleout.c: the figures on real servers (FG_BENCH_REDIS,
 * FG_BENCH_ETCD). Each returns 0, or -1 when the figure went wrong. */
int bench_cluster_try_leased(const char *name);
int bench_cluster_roundtrips(const char *name);
int bench_etcd_change_to_swap(const char *name);

#endif /* FLOODGATE_BENCH_H */
