/*
 * tests/check_retry.c - retries: the retry stage (fg_stage_retry), its
 * backoff schedule (fg_retry_backoff) and the retry budget.
 *
 * The schedule is a documented function of the seed (retry.h), so the
 * stage's attempts, timed by the handler on a fake clock, must land exactly
 * where fg_retry_backoff says, and the jitter must stay inside its bounds
 * over many seeds. Then: max_attempts and the cap; the deadline (never a
 * sleep up to or past it, and a timeout stage before the retry bounding
 * the whole request); the classifier, the default one and a custom one,
 * and a canceled request never retried; the budget's ratio exact (1,000
 * failing requests and a ratio of 0.2: 200 retries), its floor, the expiry
 * of deposits and withdrawals after the ttl, the rounding of the ratio, a
 * late reading, two stages sharing one budget; the split API (no retries
 * there); option errors and out-of-memory paths; and two threads through
 * one budget, directly and through a chain, where every ask is counted
 * once, nothing is overdrawn and no credit is lost.
 *
 * Time comes from a fake clock, never a sleep: the stage sleeps its
 * backoff on the fake clock, which advances it.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

#define US FG_NS_PER_US
#define MS FG_NS_PER_MS
#define S  FG_NS_PER_S
#define T0 (UINT64_C(1000) * S) /* a multiple of every slice used below */

#define SEED UINT64_C(0x5eed0fa11ba5e5)

/* ---- helpers --------------------------------------------------------------------------- */

/* A handler's script and record: fail the first `fails` calls (-1: all)
 * with `code`, then succeed; record the fake clock at every call. */
#define MAX_CALLS 256
typedef struct script {
    fg_fake_clock *fc;
    int fails;
    int code;
    int calls;
    uint64_t at[MAX_CALLS];
    uint64_t advance; /* added to the clock by the first call (a slow attempt) */
    int cancel;       /* the first call cancels the ctx */
} script;

static int script_handler(fg_ctx *ctx, void *arg) {
    script *sc = arg;
    if (sc->calls < MAX_CALLS)
        sc->at[sc->calls] = fg_fake_clock_now(sc->fc);
    sc->calls++;
    if (sc->calls == 1 && sc->advance)
        fg_fake_clock_advance(sc->fc, sc->advance);
    if (sc->calls == 1 && sc->cancel)
        fg_ctx_cancel(ctx);
    if (sc->fails < 0 || sc->calls <= sc->fails)
        return sc->code;
    return 0;
}

/* A stage placed after the retry stage: rejects its first `rejects`
 * entries (-1: all) with `code`. */
typedef struct rejector {
    int rejects;
    int code;
    int entered;
} rejector;

static int rejector_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    rejector *rj = state;
    (void)ctx;
    (void)slot;
    rj->entered++;
    return (rj->rejects < 0 || rj->entered <= rj->rejects) ? rj->code : 0;
}

static const fg_stage_ops rejector_ops = {"rejector", rejector_enter, NULL, NULL};

/* A retry stage (and optionally a budget and a rejector after it) in a
 * chain on a fake clock reading T0. The chain owns the stages. */
typedef struct rig {
    fg_fake_clock *fc;
    fg_chain *chain;
    const fg_stage *stage;
    fg_retry_budget *budget;
} rig;

static void rig_make_full(rig *r, fg_retry_options o, const fg_retry_budget_options *bo,
                          rejector *rj) {
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_stage *stage = NULL;

    memset(r, 0, sizeof(*r));
    ck_assert_int_eq(fg_fake_clock_new(T0, &r->fc), 0);
    co.clock = fg_fake_clock_as_clock(r->fc);
    ck_assert_int_eq(fg_chain_new(&co, &r->chain), 0);
    if (bo != NULL) {
        fg_retry_budget_options b = *bo;
        b.clock = co.clock;
        ck_assert_int_eq(fg_retry_budget_new(&b, &r->budget), 0);
        o.budget = r->budget;
    }
    o.clock = co.clock;
    int rc = fg_stage_retry(&o, "backend", &stage);
    ck_assert_msg(rc == 0, "fg_stage_retry: %s", fg_err_name(rc));
    r->stage = stage;
    ck_assert_int_eq(fg_chain_use(r->chain, stage), 0);
    if (rj != NULL) {
        ck_assert_int_eq(fg_stage_new(&rejector_ops, rj, "rejector", &stage), 0);
        ck_assert_int_eq(fg_chain_use(r->chain, stage), 0);
    }
}

static void rig_make(rig *r, fg_retry_options o) { rig_make_full(r, o, NULL, NULL); }

static void rig_free(rig *r) {
    fg_chain_free(r->chain);
    fg_retry_budget_free(r->budget);
    fg_fake_clock_free(r->fc);
}

/* One request through the rig's chain; returns fg_chain_call's code. */
static int rig_call(rig *r, script *sc, fg_ctx *ctx, uint64_t deadline) {
    th_ctx_new(ctx);
    ctx->deadline_ns = deadline;
    sc->fc = r->fc;
    return fg_chain_call(r->chain, ctx, script_handler, sc);
}

static fg_retry_stats stats_of(const fg_stage *stage) {
    fg_retry_stats s;
    ck_assert_int_eq(fg_retry_stats_get(stage, &s), 0);
    return s;
}

static fg_retry_budget_stats bstats_of(const fg_retry_budget *b) {
    fg_retry_budget_stats s;
    ck_assert_int_eq(fg_retry_budget_stats_get(b, &s), 0);
    return s;
}

/* Options with the given jitter, base and cap, doubling, a fixed seed. */
static fg_retry_options opts_with(fg_jitter j, uint64_t base, uint64_t cap,
                                  uint32_t attempts) {
    fg_retry_options o = FG_RETRY_OPTIONS_INIT;
    o.jitter = j;
    o.base_ns = base;
    o.max_backoff_ns = cap;
    o.max_attempts = attempts;
    o.seed = SEED;
    return o;
}

/* e(n) of the documented schedule for an integral multiplier. */
static uint64_t expo(uint64_t base, uint64_t mult, uint64_t cap, uint32_t n) {
    uint64_t v = base;
    for (uint32_t i = 1; i < n; i++) {
        if (v >= cap || v > UINT64_MAX / mult)
            return cap;
        v *= mult;
    }
    return v < cap ? v : cap;
}

static fg_retry_budget_options budget_opts(double ratio, uint32_t min_per_sec, uint64_t ttl) {
    fg_retry_budget_options b = FG_RETRY_BUDGET_OPTIONS_INIT;
    b.ratio = ratio;
    b.min_per_sec = min_per_sec;
    b.ttl_ns = ttl;
    return b;
}

/* ---- 1. the schedule ------------------------------------------------------------------- */

