/*
 * floodgate/limiter.h - token-bucket rate limiters: one bucket (fg_limiter),
 * one bucket per key (fg_keyed_limiter), and the chain stages around them.
 *
 * A bucket holds at most `burst` tokens, starts full, and refills
 * continuously at `rate` tokens per `period`. A request for n tokens at time
 * t is admitted iff the bucket holds at least n tokens at t; otherwise it is
 * rejected with FG_ELIMITED and told how long until n tokens will be there.
 * The implementation is GCRA (the "theoretical arrival time" form of the
 * token bucket): one 64-bit word per bucket, updated by compare-and-swap,
 * so a decision is exact and lock-free. docs/limiting.md gives the algorithm,
 * the precise semantics and a worked example.
 *
 * Time: nanoseconds on the limiter's clock; a ctx's now_ns must come from
 * the same clock. A reading earlier than one the bucket has already seen
 * counts as no time elapsed: it neither refunds tokens nor wraps around.
 *
 * Resolution: the interval between two tokens is period/rate rounded up to
 * a whole nanosecond, so a limiter never admits more than its rate. When
 * period/rate is a whole number (1000/s, 10M/s, 1/h ...) the bucket is exact;
 * otherwise the admitted rate is lower by less than 1 ns per token (for
 * 3/s: 2.999999994/s). Rates finer than 1 token per ns are refused.
 */
#ifndef FLOODGATE_LIMITER_H
#define FLOODGATE_LIMITER_H

#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "common.h"
#include "ctx.h"
#include "stage.h"

FG_BEGIN_DECLS

/* A token bucket (opaque): fg_limiter_new makes one. */
typedef struct fg_limiter fg_limiter;

/*
 * Limiter options. Zero means "not set" for every field; rate and burst are
 * required. Start from FG_LIMITER_OPTIONS_INIT and set what you need.
 */
typedef struct fg_limiter_options {
    uint64_t rate;      /* tokens per period, >= 1 */
    uint64_t period_ns; /* 0 means 1 s; the refill interval period/rate must be >= 1 ns */
    uint64_t burst;     /* capacity in tokens, >= 1 */
    /* Smoothing (queueing): > 0 lets a request that finds too few tokens
     * reserve a later slot and wait for it, up to this long; a longer wait
     * is rejected. 0: reject at once (no queueing). */
    uint64_t max_wait_ns;
    /* Warm-up: > 0 makes a cold limiter (one whose bucket has been full
     * for at least warmup_ns) start at rate/cold_factor and ramp linearly to
     * rate over warmup_ns; see docs/limiting.md for the exact curve. A full
     * bucket admits any n <= burst even while cold; it is charged the cold
     * cost, which may exceed the bucket (later requests then wait longer). */
    uint64_t warmup_ns;
    uint32_t cold_factor; /* warm-up start divisor, 1 .. 1000; 0 means 3 */
    fg_clock clock;       /* for the _now calls and rate changes; now == NULL: monotonic */
} fg_limiter_options;

/* Defaults: every field unset. In C:
 * fg_limiter_options o = FG_LIMITER_OPTIONS_INIT; o.rate = 100; o.burst = 20; */
#define FG_LIMITER_OPTIONS_INIT                                                               \
    {                                                                                         \
        0, 0, 0, 0, 0, 0, { NULL, NULL, NULL }                                                \
    }

/* Largest n, burst and rate accepted (keeps every product in 64 bits). */
#define FG_LIMITER_MAX_TOKENS (UINT64_C(1) << 40)

/*
 * fg_limiter_new - a token bucket, full.
 *
 * Returns: 0 and *out; FG_EINVAL when opts or out is NULL, or rate or burst
 * is 0; FG_ERANGE when rate or burst exceeds FG_LIMITER_MAX_TOKENS, the
 * refill interval period/rate is below 1 ns, warmup_ns is 2^62 ns (~146
 * years) or more, burst × interval plus max_wait (times
 * cold_factor with warm-up) exceeds 2^62 ns, or cold_factor exceeds 1000;
 * FG_ENOMEM.
 * Ownership: opts is copied. The caller owns *out: fg_limiter_free.
 * Thread-safety: MT-safe.
 */
FG_API int fg_limiter_new(const fg_limiter_options *opts, fg_limiter **out);

/*
 * fg_limiter_free - free a limiter. NULL is ignored.
 * Thread-safety: not thread-safe: nobody may use the limiter any more.
 */
FG_API void fg_limiter_free(fg_limiter *limiter);

