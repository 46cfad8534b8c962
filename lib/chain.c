/*
 * lib/chain.c - the chain: an immutable array of stages run around a handler.
 *
 * A request's progress lives entirely in its ctx: priv.frames is a stack of
 * the stages it has entered (with each one's slot and entry time), so
 * unwinding - after the handler, after a rejection, or in a later
 * fg_chain_exit on another thread - pops exactly what was pushed, in reverse.
 * The chain itself is never written once it has served a request, so any
 * number of threads share it without synchronisation; the one exception is
 * the `frozen` flag, written once.
 */
#include <string.h>

#include "floodgate/chain.h"
#include "floodgate/error.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"
#include "router_internal.h"

struct fg_chain {
    char *name;
    fg_clock clock;
    fg_fallback_fn fallback;
    void *fallback_arg;
    int fallback_failures;
    void (*fallback_arg_free)(void *);
    uint32_t frozen; /* 0 while building; 1 once a request has entered */
    uint32_t nstages;
    fg_stage *stages[FG_CHAIN_MAX_STAGES];
};

int fg_chain_new(const fg_chain_options *opts, fg_chain **out) {
    static const fg_chain_options defaults = FG_CHAIN_OPTIONS_INIT;
    if (out == NULL)
        return FG_EINVAL;
    if (opts == NULL)
        opts = &defaults;
    const char *name = opts->name ? opts->name : "default";
    size_t len = strnlen(name, FG_CHAIN_NAME_MAX + 1);
    if (len > FG_CHAIN_NAME_MAX)
        return FG_ETOOLONG;
    fg_chain *chain = fg__calloc(1, sizeof(*chain));
    if (chain == NULL)
        return FG_ENOMEM;
    chain->name = fg__strndup(name, len);
    if (chain->name == NULL) {
        fg__free(chain);
        return FG_ENOMEM;
    }
    chain->clock = opts->clock.now ? opts->clock : fg_clock_monotonic();
    chain->fallback = opts->fallback;
    chain->fallback_arg = opts->fallback_arg;
    chain->fallback_failures = opts->fallback_failures != 0;
    chain->fallback_arg_free = opts->fallback_arg_free;
    *out = chain;
    return 0;
}

int fg_chain_use(fg_chain *chain, fg_stage *stage) {
    if (chain == NULL || stage == NULL) {
        fg_stage_unref(stage);
        return FG_EINVAL;
    }
    int rc = 0;
    if (fg__load_u32(&chain->frozen) ||
        (chain->nstages > 0 && fg__is_router_stage(chain->stages[chain->nstages - 1])))
        rc = FG_ESTATE; /* frozen, or after the router, which must come last */
    else if (chain->nstages >= FG_CHAIN_MAX_STAGES ||
             (fg__is_router_stage(stage) &&
              chain->nstages + 1 + fg__router_stage_depth(stage) > FG_CTX_MAX_DEPTH))
        rc = FG_ETOOMANY; /* a routed request could not hold all its frames */
    if (rc != 0) {
        fg_stage_unref(stage);
        return rc;
    }
    chain->stages[chain->nstages++] = stage;
    return 0;
}

void fg_chain_free(fg_chain *chain) {
    if (chain == NULL)
        return;
    for (uint32_t i = 0; i < chain->nstages; i++)
        fg_stage_unref(chain->stages[i]);
    if (chain->fallback_arg_free != NULL)
        chain->fallback_arg_free(chain->fallback_arg);
    fg__free(chain->name);
    fg__free(chain);
}

size_t fg_chain_length(const fg_chain *chain) { return chain ? chain->nstages : 0; }

const fg_stage *fg_chain_stage(const fg_chain *chain, size_t i) {
    return (chain && i < chain->nstages) ? chain->stages[i] : NULL;
}

const char *fg_chain_name(const fg_chain *chain) { return chain ? chain->name : ""; }

uint64_t fg_chain_now(const fg_chain *chain) {
    return fg_clock_read(chain ? &chain->clock : NULL);
}

/* Stage and handler codes are meant to be negative FG_E* values; anything
 * else nonzero is a bug in the stage or handler, mapped to a generic code so
 * that "rejected" and "failed" can never look like success. */
static int fg_reject_code(int rc) { return rc > 0 ? FG_EREJECTED : rc; }
static int fg_failure_code(int rc) { return rc > 0 ? FG_EHANDLER : rc; }

static uint64_t fg_elapsed(uint64_t from, uint64_t to) { return to > from ? to - from : 0; }

