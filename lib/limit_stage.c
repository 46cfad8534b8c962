/*
 * lib/limit_stage.c - the chain stages around fg_limiter,
 * fg_keyed_limiter and fg_cluster_limiter: take tokens at the request's clock reading, reject
 * with FG_ELIMITED and a retry-after hint, or admit with a smoothing delay that never runs
 * past the request's deadline. In shadow mode decide and count, never act.
 */
#include <string.h>

#include "floodgate/cluster.h"
#include "floodgate/error.h"
#include "floodgate/limiter.h"
#include "floodgate/trace.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"
#include "limiter_internal.h"

struct fg_limit_stage {
    fg_limiter *limiter; /* one of these three */
    fg_keyed_limiter *keyed;
    fg_cluster_limiter *cluster;
    uint64_t tokens;
    int shadow;
    fg_key_source key_source;
    char *key_name;
    size_t key_name_len;
    fg_key_fn key_fn;
    void *key_arg;
    fg_key_missing missing;
    /* Counters, on their own cache line: every request writes one. */
    char pad[64];
    uint64_t admitted;
    uint64_t delayed;
    uint64_t rejected;
    uint64_t shadow_rejected;
    uint64_t missing_key;
};

/* The longest wait a request may be given: up to its deadline, if any. */
static uint64_t fg_wait_bound(const fg_ctx *ctx) {
    if (ctx->deadline_ns == 0)
        return UINT64_MAX;
    return ctx->deadline_ns > ctx->now_ns ? ctx->deadline_ns - ctx->now_ns : 0;
}

/* Count and act on one decision (rc from a try, wait its wait). */
static int fg_limit_verdict(struct fg_limit_stage *st, fg_ctx *ctx, int rc, uint64_t wait) {
    if (rc == 0) {
        if (wait == 0) {
            fg__faa_u64(&st->admitted, 1);
        } else {
            fg__faa_u64(&st->delayed, 1);
            if (!st->shadow && wait > ctx->delay_ns)
                ctx->delay_ns = wait;
        }
        return 0;
    }
    if (st->shadow) {
        fg__faa_u64(&st->shadow_rejected, 1);
        return 0;
    }
    fg__faa_u64(&st->rejected, 1);
    if (rc == FG_ELIMITED)
        ctx->retry_after_ns = wait;
    return rc;
}

static int fg_limit_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)slot;
    struct fg_limit_stage *st = state;
    uint64_t wait;
    int rc =
        fg_limiter_try_wait(st->limiter, ctx->now_ns, st->tokens, fg_wait_bound(ctx), &wait);
    return fg_limit_verdict(st, ctx, rc, wait);
}

static int fg_limit_cluster_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)slot;
    struct fg_limit_stage *st = state;
    uint64_t wait;
    int rc = fg_cluster_limiter_try(st->cluster, ctx->now_ns, st->tokens, &wait);
    return fg_limit_verdict(st, ctx, rc, wait);
}

/* One decision on key's bucket: the keyed limiter's, or the per-key
 * cluster limiter's. */
static int fg_limit_key_try(struct fg_limit_stage *st, const fg_ctx *ctx, const char *key,
                            size_t len, uint64_t *wait) {
    if (st->cluster != NULL)
        return fg_cluster_limiter_try_key(st->cluster, key, len, ctx->now_ns, st->tokens,
                                          wait);
    return fg_keyed_limiter_try(st->keyed, key, len, ctx->now_ns, st->tokens,
                                fg_wait_bound(ctx), wait);
}

static int fg_limit_keyed_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)slot;
    struct fg_limit_stage *st = state;
    fg_str key = {NULL, 0};
    int found;
    switch (st->key_source) {
    case FG_KEY_PATH:
        key = ctx->path;
        found = 1;
        break;
    case FG_KEY_CUSTOM:
        found = st->key_fn(ctx, &key, st->key_arg) == 0;
        break;
    case FG_KEY_BAGGAGE: {
        /* Decoded into the stack: a key longer than any keyed limiter
         * accepts is a key too long, as a long header would be. */
        char buf[FG_KEYED_KEY_MAX_LIMIT + 1];
        size_t len;
        int rc = fg_ctx_baggage(ctx, st->key_name, st->key_name_len, buf, sizeof(buf), &len);
        if (rc == FG_ETOOLONG)
            return fg_limit_verdict(st, ctx, FG_ETOOLONG, 0);
        if (rc == 0) {
            uint64_t wait;
            rc = fg_limit_key_try(st, ctx, buf, len, &wait);
            return fg_limit_verdict(st, ctx, rc, wait);
        }
        found = 0;
        break;
    }
    case FG_KEY_HEADER:
    default:
        found = fg_ctx_header_n(ctx, st->key_name, st->key_name_len, &key) == 0;
        break;
    }
    if (!found) {
        fg__faa_u64(&st->missing_key, 1);
        if (st->missing == FG_KEY_MISSING_ADMIT)
            return 0;
        if (st->missing == FG_KEY_MISSING_REJECT)
            return fg_limit_verdict(st, ctx, FG_ELIMITED, 0);
        key.ptr = NULL; /* FG_KEY_MISSING_SHARED: the empty key's bucket */
        key.len = 0;
    }
    uint64_t wait;
    int rc = fg_limit_key_try(st, ctx, key.ptr, key.len, &wait);
    return fg_limit_verdict(st, ctx, rc, wait);
}

static void fg_limit_destroy(void *state) {
    struct fg_limit_stage *st = state;
    fg__free(st->key_name);
    fg__free(st);
}

