/*
 * tests/check_metrics.c - the metrics registry (floodgate/metrics.h) seen
 * through real chains: a metrics stage first, scripted stages that reject
 * with a chosen code or make a request wait, a router with three routes,
 * and handlers that advance a fake clock, so every count and latency is
 * known exactly.
 *
 * What is checked: per-route counters (ok, failed, each rejection code,
 * other, delays) and latency quantiles (the bucket midpoint the histogram
 * header promises), rejections per stage name and code, exact counts from
 * two request threads while a reader never sees a counter go backwards,
 * series that survive a config reload (and one that goes with its last
 * snapshot), the runtime's own registry (loads, version, breakers, cluster
 * limiters in fallback mode, with an old and a new limiter of one name
 * alive at once during a reload), SLOs
 * on scripted minute-by-minute streams against a model of the windows,
 * and both exports parsed back (Prometheus line by line, JSON with
 * jansson) with hostile label values.
 *
 * The tcase "promises" holds tests of header promises found broken while
 * this suite was written, each quoting the header: an SLO declared before
 * its stage, names of exactly FG_METRICS_NAME_MAX bytes, a long config
 * version, and burn rates for a budget under a billionth (all fixed).
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <check.h>
#include <floodgate.h>
#include <jansson.h>

#include "helpers.h"
#include "suites.h"

#define MS  FG_NS_PER_MS
#define SEC FG_NS_PER_S
#define MIN (UINT64_C(60) * SEC)
#define T0  (UINT64_C(600) * MIN) /* 10 h: a minute boundary, far from 0 */

/* ---- scripted stages and handlers ------------------------------------------------------- */

/*
 * What the next request on this thread does: which stage (by name) rejects
 * it and with what code, which stage makes it wait and how long, how long
 * the handler takes (it advances the fake clock) and what it returns.
 */
typedef struct plan {
    const char *reject_at;
    int code;
    const char *delay_at;
    uint64_t delay_ns;
    uint64_t latency_ns;
    int fail;
} plan;

static _Thread_local plan tl_plan;

/* A scripted stage: its state is its name (a static string). */
static int script_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    const char *me = state;
    (void)slot;
    if (tl_plan.delay_at != NULL && strcmp(tl_plan.delay_at, me) == 0)
        ctx->delay_ns = tl_plan.delay_ns;
    if (tl_plan.reject_at != NULL && strcmp(tl_plan.reject_at, me) == 0)
        return tl_plan.code;
    return 0;
}

static const fg_stage_ops script_ops = {"script", script_enter, NULL, NULL};

static fg_stage *script_stage(const char *name) {
    fg_stage *s = NULL;
    ck_assert_int_eq(fg_stage_new(&script_ops, (void *)name, name, &s), 0);
    return s;
}

/* The handler: takes tl_plan.latency_ns on the fake clock at arg, returns tl_plan.fail. */
static int h_script(fg_ctx *ctx, void *arg) {
    (void)ctx;
    if (tl_plan.latency_ns != 0)
        fg_fake_clock_advance(arg, tl_plan.latency_ns);
    return tl_plan.fail;
}

/* ---- the rig: metrics, gate, pacer, router (users, orders + route-gate, pay) ------------ */

typedef struct rig {
    fg_fake_clock *fake;
    fg_metrics *m;
    fg_chain *chain;
} rig;

static const char *const default_routes[3] = {"users", "orders", "pay"};

static void rig_init_named(rig *r, const char *label, const char *gate,
                           const char *const names[3]) {
    static const char *const paths[3] = {"/users", "/orders", "/pay"};
    static const fg_path_kind kinds[3] = {FG_PATH_EXACT, FG_PATH_PREFIX, FG_PATH_EXACT};
    memset(r, 0, sizeof(*r));
    ck_assert_int_eq(fg_fake_clock_new(T0, &r->fake), 0);
    fg_clock clk = fg_fake_clock_as_clock(r->fake);
    ck_assert_int_eq(fg_metrics_new(&clk, &r->m), 0);
    fg_router *router = NULL;
    ck_assert_int_eq(fg_router_new(&router), 0);
    for (int i = 0; i < 3; i++) {
        fg_stage *rs[1] = {NULL};
        fg_route_target t = {NULL, 0, h_script, r->fake, NULL, 0};
        if (i == 1) {
            rs[0] = script_stage("route-gate");
            t.stages = rs;
            t.nstages = 1;
        }
        fg_route_spec spec = FG_ROUTE_SPEC_INIT;
        spec.name = names[i];
        spec.path_kind = kinds[i];
        spec.path = paths[i];
        spec.targets = &t;
        spec.ntargets = 1;
        fg_parse_error err;
        memset(&err, 0, sizeof(err));
        ck_assert_msg(fg_router_add(router, &spec, &err) == 0, "route %d: %s", i, err.message);
    }
    ck_assert_int_eq(fg_router_build(router), 0);
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.name = "rig";
    co.clock = clk;
    ck_assert_int_eq(fg_chain_new(&co, &r->chain), 0);
    fg_stage *ms = NULL;
    ck_assert_int_eq(fg_stage_metrics(r->m, router, label, NULL, &ms), 0);
    ck_assert_str_eq(fg_stage_name(ms), "metrics");
    ck_assert_int_eq(fg_chain_use(r->chain, ms), 0);
    ck_assert_int_eq(fg_chain_use(r->chain, script_stage(gate)), 0);
    ck_assert_int_eq(fg_chain_use(r->chain, script_stage("pacer")), 0);
    fg_stage *rst = NULL;
    ck_assert_int_eq(fg_stage_router(router, "router", &rst), 0);
    ck_assert_int_eq(fg_chain_use(r->chain, rst), 0);
}

static void rig_init(rig *r) { rig_init_named(r, "api", "gate", default_routes); }

static void rig_free(rig *r) {
    fg_chain_free(r->chain); /* first: its metrics stage uses the registry */
    fg_metrics_free(r->m);
    fg_fake_clock_free(r->fake);
}

/* One request along path, as p says; returns what fg_chain_call returned. */
static int rig_send(const rig *r, const char *path, plan p) {
    fg_ctx ctx;
    tl_plan = p;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", path), 0);
    int rc = fg_chain_call(r->chain, &ctx, NULL, NULL);
    memset(&tl_plan, 0, sizeof(tl_plan));
    return rc;
}

static plan p_ok(uint64_t latency_ns) { return (plan){NULL, 0, NULL, 0, latency_ns, 0}; }
static plan p_fail(uint64_t latency_ns, int code) {
    return (plan){NULL, 0, NULL, 0, latency_ns, code};
}
static plan p_reject(const char *stage, int code) {
    return (plan){stage, code, NULL, 0, 0, 0};
}

static fg_route_stats route_stats_at(fg_metrics *m, const char *chain, const char *route,
                                     int line) {
    fg_route_stats st;
    int rc = fg_metrics_route(m, chain, route, &st);
    ck_assert_msg(rc == 0, "line %d: fg_metrics_route(%s, %s): %s", line, chain, route,
                  fg_err_name(rc));
    return st;
}

/* The figures of a series that must exist. */
#define route_stats(m, chain, route) route_stats_at((m), (chain), (route), __LINE__)

/* A breaker's state change, as a breaker listener would forward it. */
static fg_breaker_event brk_ev(fg_breaker_state_kind from, fg_breaker_state_kind to,
                               fg_breaker_reason reason) {
    fg_breaker_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.from = from;
    ev.to = to;
    ev.reason = reason;
    ev.at_ns = T0;
    ev.generation = 1;
    return ev;
}

/* ---- exact latency expectations --------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* What the histogram header promises for a quantile whose exact value is x:
 * the midpoint of x's bucket, rounded down. */
static uint64_t bucket_mid(uint64_t x) {
    size_t i = fg_histogram_bucket_index(x);
    uint64_t lo = fg_histogram_bucket_lower(i), hi = fg_histogram_bucket_upper(i);
    return lo + (hi - lo) / 2;
}

/* The nearest-rank q-quantile of n sorted values. */
static uint64_t nearest_rank(const uint64_t *sorted, size_t n, double q) {
    size_t r = (size_t)ceil(q * (double)n);
    return sorted[(r < 1 ? 1 : r) - 1];
}

static void assert_quantile(uint64_t got, const uint64_t *sorted, size_t n, double q) {
    uint64_t x = nearest_rank(sorted, n, q);
    ck_assert_msg(got == bucket_mid(x),
                  "q %g: got %" PRIu64 ", exact %" PRIu64 ", want bucket midpoint %" PRIu64, q,
                  got, x, bucket_mid(x));
    /* and so within the documented bound */
    uint64_t d = got > x ? got - x : x - got;
    ck_assert(x < FG_HISTOGRAM_EXACT_NS ? d == 0 : d * 128 < x);
}

static void assert_latencies(const fg_route_stats *st, uint64_t *v, size_t n) {
    qsort(v, n, sizeof(v[0]), cmp_u64);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    ck_assert_uint_eq(st->latency_count, n);
    ck_assert_uint_eq(st->latency_sum_ns, sum);
    assert_quantile(st->p50_ns, v, n, 0.5);
    assert_quantile(st->p90_ns, v, n, 0.9);
    assert_quantile(st->p99_ns, v, n, 0.99);
    assert_quantile(st->p999_ns, v, n, 0.999);
}

/* ---- a standard mix of traffic through the rig ------------------------------------------ */

/* users: the latencies of its handled requests, in the order sent. */
static const uint64_t users_lat[] = {1 * MS,  2 * MS,  3 * MS,  4 * MS,  5 * MS,
                                     6 * MS,  7 * MS,  8 * MS,  100000,  50,
                                     20 * MS, 30 * MS, 40 * MS, 15 * MS, 15 * MS};
#define N_USERS_LAT 15

/*
 * users: 10 ok, 3 failed (FG_EHANDLER, FG_ETIMEDOUT from the handler, and
 * a positive return taken as FG_EHANDLER), 2 ok after a 5 ms wait.
 * orders: route-gate rejects 4 x FG_ELIMITED (one after a pacer wait),
 * FG_EOVERLOADED, FG_ECANCELED, a positive code (FG_EREJECTED), 2 x
 * FG_EINVAL and -150 (other); 2 ok.
 * "" (no route): gate rejects 2 x FG_ELIMITED and FG_EBREAKER before the
 * router runs; 3 requests match no route.
 */
static void standard_traffic(const rig *r) {
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(rig_send(r, "/users", p_ok(users_lat[i])), 0);
    ck_assert_int_eq(rig_send(r, "/users", p_fail(20 * MS, FG_EHANDLER)), FG_EHANDLER);
    ck_assert_int_eq(rig_send(r, "/users", p_fail(30 * MS, FG_ETIMEDOUT)), FG_ETIMEDOUT);
    ck_assert_int_eq(rig_send(r, "/users", p_fail(40 * MS, 3)), FG_EHANDLER);
    plan wait = {NULL, 0, "pacer", 5 * MS, 10 * MS, 0};
    ck_assert_int_eq(rig_send(r, "/users", wait), 0);
    ck_assert_int_eq(rig_send(r, "/users", wait), 0);

    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rig_send(r, "/orders/1", p_reject("route-gate", FG_ELIMITED)),
                         FG_ELIMITED);
    plan wait_then_reject = {"route-gate", FG_ELIMITED, "pacer", 7 * MS, 0, 0};
    ck_assert_int_eq(rig_send(r, "/orders", wait_then_reject), FG_ELIMITED);
    ck_assert_int_eq(rig_send(r, "/orders", p_reject("route-gate", FG_EOVERLOADED)),
                     FG_EOVERLOADED);
    ck_assert_int_eq(rig_send(r, "/orders", p_reject("route-gate", FG_ECANCELED)),
                     FG_ECANCELED);
    ck_assert_int_eq(rig_send(r, "/orders", p_reject("route-gate", 9)), FG_EREJECTED);
    ck_assert_int_eq(rig_send(r, "/orders", p_reject("route-gate", FG_EINVAL)), FG_EINVAL);
    ck_assert_int_eq(rig_send(r, "/orders", p_reject("route-gate", FG_EINVAL)), FG_EINVAL);
    ck_assert_int_eq(rig_send(r, "/orders", p_reject("route-gate", -150)), -150);
    ck_assert_int_eq(rig_send(r, "/orders/2", p_ok(1 * MS)), 0);
    ck_assert_int_eq(rig_send(r, "/orders/3", p_ok(1 * MS)), 0);

    ck_assert_int_eq(rig_send(r, "/users", p_reject("gate", FG_ELIMITED)), FG_ELIMITED);
    ck_assert_int_eq(rig_send(r, "/orders", p_reject("gate", FG_ELIMITED)), FG_ELIMITED);
    ck_assert_int_eq(rig_send(r, "/pay", p_reject("gate", FG_EBREAKER)), FG_EBREAKER);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rig_send(r, "/nowhere", p_ok(1 * MS)), FG_ENOROUTE);
}

#define IX(code) (-(code)-100) /* rejected_by_code index */

/* ---- counts per route ------------------------------------------------------------------- */

START_TEST(test_route_counts) {
    rig r;
    rig_init(&r);
    /* Every route has its series from the start, all zero. */
    const char *routes[] = {"", "users", "orders", "pay"};
    for (int i = 0; i < 4; i++) {
        fg_route_stats st = route_stats(r.m, "api", routes[i]);
        ck_assert(th_is_zero(&st, sizeof(st)));
    }
    standard_traffic(&r);

    fg_route_stats u = route_stats(r.m, "api", "users");
    ck_assert_uint_eq(u.ok, 12);
    ck_assert_uint_eq(u.failed, 3);
    ck_assert_uint_eq(u.rejected, 0);
    ck_assert_uint_eq(u.other, 0);
    ck_assert_uint_eq(u.delayed, 2);
    ck_assert_uint_eq(u.delay_ns, 10 * MS);
    uint64_t lat[N_USERS_LAT];
    memcpy(lat, users_lat, sizeof(lat));
    assert_latencies(&u, lat, N_USERS_LAT);
    /* 15 values: p50 is the 8th (6 ms), p90 the 14th (30 ms), p99 and p999 the last */
    ck_assert_uint_eq(u.p50_ns, bucket_mid(6 * MS));
    ck_assert_uint_eq(u.p90_ns, bucket_mid(30 * MS));
    ck_assert_uint_eq(u.p99_ns, bucket_mid(40 * MS));

    fg_route_stats o = route_stats(r.m, "api", "orders");
    ck_assert_uint_eq(o.ok, 2);
    ck_assert_uint_eq(o.failed, 0);
    ck_assert_uint_eq(o.rejected_by_code[IX(FG_ELIMITED)], 4);
    ck_assert_uint_eq(o.rejected_by_code[IX(FG_EOVERLOADED)], 1);
    ck_assert_uint_eq(o.rejected_by_code[IX(FG_ECANCELED)], 1);
    ck_assert_uint_eq(o.rejected_by_code[IX(FG_EREJECTED)], 1);
    ck_assert_uint_eq(o.rejected_by_code[IX(FG_EBREAKER)], 0);
    ck_assert_uint_eq(o.rejected_by_code[IX(FG_ENOROUTE)], 0);
    ck_assert_uint_eq(o.other, 3);
    ck_assert_uint_eq(o.rejected, 10);
    ck_assert_uint_eq(o.delayed, 0); /* the one that waited was rejected after */
    ck_assert_uint_eq(o.delay_ns, 0);
    ck_assert_uint_eq(o.latency_count, 2); /* rejections are not timed */
    ck_assert_uint_eq(o.latency_sum_ns, 2 * MS);
    ck_assert_uint_eq(o.p50_ns, bucket_mid(1 * MS));

    /* Rejected before the router ran, or no route matched: route "". */
    fg_route_stats n = route_stats(r.m, "api", "");
    ck_assert_uint_eq(n.ok, 0);
    ck_assert_uint_eq(n.failed, 0);
    ck_assert_uint_eq(n.rejected_by_code[IX(FG_ELIMITED)], 2);
    ck_assert_uint_eq(n.rejected_by_code[IX(FG_EBREAKER)], 1);
    ck_assert_uint_eq(n.rejected_by_code[IX(FG_ENOROUTE)], 3);
    ck_assert_uint_eq(n.rejected, 6);
    ck_assert_uint_eq(n.other, 0);
    ck_assert_uint_eq(n.latency_count, 0);
    ck_assert_uint_eq(n.p50_ns, 0);

    fg_route_stats p = route_stats(r.m, "api", "pay");
    ck_assert(th_is_zero(&p, sizeof(p)));

    /* Unknown series and bad arguments. */
    fg_route_stats x;
    ck_assert_int_eq(fg_metrics_route(r.m, "api", "nope", &x), FG_ENOTFOUND);
    ck_assert_int_eq(fg_metrics_route(r.m, "other", "users", &x), FG_ENOTFOUND);
    ck_assert_int_eq(fg_metrics_route(NULL, "api", "users", &x), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_route(r.m, NULL, "users", &x), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_route(r.m, "api", NULL, &x), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_route(r.m, "api", "users", NULL), FG_EINVAL);
    rig_free(&r);
}
END_TEST

