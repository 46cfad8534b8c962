/*
 * lib/limiter.c - the single-bucket limiter: GCRA in one 64-bit word.
 *
 * The bucket's state is one word: bit 63 is the parity of the settings
 * generation it is expressed in, bits 0-62 its TAT (see gcra.h). A try reads
 * the settings and the word, decides, and publishes the new TAT with one
 * CAS; a rejection writes nothing. No lock is taken on this path.
 *
 * Settings live in two slots, slot[gen & 1] current and the other one the
 * previous generation. A change (set_rate / set_burst, serialised by a
 * mutex that tries never touch) writes the unused slot, publishes gen + 1,
 * then converts the word to the new settings with a CAS, keeping the tokens
 * held. A try that finds the word still in the previous generation converts
 * it itself, so no try ever waits for a writer. Why a torn read of a slot
 * can never be acted upon is argued where the slots are read.
 */
#include <pthread.h>
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/limiter.h"

#include "alloc.h"
#include "atomic.h"
#include "gcra.h"
#include "limiter_internal.h"

#define FG_TAG_BIT             (UINT64_C(1) << 63)
#define FG_WARM_COLD           UINT64_MAX /* warm_since before the first ramp */
#define FG_COLD_FACTOR_DEFAULT 3
#define FG_COLD_FACTOR_MAX     1000
/* The hot path is a handful of loads and one CAS; a call in the middle of it
 * (and the struct it passes through the stack) is a measurable share. */
#define FG_HOT                 static inline __attribute__((always_inline))

struct fg_limiter {
    /* Written by every admission: kept on its own cache line. */
    uint64_t state;      /* [generation parity : 1][TAT : 63] */
    uint64_t last_seen;  /* latest clock reading an admission saw (a hint) */
    uint64_t warm_since; /* warm-up: when the current ramp began */
    char pad_hot[64 - 3 * sizeof(uint64_t)];
    /* Read by every try, written only by setting changes. */
    uint64_t gen;
    /* Never changed after creation (set_rate / set_burst keep them), so
     * read without the generation check. */
    uint64_t max_wait;
    uint64_t warmup;
    uint64_t cold_factor;
    struct fg_lparams slot[2];
    fg_clock clock;
    pthread_mutex_t writer; /* serialises setting changes, never taken by tries */
};

int fg__lparams_from_options(const fg_limiter_options *o, struct fg_lparams *p) {
    if (o == NULL || o->rate == 0 || o->burst == 0)
        return FG_EINVAL;
    if (o->rate > FG_LIMITER_MAX_TOKENS || o->burst > FG_LIMITER_MAX_TOKENS)
        return FG_ERANGE;
    uint64_t period = o->period_ns ? o->period_ns : FG_NS_PER_S;
    if (period < o->rate)
        return FG_ERANGE; /* finer than 1 token per ns */
    memset(p, 0, sizeof(*p));
    p->rate = o->rate;
    p->period = period;
    p->burst = o->burst;
    p->interval = period / o->rate + (period % o->rate != 0);
    fg_u128 tau = (fg_u128)p->interval * o->burst;
    if (tau > FG_GCRA_TIME_MAX)
        return FG_ERANGE;
    p->tau = (uint64_t)tau;
    /* TAT never exceeds now + tau + max_wait: keep that below 2^63, where
     * the generation tag lives. */
    if (o->max_wait_ns > FG_GCRA_TIME_MAX - p->tau)
        return FG_ERANGE;
    p->max_wait = o->max_wait_ns;
    if (o->warmup_ns) {
        uint64_t cf = o->cold_factor ? o->cold_factor : FG_COLD_FACTOR_DEFAULT;
        if (cf > FG_COLD_FACTOR_MAX || o->warmup_ns >= FG_GCRA_TIME_MAX)
            return FG_ERANGE;
        /* A cold token costs up to cold_factor intervals. */
        if ((fg_u128)p->tau * cf > FG_GCRA_TIME_MAX - p->max_wait)
            return FG_ERANGE;
        p->warmup = o->warmup_ns;
        p->cold_factor = cf;
    } else {
        p->cold_factor = 1;
    }
    return 0;
}

