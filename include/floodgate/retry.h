/*
 * floodgate/retry.h - retries: a stage that runs the rest of the chain again
 * after a failure, with exponential backoff and jitter, and a retry budget
 * (Finagle-style) that caps retries at a share of the traffic.
 *
 * The retry stage (fg_stage_retry) works with the synchronous chain
 * (fg_chain_call). Its exit hook sees every attempt's outcome; for one that
 * is retryable while attempts remain, it computes the backoff, refuses the
 * retry when the next attempt would start at or after ctx->deadline_ns or
 * when the budget has no balance, and otherwise sleeps the backoff on its
 * clock and returns FG_STAGE_RETRY: the chain runs the stages after the
 * retry stage and the handler again. In the split API (fg_chain_enter /
 * fg_chain_exit) the outcome is final: the stage deposits into its budget
 * and does nothing else (no sleep, no withdrawal); a caller that wants to
 * retry there does it itself with fg_retry_backoff and
 * fg_retry_budget_try_withdraw.
 *
 * The backoff before retry n (n = 1 for the first retry), with
 * e(n) = min(max_backoff_ns, base_ns * multiplier^(n-1)):
 *   FG_JITTER_NONE:         e(n);
 *   FG_JITTER_FULL:         uniform in [0, e(n)], both ends included;
 *   FG_JITTER_DECORRELATED: b(n) = min(max_backoff_ns, uniform in
 *                           [base_ns, 3 * b(n-1)]), b(0) = base_ns
 *                           (multiplier is not used).
 * e(n) is computed in double precision and truncated to whole ns. Draws:
 * request r's j-th draw (j = 0, 1, ...) is output j of splitmix64 seeded
 * with the request's key, and retry n of FULL uses draw n-1, DECORRELATED
 * draws 0 .. n-1. With a nonzero seed the stage numbers its requests
 * 0, 1, 2, ... (one atomic add each, only when jitter is on) and request r's
 * key is output r of splitmix64 seeded with `seed`, so the whole schedule
 * is fg_retry_backoff(opts, r, n); with seed 0 each request takes its key
 * from the thread's random generator (no shared write; full jitter then
 * takes a fresh key at each failure instead).
 *
 * docs/retry.md is the guide.
 */
#ifndef FLOODGATE_RETRY_H
#define FLOODGATE_RETRY_H

#include <stdint.h>

#include "clock.h"
#include "common.h"
#include "ctx.h"
#include "stage.h"

FG_BEGIN_DECLS

/* ---- the retry budget ------------------------------------------------------------------ */

/*
 * fg_retry_budget - retries allowed as a share of requests, shareable by
 * any number of retry stages (and by callers that retry by hand).
 *
 * Each request deposits ratio retries' worth of credit; each retry
 * withdraws one retry's worth and is allowed only if the balance covers it.
 * Exactly:
 *   - amounts are kept in thousandths of a retry: a retry costs 1000, a
 *     deposit credits round(ratio * 1000) (so ratio 0.2 credits exactly 200);
 *   - time is cut into slices of slice = floor(ttl_ns / 10) ns, slice number
 *     s = floor(now / slice); the window at a reading `now` is the 10 slices
 *     s-9 .. s, so a deposit or withdrawal made in slice s0 counts while the
 *     reading's slice is at most s0 + 9: for between ttl - slice and ttl;
 *   - balance(now) = reserve + credits deposited in the window - 1000 x the
 *     retries withdrawn in the window, where the reserve (the floor for low
 *     traffic) is floor(min_per_sec * ttl_ns / 1e6) thousandths, i.e.
 *     min_per_sec * ttl seconds retries per window;
 *   - a withdrawal at `now` is allowed iff balance(now) >= 1000.
 * For example ratio 0.2 and min_per_sec 0: 1000 requests that each fail
 * and ask for a retry get exactly 200 (every fifth request's first retry).
 *
 * Time goes by slices, not by deposits: a deposit or withdrawal belongs to
 * the slice of its reading, except that a reading more than a window
 * older than the newest slice the budget has seen (a stalled thread, a
 * clock set back) is placed in the newest window instead (a deposit) or
 * refused (a withdrawal).
 *
 * Concurrency: a deposit is a few loads and one store, with no atomic
 * read-modify-write: the first 32 threads that deposit into any budget each
 * own a shard of the count (in every budget, for the life of the process;
 * shards are not reclaimed from threads that exit), and every later thread
 * shares one more shard, whose deposits cost one atomic add. A withdrawal
 * reads the window (the shards in use and the 11 withdrawal words) and
 * commits with one compare-and-swap on its slice's withdrawal word, which
 * succeeds only if no other withdrawal in that slice came between its read
 * and the swap. So the budget is never overdrawn by calls whose readings
 * lie in one slice, however many threads race, and a single thread sees
 * exactly the balance defined above. Two things are looser: a deposit made
 * on another thread becomes visible to a withdrawal a moment after it is
 * made (the time its store takes to leave the core), so a withdrawal that
 * races it may be refused although the deposit would have covered it; and
 * at a slice boundary a withdrawal whose reading lies in the earlier slice
 * does not see the withdrawals already made in the later one, so the
 * budget may allow one retry beyond its balance per withdrawal in flight
 * across the boundary. Slices are tagged with their number modulo 2^26;
 * each new newest slice rewrites the words that fell out of the window, so
 * a stale word could only pass for a current one if the budget went
 * entirely unused for a multiple of 11 x 2^26 slices (at the minimum ttl,
 * 20 hours, give or take one window). A shard counts deposits modulo
 * 2^38: a window may hold up to 2^37 deposits per shard.
 *
 * Time: nanoseconds on the budget's clock. The *_at functions take a
 * reading from that same clock; the retry stage passes the chain's reading
 * (ctx->now_ns) to deposit and its own clock's reading to withdraw, so use
 * one clock for the chain, its retry stages and their budget.
 */
