/*
 * lib/config.c - the JSON config compiler (floodgate/config.h): the
 * registry, validation with JSON paths, and loading into a runtime with
 * components carried over by name (docs/config.md,
 * docs/adr/0005-runtime-snapshots.md).
 *
 * A load parses the document with jansson, then walks it once, building
 * everything aside: the components (limiters, keyed limiters, breakers),
 * the stages on them, the router and the chain. Every problem becomes an
 * error with its JSON path; the walk goes on wherever that makes sense, so
 * a user sees every mistake at once. Only a load with no error touches the
 * runtime: pending rate/burst changes on carried-over limiters are applied,
 * the snapshot is swapped in, and the table of components by name (the
 * config state kept in the runtime) is replaced.
 *
 * A cluster limiter (a "limiters" entry with "cluster") is a component
 * too: its bucket lives in Redis, its lease and connection in the
 * fg_cluster_limiter. fg_config_check never makes one (no connection, no
 * thread): its options are checked by floodgate/cluster.h's rules, and a
 * local bucket of the same rate and burst stands in for it in the chain.
 *
 * Components are reference-counted: one reference per table entry and one
 * per snapshot naming them. The last reference may be dropped on any thread
 * (a request thread that frees a retired snapshot), so the counts are
 * atomic; the component's stages are gone by then (a snapshot frees its
 * chain before releasing its components).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "floodgate/breaker.h"
#include "floodgate/adaptive.h"
#include "floodgate/bulkhead.h"
#include "floodgate/cluster.h"
#include "floodgate/retry.h"
#include "floodgate/config.h"
#include "floodgate/deadline.h"
#include "floodgate/error.h"
#include "floodgate/fault.h"
#include "floodgate/limiter.h"
#include "floodgate/metrics.h"
#include "floodgate/router.h"
#include "floodgate/trace.h"

#include "alloc.h"
#include "cluster_internal.h"
#include "internal.h"
#include "runtime_internal.h"

#define FG_CFG_VERSION_MAX 256  /* what fg_runtime_swap accepts */
#define FG_CFG_ERRS_KEPT   4096 /* errors held before sorting; the rest only counted */
#define FG_CFG_WHY_MAX     160  /* a custom factory's reason */

/* ---- the registry ---------------------------------------------------------------- */

struct fg_reg_handler {
    char *name;
    fg_handler_fn fn;
    void *arg;
};

struct fg_reg_stage {
    char *name;
    fg_stage_factory fn;
    void *arg;
};

struct fg_reg_fallback {
    char *name;
    fg_fallback_fn fn;
    void *arg;
};

struct fg_registry {
    struct fg_reg_handler *handlers;
    size_t nhandlers, caphandlers;
    struct fg_reg_stage *stages;
    size_t nstages, capstages;
    struct fg_reg_fallback *fallbacks;
    size_t nfallbacks, capfallbacks;
};

int fg_registry_new(fg_registry **out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = fg__calloc(1, sizeof(**out));
    return *out ? 0 : FG_ENOMEM;
}

void fg_registry_free(fg_registry *registry) {
    if (registry == NULL)
        return;
    for (size_t i = 0; i < registry->nhandlers; i++)
        fg__free(registry->handlers[i].name);
    for (size_t i = 0; i < registry->nstages; i++)
        fg__free(registry->stages[i].name);
    for (size_t i = 0; i < registry->nfallbacks; i++)
        fg__free(registry->fallbacks[i].name);
    fg__free(registry->handlers);
    fg__free(registry->stages);
    fg__free(registry->fallbacks);
    fg__free(registry);
}

static const struct fg_reg_handler *fg_reg_find_handler(const fg_registry *r,
                                                        const char *name) {
    for (size_t i = 0; r != NULL && i < r->nhandlers; i++)
        if (strcmp(r->handlers[i].name, name) == 0)
            return &r->handlers[i];
    return NULL;
}

static const struct fg_reg_fallback *fg_reg_find_fallback(const fg_registry *r,
                                                          const char *name) {
    for (size_t i = 0; r != NULL && i < r->nfallbacks; i++)
        if (strcmp(r->fallbacks[i].name, name) == 0)
            return &r->fallbacks[i];
    return NULL;
}

static const struct fg_reg_stage *fg_reg_find_stage(const fg_registry *r, const char *name) {
    for (size_t i = 0; r != NULL && i < r->nstages; i++)
        if (strcmp(r->stages[i].name, name) == 0)
            return &r->stages[i];
    return NULL;
}

/* Checks a name and grows an array of elem-sized entries by one. */
static int fg_reg_prepare(const char *name, void **arr, size_t n, size_t *cap, size_t elem,
                          char **copy) {
    if (name == NULL || name[0] == '\0')
        return FG_EINVAL;
    size_t len = strnlen(name, FG_CONFIG_NAME_MAX + 1);
    if (len > FG_CONFIG_NAME_MAX)
        return FG_ETOOLONG;
    if (n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        void *grown = fg__malloc(ncap * elem);
        if (grown == NULL)
            return FG_ENOMEM;
        if (n > 0)
            memcpy(grown, *arr, n * elem);
        fg__free(*arr);
        *arr = grown;
        *cap = ncap;
    }
    *copy = fg__strndup(name, len);
    return *copy ? 0 : FG_ENOMEM;
}

int fg_registry_add_handler(fg_registry *registry, const char *name, fg_handler_fn fn,
                            void *arg) {
    if (registry == NULL || fn == NULL)
        return FG_EINVAL;
    if (name != NULL && fg_reg_find_handler(registry, name) != NULL)
        return FG_EEXIST;
    char *copy = NULL;
    void *arr = registry->handlers;
    int rc = fg_reg_prepare(name, &arr, registry->nhandlers, &registry->caphandlers,
                            sizeof(struct fg_reg_handler), &copy);
    registry->handlers = arr;
    if (rc != 0)
        return rc;
    registry->handlers[registry->nhandlers++] = (struct fg_reg_handler){copy, fn, arg};
    return 0;
}

int fg_registry_add_fallback(fg_registry *registry, const char *name, fg_fallback_fn fn,
                             void *arg) {
    if (registry == NULL || fn == NULL)
        return FG_EINVAL;
    if (name != NULL && fg_reg_find_fallback(registry, name) != NULL)
        return FG_EEXIST;
    char *copy = NULL;
    void *arr = registry->fallbacks;
    int rc = fg_reg_prepare(name, &arr, registry->nfallbacks, &registry->capfallbacks,
                            sizeof(struct fg_reg_fallback), &copy);
    registry->fallbacks = arr;
    if (rc != 0)
        return rc;
    registry->fallbacks[registry->nfallbacks++] = (struct fg_reg_fallback){copy, fn, arg};
    return 0;
}

int fg_registry_add_stage(fg_registry *registry, const char *name, fg_stage_factory factory,
                          void *arg) {
    if (registry == NULL || factory == NULL)
        return FG_EINVAL;
    if (name != NULL && fg_reg_find_stage(registry, name) != NULL)
        return FG_EEXIST;
    char *copy = NULL;
    void *arr = registry->stages;
    int rc = fg_reg_prepare(name, &arr, registry->nstages, &registry->capstages,
                            sizeof(struct fg_reg_stage), &copy);
    registry->stages = arr;
    if (rc != 0)
        return rc;
    registry->stages[registry->nstages++] = (struct fg_reg_stage){copy, factory, arg};
    return 0;
}

/* ---- formatting errors ----------------------------------------------------------- */

size_t fg_config_errors_format(const fg_config_errors *errors, char *buf, size_t cap) {
    if (buf == NULL || cap == 0)
        return 0;
    buf[0] = '\0';
    if (errors == NULL)
        return 0;
    size_t len = 0;
    char line[512];
    size_t n = errors->count < FG_CONFIG_MAX_ERRORS ? errors->count : FG_CONFIG_MAX_ERRORS;
    for (size_t i = 0; i <= n && len < cap - 1; i++) {
        int w;
        if (i == n) {
            if (errors->omitted == 0)
                break;
            w = snprintf(line, sizeof(line), "... and %zu more\n", errors->omitted);
        } else {
            const fg_config_error *e = &errors->items[i];
            char where[64] = "";
            if (e->line > 0)
                (void)snprintf(where, sizeof(where), " (line %d, column %d)", e->line,
                               e->column);
            w = snprintf(line, sizeof(line), "%.*s%s%.*s%s\n", (int)sizeof(e->path), e->path,
                         e->path[0] ? ": " : "", (int)sizeof(e->message), e->message, where);
        }
        if (w < 0)
            break;
        size_t wl = (size_t)w < sizeof(line) ? (size_t)w : sizeof(line) - 1;
        if (wl > cap - 1 - len)
            wl = cap - 1 - len;
        memcpy(buf + len, line, wl);
        len += wl;
    }
    buf[len] = '\0';
    return len;
}

/* ---- components ------------------------------------------------------------------- */

enum fg_comp_kind {
    FG_COMP_LIMITER,
    FG_COMP_KEYED,
    FG_COMP_BREAKER,
    FG_COMP_FAULT,
    FG_COMP_BULKHEAD,
    FG_COMP_BUDGET,
    FG_COMP_ADAPTIVE,
    FG_COMP_CLUSTER
};

/* The sections definitions come from; a name is unique within one. */
enum fg_section {
    FG_SEC_LIMITERS,
    FG_SEC_BREAKERS,
    FG_SEC_FAULTS,
    FG_SEC_BULKHEADS,
    FG_SEC_BUDGETS,
    FG_SEC_ADAPTIVE
};

static enum fg_section fg_comp_section(enum fg_comp_kind k) {
    return k == FG_COMP_BREAKER    ? FG_SEC_BREAKERS
           : k == FG_COMP_FAULT    ? FG_SEC_FAULTS
           : k == FG_COMP_BULKHEAD ? FG_SEC_BULKHEADS
           : k == FG_COMP_BUDGET   ? FG_SEC_BUDGETS
           : k == FG_COMP_ADAPTIVE ? FG_SEC_ADAPTIVE
                                   : FG_SEC_LIMITERS;
}

/* What identifies a keyed limiter's table besides its options: where keys
 * come from (another source makes a fresh table). */
struct fg_keysrc {
    fg_key_source source;
    char name[FG_CONFIG_NAME_MAX + 1];
};

struct fg_comp {
    uint32_t refs; /* atomic */
    enum fg_comp_kind kind;
    char *name;
    fg_limiter *limiter;
    fg_keyed_limiter *keyed;
    fg_breaker *breaker;
    fg_limiter_options lopts;       /* LIMITER, CLUSTER; KEYED: the bucket */
    fg_keyed_limiter_options kopts; /* KEYED */
    struct fg_keysrc keysrc;        /* KEYED, CLUSTER (per key) */
    fg_breaker_options bopts;       /* BREAKER */
    int bshadow;                    /* BREAKER: made in shadow mode (FG_BREAKER_DISABLED) */
    fg_runtime_breaker_fn on_event; /* BREAKER: the runtime's listener, with its arg */
    void *on_event_arg;
    fg_metrics *metrics;     /* BREAKER, CLUSTER: the runtime's registry, or NULL */
    fg_fault_options fopts;  /* FAULT: header strings and rule owned here */
    fg_bulkhead *bulkhead;   /* BULKHEAD */
    fg_retry_budget *budget; /* BUDGET */
    fg_retry_budget_options budget_opts;
    fg_adaptive *adaptive; /* ADAPTIVE */
    fg_adaptive_options adaptive_opts;
    /* CLUSTER: the limiter (NULL when only checking: `limiter`, or per key
     * `keyed`, stands in), its options as configured (0 and NULL: the
     * default; strings owned here, name NULL), and the runtime's listener
     * with its arg. */
    fg_cluster_limiter *cluster;
    fg_cluster_options copts;
    fg_cluster_listener on_cluster;
    void *on_cluster_arg;
};

/* Components alive in the process: a test hook for "a removed limiter is
 * freed". Atomic. */
static uint64_t fg_comps_live;

uint64_t fg__config_live_components(void);
uint64_t fg__config_live_components(void) {
    return __atomic_load_n(&fg_comps_live, __ATOMIC_RELAXED);
}

static void fg_comp_ref(struct fg_comp *c) {
    __atomic_fetch_add(&c->refs, 1, __ATOMIC_RELAXED);
}

/* The last reference frees it. acq_rel: every use through an earlier
 * reference (on any thread) happens before the free. */
static void fg_comp_unref(struct fg_comp *c) {
    if (c == NULL || __atomic_fetch_sub(&c->refs, 1, __ATOMIC_ACQ_REL) != 1)
        return;
    if (c->cluster != NULL) {
        /* The registry takes its counts first: it must not read a freed
         * limiter. (The give-back of the lease in fg_cluster_limiter_free
         * is the one call it does not see.) */
        fg__metrics_remove_cluster(c->metrics, c->cluster);
        fg_cluster_limiter_free(c->cluster);
    }
    fg__free((char *)c->copts.redis);
    fg__free((char *)c->copts.prefix);
    fg_limiter_free(c->limiter);
    fg_keyed_limiter_free(c->keyed);
    fg_breaker_free(c->breaker);
    fg_bulkhead_free(c->bulkhead);
    fg_retry_budget_free(c->budget);
    fg_adaptive_free(c->adaptive);
    fg_expr_free((fg_expr *)c->fopts.when);
    fg__free((char *)c->fopts.header);
    fg__free((char *)c->fopts.header_value);
    fg__free(c->name);
    fg__free(c);
    __atomic_fetch_sub(&fg_comps_live, 1, __ATOMIC_RELAXED);
}

/* A list of component references: the runtime's table (config state) and
 * each snapshot's. */
struct fg_comp_list {
    size_t n;
    struct fg_comp **v;
};

static void fg_comp_list_free(void *arg) {
    struct fg_comp_list *l = arg;
    if (l == NULL)
        return;
    for (size_t i = 0; l->v != NULL && i < l->n; i++)
        fg_comp_unref(l->v[i]);
    fg__free(l->v);
    fg__free(l);
}

static struct fg_comp *fg_table_find(const struct fg_comp_list *t, const char *name,
                                     enum fg_section sect) {
    for (size_t i = 0; t != NULL && i < t->n; i++)
        if (fg_comp_section(t->v[i]->kind) == sect && strcmp(t->v[i]->name, name) == 0)
            return t->v[i];
    return NULL;
}

/* ---- the build ---------------------------------------------------------------------- */

static size_t fg_append(char *buf, size_t cap, size_t at, const char *s);

struct fg_err_item {
    int section;
    size_t seq; /* document order within a section */
    fg_config_error e;
};

/* The fallbacks of a config: the top level's and the routes' own, found by
 * the route name pointer the router writes into ctx->route. Owned by the
 * chain (fallback_arg_free). */
struct fg_fb_entry {
    char *route;     /* the route's name */
    const char *key; /* its pointer in the router, once the router exists */
    fg_fallback_fn fn;
    void *arg;
};

struct fg_fb_table {
    fg_fallback_fn top;
    void *top_arg;
    size_t n;
    struct fg_fb_entry *v;
};

static void fg_fb_free(void *arg) {
    struct fg_fb_table *t = arg;
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n; i++)
        fg__free(t->v[i].route);
    fg__free(t->v);
    fg__free(t);
}

static int fg_fb_call(fg_ctx *ctx, int code, void *arg) {
    const struct fg_fb_table *t = arg;
    for (size_t i = 0; ctx->route != NULL && i < t->n; i++)
        if (t->v[i].key == ctx->route)
            return t->v[i].fn(ctx, code, t->v[i].arg);
    return t->top ? t->top(ctx, code, t->top_arg) : code;
}

/* A route's SLO, kept until commit. */
struct fg_route_slo {
    char *route;
    fg_slo_options o;
};