void fg__lparams_to_options(const struct fg_lparams *p, fg_limiter_options *o) {
    memset(o, 0, sizeof(*o));
    o->rate = p->rate;
    o->period_ns = p->period;
    o->burst = p->burst;
    o->max_wait_ns = p->max_wait;
    o->warmup_ns = p->warmup;
    o->cold_factor = p->warmup ? (uint32_t)p->cold_factor : 0;
}

int fg__lparams_change(const struct fg_lparams *old, uint64_t rate, uint64_t period,
                       uint64_t burst, struct fg_lparams *out) {
    fg_limiter_options o;
    fg__lparams_to_options(old, &o);
    if (rate) {
        o.rate = rate;
        o.period_ns = period;
    }
    if (burst)
        o.burst = burst;
    return fg__lparams_from_options(&o, out);
}

int fg_limiter_new(const fg_limiter_options *opts, fg_limiter **out) {
    if (opts == NULL || out == NULL)
        return FG_EINVAL;
    struct fg_lparams p;
    int rc = fg__lparams_from_options(opts, &p);
    if (rc != 0)
        return rc;
    fg_limiter *l = fg__calloc(1, sizeof(*l));
    if (l == NULL)
        return FG_ENOMEM;
    if (pthread_mutex_init(&l->writer, NULL) != 0) {
        fg__free(l);
        return FG_ENOMEM;
    }
    l->clock = opts->clock.now ? opts->clock : fg_clock_monotonic();
    l->slot[0] = p;
    l->slot[1] = p;
    l->max_wait = p.max_wait;
    l->warmup = p.warmup;
    l->cold_factor = p.cold_factor;
    l->state = 0; /* TAT 0: full at any time, generation 0 */
    l->warm_since = FG_WARM_COLD;
    *out = l;
    return 0;
}

void fg_limiter_free(fg_limiter *l) {
    if (l == NULL)
        return;
    pthread_mutex_destroy(&l->writer);
    fg__free(l);
}

/* A consistent view of the bucket: its settings, and its TAT in their terms. */
struct fg_view {
    uint64_t word; /* the state word read */
    uint64_t gen;
    uint64_t tat;
    uint64_t interval, tau, burst;
};

/*
 * Read settings and state so that the TAT is expressed in those settings.
 * Returns 0, or -1 when a setting change raced the read (read again).
 *
 * Why a torn slot is never used: a writer only rewrites slot[(g+1) & 1]
 * while gen == g. (a) The current slot, slot[g & 1], is rewritten only by
 * the writer of generation g+2, which starts after gen became g+1; so if gen
 * still reads g after the copy, the copy was whole. (b) The previous slot is
 * read only when the word is still tagged with generation g-1, i.e. before
 * the writer of generation g has converted it, hence before any writer of
 * g+1 has started; re-reading the word after the copy and finding it
 * unchanged proves that, so the copy was whole.
 */
FG_HOT int fg_read_view(const fg_limiter *l, struct fg_view *v) {
    v->gen = fg__load_u64(&l->gen); /* acquire: the slot below is as published */
    const struct fg_lparams *p = &l->slot[v->gen & 1];
    v->interval = fg__load_u64(&p->interval);
    v->tau = fg__load_u64(&p->tau);
    v->burst = fg__load_u64(&p->burst);
    v->word = fg__load_u64(&l->state); /* acquire: orders the gen re-read after it */
    if (fg__load_u64(&l->gen) != v->gen)
        return -1;
    v->tat = v->word & ~FG_TAG_BIT;
    if ((v->word >> 63) != (v->gen & 1)) {
        /* Still in the previous generation's terms: convert, helping the
         * writer, which may be preempted between publishing and converting. */
        const struct fg_lparams *q = &l->slot[(v->gen - 1) & 1];
        uint64_t qi = fg__load_u64(&q->interval);
        uint64_t qb = fg__load_u64(&q->burst);
        uint64_t anchor = fg__load_u64(&p->anchor);
        /* The word unchanged and gen unchanged: no writer of g+1 can have
         * touched q yet (the word, or gen, would differ; checking both
         * covers two changes that bring the word back to the same value). */
        if (fg__load_u64(&l->state) != v->word || fg__load_u64(&l->gen) != v->gen)
            return -1;
        v->tat = fg__gcra_convert(v->tat, anchor, qi, qb, v->interval, v->burst);
    }
    return 0;
}