/* A chain without a router counts everything in route "". */
START_TEST(test_no_router) {
    fg_fake_clock *fake = NULL;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fake), 0);
    fg_clock clk = fg_fake_clock_as_clock(fake);
    fg_metrics *m = NULL;
    ck_assert_int_eq(fg_metrics_new(&clk, &m), 0);
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.clock = clk;
    fg_chain *c = NULL;
    ck_assert_int_eq(fg_chain_new(&co, &c), 0);
    fg_stage *ms = NULL;
    ck_assert_int_eq(fg_stage_metrics(m, NULL, "plain", "counting", &ms), 0);
    ck_assert_str_eq(fg_stage_name(ms), "counting");
    ck_assert_int_eq(fg_chain_use(c, ms), 0);
    ck_assert_int_eq(fg_chain_use(c, script_stage("gate")), 0);
    for (int i = 0; i < 4; i++) {
        fg_ctx ctx;
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/x"), 0);
        tl_plan = i < 3 ? p_ok(3 * MS) : p_reject("gate", FG_EINJECTED);
        int rc = fg_chain_call(c, &ctx, h_script, fake);
        memset(&tl_plan, 0, sizeof(tl_plan));
        ck_assert_int_eq(rc, i < 3 ? 0 : FG_EINJECTED);
    }
    fg_route_stats st = route_stats(m, "plain", "");
    ck_assert_uint_eq(st.ok, 3);
    ck_assert_uint_eq(st.rejected_by_code[IX(FG_EINJECTED)], 1);
    ck_assert_uint_eq(st.latency_count, 3);
    ck_assert_uint_eq(st.latency_sum_ns, 9 * MS);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gate", FG_EINJECTED), 1);
    /* Arguments. */
    fg_stage *bad = NULL;
    ck_assert_int_eq(fg_stage_metrics(NULL, NULL, "x", NULL, &bad), FG_EINVAL);
    ck_assert_int_eq(fg_stage_metrics(m, NULL, NULL, NULL, &bad), FG_EINVAL);
    ck_assert_int_eq(fg_stage_metrics(m, NULL, "x", NULL, NULL), FG_EINVAL);
    char longname[FG_METRICS_NAME_MAX + 2];
    memset(longname, 'c', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    ck_assert_int_eq(fg_stage_metrics(m, NULL, longname, NULL, &bad), FG_ETOOLONG);
    ck_assert_ptr_null(bad);
    ck_assert_int_eq(fg_metrics_new(NULL, NULL), FG_EINVAL);
    ck_assert_ptr_null(fg_runtime_metrics(NULL));
    fg_metrics_free(NULL);
    fg_chain_free(c);
    fg_metrics_free(m);
    fg_fake_clock_free(fake);
}
END_TEST

/* ---- rejections per stage --------------------------------------------------------------- */

START_TEST(test_stage_rejections) {
    rig r;
    rig_init(&r);
    standard_traffic(&r);
    fg_metrics *m = r.m;
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gate", FG_ELIMITED), 2);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gate", FG_EBREAKER), 1);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gate", FG_EOVERLOADED), 0);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gate", 0), 3);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "route-gate", FG_ELIMITED), 4);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "route-gate", FG_EOVERLOADED), 1);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "route-gate", FG_ECANCELED), 1);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "route-gate", FG_EREJECTED), 1);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "route-gate", 0), 10);
    /* Codes outside the outcomes count together as "other" (the header's rule):
     * 2 x FG_EINVAL and one -150 are 3 for any of them. */
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "route-gate", FG_EINVAL), 3);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "route-gate", -150), 3);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "route-gate", 1), 3);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "router", FG_ENOROUTE), 3);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "router", 0), 3);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "pacer", 0), 0);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "metrics", 0), 0);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "nobody", 0), 0);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "", 0), 0);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, NULL, 0), 0);
    ck_assert_uint_eq(fg_metrics_stage_rejections(NULL, "gate", 0), 0);

    /* Stages of the same name in another chain on the same registry add up. */
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.clock = fg_fake_clock_as_clock(r.fake);
    fg_chain *side = NULL;
    ck_assert_int_eq(fg_chain_new(&co, &side), 0);
    fg_stage *ms = NULL;
    ck_assert_int_eq(fg_stage_metrics(m, NULL, "side", NULL, &ms), 0);
    ck_assert_int_eq(fg_chain_use(side, ms), 0);
    ck_assert_int_eq(fg_chain_use(side, script_stage("gate")), 0);
    for (int i = 0; i < 5; i++) {
        fg_ctx ctx;
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        tl_plan = p_reject("gate", FG_ELIMITED);
        ck_assert_int_eq(fg_chain_call(side, &ctx, h_script, r.fake), FG_ELIMITED);
        memset(&tl_plan, 0, sizeof(tl_plan));
    }
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gate", FG_ELIMITED), 7);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gate", 0), 8);
    ck_assert_uint_eq(route_stats(m, "side", "").rejected_by_code[IX(FG_ELIMITED)], 5);
    ck_assert_uint_eq(route_stats(m, "api", "").rejected_by_code[IX(FG_ELIMITED)], 2);
    fg_chain_free(side);
    /* The side chain's series is gone with it; the counts per stage stay. */
    fg_route_stats x;
    ck_assert_int_eq(fg_metrics_route(m, "side", "", &x), FG_ENOTFOUND);
    ck_assert_uint_eq(fg_metrics_stage_rejections(m, "gate", FG_ELIMITED), 7);
    rig_free(&r);
}
END_TEST

/* ---- threads ---------------------------------------------------------------------------- */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STRESS_N 200000L /* per thread: ASan and TSan make each request 5-20x dearer */
#else
#define STRESS_N 1000000L
#endif

typedef struct writer_arg {
    const rig *r;
    long n, unexpected;
} writer_arg;

/* Request i: every tenth rejected by the gate, every tenth (+1) failed, the rest ok. */
static void *stress_writer(void *p) {
    writer_arg *a = p;
    for (long i = 0; i < a->n; i++) {
        plan pl = {NULL, 0, NULL, 0, 0, 0};
        int want = 0;
        if (i % 10 == 0) {
            pl.reject_at = "gate";
            pl.code = want = FG_ELIMITED;
        } else if (i % 10 == 1) {
            pl.fail = want = FG_EHANDLER;
        }
        if (rig_send(a->r, "/users", pl) != want)
            a->unexpected++;
    }
    return NULL;
}

typedef struct reader_arg {
    const rig *r;
    int stop; /* atomic */
    long reads, exports, backwards, bad_exports;
} reader_arg;

/* The value of the users/ok sample in a Prometheus text, or -1. */
static double prom_users_ok(const char *text) {
    static const char key[] =
        "\nfloodgate_requests_total{chain=\"api\",route=\"users\",decision=\"admitted\","
        "code=\"ok\"} ";
    const char *at = strstr(text, key);
    return at == NULL ? -1 : strtod(at + sizeof(key) - 1, NULL);
}

/* Exports while requests run: Prometheus (its users/ok never going backwards) and JSON. */
static void stress_export(reader_arg *a, char *buf, size_t cap, double *last_ok) {
    size_t len = 0;
    if (fg_metrics_prometheus(a->r->m, buf, cap, &len) != 0) {
        a->bad_exports++;
        return;
    }
    double ok = prom_users_ok(buf);
    if (ok < 0)
        a->bad_exports++;
    else if (ok < *last_ok)
        a->backwards++;
    *last_ok = ok;
    if (fg_metrics_json(a->r->m, buf, cap, &len) != 0 || buf[0] != '{')
        a->bad_exports++;
    a->exports++;
}

static void *stress_reader(void *p) {
    reader_arg *a = p;
    fg_route_stats last, n;
    memset(&last, 0, sizeof(last));
    uint64_t last_rej = 0;
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    double last_ok = 0;
    while (buf != NULL && !__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE)) {
        if (a->reads % 8 == 0)
            stress_export(a, buf, cap, &last_ok);
        if (fg_metrics_route(a->r->m, "api", "users", &n) != 0) {
            a->backwards++;
            break;
        }
        uint64_t rej = fg_metrics_stage_rejections(a->r->m, "gate", FG_ELIMITED);
        if (n.ok < last.ok || n.failed < last.failed || n.latency_count < last.latency_count ||
            rej < last_rej)
            a->backwards++;
        last = n;
        last_rej = rej;
        a->reads++;
    }
    if (buf == NULL)
        a->bad_exports++;
    free(buf);
    return NULL;
}

START_TEST(test_threads) {
    rig r;
    rig_init(&r);
    writer_arg w[2] = {{&r, STRESS_N, 0}, {&r, STRESS_N, 0}};
    reader_arg rd = {&r, 0, 0, 0, 0, 0};
    pthread_t tw[2], tr;
    ck_assert_int_eq(pthread_create(&tr, NULL, stress_reader, &rd), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&tw[i], NULL, stress_writer, &w[i]), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(tw[i], NULL), 0);
    __atomic_store_n(&rd.stop, 1, __ATOMIC_RELEASE);
    ck_assert_int_eq(pthread_join(tr, NULL), 0);
    ck_assert_int_eq(w[0].unexpected + w[1].unexpected, 0);
    ck_assert_int_eq(rd.backwards, 0);
    ck_assert_int_eq(rd.bad_exports, 0);
    ck_assert_int_gt(rd.reads, 0);
    ck_assert_int_gt(rd.exports, 0);
    uint64_t total = 2 * (uint64_t)STRESS_N;
    fg_route_stats u = route_stats(r.m, "api", "users");
    ck_assert_uint_eq(u.ok, total / 10 * 8);
    ck_assert_uint_eq(u.failed, total / 10);
    ck_assert_uint_eq(u.rejected, 0);
    ck_assert_uint_eq(u.latency_count, total / 10 * 9);
    ck_assert_uint_eq(u.latency_sum_ns, 0); /* the fake clock never moved */
    fg_route_stats n = route_stats(r.m, "api", "");
    ck_assert_uint_eq(n.rejected_by_code[IX(FG_ELIMITED)], total / 10);
    ck_assert_uint_eq(n.rejected, total / 10);
    ck_assert_uint_eq(fg_metrics_stage_rejections(r.m, "gate", FG_ELIMITED), total / 10);
    rig_free(&r);
}
END_TEST

/* ---- Prometheus text, parsed back ------------------------------------------------------- */

#define PROM_MAX_LABELS 8

typedef struct prom_label {
    char name[64];
    char value[400]; /* unescaped */
} prom_label;

typedef struct prom_sample {
    char name[128];
    int nlabels;
    prom_label labels[PROM_MAX_LABELS];
    double value;
} prom_sample;

typedef struct prom_family {
    char name[128];
    char type[16];
    int help, type_seen;
    size_t samples;
} prom_family;

typedef struct prom_doc {
    prom_sample *s;
    size_t n, cap;
    prom_family fam[64];
    size_t nfam;
} prom_doc;

static int name_start(int c, int colon) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}
static int name_char(int c, int colon) {
    return name_start(c, colon) || (c >= '0' && c <= '9');
}

/* A metric (colon 1) or label (colon 0) name at p into out; returns the end. */
static const char *prom_name(const char *p, int colon, char *out, size_t cap, int line) {
    size_t n = 0;
    ck_assert_msg(name_start((unsigned char)p[0], colon), "line %d: bad name at '%.20s'", line,
                  p);
    while (name_char((unsigned char)p[n], colon))
        n++;
    ck_assert_msg(n < cap, "line %d: name too long", line);
    memcpy(out, p, n);
    out[n] = '\0';
    return p + n;
}

