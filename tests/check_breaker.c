/*
 * tests/check_breaker.c - the circuit breaker (fg_breaker) and its chain stage
 * (fg_stage_breaker).
 *
 * Every test drives the state machine with explicit times (or a fake clock)
 * and checks exact counts: the call on which the breaker opens, the
 * nanosecond at which it turns half-open, how many probes it admits, how
 * long each reopening lasts, which permits are discarded, which listener
 * events arrive in which order. The transition tests run once over a COUNT
 * window and once over a TIME window wherever both apply.
 *
 * Then: the windows themselves (calls pushed out of a COUNT window, buckets
 * of a TIME window expiring lazily, long idle periods), stale permits, the
 * half-open timeout, growing open times, manual modes and reset, the
 * listener (including one that calls back into the breaker), counters and
 * names, option validation and defaults, the stage through fg_chain_call
 * and the split API, and real threads: many threads racing for the probes
 * of a breaker as it turns half-open, and closed-state traffic whose every
 * outcome must be counted.
 *
 * Only the thread tests use real concurrency; none of them sleeps.
 *
 * Tests marked "Regression" failed against an earlier lib/breaker.c; each
 * says what the header promises and what that library did instead.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "suites.h"

#define US  FG_NS_PER_US
#define MS  FG_NS_PER_MS
#define SEC FG_NS_PER_S

#define TIME_MAX (UINT64_C(1) << 62) /* durations must stay below this */

/* A start time that is a multiple of every window and bucket used below, so
 * that bucket boundaries fall where the tests expect them. */
#define T0 (UINT64_C(1000) * SEC)

#define CLOSED    FG_BREAKER_CLOSED
#define OPEN      FG_BREAKER_OPEN
#define HALF_OPEN FG_BREAKER_HALF_OPEN
#define SUCCESS   FG_BREAKER_SUCCESS
#define FAILURE   FG_BREAKER_FAILURE
#define IGNORE    FG_BREAKER_IGNORE

/* ---- helpers ------------------------------------------------------------------------- */

static fg_breaker *mk(const fg_breaker_options *o) {
    fg_breaker *b = NULL;
    int rc = fg_breaker_new(o, &b);
    ck_assert_msg(rc == 0, "fg_breaker_new: %s", fg_err_name(rc));
    ck_assert_ptr_nonnull(b);
    return b;
}

static fg_fake_clock *mk_clock(uint64_t start) {
    fg_fake_clock *fc = NULL;
    ck_assert_int_eq(fg_fake_clock_new(start, &fc), 0);
    return fc;
}

/* fg_breaker_new's code; a breaker it made is freed at once. */
static int new_rc(const fg_breaker_options *o) {
    fg_breaker *b = NULL;
    int rc = fg_breaker_new(o, &b);
    if (rc == 0) {
        ck_assert_ptr_nonnull(b);
        fg_breaker_free(b);
    }
    return rc;
}

/* The two windows the transition tests run over. */
typedef struct wcfg {
    const char *name;
    fg_breaker_window_kind kind;
    uint32_t size;
    uint64_t ns;
    uint32_t buckets;
} wcfg;

static const wcfg wcfgs[] = {
    {"count 100", FG_BREAKER_WINDOW_COUNT, 100, 0, 0},
    {"time 10 s in 10 buckets", FG_BREAKER_WINDOW_TIME, 0, 10 * SEC, 10},
};
#define NWCFG ((int)(sizeof(wcfgs) / sizeof(wcfgs[0])))

static fg_breaker_options wopts(int w) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.window = wcfgs[w].kind;
    o.window_size = wcfgs[w].size;
    o.window_ns = wcfgs[w].ns;
    o.window_buckets = wcfgs[w].buckets;
    return o;
}

static fg_breaker_stats snap(const fg_breaker *b, uint64_t t) {
    fg_breaker_stats s;
    memset(&s, 0xa5, sizeof(s));
    ck_assert_int_eq(fg_breaker_snapshot(b, t, &s), 0);
    return s;
}

static uint64_t enter_ok(fg_breaker *b, uint64_t t, int line) {
    uint64_t p = 0, ra = UINT64_C(0xdeadbeef);
    int rc = fg_breaker_enter(b, t, &p, &ra);
    ck_assert_msg(rc == 0, "line %d: enter(t=%" PRIu64 "): %s, want admitted (state %s)", line,
                  t, fg_err_name(rc), fg_breaker_state_name(fg_breaker_state(b)));
    return p;
}

static void enter_rej(fg_breaker *b, uint64_t t, uint64_t want_retry, int line) {
    uint64_t p = 0, ra = UINT64_C(0xdeadbeef);
    int rc = fg_breaker_enter(b, t, &p, &ra);
    ck_assert_msg(rc == FG_EBREAKER,
                  "line %d: enter(t=%" PRIu64 "): %s, want FG_EBREAKER (state %s)", line, t,
                  fg_err_name(rc), fg_breaker_state_name(fg_breaker_state(b)));
    ck_assert_msg(ra == want_retry,
                  "line %d: enter(t=%" PRIu64 "): retry_after %" PRIu64 ", want %" PRIu64,
                  line, t, ra, want_retry);
}

static void exit_eq(fg_breaker *b, uint64_t p, uint64_t t, fg_breaker_result r, uint64_t lat,
                    int want, int line) {
    int rc = fg_breaker_exit(b, p, t, r, lat);
    ck_assert_msg(rc == want, "line %d: exit(t=%" PRIu64 ", result %d): %d (%s), want %d",
                  line, t, (int)r, rc, fg_err_name(rc), want);
}

/* n calls, each admitted at t and reported at t after lat ns, each counted. */
static void call_n(fg_breaker *b, uint64_t t, fg_breaker_result r, uint64_t lat, int n,
                   int line) {
    for (int i = 0; i < n; i++) {
        uint64_t p = enter_ok(b, t, line);
        exit_eq(b, p, t, r, lat, 0, line);
    }
}

#define ENTER_OK(b, t)           enter_ok((b), (t), __LINE__)
#define ENTER_REJ(b, t, ra)      enter_rej((b), (t), (ra), __LINE__)
#define EXIT_EQ(b, p, t, r, w)   exit_eq((b), (p), (t), (r), 0, (w), __LINE__)
#define CALL(b, t, r)            call_n((b), (t), (r), 0, 1, __LINE__)
#define CALLS(b, t, r, n)        call_n((b), (t), (r), 0, (n), __LINE__)
#define CALL_LAT(b, t, r, lat)   call_n((b), (t), (r), (lat), 1, __LINE__)
#define CALLS_LAT(b, t, r, l, n) call_n((b), (t), (r), (l), (n), __LINE__)

#define STATE_EQ(b, want)                                                                     \
    do {                                                                                      \
        fg_breaker_state_kind st_ = fg_breaker_state(b);                                      \
        ck_assert_msg(st_ == (want), "state %s, want %s", fg_breaker_state_name(st_),         \
                      fg_breaker_state_name(want));                                           \
    } while (0)

/* Window counts as of t. */
#define WINDOW_EQ(b, t, calls, fails, slow)                                                   \
    do {                                                                                      \
        fg_breaker_stats ws_ = snap((b), (t));                                                \
        ck_assert_msg(ws_.window_calls == (uint64_t)(calls) &&                                \
                          ws_.window_failures == (uint64_t)(fails) &&                         \
                          ws_.window_slow == (uint64_t)(slow),                                \
                      "window at %" PRIu64 ": %" PRIu64 " calls, %" PRIu64                    \
                      " failures, %" PRIu64 " slow; want %d, %d, %d",                         \
                      (uint64_t)(t), ws_.window_calls, ws_.window_failures, ws_.window_slow,  \
                      (int)(calls), (int)(fails), (int)(slow));                               \
    } while (0)

/* ---- the listener's record ------------------------------------------------------------ */

#define EVMAX 64

typedef struct evlog {
    int n;
    fg_breaker *who[EVMAX];
    fg_breaker_event ev[EVMAX];
} evlog;

static void evlog_listener(fg_breaker *b, const fg_breaker_event *e, void *arg) {
    evlog *l = arg;
    if (l->n < EVMAX) {
        l->who[l->n] = b;
        l->ev[l->n] = *e;
    }
    l->n++;
}

static void listen(fg_breaker_options *o, evlog *log) {
    memset(log, 0, sizeof(*log));
    o->listener = evlog_listener;
    o->listener_arg = log;
}

/* Event i: from, to, reason, mode, when; for a change to OPEN also how long.
 * Generations must rise strictly from one event to the next. */
static void expect_ev(const evlog *l, const fg_breaker *b, int i, fg_breaker_state_kind from,
                      fg_breaker_state_kind to, fg_breaker_reason reason, fg_breaker_mode mode,
                      uint64_t at, uint64_t open_for, int line) {
    ck_assert_msg(i < l->n && i < EVMAX, "line %d: event %d missing (%d events)", line, i,
                  l->n);
    const fg_breaker_event *e = &l->ev[i];
    ck_assert_msg(l->who[i] == b, "line %d: event %d for another breaker", line, i);
    ck_assert_msg(e->from == from && e->to == to, "line %d: event %d: %s -> %s, want %s -> %s",
                  line, i, fg_breaker_state_name(e->from), fg_breaker_state_name(e->to),
                  fg_breaker_state_name(from), fg_breaker_state_name(to));
    ck_assert_msg(e->reason == reason, "line %d: event %d: reason %s, want %s", line, i,
                  fg_breaker_reason_name(e->reason), fg_breaker_reason_name(reason));
    ck_assert_msg(e->mode == mode, "line %d: event %d: mode %s, want %s", line, i,
                  fg_breaker_mode_name(e->mode), fg_breaker_mode_name(mode));
    ck_assert_msg(e->at_ns == at, "line %d: event %d: at %" PRIu64 ", want %" PRIu64, line, i,
                  e->at_ns, at);
    if (to == OPEN)
        ck_assert_msg(e->open_for_ns == open_for,
                      "line %d: event %d: open for %" PRIu64 ", want %" PRIu64, line, i,
                      e->open_for_ns, open_for);
    if (i > 0)
        ck_assert_msg(e->generation > l->ev[i - 1].generation,
                      "line %d: event %d: generation %" PRIu64 " not above %" PRIu64, line, i,
                      e->generation, l->ev[i - 1].generation);
}

#define EXPECT_EV(l, b, i, from, to, reason, at, open_for)                                    \
    expect_ev((l), (b), (i), (from), (to), FG_BREAKER_REASON_##reason, FG_BREAKER_AUTO, (at), \
              (open_for), __LINE__)
#define EXPECT_EV_MODE(l, b, i, from, to, reason, mode, at, open_for)                         \
    expect_ev((l), (b), (i), (from), (to), FG_BREAKER_REASON_##reason, (mode), (at),          \
              (open_for), __LINE__)

/* A manual change: reason MANUAL, the new mode, the breaker clock's time. */
static void expect_manual(const evlog *l, const fg_breaker *b, int i, fg_breaker_mode mode,
                          uint64_t at, int line) {
    ck_assert_msg(i < l->n && i < EVMAX, "line %d: event %d missing (%d events)", line, i,
                  l->n);
    const fg_breaker_event *e = &l->ev[i];
    ck_assert_msg(l->who[i] == b, "line %d: event %d for another breaker", line, i);
    ck_assert_msg(e->reason == FG_BREAKER_REASON_MANUAL, "line %d: event %d: reason %s", line,
                  i, fg_breaker_reason_name(e->reason));
    ck_assert_msg(e->mode == mode, "line %d: event %d: mode %s, want %s", line, i,
                  fg_breaker_mode_name(e->mode), fg_breaker_mode_name(mode));
    ck_assert_msg(e->at_ns == at, "line %d: event %d: at %" PRIu64 ", want %" PRIu64, line, i,
                  e->at_ns, at);
    if (i > 0)
        ck_assert_msg(e->generation > l->ev[i - 1].generation,
                      "line %d: event %d: generation %" PRIu64 " not above %" PRIu64, line, i,
                      e->generation, l->ev[i - 1].generation);
}

#define EXPECT_MANUAL(l, b, i, mode, at) expect_manual((l), (b), (i), (mode), (at), __LINE__)

/* ---- 1. transitions, exact counts --------------------------------------------------------
 */

/*
 * min 10, ratio 0.5: five failures first (100% failing, but only 5 calls)
 * and four successes stay closed; the 10th call, a success, with 5/10
 * failed opens the breaker, at that call's report. With 4/10 it never does.
 */
START_TEST(test_min_requests) {
    const uint64_t t = T0;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.min_requests = 10;
    o.failure_ratio = 0.5;
    o.open_for_ns = 10 * SEC;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALLS(b, t, FAILURE, 5);
    STATE_EQ(b, CLOSED);
    CALLS(b, t, SUCCESS, 4);
    STATE_EQ(b, CLOSED);
    ck_assert_int_eq(log.n, 0);
    WINDOW_EQ(b, t, 9, 5, 0);
    CALL(b, t + 5, SUCCESS);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 1);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, FAILURE_RATIO, t + 5, 10 * SEC);
    fg_breaker_stats s = snap(b, t + 5);
    ck_assert_int_eq(s.state, OPEN);
    ck_assert_int_eq(s.mode, FG_BREAKER_AUTO);
    ck_assert_uint_eq(s.open_until_ns, t + 5 + 10 * SEC);
    ck_assert_uint_eq(s.generation, log.ev[0].generation);
    ck_assert_uint_eq(s.rejected, 0);
    ck_assert_uint_eq(s.opened, 1);
    ENTER_REJ(b, t + 5, 10 * SEC);
    fg_breaker_free(b);

    /* 4/10 failed: closed, and more successes keep it so. */
    listen(&o, &log);
    b = mk(&o);
    CALLS(b, t, FAILURE, 4);
    CALLS(b, t, SUCCESS, 6);
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, t, 10, 4, 0);
    CALLS(b, t, SUCCESS, 20);
    STATE_EQ(b, CLOSED);
    ck_assert_int_eq(log.n, 0);
    fg_breaker_free(b);

    /* Successes first: the 10th call, the 5th failure, opens it. */
    listen(&o, &log);
    b = mk(&o);
    CALLS(b, t, SUCCESS, 5);
    CALLS(b, t, FAILURE, 4);
    STATE_EQ(b, CLOSED);
    CALL(b, t, FAILURE);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 1);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, FAILURE_RATIO, t, 10 * SEC);
    fg_breaker_free(b);
}
END_TEST

/*
 * A ratio reached exactly opens; one failure short does not. Ratios are
 * compared to 6 decimals: 0.3333334 rounds to 0.333333 (1 of 3 reaches it),
 * 0.3333336 to 0.333334 (1 of 3 does not).
 */
START_TEST(test_ratio_boundary) {
    const uint64_t t = T0;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.min_requests = 10;
    o.failure_ratio = 0.3;
    listen(&o, &log);

    fg_breaker *b = mk(&o);
    CALLS(b, t, SUCCESS, 7);
    CALLS(b, t, FAILURE, 2);
    STATE_EQ(b, CLOSED);
    CALL(b, t, FAILURE); /* 3/10 = 0.3 */
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, FAILURE_RATIO, t, 60 * SEC);
    fg_breaker_free(b);

    listen(&o, &log);
    b = mk(&o);
    CALLS(b, t, SUCCESS, 8);
    CALLS(b, t, FAILURE, 2); /* 2/10 */
    STATE_EQ(b, CLOSED);
    CALL(b, t, FAILURE); /* 3/11 < 0.3 */
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, t, 11, 3, 0);
    CALL(b, t, FAILURE); /* 4/12 >= 0.3 */
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 1);
    fg_breaker_free(b);

    /* Six decimals. */
    o.min_requests = 3;
    o.failure_ratio = 0.3333334;
    listen(&o, &log);
    b = mk(&o);
    CALLS(b, t, SUCCESS, 2);
    CALL(b, t, FAILURE);
    STATE_EQ(b, OPEN);
    fg_breaker_free(b);

    o.failure_ratio = 0.3333336;
    listen(&o, &log);
    b = mk(&o);
    CALLS(b, t, SUCCESS, 2);
    CALL(b, t, FAILURE); /* 1/3 */
    STATE_EQ(b, CLOSED);
    CALLS(b, t, SUCCESS, 2);
    CALL(b, t, FAILURE); /* 2/6 */
    STATE_EQ(b, CLOSED);
    CALL(b, t, FAILURE); /* 3/7 */
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 1);
    fg_breaker_free(b);

    /* Ratio 1: only when every call in the window failed. */
    o.failure_ratio = 1.0;
    listen(&o, &log);
    b = mk(&o);
    CALL(b, t, SUCCESS);
    CALLS(b, t, FAILURE, 10);
    STATE_EQ(b, CLOSED);
    fg_breaker_free(b);
    b = mk(&o);
    CALLS(b, t, FAILURE, 2);
    STATE_EQ(b, CLOSED);
    CALL(b, t, FAILURE);
    STATE_EQ(b, OPEN);
    fg_breaker_free(b);
}
END_TEST

/* Open for exactly open_for: rejected at open_until - 1 with 1 ns to go,
 * half-open at open_until (not before any request arrives). */
