/*
 * tests/check_adaptive.c - the adaptive concurrency limit (fg_adaptive,
 * fg_stage_adaptive).
 *
 * The behaviour is tested against a simulated service in virtual time,
 * single-threaded and exactly reproducible: latency is flat (base) up to a
 * concurrency knee K and grows in proportion beyond it (base * n / K for n
 * requests in flight: pure queueing, no extra throughput), and a closed
 * loop of more clients than K keeps it saturated (a client re-issues as soon
 * as its request finishes, and retries a rejection 1 ms later). A fake
 * clock follows the simulation's events. On that service:
 *  - GRADIENT (probe) settles near its predicted equilibrium, the root of
 *    L = tolerance * K + sqrt(L) (57.6 for K = 40), within a stated number
 *    of samples, and stays in [0.5K, 1.5K];
 *  - a step of the base latency (x2) lowers it within a stated number of
 *    samples, and the next probe brings it back (the knee has not moved);
 *  - a larger step (x4) pins it at min_limit, which forces an early probe;
 *  - AIMD with a drop latency of 1.25 base saws between backoff and the
 *    point where latency crosses the threshold, and falls on the step;
 *  - the EWMA baseline behaves as documented: it reacts to the step, and it
 *    is not anchored (it climbs to the app-limited bound);
 *  - min_limit and max_limit hold at every sample.
 * Then: the exact limit under two real threads, the stage in a chain, the
 * option checks, the counters, and out-of-memory.
 *
 * Set FG_TEST_VERBOSE=1 to print the simulations' figures.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <floodgate.h>

#include "helpers.h"
#include "suites.h"

#define MS   FG_NS_PER_MS
#define T0   (UINT64_C(1000) * FG_NS_PER_S)
#define UNIT 1024 /* latencies are kept in units of 1.024 us */

/* Whether x is within one unit below want (what truncation to units does). */
#define NEAR(x, want) ((x) <= (want) && (x) + UNIT > (want))

static int verbose(void) {
    const char *v = getenv("FG_TEST_VERBOSE");
    return v != NULL && v[0] != '\0' && v[0] != '0';
}

/* ---- the simulated service ----------------------------------------------------------- */

#define SIM_MAX_CLIENTS 1024
#define SIM_MAX_SAMPLES 40000

typedef struct sim_event {
    uint64_t t, seq;
    uint32_t client;
    int done; /* 0: the client tries; 1: its request finishes */
    uint64_t permit, latency;
} sim_event;

typedef struct sim {
    fg_adaptive *a;
    fg_fake_clock *fc;
    uint32_t knee;
    uint64_t base_ns;
    uint64_t retry_ns;
    uint64_t seq;
    sim_event heap[SIM_MAX_CLIENTS]; /* one pending event per client */
    int nheap;
    uint64_t samples;                /* requests finished */
    uint32_t limit[SIM_MAX_SAMPLES]; /* the limit after each finished request */
    uint32_t max_in_flight;
    uint32_t lo_seen, hi_seen; /* the limit's range over every sample */
} sim;

static int ev_before(const sim_event *x, const sim_event *y) {
    return x->t < y->t || (x->t == y->t && x->seq < y->seq);
}

static void sim_push(sim *s, sim_event e) {
    int i = s->nheap++;
    e.seq = s->seq++;
    s->heap[i] = e;
    while (i > 0 && ev_before(&s->heap[i], &s->heap[(i - 1) / 2])) {
        sim_event tmp = s->heap[i];
        s->heap[i] = s->heap[(i - 1) / 2];
        s->heap[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
}

static sim_event sim_pop(sim *s) {
    sim_event top = s->heap[0];
    s->heap[0] = s->heap[--s->nheap];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->nheap && ev_before(&s->heap[l], &s->heap[m]))
            m = l;
        if (r < s->nheap && ev_before(&s->heap[r], &s->heap[m]))
            m = r;
        if (m == i)
            break;
        sim_event tmp = s->heap[i];
        s->heap[i] = s->heap[m];
        s->heap[m] = tmp;
        i = m;
    }
    return top;
}

/* A saturated service: `clients` closed-loop clients, knee K, base latency. */
static sim *sim_new(fg_adaptive_options *o, uint32_t clients, uint32_t knee,
                    uint64_t base_ns) {
    sim *s = calloc(1, sizeof(*s));
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_le(clients, SIM_MAX_CLIENTS);
    ck_assert_int_eq(fg_fake_clock_new(T0, &s->fc), 0);
    o->clock = fg_fake_clock_as_clock(s->fc);
    if (o->seed == 0)
        o->seed = 42;
    int rc = fg_adaptive_new(o, &s->a);
    ck_assert_msg(rc == 0, "fg_adaptive_new: %s", fg_err_name(rc));
    s->knee = knee;
    s->base_ns = base_ns;
    s->retry_ns = MS;
    s->lo_seen = UINT32_MAX;
    for (uint32_t c = 0; c < clients; c++)
        sim_push(s, (sim_event){T0, 0, c, 0, 0, 0});
    return s;
}

static void sim_free(sim *s) {
    fg_adaptive_free(s->a);
    fg_fake_clock_free(s->fc);
    free(s);
}

/* Run until `until` requests have finished in all; every finished request
 * records the limit after it. drop_every > 0 reports every such request
 * (by count of finished ones) as dropped. */
