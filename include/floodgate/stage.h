/*
 * floodgate/stage.h - the stage interface: one plug-in in a chain.
 *
 * A stage has two hooks. enter runs before the handler and admits the
 * request (0) or rejects it (a negative FG_E* code). exit runs after the
 * handler, or after a later stage rejected the request, and sees the outcome
 * and the latency. Every built-in stage (limiter, breaker, router, ...) is
 * built on exactly this interface; a program's own stages use it too.
 *
 * Why two hooks and not one "around" function: an event-loop server admits a
 * request on the loop and learns its outcome later from a completion
 * callback, so the chain must be able to stop between the two halves
 * (fg_chain_enter / fg_chain_exit). See docs/adr/0001-enter-exit-stages.md.
 *
 * Per-request state: enter may write one 64-bit word into *slot (a token
 * count, a generation number, a pointer); exit gets it back. The chain keeps
 * the slot in the ctx, so a stage never allocates per request.
 */
#ifndef FLOODGATE_STAGE_H
#define FLOODGATE_STAGE_H

#include <stdint.h>

#include "common.h"
#include "ctx.h"

FG_BEGIN_DECLS

/* How a request ended, as the exit hooks see it. */
typedef enum fg_outcome_kind {
    FG_OUTCOME_OK = 0,       /* the handler ran and succeeded */
    FG_OUTCOME_FAILED = 1,   /* the handler ran and failed */
    FG_OUTCOME_REJECTED = 2, /* a later stage rejected it; the handler did not run */
} fg_outcome_kind;

/* A request's outcome, as each exit hook receives it. */
typedef struct fg_outcome {
    fg_outcome_kind kind; /* how it ended */
    /* 0 for OK; the handler's negative code for FAILED (FG_EHANDLER when it
     * gave none); the rejecting stage's code for REJECTED. */
    int code;
    /* Time from this stage's enter to its exit, on the chain's clock. Equal
     * for all stages unless a retry re-entered some of them: then a stage
     * after the retrying one sees its own attempt, the ones before see the
     * whole request. */
    uint64_t latency_ns;
    /* The stage that rejected (REJECTED only), else NULL. */
    const fg_stage *rejected_by;
} fg_outcome;

/*
 * Returned by an exit hook to ask a synchronous chain (fg_chain_call) to run
 * the stages after this one and the handler again: a retry. The chain
 * increments ctx->retry_count first and gives up after FG_CHAIN_MAX_RETRIES.
 * In the split API the outcome is final and this value is ignored.
 */
#define FG_STAGE_RETRY 1

/*
 * fg_stage_ops - a stage kind's hooks. Any hook may be NULL (enter: admit
 * all; exit: nothing to record; destroy: nothing to free).
 *
 * enter(state, ctx, slot): return 0 to admit or a negative FG_E* code to
 *   reject (a positive value is taken as FG_EREJECTED). A rejecting stage
 *   may set ctx->retry_after_ns. *slot starts at 0.
 * exit(state, ctx, outcome, slot): return 0, or FG_STAGE_RETRY (above); any
 *   other value is ignored. Called once for each successful enter, in
 *   reverse order. With retries a stage after the retrying one is entered
 *   and exited once per attempt (a fresh slot each time), and the retrying
 *   stage's exit sees every attempt's outcome with its one slot.
 * destroy(state): free the state when the last reference to the stage goes.
 *
 * Hooks are called from whichever thread runs the request, concurrently for
 * different requests: they must be MT-safe on their state. enter and exit
 * of one request may run on different threads (the split API).
 */
typedef struct fg_stage_ops {
    const char *kind; /* e.g. "limiter"; a static string */
    /* Admit (0) or reject (a negative code) a request; see above. */
    int (*enter)(void *state, fg_ctx *ctx, uint64_t *slot);
    /* See how an entered request ended: 0, or FG_STAGE_RETRY; see above. */
    int (*exit)(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot);
    /* Free the state with the stage. */
    void (*destroy)(void *state);
} fg_stage_ops;

#define FG_STAGE_NAME_MAX 128 /* bytes in a stage name, inclusive */

/*
 * fg_stage_new - make a stage from a kind's hooks and an instance's state.
 *
 * Returns: 0 and *out; FG_EINVAL when ops, ops->kind, name or out is NULL;
 * FG_ETOOLONG when name is longer than FG_STAGE_NAME_MAX; FG_ENOMEM.
 * Ownership: borrows ops (it must outlive the stage: make it static); copies
 * name; takes state on success (ops->destroy frees it with the stage). On
 * error the caller still owns state. The caller owns one reference to *out.
 * Thread-safety: MT-safe.
 */
FG_API int fg_stage_new(const fg_stage_ops *ops, void *state, const char *name,
                        fg_stage **out);

/*
 * fg_stage_ref - take another reference, e.g. to put one stage (one shared
 * limiter) into two chains.
 *
 * Returns: stage (NULL for NULL).
 * Thread-safety: MT-safe, lock-free.
 */
FG_API fg_stage *fg_stage_ref(fg_stage *stage);

/*
 * fg_stage_unref - drop a reference; the last one destroys the state and
 * frees the stage. NULL is ignored.
 *
 * Thread-safety: MT-safe, lock-free; the last reference must not race with
 * requests still inside the stage.
 */
FG_API void fg_stage_unref(fg_stage *stage);

/*
 * fg_stage_name - the instance name given to fg_stage_new.
 * Returns: the stage's copy ("" for a NULL stage); never NULL.
 * Ownership: the stage's; valid while the stage lives. Thread-safety: MT-safe.
 */
FG_API const char *fg_stage_name(const fg_stage *stage);

/*
 * fg_stage_kind - the kind, ops->kind.
 * Returns: ops->kind ("" for a NULL stage); never NULL.
 * Ownership: the ops table's. Thread-safety: MT-safe.
 */
FG_API const char *fg_stage_kind(const fg_stage *stage);

/*
 * fg_stage_state - the state pointer given to fg_stage_new.
 * Returns: the state (NULL for a NULL stage).
 * Ownership: the stage's; valid while the stage lives. Thread-safety: MT-safe.
 */
FG_API void *fg_stage_state(const fg_stage *stage);

FG_END_DECLS

#endif /* FLOODGATE_STAGE_H */
