/*
 * floodgate/metrics.h - what the middleware decided and what handlers
 * cost: request counters, latency histograms and SLOs per chain and route,
 * rejections per stage, breaker transitions, cluster limiters' modes and
 * decisions, and reloads, exported as Prometheus text or a JSON snapshot.
 *
 * A fg_metrics is a registry. Requests reach it through a metrics stage
 * (fg_stage_metrics) placed first in a chain: its exit hook sees how every
 * request ended (the route the router chose, admitted or rejected, by which
 * stage and why, the handler's result, the latency and any wait a stage
 * imposed) and counts it in the series of its (chain, route). A runtime
 * owns one registry (fg_runtime_metrics) and every config it loads puts a
 * metrics stage first in its chain, so nothing needs wiring.
 *
 * Cost: one cache line of per-thread counters and one histogram record per
 * request, all lock-free and allocation-free; a rejection adds a lookup of
 * the rejecting stage's name. Reading folds the shards; a counter read
 * never goes backwards.
 *
 * Series survive reloads: a (chain, route) series, or a stage's rejection
 * counters, are found by name, so a route that stays in the new config
 * keeps counting from where it was. A series no chain uses any more stops
 * being exported once the last snapshot using it is freed.
 *
 * docs/observability.md lists every metric, its type and labels.
 */
#ifndef FLOODGATE_METRICS_H
#define FLOODGATE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "breaker.h"
#include "clock.h"
#include "common.h"
#include "router.h"
#include "runtime.h"
#include "stage.h"

FG_BEGIN_DECLS

/* A metrics registry (opaque): fg_metrics_new, or a runtime's own. */
typedef struct fg_metrics fg_metrics;

#define FG_METRICS_NAME_MAX                                                                   \
    128                             /* at most this many bytes in a chain, route, stage or    \
                                       breaker label (a longer stage name is cut) */
#define FG_METRICS_VERSION_MAX 256  /* bytes of the config version label kept */
#define FG_METRICS_MAX_SERIES  4096 /* (chain, route) series alive at once */
#define FG_METRICS_MAX_STAGES  1024 /* stage names counted as rejecting */

/*
 * fg_metrics_new - an empty registry reading `clock` (NULL: monotonic) for
 * SLO windows and exports.
 *
 * Returns: 0 and *out; FG_EINVAL for NULL out; FG_ENOMEM.
 * Ownership: copies *clock (its arg must outlive the registry); the caller
 * owns *out (fg_metrics_free). Thread-safety: MT-safe.
 */
FG_API int fg_metrics_new(const fg_clock *clock, fg_metrics **out);

/*
 * fg_metrics_free - free a registry; NULL is ignored.
 * Thread-safety: not thread-safe: every metrics stage made on it must be
 * gone (their chains freed) and no export may be running.
 */
FG_API void fg_metrics_free(fg_metrics *metrics);

/*
 * fg_runtime_metrics - the registry of a runtime: every config loaded into
 * it counts here (its chain begins with a metrics stage labelled "main"),
 * and so do its loads and its breakers' changes; its cluster limiters
 * (floodgate/cluster.h) are exported from here too (floodgate_cluster_*).
 * Returns NULL for NULL. Ownership: the runtime's (freed with it).
 * Thread-safety: MT-safe.
 */
FG_API fg_metrics *fg_runtime_metrics(fg_runtime *rt);

/* ---- SLOs --------------------------------------------------------------------------- */

/*
 * A service-level objective for one route: a latency objective ("at least
 * `latency_target` of requests finish within latency_ns", e.g. 0.99 and
 * 200 ms for p99 <= 200 ms) and/or an error-rate objective ("at most
 * `error_rate` of requests fail", e.g. 0.001). Both are judged over
 * window_ns (the slow window); burn rates are also given over the last
 * twelfth of it (the fast window: 5 minutes of an hour, as in the Google
 * SRE workbook's multi-window alerts).
 *
 * Counted: every request of the route that reached its handler (latency
 * objective), and every request of the route (error objective). Errors are
 * handler failures and the rejections a client sees as the service failing:
 * timed out, breaker open, overloaded, fault injected. Rate-limited, no
 * route, canceled and other rejections are the client's, not errors.
 */
