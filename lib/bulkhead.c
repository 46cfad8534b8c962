/*
 * lib/bulkhead.c - the bulkhead: at most max_concurrent slots taken at
 * once, lock-free, with an optional bounded wait for a slot; and the chain
 * stage that takes a slot on enter and gives it back on exit.
 *
 * The slots are two counters that only grow: `taken` (slots ever taken)
 * and `given` (slots ever given back); taken - given is the number in
 * flight. An enter reads taken, then given, and moves taken from t to t + 1
 * with one CAS when t - given < max (fg_bulkhead_take says why that is
 * exact, stale reads included). An exit adds 1 to given. Two 64-bit
 * counters never wrap in practice, so there is no ABA: a CAS on taken
 * succeeds only if no other slot was taken since the read, and given can
 * only have grown since it was read, so after the CAS at most
 * (t + 1) - given <= max slots are taken. Compared with one in-flight word
 * (CAS up, fetch-and-add down), the split costs nothing extra and makes
 * taken itself the exact `admitted` counter, so the admitted path pays for
 * no counter of its own: one CAS to enter, one fetch-and-add to exit.
 *
 * Waiting is polling: try, sleep on the bulkhead's clock, try again, with
 * steps that double from FG_BULKHEAD_STEP_MIN to FG_BULKHEAD_STEP_MAX and
 * never run past the end of the wait. No futex, no lock, no list of
 * waiters, nothing for an exit to do: the cost of waiting falls on the
 * waiter alone, and a fake clock (whose sleep advances it) makes waits
 * exact and instant in tests. The price is that a slot freed mid-sleep is
 * seen only at the next try, and that waiters are not served in order.
 */
#include <stddef.h>
#include <string.h>

#include "floodgate/bulkhead.h"
#include "floodgate/deadline.h"
#include "floodgate/error.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"

#define FG_BULKHEAD_STEP_MIN (10 * FG_NS_PER_US)
#define FG_BULKHEAD_STEP_MAX FG_NS_PER_MS
#define FG_CACHE_LINE        64

struct fg_bulkhead {
    /* The slot words, on one cache line: every enter and exit touches it. */
    uint64_t taken;    /* slots ever taken: only grows (CAS); also `admitted` */
    uint64_t given;    /* slots ever given back: only grows (fetch-and-add) */
    uint32_t max;      /* max_concurrent; an atomic store changes it */
    uint32_t max_seen; /* only raised, by a CAS loop, rarely */
    char pad[FG_CACHE_LINE - 2 * sizeof(uint64_t) - 2 * sizeof(uint32_t)];
    /* Counters of the slower paths: rejections and waits. */
    uint64_t rejected;
    uint64_t waited;
    uint64_t wait_timeouts;
    uint64_t shadow_rejected;
    /* Settings a wait reads. */
    uint64_t max_wait_ns; /* atomic: fg_bulkhead_set_max_wait */
    fg_clock clock;       /* read-only after creation */
};

_Static_assert(offsetof(struct fg_bulkhead, rejected) == FG_CACHE_LINE,
               "the slot words fill the first cache line");

/* Raise max_seen to at least busy. The load alone is the common case (the
 * mark is already that high); the CAS loop only ever raises it, so
 * concurrent raisers leave the largest value. */
static void fg_bulkhead_mark(struct fg_bulkhead *b, uint32_t busy) {
    uint32_t seen = fg__load_u32(&b->max_seen);
    while (busy > seen && !fg__cas_u32(&b->max_seen, seen, busy))
        seen = fg__load_u32(&b->max_seen);
}

/*
 * Take a slot if one is free; count nothing but the mark. Returns 0 or
 * FG_EOVERLOADED.
 *
 * taken is read first, given second (a load-acquire keeps the second read
 * after the first). Between the two reads other threads may both take and
 * give back slots, so given may be ahead of the taken read: then t is
 * stale, and t - g means nothing (it would wrap to a huge count and reject
 * with free slots). A fresh read of taken tells the cases apart: when it
 * moved, read both again; when it did not, gives really do exceed takes,
 * which happens only while an over-release is being undone
 * (fg_bulkhead_exit), and rejecting then is safe.
 *
 * With g <= t: at the moment given is read, taken is at least t and given
 * is exactly g, so when t - g >= max at least max slots really were taken
 * at that moment and the rejection is correct. When t - g < max, the CAS
 * succeeds only while taken is still t, and given can only have grown
 * since it was read, so the slots taken after the CAS are at most
 * t + 1 - g <= max. A failed CAS, or a stale t, means another thread took
 * a slot in between, so each retry follows someone else's progress: the
 * loop is lock-free.
 */
