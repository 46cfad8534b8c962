/*
 * tests/check_bulkhead.c - the bulkhead (fg_bulkhead) and its stage.
 *
 * Slots: exact admit/reject counts up to max_concurrent, giving back, an
 * exit without an enter, fg_bulkhead_set_max up (admits at once) and down
 * (evicts nobody, admits nobody until in flight drops below it). Waiting,
 * on a fake clock whose sleep advances it: a timeout ends with
 * FG_EOVERLOADED at exactly max_wait; a slot freed during the wait is taken
 * at the first try after it, on the documented schedule of sleeps; the
 * request's deadline caps the wait; only fg_chain_call waits, never the
 * split API. The stage: rejection with retry-after 0 and the rejecting
 * stage, the slot given back whatever the outcome (success, failure, a
 * later stage's rejection), enter on one thread and exit on another,
 * shadow mode, options and out-of-memory paths. Threads: several real
 * threads whose handlers hold a slot briefly and record the most they see
 * inside at once, which must never exceed max_concurrent, also while
 * another thread changes it and when they wait on the real clock.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

#define US FG_NS_PER_US
#define MS FG_NS_PER_MS
#define T0 (UINT64_C(1000) * FG_NS_PER_S)

/* ---- helpers --------------------------------------------------------------------------- */

static fg_bulkhead *mk_bulkhead(uint32_t max, uint64_t max_wait, fg_clock clock) {
    fg_bulkhead_options o = FG_BULKHEAD_OPTIONS_INIT;
    fg_bulkhead *b = NULL;
    o.max_concurrent = max;
    o.max_wait_ns = max_wait;
    o.clock = clock;
    ck_assert_int_eq(fg_bulkhead_new(&o, &b), 0);
    return b;
}

static fg_bulkhead_stats stats_of(const fg_bulkhead *b) {
    fg_bulkhead_stats s;
    ck_assert_int_eq(fg_bulkhead_stats_get(b, &s), 0);
    return s;
}

static void assert_stats(const fg_bulkhead *b, uint64_t admitted, uint64_t rejected,
                         uint64_t waited, uint64_t timeouts, uint32_t in_flight) {
    fg_bulkhead_stats s = stats_of(b);
    ck_assert_uint_eq(s.admitted, admitted);
    ck_assert_uint_eq(s.rejected, rejected);
    ck_assert_uint_eq(s.waited, waited);
    ck_assert_uint_eq(s.wait_timeouts, timeouts);
    ck_assert_uint_eq(s.in_flight, in_flight);
    ck_assert_uint_eq(fg_bulkhead_in_flight(b), in_flight);
}

/*
 * A fake clock that gives back one slot of `bulkhead` during a wait: its
 * sleep advances the fake clock and, the first time the clock reaches
 * free_at, calls fg_bulkhead_exit, as if a request in flight had finished.
 */
typedef struct freeing_clock {
    fg_fake_clock *fc;
    fg_bulkhead *bulkhead;
    uint64_t free_at; /* 0: never */
    int freed;
    int sleeps;
} freeing_clock;

static uint64_t fclock_now(void *arg) { return fg_fake_clock_now(((freeing_clock *)arg)->fc); }

static void fclock_sleep(void *arg, uint64_t ns) {
    freeing_clock *f = arg;
    uint64_t now = fg_fake_clock_advance(f->fc, ns);
    f->sleeps++;
    if (f->free_at != 0 && !f->freed && now >= f->free_at) {
        f->freed = 1;
        ck_assert_int_eq(fg_bulkhead_exit(f->bulkhead), 0);
    }
}

static fg_clock fclock_as_clock(freeing_clock *f) {
    fg_clock c = {fclock_now, f, fclock_sleep};
    return c;
}

/* The documented schedule: sleeps of 10 us doubling up to 1 ms, the last
 * one cut to the end of the wait. How long a wait lasts when a slot frees
 * at `free_after` ns into it (never: UINT64_MAX) and the wait allows
 * `bound` ns: the first sleep boundary at or past either. */
static uint64_t ref_waited(uint64_t free_after, uint64_t bound) {
    uint64_t t = 0, step = 10 * US;
    while (t < bound) {
        t += step < bound - t ? step : bound - t;
        if (t >= free_after)
            return t;
        step = step * 2 < MS ? step * 2 : MS;
    }
    return bound;
}

/* A rig: a bulkhead and a chain with one bulkhead stage, both on a
 * freeing clock. The chain owns the stage. */
typedef struct rig {
    freeing_clock clk;
    fg_bulkhead *b;
    fg_chain *chain;
    const fg_stage *stage;
} rig;

static void rig_make_with(rig *r, uint32_t max, uint64_t max_wait, int shadow,
                          fg_stage *before, fg_stage *after) {
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_bulkhead_stage_options so = FG_BULKHEAD_STAGE_OPTIONS_INIT;
    fg_stage *stage = NULL;

    memset(r, 0, sizeof(*r));
    ck_assert_int_eq(fg_fake_clock_new(T0, &r->clk.fc), 0);
    r->b = mk_bulkhead(max, max_wait, fclock_as_clock(&r->clk));
    r->clk.bulkhead = r->b;
    co.clock = fclock_as_clock(&r->clk);
    ck_assert_int_eq(fg_chain_new(&co, &r->chain), 0);
    if (before != NULL)
        ck_assert_int_eq(fg_chain_use(r->chain, before), 0);
    so.shadow = shadow;
    ck_assert_int_eq(fg_stage_bulkhead(r->b, &so, "pool", &stage), 0);
    r->stage = stage;
    ck_assert_int_eq(fg_chain_use(r->chain, stage), 0);
    if (after != NULL)
        ck_assert_int_eq(fg_chain_use(r->chain, after), 0);
}

static void rig_make(rig *r, uint32_t max, uint64_t max_wait) {
    rig_make_with(r, max, max_wait, 0, NULL, NULL);
}

static void rig_free(rig *r) {
    fg_chain_free(r->chain);
    fg_bulkhead_free(r->b);
    fg_fake_clock_free(r->clk.fc);
}

static uint64_t rig_now(const rig *r) { return fg_fake_clock_now(r->clk.fc); }

/* A handler that records when it ran and what the ctx said then. */
typedef struct hrec {
    const rig *r;
    int calls;
    int fail; /* return this */
    uint64_t clock_seen, now_seen;
    uint32_t in_flight_seen;
} hrec;

static int rec_handler(fg_ctx *ctx, void *arg) {
    hrec *h = arg;
    h->calls++;
    h->clock_seen = rig_now(h->r);
    h->now_seen = ctx->now_ns;
    h->in_flight_seen = fg_bulkhead_in_flight(h->r->b);
    return h->fail;
}