static void sim_run(sim *s, uint64_t until, uint64_t drop_every) {
    ck_assert_uint_le(until, SIM_MAX_SAMPLES);
    while (s->samples < until) {
        sim_event e = sim_pop(s);
        fg_fake_clock_set(s->fc, e.t);
        if (!e.done) {
            uint64_t permit;
            int rc = fg_adaptive_try_enter(s->a, &permit);
            if (rc == FG_EOVERLOADED) {
                sim_push(s, (sim_event){e.t + s->retry_ns, 0, e.client, 0, 0, 0});
                continue;
            }
            ck_assert_int_eq(rc, 0);
            uint32_t n = fg_adaptive_in_flight(s->a);
            s->max_in_flight = n > s->max_in_flight ? n : s->max_in_flight;
            uint64_t lat = s->base_ns * (n > s->knee ? n : s->knee) / s->knee;
            sim_push(s, (sim_event){e.t + lat, 0, e.client, 1, permit, lat});
        } else {
            int drop = drop_every != 0 && (s->samples + 1) % drop_every == 0;
            ck_assert_int_eq(fg_adaptive_exit(s->a, e.permit, e.latency, drop), 0);
            uint32_t lim = fg_adaptive_limit(s->a);
            s->limit[s->samples++] = lim;
            s->lo_seen = lim < s->lo_seen ? lim : s->lo_seen;
            s->hi_seen = lim > s->hi_seen ? lim : s->hi_seen;
            sim_push(s, (sim_event){e.t, 0, e.client, 0, 0, 0}); /* at once: saturated */
        }
    }
}

/* The samples after `from` until the limit stays within [lo, hi] through
 * sample `to` (exclusive); UINT64_MAX when it never settles there. */
static uint64_t settle(const sim *s, uint64_t from, uint64_t to, uint32_t lo, uint32_t hi) {
    uint64_t at = UINT64_MAX;
    for (uint64_t i = to; i-- > from;) {
        if (s->limit[i] < lo || s->limit[i] > hi)
            break;
        at = i;
    }
    return at == UINT64_MAX ? UINT64_MAX : at - from;
}

/* The first sample after `from` with the limit at or below `at_most`. */
static uint64_t first_at_most(const sim *s, uint64_t from, uint64_t to, uint32_t at_most) {
    for (uint64_t i = from; i < to; i++)
        if (s->limit[i] <= at_most)
            return i - from;
    return UINT64_MAX;
}

static void range_of(const sim *s, uint64_t from, uint64_t to, uint32_t *lo, uint32_t *hi,
                     double *mean) {
    double sum = 0;
    *lo = UINT32_MAX;
    *hi = 0;
    for (uint64_t i = from; i < to; i++) {
        *lo = s->limit[i] < *lo ? s->limit[i] : *lo;
        *hi = s->limit[i] > *hi ? s->limit[i] : *hi;
        sum += s->limit[i];
    }
    *mean = sum / (double)(to - from);
}

static void report(const char *what, const sim *s, uint64_t from, uint64_t to) {
    if (!verbose())
        return;
    uint32_t lo, hi;
    double mean;
    range_of(s, from, to, &lo, &hi, &mean);
    printf("adaptive sim %s: samples %llu..%llu limit min %u max %u mean %.2f\n", what,
           (unsigned long long)from, (unsigned long long)to, lo, hi, mean);
}

/* ---- GRADIENT on the simulated service ----------------------------------------------- */

#define KNEE    40u
#define CLIENTS 100u /* 2.5x the knee */
#define BASE    (10 * MS)

/* The equilibrium the formulas predict on this service: the limit at which
 * target = limit, i.e. L * (tolerance * K / L) + sqrt(L) = L. */
static double predicted_equilibrium(double tolerance, double k) {
    double l = tolerance * k;
    for (int i = 0; i < 100; i++)
        l = tolerance * k + sqrt(l);
    return l;
}

static fg_adaptive_options gradient_opts(void) {
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    o.probe_jitter = 0; /* probes exactly on schedule */
    return o;
}

/* Stated: from the first sample, the default GRADIENT enters [0.5K, 1.5K]
 * and stays there within 2,000 samples, and within +-3 of the predicted
 * equilibrium (57.6) within 2,000 samples too. (Measured: 546 samples to
 * the band, 605 to the equilibrium's +-3, then 57..58.) */
START_TEST(test_gradient_converges) {
    fg_adaptive_options o = gradient_opts();
    sim *s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 6000, 0);
    double eq = predicted_equilibrium(o.tolerance, KNEE);
    uint64_t band = settle(s, 0, 6000, KNEE / 2, KNEE * 3 / 2);
    uint64_t tight = settle(s, 0, 6000, (uint32_t)(eq - 3), (uint32_t)(eq + 3));
    if (verbose())
        printf("adaptive sim gradient: equilibrium %.2f, in [0.5K,1.5K] after %llu samples, "
               "within +-3 of it after %llu\n",
               eq, (unsigned long long)band, (unsigned long long)tight);
    report("gradient settled", s, 2000, 6000);
    ck_assert_msg(band <= 2000, "not in [%u, %u] for good after 2000 samples (%llu)", KNEE / 2,
                  KNEE * 3 / 2, (unsigned long long)band);
    ck_assert_msg(tight <= 2000, "not within 3 of %.1f after 2000 samples (%llu)", eq,
                  (unsigned long long)tight);
    /* The service was kept saturated: more clients than the limit. */
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(s->a, &st), 0);
    ck_assert_uint_gt(st.rejected, 0);
    ck_assert_uint_eq(st.probes, 1);
    ck_assert_uint_ge(st.rtt_noload_ns, BASE - UNIT); /* kept in 1.024 us units */
    ck_assert_uint_le(st.rtt_noload_ns, BASE);
    ck_assert_uint_le(s->max_in_flight, KNEE * 3 / 2);
    sim_free(s);
}
END_TEST

/* Stated: after the base latency doubles (at sample 4000), the limit is
 * below the knee within 300 samples and settles at the stale-baseline
 * equilibrium (L = sqrt(L) / (1 - tolerance / 2): 7.1) until the next
 * probe; that probe (probe_interval 5 s) measures the new base and the
 * limit returns to its old equilibrium band, since the knee has not moved.
 * (Measured: below K after 67 samples.) */
