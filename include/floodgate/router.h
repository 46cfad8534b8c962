/*
 * floodgate/router.h - the router: per request, pick the route that serves
 * it, and within the route the target (weighted A/B and gray splits), each
 * with its own stages and handler; and the rule expressions routes use.
 *
 * A router is built once (fg_router_new, fg_router_add per route,
 * fg_router_build) and then immutable: any number of threads match against
 * it without locks or allocation. It joins a chain as the chain's last
 * stage (fg_stage_router): after the chain's own stages admit a request the
 * router matches it, records the route, target and path parameters in the
 * ctx, and the target's stages are entered on the same ctx, after the
 * chain's. fg_chain_call then calls the target's handler; after
 * fg_chain_enter the caller runs it with fg_route_dispatch.
 *
 * Matching order: routes are tried in the order they were added and the
 * first that matches wins (as Envoy does). A route matches when its path,
 * its method set, every value predicate and its rule all match. Paths are
 * indexed in a tree of '/'-separated segments, so the cost of a match grows
 * with the path's depth, not with the number of routes; predicates and rules
 * are evaluated only for routes whose path matched.
 *
 * The request path is ctx->path up to the first '?'; what follows is the
 * query string the `query` predicates read. Paths are compared as given:
 * no percent-decoding, no case folding, and a trailing '/' is significant
 * ("/a" and "/a/" are different paths). Paths that start with '/' and
 * paths that do not (message topics such as "orders.created") never match
 * each other: an empty PREFIX matches every path without a leading '/';
 * FG_PATH_ANY matches all. A route's path has at most 64 segments
 * (FG_ETOOMANY); a request path's segments past the 64th are matched only
 * by prefixes and wildcards. docs/routing.md is the guide.
 */
#ifndef FLOODGATE_ROUTER_H
#define FLOODGATE_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "chain.h"
#include "common.h"
#include "ctx.h"
#include "stage.h"

FG_BEGIN_DECLS

#define FG_ROUTER_MAX_ROUTES 65536 /* routes in one router */
#define FG_ROUTE_MAX_TARGETS 16    /* targets in one route's split */
#define FG_ROUTE_MAX_MATCHES 16    /* value predicates per route */
#define FG_ROUTE_MAX_METHODS 16    /* methods in one route's method set */
#define FG_ROUTE_NAME_MAX    128   /* bytes in a route or target name */
#define FG_SPLIT_SLOTS       10000 /* a split's granularity: weights are out of this */
#define FG_EXPR_MAX_LEN      4096  /* bytes in a rule expression */
#define FG_EXPR_MAX_DEPTH    32    /* nesting of a rule expression */
#define FG_EXPR_MAX_NODES    256   /* operators and operands in one expression */

/* ---- rule expressions ------------------------------------------------------------ */

/*
 * Where a compile or build error was found: a code, a 1-based column in the
 * expression (0 when the error is not about an expression), and a message
 * ("expected ')'"). route is the index of the route at fault, or -1.
 */
typedef struct fg_parse_error {
    int code;          /* the error code, e.g. FG_EPARSE */
    int route;         /* the index of the route at fault, or -1 */
    size_t column;     /* 1-based, in the expression; 0: not about one */
    char message[160]; /* what is wrong */
} fg_parse_error;

/* A compiled rule expression (opaque): fg_expr_compile makes one. */
typedef struct fg_expr fg_expr;

/*
 * fg_expr_compile - compile a rule: the subset of CEL that needs no macros.
 *   literals    "str" 'str' (escapes \\ \" \' \n \t \r), 42, -7, 2.5, true, false
 *   attributes  path, method (strings); header, meta, query, baggage (maps
 *               of strings: header["x-env"], meta.uid; header names are
 *               case-insensitive, the others exact)
 *   operators   == != < <= > >=, in [lit, ...], ! && || ( ),
 *               s.startsWith("x"), s.endsWith("x"), s.contains("x"),
 *               has(header.x) / has(query["k"])
 * Precedence, loosest first: ||, &&, relations (== != < <= > >= in), !.
 * Request values are strings. Comparing one with a number literal compares
 * numerically; a value that is not a number, or is absent, makes that
 * comparison (of any operator, != included) false, never an error. Likewise
 * any comparison or method call on an absent value is false: test presence
 * with has(). Types are checked here: comparing a bool with a string, or
 * calling a method on a number, is a compile error.
 *
 * Returns: 0 and *out; FG_EPARSE with *err (column and message) for a
 * malformed or ill-typed expression; FG_ETOOLONG past FG_EXPR_MAX_LEN,
 * FG_ETOOMANY past FG_EXPR_MAX_NODES, FG_ERANGE past FG_EXPR_MAX_DEPTH (with
 * *err); FG_EINVAL for NULL arguments; FG_ENOMEM. err may be NULL.
 * Ownership: copies src; the caller owns *out (fg_expr_free).
 * Thread-safety: MT-safe.
 */
