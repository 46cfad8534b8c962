/*
 * tests/check_keyed.c - the keyed (per-key) rate limiter and its chain stage.
 *
 * Every decision is checked against a reference token bucket written here
 * from the definition (a level of bucket time that refills with the clock,
 * in 128-bit arithmetic), not from the library's GCRA: random fixed-seed
 * interleavings of keys, times, token counts and smoothing bounds must give
 * the same decisions and the same hints. Then: key handling (binary keys,
 * bounds, never truncated), the fixed memory bound under a churn of a
 * million keys, the full-table policies, rate and burst changes that keep
 * each key's tokens, real threads (bounds that hold whatever the schedule,
 * and an exact count where a barrier makes the schedule irrelevant), the
 * stage's key sources and missing-key policies, and clocks that run
 * backwards. Time is always an explicit reading or a fake clock.
 *
 * Tests marked "Regression" failed against an earlier lib/.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "suites.h"

#define S    FG_NS_PER_S
#define MS   FG_NS_PER_MS
#define US   FG_NS_PER_US
#define HOUR (UINT64_C(3600) * S)
#define T0   (UINT64_C(1000) * S) /* a start time well away from 0 */

/* ---- helpers ------------------------------------------------------------- */

/* splitmix64: a small, fixed-seed generator, so every run is the same. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *s, uint64_t n) { return n ? rng_next(s) % n : 0; }

static fg_keyed_limiter_options keyed_opts(uint64_t rate, uint64_t period, uint64_t burst,
                                           uint32_t max_keys) {
    fg_keyed_limiter_options o = FG_KEYED_LIMITER_OPTIONS_INIT;
    o.bucket.rate = rate;
    o.bucket.period_ns = period;
    o.bucket.burst = burst;
    o.max_keys = max_keys;
    return o;
}

static fg_keyed_limiter *keyed_new(const fg_keyed_limiter_options *o) {
    fg_keyed_limiter *k = NULL;
    ck_assert_int_eq(fg_keyed_limiter_new(o, &k), 0);
    ck_assert_ptr_nonnull(k);
    return k;
}

static fg_keyed_stats keyed_stats(fg_keyed_limiter *k) {
    fg_keyed_stats st;
    ck_assert_int_eq(fg_keyed_limiter_stats(k, &st), 0);
    return st;
}

/* A try on a NUL-terminated key, without smoothing bound or hint. */
static int try_s(fg_keyed_limiter *k, const char *key, uint64_t now, uint64_t n) {
    return fg_keyed_limiter_try(k, key, strlen(key), now, n, UINT64_MAX, NULL);
}

static uint64_t tokens_s(fg_keyed_limiter *k, const char *key, uint64_t now) {
    return fg_keyed_limiter_tokens(k, key, strlen(key), now);
}

/* ---- the reference token bucket ------------------------------------------- */

/*
 * The token bucket from its definition. T = ceil(period / rate) ns per
 * token, capacity burst tokens; the bucket's content is kept as a level of
 * bucket time (tokens x T, so a fraction of a token is exact) which rises by
 * one ns per ns elapsed up to tau = burst x T. Taking n tokens needs a level
 * of n x T. With smoothing, a request short of s ns of level is admitted
 * with a wait of s when s is within the bound, and the level goes below 0
 * (the tokens are reserved). 128 bits: no product or sum here can overflow.
 */
__extension__ typedef __int128 s128;
__extension__ typedef unsigned __int128 u128;

typedef struct ref_cfg {
    uint64_t interval; /* T */
    uint64_t burst;
    uint64_t max_wait;
    u128 tau;
} ref_cfg;

typedef struct ref_bucket {
    s128 level;  /* bucket time held, in ns; <= tau */
    uint64_t at; /* the reading the level is for */
    int used;    /* 0: never asked; full at any time */
} ref_bucket;

static ref_cfg ref_cfg_make(uint64_t rate, uint64_t period, uint64_t burst,
                            uint64_t max_wait) {
    ref_cfg c;
    uint64_t p = period ? period : S;
    c.interval = (uint64_t)(((u128)p + rate - 1) / rate);
    c.burst = burst;
    c.max_wait = max_wait;
    c.tau = (u128)burst * c.interval;
    return c;
}

/* The level at t (t never earlier than the last reading used). */
static void ref_refill(const ref_cfg *c, ref_bucket *b, uint64_t t) {
    if (!b->used) {
        b->used = 1;
        b->level = (s128)c->tau;
        b->at = t;
        return;
    }
    ck_assert_uint_ge(t, b->at);
    s128 l = b->level + (s128)(t - b->at);
    b->level = l > (s128)c->tau ? (s128)c->tau : l;
    b->at = t;
}

static int ref_try(const ref_cfg *c, ref_bucket *b, uint64_t t, uint64_t n, uint64_t bound_arg,
                   uint64_t *wait) {
    *wait = 0;
    if (n > c->burst)
        return FG_ERANGE;
    ref_refill(c, b, t);
    s128 need = (s128)((u128)n * c->interval);
    if (b->level >= need) {
        b->level -= need;
        return 0;
    }
    s128 shortfall = need - b->level;
    uint64_t bound = c->max_wait < bound_arg ? c->max_wait : bound_arg;
    *wait = (uint64_t)shortfall;
    if (shortfall <= (s128)bound) {
        b->level -= need;
        return 0;
    }
    return FG_ELIMITED;
}

static uint64_t ref_tokens(const ref_cfg *c, ref_bucket *b, uint64_t t) {
    ref_refill(c, b, t);
    return b->level <= 0 ? 0 : (uint64_t)(b->level / (s128)c->interval);
}

/* ---- 1. per-key exactness against the reference --------------------------- */

typedef struct exact_cfg {
    uint64_t rate, period, burst, max_wait;
    uint32_t max_keys;
    int nkeys;
} exact_cfg;

static const exact_cfg exact_cfgs[] = {
    {1000, 0, 10, 0, 64, 8},                /* T = 1 ms, one small table */
    {3, 0, 7, 2 * S, 64, 5},                /* T = 333333334 (rounded up), smoothing */
    {100, MS, 1, 0, 100000, 64},            /* T = 10 us, burst 1, many shards */
    {7, S, 100, 500 * MS, 100000, 32},      /* T = 142857143, large n, smoothing */
    {1, HOUR, 3, 0, 1000, 16},              /* one token an hour */
    {1000, 1000, 1000, 0, 64, 3},           /* T = 1 ns */
    {5, 2 * S, 4, 3 * S, 4096, 40},         /* T = 400 ms, smoothing past tau */
    {1000000, S, 50, 20 * US, 100000, 200}, /* T = 1 us, short smoothing */
};
#define NEXACT  ((int)(sizeof(exact_cfgs) / sizeof(exact_cfgs[0])))
#define NSTEPS  20000
#define KEY_CAP 64

START_TEST(test_exact_vs_reference) {
    const exact_cfg *cf = &exact_cfgs[_i];
    uint64_t rng = UINT64_C(0x5eed0000) + (uint64_t)_i;
    fg_keyed_limiter_options o = keyed_opts(cf->rate, cf->period, cf->burst, cf->max_keys);
    o.bucket.max_wait_ns = cf->max_wait;
    fg_keyed_limiter *k = keyed_new(&o);
    ref_cfg rc = ref_cfg_make(cf->rate, cf->period, cf->burst, cf->max_wait);

    /* Keys: binary (NUL bytes allowed), 0 to 47 bytes, key 0 the empty key;
     * byte 0 holds the index so that no two are equal. */
    static char keys[256][KEY_CAP];
    static size_t klen[256];
    static ref_bucket ref[256];
    ck_assert_int_le(cf->nkeys, 256);
    for (int i = 0; i < cf->nkeys; i++) {
        klen[i] = i == 0 ? 0 : 1 + (size_t)rng_below(&rng, FG_KEYED_KEY_MAX_DEFAULT);
        for (size_t j = 0; j < klen[i]; j++)
            keys[i][j] = (char)rng_next(&rng);
        if (klen[i] > 0)
            keys[i][0] = (char)i;
        memset(&ref[i], 0, sizeof(ref[i]));
    }

    /* Spacing: on average the table as a whole is asked for a quarter more
     * than it refills, so admissions and rejections both happen often. n is
     * 1..min(burst, 4), one time in 16 1..burst: 32 x its mean is avg32. A
     * jump of up to 2 x tau (rare: it refills every key) lets buckets fill. */
    uint64_t nmax = cf->burst < 4 ? cf->burst : 4;
    uint64_t avg32 = 15 * (nmax + 1) + (cf->burst + 1);
    uint64_t dtmax = avg32 * rc.interval / (20 * (uint64_t)cf->nkeys);
    if (dtmax == 0)
        dtmax = 1;
    uint64_t jump_odds = 64 * (uint64_t)cf->nkeys;
    uint64_t latest = T0;
    int last_key = 0;
    unsigned admitted = 0, delayed = 0, rejected = 0, backwards = 0;
    for (int step = 0; step < NSTEPS; step++) {
        int key;
        uint64_t t;
        if (step > 0 && rng_below(&rng, 10) == 0) {
            /* Back in time, on the key that saw the latest reading: its
             * shard has seen that reading, so this one counts as it. */
            key = last_key;
            t = latest - rng_below(&rng, latest - T0 + 1);
            backwards++;
        } else {
            key = (int)rng_below(&rng, (uint64_t)cf->nkeys);
            uint64_t pick = rng_below(&rng, jump_odds);
            if (pick == 0)
                latest += rng_below(&rng, (uint64_t)(2 * rc.tau) + 1);
            else if (pick > jump_odds / 16)
                latest += rng_below(&rng, dtmax + 1);
            /* else the same reading again */
            t = latest;
            last_key = key;
        }
        uint64_t n = rng_below(&rng, 16) == 0 ? 1 + rng_below(&rng, cf->burst)
                                              : 1 + rng_below(&rng, nmax);
        uint64_t bound = UINT64_MAX;
        uint64_t bpick = rng_below(&rng, 4);
        if (bpick == 1)
            bound = 0;
        else if (bpick >= 2)
            bound = rng_below(&rng, 2 * cf->max_wait + 2);

        uint64_t want_wait, got_wait = 12345;
        int want = ref_try(&rc, &ref[key], latest, n, bound, &want_wait);
        int got = fg_keyed_limiter_try(k, keys[key], klen[key], t, n, bound, &got_wait);
        ck_assert_msg(got == want && got_wait == want_wait,
                      "cfg %d step %d key %d t=%" PRIu64 " (latest %" PRIu64 ") n=%" PRIu64
                      " bound=%" PRIu64 ": got %s wait %" PRIu64 ", want %s wait %" PRIu64,
                      _i, step, key, t, latest, n, bound, fg_err_name(got), got_wait,
                      fg_err_name(want), want_wait);
        if (want == 0 && want_wait == 0)
            admitted++;
        else if (want == 0)
            delayed++;
        else
            rejected++;

        /* Tokens of a random key at the latest reading (no time elapses). */
        int probe = (int)rng_below(&rng, (uint64_t)cf->nkeys);
        uint64_t tk = fg_keyed_limiter_tokens(k, keys[probe], klen[probe], latest);
        ck_assert_uint_eq(tk, ref_tokens(&rc, &ref[probe], latest));
    }
    /* The mix was a real test: all outcomes occurred often. */
    ck_assert_uint_gt(admitted, NSTEPS / 10);
    ck_assert_uint_gt(rejected, NSTEPS / 100);
    ck_assert_uint_gt(backwards, NSTEPS / 20);
    if (cf->max_wait > 0)
        ck_assert_uint_gt(delayed, NSTEPS / 500);
    else
        ck_assert_uint_eq(delayed, 0);
    fg_keyed_stats st = keyed_stats(k);
    ck_assert_uint_eq(st.keys, (uint64_t)cf->nkeys);
    ck_assert_uint_eq(st.evictions, 0);
    ck_assert_uint_eq(st.full_rejected, 0);
    ck_assert_uint_eq(st.full_admitted, 0);
    fg_keyed_limiter_free(k);
}
END_TEST

