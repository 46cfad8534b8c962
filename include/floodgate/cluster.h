/*
 * floodgate/cluster.h - a rate limit shared by every instance of a service:
 * the cluster limiter, whose token bucket lives in Redis.
 *
 * The bucket is GCRA, as fg_limiter's, evaluated atomically in Redis by a
 * server-side Lua script on the Redis server's clock (loaded once with
 * SCRIPT LOAD, called by its SHA1 with EVALSHA; reloaded by itself after
 * a Redis restart empties the script cache). Requests do not go to Redis:
 * each instance leases a batch of tokens (`lease`) and spends them locally,
 * lock-free, at the cost of a local limiter; a background thread takes the
 * next whole lease when a quarter of the current one is left, so a steady
 * stream of requests never waits for Redis and costs one Redis call per
 * lease. Only a request that finds the lease empty goes to Redis
 * itself, and never for longer than `timeout_ns`.
 *
 * Exactness. Every token an instance spends was taken from the shared
 * bucket first, so from the bucket's creation the cluster admits at most
 * burst + rate x elapsed (elapsed on the Redis server's clock). Over any
 * window of time a lease taken before the window may be spent inside it,
 * which gives the bound for a window:
 *
 *     admitted <= burst + rate x window + instances x held_max
 *
 * where held_max = lease + ceil(lease / 4) - 1, the most tokens an instance
 * holds (a renewal adds a lease to the quarter left): 1 for lease 1, about
 * 1.25 x lease otherwise. lease 1 is exact (every request is one Redis
 * round trip). A lease's tokens are spent within lease_ttl_ns of being
 * taken or given back (refunded) to the bucket; the tokens of an instance
 * that crashed with a lease (at most held_max) are lost to the bucket only
 * until it refills, held_max x interval later. docs/scale-out.md has the
 * trade-off in numbers.
 *
 * Redis unreachable, slow or failing is a designed state, not an outage:
 * the limiter switches to its fallback (a local bucket of rate/instances
 * exactly, that is rate tokens per instances periods, with burst/instances
 * (at least 1); or reject everything), counts every decision it
 * makes there, reports the change to its listener, reconnects in the
 * background with exponential backoff and jitter, and returns to the
 * cluster by itself.
 *
 * Per key. With max_keys set, the limiter holds one bucket per key (a
 * tenant, a user): the Redis key is prefix + name + ":" + key, and each key
 * has its own lease in a fixed table of max_keys entries, allocated at
 * creation. A key's next lease is taken by the request that finds its lease
 * empty (one Redis call per lease per key, within timeout_ns); there is no
 * background prefetch per key. Idle keys give their tokens back after
 * lease_ttl_ns and their entries are reused. The fallback keeps a local
 * bucket per key (fg_keyed_limiter) of the key's rate/instances.
 *
 * This part of floodgate needs hiredis at build time. A floodgate built
 * without it (no libhiredis-dev) still declares these functions:
 * fg_cluster_limiter_new and the tries return FG_ESTATE (so no limiter
 * ever exists, and the others see only NULL), and fg_cluster_available()
 * returns 0.
 *
 * Addresses: a host name is resolved by the system resolver, which
 * timeout_ns does not bound; give a numeric address where a slow resolver
 * must not delay a reconnect.
 */
#ifndef FLOODGATE_CLUSTER_H
#define FLOODGATE_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "common.h"
#include "limiter.h"
#include "stage.h"

FG_BEGIN_DECLS

/* A token bucket in Redis, shared by every process that names it (opaque). */
typedef struct fg_cluster_limiter fg_cluster_limiter;

/* What the limiter does while Redis cannot be used. */
typedef enum fg_cluster_fallback {
    /* Fail open to a local bucket of rate/instances exactly (rate tokens
     * per instances periods) and burst/instances (at least 1): together
     * the instances keep about the cluster rate. */
    FG_CLUSTER_FALLBACK_LOCAL = 0,
    /* Fail closed: reject every request (FG_ELIMITED, retry-after the next
     * reconnect attempt) until Redis is back. */
    FG_CLUSTER_FALLBACK_CLOSED = 1,
} fg_cluster_fallback;

