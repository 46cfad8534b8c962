/*
 * tests/check_stage.c - making stages, their accessors and their references.
 *
 * fg_stage_new must check its arguments and bound the name, and on error
 * leave the state to the caller (not destroyed). The name is copied, the
 * kind and state are returned as given. References count exactly: the last
 * unref destroys the state once, also when references are taken and
 * dropped from two threads at once. A stage with no hooks admits everything.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

typedef struct counted {
    int destroyed;
} counted;

static void counted_destroy(void *state) {
    counted *c = state;

    c->destroyed++;
}

static int admit_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)state;
    (void)ctx;
    (void)slot;
    return 0;
}

static const fg_stage_ops counted_ops = {
    .kind = "counted",
    .enter = admit_enter,
    .exit = NULL,
    .destroy = counted_destroy,
};

static const fg_stage_ops no_hooks_ops = {
    .kind = "nohooks",
    .enter = NULL,
    .exit = NULL,
    .destroy = NULL,
};

static const fg_stage_ops no_kind_ops = {
    .kind = NULL,
    .enter = admit_enter,
    .exit = NULL,
    .destroy = counted_destroy,
};

/* ---- fg_stage_new arguments ------------------------------------------------------- */

START_TEST(test_new_null_args) {
    counted c = {0};
    fg_stage *stage = NULL;

    ck_assert_int_eq(fg_stage_new(NULL, &c, "s", &stage), FG_EINVAL);
    ck_assert_int_eq(fg_stage_new(&no_kind_ops, &c, "s", &stage), FG_EINVAL);
    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, NULL, &stage), FG_EINVAL);
    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, "s", NULL), FG_EINVAL);
    /* On error the caller still owns the state: nobody destroyed it. */
    ck_assert_int_eq(c.destroyed, 0);
}
END_TEST

START_TEST(test_new_name_bound) {
    char name[FG_STAGE_NAME_MAX + 2];
    counted c = {0};
    fg_stage *stage = NULL;

    memset(name, 'n', sizeof(name));
    name[FG_STAGE_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, name, &stage), FG_ETOOLONG);
    ck_assert_int_eq(c.destroyed, 0);

    name[FG_STAGE_NAME_MAX] = '\0';
    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, name, &stage), 0);
    ck_assert_ptr_nonnull(stage);
    ck_assert_uint_eq(strlen(fg_stage_name(stage)), FG_STAGE_NAME_MAX);
    ck_assert_str_eq(fg_stage_name(stage), name);
    fg_stage_unref(stage);
    ck_assert_int_eq(c.destroyed, 1);
}
END_TEST

/* ---- accessors ---------------------------------------------------------------------- */

START_TEST(test_accessors) {
    counted c = {0};
    fg_stage *stage = NULL;

    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, "limit-global", &stage), 0);
    ck_assert_ptr_nonnull(stage);
    ck_assert_str_eq(fg_stage_name(stage), "limit-global");
    ck_assert_ptr_eq(fg_stage_kind(stage), counted_ops.kind);
    ck_assert_str_eq(fg_stage_kind(stage), "counted");
    ck_assert_ptr_eq(fg_stage_state(stage), &c);
    fg_stage_unref(stage);
    ck_assert_int_eq(c.destroyed, 1);
}
END_TEST

START_TEST(test_name_is_copied) {
    char name[] = "mutable";
    counted c = {0};
    fg_stage *stage = NULL;

    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, name, &stage), 0);
    ck_assert_ptr_ne(fg_stage_name(stage), name);
    name[0] = 'X';
    name[3] = '\0';
    ck_assert_str_eq(fg_stage_name(stage), "mutable");
    fg_stage_unref(stage);
}
END_TEST

START_TEST(test_null_state) {
    fg_stage *stage = NULL;

    ck_assert_int_eq(fg_stage_new(&no_hooks_ops, NULL, "stateless", &stage), 0);
    ck_assert_ptr_null(fg_stage_state(stage));
    ck_assert_str_eq(fg_stage_kind(stage), "nohooks");
    ck_assert_str_eq(fg_stage_name(stage), "stateless");
    fg_stage_unref(stage);
}
END_TEST

