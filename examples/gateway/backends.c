/*
 * examples/gateway/backends.c - the demo services (see backends.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "backends.h"

static void gw_sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Sleep up to ns, in 5 ms steps, ending early when the request is canceled
 * (its client went away). Returns nonzero when canceled. */
static int gw_work(fg_ctx *ctx, uint64_t ns) {
    while (ns > 0 && !fg_ctx_canceled(ctx)) {
        uint64_t step = ns < 5000000u ? ns : 5000000u;
        gw_sleep_ns(step);
        ns -= step;
    }
    return fg_ctx_canceled(ctx);
}

static uint64_t gw_now_ns(void) { return fg_clock_monotonic_now(NULL); }

/* splitmix64 of a shared counter: cheap, thread-safe dice. */
static uint64_t gw_draw(gw_backends *b) {
    uint64_t z = __atomic_fetch_add(&b->draws, 1, __ATOMIC_RELAXED) + 0x9e3779b97f4a7c15u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Write the answer: status and a printf-formatted body (cut to GW_BODY_MAX).
 * Returns what the handler returns to floodgate: 0, or FG_EHANDLER for a
 * 5xx (the breaker counts those as failures). */
__attribute__((format(printf, 3, 4))) static int gw_answer(fg_ctx *ctx, int status,
                                                           const char *fmt, ...) {
    gw_response *resp = ctx->user;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(resp->body, sizeof(resp->body), fmt, ap);
    va_end(ap);
    resp->status = status;
    resp->body_len = n < 0                             ? 0
                     : (size_t)n >= sizeof(resp->body) ? sizeof(resp->body) - 1
                                                       : (size_t)n;
    return status < 500 ? 0 : FG_EHANDLER;
}

static int gw_health(fg_ctx *ctx, void *arg) {
    (void)arg;
    return gw_answer(ctx, 200, "ok\n");
}

/* JSON-safe: the user id is echoed only when it is plain (letters, digits,
 * '-', '_', '.'); anything else is shown as "?". */
static int gw_plain(fg_str s) {
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

static int gw_orders(fg_ctx *ctx, gw_backends *b, const char *version) {
    fg_str user;
    if (fg_ctx_header(ctx, "x-user-id", &user) != 0 || user.len == 0 || user.len > 47)
        return gw_answer(ctx, 400, "{\"error\":\"x-user-id required (1..47 bytes)\"}\n");
    if (b->latency_us > 0)
        gw_sleep_ns(b->latency_us * 1000u);
    if (!gw_plain(user))
        user = (fg_str){"?", 1};
    return gw_answer(ctx, 200,
                     "{\"service\":\"orders\",\"version\":\"%s\",\"user\":\"%.*s\"}\n",
                     version, (int)user.len, user.ptr);
}

static int gw_orders_v1(fg_ctx *ctx, void *arg) { return gw_orders(ctx, arg, "v1"); }
static int gw_orders_v2(fg_ctx *ctx, void *arg) { return gw_orders(ctx, arg, "v2"); }
static int gw_orders_gray(fg_ctx *ctx, void *arg) { return gw_orders(ctx, arg, "gray"); }

int gw_payments_failing(const gw_backends *b, uint64_t now_ns) {
    uint64_t period = b->flaky_period_ms ? b->flaky_period_ms : 20000;
    uint64_t phase = ((now_ns - b->start_ns) / 1000000u) % period;
    return phase >= period / 4 && phase < period / 2;
}

/* Healthy: 2 ms of work. Failing: 70% fail at once (500), 20% hang until
 * the request's deadline runs out (504: the timeout stage's budget, or
 * 400 ms without one), 10% succeed slowly. */
static int gw_payments(fg_ctx *ctx, void *arg) {
    gw_backends *b = arg;
    fg_str id;
    if (fg_ctx_param(ctx, "id", &id) != 0) {
        /* --bare has no router: the id is the path's last segment. */
        const char *slash = strrchr(ctx->path.ptr, '/');
        id = slash ? (fg_str){slash + 1, ctx->path.len - (size_t)(slash + 1 - ctx->path.ptr)}
                   : (fg_str){"", 0};
    }
    if (!gw_plain(id) || id.len > 64)
        id = (fg_str){"?", 1};
    if (!gw_payments_failing(b, gw_now_ns())) {
        gw_sleep_ns(2000000u);
        return gw_answer(ctx, 200, "{\"payment\":\"%.*s\",\"status\":\"ok\"}\n", (int)id.len,
                         id.ptr);
    }
    uint64_t dice = gw_draw(b) % 100;
    if (dice < 70)
        return gw_answer(ctx, 500, "{\"payment\":\"%.*s\",\"error\":\"backend failed\"}\n",
                         (int)id.len, id.ptr);
    if (dice < 90) {
        uint64_t left = fg_ctx_time_left(ctx);
        if (gw_work(ctx, left < 400000000u ? left : 400000000u))
            return FG_ECANCELED;
        gw_answer(ctx, 504, "{\"payment\":\"%.*s\",\"error\":\"backend too slow\"}\n",
                  (int)id.len, id.ptr);
        return FG_ETIMEDOUT;
    }
    if (gw_work(ctx, 150000000u))
        return FG_ECANCELED;
    return gw_answer(ctx, 200, "{\"payment\":\"%.*s\",\"status\":\"ok\",\"slow\":true}\n",
                     (int)id.len, id.ptr);
}

int gw_backends_register(fg_registry *reg, gw_backends *b) {
    static const struct {
        const char *name;
        fg_handler_fn fn;
    } all[] = {{"health", gw_health},
               {"orders_v1", gw_orders_v1},
               {"orders_v2", gw_orders_v2},
               {"orders_gray", gw_orders_gray},
               {"payments", gw_payments}};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        int rc = fg_registry_add_handler(reg, all[i].name, all[i].fn, b);
        if (rc != 0)
            return rc;
    }
    return 0;
}

fg_handler_fn gw_backends_bare(const char *path) {
    if (strcmp(path, "/healthz") == 0)
        return gw_health;
    if (strncmp(path, "/api/orders", 11) == 0 && (path[11] == '\0' || path[11] == '/'))
        return gw_orders_v1;
    if (strncmp(path, "/api/payments/", 14) == 0 && path[14] != '\0' &&
        !strchr(path + 14, '/'))
        return gw_payments;
    return NULL;
}