START_TEST(test_gradient_latency_step) {
    fg_adaptive_options o = gradient_opts();
    o.probe_interval_ns = 5 * FG_NS_PER_S;
    sim *s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 2000, 0);
    uint32_t before = fg_adaptive_limit(s->a);
    /* The first probe was at start; let the second one pass before the step. */
    sim_run(s, 4000, 0);
    before = s->limit[3999];
    s->base_ns = 2 * BASE;
    sim_run(s, 12000, 0);
    uint64_t below = first_at_most(s, 4000, 12000, KNEE);
    if (verbose())
        printf("adaptive sim gradient step: limit %u before, below K=%u after %llu samples\n",
               before, KNEE, (unsigned long long)below);
    report("gradient after step", s, 4000, 12000);
    ck_assert_msg(below <= 500, "limit not below K within 500 samples of the step (%llu)",
                  (unsigned long long)below);
    /* Then the probe: back in the old equilibrium band by the end. */
    double eq = predicted_equilibrium(o.tolerance, KNEE);
    uint64_t back = settle(s, 4000, 12000, (uint32_t)(eq - 3), (uint32_t)(eq + 3));
    if (verbose())
        printf("adaptive sim gradient step: back within +-3 of %.1f after %llu samples\n", eq,
               (unsigned long long)back);
    ck_assert_msg(back != UINT64_MAX, "never back near %.1f after the probe", eq);
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(s->a, &st), 0);
    ck_assert_uint_ge(st.probes, 2);
    ck_assert_uint_ge(st.rtt_noload_ns, 2 * BASE - UNIT);
    ck_assert_uint_le(st.rtt_noload_ns, 2 * BASE);
    sim_free(s);
}
END_TEST

/* A ten times larger knee (400, with 1000 clients): the same rules settle
 * near the predicted equilibrium (524) without oscillating, because a
 * window lasts at least one mean latency (here about 500 samples, not 50).
 * Stated: within +-5% of it for good within 20,000 samples. */
START_TEST(test_gradient_large_knee) {
    fg_adaptive_options o = gradient_opts();
    sim *s = sim_new(&o, 1000, 400, BASE);
    sim_run(s, 30000, 0);
    double eq = predicted_equilibrium(o.tolerance, 400);
    uint64_t at = settle(s, 0, 30000, (uint32_t)(eq * 0.95), (uint32_t)(eq * 1.05));
    if (verbose())
        printf(
            "adaptive sim gradient K=400: equilibrium %.1f, within 5%% after %llu samples\n",
            eq, (unsigned long long)at);
    report("gradient K=400 settled", s, 20000, 30000);
    ck_assert_msg(at <= 20000, "not within 5%% of %.1f after 20000 samples (%llu)", eq,
                  (unsigned long long)at);
    sim_free(s);
}
END_TEST

/* A latency step so large that the limit falls to min_limit: after 5
 * windows there it probes early (probe_interval is a minute) and recovers. */
START_TEST(test_gradient_stuck_at_min_reprobes) {
    fg_adaptive_options o = gradient_opts();
    sim *s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 3000, 0);
    s->base_ns = 4 * BASE;
    sim_run(s, 9000, 0);
    uint64_t at_min = first_at_most(s, 3000, 9000, o.min_limit);
    double eq = predicted_equilibrium(o.tolerance, KNEE);
    uint64_t back = settle(s, 3000, 9000, (uint32_t)(eq - 3), (uint32_t)(eq + 3));
    if (verbose())
        printf("adaptive sim gradient x4 step: at min after %llu samples, back near %.1f "
               "after %llu\n",
               (unsigned long long)at_min, eq, (unsigned long long)back);
    ck_assert_uint_ne(at_min, UINT64_MAX);
    ck_assert_uint_ne(back, UINT64_MAX);
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(s->a, &st), 0);
    ck_assert_uint_eq(st.probes, 2); /* the one at start and the early one */
    sim_free(s);
}
END_TEST

/* The EWMA baseline, as documented: it reacts to a latency step, but under
 * saturation it follows the queueing latency up, so the limit climbs until
 * the app-limited rule stops it: growth stops once the limit is above twice
 * the mean concurrency, which the 100 clients bound (measured: 223). */
START_TEST(test_gradient_ewma_documented) {
    fg_adaptive_options o = gradient_opts();
    o.noload = FG_ADAPTIVE_NOLOAD_EWMA;
    sim *s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 1500, 0);
    uint32_t before = fg_adaptive_limit(s->a);
    s->base_ns = 2 * BASE;
    sim_run(s, 1800, 0);
    uint32_t after = fg_adaptive_limit(s->a);
    sim_run(s, 12000, 0);
    uint32_t end = fg_adaptive_limit(s->a);
    if (verbose())
        printf("adaptive sim ewma: %u at 1500, %u 300 samples after the step, %u at 12000\n",
               before, after, end);
    ck_assert_uint_lt(after, before);
    ck_assert_uint_gt(end, 2 * KNEE);
    ck_assert_uint_le(end, 2 * CLIENTS + CLIENTS / 2); /* 2x, and one smoothed step past it */
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(s->a, &st), 0);
    ck_assert_uint_eq(st.probes, 0);
    sim_free(s);
}
END_TEST

/* ---- AIMD on the simulated service ---------------------------------------------------- */

static fg_adaptive_options aimd_opts(void) {
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    o.algo = FG_ADAPTIVE_AIMD;
    o.drop_latency_ns = BASE + BASE / 4; /* 12.5 ms: crossed above 1.25 K in flight */
    return o;
}

