/*
 * lib/metrics.c - the metrics registry, the metrics stage and the
 * Prometheus / JSON exporters.
 *
 * Series. One per (chain, route): FG_M_SHARDS shards of FG_M_LANES
 * counters, 128 bytes each; a thread always adds to the same shard (picked
 * round-robin on its first count), so two threads rarely share a line.
 * Reading sums the shards lane by lane. Plus a latency histogram of the
 * requests that reached the handler, and an optional SLO.
 *
 * SLO windows. Counters only ever grow, so a window's figures are the
 * difference between the counters now and at the window's start. The
 * first request of each bucket (window / 60 long) writes a mark, the
 * counters as they were when the bucket began (no request has been counted
 * in it yet), into a ring of 60. The start of a window of k buckets is the
 * earliest mark at or after its first bucket: a bucket without a mark had
 * no request, so the counters at the next mark are the counters at the
 * window's start. Marks are written under a per-mark sequence number and
 * read consistently. Requests counted by other threads at the very instant
 * of a bucket's first request may land on either side of the mark.
 *
 * Lifetimes. Series are reference-counted by the metrics stages that use
 * them and found by name in a list under `lock`, so a config reload that
 * keeps a route keeps its series; the last stage to go unlinks and frees
 * it. Exports take `lock` too: requests never do.
 *
 * Cluster limiters. Their counters live in the limiters themselves
 * (fg_cluster_limiter_stats, exact and atomic), so nothing is counted
 * here per request: a config registers each cluster limiter it makes
 * under its name, and an export reads them. A reload that changes a
 * cluster limiter's options makes a new limiter of the same name while the
 * old one still serves the old snapshot; both are registered under one
 * entry for that while, their counters summed, plus the final counters of
 * the limiters of that name already gone, so the name has one series whose
 * counters never go backwards.
 */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "floodgate/cluster.h"
#include "floodgate/error.h"
#include "floodgate/histogram.h"
#include "floodgate/metrics.h"
#include "floodgate/runtime.h"

#include "alloc.h"
#include "atomic.h"
#include "gcra.h" /* fg_u128 */
#include "internal.h"
#include "runtime_internal.h"

/* ---- lanes ---------------------------------------------------------------------------- */

#define FG_M_SHARDS 8
#define FG_M_HASH   1024 /* series hash buckets */
#define FG_M_LANES  16

enum {
    L_OK = 0,
    L_FAILED = 1,
    L_REJ0 = 2, /* 2 .. 10: FG_ELIMITED (-100) .. FG_EREJECTED (-108) */
    L_OTHER = 11,
    L_DELAYED = 12,
    L_DELAY_NS = 13,
    L_SLOW = 14,
    L_ERRORS = 15,
};
#define L_NCODES 9 /* outcome codes -100 .. -108 */

struct fg_lanes {
    uint64_t v[FG_M_LANES];
};

/* The shard of the calling thread: assigned round-robin on first use. */
static uint32_t fg_shard_next;
static _Thread_local uint32_t fg_shard_mine = UINT32_MAX;

static inline uint32_t fg_shard(void) {
    uint32_t s = fg_shard_mine;
    if (s == UINT32_MAX)
        fg_shard_mine = s = fg__faa_u32(&fg_shard_next, 1) % FG_M_SHARDS;
    return s;
}

/* The lane of a rejection code (L_OTHER for a code outside the outcomes). */
static unsigned fg_code_lane(int code) {
    return code <= FG_ELIMITED && code >= FG_EREJECTED ? (unsigned)(L_REJ0 + (-code - 100))
                                                       : (unsigned)L_OTHER;
}

static int fg_lane_code(unsigned lane) { return -(int)(lane - L_REJ0) - 100; }

/* Outcomes a client sees as the service failing (the SLO's errors). */
static int fg_is_error_code(int code) {
    return code == FG_ETIMEDOUT || code == FG_EBREAKER || code == FG_EOVERLOADED ||
           code == FG_EINJECTED;
}

/* ---- series ------------------------------------------------------------------------------
 */

#define FG_SLO_BUCKETS 60
#define FG_SLO_FAST    5 /* a twelfth of the slow window */

struct fg_slo_mark {
    uint64_t seq; /* odd while being written */
    uint64_t gen, idx;
    uint64_t requests, errors, handled, slow;
};

struct fg_series {
    struct fg_lanes shard[FG_M_SHARDS]; /* first: 64-byte aligned */
    /* SLO, read by requests: on, latency_ns, bucket_ns, gen, and the
     * latest bucket marked (its index + 1; 0 before the first). */
    uint64_t slo_on;
    uint64_t slo_latency_ns;
    uint64_t slo_bucket_ns;
    uint64_t slo_gen;
    uint64_t slo_last_idx;
    struct fg_slo_mark marks[FG_SLO_BUCKETS];
    /* Under the registry's lock. */
    fg_slo_options slo;
    uint64_t err_ppb, lat_ppb; /* the allowed bad shares, in parts per 10^9 */
    fg_histogram *latency;
    char *chain, *route;
    uint32_t refs;
    struct fg_series *next, *prev; /* the registry's list, in order of creation */
    struct fg_series *hnext;       /* its hash bucket */
};

struct fg_stage_entry {
    uint64_t state; /* 0 empty, 1 being claimed, 2 ready */
    uint64_t hash;
    char name[FG_METRICS_NAME_MAX + 1];
    uint64_t count[FG_M_LANES]; /* by lane: L_REJ0 .. L_OTHER */
};

#define FG_M_STAGE_SLOTS  ((size_t)FG_METRICS_MAX_STAGES * 2) /* open addressing, half full */
#define FG_M_MAX_BREAKERS 256

struct fg_breaker_entry {
    char name[FG_METRICS_NAME_MAX + 1];
    unsigned state;
    uint64_t moves[3][3];
};

#define FG_M_MAX_CLUSTERS 256

/* The series of one cluster limiter name. Under the registry's lock. */
struct fg_cluster_entry {
    char name[FG_METRICS_NAME_MAX + 1];
    fg_cluster_stats gone;           /* the counters of its limiters removed, summed */
    const fg_cluster_limiter **live; /* registered now, oldest first */
    size_t nlive, caplive;
    int has_event;
    fg_cluster_event last; /* the latest mode change reported */
    fg_cluster_stats sum;  /* an export's reading (fg_cluster_sum) */
    int per_key;           /* ... and whether a limiter of the name is per key */
};

struct fg_metrics {
    fg_clock clock;
    pthread_mutex_t lock; /* series list, breakers, clusters, reload info, exports */
    struct fg_series *series, *last;
    struct fg_series *hash[FG_M_HASH]; /* by fg_series_hash: O(1) lookups */
    size_t nseries;
    struct fg_stage_entry *stages; /* FG_M_STAGE_SLOTS, lock-free */
    uint64_t nstages;              /* claimed entries (atomic) */
    struct fg_breaker_entry *breakers;
    size_t nbreakers;
    struct fg_cluster_entry **clusters; /* in order of creation */
    size_t nclusters, capclusters;
    uint64_t reloads_ok, reloads_failed;
    char version[FG_METRICS_VERSION_MAX + 1];
    fg_histogram *scratch, *chain_scratch; /* exports: copies */
};

static void fg_series_sum(const struct fg_series *s, uint64_t out[FG_M_LANES]) {
    memset(out, 0, FG_M_LANES * sizeof(out[0]));
    for (unsigned i = 0; i < FG_M_SHARDS; i++)
        for (unsigned l = 0; l < FG_M_LANES; l++)
            out[l] += fg__load_u64(&s->shard[i].v[l]);
}

static uint64_t fg_sum_requests(const uint64_t v[FG_M_LANES]) {
    uint64_t n = 0;
    for (unsigned l = L_OK; l <= L_OTHER; l++)
        n += v[l];
    return n;
}

static void fg_series_free(struct fg_series *s) {
    if (s == NULL)
        return;
    fg_histogram_free(s->latency);
    fg__free(s->chain);
    fg__free(s->route);
    fg__aligned_free(s);
}

static int fg_label_ok(const char *s) {
    return strnlen(s, FG_METRICS_NAME_MAX + 1) <= FG_METRICS_NAME_MAX;
}

