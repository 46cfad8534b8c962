/*
 * lib/breaker.c - the circuit breaker: closed, open, half-open.
 *
 * One 64-bit word holds everything a request decides on:
 *     bits  0-1   state (closed / open / half-open)
 *     bits  2-3   mode (auto / forced open / forced closed / disabled)
 *     bits  4-17  half-open probes admitted
 *     bits 18-31  half-open probes that succeeded
 *     bits 32-63  generation (low 32 bits of the transition count)
 * A closed request reads it once on enter and once on exit; a probe takes a
 * slot with a CAS on it, so exactly half_open_probes are admitted however
 * many threads race. A permit is the full generation with two flag bits; an
 * outcome whose generation is not the word's is discarded.
 *
 * Transitions take `lock`, write the fields that describe the new state
 * (open_until, half_open_since) and then publish the new word with a CAS
 * (a release): a request that reads the word sees those fields as written
 * for that state or a later one. The listener runs after the lock is
 * released.
 *
 * Windows. COUNT: a ring of one-byte outcome codes, a position counter and
 * three running totals; a call exchanges its code into the ring and applies
 * the difference with the code it replaced, so the totals never drift.
 * TIME: B packed words [tag 16 | slow 16 | failures 16 | calls 16], one per
 * bucket, updated with one CAS each; a word whose tag is not its bucket's
 * current index is stale and is reset by whoever writes it next. Sums are
 * taken over the buckets whose tags fall within the window.
 */
#include <pthread.h>
#include <string.h>

#include "floodgate/breaker.h"
#include "floodgate/error.h"

#include "alloc.h"
#include "atomic.h"
#include "gcra.h" /* fg_u128, FG_GCRA_TIME_MAX */
#include "internal.h"

/* ---- the state word ------------------------------------------------------- */

#define FG_W_STATE(w)      ((unsigned)((w)&3u))
#define FG_W_MODE(w)       ((unsigned)(((w) >> 2) & 3u))
#define FG_W_ADMITTED(w)   ((uint32_t)(((w) >> 4) & 0x3fffu))
#define FG_W_SUCCEEDED(w)  ((uint32_t)(((w) >> 18) & 0x3fffu))
#define FG_W_GEN(w)        ((w) >> 32)
#define FG_W_ONE_ADMITTED  (UINT64_C(1) << 4)
#define FG_W_ONE_SUCCEEDED (UINT64_C(1) << 18)
#define FG_GEN_MASK        ((UINT64_C(1) << 32) - 1)

static uint64_t fg_word(unsigned state, unsigned mode, uint32_t admitted, uint32_t succeeded,
                        uint64_t gen) {
    return (uint64_t)state | ((uint64_t)mode << 2) | ((uint64_t)admitted << 4) |
           ((uint64_t)succeeded << 18) | ((gen & FG_GEN_MASK) << 32);
}

/* Permit: [generation : 62][flags : 2]. */
#define FG_PERMIT_PROBE    UINT64_C(1) /* a half-open probe */
#define FG_PERMIT_NORECORD UINT64_C(2) /* admitted but not counted */
#define FG_PERMIT_GEN(p)   (((p) >> 2) & FG_GEN_MASK)

/* Outcome codes in the COUNT ring: 0 is an empty slot. */
#define FG_CODE_CALL 4u
#define FG_CODE_SLOW 2u
#define FG_CODE_FAIL 1u

/* TIME bucket word fields. */
#define FG_B_CALLS(w) ((w)&0xffffu)
#define FG_B_FAILS(w) (((w) >> 16) & 0xffffu)
#define FG_B_SLOW(w)  (((w) >> 32) & 0xffffu)
#define FG_B_TAG(w)   ((w) >> 48)

#define FG_PPM 1000000u

struct fg_breaker {
    uint64_t word; /* read by every request */
    char pad_word[64 - sizeof(uint64_t)];

    /* Window: written by every recorded outcome. */
    uint64_t consecutive;
    uint64_t calls, fails, slow; /* COUNT totals (two's complement deltas) */
    uint32_t head;               /* COUNT: next ring position (mod 2^32) */
    uint64_t cur_idx;            /* TIME: a recent bucket index (a hint) */
    uint64_t last_rotation;      /* TIME: index of the latest bucket reset */
    char pad_window[64];

    /* Written under `lock` before the word that makes them current. */
    uint64_t open_until;
    uint64_t half_open_since;
    uint64_t open_now_ns; /* the open time of the current open period */
    uint64_t reopens;     /* consecutive reopens since the last close */
    uint64_t generation;  /* full transition count */

    /* Counters of rare events. */
    uint64_t rejected, shadow_rejected, discarded, opened, half_opened, closed;

    /* Settings, fixed at creation. */
    fg_breaker_window_kind window;
    uint32_t ring_size;
    uint64_t ring_magic; /* for the fast modulo by ring_size */
    uint8_t *ring;
    uint32_t nbuckets;
    uint64_t bucket_ns;
    uint64_t *buckets;
    uint64_t fail_ppm, slow_ppm; /* > FG_PPM: never */
    uint64_t slow_call_ns;
    uint64_t min_requests;
    uint64_t consecutive_limit;
    uint64_t open_for_ns, max_open_ns;
    double backoff;
    uint32_t probes;
    uint64_t half_open_timeout_ns;
    fg_clock clock;
    fg_breaker_listener listener;
    void *listener_arg;
    pthread_mutex_t lock;
};