/* Independent buckets, by hand: one key's traffic never touches another's. */
START_TEST(test_keys_independent) {
    fg_keyed_limiter_options o = keyed_opts(10, 0, 3, 1000); /* T = 100 ms */
    fg_keyed_limiter *k = keyed_new(&o);
    uint64_t w;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(try_s(k, "alice", T0, 1), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "alice", 5, T0, 1, UINT64_MAX, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 100 * MS);
    ck_assert_uint_eq(tokens_s(k, "alice", T0), 0);
    ck_assert_uint_eq(tokens_s(k, "bob", T0), 3);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "bob", 3, T0, 3, UINT64_MAX, &w), 0);
    ck_assert_uint_eq(w, 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "bob", 3, T0, 1, UINT64_MAX, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 100 * MS);
    /* Hint for n tokens: time until n are there. */
    ck_assert_int_eq(fg_keyed_limiter_try(k, "bob", 3, T0 + 50 * MS, 2, UINT64_MAX, &w),
                     FG_ELIMITED);
    ck_assert_uint_eq(w, 150 * MS);
    ck_assert_int_eq(try_s(k, "alice", T0 + 100 * MS - 1, 1), FG_ELIMITED);
    ck_assert_int_eq(try_s(k, "alice", T0 + 100 * MS, 1), 0);
    ck_assert_int_eq(try_s(k, "carol", T0 + 100 * MS, 3), 0);
    ck_assert_uint_eq(tokens_s(k, "bob", T0 + 300 * MS), 3);
    ck_assert_uint_eq(keyed_stats(k).keys, 3);
    fg_keyed_limiter_free(k);
}
END_TEST

/* Smoothing: the per-call bound and the option's bound, whichever is less. */
START_TEST(test_smoothing_bounds) {
    fg_keyed_limiter_options o = keyed_opts(1, S, 1, 0);
    o.max_keys = 64;
    o.bucket.max_wait_ns = 3 * S;
    fg_keyed_limiter *k = keyed_new(&o);
    uint64_t w;
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 1, UINT64_MAX, &w), 0);
    ck_assert_uint_eq(w, 0);
    /* Needs 1 s: the call allows 0 -> rejected with the hint. */
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 1, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 1, S - 1, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 1, S, &w), 0);
    ck_assert_uint_eq(w, S);
    /* Reserved: the next one waits 2 s; then 3 s; the option caps at 3 s. */
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 1, UINT64_MAX, &w), 0);
    ck_assert_uint_eq(w, 2 * S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 1, UINT64_MAX, &w), 0);
    ck_assert_uint_eq(w, 3 * S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 1, UINT64_MAX, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 4 * S);
    /* Another key is untouched. */
    ck_assert_int_eq(fg_keyed_limiter_try(k, "b", 1, T0, 1, 0, &w), 0);
    ck_assert_uint_eq(w, 0);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(k, "a", 1, T0 + 3 * S), 0);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(k, "a", 1, T0 + 4 * S), 1);
    fg_keyed_limiter_free(k);
}
END_TEST

/* ---- 2. key handling ----------------------------------------------------- */

START_TEST(test_binary_keys) {
    fg_keyed_limiter_options o = keyed_opts(1, HOUR, 1, 64);
    fg_keyed_limiter *k = keyed_new(&o);
    static const struct {
        const char *p;
        size_t len;
    } bin[] = {
        {"a\0b", 3}, {"a\0c", 3}, {"a", 1},    {"a\0", 2},    {"\0", 1},       {"\0\0", 2},
        {"User", 4}, {"user", 4}, {"USER", 4}, {"a\0b\0", 4}, {"\xff\xfe", 2}, {"\xff", 1},
    };
    const int nbin = (int)(sizeof(bin) / sizeof(bin[0]));
    /* Every key has its own single token: each is admitted once ... */
    for (int i = 0; i < nbin; i++)
        ck_assert_msg(fg_keyed_limiter_try(k, bin[i].p, bin[i].len, T0, 1, 0, NULL) == 0,
                      "key %d", i);
    /* ... and only once. */
    for (int i = 0; i < nbin; i++)
        ck_assert_msg(fg_keyed_limiter_try(k, bin[i].p, bin[i].len, T0, 1, 0, NULL) ==
                          FG_ELIMITED,
                      "key %d", i);
    ck_assert_uint_eq(keyed_stats(k).keys, (uint64_t)nbin);
    /* The empty key: NULL or not, it is one key, distinct from "\0". */
    ck_assert_int_eq(fg_keyed_limiter_try(k, NULL, 0, T0, 1, 0, NULL), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "", 0, T0, 1, 0, NULL), FG_ELIMITED);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "zzz", 0, T0, 1, 0, NULL), FG_ELIMITED);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(k, NULL, 0, T0), 0);
    ck_assert_uint_eq(keyed_stats(k).keys, (uint64_t)nbin + 1);
    fg_keyed_limiter_free(k);
}
END_TEST

/* The key is copied: the caller's buffer may change right after the call. */
START_TEST(test_key_copied) {
    fg_keyed_limiter_options o = keyed_opts(1, HOUR, 1, 64);
    fg_keyed_limiter *k = keyed_new(&o);
    char buf[16];
    memcpy(buf, "abc", 3);
    ck_assert_int_eq(fg_keyed_limiter_try(k, buf, 3, T0, 1, 0, NULL), 0);
    memcpy(buf, "xyz", 3);
    ck_assert_int_eq(try_s(k, "abc", T0, 1), FG_ELIMITED);
    ck_assert_int_eq(try_s(k, "xyz", T0, 1), 0);
    fg_keyed_limiter_free(k);
}
END_TEST

START_TEST(test_key_bounds_default) {
    fg_keyed_limiter_options o = keyed_opts(1, HOUR, 1, 64);
    fg_keyed_limiter *k = keyed_new(&o);
    char key[FG_KEYED_KEY_MAX_LIMIT + 2];
    memset(key, 'k', sizeof(key));
    uint64_t w = 99;
    ck_assert_int_eq(FG_KEYED_KEY_MAX_DEFAULT, 47);
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, 47, T0, 1, 0, &w), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, 47, T0, 1, 0, &w), FG_ELIMITED);
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, 48, T0, 1, 0, &w), FG_ETOOLONG);
    ck_assert_uint_eq(w, 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, sizeof(key), T0, 1, 0, &w), FG_ETOOLONG);
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, SIZE_MAX, T0, 1, 0, &w), FG_ETOOLONG);

    /* Never truncated: two 48-byte keys equal in their first 47 bytes, and
     * the 47-byte key itself, are three keys; the long ones are refused. */
    char a[48], b[48];
    memset(a, 'p', sizeof(a));
    memset(b, 'p', sizeof(b));
    a[47] = 'A';
    b[47] = 'B';
    ck_assert_int_eq(fg_keyed_limiter_try(k, a, 48, T0, 1, 0, NULL), FG_ETOOLONG);
    ck_assert_int_eq(fg_keyed_limiter_try(k, b, 48, T0, 1, 0, NULL), FG_ETOOLONG);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(k, a, 47, T0), 1); /* the prefix: untouched */
    ck_assert_int_eq(fg_keyed_limiter_try(k, a, 47, T0, 1, 0, NULL), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, b, 47, T0, 1, 0, NULL),
                     FG_ELIMITED); /* same 47 */
    ck_assert_int_eq(fg_keyed_limiter_try(k, a, 48, T0, 1, 0, NULL), FG_ETOOLONG);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(k, a, 48, T0), 0); /* bad argument: 0 */
    /* Keys equal in 46 bytes but differing in the 47th (last allowed) byte. */
    char c[47], d[47];
    memset(c, 'q', sizeof(c));
    memset(d, 'q', sizeof(d));
    d[46] = 'r';
    ck_assert_int_eq(fg_keyed_limiter_try(k, c, 47, T0, 1, 0, NULL), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, d, 47, T0, 1, 0, NULL), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, c, 47, T0, 1, 0, NULL), FG_ELIMITED);
    ck_assert_uint_eq(keyed_stats(k).keys, 4);
    fg_keyed_limiter_free(k);
}
END_TEST

static const uint32_t custom_key_max[] = {1, 8, 48, 200, FG_KEYED_KEY_MAX_LIMIT};

START_TEST(test_key_bounds_custom) {
    uint32_t km = custom_key_max[_i];
    fg_keyed_limiter_options o = keyed_opts(1, HOUR, 1, 64);
    o.key_max = km;
    fg_keyed_limiter *k = keyed_new(&o);
    char key[FG_KEYED_KEY_MAX_LIMIT + 1], other[FG_KEYED_KEY_MAX_LIMIT + 1];
    memset(key, 'k', sizeof(key));
    memcpy(other, key, sizeof(other));
    other[km - 1] = 'o'; /* differs only in the last allowed byte */
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, km, T0, 1, 0, NULL), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, other, km, T0, 1, 0, NULL), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, km, T0, 1, 0, NULL), FG_ELIMITED);
    ck_assert_int_eq(fg_keyed_limiter_try(k, other, km, T0, 1, 0, NULL), FG_ELIMITED);
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, km + 1, T0, 1, 0, NULL), FG_ETOOLONG);
    ck_assert_int_eq(fg_keyed_limiter_try(k, key, 0, T0, 1, 0, NULL), 0);
    if (km > 47) {
        /* Longer than the default bound, fine here; 48 vs 47 bytes differ. */
        ck_assert_int_eq(fg_keyed_limiter_try(k, key, 48, T0, 1, 0, NULL),
                         km == 48 ? FG_ELIMITED : 0);
    }
    fg_keyed_limiter_free(k);
}
END_TEST

START_TEST(test_try_arguments) {
    fg_keyed_limiter_options o = keyed_opts(10, 0, 5, 64);
    fg_keyed_limiter *k = keyed_new(&o);
    uint64_t w = 77;
    ck_assert_int_eq(fg_keyed_limiter_try(NULL, "a", 1, T0, 1, 0, &w), FG_EINVAL);
    ck_assert_uint_eq(w, 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, NULL, 1, T0, 1, 0, &w), FG_EINVAL);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 0, 0, &w), FG_EINVAL);
    w = 77;
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 6, 0, &w), FG_ERANGE);
    ck_assert_uint_eq(w, 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, UINT64_MAX, 0, &w), FG_ERANGE);
    /* None of that took a token or made a key. */
    ck_assert_uint_eq(tokens_s(k, "a", T0), 5);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "a", 1, T0, 5, 0, &w), 0);
    ck_assert_uint_eq(tokens_s(k, "a", T0), 0);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(NULL, "a", 1, T0), 0);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(k, NULL, 1, T0), 0);
    ck_assert_uint_eq(tokens_s(k, "never", T0), 5); /* unknown key: full */
    ck_assert_uint_eq(keyed_stats(k).keys, 1);
    fg_keyed_stats st;
    ck_assert_int_eq(fg_keyed_limiter_stats(NULL, &st), FG_EINVAL);
    ck_assert_int_eq(fg_keyed_limiter_stats(k, NULL), FG_EINVAL);
    fg_keyed_limiter_free(k);
    fg_keyed_limiter_free(NULL);
}
END_TEST