/* One synchronous request; ctx is left for the caller to inspect. */
static int call(const rig *r, fg_ctx *ctx, uint64_t deadline, hrec *h) {
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/orders"), 0);
    ctx->deadline_ns = deadline;
    return fg_chain_call(r->chain, ctx, rec_handler, h);
}

/* A stage that raises ctx->delay_ns to the uint64_t its state points to
 * (a smoothing limiter's reserved slot, say). */
static int wait_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)slot;
    uint64_t w = *(const uint64_t *)state;
    if (w > ctx->delay_ns)
        ctx->delay_ns = w;
    return 0;
}

static const fg_stage_ops wait_ops = {"wait", wait_enter, NULL, NULL};

/* A stage that rejects every request with FG_ELIMITED. */
static int deny_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)state;
    (void)ctx;
    (void)slot;
    return FG_ELIMITED;
}

static const fg_stage_ops deny_ops = {"deny", deny_enter, NULL, NULL};

static fg_stage *mk_stage(const fg_stage_ops *ops, void *state) {
    fg_stage *s = NULL;
    ck_assert_int_eq(fg_stage_new(ops, state, ops->kind, &s), 0);
    return s;
}

/* ---- 1. slots -------------------------------------------------------------------------- */

START_TEST(test_slots_exact) {
    fg_bulkhead *b = mk_bulkhead(3, 0, fg_clock_monotonic());

    assert_stats(b, 0, 0, 0, 0, 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_uint_eq(fg_bulkhead_in_flight(b), 3);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(fg_bulkhead_try_enter(b), FG_EOVERLOADED);
    assert_stats(b, 3, 5, 0, 0, 3);
    ck_assert_uint_eq(stats_of(b).max_in_flight, 3);

    ck_assert_int_eq(fg_bulkhead_exit(b), 0);
    ck_assert_uint_eq(fg_bulkhead_in_flight(b), 2);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), FG_EOVERLOADED);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fg_bulkhead_exit(b), 0);
    assert_stats(b, 4, 6, 0, 0, 0);

    /* An exit without an enter is refused and changes nothing. */
    ck_assert_int_eq(fg_bulkhead_exit(b), FG_ESTATE);
    ck_assert_int_eq(fg_bulkhead_exit(b), FG_ESTATE);
    assert_stats(b, 4, 6, 0, 0, 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), FG_EOVERLOADED);
    fg_bulkhead_free(b);
}
END_TEST

/* One slot, a million enter/exit pairs: the counters stay exact. */
START_TEST(test_one_slot_many) {
    fg_bulkhead *b = mk_bulkhead(1, 0, fg_clock_monotonic());
    for (int i = 0; i < 1000000; i++) {
        TH_FAST_ASSERT(fg_bulkhead_try_enter(b) == 0, "enter %d", i);
        TH_FAST_ASSERT(fg_bulkhead_try_enter(b) == FG_EOVERLOADED, "second enter %d", i);
        TH_FAST_ASSERT(fg_bulkhead_exit(b) == 0, "exit %d", i);
    }
    assert_stats(b, 1000000, 1000000, 0, 0, 0);
    ck_assert_uint_eq(stats_of(b).max_in_flight, 1);
    fg_bulkhead_free(b);
}
END_TEST

START_TEST(test_set_max) {
    fg_bulkhead *b = mk_bulkhead(3, 7 * MS, fg_clock_monotonic());
    fg_bulkhead_options o;

    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);

    /* Down to 1: nobody is evicted, nobody admitted until in flight < 1. */
    ck_assert_int_eq(fg_bulkhead_set_max(b, 1), 0);
    ck_assert_int_eq(fg_bulkhead_get(b, &o), 0);
    ck_assert_uint_eq(o.max_concurrent, 1);
    ck_assert_uint_eq(o.max_wait_ns, 7 * MS);
    ck_assert_uint_eq(fg_bulkhead_in_flight(b), 3);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), FG_EOVERLOADED);
    ck_assert_int_eq(fg_bulkhead_exit(b), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), FG_EOVERLOADED);
    ck_assert_int_eq(fg_bulkhead_exit(b), 0);
    ck_assert_uint_eq(fg_bulkhead_in_flight(b), 1);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), FG_EOVERLOADED);
    ck_assert_int_eq(fg_bulkhead_exit(b), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), FG_EOVERLOADED);
    assert_stats(b, 4, 4, 0, 0, 1);

    /* Up to 5: four more at once, then full. */
    ck_assert_int_eq(fg_bulkhead_set_max(b, 5), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), FG_EOVERLOADED);
    assert_stats(b, 8, 5, 0, 0, 5);
    ck_assert_uint_eq(stats_of(b).max_in_flight, 5);

    /* Invalid changes change nothing. */
    ck_assert_int_eq(fg_bulkhead_set_max(b, 0), FG_EINVAL);
    ck_assert_int_eq(fg_bulkhead_set_max(NULL, 3), FG_EINVAL);
    ck_assert_int_eq(fg_bulkhead_set_max_wait(NULL, 3), FG_EINVAL);
    ck_assert_int_eq(fg_bulkhead_set_max_wait(b, 2 * MS), 0);
    ck_assert_int_eq(fg_bulkhead_get(b, &o), 0);
    ck_assert_uint_eq(o.max_concurrent, 5);
    ck_assert_uint_eq(o.max_wait_ns, 2 * MS);
    ck_assert(o.clock.now == fg_clock_monotonic_now);

    /* The largest max accepted. */
    ck_assert_int_eq(fg_bulkhead_set_max(b, UINT32_MAX), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    fg_bulkhead_free(b);
}
END_TEST

/* ---- 2. waiting, on the fake clock ----------------------------------------------------- */

/* The schedule itself: 10 us, 20, 40, ... 640, then 1 ms steps. */
START_TEST(test_ref_schedule) {
    ck_assert_uint_eq(ref_waited(1, 5 * MS), 10 * US);
    ck_assert_uint_eq(ref_waited(10 * US, 5 * MS), 10 * US);
    ck_assert_uint_eq(ref_waited(11 * US, 5 * MS), 30 * US);
    ck_assert_uint_eq(ref_waited(2 * MS, 50 * MS), 2270 * US);
    ck_assert_uint_eq(ref_waited(UINT64_MAX, 5 * MS), 5 * MS);
    ck_assert_uint_eq(ref_waited(UINT64_MAX, 25 * US), 25 * US);
}
END_TEST

