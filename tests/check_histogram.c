/*
 * tests/check_histogram.c - the observability primitives of
 * include/floodgate/histogram.h: fg_counter and fg_histogram.
 *
 * The histogram is checked against an exact reference: every data set is
 * also kept as a sorted array, and every quantile of a sweep of q must be
 * in the same bucket as the exact nearest-rank value (the value of rank
 * max(1, ceil(q n))), equal to it below 128 ns and within 1/128 of it up
 * to 1 h, and the documented constant above (values over 1 h count as
 * 1 h). count_le at every bucket's upper bound must equal the exact number
 * of values at or below it, which also compares histograms bucket for
 * bucket (merge). The data sets: uniform, log-uniform over 1 us .. 1 h, two
 * Pareto tails, and adversarial ones (one value, two far clusters, powers of
 * two and their neighbours, everything below 128 ns, everything above 1 h,
 * n = 1, 2, 3). All randomness is a fixed-seed splitmix64.
 *
 * Concurrency claims are tested with real threads: counter adds from two
 * threads (and from more threads than shards) are exact and a third
 * thread's reads never go backwards; histogram records from two threads are
 * exact bucket for bucket while a third thread takes snapshots that are
 * consistent within themselves; a merge racing records is a stable copy.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

#define US   UINT64_C(1000)
#define MS   (UINT64_C(1000) * US)
#define SEC  (UINT64_C(1000) * MS)
#define MAXV FG_HISTOGRAM_MAX_NS
#define NB   FG_HISTOGRAM_BUCKETS

/* The last bucket's midpoint, which the header promises for values > 1 h. */
#define LAST_MID UINT64_C(3586706395136)

/* ---- helpers ------------------------------------------------------------------------- */