START_TEST(test_new_arguments) {
    static char dummy;
    fg_keyed_limiter *const sentinel = (fg_keyed_limiter *)(void *)&dummy;
    fg_keyed_limiter *k = sentinel; /* must stay untouched on error */
    fg_keyed_limiter_options o = keyed_opts(10, 0, 5, 64);
    ck_assert_int_eq(fg_keyed_limiter_new(NULL, &k), FG_EINVAL);
    ck_assert_int_eq(fg_keyed_limiter_new(&o, NULL), FG_EINVAL);

    o = keyed_opts(10, 0, 5, 0);
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_EINVAL); /* max_keys 0 */
    o = keyed_opts(0, 0, 5, 64);
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_EINVAL); /* rate 0 */
    o = keyed_opts(10, 0, 0, 64);
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_EINVAL); /* burst 0 */
    o = keyed_opts(10, 0, 5, 64);
    o.bucket.warmup_ns = S;
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_EINVAL); /* warm-up */
    o = keyed_opts(10, 0, 5, 64);
    o.key_max = FG_KEYED_KEY_MAX_LIMIT + 1;
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_EINVAL);
    o = keyed_opts(10, 0, 5, 64);
    o.when_full = (fg_keyed_when_full)7;
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_EINVAL);
    o = keyed_opts(10, 0, 5, FG_KEYED_MAX_KEYS + 1);
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_ERANGE);
    o = keyed_opts(10, 0, 5, UINT32_MAX);
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_ERANGE);
    o = keyed_opts(FG_LIMITER_MAX_TOKENS + 1, HOUR, 5, 64);
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_ERANGE);
    o = keyed_opts(10, 0, FG_LIMITER_MAX_TOKENS + 1, 64);
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_ERANGE);
    o = keyed_opts(10, 5, 5, 64); /* finer than 1 token per ns */
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_ERANGE);
    o = keyed_opts(1, HOUR, FG_LIMITER_MAX_TOKENS, 64); /* burst x T > 2^62 */
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), FG_ERANGE);
    ck_assert_ptr_eq(k, sentinel);

    /* The edges that are allowed. */
    o = keyed_opts(10, 0, 5, 1);
    o.key_max = FG_KEYED_KEY_MAX_LIMIT;
    o.when_full = FG_KEYED_ADMIT_NEW;
    ck_assert_int_eq(fg_keyed_limiter_new(&o, &k), 0);
    fg_keyed_stats st = keyed_stats(k);
    ck_assert_uint_ge(st.capacity, 1);
    ck_assert_uint_eq(st.keys, 0);
    ck_assert_uint_gt(st.bytes, 0);
    fg_keyed_limiter_free(k);
}
END_TEST

/* An allocator that fails the Nth allocation and counts what is live. */
static long oom_fail_at; /* 1-based; 0 = never */
static long oom_count;
static long oom_live;

static void *oom_malloc(size_t size) {
    if (++oom_count == oom_fail_at)
        return NULL;
    void *p = malloc(size);
    if (p)
        oom_live++;
    return p;
}

static void oom_free(void *p) {
    if (p) {
        oom_live--;
        free(p);
    }
}

START_TEST(test_new_out_of_memory) {
    fg_keyed_limiter_options o = keyed_opts(10, 0, 5, 1000);
    int ok = 0, failed = 0;
    for (long n = 1; n < 50 && !ok; n++) {
        oom_fail_at = n;
        oom_count = 0;
        oom_live = 0;
        ck_assert_int_eq(fg_set_alloc_funcs(oom_malloc, oom_free), 0);
        fg_keyed_limiter *k = NULL;
        int rc = fg_keyed_limiter_new(&o, &k);
        if (rc == 0) {
            ck_assert_int_eq(try_s(k, "x", T0, 1), 0);
            fg_keyed_limiter_free(k);
            ok = 1;
        } else {
            ck_assert_int_eq(rc, FG_ENOMEM);
            ck_assert_ptr_null(k);
            failed++;
        }
        ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
        ck_assert_msg(oom_live == 0, "failing allocation %ld leaked %ld blocks", n, oom_live);
    }
    ck_assert_int_eq(ok, 1);
    ck_assert_int_ge(failed, 2); /* the handle and its memory are separate */
}
END_TEST

/* ---- 3. memory bound and churn ------------------------------------------- */

#define CHURN_MAX_KEYS  100000
#define CHURN_KEYS      1000000
#define CHURN_HOT_EVERY 20

/*
 * A million distinct keys through a table of 100,000: memory never grows,
 * the key count never passes the capacity, idle keys make room for new
 * ones, and a hot key over its limit is limited exactly as one bucket.
 * (Regression: an earlier lib/keyed.c refused about 22% of these new keys,
 * those whose home slot was empty once their shard held its share, although
 * the shard was full of idle keys.)
 */
START_TEST(test_churn_memory_bound) {
    /* T = 100 us, burst 5. A cold key takes 1 token and is full again 100 us
     * later; keys arrive 1 us apart, so about 100 of 100,000 are not idle at
     * any time. The hot key asks every 20 us: five times its rate. */
    fg_keyed_limiter_options o = keyed_opts(10000, S, 5, CHURN_MAX_KEYS);
    fg_keyed_limiter *k = keyed_new(&o);
    ref_cfg rc = ref_cfg_make(10000, S, 5, 0);
    ref_bucket hot_ref;
    memset(&hot_ref, 0, sizeof(hot_ref));

    fg_keyed_stats st0 = keyed_stats(k);
    ck_assert_uint_ge(st0.capacity, CHURN_MAX_KEYS);
    ck_assert_uint_eq(st0.keys, 0);
    double per_key = (double)st0.bytes / CHURN_MAX_KEYS;
    printf("keyed: %.2f bytes per key (max_keys %u, stats.bytes %" PRIu64 ", capacity %" PRIu64
           ")\n",
           per_key, (unsigned)CHURN_MAX_KEYS, st0.bytes, st0.capacity);
    fflush(stdout);
    ck_assert_uint_le(st0.bytes, (uint64_t)96 * CHURN_MAX_KEYS);

    uint64_t t = T0;
    uint64_t hot_admitted = 0, hot_ref_admitted = 0, hot_requests = 0;
    uint64_t hot_first = 0, hot_last = 0;
    uint64_t cold_rejected = 0, first_rejected = UINT64_MAX;
    char key[32];
    for (uint32_t i = 0; i < CHURN_KEYS; i++) {
        t += US;
        int len = snprintf(key, sizeof(key), "cold-%07" PRIu32, i);
        uint64_t w;
        int r = fg_keyed_limiter_try(k, key, (size_t)len, t, 1, UINT64_MAX, &w);
        if (r != 0) {
            ck_assert_int_eq(r, FG_ELIMITED);
            if (cold_rejected++ == 0)
                first_rejected = i;
        }
        if (i % CHURN_HOT_EVERY == 0) {
            uint64_t want_w, got_w;
            int want = ref_try(&rc, &hot_ref, t, 1, UINT64_MAX, &want_w);
            int got = fg_keyed_limiter_try(k, "hot", 3, t, 1, UINT64_MAX, &got_w);
            ck_assert_msg(got == want && got_w == want_w,
                          "hot key at step %" PRIu32 ": got %s wait %" PRIu64
                          ", reference %s wait %" PRIu64,
                          i, fg_err_name(got), got_w, fg_err_name(want), want_w);
            if (hot_requests++ == 0)
                hot_first = t;
            hot_last = t;
            hot_admitted += got == 0;
            hot_ref_admitted += want == 0;
        }
        if (i % 10000 == 0 || i == CHURN_KEYS - 1) {
            fg_keyed_stats st = keyed_stats(k);
            ck_assert_uint_le(st.keys, st.capacity);
            ck_assert_uint_eq(st.capacity, st0.capacity);
            ck_assert_uint_eq(st.bytes, st0.bytes);
        }
    }
    fg_keyed_stats st = keyed_stats(k);
    /* The hot key: exactly the reference bucket's count (about 1 in 5). */
    ck_assert_uint_eq(hot_admitted, hot_ref_admitted);
    /* Asking 5 times faster than it refills, on a grid the refill times
     * fall on: the burst, then one per interval. */
    ck_assert_uint_eq(hot_ref_admitted, 5 + (hot_last - hot_first) / (100 * US));
    ck_assert_uint_lt(hot_admitted, hot_requests / 4);
    ck_assert_uint_eq(st.bytes, st0.bytes);
    ck_assert_uint_le(st.keys, st.capacity);
    ck_assert_uint_gt(st.evictions, 0);
    /* Every cold key was admitted: idle keys make room. */
    ck_assert_msg(cold_rejected == 0,
                  "%" PRIu64 " of %u new keys rejected (first: #%" PRIu64 "); keys %" PRIu64
                  "/%" PRIu64 ", evictions %" PRIu64 ", full_rejected %" PRIu64,
                  cold_rejected, (unsigned)CHURN_KEYS, first_rejected, st.keys, st.capacity,
                  st.evictions, st.full_rejected);
    ck_assert_uint_eq(st.full_rejected, 0);
    ck_assert_uint_eq(st.full_admitted, 0);
    /* Each new key took an empty slot or an idle one; the hot key, never
     * full, was never evicted and came in once. */
    ck_assert_uint_eq(st.keys + st.evictions, (uint64_t)CHURN_KEYS + 1);
    fg_keyed_limiter_free(k);
}
END_TEST

/*
 * Exactness while the table churns: a table of max_keys keys, max_keys / 8
 * hot keys asked a little more than they refill, and 10 x max_keys cold
 * keys each asked now and then (1 token, so each is idle again 1 us later;
 * about max_keys / 12 are active at a time), so that the table is full and
 * keys are evicted (on a key's own probe run, or deleted elsewhere in its
 * shard, moving other entries) tens of thousands of times. Every decision,
 * hot or cold, must still be the reference's for an unbounded table: an
 * evicted key was full and comes back full; an active key is never lost,
 * duplicated or mixed up with another when entries move.
 */
static const uint32_t ev_max_keys[] = {256, 64, 32, 1024};
#define EV_STEPS 200000