START_TEST(test_schedule_none) {
    fg_retry_options o = opts_with(FG_JITTER_NONE, 100 * MS, 1 * S, 3);
    static const uint64_t want[] = {0, 100 * MS, 200 * MS, 400 * MS, 800 * MS, 1 * S, 1 * S};
    for (uint32_t n = 0; n < (uint32_t)TH_NELEM(want); n++)
        ck_assert_uint_eq(fg_retry_backoff(&o, 7, n), want[n]);
    ck_assert_uint_eq(fg_retry_backoff(&o, 7, 1000000), 1 * S);
    ck_assert_uint_eq(fg_retry_backoff(&o, 7, UINT32_MAX), 1 * S);

    /* A multiplier of 1.5: 100, 150, 225, 337.5 ms (truncated to ns: exact here). */
    o.multiplier = 1.5;
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 1), 100 * MS);
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 2), 150 * MS);
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 3), 225 * MS);
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 4), 337500 * US);
    /* Multiplier 1: constant. */
    o.multiplier = 1.0;
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 9), 100 * MS);
    /* base == cap: constant too; base 0: always 0. */
    o = opts_with(FG_JITTER_NONE, 5 * MS, 5 * MS, 3);
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 4), 5 * MS);
    o = opts_with(FG_JITTER_NONE, 0, 5 * MS, 3);
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 4), 0);
    /* The defaults: 100 ms doubling to 10 s. */
    o = (fg_retry_options)FG_RETRY_OPTIONS_INIT;
    o.jitter = FG_JITTER_NONE;
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 1), 100 * MS);
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 7), 6400 * MS);
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 8), 10 * S);
    /* The defaults are FG_RETRY_OPTIONS_INIT's documented ones. */
    o = (fg_retry_options)FG_RETRY_OPTIONS_INIT;
    ck_assert_uint_eq(o.max_attempts, 3);
    ck_assert_uint_eq(o.base_ns, 100 * MS);
    ck_assert_uint_eq(o.max_backoff_ns, 10 * S);
    ck_assert(o.multiplier == 2.0);
    ck_assert_int_eq(o.jitter, FG_JITTER_FULL);
    ck_assert_uint_eq(o.seed, 0);
    ck_assert_ptr_null(o.budget);

    /* Not a backoff: NULL, retry 0, options fg_stage_retry refuses. */
    ck_assert_uint_eq(fg_retry_backoff(NULL, 0, 1), 0);
    o = opts_with(FG_JITTER_FULL, 100 * MS, 1 * S, 3);
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 0), 0);
    o.max_backoff_ns = 99 * MS;
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 1), 0);
    o.max_backoff_ns = 1 * S;
    o.multiplier = 0.5;
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 1), 0);
    o.multiplier = NAN;
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 1), 0);
    o.multiplier = 2;
    o.jitter = (fg_jitter)3;
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 1), 0);
}
END_TEST

/* Attempt times, as the handler sees them on the fake clock, are exactly
 * T(k+1) = T(k) + fg_retry_backoff(o, r, k+1) for request r, for each kind
 * of jitter (loop index). */
START_TEST(test_attempt_times_exact) {
    static const fg_jitter kinds[] = {FG_JITTER_NONE, FG_JITTER_FULL, FG_JITTER_DECORRELATED};
    fg_retry_options o = opts_with(kinds[_i], 10 * MS, 1 * S, 6);
    rig r;
    uint64_t total = 0;
    rig_make(&r, o);
    for (uint64_t req = 0; req < 20; req++) {
        script sc = {.fails = -1, .code = FG_EHANDLER};
        fg_ctx ctx;
        ck_assert_int_eq(rig_call(&r, &sc, &ctx, 0), FG_EHANDLER);
        ck_assert_int_eq(sc.calls, 6);
        ck_assert_uint_eq(ctx.retry_count, 5);
        for (uint32_t k = 0; k + 1 < 6; k++) {
            uint64_t want = fg_retry_backoff(&o, req, k + 1);
            ck_assert_msg(sc.at[k + 1] - sc.at[k] == want,
                          "jitter %d request %" PRIu64 " retry %u: slept %" PRIu64
                          ", schedule %" PRIu64,
                          (int)kinds[_i], req, k + 1, sc.at[k + 1] - sc.at[k], want);
            total += want;
        }
        /* Nothing sleeps after the last attempt. */
        ck_assert_uint_eq(fg_fake_clock_now(r.fc), sc.at[5]);
    }
    fg_retry_stats st = stats_of(r.stage);
    ck_assert_uint_eq(st.retries, 100);
    ck_assert_uint_eq(st.refused_attempts, 20);
    ck_assert_uint_eq(st.not_retryable + st.refused_deadline + st.refused_budget, 0);
    ck_assert_uint_eq(st.backoff_ns_total, total);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0 + total);
    rig_free(&r);
}
END_TEST

/* Full jitter: every backoff in [0, e(n)], and spread over it (mean near
 * e(n) / 2, both ends reached) over 500 seeds x 4 requests x 10 retries. */
START_TEST(test_full_jitter_bounds) {
    fg_retry_options o = opts_with(FG_JITTER_FULL, 100 * MS, 10 * S, 3);
    double sum = 0, lo = 1, hi = 0;
    int n_draws = 0;
    for (uint64_t seed = 1; seed <= 500; seed++) {
        o.seed = seed * UINT64_C(0x9e3779b97f4a7c15);
        for (uint64_t req = 0; req < 4; req++) {
            for (uint32_t n = 1; n <= 10; n++) {
                uint64_t b = fg_retry_backoff(&o, req, n);
                uint64_t e = expo(100 * MS, 2, 10 * S, n);
                TH_FAST_ASSERT(b <= e, "full: seed %" PRIu64 " n %u: %" PRIu64 " > %" PRIu64,
                               seed, n, b, e);
                double f = (double)b / (double)e;
                sum += f;
                lo = f < lo ? f : lo;
                hi = f > hi ? f : hi;
                n_draws++;
            }
        }
    }
    double mean = sum / n_draws;
    ck_assert_msg(fabs(mean - 0.5) < 0.02, "full jitter mean fraction %.4f", mean);
    ck_assert_msg(lo < 0.001 && hi > 0.999, "full jitter range [%.4f, %.4f]", lo, hi);
}
END_TEST

/* Decorrelated jitter: b(n) in [base, min(cap, 3 b(n-1))], b(0) = base,
 * never above the cap, and it does reach the cap. */
START_TEST(test_decorrelated_bounds) {
    const uint64_t base = 100 * MS, cap = 5 * S;
    fg_retry_options o = opts_with(FG_JITTER_DECORRELATED, base, cap, 3);
    int at_cap = 0, n_draws = 0;
    double sum_rel = 0;
    for (uint64_t seed = 1; seed <= 500; seed++) {
        o.seed = seed * UINT64_C(0xbf58476d1ce4e5b9);
        for (uint64_t req = 0; req < 4; req++) {
            uint64_t prev = base;
            for (uint32_t n = 1; n <= 12; n++) {
                uint64_t b = fg_retry_backoff(&o, req, n);
                uint64_t top = prev * 3 < cap ? prev * 3 : cap;
                TH_FAST_ASSERT(b >= base && b <= top,
                               "decorrelated: seed %" PRIu64 " n %u: %" PRIu64
                               " outside [%" PRIu64 ", %" PRIu64 "]",
                               seed, n, b, base, top);
                if (prev * 3 <= cap) {
                    /* Uncapped: uniform over [base, 3 prev]. */
                    sum_rel += (double)(b - base) / (double)(prev * 3 - base);
                    n_draws++;
                }
                at_cap += b == cap;
                prev = b;
            }
        }
    }
    double mean = sum_rel / n_draws;
    ck_assert_msg(fabs(mean - 0.5) < 0.03, "decorrelated mean position %.4f", mean);
    ck_assert_int_gt(at_cap, 100);
}
END_TEST

/* The same seed gives the same schedule in two stages; another seed does
 * not; seed 0 gives each request its own random stream. */
START_TEST(test_seed_reproducible) {
    fg_retry_options o = opts_with(FG_JITTER_FULL, 10 * MS, 10 * S, 5);
    uint64_t gaps[3][8][4];
    for (int v = 0; v < 3; v++) {
        rig r;
        o.seed = v == 2 ? SEED + 1 : SEED;
        rig_make(&r, o);
        for (int req = 0; req < 8; req++) {
            script sc = {.fails = -1, .code = FG_EHANDLER};
            fg_ctx ctx;
            rig_call(&r, &sc, &ctx, 0);
            for (int k = 0; k < 4; k++)
                gaps[v][req][k] = sc.at[k + 1] - sc.at[k];
        }
        rig_free(&r);
    }
    ck_assert(memcmp(gaps[0], gaps[1], sizeof(gaps[0])) == 0);
    ck_assert(memcmp(gaps[0], gaps[2], sizeof(gaps[0])) != 0);

    /* Seed 0: two stages (and two requests) do not repeat each other. */
    o.seed = 0;
    uint64_t first[2][4];
    for (int v = 0; v < 2; v++) {
        rig r;
        rig_make(&r, o);
        script sc = {.fails = -1, .code = FG_EHANDLER};
        fg_ctx ctx;
        rig_call(&r, &sc, &ctx, 0);
        for (int k = 0; k < 4; k++) {
            first[v][k] = sc.at[k + 1] - sc.at[k];
            ck_assert_uint_le(first[v][k], expo(10 * MS, 2, 10 * S, (uint32_t)k + 1));
        }
        rig_free(&r);
    }
    ck_assert(memcmp(first[0], first[1], sizeof(first[0])) != 0);
}
END_TEST