static prom_family *prom_find_family(prom_doc *d, const char *name) {
    for (size_t i = 0; i < d->nfam; i++)
        if (strcmp(d->fam[i].name, name) == 0)
            return &d->fam[i];
    return NULL;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static const char *label_of(const prom_sample *s, const char *name) {
    for (int i = 0; i < s->nlabels; i++)
        if (strcmp(s->labels[i].name, name) == 0)
            return s->labels[i].value;
    return NULL;
}

/* Whether a and b have the same labels, le aside (in the same order). */
static int same_labels_but_le(const prom_sample *a, const prom_sample *b) {
    int i = 0, j = 0;
    for (;;) {
        while (i < a->nlabels && strcmp(a->labels[i].name, "le") == 0)
            i++;
        while (j < b->nlabels && strcmp(b->labels[j].name, "le") == 0)
            j++;
        if (i == a->nlabels || j == b->nlabels)
            return i == a->nlabels && j == b->nlabels;
        if (strcmp(a->labels[i].name, b->labels[j].name) != 0 ||
            strcmp(a->labels[i].value, b->labels[j].value) != 0)
            return 0;
        i++;
        j++;
    }
}

static int same_series(const prom_sample *a, const prom_sample *b) {
    if (strcmp(a->name, b->name) != 0 || a->nlabels != b->nlabels)
        return 0;
    for (int i = 0; i < a->nlabels; i++)
        if (strcmp(a->labels[i].name, b->labels[i].name) != 0 ||
            strcmp(a->labels[i].value, b->labels[i].value) != 0)
            return 0;
    return 1;
}

/* One histogram series being read: buckets, then _sum and _count. */
typedef struct prom_hist {
    int active;
    prom_sample base; /* the first bucket */
    double last_le, last_count, inf_count;
    int seen_inf, seen_sum, seen_count;
} prom_hist;

static void prom_hist_close(prom_hist *h, int line) {
    if (!h->active)
        return;
    ck_assert_msg(h->seen_inf && h->seen_sum && h->seen_count,
                  "line %d: histogram %s ended without +Inf, _sum or _count", line,
                  h->base.name);
    h->active = 0;
}

static void prom_hist_sample(prom_hist *h, const prom_sample *s, const char *base, int line) {
    if (ends_with(s->name, "_bucket")) {
        const char *le = label_of(s, "le");
        ck_assert_msg(le != NULL, "line %d: bucket without le", line);
        if (!h->active || !same_labels_but_le(&h->base, s) ||
            strncmp(h->base.name, base, strlen(base)) != 0) {
            prom_hist_close(h, line);
            memset(h, 0, sizeof(*h));
            h->active = 1;
            h->base = *s;
            h->last_le = -INFINITY;
        }
        ck_assert_msg(!h->seen_inf, "line %d: a bucket after +Inf", line);
        char *end = NULL;
        double bound = strtod(le, &end);
        ck_assert_msg(end != le && *end == '\0', "line %d: le \"%s\" is not a number", line,
                      le);
        ck_assert_msg(bound > h->last_le, "line %d: le %s not increasing", line, le);
        ck_assert_msg(s->value >= h->last_count, "line %d: bucket count decreases", line);
        ck_assert_msg(s->value == floor(s->value), "line %d: bucket count not whole", line);
        h->last_le = bound;
        h->last_count = s->value;
        if (isinf(bound)) {
            ck_assert_str_eq(le, "+Inf");
            h->seen_inf = 1;
            h->inf_count = s->value;
        }
        return;
    }
    ck_assert_msg(h->active && h->seen_inf && same_labels_but_le(&h->base, s) &&
                      label_of(s, "le") == NULL,
                  "line %d: %s without its buckets", line, s->name);
    if (ends_with(s->name, "_sum")) {
        ck_assert_msg(!h->seen_sum, "line %d: second _sum", line);
        h->seen_sum = 1;
    } else {
        ck_assert_msg(!h->seen_count, "line %d: second _count", line);
        ck_assert_msg(s->value == h->inf_count, "line %d: _count %g != +Inf bucket %g", line,
                      s->value, h->inf_count);
        h->seen_count = 1;
    }
    if (h->seen_sum && h->seen_count)
        prom_hist_close(h, line);
}

/*
 * Parse text (the whole exposition) into d, asserting the format: every
 * line a comment (# HELP / # TYPE, each once per family, both before its
 * samples) or `name{labels} value`; label values with only \\ \" \n
 * escapes; a family's samples together; no series twice; counters >= 0;
 * histograms with increasing le, cumulative counts, +Inf == _count.
 */
static void prom_parse(const char *text, prom_doc *d) {
    memset(d, 0, sizeof(*d));
    size_t len = strlen(text);
    ck_assert_msg(len > 0 && text[len - 1] == '\n', "the text must end in a newline");
    prom_family *cur = NULL;
    prom_hist h;
    memset(&h, 0, sizeof(h));
    int line = 0;
    for (const char *p = text; *p != '\0';) {
        const char *eol = strchr(p, '\n');
        line++;
        ck_assert_msg(eol != p, "line %d: empty", line);
        for (const char *q = p; q < eol; q++)
            ck_assert_msg(*q != '\r' && *q != '\t' && *q != '\0', "line %d: control byte",
                          line);
        if (*p == '#') {
            char name[128];
            int is_help = strncmp(p, "# HELP ", 7) == 0;
            ck_assert_msg(is_help || strncmp(p, "# TYPE ", 7) == 0,
                          "line %d: a comment that is neither HELP nor TYPE", line);
            const char *q = prom_name(p + 7, 1, name, sizeof(name), line);
            ck_assert_msg(*q == ' ', "line %d: no space after the name", line);
            prom_family *f = prom_find_family(d, name);
            if (f == NULL) {
                ck_assert_uint_lt(d->nfam, TH_NELEM(d->fam));
                prom_hist_close(&h, line);
                f = &d->fam[d->nfam++];
                snprintf(f->name, sizeof(f->name), "%s", name);
                cur = f;
            }
            ck_assert_msg(f == cur && f->samples == 0,
                          "line %d: %s comment after its samples or apart from them", line,
                          name);
            q++;
            if (is_help) {
                ck_assert_msg(!f->help, "line %d: second HELP for %s", line, name);
                f->help = 1;
                for (; q < eol; q++) /* HELP text: only \\ and \n escapes */
                    if (*q == '\\') {
                        q++;
                        ck_assert_msg(*q == '\\' || *q == 'n', "line %d: bad escape", line);
                    }
            } else {
                ck_assert_msg(!f->type_seen, "line %d: second TYPE for %s", line, name);
                f->type_seen = 1;
                size_t n = (size_t)(eol - q);
                ck_assert_uint_lt(n, sizeof(f->type));
                memcpy(f->type, q, n);
                f->type[n] = '\0';
                ck_assert_msg(strcmp(f->type, "counter") == 0 ||
                                  strcmp(f->type, "gauge") == 0 ||
                                  strcmp(f->type, "histogram") == 0,
                              "line %d: type %s", line, f->type);
            }
            p = eol + 1;
            continue;
        }
        if (d->n == d->cap) {
            d->cap = d->cap ? 2 * d->cap : 256;
            d->s = realloc(d->s, d->cap * sizeof(*d->s));
            ck_assert_ptr_nonnull(d->s);
        }
        prom_sample *s = &d->s[d->n];
        memset(s, 0, sizeof(*s));
        const char *q = prom_name(p, 1, s->name, sizeof(s->name), line);
        if (*q == '{') {
            q++;
            while (*q != '}') {
                ck_assert_msg(s->nlabels < PROM_MAX_LABELS, "line %d: too many labels", line);
                prom_label *l = &s->labels[s->nlabels++];
                q = prom_name(q, 0, l->name, sizeof(l->name), line);
                ck_assert_msg(strncmp(l->name, "__", 2) != 0, "line %d: reserved label", line);
                for (int i = 0; i < s->nlabels - 1; i++)
                    ck_assert_msg(strcmp(s->labels[i].name, l->name) != 0,
                                  "line %d: label %s twice", line, l->name);
                ck_assert_msg(q[0] == '=' && q[1] == '"', "line %d: want =\" after %s", line,
                              l->name);
                q += 2;
                size_t n = 0;
                for (; *q != '"'; q++) {
                    ck_assert_msg(q < eol, "line %d: unterminated label value", line);
                    char c = *q;
                    if (c == '\\') {
                        q++;
                        ck_assert_msg(*q == '\\' || *q == '"' || *q == 'n',
                                      "line %d: bad escape \\%c", line, *q);
                        c = (char)(*q == 'n' ? '\n' : *q);
                    }
                    ck_assert_uint_lt(n, sizeof(l->value) - 1);
                    l->value[n++] = c;
                }
                l->value[n] = '\0';
                q++;
                if (*q == ',')
                    q++;
                else
                    ck_assert_msg(*q == '}', "line %d: want , or } after a label", line);
            }
            q++;
        }
        ck_assert_msg(*q == ' ', "line %d: want one space before the value", line);
        q++;
        char vbuf[64];
        size_t vn = (size_t)(eol - q);
        ck_assert_msg(vn > 0 && vn < sizeof(vbuf), "line %d: no value", line);
        memcpy(vbuf, q, vn);
        vbuf[vn] = '\0';
        char *end = NULL;
        s->value = strtod(vbuf, &end);
        ck_assert_msg(end != vbuf && *end == '\0', "line %d: value \"%s\"", line, vbuf);

        /* Its family: a histogram's by suffix, else by name. */
        prom_family *f = NULL;
        char base[128];
        static const char *const sfx[] = {"_bucket", "_sum", "_count"};
        for (int i = 0; i < 3 && f == NULL; i++)
            if (ends_with(s->name, sfx[i])) {
                size_t bl = strlen(s->name) - strlen(sfx[i]);
                memcpy(base, s->name, bl);
                base[bl] = '\0';
                prom_family *g = prom_find_family(d, base);
                if (g != NULL && strcmp(g->type, "histogram") == 0)
                    f = g;
            }
        if (f == NULL) {
            f = prom_find_family(d, s->name);
            ck_assert_msg(f == NULL || strcmp(f->type, "histogram") != 0,
                          "line %d: bare sample of a histogram", line);
        }
        ck_assert_msg(f != NULL, "line %d: %s has no HELP/TYPE", line, s->name);
        ck_assert_msg(f == cur && f->help && f->type_seen,
                      "line %d: %s apart from its family, or before its HELP and TYPE", line,
                      s->name);
        f->samples++;
        if (strcmp(f->type, "counter") == 0)
            ck_assert_msg(s->value >= 0, "line %d: counter below 0", line);
        if (strcmp(f->type, "histogram") == 0)
            prom_hist_sample(&h, s, f->name, line);
        for (size_t i = 0; i < d->n; i++)
            ck_assert_msg(!same_series(&d->s[i], s), "line %d: %s twice", line, s->name);
        d->n++;
        p = eol + 1;
    }
    prom_hist_close(&h, line);
}

static void prom_free(prom_doc *d) { free(d->s); }

/* The end of pget's label pairs: a pointer, as va_arg reads it (a bare NULL may be an int). */
#define LABELS_END ((const char *)NULL)

/* The value of the sample name{k1="v1",...} with exactly those labels (pairs ending
 * in LABELS_END, unescaped values); -1 when absent. */
static double pget(const prom_doc *d, const char *name, ...) {
    const char *k[PROM_MAX_LABELS], *v[PROM_MAX_LABELS];
    int n = 0;
    va_list ap;
    va_start(ap, name);
    for (const char *key; (key = va_arg(ap, const char *)) != NULL;) {
        ck_assert_int_lt(n, PROM_MAX_LABELS);
        k[n] = key;
        v[n++] = va_arg(ap, const char *);
    }
    va_end(ap);
    for (size_t i = 0; i < d->n; i++) {
        const prom_sample *s = &d->s[i];
        if (strcmp(s->name, name) != 0 || s->nlabels != n)
            continue;
        int all = 1;
        for (int j = 0; j < n && all; j++) {
            const char *have = label_of(s, k[j]);
            all = have != NULL && strcmp(have, v[j]) == 0;
        }
        if (all)
            return s->value;
    }
    return -1;
}

/* How many samples of name have label k equal to v. */
static size_t pcount(const prom_doc *d, const char *name, const char *k, const char *v) {
    size_t n = 0;
    for (size_t i = 0; i < d->n; i++) {
        const char *have = label_of(&d->s[i], k);
        n += strcmp(d->s[i].name, name) == 0 && have != NULL && strcmp(have, v) == 0;
    }
    return n;
}

/* The whole Prometheus text, on the heap. */
static char *prom_text(fg_metrics *m) {
    size_t need = 0;
    ck_assert_int_eq(fg_metrics_prometheus(m, NULL, 0, &need), FG_ETOOLONG);
    char *buf = malloc(need + 1);
    ck_assert_ptr_nonnull(buf);
    size_t len = 0;
    ck_assert_int_eq(fg_metrics_prometheus(m, buf, need + 1, &len), 0);
    ck_assert_uint_eq(len, need);
    ck_assert_uint_eq(strlen(buf), len);
    return buf;
}

/* What `le` buckets may hold: never a value above the bound, always every
 * value below the bound's histogram bucket (the header's bucket granularity). */
static void assert_le_bucket(double count, double le_s, const uint64_t *v, size_t n) {
    uint64_t le = (uint64_t)llround(le_s * 1e9);
    uint64_t lo = fg_histogram_bucket_lower(fg_histogram_bucket_index(le));
    size_t at_most = 0, at_least = 0;
    for (size_t i = 0; i < n; i++) {
        at_most += v[i] <= le;
        at_least += v[i] < lo;
    }
    ck_assert_msg(count >= (double)at_least && count <= (double)at_most,
                  "le %g: %g, want %zu .. %zu", le_s, count, at_least, at_most);
}

START_TEST(test_prometheus_format) {
    rig r;
    rig_init(&r);
    standard_traffic(&r);
    fg_breaker_event ev =
        brk_ev(FG_BREAKER_CLOSED, FG_BREAKER_OPEN, FG_BREAKER_REASON_FAILURE_RATIO);
    ck_assert_int_eq(fg_metrics_breaker_event(r.m, "db", &ev), 0);
    ck_assert_int_eq(fg_metrics_reload(r.m, 1, "v7"), 0);
    fg_slo_options so = {200 * MS, 0.99, 0.001, 0};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "users", &so), 0);
    char *text = prom_text(r.m);
    prom_doc d;
    prom_parse(text, &d);

    /* Every family, with its type. */
    static const char *const fams[][2] = {
        {"floodgate_requests_total", "counter"},
        {"floodgate_request_delays_total", "counter"},
        {"floodgate_request_delay_seconds_total", "counter"},
        {"floodgate_request_duration_seconds", "histogram"},
        {"floodgate_chain_request_duration_seconds", "histogram"},
        {"floodgate_stage_rejections_total", "counter"},
        {"floodgate_breaker_state", "gauge"},
        {"floodgate_breaker_transitions_total", "counter"},
        {"floodgate_config_reloads_total", "counter"},
        {"floodgate_config_info", "gauge"},
        {"floodgate_slo_burn_rate", "gauge"},
        {"floodgate_slo_compliant", "gauge"},
    };
    ck_assert_uint_eq(d.nfam, TH_NELEM(fams));
    for (int i = 0; i < TH_NELEM(fams); i++) {
        prom_family *f = prom_find_family(&d, fams[i][0]);
        ck_assert_msg(f != NULL, "no family %s", fams[i][0]);
        ck_assert_str_eq(f->type, fams[i][1]);
    }

    /* The samples equal fg_metrics_route's figures. */
    const char *R = "floodgate_requests_total";
    fg_route_stats u = route_stats(r.m, "api", "users");
    fg_route_stats o = route_stats(r.m, "api", "orders");
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "users", "decision", "admitted",
                             "code", "ok", LABELS_END),
                        (double)u.ok);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "users", "decision", "admitted",
                             "code", "handler_failed", LABELS_END),
                        (double)u.failed);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "orders", "decision", "rejected",
                             "code", "rate_limited", LABELS_END),
                        4);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "orders", "decision", "rejected",
                             "code", "overloaded", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "orders", "decision", "rejected",
                             "code", "canceled", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "orders", "decision", "rejected",
                             "code", "rejected", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "orders", "decision", "rejected",
                             "code", "other", LABELS_END),
                        (double)o.other);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "", "decision", "rejected",
                             "code", "no_route", LABELS_END),
                        3);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "", "decision", "rejected",
                             "code", "breaker_open", LABELS_END),
                        1);
    /* A code with no request is left out (but ok and handler_failed are always there). */
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "pay", "decision", "rejected",
                             "code", "rate_limited", LABELS_END),
                        -1);
    ck_assert_double_eq(pget(&d, R, "chain", "api", "route", "pay", "decision", "admitted",
                             "code", "ok", LABELS_END),
                        0);
    ck_assert_double_eq(pget(&d, "floodgate_request_delays_total", "chain", "api", "route",
                             "users", LABELS_END),
                        2);
    ck_assert_double_eq(pget(&d, "floodgate_request_delay_seconds_total", "chain", "api",
                             "route", "users", LABELS_END),
                        0.01);
    /* The histogram of users: count, sum in seconds, buckets within the bounds. */
    ck_assert_double_eq(pget(&d, "floodgate_request_duration_seconds_count", "chain", "api",
                             "route", "users", LABELS_END),
                        (double)u.latency_count);
    ck_assert_double_eq(pget(&d, "floodgate_request_duration_seconds_sum", "chain", "api",
                             "route", "users", LABELS_END),
                        (double)u.latency_sum_ns / 1e9);
    size_t nb = 0;
    for (size_t i = 0; i < d.n; i++) {
        const prom_sample *s = &d.s[i];
        const char *route = label_of(s, "route");
        if (strcmp(s->name, "floodgate_request_duration_seconds_bucket") != 0 ||
            route == NULL || strcmp(route, "users") != 0)
            continue;
        double le = strtod(label_of(s, "le"), NULL);
        if (!isinf(le))
            assert_le_bucket(s->value, le, users_lat, N_USERS_LAT);
        nb++;
    }
    ck_assert_uint_ge(nb, 10);
    ck_assert_uint_eq(pcount(&d, "floodgate_request_duration_seconds_bucket", "route", "pay"),
                      nb);
    /* The chain histogram merges its routes: users 15 + orders 2. */
    ck_assert_double_eq(
        pget(&d, "floodgate_chain_request_duration_seconds_count", "chain", "api", LABELS_END),
        17);
    ck_assert_double_eq(pget(&d, "floodgate_stage_rejections_total", "stage", "route-gate",
                             "code", "rate_limited", LABELS_END),
                        4);
    ck_assert_double_eq(pget(&d, "floodgate_stage_rejections_total", "stage", "router", "code",
                             "no_route", LABELS_END),
                        3);
    ck_assert_double_eq(pget(&d, "floodgate_stage_rejections_total", "stage", "route-gate",
                             "code", "other", LABELS_END),
                        3);
    ck_assert_double_eq(pget(&d, "floodgate_breaker_state", "breaker", "db", LABELS_END), 1);
    ck_assert_double_eq(pget(&d, "floodgate_breaker_transitions_total", "breaker", "db",
                             "from", "closed", "to", "open", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, "floodgate_config_reloads_total", "result", "ok", LABELS_END),
                        1);
    ck_assert_double_eq(
        pget(&d, "floodgate_config_reloads_total", "result", "error", LABELS_END), 0);
    ck_assert_double_eq(pget(&d, "floodgate_config_info", "version", "v7", LABELS_END), 1);
    /* SLO of users, read at the registry's clock. */
    fg_slo_status st;
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "users", fg_fake_clock_now(r.fake), &st), 0);
    ck_assert_double_eq(pget(&d, "floodgate_slo_burn_rate", "chain", "api", "route", "users",
                             "objective", "errors", "window", "slow", LABELS_END),
                        st.error_burn_slow);
    ck_assert_double_eq(pget(&d, "floodgate_slo_compliant", "chain", "api", "route", "users",
                             "objective", "latency", LABELS_END),
                        1);
    ck_assert_uint_eq(pcount(&d, "floodgate_slo_burn_rate", "route", "users"), 4);
    ck_assert_uint_eq(pcount(&d, "floodgate_slo_burn_rate", "route", "orders"), 0);
    prom_free(&d);
    free(text);

    /* Without SLOs, their families are left out; nothing else changes. */
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "users", NULL), 0);
    text = prom_text(r.m);
    prom_parse(text, &d);
    ck_assert_uint_eq(d.nfam, TH_NELEM(fams) - 2);
    ck_assert_ptr_null(prom_find_family(&d, "floodgate_slo_burn_rate"));
    prom_free(&d);
    free(text);
    rig_free(&r);
}
END_TEST