FG_API int fg_expr_compile(const char *src, size_t len, fg_expr **out, fg_parse_error *err);

/*
 * fg_expr_eval - evaluate a compiled rule against a request.
 *
 * Returns: 1 (true) or 0 (false); FG_EINVAL for NULL arguments.
 * Thread-safety: MT-safe, allocation-free; cost bounded by the expression's
 * size.
 */
FG_API int fg_expr_eval(const fg_expr *expr, const fg_ctx *ctx);

/* fg_expr_free - free a compiled rule. NULL is ignored. */
FG_API void fg_expr_free(fg_expr *expr);

/* ---- routes ---------------------------------------------------------------------- */

/* How a route matches the request path. */
typedef enum fg_path_kind {
    FG_PATH_ANY = 0,     /* every path */
    FG_PATH_EXACT = 1,   /* the path equals `path` */
    FG_PATH_PREFIX = 2,  /* the path is `path` or continues it with a '/'
                            segment: "/api" matches "/api", "/api/x", not "/apix";
                            "/api/" matches "/api/" and "/api/x" */
    FG_PATH_PATTERN = 3, /* segments; ":name" matches one non-empty segment,
                            a last "*name" the rest: one or more segments, the
                            last possibly empty ("/s/" + "*f" matches "/s/"
                            and "/s/a/b", not "/s") */
} fg_path_kind;

/* Where a predicate or a sticky split reads its value. */
typedef enum fg_value_source {
    FG_SOURCE_HEADER = 0,  /* ctx header, name case-insensitive */
    FG_SOURCE_META = 1,    /* the same table (metadata entries), exact name */
    FG_SOURCE_QUERY = 2,   /* the query string's parameter (as given, not decoded) */
    FG_SOURCE_BAGGAGE = 3, /* the W3C baggage entry, decoded */
    FG_SOURCE_COOKIE = 4,  /* the named cookie of the Cookie header */
} fg_value_source;

/* How a value predicate compares the value it reads. */
typedef enum fg_match_op {
    FG_MATCH_PRESENT = 0, /* the value exists (any content) */
    FG_MATCH_EXACT = 1,   /* equals `value` */
    FG_MATCH_PREFIX = 2,  /* starts with `value` */
    FG_MATCH_LT = 3,      /* a number < `number` (not a number: no match) */
    FG_MATCH_LE = 4,      /* a number <= `number` */
    FG_MATCH_GT = 5,      /* a number > `number` */
    FG_MATCH_GE = 6,      /* a number >= `number` */
    FG_MATCH_EQ = 7,      /* a number == `number` */
} fg_match_op;

/* One value predicate: source[name] op value/number; invert negates it (an
 * inverted PRESENT means "absent"). */
typedef struct fg_value_match {
    fg_value_source source; /* where the value is read */
    const char *name;       /* copied */
    fg_match_op op;         /* how it is compared */
    const char *value;      /* EXACT, PREFIX; copied */
    double number;          /* LT .. EQ */
    int invert;             /* nonzero: negate the result */
} fg_value_match;

/*
 * One target of a route: what serves the request. weight is its share of
 * the route's split, out of the sum of the targets' weights (a route with
 * one target needs no weight). stages run after the chain's, in order.
 */
typedef struct fg_route_target {
    const char *name;      /* copied; NULL: the route's name */
    uint32_t weight;       /* its share of the split (see above) */
    fg_handler_fn handler; /* required */
    void *arg;             /* passed to handler */
    fg_stage **stages;     /* nstages references, taken by fg_router_add */
    size_t nstages;        /* entries in stages */
} fg_route_target;

