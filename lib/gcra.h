/*
 * lib/gcra.h - the token-bucket decision, shared by every limiter.
 *
 * GCRA keeps one number per bucket: the theoretical arrival time (TAT), the
 * instant at which the bucket will be full again. With an interval of T ns
 * per token and a capacity of b tokens (tolerance tau = b*T), the bucket
 * holds b - max(0, TAT - t)/T tokens at time t. Taking n tokens at t is
 * allowed iff max(TAT, t) + n*T - t <= tau, and moves TAT to
 * max(TAT, t) + n*T. This is exactly the token bucket, in one word.
 *
 * Smoothing extends the tolerance: a request that would need to wait w ns
 * for its tokens is admitted with that wait when w <= max_wait (its tokens
 * are reserved: TAT moves past tau), and rejected otherwise.
 *
 * These functions are pure: callers supply the state and apply the result
 * (with a CAS, or under a shard lock).
 */
#ifndef FG_LIB_GCRA_H
#define FG_LIB_GCRA_H

#include <stdint.h>

/* Times, intervals and tolerances stay below 2^62 so sums of three of them
 * never overflow 64 bits. */
#define FG_GCRA_TIME_MAX (UINT64_C(1) << 62)

__extension__ typedef unsigned __int128 fg_u128;

/* Clamp a clock reading below FG_GCRA_TIME_MAX. Readings that high (146
 * years of uptime) only come from a broken clock; clamping keeps every sum
 * of a time and a duration in range. Every limiter and breaker entry point
 * passes its `now` through this. */
static inline uint64_t fg__time_clamp(uint64_t t) {
    return t < FG_GCRA_TIME_MAX ? t : FG_GCRA_TIME_MAX - 1;
}

/* Ceil(a * b / c) in 128 bits, saturated to FG_GCRA_TIME_MAX. c > 0. */
static inline uint64_t fg__muldiv_ceil(uint64_t a, uint64_t b, uint64_t c) {
    fg_u128 p = (fg_u128)a * b;
    fg_u128 q = p / c + (p % c != 0);
    return q > FG_GCRA_TIME_MAX ? FG_GCRA_TIME_MAX : (uint64_t)q;
}

/*
 * fg__gcra_decide - may `cost` ns of bucket time be taken at now?
 * Returns 1 and sets *new_tat and *wait (0, or the smoothing wait) when
 * admitted; returns 0 and sets *wait to the retry-after time otherwise.
 */
static inline int fg__gcra_decide(uint64_t tat, uint64_t now, uint64_t cost, uint64_t tau,
                                  uint64_t max_wait, uint64_t *new_tat, uint64_t *wait) {
    uint64_t base = tat > now ? tat : now;
    uint64_t next = base + cost;
    uint64_t debt = next - now; /* >= cost: next >= now, no wrap */
    if (debt <= tau) {
        *new_tat = next;
        *wait = 0;
        return 1;
    }
    uint64_t over = debt - tau;
    *wait = over;
    if (over <= max_wait) {
        *new_tat = next;
        return 1;
    }
    return 0;
}

/* Whole tokens held at now: floor((tau - debt) / T), 0 when in debt. */
static inline uint64_t fg__gcra_tokens(uint64_t tat, uint64_t now, uint64_t interval,
                                       uint64_t tau) {
    uint64_t debt = tat > now ? tat - now : 0;
    return debt >= tau ? 0 : (tau - debt) / interval;
}

/*
 * fg__gcra_convert - re-express a TAT under new settings at time `at`,
 * keeping the tokens held then (cut to the new burst): the debt measured
 * in tokens stays the same, plus the change in burst when it grows.
 * Rounds up (never grants a fraction of a token).
 */
static inline uint64_t fg__gcra_convert(uint64_t tat, uint64_t at, uint64_t t0, uint64_t b0,
                                        uint64_t t1, uint64_t b1) {
    uint64_t debt0 = tat > at ? tat - at : 0;
    /* debt1 = max(0, ceil(debt0 * t1 / t0) + (b1 - b0) * t1): the first
     * term < 2^125 and the second < 2^103 in magnitude, so 128 bits hold
     * both; ceil(x + k) = ceil(x) + k for a whole k. */
    __extension__ typedef __int128 fg_s128;
    fg_u128 scaled = (fg_u128)debt0 * t1;
    fg_s128 debt1 = (fg_s128)(scaled / t0 + (scaled % t0 != 0));
    debt1 += ((fg_s128)b1 - (fg_s128)b0) * (fg_s128)t1;
    if (debt1 <= 0)
        return at;
    if (debt1 > (fg_s128)FG_GCRA_TIME_MAX)
        debt1 = (fg_s128)FG_GCRA_TIME_MAX;
    return at + (uint64_t)debt1;
}

#endif /* FG_LIB_GCRA_H */
