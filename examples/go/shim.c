/*
 * examples/go/shim.c - the C half of the Go package (see shim.h). Each Go
 * request costs two cgo calls, fggo_enter and fg_runtime_exit; everything
 * that can be done in C between them is done here, in the first one.
 */
#include "shim.h"

#include <stdlib.h>
#include <string.h>

fggo_req *fggo_req_new(size_t cap) {
    fggo_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->arena = malloc(cap > 0 ? cap : 1);
    if (r->arena == NULL) {
        free(r);
        return NULL;
    }
    r->arena_cap = cap > 0 ? cap : 1;
    return r;
}

void fggo_req_free(fggo_req *r) {
    if (r == NULL)
        return;
    free(r->arena);
    free(r);
}

int fggo_req_reserve(fggo_req *r, size_t need) {
    if (need <= r->arena_cap)
        return 0;
    char *p = realloc(r->arena, need);
    if (p == NULL)
        return FG_ENOMEM;
    r->arena = p;
    r->arena_cap = need;
    return 0;
}

/* The handler every config handler name is registered with: it only
 * records which name the routed target has; Go runs the real handler. */
static int fggo_trampoline(fg_ctx *ctx, void *arg) {
    fggo_req *r = ctx->user;
    r->handler = (int)(intptr_t)arg;
    return 0;
}

int fggo_registry_add(fg_registry *reg, const char *name, int index) {
    /* The arg carries the index itself; it is never dereferenced. */
    void *arg = (void *)(intptr_t)index; /* NOLINT(performance-no-int-to-ptr) */
    return fg_registry_add_handler(reg, name, fggo_trampoline, arg);
}

static void fggo_trace_out(fggo_req *r) {
    r->has_trace = 0;
    r->trace_id[0] = '\0';
    r->traceparent[0] = '\0';
    if (!r->ctx.trace.valid || fg_ctx_trace_id(&r->ctx, r->trace_id, sizeof(r->trace_id)) != 0)
        return;
    fg_traceparent tp;
    tp.version = 0;
    memcpy(tp.trace_id, r->ctx.trace.trace_id, sizeof(tp.trace_id));
    memcpy(tp.parent_id, r->ctx.trace.span_id, sizeof(tp.parent_id));
    tp.flags = r->ctx.trace.flags;
    if (fg_traceparent_format(&tp, r->traceparent, sizeof(r->traceparent)) != 0)
        r->traceparent[0] = '\0';
    r->has_trace = 1;
}

int fggo_enter(uintptr_t rtp, uintptr_t req) {
    fg_runtime *rt = (fg_runtime *)rtp; /* NOLINT(performance-no-int-to-ptr) */
    fggo_req *r = (fggo_req *)req;      /* NOLINT(performance-no-int-to-ptr) */
    const char *p = r->arena;
    int rc;

    r->bad_header = -1;
    r->handler = -1;
    r->has_trace = 0;
    r->trace_id[0] = '\0';
    r->traceparent[0] = '\0';
    rc = fg_ctx_init_n(&r->ctx, p, r->method_len, p + r->method_len, r->path_len);
    if (rc != 0)
        return rc;
    r->ctx.user = r;
    p += (size_t)r->method_len + r->path_len;
    for (uint32_t i = 0; i < r->nheaders; i++) {
        rc = fg_ctx_add_header_n(&r->ctx, p, r->name_len[i], p + r->name_len[i],
                                 r->value_len[i]);
        if (rc != 0) {
            r->bad_header = (int)i;
            return rc;
        }
        p += (size_t)r->name_len[i] + r->value_len[i];
    }
    rc = fg_runtime_enter(rt, &r->ctx);
    fggo_trace_out(r); /* a rejection after the trace stage still has a trace */
    if (rc != 0)
        return rc;
    rc = fg_route_dispatch(&r->ctx);
    if (rc != 0) { /* not routed, or a target without a handler: not ours to serve */
        fg_runtime_exit(rt, &r->ctx, rc);
        return rc;
    }
    return 0;
}

int fggo_exit(uintptr_t rtp, uintptr_t req, int status) {
    fg_runtime *rt = (fg_runtime *)rtp; /* NOLINT(performance-no-int-to-ptr) */
    fggo_req *r = (fggo_req *)req;      /* NOLINT(performance-no-int-to-ptr) */
    return fg_runtime_exit(rt, &r->ctx, status);
}

fggo_try fggo_limiter_try_now(uintptr_t lp, uint64_t n) {
    fg_limiter *l = (fg_limiter *)lp; /* NOLINT(performance-no-int-to-ptr) */
    fggo_try t = {0, 0};
    t.rc = fg_limiter_try_now(l, n, &t.wait_ns);
    return t;
}

int fggo_limiter_allow(uintptr_t lp) {
    fg_limiter *l = (fg_limiter *)lp; /* NOLINT(performance-no-int-to-ptr) */
    return fg_limiter_try_now(l, 1, NULL);
}

static void fggo_on_reload(fg_runtime *rt, int rc, const fg_config_errors *errors, void *arg) {
    fggo_watch *fw = arg;
    (void)rt;
    pthread_mutex_lock(&fw->mu);
    fw->last_rc = rc;
    if (errors != NULL)
        fw->last = *errors;
    else
        memset(&fw->last, 0, sizeof(fw->last));
    pthread_mutex_unlock(&fw->mu);
}

int fggo_watch_start(fg_runtime *rt, const fg_registry *reg, const char *path,
                     uint64_t debounce_ns, fggo_watch **out) {
    fggo_watch *fw = calloc(1, sizeof(*fw));
    *out = NULL;
    if (fw == NULL)
        return FG_ENOMEM;
    if (pthread_mutex_init(&fw->mu, NULL) != 0) {
        free(fw);
        return FG_ESYS;
    }
    fg_watch_options o = FG_WATCH_OPTIONS_INIT;
    o.debounce_ns = debounce_ns;
    o.on_reload = fggo_on_reload;
    o.arg = fw;
    int rc = fg_runtime_watch(rt, reg, path, &o, &fw->w);
    *out = fw;
    return rc;
}

int fggo_watch_last(fggo_watch *fw, fg_config_errors *errors) {
    pthread_mutex_lock(&fw->mu);
    int rc = fw->last_rc;
    *errors = fw->last;
    pthread_mutex_unlock(&fw->mu);
    return rc;
}

void fggo_watch_free(fggo_watch *fw) {
    if (fw == NULL)
        return;
    fg_watch_stop(fw->w); /* joins the thread: no callback after this */
    pthread_mutex_destroy(&fw->mu);
    free(fw);
}
