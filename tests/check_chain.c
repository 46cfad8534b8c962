/*
 * tests/check_chain.c - chains: order, outcomes, rejection, fallback, the
 * split API, retries, slots, building rules and concurrency.
 *
 * Most tests run recording stages: each stage's state has an id and a
 * pointer to the test's fixture, whose event log ("E0" = stage 0 entered,
 * "X0" = stage 0 exited, "H" = handler, "F" = fallback) lets a test assert
 * the exact order of every hook, and whose per-event records keep the
 * outcome, slot and clock each hook saw. Time is a fake clock, never a sleep.
 * The concurrency tests run millions of requests through one chain from two
 * threads and check every counter exactly.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "suites.h"

#define T0      UINT64_C(1000000) /* the fake clock's start */
#define LOG_MAX 1024
#define MAXST   (FG_CHAIN_MAX_STAGES + 1)

typedef struct fixture fixture;

/* A recording stage's state. */
typedef struct rec {
    int id;
    fixture *fx;
    int reject;             /* enter returns this when nonzero */
    uint64_t retry_after;   /* written to ctx->retry_after_ns when rejecting */
    uint64_t advance_enter; /* enter moves the fake clock by this */
    uint64_t delay;         /* enter raises ctx->delay_ns to this */
    int retry_times;        /* exit returns FG_STAGE_RETRY this many times */
    int retry_always;       /* exit always returns FG_STAGE_RETRY */
    int exit_ret;           /* otherwise exit returns this (normally 0) */
    int retried;
    int enters;
    int exits;
    int destroyed;
    pthread_t exit_thread; /* the thread the last exit ran on */
} rec;

struct fixture {
    fg_fake_clock *fc;
    fg_chain *chain;
    rec st[MAXST];
    fg_stage *stage[MAXST];
    int nstages;

    /* The event log. */
    int n;
    int overflow;
    char ev[LOG_MAX][16];
    fg_outcome out[LOG_MAX]; /* X: the outcome exit saw */
    uint64_t slot[LOG_MAX];  /* E: *slot on entry; X: the slot exit got */
    uint64_t now[LOG_MAX];   /* ctx->now_ns the hook saw */
    char buf[LOG_MAX * 5];

    /* The handler. */
    int h_calls;
    int h_ret;         /* what it returns ... */
    const int *h_rets; /* ... unless this gives a return per call */
    int h_nrets;
    uint64_t h_advance; /* it moves the fake clock by this */
    uint32_t h_retry_seen[LOG_MAX];
    uint64_t h_now_at[LOG_MAX]; /* ctx->now_ns at each call */
    int h_status_seen;
    uint64_t h_now_seen;
    uint64_t h_clock_seen; /* the fake clock when the handler started */
    uint64_t h_set_clock;  /* when nonzero, the handler sets the fake clock to it */
    const fg_stage *h_rejected_by_seen;

    /* The fallback. */
    int fb_calls;
    int fb_code;
    int fb_ret;
    void *fb_arg;
    const fg_stage *fb_rejected_by;
    uint64_t fb_retry_after;
    int fb_log_len; /* events logged before the fallback ran */
};

static void log_ev(fixture *fx, const char *tag, const fg_outcome *out, uint64_t slot,
                   uint64_t now) {
    if (fx->n >= LOG_MAX) {
        fx->overflow = 1;
        return;
    }
    snprintf(fx->ev[fx->n], sizeof(fx->ev[0]), "%s", tag);
    if (out != NULL) {
        fx->out[fx->n] = *out;
    }
    fx->slot[fx->n] = slot;
    fx->now[fx->n] = now;
    fx->n++;
}

/* The log as one string: "E0 E1 H X1 X0". */
static const char *log_str(fixture *fx) {
    size_t used = 0;

    ck_assert_int_eq(fx->overflow, 0);
    fx->buf[0] = '\0';
    for (int i = 0; i < fx->n; i++) {
        used += (size_t)snprintf(fx->buf + used, sizeof(fx->buf) - used, "%s%s", i ? " " : "",
                                 fx->ev[i]);
    }
    return fx->buf;
}

/* Find the i-th (0-based) occurrence of an event, or fail. */
static int log_find(const fixture *fx, const char *tag, int nth) {
    for (int i = 0; i < fx->n; i++) {
        if (strcmp(fx->ev[i], tag) == 0 && nth-- == 0) {
            return i;
        }
    }
    ck_abort_msg("event %s not in the log", tag);
    return -1;
}

/* Append to an expected-log string. */
static void sb_add(char *buf, size_t size, const char *fmt, ...) {
    size_t used = strlen(buf);
    va_list ap;

    if (used > 0 && used + 1 < size) {
        buf[used++] = ' ';
        buf[used] = '\0';
    }
    va_start(ap, fmt);
    vsnprintf(buf + used, size - used, fmt, ap);
    va_end(ap);
}

static void clear_log(fixture *fx) {
    fx->n = 0;
    fx->overflow = 0;
}

/* ---- the recording stage, handler and fallback ---------------------------------------- */

static int rec_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    rec *r = state;
    char tag[16];

    snprintf(tag, sizeof(tag), "E%d", r->id);
    log_ev(r->fx, tag, NULL, *slot, ctx->now_ns);
    r->enters++;
    if (r->advance_enter != 0) {
        fg_fake_clock_advance(r->fx->fc, r->advance_enter);
    }
    if (r->delay > ctx->delay_ns) {
        ctx->delay_ns = r->delay;
    }
    if (r->reject != 0) {
        if (r->retry_after != 0) {
            ctx->retry_after_ns = r->retry_after;
        }
        return r->reject;
    }
    *slot = (uint64_t)(r->id + 1) * 1000 + (uint64_t)r->enters;
    return 0;
}

static int rec_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    rec *r = state;
    char tag[16];

    snprintf(tag, sizeof(tag), "X%d", r->id);
    log_ev(r->fx, tag, outcome, slot, ctx->now_ns);
    r->exits++;
    r->exit_thread = pthread_self();
    if (r->retry_always) {
        return FG_STAGE_RETRY;
    }
    if (r->retried < r->retry_times) {
        r->retried++;
        return FG_STAGE_RETRY;
    }
    return r->exit_ret;
}

static void rec_destroy(void *state) {
    rec *r = state;

    r->destroyed++;
}

static const fg_stage_ops rec_ops = {
    .kind = "rec",
    .enter = rec_enter,
    .exit = rec_exit,
    .destroy = rec_destroy,
};

static int rec_handler(fg_ctx *ctx, void *arg) {
    fixture *fx = arg;
    int call = fx->h_calls++;

    log_ev(fx, "H", NULL, 0, ctx->now_ns);
    if (call < LOG_MAX) {
        fx->h_retry_seen[call] = ctx->retry_count;
        fx->h_now_at[call] = ctx->now_ns;
    }
    fx->h_status_seen = ctx->status;
    fx->h_now_seen = ctx->now_ns;
    fx->h_rejected_by_seen = ctx->rejected_by;
    fx->h_clock_seen = fg_fake_clock_now(fx->fc);
    if (fx->h_set_clock != 0) {
        fg_fake_clock_set(fx->fc, fx->h_set_clock);
    }
    if (fx->h_advance != 0) {
        fg_fake_clock_advance(fx->fc, fx->h_advance);
    }
    if (fx->h_rets != NULL && call < fx->h_nrets) {
        return fx->h_rets[call];
    }
    return fx->h_ret;
}

static int rec_fallback(fg_ctx *ctx, int code, void *arg) {
    fixture *fx = arg;

    fx->fb_log_len = fx->n;
    log_ev(fx, "F", NULL, 0, ctx->now_ns);
    fx->fb_calls++;
    fx->fb_code = code;
    fx->fb_arg = arg;
    fx->fb_rejected_by = ctx->rejected_by;
    fx->fb_retry_after = ctx->retry_after_ns;
    return fx->fb_ret;
}

/* ---- the fixture --------------------------------------------------------------------------
 */

static int fx_stage_new(fixture *fx, int i, fg_stage **out) {
    char name[16];

    fx->st[i].id = i;
    fx->st[i].fx = fx;
    snprintf(name, sizeof(name), "s%d", i);
    return fg_stage_new(&rec_ops, &fx->st[i], name, out);
}

/* Append recording stage number fx->nstages to the chain. */
static fg_stage *fx_add(fixture *fx) {
    int i = fx->nstages;

    ck_assert_int_lt(i, MAXST);
    ck_assert_int_eq(fx_stage_new(fx, i, &fx->stage[i]), 0);
    ck_assert_int_eq(fg_chain_use(fx->chain, fx->stage[i]), 0);
    fx->nstages++;
    return fx->stage[i];
}