/* ---- 2. attempts and the cap ----------------------------------------------------------- */

/* max_attempts 1 .. 6 (loop index + 1): exactly that many calls. */
START_TEST(test_max_attempts) {
    uint32_t max = (uint32_t)_i + 1;
    rig r;
    rig_make(&r, opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, max));
    script sc = {.fails = -1, .code = FG_EHANDLER};
    fg_ctx ctx;
    ck_assert_int_eq(rig_call(&r, &sc, &ctx, 0), FG_EHANDLER);
    ck_assert_int_eq(sc.calls, (int)max);
    ck_assert_uint_eq(ctx.retry_count, max - 1);
    ck_assert_int_eq(ctx.status, FG_EHANDLER);
    ck_assert_uint_eq(ctx.now_ns, T0); /* the chain gives back the start time */
    fg_retry_stats st = stats_of(r.stage);
    ck_assert_uint_eq(st.retries, max - 1);
    ck_assert_uint_eq(st.refused_attempts, 1);
    rig_free(&r);
}
END_TEST

START_TEST(test_success_after_failures) {
    rig r;
    rig_make(&r, opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, 5));
    script sc = {.fails = 2, .code = FG_ETIMEDOUT};
    fg_ctx ctx;
    ck_assert_int_eq(rig_call(&r, &sc, &ctx, 0), 0);
    ck_assert_int_eq(sc.calls, 3);
    ck_assert_uint_eq(sc.at[1] - sc.at[0], 1 * MS);
    ck_assert_uint_eq(sc.at[2] - sc.at[1], 2 * MS);
    ck_assert_uint_eq(ctx.retry_count, 2);
    fg_retry_stats st = stats_of(r.stage);
    ck_assert_uint_eq(st.retries, 2);
    ck_assert_uint_eq(st.refused_attempts + st.not_retryable, 0);
    /* A success on the first attempt: nothing counted, nothing slept. */
    script ok = {.fails = 0};
    uint64_t before = fg_fake_clock_now(r.fc);
    ck_assert_int_eq(rig_call(&r, &ok, &ctx, 0), 0);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), before);
    ck_assert_uint_eq(stats_of(r.stage).retries, 2);
    rig_free(&r);
}
END_TEST

/* FG_RETRY_MAX_ATTEMPTS: the chain honours all of them (100 retries). */
START_TEST(test_max_attempts_bound) {
    rig r;
    rig_make(&r, opts_with(FG_JITTER_NONE, 0, 0, FG_RETRY_MAX_ATTEMPTS));
    script sc = {.fails = -1, .code = FG_EHANDLER};
    fg_ctx ctx;
    ck_assert_int_eq(rig_call(&r, &sc, &ctx, 0), FG_EHANDLER);
    ck_assert_int_eq(sc.calls, FG_RETRY_MAX_ATTEMPTS);
    ck_assert_uint_eq(ctx.retry_count, FG_RETRY_MAX_ATTEMPTS - 1);
    /* base 0: retried at once, the clock never moved. */
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0);
    ck_assert_uint_eq(stats_of(r.stage).retries, FG_RETRY_MAX_ATTEMPTS - 1);
    rig_free(&r);
}
END_TEST

/* The cap: NONE with multiplier 10 goes 1, 10, 50, 50, 50 ms; with jitter
 * nothing ever exceeds the cap. */
START_TEST(test_cap) {
    fg_retry_options o = opts_with(FG_JITTER_NONE, 1 * MS, 50 * MS, 6);
    o.multiplier = 10;
    rig r;
    rig_make(&r, o);
    script sc = {.fails = -1, .code = FG_EHANDLER};
    fg_ctx ctx;
    rig_call(&r, &sc, &ctx, 0);
    static const uint64_t want[] = {1 * MS, 10 * MS, 50 * MS, 50 * MS, 50 * MS};
    for (int k = 0; k < 5; k++)
        ck_assert_uint_eq(sc.at[k + 1] - sc.at[k], want[k]);
    rig_free(&r);

    for (int j = FG_JITTER_FULL; j <= FG_JITTER_DECORRELATED; j++) {
        o = opts_with((fg_jitter)j, 1 * MS, 7 * MS, 3);
        for (uint64_t req = 0; req < 2000; req++)
            for (uint32_t n = 1; n <= 30; n++)
                TH_FAST_ASSERT(fg_retry_backoff(&o, req, n) <= 7 * MS, "above the cap");
    }
    /* A huge multiplier and cap: saturates at the cap, no overflow. */
    o = opts_with(FG_JITTER_NONE, UINT64_MAX / 2, UINT64_MAX, 3);
    o.multiplier = FG_RETRY_MULTIPLIER_MAX;
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 1), UINT64_MAX / 2 + 1); /* double rounding */
    ck_assert_uint_eq(fg_retry_backoff(&o, 0, 2), UINT64_MAX);
    o.jitter = FG_JITTER_DECORRELATED;
    ck_assert_uint_ge(fg_retry_backoff(&o, 0, 5), UINT64_MAX / 2);
}
END_TEST

/* ---- 3. the deadline ------------------------------------------------------------------- */

/* 100, 200, 400 ms then 800 ms: with the deadline at T0 + 1 s the attempts
 * are at 0, 100, 300, 700 ms and the fourth retry (700 + 800 >= 1000) is
 * refused without sleeping. */
START_TEST(test_deadline_stops) {
    rig r;
    rig_make(&r, opts_with(FG_JITTER_NONE, 100 * MS, 10 * S, 10));
    script sc = {.fails = -1, .code = FG_EHANDLER};
    fg_ctx ctx;
    ck_assert_int_eq(rig_call(&r, &sc, &ctx, T0 + 1 * S), FG_EHANDLER);
    ck_assert_int_eq(sc.calls, 4);
    ck_assert_uint_eq(sc.at[3], T0 + 700 * MS);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0 + 700 * MS); /* no sleep past it */
    fg_retry_stats st = stats_of(r.stage);
    ck_assert_uint_eq(st.retries, 3);
    ck_assert_uint_eq(st.refused_deadline, 1);
    ck_assert_uint_eq(st.refused_attempts, 0);
    rig_free(&r);
}
END_TEST

/* The boundary: a next attempt that would start exactly at the deadline is
 * refused; one nanosecond earlier it is made. With jitter, over many
 * requests, no attempt ever starts at or after the deadline. */