START_TEST(test_exact_with_evictions) {
    uint32_t max_keys = ev_max_keys[_i];
    int nhot = (int)max_keys / 8, ncold = 10 * (int)max_keys;
    fg_keyed_limiter_options o = keyed_opts(1000000, S, 4, max_keys); /* T = 1 us */
    fg_keyed_limiter *k = keyed_new(&o);
    ref_cfg rc = ref_cfg_make(1000000, S, 4, 0);
    ref_bucket *hot = calloc((size_t)nhot, sizeof(*hot));
    ref_bucket *cold = calloc((size_t)ncold, sizeof(*cold));
    ck_assert_ptr_nonnull(hot);
    ck_assert_ptr_nonnull(cold);
    /* Steps 6 us / max_keys apart on average: a hot key is asked every
     * 1.5 us on average, for 2 tokens on average. */
    uint64_t dtmax = 12 * US / max_keys;
    uint64_t rng = 7 + _i, t = T0;
    unsigned hot_admitted = 0, hot_rejected = 0;
    char key[16];
    for (int step = 0; step < EV_STEPS; step++) {
        t += rng_below(&rng, dtmax + 1);
        int is_hot = rng_below(&rng, 2) == 0;
        int idx = (int)rng_below(&rng, (uint64_t)(is_hot ? nhot : ncold));
        uint64_t n = is_hot ? 1 + rng_below(&rng, 3) : 1;
        int len = snprintf(key, sizeof(key), is_hot ? "hot%d" : "c%d", idx);
        uint64_t want_w, got_w;
        int want = ref_try(&rc, is_hot ? &hot[idx] : &cold[idx], t, n, UINT64_MAX, &want_w);
        int got = fg_keyed_limiter_try(k, key, (size_t)len, t, n, UINT64_MAX, &got_w);
        if (got != want || got_w != want_w) {
            fg_keyed_stats st = keyed_stats(k);
            free(hot);
            free(cold);
            ck_abort_msg("max_keys %" PRIu32 " step %d key %s n=%" PRIu64
                         ": got %s wait %" PRIu64 ", reference %s wait %" PRIu64
                         " (full_rejected %" PRIu64 ")",
                         max_keys, step, key, n, fg_err_name(got), got_w, fg_err_name(want),
                         want_w, st.full_rejected);
        }
        if (is_hot) {
            hot_admitted += got == 0;
            hot_rejected += got != 0;
        }
    }
    fg_keyed_stats st = keyed_stats(k);
    ck_assert_uint_eq(st.full_rejected, 0);
    ck_assert_uint_le(st.keys, st.capacity);
    ck_assert_uint_gt(st.evictions, EV_STEPS / 4);
    ck_assert_uint_gt(hot_admitted, EV_STEPS / 10);
    ck_assert_uint_gt(hot_rejected, EV_STEPS / 20);
    /* Every hot key is still there, holding what the reference holds. */
    for (int i = 0; i < nhot; i++) {
        int len = snprintf(key, sizeof(key), "hot%d", i);
        ck_assert_uint_eq(fg_keyed_limiter_tokens(k, key, (size_t)len, t),
                          ref_tokens(&rc, &hot[i], t));
    }
    free(hot);
    free(cold);
    fg_keyed_limiter_free(k);
}
END_TEST

/* ---- 4. full table policy ------------------------------------------------ */

/* Fill a table until it holds capacity keys, all active (1 token taken at
 * `now`, T = 1 s, so none is full again before now + 1 s). Returns how many
 * fill keys were made ("fill-<i>"). */
static int fill_table(fg_keyed_limiter *k, uint64_t now) {
    char key[32];
    int made = 0;
    for (int i = 0; i < 100000; i++) {
        fg_keyed_stats st = keyed_stats(k);
        if (st.keys == st.capacity)
            break;
        int len = snprintf(key, sizeof(key), "fill-%d", i);
        if (fg_keyed_limiter_try(k, key, (size_t)len, now, 1, 0, NULL) == 0)
            made++;
    }
    fg_keyed_stats st = keyed_stats(k);
    ck_assert_uint_eq(st.keys, st.capacity);
    ck_assert_uint_eq(st.evictions, 0);
    return made;
}

#define NLATER 16

/* _i 0: FG_KEYED_REJECT_NEW, 1: FG_KEYED_ADMIT_NEW. */
START_TEST(test_full_table) {
    fg_keyed_when_full policy = _i == 0 ? FG_KEYED_REJECT_NEW : FG_KEYED_ADMIT_NEW;
    fg_keyed_limiter_options o = keyed_opts(1, S, 5, 64);
    o.when_full = policy;
    fg_keyed_limiter *k = keyed_new(&o);
    ck_assert_uint_ge(keyed_stats(k).capacity, 64);
    int made = fill_table(k, T0);
    ck_assert_int_ge(made, 64);
    fg_keyed_stats st0 = keyed_stats(k);

    /* Every key is active: 100 new keys, 3 requests each, find no room. */
    char key[32];
    uint64_t now = T0 + S / 2;
    for (int i = 0; i < 100; i++) {
        int len = snprintf(key, sizeof(key), "new-%d", i);
        for (int j = 0; j < 3; j++) {
            uint64_t w = 0;
            int r = fg_keyed_limiter_try(k, key, (size_t)len, now, 5, 0, &w);
            if (policy == FG_KEYED_REJECT_NEW) {
                ck_assert_int_eq(r, FG_ELIMITED);
                ck_assert_uint_gt(w, 0); /* a hint to come back */
            } else {
                ck_assert_int_eq(r, 0); /* unlimited: 5 tokens, 3 times */
                ck_assert_uint_eq(w, 0);
            }
        }
        /* No bucket was made for it. */
        ck_assert_uint_eq(fg_keyed_limiter_tokens(k, key, (size_t)len, now), 5);
    }
    fg_keyed_stats st = keyed_stats(k);
    ck_assert_uint_eq(st.keys, st0.keys);
    ck_assert_uint_eq(st.evictions, 0);
    if (policy == FG_KEYED_REJECT_NEW) {
        ck_assert_uint_eq(st.full_rejected, st0.full_rejected + 300);
        ck_assert_uint_eq(st.full_admitted, 0);
    } else {
        ck_assert_uint_eq(st.full_admitted, st0.full_admitted + 300);
        ck_assert_uint_eq(st.full_rejected, 0);
    }
    /* Known keys still have their buckets: fill-0 has 4 tokens left. */
    ck_assert_int_eq(try_s(k, "fill-0", now, 4), 0);
    ck_assert_int_eq(try_s(k, "fill-0", now, 1), FG_ELIMITED);

    /* Time passes: every old key refills (fill-0 by T0 + 5.5 s). Now 16 new
     * keys each evict an idle key and get a real bucket. (16: a shard may
     * hold fewer keys than the table's average, and eviction is per shard.) */
    now = T0 + 10 * S;
    uint64_t rejected_before = st.full_rejected, admitted_before = st.full_admitted;
    for (int i = 0; i < NLATER; i++) {
        int len = snprintf(key, sizeof(key), "later-%d", i);
        ck_assert_msg(fg_keyed_limiter_try(k, key, (size_t)len, now, 1, 0, NULL) == 0,
                      "new key %d refused after the table went idle", i);
    }
    st = keyed_stats(k);
    ck_assert_msg(st.full_rejected == rejected_before && st.full_admitted == admitted_before,
                  "new keys hit the full-table policy with idle keys present: "
                  "full_rejected +%" PRIu64 ", full_admitted +%" PRIu64 ", evictions %" PRIu64,
                  st.full_rejected - rejected_before, st.full_admitted - admitted_before,
                  st.evictions);
    ck_assert_uint_eq(st.evictions, NLATER);
    ck_assert_uint_eq(st.keys, st.capacity);
    /* They are limited now: 4 more tokens each, then rejected. */
    for (int i = 0; i < NLATER; i++) {
        int len = snprintf(key, sizeof(key), "later-%d", i);
        ck_assert_uint_eq(fg_keyed_limiter_tokens(k, key, (size_t)len, now), 4);
        ck_assert_int_eq(fg_keyed_limiter_try(k, key, (size_t)len, now, 4, 0, NULL), 0);
        ck_assert_int_eq(fg_keyed_limiter_try(k, key, (size_t)len, now, 1, 0, NULL),
                         FG_ELIMITED);
    }
    st = keyed_stats(k);
    ck_assert_uint_eq(st.evictions, NLATER);
    ck_assert_uint_eq(st.full_rejected, rejected_before);
    ck_assert_uint_eq(st.full_admitted, admitted_before);
    fg_keyed_limiter_free(k);
}
END_TEST

/* An evicted key loses nothing: it was full, and it comes back full. A
 * table of one key, alternating twenty. */
START_TEST(test_eviction_loses_nothing) {
    fg_keyed_limiter_options o = keyed_opts(1, S, 3, 1);
    fg_keyed_limiter *k = keyed_new(&o);
    fg_keyed_stats st = keyed_stats(k);
    ck_assert_uint_ge(st.capacity, 1);
    /* With one key's room (or more), alternate many keys, each taking all
     * its tokens and coming back only once it is full again. */
    char key[16];
    uint64_t now = T0;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 20; i++) {
            int len = snprintf(key, sizeof(key), "k%d", i);
            now += 3 * S; /* every earlier key is full again */
            ck_assert_int_eq(fg_keyed_limiter_try(k, key, (size_t)len, now, 3, 0, NULL), 0);
            ck_assert_int_eq(fg_keyed_limiter_try(k, key, (size_t)len, now, 1, 0, NULL),
                             FG_ELIMITED);
        }
    }
    st = keyed_stats(k);
    ck_assert_uint_le(st.keys, st.capacity);
    ck_assert_uint_eq(st.keys + st.evictions, 100);
    ck_assert_uint_eq(st.full_rejected, 0);
    fg_keyed_limiter_free(k);
}
END_TEST

/* ---- 5. set_rate / set_burst --------------------------------------------- */

typedef struct rate_fx {
    fg_fake_clock *fc;
    fg_keyed_limiter *k;
} rate_fx;

static rate_fx rate_fx_new(uint64_t rate, uint64_t burst) {
    rate_fx fx;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fx.fc), 0);
    fg_keyed_limiter_options o = keyed_opts(rate, S, burst, 64);
    o.bucket.clock = fg_fake_clock_as_clock(fx.fc);
    fx.k = keyed_new(&o);
    return fx;
}

static void rate_fx_free(rate_fx *fx) {
    fg_keyed_limiter_free(fx->k);
    fg_fake_clock_free(fx->fc);
}

/* (No try below is earlier than a reading given to tokens before it, so
 * whether tokens counts as a reading seen does not matter.) */
START_TEST(test_set_rate_keeps_tokens) {
    rate_fx fx = rate_fx_new(10, 10); /* T = 100 ms */
    fg_keyed_limiter *k = fx.k;
    ck_assert_int_eq(try_s(k, "A", T0, 7), 0);
    ck_assert_int_eq(try_s(k, "B", T0, 2), 0);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 20, S), 0); /* at T0: T = 50 ms */
    ck_assert_uint_eq(tokens_s(k, "A", T0), 3);
    ck_assert_uint_eq(tokens_s(k, "B", T0), 8);
    ck_assert_uint_eq(tokens_s(k, "C", T0), 10);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 50 * MS - 1), 3);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 50 * MS), 4);
    ck_assert_uint_eq(tokens_s(k, "B", T0 + 50 * MS), 9);
    uint64_t w;
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, T0 + 50 * MS, 4, 0, &w), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, T0 + 50 * MS, 1, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 50 * MS);
    ck_assert_uint_eq(tokens_s(k, "B", T0 + 100 * MS), 10);

    /* Slower, with the clock moved on: at T0 + 1 s A and B are full again
     * (10). Take A down to 4 and B to 9, then change to 1 per 400 ms. */
    fg_fake_clock_set(fx.fc, T0 + S);
    ck_assert_int_eq(try_s(k, "A", T0 + S, 6), 0);
    ck_assert_int_eq(try_s(k, "B", T0 + S, 1), 0);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 5, 2 * S), 0);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + S), 4);
    ck_assert_uint_eq(tokens_s(k, "B", T0 + S), 9);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + S + 400 * MS - 1), 4);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + S + 400 * MS), 5);
    ck_assert_uint_eq(tokens_s(k, "B", T0 + S + 400 * MS), 10);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, T0 + S + 400 * MS, 5, 0, &w), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, T0 + S + 400 * MS, 1, 0, &w),
                     FG_ELIMITED);
    ck_assert_uint_eq(w, 400 * MS);
    /* Period 0 means 1 s. */
    fg_fake_clock_set(fx.fc, T0 + 10 * S);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 4, 0), 0);
    ck_assert_int_eq(try_s(k, "A", T0 + 10 * S, 10), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, T0 + 10 * S, 1, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 250 * MS);
    rate_fx_free(&fx);
}
END_TEST

