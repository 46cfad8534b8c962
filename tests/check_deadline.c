/*
 * tests/check_deadline.c - deadlines and cancellation (floodgate/deadline.h).
 *
 * The ctx calls (time left, shortening a deadline, cancel); the timeout
 * stage (its deadline from timeout_ns, an inherited deadline and the
 * inbound grpc-timeout header, and its exact counters); the chain's own
 * checks (a passed deadline, a stage's wait that would start the handler
 * late, the split API with and without a router, retries that re-read the
 * clock, cancellation before, during and between attempts and from another
 * thread); the grpc-timeout wire form, parsed and written, against tables
 * computed by hand from the header's rule; and every bad argument.
 *
 * Time is a fake clock, never a sleep: the sync chain's waits advance it.
 * Cancellation from another thread uses real threads that spin on
 * sched_yield, bounded by a timeout on the monotonic clock.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

#define MS FG_NS_PER_MS
#define US FG_NS_PER_US
#define S  FG_NS_PER_S
#define H  (UINT64_C(3600) * FG_NS_PER_S)
#define T0 (UINT64_C(1000) * FG_NS_PER_S) /* the fake clock's start */

#define LOG_MAX 16

/* ---- rigs, stages and handlers --------------------------------------------------------- */

/* A chain on a fake clock reading T0. */
typedef struct rig {
    fg_fake_clock *fc;
    fg_chain *chain;
} rig;

static void rig_new_fb(rig *r, fg_fallback_fn fallback, void *arg) {
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    ck_assert_int_eq(fg_fake_clock_new(T0, &r->fc), 0);
    co.clock = fg_fake_clock_as_clock(r->fc);
    co.fallback = fallback;
    co.fallback_arg = arg;
    ck_assert_int_eq(fg_chain_new(&co, &r->chain), 0);
}

static void rig_new(rig *r) { rig_new_fb(r, NULL, NULL); }

/* Append a stage (the chain takes it) and return it, borrowed. */
static const fg_stage *rig_use(rig *r, fg_stage *s) {
    ck_assert_int_eq(fg_chain_use(r->chain, s), 0);
    return s;
}

static void rig_free(rig *r) {
    fg_chain_free(r->chain);
    fg_fake_clock_free(r->fc);
}

/* A recording stage: counts its hooks and keeps every outcome its exit saw. */
typedef struct rec {
    int enters, exits;
    fg_outcome out[LOG_MAX];
    uint64_t left_at_enter; /* fg_ctx_time_left in the last enter */
} rec;

static int rec_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    rec *r = state;
    (void)slot;
    r->enters++;
    r->left_at_enter = fg_ctx_time_left(ctx);
    return 0;
}

static int rec_exit(void *state, fg_ctx *ctx, const fg_outcome *o, uint64_t slot) {
    rec *r = state;
    (void)ctx, (void)slot;
    if (r->exits < LOG_MAX)
        r->out[r->exits] = *o;
    r->exits++;
    return 0;
}

static const fg_stage_ops rec_ops = {"rec", rec_enter, rec_exit, NULL};

static fg_stage *mk_rec(rec *r) {
    fg_stage *s = NULL;
    memset(r, 0, sizeof(*r));
    ck_assert_int_eq(fg_stage_new(&rec_ops, r, "rec", &s), 0);
    return s;
}

/* The i-th exit a recording stage saw was `kind` with `code`, and no stage
 * rejected it (the chain did, or nobody did). */
static void assert_exit(const rec *r, int i, fg_outcome_kind kind, int code) {
    ck_assert_int_lt(i, r->exits);
    ck_assert_int_lt(i, LOG_MAX);
    ck_assert_int_eq(r->out[i].kind, kind);
    ck_assert_int_eq(r->out[i].code, code);
    ck_assert_ptr_null(r->out[i].rejected_by);
}

/* A stage that asks for a wait, as a smoothing limiter does: raises
 * ctx->delay_ns to the uint64_t its state points to. */
static int wait_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    uint64_t w = *(const uint64_t *)state;
    (void)slot;
    if (w > ctx->delay_ns)
        ctx->delay_ns = w;
    return 0;
}

static const fg_stage_ops wait_ops = {"wait", wait_enter, NULL, NULL};

static fg_stage *mk_wait(uint64_t *w) {
    fg_stage *s = NULL;
    ck_assert_int_eq(fg_stage_new(&wait_ops, w, "wait", &s), 0);
    return s;
}

/* A stage whose enter cancels the request and admits it. */
static int cancel_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)state, (void)slot;
    fg_ctx_cancel(ctx);
    return 0;
}

static const fg_stage_ops cancel_ops = {"cancel", cancel_enter, NULL, NULL};

/* A stage that rejects every request with the int its state points to. */
static int reject_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)ctx, (void)slot;
    return *(const int *)state;
}

static const fg_stage_ops reject_ops = {"reject", reject_enter, NULL, NULL};

/* A retrying stage: its exit sleeps a backoff (advances the fake clock) and
 * asks for another attempt after every failure, up to max retries; it
 * records the outcome of every attempt. */
typedef struct retrier {
    fg_fake_clock *fc;
    uint64_t backoff_ns;
    uint32_t max;
    int exits;
    fg_outcome out[LOG_MAX];
} retrier;

static int retrier_exit(void *state, fg_ctx *ctx, const fg_outcome *o, uint64_t slot) {
    retrier *r = state;
    (void)slot;
    if (r->exits < LOG_MAX)
        r->out[r->exits] = *o;
    r->exits++;
    if (o->kind != FG_OUTCOME_FAILED || ctx->retry_count >= r->max)
        return 0;
    fg_fake_clock_advance(r->fc, r->backoff_ns);
    return FG_STAGE_RETRY;
}

static const fg_stage_ops retrier_ops = {"retrier", NULL, retrier_exit, NULL};

/* A handler that records what it saw on each call, then moves the fake
 * clock by `advance` (the work takes that long) and returns `ret`. */
typedef struct hrec {
    fg_fake_clock *fc;
    int calls;
    uint64_t advance;
    int ret;
    int cancel_at; /* cancel the ctx on this call (1-based); 0: never */
    uint64_t now_seen[LOG_MAX], clock_seen[LOG_MAX], deadline_seen[LOG_MAX];
    uint64_t left_seen[LOG_MAX]; /* fg_ctx_time_left when called */
    uint64_t left_after;         /* fg_ctx_time_left after the work */
    uint64_t remaining_seen;     /* fg_ctx_remaining(ctx, ctx->now_ns) */
} hrec;

static int rec_handler(fg_ctx *ctx, void *arg) {
    hrec *h = arg;
    int i = h->calls++;
    if (i < LOG_MAX) {
        h->now_seen[i] = ctx->now_ns;
        h->clock_seen[i] = fg_fake_clock_now(h->fc);
        h->deadline_seen[i] = ctx->deadline_ns;
        h->left_seen[i] = fg_ctx_time_left(ctx);
    }
    h->remaining_seen = fg_ctx_remaining(ctx, ctx->now_ns);
    if (h->advance)
        fg_fake_clock_advance(h->fc, h->advance);
    h->left_after = fg_ctx_time_left(ctx);
    if (h->cancel_at == h->calls)
        fg_ctx_cancel(ctx);
    return h->ret;
}

static fg_stage *mk_timeout(uint64_t timeout_ns, const char *header, uint64_t max_inbound_ns) {
    fg_timeout_options o = FG_TIMEOUT_OPTIONS_INIT;
    fg_stage *s = NULL;
    o.timeout_ns = timeout_ns;
    o.header = header;
    o.max_inbound_ns = max_inbound_ns;
    int rc = fg_stage_timeout(&o, NULL, &s);
    ck_assert_msg(rc == 0, "fg_stage_timeout: %s", fg_err_name(rc));
    return s;
}

static fg_timeout_stats tstats(const fg_stage *s) {
    fg_timeout_stats st;
    ck_assert_int_eq(fg_timeout_stats_get(s, &st), 0);
    return st;
}

/* The counters, all six at once: requests, shortened, inbound,
 * inbound_invalid, late, timed_out. */
#define ASSERT_TSTATS(s, rq, sh, in, inv, lt, to)                                             \
    do {                                                                                      \
        fg_timeout_stats st_ = tstats(s);                                                     \
        ck_assert_uint_eq(st_.requests, (rq));                                                \
        ck_assert_uint_eq(st_.shortened, (sh));                                               \
        ck_assert_uint_eq(st_.inbound, (in));                                                 \
        ck_assert_uint_eq(st_.inbound_invalid, (inv));                                        \
        ck_assert_uint_eq(st_.late, (lt));                                                    \
        ck_assert_uint_eq(st_.timed_out, (to));                                               \
    } while (0)

/* ---- 1. the ctx: time left, shortening ------------------------------------------------- */