START_TEST(test_open_for_exact) {
    const uint64_t t = T0 + 7;
    const uint64_t open = 10 * SEC;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 2;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALL(b, t, FAILURE);
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, CONSECUTIVE, t, open);
    ENTER_REJ(b, t, open);
    ENTER_REJ(b, t + 1, open - 1);
    ENTER_REJ(b, t + open / 2, open / 2);
    ENTER_REJ(b, t + open - 1, 1);
    /* No request yet: still OPEN, whatever the time. */
    fg_breaker_stats s = snap(b, t + open);
    ck_assert_int_eq(s.state, OPEN);
    ck_assert_uint_eq(s.open_until_ns, t + open);
    ck_assert_uint_eq(s.rejected, 4);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 1);

    uint64_t p = ENTER_OK(b, t + open);
    STATE_EQ(b, HALF_OPEN);
    ck_assert_int_eq(log.n, 2);
    EXPECT_EV(&log, b, 1, OPEN, HALF_OPEN, OPEN_ELAPSED, t + open, 0);
    s = snap(b, t + open);
    ck_assert_uint_eq(s.probes_admitted, 1);
    ck_assert_uint_eq(s.half_opened, 1);
    EXIT_EQ(b, p, t + open, SUCCESS, 0);
    CALL(b, t + open, SUCCESS);
    STATE_EQ(b, CLOSED);

    /* A request long after open_until turns it half-open too, at its time. */
    const uint64_t u = t + 3 * open;
    CALL(b, u, FAILURE);
    STATE_EQ(b, OPEN);
    ENTER_REJ(b, u + open - 1, 1);
    p = ENTER_OK(b, u + 1000 * open);
    STATE_EQ(b, HALF_OPEN);
    ck_assert_int_eq(log.n, 5);
    EXPECT_EV(&log, b, 4, OPEN, HALF_OPEN, OPEN_ELAPSED, u + 1000 * open, 0);
    EXIT_EQ(b, p, u + 1000 * open, SUCCESS, 0);
    fg_breaker_free(b);
}
END_TEST

/*
 * Half-open admits exactly half_open_probes (3), rejects the rest with no
 * hint, closes on the 3rd success (not before) with an empty window.
 */
START_TEST(test_half_open_probes) {
    const uint64_t t = T0;
    const uint64_t open = 5 * SEC, h = t + open;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.min_requests = 10;
    o.failure_ratio = 0.5;
    o.open_for_ns = open;
    o.half_open_probes = 3;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALLS(b, t, SUCCESS, 5);
    CALLS(b, t, FAILURE, 5);
    STATE_EQ(b, OPEN);
    uint64_t p1 = ENTER_OK(b, h);
    uint64_t p2 = ENTER_OK(b, h);
    uint64_t p3 = ENTER_OK(b, h + 1);
    ENTER_REJ(b, h + 1, 0);
    ENTER_REJ(b, h + 2, 0);
    fg_breaker_stats s = snap(b, h + 2);
    ck_assert_int_eq(s.state, HALF_OPEN);
    ck_assert_uint_eq(s.probes_admitted, 3);
    ck_assert_uint_eq(s.probes_succeeded, 0);

    EXIT_EQ(b, p2, h + 3, SUCCESS, 0);
    EXIT_EQ(b, p1, h + 4, SUCCESS, 0);
    STATE_EQ(b, HALF_OPEN);
    s = snap(b, h + 4);
    ck_assert_uint_eq(s.probes_succeeded, 2);
    ENTER_REJ(b, h + 4, 0);
    ck_assert_int_eq(log.n, 2);
    EXIT_EQ(b, p3, h + 5, SUCCESS, 0);
    STATE_EQ(b, CLOSED);
    ck_assert_int_eq(log.n, 3);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, FAILURE_RATIO, t, open);
    EXPECT_EV(&log, b, 1, OPEN, HALF_OPEN, OPEN_ELAPSED, h, 0);
    EXPECT_EV(&log, b, 2, HALF_OPEN, CLOSED, PROBES_OK, h + 5, 0);

    /* A fresh window: the 10 old calls (5 failed) are gone, and the probes
     * are not in it; 9 failures are still fewer than min_requests. */
    s = snap(b, h + 5);
    ck_assert_uint_eq(s.window_calls, 0);
    ck_assert_uint_eq(s.window_failures, 0);
    ck_assert_uint_eq(s.consecutive_failures, 0);
    ck_assert_uint_eq(s.closed, 1);
    CALLS(b, h + 5, FAILURE, 9);
    STATE_EQ(b, CLOSED);
    CALL(b, h + 5, FAILURE);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 4);
    EXPECT_EV(&log, b, 3, CLOSED, OPEN, FAILURE_RATIO, h + 5, open);
    fg_breaker_free(b);
}
END_TEST

/* One probe failure reopens at once; the other probes' reports are stale. */
START_TEST(test_probe_failure_reopens) {
    const uint64_t t = T0;
    const uint64_t open = 5 * SEC, h = t + open;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.min_requests = 4;
    o.open_for_ns = open;
    o.half_open_probes = 3;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALLS(b, t, FAILURE, 4);
    STATE_EQ(b, OPEN);
    uint64_t p1 = ENTER_OK(b, h);
    uint64_t p2 = ENTER_OK(b, h);
    uint64_t p3 = ENTER_OK(b, h);
    EXIT_EQ(b, p1, h + 1, SUCCESS, 0);
    STATE_EQ(b, HALF_OPEN);
    EXIT_EQ(b, p2, h + 2, FAILURE, 0);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 3);
    EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_FAILED, h + 2, open);
    EXIT_EQ(b, p3, h + 3, SUCCESS, 1);
    STATE_EQ(b, OPEN);
    ENTER_REJ(b, h + 3, open - 1);
    ENTER_REJ(b, h + 2 + open - 1, 1);
    fg_breaker_stats s = snap(b, h + 3);
    ck_assert_uint_eq(s.open_until_ns, h + 2 + open);
    ck_assert_uint_eq(s.discarded, 1);
    ck_assert_uint_eq(s.opened, 2);
    ck_assert_uint_eq(s.half_opened, 1);
    ck_assert_uint_eq(s.closed, 0);
    ck_assert_int_eq(log.n, 3);
    fg_breaker_free(b);
}
END_TEST

/*
 * Slow calls: latency >= slow_call_ns counts as slow. A slow success is
 * slow, not failed; 5 slow of 10 reaches slow_ratio 0.5.
 */
START_TEST(test_slow_trip) {
    const uint64_t t = T0;
    const uint64_t slow = 100 * MS;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.min_requests = 10;
    o.slow_ratio = 0.5;
    o.slow_call_ns = slow;
    o.open_for_ns = 7 * SEC;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALLS_LAT(b, t, SUCCESS, slow, 5);
    CALLS_LAT(b, t, SUCCESS, slow - 1, 4);
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, t, 9, 0, 5);
    CALL_LAT(b, t + 1, SUCCESS, slow - 1);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 1);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, SLOW_RATIO, t + 1, 7 * SEC);
    fg_breaker_free(b);

    /* 4 slow of 10: closed. */
    listen(&o, &log);
    b = mk(&o);
    CALLS_LAT(b, t, SUCCESS, slow, 4);
    CALLS_LAT(b, t, SUCCESS, 0, 6);
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, t, 10, 0, 4);
    CALL_LAT(b, t, SUCCESS, 10 * SEC); /* 5/11 */
    STATE_EQ(b, CLOSED);
    CALL_LAT(b, t, SUCCESS, slow); /* 6/12 */
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, SLOW_RATIO, t, 7 * SEC);
    fg_breaker_free(b);
}
END_TEST

/* A slow failure counts as failed and as slow. */
START_TEST(test_slow_failure_counts_both) {
    const uint64_t t = T0;
    const uint64_t slow = 100 * MS;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.slow_call_ns = slow;
    fg_breaker *b = mk(&o); /* min_requests 100: no trip here */

    CALL_LAT(b, t, FAILURE, slow);
    WINDOW_EQ(b, t, 1, 1, 1);
    CALL_LAT(b, t, SUCCESS, slow);
    WINDOW_EQ(b, t, 2, 1, 2);
    CALL_LAT(b, t, FAILURE, slow - 1);
    WINDOW_EQ(b, t, 3, 2, 2);
    CALL_LAT(b, t, SUCCESS, 0);
    WINDOW_EQ(b, t, 4, 2, 2);
    fg_breaker_free(b);

    /* Failure ratio not reached (2/4 < 0.6), slow ratio reached (2/4):
     * the slow failures are slow calls. */
    o.min_requests = 4;
    o.failure_ratio = 0.6;
    o.slow_ratio = 0.5;
    listen(&o, &log);
    b = mk(&o);
    CALLS_LAT(b, t, FAILURE, slow, 2);
    CALLS(b, t, SUCCESS, 1);
    STATE_EQ(b, CLOSED);
    CALL(b, t, SUCCESS);
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, SLOW_RATIO, t, 60 * SEC);
    fg_breaker_free(b);

    /* Both reached: the failure ratio is the reason. */
    o.failure_ratio = 0.5;
    listen(&o, &log);
    b = mk(&o);
    CALLS(b, t, SUCCESS, 2);
    CALLS_LAT(b, t, FAILURE, slow, 2);
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, FAILURE_RATIO, t, 60 * SEC);
    fg_breaker_free(b);
}
END_TEST

/*
 * consecutive_failures 3 with min_requests 100: a success resets the run,
 * IGNORE neither counts nor resets, the 3rd failure in a row opens.
 */
START_TEST(test_consecutive) {
    const uint64_t t = T0;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.consecutive_failures = 3;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALLS(b, t, FAILURE, 2);
    ck_assert_uint_eq(snap(b, t).consecutive_failures, 2);
    CALL(b, t, SUCCESS);
    ck_assert_uint_eq(snap(b, t).consecutive_failures, 0);
    CALLS(b, t, FAILURE, 2);
    STATE_EQ(b, CLOSED);
    uint64_t p = ENTER_OK(b, t);
    EXIT_EQ(b, p, t, IGNORE, 0);
    fg_breaker_stats s = snap(b, t);
    ck_assert_uint_eq(s.consecutive_failures, 2);
    ck_assert_uint_eq(s.window_calls, 5);
    ck_assert_uint_eq(s.window_failures, 4);
    STATE_EQ(b, CLOSED);
    ck_assert_int_eq(log.n, 0);
    CALL(b, t + 9, FAILURE);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 1);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, CONSECUTIVE, t + 9, 60 * SEC);
    fg_breaker_free(b);

    /* With min_requests reached but the ratio not: the run still trips. */
    o.min_requests = 4;
    o.failure_ratio = 0.9;
    listen(&o, &log);
    b = mk(&o);
    CALLS(b, t, SUCCESS, 5);
    CALLS(b, t, FAILURE, 2);
    STATE_EQ(b, CLOSED);
    CALL(b, t, FAILURE);
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, CONSECUTIVE, t, 60 * SEC);
    fg_breaker_free(b);
}
END_TEST

/* A ratio above 1 never trips, however many calls fail or are slow; the
 * consecutive rule still applies. */
START_TEST(test_ratio_above_one) {
    static const double ratios[] = {1.000001, 1.5, 2.0, 1e9, INFINITY};
    const uint64_t t = T0;
    for (size_t k = 0; k < sizeof(ratios) / sizeof(ratios[0]); k++) {
        fg_breaker_options o = wopts(_i);
        o.min_requests = 10;
        o.failure_ratio = ratios[k];
        o.slow_ratio = ratios[k];
        o.slow_call_ns = MS;
        fg_breaker *b = mk(&o);
        CALLS_LAT(b, t, FAILURE, SEC, 150);
        ck_assert_msg(fg_breaker_state(b) == CLOSED, "ratio %g opened", ratios[k]);
        ck_assert_uint_eq(snap(b, t).opened, 0);
        fg_breaker_free(b);

        o.consecutive_failures = 20;
        b = mk(&o);
        CALLS_LAT(b, t, FAILURE, SEC, 19);
        STATE_EQ(b, CLOSED);
        CALL(b, t, FAILURE);
        STATE_EQ(b, OPEN);
        fg_breaker_free(b);
    }
}
END_TEST

/* ---- 2. windows ------------------------------------------------------------------------- */

/* A COUNT window of 10 holds the last 10 calls: failures pushed out by
 * successes stop counting. */
START_TEST(test_count_window_forgets) {
    const uint64_t t = T0;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.window = FG_BREAKER_WINDOW_COUNT;
    o.window_size = 10;
    o.min_requests = 10;
    o.failure_ratio = 0.5;
    fg_breaker *b = mk(&o);

    CALLS(b, t, FAILURE, 4);
    CALLS(b, t, SUCCESS, 6);
    WINDOW_EQ(b, t, 10, 4, 0);
    CALL(b, t, SUCCESS);
    WINDOW_EQ(b, t, 10, 3, 0);
    CALLS(b, t, SUCCESS, 3);
    WINDOW_EQ(b, t, 10, 0, 0);
    /* Time means nothing to a COUNT window. */
    WINDOW_EQ(b, t + 1000 * SEC, 10, 0, 0);
    CALLS(b, t, FAILURE, 4);
    WINDOW_EQ(b, t, 10, 4, 0);
    STATE_EQ(b, CLOSED);
    CALL(b, t, FAILURE); /* 5 of the last 10 */
    STATE_EQ(b, OPEN);
    fg_breaker_free(b);

    /* 4 failures, 100 successes, 4 failures: 4/10, not 8/108 or 8/10. */
    b = mk(&o);
    CALLS(b, t, FAILURE, 4);
    CALLS(b, t, SUCCESS, 100);
    CALLS(b, t, FAILURE, 4);
    WINDOW_EQ(b, t, 10, 4, 0);
    STATE_EQ(b, CLOSED);
    /* A slow call leaves the window like any other. */
    fg_breaker_free(b);
    o.slow_call_ns = SEC;
    b = mk(&o);
    CALL_LAT(b, t, SUCCESS, SEC);
    WINDOW_EQ(b, t, 1, 0, 1);
    CALLS(b, t, SUCCESS, 9);
    WINDOW_EQ(b, t, 10, 0, 1);
    CALL(b, t, SUCCESS);
    WINDOW_EQ(b, t, 10, 0, 0);
    fg_breaker_free(b);
}
END_TEST

static fg_breaker_options time_opts(uint64_t window, uint32_t buckets) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.window = FG_BREAKER_WINDOW_TIME;
    o.window_ns = window;
    o.window_buckets = buckets;
    o.min_requests = 10;
    o.failure_ratio = 0.5;
    return o;
}

/*
 * TIME window 10 s in 1 s buckets: 5 failures at t0 and 4 successes at
 * t0 + 5 s. A 10th call 1 ns before t0 + 10 s sees 5/10 and opens; at
 * t0 + 10 s the failures have left and it sees 5 calls, none failed.
 */
START_TEST(test_time_window_expiry) {
    const uint64_t W = 10 * SEC, t0 = T0;
    fg_breaker_options o = time_opts(W, 10);
    fg_breaker *b = mk(&o);

    CALLS(b, t0, FAILURE, 5);
    CALLS(b, t0 + 5 * SEC, SUCCESS, 4);
    WINDOW_EQ(b, t0 + 5 * SEC, 9, 5, 0);
    WINDOW_EQ(b, t0 + W - 1, 9, 5, 0);
    WINDOW_EQ(b, t0 + W, 4, 0, 0);
    WINDOW_EQ(b, t0 + 5 * SEC + W - 1, 4, 0, 0);
    WINDOW_EQ(b, t0 + 5 * SEC + W, 0, 0, 0);
    if (_i == 0) {
        CALL(b, t0 + W - 1, SUCCESS);
        STATE_EQ(b, OPEN);
    } else {
        CALL(b, t0 + W, SUCCESS);
        STATE_EQ(b, CLOSED);
        WINDOW_EQ(b, t0 + W, 5, 0, 0);
        /* 5 more failures now: 5/10 within the window. */
        CALLS(b, t0 + W, FAILURE, 4);
        STATE_EQ(b, CLOSED);
        CALL(b, t0 + W, FAILURE);
        STATE_EQ(b, OPEN);
    }
    fg_breaker_free(b);
}
END_TEST

/*
 * Buckets expire lazily: nothing runs in between, yet the counts are right
 * at any reading. An idle period longer than the window leaves it empty.
 */
START_TEST(test_time_window_idle) {
    const uint64_t W = 10 * SEC, t0 = T0;
    fg_breaker_options o = time_opts(W, 10);
    fg_breaker *b = mk(&o);

    /* One call per bucket for 9 buckets: they leave one by one. */
    for (int k = 0; k < 9; k++)
        CALL(b, t0 + (uint64_t)k * SEC, FAILURE);
    STATE_EQ(b, CLOSED);
    for (int k = 0; k <= 9; k++) {
        WINDOW_EQ(b, t0 + W + (uint64_t)k * SEC - 1, 9 - k, 9 - k, 0);
        WINDOW_EQ(b, t0 + W + (uint64_t)k * SEC, 8 - (k < 8 ? k : 8), 8 - (k < 8 ? k : 8), 0);
    }
    /* Idle for 1.5 windows: one failure is all the window holds. */
    const uint64_t t1 = t0 + 8 * SEC + W + W / 2;
    WINDOW_EQ(b, t1, 0, 0, 0);
    CALL(b, t1, FAILURE);
    WINDOW_EQ(b, t1, 1, 1, 0);
    STATE_EQ(b, CLOSED);
    CALLS(b, t1, FAILURE, 8);
    STATE_EQ(b, CLOSED);
    CALL(b, t1, FAILURE);
    STATE_EQ(b, OPEN);
    fg_breaker_free(b);

    /* Idle for exactly two windows after a full one. */
    b = mk(&o);
    CALLS(b, t0, SUCCESS, 5);
    CALLS(b, t0 + 9 * SEC, FAILURE, 4);
    WINDOW_EQ(b, t0 + 2 * W, 0, 0, 0);
    CALL(b, t0 + 2 * W, FAILURE);
    WINDOW_EQ(b, t0 + 2 * W, 1, 1, 0);
    STATE_EQ(b, CLOSED);
    fg_breaker_free(b);
}
END_TEST

/*
 * A very long idle never revives old counts, even when it is a whole
 * number of windows (every bucket lands on the slot it had) or a whole
 * number of windows plus a few buckets.
 */