/* A fraction of a token is kept too (rounded down by under 1 ns of level). */
START_TEST(test_set_rate_keeps_fraction) {
    rate_fx fx = rate_fx_new(10, 10); /* T = 100 ms */
    fg_keyed_limiter *k = fx.k;
    ck_assert_int_eq(try_s(k, "A", T0, 10), 0);
    /* At T0 + 250 ms A holds 2.5 tokens. At 20/s the missing half token
     * takes 25 ms: the third whole token comes 25 ms after the change. */
    fg_fake_clock_set(fx.fc, T0 + 250 * MS);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 20, S), 0);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 250 * MS), 2);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 275 * MS - 1), 2);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 275 * MS), 3);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 625 * MS - 1), 9);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 625 * MS), 10);
    rate_fx_free(&fx);
}
END_TEST

START_TEST(test_set_burst_keeps_tokens) {
    rate_fx fx = rate_fx_new(10, 10); /* T = 100 ms */
    fg_keyed_limiter *k = fx.k;
    ck_assert_int_eq(try_s(k, "A", T0, 9), 0); /* A 1, B 9 */
    ck_assert_int_eq(try_s(k, "B", T0, 1), 0);
    uint64_t now = T0 + 100 * MS; /* A 2, B full again */
    fg_fake_clock_set(fx.fc, now);
    ck_assert_uint_eq(tokens_s(k, "A", now), 2);
    ck_assert_uint_eq(tokens_s(k, "B", now), 10);
    ck_assert_int_eq(fg_keyed_limiter_set_burst(k, 20), 0);
    /* Kept, not topped up; then they refill to the new burst. */
    ck_assert_uint_eq(tokens_s(k, "A", now), 2);
    ck_assert_uint_eq(tokens_s(k, "B", now), 10);
    ck_assert_uint_eq(tokens_s(k, "C", now), 20); /* unknown: the new burst */
    ck_assert_int_eq(try_s(k, "C", now, 20), 0);
    ck_assert_int_eq(try_s(k, "C", now, 1), FG_ELIMITED);
    ck_assert_uint_eq(tokens_s(k, "A", now + 500 * MS), 7);
    ck_assert_uint_eq(tokens_s(k, "B", now + 500 * MS), 15);
    ck_assert_uint_eq(tokens_s(k, "B", now + S), 20);
    /* Shrink at now + 1 s, when A holds 12 (take it down to 2), B 20 and
     * C 10: A keeps 2, B and C are cut to 4. */
    now += S;
    fg_fake_clock_set(fx.fc, now);
    ck_assert_int_eq(try_s(k, "A", now, 10), 0);
    ck_assert_int_eq(fg_keyed_limiter_set_burst(k, 4), 0);
    ck_assert_uint_eq(tokens_s(k, "A", now), 2);
    ck_assert_uint_eq(tokens_s(k, "B", now), 4);
    ck_assert_uint_eq(tokens_s(k, "C", now), 4);
    ck_assert_int_eq(try_s(k, "B", now, 5), FG_ERANGE);
    ck_assert_int_eq(try_s(k, "B", now, 4), 0);
    ck_assert_int_eq(try_s(k, "B", now, 1), FG_ELIMITED);
    ck_assert_int_eq(try_s(k, "A", now, 3), FG_ELIMITED);
    ck_assert_int_eq(try_s(k, "A", now, 2), 0);
    ck_assert_uint_eq(tokens_s(k, "A", now + 200 * MS), 2);
    ck_assert_uint_eq(tokens_s(k, "A", now + 400 * MS), 4);
    ck_assert_uint_eq(tokens_s(k, "A", now + 10 * S), 4);
    ck_assert_uint_eq(tokens_s(k, "C", now + 10 * S), 4);
    rate_fx_free(&fx);
}
END_TEST

START_TEST(test_set_invalid_unchanged) {
    rate_fx fx = rate_fx_new(10, 10); /* T = 100 ms */
    fg_keyed_limiter *k = fx.k;
    ck_assert_int_eq(try_s(k, "A", T0, 7), 0);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(NULL, 20, S), FG_EINVAL);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 0, S), FG_EINVAL);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, FG_LIMITER_MAX_TOKENS + 1, HOUR), FG_ERANGE);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 10, 5), FG_ERANGE); /* < 1 ns a token */
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 1, UINT64_MAX), FG_ERANGE);
    /* 10 x 2^61 ns of tolerance: over 2^62. */
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 1, UINT64_C(1) << 61), FG_ERANGE);
    ck_assert_int_eq(fg_keyed_limiter_set_burst(NULL, 20), FG_EINVAL);
    ck_assert_int_eq(fg_keyed_limiter_set_burst(k, 0), FG_EINVAL);
    ck_assert_int_eq(fg_keyed_limiter_set_burst(k, FG_LIMITER_MAX_TOKENS + 1), FG_ERANGE);
    ck_assert_int_eq(fg_keyed_limiter_set_burst(k, FG_LIMITER_MAX_TOKENS), FG_ERANGE);
    /* Unchanged: A holds 3, refills 1 per 100 ms up to 10; n > 10 -> ERANGE. */
    uint64_t w;
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, T0, 4, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 100 * MS);
    ck_assert_int_eq(try_s(k, "Z", T0, 11), FG_ERANGE);
    ck_assert_uint_eq(tokens_s(k, "A", T0), 3);
    ck_assert_uint_eq(tokens_s(k, "Z", T0), 10);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 100 * MS - 1), 3);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 100 * MS), 4);
    ck_assert_uint_eq(tokens_s(k, "A", T0 + 10 * S), 10);
    rate_fx_free(&fx);
}
END_TEST

/*
 * A request whose clock reading was taken just before a rate change (a
 * ctx's now_ns, read before a reload on another thread) sees the tokens the
 * change kept: the change's reading has been seen, and an earlier one
 * counts as no time elapsed. A full bucket must not turn into one in debt.
 * (Regression: an earlier lib/keyed.c refused this request.)
 */
START_TEST(test_set_rate_then_earlier_reading) {
    rate_fx fx = rate_fx_new(1, 1); /* T = 1 s, burst 1 */
    fg_keyed_limiter *k = fx.k;
    ck_assert_int_eq(try_s(k, "A", T0 - 10 * S, 1), 0); /* full again by T0 - 9 s */
    ck_assert_uint_eq(tokens_s(k, "A", T0 - S), 1);
    ck_assert_int_eq(fg_keyed_limiter_set_rate(k, 2, S), 0); /* at T0 */
    ck_assert_uint_eq(tokens_s(k, "A", T0), 1);
    uint64_t w = 0;
    int r = fg_keyed_limiter_try(k, "A", 1, T0 - MS, 1, 0, &w);
    ck_assert_msg(r == 0, "full bucket refused just before a rate change: %s, wait %" PRIu64,
                  fg_err_name(r), w);
    /* And as at T0: the next token comes at T0 + 500 ms. */
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, T0 - MS, 1, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 500 * MS);
    rate_fx_free(&fx);
}
END_TEST

/* ---- 6. concurrency ------------------------------------------------------ */

#define CONC_THREADS  2
#define CONC_REQUESTS 200000
#define CONC_KEYS     1000
#define CONC_BURST    20

typedef struct conc_arg {
    fg_keyed_limiter *k;
    fg_fake_clock *fc;
    int id;
    uint32_t admitted[CONC_KEYS];
    uint32_t requests[CONC_KEYS];
    int bad_rc;
} conc_arg;

static void *conc_thread(void *p) {
    conc_arg *a = p;
    uint64_t rng = UINT64_C(0xc0ffee) + (uint64_t)a->id;
    char key[16];
    for (int i = 0; i < CONC_REQUESTS; i++) {
        if (a->id == 0 && i % 4 == 0)
            fg_fake_clock_advance(a->fc, US);
        int kk = (int)rng_below(&rng, CONC_KEYS);
        int len = snprintf(key, sizeof(key), "u%d", kk);
        int r = fg_keyed_limiter_try(a->k, key, (size_t)len, fg_fake_clock_now(a->fc), 1,
                                     UINT64_MAX, NULL);
        a->requests[kk]++;
        if (r == 0)
            a->admitted[kk]++;
        else if (r != FG_ELIMITED)
            a->bad_rc = r;
    }
    return NULL;
}

START_TEST(test_threads_bound) {
    fg_fake_clock *fc;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    fg_keyed_limiter_options o = keyed_opts(1000, S, CONC_BURST, 4096); /* T = 1 ms */
    fg_keyed_limiter *k = keyed_new(&o);
    static conc_arg args[CONC_THREADS];
    pthread_t th[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        memset(&args[i], 0, sizeof(args[i]));
        args[i].k = k;
        args[i].fc = fc;
        args[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, conc_thread, &args[i]), 0);
    }
    for (int i = 0; i < CONC_THREADS; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    uint64_t elapsed = fg_fake_clock_now(fc) - T0;
    ck_assert_uint_eq(elapsed, (uint64_t)CONC_REQUESTS / 4 * US); /* 50 ms */
    uint64_t bound = CONC_BURST + elapsed / MS;                   /* burst + rate x elapsed */
    uint64_t total = 0, total_req = 0;
    for (int kk = 0; kk < CONC_KEYS; kk++) {
        uint64_t adm = 0, req = 0;
        for (int i = 0; i < CONC_THREADS; i++) {
            ck_assert_int_eq(args[i].bad_rc, 0);
            adm += args[i].admitted[kk];
            req += args[i].requests[kk];
        }
        ck_assert_msg(adm <= bound, "key u%d: %" PRIu64 " admitted, bound %" PRIu64, kk, adm,
                      bound);
        /* A key's first `burst` requests find its bucket full. */
        ck_assert_uint_ge(adm, req < CONC_BURST ? req : CONC_BURST);
        total += adm;
        total_req += req;
    }
    ck_assert_uint_eq(total_req, (uint64_t)CONC_THREADS * CONC_REQUESTS);
    ck_assert_uint_lt(total, total_req); /* the bound did bite */
    fg_keyed_stats st = keyed_stats(k);
    ck_assert_uint_eq(st.full_rejected, 0);
    ck_assert_uint_le(st.keys, CONC_KEYS);
    ck_assert_uint_le(st.keys, st.capacity);
    fg_keyed_limiter_free(k);
    fg_fake_clock_free(fc);
}
END_TEST

/*
 * Eviction under real threads: 8 hot keys asked far above their rate mixed
 * with 20,000 cold keys churning through a table of 1,024. Eviction and
 * entry moves happen all the time, yet no hot key may ever be admitted more
 * than one bucket allows (a lost or reset bucket would be), nor starved.
 */
#define TC_HOT  8
#define TC_COLD 20000

typedef struct tchurn_arg {
    fg_keyed_limiter *k;
    fg_fake_clock *fc;
    int id;
    uint64_t hot_admitted[TC_HOT];
    int bad_rc;
} tchurn_arg;

static void *tchurn_thread(void *p) {
    tchurn_arg *a = p;
    uint64_t rng = UINT64_C(0xbadc0de) + (uint64_t)a->id;
    char key[16];
    for (int i = 0; i < CONC_REQUESTS; i++) {
        if (a->id == 0 && i % 4 == 0)
            fg_fake_clock_advance(a->fc, US);
        int is_hot = rng_below(&rng, 2) == 0;
        int idx = (int)rng_below(&rng, is_hot ? TC_HOT : TC_COLD);
        int len = snprintf(key, sizeof(key), is_hot ? "hot%d" : "c%d", idx);
        int r = fg_keyed_limiter_try(a->k, key, (size_t)len, fg_fake_clock_now(a->fc), 1,
                                     UINT64_MAX, NULL);
        if (r == 0 && is_hot)
            a->hot_admitted[idx]++;
        else if (r != 0 && r != FG_ELIMITED)
            a->bad_rc = r;
    }
    return NULL;
}