/* One limiter or breaker of the config being compiled. */
struct fg_def {
    char *name; /* borrowed from the JSON */
    enum fg_section sect;
    int ok;               /* parsed and built without error */
    struct fg_comp *comp; /* the build's reference */
    /* limiter stages */
    fg_limit_stage_options sopts;
    /* pending in-place changes on a carried-over limiter */
    int set_rate, set_burst, burst_first;
    /* pending in-place changes on a carried-over bulkhead */
    int set_bulkhead;
    uint32_t max_concurrent;
    uint64_t max_wait_ns;
    int shadow; /* bulkhead stages */
    uint64_t rate, period_ns, burst;
    /* a changed breaker: the old one, whose state it takes at commit
     * (borrowed from the runtime's table, alive under the load lock) */
    struct fg_comp *carry;
};

struct fg_build {
    const fg_registry *registry;
    const struct fg_comp_list *old; /* the runtime's table, or NULL */
    int check_only;                 /* registry NULL: names not checked */
    int section;                    /* ordinal of the top-level key being compiled */
    struct fg_err_item *errs;
    size_t nerrs, caperrs, dropped;
    int oom;
    struct fg_def *defs;
    size_t ndefs;
    fg_trace_options trace;
    char *span_name;                      /* borrowed */
    char version[FG_CFG_VERSION_MAX + 1]; /* copied: the JSON is gone at commit */
    fg_chain *chain;
    fg_router *router;
    size_t nroutes;
    int chain_len;       /* stages before the router */
    json_t *route_names; /* name -> first index, to find duplicates in O(1) */
    fg_clock clock;      /* the runtime's: chains, limiters and breakers read it */
    fg_runtime_breaker_fn on_breaker; /* the runtime's breaker listener, or NULL */
    void *on_breaker_arg;
    fg_cluster_listener on_cluster; /* the runtime's cluster listener, or NULL */
    void *on_cluster_arg;
    int dry; /* fg_config_check: no cluster limiter is made (no connection, no thread) */
    fg_metrics *metrics;       /* the runtime's registry (NULL: checking only) */
    const fg_router *routes;   /* the router, once the chain owns it */
    struct fg_route_slo *slos; /* routes' "slo", applied at commit */
    size_t nslos;
    struct fg_fb_table *fallbacks; /* "fallback"s: the chain owns it once made */
};

FG_PRINTF_(3, 4)
static void fg_err(struct fg_build *b, const char *path, const char *fmt, ...) {
    if (b->nerrs == FG_CFG_ERRS_KEPT) {
        b->dropped++;
        return;
    }
    if (b->nerrs == b->caperrs) {
        size_t ncap = b->caperrs ? b->caperrs * 2 : 16;
        struct fg_err_item *g = fg__malloc(ncap * sizeof(*g));
        if (g == NULL) {
            b->oom = 1;
            b->dropped++;
            return;
        }
        if (b->nerrs)
            memcpy(g, b->errs, b->nerrs * sizeof(*g));
        fg__free(b->errs);
        b->errs = g;
        b->caperrs = ncap;
    }
    struct fg_err_item *it = &b->errs[b->nerrs++];
    memset(it, 0, sizeof(*it));
    it->section = b->section;
    it->seq = b->nerrs;
    (void)fg_append(it->e.path, sizeof(it->e.path), 0, path);
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(it->e.message, sizeof(it->e.message), fmt, ap);
    va_end(ap);
}

static size_t fg_nerrs(const struct fg_build *b) { return b->nerrs + b->dropped; }

/* Child paths: "a.b" and "a[3]", cut to the buffer (paths are for people;
 * a cut one still says where). */
static size_t fg_append(char *buf, size_t cap, size_t at, const char *s) {
    size_t n = strlen(s);
    if (at >= cap - 1)
        return at;
    if (n > cap - 1 - at)
        n = cap - 1 - at;
    memcpy(buf + at, s, n);
    buf[at + n] = '\0';
    return at + n;
}

static const char *fg_key_path(char *buf, size_t cap, const char *parent, const char *key) {
    buf[0] = '\0';
    size_t at = fg_append(buf, cap, 0, parent);
    if (parent[0] && key[0])
        at = fg_append(buf, cap, at, ".");
    (void)fg_append(buf, cap, at, key);
    return buf;
}

static const char *fg_idx_path(char *buf, size_t cap, const char *parent, size_t i) {
    char idx[32];
    buf[0] = '\0';
    size_t at = fg_append(buf, cap, 0, parent);
    (void)snprintf(idx, sizeof(idx), "[%zu]", i);
    (void)fg_append(buf, cap, at, idx);
    return buf;
}

#define PATH_CAP              192
#define KEY(buf, parent, key) fg_key_path(buf, sizeof(buf), parent, key)
#define IDX(buf, parent, i)   fg_idx_path(buf, sizeof(buf), parent, i)

static void fg_unknown_key(struct fg_build *b, const char *parent, const char *key,
                           const char *expected) {
    char p[PATH_CAP];
    fg_err(b, KEY(p, parent, key), "unknown key (expected one of: %s)", expected);
}

/* ---- scalar parsers: each reports its own error and returns 0 or -1 ----------------- */

static int fg_get_string(struct fg_build *b, const char *path, const json_t *v,
                         const char **out) {
    if (!json_is_string(v)) {
        fg_err(b, path, "must be a string");
        return -1;
    }
    *out = json_string_value(v);
    if (strlen(*out) != json_string_length(v)) {
        fg_err(b, path, "must not contain a NUL character");
        return -1;
    }
    return 0;
}

/* A non-empty name of at most FG_CONFIG_NAME_MAX bytes. */
static int fg_get_name(struct fg_build *b, const char *path, const json_t *v,
                       const char **out) {
    if (fg_get_string(b, path, v, out) != 0)
        return -1;
    if ((*out)[0] == '\0') {
        fg_err(b, path, "must not be empty");
        return -1;
    }
    if (strlen(*out) > FG_CONFIG_NAME_MAX) {
        fg_err(b, path, "must be at most %d bytes", FG_CONFIG_NAME_MAX);
        return -1;
    }
    return 0;
}

static int fg_get_uint(struct fg_build *b, const char *path, const json_t *v, uint64_t min,
                       uint64_t max, uint64_t *out) {
    if (!json_is_integer(v)) {
        fg_err(b, path, "must be an integer");
        return -1;
    }
    json_int_t i = json_integer_value(v);
    if (i < 0 || (uint64_t)i < min) {
        fg_err(b, path, "must be >= %llu", (unsigned long long)min);
        return -1;
    }
    if ((uint64_t)i > max) {
        fg_err(b, path, "must be <= %llu", (unsigned long long)max);
        return -1;
    }
    *out = (uint64_t)i;
    return 0;
}

static int fg_get_number(struct fg_build *b, const char *path, const json_t *v, double min,
                         double max, double *out) {
    if (!json_is_number(v)) {
        fg_err(b, path, "must be a number");
        return -1;
    }
    double d = json_number_value(v);
    if (!(d >= min && d <= max)) {
        fg_err(b, path, "must be between %g and %g", min, max);
        return -1;
    }
    *out = d;
    return 0;
}

static int fg_get_bool(struct fg_build *b, const char *path, const json_t *v, int *out) {
    if (!json_is_boolean(v)) {
        fg_err(b, path, "must be true or false");
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

/* "250ms", "1.5s", "5m": digits, an optional fraction, a unit. 0 and *ns,
 * or -1 (malformed or past UINT64_MAX ns). */
static int fg_parse_duration_text(const char *s, uint64_t *ns) {
    static const struct {
        const char *unit;
        uint64_t ns;
    } units[] = {{"ns", 1},
                 {"us", 1000},
                 {"ms", 1000000},
                 {"s", 1000000000},
                 {"m", UINT64_C(60000000000)},
                 {"h", UINT64_C(3600000000000)}};
    const char *p = s;
    uint64_t whole = 0, frac = 0, fscale = 1;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (whole > (UINT64_MAX - 9) / 10)
            return -1;
        whole = whole * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -1;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (fscale >= UINT64_C(1000000000000)) /* finer digits are ignored */
                continue;
            frac = frac * 10 + (uint64_t)(*p - '0');
            fscale *= 10;
        }
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(p, units[i].unit) != 0)
            continue;
        uint64_t u = units[i].ns;
        if (whole != 0 && u > UINT64_MAX / whole)
            return -1;
        uint64_t total = whole * u;
        /* frac < fscale <= 1e12 and u <= 3.6e12: split to stay in 64 bits */
        uint64_t part = (u / fscale) * frac + ((u % fscale) * frac) / fscale;
        if (total > UINT64_MAX - part)
            return -1;
        *ns = total + part;
        return 0;
    }
    return -1;
}

static int fg_get_duration(struct fg_build *b, const char *path, const json_t *v,
                           uint64_t *out) {
    if (!json_is_string(v) || fg_parse_duration_text(json_string_value(v), out) != 0) {
        fg_err(b, path, "must be a duration such as \"250ms\" (units ns, us, ms, s, m, h)");
        return -1;
    }
    return 0;
}

/* "1000/s", "50/100ms", or {"rate": 1000, "per": "1s"}. */
static int fg_get_rate(struct fg_build *b, const char *path, const json_t *v, uint64_t *rate,
                       uint64_t *period) {
    char p[PATH_CAP];
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        const char *slash = strchr(s, '/');
        uint64_t n = 0;
        const char *q = s;
        int ok = slash != NULL && slash > s;
        for (; ok && q < slash; q++) {
            if (*q < '0' || *q > '9' || n > (UINT64_MAX - 9) / 10)
                ok = 0;
            else
                n = n * 10 + (uint64_t)(*q - '0');
        }
        if (ok) {
            const char *unit = slash + 1;
            if (*unit >= '0' && *unit <= '9')
                ok = fg_parse_duration_text(unit, period) == 0;
            else {
                char one[8];
                ok = strlen(unit) < 4 && snprintf(one, sizeof(one), "1%s", unit) > 0 &&
                     fg_parse_duration_text(one, period) == 0;
            }
        }
        if (!ok) {
            fg_err(b, path,
                   "must be a rate such as \"1000/s\" or \"50/100ms\", or "
                   "{\"rate\": 1000, \"per\": \"1s\"}");
            return -1;
        }
        if (n == 0 || *period == 0) {
            fg_err(b, path, "must be at least 1 token per period, and the period more than 0");
            return -1;
        }
        *rate = n;
        return 0;
    }
    if (!json_is_object(v)) {
        fg_err(b, path,
               "must be a rate such as \"1000/s\" or \"50/100ms\", or "
               "{\"rate\": 1000, \"per\": \"1s\"}");
        return -1;
    }
    int bad = 0, have = 0;
    *period = 1000000000;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        if (strcmp(k, "rate") == 0) {
            have = 1;
            bad |= fg_get_uint(b, KEY(p, path, k), x, 1, UINT64_MAX >> 1, rate);
        } else if (strcmp(k, "per") == 0) {
            bad |= fg_get_duration(b, KEY(p, path, k), x, period);
            if (!bad && *period == 0) {
                fg_err(b, p, "must be more than 0");
                bad = -1;
            }
        } else {
            fg_unknown_key(b, path, k, "rate, per");
            bad = -1;
        }
    }
    if (!have) {
        fg_err(b, KEY(p, path, "rate"), "required");
        bad = -1;
    }
    return bad ? -1 : 0;
}

static int fg_expect_object(struct fg_build *b, const char *path, const json_t *v) {
    if (!json_is_object(v)) {
        fg_err(b, path, "must be an object");
        return -1;
    }
    return 0;
}

static int fg_expect_array(struct fg_build *b, const char *path, const json_t *v) {
    if (!json_is_array(v)) {
        fg_err(b, path, "must be an array");
        return -1;
    }
    return 0;
}

/* ---- limiters ------------------------------------------------------------------------ */

static struct fg_comp *fg_comp_new(const char *name, enum fg_comp_kind kind) {
    struct fg_comp *c = fg__calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->name = fg__strndup(name, strlen(name));
    if (c->name == NULL) {
        fg__free(c);
        return NULL;
    }
    c->kind = kind;
    c->refs = 1;
    __atomic_fetch_add(&fg_comps_live, 1, __ATOMIC_RELAXED);
    return c;
}

/* ---- the components' common steps ------------------------------------------------------ */

/* d carries over the runtime's component old (same name and section, options
 * that allow it). */
static void fg_def_keep(struct fg_def *d, struct fg_comp *old) {
    fg_comp_ref(old);
    d->comp = old;
    d->ok = 1;
}

/* A new component c, whose constructor returned rc: d's on success; on
 * failure freed, and the error reported at path (hint: what the options
 * must satisfy, or ""). */
static void fg_def_made(struct fg_build *b, const char *path, struct fg_def *d,
                        struct fg_comp *c, int rc, const char *hint) {
    if (rc == 0) {
        d->comp = c;
        d->ok = 1;
        return;
    }
    if (rc == FG_ENOMEM)
        b->oom = 1;
    else
        fg_err(b, path, "options refused: %s%s", fg_strerror(rc), hint);
    fg_comp_unref(c);
}

static int fg_limiter_same_except_rate(const fg_limiter_options *a,
                                       const fg_limiter_options *b) {
    return a->max_wait_ns == b->max_wait_ns && a->warmup_ns == b->warmup_ns &&
           a->cold_factor == b->cold_factor;
}

/* The refill interval, as the limiter rounds it (see limiter.h). */
static uint64_t fg_interval(uint64_t rate, uint64_t period) {
    if (rate == 0)
        return 0; /* refused earlier: rate must be >= 1 */
    if (period == 0)
        period = 1000000000;
    return period / rate + (period % rate != 0);
}

static const char *fg_range_hint =
    "rate and burst out of range (burst and rate at most 2^40 tokens, at least 1 ns "
    "between tokens, burst x interval + max_wait below 2^62 ns)";

/* Makes (or carries over) the limiter of def from lopts/kopts. */
static void fg_limiter_build(struct fg_build *b, const char *path, struct fg_def *d, int keyed,
                             const fg_limiter_options *lo, const fg_keyed_limiter_options *ko,
                             const struct fg_keysrc *ks) {
    /* Validate rate, burst and the rest with a throwaway bucket: a carried
     * limiter gets its new rate and burst only at commit, when nothing may
     * fail any more. */
    fg_limiter *probe = NULL;
    int rc = fg_limiter_new(lo, &probe);
    fg_limiter_free(probe);
    if (rc == FG_ENOMEM) {
        b->oom = 1;
        return;
    }
    if (rc != 0) {
        fg_err(b, path, "%s", fg_range_hint);
        return;
    }
    struct fg_comp *old = fg_table_find(b->old, d->name, FG_SEC_LIMITERS);
    enum fg_comp_kind kind = keyed ? FG_COMP_KEYED : FG_COMP_LIMITER;
    if (old != NULL && old->kind == kind && fg_limiter_same_except_rate(&old->lopts, lo) &&
        (!keyed ||
         (old->kopts.max_keys == ko->max_keys && old->kopts.key_max == ko->key_max &&
          old->kopts.when_full == ko->when_full && old->keysrc.source == ks->source &&
          strcmp(old->keysrc.name, ks->name) == 0))) {
        fg_comp_ref(old);
        d->comp = old;
        d->rate = lo->rate;
        d->period_ns = lo->period_ns;
        d->burst = lo->burst;
        d->set_rate = old->lopts.rate != lo->rate || old->lopts.period_ns != lo->period_ns;
        d->set_burst = old->lopts.burst != lo->burst;
        /* When the interval grows, shrink or grow the burst first: each step
         * then stays within the bounds the final settings satisfy. */
        d->burst_first = fg_interval(lo->rate, lo->period_ns) >
                         fg_interval(old->lopts.rate, old->lopts.period_ns);
        d->ok = 1;
        return;
    }
    struct fg_comp *c = fg_comp_new(d->name, kind);
    if (c == NULL) {
        b->oom = 1;
        return;
    }
    c->lopts = *lo;
    if (keyed) {
        c->kopts = *ko;
        c->keysrc = *ks;
        fg_keyed_limiter_options kc = *ko;
        kc.bucket.clock = b->clock;
        rc = fg_keyed_limiter_new(&kc, &c->keyed);
    } else {
        fg_limiter_options lc = *lo;
        lc.clock = b->clock;
        rc = fg_limiter_new(&lc, &c->limiter);
    }
    if (rc != 0) {
        if (rc == FG_ENOMEM)
            b->oom = 1;
        else if (rc == FG_ERANGE)
            fg_err(b, path, "%s (max_keys at most %lu)", fg_range_hint,
                   (unsigned long)FG_KEYED_MAX_KEYS);
        else
            fg_err(b, path, "cannot make the limiter: %s", fg_strerror(rc));
        fg_comp_unref(c);
        return;
    }
    d->comp = c;
    d->ok = 1;
}

