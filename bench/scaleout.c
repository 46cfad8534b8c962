/*
 * bench/scaleout.c - the scale-out figures, on real servers: the cluster
 * limiter on Redis (cluster_try_leased, cluster_roundtrips_per_1e6) and the
 * etcd config source (etcd_change_to_swap_ms).
 *
 * The servers' addresses come from the environment: FG_BENCH_REDIS
 * ("host:port", as fg_cluster_options.redis takes it) and FG_BENCH_ETCD
 * ("http://host:port"); bench/servers.sh starts both on free loopback ports
 * and sets them. A figure whose server is not given, or whose part of
 * floodgate was built without its library (hiredis, libcurl), prints
 *     bench=<name> threads=1 ns_per_op=0.00 skipped=<why>
 * and nothing else. A server that is given but cannot be used is an error
 * (exit 1), not a skip.
 *
 * Each figure uses its own Redis key or etcd key, named with the process
 * id, so runs against a shared server do not meet.
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <floodgate.h>

#include "bench.h"

static void skipped(const char *name, const char *why) {
    char extra[96];
    (void)snprintf(extra, sizeof(extra), "skipped=%s", why);
    report(name, 1, 0.0, extra);
}

/* The Redis address, or NULL after printing the figure as skipped. */
static const char *redis_or_skip(const char *name) {
    const char *addr = getenv("FG_BENCH_REDIS"); /* NOLINT(concurrency-mt-unsafe): read-only */
    if (!fg_cluster_available()) {
        skipped(name, "built_without_hiredis");
        return NULL;
    }
    if (addr == NULL || addr[0] == '\0') {
        skipped(name, "FG_BENCH_REDIS_unset");
        return NULL;
    }
    return addr;
}

/* A cluster limiter on a fresh key, connected: NULL (after saying why) when
 * it cannot be made or starts in fallback mode. */
static fg_cluster_limiter *cluster_make(const char *name, fg_cluster_options *o) {
    char key[64];
    (void)snprintf(key, sizeof(key), "%s:%ld", name, (long)getpid());
    o->prefix = "floodgate-bench:";
    o->name = key;
    fg_cluster_limiter *cl = NULL;
    int rc = fg_cluster_limiter_new(o, &cl);
    if (rc != 0) {
        (void)fprintf(stderr, "bench: %s: fg_cluster_limiter_new: %s\n", name,
                      fg_strerror(rc));
        return NULL;
    }
    fg_cluster_stats st;
    if (fg_cluster_limiter_stats(cl, &st) != 0 || st.mode != FG_CLUSTER_MODE_CLUSTER) {
        (void)fprintf(stderr, "bench: %s: Redis at %s cannot be used (fallback mode)\n", name,
                      o->redis);
        fg_cluster_limiter_free(cl);
        return NULL;
    }
    return cl;
}

/* ---- cluster_try_leased ------------------------------------------------------------ */

/*
 * cluster_try_leased: ns per fg_cluster_limiter_try on the lease path, with
 * the clock supplied by the caller as in limiter_try_ctxclock, which is
 * measured again here, each repetition's two runs back to back, so the
 * ratio comes from one run. Target: threads=1 at most 2 x
 * limiter_try_ctxclock (ratio_ctxclock=); threads=2 is two threads on one
 * lease, what contention costs.
 *
 * The lease is kept from running dry: the rate is the most a cluster
 * limiter takes (1e6/s: period/rate must be >= 1 us), the shared bucket
 * holds 4e9 tokens (a fresh key is full) and each Redis call leases 1e7 of
 * them, for 60 s. The renewer fetches the next lease when half of this one
 * is spent, i.e. 5e6 requests ahead of running out, and a run is at most
 * 2e6 requests per thread per repetition, so requests wait for Redis only
 * if a renewal takes longer than the loop needs for 5e6 tries. Every
 * request that misses the lease waits for a Redis call, and a thread can
 * miss once per call, so at most threads x roundtrips of the ops timed were
 * misses: lease_hits_min= is 1 minus that share (roundtrips= counts the
 * Redis calls made during the timed runs, by the renewer or by a miss).
 */
