/*
 * tests/check_alloc.c - the allocator hook and every out-of-memory path.
 *
 * fg_set_alloc_funcs must reject half an allocator and change nothing; with a
 * counting allocator in force every object floodgate builds is allocated
 * through it and freed through it. The chaos test (after jansson's) fails
 * the Nth allocation for N = 1, 2, 3, ... while building a clock and a
 * three-stage chain and running requests: each failing call must report
 * FG_ENOMEM and nothing may leak. Finally, requests in steady state
 * (fg_chain_call, fg_chain_enter/exit) must allocate nothing at all.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

/* ---- the counting, failure-injecting allocator ---------------------------- */

/* A second allocator, only to tell "which one is in force" apart. */
static void *other_malloc(size_t size) { return malloc(size); }

static void other_free(void *p) { free(p); }

static void setup(void) { th_alloc_reset(); }

static void teardown(void) {
    fg_set_alloc_funcs(NULL, NULL);
    th_alloc_reset();
}

/* ---- a stage that records into its state ---------------------------------- */

typedef struct rec_state {
    int enters;
    int exits;
    int destroyed;
    int reject_every; /* reject when (uintptr_t)ctx->user % reject_every == 0; 0 = never */
} rec_state;

static int rec_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    rec_state *st = state;

    st->enters++;
    *slot = 42;
    if (st->reject_every != 0 && (uintptr_t)ctx->user % (uintptr_t)st->reject_every == 0) {
        return FG_ELIMITED;
    }
    return 0;
}

static int rec_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    rec_state *st = state;

    (void)ctx;
    (void)outcome;
    (void)slot;
    st->exits++;
    return 0;
}

static void rec_destroy(void *state) {
    rec_state *st = state;

    st->destroyed++;
}

static const fg_stage_ops rec_ops = {
    .kind = "rec",
    .enter = rec_enter,
    .exit = rec_exit,
    .destroy = rec_destroy,
};

static int count_fallback(fg_ctx *ctx, int code, void *arg) {
    (void)ctx;
    (*(int *)arg)++;
    return code;
}

/* ---- fg_set_alloc_funcs / fg_get_alloc_funcs ------------------------------- */

START_TEST(test_set_exactly_one_null) {
    fg_malloc_fn m0, m;
    fg_free_fn f0, f;
    fg_fake_clock *fc = NULL;

    fg_get_alloc_funcs(&m0, &f0);
    ck_assert(m0 != th_count_malloc && f0 != th_count_free);

    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, NULL), FG_EINVAL);
    fg_get_alloc_funcs(&m, &f);
    ck_assert(m == m0 && f == f0);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, th_count_free), FG_EINVAL);
    fg_get_alloc_funcs(&m, &f);
    ck_assert(m == m0 && f == f0);

    /* With an allocator in force, half of another one changes nothing either. */
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    fg_get_alloc_funcs(&m, &f);
    ck_assert(m == th_count_malloc && f == th_count_free);
    ck_assert_int_eq(fg_set_alloc_funcs(other_malloc, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, other_free), FG_EINVAL);
    fg_get_alloc_funcs(&m, &f);
    ck_assert(m == th_count_malloc && f == th_count_free);
    ck_assert_int_eq(fg_fake_clock_new(0, &fc), 0);
    ck_assert_int_gt(th_alloc.allocs, 0);
    fg_fake_clock_free(fc);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);

    /* Both NULL restores the default: the counting allocator is out of use. */
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
    fg_get_alloc_funcs(&m, &f);
    ck_assert(m != th_count_malloc && f != th_count_free);
    th_alloc_reset();
    ck_assert_int_eq(fg_fake_clock_new(0, &fc), 0);
    fg_fake_clock_free(fc);
    ck_assert_int_eq(th_alloc.attempts, 0);
    ck_assert_int_eq(th_alloc.frees, 0);
}
END_TEST

