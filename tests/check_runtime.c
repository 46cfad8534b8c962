/*
 * tests/check_runtime.c - the runtime (floodgate/runtime.h): the current
 * chain, swaps while requests run (sync and split), when old chains are
 * freed, and a stress of two request threads against a swapping thread
 * (run it under TSAN=1 and SANITIZE=1).
 */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "suites.h"

#define ALIVE 0x414c4956u
#define DEAD  0x44454144u

/* A stage that knows which chain it belongs to and whether it was freed. */
struct tag {
    uint32_t magic;
    int id;
    int *destroyed; /* counter, atomic */
    int *entered;   /* counter, atomic */
};

static int tag_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    struct tag *t = state;
    ck_assert_uint_eq(__atomic_load_n(&t->magic, __ATOMIC_RELAXED), ALIVE);
    *slot = (uint64_t)t->id;
    ctx->user = t;
    __atomic_fetch_add(t->entered, 1, __ATOMIC_RELAXED);
    return 0;
}

static int tag_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    struct tag *t = state;
    (void)ctx;
    (void)outcome;
    ck_assert_uint_eq(__atomic_load_n(&t->magic, __ATOMIC_RELAXED), ALIVE);
    ck_assert_int_eq((int)slot, t->id);
    return 0;
}

static void tag_destroy(void *state) {
    struct tag *t = state;
    __atomic_store_n(&t->magic, DEAD, __ATOMIC_RELAXED);
    __atomic_fetch_add(t->destroyed, 1, __ATOMIC_RELAXED);
    free(t);
}

static const fg_stage_ops tag_ops = {"tag", tag_enter, tag_exit, tag_destroy};

static fg_chain *tagged_chain(int id, int *destroyed, int *entered) {
    fg_chain *c = NULL;
    ck_assert_int_eq(fg_chain_new(NULL, &c), 0);
    struct tag *t = malloc(sizeof(*t));
    ck_assert_ptr_nonnull(t);
    *t = (struct tag){ALIVE, id, destroyed, entered};
    fg_stage *s = NULL;
    ck_assert_int_eq(fg_stage_new(&tag_ops, t, "tag", &s), 0);
    ck_assert_int_eq(fg_chain_use(c, s), 0);
    return c;
}

static int handler_ok(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

START_TEST(test_runtime_basics) {
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, handler_ok, NULL), FG_ESTATE);
    char v[16];
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), FG_ESTATE);
    ck_assert_uint_eq(fg_runtime_generation(rt), 0);

    int destroyed = 0, entered = 0;
    ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(1, &destroyed, &entered), "v1"), 0);
    ck_assert_uint_eq(fg_runtime_generation(rt), 1);
    ck_assert_int_eq(fg_runtime_version(rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, "v1");
    ck_assert_int_eq(fg_runtime_version(rt, v, 2), 0);
    ck_assert_str_eq(v, "v");
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &ctx, handler_ok, NULL), 0);
    ck_assert_int_eq(((struct tag *)ctx.user)->id, 1);
    ck_assert_int_eq(entered, 1);

    /* Errors take the chain. */
    ck_assert_int_eq(fg_runtime_swap(NULL, tagged_chain(9, &destroyed, &entered), "x"),
                     FG_EINVAL);
    ck_assert_int_eq(destroyed, 1);
    char long_version[300];
    memset(long_version, 'v', sizeof(long_version) - 1);
    long_version[sizeof(long_version) - 1] = '\0';
    ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(9, &destroyed, &entered), long_version),
                     FG_ETOOLONG);
    ck_assert_int_eq(destroyed, 2);
    ck_assert_int_eq(fg_runtime_swap(rt, NULL, "x"), FG_EINVAL);
    ck_assert_uint_eq(fg_runtime_generation(rt), 1);
    ck_assert_int_eq(fg_runtime_call(NULL, &ctx, handler_ok, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_runtime_enter(rt, NULL), FG_EINVAL);
    fg_runtime_free(rt);
    ck_assert_int_eq(destroyed, 3);
    fg_runtime_free(NULL);
}
END_TEST

/* A split request that entered chain 1 exits on chain 1 after a swap, and
 * chain 1 outlives any number of swaps until that exit. */