/* Where the limiter's decisions come from. */
typedef enum fg_cluster_mode {
    FG_CLUSTER_MODE_CLUSTER = 0,  /* the shared bucket in Redis, through leases */
    FG_CLUSTER_MODE_FALLBACK = 1, /* Redis unusable: the fallback policy decides */
} fg_cluster_mode;

/* A change of mode, as reported to the listener. */
typedef struct fg_cluster_event {
    fg_cluster_mode from; /* the mode before the change */
    fg_cluster_mode to;   /* the mode after it */
    uint64_t at_ns;       /* on the limiter's clock */
    /* Entering fallback: why, e.g. "connect 127.0.0.1:6379: Connection
     * refused" or "EVALSHA on 127.0.0.1:6379: timeout after 5 ms". Back in cluster: "". */
    char reason[160];
} fg_cluster_event;

/*
 * A listener for mode changes. Called on the thread that saw the change
 * (a request's, the background thread, or fg_cluster_limiter_new's when
 * Redis cannot be reached at start), after it took effect, with the
 * limiter's name. It runs with the limiter's Redis lock held: it must not
 * block, and must not call or free the limiter.
 */
typedef void (*fg_cluster_listener)(const char *name, const fg_cluster_event *event,
                                    void *arg);

/*
 * Cluster limiter options. Zero means "not set" for every field; rate,
 * burst and name are required. Start from FG_CLUSTER_OPTIONS_INIT.
 */
typedef struct fg_cluster_options {
    uint64_t rate;      /* tokens per period for the whole cluster, >= 1 */
    uint64_t period_ns; /* 0 means 1 s; period/rate must be >= 1 us */
    uint64_t burst;     /* the shared bucket's capacity, >= 1 */
    /* Redis: "host:port" (a numeric IPv4/IPv6 address or a host name;
     * NULL means "127.0.0.1:6379") or "unix:/path/to/socket". Copied. */
    const char *redis;
    const char *prefix; /* key prefix; NULL means "floodgate:"; copied */
    /* The bucket's name: the Redis key is prefix + name. Every instance
     * that uses the same key, rate and burst shares the bucket. Copied;
     * at most FG_CLUSTER_NAME_MAX bytes with the prefix. */
    const char *name;
    /* Tokens per lease, 1 .. burst. 0: the default, rate x 10 ms (at
     * least 1, at most burst/4 when that is >= 1). 1 is exact: every
     * request asks Redis. */
    uint64_t lease;
    /* Unspent lease tokens go back to the bucket this long after they were
     * taken (0: 1 s); bounds how long an idle instance holds tokens. */
    uint64_t lease_ttl_ns;
    /* The longest a request waits for Redis (connecting, a lease call),
     * 0: 5 ms. Past it the request is decided by the fallback. */
    uint64_t timeout_ns;
    fg_cluster_fallback fallback; /* while Redis is unusable (default: local) */
    uint32_t instances; /* expected instances, for FG_CLUSTER_FALLBACK_LOCAL; 0 means 1 */
    /* Reconnect backoff: the first retry after backoff_min_ns (0: 50 ms),
     * doubling to backoff_max_ns, each with up to 50% random jitter
     * subtracted. Measured on the clock below: with a fake clock the
     * limiter reconnects only as the fake time passes. */
    uint64_t backoff_min_ns;
    uint64_t backoff_max_ns; /* the longest wait between reconnects (0: 2 s) */
    /* Per key: 0 (one bucket), or the most keys held at once, from 1 to
     * FG_KEYED_MAX_KEYS; memory is fixed by it. */
    uint32_t max_keys;
    uint32_t key_max; /* longest key in bytes; 0 means FG_KEYED_KEY_MAX_DEFAULT */
    /* What a full table does with a new key (floodgate/limiter.h). */
    fg_keyed_when_full when_full;
    fg_cluster_listener on_event; /* mode changes (NULL: none) */
    void *arg;                    /* passed to on_event */
    /* Lease lifetimes, the fallback bucket, reconnect backoff and events;
     * now == NULL: monotonic. timeout_ns is always real time. */
    fg_clock clock;
} fg_cluster_options;