typedef struct fg_retry_budget fg_retry_budget;

/* Retry budget options. Start from FG_RETRY_BUDGET_OPTIONS_INIT. */
typedef struct fg_retry_budget_options {
    double ratio;         /* retries per request, 0 .. 100 (kept in thousandths) */
    uint32_t min_per_sec; /* floor: retries per second allowed without deposits */
    uint64_t ttl_ns;      /* how long a deposit (and a withdrawal) counts: 1 ms .. 1 h */
    fg_clock clock;       /* now == NULL: the monotonic clock */
} fg_retry_budget_options;

/* Defaults (Finagle's): 20 % of requests, at least 10 retries a second, 10 s. */
#define FG_RETRY_BUDGET_OPTIONS_INIT                                                          \
    {                                                                                         \
        0.2, 10, UINT64_C(10000000000), { NULL, NULL, NULL }                                  \
    }

#define FG_RETRY_BUDGET_RATIO_MAX  100.0                   /* the largest ratio */
#define FG_RETRY_BUDGET_TTL_MIN_NS UINT64_C(1000000)       /* the shortest ttl_ns: 1 ms */
#define FG_RETRY_BUDGET_TTL_MAX_NS UINT64_C(3600000000000) /* the longest ttl_ns: 1 h */

/* What a budget has done. */
typedef struct fg_retry_budget_stats {
    uint64_t deposits;  /* deposits made (credited or not) */
    uint64_t allowed;   /* withdrawals allowed: retries */
    uint64_t refused;   /* withdrawals refused */
    uint64_t available; /* whole retries the balance covers now (budget's clock) */
} fg_retry_budget_stats;

/*
 * fg_retry_budget_new - a budget with an empty window (only the reserve).
 *
 * Returns: 0 and *out; FG_EINVAL when out is NULL or ratio is NaN;
 * FG_ERANGE when ratio is outside [0, FG_RETRY_BUDGET_RATIO_MAX] or ttl_ns
 * outside [FG_RETRY_BUDGET_TTL_MIN_NS, FG_RETRY_BUDGET_TTL_MAX_NS];
 * FG_ENOMEM. On error *out is unchanged.
 * Ownership: opts is read (NULL: the defaults); the caller owns *out and
 * frees it with fg_retry_budget_free after every stage that uses it.
 * Thread-safety: MT-safe.
 */
FG_API int fg_retry_budget_new(const fg_retry_budget_options *opts, fg_retry_budget **out);

/*
 * fg_retry_budget_free - free a budget. NULL is ignored.
 * Thread-safety: not thread-safe: no stage or caller may use it any more.
 */
FG_API void fg_retry_budget_free(fg_retry_budget *budget);

/*
 * fg_retry_budget_deposit - record a request: credit ratio retries' worth,
 * at the budget's clock. fg_retry_budget_deposit_at - the same at a reading
 * now_ns taken from the budget's clock. NULL is ignored.
 * Thread-safety: MT-safe, wait-free in the usual case, no allocation: a
 * few loads and a store to the calling thread's own shard (an atomic add
 * on the shared shard for threads past the first 32); the first deposit of
 * a thread takes a shard (a CAS), and the first call of a new slice
 * rewrites the expired words (about 400 loads and a few CASes).
 */
FG_API void fg_retry_budget_deposit(fg_retry_budget *budget);
FG_API void fg_retry_budget_deposit_at(fg_retry_budget *budget, uint64_t now_ns);

