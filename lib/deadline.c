/*
 * lib/deadline.c - deadlines, cancellation, the grpc-timeout wire form and
 * the timeout stage. The chain's checks live in lib/chain.c.
 */
#include <stdio.h>
#include <string.h>

#include "floodgate/chain.h"
#include "floodgate/deadline.h"
#include "floodgate/error.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"

/* ---- the ctx ---------------------------------------------------------------------------- */

uint64_t fg_ctx_remaining(const fg_ctx *ctx, uint64_t now_ns) {
    if (ctx == NULL || ctx->deadline_ns == 0)
        return UINT64_MAX;
    return ctx->deadline_ns > now_ns ? ctx->deadline_ns - now_ns : 0;
}

uint64_t fg_ctx_time_left(const fg_ctx *ctx) {
    if (ctx == NULL || ctx->deadline_ns == 0)
        return UINT64_MAX;
    return fg_ctx_remaining(ctx, fg_chain_now(ctx->priv.chain));
}

int fg_ctx_set_deadline(fg_ctx *ctx, uint64_t deadline_ns) {
    if (ctx == NULL)
        return FG_EINVAL;
    if (deadline_ns == 0 || (ctx->deadline_ns != 0 && ctx->deadline_ns <= deadline_ns))
        return 0;
    ctx->deadline_ns = deadline_ns;
    return 1;
}

void fg_ctx_cancel(fg_ctx *ctx) {
    if (ctx != NULL)
        fg__store_u32(&ctx->priv.canceled, 1);
}

int fg_ctx_canceled(const fg_ctx *ctx) {
    return ctx != NULL && fg__load_u32(&ctx->priv.canceled) != 0;
}

/* ---- grpc-timeout -------------------------------------------------------------------------
 */

#define FG_TIMEOUT_DIGITS 8
#define FG_TIMEOUT_MAX    UINT64_C(99999999)

/* Units, coarsest first: letter and nanoseconds. */
static const struct {
    char unit;
    uint64_t ns;
} fg_units[] = {{'H', UINT64_C(3600000000000)}, {'M', UINT64_C(60000000000)},
                {'S', UINT64_C(1000000000)},    {'m', UINT64_C(1000000)},
                {'u', UINT64_C(1000)},          {'n', 1}};
#define FG_NUNITS (sizeof(fg_units) / sizeof(fg_units[0]))

int fg_timeout_parse(const char *s, size_t len, uint64_t *ns) {
    if ((s == NULL && len > 0) || ns == NULL)
        return FG_EINVAL;
    if (len < 2 || len > FG_TIMEOUT_DIGITS + 1)
        return FG_EPARSE;
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return FG_EPARSE;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v == 0)
        return FG_EPARSE; /* gRPC: a positive integer */
    for (size_t u = 0; u < FG_NUNITS; u++)
        if (s[len - 1] == fg_units[u].unit) {
            /* Hours beyond 5,124,095 do not fit in 64 bits of ns: saturate. */
            uint64_t limit = UINT64_MAX / fg_units[u].ns;
            *ns = v > limit ? UINT64_MAX : v * fg_units[u].ns;
            return 0;
        }
    return FG_EPARSE;
}

int fg_timeout_format(uint64_t ns, char *buf, size_t cap) {
    if (buf == NULL)
        return FG_EINVAL;
    if (cap < FG_TIMEOUT_DIGITS + 2)
        return FG_ETOOLONG;
    /* The finest unit that fits in 8 digits, rounded down. */
    size_t u = FG_NUNITS - 1; /* 'n' */
    while (u > 0 && ns / fg_units[u].ns > FG_TIMEOUT_MAX)
        u--;
    /* Hours always fit: UINT64_MAX ns is 5,124,095 hours. */
    uint64_t v = ns / fg_units[u].ns;
    char unit = fg_units[u].unit;
    int n = snprintf(buf, cap, "%llu%c", (unsigned long long)v, unit);
    return n > 0 && (size_t)n < cap ? n : FG_ETOOLONG;
}

int fg_deadline_outgoing(const fg_ctx *ctx, uint64_t now_ns, char *buf, size_t cap) {
    if (ctx == NULL || buf == NULL)
        return FG_EINVAL;
    if (ctx->deadline_ns == 0)
        return FG_ENOTFOUND;
    uint64_t left = fg_ctx_remaining(ctx, now_ns);
    if (left == 0)
        return FG_ETIMEDOUT;
    return fg_timeout_format(left, buf, cap);
}