static fixture *fx_new(int nstages, int with_fallback) {
    fixture *fx = calloc(1, sizeof(*fx));
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;

    ck_assert_ptr_nonnull(fx);
    ck_assert_int_eq(fg_fake_clock_new(T0, &fx->fc), 0);
    opts.name = "test";
    opts.clock = fg_fake_clock_as_clock(fx->fc);
    if (with_fallback) {
        opts.fallback = rec_fallback;
        opts.fallback_arg = fx;
    }
    ck_assert_int_eq(fg_chain_new(&opts, &fx->chain), 0);
    for (int i = 0; i < nstages; i++) {
        fx_add(fx);
    }
    return fx;
}

/* Free the chain (every stage must be destroyed exactly once) and the rest. */
static void fx_free(fixture *fx) {
    fg_chain_free(fx->chain);
    for (int i = 0; i < fx->nstages; i++) {
        ck_assert_msg(fx->st[i].destroyed == 1, "stage %d destroyed %d times", i,
                      fx->st[i].destroyed);
    }
    fg_fake_clock_free(fx->fc);
    free(fx);
}

static void assert_outcome(const fixture *fx, int ev, fg_outcome_kind kind, int code,
                           const fg_stage *rejected_by) {
    ck_assert_msg(fx->out[ev].kind == kind, "%s: outcome kind %d, expected %d", fx->ev[ev],
                  (int)fx->out[ev].kind, (int)kind);
    ck_assert_msg(fx->out[ev].code == code, "%s: outcome code %d (%s), expected %d (%s)",
                  fx->ev[ev], fx->out[ev].code, fg_err_name(fx->out[ev].code), code,
                  fg_err_name(code));
    ck_assert_ptr_eq(fx->out[ev].rejected_by, rejected_by);
}

/* Every X event in the log saw this outcome. */
static void assert_all_exits(const fixture *fx, fg_outcome_kind kind, int code,
                             const fg_stage *rejected_by) {
    for (int i = 0; i < fx->n; i++) {
        if (fx->ev[i][0] == 'X') {
            assert_outcome(fx, i, kind, code, rejected_by);
        }
    }
}

static void init_ctx(fg_ctx *ctx) { ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/test"), 0); }

/* ---- order
 * ---------------------------------------------------------------------------------- */

START_TEST(test_order) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 E2 H X2 X1 X0");
    ck_assert_int_eq(fx->h_calls, 1);
    ck_assert_int_eq(ctx.status, 0);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_uint_eq(ctx.retry_count, 0);
    assert_all_exits(fx, FG_OUTCOME_OK, 0, NULL);
    /* While the handler ran the request was admitted: status 0, nobody rejected. */
    ck_assert_int_eq(fx->h_status_seen, 0);
    ck_assert_ptr_null(fx->h_rejected_by_seen);
    fx_free(fx);
}
END_TEST

START_TEST(test_empty_chain) {
    fixture *fx = fx_new(0, 0);
    fg_ctx ctx;

    ck_assert_uint_eq(fg_chain_length(fx->chain), 0);
    ck_assert_ptr_null(fg_chain_stage(fx->chain, 0));
    init_ctx(&ctx);
    fx->h_ret = FG_ETIMEDOUT;
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_ETIMEDOUT);
    ck_assert_str_eq(log_str(fx), "H");
    ck_assert_int_eq(ctx.status, FG_ETIMEDOUT);
    ck_assert_uint_eq(fx->h_now_seen, T0);

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_uint_eq(ctx.now_ns, T0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), FG_ESTATE);
    fx_free(fx);
}
END_TEST

/* ---- outcomes: what the handler (or the split caller) returned
 * ------------------------------ */

typedef struct result_row {
    int ret;              /* the handler's return / fg_chain_exit's status */
    fg_outcome_kind kind; /* the outcome the exits see */
    int code;             /* its code, fg_chain_call's return and ctx->status */
} result_row;

static const result_row results[] = {
    {0, FG_OUTCOME_OK, 0},
    {FG_ECANCELED, FG_OUTCOME_FAILED, FG_ECANCELED},
    {FG_EHANDLER, FG_OUTCOME_FAILED, FG_EHANDLER},
    {FG_ELIMITED, FG_OUTCOME_FAILED, FG_ELIMITED},
    {FG_EINVAL, FG_OUTCOME_FAILED, FG_EINVAL},
    {-4242, FG_OUTCOME_FAILED, -4242},
    {INT_MIN, FG_OUTCOME_FAILED, INT_MIN},
    {1, FG_OUTCOME_FAILED, FG_EHANDLER},
    {7, FG_OUTCOME_FAILED, FG_EHANDLER},
    {INT_MAX, FG_OUTCOME_FAILED, FG_EHANDLER},
};

#define NRESULTS ((int)(sizeof(results) / sizeof(results[0])))

/* The chain has a fallback: it must not run for success or handler failure. */
START_TEST(test_handler_result) {
    const result_row *row = &results[_i];
    fixture *fx = fx_new(2, 1);
    fg_ctx ctx;

    fx->fb_ret = 999;
    fx->h_ret = row->ret;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), row->code);
    ck_assert_str_eq(log_str(fx), "E0 E1 H X1 X0");
    assert_all_exits(fx, row->kind, row->code, NULL);
    ck_assert_int_eq(ctx.status, row->code);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_int_eq(fx->fb_calls, 0);
    fx_free(fx);
}
END_TEST

/* With fallback_failures the fallback also takes a handler's failure (its
 * code), never a success; fallback_arg_free runs once, with the chain. */
static int fbf_calls, fbf_code, fbf_freed;
static int fbf_fallback(fg_ctx *ctx, int code, void *arg) {
    (void)ctx;
    (void)arg;
    fbf_calls++;
    fbf_code = code;
    return 0;
}
static void fbf_free(void *arg) { fbf_freed += arg == (void *)&fbf_calls; }
static int fbf_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    return *(int *)arg;
}

START_TEST(test_fallback_failures) {
    fg_chain_options o = FG_CHAIN_OPTIONS_INIT;
    o.fallback = fbf_fallback;
    o.fallback_arg = &fbf_calls;
    o.fallback_failures = 1;
    o.fallback_arg_free = fbf_free;
    fg_chain *chain = NULL;
    ck_assert_int_eq(fg_chain_new(&o, &chain), 0);
    fbf_calls = fbf_freed = 0;
    int ret = 0;
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, fbf_handler, &ret), 0);
    ck_assert_int_eq(fbf_calls, 0);
    ret = FG_ETIMEDOUT;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, fbf_handler, &ret), 0); /* the fallback's */
    ck_assert_int_eq(fbf_calls, 1);
    ck_assert_int_eq(fbf_code, FG_ETIMEDOUT);
    ck_assert_int_eq(ctx.status, FG_ETIMEDOUT);
    ck_assert_int_eq(fbf_freed, 0);
    fg_chain_free(chain);
    ck_assert_int_eq(fbf_freed, 1);
}
END_TEST

START_TEST(test_split_result) {
    const result_row *row = &results[_i];
    fixture *fx = fx_new(2, 1);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1");
    ck_assert_int_eq(ctx.status, 0);
    fg_fake_clock_advance(fx->fc, 77);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, row->ret), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    assert_all_exits(fx, row->kind, row->code, NULL);
    ck_assert_uint_eq(fx->out[2].latency_ns, 77);
    ck_assert_uint_eq(fx->out[3].latency_ns, 77);
    ck_assert_int_eq(ctx.status, row->code);
    ck_assert_ptr_null(ctx.rejected_by);
    ck_assert_int_eq(fx->fb_calls, 0);
    ck_assert_int_eq(fx->h_calls, 0);
    fx_free(fx);
}
END_TEST

/* ---- time
 * ------------------------------------------------------------------------------------ */

START_TEST(test_latency_and_now) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    fx->h_advance = 250;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 E2 H X2 X1 X0");
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_eq(fx->now[i], T0);
    }
    ck_assert_uint_eq(fx->h_now_seen, T0);
    for (int i = 4; i < 7; i++) {
        ck_assert_uint_eq(fx->out[i].latency_ns, 250);
    }
    ck_assert_uint_eq(fg_fake_clock_now(fx->fc), T0 + 250);

    /* The next request reads the clock afresh. */
    clear_log(fx);
    fg_fake_clock_advance(fx->fc, 1000);
    fx->h_advance = 3 * FG_NS_PER_S;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_uint_eq(fx->now[0], T0 + 1250);
    ck_assert_uint_eq(fx->h_now_seen, T0 + 1250);
    ck_assert_uint_eq(fx->out[log_find(fx, "X0", 0)].latency_ns, 3 * FG_NS_PER_S);
    fx_free(fx);
}
END_TEST

/* The clock is read once per request: a stage that moves it does not change
 * what later stages see as now_ns, but the latency counts the whole time. */
