/*
 * lib/trace_stage.c - the trace stage (extract or start a trace, make this
 * hop's span, sample, report the finished span) and the outgoing headers
 * for downstream calls.
 *
 * The stage keeps no per-request state of its own: the trace lives in
 * ctx->trace and the span's start in the stage's frame slot, so enter and
 * exit may run on different threads (the split API) with nothing shared
 * but the immutable options.
 */
#include <string.h>
#include <time.h>

#include "floodgate/error.h"
#include "floodgate/trace.h"

#include "alloc.h"
#include "internal.h"

struct fg_trace_stage {
    fg_sampler sampler;
    char *span_name; /* owned; NULL: spans are named by the request path */
    size_t span_name_len;
    fg_span_fn on_span;
    void *on_span_arg;
    int hook_unsampled;
};

/* Flags this hop propagates: the decision, and the random bit as the
 * trace-id's maker set it. Other bits are not defined by version 00 and
 * must go out as zero. */
#define FG_TRACE_FLAGS_KEPT FG_TRACE_FLAG_RANDOM

static int fg_trace_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    const struct fg_trace_stage *st = state;
    fg_trace_fields *t = &ctx->trace;
    int has_parent = !fg__all_zero(t->parent_id, sizeof(t->parent_id));
    int parent_sampled = (t->flags & FG_TRACE_FLAG_SAMPLED) != 0;
    if (!t->valid) {
        /* First time through (not a retry re-entering this stage). */
        fg_str header;
        fg_traceparent tp;
        if (fg_ctx_header_n(ctx, "traceparent", 11, &header) == 0 &&
            fg_traceparent_parse(header.ptr, header.len, &tp) == 0) {
            memcpy(t->trace_id, tp.trace_id, sizeof(t->trace_id));
            memcpy(t->parent_id, tp.parent_id, sizeof(t->parent_id));
            t->flags = tp.flags & FG_TRACE_FLAGS_KEPT;
            has_parent = 1;
            parent_sampled = (tp.flags & FG_TRACE_FLAG_SAMPLED) != 0;
        } else {
            /* Absent or invalid: start a trace, never fail the request. */
            fg_trace_id_new(t->trace_id);
            memset(t->parent_id, 0, sizeof(t->parent_id));
            t->flags = FG_TRACE_FLAG_RANDOM;
            has_parent = 0;
            parent_sampled = 0;
        }
    }
    int sampled = fg_sampler_decide(&st->sampler, t->trace_id, has_parent, parent_sampled);
    t->flags = (uint8_t)((t->flags & FG_TRACE_FLAGS_KEPT) |
                         (sampled > 0 ? FG_TRACE_FLAG_SAMPLED : 0));
    fg_span_id_new(t->span_id);
    t->valid = 1;
    *slot = ctx->now_ns;
    return 0;
}

static uint64_t fg_unix_now_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

static int fg_trace_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    const struct fg_trace_stage *st = state;
    const fg_trace_fields *t = &ctx->trace;
    if (st->on_span == NULL || (!(t->flags & FG_TRACE_FLAG_SAMPLED) && !st->hook_unsampled))
        return 0;
    fg_span span;
    if (st->span_name != NULL)
        span.name = (fg_str){st->span_name, st->span_name_len};
    else
        span.name = ctx->path;
    memcpy(span.trace_id, t->trace_id, sizeof(span.trace_id));
    memcpy(span.span_id, t->span_id, sizeof(span.span_id));
    memcpy(span.parent_id, t->parent_id, sizeof(span.parent_id));
    span.flags = t->flags;
    span.remote_parent = !fg__all_zero(t->parent_id, sizeof(t->parent_id));
    span.start_ns = slot;
    span.duration_ns = outcome->latency_ns;
    uint64_t unix_now = fg_unix_now_ns();
    span.start_unix_ns = unix_now > span.duration_ns ? unix_now - span.duration_ns : 0;
    span.outcome = outcome->kind;
    span.code = outcome->code;
    span.rejected_by = outcome->rejected_by ? fg_stage_name(outcome->rejected_by) : NULL;
    span.retry_count = ctx->retry_count;
    span.method = ctx->method;
    span.path = ctx->path;
    span.ctx = ctx;
    st->on_span(&span, st->on_span_arg);
    return 0;
}

static void fg_trace_destroy(void *state) {
    struct fg_trace_stage *st = state;
    fg__free(st->span_name);
    fg__free(st);
}

