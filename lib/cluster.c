/*
 * lib/cluster.c - the cluster limiter: a GCRA bucket in Redis, spent
 * locally through leases.
 *
 * Three layers:
 *   - the hot path (fg_cluster_limiter_try): take n tokens from the lease
 *     with one compare-and-swap on `held`; no lock, no system call except
 *     one pipe write per lease when the lease falls below its low-water
 *     mark (a quarter of the lease), which wakes the renewer;
 *   - the slow path: a request that finds the lease empty takes the Redis
 *     mutex (waiting at most timeout_ns), and asks Redis for max(n, lease)
 *     tokens within what is left of the timeout. A refusal is remembered in
 *     `denied_until`, so a saturated cluster costs one round trip per
 *     refill, not one per request;
 *   - the renewer thread: prefetches the next lease when woken, gives back
 *     expired lease tokens, and in fallback mode reconnects with backoff.
 * Redis is only ever touched with `mu` held, so one connection serves all.
 *
 * The bucket state in Redis is one key: the theoretical arrival time (TAT)
 * in microseconds of the Redis server's clock, as a decimal string, expiring
 * when the bucket would be full again (a missing key is a full bucket). The
 * script takes `want` tokens or as many as the bucket holds, after giving
 * back `refund`, and returns what it granted and how far the TAT is ahead
 * of now, from which the caller computes any retry-after locally.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "floodgate/cluster.h"
#include "floodgate/error.h"

#include "alloc.h"
#include "atomic.h"
#include "cluster_internal.h"
#include "internal.h"
#include "siphash.h"

#ifdef FG_HAVE_HIREDIS
#include <hiredis/hiredis.h>

/* Lua: KEYS[1] the bucket; ARGV interval_us, tau_us, want, refund. */
static const char fg_cluster_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local interval = tonumber(ARGV[1])\n"
    "local tau = tonumber(ARGV[2])\n"
    "local want = tonumber(ARGV[3])\n"
    "local refund = tonumber(ARGV[4])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now\n"
    "if tat < now then tat = now end\n"
    "if refund > 0 then\n"
    "  tat = tat - refund * interval\n"
    "  if tat < now then tat = now end\n"
    "end\n"
    "local avail = math.floor((now + tau - tat) / interval + 1e-9)\n"
    "if avail < 0 then avail = 0 end\n"
    "local g = want\n"
    "if g > avail then g = avail end\n"
    "tat = tat + g * interval\n"
    "local ahead = tat - now\n"
    "if ahead > 0 then\n"
    "  redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil(ahead / 1000) "
    "+ 1)\n"
    "elseif refund > 0 then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "end\n"
    "return {g, math.ceil(ahead)}\n";
#endif

/* Defaults (cluster.h). */
#define FG_CL_DEFAULT_TTL       UINT64_C(1000000000)
#define FG_CL_DEFAULT_TIMEOUT   UINT64_C(5000000)
#define FG_CL_DEFAULT_BACKOFF   UINT64_C(50000000)
#define FG_CL_DEFAULT_BACKOFF_X UINT64_C(2000000000)
#define FG_CL_TICK_NS           UINT64_C(20000000) /* the renewer's longest sleep */

/* One bucket's lease. Atomics: the one-bucket limiter changes them without
 * a lock; a per-key limiter's entries change under their shard's lock. */
struct fg_cl_lease {
    uint64_t held;         /* lease tokens held */
    uint64_t expires;      /* lease tokens are spent before this, limiter clock */
    uint64_t denied_until; /* the bucket is known empty until then */
};

/* A per-key entry: the lease, then the key. hash 0: never used. Entries
 * are never emptied, only taken over by another key once idle (no tokens
 * held, no refusal pending), so a probe run never breaks. */
struct fg_cl_slot {
    struct fg_cl_lease l;
    uint64_t hash;
    uint32_t len;
    char key[];
};

struct fg_cl_shard {
    pthread_mutex_t mu;
    char pad[64 - sizeof(pthread_mutex_t) % 64];
};

#define FG_CL_PROBES 32 /* slots a key may sit from its home slot */

struct fg_cluster_limiter {
    /* The hot path's words, on their own cache line. */
    struct fg_cl_lease one; /* the one-bucket limiter's lease */
    uint32_t mode;          /* fg_cluster_mode (atomic) */
    uint8_t wake_pending;   /* a wake byte is in the pipe (atomic) */
    char pad0[64];
    /* Counters (atomic), cluster.h's fg_cluster_stats. */
    uint64_t admitted, rejected, fb_admitted, fb_rejected, roundtrips, leased, refunded,
        errors, fallbacks, recoveries;
    uint64_t next_attempt; /* fallback: the next reconnect, limiter clock (atomic) */
    uint64_t keys, full_rejected, full_admitted; /* per key (atomic) */
    char pad1[64];

    /* Per key (max_keys > 0): nshards shards of shard_slots entries each. */
    struct fg_cl_shard *shards;
    unsigned char *slots;
    size_t stride;
    uint32_t nshards, shard_slots;
    uint64_t k0, k1;          /* SipHash key */
    fg_keyed_limiter *klocal; /* FG_CLUSTER_FALLBACK_LOCAL's buckets, per key */
    uint64_t hand;            /* the renewer's sweep position (under mu) */

    /* Settings, fixed at creation. */
    fg_cluster_options opts; /* strings point at the copies below */
    char *redis;
    char *prefix;
    char *name;
    char *key;
    char *host; /* host or unix socket path */
    int port;   /* 0: unix socket */
    char interval_arg[40];
    char tau_arg[40];
    double interval_us;
    double tau_us;
    uint64_t low_water; /* renew when held falls below this: ceil(lease / 4) */
    fg_limiter *local;  /* FG_CLUSTER_FALLBACK_LOCAL's bucket (one bucket) */

    /* Redis: everything below is used only with mu held. */
    pthread_mutex_t mu;
    void *ctx; /* redisContext *, NULL while disconnected */
    char sha[41];
    uint64_t backoff;
    uint64_t rng;

    /* The renewer. */
    pthread_t thread;
    int wake_fd[2];
    uint8_t stop; /* atomic */
    int thread_started;
    int mutex_made;
};

int fg__cluster_addr_split(const char *addr, const char **host, size_t *host_len, int *port) {
    if (strncmp(addr, "unix:", 5) == 0) {
        if (addr[5] != '/')
            return FG_EINVAL;
        *host = addr + 5;
        *host_len = strlen(addr + 5);
        *port = 0;
        return 0;
    }
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr)
        return FG_EINVAL;
    /* The port: 1 to 5 digits, nothing else (no sign, no blanks). */
    size_t digits = strlen(colon + 1);
    if (digits == 0 || digits > 5)
        return FG_EINVAL;
    long p = 0;
    for (const char *q = colon + 1; *q != '\0'; q++) {
        if (*q < '0' || *q > '9')
            return FG_EINVAL;
        p = p * 10 + (*q - '0');
    }
    if (p < 1 || p > 65535)
        return FG_EINVAL;
    const char *h = addr;
    size_t hlen = (size_t)(colon - addr);
    if (h[0] == '[') {
        if (hlen < 3 || h[hlen - 1] != ']')
            return FG_EINVAL;
        h++;
        hlen -= 2;
    }
    for (size_t i = 0; i < hlen; i++)
        if (h[i] == '/' || (unsigned char)h[i] < 0x21 || (unsigned char)h[i] > 0x7e)
            return FG_EINVAL;
    *host = h;
    *host_len = hlen;
    *port = (int)p;
    return 0;
}