/* The series of (chain, route), created when absent. Under m->lock. */
static size_t fg_series_hash(const char *chain, const char *route) {
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (const char *p = chain; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * UINT64_C(0x100000001b3);
    h = (h ^ 0xffu) * UINT64_C(0x100000001b3); /* a byte no name has: chain "a"+"b" != "ab" */
    for (const char *p = route; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * UINT64_C(0x100000001b3);
    return (size_t)(h ^ (h >> 32)) & (FG_M_HASH - 1);
}

static int fg_series_get(fg_metrics *m, const char *chain, const char *route, int create,
                         struct fg_series **out) {
    size_t hb = fg_series_hash(chain, route);
    for (struct fg_series *s = m->hash[hb]; s != NULL; s = s->hnext)
        if (strcmp(s->chain, chain) == 0 && strcmp(s->route, route) == 0) {
            *out = s;
            return 0;
        }
    if (!create)
        return FG_ENOTFOUND;
    if (m->nseries >= FG_METRICS_MAX_SERIES)
        return FG_ETOOMANY;
    struct fg_series *s = fg__aligned_calloc(sizeof(*s), 64);
    if (s == NULL)
        return FG_ENOMEM;
    s->chain = fg__strndup(chain, strlen(chain));
    s->route = fg__strndup(route, strlen(route));
    if (s->chain == NULL || s->route == NULL || fg_histogram_new(&s->latency) != 0) {
        fg_series_free(s);
        return FG_ENOMEM;
    }
    s->prev = m->last; /* in order of creation: config order */
    if (m->last != NULL)
        m->last->next = s;
    else
        m->series = s;
    m->last = s;
    s->hnext = m->hash[hb];
    m->hash[hb] = s;
    m->nseries++;
    *out = s;
    return 0;
}

/* Drop one stage's reference; the last unlinks and frees. Under m->lock. */
static void fg_series_unref(fg_metrics *m, struct fg_series *s) {
    if (s == NULL || --s->refs > 0)
        return;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        m->series = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else
        m->last = s->prev;
    for (struct fg_series **p = &m->hash[fg_series_hash(s->chain, s->route)]; *p != NULL;
         p = &(*p)->hnext)
        if (*p == s) {
            *p = s->hnext;
            break;
        }
    m->nseries--;
    fg_series_free(s);
}

/* ---- the registry --------------------------------------------------------------------- */

int fg_metrics_new(const fg_clock *clock, fg_metrics **out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = NULL;
    fg_metrics *m = fg__calloc(1, sizeof(*m));
    if (m == NULL)
        return FG_ENOMEM;
    m->clock = clock != NULL && clock->now != NULL ? *clock : fg_clock_monotonic();
    m->stages = fg__aligned_calloc(FG_M_STAGE_SLOTS * sizeof(*m->stages), 64);
    m->breakers = fg__calloc(FG_M_MAX_BREAKERS, sizeof(*m->breakers));
    if (m->stages == NULL || m->breakers == NULL || fg_histogram_new(&m->scratch) != 0 ||
        fg_histogram_new(&m->chain_scratch) != 0 || pthread_mutex_init(&m->lock, NULL) != 0) {
        fg_histogram_free(m->scratch);
        fg_histogram_free(m->chain_scratch);
        fg__aligned_free(m->stages);
        fg__free(m->breakers);
        fg__free(m);
        return FG_ENOMEM;
    }
    *out = m;
    return 0;
}

void fg_metrics_free(fg_metrics *m) {
    if (m == NULL)
        return;
    while (m->series != NULL) {
        struct fg_series *s = m->series;
        m->series = s->next;
        fg_series_free(s);
    }
    for (size_t i = 0; i < m->nclusters; i++) {
        fg__free(m->clusters[i]->live);
        fg__free(m->clusters[i]);
    }
    fg__free(m->clusters);
    pthread_mutex_destroy(&m->lock);
    fg_histogram_free(m->scratch);
    fg_histogram_free(m->chain_scratch);
    fg__aligned_free(m->stages);
    fg__free(m->breakers);
    fg__free(m);
}

void fg__metrics_set_clock(fg_metrics *m, fg_clock clock) {
    if (m != NULL && clock.now != NULL)
        m->clock = clock;
}

/* ---- stage rejections --------------------------------------------------------------------
 */

static uint64_t fg_name_hash(const char *s, size_t n) {
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * UINT64_C(0x100000001b3);
    return h | 1; /* never 0 */
}

/* The entry of stage `name`, claimed when absent; NULL when the table is
 * full (the rejection is then only counted in its series). Lock-free. */
static struct fg_stage_entry *fg_stage_entry_get(fg_metrics *m, const char *name, int create) {
    size_t n = strnlen(name, FG_METRICS_NAME_MAX); /* longer stage names are cut */
    uint64_t h = fg_name_hash(name, n);
    for (size_t i = 0; i < FG_M_STAGE_SLOTS; i++) {
        struct fg_stage_entry *e = &m->stages[(h + i) & (FG_M_STAGE_SLOTS - 1)];
        uint64_t st = fg__load_u64(&e->state);
        if (st == 0) {
            if (!create)
                return NULL;
            if (fg__load_u64(&m->nstages) >= FG_METRICS_MAX_STAGES)
                return NULL;
            if (!fg__cas_u64(&e->state, 0, 1)) {
                st = fg__load_u64(&e->state);
            } else {
                (void)fg__faa_u64(&m->nstages, 1);
                memcpy(e->name, name, n);
                e->name[n] = '\0';
                fg__store_u64(&e->hash, h);
                fg__store_u64(&e->state, 2); /* release: name and hash first */
                return e;
            }
        }
        while (st == 1) { /* another thread is writing the name: a few stores */
            fg__pause();
            st = fg__load_u64(&e->state);
        }
        if (fg__load_u64(&e->hash) == h && strncmp(e->name, name, n) == 0 &&
            e->name[n] == '\0')
            return e;
    }
    return NULL;
}

uint64_t fg_metrics_stage_rejections(fg_metrics *m, const char *stage, int code) {
    if (m == NULL || stage == NULL)
        return 0;
    struct fg_stage_entry *e = fg_stage_entry_get(m, stage, 0);
    if (e == NULL)
        return 0;
    if (code != 0)
        return fg__load_u64(&e->count[fg_code_lane(code)]);
    uint64_t n = 0;
    for (unsigned l = L_REJ0; l <= L_OTHER; l++)
        n += fg__load_u64(&e->count[l]);
    return n;
}

/* ---- the stage ----------------------------------------------------------------------------
 */

struct fg_route_slot {
    const char *key; /* the router's route name pointer */
    struct fg_series *series;
};

struct fg_mstage {
    fg_metrics *m;
    struct fg_series *none; /* route "" */
    size_t nslots;          /* power of two; 0 without a router */
    unsigned shift;
    struct fg_route_slot *slots;
};

static size_t fg_ptr_slot(const struct fg_mstage *st, const void *p) {
    return (size_t)((((uint64_t)(uintptr_t)p >> 3) * UINT64_C(0x9e3779b97f4a7c15)) >>
                    st->shift);
}

static struct fg_series *fg_route_series(const struct fg_mstage *st, const char *route) {
    if (route == NULL || st->nslots == 0)
        return st->none;
    for (size_t i = fg_ptr_slot(st, route);; i = (i + 1) & (st->nslots - 1)) {
        const struct fg_route_slot *e = &st->slots[i];
        if (e->key == route)
            return e->series;
        if (e->key == NULL)
            return st->none;
    }
}

/* Write the SLO mark of the bucket `now` falls in, if this request is its
 * first. Before the request is counted. */
static void fg_slo_mark(struct fg_series *s, uint64_t now) {
    uint64_t bns = fg__load_u64(&s->slo_bucket_ns);
    if (bns == 0)
        return;
    uint64_t idx = now / bns;
    uint64_t last = fg__load_u64(&s->slo_last_idx); /* the latest marked idx + 1; 0: none */
    if (idx + 1 <= last || !fg__cas_u64(&s->slo_last_idx, last, idx + 1))
        return;
    uint64_t v[FG_M_LANES];
    fg_series_sum(s, v);
    struct fg_slo_mark *mk = &s->marks[idx % FG_SLO_BUCKETS];
    uint64_t seq = fg__load_u64(&mk->seq);
    /* Release stores: the odd sequence is visible before any field. */
    fg__store_u64(&mk->seq, seq + 1);
    fg__store_u64(&mk->gen, fg__load_u64(&s->slo_gen));
    fg__store_u64(&mk->idx, idx);
    fg__store_u64(&mk->requests, fg_sum_requests(v));
    fg__store_u64(&mk->errors, v[L_ERRORS]);
    fg__store_u64(&mk->handled, v[L_OK] + v[L_FAILED]);
    fg__store_u64(&mk->slow, v[L_SLOW]);
    fg__store_u64(&mk->seq, seq + 2);
}

static int fg_metrics_exit(void *state, fg_ctx *ctx, const fg_outcome *o, uint64_t slot) {
    (void)slot;
    const struct fg_mstage *st = state;
    struct fg_series *s = fg_route_series(st, ctx->route);
    int slo = fg__load_u64(&s->slo_on) != 0;
    if (slo)
        fg_slo_mark(s, ctx->now_ns + o->latency_ns);
    struct fg_lanes *l = &s->shard[fg_shard()];
    int handled = o->kind != FG_OUTCOME_REJECTED;
    if (handled) {
        fg__faa_u64(&l->v[o->kind == FG_OUTCOME_OK ? L_OK : L_FAILED], 1);
        fg_histogram_record(s->latency, o->latency_ns);
        if (slo) {
            uint64_t lim = fg__load_u64(&s->slo_latency_ns);
            if (lim != 0 && o->latency_ns > lim)
                fg__faa_u64(&l->v[L_SLOW], 1);
        }
    } else {
        unsigned lane = fg_code_lane(o->code);
        fg__faa_u64(&l->v[lane], 1);
        if (o->rejected_by != NULL) {
            struct fg_stage_entry *e =
                fg_stage_entry_get(st->m, fg_stage_name(o->rejected_by), 1);
            if (e != NULL)
                fg__faa_u64(&e->count[lane], 1);
        }
    }
    if (o->kind == FG_OUTCOME_FAILED || (!handled && fg_is_error_code(o->code)))
        fg__faa_u64(&l->v[L_ERRORS], 1);
    if (ctx->delay_ns != 0 && handled) {
        fg__faa_u64(&l->v[L_DELAYED], 1);
        fg__faa_u64(&l->v[L_DELAY_NS], ctx->delay_ns);
    }
    return 0;
}

static void fg_mstage_free(struct fg_mstage *st) {
    if (st == NULL)
        return;
    pthread_mutex_lock(&st->m->lock);
    fg_series_unref(st->m, st->none);
    for (size_t i = 0; i < st->nslots; i++)
        if (st->slots[i].key != NULL)
            fg_series_unref(st->m, st->slots[i].series);
    pthread_mutex_unlock(&st->m->lock);
    fg__free(st->slots);
    fg__free(st);
}

static void fg_metrics_destroy(void *state) { fg_mstage_free(state); }

static const fg_stage_ops fg_metrics_ops = {"metrics", NULL, fg_metrics_exit,
                                            fg_metrics_destroy};

/* Take a reference on the series of (chain, route). Under m->lock. */
static int fg_series_ref(fg_metrics *m, const char *chain, const char *route,
                         struct fg_series **out) {
    if (!fg_label_ok(route))
        return FG_ETOOLONG;
    int rc = fg_series_get(m, chain, route, 1, out);
    if (rc == 0)
        (*out)->refs++;
    return rc;
}

int fg_stage_metrics(fg_metrics *m, const fg_router *router, const char *chain_label,
                     const char *name, fg_stage **out) {
    if (out != NULL)
        *out = NULL;
    if (m == NULL || chain_label == NULL || out == NULL)
        return FG_EINVAL;
    if (!fg_label_ok(chain_label))
        return FG_ETOOLONG;
    struct fg_mstage *st = fg__calloc(1, sizeof(*st));
    if (st == NULL)
        return FG_ENOMEM;
    st->m = m;
    size_t n = fg_router_count(router);
    if (n > 0) {
        size_t cap = 4;
        unsigned bits = 2;
        while (cap < 2 * n) {
            cap *= 2;
            bits++;
        }
        st->slots = fg__calloc(cap, sizeof(*st->slots));
        if (st->slots == NULL) {
            fg__free(st);
            return FG_ENOMEM;
        }
        st->nslots = cap;
        st->shift = 64 - bits;
    }
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    rc = fg_series_ref(m, chain_label, "", &st->none);
    for (size_t r = 0; rc == 0 && r < n; r++) {
        const char *key = fg_router_route_name(router, r);
        size_t i = fg_ptr_slot(st, key);
        while (st->slots[i].key != NULL)
            i = (i + 1) & (st->nslots - 1);
        rc = fg_series_ref(m, chain_label, key, &st->slots[i].series);
        if (rc == 0)
            st->slots[i].key = key;
    }
    pthread_mutex_unlock(&m->lock);
    if (rc == 0)
        rc = fg_stage_new(&fg_metrics_ops, st, name ? name : "metrics", out);
    if (rc != 0)
        fg_mstage_free(st);
    return rc;
}

/* ---- SLOs ----------------------------------------------------------------------------- */

static int fg_share_ok(double x) { return x > 0 && x < 1; }

int fg_metrics_set_slo(fg_metrics *m, const char *chain, const char *route,
                       const fg_slo_options *o) {
    if (m == NULL || chain == NULL || route == NULL)
        return FG_EINVAL;
    fg_slo_options v = FG_SLO_OPTIONS_INIT;
    if (o != NULL) {
        v = *o;
        if (v.latency_target == 0)
            v.latency_target = 0.99;
        if (v.window_ns == 0)
            v.window_ns = UINT64_C(3600) * FG_NS_PER_S;
        if ((v.latency_ns == 0 && v.error_rate == 0) || !fg_share_ok(v.latency_target) ||
            (v.error_rate != 0 && !fg_share_ok(v.error_rate)) || v.window_ns < FG_SLO_BUCKETS)
            return FG_EINVAL;
    }
    if (!fg_label_ok(chain) || !fg_label_ok(route))
        return FG_ETOOLONG;
    pthread_mutex_lock(&m->lock);
    struct fg_series *s = NULL;
    /* Created when absent (with no stage using it yet, so it goes with the
     * last stage that will); removing an SLO never creates one. */
    int rc = fg_series_get(m, chain, route, o != NULL, &s);
    if (rc == FG_ENOTFOUND && o == NULL)
        rc = 0;
    else if (rc == 0) {
        uint64_t bns = v.window_ns / FG_SLO_BUCKETS;
        if (o == NULL || bns != fg__load_u64(&s->slo_bucket_ns)) {
            /* A new window: its history starts over. Marks of the old
             * generation are ignored by readers. */
            fg__store_u64(&s->slo_on, 0);
            fg__store_u64(&s->slo_gen, fg__load_u64(&s->slo_gen) + 1);
            fg__store_u64(&s->slo_bucket_ns, o == NULL ? 0 : bns);
            fg__store_u64(&s->slo_last_idx, 0);
        }
        fg__store_u64(&s->slo_latency_ns, v.latency_ns);
        s->slo = v;
        /* Shares as integers: burn rates and compliance are then exact
         * ratios of counts (45, not 44.999999999999964). */
        s->err_ppb = (uint64_t)(v.error_rate * 1e9 + 0.5);
        s->lat_ppb = (uint64_t)((1 - v.latency_target) * 1e9 + 0.5);
        fg__store_u64(&s->slo_on, o != NULL);
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* The counters at the start of the window of the last k buckets ending at
 * bucket idx (current counters when no mark is at or after its start). */
static void fg_slo_start(const struct fg_series *s, uint64_t idx, unsigned k,
                         const struct fg_slo_mark *now, struct fg_slo_mark *out) {
    uint64_t first = idx + 1 >= k ? idx + 1 - k : 0;
    uint64_t gen = fg__load_u64(&s->slo_gen);
    *out = *now;
    uint64_t best = UINT64_MAX;
    for (unsigned i = 0; i < FG_SLO_BUCKETS; i++) {
        const struct fg_slo_mark *mk = &s->marks[i];
        struct fg_slo_mark c;
        uint64_t seq;
        do { /* a consistent copy */
            seq = fg__load_u64(&mk->seq);
            c.seq = seq;
            c.gen = fg__load_u64(&mk->gen);
            c.idx = fg__load_u64(&mk->idx);
            c.requests = fg__load_u64(&mk->requests);
            c.errors = fg__load_u64(&mk->errors);
            c.handled = fg__load_u64(&mk->handled);
            c.slow = fg__load_u64(&mk->slow);
        } while ((seq & 1) != 0 || fg__load_u64(&mk->seq) != seq);
        if (seq == 0 || c.gen != gen || c.idx < first || c.idx > idx || c.idx >= best)
            continue;
        best = c.idx;
        *out = c;
    }
}

static double fg_ratio(uint64_t a, uint64_t b) { return b ? (double)a / (double)b : 0; }

/* (bad / all) / (ppb / 10^9): a burn rate; 0 with no traffic. */
/* (bad / all) / share: a burn rate; 0 with no traffic. A share that is a
 * whole number of parts per 10^9 (ppb > 0) gives an exact ratio of counts
 * (45, not 44.999999999999964); a finer one is divided as a double. */
static double fg_burn(uint64_t bad, uint64_t all, uint64_t ppb, double share) {
    if (all == 0)
        return 0;
    if (ppb == 0)
        return (double)bad / ((double)all * share);
    return (double)((fg_u128)bad * 1000000000u) / (double)((fg_u128)all * ppb);
}

/* bad / all <= ppb / 10^9, exactly. */
static int fg_within(uint64_t bad, uint64_t all, uint64_t ppb, double share) {
    if (ppb == 0)
        return (double)bad <= (double)all * share;
    return (fg_u128)bad * 1000000000u <= (fg_u128)all * ppb;
}

/* Under m->lock. */
static void fg_slo_status_of(const struct fg_series *s, uint64_t now, fg_slo_status *st) {
    memset(st, 0, sizeof(*st));
    const fg_slo_options *o = &s->slo;
    st->has_latency = o->latency_ns != 0;
    st->has_errors = o->error_rate != 0;
    st->window_ns = o->window_ns;
    uint64_t bns = fg__load_u64(&s->slo_bucket_ns);
    uint64_t v[FG_M_LANES];
    fg_series_sum(s, v);
    struct fg_slo_mark cur = {
        0, 0, 0, fg_sum_requests(v), v[L_ERRORS], v[L_OK] + v[L_FAILED], v[L_SLOW]};
    uint64_t idx = bns ? now / bns : 0;
    struct fg_slo_mark slow0, fast0;
    fg_slo_start(s, idx, FG_SLO_BUCKETS, &cur, &slow0);
    fg_slo_start(s, idx, FG_SLO_FAST, &cur, &fast0);
    st->requests = cur.requests - slow0.requests;
    st->errors = cur.errors - slow0.errors;
    st->handled = cur.handled - slow0.handled;
    st->slow = cur.slow - slow0.slow;
    st->error_ratio = fg_ratio(st->errors, st->requests);
    st->slow_ratio = fg_ratio(st->slow, st->handled);
    double lat_share = 1 - o->latency_target;
    if (st->has_errors) {
        st->error_burn_slow = fg_burn(st->errors, st->requests, s->err_ppb, o->error_rate);
        st->error_burn_fast = fg_burn(cur.errors - fast0.errors, cur.requests - fast0.requests,
                                      s->err_ppb, o->error_rate);
    }
    if (st->has_latency) {
        st->latency_burn_slow = fg_burn(st->slow, st->handled, s->lat_ppb, lat_share);
        st->latency_burn_fast =
            fg_burn(cur.slow - fast0.slow, cur.handled - fast0.handled, s->lat_ppb, lat_share);
    }
    st->error_ok =
        !st->has_errors || fg_within(st->errors, st->requests, s->err_ppb, o->error_rate);
    st->latency_ok =
        !st->has_latency || fg_within(st->slow, st->handled, s->lat_ppb, lat_share);
}

int fg_metrics_slo(fg_metrics *m, const char *chain, const char *route, uint64_t now_ns,
                   fg_slo_status *out) {
    if (m == NULL || chain == NULL || route == NULL || out == NULL)
        return FG_EINVAL;
    pthread_mutex_lock(&m->lock);
    struct fg_series *s = NULL;
    int rc = fg_series_get(m, chain, route, 0, &s);
    if (rc == 0 && !fg__load_u64(&s->slo_on))
        rc = FG_ENOTFOUND;
    if (rc == 0)
        fg_slo_status_of(s, now_ns, out);
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* ---- events ------------------------------------------------------------------------------
 */

int fg_metrics_breaker_event(fg_metrics *m, const char *breaker, const fg_breaker_event *ev) {
    if (m == NULL || breaker == NULL || ev == NULL)
        return FG_EINVAL;
    if (!fg_label_ok(breaker))
        return FG_ETOOLONG;
    if ((unsigned)ev->from > 2 || (unsigned)ev->to > 2)
        return FG_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    struct fg_breaker_entry *e = NULL;
    for (size_t i = 0; i < m->nbreakers; i++)
        if (strcmp(m->breakers[i].name, breaker) == 0)
            e = &m->breakers[i];
    if (e == NULL && m->nbreakers == FG_M_MAX_BREAKERS) {
        rc = FG_ETOOMANY;
    } else {
        if (e == NULL) {
            e = &m->breakers[m->nbreakers++];
            (void)snprintf(e->name, sizeof(e->name), "%s", breaker);
        }
        e->state = (unsigned)ev->to;
        if (ev->from != ev->to)
            e->moves[ev->from][ev->to]++;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* ---- cluster limiters ------------------------------------------------------------------
 */

/* The entry of name, or NULL. Under m->lock. */
static struct fg_cluster_entry *fg_cluster_find(fg_metrics *m, const char *name) {
    for (size_t i = 0; i < m->nclusters; i++)
        if (strcmp(m->clusters[i]->name, name) == 0)
            return m->clusters[i];
    return NULL;
}

static void fg_cluster_drop(fg_metrics *m, size_t i) {
    fg__free(m->clusters[i]->live);
    fg__free(m->clusters[i]);
    memmove(&m->clusters[i], &m->clusters[i + 1],
            (m->nclusters - i - 1) * sizeof(struct fg_cluster_entry *));
    m->nclusters--;
}

/* The entry of name, made when absent. An entry an event made for a
 * limiter whose construction then failed has no limiter: such entries give
 * way when the table is full. Under m->lock. */
static int fg_cluster_get(fg_metrics *m, const char *name, struct fg_cluster_entry **out) {
    *out = fg_cluster_find(m, name);
    if (*out != NULL)
        return 0;
    for (size_t i = m->nclusters; i-- > 0 && m->nclusters == FG_M_MAX_CLUSTERS;)
        if (m->clusters[i]->nlive == 0)
            fg_cluster_drop(m, i);
    if (m->nclusters == FG_M_MAX_CLUSTERS)
        return FG_ETOOMANY;
    if (m->nclusters == m->capclusters) {
        size_t ncap = m->capclusters ? m->capclusters * 2 : 8;
        struct fg_cluster_entry **g = fg__malloc(ncap * sizeof(struct fg_cluster_entry *));
        if (g == NULL)
            return FG_ENOMEM;
        if (m->nclusters > 0)
            memcpy(g, m->clusters, m->nclusters * sizeof(struct fg_cluster_entry *));
        fg__free(m->clusters);
        m->clusters = g;
        m->capclusters = ncap;
    }
    struct fg_cluster_entry *e = fg__calloc(1, sizeof(*e));
    if (e == NULL)
        return FG_ENOMEM;
    (void)snprintf(e->name, sizeof(e->name), "%s", name);
    m->clusters[m->nclusters++] = e;
    *out = e;
    return 0;
}

/* dst += the counters of src (not mode, held, keys: those are "now"). */
static void fg_cluster_stats_add(fg_cluster_stats *dst, const fg_cluster_stats *src) {
    dst->admitted += src->admitted;
    dst->rejected += src->rejected;
    dst->fallback_admitted += src->fallback_admitted;
    dst->fallback_rejected += src->fallback_rejected;
    dst->roundtrips += src->roundtrips;
    dst->leased += src->leased;
    dst->refunded += src->refunded;
    dst->errors += src->errors;
    dst->fallbacks += src->fallbacks;
    dst->recoveries += src->recoveries;
    dst->full_rejected += src->full_rejected;
    dst->full_admitted += src->full_admitted;
}

/* The figures of a name into *out: its limiters gone plus those alive, the
 * newest one's mode, the tokens and keys they hold now; and whether one of
 * them is per key. Under m->lock. */
static int fg_cluster_sum(const struct fg_cluster_entry *e, fg_cluster_stats *out) {
    int per_key = 0;
    *out = e->gone;
    out->mode = FG_CLUSTER_MODE_CLUSTER;
    out->held = 0;
    out->keys = 0;
    for (size_t i = 0; i < e->nlive; i++) {
        fg_cluster_stats st;
        fg_cluster_options o;
        if (fg_cluster_limiter_stats(e->live[i], &st) != 0)
            continue;
        fg_cluster_stats_add(out, &st);
        out->held += st.held;
        out->keys += st.keys;
        out->mode = st.mode;
        per_key |= fg_cluster_limiter_get(e->live[i], &o) == 0 && o.max_keys > 0;
    }
    return per_key;
}

int fg__metrics_add_cluster(fg_metrics *m, const char *name, const fg_cluster_limiter *cl) {
    if (m == NULL || name == NULL || cl == NULL)
        return FG_EINVAL;
    if (!fg_label_ok(name))
        return FG_ETOOLONG;
    pthread_mutex_lock(&m->lock);
    struct fg_cluster_entry *e = NULL;
    int rc = fg_cluster_get(m, name, &e);
    if (rc == 0 && e->nlive == e->caplive) {
        size_t ncap = e->caplive ? e->caplive * 2 : 2;
        const fg_cluster_limiter **g = fg__malloc(ncap * sizeof(const fg_cluster_limiter *));
        if (g == NULL) {
            rc = FG_ENOMEM;
        } else {
            if (e->nlive > 0)
                memcpy(g, e->live, e->nlive * sizeof(const fg_cluster_limiter *));
            fg__free(e->live);
            e->live = g;
            e->caplive = ncap;
        }
    }
    if (rc == 0)
        e->live[e->nlive++] = cl;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

void fg__metrics_remove_cluster(fg_metrics *m, const fg_cluster_limiter *cl) {
    if (m == NULL || cl == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->nclusters; i++) {
        struct fg_cluster_entry *e = m->clusters[i];
        size_t j = 0;
        while (j < e->nlive && e->live[j] != cl)
            j++;
        if (j == e->nlive)
            continue;
        fg_cluster_stats st;
        if (fg_cluster_limiter_stats(cl, &st) == 0)
            fg_cluster_stats_add(&e->gone, &st);
        memmove(&e->live[j], &e->live[j + 1],
                (e->nlive - j - 1) * sizeof(const fg_cluster_limiter *));
        if (--e->nlive == 0)
            fg_cluster_drop(m, i); /* the name is gone from the config */
        break;
    }
    pthread_mutex_unlock(&m->lock);
}

int fg__metrics_cluster_event(fg_metrics *m, const char *name, const fg_cluster_event *ev) {
    if (m == NULL || name == NULL || ev == NULL)
        return FG_EINVAL;
    if (!fg_label_ok(name))
        return FG_ETOOLONG;
    pthread_mutex_lock(&m->lock);
    struct fg_cluster_entry *e = NULL;
    /* May come before the limiter is added (reported while it was made):
     * the entry is made now and the limiter joins it. (One may also come
     * from a limiter already removed, before its free stops its thread:
     * then it is simply the name's latest change, kept in an entry that is
     * not exported until a limiter of that name is added again.) */
    int rc = fg_cluster_get(m, name, &e);
    if (rc == 0) {
        e->last = *ev;
        e->last.reason[sizeof(e->last.reason) - 1] = '\0';
        e->has_event = 1;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int fg_metrics_reload(fg_metrics *m, int ok, const char *version) {
    if (m == NULL)
        return FG_EINVAL;
    pthread_mutex_lock(&m->lock);
    if (ok)
        m->reloads_ok++;
    else
        m->reloads_failed++;
    if (version != NULL)
        (void)snprintf(m->version, sizeof(m->version), "%s", version);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* ---- reading one series
 * ---------------------------------------------------------------------- */

int fg_metrics_route(fg_metrics *m, const char *chain, const char *route,
                     fg_route_stats *out) {
    if (m == NULL || chain == NULL || route == NULL || out == NULL)
        return FG_EINVAL;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&m->lock);
    struct fg_series *s = NULL;
    int rc = fg_series_get(m, chain, route, 0, &s);
    if (rc == 0) {
        uint64_t v[FG_M_LANES];
        fg_series_sum(s, v);
        out->ok = v[L_OK];
        out->failed = v[L_FAILED];
        for (unsigned i = 0; i < L_NCODES; i++) {
            out->rejected_by_code[i] = v[L_REJ0 + i];
            out->rejected += v[L_REJ0 + i];
        }
        out->other = v[L_OTHER];
        out->rejected += v[L_OTHER];
        out->delayed = v[L_DELAYED];
        out->delay_ns = v[L_DELAY_NS];
        fg_histogram_stats hs;
        fg_histogram_reset(m->scratch);
        (void)fg_histogram_merge(m->scratch, s->latency);
        (void)fg_histogram_snapshot(m->scratch, &hs);
        out->latency_count = hs.count;
        out->latency_sum_ns = hs.sum_ns;
        out->p50_ns = hs.p50_ns;
        out->p90_ns = hs.p90_ns;
        out->p99_ns = hs.p99_ns;
        out->p999_ns = hs.p999_ns;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* ---- Prometheus
 * ----------------------------------------------------------------------------- */

/* A writer that counts what it could not write. */
struct fg_w {
    char *buf;
    size_t cap, len;
};

static void fg_w_raw(struct fg_w *w, const char *s, size_t n) {
    if (w->len < w->cap) {
        size_t room = w->cap - w->len;
        memcpy(w->buf + w->len, s, n < room ? n : room);
    }
    w->len += n;
}

static void fg_w_str(struct fg_w *w, const char *s) { fg_w_raw(w, s, strlen(s)); }

FG_PRINTF_(2, 3)
static void fg_w_fmt(struct fg_w *w, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        fg_w_raw(w, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A label value, escaped as the exposition format requires. */
static void fg_w_label(struct fg_w *w, const char *key, const char *value, int first) {
    fg_w_str(w, first ? "" : ",");
    fg_w_str(w, key);
    fg_w_str(w, "=\"");
    for (const char *p = value; *p != '\0'; p++) {
        if (*p == '\\')
            fg_w_str(w, "\\\\");
        else if (*p == '"')
            fg_w_str(w, "\\\"");
        else if (*p == '\n')
            fg_w_str(w, "\\n");
        else
            fg_w_raw(w, p, 1);
    }
    fg_w_str(w, "\"");
}

static void fg_w_head(struct fg_w *w, const char *name, const char *type, const char *help) {
    fg_w_fmt(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A float in the format's syntax: shortest round-trip form, +Inf, NaN. */
static void fg_w_double(struct fg_w *w, double x) {
    if (isnan(x))
        fg_w_str(w, "NaN");
    else if (isinf(x))
        fg_w_str(w, x > 0 ? "+Inf" : "-Inf");
    else
        fg_w_fmt(w, "%.17g", x);
}

/* Histogram bounds in seconds, as written, and in ns. */
static const char *const fg_le_text[] = {
    "0.00001", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
    "0.01",    "0.025",   "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5",
    "5",       "10",      "30",     "60",      "300",    "3600"};
static const uint64_t fg_le_ns[] = {
    10000,       50000,       100000,       250000,       500000,     1000000,
    2500000,     5000000,     10000000,     25000000,     50000000,   100000000,
    250000000,   500000000,   1000000000,   2500000000,   5000000000, 10000000000,
    30000000000, 60000000000, 300000000000, 3600000000000};
#define FG_NLE (sizeof(fg_le_ns) / sizeof(fg_le_ns[0]))

/* One histogram (a consistent copy) with its labels: chain and route, or
 * chain only when route is NULL. */
static void fg_w_histogram(struct fg_w *w, const char *name, const fg_histogram *h,
                           const char *chain, const char *route) {
    fg_histogram_stats hs;
    (void)fg_histogram_snapshot(h, &hs);
    for (size_t i = 0; i <= FG_NLE; i++) {
        fg_w_fmt(w, "%s_bucket{", name);
        fg_w_label(w, "chain", chain, 1);
        if (route != NULL)
            fg_w_label(w, "route", route, 0);
        fg_w_label(w, "le", i < FG_NLE ? fg_le_text[i] : "+Inf", 0);
        fg_w_fmt(w, "} %" PRIu64 "\n",
                 i < FG_NLE ? fg_histogram_count_le(h, fg_le_ns[i]) : hs.count);
    }
    for (int k = 0; k < 2; k++) {
        fg_w_fmt(w, "%s_%s{", name, k == 0 ? "sum" : "count");
        fg_w_label(w, "chain", chain, 1);
        if (route != NULL)
            fg_w_label(w, "route", route, 0);
        fg_w_str(w, "} ");
        if (k == 0)
            fg_w_double(w, (double)hs.sum_ns / 1e9);
        else
            fg_w_fmt(w, "%" PRIu64, hs.count);
        fg_w_str(w, "\n");
    }
}

static void fg_w_series_labels(struct fg_w *w, const char *metric, const struct fg_series *s) {
    fg_w_str(w, metric);
    fg_w_str(w, "{");
    fg_w_label(w, "chain", s->chain, 1);
    fg_w_label(w, "route", s->route, 0);
}

static const char *const fg_state_label[] = {"closed", "open", "half_open"};

static const char *const fg_mode_label[] = {"cluster", "fallback"};

/* The cluster families with one sample per limiter name, and the figure
 * each reads. */
enum fg_cluster_fig {
    FG_CF_MODE,
    FG_CF_FALLBACKS,
    FG_CF_RECOVERIES,
    FG_CF_ROUNDTRIPS,
    FG_CF_ERRORS,
    FG_CF_LEASED,
    FG_CF_REFUNDED,
    FG_CF_HELD
};

static const struct {
    const char *name, *type, *help;
} fg_cluster_fams[] = {
    [FG_CF_MODE] = {"floodgate_cluster_mode", "gauge",
                    "Where a cluster limiter's decisions come from: 0 the shared bucket in "
                    "Redis, 1 the fallback policy (Redis unusable)."},
    [FG_CF_FALLBACKS] = {"floodgate_cluster_fallbacks_total", "counter",
                         "Switches of a cluster limiter to its fallback policy (Redis "
                         "unreachable, slow or failing)."},
    [FG_CF_RECOVERIES] = {"floodgate_cluster_recoveries_total", "counter",
                          "Switches of a cluster limiter back to the shared bucket in Redis."},
    [FG_CF_ROUNDTRIPS] = {"floodgate_cluster_roundtrips_total", "counter",
                          "Calls a cluster limiter made to Redis (leases, refunds, script "
                          "loads)."},
    [FG_CF_ERRORS] = {"floodgate_cluster_errors_total", "counter",
                      "Failed connects and calls to Redis of a cluster limiter."},
    [FG_CF_LEASED] = {"floodgate_cluster_leased_tokens_total", "counter",
                      "Tokens a cluster limiter took from the shared bucket in leases."},
    [FG_CF_REFUNDED] = {"floodgate_cluster_refunded_tokens_total", "counter",
                        "Unspent lease tokens a cluster limiter gave back to the shared "
                        "bucket."},
    [FG_CF_HELD] = {"floodgate_cluster_held_tokens", "gauge",
                    "Lease tokens a cluster limiter holds now: taken from the shared bucket, "
                    "not yet spent."},
};

static uint64_t fg_cluster_figure(const fg_cluster_stats *st, enum fg_cluster_fig f) {
    switch (f) {
    case FG_CF_MODE:
        return (uint64_t)st->mode;
    case FG_CF_FALLBACKS:
        return st->fallbacks;
    case FG_CF_RECOVERIES:
        return st->recoveries;
    case FG_CF_ROUNDTRIPS:
        return st->roundtrips;
    case FG_CF_ERRORS:
        return st->errors;
    case FG_CF_LEASED:
        return st->leased;
    case FG_CF_REFUNDED:
        return st->refunded;
    case FG_CF_HELD:
        return st->held;
    }
    return 0;
}

/* The cluster limiters' families, when any is registered: one series per
 * name, its limiters summed (fg_cluster_sum), so a reload that briefly
 * holds an old and a new limiter of a name never writes a series twice.
 * Under m->lock. */
static void fg_w_clusters(fg_metrics *m, struct fg_w *w) {
    size_t n = 0;
    size_t keyed = 0;
    for (size_t i = 0; i < m->nclusters; i++) {
        struct fg_cluster_entry *e = m->clusters[i];
        if (e->nlive > 0) {
            e->per_key = fg_cluster_sum(e, &e->sum); /* one reading each */
            keyed += e->per_key != 0;
            n++;
        }
    }
    if (n == 0)
        return;
    for (size_t f = 0; f < sizeof(fg_cluster_fams) / sizeof(fg_cluster_fams[0]); f++) {
        fg_w_head(w, fg_cluster_fams[f].name, fg_cluster_fams[f].type,
                  fg_cluster_fams[f].help);
        for (size_t i = 0; i < m->nclusters; i++) {
            if (m->clusters[i]->nlive == 0)
                continue;
            fg_w_str(w, fg_cluster_fams[f].name);
            fg_w_str(w, "{");
            fg_w_label(w, "limiter", m->clusters[i]->name, 1);
            fg_w_fmt(w, "} %" PRIu64 "\n",
                     fg_cluster_figure(&m->clusters[i]->sum, (enum fg_cluster_fig)f));
        }
    }
    fg_w_head(w, "floodgate_cluster_decisions_total", "counter",
              "A cluster limiter's decisions, by the mode that made them (cluster: from a "
              "lease of the shared bucket; fallback: by the fallback policy) and the "
              "decision.");
    for (size_t i = 0; i < m->nclusters; i++) {
        const fg_cluster_stats *st = &m->clusters[i]->sum;
        if (m->clusters[i]->nlive == 0)
            continue;
        const uint64_t v[2][2] = {{st->admitted, st->rejected},
                                  {st->fallback_admitted, st->fallback_rejected}};
        for (int mode = 0; mode < 2; mode++)
            for (int rej = 0; rej < 2; rej++) {
                fg_w_str(w, "floodgate_cluster_decisions_total{");
                fg_w_label(w, "limiter", m->clusters[i]->name, 1);
                fg_w_label(w, "mode", fg_mode_label[mode], 0);
                fg_w_label(w, "decision", rej ? "rejected" : "admitted", 0);
                fg_w_fmt(w, "} %" PRIu64 "\n", v[mode][rej]);
            }
    }
    if (keyed == 0)
        return;
    fg_w_head(w, "floodgate_cluster_keys", "gauge",
              "Keys a per-key cluster limiter holds in its table now (at most its max_keys).");
    for (size_t i = 0; i < m->nclusters; i++) {
        const struct fg_cluster_entry *e = m->clusters[i];
        if (e->nlive == 0 || !e->per_key)
            continue;
        fg_w_str(w, "floodgate_cluster_keys{");
        fg_w_label(w, "limiter", e->name, 1);
        fg_w_fmt(w, "} %" PRIu64 "\n", e->sum.keys);
    }
    fg_w_head(w, "floodgate_cluster_table_full_total", "counter",
              "New keys a per-key cluster limiter met with its table full, by what it did: "
              "rejected them, or admitted them unlimited.");
    for (size_t i = 0; i < m->nclusters; i++) {
        const struct fg_cluster_entry *e = m->clusters[i];
        if (e->nlive == 0 || !e->per_key)
            continue;
        for (int adm = 0; adm < 2; adm++) {
            fg_w_str(w, "floodgate_cluster_table_full_total{");
            fg_w_label(w, "limiter", e->name, 1);
            fg_w_label(w, "decision", adm ? "admitted" : "rejected", 0);
            fg_w_fmt(w, "} %" PRIu64 "\n", adm ? e->sum.full_admitted : e->sum.full_rejected);
        }
    }
}

/* Under m->lock. */
static void fg_prometheus_locked(fg_metrics *m, struct fg_w *w) {
    uint64_t now = fg_clock_read(&m->clock);
    fg_w_head(w, "floodgate_requests_total", "counter",
              "Requests by chain, route and how they ended (code: ok, handler_failed, or the "
              "rejection).");
    for (const struct fg_series *s = m->series; s != NULL; s = s->next) {
        uint64_t v[FG_M_LANES];
        fg_series_sum(s, v);
        for (unsigned l = L_OK; l <= L_OTHER; l++) {
            if (v[l] == 0 && l > L_FAILED)
                continue;
            const char *code = l == L_OK       ? "ok"
                               : l == L_FAILED ? "handler_failed"
                               : l == L_OTHER  ? "other"
                                               : fg_outcome_name(fg_lane_code(l));
            fg_w_series_labels(w, "floodgate_requests_total", s);
            fg_w_label(w, "decision", l <= L_FAILED ? "admitted" : "rejected", 0);
            fg_w_label(w, "code", code, 0);
            fg_w_fmt(w, "} %" PRIu64 "\n", v[l]);
        }
    }
    fg_w_head(w, "floodgate_request_delays_total", "counter",
              "Admitted requests a stage made wait (a smoothing limiter, an injected delay).");
    for (const struct fg_series *s = m->series; s != NULL; s = s->next) {
        uint64_t v[FG_M_LANES];
        fg_series_sum(s, v);
        fg_w_series_labels(w, "floodgate_request_delays_total", s);
        fg_w_fmt(w, "} %" PRIu64 "\n", v[L_DELAYED]);
    }
    fg_w_head(w, "floodgate_request_delay_seconds_total", "counter",
              "Total time admitted requests were made to wait.");
    for (const struct fg_series *s = m->series; s != NULL; s = s->next) {
        uint64_t v[FG_M_LANES];
        fg_series_sum(s, v);
        fg_w_series_labels(w, "floodgate_request_delay_seconds_total", s);
        fg_w_str(w, "} ");
        fg_w_double(w, (double)v[L_DELAY_NS] / 1e9);
        fg_w_str(w, "\n");
    }
    fg_w_head(w, "floodgate_request_duration_seconds", "histogram",
              "Latency of requests that reached their handler, by chain and route.");
    for (const struct fg_series *s = m->series; s != NULL; s = s->next) {
        fg_histogram_reset(m->scratch);
        (void)fg_histogram_merge(m->scratch, s->latency);
        fg_w_histogram(w, "floodgate_request_duration_seconds", m->scratch, s->chain,
                       s->route);
    }
    fg_w_head(w, "floodgate_chain_request_duration_seconds", "histogram",
              "Latency of requests that reached their handler, by chain (all routes merged).");
    for (const struct fg_series *s = m->series; s != NULL; s = s->next) {
        int seen = 0; /* each chain once: at its first series */
        for (const struct fg_series *t = m->series; t != s && !seen; t = t->next)
            seen = strcmp(t->chain, s->chain) == 0;
        if (seen)
            continue;
        fg_histogram_reset(m->chain_scratch);
        for (const struct fg_series *t = s; t != NULL; t = t->next)
            if (strcmp(t->chain, s->chain) == 0)
                (void)fg_histogram_merge(m->chain_scratch, t->latency);
        fg_w_histogram(w, "floodgate_chain_request_duration_seconds", m->chain_scratch,
                       s->chain, NULL);
    }
    fg_w_head(w, "floodgate_stage_rejections_total", "counter",
              "Requests each stage rejected, by stage name and code.");
    for (size_t i = 0; i < FG_M_STAGE_SLOTS; i++) {
        const struct fg_stage_entry *e = &m->stages[i];
        if (fg__load_u64(&e->state) != 2)
            continue;
        for (unsigned l = L_REJ0; l <= L_OTHER; l++) {
            uint64_t n = fg__load_u64(&e->count[l]);
            if (n == 0)
                continue;
            fg_w_str(w, "floodgate_stage_rejections_total{");
            fg_w_label(w, "stage", e->name, 1);
            fg_w_label(w, "code", l == L_OTHER ? "other" : fg_outcome_name(fg_lane_code(l)),
                       0);
            fg_w_fmt(w, "} %" PRIu64 "\n", n);
        }
    }
    fg_w_head(w, "floodgate_breaker_state", "gauge",
              "A breaker's state as last changed: 0 closed, 1 open, 2 half-open.");
    for (size_t i = 0; i < m->nbreakers; i++) {
        fg_w_str(w, "floodgate_breaker_state{");
        fg_w_label(w, "breaker", m->breakers[i].name, 1);
        fg_w_fmt(w, "} %u\n", m->breakers[i].state);
    }
    fg_w_head(w, "floodgate_breaker_transitions_total", "counter",
              "Breaker state changes, by breaker, from and to.");
    for (size_t i = 0; i < m->nbreakers; i++)
        for (unsigned f = 0; f < 3; f++)
            for (unsigned t = 0; t < 3; t++) {
                if (m->breakers[i].moves[f][t] == 0)
                    continue;
                fg_w_str(w, "floodgate_breaker_transitions_total{");
                fg_w_label(w, "breaker", m->breakers[i].name, 1);
                fg_w_label(w, "from", fg_state_label[f], 0);
                fg_w_label(w, "to", fg_state_label[t], 0);
                fg_w_fmt(w, "} %" PRIu64 "\n", m->breakers[i].moves[f][t]);
            }
    fg_w_clusters(m, w);
    fg_w_head(
        w, "floodgate_config_reloads_total", "counter",
        "Config loads, by result (ok, or error: rejected, the old config kept serving).");
    fg_w_fmt(w, "floodgate_config_reloads_total{result=\"ok\"} %" PRIu64 "\n", m->reloads_ok);
    fg_w_fmt(w, "floodgate_config_reloads_total{result=\"error\"} %" PRIu64 "\n",
             m->reloads_failed);
    fg_w_head(w, "floodgate_config_info", "gauge", "The version of the config serving now.");
    fg_w_str(w, "floodgate_config_info{");
    fg_w_label(w, "version", m->version, 1);
    fg_w_str(w, "} 1\n");
    int any_slo = 0;
    for (const struct fg_series *s = m->series; s != NULL; s = s->next)
        any_slo |= fg__load_u64(&s->slo_on) != 0;
    if (!any_slo)
        return;
    fg_w_head(
        w, "floodgate_slo_burn_rate", "gauge",
        "How fast a route spends its error budget: the bad share over the allowed share, "
        "over the fast (a twelfth) and slow (whole) SLO window.");
    for (const struct fg_series *s = m->series; s != NULL; s = s->next) {
        if (!fg__load_u64(&s->slo_on))
            continue;
        fg_slo_status st;
        fg_slo_status_of(s, now, &st);
        for (int obj = 0; obj < 2; obj++) {
            if (!(obj == 0 ? st.has_errors : st.has_latency))
                continue;
            for (int fast = 0; fast < 2; fast++) {
                fg_w_series_labels(w, "floodgate_slo_burn_rate", s);
                fg_w_label(w, "objective", obj == 0 ? "errors" : "latency", 0);
                fg_w_label(w, "window", fast ? "fast" : "slow", 0);
                fg_w_str(w, "} ");
                fg_w_double(w, obj == 0
                                   ? (fast ? st.error_burn_fast : st.error_burn_slow)
                                   : (fast ? st.latency_burn_fast : st.latency_burn_slow));
                fg_w_str(w, "\n");
            }
        }
    }
    fg_w_head(w, "floodgate_slo_compliant", "gauge",
              "1 when the route meets its objective over the SLO window, else 0.");
    for (const struct fg_series *s = m->series; s != NULL; s = s->next) {
        if (!fg__load_u64(&s->slo_on))
            continue;
        fg_slo_status st;
        fg_slo_status_of(s, now, &st);
        for (int obj = 0; obj < 2; obj++) {
            if (!(obj == 0 ? st.has_errors : st.has_latency))
                continue;
            fg_w_series_labels(w, "floodgate_slo_compliant", s);
            fg_w_label(w, "objective", obj == 0 ? "errors" : "latency", 0);
            fg_w_fmt(w, "} %d\n", obj == 0 ? st.error_ok : st.latency_ok);
        }
    }
}

int fg_metrics_prometheus(fg_metrics *m, char *buf, size_t cap, size_t *len) {
    if (m == NULL || len == NULL || (buf == NULL && cap != 0))
        return FG_EINVAL;
    struct fg_w w = {buf, cap, 0};
    pthread_mutex_lock(&m->lock);
    fg_prometheus_locked(m, &w);
    pthread_mutex_unlock(&m->lock);
    *len = w.len;
    if (w.len >= cap) {
        if (cap > 0)
            buf[cap - 1] = '\0';
        return FG_ETOOLONG;
    }
    buf[w.len] = '\0';
    return 0;
}

/* ---- JSON ---------------------------------------------------------------------------------
 */

static int fg_jset(json_t *o, const char *k, json_t *v) {
    return v != NULL && json_object_set_new(o, k, v) == 0 ? 0 : -1;
}

static json_t *fg_json_secs(uint64_t ns) { return json_real((double)ns / 1e9); }

/* One cluster limiter name's figures, appended to arr; 0 or -1 (no memory).
 * Under m->lock. */
static int fg_json_cluster(const struct fg_cluster_entry *e, uint64_t now, json_t *arr) {
    fg_cluster_stats st;
    int per_key = fg_cluster_sum(e, &st);
    json_t *o = json_object();
    int bad = json_array_append_new(arr, o) != 0 || o == NULL;
    if (o == NULL)
        return -1;
    bad |= fg_jset(o, "limiter", json_string(e->name));
    bad |= fg_jset(o, "mode", json_string(fg_mode_label[st.mode != FG_CLUSTER_MODE_CLUSTER]));
    static const char *const keys[] = {"admitted",
                                       "rejected",
                                       "fallback_admitted",
                                       "fallback_rejected",
                                       "roundtrips",
                                       "errors",
                                       "leased",
                                       "refunded",
                                       "held",
                                       "fallbacks",
                                       "recoveries"};
    const uint64_t v[] = {st.admitted,
                          st.rejected,
                          st.fallback_admitted,
                          st.fallback_rejected,
                          st.roundtrips,
                          st.errors,
                          st.leased,
                          st.refunded,
                          st.held,
                          st.fallbacks,
                          st.recoveries};
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
        bad |= fg_jset(o, keys[k], json_integer((json_int_t)v[k]));
    if (per_key) {
        bad |= fg_jset(o, "keys", json_integer((json_int_t)st.keys));
        bad |= fg_jset(o, "full_rejected", json_integer((json_int_t)st.full_rejected));
        bad |= fg_jset(o, "full_admitted", json_integer((json_int_t)st.full_admitted));
    }
    if (e->has_event) {
        /* The reason is the limiter's text: kept to ASCII, so it is always
         * a valid JSON string. */
        char reason[sizeof(e->last.reason)];
        size_t n = 0;
        for (; n < sizeof(reason) - 1 && e->last.reason[n] != '\0'; n++) {
            char c = e->last.reason[n];
            if (c < 0x20 || c >= 0x7f)
                c = '?';
            reason[n] = c;
        }
        reason[n] = '\0';
        json_t *ch = json_object();
        bad |= fg_jset(o, "last_change", ch);
        if (ch != NULL) {
            bad |=
                fg_jset(ch, "from",
                        json_string(fg_mode_label[e->last.from != FG_CLUSTER_MODE_CLUSTER]));
            bad |= fg_jset(ch, "to",
                           json_string(fg_mode_label[e->last.to != FG_CLUSTER_MODE_CLUSTER]));
            bad |= fg_jset(ch, "reason", json_string(reason));
            bad |= fg_jset(ch, "seconds_ago",
                           fg_json_secs(now > e->last.at_ns ? now - e->last.at_ns : 0));
        }
    }
    return bad ? -1 : 0;
}

/* Under m->lock. */
static json_t *fg_json_locked(fg_metrics *m) {
    uint64_t now = fg_clock_read(&m->clock);
    json_t *root = json_object();
    json_t *series = json_array();
    int bad = root == NULL || series == NULL || fg_jset(root, "series", series) != 0;
    if (bad) {
        json_decref(series);
        json_decref(root);
        return NULL;
    }
    bad |= fg_jset(root, "version", json_string(m->version));
    json_t *rl = json_object();
    bad |= fg_jset(root, "reloads", rl);
    if (rl != NULL) {
        bad |= fg_jset(rl, "ok", json_integer((json_int_t)m->reloads_ok));
        bad |= fg_jset(rl, "error", json_integer((json_int_t)m->reloads_failed));
    }
    for (const struct fg_series *s = m->series; s != NULL && !bad; s = s->next) {
        json_t *o = json_object();
        json_t *adm = json_object();
        json_t *rej = json_object();
        json_t *lat = json_object();
        bad |= json_array_append_new(series, o) != 0 || o == NULL;
        if (bad) {
            json_decref(adm);
            json_decref(rej);
            json_decref(lat);
            break;
        }
        bad |= fg_jset(o, "chain", json_string(s->chain));
        bad |= fg_jset(o, "route", json_string(s->route));
        bad |= fg_jset(o, "admitted", adm);
        bad |= fg_jset(o, "rejected", rej);
        bad |= fg_jset(o, "latency", lat);
        uint64_t v[FG_M_LANES];
        fg_series_sum(s, v);
        if (adm != NULL) {
            bad |= fg_jset(adm, "ok", json_integer((json_int_t)v[L_OK]));
            bad |= fg_jset(adm, "handler_failed", json_integer((json_int_t)v[L_FAILED]));
        }
        for (unsigned l = L_REJ0; l <= L_OTHER && rej != NULL; l++) {
            if (v[l] == 0)
                continue;
            const char *code = l == L_OTHER ? "other" : fg_outcome_name(fg_lane_code(l));
            bad |= fg_jset(rej, code, json_integer((json_int_t)v[l]));
        }
        bad |= fg_jset(o, "delayed", json_integer((json_int_t)v[L_DELAYED]));
        bad |= fg_jset(o, "delay_seconds", fg_json_secs(v[L_DELAY_NS]));
        fg_histogram_stats hs;
        fg_histogram_reset(m->scratch);
        (void)fg_histogram_merge(m->scratch, s->latency);
        (void)fg_histogram_snapshot(m->scratch, &hs);
        if (lat != NULL) {
            bad |= fg_jset(lat, "count", json_integer((json_int_t)hs.count));
            bad |= fg_jset(lat, "sum_seconds", fg_json_secs(hs.sum_ns));
            bad |= fg_jset(lat, "p50_seconds", fg_json_secs(hs.p50_ns));
            bad |= fg_jset(lat, "p90_seconds", fg_json_secs(hs.p90_ns));
            bad |= fg_jset(lat, "p99_seconds", fg_json_secs(hs.p99_ns));
            bad |= fg_jset(lat, "p999_seconds", fg_json_secs(hs.p999_ns));
        }
        if (fg__load_u64(&s->slo_on)) {
            fg_slo_status st;
            fg_slo_status_of(s, now, &st);
            json_t *j = json_object();
            bad |= fg_jset(o, "slo", j);
            if (j != NULL) {
                bad |= fg_jset(j, "window_seconds", fg_json_secs(st.window_ns));
                bad |= fg_jset(j, "requests", json_integer((json_int_t)st.requests));
                bad |= fg_jset(j, "errors", json_integer((json_int_t)st.errors));
                bad |= fg_jset(j, "handled", json_integer((json_int_t)st.handled));
                bad |= fg_jset(j, "slow", json_integer((json_int_t)st.slow));
                if (st.has_errors) {
                    bad |= fg_jset(j, "error_burn_fast", json_real(st.error_burn_fast));
                    bad |= fg_jset(j, "error_burn_slow", json_real(st.error_burn_slow));
                    bad |= fg_jset(j, "error_ok", json_boolean(st.error_ok));
                }
                if (st.has_latency) {
                    bad |= fg_jset(j, "latency_burn_fast", json_real(st.latency_burn_fast));
                    bad |= fg_jset(j, "latency_burn_slow", json_real(st.latency_burn_slow));
                    bad |= fg_jset(j, "latency_ok", json_boolean(st.latency_ok));
                }
            }
        }
    }
    json_t *stages = json_array();
    bad |= fg_jset(root, "stage_rejections", stages);
    for (size_t i = 0; i < FG_M_STAGE_SLOTS && stages != NULL && !bad; i++) {
        const struct fg_stage_entry *e = &m->stages[i];
        if (fg__load_u64(&e->state) != 2)
            continue;
        for (unsigned l = L_REJ0; l <= L_OTHER; l++) {
            uint64_t n = fg__load_u64(&e->count[l]);
            if (n == 0)
                continue;
            json_t *o = json_object();
            bad |= json_array_append_new(stages, o) != 0 || o == NULL;
            if (o == NULL)
                break;
            bad |= fg_jset(o, "stage", json_string(e->name));
            bad |= fg_jset(
                o, "code",
                json_string(l == L_OTHER ? "other" : fg_outcome_name(fg_lane_code(l))));
            bad |= fg_jset(o, "count", json_integer((json_int_t)n));
        }
    }
    json_t *brk = json_array();
    bad |= fg_jset(root, "breakers", brk);
    for (size_t i = 0; i < m->nbreakers && brk != NULL && !bad; i++) {
        json_t *o = json_object();
        json_t *moves = json_array();
        bad |= json_array_append_new(brk, o) != 0 || o == NULL;
        if (o == NULL) {
            json_decref(moves);
            break;
        }
        bad |= fg_jset(o, "breaker", json_string(m->breakers[i].name));
        bad |= fg_jset(o, "state", json_string(fg_state_label[m->breakers[i].state]));
        bad |= fg_jset(o, "transitions", moves);
        for (unsigned f = 0; f < 3 && moves != NULL; f++)
            for (unsigned t = 0; t < 3; t++) {
                if (m->breakers[i].moves[f][t] == 0)
                    continue;
                json_t *x = json_object();
                bad |= json_array_append_new(moves, x) != 0 || x == NULL;
                if (x == NULL)
                    break;
                bad |= fg_jset(x, "from", json_string(fg_state_label[f]));
                bad |= fg_jset(x, "to", json_string(fg_state_label[t]));
                bad |=
                    fg_jset(x, "count", json_integer((json_int_t)m->breakers[i].moves[f][t]));
            }
    }
    json_t *cls = json_array();
    bad |= fg_jset(root, "clusters", cls);
    for (size_t i = 0; i < m->nclusters && cls != NULL && !bad; i++)
        if (m->clusters[i]->nlive > 0)
            bad |= fg_json_cluster(m->clusters[i], now, cls);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return root;
}

int fg_metrics_json(fg_metrics *m, char *buf, size_t cap, size_t *len) {
    if (m == NULL || len == NULL || (buf == NULL && cap != 0))
        return FG_EINVAL;
    pthread_mutex_lock(&m->lock);
    json_t *root = fg_json_locked(m);
    pthread_mutex_unlock(&m->lock);
    if (root == NULL)
        return FG_ENOMEM;
    size_t need = json_dumpb(root, NULL, 0, JSON_COMPACT);
    int rc = 0;
    if (need == 0) {
        rc = FG_ENOMEM;
    } else if (need >= cap) {
        rc = FG_ETOOLONG;
        if (cap > 0)
            buf[0] = '\0';
    } else {
        (void)json_dumpb(root, buf, cap, JSON_COMPACT);
        buf[need] = '\0';
    }
    json_decref(root);
    *len = need;
    return rc;
}