START_TEST(test_wait_timeout_exact) {
    static const uint64_t bounds[] = {1, 10 * US, 25 * US, 5 * MS, 12345678};
    uint64_t bound = bounds[_i];
    freeing_clock clk = {NULL, NULL, 0, 0, 0};
    uint64_t waited = 1;

    ck_assert_int_eq(fg_fake_clock_new(T0, &clk.fc), 0);
    fg_bulkhead *b = mk_bulkhead(1, bound, fclock_as_clock(&clk));
    clk.bulkhead = b;
    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_enter_wait(b, UINT64_MAX, &waited), FG_EOVERLOADED);
    ck_assert_uint_eq(waited, bound);
    ck_assert_uint_eq(fg_fake_clock_now(clk.fc), T0 + bound);
    assert_stats(b, 1, 1, 1, 1, 1);

    /* The argument bounds it further; the option still applies. */
    ck_assert_int_eq(fg_bulkhead_enter_wait(b, bound / 2, &waited), FG_EOVERLOADED);
    ck_assert_uint_eq(waited, bound / 2);
    ck_assert_uint_eq(fg_fake_clock_now(clk.fc), T0 + bound + bound / 2);
    assert_stats(b, 1, 2, bound / 2 ? 2 : 1, bound / 2 ? 2 : 1, 1);
    fg_bulkhead_free(b);
    fg_fake_clock_free(clk.fc);
}
END_TEST

/* No wait allowed (option 0, or argument 0): rejected at once, no wait counted. */
START_TEST(test_wait_zero) {
    freeing_clock clk = {NULL, NULL, 0, 0, 0};
    uint64_t waited = 1;

    ck_assert_int_eq(fg_fake_clock_new(T0, &clk.fc), 0);
    fg_bulkhead *b = mk_bulkhead(1, 0, fclock_as_clock(&clk));
    ck_assert_int_eq(fg_bulkhead_enter_wait(b, UINT64_MAX, &waited), 0);
    ck_assert_uint_eq(waited, 0);
    ck_assert_int_eq(fg_bulkhead_enter_wait(b, UINT64_MAX, &waited), FG_EOVERLOADED);
    ck_assert_uint_eq(waited, 0);
    ck_assert_int_eq(fg_bulkhead_set_max_wait(b, 5 * MS), 0);
    ck_assert_int_eq(fg_bulkhead_enter_wait(b, 0, NULL), FG_EOVERLOADED);
    ck_assert_uint_eq(fg_fake_clock_now(clk.fc), T0);
    ck_assert_int_eq(clk.sleeps, 0);
    assert_stats(b, 1, 2, 0, 0, 1);
    fg_bulkhead_free(b);
    fg_fake_clock_free(clk.fc);
}
END_TEST

/* A slot freed during the wait is taken at the first try after it. */
START_TEST(test_wait_slot_freed) {
    static const uint64_t frees[] = {1, 10 * US, 15 * US, 2 * MS, 4999 * US};
    uint64_t free_after = frees[_i], bound = 5 * MS, want = ref_waited(free_after, bound);
    freeing_clock clk = {NULL, NULL, 0, 0, 0};
    uint64_t waited = 0;

    ck_assert_int_eq(fg_fake_clock_new(T0, &clk.fc), 0);
    fg_bulkhead *b = mk_bulkhead(2, bound, fclock_as_clock(&clk));
    clk.bulkhead = b;
    clk.free_at = T0 + free_after;
    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_enter_wait(b, UINT64_MAX, &waited), 0);
    ck_assert_msg(waited == want, "waited %" PRIu64 ", want %" PRIu64, waited, want);
    ck_assert_uint_eq(fg_fake_clock_now(clk.fc), T0 + want);
    ck_assert_int_eq(clk.freed, 1);
    assert_stats(b, 3, 0, 1, 0, 2);
    fg_bulkhead_free(b);
    fg_fake_clock_free(clk.fc);
}
END_TEST

/* A slot freed by raising max_concurrent while a request waits: a
 * second freeing clock raises it instead of exiting. */
static void raise_sleep(void *arg, uint64_t ns) {
    freeing_clock *f = arg;
    uint64_t now = fg_fake_clock_advance(f->fc, ns);
    f->sleeps++;
    if (!f->freed && now >= f->free_at) {
        f->freed = 1;
        ck_assert_int_eq(fg_bulkhead_set_max(f->bulkhead, 2), 0);
    }
}

START_TEST(test_wait_raise_max) {
    freeing_clock clk = {NULL, NULL, T0 + 100 * US, 0, 0};
    fg_clock c = {fclock_now, &clk, raise_sleep};
    uint64_t waited = 0;

    ck_assert_int_eq(fg_fake_clock_new(T0, &clk.fc), 0);
    fg_bulkhead *b = mk_bulkhead(1, MS, c);
    clk.bulkhead = b;
    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_enter_wait(b, UINT64_MAX, &waited), 0);
    ck_assert_uint_eq(waited, ref_waited(100 * US, MS));
    assert_stats(b, 2, 0, 1, 0, 2);
    fg_bulkhead_free(b);
    fg_fake_clock_free(clk.fc);
}
END_TEST

/* A clock whose sleep does not move its reading still ends the wait:
 * the sleeps asked for count as time waited. */
static uint64_t frozen_now(void *arg) {
    (void)arg;
    return T0;
}

static void counting_sleep(void *arg, uint64_t ns) {
    (void)ns;
    (*(int *)arg)++;
}

START_TEST(test_wait_frozen_clock) {
    int sleeps = 0;
    fg_clock c = {frozen_now, &sleeps, counting_sleep};
    uint64_t waited = 0;
    fg_bulkhead *b = mk_bulkhead(1, 3 * MS, c);

    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_bulkhead_enter_wait(b, UINT64_MAX, &waited), FG_EOVERLOADED);
    ck_assert_uint_eq(waited, 3 * MS);
    /* 10+20+...+640 us = 1270 us in 7 sleeps, then 1 ms, then the 730 us left. */
    ck_assert_int_eq(sleeps, 9);
    fg_bulkhead_free(b);
}
END_TEST

/* ---- 3. the stage in a chain ----------------------------------------------------------- */

START_TEST(test_stage_admits_and_releases) {
    rig r;
    hrec h = {NULL, 0, 0, 0, 0, 0};
    fg_ctx ctx;

    rig_make(&r, 2, 0);
    h.r = &r;
    ck_assert_int_eq(call(&r, &ctx, 0, &h), 0);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(h.in_flight_seen, 1);
    ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 0);

    /* A failing handler gives its slot back too. */
    h.fail = FG_EHANDLER;
    ck_assert_int_eq(call(&r, &ctx, 0, &h), FG_EHANDLER);
    ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 0);
    assert_stats(r.b, 2, 0, 0, 0, 0);
    rig_free(&r);
}
END_TEST