/* Start a request: check the ctx, freeze the chain, read the clock once. */
static int fg_chain_begin(const fg_chain *chain, fg_ctx *ctx, uint32_t state) {
    if (chain == NULL || ctx == NULL)
        return FG_EINVAL;
    if (ctx->priv.state != FG_CTX_READY)
        return FG_ESTATE;
    /* The chain is const to callers but was allocated mutable; the flag is
     * the single field written after building, once, by whichever request
     * comes first. Checking before storing keeps the shared cache line
     * read-only in the steady state. */
    fg_chain *mut = (fg_chain *)chain;
    if (!fg__load_u32(&mut->frozen))
        fg__store_u32(&mut->frozen, 1);
    ctx->priv.chain = chain;
    ctx->priv.depth = 0;
    ctx->priv.route_target = NULL; /* only this chain's router may choose one */
    ctx->priv.state = state;
    ctx->now_ns = fg_clock_read(&chain->clock);
    return 0;
}

/* The i-th stage of this request: the chain's, then (once the router
 * stage, always the chain's last, has chosen) the target's. NULL past the
 * end. */
static fg_stage *fg_stage_at(const fg_chain *chain, const fg_ctx *ctx, uint32_t i) {
    if (i < chain->nstages)
        return chain->stages[i];
    const struct fg__route_target *t = ctx->priv.route_target;
    if (t == NULL || i - chain->nstages >= t->nstages)
        return NULL;
    return t->stages[i - chain->nstages];
}

/* Enter the request's stages from index `from` on. On rejection the
 * rejecting stage is not pushed: it never admitted, so it must not be
 * exited. The frame stack cannot overflow: fg_chain_use refused a router
 * whose targets could make a request deeper than FG_CTX_MAX_DEPTH. */
/* A rejection by the chain itself (no stage): canceled, or out of time. */
static int fg_chain_reject(fg_ctx *ctx, int code) {
    ctx->status = code;
    ctx->rejected_by = NULL;
    return code;
}

/* dl, when not NULL (the sync chain), gets the deadline as each stage left
 * it on entering: see fg_unwind. */
static int fg_enter_stages(const fg_chain *chain, fg_ctx *ctx, uint32_t from, uint64_t *dl) {
    fg_stage *stage;
    for (uint32_t i = from; (stage = fg_stage_at(chain, ctx, i)) != NULL; i++) {
        if (fg__load_u32(&ctx->priv.canceled))
            return fg_chain_reject(ctx, FG_ECANCELED);
        uint64_t slot = 0;
        int rc = stage->ops->enter ? stage->ops->enter(stage->state, ctx, &slot) : 0;
        if (rc != 0) {
            ctx->status = fg_reject_code(rc);
            ctx->rejected_by = stage;
            return ctx->status;
        }
        fg_ctx_frame *frame = &ctx->priv.frames[ctx->priv.depth++];
        frame->stage = stage;
        frame->slot = slot;
        frame->enter_ns = ctx->now_ns;
        if (dl != NULL)
            dl[ctx->priv.depth - 1] = ctx->deadline_ns;
    }
    /* Every stage admitted it: it may start only if it still can, now or
     * after the wait a stage asked for. */
    if (fg__load_u32(&ctx->priv.canceled))
        return fg_chain_reject(ctx, FG_ECANCELED);
    if (ctx->deadline_ns != 0 &&
        (ctx->now_ns > ctx->deadline_ns || ctx->delay_ns > ctx->deadline_ns - ctx->now_ns))
        return fg_chain_reject(ctx, FG_ETIMEDOUT);
    return 0;
}

/*
 * Exit every entered stage, innermost first. When allow_retry is set and a
 * stage's exit asks for a retry (and the budget of retries is not spent),
 * stop there, leaving that stage and the ones before it entered, and return
 * 1; the caller re-enters the stages after it. Otherwise return 0.
 */
static int fg_unwind(fg_ctx *ctx, fg_outcome *outcome, uint64_t end_ns, int allow_retry,
                     const uint64_t *dl) {
    while (ctx->priv.depth > 0) {
        const fg_ctx_frame *frame = &ctx->priv.frames[ctx->priv.depth - 1];
        const fg_stage *stage = frame->stage;
        outcome->latency_ns = fg_elapsed(frame->enter_ns, end_ns);
        /* A stage's exit sees the deadline it left on entering, not one a
         * later stage (an inner timeout) set for this attempt only: a
         * retrying stage judges against the request's deadline, and the
         * attempt it starts gets a fresh inner one. */
        if (dl != NULL)
            ctx->deadline_ns = dl[ctx->priv.depth - 1];
        int rc = 0;
        if (stage->ops->exit)
            rc = stage->ops->exit(stage->state, ctx, outcome, frame->slot);
        if (rc == FG_STAGE_RETRY && allow_retry && ctx->retry_count < FG_CHAIN_MAX_RETRIES)
            return 1;
        ctx->priv.depth--;
    }
    return 0;
}