/*
 * fg_retry_budget_try_withdraw - ask for one retry at the budget's clock;
 * fg_retry_budget_try_withdraw_at - at a reading now_ns from its clock.
 *
 * Returns: 1 when the balance covered it (it is withdrawn), 0 when refused,
 * FG_EINVAL for a NULL budget.
 * Thread-safety: MT-safe, lock-free, no allocation: reads the window (11
 * words per shard in use, and the 11 withdrawal words) and commits with
 * one compare-and-swap, read and swap repeated when another withdrawal in
 * the same slice came in between.
 */
FG_API int fg_retry_budget_try_withdraw(fg_retry_budget *budget);
FG_API int fg_retry_budget_try_withdraw_at(fg_retry_budget *budget, uint64_t now_ns);

/*
 * fg_retry_budget_stats_get - the counters, and the balance at the budget's
 * clock in whole retries.
 *
 * Returns: 0 and *out; FG_EINVAL when budget or out is NULL.
 * Thread-safety: MT-safe, lock-free; each counter is read atomically, the
 * set is not one snapshot.
 */
FG_API int fg_retry_budget_stats_get(const fg_retry_budget *budget,
                                     fg_retry_budget_stats *out);

/* ---- the retry stage ------------------------------------------------------------------- */

/* How backoffs are spread; e(n) is defined in the file comment. */
typedef enum fg_jitter {
    FG_JITTER_NONE = 0,         /* exactly e(n) */
    FG_JITTER_FULL = 1,         /* uniform in [0, e(n)] */
    FG_JITTER_DECORRELATED = 2, /* min(cap, uniform in [base, 3 x previous]) */
} fg_jitter;

/*
 * A classifier: whether an attempt's outcome should be retried (nonzero) or
 * is final (0). Called only for FG_OUTCOME_FAILED and FG_OUTCOME_REJECTED
 * outcomes (a success is never retried), and never for a canceled request
 * (code FG_ECANCELED, or a ctx canceled with fg_ctx_cancel), which is never
 * retried whatever a classifier would say. Called on the request's thread,
 * from the retry stage's exit.
 */
typedef int (*fg_retry_classifier)(const fg_ctx *ctx, const fg_outcome *outcome, void *arg);

/*
 * fg_retry_classify_default - the classifier used when none is given: a
 * FAILED outcome (the handler ran and failed, FG_ETIMEDOUT included: an
 * attempt that timed out may succeed the next time) is retryable; a
 * REJECTED one is not, whatever its code (a later stage - a limiter, a
 * breaker, a bulkhead, a deadline check - refused the attempt, and asking
 * it again at once would only add load; FG_ETIMEDOUT from a stage means the
 * request's deadline has passed). FG_ECANCELED is never retryable.
 * Returns: 1 or 0 (0 for NULL outcome). Thread-safety: MT-safe (pure).
 */
FG_API int fg_retry_classify_default(const fg_ctx *ctx, const fg_outcome *outcome, void *arg);

/* Retry stage options. Start from FG_RETRY_OPTIONS_INIT. */
typedef struct fg_retry_options {
    /* Attempts in all, the first included: 1 .. FG_RETRY_MAX_ATTEMPTS. */
    uint32_t max_attempts;
    uint64_t base_ns;        /* the first backoff, e(1); 0: retry at once */
    uint64_t max_backoff_ns; /* the cap on every backoff; >= base_ns */
    double multiplier;       /* growth per retry, 1 .. 1000 (NONE and FULL) */
    /* How the backoffs are spread. */
    fg_jitter jitter;
    uint64_t seed;                /* 0: a random stream per request; else the exact schedule */
    fg_retry_classifier classify; /* NULL: fg_retry_classify_default */
    void *classify_arg;           /* passed to classify */
    /* Reads now (the deadline check, withdrawals) and sleeps the backoff;
     * now == NULL: the monotonic clock. Give it the chain's clock. */
    fg_clock clock;
    fg_retry_budget *budget; /* borrowed; NULL: no budget */
} fg_retry_options;

/* Defaults: 3 attempts, 100 ms doubling up to 10 s, full jitter (AWS's
 * recommendation: it spreads retrying clients the most for the least total
 * wait), a random seed, the default classifier, no budget. In C:
 * fg_retry_options o = FG_RETRY_OPTIONS_INIT; o.budget = budget; */
#define FG_RETRY_OPTIONS_INIT                                                                 \
    {                                                                                         \
        3, UINT64_C(100000000), UINT64_C(10000000000), 2.0, FG_JITTER_FULL, 0, NULL, NULL,    \
            {NULL, NULL, NULL}, NULL                                                          \
    }

/* At most this many attempts: the chain honours FG_STAGE_RETRY at most
 * FG_CHAIN_MAX_RETRIES (100) times per request. */
