/*
 * tests/prom_sample.c - write a Prometheus exposition that exercises every
 * metric family, for tests/test_promtool.sh to hand to `promtool check
 * metrics`.
 *
 * A registry on a fake clock (so the output is the same on every run)
 * counts traffic through one chain: a metrics stage, a gate that rejects
 * some requests, a pacer that makes some wait, and a router with three
 * routes whose handlers take known times and sometimes fail. On top: a
 * breaker's changes, config loads (one rejected), an SLO, three cluster
 * limiters in fallback mode, one of them per key (their Redis port refuses
 * connections; when this floodgate has hiredis), and label values with quotes, backslashes
 * and newlines (a route, a stage, a breaker, a cluster limiter and the
 * version), which the exporter must escape.
 *
 * Usage: prom_sample > metrics.prom   (exit 0, or 1 with a message on stderr)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <floodgate.h>

#define MS FG_NS_PER_MS

/* What the next request does (this program is single-threaded). */
static struct {
    const char *reject_at; /* the stage that rejects it, by name */
    int code;
    uint64_t delay_ns; /* the pacer's wait */
    uint64_t latency_ns;
    int fail;
} next;

static int script_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    const char *me = state;
    (void)slot;
    if (next.delay_ns != 0 && strcmp(me, "pacer") == 0)
        ctx->delay_ns = next.delay_ns;
    return next.reject_at != NULL && strcmp(next.reject_at, me) == 0 ? next.code : 0;
}

static const fg_stage_ops script_ops = {"script", script_enter, NULL, NULL};

static int handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    fg_fake_clock_advance(arg, next.latency_ns);
    return next.fail;
}

static void check(int rc, const char *what) {
    if (rc != 0) {
        (void)fprintf(stderr, "prom_sample: %s: %s\n", what, fg_strerror(rc));
        exit(1);
    }
}

static fg_stage *script(const char *name) {
    fg_stage *s = NULL;
    check(fg_stage_new(&script_ops, (void *)name, name, &s), name);
    return s;
}

/* How a runtime's config registers its cluster limiters (lib/metrics.c;
 * this program links the static library). */
int fg__metrics_add_cluster(fg_metrics *m, const char *name, const fg_cluster_limiter *cl);
void fg__metrics_remove_cluster(fg_metrics *m, const fg_cluster_limiter *cl);

static const char *const hostile_stage = "gate \"x\\y\"\nz";
static const char *const hostile_route = "we\"ird\\route\n2";

static void send_req(const fg_chain *chain, const char *path, const char *reject_at, int code,
                     uint64_t delay_ns, uint64_t latency_ns, int fail) {
    next.reject_at = reject_at;
    next.code = code;
    next.delay_ns = delay_ns;
    next.latency_ns = latency_ns;
    next.fail = fail;
    fg_ctx ctx;
    check(fg_ctx_init(&ctx, "GET", path), "fg_ctx_init");
    (void)fg_chain_call(chain, &ctx, NULL, NULL);
}