/* A route, for fg_router_add. Start from FG_ROUTE_SPEC_INIT. */
typedef struct fg_route_spec {
    const char *name;              /* copied; required, unique in the router */
    fg_path_kind path_kind;        /* how path is matched */
    const char *path;              /* copied; EXACT, PREFIX, PATTERN */
    const char *methods;           /* copied; "GET,POST" (case-sensitive); NULL or "": any */
    const fg_value_match *matches; /* value predicates; all must match */
    size_t nmatches;               /* entries in matches */
    const char *when;              /* rule expression, compiled by fg_router_add; NULL: none */
    const fg_route_target *targets; /* what serves the route; at least one */
    size_t ntargets;                /* entries in targets */
    /* The split: sticky on source[split_key] when split_key is set (the
     * same key always lands on the same target for a given weight table),
     * else random per request. A request without the key is split at
     * random. split_salt (copied; NULL: the route's name) makes splits of
     * different routes independent. */
    fg_value_source split_source; /* where split_key is read */
    const char *split_key;        /* copied; NULL: a random split */
    const char *split_salt;       /* copied; NULL: the route's name */
} fg_route_spec;

/* Defaults: every path, any method, no predicates, no rule, a random split. */
#define FG_ROUTE_SPEC_INIT                                                                    \
    { NULL, FG_PATH_ANY, NULL, NULL, NULL, 0, NULL, NULL, 0, FG_SOURCE_HEADER, NULL, NULL }

/* A router (opaque): fg_router_new makes one. */
typedef struct fg_router fg_router;

/*
 * fg_router_new - an empty router.
 * Returns: 0 and *out; FG_EINVAL; FG_ENOMEM.
 * Ownership: the caller owns *out (fg_router_free, or hand it to
 * fg_stage_router). Thread-safety: MT-safe.
 */
FG_API int fg_router_new(fg_router **out);

/*
 * fg_router_add - add a route after the ones already added (so it matches
 * only when none of them does).
 *
 * Returns: 0; FG_EINVAL for a bad spec (no name, no targets, a path that
 * does not fit its kind, a pattern with an empty ":" or a "*" not last, a
 * method that is not a token, a predicate without a name, all weights 0 in
 * a split, a NULL handler, more than FG_SPLIT_SLOTS total weight in a
 * split...); FG_EEXIST for a
 * duplicate route name; FG_EPARSE (and the others of fg_expr_compile) for
 * a bad rule; FG_ETOOMANY / FG_ETOOLONG past the bounds above; FG_ESTATE
 * after fg_router_build; FG_ENOMEM. *err says which and where (err may be
 * NULL; err->route is the index the route would have had).
 * Ownership: copies the spec's strings; takes one reference to every stage
 * of every target, whether it succeeds or fails (as fg_chain_use does).
 * Thread-safety: not thread-safe: build before sharing.
 */
FG_API int fg_router_add(fg_router *router, const fg_route_spec *spec, fg_parse_error *err);

/*
 * fg_router_build - index the routes and freeze the router. Also looks for
 * routes that can never match because an earlier route takes every request
 * they would (fg_router_warning).
 *
 * Returns: 0; FG_ESTATE when already built; FG_EINVAL for NULL; FG_ENOMEM.
 * Thread-safety: not thread-safe; the router is shareable afterwards.
 */
FG_API int fg_router_build(fg_router *router);

/*
 * fg_router_warning - the i-th build warning, e.g. "route 'b' (index 3) can
 * never match: route 'a' (index 1) matches every request it would".
 * Returns: the text, borrowed from the router; NULL past the end.
 */
FG_API const char *fg_router_warning(const fg_router *router, size_t i);

/* fg_router_shadowed_by - the index of the earlier route that shadows route
 * i, or -1 when it is not shadowed (or out of range). */
FG_API long fg_router_shadowed_by(const fg_router *router, size_t i);

/* fg_router_count - the number of routes. */
FG_API size_t fg_router_count(const fg_router *router);

/*
 * fg_router_route_name - the name of route i (in the order added): the very
 * pointer the router writes into ctx->route when route i matches, so a
 * stage can key per-route data by pointer (the metrics stage does).
 * Returns NULL for a NULL router or i out of range. Valid while the router
 * lives. Thread-safety: MT-safe.
 */