int fg_cluster_available(void) {
#ifdef FG_HAVE_HIREDIS
    return 1;
#else
    return 0;
#endif
}

const char *fg_cluster_limiter_name(const fg_cluster_limiter *cl) {
    return cl ? cl->name : "";
}

int fg_cluster_limiter_get(const fg_cluster_limiter *cl, fg_cluster_options *opts) {
    if (cl == NULL || opts == NULL)
        return FG_EINVAL;
    *opts = cl->opts;
    return 0;
}

int fg_cluster_limiter_stats(const fg_cluster_limiter *cl, fg_cluster_stats *s) {
    if (cl == NULL || s == NULL)
        return FG_EINVAL;
    fg_cluster_limiter *c = (fg_cluster_limiter *)cl; /* counters are atomics */
    s->mode = (fg_cluster_mode)fg__load_u32(&c->mode);
    s->admitted = fg__load_u64(&c->admitted);
    s->rejected = fg__load_u64(&c->rejected);
    s->fallback_admitted = fg__load_u64(&c->fb_admitted);
    s->fallback_rejected = fg__load_u64(&c->fb_rejected);
    s->roundtrips = fg__load_u64(&c->roundtrips);
    s->leased = fg__load_u64(&c->leased);
    s->refunded = fg__load_u64(&c->refunded);
    s->errors = fg__load_u64(&c->errors);
    s->fallbacks = fg__load_u64(&c->fallbacks);
    s->recoveries = fg__load_u64(&c->recoveries);
    s->held = fg__load_u64(&c->one.held);
    s->keys = fg__load_u64(&c->keys);
    s->full_rejected = fg__load_u64(&c->full_rejected);
    s->full_admitted = fg__load_u64(&c->full_admitted);
#ifdef FG_HAVE_HIREDIS
    for (uint32_t i = 0; c->slots != NULL && i < c->nshards * c->shard_slots; i++) {
        const struct fg_cl_slot *e = (const void *)(c->slots + (size_t)i * c->stride);
        s->held += fg__load_u64((uint64_t *)&e->l.held);
    }
#endif
    return 0;
}

#ifndef FG_HAVE_HIREDIS

int fg_cluster_limiter_new(const fg_cluster_options *opts, fg_cluster_limiter **out) {
    if (out != NULL)
        *out = NULL;
    (void)opts;
    return FG_ESTATE;
}

void fg_cluster_limiter_free(fg_cluster_limiter *cl) { (void)cl; }

int fg_cluster_limiter_try(fg_cluster_limiter *cl, uint64_t now_ns, uint64_t n,
                           uint64_t *wait_ns) {
    (void)cl;
    (void)now_ns;
    (void)n;
    if (wait_ns != NULL)
        *wait_ns = 0;
    return FG_ESTATE;
}

int fg_cluster_limiter_try_key(fg_cluster_limiter *cl, const char *key, size_t key_len,
                               uint64_t now_ns, uint64_t n, uint64_t *wait_ns) {
    (void)key;
    (void)key_len;
    return fg_cluster_limiter_try(cl, now_ns, n, wait_ns);
}

#else /* FG_HAVE_HIREDIS */

/* ---- small helpers ------------------------------------------------------------------- */

static uint64_t fg_cl_now(const fg_cluster_limiter *cl) {
    return fg_clock_read(&cl->opts.clock);
}

static struct timeval fg_cl_tv(uint64_t ns) {
    if (ns < 1000)
        ns = 1000; /* hiredis treats a zero timeout as "none" */
    struct timeval tv = {(time_t)(ns / 1000000000), (suseconds_t)(ns % 1000000000 / 1000)};
    return tv;
}

/* Real monotonic time, for the timeout budget (independent of a fake clock). */
static uint64_t fg_cl_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*, under mu. */
static uint64_t fg_cl_rand(fg_cluster_limiter *cl) {
    uint64_t x = cl->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    cl->rng = x;
    return x * UINT64_C(2685821657736338717);
}

static void fg_cl_wake(fg_cluster_limiter *cl) {
    if (fg__xchg_u8(&cl->wake_pending, 1) == 0) {
        char b = 1;
        ssize_t w = write(cl->wake_fd[1], &b, 1);
        (void)w; /* a full pipe already holds a wake */
    }
}

/* Wake the renewer even if a wake is pending (to stop it). */
static void fg_cl_wake_always(fg_cluster_limiter *cl) {
    char b = 1;
    ssize_t w = write(cl->wake_fd[1], &b, 1);
    (void)w;
}

/*
 * A write to a connection Redis has closed raises SIGPIPE, whose default
 * action ends the process, and hiredis writes with plain write(). A
 * library may not change the process's disposition, so every Redis call
 * runs with SIGPIPE blocked in the calling thread; one raised meanwhile is
 * taken off the thread's pending set before the mask is restored (the
 * failed write reports EPIPE, which is all we need).
 */
struct fg_cl_sigpipe {
    sigset_t old;
    int blocked; /* SIGPIPE was not blocked before: we block and restore */
};

static void fg_cl_sigpipe_block(struct fg_cl_sigpipe *sp) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sp->blocked =
        pthread_sigmask(SIG_BLOCK, &set, &sp->old) == 0 && !sigismember(&sp->old, SIGPIPE);
}

static void fg_cl_sigpipe_restore(struct fg_cl_sigpipe *sp) {
    if (!sp->blocked)
        return;
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = {0, 0};
        (void)sigtimedwait(&set, NULL, &zero);
    }
    (void)pthread_sigmask(SIG_SETMASK, &sp->old, NULL);
}

/* ---- modes and events ---------------------------------------------------------------- */

static void fg_cl_event(fg_cluster_limiter *cl, fg_cluster_mode from, fg_cluster_mode to,
                        const char *reason) {
    if (cl->opts.on_event == NULL)
        return;
    fg_cluster_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.from = from;
    ev.to = to;
    ev.at_ns = fg_cl_now(cl);
    (void)snprintf(ev.reason, sizeof(ev.reason), "%s", reason);
    cl->opts.on_event(cl->name, &ev, cl->opts.arg);
}

static void fg_cl_disconnect(fg_cluster_limiter *cl) {
    if (cl->ctx != NULL)
        redisFree(cl->ctx);
    cl->ctx = NULL;
}

/* Under mu: schedule the next reconnect after the current backoff (minus up
 * to half of it, at random), and double the backoff up to its maximum. */