START_TEST(test_remaining) {
    fg_ctx ctx;
    th_ctx_new(&ctx);

    ck_assert_uint_eq(fg_ctx_remaining(NULL, 0), UINT64_MAX);
    ck_assert_uint_eq(fg_ctx_remaining(NULL, T0), UINT64_MAX);
    /* No deadline: forever, whatever the time. */
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, 0), UINT64_MAX);
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, T0), UINT64_MAX);
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, UINT64_MAX), UINT64_MAX);

    ctx.deadline_ns = T0 + 250 * MS;
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, 0), T0 + 250 * MS);
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, T0), 250 * MS);
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, T0 + 250 * MS - 1), 1);
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, T0 + 250 * MS), 0); /* at it: none left */
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, T0 + 250 * MS + 1), 0);
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, UINT64_MAX), 0);

    /* fg_ctx_init forgets the deadline. */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_uint_eq(ctx.deadline_ns, 0);
    ck_assert_uint_eq(fg_ctx_remaining(&ctx, T0), UINT64_MAX);
}
END_TEST

START_TEST(test_set_deadline) {
    fg_ctx ctx;
    th_ctx_new(&ctx);

    ck_assert_int_eq(fg_ctx_set_deadline(NULL, T0), FG_EINVAL);
    ck_assert_int_eq(fg_ctx_set_deadline(&ctx, 0), 0); /* 0 changes nothing */
    ck_assert_uint_eq(ctx.deadline_ns, 0);
    ck_assert_int_eq(fg_ctx_set_deadline(&ctx, T0 + 500), 1); /* none -> one */
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 500);
    ck_assert_int_eq(fg_ctx_set_deadline(&ctx, T0 + 501), 0); /* never extended */
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 500);
    ck_assert_int_eq(fg_ctx_set_deadline(&ctx, UINT64_MAX), 0);
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 500);
    ck_assert_int_eq(fg_ctx_set_deadline(&ctx, T0 + 500), 0); /* the same: unchanged */
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 500);
    ck_assert_int_eq(fg_ctx_set_deadline(&ctx, T0 + 499), 1); /* shortened */
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 499);
    ck_assert_int_eq(fg_ctx_set_deadline(&ctx, 0), 0); /* 0 does not clear it */
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 499);
    ck_assert_int_eq(fg_ctx_set_deadline(&ctx, 1), 1); /* even into the past */
    ck_assert_uint_eq(ctx.deadline_ns, 1);
}
END_TEST

/* Before a ctx has entered a chain, time left is on the monotonic clock:
 * bracketed by two readings of it. */
START_TEST(test_time_left_monotonic) {
    fg_ctx ctx;
    th_ctx_new(&ctx);

    ck_assert_uint_eq(fg_ctx_time_left(NULL), UINT64_MAX);
    ck_assert_uint_eq(fg_ctx_time_left(&ctx), UINT64_MAX);
    uint64_t a = fg_clock_monotonic_now(NULL);
    ctx.deadline_ns = a + H;
    uint64_t left = fg_ctx_time_left(&ctx);
    uint64_t b = fg_clock_monotonic_now(NULL);
    ck_assert_uint_le(left, H);
    ck_assert_uint_ge(left, ctx.deadline_ns - b);
    ctx.deadline_ns = a; /* passed (or just now) */
    ck_assert_uint_eq(fg_ctx_time_left(&ctx), 0);

    /* A ctx that ran in a chain on a fake clock reading 1 ns and was then
     * initialised again is back on the monotonic clock (on the fake one it
     * would have about a + 1 h left). */
    fg_fake_clock *fc = NULL;
    fg_chain *chain = NULL;
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    ck_assert_int_eq(fg_fake_clock_new(1, &fc), 0);
    co.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_chain_new(&co, &chain), 0);
    ctx.deadline_ns = 1 + 10 * MS;
    ck_assert_int_eq(fg_chain_call(chain, &ctx, th_ok_handler, NULL), 0);
    ck_assert_uint_eq(fg_ctx_time_left(&ctx), 10 * MS); /* the chain's clock, still */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    a = fg_clock_monotonic_now(NULL);
    ctx.deadline_ns = a + H;
    left = fg_ctx_time_left(&ctx);
    b = fg_clock_monotonic_now(NULL);
    ck_assert_uint_le(left, H);
    ck_assert_uint_ge(left, ctx.deadline_ns - b);
    fg_chain_free(chain);
    fg_fake_clock_free(fc);
}
END_TEST

/* Inside a chain, time left is on the chain's clock: in a stage's enter, in
 * the handler (as the work advances the clock), and after fg_chain_enter. */
START_TEST(test_time_left_in_chain) {
    rig r;
    rec a;
    hrec h = {0};
    fg_ctx ctx;

    rig_new(&r);
    rig_use(&r, mk_rec(&a));
    h.fc = r.fc;
    h.advance = 30 * MS;
    th_ctx_new(&ctx);
    ctx.deadline_ns = T0 + 100 * MS;
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(a.left_at_enter, 100 * MS);
    ck_assert_uint_eq(h.left_seen[0], 100 * MS);
    ck_assert_uint_eq(h.remaining_seen, 100 * MS);
    ck_assert_uint_eq(h.left_after, 70 * MS);

    /* Work that outlasts the deadline: 0 left, and the result stands. */
    fg_fake_clock_set(r.fc, T0);
    h.advance = 150 * MS;
    th_ctx_new(&ctx);
    ctx.deadline_ns = T0 + 100 * MS;
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(h.left_seen[1], 100 * MS);
    ck_assert_uint_eq(h.left_after, 0);
    ck_assert_int_eq(ctx.status, 0);

    /* No deadline: forever. */
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(h.left_seen[2], UINT64_MAX);
    ck_assert_uint_eq(h.left_after, UINT64_MAX);

    /* Split: between enter and exit the ctx still reads the chain's clock. */
    fg_fake_clock_set(r.fc, T0);
    th_ctx_new(&ctx);
    ctx.deadline_ns = T0 + 100 * MS;
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), 0);
    ck_assert_uint_eq(fg_ctx_time_left(&ctx), 100 * MS);
    fg_fake_clock_advance(r.fc, 40 * MS);
    ck_assert_uint_eq(fg_ctx_time_left(&ctx), 60 * MS);
    ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), 0);
    rig_free(&r);
}
END_TEST

/* ---- 2. the timeout stage -------------------------------------------------------------- */

/* A deadline from timeout_ns, counted from the request's own enter time. */
START_TEST(test_timeout_sets_deadline) {
    rig r;
    hrec h = {0};
    fg_ctx ctx;

    rig_new(&r);
    const fg_stage *t = rig_use(&r, mk_timeout(100 * MS, NULL, 0));
    h.fc = r.fc;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(h.deadline_seen[0], T0 + 100 * MS);
    ck_assert_uint_eq(h.left_seen[0], 100 * MS);
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 100 * MS);

    fg_fake_clock_advance(r.fc, 5 * S);
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(h.deadline_seen[1], T0 + 5 * S + 100 * MS);
    ASSERT_TSTATS(t, 2, 2, 0, 0, 0, 0);

    /* The split API too. */
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), 0);
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 5 * S + 100 * MS);
    ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), 0);
    ASSERT_TSTATS(t, 3, 3, 0, 0, 0, 0);
    rig_free(&r);
}
END_TEST

/* A caller's deadline is shortened, never extended. */
START_TEST(test_timeout_inherited) {
    static const struct {
        uint64_t caller; /* 0: none */
        uint64_t want;
        int shortened;
    } cases[] = {
        {0, T0 + 100 * MS, 1},
        {T0 + 50 * MS, T0 + 50 * MS, 0},
        {T0 + 100 * MS, T0 + 100 * MS, 0}, /* equal: not changed */
        {T0 + 100 * MS + 1, T0 + 100 * MS, 1},
        {T0 + 10 * S, T0 + 100 * MS, 1},
        {T0, T0, 0}, /* exactly now: admitted, with no time left */
    };
    rig r;
    hrec h = {0};

    rig_new(&r);
    const fg_stage *t = rig_use(&r, mk_timeout(100 * MS, NULL, 0));
    h.fc = r.fc;
    uint64_t shortened = 0;
    for (int i = 0; i < TH_NELEM(cases); i++) {
        fg_ctx ctx;
        th_ctx_new(&ctx);
        ctx.deadline_ns = cases[i].caller;
        ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
        ck_assert_msg(h.deadline_seen[i] == cases[i].want,
                      "case %d: deadline %" PRIu64 ", want %" PRIu64, i, h.deadline_seen[i],
                      cases[i].want);
        shortened += (uint64_t)cases[i].shortened;
        ck_assert_uint_eq(tstats(t).shortened, shortened);
    }
    ck_assert_int_eq(h.calls, TH_NELEM(cases));
    ASSERT_TSTATS(t, TH_NELEM(cases), shortened, 0, 0, 0, 0);
    rig_free(&r);
}
END_TEST

/* One request through a one-stage chain with an optional inbound header
 * value and caller deadline; returns the deadline the handler saw. */
static uint64_t inbound_deadline(rig *r, const char *name, const char *value,
                                 uint64_t caller) {
    hrec h = {0};
    fg_ctx ctx;
    th_heap_list heap = {0};

    h.fc = r->fc;
    th_ctx_new(&ctx);
    if (value != NULL)
        th_add_header(&ctx, &heap, name, value);
    ctx.deadline_ns = caller;
    ck_assert_int_eq(fg_chain_call(r->chain, &ctx, rec_handler, &h), 0);
    ck_assert_int_eq(h.calls, 1);
    th_heap_free(&heap);
    return h.deadline_seen[0];
}

