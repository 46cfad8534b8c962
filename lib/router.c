/*
 * lib/router.c - the router: routes indexed in a tree of path segments,
 * first-match-wins order, value predicates, rules, weighted sticky splits,
 * shadowed-route detection, explanations, and the router stage.
 *
 * Every route's path is a sequence of segments (static text, or a ":param"
 * matching any one non-empty segment) and a tail: END (the path stops
 * there), ANY (zero or more segments may follow: a prefix) or MORE (one or
 * more must follow: a prefix ending in '/', or a "*rest" wildcard). The tree
 * has a node per distinct segment sequence, with sorted static children, a
 * param child, and three lists of route indices (one per tail), each in
 * route order. Matching walks the tree with the request's segments,
 * gathering the lists of every node that fits; the answer is the lowest
 * route index among them whose method, predicates and rule also match, so
 * the tree changes the cost, never the answer (fg_router_explain checks
 * routes one by one and must agree). The same walk run on a route's own
 * path, with its params as wildcards, finds the earlier routes whose paths
 * cover it: that is the shadow check.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/router.h"
#include "floodgate/trace.h"

#include "alloc.h"
#include "internal.h"
#include "router_internal.h"

#define FG_ROUTE_MAX_SEGS  64 /* segments of a path the router looks at */
#define FG_ROUTE_MAX_VISIT 64 /* tree nodes one match may visit (backtracking bound) */
#define FG_PRED_VALUE_BUF  (FG_BAGGAGE_MAX_BYTES + 1) /* a decoded baggage value */

enum fg_tail { FG_TAIL_END = 0, FG_TAIL_ANY = 1, FG_TAIL_MORE = 2 };

/* One segment of a route's path: static text, or a param (name in text). */
struct fg_seg {
    const char *text;
    uint32_t len;
    uint8_t param;
};

struct fg_pred {
    uint8_t source;
    uint8_t op;
    uint8_t invert;
    char *name;
    size_t name_len;
    char *value;
    size_t value_len;
    double number;
};

struct fg_route {
    char *name;
    uint8_t path_kind;
    uint8_t rooted; /* the path starts with '/' (FG_PATH_ANY: both) */
    uint8_t tail;
    char *path; /* owned copy; segs point into it */
    uint32_t nsegs;
    struct fg_seg *segs;
    const char *wild_name; /* "*name" of a pattern, into path */
    uint32_t wild_len;
    uint32_t nparams;
    uint32_t nmethods;
    fg_str methods[FG_ROUTE_MAX_METHODS];
    char *methods_text;
    uint32_t npreds;
    struct fg_pred *preds;
    fg_expr *when;
    uint32_t ntargets;
    struct fg__route_target *targets;
    uint8_t split_source;
    char *split_key;
    size_t split_key_len;
    char *salt;
    size_t salt_len;
    long shadowed_by;
};

struct fg_rlist {
    uint32_t n, cap;
    uint32_t *routes;
};

struct fg_rkid {
    const char *seg;
    uint32_t len;
    uint32_t node;
};

struct fg_rnode {
    uint32_t nkids, capkids;
    struct fg_rkid *kids; /* sorted by (len, bytes) after build */
    uint32_t param;       /* node index of the param child; 0 = none */
    struct fg_rlist tails[3];
};

struct fg_router {
    int built;
    uint32_t nroutes, caproutes;
    struct fg_route *routes;
    uint32_t nnodes, capnodes;
    struct fg_rnode *nodes; /* [0] is unused (0 means "none"), [1] rooted, [2] bare */
    struct fg_rlist any;    /* FG_PATH_ANY routes */
    uint32_t max_stages;
    uint32_t nwarnings;
    char **warnings;
    uint32_t *names;    /* open addressing over route names: index + 1, 0 empty */
    uint32_t names_cap; /* a power of two, at least twice nroutes */
};

#define FG_ROOT_SLASH 1
#define FG_ROOT_BARE  2

/* ---- request values ------------------------------------------------------------ */

fg_str fg__route_path(const fg_ctx *ctx) {
    const char *q = ctx->path.len ? memchr(ctx->path.ptr, '?', ctx->path.len) : NULL;
    return (fg_str){ctx->path.ptr, q ? (size_t)(q - ctx->path.ptr) : ctx->path.len};
}

/* Find name in a list "k=v<sep>k=v" (query: '&', cookies: ';' with OWS). */
static int fg_find_pair(const char *s, size_t len, char sep, const char *name, size_t name_len,
                        fg_str *out) {
    size_t pos = 0;
    while (pos <= len) {
        const char *end = len > pos ? memchr(s + pos, sep, len - pos) : NULL;
        size_t e = end ? (size_t)(end - s) : len;
        size_t a = pos;
        while (a < e && s[a] == ' ')
            a++;
        const char *eq = e > a ? memchr(s + a, '=', e - a) : NULL;
        size_t ke = eq ? (size_t)(eq - s) : e;
        if (ke - a == name_len && memcmp(s + a, name, name_len) == 0) {
            size_t va = eq ? ke + 1 : e;
            *out = (fg_str){s + va, e - va};
            return 0;
        }
        if (end == NULL)
            break;
        pos = e + 1;
    }
    return FG_ENOTFOUND;
}

int fg__request_value(const fg_ctx *ctx, int source, const char *name, size_t name_len,
                      fg_str *out, char *buf, size_t cap) {
    *out = (fg_str){NULL, 0};
    switch (source) {
    case FG_SOURCE_HEADER:
        return fg_ctx_header_n(ctx, name, name_len, out);
    case FG_SOURCE_META: {
        fg_str key = {name, name_len};
        return fg__meta(ctx, &key, out) ? 0 : FG_ENOTFOUND;
    }
    case FG_SOURCE_QUERY: {
        const char *q = ctx->path.len ? memchr(ctx->path.ptr, '?', ctx->path.len) : NULL;
        if (q == NULL)
            return FG_ENOTFOUND;
        size_t off = (size_t)(q - ctx->path.ptr) + 1;
        return fg_find_pair(q + 1, ctx->path.len - off, '&', name, name_len, out);
    }
    case FG_SOURCE_BAGGAGE: {
        size_t n = 0;
        int rc = fg_ctx_baggage(ctx, name, name_len, buf, cap, &n);
        if (rc == 0)
            *out = (fg_str){buf, n};
        return rc;
    }
    case FG_SOURCE_COOKIE: {
        uint32_t n = ctx->nheaders <= FG_CTX_MAX_HEADERS ? ctx->nheaders : FG_CTX_MAX_HEADERS;
        for (uint32_t i = 0; i < n; i++) {
            const fg_header *h = &ctx->headers[i];
            if (fg__name_equal(&h->name, "cookie", 6) &&
                fg_find_pair(h->value.ptr, h->value.len, ';', name, name_len, out) == 0)
                return 0;
        }
        return FG_ENOTFOUND;
    }
    default:
        return FG_ENOTFOUND;
    }
}