START_TEST(test_deadline_boundary) {
    rig r;
    rig_make(&r, opts_with(FG_JITTER_NONE, 100 * MS, 10 * S, 10));
    script sc = {.fails = -1, .code = FG_EHANDLER};
    fg_ctx ctx;
    rig_call(&r, &sc, &ctx, T0 + 1500 * MS);
    ck_assert_int_eq(sc.calls, 4); /* 700 + 800 = 1500: refused */
    rig_free(&r);

    rig_make(&r, opts_with(FG_JITTER_NONE, 100 * MS, 10 * S, 10));
    script sc2 = {.fails = -1, .code = FG_EHANDLER};
    rig_call(&r, &sc2, &ctx, T0 + 1500 * MS + 1);
    ck_assert_int_eq(sc2.calls, 5);
    ck_assert_uint_eq(sc2.at[4], T0 + 1500 * MS);
    rig_free(&r);

    for (int j = FG_JITTER_FULL; j <= FG_JITTER_DECORRELATED; j++) {
        rig_make(&r, opts_with((fg_jitter)j, 50 * MS, 10 * S, 20));
        for (int req = 0; req < 200; req++) {
            script s3 = {.fails = -1, .code = FG_EHANDLER};
            uint64_t start = fg_fake_clock_now(r.fc), deadline = start + 2 * S;
            rig_call(&r, &s3, &ctx, deadline);
            for (int k = 0; k < s3.calls && k < MAX_CALLS; k++)
                TH_FAST_ASSERT(s3.at[k] < deadline, "attempt %d at the deadline", k);
            TH_FAST_ASSERT(fg_fake_clock_now(r.fc) < deadline, "slept to the deadline");
        }
        fg_retry_stats st = stats_of(r.stage);
        ck_assert_uint_eq(st.refused_deadline + st.refused_attempts, 200);
        rig_free(&r);
    }
}
END_TEST

/* An attempt that itself ran past the deadline is not retried. */
START_TEST(test_deadline_passed) {
    rig r;
    rig_make(&r, opts_with(FG_JITTER_NONE, 1 * MS, 10 * S, 5));
    script sc = {.fails = -1, .code = FG_ETIMEDOUT, .advance = 2 * S};
    fg_ctx ctx;
    ck_assert_int_eq(rig_call(&r, &sc, &ctx, T0 + 1 * S), FG_ETIMEDOUT);
    ck_assert_int_eq(sc.calls, 1);
    ck_assert_uint_eq(stats_of(r.stage).refused_deadline, 1);
    rig_free(&r);
}
END_TEST

/* A timeout stage before the retry stage bounds the whole request: 250 ms
 * from its start leaves room for attempts at 0 and 100 ms, and the retry
 * to 300 ms is refused. */
START_TEST(test_deadline_timeout_stage) {
    fg_fake_clock *fc;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    fg_clock clock = fg_fake_clock_as_clock(fc);
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.clock = clock;
    fg_chain *chain;
    ck_assert_int_eq(fg_chain_new(&co, &chain), 0);
    fg_timeout_options to = FG_TIMEOUT_OPTIONS_INIT;
    to.timeout_ns = 250 * MS;
    fg_stage *s;
    ck_assert_int_eq(fg_stage_timeout(&to, NULL, &s), 0);
    ck_assert_int_eq(fg_chain_use(chain, s), 0);
    fg_retry_options o = opts_with(FG_JITTER_NONE, 100 * MS, 10 * S, 5);
    o.clock = clock;
    ck_assert_int_eq(fg_stage_retry(&o, NULL, &s), 0);
    const fg_stage *retry = s;
    ck_assert_int_eq(fg_chain_use(chain, s), 0);
    script sc = {.fails = -1, .code = FG_EHANDLER, .fc = fc};
    fg_ctx ctx;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, script_handler, &sc), FG_EHANDLER);
    ck_assert_int_eq(sc.calls, 2);
    ck_assert_uint_eq(sc.at[1], T0 + 100 * MS);
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 250 * MS);
    ck_assert_uint_eq(stats_of(retry).refused_deadline, 1);
    ck_assert_uint_eq(fg_fake_clock_now(fc), T0 + 100 * MS);
    fg_chain_free(chain);
    fg_fake_clock_free(fc);
}
END_TEST

/* ---- 4. what is retried ---------------------------------------------------------------- */

START_TEST(test_default_classifier) {
    static const struct {
        fg_outcome_kind kind;
        int code;
        int want;
    } table[] = {
        {FG_OUTCOME_FAILED, FG_EHANDLER, 1},
        {FG_OUTCOME_FAILED, FG_ETIMEDOUT, 1},
        {FG_OUTCOME_FAILED, FG_ELIMITED, 1},
        {FG_OUTCOME_FAILED, -42, 1},
        {FG_OUTCOME_FAILED, FG_ECANCELED, 0},
        {FG_OUTCOME_REJECTED, FG_ELIMITED, 0},
        {FG_OUTCOME_REJECTED, FG_EBREAKER, 0},
        {FG_OUTCOME_REJECTED, FG_ETIMEDOUT, 0},
        {FG_OUTCOME_REJECTED, FG_EOVERLOADED, 0},
        {FG_OUTCOME_REJECTED, FG_ECANCELED, 0},
        {FG_OUTCOME_OK, 0, 0},
    };
    fg_ctx ctx;
    th_ctx_new(&ctx);
    for (int i = 0; i < TH_NELEM(table); i++) {
        fg_outcome out = {table[i].kind, table[i].code, 0, NULL};
        ck_assert_msg(fg_retry_classify_default(&ctx, &out, NULL) == table[i].want,
                      "kind %d code %s", (int)table[i].kind, fg_err_name(table[i].code));
    }
    ck_assert_int_eq(fg_retry_classify_default(&ctx, NULL, NULL), 0);

    /* Through a chain: a later stage's rejection is final; the stage after
     * was entered once and the handler never ran. */
    static const int codes[] = {FG_ELIMITED, FG_EBREAKER, FG_EOVERLOADED, FG_ETIMEDOUT,
                                FG_EINJECTED};
    for (int i = 0; i < TH_NELEM(codes); i++) {
        rejector rj = {.rejects = -1, .code = codes[i]};
        rig r;
        rig_make_full(&r, opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, 5), NULL, &rj);
        script sc = {.fails = 0};
        fg_ctx c2;
        ck_assert_int_eq(rig_call(&r, &sc, &c2, 0), codes[i]);
        ck_assert_int_eq(rj.entered, 1);
        ck_assert_int_eq(sc.calls, 0);
        ck_assert_uint_eq(stats_of(r.stage).not_retryable, 1);
        rig_free(&r);
    }
}
END_TEST

/* A custom classifier: retry rejections with FG_EOVERLOADED (a bulkhead
 * that was full), nothing else. It sees the ctx, the outcome and its arg. */
typedef struct classify_log {
    int calls;
    int last_kind;
    int last_code;
    const fg_ctx *ctx;
    int answer; /* -1: retry FG_EOVERLOADED rejections only; else this */
} classify_log;

static int log_classifier(const fg_ctx *ctx, const fg_outcome *outcome, void *arg) {
    classify_log *lg = arg;
    lg->calls++;
    lg->last_kind = (int)outcome->kind;
    lg->last_code = outcome->code;
    lg->ctx = ctx;
    if (lg->answer >= 0)
        return lg->answer;
    return outcome->kind == FG_OUTCOME_REJECTED && outcome->code == FG_EOVERLOADED;
}

START_TEST(test_custom_classifier) {
    classify_log lg = {.answer = -1};
    rejector rj = {.rejects = 2, .code = FG_EOVERLOADED};
    fg_retry_options o = opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, 5);
    o.classify = log_classifier;
    o.classify_arg = &lg;
    rig r;
    rig_make_full(&r, o, NULL, &rj);
    script sc = {.fails = 0};
    fg_ctx ctx;
    ck_assert_int_eq(rig_call(&r, &sc, &ctx, 0), 0);
    ck_assert_int_eq(rj.entered, 3);
    ck_assert_int_eq(sc.calls, 1);
    ck_assert_int_eq(lg.calls, 2); /* never for the success */
    ck_assert_ptr_eq(lg.ctx, &ctx);
    ck_assert_int_eq(lg.last_kind, FG_OUTCOME_REJECTED);
    ck_assert_uint_eq(stats_of(r.stage).retries, 2);

    /* The handler's failures are final for this classifier. */
    script fail = {.fails = -1, .code = FG_EHANDLER};
    ck_assert_int_eq(rig_call(&r, &fail, &ctx, 0), FG_EHANDLER);
    ck_assert_int_eq(fail.calls, 1);
    ck_assert_int_eq(lg.calls, 3);
    ck_assert_int_eq(lg.last_kind, FG_OUTCOME_FAILED);
    ck_assert_int_eq(lg.last_code, FG_EHANDLER);
    ck_assert_uint_eq(stats_of(r.stage).not_retryable, 1);
    rig_free(&r);
}
END_TEST