START_TEST(test_timeout_inbound) {
    rig r;

    /* timeout 1 s and the header: the shorter wins. */
    rig_new(&r);
    const fg_stage *t = rig_use(&r, mk_timeout(S, "grpc-timeout", 0));
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "50m", 0), T0 + 50 * MS);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "5S", 0), T0 + S);
    ck_assert_uint_eq(inbound_deadline(&r, "GRPC-Timeout", "250000u", 0), T0 + 250 * MS);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "7n", 0), T0 + 7);
    ck_assert_uint_eq(inbound_deadline(&r, "x-other", "1m", 0), T0 + S); /* not the header */
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", NULL, 0), T0 + S);
    /* An inherited deadline shorter than both stands. */
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "50m", T0 + 10 * MS), T0 + 10 * MS);
    ASSERT_TSTATS(t, 7, 6, 5, 0, 0, 0);

    /* Invalid values are ignored (timeout_ns applies) and counted. */
    static const char *const bad[] = {"",    "5",   "m",   "5x",   "5s",        "-5m",
                                      "+5m", " 5m", "5m ", "5.5S", "123456789n"};
    for (int i = 0; i < TH_NELEM(bad); i++)
        ck_assert_msg(inbound_deadline(&r, "grpc-timeout", bad[i], 0) == T0 + S,
                      "\"%s\" was not ignored", bad[i]);
    ASSERT_TSTATS(t, 7 + TH_NELEM(bad), 6 + TH_NELEM(bad), 5, TH_NELEM(bad), 0, 0);
    rig_free(&r);

    /* Only the header, capped at 200 ms. */
    rig_new(&r);
    t = rig_use(&r, mk_timeout(0, "grpc-timeout", 200 * MS));
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "10S", 0), T0 + 200 * MS);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "100m", 0), T0 + 100 * MS);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "200m", 0), T0 + 200 * MS);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", NULL, 0),
                      0); /* none: no deadline */
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "bad", 0), 0);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "bad", T0 + S), T0 + S);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "1H", T0 + 50 * MS), T0 + 50 * MS);
    ASSERT_TSTATS(t, 7, 3, 4, 2, 0, 0);
    rig_free(&r);

    /* Only the header, no cap: a huge value saturates to "forever" rather
     * than wrapping into an early deadline. */
    rig_new(&r);
    t = rig_use(&r, mk_timeout(0, "grpc-timeout", 0));
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "99999999H", 0), UINT64_MAX);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "5124095H", 0),
                      T0 + UINT64_C(18446742000000000000)); /* fits */
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "1H", 0), T0 + H);
    ASSERT_TSTATS(t, 3, 3, 3, 0, 0, 0);
    rig_free(&r);
}
END_TEST

/* The first of two headers of that name counts. */
START_TEST(test_timeout_inbound_first) {
    rig r;
    hrec h = {0};
    fg_ctx ctx;

    rig_new(&r);
    const fg_stage *t = rig_use(&r, mk_timeout(S, "grpc-timeout", 0));
    h.fc = r.fc;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "grpc-timeout", "20m"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "grpc-timeout", "10m"), 0);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(h.deadline_seen[0], T0 + 20 * MS);
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "grpc-timeout", "junk"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "grpc-timeout", "10m"), 0);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(h.deadline_seen[1], T0 + S);
    ASSERT_TSTATS(t, 2, 2, 1, 1, 0, 0);
    rig_free(&r);
}
END_TEST

/*
 * An inbound "0m" (a caller with no time left; fg_timeout_parse accepts it)
 * must not take away the stage's own timeout: the deadline is the earliest
 * of now + timeout_ns and now + 0 (or, if 0 were treated as invalid, now +
 * timeout_ns). Either way the request has a deadline no later than
 * now + 100 ms.
 */
START_TEST(test_timeout_inbound_zero) {
    rig r;

    rig_new(&r);
    rig_use(&r, mk_timeout(100 * MS, "grpc-timeout", 0));
    uint64_t d = inbound_deadline(&r, "grpc-timeout", "0m", 0);
    rig_free(&r);
    ck_assert_msg(d != 0 && d <= T0 + 100 * MS,
                  "inbound \"0m\" with timeout_ns 100 ms: deadline_ns %" PRIu64
                  " (0 = none), want one in [1, now + 100 ms]",
                  d);
}
END_TEST

static int late_fallback_code;

static int record_fallback(fg_ctx *ctx, int code, void *arg) {
    (void)ctx, (void)arg;
    late_fallback_code = code;
    return 7;
}

/* late, timed_out, and what does not count as either. */
START_TEST(test_timeout_late_and_timed_out) {
    rig r;
    hrec h = {0};
    fg_ctx ctx;

    rig_new(&r);
    const fg_stage *t = rig_use(&r, mk_timeout(100 * MS, NULL, 0));
    h.fc = r.fc;

    /* Finishing exactly at the deadline is on time. */
    h.advance = 100 * MS;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ASSERT_TSTATS(t, 1, 1, 0, 0, 0, 0);
    /* One nanosecond later is late, and the handler's success stands. */
    h.advance = 100 * MS + 1;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_int_eq(ctx.status, 0);
    ASSERT_TSTATS(t, 2, 2, 0, 0, 1, 0);
    /* A late failure is late too, and its code stands. */
    h.advance = 150 * MS;
    h.ret = FG_EHANDLER;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_EHANDLER);
    ASSERT_TSTATS(t, 3, 3, 0, 0, 2, 0);
    /* Split, exited after the deadline: late. */
    h.ret = 0;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), 0);
    fg_fake_clock_advance(r.fc, 101 * MS);
    ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), 0);
    ASSERT_TSTATS(t, 4, 4, 0, 0, 3, 0);
    /* An inherited deadline already passed: the stage admits, the chain
     * rejects; counted timed_out, not late, and not shortened. */
    th_ctx_new(&ctx);
    ctx.deadline_ns = fg_fake_clock_now(r.fc) - 1;
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_ETIMEDOUT);
    ASSERT_TSTATS(t, 5, 4, 0, 0, 3, 1);
    ck_assert_int_eq(h.calls, 3); /* the split request ran no handler */
    rig_free(&r);

    /* A later stage's rejection is neither late nor timed out; the same
     * code from a stage counts as timed out ("rejected with FG_ETIMEDOUT
     * after this stage admitted them"). */
    static int code;
    fg_stage *rs = NULL;
    rig_new(&r);
    t = rig_use(&r, mk_timeout(100 * MS, NULL, 0));
    ck_assert_int_eq(fg_stage_new(&reject_ops, &code, "reject", &rs), 0);
    rig_use(&r, rs);
    code = FG_ELIMITED;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, th_ok_handler, NULL), FG_ELIMITED);
    ck_assert_ptr_eq(ctx.rejected_by, rs);
    ASSERT_TSTATS(t, 1, 1, 0, 0, 0, 0);
    code = FG_ETIMEDOUT;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, th_ok_handler, NULL), FG_ETIMEDOUT);
    ASSERT_TSTATS(t, 2, 2, 0, 0, 0, 1);
    rig_free(&r);

    /* With a fallback, the chain's own rejection reaches it: code
     * FG_ETIMEDOUT, no rejecting stage; its return value is returned. */
    rig_new_fb(&r, record_fallback, NULL);
    t = rig_use(&r, mk_timeout(100 * MS, NULL, 0));
    late_fallback_code = 0;
    th_ctx_new(&ctx);
    ctx.deadline_ns = 1;
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, th_ok_handler, NULL), 7);
    ck_assert_int_eq(late_fallback_code, FG_ETIMEDOUT);
    ck_assert_int_eq(ctx.status, FG_ETIMEDOUT);
    ck_assert_ptr_null(ctx.rejected_by);
    ASSERT_TSTATS(t, 1, 0, 0, 0, 0, 1);
    rig_free(&r);
}
END_TEST

/* A request with no deadline at all is never late. */
START_TEST(test_timeout_no_deadline_never_late) {
    rig r;
    hrec h = {0};
    fg_ctx ctx;

    rig_new(&r);
    const fg_stage *t = rig_use(&r, mk_timeout(0, "grpc-timeout", 0));
    h.fc = r.fc;
    h.advance = 24 * H;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(ctx.deadline_ns, 0);
    ASSERT_TSTATS(t, 1, 0, 0, 0, 0, 0);
    /* An inherited deadline counts, even when the stage set none. */
    h.advance = 20 * MS;
    th_ctx_new(&ctx);
    ctx.deadline_ns = fg_fake_clock_now(r.fc) + 10 * MS;
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ASSERT_TSTATS(t, 2, 0, 0, 0, 1, 0);
    rig_free(&r);
}
END_TEST

static int make_rc(const fg_timeout_options *o, const char *name) {
    fg_stage *s = (fg_stage *)&s; /* a sentinel: left alone on error */
    fg_stage *const sentinel = s;
    int rc = fg_stage_timeout(o, name, &s);
    if (rc == 0) {
        ck_assert_ptr_nonnull(s);
        ck_assert_ptr_ne(s, sentinel);
        fg_stage_unref(s);
    } else {
        ck_assert_ptr_eq(s, sentinel);
    }
    return rc;
}

static const fg_stage_ops other_ops = {"timeout", NULL, NULL, NULL};