/* An empty registry still exports a valid document: the reload counters and info. */
START_TEST(test_prometheus_empty) {
    fg_metrics *m = NULL;
    ck_assert_int_eq(fg_metrics_new(NULL, &m), 0);
    char *text = prom_text(m);
    prom_doc d;
    prom_parse(text, &d);
    ck_assert_double_eq(pget(&d, "floodgate_config_reloads_total", "result", "ok", LABELS_END),
                        0);
    ck_assert_double_eq(pget(&d, "floodgate_config_info", "version", "", LABELS_END), 1);
    prom_free(&d);
    free(text);
    fg_metrics_free(m);
}
END_TEST

/* Hostile label values: quotes, backslashes and newlines, escaped exactly. */
START_TEST(test_prometheus_hostile) {
    static const char *const names[3] = {"q\"u\\o\nte", "orders", "pay"};
    const char *gate = "a\"b\\c\nd";
    rig r;
    rig_init_named(&r, "ch\"ain\\", gate, names);
    ck_assert_int_eq(rig_send(&r, "/users", p_ok(1 * MS)), 0);
    ck_assert_int_eq(rig_send(&r, "/pay", p_reject(gate, FG_ELIMITED)), FG_ELIMITED);
    fg_breaker_event ev =
        brk_ev(FG_BREAKER_CLOSED, FG_BREAKER_OPEN, FG_BREAKER_REASON_FAILURE_RATIO);
    ck_assert_int_eq(fg_metrics_breaker_event(r.m, "b\"r\\k\n", &ev), 0);
    ck_assert_int_eq(fg_metrics_reload(r.m, 1, "v\"1\\2\n3"), 0);
    fg_slo_options so = {200 * MS, 0, 0, 0};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "ch\"ain\\", names[0], &so), 0);
    char *text = prom_text(r.m);
    /* The escaped forms, byte for byte. */
    ck_assert_ptr_nonnull(strstr(text, "floodgate_requests_total{chain=\"ch\\\"ain\\\\\","
                                       "route=\"q\\\"u\\\\o\\nte\",decision=\"admitted\","
                                       "code=\"ok\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "floodgate_stage_rejections_total{stage=\"a\\\"b\\\\c"
                                       "\\nd\",code=\"rate_limited\"} 1\n"));
    ck_assert_ptr_nonnull(
        strstr(text, "floodgate_breaker_state{breaker=\"b\\\"r\\\\k\\n\"} 1\n"));
    ck_assert_ptr_nonnull(
        strstr(text, "floodgate_config_info{version=\"v\\\"1\\\\2\\n3\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text,
                                 "floodgate_slo_compliant{chain=\"ch\\\"ain\\\\\","
                                 "route=\"q\\\"u\\\\o\\nte\",objective=\"latency\"} 1\n"));
    /* And they parse back to the raw values. */
    prom_doc d;
    prom_parse(text, &d);
    ck_assert_double_eq(pget(&d, "floodgate_requests_total", "chain", "ch\"ain\\", "route",
                             names[0], "decision", "admitted", "code", "ok", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, "floodgate_request_duration_seconds_count", "chain",
                             "ch\"ain\\", "route", names[0], LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, "floodgate_stage_rejections_total", "stage", gate, "code",
                             "rate_limited", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, "floodgate_config_info", "version", "v\"1\\2\n3", LABELS_END),
                        1);
    ck_assert_uint_eq(fg_metrics_stage_rejections(r.m, gate, FG_ELIMITED), 1);
    prom_free(&d);
    free(text);
    rig_free(&r);
}
END_TEST

/* FG_ETOOLONG says how much is needed; *len + 1 bytes then suffice, exactly. */
START_TEST(test_prometheus_toolong) {
    rig r;
    rig_init(&r);
    standard_traffic(&r);
    size_t need = 0, len = 0;
    char small[16];
    memset(small, 'Z', sizeof(small));
    ck_assert_int_eq(fg_metrics_prometheus(r.m, small, sizeof(small), &need), FG_ETOOLONG);
    ck_assert_uint_gt(need, 1000);
    ck_assert_int_eq(small[sizeof(small) - 1], '\0');
    size_t need0 = 0;
    ck_assert_int_eq(fg_metrics_prometheus(r.m, NULL, 0, &need0), FG_ETOOLONG);
    ck_assert_uint_eq(need0, need);
    /* need bytes: no room for the NUL. */
    char *buf = th_canary_buf(need);
    ck_assert_int_eq(fg_metrics_prometheus(r.m, buf, need, &len), FG_ETOOLONG);
    ck_assert_uint_eq(len, need);
    th_assert_canary(buf, need, "cap == need");
    free(buf);
    buf = th_canary_buf(need + 1);
    ck_assert_int_eq(fg_metrics_prometheus(r.m, buf, need + 1, &len), 0);
    ck_assert_uint_eq(len, need);
    ck_assert_uint_eq(strlen(buf), need);
    th_assert_canary(buf, need + 1, "cap == need + 1");
    free(buf);
    ck_assert_int_eq(fg_metrics_prometheus(NULL, small, sizeof(small), &len), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_prometheus(r.m, small, sizeof(small), NULL), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_prometheus(r.m, NULL, 5, &len), FG_EINVAL);
    rig_free(&r);
}
END_TEST

/* ---- bounds ---------------------------------------------------------------------------- */

static fg_router *router_of(int n) {
    fg_router *router = NULL;
    ck_assert_int_eq(fg_router_new(&router), 0);
    for (int i = 0; i < n; i++) {
        char name[16], path[16];
        snprintf(name, sizeof(name), "r%d", i);
        snprintf(path, sizeof(path), "/r%d", i);
        fg_route_target t = {NULL, 0, th_ok_handler, NULL, NULL, 0};
        fg_route_spec spec = FG_ROUTE_SPEC_INIT;
        spec.name = name;
        spec.path_kind = FG_PATH_EXACT;
        spec.path = path;
        spec.targets = &t;
        spec.ntargets = 1;
        ck_assert_int_eq(fg_router_add(router, &spec, NULL), 0);
    }
    ck_assert_int_eq(fg_router_build(router), 0);
    return router;
}

/* FG_METRICS_MAX_SERIES (chain, route) series at once: a stage whose routes
 * would pass it fails whole, leaving nothing behind. */
START_TEST(test_series_bound) {
    fg_metrics *m = NULL;
    ck_assert_int_eq(fg_metrics_new(NULL, &m), 0);
    fg_route_stats st;
    /* 4095 routes and "" fit exactly. */
    fg_router *fits = router_of(FG_METRICS_MAX_SERIES - 1);
    fg_stage *ms = NULL;
    ck_assert_int_eq(fg_stage_metrics(m, fits, "c", NULL, &ms), 0);
    ck_assert_int_eq(fg_metrics_route(m, "c", "r4094", &st), 0);
    /* Then no other series: a stage fails whole, an SLO cannot make one. */
    fg_router *two = router_of(2);
    fg_stage *more = NULL;
    ck_assert_int_eq(fg_stage_metrics(m, two, "d", NULL, &more), FG_ETOOMANY);
    ck_assert_ptr_null(more);
    ck_assert_int_eq(fg_metrics_route(m, "d", "", &st), FG_ENOTFOUND);
    ck_assert_int_eq(fg_metrics_route(m, "d", "r0", &st), FG_ENOTFOUND);
    fg_slo_options so = {1 * MS, 0, 0, 0};
    ck_assert_int_eq(fg_metrics_set_slo(m, "d", "", &so), FG_ETOOMANY);
    ck_assert_int_eq(fg_metrics_set_slo(m, "c", "r7", &so), 0); /* an existing one */
    /* Another stage on the same series adds none. */
    ck_assert_int_eq(fg_stage_metrics(m, fits, "c", NULL, &more), 0);
    fg_stage_unref(more);
    /* Each of c's routes leaves with its last stage: room again. */
    fg_stage_unref(ms);
    fg_router_free(fits);
    ck_assert_int_eq(fg_metrics_route(m, "c", "", &st), FG_ENOTFOUND);
    ck_assert_int_eq(fg_metrics_route(m, "c", "r7", &st), FG_ENOTFOUND);
    ck_assert_int_eq(fg_stage_metrics(m, two, "d", NULL, &more), 0);
    ck_assert_int_eq(fg_metrics_route(m, "d", "r1", &st), 0);
    fg_stage_unref(more);
    fg_router_free(two);
    fg_metrics_free(m);
}
END_TEST

/* FG_METRICS_MAX_STAGES stage names are counted as rejecting; past them a
 * rejection still counts in its series, and exports stay whole. */
START_TEST(test_stage_names_bound) {
    enum { N = FG_METRICS_MAX_STAGES + 6 };
    static char names[N][16];
    fg_metrics *m = NULL;
    ck_assert_int_eq(fg_metrics_new(NULL, &m), 0);
    fg_chain *keep = NULL; /* keeps the series "" of chain t alive throughout */
    ck_assert_int_eq(fg_chain_new(NULL, &keep), 0);
    fg_stage *ms = NULL;
    ck_assert_int_eq(fg_stage_metrics(m, NULL, "t", NULL, &ms), 0);
    ck_assert_int_eq(fg_chain_use(keep, ms), 0);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "s%d", i);
        fg_chain *c = NULL;
        ck_assert_int_eq(fg_chain_new(NULL, &c), 0);
        ck_assert_int_eq(fg_stage_metrics(m, NULL, "t", NULL, &ms), 0);
        ck_assert_int_eq(fg_chain_use(c, ms), 0);
        ck_assert_int_eq(fg_chain_use(c, script_stage(names[i])), 0);
        fg_ctx ctx;
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        tl_plan = p_reject(names[i], FG_ECANCELED);
        ck_assert_int_eq(fg_chain_call(c, &ctx, th_ok_handler, NULL), FG_ECANCELED);
        memset(&tl_plan, 0, sizeof(tl_plan));
        fg_chain_free(c);
    }
    for (int i = 0; i < N; i++)
        ck_assert_uint_eq(fg_metrics_stage_rejections(m, names[i], FG_ECANCELED),
                          i < FG_METRICS_MAX_STAGES);
    ck_assert_uint_eq(route_stats(m, "t", "").rejected_by_code[IX(FG_ECANCELED)], N);
    char *text = prom_text(m);
    prom_doc d;
    prom_parse(text, &d);
    size_t n = 0;
    for (size_t i = 0; i < d.n; i++)
        n += strcmp(d.s[i].name, "floodgate_stage_rejections_total") == 0;
    ck_assert_uint_eq(n, FG_METRICS_MAX_STAGES);
    prom_free(&d);
    free(text);
    fg_chain_free(keep);
    fg_metrics_free(m);
}
END_TEST

/* ---- JSON ------------------------------------------------------------------------------- */

static char *json_text(fg_metrics *m) {
    size_t need = 0;
    ck_assert_int_eq(fg_metrics_json(m, NULL, 0, &need), FG_ETOOLONG);
    char *buf = malloc(need + 1);
    ck_assert_ptr_nonnull(buf);
    size_t len = 0;
    ck_assert_int_eq(fg_metrics_json(m, buf, need + 1, &len), 0);
    ck_assert_uint_eq(len, need);
    ck_assert_uint_eq(strlen(buf), len);
    return buf;
}

static json_t *json_series(json_t *root, const char *chain, const char *route) {
    json_t *arr = json_object_get(root, "series"), *o;
    size_t i;
    ck_assert(json_is_array(arr));
    json_array_foreach(arr, i, o) {
        if (strcmp(json_string_value(json_object_get(o, "chain")), chain) == 0 &&
            strcmp(json_string_value(json_object_get(o, "route")), route) == 0)
            return o;
    }
    return NULL;
}

static uint64_t jint(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_integer(v), "%s is not an integer", key);
    return (uint64_t)json_integer_value(v);
}

static double jreal(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_number(v), "%s is not a number", key);
    return json_number_value(v);
}

/* The code counts of a series must be exactly those of fg_metrics_route:
 * "admitted" {ok, handler_failed}, "rejected" {code: count} for each code
 * with a request ("other" for the non-outcome codes). */
static void assert_json_codes(json_t *s, const fg_route_stats *st) {
    json_t *adm = json_object_get(s, "admitted");
    json_t *rej = json_object_get(s, "rejected");
    ck_assert(json_is_object(adm));
    ck_assert(json_is_object(rej));
    ck_assert_uint_eq(json_object_size(adm), 2);
    ck_assert_uint_eq(jint(adm, "ok"), st->ok);
    ck_assert_uint_eq(jint(adm, "handler_failed"), st->failed);
    size_t want = 0;
    for (int i = 0; i < 9; i++) {
        const char *name = fg_outcome_name(-100 - i);
        if (st->rejected_by_code[i] == 0) {
            ck_assert_ptr_null(json_object_get(rej, name));
            continue;
        }
        ck_assert_uint_eq(jint(rej, name), st->rejected_by_code[i]);
        want++;
    }
    if (st->other != 0) {
        ck_assert_uint_eq(jint(rej, "other"), st->other);
        want++;
    }
    ck_assert_uint_eq(json_object_size(rej), want);
}