#define LEASED_RATE         UINT64_C(1000000)
#define LEASED_BURST        UINT64_C(4000000000)
#define LEASED_LEASE        UINT64_C(10000000)
#define LEASED_TTL_NS       (UINT64_C(60) * FG_NS_PER_S)
#define TARGET_LEASED_RATIO 2.0

static uint64_t loop_cluster_try(void *arg, int index, uint64_t ops) {
    fg_cluster_limiter *cl = arg;
    uint64_t now = now_ns(), failures = 0;
    (void)index;
    for (uint64_t i = 0; i < ops; i++) {
        uint64_t wait;
        failures += fg_cluster_limiter_try(cl, now + i, 1, &wait) != 0;
    }
    return failures;
}

int bench_cluster_try_leased(const char *name) {
    if (!selected(name))
        return 0;
    const char *addr = redis_or_skip(name);
    if (addr == NULL)
        return 0;
    fg_cluster_options o = FG_CLUSTER_OPTIONS_INIT;
    o.rate = LEASED_RATE;
    o.burst = LEASED_BURST;
    o.lease = LEASED_LEASE;
    o.lease_ttl_ns = LEASED_TTL_NS;
    o.redis = addr;
    fg_cluster_limiter *cl = cluster_make(name, &o);
    if (cl == NULL)
        return -1;
    fg_limiter *ref = make_limiter(fg_clock_monotonic());
    /* The first lease, before timing. */
    uint64_t wait;
    int rc = fg_cluster_limiter_try(cl, now_ns(), 1, &wait) == 0 ? 0 : -1;
    if (rc != 0)
        (void)fprintf(stderr, "bench: %s: the first try was not admitted\n", name);
    uint64_t want = 1;
    void *cargs[MAX_THREADS] = {cl, cl}, *rargs[MAX_THREADS] = {ref, ref};
    for (int threads = 1; threads <= MAX_THREADS && rc == 0; threads++) {
        double c[REPS], r[REPS];
        uint64_t callocs = 0, rallocs = 0;
        fg_cluster_stats before, after;
        (void)fg_cluster_limiter_stats(cl, &before);
        for (int i = 0; i < REPS && rc == 0; i++) {
            r[i] = run_once(name, loop_try_ctxclock, rargs, threads, &rallocs);
            c[i] = run_once(name, loop_cluster_try, cargs, threads, &callocs);
            rc = r[i] < 0 || c[i] < 0 ? -1 : 0;
        }
        if (rc != 0)
            break;
        (void)fg_cluster_limiter_stats(cl, &after);
        uint64_t ops = (uint64_t)REPS * ops_per_thread * (uint64_t)threads;
        want += ops;
        double ns = median(c, REPS), ref_ns = median(r, REPS);
        double ratio = ns / ref_ns;
        uint64_t trips = after.roundtrips - before.roundtrips;
        double hits = 1.0 - (double)threads * (double)trips / (double)ops;
        char extra[320];
        int len = snprintf(extra, sizeof(extra),
                           "ratio_ctxclock=%.2f ctxclock_ns=%.2f ratio_cas=%.2f "
                           "allocs_per_op=%.4f lease=%llu roundtrips=%llu lease_hits_min=%.6f",
                           ratio, ref_ns, ns / floor_cas_ns, (double)callocs / (double)ops,
                           (unsigned long long)LEASED_LEASE, (unsigned long long)trips,
                           hits < 0 ? 0.0 : hits);
        if (threads == 1 && len > 0 && (size_t)len < sizeof(extra))
            (void)snprintf(extra + len, sizeof(extra) - (size_t)len,
                           " target=%.0fxlimiter_try_ctxclock met=%s", TARGET_LEASED_RATIO,
                           yes_no(ratio <= TARGET_LEASED_RATIO));
        report(name, threads, ns, extra);
    }
    /* Every request was admitted by the cluster, none by a fallback. */
    fg_cluster_stats st;
    if (rc == 0 &&
        (fg_cluster_limiter_stats(cl, &st) != 0 || st.admitted != want || st.rejected != 0 ||
         st.fallback_admitted + st.fallback_rejected != 0 || st.fallbacks != 0)) {
        (void)fprintf(stderr,
                      "bench: %s: admitted %llu of %llu, %llu rejected, %llu fallbacks\n",
                      name, (unsigned long long)st.admitted, (unsigned long long)want,
                      (unsigned long long)st.rejected, (unsigned long long)st.fallbacks);
        rc = -1;
    }
    fg_limiter_free(ref);
    fg_cluster_limiter_free(cl);
    return rc;
}