START_TEST(test_timeout_options) {
    fg_timeout_options o = FG_TIMEOUT_OPTIONS_INIT;
    fg_stage *s = NULL;
    char name[FG_STAGE_NAME_MAX + 2];
    char hdr[130];
    fg_timeout_stats st;

    ck_assert_uint_eq(o.timeout_ns, 0);
    ck_assert_ptr_null(o.header);
    ck_assert_uint_eq(o.max_inbound_ns, 0);
    ck_assert_int_eq(fg_stage_timeout(NULL, NULL, &s), FG_EINVAL);
    o.timeout_ns = MS;
    ck_assert_int_eq(fg_stage_timeout(&o, NULL, NULL), FG_EINVAL);
    ck_assert_int_eq(make_rc(&o, NULL), 0);
    o.timeout_ns = 0; /* neither a timeout nor a header */
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o.max_inbound_ns = S; /* a cap alone is not enough */
    ck_assert_int_eq(make_rc(&o, NULL), FG_EINVAL);
    o.header = "grpc-timeout";
    ck_assert_int_eq(make_rc(&o, NULL), 0);

    static const char *const not_tokens[] = {
        "", "grpc timeout", "grpc-timeout:", "a\tb", "x(y)", "caf\xc3\xa9"};
    for (int i = 0; i < TH_NELEM(not_tokens); i++) {
        o.header = not_tokens[i];
        ck_assert_msg(make_rc(&o, NULL) == FG_EINVAL, "header \"%s\"", not_tokens[i]);
        o.timeout_ns = MS; /* with a timeout too */
        ck_assert_msg(make_rc(&o, NULL) == FG_EINVAL, "header \"%s\"", not_tokens[i]);
        o.timeout_ns = 0;
    }
    th_fill(hdr, 128, "x-grpc-timeout-");
    hdr[128] = '\0';
    o.header = hdr;
    ck_assert_int_eq(make_rc(&o, NULL), 0);
    hdr[128] = 'x';
    hdr[129] = '\0';
    ck_assert_int_eq(make_rc(&o, NULL), FG_ETOOLONG); /* 129 bytes */

    o.header = NULL;
    o.timeout_ns = MS;
    th_fill(name, FG_STAGE_NAME_MAX, "deadline-");
    name[FG_STAGE_NAME_MAX] = '\0';
    ck_assert_int_eq(make_rc(&o, name), 0);
    name[FG_STAGE_NAME_MAX] = 'x';
    name[FG_STAGE_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(make_rc(&o, name), FG_ETOOLONG);

    /* Names, kind, zero stats; the header name is copied. */
    char hcopy[] = "grpc-timeout", ncopy[] = "edge";
    o.header = hcopy;
    ck_assert_int_eq(fg_stage_timeout(&o, NULL, &s), 0);
    ck_assert_str_eq(fg_stage_name(s), "timeout");
    ck_assert_str_eq(fg_stage_kind(s), "timeout");
    ck_assert_int_eq(fg_timeout_stats_get(s, &st), 0);
    ck_assert(th_is_zero(&st, sizeof(st)));
    ck_assert_int_eq(fg_timeout_stats_get(s, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_timeout_stats_get(NULL, &st), FG_EINVAL);
    fg_stage_unref(s);
    o.timeout_ns = 0;
    ck_assert_int_eq(fg_stage_timeout(&o, ncopy, &s), 0);
    hcopy[0] = 'X';
    ncopy[0] = 'X';
    ck_assert_str_eq(fg_stage_name(s), "edge");
    rig r;
    rig_new(&r);
    const fg_stage *t = rig_use(&r, s);
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", "3m", 0), T0 + 3 * MS);
    ASSERT_TSTATS(t, 1, 1, 1, 0, 0, 0);
    rig_free(&r);

    /* Another kind, even one called "timeout", has no timeout stats. */
    fg_stage *other = NULL;
    ck_assert_int_eq(fg_stage_new(&other_ops, NULL, "timeout", &other), 0);
    ck_assert_int_eq(fg_timeout_stats_get(other, &st), FG_EINVAL);
    fg_stage_unref(other);
}
END_TEST

static void oom_teardown(void) {
    fg_set_alloc_funcs(NULL, NULL);
    th_alloc_reset();
}

/* Fail the 1st, 2nd, ... allocation: FG_ENOMEM each time, nothing leaks. */
START_TEST(test_timeout_oom) {
    fg_timeout_options o = FG_TIMEOUT_OPTIONS_INIT;
    o.timeout_ns = MS;
    o.header = "grpc-timeout";
    for (long n = 1; n < 50; n++) {
        fg_stage *s = NULL;
        th_alloc_reset();
        ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
        th_alloc.fail_at = n;
        int rc = fg_stage_timeout(&o, "t", &s);
        if (rc == 0)
            fg_stage_unref(s);
        fg_set_alloc_funcs(NULL, NULL);
        ck_assert_msg(th_alloc.allocs == th_alloc.frees,
                      "N=%ld: %ld blocks allocated, %ld freed", n, th_alloc.allocs,
                      th_alloc.frees);
        if (!th_alloc.injected) {
            ck_assert_int_eq(rc, 0);
            ck_assert_int_gt(n, 2); /* at least the state and the header */
            return;
        }
        ck_assert_msg(rc == FG_ENOMEM, "N=%ld: %s", n, fg_err_name(rc));
    }
    ck_abort_msg("still failing after 50 allocations");
}
END_TEST

/* ---- 3. the chain's checks ------------------------------------------------------------- */

/* A deadline that passed before the handler: FG_ETIMEDOUT from the chain
 * (no rejecting stage), no handler, every entered stage exited REJECTED. */
START_TEST(test_passed_rejected) {
    rig r;
    rec a, b;
    hrec h = {0};
    fg_ctx ctx;

    rig_new(&r);
    rig_use(&r, mk_rec(&a));
    rig_use(&r, mk_rec(&b));
    h.fc = r.fc;
    for (int split = 0; split < 2; split++) {
        th_ctx_new(&ctx);
        ctx.deadline_ns = T0 - 1;
        int rc = split ? fg_chain_enter(r.chain, &ctx)
                       : fg_chain_call(r.chain, &ctx, rec_handler, &h);
        ck_assert_int_eq(rc, FG_ETIMEDOUT);
        ck_assert_int_eq(ctx.status, FG_ETIMEDOUT);
        ck_assert_ptr_null(ctx.rejected_by);
        ck_assert_int_eq(h.calls, 0);
        ck_assert_int_eq(a.enters, split + 1);
        ck_assert_int_eq(b.enters, split + 1);
        ck_assert_int_eq(a.exits, split + 1);
        ck_assert_int_eq(b.exits, split + 1);
        assert_exit(&a, split, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
        assert_exit(&b, split, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
        /* The request is finished: no exit, no second call. */
        ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), FG_ESTATE);
        ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_ESTATE);
        fg_error *e = fg_error_from_ctx(&ctx);
        ck_assert_int_eq(fg_error_code(e), FG_ETIMEDOUT);
        fg_error_free(e);
    }
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0);
    rig_free(&r);
}
END_TEST

/* Starting exactly at the deadline (now + delay == deadline) is allowed;
 * one nanosecond later is not. No wait is slept for a rejected request. */
START_TEST(test_exact_deadline) {
    static const struct {
        uint64_t delay, deadline_after;
        int rc;
    } cases[] = {
        {0, 0, 0},
        {10 * MS, 10 * MS, 0},
        {10 * MS, 10 * MS - 1, FG_ETIMEDOUT},
        {10 * MS + 1, 10 * MS, FG_ETIMEDOUT},
        {1, 0, FG_ETIMEDOUT},
        {0, 1, 0},
    };
    for (int split = 0; split < 2; split++) {
        for (int i = 0; i < TH_NELEM(cases); i++) {
            uint64_t wait = cases[i].delay;
            rig r;
            rec a;
            hrec h = {0};
            fg_ctx ctx;

            rig_new(&r);
            rig_use(&r, mk_rec(&a));
            rig_use(&r, mk_wait(&wait));
            h.fc = r.fc;
            th_ctx_new(&ctx);
            ctx.deadline_ns = T0 + cases[i].deadline_after;
            int rc = split ? fg_chain_enter(r.chain, &ctx)
                           : fg_chain_call(r.chain, &ctx, rec_handler, &h);
            ck_assert_msg(rc == cases[i].rc, "%s case %d: %s", split ? "split" : "sync", i,
                          fg_err_name(rc));
            ck_assert_ptr_null(ctx.rejected_by);
            ck_assert_uint_eq(ctx.delay_ns, cases[i].delay);
            if (rc != 0) {
                ck_assert_int_eq(h.calls, 0);
                ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0); /* nothing slept */
                assert_exit(&a, 0, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
            } else if (split) {
                ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), 0);
                assert_exit(&a, 0, FG_OUTCOME_OK, 0);
            } else {
                ck_assert_int_eq(h.calls, 1);
                ck_assert_uint_eq(h.clock_seen[0], T0 + cases[i].delay); /* it slept */
                ck_assert_uint_eq(h.left_seen[0], cases[i].deadline_after - cases[i].delay);
                assert_exit(&a, 0, FG_OUTCOME_OK, 0);
            }
            rig_free(&r);
        }
    }
}
END_TEST

