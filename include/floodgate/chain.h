/*
 * floodgate/chain.h - a chain of stages around a handler.
 *
 * Build a chain once (fg_chain_new, then fg_chain_use for each stage), then
 * share it: a chain that has served a request is immutable and any number of
 * threads may run requests through it at once.
 *
 * Two ways to run a request:
 *  - sync, for threaded servers: fg_chain_call enters every stage, calls the
 *    handler, and exits every stage in reverse order;
 *  - split, for event loops: fg_chain_enter now, and fg_chain_exit later
 *    (from a completion callback, possibly on another thread).
 * A stage that rejects stops the request: exactly the stages already entered
 * are exited, in reverse order, with a REJECTED outcome; the handler is never
 * called. fg_chain_call then hands the request to the fallback, if any.
 */
#ifndef FLOODGATE_CHAIN_H
#define FLOODGATE_CHAIN_H

#include <stddef.h>

#include "clock.h"
#include "common.h"
#include "ctx.h"
#include "stage.h"

FG_BEGIN_DECLS

#define FG_CHAIN_MAX_STAGES  FG_CTX_MAX_DEPTH /* stages in one chain */
#define FG_CHAIN_MAX_RETRIES 100              /* FG_STAGE_RETRY honoured at most this often */
#define FG_CHAIN_NAME_MAX    128              /* bytes in a chain name, inclusive */

/*
 * The handler: does the request's real work. Return 0 for success or a
 * negative code for failure (any other nonzero value is taken as
 * FG_EHANDLER). It may be called more than once per request when a stage
 * retries.
 */
typedef int (*fg_handler_fn)(fg_ctx *ctx, void *arg);

/*
 * The fallback: receives a request that a stage rejected (code is the
 * rejection, ctx->rejected_by the stage, or NULL when the chain itself
 * rejected it: out of time, canceled) and, with fallback_failures set, one
 * whose handler failed (code is the failure). It can serve a cached or
 * degraded answer; its return value becomes fg_chain_call's. Runs after the
 * entered stages have exited, on the calling thread.
 */
typedef int (*fg_fallback_fn)(fg_ctx *ctx, int code, void *arg);

/* Chain options. Start from FG_CHAIN_OPTIONS_INIT and set what you need. */
typedef struct fg_chain_options {
    const char *name;        /* copied; NULL means "default" */
    fg_clock clock;          /* now == NULL means the monotonic clock */
    fg_fallback_fn fallback; /* NULL: fg_chain_call returns the rejection code */
    void *fallback_arg;      /* passed to fallback and fallback_arg_free */
    int fallback_failures;   /* nonzero: handler failures go to the fallback too */
    /* Called with fallback_arg when the chain is freed (the chain then owns
     * it); NULL: the caller owns fallback_arg. */
    void (*fallback_arg_free)(void *arg);
} fg_chain_options;

/* Defaults. In C: fg_chain_options o = FG_CHAIN_OPTIONS_INIT; o.name = "api"; */
#define FG_CHAIN_OPTIONS_INIT                                                                 \
    { NULL, {NULL, NULL, NULL}, NULL, NULL, 0, NULL }

/*
 * fg_chain_new - an empty chain.
 *
 * Returns: 0 and *out; FG_EINVAL (out NULL); FG_ETOOLONG (name longer than
 * FG_CHAIN_NAME_MAX); FG_ENOMEM.
 * Ownership: opts is read, name copied; NULL opts means the defaults. The
 * caller owns *out and frees it with fg_chain_free.
 * Thread-safety: MT-safe.
 */
FG_API int fg_chain_new(const fg_chain_options *opts, fg_chain **out);

/*
 * fg_chain_use - append a stage; requests enter stages in the order added.
 *
 * Returns: 0; FG_EINVAL (NULL argument); FG_ESTATE when the chain has already
 * served a request (it is immutable from then on) or already ends in a
 * router stage (which must be last); FG_ETOOMANY past FG_CHAIN_MAX_STAGES,
 * or for a router stage when the chain's stages, the router and its
 * deepest target's stages would exceed FG_CTX_MAX_DEPTH; FG_ENOMEM.
 * Ownership: takes the caller's reference to stage, on success and on error
 * alike, so fg_chain_use(c, s) never leaks s. Use fg_stage_ref first to keep
 * one.
 * Thread-safety: not thread-safe: build the chain before sharing it.
 */