/* Defaults: every field unset. */
#define FG_CLUSTER_OPTIONS_INIT                                                               \
    {                                                                                         \
        0, 0, 0, NULL, NULL, NULL, 0, 0, 0, FG_CLUSTER_FALLBACK_LOCAL, 0, 0, 0, 0, 0,         \
            FG_KEYED_REJECT_NEW, NULL, NULL, {                                                \
            NULL, NULL, NULL                                                                  \
        }                                                                                     \
    }

/* Longest Redis key (prefix + name) and Redis address, in bytes. */
#define FG_CLUSTER_NAME_MAX 200
#define FG_CLUSTER_ADDR_MAX 255

/* A cluster limiter's counters (fg_cluster_limiter_stats). Each is exact. */
typedef struct fg_cluster_stats {
    fg_cluster_mode mode;       /* now */
    uint64_t admitted;          /* admitted in cluster mode (from a lease) */
    uint64_t rejected;          /* rejected in cluster mode (the shared bucket is empty) */
    uint64_t fallback_admitted; /* admitted by the fallback policy */
    uint64_t fallback_rejected; /* rejected by the fallback policy */
    uint64_t roundtrips;        /* Redis calls: leases, refunds, script loads */
    uint64_t leased;            /* tokens taken from the shared bucket */
    uint64_t refunded;          /* unspent tokens given back */
    uint64_t errors;            /* failed connects and calls (each counted once) */
    uint64_t fallbacks;         /* switches to fallback mode */
    uint64_t recoveries;        /* switches back to cluster mode */
    uint64_t held;              /* lease tokens held now (all keys) */
    uint64_t keys;              /* per key: keys held now */
    uint64_t full_rejected;     /* per key: new keys rejected because the table was full */
    uint64_t full_admitted;     /* per key: new keys admitted unlimited, table full */
} fg_cluster_stats;

/*
 * fg_cluster_available - whether this floodgate was built with hiredis.
 * Returns: 1 or 0. Thread-safety: MT-safe.
 */
FG_API int fg_cluster_available(void);

/*
 * fg_cluster_limiter_new - a limiter on the Redis bucket prefix + name.
 * Connects (within timeout_ns) and loads the script; when Redis cannot be
 * reached it starts in fallback mode and keeps trying in the background,
 * which is not an error. Starts one background thread.
 *
 * Returns: 0 and *out; FG_EINVAL (NULL opts or out, rate, burst or name
 * missing, lease > burst, a malformed redis address, key_max over
 * FG_KEYED_KEY_MAX_LIMIT, an unknown fallback or when_full); FG_ERANGE (as
 * fg_limiter_new, period/rate below 1 us, or max_keys over
 * FG_KEYED_MAX_KEYS); FG_ETOOLONG (prefix + name
 * over FG_CLUSTER_NAME_MAX, address over FG_CLUSTER_ADDR_MAX); FG_ESYS
 * (the thread cannot start); FG_ESTATE (built without hiredis); FG_ENOMEM.
 * Ownership: opts and its strings are copied; the caller owns *out.
 * Thread-safety: MT-safe.
 */
FG_API int fg_cluster_limiter_new(const fg_cluster_options *opts, fg_cluster_limiter **out);

/*
 * fg_cluster_limiter_free - stop the background thread, give the unspent
 * lease back to the bucket (one call, bounded by timeout_ns), disconnect
 * and free. NULL is ignored.
 * Thread-safety: not thread-safe: nobody may use the limiter any more.
 */
FG_API void fg_cluster_limiter_free(fg_cluster_limiter *cl);

