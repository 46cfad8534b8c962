/*
 * tests/check_clock.c - the monotonic clock, fg_clock_read and the fake clock.
 *
 * The real clock must never go backwards and must advance across a sleep (this
 * is the only suite whose tests sleep, and only on the real clock). fg_clock_read must call a
 * custom clock with its own arg and fall back to the monotonic clock for NULL. The fake clock
 * must read exactly what it was set or advanced to, from any thread, and concurrent advances
 * must all take effect. fg_clock_sleep uses the clock's own sleep (the fake clock's advances
 * it) or really sleeps.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

/* ---- the monotonic clock --------------------------------------------------- */

START_TEST(test_monotonic_non_decreasing) {
    uint64_t prev = fg_clock_monotonic_now(NULL);
    uint64_t first = prev;

    ck_assert_uint_gt(prev, 0);
    for (int i = 0; i < 200000; i++) {
        uint64_t now = fg_clock_monotonic_now(NULL);
        ck_assert_msg(now >= prev, "read %d went back: %llu < %llu", i,
                      (unsigned long long)now, (unsigned long long)prev);
        prev = now;
    }
    /* 200,000 reads take far longer than one nanosecond. */
    ck_assert_uint_gt(prev, first);
}
END_TEST

START_TEST(test_monotonic_is_clock_monotonic) {
    struct timespec ts0, ts1;
    uint64_t before, t, after;

    ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts0), 0);
    t = fg_clock_monotonic_now(&ts0); /* the arg is ignored */
    ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts1), 0);
    before = (uint64_t)ts0.tv_sec * FG_NS_PER_S + (uint64_t)ts0.tv_nsec;
    after = (uint64_t)ts1.tv_sec * FG_NS_PER_S + (uint64_t)ts1.tv_nsec;
    ck_assert_uint_ge(t, before);
    ck_assert_uint_le(t, after);
}
END_TEST

START_TEST(test_monotonic_advances_across_sleep) {
    struct timespec req = {0, 1000000}; /* 1 ms */
    struct timespec rem;
    uint64_t t0, t1;

    t0 = fg_clock_monotonic_now(NULL);
    while (nanosleep(&req, &rem) != 0 && errno == EINTR) {
        req = rem;
    }
    t1 = fg_clock_monotonic_now(NULL);
    ck_assert_uint_ge(t1 - t0, FG_NS_PER_MS);
    /* Nanoseconds, not microseconds: far less than a minute went by. */
    ck_assert_uint_lt(t1 - t0, 60 * FG_NS_PER_S);
}
END_TEST

START_TEST(test_monotonic_value) {
    fg_clock c = fg_clock_monotonic();

    ck_assert(c.now == fg_clock_monotonic_now);
    ck_assert_ptr_null(c.arg);
}
END_TEST

/* ---- fg_clock_read ---------------------------------------------------------- */

START_TEST(test_read_null_is_monotonic) {
    uint64_t before = fg_clock_monotonic_now(NULL);
    uint64_t t = fg_clock_read(NULL);
    uint64_t after = fg_clock_monotonic_now(NULL);

    ck_assert_uint_ge(t, before);
    ck_assert_uint_le(t, after);
}
END_TEST

START_TEST(test_read_null_now_is_monotonic) {
    int marker = 0;
    fg_clock c = {NULL, &marker, NULL};
    uint64_t before = fg_clock_monotonic_now(NULL);
    uint64_t t = fg_clock_read(&c);
    uint64_t after = fg_clock_monotonic_now(NULL);

    ck_assert_uint_ge(t, before);
    ck_assert_uint_le(t, after);
    ck_assert_int_eq(marker, 0);
}
END_TEST

START_TEST(test_read_monotonic_value) {
    fg_clock c = fg_clock_monotonic();
    uint64_t before = fg_clock_monotonic_now(NULL);
    uint64_t t = fg_clock_read(&c);
    uint64_t after = fg_clock_monotonic_now(NULL);

    ck_assert_uint_ge(t, before);
    ck_assert_uint_le(t, after);
}
END_TEST

typedef struct custom_clock {
    int calls;
    void *seen_arg;
    uint64_t value;
} custom_clock;

static uint64_t custom_now(void *arg) {
    custom_clock *cc = arg;

    cc->calls++;
    cc->seen_arg = arg;
    return cc->value;
}