/* ---- cluster limiters --------------------------------------------------------------- */

#define CLUSTER_KEYS                                                                          \
    "redis, prefix, lease, lease_ttl, timeout, fallback, instances, backoff_min, backoff_max"

/* A limiter's keys a cluster limiter does not have: its buckets are in
 * Redis and decide at once (no reservation, no warm-up). */
static int fg_not_for_cluster(const char *k) {
    return strcmp(k, "max_wait") == 0 || strcmp(k, "warmup") == 0 ||
           strcmp(k, "cold_factor") == 0;
}

/* A duration > 0 (0 would silently mean the library default). */
static void fg_get_positive_duration(struct fg_build *b, const char *path, const json_t *v,
                                     uint64_t *out) {
    if (fg_get_duration(b, path, v, out) == 0 && *out == 0)
        fg_err(b, path, "must be more than 0 (leave it out for the default)");
}

/* The Redis address forms fg_cluster_limiter_new accepts, checked with
 * its own parser so that fg_config_check, which never connects, finds a
 * malformed one. */
static int fg_redis_addr_ok(const char *a) {
    const char *host;
    size_t host_len;
    int port;
    return fg__cluster_addr_split(a, &host, &host_len, &port) == 0;
}

_Static_assert(FG_CLUSTER_ADDR_MAX == 255, "fg_redis_addr_form names the bound");
static const char *fg_redis_addr_form =
    "must be \"host:port\" (a host name or an IPv4 address, or [IPv6]; port 1 to 65535) or "
    "\"unix:/path\", at most 255 bytes";

/* "cluster": {...} into *o (strings borrowed from the JSON). */
static void fg_parse_cluster(struct fg_build *b, const char *path, const json_t *v,
                             fg_cluster_options *o) {
    char p[PATH_CAP];
    if (!fg_cluster_available()) {
        fg_err(b, path,
               "not available: this floodgate was built without hiredis (libhiredis-dev)");
        return;
    }
    if (fg_expect_object(b, path, v) != 0)
        return;
    uint64_t u;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "redis") == 0) {
            const char *s;
            if (fg_get_string(b, p, x, &s) != 0)
                continue;
            if (s[0] == '\0' || strlen(s) > FG_CLUSTER_ADDR_MAX || !fg_redis_addr_ok(s))
                fg_err(b, p, "%s", fg_redis_addr_form);
            else
                o->redis = s;
        } else if (strcmp(k, "prefix") == 0) {
            (void)fg_get_string(b, p, x, &o->prefix);
        } else if (strcmp(k, "lease") == 0) {
            (void)fg_get_uint(b, p, x, 1, UINT64_MAX >> 1, &o->lease);
        } else if (strcmp(k, "lease_ttl") == 0) {
            fg_get_positive_duration(b, p, x, &o->lease_ttl_ns);
        } else if (strcmp(k, "timeout") == 0) {
            fg_get_positive_duration(b, p, x, &o->timeout_ns);
        } else if (strcmp(k, "backoff_min") == 0) {
            fg_get_positive_duration(b, p, x, &o->backoff_min_ns);
        } else if (strcmp(k, "backoff_max") == 0) {
            fg_get_positive_duration(b, p, x, &o->backoff_max_ns);
        } else if (strcmp(k, "fallback") == 0) {
            const char *s = json_string_value(x);
            if (s && strcmp(s, "local") == 0)
                o->fallback = FG_CLUSTER_FALLBACK_LOCAL;
            else if (s && strcmp(s, "closed") == 0)
                o->fallback = FG_CLUSTER_FALLBACK_CLOSED;
            else
                fg_err(b, p, "must be \"local\" or \"closed\"");
        } else if (strcmp(k, "instances") == 0) {
            if (fg_get_uint(b, p, x, 1, UINT32_MAX, &u) == 0)
                o->instances = (uint32_t)u;
        } else {
            fg_unknown_key(b, path, k, CLUSTER_KEYS);
        }
    }
}

static int fg_str_same(const char *a, const char *b) {
    return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/* Options as configured, rate and burst included: identical ones keep the
 * limiter (its leases and its connection). */
static int fg_cluster_same(const fg_cluster_options *a, const fg_cluster_options *b) {
    return a->rate == b->rate && a->period_ns == b->period_ns && a->burst == b->burst &&
           fg_str_same(a->redis, b->redis) && fg_str_same(a->prefix, b->prefix) &&
           a->lease == b->lease && a->lease_ttl_ns == b->lease_ttl_ns &&
           a->timeout_ns == b->timeout_ns && a->fallback == b->fallback &&
           a->instances == b->instances && a->backoff_min_ns == b->backoff_min_ns &&
           a->backoff_max_ns == b->backoff_max_ns && a->max_keys == b->max_keys &&
           a->key_max == b->key_max && a->when_full == b->when_full;
}

/* The relay from a cluster limiter to the runtime: the registry keeps the
 * change (its reason), then the runtime's listener hears it. Runs with the
 * limiter's Redis lock held, possibly inside fg_cluster_limiter_new (Redis
 * unreachable at start): it reads only what the component had before the
 * limiter was made, never c->cluster. */
static void fg_comp_cluster_event(const char *name, const fg_cluster_event *event, void *arg) {
    const struct fg_comp *c = arg;
    (void)name; /* the limiter's name is the component's */
    if (c->metrics != NULL)
        (void)fg__metrics_cluster_event(c->metrics, c->name, event);
    if (c->on_cluster != NULL)
        c->on_cluster(c->name, event, c->on_cluster_arg);
}

static const char *fg_cluster_range_hint =
    "rate and burst out of range (burst and rate at most 2^40 tokens, at least 1 us "
    "between tokens for a cluster limiter, burst x interval below 2^62 ns)";

/* Makes (or carries over) the cluster limiter of def from lo's rate and
 * burst, co's cluster options (strings borrowed) and, per key (keyed), ko's
 * table and ks's key source. */
static void fg_cluster_build(struct fg_build *b, const char *path, struct fg_def *d,
                             const fg_limiter_options *lo, const fg_cluster_options *co,
                             int keyed, const fg_keyed_limiter_options *ko,
                             const struct fg_keysrc *ks) {
    char p[PATH_CAP];
    fg_cluster_options o = *co;
    o.rate = lo->rate;
    o.period_ns = lo->period_ns;
    o.burst = lo->burst;
    o.name = d->name;
    if (keyed) {
        o.max_keys = ko->max_keys;
        o.key_max = ko->key_max;
        o.when_full = ko->when_full;
    }
    size_t before = fg_nerrs(b);
    if (o.lease > o.burst)
        fg_err(b, KEY(p, path, "cluster.lease"), "must be <= burst (%llu)",
               (unsigned long long)o.burst);
    if (o.prefix != NULL && strlen(o.prefix) + strlen(d->name) > FG_CLUSTER_NAME_MAX)
        fg_err(b, KEY(p, path, "cluster.prefix"),
               "too long: the Redis key, prefix + the limiter's name, must be at most %d "
               "bytes",
               FG_CLUSTER_NAME_MAX);
    if (o.backoff_min_ns != 0 && o.backoff_max_ns != 0 && o.backoff_max_ns < o.backoff_min_ns)
        fg_err(b, KEY(p, path, "cluster.backoff_max"), "must be >= backoff_min");
    /* fg_cluster_limiter_new's range: fg_limiter_new's, and at least 1 us
     * between tokens (the script's clock is Redis's, in microseconds). */
    fg_limiter *probe = NULL;
    int rc = fg_limiter_new(lo, &probe);
    fg_limiter_free(probe);
    if (rc == FG_ENOMEM) {
        b->oom = 1;
        return;
    }
    uint64_t period = lo->period_ns ? lo->period_ns : UINT64_C(1000000000);
    if (rc != 0 || lo->rate == 0 || lo->burst == 0 || period / lo->rate < 1000 ||
        period > (UINT64_C(1) << 62) / lo->burst)
        fg_err(b, path, "%s", fg_cluster_range_hint);
    if (fg_nerrs(b) != before)
        return;
    struct fg_comp *old = fg_table_find(b->old, d->name, FG_SEC_LIMITERS);
    if (!b->dry && old != NULL && old->kind == FG_COMP_CLUSTER &&
        fg_cluster_same(&old->copts, &o) && old->keysrc.source == ks->source &&
        strcmp(old->keysrc.name, ks->name) == 0) {
        fg_def_keep(d, old);
        return;
    }
    /* Otherwise a new limiter (the old one serves the old snapshot until
     * it is freed). Nothing of the bucket is lost: it lives in Redis under
     * the same key, prefix + name, which the new limiter finds as the old
     * one left it (a new prefix names another bucket). Only this process's
     * lease and connection are new; the old lease goes back to the bucket
     * when the old limiter is freed. */
    struct fg_comp *c = fg_comp_new(d->name, FG_COMP_CLUSTER);
    if (c == NULL) {
        b->oom = 1;
        return;
    }
    c->copts = o;
    c->copts.name = NULL; /* the component's */
    c->copts.redis = o.redis ? fg__strndup(o.redis, strlen(o.redis)) : NULL;
    c->copts.prefix = o.prefix ? fg__strndup(o.prefix, strlen(o.prefix)) : NULL;
    if ((o.redis != NULL && c->copts.redis == NULL) ||
        (o.prefix != NULL && c->copts.prefix == NULL)) {
        b->oom = 1;
        fg_comp_unref(c);
        return;
    }
    c->lopts = *lo;
    c->keysrc = *ks;
    if (b->dry) {
        /* Checking only: a local bucket (a keyed table, per key) of the
         * same rate and burst stands in, so the chain and its stages are
         * built and checked as a load would build them. */
        fg_limiter_options lc = *lo;
        lc.clock = b->clock;
        fg_keyed_limiter_options kc = *ko;
        kc.bucket = lc;
        fg_def_made(b, path, d, c,
                    keyed ? fg_keyed_limiter_new(&kc, &c->keyed)
                          : fg_limiter_new(&lc, &c->limiter),
                    "");
        return;
    }
    c->metrics = b->metrics;
    c->on_cluster = b->on_cluster;
    c->on_cluster_arg = b->on_cluster_arg;
    o.clock = b->clock;
    if (c->metrics != NULL || c->on_cluster != NULL) {
        o.on_event = fg_comp_cluster_event;
        o.arg = c;
    }
    /* Redis unreachable is not an error: the limiter starts in fallback
     * mode and reconnects by itself, so a config loads while Redis is down. */
    rc = fg_cluster_limiter_new(&o, &c->cluster);
    if (rc != 0 && rc != FG_ENOMEM)
        fg_err(b, path, "cannot make the cluster limiter: %s", fg_strerror(rc));
    if (rc == 0 && c->metrics != NULL) {
        rc = fg__metrics_add_cluster(c->metrics, d->name, c->cluster);
        if (rc == FG_ETOOMANY)
            fg_err(b, path, "more cluster limiters than the metrics registry holds (256)");
    }
    if (rc == FG_ENOMEM)
        b->oom = 1;
    if (rc != 0) {
        fg_comp_unref(c);
        return;
    }
    d->comp = c;
    d->ok = 1;
}

#define LIMITER_KEYS                                                                          \
    "rate, burst, max_wait, warmup, cold_factor, tokens, shadow, key, max_keys, key_max, "    \
    "when_full, missing, cluster"

static void fg_parse_limiter(struct fg_build *b, const char *path, const json_t *v,
                             struct fg_def *d) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    size_t before = fg_nerrs(b);
    fg_limiter_options lo = FG_LIMITER_OPTIONS_INIT;
    fg_keyed_limiter_options ko = FG_KEYED_LIMITER_OPTIONS_INIT;
    struct fg_keysrc ks;
    memset(&ks, 0, sizeof(ks));
    fg_limit_stage_options so = FG_LIMIT_STAGE_OPTIONS_INIT;
    fg_cluster_options co = FG_CLUSTER_OPTIONS_INIT;
    const json_t *cluster = json_object_get(v, "cluster");
    int have_rate = 0, have_burst = 0, keyed = 0, have_max_keys = 0;
    const char *keyed_only = NULL;
    uint64_t u;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (cluster != NULL && fg_not_for_cluster(k)) {
            fg_err(b, p, "not offered for a cluster limiter");
        } else if (strcmp(k, "cluster") == 0) {
            fg_parse_cluster(b, p, x, &co);
        } else if (strcmp(k, "rate") == 0) {
            have_rate = 1;
            (void)fg_get_rate(b, p, x, &lo.rate, &lo.period_ns);
        } else if (strcmp(k, "burst") == 0) {
            have_burst = 1;
            (void)fg_get_uint(b, p, x, 1, UINT64_MAX >> 1, &lo.burst);
        } else if (strcmp(k, "max_wait") == 0) {
            (void)fg_get_duration(b, p, x, &lo.max_wait_ns);
        } else if (strcmp(k, "warmup") == 0) {
            (void)fg_get_duration(b, p, x, &lo.warmup_ns);
        } else if (strcmp(k, "cold_factor") == 0) {
            if (fg_get_uint(b, p, x, 1, 1000, &u) == 0)
                lo.cold_factor = (uint32_t)u;
        } else if (strcmp(k, "tokens") == 0) {
            (void)fg_get_uint(b, p, x, 1, UINT64_MAX >> 1, &so.tokens);
        } else if (strcmp(k, "shadow") == 0) {
            (void)fg_get_bool(b, p, x, &so.shadow);
        } else if (strcmp(k, "key") == 0) {
            keyed = 1;
            if (json_is_string(x) && strcmp(json_string_value(x), "path") == 0) {
                ks.source = FG_KEY_PATH;
            } else if (json_is_object(x) && json_object_size(x) == 1 &&
                       (json_object_get(x, "header") || json_object_get(x, "baggage"))) {
                int header = json_object_get(x, "header") != NULL;
                const char *name = NULL;
                char q[PATH_CAP];
                if (fg_get_name(b, KEY(q, p, header ? "header" : "baggage"),
                                json_object_get(x, header ? "header" : "baggage"),
                                &name) == 0) {
                    ks.source = header ? FG_KEY_HEADER : FG_KEY_BAGGAGE;
                    (void)snprintf(ks.name, sizeof(ks.name), "%s", name);
                }
            } else {
                fg_err(b, p,
                       "must be \"path\", {\"header\": \"name\"} or {\"baggage\": \"name\"}");
            }
        } else if (strcmp(k, "max_keys") == 0) {
            have_max_keys = 1;
            keyed_only = keyed_only ? keyed_only : "max_keys";
            if (fg_get_uint(b, p, x, 1, FG_KEYED_MAX_KEYS, &u) == 0)
                ko.max_keys = (uint32_t)u;
        } else if (strcmp(k, "key_max") == 0) {
            keyed_only = keyed_only ? keyed_only : "key_max";
            if (fg_get_uint(b, p, x, 1, FG_KEYED_KEY_MAX_LIMIT, &u) == 0)
                ko.key_max = (uint32_t)u;
        } else if (strcmp(k, "when_full") == 0) {
            keyed_only = keyed_only ? keyed_only : "when_full";
            const char *s = json_string_value(x);
            if (s && strcmp(s, "reject") == 0)
                ko.when_full = FG_KEYED_REJECT_NEW;
            else if (s && strcmp(s, "admit") == 0)
                ko.when_full = FG_KEYED_ADMIT_NEW;
            else
                fg_err(b, p, "must be \"reject\" or \"admit\"");
        } else if (strcmp(k, "missing") == 0) {
            keyed_only = keyed_only ? keyed_only : "missing";
            const char *s = json_string_value(x);
            if (s && strcmp(s, "admit") == 0)
                so.missing = FG_KEY_MISSING_ADMIT;
            else if (s && strcmp(s, "reject") == 0)
                so.missing = FG_KEY_MISSING_REJECT;
            else if (s && strcmp(s, "shared") == 0)
                so.missing = FG_KEY_MISSING_SHARED;
            else
                fg_err(b, p, "must be \"admit\", \"reject\" or \"shared\"");
        } else {
            fg_unknown_key(b, path, k, LIMITER_KEYS);
        }
    }
    if (!have_rate)
        fg_err(b, KEY(p, path, "rate"), "required");
    if (!have_burst)
        fg_err(b, KEY(p, path, "burst"), "required");
    if (keyed && !have_max_keys)
        fg_err(b, KEY(p, path, "max_keys"), "required for a keyed limiter");
    if (!keyed && keyed_only != NULL)
        fg_err(b, KEY(p, path, keyed_only), "only for a keyed limiter (one with \"key\")");
    if (keyed && lo.warmup_ns != 0)
        fg_err(b, KEY(p, path, "warmup"), "not offered for a keyed limiter");
    if (fg_nerrs(b) != before)
        return;
    ko.bucket = lo;
    d->sopts = so;
    d->sopts.key_source = ks.source;
    if (cluster != NULL)
        fg_cluster_build(b, path, d, &lo, &co, keyed, &ko, &ks);
    else
        fg_limiter_build(b, path, d, keyed, &lo, &ko, &ks);
    if (d->ok && so.tokens > lo.burst) {
        fg_err(b, KEY(p, path, "tokens"), "must be <= burst (%llu)",
               (unsigned long long)lo.burst);
        d->ok = 0;
    }
    if (d->ok && keyed) {
        /* the stage's key name must outlive this function: keep it in the comp */
        d->sopts.key_name = ks.source == FG_KEY_PATH ? NULL : d->comp->keysrc.name;
    }
}