static void fg_cl_schedule(fg_cluster_limiter *cl, uint64_t now) {
    uint64_t b = cl->backoff;
    uint64_t jitter = b / 2 ? fg_cl_rand(cl) % (b / 2) : 0;
    fg__store_u64(&cl->next_attempt, now + b - jitter);
    cl->backoff = b > cl->opts.backoff_max_ns / 2 ? cl->opts.backoff_max_ns : b * 2;
}

/* Under mu: Redis failed (why says how). Count it; enter fallback mode if
 * not already there. The lease is kept: its tokens were taken from the
 * bucket and stay valid until they expire. */
static void fg_cl_fail(fg_cluster_limiter *cl, const char *why) {
    fg__faa_u64(&cl->errors, 1);
    fg_cl_disconnect(cl);
    uint64_t now = fg_cl_now(cl);
    fg_cl_schedule(cl, now);
    if (fg__load_u32(&cl->mode) == FG_CLUSTER_MODE_FALLBACK)
        return;
    fg__store_u32(&cl->mode, FG_CLUSTER_MODE_FALLBACK);
    fg__faa_u64(&cl->fallbacks, 1);
    fg_cl_event(cl, FG_CLUSTER_MODE_CLUSTER, FG_CLUSTER_MODE_FALLBACK, why);
}

/* Under mu: connect and load the script within budget_ns. 0 or -1 (with
 * why filled). */
static int fg_cl_connect_raw(fg_cluster_limiter *cl, uint64_t budget_ns, char *why,
                             size_t cap) {
    fg_cl_disconnect(cl);
    uint64_t t0 = fg_cl_mono();
    redisContext *c = cl->port
                          ? redisConnectWithTimeout(cl->host, cl->port, fg_cl_tv(budget_ns))
                          : redisConnectUnixWithTimeout(cl->host, fg_cl_tv(budget_ns));
    if (c == NULL || c->err) {
        (void)snprintf(why, cap, "connect %s: %s", cl->redis,
                       c ? c->errstr : "cannot allocate a context");
        if (c)
            redisFree(c);
        return -1;
    }
    uint64_t spent = fg_cl_mono() - t0;
    (void)redisSetTimeout(c, fg_cl_tv(budget_ns > spent ? budget_ns - spent : 1000));
    fg__faa_u64(&cl->roundtrips, 1);
    redisReply *r =
        redisCommand(c, "SCRIPT LOAD %b", fg_cluster_script, sizeof(fg_cluster_script) - 1);
    if (r == NULL || r->type != REDIS_REPLY_STRING || r->len != 40) {
        (void)snprintf(why, cap, "SCRIPT LOAD on %s: %s", cl->redis,
                       r == NULL ? c->errstr
                       : r->type == REDIS_REPLY_ERROR ? r->str
                                                      : "unexpected reply");
        if (r)
            freeReplyObject(r);
        redisFree(c);
        return -1;
    }
    memcpy(cl->sha, r->str, 40);
    cl->sha[40] = '\0';
    freeReplyObject(r);
    cl->ctx = c;
    return 0;
}

static int fg_cl_connect(fg_cluster_limiter *cl, uint64_t budget_ns, char *why, size_t cap) {
    struct fg_cl_sigpipe sp;
    fg_cl_sigpipe_block(&sp);
    int rc = fg_cl_connect_raw(cl, budget_ns, why, cap);
    fg_cl_sigpipe_restore(&sp);
    return rc;
}

/* Under mu, in fallback mode: one reconnect attempt. */
static void fg_cl_reconnect(fg_cluster_limiter *cl) {
    char why[160];
    if (fg_cl_connect(cl, cl->opts.timeout_ns, why, sizeof(why)) != 0) {
        fg__faa_u64(&cl->errors, 1);
        fg_cl_schedule(cl, fg_cl_now(cl));
        return;
    }
    fg__store_u64(&cl->one.denied_until, 0);
    fg__store_u32(&cl->mode, FG_CLUSTER_MODE_CLUSTER);
    fg__faa_u64(&cl->recoveries, 1);
    fg_cl_event(cl, FG_CLUSTER_MODE_FALLBACK, FG_CLUSTER_MODE_CLUSTER, "");
}

/* Under mu: a Redis command failed on c (reply NULL): the reason, with a
 * timeout called one. */
static void fg_cl_cmd_failed(fg_cluster_limiter *cl, redisContext *c, const char *what,
                             uint64_t budget_ns) {
    char why[160];
    if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
        (void)snprintf(why, sizeof(why), "%s on %s: timeout after %.3g ms", what, cl->redis,
                       (double)budget_ns / 1e6);
    else
        (void)snprintf(why, sizeof(why), "%s on %s: %s", what, cl->redis, c->errstr);
    fg_cl_fail(cl, why);
}

/*
 * Under mu, connected: run the script for want tokens after giving back
 * refund, within budget_ns overall (a NOSCRIPT answer costs a SCRIPT LOAD
 * and a second EVALSHA, within the same budget). Returns 0 with *granted
 * and *ahead_us (how far the bucket's TAT is ahead of the server's now), or
 * -1 after fg_cl_fail.
 */
