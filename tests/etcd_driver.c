/*
 * tests/etcd_driver.c - a program that follows a config in etcd with
 * fg_runtime_watch_etcd, for tests/test_etcd.sh.
 *
 * Usage: etcd_driver ENDPOINT KEY [BACKOFF_MS]
 *
 * Registers three handlers, "green", "blue" and "red", that note which one
 * answered, starts the watcher (backoff from BACKOFF_MS to 4 x BACKOFF_MS
 * when given) and prints one line per event on stdout, flushed:
 *
 *   reload rc=NAME revision=R version=V attempts=A loaded=L failed=F
 *          reconnects=C error=PATH: MESSAGE             every attempt (the
 *          first one's, before the watcher exists, with zero counters)
 *   start rc=NAME revision=R version=V                  the first load's outcome
 *
 * then obeys commands on stdin, one per line:
 *
 *   call          one request through the runtime:
 *                 "call rc=NAME handler=H version=V"
 *   stats         "stats attempts=A loaded=L failed=F revision=R reconnects=C version=V"
 *   latency N     N times: put a config of a new version through etcd's HTTP
 *                 API (a plain socket; the watcher's libcurl is not used) and
 *                 time until fg_runtime_version serves it:
 *                 "latency n=N median_ms=X max_ms=Y" (or "latency FAIL ...")
 *   quit          fg_watch_stop, timed: "stopped ms=X", and exit 0
 *
 * End of input is quit. Built without libcurl (fg_etcd_available() == 0) it
 * checks that fg_runtime_watch_etcd says FG_ESTATE, prints
 * "unavailable rc=FG_ESTATE" and exits 0 (1 for any other answer).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <floodgate.h>

static const char *endpoint;
static const char *key;
static fg_watch *watch;
static const char *answered; /* the handler of the last call (main thread only) */

static int handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    answered = arg;
    return 0;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void version_of(fg_runtime *rt, char *v, size_t cap) {
    if (fg_runtime_version(rt, v, cap) != 0)
        snprintf(v, cap, "-");
}