START_TEST(test_read_custom) {
    custom_clock cc = {0, NULL, UINT64_C(123456789)};
    fg_clock c = {custom_now, &cc, NULL};

    ck_assert_uint_eq(fg_clock_read(&c), UINT64_C(123456789));
    ck_assert_int_eq(cc.calls, 1);
    ck_assert_ptr_eq(cc.seen_arg, &cc);
    cc.value = 5;
    ck_assert_uint_eq(fg_clock_read(&c), 5);
    ck_assert_int_eq(cc.calls, 2);
    cc.value = UINT64_MAX;
    ck_assert_uint_eq(fg_clock_read(&c), UINT64_MAX);
    ck_assert_int_eq(cc.calls, 3);
}
END_TEST

/* ---- fg_clock_sleep ---------------------------------------------------------- */

typedef struct sleeper {
    int calls;
    void *seen_arg;
    uint64_t slept;
} sleeper;

static void custom_sleep(void *arg, uint64_t ns) {
    sleeper *sl = arg;

    sl->calls++;
    sl->seen_arg = arg;
    sl->slept += ns;
}

static uint64_t sleeper_now(void *arg) {
    sleeper *sl = arg;

    return sl->slept;
}

START_TEST(test_sleep_custom) {
    sleeper sl = {0, NULL, 0};
    fg_clock c = {sleeper_now, &sl, custom_sleep};
    uint64_t t0 = fg_clock_monotonic_now(NULL);

    fg_clock_sleep(&c, 5 * FG_NS_PER_S);
    ck_assert_int_eq(sl.calls, 1);
    ck_assert_ptr_eq(sl.seen_arg, &sl);
    ck_assert_uint_eq(sl.slept, 5 * FG_NS_PER_S);
    ck_assert_uint_eq(fg_clock_read(&c), 5 * FG_NS_PER_S);
    /* The clock's own sleep was used: no real five seconds went by. */
    ck_assert_uint_lt(fg_clock_monotonic_now(NULL) - t0, FG_NS_PER_S);
}
END_TEST

static void real_sleep_check(const fg_clock *c) {
    uint64_t t0 = fg_clock_monotonic_now(NULL);
    uint64_t t1;

    fg_clock_sleep(c, FG_NS_PER_MS);
    t1 = fg_clock_monotonic_now(NULL);
    ck_assert_uint_ge(t1 - t0, FG_NS_PER_MS);
    ck_assert_uint_lt(t1 - t0, 60 * FG_NS_PER_S);
}

/* No clock, or one without a sleep function: a real monotonic sleep. */
START_TEST(test_sleep_real) {
    sleeper sl = {0, NULL, 0};
    fg_clock no_sleep = {sleeper_now, &sl, NULL};
    fg_clock mono = fg_clock_monotonic();

    real_sleep_check(NULL);
    real_sleep_check(&no_sleep);
    real_sleep_check(&mono);
    ck_assert_int_eq(sl.calls, 0);
}
END_TEST

/* now == NULL means the default clock for both reading and sleeping. */
START_TEST(test_sleep_default_clock_ignores_sleep_fn) {
    sleeper sl = {0, NULL, 0};
    fg_clock c = {NULL, &sl, custom_sleep};

    real_sleep_check(&c);
    ck_assert_int_eq(sl.calls, 0);
}
END_TEST

START_TEST(test_sleep_zero) {
    sleeper sl = {0, NULL, 0};
    fg_clock c = {sleeper_now, &sl, custom_sleep};
    uint64_t t0 = fg_clock_monotonic_now(NULL);

    fg_clock_sleep(NULL, 0);
    ck_assert_uint_lt(fg_clock_monotonic_now(NULL) - t0, FG_NS_PER_S);
    fg_clock_sleep(&c, 0);
    ck_assert_uint_eq(sl.slept, 0);
}
END_TEST

/* ---- the fake clock ----------------------------------------------------------- */