static int fg_cl_call_raw(fg_cluster_limiter *cl, const char *rkey, size_t rkey_len,
                          uint64_t want, uint64_t refund, uint64_t budget_ns,
                          uint64_t *granted, uint64_t *ahead_us) {
    redisContext *c = cl->ctx;
    char want_s[24], refund_s[24], why[160];
    (void)snprintf(want_s, sizeof(want_s), "%llu", (unsigned long long)want);
    (void)snprintf(refund_s, sizeof(refund_s), "%llu", (unsigned long long)refund);
    uint64_t end = fg_cl_mono() + budget_ns;
    for (int attempt = 0; attempt < 2; attempt++) {
        const char *argv[] = {"EVALSHA",        cl->sha,     "1",    rkey,
                              cl->interval_arg, cl->tau_arg, want_s, refund_s};
        size_t lens[8];
        for (int i = 0; i < 8; i++)
            lens[i] = i == 3 ? rkey_len : strlen(argv[i]);
        uint64_t now = fg_cl_mono();
        if (now >= end) {
            (void)snprintf(why, sizeof(why), "EVALSHA on %s: timeout after %.3g ms", cl->redis,
                           (double)budget_ns / 1e6);
            fg_cl_fail(cl, why);
            return -1;
        }
        (void)redisSetTimeout(c, fg_cl_tv(end - now));
        fg__faa_u64(&cl->roundtrips, 1);
        redisReply *r = redisCommandArgv(c, 8, argv, lens);
        if (r == NULL) {
            fg_cl_cmd_failed(cl, c, "EVALSHA", budget_ns);
            return -1;
        }
        if (r->type == REDIS_REPLY_ERROR && attempt == 0 &&
            strncmp(r->str, "NOSCRIPT", 8) == 0) {
            /* Redis restarted or flushed its scripts: load it again. */
            freeReplyObject(r);
            now = fg_cl_mono();
            if (now >= end) {
                (void)snprintf(why, sizeof(why), "SCRIPT LOAD on %s: timeout after %.3g ms",
                               cl->redis, (double)budget_ns / 1e6);
                fg_cl_fail(cl, why);
                return -1;
            }
            (void)redisSetTimeout(c, fg_cl_tv(end - now));
            fg__faa_u64(&cl->roundtrips, 1);
            r = redisCommand(c, "SCRIPT LOAD %b", fg_cluster_script,
                             sizeof(fg_cluster_script) - 1);
            if (r == NULL) {
                fg_cl_cmd_failed(cl, c, "SCRIPT LOAD", budget_ns);
                return -1;
            }
            int ok = r->type == REDIS_REPLY_STRING && r->len == 40;
            if (ok)
                memcpy(cl->sha, r->str, 40);
            else
                (void)snprintf(why, sizeof(why), "SCRIPT LOAD on %s: %s", cl->redis,
                               r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
            if (!ok) {
                fg_cl_fail(cl, why);
                return -1;
            }
            continue;
        }
        int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                 r->element[0]->type == REDIS_REPLY_INTEGER &&
                 r->element[1]->type == REDIS_REPLY_INTEGER && r->element[0]->integer >= 0;
        if (!ok) {
            (void)snprintf(why, sizeof(why), "EVALSHA on %s: %s", cl->redis,
                           r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
            fg_cl_fail(cl, why);
            return -1;
        }
        *granted = (uint64_t)r->element[0]->integer;
        *ahead_us = r->element[1]->integer > 0 ? (uint64_t)r->element[1]->integer : 0;
        freeReplyObject(r);
        fg__faa_u64(&cl->leased, *granted);
        fg__faa_u64(&cl->refunded, refund);
        cl->backoff = cl->opts.backoff_min_ns; /* Redis answered: start over */
        return 0;
    }
    (void)snprintf(why, sizeof(why), "EVALSHA on %s: NOSCRIPT after SCRIPT LOAD", cl->redis);
    fg_cl_fail(cl, why);
    return -1;
}

/* A Redis key: the one bucket's, or prefix + name + ":" + key. */
struct fg_cl_rkey {
    char buf[FG_CLUSTER_NAME_MAX + 2 + FG_KEYED_KEY_MAX_LIMIT];
    size_t len;
};

static void fg_cl_rkey(const fg_cluster_limiter *cl, const char *key, size_t len,
                       struct fg_cl_rkey *rk) {
    size_t b = strlen(cl->key);
    memcpy(rk->buf, cl->key, b);
    rk->len = b;
    if (cl->slots != NULL) {
        rk->buf[b] = ':';
        if (len > 0)
            memcpy(rk->buf + b + 1, key, len);
        rk->len = b + 1 + len;
    }
}

static int fg_cl_call(fg_cluster_limiter *cl, const struct fg_cl_rkey *rk, uint64_t want,
                      uint64_t refund, uint64_t budget_ns, uint64_t *granted,
                      uint64_t *ahead_us) {
    struct fg_cl_sigpipe sp;
    fg_cl_sigpipe_block(&sp);
    int rc = fg_cl_call_raw(cl, rk->buf, rk->len, want, refund, budget_ns, granted, ahead_us);
    fg_cl_sigpipe_restore(&sp);
    return rc;
}

/* Nanoseconds until k tokens are in the bucket, given the TAT's lead. */
static uint64_t fg_cl_until(const fg_cluster_limiter *cl, uint64_t ahead_us, uint64_t k) {
    double us = (double)ahead_us + (double)k * cl->interval_us - cl->tau_us;
    return us <= 0 ? 0 : (uint64_t)(us * 1000.0) + 1;
}

/* Under mu: a lease call's result: keep what came, remember a refusal. */
static void fg_cl_store(fg_cluster_limiter *cl, struct fg_cl_lease *l, uint64_t now,
                        uint64_t granted, uint64_t ahead_us, uint64_t want) {
    if (granted > 0) {
        fg__store_u64(&l->expires, now + cl->opts.lease_ttl_ns);
        fg__faa_u64(&l->held, granted);
    }
    if (granted < want) {
        /* The bucket is empty for us: until a whole lease is back, requests
         * are refused locally, without a round trip each. */
        uint64_t k = cl->opts.lease;
        fg__store_u64(&l->denied_until, now + fg_cl_until(cl, ahead_us, k));
    }
}

/* ---- the decision paths ------------------------------------------------------------------
 */

/* Take n from lease l, lock-free. 1 when taken. The one bucket's lease
 * wakes the renewer as it falls below the low-water mark. */
static int fg_cl_take(fg_cluster_limiter *cl, struct fg_cl_lease *l, uint64_t now,
                      uint64_t n) {
    if (now >= fg__load_u64(&l->expires))
        return 0;
    uint64_t h = fg__load_u64(&l->held);
    /* CAS loop: held only shrinks here and in the renewer's expiry (an
     * exchange to 0), and grows by the lease calls; a failed CAS re-reads. */
    while (h >= n) {
        if (fg__cas_u64(&l->held, h, h - n)) {
            if (l == &cl->one && h >= cl->low_water && h - n < cl->low_water)
                fg_cl_wake(cl);
            return 1;
        }
        h = fg__load_u64(&l->held);
    }
    return 0;
}

/* The retry-after a fallback rejection gives: until the next reconnect
 * attempt (1 ms when it is due). */
static uint64_t fg_cl_until_reconnect(fg_cluster_limiter *cl, uint64_t now) {
    uint64_t next = fg__load_u64(&cl->next_attempt);
    return next > now ? next - now : 1000000;
}

/* The fallback's decision. key is NULL for the one bucket. */
static int fg_cl_fallback(fg_cluster_limiter *cl, const char *key, size_t key_len,
                          uint64_t now, uint64_t n, uint64_t *wait) {
    if (cl->opts.fallback == FG_CLUSTER_FALLBACK_LOCAL) {
        int rc = cl->slots != NULL
                     ? fg_keyed_limiter_try(cl->klocal, key, key_len, now, n, 0, wait)
                     : fg_limiter_try(cl->local, now, n, wait);
        if (rc == FG_ERANGE) {
            /* n fits the cluster's burst but not the local share of it:
             * such a request waits for the cluster. */
            rc = FG_ELIMITED;
            *wait = fg_cl_until_reconnect(cl, now);
        }
        fg__faa_u64(rc == 0 ? &cl->fb_admitted : &cl->fb_rejected, 1);
        return rc == 0 ? 0 : FG_ELIMITED;
    }
    *wait = fg_cl_until_reconnect(cl, now);
    fg__faa_u64(&cl->fb_rejected, 1);
    return FG_ELIMITED;
}

/* pthread_mutex_timedlock takes CLOCK_REALTIME. */
static int fg_cl_lock(fg_cluster_limiter *cl, uint64_t budget_ns) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + budget_ns;
    ts.tv_sec += (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return pthread_mutex_timedlock(&cl->mu, &ts);
}

/* ---- the per-key table -------------------------------------------------------------------
 */

static struct fg_cl_slot *fg_cl_slot_at(const fg_cluster_limiter *cl, uint32_t shard,
                                        uint32_t i) {
    size_t idx = (size_t)shard * cl->shard_slots + (i & (cl->shard_slots - 1));
    return (struct fg_cl_slot *)(void *)(cl->slots + idx * cl->stride);
}

/* An entry nobody needs: no tokens held, no refusal to remember. */
static int fg_cl_idle(const struct fg_cl_slot *e, uint64_t now) {
    return fg__load_u64((uint64_t *)&e->l.held) == 0 &&
           now >= fg__load_u64((uint64_t *)&e->l.denied_until);
}

/*
 * With the key's shard locked: its entry, taking an empty or idle one for a
 * new key. NULL when the table has no room for it (counted by the caller).
 */
static struct fg_cl_slot *fg_cl_find(fg_cluster_limiter *cl, uint32_t shard, uint64_t hash,
                                     const char *key, size_t len, uint64_t now) {
    uint32_t home = (uint32_t)(hash >> 32);
    uint32_t probes = cl->shard_slots < FG_CL_PROBES ? cl->shard_slots : FG_CL_PROBES;
    struct fg_cl_slot *empty = NULL, *idle = NULL;
    for (uint32_t i = 0; i < probes; i++) {
        struct fg_cl_slot *e = fg_cl_slot_at(cl, shard, home + i);
        if (e->hash == 0) {
            empty = e; /* entries are never emptied: the key is not further on */
            break;
        }
        if (e->hash == hash && e->len == len && (len == 0 || memcmp(e->key, key, len) == 0))
            return e;
        if (idle == NULL && fg_cl_idle(e, now))
            idle = e;
    }
    struct fg_cl_slot *e = idle;
    if (empty != NULL && fg__load_u64(&cl->keys) < cl->opts.max_keys) {
        e = empty;
        fg__faa_u64(&cl->keys, 1);
    }
    if (e == NULL)
        return NULL;
    memset(&e->l, 0, sizeof(e->l));
    e->hash = hash;
    e->len = (uint32_t)len;
    if (len > 0)
        memcpy(e->key, key, len);
    return e;
}

static uint64_t fg_cl_hash(const fg_cluster_limiter *cl, const char *key, size_t len,
                           uint32_t *shard) {
    uint64_t h = fg__siphash13(cl->k0, cl->k1, key, len) | 1; /* 0 marks an empty entry */
    *shard = (uint32_t)(h >> 8) & (cl->nshards - 1);
    return h;
}

/* A full table's answer for a new key. */
static int fg_cl_full(fg_cluster_limiter *cl, uint64_t *wait) {
    if (cl->opts.when_full == FG_KEYED_ADMIT_NEW) {
        fg__faa_u64(&cl->full_admitted, 1);
        return 0;
    }
    fg__faa_u64(&cl->full_rejected, 1);
    fg__faa_u64(&cl->rejected, 1);
    *wait = 0;
    return FG_ELIMITED;
}

/* ---- the decision paths ------------------------------------------------------------------
 */

/*
 * The slow path: the lease is empty and no refusal is remembered. Takes mu
 * within the timeout, then asks Redis for a lease within what is left.
 * key is NULL for the one bucket. Lock order: mu, then a shard.
 */
static int fg_cl_slow(fg_cluster_limiter *cl, const char *key, size_t key_len, uint64_t now,
                      uint64_t n, uint64_t *wait) {
    uint64_t t0 = fg_cl_mono();
    uint64_t budget = cl->opts.timeout_ns;
    if (fg_cl_lock(cl, budget) != 0) /* Redis is busy beyond the timeout */
        return fg_cl_fallback(cl, key, key_len, now, n, wait);
    if (fg__load_u32(&cl->mode) == FG_CLUSTER_MODE_FALLBACK) {
        pthread_mutex_unlock(&cl->mu);
        return fg_cl_fallback(cl, key, key_len, now, n, wait);
    }
    uint32_t shard = 0;
    uint64_t hash = cl->slots ? fg_cl_hash(cl, key, key_len, &shard) : 0;
    struct fg_cl_lease *l = &cl->one;
    if (cl->slots != NULL) {
        pthread_mutex_lock(&cl->shards[shard].mu);
        struct fg_cl_slot *e = fg_cl_find(cl, shard, hash, key, key_len, now);
        if (e == NULL) {
            pthread_mutex_unlock(&cl->shards[shard].mu);
            pthread_mutex_unlock(&cl->mu);
            return fg_cl_full(cl, wait);
        }
        l = &e->l;
    }
    /* The renewer (or another request) may have refilled the lease or
     * met a refusal while this thread waited for mu. */
    int rc = -1;
    uint64_t du = fg__load_u64(&l->denied_until);
    if (fg_cl_take(cl, l, now, n)) {
        fg__faa_u64(&cl->admitted, 1);
        rc = 0;
    } else if (now < du) {
        fg__faa_u64(&cl->rejected, 1);
        *wait = du - now;
        rc = FG_ELIMITED;
    }
    /* Expired tokens go back with the call; fresh ones are topped up to a
     * lease. */
    uint64_t refund = 0, h = 0;
    if (rc == -1) {
        if (now >= fg__load_u64(&l->expires))
            refund = fg__xchg_u64(&l->held, 0);
        h = fg__load_u64(&l->held);
    }
    if (cl->slots != NULL)
        pthread_mutex_unlock(&cl->shards[shard].mu);
    if (rc != -1) {
        pthread_mutex_unlock(&cl->mu);
        return rc;
    }
    uint64_t want = cl->opts.lease > h ? cl->opts.lease - h : 0;
    if (want < n)
        want = n;
    uint64_t spent = fg_cl_mono() - t0, granted, ahead;
    struct fg_cl_rkey rk;
    fg_cl_rkey(cl, key, key_len, &rk);
    if (spent >= budget ||
        fg_cl_call(cl, &rk, want, refund, budget - spent, &granted, &ahead)) {
        if (spent >= budget && refund > 0)
            fg__faa_u64(&l->held, refund); /* not given back: still ours until expiry */
        pthread_mutex_unlock(&cl->mu);
        return fg_cl_fallback(cl, key, key_len, now, n, wait);
    }
    if (cl->slots != NULL) {
        /* The entry may have been taken over while unlocked: only an idle
         * one can be, and then the key gets an entry anew. */
        pthread_mutex_lock(&cl->shards[shard].mu);
        struct fg_cl_slot *e = fg_cl_find(cl, shard, hash, key, key_len, now);
        if (e == NULL) {
            pthread_mutex_unlock(&cl->shards[shard].mu);
            pthread_mutex_unlock(&cl->mu);
            return fg_cl_full(cl, wait); /* the tokens come back as the bucket refills */
        }
        l = &e->l;
    }
    fg_cl_store(cl, l, now, granted, ahead, want);
    int ok = fg_cl_take(cl, l, now, n);
    if (cl->slots != NULL)
        pthread_mutex_unlock(&cl->shards[shard].mu);
    pthread_mutex_unlock(&cl->mu);
    if (ok) {
        fg__faa_u64(&cl->admitted, 1);
        return 0;
    }
    fg__faa_u64(&cl->rejected, 1);
    *wait = fg_cl_until(cl, ahead, n);
    if (*wait == 0)
        *wait = 1000; /* raced away by another thread: try again soon */
    return FG_ELIMITED;
}

int fg_cluster_limiter_try(fg_cluster_limiter *cl, uint64_t now_ns, uint64_t n,
                           uint64_t *wait_ns) {
    uint64_t scratch;
    if (wait_ns == NULL)
        wait_ns = &scratch;
    *wait_ns = 0;
    if (cl == NULL || n == 0 || cl->slots != NULL)
        return FG_EINVAL;
    if (n > cl->opts.burst)
        return FG_ERANGE;
    /* Lease tokens are the cluster's, in fallback mode too (taken before
     * Redis went away, spendable until they expire). */
    if (fg_cl_take(cl, &cl->one, now_ns, n)) {
        fg__faa_u64(&cl->admitted, 1);
        return 0;
    }
    if (fg__load_u32(&cl->mode) == FG_CLUSTER_MODE_FALLBACK)
        return fg_cl_fallback(cl, NULL, 0, now_ns, n, wait_ns);
    uint64_t du = fg__load_u64(&cl->one.denied_until);
    if (now_ns < du) {
        fg__faa_u64(&cl->rejected, 1);
        *wait_ns = du - now_ns;
        return FG_ELIMITED;
    }
    return fg_cl_slow(cl, NULL, 0, now_ns, n, wait_ns);
}

int fg_cluster_limiter_try_key(fg_cluster_limiter *cl, const char *key, size_t key_len,
                               uint64_t now_ns, uint64_t n, uint64_t *wait_ns) {
    uint64_t scratch;
    if (wait_ns == NULL)
        wait_ns = &scratch;
    *wait_ns = 0;
    if (cl == NULL || n == 0 || cl->slots == NULL || (key == NULL && key_len > 0))
        return FG_EINVAL;
    if (key_len > cl->opts.key_max)
        return FG_ETOOLONG;
    if (n > cl->opts.burst)
        return FG_ERANGE;
    uint32_t shard;
    uint64_t hash = fg_cl_hash(cl, key, key_len, &shard);
    pthread_mutex_lock(&cl->shards[shard].mu);
    struct fg_cl_slot *e = fg_cl_find(cl, shard, hash, key, key_len, now_ns);
    int rc = -1;
    if (e == NULL) {
        rc = -2;
    } else if (fg_cl_take(cl, &e->l, now_ns, n)) {
        fg__faa_u64(&cl->admitted, 1);
        rc = 0;
    } else if (fg__load_u32(&cl->mode) != FG_CLUSTER_MODE_FALLBACK &&
               now_ns < fg__load_u64(&e->l.denied_until)) {
        fg__faa_u64(&cl->rejected, 1);
        *wait_ns = fg__load_u64(&e->l.denied_until) - now_ns;
        rc = FG_ELIMITED;
    }
    pthread_mutex_unlock(&cl->shards[shard].mu);
    if (rc == -2)
        return fg_cl_full(cl, wait_ns);
    if (rc != -1)
        return rc;
    if (fg__load_u32(&cl->mode) == FG_CLUSTER_MODE_FALLBACK)
        return fg_cl_fallback(cl, key, key_len, now_ns, n, wait_ns);
    return fg_cl_slow(cl, key, key_len, now_ns, n, wait_ns);
}

/* ---- the renewer -------------------------------------------------------------------------
 */

/* Under mu: give back the expired leases of up to budget per-key entries,
 * from where the last sweep stopped. */
static void fg_cl_sweep(fg_cluster_limiter *cl, uint64_t now, uint64_t budget) {
    uint64_t total = (uint64_t)cl->nshards * cl->shard_slots;
    if (budget > total)
        budget = total;
    for (uint64_t k = 0; k < budget && fg__load_u32(&cl->mode) == FG_CLUSTER_MODE_CLUSTER;
         k++) {
        uint64_t i = cl->hand++ % total;
        uint32_t shard = (uint32_t)(i / cl->shard_slots);
        pthread_mutex_lock(&cl->shards[shard].mu);
        struct fg_cl_slot *e = fg_cl_slot_at(cl, shard, (uint32_t)(i % cl->shard_slots));
        uint64_t refund = 0;
        struct fg_cl_rkey rk;
        if (e->hash != 0 && fg__load_u64(&e->l.held) > 0 &&
            now >= fg__load_u64(&e->l.expires)) {
            refund = fg__xchg_u64(&e->l.held, 0);
            fg_cl_rkey(cl, e->key, e->len, &rk);
        }
        pthread_mutex_unlock(&cl->shards[shard].mu);
        uint64_t granted, ahead;
        if (refund > 0)
            (void)fg_cl_call(cl, &rk, 0, refund, cl->opts.timeout_ns, &granted, &ahead);
    }
}

/* One round of the renewer's work, under mu. */
static void fg_cl_renew(fg_cluster_limiter *cl, int woken) {
    uint64_t now = fg_cl_now(cl);
    if (fg__load_u32(&cl->mode) == FG_CLUSTER_MODE_FALLBACK) {
        if (now >= fg__load_u64(&cl->next_attempt))
            fg_cl_reconnect(cl);
        return;
    }
    if (cl->slots != NULL) {
        /* the whole table about twice per lease lifetime */
        uint64_t ticks = cl->opts.lease_ttl_ns / 2 / FG_CL_TICK_NS + 1;
        uint64_t total = (uint64_t)cl->nshards * cl->shard_slots;
        fg_cl_sweep(cl, now, total / ticks + 1);
        return;
    }
    uint64_t granted, ahead;
    struct fg_cl_rkey rk;
    fg_cl_rkey(cl, NULL, 0, &rk);
    if (now >= fg__load_u64(&cl->one.expires) && fg__load_u64(&cl->one.held) > 0) {
        uint64_t refund = fg__xchg_u64(&cl->one.held, 0);
        if (refund > 0 &&
            fg_cl_call(cl, &rk, 0, refund, cl->opts.timeout_ns, &granted, &ahead))
            return;
    }
    uint64_t h = fg__load_u64(&cl->one.held);
    if (!woken || h >= cl->low_water || now < fg__load_u64(&cl->one.denied_until))
        return;
    /* A whole lease per call: round trips are one per lease spent. The
     * lease then holds at most lease + low_water - 1 tokens. */
    uint64_t want = cl->opts.lease;
    if (fg_cl_call(cl, &rk, want, 0, cl->opts.timeout_ns, &granted, &ahead) == 0)
        fg_cl_store(cl, &cl->one, now, granted, ahead, want);
}

static void *fg_cl_main(void *arg) {
    fg_cluster_limiter *cl = arg;
    /* This thread only talks to Redis: SIGPIPE stays blocked here. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    (void)pthread_sigmask(SIG_BLOCK, &set, NULL);
    while (!fg__load_u8(&cl->stop)) {
        struct pollfd p = {cl->wake_fd[0], POLLIN, 0};
        int ms = (int)(FG_CL_TICK_NS / 1000000);
        if (cl->opts.lease_ttl_ns / 4 / 1000000 < (uint64_t)ms)
            ms = (int)(cl->opts.lease_ttl_ns / 4 / 1000000) + 1;
        int woken = poll(&p, 1, ms) > 0;
        if (woken) {
            char buf[64];
            while (read(cl->wake_fd[0], buf, sizeof(buf)) > 0) {
            }
            /* Cleared before the work: a request that crosses the low-water
             * mark from now on writes a new wake. */
            (void)fg__xchg_u8(&cl->wake_pending, 0);
        }
        if (fg__load_u8(&cl->stop))
            break;
        /* Only a wake (demand) prefetches: an idle instance holds no lease
         * beyond its expiry. */
        pthread_mutex_lock(&cl->mu);
        fg_cl_renew(cl, woken);
        pthread_mutex_unlock(&cl->mu);
    }
    return NULL;
}

