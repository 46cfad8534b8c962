/*
 * lib/ctx.c - the per-request context: initialisation and headers.
 *
 * Everything here is bounded and allocation-free: strings are borrowed
 * (pointer, length) pairs, headers go into the fixed array inside the ctx.
 */
#include <string.h>

#include "floodgate/ctx.h"
#include "floodgate/error.h"
#include "floodgate/stage.h"

#include "alloc.h"
#include "internal.h"

/* RFC 9110 token characters: the set allowed in methods and field names
 * (and in baggage keys). */
int fg__is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

int fg__is_token(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (!fg__is_tchar((unsigned char)s[i]))
            return 0;
    return 1;
}

int fg_ctx_init_n(fg_ctx *ctx, const char *method, size_t method_len, const char *path,
                  size_t path_len) {
    if (ctx == NULL)
        return FG_EINVAL;
    /* Reset field by field: the header array and the frame stack are only
     * read up to their counts, so they need no clearing. */
    ctx->priv.state = FG_CTX_INVALID;
    ctx->priv.chain = NULL;
    ctx->priv.depth = 0;
    ctx->priv.route_target = NULL;
    ctx->priv.snapshot = NULL;
    __atomic_store_n(&ctx->priv.canceled, 0, __ATOMIC_RELAXED);
    ctx->priv.rejected_name = NULL;
    ctx->route = NULL;
    ctx->target = NULL;
    ctx->nparams = 0;
    ctx->method.ptr = NULL;
    ctx->method.len = 0;
    ctx->path.ptr = NULL;
    ctx->path.len = 0;
    ctx->now_ns = 0;
    ctx->deadline_ns = 0;
    ctx->retry_count = 0;
    ctx->nheaders = 0;
    ctx->user = NULL;
    memset(&ctx->trace, 0, sizeof(ctx->trace));
    ctx->status = 0;
    ctx->rejected_by = NULL;
    ctx->retry_after_ns = 0;
    ctx->delay_ns = 0;

    if (path == NULL || (method == NULL && method_len != 0))
        return FG_EINVAL;
    if (method_len > FG_METHOD_MAX || path_len > FG_PATH_MAX)
        return FG_ETOOLONG;
    if (method != NULL && !fg__is_token(method, method_len))
        return FG_EINVAL;
    ctx->method.ptr = method;
    ctx->method.len = method_len;
    ctx->path.ptr = path;
    ctx->path.len = path_len;
    ctx->priv.state = FG_CTX_READY;
    return 0;
}

int fg_ctx_init(fg_ctx *ctx, const char *method, const char *path) {
    /* Bound the scans: an unterminated over-long string must not be read
     * past its bound + 1. */
    size_t mlen = method ? strnlen(method, FG_METHOD_MAX + 1) : 0;
    size_t plen = path ? strnlen(path, FG_PATH_MAX + 1) : 0;
    return fg_ctx_init_n(ctx, method, mlen, path, plen);
}

int fg_ctx_add_header_n(fg_ctx *ctx, const char *name, size_t name_len, const char *value,
                        size_t value_len) {
    if (ctx == NULL || name == NULL || (value == NULL && value_len != 0))
        return FG_EINVAL;
    if (ctx->priv.state != FG_CTX_READY)
        return FG_ESTATE;
    if (name_len > FG_HEADER_NAME_MAX || value_len > FG_HEADER_VALUE_MAX)
        return FG_ETOOLONG;
    if (name_len == 0 || !fg__is_token(name, name_len))
        return FG_EINVAL;
    if (ctx->nheaders >= FG_CTX_MAX_HEADERS)
        return FG_ETOOMANY;
    fg_header *h = &ctx->headers[ctx->nheaders++];
    h->name.ptr = name;
    h->name.len = name_len;
    h->value.ptr = value_len ? value : "";
    h->value.len = value_len;
    return 0;
}

int fg_ctx_add_header(fg_ctx *ctx, const char *name, const char *value) {
    if (name == NULL || value == NULL)
        return FG_EINVAL;
    size_t nlen = strnlen(name, FG_HEADER_NAME_MAX + 1);
    size_t vlen = strnlen(value, FG_HEADER_VALUE_MAX + 1);
    return fg_ctx_add_header_n(ctx, name, nlen, value, vlen);
}

static int fg_ascii_lower(int c) { return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c; }

