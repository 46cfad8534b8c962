/*
 * lib/adaptive.c - the adaptive concurrency limit (floodgate/adaptive.h):
 * a slot count checked on enter, latency samples gathered on exit, and a
 * limit recomputed once per window by whichever thread completes it.
 *
 * The hot words share one cache line (every request touches all of them):
 * the admission count, the limit, the phase (probe generation), the
 * window's bounds and the completion word. The completion
 * word counts finished requests in its low 24 bits (modulo 2^24) and sums
 * the open window's latencies, in units of 1.024 us, in its high 40. So:
 *  - in flight = (admitted - completed) mod 2^24; try_enter reads the
 *    completion word, then the admission count, and CASes the admission
 *    count up only while that difference is below the limit. Completions
 *    only grow, so the difference it tested is never smaller than the real
 *    one at the CAS: it may refuse a slot that just freed, never admit one
 *    too many. Reading the completion word first matters: every completion
 *    it counts was admitted before, so the admission count read after it
 *    includes them all and the difference cannot go negative.
 *  - an exit is one fetch-and-add on the completion word: one more
 *    completion and its latency. Its result numbers the sample within the
 *    window (against `win_base`, the completion count when the window
 *    opened), which says whether this exit completed the window.
 *  - a request that gives its slot back without a sample (a release, or an
 *    exit left out of a probe) subtracts one from the admission count.
 *  - a refusal is decided only on a consistent pair (the completion count
 *    unchanged across the admissions' read): a thread stalled between the
 *    two reads would otherwise count every request finished meanwhile as
 *    still in flight and refuse for nothing.
 * Bounds keep the sum from spilling: a window closes by FG_AD_WINDOW_CAP
 * (2^17) samples at the latest and a sample counts at most 2^23 - 1 units
 * (8.6 s), so the sum stays below 2^40. The count's wrap carries one unit
 * into the sum every 2^24 completions, which is noise. Should a closer
 * stall while as many samples again arrive, the sum could wrap: one
 * window's mean would be wrong, nothing worse (it is all unsigned
 * arithmetic).
 *
 * The update runs under a try-lock (`busy`): the exit that finds a window
 * complete CASes it from 0 to 1 and, if it wins, checks the window again,
 * takes its samples (the count up to what it loaded; the sum by
 * subtracting exactly what it loaded, so samples added meanwhile stay for
 * the next window), recomputes the limit and releases the lock. A thread
 * that loses the CAS just returns: nobody waits. All the
 * algorithm state (the fractional limit, the no-load latency, the probe
 * schedule) is touched only under the lock; what stats readers see of it is
 * republished through atomic stores.
 *
 * Why windows last at least one mean latency: the samples of a window come
 * from requests admitted during roughly the previous latency. A window that
 * is shorter than that judges the limit from requests admitted under an
 * older one, and with a large limit the controller then overshoots both
 * ways: in a prototype of the simulation in tests/check_adaptive.c, with
 * 50-sample windows and no such rule, the limit swung between 0.1x and
 * 2.5x a knee of 400 (test_gradient_large_knee now settles within 5%).
 */
#include <stddef.h>
#include <string.h>

#include "floodgate/adaptive.h"
#include "floodgate/error.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"

#define FG_AD_COUNT_BITS 24
#define FG_AD_COUNT_MASK ((UINT32_C(1) << FG_AD_COUNT_BITS) - 1)
#define FG_AD_UNIT_SHIFT 10                        /* latencies in units of 1024 ns */
#define FG_AD_UNITS_MAX  ((UINT64_C(1) << 23) - 1) /* the largest sample, units */
#define FG_AD_WINDOW_CAP (UINT32_C(1) << 17)       /* a window closes here, however young */
#define FG_AD_STUCK_RUNS 5                         /* windows stuck low that force a probe */
#define FG_AD_GRAD_MIN   0.5
#define FG_AD_GRAD_MAX   2.0
#define FG_AD_EWMA_DECAY 0.9 /* EWMA: baseline over twice the window mean shrinks so */
#define FG_SPLITMIX_INC  UINT64_C(0x9e3779b97f4a7c15)