/* ---- life cycle --------------------------------------------------------------------------
 */

/* Splits the address into cl->host / cl->port. */
static int fg_cl_parse_addr(fg_cluster_limiter *cl, const char *addr) {
    const char *h;
    size_t hlen;
    int rc = fg__cluster_addr_split(addr, &h, &hlen, &cl->port);
    if (rc != 0)
        return rc;
    cl->host = fg__strndup(h, hlen);
    return cl->host ? 0 : FG_ENOMEM;
}

static char *fg_cl_dup(const char *s) { return fg__strndup(s, strlen(s)); }

/* Under mu, connected: give back every lease, within the timeout overall. */
static void fg_cl_give_back(fg_cluster_limiter *cl) {
    uint64_t t0 = fg_cl_mono(), granted, ahead;
    struct fg_cl_rkey rk;
    uint64_t held = fg__xchg_u64(&cl->one.held, 0);
    if (cl->slots == NULL) {
        fg_cl_rkey(cl, NULL, 0, &rk);
        if (held > 0)
            (void)fg_cl_call(cl, &rk, 0, held, cl->opts.timeout_ns, &granted, &ahead);
        return;
    }
    uint64_t total = (uint64_t)cl->nshards * cl->shard_slots;
    for (uint64_t i = 0; i < total && cl->ctx != NULL; i++) {
        struct fg_cl_slot *e = fg_cl_slot_at(cl, (uint32_t)(i / cl->shard_slots),
                                             (uint32_t)(i % cl->shard_slots));
        if (e->hash == 0 || e->l.held == 0)
            continue;
        uint64_t spent = fg_cl_mono() - t0;
        if (spent >= cl->opts.timeout_ns)
            break; /* the rest comes back as the buckets refill */
        fg_cl_rkey(cl, e->key, e->len, &rk);
        (void)fg_cl_call(cl, &rk, 0, e->l.held, cl->opts.timeout_ns - spent, &granted, &ahead);
        e->l.held = 0;
    }
}