/* ---- options ---------------------------------------------------------------- */

static int fg_ratio_ppm(double ratio, double deflt, uint64_t *ppm) {
    if (ratio != ratio || ratio < 0) /* NaN or negative */
        return FG_EINVAL;
    if (ratio == 0)
        ratio = deflt;
    *ppm = ratio > 1 ? FG_PPM + 1 : (uint64_t)(ratio * FG_PPM + 0.5);
    return 0;
}

static uint64_t fg_default_u64(uint64_t v, uint64_t d) { return v ? v : d; }

static int fg_breaker_configure(fg_breaker *b, const fg_breaker_options *o) {
    int rc = fg_ratio_ppm(o->failure_ratio, 0.5, &b->fail_ppm);
    if (rc == 0)
        rc = fg_ratio_ppm(o->slow_ratio, 1.0, &b->slow_ppm);
    if (rc != 0)
        return rc;
    if (o->open_backoff != o->open_backoff) /* NaN; a negative one is out of range */
        return FG_EINVAL;
    if (o->window != FG_BREAKER_WINDOW_COUNT && o->window != FG_BREAKER_WINDOW_TIME)
        return FG_EINVAL;
    b->window = o->window;
    b->slow_call_ns = fg_default_u64(o->slow_call_ns, 60 * FG_NS_PER_S);
    b->min_requests = fg_default_u64(o->min_requests, 100);
    b->consecutive_limit = o->consecutive_failures;
    b->open_for_ns = fg_default_u64(o->open_for_ns, 60 * FG_NS_PER_S);
    b->backoff = o->open_backoff == 0 ? 1.0 : o->open_backoff;
    b->max_open_ns = fg_default_u64(o->max_open_ns, 10 * b->open_for_ns);
    b->probes = o->half_open_probes ? o->half_open_probes : 10;
    b->half_open_timeout_ns = fg_default_u64(o->half_open_timeout_ns, b->open_for_ns);
    if (b->slow_call_ns >= FG_GCRA_TIME_MAX || b->open_for_ns >= FG_GCRA_TIME_MAX ||
        b->max_open_ns >= FG_GCRA_TIME_MAX || b->half_open_timeout_ns >= FG_GCRA_TIME_MAX ||
        b->max_open_ns < b->open_for_ns || b->backoff < 1 || b->backoff > 1000 ||
        b->probes > FG_BREAKER_MAX_PROBES)
        return FG_ERANGE;
    if (b->window == FG_BREAKER_WINDOW_COUNT) {
        uint32_t n = o->window_size ? o->window_size : 100;
        if (n > FG_BREAKER_MAX_WINDOW_SIZE || b->min_requests > n)
            return FG_ERANGE;
        b->ring_size = n;
        b->ring_magic = UINT64_MAX / n + 1;
    } else {
        uint32_t nb = o->window_buckets ? o->window_buckets : 10;
        uint64_t len = fg_default_u64(o->window_ns, 10 * FG_NS_PER_S);
        if (nb > FG_BREAKER_MAX_BUCKETS || len < nb || len >= FG_GCRA_TIME_MAX ||
            b->min_requests > (uint64_t)nb * 32767)
            return FG_ERANGE;
        b->nbuckets = nb;
        /* Rounded up: the window covers at least window_ns. */
        b->bucket_ns = len / nb + (len % nb != 0);
    }
    b->clock = o->clock.now ? o->clock : fg_clock_monotonic();
    b->listener = o->listener;
    b->listener_arg = o->listener_arg;
    return 0;
}

int fg_breaker_new(const fg_breaker_options *opts, fg_breaker **out) {
    if (opts == NULL || out == NULL)
        return FG_EINVAL;
    fg_breaker *b = fg__aligned_calloc(sizeof(*b), 64);
    if (b == NULL)
        return FG_ENOMEM;
    int rc = fg_breaker_configure(b, opts);
    if (rc != 0) {
        fg__aligned_free(b);
        return rc;
    }
    if (b->window == FG_BREAKER_WINDOW_COUNT)
        b->ring = fg__aligned_calloc(b->ring_size, 64);
    else
        b->buckets = fg__aligned_calloc((size_t)b->nbuckets * sizeof(uint64_t), 64);
    if ((b->ring == NULL && b->buckets == NULL) || pthread_mutex_init(&b->lock, NULL) != 0) {
        fg__aligned_free(b->ring);
        fg__aligned_free(b->buckets);
        fg__aligned_free(b);
        return FG_ENOMEM;
    }
    b->open_now_ns = b->open_for_ns;
    *out = b;
    return 0;
}

void fg_breaker_free(fg_breaker *b) {
    if (b == NULL)
        return;
    pthread_mutex_destroy(&b->lock);
    fg__aligned_free(b->ring);
    fg__aligned_free(b->buckets);
    fg__aligned_free(b);
}

/* ---- windows ------------------------------------------------------------------ */