START_TEST(test_fake_start_set_advance) {
    fg_fake_clock *fc = NULL;
    fg_clock c;

    ck_assert_int_eq(fg_fake_clock_new(UINT64_C(1234), &fc), 0);
    ck_assert_ptr_nonnull(fc);
    c = fg_fake_clock_as_clock(fc);
    ck_assert(c.now != NULL);
    ck_assert_uint_eq(fg_fake_clock_now(fc), 1234);
    ck_assert_uint_eq(fg_clock_read(&c), 1234);
    ck_assert_uint_eq(c.now(c.arg), 1234);
    /* Reading does not move it. */
    ck_assert_uint_eq(fg_clock_read(&c), 1234);

    fg_fake_clock_set(fc, 5000);
    ck_assert_uint_eq(fg_fake_clock_now(fc), 5000);
    ck_assert_uint_eq(fg_clock_read(&c), 5000);

    ck_assert_uint_eq(fg_fake_clock_advance(fc, 250), 5250);
    ck_assert_uint_eq(fg_fake_clock_now(fc), 5250);
    ck_assert_uint_eq(fg_clock_read(&c), 5250);
    ck_assert_uint_eq(fg_fake_clock_advance(fc, 0), 5250);
    ck_assert_uint_eq(fg_fake_clock_advance(fc, 3 * FG_NS_PER_S), 5250 + 3 * FG_NS_PER_S);
    ck_assert_uint_eq(fg_clock_read(&c), 5250 + 3 * FG_NS_PER_S);

    fg_fake_clock_free(fc);
}
END_TEST

START_TEST(test_fake_set_backwards) {
    fg_fake_clock *fc = NULL;
    fg_clock c;

    ck_assert_int_eq(fg_fake_clock_new(10 * FG_NS_PER_S, &fc), 0);
    c = fg_fake_clock_as_clock(fc);
    fg_fake_clock_set(fc, 3);
    ck_assert_uint_eq(fg_fake_clock_now(fc), 3);
    ck_assert_uint_eq(fg_clock_read(&c), 3);
    fg_fake_clock_set(fc, 0);
    ck_assert_uint_eq(fg_clock_read(&c), 0);
    ck_assert_uint_eq(fg_fake_clock_advance(fc, 7), 7);
    fg_fake_clock_set(fc, UINT64_MAX - 1);
    ck_assert_uint_eq(fg_clock_read(&c), UINT64_MAX - 1);
    fg_fake_clock_free(fc);
}
END_TEST

START_TEST(test_fake_start_zero_and_max) {
    fg_fake_clock *fc = NULL;

    ck_assert_int_eq(fg_fake_clock_new(0, &fc), 0);
    ck_assert_uint_eq(fg_fake_clock_now(fc), 0);
    fg_fake_clock_free(fc);
    ck_assert_int_eq(fg_fake_clock_new(UINT64_MAX, &fc), 0);
    ck_assert_uint_eq(fg_fake_clock_now(fc), UINT64_MAX);
    fg_fake_clock_free(fc);
}
END_TEST

/* Sleeping on the fake clock advances it and takes no real time. */
START_TEST(test_fake_sleep_advances) {
    fg_fake_clock *fc = NULL;
    fg_clock c;
    uint64_t t0 = fg_clock_monotonic_now(NULL);

    ck_assert_int_eq(fg_fake_clock_new(100, &fc), 0);
    c = fg_fake_clock_as_clock(fc);
    fg_clock_sleep(&c, 250);
    ck_assert_uint_eq(fg_fake_clock_now(fc), 350);
    fg_clock_sleep(&c, 10 * FG_NS_PER_S);
    ck_assert_uint_eq(fg_clock_read(&c), 350 + 10 * FG_NS_PER_S);
    ck_assert_uint_lt(fg_clock_monotonic_now(NULL) - t0, FG_NS_PER_S);
    fg_fake_clock_free(fc);
}
END_TEST

/* A NULL fake clock is ignored by set and advance, and reads 0. */
START_TEST(test_fake_null) {
    ck_assert_uint_eq(fg_fake_clock_now(NULL), 0);
    fg_fake_clock_set(NULL, 5);
    fg_fake_clock_advance(NULL, 5);
    ck_assert_uint_eq(fg_fake_clock_now(NULL), 0);
}
END_TEST