void fg_cluster_limiter_free(fg_cluster_limiter *cl) {
    if (cl == NULL)
        return;
    if (cl->thread_started) {
        (void)fg__xchg_u8(&cl->stop, 1);
        fg_cl_wake_always(cl);
        pthread_join(cl->thread, NULL);
    }
    if (cl->mutex_made) {
        pthread_mutex_lock(&cl->mu);
        if (cl->ctx != NULL && fg__load_u32(&cl->mode) == FG_CLUSTER_MODE_CLUSTER)
            fg_cl_give_back(cl);
        fg_cl_disconnect(cl);
        pthread_mutex_unlock(&cl->mu);
        pthread_mutex_destroy(&cl->mu);
    }
    for (uint32_t i = 0; cl->shards != NULL && i < cl->nshards; i++)
        pthread_mutex_destroy(&cl->shards[i].mu);
    for (int i = 0; i < 2; i++)
        if (cl->wake_fd[i] >= 0)
            close(cl->wake_fd[i]);
    fg_limiter_free(cl->local);
    fg_keyed_limiter_free(cl->klocal);
    fg__aligned_free(cl->shards);
    fg__free(cl->slots);
    fg__free(cl->redis);
    fg__free(cl->prefix);
    fg__free(cl->name);
    fg__free(cl->key);
    fg__free(cl->host);
    fg__aligned_free(cl);
}