FG_API const char *fg_router_route_name(const fg_router *router, size_t i);

/* The result of a match. */
typedef struct fg_route_match {
    int route;               /* index in the order added */
    int target;              /* index in the route's targets */
    const char *route_name;  /* the route's name (as in ctx->route) */
    const char *target_name; /* the target's name (as in ctx->target) */
} fg_route_match;

/*
 * fg_router_match - match ctx's request (without entering any stage):
 * what the router stage does, minus the stages. Path parameters are written
 * to ctx (fg_ctx_param).
 *
 * Returns: 0 and *m; FG_ENOROUTE (ctx's route, target and params are then
 * cleared); FG_ETOOMANY when the tree walk would visit more than 64 nodes
 * (a table where most segments could be both a static segment and a
 * parameter at many levels; never a silently wrong answer); FG_ESTATE when
 * not built; FG_EINVAL.
 * Thread-safety: MT-safe, lock-free, allocation-free, on a built router.
 */
FG_API int fg_router_match(const fg_router *router, fg_ctx *ctx, fg_route_match *m);

/*
 * fg_router_explain - why the request matches the route it does: one line
 * per route tried, in order, saying which part did not match ("path",
 * "method", "header x-env does not match", "rule"), up to the route that matched
 * (and its target) or "no route matched". For debugging and for replay.
 *
 * Returns: 0 and the NUL-terminated text in buf (cut, ending in "...\n",
 * when it does not fit; *len is its length; len may be NULL); FG_ESTATE when
 * not built; FG_EINVAL.
 * Thread-safety: MT-safe.
 */
FG_API int fg_router_explain(const fg_router *router, fg_ctx *ctx, char *buf, size_t cap,
                             size_t *len);

/* fg_router_free - free a router that no stage owns. NULL is ignored. */
FG_API void fg_router_free(fg_router *router);

/*
 * fg_stage_router - a stage that routes: it must be the chain's last stage
 * (fg_chain_use refuses stages after it). On enter it matches; no match
 * rejects with FG_ENOROUTE. The chosen target's stages then run as if they
 * followed it in the chain; a retry from one of them re-runs the ones
 * after it and the handler on the same target.
 *
 * Returns: 0 and *out; FG_EINVAL (NULL router or out); FG_ESTATE when the
 * router is not built; FG_ETOOLONG (name); FG_ENOMEM.
 * Ownership: takes router, on success (it is freed with the stage) and on
 * error alike (it is freed at once); name copied (NULL: "router"); the
 * caller owns one reference to *out.
 * Thread-safety: MT-safe.
 */
FG_API int fg_stage_router(fg_router *router, const char *name, fg_stage **out);

/*
 * fg_route_dispatch - split API: after fg_chain_enter admitted a routed
 * request, call its target's handler (e.g. on a worker thread), then pass
 * the result to fg_chain_exit.
 *
 * Returns: the handler's result; FG_ESTATE when ctx has not been routed or
 * its target has no handler; FG_EINVAL for NULL.
 * Thread-safety: as the handler.
 */
FG_API int fg_route_dispatch(fg_ctx *ctx);

/*
 * fg_ctx_param - a path parameter of the matched pattern (":id" or
 * "*rest", named without the sigil).
 *
 * Returns: 0 and *value (borrowing the path); FG_ENOTFOUND; FG_EINVAL.
 * Thread-safety: as fg_ctx_header.
 */
FG_API int fg_ctx_param(const fg_ctx *ctx, const char *name, fg_str *value);

/*
 * fg_split_slot - the slot (0 .. FG_SPLIT_SLOTS-1) a sticky split puts key
 * in for a salt: FNV-1a 32-bit over the salt, one 0xff byte (so "ab"+"c"
 * and "a"+"bc" differ) and the key, then murmur3's 32-bit finaliser,
 * then the high bits scaled to FG_SPLIT_SLOTS. Targets own consecutive
 * ranges of slots in order, by weight. Exposed so other services (or a
 * script) can compute the same assignment.
 * Thread-safety: MT-safe.
 */
FG_API uint32_t fg_split_slot(const char *salt, size_t salt_len, const char *key,
                              size_t key_len);

FG_END_DECLS

#endif /* FLOODGATE_ROUTER_H */