/* Whether the chain ends in a router. */
static int fg_chain_routed(const fg_chain *chain) {
    return chain->nstages > 0 && fg__is_router_stage(chain->stages[chain->nstages - 1]);
}

int fg_chain_call(const fg_chain *chain, fg_ctx *ctx, fg_handler_fn handler, void *arg) {
    if (chain == NULL || (handler == NULL && !fg_chain_routed(chain)))
        return FG_EINVAL;
    int rc = fg_chain_begin(chain, ctx, FG_CTX_RUNNING);
    if (rc != 0)
        return rc;
    uint64_t start_ns = ctx->now_ns;
    fg_outcome outcome;
    uint64_t dl[FG_CTX_MAX_DEPTH];
    for (;;) {
        memset(&outcome, 0, sizeof(outcome));
        rc = fg_enter_stages(chain, ctx, ctx->priv.depth, dl);
        if (rc != 0) {
            outcome.kind = FG_OUTCOME_REJECTED;
            outcome.code = rc;
            outcome.rejected_by = ctx->rejected_by;
        } else {
            /* A stage admitted the request for a later slot: wait for it
             * here, on the chain's clock, so the handler starts on time. */
            if (ctx->delay_ns)
                fg_clock_sleep(&chain->clock, ctx->delay_ns);
            /* A routed request is served by its target's handler. */
            const struct fg__route_target *t = ctx->priv.route_target;
            fg_handler_fn fn = t ? t->handler : handler;
            void *fn_arg = t ? t->arg : arg;
            /* fn is set: a routed chain's router admitted only with a target. */
            ctx->status = fn ? fg_failure_code(fn(ctx, fn_arg)) : FG_ESTATE;
            outcome.kind = ctx->status ? FG_OUTCOME_FAILED : FG_OUTCOME_OK;
            outcome.code = ctx->status;
        }
        uint64_t end_ns = fg_clock_read(&chain->clock);
        uint64_t inner = ctx->deadline_ns;
        if (!fg_unwind(ctx, &outcome, end_ns, 1, dl)) {
            ctx->deadline_ns = inner; /* the caller sees the last attempt's deadline */
            break;
        }
        /* A stage asked for another attempt: the stages after it run again
         * with a fresh clock reading and a clean verdict. */
        ctx->retry_count++;
        ctx->status = 0;
        ctx->rejected_by = NULL;
        ctx->retry_after_ns = 0;
        ctx->delay_ns = 0;
        /* Read again: the retrying stage may have slept its backoff. */
        ctx->now_ns = fg_clock_read(&chain->clock);
    }
    /* Retried attempts moved now_ns forward; give the caller back the
     * request's own start time. */
    ctx->now_ns = start_ns;
    ctx->priv.state = FG_CTX_FINISHED;
    if (chain->fallback != NULL &&
        (outcome.kind == FG_OUTCOME_REJECTED ||
         (outcome.kind == FG_OUTCOME_FAILED && chain->fallback_failures)))
        return chain->fallback(ctx, outcome.code, chain->fallback_arg);
    return ctx->status;
}

int fg_chain_enter(const fg_chain *chain, fg_ctx *ctx) {
    int rc = fg_chain_begin(chain, ctx, FG_CTX_ADMITTED);
    if (rc != 0)
        return rc;
    rc = fg_enter_stages(chain, ctx, 0, NULL);
    if (rc == 0)
        return 0;
    fg_outcome outcome = {FG_OUTCOME_REJECTED, rc, 0, ctx->rejected_by};
    fg_unwind(ctx, &outcome, fg_clock_read(&chain->clock), 0, NULL);
    ctx->priv.state = FG_CTX_FINISHED;
    return rc;
}

int fg_chain_exit(const fg_chain *chain, fg_ctx *ctx, int status) {
    if (chain == NULL || ctx == NULL)
        return FG_EINVAL;
    if (ctx->priv.state != FG_CTX_ADMITTED)
        return FG_ESTATE;
    if (ctx->priv.chain != chain)
        return FG_EINVAL;
    ctx->status = fg_failure_code(status);
    fg_outcome outcome = {ctx->status ? FG_OUTCOME_FAILED : FG_OUTCOME_OK, ctx->status, 0,
                          NULL};
    fg_unwind(ctx, &outcome, fg_clock_read(&chain->clock), 0, NULL);
    ctx->priv.state = FG_CTX_FINISHED;
    return 0;
}