/* A wait so long that now + wait does not fit in 64 bits is past any
 * deadline (it must not wrap into an early start). */
START_TEST(test_delay_overflow) {
    rig r;
    fg_ctx ctx;
    uint64_t wait = UINT64_MAX - T0 + 1; /* T0 + wait wraps to 0 */

    rig_new(&r);
    rig_use(&r, mk_wait(&wait));
    th_ctx_new(&ctx);
    ctx.deadline_ns = T0 + 10 * MS;
    int rc = fg_chain_enter(r.chain, &ctx);
    if (rc == 0)
        ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), 0);
    rig_free(&r);
    ck_assert_msg(rc == FG_ETIMEDOUT,
                  "a wait of 2^64 - now ns with 10 ms left was admitted (%s): "
                  "now_ns + delay_ns wrapped",
                  fg_err_name(rc));
}
END_TEST

/* A smoothing limiter that comes before the timeout stage reserves a slot
 * without knowing the deadline; the chain then sees that the handler would
 * start too late. */
START_TEST(test_smoothing_limiter) {
    fg_limiter_options lo = FG_LIMITER_OPTIONS_INIT;
    fg_limiter *lim = NULL;
    fg_stage *ls = NULL;
    rig r;
    rec a;
    hrec h = {0};
    fg_ctx ctx;

    lo.rate = 10; /* one token per 100 ms */
    lo.burst = 1;
    lo.max_wait_ns = S;
    rig_new(&r);
    lo.clock = fg_fake_clock_as_clock(r.fc);
    ck_assert_int_eq(fg_limiter_new(&lo, &lim), 0);
    ck_assert_int_eq(fg_stage_limit(lim, NULL, &ls), 0);
    rig_use(&r, mk_rec(&a));
    rig_use(&r, ls);
    const fg_stage *t = rig_use(&r, mk_timeout(50 * MS, NULL, 0));
    h.fc = r.fc;

    th_ctx_new(&ctx); /* the token: at once */
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_uint_eq(ctx.delay_ns, 0);
    th_ctx_new(&ctx); /* a slot 100 ms away, 50 ms allowed */
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_ETIMEDOUT);
    ck_assert_uint_eq(ctx.delay_ns, 100 * MS);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0);
    assert_exit(&a, 1, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
    ASSERT_TSTATS(t, 2, 2, 0, 0, 0, 1);
    fg_limit_stats ls_st;
    ck_assert_int_eq(fg_limit_stage_stats(ls, &ls_st), 0);
    ck_assert_uint_eq(ls_st.admitted, 1);
    ck_assert_uint_eq(ls_st.delayed, 1);
    rig_free(&r);
    fg_limiter_free(lim);
}
END_TEST

/* Routed requests: the check comes after the target's stages too, in the
 * split API (then fg_route_dispatch is never reached) and the sync one. */
typedef struct route_rig {
    rig r;
    rec chain_rec, target_rec;
    uint64_t wait;
    int handled;
    const fg_stage *timeout;
} route_rig;

static int count_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (*(int *)arg)++;
    return 0;
}

static void route_rig_new(route_rig *rr, uint64_t target_timeout) {
    fg_router *router = NULL;
    fg_stage *stages[3], *rs = NULL;
    size_t n = 0;

    memset(rr, 0, sizeof(*rr));
    rig_new(&rr->r);
    rig_use(&rr->r, mk_rec(&rr->chain_rec));
    stages[n++] = mk_rec(&rr->target_rec);
    if (target_timeout) {
        stages[n] = mk_timeout(target_timeout, NULL, 0);
        rr->timeout = stages[n++];
    }
    stages[n++] = mk_wait(&rr->wait);
    fg_route_target tg = {NULL, 0, count_handler, &rr->handled, stages, n};
    fg_route_spec spec = FG_ROUTE_SPEC_INIT;
    spec.name = "orders";
    spec.path_kind = FG_PATH_PREFIX;
    spec.path = "/orders";
    spec.targets = &tg;
    spec.ntargets = 1;
    ck_assert_int_eq(fg_router_new(&router), 0);
    ck_assert_int_eq(fg_router_add(router, &spec, NULL), 0);
    ck_assert_int_eq(fg_router_build(router), 0);
    ck_assert_int_eq(fg_stage_router(router, NULL, &rs), 0);
    rig_use(&rr->r, rs);
}

START_TEST(test_router_split) {
    route_rig rr;
    fg_ctx ctx;

    route_rig_new(&rr, 0);
    /* The target's stage asks for 20 ms; 10 ms are left. */
    rr.wait = 20 * MS;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders/7"), 0);
    ctx.deadline_ns = T0 + 10 * MS;
    ck_assert_int_eq(fg_chain_enter(rr.r.chain, &ctx), FG_ETIMEDOUT);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_int_eq(rr.handled, 0);
    ck_assert_int_eq(rr.target_rec.enters, 1);
    assert_exit(&rr.target_rec, 0, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
    assert_exit(&rr.chain_rec, 0, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
    ck_assert_int_eq(fg_chain_exit(rr.r.chain, &ctx, 0), FG_ESTATE);

    /* 20 ms left: admitted, dispatched, exited. */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders/7"), 0);
    ctx.deadline_ns = T0 + 20 * MS;
    ck_assert_int_eq(fg_chain_enter(rr.r.chain, &ctx), 0);
    ck_assert_uint_eq(ctx.delay_ns, 20 * MS);
    ck_assert_int_eq(fg_route_dispatch(&ctx), 0);
    ck_assert_int_eq(rr.handled, 1);
    ck_assert_int_eq(fg_chain_exit(rr.r.chain, &ctx, 0), 0);
    assert_exit(&rr.target_rec, 1, FG_OUTCOME_OK, 0);

    /* Passed before entering: same, whatever the target. */
    rr.wait = 0;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders/7"), 0);
    ctx.deadline_ns = T0 - 1;
    ck_assert_int_eq(fg_chain_enter(rr.r.chain, &ctx), FG_ETIMEDOUT);
    ck_assert_int_eq(rr.handled, 1);
    assert_exit(&rr.target_rec, 2, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);

    /* Canceled: FG_ECANCELED before any stage, the router's included. */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders/7"), 0);
    fg_ctx_cancel(&ctx);
    ck_assert_int_eq(fg_chain_enter(rr.r.chain, &ctx), FG_ECANCELED);
    ck_assert_ptr_null(ctx.route);
    ck_assert_int_eq(rr.chain_rec.enters, 3);
    ck_assert_int_eq(rr.target_rec.enters, 3);
    ck_assert_int_eq(fg_route_dispatch(&ctx), FG_ESTATE); /* never routed */
    rig_free(&rr.r);
}
END_TEST

START_TEST(test_router_sync) {
    route_rig rr;
    fg_ctx ctx;

    /* The target's own timeout stage (10 ms), then its 20 ms wait. */
    route_rig_new(&rr, 10 * MS);
    rr.wait = 20 * MS;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders/7"), 0);
    ck_assert_int_eq(fg_chain_call(rr.r.chain, &ctx, NULL, NULL), FG_ETIMEDOUT);
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 10 * MS);
    ck_assert_int_eq(rr.handled, 0);
    ck_assert_uint_eq(fg_fake_clock_now(rr.r.fc), T0);
    assert_exit(&rr.target_rec, 0, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
    assert_exit(&rr.chain_rec, 0, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
    ASSERT_TSTATS(rr.timeout, 1, 1, 0, 0, 0, 1);

    rr.wait = 10 * MS; /* exactly in time */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders/7"), 0);
    ck_assert_int_eq(fg_chain_call(rr.r.chain, &ctx, NULL, NULL), 0);
    ck_assert_int_eq(rr.handled, 1);
    ck_assert_uint_eq(fg_fake_clock_now(rr.r.fc), T0 + 10 * MS);
    ASSERT_TSTATS(rr.timeout, 2, 2, 0, 0, 0, 1);
    rig_free(&rr.r);
}
END_TEST

/*
 * Retries: a retrying stage sleeps 40 ms after every failure; the handler
 * works 10 ms and fails; 100 ms from T0 are allowed (_i = 0: set by the
 * caller; 1: by a timeout stage before the retrying one, so bounding every
 * attempt; a timeout stage after it gives each attempt its own deadline:
 * test_retry_fresh_deadline). The attempts start at T0,
 * T0 + 50, T0 + 100 (exactly at the deadline: allowed) and T0 + 150: that
 * fourth attempt is rejected with FG_ETIMEDOUT before the handler. Each
 * attempt's ctx->now_ns is the clock re-read.
 */
START_TEST(test_retry_deadline) {
    rig r;
    retrier rt = {0};
    rec s;
    hrec h = {0};
    fg_ctx ctx;
    fg_stage *rs = NULL;
    const fg_stage *t = NULL;

    rig_new(&r);
    rt.fc = r.fc;
    rt.backoff_ns = 40 * MS;
    rt.max = 10;
    ck_assert_int_eq(fg_stage_new(&retrier_ops, &rt, "retry", &rs), 0);
    if (_i == 1)
        t = rig_use(&r, mk_timeout(100 * MS, NULL, 0));
    rig_use(&r, rs);
    rig_use(&r, mk_rec(&s));
    h.fc = r.fc;
    h.advance = 10 * MS;
    h.ret = FG_EHANDLER;
    th_ctx_new(&ctx);
    if (_i == 0)
        ctx.deadline_ns = T0 + 100 * MS;

    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_ETIMEDOUT);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_uint_eq(ctx.retry_count, 3);
    ck_assert_int_eq(h.calls, 3);
    static const uint64_t starts[] = {T0, T0 + 50 * MS, T0 + 100 * MS};
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_eq(h.now_seen[i], starts[i]);
        ck_assert_uint_eq(h.clock_seen[i], starts[i]);
        ck_assert_uint_eq(h.deadline_seen[i], T0 + 100 * MS);
        ck_assert_uint_eq(h.left_seen[i], T0 + 100 * MS - starts[i]);
    }
    ck_assert_uint_eq(ctx.now_ns, T0); /* the request's own start, restored */
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 100 * MS);
    ck_assert_uint_eq(fg_fake_clock_now(r.fc), T0 + 150 * MS);
    /* The stage after the retrying one: four attempts, the last rejected. */
    ck_assert_int_eq(s.enters, 4);
    ck_assert_int_eq(s.exits, 4);
    for (int i = 0; i < 3; i++)
        assert_exit(&s, i, FG_OUTCOME_FAILED, FG_EHANDLER);
    assert_exit(&s, 3, FG_OUTCOME_REJECTED, FG_ETIMEDOUT);
    ck_assert_int_eq(rt.exits, 4);
    ck_assert_int_eq(rt.out[3].kind, FG_OUTCOME_REJECTED);
    ck_assert_int_eq(rt.out[3].code, FG_ETIMEDOUT);
    /* The third attempt started with nothing left and ended 10 ms late. */
    if (t != NULL)
        ASSERT_TSTATS(t, 1, 1, 0, 0, 0, 1); /* one request, rejected: not late */
    rig_free(&r);
}
END_TEST