START_TEST(test_fake_clocks_independent) {
    fg_fake_clock *a = NULL, *b = NULL;
    fg_clock ca, cb;

    ck_assert_int_eq(fg_fake_clock_new(100, &a), 0);
    ck_assert_int_eq(fg_fake_clock_new(200, &b), 0);
    ck_assert_ptr_ne(a, b);
    ca = fg_fake_clock_as_clock(a);
    cb = fg_fake_clock_as_clock(b);
    fg_fake_clock_advance(a, 5);
    fg_fake_clock_set(b, 1);
    ck_assert_uint_eq(fg_clock_read(&ca), 105);
    ck_assert_uint_eq(fg_clock_read(&cb), 1);
    fg_fake_clock_free(a);
    fg_fake_clock_free(b);
}
END_TEST

/* fg_fake_clock_new(..., NULL) fails without allocating; freeing NULL frees nothing. */
START_TEST(test_fake_new_null_out) {
    th_alloc_reset();
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    ck_assert_int_eq(fg_fake_clock_new(5, NULL), FG_EINVAL);
    ck_assert_int_eq(th_alloc.allocs, th_alloc.frees);
    fg_fake_clock_free(NULL);
    ck_assert_int_eq(th_alloc.frees, th_alloc.allocs);
    ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
}
END_TEST

/* ---- concurrent advances ------------------------------------------------------- */

#define ADVANCES 100000

typedef struct advancer {
    fg_fake_clock *fc;
    uint64_t *seen; /* every value fg_fake_clock_advance returned */
    int backwards;  /* times a return was not above the previous one */
} advancer;

static void *advance_thread(void *arg) {
    advancer *a = arg;
    uint64_t prev = 0;

    for (int i = 0; i < ADVANCES; i++) {
        uint64_t v = fg_fake_clock_advance(a->fc, 1);
        a->seen[i] = v;
        if (v <= prev) {
            a->backwards++;
        }
        prev = v;
    }
    return NULL;
}

START_TEST(test_fake_concurrent_advance) {
    fg_fake_clock *fc = NULL;
    advancer adv[2];
    pthread_t th[2];
    unsigned char *hit;

    ck_assert_int_eq(fg_fake_clock_new(0, &fc), 0);
    for (int t = 0; t < 2; t++) {
        adv[t].fc = fc;
        adv[t].seen = calloc(ADVANCES, sizeof(uint64_t));
        adv[t].backwards = 0;
        ck_assert_ptr_nonnull(adv[t].seen);
    }
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(pthread_create(&th[t], NULL, advance_thread, &adv[t]), 0);
    }
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
    }
    ck_assert_uint_eq(fg_fake_clock_now(fc), 2 * ADVANCES);

    /* Atomic advances: every return is distinct, and together they are 1..2N. */
    hit = calloc(2 * ADVANCES + 1, 1);
    ck_assert_ptr_nonnull(hit);
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(adv[t].backwards, 0);
        for (int i = 0; i < ADVANCES; i++) {
            uint64_t v = adv[t].seen[i];
            ck_assert_uint_ge(v, 1);
            ck_assert_uint_le(v, 2 * ADVANCES);
            ck_assert_msg(!hit[v], "advance returned %llu twice", (unsigned long long)v);
            hit[v] = 1;
        }
        free(adv[t].seen);
    }
    free(hit);
    fg_fake_clock_free(fc);
}
END_TEST

/* Readers on another thread see only values that were set (never torn ones). */
typedef struct reader {
    fg_fake_clock *fc;
    int stop;
    long bad;
    long reads;
} reader;

#define A_VALUE UINT64_C(0x0123456789abcdef)
#define B_VALUE UINT64_C(0xfedcba9876543210)