/* FG_ECANCELED is never retried, whatever the classifier says, and neither
 * is an attempt whose ctx was canceled while it ran. */
START_TEST(test_canceled_never) {
    classify_log lg = {.answer = 1};
    fg_retry_options o = opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, 5);
    o.classify = log_classifier;
    o.classify_arg = &lg;
    rig r;
    rig_make(&r, o);
    script sc = {.fails = -1, .code = FG_ECANCELED};
    fg_ctx ctx;
    ck_assert_int_eq(rig_call(&r, &sc, &ctx, 0), FG_ECANCELED);
    ck_assert_int_eq(sc.calls, 1);
    ck_assert_int_eq(lg.calls, 0);

    script sc2 = {.fails = -1, .code = FG_EHANDLER, .cancel = 1};
    ck_assert_int_eq(rig_call(&r, &sc2, &ctx, 0), FG_EHANDLER);
    ck_assert_int_eq(sc2.calls, 1);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0); /* no backoff slept */

    /* The classifier does retry everything else. */
    script sc3 = {.fails = 1, .code = FG_EHANDLER};
    ck_assert_int_eq(rig_call(&r, &sc3, &ctx, 0), 0);
    ck_assert_int_eq(sc3.calls, 2);
    fg_retry_stats st = stats_of(r.stage);
    ck_assert_uint_eq(st.not_retryable, 2);
    ck_assert_uint_eq(st.retries, 1);
    rig_free(&r);
}
END_TEST

/* ---- 5. the budget --------------------------------------------------------------------- */

/* Ratio 0.2, no floor: 1,000 requests that always fail get exactly 200
 * retries (every fifth request's first retry; its second is refused). */
START_TEST(test_budget_ratio) {
    fg_retry_budget_options bo = budget_opts(0.2, 0, 10 * S);
    rig r;
    rig_make_full(&r, opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, 3), &bo, NULL);
    int calls = 0;
    for (int req = 1; req <= 1000; req++) {
        script sc = {.fails = -1, .code = FG_EHANDLER};
        fg_ctx ctx;
        rig_call(&r, &sc, &ctx, 0);
        TH_FAST_ASSERT(sc.calls == (req % 5 == 0 ? 2 : 1), "request %d: %d calls", req,
                       sc.calls);
        calls += sc.calls;
    }
    ck_assert_int_eq(calls, 1200);
    fg_retry_stats st = stats_of(r.stage);
    ck_assert_uint_eq(st.retries, 200);
    ck_assert_uint_eq(st.refused_budget, 1000);
    ck_assert_uint_eq(st.refused_attempts, 0);
    fg_retry_budget_stats bs = bstats_of(r.budget);
    ck_assert_uint_eq(bs.deposits, 1000);
    ck_assert_uint_eq(bs.allowed, 200);
    ck_assert_uint_eq(bs.refused, 1000);
    ck_assert_uint_eq(bs.available, 0);
    rig_free(&r);
}
END_TEST

/* The floor: 40 failing requests 100 ms apart want 80 retries; the ratio
 * alone covers 8, the floor (10/s over 10 s: 100) covers all of them. */
START_TEST(test_budget_floor) {
    for (int floor_on = 0; floor_on <= 1; floor_on++) {
        fg_retry_budget_options bo = budget_opts(0.2, floor_on ? 10 : 0, 10 * S);
        rig r;
        rig_make_full(&r, opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, 3), &bo, NULL);
        for (int req = 0; req < 40; req++) {
            script sc = {.fails = -1, .code = FG_EHANDLER};
            fg_ctx ctx;
            rig_call(&r, &sc, &ctx, 0);
            fg_fake_clock_advance(r.fc, 100 * MS);
        }
        fg_retry_stats st = stats_of(r.stage);
        ck_assert_uint_eq(st.retries, floor_on ? 80 : 8);
        ck_assert_uint_eq(bstats_of(r.budget).available, floor_on ? 100 - 80 + 8 : 0);
        rig_free(&r);
    }
}
END_TEST

/* The floor alone, by hand: 1/s over 10 s is 10 retries per window; the
 * withdrawals count for the ttl, then the floor is whole again. */
START_TEST(test_budget_floor_window) {
    fg_fake_clock *fc;
    fg_retry_budget *b;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    fg_retry_budget_options bo = budget_opts(0, 1, 10 * S);
    bo.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    ck_assert_uint_eq(bstats_of(b).available, 10);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 0);
    fg_fake_clock_set(fc, T0 + 10 * S - 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 0);
    ck_assert_uint_eq(bstats_of(b).available, 0);
    fg_fake_clock_set(fc, T0 + 10 * S);
    ck_assert_uint_eq(bstats_of(b).available, 10);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 0);
    fg_retry_budget_stats bs = bstats_of(b);
    ck_assert_uint_eq(bs.allowed, 20);
    ck_assert_uint_eq(bs.refused, 3);
    ck_assert_uint_eq(bs.deposits, 0);
    /* Deposits at ratio 0 credit nothing. */
    fg_retry_budget_deposit(b);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 0);
    ck_assert_uint_eq(bstats_of(b).deposits, 1);
    fg_retry_budget_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/* Deposits expire: with 1 s slices, a deposit made half-way through slice
 * s0 counts until slice s0 + 10 begins, 9.5 s later (between ttl - slice
 * and ttl, as documented). */
START_TEST(test_budget_ttl) {
    fg_fake_clock *fc;
    fg_retry_budget *b;
    const uint64_t t = T0 + 500 * MS;
    ck_assert_int_eq(fg_fake_clock_new(t, &fc), 0);
    fg_retry_budget_options bo = budget_opts(1.0, 0, 10 * S);
    bo.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    for (int i = 0; i < 3; i++)
        fg_retry_budget_deposit(b);
    ck_assert_uint_eq(bstats_of(b).available, 3);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 1);
    fg_fake_clock_set(fc, t + 9500 * MS - 1);
    ck_assert_uint_eq(bstats_of(b).available, 2);
    /* Slice 1010: slice 1000's deposits and its withdrawal have both expired. */
    fg_fake_clock_set(fc, t + 9500 * MS);
    ck_assert_uint_eq(bstats_of(b).available, 0);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 0);
    fg_retry_budget_deposit(b);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 0);
    /* Long idle (many laps of the ring): everything old has expired. */
    fg_retry_budget_deposit(b);
    fg_fake_clock_advance(fc, 3600 * S);
    ck_assert_uint_eq(bstats_of(b).available, 0);
    fg_retry_budget_deposit(b);
    fg_retry_budget_deposit(b);
    ck_assert_uint_eq(bstats_of(b).available, 2);
    fg_retry_budget_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/* The ratio is kept in thousandths: 0.001 and 0.0005 credit one thousandth
 * per deposit, 0.0004 nothing. */
