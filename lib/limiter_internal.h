/*
 * lib/limiter_internal.h - what the single and keyed limiters share: one
 * validated, precomputed set of bucket settings.
 */
#ifndef FG_LIB_LIMITER_INTERNAL_H
#define FG_LIB_LIMITER_INTERNAL_H

#include <stdint.h>

#include "floodgate/limiter.h"

/* One generation of a bucket's settings, precomputed for the hot path. */
struct fg_lparams {
    uint64_t interval; /* ns per token: ceil(period / rate) */
    uint64_t tau;      /* burst * interval: the most bucket time in debt */
    uint64_t burst;
    uint64_t max_wait;    /* smoothing bound; 0 = reject at once */
    uint64_t warmup;      /* 0 = no warm-up */
    uint64_t cold_factor; /* >= 1 */
    uint64_t rate;        /* as configured, for fg_limiter_get */
    uint64_t period;
    uint64_t anchor; /* when these settings replaced the previous ones */
};

/* Validate options and compute settings. Returns 0 or FG_EINVAL/FG_ERANGE. */
int fg__lparams_from_options(const fg_limiter_options *opts, struct fg_lparams *out);

/* The options a set of settings came from (clock left zero). */
void fg__lparams_to_options(const struct fg_lparams *p, fg_limiter_options *opts);

/* Settings `old` with a new rate/period (when rate != 0) and/or burst (when
 * burst != 0), validated. Returns 0 or FG_EINVAL/FG_ERANGE. */
int fg__lparams_change(const struct fg_lparams *old, uint64_t rate, uint64_t period,
                       uint64_t burst, struct fg_lparams *out);

/* The keyed limiter's current burst (0 if its lock cannot be taken). */
uint64_t fg__keyed_burst(fg_keyed_limiter *k);

#endif /* FG_LIB_LIMITER_INTERNAL_H */