/*
 * A timeout stage after the retrying one gives each attempt its own
 * deadline: the retrying stage's exit sees the request's deadline (none
 * here), not the attempt's, and the next attempt starts a fresh 100 ms.
 * Four attempts (three retries) at T0, +50, +100, +150, each with
 * start + 100 ms; the caller then sees the last attempt's deadline.
 */
START_TEST(test_retry_fresh_deadline) {
    rig r;
    retrier rt = {0};
    hrec h = {0};
    fg_ctx ctx;
    fg_stage *rs = NULL;

    rig_new(&r);
    rt.fc = r.fc;
    rt.backoff_ns = 40 * MS;
    rt.max = 3;
    ck_assert_int_eq(fg_stage_new(&retrier_ops, &rt, "retry", &rs), 0);
    rig_use(&r, rs);
    const fg_stage *t = rig_use(&r, mk_timeout(100 * MS, NULL, 0));
    h.fc = r.fc;
    h.advance = 10 * MS;
    h.ret = FG_EHANDLER;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_EHANDLER);
    ck_assert_uint_eq(ctx.retry_count, 3);
    ck_assert_int_eq(h.calls, 4);
    for (int i = 0; i < 4; i++) {
        uint64_t start = T0 + (uint64_t)i * 50 * MS;
        ck_assert_uint_eq(h.now_seen[i], start);
        ck_assert_uint_eq(h.deadline_seen[i], start + 100 * MS);
    }
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 250 * MS);
    ASSERT_TSTATS(t, 4, 4, 0, 0, 0, 0);
    rig_free(&r);
}
END_TEST

/* ---- 4. cancellation ------------------------------------------------------------------- */

START_TEST(test_cancel_before_call) {
    rig r;
    rec a;
    hrec h = {0};
    fg_ctx ctx;

    fg_ctx_cancel(NULL); /* ignored */
    ck_assert_int_eq(fg_ctx_canceled(NULL), 0);
    rig_new(&r);
    rig_use(&r, mk_rec(&a));
    h.fc = r.fc;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_ctx_canceled(&ctx), 0);
    fg_ctx_cancel(&ctx);
    ck_assert_int_eq(fg_ctx_canceled(&ctx), 1);
    fg_ctx_cancel(&ctx); /* idempotent */
    ck_assert_int_eq(fg_ctx_canceled(&ctx), 1);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_ECANCELED);
    ck_assert_int_eq(ctx.status, FG_ECANCELED);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_int_eq(h.calls, 0);
    ck_assert_int_eq(a.enters, 0);
    ck_assert_int_eq(a.exits, 0);
    ck_assert_int_eq(fg_ctx_canceled(&ctx), 1); /* still, after the call */

    /* fg_ctx_init resets it: the same ctx serves the next request. */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_canceled(&ctx), 0);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), 0);
    ck_assert_int_eq(h.calls, 1);

    /* A deadline too: cancellation is checked first. */
    th_ctx_new(&ctx);
    ctx.deadline_ns = 1;
    fg_ctx_cancel(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_ECANCELED);
    ck_assert_int_eq(a.enters, 1);
    rig_free(&r);
}
END_TEST

/* A stage cancels: the handler is never called; the stages entered are
 * exited with REJECTED / FG_ECANCELED and no rejecting stage. */
START_TEST(test_cancel_by_stage) {
    rig r;
    rec a, b;
    hrec h = {0};
    fg_ctx ctx;
    fg_stage *cs = NULL;

    rig_new(&r);
    rig_use(&r, mk_rec(&a));
    ck_assert_int_eq(fg_stage_new(&cancel_ops, NULL, "cancel", &cs), 0);
    rig_use(&r, cs);
    rig_use(&r, mk_rec(&b));
    h.fc = r.fc;
    for (int split = 0; split < 2; split++) {
        th_ctx_new(&ctx);
        int rc = split ? fg_chain_enter(r.chain, &ctx)
                       : fg_chain_call(r.chain, &ctx, rec_handler, &h);
        ck_assert_int_eq(rc, FG_ECANCELED);
        ck_assert_int_eq(ctx.status, FG_ECANCELED);
        ck_assert_ptr_null(ctx.rejected_by);
        ck_assert_int_eq(h.calls, 0);
        ck_assert_int_eq(fg_ctx_canceled(&ctx), 1);
        ck_assert_int_eq(a.enters, split + 1);
        ck_assert_int_eq(a.exits, split + 1);
        assert_exit(&a, split, FG_OUTCOME_REJECTED, FG_ECANCELED);
        ck_assert_int_eq(b.exits, b.enters); /* whatever was entered was exited */
        ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), FG_ESTATE);
    }
    rig_free(&r);
}
END_TEST

/* fg_ctx_cancel: "from now on the chain rejects it with FG_ECANCELED before
 * its next stage or handler": a stage after the canceling one is not
 * entered. */
START_TEST(test_cancel_before_next_stage) {
    rig r;
    rec b;
    fg_ctx ctx;
    fg_stage *cs = NULL;

    rig_new(&r);
    ck_assert_int_eq(fg_stage_new(&cancel_ops, NULL, "cancel", &cs), 0);
    rig_use(&r, cs);
    rig_use(&r, mk_rec(&b));
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, th_ok_handler, NULL), FG_ECANCELED);
    rig_free(&r);
    ck_assert_msg(b.enters == 0,
                  "the stage after the one that canceled was entered %d time(s)", b.enters);
}
END_TEST

/* Canceled during an attempt (here by the handler itself, as another thread
 * could): the next attempt is rejected before the stages after the
 * retrying one. */
START_TEST(test_cancel_between_attempts) {
    rig r;
    retrier rt = {0};
    rec s;
    hrec h = {0};
    fg_ctx ctx;
    fg_stage *rs = NULL;

    rig_new(&r);
    rt.fc = r.fc;
    rt.backoff_ns = MS;
    rt.max = 10;
    ck_assert_int_eq(fg_stage_new(&retrier_ops, &rt, "retry", &rs), 0);
    rig_use(&r, rs);
    rig_use(&r, mk_rec(&s));
    h.fc = r.fc;
    h.ret = FG_EHANDLER;
    h.cancel_at = 2;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(r.chain, &ctx, rec_handler, &h), FG_ECANCELED);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_int_eq(h.calls, 2);
    ck_assert_uint_eq(ctx.retry_count, 2);
    ck_assert_int_eq(s.enters, 2); /* the third attempt entered nothing */
    ck_assert_int_eq(s.exits, 2);
    ck_assert_int_eq(rt.exits, 3);
    ck_assert_int_eq(rt.out[2].kind, FG_OUTCOME_REJECTED);
    ck_assert_int_eq(rt.out[2].code, FG_ECANCELED);
    rig_free(&r);
}
END_TEST

/* ---- cancellation from another thread ---- */

#define SPIN_LIMIT_NS (10 * FG_NS_PER_S)

typedef struct xcancel {
    fg_ctx *ctx;     /* published before the canceler starts */
    int running;     /* atomic: the handler has started */
    int observed;    /* the handler saw fg_ctx_canceled == 1 */
    int canceler_ok; /* the canceler saw the handler start in time */
    uint64_t spins;  /* handler polls before it saw the cancel */
} xcancel;

/* Spin (yielding) until *flag is nonzero or SPIN_LIMIT_NS pass. */
static int spin_until_set(const int *flag) {
    uint64_t end = fg_clock_monotonic_now(NULL) + SPIN_LIMIT_NS;
    while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
        if (fg_clock_monotonic_now(NULL) > end)
            return 0;
        sched_yield();
    }
    return 1;
}