FG_API int fg_chain_use(fg_chain *chain, fg_stage *stage);

/*
 * fg_chain_free - free the chain and drop its stage references. NULL is
 * ignored.
 * Thread-safety: not thread-safe: no request may be inside the chain.
 */
FG_API void fg_chain_free(fg_chain *chain);

/*
 * fg_chain_call - run a request synchronously: read the clock into
 * ctx->now_ns, enter every stage, call handler(ctx, arg), exit every stage in
 * reverse order. ctx must have been prepared with fg_ctx_init.
 *
 * When a stage set ctx->delay_ns, the chain sleeps that long on its clock
 * (fg_clock_sleep) after the last enter and before the handler. When a stage's
 * exit returns FG_STAGE_RETRY, the stages after it and the handler run again
 * (see stage.h); ctx->now_ns is then re-read for each attempt and restored to
 * the first reading when the call returns.
 *
 * When the chain ends in a router (floodgate/router.h), a routed request is
 * served by its target's handler instead: handler and arg are then not used
 * and may be NULL.
 *
 * Returns: 0 when the handler succeeded; the handler's failure code; the
 * rejection code when a stage rejected (or the fallback's return value when
 * the chain has a fallback); FG_EINVAL when chain or ctx is NULL, or handler
 * is NULL and the chain does not end in a router (arg may be NULL); FG_ESTATE when ctx was not
 * initialised, is already inside a chain, or has finished a request (fg_ctx_init it again).
 * ctx->status holds the same code (even when the fallback's return value is
 * what is returned), ctx->rejected_by the rejecting stage.
 * Ownership: borrows everything.
 * Thread-safety: MT-safe, for any number of threads, each with its own ctx.
 * Lock-free as far as the chain's stages are.
 */
FG_API int fg_chain_call(const fg_chain *chain, fg_ctx *ctx, fg_handler_fn handler, void *arg);

/*
 * fg_chain_enter - the first half of the split API: read the clock into
 * ctx->now_ns and enter every stage.
 *
 * Returns: 0 when admitted: the caller must later call fg_chain_exit exactly
 * once. A negative rejection code when a stage rejected: the entered stages
 * have already exited, the request is finished, and fg_chain_exit must not
 * be called (it would return FG_ESTATE). The fallback is not called: the
 * caller answers the rejection itself. FG_EINVAL / FG_ESTATE as for
 * fg_chain_call.
 * Thread-safety: MT-safe, as fg_chain_call.
 */
FG_API int fg_chain_enter(const fg_chain *chain, fg_ctx *ctx);

/*
 * fg_chain_exit - the second half: report the outcome of an admitted request
 * (status 0 for success, a negative code for failure; other nonzero values
 * are taken as FG_EHANDLER), read the clock for the latency, and exit every
 * entered stage in reverse order. May run on another thread than
 * fg_chain_enter did, once the ctx has been handed over.
 *
 * Returns: 0; FG_EINVAL for a NULL argument or when ctx was entered through
 * another chain; FG_ESTATE when ctx is not waiting for an exit (never
 * admitted, rejected, or already exited).
 * Thread-safety: MT-safe, as fg_chain_call.
 */
FG_API int fg_chain_exit(const fg_chain *chain, fg_ctx *ctx, int status);

/*
 * fg_chain_length - how many stages the chain has.
 * Returns: the count; 0 for a NULL chain. Thread-safety: MT-safe.
 */
FG_API size_t fg_chain_length(const fg_chain *chain);

/*
 * fg_chain_stage - the i-th stage, in the order added.
 * Returns: the stage, or NULL past the end or for a NULL chain.
 * Ownership: borrowed from the chain. Thread-safety: MT-safe.
 */
FG_API const fg_stage *fg_chain_stage(const fg_chain *chain, size_t i);

/*
 * fg_chain_name - the chain's name.
 * Returns: the chain's copy ("" for a NULL chain); never NULL.
 * Ownership: the chain's. Thread-safety: MT-safe.
 */
FG_API const char *fg_chain_name(const fg_chain *chain);

/*
 * fg_chain_now - read the chain's clock, e.g. to set ctx->deadline_ns
 * (absolute, on this clock) before entering.
 * Returns: nanoseconds; the monotonic clock for a NULL chain.
 * Thread-safety: MT-safe.
 */
FG_API uint64_t fg_chain_now(const fg_chain *chain);

FG_END_DECLS

#endif /* FLOODGATE_CHAIN_H */