/* pos mod ring_size without a division (Lemire's fastmod for 32-bit pos). */
static uint32_t fg_ring_pos(const fg_breaker *b, uint32_t pos) {
    uint64_t low = b->ring_magic * pos;
    return (uint32_t)(((fg_u128)low * b->ring_size) >> 64);
}

/* Count one call; returns its position (calls recorded before it). */
static uint32_t fg_count_record(fg_breaker *b, unsigned code) {
    uint32_t pos = fg__faa_u32(&b->head, 1);
    uint8_t *slot = &b->ring[fg_ring_pos(b, pos)];
    /* The slot already holds this code (steady traffic of one kind): writing
     * it again would change neither the ring nor the totals, so skip the
     * second atomic. Only this call owns the slot until N calls later. */
    if (fg__load_u8(slot) == code)
        return pos;
    unsigned old = fg__xchg_u8(slot, (uint8_t)code);
    /* Apply the difference between the new code and the one it replaced:
     * steady traffic of one kind changes no total at all. */
    if (old == 0)
        fg__faa_u64(&b->calls, 1);
    int dfail = (int)(code & FG_CODE_FAIL) - (int)(old & FG_CODE_FAIL);
    int dslow = (int)((code & FG_CODE_SLOW) >> 1) - (int)((old & FG_CODE_SLOW) >> 1);
    if (dfail)
        fg__faa_u64(&b->fails, (uint64_t)(int64_t)dfail);
    if (dslow)
        fg__faa_u64(&b->slow, (uint64_t)(int64_t)dslow);
    return pos;
}

/* The bucket index of time t, reusing a recent division when t falls in the
 * same bucket (the common case: one multiply instead of a divide). */
static uint64_t fg_bucket_index(fg_breaker *b, uint64_t t) {
    uint64_t hint = fg__load_u64(&b->cur_idx);
    uint64_t start = hint * b->bucket_ns;
    if (t >= start && t - start < b->bucket_ns)
        return hint;
    uint64_t idx = t / b->bucket_ns;
    /* A reading behind the latest bucket (another thread's older clock
     * read, or a clock that stepped back) counts as no time elapsed: it is
     * counted in the latest bucket, never in one the window has left. */
    if (idx <= hint)
        return hint;
    fg__store_u64(&b->cur_idx, idx);
    return idx;
}

/* Whether a bucket tagged `tag` belongs to the window ending at bucket idx. */
static int fg_tag_live(const fg_breaker *b, uint64_t tag, uint64_t idx) {
    return (uint64_t)((uint16_t)((uint16_t)idx - (uint16_t)tag)) < b->nbuckets;
}

/* Reset every bucket that is not in the window ending at idx, so that a
 * stale word can never be mistaken for a live one when its 16-bit tag comes
 * around again. Runs when a bucket is reset, i.e. once per bucket period. */
/* Whether nothing was recorded for so long before bucket idx that 16-bit
 * tags may have wrapped (an older idx, from a thread whose reading lags,
 * is never "long idle"). */
static int fg_long_idle(const fg_breaker *b, uint64_t idx) {
    uint64_t last = fg__load_u64(&b->last_rotation);
    return idx > last && idx - last >= UINT64_C(65536) - b->nbuckets;
}

static void fg_time_sweep(fg_breaker *b, uint64_t idx) {
    uint64_t last = fg__load_u64(&b->last_rotation);
    int all = fg_long_idle(b, idx);
    for (uint32_t j = 0; j < b->nbuckets; j++) {
        uint64_t w = fg__load_u64(&b->buckets[j]);
        if (w != 0 && (all || !fg_tag_live(b, FG_B_TAG(w), idx)) && (idx % b->nbuckets) != j)
            fg__cas_u64(&b->buckets[j], w, 0);
    }
    if (idx > last)
        fg__store_u64(&b->last_rotation, idx);
}

/* Count one call at time t; returns t's bucket index. */
static uint64_t fg_time_record(fg_breaker *b, uint64_t t, unsigned code) {
    uint64_t idx = fg_bucket_index(b, t);
    uint64_t tag = idx & 0xffffu;
    uint64_t *slot = &b->buckets[idx % b->nbuckets];
    uint64_t inc = 1 | ((uint64_t)(code & FG_CODE_FAIL) << 16) |
                   ((uint64_t)((code & FG_CODE_SLOW) >> 1) << 32);
    /* Idle so long that tags may have wrapped: every bucket, this one too,
     * is stale whatever its tag says. */
    int idle = fg_long_idle(b, idx);
    if (idle)
        fg_time_sweep(b, idx);
    for (;;) {
        uint64_t w = fg__load_u64(slot);
        uint64_t nw;
        int rotated = 0;
        if (idle || FG_B_TAG(w) != tag || w == 0) {
            nw = (tag << 48) | inc; /* a stale bucket: this call starts it afresh */
            rotated = 1;
        } else if (FG_B_CALLS(w) == 0xffffu) {
            /* Full: halve the counts, keeping the ratios, then count. */
            nw = ((tag << 48) | (FG_B_CALLS(w) >> 1) | ((FG_B_FAILS(w) >> 1) << 16) |
                  ((FG_B_SLOW(w) >> 1) << 32)) +
                 inc;
        } else {
            nw = w + inc;
        }
        if (fg__cas_u64(slot, w, nw)) {
            if (rotated)
                fg_time_sweep(b, idx);
            return idx;
        }
        idle = 0; /* someone wrote the bucket meanwhile: it is current now */
    }
}