/*
 * fg_limiter_try - ask for n tokens at time now_ns.
 *
 * On admission returns 0 and sets *wait_ns to 0, or, in smoothing mode, to
 * the time the caller must wait before proceeding (its reserved slot). On
 * rejection returns FG_ELIMITED and sets *wait_ns to the time until n tokens
 * will be available (the retry-after hint); nothing is taken from the bucket.
 * wait_ns may be NULL.
 *
 * Returns: 0; FG_ELIMITED; FG_EINVAL (limiter NULL, or n == 0); FG_ERANGE
 * (n > burst: such a request can never be admitted, which is a caller bug
 * rather than a rejection).
 * Thread-safety: MT-safe, lock-free (one CAS when uncontended).
 */
FG_API int fg_limiter_try(fg_limiter *limiter, uint64_t now_ns, uint64_t n, uint64_t *wait_ns);

/*
 * fg_limiter_try_wait - fg_limiter_try with a per-call bound on the
 * smoothing wait: the wait may not exceed min(max_wait_ns option,
 * max_wait_ns argument). A stage passes the time left before the request's
 * deadline, so it never reserves a slot the request cannot use.
 *
 * Returns, Thread-safety: as fg_limiter_try.
 */
FG_API int fg_limiter_try_wait(fg_limiter *limiter, uint64_t now_ns, uint64_t n,
                               uint64_t max_wait_ns, uint64_t *wait_ns);

/*
 * fg_limiter_try_now - fg_limiter_try at the limiter's own clock reading.
 *
 * Returns, Thread-safety: as fg_limiter_try.
 */
FG_API int fg_limiter_try_now(fg_limiter *limiter, uint64_t n, uint64_t *wait_ns);

/*
 * fg_limiter_set_rate - change the rate (tokens per period_ns; period 0
 * means 1 s). Takes effect at once for every thread, and keeps the tokens
 * the bucket holds at that moment (read on the limiter's clock): no refill
 * to full, no reset to empty.
 *
 * Returns: 0; FG_EINVAL / FG_ERANGE as fg_limiter_new (nothing changes
 * then); FG_ESYS when the writers' mutex cannot be taken.
 * Thread-safety: MT-safe; concurrent tries stay lock-free; concurrent
 * changes are serialised.
 */
FG_API int fg_limiter_set_rate(fg_limiter *limiter, uint64_t rate, uint64_t period_ns);

/*
 * fg_limiter_set_burst - change the capacity, keeping the tokens held (cut
 * to the new burst when it is smaller).
 *
 * Returns, Thread-safety: as fg_limiter_set_rate.
 */
FG_API int fg_limiter_set_burst(fg_limiter *limiter, uint64_t burst);

/*
 * fg_limiter_tokens - whole tokens the bucket holds at now_ns (rounded
 * down), without taking any.
 *
 * During warm-up this counts at the full rate's interval: a request may
 * then be able to take fewer tokens than this says.
 *
 * Returns: the count (0 for NULL). Thread-safety: MT-safe, lock-free (it
 * reads again when a setting change races it).
 */
FG_API uint64_t fg_limiter_tokens(const fg_limiter *limiter, uint64_t now_ns);

/*
 * fg_limiter_get - the limiter's current settings (after any set_rate /
 * set_burst), into *opts.
 *
 * Returns: 0; FG_EINVAL for a NULL argument. Thread-safety: MT-safe.
 */
FG_API int fg_limiter_get(const fg_limiter *limiter, fg_limiter_options *opts);

/* ---- one bucket per key -------------------------------------------------- */

/* A table of token buckets, one per key (opaque): fg_keyed_limiter_new. */
typedef struct fg_keyed_limiter fg_keyed_limiter;

/* What a full table does with a key it has no room for. */
typedef enum fg_keyed_when_full {
    FG_KEYED_REJECT_NEW = 0, /* reject the unknown key (FG_ELIMITED) */
    FG_KEYED_ADMIT_NEW = 1,  /* admit it, unlimited, without a bucket */
} fg_keyed_when_full;

/* Keyed limiter options. Start from FG_KEYED_LIMITER_OPTIONS_INIT; bucket.rate,
 * bucket.burst and max_keys are required. */
typedef struct fg_keyed_limiter_options {
    fg_limiter_options bucket; /* each key's bucket; warm-up is not offered per key */
    uint32_t max_keys;         /* keys held at once, >= 1; memory is fixed by it */
    uint32_t key_max;          /* longest key in bytes; 0 means FG_KEYED_KEY_MAX_DEFAULT */
    /* What happens to a new key when the table is full. */
    fg_keyed_when_full when_full;
} fg_keyed_limiter_options;

#define FG_KEYED_KEY_MAX_DEFAULT 47                  /* key_max when it is 0 */
#define FG_KEYED_KEY_MAX_LIMIT   255                 /* largest key_max */
#define FG_KEYED_MAX_KEYS        (UINT32_C(1) << 28) /* largest max_keys */
/* Defaults: every field unset, FG_KEYED_REJECT_NEW. */
#define FG_KEYED_LIMITER_OPTIONS_INIT                                                         \
    { FG_LIMITER_OPTIONS_INIT, 0, 0, FG_KEYED_REJECT_NEW }