static const fg_stage_ops fg_trace_ops = {"trace", fg_trace_enter, fg_trace_exit,
                                          fg_trace_destroy};

int fg_stage_trace(const fg_trace_options *opts, fg_stage **out) {
    static const fg_trace_options defaults = FG_TRACE_OPTIONS_INIT;
    if (out == NULL)
        return FG_EINVAL;
    *out = NULL;
    if (opts == NULL)
        opts = &defaults;
    /* A sampler fg_sampler_decide would refuse is refused here, once, so
     * the request path never sees an error from it. */
    static const uint8_t probe[16] = {1};
    if (fg_sampler_decide(&opts->sampler, probe, 0, 0) < 0)
        return FG_EINVAL;
    size_t span_len = 0;
    if (opts->span_name != NULL) {
        span_len = strnlen(opts->span_name, FG_PATH_MAX + 1);
        if (span_len > FG_PATH_MAX)
            return FG_ETOOLONG;
    }
    struct fg_trace_stage *st = fg__calloc(1, sizeof(*st));
    if (st == NULL)
        return FG_ENOMEM;
    st->sampler = opts->sampler;
    st->on_span = opts->on_span;
    st->on_span_arg = opts->on_span_arg;
    st->hook_unsampled = opts->hook_unsampled;
    if (opts->span_name != NULL) {
        st->span_name = fg__strndup(opts->span_name, span_len);
        st->span_name_len = span_len;
        if (st->span_name == NULL) {
            fg_trace_destroy(st);
            return FG_ENOMEM;
        }
    }
    int rc = fg_stage_new(&fg_trace_ops, st, opts->name ? opts->name : "trace", out);
    if (rc != 0)
        fg_trace_destroy(st);
    return rc;
}

/* ---- outgoing headers --------------------------------------------------------- */

int fg_trace_outgoing(const fg_ctx *ctx, const char *vendor_key, char *buf, size_t cap,
                      fg_trace_headers *out) {
    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (ctx == NULL || buf == NULL || out == NULL)
        return FG_EINVAL;
    size_t vendor_len = 0;
    if (vendor_key != NULL) {
        vendor_len = strnlen(vendor_key, FG_TRACESTATE_KEY_MAX + 1);
        if (!fg__tracestate_key_valid(vendor_key, vendor_len))
            return FG_EINVAL;
    }
    if (!ctx->trace.valid)
        return FG_ESTATE;
    fg_trace_headers h;
    memset(&h, 0, sizeof(h));
    size_t used = 0;

    fg_traceparent tp = {.version = 0, .flags = ctx->trace.flags};
    memcpy(tp.trace_id, ctx->trace.trace_id, sizeof(tp.trace_id));
    memcpy(tp.parent_id, ctx->trace.span_id, sizeof(tp.parent_id));
    int rc = fg_traceparent_format(&tp, buf, cap);
    if (rc != 0)
        goto fail;
    h.traceparent = (fg_str){buf, FG_TRACEPARENT_LEN};
    used = FG_TRACEPARENT_LEN + 1;

    /* tracestate: the caller's only when their traceparent was valid (a
     * trace we started has no caller state to continue), our entry first. */
    fg_tracestate ts;
    ts.n = 0; /* only n is read: a 1 KiB memset per call would cost more than the rest */
    if (!fg__all_zero(ctx->trace.parent_id, sizeof(ctx->trace.parent_id)))
        (void)fg_tracestate_parse_ctx(&ts, ctx); /* invalid: discarded, ts empty */
    char span_hex[16];
    if (vendor_key != NULL) {
        fg__tohex(ctx->trace.span_id, sizeof(ctx->trace.span_id), span_hex);
        (void)fg_tracestate_set(&ts, vendor_key, vendor_len, span_hex, sizeof(span_hex));
    }
    if (ts.n > 0) {
        size_t len;
        rc = fg_tracestate_format(&ts, buf + used, cap - used, &len);
        if (rc != 0)
            goto fail;
        h.tracestate = (fg_str){buf + used, len};
        used += len + 1;
    }

    fg_baggage bg;
    (void)fg_baggage_parse_ctx(&bg, ctx); /* keeps the valid members */
    if (bg.n > 0) {
        size_t len;
        rc = fg_baggage_format(&bg, buf + used, cap - used, &len);
        if (rc != 0)
            goto fail;
        h.baggage = (fg_str){buf + used, len};
    }
    *out = h;
    return 0;
fail:
    if (cap > 0)
        buf[0] = '\0';
    return rc;
}