struct fg_totals {
    uint64_t calls, fails, slow;
};

/* Totals of the window ending at time t; for a TIME window, idx is t's
 * bucket index when the caller has it (else UINT64_MAX). */
static void fg_window_totals(const fg_breaker *b, uint64_t t, uint64_t idx,
                             struct fg_totals *tot) {
    if (b->window == FG_BREAKER_WINDOW_COUNT) {
        /* Transient deltas may be applied out of order; clamp at zero. */
        int64_t c = (int64_t)fg__load_u64(&b->calls);
        int64_t f = (int64_t)fg__load_u64(&b->fails);
        int64_t s = (int64_t)fg__load_u64(&b->slow);
        tot->calls = c > 0 ? (uint64_t)c : 0;
        tot->fails = f > 0 ? (uint64_t)f : 0;
        tot->slow = s > 0 ? (uint64_t)s : 0;
        return;
    }
    if (idx == UINT64_MAX)
        idx = t / b->bucket_ns;
    memset(tot, 0, sizeof(*tot));
    if (fg_long_idle(b, idx))
        return; /* nothing recorded for ages: every bucket is stale */
    for (uint32_t j = 0; j < b->nbuckets; j++) {
        uint64_t w = fg__load_u64(&b->buckets[j]);
        if (w == 0 || !fg_tag_live(b, FG_B_TAG(w), idx))
            continue;
        tot->calls += FG_B_CALLS(w);
        tot->fails += FG_B_FAILS(w);
        tot->slow += FG_B_SLOW(w);
    }
}

/* Empty the window. Only under `lock`, while no current permit records. */
static void fg_window_clear(fg_breaker *b) {
    if (b->window == FG_BREAKER_WINDOW_COUNT) {
        for (uint32_t i = 0; i < b->ring_size; i++)
            fg__xchg_u8(&b->ring[i], 0);
        fg__store_u64(&b->calls, 0);
        fg__store_u64(&b->fails, 0);
        fg__store_u64(&b->slow, 0);
        fg__store_u32(&b->head, 0); /* positions count calls since the clear */
    } else {
        for (uint32_t j = 0; j < b->nbuckets; j++)
            fg__store_u64(&b->buckets[j], 0);
    }
    fg__store_u64(&b->consecutive, 0);
}

/* ---- transitions ---------------------------------------------------------------- */

/* How long the next open period lasts: open_for * backoff^reopens, capped. */
static uint64_t fg_open_time(const fg_breaker *b, uint64_t reopens) {
    double d = (double)b->open_for_ns;
    for (uint64_t i = 0; i < reopens && d < (double)b->max_open_ns; i++)
        d *= b->backoff;
    return d >= (double)b->max_open_ns ? b->max_open_ns : (uint64_t)d;
}

/*
 * Move from the word `seen` to state `to` (keeping the mode, or setting
 * `mode` when >= 0), if the word still has seen's state and generation.
 * `probe` admits the caller as the first half-open probe. Called with
 * `lock` held; fills *ev and returns 1 when it moved.
 */
static int fg_move_locked(fg_breaker *b, uint64_t seen, unsigned to, int mode,
                          fg_breaker_reason reason, uint64_t now, int probe,
                          fg_breaker_event *ev) {
    uint64_t w = fg__load_u64(&b->word);
    if (FG_W_GEN(w) != FG_W_GEN(seen) || FG_W_STATE(w) != FG_W_STATE(seen))
        return 0; /* someone else moved it first */
    unsigned from = FG_W_STATE(w);
    unsigned new_mode = mode >= 0 ? (unsigned)mode : FG_W_MODE(w);
    uint64_t gen = fg__load_u64(&b->generation) + 1;
    memset(ev, 0, sizeof(*ev));
    if (to == FG_BREAKER_OPEN && from == FG_BREAKER_OPEN) {
        ev->open_for_ns = fg__load_u64(&b->open_now_ns); /* a mode change: same period */
    } else if (to == FG_BREAKER_OPEN) {
        uint64_t reopens = from == FG_BREAKER_HALF_OPEN ? b->reopens + 1 : 0;
        uint64_t d = fg_open_time(b, reopens);
        b->reopens = reopens;
        fg__store_u64(&b->open_now_ns, d);
        fg__store_u64(&b->open_until, now + d);
        ev->open_for_ns = d;
    } else if (to == FG_BREAKER_HALF_OPEN) {
        fg__store_u64(&b->half_open_since, now);
    } else if (from != FG_BREAKER_CLOSED || reason == FG_BREAKER_REASON_RESET) {
        fg_window_clear(b); /* closing: a fresh window */
        b->reopens = 0;
    }
    uint64_t nw = fg_word(to, new_mode, probe ? 1 : 0, 0, gen);
    /* The full count first: a request that sees the new word sees it too
     * (a request that sees the count before the word merely discards). */
    fg__store_u64(&b->generation, gen);
    /* Only probe slots change the word without the lock; retry past them.
     * The CAS is a release: the fields above are visible with the word. */
    while (!fg__cas_u64(&b->word, w, nw))
        w = fg__load_u64(&b->word);
    if (to == FG_BREAKER_OPEN && from != FG_BREAKER_OPEN)
        fg__faa_u64(&b->opened, 1);
    else if (to == FG_BREAKER_HALF_OPEN && from != FG_BREAKER_HALF_OPEN)
        fg__faa_u64(&b->half_opened, 1);
    else if (to == FG_BREAKER_CLOSED && from != FG_BREAKER_CLOSED)
        fg__faa_u64(&b->closed, 1);
    ev->from = (fg_breaker_state_kind)from;
    ev->to = (fg_breaker_state_kind)to;
    ev->mode = (fg_breaker_mode)new_mode;
    ev->reason = reason;
    ev->at_ns = now;
    ev->generation = gen;
    return 1;
}