static int fg_bulkhead_take(struct fg_bulkhead *b) {
    for (;;) {
        uint64_t t = fg__load_u64(&b->taken);
        uint64_t g = fg__load_u64(&b->given);
        if (g > t) {
            if (fg__load_u64(&b->taken) != t)
                continue;
            return FG_EOVERLOADED;
        }
        uint64_t busy = t - g;
        if (busy >= fg__load_u32(&b->max))
            return FG_EOVERLOADED;
        if (fg__cas_u64(&b->taken, t, t + 1)) {
            /* busy < max <= UINT32_MAX, so busy + 1 fits. */
            fg_bulkhead_mark(b, (uint32_t)(busy + 1));
            return 0;
        }
        fg__pause();
    }
}

/*
 * Take a slot, waiting up to bound ns (on the bulkhead's clock) when none
 * is free; count the rejection, the wait and its timeout. *waited is the
 * time waited. A request (ctx, NULL for none) canceled during the wait
 * stops waiting at the next try, with FG_ECANCELED and no slot. Elapsed time is the larger of
 * what the clock says and the sleeps asked for: a real sleep never returns early, so on a real
 * clock that is the clock; the larger one also ends the wait when a clock's sleep does not
 * move its reading (a custom `now` with the real sleep), instead of polling forever.
 */
static int fg_bulkhead_wait(struct fg_bulkhead *b, uint64_t bound, const fg_ctx *ctx,
                            uint64_t *waited) {
    *waited = 0;
    if (fg_bulkhead_take(b) == 0)
        return 0;
    if (bound == 0) {
        fg__faa_u64(&b->rejected, 1);
        return FG_EOVERLOADED;
    }
    fg__faa_u64(&b->waited, 1);
    uint64_t t0 = fg_clock_read(&b->clock), elapsed = 0, slept = 0;
    uint64_t step = FG_BULKHEAD_STEP_MIN;
    for (;;) {
        uint64_t left = bound - elapsed, nap = step < left ? step : left;
        fg_clock_sleep(&b->clock, nap);
        slept += nap;
        uint64_t now = fg_clock_read(&b->clock);
        elapsed = now > t0 ? now - t0 : 0;
        if (elapsed < slept)
            elapsed = slept;
        if (ctx != NULL && fg_ctx_canceled(ctx)) {
            *waited = elapsed;
            fg__faa_u64(&b->rejected, 1);
            return FG_ECANCELED;
        }
        /* One more try when the time is up: a slot freed exactly at the
         * end of the wait is still taken. */
        if (fg_bulkhead_take(b) == 0) {
            *waited = elapsed;
            return 0;
        }
        if (elapsed >= bound) {
            *waited = elapsed;
            fg__faa_u64(&b->rejected, 1);
            fg__faa_u64(&b->wait_timeouts, 1);
            return FG_EOVERLOADED;
        }
        if (step < FG_BULKHEAD_STEP_MAX)
            step = step * 2 < FG_BULKHEAD_STEP_MAX ? step * 2 : FG_BULKHEAD_STEP_MAX;
    }
}

int fg_bulkhead_new(const fg_bulkhead_options *opts, fg_bulkhead **out) {
    if (opts == NULL || out == NULL || opts->max_concurrent == 0)
        return FG_EINVAL;
    struct fg_bulkhead *b = fg__aligned_calloc(sizeof(*b), FG_CACHE_LINE);
    if (b == NULL)
        return FG_ENOMEM;
    b->max = opts->max_concurrent;
    b->max_wait_ns = opts->max_wait_ns;
    b->clock = opts->clock;
    *out = b;
    return 0;
}