/* ---- breakers ------------------------------------------------------------------------- */

static void fg_comp_breaker_event(fg_breaker *breaker, const fg_breaker_event *event,
                                  void *arg) {
    const struct fg_comp *c = arg;
    (void)breaker;
    if (c->metrics != NULL)
        (void)fg_metrics_breaker_event(c->metrics, c->name, event);
    if (c->on_event != NULL)
        c->on_event(c->name, event, c->on_event_arg);
}

static int fg_breaker_same(const fg_breaker_options *a, const fg_breaker_options *b) {
    return a->failure_ratio == b->failure_ratio && a->slow_ratio == b->slow_ratio &&
           a->slow_call_ns == b->slow_call_ns && a->min_requests == b->min_requests &&
           a->consecutive_failures == b->consecutive_failures && a->window == b->window &&
           a->window_size == b->window_size && a->window_ns == b->window_ns &&
           a->window_buckets == b->window_buckets && a->open_for_ns == b->open_for_ns &&
           a->open_backoff == b->open_backoff && a->max_open_ns == b->max_open_ns &&
           a->half_open_probes == b->half_open_probes &&
           a->half_open_timeout_ns == b->half_open_timeout_ns;
}

#define BREAKER_KEYS                                                                          \
    "failure_ratio, slow_ratio, slow_call, min_requests, consecutive_failures, window, "      \
    "open_for, max_open, open_backoff, half_open_probes, half_open_timeout, shadow"

static void fg_parse_window(struct fg_build *b, const char *path, const json_t *v,
                            fg_breaker_options *o) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    uint64_t u;
    int count = json_object_get(v, "count") != NULL;
    int time = json_object_get(v, "time") != NULL;
    if (count == time) {
        fg_err(b, path, "must be {\"count\": N} or {\"time\": \"10s\", \"buckets\": 10}");
        return;
    }
    o->window = count ? FG_BREAKER_WINDOW_COUNT : FG_BREAKER_WINDOW_TIME;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (count && strcmp(k, "count") == 0) {
            if (fg_get_uint(b, p, x, 1, FG_BREAKER_MAX_WINDOW_SIZE, &u) == 0)
                o->window_size = (uint32_t)u;
        } else if (time && strcmp(k, "time") == 0) {
            (void)fg_get_duration(b, p, x, &o->window_ns);
        } else if (time && strcmp(k, "buckets") == 0) {
            if (fg_get_uint(b, p, x, 1, FG_BREAKER_MAX_BUCKETS, &u) == 0)
                o->window_buckets = (uint32_t)u;
        } else {
            fg_unknown_key(b, path, k, count ? "count" : "time, buckets");
        }
    }
}

static void fg_parse_breaker(struct fg_build *b, const char *path, const json_t *v,
                             struct fg_def *d) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    size_t before = fg_nerrs(b);
    fg_breaker_options o = FG_BREAKER_OPTIONS_INIT;
    int shadow = 0;
    uint64_t u;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "failure_ratio") == 0)
            (void)fg_get_number(b, p, x, 0, 1e9, &o.failure_ratio);
        else if (strcmp(k, "slow_ratio") == 0)
            (void)fg_get_number(b, p, x, 0, 1e9, &o.slow_ratio);
        else if (strcmp(k, "slow_call") == 0)
            (void)fg_get_duration(b, p, x, &o.slow_call_ns);
        else if (strcmp(k, "min_requests") == 0) {
            if (fg_get_uint(b, p, x, 0, UINT32_MAX, &u) == 0)
                o.min_requests = (uint32_t)u;
        } else if (strcmp(k, "consecutive_failures") == 0) {
            if (fg_get_uint(b, p, x, 0, UINT32_MAX, &u) == 0)
                o.consecutive_failures = (uint32_t)u;
        } else if (strcmp(k, "window") == 0)
            fg_parse_window(b, p, x, &o);
        else if (strcmp(k, "open_for") == 0)
            (void)fg_get_duration(b, p, x, &o.open_for_ns);
        else if (strcmp(k, "max_open") == 0)
            (void)fg_get_duration(b, p, x, &o.max_open_ns);
        else if (strcmp(k, "open_backoff") == 0)
            (void)fg_get_number(b, p, x, 1, 1000, &o.open_backoff);
        else if (strcmp(k, "half_open_probes") == 0) {
            if (fg_get_uint(b, p, x, 1, FG_BREAKER_MAX_PROBES, &u) == 0)
                o.half_open_probes = (uint32_t)u;
        } else if (strcmp(k, "half_open_timeout") == 0)
            (void)fg_get_duration(b, p, x, &o.half_open_timeout_ns);
        else if (strcmp(k, "shadow") == 0)
            (void)fg_get_bool(b, p, x, &shadow);
        else
            fg_unknown_key(b, path, k, BREAKER_KEYS);
    }
    if (fg_nerrs(b) != before)
        return;
    struct fg_comp *old = fg_table_find(b->old, d->name, FG_SEC_BREAKERS);
    if (old != NULL && fg_breaker_same(&old->bopts, &o) && old->bshadow == shadow) {
        fg_def_keep(d, old);
        return;
    }
    struct fg_comp *c = fg_comp_new(d->name, FG_COMP_BREAKER);
    if (c == NULL) {
        b->oom = 1;
        return;
    }
    c->bopts = o;
    c->bshadow = shadow;
    o.clock = b->clock;
    if (b->on_breaker != NULL || b->metrics != NULL) {
        /* The breaker knows no names: the component, which does, relays. */
        c->on_event = b->on_breaker;
        c->on_event_arg = b->on_breaker_arg;
        c->metrics = b->metrics;
        o.listener = fg_comp_breaker_event;
        o.listener_arg = c;
    }
    int rc = fg_breaker_new(&o, &c->breaker);
    /* Shadow: the state machine runs and counts, nothing is rejected. A
     * carried breaker gets its mode at commit, with its state. */
    if (rc == 0 && shadow && old == NULL)
        rc = fg_breaker_set_mode(c->breaker, FG_BREAKER_DISABLED);
    if (rc != 0) {
        if (rc == FG_ENOMEM)
            b->oom = 1;
        else
            fg_err(b, path,
                   "options out of range (min_requests must fit the window, max_open must "
                   "be >= open_for, durations below 2^62 ns)");
        fg_comp_unref(c);
        return;
    }
    d->comp = c;
    d->carry = old;
    d->ok = 1;
}

/* At commit: a changed breaker takes the old one's state (the mode too,
 * unless "shadow" changed: shadow is the DISABLED mode). */
static void fg_breaker_commit(const struct fg_build *b, const struct fg_def *d) {
    fg_breaker *nb = d->comp->breaker;
    uint64_t now = fg_clock_read(&b->clock);
    (void)fg_breaker_carry(nb, d->carry->breaker, now);
    fg_breaker_stats st;
    (void)fg_breaker_snapshot(nb, now, &st);
    if (d->comp->bshadow && st.mode != FG_BREAKER_DISABLED)
        (void)fg_breaker_set_mode(nb, FG_BREAKER_DISABLED);
    else if (!d->comp->bshadow && d->carry->bshadow && st.mode == FG_BREAKER_DISABLED)
        (void)fg_breaker_set_mode(nb, FG_BREAKER_AUTO);
}

/* ---- faults ------------------------------------------------------------------------- */

#define FAULT_KEYS "delay, abort, header, when, seed, shadow"

/* An outcome name ("overloaded", ...) to its code; 0 when unknown. */
static int fg_outcome_code(const char *name) {
    for (int code = FG_ELIMITED; code >= FG_EREJECTED; code--) {
        const char *n = fg_outcome_name(code);
        if (n != NULL && strcmp(n, name) == 0)
            return code;
    }
    return 0;
}

static void fg_parse_fault_delay(struct fg_build *b, const char *path, const json_t *v,
                                 fg_fault_options *o) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    int have_duration = 0;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "percent") == 0)
            (void)fg_get_number(b, p, x, 0, 100, &o->delay_percent);
        else if (strcmp(k, "duration") == 0)
            have_duration = fg_get_duration(b, p, x, &o->delay_ns) == 0;
        else if (strcmp(k, "max") == 0)
            (void)fg_get_duration(b, p, x, &o->delay_max_ns);
        else
            fg_unknown_key(b, path, k, "percent, duration, max");
    }
    if (!have_duration && json_object_get(v, "duration") == NULL)
        fg_err(b, KEY(p, path, "duration"), "required");
    else if (o->delay_max_ns != 0 && o->delay_max_ns < o->delay_ns)
        fg_err(b, KEY(p, path, "max"), "must be >= duration");
}

static void fg_parse_fault_abort(struct fg_build *b, const char *path, const json_t *v,
                                 fg_fault_options *o) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "percent") == 0) {
            (void)fg_get_number(b, p, x, 0, 100, &o->abort_percent);
        } else if (strcmp(k, "code") == 0) {
            const char *c;
            if (fg_get_string(b, p, x, &c) != 0)
                continue;
            o->abort_code = fg_outcome_code(c);
            if (o->abort_code == 0 || o->abort_code == FG_EHANDLER)
                fg_err(b, p,
                       "unknown code \"%s\" (expected one of: rate_limited, breaker_open, "
                       "no_route, timed_out, overloaded, fault_injected, canceled, rejected)",
                       c);
        } else if (strcmp(k, "retry_after") == 0) {
            (void)fg_get_duration(b, p, x, &o->abort_retry_after_ns);
        } else {
            fg_unknown_key(b, path, k, "percent, code, retry_after");
        }
    }
}

/* ---- bulkheads ------------------------------------------------------------------------ */

#define BULKHEAD_KEYS "max_concurrent, max_wait, shadow"

static void fg_parse_bulkhead(struct fg_build *b, const char *path, const json_t *v,
                              struct fg_def *d) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    size_t before = fg_nerrs(b);
    fg_bulkhead_options o = FG_BULKHEAD_OPTIONS_INIT;
    uint64_t u = 0;
    int have_max = 0;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "max_concurrent") == 0) {
            have_max = 1;
            if (fg_get_uint(b, p, x, 1, UINT32_MAX, &u) == 0)
                o.max_concurrent = (uint32_t)u;
        } else if (strcmp(k, "max_wait") == 0) {
            (void)fg_get_duration(b, p, x, &o.max_wait_ns);
        } else if (strcmp(k, "shadow") == 0) {
            (void)fg_get_bool(b, p, x, &d->shadow);
        } else {
            fg_unknown_key(b, path, k, BULKHEAD_KEYS);
        }
    }
    if (!have_max)
        fg_err(b, KEY(p, path, "max_concurrent"), "required");
    if (fg_nerrs(b) != before)
        return;
    d->max_concurrent = o.max_concurrent;
    d->max_wait_ns = o.max_wait_ns;
    /* Same name: the same bulkhead, so requests in flight keep their
     * slots; a new limit or wait is applied at commit. */
    struct fg_comp *old = fg_table_find(b->old, d->name, FG_SEC_BULKHEADS);
    if (old != NULL) {
        fg_def_keep(d, old);
        d->set_bulkhead = 1;
        return;
    }
    struct fg_comp *c = fg_comp_new(d->name, FG_COMP_BULKHEAD);
    if (c == NULL) {
        b->oom = 1;
        return;
    }
    o.clock = b->clock;
    fg_def_made(b, path, d, c, fg_bulkhead_new(&o, &c->bulkhead), "");
}

/* ---- retry budgets ---------------------------------------------------------------------- */

#define BUDGET_KEYS "ratio, min_per_sec, ttl"

static void fg_parse_budget(struct fg_build *b, const char *path, const json_t *v,
                            struct fg_def *d) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    size_t before = fg_nerrs(b);
    fg_retry_budget_options o = FG_RETRY_BUDGET_OPTIONS_INIT;
    uint64_t u;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "ratio") == 0) {
            (void)fg_get_number(b, p, x, 0, FG_RETRY_BUDGET_RATIO_MAX, &o.ratio);
        } else if (strcmp(k, "min_per_sec") == 0) {
            if (fg_get_uint(b, p, x, 0, UINT32_MAX, &u) == 0)
                o.min_per_sec = (uint32_t)u;
        } else if (strcmp(k, "ttl") == 0) {
            if (fg_get_duration(b, p, x, &o.ttl_ns) == 0 &&
                (o.ttl_ns < FG_RETRY_BUDGET_TTL_MIN_NS ||
                 o.ttl_ns > FG_RETRY_BUDGET_TTL_MAX_NS))
                fg_err(b, p, "must be between 1ms and 1h");
        } else {
            fg_unknown_key(b, path, k, BUDGET_KEYS);
        }
    }
    if (fg_nerrs(b) != before)
        return;
    /* Same name and options: the same budget, with its balance. */
    struct fg_comp *old = fg_table_find(b->old, d->name, FG_SEC_BUDGETS);
    if (old != NULL && old->budget_opts.ratio == o.ratio &&
        old->budget_opts.min_per_sec == o.min_per_sec && old->budget_opts.ttl_ns == o.ttl_ns) {
        fg_def_keep(d, old);
        return;
    }
    struct fg_comp *c = fg_comp_new(d->name, FG_COMP_BUDGET);
    if (c == NULL) {
        b->oom = 1;
        return;
    }
    c->budget_opts = o;
    o.clock = b->clock;
    fg_def_made(b, path, d, c, fg_retry_budget_new(&o, &c->budget), "");
}

static struct fg_def *fg_find_def(struct fg_build *b, const char *name, enum fg_section sect);

/* ---- adaptive concurrency ----------------------------------------------------------- */

#define ADAPTIVE_KEYS                                                                         \
    "algorithm, initial, min, max, window_samples, window, tolerance, smoothing, "            \
    "queue_size, "                                                                            \
    "noload, probe_interval, probe_samples, noload_samples, backoff_ratio, increase, "        \
    "drop_latency, drop_on_failure, seed"