/* Stated: AIMD climbs from 20 by 1 per window and saws between the backoff
 * (0.9x) and the limit where latency crosses the drop latency (1.25K = 50):
 * in [0.5K, 1.5K] for good within 2,000 samples. (Measured: in band after
 * 0 samples, since 20 = 0.5K; saw-tooth 45..51.) */
START_TEST(test_aimd_converges) {
    fg_adaptive_options o = aimd_opts();
    sim *s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 8000, 0);
    uint64_t band = settle(s, 0, 8000, KNEE / 2, KNEE * 3 / 2);
    uint32_t lo, hi;
    double mean;
    range_of(s, 4000, 8000, &lo, &hi, &mean);
    report("aimd settled", s, 4000, 8000);
    ck_assert_uint_le(band, 2000);
    /* The saw-tooth straddles the drop point 1.25 K. */
    ck_assert_uint_le(lo, KNEE * 5 / 4);
    ck_assert_uint_ge(hi, KNEE * 5 / 4);
    ck_assert_uint_ge(lo, KNEE);
    ck_assert_uint_le(hi, KNEE * 3 / 2);
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(s->a, &st), 0);
    ck_assert_uint_gt(st.drops, 0);
    sim_free(s);
}
END_TEST

/* Stated: after the base latency doubles every sample is over the drop
 * latency; the limit halves within 400 samples and reaches min_limit. */
START_TEST(test_aimd_latency_step) {
    fg_adaptive_options o = aimd_opts();
    sim *s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 4000, 0);
    uint32_t before = s->limit[3999];
    s->base_ns = 2 * BASE;
    sim_run(s, 8000, 0);
    uint64_t half = first_at_most(s, 4000, 8000, before / 2);
    uint64_t floor = first_at_most(s, 4000, 8000, o.min_limit);
    if (verbose())
        printf("adaptive sim aimd step: limit %u before, half after %llu samples, min after "
               "%llu\n",
               before, (unsigned long long)half, (unsigned long long)floor);
    ck_assert_uint_le(half, 400);
    ck_assert_uint_ne(floor, UINT64_MAX);
    sim_free(s);
}
END_TEST

/* Drops reported by the caller (failures) back AIMD off too, and it
 * climbs again once they stop. */
START_TEST(test_aimd_reported_drops) {
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    o.algo = FG_ADAPTIVE_AIMD; /* no drop latency: only reported drops */
    o.initial_limit = 60;
    sim *s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 2000, 10); /* every 10th request fails */
    uint32_t low = fg_adaptive_limit(s->a);
    sim_run(s, 5000, 0);
    uint32_t high = fg_adaptive_limit(s->a);
    ck_assert_uint_eq(low, o.min_limit);
    ck_assert_uint_gt(high, low + 20);
    sim_free(s);
}
END_TEST

/* ---- bounds --------------------------------------------------------------------------- */

/* max_limit below the knee caps GRADIENT; min_limit floors it on a step. */
START_TEST(test_bounds_hold) {
    fg_adaptive_options o = gradient_opts();
    o.max_limit = 30;
    sim *s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 3000, 0);
    ck_assert_uint_le(s->hi_seen, 30);
    ck_assert_uint_eq(fg_adaptive_limit(s->a), 30);
    ck_assert_uint_le(s->max_in_flight, 30);
    sim_free(s);

    o = gradient_opts();
    o.min_limit = 10;
    o.initial_limit = 20;
    s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 2000, 0);
    s->base_ns = 8 * BASE;
    sim_run(s, 5000, 0);
    ck_assert_uint_ge(s->lo_seen, 10);
    sim_free(s);

    o = aimd_opts();
    o.min_limit = 5;
    o.initial_limit = 5;
    o.max_limit = 35;
    s = sim_new(&o, CLIENTS, KNEE, BASE);
    sim_run(s, 3000, 0);
    ck_assert_uint_le(s->hi_seen, 35);
    s->base_ns = 4 * BASE;
    sim_run(s, 5000, 0);
    ck_assert_uint_ge(s->lo_seen, 5);
    ck_assert_uint_eq(fg_adaptive_limit(s->a), 5);
    sim_free(s);
}
END_TEST

/* A window waits for window_ns as well as for its samples. */
START_TEST(test_window_time) {
    fg_fake_clock *fc;
    fg_adaptive *a;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    o.algo = FG_ADAPTIVE_AIMD;
    o.window_samples = 4;
    o.window_ns = 100 * MS;
    o.min_limit = 1;
    o.initial_limit = 12;
    o.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    fg_adaptive_stats st;
    uint64_t p[8];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 8; i++)
            ck_assert_int_eq(fg_adaptive_try_enter(a, &p[i]), 0);
        for (int i = 0; i < 8; i++)
            ck_assert_int_eq(fg_adaptive_exit(a, p[i], 50 * MS, 0), 0);
    }
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_uint_eq(st.windows, 0); /* 24 samples, no time */
    ck_assert_uint_eq(st.samples, 24);
    fg_fake_clock_advance(fc, 100 * MS);
    /* The next check comes at a multiple of 4 samples. */
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(fg_adaptive_try_enter(a, &p[i]), 0);
        ck_assert_int_eq(fg_adaptive_exit(a, p[i], 50 * MS, 0), 0);
    }
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_uint_eq(st.windows, 1);
    ck_assert(NEAR(st.rtt_window_ns, 50 * MS));
    /* Used: 28 requests of 50 ms in 100 ms is a mean concurrency of 14,
     * at least half of 12 (Little's law). So +1. */
    ck_assert_uint_eq(st.limit, 13);
    fg_adaptive_free(a);
    fg_fake_clock_free(fc);
}
END_TEST

/* ---- the API -------------------------------------------------------------------------- */