/* ---- the timeout stage ------------------------------------------------------------------ */

#define FG_TIMEOUT_HEADER_MAX 128

struct fg_timeout_stage {
    uint64_t timeout_ns;
    uint64_t max_inbound_ns;
    char *header; /* NULL: none */
    size_t header_len;
    char pad[64]; /* counters on their own lines */
    uint64_t requests, shortened, inbound, inbound_invalid, late, timed_out;
};

static int fg_timeout_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    struct fg_timeout_stage *st = state;
    fg__faa_u64(&st->requests, 1);
    uint64_t budget = st->timeout_ns;
    if (st->header != NULL) {
        fg_str v;
        if (fg_ctx_header_n(ctx, st->header, st->header_len, &v) == 0) {
            uint64_t in;
            if (fg_timeout_parse(v.ptr, v.len, &in) != 0) {
                fg__faa_u64(&st->inbound_invalid, 1);
            } else {
                fg__faa_u64(&st->inbound, 1);
                if (st->max_inbound_ns != 0 && in > st->max_inbound_ns)
                    in = st->max_inbound_ns;
                if (budget == 0 || in < budget)
                    budget = in;
            }
        }
    }
    if (budget != 0) {
        uint64_t d = ctx->now_ns + budget;
        if (d < ctx->now_ns)
            d = UINT64_MAX; /* "forever" rather than a wrapped, early deadline */
        if (fg_ctx_set_deadline(ctx, d) == 1)
            fg__faa_u64(&st->shortened, 1);
    }
    /* The time this stage's frame has, plus one (0: no deadline). */
    uint64_t left = fg_ctx_remaining(ctx, ctx->now_ns);
    *slot = left == UINT64_MAX ? 0 : left + 1;
    return 0;
}

static int fg_timeout_exit(void *state, fg_ctx *ctx, const fg_outcome *o, uint64_t slot) {
    struct fg_timeout_stage *st = state;
    (void)ctx;
    if (o->kind == FG_OUTCOME_REJECTED) {
        if (o->code == FG_ETIMEDOUT)
            fg__faa_u64(&st->timed_out, 1);
        return 0;
    }
    if (slot != 0 && o->latency_ns >= slot)
        fg__faa_u64(&st->late, 1);
    return 0;
}

static void fg_timeout_destroy(void *state) {
    struct fg_timeout_stage *st = state;
    fg__free(st->header);
    fg__free(st);
}

static const fg_stage_ops fg_timeout_ops = {"timeout", fg_timeout_enter, fg_timeout_exit,
                                            fg_timeout_destroy};

int fg_stage_timeout(const fg_timeout_options *opts, const char *name, fg_stage **out) {
    if (opts == NULL || out == NULL || (opts->timeout_ns == 0 && opts->header == NULL))
        return FG_EINVAL;
    size_t hl = opts->header ? strnlen(opts->header, FG_TIMEOUT_HEADER_MAX + 1) : 0;
    if (hl > FG_TIMEOUT_HEADER_MAX)
        return FG_ETOOLONG;
    if (opts->header != NULL && (hl == 0 || !fg__is_token(opts->header, hl)))
        return FG_EINVAL;
    struct fg_timeout_stage *st = fg__calloc(1, sizeof(*st));
    if (st == NULL)
        return FG_ENOMEM;
    st->timeout_ns = opts->timeout_ns;
    st->max_inbound_ns = opts->max_inbound_ns;
    if (opts->header != NULL) {
        st->header = fg__strndup(opts->header, hl);
        st->header_len = hl;
        if (st->header == NULL) {
            fg__free(st);
            return FG_ENOMEM;
        }
    }
    int rc = fg_stage_new(&fg_timeout_ops, st, name ? name : "timeout", out);
    if (rc != 0)
        fg_timeout_destroy(st);
    return rc;
}

int fg_timeout_stats_get(const fg_stage *stage, fg_timeout_stats *out) {
    if (stage == NULL || out == NULL || stage->ops != &fg_timeout_ops)
        return FG_EINVAL;
    const struct fg_timeout_stage *st = stage->state;
    out->requests = fg__load_u64(&st->requests);
    out->shortened = fg__load_u64(&st->shortened);
    out->inbound = fg__load_u64(&st->inbound);
    out->inbound_invalid = fg__load_u64(&st->inbound_invalid);
    out->late = fg__load_u64(&st->late);
    out->timed_out = fg__load_u64(&st->timed_out);
    return 0;
}