typedef struct fg_slo_options {
    uint64_t latency_ns;   /* 0: no latency objective */
    double latency_target; /* share within latency_ns, in (0, 1); 0 means 0.99 */
    double error_rate;     /* allowed share of errors, in (0, 1); 0: no error objective */
    uint64_t window_ns;    /* the slow window; 0 means 1 hour; >= 60 ns */
} fg_slo_options;

/* Defaults: no objective declared. */
#define FG_SLO_OPTIONS_INIT                                                                   \
    { 0, 0, 0, 0 }

/* Where an SLO stands now. */
typedef struct fg_slo_status {
    int has_latency, has_errors;    /* which objectives are declared */
    uint64_t window_ns;             /* slow window; the fast one is a twelfth of it */
    uint64_t requests, errors;      /* in the slow window */
    uint64_t handled, slow;         /* reached the handler; of those, over latency_ns */
    double error_ratio, slow_ratio; /* errors / requests, slow / handled; 0 with no traffic */
    /* Burn rate: the bad share divided by the allowed share (1.0 spends the
     * budget exactly at the end of the window; 14.4 over the fast window is
     * the workbook's page threshold). 0 with no traffic. */
    double error_burn_fast, error_burn_slow;     /* errors: fast and slow window */
    double latency_burn_fast, latency_burn_slow; /* slow requests: fast and slow window */
    /* 1 when the slow window meets the objective (or has no traffic). */
    int error_ok, latency_ok;
} fg_slo_status;

/*
 * fg_metrics_set_slo - declare (or change, or with opts NULL remove) the
 * SLO of `route` in `chain` ("" is the no-route series). It applies at once
 * to the requests of running metrics stages and of stages made later. The
 * SLO belongs to the route's series: declaring one for a route no stage
 * uses yet creates the series, and the SLO goes with the series when the
 * last stage using it is freed. History is kept across a change unless
 * window_ns changes (then it starts over).
 *
 * Returns: 0; FG_EINVAL for NULL metrics, chain or route, or options out of
 * range (a target or rate outside (0, 1), a window under 60 ns, neither
 * objective set); FG_ETOOLONG for a name over FG_METRICS_NAME_MAX;
 * FG_ETOOMANY beyond FG_METRICS_MAX_SERIES; FG_ENOMEM.
 * Thread-safety: MT-safe.
 */
FG_API int fg_metrics_set_slo(fg_metrics *metrics, const char *chain, const char *route,
                              const fg_slo_options *opts);

/*
 * fg_metrics_slo - the status of the SLO of `route` in `chain` at now_ns
 * (on the registry's clock).
 *
 * Returns: 0 and *out; FG_ENOTFOUND when the route has no SLO; FG_EINVAL for
 * NULL arguments. Thread-safety: MT-safe.
 */
FG_API int fg_metrics_slo(fg_metrics *metrics, const char *chain, const char *route,
                          uint64_t now_ns, fg_slo_status *out);

/* ---- the stage ------------------------------------------------------------------------ */

/*
 * fg_stage_metrics - a stage that counts every request in the series of
 * (chain_label, route): put it first in the chain, so that its exit sees
 * the final outcome and its latency covers every stage and the handler.
 * `router` (may be NULL) is the chain's router: each of its routes gets its
 * series now, so requests never allocate; a request no route matched, or
 * in a chain without a router, counts in the route "" series.
 *
 * Returns: 0 and *out; FG_EINVAL for NULL metrics, chain_label or out;
 * FG_ETOOLONG for a name or label over its bound; FG_ETOOMANY beyond
 * FG_METRICS_MAX_SERIES; FG_ENOMEM.
 * Ownership: borrows metrics (it must outlive the stage) and router (it
 * must outlive the stage: the stage keys its series by the route names the
 * router writes into ctx->route); copies the label and name (NULL means
 * "metrics"); the caller owns one reference to *out.
 * Thread-safety: MT-safe.
 */
FG_API int fg_stage_metrics(fg_metrics *metrics, const fg_router *router,
                            const char *chain_label, const char *name, fg_stage **out);