/* ---- splits ----------------------------------------------------------------------- */

static uint32_t fg_fnv1a(uint32_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

uint32_t fg_split_slot(const char *salt, size_t salt_len, const char *key, size_t key_len) {
    uint32_t h = 2166136261u;
    if (salt != NULL)
        h = fg_fnv1a(h, salt, salt_len);
    h = fg_fnv1a(h, "\xff", 1); /* "ab"+"c" and "a"+"bc" must not collide */
    if (key != NULL)
        h = fg_fnv1a(h, key, key_len);
    /* FNV-1a's low bits are weak (bit 0 is the parity of the bytes), so mix
     * every bit into every other (murmur3's finaliser), then scale the high
     * bits: never h % N. */
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return (uint32_t)(((uint64_t)h * FG_SPLIT_SLOTS) >> 32);
}

static uint32_t fg_pick_target(const struct fg_route *r, const fg_ctx *ctx) {
    if (r->ntargets == 1)
        return 0;
    uint32_t slot;
    char buf[FG_PRED_VALUE_BUF];
    fg_str key;
    if (r->split_key != NULL &&
        fg__request_value(ctx, r->split_source, r->split_key, r->split_key_len, &key, buf,
                          sizeof(buf)) == 0)
        slot = fg_split_slot(r->salt, r->salt_len, key.ptr, key.len);
    else
        slot = (uint32_t)((fg__random_u64() >> 32) * FG_SPLIT_SLOTS >> 32);
    for (uint32_t i = 0; i < r->ntargets; i++)
        if (slot < r->targets[i].slot_end)
            return i;
    return r->ntargets - 1; /* not reached: the last slot_end is FG_SPLIT_SLOTS */
}

/* ---- conditions other than the path ---------------------------------------------- */

static int fg_method_ok(const struct fg_route *r, const fg_ctx *ctx) {
    if (r->nmethods == 0)
        return 1;
    for (uint32_t i = 0; i < r->nmethods; i++)
        if (r->methods[i].len == ctx->method.len &&
            memcmp(r->methods[i].ptr, ctx->method.ptr, ctx->method.len) == 0)
            return 1;
    return 0;
}

static int fg_pred_ok(const struct fg_pred *p, const fg_ctx *ctx) {
    char buf[FG_PRED_VALUE_BUF];
    fg_str v;
    int rc = fg__request_value(ctx, p->source, p->name, p->name_len, &v, buf, sizeof(buf));
    int ok;
    if (p->op == FG_MATCH_PRESENT) {
        ok = rc == 0 || rc == FG_ETOOLONG;
    } else if (rc != 0) {
        ok = 0;
    } else if (p->op == FG_MATCH_EXACT) {
        ok = v.len == p->value_len && memcmp(v.ptr, p->value, v.len) == 0;
    } else if (p->op == FG_MATCH_PREFIX) {
        ok = v.len >= p->value_len && memcmp(v.ptr, p->value, p->value_len) == 0;
    } else {
        double x;
        if (fg__parse_double(v.ptr, v.len, &x) != 0) {
            ok = 0;
        } else {
            switch (p->op) {
            case FG_MATCH_LT:
                ok = x < p->number;
                break;
            case FG_MATCH_LE:
                ok = x <= p->number;
                break;
            case FG_MATCH_GT:
                ok = x > p->number;
                break;
            case FG_MATCH_GE:
                ok = x >= p->number;
                break;
            default:
                ok = x == p->number;
                break;
            }
        }
    }
    return p->invert ? !ok : ok;
}

/* Which condition fails, or NULL when method, predicates and rule match. */
static const char *fg_conditions(const struct fg_route *r, const fg_ctx *ctx, uint32_t *pred) {
    if (!fg_method_ok(r, ctx))
        return "method";
    for (uint32_t i = 0; i < r->npreds; i++)
        if (!fg_pred_ok(&r->preds[i], ctx)) {
            *pred = i;
            return "predicate";
        }
    if (r->when != NULL && fg_expr_eval(r->when, ctx) != 1)
        return "rule";
    return NULL;
}

/* ---- request paths as segments --------------------------------------------------- */

struct fg_reqpath {
    int rooted;
    uint32_t n;   /* segments looked at */
    int overflow; /* more than FG_ROUTE_MAX_SEGS segments */
    fg_str segs[FG_ROUTE_MAX_SEGS];
    uint8_t param[FG_ROUTE_MAX_SEGS]; /* symbolic walks only: a route's ":param" */
    uint8_t tail;                     /* symbolic walks only */
};

static void fg_split_path(fg_str path, struct fg_reqpath *rp) {
    rp->rooted = path.len > 0 && path.ptr[0] == '/';
    rp->n = 0;
    rp->overflow = 0;
    rp->tail = FG_TAIL_END;
    if (path.len == 0)
        return;
    size_t pos = rp->rooted ? 1 : 0;
    for (;;) {
        const char *slash =
            path.len > pos ? memchr(path.ptr + pos, '/', path.len - pos) : NULL;
        size_t end = slash ? (size_t)(slash - path.ptr) : path.len;
        if (rp->n == FG_ROUTE_MAX_SEGS) {
            rp->overflow = 1;
            return;
        }
        rp->param[rp->n] = 0;
        rp->segs[rp->n++] = (fg_str){path.ptr + pos, end - pos};
        if (slash == NULL)
            return;
        pos = end + 1;
    }
}

/* ---- the tree walk ---------------------------------------------------------------- */

struct fg_walk {
    const struct fg_router *router;
    const struct fg_reqpath *rp;
    int symbolic; /* a route's own path (shadow check) rather than a request */
    uint32_t visits;
    int overflow;
    uint32_t nlists;
    const struct fg_rlist *lists[3 * FG_ROUTE_MAX_VISIT + 1];
};

static void fg_walk_add(struct fg_walk *w, const struct fg_rlist *l) {
    if (l->n > 0)
        w->lists[w->nlists++] = l;
}

static int fg_kid_cmp(const char *a, uint32_t alen, const char *b, uint32_t blen) {
    if (alen != blen)
        return alen < blen ? -1 : 1;
    return alen ? memcmp(a, b, alen) : 0;
}

static uint32_t fg_find_kid(const struct fg_rnode *node, const char *seg, uint32_t len) {
    uint32_t lo = 0, hi = node->nkids;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = fg_kid_cmp(node->kids[mid].seg, node->kids[mid].len, seg, len);
        if (c == 0)
            return node->kids[mid].node;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/*
 * Gather the route lists of every node whose path fits the walk's path at
 * segment depth d. For a request (all segments static, tail END), a node
 * at depth d fits when its routes' segments match the first d segments:
 * its ANY list always, its MORE list when segments remain, its END list when
 * none do. For a route's own path the same rules, with "segments remain"
 * meaning every path of that route has more (its tail is MORE, or d is
 * before its last segment), give exactly the routes covering it.
 */
static void fg_walk(struct fg_walk *w, uint32_t n, uint32_t d) {
    if (w->visits++ >= FG_ROUTE_MAX_VISIT) {
        w->overflow = 1;
        return;
    }
    const struct fg_rnode *node = &w->router->nodes[n];
    const struct fg_reqpath *rp = w->rp;
    int at_end = d == rp->n && !rp->overflow;
    int more = d < rp->n || rp->overflow || (w->symbolic && rp->tail == FG_TAIL_MORE);
    fg_walk_add(w, &node->tails[FG_TAIL_ANY]);
    if (more)
        fg_walk_add(w, &node->tails[FG_TAIL_MORE]);
    if (at_end && (!w->symbolic || rp->tail == FG_TAIL_END))
        fg_walk_add(w, &node->tails[FG_TAIL_END]);
    if (d >= rp->n)
        return;
    const fg_str *seg = &rp->segs[d];
    if (!rp->param[d]) {
        uint32_t kid = fg_find_kid(node, seg->ptr, (uint32_t)seg->len);
        if (kid)
            fg_walk(w, kid, d + 1);
    }
    /* A param child takes any non-empty segment (or a route's param). */
    if (node->param && (rp->param[d] || seg->len > 0))
        fg_walk(w, node->param, d + 1);
}

static void fg_walk_from(struct fg_walk *w, int rooted) {
    fg_walk_add(w, &w->router->any);
    fg_walk(w, rooted ? FG_ROOT_SLASH : FG_ROOT_BARE, 0);
}

/* The lowest route index among the gathered lists that passes `accept`,
 * walking each (sorted) list once. */
static long fg_first(const struct fg_walk *w, int (*accept)(const struct fg_route *, void *),
                     void *arg) {
    uint32_t pos[3 * FG_ROUTE_MAX_VISIT + 1];
    for (uint32_t i = 0; i < w->nlists; i++)
        pos[i] = 0;
    for (;;) {
        uint32_t best = UINT32_MAX, from = 0;
        for (uint32_t i = 0; i < w->nlists; i++)
            if (pos[i] < w->lists[i]->n && w->lists[i]->routes[pos[i]] < best) {
                best = w->lists[i]->routes[pos[i]];
                from = i;
            }
        if (best == UINT32_MAX)
            return -1;
        pos[from]++;
        if (accept(&w->router->routes[best], arg))
            return best;
    }
}

static int fg_accept_request(const struct fg_route *r, void *arg) {
    uint32_t pred;
    return fg_conditions(r, arg, &pred) == NULL;
}

/* Bind a pattern route's params from the request's segments. */
static void fg_bind_params(const struct fg_route *r, const struct fg_reqpath *rp, fg_str path,
                           fg_ctx *ctx) {
    ctx->nparams = 0;
    if (r->path_kind != FG_PATH_PATTERN)
        return;
    for (uint32_t i = 0; i < r->nsegs && i < rp->n; i++) {
        if (!r->segs[i].param)
            continue;
        fg_header *p = &ctx->params[ctx->nparams++];
        p->name = (fg_str){r->segs[i].text, r->segs[i].len};
        p->value = rp->segs[i];
    }
    if (r->wild_name != NULL && rp->n > r->nsegs) {
        fg_header *p = &ctx->params[ctx->nparams++];
        p->name = (fg_str){r->wild_name, r->wild_len};
        const char *start = rp->segs[r->nsegs].ptr;
        p->value = (fg_str){start, (size_t)(path.ptr + path.len - start)};
    }
}

static int fg_route_request(const fg_router *router, fg_ctx *ctx, fg_route_match *m) {
    /* Nothing of an earlier match on this ctx may survive a failed one. */
    ctx->route = NULL;
    ctx->target = NULL;
    ctx->nparams = 0;
    ctx->priv.route_target = NULL;
    struct fg_reqpath rp;
    fg_str path = fg__route_path(ctx);
    fg_split_path(path, &rp);
    struct fg_walk w; /* not `= {...}`: that would zero 1.5 KiB of list slots per match */
    w.router = router;
    w.rp = &rp;
    w.symbolic = 0;
    w.visits = 0;
    w.overflow = 0;
    w.nlists = 0;
    fg_walk_from(&w, rp.rooted);
    if (w.overflow)
        return FG_ETOOMANY;
    long best = fg_first(&w, fg_accept_request, ctx);
    if (best < 0)
        return FG_ENOROUTE;
    const struct fg_route *r = &router->routes[best];
    uint32_t t = fg_pick_target(r, ctx);
    fg_bind_params(r, &rp, path, ctx);
    ctx->route = r->name;
    ctx->target = r->targets[t].name;
    ctx->priv.route_target = &r->targets[t];
    if (m != NULL) {
        m->route = (int)best;
        m->target = (int)t;
        m->route_name = r->name;
        m->target_name = r->targets[t].name;
    }
    return 0;
}

int fg_router_match(const fg_router *router, fg_ctx *ctx, fg_route_match *m) {
    if (m != NULL)
        memset(m, 0, sizeof(*m)), m->route = m->target = -1;
    if (router == NULL || ctx == NULL)
        return FG_EINVAL;
    if (!router->built)
        return FG_ESTATE;
    return fg_route_request(router, ctx, m);
}

/* ---- building --------------------------------------------------------------------- */

static void fg_seterr(fg_parse_error *err, int code, int route, const char *fmt,
                      const char *arg) {
    if (err == NULL)
        return;
    err->code = code;
    err->route = route;
    err->column = 0;
    (void)snprintf(err->message, sizeof(err->message), fmt, arg ? arg : "");
}

static char *fg_copy(const char *s, size_t max, size_t *len_out, int *too_long) {
    size_t len = strnlen(s, max + 1);
    if (len > max) {
        *too_long = 1;
        return NULL;
    }
    if (len_out)
        *len_out = len;
    return fg__strndup(s, len);
}

static int fg_rlist_push(struct fg_rlist *l, uint32_t v) {
    if (l->n == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 4;
        uint32_t *p = fg__malloc(cap * sizeof(*p));
        if (p == NULL)
            return FG_ENOMEM;
        if (l->n)
            memcpy(p, l->routes, l->n * sizeof(*p));
        fg__free(l->routes);
        l->routes = p;
        l->cap = cap;
    }
    l->routes[l->n++] = v;
    return 0;
}

static void fg_route_free(struct fg_route *r) {
    fg__free(r->name);
    fg__free(r->path);
    fg__free(r->segs);
    fg__free(r->methods_text);
    for (uint32_t i = 0; i < r->npreds; i++) {
        fg__free(r->preds[i].name);
        fg__free(r->preds[i].value);
    }
    fg__free(r->preds);
    fg_expr_free(r->when);
    for (uint32_t i = 0; i < r->ntargets; i++) {
        struct fg__route_target *t = &r->targets[i];
        for (uint32_t k = 0; k < t->nstages; k++)
            fg_stage_unref(t->stages[k]);
        fg__free(t->stages);
        fg__free(t->name);
    }
    fg__free(r->targets);
    fg__free(r->split_key);
    fg__free(r->salt);
}

int fg_router_new(fg_router **out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = NULL;
    fg_router *r = fg__calloc(1, sizeof(*r));
    if (r == NULL)
        return FG_ENOMEM;
    r->capnodes = 16;
    r->nodes = fg__calloc(r->capnodes, sizeof(*r->nodes));
    if (r->nodes == NULL) {
        fg__free(r);
        return FG_ENOMEM;
    }
    r->nnodes = 3; /* none, rooted, bare */
    *out = r;
    return 0;
}

void fg_router_free(fg_router *router) {
    if (router == NULL)
        return;
    for (uint32_t i = 0; i < router->nroutes; i++)
        fg_route_free(&router->routes[i]);
    fg__free(router->routes);
    for (uint32_t i = 0; i < router->nnodes; i++) {
        fg__free(router->nodes[i].kids);
        for (int t = 0; t < 3; t++)
            fg__free(router->nodes[i].tails[t].routes);
    }
    fg__free(router->nodes);
    fg__free(router->any.routes);
    for (uint32_t i = 0; i < router->nwarnings; i++)
        fg__free(router->warnings[i]);
    fg__free(router->warnings);
    fg__free(router->names);
    fg__free(router);
}

static uint32_t fg_name_hash(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Whether a route already has this name: a hash lookup, so adding n routes
 * costs O(n), not O(n^2) string compares. */
static int fg_name_taken(const fg_router *router, const char *name) {
    if (router->names_cap == 0)
        return 0;
    uint32_t mask = router->names_cap - 1;
    for (uint32_t i = fg_name_hash(name) & mask;; i = (i + 1) & mask) {
        uint32_t v = router->names[i];
        if (v == 0)
            return 0;
        if (strcmp(router->routes[v - 1].name, name) == 0)
            return 1;
    }
}

/* Record route `index`'s name (the table keeps at least half its slots
 * empty, so probes end). Returns 0 or FG_ENOMEM. */
static int fg_name_add(fg_router *router, uint32_t index) {
    if (2 * (index + 1) > router->names_cap) {
        uint32_t cap = router->names_cap ? router->names_cap * 2 : 16;
        uint32_t *slots = fg__calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return FG_ENOMEM;
        fg__free(router->names);
        router->names = slots;
        router->names_cap = cap;
        for (uint32_t i = 0; i < index; i++) {
            uint32_t k = fg_name_hash(router->routes[i].name) & (cap - 1);
            while (slots[k] != 0)
                k = (k + 1) & (cap - 1);
            slots[k] = i + 1;
        }
    }
    uint32_t mask = router->names_cap - 1;
    uint32_t k = fg_name_hash(router->routes[index].name) & mask;
    while (router->names[k] != 0)
        k = (k + 1) & mask;
    router->names[k] = index + 1;
    return 0;
}

/* Parse r->path (owned) into segments and tail, by kind. */
static int fg_route_parse_path(struct fg_route *r, fg_parse_error *err, int index) {
    if (r->path_kind == FG_PATH_ANY) {
        r->tail = FG_TAIL_ANY;
        return 0;
    }
    char *p = r->path;
    size_t len = strlen(p);
    r->rooted = len > 0 && p[0] == '/';
    /* Segments: at most one per byte, plus one. */
    r->segs = fg__calloc(len + 1, sizeof(*r->segs));
    if (r->segs == NULL)
        return FG_ENOMEM;
    size_t pos = r->rooted ? 1 : 0;
    if (len == 0) {
        /* The empty path: a message with no route key, or every bare path. */
        r->tail = r->path_kind == FG_PATH_PREFIX ? FG_TAIL_ANY : FG_TAIL_END;
        return 0;
    }
    for (;;) {
        char *slash = memchr(p + pos, '/', len - pos);
        size_t end = slash ? (size_t)(slash - p) : len;
        struct fg_seg *s = &r->segs[r->nsegs];
        s->text = p + pos;
        s->len = (uint32_t)(end - pos);
        s->param = 0;
        if (r->path_kind == FG_PATH_PATTERN && s->len > 0 &&
            (p[pos] == ':' || p[pos] == '*')) {
            if (s->len == 1) {
                fg_seterr(err, FG_EINVAL, index, "a ':' or '*' without a name in the path%s",
                          NULL);
                return FG_EINVAL;
            }
            if (p[pos] == '*') {
                if (slash != NULL) {
                    fg_seterr(err, FG_EINVAL, index,
                              "a '*' wildcard must be the path's last segment%s", NULL);
                    return FG_EINVAL;
                }
                r->wild_name = p + pos + 1;
                r->wild_len = s->len - 1;
                r->tail = FG_TAIL_MORE;
                r->nparams++;
                break;
            }
            s->text++;
            s->len--;
            s->param = 1;
            r->nparams++;
        }
        if (r->nsegs == FG_ROUTE_MAX_SEGS) {
            fg_seterr(err, FG_ETOOMANY, index, "more than 64 segments in the path%s", NULL);
            return FG_ETOOMANY;
        }
        r->nsegs++;
        if (slash == NULL) {
            r->tail = r->path_kind == FG_PATH_PREFIX ? FG_TAIL_ANY : FG_TAIL_END;
            break;
        }
        pos = end + 1;
    }
    /* A prefix ending in '/' ("/api/"): the paths under it, i.e. its
     * segments and at least one more. */
    if (r->path_kind == FG_PATH_PREFIX && r->nsegs > 0 && r->segs[r->nsegs - 1].len == 0) {
        r->nsegs--;
        r->tail = FG_TAIL_MORE;
    }
    if (r->nparams > FG_CTX_MAX_PARAMS) {
        fg_seterr(err, FG_ETOOMANY, index, "more than 8 parameters in the path%s", NULL);
        return FG_ETOOMANY;
    }
    return 0;
}

static int fg_route_parse_methods(struct fg_route *r, const char *methods, fg_parse_error *err,
                                  int index) {
    if (methods == NULL || methods[0] == '\0')
        return 0;
    int too_long = 0;
    size_t len;
    r->methods_text = fg_copy(methods, 1024, &len, &too_long);
    if (r->methods_text == NULL) {
        fg_seterr(err, too_long ? FG_ETOOLONG : FG_ENOMEM, index, "method list too long%s",
                  NULL);
        return too_long ? FG_ETOOLONG : FG_ENOMEM;
    }
    const char *s = r->methods_text;
    size_t pos = 0;
    for (;;) {
        const char *comma = memchr(s + pos, ',', len - pos);
        size_t end = comma ? (size_t)(comma - s) : len;
        size_t a = pos, b = end;
        while (a < b && s[a] == ' ')
            a++;
        while (b > a && s[b - 1] == ' ')
            b--;
        if (a == b || b - a > FG_METHOD_MAX || !fg__is_token(s + a, b - a)) {
            fg_seterr(err, FG_EINVAL, index, "bad method in \"%s\"", methods);
            return FG_EINVAL;
        }
        if (r->nmethods == FG_ROUTE_MAX_METHODS) {
            fg_seterr(err, FG_ETOOMANY, index, "more than 16 methods%s", NULL);
            return FG_ETOOMANY;
        }
        r->methods[r->nmethods++] = (fg_str){s + a, b - a};
        if (comma == NULL)
            return 0;
        pos = end + 1;
    }
}

static int fg_route_parse_preds(struct fg_route *r, const fg_route_spec *spec,
                                fg_parse_error *err, int index) {
    if (spec->nmatches == 0)
        return 0;
    if (spec->matches == NULL) {
        fg_seterr(err, FG_EINVAL, index, "matches is NULL%s", NULL);
        return FG_EINVAL;
    }
    if (spec->nmatches > FG_ROUTE_MAX_MATCHES) {
        fg_seterr(err, FG_ETOOMANY, index, "more than 16 predicates%s", NULL);
        return FG_ETOOMANY;
    }
    r->preds = fg__calloc(spec->nmatches, sizeof(*r->preds));
    if (r->preds == NULL)
        return FG_ENOMEM;
    for (size_t i = 0; i < spec->nmatches; i++) {
        const fg_value_match *m = &spec->matches[i];
        struct fg_pred *p = &r->preds[r->npreds];
        if (m->name == NULL || m->name[0] == '\0' || (unsigned)m->source > FG_SOURCE_COOKIE ||
            (unsigned)m->op > FG_MATCH_EQ ||
            ((m->op == FG_MATCH_EXACT || m->op == FG_MATCH_PREFIX) && m->value == NULL) ||
            m->number != m->number) {
            fg_seterr(err, FG_EINVAL, index,
                      "predicate needs a name, a known source and op, and its value%s", NULL);
            return FG_EINVAL;
        }
        int too_long = 0;
        p->name = fg_copy(m->name, FG_HEADER_NAME_MAX, &p->name_len, &too_long);
        if (p->name == NULL)
            goto fail_copy;
        r->npreds++;
        if (m->value != NULL) {
            p->value = fg_copy(m->value, FG_HEADER_VALUE_MAX, &p->value_len, &too_long);
            if (p->value == NULL)
                goto fail_copy;
        }
        p->source = (uint8_t)m->source;
        p->op = (uint8_t)m->op;
        p->invert = m->invert != 0;
        p->number = m->number;
        continue;
    fail_copy:
        fg_seterr(err, too_long ? FG_ETOOLONG : FG_ENOMEM, index,
                  too_long ? "predicate name or value too long%s" : "out of memory%s", NULL);
        return too_long ? FG_ETOOLONG : FG_ENOMEM;
    }
    return 0;
}

static int fg_route_parse_targets(fg_router *router, struct fg_route *r,
                                  const fg_route_spec *spec, fg_parse_error *err, int index) {
    if (spec->ntargets == 0 || spec->targets == NULL) {
        fg_seterr(err, FG_EINVAL, index, "a route needs at least one target%s", NULL);
        return FG_EINVAL;
    }
    if (spec->ntargets > FG_ROUTE_MAX_TARGETS) {
        fg_seterr(err, FG_ETOOMANY, index, "more than 16 targets%s", NULL);
        return FG_ETOOMANY;
    }
    r->targets = fg__calloc(spec->ntargets, sizeof(*r->targets));
    if (r->targets == NULL)
        return FG_ENOMEM;
    uint64_t total = 0;
    for (size_t i = 0; i < spec->ntargets; i++)
        total += spec->targets[i].weight;
    if (spec->ntargets > 1 && total == 0) {
        fg_seterr(err, FG_EINVAL, index, "every weight of the split is 0%s", NULL);
        return FG_EINVAL;
    }
    if (spec->ntargets > 1 && total > FG_SPLIT_SLOTS) {
        /* Out of 10,000 slots every positive weight gets at least one, and
         * a weight means what it says (no share rounded to zero). */
        fg_seterr(err, FG_EINVAL, index, "the split's weights add up past 10000%s", NULL);
        return FG_EINVAL;
    }
    uint64_t cum = 0;
    for (size_t i = 0; i < spec->ntargets; i++) {
        const fg_route_target *in = &spec->targets[i];
        struct fg__route_target *t = &r->targets[r->ntargets++];
        if (in->handler == NULL || (in->nstages > 0 && in->stages == NULL)) {
            fg_seterr(err, FG_EINVAL, index, "a target needs a handler (and its stages)%s",
                      NULL);
            return FG_EINVAL;
        }
        if (in->nstages > FG_CTX_MAX_DEPTH) {
            fg_seterr(err, FG_ETOOMANY, index, "a target has more than 32 stages%s", NULL);
            return FG_ETOOMANY;
        }
        int too_long = 0;
        t->name = fg_copy(in->name ? in->name : r->name, FG_ROUTE_NAME_MAX, NULL, &too_long);
        if (t->name == NULL) {
            fg_seterr(err, too_long ? FG_ETOOLONG : FG_ENOMEM, index, "target name too long%s",
                      NULL);
            return too_long ? FG_ETOOLONG : FG_ENOMEM;
        }
        t->handler = in->handler;
        t->arg = in->arg;
        t->weight = in->weight;
        cum += spec->ntargets == 1 ? 1 : in->weight;
        /* Cumulative ranges in order: changing one weight moves only the
         * slots at the boundaries it shifts. */
        t->slot_end = (uint32_t)(cum * FG_SPLIT_SLOTS / (spec->ntargets == 1 ? 1 : total));
        if (in->nstages > 0) {
            /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
            t->stages = fg__calloc(in->nstages, sizeof(*t->stages));
            if (t->stages == NULL)
                return FG_ENOMEM;
        }
        for (size_t k = 0; k < in->nstages; k++) {
            if (in->stages[k] == NULL) {
                fg_seterr(err, FG_EINVAL, index, "a target's stage is NULL%s", NULL);
                return FG_EINVAL;
            }
        }
        if (in->nstages > router->max_stages)
            router->max_stages = (uint32_t)in->nstages;
    }
    /* Only now, with every check passed, do the stage references move. */
    for (size_t i = 0; i < spec->ntargets; i++)
        for (size_t k = 0; k < spec->targets[i].nstages; k++)
            r->targets[i].stages[r->targets[i].nstages++] = spec->targets[i].stages[k];
    return 0;
}

/* Drop the references fg_router_add takes whatever happens. */
static void fg_spec_unref_stages(const fg_route_spec *spec) {
    if (spec == NULL || spec->targets == NULL)
        return;
    for (size_t i = 0; i < spec->ntargets; i++)
        if (spec->targets[i].stages != NULL)
            for (size_t k = 0; k < spec->targets[i].nstages; k++)
                fg_stage_unref(spec->targets[i].stages[k]);
}

static int fg_router_add_route(fg_router *router, const fg_route_spec *spec,
                               fg_parse_error *err, struct fg_route *r, int index) {
    int too_long = 0;
    if (spec->name == NULL || spec->name[0] == '\0') {
        fg_seterr(err, FG_EINVAL, index, "a route needs a name%s", NULL);
        return FG_EINVAL;
    }
    r->name = fg_copy(spec->name, FG_ROUTE_NAME_MAX, NULL, &too_long);
    if (r->name == NULL) {
        fg_seterr(err, too_long ? FG_ETOOLONG : FG_ENOMEM, index, "route name too long%s",
                  NULL);
        return too_long ? FG_ETOOLONG : FG_ENOMEM;
    }
    if (fg_name_taken(router, r->name)) {
        fg_seterr(err, FG_EEXIST, index, "a route named '%s' already exists", r->name);
        return FG_EEXIST;
    }
    if ((unsigned)spec->path_kind > FG_PATH_PATTERN ||
        (spec->path_kind != FG_PATH_ANY && spec->path == NULL)) {
        fg_seterr(err, FG_EINVAL, index, "the path kind needs a path%s", NULL);
        return FG_EINVAL;
    }
    r->path_kind = (uint8_t)spec->path_kind;
    r->shadowed_by = -1;
    if (spec->path_kind != FG_PATH_ANY) {
        r->path = fg_copy(spec->path, FG_PATH_MAX, NULL, &too_long);
        if (r->path == NULL) {
            fg_seterr(err, too_long ? FG_ETOOLONG : FG_ENOMEM, index, "path too long%s", NULL);
            return too_long ? FG_ETOOLONG : FG_ENOMEM;
        }
        if (memchr(r->path, '?', strlen(r->path)) != NULL) {
            fg_seterr(err, FG_EINVAL, index,
                      "a path cannot contain '?': match the query with predicates%s", NULL);
            return FG_EINVAL;
        }
    }
    int rc = fg_route_parse_path(r, err, index);
    if (rc == 0)
        rc = fg_route_parse_methods(r, spec->methods, err, index);
    if (rc == 0)
        rc = fg_route_parse_preds(r, spec, err, index);
    if (rc == 0 && spec->when != NULL) {
        rc = fg_expr_compile(spec->when, strlen(spec->when), &r->when, err);
        if (rc != 0 && err != NULL)
            err->route = index;
    }
    if (rc == 0 && (unsigned)spec->split_source > FG_SOURCE_COOKIE) {
        fg_seterr(err, FG_EINVAL, index, "unknown split source%s", NULL);
        rc = FG_EINVAL;
    }
    r->split_source = (uint8_t)spec->split_source;
    if (rc == 0 && spec->split_key != NULL) {
        r->split_key =
            fg_copy(spec->split_key, FG_HEADER_NAME_MAX, &r->split_key_len, &too_long);
        if (r->split_key == NULL)
            rc = too_long ? FG_ETOOLONG : FG_ENOMEM;
    }
    if (rc == 0) {
        const char *salt = spec->split_salt ? spec->split_salt : r->name;
        r->salt = fg_copy(salt, FG_ROUTE_NAME_MAX, &r->salt_len, &too_long);
        if (r->salt == NULL)
            rc = too_long ? FG_ETOOLONG : FG_ENOMEM;
    }
    if (rc == 0)
        rc = fg_route_parse_targets(router, r, spec, err, index);
    if (rc != 0 && err != NULL && err->code == 0)
        fg_seterr(err, rc, index, "%s", fg_strerror(rc));
    return rc;
}

int fg_router_add(fg_router *router, const fg_route_spec *spec, fg_parse_error *err) {
    if (err != NULL)
        memset(err, 0, sizeof(*err)), err->route = -1;
    if (router == NULL || spec == NULL) {
        fg_spec_unref_stages(spec);
        return FG_EINVAL;
    }
    int index = (int)router->nroutes;
    if (router->built) {
        fg_spec_unref_stages(spec);
        fg_seterr(err, FG_ESTATE, index, "the router is already built%s", NULL);
        return FG_ESTATE;
    }
    if (router->nroutes >= FG_ROUTER_MAX_ROUTES) {
        fg_spec_unref_stages(spec);
        fg_seterr(err, FG_ETOOMANY, index, "more routes than FG_ROUTER_MAX_ROUTES%s", NULL);
        return FG_ETOOMANY;
    }
    if (router->nroutes == router->caproutes) {
        uint32_t cap = router->caproutes ? router->caproutes * 2 : 8;
        struct fg_route *p = fg__malloc(cap * sizeof(*p));
        if (p == NULL) {
            fg_spec_unref_stages(spec);
            return FG_ENOMEM;
        }
        if (router->nroutes)
            memcpy(p, router->routes, router->nroutes * sizeof(*p));
        fg__free(router->routes);
        router->routes = p;
        router->caproutes = cap;
    }
    struct fg_route *r = &router->routes[router->nroutes];
    memset(r, 0, sizeof(*r));
    int rc = fg_router_add_route(router, spec, err, r, index);
    if (rc != 0) {
        /* The route's own copies go; stages not yet moved into it are the
         * caller's references, dropped as promised. */
        uint32_t moved = 0;
        for (uint32_t i = 0; i < r->ntargets; i++)
            moved += r->targets[i].nstages;
        if (moved == 0)
            fg_spec_unref_stages(spec);
        fg_route_free(r);
        return rc;
    }
    if (fg_name_add(router, router->nroutes) != 0) {
        fg_route_free(r);
        return FG_ENOMEM;
    }
    router->nroutes++;
    return 0;
}

/* The child of node n for a segment (creating it): a static kid or the
 * param child. Returns the node index or 0 (out of memory). */
static uint32_t fg_node_child(fg_router *router, uint32_t n, const struct fg_seg *seg) {
    struct fg_rnode *node = &router->nodes[n];
    if (seg->param && node->param)
        return node->param;
    if (!seg->param)
        for (uint32_t i = 0; i < node->nkids; i++)
            if (fg_kid_cmp(node->kids[i].seg, node->kids[i].len, seg->text, seg->len) == 0)
                return node->kids[i].node;
    if (router->nnodes == router->capnodes) {
        uint32_t cap = router->capnodes * 2;
        struct fg_rnode *p = fg__calloc(cap, sizeof(*p));
        if (p == NULL)
            return 0;
        memcpy(p, router->nodes, router->nnodes * sizeof(*p));
        fg__free(router->nodes);
        router->nodes = p;
        router->capnodes = cap;
        node = &router->nodes[n];
    }
    uint32_t child = router->nnodes++;
    if (seg->param) {
        node->param = child;
        return child;
    }
    if (node->nkids == node->capkids) {
        uint32_t cap = node->capkids ? node->capkids * 2 : 2;
        struct fg_rkid *p = fg__malloc(cap * sizeof(*p));
        if (p == NULL)
            return 0;
        if (node->nkids)
            memcpy(p, node->kids, node->nkids * sizeof(*p));
        fg__free(node->kids);
        node->kids = p;
        node->capkids = cap;
    }
    node->kids[node->nkids++] = (struct fg_rkid){seg->text, seg->len, child};
    return child;
}

/* The static-kid index lookup above is linear while building; a hash would
 * make a 10,000-way fan-out build faster, but building is once. */

static int fg_kid_sort_cmp(const void *a, const void *b) {
    const struct fg_rkid *x = a, *y = b;
    return fg_kid_cmp(x->seg, x->len, y->seg, y->len);
}

static int fg_router_index(fg_router *router) {
    for (uint32_t i = 0; i < router->nroutes; i++) {
        const struct fg_route *r = &router->routes[i];
        if (r->path_kind == FG_PATH_ANY) {
            if (fg_rlist_push(&router->any, i) != 0)
                return FG_ENOMEM;
            continue;
        }
        uint32_t n = r->rooted ? FG_ROOT_SLASH : FG_ROOT_BARE;
        for (uint32_t s = 0; s < r->nsegs; s++) {
            n = fg_node_child(router, n, &r->segs[s]);
            if (n == 0)
                return FG_ENOMEM;
        }
        if (fg_rlist_push(&router->nodes[n].tails[r->tail], i) != 0)
            return FG_ENOMEM;
    }
    for (uint32_t i = 0; i < router->nnodes; i++)
        if (router->nodes[i].nkids > 1)
            qsort(router->nodes[i].kids, router->nodes[i].nkids, sizeof(struct fg_rkid),
                  fg_kid_sort_cmp);
    return 0;
}

/* Shadowing: route i takes every request route j would when i's path covers
 * j's (the symbolic walk finds those), i comes first, and i has no other
 * condition j lacks: no predicates or rule, and a method set that includes
 * j's. */
struct fg_shadow_arg {
    const struct fg_route *j;
    uint32_t j_index;
    const fg_router *router;
};

static int fg_methods_cover(const struct fg_route *i, const struct fg_route *j) {
    if (i->nmethods == 0)
        return 1;
    if (j->nmethods == 0)
        return 0;
    for (uint32_t a = 0; a < j->nmethods; a++) {
        int found = 0;
        for (uint32_t b = 0; b < i->nmethods && !found; b++)
            found = i->methods[b].len == j->methods[a].len &&
                    memcmp(i->methods[b].ptr, j->methods[a].ptr, j->methods[a].len) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

static int fg_accept_shadow(const struct fg_route *i, void *arg) {
    const struct fg_shadow_arg *sa = arg;
    uint32_t idx = (uint32_t)(i - sa->router->routes);
    return idx < sa->j_index && i->npreds == 0 && i->when == NULL &&
           fg_methods_cover(i, sa->j);
}

static int fg_warn(fg_router *router, const char *text) {
    char **p = fg__malloc((router->nwarnings + 1) * sizeof(*p));
    if (p == NULL)
        return FG_ENOMEM;
    if (router->nwarnings)
        memcpy(p, router->warnings, router->nwarnings * sizeof(*p));
    p[router->nwarnings] = fg__strndup(text, strlen(text));
    if (p[router->nwarnings] == NULL) {
        fg__free(p);
        return FG_ENOMEM;
    }
    fg__free(router->warnings);
    router->warnings = p;
    router->nwarnings++;
    return 0;
}

static int fg_router_shadows(fg_router *router) {
    for (uint32_t j = 1; j < router->nroutes; j++) {
        struct fg_route *rj = &router->routes[j];
        struct fg_reqpath rp;
        memset(&rp, 0, sizeof(rp));
        rp.rooted = rj->rooted;
        rp.n = rj->nsegs;
        rp.tail = rj->tail;
        for (uint32_t s = 0; s < rj->nsegs; s++) {
            rp.segs[s] = (fg_str){rj->segs[s].text, rj->segs[s].len};
            rp.param[s] = rj->segs[s].param;
        }
        struct fg_walk w = {.router = router, .rp = &rp, .symbolic = 1};
        struct fg_shadow_arg sa = {rj, j, router};
        long i;
        if (rj->path_kind == FG_PATH_ANY) {
            /* Only another any-path route covers both rooted and bare paths. */
            w.nlists = 0;
            fg_walk_add(&w, &router->any);
            i = fg_first(&w, fg_accept_shadow, &sa);
        } else {
            fg_walk_from(&w, rj->rooted);
            i = w.overflow ? -1 : fg_first(&w, fg_accept_shadow, &sa);
        }
        if (i < 0)
            continue;
        rj->shadowed_by = i;
        char text[2 * FG_ROUTE_NAME_MAX + 128];
        (void)snprintf(text, sizeof(text),
                       "route '%s' (index %u) can never match: route '%s' (index %ld) "
                       "matches every request it would",
                       rj->name, j, router->routes[i].name, i);
        if (fg_warn(router, text) != 0)
            return FG_ENOMEM;
    }
    return 0;
}

int fg_router_build(fg_router *router) {
    if (router == NULL)
        return FG_EINVAL;
    if (router->built)
        return FG_ESTATE;
    int rc = fg_router_index(router);
    if (rc == 0)
        rc = fg_router_shadows(router);
    if (rc != 0)
        return rc; /* a failed build may be retried; nothing served yet */
    router->built = 1;
    return 0;
}

const char *fg_router_warning(const fg_router *router, size_t i) {
    return router && i < router->nwarnings ? router->warnings[i] : NULL;
}

long fg_router_shadowed_by(const fg_router *router, size_t i) {
    return router && i < router->nroutes ? router->routes[i].shadowed_by : -1;
}

size_t fg_router_count(const fg_router *router) { return router ? router->nroutes : 0; }

const char *fg_router_route_name(const fg_router *router, size_t i) {
    return router != NULL && i < router->nroutes ? router->routes[i].name : NULL;
}

/* ---- explain ------------------------------------------------------------------------ */

/* Whether route r's path matches the request's segments: the one-route
 * version of the tree walk, used to explain (and to cross-check the tree). */
static int fg_path_matches(const struct fg_route *r, const struct fg_reqpath *rp) {
    if (r->path_kind == FG_PATH_ANY)
        return 1;
    if (r->rooted != rp->rooted)
        return 0;
    uint32_t total = rp->overflow ? FG_ROUTE_MAX_SEGS + 1 : rp->n;
    if (total < r->nsegs)
        return 0;
    for (uint32_t s = 0; s < r->nsegs; s++) {
        const fg_str *seg = &rp->segs[s];
        if (r->segs[s].param ? seg->len == 0
                             : fg_kid_cmp(r->segs[s].text, r->segs[s].len, seg->ptr,
                                          (uint32_t)seg->len) != 0)
            return 0;
    }
    switch (r->tail) {
    case FG_TAIL_END:
        return total == r->nsegs;
    case FG_TAIL_MORE:
        return total > r->nsegs;
    default:
        return 1;
    }
}

struct fg_out {
    char *buf;
    size_t cap, len;
    int cut;
};

static void fg_outf(struct fg_out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fg_outf(struct fg_out *o, const char *fmt, ...) {
    if (o->cut)
        return;
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->cap - o->len;
    int n = vsnprintf(o->buf + o->len, room, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < room) {
        o->len += (size_t)n;
        return;
    }
    o->cut = 1;
    /* Cut: end with "...\n" where it fits. */
    if (o->cap >= 5) {
        o->len = o->cap - 5;
        memcpy(o->buf + o->len, "...\n", 5);
        o->len += 4;
    } else {
        o->len = 0;
        o->buf[0] = '\0';
    }
}

static const char *fg_source_name(int s) {
    static const char *names[] = {"header", "meta", "query", "baggage", "cookie"};
    return s >= 0 && s <= FG_SOURCE_COOKIE ? names[s] : "?";
}

int fg_router_explain(const fg_router *router, fg_ctx *ctx, char *buf, size_t cap,
                      size_t *len) {
    if (len != NULL)
        *len = 0;
    if (router == NULL || ctx == NULL || buf == NULL || cap == 0)
        return FG_EINVAL;
    if (!router->built)
        return FG_ESTATE;
    struct fg_out o = {buf, cap, 0, 0};
    buf[0] = '\0';
    struct fg_reqpath rp;
    fg_str path = fg__route_path(ctx);
    fg_split_path(path, &rp);
    fg_outf(&o, "request %.*s ", (int)ctx->method.len, ctx->method.ptr ? ctx->method.ptr : "");
    /* The path is the client's: print it escaped, so no byte of it can
     * pass for a line of the explanation. */
    for (size_t i = 0; i < path.len && i < 512; i++) {
        unsigned char c = (unsigned char)path.ptr[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            fg_outf(&o, "%c", c);
        else
            fg_outf(&o, "\\x%02x", c);
    }
    fg_outf(&o, "%s\n", path.len > 512 ? "..." : "");
    long winner = -1;
    for (uint32_t i = 0; i < router->nroutes && winner < 0; i++) {
        const struct fg_route *r = &router->routes[i];
        fg_outf(&o, "route %u '%s': ", i, r->name);
        if (!fg_path_matches(r, &rp)) {
            fg_outf(&o, "path does not match\n");
            continue;
        }
        uint32_t pred = 0;
        const char *why = fg_conditions(r, ctx, &pred);
        if (why == NULL) {
            winner = i;
            continue;
        }
        if (why[0] == 'p') {
            const struct fg_pred *p = &r->preds[pred];
            fg_outf(&o, "%s %s does not match\n", fg_source_name(p->source), p->name);
        } else {
            fg_outf(&o, "%s does not match\n", why);
        }
    }
    if (winner < 0) {
        fg_outf(&o, "no route matched\n");
    } else {
        fg_route_match m;
        int rc = fg_route_request(router, ctx, &m);
        if (rc == FG_ETOOMANY)
            fg_outf(&o, "the index gave up: more than %d tree nodes to visit (FG_ETOOMANY)\n",
                    FG_ROUTE_MAX_VISIT);
        else if (rc != 0 || m.route != winner) /* the tree and the list must agree */
            fg_outf(&o, "matched by the list but not the index (bug): %s\n", fg_strerror(rc));
        else
            fg_outf(&o, "matched, target '%s'\n", m.target_name);
    }
    if (len != NULL)
        *len = o.len;
    return 0;
}

/* ---- the stage, dispatch, params ----------------------------------------------------- */

static int fg_router_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)slot;
    return fg_route_request(state, ctx, NULL);
}

static void fg_router_destroy(void *state) { fg_router_free(state); }

static const fg_stage_ops fg_router_ops = {"router", fg_router_enter, NULL, fg_router_destroy};

int fg__is_router_stage(const fg_stage *stage) {
    return stage != NULL && stage->ops == &fg_router_ops;
}

uint32_t fg__router_stage_depth(const fg_stage *stage) {
    const fg_router *router = fg_stage_state(stage);
    return router ? router->max_stages : 0;
}

int fg_stage_router(fg_router *router, const char *name, fg_stage **out) {
    if (out != NULL)
        *out = NULL;
    int rc = router == NULL || out == NULL ? FG_EINVAL : !router->built ? FG_ESTATE : 0;
    if (rc == 0)
        rc = fg_stage_new(&fg_router_ops, router, name ? name : "router", out);
    if (rc != 0)
        fg_router_free(router); /* taken on error too, as fg_chain_use takes stages */
    return rc;
}

int fg_route_dispatch(fg_ctx *ctx) {
    if (ctx == NULL)
        return FG_EINVAL;
    const struct fg__route_target *t = ctx->priv.route_target;
    if (t == NULL || t->handler == NULL)
        return FG_ESTATE;
    return t->handler(ctx, t->arg);
}

int fg_ctx_param(const fg_ctx *ctx, const char *name, fg_str *value) {
    if (value != NULL)
        *value = (fg_str){NULL, 0};
    if (ctx == NULL || name == NULL || value == NULL)
        return FG_EINVAL;
    size_t n = strlen(name);
    for (uint32_t i = 0; i < ctx->nparams && i < FG_CTX_MAX_PARAMS; i++)
        if (ctx->params[i].name.len == n && memcmp(ctx->params[i].name.ptr, name, n) == 0) {
            *value = ctx->params[i].value;
            return 0;
        }
    return FG_ENOTFOUND;
}