START_TEST(test_clock_read_once) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    fx->st[0].advance_enter = 10;
    fx->st[1].advance_enter = 20;
    fx->h_advance = 300;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 E2 H X2 X1 X0");
    ck_assert_uint_eq(fx->now[0], T0);
    ck_assert_uint_eq(fx->now[1], T0);
    ck_assert_uint_eq(fx->now[2], T0);
    ck_assert_uint_eq(fx->h_now_seen, T0);
    for (int i = 4; i < 7; i++) {
        ck_assert_uint_eq(fx->out[i].latency_ns, 330);
    }
    fx_free(fx);
}
END_TEST

/* A clock that goes back counts as no time elapsed. */
START_TEST(test_clock_backwards) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    fx->h_set_clock = T0 - 1000;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 H X1 X0");
    ck_assert_uint_eq(fx->out[3].latency_ns, 0);
    ck_assert_uint_eq(fx->out[4].latency_ns, 0);

    clear_log(fx);
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_uint_eq(ctx.now_ns, T0 - 1000);
    fg_fake_clock_set(fx->fc, 5);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_uint_eq(fx->out[2].latency_ns, 0);
    ck_assert_uint_eq(fx->out[3].latency_ns, 0);
    fx_free(fx);
}
END_TEST

/* fg_chain_call sleeps ctx->delay_ns (the largest any stage asked for) on the
 * chain's clock before the handler; the fake clock's sleep advances it. */
START_TEST(test_delay_sync) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    fx->st[0].delay = 300;
    fx->st[1].delay = 500;
    fx->st[2].delay = 100;
    fx->h_advance = 20;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 E2 H X2 X1 X0");
    ck_assert_uint_eq(ctx.delay_ns, 500);
    ck_assert_uint_eq(fx->h_now_seen, T0);
    ck_assert_uint_eq(fx->h_clock_seen, T0 + 500);
    ck_assert_uint_eq(fg_fake_clock_now(fx->fc), T0 + 520);
    for (int i = 4; i < 7; i++) {
        ck_assert_uint_eq(fx->out[i].latency_ns, 520);
    }

    /* No stage asks: no wait. */
    clear_log(fx);
    for (int i = 0; i < 3; i++) {
        fx->st[i].delay = 0;
    }
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_uint_eq(ctx.delay_ns, 0);
    ck_assert_uint_eq(fx->h_clock_seen, T0 + 520);
    fx_free(fx);
}
END_TEST

/* After fg_chain_enter the caller schedules the delay itself: no sleep. */
START_TEST(test_delay_split) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    fx->st[1].delay = 700;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_uint_eq(ctx.delay_ns, 700);
    ck_assert_uint_eq(fg_fake_clock_now(fx->fc), T0);
    fg_fake_clock_advance(fx->fc, 700 + 30);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_uint_eq(fx->out[2].latency_ns, 730);
    fx_free(fx);
}
END_TEST

static uint64_t read_count_now(void *arg) { return fg_clock_monotonic_now(arg); }

/* Without a clock in the options the chain reads the monotonic clock. */
START_TEST(test_default_clock_is_monotonic) {
    fixture *fx = fx_new(0, 0);
    fg_chain *chain = NULL;
    fg_stage *stage = NULL;
    fg_ctx ctx;
    uint64_t before, after;

    ck_assert_int_eq(fg_chain_new(NULL, &chain), 0);
    ck_assert_int_eq(fx_stage_new(fx, 0, &stage), 0);
    ck_assert_int_eq(fg_chain_use(chain, stage), 0);
    init_ctx(&ctx);
    before = fg_clock_monotonic_now(NULL);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, rec_handler, fx), 0);
    after = fg_clock_monotonic_now(NULL);
    ck_assert_str_eq(log_str(fx), "E0 H X0");
    ck_assert_uint_ge(fx->now[0], before);
    ck_assert_uint_le(fx->now[0], after);
    ck_assert_uint_le(fx->out[2].latency_ns, after - before);
    fg_chain_free(chain);
    ck_assert_int_eq(fx->st[0].destroyed, 1);

    /* A custom clock with its own function is read through it. */
    {
        fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
        opts.clock.now = read_count_now;
        ck_assert_int_eq(fg_chain_new(&opts, &chain), 0);
        init_ctx(&ctx);
        before = fg_clock_monotonic_now(NULL);
        ck_assert_int_eq(fg_chain_enter(chain, &ctx), 0);
        after = fg_clock_monotonic_now(NULL);
        ck_assert_uint_ge(ctx.now_ns, before);
        ck_assert_uint_le(ctx.now_ns, after);
        ck_assert_int_eq(fg_chain_exit(chain, &ctx, 0), 0);
        fg_chain_free(chain);
    }
    fx_free(fx);
}
END_TEST

/* ---- rejection at every position
 * -------------------------------------------------------------- */

#define NREJ 4

static void expect_rejection_log(char *buf, size_t size, int k, int with_fallback) {
    buf[0] = '\0';
    for (int i = 0; i <= k; i++) {
        sb_add(buf, size, "E%d", i);
    }
    for (int i = k - 1; i >= 0; i--) {
        sb_add(buf, size, "X%d", i);
    }
    if (with_fallback) {
        sb_add(buf, size, "F");
    }
}

static void assert_rejected_at(fixture *fx, const fg_ctx *ctx, int k, int with_fallback) {
    char expect[256];

    expect_rejection_log(expect, sizeof(expect), k, with_fallback);
    ck_assert_str_eq(log_str(fx), expect);
    ck_assert_int_eq(fx->h_calls, 0);
    assert_all_exits(fx, FG_OUTCOME_REJECTED, FG_ELIMITED, fx->stage[k]);
    for (int i = 0; i < NREJ; i++) {
        ck_assert_int_eq(fx->st[i].enters, i <= k ? 1 : 0);
        ck_assert_int_eq(fx->st[i].exits, i < k ? 1 : 0);
    }
    ck_assert_int_eq(ctx->status, FG_ELIMITED);
    ck_assert_ptr_eq(ctx->rejected_by, fx->stage[k]);
    ck_assert_uint_eq(ctx->retry_after_ns, 5000 + (uint64_t)k);
}

static fixture *reject_fixture(int k, int with_fallback) {
    fixture *fx = fx_new(NREJ, with_fallback);

    fx->st[k].reject = FG_ELIMITED;
    fx->st[k].retry_after = 5000 + (uint64_t)k;
    return fx;
}

START_TEST(test_reject_at) {
    int k = _i;
    fixture *fx = reject_fixture(k, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_ELIMITED);
    assert_rejected_at(fx, &ctx, k, 0);
    fx_free(fx);
}
END_TEST

START_TEST(test_reject_at_split) {
    int k = _i;
    fixture *fx = reject_fixture(k, 1);
    fg_ctx ctx;
    char expect[256];

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), FG_ELIMITED);
    /* The fallback is fg_chain_call's: the split caller answers itself. */
    assert_rejected_at(fx, &ctx, k, 0);
    ck_assert_int_eq(fx->fb_calls, 0);
    /* The request is finished: no exit. */
    expect_rejection_log(expect, sizeof(expect), k, 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), FG_ESTATE);
    ck_assert_str_eq(log_str(fx), expect);
    ck_assert_int_eq(ctx.status, FG_ELIMITED);
    fx_free(fx);
}
END_TEST

START_TEST(test_reject_at_fallback) {
    int k = _i;
    fixture *fx = reject_fixture(k, 1);
    fg_ctx ctx;

    fx->fb_ret = 4321;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 4321);
    assert_rejected_at(fx, &ctx, k, 1);
    ck_assert_int_eq(fx->fb_calls, 1);
    ck_assert_int_eq(fx->fb_code, FG_ELIMITED);
    ck_assert_ptr_eq(fx->fb_arg, fx);
    /* It ran last, after every entered stage exited, and saw the decision. */
    ck_assert_int_eq(fx->fb_log_len, 2 * k + 1);
    ck_assert_ptr_eq(fx->fb_rejected_by, fx->stage[k]);
    ck_assert_uint_eq(fx->fb_retry_after, 5000 + (uint64_t)k);
    fx_free(fx);
}
END_TEST

/* Exits after a rejection see the time from enter to the rejection. */
START_TEST(test_reject_latency) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    fx->st[0].advance_enter = 40;
    fx->st[1].advance_enter = 2;
    fx->st[2].reject = FG_EOVERLOADED;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_EOVERLOADED);
    ck_assert_str_eq(log_str(fx), "E0 E1 E2 X1 X0");
    ck_assert_uint_eq(fx->out[3].latency_ns, 42);
    ck_assert_uint_eq(fx->out[4].latency_ns, 42);
    /* No hint given: none reported. */
    ck_assert_uint_eq(ctx.retry_after_ns, 0);
    fx_free(fx);
}
END_TEST