START_TEST(test_threads_churn_bound) {
    fg_fake_clock *fc;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    fg_keyed_limiter_options o = keyed_opts(50000, S, 2, 1024); /* T = 20 us */
    fg_keyed_limiter *k = keyed_new(&o);
    static tchurn_arg args[CONC_THREADS];
    pthread_t th[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        memset(&args[i], 0, sizeof(args[i]));
        args[i].k = k;
        args[i].fc = fc;
        args[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, tchurn_thread, &args[i]), 0);
    }
    for (int i = 0; i < CONC_THREADS; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    uint64_t elapsed = fg_fake_clock_now(fc) - T0;
    uint64_t bound = 2 + elapsed / (20 * US); /* 2,502 of ~25,000 asked */
    for (int h = 0; h < TC_HOT; h++) {
        uint64_t adm = 0;
        for (int i = 0; i < CONC_THREADS; i++) {
            ck_assert_int_eq(args[i].bad_rc, 0);
            adm += args[i].hot_admitted[h];
        }
        ck_assert_msg(adm <= bound, "hot%d: %" PRIu64 " admitted, bound %" PRIu64, h, adm,
                      bound);
        ck_assert_msg(adm >= bound / 2, "hot%d starved: %" PRIu64 " admitted, bound %" PRIu64,
                      h, adm, bound);
    }
    fg_keyed_stats st = keyed_stats(k);
    ck_assert_uint_le(st.keys, st.capacity);
    ck_assert_uint_eq(st.keys, 1024);
    ck_assert_uint_gt(st.evictions, 10000);
    fg_keyed_limiter_free(k);
    fg_fake_clock_free(fc);
}
END_TEST

#define HOT_PHASES 60
#define HOT_BURST  50

typedef struct hot_arg {
    fg_keyed_limiter *k;
    fg_fake_clock *fc;
    pthread_barrier_t *bar;
    const uint64_t *times;
    int id;
    uint32_t admitted[HOT_PHASES];
    int bad_rc;
} hot_arg;

static void *hot_thread(void *p) {
    hot_arg *a = p;
    for (int ph = 0; ph < HOT_PHASES; ph++) {
        if (a->id == 0)
            fg_fake_clock_set(a->fc, a->times[ph]);
        pthread_barrier_wait(a->bar); /* the phase's time is set */
        uint64_t now = fg_fake_clock_now(a->fc);
        /* Both threads: burst x 3 tries in all, at one time. */
        for (int i = 0; i < HOT_BURST * 3 / 2; i++) {
            int r = fg_keyed_limiter_try(a->k, "hot", 3, now, 1, UINT64_MAX, NULL);
            if (r == 0)
                a->admitted[ph]++;
            else if (r != FG_ELIMITED)
                a->bad_rc = r;
        }
        pthread_barrier_wait(a->bar); /* both done before the clock moves */
    }
    return NULL;
}

