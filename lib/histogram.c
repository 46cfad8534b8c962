/*
 * lib/histogram.c - fg_histogram: a fixed-size log-linear latency histogram.
 *
 * Geometry (include/floodgate/histogram.h states it for users): 64 linear
 * sub-buckets per power of two, exact below 128. With e = floor(log2(v | 64))
 * and k = e - 6, the bucket is (k << 6) + (v >> k):
 *   - v < 128: v | 64 has e = 6, k = 0, so the bucket is v itself;
 *   - v >= 128: e = floor(log2 v) and v >> k is in [64, 127], so powers of
 *     two e and e + 1 map to [(k << 6) + 64, (k << 6) + 127] and
 *     [(k << 6) + 128, (k << 6) + 191]: consecutive, no gap, no overlap.
 * Conversely bucket i >= 64 has k = (i >> 6) - 1 and m = 64 + (i & 63):
 * it holds [m << k, ((m + 1) << k) - 1], width 2^k <= lower / 64.
 * Values are clamped to FG_HISTOGRAM_MAX_NS first, which falls in the last
 * bucket, so the table ends there (the static assertions check it).
 *
 * Recording is two fetch-adds, on the bucket and on the sum, and nothing
 * else: the count is the sum of the buckets. Readers copy the buckets with
 * one atomic load each and work on the copy, so everything they derive
 * from one copy (count, rank, quantiles, bounds) agrees.
 */
#include <stdint.h>
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/histogram.h"

#include "alloc.h"
#include "atomic.h"

#define FG_HIST_SUB_BITS 6 /* 64 sub-buckets per power of two */
#define FG_CACHE_LINE    64

/* The sum on a cache line of its own, ahead of the counts: every record
 * writes it, and it should not share a line with a hot bucket. */
struct fg_histogram {
    uint64_t sum; /* atomic; ns, modulo 2^64 */
    unsigned char pad[FG_CACHE_LINE - sizeof(uint64_t)];
    uint64_t counts[FG_HISTOGRAM_BUCKETS]; /* atomic */
};

/* FG_HISTOGRAM_MAX_NS (3.6e12) has e = 41, k = 35 and lands in bucket
 * (35 << 6) + (MAX >> 35) = 2240 + 104 = 2344, the last one. */
_Static_assert(FG_HISTOGRAM_MAX_NS >> 41 == 1, "1 h lies in [2^41, 2^42)");
_Static_assert((35 << FG_HIST_SUB_BITS) + (FG_HISTOGRAM_MAX_NS >> 35) + 1 ==
                   FG_HISTOGRAM_BUCKETS,
               "FG_HISTOGRAM_BUCKETS ends at the bucket of FG_HISTOGRAM_MAX_NS");
_Static_assert(FG_HISTOGRAM_EXACT_NS == 2 << FG_HIST_SUB_BITS, "exact below 2 x 64");

static inline size_t fg_hist_index(uint64_t v) {
    if (v > FG_HISTOGRAM_MAX_NS)
        v = FG_HISTOGRAM_MAX_NS;
    unsigned e = 63u - (unsigned)__builtin_clzll(v | 64u);
    unsigned k = e - FG_HIST_SUB_BITS;
    return ((size_t)k << FG_HIST_SUB_BITS) + (size_t)(v >> k);
}

static inline uint64_t fg_hist_lower(size_t i) {
    if (i < 64)
        return i;
    unsigned k = (unsigned)(i >> FG_HIST_SUB_BITS) - 1u;
    return (uint64_t)(64u + (i & 63u)) << k;
}

static inline uint64_t fg_hist_upper(size_t i) {
    if (i + 1 >= FG_HISTOGRAM_BUCKETS)
        return FG_HISTOGRAM_MAX_NS;
    return fg_hist_lower(i + 1) - 1;
}

/* What a quantile in bucket i reports: its midpoint, rounded down. */
static inline uint64_t fg_hist_mid(size_t i) {
    uint64_t lo = fg_hist_lower(i);
    return lo + (fg_hist_upper(i) - lo) / 2;
}

size_t fg_histogram_bucket_index(uint64_t ns) { return fg_hist_index(ns); }

uint64_t fg_histogram_bucket_lower(size_t i) {
    return i < FG_HISTOGRAM_BUCKETS ? fg_hist_lower(i) : FG_HISTOGRAM_MAX_NS + 1;
}

uint64_t fg_histogram_bucket_upper(size_t i) {
    return i < FG_HISTOGRAM_BUCKETS ? fg_hist_upper(i) : UINT64_MAX;
}

int fg_histogram_new(fg_histogram **out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = fg__aligned_calloc(sizeof(fg_histogram), FG_CACHE_LINE);
    return *out ? 0 : FG_ENOMEM;
}

void fg_histogram_free(fg_histogram *h) { fg__aligned_free(h); }

/*
 * Two independent fetch-adds. Nothing orders them for a reader: a reader
 * may see the bucket and not yet the sum, or the reverse, which the header
 * says. The count cannot disagree with the buckets, since it is their sum.
 */