static int fg_adaptive_same(const fg_adaptive_options *a, const fg_adaptive_options *b) {
    return a->algo == b->algo && a->initial_limit == b->initial_limit &&
           a->min_limit == b->min_limit && a->max_limit == b->max_limit &&
           a->window_samples == b->window_samples && a->window_ns == b->window_ns &&
           a->tolerance == b->tolerance && a->smoothing == b->smoothing &&
           a->queue_size == b->queue_size && a->noload == b->noload &&
           a->probe_interval_ns == b->probe_interval_ns &&
           a->probe_jitter == b->probe_jitter && a->probe_samples == b->probe_samples &&
           a->noload_samples == b->noload_samples && a->backoff_ratio == b->backoff_ratio &&
           a->increase == b->increase && a->drop_latency_ns == b->drop_latency_ns &&
           a->drop_on_failure == b->drop_on_failure && a->seed == b->seed;
}

static void fg_parse_adaptive(struct fg_build *b, const char *path, const json_t *v,
                              struct fg_def *d) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    size_t before = fg_nerrs(b);
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    uint64_t u;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        const char *s = json_string_value(x);
        if (strcmp(k, "algorithm") == 0) {
            if (s && strcmp(s, "gradient") == 0)
                o.algo = FG_ADAPTIVE_GRADIENT;
            else if (s && strcmp(s, "aimd") == 0)
                o.algo = FG_ADAPTIVE_AIMD;
            else
                fg_err(b, p, "must be \"gradient\" or \"aimd\"");
        } else if (strcmp(k, "noload") == 0) {
            if (s && strcmp(s, "probe") == 0)
                o.noload = FG_ADAPTIVE_NOLOAD_PROBE;
            else if (s && strcmp(s, "ewma") == 0)
                o.noload = FG_ADAPTIVE_NOLOAD_EWMA;
            else
                fg_err(b, p, "must be \"probe\" or \"ewma\"");
        } else if (strcmp(k, "initial") == 0 || strcmp(k, "min") == 0 ||
                   strcmp(k, "max") == 0) {
            if (fg_get_uint(b, p, x, 1, FG_ADAPTIVE_LIMIT_MAX, &u) == 0)
                *(k[0] == 'i'   ? &o.initial_limit
                  : k[1] == 'i' ? &o.min_limit
                                : &o.max_limit) = (uint32_t)u;
        } else if (strcmp(k, "window_samples") == 0 || strcmp(k, "probe_samples") == 0 ||
                   strcmp(k, "noload_samples") == 0) {
            if (fg_get_uint(b, p, x, 1,
                            strcmp(k, "noload_samples") == 0 ? UINT32_MAX
                                                             : FG_ADAPTIVE_SAMPLES_MAX,
                            &u) == 0)
                *(k[0] == 'w'   ? &o.window_samples
                  : k[0] == 'p' ? &o.probe_samples
                                : &o.noload_samples) = (uint32_t)u;
        } else if (strcmp(k, "window") == 0) {
            (void)fg_get_duration(b, p, x, &o.window_ns);
        } else if (strcmp(k, "probe_interval") == 0) {
            (void)fg_get_duration(b, p, x, &o.probe_interval_ns);
        } else if (strcmp(k, "drop_latency") == 0) {
            (void)fg_get_duration(b, p, x, &o.drop_latency_ns);
        } else if (strcmp(k, "tolerance") == 0) {
            (void)fg_get_number(b, p, x, 1, 1e6, &o.tolerance);
        } else if (strcmp(k, "smoothing") == 0) {
            (void)fg_get_number(b, p, x, 0, 1, &o.smoothing);
        } else if (strcmp(k, "backoff_ratio") == 0) {
            (void)fg_get_number(b, p, x, 0.5, 1, &o.backoff_ratio);
        } else if (strcmp(k, "queue_size") == 0) {
            if (fg_get_uint(b, p, x, 0, FG_ADAPTIVE_LIMIT_MAX, &u) == 0)
                o.queue_size = (uint32_t)u;
        } else if (strcmp(k, "increase") == 0) {
            if (fg_get_uint(b, p, x, 1, FG_ADAPTIVE_LIMIT_MAX, &u) == 0)
                o.increase = (uint32_t)u;
        } else if (strcmp(k, "drop_on_failure") == 0) {
            (void)fg_get_bool(b, p, x, &o.drop_on_failure);
        } else if (strcmp(k, "seed") == 0) {
            (void)fg_get_uint(b, p, x, 0, UINT64_MAX, &o.seed);
        } else {
            fg_unknown_key(b, path, k, ADAPTIVE_KEYS);
        }
    }
    if (fg_nerrs(b) != before)
        return;
    /* Same name and options: the same limit, where it has moved to. */
    struct fg_comp *old = fg_table_find(b->old, d->name, FG_SEC_ADAPTIVE);
    if (old != NULL && fg_adaptive_same(&old->adaptive_opts, &o)) {
        fg_def_keep(d, old);
        return;
    }
    struct fg_comp *c = fg_comp_new(d->name, FG_COMP_ADAPTIVE);
    if (c == NULL) {
        b->oom = 1;
        return;
    }
    c->adaptive_opts = o;
    o.clock = b->clock;
    fg_def_made(b, path, d, c, fg_adaptive_new(&o, &c->adaptive),
                " (min <= initial <= max; smoothing above 0; backoff_ratio below 1)");
}

#define RETRY_KEYS "attempts, backoff, max_backoff, multiplier, jitter, seed, budget"

/* {"retry": {...}}: a retry stage named "retry" (it has no shared state but
 * its budget's). */
static void fg_make_retry(struct fg_build *b, const char *path, const json_t *v,
                          fg_stage **out) {
    char p[PATH_CAP], q[PATH_CAP];
    KEY(p, path, "retry");
    if (json_object_size(v) != 1) {
        fg_err(b, path, "a retry stage has one key: \"retry\"");
        return;
    }
    const json_t *t = json_object_get(v, "retry");
    if (fg_expect_object(b, p, t) != 0)
        return;
    size_t before = fg_nerrs(b);
    fg_retry_options o = FG_RETRY_OPTIONS_INIT;
    uint64_t u;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)t, k, x) {
        KEY(q, p, k);
        if (strcmp(k, "attempts") == 0) {
            if (fg_get_uint(b, q, x, 1, FG_RETRY_MAX_ATTEMPTS, &u) == 0)
                o.max_attempts = (uint32_t)u;
        } else if (strcmp(k, "backoff") == 0) {
            (void)fg_get_duration(b, q, x, &o.base_ns);
        } else if (strcmp(k, "max_backoff") == 0) {
            (void)fg_get_duration(b, q, x, &o.max_backoff_ns);
        } else if (strcmp(k, "multiplier") == 0) {
            (void)fg_get_number(b, q, x, 1, FG_RETRY_MULTIPLIER_MAX, &o.multiplier);
        } else if (strcmp(k, "jitter") == 0) {
            const char *s = json_string_value(x);
            if (s && strcmp(s, "none") == 0)
                o.jitter = FG_JITTER_NONE;
            else if (s && strcmp(s, "full") == 0)
                o.jitter = FG_JITTER_FULL;
            else if (s && strcmp(s, "decorrelated") == 0)
                o.jitter = FG_JITTER_DECORRELATED;
            else
                fg_err(b, q, "must be \"none\", \"full\" or \"decorrelated\"");
        } else if (strcmp(k, "seed") == 0) {
            (void)fg_get_uint(b, q, x, 0, UINT64_MAX, &o.seed);
        } else if (strcmp(k, "budget") == 0) {
            const char *name;
            if (fg_get_name(b, q, x, &name) != 0)
                continue;
            struct fg_def *d = fg_find_def(b, name, FG_SEC_BUDGETS);
            if (d == NULL)
                fg_err(b, q, "unknown retry budget \"%s\"", name);
            else if (d->ok)
                o.budget = d->comp->budget;
            else
                fg_err(b, q, "retry budget \"%s\" has errors", name);
        } else {
            fg_unknown_key(b, p, k, RETRY_KEYS);
        }
    }
    if (fg_nerrs(b) != before)
        return;
    if (o.max_backoff_ns < o.base_ns) {
        fg_err(b, KEY(q, p, "max_backoff"), "must be >= backoff");
        return;
    }
    o.clock = b->clock;
    int rc = fg_stage_retry(&o, "retry", out);
    if (rc == FG_ENOMEM)
        b->oom = 1;
    else if (rc != 0)
        fg_err(b, p, "options refused: %s", fg_strerror(rc));
}

static void fg_parse_fault(struct fg_build *b, const char *path, const json_t *v,
                           struct fg_def *d) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    size_t before = fg_nerrs(b);
    fg_fault_options o = FG_FAULT_OPTIONS_INIT;
    const char *hname = NULL, *hvalue = NULL, *rule = NULL;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "delay") == 0) {
            fg_parse_fault_delay(b, p, x, &o);
        } else if (strcmp(k, "abort") == 0) {
            fg_parse_fault_abort(b, p, x, &o);
        } else if (strcmp(k, "header") == 0) {
            if (fg_expect_object(b, p, x) != 0)
                continue;
            char q[PATH_CAP];
            const char *hk;
            json_t *hx;
            json_object_foreach(x, hk, hx) {
                KEY(q, p, hk);
                if (strcmp(hk, "name") == 0) {
                    if (fg_get_string(b, q, hx, &hname) == 0 &&
                        (hname[0] == '\0' || !fg__is_token(hname, strlen(hname))))
                        fg_err(b, q, "must be a header name (an HTTP token)");
                } else if (strcmp(hk, "value") == 0) {
                    (void)fg_get_string(b, q, hx, &hvalue);
                } else {
                    fg_unknown_key(b, p, hk, "name, value");
                }
            }
            if (hname == NULL && json_object_get(x, "name") == NULL)
                fg_err(b, KEY(p, path, "header.name"), "required");
            KEY(p, path, k);
        } else if (strcmp(k, "when") == 0) {
            (void)fg_get_string(b, p, x, &rule);
        } else if (strcmp(k, "seed") == 0) {
            (void)fg_get_uint(b, p, x, 0, UINT64_MAX, &o.seed);
        } else if (strcmp(k, "shadow") == 0) {
            (void)fg_get_bool(b, p, x, &o.shadow);
        } else {
            fg_unknown_key(b, path, k, FAULT_KEYS);
        }
    }
    if (fg_nerrs(b) == before && o.delay_percent == 0 && o.abort_percent == 0 &&
        json_object_get(v, "delay") == NULL && json_object_get(v, "abort") == NULL)
        fg_err(b, path, "needs \"delay\" or \"abort\"");
    fg_expr *when = NULL;
    if (rule != NULL) { /* even after other errors: report this one too */
        fg_parse_error pe;
        memset(&pe, 0, sizeof(pe));
        int rc = fg_expr_compile(rule, strlen(rule), &when, &pe);
        if (rc == FG_ENOMEM)
            b->oom = 1;
        else if (rc != 0)
            fg_err(b, KEY(p, path, "when"), "at %zu: %s", pe.column, pe.message);
    }
    if (fg_nerrs(b) != before || b->oom) {
        fg_expr_free(when);
        return;
    }
    struct fg_comp *c = fg_comp_new(d->name, FG_COMP_FAULT);
    if (c == NULL) {
        fg_expr_free(when);
        b->oom = 1;
        return;
    }
    c->fopts = o;
    c->fopts.when = when; /* owned by the component from here */
    c->fopts.header = hname ? fg__strndup(hname, strlen(hname)) : NULL;
    c->fopts.header_value = hvalue ? fg__strndup(hvalue, strlen(hvalue)) : NULL;
    if ((hname != NULL && c->fopts.header == NULL) ||
        (hvalue != NULL && c->fopts.header_value == NULL)) {
        b->oom = 1;
        fg_comp_unref(c);
        return;
    }
    /* A trial stage: the options fg_stage_fault refuses are reported here. */
    fg_stage *trial = NULL;
    int rc = fg_stage_fault(&c->fopts, d->name, &trial);
    fg_stage_unref(trial);
    fg_def_made(b, path, d, c, rc, "");
}

static void fg_parse_defs(struct fg_build *b, const char *section, const json_t *v,
                          enum fg_section sect) {
    char p[PATH_CAP];
    if (fg_expect_object(b, section, v) != 0)
        return;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        struct fg_def *d = &b->defs[b->ndefs++];
        memset(d, 0, sizeof(*d));
        d->name = (char *)k;
        d->sect = sect;
        KEY(p, section, k);
        if (k[0] == '\0' || strlen(k) > FG_CONFIG_NAME_MAX) {
            fg_err(b, p, "a name must have 1 to %d bytes", FG_CONFIG_NAME_MAX);
            continue;
        }
        if (sect == FG_SEC_BREAKERS)
            fg_parse_breaker(b, p, x, d);
        else if (sect == FG_SEC_FAULTS)
            fg_parse_fault(b, p, x, d);
        else if (sect == FG_SEC_BULKHEADS)
            fg_parse_bulkhead(b, p, x, d);
        else if (sect == FG_SEC_BUDGETS)
            fg_parse_budget(b, p, x, d);
        else if (sect == FG_SEC_ADAPTIVE)
            fg_parse_adaptive(b, p, x, d);
        else
            fg_parse_limiter(b, p, x, d);
    }
}

/* ---- trace ------------------------------------------------------------------------------ */

static int fg_parse_sampler(struct fg_build *b, const char *path, const json_t *v,
                            fg_sampler *s, int allow_parent) {
    char p[PATH_CAP];
    const char *str = json_string_value(v);
    if (str != NULL && strcmp(str, "always") == 0) {
        *s = (fg_sampler){FG_SAMPLER_ALWAYS_ON, 1.0, FG_SAMPLER_ALWAYS_ON};
        return 0;
    }
    if (str != NULL && strcmp(str, "never") == 0) {
        *s = (fg_sampler){FG_SAMPLER_ALWAYS_OFF, 0.0, FG_SAMPLER_ALWAYS_ON};
        return 0;
    }
    if (allow_parent && str != NULL && strcmp(str, "parent") == 0) {
        *s = (fg_sampler){FG_SAMPLER_PARENT_BASED, 1.0, FG_SAMPLER_ALWAYS_ON};
        return 0;
    }
    if (json_is_object(v) && json_object_size(v) == 1 && json_object_get(v, "ratio")) {
        double r;
        if (fg_get_number(b, KEY(p, path, "ratio"), json_object_get(v, "ratio"), 0, 1, &r) !=
            0)
            return -1;
        *s = (fg_sampler){FG_SAMPLER_RATIO, r, FG_SAMPLER_ALWAYS_ON};
        return 0;
    }
    if (allow_parent && json_is_object(v) && json_object_size(v) == 1 &&
        json_object_get(v, "parent")) {
        fg_sampler root;
        if (fg_parse_sampler(b, KEY(p, path, "parent"), json_object_get(v, "parent"), &root,
                             0) != 0)
            return -1;
        *s = (fg_sampler){FG_SAMPLER_PARENT_BASED, root.ratio, root.kind};
        return 0;
    }
    fg_err(b, path,
           allow_parent ? "must be \"always\", \"never\", \"parent\", {\"ratio\": 0.1} or "
                          "{\"parent\": {\"ratio\": 0.1}}"
                        : "must be \"always\", \"never\" or {\"ratio\": 0.1}");
    return -1;
}

static void fg_parse_trace(struct fg_build *b, const json_t *v) {
    char p[PATH_CAP];
    if (fg_expect_object(b, "trace", v) != 0)
        return;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, "trace", k);
        if (strcmp(k, "sampler") == 0) {
            (void)fg_parse_sampler(b, p, x, &b->trace.sampler, 1);
        } else if (strcmp(k, "span_name") == 0) {
            const char *s;
            if (fg_get_string(b, p, x, &s) == 0) {
                if (strlen(s) > FG_PATH_MAX)
                    fg_err(b, p, "must be at most %d bytes", FG_PATH_MAX);
                else
                    b->trace.span_name = s;
            }
        } else {
            fg_unknown_key(b, "trace", k, "sampler, span_name");
        }
    }
}

/* ---- stages ----------------------------------------------------------------------------- */

static struct fg_def *fg_find_def(struct fg_build *b, const char *name, enum fg_section sect) {
    for (size_t i = 0; i < b->ndefs; i++)
        if (b->defs[i].sect == sect && strcmp(b->defs[i].name, name) == 0)
            return &b->defs[i];
    return NULL;
}