/* An enter hook's positive return is a rejection with FG_EREJECTED. */
START_TEST(test_reject_positive) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    fx->st[1].reject = 5;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_EREJECTED);
    ck_assert_str_eq(log_str(fx), "E0 E1 X0");
    assert_all_exits(fx, FG_OUTCOME_REJECTED, FG_EREJECTED, fx->stage[1]);
    ck_assert_int_eq(ctx.status, FG_EREJECTED);
    ck_assert_ptr_eq(ctx.rejected_by, fx->stage[1]);

    clear_log(fx);
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), FG_EREJECTED);
    ck_assert_str_eq(log_str(fx), "E0 E1 X0");
    assert_all_exits(fx, FG_OUTCOME_REJECTED, FG_EREJECTED, fx->stage[1]);
    fx_free(fx);
}
END_TEST

/* The fallback's return value, whatever it is, becomes fg_chain_call's. */
START_TEST(test_fallback_return_values) {
    static const int rets[] = {0, FG_EREJECTED, 401, -7};
    fixture *fx = reject_fixture(1, 1);
    fg_ctx ctx;

    for (size_t i = 0; i < sizeof(rets) / sizeof(rets[0]); i++) {
        fx->fb_ret = rets[i];
        init_ctx(&ctx);
        ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), rets[i]);
        ck_assert_int_eq(fx->fb_calls, (int)i + 1);
        ck_assert_int_eq(fx->fb_code, FG_ELIMITED);
        /* ctx->status keeps the rejection, not the fallback's answer. */
        ck_assert_int_eq(ctx.status, FG_ELIMITED);
    }
    ck_assert_int_eq(fx->h_calls, 0);
    fx_free(fx);
}
END_TEST

/* ---- the split API
 * ------------------------------------------------------------------------------ */

START_TEST(test_split_exit_twice) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, FG_ETIMEDOUT), 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), FG_ESTATE);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    ck_assert_int_eq(ctx.status, FG_ETIMEDOUT);
    assert_all_exits(fx, FG_OUTCOME_FAILED, FG_ETIMEDOUT, NULL);
    fx_free(fx);
}
END_TEST

START_TEST(test_split_exit_never_entered) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), FG_ESTATE);
    ck_assert_str_eq(log_str(fx), "");
    /* The failed exit did not spoil the ctx. */
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    fx_free(fx);
}
END_TEST

START_TEST(test_split_exit_other_chain) {
    fixture *fx = fx_new(2, 0);
    fixture *other = fx_new(1, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(other->chain, &ctx, 0), FG_EINVAL);
    ck_assert_str_eq(log_str(fx), "E0 E1");
    ck_assert_str_eq(log_str(other), "");
    /* Still waiting for its own chain's exit. */
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    fx_free(other);
    fx_free(fx);
}
END_TEST

START_TEST(test_split_enter_twice) {
    fixture *fx = fx_new(2, 0);
    fixture *other = fx_new(1, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), FG_ESTATE);
    ck_assert_int_eq(fg_chain_enter(other->chain, &ctx), FG_ESTATE);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_ESTATE);
    ck_assert_int_eq(fg_chain_call(other->chain, &ctx, rec_handler, other), FG_ESTATE);
    ck_assert_str_eq(log_str(fx), "E0 E1");
    ck_assert_str_eq(log_str(other), "");
    ck_assert_int_eq(fx->h_calls + other->h_calls, 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    assert_all_exits(fx, FG_OUTCOME_OK, 0, NULL);
    fx_free(other);
    fx_free(fx);
}
END_TEST

/* The ctx's slots and state survive a second ctx in flight on the same chain. */
START_TEST(test_split_interleaved) {
    fixture *fx = fx_new(2, 0);
    fg_ctx a, b;

    init_ctx(&a);
    init_ctx(&b);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &a), 0);
    fg_fake_clock_advance(fx->fc, 5);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &b), 0);
    ck_assert_uint_eq(a.now_ns, T0);
    ck_assert_uint_eq(b.now_ns, T0 + 5);
    fg_fake_clock_advance(fx->fc, 10);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &a, FG_ECANCELED), 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &b, 0), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 E0 E1 X1 X0 X1 X0");
    /* a's exits got a's slots (first enters) and latency; b's got b's. */
    assert_outcome(fx, 4, FG_OUTCOME_FAILED, FG_ECANCELED, NULL);
    ck_assert_uint_eq(fx->slot[4], 2001);
    ck_assert_uint_eq(fx->slot[5], 1001);
    ck_assert_uint_eq(fx->out[4].latency_ns, 15);
    assert_outcome(fx, 6, FG_OUTCOME_OK, 0, NULL);
    ck_assert_uint_eq(fx->slot[6], 2002);
    ck_assert_uint_eq(fx->slot[7], 1002);
    ck_assert_uint_eq(fx->out[6].latency_ns, 10);
    fx_free(fx);
}
END_TEST

typedef struct exit_job {
    const fg_chain *chain;
    fg_ctx *ctx;
    int status;
    int rc;
    pthread_t self;
} exit_job;

static void *exit_thread(void *arg) {
    exit_job *job = arg;

    job->self = pthread_self();
    job->rc = fg_chain_exit(job->chain, job->ctx, job->status);
    return NULL;
}

START_TEST(test_split_exit_on_other_thread) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;
    exit_job job;
    pthread_t th;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    fg_fake_clock_advance(fx->fc, 500);
    job.chain = fx->chain;
    job.ctx = &ctx;
    job.status = FG_ECANCELED;
    job.rc = 12345;
    ck_assert_int_eq(pthread_create(&th, NULL, exit_thread, &job), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_int_eq(job.rc, 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    assert_all_exits(fx, FG_OUTCOME_FAILED, FG_ECANCELED, NULL);
    ck_assert_uint_eq(fx->out[2].latency_ns, 500);
    ck_assert_uint_eq(fx->slot[2], 2001);
    ck_assert_uint_eq(fx->slot[3], 1001);
    ck_assert(pthread_equal(fx->st[0].exit_thread, job.self));
    ck_assert(pthread_equal(fx->st[1].exit_thread, job.self));
    ck_assert(!pthread_equal(job.self, pthread_self()));
    ck_assert_int_eq(ctx.status, FG_ECANCELED);
    fx_free(fx);
}
END_TEST

/* ---- retries
 * ------------------------------------------------------------------------------------- */

/* The stage at position p of three asks for two retries. */
START_TEST(test_retry_at) {
    static const int rets[] = {FG_ETIMEDOUT, FG_ETIMEDOUT, 0};
    int p = _i;
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;
    char expect[256] = "";

    fx->st[p].retry_times = 2;
    fx->h_rets = rets;
    fx->h_nrets = 3;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);

    for (int i = 0; i < 3; i++) {
        sb_add(expect, sizeof(expect), "E%d", i);
    }
    sb_add(expect, sizeof(expect), "H");
    for (int i = 2; i >= p; i--) {
        sb_add(expect, sizeof(expect), "X%d", i);
    }
    for (int r = 0; r < 2; r++) {
        for (int i = p + 1; i < 3; i++) {
            sb_add(expect, sizeof(expect), "E%d", i);
        }
        sb_add(expect, sizeof(expect), "H");
        for (int i = 2; i >= p; i--) {
            sb_add(expect, sizeof(expect), "X%d", i);
        }
    }
    for (int i = p - 1; i >= 0; i--) {
        sb_add(expect, sizeof(expect), "X%d", i);
    }
    ck_assert_str_eq(log_str(fx), expect);

    ck_assert_int_eq(fx->h_calls, 3);
    ck_assert_uint_eq(ctx.retry_count, 2);
    /* retry_count is incremented before the attempt runs. */
    ck_assert_uint_eq(fx->h_retry_seen[0], 0);
    ck_assert_uint_eq(fx->h_retry_seen[1], 1);
    ck_assert_uint_eq(fx->h_retry_seen[2], 2);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(fx->st[i].enters, i <= p ? 1 : 3);
        ck_assert_int_eq(fx->st[i].exits, i < p ? 1 : 3);
    }
    /* The retrying stage saw each attempt's own outcome. */
    {
        char tag[16];
        snprintf(tag, sizeof(tag), "X%d", p);
        assert_outcome(fx, log_find(fx, tag, 0), FG_OUTCOME_FAILED, FG_ETIMEDOUT, NULL);
        assert_outcome(fx, log_find(fx, tag, 1), FG_OUTCOME_FAILED, FG_ETIMEDOUT, NULL);
        assert_outcome(fx, log_find(fx, tag, 2), FG_OUTCOME_OK, 0, NULL);
    }
    /* Stages before it exit once, with the final outcome. */
    for (int i = 0; i < p; i++) {
        char tag[16];
        snprintf(tag, sizeof(tag), "X%d", i);
        assert_outcome(fx, log_find(fx, tag, 0), FG_OUTCOME_OK, 0, NULL);
    }
    ck_assert_int_eq(ctx.status, 0);
    fx_free(fx);
}
END_TEST