/* Either output of fg_get_alloc_funcs may be NULL. */
START_TEST(test_get_one_output) {
    fg_malloc_fn m = NULL;
    fg_free_fn f = NULL;

    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    fg_get_alloc_funcs(&m, NULL);
    ck_assert(m == th_count_malloc);
    fg_get_alloc_funcs(NULL, &f);
    ck_assert(f == th_count_free);
    fg_get_alloc_funcs(NULL, NULL);
    ck_assert_int_eq(th_alloc.attempts, 0);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

START_TEST(test_switch_between_allocators) {
    fg_malloc_fn m;
    fg_free_fn f;

    ck_assert_int_eq(fg_set_alloc_funcs(other_malloc, other_free), 0);
    fg_get_alloc_funcs(&m, &f);
    ck_assert(m == other_malloc && f == other_free);
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    fg_get_alloc_funcs(&m, &f);
    ck_assert(m == th_count_malloc && f == th_count_free);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
    fg_get_alloc_funcs(&m, &f);
    ck_assert(m != th_count_malloc && m != other_malloc);
    ck_assert(f != th_count_free && f != other_free);
}
END_TEST

/* ---- the counting allocator sees every object ------------------------------ */

START_TEST(test_counting_fake_clock) {
    fg_fake_clock *fc = NULL;

    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    ck_assert_int_eq(fg_fake_clock_new(7, &fc), 0);
    ck_assert_int_gt(th_alloc.allocs, 0);
    ck_assert_int_lt(th_alloc.frees, th_alloc.allocs);
    fg_fake_clock_free(fc);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

START_TEST(test_counting_chain) {
    fg_chain *chain = NULL;
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;

    opts.name = "counted";
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    ck_assert_int_eq(fg_chain_new(&opts, &chain), 0);
    ck_assert_int_gt(th_alloc.allocs, 0);
    ck_assert_int_lt(th_alloc.frees, th_alloc.allocs);
    fg_chain_free(chain);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

START_TEST(test_counting_stage) {
    rec_state st = {0, 0, 0, 0};
    fg_stage *stage = NULL;
    long after_new;

    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    ck_assert_int_eq(fg_stage_new(&rec_ops, &st, "counted", &stage), 0);
    after_new = th_alloc.allocs;
    ck_assert_int_gt(after_new, 0);
    ck_assert_ptr_eq(fg_stage_ref(stage), stage);
    fg_stage_unref(stage);
    ck_assert_int_eq(st.destroyed, 0);
    ck_assert_int_lt(th_alloc.frees, th_alloc.allocs);
    fg_stage_unref(stage);
    ck_assert_int_eq(st.destroyed, 1);
    ck_assert_int_eq(th_alloc.allocs, after_new);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

START_TEST(test_counting_chain_with_stages) {
    rec_state st[3];
    fg_chain *chain = NULL;
    fg_fake_clock *fc = NULL;
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
    fg_ctx ctx;
    int calls = 0;

    memset(st, 0, sizeof(st));
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    ck_assert_int_eq(fg_fake_clock_new(100, &fc), 0);
    opts.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_chain_new(&opts, &chain), 0);
    for (int i = 0; i < 3; i++) {
        fg_stage *stage = NULL;
        ck_assert_int_eq(fg_stage_new(&rec_ops, &st[i], "s", &stage), 0);
        ck_assert_int_eq(fg_chain_use(chain, stage), 0);
    }
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, th_count_handler, &calls), 0);
    ck_assert_int_eq(calls, 1);
    ck_assert_int_lt(th_alloc.frees, th_alloc.allocs);
    fg_chain_free(chain);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(st[i].enters, 1);
        ck_assert_int_eq(st[i].exits, 1);
        ck_assert_int_eq(st[i].destroyed, 1);
    }
    fg_fake_clock_free(fc);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

/* ---- chaos: fail the Nth allocation ---------------------------------------- */

/*
 * step_failed - judge one call of a chaos run. When the injected failure
 * happened during the call, the call must have returned FG_ENOMEM and the
 * run stops (returns 1). Otherwise the call must have succeeded (returns 0).
 */
static int step_failed(long n, const char *what, int rc) {
    if (th_alloc.injected) {
        ck_assert_msg(rc == FG_ENOMEM,
                      "N=%ld: %s returned %d (%s) after allocation %ld failed", n, what, rc,
                      fg_err_name(rc), n);
        return 1;
    }
    ck_assert_msg(rc == 0, "N=%ld: %s returned %d (%s) with no allocation failed", n, what, rc,
                  fg_err_name(rc));
    return 0;
}

/* One chaos run failing allocation n. Returns 1 when it ran to the end. */
static int chaos_run(long n) {
    static const char *const names[3] = {"first", "second", "third"};
    rec_state st[3];
    int created[3] = {0, 0, 0};
    fg_fake_clock *fc = NULL;
    fg_chain *chain = NULL;
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
    fg_ctx ctx;
    int calls = 0;
    int completed = 0;
    int rc;

    memset(st, 0, sizeof(st));
    th_alloc_reset();
    th_alloc.fail_at = n;
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);

    rc = fg_fake_clock_new(1000, &fc);
    if (step_failed(n, "fg_fake_clock_new", rc)) {
        fc = NULL;
        goto out;
    }
    opts.clock = fg_fake_clock_as_clock(fc);
    opts.name = "chaos";
    rc = fg_chain_new(&opts, &chain);
    if (step_failed(n, "fg_chain_new", rc)) {
        chain = NULL;
        goto out;
    }
    for (int i = 0; i < 3; i++) {
        fg_stage *stage = NULL;

        rc = fg_stage_new(&rec_ops, &st[i], names[i], &stage);
        if (step_failed(n, "fg_stage_new", rc)) {
            /* The caller still owns the state: it must not have been destroyed. */
            ck_assert_int_eq(st[i].destroyed, 0);
            goto out;
        }
        created[i] = 1;
        rc = fg_chain_use(chain, stage);
        if (step_failed(n, "fg_chain_use", rc)) {
            /* fg_chain_use took the reference even so, and nobody else has one. */
            ck_assert_int_eq(st[i].destroyed, 1);
            goto out;
        }
        ck_assert_int_eq(st[i].destroyed, 0);
    }

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/chaos"), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-chaos", "1"), 0);
    rc = fg_chain_call(chain, &ctx, th_count_handler, &calls);
    if (step_failed(n, "fg_chain_call", rc)) {
        goto out;
    }
    ck_assert_int_eq(calls, 1);

    ck_assert_int_eq(fg_ctx_init(&ctx, "POST", "/chaos"), 0);
    rc = fg_chain_enter(chain, &ctx);
    if (step_failed(n, "fg_chain_enter", rc)) {
        goto out;
    }
    rc = fg_chain_exit(chain, &ctx, 0);
    if (step_failed(n, "fg_chain_exit", rc)) {
        goto out;
    }
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(st[i].enters, 2);
        ck_assert_int_eq(st[i].exits, 2);
    }
    completed = 1;