/* One STAGE: *out gets a stage, or NULL when there was an error (reported)
 * or nothing to make (a custom stage while checking without a registry). */
#define TIMEOUT_KEYS "after, header, max_inbound"

/* {"timeout": "250ms"} or {"timeout": {"after": d, "header": h, "max_inbound": d}}. */
static void fg_make_timeout(struct fg_build *b, const char *path, const json_t *v,
                            fg_stage **out) {
    char p[PATH_CAP], q[PATH_CAP];
    KEY(p, path, "timeout");
    if (json_object_size(v) != 1) {
        fg_err(b, path, "a timeout stage has one key: \"timeout\"");
        return;
    }
    const json_t *t = json_object_get(v, "timeout");
    fg_timeout_options o = FG_TIMEOUT_OPTIONS_INIT;
    size_t before = fg_nerrs(b);
    if (json_is_string(t)) {
        (void)fg_get_duration(b, p, t, &o.timeout_ns);
    } else if (fg_expect_object(b, p, t) == 0) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)t, k, x) {
            KEY(q, p, k);
            if (strcmp(k, "after") == 0) {
                (void)fg_get_duration(b, q, x, &o.timeout_ns);
            } else if (strcmp(k, "header") == 0) {
                if (fg_get_string(b, q, x, &o.header) == 0 &&
                    (o.header[0] == '\0' || !fg__is_token(o.header, strlen(o.header))))
                    fg_err(b, q, "must be a header name (an HTTP token)");
            } else if (strcmp(k, "max_inbound") == 0) {
                (void)fg_get_duration(b, q, x, &o.max_inbound_ns);
            } else {
                fg_unknown_key(b, p, k, TIMEOUT_KEYS);
            }
        }
    }
    if (fg_nerrs(b) != before)
        return;
    if (o.timeout_ns == 0 && o.header == NULL) {
        fg_err(b, p, "needs a duration > 0 (\"after\") or an inbound \"header\"");
        return;
    }
    int rc = fg_stage_timeout(&o, "timeout", out);
    if (rc == FG_ENOMEM)
        b->oom = 1;
    else if (rc != 0)
        fg_err(b, p, "cannot make the stage: %s", fg_strerror(rc));
}

static void fg_make_stage(struct fg_build *b, const char *path, const json_t *v,
                          fg_stage **out) {
    char p[PATH_CAP];
    *out = NULL;
    if (json_is_object(v) && json_object_get(v, "timeout") != NULL) {
        fg_make_timeout(b, path, v, out);
        return;
    }
    if (json_is_object(v) && json_object_get(v, "retry") != NULL) {
        fg_make_retry(b, path, v, out);
        return;
    }
    if (json_is_string(v) && strcmp(json_string_value(v), "trace") == 0) {
        int rc = fg_stage_trace(&b->trace, out);
        if (rc == FG_ENOMEM)
            b->oom = 1;
        else if (rc != 0)
            fg_err(b, path, "cannot make the trace stage: %s", fg_strerror(rc));
        return;
    }
    const json_t *lim = json_object_get(v, "limiter");
    const json_t *brk = json_object_get(v, "breaker");
    const json_t *flt = json_object_get(v, "fault");
    const json_t *bhd = json_object_get(v, "bulkhead");
    const json_t *adp = json_object_get(v, "adaptive");
    const json_t *cus = json_object_get(v, "custom");
    if (!json_is_object(v) || (lim != NULL) + (brk != NULL) + (flt != NULL) + (bhd != NULL) +
                                      (adp != NULL) + (cus != NULL) !=
                                  1) {
        fg_err(b, path,
               "must be \"trace\", {\"limiter\": name}, {\"breaker\": name}, "
               "{\"fault\": name}, {\"bulkhead\": name}, {\"adaptive\": name}, "
               "{\"timeout\": duration}, {\"retry\": {...}} or {\"custom\": name, "
               "\"options\": {...}}");
        return;
    }
    int bad = 0;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        if (strcmp(k, "limiter") == 0 || strcmp(k, "breaker") == 0 ||
            strcmp(k, "fault") == 0 || strcmp(k, "bulkhead") == 0 ||
            strcmp(k, "adaptive") == 0 || strcmp(k, "custom") == 0)
            continue;
        if (cus != NULL && strcmp(k, "options") == 0) {
            bad |= fg_expect_object(b, KEY(p, path, k), x);
            continue;
        }
        fg_unknown_key(b, path, k,
                       cus   ? "custom, options"
                       : lim ? "limiter"
                       : brk ? "breaker"
                       : bhd ? "bulkhead"
                       : adp ? "adaptive"
                             : "fault");
        bad = -1;
    }
    const char *name;
    const char *kind = lim   ? "limiter"
                       : brk ? "breaker"
                       : flt ? "fault"
                       : bhd ? "bulkhead"
                       : adp ? "adaptive"
                             : "custom";
    const json_t *ref = lim ? lim : brk ? brk : flt ? flt : bhd ? bhd : adp ? adp : cus;
    if (fg_get_name(b, KEY(p, path, kind), ref, &name) != 0 || bad)
        return;
    int rc = 0;
    if (cus != NULL) {
        const struct fg_reg_stage *f = fg_reg_find_stage(b->registry, name);
        if (b->check_only)
            return;
        if (f == NULL) {
            fg_err(b, p, "unknown stage kind \"%s\" (not registered)", name);
            return;
        }
        const json_t *opts = json_object_get(v, "options");
        char *text = opts ? json_dumps(opts, JSON_COMPACT) : NULL;
        if (opts != NULL && text == NULL) {
            b->oom = 1;
            return;
        }
        char why[FG_CFG_WHY_MAX] = "";
        rc = f->fn(text ? text : "{}", text ? strlen(text) : 2, f->arg, out, why, sizeof(why));
        free(text);
        if (rc == 0 && *out == NULL)
            rc = FG_EINVAL;
        if (rc != 0) {
            if (*out != NULL)
                fg_stage_unref(*out);
            *out = NULL;
            if (rc == FG_ENOMEM)
                b->oom = 1;
            else
                fg_err(b, path, "%s", why[0] ? why : fg_strerror(rc));
        }
        return;
    }
    struct fg_def *d = fg_find_def(b, name,
                                   brk   ? FG_SEC_BREAKERS
                                   : flt ? FG_SEC_FAULTS
                                   : bhd ? FG_SEC_BULKHEADS
                                   : adp ? FG_SEC_ADAPTIVE
                                         : FG_SEC_LIMITERS);
    if (d == NULL) {
        fg_err(b, p, "unknown %s \"%s\"", kind, name);
        return;
    }
    if (!d->ok)
        return; /* its definition's errors are reported there */
    if (brk != NULL) {
        rc = fg_stage_breaker(d->comp->breaker, NULL, NULL, name, out);
    } else if (flt != NULL) {
        rc = fg_stage_fault(&d->comp->fopts, name, out);
    } else if (adp != NULL) {
        rc = fg_stage_adaptive(d->comp->adaptive, name, out);
    } else if (bhd != NULL) {
        fg_bulkhead_stage_options so = FG_BULKHEAD_STAGE_OPTIONS_INIT;
        so.shadow = d->shadow;
        rc = fg_stage_bulkhead(d->comp->bulkhead, &so, name, out);
    } else {
        fg_limit_stage_options so = d->sopts;
        so.name = name;
        /* A cluster limiter while checking has its stand-in instead. */
        rc = d->comp->cluster != NULL ? fg_stage_limit_cluster(d->comp->cluster, &so, out)
             : d->comp->keyed != NULL ? fg_stage_limit_keyed(d->comp->keyed, &so, out)
                                      : fg_stage_limit(d->comp->limiter, &so, out);
    }
    if (rc == FG_ENOMEM)
        b->oom = 1;
    else if (rc != 0)
        fg_err(b, path, "cannot make the stage: %s", fg_strerror(rc));
}

/* A stage list: *stages gets every stage made (references the caller owns). */
static void fg_make_stages(struct fg_build *b, const char *path, const json_t *v,
                           fg_stage **stages, size_t *n) {
    char p[PATH_CAP];
    *n = 0;
    if (fg_expect_array(b, path, v) != 0)
        return;
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
        if (*n == FG_CHAIN_MAX_STAGES) {
            fg_err(b, path, "more than %d stages", FG_CHAIN_MAX_STAGES);
            return;
        }
        fg_stage *s = NULL;
        fg_make_stage(b, IDX(p, path, i), x, &s);
        if (s != NULL)
            stages[(*n)++] = s;
    }
}

static void fg_unref_stages(fg_stage **stages, size_t n) {
    for (size_t i = 0; i < n; i++)
        fg_stage_unref(stages[i]);
}

/* ---- routes -------------------------------------------------------------------------------
 */

static int fg_placeholder_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

/* A handler by name; check-only builds use a placeholder. */
/* The fallback table of the build, made on first use. */
static struct fg_fb_table *fg_fb_table(struct fg_build *b) {
    if (b->fallbacks == NULL)
        b->fallbacks = fg__calloc(1, sizeof(*b->fallbacks));
    if (b->fallbacks == NULL)
        b->oom = 1;
    return b->fallbacks;
}

/* A fallback name: the registry's function (none while checking only).
 * Returns 0 with *fn set (NULL when checking only), or -1 (reported). */
static int fg_fallback_get(struct fg_build *b, const char *path, const json_t *v,
                           fg_fallback_fn *fn, void **arg) {
    const char *name;
    *fn = NULL;
    *arg = NULL;
    if (fg_get_name(b, path, v, &name) != 0)
        return -1;
    if (b->check_only)
        return 0;
    const struct fg_reg_fallback *f = fg_reg_find_fallback(b->registry, name);
    if (f == NULL) {
        fg_err(b, path, "unknown fallback \"%s\" (not registered)", name);
        return -1;
    }
    *fn = f->fn;
    *arg = f->arg;
    return 0;
}

/* A route's "fallback": an entry of the table, matched to the route's name
 * pointer once the router is made. */
static void fg_route_fallback(struct fg_build *b, const char *path, const json_t *v,
                              const char *route) {
    fg_fallback_fn fn;
    void *arg;
    if (fg_fallback_get(b, path, v, &fn, &arg) != 0 || fn == NULL || route == NULL)
        return;
    struct fg_fb_table *t = fg_fb_table(b);
    struct fg_fb_entry *g = t ? fg__malloc((t->n + 1) * sizeof(*g)) : NULL;
    char *copy = fg__strndup(route, strlen(route));
    if (g == NULL || copy == NULL) {
        fg__free(g);
        fg__free(copy);
        b->oom = 1;
        return;
    }
    if (t->n)
        memcpy(g, t->v, t->n * sizeof(*g));
    fg__free(t->v);
    t->v = g;
    t->v[t->n++] = (struct fg_fb_entry){copy, NULL, fn, arg};
}

static int fg_handler(struct fg_build *b, const char *path, const json_t *v, fg_handler_fn *fn,
                      void **arg) {
    const char *name;
    if (fg_get_name(b, path, v, &name) != 0)
        return -1;
    if (b->check_only) {
        *fn = fg_placeholder_handler;
        *arg = NULL;
        return 0;
    }
    const struct fg_reg_handler *h = fg_reg_find_handler(b->registry, name);
    if (h == NULL) {
        fg_err(b, path, "unknown handler \"%s\" (not registered)", name);
        return -1;
    }
    *fn = h->fn;
    *arg = h->arg;
    return 0;
}

struct fg_route_work {
    fg_route_spec spec;
    fg_value_match matches[FG_ROUTE_MAX_MATCHES];
    fg_route_target targets[FG_ROUTE_MAX_TARGETS];
    fg_stage *stages[FG_ROUTE_MAX_TARGETS][FG_CHAIN_MAX_STAGES];
    char methods[FG_ROUTE_MAX_METHODS * (FG_METHOD_MAX + 1) + 1];
};

static const struct {
    const char *key;
    fg_value_source source;
} fg_sources[] = {{"headers", FG_SOURCE_HEADER},
                  {"meta", FG_SOURCE_META},
                  {"query", FG_SOURCE_QUERY},
                  {"baggage", FG_SOURCE_BAGGAGE},
                  {"cookies", FG_SOURCE_COOKIE}};

static void fg_parse_predicates(struct fg_build *b, const char *path, const json_t *v,
                                fg_value_source source, struct fg_route_work *w) {
    char p[PATH_CAP], q[PATH_CAP];
    static const struct {
        const char *key;
        fg_match_op op;
    } ops[] = {{"present", FG_MATCH_PRESENT}, {"exact", FG_MATCH_EXACT},
               {"prefix", FG_MATCH_PREFIX},   {"lt", FG_MATCH_LT},
               {"le", FG_MATCH_LE},           {"gt", FG_MATCH_GT},
               {"ge", FG_MATCH_GE},           {"eq", FG_MATCH_EQ}};
    if (fg_expect_object(b, path, v) != 0)
        return;
    const char *name;
    json_t *pred;
    json_object_foreach((json_t *)v, name, pred) {
        KEY(p, path, name);
        if (fg_expect_object(b, p, pred) != 0)
            continue;
        if (w->spec.nmatches == FG_ROUTE_MAX_MATCHES) {
            fg_err(b, p, "more than %d predicates in one route", FG_ROUTE_MAX_MATCHES);
            return;
        }
        fg_value_match m = {source, name, FG_MATCH_PRESENT, NULL, 0, 0};
        int nops = 0, bad = 0, present = 1;
        const char *k;
        json_t *x;
        json_object_foreach(pred, k, x) {
            KEY(q, p, k);
            size_t o;
            for (o = 0; o < sizeof(ops) / sizeof(ops[0]); o++)
                if (strcmp(k, ops[o].key) == 0)
                    break;
            if (strcmp(k, "not") == 0) {
                bad |= fg_get_bool(b, q, x, &m.invert);
            } else if (o == sizeof(ops) / sizeof(ops[0])) {
                fg_unknown_key(b, p, k, "present, exact, prefix, lt, le, gt, ge, eq, not");
                bad = -1;
            } else {
                nops++;
                m.op = ops[o].op;
                if (m.op == FG_MATCH_PRESENT)
                    bad |= fg_get_bool(b, q, x, &present);
                else if (m.op == FG_MATCH_EXACT || m.op == FG_MATCH_PREFIX)
                    bad |= fg_get_string(b, q, x, &m.value);
                else
                    bad |= fg_get_number(b, q, x, -1e308, 1e308, &m.number);
            }
        }
        if (nops != 1) {
            fg_err(b, p,
                   "must have exactly one of: present, exact, prefix, lt, le, gt, ge, eq");
            bad = -1;
        }
        if (bad)
            continue;
        if (m.op == FG_MATCH_PRESENT && !present)
            m.invert = !m.invert;
        w->matches[w->spec.nmatches++] = m;
    }
}