/* A fixed limit (AIMD with min == max): exactly `limit` slots. */
static fg_adaptive *fixed(uint32_t limit) {
    fg_adaptive *a;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    o.algo = FG_ADAPTIVE_AIMD;
    o.min_limit = o.initial_limit = o.max_limit = limit;
    o.window_samples = 8;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    return a;
}

START_TEST(test_enter_exit_counts) {
    fg_adaptive *a = fixed(3);
    uint64_t p[4];
    ck_assert_uint_eq(fg_adaptive_limit(a), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fg_adaptive_try_enter(a, &p[i]), 0);
    ck_assert_uint_eq(fg_adaptive_in_flight(a), 3);
    ck_assert_int_eq(fg_adaptive_try_enter(a, &p[3]), FG_EOVERLOADED);
    ck_assert_int_eq(fg_adaptive_exit(a, p[0], 5 * MS, 0), 0);
    ck_assert_int_eq(fg_adaptive_try_enter(a, &p[0]), 0);
    ck_assert_int_eq(fg_adaptive_exit(a, p[0], 5 * MS, 1), 0);
    ck_assert_int_eq(fg_adaptive_release(a, p[1]), 0);
    ck_assert_int_eq(fg_adaptive_exit(a, p[2], 5 * MS, 0), 0);
    ck_assert_uint_eq(fg_adaptive_in_flight(a), 0);
    /* More exits than enters: refused, nothing changes. */
    ck_assert_int_eq(fg_adaptive_exit(a, 0, MS, 0), FG_ESTATE);
    ck_assert_int_eq(fg_adaptive_release(a, 0), FG_ESTATE);
    ck_assert_uint_eq(fg_adaptive_in_flight(a), 0);
    ck_assert_int_eq(fg_adaptive_try_enter(a, &p[0]), 0);
    ck_assert_int_eq(fg_adaptive_exit(a, p[0], MS, 0), 0);

    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_uint_eq(st.admitted, 5);
    ck_assert_uint_eq(st.rejected, 1);
    ck_assert_uint_eq(st.samples, 4);
    ck_assert_uint_eq(st.drops, 1);
    ck_assert_uint_eq(st.released, 1);
    ck_assert_uint_eq(st.discarded, 0);
    ck_assert_uint_eq(st.in_flight, 0);
    ck_assert_uint_eq(st.limit, 3);
    ck_assert_int_eq(st.probing, 0);
    fg_adaptive_free(a);

    /* NULLs. */
    uint64_t permit;
    ck_assert_int_eq(fg_adaptive_try_enter(NULL, &permit), FG_EINVAL);
    a = fixed(1);
    ck_assert_int_eq(fg_adaptive_try_enter(a, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_adaptive_exit(NULL, 0, 0, 0), FG_EINVAL);
    ck_assert_int_eq(fg_adaptive_release(NULL, 0), FG_EINVAL);
    ck_assert_int_eq(fg_adaptive_stats_get(a, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_adaptive_stats_get(NULL, &st), FG_EINVAL);
    ck_assert_uint_eq(fg_adaptive_limit(NULL), 0);
    ck_assert_uint_eq(fg_adaptive_in_flight(NULL), 0);
    fg_adaptive_free(a);
    fg_adaptive_free(NULL);
}
END_TEST

/* The default starts with a probe at min_limit; a request admitted before a
 * probe does not count in it. */
START_TEST(test_probe_start_and_stragglers) {
    fg_fake_clock *fc;
    fg_adaptive *a;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    o.clock = fg_fake_clock_as_clock(fc);
    o.probe_samples = 4;
    o.window_samples = 4;
    o.probe_interval_ns = FG_NS_PER_S;
    o.probe_jitter = 0;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_int_eq(st.probing, 1);
    ck_assert_uint_eq(st.limit, 3);
    ck_assert_uint_eq(st.probes, 1);
    /* The probe: 4 samples of 2 ms. */
    uint64_t p[20];
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(fg_adaptive_try_enter(a, &p[0]), 0);
        ck_assert_int_eq(fg_adaptive_exit(a, p[0], 2 * MS, 0), 0);
    }
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_int_eq(st.probing, 0);
    ck_assert(NEAR(st.rtt_noload_ns, 2 * MS));
    ck_assert_uint_eq(st.limit, 20);
    /* Hold 12 slots across the next probe (due after 1 s). */
    for (int i = 0; i < 12; i++)
        ck_assert_int_eq(fg_adaptive_try_enter(a, &p[i]), 0);
    fg_fake_clock_advance(fc, 2 * FG_NS_PER_S);
    uint64_t q;
    for (int i = 0; i < 4; i++) { /* one window: it closes, and the probe starts */
        ck_assert_int_eq(fg_adaptive_try_enter(a, &q), 0);
        ck_assert_int_eq(fg_adaptive_exit(a, q, 2 * MS, 0), 0);
    }
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_int_eq(st.probing, 1);
    ck_assert_uint_eq(st.limit, 3);
    ck_assert_int_eq(fg_adaptive_try_enter(a, &q), FG_EOVERLOADED); /* 12 in flight */
    /* The 12 stragglers finish slowly: discarded, the probe still open. */
    for (int i = 0; i < 12; i++)
        ck_assert_int_eq(fg_adaptive_exit(a, p[i], 500 * MS, 0), 0);
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_uint_eq(st.discarded, 12);
    ck_assert_int_eq(st.probing, 1);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(fg_adaptive_try_enter(a, &q), 0);
        ck_assert_int_eq(fg_adaptive_exit(a, q, 3 * MS, 0), 0);
    }
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_int_eq(st.probing, 0);
    ck_assert(NEAR(st.rtt_noload_ns, 3 * MS)); /* the stragglers' 500 ms left out */
    ck_assert_uint_eq(st.probes, 2);
    ck_assert_uint_eq(st.admitted, 4 + 12 + 4 + 4);
    ck_assert_uint_eq(st.samples + st.discarded, st.admitted);
    fg_adaptive_free(a);
    fg_fake_clock_free(fc);
}
END_TEST