/* Output lines come from the watcher's thread and the main one. */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_reload(fg_runtime *rt, int rc, const fg_config_errors *errors, void *arg) {
    (void)arg;
    char v[300];
    version_of(rt, v, sizeof(v));
    fg_watch_stats s = {0};
    /* The first attempt runs before fg_runtime_watch_etcd returns: no watch yet. */
    fg_watch *w = __atomic_load_n(&watch, __ATOMIC_ACQUIRE);
    if (w != NULL)
        (void)fg_watch_stats_get(w, &s);
    pthread_mutex_lock(&out_lock);
    printf("reload rc=%s revision=%llu version=%s attempts=%llu loaded=%llu failed=%llu "
           "reconnects=%llu",
           fg_err_name(rc), (unsigned long long)s.revision, v, (unsigned long long)s.attempts,
           (unsigned long long)s.loaded, (unsigned long long)s.failed,
           (unsigned long long)s.reconnects);
    if (errors != NULL && errors->count > 0)
        printf(" error=%s: %s", errors->items[0].path, errors->items[0].message);
    printf("\n");
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

/* ---- a put through etcd's HTTP API, on a plain socket ---------------------------------- */

static char *b64(const char *in, size_t n) {
    static const char d[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1);
    size_t o = 0;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(unsigned char)in[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)in[i + 2];
        out[o++] = d[v >> 18 & 63];
        out[o++] = d[v >> 12 & 63];
        out[o++] = i + 1 < n ? d[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? d[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

/* POST /v3/kv/put {key, value}; returns 0 when etcd answered 200. */
static int put(const char *value) {
    char host[256], port[16] = "80";
    const char *p = strncmp(endpoint, "http://", 7) == 0 ? endpoint + 7 : endpoint;
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof(host))
        return -1;
    memcpy(host, p, hl);
    host[hl] = '\0';
    if (p[hl] == ':')
        snprintf(port, sizeof(port), "%.*s", (int)strcspn(p + hl + 1, "/"), p + hl + 1);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &ai) != 0)
        return -1;
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    char *k = b64(key, strlen(key)), *v = b64(value, strlen(value));
    size_t cap = strlen(k) + strlen(v) + 512;
    char *req = malloc(cap);
    int rc = -1;
    if (k != NULL && v != NULL && req != NULL) {
        int bl = snprintf(NULL, 0, "{\"key\":\"%s\",\"value\":\"%s\"}", k, v);
        int n = snprintf(req, cap,
                         "POST /v3/kv/put HTTP/1.1\r\nHost: %s\r\nContent-Type: "
                         "application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         "{\"key\":\"%s\",\"value\":\"%s\"}",
                         host, bl, k, v);
        size_t off = 0;
        while (n > 0 && off < (size_t)n) {
            ssize_t w = write(fd, req + off, (size_t)n - off);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        char resp[512];
        ssize_t got = read(fd, resp, sizeof(resp) - 1);
        if (got > 12) {
            resp[got] = '\0';
            rc = strncmp(resp, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
        }
    }
    free(k);
    free(v);
    free(req);
    close(fd);
    return rc;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Times N puts until each is served (at most 5 s each). */
static void latency(fg_runtime *rt, int n) {
    uint64_t t[200];
    if (n < 1 || n > 200) {
        printf("latency FAIL n must be 1..200\n");
        return;
    }
    for (int i = 0; i < n; i++) {
        char want[64], text[256], v[300];
        snprintf(want, sizeof(want), "lat-%d-%llu", i, (unsigned long long)now_ns());
        snprintf(text, sizeof(text),
                 "{\"version\": \"%s\", \"chain\": [], \"handler\": \"red\"}", want);
        uint64_t t0 = now_ns();
        if (put(text) != 0) {
            printf("latency FAIL put %d\n", i);
            return;
        }
        for (;;) {
            version_of(rt, v, sizeof(v));
            if (strcmp(v, want) == 0)
                break;
            if (now_ns() - t0 > 5000000000u) {
                printf("latency FAIL %s not served after 5 s (serving %s)\n", want, v);
                return;
            }
            sleep_us(50);
        }
        t[i] = now_ns() - t0;
    }
    qsort(t, (size_t)n, sizeof(t[0]), cmp_u64);
    printf("latency n=%d median_ms=%.2f max_ms=%.2f\n", n, (double)t[n / 2] / 1e6,
           (double)t[n - 1] / 1e6);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s ENDPOINT KEY [BACKOFF_MS]\n", argv[0]);
        return 2;
    }
    endpoint = argv[1];
    key = argv[2];
    fg_registry *reg = NULL;
    fg_runtime *rt = NULL;
    if (fg_registry_new(&reg) != 0 || fg_runtime_new(&rt) != 0 ||
        fg_registry_add_handler(reg, "green", handler, "green") != 0 ||
        fg_registry_add_handler(reg, "blue", handler, "blue") != 0 ||
        fg_registry_add_handler(reg, "red", handler, "red") != 0) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    fg_watch_options o = FG_WATCH_OPTIONS_INIT;
    o.on_reload = on_reload;
    o.timeout_ns = 2000000000u;
    if (argc > 3) {
        uint64_t ms = strtoull(argv[3], NULL, 10);
        o.backoff_min_ns = ms * 1000000u;
        o.backoff_max_ns = 4 * ms * 1000000u;
    }
    fg_watch *w = NULL;
    int rc = fg_runtime_watch_etcd(rt, reg, endpoint, key, &o, &w);
    if (!fg_etcd_available()) {
        printf("unavailable rc=%s\n", fg_err_name(rc));
        fg_runtime_free(rt);
        fg_registry_free(reg);
        return rc == FG_ESTATE && w == NULL ? 0 : 1;
    }
    __atomic_store_n(&watch, w, __ATOMIC_RELEASE);
    char v[300];
    version_of(rt, v, sizeof(v));
    fg_watch_stats s = {0};
    if (w != NULL)
        (void)fg_watch_stats_get(w, &s);
    pthread_mutex_lock(&out_lock);
    printf("start rc=%s revision=%llu version=%s\n", fg_err_name(rc),
           (unsigned long long)s.revision, v);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    if (rc != 0) {
        fg_runtime_free(rt);
        fg_registry_free(reg);
        return 1;
    }

    char line[256];
    while (fgets(line, sizeof(line), stdin) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        pthread_mutex_lock(&out_lock);
        if (strcmp(line, "call") == 0) {
            fg_ctx ctx;
            answered = "-";
            rc = fg_ctx_init(&ctx, "GET", "/");
            if (rc == 0)
                rc = fg_runtime_call(rt, &ctx, NULL, NULL);
            version_of(rt, v, sizeof(v));
            printf("call rc=%s handler=%s version=%s\n", fg_err_name(rc), answered, v);
        } else if (strcmp(line, "stats") == 0) {
            (void)fg_watch_stats_get(w, &s);
            version_of(rt, v, sizeof(v));
            printf("stats attempts=%llu loaded=%llu failed=%llu revision=%llu reconnects=%llu "
                   "version=%s\n",
                   (unsigned long long)s.attempts, (unsigned long long)s.loaded,
                   (unsigned long long)s.failed, (unsigned long long)s.revision,
                   (unsigned long long)s.reconnects, v);
        } else if (strncmp(line, "latency ", 8) == 0) {
            pthread_mutex_unlock(&out_lock); /* the watcher prints meanwhile */
            latency(rt, atoi(line + 8));
            pthread_mutex_lock(&out_lock);
        } else if (strcmp(line, "quit") == 0) {
            pthread_mutex_unlock(&out_lock);
            break;
        } else {
            printf("unknown command: %s\n", line);
        }
        fflush(stdout);
        pthread_mutex_unlock(&out_lock);
    }
    uint64_t t0 = now_ns();
    fg_watch_stop(w);
    uint64_t t1 = now_ns();
    printf("stopped ms=%.1f\n", (double)(t1 - t0) / 1e6);
    fflush(stdout);
    fg_runtime_free(rt);
    fg_registry_free(reg);
    return 0;
}