/* ---- events from outside a chain ------------------------------------------------------ */

/*
 * fg_metrics_breaker_event - count a breaker's state change under its
 * name (a fg_breaker_listener or fg_runtime_breaker_fn can forward here;
 * a runtime does it for the breakers its configs make).
 * Returns: 0; FG_EINVAL for NULL; FG_ETOOLONG; FG_ETOOMANY beyond 256
 * breaker names; FG_ENOMEM. Thread-safety: MT-safe; takes a mutex.
 */
FG_API int fg_metrics_breaker_event(fg_metrics *metrics, const char *breaker,
                                    const fg_breaker_event *event);

/*
 * fg_metrics_reload - count a config load: ok (1) or rejected (0), and the
 * version now serving (copied; NULL keeps the previous one). A runtime
 * does this for each of its loads.
 * Returns: 0; FG_EINVAL for NULL metrics. Thread-safety: MT-safe.
 */
FG_API int fg_metrics_reload(fg_metrics *metrics, int ok, const char *version);

/* ---- reading ------------------------------------------------------------------------- */

/*
 * fg_metrics_prometheus - write every metric in the Prometheus text
 * exposition format (version 0.0.4): HELP and TYPE lines, label values
 * escaped, histograms as _bucket{le=...}/_sum/_count in seconds.
 *
 * Returns: 0 and *len the bytes written (plus a NUL, not counted);
 * FG_ETOOLONG when cap is too small, with *len the size needed (call again
 * with a buffer of *len + 1); FG_EINVAL for NULL metrics or len, or a NULL
 * buf with a non-zero cap. Nothing is allocated.
 * Thread-safety: MT-safe; exports are serialised by a mutex, requests are
 * never blocked.
 */
FG_API int fg_metrics_prometheus(fg_metrics *metrics, char *buf, size_t cap, size_t *len);

/*
 * fg_metrics_json - the same figures as a JSON object (schema in
 * docs/observability.md), with quantiles (p50, p90, p99, p999) instead of
 * buckets and the SLO statuses.
 *
 * Returns: as fg_metrics_prometheus; FG_ENOMEM (jansson builds the
 * document; its allocations do not go through fg_set_alloc_funcs).
 * Thread-safety: MT-safe.
 */
FG_API int fg_metrics_json(fg_metrics *metrics, char *buf, size_t cap, size_t *len);

/* The figures of one (chain, route) series. */
typedef struct fg_route_stats {
    uint64_t ok, failed;          /* handler ran: succeeded, failed */
    uint64_t rejected;            /* all rejections */
    uint64_t rejected_by_code[9]; /* by outcome: index -(code) - 100 for
                                     FG_ELIMITED..FG_EREJECTED */
    uint64_t other;               /* any other code */
    uint64_t delayed;             /* admitted with a wait (ctx->delay_ns > 0) */
    uint64_t delay_ns;            /* total of those waits */
    /* Requests whose latency was recorded, and the sum of those latencies in ns. */
    uint64_t latency_count, latency_sum_ns;
    /* Latency quantiles (p50, p90, p99, p99.9) in ns. */
    uint64_t p50_ns, p90_ns, p99_ns, p999_ns;
} fg_route_stats;

/*
 * fg_metrics_route - the figures of one series ("" route: no route).
 * Returns: 0 and *out; FG_ENOTFOUND; FG_EINVAL for NULL. Thread-safety:
 * MT-safe.
 */
FG_API int fg_metrics_route(fg_metrics *metrics, const char *chain, const char *route,
                            fg_route_stats *out);

/*
 * fg_metrics_stage_rejections - how many requests the stages named `stage`
 * rejected with `code` (0: with any code), in every chain. Outcome codes
 * (FG_ELIMITED .. FG_EREJECTED) are counted one by one; every other code is
 * counted together as "other", so any non-outcome code returns that total.
 * Returns the count (0 when unknown). Thread-safety: MT-safe.
 */
FG_API uint64_t fg_metrics_stage_rejections(fg_metrics *metrics, const char *stage, int code);

FG_END_DECLS

#endif /* FLOODGATE_METRICS_H */