START_TEST(test_budget_rounding) {
    static const struct {
        double ratio;
        int deposits_per_retry; /* 0: never */
    } table[] = {{0.001, 1000}, {0.0005, 1000}, {0.0004, 0}, {0.25, 4}, {1.0, 1}, {0.5, 2}};
    for (int i = 0; i < TH_NELEM(table); i++) {
        fg_retry_budget *b;
        fg_retry_budget_options bo = budget_opts(table[i].ratio, 0, 10 * S);
        ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
        int per = table[i].deposits_per_retry;
        for (int k = 1; k <= 2000; k++) {
            fg_retry_budget_deposit_at(b, T0);
            int want = per != 0 && k % per == 0;
            TH_FAST_ASSERT(fg_retry_budget_try_withdraw_at(b, T0) == want,
                           "ratio %g deposit %d", table[i].ratio, k);
        }
        fg_retry_budget_free(b);
    }
    /* Ratio 2: every deposit covers two retries. */
    fg_retry_budget *b;
    fg_retry_budget_options bo = budget_opts(2.0, 0, 10 * S);
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    fg_retry_budget_deposit_at(b, T0);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, T0), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, T0), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, T0), 0);
    fg_retry_budget_free(b);
}
END_TEST

/* A reading more than a window older than the newest slice the budget has
 * seen (a stalled thread, a clock set back): its deposit still counts, as
 * one made in the newest slice, and its withdrawal is refused. */
START_TEST(test_budget_late_reading) {
    fg_retry_budget *b;
    fg_retry_budget_options bo = budget_opts(1.0, 0, 10 * S);
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    const uint64_t late = T0, now = T0 + 11 * S;
    fg_retry_budget_deposit_at(b, now);
    fg_retry_budget_deposit_at(b, late); /* counted with the newest slice */
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, late), 0);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, now), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, now), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, now), 0);
    /* A reading one slice back is in the window: an ordinary deposit. Its
     * withdrawal does not see slice 1011's two (the boundary case retry.h
     * describes), so it is allowed; a reading in 1011 sees them all. */
    fg_retry_budget_deposit_at(b, now - 1 * S);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, now - 1 * S), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, now), 0);
    fg_retry_budget_stats bs;
    ck_assert_int_eq(fg_retry_budget_stats_get(b, &bs), 0);
    ck_assert_uint_eq(bs.deposits, 3);
    ck_assert_uint_eq(bs.allowed, 3);
    ck_assert_uint_eq(bs.refused, 3);
    /* Slice 1021: every deposit so far has left the window. */
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, now + 10 * S), 0);
    fg_retry_budget_free(b);

    /* The clock near zero: slices before 0 simply do not exist. */
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    fg_retry_budget_deposit_at(b, 0);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, 5 * S), 1);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, 5 * S), 0);
    fg_retry_budget_deposit_at(b, 6 * S);
    /* Slice 10: slice 0's deposit has expired, slice 5's withdrawal not. */
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, 10 * S), 0);
    /* Slice 15: slice 5's withdrawal has expired, slice 6's deposit not. */
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(b, 15 * S), 1);
    fg_retry_budget_free(b);
}
END_TEST

/* One budget, two chains: both deposit, either may spend. */
START_TEST(test_budget_shared) {
    fg_fake_clock *fc;
    fg_retry_budget *b;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    fg_clock clock = fg_fake_clock_as_clock(fc);
    fg_retry_budget_options bo = budget_opts(0.5, 0, 10 * S);
    bo.clock = clock;
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    fg_chain *chains[2];
    const fg_stage *stages[2];
    for (int i = 0; i < 2; i++) {
        fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
        co.clock = clock;
        ck_assert_int_eq(fg_chain_new(&co, &chains[i]), 0);
        fg_retry_options o = opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, 2);
        o.budget = b;
        o.clock = clock;
        fg_stage *s;
        ck_assert_int_eq(fg_stage_retry(&o, NULL, &s), 0);
        stages[i] = s;
        ck_assert_int_eq(fg_chain_use(chains[i], s), 0);
    }
    /* Four successes through chain 0 deposit two retries' worth ... */
    for (int i = 0; i < 4; i++) {
        script ok = {.fails = 0, .fc = fc};
        fg_ctx ctx;
        th_ctx_new(&ctx);
        ck_assert_int_eq(fg_chain_call(chains[0], &ctx, script_handler, &ok), 0);
    }
    /* ... which chain 1's failures spend (plus their own half each). */
    int calls = 0;
    for (int i = 0; i < 4; i++) {
        script sc = {.fails = -1, .code = FG_EHANDLER, .fc = fc};
        fg_ctx ctx;
        th_ctx_new(&ctx);
        fg_chain_call(chains[1], &ctx, script_handler, &sc);
        calls += sc.calls;
    }
    ck_assert_int_eq(calls, 8); /* 2 + 4 x 0.5 = 4 retries */
    ck_assert_uint_eq(stats_of(stages[1]).retries, 4);
    ck_assert_uint_eq(stats_of(stages[0]).retries, 0);
    fg_retry_budget_stats bs = bstats_of(b);
    ck_assert_uint_eq(bs.deposits, 8);
    ck_assert_uint_eq(bs.allowed, 4);
    for (int i = 0; i < 2; i++)
        fg_chain_free(chains[i]);
    fg_retry_budget_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

START_TEST(test_budget_options) {
    fg_retry_budget *b = NULL;
    fg_retry_budget_options bo = FG_RETRY_BUDGET_OPTIONS_INIT;
    ck_assert(bo.ratio == 0.2);
    ck_assert_uint_eq(bo.min_per_sec, 10);
    ck_assert_uint_eq(bo.ttl_ns, 10 * S);
    ck_assert(bo.clock.now == NULL);

    ck_assert_int_eq(fg_retry_budget_new(&bo, NULL), FG_EINVAL);
    bo.ratio = NAN;
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), FG_EINVAL);
    static const double bad_ratio[] = {-0.001, -1, 100.001, 1e9, INFINITY, -INFINITY};
    for (int i = 0; i < TH_NELEM(bad_ratio); i++) {
        bo.ratio = bad_ratio[i];
        ck_assert_msg(fg_retry_budget_new(&bo, &b) == FG_ERANGE, "ratio %g", bad_ratio[i]);
    }
    static const double good_ratio[] = {0, 0.2, 1, FG_RETRY_BUDGET_RATIO_MAX};
    for (int i = 0; i < TH_NELEM(good_ratio); i++) {
        bo.ratio = good_ratio[i];
        ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
        fg_retry_budget_free(b);
    }
    bo.ratio = 0.2;
    static const uint64_t bad_ttl[] = {0, FG_RETRY_BUDGET_TTL_MIN_NS - 1,
                                       FG_RETRY_BUDGET_TTL_MAX_NS + 1, UINT64_MAX};
    for (int i = 0; i < TH_NELEM(bad_ttl); i++) {
        bo.ttl_ns = bad_ttl[i];
        ck_assert_int_eq(fg_retry_budget_new(&bo, &b), FG_ERANGE);
    }
    b = NULL;
    bo.ttl_ns = FG_RETRY_BUDGET_TTL_MIN_NS;
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    fg_retry_budget_free(b);
    /* The largest floor over the longest ttl fits. */
    bo.ttl_ns = FG_RETRY_BUDGET_TTL_MAX_NS;
    bo.min_per_sec = UINT32_MAX;
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    ck_assert_uint_eq(bstats_of(b).available, (uint64_t)UINT32_MAX * 3600);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(b), 1);
    fg_retry_budget_free(b);

    /* NULL options: the defaults (a floor of 10/s over 10 s: 100 retries). */
    ck_assert_int_eq(fg_retry_budget_new(NULL, &b), 0);
    ck_assert_uint_eq(bstats_of(b).available, 100);
    fg_retry_budget_stats bs;
    ck_assert_int_eq(fg_retry_budget_stats_get(b, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_retry_budget_stats_get(NULL, &bs), FG_EINVAL);
    fg_retry_budget_free(b);
    fg_retry_budget_free(NULL);
    fg_retry_budget_deposit(NULL);
    fg_retry_budget_deposit_at(NULL, 0);
    ck_assert_int_eq(fg_retry_budget_try_withdraw(NULL), FG_EINVAL);
    ck_assert_int_eq(fg_retry_budget_try_withdraw_at(NULL, 0), FG_EINVAL);
}
END_TEST

