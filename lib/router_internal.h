/*
 * lib/router_internal.h - what the chain needs to know about routed
 * requests: a target's stages and handler, and how to recognise the router
 * stage. Not installed.
 */
#ifndef FG_LIB_ROUTER_INTERNAL_H
#define FG_LIB_ROUTER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

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

/* Whether stage is a router stage (fg_stage_router). */
int fg__is_router_stage(const fg_stage *stage);

/* The most stages any target of the router stage's router has. */
uint32_t fg__router_stage_depth(const fg_stage *stage);

#endif /* FG_LIB_ROUTER_INTERNAL_H */
