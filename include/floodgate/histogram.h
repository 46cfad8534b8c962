/*
 * floodgate/histogram.h - observability primitives: a sharded monotonic
 * counter (fg_counter) and a fixed-size latency histogram (fg_histogram).
 *
 * Both are written on request paths by many threads at once and read now
 * and then by an exporter (Prometheus, JSON), so writes are one or two
 * atomic additions, lock-free and allocation-free, and reads fold the
 * parts together.
 *
 * fg_counter: 16 shards, one 64-byte cache line each. A thread picks its
 * shard once (round-robin over the threads that ever add to any counter)
 * and adds to it with one atomic fetch-add; fg_counter_read sums the shards.
 * Two threads that add at once mostly touch different cache lines.
 *
 * fg_histogram: log-linear buckets, HdrHistogram-style, of values in
 * nanoseconds:
 *   - every value below FG_HISTOGRAM_EXACT_NS (128 ns) has its own bucket;
 *   - from 128 ns on, each power of two [2^e, 2^(e+1)) is cut into 64
 *     buckets of equal width 2^(e-6); v >= 128 lands in bucket
 *     ((e - 6) << 6) + (v >> (e - 6)), e = floor(log2 v), and bucket i
 *     always follows bucket i - 1 without gap or overlap;
 *   - a value above FG_HISTOGRAM_MAX_NS (1 hour) is recorded as
 *     FG_HISTOGRAM_MAX_NS (clamped): it lands in the last bucket and adds 1 h
 *     to the sum. The last bucket therefore holds
 *     [fg_histogram_bucket_lower(FG_HISTOGRAM_BUCKETS - 1), 1 h] and the
 *     clamped values; nothing is ever dropped.
 * So a bucket at or above 128 ns is at most 1/64 of its lower bound wide.
 *
 * Quantiles are nearest-rank: for q in [0, 1] and n recorded values, the
 * exact answer is the value x of rank r = max(1, ceil(q * n)) in sorted
 * order. The histogram reports the midpoint (lower + (upper - lower) / 2,
 * rounded down) of the bucket that holds x, which bounds the error:
 *   - x < 128 ns: the answer is x, exactly;
 *   - 128 ns <= x <= 1 h: |reported - x| < x / 128 (under 0.79 %), and the
 *     answer lies in the same bucket as x;
 *   - x > 1 h: x was recorded as 1 h, so the answer is the last bucket's
 *     midpoint, 3,586,706,395,136 ns (59.8 min): within 1/128 of 1 h.
 *
 * Memory is fixed: FG_HISTOGRAM_BUCKETS (2,345) 64-bit counts plus a
 * 64-bit sum, 18,824 bytes (18.4 KiB) in one cache-line-aligned block.
 * There is no count field: the count is the sum of the buckets, so an
 * exported _count always equals the +Inf bucket.
 */
#ifndef FLOODGATE_HISTOGRAM_H
#define FLOODGATE_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

FG_BEGIN_DECLS

/* ---- counter ------------------------------------------------------------- */

/* A sharded monotonic counter (opaque): fg_counter_new makes one. */
typedef struct fg_counter fg_counter;

/*
 * fg_counter_new - a counter at 0: 16 shards of 64 bytes, 1 KiB.
 *
 * Returns: 0 and *out; FG_EINVAL when out is NULL; FG_ENOMEM (then *out
 * is NULL).
 * Ownership: the caller owns *out: fg_counter_free.
 * Thread-safety: MT-safe.
 */
FG_API int fg_counter_new(fg_counter **out);

/*
 * fg_counter_free - free a counter. NULL is ignored.
 * Thread-safety: not thread-safe: nobody may use the counter any more.
 */
FG_API void fg_counter_free(fg_counter *c);

/*
 * fg_counter_add - add n to the counter (the calling thread's shard). The
 * total wraps modulo 2^64. NULL is ignored.
 * Thread-safety: MT-safe, wait-free: one atomic fetch-add on a cache line
 * that at most 1/16 of the threads share. The thread's first add to any
 * counter also takes a shard number with one atomic fetch-add.
 */