/* ---- 6. the split API ------------------------------------------------------------------ */

/* After fg_chain_enter the outcome is final: the stage deposits, and its
 * exit neither sleeps nor withdraws nor counts. */
START_TEST(test_split_no_retry) {
    fg_retry_budget_options bo = budget_opts(1.0, 10, 10 * S);
    rig r;
    rig_make_full(&r, opts_with(FG_JITTER_NONE, 1 * MS, 1 * S, 5), &bo, NULL);
    fg_ctx ctx;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, FG_EHANDLER), 0);
    ck_assert_uint_eq(ctx.retry_count, 0);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0);
    fg_retry_stats st = stats_of(r.stage);
    ck_assert(th_is_zero(&st, sizeof(st)));
    fg_retry_budget_stats bs = bstats_of(r.budget);
    ck_assert_uint_eq(bs.deposits, 1);
    ck_assert_uint_eq(bs.allowed + bs.refused, 0);
    rig_free(&r);
}
END_TEST

/* ---- 7. options ------------------------------------------------------------------------ */

static int make_rc(const fg_retry_options *o, const char *name) {
    fg_stage *s = NULL;
    int rc = fg_stage_retry(o, name, &s);
    if (rc == 0) {
        ck_assert_ptr_nonnull(s);
        fg_stage_unref(s);
    } else {
        ck_assert_ptr_null(s);
    }
    return rc;
}