/* A re-entered stage starts its slot at 0 again and gets its own value back. */
START_TEST(test_retry_slots) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    fx->st[0].retry_times = 1;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 H X1 X0 E1 H X1 X0");
    ck_assert_uint_eq(fx->slot[0], 0);
    ck_assert_uint_eq(fx->slot[1], 0);
    ck_assert_uint_eq(fx->slot[3], 2001);
    ck_assert_uint_eq(fx->slot[4], 1001);
    ck_assert_uint_eq(fx->slot[5], 0);
    ck_assert_uint_eq(fx->slot[7], 2002);
    ck_assert_uint_eq(fx->slot[8], 1001);
    fx_free(fx);
}
END_TEST

/* Latency with retries: a re-entered stage sees its own attempt, a stage at
 * or before the retrying one the whole request. */
START_TEST(test_retry_latency) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    fx->st[0].retry_times = 1;
    fx->h_advance = 100;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 H X1 X0 E1 H X1 X0");
    ck_assert_uint_eq(fx->out[3].latency_ns, 100);
    ck_assert_uint_eq(fx->out[4].latency_ns, 100);
    ck_assert_uint_eq(fx->out[7].latency_ns, 100);
    ck_assert_uint_eq(fx->out[8].latency_ns, 200);
    /* now_ns is re-read for each attempt, and restored to the first reading. */
    ck_assert_uint_eq(fx->now[0], T0);
    ck_assert_uint_eq(fx->h_now_at[0], T0);
    ck_assert_uint_eq(fx->now[5], T0 + 100);
    ck_assert_uint_eq(fx->h_now_at[1], T0 + 100);
    ck_assert_uint_eq(ctx.now_ns, T0);
    fx_free(fx);
}
END_TEST

/* An exit hook's return other than FG_STAGE_RETRY changes nothing. */
START_TEST(test_exit_return_ignored) {
    static const int rets[] = {FG_EINVAL, FG_ELIMITED, 2, -1000, INT_MAX};
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    for (size_t i = 0; i < sizeof(rets) / sizeof(rets[0]); i++) {
        clear_log(fx);
        fx->st[0].exit_ret = rets[i];
        fx->st[1].exit_ret = rets[i];
        fx->st[2].exit_ret = rets[i];
        init_ctx(&ctx);
        ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
        ck_assert_str_eq(log_str(fx), "E0 E1 E2 H X2 X1 X0");
        ck_assert_int_eq(ctx.status, 0);
        ck_assert_uint_eq(ctx.retry_count, 0);

        clear_log(fx);
        init_ctx(&ctx);
        ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
        ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
        ck_assert_str_eq(log_str(fx), "E0 E1 E2 X2 X1 X0");
    }
    ck_assert_int_eq(fx->h_calls, (int)(sizeof(rets) / sizeof(rets[0])));
    fx_free(fx);
}
END_TEST

START_TEST(test_retry_always_bounded) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    fx->st[1].retry_always = 1;
    fx->h_ret = FG_ETIMEDOUT;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_ETIMEDOUT);
    ck_assert_int_eq(fx->h_calls, FG_CHAIN_MAX_RETRIES + 1);
    ck_assert_uint_eq(ctx.retry_count, FG_CHAIN_MAX_RETRIES);
    ck_assert_int_eq(fx->st[0].enters, 1);
    ck_assert_int_eq(fx->st[0].exits, 1);
    ck_assert_int_eq(fx->st[1].enters, 1);
    ck_assert_int_eq(fx->st[1].exits, FG_CHAIN_MAX_RETRIES + 1);
    ck_assert_int_eq(fx->st[2].enters, FG_CHAIN_MAX_RETRIES + 1);
    ck_assert_int_eq(fx->st[2].exits, FG_CHAIN_MAX_RETRIES + 1);
    ck_assert_int_eq(ctx.status, FG_ETIMEDOUT);
    /* The last events: the final attempt, then the outer stage. */
    ck_assert_str_eq(fx->ev[fx->n - 1], "X0");
    ck_assert_str_eq(fx->ev[fx->n - 2], "X1");
    ck_assert_str_eq(fx->ev[fx->n - 3], "X2");
    ck_assert_str_eq(fx->ev[fx->n - 4], "H");
    ck_assert_int_eq(fx->n, 6 + 4 * FG_CHAIN_MAX_RETRIES + 1);
    assert_outcome(fx, fx->n - 1, FG_OUTCOME_FAILED, FG_ETIMEDOUT, NULL);
    fx_free(fx);
}
END_TEST

START_TEST(test_retry_ignored_in_split) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    fx->st[1].retry_always = 1;
    fx->st[2].retry_times = 5;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, FG_ETIMEDOUT), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 E2 X2 X1 X0");
    ck_assert_uint_eq(ctx.retry_count, 0);
    ck_assert_int_eq(ctx.status, FG_ETIMEDOUT);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), FG_ESTATE);
    fx_free(fx);
}
END_TEST

/* ---- slots
 * ------------------------------------------------------------------------------------------
 */

START_TEST(test_slots) {
    fixture *fx = fx_new(3, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 E2 H X2 X1 X0");
    /* *slot starts at 0; exit gets what enter wrote. */
    ck_assert_uint_eq(fx->slot[0], 0);
    ck_assert_uint_eq(fx->slot[1], 0);
    ck_assert_uint_eq(fx->slot[2], 0);
    ck_assert_uint_eq(fx->slot[4], 3001);
    ck_assert_uint_eq(fx->slot[5], 2001);
    ck_assert_uint_eq(fx->slot[6], 1001);

    /* The same ctx again: slots start at 0, not at the last request's values. */
    clear_log(fx);
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 E2 X2 X1 X0");
    ck_assert_uint_eq(fx->slot[0], 0);
    ck_assert_uint_eq(fx->slot[1], 0);
    ck_assert_uint_eq(fx->slot[2], 0);
    ck_assert_uint_eq(fx->slot[3], 3002);
    ck_assert_uint_eq(fx->slot[4], 2002);
    ck_assert_uint_eq(fx->slot[5], 1002);
    fx_free(fx);
}
END_TEST

/* ---- building chains
 * ------------------------------------------------------------------------------ */

START_TEST(test_use_after_served) {
    fixture *fx = fx_new(2, 0);
    fg_stage *late = NULL;
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_int_eq(fx_stage_new(fx, 2, &late), 0);
    ck_assert_int_eq(fg_chain_use(fx->chain, late), FG_ESTATE);
    /* The reference was taken and, the chain not keeping it, released. */
    ck_assert_int_eq(fx->st[2].destroyed, 1);
    ck_assert_uint_eq(fg_chain_length(fx->chain), 2);
    ck_assert_ptr_null(fg_chain_stage(fx->chain, 2));

    clear_log(fx);
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 H X1 X0");
    fx_free(fx);
}
END_TEST

/* Serving through the split API freezes the chain too. */
START_TEST(test_use_after_split) {
    fixture *fx = fx_new(1, 0);
    fg_stage *late = NULL;
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_int_eq(fx_stage_new(fx, 1, &late), 0);
    ck_assert_int_eq(fg_chain_use(fx->chain, late), FG_ESTATE);
    ck_assert_int_eq(fx->st[1].destroyed, 1);
    ck_assert_uint_eq(fg_chain_length(fx->chain), 1);
    fx_free(fx);
}
END_TEST

START_TEST(test_max_stages) {
    fixture *fx = fx_new(FG_CHAIN_MAX_STAGES, 0);
    fg_stage *extra = NULL;
    fg_ctx ctx;
    char expect[LOG_MAX] = "";

    ck_assert_uint_eq(fg_chain_length(fx->chain), FG_CHAIN_MAX_STAGES);
    ck_assert_int_eq(fx_stage_new(fx, FG_CHAIN_MAX_STAGES, &extra), 0);
    ck_assert_int_eq(fg_chain_use(fx->chain, extra), FG_ETOOMANY);
    ck_assert_int_eq(fx->st[FG_CHAIN_MAX_STAGES].destroyed, 1);
    ck_assert_uint_eq(fg_chain_length(fx->chain), FG_CHAIN_MAX_STAGES);
    ck_assert_ptr_null(fg_chain_stage(fx->chain, FG_CHAIN_MAX_STAGES));

    /* A request passes through all of them, each exit with its own slot. */
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    for (int i = 0; i < FG_CHAIN_MAX_STAGES; i++) {
        sb_add(expect, sizeof(expect), "E%d", i);
    }
    sb_add(expect, sizeof(expect), "H");
    for (int i = FG_CHAIN_MAX_STAGES - 1; i >= 0; i--) {
        sb_add(expect, sizeof(expect), "X%d", i);
    }
    ck_assert_str_eq(log_str(fx), expect);
    for (int i = 0; i < FG_CHAIN_MAX_STAGES; i++) {
        ck_assert_uint_eq(fx->slot[2 * FG_CHAIN_MAX_STAGES - i], (uint64_t)(i + 1) * 1000 + 1);
    }

    /* And the rejection by the last one unwinds all the others. */
    clear_log(fx);
    fx->st[FG_CHAIN_MAX_STAGES - 1].reject = FG_EINJECTED;
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_EINJECTED);
    ck_assert_int_eq(fx->n, 2 * FG_CHAIN_MAX_STAGES - 1);
    ck_assert_str_eq(fx->ev[fx->n - 1], "X0");
    ck_assert_ptr_eq(ctx.rejected_by, fx->stage[FG_CHAIN_MAX_STAGES - 1]);
    fx_free(fx);
}
END_TEST