static uint64_t sm64(uint64_t *s) {
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* A double in [0, 1). */
static double unit(uint64_t *s) { return (double)(sm64(s) >> 11) * 0x1.0p-53; }

static uint64_t clampv(uint64_t v) { return v > MAXV ? MAXV : v; }

static uint64_t from_double(double x) {
    if (!(x >= 0))
        return 0;
    if (x >= 18446744073709549568.0) /* the largest double below 2^64 */
        return UINT64_MAX;
    return (uint64_t)x;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static fg_histogram *mk_hist(void) {
    fg_histogram *h = NULL;
    ck_assert_int_eq(fg_histogram_new(&h), 0);
    ck_assert_ptr_nonnull(h);
    return h;
}

static fg_counter *mk_counter(void) {
    fg_counter *c = NULL;
    ck_assert_int_eq(fg_counter_new(&c), 0);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* The bucket of v by the formula the issue gives, written independently of
 * the library: exact below 128, else ((e - 6) << 6) + (v >> (e - 6)). */
static size_t ref_index(uint64_t v) {
    v = clampv(v);
    if (v < 128)
        return (size_t)v;
    int e = 63;
    while (!(v >> e & 1))
        e--;
    return ((size_t)(e - 6) << 6) + (size_t)(v >> (e - 6));
}

/* The exact nearest-rank q-quantile of n sorted values. */
static uint64_t exact_quantile(const uint64_t *sorted, size_t n, double q) {
    double r = ceil(q * (double)n);
    size_t rank = r < 1 ? 1 : (r > (double)n ? n : (size_t)r);
    return sorted[rank - 1];
}

/* How many of n sorted values are <= x once clamped (binary search). */
static size_t count_leq(const uint64_t *sorted, size_t n, uint64_t x) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (clampv(sorted[mid]) <= x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Whether a reported quantile honours the header's bound for exact value x. */
static void assert_quantile_ok(uint64_t rep, uint64_t x, double q, const char *what) {
    uint64_t xc = clampv(x);
    TH_FAST_ASSERT(fg_histogram_bucket_index(rep) == fg_histogram_bucket_index(xc),
                   "%s: q=%.6g: reported %" PRIu64 " is not in the bucket of exact %" PRIu64,
                   what, q, rep, x);
    if (x > MAXV) {
        TH_FAST_ASSERT(rep == LAST_MID,
                       "%s: q=%.6g: exact %" PRIu64 " > 1 h, reported %" PRIu64, what, q, x,
                       rep);
    } else if (x < FG_HISTOGRAM_EXACT_NS) {
        TH_FAST_ASSERT(rep == x, "%s: q=%.6g: exact %" PRIu64 " < 128, reported %" PRIu64,
                       what, q, x, rep);
    } else {
        uint64_t d = rep > x ? rep - x : x - rep;
        TH_FAST_ASSERT(d * 128 < x,
                       "%s: q=%.6g: reported %" PRIu64 ", exact %" PRIu64 ": error %" PRIu64
                       " is not below 1/128",
                       what, q, rep, x, d);
    }
}

/* The quantiles every data set is checked at. */
static double sweep_q(int j) {
    static const double fixed[] = {0,     1e-9,   1e-6,   0.001,   0.01,     0.05, 0.1,
                                   0.25,  0.5,    0.75,   0.9,     0.95,     0.99, 0.995,
                                   0.999, 0.9995, 0.9999, 0.99999, 0.999999, 1.0};
    int nf = TH_NELEM(fixed);
    return j < nf ? fixed[j] : (double)(j - nf) / 200.0; /* then 0, 0.005, ..., 1 */
}
#define NSWEEP (20 + 201)

/* Per-bucket cumulative counts of the histogram, through count_le at each
 * bucket's upper bound (exact there), asserting they are monotone. */
static void hist_cum(const fg_histogram *h, uint64_t *cum) {
    for (size_t i = 0; i < NB; i++) {
        cum[i] = fg_histogram_count_le(h, fg_histogram_bucket_upper(i));
        TH_FAST_ASSERT(i == 0 || cum[i] >= cum[i - 1], "count_le not monotone at bucket %zu",
                       i);
    }
}

/* The same from sorted values (clamped as the histogram clamps them). */
static void ref_cum(const uint64_t *sorted, size_t n, uint64_t *cum) {
    size_t at = 0;
    for (size_t i = 0; i < NB; i++) {
        uint64_t up = fg_histogram_bucket_upper(i);
        while (at < n && clampv(sorted[at]) <= up)
            at++;
        cum[i] = at;
    }
}

static void assert_same_buckets(const fg_histogram *a, const fg_histogram *b,
                                const char *what) {
    static uint64_t ca[NB], cb[NB];
    hist_cum(a, ca);
    hist_cum(b, cb);
    for (size_t i = 0; i < NB; i++)
        TH_FAST_ASSERT(ca[i] == cb[i], "%s: bucket %zu: cumulative %" PRIu64 " vs %" PRIu64,
                       what, i, ca[i], cb[i]);
}

static void assert_same_stats(const fg_histogram_stats *a, const fg_histogram_stats *b) {
    ck_assert_uint_eq(a->count, b->count);
    ck_assert_uint_eq(a->sum_ns, b->sum_ns);
    ck_assert_uint_eq(a->min_ns, b->min_ns);
    ck_assert_uint_eq(a->max_ns, b->max_ns);
    ck_assert_uint_eq(a->p50_ns, b->p50_ns);
    ck_assert_uint_eq(a->p90_ns, b->p90_ns);
    ck_assert_uint_eq(a->p99_ns, b->p99_ns);
    ck_assert_uint_eq(a->p999_ns, b->p999_ns);
}

/* ---- data sets ----------------------------------------------------------------------- */

typedef size_t (*gen_fn)(uint64_t *v, size_t cap, uint64_t *seed, uint64_t arg);

#define BIG 100000

static size_t gen_uniform(uint64_t *v, size_t cap, uint64_t *seed, uint64_t hi) {
    for (size_t i = 0; i < cap; i++)
        v[i] = sm64(seed) % (hi + 1);
    return cap;
}

static size_t gen_log_uniform(uint64_t *v, size_t cap, uint64_t *seed, uint64_t arg) {
    const double lo = log(1e3), hi = log((double)MAXV);
    (void)arg;
    for (size_t i = 0; i < cap; i++) {
        v[i] = from_double(exp(lo + unit(seed) * (hi - lo)));
        if (v[i] < US)
            v[i] = US;
        if (v[i] > MAXV)
            v[i] = MAXV;
    }
    return cap;
}

/* Pareto with scale xm = 1 us and shape alpha = arg / 100. */
static size_t gen_pareto(uint64_t *v, size_t cap, uint64_t *seed, uint64_t arg) {
    double alpha = (double)arg / 100.0;
    for (size_t i = 0; i < cap; i++) {
        double u = 1.0 - unit(seed); /* (0, 1] */
        v[i] = from_double(1e3 / pow(u, 1.0 / alpha));
    }
    return cap;
}

static size_t gen_one_value(uint64_t *v, size_t cap, uint64_t *seed, uint64_t value) {
    (void)seed;
    size_t n = cap < 1000 ? cap : 1000;
    for (size_t i = 0; i < n; i++)
        v[i] = value;
    return n;
}

/* 90 % near 100 ns (exact), 10 % near 30 min, shuffled. */
static size_t gen_two_clusters(uint64_t *v, size_t cap, uint64_t *seed, uint64_t arg) {
    (void)arg;
    for (size_t i = 0; i < cap; i++) {
        if (sm64(seed) % 10 != 0)
            v[i] = 80 + sm64(seed) % 41;
        else
            v[i] = 1800 * SEC - SEC + sm64(seed) % (2 * SEC);
    }
    return cap;
}

/* 2^k - 1, 2^k and 2^k + 1 for every k, each a pseudo-random 1 .. 5 times. */
static size_t gen_edges(uint64_t *v, size_t cap, uint64_t *seed, uint64_t arg) {
    size_t n = 0;
    (void)arg;
    for (int k = 0; k < 64; k++) {
        uint64_t p = UINT64_C(1) << k;
        uint64_t cand[3] = {p - 1, p, p + 1};
        for (int c = 0; c < 3; c++) {
            uint64_t times = 1 + sm64(seed) % 5;
            for (uint64_t t = 0; t < times && n < cap; t++)
                v[n++] = cand[c];
        }
    }
    return n;
}

/* Every value 0 .. 127, each 1 .. 50 times. */
static size_t gen_below_128(uint64_t *v, size_t cap, uint64_t *seed, uint64_t arg) {
    size_t n = 0;
    (void)arg;
    for (uint64_t x = 0; x < 128; x++) {
        uint64_t times = 1 + sm64(seed) % 50;
        for (uint64_t t = 0; t < times && n < cap; t++)
            v[n++] = x;
    }
    return n;
}

/* Values in (1 h, 2^64). */
static size_t gen_above_max(uint64_t *v, size_t cap, uint64_t *seed, uint64_t arg) {
    (void)arg;
    size_t n = cap < 10000 ? cap : 10000;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = sm64(seed);
        v[i] = i % 3 == 0
                   ? MAXV + 1 + r % SEC
                   : (i % 3 == 1 ? UINT64_MAX - r % 5 : MAXV + 1 + r % (UINT64_MAX - MAXV));
    }
    return n;
}

/* A mixture over every region, including the bounds themselves. */
static size_t gen_mixed(uint64_t *v, size_t cap, uint64_t *seed, uint64_t arg) {
    (void)arg;
    for (size_t i = 0; i < cap; i++) {
        switch (sm64(seed) % 6) {
        case 0:
            v[i] = sm64(seed) % 128;
            break;
        case 1:
            v[i] = sm64(seed) % (10 * US);
            break;
        case 2:
            v[i] = sm64(seed) % (100 * MS);
            break;
        case 3:
            v[i] = MAXV - sm64(seed) % 1000;
            break;
        case 4:
            v[i] = MAXV + sm64(seed) % 1000;
            break;
        default:
            v[i] = sm64(seed) >> (sm64(seed) % 64);
        }
    }
    return cap;
}

typedef struct dataset {
    const char *name;
    gen_fn gen;
    uint64_t arg;
    size_t n; /* requested size */
} dataset;

static const dataset datasets[] = {
    {"uniform 0..10ms", gen_uniform, 10 * MS, BIG},
    {"uniform 0..1h", gen_uniform, MAXV, BIG},
    {"uniform 0..1000", gen_uniform, 1000, BIG},
    {"log-uniform 1us..1h", gen_log_uniform, 0, BIG},
    {"pareto alpha 1.16", gen_pareto, 116, BIG},
    {"pareto alpha 0.5", gen_pareto, 50, BIG},
    {"one value 0", gen_one_value, 0, BIG},
    {"one value 1", gen_one_value, 1, BIG},
    {"one value 127", gen_one_value, 127, BIG},
    {"one value 128", gen_one_value, 128, BIG},
    {"one value 129", gen_one_value, 129, BIG},
    {"one value 1ms", gen_one_value, MS, BIG},
    {"one value 2^41-1", gen_one_value, (UINT64_C(1) << 41) - 1, BIG},
    {"one value 1h", gen_one_value, MAXV, BIG},
    {"one value 1h+1", gen_one_value, MAXV + 1, BIG},
    {"one value UINT64_MAX", gen_one_value, UINT64_MAX, BIG},
    {"two clusters 100ns / 30min", gen_two_clusters, 0, BIG},
    {"edges 2^k-1, 2^k, 2^k+1", gen_edges, 0, BIG},
    {"every value below 128", gen_below_128, 0, BIG},
    {"above 1h", gen_above_max, 0, BIG},
    {"mixed", gen_mixed, 0, BIG},
    {"n=1", gen_uniform, 10 * SEC, 1},
    {"n=2", gen_uniform, 10 * SEC, 2},
    {"n=3", gen_log_uniform, 0, 3},
    {"n=7", gen_edges, 0, 7},
};
#define NDATASETS TH_NELEM(datasets)

/* Generate data set `which` (values in order of recording). */
static size_t make_dataset(int which, uint64_t *v) {
    uint64_t seed = UINT64_C(0x5eed) + (uint64_t)which * 7919;
    const dataset *d = &datasets[which];
    return d->gen(v, d->n, &seed, d->arg);
}

static uint64_t values[BIG], sorted[BIG];
static uint64_t cum_h[NB], cum_r[NB];

/* ---- geometry -------------------------------------------------------------------------- */

START_TEST(test_geometry_contiguous) {
    ck_assert_uint_eq(fg_histogram_bucket_lower(0), 0);
    ck_assert_uint_eq(fg_histogram_bucket_upper(0), 0);
    for (size_t i = 0; i < NB; i++) {
        uint64_t lo = fg_histogram_bucket_lower(i), up = fg_histogram_bucket_upper(i);
        TH_FAST_ASSERT(lo <= up, "bucket %zu: lower %" PRIu64 " > upper %" PRIu64, i, lo, up);
        if (i > 0)
            TH_FAST_ASSERT(lo == fg_histogram_bucket_upper(i - 1) + 1,
                           "bucket %zu does not start where %zu ends", i, i - 1);
        TH_FAST_ASSERT(fg_histogram_bucket_index(lo) == i &&
                           fg_histogram_bucket_index(up) == i,
                       "bucket %zu: its bounds index elsewhere", i);
        TH_FAST_ASSERT(ref_index(lo) == i && ref_index(up) == i,
                       "bucket %zu: the issue's formula disagrees", i);
        uint64_t w = up - lo + 1;
        if (i < FG_HISTOGRAM_EXACT_NS) {
            TH_FAST_ASSERT(lo == i && w == 1, "bucket %zu below 128 is not exact", i);
        } else if (i + 1 < NB) {
            TH_FAST_ASSERT((w & (w - 1)) == 0 && w * 64 <= lo,
                           "bucket %zu: width %" PRIu64 " not a power of two <= lower/64", i,
                           w);
        }
    }
    /* The ends. */
    ck_assert_uint_eq(fg_histogram_bucket_index(MAXV), NB - 1);
    ck_assert_uint_eq(fg_histogram_bucket_index(MAXV + 1), NB - 1);
    ck_assert_uint_eq(fg_histogram_bucket_index(UINT64_MAX), NB - 1);
    ck_assert_uint_eq(fg_histogram_bucket_upper(NB - 1), MAXV);
    ck_assert_uint_eq(fg_histogram_bucket_lower(NB - 1), UINT64_C(104) << 35);
    ck_assert_uint_lt(fg_histogram_bucket_index(MAXV - MAXV / 100), NB - 1);
    ck_assert_uint_eq(fg_histogram_bucket_lower(NB), MAXV + 1);
    ck_assert_uint_eq(fg_histogram_bucket_upper(NB), UINT64_MAX);
    ck_assert_uint_eq(fg_histogram_bucket_upper(SIZE_MAX), UINT64_MAX);
    /* The first buckets past the exact range: width 2. */
    ck_assert_uint_eq(fg_histogram_bucket_index(128), 128);
    ck_assert_uint_eq(fg_histogram_bucket_index(129), 128);
    ck_assert_uint_eq(fg_histogram_bucket_index(130), 129);
    ck_assert_uint_eq(fg_histogram_bucket_index(255), 191);
    ck_assert_uint_eq(fg_histogram_bucket_index(256), 192);
}
END_TEST

START_TEST(test_geometry_formula_random) {
    uint64_t seed = 42;
    for (int j = 0; j < 1000000; j++) {
        uint64_t v = sm64(&seed) >> (sm64(&seed) % 64);
        TH_FAST_ASSERT(fg_histogram_bucket_index(v) == ref_index(v), "index(%" PRIu64 ")", v);
        size_t i = fg_histogram_bucket_index(v);
        TH_FAST_ASSERT(fg_histogram_bucket_lower(i) <= clampv(v) &&
                           clampv(v) <= fg_histogram_bucket_upper(i),
                       "%" PRIu64 " outside its bucket", v);
    }
    for (uint64_t v = 0; v < 128; v++)
        ck_assert_uint_eq(fg_histogram_bucket_index(v), v);
}
END_TEST

/* ---- quantiles against the exact reference ------------------------------------------- */

START_TEST(test_dataset) {
    const char *name = datasets[_i].name;
    size_t n = make_dataset(_i, values);
    ck_assert_uint_ge(n, 1);
    fg_histogram *h = mk_hist();
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        fg_histogram_record(h, values[i]);
        sum += clampv(values[i]);
    }
    memcpy(sorted, values, n * sizeof(*values));
    qsort(sorted, n, sizeof(*sorted), cmp_u64);

    /* Quantiles: a sweep, and j / n for small n (the rank boundaries). */
    for (int j = 0; j < NSWEEP; j++) {
        double q = sweep_q(j);
        assert_quantile_ok(fg_histogram_quantile(h, q), exact_quantile(sorted, n, q), q, name);
    }
    if (n <= 10) {
        for (size_t j = 0; j <= n; j++) {
            double q = (double)j / (double)n;
            assert_quantile_ok(fg_histogram_quantile(h, q), exact_quantile(sorted, n, q), q,
                               name);
            q = nextafter(q, 2.0);
            if (q <= 1.0)
                assert_quantile_ok(fg_histogram_quantile(h, q), exact_quantile(sorted, n, q),
                                   q, name);
        }
    }
    /* q = 0 and q = 1: the lowest and highest non-empty buckets. */
    ck_assert_uint_eq(fg_histogram_bucket_index(fg_histogram_quantile(h, 0)),
                      fg_histogram_bucket_index(sorted[0]));
    ck_assert_uint_eq(fg_histogram_bucket_index(fg_histogram_quantile(h, 1)),
                      fg_histogram_bucket_index(sorted[n - 1]));

    /* The snapshot: the same quantiles, exact count and sum, bracketing bounds. */
    fg_histogram_stats st;
    ck_assert_int_eq(fg_histogram_snapshot(h, &st), 0);
    ck_assert_uint_eq(st.count, n);
    ck_assert_uint_eq(st.sum_ns, sum);
    ck_assert_uint_eq(st.p50_ns, fg_histogram_quantile(h, 0.5));
    ck_assert_uint_eq(st.p90_ns, fg_histogram_quantile(h, 0.9));
    ck_assert_uint_eq(st.p99_ns, fg_histogram_quantile(h, 0.99));
    ck_assert_uint_eq(st.p999_ns, fg_histogram_quantile(h, 0.999));
    assert_quantile_ok(st.p50_ns, exact_quantile(sorted, n, 0.5), 0.5, name);
    assert_quantile_ok(st.p90_ns, exact_quantile(sorted, n, 0.9), 0.9, name);
    assert_quantile_ok(st.p99_ns, exact_quantile(sorted, n, 0.99), 0.99, name);
    assert_quantile_ok(st.p999_ns, exact_quantile(sorted, n, 0.999), 0.999, name);
    uint64_t lo = clampv(sorted[0]), hi = clampv(sorted[n - 1]);
    ck_assert_uint_le(st.min_ns, lo);
    ck_assert_uint_eq(st.min_ns, fg_histogram_bucket_lower(fg_histogram_bucket_index(lo)));
    ck_assert_uint_ge(st.max_ns, hi);
    ck_assert_uint_eq(st.max_ns, fg_histogram_bucket_upper(fg_histogram_bucket_index(hi)));
    ck_assert_uint_le(st.max_ns, MAXV);
    if (lo < FG_HISTOGRAM_EXACT_NS)
        ck_assert_uint_eq(st.min_ns, lo);
    if (hi < FG_HISTOGRAM_EXACT_NS)
        ck_assert_uint_eq(st.max_ns, hi);
    ck_assert_uint_le(st.min_ns, st.p50_ns);
    ck_assert_uint_le(st.p50_ns, st.p90_ns);
    ck_assert_uint_le(st.p90_ns, st.p99_ns);
    ck_assert_uint_le(st.p99_ns, st.p999_ns);
    ck_assert_uint_le(st.p999_ns, st.max_ns);

    /* count_le: exact at every bucket's upper bound, monotone, the count at 1 h. */
    hist_cum(h, cum_h);
    ref_cum(sorted, n, cum_r);
    for (size_t i = 0; i < NB; i++)
        TH_FAST_ASSERT(cum_h[i] == cum_r[i],
                       "%s: count_le(upper(%zu) = %" PRIu64 ") = %" PRIu64 ", exact %" PRIu64,
                       name, i, fg_histogram_bucket_upper(i), cum_h[i], cum_r[i]);
    ck_assert_uint_eq(fg_histogram_count_le(h, MAXV), n);
    ck_assert_uint_eq(fg_histogram_count_le(h, UINT64_MAX), n);
    /* Between bucket edges: never more than the exact count, never less than
     * the exact count below the bucket that holds ns; monotone. */
    uint64_t seed = 99, prev = 0;
    for (int j = 0; j < 4000; j++) {
        uint64_t ns = j < 200
                          ? (uint64_t)j * 7
                          : (uint64_t)(j - 200) * (MAXV / 3800) + sm64(&seed) % (MAXV / 3800);
        uint64_t got = fg_histogram_count_le(h, ns);
        uint64_t bucket_lo = fg_histogram_bucket_lower(fg_histogram_bucket_index(ns));
        size_t le = count_leq(sorted, n, ns);
        size_t below = bucket_lo == 0 ? 0 : count_leq(sorted, n, bucket_lo - 1);
        TH_FAST_ASSERT(got <= le && got >= below,
                       "%s: count_le(%" PRIu64 ") = %" PRIu64 " not in [%zu, %zu]", name, ns,
                       got, below, le);
        TH_FAST_ASSERT(got >= prev, "%s: count_le not monotone at %" PRIu64, name, ns);
        prev = got;
    }
    fg_histogram_free(h);
}
END_TEST

/* The bound at its tightest: for every bucket from 128 ns to 1 h, a data set
 * of its lower and its upper bound only, so the quantiles are those exact
 * values and the reported midpoint is as far from them as it ever gets. */
START_TEST(test_bound_every_bucket) {
    fg_histogram *h = mk_hist();
    for (size_t i = FG_HISTOGRAM_EXACT_NS; i < NB; i++) {
        uint64_t lo = fg_histogram_bucket_lower(i), up = fg_histogram_bucket_upper(i);
        fg_histogram_reset(h);
        fg_histogram_record(h, lo);
        fg_histogram_record(h, up);
        uint64_t mid = fg_histogram_quantile(h, 0.5);
        ck_assert_uint_eq(mid, fg_histogram_quantile(h, 1.0));
        ck_assert_uint_eq(mid, lo + (up - lo) / 2);
        assert_quantile_ok(mid, lo, 0.5, "lower bound");
        assert_quantile_ok(mid, up, 1.0, "upper bound");
    }
    /* Above 1 h: the documented constant, whatever the value. */
    fg_histogram_reset(h);
    fg_histogram_record(h, UINT64_MAX);
    ck_assert_uint_eq(fg_histogram_quantile(h, 0.5), LAST_MID);
    ck_assert_uint_ge(LAST_MID, MAXV - MAXV / 128);
    fg_histogram_free(h);
}
END_TEST

/* ---- empty, bad arguments, record_n, reset ------------------------------------------- */

START_TEST(test_empty) {
    fg_histogram *h = mk_hist();
    fg_histogram_stats st;
    memset(&st, 0xAB, sizeof(st));
    ck_assert_int_eq(fg_histogram_snapshot(h, &st), 0);
    ck_assert(th_is_zero(&st, sizeof(st)));
    for (int j = 0; j < NSWEEP; j++)
        ck_assert_uint_eq(fg_histogram_quantile(h, sweep_q(j)), 0);
    ck_assert_uint_eq(fg_histogram_count_le(h, 0), 0);
    ck_assert_uint_eq(fg_histogram_count_le(h, UINT64_MAX), 0);
    fg_histogram_free(h);
}
END_TEST

START_TEST(test_bad_arguments) {
    fg_histogram *h = mk_hist(), *g = mk_hist();
    fg_histogram_stats st;
    fg_histogram_record(h, 1000);

    ck_assert_int_eq(fg_histogram_new(NULL), FG_EINVAL);
    fg_histogram_free(NULL);
    fg_histogram_record(NULL, 5);
    fg_histogram_record_n(NULL, 5, 5);
    fg_histogram_reset(NULL);
    ck_assert_int_eq(fg_histogram_merge(NULL, h), FG_EINVAL);
    ck_assert_int_eq(fg_histogram_merge(h, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_histogram_merge(NULL, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_histogram_merge(h, h), FG_EINVAL);
    ck_assert_int_eq(fg_histogram_snapshot(NULL, &st), FG_EINVAL);
    ck_assert_int_eq(fg_histogram_snapshot(h, NULL), FG_EINVAL);
    ck_assert_uint_eq(fg_histogram_quantile(NULL, 0.5), 0);
    ck_assert_uint_eq(fg_histogram_count_le(NULL, UINT64_MAX), 0);

    /* q outside [0, 1] or NaN: 0, not clamped. */
    uint64_t mid = fg_histogram_quantile(h, 0.5);
    ck_assert_uint_eq(mid, 1003); /* bucket [1000, 1007] */
    ck_assert_uint_eq(fg_histogram_quantile(h, -0.0), mid);
    ck_assert_uint_eq(fg_histogram_quantile(h, -1e-12), 0);
    ck_assert_uint_eq(fg_histogram_quantile(h, -1.0), 0);
    ck_assert_uint_eq(fg_histogram_quantile(h, nextafter(1.0, 2.0)), 0);
    ck_assert_uint_eq(fg_histogram_quantile(h, 2.0), 0);
    ck_assert_uint_eq(fg_histogram_quantile(h, (double)NAN), 0);
    ck_assert_uint_eq(fg_histogram_quantile(h, (double)INFINITY), 0);
    ck_assert_uint_eq(fg_histogram_quantile(h, -(double)INFINITY), 0);

    /* Nothing above changed either histogram. */
    ck_assert_int_eq(fg_histogram_snapshot(h, &st), 0);
    ck_assert_uint_eq(st.count, 1);
    ck_assert_uint_eq(st.sum_ns, 1000);
    ck_assert_int_eq(fg_histogram_snapshot(g, &st), 0);
    ck_assert_uint_eq(st.count, 0);

    ck_assert_int_eq(fg_counter_new(NULL), FG_EINVAL);
    fg_counter_free(NULL);
    fg_counter_add(NULL, 1);
    ck_assert_uint_eq(fg_counter_read(NULL), 0);
    fg_histogram_free(h);
    fg_histogram_free(g);
}
END_TEST

START_TEST(test_record_n) {
    fg_histogram *a = mk_hist(), *b = mk_hist();
    uint64_t seed = 7;
    for (int j = 0; j < 2000; j++) {
        uint64_t v = sm64(&seed) >> (sm64(&seed) % 64), times = sm64(&seed) % 6;
        fg_histogram_record_n(a, v, times);
        for (uint64_t t = 0; t < times; t++)
            fg_histogram_record(b, v);
    }
    assert_same_buckets(a, b, "record_n vs record");
    fg_histogram_stats sa, sb;
    ck_assert_int_eq(fg_histogram_snapshot(a, &sa), 0);
    ck_assert_int_eq(fg_histogram_snapshot(b, &sb), 0);
    assert_same_stats(&sa, &sb);

    /* count 0 records nothing; the sum wraps modulo 2^64. */
    fg_histogram_reset(a);
    fg_histogram_record_n(a, 12345, 0);
    ck_assert_uint_eq(fg_histogram_count_le(a, UINT64_MAX), 0);
    fg_histogram_record_n(a, UINT64_C(1) << 40, UINT64_C(1) << 30);
    fg_histogram_record_n(a, 3, 1);
    ck_assert_int_eq(fg_histogram_snapshot(a, &sa), 0);
    ck_assert_uint_eq(sa.count, (UINT64_C(1) << 30) + 1);
    ck_assert_uint_eq(sa.sum_ns, 3);
    ck_assert_uint_eq(sa.min_ns, 3);
    ck_assert_uint_eq(sa.p50_ns, fg_histogram_quantile(a, 0.5));
    assert_quantile_ok(sa.p50_ns, UINT64_C(1) << 40, 0.5, "record_n");
    /* A value above 1 h adds 1 h to the sum. */
    fg_histogram_reset(a);
    fg_histogram_record_n(a, UINT64_MAX, 3);
    ck_assert_int_eq(fg_histogram_snapshot(a, &sa), 0);
    ck_assert_uint_eq(sa.sum_ns, 3 * MAXV);
    ck_assert_uint_eq(sa.max_ns, MAXV);
    ck_assert_uint_eq(sa.p999_ns, LAST_MID);
    ck_assert_uint_eq(fg_histogram_count_le(a, MAXV - 1), 0);
    ck_assert_uint_eq(fg_histogram_count_le(a, MAXV), 3);
    fg_histogram_free(a);
    fg_histogram_free(b);
}
END_TEST

START_TEST(test_reset) {
    fg_histogram *h = mk_hist();
    fg_histogram_stats st;
    for (uint64_t v = 0; v < 5000; v++)
        fg_histogram_record(h, v * v * v);
    fg_histogram_reset(h);
    ck_assert_int_eq(fg_histogram_snapshot(h, &st), 0);
    ck_assert(th_is_zero(&st, sizeof(st)));
    ck_assert_uint_eq(fg_histogram_count_le(h, UINT64_MAX), 0);
    fg_histogram_record(h, 42);
    ck_assert_int_eq(fg_histogram_snapshot(h, &st), 0);
    ck_assert_uint_eq(st.count, 1);
    ck_assert_uint_eq(st.sum_ns, 42);
    ck_assert_uint_eq(st.min_ns, 42);
    ck_assert_uint_eq(st.max_ns, 42);
    ck_assert_uint_eq(st.p999_ns, 42);
    fg_histogram_free(h);
}
END_TEST

/* count_le is bucket-granular: a value below ns but in ns's bucket is left out. */
START_TEST(test_count_le_granular) {
    fg_histogram *h = mk_hist();
    ck_assert_uint_eq(fg_histogram_bucket_lower(fg_histogram_bucket_index(1000)), 1000);
    ck_assert_uint_eq(fg_histogram_bucket_upper(fg_histogram_bucket_index(1000)), 1007);
    fg_histogram_record(h, 1001);
    ck_assert_uint_eq(fg_histogram_count_le(h, 999), 0);
    ck_assert_uint_eq(fg_histogram_count_le(h, 1001), 0); /* same bucket: left out */
    ck_assert_uint_eq(fg_histogram_count_le(h, 1006), 0);
    ck_assert_uint_eq(fg_histogram_count_le(h, 1007), 1); /* the bucket's upper bound */
    ck_assert_uint_eq(fg_histogram_count_le(h, 1008), 1);
    /* Below 128 it is exact at every ns. */
    fg_histogram_record(h, 100);
    ck_assert_uint_eq(fg_histogram_count_le(h, 99), 0);
    ck_assert_uint_eq(fg_histogram_count_le(h, 100), 1);
    /* A Prometheus-style ladder: monotone, ending at the count. */
    static const uint64_t le[] = {100, 500, 1000, 5000, 10 * US, 100 * US, MS, SEC, MAXV};
    uint64_t seed = 3, prev = 0;
    for (int j = 0; j < 10000; j++)
        fg_histogram_record(h, sm64(&seed) % (2 * SEC));
    for (int j = 0; j < TH_NELEM(le); j++) {
        uint64_t c = fg_histogram_count_le(h, le[j]);
        ck_assert_uint_ge(c, prev);
        prev = c;
    }
    ck_assert_uint_eq(prev, 10002);
    fg_histogram_free(h);
}
END_TEST

/* ---- merge ----------------------------------------------------------------------------- */

START_TEST(test_merge_union) {
    size_t n = make_dataset(_i, values);
    const char *name = datasets[_i].name;
    fg_histogram *a = mk_hist(), *b = mk_hist(), *u = mk_hist(), *copy = mk_hist();
    for (size_t i = 0; i < n; i++) {
        fg_histogram_record(i % 3 == 0 ? a : b, values[i]);
        fg_histogram_record(u, values[i]);
    }
    ck_assert_int_eq(fg_histogram_merge(a, b), 0);
    assert_same_buckets(a, u, name);
    fg_histogram_stats sa, su, sc;
    ck_assert_int_eq(fg_histogram_snapshot(a, &sa), 0);
    ck_assert_int_eq(fg_histogram_snapshot(u, &su), 0);
    assert_same_stats(&sa, &su);
    for (int j = 0; j < NSWEEP; j++)
        TH_FAST_ASSERT(fg_histogram_quantile(a, sweep_q(j)) ==
                           fg_histogram_quantile(u, sweep_q(j)),
                       "%s: merged quantile %g differs from the union's", name, sweep_q(j));

    /* Into an empty histogram: a copy, which later records into u do not move. */
    ck_assert_int_eq(fg_histogram_merge(copy, u), 0);
    assert_same_buckets(copy, u, name);
    ck_assert_int_eq(fg_histogram_snapshot(copy, &sc), 0);
    assert_same_stats(&sc, &su);
    fg_histogram_record(u, 777);
    ck_assert_int_eq(fg_histogram_snapshot(copy, &sc), 0);
    assert_same_stats(&sc, &sa);
    /* b is unchanged by being merged from. */
    ck_assert_uint_eq(fg_histogram_count_le(b, UINT64_MAX), n - (n + 2) / 3);
    fg_histogram_free(a);
    fg_histogram_free(b);
    fg_histogram_free(u);
    fg_histogram_free(copy);
}
END_TEST

/* ---- threads ---------------------------------------------------------------------------- */

#define THREAD_OPS 1000000

typedef struct counter_job {
    fg_counter *c;
    pthread_barrier_t *start;
    uint64_t adds, each;
} counter_job;

static void *counter_adder(void *arg) {
    counter_job *j = arg;
    pthread_barrier_wait(j->start);
    for (uint64_t i = 0; i < j->adds; i++)
        fg_counter_add(j->c, j->each);
    return NULL;
}

typedef struct counter_reader {
    const fg_counter *c;
    atomic_int *stop;
    pthread_barrier_t *start;
    uint64_t reads, backwards, last;
} counter_reader;

static void *counter_read_loop(void *arg) {
    counter_reader *r = arg;
    pthread_barrier_wait(r->start);
    do {
        uint64_t v = fg_counter_read(r->c);
        r->backwards += v < r->last;
        r->last = v;
        r->reads++;
    } while (!atomic_load(r->stop));
    return NULL;
}

START_TEST(test_counter_basic) {
    fg_counter *c = mk_counter();
    ck_assert_uint_eq(fg_counter_read(c), 0);
    fg_counter_add(c, 5);
    fg_counter_add(c, 0);
    ck_assert_uint_eq(fg_counter_read(c), 5);
    fg_counter_add(c, UINT64_MAX); /* wraps: 5 + 2^64 - 1 */
    ck_assert_uint_eq(fg_counter_read(c), 4);
    fg_counter *d = mk_counter();
    fg_counter_add(d, 1);
    ck_assert_uint_eq(fg_counter_read(c), 4);
    ck_assert_uint_eq(fg_counter_read(d), 1);
    fg_counter_free(c);
    fg_counter_free(d);
}
END_TEST

/* Two threads x 1e6 adds: exactly 2e6; a third thread's reads never go back. */
START_TEST(test_counter_threads_exact) {
    fg_counter *c = mk_counter();
    pthread_barrier_t start;
    atomic_int stop = 0;
    ck_assert_int_eq(pthread_barrier_init(&start, NULL, 3), 0);
    counter_job jobs[2] = {{c, &start, THREAD_OPS, 1}, {c, &start, THREAD_OPS, 1}};
    counter_reader r = {c, &stop, &start, 0, 0, 0};
    pthread_t th[2], rd;
    ck_assert_int_eq(pthread_create(&rd, NULL, counter_read_loop, &r), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, counter_adder, &jobs[i]), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    atomic_store(&stop, 1);
    ck_assert_int_eq(pthread_join(rd, NULL), 0);
    pthread_barrier_destroy(&start);
    ck_assert_uint_eq(fg_counter_read(c), 2 * THREAD_OPS);
    ck_assert_uint_eq(r.backwards, 0);
    ck_assert_uint_le(r.last, 2 * THREAD_OPS);
    ck_assert_uint_ge(r.reads, 1);
    fg_counter_free(c);
}
END_TEST

/* More threads than shards (some share one): still exact. */
#define MANY_THREADS 20

START_TEST(test_counter_many_threads) {
    fg_counter *c = mk_counter();
    pthread_barrier_t start;
    ck_assert_int_eq(pthread_barrier_init(&start, NULL, MANY_THREADS), 0);
    counter_job jobs[MANY_THREADS];
    pthread_t th[MANY_THREADS];
    uint64_t want = 0;
    for (int i = 0; i < MANY_THREADS; i++) {
        jobs[i] = (counter_job){c, &start, 20000, (uint64_t)i + 1};
        want += 20000 * ((uint64_t)i + 1);
        ck_assert_int_eq(pthread_create(&th[i], NULL, counter_adder, &jobs[i]), 0);
    }
    for (int i = 0; i < MANY_THREADS; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    pthread_barrier_destroy(&start);
    ck_assert_uint_eq(fg_counter_read(c), want);
    fg_counter_free(c);
}
END_TEST

/* Thread t records THREAD_OPS values from its own fixed-seed sequence. */
static uint64_t thread_value(uint64_t *seed) {
    uint64_t r = sm64(seed);
    return (r & 0xffffffffffu) >> (r >> 58); /* 0 .. 2^40, spread over the scales */
}

typedef struct hist_job {
    fg_histogram *h;
    pthread_barrier_t *start;
    uint64_t seed;
} hist_job;

static void *hist_recorder(void *arg) {
    hist_job *j = arg;
    uint64_t seed = j->seed;
    pthread_barrier_wait(j->start);
    for (int i = 0; i < THREAD_OPS; i++)
        fg_histogram_record(j->h, thread_value(&seed));
    return NULL;
}

typedef struct hist_reader {
    const fg_histogram *h;
    atomic_int *stop;
    pthread_barrier_t *start;
    uint64_t snapshots, bad, last_count;
} hist_reader;

/* Snapshots while records run: the count never goes back, and each
 * snapshot is consistent within itself. */
static void *hist_snapshot_loop(void *arg) {
    hist_reader *r = arg;
    pthread_barrier_wait(r->start);
    do {
        fg_histogram_stats st;
        if (fg_histogram_snapshot(r->h, &st) != 0) {
            r->bad++;
            break;
        }
        r->bad += st.count < r->last_count;
        r->last_count = st.count;
        if (st.count > 0)
            r->bad +=
                !(st.min_ns <= st.p50_ns && st.p50_ns <= st.p90_ns && st.p90_ns <= st.p99_ns &&
                  st.p99_ns <= st.p999_ns && st.p999_ns <= st.max_ns);
        r->snapshots++;
    } while (!atomic_load(r->stop));
    return NULL;
}

START_TEST(test_histogram_threads_exact) {
    fg_histogram *h = mk_hist(), *ref = mk_hist();
    pthread_barrier_t start;
    atomic_int stop = 0;
    ck_assert_int_eq(pthread_barrier_init(&start, NULL, 3), 0);
    hist_job jobs[2] = {{h, &start, 1}, {h, &start, 2}};
    hist_reader r = {h, &stop, &start, 0, 0, 0};
    pthread_t th[2], rd;
    ck_assert_int_eq(pthread_create(&rd, NULL, hist_snapshot_loop, &r), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, hist_recorder, &jobs[i]), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    atomic_store(&stop, 1);
    ck_assert_int_eq(pthread_join(rd, NULL), 0);
    pthread_barrier_destroy(&start);

    /* The same values recorded from one thread. */
    uint64_t sum = 0;
    for (int t = 0; t < 2; t++) {
        uint64_t seed = jobs[t].seed;
        for (int i = 0; i < THREAD_OPS; i++) {
            uint64_t v = thread_value(&seed);
            fg_histogram_record(ref, v);
            sum += v;
        }
    }
    fg_histogram_stats st, sr;
    ck_assert_int_eq(fg_histogram_snapshot(h, &st), 0);
    ck_assert_uint_eq(st.count, 2 * THREAD_OPS);
    ck_assert_uint_eq(st.sum_ns, sum);
    ck_assert_int_eq(fg_histogram_snapshot(ref, &sr), 0);
    assert_same_stats(&st, &sr);
    assert_same_buckets(h, ref, "two threads");
    ck_assert_uint_eq(r.bad, 0);
    ck_assert_uint_ge(r.snapshots, 1);
    fg_histogram_free(h);
    fg_histogram_free(ref);
}
END_TEST

/* A merge into an empty histogram while two threads record into the
 * source: the copy is consistent within itself and does not move. */
START_TEST(test_merge_while_recording) {
    fg_histogram *h = mk_hist();
    pthread_barrier_t start;
    ck_assert_int_eq(pthread_barrier_init(&start, NULL, 3), 0);
    hist_job jobs[2] = {{h, &start, 11}, {h, &start, 12}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, hist_recorder, &jobs[i]), 0);
    pthread_barrier_wait(&start);
    uint64_t last = 0;
    for (int k = 0; k < 20; k++) {
        fg_histogram *copy = mk_hist();
        ck_assert_int_eq(fg_histogram_merge(copy, h), 0);
        fg_histogram_stats a, b;
        ck_assert_int_eq(fg_histogram_snapshot(copy, &a), 0);
        ck_assert_uint_eq(a.count, fg_histogram_count_le(copy, MAXV));
        ck_assert_uint_ge(a.count, last);
        last = a.count;
        ck_assert_uint_eq(a.p50_ns, fg_histogram_quantile(copy, 0.5));
        ck_assert_uint_eq(a.p999_ns, fg_histogram_quantile(copy, 0.999));
        ck_assert_int_eq(fg_histogram_snapshot(copy, &b), 0);
        assert_same_stats(&a, &b);
        fg_histogram_free(copy);
    }
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    pthread_barrier_destroy(&start);
    ck_assert_uint_eq(fg_histogram_count_le(h, UINT64_MAX), 2 * THREAD_OPS);
    fg_histogram_free(h);
}
END_TEST

/* ---- allocation ------------------------------------------------------------------------ */

START_TEST(test_out_of_memory) {
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    th_alloc_reset();
    th_alloc.fail_all = 1;
    fg_histogram *h = (fg_histogram *)&h;
    fg_counter *c = (fg_counter *)&c;
    ck_assert_int_eq(fg_histogram_new(&h), FG_ENOMEM);
    ck_assert_ptr_null(h);
    ck_assert_int_eq(fg_counter_new(&c), FG_ENOMEM);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(th_alloc.allocs, 0);

    /* One allocation each, given back by free; none on the hot paths. */
    th_alloc_reset();
    ck_assert_int_eq(fg_histogram_new(&h), 0);
    ck_assert_int_eq(fg_counter_new(&c), 0);
    ck_assert_int_eq(th_alloc.allocs, 2);
    for (uint64_t i = 0; i < 1000; i++) {
        fg_histogram_record(h, i * 997);
        fg_counter_add(c, i);
    }
    fg_histogram_stats st;
    ck_assert_int_eq(fg_histogram_snapshot(h, &st), 0);
    (void)fg_histogram_quantile(h, 0.5);
    ck_assert_int_eq(th_alloc.allocs, 2);
    fg_histogram_free(h);
    fg_counter_free(c);
    ck_assert_int_eq(th_alloc.frees, 2);
}
END_TEST

Suite *fg_suite_histogram(void) {
    Suite *s = suite_create("histogram");
    TCase *tc;

    tc = tcase_create("geometry");
    tcase_add_test(tc, test_geometry_contiguous);
    tcase_add_test(tc, test_geometry_formula_random);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);

    tc = tcase_create("quantiles");
    tcase_add_loop_test(tc, test_dataset, 0, NDATASETS);
    tcase_add_test(tc, test_bound_every_bucket);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("api");
    tcase_add_test(tc, test_empty);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_record_n);
    tcase_add_test(tc, test_reset);
    tcase_add_test(tc, test_count_le_granular);
    tcase_add_test(tc, test_counter_basic);
    suite_add_tcase(s, tc);

    tc = tcase_create("merge");
    tcase_add_loop_test(tc, test_merge_union, 0, NDATASETS);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_add_test(tc, test_counter_threads_exact);
    tcase_add_test(tc, test_counter_many_threads);
    tcase_add_test(tc, test_histogram_threads_exact);
    tcase_add_test(tc, test_merge_while_recording);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("alloc");
    tcase_add_checked_fixture(tc, NULL, th_alloc_teardown);
    tcase_add_test(tc, test_out_of_memory);
    suite_add_tcase(s, tc);

    return s;
}