/* ---- cluster_roundtrips_per_1e6 ----------------------------------------------------- */

/*
 * cluster_roundtrips_per_1e6: Redis calls (fg_cluster_stats.roundtrips,
 * the connection's script load excluded) per million requests admitted,
 * with the default lease: rate 1e6/s, so the lease is rate x 10 ms = 10,000
 * tokens and the target 1e6 / lease = 100 calls. One thread tries as fast
 * as it can, the clock read every 256 tries, until 1e6 requests (--quick:
 * 1e5) are admitted from a bucket of 2e6 (so none is refused): the most
 * demand one instance can put on its lease, i.e. the most renewals. The
 * first request, which takes the first lease itself, comes before the
 * count: the figure is the steady state.
 * ns_per_op is wall time per admitted request. The timeout is 100 ms rather
 * than the default 5 ms, so a busy machine does not turn a slow renewal
 * into a fallback; fallbacks= says whether one happened anyway.
 */
#define RT_RATE       UINT64_C(1000000)
#define RT_BURST      UINT64_C(2000000)
#define RT_TIMEOUT_NS (UINT64_C(100) * FG_NS_PER_MS)
#define RT_LIMIT_NS   (UINT64_C(30) * FG_NS_PER_S)

int bench_cluster_roundtrips(const char *name) {
    if (!selected(name))
        return 0;
    const char *addr = redis_or_skip(name);
    if (addr == NULL)
        return 0;
    fg_cluster_options o = FG_CLUSTER_OPTIONS_INIT;
    o.rate = RT_RATE;
    o.burst = RT_BURST;
    o.timeout_ns = RT_TIMEOUT_NS;
    o.redis = addr;
    fg_cluster_limiter *cl = cluster_make(name, &o);
    if (cl == NULL)
        return -1;
    fg_cluster_options got;
    (void)fg_cluster_limiter_get(cl, &got);
    uint64_t goal = ops_per_thread >= 1000000 ? 1000000 : 100000;
    fg_cluster_stats before, after;
    /* The cold start is not counted: the first request finds no lease and
     * takes the first one itself. */
    uint64_t warm_wait;
    (void)fg_cluster_limiter_try(cl, now_ns(), 1, &warm_wait);
    (void)fg_cluster_limiter_stats(cl, &before);
    uint64_t t0 = now_ns(), now = t0, admitted = 0, tries = 0;
    int rc = 0;
    while (admitted < goal) {
        if ((tries++ & 255) == 0) {
            now = now_ns();
            if (now - t0 > RT_LIMIT_NS) {
                (void)fprintf(stderr, "bench: %s: %llu admitted after %llu s\n", name,
                              (unsigned long long)admitted,
                              (unsigned long long)(RT_LIMIT_NS / FG_NS_PER_S));
                rc = -1;
                break;
            }
        }
        uint64_t wait;
        admitted += fg_cluster_limiter_try(cl, now, 1, &wait) == 0;
    }
    uint64_t t1 = now_ns();
    (void)fg_cluster_limiter_stats(cl, &after);
    if (rc == 0) {
        uint64_t cluster_admitted = after.admitted - before.admitted;
        uint64_t trips = after.roundtrips - before.roundtrips;
        double per = cluster_admitted ? (double)trips * 1e6 / (double)cluster_admitted : 0;
        double target = 1e6 / (double)got.lease;
        char extra[320];
        (void)snprintf(extra, sizeof(extra),
                       "roundtrips_per_1e6=%.1f lease=%llu rate=%llu/s admitted=%llu "
                       "roundtrips=%llu rejected=%llu fallbacks=%llu target=%.0f met=%s",
                       per, (unsigned long long)got.lease, (unsigned long long)RT_RATE,
                       (unsigned long long)cluster_admitted, (unsigned long long)trips,
                       (unsigned long long)(after.rejected - before.rejected),
                       (unsigned long long)(after.fallbacks - before.fallbacks), target,
                       yes_no(per <= target));
        report(name, 1, (double)(t1 - t0) / (double)admitted, extra);
    }
    fg_cluster_limiter_free(cl);
    return rc;
}