FG_API void fg_counter_add(fg_counter *c, uint64_t n);

/*
 * fg_counter_read - the counter's total: the sum of its shards, each read
 * atomically.
 *
 * Returns: the total (0 for NULL). Every add that happened before the call
 * is included; an add concurrent with it may or may not be. Two reads one
 * after the other (in one thread, or ordered by synchronisation) never see
 * the total go backwards (until it wraps at 2^64).
 * Thread-safety: MT-safe, wait-free (16 loads).
 */
FG_API uint64_t fg_counter_read(const fg_counter *c);

/* ---- histogram ----------------------------------------------------------- */

/* A latency histogram (opaque): fg_histogram_new makes one. */
typedef struct fg_histogram fg_histogram;

/* Values below this many ns are recorded exactly (one bucket each). */
#define FG_HISTOGRAM_EXACT_NS 128
/* The largest value recorded as itself: 1 hour. Larger values count as it. */
#define FG_HISTOGRAM_MAX_NS   UINT64_C(3600000000000)
/* Buckets: 0 .. FG_HISTOGRAM_BUCKETS - 1; the last one holds FG_HISTOGRAM_MAX_NS. */
#define FG_HISTOGRAM_BUCKETS  2345

/* What fg_histogram_snapshot reports. Every field is 0 for an empty histogram. */
typedef struct fg_histogram_stats {
    uint64_t count;  /* values recorded: the sum of the buckets */
    uint64_t sum_ns; /* their sum (values above 1 h count as 1 h), modulo 2^64 */
    /* The lower bound of the lowest non-empty bucket and the upper bound of
     * the highest: min_ns <= every recorded value <= max_ns, each within
     * 1/64 of the true extreme, exact below 128 ns; max_ns <= 1 h. */
    uint64_t min_ns;
    uint64_t max_ns;  /* the highest non-empty bucket's upper bound */
    uint64_t p50_ns;  /* fg_histogram_quantile at 0.5, 0.9, 0.99, 0.999 */
    uint64_t p90_ns;  /* at 0.9 */
    uint64_t p99_ns;  /* at 0.99 */
    uint64_t p999_ns; /* at 0.999 */
} fg_histogram_stats;

/*
 * fg_histogram_new - an empty histogram (all memory allocated now).
 *
 * Returns: 0 and *out; FG_EINVAL when out is NULL; FG_ENOMEM (then *out
 * is NULL).
 * Ownership: the caller owns *out: fg_histogram_free.
 * Thread-safety: MT-safe.
 */
FG_API int fg_histogram_new(fg_histogram **out);

/*
 * fg_histogram_free - free a histogram. NULL is ignored.
 * Thread-safety: not thread-safe: nobody may use the histogram any more.
 */
FG_API void fg_histogram_free(fg_histogram *h);

/*
 * fg_histogram_record - record one value of ns nanoseconds (above
 * FG_HISTOGRAM_MAX_NS: recorded as FG_HISTOGRAM_MAX_NS). NULL is ignored.
 * Thread-safety: MT-safe, wait-free, no allocation: one atomic fetch-add on
 * the bucket and one on the sum.
 */
FG_API void fg_histogram_record(fg_histogram *h, uint64_t ns);

/*
 * fg_histogram_record_n - record the value ns count times (as many calls to
 * fg_histogram_record would; the sum grows by ns * count modulo 2^64).
 * NULL or count 0 does nothing.
 * Thread-safety: as fg_histogram_record.
 */
FG_API void fg_histogram_record_n(fg_histogram *h, uint64_t ns, uint64_t count);

/*
 * fg_histogram_merge - add every bucket and the sum of `from` into `into`.
 * Merging into an empty histogram makes a copy that is consistent within
 * itself and no longer moves (its count, buckets and quantiles all agree):
 * the way to export a histogram that is being written.
 *
 * Returns: 0; FG_EINVAL when either is NULL or both are the same histogram.
 * Ownership: borrows both.
 * Thread-safety: MT-safe, lock-free: each of from's buckets is read
 * atomically once and added atomically, so records into either side may go
 * on. A record into `from` that races the merge is included or not, and
 * may be included in the buckets but not yet in the sum (or the reverse).
 */