START_TEST(test_threads_hot_key_exact) {
    fg_fake_clock *fc;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    fg_keyed_limiter_options o = keyed_opts(1000, S, HOT_BURST, 1000); /* T = 1 ms */
    fg_keyed_limiter *k = keyed_new(&o);
    ref_cfg rc = ref_cfg_make(1000, S, HOT_BURST, 0);
    ref_bucket ref;
    memset(&ref, 0, sizeof(ref));

    /* The script: fixed-seed steps from 0 to 2 x burst intervals. */
    uint64_t times[HOT_PHASES], want[HOT_PHASES];
    uint64_t rng = 42, t = T0;
    for (int ph = 0; ph < HOT_PHASES; ph++) {
        uint64_t pick = rng_below(&rng, 4);
        t += pick == 0 ? 0 : rng_below(&rng, 2 * HOT_BURST * MS + 1);
        times[ph] = t;
        want[ph] = 0;
        for (int i = 0; i < HOT_BURST * 3; i++) {
            uint64_t w;
            want[ph] += ref_try(&rc, &ref, t, 1, UINT64_MAX, &w) == 0;
        }
    }

    pthread_barrier_t bar;
    ck_assert_int_eq(pthread_barrier_init(&bar, NULL, 2), 0);
    static hot_arg args[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        memset(&args[i], 0, sizeof(args[i]));
        args[i].k = k;
        args[i].fc = fc;
        args[i].bar = &bar;
        args[i].times = times;
        args[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, hot_thread, &args[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    ck_assert_int_eq(pthread_barrier_destroy(&bar), 0);

    uint64_t total = 0, want_total = 0;
    for (int ph = 0; ph < HOT_PHASES; ph++) {
        ck_assert_int_eq(args[0].bad_rc, 0);
        ck_assert_int_eq(args[1].bad_rc, 0);
        uint64_t got = (uint64_t)args[0].admitted[ph] + args[1].admitted[ph];
        ck_assert_msg(got == want[ph], "phase %d: %" PRIu64 " admitted, one bucket: %" PRIu64,
                      ph, got, want[ph]);
        total += got;
        want_total += want[ph];
    }
    ck_assert_uint_eq(total, want_total);
    ck_assert_uint_eq(want[0], HOT_BURST); /* starts full: exactly burst */
    fg_keyed_limiter_free(k);
    fg_fake_clock_free(fc);
}
END_TEST

/* ---- 7. the stage -------------------------------------------------------- */

typedef struct stage_fx {
    fg_fake_clock *fc;
    fg_keyed_limiter *k;
    fg_stage *stage; /* our reference; the chain holds another */
    fg_chain *chain;
    int handled;
} stage_fx;

static int handler_ok(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (*(int *)arg)++;
    return 0;
}

/* A chain of one keyed stage over a table of burst tokens, 1 per second. */
static void stage_fx_init(stage_fx *fx, uint64_t burst, uint64_t max_wait,
                          const fg_limit_stage_options *so) {
    memset(fx, 0, sizeof(*fx));
    ck_assert_int_eq(fg_fake_clock_new(T0, &fx->fc), 0);
    fg_keyed_limiter_options o = keyed_opts(1, S, burst, 64);
    o.bucket.max_wait_ns = max_wait;
    o.bucket.clock = fg_fake_clock_as_clock(fx->fc);
    fx->k = keyed_new(&o);
    ck_assert_int_eq(fg_stage_limit_keyed(fx->k, so, &fx->stage), 0);
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.clock = fg_fake_clock_as_clock(fx->fc);
    ck_assert_int_eq(fg_chain_new(&co, &fx->chain), 0);
    ck_assert_int_eq(fg_chain_use(fx->chain, fg_stage_ref(fx->stage)), 0);
}

static void stage_fx_free(stage_fx *fx) {
    fg_chain_free(fx->chain);
    fg_stage_unref(fx->stage);
    fg_keyed_limiter_free(fx->k);
    fg_fake_clock_free(fx->fc);
}

/* One request: path, and a header (name NULL: none). */
static int stage_call(stage_fx *fx, fg_ctx *ctx, const char *path, const char *hname,
                      const char *hval, size_t hval_len) {
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", path), 0);
    if (hname != NULL)
        ck_assert_int_eq(fg_ctx_add_header_n(ctx, hname, strlen(hname), hval, hval_len), 0);
    return fg_chain_call(fx->chain, ctx, handler_ok, &fx->handled);
}

static int stage_call_h(stage_fx *fx, fg_ctx *ctx, const char *hval) {
    return stage_call(fx, ctx, "/", "x-user", hval, strlen(hval));
}

static fg_limit_stats stage_stats(const fg_stage *s) {
    fg_limit_stats st;
    ck_assert_int_eq(fg_limit_stage_stats(s, &st), 0);
    return st;
}

START_TEST(test_stage_header) {
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_source = FG_KEY_HEADER;
    so.key_name = "X-User"; /* header names compare case-insensitively */
    stage_fx fx;
    stage_fx_init(&fx, 2, 0, &so);
    ck_assert_str_eq(fg_stage_kind(fx.stage), "limit_keyed");
    ck_assert_str_eq(fg_stage_name(fx.stage), "limit");
    fg_ctx ctx;
    ck_assert_int_eq(stage_call_h(&fx, &ctx, "alice"), 0);
    ck_assert_int_eq(stage_call(&fx, &ctx, "/other", "X-USER", "alice", 5), 0);
    ck_assert_int_eq(stage_call_h(&fx, &ctx, "alice"), FG_ELIMITED);
    ck_assert_int_eq(ctx.status, FG_ELIMITED);
    ck_assert_ptr_eq(ctx.rejected_by, fx.stage);
    ck_assert_uint_eq(ctx.retry_after_ns, S);
    ck_assert_int_eq(stage_call_h(&fx, &ctx, "bob"), 0);
    ck_assert_uint_eq(ctx.retry_after_ns, 0);
    ck_assert_int_eq(stage_call_h(&fx, &ctx, "Alice"), 0); /* values are case-sensitive */
    ck_assert_int_eq(fx.handled, 4);
    ck_assert_uint_eq(tokens_s(fx.k, "alice", T0), 0);
    ck_assert_uint_eq(tokens_s(fx.k, "bob", T0), 1);
    fg_fake_clock_advance(fx.fc, S / 2);
    ck_assert_int_eq(stage_call_h(&fx, &ctx, "alice"), FG_ELIMITED);
    ck_assert_uint_eq(ctx.retry_after_ns, S / 2);
    fg_fake_clock_advance(fx.fc, S / 2);
    ck_assert_int_eq(stage_call_h(&fx, &ctx, "alice"), 0);
    fg_limit_stats st = stage_stats(fx.stage);
    ck_assert_uint_eq(st.admitted, 5);
    ck_assert_uint_eq(st.rejected, 2);
    ck_assert_uint_eq(st.delayed, 0);
    ck_assert_uint_eq(st.shadow_rejected, 0);
    ck_assert_uint_eq(st.missing_key, 0);
    stage_fx_free(&fx);
}
END_TEST

/* A header value with NUL bytes and the first of duplicate headers. */
START_TEST(test_stage_header_binary_and_first) {
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_name = "x-user";
    stage_fx fx;
    stage_fx_init(&fx, 1, 0, &so);
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    ck_assert_int_eq(fg_ctx_add_header_n(&ctx, "x-user", 6, "a\0b", 3), 0);
    ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-user", "zzz"), 0);
    ck_assert_int_eq(fg_chain_call(fx.chain, &ctx, handler_ok, &fx.handled), 0);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(fx.k, "a\0b", 3, T0), 0);
    ck_assert_uint_eq(tokens_s(fx.k, "zzz", T0), 1);
    ck_assert_uint_eq(tokens_s(fx.k, "a", T0), 1);
    stage_fx_free(&fx);
}
END_TEST

START_TEST(test_stage_path) {
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_source = FG_KEY_PATH;
    so.name = "per-path";
    stage_fx fx;
    stage_fx_init(&fx, 1, 0, &so);
    ck_assert_str_eq(fg_stage_name(fx.stage), "per-path");
    fg_ctx ctx;
    ck_assert_int_eq(stage_call(&fx, &ctx, "/a", "x-user", "u", 1), 0);
    ck_assert_int_eq(stage_call(&fx, &ctx, "/a", "x-user", "v", 1), FG_ELIMITED);
    ck_assert_uint_eq(ctx.retry_after_ns, S);
    ck_assert_int_eq(stage_call(&fx, &ctx, "/b", NULL, NULL, 0), 0);
    ck_assert_int_eq(stage_call(&fx, &ctx, "/A", NULL, NULL, 0), 0);
    ck_assert_uint_eq(tokens_s(fx.k, "/a", T0), 0);
    ck_assert_uint_eq(tokens_s(fx.k, "/b", T0), 0);
    /* The empty path is the empty key. */
    ck_assert_int_eq(stage_call(&fx, &ctx, "", NULL, NULL, 0), 0);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(fx.k, NULL, 0, T0), 0);
    /* A path longer than the key bound is refused, never truncated. */
    char path[64];
    memset(path, 'p', sizeof(path));
    path[0] = '/';
    path[48] = '\0';
    ck_assert_int_eq(stage_call(&fx, &ctx, path, NULL, NULL, 0), FG_ETOOLONG);
    ck_assert_int_eq(ctx.status, FG_ETOOLONG);
    path[47] = '\0';
    ck_assert_int_eq(stage_call(&fx, &ctx, path, NULL, NULL, 0), 0);
    fg_limit_stats st = stage_stats(fx.stage);
    ck_assert_uint_eq(st.admitted, 5);
    ck_assert_uint_eq(st.rejected, 2);
    ck_assert_uint_eq(st.missing_key, 0);
    stage_fx_free(&fx);
}
END_TEST

typedef struct custom_arg {
    int calls;
    int seen_now_ok;
    uint64_t want_now;
} custom_arg;

/* The key is ctx->user (a string), or none when it is NULL. */
static int user_key(const fg_ctx *ctx, fg_str *key, void *arg) {
    custom_arg *ca = arg;
    ca->calls++;
    if (ctx->now_ns == ca->want_now)
        ca->seen_now_ok++;
    if (ctx->user == NULL)
        return FG_ENOTFOUND;
    key->ptr = ctx->user;
    key->len = strlen(ctx->user);
    return 0;
}

static int custom_call(stage_fx *fx, fg_ctx *ctx, const char *user) {
    ck_assert_int_eq(fg_ctx_init(ctx, "GET", "/"), 0);
    ctx->user = (void *)(uintptr_t)user;
    return fg_chain_call(fx->chain, ctx, handler_ok, &fx->handled);
}

START_TEST(test_stage_custom) {
    custom_arg ca = {0, 0, T0};
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_source = FG_KEY_CUSTOM;
    so.key_fn = user_key;
    so.key_arg = &ca;
    so.tokens = 2;
    stage_fx fx;
    stage_fx_init(&fx, 5, 0, &so);
    fg_ctx ctx;
    ck_assert_int_eq(custom_call(&fx, &ctx, "carol"), 0);
    ck_assert_int_eq(custom_call(&fx, &ctx, "carol"), 0);
    ck_assert_int_eq(custom_call(&fx, &ctx, "carol"), FG_ELIMITED); /* 1 left, needs 2 */
    ck_assert_uint_eq(ctx.retry_after_ns, S);
    ck_assert_int_eq(custom_call(&fx, &ctx, "dave"), 0);
    ck_assert_uint_eq(tokens_s(fx.k, "carol", T0), 1);
    ck_assert_uint_eq(tokens_s(fx.k, "dave", T0), 3);
    fg_limit_stats st = stage_stats(fx.stage);
    ck_assert_uint_eq(st.admitted, 3);
    ck_assert_uint_eq(st.rejected, 1);
    ck_assert_uint_eq(st.missing_key, 0);
    ck_assert_int_eq(custom_call(&fx, &ctx, NULL), 0); /* missing: admitted */
    ck_assert_int_eq(fx.handled, 4);
    ck_assert_int_eq(ca.calls, 5);
    ck_assert_int_eq(ca.seen_now_ok, 5); /* the fn sees the chain's reading */
    st = stage_stats(fx.stage);
    ck_assert_uint_eq(st.rejected, 1);
    ck_assert_uint_eq(st.missing_key, 1);
    stage_fx_free(&fx);
}
END_TEST

static const fg_key_missing missing_policies[] = {FG_KEY_MISSING_ADMIT, FG_KEY_MISSING_REJECT,
                                                  FG_KEY_MISSING_SHARED};

START_TEST(test_stage_missing) {
    fg_key_missing policy = missing_policies[_i % 3];
    int shadow = _i >= 3;
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_name = "x-user";
    so.missing = policy;
    so.shadow = shadow;
    stage_fx fx;
    stage_fx_init(&fx, 3, 0, &so);
    fg_ctx ctx;
    int want_admitted_calls = 0;
    for (int i = 0; i < 5; i++) {
        int r = stage_call(&fx, &ctx, "/", "x-other", "v", 1);
        int want;
        if (shadow || policy == FG_KEY_MISSING_ADMIT)
            want = 0;
        else if (policy == FG_KEY_MISSING_REJECT)
            want = FG_ELIMITED;
        else
            want = i < 3 ? 0 : FG_ELIMITED; /* the empty key's 3 tokens */
        ck_assert_msg(r == want, "policy %d shadow %d request %d: %s", (int)policy, shadow, i,
                      fg_err_name(r));
        if (r == 0)
            want_admitted_calls++;
        else
            ck_assert_ptr_eq(ctx.rejected_by, fx.stage);
        if (r == FG_ELIMITED && policy == FG_KEY_MISSING_SHARED)
            ck_assert_uint_eq(ctx.retry_after_ns, S);
    }
    ck_assert_int_eq(fx.handled, want_admitted_calls);
    /* The empty key's bucket: used only by the shared policy. */
    uint64_t empty_tokens = fg_keyed_limiter_tokens(fx.k, NULL, 0, T0);
    ck_assert_uint_eq(empty_tokens, policy == FG_KEY_MISSING_SHARED ? 0 : 3);
    /* A present but empty value is the empty key itself. */
    int r = stage_call(&fx, &ctx, "/", "x-user", "", 0);
    if (policy == FG_KEY_MISSING_SHARED && !shadow)
        ck_assert_int_eq(r, FG_ELIMITED);
    else
        ck_assert_int_eq(r, 0);
    /* Keyed requests are limited as usual, whatever the policy. */
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(stage_call_h(&fx, &ctx, "eve"), 0);
    ck_assert_int_eq(stage_call_h(&fx, &ctx, "eve"), shadow ? 0 : FG_ELIMITED);

    fg_limit_stats st = stage_stats(fx.stage);
    ck_assert_uint_eq(st.missing_key, 5);
    uint64_t would_reject = 1; /* eve's 4th */
    if (policy == FG_KEY_MISSING_REJECT)
        would_reject += 5;
    if (policy == FG_KEY_MISSING_SHARED)
        would_reject += 2 + 1; /* 2 missing + the empty value */
    ck_assert_uint_eq(shadow ? st.shadow_rejected : st.rejected, would_reject);
    ck_assert_uint_eq(shadow ? st.rejected : st.shadow_rejected, 0);
    stage_fx_free(&fx);
}
END_TEST

START_TEST(test_stage_too_long_header) {
    for (int shadow = 0; shadow < 2; shadow++) {
        fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
        so.key_name = "x-user";
        so.shadow = shadow;
        stage_fx fx;
        stage_fx_init(&fx, 1, 0, &so);
        char v[FG_KEYED_KEY_MAX_DEFAULT + 1];
        memset(v, 'v', sizeof(v));
        fg_ctx ctx;
        int r = stage_call(&fx, &ctx, "/", "x-user", v, sizeof(v));
        ck_assert_int_eq(r, shadow ? 0 : FG_ETOOLONG);
        if (!shadow) {
            ck_assert_int_eq(ctx.status, FG_ETOOLONG);
            ck_assert_ptr_eq(ctx.rejected_by, fx.stage);
        }
        /* Not truncated: the 47-byte prefix is a different, untouched key. */
        ck_assert_uint_eq(fg_keyed_limiter_tokens(fx.k, v, sizeof(v) - 1, T0), 1);
        ck_assert_int_eq(stage_call(&fx, &ctx, "/", "x-user", v, sizeof(v) - 1), 0);
        ck_assert_uint_eq(fg_keyed_limiter_tokens(fx.k, v, sizeof(v) - 1, T0), 0);
        fg_limit_stats st = stage_stats(fx.stage);
        ck_assert_uint_eq(st.admitted, 1);
        ck_assert_uint_eq(st.rejected, shadow ? 0 : 1);
        ck_assert_uint_eq(st.shadow_rejected, shadow ? 1 : 0);
        ck_assert_uint_eq(keyed_stats(fx.k).keys, 1);
        stage_fx_free(&fx);
    }
}
END_TEST

START_TEST(test_stage_shadow) {
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_name = "x-user";
    so.shadow = 1;
    stage_fx fx;
    stage_fx_init(&fx, 2, 0, &so);
    fg_ctx ctx;
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(stage_call_h(&fx, &ctx, "frank"), 0);
        ck_assert_int_eq(ctx.status, 0);
        ck_assert_uint_eq(ctx.retry_after_ns, 0);
        ck_assert_ptr_null(ctx.rejected_by);
    }
    ck_assert_int_eq(fx.handled, 5);
    /* It decided for real: the bucket was used up. */
    ck_assert_uint_eq(tokens_s(fx.k, "frank", T0), 0);
    fg_limit_stats st = stage_stats(fx.stage);
    ck_assert_uint_eq(st.admitted, 2);
    ck_assert_uint_eq(st.shadow_rejected, 3);
    ck_assert_uint_eq(st.rejected, 0);
    ck_assert_uint_eq(st.delayed, 0);
    stage_fx_free(&fx);
}
END_TEST

/* Smoothing through the stage: a delay, bounded by the deadline; shadow
 * mode counts it without delaying. Split API, so nothing sleeps. */
START_TEST(test_stage_smoothing) {
    for (int shadow = 0; shadow < 2; shadow++) {
        fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
        so.key_name = "x-user";
        so.shadow = shadow;
        stage_fx fx;
        stage_fx_init(&fx, 1, 5 * S, &so);
        fg_ctx ctx;
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-user", "gina"), 0);
        ck_assert_int_eq(fg_chain_enter(fx.chain, &ctx), 0);
        ck_assert_uint_eq(ctx.delay_ns, 0);
        ck_assert_int_eq(fg_chain_exit(fx.chain, &ctx, 0), 0);

        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-user", "gina"), 0);
        ck_assert_int_eq(fg_chain_enter(fx.chain, &ctx), 0);
        ck_assert_uint_eq(ctx.delay_ns, shadow ? 0 : S);
        ck_assert_int_eq(fg_chain_exit(fx.chain, &ctx, 0), 0);

        /* Needs 2 s; the deadline leaves 1.5 s. */
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-user", "gina"), 0);
        ctx.deadline_ns = fg_chain_now(fx.chain) + 3 * S / 2;
        int r = fg_chain_enter(fx.chain, &ctx);
        if (shadow) {
            ck_assert_int_eq(r, 0);
            ck_assert_uint_eq(ctx.delay_ns, 0);
            ck_assert_int_eq(fg_chain_exit(fx.chain, &ctx, 0), 0);
        } else {
            ck_assert_int_eq(r, FG_ELIMITED);
            ck_assert_uint_eq(ctx.retry_after_ns, 2 * S);
        }
        fg_limit_stats st = stage_stats(fx.stage);
        ck_assert_uint_eq(st.admitted, 1);
        ck_assert_uint_eq(st.delayed, 1);
        ck_assert_uint_eq(st.rejected, shadow ? 0 : 1);
        ck_assert_uint_eq(st.shadow_rejected, shadow ? 1 : 0);
        stage_fx_free(&fx);
    }
}
END_TEST

static const fg_stage_ops other_ops = {"other", NULL, NULL, NULL};