START_TEST(test_stage_rejects_full) {
    rig r;
    hrec h = {NULL, 0, 0, 0, 0, 0};
    fg_ctx ctx;

    rig_make(&r, 2, 0);
    h.r = &r;
    ck_assert_int_eq(fg_bulkhead_try_enter(r.b), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(r.b), 0);
    ck_assert_int_eq(call(&r, &ctx, 0, &h), FG_EOVERLOADED);
    ck_assert_int_eq(h.calls, 0);
    ck_assert_int_eq(ctx.status, FG_EOVERLOADED);
    ck_assert_ptr_eq(ctx.rejected_by, r.stage);
    ck_assert_uint_eq(ctx.retry_after_ns, 0);
    ck_assert_uint_eq(rig_now(&r), T0);
    assert_stats(r.b, 2, 1, 0, 0, 2);

    /* The split API rejects the same way; nothing to exit. */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), FG_EOVERLOADED);
    ck_assert_ptr_eq(ctx.rejected_by, r.stage);
    ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), FG_ESTATE);
    assert_stats(r.b, 2, 2, 0, 0, 2);

    ck_assert_int_eq(fg_bulkhead_exit(r.b), 0);
    ck_assert_int_eq(call(&r, &ctx, 0, &h), 0);
    ck_assert_uint_eq(h.in_flight_seen, 2);
    ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 1);
    rig_free(&r);
}
END_TEST

/* A later stage rejects: the bulkhead stage was entered, so it is exited
 * (with a REJECTED outcome) and gives its slot back. */
START_TEST(test_stage_later_rejection) {
    rig r;
    hrec h = {NULL, 0, 0, 0, 0, 0};
    fg_ctx ctx;

    rig_make_with(&r, 1, 0, 0, NULL, mk_stage(&deny_ops, NULL));
    h.r = &r;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(call(&r, &ctx, 0, &h), FG_ELIMITED);
        ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 0);
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), FG_ELIMITED);
        ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 0);
    }
    assert_stats(r.b, 6, 0, 0, 0, 0);
    rig_free(&r);
}
END_TEST

/* fg_chain_call waits up to max_wait_ns and then rejects, at exactly that time. */
START_TEST(test_stage_wait_timeout) {
    rig r;
    hrec h = {NULL, 0, 0, 0, 0, 0};
    fg_ctx ctx;

    rig_make(&r, 1, 5 * MS);
    h.r = &r;
    ck_assert_int_eq(fg_bulkhead_try_enter(r.b), 0);
    ck_assert_int_eq(call(&r, &ctx, 0, &h), FG_EOVERLOADED);
    ck_assert_uint_eq(rig_now(&r), T0 + 5 * MS);
    ck_assert_ptr_eq(ctx.rejected_by, r.stage);
    ck_assert_uint_eq(ctx.retry_after_ns, 0);
    ck_assert_uint_eq(ctx.now_ns, T0); /* the request's own start, restored */
    ck_assert_int_eq(h.calls, 0);
    assert_stats(r.b, 1, 1, 1, 1, 1);
    rig_free(&r);
}
END_TEST

/* A slot freed during the wait: the handler runs, at the time the slot
 * was taken, and sees that time in ctx->now_ns. */
START_TEST(test_stage_wait_admitted) {
    rig r;
    hrec h = {NULL, 0, 0, 0, 0, 0};
    fg_ctx ctx;
    uint64_t want = ref_waited(2 * MS, 5 * MS);

    rig_make(&r, 1, 5 * MS);
    h.r = &r;
    r.clk.free_at = T0 + 2 * MS;
    ck_assert_int_eq(fg_bulkhead_try_enter(r.b), 0);
    ck_assert_int_eq(call(&r, &ctx, 0, &h), 0);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(h.clock_seen, T0 + want);
    ck_assert_uint_eq(h.now_seen, T0 + want);
    ck_assert_uint_eq(h.in_flight_seen, 1);
    ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 0);
    assert_stats(r.b, 2, 0, 1, 0, 0);
    rig_free(&r);
}
END_TEST

/* The deadline caps the wait: rejected when it comes, not at max_wait. */
START_TEST(test_stage_deadline_caps) {
    rig r;
    hrec h = {NULL, 0, 0, 0, 0, 0};
    fg_ctx ctx;

    rig_make(&r, 1, 10 * MS);
    h.r = &r;
    ck_assert_int_eq(fg_bulkhead_try_enter(r.b), 0);
    ck_assert_int_eq(call(&r, &ctx, T0 + 3 * MS, &h), FG_EOVERLOADED);
    ck_assert_uint_eq(rig_now(&r), T0 + 3 * MS);
    assert_stats(r.b, 1, 1, 1, 1, 1);

    /* Already at or past its deadline: no wait at all. */
    uint64_t now = rig_now(&r);
    ck_assert_int_eq(call(&r, &ctx, now, &h), FG_EOVERLOADED);
    ck_assert_int_eq(call(&r, &ctx, now - 1, &h), FG_EOVERLOADED);
    ck_assert_uint_eq(rig_now(&r), now);
    assert_stats(r.b, 1, 3, 1, 1, 1);

    /* A deadline later than max_wait leaves max_wait in charge. */
    ck_assert_int_eq(call(&r, &ctx, now + 60 * MS, &h), FG_EOVERLOADED);
    ck_assert_uint_eq(rig_now(&r), now + 10 * MS);

    /* A slot freed before the deadline is taken. */
    now = rig_now(&r);
    r.clk.free_at = now + MS;
    ck_assert_int_eq(call(&r, &ctx, now + 3 * MS, &h), 0);
    ck_assert_uint_eq(h.now_seen, now + ref_waited(MS, 3 * MS));
    ck_assert_int_eq(h.calls, 1);
    rig_free(&r);
}
END_TEST

/* A request canceled while it waits stops waiting at the next try. */
typedef struct cancel_clock {
    fg_fake_clock *fc;
    fg_ctx *ctx;
    uint64_t cancel_at;
} cancel_clock;

static uint64_t cclock_now(void *arg) { return fg_fake_clock_now(((cancel_clock *)arg)->fc); }

static void cclock_sleep(void *arg, uint64_t ns) {
    cancel_clock *c = arg;
    if (fg_fake_clock_advance(c->fc, ns) >= c->cancel_at)
        fg_ctx_cancel(c->ctx);
}