START_TEST(test_time_window_long_idle) {
    const uint64_t W = 10 * SEC, w = SEC, t0 = T0;
    static const uint64_t windows[] = {100000, 100001, 1u << 20, 3};
    static const uint64_t extra[] = {0, 1, 3, 9};
    fg_breaker_options o = time_opts(W, 10);

    for (size_t i = 0; i < sizeof(windows) / sizeof(windows[0]); i++) {
        for (size_t j = 0; j < sizeof(extra) / sizeof(extra[0]); j++) {
            fg_breaker *b = mk(&o);
            for (uint64_t k = 0; k < 9; k++)
                CALL(b, t0 + k * w, FAILURE);
            const uint64_t t1 = t0 + windows[i] * W + extra[j] * w;
            WINDOW_EQ(b, t1, 0, 0, 0);
            WINDOW_EQ(b, t1 + 5 * w, 0, 0, 0);
            CALL(b, t1, FAILURE);
            WINDOW_EQ(b, t1, 1, 1, 0);
            for (uint64_t k = 1; k < 9; k++) {
                CALL(b, t1 + k * w, FAILURE);
                WINDOW_EQ(b, t1 + k * w, k + 1, k + 1, 0);
            }
            STATE_EQ(b, CLOSED);
            CALL(b, t1 + 9 * w, FAILURE);
            STATE_EQ(b, OPEN);
            fg_breaker_free(b);
        }
    }
}
END_TEST

/*
 * A bucket holds up to 65,535 calls; past that it halves its counts. The
 * window never reports more than that per bucket, the failure share stays.
 */
START_TEST(test_time_bucket_cap) {
    const uint64_t t = T0;
    fg_breaker_options o = time_opts(10 * SEC, 1);
    o.min_requests = 1;
    o.failure_ratio = 2; /* never */
    fg_breaker *b = mk(&o);

    for (int i = 0; i < 65535; i++)
        CALL(b, t, i % 4 == 0 ? FAILURE : SUCCESS);
    WINDOW_EQ(b, t, 65535, 16384, 0);
    for (int i = 65535; i < 200000; i++) {
        CALL(b, t, i % 4 == 0 ? FAILURE : SUCCESS);
        if (i == 65535 || i % 9973 == 0) {
            fg_breaker_stats s = snap(b, t);
            ck_assert_msg(s.window_calls <= 65535 && s.window_calls >= 32767,
                          "after %d calls: %" PRIu64 " in the window", i + 1, s.window_calls);
            int64_t off = 4 * (int64_t)s.window_failures - (int64_t)s.window_calls;
            ck_assert_msg(off >= -64 && off <= 64,
                          "after %d calls: %" PRIu64 " of %" PRIu64 " failed, not 1 in 4",
                          i + 1, s.window_failures, s.window_calls);
        }
    }
    STATE_EQ(b, CLOSED);
    fg_breaker_free(b);
}
END_TEST

/*
 * A reading a little behind the latest one (another thread's clock read
 * just before a bucket boundary, or any clock that steps back: clock.h says
 * an earlier reading "counts as no time elapsed") must not erase newer
 * calls. Here 3 failures at t0 + 1 s, then a success read at t0 + 0.5 s (its
 * bucket still empty): the window at t0 + 1 s must hold all 4 calls, 3
 * failed, wherever the success is counted.
 * Regression: lib/breaker.c (fg_time_record / fg_time_sweep) restarted
 * bucket 0 and, sweeping "stale" buckets relative to the older reading,
 * reset bucket 1: the window held 1 call, none failed.
 */
START_TEST(test_time_window_lagging_reading) {
    const uint64_t t0 = T0;
    fg_breaker_options o = time_opts(10 * SEC, 10);
    fg_breaker *b = mk(&o);

    CALLS(b, t0 + SEC, FAILURE, 3);
    WINDOW_EQ(b, t0 + SEC, 3, 3, 0);
    CALL(b, t0 + 500 * MS, SUCCESS);
    WINDOW_EQ(b, t0 + SEC, 4, 3, 0);
    fg_breaker_free(b);

    /* A reading a whole window behind: its bucket's slot is the latest
     * bucket's. The latest calls must survive it. */
    b = mk(&o);
    CALLS(b, t0 + 20 * SEC, FAILURE, 5);
    CALL(b, t0 + 10 * SEC, SUCCESS);
    fg_breaker_stats s = snap(b, t0 + 20 * SEC);
    ck_assert_msg(s.window_failures == 5 && s.window_calls >= 5,
                  "window at t0 + 20 s: %" PRIu64 " calls, %" PRIu64
                  " failed; the 5 failures recorded at t0 + 20 s are gone",
                  s.window_calls, s.window_failures);
    fg_breaker_free(b);
}
END_TEST

/*
 * window_ns need not be a multiple of window_buckets: a window of 19 ns in
 * 10 buckets (accepted: at least 1 ns a bucket) still holds the last 19 ns,
 * to within a bucket.
 * Regression: lib/breaker.c (fg_breaker_configure) rounded the bucket down
 * to 1 ns, so the window covered 10 ns and forgot a call 10 ns later.
 */
START_TEST(test_time_window_uneven_buckets) {
    const uint64_t t = T0;
    fg_breaker_options o = time_opts(19, 10);
    fg_breaker *b = mk(&o);
    CALL(b, t, FAILURE);
    WINDOW_EQ(b, t, 1, 1, 0);
    WINDOW_EQ(b, t + 5, 1, 1, 0);
    WINDOW_EQ(b, t + 15, 1, 1, 0); /* 15 ns old: within 19 ns, even with 1.9 ns buckets */
    WINDOW_EQ(b, t + 38, 0, 0, 0);
    fg_breaker_free(b);
}
END_TEST

/* ---- 3. stale permits ------------------------------------------------------------------- */

/*
 * Calls admitted while closed that finish after the breaker opened are
 * discarded: they neither extend the open time, nor close it from
 * half-open, nor count in the fresh window after it closed again.
 */
START_TEST(test_stale_closed_permit) {
    const uint64_t t = T0;
    const uint64_t open = 5 * SEC, h = t + open;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.min_requests = 10;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    uint64_t pa = ENTER_OK(b, t);
    uint64_t pb = ENTER_OK(b, t);
    uint64_t pc = ENTER_OK(b, t);
    CALLS(b, t, FAILURE, 10);
    STATE_EQ(b, OPEN);
    EXIT_EQ(b, pa, t + 1, FAILURE, 1);
    fg_breaker_stats s = snap(b, t + 1);
    ck_assert_int_eq(s.state, OPEN);
    ck_assert_uint_eq(s.open_until_ns, h);
    ck_assert_uint_eq(s.discarded, 1);
    ck_assert_uint_eq(s.opened, 1);

    uint64_t probe = ENTER_OK(b, h);
    STATE_EQ(b, HALF_OPEN);
    EXIT_EQ(b, pb, h, SUCCESS, 1);
    STATE_EQ(b, HALF_OPEN);
    s = snap(b, h);
    ck_assert_uint_eq(s.probes_succeeded, 0);
    ck_assert_uint_eq(s.discarded, 2);
    EXIT_EQ(b, probe, h + 1, SUCCESS, 0);
    STATE_EQ(b, CLOSED);

    /* Closed again, but a later generation: pc is still stale. */
    EXIT_EQ(b, pc, h + 2, FAILURE, 1);
    s = snap(b, h + 2);
    ck_assert_uint_eq(s.window_calls, 0);
    ck_assert_uint_eq(s.consecutive_failures, 0);
    ck_assert_uint_eq(s.discarded, 3);
    CALL(b, h + 2, SUCCESS);
    WINDOW_EQ(b, h + 2, 1, 0, 0);
    ck_assert_int_eq(log.n, 3);
    fg_breaker_free(b);
}
END_TEST

/* A probe permit from an earlier half-open period is discarded. */
START_TEST(test_stale_probe_permit) {
    const uint64_t t = T0;
    const uint64_t open = 5 * SEC, h1 = t + open;
    evlog log;
    fg_breaker_options o = wopts(_i);
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 3;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALL(b, t, FAILURE);
    uint64_t p1 = ENTER_OK(b, h1);
    uint64_t p2 = ENTER_OK(b, h1);
    uint64_t p3 = ENTER_OK(b, h1);
    EXIT_EQ(b, p3, h1, FAILURE, 0);
    STATE_EQ(b, OPEN);
    const uint64_t h2 = h1 + open;
    uint64_t q1 = ENTER_OK(b, h2);
    STATE_EQ(b, HALF_OPEN);
    EXIT_EQ(b, p1, h2, SUCCESS, 1); /* does not count as one of three */
    EXIT_EQ(b, p2, h2, FAILURE, 1); /* does not reopen */
    STATE_EQ(b, HALF_OPEN);
    fg_breaker_stats s = snap(b, h2);
    ck_assert_uint_eq(s.probes_admitted, 1);
    ck_assert_uint_eq(s.probes_succeeded, 0);
    ck_assert_uint_eq(s.discarded, 2);
    uint64_t q2 = ENTER_OK(b, h2);
    uint64_t q3 = ENTER_OK(b, h2);
    ENTER_REJ(b, h2, 0);
    EXIT_EQ(b, q1, h2 + 1, SUCCESS, 0);
    EXIT_EQ(b, q2, h2 + 1, SUCCESS, 0);
    STATE_EQ(b, HALF_OPEN);
    EXIT_EQ(b, q3, h2 + 1, SUCCESS, 0);
    STATE_EQ(b, CLOSED);
    ck_assert_int_eq(log.n, 5);
    EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_FAILED, h1, open);
    EXPECT_EV(&log, b, 3, OPEN, HALF_OPEN, OPEN_ELAPSED, h2, 0);
    EXPECT_EV(&log, b, 4, HALF_OPEN, CLOSED, PROBES_OK, h2 + 1, 0);
    fg_breaker_free(b);
}
END_TEST

/*
 * An outcome whose generation is no longer current is discarded, however
 * old; the snapshot's generation is the last event's, however many.
 * Regression: lib/breaker.c kept the low 24 bits of the generation in its
 * state word and gave only those to permits and fg_breaker_stats: after
 * 2^24 changes a permit's generation came round again and its outcome was
 * counted (exit 0), and the snapshot's generation read 0.
 */
typedef struct last_gen {
    uint64_t generation;
    uint64_t events;
} last_gen;

static void last_gen_listener(fg_breaker *b, const fg_breaker_event *e, void *arg) {
    last_gen *l = arg;
    (void)b;
    l->generation = e->generation;
    l->events++;
}

START_TEST(test_generation_wrap) {
    const uint64_t n = UINT64_C(1) << 24;
    fg_fake_clock *fc = mk_clock(T0);
    last_gen lg = {0, 0};
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.window_size = 1;
    o.min_requests = 1;
    o.failure_ratio = 2;
    o.clock = fg_fake_clock_as_clock(fc);
    o.listener = last_gen_listener;
    o.listener_arg = &lg;
    fg_breaker *b = mk(&o);

    uint64_t old = ENTER_OK(b, T0);
    const uint64_t g0 = snap(b, T0).generation;
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++)
        rc = fg_breaker_reset(b);
    ck_assert_int_eq(rc, 0);
    ck_assert_uint_eq(lg.events, n);
    rc = fg_breaker_exit(b, old, T0, FAILURE, 0);
    fg_breaker_stats s = snap(b, T0);
    ck_assert_msg(rc == 1 && s.generation == lg.generation && s.generation > g0,
                  "after 2^24 resets: a permit from before them: exit %d, want 1 "
                  "(discarded); snapshot generation %" PRIu64
                  ", want the last event's %" PRIu64 " (the first was %" PRIu64 ")",
                  rc, s.generation, lg.generation, g0);
    WINDOW_EQ(b, T0, 0, 0, 0);
    fg_breaker_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/* ---- 4. half-open timeout --------------------------------------------------------------- */

/*
 * Probes that never report: at half_open_timeout after turning half-open
 * the next request reopens the breaker (and is rejected); 1 ns earlier it
 * is only rejected because the probes are taken.
 */
START_TEST(test_probe_timeout) {
    const uint64_t t = T0;
    const uint64_t open = 10 * SEC, to = 5 * SEC, h = t + open;
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 2;
    o.half_open_timeout_ns = to;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALL(b, t, FAILURE);
    uint64_t p1 = ENTER_OK(b, h);
    uint64_t p2 = ENTER_OK(b, h + 1);
    ENTER_REJ(b, h + 1, 0);
    ENTER_REJ(b, h + to - 1, 0);
    STATE_EQ(b, HALF_OPEN);
    ck_assert_int_eq(log.n, 2);
    ENTER_REJ(b, h + to, open);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 3);
    EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_TIMEOUT, h + to, open);
    fg_breaker_stats s = snap(b, h + to);
    ck_assert_uint_eq(s.open_until_ns, h + to + open);
    ck_assert_uint_eq(s.opened, 2);
    /* The lost probes turn up after all: stale. */
    EXIT_EQ(b, p1, h + to + 1, SUCCESS, 1);
    EXIT_EQ(b, p2, h + to + 1, SUCCESS, 1);
    STATE_EQ(b, OPEN);
    ENTER_REJ(b, h + to + open - 1, 1);
    const uint64_t h2 = h + to + open;
    p1 = ENTER_OK(b, h2);
    p2 = ENTER_OK(b, h2);
    EXIT_EQ(b, p1, h2 + 1, SUCCESS, 0);
    EXIT_EQ(b, p2, h2 + 2, SUCCESS, 0);
    STATE_EQ(b, CLOSED);
    ck_assert_int_eq(log.n, 5);
    EXPECT_EV(&log, b, 3, OPEN, HALF_OPEN, OPEN_ELAPSED, h2, 0);
    EXPECT_EV(&log, b, 4, HALF_OPEN, CLOSED, PROBES_OK, h2 + 2, 0);
    fg_breaker_free(b);
}
END_TEST

/* Not all probes succeeded in time: one succeeded and the other never
 * reported, or was never even admitted. Either way the timeout reopens. */
START_TEST(test_probe_timeout_partial) {
    const uint64_t t = T0;
    const uint64_t open = 10 * SEC, to = 5 * SEC, h = t + open;
    for (int lost_admitted = 0; lost_admitted < 2; lost_admitted++) {
        evlog log;
        fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
        o.consecutive_failures = 1;
        o.open_for_ns = open;
        o.half_open_probes = 2;
        o.half_open_timeout_ns = to;
        listen(&o, &log);
        fg_breaker *b = mk(&o);

        CALL(b, t, FAILURE);
        uint64_t p1 = ENTER_OK(b, h);
        uint64_t p2 = 0;
        if (lost_admitted)
            p2 = ENTER_OK(b, h);
        EXIT_EQ(b, p1, h + 1, SUCCESS, 0);
        STATE_EQ(b, HALF_OPEN);
        ck_assert_uint_eq(snap(b, h + 1).probes_succeeded, 1);
        ENTER_REJ(b, h + to, open);
        STATE_EQ(b, OPEN);
        EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_TIMEOUT, h + to, open);
        if (lost_admitted)
            EXIT_EQ(b, p2, h + to, SUCCESS, 1);
        STATE_EQ(b, OPEN);
        fg_breaker_free(b);
    }
}
END_TEST

/* half_open_timeout 0 means open_for. */
START_TEST(test_probe_timeout_default) {
    const uint64_t t = T0;
    const uint64_t open = 10 * SEC, h = t + open;
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALL(b, t, FAILURE);
    (void)ENTER_OK(b, h);
    ENTER_REJ(b, h + open - 1, 0);
    STATE_EQ(b, HALF_OPEN);
    ENTER_REJ(b, h + open, open);
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_TIMEOUT, h + open, open);
    fg_breaker_free(b);
}
END_TEST

/* An IGNORE result frees the probe's slot for another request. */
START_TEST(test_ignore_frees_probe) {
    const uint64_t t = T0;
    const uint64_t open = 10 * SEC, h = t + open;
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALL(b, t, FAILURE);
    uint64_t p = ENTER_OK(b, h);
    ENTER_REJ(b, h, 0);
    EXIT_EQ(b, p, h + 1, IGNORE, 0);
    STATE_EQ(b, HALF_OPEN);
    p = ENTER_OK(b, h + 2);
    ENTER_REJ(b, h + 2, 0);
    EXIT_EQ(b, p, h + 3, SUCCESS, 0);
    STATE_EQ(b, CLOSED);
    ck_assert_int_eq(log.n, 3);
    EXPECT_EV(&log, b, 2, HALF_OPEN, CLOSED, PROBES_OK, h + 3, 0);
    fg_breaker_free(b);

    /* Two probes: one ignored, its replacement and the other succeed. */
    o.half_open_probes = 2;
    listen(&o, &log);
    b = mk(&o);
    CALL(b, t, FAILURE);
    uint64_t p1 = ENTER_OK(b, h);
    uint64_t p2 = ENTER_OK(b, h);
    ENTER_REJ(b, h, 0);
    EXIT_EQ(b, p1, h, IGNORE, 0);
    uint64_t p3 = ENTER_OK(b, h);
    ENTER_REJ(b, h, 0);
    EXIT_EQ(b, p2, h, SUCCESS, 0);
    STATE_EQ(b, HALF_OPEN);
    EXIT_EQ(b, p3, h, SUCCESS, 0);
    STATE_EQ(b, CLOSED);
    fg_breaker_free(b);
}
END_TEST

/*
 * Probes "that do not all report within half_open_timeout_ns count as
 * failed": a probe that reports success after the timeout, with no request
 * in between to notice it, must not close the breaker.
 * Regression: lib/breaker.c (fg_probe_outcome) counted it and closed.
 */