void fg_bulkhead_free(fg_bulkhead *bulkhead) { fg__aligned_free(bulkhead); }

int fg_bulkhead_try_enter(fg_bulkhead *bulkhead) {
    if (bulkhead == NULL)
        return FG_EINVAL;
    if (fg_bulkhead_take(bulkhead) == 0)
        return 0;
    fg__faa_u64(&bulkhead->rejected, 1);
    return FG_EOVERLOADED;
}

int fg_bulkhead_enter_wait(fg_bulkhead *bulkhead, uint64_t max_wait_ns, uint64_t *waited_ns) {
    uint64_t waited = 0;
    if (bulkhead == NULL) {
        if (waited_ns != NULL)
            *waited_ns = 0;
        return FG_EINVAL;
    }
    uint64_t bound = fg__load_u64(&bulkhead->max_wait_ns);
    if (max_wait_ns < bound)
        bound = max_wait_ns;
    int rc = fg_bulkhead_wait(bulkhead, bound, NULL, &waited);
    if (waited_ns != NULL)
        *waited_ns = waited;
    return rc;
}

/*
 * Give a slot back: one fetch-and-add on given. The old value tells
 * whether there was a slot to give: if given had already caught up with
 * taken (read after the add, so any slot taken before it counts), this exit
 * has no enter to match; it is undone and refused. Between the add and the
 * undo given exceeds taken by one, which makes enters reject (see
 * fg_bulkhead_take), never over-admit.
 */
int fg_bulkhead_exit(fg_bulkhead *bulkhead) {
    if (bulkhead == NULL)
        return FG_EINVAL;
    uint64_t g = fg__faa_u64(&bulkhead->given, 1);
    if (g >= fg__load_u64(&bulkhead->taken)) {
        fg__faa_u64(&bulkhead->given, UINT64_MAX); /* minus one */
        return FG_ESTATE;
    }
    return 0;
}

/* given is read before taken: taken read later is at least the taken of
 * any slot given back by then, so the difference cannot go below zero
 * (except in the instant an over-release is undone: then 0). */
uint32_t fg_bulkhead_in_flight(const fg_bulkhead *bulkhead) {
    if (bulkhead == NULL)
        return 0;
    uint64_t g = fg__load_u64(&bulkhead->given);
    uint64_t t = fg__load_u64(&bulkhead->taken);
    if (t <= g)
        return 0;
    return t - g > UINT32_MAX ? UINT32_MAX : (uint32_t)(t - g);
}

int fg_bulkhead_set_max(fg_bulkhead *bulkhead, uint32_t max_concurrent) {
    if (bulkhead == NULL || max_concurrent == 0)
        return FG_EINVAL;
    /* Enters read max afresh on every try; one that read the old value
     * just before this store decides with it, which is the change taking
     * effect for decisions that start after this returns. */
    fg__store_u32(&bulkhead->max, max_concurrent);
    return 0;
}

int fg_bulkhead_set_max_wait(fg_bulkhead *bulkhead, uint64_t max_wait_ns) {
    if (bulkhead == NULL)
        return FG_EINVAL;
    fg__store_u64(&bulkhead->max_wait_ns, max_wait_ns);
    return 0;
}

int fg_bulkhead_get(const fg_bulkhead *bulkhead, fg_bulkhead_options *opts) {
    if (bulkhead == NULL || opts == NULL)
        return FG_EINVAL;
    opts->max_concurrent = fg__load_u32(&bulkhead->max);
    opts->max_wait_ns = fg__load_u64(&bulkhead->max_wait_ns);
    opts->clock = bulkhead->clock;
    return 0;
}

int fg_bulkhead_stats_get(const fg_bulkhead *bulkhead, fg_bulkhead_stats *out) {
    if (bulkhead == NULL || out == NULL)
        return FG_EINVAL;
    out->admitted = fg__load_u64(&bulkhead->taken);
    out->rejected = fg__load_u64(&bulkhead->rejected);
    out->waited = fg__load_u64(&bulkhead->waited);
    out->wait_timeouts = fg__load_u64(&bulkhead->wait_timeouts);
    out->shadow_rejected = fg__load_u64(&bulkhead->shadow_rejected);
    out->in_flight = fg_bulkhead_in_flight(bulkhead);
    out->max_in_flight = fg__load_u32(&bulkhead->max_seen);
    return 0;
}