START_TEST(test_stage_wait_canceled) {
    cancel_clock cc = {NULL, NULL, T0 + 300 * US};
    fg_clock clock = {cclock_now, &cc, cclock_sleep};
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_chain *chain = NULL;
    fg_stage *s = NULL;
    fg_ctx ctx;
    int calls = 0;

    ck_assert_int_eq(fg_fake_clock_new(T0, &cc.fc), 0);
    fg_bulkhead *b = mk_bulkhead(1, 5 * MS, clock);
    co.clock = clock;
    ck_assert_int_eq(fg_chain_new(&co, &chain), 0);
    ck_assert_int_eq(fg_stage_bulkhead(b, NULL, NULL, &s), 0);
    ck_assert_int_eq(fg_chain_use(chain, s), 0);
    ck_assert_int_eq(fg_bulkhead_try_enter(b), 0);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    cc.ctx = &ctx;
    ck_assert_int_eq(fg_chain_call(chain, &ctx, th_count_handler, &calls), FG_ECANCELED);
    ck_assert_int_eq(calls, 0);
    ck_assert_ptr_eq(ctx.rejected_by, s);
    ck_assert_uint_eq(fg_fake_clock_now(cc.fc), T0 + ref_waited(300 * US, 5 * MS));
    assert_stats(b, 1, 1, 1, 0, 1);
    fg_chain_free(chain);
    fg_bulkhead_free(b);
    fg_fake_clock_free(cc.fc);
}
END_TEST

/* The split API never waits, whatever max_wait_ns says. */
START_TEST(test_stage_split_never_waits) {
    rig r;
    fg_ctx ctx;

    rig_make(&r, 1, 50 * MS);
    ck_assert_int_eq(fg_bulkhead_try_enter(r.b), 0);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), FG_EOVERLOADED);
    ck_assert_uint_eq(rig_now(&r), T0);
    ck_assert_int_eq(r.clk.sleeps, 0);
    assert_stats(r.b, 1, 1, 0, 0, 1);

    ck_assert_int_eq(fg_bulkhead_exit(r.b), 0);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), 0);
    ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 1);
    ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, FG_EHANDLER), 0);
    ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 0);
    rig_free(&r);
}
END_TEST

/* An earlier stage reserved a later start (delay_ns, counted from now_ns):
 * the bulkhead's wait counts toward it, so the handler starts when the
 * later of the two ends, not after both. */
START_TEST(test_stage_wait_counts_toward_delay) {
    static const uint64_t delays[] = {10 * MS, MS};
    uint64_t delay = delays[_i];
    uint64_t want = ref_waited(2 * MS, 5 * MS); /* 2.27 ms */
    rig r;
    hrec h = {NULL, 0, 0, 0, 0, 0};
    fg_ctx ctx;

    rig_make_with(&r, 1, 5 * MS, 0, mk_stage(&wait_ops, &delay), NULL);
    h.r = &r;
    r.clk.free_at = T0 + 2 * MS;
    ck_assert_int_eq(fg_bulkhead_try_enter(r.b), 0);
    ck_assert_int_eq(call(&r, &ctx, 0, &h), 0);
    ck_assert_uint_eq(h.clock_seen, T0 + (delay > want ? delay : want));
    ck_assert_uint_eq(h.now_seen, T0 + want);
    rig_free(&r);
}
END_TEST

/* Enter on one thread, exit on another (the split API's hand-off). */
#define SPLIT_N 8

typedef struct split_job {
    const fg_chain *chain;
    fg_ctx *ctx;
    int bad;
} split_job;

static void *split_exit_main(void *arg) {
    split_job *j = arg;
    for (int i = 0; i < SPLIT_N; i++)
        j->bad += fg_chain_exit(j->chain, &j->ctx[i], 0) != 0;
    return NULL;
}

START_TEST(test_stage_split_threads) {
    rig r;
    fg_ctx *ctx = calloc(SPLIT_N + 1, sizeof(*ctx));
    pthread_t th;

    ck_assert_ptr_nonnull(ctx);
    rig_make(&r, SPLIT_N, MS);
    for (int round = 0; round < 50; round++) {
        split_job j = {r.chain, ctx, 0};
        for (int i = 0; i < SPLIT_N; i++) {
            ck_assert_int_eq(fg_ctx_init(&ctx[i], "GET", "/"), 0);
            ck_assert_int_eq(fg_chain_enter(r.chain, &ctx[i]), 0);
        }
        ck_assert_int_eq(fg_ctx_init(&ctx[SPLIT_N], "GET", "/"), 0);
        ck_assert_int_eq(fg_chain_enter(r.chain, &ctx[SPLIT_N]), FG_EOVERLOADED);
        ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), SPLIT_N);
        ck_assert_int_eq(pthread_create(&th, NULL, split_exit_main, &j), 0);
        ck_assert_int_eq(pthread_join(th, NULL), 0);
        ck_assert_int_eq(j.bad, 0);
        ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 0);
    }
    assert_stats(r.b, 50 * SPLIT_N, 50, 0, 0, 0);
    ck_assert_uint_eq(rig_now(&r), T0);
    rig_free(&r);
    free(ctx);
}
END_TEST