static void *canceler_main(void *arg) {
    xcancel *x = arg;
    x->canceler_ok = spin_until_set(&x->running);
    fg_ctx_cancel(x->ctx); /* the ctx outlives this call: the handler waits for it */
    return NULL;
}

/* The handler: announce it runs, then poll fg_ctx_canceled (bounded). */
static int polling_handler(fg_ctx *ctx, void *arg) {
    xcancel *x = arg;
    uint64_t end = fg_clock_monotonic_now(NULL) + SPIN_LIMIT_NS;
    ck_assert_int_eq(fg_ctx_canceled(ctx), 0);
    __atomic_store_n(&x->running, 1, __ATOMIC_RELEASE);
    while (!fg_ctx_canceled(ctx)) {
        if (fg_clock_monotonic_now(NULL) > end)
            return FG_EHANDLER;
        x->spins++;
        sched_yield();
    }
    x->observed = 1;
    return FG_ECANCELED; /* a handler that sees the cancel gives up */
}

/* A handler running on this thread sees a cancel made on another one; the
 * chain does not interrupt it: its own result (FG_ECANCELED) stands and
 * the stages see it as a failure. Repeated to give ThreadSanitizer room. */
START_TEST(test_cancel_from_thread) {
    rig r;
    rec a;

    rig_new(&r);
    rig_use(&r, mk_rec(&a));
    for (int i = 0; i < LOG_MAX; i++) {
        fg_ctx ctx;
        xcancel x = {0};
        pthread_t th;

        th_ctx_new(&ctx);
        x.ctx = &ctx;
        ck_assert_int_eq(pthread_create(&th, NULL, canceler_main, &x), 0);
        int rc = fg_chain_call(r.chain, &ctx, polling_handler, &x);
        ck_assert_int_eq(pthread_join(th, NULL), 0);
        ck_assert_int_eq(x.canceler_ok, 1);
        ck_assert_int_eq(x.observed, 1);
        ck_assert_int_eq(rc, FG_ECANCELED);
        ck_assert_ptr_null(ctx.rejected_by);
        ck_assert_int_eq(fg_ctx_canceled(&ctx), 1);
        assert_exit(&a, i, FG_OUTCOME_FAILED, FG_ECANCELED);
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        ck_assert_int_eq(fg_ctx_canceled(&ctx), 0);
    }
    rig_free(&r);
}
END_TEST

/* The split API across threads: canceled on one thread, entered on
 * another: FG_ECANCELED before any stage. And an admitted request canceled
 * on a third thread still exits normally on a fourth. */
typedef struct xsplit {
    const fg_chain *chain;
    fg_ctx *ctx;
    int rc;
} xsplit;

static void *cancel_main(void *arg) {
    xsplit *x = arg;
    fg_ctx_cancel(x->ctx);
    return NULL;
}

static void *enter_main(void *arg) {
    xsplit *x = arg;
    x->rc = fg_chain_enter(x->chain, x->ctx);
    return NULL;
}

static void *exit_main(void *arg) {
    xsplit *x = arg;
    x->rc = fg_chain_exit(x->chain, x->ctx, 0);
    return NULL;
}

static int run_on_thread(void *(*fn)(void *), xsplit *x) {
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, fn, x), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    return x->rc;
}

START_TEST(test_cancel_split_threads) {
    rig r;
    rec a;
    fg_ctx ctx;
    xsplit x;

    rig_new(&r);
    rig_use(&r, mk_rec(&a));
    th_ctx_new(&ctx);
    x = (xsplit){r.chain, &ctx, 99};
    (void)run_on_thread(cancel_main, &x);
    ck_assert_int_eq(run_on_thread(enter_main, &x), FG_ECANCELED);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_int_eq(a.enters, 0);
    ck_assert_int_eq(fg_chain_exit(r.chain, &ctx, 0), FG_ESTATE);

    th_ctx_new(&ctx);
    ck_assert_int_eq(run_on_thread(enter_main, &x), 0);
    (void)run_on_thread(cancel_main, &x);
    ck_assert_int_eq(fg_ctx_canceled(&ctx), 1);
    ck_assert_int_eq(run_on_thread(exit_main, &x), 0);
    ck_assert_int_eq(a.enters, 1);
    assert_exit(&a, 0, FG_OUTCOME_OK, 0);
    rig_free(&r);
}
END_TEST

/* ---- 5. grpc-timeout ------------------------------------------------------------------- */

typedef struct parse_case {
    const char *s;
    size_t len;
    int rc;
    uint64_t ns;
} parse_case;

#define P(lit, rc, ns)                                                                        \
    { lit, sizeof(lit) - 1, rc, ns }

/* Expectations by hand: the value times the unit (H 3.6e12, M 6e10, S 1e9,
 * m 1e6, u 1e3, n 1); UINT64_MAX is 5,124,095.57... hours. */
static const parse_case parse_cases[] = {
    P("1H", 0, UINT64_C(3600000000000)),
    P("1M", 0, UINT64_C(60000000000)),
    P("1S", 0, UINT64_C(1000000000)),
    P("1m", 0, UINT64_C(1000000)),
    P("1u", 0, UINT64_C(1000)),
    P("1n", 0, 1),
    P("0n", FG_EPARSE, 0), /* gRPC: a positive integer */
    P("7S", 0, UINT64_C(7000000000)),
    P("250m", 0, UINT64_C(250000000)),
    P("00000000m", FG_EPARSE, 0),
    P("00000001H", 0, UINT64_C(3600000000000)),
    P("12345678n", 0, UINT64_C(12345678)),
    P("99999999n", 0, UINT64_C(99999999)),
    P("99999999u", 0, UINT64_C(99999999000)),
    P("99999999m", 0, UINT64_C(99999999000000)),
    P("99999999S", 0, UINT64_C(99999999000000000)),
    P("99999999M", 0, UINT64_C(5999999940000000000)),
    P("5124095H", 0, UINT64_C(18446742000000000000)),
    P("5124096H", 0, UINT64_MAX),
    P("99999999H", 0, UINT64_MAX),
    P("", FG_EPARSE, 0),
    P("n", FG_EPARSE, 0),
    P("5", FG_EPARSE, 0),
    P("12345678", FG_EPARSE, 0),
    P("123456789n", FG_EPARSE, 0),
    P("000000001n", FG_EPARSE, 0),
    P("999999999H", FG_EPARSE, 0),
    P("5x", FG_EPARSE, 0),
    P("5h", FG_EPARSE, 0),
    P("5s", FG_EPARSE, 0),
    P("5N", FG_EPARSE, 0),
    P("5U", FG_EPARSE, 0),
    P("+5m", FG_EPARSE, 0),
    P("-5m", FG_EPARSE, 0),
    P(" 5m", FG_EPARSE, 0),
    P("5m ", FG_EPARSE, 0),
    P("5 m", FG_EPARSE, 0),
    P("5\tm", FG_EPARSE, 0),
    P("5mm", FG_EPARSE, 0),
    P("m5", FG_EPARSE, 0),
    P("5.5S", FG_EPARSE, 0),
    P("0x5m", FG_EPARSE, 0),
    P("5\0m", FG_EPARSE, 0),
    P("5m\0", FG_EPARSE, 0),
    P("\0m", FG_EPARSE, 0),
    P("\0", FG_EPARSE, 0),
    P("\xd9\xa5m", FG_EPARSE, 0), /* a non-ASCII digit */
};

START_TEST(test_parse) {
    const parse_case *c = &parse_cases[_i];
    char *s = th_exact_copy(c->s, c->len); /* ASan sees any read past len */
    uint64_t ns = 12345;
    int rc = fg_timeout_parse(s, c->len, &ns);
    ck_assert_msg(rc == c->rc, "case %d (\"%s\", %zu bytes): %s, want %s", _i, c->s, c->len,
                  fg_err_name(rc), fg_err_name(c->rc));
    if (rc == 0)
        ck_assert_msg(ns == c->ns, "case %d (\"%s\"): %" PRIu64 ", want %" PRIu64, _i, c->s,
                      ns, c->ns);
    free(s);
}
END_TEST

