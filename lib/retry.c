/*
 * lib/retry.c - the retry budget (a sliding window of sharded deposit
 * counts and per-slice withdrawal counts) and the retry stage (backoff with
 * jitter from seeded draws, the deadline, the budget).
 *
 * The budget. The window is W = 10 slices, kept in rings of W + 1 = 11
 * words: slice s lives in word s % 11. The spare word means that opening
 * slice s + 1 recycles the word of slice s - 10, which no reading in slice s
 * counts, so a caller still in slice s never loses a slice it counts to a
 * caller already in s + 1. Each word packs the slice number modulo 2^26
 * (the tag) above a 38-bit value, and a reader counts a word only when its
 * tag is exactly the slice it expects there.
 *
 * Deposits are the hot path (every request makes one), so they are not
 * kept as amounts in a shared word, which would cost every request an
 * atomic read-modify-write on a contended line. Each thread counts its
 * deposits in a shard it alone writes, and marks in the shard's ring the
 * count at its first deposit of each slice (a checkpoint); a shard's
 * deposits in the window are its count minus its lowest checkpoint there.
 * Withdrawals are rare and must not overdraw, so they are counted per
 * slice in one shared ring, and a withdrawal commits with a CAS on its
 * slice's word from the value its balance was computed with.
 *
 * The stage. Its enter deposits and, when there will be draws to make,
 * gives the request a 64-bit draw key in its slot; its exit, on a retryable
 * outcome, computes the backoff as a pure function of (key, retry number),
 * checks the deadline and the budget, and sleeps. Nothing else is shared
 * per request, so the success path touches only the calling thread's own
 * shard of the budget.
 */
#include <math.h>
#include <string.h>

#include "floodgate/deadline.h"
#include "floodgate/error.h"
#include "floodgate/retry.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"

__extension__ typedef unsigned __int128 fg_retry_u128;

#define FG_SPLITMIX_INC UINT64_C(0x9e3779b97f4a7c15) /* splitmix64's increment */
#define FG_CACHE_LINE   64

/* ---- draws ----------------------------------------------------------------------------- */

/* Output k (0-based) of splitmix64 seeded with seed: the generator adds the
 * increment to its state, then mixes (Steele, Lea and Flood, 2014). A pure
 * function of (seed, k), so no generator state is shared. */