START_TEST(test_late_probe_report) {
    const uint64_t t = T0;
    const uint64_t open = 10 * SEC, to = 5 * SEC, h = t + open;
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 2;
    o.half_open_timeout_ns = to;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALL(b, t, FAILURE);
    uint64_t p1 = ENTER_OK(b, h);
    uint64_t p2 = ENTER_OK(b, h);
    EXIT_EQ(b, p1, h + to - 1, SUCCESS, 0); /* in time */
    STATE_EQ(b, HALF_OPEN);
    (void)fg_breaker_exit(b, p2, h + to + SEC, SUCCESS, to + SEC); /* too late */
    ck_assert_msg(fg_breaker_state(b) != CLOSED,
                  "a probe reporting %" PRIu64 " ns after the half-open timeout closed "
                  "the breaker",
                  SEC);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 3);
    EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_TIMEOUT, h + to + SEC, open);
    ENTER_REJ(b, h + to + SEC, open);
    fg_breaker_free(b);
}
END_TEST

/* A probe's result alone decides: a slow successful probe is a success,
 * and the window after closing holds nothing of it. */
START_TEST(test_slow_probe_success) {
    const uint64_t t = T0;
    const uint64_t open = 10 * SEC, h = t + open;
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    o.slow_call_ns = SEC;
    o.slow_ratio = 0.1;
    o.min_requests = 1;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALL(b, t, FAILURE);
    uint64_t p = ENTER_OK(b, h);
    exit_eq(b, p, h + 2 * SEC, SUCCESS, 2 * SEC, 0, __LINE__); /* slow */
    STATE_EQ(b, CLOSED);
    EXPECT_EV(&log, b, 2, HALF_OPEN, CLOSED, PROBES_OK, h + 2 * SEC, 0);
    WINDOW_EQ(b, h + 2 * SEC, 0, 0, 0);
    fg_breaker_free(b);
}
END_TEST

/* ---- 5. growing open time --------------------------------------------------------------- */

typedef struct backoff_cfg {
    const char *name;
    double backoff;
    uint64_t max_open;
    int n;
    uint64_t open[8]; /* the k-th opening without a close in between */
} backoff_cfg;

static const backoff_cfg backoff_cfgs[] = {
    {"x2 up to 4x", 2.0, 4 * SEC, 6, {1 * SEC, 2 * SEC, 4 * SEC, 4 * SEC, 4 * SEC, 4 * SEC}},
    {"x2 up to the default 10x",
     2.0,
     0,
     7,
     {1 * SEC, 2 * SEC, 4 * SEC, 8 * SEC, 10 * SEC, 10 * SEC, 10 * SEC}},
    {"x1.5 up to 10x",
     1.5,
     0,
     8,
     {1000 * MS, 1500 * MS, 2250 * MS, 3375 * MS, 5062500 * US, 7593750 * US, 10 * SEC,
      10 * SEC}},
    {"0: constant", 0, 0, 4, {1 * SEC, 1 * SEC, 1 * SEC, 1 * SEC}},
    {"1: constant", 1.0, 0, 4, {1 * SEC, 1 * SEC, 1 * SEC, 1 * SEC}},
    {"x1000 up to 1 h", 1000.0, 3600 * SEC, 4, {1 * SEC, 1000 * SEC, 3600 * SEC, 3600 * SEC}},
};
#define NBACKOFF ((int)(sizeof(backoff_cfgs) / sizeof(backoff_cfgs[0])))

/*
 * The k-th opening without a close in between lasts min(open_for x
 * backoff^k, max_open), k = 0 for the first. Probe failures and a probe
 * timeout (the 4th opening) both grow it; closing resets it, so a second
 * round shows the same lengths.
 */
START_TEST(test_backoff) {
    const backoff_cfg *c = &backoff_cfgs[_i];
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = SEC;
    o.open_backoff = c->backoff;
    o.max_open_ns = c->max_open;
    o.half_open_probes = 1;
    o.half_open_timeout_ns = 100 * MS;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    for (int round = 0; round < 2; round++) {
        uint64_t t = T0 + (uint64_t)round * 100000 * SEC;
        CALL(b, t, FAILURE);
        for (int k = 0; k < c->n; k++) {
            const uint64_t len = c->open[k];
            ck_assert_int_le(log.n, EVMAX);
            const fg_breaker_event *e = &log.ev[log.n - 1];
            ck_assert_msg(e->to == OPEN && e->open_for_ns == len && e->at_ns == t,
                          "[%s] round %d, opening %d: to %s for %" PRIu64 " ns at %" PRIu64
                          ", want open for %" PRIu64 " at %" PRIu64,
                          c->name, round, k, fg_breaker_state_name(e->to), e->open_for_ns,
                          e->at_ns, len, t);
            ENTER_REJ(b, t, len);
            ENTER_REJ(b, t + len - 1, 1);
            ck_assert_uint_eq(snap(b, t).open_until_ns, t + len);
            t += len;
            uint64_t p = ENTER_OK(b, t);
            if (k + 1 == c->n) {
                t += 1;
                EXIT_EQ(b, p, t, SUCCESS, 0);
            } else if (k == 2) {
                /* This probe is lost: the timeout reopens. */
                t += 100 * MS;
                ENTER_REJ(b, t, c->open[k + 1]);
                EXIT_EQ(b, p, t, SUCCESS, 1);
            } else {
                t += 1;
                EXIT_EQ(b, p, t, FAILURE, 0);
            }
        }
        STATE_EQ(b, CLOSED);
        ck_assert_int_eq(log.ev[log.n - 1].reason, FG_BREAKER_REASON_PROBES_OK);
    }
    fg_breaker_free(b);
}
END_TEST

/* ---- 6. modes, reset, listener --------------------------------------------------------- */

/* FORCED_OPEN rejects everything with no hint and records nothing; AUTO
 * resumes the closed state with its window. */
START_TEST(test_forced_open) {
    fg_fake_clock *fc = mk_clock(T0);
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.min_requests = 4;
    o.clock = fg_fake_clock_as_clock(fc);
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALLS(b, T0, SUCCESS, 2);
    CALL(b, T0, FAILURE);
    fg_fake_clock_set(fc, T0 + 1);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_FORCED_OPEN), 0);
    ck_assert_int_eq(log.n, 1);
    EXPECT_MANUAL(&log, b, 0, FG_BREAKER_FORCED_OPEN, T0 + 1);
    for (uint64_t i = 0; i < 5; i++)
        ENTER_REJ(b, T0 + 1 + i * 100 * SEC, 0);
    fg_breaker_stats s = snap(b, T0 + 1);
    ck_assert_int_eq(s.mode, FG_BREAKER_FORCED_OPEN);
    ck_assert_uint_eq(s.window_calls, 3);
    ck_assert_uint_eq(s.window_failures, 1);
    fg_fake_clock_set(fc, T0 + 2);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_AUTO), 0);
    ck_assert_int_eq(log.n, 2);
    EXPECT_MANUAL(&log, b, 1, FG_BREAKER_AUTO, T0 + 2);
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, T0 + 2, 3, 1, 0);
    CALL(b, T0 + 3, FAILURE); /* 2/4, with the window kept */
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 3);
    EXPECT_EV(&log, b, 2, CLOSED, OPEN, FAILURE_RATIO, T0 + 3, 60 * SEC);
    fg_breaker_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/* FORCED_CLOSED admits everything; its reports return 1 and change nothing;
 * AUTO resumes the open state with its open_until. */
START_TEST(test_forced_closed) {
    fg_fake_clock *fc = mk_clock(T0);
    const uint64_t open = 10 * SEC;
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 2;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    o.clock = fg_fake_clock_as_clock(fc);
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    /* From closed: failures are not recorded. */
    CALL(b, T0, SUCCESS);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_FORCED_CLOSED), 0);
    for (int i = 0; i < 5; i++) {
        uint64_t p = ENTER_OK(b, T0);
        EXIT_EQ(b, p, T0, FAILURE, 1);
    }
    STATE_EQ(b, CLOSED);
    fg_breaker_stats s = snap(b, T0);
    ck_assert_int_eq(s.mode, FG_BREAKER_FORCED_CLOSED);
    ck_assert_uint_eq(s.window_calls, 1);
    ck_assert_uint_eq(s.window_failures, 0);
    ck_assert_uint_eq(s.consecutive_failures, 0);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_AUTO), 0);
    CALLS(b, T0, FAILURE, 2);
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 3);
    EXPECT_EV(&log, b, 2, CLOSED, OPEN, CONSECUTIVE, T0, open);

    /* From open. */
    fg_fake_clock_set(fc, T0 + 1);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_FORCED_CLOSED), 0);
    EXPECT_MANUAL(&log, b, 3, FG_BREAKER_FORCED_CLOSED, T0 + 1);
    uint64_t p = ENTER_OK(b, T0 + 1);
    EXIT_EQ(b, p, T0 + 1, FAILURE, 1);
    p = ENTER_OK(b, T0 + 2);
    EXIT_EQ(b, p, T0 + 2, SUCCESS, 1);
    s = snap(b, T0 + 2);
    ck_assert_uint_eq(s.open_until_ns, T0 + open);
    ck_assert_uint_eq(s.opened, 1);
    fg_fake_clock_set(fc, T0 + 3);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_AUTO), 0);
    EXPECT_MANUAL(&log, b, 4, FG_BREAKER_AUTO, T0 + 3);
    STATE_EQ(b, OPEN);
    ENTER_REJ(b, T0 + 3, open - 3);
    ENTER_REJ(b, T0 + open - 1, 1);
    p = ENTER_OK(b, T0 + open);
    STATE_EQ(b, HALF_OPEN);
    EXPECT_EV(&log, b, 5, OPEN, HALF_OPEN, OPEN_ELAPSED, T0 + open, 0);
    EXIT_EQ(b, p, T0 + open, SUCCESS, 0);
    STATE_EQ(b, CLOSED);
    ck_assert_int_eq(log.n, 7);
    fg_breaker_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/*
 * DISABLED (shadow): everything is admitted, but the machine runs as in
 * AUTO. A request AUTO would reject is admitted, counted in
 * shadow_rejected, and its report returns 1; the probes are real.
 */
START_TEST(test_disabled_shadow) {
    fg_fake_clock *fc = mk_clock(T0);
    const uint64_t open = 10 * SEC;
    const fg_breaker_mode D = FG_BREAKER_DISABLED;
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.min_requests = 4;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    o.clock = fg_fake_clock_as_clock(fc);
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    ck_assert_int_eq(fg_breaker_set_mode(b, D), 0);
    EXPECT_MANUAL(&log, b, 0, D, T0);
    const uint64_t t = T0 + 1;
    CALLS(b, t, SUCCESS, 2);
    CALLS(b, t, FAILURE, 2); /* recorded: 2/4 opens */
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 2);
    EXPECT_EV_MODE(&log, b, 1, CLOSED, OPEN, FAILURE_RATIO, D, t, open);

    uint64_t p = ENTER_OK(b, t + 1); /* would be rejected */
    EXIT_EQ(b, p, t + 1, FAILURE, 1);
    p = ENTER_OK(b, t + open - 1);
    EXIT_EQ(b, p, t + open - 1, SUCCESS, 1);
    fg_breaker_stats s = snap(b, t + open - 1);
    ck_assert_int_eq(s.state, OPEN);
    ck_assert_int_eq(s.mode, D);
    ck_assert_uint_eq(s.shadow_rejected, 2);
    ck_assert_uint_eq(s.open_until_ns, t + open);
    ck_assert_uint_eq(s.opened, 1);
    STATE_EQ(b, OPEN);

    const uint64_t h = t + open;
    uint64_t probe = ENTER_OK(b, h);
    STATE_EQ(b, HALF_OPEN);
    EXPECT_EV_MODE(&log, b, 2, OPEN, HALF_OPEN, OPEN_ELAPSED, D, h, 0);
    uint64_t extra = ENTER_OK(b, h); /* past the probes: shadow */
    ck_assert_uint_eq(snap(b, h).shadow_rejected, 3);
    EXIT_EQ(b, extra, h, FAILURE, 1); /* does not reopen */
    STATE_EQ(b, HALF_OPEN);
    EXIT_EQ(b, probe, h + 1, SUCCESS, 0);
    STATE_EQ(b, CLOSED);
    EXPECT_EV_MODE(&log, b, 3, HALF_OPEN, CLOSED, PROBES_OK, D, h + 1, 0);

    /* Open again, then AUTO: it really rejects now. */
    CALLS(b, h + 2, FAILURE, 4);
    STATE_EQ(b, OPEN);
    EXPECT_EV_MODE(&log, b, 4, CLOSED, OPEN, FAILURE_RATIO, D, h + 2, open);
    fg_fake_clock_set(fc, h + 3);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_AUTO), 0);
    EXPECT_MANUAL(&log, b, 5, FG_BREAKER_AUTO, h + 3);
    ENTER_REJ(b, h + 3, open - 1);
    s = snap(b, h + 3);
    ck_assert_uint_eq(s.shadow_rejected, 3);
    ck_assert_int_eq(s.mode, FG_BREAKER_AUTO);
    ck_assert_int_eq(log.n, 6);
    fg_breaker_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/*
 * reset: CLOSED, AUTO, an empty window, no run of failures, the open time
 * back to open_for, a new generation (older permits discarded).
 */
START_TEST(test_reset) {
    fg_fake_clock *fc = mk_clock(T0);
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = SEC;
    o.open_backoff = 2;
    o.max_open_ns = 8 * SEC;
    o.half_open_probes = 1;
    o.clock = fg_fake_clock_as_clock(fc);
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    uint64_t old = ENTER_OK(b, T0);
    CALL(b, T0, FAILURE);
    uint64_t p = ENTER_OK(b, T0 + SEC);
    EXIT_EQ(b, p, T0 + SEC, FAILURE, 0);
    EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_FAILED, T0 + SEC, 2 * SEC);
    uint64_t gen = snap(b, T0 + SEC).generation;

    const uint64_t x = T0 + SEC + 5;
    fg_fake_clock_set(fc, x);
    ck_assert_int_eq(fg_breaker_reset(b), 0);
    ck_assert_int_eq(log.n, 4);
    EXPECT_EV(&log, b, 3, OPEN, CLOSED, RESET, x, 0);
    fg_breaker_stats s = snap(b, x);
    ck_assert_int_eq(s.state, CLOSED);
    ck_assert_int_eq(s.mode, FG_BREAKER_AUTO);
    ck_assert_uint_eq(s.window_calls, 0);
    ck_assert_uint_eq(s.consecutive_failures, 0);
    ck_assert_uint_gt(s.generation, gen);
    ck_assert_uint_eq(s.generation, log.ev[3].generation);
    EXIT_EQ(b, old, x, FAILURE, 1);
    STATE_EQ(b, CLOSED);
    ck_assert_uint_eq(snap(b, x).discarded, 1);
    /* Open time back to 1 s, not 4 s. */
    CALL(b, x, FAILURE);
    EXPECT_EV(&log, b, 4, CLOSED, OPEN, CONSECUTIVE, x, SEC);
    ENTER_REJ(b, x, SEC);

    /* From a forced mode: back to AUTO. */
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_FORCED_OPEN), 0);
    ck_assert_int_eq(fg_breaker_reset(b), 0);
    s = snap(b, x);
    ck_assert_int_eq(s.state, CLOSED);
    ck_assert_int_eq(s.mode, FG_BREAKER_AUTO);
    ck_assert_int_eq(log.ev[log.n - 1].reason, FG_BREAKER_REASON_RESET);
    ck_assert_int_eq(log.ev[log.n - 1].mode, FG_BREAKER_AUTO);
    ck_assert_int_eq(log.ev[log.n - 1].to, CLOSED);
    CALL(b, x, SUCCESS);
    fg_breaker_free(b);

    /* The window is emptied: 9 failures before and 9 after are not 18. */
    o.consecutive_failures = 0;
    o.min_requests = 10;
    listen(&o, &log);
    b = mk(&o);
    CALLS(b, T0, FAILURE, 9);
    ck_assert_int_eq(fg_breaker_reset(b), 0);
    WINDOW_EQ(b, T0, 0, 0, 0);
    CALLS(b, T0, FAILURE, 9);
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, T0, 9, 9, 0);
    CALL(b, T0, FAILURE);
    STATE_EQ(b, OPEN);
    fg_breaker_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/*
 * fg_breaker_carry: a breaker built with new thresholds takes the old one's
 * state. A window of the same shape keeps its outcomes (and the new
 * thresholds judge them); an OPEN breaker stays open until the same
 * moment; counters and generations continue; no listener is called.
 */
START_TEST(test_carry_count_window) {
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.window_size = 10;
    o.min_requests = 10;
    o.failure_ratio = 0.5;
    o.open_for_ns = SEC;
    fg_breaker *a = mk(&o);
    CALLS(a, T0, SUCCESS, 3);
    CALLS(a, T0, FAILURE, 4);
    WINDOW_EQ(a, T0, 7, 4, 0);
    /* Same window, lower min_requests: 4 of 7 failed already trips. */
    o.min_requests = 8;
    listen(&o, &log);
    fg_breaker *b = mk(&o);
    ck_assert_int_eq(fg_breaker_carry(b, a, T0), 0);
    ck_assert_int_eq(log.n, 0);
    WINDOW_EQ(b, T0, 7, 4, 0);
    STATE_EQ(b, CLOSED);
    ck_assert_uint_eq(snap(b, T0).generation, snap(a, T0).generation);
    CALL(b, T0, SUCCESS); /* 8 calls, 4 failed: 50% */
    STATE_EQ(b, OPEN);
    ck_assert_int_eq(log.n, 1);
    ck_assert_int_eq(log.ev[0].reason, FG_BREAKER_REASON_FAILURE_RATIO);
    /* The ring positions continue too: 10 calls later the old ones are gone. */
    fg_breaker_free(a);

    /* OPEN carried with its end; counters kept; the next period follows
     * the new settings. */
    o.open_for_ns = 4 * SEC;
    o.max_open_ns = 40 * SEC;
    fg_breaker *c = mk(&o);
    ENTER_REJ(b, T0 + 100, SEC - 100);
    fg_breaker_stats before = snap(b, T0 + 100);
    ck_assert_int_eq(fg_breaker_carry(c, b, T0 + 100), 0);
    fg_breaker_stats after = snap(c, T0 + 100);
    ck_assert_int_eq(after.state, OPEN);
    ck_assert_uint_eq(after.open_until_ns, T0 + SEC);
    ck_assert_uint_eq(after.opened, before.opened);
    ck_assert_uint_eq(after.rejected, before.rejected);
    ck_assert_uint_eq(after.generation, before.generation);
    ENTER_REJ(c, T0 + 200, SEC - 200);
    /* Half-open at the old end, then a failed probe: 4 s, the new open_for. */
    uint64_t p = ENTER_OK(c, T0 + SEC);
    EXIT_EQ(c, p, T0 + SEC, FAILURE, 0);
    STATE_EQ(c, OPEN);
    ck_assert_uint_eq(snap(c, T0 + SEC).open_until_ns, T0 + SEC + 4 * SEC * 1);
    fg_breaker_free(b);
    fg_breaker_free(c);
}
END_TEST