START_TEST(test_runtime_split_across_swap) {
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    int d1 = 0, d2 = 0, e = 0;
    ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(1, &d1, &e), "one"), 0);
    fg_ctx held;
    ck_assert_int_eq(fg_ctx_init(&held, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_enter(rt, &held), 0);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(2, &d2, &e), "two"), 0);
    ck_assert_int_eq(d1, 0); /* still held by the split request */
    ck_assert_int_ge(d2, 8); /* the intermediate chains went (grace periods allowing) */
    fg_ctx now;
    ck_assert_int_eq(fg_ctx_init(&now, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_call(rt, &now, handler_ok, NULL), 0);
    ck_assert_int_eq(((struct tag *)now.user)->id, 2);
    ck_assert_int_eq(fg_runtime_exit(rt, &held, 0), 0);
    ck_assert_int_eq(d1, 1); /* retired and now unreferenced: freed at once */
    ck_assert_int_eq(fg_runtime_exit(rt, &held, 0), FG_ESTATE);
    fg_ctx never;
    ck_assert_int_eq(fg_ctx_init(&never, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_exit(rt, &never, 0), FG_ESTATE);
    fg_runtime_free(rt);
    ck_assert_int_eq(d2, 10);
}
END_TEST

/* Two runtimes in one thread, and a runtime freed and another made (its
 * address may be reused: the thread's cached record must not be). */
START_TEST(test_runtime_many) {
    int d = 0, e = 0;
    for (int round = 0; round < 20; round++) {
        fg_runtime *a = NULL, *b = NULL;
        ck_assert_int_eq(fg_runtime_new(&a), 0);
        ck_assert_int_eq(fg_runtime_new(&b), 0);
        ck_assert_int_eq(fg_runtime_swap(a, tagged_chain(1, &d, &e), "a"), 0);
        ck_assert_int_eq(fg_runtime_swap(b, tagged_chain(2, &d, &e), "b"), 0);
        for (int i = 0; i < 3; i++) {
            fg_ctx ctx;
            ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
            ck_assert_int_eq(fg_runtime_call(i % 2 ? a : b, &ctx, handler_ok, NULL), 0);
            ck_assert_int_eq(((struct tag *)ctx.user)->id, i % 2 ? 1 : 2);
        }
        fg_runtime_free(a);
        fg_runtime_free(b);
    }
    ck_assert_int_eq(d, 40);
}
END_TEST

/* ---- stress: requests on two threads, swaps on a third ------------------------- */

struct stress {
    fg_runtime *rt;
    int stop; /* atomic */
    long requests[2];
    int failures; /* atomic */
};

static void *stress_requests(void *arg) {
    struct stress *st = ((void **)arg)[0];
    long *count = ((void **)arg)[1];
    for (long i = 0; !__atomic_load_n(&st->stop, __ATOMIC_ACQUIRE) && i < 2000000; i++) {
        fg_ctx ctx;
        fg_ctx_init(&ctx, "GET", "/");
        int rc;
        if (i % 3 == 0) {
            rc = fg_runtime_enter(st->rt, &ctx);
            if (rc == 0)
                rc = fg_runtime_exit(st->rt, &ctx, 0);
        } else {
            rc = fg_runtime_call(st->rt, &ctx, handler_ok, NULL);
        }
        if (rc != 0)
            __atomic_fetch_add(&st->failures, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(count, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

START_TEST(test_runtime_stress) {
    int destroyed = 0, entered = 0;
    struct stress st = {0};
    ck_assert_int_eq(fg_runtime_new(&st.rt), 0);
    ck_assert_int_eq(fg_runtime_swap(st.rt, tagged_chain(0, &destroyed, &entered), "0"), 0);
    pthread_t th[2];
    void *args[2][2] = {{&st, &st.requests[0]}, {&st, &st.requests[1]}};
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, stress_requests, args[i]), 0);
    const int swaps = 1000;
    for (int i = 1; i <= swaps; i++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        ck_assert_int_eq(fg_runtime_swap(st.rt, tagged_chain(i, &destroyed, &entered), v), 0);
        /* Let requests run on this chain before the next swap (bounded). */
        long before = __atomic_load_n(&st.requests[0], __ATOMIC_RELAXED) +
                      __atomic_load_n(&st.requests[1], __ATOMIC_RELAXED);
        for (int spin = 0; spin < 100000; spin++) {
            long now = __atomic_load_n(&st.requests[0], __ATOMIC_RELAXED) +
                       __atomic_load_n(&st.requests[1], __ATOMIC_RELAXED);
            if (now - before >= 50)
                break;
            sched_yield();
        }
    }
    __atomic_store_n(&st.stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    ck_assert_int_eq(st.failures, 0);
    ck_assert_int_eq(entered, (int)(st.requests[0] + st.requests[1]));
    ck_assert_uint_eq(fg_runtime_generation(st.rt), (uint64_t)swaps + 1);
    fg_runtime_free(st.rt);
    ck_assert_int_eq(destroyed, swaps + 1); /* every chain freed exactly once */
    printf("runtime stress: %ld + %ld requests across %d swaps\n", st.requests[0],
           st.requests[1], swaps);
}
END_TEST

/* Threads that come and go each register a record and give it back. */
static void *one_call(void *arg) {
    fg_ctx ctx;
    fg_ctx_init(&ctx, "GET", "/");
    *(int *)((void **)arg)[1] = fg_runtime_call(((void **)arg)[0], &ctx, handler_ok, NULL);
    return NULL;
}

START_TEST(test_runtime_threads_come_and_go) {
    int d = 0, e = 0;
    fg_runtime *rt = NULL;
    ck_assert_int_eq(fg_runtime_new(&rt), 0);
    ck_assert_int_eq(fg_runtime_swap(rt, tagged_chain(1, &d, &e), "x"), 0);
    for (int i = 0; i < 64; i++) {
        int rc = -1;
        void *arg[2] = {rt, &rc};
        pthread_t t;
        ck_assert_int_eq(pthread_create(&t, NULL, one_call, arg), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(rc, 0);
    }
    ck_assert_int_eq(e, 64);
    fg_runtime_free(rt);
    ck_assert_int_eq(d, 1);
}
END_TEST

Suite *fg_suite_runtime(void) {
    Suite *s = suite_create("runtime");
    TCase *tc = tcase_create("swap");
    tcase_add_test(tc, test_runtime_basics);
    tcase_add_test(tc, test_runtime_split_across_swap);
    tcase_add_test(tc, test_runtime_many);
    tcase_add_test(tc, test_runtime_threads_come_and_go);
    suite_add_tcase(s, tc);
    TCase *stress = tcase_create("stress");
    tcase_set_timeout(stress, 120);
    tcase_add_test(stress, test_runtime_stress);
    suite_add_tcase(s, stress);
    return s;
}
