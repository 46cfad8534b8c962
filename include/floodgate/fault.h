/*
 * floodgate/fault.h - the fault injection stage: delay or abort a chosen
 * fraction of requests on purpose, to test how a service and its callers
 * behave under latency and failures (modelled on Envoy's HTTP fault filter).
 *
 * For every request that is eligible (the header and rule targeting below
 * both hold; a stage without targeting makes every request eligible) the
 * stage makes two independent draws: abort with probability abort_percent,
 * and delay with probability delay_percent. An aborted request is rejected
 * with abort_code and is not delayed. A delayed one is admitted with the
 * injected delay ADDED to ctx->delay_ns: fg_chain_call sleeps it on the
 * chain's clock before the handler, and after fg_chain_enter the caller
 * starts the handler that much later. Adding (rather than raising, as a
 * smoothing limiter does) puts the injected latency on top of any wait a
 * stage before this one asked for; a smoothing limiter placed after the
 * fault stage raises ctx->delay_ns to its own wait only when that is larger,
 * so put the fault stage after the limiters for the delay to be on top.
 *
 * Draws are deterministic given the seed: the stage numbers eligible
 * requests 0, 1, 2, ... with one atomic fetch-and-add, and request n uses
 * outputs 3n, 3n+1 and 3n+2 of the splitmix64 generator seeded with `seed`
 * (abort draw, delay draw, position in a uniform delay range). With one
 * thread and a fixed seed the decision sequence is exactly reproducible;
 * with several threads the same decisions are handed out, in the order the
 * threads reach the stage. docs/fault-injection.md is the guide.
 */
#ifndef FLOODGATE_FAULT_H
#define FLOODGATE_FAULT_H

#include <stdint.h>

#include "common.h"
#include "ctx.h"
#include "error.h"
#include "router.h"
#include "stage.h"

FG_BEGIN_DECLS

/*
 * Fault stage options. Start from FG_FAULT_OPTIONS_INIT (no faults, abort
 * code FG_EINJECTED) and set what you need.
 *
 * Percentages are 0 .. 100 (fractions of eligible requests) and are kept as
 * whole parts per million, rounded to the nearest: the finest step is
 * 0.0001 %. 0 and 100 are exact (never / always).
 */
typedef struct fg_fault_options {
    /* Delay. */
    double delay_percent;  /* eligible requests delayed, 0 .. 100 */
    uint64_t delay_ns;     /* the delay; with delay_max_ns, the least delay */
    uint64_t delay_max_ns; /* nonzero: a uniform delay in [delay_ns, delay_max_ns] */
    /* Abort. */
    double abort_percent; /* eligible requests aborted, 0 .. 100 */
    int abort_code;       /* the rejection: an outcome code (fg_err_is_outcome); 0 means
                             FG_EINJECTED */
    uint64_t abort_retry_after_ns; /* put in ctx->retry_after_ns on abort; 0 = no hint */
    /* Targeting: when both are set both must hold. */
    const char *header;       /* copied; NULL: no header condition */
    const char *header_value; /* copied; NULL: the header's presence is enough */
    const fg_expr *when;      /* borrowed rule; NULL: no rule condition */
    /* Randomness. */
    uint64_t seed; /* 0: drawn from floodgate's random source at creation */
    int shadow;    /* nonzero: decide and count, never delay or abort */
} fg_fault_options;

/* Defaults. In C: fg_fault_options o = FG_FAULT_OPTIONS_INIT; o.abort_percent = 5; */
#define FG_FAULT_OPTIONS_INIT                                                                 \
    { 0.0, 0, 0, 0.0, FG_EINJECTED, 0, NULL, NULL, NULL, 0, 0 }

/*
 * What a fault stage has done, counted exactly (one atomic add each).
 * Outside shadow mode shadow_* stay 0; in shadow mode delayed, aborted and
 * delay_ns_total stay 0. A request counts in at most one of delayed,
 * aborted, shadow_delayed and shadow_aborted.
 */
typedef struct fg_fault_stats {
    uint64_t requests;       /* requests that entered the stage */
    uint64_t eligible;       /* of those, the ones the targeting selected */
    uint64_t delayed;        /* delayed (not aborted) */
    uint64_t aborted;        /* aborted (rejected with abort_code) */
    uint64_t delay_ns_total; /* sum of the delays injected, ns (wraps past 2^64) */
    uint64_t shadow_delayed; /* shadow mode: would have been delayed */
    uint64_t shadow_aborted; /* shadow mode: would have been aborted */
} fg_fault_stats;

/*
 * fg_stage_fault - a fault injection stage (kind "fault"). Its enter
 * returns 0 for a request that is not eligible. For an eligible one it
 * draws as the file comment says, then either rejects with abort_code and
 * sets ctx->retry_after_ns to abort_retry_after_ns (the chain records the
 * stage in ctx->rejected_by), or adds the delay to ctx->delay_ns (saturating
 * at UINT64_MAX) and admits, or just admits. The delay does not look at
 * ctx->deadline_ns: a latency drill is meant to push requests past their
 * deadlines. In shadow mode it draws and counts the same, and always admits
 * without touching the ctx. Behind a retrying stage each attempt is a new
 * request to this stage, with its own draws. The stage has no exit hook.
 *
 * Eligibility: with header set, the request's first header of that name
 * (compared ASCII case-insensitively) must exist and, when header_value is
 * set, equal it byte for byte. With when set, fg_expr_eval(when, ctx) must
 * return 1.
 *
 * Returns: 0 and *out; FG_EINVAL when opts or out is NULL, a percentage is
 * outside [0, 100] or NaN, delay_max_ns is nonzero and below delay_ns,
 * abort_code is neither 0 nor an outcome code (-100 .. -199, see
 * fg_err_is_outcome), header is empty or not an HTTP token, or header_value
 * is set without header; FG_ETOOLONG when name is longer than
 * FG_STAGE_NAME_MAX, header longer than FG_HEADER_NAME_MAX or header_value
 * longer than FG_HEADER_VALUE_MAX; FG_ENOMEM. On error *out is unchanged.
 * Ownership: opts is read; name (NULL: "fault"), header and header_value
 * are copied; when is borrowed and must outlive the stage. The caller owns
 * one reference to *out (fg_chain_use takes it).
 * Thread-safety: MT-safe. The stage is lock-free and allocation-free: each
 * request costs an atomic add or two (more when it is faulted) and, for an
 * eligible one, up to three 64-bit hashes.
 */
FG_API int fg_stage_fault(const fg_fault_options *opts, const char *name, fg_stage **out);

/*
 * fg_fault_stats_get - the counters of a stage made by fg_stage_fault.
 *
 * Returns: 0 and *out; FG_EINVAL when stage or out is NULL or stage is not
 * a fault stage.
 * Thread-safety: MT-safe, lock-free; each counter is read atomically, the
 * set is not one snapshot (read while requests flow, eligible may already
 * count a request that delayed does not yet).
 */
FG_API int fg_fault_stats_get(const fg_stage *stage, fg_fault_stats *out);

FG_END_DECLS

#endif /* FLOODGATE_FAULT_H */