START_TEST(test_bad_options) {
    fg_retry_options o = FG_RETRY_OPTIONS_INIT;
    fg_stage *s = NULL;
    char name[FG_STAGE_NAME_MAX + 2];

    ck_assert_int_eq(make_rc(&o, NULL), 0);
    ck_assert_int_eq(fg_stage_retry(NULL, NULL, &s), FG_EINVAL);
    ck_assert_int_eq(fg_stage_retry(&o, NULL, NULL), FG_EINVAL);

    static const struct {
        uint32_t n;
        int rc;
    } attempts[] = {{0, FG_ERANGE},
                    {1, 0},
                    {3, 0},
                    {FG_RETRY_MAX_ATTEMPTS, 0},
                    {FG_RETRY_MAX_ATTEMPTS + 1, FG_ERANGE},
                    {UINT32_MAX, FG_ERANGE}};
    for (int i = 0; i < TH_NELEM(attempts); i++) {
        o = (fg_retry_options)FG_RETRY_OPTIONS_INIT;
        o.max_attempts = attempts[i].n;
        ck_assert_msg(make_rc(&o, NULL) == attempts[i].rc, "max_attempts %u", attempts[i].n);
    }
    static const struct {
        double m;
        int rc;
    } mults[] = {
        {1.0, 0},        {1.5, 0},        {FG_RETRY_MULTIPLIER_MAX, 0}, {0.999, FG_ERANGE},
        {0, FG_ERANGE},  {-2, FG_ERANGE}, {1000.5, FG_ERANGE},          {INFINITY, FG_ERANGE},
        {NAN, FG_EINVAL}};
    for (int i = 0; i < TH_NELEM(mults); i++) {
        o = (fg_retry_options)FG_RETRY_OPTIONS_INIT;
        o.multiplier = mults[i].m;
        ck_assert_msg(make_rc(&o, NULL) == mults[i].rc, "multiplier %g", mults[i].m);
    }
    o = (fg_retry_options)FG_RETRY_OPTIONS_INIT;
    o.jitter = (fg_jitter)3;
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o.jitter = (fg_jitter)-1;
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o = (fg_retry_options)FG_RETRY_OPTIONS_INIT;
    o.max_backoff_ns = o.base_ns - 1;
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o.max_backoff_ns = o.base_ns;
    ck_assert_int_eq(make_rc(&o, NULL), 0);
    o.base_ns = 0;
    o.max_backoff_ns = 0;
    ck_assert_int_eq(make_rc(&o, NULL), 0);

    o = (fg_retry_options)FG_RETRY_OPTIONS_INIT;
    th_fill(name, FG_STAGE_NAME_MAX, "retry-");
    name[FG_STAGE_NAME_MAX] = '\0';
    ck_assert_int_eq(make_rc(&o, name), 0);
    name[FG_STAGE_NAME_MAX] = 'x';
    name[FG_STAGE_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(make_rc(&o, name), FG_ETOOLONG);
}
END_TEST

static const fg_stage_ops other_ops = {"retry", NULL, NULL, NULL};

START_TEST(test_names_and_stats) {
    fg_retry_options o = FG_RETRY_OPTIONS_INIT;
    fg_stage *s = NULL, *other = NULL;
    fg_retry_stats st;
    char name[] = "backend";

    ck_assert_int_eq(fg_stage_retry(&o, NULL, &s), 0);
    ck_assert_str_eq(fg_stage_kind(s), "retry");
    ck_assert_str_eq(fg_stage_name(s), "retry");
    ck_assert_int_eq(fg_retry_stats_get(s, &st), 0);
    ck_assert(th_is_zero(&st, sizeof(st)));
    ck_assert_int_eq(fg_retry_stats_get(s, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_retry_stats_get(NULL, &st), FG_EINVAL);
    fg_stage_unref(s);
    ck_assert_int_eq(fg_stage_retry(&o, name, &s), 0);
    name[0] = 'X';
    ck_assert_str_eq(fg_stage_name(s), "backend");
    fg_stage_unref(s);
    /* Another kind, even one called "retry", has no retry stats. */
    ck_assert_int_eq(fg_stage_new(&other_ops, NULL, "retry", &other), 0);
    ck_assert_int_eq(fg_retry_stats_get(other, &st), FG_EINVAL);
    fg_stage_unref(other);
    fg_fault_options fo = FG_FAULT_OPTIONS_INIT;
    ck_assert_int_eq(fg_stage_fault(&fo, NULL, &other), 0);
    ck_assert_int_eq(fg_retry_stats_get(other, &st), FG_EINVAL);
    fg_stage_unref(other);
}
END_TEST

/* ---- 8. out of memory ------------------------------------------------------------------ */

static void oom_teardown(void) {
    fg_set_alloc_funcs(NULL, NULL);
    th_alloc_reset();
}

/* Fail the 1st, 2nd, ... allocation of a budget and of a stage:
 * FG_ENOMEM each time, *out untouched, nothing leaked. */
START_TEST(test_oom) {
    for (int what = 0; what < 2; what++) {
        int done = 0;
        for (long n = 1; n <= 20 && !done; n++) {
            th_alloc_reset();
            ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
            th_alloc.fail_at = n;
            int rc;
            if (what == 0) {
                fg_retry_budget *b = NULL;
                rc = fg_retry_budget_new(NULL, &b);
                ck_assert(rc == 0 || b == NULL);
                fg_retry_budget_free(b);
            } else {
                fg_retry_options o = FG_RETRY_OPTIONS_INIT;
                fg_stage *s = NULL;
                rc = fg_stage_retry(&o, "retry", &s);
                ck_assert(rc == 0 || s == NULL);
                fg_stage_unref(s);
            }
            fg_set_alloc_funcs(NULL, NULL);
            ck_assert_msg(th_alloc.allocs == th_alloc.frees,
                          "N=%ld: %ld blocks allocated, %ld freed", n, th_alloc.allocs,
                          th_alloc.frees);
            if (!th_alloc.injected) {
                ck_assert_int_eq(rc, 0);
                ck_assert_int_gt(n, 1);
                done = 1;
            } else {
                ck_assert_int_eq(rc, FG_ENOMEM);
            }
        }
        ck_assert_msg(done, "still failing after 20 allocations");
    }
}
END_TEST

/* ---- 9. threads ------------------------------------------------------------------------ */

/*
 * Two threads, one budget (ratio 0.2, no floor), every reading in one
 * slice. Each "request" deposits, asks for a retry, and when it got one
 * asks for a second (three attempts). However the threads interleave, the
 * accounting is exact: every ask is counted once, as allowed or refused;
 * the budget is never overdrawn (at most floor(0.2 x deposits) retries);
 * and nothing is lost: the retries allowed plus the whole retries left in
 * the balance are exactly floor(0.2 x deposits). (Which of the two holds
 * the last few depends on timing: a deposit made on the other thread an
 * instant before an ask may not be visible to it yet; see retry.h.)
 */
#define NTHREADS 2
#define TH_REQS  20000

typedef struct worker {
    fg_retry_budget *budget; /* direct use, or */
    const fg_chain *chain;   /* through a chain */
    fg_fake_clock *fc;
    uint64_t allowed, asks, calls;
} worker;

static void *budget_worker(void *arg) {
    worker *w = arg;
    for (int i = 0; i < TH_REQS; i++) {
        fg_retry_budget_deposit(w->budget);
        for (int a = 0; a < 2; a++) {
            w->asks++;
            if (fg_retry_budget_try_withdraw(w->budget) != 1)
                break;
            w->allowed++;
        }
    }
    return NULL;
}

static uint64_t thread_calls; /* atomic: handler calls of every thread */

static int failing_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    __atomic_add_fetch(&thread_calls, 1, __ATOMIC_RELAXED);
    return FG_EHANDLER;
}

static void *chain_worker(void *arg) {
    worker *w = arg;
    for (int i = 0; i < TH_REQS; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/");
        if (fg_chain_call(w->chain, &ctx, failing_handler, NULL) != FG_EHANDLER)
            w->calls++; /* counted as an error below */
        w->allowed += ctx.retry_count;
    }
    return NULL;
}

START_TEST(test_threads_budget) {
    fg_fake_clock *fc;
    fg_retry_budget *b;
    /* ttl 1 h: 360 s slices; T0 * 36 = 36000 s is a multiple of them. */
    ck_assert_int_eq(fg_fake_clock_new(36 * T0, &fc), 0);
    fg_retry_budget_options bo = budget_opts(0.2, 0, 3600 * S);
    bo.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    worker w[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker){.budget = b};
        ck_assert_int_eq(pthread_create(&th[i], NULL, budget_worker, &w[i]), 0);
    }
    uint64_t allowed = 0, asks = 0;
    for (int i = 0; i < NTHREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        allowed += w[i].allowed;
        asks += w[i].asks;
    }
    fg_retry_budget_stats bs = bstats_of(b);
    ck_assert_uint_eq(bs.deposits, NTHREADS * TH_REQS);
    ck_assert_uint_le(allowed, NTHREADS * TH_REQS / 5);
    ck_assert_uint_eq(allowed + bs.available, NTHREADS * TH_REQS / 5);
    ck_assert_uint_eq(bs.allowed, allowed);
    ck_assert_uint_eq(bs.refused, asks - allowed);
    fg_retry_budget_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/* The same through one chain and one retry stage on two threads; the
 * backoff (1 us) advances the shared fake clock by a few ms in all. */
START_TEST(test_threads_chain) {
    fg_fake_clock *fc;
    ck_assert_int_eq(fg_fake_clock_new(36 * T0, &fc), 0);
    fg_clock clock = fg_fake_clock_as_clock(fc);
    fg_retry_budget *b;
    fg_retry_budget_options bo = budget_opts(0.2, 0, 3600 * S);
    bo.clock = clock;
    ck_assert_int_eq(fg_retry_budget_new(&bo, &b), 0);
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.clock = clock;
    fg_chain *chain;
    ck_assert_int_eq(fg_chain_new(&co, &chain), 0);
    fg_retry_options o = opts_with(FG_JITTER_FULL, 1 * US, 1 * US, 3);
    o.budget = b;
    o.clock = clock;
    fg_stage *s;
    ck_assert_int_eq(fg_stage_retry(&o, NULL, &s), 0);
    const fg_stage *stage = s;
    ck_assert_int_eq(fg_chain_use(chain, s), 0);

    __atomic_store_n(&thread_calls, 0, __ATOMIC_RELAXED);
    worker w[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker){.chain = chain, .fc = fc};
        ck_assert_int_eq(pthread_create(&th[i], NULL, chain_worker, &w[i]), 0);
    }
    uint64_t retries = 0;
    for (int i = 0; i < NTHREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        ck_assert_uint_eq(w[i].calls, 0);
        retries += w[i].allowed;
    }
    fg_retry_stats st = stats_of(stage);
    fg_retry_budget_stats bs = bstats_of(b);
    ck_assert_uint_le(retries, NTHREADS * TH_REQS / 5);
    ck_assert_uint_eq(retries + bs.available, NTHREADS * TH_REQS / 5);
    ck_assert_uint_eq(st.retries, retries);
    ck_assert_uint_eq(bs.allowed, retries);
    ck_assert_uint_eq(bs.refused, st.refused_budget);
    ck_assert_uint_eq(bs.deposits, NTHREADS * TH_REQS);
    ck_assert_uint_eq(__atomic_load_n(&thread_calls, __ATOMIC_RELAXED),
                      NTHREADS * TH_REQS + retries);
    /* Every failed attempt is counted once. */
    ck_assert_uint_eq(st.retries + st.refused_budget + st.refused_attempts + st.not_retryable +
                          st.refused_deadline,
                      NTHREADS * TH_REQS + retries);
    fg_chain_free(chain);
    fg_retry_budget_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

Suite *fg_suite_retry(void) {
    Suite *s = suite_create("retry");
    TCase *tc;

    tc = tcase_create("schedule");
    tcase_add_test(tc, test_schedule_none);
    tcase_add_loop_test(tc, test_attempt_times_exact, 0, 3);
    tcase_add_test(tc, test_full_jitter_bounds);
    tcase_add_test(tc, test_decorrelated_bounds);
    tcase_add_test(tc, test_seed_reproducible);
    suite_add_tcase(s, tc);

    tc = tcase_create("attempts");
    tcase_add_loop_test(tc, test_max_attempts, 0, 6);
    tcase_add_test(tc, test_success_after_failures);
    tcase_add_test(tc, test_max_attempts_bound);
    tcase_add_test(tc, test_cap);
    suite_add_tcase(s, tc);

    tc = tcase_create("deadline");
    tcase_add_test(tc, test_deadline_stops);
    tcase_add_test(tc, test_deadline_boundary);
    tcase_add_test(tc, test_deadline_passed);
    tcase_add_test(tc, test_deadline_timeout_stage);
    suite_add_tcase(s, tc);

    tc = tcase_create("classify");
    tcase_add_test(tc, test_default_classifier);
    tcase_add_test(tc, test_custom_classifier);
    tcase_add_test(tc, test_canceled_never);
    suite_add_tcase(s, tc);

    tc = tcase_create("budget");
    tcase_add_test(tc, test_budget_ratio);
    tcase_add_test(tc, test_budget_floor);
    tcase_add_test(tc, test_budget_floor_window);
    tcase_add_test(tc, test_budget_ttl);
    tcase_add_test(tc, test_budget_rounding);
    tcase_add_test(tc, test_budget_late_reading);
    tcase_add_test(tc, test_budget_shared);
    tcase_add_test(tc, test_budget_options);
    suite_add_tcase(s, tc);

    tc = tcase_create("split");
    tcase_add_test(tc, test_split_no_retry);
    suite_add_tcase(s, tc);

    tc = tcase_create("options");
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_names_and_stats);
    suite_add_tcase(s, tc);

    tc = tcase_create("oom");
    tcase_add_checked_fixture(tc, NULL, oom_teardown);
    tcase_add_test(tc, test_oom);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_test(tc, test_threads_budget);
    tcase_add_test(tc, test_threads_chain);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    return s;
}