static void fg_notify(fg_breaker *b, const fg_breaker_event *ev) {
    if (b->listener)
        b->listener(b, ev, b->listener_arg);
}

/* A transition a request found necessary. With `wait`, it takes the lock;
 * otherwise it tries, and leaves the move to a later request when the lock
 * is busy. Returns 1 when this call made the move. */
static int fg_move(fg_breaker *b, uint64_t seen, unsigned to, fg_breaker_reason reason,
                   uint64_t now, int probe, int wait, uint64_t *generation) {
    if ((wait ? pthread_mutex_lock(&b->lock) : pthread_mutex_trylock(&b->lock)) != 0)
        return 0;
    fg_breaker_event ev;
    int moved = fg_move_locked(b, seen, to, -1, reason, now, probe, &ev);
    pthread_mutex_unlock(&b->lock);
    if (moved) {
        if (generation)
            *generation = ev.generation;
        fg_notify(b, &ev);
    }
    return moved;
}

/* ---- requests ------------------------------------------------------------------- */

/* A permit for the word w: its 32-bit generation (a permit would have to
 * be held across 2^32 state changes to be mistaken for a current one). */
static uint64_t fg_permit(uint64_t w, uint64_t flags) { return (FG_W_GEN(w) << 2) | flags; }

/* A request the state machine rejects: count it, or in shadow mode admit it
 * unrecorded. */
static int fg_reject(fg_breaker *b, uint64_t w, uint64_t retry, uint64_t *permit,
                     uint64_t *retry_after_ns) {
    if (FG_W_MODE(w) == FG_BREAKER_DISABLED) {
        fg__faa_u64(&b->shadow_rejected, 1);
        *permit = fg_permit(w, FG_PERMIT_NORECORD);
        return 0;
    }
    fg__faa_u64(&b->rejected, 1);
    if (retry_after_ns)
        *retry_after_ns = retry;
    return FG_EBREAKER;
}

int fg_breaker_enter(fg_breaker *b, uint64_t now_ns, uint64_t *permit,
                     uint64_t *retry_after_ns) {
    if (retry_after_ns)
        *retry_after_ns = 0;
    if (b == NULL || permit == NULL)
        return FG_EINVAL;
    uint64_t now = fg__time_clamp(now_ns);
    for (;;) {
        uint64_t w = fg__load_u64(&b->word); /* acquire: the state's fields */
        unsigned mode = FG_W_MODE(w);
        if (mode == FG_BREAKER_FORCED_OPEN) {
            fg__faa_u64(&b->rejected, 1);
            return FG_EBREAKER;
        }
        if (mode == FG_BREAKER_FORCED_CLOSED) {
            *permit = fg_permit(w, FG_PERMIT_NORECORD);
            return 0;
        }
        switch (FG_W_STATE(w)) {
        case FG_BREAKER_CLOSED:
            *permit = fg_permit(w, 0);
            return 0;
        case FG_BREAKER_OPEN: {
            uint64_t until = fg__load_u64(&b->open_until);
            if (now < until)
                return fg_reject(b, w, until - now, permit, retry_after_ns);
            /* Open time over: this request becomes the first probe. Wait for
             * the lock, so that racing requests count probes on the new word
             * rather than being turned away. */
            uint64_t gen;
            if (fg_move(b, w, FG_BREAKER_HALF_OPEN, FG_BREAKER_REASON_OPEN_ELAPSED, now, 1, 1,
                        &gen)) {
                /* The first probe, of the generation just created (if the
                 * word has moved on again since, the permit is simply stale). */
                *permit = ((gen & FG_GEN_MASK) << 2) | FG_PERMIT_PROBE;
                return 0;
            }
            continue; /* someone else moved it: decide on the new word */
        }
        case FG_BREAKER_HALF_OPEN: {
            uint64_t since = fg__load_u64(&b->half_open_since);
            if (now >= since && now - since >= b->half_open_timeout_ns &&
                FG_W_SUCCEEDED(w) < b->probes) {
                /* Probes lost or too slow: they count as failed. Then decide
                 * again: open now, so rejected with its open time. */
                fg_move(b, w, FG_BREAKER_OPEN, FG_BREAKER_REASON_PROBE_TIMEOUT, now, 0, 1,
                        NULL);
                continue;
            }
            if (FG_W_ADMITTED(w) >= b->probes)
                return fg_reject(b, w, 0, permit, retry_after_ns);
            if (!fg__cas_u64(&b->word, w, w + FG_W_ONE_ADMITTED))
                continue;
            *permit = fg_permit(w, FG_PERMIT_PROBE);
            return 0;
        }
        default:
            return FG_EINVAL; /* unreachable: the word holds one of three states */
        }
    }
}