/* ---- etcd_change_to_swap_ms --------------------------------------------------------- */

/*
 * etcd_change_to_swap_ms: from a put of a new config into the watched key
 * to the runtime serving it, in ms: the put is sent (POST /v3/kv/put on
 * etcd's JSON gateway, over a plain socket, so the figure does not share
 * the watcher's libcurl) and fg_runtime_generation is polled every 100 us
 * until it changes; the put's own commit in etcd is inside the time, as it
 * is for a user. Median (and max) of 9 puts (--quick: 3), each a config
 * with a new version label, checked to be the one serving after the swap.
 * ns_per_op is the median in ns. Target: at most 100 ms on loopback.
 */
#define ETCD_PUTS       9
#define ETCD_PUTS_QUICK 3
#define ETCD_LIMIT_NS   (UINT64_C(5) * FG_NS_PER_S)
#define TARGET_ETCD_MS  100.0

static int etcd_ok_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

static size_t base64(const char *in, size_t len, char *out, size_t cap) {
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char pad = '=';
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)(unsigned char)in[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)(unsigned char)in[i + 1] << 8;
        if (i + 2 < len)
            v |= (unsigned char)in[i + 2];
        if (o + 4 >= cap)
            return 0;
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        char c2 = pad, c3 = pad;
        if (i + 1 < len)
            c2 = tab[(v >> 6) & 63];
        if (i + 2 < len)
            c3 = tab[v & 63];
        out[o++] = c2;
        out[o++] = c3;
    }
    out[o] = '\0';
    return o;
}

/* "http://host:port[/prefix]" into host, port and the path prefix. */
static int etcd_parse(const char *url, char *host, size_t hcap, char *port, size_t pcap,
                      const char **prefix) {
    if (strncmp(url, "http://", 7) != 0)
        return -1;
    const char *h = url + 7, *slash = strchr(h, '/');
    const char *end = slash ? slash : h + strlen(h);
    const char *colon = memchr(h, ':', (size_t)(end - h));
    if (colon == NULL || (size_t)(colon - h) >= hcap || (size_t)(end - colon) > pcap)
        return -1;
    (void)snprintf(host, hcap, "%.*s", (int)(colon - h), h);
    (void)snprintf(port, pcap, "%.*s", (int)(end - colon - 1), colon + 1);
    *prefix = slash ? slash : "";
    return 0;
}