void fg_histogram_record_n(fg_histogram *h, uint64_t ns, uint64_t count) {
    if (h == NULL || count == 0)
        return;
    if (ns > FG_HISTOGRAM_MAX_NS)
        ns = FG_HISTOGRAM_MAX_NS;
    (void)fg__faa_u64(&h->counts[fg_hist_index(ns)], count);
    (void)fg__faa_u64(&h->sum, ns * count); /* wraps modulo 2^64, as documented */
}

void fg_histogram_record(fg_histogram *h, uint64_t ns) { fg_histogram_record_n(h, ns, 1); }

int fg_histogram_merge(fg_histogram *into, const fg_histogram *from) {
    if (into == NULL || from == NULL || into == from)
        return FG_EINVAL;
    /* Each bucket is read once and added once, both atomically: concurrent
     * records into either histogram are never lost, only included or not. */
    for (size_t i = 0; i < FG_HISTOGRAM_BUCKETS; i++) {
        uint64_t c = fg__load_u64(&from->counts[i]);
        if (c != 0)
            (void)fg__faa_u64(&into->counts[i], c);
    }
    uint64_t s = fg__load_u64(&from->sum);
    if (s != 0)
        (void)fg__faa_u64(&into->sum, s);
    return 0;
}

void fg_histogram_reset(fg_histogram *h) {
    if (h == NULL)
        return;
    /* One atomic store per word; the reset as a whole is not atomic. */
    for (size_t i = 0; i < FG_HISTOGRAM_BUCKETS; i++)
        fg__store_u64(&h->counts[i], 0);
    fg__store_u64(&h->sum, 0);
}

/* One atomic load per bucket into copy; returns their sum, the count. */
static uint64_t fg_hist_copy(const fg_histogram *h, uint64_t *copy) {
    uint64_t n = 0;
    for (size_t i = 0; i < FG_HISTOGRAM_BUCKETS; i++) {
        copy[i] = fg__load_u64(&h->counts[i]);
        n += copy[i];
    }
    return n;
}

/* The rank of the nearest-rank q-quantile among n values: ceil(q * n), at
 * least 1, at most n (q in [0, 1], n >= 1). */
static uint64_t fg_hist_rank(double q, uint64_t n) {
    double x = q * (double)n;
    if (x >= (double)n)
        return n;
    uint64_t r = (uint64_t)x; /* x < n <= 2^64: in range; ceil without libm */
    r += (double)r < x;
    return r < 1 ? 1 : r;
}

/* The bucket holding the value of rank r (1 <= r <= the copy's count),
 * searching from bucket `from` on with `below` values before it. Callers
 * ask for increasing ranks and resume where the previous search stopped. */
static size_t fg_hist_find(const uint64_t *copy, uint64_t r, size_t *from, uint64_t *below) {
    size_t i = *from;
    uint64_t cum = *below;
    while (i < FG_HISTOGRAM_BUCKETS - 1 && cum + copy[i] < r)
        cum += copy[i++];
    *from = i;
    *below = cum;
    return i;
}

static int fg_hist_q_ok(double q) { return q >= 0.0 && q <= 1.0; /* false for NaN */ }

uint64_t fg_histogram_quantile(const fg_histogram *h, double q) {
    if (h == NULL || !fg_hist_q_ok(q))
        return 0;
    uint64_t copy[FG_HISTOGRAM_BUCKETS];
    uint64_t n = fg_hist_copy(h, copy);
    if (n == 0)
        return 0;
    size_t at = 0;
    uint64_t below = 0;
    return fg_hist_mid(fg_hist_find(copy, fg_hist_rank(q, n), &at, &below));
}

int fg_histogram_snapshot(const fg_histogram *h, fg_histogram_stats *out) {
    if (h == NULL || out == NULL)
        return FG_EINVAL;
    uint64_t copy[FG_HISTOGRAM_BUCKETS];
    uint64_t n = fg_hist_copy(h, copy);
    memset(out, 0, sizeof(*out));
    out->sum_ns = fg__load_u64(&h->sum);
    if (n == 0) {
        out->sum_ns = 0; /* a record in flight: its sum without its bucket */
        return 0;
    }
    out->count = n;
    size_t lo = 0, hi = FG_HISTOGRAM_BUCKETS - 1;
    while (copy[lo] == 0)
        lo++;
    while (copy[hi] == 0)
        hi--;
    out->min_ns = fg_hist_lower(lo);
    out->max_ns = fg_hist_upper(hi);
    static const double qs[4] = {0.5, 0.9, 0.99, 0.999};
    uint64_t *dst[4] = {&out->p50_ns, &out->p90_ns, &out->p99_ns, &out->p999_ns};
    size_t at = 0;
    uint64_t below = 0;
    for (int j = 0; j < 4; j++)
        *dst[j] = fg_hist_mid(fg_hist_find(copy, fg_hist_rank(qs[j], n), &at, &below));
    return 0;
}

uint64_t fg_histogram_count_le(const fg_histogram *h, uint64_t ns) {
    if (h == NULL)
        return 0;
    /* Buckets 0 .. b - 1 have upper bounds <= ns; bucket b too when ns is
     * its upper bound (always for b < 128, and for ns >= 1 h the last). */
    size_t b = fg_hist_index(ns);
    size_t end = fg_hist_upper(b) <= ns ? b + 1 : b;
    uint64_t n = 0;
    for (size_t i = 0; i < end; i++)
        n += fg__load_u64(&h->counts[i]);
    return n;
}