/* Options outside their ranges: one change each from the defaults. */
static void bad_opt(fg_adaptive_options *o, int i) {
    switch (i) {
    case 0:
        o->algo = (fg_adaptive_algo)2;
        break;
    case 1:
        o->noload = (fg_adaptive_noload)2;
        break;
    case 2:
        o->min_limit = 0;
        break;
    case 3:
        o->min_limit = 30;
        break; /* above initial 20 */
    case 4:
        o->initial_limit = 2000;
        break;
    case 5:
        o->max_limit = FG_ADAPTIVE_LIMIT_MAX + 1, o->initial_limit = 20;
        break;
    case 6:
        o->max_limit = 10;
        break; /* below initial */
    case 7:
        o->window_samples = 0;
        break;
    case 8:
        o->window_samples = FG_ADAPTIVE_SAMPLES_MAX + 1;
        break;
    case 9:
        o->probe_samples = 0;
        break;
    case 10:
        o->probe_samples = FG_ADAPTIVE_SAMPLES_MAX + 1;
        break;
    case 11:
        o->noload_samples = 0;
        break;
    case 12:
        o->increase = 0;
        break;
    case 13:
        o->tolerance = 0.99;
        break;
    case 14:
        o->tolerance = NAN;
        break;
    case 15:
        o->smoothing = 0;
        break;
    case 16:
        o->smoothing = 1.01;
        break;
    case 17:
        o->smoothing = NAN;
        break;
    case 18:
        o->probe_jitter = -0.1;
        break;
    case 19:
        o->probe_jitter = 1.5;
        break;
    case 20:
        o->backoff_ratio = 0.49;
        break;
    case 21:
        o->backoff_ratio = 1.0;
        break;
    case 22:
        o->backoff_ratio = NAN;
        break;
    case 23:
        o->probe_interval_ns = 0;
        break;
    case 24:
        o->tolerance = INFINITY;
        break;
    default:
        ck_abort_msg("no bad option %d", i);
    }
}
#define NBAD 25

START_TEST(test_bad_options) {
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    fg_adaptive *a = (fg_adaptive *)&o; /* must stay unchanged */
    bad_opt(&o, _i);
    ck_assert_int_eq(fg_adaptive_new(&o, &a), FG_EINVAL);
    ck_assert_ptr_eq(a, (fg_adaptive *)&o);
}
END_TEST

START_TEST(test_good_edges) {
    fg_adaptive *a;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    ck_assert_int_eq(fg_adaptive_new(NULL, &a), FG_EINVAL);
    ck_assert_int_eq(fg_adaptive_new(&o, NULL), FG_EINVAL);
    /* The defaults, and each range's inclusive ends. */
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    fg_adaptive_free(a);
    o.min_limit = o.initial_limit = 1;
    o.max_limit = FG_ADAPTIVE_LIMIT_MAX;
    o.window_samples = o.probe_samples = FG_ADAPTIVE_SAMPLES_MAX;
    o.tolerance = 1.0;
    o.smoothing = 1.0;
    o.probe_jitter = 1.0;
    o.backoff_ratio = 0.5;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    fg_adaptive_free(a);
    /* probe_interval_ns only matters with PROBE. */
    o = (fg_adaptive_options)FG_ADAPTIVE_OPTIONS_INIT;
    o.probe_interval_ns = 0;
    o.algo = FG_ADAPTIVE_AIMD;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    ck_assert_uint_eq(fg_adaptive_limit(a), 20); /* no probe: initial_limit */
    fg_adaptive_free(a);
    o.algo = FG_ADAPTIVE_GRADIENT;
    o.noload = FG_ADAPTIVE_NOLOAD_EWMA;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    ck_assert_uint_eq(fg_adaptive_limit(a), 20);
    fg_adaptive_free(a);
}
END_TEST

START_TEST(test_out_of_memory) {
    fg_adaptive *a = NULL;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    th_alloc_reset();
    ck_assert_int_eq(fg_set_alloc_funcs(th_count_malloc, th_count_free), 0);
    th_alloc.fail_all = 1;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), FG_ENOMEM);
    ck_assert_ptr_null(a);
    th_alloc.fail_all = 0;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    fg_stage *st = NULL;
    th_alloc.fail_all = 1;
    ck_assert_int_eq(fg_stage_adaptive(a, NULL, &st), FG_ENOMEM);
    th_alloc.fail_all = 0;
    fg_adaptive_free(a);
    ck_assert_int_eq(th_alloc.allocs, th_alloc.frees);
}
END_TEST

/* ---- the stage ------------------------------------------------------------------------ */

static int fail_handler(fg_ctx *ctx, void *arg) {
    (void)ctx;
    return *(int *)arg;
}

/* A later stage that rejects with the code in its state. */
static int reject_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)ctx;
    (void)slot;
    return *(int *)state;
}
static const fg_stage_ops reject_ops = {"reject", reject_enter, NULL, NULL};