/* Validates opts and fills the defaults into *o. */
static int fg_cl_options(const fg_cluster_options *opts, fg_cluster_options *o) {
    if (opts == NULL || opts->rate == 0 || opts->burst == 0 || opts->name == NULL ||
        opts->name[0] == '\0')
        return FG_EINVAL;
    *o = *opts;
    if (o->period_ns == 0)
        o->period_ns = UINT64_C(1000000000);
    if (o->rate > FG_LIMITER_MAX_TOKENS || o->burst > FG_LIMITER_MAX_TOKENS ||
        o->period_ns / o->rate < 1000 || o->period_ns > (UINT64_C(1) << 62) / o->burst)
        return FG_ERANGE;
    if (o->lease > o->burst)
        return FG_EINVAL;
    if (o->fallback != FG_CLUSTER_FALLBACK_LOCAL && o->fallback != FG_CLUSTER_FALLBACK_CLOSED)
        return FG_EINVAL;
    if (o->when_full != FG_KEYED_REJECT_NEW && o->when_full != FG_KEYED_ADMIT_NEW)
        return FG_EINVAL;
    if (o->max_keys > FG_KEYED_MAX_KEYS)
        return FG_ERANGE;
    if (o->key_max > FG_KEYED_KEY_MAX_LIMIT)
        return FG_EINVAL;
    if (o->key_max == 0)
        o->key_max = FG_KEYED_KEY_MAX_DEFAULT;
    if (o->lease == 0) {
        /* rate x 10 ms, at least 1, at most a quarter of the burst */
        uint64_t per10ms = (uint64_t)((double)o->rate * 1e7 / (double)o->period_ns);
        uint64_t cap = o->burst / 4;
        o->lease = per10ms < 1 ? 1 : per10ms;
        if (cap >= 1 && o->lease > cap)
            o->lease = cap;
        if (o->lease > o->burst)
            o->lease = o->burst;
    }
    if (o->lease_ttl_ns == 0)
        o->lease_ttl_ns = FG_CL_DEFAULT_TTL;
    if (o->timeout_ns == 0)
        o->timeout_ns = FG_CL_DEFAULT_TIMEOUT;
    if (o->instances == 0)
        o->instances = 1;
    if (o->backoff_min_ns == 0)
        o->backoff_min_ns = FG_CL_DEFAULT_BACKOFF;
    if (o->backoff_max_ns == 0)
        o->backoff_max_ns = FG_CL_DEFAULT_BACKOFF_X;
    if (o->backoff_max_ns < o->backoff_min_ns)
        o->backoff_max_ns = o->backoff_min_ns;
    if (o->redis == NULL)
        o->redis = "127.0.0.1:6379";
    if (o->prefix == NULL)
        o->prefix = "floodgate:";
    if (strnlen(o->redis, FG_CLUSTER_ADDR_MAX + 1) > FG_CLUSTER_ADDR_MAX ||
        strnlen(o->prefix, FG_CLUSTER_NAME_MAX + 1) +
                strnlen(o->name, FG_CLUSTER_NAME_MAX + 1) >
            FG_CLUSTER_NAME_MAX)
        return FG_ETOOLONG;
    if (o->clock.now == NULL)
        o->clock = fg_clock_monotonic();
    return 0;
}