/* A window of another shape starts empty; the state is still carried. A
 * HALF-OPEN breaker stays half-open with fresh probe slots. */
START_TEST(test_carry_shape_and_half_open) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.window = FG_BREAKER_WINDOW_TIME;
    o.window_ns = 10 * SEC;
    o.window_buckets = 10;
    o.min_requests = 5;
    o.open_for_ns = SEC;
    o.half_open_probes = 2;
    fg_breaker *a = mk(&o);
    CALLS(a, T0, FAILURE, 2);
    /* Same shape (TIME, 10 x 1 s): the buckets are carried. */
    o.failure_ratio = 0.9;
    fg_breaker *b = mk(&o);
    ck_assert_int_eq(fg_breaker_carry(b, a, T0), 0);
    WINDOW_EQ(b, T0, 2, 2, 0);
    CALLS(b, T0 + SEC, FAILURE, 2);
    WINDOW_EQ(b, T0 + SEC, 4, 4, 0);
    /* Another bucket length: empty. */
    o.window_ns = 20 * SEC;
    fg_breaker *c = mk(&o);
    ck_assert_int_eq(fg_breaker_carry(c, b, T0 + SEC), 0);
    WINDOW_EQ(c, T0 + SEC, 0, 0, 0);
    /* A COUNT window from a TIME one: empty as well. */
    fg_breaker_options oc = o;
    oc.window = FG_BREAKER_WINDOW_COUNT;
    oc.window_size = 10;
    fg_breaker *d = mk(&oc);
    ck_assert_int_eq(fg_breaker_carry(d, b, T0 + SEC), 0);
    WINDOW_EQ(d, T0 + SEC, 0, 0, 0);
    fg_breaker_free(d);

    /* Half-open with one probe taken: the new breaker has both slots. */
    CALL(b, T0 + SEC, FAILURE); /* 5 calls, all failed: opens */
    STATE_EQ(b, OPEN);
    uint64_t p = ENTER_OK(b, T0 + 2 * SEC);
    STATE_EQ(b, HALF_OPEN);
    ck_assert_uint_eq(snap(b, T0 + 2 * SEC).probes_admitted, 1);
    fg_breaker *e = mk(&o);
    ck_assert_int_eq(fg_breaker_carry(e, b, T0 + 2 * SEC + 5), 0);
    STATE_EQ(e, HALF_OPEN);
    ck_assert_uint_eq(snap(e, T0 + 2 * SEC).probes_admitted, 0);
    uint64_t p1 = ENTER_OK(e, T0 + 2 * SEC + 6);
    uint64_t p2 = ENTER_OK(e, T0 + 2 * SEC + 6);
    ENTER_REJ(e, T0 + 2 * SEC + 6, 0);
    EXIT_EQ(e, p1, T0 + 2 * SEC + 7, SUCCESS, 0);
    EXIT_EQ(e, p2, T0 + 2 * SEC + 7, SUCCESS, 0);
    STATE_EQ(e, CLOSED);
    EXIT_EQ(b, p, T0 + 2 * SEC + 7, SUCCESS, 0); /* the old probe reports to the old one */
    fg_breaker_free(a);
    fg_breaker_free(b);
    fg_breaker_free(c);
    fg_breaker_free(e);
}
END_TEST

/* The mode is carried (a forced-open breaker stays forced open); bad
 * arguments are refused. */
START_TEST(test_carry_mode_and_args) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    fg_breaker *a = mk(&o);
    ck_assert_int_eq(fg_breaker_set_mode(a, FG_BREAKER_FORCED_OPEN), 0);
    o.min_requests = 7;
    fg_breaker *b = mk(&o);
    ck_assert_int_eq(fg_breaker_carry(NULL, a, T0), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_carry(b, NULL, T0), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_carry(a, a, T0), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_carry(b, a, T0), 0);
    ck_assert_int_eq(snap(b, T0).mode, FG_BREAKER_FORCED_OPEN);
    ENTER_REJ(b, T0, 0);
    fg_breaker_free(a);
    fg_breaker_free(b);
}
END_TEST

/*
 * Every change, once, in order: each reason, the mode after it, the time
 * that caused it, the open time of each opening, generations strictly
 * rising, and the snapshot's generation that of the last change.
 */
START_TEST(test_listener_sequence) {
    fg_fake_clock *fc = mk_clock(T0);
    const uint64_t open = 10 * SEC, to = 5 * SEC;
    evlog log;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.min_requests = 4;
    o.failure_ratio = 0.5;
    o.slow_ratio = 0.75;
    o.slow_call_ns = SEC;
    o.consecutive_failures = 3;
    o.open_for_ns = open;
    o.open_backoff = 2;
    o.max_open_ns = 40 * SEC;
    o.half_open_probes = 1;
    o.half_open_timeout_ns = to;
    o.clock = fg_fake_clock_as_clock(fc);
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    const uint64_t t = T0 + 100;
    CALLS(b, t, SUCCESS, 2);
    CALLS(b, t, FAILURE, 2);
    uint64_t p = ENTER_OK(b, t + open);
    EXIT_EQ(b, p, t + open + 1, FAILURE, 0);
    const uint64_t u = t + open + 1 + 2 * open;
    ENTER_REJ(b, u - 1, 1);
    p = ENTER_OK(b, u);
    EXIT_EQ(b, p, u + 2, SUCCESS, 0);
    const uint64_t v = u + 10;
    CALLS(b, v, FAILURE, 3); /* 3 calls < min_requests: the run trips */
    p = ENTER_OK(b, v + open);
    ENTER_REJ(b, v + open + to, 2 * open);
    EXIT_EQ(b, p, v + open + to, SUCCESS, 1);
    const uint64_t x = v + open + to + 7;
    fg_fake_clock_set(fc, x);
    ck_assert_int_eq(fg_breaker_reset(b), 0);
    const uint64_t y = x + 1;
    CALLS_LAT(b, y, SUCCESS, SEC, 3);
    CALL_LAT(b, y, SUCCESS, SEC - 1); /* 3/4 slow */
    fg_fake_clock_set(fc, y + 1);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_FORCED_CLOSED), 0);
    fg_fake_clock_set(fc, y + 2);
    ck_assert_int_eq(fg_breaker_set_mode(b, FG_BREAKER_AUTO), 0);

    ck_assert_int_eq(log.n, 12);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, FAILURE_RATIO, t, open);
    EXPECT_EV(&log, b, 1, OPEN, HALF_OPEN, OPEN_ELAPSED, t + open, 0);
    EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_FAILED, t + open + 1, 2 * open);
    EXPECT_EV(&log, b, 3, OPEN, HALF_OPEN, OPEN_ELAPSED, u, 0);
    EXPECT_EV(&log, b, 4, HALF_OPEN, CLOSED, PROBES_OK, u + 2, 0);
    EXPECT_EV(&log, b, 5, CLOSED, OPEN, CONSECUTIVE, v, open);
    EXPECT_EV(&log, b, 6, OPEN, HALF_OPEN, OPEN_ELAPSED, v + open, 0);
    EXPECT_EV(&log, b, 7, HALF_OPEN, OPEN, PROBE_TIMEOUT, v + open + to, 2 * open);
    EXPECT_EV(&log, b, 8, OPEN, CLOSED, RESET, x, 0);
    EXPECT_EV(&log, b, 9, CLOSED, OPEN, SLOW_RATIO, y, open);
    EXPECT_MANUAL(&log, b, 10, FG_BREAKER_FORCED_CLOSED, y + 1);
    EXPECT_MANUAL(&log, b, 11, FG_BREAKER_AUTO, y + 2);
    fg_breaker_stats s = snap(b, y + 2);
    ck_assert_uint_eq(s.generation, log.ev[11].generation);
    ck_assert_uint_eq(s.opened, 5);
    ck_assert_uint_eq(s.half_opened, 3);
    STATE_EQ(b, OPEN);
    ENTER_REJ(b, y + 2, open - 2);
    ck_assert_int_eq(log.n, 12);
    fg_breaker_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/* A listener that calls back into its breaker: snapshot, state, set_mode,
 * reset. None may deadlock (the tcase timeout catches a hang). */
typedef struct reentrant {
    evlog log;
    int action; /* 0: snapshot + set_mode(FORCED_CLOSED); 1: reset */
    int inner;
    fg_breaker_stats seen;
    fg_breaker_state_kind state_seen;
    uint64_t permit_rc;
} reentrant;

static void reentrant_listener(fg_breaker *b, const fg_breaker_event *e, void *arg) {
    reentrant *r = arg;
    evlog_listener(b, e, &r->log);
    if (e->reason == FG_BREAKER_REASON_MANUAL || e->reason == FG_BREAKER_REASON_RESET) {
        r->inner++;
        return;
    }
    if (fg_breaker_snapshot(b, e->at_ns, &r->seen) != 0)
        r->seen.generation = 0;
    r->state_seen = fg_breaker_state(b);
    uint64_t p;
    r->permit_rc = (uint64_t)(int64_t)fg_breaker_enter(b, e->at_ns, &p, NULL);
    if (r->action == 0)
        (void)fg_breaker_set_mode(b, FG_BREAKER_FORCED_CLOSED);
    else
        (void)fg_breaker_reset(b);
}

START_TEST(test_listener_reentrant) {
    fg_fake_clock *fc = mk_clock(T0);
    reentrant r;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = 10 * SEC;
    o.clock = fg_fake_clock_as_clock(fc);
    o.listener = reentrant_listener;
    o.listener_arg = &r;

    memset(&r, 0, sizeof(r));
    r.action = 0;
    fg_breaker *b = mk(&o);
    CALL(b, T0, FAILURE);
    ck_assert_int_eq(r.log.n, 2);
    ck_assert_int_eq(r.inner, 1);
    EXPECT_EV(&r.log, b, 0, CLOSED, OPEN, CONSECUTIVE, T0, 10 * SEC);
    EXPECT_MANUAL(&r.log, b, 1, FG_BREAKER_FORCED_CLOSED, T0);
    ck_assert_int_eq(r.seen.state, OPEN);
    ck_assert_uint_eq(r.seen.generation, r.log.ev[0].generation);
    ck_assert_uint_eq(r.seen.open_until_ns, T0 + 10 * SEC);
    ck_assert_int_eq(r.state_seen, OPEN);
    ck_assert_int_eq((int)(int64_t)r.permit_rc, FG_EBREAKER); /* still open then */
    ck_assert_int_eq(snap(b, T0).mode, FG_BREAKER_FORCED_CLOSED);
    uint64_t p = ENTER_OK(b, T0 + 1);
    EXIT_EQ(b, p, T0 + 1, FAILURE, 1);
    fg_breaker_free(b);

    memset(&r, 0, sizeof(r));
    r.action = 1;
    b = mk(&o);
    CALL(b, T0, FAILURE);
    ck_assert_int_eq(r.log.n, 2);
    EXPECT_EV(&r.log, b, 1, OPEN, CLOSED, RESET, T0, 0);
    STATE_EQ(b, CLOSED);
    CALL(b, T0 + 1, SUCCESS);
    CALL(b, T0 + 2, FAILURE); /* trips again, and the listener resets again */
    ck_assert_int_eq(r.log.n, 4);
    STATE_EQ(b, CLOSED);
    fg_breaker_free(b);
    fg_fake_clock_free(fc);
}
END_TEST

/* ---- 7. stats, names, arguments -------------------------------------------------------- */

START_TEST(test_snapshot_counters) {
    const uint64_t t = T0, open = 10 * SEC, h = t + open;
    fg_breaker_options o = wopts(_i);
    o.min_requests = 4;
    o.open_for_ns = open;
    o.half_open_probes = 2;
    o.slow_call_ns = SEC;
    fg_breaker *b = mk(&o);

    fg_breaker_stats s = snap(b, t);
    ck_assert_int_eq(s.state, CLOSED);
    ck_assert_int_eq(s.mode, FG_BREAKER_AUTO);
    ck_assert_uint_eq(s.window_calls + s.window_failures + s.window_slow, 0);
    ck_assert_uint_eq(s.consecutive_failures + s.probes_admitted + s.probes_succeeded, 0);
    ck_assert_uint_eq(s.rejected + s.shadow_rejected + s.discarded, 0);
    ck_assert_uint_eq(s.opened + s.half_opened + s.closed, 0);
    const uint64_t g0 = s.generation;

    CALL(b, t, SUCCESS);
    CALL_LAT(b, t, SUCCESS, SEC);
    CALL(b, t, FAILURE);
    s = snap(b, t);
    ck_assert_uint_eq(s.window_calls, 3);
    ck_assert_uint_eq(s.window_failures, 1);
    ck_assert_uint_eq(s.window_slow, 1);
    ck_assert_uint_eq(s.consecutive_failures, 1);
    ck_assert_uint_eq(s.generation, g0);
    uint64_t stale = ENTER_OK(b, t);
    CALL(b, t, FAILURE);
    s = snap(b, t);
    ck_assert_int_eq(s.state, OPEN);
    ck_assert_uint_eq(s.open_until_ns, h);
    ck_assert_uint_eq(s.opened, 1);
    ck_assert_uint_gt(s.generation, g0);
    const uint64_t g1 = s.generation;
    ENTER_REJ(b, t, open);
    ENTER_REJ(b, t + 1, open - 1);
    ENTER_REJ(b, h - 1, 1);
    EXIT_EQ(b, stale, t + 1, FAILURE, 1);
    s = snap(b, t + 1);
    ck_assert_uint_eq(s.rejected, 3);
    ck_assert_uint_eq(s.discarded, 1);

    uint64_t p1 = ENTER_OK(b, h);
    uint64_t p2 = ENTER_OK(b, h);
    ENTER_REJ(b, h, 0);
    s = snap(b, h);
    ck_assert_int_eq(s.state, HALF_OPEN);
    ck_assert_uint_eq(s.half_opened, 1);
    ck_assert_uint_eq(s.probes_admitted, 2);
    ck_assert_uint_eq(s.probes_succeeded, 0);
    ck_assert_uint_eq(s.rejected, 4);
    ck_assert_uint_gt(s.generation, g1);
    const uint64_t g2 = s.generation;
    EXIT_EQ(b, p1, h, SUCCESS, 0);
    ck_assert_uint_eq(snap(b, h).probes_succeeded, 1);
    EXIT_EQ(b, p2, h, SUCCESS, 0);
    s = snap(b, h);
    ck_assert_int_eq(s.state, CLOSED);
    ck_assert_uint_gt(s.generation, g2);
    ck_assert_uint_eq(s.window_calls, 0);
    ck_assert_uint_eq(s.rejected, 4);
    ck_assert_uint_eq(s.shadow_rejected, 0);
    ck_assert_uint_eq(s.discarded, 1);
    ck_assert_uint_eq(s.opened, 1);
    ck_assert_uint_eq(s.half_opened, 1);
    ck_assert_uint_eq(s.closed, 1);
    fg_breaker_free(b);
}
END_TEST

START_TEST(test_names) {
    ck_assert_str_eq(fg_breaker_state_name(FG_BREAKER_CLOSED), "closed");
    ck_assert_str_eq(fg_breaker_state_name(FG_BREAKER_OPEN), "open");
    ck_assert_str_eq(fg_breaker_state_name(FG_BREAKER_HALF_OPEN), "half_open");
    ck_assert_str_eq(fg_breaker_state_name((fg_breaker_state_kind)3), "unknown");
    ck_assert_str_eq(fg_breaker_state_name((fg_breaker_state_kind)-1), "unknown");
    ck_assert_str_eq(fg_breaker_state_name((fg_breaker_state_kind)1000), "unknown");

    /* The header names "failure_ratio" and "auto"; the other names are
     * the library's to choose: each is a distinct lower_snake_case word. */
    ck_assert_str_eq(fg_breaker_reason_name(FG_BREAKER_REASON_FAILURE_RATIO), "failure_ratio");
    ck_assert_str_eq(fg_breaker_mode_name(FG_BREAKER_AUTO), "auto");
    const char *names[9 + 4 + 3];
    int n = 0;
    for (int i = 0; i <= FG_BREAKER_REASON_RESET; i++)
        names[n++] = fg_breaker_reason_name((fg_breaker_reason)i);
    for (int i = 0; i <= FG_BREAKER_DISABLED; i++)
        names[n++] = fg_breaker_mode_name((fg_breaker_mode)i);
    for (int i = 0; i <= FG_BREAKER_HALF_OPEN; i++)
        names[n++] = fg_breaker_state_name((fg_breaker_state_kind)i);
    for (int i = 0; i < n; i++) {
        ck_assert_ptr_nonnull(names[i]);
        ck_assert_msg(names[i][0] != '\0' && strcmp(names[i], "unknown") != 0,
                      "name %d: \"%s\"", i, names[i]);
        ck_assert_msg(strspn(names[i], "abcdefghijklmnopqrstuvwxyz_") == strlen(names[i]),
                      "name %d: \"%s\" is not lower_snake_case", i, names[i]);
        for (int j = 0; j < i && j < 9; j++)
            ck_assert_msg(strcmp(names[i], names[j]) != 0, "names %d and %d: \"%s\"", j, i,
                          names[i]);
    }
    for (int i = 9; i < 13; i++)
        for (int j = 9; j < i; j++)
            ck_assert_str_ne(names[i], names[j]);
    ck_assert_str_eq(fg_breaker_reason_name((fg_breaker_reason)9), "unknown");
    ck_assert_str_eq(fg_breaker_reason_name((fg_breaker_reason)-1), "unknown");
    ck_assert_str_eq(fg_breaker_mode_name((fg_breaker_mode)4), "unknown");
    ck_assert_str_eq(fg_breaker_mode_name((fg_breaker_mode)-1), "unknown");
}
END_TEST