START_TEST(test_stage) {
    fg_fake_clock *fc;
    fg_adaptive *a;
    fg_chain *chain;
    fg_stage *st = NULL, *rej = NULL;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    fg_chain_options co = FG_CHAIN_OPTIONS_INIT;
    int reject_code = 0, handler_rc = 0;

    ck_assert_int_eq(fg_fake_clock_new(T0, &fc), 0);
    o.algo = FG_ADAPTIVE_AIMD;
    o.min_limit = o.initial_limit = o.max_limit = 2;
    o.drop_on_failure = 0;
    o.clock = fg_fake_clock_as_clock(fc);
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    co.clock = o.clock;
    ck_assert_int_eq(fg_chain_new(&co, &chain), 0);
    ck_assert_int_eq(fg_stage_adaptive(NULL, "x", &st), FG_EINVAL);
    ck_assert_int_eq(fg_stage_adaptive(a, "x", NULL), FG_EINVAL);
    ck_assert_int_eq(fg_stage_adaptive(a, NULL, &st), 0);
    ck_assert_str_eq(fg_stage_kind(st), "adaptive");
    ck_assert_str_eq(fg_stage_name(st), "adaptive");
    fg_adaptive *back = NULL;
    ck_assert_int_eq(fg_adaptive_of_stage(st, &back), 0);
    ck_assert_ptr_eq(back, a);
    ck_assert_int_eq(fg_adaptive_of_stage(NULL, &back), FG_EINVAL);
    ck_assert_int_eq(fg_adaptive_of_stage(st, NULL), FG_EINVAL);
    ck_assert_int_eq(fg_stage_new(&reject_ops, &reject_code, "later", &rej), 0);
    ck_assert_int_eq(fg_adaptive_of_stage(rej, &back), FG_EINVAL);
    ck_assert_int_eq(fg_chain_use(chain, st), 0);
    ck_assert_int_eq(fg_chain_use(chain, rej), 0);

    /* Two admitted through the split API fill the limit; a third is refused. */
    fg_ctx c1, c2, c3;
    th_ctx_new(&c1);
    th_ctx_new(&c2);
    th_ctx_new(&c3);
    ck_assert_int_eq(fg_chain_enter(chain, &c1), 0);
    ck_assert_int_eq(fg_chain_enter(chain, &c2), 0);
    ck_assert_int_eq(fg_chain_enter(chain, &c3), FG_EOVERLOADED);
    ck_assert_ptr_eq(c3.rejected_by, st);
    fg_fake_clock_advance(fc, 7 * MS);
    ck_assert_int_eq(fg_chain_exit(chain, &c1, 0), 0);
    ck_assert_int_eq(fg_chain_exit(chain, &c2, FG_EHANDLER), 0); /* not a drop (option 0) */
    fg_adaptive_stats s;
    ck_assert_int_eq(fg_adaptive_stats_get(a, &s), 0);
    ck_assert_uint_eq(s.samples, 2);
    ck_assert_uint_eq(s.drops, 0);
    ck_assert_uint_eq(s.rejected, 1);
    ck_assert_uint_eq(s.in_flight, 0);

    /* A timed-out handler is a drop, whatever drop_on_failure says. */
    handler_rc = FG_ETIMEDOUT;
    th_ctx_new(&c1);
    ck_assert_int_eq(fg_chain_call(chain, &c1, fail_handler, &handler_rc), FG_ETIMEDOUT);
    ck_assert_int_eq(fg_adaptive_stats_get(a, &s), 0);
    ck_assert_uint_eq(s.samples, 3);
    ck_assert_uint_eq(s.drops, 1);

    /* A later stage's rejection only releases the slot... */
    reject_code = FG_ELIMITED;
    th_ctx_new(&c1);
    ck_assert_int_eq(fg_chain_call(chain, &c1, th_ok_handler, NULL), FG_ELIMITED);
    ck_assert_int_eq(fg_adaptive_stats_get(a, &s), 0);
    ck_assert_uint_eq(s.samples, 3);
    ck_assert_uint_eq(s.released, 1);
    ck_assert_uint_eq(s.in_flight, 0);
    /* ...unless it is a timeout: a drop sample. */
    reject_code = FG_ETIMEDOUT;
    th_ctx_new(&c1);
    ck_assert_int_eq(fg_chain_call(chain, &c1, th_ok_handler, NULL), FG_ETIMEDOUT);
    ck_assert_int_eq(fg_adaptive_stats_get(a, &s), 0);
    ck_assert_uint_eq(s.samples, 4);
    ck_assert_uint_eq(s.drops, 2);
    ck_assert_uint_eq(s.admitted, 5);
    ck_assert_uint_eq(s.in_flight, 0);
    fg_chain_free(chain);
    fg_adaptive_free(a);
    fg_fake_clock_free(fc);
}
END_TEST

/* drop_on_failure (the default): any failed handler is a drop. */
START_TEST(test_stage_failure_drops) {
    fg_adaptive *a;
    fg_chain *chain;
    fg_stage *st;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    o.algo = FG_ADAPTIVE_AIMD;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    ck_assert_int_eq(fg_chain_new(NULL, &chain), 0);
    ck_assert_int_eq(fg_stage_adaptive(a, "ac", &st), 0);
    ck_assert_int_eq(fg_chain_use(chain, st), 0);
    int rc = FG_EHANDLER;
    fg_ctx ctx;
    th_ctx_new(&ctx);
    ck_assert_int_eq(fg_chain_call(chain, &ctx, fail_handler, &rc), FG_EHANDLER);
    fg_adaptive_stats s;
    ck_assert_int_eq(fg_adaptive_stats_get(a, &s), 0);
    ck_assert_uint_eq(s.drops, 1);
    fg_chain_free(chain);
    fg_adaptive_free(a);
}
END_TEST

/* ---- two real threads ----------------------------------------------------------------- */

#define HOLD 3 /* slots each thread tries to hold at once */

typedef struct race {
    fg_adaptive *a;
    uint32_t active; /* admitted and not yet exited, counted by the test */
    uint32_t max_active;
    uint64_t iters;
    uint64_t admitted;
    uint64_t errors; /* exits that did not return 0 */
} race;