START_TEST(test_json) {
    rig r;
    rig_init(&r);
    standard_traffic(&r);
    fg_breaker_event ev =
        brk_ev(FG_BREAKER_OPEN, FG_BREAKER_HALF_OPEN, FG_BREAKER_REASON_OPEN_ELAPSED);
    ck_assert_int_eq(fg_metrics_breaker_event(r.m, "db", &ev), 0);
    ck_assert_int_eq(fg_metrics_reload(r.m, 1, "j\"1"), 0);
    ck_assert_int_eq(fg_metrics_reload(r.m, 0, NULL), 0);
    fg_slo_options so = {10 * MS, 0.9, 0.01, 0};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "users", &so), 0);
    ck_assert_int_eq(rig_send(&r, "/users", p_ok(20 * MS)), 0); /* slow */
    ck_assert_int_eq(rig_send(&r, "/users", p_ok(1 * MS)), 0);

    char *text = json_text(r.m);
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    ck_assert_msg(root != NULL, "%s at %d:%d", jerr.text, jerr.line, jerr.column);
    ck_assert_str_eq(json_string_value(json_object_get(root, "version")), "j\"1");
    ck_assert_uint_eq(jint(json_object_get(root, "reloads"), "ok"), 1);
    ck_assert_uint_eq(jint(json_object_get(root, "reloads"), "error"), 1);
    ck_assert_uint_eq(json_array_size(json_object_get(root, "series")), 4);

    const char *routes[] = {"", "users", "orders", "pay"};
    for (int i = 0; i < 4; i++) {
        json_t *s = json_series(root, "api", routes[i]);
        ck_assert_msg(s != NULL, "no series for route \"%s\"", routes[i]);
        fg_route_stats st = route_stats(r.m, "api", routes[i]);
        assert_json_codes(s, &st);
        ck_assert_uint_eq(jint(s, "delayed"), st.delayed);
        ck_assert_double_eq(jreal(s, "delay_seconds"), (double)st.delay_ns / 1e9);
        json_t *lat = json_object_get(s, "latency");
        ck_assert_uint_eq(jint(lat, "count"), st.latency_count);
        ck_assert_double_eq(jreal(lat, "sum_seconds"), (double)st.latency_sum_ns / 1e9);
        ck_assert_double_eq(jreal(lat, "p50_seconds"), (double)st.p50_ns / 1e9);
        ck_assert_double_eq(jreal(lat, "p90_seconds"), (double)st.p90_ns / 1e9);
        ck_assert_double_eq(jreal(lat, "p99_seconds"), (double)st.p99_ns / 1e9);
        ck_assert_double_eq(jreal(lat, "p999_seconds"), (double)st.p999_ns / 1e9);
        ck_assert_int_eq(json_object_get(s, "slo") != NULL, i == 1);
    }
    /* The SLO block matches fg_metrics_slo at the registry's clock. */
    fg_slo_status st;
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "users", fg_fake_clock_now(r.fake), &st), 0);
    json_t *slo = json_object_get(json_series(root, "api", "users"), "slo");
    ck_assert_uint_eq(jint(slo, "requests"), 2);
    ck_assert_uint_eq(jint(slo, "handled"), 2);
    ck_assert_uint_eq(jint(slo, "slow"), 1);
    ck_assert_uint_eq(jint(slo, "errors"), 0);
    ck_assert_double_eq(jreal(slo, "window_seconds"), 3600);
    ck_assert_double_eq(jreal(slo, "latency_burn_slow"), st.latency_burn_slow);
    ck_assert_double_eq(jreal(slo, "latency_burn_fast"), st.latency_burn_fast);
    ck_assert_double_eq(jreal(slo, "error_burn_slow"), 0);
    ck_assert(json_is_false(json_object_get(slo, "latency_ok"))); /* half slow, 10% allowed */
    ck_assert(json_is_true(json_object_get(slo, "error_ok")));
    /* Stage rejections and breakers. */
    json_t *sr = json_object_get(root, "stage_rejections"), *e;
    size_t i;
    uint64_t seen = 0;
    json_array_foreach(sr, i, e) {
        const char *stage = json_string_value(json_object_get(e, "stage"));
        const char *code = json_string_value(json_object_get(e, "code"));
        ck_assert_ptr_nonnull(stage);
        ck_assert_ptr_nonnull(code);
        if (strcmp(code, "other") != 0) {
            int c = 0;
            for (int k = -100; k >= -108; k--)
                if (strcmp(fg_outcome_name(k), code) == 0)
                    c = k;
            ck_assert_int_ne(c, 0);
            ck_assert_uint_eq(jint(e, "count"), fg_metrics_stage_rejections(r.m, stage, c));
        }
        seen += jint(e, "count");
    }
    ck_assert_uint_eq(seen, 3 + 10 + 3); /* gate, route-gate, router */
    json_t *brk = json_array_get(json_object_get(root, "breakers"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(brk, "breaker")), "db");
    ck_assert_str_eq(json_string_value(json_object_get(brk, "state")), "half_open");
    json_t *mv = json_array_get(json_object_get(brk, "transitions"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(mv, "from")), "open");
    ck_assert_str_eq(json_string_value(json_object_get(mv, "to")), "half_open");
    ck_assert_uint_eq(jint(mv, "count"), 1);
    json_decref(root);

    /* FG_ETOOLONG: *len is the size needed, the buffer an empty string. */
    size_t len = strlen(text), got = 0;
    char small[8] = "xxxxxxx";
    ck_assert_int_eq(fg_metrics_json(r.m, small, sizeof(small), &got), FG_ETOOLONG);
    ck_assert_uint_eq(got, len);
    ck_assert_str_eq(small, "");
    char *buf = th_canary_buf(len);
    ck_assert_int_eq(fg_metrics_json(r.m, buf, len, &got), FG_ETOOLONG);
    th_assert_canary(buf, len, "json cap == need");
    free(buf);
    buf = th_canary_buf(len + 1);
    ck_assert_int_eq(fg_metrics_json(r.m, buf, len + 1, &got), 0);
    ck_assert_str_eq(buf, text);
    th_assert_canary(buf, len + 1, "json cap == need + 1");
    free(buf);
    ck_assert_int_eq(fg_metrics_json(NULL, small, sizeof(small), &got), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_json(r.m, small, sizeof(small), NULL), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_json(r.m, NULL, 3, &got), FG_EINVAL);
    free(text);
    rig_free(&r);
}
END_TEST

/* ---- SLOs on scripted streams ----------------------------------------------------------- */

#define SLO_MINUTES 130

/* What was sent in each minute after T0, to compute the windows independently. */
typedef struct slo_model {
    uint64_t req[SLO_MINUTES], err[SLO_MINUTES], handled[SLO_MINUTES], slow[SLO_MINUTES];
} slo_model;

/*
 * Minute `minute` of the stream on route orders: from one second into the
 * minute, `slow` requests of 250 ms, one of exactly 200 ms (not over the
 * objective), `fail` handler failures of 1 ms, the rest of `total` ok in
 * 1 ms; then `limited` rate-limited rejections (the client's: not errors)
 * and `broken` breaker-open rejections (errors that never reach the handler).
 */
static void slo_minute(const rig *r, slo_model *mo, int minute, int total, int slow, int fail,
                       int limited, int broken) {
    fg_fake_clock_set(r->fake, T0 + (uint64_t)minute * MIN + SEC);
    for (int i = 0; i < slow; i++)
        ck_assert_int_eq(rig_send(r, "/orders", p_ok(250 * MS)), 0);
    ck_assert_int_eq(rig_send(r, "/orders", p_ok(200 * MS)), 0);
    for (int i = 0; i < fail; i++)
        ck_assert_int_eq(rig_send(r, "/orders", p_fail(1 * MS, FG_EHANDLER)), FG_EHANDLER);
    for (int i = slow + 1 + fail; i < total; i++)
        ck_assert_int_eq(rig_send(r, "/orders", p_ok(1 * MS)), 0);
    for (int i = 0; i < limited; i++)
        ck_assert_int_eq(rig_send(r, "/orders", p_reject("route-gate", FG_ELIMITED)),
                         FG_ELIMITED);
    for (int i = 0; i < broken; i++)
        ck_assert_int_eq(rig_send(r, "/orders", p_reject("route-gate", FG_EBREAKER)),
                         FG_EBREAKER);
    ck_assert_uint_lt(fg_fake_clock_now(r->fake), T0 + (uint64_t)(minute + 1) * MIN);
    mo->req[minute] += (uint64_t)(total + limited + broken);
    mo->handled[minute] += (uint64_t)total;
    mo->slow[minute] += (uint64_t)slow;
    mo->err[minute] += (uint64_t)(fail + broken);
}

static double ratio(uint64_t a, uint64_t b) { return b ? (double)a / (double)b : 0; }

/* Equal but for rounding: the library may compute a ratio another way. */
static int near(double got, double want) {
    return fabs(got - want) <= 1e-12 * (fabs(want) > 1 ? fabs(want) : 1);
}

#define ck_assert_near(got, want)                                                             \
    ck_assert_msg(near((got), (want)), "%s == %.17g, want %.17g", #got, (double)(got),        \
                  (double)(want))

/* Check fg_metrics_slo at minute:second against the model (objectives: 200 ms at
 * 0.99, 0.1% errors, 1 h). */
static void slo_expect(const rig *r, const slo_model *mo, int minute, int second) {
    uint64_t now = T0 + (uint64_t)minute * MIN + (uint64_t)second * SEC;
    uint64_t req = 0, err = 0, handled = 0, slow = 0, freq = 0, ferr = 0, fh = 0, fslow = 0;
    for (int m = minute - 59; m <= minute; m++) {
        if (m < 0)
            continue;
        req += mo->req[m];
        err += mo->err[m];
        handled += mo->handled[m];
        slow += mo->slow[m];
        if (m > minute - 5) {
            freq += mo->req[m];
            ferr += mo->err[m];
            fh += mo->handled[m];
            fslow += mo->slow[m];
        }
    }
    fg_slo_status st;
    memset(&st, 0xa5, sizeof(st));
    ck_assert_int_eq(fg_metrics_slo(r->m, "api", "orders", now, &st), 0);
    ck_assert_int_eq(st.has_latency, 1);
    ck_assert_int_eq(st.has_errors, 1);
    ck_assert_uint_eq(st.window_ns, 3600 * SEC);
    ck_assert_msg(
        st.requests == req && st.errors == err && st.handled == handled && st.slow == slow,
        "at %d:%02d: requests %" PRIu64 "/%" PRIu64 ", errors %" PRIu64 "/%" PRIu64
        ", handled %" PRIu64 "/%" PRIu64 ", slow %" PRIu64 "/%" PRIu64 " (got/want)",
        minute, second, st.requests, req, st.errors, err, st.handled, handled, st.slow, slow);
    ck_assert_near(st.error_ratio, ratio(err, req));
    ck_assert_near(st.slow_ratio, ratio(slow, handled));
    ck_assert_near(st.error_burn_slow, ratio(err, req) * 1000);
    ck_assert_near(st.error_burn_fast, ratio(ferr, freq) * 1000);
    ck_assert_near(st.latency_burn_slow, ratio(slow, handled) * 100);
    ck_assert_near(st.latency_burn_fast, ratio(fslow, fh) * 100);
    /* Compliance exactly, in integers: errors / requests <= 1/1000, slow / handled <= 1/100.
     */
    ck_assert_int_eq(st.error_ok, err * 1000 <= req);
    ck_assert_int_eq(st.latency_ok, slow * 100 <= handled);
}

START_TEST(test_slo_stream) {
    rig r;
    rig_init(&r);
    static slo_model mo;
    memset(&mo, 0, sizeof(mo));
    fg_slo_options so = {200 * MS, 0.99, 0.001, 3600 * SEC};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", &so), 0);
    /* An hour: 55 quiet minutes (5 slow of 1000), then 5 bad ones (30 slow,
     * 2 failed), the last with 3 rate-limited and 2 breaker-open rejections. */
    for (int m = 0; m < 55; m++)
        slo_minute(&r, &mo, m, 1000, 5, 0, 0, 0);
    slo_expect(&r, &mo, 54, 59); /* 55 quiet minutes: fast and slow burn alike */
    fg_slo_status st;
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 54 * MIN + 59 * SEC, &st), 0);
    ck_assert_near(st.latency_burn_fast, 0.5);
    ck_assert_near(st.latency_burn_slow, 0.5);
    ck_assert_double_eq(st.error_burn_slow, 0);
    for (int m = 55; m < 60; m++)
        slo_minute(&r, &mo, m, 1000, 30, 2, m == 59 ? 3 : 0, m == 59 ? 2 : 0);
    slo_expect(&r, &mo, 59, 59);
    /* The figures in plain numbers. */
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 59 * MIN + 59 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 60005);
    ck_assert_uint_eq(st.handled, 60000);
    ck_assert_uint_eq(st.slow, 55 * 5 + 5 * 30);
    ck_assert_uint_eq(st.errors, 5 * 2 + 2);
    ck_assert(fabs(st.latency_burn_fast - 3.0) < 1e-9); /* 150 of 5000: 3%, budget 1% */
    ck_assert(fabs(st.error_burn_fast - 12.0 / 5005 / 0.001) < 1e-9);
    ck_assert(fabs(st.latency_burn_slow - 425.0 / 60000 / 0.01) < 1e-9);
    ck_assert_int_eq(st.latency_ok, 1);
    ck_assert_int_eq(st.error_ok, 1);
    /* Minute 60: a burst of failures breaks the error objective. */
    slo_minute(&r, &mo, 60, 1000, 100, 50, 0, 0);
    slo_expect(&r, &mo, 60, 59);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 60 * MIN + 59 * SEC, &st), 0);
    ck_assert_int_eq(st.error_ok, 0);
    ck_assert_int_eq(st.latency_ok, 1);
    ck_assert_uint_eq(st.requests, 60005); /* minute 0 left, minute 60 came */
    /* Time passes without traffic: the fast window empties after 5 minutes,
     * the slow one as its minutes leave it. */
    slo_expect(&r, &mo, 64, 30);
    slo_expect(&r, &mo, 65, 30);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 65 * MIN + 30 * SEC, &st), 0);
    ck_assert_double_eq(st.error_burn_fast, 0);
    ck_assert_double_eq(st.latency_burn_fast, 0);
    ck_assert_double_gt(st.error_burn_slow, 0);
    slo_expect(&r, &mo, 100, 0);
    slo_expect(&r, &mo, 119, 59);
    slo_expect(&r, &mo, 120, 0); /* minute 60 has left: nothing in the window */
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 120 * MIN, &st), 0);
    ck_assert_uint_eq(st.requests, 0);
    ck_assert_double_eq(st.error_ratio, 0);
    ck_assert_double_eq(st.latency_burn_slow, 0);
    ck_assert_int_eq(st.error_ok, 1);
    ck_assert_int_eq(st.latency_ok, 1);
    /* Traffic again, after the idle hour. */
    slo_minute(&r, &mo, 121, 100, 10, 1, 0, 0);
    slo_expect(&r, &mo, 121, 30);
    slo_expect(&r, &mo, 125, 30);
    rig_free(&r);
}
END_TEST

/* Changing the threshold keeps the history; changing the window starts it over;
 * removing the SLO forgets it. */
START_TEST(test_slo_changes) {
    rig r;
    rig_init(&r);
    static slo_model mo;
    memset(&mo, 0, sizeof(mo));
    fg_slo_options so = {200 * MS, 0.99, 0.001, 3600 * SEC};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", &so), 0);
    for (int m = 0; m < 3; m++)
        slo_minute(&r, &mo, m, 100, 4, 1, 0, 0);
    slo_expect(&r, &mo, 2, 59);
    /* Same window, other objectives: same history, new requests judged by the new threshold.
     */
    fg_slo_options tight = {100 * MS, 0.9, 0.01, 3600 * SEC};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", &tight), 0);
    fg_slo_status st;
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 2 * MIN + 59 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 300);
    ck_assert_uint_eq(st.slow, 12);
    ck_assert_uint_eq(st.errors, 3);
    ck_assert_near(st.latency_burn_slow, (12.0 / 300) * 10);
    ck_assert_near(st.error_burn_slow, (3.0 / 300) * 100);
    fg_fake_clock_set(r.fake, T0 + 3 * MIN + SEC);
    ck_assert_int_eq(rig_send(&r, "/orders", p_ok(150 * MS)), 0); /* slow now, not before */
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 3 * MIN + 30 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 301);
    ck_assert_uint_eq(st.slow, 13);
    /* Only an error objective now (same window): no latency figures. */
    fg_slo_options errs_only = {0, 0, 0.01, 3600 * SEC};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", &errs_only), 0);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 3 * MIN + 30 * SEC, &st), 0);
    ck_assert_int_eq(st.has_latency, 0);
    ck_assert_int_eq(st.has_errors, 1);
    ck_assert_uint_eq(st.requests, 301);
    ck_assert_double_eq(st.latency_burn_slow, 0);
    ck_assert_double_eq(st.latency_burn_fast, 0);
    ck_assert_int_eq(st.latency_ok, 1);
    /* A new window: the history starts over. */
    fg_slo_options longer = {200 * MS, 0.99, 0.001, 7200 * SEC};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", &longer), 0);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 3 * MIN + 30 * SEC, &st), 0);
    ck_assert_uint_eq(st.window_ns, 7200 * SEC);
    ck_assert_uint_eq(st.requests, 0);
    ck_assert_uint_eq(st.handled, 0);
    ck_assert_uint_eq(st.slow, 0);
    ck_assert_uint_eq(st.errors, 0);
    fg_fake_clock_set(r.fake, T0 + 4 * MIN + SEC);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(rig_send(&r, "/orders", p_ok(i < 3 ? 300 * MS : 1 * MS)), 0);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 4 * MIN + 30 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 10);
    ck_assert_uint_eq(st.slow, 3);
    /* The default window (0) is one hour: a change from 2 h, so it starts over again. */
    fg_slo_options dflt = {200 * MS, 0, 0, 0};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", &dflt), 0);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 4 * MIN + 30 * SEC, &st), 0);
    ck_assert_uint_eq(st.window_ns, 3600 * SEC);
    ck_assert_uint_eq(st.requests, 0);
    ck_assert_int_eq(st.has_errors, 0);
    ck_assert_int_eq(st.error_ok, 1);
    /* Removed: no SLO any more. */
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", NULL), 0);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 5 * MIN, &st), FG_ENOTFOUND);
    /* The smallest window: 60 ns, one bucket per ns. */
    fg_slo_options tiny = {0, 0, 0.5, 60};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", &tiny), 0);
    fg_fake_clock_set(r.fake, T0 + 10 * MIN);
    ck_assert_int_eq(rig_send(&r, "/orders", p_fail(0, FG_EHANDLER)), FG_EHANDLER);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 10 * MIN + 59, &st), 0);
    ck_assert_uint_eq(st.requests, 1);
    ck_assert_uint_eq(st.errors, 1);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", T0 + 10 * MIN + 60, &st), 0);
    ck_assert_uint_eq(st.requests, 0);
    rig_free(&r);
}
END_TEST