/* Only len bytes are read: a valid prefix of a longer string parses. */
START_TEST(test_parse_len_and_args) {
    uint64_t ns = 0;
    ck_assert_int_eq(fg_timeout_parse("5mX", 2, &ns), 0);
    ck_assert_uint_eq(ns, 5 * MS);
    ck_assert_int_eq(fg_timeout_parse("50m", 2, &ns), FG_EPARSE); /* "50": no unit */
    ck_assert_int_eq(fg_timeout_parse("5m", 0, &ns), FG_EPARSE);
    ck_assert_int_eq(fg_timeout_parse(NULL, 0, &ns), FG_EPARSE); /* empty */
    ck_assert_int_eq(fg_timeout_parse(NULL, 2, &ns), FG_EINVAL);
    ck_assert_int_eq(fg_timeout_parse("5m", 2, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_timeout_parse(NULL, 0, NULL), FG_EINVAL);
}
END_TEST

typedef struct format_case {
    uint64_t ns;
    const char *want;
} format_case;

/* By hand: the finest unit whose quotient has at most 8 digits, rounded
 * down. */
static const format_case format_cases[] = {
    {0, "0n"},
    {1, "1n"},
    {999, "999n"},
    {UINT64_C(99999999), "99999999n"},
    {UINT64_C(100000000), "100000u"},
    {UINT64_C(100000999), "100000u"},
    {UINT64_C(123456789), "123456u"},
    {UINT64_C(250000000), "250000u"},
    {UINT64_C(1500000000), "1500000u"},
    {UINT64_C(99999999999), "99999999u"},
    {UINT64_C(100000000000), "100000m"},
    {UINT64_C(3600000000000), "3600000m"},
    {UINT64_C(86400000000000), "86400000m"},
    {UINT64_C(99999999999999), "99999999m"},
    {UINT64_C(100000000000000), "100000S"},
    {UINT64_C(99999999999999999), "99999999S"},
    {UINT64_C(100000000000000000), "1666666M"},
    {UINT64_C(5999999940000000000), "99999999M"},
    {UINT64_C(5999999999999999999), "99999999M"},
    {UINT64_C(6000000000000000000), "1666666H"},
    {UINT64_MAX, "5124095H"},
};

START_TEST(test_format) {
    const format_case *c = &format_cases[_i];
    char *buf = th_canary_buf(10);
    int n = fg_timeout_format(c->ns, buf, 10);
    ck_assert_msg(n == (int)strlen(c->want), "%" PRIu64 ": %d, want \"%s\"", c->ns, n,
                  c->want);
    ck_assert_str_eq(buf, c->want);
    th_assert_canary(buf, 10, "fg_timeout_format");
    free(buf);
}
END_TEST

START_TEST(test_format_args) {
    char buf[32];
    ck_assert_int_eq(fg_timeout_format(1, NULL, 10), FG_EINVAL);
    ck_assert_int_eq(fg_timeout_format(1, NULL, 0), FG_EINVAL);
    for (size_t cap = 0; cap < 10; cap++)
        ck_assert_msg(fg_timeout_format(1, buf, cap) == FG_ETOOLONG, "cap %zu", cap);
    ck_assert_int_eq(fg_timeout_format(1, buf, 10), 2);
    ck_assert_int_eq(fg_timeout_format(1, buf, sizeof(buf)), 2);
    ck_assert_str_eq(buf, "1n");
    /* The longest value and its NUL fill exactly 10 bytes. */
    ck_assert_int_eq(fg_timeout_format(UINT64_C(99999999999999), buf, 10), 9);
    ck_assert_str_eq(buf, "99999999m");
}
END_TEST

/* Unit of a formatted value's letter, in ns. */
static uint64_t unit_ns(char u) {
    switch (u) {
    case 'H':
        return H;
    case 'M':
        return 60 * S;
    case 'S':
        return S;
    case 'm':
        return MS;
    case 'u':
        return US;
    case 'n':
        return 1;
    default:
        ck_abort_msg("unit '%c'", u);
        return 0;
    }
}

/* The next finer unit (0 for n). */
static uint64_t finer_ns(uint64_t unit) {
    switch (unit) {
    case H:
        return 60 * S;
    case 60 * S:
        return S;
    case S:
        return MS;
    case MS:
        return US;
    case US:
        return 1;
    default:
        return 0;
    }
}

/* parse(format(x)) <= x and within one unit; at most 8 digits, without
 * leading zeros; and the unit is the finest that fits. Over values of every
 * magnitude. */
START_TEST(test_round_trip) {
    uint64_t rng = 20240601;
    char buf[16];
    for (int i = 0; i < 200000; i++) {
        uint64_t shift = th_rng_next(&rng) % 64;
        uint64_t x = th_rng_next(&rng) >> shift;
        if (i < 64)
            x = (UINT64_C(1) << i) - 1;
        if (x == 0)
            continue; /* "0n" is written but, not being positive, never parsed */
        int n = fg_timeout_format(x, buf, sizeof(buf));
        TH_FAST_ASSERT(n >= 2 && n <= 9, "%" PRIu64 ": length %d", x, n);
        TH_FAST_ASSERT(buf[0] != '0' || n == 2, "%" PRIu64 ": \"%s\"", x, buf);
        uint64_t unit = unit_ns(buf[n - 1]), y = 0;
        TH_FAST_ASSERT(fg_timeout_parse(buf, (size_t)n, &y) == 0, "\"%s\" does not parse",
                       buf);
        TH_FAST_ASSERT(y <= x && x - y < unit, "%" PRIu64 " -> \"%s\" -> %" PRIu64, x, buf, y);
        uint64_t finer = finer_ns(unit);
        TH_FAST_ASSERT(finer == 0 || x / finer > UINT64_C(99999999),
                       "%" PRIu64 " -> \"%s\": a finer unit fits", x, buf);
    }
}
END_TEST

START_TEST(test_outgoing) {
    fg_ctx ctx;
    char buf[16], *cb;

    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_deadline_outgoing(NULL, T0, buf, sizeof(buf)), FG_EINVAL);
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0, NULL, sizeof(buf)), FG_EINVAL);
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0, buf, sizeof(buf)), FG_ENOTFOUND);

    ctx.deadline_ns = T0 + 250 * MS;
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0, buf, sizeof(buf)), 7);
    ck_assert_str_eq(buf, "250000u");
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0 + 250 * MS - 1, buf, sizeof(buf)), 2);
    ck_assert_str_eq(buf, "1n");
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0 + 150 * MS + 123, buf, sizeof(buf)), 9);
    ck_assert_str_eq(buf, "99999877n");
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, 0, buf, sizeof(buf)), 8);
    ck_assert_str_eq(buf, "1000250m"); /* 1000.25 s */
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0, buf, 9), FG_ETOOLONG);

    /* At or past the deadline: FG_ETIMEDOUT, nothing written. */
    cb = th_canary_buf(10);
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0 + 250 * MS, cb, 10), FG_ETIMEDOUT);
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0 + S, cb, 10), FG_ETIMEDOUT);
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, UINT64_MAX, cb, 10), FG_ETIMEDOUT);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(cb[i], 'Z');
    th_assert_canary(cb, 10, "fg_deadline_outgoing");
    free(cb);

    /* What it writes, the next hop reads back within one unit. */
    rig r;
    rig_new(&r);
    rig_use(&r, mk_timeout(0, "grpc-timeout", 0));
    ctx.deadline_ns = T0 + 1500 * MS;
    ck_assert_int_eq(fg_deadline_outgoing(&ctx, T0 + 2, buf, sizeof(buf)), 8);
    ck_assert_str_eq(buf, "1499999u");
    ck_assert_uint_eq(inbound_deadline(&r, "grpc-timeout", buf, 0), T0 + 1499999 * US);
    rig_free(&r);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

Suite *fg_suite_deadline(void) {
    Suite *s = suite_create("deadline");
    TCase *tc;

    tc = tcase_create("ctx");
    tcase_add_test(tc, test_remaining);
    tcase_add_test(tc, test_set_deadline);
    tcase_add_test(tc, test_time_left_monotonic);
    tcase_add_test(tc, test_time_left_in_chain);
    suite_add_tcase(s, tc);

    tc = tcase_create("timeout_stage");
    tcase_add_test(tc, test_timeout_sets_deadline);
    tcase_add_test(tc, test_timeout_inherited);
    tcase_add_test(tc, test_timeout_inbound);
    tcase_add_test(tc, test_timeout_inbound_first);
    tcase_add_test(tc, test_timeout_inbound_zero);
    tcase_add_test(tc, test_timeout_late_and_timed_out);
    tcase_add_test(tc, test_timeout_no_deadline_never_late);
    tcase_add_test(tc, test_timeout_options);
    suite_add_tcase(s, tc);

    tc = tcase_create("oom");
    tcase_add_checked_fixture(tc, NULL, oom_teardown);
    tcase_add_test(tc, test_timeout_oom);
    suite_add_tcase(s, tc);

    tc = tcase_create("chain");
    tcase_add_test(tc, test_passed_rejected);
    tcase_add_test(tc, test_exact_deadline);
    tcase_add_test(tc, test_delay_overflow);
    tcase_add_test(tc, test_smoothing_limiter);
    tcase_add_test(tc, test_router_split);
    tcase_add_test(tc, test_router_sync);
    tcase_add_loop_test(tc, test_retry_deadline, 0, 2);
    tcase_add_test(tc, test_retry_fresh_deadline);
    suite_add_tcase(s, tc);

    tc = tcase_create("cancel");
    tcase_add_test(tc, test_cancel_before_call);
    tcase_add_test(tc, test_cancel_by_stage);
    tcase_add_test(tc, test_cancel_before_next_stage);
    tcase_add_test(tc, test_cancel_between_attempts);
    tcase_add_test(tc, test_cancel_from_thread);
    tcase_add_test(tc, test_cancel_split_threads);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("grpc_timeout");
    tcase_add_loop_test(tc, test_parse, 0, TH_NELEM(parse_cases));
    tcase_add_test(tc, test_parse_len_and_args);
    tcase_add_loop_test(tc, test_format, 0, TH_NELEM(format_cases));
    tcase_add_test(tc, test_format_args);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_outgoing);
    suite_add_tcase(s, tc);

    return s;
}