START_TEST(test_stage_options) {
    fg_keyed_limiter_options o = keyed_opts(1, S, 3, 64);
    fg_keyed_limiter *k = keyed_new(&o);
    fg_stage *s = NULL;
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_name = "x-user";
    ck_assert_int_eq(fg_stage_limit_keyed(NULL, &so, &s), FG_EINVAL);
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_stage_limit_keyed(k, NULL, &s), FG_EINVAL); /* header, no name */
    so.key_name = NULL;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), FG_EINVAL);
    so = (fg_limit_stage_options)FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_source = FG_KEY_CUSTOM;
    so.key_name = "x-user";
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), FG_EINVAL); /* custom, no fn */
    so = (fg_limit_stage_options)FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_name = "x-user";
    so.key_source = (fg_key_source)4; /* one past FG_KEY_BAGGAGE */
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), FG_EINVAL);
    so.key_source = (fg_key_source)-1;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), FG_EINVAL);
    so.key_source = FG_KEY_HEADER;
    so.missing = (fg_key_missing)3;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), FG_EINVAL);
    so.missing = (fg_key_missing)-1;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), FG_EINVAL);
    so.missing = FG_KEY_MISSING_ADMIT;
    char longname[FG_HEADER_NAME_MAX + 2];
    memset(longname, 'h', sizeof(longname));
    longname[FG_HEADER_NAME_MAX + 1] = '\0';
    so.key_name = longname;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), FG_ETOOLONG);
    so.key_name = "x-user";
    char stname[FG_STAGE_NAME_MAX + 2];
    memset(stname, 's', sizeof(stname));
    stname[FG_STAGE_NAME_MAX + 1] = '\0';
    so.name = stname;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), FG_ETOOLONG);
    ck_assert_ptr_null(s);

    /* Valid: a path source needs neither name nor fn. */
    so = (fg_limit_stage_options)FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_source = FG_KEY_PATH;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), 0);
    ck_assert_str_eq(fg_stage_kind(s), "limit_keyed");
    fg_limit_stats st;
    ck_assert_int_eq(fg_limit_stage_stats(s, &st), 0);
    ck_assert_uint_eq(st.admitted + st.rejected + st.missing_key, 0);
    ck_assert_int_eq(fg_limit_stage_stats(s, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_limit_stage_stats(NULL, &st), FG_EINVAL);
    fg_stage_unref(s);
    /* Key name exactly at its bound is fine. */
    so = (fg_limit_stage_options)FG_LIMIT_STAGE_OPTIONS_INIT;
    longname[FG_HEADER_NAME_MAX] = '\0';
    so.key_name = longname;
    s = NULL;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), 0);
    fg_stage_unref(s);

    fg_stage *other = NULL;
    ck_assert_int_eq(fg_stage_new(&other_ops, NULL, "x", &other), 0);
    ck_assert_int_eq(fg_limit_stage_stats(other, &st), FG_EINVAL);
    fg_stage_unref(other);
    fg_keyed_limiter_free(k);
}
END_TEST

/*
 * limiter.h: fg_stage_limit_keyed returns "as fg_stage_limit", which
 * refuses tokens > the burst with FG_ERANGE (a stage that could never admit
 * anything). (Regression: an earlier lib/limit_stage.c accepted it.)
 */
START_TEST(test_stage_tokens_over_burst) {
    fg_keyed_limiter_options o = keyed_opts(1, S, 3, 64);
    fg_keyed_limiter *k = keyed_new(&o);
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_source = FG_KEY_PATH;
    so.tokens = 3;
    fg_stage *s = NULL;
    ck_assert_int_eq(fg_stage_limit_keyed(k, &so, &s), 0);
    fg_stage_unref(s);
    s = NULL;
    so.tokens = 4;
    int r = fg_stage_limit_keyed(k, &so, &s);
    fg_stage_unref(s); /* in case it was made */
    fg_keyed_limiter_free(k);
    ck_assert_msg(r == FG_ERANGE, "tokens 4 > burst 3: got %s", fg_err_name(r));
}
END_TEST

/* Out of memory at each allocation of the stage: an error, no leak. */
START_TEST(test_stage_out_of_memory) {
    fg_keyed_limiter_options o = keyed_opts(1, S, 3, 64);
    fg_keyed_limiter *k = keyed_new(&o);
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    so.key_name = "x-user";
    so.name = "named";
    int ok = 0, failed = 0;
    for (long n = 1; n < 50 && !ok; n++) {
        oom_fail_at = n;
        oom_count = 0;
        oom_live = 0;
        ck_assert_int_eq(fg_set_alloc_funcs(oom_malloc, oom_free), 0);
        fg_stage *s = NULL;
        int r = fg_stage_limit_keyed(k, &so, &s);
        if (r == 0) {
            ok = 1;
            fg_stage_unref(s);
        } else {
            ck_assert_int_eq(r, FG_ENOMEM);
            ck_assert_ptr_null(s);
            failed++;
        }
        ck_assert_int_eq(fg_set_alloc_funcs(NULL, NULL), 0);
        ck_assert_msg(oom_live == 0, "failing allocation %ld leaked %ld blocks", n, oom_live);
    }
    ck_assert_int_eq(ok, 1);
    ck_assert_int_ge(failed, 2); /* at least the state and the stage */
    fg_keyed_limiter_free(k);
}
END_TEST

/* ---- 8. clocks that go backwards ----------------------------------------- */

static const uint64_t back_offsets[] = {1, MS, S, HOUR, 10 * HOUR};

START_TEST(test_clock_backwards) {
    uint64_t back = back_offsets[_i];
    uint64_t t = 10 * HOUR;
    fg_keyed_limiter_options o = keyed_opts(1, S, 3, 100000); /* T = 1 s */
    fg_keyed_limiter *k = keyed_new(&o);                      /* readings go back */
    fg_keyed_limiter *tw = keyed_new(&o);                     /* its twin, all at t */
    uint64_t w1, w2;
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, t, 1, 0, &w1), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(tw, "A", 1, t, 1, 0, &w2), 0);
    for (int i = 0; i < 4; i++) {
        int r1 = fg_keyed_limiter_try(k, "A", 1, t - back, 1, 0, &w1);
        int r2 = fg_keyed_limiter_try(tw, "A", 1, t, 1, 0, &w2);
        ck_assert_int_eq(r1, r2);
        ck_assert_uint_eq(w1, w2);
        ck_assert_uint_eq(fg_keyed_limiter_tokens(k, "A", 1, t - back),
                          fg_keyed_limiter_tokens(tw, "A", 1, t));
    }
    /* The twin: 2 more admitted, then rejected with the hint 1 s. */
    ck_assert_uint_eq(w2, S);
    /* No refund from the early reading, and no lasting debt: the next
     * token comes exactly one interval after t. */
    ck_assert_int_eq(try_s(k, "A", t + S - 1, 1), FG_ELIMITED);
    ck_assert_int_eq(try_s(k, "A", t + S, 1), 0);
    ck_assert_int_eq(try_s(k, "A", t + S, 1), FG_ELIMITED);
    fg_keyed_limiter_free(k);
    fg_keyed_limiter_free(tw);
}
END_TEST

/* Backwards after a rejection, and with smoothing. */
START_TEST(test_clock_backwards_smoothing) {
    uint64_t t = 5 * HOUR;
    fg_keyed_limiter_options o = keyed_opts(1, S, 1, 64);
    o.bucket.max_wait_ns = 2 * S;
    fg_keyed_limiter *k = keyed_new(&o);
    uint64_t w;
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, t, 1, UINT64_MAX, &w), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, t - HOUR, 1, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, t - HOUR, 1, UINT64_MAX, &w), 0);
    ck_assert_uint_eq(w, S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, t - 2 * HOUR, 1, UINT64_MAX, &w), 0);
    ck_assert_uint_eq(w, 2 * S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, 0, 1, UINT64_MAX, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 3 * S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, t + S, 1, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, 2 * S);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, t + S, 1, UINT64_MAX, &w), 0);
    ck_assert_uint_eq(w, 2 * S);
    fg_keyed_limiter_free(k);
}
END_TEST

/* The far future: readings beyond any real clock neither wrap nor refund. */
START_TEST(test_clock_far_future) {
    fg_keyed_limiter_options o = keyed_opts(1, S, 2, 64);
    fg_keyed_limiter *k = keyed_new(&o);
    uint64_t w;
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, UINT64_MAX, 1, 0, &w), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, UINT64_MAX, 1, 0, &w), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, UINT64_MAX, 1, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, S);
    ck_assert_uint_eq(fg_keyed_limiter_tokens(k, "A", 1, UINT64_MAX), 0);
    ck_assert_int_eq(fg_keyed_limiter_try(k, "A", 1, T0, 1, 0, &w), FG_ELIMITED);
    ck_assert_uint_eq(w, S);
    fg_keyed_limiter_free(k);
}
END_TEST

/* ---- the suite ----------------------------------------------------------- */

Suite *fg_suite_keyed(void) {
    Suite *s = suite_create("keyed");
    TCase *tc;

    tc = tcase_create("exact");
    tcase_add_loop_test(tc, test_exact_vs_reference, 0, NEXACT);
    tcase_add_test(tc, test_keys_independent);
    tcase_add_test(tc, test_smoothing_bounds);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("keys");
    tcase_add_test(tc, test_binary_keys);
    tcase_add_test(tc, test_key_copied);
    tcase_add_test(tc, test_key_bounds_default);
    tcase_add_loop_test(tc, test_key_bounds_custom, 0,
                        (int)(sizeof(custom_key_max) / sizeof(custom_key_max[0])));
    tcase_add_test(tc, test_try_arguments);
    tcase_add_test(tc, test_new_arguments);
    tcase_add_test(tc, test_new_out_of_memory);
    suite_add_tcase(s, tc);

    tc = tcase_create("memory");
    tcase_add_test(tc, test_churn_memory_bound);
    tcase_add_loop_test(tc, test_exact_with_evictions, 0,
                        (int)(sizeof(ev_max_keys) / sizeof(ev_max_keys[0])));
    tcase_add_loop_test(tc, test_full_table, 0, 2);
    tcase_add_test(tc, test_eviction_loses_nothing);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("settings");
    tcase_add_test(tc, test_set_rate_keeps_tokens);
    tcase_add_test(tc, test_set_rate_keeps_fraction);
    tcase_add_test(tc, test_set_burst_keeps_tokens);
    tcase_add_test(tc, test_set_invalid_unchanged);
    tcase_add_test(tc, test_set_rate_then_earlier_reading);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_test(tc, test_threads_bound);
    tcase_add_test(tc, test_threads_hot_key_exact);
    tcase_add_test(tc, test_threads_churn_bound);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("stage");
    tcase_add_test(tc, test_stage_header);
    tcase_add_test(tc, test_stage_header_binary_and_first);
    tcase_add_test(tc, test_stage_path);
    tcase_add_test(tc, test_stage_custom);
    tcase_add_loop_test(tc, test_stage_missing, 0, 6);
    tcase_add_test(tc, test_stage_too_long_header);
    tcase_add_test(tc, test_stage_shadow);
    tcase_add_test(tc, test_stage_smoothing);
    tcase_add_test(tc, test_stage_options);
    tcase_add_test(tc, test_stage_tokens_over_burst);
    tcase_add_test(tc, test_stage_out_of_memory);
    suite_add_tcase(s, tc);

    tc = tcase_create("clock");
    tcase_add_loop_test(tc, test_clock_backwards, 0,
                        (int)(sizeof(back_offsets) / sizeof(back_offsets[0])));
    tcase_add_test(tc, test_clock_backwards_smoothing);
    tcase_add_test(tc, test_clock_far_future);
    suite_add_tcase(s, tc);

    return s;
}