START_TEST(test_slo_errors) {
    rig r;
    rig_init(&r);
    fg_slo_status st;
    fg_slo_options ok = {200 * MS, 0.99, 0.001, 3600 * SEC};
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "users", T0, &st), FG_ENOTFOUND);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "nope", T0, &st), FG_ENOTFOUND);
    ck_assert_int_eq(fg_metrics_slo(r.m, "nope", "users", T0, &st), FG_ENOTFOUND);
    ck_assert_int_eq(fg_metrics_slo(NULL, "api", "users", T0, &st), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_slo(r.m, NULL, "users", T0, &st), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", NULL, T0, &st), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "users", T0, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_set_slo(NULL, "api", "users", &ok), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_set_slo(r.m, NULL, "users", &ok), FG_EINVAL);
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", NULL, &ok), FG_EINVAL);
    static const fg_slo_options bad[] = {
        {0, 0, 0, 0},             /* neither objective */
        {0, 0.99, 0, 3600 * SEC}, /* a target alone is no objective */
        {200 * MS, 1.0, 0, 0},    /* target outside (0, 1) */
        {200 * MS, 1.5, 0, 0},
        {200 * MS, -0.5, 0, 0},
        {200 * MS, 0.99, 1.0, 0}, /* error rate outside (0, 1) */
        {200 * MS, 0.99, -0.001, 0},
        {0, 0, 2.0, 0},
        {200 * MS, 0.99, 0.001, 59}, /* window under 60 ns */
        {200 * MS, NAN, 0.001, 0},
        {0, 0, NAN, 0},
    };
    for (int i = 0; i < TH_NELEM(bad); i++)
        ck_assert_msg(fg_metrics_set_slo(r.m, "api", "users", &bad[i]) == FG_EINVAL,
                      "bad options %d accepted", i);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "users", T0, &st), FG_ENOTFOUND);
    char longname[FG_METRICS_NAME_MAX + 2];
    memset(longname, 'r', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", longname, &ok), FG_ETOOLONG);
    ck_assert_int_eq(fg_metrics_set_slo(r.m, longname, "users", &ok), FG_ETOOLONG);
    /* A route without traffic: zeros, compliant. */
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "users", &ok), 0);
    memset(&st, 0xa5, sizeof(st));
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "users", T0, &st), 0);
    ck_assert_uint_eq(st.requests, 0);
    ck_assert_uint_eq(st.handled, 0);
    ck_assert_double_eq(st.error_ratio, 0);
    ck_assert_double_eq(st.slow_ratio, 0);
    ck_assert_double_eq(st.error_burn_fast, 0);
    ck_assert_double_eq(st.latency_burn_slow, 0);
    ck_assert_int_eq(st.error_ok, 1);
    ck_assert_int_eq(st.latency_ok, 1);
    /* The no-route series can have one too. */
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "", &ok), 0);
    ck_assert_int_eq(rig_send(&r, "/nowhere", p_ok(0)), FG_ENOROUTE);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "", T0, &st), 0);
    ck_assert_uint_eq(st.requests, 1);
    ck_assert_uint_eq(st.errors, 0); /* no route is the client's */
    ck_assert_uint_eq(st.handled, 0);
    rig_free(&r);
}
END_TEST

/*
 * SLO windows on a clock that starts near 0 (a fake clock, as `floodgate
 * replay` uses from t = 0): requests in the first bucket (the first
 * window / 60) count like any others. (An early lib/metrics.c took bucket 0
 * for "no mark yet" and lost them.)
 */
START_TEST(test_slo_first_bucket) {
    rig r;
    rig_init(&r);
    fg_fake_clock_set(r.fake, 0);
    fg_slo_options so = {200 * MS, 0.99, 0.001, 3600 * SEC};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "orders", &so), 0);
    fg_fake_clock_set(r.fake, 10 * SEC);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(rig_send(&r, "/orders", p_ok(i == 0 ? 300 * MS : 1 * MS)), 0);
    fg_slo_status st;
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", 30 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 10);
    ck_assert_uint_eq(st.slow, 1);
    /* and still once later minutes have traffic */
    fg_fake_clock_set(r.fake, 90 * SEC);
    ck_assert_int_eq(rig_send(&r, "/orders", p_ok(1 * MS)), 0);
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "orders", 100 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 11);
    rig_free(&r);
}
END_TEST

/* ---- the runtime's registry ------------------------------------------------------------- */

typedef struct rt_rig {
    fg_fake_clock *fake;
    fg_registry *reg;
    fg_runtime *rt;
    fg_metrics *m;
} rt_rig;

static void rt_init(rt_rig *x) {
    ck_assert_int_eq(fg_fake_clock_new(T0, &x->fake), 0);
    ck_assert_int_eq(fg_registry_new(&x->reg), 0);
    ck_assert_int_eq(fg_registry_add_handler(x->reg, "script", h_script, x->fake), 0);
    ck_assert_int_eq(fg_runtime_new(&x->rt), 0);
    ck_assert_int_eq(fg_runtime_set_clock(x->rt, fg_fake_clock_as_clock(x->fake)), 0);
    x->m = fg_runtime_metrics(x->rt);
    ck_assert_ptr_nonnull(x->m);
}

static void rt_free(rt_rig *x) {
    fg_runtime_free(x->rt);
    fg_registry_free(x->reg);
    fg_fake_clock_free(x->fake);
}

static char rt_errs[4096]; /* the last load's errors, formatted */

static int rt_load(rt_rig *x, const char *text) {
    fg_config_errors errs;
    int rc = fg_runtime_load_json(x->rt, x->reg, text, strlen(text), &errs);
    fg_config_errors_format(&errs, rt_errs, sizeof(rt_errs));
    return rc;
}

#define RT_LOAD_OK(x, text)                                                                   \
    do {                                                                                      \
        int rc_ = rt_load((x), (text));                                                       \
        ck_assert_msg(rc_ == 0, "load: %s: %s", fg_err_name(rc_), rt_errs);                   \
    } while (0)

static int rt_send(rt_rig *x, const char *path, plan p) {
    fg_ctx ctx;
    tl_plan = p;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", path), 0);
    int rc = fg_runtime_call(x->rt, &ctx, NULL, NULL);
    memset(&tl_plan, 0, sizeof(tl_plan));
    return rc;
}

/* Whether the Prometheus text names route in any series. */
static int prom_has_route(fg_metrics *m, const char *route) {
    char *text = prom_text(m);
    prom_doc d;
    prom_parse(text, &d);
    size_t n = pcount(&d, "floodgate_requests_total", "route", route);
    prom_free(&d);
    free(text);
    return n > 0;
}

static const char *cfg_ab =
    "{\"version\": \"ab\", \"chain\": [], \"routes\": ["
    "{\"name\": \"a\", \"match\": {\"path\": {\"exact\": \"/a\"}}, \"handler\": \"script\"},"
    "{\"name\": \"b\", \"match\": {\"path\": {\"exact\": \"/b\"}}, \"handler\": \"script\"}]}";
static const char *cfg_a =
    "{\"version\": \"a\", \"chain\": [], \"routes\": ["
    "{\"name\": \"a\", \"match\": {\"path\": {\"exact\": \"/a\"}}, \"handler\": \"script\"}]}";

/* Reload cfg_a until route b has left the export; how many loads it took. */
static int reload_until_b_gone(rt_rig *x, int max) {
    int loads = 0;
    while (prom_has_route(x->m, "b") && loads < max) {
        RT_LOAD_OK(x, cfg_a);
        loads++;
    }
    return loads;
}

START_TEST(test_reload_series) {
    rt_rig x;
    rt_init(&x);
    RT_LOAD_OK(&x, cfg_ab);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rt_send(&x, "/a", p_ok(2 * MS)), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(rt_send(&x, "/b", p_ok(1 * MS)), 0);
    ck_assert_int_eq(rt_send(&x, "/c", p_ok(0)), FG_ENOROUTE);
    ck_assert_uint_eq(route_stats(x.m, "main", "a").ok, 3);
    ck_assert_uint_eq(route_stats(x.m, "main", "b").ok, 2);
    ck_assert_uint_eq(route_stats(x.m, "main", "").rejected_by_code[IX(FG_ENOROUTE)], 1);
    ck_assert(prom_has_route(x.m, "b"));

    /* A drops b: a and "" keep counting where they were. */
    RT_LOAD_OK(&x, cfg_a);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(rt_send(&x, "/a", p_ok(2 * MS)), 0);
    ck_assert_int_eq(rt_send(&x, "/b", p_ok(0)), FG_ENOROUTE);
    fg_route_stats a = route_stats(x.m, "main", "a");
    ck_assert_uint_eq(a.ok, 7);
    ck_assert_uint_eq(a.latency_count, 7);
    ck_assert_uint_eq(a.latency_sum_ns, 14 * MS);
    ck_assert_uint_eq(route_stats(x.m, "main", "").rejected_by_code[IX(FG_ENOROUTE)], 2);
    /* b goes with the last snapshot that used it: the runtime frees a retired
     * snapshot after an epoch grace period (with no request in flight, the
     * load that retires it already does), else a later load. */
    int loads = reload_until_b_gone(&x, 3);
    ck_assert_msg(!prom_has_route(x.m, "b"), "b still exported after %d more loads", loads);
    fg_route_stats gone;
    ck_assert_int_eq(fg_metrics_route(x.m, "main", "b", &gone), FG_ENOTFOUND);
    ck_assert_uint_eq(route_stats(x.m, "main", "a").ok, 7);

    /* b back: a new series, from 0 (a Prometheus counter reset). */
    RT_LOAD_OK(&x, cfg_ab);
    fg_route_stats fresh = route_stats(x.m, "main", "b");
    ck_assert(th_is_zero(&fresh, sizeof(fresh)));
    ck_assert_int_eq(rt_send(&x, "/b", p_ok(1 * MS)), 0);
    ck_assert_uint_eq(route_stats(x.m, "main", "b").ok, 1);
    ck_assert_uint_eq(route_stats(x.m, "main", "a").ok, 7);

    /* Split requests in flight on the old snapshot: one on a counts in a's
     * series (shared with the new snapshot); the one on b keeps b exported
     * until it ends, and its end frees the last snapshot using b. */
    fg_ctx ca, cb;
    ck_assert_int_eq(fg_ctx_init(&ca, "GET", "/a"), 0);
    ck_assert_int_eq(fg_ctx_init(&cb, "GET", "/b"), 0);
    ck_assert_int_eq(fg_runtime_enter(x.rt, &ca), 0);
    ck_assert_int_eq(fg_runtime_enter(x.rt, &cb), 0);
    for (int i = 0; i < 6; i++)
        RT_LOAD_OK(&x, cfg_a);
    ck_assert(prom_has_route(x.m, "b"));
    fg_fake_clock_advance(x.fake, 3 * MS);
    ck_assert_int_eq(fg_runtime_exit(x.rt, &ca, 0), 0);
    a = route_stats(x.m, "main", "a");
    ck_assert_uint_eq(a.ok, 8);
    ck_assert_uint_eq(a.latency_sum_ns, 17 * MS);
    ck_assert(prom_has_route(x.m, "b"));
    ck_assert_uint_eq(route_stats(x.m, "main", "b").ok, 1);
    ck_assert_int_eq(fg_runtime_exit(x.rt, &cb, 0), 0);
    ck_assert(!prom_has_route(x.m, "b"));
    ck_assert_int_eq(fg_metrics_route(x.m, "main", "b", &gone), FG_ENOTFOUND);
    rt_free(&x);
}
END_TEST

static int h_flaky_fail; /* the breaker test's handler fails while set */

static int h_flaky(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return __atomic_load_n(&h_flaky_fail, __ATOMIC_RELAXED) ? FG_EHANDLER : 0;
}

static const char *cfg_brk =
    "{\"version\": \"%s\", \"breakers\": {\"pay\": {\"min_requests\": 2, \"failure_ratio\": "
    "0.5, "
    "\"window\": {\"count\": 2}, \"open_for\": \"1s\", \"half_open_probes\": 1}}, "
    "\"chain\": [], \"routes\": [{\"name\": \"payments\", \"stages\": [{\"breaker\": "
    "\"pay\"}], \"handler\": \"flaky\"}]}";

