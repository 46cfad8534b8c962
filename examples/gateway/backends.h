/*
 * examples/gateway/backends.h - the demo services behind the gateway.
 *
 * Each backend is an ordinary floodgate handler (fg_handler_fn): the config
 * names it in a route, the gateway's worker threads call it through
 * fg_route_dispatch. It reads the request from the ctx and writes its answer
 * into the gw_response that ctx->user points at. They stand in for the real
 * services a gateway would proxy to:
 *
 *   health       200 "ok"
 *   orders_v1    the stable orders service   (x-user-id required)
 *   orders_v2    its canary
 *   orders_gray  the gray deployment (x-env: gray)
 *   payments     a flaky service: healthy, then failing and slow, on a schedule
 */
#ifndef GW_BACKENDS_H
#define GW_BACKENDS_H

#include <stddef.h>
#include <stdint.h>

#include <floodgate.h>

#define GW_BODY_MAX 512

/* What a backend answers. status 0 means "not answered" (the gateway then
 * maps the floodgate outcome to a status itself). */
typedef struct gw_response {
    int status;
    size_t body_len;
    char body[GW_BODY_MAX];
} gw_response;

/* The backends' settings and shared state (read-only once serving, except
 * the draw counter). */
typedef struct gw_backends {
    uint64_t start_ns;        /* CLOCK_MONOTONIC at start: the payments schedule's origin */
    uint64_t latency_us;      /* the orders services' simulated work per request */
    uint64_t flaky_period_ms; /* the payments schedule's period */
    uint64_t draws;           /* atomic: a counter behind the payments backend's dice */
} gw_backends;

/* Register every backend under its config name. Returns 0 or the first
 * fg_registry_add_handler error. b must outlive the registry. */
int gw_backends_register(fg_registry *reg, gw_backends *b);

/* --bare: the backend for a path without floodgate's router (by prefix), or
 * NULL for a path none serves. */
fg_handler_fn gw_backends_bare(const char *path);

/* Whether the payments backend is in its failing phase at now_ns. */
int gw_payments_failing(const gw_backends *b, uint64_t now_ns);

#endif /* GW_BACKENDS_H */