#define FG_RETRY_MAX_ATTEMPTS   101
#define FG_RETRY_MULTIPLIER_MAX 1000.0

/*
 * What a retry stage has done, counted exactly (one atomic add each, all on
 * the failure path). Every failed or rejected attempt that reached the
 * stage's exit in a fg_chain_call counts in exactly one of retries,
 * not_retryable, refused_attempts, refused_deadline and refused_budget.
 */
typedef struct fg_retry_stats {
    uint64_t retries;          /* FG_STAGE_RETRY returned (after sleeping the backoff) */
    uint64_t not_retryable;    /* the classifier said final, or canceled */
    uint64_t refused_attempts; /* retryable, but max_attempts were made */
    uint64_t refused_deadline; /* now + backoff would reach ctx->deadline_ns */
    uint64_t refused_budget;   /* the budget's balance did not cover a retry */
    uint64_t backoff_ns_total; /* sum of the backoffs slept (wraps past 2^64) */
} fg_retry_stats;

/*
 * fg_stage_retry - a retry stage (kind "retry").
 *
 * enter: deposits into the budget, if any, at ctx->now_ns, and gives the
 * request its draw key (see the file comment). Never rejects.
 * exit, in fg_chain_call, for an outcome that is not FG_OUTCOME_OK:
 *   1. code FG_ECANCELED, a ctx canceled with fg_ctx_cancel, or the
 *      classifier's 0: final (not_retryable);
 *   2. ctx->retry_count + 1 >= max_attempts: final (refused_attempts);
 *   3. b = the backoff before retry n = ctx->retry_count + 1 and now = the
 *      stage's clock; with ctx->deadline_ns set, now + b >= deadline_ns:
 *      final (refused_deadline): the stage never sleeps up to or past the
 *      deadline;
 *   4. the budget refuses a withdrawal at now: final (refused_budget);
 *   5. else it sleeps b on its clock (fg_clock_sleep) and returns
 *      FG_STAGE_RETRY; the chain increments ctx->retry_count.
 * The deadline is checked before the budget so that a retry that would
 * not be made never spends the budget. Attempts are counted with
 * ctx->retry_count, which counts every retry of the request: with two
 * retry stages in one chain (don't) their retries add up. In the split API
 * exit does nothing.
 *
 * Returns: 0 and *out; FG_EINVAL when opts or out is NULL, jitter is not an
 * fg_jitter value, multiplier is NaN or max_backoff_ns < base_ns;
 * FG_ERANGE when max_attempts is 0 or above FG_RETRY_MAX_ATTEMPTS or
 * multiplier is outside [1, FG_RETRY_MULTIPLIER_MAX]; FG_ETOOLONG when name
 * is longer than FG_STAGE_NAME_MAX; FG_ENOMEM. On error *out is unchanged.
 * Ownership: opts is read; name (NULL: "retry") copied; budget and
 * classify_arg are borrowed and must outlive the stage. The caller owns one
 * reference to *out (fg_chain_use takes it).
 * Thread-safety: MT-safe. enter is lock-free and allocation-free: with a
 * budget, its deposit (a few loads and a store, see fg_retry_budget); with
 * a nonzero seed and jitter, one atomic add. exit costs a compare for a
 * success; a retry blocks the calling thread for the backoff.
 */
FG_API int fg_stage_retry(const fg_retry_options *opts, const char *name, fg_stage **out);

/*
 * fg_retry_stats_get - the counters of a stage made by fg_stage_retry.
 *
 * Returns: 0 and *out; FG_EINVAL when stage or out is NULL or stage is not
 * a retry stage.
 * Thread-safety: MT-safe, lock-free; each counter is read atomically, the
 * set is not one snapshot.
 */
FG_API int fg_retry_stats_get(const fg_stage *stage, fg_retry_stats *out);

/*
 * fg_retry_backoff - the backoff a retry stage made with opts sleeps before
 * retry `retry` (1 = the first retry) of its request number `request`
 * (0 = the first request that entered it), as the file comment defines it,
 * with opts->seed as the seed (0 taken as the value 0 here: a stage made
 * with seed 0 follows no reproducible schedule). Only jitter, base_ns,
 * max_backoff_ns, multiplier and seed are read. For replay, documentation
 * and tests.
 *
 * Returns: nanoseconds; 0 when opts is NULL, retry is 0, or those fields
 * are invalid (as fg_stage_retry would refuse them).
 * Thread-safety: MT-safe (pure). Cost: O(retry) (one draw per retry for
 * DECORRELATED, one multiplication per retry until the cap otherwise).
 */
FG_API uint64_t fg_retry_backoff(const fg_retry_options *opts, uint64_t request,
                                 uint32_t retry);

FG_END_DECLS

#endif /* FLOODGATE_RETRY_H */