/* ---- the stage ------------------------------------------------------------ */

struct fg_bulkhead_stage {
    fg_bulkhead *bulkhead; /* borrowed */
    int shadow;
};

/* The slot word: whether this request holds a slot to give back. */
enum { FG_BULKHEAD_NO_SLOT = 0, FG_BULKHEAD_SLOT = 1 };

/* How long a request may wait: only inside fg_chain_call (the chain marks
 * such a ctx RUNNING; a split enter marks it ADMITTED), up to the option
 * and never past the deadline. */
static uint64_t fg_bulkhead_bound(const struct fg_bulkhead *b, const fg_ctx *ctx) {
    if (ctx->priv.state != FG_CTX_RUNNING)
        return 0;
    uint64_t bound = fg__load_u64(&b->max_wait_ns);
    if (bound != 0 && ctx->deadline_ns != 0) {
        uint64_t left = ctx->deadline_ns > ctx->now_ns ? ctx->deadline_ns - ctx->now_ns : 0;
        bound = left < bound ? left : bound;
    }
    return bound;
}

static int fg_bulkhead_stage_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    struct fg_bulkhead_stage *st = state;
    struct fg_bulkhead *b = st->bulkhead;
    if (st->shadow) {
        if (fg_bulkhead_take(b) == 0) {
            *slot = FG_BULKHEAD_SLOT;
        } else {
            fg__faa_u64(&b->shadow_rejected, 1);
        }
        return 0;
    }
    uint64_t waited;
    int rc = fg_bulkhead_wait(b, fg_bulkhead_bound(b, ctx), ctx, &waited);
    if (rc != 0) {
        ctx->retry_after_ns = 0; /* unknown: nobody can say when a slot frees */
        return rc;
    }
    *slot = FG_BULKHEAD_SLOT;
    if (waited != 0) {
        /* The request goes on at the time it got its slot; a delay an
         * earlier stage asked for counts from now_ns, so it shrinks. */
        ctx->now_ns += waited;
        ctx->delay_ns = ctx->delay_ns > waited ? ctx->delay_ns - waited : 0;
    }
    return 0;
}

static int fg_bulkhead_stage_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome,
                                  uint64_t slot) {
    (void)ctx;
    (void)outcome;
    const struct fg_bulkhead_stage *st = state;
    if (slot == FG_BULKHEAD_SLOT)
        (void)fg_bulkhead_exit(st->bulkhead);
    return 0;
}

static void fg_bulkhead_stage_destroy(void *state) { fg__free(state); }

static const fg_stage_ops fg_bulkhead_ops = {
    "bulkhead", fg_bulkhead_stage_enter, fg_bulkhead_stage_exit, fg_bulkhead_stage_destroy};

int fg_stage_bulkhead(fg_bulkhead *bulkhead, const fg_bulkhead_stage_options *opts,
                      const char *name, fg_stage **out) {
    if (bulkhead == NULL || out == NULL)
        return FG_EINVAL;
    if (name == NULL)
        name = "bulkhead";
    if (strnlen(name, FG_STAGE_NAME_MAX + 1) > FG_STAGE_NAME_MAX)
        return FG_ETOOLONG;
    struct fg_bulkhead_stage *st = fg__calloc(1, sizeof(*st));
    if (st == NULL)
        return FG_ENOMEM;
    st->bulkhead = bulkhead;
    st->shadow = opts != NULL && opts->shadow != 0;
    int rc = fg_stage_new(&fg_bulkhead_ops, st, name, out);
    if (rc != 0)
        fg__free(st);
    return rc;
}

fg_bulkhead *fg_bulkhead_from_stage(const fg_stage *stage) {
    if (stage == NULL || stage->ops != &fg_bulkhead_ops)
        return NULL;
    return ((const struct fg_bulkhead_stage *)stage->state)->bulkhead;
}