START_TEST(test_args) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    fg_breaker *b = mk(&o);
    fg_breaker_stats s;
    uint64_t p = 0, ra = 0;

    fg_breaker_free(NULL);
    ck_assert_int_eq(fg_breaker_enter(NULL, T0, &p, &ra), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_enter(b, T0, NULL, &ra), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_enter(b, T0, &p, NULL), 0); /* retry_after may be NULL */
    ck_assert_int_eq(fg_breaker_exit(NULL, p, T0, SUCCESS, 0), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_exit(b, p, T0, (fg_breaker_result)3, 0), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_exit(b, p, T0, (fg_breaker_result)-1, 0), FG_EINVAL);
    WINDOW_EQ(b, T0, 0, 0, 0);
    ck_assert_int_eq(fg_breaker_exit(b, p, T0, FAILURE, 0), 0);
    WINDOW_EQ(b, T0, 1, 1, 0);
    ck_assert_int_eq(fg_breaker_state(NULL), FG_BREAKER_CLOSED);
    ck_assert_int_eq(fg_breaker_snapshot(NULL, T0, &s), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_snapshot(b, T0, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_set_mode(NULL, FG_BREAKER_AUTO), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_set_mode(b, (fg_breaker_mode)4), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_set_mode(b, (fg_breaker_mode)-1), FG_EINVAL);
    ck_assert_int_eq(snap(b, T0).mode, FG_BREAKER_AUTO);
    ck_assert_int_eq(fg_breaker_reset(NULL), FG_EINVAL);
    fg_breaker_free(b);
}
END_TEST

/* ---- 8. options ------------------------------------------------------------------------- */

START_TEST(test_new_errors) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    fg_breaker *b = NULL;

    ck_assert_int_eq(fg_breaker_new(NULL, &b), FG_EINVAL);
    ck_assert_int_eq(fg_breaker_new(&o, NULL), FG_EINVAL);
    ck_assert_int_eq(new_rc(&o), 0);

    /* Ratios: negative or NaN. Above 1 is fine (never). */
    static const double bad[] = {-0.1, -1e-9, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
        o.failure_ratio = bad[i];
        ck_assert_msg(new_rc(&o) == FG_EINVAL, "failure_ratio %g accepted", bad[i]);
        o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
        o.slow_ratio = bad[i];
        ck_assert_msg(new_rc(&o) == FG_EINVAL, "slow_ratio %g accepted", bad[i]);
    }
    o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
    o.failure_ratio = 2;
    o.slow_ratio = INFINITY;
    ck_assert_int_eq(new_rc(&o), 0);
    o.failure_ratio = 1e-6;
    o.slow_ratio = 1;
    ck_assert_int_eq(new_rc(&o), 0);

    /* COUNT window size. */
    o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
    o.min_requests = 1;
    o.window_size = FG_BREAKER_MAX_WINDOW_SIZE + 1;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.window_size = UINT32_MAX;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.window_size = FG_BREAKER_MAX_WINDOW_SIZE;
    ck_assert_int_eq(new_rc(&o), 0);

    /* TIME buckets, and at least 1 ns a bucket. */
    o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
    o.window = FG_BREAKER_WINDOW_TIME;
    o.window_buckets = FG_BREAKER_MAX_BUCKETS + 1;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.window_buckets = FG_BREAKER_MAX_BUCKETS;
    ck_assert_int_eq(new_rc(&o), 0);
    o.window_buckets = 10;
    o.window_ns = 9;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.window_ns = 10;
    ck_assert_int_eq(new_rc(&o), 0);
    o.window_buckets = 0; /* 10 */
    o.window_ns = 9;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.window_ns = 10;
    ck_assert_int_eq(new_rc(&o), 0);

    /* Probes. */
    o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
    o.half_open_probes = FG_BREAKER_MAX_PROBES + 1;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.half_open_probes = FG_BREAKER_MAX_PROBES;
    ck_assert_int_eq(new_rc(&o), 0);

    /* Backoff in [1, 1000], or 0. */
    static const double backoffs_bad[] = {0.5, 0.999, 1000.001, 1e6, INFINITY};
    static const double backoffs_ok[] = {0, 1, 1.001, 2, 1000};
    for (size_t i = 0; i < sizeof(backoffs_bad) / sizeof(backoffs_bad[0]); i++) {
        o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
        o.open_backoff = backoffs_bad[i];
        ck_assert_msg(new_rc(&o) == FG_ERANGE, "open_backoff %g: %s", backoffs_bad[i],
                      fg_err_name(new_rc(&o)));
    }
    for (size_t i = 0; i < sizeof(backoffs_ok) / sizeof(backoffs_ok[0]); i++) {
        o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
        o.open_backoff = backoffs_ok[i];
        ck_assert_msg(new_rc(&o) == 0, "open_backoff %g: %s", backoffs_ok[i],
                      fg_err_name(new_rc(&o)));
    }

    /* max_open below open_for. */
    o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
    o.open_for_ns = 10 * SEC;
    o.max_open_ns = 10 * SEC - 1;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.max_open_ns = 10 * SEC;
    ck_assert_int_eq(new_rc(&o), 0);
    o.open_for_ns = 0; /* 60 s */
    o.max_open_ns = 60 * SEC - 1;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.max_open_ns = 60 * SEC;
    ck_assert_int_eq(new_rc(&o), 0);

    /* Every duration below 2^62 ns. */
    for (int which = 0; which < 5; which++) {
        static const uint64_t vals[] = {TIME_MAX - 1, TIME_MAX, TIME_MAX + 1, UINT64_MAX};
        for (size_t k = 0; k < 4; k++) {
            o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
            const uint64_t v = vals[k];
            const char *name = "";
            switch (which) {
            case 0:
                o.slow_call_ns = v;
                name = "slow_call_ns";
                break;
            case 1:
                o.window = FG_BREAKER_WINDOW_TIME;
                o.window_ns = v;
                name = "window_ns";
                break;
            case 2:
                o.open_for_ns = v;
                o.max_open_ns = v;
                name = "open_for_ns";
                break;
            case 3:
                o.max_open_ns = v;
                name = "max_open_ns";
                break;
            default:
                o.half_open_timeout_ns = v;
                name = "half_open_timeout_ns";
                break;
            }
            int want = v < TIME_MAX ? 0 : FG_ERANGE;
            int rc = new_rc(&o);
            ck_assert_msg(rc == want, "%s = %" PRIu64 ": %s, want %s", name, v,
                          fg_err_name(rc), fg_err_name(want));
        }
    }

    /* min_requests within what the window can hold. */
    o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
    o.min_requests = 101; /* default window_size 100 */
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.min_requests = 100;
    ck_assert_int_eq(new_rc(&o), 0);
    o.window_size = 50;
    o.min_requests = 51;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.min_requests = 50;
    ck_assert_int_eq(new_rc(&o), 0);
    o.window_size = 0;
    o.min_requests = 0; /* 100 > 50 */
    o.window_size = 50;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o = (fg_breaker_options)FG_BREAKER_OPTIONS_INIT;
    o.window = FG_BREAKER_WINDOW_TIME;
    o.window_buckets = 2;
    o.min_requests = 65535;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.min_requests = 65534;
    ck_assert_int_eq(new_rc(&o), 0);
    o.window_buckets = 0; /* 10 */
    o.min_requests = 327671;
    ck_assert_int_eq(new_rc(&o), FG_ERANGE);
    o.min_requests = 327670;
    ck_assert_int_eq(new_rc(&o), 0);
    o.min_requests = 1000; /* TIME: window_size does not apply */
    o.window_size = 10;
    ck_assert_int_eq(new_rc(&o), 0);
}
END_TEST

/*
 * A negative open_backoff is "below 1": FG_ERANGE.
 * Regression: lib/breaker.c (fg_breaker_new) returned FG_EINVAL, the code
 * the header reserves for negative or NaN ratios.
 */
START_TEST(test_backoff_negative_range) {
    static const double negative[] = {-1, -0.5, -1000};
    for (size_t i = 0; i < sizeof(negative) / sizeof(negative[0]); i++) {
        fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
        o.open_backoff = negative[i];
        int rc = new_rc(&o);
        ck_assert_msg(rc == FG_ERANGE, "open_backoff %g: %s, want FG_ERANGE", negative[i],
                      fg_err_name(rc));
    }
}
END_TEST

/* The defaults: min_requests 100 in a COUNT window of 100, ratio 0.5,
 * open 60 s, 10 probes, slow at 60 s with slow ratio 1, half-open timeout
 * = open_for. */
START_TEST(test_defaults) {
    const uint64_t t = T0, open = 60 * SEC;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    evlog log;
    listen(&o, &log);
    fg_breaker *b = mk(&o);

    CALLS(b, t, FAILURE, 99);
    STATE_EQ(b, CLOSED);
    CALL(b, t, FAILURE);
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, FAILURE_RATIO, t, open);
    ENTER_REJ(b, t, open);
    ENTER_REJ(b, t + open - 1, 1);
    uint64_t probes[10];
    for (int i = 0; i < 10; i++)
        probes[i] = ENTER_OK(b, t + open);
    ENTER_REJ(b, t + open, 0);
    for (int i = 0; i < 9; i++)
        EXIT_EQ(b, probes[i], t + open, SUCCESS, 0);
    STATE_EQ(b, HALF_OPEN);
    EXIT_EQ(b, probes[9], t + open, SUCCESS, 0);
    STATE_EQ(b, CLOSED);
    fg_breaker_free(b);

    /* Ratio 0.5 over the last 100 calls. */
    listen(&o, &log);
    b = mk(&o);
    CALLS(b, t, SUCCESS, 200);
    CALLS(b, t, FAILURE, 49);
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, t, 100, 49, 0);
    CALL(b, t, FAILURE);
    STATE_EQ(b, OPEN);
    /* Half-open timeout = open_for. */
    for (int i = 0; i < 10; i++)
        (void)ENTER_OK(b, t + open);
    ENTER_REJ(b, t + 2 * open - 1, 0);
    STATE_EQ(b, HALF_OPEN);
    ENTER_REJ(b, t + 2 * open, open);
    EXPECT_EV(&log, b, 2, HALF_OPEN, OPEN, PROBE_TIMEOUT, t + 2 * open, open);
    fg_breaker_free(b);

    /* Slow at 60 s; slow ratio 1.0: every call in the window slow. */
    listen(&o, &log);
    b = mk(&o);
    CALLS_LAT(b, t, SUCCESS, 60 * SEC, 99);
    CALL_LAT(b, t, SUCCESS, 60 * SEC - 1);
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, t, 100, 0, 99);
    CALLS_LAT(b, t, SUCCESS, 60 * SEC, 99);
    STATE_EQ(b, CLOSED);
    CALL_LAT(b, t, SUCCESS, 60 * SEC); /* the fast one has left */
    STATE_EQ(b, OPEN);
    EXPECT_EV(&log, b, 0, CLOSED, OPEN, SLOW_RATIO, t, open);
    fg_breaker_free(b);

    /* No consecutive rule by default: 99 failures after a success. */
    b = mk(&o);
    CALL(b, t, SUCCESS);
    CALLS(b, t, FAILURE, 98);
    STATE_EQ(b, CLOSED);
    fg_breaker_free(b);
}
END_TEST

/* A TIME window with no length or buckets: 10 s in 10 buckets. */
START_TEST(test_defaults_time_window) {
    const uint64_t t = T0, W = 10 * SEC;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.window = FG_BREAKER_WINDOW_TIME;
    fg_breaker *b = mk(&o);
    CALLS(b, t, FAILURE, 99);
    WINDOW_EQ(b, t + W - 1, 99, 99, 0);
    WINDOW_EQ(b, t + W, 0, 0, 0);
    CALL(b, t + W - 1, FAILURE);
    STATE_EQ(b, OPEN);
    fg_breaker_free(b);

    b = mk(&o);
    CALLS(b, t, FAILURE, 99);
    CALL(b, t + W, FAILURE);
    STATE_EQ(b, CLOSED);
    WINDOW_EQ(b, t + W, 1, 1, 0);
    /* Bucket by bucket: calls 1 s apart leave 1 s apart. */
    CALLS(b, t + W + SEC, SUCCESS, 3);
    WINDOW_EQ(b, t + 2 * W - 1, 4, 1, 0);
    WINDOW_EQ(b, t + 2 * W, 3, 0, 0);
    WINDOW_EQ(b, t + 2 * W + SEC, 0, 0, 0);
    fg_breaker_free(b);
}
END_TEST

/* ---- 9. the stage ----------------------------------------------------------------------- */

/* A stage after the breaker that rejects when told to. */
typedef struct gate {
    int reject;
    int code;
} gate;

static int gate_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    const gate *g = state;
    (void)ctx;
    (void)slot;
    return g->reject ? g->code : 0;
}

static const fg_stage_ops gate_ops = {"gate", gate_enter, NULL, NULL};

/* The handler: moves the fake clock (the call's latency) and returns rc. */
typedef struct hctl {
    fg_fake_clock *fc;
    uint64_t advance;
    int rc;
    int calls;
} hctl;

static int h_run(fg_ctx *ctx, void *arg) {
    hctl *h = arg;
    (void)ctx;
    h->calls++;
    if (h->advance)
        fg_fake_clock_advance(h->fc, h->advance);
    return h->rc;
}

/* A breaker, its stage and (optionally) a gate after it, in a chain; the
 * chain and the breaker read one fake clock. */
typedef struct brig {
    fg_fake_clock *fc;
    fg_breaker *b;
    fg_chain *chain;
    const fg_stage *stage;
    const fg_stage *gate_stage;
    gate g;
    evlog log;
    hctl h;
} brig;

static void brig_make(brig *r, fg_breaker_options o, fg_breaker_classifier classify, void *arg,
                      int with_gate) {
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    fg_stage *stage = NULL;

    memset(r, 0, sizeof(*r));
    r->fc = mk_clock(T0);
    o.clock = fg_fake_clock_as_clock(r->fc);
    listen(&o, &r->log);
    r->b = mk(&o);
    co.clock = fg_fake_clock_as_clock(r->fc);
    ck_assert_int_eq(fg_chain_new(&co, &r->chain), 0);
    ck_assert_int_eq(fg_stage_breaker(r->b, classify, arg, NULL, &stage), 0);
    ck_assert_int_eq(fg_chain_use(r->chain, stage), 0);
    r->stage = fg_chain_stage(r->chain, 0);
    ck_assert_ptr_eq(r->stage, stage);
    if (with_gate) {
        r->g.code = FG_ELIMITED;
        ck_assert_int_eq(fg_stage_new(&gate_ops, &r->g, "gate", &stage), 0);
        ck_assert_int_eq(fg_chain_use(r->chain, stage), 0);
        r->gate_stage = fg_chain_stage(r->chain, 1);
    }
    r->h.fc = r->fc;
}

static void brig_free(brig *r) {
    fg_chain_free(r->chain);
    fg_breaker_free(r->b);
    fg_fake_clock_free(r->fc);
}

/* One synchronous request; the ctx is left for inspection. */
static int brig_call(brig *r, fg_ctx *ctx) {
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/orders"), 0);
    return fg_chain_call(r->chain, ctx, h_run, &r->h);
}

static uint64_t now_of(const brig *r) { return fg_fake_clock_now(r->fc); }

START_TEST(test_stage_args) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    fg_breaker *b = mk(&o);
    fg_stage *s = NULL;
    char name[FG_STAGE_NAME_MAX + 2];

    ck_assert_int_eq(fg_stage_breaker(NULL, NULL, NULL, NULL, &s), FG_EINVAL);
    ck_assert_ptr_null(s);
    ck_assert_int_eq(fg_stage_breaker(b, NULL, NULL, NULL, NULL), FG_EINVAL);
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0'; /* 129 bytes */
    ck_assert_int_eq(fg_stage_breaker(b, NULL, NULL, name, &s), FG_ETOOLONG);
    ck_assert_ptr_null(s);
    name[FG_STAGE_NAME_MAX] = '\0'; /* 128 bytes */
    ck_assert_int_eq(fg_stage_breaker(b, NULL, NULL, name, &s), 0);
    ck_assert_uint_eq(strlen(fg_stage_name(s)), FG_STAGE_NAME_MAX);
    fg_stage_unref(s);
    s = NULL;
    ck_assert_int_eq(fg_stage_breaker(b, NULL, NULL, NULL, &s), 0);
    ck_assert_str_eq(fg_stage_name(s), "breaker");
    ck_assert_str_ne(fg_stage_kind(s), "");
    fg_stage_unref(s);
    char own[] = "orders";
    ck_assert_int_eq(fg_stage_breaker(b, NULL, NULL, own, &s), 0);
    own[0] = 'X';
    ck_assert_str_eq(fg_stage_name(s), "orders");
    fg_stage_unref(s);
    fg_breaker_free(b);
}
END_TEST