struct fg_adaptive {
    /* Line 0, hot: written by every request (admitted, done) or read by
     * every one. The options the hot path reads share it; the rest of the
     * options fill it up to the next line. */
    _Alignas(64) uint32_t admitted; /* slots taken minus slots given back without a sample */
    uint32_t limit;
    uint32_t phase;      /* (probe generation << 1) | probing */
    uint32_t close_at;   /* samples that complete a window: window_ or probe_samples */
    uint32_t win_base;   /* the completion count when the window opened */
    uint32_t close_mask; /* past close_at, look again when (count & close_mask) == 0 */
    uint64_t done; /* completions mod 2^24 | open window's latency sum << FG_AD_COUNT_BITS */
    uint64_t drop_latency_ns;
    uint32_t min_limit, max_limit;
    uint32_t window_samples, probe_samples;
    uint32_t noload_samples, queue_size;

    /* Options the closer reads: read-only after creation. */
    fg_adaptive_algo algo;
    uint32_t increase;
    int noload_kind_ewma; /* FG_ADAPTIVE_NOLOAD_EWMA rather than PROBE */
    uint32_t busy;        /* the closer's try-lock (written twice a window) */
    int drop_on_failure;
    double tolerance, smoothing, probe_jitter, backoff_ratio;
    uint64_t window_ns, probe_interval_ns, seed;
    fg_clock clock;

    /* Written on the less common paths (rejections, drops, probes). */
    uint64_t rejected;
    uint64_t window_drops; /* drops in the open window */
    uint64_t discarded;
    uint64_t released;

    /* Published by the closer for fg_adaptive_stats_get. */
    uint64_t samples_closed, drops_closed, windows, limit_changes, probes;
    uint64_t rtt_noload_ns, rtt_window_ns, gradient_bits, estimate_bits;

    /* The closer's own state: only touched while holding `busy`. */
    double est;    /* the limit before rounding (GRADIENT) */
    double noload; /* ns; 0 until the first estimate */
    uint64_t win_start, win_min, next_probe;
    uint32_t stuck; /* consecutive windows at min_limit or at the lowest gradient */
    int probing;    /* the phase's low bit, as the closer set it */
};

/* Line 0 holds exactly the fields above `algo`. */
_Static_assert(offsetof(struct fg_adaptive, algo) == 64, "hot line layout");

/* ---- helpers ----------------------------------------------------------------------- */

static uint64_t fg_ad_bits(double v) {
    uint64_t b;
    memcpy(&b, &v, sizeof(b));
    return b;
}

static double fg_ad_double(uint64_t b) {
    double v;
    memcpy(&v, &b, sizeof(v));
    return v;
}