static void fg_parse_match(struct fg_build *b, const char *path, const json_t *v,
                           struct fg_route_work *w) {
    char p[PATH_CAP], q[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        size_t s;
        for (s = 0; s < sizeof(fg_sources) / sizeof(fg_sources[0]); s++)
            if (strcmp(k, fg_sources[s].key) == 0)
                break;
        if (s < sizeof(fg_sources) / sizeof(fg_sources[0])) {
            fg_parse_predicates(b, p, x, fg_sources[s].source, w);
        } else if (strcmp(k, "path") == 0) {
            const char *kinds[] = {"exact", "prefix", "pattern"};
            const fg_path_kind pk[] = {FG_PATH_EXACT, FG_PATH_PREFIX, FG_PATH_PATTERN};
            const char *pk_key = json_is_object(x) && json_object_size(x) == 1
                                     ? json_object_iter_key(json_object_iter(x))
                                     : NULL;
            size_t i = 0;
            while (pk_key != NULL && i < 3 && strcmp(pk_key, kinds[i]) != 0)
                i++;
            if (pk_key == NULL || i == 3) {
                fg_err(b, p,
                       "must be {\"exact\": path}, {\"prefix\": path} or {\"pattern\": path}");
                continue;
            }
            if (fg_get_string(b, KEY(q, p, pk_key), json_object_get(x, pk_key),
                              &w->spec.path) == 0)
                w->spec.path_kind = pk[i];
        } else if (strcmp(k, "methods") == 0) {
            if (fg_expect_array(b, p, x) != 0)
                continue;
            if (json_array_size(x) > FG_ROUTE_MAX_METHODS) {
                fg_err(b, p, "more than %d methods", FG_ROUTE_MAX_METHODS);
                continue;
            }
            size_t i, len = 0;
            json_t *m;
            w->methods[0] = '\0';
            json_array_foreach(x, i, m) {
                const char *s;
                if (fg_get_string(b, IDX(q, p, i), m, &s) != 0)
                    continue;
                if (s[0] == '\0' || strlen(s) > FG_METHOD_MAX || strchr(s, ',') != NULL) {
                    fg_err(b, q, "must be an HTTP method such as \"GET\"");
                    continue;
                }
                len += (size_t)snprintf(w->methods + len, sizeof(w->methods) - len, "%s%s",
                                        len ? "," : "", s);
            }
            w->spec.methods = w->methods;
        } else if (strcmp(k, "when") == 0) {
            const char *s;
            if (fg_get_string(b, p, x, &s) != 0)
                continue;
            fg_expr *e = NULL;
            fg_parse_error pe;
            memset(&pe, 0, sizeof(pe));
            int rc = fg_expr_compile(s, strlen(s), &e, &pe);
            fg_expr_free(e);
            if (rc == FG_ENOMEM)
                b->oom = 1;
            else if (rc != 0 && pe.column > 0)
                fg_err(b, p, "at %zu: %s", pe.column, pe.message);
            else if (rc != 0)
                fg_err(b, p, "%s", pe.message[0] ? pe.message : fg_strerror(rc));
            else
                w->spec.when = s;
        } else {
            fg_unknown_key(b, path, k,
                           "path, methods, headers, meta, query, baggage, cookies, when");
        }
    }
}

static void fg_parse_split(struct fg_build *b, const char *path, const json_t *v,
                           struct fg_route_work *w) {
    char p[PATH_CAP], q[PATH_CAP], r[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    int have_targets = 0;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "key") == 0) {
            static const struct {
                const char *key;
                fg_value_source source;
            } keys[] = {{"header", FG_SOURCE_HEADER},
                        {"meta", FG_SOURCE_META},
                        {"query", FG_SOURCE_QUERY},
                        {"baggage", FG_SOURCE_BAGGAGE},
                        {"cookie", FG_SOURCE_COOKIE}};
            const char *kk = json_is_object(x) && json_object_size(x) == 1
                                 ? json_object_iter_key(json_object_iter(x))
                                 : NULL;
            size_t i = 0;
            while (kk != NULL && i < 5 && strcmp(kk, keys[i].key) != 0)
                i++;
            if (kk == NULL || i == 5) {
                fg_err(b, p,
                       "must be one of {\"header\": n}, {\"meta\": n}, {\"query\": n}, "
                       "{\"baggage\": n}, {\"cookie\": n}");
                continue;
            }
            if (fg_get_name(b, KEY(q, p, kk), json_object_get(x, kk), &w->spec.split_key) == 0)
                w->spec.split_source = keys[i].source;
        } else if (strcmp(k, "salt") == 0) {
            (void)fg_get_string(b, p, x, &w->spec.split_salt);
        } else if (strcmp(k, "targets") == 0) {
            have_targets = 1;
            if (fg_expect_array(b, p, x) != 0)
                continue;
            if (json_array_size(x) == 0 || json_array_size(x) > FG_ROUTE_MAX_TARGETS) {
                fg_err(b, p, "must have 1 to %d targets", FG_ROUTE_MAX_TARGETS);
                continue;
            }
            uint64_t sum = 0;
            int weights_ok = 1;
            size_t i;
            json_t *t;
            json_array_foreach(x, i, t) {
                IDX(q, p, i);
                if (fg_expect_object(b, q, t) != 0) {
                    weights_ok = 0;
                    continue;
                }
                fg_route_target *tg = &w->targets[w->spec.ntargets];
                memset(tg, 0, sizeof(*tg));
                int have_name = 0, have_handler = 0, have_weight = 0;
                const char *tk;
                json_t *tv;
                json_object_foreach(t, tk, tv) {
                    KEY(r, q, tk);
                    if (strcmp(tk, "name") == 0) {
                        have_name = 1;
                        (void)fg_get_name(b, r, tv, &tg->name);
                    } else if (strcmp(tk, "weight") == 0) {
                        uint64_t wt;
                        have_weight = 1;
                        if (fg_get_uint(b, r, tv, 0, FG_SPLIT_SLOTS, &wt) == 0) {
                            tg->weight = (uint32_t)wt;
                            sum += wt;
                        } else {
                            weights_ok = 0;
                        }
                    } else if (strcmp(tk, "handler") == 0) {
                        have_handler = 1;
                        (void)fg_handler(b, r, tv, &tg->handler, &tg->arg);
                    } else if (strcmp(tk, "stages") == 0) {
                        fg_unref_stages(tg->stages, tg->nstages);
                        fg_make_stages(b, r, tv, w->stages[w->spec.ntargets], &tg->nstages);
                        tg->stages = w->stages[w->spec.ntargets];
                    } else {
                        fg_unknown_key(b, q, tk, "name, weight, handler, stages");
                    }
                }
                if (!have_name) {
                    fg_err(b, KEY(r, q, "name"), "required");
                }
                if (!have_weight) {
                    fg_err(b, KEY(r, q, "weight"), "required");
                    weights_ok = 0;
                }
                if (!have_handler) {
                    fg_err(b, KEY(r, q, "handler"), "required");
                }
                /* kept even when bad, so its stages are released with the route */
                w->spec.ntargets++;
            }
            if (weights_ok && sum > FG_SPLIT_SLOTS)
                fg_err(b, p, "weights add up to %llu, more than %d", (unsigned long long)sum,
                       FG_SPLIT_SLOTS);
            else if (weights_ok && sum == 0)
                fg_err(b, p, "weights are all 0");
        } else {
            fg_unknown_key(b, path, k, "key, salt, targets");
        }
    }
    if (!have_targets)
        fg_err(b, KEY(p, path, "targets"), "required");
}

/* Where a router error belongs in the route, from what fg_router_add says. */
static const char *fg_router_err_path(char *buf, size_t cap, const char *route,
                                      const char *msg) {
    if (strstr(msg, "path") != NULL)
        return fg_key_path(buf, cap, route, "match.path");
    if (strstr(msg, "method") != NULL)
        return fg_key_path(buf, cap, route, "match.methods");
    if (strstr(msg, "split") != NULL || strstr(msg, "target") != NULL)
        return fg_key_path(buf, cap, route, "split");
    return fg_key_path(buf, cap, route, "");
}

#define SLO_KEYS "latency, latency_target, error_rate, window"

/* A route's "slo": kept in b->slos for the commit (name NULL: the route has
 * none, which is an error of its own). */
static void fg_parse_slo(struct fg_build *b, const char *path, const json_t *v,
                         const char *name) {
    char p[PATH_CAP];
    if (fg_expect_object(b, path, v) != 0)
        return;
    size_t before = fg_nerrs(b);
    fg_slo_options o = FG_SLO_OPTIONS_INIT;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "latency") == 0) {
            if (fg_get_duration(b, p, x, &o.latency_ns) == 0 && o.latency_ns == 0)
                fg_err(b, p, "must be > 0");
        } else if (strcmp(k, "latency_target") == 0) {
            if (fg_get_number(b, p, x, 0, 1, &o.latency_target) == 0 &&
                (o.latency_target <= 0 || o.latency_target >= 1))
                fg_err(b, p, "must be between 0 and 1, exclusive (0.99: 99%% within latency)");
        } else if (strcmp(k, "error_rate") == 0) {
            if (fg_get_number(b, p, x, 0, 1, &o.error_rate) == 0 &&
                (o.error_rate <= 0 || o.error_rate >= 1))
                fg_err(b, p, "must be between 0 and 1, exclusive (0.001: 0.1%% errors)");
        } else if (strcmp(k, "window") == 0) {
            if (fg_get_duration(b, p, x, &o.window_ns) == 0 && o.window_ns < 60)
                fg_err(b, p, "must be at least 60ns");
        } else {
            fg_unknown_key(b, path, k, SLO_KEYS);
        }
    }
    if (fg_nerrs(b) == before && o.latency_ns == 0 && o.error_rate == 0)
        fg_err(b, path, "needs \"latency\" or \"error_rate\"");
    if (fg_nerrs(b) != before || b->check_only || name == NULL)
        return;
    struct fg_route_slo *g = fg__malloc((b->nslos + 1) * sizeof(*g));
    char *copy = name ? fg__strndup(name, strlen(name)) : NULL;
    if (g == NULL || (name != NULL && copy == NULL)) {
        fg__free(g);
        fg__free(copy);
        b->oom = 1;
        return;
    }
    if (b->nslos)
        memcpy(g, b->slos, b->nslos * sizeof(*g));
    fg__free(b->slos);
    b->slos = g;
    b->slos[b->nslos].route = copy;
    b->slos[b->nslos].o = o;
    b->nslos++;
}

static void fg_parse_route(struct fg_build *b, const char *path, const json_t *v,
                           struct fg_route_work *w, const json_t *routes, size_t index) {
    (void)routes; /* duplicates are found through b->route_names */
    char p[PATH_CAP];
    memset(&w->spec, 0, sizeof(w->spec));
    fg_route_spec init = FG_ROUTE_SPEC_INIT;
    w->spec = init;
    w->spec.matches = w->matches;
    w->spec.targets = w->targets;
    if (fg_expect_object(b, path, v) != 0)
        return;
    size_t before = fg_nerrs(b);
    int have_name = 0, have_handler = 0, have_split = 0, have_stages = 0;
    const json_t *slo = NULL, *fallback = NULL;
    fg_route_target *single = &w->targets[0];
    memset(single, 0, sizeof(*single));
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        KEY(p, path, k);
        if (strcmp(k, "name") == 0) {
            have_name = 1;
            if (fg_get_name(b, p, x, &w->spec.name) != 0)
                continue;
            /* A set of the names seen so far (a jansson object: hashed), so
             * n routes cost O(n), not n^2/2 comparisons. */
            if (b->route_names == NULL)
                b->route_names = json_object();
            json_t *seen =
                b->route_names ? json_object_get(b->route_names, w->spec.name) : NULL;
            if (seen != NULL)
                fg_err(b, p, "duplicate route name \"%s\" (also routes[%zu].name)",
                       w->spec.name, (size_t)json_integer_value(seen));
            else if (b->route_names == NULL ||
                     json_object_set_new(b->route_names, w->spec.name,
                                         json_integer((json_int_t)index)) != 0)
                b->oom = 1;
        } else if (strcmp(k, "match") == 0) {
            fg_parse_match(b, p, x, w);
        } else if (strcmp(k, "stages") == 0) {
            have_stages = 1;
            if (!have_split) {
                fg_unref_stages(w->stages[0], single->nstages);
                fg_make_stages(b, p, x, w->stages[0], &single->nstages);
                single->stages = w->stages[0];
            } else {
                fg_err(b, p, "not with \"split\" (give each target its stages)");
            }
        } else if (strcmp(k, "handler") == 0) {
            have_handler = 1;
            (void)fg_handler(b, p, x, &single->handler, &single->arg);
        } else if (strcmp(k, "split") == 0) {
            have_split = 1;
            if (have_stages) {
                fg_err(b, p, "not with \"stages\" (give each target its stages)");
                continue;
            }
            fg_parse_split(b, p, x, w);
        } else if (strcmp(k, "slo") == 0) {
            slo = x; /* once the name is known */
        } else if (strcmp(k, "fallback") == 0) {
            fallback = x; /* once the name is known */
        } else {
            fg_unknown_key(b, path, k, "name, match, stages, handler, split, slo, fallback");
        }
    }
    if (!have_name)
        fg_err(b, KEY(p, path, "name"), "required");
    if (slo != NULL)
        fg_parse_slo(b, KEY(p, path, "slo"), slo, w->spec.name);
    if (fallback != NULL)
        fg_route_fallback(b, KEY(p, path, "fallback"), fallback, w->spec.name);
    if (have_handler && have_split)
        fg_err(b, path, "has both \"handler\" and \"split\": give one");
    else if (!have_handler && !have_split)
        fg_err(b, path, "needs \"handler\" or \"split\"");
    else if (have_handler)
        w->spec.ntargets = 1;
    if (have_handler && have_split && w->spec.ntargets == 0)
        w->spec.ntargets = 1; /* so single's stages are released */
    if (fg_nerrs(b) != before || b->oom || b->router == NULL) {
        for (size_t t = 0; t < w->spec.ntargets || (t == 0 && single->nstages); t++)
            fg_unref_stages(w->targets[t].stages, w->targets[t].nstages);
        return;
    }
    fg_parse_error pe;
    memset(&pe, 0, sizeof(pe));
    int rc = fg_router_add(b->router, &w->spec, &pe); /* takes the stages */
    if (rc == FG_ENOMEM)
        b->oom = 1;
    else if (rc != 0 && pe.column > 0)
        fg_err(b, KEY(p, path, "match.when"), "at %zu: %s", pe.column, pe.message);
    else if (rc != 0)
        fg_err(b, fg_router_err_path(p, sizeof(p), path, pe.message), "%s", pe.message);
    else
        b->nroutes++;
}

/* ---- the document
 * ---------------------------------------------------------------------------- */

static void fg_make_router(struct fg_build *b, const json_t *routes, const json_t *handler) {
    char p[PATH_CAP];
    if (routes == NULL && handler == NULL)
        return;
    int rc = fg_router_new(&b->router);
    if (rc != 0) {
        b->oom = 1;
        return;
    }
    if (routes != NULL) {
        if (fg_expect_array(b, "routes", routes) != 0)
            return;
        if (json_array_size(routes) > FG_ROUTER_MAX_ROUTES) {
            fg_err(b, "routes", "more than %d routes", FG_ROUTER_MAX_ROUTES);
            return;
        }
        struct fg_route_work *w = fg__malloc(sizeof(*w));
        if (w == NULL) {
            b->oom = 1;
            return;
        }
        size_t i;
        json_t *r;
        json_array_foreach(routes, i, r) {
            if (b->oom)
                break;
            fg_parse_route(b, IDX(p, "routes", i), r, w, routes, i);
        }
        fg__free(w);
        return;
    }
    /* "handler": one route that takes every request */
    fg_route_target t = {NULL, 0, NULL, NULL, NULL, 0};
    if (fg_handler(b, "handler", handler, &t.handler, &t.arg) != 0)
        return;
    fg_route_spec spec = FG_ROUTE_SPEC_INIT;
    spec.name = "default";
    spec.targets = &t;
    spec.ntargets = 1;
    rc = fg_router_add(b->router, &spec, NULL);
    if (rc != 0)
        b->oom = 1;
}