/* fg_chain_call: the breaker counts handler failures, rejects with
 * FG_EBREAKER and the time left open, and its probe closes it. */
START_TEST(test_stage_call) {
    const uint64_t open = 10 * SEC;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 2;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    brig r;
    fg_ctx ctx;
    brig_make(&r, o, NULL, NULL, 0);

    ck_assert_int_eq(brig_call(&r, &ctx), 0);
    WINDOW_EQ(r.b, T0, 1, 0, 0);
    r.h.rc = -42;
    ck_assert_int_eq(brig_call(&r, &ctx), -42);
    STATE_EQ(r.b, CLOSED);
    ck_assert_int_eq(brig_call(&r, &ctx), -42);
    STATE_EQ(r.b, OPEN);
    EXPECT_EV(&r.log, r.b, 0, CLOSED, OPEN, CONSECUTIVE, T0, open);
    WINDOW_EQ(r.b, T0, 3, 2, 0);

    fg_fake_clock_advance(r.fc, 3 * SEC);
    ck_assert_int_eq(brig_call(&r, &ctx), FG_EBREAKER);
    ck_assert_uint_eq(ctx.retry_after_ns, 7 * SEC);
    ck_assert_ptr_eq(ctx.rejected_by, r.stage);
    ck_assert_int_eq(ctx.status, FG_EBREAKER);
    ck_assert_int_eq(r.h.calls, 3);
    fg_fake_clock_set(r.fc, T0 + open - 1);
    ck_assert_int_eq(brig_call(&r, &ctx), FG_EBREAKER);
    ck_assert_uint_eq(ctx.retry_after_ns, 1);
    fg_fake_clock_set(r.fc, T0 + open);
    r.h.rc = 0;
    ck_assert_int_eq(brig_call(&r, &ctx), 0);
    ck_assert_uint_eq(ctx.retry_after_ns, 0);
    ck_assert_int_eq(r.h.calls, 4);
    STATE_EQ(r.b, CLOSED);
    ck_assert_int_eq(r.log.n, 3);
    EXPECT_EV(&r.log, r.b, 1, OPEN, HALF_OPEN, OPEN_ELAPSED, T0 + open, 0);
    EXPECT_EV(&r.log, r.b, 2, HALF_OPEN, CLOSED, PROBES_OK, T0 + open, 0);
    ck_assert_uint_eq(snap(r.b, T0 + open).rejected, 2);

    /* Forced open through the stage: rejected with no hint. */
    ck_assert_int_eq(fg_breaker_set_mode(r.b, FG_BREAKER_FORCED_OPEN), 0);
    ck_assert_int_eq(brig_call(&r, &ctx), FG_EBREAKER);
    ck_assert_uint_eq(ctx.retry_after_ns, 0);
    ck_assert_int_eq(r.h.calls, 4);
    brig_free(&r);
}
END_TEST

/* The split API: the outcome is reported at exit, at now_ns + latency; a
 * request admitted before the breaker opened is discarded. */
START_TEST(test_stage_split) {
    const uint64_t open = 10 * SEC;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    brig r;
    fg_ctx c1, c2, c3, c4, c5;
    brig_make(&r, o, NULL, NULL, 0);

    ck_assert_int_eq(fg_ctx_init(&c1, "GET", "/a"), 0);
    ck_assert_int_eq(fg_ctx_init(&c2, "GET", "/b"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &c1), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &c2), 0);
    fg_fake_clock_advance(r.fc, 2 * SEC);
    ck_assert_int_eq(fg_chain_exit(r.chain, &c1, -5), 0);
    STATE_EQ(r.b, OPEN);
    EXPECT_EV(&r.log, r.b, 0, CLOSED, OPEN, CONSECUTIVE, T0 + 2 * SEC, open);
    ck_assert_uint_eq(snap(r.b, T0).open_until_ns, T0 + 2 * SEC + open);
    ck_assert_int_eq(fg_chain_exit(r.chain, &c2, 0), 0);
    fg_breaker_stats s = snap(r.b, now_of(&r));
    ck_assert_uint_eq(s.discarded, 1);
    ck_assert_int_eq(s.state, OPEN);

    ck_assert_int_eq(fg_ctx_init(&c3, "GET", "/c"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &c3), FG_EBREAKER);
    ck_assert_uint_eq(c3.retry_after_ns, open);
    ck_assert_ptr_eq(c3.rejected_by, r.stage);

    fg_fake_clock_set(r.fc, T0 + 2 * SEC + open);
    ck_assert_int_eq(fg_ctx_init(&c4, "GET", "/d"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &c4), 0);
    STATE_EQ(r.b, HALF_OPEN);
    ck_assert_int_eq(fg_ctx_init(&c5, "GET", "/e"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &c5), FG_EBREAKER);
    ck_assert_uint_eq(c5.retry_after_ns, 0);
    fg_fake_clock_advance(r.fc, MS);
    ck_assert_int_eq(fg_chain_exit(r.chain, &c4, 0), 0);
    STATE_EQ(r.b, CLOSED);
    EXPECT_EV(&r.log, r.b, 2, HALF_OPEN, CLOSED, PROBES_OK, T0 + 2 * SEC + open + MS, 0);
    brig_free(&r);
}
END_TEST

/* The default classifier: a rejection by a later stage is IGNORE: not
 * counted, and in half-open it frees the probe's slot. */
START_TEST(test_stage_later_rejection) {
    const uint64_t open = 10 * SEC;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = open;
    o.half_open_probes = 1;
    brig r;
    fg_ctx ctx;
    brig_make(&r, o, NULL, NULL, 1);

    r.g.reject = 1;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(brig_call(&r, &ctx), FG_ELIMITED);
        ck_assert_ptr_eq(ctx.rejected_by, r.gate_stage);
    }
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/x"), 0);
    ck_assert_int_eq(fg_chain_enter(r.chain, &ctx), FG_ELIMITED);
    ck_assert_int_eq(r.h.calls, 0);
    STATE_EQ(r.b, CLOSED);
    fg_breaker_stats s = snap(r.b, T0);
    ck_assert_uint_eq(s.window_calls, 0);
    ck_assert_uint_eq(s.consecutive_failures, 0);

    r.g.reject = 0;
    r.h.rc = -3;
    ck_assert_int_eq(brig_call(&r, &ctx), -3);
    STATE_EQ(r.b, OPEN);
    fg_fake_clock_set(r.fc, T0 + open);
    r.g.reject = 1;
    ck_assert_int_eq(brig_call(&r, &ctx), FG_ELIMITED); /* the probe, rejected later */
    STATE_EQ(r.b, HALF_OPEN);
    r.g.reject = 0;
    r.h.rc = 0;
    ck_assert_int_eq(brig_call(&r, &ctx), 0); /* its slot was freed */
    STATE_EQ(r.b, CLOSED);
    ck_assert_int_eq(r.h.calls, 2);
    brig_free(&r);
}
END_TEST

/* By default a canceled request (the caller went away) is not counted
 * against the dependency; other failures are. */
START_TEST(test_stage_canceled_ignored) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 2;
    brig r;
    fg_ctx ctx;
    brig_make(&r, o, NULL, NULL, 1);

    r.h.rc = FG_ECANCELED;
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(brig_call(&r, &ctx), FG_ECANCELED);
    STATE_EQ(r.b, CLOSED);
    fg_breaker_stats s = snap(r.b, T0);
    ck_assert_uint_eq(s.window_calls, 0);
    ck_assert_uint_eq(s.consecutive_failures, 0);

    r.h.rc = FG_EHANDLER;
    ck_assert_int_eq(brig_call(&r, &ctx), FG_EHANDLER);
    ck_assert_int_eq(brig_call(&r, &ctx), FG_EHANDLER);
    STATE_EQ(r.b, OPEN);
    brig_free(&r);
}
END_TEST

/* A classifier sees every outcome (with the ctx, the latency, the
 * rejecting stage and its arg) and decides what counts. */
typedef struct crec {
    int calls;
    const fg_ctx *ctx;
    void *arg;
    fg_outcome_kind kind;
    int code;
    uint64_t latency;
    const fg_stage *rejected_by;
} crec;

static fg_breaker_result classify_rec(const fg_ctx *ctx, const fg_outcome *out, void *arg) {
    crec *c = arg;
    c->calls++;
    c->ctx = ctx;
    c->arg = arg;
    c->kind = out->kind;
    c->code = out->code;
    c->latency = out->latency_ns;
    c->rejected_by = out->rejected_by;
    if (out->kind == FG_OUTCOME_OK)
        return SUCCESS;
    if (out->kind == FG_OUTCOME_FAILED && out->code == FG_ETIMEDOUT)
        return IGNORE; /* not the dependency's fault */
    return FAILURE;    /* other failures, and rejections by later stages */
}

START_TEST(test_stage_classifier) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 2;
    o.open_for_ns = 10 * SEC;
    brig r;
    crec c;
    fg_ctx ctx;
    memset(&c, 0, sizeof(c));
    brig_make(&r, o, classify_rec, &c, 1);

    r.h.advance = 5 * MS;
    r.h.rc = FG_ETIMEDOUT;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(brig_call(&r, &ctx), FG_ETIMEDOUT);
    ck_assert_int_eq(c.calls, 3);
    ck_assert_ptr_eq(c.ctx, &ctx);
    ck_assert_ptr_eq(c.arg, &c);
    ck_assert_int_eq(c.kind, FG_OUTCOME_FAILED);
    ck_assert_int_eq(c.code, FG_ETIMEDOUT);
    ck_assert_uint_eq(c.latency, 5 * MS);
    ck_assert_ptr_null(c.rejected_by);
    STATE_EQ(r.b, CLOSED);
    WINDOW_EQ(r.b, now_of(&r), 0, 0, 0);

    r.h.rc = -7;
    ck_assert_int_eq(brig_call(&r, &ctx), -7);
    ck_assert_int_eq(c.calls, 4);
    ck_assert_int_eq(c.code, -7);
    WINDOW_EQ(r.b, now_of(&r), 1, 1, 0);
    ck_assert_uint_eq(snap(r.b, now_of(&r)).consecutive_failures, 1);

    r.h.rc = 0;
    ck_assert_int_eq(brig_call(&r, &ctx), 0);
    ck_assert_int_eq(c.kind, FG_OUTCOME_OK);
    ck_assert_int_eq(c.code, 0);
    ck_assert_uint_eq(snap(r.b, now_of(&r)).consecutive_failures, 0);

    /* This classifier counts a later rejection as a failure. */
    r.g.reject = 1;
    r.g.code = FG_EOVERLOADED;
    ck_assert_int_eq(brig_call(&r, &ctx), FG_EOVERLOADED);
    ck_assert_int_eq(c.calls, 6);
    ck_assert_int_eq(c.kind, FG_OUTCOME_REJECTED);
    ck_assert_int_eq(c.code, FG_EOVERLOADED);
    ck_assert_ptr_eq(c.rejected_by, r.gate_stage);
    ck_assert_uint_eq(c.latency, 0);
    r.h.rc = -9;
    r.g.reject = 0;
    ck_assert_int_eq(brig_call(&r, &ctx), -9);
    STATE_EQ(r.b, OPEN);
    EXPECT_EV(&r.log, r.b, 0, CLOSED, OPEN, CONSECUTIVE, now_of(&r), 10 * SEC);
    /* Rejected by the breaker itself: not exited, not classified. */
    ck_assert_int_eq(brig_call(&r, &ctx), FG_EBREAKER);
    ck_assert_int_eq(c.calls, 7);
    brig_free(&r);
}
END_TEST

/* Slow calls through the chain: the handler moves the fake clock, and a
 * latency of slow_call_ns or more counts as slow. The trip is reported at
 * the exit's time, now_ns + latency. */
START_TEST(test_stage_slow) {
    const uint64_t slow = 100 * MS, open = 10 * SEC;
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.slow_call_ns = slow;
    o.slow_ratio = 0.5;
    o.min_requests = 4;
    o.open_for_ns = open;
    brig r;
    fg_ctx ctx;
    brig_make(&r, o, NULL, NULL, 0);

    r.h.advance = slow;
    ck_assert_int_eq(brig_call(&r, &ctx), 0);
    ck_assert_int_eq(brig_call(&r, &ctx), 0);
    r.h.advance = slow - 1;
    ck_assert_int_eq(brig_call(&r, &ctx), 0);
    WINDOW_EQ(r.b, now_of(&r), 3, 0, 2);
    STATE_EQ(r.b, CLOSED);
    const uint64_t start = now_of(&r);
    ck_assert_int_eq(brig_call(&r, &ctx), 0);
    ck_assert_uint_eq(ctx.now_ns, start);
    STATE_EQ(r.b, OPEN);
    EXPECT_EV(&r.log, r.b, 0, CLOSED, OPEN, SLOW_RATIO, start + slow - 1, open);
    r.h.advance = 0;
    ck_assert_int_eq(brig_call(&r, &ctx), FG_EBREAKER);
    ck_assert_uint_eq(ctx.retry_after_ns, open);
    ck_assert_int_eq(r.h.calls, 4);

    /* A slow failure: failed and slow. */
    ck_assert_int_eq(fg_breaker_reset(r.b), 0);
    r.h.advance = slow;
    r.h.rc = -1;
    ck_assert_int_eq(brig_call(&r, &ctx), -1);
    WINDOW_EQ(r.b, now_of(&r), 1, 1, 1);
    brig_free(&r);
}
END_TEST

/* ---- 10. real threads ------------------------------------------------------------------- */

#define RACE_THREADS 4
#define RACE_ROUNDS  10000

typedef struct race {
    fg_breaker *b;
    pthread_barrier_t start, mid, done;
    uint64_t now;
    int stop;
    int report; /* after every thread has entered, the admitted ones report success */
    int rc[RACE_THREADS];
    uint64_t permit[RACE_THREADS];
    uint64_t retry[RACE_THREADS];
    int exit_rc[RACE_THREADS];
    atomic_uint_fast64_t events;
} race;

typedef struct racer {
    race *r;
    int id;
} racer;

static void race_listener(fg_breaker *b, const fg_breaker_event *e, void *arg) {
    race *r = arg;
    (void)b;
    (void)e;
    atomic_fetch_add(&r->events, 1);
}

static void *racer_main(void *arg) {
    racer *me = arg;
    race *r = me->r;
    for (;;) {
        pthread_barrier_wait(&r->start);
        if (r->stop)
            break;
        uint64_t p = 0, ra = UINT64_C(0xdeadbeef);
        int rc = fg_breaker_enter(r->b, r->now, &p, &ra);
        r->rc[me->id] = rc;
        r->permit[me->id] = p;
        r->retry[me->id] = ra;
        r->exit_rc[me->id] = -1000;
        if (r->report) {
            pthread_barrier_wait(&r->mid);
            if (rc == 0)
                r->exit_rc[me->id] = fg_breaker_exit(r->b, p, r->now, SUCCESS, 0);
        }
        pthread_barrier_wait(&r->done);
    }
    return NULL;
}

typedef struct race_cfg {
    uint32_t probes;
    int report;
} race_cfg;

static const race_cfg race_cfgs[] = {{1, 0}, {3, 0}, {3, 1}, {4, 1}, {6, 0}};
#define NRACE ((int)(sizeof(race_cfgs) / sizeof(race_cfgs[0])))

/*
 * RACE_THREADS threads released together by a barrier all enter at the
 * very nanosecond the open time ends, RACE_ROUNDS times. Each round exactly
 * min(probes, threads) are admitted, the rest rejected with no hint; the
 * main thread then takes the remaining probe slots (if any) and is refused
 * one more. Then either a probe fails (reopen), or (reporting) once every
 * thread has entered, the admitted threads report success at the same
 * time: the breaker closes exactly once (and one failure reopens it).
 */