/*
 * The cost of n tokens while warming up. The ramp begins at the first
 * request after the bucket has been full for warmup ns (or ever, for a new
 * limiter); the admitted rate then rises linearly from rate/cold_factor to
 * rate over warmup ns, so a token taken e ns into the ramp costs
 *     interval * cf * W / (W + (cf - 1) * e)     (rounded up)
 * and exactly interval from e >= W on.
 */
static uint64_t fg_warm_cost(fg_limiter *l, const struct fg_view *v, uint64_t t, uint64_t n) {
    uint64_t ws = fg__load_u64(&l->warm_since);
    uint64_t w = l->warmup;
    if (ws == FG_WARM_COLD || (t >= v->tat && t - v->tat >= w)) {
        /* Cold: the ramp starts now. Threads racing here store readings a
         * few ns apart; whichever wins is as good as the others. */
        if (ws != t)
            fg__cas_u64(&l->warm_since, ws, t);
        ws = t;
    }
    uint64_t e = t > ws ? t - ws : 0;
    if (e >= w || l->cold_factor <= 1)
        return n * v->interval;
    fg_u128 num = (fg_u128)v->interval * l->cold_factor * w;
    fg_u128 den = (fg_u128)w + (fg_u128)(l->cold_factor - 1) * e;
    uint64_t per = (uint64_t)(num / den + (num % den != 0));
    return n * per;
}

int fg_limiter_try_wait(fg_limiter *l, uint64_t now_ns, uint64_t n, uint64_t max_wait_ns,
                        uint64_t *wait_ns) {
    if (wait_ns)
        *wait_ns = 0;
    if (l == NULL || n == 0)
        return FG_EINVAL;
    uint64_t now = fg__time_clamp(now_ns);
    for (;;) {
        struct fg_view v;
        if (fg_read_view(l, &v) != 0)
            continue;
        if (n > v.burst)
            return FG_ERANGE;
        /* An earlier reading than one already seen counts as no time
         * elapsed: it neither refunds tokens nor takes any away. */
        uint64_t seen = fg__load_u64(&l->last_seen);
        uint64_t t = now > seen ? now : seen;
        uint64_t cost = l->warmup ? fg_warm_cost(l, &v, t, n) : n * v.interval;
        uint64_t bound = l->max_wait < max_wait_ns ? l->max_wait : max_wait_ns;
        uint64_t new_tat, wait;
        int ok = fg__gcra_decide(v.tat, t, cost, v.tau, bound, &new_tat, &wait);
        if (!ok && v.tat <= t && l->warmup) {
            /* A full bucket admits any n <= burst, even when a cold token
             * costs so much that n of them exceed the bucket: it is charged
             * the whole cold cost (the debt runs past tau, so the requests
             * after it wait longer). Otherwise such a request could never be
             * admitted while cold, and each rejection would restart the
             * ramp. */
            new_tat = t + cost;
            wait = 0;
            ok = 1;
        } else if (!ok && l->warmup && v.tat - t < wait) {
            wait = v.tat - t; /* by then the bucket is full, which admits */
        }
        if (!ok) {
            /* Linearised at the state read: the bucket is not written. The
             * reading is remembered, so a later, earlier one is no refund. */
            if (now > seen)
                fg__store_u64(&l->last_seen, now);
            if (wait_ns)
                *wait_ns = wait;
            return FG_ELIMITED;
        }
        uint64_t word = ((v.gen & 1) << 63) | new_tat;
        /* The CAS publishes the decision only if nobody decided in between
         * (or converted the word): otherwise decide again on fresh state. */
        if (!fg__cas_u64(&l->state, v.word, word))
            continue;
        /* A plain store may lose a race with a later reading; then the hint
         * is merely older, which costs precision, never correctness. */
        if (now > seen)
            fg__store_u64(&l->last_seen, now);
        if (wait_ns)
            *wait_ns = wait;
        return 0;
    }
}

int fg_limiter_try(fg_limiter *l, uint64_t now_ns, uint64_t n, uint64_t *wait_ns) {
    return fg_limiter_try_wait(l, now_ns, n, UINT64_MAX, wait_ns);
}

int fg_limiter_try_now(fg_limiter *l, uint64_t n, uint64_t *wait_ns) {
    if (l == NULL) {
        if (wait_ns)
            *wait_ns = 0;
        return FG_EINVAL;
    }
    return fg_limiter_try_wait(l, fg_clock_read(&l->clock), n, UINT64_MAX, wait_ns);
}

