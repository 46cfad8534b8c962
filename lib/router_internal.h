/*
 * lib/router_internal.h - what the chain needs to know about routed
 * requests: a target's stages and handler, and how to recognise the router
 * stage. Not installed.
 */
#ifndef FG_LIB_ROUTER_INTERNAL_H
#define FG_LIB_ROUTER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "floodgate/ctx.h"

#include "floodgate/chain.h"
#include "floodgate/stage.h"

/* One target of a route, as built (ctx->priv.route_target points here). */
struct fg__route_target {
    char *name; /* owned */
    uint32_t weight;
    uint32_t slot_end; /* the split's slots [previous end, slot_end) are this target's */
    fg_handler_fn handler;
    void *arg;
    uint32_t nstages;
    fg_stage **stages; /* owned references */
};

/* The request's path for routing: ctx->path up to the first '?'. */
fg_str fg__route_path(const fg_ctx *ctx);

/*
 * A request value by source (fg_value_source) and name: header (name
 * case-insensitive), meta (exact), query parameter, baggage entry (decoded
 * into buf, cap bytes), cookie. Returns 0 and *out; FG_ENOTFOUND; for
 * baggage also FG_ETOOLONG when the decoded value does not fit buf.
 */
int fg__request_value(const fg_ctx *ctx, int source, const char *name, size_t name_len,
                      fg_str *out, char *buf, size_t cap);

/* Parse a decimal number ([+-]digits[.digits], whole string), the way rule
 * expressions read request values. Returns 0 and *out, or -1. */
int fg__parse_double(const char *s, size_t n, double *out);

/* Equality of n bytes; rule keys and values are short, so an inline loop
 * beats a call into the library's memcmp. */
static inline int fg__memeq(const char *a, const char *b, size_t n) {
    if (n > 32)
        return memcmp(a, b, n) == 0;
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* A meta entry: exact names over the ctx's table, inline (the common
 * case of rules). Returns 1 and *out, or 0. */
static inline int fg__meta(const fg_ctx *ctx, const fg_str *key, fg_str *out) {
    uint32_t nh = ctx->nheaders <= FG_CTX_MAX_HEADERS ? ctx->nheaders : FG_CTX_MAX_HEADERS;
    for (uint32_t i = 0; i < nh; i++) {
        const fg_str *name = &ctx->headers[i].name;
        if (name->len == key->len && fg__memeq(name->ptr, key->ptr, key->len)) {
            *out = ctx->headers[i].value;
            return 1;
        }
    }
    return 0;
}

/* Whether stage is a router stage (fg_stage_router). */
int fg__is_router_stage(const fg_stage *stage);

/* The most stages any target of the router stage's router has. */
uint32_t fg__router_stage_depth(const fg_stage *stage);

#endif /* FG_LIB_ROUTER_INTERNAL_H */