static uint64_t fg_splitmix64_at(uint64_t seed, uint64_t k) {
    uint64_t z = seed + (k + 1) * FG_SPLITMIX_INC;
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* A value uniform in [lo, hi], both ends included (lo <= hi): the draw
 * scaled by multiply and shift, off from exactly uniform by under 2^-64. */
static uint64_t fg_uniform(uint64_t draw, uint64_t lo, uint64_t hi) {
    uint64_t span = hi - lo;
    if (span == UINT64_MAX)
        return draw;
    return lo + (uint64_t)(((fg_retry_u128)draw * (span + 1)) >> 64);
}

/* ---- the backoff ----------------------------------------------------------------------- */

/* The parts of the options the backoff depends on, checked. */
struct fg_retry_curve {
    fg_jitter jitter;
    uint64_t base;
    uint64_t cap;
    double mult;
};

static int fg_retry_curve_check(const fg_retry_options *o) {
    if (o->jitter != FG_JITTER_NONE && o->jitter != FG_JITTER_FULL &&
        o->jitter != FG_JITTER_DECORRELATED)
        return FG_EINVAL;
    if (isnan(o->multiplier) || o->max_backoff_ns < o->base_ns)
        return FG_EINVAL;
    if (!(o->multiplier >= 1.0 && o->multiplier <= FG_RETRY_MULTIPLIER_MAX))
        return FG_ERANGE;
    return 0;
}

static struct fg_retry_curve fg_retry_curve_of(const fg_retry_options *o) {
    struct fg_retry_curve c = {o->jitter, o->base_ns, o->max_backoff_ns, o->multiplier};
    return c;
}

/* e(n) = min(cap, base * mult^(n-1)), n >= 1, by repeated multiplication in
 * double (the same steps on every platform, unlike pow), truncated. The
 * loop stops at the cap, so it runs at most n - 1 times. */
static uint64_t fg_retry_exp(const struct fg_retry_curve *c, uint32_t n) {
    double d = (double)c->base;
    double cap = (double)c->cap;
    for (uint32_t i = 1; i < n; i++) {
        d *= c->mult;
        if (d >= cap)
            return c->cap;
    }
    if (d >= cap)
        return c->cap;
    uint64_t v = (uint64_t)d; /* d < cap <= 2^64: in range */
    return v < c->cap ? v : c->cap;
}

/* The backoff before retry n (n >= 1) of the request whose key is `key`. */
static uint64_t fg_retry_backoff_key(const struct fg_retry_curve *c, uint64_t key,
                                     uint32_t n) {
    switch (c->jitter) {
    case FG_JITTER_FULL:
        return fg_uniform(fg_splitmix64_at(key, n - 1), 0, fg_retry_exp(c, n));
    case FG_JITTER_DECORRELATED: {
        uint64_t prev = c->base;
        for (uint32_t k = 0; k < n; k++) {
            uint64_t hi = prev > UINT64_MAX / 3 ? UINT64_MAX : prev * 3;
            uint64_t b = fg_uniform(fg_splitmix64_at(key, k), c->base, hi);
            prev = b < c->cap ? b : c->cap;
        }
        return prev;
    }
    case FG_JITTER_NONE:
    default:
        return fg_retry_exp(c, n);
    }
}

uint64_t fg_retry_backoff(const fg_retry_options *opts, uint64_t request, uint32_t retry) {
    if (opts == NULL || retry == 0 || fg_retry_curve_check(opts) != 0)
        return 0;
    struct fg_retry_curve c = fg_retry_curve_of(opts);
    return fg_retry_backoff_key(&c, fg_splitmix64_at(opts->seed, request), retry);
}

/* ---- the budget ------------------------------------------------------------------------ */

#define FG_RB_SLICES 10                 /* slices in the window */
#define FG_RB_RING   (FG_RB_SLICES + 1) /* words in each ring */
#define FG_RB_RETRY  INT64_C(1000)      /* one retry, in thousandths */
#define FG_RB_OWNED  32                 /* shards with one writer each */
#define FG_RB_SHARED FG_RB_OWNED        /* the index of the shard for every other thread */
/* A ring word: a slice tag (the slice number modulo 2^26) above a 38-bit
 * value: a deposit number modulo 2^38 (checkpoints) or a count of retries
 * (withdrawals). */
#define FG_RB_VBITS  38
#define FG_RB_VMASK  ((UINT64_C(1) << FG_RB_VBITS) - 1)
#define FG_RB_VHALF  (UINT64_C(1) << (FG_RB_VBITS - 1))
#define FG_RB_TMASK  ((UINT64_C(1) << (64 - FG_RB_VBITS)) - 1)

/*
 * Deposits are counted in shards so that a deposit needs no atomic
 * read-modify-write: the first FG_RB_OWNED threads that deposit into any
 * budget each own one shard (in every budget) and are its only writer; all
 * later threads share the last shard, with atomic operations. In a shard,
 * `count` numbers its deposits and checkpoint cp[x % 11] holds the number
 * of its first deposit whose reading lay in slice x, so the shard's
 * deposits in the window are `count` minus the lowest checkpoint in it.
 */
struct fg_rb_shard {
    _Alignas(FG_CACHE_LINE) uint64_t count;
    uint64_t cp[FG_RB_RING];
};

struct fg_retry_budget {
    /* Read-only after creation. */
    uint64_t slice_ns;
    int64_t reserve; /* thousandths */
    int64_t credit;  /* thousandths per deposit */
    fg_clock clock;
    /* The latest slice any reading has reached (it only grows). Most
     * readings find their slice from it with a multiply and a compare,
     * without a 64-bit division; it changes once a slice. */
    _Alignas(FG_CACHE_LINE) uint64_t newest;
    /* Withdrawals: w[x % 11] counts the retries withdrawn in slice x. */
    _Alignas(FG_CACHE_LINE) uint64_t w[FG_RB_RING];
    uint64_t allowed;
    uint64_t refused;
    struct fg_rb_shard shard[FG_RB_OWNED + 1];
};

/* The calling thread's shard plus one (0: not chosen yet), and how many
 * owned shards have been handed out (it stops at FG_RB_OWNED, so no owned
 * shard is ever handed out twice). initial-exec, as in lib/counter.c. */
static _Thread_local __attribute__((tls_model("initial-exec"))) uint32_t fg_rb_mine;
static uint32_t fg_rb_handed; /* atomic */

static uint32_t fg_rb_shard_of_thread(void) {
    uint32_t k = fg_rb_mine;
    if (k != 0)
        return k - 1;
    uint32_t n = fg__load_u32(&fg_rb_handed);
    /* Take number n if nobody took it first; the CAS is what makes the
     * owner of a shard unique. */
    while (n < FG_RB_OWNED && !fg__cas_u32(&fg_rb_handed, n, n + 1))
        n = fg__load_u32(&fg_rb_handed);
    k = n < FG_RB_OWNED ? n : FG_RB_SHARED;
    fg_rb_mine = k + 1;
    return k;
}

/* The shards a reader must look at: the owned ones handed out so far. A
 * thread that took one after this load has deposited nothing a reader
 * could have been told about. */
static uint32_t fg_rb_owned_in_use(void) {
    uint32_t n = fg__load_u32(&fg_rb_handed);
    return n < FG_RB_OWNED ? n : FG_RB_OWNED;
}

static uint64_t fg_rb_val(uint64_t word) { return word & FG_RB_VMASK; }
static int fg_rb_is(uint64_t word, uint64_t slice) {
    return (word >> FG_RB_VBITS) == (slice & FG_RB_TMASK);
}
static uint64_t fg_rb_word(uint64_t slice, uint64_t val) {
    return ((slice & FG_RB_TMASK) << FG_RB_VBITS) | (val & FG_RB_VMASK);
}

/* Whether deposit number a comes before (or is) b, modulo 2^38. */
static int fg_rb_before(uint64_t a, uint64_t b) {
    return ((b - a) & FG_RB_VMASK) < FG_RB_VHALF;
}

/* Sweep one word: x is the slice of newest's window that belongs in it. */
static void fg_rb_sweep_word(uint64_t *p, uint64_t x, uint64_t val) {
    uint64_t v = fg__load_u64(p);
    /* A CAS from the value examined: a word that its writer changed
     * meanwhile is fresh and stays as it is. */
    if (!fg_rb_is(v, x))
        (void)fg__cas_u64(p, v, fg_rb_word(x, val));
}

/*
 * A new newest slice s: rewrite every ring word that does not belong to the
 * window of s (its tag is not the one slice of s-10 .. s that maps to it)
 * as that slice with nothing in it: no withdrawal, and a checkpoint at the
 * shard's current count (no deposit of the window before it; a real
 * checkpoint in the window is lower, and the lowest counts). So a word is
 * never more than a lap of the ring behind the newest slice, and a stale
 * word could only pass for a current one after the budget went unused for
 * a multiple of 11 x 2^26 slices.
 *
 * An owner writes its shard's words with plain (atomic) stores, not CAS;
 * racing with this sweep is still safe: the owner only writes a checkpoint
 * word after finding it stale, and then stores the right value for its
 * slice whether or not the sweep got there in between, and the sweep's CAS
 * fails on a word the owner has already written.
 */
static void fg_rb_sweep(fg_retry_budget *b, uint64_t s) {
    uint32_t owned = fg_rb_owned_in_use();
    for (uint32_t k = 0; k <= FG_RB_OWNED; k++) {
        if (k == owned)
            k = FG_RB_SHARED;
        struct fg_rb_shard *sh = &b->shard[k];
        uint64_t count = fg__load_u64(&sh->count);
        for (uint64_t d = 0; d < FG_RB_RING && d <= s; d++)
            fg_rb_sweep_word(&sh->cp[(s - d) % FG_RB_RING], s - d, count);
    }
    for (uint64_t d = 0; d < FG_RB_RING && d <= s; d++)
        fg_rb_sweep_word(&b->w[(s - d) % FG_RB_RING], s - d, 0);
}

/* fg_rb_slice's slow path: a reading outside the newest slice. */
static int fg_rb_slice_slow(fg_retry_budget *b, uint64_t now, uint64_t h, uint64_t *s) {
    uint64_t x = now / b->slice_ns;
    *s = x;
    while (x > h) {
        /* Raise newest to x, unless someone raised it at least as far. The
         * winner sweeps; the CAS orders its sweep after every load of the
         * old value, so no two sweeps are for the same slice. */
        if (fg__cas_u64(&b->newest, h, x)) {
            fg_rb_sweep(b, x);
            return 0;
        }
        h = fg__load_u64(&b->newest);
    }
    return x + FG_RB_SLICES < h ? -1 : 0;
}

/*
 * The slice of a reading, in *s. Returns 0, or -1 when the reading is more
 * than a window older than the newest slice (a stalled thread, a clock set
 * back): its slice's words may already hold a later lap.
 */
static inline int fg_rb_slice(fg_retry_budget *b, uint64_t now, uint64_t *s) {
    uint64_t h = fg__load_u64(&b->newest);
    /* now - h * slice wraps to a huge value when now is before slice h, so
     * one unsigned compare tests both ends. h * slice cannot overflow: h
     * came from dividing a 64-bit reading. */
    if (now - h * b->slice_ns < b->slice_ns) {
        *s = h;
        return 0;
    }
    return fg_rb_slice_slow(b, now, h, s);
}

/* One shard's deposits in the window of slice s. The checkpoints are read
 * before the count: a checkpoint is stored before the count moves past
 * its number (owned shards: program order and release stores; the shared
 * shard: the fetch-and-add comes first), so the count read afterwards is
 * at or past every number read. */
static uint64_t fg_rb_shard_deposits(const struct fg_rb_shard *sh, uint64_t s) {
    uint64_t low[FG_RB_SLICES];
    int nlow = 0;
    for (uint64_t d = 0; d < FG_RB_SLICES && d <= s; d++) {
        uint64_t v = fg__load_u64(&sh->cp[(s - d) % FG_RB_RING]);
        if (fg_rb_is(v, s - d))
            low[nlow++] = fg_rb_val(v);
    }
    uint64_t count = fg__load_u64(&sh->count), deposits = 0;
    for (int i = 0; i < nlow; i++) {
        uint64_t n = (count - low[i]) & FG_RB_VMASK;
        deposits = n > deposits ? n : deposits;
    }
    return deposits;
}

/* The balance at slice s, in thousandths, and (in *wv) slice s's
 * withdrawal word as read (before the deposits: deposits read later can
 * only be more). */
static int64_t fg_rb_balance(fg_retry_budget *b, uint64_t s, uint64_t *wv) {
    uint64_t withdrawn = 0, deposits = 0;
    for (uint64_t d = 0; d < FG_RB_SLICES && d <= s; d++) {
        uint64_t v = fg__load_u64(&b->w[(s - d) % FG_RB_RING]);
        if (d == 0)
            *wv = v;
        if (fg_rb_is(v, s - d))
            withdrawn += fg_rb_val(v);
    }
    if (b->credit != 0) {
        uint32_t owned = fg_rb_owned_in_use();
        for (uint32_t k = 0; k < owned; k++)
            deposits += fg_rb_shard_deposits(&b->shard[k], s);
        deposits += fg_rb_shard_deposits(&b->shard[FG_RB_SHARED], s);
    }
    return b->reserve + b->credit * (int64_t)deposits - FG_RB_RETRY * (int64_t)withdrawn;
}

int fg_retry_budget_new(const fg_retry_budget_options *opts, fg_retry_budget **out) {
    static const fg_retry_budget_options defaults = FG_RETRY_BUDGET_OPTIONS_INIT;
    if (out == NULL)
        return FG_EINVAL;
    if (opts == NULL)
        opts = &defaults;
    if (isnan(opts->ratio))
        return FG_EINVAL;
    if (!(opts->ratio >= 0.0 && opts->ratio <= FG_RETRY_BUDGET_RATIO_MAX) ||
        opts->ttl_ns < FG_RETRY_BUDGET_TTL_MIN_NS || opts->ttl_ns > FG_RETRY_BUDGET_TTL_MAX_NS)
        return FG_ERANGE;
    fg_retry_budget *b = fg__aligned_calloc(sizeof(*b), FG_CACHE_LINE);
    if (b == NULL)
        return FG_ENOMEM;
    b->slice_ns = opts->ttl_ns / FG_RB_SLICES;
    /* min_per_sec * ttl seconds retries, in thousandths: below
     * 2^32 * 3.6e12 / 1e6 < 2^54; the window's credit is below
     * 1e5 * 33 * 2^37 < 2^59: the balance fits an int64. */
    b->reserve = (int64_t)(((fg_retry_u128)opts->min_per_sec * opts->ttl_ns) / 1000000u);
    b->credit = (int64_t)(opts->ratio * (double)FG_RB_RETRY + 0.5); /* rounded to nearest */
    b->clock = opts->clock.now ? opts->clock : fg_clock_monotonic();
    /* The zeroed words say "newest slice 0, nothing in it": right for a
     * reading in slice 0, and the first later reading sweeps them. */
    *out = b;
    return 0;
}

void fg_retry_budget_free(fg_retry_budget *budget) { fg__aligned_free(budget); }

/* The shared shard's deposit: every step atomic, for any number of
 * writers. g is the deposit's number. */
static void fg_rb_deposit_shared(struct fg_rb_shard *sh, uint64_t s, uint64_t g) {
    uint64_t *p = &sh->cp[s % FG_RB_RING];
    for (;;) {
        uint64_t v = fg__load_u64(p);
        if (fg_rb_is(v, s) && fg_rb_before(fg_rb_val(v), g))
            return; /* slice s starts at or before g */
        /* Open slice s at g, or lower its start to g (a deposit numbered
         * later got here first). The CAS fails when another deposit moved
         * the word meanwhile; look again. */
        if (fg__cas_u64(p, v, fg_rb_word(s, g)))
            return;
    }
}

/*
 * A deposit (b not NULL). In an owned shard nobody else writes the count,
 * so it is a load and a store, not an atomic add: the usual deposit is a
 * few loads and one store, no read-modify-write and no fence (x86 keeps
 * the checkpoint store before the count store; elsewhere the release
 * store orders them). Static, so that the stage's enter inlines it (calls
 * to an exported function are not inlined: it could be interposed).
 */
static inline void fg_rb_deposit(fg_retry_budget *b, uint64_t now_ns) {
    uint32_t k = fg_rb_shard_of_thread();
    struct fg_rb_shard *sh = &b->shard[k];
    uint64_t s;
    int place = b->credit != 0 && fg_rb_slice(b, now_ns, &s) == 0;
    if (k == FG_RB_SHARED) {
        uint64_t g = fg__faa_u64(&sh->count, 1);
        if (place)
            fg_rb_deposit_shared(sh, s, g);
        return;
    }
    uint64_t g = fg__load_u64(&sh->count);
    if (place) {
        uint64_t *p = &sh->cp[s % FG_RB_RING];
        if (!fg_rb_is(fg__load_u64(p), s))
            fg__store_u64(p, fg_rb_word(s, g)); /* our first deposit in slice s */
    }
    /* Without `place` (no credit to keep, or a reading too old to place)
     * the deposit is only counted, and so counts in the newest window. */
    fg__store_u64(&sh->count, g + 1);
}

void fg_retry_budget_deposit_at(fg_retry_budget *b, uint64_t now_ns) {
    if (b != NULL)
        fg_rb_deposit(b, now_ns);
}

void fg_retry_budget_deposit(fg_retry_budget *b) {
    if (b != NULL)
        fg_rb_deposit(b, fg_clock_read(&b->clock));
}

int fg_retry_budget_try_withdraw_at(fg_retry_budget *b, uint64_t now_ns) {
    if (b == NULL)
        return FG_EINVAL;
    uint64_t s;
    if (fg_rb_slice(b, now_ns, &s) == 0) {
        uint64_t *p = &b->w[s % FG_RB_RING];
        for (;;) {
            uint64_t v = 0;
            int64_t balance = fg_rb_balance(b, s, &v);
            uint64_t n = fg_rb_is(v, s) ? fg_rb_val(v) : 0;
            if (balance < FG_RB_RETRY || n >= FG_RB_VMASK)
                break;
            /* Commit only if slice s's withdrawal word still holds the
             * value the balance was computed with: every withdrawal in
             * slice s changes it, so none slipped in between, and deposits
             * since then only raised the balance. */
            if (fg__cas_u64(p, v, fg_rb_word(s, n + 1))) {
                fg__faa_u64(&b->allowed, 1);
                return 1;
            }
        }
    }
    fg__faa_u64(&b->refused, 1);
    return 0;
}

int fg_retry_budget_try_withdraw(fg_retry_budget *b) {
    if (b == NULL)
        return FG_EINVAL;
    return fg_retry_budget_try_withdraw_at(b, fg_clock_read(&b->clock));
}

int fg_retry_budget_stats_get(const fg_retry_budget *budget, fg_retry_budget_stats *out) {
    if (budget == NULL || out == NULL)
        return FG_EINVAL;
    fg_retry_budget *b = (fg_retry_budget *)budget; /* a new slice may be swept */
    out->deposits = 0;
    for (uint32_t k = 0; k <= FG_RB_OWNED; k++)
        out->deposits += fg__load_u64(&b->shard[k].count);
    out->allowed = fg__load_u64(&b->allowed);
    out->refused = fg__load_u64(&b->refused);
    out->available = 0;
    uint64_t s, wv;
    if (fg_rb_slice(b, fg_clock_read(&b->clock), &s) == 0) {
        int64_t balance = fg_rb_balance(b, s, &wv);
        out->available = balance > 0 ? (uint64_t)(balance / FG_RB_RETRY) : 0;
    }
    return 0;
}

/* ---- the stage ------------------------------------------------------------------------- */

struct fg_retry_stage {
    /* Read-only after creation. */
    struct fg_retry_curve curve;
    uint32_t max_attempts;
    int seeded;
    uint64_t seed;
    fg_retry_classifier classify; /* never NULL */
    void *classify_arg;
    fg_retry_budget *budget;
    fg_clock clock;
    /* Counters, off the cache line of the fields above that every request
     * reads: the request counter (written by every request of a seeded
     * stage with jitter) and the failure path's counters. */
    char pad[FG_CACHE_LINE];
    uint64_t requests;
    uint64_t retries;
    uint64_t not_retryable;
    uint64_t refused_attempts;
    uint64_t refused_deadline;
    uint64_t refused_budget;
    uint64_t backoff_ns_total;
};

int fg_retry_classify_default(const fg_ctx *ctx, const fg_outcome *outcome, void *arg) {
    (void)ctx;
    (void)arg;
    return outcome != NULL && outcome->kind == FG_OUTCOME_FAILED &&
           outcome->code != FG_ECANCELED;
}

static int fg_retry_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    struct fg_retry_stage *st = state;
    if (st->budget != NULL)
        fg_rb_deposit(st->budget, ctx->now_ns);
    if (st->curve.jitter == FG_JITTER_NONE)
        return 0; /* no draws */
    if (st->seeded) {
        /* The fetch-and-add only hands each request its own number; it
         * orders nothing else. */
        *slot = fg_splitmix64_at(st->seed, fg__faa_u64(&st->requests, 1));
    } else if (st->curve.jitter == FG_JITTER_DECORRELATED) {
        /* Each backoff depends on the request's previous ones: keep one
         * random key for the whole request. (Unseeded full jitter draws
         * afresh at each failure and needs nothing here.) */
        *slot = fg__random_u64();
    }
    return 0;
}