out:
    fg_chain_free(chain);
    fg_fake_clock_free(fc);
    ck_assert_msg(th_alloc.allocs == th_alloc.frees, "N=%ld: %ld allocations, %ld frees", n,
                  th_alloc.allocs, th_alloc.frees);
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(st[i].destroyed == created[i], "N=%ld: stage %d destroyed %d times", n,
                      i, st[i].destroyed);
    }
    if (completed) {
        /* A complete run saw no failure: n was past the last allocation. */
        ck_assert_int_eq(th_alloc.injected, 0);
        ck_assert_int_lt(th_alloc.attempts, n);
    } else {
        ck_assert_int_eq(th_alloc.injected, 1);
    }
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
    return completed;
}

START_TEST(test_chaos_fail_nth_allocation) {
    long n;
    int completed = 0;

    for (n = 1; n <= 10000 && !completed; n++) {
        completed = chaos_run(n);
    }
    ck_assert_msg(completed, "no run completed within 10000 allocations");
    /* The clock, the chain and three stages each allocate at least once, so
     * at least five runs failed before one completed. */
    ck_assert_int_ge(n - 1, 6);
}
END_TEST

/* ---- steady-state requests allocate nothing -------------------------------- */

START_TEST(test_requests_allocate_nothing) {
    rec_state st[3];
    fg_chain *chain = NULL;
    fg_fake_clock *fc = NULL;
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
    int calls = 0;
    int fallbacks = 0;
    int rejected = 0;
    long built;

    memset(st, 0, sizeof(st));
    st[1].reject_every = 3;
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    ck_assert_int_eq(fg_fake_clock_new(1, &fc), 0);
    opts.clock = fg_fake_clock_as_clock(fc);
    opts.fallback = count_fallback;
    opts.fallback_arg = &fallbacks;
    ck_assert_int_eq(fg_chain_new(&opts, &chain), 0);
    for (int i = 0; i < 3; i++) {
        fg_stage *stage = NULL;
        ck_assert_int_eq(fg_stage_new(&rec_ops, &st[i], "s", &stage), 0);
        ck_assert_int_eq(fg_chain_use(chain, stage), 0);
    }
    built = th_alloc.attempts;

    for (uintptr_t i = 1; i <= 1000; i++) {
        fg_ctx ctx;
        int rc;

        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/zero"), 0);
        ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-request", "value"), 0);
        ctx.user = (void *)i;
        fg_fake_clock_advance(fc, 10);
        rc = fg_chain_call(chain, &ctx, th_count_handler, &calls);
        ck_assert_int_eq(rc, i % 3 == 0 ? FG_ELIMITED : 0);
    }
    ck_assert_int_eq(th_alloc.attempts, built);
    ck_assert_int_eq(calls, 1000 - 333);
    ck_assert_int_eq(fallbacks, 333);

    for (uintptr_t i = 1; i <= 1000; i++) {
        fg_ctx ctx;
        int rc;

        ck_assert_int_eq(fg_ctx_init(&ctx, "PUT", "/zero"), 0);
        ctx.user = (void *)i;
        rc = fg_chain_enter(chain, &ctx);
        if (i % 3 == 0) {
            ck_assert_int_eq(rc, FG_ELIMITED);
            rejected++;
            continue;
        }
        ck_assert_int_eq(rc, 0);
        fg_fake_clock_advance(fc, 10);
        ck_assert_int_eq(fg_chain_exit(chain, &ctx, i % 2 == 0 ? FG_ETIMEDOUT : 0), 0);
    }
    ck_assert_int_eq(th_alloc.attempts, built);
    ck_assert_int_eq(rejected, 333);
    ck_assert_int_eq(st[0].enters, 2000);
    ck_assert_int_eq(st[0].exits, 2000);
    ck_assert_int_eq(st[2].enters, 2000 - 666);

    fg_chain_free(chain);
    fg_fake_clock_free(fc);
    ck_assert_int_eq(th_alloc.attempts, built);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

Suite *fg_suite_alloc(void) {
    Suite *s = suite_create("alloc");
    TCase *tc;

    tc = tcase_create("funcs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_set_exactly_one_null);
    tcase_add_test(tc, test_switch_between_allocators);
    tcase_add_test(tc, test_get_one_output);
    suite_add_tcase(s, tc);

    tc = tcase_create("counting");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_counting_fake_clock);
    tcase_add_test(tc, test_counting_chain);
    tcase_add_test(tc, test_counting_stage);
    tcase_add_test(tc, test_counting_chain_with_stages);
    tcase_add_test(tc, test_requests_allocate_nothing);
    suite_add_tcase(s, tc);

    tc = tcase_create("chaos");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_chaos_fail_nth_allocation);
    suite_add_tcase(s, tc);

    return s;
}