START_TEST(test_length_and_stage) {
    fixture *fx = fx_new(3, 0);

    ck_assert_uint_eq(fg_chain_length(fx->chain), 3);
    for (size_t i = 0; i < 3; i++) {
        const fg_stage *s = fg_chain_stage(fx->chain, i);
        char name[16];

        ck_assert_ptr_eq(s, fx->stage[i]);
        snprintf(name, sizeof(name), "s%d", (int)i);
        ck_assert_str_eq(fg_stage_name(s), name);
        ck_assert_str_eq(fg_stage_kind(s), "rec");
        ck_assert_ptr_eq(fg_stage_state(s), &fx->st[i]);
    }
    ck_assert_ptr_null(fg_chain_stage(fx->chain, 3));
    ck_assert_ptr_null(fg_chain_stage(fx->chain, 1000));
    ck_assert_ptr_null(fg_chain_stage(fx->chain, SIZE_MAX));
    fx_free(fx);
}
END_TEST

START_TEST(test_chain_name) {
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
    fg_chain *chain = NULL;
    char name[] = "orders";
    char longname[FG_CHAIN_NAME_MAX + 2];

    ck_assert_int_eq(fg_chain_new(NULL, &chain), 0);
    ck_assert_str_eq(fg_chain_name(chain), "default");
    fg_chain_free(chain);

    chain = NULL;
    ck_assert_int_eq(fg_chain_new(&opts, &chain), 0);
    ck_assert_str_eq(fg_chain_name(chain), "default");
    fg_chain_free(chain);

    chain = NULL;
    opts.name = name;
    ck_assert_int_eq(fg_chain_new(&opts, &chain), 0);
    ck_assert_ptr_ne(fg_chain_name(chain), name);
    name[0] = 'X';
    name[2] = '\0';
    ck_assert_str_eq(fg_chain_name(chain), "orders");
    fg_chain_free(chain);

    memset(longname, 'c', sizeof(longname));
    longname[FG_CHAIN_NAME_MAX] = '\0';
    opts.name = longname;
    chain = NULL;
    ck_assert_int_eq(fg_chain_new(&opts, &chain), 0);
    ck_assert_str_eq(fg_chain_name(chain), longname);
    fg_chain_free(chain);

    longname[FG_CHAIN_NAME_MAX] = 'c';
    longname[FG_CHAIN_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(fg_chain_new(&opts, &chain), FG_ETOOLONG);
}
END_TEST

/* fg_chain_now reads the chain's clock: the fake one here, the monotonic one
 * for a NULL chain. */
START_TEST(test_chain_now) {
    fixture *fx = fx_new(1, 0);
    uint64_t before, t, after;

    ck_assert_uint_eq(fg_chain_now(fx->chain), T0);
    fg_fake_clock_advance(fx->fc, 42);
    ck_assert_uint_eq(fg_chain_now(fx->chain), T0 + 42);
    before = fg_clock_monotonic_now(NULL);
    t = fg_chain_now(NULL);
    after = fg_clock_monotonic_now(NULL);
    ck_assert_uint_ge(t, before);
    ck_assert_uint_le(t, after);
    ck_assert_str_eq(log_str(fx), "");
    fx_free(fx);
}
END_TEST

/* A deadline set from fg_chain_now is on the same clock as ctx->now_ns. */
static int deadline_handler(fg_ctx *ctx, void *arg) {
    (void)arg;
    return ctx->now_ns < ctx->deadline_ns ? 0 : FG_ETIMEDOUT;
}

START_TEST(test_chain_now_deadline) {
    fixture *fx = fx_new(1, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ctx.deadline_ns = fg_chain_now(fx->chain) + 10;
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, deadline_handler, NULL), 0);
    ck_assert_uint_eq(ctx.deadline_ns, T0 + 10);
    init_ctx(&ctx);
    ctx.deadline_ns = fg_chain_now(fx->chain);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, deadline_handler, NULL), FG_ETIMEDOUT);
    fx_free(fx);
}
END_TEST

START_TEST(test_null_chain_accessors) {
    ck_assert_uint_eq(fg_chain_length(NULL), 0);
    ck_assert_ptr_null(fg_chain_stage(NULL, 0));
    ck_assert_ptr_nonnull(fg_chain_name(NULL));
    ck_assert_str_eq(fg_chain_name(NULL), "");
}
END_TEST

START_TEST(test_null_arguments) {
    fixture *fx = fx_new(2, 0);
    fg_stage *stage = NULL;
    fg_ctx ctx;

    ck_assert_int_eq(fg_chain_new(NULL, NULL), FG_EINVAL);

    /* fg_chain_use takes the reference even when the chain is NULL. */
    ck_assert_int_eq(fx_stage_new(fx, 2, &stage), 0);
    ck_assert_int_eq(fg_chain_use(NULL, stage), FG_EINVAL);
    ck_assert_int_eq(fx->st[2].destroyed, 1);
    ck_assert_int_eq(fg_chain_use(fx->chain, NULL), FG_EINVAL);
    ck_assert_uint_eq(fg_chain_length(fx->chain), 2);

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(NULL, &ctx, rec_handler, fx), FG_EINVAL);
    ck_assert_int_eq(fg_chain_call(fx->chain, NULL, rec_handler, fx), FG_EINVAL);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, NULL, fx), FG_EINVAL);
    ck_assert_int_eq(fg_chain_enter(NULL, &ctx), FG_EINVAL);
    ck_assert_int_eq(fg_chain_enter(fx->chain, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_chain_exit(NULL, &ctx, 0), FG_EINVAL);
    ck_assert_int_eq(fg_chain_exit(fx->chain, NULL, 0), FG_EINVAL);
    ck_assert_str_eq(log_str(fx), "");
    ck_assert_int_eq(fx->h_calls, 0);
    fg_chain_free(NULL);

    /* None of that touched the ctx or the chain: both still work. */
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 H X1 X0");

    /* An admitted ctx given a NULL chain is still waiting for its exit. */
    clear_log(fx);
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(NULL, &ctx, 0), FG_EINVAL);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    fx_free(fx);
}
END_TEST

static int null_arg_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    return arg == NULL ? 0 : FG_EINVAL;
}

/* The handler's arg is passed through as given, NULL included. */
START_TEST(test_handler_arg) {
    fixture *fx = fx_new(1, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, null_arg_handler, NULL), 0);
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, null_arg_handler, fx), FG_EINVAL);
    fx_free(fx);
}
END_TEST

START_TEST(test_call_uninitialised_ctx) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    memset(&ctx, 0, sizeof(ctx));
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_ESTATE);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), FG_ESTATE);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), FG_ESTATE);
    ck_assert_str_eq(log_str(fx), "");
    ck_assert_int_eq(fx->h_calls, 0);
    fx_free(fx);
}
END_TEST

START_TEST(test_call_in_flight_ctx) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_enter(fx->chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), FG_ESTATE);
    ck_assert_str_eq(log_str(fx), "E0 E1");
    ck_assert_int_eq(fx->h_calls, 0);
    ck_assert_int_eq(fg_chain_exit(fx->chain, &ctx, 0), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    fx_free(fx);
}
END_TEST

/* A ctx inside fg_chain_call (seen from the handler) is in flight too. */
static int reentrant_handler(fg_ctx *ctx, void *arg) {
    fixture *fx = arg;
    int rc;

    rc = fg_chain_call(fx->chain, ctx, rec_handler, fx);
    if (rc != FG_ESTATE) {
        return -1000 + rc;
    }
    rc = fg_chain_enter(fx->chain, ctx);
    if (rc != FG_ESTATE) {
        return -2000 + rc;
    }
    return 0;
}

START_TEST(test_call_reentrant_ctx) {
    fixture *fx = fx_new(2, 0);
    fg_ctx ctx;

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, reentrant_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E1 X1 X0");
    ck_assert_int_eq(fx->h_calls, 0);
    fx_free(fx);
}
END_TEST