/* The per-key table: max_keys entries at a load of at most 4/5, in
 * power-of-two shards. */
static int fg_cl_table(fg_cluster_limiter *cl) {
    uint64_t want = (uint64_t)cl->opts.max_keys * 5 / 4 + 1;
    cl->nshards = want >= UINT64_C(16) * 64 ? 16 : 1;
    uint64_t per = (want + cl->nshards - 1) / cl->nshards, slots = 8;
    while (slots < per)
        slots *= 2;
    cl->shard_slots = (uint32_t)slots;
    cl->stride = (sizeof(struct fg_cl_slot) + cl->opts.key_max + 7) & ~(size_t)7;
    cl->shards = fg__aligned_calloc(sizeof(struct fg_cl_shard) * cl->nshards, 64);
    cl->slots = fg__calloc((size_t)cl->nshards * slots, cl->stride);
    if (cl->shards == NULL || cl->slots == NULL)
        return FG_ENOMEM;
    for (uint32_t i = 0; i < cl->nshards; i++)
        if (pthread_mutex_init(&cl->shards[i].mu, NULL) != 0) {
            cl->nshards = i; /* free destroys only these */
            return FG_ESYS;
        }
    uint64_t seed[2];
    seed[0] = fg__random_u64();
    seed[1] = fg__random_u64();
    cl->k0 = seed[0];
    cl->k1 = seed[1];
    return 0;
}

int fg_cluster_limiter_new(const fg_cluster_options *opts, fg_cluster_limiter **out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = NULL;
    fg_cluster_options o;
    int rc = fg_cl_options(opts, &o);
    if (rc != 0)
        return rc;
    fg_cluster_limiter *cl = fg__aligned_calloc(sizeof(*cl), 64);
    if (cl == NULL)
        return FG_ENOMEM;
    cl->wake_fd[0] = cl->wake_fd[1] = -1;
    cl->redis = fg_cl_dup(o.redis);
    cl->prefix = fg_cl_dup(o.prefix);
    cl->name = fg_cl_dup(o.name);
    size_t plen = strlen(o.prefix), nlen = strlen(o.name);
    cl->key = fg__malloc(plen + nlen + 1);
    if (cl->redis == NULL || cl->prefix == NULL || cl->name == NULL || cl->key == NULL) {
        fg_cluster_limiter_free(cl);
        return FG_ENOMEM;
    }
    memcpy(cl->key, o.prefix, plen);
    memcpy(cl->key + plen, o.name, nlen + 1);
    rc = fg_cl_parse_addr(cl, o.redis);
    if (rc != 0) {
        fg_cluster_limiter_free(cl);
        return rc;
    }
    o.redis = cl->redis;
    o.prefix = cl->prefix;
    o.name = cl->name;
    cl->opts = o;
    cl->interval_us = (double)o.period_ns / (double)o.rate / 1000.0;
    cl->tau_us = cl->interval_us * (double)o.burst;
    (void)snprintf(cl->interval_arg, sizeof(cl->interval_arg), "%.17g", cl->interval_us);
    (void)snprintf(cl->tau_arg, sizeof(cl->tau_arg), "%.17g", cl->tau_us);
    /* Renew at a quarter left: time for the call to return while the
     * requests spend it, and at most a quarter lease held on top of one. */
    cl->low_water = (o.lease + 3) / 4;
    cl->backoff = o.backoff_min_ns;
    cl->rng = fg__random_u64() | 1;

    /* The fallback: rate/instances exactly (rate per instances periods),
     * burst/instances, at least 1; per key when the limiter is. */
    fg_limiter_options lo = FG_LIMITER_OPTIONS_INIT;
    lo.rate = o.rate;
    lo.period_ns =
        o.period_ns > UINT64_MAX / o.instances ? UINT64_MAX : o.period_ns * o.instances;
    lo.burst = o.burst / o.instances ? o.burst / o.instances : 1;
    lo.clock = o.clock;
    if (o.max_keys > 0) {
        rc = fg_cl_table(cl);
        if (rc == 0) {
            fg_keyed_limiter_options ko = FG_KEYED_LIMITER_OPTIONS_INIT;
            ko.bucket = lo;
            ko.max_keys = o.max_keys;
            ko.key_max = o.key_max;
            ko.when_full = o.when_full;
            rc = fg_keyed_limiter_new(&ko, &cl->klocal);
        }
    } else {
        rc = fg_limiter_new(&lo, &cl->local);
    }
    if (rc != 0) {
        fg_cluster_limiter_free(cl);
        return rc;
    }
    if (pthread_mutex_init(&cl->mu, NULL) != 0) {
        fg_cluster_limiter_free(cl);
        return FG_ESYS;
    }
    cl->mutex_made = 1;
    if (pipe(cl->wake_fd) != 0) {
        cl->wake_fd[0] = cl->wake_fd[1] = -1;
        fg_cluster_limiter_free(cl);
        return FG_ESYS;
    }
    for (int i = 0; i < 2; i++) {
        int fl = fcntl(cl->wake_fd[i], F_GETFL);
        (void)fcntl(cl->wake_fd[i], F_SETFL, fl | O_NONBLOCK);
        (void)fcntl(cl->wake_fd[i], F_SETFD, FD_CLOEXEC);
    }

    /* First connection, within the timeout; failing it is fallback mode. */
    char why[160];
    pthread_mutex_lock(&cl->mu);
    if (fg_cl_connect(cl, o.timeout_ns, why, sizeof(why)) != 0)
        fg_cl_fail(cl, why);
    pthread_mutex_unlock(&cl->mu);

    if (pthread_create(&cl->thread, NULL, fg_cl_main, cl) != 0) {
        fg_cluster_limiter_free(cl);
        return FG_ESYS;
    }
    cl->thread_started = 1;
    *out = cl;
    return 0;
}

#endif /* FG_HAVE_HIREDIS */