static int fg_retry_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome, uint64_t slot) {
    struct fg_retry_stage *st = state;
    if (outcome->kind == FG_OUTCOME_OK)
        return 0;
    /* Only fg_chain_call honours a retry; after fg_chain_enter the outcome
     * is final, so there is nothing to decide, sleep or withdraw. */
    if (ctx->priv.state != FG_CTX_RUNNING)
        return 0;
    /* A canceled request is never retried: neither an attempt that failed
     * with FG_ECANCELED nor one whose ctx was canceled while it ran (the
     * chain would reject the next attempt, after the backoff). */
    if (outcome->code == FG_ECANCELED || fg_ctx_canceled(ctx) ||
        !st->classify(ctx, outcome, st->classify_arg)) {
        fg__faa_u64(&st->not_retryable, 1);
        return 0;
    }
    uint32_t n = ctx->retry_count + 1; /* the retry this would be */
    if (n >= st->max_attempts) {
        fg__faa_u64(&st->refused_attempts, 1);
        return 0;
    }
    uint64_t key = st->seeded || st->curve.jitter != FG_JITTER_FULL ? slot : fg__random_u64();
    uint64_t backoff = fg_retry_backoff_key(&st->curve, key, n);
    uint64_t now = fg_clock_read(&st->clock);
    if (ctx->deadline_ns != 0 &&
        (now >= ctx->deadline_ns || backoff >= ctx->deadline_ns - now)) {
        fg__faa_u64(&st->refused_deadline, 1);
        return 0;
    }
    if (st->budget != NULL && fg_retry_budget_try_withdraw_at(st->budget, now) != 1) {
        fg__faa_u64(&st->refused_budget, 1);
        return 0;
    }
    if (backoff != 0)
        fg_clock_sleep(&st->clock, backoff);
    fg__faa_u64(&st->retries, 1);
    fg__faa_u64(&st->backoff_ns_total, backoff);
    return FG_STAGE_RETRY;
}