/* A loopback port that refuses connections while fd is held. */
static int refused_port(char *addr, size_t cap) {
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        check(FG_ESYS, "a loopback port");
    (void)snprintf(addr, cap, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    return fd;
}

/* A cluster limiter in fallback mode (on the fake clock, so it never
 * retries) that has decided a few requests, registered in m; per key with
 * max_keys > 0. */
static fg_cluster_limiter *cluster(fg_metrics *m, const char *name, const char *addr,
                                   fg_clock clk, uint32_t max_keys) {
    fg_cluster_options o = FG_CLUSTER_OPTIONS_INIT;
    o.rate = 100;
    o.burst = 4;
    o.name = name;
    o.redis = addr;
    o.instances = 2;
    o.max_keys = max_keys;
    o.clock = clk;
    fg_cluster_limiter *cl = NULL;
    check(fg_cluster_limiter_new(&o, &cl), "fg_cluster_limiter_new");
    for (int i = 0; i < 5; i++)
        (void)(max_keys > 0 ? fg_cluster_limiter_try_key(cl, i % 2 ? "a" : "b", 1,
                                                         fg_clock_read(&clk), 1, NULL)
                            : fg_cluster_limiter_try(cl, fg_clock_read(&clk), 1, NULL));
    check(fg__metrics_add_cluster(m, name, cl), "fg__metrics_add_cluster");
    return cl;
}

int main(void) {
    fg_fake_clock *fake = NULL;
    check(fg_fake_clock_new(UINT64_C(36000) * FG_NS_PER_S, &fake), "fake clock");
    fg_clock clk = fg_fake_clock_as_clock(fake);
    fg_metrics *m = NULL;
    check(fg_metrics_new(&clk, &m), "fg_metrics_new");

    fg_router *router = NULL;
    check(fg_router_new(&router), "fg_router_new");
    static const char *const names[3] = {"users", "orders", NULL};
    static const char *const paths[3] = {"/users", "/orders", "/odd"};
    for (int i = 0; i < 3; i++) {
        fg_stage *rs[1] = {NULL};
        fg_route_target t = {NULL, 0, handler, fake, NULL, 0};
        if (i == 1) {
            rs[0] = script("quota");
            t.stages = rs;
            t.nstages = 1;
        }
        fg_route_spec spec = FG_ROUTE_SPEC_INIT;
        spec.name = names[i] != NULL ? names[i] : hostile_route;
        spec.path_kind = FG_PATH_PREFIX;
        spec.path = paths[i];
        spec.targets = &t;
        spec.ntargets = 1;
        check(fg_router_add(router, &spec, NULL), "fg_router_add");
    }
    check(fg_router_build(router), "fg_router_build");
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    co.name = "api";
    co.clock = clk;
    fg_chain *chain = NULL;
    check(fg_chain_new(&co, &chain), "fg_chain_new");
    fg_stage *ms = NULL;
    check(fg_stage_metrics(m, router, "main", NULL, &ms), "fg_stage_metrics");
    check(fg_chain_use(chain, ms), "metrics stage");
    check(fg_chain_use(chain, script(hostile_stage)), "gate");
    check(fg_chain_use(chain, script("pacer")), "pacer");
    fg_stage *rst = NULL;
    check(fg_stage_router(router, "router", &rst), "fg_stage_router");
    check(fg_chain_use(chain, rst), "router stage");

    fg_slo_options slo = {200 * MS, 0.99, 0.001, 0};
    check(fg_metrics_set_slo(m, "main", "orders", &slo), "fg_metrics_set_slo");
    check(fg_metrics_set_slo(m, "main", hostile_route, &slo), "fg_metrics_set_slo");

    /* First (the clock moves on by its latency): a request over the 1 h cap. */
    send_req(chain, "/odd", NULL, 0, 0, UINT64_C(7200) * FG_NS_PER_S, 0);
    send_req(chain, "/odd", NULL, 0, 0, 5 * FG_NS_PER_S, 0);
    for (int i = 0; i < 200; i++) {
        uint64_t lat = (uint64_t)(i % 50 + 1) * MS / 4; /* 0.25 .. 12.5 ms */
        send_req(chain, "/users/7", NULL, 0, i % 40 == 0 ? 2 * MS : 0, lat,
                 i % 25 == 0 ? -1 : 0);
        send_req(chain, "/orders", i % 10 == 5 ? "quota" : NULL, FG_ELIMITED, 0,
                 i % 20 == 0 ? 300 * MS : 3 * MS, i % 50 == 0 ? FG_ETIMEDOUT : 0);
    }
    send_req(chain, "/users", hostile_stage, FG_EOVERLOADED, 0, 0, 0);
    send_req(chain, "/users", hostile_stage, FG_EINVAL, 0, 0, 0); /* "other" */
    send_req(chain, "/orders", "quota", FG_EBREAKER, 0, 0, 0);
    send_req(chain, "/nowhere", NULL, 0, 0, 0, 0);

    fg_breaker_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.from = FG_BREAKER_CLOSED;
    ev.to = FG_BREAKER_OPEN;
    ev.reason = FG_BREAKER_REASON_FAILURE_RATIO;
    check(fg_metrics_breaker_event(m, "db", &ev), "breaker event");
    ev.from = FG_BREAKER_OPEN;
    ev.to = FG_BREAKER_HALF_OPEN;
    ev.reason = FG_BREAKER_REASON_OPEN_ELAPSED;
    check(fg_metrics_breaker_event(m, "db", &ev), "breaker event");
    check(fg_metrics_breaker_event(m, "pay\"ments\\\n", &ev), "breaker event");
    check(fg_metrics_reload(m, 1, "2024-06-01.1"), "reload");
    check(fg_metrics_reload(m, 0, NULL), "reload");
    check(fg_metrics_reload(m, 1, "v\"2\\b\nc"), "reload");
    fg_cluster_limiter *cl[3] = {NULL, NULL, NULL};
    int port = -1;
    if (fg_cluster_available()) {
        char addr[64];
        port = refused_port(addr, sizeof(addr));
        cl[0] = cluster(m, "shared", addr, clk, 0);
        cl[1] = cluster(m, "ten\"ant\\\n", addr, clk, 0);
        cl[2] = cluster(m, "per_tenant", addr, clk, 8);
    }

    size_t need = 0;
    int rc = fg_metrics_prometheus(m, NULL, 0, &need);
    if (rc != FG_ETOOLONG)
        check(rc == 0 ? FG_ESTATE : rc, "fg_metrics_prometheus (size)");
    char *buf = malloc(need + 1);
    if (buf == NULL) {
        (void)fputs("prom_sample: out of memory\n", stderr);
        return 1;
    }
    size_t len = 0;
    check(fg_metrics_prometheus(m, buf, need + 1, &len), "fg_metrics_prometheus");
    if (fwrite(buf, 1, len, stdout) != len || fflush(stdout) != 0)
        check(FG_ESYS, "writing stdout");
    free(buf);
    for (int i = 0; i < 3; i++) {
        fg__metrics_remove_cluster(m, cl[i]);
        fg_cluster_limiter_free(cl[i]);
    }
    if (port >= 0)
        (void)close(port);
    fg_chain_free(chain);
    fg_metrics_free(m);
    fg_fake_clock_free(fake);
    return 0;
}