/* The chain stages and the router. */
static void fg_make_chain(struct fg_build *b, const json_t *chain, int chain_section,
                          const json_t *routes, int routes_section, const json_t *handler,
                          int handler_section) {
    fg_stage *stages[FG_CHAIN_MAX_STAGES];
    size_t n = 0;
    b->section = chain_section;
    if (chain != NULL)
        fg_make_stages(b, "chain", chain, stages, &n);
    b->section = routes ? routes_section : handler_section;
    fg_make_router(b, routes, handler);
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.name = "config";
    co.clock = b->clock;
    if (b->fallbacks != NULL && fg_nerrs(b) == 0 && !b->oom) {
        /* Each route's entry gets the pointer its requests carry. */
        struct fg_fb_table *t = b->fallbacks;
        for (size_t i = 0; i < fg_router_count(b->router); i++) {
            const char *name = fg_router_route_name(b->router, i);
            for (size_t j = 0; j < t->n; j++)
                if (strcmp(t->v[j].route, name) == 0)
                    t->v[j].key = name;
        }
        co.fallback = fg_fb_call;
        co.fallback_arg = t;
        co.fallback_failures = 1;
        co.fallback_arg_free = fg_fb_free;
    }
    if (fg_nerrs(b) != 0 || b->oom || fg_chain_new(&co, &b->chain) != 0) {
        fg_unref_stages(stages, n);
        if (fg_nerrs(b) == 0)
            b->oom = 1;
        return;
    }
    if (co.fallback_arg == b->fallbacks)
        b->fallbacks = NULL; /* the chain's now */
    if (b->metrics != NULL) {
        /* First: its exit sees every request's final outcome and latency. */
        fg_stage *ms = NULL;
        int rc = fg_stage_metrics(b->metrics, b->router, "main", "metrics", &ms);
        if (rc == 0)
            rc = fg_chain_use(b->chain, ms);
        if (rc == FG_ETOOMANY) {
            b->section = routes ? routes_section : handler_section;
            fg_err(b, routes ? "routes" : "handler",
                   "more routes than the metrics registry holds (%d series in all)",
                   FG_METRICS_MAX_SERIES);
        } else if (rc != 0) {
            b->oom = 1;
        }
        if (rc != 0) {
            fg_unref_stages(stages, n);
            return;
        }
    }
    for (size_t i = 0; i < n; i++) {
        int rc = fg_chain_use(b->chain, stages[i]); /* takes the stage */
        if (rc != 0) {
            b->oom = 1;
            fg_unref_stages(stages + i + 1, n - i - 1);
            return;
        }
    }
    b->routes = b->router;
    int rc = fg_router_build(b->router);
    fg_stage *rs = NULL;
    if (rc == 0) {
        rc = fg_stage_router(b->router, "router", &rs); /* takes the router */
        b->router = NULL;
    }
    if (rc == 0)
        rc = fg_chain_use(b->chain, rs);
    if (rc == FG_ETOOMANY) {
        b->section = chain_section;
        fg_err(b, "chain",
               "too many stages: the chain's stages, the router and a route's stages must "
               "total at most %d",
               FG_CTX_MAX_DEPTH);
    } else if (rc != 0) {
        b->oom = 1;
    }
}

static int fg_err_cmp(const void *a, const void *b) {
    const struct fg_err_item *x = a, *y = b;
    if (x->section != y->section)
        return x->section < y->section ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

#define TOP_KEYS                                                                              \
    "version, limiters, breakers, faults, bulkheads, retry_budgets, adaptive_limits, trace, " \
    "chain, routes, handler, fallback"

/* Compile text into b: components, chain, version. Returns 0, FG_ECONFIG
 * or FG_ENOMEM; errors are in b. */
static int fg_compile(struct fg_build *b, const char *text, size_t len) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        fg_err(b, "", "%s", jerr.text);
        if (b->nerrs > 0) {
            b->errs[b->nerrs - 1].e.line = jerr.line;
            b->errs[b->nerrs - 1].e.column = jerr.column;
        }
        return b->oom ? FG_ENOMEM : FG_ECONFIG;
    }
    int rc = FG_ECONFIG;
    if (!json_is_object(root)) {
        fg_err(b, "", "the document must be an object");
        goto out;
    }
    size_t nkeys = 0;
    const char *k;
    json_t *x;
    json_t *chain = NULL, *routes = NULL, *handler = NULL;
    int sec_chain = 0, sec_routes = 0, sec_handler = 0, have_version = 0;
    size_t ndefs = 0;
    json_object_foreach(root, k, x) {
        if ((strcmp(k, "limiters") == 0 || strcmp(k, "breakers") == 0 ||
             strcmp(k, "faults") == 0 || strcmp(k, "bulkheads") == 0 ||
             strcmp(k, "retry_budgets") == 0 || strcmp(k, "adaptive_limits") == 0) &&
            json_is_object(x))
            ndefs += json_object_size(x);
    }
    b->defs = fg__calloc(ndefs + 1, sizeof(*b->defs));
    if (b->defs == NULL) {
        b->oom = 1;
        rc = FG_ENOMEM;
        goto out;
    }
    /* First pass: the definitions, version and trace (stage references need
     * the definitions); errors are sorted back into document order by
     * their top-level key. */
    json_object_foreach(root, k, x) {
        b->section = (int)nkeys++;
        if (strcmp(k, "version") == 0) {
            const char *v;
            have_version = 1;
            if (fg_get_string(b, "version", x, &v) != 0)
                continue;
            if (strlen(v) > FG_CFG_VERSION_MAX)
                fg_err(b, "version", "must be at most %d bytes", FG_CFG_VERSION_MAX);
            else
                memcpy(b->version, v, strlen(v) + 1);
        } else if (strcmp(k, "limiters") == 0) {
            fg_parse_defs(b, "limiters", x, FG_SEC_LIMITERS);
        } else if (strcmp(k, "breakers") == 0) {
            fg_parse_defs(b, "breakers", x, FG_SEC_BREAKERS);
        } else if (strcmp(k, "faults") == 0) {
            fg_parse_defs(b, "faults", x, FG_SEC_FAULTS);
        } else if (strcmp(k, "adaptive_limits") == 0) {
            fg_parse_defs(b, "adaptive_limits", x, FG_SEC_ADAPTIVE);
        } else if (strcmp(k, "retry_budgets") == 0) {
            fg_parse_defs(b, "retry_budgets", x, FG_SEC_BUDGETS);
        } else if (strcmp(k, "bulkheads") == 0) {
            fg_parse_defs(b, "bulkheads", x, FG_SEC_BULKHEADS);
        } else if (strcmp(k, "trace") == 0) {
            fg_parse_trace(b, x);
        } else if (strcmp(k, "fallback") == 0) {
            fg_fallback_fn fn;
            void *arg;
            if (fg_fallback_get(b, "fallback", x, &fn, &arg) == 0 && fn != NULL &&
                fg_fb_table(b) != NULL) {
                b->fallbacks->top = fn;
                b->fallbacks->top_arg = arg;
            }
        } else if (strcmp(k, "chain") == 0) {
            chain = x;
            sec_chain = b->section;
        } else if (strcmp(k, "routes") == 0) {
            routes = x;
            sec_routes = b->section;
        } else if (strcmp(k, "handler") == 0) {
            handler = x;
            sec_handler = b->section;
        } else {
            fg_unknown_key(b, "", k, TOP_KEYS);
        }
    }
    b->section = (int)nkeys;
    if (!have_version)
        fg_err(b, "version", "required");
    if (chain == NULL)
        fg_err(b, "chain", "required (it may be empty: [])");
    if (routes != NULL && handler != NULL) {
        b->section = sec_handler;
        fg_err(b, "handler", "not with \"routes\" (each route names its handler)");
    } else if (routes == NULL && handler == NULL) {
        fg_err(b, "handler", "required when there are no routes");
    }
    /* Even with the errors above, report what is wrong inside the chain
     * and the routes. */
    fg_make_chain(b, chain, sec_chain, routes, sec_routes, routes ? NULL : handler,
                  sec_handler);
    rc = b->oom ? FG_ENOMEM : fg_nerrs(b) ? FG_ECONFIG : 0;
out:
    json_decref(root);
    return rc;
}

static void fg_build_free(struct fg_build *b, int keep_chain) {
    if (!keep_chain)
        fg_chain_free(b->chain);
    fg_router_free(b->router);
    for (size_t i = 0; b->defs != NULL && i < b->ndefs; i++)
        if (b->defs[i].comp != NULL && !keep_chain)
            fg_comp_unref(b->defs[i].comp);
    fg__free(b->defs);
    fg__free(b->errs);
    for (size_t i = 0; i < b->nslos; i++)
        fg__free(b->slos[i].route);
    fg__free(b->slos);
    fg_fb_free(b->fallbacks);
    json_decref(b->route_names);
}

/* At commit: every route of the new config gets its SLO, or loses the one
 * a previous config gave it. */
static void fg_slo_commit(const struct fg_build *b) {
    size_t n = fg_router_count(b->routes);
    for (size_t i = 0; b->metrics != NULL && i < n; i++) {
        const char *name = fg_router_route_name(b->routes, i);
        const fg_slo_options *o = NULL;
        for (size_t j = 0; j < b->nslos && o == NULL; j++)
            if (strcmp(b->slos[j].route, name) == 0)
                o = &b->slos[j].o;
        (void)fg_metrics_set_slo(b->metrics, "main", name, o);
    }
}

static void fg_errors_out(struct fg_build *b, fg_config_errors *errors) {
    if (errors == NULL)
        return;
    memset(errors, 0, sizeof(*errors));
    if (b->nerrs > 0)
        qsort(b->errs, b->nerrs, sizeof(*b->errs), fg_err_cmp);
    size_t n = b->nerrs < FG_CONFIG_MAX_ERRORS ? b->nerrs : FG_CONFIG_MAX_ERRORS;
    for (size_t i = 0; i < n; i++)
        errors->items[i] = b->errs[i].e;
    errors->count = n;
    errors->omitted = fg_nerrs(b) - n;
}

static void fg_build_init(struct fg_build *b, const fg_registry *registry) {
    memset(b, 0, sizeof(*b));
    b->registry = registry;
    b->check_only = registry == NULL;
    b->clock = fg_clock_monotonic();
    fg_trace_options to = FG_TRACE_OPTIONS_INIT;
    b->trace = to;
}

int fg_config_check(const fg_registry *registry, const char *text, size_t len,
                    fg_config_errors *errors) {
    if (errors != NULL)
        memset(errors, 0, sizeof(*errors));
    if (text == NULL && len > 0)
        return FG_EINVAL;
    if (len > FG_CONFIG_MAX_BYTES)
        return FG_ETOOLONG;
    struct fg_build b;
    fg_build_init(&b, registry);
    b.dry = 1;
    int rc = fg_compile(&b, text ? text : "", len);
    fg_errors_out(&b, errors);
    fg_build_free(&b, 0);
    return rc;
}

int fg_runtime_load_json(fg_runtime *rt, const fg_registry *registry, const char *text,
                         size_t len, fg_config_errors *errors) {
    if (errors != NULL)
        memset(errors, 0, sizeof(*errors));
    if (rt == NULL || registry == NULL || (text == NULL && len > 0))
        return FG_EINVAL;
    if (len > FG_CONFIG_MAX_BYTES)
        return FG_ETOOLONG;
    pthread_mutex_t *lock = fg__runtime_load_lock(rt);
    pthread_mutex_lock(lock);
    struct fg_build b;
    fg_build_init(&b, registry);
    b.old = fg__runtime_config_state(rt);
    b.clock = fg__runtime_clock(rt);
    b.on_breaker = fg__runtime_breaker_listener(rt, &b.on_breaker_arg);
    b.on_cluster = fg__runtime_cluster_listener(rt, &b.on_cluster_arg);
    b.metrics = fg_runtime_metrics(rt);
    int rc = fg_compile(&b, text ? text : "", len);
    struct fg_comp_list *table = NULL, *snap = NULL;
    if (rc == 0) {
        table = fg__calloc(1, sizeof(*table));
        snap = fg__calloc(1, sizeof(*snap));
        if (table != NULL)
            /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
            table->v = fg__calloc(b.ndefs + 1, sizeof(*table->v));
        if (snap != NULL)
            /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
            snap->v = fg__calloc(b.ndefs + 1, sizeof(*snap->v));
        if (table == NULL || snap == NULL || table->v == NULL || snap->v == NULL) {
            rc = FG_ENOMEM;
            fg_comp_list_free(table);
            fg_comp_list_free(snap);
        }
    }
    if (rc != 0) {
        fg_errors_out(&b, errors);
        fg_build_free(&b, 0);
        (void)fg_metrics_reload(b.metrics, 0, NULL);
        pthread_mutex_unlock(lock);
        return rc;
    }
    /* Commit: nothing below can fail for a reason of the config. The
     * build's references become the snapshot's; the table takes its own. */
    for (size_t i = 0; i < b.ndefs; i++) {
        struct fg_def *d = &b.defs[i];
        struct fg_comp *c = d->comp;
        snap->v[snap->n++] = c;
        fg_comp_ref(c);
        table->v[table->n++] = c;
        if (c->kind == FG_COMP_BREAKER && d->carry != NULL)
            fg_breaker_commit(&b, d);
        if (c->kind == FG_COMP_BULKHEAD && d->set_bulkhead) {
            (void)fg_bulkhead_set_max(c->bulkhead, d->max_concurrent);
            (void)fg_bulkhead_set_max_wait(c->bulkhead, d->max_wait_ns);
        }
        if (c->kind == FG_COMP_BREAKER || !(d->set_rate || d->set_burst))
            continue;
        for (int step = 0; step < 2; step++) {
            int burst = (step == 0) == (d->burst_first != 0);
            if (burst && d->set_burst)
                (void)(c->kind == FG_COMP_KEYED
                           ? fg_keyed_limiter_set_burst(c->keyed, d->burst)
                           : fg_limiter_set_burst(c->limiter, d->burst));
            if (!burst && d->set_rate)
                (void)(c->kind == FG_COMP_KEYED
                           ? fg_keyed_limiter_set_rate(c->keyed, d->rate, d->period_ns)
                           : fg_limiter_set_rate(c->limiter, d->rate, d->period_ns));
        }
        c->lopts.rate = d->rate;
        c->lopts.period_ns = d->period_ns;
        c->lopts.burst = d->burst;
    }
    fg_slo_commit(&b);
    rc = fg__runtime_swap_with(rt, b.chain, b.version, fg_comp_list_free, snap);
    (void)fg_metrics_reload(b.metrics, rc == 0, rc == 0 ? b.version : NULL);
    if (rc == 0) {
        struct fg_comp_list *old = fg__runtime_config_state(rt);
        fg__runtime_set_config_state(rt, table, fg_comp_list_free);
        fg_comp_list_free(old);
    } else {
        fg_comp_list_free(table); /* the swap released the snapshot's references */
    }
    fg_build_free(&b, 1);
    pthread_mutex_unlock(lock);
    return rc;
}

int fg_runtime_load_file(fg_runtime *rt, const fg_registry *registry, const char *path,
                         fg_config_errors *errors) {
    if (errors != NULL)
        memset(errors, 0, sizeof(*errors));
    if (rt == NULL || registry == NULL || path == NULL)
        return FG_EINVAL;
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0;
    int err = 0;
    if (f == NULL) {
        err = errno;
    } else {
        size_t cap = 0;
        for (;;) {
            if (len == cap) {
                if (cap > FG_CONFIG_MAX_BYTES)
                    break;
                size_t ncap = cap ? cap * 2 : 65536;
                if (ncap > FG_CONFIG_MAX_BYTES + 1)
                    ncap = FG_CONFIG_MAX_BYTES + 1;
                char *g = fg__malloc(ncap);
                if (g == NULL) {
                    fg__free(buf);
                    (void)fclose(f);
                    return FG_ENOMEM;
                }
                if (len)
                    memcpy(g, buf, len);
                fg__free(buf);
                buf = g;
                cap = ncap;
            }
            size_t got = fread(buf + len, 1, cap - len, f);
            len += got;
            if (got == 0) {
                if (ferror(f))
                    err = errno ? errno : EIO;
                break;
            }
        }
        (void)fclose(f);
    }
    if (err != 0) {
        fg__free(buf);
        if (errors != NULL) {
            errors->count = 1;
            (void)snprintf(errors->items[0].path, sizeof(errors->items[0].path), "%s", path);
            char why[128];
            if (strerror_r(err, why, sizeof(why)) != 0) /* XSI: MT-safe, unlike strerror */
                (void)snprintf(why, sizeof(why), "error %d", err);
            (void)snprintf(errors->items[0].message, sizeof(errors->items[0].message),
                           "cannot read: %s", why);
        }
        return FG_ESYS;
    }
    if (len > FG_CONFIG_MAX_BYTES) {
        fg__free(buf);
        return FG_ETOOLONG;
    }
    int rc = fg_runtime_load_json(rt, registry, buf ? buf : "", len, errors);
    fg__free(buf);
    return rc;
}