static const fg_stage_ops fg_limit_ops = {"limit", fg_limit_enter, NULL, fg_limit_destroy};
static const fg_stage_ops fg_limit_cluster_ops = {"limit_cluster", fg_limit_cluster_enter,
                                                  NULL, fg_limit_destroy};
static const fg_stage_ops fg_limit_keyed_ops = {"limit_keyed", fg_limit_keyed_enter, NULL,
                                                fg_limit_destroy};

static int fg_limit_stage_make(const fg_stage_ops *ops, struct fg_limit_stage *st,
                               const fg_limit_stage_options *opts, fg_stage **out) {
    const char *name = opts && opts->name ? opts->name : "limit";
    int rc = fg_stage_new(ops, st, name, out);
    if (rc != 0)
        fg_limit_destroy(st);
    return rc;
}

static struct fg_limit_stage *fg_limit_stage_alloc(const fg_limit_stage_options *opts) {
    struct fg_limit_stage *st = fg__calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    st->tokens = opts && opts->tokens ? opts->tokens : 1;
    st->shadow = opts ? opts->shadow != 0 : 0;
    return st;
}

int fg_stage_limit(fg_limiter *limiter, const fg_limit_stage_options *opts, fg_stage **out) {
    if (limiter == NULL || out == NULL)
        return FG_EINVAL;
    fg_limiter_options lo;
    fg_limiter_get(limiter, &lo);
    if (opts && opts->tokens > lo.burst)
        return FG_ERANGE;
    struct fg_limit_stage *st = fg_limit_stage_alloc(opts);
    if (st == NULL)
        return FG_ENOMEM;
    st->limiter = limiter;
    return fg_limit_stage_make(&fg_limit_ops, st, opts, out);
}

/* A stage on a per-key bucket table: keyed, or a per-key cluster limiter
 * (exactly one of the two), whose burst is burst. */
static int fg_limit_keyed_make(fg_keyed_limiter *keyed, fg_cluster_limiter *cluster,
                               uint64_t burst, const fg_limit_stage_options *opts,
                               fg_stage **out) {
    static const fg_limit_stage_options defaults = FG_LIMIT_STAGE_OPTIONS_INIT;
    if (opts == NULL)
        opts = &defaults;
    if (opts->tokens > burst)
        return FG_ERANGE;
    int named = opts->key_source == FG_KEY_HEADER || opts->key_source == FG_KEY_BAGGAGE;
    if ((named && opts->key_name == NULL) ||
        (opts->key_source == FG_KEY_CUSTOM && opts->key_fn == NULL) ||
        (!named && opts->key_source != FG_KEY_PATH && opts->key_source != FG_KEY_CUSTOM) ||
        (opts->missing != FG_KEY_MISSING_ADMIT && opts->missing != FG_KEY_MISSING_REJECT &&
         opts->missing != FG_KEY_MISSING_SHARED))
        return FG_EINVAL;
    size_t name_len = 0;
    if (named) {
        name_len = strnlen(opts->key_name, FG_HEADER_NAME_MAX + 1);
        if (name_len > FG_HEADER_NAME_MAX)
            return FG_ETOOLONG;
    }
    struct fg_limit_stage *st = fg_limit_stage_alloc(opts);
    if (st == NULL)
        return FG_ENOMEM;
    st->keyed = keyed;
    st->cluster = cluster;
    st->key_source = opts->key_source;
    st->key_fn = opts->key_fn;
    st->key_arg = opts->key_arg;
    st->missing = opts->missing;
    if (named) {
        st->key_name = fg__strndup(opts->key_name, name_len);
        st->key_name_len = name_len;
        if (st->key_name == NULL) {
            fg_limit_destroy(st);
            return FG_ENOMEM;
        }
    }
    return fg_limit_stage_make(&fg_limit_keyed_ops, st, opts, out);
}

int fg_stage_limit_keyed(fg_keyed_limiter *keyed, const fg_limit_stage_options *opts,
                         fg_stage **out) {
    if (keyed == NULL || out == NULL)
        return FG_EINVAL;
    return fg_limit_keyed_make(keyed, NULL, fg__keyed_burst(keyed), opts, out);
}

int fg_stage_limit_cluster(fg_cluster_limiter *cl, const fg_limit_stage_options *opts,
                           fg_stage **out) {
    if (out != NULL)
        *out = NULL;
    if (cl == NULL || out == NULL)
        return FG_EINVAL;
    fg_cluster_options co;
    if (fg_cluster_limiter_get(cl, &co) != 0)
        return FG_EINVAL;
    if (co.max_keys > 0)
        return fg_limit_keyed_make(NULL, cl, co.burst, opts, out);
    if (opts && opts->tokens > co.burst)
        return FG_ERANGE;
    struct fg_limit_stage *st = fg_limit_stage_alloc(opts);
    if (st == NULL)
        return FG_ENOMEM;
    st->cluster = cl;
    return fg_limit_stage_make(&fg_limit_cluster_ops, st, opts, out);
}

int fg_limit_stage_stats(const fg_stage *stage, fg_limit_stats *stats) {
    if (stage == NULL || stats == NULL ||
        (stage->ops != &fg_limit_ops && stage->ops != &fg_limit_keyed_ops &&
         stage->ops != &fg_limit_cluster_ops))
        return FG_EINVAL;
    struct fg_limit_stage *st = stage->state;
    stats->admitted = fg__load_u64(&st->admitted);
    stats->delayed = fg__load_u64(&st->delayed);
    stats->rejected = fg__load_u64(&st->rejected);
    stats->shadow_rejected = fg__load_u64(&st->shadow_rejected);
    stats->missing_key = fg__load_u64(&st->missing_key);
    return 0;
}