START_TEST(test_stage_in_two_chains) {
    fixture *fx = fx_new(0, 0);
    fg_chain *c1 = NULL, *c2 = NULL;
    fg_stage *shared = NULL;
    fg_ctx ctx;

    ck_assert_int_eq(fg_chain_new(NULL, &c1), 0);
    ck_assert_int_eq(fg_chain_new(NULL, &c2), 0);
    ck_assert_int_eq(fx_stage_new(fx, 0, &shared), 0);
    ck_assert_int_eq(fg_chain_use(c1, fg_stage_ref(shared)), 0);
    ck_assert_int_eq(fg_chain_use(c2, shared), 0);
    ck_assert_ptr_eq(fg_chain_stage(c1, 0), shared);
    ck_assert_ptr_eq(fg_chain_stage(c2, 0), shared);

    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(c1, &ctx, rec_handler, fx), 0);
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(c2, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 H X0 E0 H X0");
    ck_assert_int_eq(fx->st[0].enters, 2);

    fg_chain_free(c1);
    ck_assert_int_eq(fx->st[0].destroyed, 0);
    /* Still usable through the other chain. */
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(c2, &ctx, rec_handler, fx), 0);
    ck_assert_int_eq(fx->st[0].enters, 3);
    fg_chain_free(c2);
    ck_assert_int_eq(fx->st[0].destroyed, 1);
    fx_free(fx);
}
END_TEST

/* A stage used twice in one chain is entered twice, as two frames. */
START_TEST(test_stage_twice_in_one_chain) {
    fixture *fx = fx_new(1, 0);
    fg_ctx ctx;

    ck_assert_int_eq(fg_chain_use(fx->chain, fg_stage_ref(fx->stage[0])), 0);
    ck_assert_uint_eq(fg_chain_length(fx->chain), 2);
    init_ctx(&ctx);
    ck_assert_int_eq(fg_chain_call(fx->chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 E0 H X0 X0");
    /* Each frame has its own slot: the inner exit gets the second enter's. */
    ck_assert_uint_eq(fx->slot[3], 1002);
    ck_assert_uint_eq(fx->slot[4], 1001);
    fx_free(fx);
}
END_TEST

/* ---- a user stage, end to end: an API key check
 * ------------------------------------------------- */

typedef struct apikey {
    const char *key;
    int destroyed;
} apikey;

static int apikey_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    const apikey *ak = state;
    fg_str v;

    (void)slot;
    if (fg_ctx_header(ctx, "x-api-key", &v) != 0) {
        return FG_EREJECTED;
    }
    if (v.len != strlen(ak->key) || memcmp(v.ptr, ak->key, v.len) != 0) {
        return FG_EREJECTED;
    }
    return 0;
}

static void apikey_destroy(void *state) {
    apikey *ak = state;

    ak->destroyed++;
}

static const fg_stage_ops apikey_ops = {
    .kind = "apikey",
    .enter = apikey_enter,
    .exit = NULL,
    .destroy = apikey_destroy,
};

static int http_fallback(fg_ctx *ctx, int code, void *arg) {
    fixture *fx = arg;

    (void)ctx;
    log_ev(fx, "F", NULL, 0, 0);
    fx->fb_code = code;
    return code == FG_EREJECTED ? 401 : 503;
}

START_TEST(test_apikey_stage) {
    fixture *fx = fx_new(0, 0);
    apikey ak = {"s3cret", 0};
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
    fg_chain *chain = NULL;
    fg_stage *rec0 = NULL, *keycheck = NULL;
    fg_ctx ctx;

    opts.name = "api";
    opts.clock = fg_fake_clock_as_clock(fx->fc);
    opts.fallback = http_fallback;
    opts.fallback_arg = fx;
    ck_assert_int_eq(fg_chain_new(&opts, &chain), 0);
    ck_assert_int_eq(fx_stage_new(fx, 0, &rec0), 0);
    ck_assert_int_eq(fg_chain_use(chain, rec0), 0);
    ck_assert_int_eq(fg_stage_new(&apikey_ops, &ak, "api-key", &keycheck), 0);
    ck_assert_int_eq(fg_chain_use(chain, keycheck), 0);

    /* The right key, any case of the header name: served. */
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "Accept", "*/*"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "X-API-Key", "s3cret"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, rec_handler, fx), 0);
    ck_assert_str_eq(log_str(fx), "E0 H X0");
    assert_outcome(fx, 2, FG_OUTCOME_OK, 0, NULL);

    /* No key: rejected by the key stage, answered by the fallback. */
    clear_log(fx);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "Accept", "*/*"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, rec_handler, fx), 401);
    ck_assert_str_eq(log_str(fx), "E0 X0 F");
    assert_outcome(fx, 1, FG_OUTCOME_REJECTED, FG_EREJECTED, keycheck);
    ck_assert_int_eq(fx->fb_code, FG_EREJECTED);
    ck_assert_int_eq(ctx.status, FG_EREJECTED);
    ck_assert_ptr_eq(ctx.rejected_by, keycheck);
    ck_assert_str_eq(fg_stage_kind(ctx.rejected_by), "apikey");

    /* A wrong key (a prefix of the right one) is rejected too. */
    clear_log(fx);
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/orders"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-api-key", "s3c"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, rec_handler, fx), 401);
    ck_assert_str_eq(log_str(fx), "E0 X0 F");

    /* The split API: the caller answers the rejection itself. */
    clear_log(fx);
    ck_assert_int_eq(fg_ctx_init(&ctx, "POST", "/orders"), 0);
    ck_assert_int_eq(fg_chain_enter(chain, &ctx), FG_EREJECTED);
    ck_assert_str_eq(log_str(fx), "E0 X0");
    ck_assert_int_eq(fx->h_calls, 1);

    fg_chain_free(chain);
    ck_assert_int_eq(ak.destroyed, 1);
    ck_assert_int_eq(fx->st[0].destroyed, 1);
    fx_free(fx);
}
END_TEST

/* ---- concurrency
 * ---------------------------------------------------------------------------------- */

#define CONC_THREADS    2
#define CONC_PER_THREAD 1000000
#define CONC_REJECTER   2 /* the stage that rejects every index divisible by 7 */
#define CONC_WINDOW     8 /* requests in flight per thread in the split test */

typedef struct cnt_state {
    uint64_t enters;
    uint64_t exits;
    uint64_t ok;
    uint64_t failed;
    uint64_t rejected;
    uint64_t bad; /* exits that saw a wrong slot or rejecting stage */
    int rejects;  /* this stage rejects index % 7 == 0 */
    int destroyed;
    const fg_stage *rejecter;
} cnt_state;

static uint64_t idx_of(const fg_ctx *ctx) { return (uint64_t)(uintptr_t)ctx->user; }

static int cnt_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    cnt_state *c = state;

    __atomic_fetch_add(&c->enters, 1, __ATOMIC_RELAXED);
    if (*slot != 0) {
        __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
    }
    if (c->rejects && idx_of(ctx) % 7 == 0) {
        return FG_ELIMITED;
    }
    *slot = idx_of(ctx) + 1;
    return 0;
}

static int cnt_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    cnt_state *c = state;

    __atomic_fetch_add(&c->exits, 1, __ATOMIC_RELAXED);
    if (slot != idx_of(ctx) + 1) {
        __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
    }
    switch (outcome->kind) {
    case FG_OUTCOME_OK:
        __atomic_fetch_add(&c->ok, 1, __ATOMIC_RELAXED);
        break;
    case FG_OUTCOME_FAILED:
        __atomic_fetch_add(&c->failed, 1, __ATOMIC_RELAXED);
        if (outcome->code != FG_ETIMEDOUT) {
            __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
        }
        break;
    case FG_OUTCOME_REJECTED:
        __atomic_fetch_add(&c->rejected, 1, __ATOMIC_RELAXED);
        if (outcome->rejected_by != c->rejecter || outcome->code != FG_ELIMITED) {
            __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
        }
        break;
    default:
        __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
    }
    return 0;
}

static void cnt_destroy(void *state) {
    cnt_state *c = state;

    c->destroyed++;
}

static const fg_stage_ops cnt_ops = {
    .kind = "counter",
    .enter = cnt_enter,
    .exit = cnt_exit,
    .destroy = cnt_destroy,
};

/* A request fails (FG_ETIMEDOUT) when its index is 3 modulo 11. */
static int expected_status(uint64_t idx) { return idx % 11 == 3 ? FG_ETIMEDOUT : 0; }

static int conc_handler(fg_ctx *ctx, void *arg) {
    __atomic_fetch_add((uint64_t *)arg, 1, __ATOMIC_RELAXED);
    return expected_status(idx_of(ctx));
}

typedef struct conc {
    fg_fake_clock *fc;
    fg_chain *chain;
    cnt_state st[4];
    uint64_t handler_calls;
} conc;

typedef struct conc_job {
    conc *c;
    int thread;
    long bad; /* results that differed from the expected ones */
} conc_job;