/* Two stages (two chains) on one bulkhead share its slots. */
START_TEST(test_stage_shared) {
    rig r;
    fg_chain *other = NULL;
    fg_stage *s = NULL;
    fg_ctx a, b;

    rig_make(&r, 1, 0);
    ck_assert_int_eq(fg_chain_new(NULL, &other), 0);
    ck_assert_int_eq(fg_stage_bulkhead(r.b, NULL, NULL, &s), 0);
    ck_assert_int_eq(fg_chain_use(other, s), 0);
    ck_assert_int_eq(fg_ctx_init(&a, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_init(&b, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &a), 0);
    ck_assert_int_eq(fg_chain_enter(other, &b), FG_EOVERLOADED);
    ck_assert_int_eq(fg_chain_exit(r.chain, &a, 0), 0);
    ck_assert_int_eq(fg_ctx_init(&b, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_enter(other, &b), 0);
    ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 1);
    ck_assert_int_eq(fg_chain_exit(other, &b, 0), 0);
    ck_assert_uint_eq(fg_bulkhead_in_flight(r.b), 0);
    fg_chain_free(other);
    rig_free(&r);
}
END_TEST

/* ---- 4. shadow ------------------------------------------------------------------------- */

START_TEST(test_shadow) {
    rig r;
    hrec h = {NULL, 0, 0, 0, 0, 0};
    fg_ctx ctx[4];

    rig_make_with(&r, 2, 50 * MS, 1, NULL, NULL);
    h.r = &r;
    /* Four requests in flight through a bulkhead of two: all admitted, two
     * hold slots, two would have been rejected. */
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(fg_ctx_init(&ctx[i], "GET", "/"), 0);
        ck_assert_int_eq(fg_chain_enter(r.chain, &ctx[i]), 0);
    }
    fg_bulkhead_stats s = stats_of(r.b);
    ck_assert_uint_eq(s.admitted, 2);
    ck_assert_uint_eq(s.rejected, 0);
    ck_assert_uint_eq(s.shadow_rejected, 2);
    ck_assert_uint_eq(s.in_flight, 2);

    /* The sync chain does not wait in shadow mode either. */
    fg_ctx c;
    ck_assert_int_eq(call(&r, &c, 0, &h), 0);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(rig_now(&r), T0);
    ck_assert_int_eq(r.clk.sleeps, 0);

    /* Only the requests that took a slot give one back. */
    for (int i = 3; i >= 0; i--)
        ck_assert_int_eq(fg_chain_exit(r.chain, &ctx[i], 0), 0);
    s = stats_of(r.b);
    ck_assert_uint_eq(s.admitted, 2);
    ck_assert_uint_eq(s.shadow_rejected, 3);
    ck_assert_uint_eq(s.in_flight, 0);
    ck_assert_uint_eq(s.waited, 0);

    /* With a free slot a shadow request takes it. */
    ck_assert_int_eq(call(&r, &c, 0, &h), 0);
    ck_assert_uint_eq(h.in_flight_seen, 1);
    ck_assert_uint_eq(stats_of(r.b).admitted, 3);
    rig_free(&r);
}
END_TEST

/* ---- 5. options, names, out of memory -------------------------------------------------- */

static const fg_stage_ops other_ops = {"bulkhead", NULL, NULL, NULL};