START_TEST(test_half_open_race) {
    const race_cfg *c = &race_cfgs[_i];
    const uint32_t P = c->probes;
    const uint32_t want_threads = P < RACE_THREADS ? P : RACE_THREADS;
    race *r = calloc(1, sizeof(*r));
    racer who[RACE_THREADS];
    pthread_t th[RACE_THREADS];
    char why[256] = "";
    int bad_round = -1;

    ck_assert_ptr_nonnull(r);
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.consecutive_failures = 1;
    o.open_for_ns = SEC;
    o.half_open_probes = P;
    o.listener = race_listener;
    o.listener_arg = r;
    r->b = mk(&o);
    r->report = c->report;
    atomic_init(&r->events, 0);
    ck_assert_int_eq(pthread_barrier_init(&r->start, NULL, RACE_THREADS + 1), 0);
    ck_assert_int_eq(pthread_barrier_init(&r->mid, NULL, RACE_THREADS + 1), 0);
    ck_assert_int_eq(pthread_barrier_init(&r->done, NULL, RACE_THREADS + 1), 0);

    uint64_t t = T0;
    CALL(r->b, t, FAILURE);
    t += SEC;
    for (int i = 0; i < RACE_THREADS; i++) {
        who[i].r = r;
        who[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, racer_main, &who[i]), 0);
    }
    uint64_t hist[RACE_THREADS + 1] = {0};
    int round;
    for (round = 0; round < RACE_ROUNDS; round++) {
        r->now = t;
        pthread_barrier_wait(&r->start);
        if (r->report)
            pthread_barrier_wait(&r->mid);
        pthread_barrier_wait(&r->done);

        uint32_t admitted = 0;
        int first = -1, have_main_probe = 0;
        uint64_t main_probe = 0;
        for (int i = 0; i < RACE_THREADS; i++) {
            if (r->rc[i] == 0) {
                admitted++;
                if (first < 0)
                    first = i;
                if (r->report && r->exit_rc[i] != 0)
                    snprintf(why, sizeof(why), "probe report from thread %d: %d", i,
                             r->exit_rc[i]);
            } else if (r->rc[i] != FG_EBREAKER || r->retry[i] != 0) {
                snprintf(why, sizeof(why), "thread %d: %s, retry_after %" PRIu64, i,
                         fg_err_name(r->rc[i]), r->retry[i]);
            }
        }
        hist[admitted]++;
        if (admitted != want_threads && why[0] == '\0')
            snprintf(why, sizeof(why), "%u of %d threads admitted, want %u", admitted,
                     RACE_THREADS, want_threads);
        /* The main thread takes what is left, then is refused. */
        uint64_t p, ra;
        int rc;
        for (uint32_t k = admitted; k < P && why[0] == '\0'; k++) {
            rc = fg_breaker_enter(r->b, t, &p, &ra);
            if (rc != 0)
                snprintf(why, sizeof(why), "top-up probe %u: %s", k + 1, fg_err_name(rc));
            else if (r->report && (rc = fg_breaker_exit(r->b, p, t, SUCCESS, 0)) != 0)
                snprintf(why, sizeof(why), "top-up report: %d", rc);
            else if (first < 0)
                main_probe = p, have_main_probe = 1; /* a probe to fail below */
        }
        if (why[0] != '\0') {
            bad_round = round;
            break;
        }
        if (r->report) {
            if (fg_breaker_state(r->b) != CLOSED) {
                snprintf(why, sizeof(why), "all %u probes succeeded, state %s", P,
                         fg_breaker_state_name(fg_breaker_state(r->b)));
                bad_round = round;
                break;
            }
            rc = fg_breaker_enter(r->b, t, &p, &ra);
            if (rc == 0)
                rc = fg_breaker_exit(r->b, p, t, FAILURE, 0);
        } else {
            rc = fg_breaker_enter(r->b, t, &p, &ra);
            if (rc != FG_EBREAKER || ra != 0) {
                snprintf(why, sizeof(why), "probe %u beyond %u: %s", P + 1, P,
                         fg_err_name(rc));
                bad_round = round;
                break;
            }
            uint64_t fp = have_main_probe ? main_probe : r->permit[first];
            rc = fg_breaker_exit(r->b, fp, t, FAILURE, 0);
            for (int i = 0; i < RACE_THREADS && rc == 0; i++)
                if (r->rc[i] == 0 && i != first &&
                    fg_breaker_exit(r->b, r->permit[i], t, SUCCESS, 0) != 1)
                    rc = -1000;
        }
        if (rc != 0 || fg_breaker_state(r->b) != OPEN) {
            snprintf(why, sizeof(why), "reopening: %d, state %s", rc,
                     fg_breaker_state_name(fg_breaker_state(r->b)));
            bad_round = round;
            break;
        }
        t += SEC;
    }
    r->stop = 1;
    pthread_barrier_wait(&r->start);
    for (int i = 0; i < RACE_THREADS; i++)
        pthread_join(th[i], NULL);
    printf("breaker half-open race, %u probes%s: %d rounds of %d threads; threads admitted:",
           P, c->report ? " reporting" : "", round, RACE_THREADS);
    for (int i = 0; i <= RACE_THREADS; i++)
        printf(" %d: %" PRIu64, i, hist[i]);
    printf("\n");
    fflush(stdout);
    ck_assert_msg(bad_round < 0, "round %d: %s", bad_round, why);

    const uint64_t n = RACE_ROUNDS;
    fg_breaker_stats s = snap(r->b, t);
    ck_assert_uint_eq(s.opened, n + 1);
    ck_assert_uint_eq(s.half_opened, n);
    ck_assert_uint_eq(s.closed, c->report ? n : 0);
    ck_assert_uint_eq(s.rejected, n * (RACE_THREADS - want_threads) + (c->report ? 0 : n));
    ck_assert_uint_eq(s.discarded, c->report ? 0 : n * (want_threads - 1));
    ck_assert_uint_eq(atomic_load(&r->events), s.opened + s.half_opened + s.closed);
    pthread_barrier_destroy(&r->start);
    pthread_barrier_destroy(&r->mid);
    pthread_barrier_destroy(&r->done);
    fg_breaker_free(r->b);
    free(r);
}
END_TEST

#define CC_THREADS    2
#define CC_CALLS      200000 /* per thread, COUNT window */
#define CC_CALLS_TIME 36000  /* per thread, TIME window: all fit one bucket */

typedef struct cc_arg {
    fg_breaker *b;
    uint64_t step;
    uint64_t calls;
    uint64_t bad;
} cc_arg;

/* Per 10 calls: a failure, a slow success, a slow failure, an IGNORE and
 * six fast successes. */
static void *cc_main(void *arg) {
    cc_arg *a = arg;
    for (uint64_t n = 0; n < a->calls; n++) {
        const uint64_t t = T0 + n * a->step;
        uint64_t p;
        fg_breaker_result res = SUCCESS;
        uint64_t lat = 0;
        switch (n % 10) {
        case 0:
            res = FAILURE;
            break;
        case 1:
            lat = MS;
            break;
        case 2:
            res = FAILURE;
            lat = 2 * MS;
            break;
        case 3:
            res = IGNORE;
            break;
        default:
            break;
        }
        if (fg_breaker_enter(a->b, t, &p, NULL) != 0) {
            a->bad++;
            continue;
        }
        if (fg_breaker_exit(a->b, p, t, res, lat) != 0)
            a->bad++;
    }
    return NULL;
}

/*
 * Closed-state traffic from CC_THREADS threads: every outcome is counted
 * exactly once. COUNT: 2 x 200,000 calls in a window holding them all.
 * TIME: 2 x 36,000 calls 100 us apart (3.6 s) in a 64 s window of 1 s
 * buckets. A thread that lags behind the other reads times the window has
 * moved past, and those calls count in the latest bucket (no time elapsed),
 * so all 64,800 counted calls may land in one bucket: still below the
 * 65,535 at which a bucket halves, so the totals stay exact.
 */
START_TEST(test_closed_concurrency) {
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    if (_i == 0) {
        o.window = FG_BREAKER_WINDOW_COUNT;
        o.window_size = FG_BREAKER_MAX_WINDOW_SIZE;
    } else {
        o.window = FG_BREAKER_WINDOW_TIME;
        o.window_ns = 64 * SEC;
        o.window_buckets = 64;
    }
    o.failure_ratio = 2;
    o.slow_ratio = 2;
    o.slow_call_ns = MS;
    fg_breaker *b = mk(&o);
    cc_arg a[CC_THREADS];
    pthread_t th[CC_THREADS];

    for (int i = 0; i < CC_THREADS; i++) {
        a[i].b = b;
        a[i].step = _i == 0 ? 1 : 100 * US;
        a[i].calls = _i == 0 ? CC_CALLS : CC_CALLS_TIME;
        a[i].bad = 0;
        ck_assert_int_eq(pthread_create(&th[i], NULL, cc_main, &a[i]), 0);
    }
    for (int i = 0; i < CC_THREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < CC_THREADS; i++)
        ck_assert_uint_eq(a[i].bad, 0);
    const uint64_t calls = a[0].calls;
    const uint64_t end = T0 + (calls - 1) * a[0].step;
    fg_breaker_stats s = snap(b, end);
    ck_assert_int_eq(s.state, CLOSED);
    ck_assert_uint_eq(s.window_calls, CC_THREADS * (calls / 10) * 9);
    ck_assert_uint_eq(s.window_failures, CC_THREADS * (calls / 10) * 2);
    ck_assert_uint_eq(s.window_slow, CC_THREADS * (calls / 10) * 2);
    ck_assert_uint_eq(s.rejected + s.discarded + s.opened, 0);
    fg_breaker_free(b);
}
END_TEST

#define TRIP_THREADS 4
#define TRIP_ROUNDS  500
#define TRIP_MAX     4000000 /* a bound only: a round takes ~TRIP_MIN calls */
#define TRIP_MIN     400

typedef struct trip {
    fg_breaker *b;
    pthread_barrier_t start, done;
    uint64_t now;
    int stop;
    uint64_t counted[TRIP_THREADS], stale[TRIP_THREADS], rejected[TRIP_THREADS];
    uint64_t odd[TRIP_THREADS];
    atomic_uint_fast64_t opens, resets;
} trip;

typedef struct tripper {
    trip *r;
    int id;
} tripper;

static void trip_listener(fg_breaker *b, const fg_breaker_event *e, void *arg) {
    trip *r = arg;
    (void)b;
    if (e->to == OPEN && e->reason == FG_BREAKER_REASON_FAILURE_RATIO)
        atomic_fetch_add(&r->opens, 1);
    else if (e->reason == FG_BREAKER_REASON_RESET)
        atomic_fetch_add(&r->resets, 1);
}

static void *tripper_main(void *arg) {
    tripper *me = arg;
    trip *r = me->r;
    for (;;) {
        pthread_barrier_wait(&r->start);
        if (r->stop)
            break;
        uint64_t counted = 0, stale = 0, rejected = 0, odd = 0;
        for (int k = 0; k < TRIP_MAX; k++) {
            uint64_t p, ra = 0;
            int rc = fg_breaker_enter(r->b, r->now, &p, &ra);
            if (rc == FG_EBREAKER) {
                rejected++;
                if (ra != SEC)
                    odd++;
                break;
            }
            if (rc != 0) {
                odd++;
                break;
            }
            rc = fg_breaker_exit(r->b, p, r->now, FAILURE, 0);
            /* A thread that took the transition mutex to trip the breaker
             * may be descheduled inside it (4 threads, 2 cores): the others
             * leave the trip to it meanwhile. Let it run. */
            if ((k & 255) == 255)
                sched_yield();
            if (rc == 0)
                counted++;
            else if (rc == 1)
                stale++;
            else
                odd++;
        }
        r->counted[me->id] = counted;
        r->stale[me->id] = stale;
        r->rejected[me->id] = rejected;
        r->odd[me->id] = odd;
        pthread_barrier_wait(&r->done);
    }
    return NULL;
}

/*
 * TRIP_THREADS threads fail calls on a closed breaker (min TRIP_MIN,
 * ratio 0.5) until it rejects them: exactly one opening per round, at least
 * TRIP_MIN outcomes counted (more when the thread that took the mutex to
 * trip it is descheduled meanwhile: the others leave the trip to it), every
 * admitted call either counted or discarded, and every thread finally
 * rejected with the full open time as its hint.
 */
START_TEST(test_closed_trip_race) {
    trip *r = calloc(1, sizeof(*r));
    tripper who[TRIP_THREADS];
    pthread_t th[TRIP_THREADS];
    char why[256] = "";
    int bad_round = -1;

    ck_assert_ptr_nonnull(r);
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    o.min_requests = TRIP_MIN;
    o.window_size = TRIP_MIN;
    o.open_for_ns = SEC;
    o.listener = trip_listener;
    o.listener_arg = r;
    r->b = mk(&o);
    atomic_init(&r->opens, 0);
    atomic_init(&r->resets, 0);
    ck_assert_int_eq(pthread_barrier_init(&r->start, NULL, TRIP_THREADS + 1), 0);
    ck_assert_int_eq(pthread_barrier_init(&r->done, NULL, TRIP_THREADS + 1), 0);
    for (int i = 0; i < TRIP_THREADS; i++) {
        who[i].r = r;
        who[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, tripper_main, &who[i]), 0);
    }
    uint64_t total_counted = 0, total_stale = 0, max_counted = 0;
    int round;
    for (round = 0; round < TRIP_ROUNDS; round++) {
        fg_breaker_stats before = snap(r->b, 0);
        r->now = T0 + (uint64_t)round * 10 * SEC;
        pthread_barrier_wait(&r->start);
        pthread_barrier_wait(&r->done);
        uint64_t counted = 0, stale = 0, rejected = 0, odd = 0;
        for (int i = 0; i < TRIP_THREADS; i++) {
            counted += r->counted[i];
            stale += r->stale[i];
            rejected += r->rejected[i];
            odd += r->odd[i];
        }
        fg_breaker_stats s = snap(r->b, r->now);
        if (odd != 0 || rejected != TRIP_THREADS || counted < TRIP_MIN || s.state != OPEN ||
            s.opened != before.opened + 1 || s.discarded != before.discarded + stale ||
            s.rejected != before.rejected + rejected ||
            atomic_load(&r->opens) != (uint64_t)round + 1) {
            snprintf(why, sizeof(why),
                     "odd %" PRIu64 ", rejected %" PRIu64 ", counted %" PRIu64
                     ", state %s, opened +%" PRIu64 ", discarded +%" PRIu64 " (stale %" PRIu64
                     "), listener opens %" PRIu64,
                     odd, rejected, counted, fg_breaker_state_name(s.state),
                     s.opened - before.opened, s.discarded - before.discarded, stale,
                     (uint64_t)atomic_load(&r->opens));
            bad_round = round;
            break;
        }
        total_counted += counted;
        total_stale += stale;
        if (counted > max_counted)
            max_counted = counted;
        if (fg_breaker_reset(r->b) != 0) {
            snprintf(why, sizeof(why), "reset failed");
            bad_round = round;
            break;
        }
    }
    r->stop = 1;
    pthread_barrier_wait(&r->start);
    for (int i = 0; i < TRIP_THREADS; i++)
        pthread_join(th[i], NULL);
    printf("breaker trip race: %d rounds of %d threads: outcomes counted %" PRIu64
           " (at most %" PRIu64 " in a round), discarded %" PRIu64 "\n",
           round, TRIP_THREADS, total_counted, max_counted, total_stale);
    fflush(stdout);
    ck_assert_msg(bad_round < 0, "round %d: %s", bad_round, why);
    ck_assert_uint_eq(atomic_load(&r->resets), TRIP_ROUNDS);
    pthread_barrier_destroy(&r->start);
    pthread_barrier_destroy(&r->done);
    fg_breaker_free(r->b);
    free(r);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------- */

Suite *fg_suite_breaker(void) {
    Suite *s = suite_create("breaker");
    TCase *tc;

    tc = tcase_create("transitions");
    tcase_add_loop_test(tc, test_min_requests, 0, NWCFG);
    tcase_add_loop_test(tc, test_ratio_boundary, 0, NWCFG);
    tcase_add_loop_test(tc, test_open_for_exact, 0, NWCFG);
    tcase_add_loop_test(tc, test_half_open_probes, 0, NWCFG);
    tcase_add_loop_test(tc, test_probe_failure_reopens, 0, NWCFG);
    tcase_add_loop_test(tc, test_slow_trip, 0, NWCFG);
    tcase_add_loop_test(tc, test_slow_failure_counts_both, 0, NWCFG);
    tcase_add_loop_test(tc, test_consecutive, 0, NWCFG);
    tcase_add_loop_test(tc, test_ratio_above_one, 0, NWCFG);
    suite_add_tcase(s, tc);

    tc = tcase_create("windows");
    tcase_add_test(tc, test_count_window_forgets);
    tcase_add_loop_test(tc, test_time_window_expiry, 0, 2);
    tcase_add_test(tc, test_time_window_idle);
    tcase_add_test(tc, test_time_window_long_idle);
    tcase_add_test(tc, test_time_bucket_cap);
    tcase_add_test(tc, test_time_window_lagging_reading);
    tcase_add_test(tc, test_time_window_uneven_buckets);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("stale");
    tcase_add_loop_test(tc, test_stale_closed_permit, 0, NWCFG);
    tcase_add_loop_test(tc, test_stale_probe_permit, 0, NWCFG);
    suite_add_tcase(s, tc);

    tc = tcase_create("generation_wrap");
    tcase_add_test(tc, test_generation_wrap);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("half_open_timeout");
    tcase_add_test(tc, test_probe_timeout);
    tcase_add_test(tc, test_probe_timeout_partial);
    tcase_add_test(tc, test_probe_timeout_default);
    tcase_add_test(tc, test_ignore_frees_probe);
    tcase_add_test(tc, test_late_probe_report);
    tcase_add_test(tc, test_slow_probe_success);
    suite_add_tcase(s, tc);

    tc = tcase_create("backoff");
    tcase_add_loop_test(tc, test_backoff, 0, NBACKOFF);
    suite_add_tcase(s, tc);

    tc = tcase_create("modes");
    tcase_add_test(tc, test_forced_open);
    tcase_add_test(tc, test_forced_closed);
    tcase_add_test(tc, test_disabled_shadow);
    tcase_add_test(tc, test_reset);
    tcase_add_test(tc, test_carry_count_window);
    tcase_add_test(tc, test_carry_shape_and_half_open);
    tcase_add_test(tc, test_carry_mode_and_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("listener");
    tcase_add_test(tc, test_listener_sequence);
    tcase_add_test(tc, test_listener_reentrant);
    tcase_set_timeout(tc, 10);
    suite_add_tcase(s, tc);

    tc = tcase_create("stats");
    tcase_add_loop_test(tc, test_snapshot_counters, 0, NWCFG);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("options");
    tcase_add_test(tc, test_new_errors);
    tcase_add_test(tc, test_backoff_negative_range);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_defaults_time_window);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);

    tc = tcase_create("stage");
    tcase_add_test(tc, test_stage_args);
    tcase_add_test(tc, test_stage_call);
    tcase_add_test(tc, test_stage_split);
    tcase_add_test(tc, test_stage_later_rejection);
    tcase_add_test(tc, test_stage_canceled_ignored);
    tcase_add_test(tc, test_stage_classifier);
    tcase_add_test(tc, test_stage_slow);
    suite_add_tcase(s, tc);

    tc = tcase_create("race");
    tcase_add_loop_test(tc, test_half_open_race, 0, NRACE);
    tcase_add_loop_test(tc, test_closed_concurrency, 0, 2);
    tcase_add_test(tc, test_closed_trip_race);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    return s;
}