/* A probe's outcome, on a word of the probe's own generation. */
static void fg_probe_outcome(fg_breaker *b, uint64_t w, fg_breaker_result result,
                             uint64_t now) {
    uint64_t since = fg__load_u64(&b->half_open_since);
    if (now >= since && now - since >= b->half_open_timeout_ns) {
        /* Too late: the half-open period timed out before this report (no
         * request has noticed yet). It counts as the timeout, a failure. */
        fg_move(b, w, FG_BREAKER_OPEN, FG_BREAKER_REASON_PROBE_TIMEOUT, now, 0, 1, NULL);
        return;
    }
    for (;;) {
        if (result == FG_BREAKER_FAILURE) {
            fg_move(b, w, FG_BREAKER_OPEN, FG_BREAKER_REASON_PROBE_FAILED, now, 0, 1, NULL);
            return;
        }
        uint64_t nw =
            result == FG_BREAKER_IGNORE ? w - FG_W_ONE_ADMITTED : w + FG_W_ONE_SUCCEEDED;
        if (fg__cas_u64(&b->word, w, nw)) {
            if (result == FG_BREAKER_SUCCESS && FG_W_SUCCEEDED(nw) >= b->probes)
                fg_move(b, nw, FG_BREAKER_CLOSED, FG_BREAKER_REASON_PROBES_OK, now, 0, 1,
                        NULL);
            return;
        }
        w = fg__load_u64(&b->word);
        if (FG_W_STATE(w) != FG_BREAKER_HALF_OPEN)
            return; /* moved on while we tried */
    }
}

int fg_breaker_exit(fg_breaker *b, uint64_t permit, uint64_t now_ns, fg_breaker_result result,
                    uint64_t latency_ns) {
    if (b == NULL || (result != FG_BREAKER_SUCCESS && result != FG_BREAKER_FAILURE &&
                      result != FG_BREAKER_IGNORE))
        return FG_EINVAL;
    if (permit & FG_PERMIT_NORECORD)
        return 1;
    uint64_t now = fg__time_clamp(now_ns);
    uint64_t w = fg__load_u64(&b->word);
    if (FG_W_GEN(w) != FG_PERMIT_GEN(permit) || FG_W_MODE(w) == FG_BREAKER_FORCED_OPEN ||
        FG_W_MODE(w) == FG_BREAKER_FORCED_CLOSED) {
        fg__faa_u64(&b->discarded, 1);
        return 1;
    }
    if (permit & FG_PERMIT_PROBE) {
        fg_probe_outcome(b, w, result, now);
        return 0;
    }
    if (result == FG_BREAKER_IGNORE)
        return 0;
    unsigned code = FG_CODE_CALL | (result == FG_BREAKER_FAILURE ? FG_CODE_FAIL : 0) |
                    (latency_ns >= b->slow_call_ns ? FG_CODE_SLOW : 0);
    uint64_t idx = UINT64_MAX;
    uint64_t run = 0;
    if (result == FG_BREAKER_FAILURE) {
        run = fg__faa_u64(&b->consecutive, 1) + 1;
    } else if (fg__load_u64(&b->consecutive) != 0) {
        fg__store_u64(&b->consecutive, 0);
    }
    if (b->window == FG_BREAKER_WINDOW_COUNT) {
        uint32_t pos = fg_count_record(b, code);
        /* A plain success lowers both ratios; it can only trip the breaker
         * by bringing the window up to min_requests calls. Once at least
         * that many were recorded before it (the window never shrinks),
         * there is nothing to check: the common case costs one atomic. */
        if (code == FG_CODE_CALL && pos >= b->min_requests)
            return 0;
    } else {
        idx = fg_time_record(b, now, code);
    }
    /* Trip conditions, on the window as it stands after this call. */
    fg_breaker_reason reason;
    struct fg_totals tot;
    fg_window_totals(b, now, idx, &tot);
    if (b->consecutive_limit && run >= b->consecutive_limit)
        reason = FG_BREAKER_REASON_CONSECUTIVE;
    else if (tot.calls >= b->min_requests && b->fail_ppm <= FG_PPM &&
             tot.fails * FG_PPM >= b->fail_ppm * tot.calls)
        reason = FG_BREAKER_REASON_FAILURE_RATIO;
    else if (tot.calls >= b->min_requests && b->slow_ppm <= FG_PPM &&
             tot.slow * FG_PPM >= b->slow_ppm * tot.calls)
        reason = FG_BREAKER_REASON_SLOW_RATIO;
    else
        return 0;
    /* Another thread tripping at the same moment holds the lock: it opens
     * the breaker; if it was busy with something else, the next outcome
     * finds the condition again. */
    fg_move(b, w, FG_BREAKER_OPEN, reason, now, 0, 0, NULL);
    return 0;
}