static conc *conc_new(void) {
    conc *c = calloc(1, sizeof(*c));
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
    fg_stage *stages[4];

    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(fg_fake_clock_new(T0, &c->fc), 0);
    opts.name = "concurrent";
    opts.clock = fg_fake_clock_as_clock(c->fc);
    ck_assert_int_eq(fg_chain_new(&opts, &c->chain), 0);
    for (int i = 0; i < 4; i++) {
        c->st[i].rejects = i == CONC_REJECTER;
        ck_assert_int_eq(fg_stage_new(&cnt_ops, &c->st[i], "counter", &stages[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        c->st[i].rejecter = stages[CONC_REJECTER];
        ck_assert_int_eq(fg_chain_use(c->chain, stages[i]), 0);
    }
    return c;
}

static void conc_run(conc *c, void *(*fn)(void *)) {
    conc_job jobs[CONC_THREADS];
    pthread_t th[CONC_THREADS];

    for (int t = 0; t < CONC_THREADS; t++) {
        jobs[t].c = c;
        jobs[t].thread = t;
        jobs[t].bad = 0;
        ck_assert_int_eq(pthread_create(&th[t], NULL, fn, &jobs[t]), 0);
    }
    for (int t = 0; t < CONC_THREADS; t++) {
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
    }
    for (int t = 0; t < CONC_THREADS; t++) {
        ck_assert_msg(jobs[t].bad == 0, "thread %d: %ld unexpected results", t, jobs[t].bad);
    }
}

/* Check every counter against the numbers the indices imply. */
static void conc_check(conc *c, int with_handler) {
    const uint64_t total = (uint64_t)CONC_THREADS * CONC_PER_THREAD;
    uint64_t rejected = 0, failed = 0, ok;

    for (uint64_t idx = 0; idx < total; idx++) {
        if (idx % 7 == 0) {
            rejected++;
        } else if (expected_status(idx) != 0) {
            failed++;
        }
    }
    ok = total - rejected - failed;

    for (int i = 0; i < 4; i++) {
        const cnt_state *s = &c->st[i];
        uint64_t entered = i <= CONC_REJECTER ? total : total - rejected;
        uint64_t exited = i < CONC_REJECTER ? total : total - rejected;

        ck_assert_msg(s->enters == entered, "stage %d: %llu enters, expected %llu", i,
                      (unsigned long long)s->enters, (unsigned long long)entered);
        ck_assert_msg(s->exits == exited, "stage %d: %llu exits, expected %llu", i,
                      (unsigned long long)s->exits, (unsigned long long)exited);
        ck_assert_uint_eq(s->ok, ok);
        ck_assert_uint_eq(s->failed, failed);
        ck_assert_uint_eq(s->rejected, i < CONC_REJECTER ? rejected : 0);
        ck_assert_uint_eq(s->bad, 0);
    }
    ck_assert_uint_eq(c->handler_calls, with_handler ? total - rejected : 0);
}

static void conc_free(conc *c) {
    fg_chain_free(c->chain);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(c->st[i].destroyed, 1);
    }
    fg_fake_clock_free(c->fc);
    free(c);
}

static void *conc_call_thread(void *arg) {
    conc_job *job = arg;
    fg_ctx ctx;

    for (uint64_t i = 0; i < CONC_PER_THREAD; i++) {
        uint64_t idx = (uint64_t)job->thread * CONC_PER_THREAD + i;
        int expect = idx % 7 == 0 ? FG_ELIMITED : expected_status(idx);
        int rc;

        if (fg_ctx_init(&ctx, "GET", "/conc") != 0) {
            job->bad++;
            continue;
        }
        ctx.user = (void *)(uintptr_t)idx;
        rc = fg_chain_call(job->c->chain, &ctx, conc_handler, &job->c->handler_calls);
        if (rc != expect || ctx.status != expect) {
            job->bad++;
        }
    }
    return NULL;
}

START_TEST(test_concurrent_call) {
    conc *c = conc_new();

    conc_run(c, conc_call_thread);
    conc_check(c, 1);
    conc_free(c);
}
END_TEST

static void *conc_split_thread(void *arg) {
    conc_job *job = arg;
    fg_ctx ctx[CONC_WINDOW];
    int pending[CONC_WINDOW] = {0};

    for (uint64_t i = 0; i < CONC_PER_THREAD; i++) {
        uint64_t idx = (uint64_t)job->thread * CONC_PER_THREAD + i;
        fg_ctx *x = &ctx[i % CONC_WINDOW];
        int *p = &pending[i % CONC_WINDOW];
        int rc;

        /* Finish the request that had this window slot first. */
        if (*p) {
            if (fg_chain_exit(job->c->chain, x, expected_status(idx_of(x))) != 0) {
                job->bad++;
            }
            *p = 0;
        }
        if (fg_ctx_init(x, "PUT", "/conc") != 0) {
            job->bad++;
            continue;
        }
        x->user = (void *)(uintptr_t)idx;
        rc = fg_chain_enter(job->c->chain, x);
        if (rc != (idx % 7 == 0 ? FG_ELIMITED : 0)) {
            job->bad++;
        }
        *p = rc == 0;
    }
    for (int w = 0; w < CONC_WINDOW; w++) {
        if (pending[w] &&
            fg_chain_exit(job->c->chain, &ctx[w], expected_status(idx_of(&ctx[w]))) != 0) {
            job->bad++;
        }
    }
    return NULL;
}

START_TEST(test_concurrent_split) {
    conc *c = conc_new();

    conc_run(c, conc_split_thread);
    conc_check(c, 0);
    conc_free(c);
}
END_TEST

Suite *fg_suite_chain(void) {
    Suite *s = suite_create("chain");
    TCase *tc;

    tc = tcase_create("order");
    tcase_add_test(tc, test_order);
    tcase_add_test(tc, test_empty_chain);
    tcase_add_loop_test(tc, test_handler_result, 0, NRESULTS);
    tcase_add_test(tc, test_latency_and_now);
    tcase_add_test(tc, test_clock_read_once);
    tcase_add_test(tc, test_default_clock_is_monotonic);
    tcase_add_test(tc, test_clock_backwards);
    tcase_add_test(tc, test_delay_sync);
    tcase_add_test(tc, test_delay_split);
    tcase_add_test(tc, test_slots);
    suite_add_tcase(s, tc);

    tc = tcase_create("reject");
    tcase_add_loop_test(tc, test_reject_at, 0, NREJ);
    tcase_add_loop_test(tc, test_reject_at_split, 0, NREJ);
    tcase_add_loop_test(tc, test_reject_at_fallback, 0, NREJ);
    tcase_add_test(tc, test_reject_latency);
    tcase_add_test(tc, test_reject_positive);
    tcase_add_test(tc, test_fallback_return_values);
    tcase_add_test(tc, test_fallback_failures);
    suite_add_tcase(s, tc);

    tc = tcase_create("split");
    tcase_add_loop_test(tc, test_split_result, 0, NRESULTS);
    tcase_add_test(tc, test_split_exit_twice);
    tcase_add_test(tc, test_split_exit_never_entered);
    tcase_add_test(tc, test_split_exit_other_chain);
    tcase_add_test(tc, test_split_enter_twice);
    tcase_add_test(tc, test_split_interleaved);
    tcase_add_test(tc, test_split_exit_on_other_thread);
    suite_add_tcase(s, tc);

    tc = tcase_create("retry");
    tcase_add_loop_test(tc, test_retry_at, 0, 3);
    tcase_add_test(tc, test_retry_slots);
    tcase_add_test(tc, test_retry_latency);
    tcase_add_test(tc, test_exit_return_ignored);
    tcase_add_test(tc, test_retry_always_bounded);
    tcase_add_test(tc, test_retry_ignored_in_split);
    suite_add_tcase(s, tc);

    tc = tcase_create("build");
    tcase_add_test(tc, test_use_after_served);
    tcase_add_test(tc, test_use_after_split);
    tcase_add_test(tc, test_max_stages);
    tcase_add_test(tc, test_length_and_stage);
    tcase_add_test(tc, test_chain_name);
    tcase_add_test(tc, test_chain_now);
    tcase_add_test(tc, test_chain_now_deadline);
    tcase_add_test(tc, test_null_chain_accessors);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_handler_arg);
    tcase_add_test(tc, test_call_uninitialised_ctx);
    tcase_add_test(tc, test_call_in_flight_ctx);
    tcase_add_test(tc, test_call_reentrant_ctx);
    tcase_add_test(tc, test_stage_in_two_chains);
    tcase_add_test(tc, test_stage_twice_in_one_chain);
    suite_add_tcase(s, tc);

    tc = tcase_create("user_stage");
    tcase_add_test(tc, test_apikey_stage);
    suite_add_tcase(s, tc);

    tc = tcase_create("concurrency");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_concurrent_call);
    tcase_add_test(tc, test_concurrent_split);
    suite_add_tcase(s, tc);

    return s;
}