/* Two stages with the same ops are separate instances. */
START_TEST(test_two_instances) {
    counted c1 = {0}, c2 = {0};
    fg_stage *s1 = NULL, *s2 = NULL;

    ck_assert_int_eq(fg_stage_new(&counted_ops, &c1, "one", &s1), 0);
    ck_assert_int_eq(fg_stage_new(&counted_ops, &c2, "two", &s2), 0);
    ck_assert_ptr_ne(s1, s2);
    ck_assert_ptr_eq(fg_stage_state(s1), &c1);
    ck_assert_ptr_eq(fg_stage_state(s2), &c2);
    ck_assert_str_eq(fg_stage_name(s1), "one");
    ck_assert_str_eq(fg_stage_name(s2), "two");
    fg_stage_unref(s2);
    ck_assert_int_eq(c1.destroyed, 0);
    ck_assert_int_eq(c2.destroyed, 1);
    fg_stage_unref(s1);
    ck_assert_int_eq(c1.destroyed, 1);
}
END_TEST

/* ---- references ------------------------------------------------------------------------ */

START_TEST(test_ref_unref) {
    counted c = {0};
    fg_stage *stage = NULL;

    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, "shared", &stage), 0);
    ck_assert_ptr_eq(fg_stage_ref(stage), stage);
    ck_assert_ptr_eq(fg_stage_ref(stage), stage);
    fg_stage_unref(stage);
    ck_assert_int_eq(c.destroyed, 0);
    fg_stage_unref(stage);
    ck_assert_int_eq(c.destroyed, 0);
    /* Still alive and intact with one reference left. */
    ck_assert_str_eq(fg_stage_name(stage), "shared");
    ck_assert_ptr_eq(fg_stage_state(stage), &c);
    fg_stage_unref(stage);
    ck_assert_int_eq(c.destroyed, 1);
}
END_TEST

START_TEST(test_ref_unref_null) {
    counted c = {0};
    fg_stage *stage = NULL;

    th_alloc_reset();
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    ck_assert_ptr_null(fg_stage_ref(NULL));
    fg_stage_unref(NULL);
    ck_assert_int_eq(th_alloc.allocs, 0);
    ck_assert_int_eq(th_alloc.frees, 0);

    /* Freeing a real stage goes through the same allocator, and only once. */
    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, "s", &stage), 0);
    ck_assert_int_gt(th_alloc.allocs, 0);
    fg_stage_unref(NULL);
    ck_assert_int_eq(th_alloc.frees, 0);
    ck_assert_int_eq(c.destroyed, 0);
    fg_stage_unref(stage);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);
    ck_assert_int_eq(c.destroyed, 1);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

/* Failed fg_stage_new calls allocate nothing that outlives them. */
START_TEST(test_new_errors_leak_nothing) {
    char name[FG_STAGE_NAME_MAX + 2];
    counted c = {0};
    fg_stage *stage = NULL;

    memset(name, 'n', sizeof(name));
    name[FG_STAGE_NAME_MAX + 1] = '\0';
    th_alloc_reset();
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, name, &stage), FG_ETOOLONG);
    ck_assert_int_eq(fg_stage_new(NULL, &c, "s", &stage), FG_EINVAL);
    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, NULL, &stage), FG_EINVAL);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);
    ck_assert_int_eq(c.destroyed, 0);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

typedef struct ref_job {
    fg_stage *stage;
    int rounds;
} ref_job;

static void *ref_thread(void *arg) {
    ref_job *job = arg;

    for (int i = 0; i < job->rounds; i++) {
        fg_stage_ref(job->stage);
        fg_stage_ref(job->stage);
        fg_stage_unref(job->stage);
        fg_stage_unref(job->stage);
    }
    /* Drop the reference this thread was given. */
    fg_stage_unref(job->stage);
    return NULL;
}