START_TEST(test_runtime_integration) {
    rt_rig x;
    rt_init(&x);
    ck_assert_int_eq(fg_registry_add_handler(x.reg, "flaky", h_flaky, NULL), 0);
    /* Nothing loaded yet. */
    char *text = prom_text(x.m);
    prom_doc d;
    prom_parse(text, &d);
    ck_assert_double_eq(pget(&d, "floodgate_config_reloads_total", "result", "ok", LABELS_END),
                        0);
    ck_assert_double_eq(
        pget(&d, "floodgate_config_reloads_total", "result", "error", LABELS_END), 0);
    ck_assert_double_eq(pget(&d, "floodgate_config_info", "version", "", LABELS_END), 1);
    prom_free(&d);
    free(text);

    char cfg[1024];
    snprintf(cfg, sizeof(cfg), cfg_brk, "int-1");
    RT_LOAD_OK(&x, cfg);
    ck_assert_ptr_eq(fg_runtime_metrics(x.rt), x.m);
    ck_assert_int_eq(rt_load(&x,
                             "{\"version\": \"broken\", \"chain\": [{\"limiter\": \"x\"}], "
                             "\"handler\": \"script\"}"),
                     FG_ECONFIG);
    ck_assert_int_eq(rt_load(&x, "{\"version\": "), FG_ECONFIG); /* a syntax error */
    /* The breaker: two failures open it, the next is rejected, a second later a
     * successful probe closes it. */
    __atomic_store_n(&h_flaky_fail, 1, __ATOMIC_RELAXED);
    ck_assert_int_eq(rt_send(&x, "/p", p_ok(0)), FG_EHANDLER);
    ck_assert_int_eq(rt_send(&x, "/p", p_ok(0)), FG_EHANDLER);
    ck_assert_int_eq(rt_send(&x, "/p", p_ok(0)), FG_EBREAKER);
    text = prom_text(x.m);
    prom_parse(text, &d);
    ck_assert_double_eq(pget(&d, "floodgate_breaker_state", "breaker", "pay", LABELS_END), 1);
    prom_free(&d);
    free(text);
    __atomic_store_n(&h_flaky_fail, 0, __ATOMIC_RELAXED);
    fg_fake_clock_advance(x.fake, 1 * SEC);
    ck_assert_int_eq(rt_send(&x, "/p", p_ok(0)), 0);
    ck_assert_int_eq(rt_send(&x, "/p", p_ok(0)), 0);

    fg_route_stats p = route_stats(x.m, "main", "payments");
    ck_assert_uint_eq(p.ok, 2);
    ck_assert_uint_eq(p.failed, 2);
    ck_assert_uint_eq(p.rejected_by_code[IX(FG_EBREAKER)], 1);
    ck_assert_uint_eq(fg_metrics_stage_rejections(x.m, "pay", FG_EBREAKER), 1);
    text = prom_text(x.m);
    prom_parse(text, &d);
    ck_assert_double_eq(pget(&d, "floodgate_config_reloads_total", "result", "ok", LABELS_END),
                        1);
    ck_assert_double_eq(
        pget(&d, "floodgate_config_reloads_total", "result", "error", LABELS_END), 2);
    ck_assert_double_eq(pget(&d, "floodgate_config_info", "version", "int-1", LABELS_END), 1);
    ck_assert_uint_eq(pcount(&d, "floodgate_config_info", "version", "broken"), 0);
    ck_assert_double_eq(pget(&d, "floodgate_breaker_transitions_total", "breaker", "pay",
                             "from", "closed", "to", "open", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, "floodgate_breaker_transitions_total", "breaker", "pay",
                             "from", "open", "to", "half_open", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, "floodgate_breaker_transitions_total", "breaker", "pay",
                             "from", "half_open", "to", "closed", LABELS_END),
                        1);
    ck_assert_uint_eq(pcount(&d, "floodgate_breaker_transitions_total", "breaker", "pay"), 3);
    ck_assert_double_eq(pget(&d, "floodgate_breaker_state", "breaker", "pay", LABELS_END), 0);
    ck_assert_double_eq(pget(&d, "floodgate_stage_rejections_total", "stage", "pay", "code",
                             "breaker_open", LABELS_END),
                        1);
    prom_free(&d);
    free(text);

    /* A version with quotes and a backslash, escaped in the info label. */
    snprintf(cfg, sizeof(cfg), cfg_brk, "q\\\"uote\\\\d");
    RT_LOAD_OK(&x, cfg);
    char v[64];
    ck_assert_int_eq(fg_runtime_version(x.rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, "q\"uote\\d");
    text = prom_text(x.m);
    ck_assert_ptr_nonnull(
        strstr(text, "\nfloodgate_config_info{version=\"q\\\"uote\\\\d\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nfloodgate_config_reloads_total{result=\"ok\"} 2\n"));
    free(text);
    /* The breaker carried over; its counts too. */
    ck_assert_uint_eq(route_stats(x.m, "main", "payments").ok, 2);

    /* A chain swapped in by hand counts as a load too (and has no metrics stage). */
    fg_chain *c = NULL;
    ck_assert_int_eq(fg_chain_new(NULL, &c), 0);
    ck_assert_int_eq(fg_runtime_swap(x.rt, c, "by-hand"), 0);
    text = prom_text(x.m);
    ck_assert_ptr_nonnull(strstr(text, "\nfloodgate_config_info{version=\"by-hand\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nfloodgate_config_reloads_total{result=\"ok\"} 3\n"));
    free(text);
    rt_free(&x);
}
END_TEST

/* ---- cluster limiters ----------------------------------------------------------------- */

uint64_t fg__config_live_components(void); /* lib/config.c test hook */

/* A loopback address nobody answers: a socket bound to 127.0.0.1:0 and never
 * listening refuses connections for as long as it is held. */
static int refused_port(char *addr, size_t cap) {
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(addr, cap, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    return fd;
}

static const char *cfg_cluster =
    "{\"version\": \"%s\", \"limiters\": {\"shared\": {\"rate\": \"1/h\", \"burst\": 4, "
    "\"cluster\": {\"redis\": \"%s\", \"instances\": 2, \"timeout\": \"%s\"}}}, "
    "\"chain\": [{\"limiter\": \"shared\"}], \"handler\": \"script\"}";

/* The cluster families of one limiter name, as exported now. */
typedef struct cl_fig {
    double mode, fallbacks, recoveries, roundtrips, errors, leased, refunded, held;
    double dec[2][2]; /* [fallback][rejected] */
} cl_fig;

/* nlim: how many limiter names the export must have. */
static cl_fig cluster_figures(fg_metrics *m, const char *name, size_t nlim) {
    char *text = prom_text(m);
    prom_doc d;
    prom_parse(text, &d); /* also: no series twice */
    cl_fig f;
    f.mode = pget(&d, "floodgate_cluster_mode", "limiter", name, LABELS_END);
    f.fallbacks = pget(&d, "floodgate_cluster_fallbacks_total", "limiter", name, LABELS_END);
    f.recoveries = pget(&d, "floodgate_cluster_recoveries_total", "limiter", name, LABELS_END);
    f.roundtrips = pget(&d, "floodgate_cluster_roundtrips_total", "limiter", name, LABELS_END);
    f.errors = pget(&d, "floodgate_cluster_errors_total", "limiter", name, LABELS_END);
    f.leased = pget(&d, "floodgate_cluster_leased_tokens_total", "limiter", name, LABELS_END);
    f.refunded =
        pget(&d, "floodgate_cluster_refunded_tokens_total", "limiter", name, LABELS_END);
    f.held = pget(&d, "floodgate_cluster_held_tokens", "limiter", name, LABELS_END);
    for (int fb = 0; fb < 2; fb++)
        for (int rej = 0; rej < 2; rej++)
            f.dec[fb][rej] = pget(&d, "floodgate_cluster_decisions_total", "limiter", name,
                                  "mode", fb ? "fallback" : "cluster", "decision",
                                  rej ? "rejected" : "admitted", LABELS_END);
    static const char *const fams[][2] = {
        {"floodgate_cluster_mode", "gauge"},
        {"floodgate_cluster_fallbacks_total", "counter"},
        {"floodgate_cluster_recoveries_total", "counter"},
        {"floodgate_cluster_roundtrips_total", "counter"},
        {"floodgate_cluster_errors_total", "counter"},
        {"floodgate_cluster_leased_tokens_total", "counter"},
        {"floodgate_cluster_refunded_tokens_total", "counter"},
        {"floodgate_cluster_held_tokens", "gauge"},
        {"floodgate_cluster_decisions_total", "counter"},
    };
    for (int i = 0; i < TH_NELEM(fams); i++) {
        prom_family *pf = prom_find_family(&d, fams[i][0]);
        ck_assert_msg(pf != NULL, "no family %s", fams[i][0]);
        ck_assert_str_eq(pf->type, fams[i][1]);
        ck_assert_msg(pf->help, "%s has no HELP", fams[i][0]);
        ck_assert_uint_eq(
            pf->samples,
            nlim * (strcmp(fams[i][0], "floodgate_cluster_decisions_total") ? 1 : 4));
    }
    prom_free(&d);
    free(text);
    return f;
}

/* Whether the export has any cluster family. */
static int has_cluster_families(fg_metrics *m) {
    char *text = prom_text(m);
    int has = strstr(text, "floodgate_cluster_") != NULL;
    free(text);
    return has;
}

/*
 * A cluster limiter whose Redis refuses connections, on the runtime's fake
 * clock (so its fallback bucket, rate/instances and burst/instances, decides
 * exactly, and it never retries: its backoff runs on that clock too). Its
 * figures in both exports; a reload that changes its options while a split
 * request holds the old snapshot: old and new limiter alive at once, one
 * series, their counters summed, never going backwards when the old one
 * goes; a removed limiter leaves the export.
 */
START_TEST(test_cluster_metrics) {
    if (!fg_cluster_available())
        return; /* check_config covers the config error of this build */
    char addr[64], cfg[1024];
    int fd = refused_port(addr, sizeof(addr));
    rt_rig x;
    rt_init(&x);
    ck_assert(!has_cluster_families(x.m));
    uint64_t live0 = fg__config_live_components();
    snprintf(cfg, sizeof(cfg), cfg_cluster, "c1", addr, "5ms");
    RT_LOAD_OK(&x, cfg);
    /* A split request admitted on the c1 snapshot holds it (until below). */
    fg_ctx held;
    ck_assert_int_eq(fg_ctx_init(&held, "GET", "/"), 0);
    ck_assert_int_eq(fg_runtime_enter(x.rt, &held), 0);
    int ok = 1;
    for (int i = 0; i < 4; i++)
        ok += rt_send(&x, "/", p_ok(0)) == 0;
    ck_assert_int_eq(ok, 2); /* burst 4 over 2 instances */
    cl_fig f = cluster_figures(x.m, "shared", 1);
    ck_assert_double_eq(f.mode, 1);
    ck_assert_double_eq(f.fallbacks, 1); /* at start: the connect was refused */
    ck_assert_double_eq(f.recoveries, 0);
    ck_assert_double_eq(f.errors, 1);
    ck_assert_double_eq(f.roundtrips, 0);
    ck_assert_double_eq(f.leased, 0);
    ck_assert_double_eq(f.refunded, 0);
    ck_assert_double_eq(f.held, 0);
    ck_assert_double_eq(f.dec[0][0], 0);
    ck_assert_double_eq(f.dec[0][1], 0);
    ck_assert_double_eq(f.dec[1][0], 2);
    ck_assert_double_eq(f.dec[1][1], 3);
    ck_assert_uint_eq(fg_metrics_stage_rejections(x.m, "shared", FG_ELIMITED), 3);

    /* JSON: the same figures, and why it is in fallback. */
    char *text = json_text(x.m);
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    ck_assert_msg(root != NULL, "%s", jerr.text);
    json_t *cls = json_object_get(root, "clusters");
    ck_assert_uint_eq(json_array_size(cls), 1);
    json_t *c = json_array_get(cls, 0);
    ck_assert_str_eq(json_string_value(json_object_get(c, "limiter")), "shared");
    ck_assert_str_eq(json_string_value(json_object_get(c, "mode")), "fallback");
    ck_assert_uint_eq(jint(c, "fallback_admitted"), 2);
    ck_assert_uint_eq(jint(c, "fallback_rejected"), 3);
    ck_assert_uint_eq(jint(c, "admitted"), 0);
    ck_assert_uint_eq(jint(c, "rejected"), 0);
    ck_assert_uint_eq(jint(c, "fallbacks"), 1);
    ck_assert_uint_eq(jint(c, "recoveries"), 0);
    ck_assert_uint_eq(jint(c, "errors"), 1);
    ck_assert_uint_eq(jint(c, "roundtrips"), 0);
    ck_assert_uint_eq(jint(c, "leased"), 0);
    ck_assert_uint_eq(jint(c, "refunded"), 0);
    ck_assert_uint_eq(jint(c, "held"), 0);
    json_t *lc = json_object_get(c, "last_change");
    ck_assert_str_eq(json_string_value(json_object_get(lc, "from")), "cluster");
    ck_assert_str_eq(json_string_value(json_object_get(lc, "to")), "fallback");
    char want[128];
    snprintf(want, sizeof(want), "connect %s: ", addr);
    const char *reason = json_string_value(json_object_get(lc, "reason"));
    ck_assert_msg(strncmp(reason, want, strlen(want)) == 0, "reason \"%s\"", reason);
    ck_assert_double_eq(jreal(lc, "seconds_ago"), 0); /* the fake clock has not moved */
    json_decref(root);
    free(text);

    /* c2 changes the timeout: a new limiter of the same name, also refused
     * at start, while the split request keeps the old one alive. (The fake
     * clock never moves in this test: neither limiter retries Redis, so
     * every count is exact.) */
    snprintf(cfg, sizeof(cfg), cfg_cluster, "c2", addr, "6ms");
    RT_LOAD_OK(&x, cfg);
    ok = 0;
    for (int i = 0; i < 5; i++)
        ok += rt_send(&x, "/", p_ok(0)) == 0;
    ck_assert_int_eq(ok, 2); /* the new limiter's own fallback bucket */
    f = cluster_figures(x.m, "shared", 1);
    ck_assert_uint_eq(fg__config_live_components(), live0 + 2); /* both limiters */
    ck_assert_double_eq(f.fallbacks, 2);
    ck_assert_double_eq(f.errors, 2);
    ck_assert_double_eq(f.dec[1][0], 2 + 2);
    ck_assert_double_eq(f.dec[1][1], 3 + 3);
    ck_assert_double_eq(f.mode, 1);
    /* The old snapshot goes with the split request: its counts stay. */
    ck_assert_int_eq(fg_runtime_exit(x.rt, &held, 0), 0);
    for (int i = 0; i < 3; i++)
        RT_LOAD_OK(&x, cfg);
    ck_assert_uint_eq(fg__config_live_components(), live0 + 1);
    f = cluster_figures(x.m, "shared", 1);
    ck_assert_double_eq(f.fallbacks, 2);
    ck_assert_double_eq(f.errors, 2);
    ck_assert_double_eq(f.dec[1][0], 4);
    ck_assert_double_eq(f.dec[1][1], 6);

    /* Removed: the families leave the export with the last snapshot. */
    for (int i = 0; i < 3; i++)
        RT_LOAD_OK(&x, "{\"version\": \"none\", \"chain\": [], \"handler\": \"script\"}");
    ck_assert(!has_cluster_families(x.m));
    text = json_text(x.m);
    root = json_loads(text, 0, &jerr);
    ck_assert_uint_eq(json_array_size(json_object_get(root, "clusters")), 0);
    json_decref(root);
    free(text);
    rt_free(&x);
    close(fd);
}
END_TEST

/* A per-key cluster limiter adds its two families (only it: the one-bucket
 * limiter beside it has no keys); the others are as for any limiter. */
START_TEST(test_cluster_metrics_per_key) {
    if (!fg_cluster_available())
        return;
    char addr[64], cfg[1024];
    int fd = refused_port(addr, sizeof(addr));
    rt_rig x;
    rt_init(&x);
    snprintf(cfg, sizeof(cfg),
             "{\"version\": \"k\", \"limiters\": {"
             "\"tenant\": {\"rate\": \"1/h\", \"burst\": 1, \"key\": {\"header\": \"x-t\"}, "
             "\"max_keys\": 4, \"cluster\": {\"redis\": \"%s\"}}, "
             "\"all\": {\"rate\": \"1/h\", \"burst\": 9, \"cluster\": {\"redis\": \"%s\"}}}, "
             "\"chain\": [{\"limiter\": \"tenant\"}, {\"limiter\": \"all\"}], "
             "\"handler\": \"script\"}",
             addr, addr);
    RT_LOAD_OK(&x, cfg);
    const char *users[] = {"a", "a", "b"};
    int ok = 0;
    for (int i = 0; i < 3; i++) {
        fg_ctx ctx;
        ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
        ck_assert_int_eq(fg_ctx_add_header(&ctx, "x-t", users[i]), 0);
        ok += fg_runtime_call(x.rt, &ctx, NULL, NULL) == 0;
    }
    ck_assert_int_eq(ok, 2);
    cl_fig t = cluster_figures(x.m, "tenant", 2);
    ck_assert_double_eq(t.dec[1][0], 2);
    ck_assert_double_eq(t.dec[1][1], 1);
    cl_fig a = cluster_figures(x.m, "all", 2);
    ck_assert_double_eq(a.dec[1][0], 2);
    char *text = prom_text(x.m);
    prom_doc d;
    prom_parse(text, &d);
    prom_family *f = prom_find_family(&d, "floodgate_cluster_keys");
    ck_assert_ptr_nonnull(f);
    ck_assert_str_eq(f->type, "gauge");
    ck_assert_uint_eq(f->samples, 1);
    ck_assert_double_ge(pget(&d, "floodgate_cluster_keys", "limiter", "tenant", LABELS_END),
                        0);
    f = prom_find_family(&d, "floodgate_cluster_table_full_total");
    ck_assert_ptr_nonnull(f);
    ck_assert_str_eq(f->type, "counter");
    ck_assert_uint_eq(f->samples, 2);
    ck_assert_double_ge(pget(&d, "floodgate_cluster_table_full_total", "limiter", "tenant",
                             "decision", "rejected", LABELS_END),
                        0);
    ck_assert_uint_eq(pcount(&d, "floodgate_cluster_keys", "limiter", "all"), 0);
    prom_free(&d);
    free(text);
    text = json_text(x.m);
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    ck_assert_ptr_nonnull(root);
    json_t *cls = json_object_get(root, "clusters");
    ck_assert_uint_eq(json_array_size(cls), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *c = json_array_get(cls, i);
        int per_key = strcmp(json_string_value(json_object_get(c, "limiter")), "tenant") == 0;
        ck_assert_int_eq(json_object_get(c, "keys") != NULL, per_key);
        ck_assert_int_eq(json_object_get(c, "full_rejected") != NULL, per_key);
    }
    json_decref(root);
    free(text);
    rt_free(&x);
    close(fd);
}
END_TEST

static const char *cfg_slo = "{\"version\": \"%s\", \"chain\": [], \"routes\": ["
                             "{\"name\": \"r\", \"match\": {\"path\": {\"prefix\": \"/r\"}}, "
                             "\"handler\": \"script\"%s},"
                             "{\"name\": \"s\", \"handler\": \"script\"}]}";
static const char *slo_json = ", \"slo\": {\"latency\": \"200ms\", \"latency_target\": 0.99, "
                              "\"error_rate\": 0.001, \"window\": \"1h\"}";

START_TEST(test_config_slo) {
    rt_rig x;
    rt_init(&x);
    char cfg[1024];
    snprintf(cfg, sizeof(cfg), cfg_slo, "slo-1", slo_json);
    RT_LOAD_OK(&x, cfg);
    fg_slo_status st;
    ck_assert_int_eq(fg_metrics_slo(x.m, "main", "r", T0, &st), 0);
    ck_assert_int_eq(st.has_latency, 1);
    ck_assert_int_eq(st.has_errors, 1);
    ck_assert_uint_eq(st.window_ns, 3600 * SEC);
    ck_assert_uint_eq(st.requests, 0);
    ck_assert_int_eq(fg_metrics_slo(x.m, "main", "s", T0, &st), FG_ENOTFOUND);
    fg_fake_clock_set(x.fake, T0 + SEC);
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(rt_send(&x, "/r", i < 2 ? p_ok(300 * MS) : p_ok(1 * MS)), 0);
    ck_assert_int_eq(rt_send(&x, "/r/x", p_fail(1 * MS, FG_EHANDLER)), FG_EHANDLER);
    ck_assert_int_eq(fg_metrics_slo(x.m, "main", "r", T0 + 30 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 101);
    ck_assert_uint_eq(st.handled, 101);
    ck_assert_uint_eq(st.slow, 2);
    ck_assert_uint_eq(st.errors, 1);
    ck_assert_near(st.latency_burn_slow, (2.0 / 101) * 100);
    ck_assert_near(st.error_burn_slow, (1.0 / 101) * 1000);
    ck_assert_int_eq(st.latency_ok, 0);
    ck_assert_int_eq(st.error_ok, 0);
    /* A reload with the same SLO keeps its history. */
    snprintf(cfg, sizeof(cfg), cfg_slo, "slo-2", slo_json);
    RT_LOAD_OK(&x, cfg);
    ck_assert_int_eq(fg_metrics_slo(x.m, "main", "r", T0 + 30 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 101);
    /* Invalid SLOs are config errors, at their paths; nothing changes. */
    snprintf(cfg, sizeof(cfg), cfg_slo, "slo-bad",
             ", \"slo\": {\"latency\": \"0ms\", \"latency_target\": 1, \"error_rate\": 2, "
             "\"window\": \"1ns\", \"colour\": 1}");
    fg_config_errors errs;
    ck_assert_int_eq(fg_runtime_load_json(x.rt, x.reg, cfg, strlen(cfg), &errs), FG_ECONFIG);
    ck_assert_uint_eq(errs.count, 5);
    for (size_t i = 0; i < errs.count; i++)
        ck_assert_msg(strncmp(errs.items[i].path, "routes[0].slo", 13) == 0, "path %s",
                      errs.items[i].path);
    snprintf(cfg, sizeof(cfg), cfg_slo, "slo-empty", ", \"slo\": {}");
    ck_assert_int_eq(fg_runtime_load_json(x.rt, x.reg, cfg, strlen(cfg), &errs), FG_ECONFIG);
    ck_assert_uint_eq(errs.count, 1);
    ck_assert_str_eq(errs.items[0].path, "routes[0].slo");
    ck_assert_int_eq(fg_metrics_slo(x.m, "main", "r", T0 + 30 * SEC, &st), 0);
    ck_assert_uint_eq(st.requests, 101);
    /* A config without the SLO removes it. */
    snprintf(cfg, sizeof(cfg), cfg_slo, "slo-none", "");
    RT_LOAD_OK(&x, cfg);
    ck_assert_int_eq(fg_metrics_slo(x.m, "main", "r", T0 + 30 * SEC, &st), FG_ENOTFOUND);
    rt_free(&x);
}
END_TEST

/* ---- header promises found broken ------------------------------------------------------- */

/*
 * metrics.h, fg_metrics_set_slo: "Applies to metrics stages made afterwards
 * and to running ones alike", and FG_ETOOMANY "beyond FG_METRICS_MAX_SERIES"
 * (so it may create the series). An SLO declared before the chain is built
 * must hold once the chain's metrics stage exists.
 */
START_TEST(test_slo_before_stage) {
    fg_fake_clock *fake = NULL;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fake), 0);
    fg_clock clk = fg_fake_clock_as_clock(fake);
    fg_metrics *m = NULL;
    ck_assert_int_eq(fg_metrics_new(&clk, &m), 0);
    fg_slo_options so = {0, 0, 0.01, 0};
    int rc = fg_metrics_set_slo(m, "early", "", &so);
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.clock = clk;
    fg_chain *c = NULL;
    ck_assert_int_eq(fg_chain_new(&co, &c), 0);
    fg_stage *ms = NULL;
    ck_assert_int_eq(fg_stage_metrics(m, NULL, "early", NULL, &ms), 0);
    ck_assert_int_eq(fg_chain_use(c, ms), 0);
    fg_fake_clock_advance(fake, SEC);
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    tl_plan = p_fail(0, FG_EHANDLER);
    ck_assert_int_eq(fg_chain_call(c, &ctx, h_script, fake), FG_EHANDLER);
    memset(&tl_plan, 0, sizeof(tl_plan));
    fg_slo_status st;
    int rc2 = fg_metrics_slo(m, "early", "", T0 + 2 * SEC, &st);
    fg_chain_free(c);
    fg_metrics_free(m);
    fg_fake_clock_free(fake);
    ck_assert_msg(rc == 0, "fg_metrics_set_slo before the stage: %s", fg_err_name(rc));
    ck_assert_msg(rc2 == 0, "fg_metrics_slo: %s", fg_err_name(rc2));
    ck_assert_uint_eq(st.requests, 1);
    ck_assert_uint_eq(st.errors, 1);
}
END_TEST

/*
 * FG_METRICS_NAME_MAX is "bytes in a chain, route, stage or breaker
 * label", 128, as FG_ROUTE_NAME_MAX, FG_STAGE_NAME_MAX and
 * FG_CONFIG_NAME_MAX are: a name of exactly 128 bytes, which the router,
 * stages and configs accept, must be counted under its full name.
 */
START_TEST(test_name_max_bytes) {
    char name[FG_METRICS_NAME_MAX + 1];
    memset(name, 'n', FG_METRICS_NAME_MAX);
    name[FG_METRICS_NAME_MAX] = '\0';
    /* A 128-byte route and label through the API. */
    fg_metrics *m = NULL;
    ck_assert_int_eq(fg_metrics_new(NULL, &m), 0);
    fg_router *router = NULL;
    ck_assert_int_eq(fg_router_new(&router), 0);
    fg_route_target t = {NULL, 0, th_ok_handler, NULL, NULL, 0};
    fg_route_spec spec = FG_ROUTE_SPEC_INIT;
    spec.name = name;
    spec.targets = &t;
    spec.ntargets = 1;
    ck_assert_int_eq(fg_router_add(router, &spec, NULL), 0);
    ck_assert_int_eq(fg_router_build(router), 0);
    fg_stage *ms = NULL;
    int rc_route = fg_stage_metrics(m, router, "c", NULL, &ms);
    fg_stage_unref(ms);
    ms = NULL;
    int rc_label = fg_stage_metrics(m, NULL, name, NULL, &ms);
    fg_stage_unref(ms);
    fg_router_free(router);
    /* A 128-byte stage name in the rejection counts. */
    fg_chain *c = NULL;
    ck_assert_int_eq(fg_chain_new(NULL, &c), 0);
    ck_assert_int_eq(fg_stage_metrics(m, NULL, "c", NULL, &ms), 0);
    ck_assert_int_eq(fg_chain_use(c, ms), 0);
    ck_assert_int_eq(fg_chain_use(c, script_stage(name)), 0);
    fg_ctx ctx;
    ck_assert_int_eq(fg_ctx_init(&ctx, "GET", "/"), 0);
    tl_plan = p_reject(name, FG_ELIMITED);
    ck_assert_int_eq(fg_chain_call(c, &ctx, th_ok_handler, NULL), FG_ELIMITED);
    memset(&tl_plan, 0, sizeof(tl_plan));
    char *text = prom_text(m);
    int stage_full = strstr(text, name) != NULL;
    free(text);
    fg_breaker_event ev =
        brk_ev(FG_BREAKER_CLOSED, FG_BREAKER_OPEN, FG_BREAKER_REASON_FAILURE_RATIO);
    int rc_breaker = fg_metrics_breaker_event(m, name, &ev);
    fg_chain_free(c);
    fg_metrics_free(m);
    /* A config route of 128 bytes loads. */
    rt_rig x;
    rt_init(&x);
    char cfg[512];
    snprintf(cfg, sizeof(cfg),
             "{\"version\": \"long\", \"chain\": [], \"routes\": [{\"name\": \"%s\", "
             "\"handler\": \"script\"}]}",
             name);
    int rc_config = rt_load(&x, cfg);
    rt_free(&x);
    ck_assert_msg(rc_route == 0 && rc_label == 0 && stage_full && rc_breaker == 0 &&
                      rc_config == 0,
                  "128-byte names: route %s, chain label %s, stage name %s in the export, "
                  "breaker %s, config route %s (%s)",
                  fg_err_name(rc_route), fg_err_name(rc_label), stage_full ? "whole" : "cut",
                  fg_err_name(rc_breaker), fg_err_name(rc_config), rt_errs);
}
END_TEST

/*
 * floodgate_config_info is "the version of the config serving now", and a
 * config's version may have 256 bytes (what fg_runtime_swap accepts): the
 * label must be the whole version, as fg_runtime_version gives it.
 */
START_TEST(test_version_label_full) {
    rt_rig x;
    rt_init(&x);
    char version[201];
    for (int i = 0; i < 200; i++)
        version[i] = (char)('a' + i % 26);
    version[200] = '\0';
    char cfg[512];
    snprintf(cfg, sizeof(cfg), "{\"version\": \"%s\", \"chain\": [], \"handler\": \"script\"}",
             version);
    RT_LOAD_OK(&x, cfg);
    char v[300];
    ck_assert_int_eq(fg_runtime_version(x.rt, v, sizeof(v)), 0);
    ck_assert_str_eq(v, version);
    char *text = prom_text(x.m);
    prom_doc d;
    prom_parse(text, &d);
    double info = pget(&d, "floodgate_config_info", "version", version, LABELS_END);
    prom_free(&d);
    free(text);
    rt_free(&x);
    ck_assert_msg(info == 1,
                  "floodgate_config_info does not carry the whole 200-byte version");
}
END_TEST

/*
 * A handler's failures (decision="admitted") and a stage's rejections with
 * FG_EHANDLER (decision="rejected") share the code name "handler_failed":
 * in JSON, as in the Prometheus text, neither may hide the other.
 */
START_TEST(test_json_handler_failed_twice) {
    rig r;
    rig_init(&r);
    ck_assert_int_eq(rig_send(&r, "/orders", p_ok(1 * MS)), 0);
    ck_assert_int_eq(rig_send(&r, "/orders", p_fail(1 * MS, FG_EHANDLER)), FG_EHANDLER);
    ck_assert_int_eq(rig_send(&r, "/orders", p_reject("route-gate", FG_EHANDLER)),
                     FG_EHANDLER);
    ck_assert_int_eq(rig_send(&r, "/orders", p_reject("route-gate", FG_EHANDLER)),
                     FG_EHANDLER);
    fg_route_stats o = route_stats(r.m, "api", "orders");
    ck_assert_uint_eq(o.failed, 1);
    ck_assert_uint_eq(o.rejected_by_code[IX(FG_EHANDLER)], 2);
    char *text = json_text(r.m);
    json_t *root = json_loads(text, 0, NULL);
    ck_assert_ptr_nonnull(root);
    json_t *s = json_series(root, "api", "orders");
    assert_json_codes(s, &o);
    ck_assert_uint_eq(jint(json_object_get(s, "admitted"), "handler_failed"), 1);
    ck_assert_uint_eq(jint(json_object_get(s, "rejected"), "handler_failed"), 2);
    json_decref(root);
    free(text);
    text = prom_text(r.m);
    prom_doc d;
    prom_parse(text, &d);
    ck_assert_double_eq(pget(&d, "floodgate_requests_total", "chain", "api", "route", "orders",
                             "decision", "admitted", "code", "handler_failed", LABELS_END),
                        1);
    ck_assert_double_eq(pget(&d, "floodgate_requests_total", "chain", "api", "route", "orders",
                             "decision", "rejected", "code", "handler_failed", LABELS_END),
                        2);
    prom_free(&d);
    free(text);
    rig_free(&r);
}
END_TEST

/*
 * fg_slo_status: "Burn rate: the bad share divided by the allowed share",
 * for any allowed share in (0, 1). A budget too small for a billionth
 * (error_rate 1e-10, latency_target 1 - 1e-10) is still a budget: one bad
 * request of one spends it 10^10 times over, never 0 times.
 */
START_TEST(test_slo_tiny_budget) {
    rig r;
    rig_init(&r);
    fg_slo_options so = {100 * MS, 1 - 1e-10, 1e-10, 0};
    ck_assert_int_eq(fg_metrics_set_slo(r.m, "api", "users", &so), 0);
    ck_assert_int_eq(rig_send(&r, "/users", p_fail(200 * MS, FG_EHANDLER)), FG_EHANDLER);
    fg_slo_status st;
    ck_assert_int_eq(fg_metrics_slo(r.m, "api", "users", fg_fake_clock_now(r.fake), &st), 0);
    rig_free(&r);
    ck_assert_uint_eq(st.errors, 1);
    ck_assert_uint_eq(st.slow, 1);
    ck_assert_int_eq(st.error_ok, 0);
    ck_assert_int_eq(st.latency_ok, 0);
    ck_assert_msg(st.error_burn_slow > 1e9 && st.latency_burn_slow > 1e9,
                  "burn rates %g (errors) and %g (latency), want about 1e10",
                  st.error_burn_slow, st.latency_burn_slow);
}
END_TEST

Suite *fg_suite_metrics(void) {
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("counts");
    tcase_add_test(tc, test_route_counts);
    tcase_add_test(tc, test_no_router);
    tcase_add_test(tc, test_stage_rejections);
    suite_add_tcase(s, tc);
    tc = tcase_create("bounds");
    tcase_add_test(tc, test_series_bound);
    tcase_add_test(tc, test_stage_names_bound);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    tc = tcase_create("threads");
    tcase_add_test(tc, test_threads);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    tc = tcase_create("export");
    tcase_add_test(tc, test_prometheus_format);
    tcase_add_test(tc, test_prometheus_empty);
    tcase_add_test(tc, test_prometheus_hostile);
    tcase_add_test(tc, test_prometheus_toolong);
    tcase_add_test(tc, test_json);
    tcase_add_test(tc, test_json_handler_failed_twice);
    suite_add_tcase(s, tc);
    tc = tcase_create("slo");
    tcase_add_test(tc, test_slo_stream);
    tcase_add_test(tc, test_slo_changes);
    tcase_add_test(tc, test_slo_errors);
    tcase_add_test(tc, test_slo_first_bucket);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    tc = tcase_create("runtime");
    tcase_add_test(tc, test_reload_series);
    tcase_add_test(tc, test_runtime_integration);
    tcase_add_test(tc, test_config_slo);
    tcase_add_test(tc, test_cluster_metrics);
    tcase_add_test(tc, test_cluster_metrics_per_key);
    suite_add_tcase(s, tc);
    tc = tcase_create("promises");
    tcase_add_test(tc, test_slo_before_stage);
    tcase_add_test(tc, test_name_max_bytes);
    tcase_add_test(tc, test_version_label_full);
    tcase_add_test(tc, test_slo_tiny_budget);
    suite_add_tcase(s, tc);
    return s;
}