int fg__name_equal(const fg_str *a, const char *b, size_t blen) {
    if (a->len != blen)
        return 0;
    for (size_t i = 0; i < blen; i++)
        if (fg_ascii_lower((unsigned char)a->ptr[i]) != fg_ascii_lower((unsigned char)b[i]))
            return 0;
    return 1;
}

int fg_ctx_header_n(const fg_ctx *ctx, const char *name, size_t name_len, fg_str *value) {
    if (value != NULL) {
        value->ptr = NULL;
        value->len = 0;
    }
    if (ctx == NULL || name == NULL || value == NULL)
        return FG_EINVAL;
    uint32_t n = ctx->nheaders <= FG_CTX_MAX_HEADERS ? ctx->nheaders : FG_CTX_MAX_HEADERS;
    for (uint32_t i = 0; i < n; i++) {
        if (fg__name_equal(&ctx->headers[i].name, name, name_len)) {
            *value = ctx->headers[i].value;
            return 0;
        }
    }
    return FG_ENOTFOUND;
}

int fg_ctx_header(const fg_ctx *ctx, const char *name, fg_str *value) {
    if (name == NULL)
        return fg_ctx_header_n(ctx, NULL, 0, value);
    return fg_ctx_header_n(ctx, name, strnlen(name, FG_HEADER_NAME_MAX + 1), value);
}

size_t fg_ctx_size(void) { return sizeof(fg_ctx); }

/* ---- for bindings ---------------------------------------------------------------- */

int fg_ctx_new(fg_ctx **out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = fg__calloc(1, sizeof(fg_ctx));
    return *out ? 0 : FG_ENOMEM;
}

void fg_ctx_free(fg_ctx *ctx) { fg__free(ctx); }

int fg_ctx_status(const fg_ctx *ctx) { return ctx ? ctx->status : FG_EINVAL; }

const char *fg_ctx_route(const fg_ctx *ctx) { return ctx ? ctx->route : NULL; }

const char *fg_ctx_target(const fg_ctx *ctx) { return ctx ? ctx->target : NULL; }

const char *fg_ctx_rejected_by(const fg_ctx *ctx) {
    if (ctx == NULL || ctx->rejected_by == NULL)
        return NULL;
    return ctx->priv.rejected_name ? ctx->priv.rejected_name : fg_stage_name(ctx->rejected_by);
}

/* Copy name (at most 128 bytes: route, target and stage names are bounded
 * so) into slot and return the copy; NULL stays NULL. */
static const char *fg_ctx_keep_name(fg_ctx *ctx, int slot, const char *name) {
    if (name == NULL)
        return NULL;
    char *dst = ctx->priv.names[slot];
    if (name == dst)
        return dst; /* kept already */
    size_t n = strnlen(name, sizeof(ctx->priv.names[slot]) - 1);
    memcpy(dst, name, n);
    dst[n] = '\0';
    return dst;
}

void fg__ctx_keep_names(fg_ctx *ctx) {
    if (ctx->priv.state != FG_CTX_FINISHED)
        return; /* refused before it began: the fields were never written */
    ctx->route = fg_ctx_keep_name(ctx, 0, ctx->route);
    ctx->target = fg_ctx_keep_name(ctx, 1, ctx->target);
    ctx->priv.chain = NULL; /* it may go too: fg_ctx_time_left reads the monotonic clock */
    if (ctx->rejected_by != NULL)
        ctx->priv.rejected_name =
            fg_ctx_keep_name(ctx, 2,
                             ctx->priv.rejected_name ? ctx->priv.rejected_name
                                                     : fg_stage_name(ctx->rejected_by));
}

uint64_t fg_ctx_retry_after(const fg_ctx *ctx) { return ctx ? ctx->retry_after_ns : 0; }

uint64_t fg_ctx_delay(const fg_ctx *ctx) { return ctx ? ctx->delay_ns : 0; }

int fg_ctx_trace_id(const fg_ctx *ctx, char *buf, size_t cap) {
    static const char hex[] = "0123456789abcdef";
    if (ctx == NULL || buf == NULL)
        return FG_EINVAL;
    if (cap < 33) {
        if (cap > 0)
            buf[0] = '\0';
        return FG_ETOOLONG;
    }
    if (!ctx->trace.valid) {
        buf[0] = '\0';
        return FG_ENOTFOUND;
    }
    for (size_t i = 0; i < 16; i++) {
        buf[2 * i] = hex[ctx->trace.trace_id[i] >> 4];
        buf[2 * i + 1] = hex[ctx->trace.trace_id[i] & 0x0f];
    }
    buf[32] = '\0';
    return 0;
}