START_TEST(test_bad_options) {
    fg_bulkhead_options o = FG_BULKHEAD_OPTIONS_INIT;
    fg_bulkhead *b = NULL;
    fg_bulkhead_stats s;
    fg_stage *st = NULL;
    char name[FG_STAGE_NAME_MAX + 2];

    ck_assert_uint_eq(o.max_concurrent, 0);
    ck_assert_uint_eq(o.max_wait_ns, 0);
    ck_assert(o.clock.now == NULL);
    ck_assert_int_eq(fg_bulkhead_new(&o, &b), FG_EINVAL); /* max_concurrent is required */
    ck_assert_ptr_null(b);
    ck_assert_int_eq(fg_bulkhead_new(NULL, &b), FG_EINVAL);
    o.max_concurrent = 1;
    ck_assert_int_eq(fg_bulkhead_new(&o, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_bulkhead_new(&o, &b), 0);

    ck_assert_int_eq(fg_bulkhead_try_enter(NULL), FG_EINVAL);
    uint64_t waited = 5;
    ck_assert_int_eq(fg_bulkhead_enter_wait(NULL, 1, &waited), FG_EINVAL);
    ck_assert_uint_eq(waited, 0);
    ck_assert_int_eq(fg_bulkhead_exit(NULL), FG_EINVAL);
    ck_assert_uint_eq(fg_bulkhead_in_flight(NULL), 0);
    ck_assert_int_eq(fg_bulkhead_stats_get(NULL, &s), FG_EINVAL);
    ck_assert_int_eq(fg_bulkhead_stats_get(b, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_bulkhead_get(NULL, &o), FG_EINVAL);
    ck_assert_int_eq(fg_bulkhead_get(b, NULL), FG_EINVAL);
    fg_bulkhead_free(NULL);

    ck_assert_int_eq(fg_stage_bulkhead(NULL, NULL, NULL, &st), FG_EINVAL);
    ck_assert_int_eq(fg_stage_bulkhead(b, NULL, NULL, NULL), FG_EINVAL);
    th_fill(name, FG_STAGE_NAME_MAX, "pool-");
    name[FG_STAGE_NAME_MAX] = '\0';
    ck_assert_int_eq(fg_stage_bulkhead(b, NULL, name, &st), 0);
    ck_assert_str_eq(fg_stage_name(st), name);
    fg_stage_unref(st);
    name[FG_STAGE_NAME_MAX] = 'x';
    name[FG_STAGE_NAME_MAX + 1] = '\0';
    st = NULL;
    ck_assert_int_eq(fg_stage_bulkhead(b, NULL, name, &st), FG_ETOOLONG);
    ck_assert_ptr_null(st);
    fg_bulkhead_free(b);
}
END_TEST

START_TEST(test_names_and_kind) {
    fg_bulkhead *b = mk_bulkhead(4, 0, fg_clock_monotonic());
    fg_stage *s = NULL, *other = NULL;
    char name[] = "pool";

    ck_assert_int_eq(fg_stage_bulkhead(b, NULL, NULL, &s), 0);
    ck_assert_str_eq(fg_stage_kind(s), "bulkhead");
    ck_assert_str_eq(fg_stage_name(s), "bulkhead");
    ck_assert_ptr_eq(fg_bulkhead_from_stage(s), b);
    fg_stage_unref(s);

    ck_assert_int_eq(fg_stage_bulkhead(b, NULL, name, &s), 0);
    name[0] = 'X';
    ck_assert_str_eq(fg_stage_name(s), "pool");
    fg_stage_unref(s);

    /* Another kind, even one called "bulkhead", has no bulkhead. */
    ck_assert_ptr_null(fg_bulkhead_from_stage(NULL));
    ck_assert_int_eq(fg_stage_new(&other_ops, NULL, "bulkhead", &other), 0);
    ck_assert_ptr_null(fg_bulkhead_from_stage(other));
    fg_stage_unref(other);
    fg_fault_options fo = FG_FAULT_OPTIONS_INIT;
    ck_assert_int_eq(fg_stage_fault(&fo, NULL, &other), 0);
    ck_assert_ptr_null(fg_bulkhead_from_stage(other));
    fg_stage_unref(other);
    fg_bulkhead_free(b);
}
END_TEST

static void oom_teardown(void) {
    fg_set_alloc_funcs(NULL, NULL);
    th_alloc_reset();
}

/* Fail the 1st, 2nd, ... allocation of a bulkhead and its stage (bulkhead,
 * stage state, stage, name): FG_ENOMEM each time and nothing leaks. */
START_TEST(test_oom) {
    fg_bulkhead_options o = FG_BULKHEAD_OPTIONS_INIT;
    o.max_concurrent = 3;
    for (long n = 1; n < 20; n++) {
        fg_bulkhead *b = NULL;
        fg_stage *s = NULL;
        th_alloc_reset();
        ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
        th_alloc.fail_at = n;
        int rc = fg_bulkhead_new(&o, &b);
        if (rc == 0) {
            rc = fg_stage_bulkhead(b, NULL, "pool", &s);
            fg_stage_unref(s);
            fg_bulkhead_free(b);
        }
        fg_set_alloc_funcs(NULL, NULL);
        ck_assert_msg(th_alloc.allocs == th_alloc.frees,
                      "N=%ld: %ld blocks allocated, %ld freed", n, th_alloc.allocs,
                      th_alloc.frees);
        if (!th_alloc.injected) {
            ck_assert_int_eq(rc, 0);
            ck_assert_int_eq(n, 5); /* bulkhead, state, stage, name: 4 */
            return;
        }
        ck_assert_msg(rc == FG_ENOMEM, "N=%ld: %s", n, fg_err_name(rc));
    }
    ck_abort_msg("still failing after 20 allocations");
}
END_TEST

/* ---- 6. threads ------------------------------------------------------------------------ */

#define NTHREADS 4

/* What the handlers see: how many are inside at once, and the most ever. */
typedef struct inside {
    int now;  /* atomic */
    int most; /* atomic, only raised */
} inside;

static void inside_enter(inside *in) {
    int n = __atomic_add_fetch(&in->now, 1, __ATOMIC_SEQ_CST);
    int m = __atomic_load_n(&in->most, __ATOMIC_SEQ_CST);
    while (n > m && !__atomic_compare_exchange_n(&in->most, &m, n, 0, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST)) {
    }
}

static void inside_leave(inside *in) { __atomic_sub_fetch(&in->now, 1, __ATOMIC_SEQ_CST); }

/* Hold the slot a little: long enough for the other threads to try. */
static void hold(uint64_t i) {
    if (i % 8 == 0)
        sched_yield();
    for (volatile int k = 0; k < 50; k++) {
    }
}

typedef struct tjob {
    fg_bulkhead *b;
    const fg_chain *chain;
    inside *in;
    int iters;
    uint64_t ok, overloaded, other;
} tjob;

/* The bare API: try, hold, exit. */
static void *try_main(void *arg) {
    tjob *j = arg;
    for (int i = 0; i < j->iters; i++) {
        int rc = fg_bulkhead_try_enter(j->b);
        if (rc == FG_EOVERLOADED) {
            j->overloaded++;
            continue;
        }
        if (rc != 0) {
            j->other++;
            continue;
        }
        inside_enter(j->in);
        hold((uint64_t)i);
        inside_leave(j->in);
        j->other += fg_bulkhead_exit(j->b) != 0;
        j->ok++;
    }
    return NULL;
}

static int inside_handler(fg_ctx *ctx, void *arg) {
    tjob *j = arg;
    inside_enter(j->in);
    hold(ctx->now_ns);
    inside_leave(j->in);
    return 0;
}

/* Through the chain: fg_chain_call, or the split API every other request. */
static void *chain_main(void *arg) {
    tjob *j = arg;
    for (int i = 0; i < j->iters; i++) {
        fg_ctx ctx;
        int rc;
        if (fg_ctx_init(&ctx, "GET", "/") != 0) {
            j->other++;
            continue;
        }
        if (i % 2 == 0) {
            rc = fg_chain_call(j->chain, &ctx, inside_handler, j);
        } else {
            rc = fg_chain_enter(j->chain, &ctx);
            if (rc == 0) {
                (void)inside_handler(&ctx, j);
                j->other += fg_chain_exit(j->chain, &ctx, 0) != 0;
            }
        }
        if (rc == 0)
            j->ok++;
        else if (rc == FG_EOVERLOADED)
            j->overloaded++;
        else
            j->other++;
    }
    return NULL;
}

/* Run NTHREADS of fn; return the totals. */
static tjob run_threads(void *(*fn)(void *), fg_bulkhead *b, const fg_chain *chain, inside *in,
                        int iters) {
    tjob j[NTHREADS], sum;
    pthread_t th[NTHREADS];
    memset(&sum, 0, sizeof(sum));
    for (int i = 0; i < NTHREADS; i++) {
        j[i] = (tjob){b, chain, in, iters, 0, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, fn, &j[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        sum.ok += j[i].ok;
        sum.overloaded += j[i].overloaded;
        sum.other += j[i].other;
    }
    return sum;
}

START_TEST(test_threads_try) {
    static const uint32_t maxes[] = {1, 2, 3};
    uint32_t max = maxes[_i];
    fg_bulkhead *b = mk_bulkhead(max, 0, fg_clock_monotonic());
    inside in = {0, 0};

    tjob t = run_threads(try_main, b, NULL, &in, 20000);
    ck_assert_uint_eq(t.other, 0);
    ck_assert_uint_eq(t.ok + t.overloaded, (uint64_t)NTHREADS * 20000);
    ck_assert_msg(in.most >= 1 && (uint32_t)in.most <= max, "%d inside at once, max %u",
                  in.most, max);
    fg_bulkhead_stats s = stats_of(b);
    ck_assert_uint_eq(s.admitted, t.ok);
    ck_assert_uint_eq(s.rejected, t.overloaded);
    ck_assert_uint_eq(s.in_flight, 0);
    ck_assert_uint_le(s.max_in_flight, max);
    ck_assert_uint_ge(s.max_in_flight, (uint32_t)in.most);
    fg_bulkhead_free(b);
}
END_TEST

/* Room for every thread: no enter may ever be refused, however the
 * threads interleave (a stale read must not look like a full bulkhead). */
static void *never_full_main(void *arg) {
    tjob *j = arg;
    for (int i = 0; i < j->iters; i++) {
        int rc = fg_bulkhead_try_enter(j->b);
        j->ok += rc == 0;
        j->overloaded += rc == FG_EOVERLOADED;
        j->other += rc != 0 && rc != FG_EOVERLOADED;
        if (rc == 0)
            j->other += fg_bulkhead_exit(j->b) != 0;
    }
    return NULL;
}

START_TEST(test_threads_never_full) {
    fg_bulkhead *b = mk_bulkhead(NTHREADS, 0, fg_clock_monotonic());
    inside in = {0, 0};

    tjob t = run_threads(never_full_main, b, NULL, &in, 200000);
    ck_assert_uint_eq(t.other, 0);
    ck_assert_uint_eq(t.overloaded, 0);
    ck_assert_uint_eq(t.ok, (uint64_t)NTHREADS * 200000);
    fg_bulkhead_stats s = stats_of(b);
    ck_assert_uint_eq(s.admitted, t.ok);
    ck_assert_uint_eq(s.rejected, 0);
    ck_assert_uint_eq(s.in_flight, 0);
    ck_assert_uint_le(s.max_in_flight, NTHREADS);
    fg_bulkhead_free(b);
}
END_TEST

START_TEST(test_threads_chain) {
    fg_bulkhead *b = mk_bulkhead(2, 0, fg_clock_monotonic());
    fg_chain *chain = NULL;
    fg_stage *s = NULL;
    inside in = {0, 0};

    ck_assert_int_eq(fg_chain_new(NULL, &chain), 0);
    ck_assert_int_eq(fg_stage_bulkhead(b, NULL, NULL, &s), 0);
    ck_assert_int_eq(fg_chain_use(chain, s), 0);
    tjob t = run_threads(chain_main, b, chain, &in, 20000);
    ck_assert_uint_eq(t.other, 0);
    ck_assert_uint_eq(t.ok + t.overloaded, (uint64_t)NTHREADS * 20000);
    ck_assert_int_le(in.most, 2);
    fg_bulkhead_stats st = stats_of(b);
    ck_assert_uint_eq(st.admitted, t.ok);
    ck_assert_uint_eq(st.rejected, t.overloaded);
    ck_assert_uint_eq(st.in_flight, 0);
    fg_chain_free(chain);
    fg_bulkhead_free(b);
}
END_TEST

/* Waiting on the real clock: one slot, a wait long enough for everyone. */
START_TEST(test_threads_wait_real) {
    fg_bulkhead *b = mk_bulkhead(1, 10 * FG_NS_PER_S, fg_clock_monotonic());
    fg_chain *chain = NULL;
    fg_stage *s = NULL;
    inside in = {0, 0};

    ck_assert_int_eq(fg_chain_new(NULL, &chain), 0);
    ck_assert_int_eq(fg_stage_bulkhead(b, NULL, NULL, &s), 0);
    ck_assert_int_eq(fg_chain_use(chain, s), 0);
    tjob j[NTHREADS];
    pthread_t th[NTHREADS];
    uint64_t ok = 0;
    for (int i = 0; i < NTHREADS; i++) {
        j[i] = (tjob){b, chain, &in, 300, 0, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, chain_main, &j[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        ck_assert_uint_eq(j[i].other, 0);
        ok += j[i].ok;
    }
    ck_assert_int_eq(in.most, 1);
    fg_bulkhead_stats st = stats_of(b);
    /* Every sync request waited its turn; split ones could only try. */
    ck_assert_uint_eq(st.admitted, ok);
    ck_assert_uint_ge(ok, (uint64_t)NTHREADS * 150);
    ck_assert_uint_eq(st.wait_timeouts, 0);
    ck_assert_uint_eq(st.in_flight, 0);
    ck_assert_uint_eq(st.max_in_flight, 1);
    fg_chain_free(chain);
    fg_bulkhead_free(b);
}
END_TEST

/* set_max changes under load: never more inside than the largest max. */
typedef struct toggler {
    fg_bulkhead *b;
    int stop; /* atomic */
    int changes;
} toggler;

static void *toggle_main(void *arg) {
    toggler *t = arg;
    for (uint32_t i = 0; i < 100000 && !__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE); i++) {
        (void)fg_bulkhead_set_max(t->b, 1 + i % 3);
        t->changes++;
        sched_yield();
    }
    return NULL;
}

START_TEST(test_threads_set_max) {
    fg_bulkhead *b = mk_bulkhead(2, 0, fg_clock_monotonic());
    inside in = {0, 0};
    toggler tg = {b, 0, 0};
    pthread_t th;

    ck_assert_int_eq(pthread_create(&th, NULL, toggle_main, &tg), 0);
    tjob t = run_threads(try_main, b, NULL, &in, 20000);
    __atomic_store_n(&tg.stop, 1, __ATOMIC_RELEASE);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_uint_eq(t.other, 0);
    ck_assert_int_le(in.most, 3);
    ck_assert_int_gt(tg.changes, 0);
    fg_bulkhead_stats s = stats_of(b);
    ck_assert_uint_eq(s.admitted, t.ok);
    ck_assert_uint_eq(s.rejected, t.overloaded);
    ck_assert_uint_eq(s.in_flight, 0);
    ck_assert_uint_le(s.max_in_flight, 3);
    fg_bulkhead_free(b);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

Suite *fg_suite_bulkhead(void) {
    Suite *s = suite_create("bulkhead");
    TCase *tc;

    tc = tcase_create("slots");
    tcase_add_test(tc, test_slots_exact);
    tcase_add_test(tc, test_one_slot_many);
    tcase_add_test(tc, test_set_max);
    suite_add_tcase(s, tc);

    tc = tcase_create("wait");
    tcase_add_test(tc, test_ref_schedule);
    tcase_add_loop_test(tc, test_wait_timeout_exact, 0, 5);
    tcase_add_test(tc, test_wait_zero);
    tcase_add_loop_test(tc, test_wait_slot_freed, 0, 5);
    tcase_add_test(tc, test_wait_raise_max);
    tcase_add_test(tc, test_wait_frozen_clock);
    suite_add_tcase(s, tc);

    tc = tcase_create("stage");
    tcase_add_test(tc, test_stage_admits_and_releases);
    tcase_add_test(tc, test_stage_rejects_full);
    tcase_add_test(tc, test_stage_later_rejection);
    tcase_add_test(tc, test_stage_wait_timeout);
    tcase_add_test(tc, test_stage_wait_admitted);
    tcase_add_test(tc, test_stage_deadline_caps);
    tcase_add_test(tc, test_stage_wait_canceled);
    tcase_add_test(tc, test_stage_split_never_waits);
    tcase_add_loop_test(tc, test_stage_wait_counts_toward_delay, 0, 2);
    tcase_add_test(tc, test_stage_split_threads);
    tcase_add_test(tc, test_stage_shared);
    suite_add_tcase(s, tc);

    tc = tcase_create("shadow");
    tcase_add_test(tc, test_shadow);
    suite_add_tcase(s, tc);

    tc = tcase_create("options");
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_names_and_kind);
    suite_add_tcase(s, tc);

    tc = tcase_create("oom");
    tcase_add_checked_fixture(tc, NULL, oom_teardown);
    tcase_add_test(tc, test_oom);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_loop_test(tc, test_threads_try, 0, 3);
    tcase_add_test(tc, test_threads_never_full);
    tcase_add_test(tc, test_threads_chain);
    tcase_add_test(tc, test_threads_wait_real);
    tcase_add_test(tc, test_threads_set_max);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    return s;
}