/* A keyed limiter's counters and sizes (fg_keyed_limiter_stats). */
typedef struct fg_keyed_stats {
    uint64_t keys;          /* keys held now */
    uint64_t capacity;      /* most keys the table holds at once: max_keys */
    uint64_t evictions;     /* idle (full) buckets replaced by a new key */
    uint64_t full_rejected; /* unknown keys rejected because the table was full */
    uint64_t full_admitted; /* unknown keys admitted unlimited because it was full */
    uint64_t bytes;         /* memory the limiter holds, fixed at creation */
} fg_keyed_stats;

/*
 * fg_keyed_limiter_new - a table of up to max_keys buckets, all memory
 * allocated now. A key's bucket is created full on its first request. When
 * the table is full, a new key takes the place of a key whose bucket has
 * refilled to full (it holds no information: a fresh bucket is the same):
 * one on the new key's own probe run, else one of the up to 64 slots of its
 * shard that a rotating hand examines. Only when neither finds one does
 * when_full decide, so a flood of new keys costs each a bounded amount of
 * work. (The table is sharded; a shard refuses keys beyond its share plus
 * four standard deviations of hashing imbalance, which in practice never
 * binds before max_keys does.)
 *
 * Returns: 0 and *out; FG_EINVAL / FG_ERANGE as fg_limiter_new (and
 * FG_EINVAL for warm-up, max_keys 0, or key_max > FG_KEYED_KEY_MAX_LIMIT);
 * FG_ERANGE for max_keys > FG_KEYED_MAX_KEYS; FG_ESYS when the hash seed
 * cannot be read from the OS; FG_ENOMEM.
 * Ownership: opts copied; the caller owns *out: fg_keyed_limiter_free.
 * Thread-safety: MT-safe.
 */
FG_API int fg_keyed_limiter_new(const fg_keyed_limiter_options *opts, fg_keyed_limiter **out);

/* fg_keyed_limiter_free - free the table. NULL is ignored.
 * Thread-safety: not thread-safe: nobody may use it any more. */
FG_API void fg_keyed_limiter_free(fg_keyed_limiter *keyed);

/*
 * fg_keyed_limiter_try - fg_limiter_try on key's bucket. The key is bytes
 * (need not be NUL-terminated) and is copied into the table.
 *
 * Returns: as fg_limiter_try (with max_wait_ns bounding the smoothing wait
 * as in fg_limiter_try_wait; pass UINT64_MAX for "the option's"), plus
 * FG_ETOOLONG for a key longer than key_max (never truncated) and
 * FG_EINVAL for a NULL key with key_len > 0. An empty key is a valid key.
 * Thread-safety: MT-safe: lookups and updates take one of many fine-grained
 * shard locks, held for a few dozen instructions and never across a call out.
 */
FG_API int fg_keyed_limiter_try(fg_keyed_limiter *keyed, const char *key, size_t key_len,
                                uint64_t now_ns, uint64_t n, uint64_t max_wait_ns,
                                uint64_t *wait_ns);

/*
 * fg_keyed_limiter_set_rate / fg_keyed_limiter_set_burst - as for
 * fg_limiter, applied to every key's bucket, each keeping its tokens at the
 * reading of the bucket options' clock. They walk the table (O(max_keys)),
 * one shard at a time, so a request sees either the old or the new
 * settings for its key, never a mix.
 *
 * Returns: 0; FG_EINVAL (NULL, rate or burst 0) or FG_ERANGE as
 * fg_limiter_new, and then nothing changes; FG_ESYS when the writers'
 * mutex cannot be taken.
 * Thread-safety: MT-safe; concurrent changes are serialised; requests on a
 * shard wait only while that shard is converted.
 */
FG_API int fg_keyed_limiter_set_rate(fg_keyed_limiter *keyed, uint64_t rate,
                                     uint64_t period_ns);
FG_API int fg_keyed_limiter_set_burst(fg_keyed_limiter *keyed, uint64_t burst);

/*
 * fg_keyed_limiter_tokens - whole tokens key's bucket holds at now_ns (burst
 * for a key the table does not hold).
 * Returns: the count; 0 for bad arguments. Thread-safety: MT-safe.
 */
FG_API uint64_t fg_keyed_limiter_tokens(fg_keyed_limiter *keyed, const char *key,
                                        size_t key_len, uint64_t now_ns);

/*
 * fg_keyed_limiter_stats - counters and sizes into *stats.
 * Returns: 0; FG_EINVAL for NULL. Thread-safety: MT-safe; each counter is
 * read atomically, the set is not one snapshot.
 */
FG_API int fg_keyed_limiter_stats(fg_keyed_limiter *keyed, fg_keyed_stats *stats);

/* ---- stages -------------------------------------------------------------- */