/* One put of value into key through etcd's JSON gateway. 0 on HTTP 200. */
static int etcd_put(const char *url, const char *key, const char *value) {
    char host[256], port[16], body[8192], k64[256], v64[6000], req[9000];
    const char *prefix;
    if (etcd_parse(url, host, sizeof(host), port, sizeof(port), &prefix) != 0 ||
        base64(key, strlen(key), k64, sizeof(k64)) == 0 ||
        base64(value, strlen(value), v64, sizeof(v64)) == 0)
        return -1;
    int blen = snprintf(body, sizeof(body), "{\"key\":\"%s\",\"value\":\"%s\"}", k64, v64);
    int rlen = snprintf(req, sizeof(req),
                        "POST %s/v3/kv/put HTTP/1.1\r\nHost: %s:%s\r\n"
                        "Content-Type: application/json\r\nContent-Length: %d\r\n"
                        "Connection: close\r\n\r\n%s",
                        prefix, host, port, blen, body);
    if (blen < 0 || (size_t)blen >= sizeof(body) || rlen < 0 || (size_t)rlen >= sizeof(req))
        return -1;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || ai == NULL)
        return -1;
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    int rc = -1;
    struct timeval tv = {5, 0};
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0 &&
        connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        size_t off = 0;
        while (off < (size_t)rlen) {
            ssize_t w = send(fd, req + off, (size_t)rlen - off, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        char reply[512];
        size_t got = 0;
        while (off == (size_t)rlen && got < sizeof(reply) - 1) {
            ssize_t r = recv(fd, reply + got, sizeof(reply) - 1 - got, 0);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        reply[got] = '\0';
        rc = strncmp(reply, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return rc;
}

static const char *etcd_config(int variant, char *buf, size_t cap) {
    (void)snprintf(buf, cap,
                   "{\"version\": \"bench-%d\", \"limiters\": {\"api\": {\"rate\": \"%d/s\", "
                   "\"burst\": 100}}, \"chain\": [{\"limiter\": \"api\"}], \"routes\": "
                   "[{\"name\": \"all\", \"handler\": \"ok\"}]}",
                   variant, 1000 + variant);
    return buf;
}

int bench_etcd_change_to_swap(const char *name) {
    if (!selected(name))
        return 0;
    const char *url = getenv("FG_BENCH_ETCD"); /* NOLINT(concurrency-mt-unsafe): read-only */
    if (!fg_etcd_available()) {
        skipped(name, "built_without_libcurl");
        return 0;
    }
    if (url == NULL || url[0] == '\0') {
        skipped(name, "FG_BENCH_ETCD_unset");
        return 0;
    }
    char key[96], text[1024], version[64];
    (void)snprintf(key, sizeof(key), "/floodgate-bench/%ld/config", (long)getpid());
    fg_registry *reg = NULL;
    fg_runtime *rt = NULL;
    fg_watch *w = NULL;
    if (fg_registry_new(&reg) != 0 ||
        fg_registry_add_handler(reg, "ok", etcd_ok_handler, NULL) != 0 ||
        fg_runtime_new(&rt) != 0)
        abort();
    int rc = etcd_put(url, key, etcd_config(0, text, sizeof(text)));
    if (rc != 0)
        (void)fprintf(stderr, "bench: %s: cannot put %s on %s\n", name, key, url);
    if (rc == 0) {
        fg_watch_options wo = FG_WATCH_OPTIONS_INIT;
        int wrc = fg_runtime_watch_etcd(rt, reg, url, key, &wo, &w);
        if (wrc != 0) {
            (void)fprintf(stderr, "bench: %s: fg_runtime_watch_etcd: %s\n", name,
                          fg_strerror(wrc));
            rc = -1;
        }
    }
    int puts = ops_per_thread >= 1000000 ? ETCD_PUTS : ETCD_PUTS_QUICK;
    double v[ETCD_PUTS], worst = 0;
    for (int i = 0; i < puts && rc == 0; i++) {
        uint64_t g0 = fg_runtime_generation(rt), t0 = now_ns(), t1;
        if (etcd_put(url, key, etcd_config(i + 1, text, sizeof(text))) != 0) {
            (void)fprintf(stderr, "bench: %s: cannot put %s on %s\n", name, key, url);
            rc = -1;
            break;
        }
        for (;;) {
            int swapped = fg_runtime_generation(rt) != g0;
            t1 = now_ns();
            if (swapped || t1 - t0 >= ETCD_LIMIT_NS)
                break;
            struct timespec pause = {0, 100000};
            (void)nanosleep(&pause, NULL);
        }
        char want[32];
        (void)snprintf(want, sizeof(want), "bench-%d", i + 1);
        if (fg_runtime_generation(rt) == g0 ||
            fg_runtime_version(rt, version, sizeof(version)) != 0 ||
            strcmp(version, want) != 0) {
            (void)fprintf(stderr, "bench: %s: put %d was not serving after %llu ms\n", name,
                          i + 1, (unsigned long long)((t1 - t0) / FG_NS_PER_MS));
            rc = -1;
            break;
        }
        v[i] = (double)(t1 - t0);
        worst = v[i] > worst ? v[i] : worst;
    }
    fg_watch_stop(w);
    if (rc == 0) {
        double ns = median(v, puts);
        char extra[160];
        (void)snprintf(extra, sizeof(extra),
                       "ms=%.3f max_ms=%.3f puts=%d target=%.0fms met=%s", ns / 1e6,
                       worst / 1e6, puts, TARGET_ETCD_MS, yes_no(ns / 1e6 <= TARGET_ETCD_MS));
        report(name, 1, ns, extra);
    }
    fg_runtime_free(rt);
    fg_registry_free(reg);
    return rc;
}