/* ---- observation and control ------------------------------------------------------ */

fg_breaker_state_kind fg_breaker_state(const fg_breaker *b) {
    if (b == NULL)
        return FG_BREAKER_CLOSED;
    return (fg_breaker_state_kind)FG_W_STATE(fg__load_u64(&b->word));
}

int fg_breaker_snapshot(const fg_breaker *b, uint64_t now_ns, fg_breaker_stats *st) {
    if (b == NULL || st == NULL)
        return FG_EINVAL;
    memset(st, 0, sizeof(*st));
    uint64_t w = fg__load_u64(&b->word);
    st->state = (fg_breaker_state_kind)FG_W_STATE(w);
    st->mode = (fg_breaker_mode)FG_W_MODE(w);
    st->generation = fg__load_u64(&b->generation);
    struct fg_totals tot;
    fg_window_totals(b, fg__time_clamp(now_ns), UINT64_MAX, &tot);
    st->window_calls = tot.calls;
    st->window_failures = tot.fails;
    st->window_slow = tot.slow;
    st->consecutive_failures = fg__load_u64(&b->consecutive);
    if (st->state == FG_BREAKER_OPEN)
        st->open_until_ns = fg__load_u64(&b->open_until);
    if (st->state == FG_BREAKER_HALF_OPEN) {
        st->probes_admitted = FG_W_ADMITTED(w);
        st->probes_succeeded = FG_W_SUCCEEDED(w);
    }
    st->rejected = fg__load_u64(&b->rejected);
    st->shadow_rejected = fg__load_u64(&b->shadow_rejected);
    st->discarded = fg__load_u64(&b->discarded);
    st->opened = fg__load_u64(&b->opened);
    st->half_opened = fg__load_u64(&b->half_opened);
    st->closed = fg__load_u64(&b->closed);
    return 0;
}

int fg_breaker_set_mode(fg_breaker *b, fg_breaker_mode mode) {
    if (b == NULL || (mode != FG_BREAKER_AUTO && mode != FG_BREAKER_FORCED_OPEN &&
                      mode != FG_BREAKER_FORCED_CLOSED && mode != FG_BREAKER_DISABLED))
        return FG_EINVAL;
    if (pthread_mutex_lock(&b->lock) != 0)
        return FG_ESYS;
    uint64_t now = fg_clock_read(&b->clock);
    now = fg__time_clamp(now);
    uint64_t w = fg__load_u64(&b->word);
    unsigned state = FG_W_STATE(w);
    fg_breaker_event ev;
    /* The state is kept; a new generation makes earlier permits stale, and a
     * resumed half-open period starts over with fresh probe slots. */
    fg_move_locked(b, w, state, (int)mode, FG_BREAKER_REASON_MANUAL, now, 0, &ev);
    pthread_mutex_unlock(&b->lock);
    fg_notify(b, &ev);
    return 0;
}

int fg_breaker_reset(fg_breaker *b) {
    if (b == NULL)
        return FG_EINVAL;
    if (pthread_mutex_lock(&b->lock) != 0)
        return FG_ESYS;
    uint64_t now = fg_clock_read(&b->clock);
    now = fg__time_clamp(now);
    uint64_t w = fg__load_u64(&b->word);
    fg_breaker_event ev;
    fg_move_locked(b, w, FG_BREAKER_CLOSED, FG_BREAKER_AUTO, FG_BREAKER_REASON_RESET, now, 0,
                   &ev);
    b->reopens = 0;
    fg__store_u64(&b->open_now_ns, b->open_for_ns);
    pthread_mutex_unlock(&b->lock);
    fg_notify(b, &ev);
    return 0;
}

/* Whether two breakers' windows map outcomes to the same slots. */
static int fg_same_window(const fg_breaker *a, const fg_breaker *b) {
    if (a->window != b->window)
        return 0;
    if (a->window == FG_BREAKER_WINDOW_COUNT)
        return a->ring_size == b->ring_size;
    return a->nbuckets == b->nbuckets && a->bucket_ns == b->bucket_ns;
}

static void fg_copy_u64(uint64_t *to, const uint64_t *from) {
    fg__store_u64(to, fg__load_u64(from));
}