static void *read_thread(void *arg) {
    reader *r = arg;
    fg_clock c = fg_fake_clock_as_clock(r->fc);

    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        uint64_t v = fg_clock_read(&c);
        if (v != A_VALUE && v != B_VALUE) {
            r->bad++;
        }
        __atomic_fetch_add(&r->reads, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

START_TEST(test_fake_set_not_torn) {
    fg_fake_clock *fc = NULL;
    reader r;
    pthread_t th;
    long sets = 0;

    ck_assert_int_eq(fg_fake_clock_new(A_VALUE, &fc), 0);
    r.fc = fc;
    r.stop = 0;
    r.bad = 0;
    r.reads = 0;
    ck_assert_int_eq(pthread_create(&th, NULL, read_thread, &r), 0);
    /* Keep flipping until the reader has overlapped with plenty of sets. */
    while (sets < 200000 || __atomic_load_n(&r.reads, __ATOMIC_RELAXED) < 100000) {
        fg_fake_clock_set(fc, sets % 2 ? A_VALUE : B_VALUE);
        sets++;
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_int_ge(r.reads, 100000);
    ck_assert_int_eq(r.bad, 0);
    fg_fake_clock_free(fc);
}
END_TEST

/* fg_clock_fast: whichever clock it picks reads like CLOCK_MONOTONIC: it
 * never goes backwards on one thread, starts within a millisecond of it and
 * measures a real sleep to within a few percent. */
START_TEST(test_fast_clock_tracks_monotonic) {
    fg_clock c;
    int rc = fg_clock_fast(&c);
    ck_assert(rc == 0 || rc == 1);
    ck_assert(c.now != NULL);
    ck_assert(c.sleep != NULL);
    uint64_t mono = fg_clock_monotonic_now(NULL);
    uint64_t fast = fg_clock_read(&c);
    uint64_t gap = fast > mono ? fast - mono : mono - fast;
    ck_assert_uint_lt(gap, FG_NS_PER_MS);
    uint64_t prev = fg_clock_read(&c);
    for (int i = 0; i < 100000; i++) {
        uint64_t now = fg_clock_read(&c);
        ck_assert_uint_ge(now, prev);
        prev = now;
    }
    uint64_t f0 = fg_clock_read(&c), m0 = fg_clock_monotonic_now(NULL);
    fg_clock_sleep(&c, 20 * FG_NS_PER_MS);
    uint64_t f1 = fg_clock_read(&c), m1 = fg_clock_monotonic_now(NULL);
    ck_assert_uint_ge(f1 - f0, 20 * FG_NS_PER_MS * 95 / 100);
    uint64_t df = f1 - f0, dm = m1 - m0;
    uint64_t err = df > dm ? df - dm : dm - df;
    ck_assert_uint_lt(err, dm / 20);
}
END_TEST

START_TEST(test_fast_clock_null) { ck_assert_int_eq(fg_clock_fast(NULL), FG_EINVAL); }
END_TEST

Suite *fg_suite_clock(void) {
    Suite *s = suite_create("clock");
    TCase *tc;

    tc = tcase_create("monotonic");
    tcase_add_test(tc, test_monotonic_non_decreasing);
    tcase_add_test(tc, test_monotonic_is_clock_monotonic);
    tcase_add_test(tc, test_monotonic_advances_across_sleep);
    tcase_add_test(tc, test_monotonic_value);
    suite_add_tcase(s, tc);

    tc = tcase_create("read");
    tcase_add_test(tc, test_read_null_is_monotonic);
    tcase_add_test(tc, test_read_null_now_is_monotonic);
    tcase_add_test(tc, test_read_monotonic_value);
    tcase_add_test(tc, test_read_custom);
    suite_add_tcase(s, tc);

    tc = tcase_create("fast");
    tcase_add_test(tc, test_fast_clock_tracks_monotonic);
    tcase_add_test(tc, test_fast_clock_null);
    suite_add_tcase(s, tc);

    tc = tcase_create("sleep");
    tcase_add_test(tc, test_sleep_custom);
    tcase_add_test(tc, test_sleep_real);
    tcase_add_test(tc, test_sleep_default_clock_ignores_sleep_fn);
    tcase_add_test(tc, test_sleep_zero);
    suite_add_tcase(s, tc);

    tc = tcase_create("fake");
    tcase_add_checked_fixture(tc, NULL, th_alloc_teardown);
    tcase_add_test(tc, test_fake_start_set_advance);
    tcase_add_test(tc, test_fake_set_backwards);
    tcase_add_test(tc, test_fake_start_zero_and_max);
    tcase_add_test(tc, test_fake_clocks_independent);
    tcase_add_test(tc, test_fake_sleep_advances);
    tcase_add_test(tc, test_fake_null);
    tcase_add_test(tc, test_fake_new_null_out);
    suite_add_tcase(s, tc);

    tc = tcase_create("fake_threads");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fake_concurrent_advance);
    tcase_add_test(tc, test_fake_set_not_torn);
    suite_add_tcase(s, tc);

    return s;
}