FG_API int fg_histogram_merge(fg_histogram *into, const fg_histogram *from);

/*
 * fg_histogram_reset - set every bucket and the sum to 0. NULL is ignored.
 * Thread-safety: MT-safe, but not atomic: a record that races the reset may
 * survive it in part (its bucket but not its sum, or the reverse), and a
 * reader that races it sees some buckets cleared and others not. To read
 * and clear as one step, merge into a fresh histogram and swap pointers.
 */
FG_API void fg_histogram_reset(fg_histogram *h);

/*
 * fg_histogram_quantile - the nearest-rank q-quantile, reported as the
 * midpoint of the bucket that holds the exact one (see the top of this
 * header for the error bound). q = 0 gives the midpoint of the lowest
 * non-empty bucket, q = 1 that of the highest.
 *
 * Returns: the value in ns; 0 for NULL, an empty histogram, or q outside
 * [0, 1] or NaN (not clamped: such a q is a caller's bug).
 * Thread-safety: MT-safe, lock-free. It reads every bucket once, atomically,
 * into about 19 KiB of stack, and computes the count and the rank from
 * that copy, so the answer is that of one state of the buckets (records
 * concurrent with the read are included or not).
 */
FG_API uint64_t fg_histogram_quantile(const fg_histogram *h, double q);

/*
 * fg_histogram_snapshot - count, sum, bounds and p50/p90/p99/p999 into *out,
 * from one pass over the buckets, so that the quantiles, min, max and count
 * all describe the same state of the buckets.
 *
 * Returns: 0; FG_EINVAL when h or out is NULL.
 * Thread-safety: as fg_histogram_quantile (about 19 KiB of stack). The sum
 * is read in the same pass, but records in flight may be in the buckets
 * and not yet in the sum, or the reverse; merge into a private copy first
 * when sum and count must agree exactly.
 */
FG_API int fg_histogram_snapshot(const fg_histogram *h, fg_histogram_stats *out);

/*
 * fg_histogram_count_le - how many recorded values are in buckets whose
 * upper bound is <= ns: a Prometheus `le` bucket. Bucket-granular: exact
 * when ns is a bucket's upper bound (fg_histogram_bucket_upper) or below
 * 128 ns; otherwise the values in the bucket that contains ns are left
 * out, including those <= ns (they are within 1/64 below ns). Monotone in
 * ns; for ns >= FG_HISTOGRAM_MAX_NS it is the count.
 *
 * Returns: the count (0 for NULL).
 * Thread-safety: MT-safe, lock-free (reads the buckets once, atomically).
 */
FG_API uint64_t fg_histogram_count_le(const fg_histogram *h, uint64_t ns);

/*
 * The geometry, for exporters that want `le` bounds on bucket edges.
 *
 * fg_histogram_bucket_index - the bucket a value of ns is recorded in
 * (FG_HISTOGRAM_BUCKETS - 1 for anything at or above the last bucket).
 * fg_histogram_bucket_lower / fg_histogram_bucket_upper - the smallest and
 * largest value bucket i holds, both inclusive (upper of the last bucket:
 * FG_HISTOGRAM_MAX_NS); for i >= FG_HISTOGRAM_BUCKETS, lower returns
 * FG_HISTOGRAM_MAX_NS + 1 and upper UINT64_MAX (the +Inf bound).
 * Thread-safety: MT-safe (pure functions).
 */
FG_API size_t fg_histogram_bucket_index(uint64_t ns);
FG_API uint64_t fg_histogram_bucket_lower(size_t i);
FG_API uint64_t fg_histogram_bucket_upper(size_t i);

FG_END_DECLS

#endif /* FLOODGATE_HISTOGRAM_H */