START_TEST(test_ref_concurrent) {
    counted c = {0};
    fg_stage *stage = NULL;
    pthread_t th[2];
    ref_job job;

    ck_assert_int_eq(fg_stage_new(&counted_ops, &c, "contended", &stage), 0);
    job.stage = stage;
    job.rounds = 200000;
    for (int t = 0; t < 2; t++) {
        ck_assert_ptr_eq(fg_stage_ref(stage), stage);
        ck_assert_int_eq(pthread_create(&th[t], NULL, ref_thread, &job), 0);
    }
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
    }
    ck_assert_int_eq(c.destroyed, 0);
    ck_assert_ptr_eq(fg_stage_state(stage), &c);
    fg_stage_unref(stage);
    ck_assert_int_eq(c.destroyed, 1);
}
END_TEST

/* The last reference may be dropped on either thread: destroyed exactly once. */
START_TEST(test_last_unref_races) {
    for (int round = 0; round < 200; round++) {
        counted c = {0};
        fg_stage *stage = NULL;
        pthread_t th[2];
        ref_job job;

        ck_assert_int_eq(fg_stage_new(&counted_ops, &c, "racy", &stage), 0);
        job.stage = stage;
        job.rounds = 1000;
        /* Each thread owns one of the two references and drops it last. */
        fg_stage_ref(stage);
        ck_assert_int_eq(pthread_create(&th[0], NULL, ref_thread, &job), 0);
        ck_assert_int_eq(pthread_create(&th[1], NULL, ref_thread, &job), 0);
        ck_assert_int_eq(pthread_join(th[0], NULL), 0);
        ck_assert_int_eq(pthread_join(th[1], NULL), 0);
        ck_assert_int_eq(c.destroyed, 1);
    }
}
END_TEST

/* ---- hooks may be NULL -------------------------------------------------------------------
 */

START_TEST(test_null_hooks_admit_everything) {
    fg_chain *chain = NULL;
    fg_stage *stage = NULL;
    fg_ctx ctx;
    int calls = 0;

    ck_assert_int_eq(fg_chain_new(NULL, &chain), 0);
    ck_assert_int_eq(fg_stage_new(&no_hooks_ops, NULL, "a", &stage), 0);
    ck_assert_int_eq(fg_chain_use(chain, stage), 0);
    ck_assert_int_eq(fg_stage_new(&no_hooks_ops, NULL, "b", &stage), 0);
    ck_assert_int_eq(fg_chain_use(chain, stage), 0);

    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        ck_assert_int_eq(fg_chain_call(chain, &ctx, th_count_handler, &calls), 0);
        ck_assert_int_eq(ctx.status, 0);
        ck_assert_ptr_null(ctx.rejected_by);
    }
    ck_assert_int_eq(calls, 10);

    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_chain_enter(chain, &ctx), 0);
    ck_assert_int_eq(fg_chain_exit(chain, &ctx, FG_ETIMEDOUT), 0);
    ck_assert_int_eq(ctx.status, FG_ETIMEDOUT);
    fg_chain_free(chain);
}
END_TEST

Suite *fg_suite_stage(void) {
    Suite *s = suite_create("stage");
    TCase *tc;

    tc = tcase_create("new");
    tcase_add_checked_fixture(tc, NULL, th_alloc_teardown);
    tcase_add_test(tc, test_new_null_args);
    tcase_add_test(tc, test_new_name_bound);
    tcase_add_test(tc, test_new_errors_leak_nothing);
    tcase_add_test(tc, test_accessors);
    tcase_add_test(tc, test_name_is_copied);
    tcase_add_test(tc, test_null_state);
    tcase_add_test(tc, test_two_instances);
    suite_add_tcase(s, tc);

    tc = tcase_create("refs");
    tcase_add_checked_fixture(tc, NULL, th_alloc_teardown);
    tcase_add_test(tc, test_ref_unref);
    tcase_add_test(tc, test_ref_unref_null);
    suite_add_tcase(s, tc);

    tc = tcase_create("refs_threads");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_ref_concurrent);
    tcase_add_test(tc, test_last_unref_races);
    suite_add_tcase(s, tc);

    tc = tcase_create("hooks");
    tcase_add_test(tc, test_null_hooks_admit_everything);
    suite_add_tcase(s, tc);

    return s;
}