static void *race_main(void *arg) {
    race *r = arg;
    uint64_t seed = (uint64_t)(uintptr_t)&seed | 1;
    uint64_t permits[HOLD];
    for (uint64_t it = 0; it < r->iters; it++) {
        int held = 0;
        for (int k = 0; k < HOLD; k++) {
            if (fg_adaptive_try_enter(r->a, &permits[held]) != 0)
                continue;
            held++;
            uint32_t now = __atomic_add_fetch(&r->active, 1, __ATOMIC_SEQ_CST);
            uint32_t m = __atomic_load_n(&r->max_active, __ATOMIC_SEQ_CST);
            while (now > m && !__atomic_compare_exchange_n(&r->max_active, &m, now, 0,
                                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                ;
        }
        __atomic_add_fetch(&r->admitted, (uint64_t)held, __ATOMIC_RELAXED);
        for (int k = 0; k < held; k++) {
            /* Leave the count before giving the slot back: active <= in flight. */
            __atomic_sub_fetch(&r->active, 1, __ATOMIC_SEQ_CST);
            uint64_t lat = 1000 + th_rng_below(&seed, 4000);
            if (fg_adaptive_exit(r->a, permits[k], lat, th_rng_below(&seed, 6) == 0) != 0)
                __atomic_add_fetch(&r->errors, 1,
                                   __ATOMIC_RELAXED); /* Check asserts on main only */
        }
    }
    return NULL;
}

static void race_run(fg_adaptive *a, uint64_t iters, race *r) {
    pthread_t t[2];
    memset(r, 0, sizeof(*r));
    r->a = a;
    r->iters = iters;
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, race_main, r), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(t[i], NULL), 0);
    ck_assert_uint_eq(r->errors, 0);
}

/* A fixed limit of 4 with two threads each grabbing up to 3: never more
 * than 4 held, every exit accounted, and every try either admitted or
 * refused (how many are refused depends on how the threads overlap, which
 * the scheduler decides: a loaded machine may run them one after the other). */
START_TEST(test_threads_fixed_limit) {
    fg_adaptive *a = fixed(4);
    race r;
    race_run(a, 100000, &r);
    ck_assert_uint_le(r.max_active, 4);
    ck_assert_uint_eq(fg_adaptive_in_flight(a), 0);
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_uint_eq(st.admitted, r.admitted);
    ck_assert_uint_eq(st.samples, r.admitted);
    ck_assert_uint_eq(st.admitted + st.rejected, 2u * 100000u * HOLD);
    fg_adaptive_free(a);
}
END_TEST

/* A moving limit (AIMD between 1 and 5, a sixth of the requests dropped):
 * never more in flight than max_limit, the limit did move, and the
 * counters add up. */
START_TEST(test_threads_moving_limit) {
    fg_adaptive *a;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    o.algo = FG_ADAPTIVE_AIMD;
    o.min_limit = 1;
    o.initial_limit = 5;
    o.max_limit = 5;
    o.window_samples = 8;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    race r;
    race_run(a, 100000, &r);
    ck_assert_uint_le(r.max_active, 5);
    ck_assert_uint_eq(fg_adaptive_in_flight(a), 0);
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_uint_eq(st.admitted, r.admitted);
    ck_assert_uint_gt(st.windows, 0);
    ck_assert_uint_gt(st.limit_changes, 0);
    ck_assert_uint_ge(st.limit, 1);
    ck_assert_uint_le(st.limit, 5);
    fg_adaptive_free(a);
}
END_TEST

/* GRADIENT under two threads (probes included): clean under TSAN. */
START_TEST(test_threads_gradient) {
    fg_adaptive *a;
    fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT;
    o.window_samples = 16;
    o.probe_samples = 8;
    o.probe_interval_ns = FG_NS_PER_MS;
    ck_assert_int_eq(fg_adaptive_new(&o, &a), 0);
    race r;
    race_run(a, 50000, &r);
    ck_assert_uint_le(r.max_active, o.max_limit);
    ck_assert_uint_eq(fg_adaptive_in_flight(a), 0);
    fg_adaptive_stats st;
    ck_assert_int_eq(fg_adaptive_stats_get(a, &st), 0);
    ck_assert_uint_eq(st.admitted, r.admitted);
    ck_assert_uint_gt(st.windows, 0);
    fg_adaptive_free(a);
}
END_TEST

Suite *fg_suite_adaptive(void) {
    Suite *s = suite_create("adaptive");
    TCase *tc = tcase_create("simulation");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_gradient_converges);
    tcase_add_test(tc, test_gradient_latency_step);
    tcase_add_test(tc, test_gradient_large_knee);
    tcase_add_test(tc, test_gradient_stuck_at_min_reprobes);
    tcase_add_test(tc, test_gradient_ewma_documented);
    tcase_add_test(tc, test_aimd_converges);
    tcase_add_test(tc, test_aimd_latency_step);
    tcase_add_test(tc, test_aimd_reported_drops);
    tcase_add_test(tc, test_bounds_hold);
    tcase_add_test(tc, test_window_time);
    suite_add_tcase(s, tc);

    tc = tcase_create("api");
    tcase_add_test(tc, test_enter_exit_counts);
    tcase_add_test(tc, test_probe_start_and_stragglers);
    tcase_add_loop_test(tc, test_bad_options, 0, NBAD);
    tcase_add_test(tc, test_good_edges);
    tcase_add_checked_fixture(tc, NULL, th_alloc_teardown);
    tcase_add_test(tc, test_out_of_memory);
    tcase_add_test(tc, test_stage);
    tcase_add_test(tc, test_stage_failure_drops);
    suite_add_tcase(s, tc);

    tc = tcase_create("threads");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_threads_fixed_limit);
    tcase_add_test(tc, test_threads_moving_limit);
    tcase_add_test(tc, test_threads_gradient);
    suite_add_tcase(s, tc);
    return s;
}