uint64_t fg_limiter_tokens(const fg_limiter *l, uint64_t now_ns) {
    if (l == NULL)
        return 0;
    struct fg_view v;
    while (fg_read_view(l, &v) != 0) {
    }
    uint64_t now = fg__time_clamp(now_ns);
    uint64_t seen = fg__load_u64(&l->last_seen);
    return fg__gcra_tokens(v.tat, now > seen ? now : seen, v.interval, v.tau);
}

static void fg_lparams_load(const struct fg_lparams *s, struct fg_lparams *d) {
    d->interval = fg__load_u64(&s->interval);
    d->tau = fg__load_u64(&s->tau);
    d->burst = fg__load_u64(&s->burst);
    d->max_wait = fg__load_u64(&s->max_wait);
    d->warmup = fg__load_u64(&s->warmup);
    d->cold_factor = fg__load_u64(&s->cold_factor);
    d->rate = fg__load_u64(&s->rate);
    d->period = fg__load_u64(&s->period);
    d->anchor = fg__load_u64(&s->anchor);
}

/* Field by field, so that a reader racing this sees every field whole. */
static void fg_lparams_store(struct fg_lparams *d, const struct fg_lparams *s) {
    fg__store_u64(&d->interval, s->interval);
    fg__store_u64(&d->tau, s->tau);
    fg__store_u64(&d->burst, s->burst);
    fg__store_u64(&d->max_wait, s->max_wait);
    fg__store_u64(&d->warmup, s->warmup);
    fg__store_u64(&d->cold_factor, s->cold_factor);
    fg__store_u64(&d->rate, s->rate);
    fg__store_u64(&d->period, s->period);
    fg__store_u64(&d->anchor, s->anchor);
}

int fg_limiter_get(const fg_limiter *l, fg_limiter_options *opts) {
    if (l == NULL || opts == NULL)
        return FG_EINVAL;
    struct fg_lparams p;
    uint64_t g;
    do {
        g = fg__load_u64(&l->gen);
        fg_lparams_load(&l->slot[g & 1], &p);
    } while (fg__load_u64(&l->gen) != g);
    fg__lparams_to_options(&p, opts);
    opts->clock = l->clock;
    return 0;
}

/* Install new settings: publish them, then convert the word (unless a try
 * already has), keeping the tokens held at the anchor time. */
static int fg_limiter_update(fg_limiter *l, uint64_t rate, uint64_t period, uint64_t burst) {
    if (pthread_mutex_lock(&l->writer) != 0)
        return FG_ESYS;
    uint64_t g = l->gen; /* only writers change gen, and we hold the lock */
    const struct fg_lparams *old = &l->slot[g & 1];
    struct fg_lparams np;
    int rc = fg__lparams_change(old, rate, period, burst, &np);
    if (rc != 0) {
        pthread_mutex_unlock(&l->writer);
        return rc;
    }
    uint64_t seen = fg__load_u64(&l->last_seen);
    uint64_t at = fg__time_clamp(fg_clock_read(&l->clock));
    np.anchor = at > seen ? at : seen;
    fg_lparams_store(&l->slot[(g + 1) & 1], &np);
    fg__store_u64(&l->gen, g + 1); /* release: the slot is complete before gen says so */
    uint64_t tag = ((g + 1) & 1) << 63;
    for (;;) {
        uint64_t word = fg__load_u64(&l->state);
        if ((word & FG_TAG_BIT) == tag)
            break; /* a try converted it first */
        uint64_t tat = fg__gcra_convert(word & ~FG_TAG_BIT, np.anchor, old->interval,
                                        old->burst, np.interval, np.burst);
        if (fg__cas_u64(&l->state, word, tag | tat))
            break;
    }
    if (np.anchor > seen)
        fg__store_u64(&l->last_seen, np.anchor);
    pthread_mutex_unlock(&l->writer);
    return 0;
}

int fg_limiter_set_rate(fg_limiter *l, uint64_t rate, uint64_t period_ns) {
    if (l == NULL || rate == 0)
        return FG_EINVAL;
    return fg_limiter_update(l, rate, period_ns, 0);
}

int fg_limiter_set_burst(fg_limiter *l, uint64_t burst) {
    if (l == NULL || burst == 0)
        return FG_EINVAL;
    return fg_limiter_update(l, 0, 0, burst);
}