static void fg_retry_destroy(void *state) { fg__aligned_free(state); }

static const fg_stage_ops fg_retry_ops = {"retry", fg_retry_enter, fg_retry_exit,
                                          fg_retry_destroy};

int fg_stage_retry(const fg_retry_options *opts, const char *name, fg_stage **out) {
    if (opts == NULL || out == NULL)
        return FG_EINVAL;
    if (name == NULL)
        name = "retry";
    if (strnlen(name, FG_STAGE_NAME_MAX + 1) > FG_STAGE_NAME_MAX)
        return FG_ETOOLONG;
    int rc = fg_retry_curve_check(opts);
    if (rc != 0)
        return rc;
    if (opts->max_attempts == 0 || opts->max_attempts > FG_RETRY_MAX_ATTEMPTS)
        return FG_ERANGE;

    struct fg_retry_stage *st = fg__aligned_calloc(sizeof(*st), FG_CACHE_LINE);
    if (st == NULL)
        return FG_ENOMEM;
    st->curve = fg_retry_curve_of(opts);
    st->max_attempts = opts->max_attempts;
    st->seeded = opts->seed != 0;
    st->seed = opts->seed;
    st->classify = opts->classify ? opts->classify : fg_retry_classify_default;
    st->classify_arg = opts->classify_arg;
    st->budget = opts->budget;
    st->clock = opts->clock.now ? opts->clock : fg_clock_monotonic();
    rc = fg_stage_new(&fg_retry_ops, st, name, out);
    if (rc != 0)
        fg_retry_destroy(st);
    return rc;
}

int fg_retry_stats_get(const fg_stage *stage, fg_retry_stats *out) {
    if (stage == NULL || out == NULL || stage->ops != &fg_retry_ops)
        return FG_EINVAL;
    struct fg_retry_stage *st = stage->state;
    out->retries = fg__load_u64(&st->retries);
    out->not_retryable = fg__load_u64(&st->not_retryable);
    out->refused_attempts = fg__load_u64(&st->refused_attempts);
    out->refused_deadline = fg__load_u64(&st->refused_deadline);
    out->refused_budget = fg__load_u64(&st->refused_budget);
    out->backoff_ns_total = fg__load_u64(&st->backoff_ns_total);
    return 0;
}