/*
 * Where a keyed stage finds a request's key. FG_KEY_HEADER reads the
 * header named `name` (e.g. "x-user-id"); FG_KEY_PATH uses the path;
 * FG_KEY_CUSTOM calls fn; FG_KEY_BAGGAGE reads the W3C baggage entry named
 * `name` (percent-decoded, see fg_ctx_baggage; e.g. "tenant"). A request
 * without its key (missing header or baggage entry) is handled as `missing`
 * says; a key longer than the keyed limiter's key_max is rejected with
 * FG_ETOOLONG.
 */
typedef enum fg_key_source {
    FG_KEY_HEADER = 0,
    FG_KEY_PATH = 1,
    FG_KEY_CUSTOM = 2,
    FG_KEY_BAGGAGE = 3
} fg_key_source;

/* What a keyed stage does with a request that has no key. */
typedef enum fg_key_missing {
    FG_KEY_MISSING_ADMIT = 0,  /* not limited by this stage */
    FG_KEY_MISSING_REJECT = 1, /* rejected with FG_ELIMITED */
    FG_KEY_MISSING_SHARED = 2, /* all such requests share the bucket of the empty key */
} fg_key_missing;

/* A custom key extractor: set *key to borrowed bytes and return 0, or return
 * FG_ENOTFOUND when the request has no key. Called on the request's thread. */
typedef int (*fg_key_fn)(const fg_ctx *ctx, fg_str *key, void *arg);

/* Limit stage options. Start from FG_LIMIT_STAGE_OPTIONS_INIT. */
typedef struct fg_limit_stage_options {
    const char *name; /* the stage's name; copied; NULL means "limit" */
    uint64_t tokens;  /* tokens per request; 0 means 1 */
    int shadow;       /* nonzero: decide and count, never reject or delay */
    /* keyed stages only: where the key comes from */
    fg_key_source key_source;
    const char
        *key_name;    /* header name (FG_KEY_HEADER) or baggage key (FG_KEY_BAGGAGE); copied */
    fg_key_fn key_fn; /* FG_KEY_CUSTOM */
    void *key_arg;    /* passed to key_fn */
    fg_key_missing missing; /* a request without its key */
} fg_limit_stage_options;

/* Defaults: one token per request; keyed: a header's key, admit when missing. */
#define FG_LIMIT_STAGE_OPTIONS_INIT                                                           \
    { NULL, 0, 0, FG_KEY_HEADER, NULL, NULL, NULL, FG_KEY_MISSING_ADMIT }

/* Decisions a limit stage has made, counted exactly. */
typedef struct fg_limit_stats {
    uint64_t admitted;        /* admitted at once */
    uint64_t delayed;         /* admitted with a smoothing wait */
    uint64_t rejected;        /* rejected (0 in shadow mode) */
    uint64_t shadow_rejected; /* shadow mode: would have been rejected */
    uint64_t missing_key;     /* keyed: requests without a key */
} fg_limit_stats;

/*
 * fg_stage_limit - a stage that takes opts->tokens from limiter per request
 * at ctx->now_ns. Rejects with FG_ELIMITED and the retry-after hint in
 * ctx->retry_after_ns; in smoothing mode admits with ctx->delay_ns raised to
 * the wait, bounded by the time left before ctx->deadline_ns. In shadow mode
 * it never rejects or delays, and counts what it would have done.
 *
 * Returns: 0 and *out; FG_EINVAL (NULL limiter or out); FG_ERANGE (tokens >
 * the limiter's burst); FG_ETOOLONG (name); FG_ENOMEM.
 * Ownership: borrows limiter, which must outlive the stage; the caller owns
 * *out (one reference; fg_chain_use takes it).
 * Thread-safety: MT-safe; the stage is lock-free.
 */
FG_API int fg_stage_limit(fg_limiter *limiter, const fg_limit_stage_options *opts,
                          fg_stage **out);

/*
 * fg_stage_limit_keyed - the same for a keyed limiter, with the key taken
 * as opts->key_source says.
 *
 * Returns: as fg_stage_limit, and FG_EINVAL when the key source lacks its
 * key_name or key_fn.
 * Ownership, Thread-safety: as fg_stage_limit (lookups take a shard lock).
 */
FG_API int fg_stage_limit_keyed(fg_keyed_limiter *keyed, const fg_limit_stage_options *opts,
                                fg_stage **out);

/*
 * fg_limit_stage_stats - the decisions a stage made by fg_stage_limit or
 * fg_stage_limit_keyed has counted.
 *
 * Returns: 0; FG_EINVAL when stage is NULL or not a limit stage.
 * Thread-safety: MT-safe.
 */
FG_API int fg_limit_stage_stats(const fg_stage *stage, fg_limit_stats *stats);

FG_END_DECLS

#endif /* FLOODGATE_LIMITER_H */