/* Output k of splitmix64 seeded with seed (Steele, Lea and Flood, 2014). */
static uint64_t fg_ad_mix(uint64_t seed, uint64_t k) {
    uint64_t z = seed + (k + 1) * FG_SPLITMIX_INC;
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* The smallest power of two >= n (n >= 1, n <= 2^31). */
static uint64_t fg_ad_pow2(uint64_t n) {
    uint64_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* sqrt(x) for x >= 1 by Newton's method (the library links without libm).
 * From x/2 + 1/2 >= sqrt(x) the iterates decrease monotonically to the root;
 * stop when they stop decreasing. Runs once per window. */
static double fg_ad_sqrt(double x) {
    double r = 0.5 * x + 0.5;
    for (int i = 0; i < 64; i++) {
        double next = 0.5 * (r + x / r);
        if (!(next < r))
            break;
        r = next;
    }
    return r;
}

static uint32_t fg_ad_completions(uint64_t done) { return (uint32_t)done & FG_AD_COUNT_MASK; }

/* Requests in flight: the completion word first (see the file comment),
 * then the admissions, then the completions again; a pair with completions
 * between the reads is retried a few times, as a stall there overstates the
 * count. Never below the true count at the admissions' read. */
static uint32_t fg_ad_in_flight(const fg_adaptive *a) {
    uint32_t n = 0;
    for (int tries = 0; tries < 8; tries++) {
        uint32_t c = fg_ad_completions(fg__load_u64(&a->done));
        n = (fg__load_u32(&a->admitted) - c) & FG_AD_COUNT_MASK;
        if (fg_ad_completions(fg__load_u64(&a->done)) == c)
            break;
    }
    return n;
}

/* Take the samples of the open window as of the completion word d (loaded
 * by the caller, who holds `busy`): their count since win_base and their
 * sum, which is subtracted (not stored as 0: sums added since stay). */
static uint32_t fg_ad_take(fg_adaptive *a, uint64_t d, uint64_t *sum) {
    uint32_t c = fg_ad_completions(d);
    uint32_t n = (c - fg__load_u32(&a->win_base)) & FG_AD_COUNT_MASK;
    *sum = d >> FG_AD_COUNT_BITS;
    if (*sum != 0)
        fg__faa_u64(&a->done, (uint64_t)0 - (*sum << FG_AD_COUNT_BITS));
    fg__store_u32(&a->win_base, c);
    return n;
}

/* Windows complete at `at` samples; a window waiting for its time is
 * looked at again every power-of-two ceiling of `at` samples, not on every
 * exit. (A racing exit may pair the old count with the new mask: it only
 * looks once too often or too rarely.) */
static void fg_ad_set_close(fg_adaptive *a, uint32_t at) {
    fg__store_u32(&a->close_mask, (uint32_t)fg_ad_pow2(at) - 1);
    fg__store_u32(&a->close_at, at);
}

static double fg_ad_clamp(double v, double lo, double hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- the limit update (under `busy`) ----------------------------------------------- */

/* Publish a new limit (and phase, when it changes). The limit is stored
 * before the phase, both with release: a try_enter that reads the new phase
 * (it reads the phase first) then reads this limit or a later one, so a
 * permit carrying a probe's phase was admitted under the probe's limit. */
static void fg_ad_publish(fg_adaptive *a, uint32_t limit, uint32_t phase) {
    uint32_t old = fg__load_u32(&a->limit);
    if (limit != old) {
        fg__store_u32(&a->limit, limit);
        fg__faa_u64(&a->limit_changes, 1);
    }
    if (phase != fg__load_u32(&a->phase))
        fg__store_u32(&a->phase, phase);
}

static void fg_ad_start_probe(fg_adaptive *a) {
    uint32_t gen = fg__load_u32(&a->phase) >> 1;
    a->probing = 1;
    a->stuck = 0;
    fg_ad_set_close(a, a->probe_samples);
    fg_ad_publish(a, a->min_limit, ((gen + 1) << 1) | 1u);
    fg__faa_u64(&a->probes, 1);
    /* Samples recorded since this window's snapshot came from requests
     * admitted before the probe: move them out of the probe's window (into
     * the counts, not lost). From here on such exits are discarded. */
    uint64_t sum;
    fg__faa_u64(&a->samples_closed, fg_ad_take(a, fg__load_u64(&a->done), &sum));
}

static uint32_t fg_ad_round_est(const fg_adaptive *a) {
    double e = fg_ad_clamp(a->est, (double)a->min_limit, (double)a->max_limit);
    return (uint32_t)e; /* down: the limit is a whole number of slots */
}

/* The probe's window has closed: its mean is the no-load latency. */
static void fg_ad_end_probe(fg_adaptive *a, uint64_t now, double mean) {
    uint32_t gen = fg__load_u32(&a->phase) >> 1;
    uint64_t n = fg__load_u64(&a->probes);
    double u = (double)(fg_ad_mix(a->seed, n) >> 11) * 0x1.0p-53; /* [0, 1) */
    a->noload = mean;
    a->probing = 0;
    a->stuck = 0;
    fg__store_u64(&a->rtt_noload_ns, (uint64_t)mean);
    a->next_probe =
        now + (uint64_t)((double)a->probe_interval_ns * (1.0 + a->probe_jitter * u));
    fg_ad_set_close(a, a->window_samples);
    fg_ad_publish(a, fg_ad_round_est(a), (gen + 1) << 1);
}

static void fg_ad_gradient(fg_adaptive *a, uint64_t now, uint64_t n, double mean,
                           double conc) {
    if (a->probing) {
        fg_ad_end_probe(a, now, mean);
        return;
    }
    if (a->noload <= 0.0) {
        a->noload = mean; /* EWMA's first window (PROBE has measured one by now) */
    } else if (a->noload_kind_ewma) {
        /* A moving average over about noload_samples samples, weighted by the
         * window's share of them; a baseline more than twice the window mean
         * (the overload is over) is let down faster than the average would. */
        double w = (double)n / (double)a->noload_samples;
        a->noload += (w < 1.0 ? w : 1.0) * (mean - a->noload);
        if (a->noload > 2.0 * mean)
            a->noload *= FG_AD_EWMA_DECAY;
    }
    fg__store_u64(&a->rtt_noload_ns, (uint64_t)a->noload);

    double raw = a->tolerance * a->noload / mean;
    double g = fg_ad_clamp(raw, FG_AD_GRAD_MIN, FG_AD_GRAD_MAX);
    double q = a->queue_size != 0 ? (double)a->queue_size : fg_ad_sqrt(a->est);
    double target = a->est * g + q;
    /* Used less than half: the latency says nothing about a larger limit,
     * so do not grow (shrinking is still right). */
    if (conc * 2.0 < a->est && target > a->est)
        target = a->est;
    a->est += a->smoothing * (target - a->est);
    a->est = fg_ad_clamp(a->est, (double)a->min_limit, (double)a->max_limit);
    fg__store_u64(&a->gradient_bits, fg_ad_bits(g));

    uint32_t lim = fg_ad_round_est(a);
    a->stuck = lim <= a->min_limit || raw <= FG_AD_GRAD_MIN ? a->stuck + 1 : 0;
    fg_ad_publish(a, lim, fg__load_u32(&a->phase));
    /* Probe on schedule, or early when lowering the limit has stopped
     * lowering the latency: window after window at min_limit, or with the
     * latency at least tolerance / 0.5 times the baseline. Then the no-load
     * latency is likely stale (the service became slower for good). */
    if (!a->noload_kind_ewma && (now >= a->next_probe || a->stuck >= FG_AD_STUCK_RUNS))
        fg_ad_start_probe(a);
}

static void fg_ad_update(fg_adaptive *a, uint64_t now, uint64_t elapsed, uint64_t n,
                         uint64_t sum, uint64_t drops) {
    double busy = (double)(sum << FG_AD_UNIT_SHIFT);
    double mean = busy / (double)n;
    /* The window's mean concurrency, by Little's law: the time its requests
     * spent in flight over the time it lasted (edges aside). It decides
     * whether the limit was used; a window of no measurable length counts
     * as used. */
    double conc = elapsed > 0 ? busy / (double)elapsed : 1e300;
    if (mean < 1.0)
        mean = 1.0; /* sub-microsecond samples: keep the ratios finite */
    fg__store_u64(&a->rtt_window_ns, (uint64_t)mean);
    fg__faa_u64(&a->samples_closed, n);
    fg__faa_u64(&a->drops_closed, drops);
    fg__faa_u64(&a->windows, 1);
    if (a->algo == FG_ADAPTIVE_AIMD) {
        uint32_t lim = fg__load_u32(&a->limit), next = lim;
        if (drops > 0) {
            uint32_t cut = (uint32_t)((double)lim * a->backoff_ratio);
            next = cut < lim - 1 ? cut : lim - 1;
            if (next < a->min_limit)
                next = a->min_limit;
        } else if (conc * 2.0 >= (double)lim) {
            uint64_t up = (uint64_t)lim + a->increase;
            next = up > a->max_limit ? a->max_limit : (uint32_t)up;
        }
        a->est = (double)next;
        fg_ad_publish(a, next, fg__load_u32(&a->phase));
    } else {
        fg_ad_gradient(a, now, n, mean, conc);
    }
    fg__store_u64(&a->estimate_bits, fg_ad_bits(a->est));
    a->win_start = now;
    a->win_min =
        a->probing ? 0 : (a->window_ns > (uint64_t)mean ? a->window_ns : (uint64_t)mean);
}

/* Close the window if it is complete. Called by an exit that saw the count
 * reach close_at (or, past it, a multiple of its power-of-two ceiling, so a
 * window waiting for its time is looked at again now and then, not on
 * every exit). */
static void fg_ad_try_close(fg_adaptive *a) {
    /* The try-lock: the winner alone touches the algorithm state until its
     * release store below; its CAS (a full barrier) orders its reads after
     * the previous closer's writes. A loser returns at once: the winner
     * looks at the window itself, and a window it leaves open is checked
     * again by a later exit. */
    if (!fg__cas_u32(&a->busy, 0, 1))
        return;
    uint64_t now = fg_clock_read(&a->clock);
    uint64_t d = fg__load_u64(&a->done);
    uint32_t n = (fg_ad_completions(d) - fg__load_u32(&a->win_base)) & FG_AD_COUNT_MASK;
    uint64_t elapsed = now > a->win_start ? now - a->win_start : 0; /* backwards: none */
    if (n != 0 && n >= fg__load_u32(&a->close_at) &&
        (elapsed >= a->win_min || n >= FG_AD_WINDOW_CAP)) {
        uint64_t sum;
        n = fg_ad_take(a, d, &sum);
        uint64_t drops = fg__load_u64(&a->window_drops);
        fg__faa_u64(&a->window_drops, (uint64_t)0 - drops);
        fg_ad_update(a, now, elapsed, n, sum, drops);
    }
    fg__store_u32(&a->busy, 0); /* release: the next closer sees all of the above */
}

/* ---- the hot path ------------------------------------------------------------------ */

int fg_adaptive_try_enter(fg_adaptive *a, uint64_t *permit) {
    if (a == NULL || permit == NULL)
        return FG_EINVAL;
    /* The phase before the limit: see fg_ad_publish. */
    uint32_t phase = fg__load_u32(&a->phase);
    for (;;) {
        /* Completions first, then admissions: see the file comment. */
        uint32_t c = fg_ad_completions(fg__load_u64(&a->done));
        uint32_t adm = fg__load_u32(&a->admitted);
        uint32_t cur = (adm - c) & FG_AD_COUNT_MASK;
        if (cur >= fg__load_u32(&a->limit)) {
            /* Refuse only on a consistent pair: with no completion between
             * the two reads of the completion word, cur was the exact count
             * when the admissions were read. (A thread stalled between the
             * reads would otherwise count every request finished meanwhile
             * as still in flight.) */
            if (fg_ad_completions(fg__load_u64(&a->done)) != c)
                continue;
            fg__faa_u64(&a->rejected, 1);
            return FG_EOVERLOADED;
        }
        /* The CAS only succeeds if no slot was taken (or given back) since
         * the count was compared with the limit, so admissions never pass a
         * limit this thread read: of N threads racing for the last slot,
         * exactly one gets it. */
        if (fg__cas_u32(&a->admitted, adm, adm + 1)) {
            *permit = phase;
            return 0;
        }
    }
}

/* Whether more slots have been given back than taken: an exit or release
 * without its try_enter. Read after the give-back, completions first; the
 * difference is then "negative" only if the caller gave back a slot nobody
 * held (best effort: with other requests in flight it cannot be seen). */
static int fg_ad_overdrawn(const fg_adaptive *a) {
    return fg_ad_in_flight(a) > FG_AD_COUNT_MASK / 2;
}

/* Give a slot back without a sample. */
static int fg_ad_unadmit(fg_adaptive *a) {
    fg__faa_u32(&a->admitted, UINT32_MAX); /* -1 */
    if (fg_ad_overdrawn(a)) {
        fg__faa_u32(&a->admitted, 1); /* undo: a wrapped count would shut everyone out */
        return FG_ESTATE;
    }
    return 0;
}

int fg_adaptive_exit(fg_adaptive *a, uint64_t permit, uint64_t latency_ns, int dropped) {
    if (a == NULL)
        return FG_EINVAL;
    uint32_t phase = fg__load_u32(&a->phase);
    if ((phase & 1u) != 0 && permit != phase) {
        /* A probe is running and this request was admitted before it. */
        int rc = fg_ad_unadmit(a);
        if (rc == 0)
            fg__faa_u64(&a->discarded, 1);
        return rc;
    }
    /* Units of 1.024 us: a shift, where a division by 1000 would lengthen
     * the path to the add by a multiply. */
    uint64_t units = latency_ns >> FG_AD_UNIT_SHIFT;
    if (units > FG_AD_UNITS_MAX)
        units = FG_AD_UNITS_MAX;
    /* One add frees the slot and records the sample; its result numbers the
     * sample within the window. */
    uint64_t add = units << FG_AD_COUNT_BITS | 1;
    uint32_t c = fg_ad_completions(fg__faa_u64(&a->done, add) + 1);
    /* Overdrawn? Admissions read after the add include every request whose
     * completion c counts, so only a give-back without a slot goes negative. */
    if (((fg__load_u32(&a->admitted) - c) & FG_AD_COUNT_MASK) > FG_AD_COUNT_MASK / 2) {
        fg__faa_u64(&a->done, (uint64_t)0 - add);
        return FG_ESTATE;
    }
    if (dropped || (a->drop_latency_ns != 0 && latency_ns > a->drop_latency_ns))
        fg__faa_u64(&a->window_drops, 1);
    uint32_t n = (c - fg__load_u32(&a->win_base)) & FG_AD_COUNT_MASK;
    uint32_t at = fg__load_u32(&a->close_at);
    if (n >= at && (n == at || (n & fg__load_u32(&a->close_mask)) == 0))
        fg_ad_try_close(a);
    return 0;
}

int fg_adaptive_release(fg_adaptive *a, uint64_t permit) {
    (void)permit;
    if (a == NULL)
        return FG_EINVAL;
    int rc = fg_ad_unadmit(a);
    if (rc == 0)
        fg__faa_u64(&a->released, 1);
    return rc;
}

uint32_t fg_adaptive_limit(const fg_adaptive *a) {
    return a == NULL ? 0 : fg__load_u32(&a->limit);
}

uint32_t fg_adaptive_in_flight(const fg_adaptive *a) {
    return a == NULL ? 0 : fg_ad_in_flight(a);
}

int fg_adaptive_stats_get(const fg_adaptive *a, fg_adaptive_stats *out) {
    if (a == NULL || out == NULL)
        return FG_EINVAL;
    uint32_t open = (fg_ad_completions(fg__load_u64(&a->done)) - fg__load_u32(&a->win_base)) &
                    FG_AD_COUNT_MASK;
    memset(out, 0, sizeof(*out));
    out->in_flight = fg_ad_in_flight(a);
    out->rejected = fg__load_u64(&a->rejected);
    out->samples = fg__load_u64(&a->samples_closed) + open;
    out->drops = fg__load_u64(&a->drops_closed) + fg__load_u64(&a->window_drops);
    out->discarded = fg__load_u64(&a->discarded);
    out->released = fg__load_u64(&a->released);
    out->admitted = out->samples + out->discarded + out->released + out->in_flight;
    out->windows = fg__load_u64(&a->windows);
    out->limit_changes = fg__load_u64(&a->limit_changes);
    out->probes = fg__load_u64(&a->probes);
    out->limit = fg__load_u32(&a->limit);
    out->probing = (int)(fg__load_u32(&a->phase) & 1u);
    out->rtt_noload_ns = fg__load_u64(&a->rtt_noload_ns);
    out->rtt_window_ns = fg__load_u64(&a->rtt_window_ns);
    out->gradient = fg_ad_double(fg__load_u64(&a->gradient_bits));
    out->estimate = fg_ad_double(fg__load_u64(&a->estimate_bits));
    return 0;
}

/* ---- creation ---------------------------------------------------------------------- */

static int fg_ad_check(const fg_adaptive_options *o) {
    if ((unsigned)o->algo > FG_ADAPTIVE_AIMD || (unsigned)o->noload > FG_ADAPTIVE_NOLOAD_EWMA)
        return FG_EINVAL;
    if (o->min_limit == 0 || o->min_limit > o->initial_limit ||
        o->initial_limit > o->max_limit || o->max_limit > FG_ADAPTIVE_LIMIT_MAX)
        return FG_EINVAL;
    if (o->window_samples == 0 || o->window_samples > FG_ADAPTIVE_SAMPLES_MAX ||
        o->probe_samples == 0 || o->probe_samples > FG_ADAPTIVE_SAMPLES_MAX ||
        o->noload_samples == 0 || o->increase == 0)
        return FG_EINVAL;
    /* Written so that NaN fails: every comparison with it is false. */
    if (!(o->tolerance >= 1.0 && o->tolerance <= 1e6) ||
        !(o->smoothing > 0.0 && o->smoothing <= 1.0) ||
        !(o->probe_jitter >= 0.0 && o->probe_jitter <= 1.0) ||
        !(o->backoff_ratio >= 0.5 && o->backoff_ratio < 1.0))
        return FG_EINVAL;
    if (o->algo == FG_ADAPTIVE_GRADIENT && o->noload == FG_ADAPTIVE_NOLOAD_PROBE &&
        o->probe_interval_ns == 0)
        return FG_EINVAL;
    return 0;
}

int fg_adaptive_new(const fg_adaptive_options *opts, fg_adaptive **out) {
    if (opts == NULL || out == NULL)
        return FG_EINVAL;
    int rc = fg_ad_check(opts);
    if (rc != 0)
        return rc;
    fg_adaptive *a = fg__aligned_calloc(sizeof(*a), 64);
    if (a == NULL)
        return FG_ENOMEM;
    a->algo = opts->algo;
    a->noload_kind_ewma = opts->noload == FG_ADAPTIVE_NOLOAD_EWMA;
    a->min_limit = opts->min_limit;
    a->max_limit = opts->max_limit;
    a->window_samples = opts->window_samples;
    a->probe_samples = opts->probe_samples;
    a->noload_samples = opts->noload_samples;
    a->queue_size = opts->queue_size;
    a->increase = opts->increase;
    a->drop_on_failure = opts->drop_on_failure != 0;
    a->tolerance = opts->tolerance;
    a->smoothing = opts->smoothing;
    a->probe_jitter = opts->probe_jitter;
    a->backoff_ratio = opts->backoff_ratio;
    a->window_ns = opts->window_ns;
    a->probe_interval_ns = opts->probe_interval_ns;
    a->drop_latency_ns = opts->drop_latency_ns;
    a->seed = opts->seed != 0 ? opts->seed : fg__random_u64();
    a->clock = opts->clock;

    a->est = (double)opts->initial_limit;
    a->limit = opts->initial_limit;
    fg_ad_set_close(a, opts->window_samples);
    a->win_start = fg_clock_read(&a->clock);
    a->win_min = opts->window_ns;
    a->estimate_bits = fg_ad_bits(a->est);
    if (a->algo == FG_ADAPTIVE_GRADIENT && !a->noload_kind_ewma) {
        /* Nothing to compare with until one probe has run. */
        a->limit = opts->min_limit;
        fg_ad_start_probe(a);
    }
    *out = a;
    return 0;
}

void fg_adaptive_free(fg_adaptive *a) { fg__aligned_free(a); }

/* ---- the stage --------------------------------------------------------------------- */

static int fg_ad_stage_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)ctx;
    return fg_adaptive_try_enter(state, slot);
}

static int fg_ad_stage_exit(void *state, fg_ctx *ctx, const fg_outcome *outcome,
                            uint64_t slot) {
    fg_adaptive *a = state;
    (void)ctx;
    int timeout = outcome->code == FG_ETIMEDOUT || outcome->code == FG_EOVERLOADED;
    switch (outcome->kind) {
    case FG_OUTCOME_OK:
        (void)fg_adaptive_exit(a, slot, outcome->latency_ns, 0);
        break;
    case FG_OUTCOME_FAILED:
        (void)fg_adaptive_exit(a, slot, outcome->latency_ns, a->drop_on_failure || timeout);
        break;
    default: /* REJECTED by a later stage: only a timeout held the slot for real */
        if (outcome->code == FG_ETIMEDOUT)
            (void)fg_adaptive_exit(a, slot, outcome->latency_ns, 1);
        else
            (void)fg_adaptive_release(a, slot);
        break;
    }
    return 0;
}

static const fg_stage_ops fg_adaptive_stage_ops = {"adaptive", fg_ad_stage_enter,
                                                   fg_ad_stage_exit, NULL};

int fg_stage_adaptive(fg_adaptive *adaptive, const char *name, fg_stage **out) {
    if (adaptive == NULL || out == NULL)
        return FG_EINVAL;
    return fg_stage_new(&fg_adaptive_stage_ops, adaptive, name != NULL ? name : "adaptive",
                        out);
}

int fg_adaptive_of_stage(const fg_stage *stage, fg_adaptive **out) {
    if (stage == NULL || out == NULL || stage->ops != &fg_adaptive_stage_ops)
        return FG_EINVAL;
    *out = stage->state;
    return 0;
}