/*
 * fg_cluster_limiter_try - ask for n tokens at now_ns (the limiter's
 * clock). From the lease when it holds n; otherwise one Redis call for
 * max(n, lease) tokens, bounded by timeout_ns; when the bucket is empty the
 * refusal is remembered until its retry-after, so a saturated cluster does
 * not cost a round trip per request. In fallback mode the fallback policy
 * decides.
 *
 * On admission returns 0 and *wait_ns 0. On rejection returns FG_ELIMITED
 * and *wait_ns the retry-after hint. wait_ns may be NULL.
 * Returns: 0; FG_ELIMITED; FG_EINVAL (NULL cl, n == 0, a per-key
 * limiter); FG_ERANGE (n > burst: such a request can never be admitted);
 * FG_ESTATE (built without hiredis).
 * Thread-safety: MT-safe; lock-free while the lease holds n tokens.
 */
FG_API int fg_cluster_limiter_try(fg_cluster_limiter *cl, uint64_t now_ns, uint64_t n,
                                  uint64_t *wait_ns);

/*
 * fg_cluster_limiter_try_key - fg_cluster_limiter_try on key's bucket of a
 * per-key limiter (max_keys set). The key is bytes (need not be
 * NUL-terminated), copied; the empty key is a valid key. A new key when
 * the table is full takes the entry of an idle key (no lease held), else
 * when_full decides.
 *
 * Returns: as fg_cluster_limiter_try, plus FG_ETOOLONG for a key longer
 * than key_max, FG_EINVAL for a NULL key with key_len > 0 or a limiter
 * without max_keys.
 * Thread-safety: MT-safe: the key's lease is read and changed under one of
 * several table locks, held for a probe and a few stores, never across a
 * Redis call.
 */
FG_API int fg_cluster_limiter_try_key(fg_cluster_limiter *cl, const char *key, size_t key_len,
                                      uint64_t now_ns, uint64_t n, uint64_t *wait_ns);

/*
 * fg_cluster_limiter_stats - the counters into *stats.
 * Returns: 0; FG_EINVAL for NULL. Thread-safety: MT-safe; each counter is
 * read atomically, the set is not one snapshot.
 */
FG_API int fg_cluster_limiter_stats(const fg_cluster_limiter *cl, fg_cluster_stats *stats);

/*
 * fg_cluster_limiter_name - the limiter's name (opts->name), owned by the
 * limiter. Returns "" for NULL. Thread-safety: MT-safe.
 */
FG_API const char *fg_cluster_limiter_name(const fg_cluster_limiter *cl);

/*
 * fg_cluster_limiter_get - the options the limiter was made with, into
 * *opts, defaults filled in (lease, lease_ttl_ns, timeout_ns, backoffs,
 * instances). Its strings point into the limiter.
 * Returns: 0; FG_EINVAL for NULL. Thread-safety: MT-safe.
 */
FG_API int fg_cluster_limiter_get(const fg_cluster_limiter *cl, fg_cluster_options *opts);

/*
 * fg_stage_limit_cluster - a limit stage (floodgate/limiter.h) on a cluster
 * limiter: opts->tokens per request at ctx->now_ns, FG_ELIMITED with the
 * retry-after hint in ctx->retry_after_ns, shadow mode as for
 * fg_stage_limit; fg_limit_stage_stats reads its counters. On a per-key
 * limiter the key comes from opts->key_source and a request without one is
 * handled as opts->missing says, exactly as fg_stage_limit_keyed; on a
 * one-bucket limiter the key options are ignored.
 *
 * Returns: 0 and *out; FG_EINVAL (NULL cl or out; per key: as
 * fg_stage_limit_keyed); FG_ERANGE (tokens > burst); FG_ETOOLONG (name);
 * FG_ENOMEM.
 * Ownership: borrows cl, which must outlive the stage; the caller owns *out.
 * Thread-safety: MT-safe.
 */
FG_API int fg_stage_limit_cluster(fg_cluster_limiter *cl, const fg_limit_stage_options *opts,
                                  fg_stage **out);

FG_END_DECLS

#endif /* FLOODGATE_CLUSTER_H */