int fg_breaker_carry(fg_breaker *to, fg_breaker *from, uint64_t now_ns) {
    if (to == NULL || from == NULL || to == from)
        return FG_EINVAL;
    uint64_t now = fg__time_clamp(now_ns);
    /* The lock holds transitions still: the word and the fields that
     * describe its state are read as one. Outcomes may still be recorded
     * meanwhile; the window is copied slot by slot as it stands. */
    if (pthread_mutex_lock(&from->lock) != 0)
        return FG_ESYS;
    uint64_t w = fg__load_u64(&from->word);
    unsigned state = FG_W_STATE(w);
    uint64_t gen = fg__load_u64(&from->generation);
    if (state == FG_BREAKER_OPEN) {
        fg_copy_u64(&to->open_until, &from->open_until);
        fg_copy_u64(&to->open_now_ns, &from->open_now_ns);
    } else if (state == FG_BREAKER_HALF_OPEN) {
        fg__store_u64(&to->half_open_since, now);
    }
    to->reopens = from->reopens;
    fg_copy_u64(&to->consecutive, &from->consecutive);
    if (fg_same_window(to, from)) {
        if (to->window == FG_BREAKER_WINDOW_COUNT) {
            for (uint32_t i = 0; i < to->ring_size; i++)
                (void)fg__xchg_u8(&to->ring[i], fg__load_u8(&from->ring[i]));
            fg_copy_u64(&to->calls, &from->calls);
            fg_copy_u64(&to->fails, &from->fails);
            fg_copy_u64(&to->slow, &from->slow);
            fg__store_u32(&to->head, fg__load_u32(&from->head));
        } else {
            for (uint32_t j = 0; j < to->nbuckets; j++)
                fg_copy_u64(&to->buckets[j], &from->buckets[j]);
            fg_copy_u64(&to->cur_idx, &from->cur_idx);
            fg_copy_u64(&to->last_rotation, &from->last_rotation);
        }
    }
    pthread_mutex_unlock(&from->lock);
    uint64_t *const counters[][2] = {
        {&to->rejected, &from->rejected},       {&to->shadow_rejected, &from->shadow_rejected},
        {&to->discarded, &from->discarded},     {&to->opened, &from->opened},
        {&to->half_opened, &from->half_opened}, {&to->closed, &from->closed}};
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
        fg_copy_u64(counters[i][0], counters[i][1]);
    /* Published last, with fresh probe slots: the release orders the fields
     * above before it for whoever later reads `to`'s word. */
    fg__store_u64(&to->generation, gen);
    fg__store_u64(&to->word, fg_word(state, FG_W_MODE(w), 0, 0, gen));
    return 0;
}

/* Names, indexed by the enums' values (which are 0, 1, 2, ...). */
static const char *const fg_state_names[] = {"closed", "open", "half_open"};
static const char *const fg_reason_names[] = {
    "failure_ratio", "slow_ratio", "consecutive_failures",
    "open_elapsed",  "probes_ok",  "probe_failed",
    "probe_timeout", "manual",     "reset"};
static const char *const fg_mode_names[] = {"auto", "forced_open", "forced_closed",
                                            "disabled"};

#define FG_NAME(table, v)                                                                     \
    ((unsigned)(v) < sizeof(table) / sizeof((table)[0]) ? (table)[(unsigned)(v)] : "unknown")

const char *fg_breaker_state_name(fg_breaker_state_kind state) {
    return FG_NAME(fg_state_names, state);
}

const char *fg_breaker_reason_name(fg_breaker_reason reason) {
    return FG_NAME(fg_reason_names, reason);
}

const char *fg_breaker_mode_name(fg_breaker_mode mode) { return FG_NAME(fg_mode_names, mode); }

/* ---- the stage ---------------------------------------------------------------------- */

struct fg_breaker_stage {
    fg_breaker *breaker;
    fg_breaker_classifier classify;
    void *arg;
};

static fg_breaker_result fg_default_classify(const fg_outcome *o) {
    switch (o->kind) {
    case FG_OUTCOME_OK:
        return FG_BREAKER_SUCCESS;
    case FG_OUTCOME_FAILED:
        /* A caller that hung up or gave up says nothing about the dependency. */
        return o->code == FG_ECANCELED ? FG_BREAKER_IGNORE : FG_BREAKER_FAILURE;
    default:
        return FG_BREAKER_IGNORE; /* a later stage said no: not the dependency */
    }
}

static int fg_breaker_stage_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    struct fg_breaker_stage *st = state;
    uint64_t retry;
    int rc = fg_breaker_enter(st->breaker, ctx->now_ns, slot, &retry);
    if (rc == FG_EBREAKER)
        ctx->retry_after_ns = retry;
    return rc;
}

static int fg_breaker_stage_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome,
                                 uint64_t slot) {
    struct fg_breaker_stage *st = state;
    fg_breaker_result r =
        st->classify ? st->classify(ctx, outcome, st->arg) : fg_default_classify(outcome);
    (void)fg_breaker_exit(st->breaker, slot, ctx->now_ns + outcome->latency_ns, r,
                          outcome->latency_ns);
    return 0;
}

static void fg_breaker_stage_destroy(void *state) { fg__free(state); }

static const fg_stage_ops fg_breaker_stage_ops = {
    "breaker", fg_breaker_stage_enter, fg_breaker_stage_exit, fg_breaker_stage_destroy};

int fg_stage_breaker(fg_breaker *breaker, fg_breaker_classifier classify, void *arg,
                     const char *name, fg_stage **out) {
    if (breaker == NULL || out == NULL)
        return FG_EINVAL;
    struct fg_breaker_stage *st = fg__malloc(sizeof(*st));
    if (st == NULL)
        return FG_ENOMEM;
    st->breaker = breaker;
    st->classify = classify;
    st->arg = arg;
    int rc = fg_stage_new(&fg_breaker_stage_ops, st, name ? name : "breaker", out);
    if (rc != 0)
        fg__free(st);
    return rc;
}
