/*
 * lib/clock_fast.c - fg_clock_fast: the invariant TSC as a nanosecond clock.
 *
 * CLOCK_MONOTONIC through the vDSO costs tens of ns; RDTSC costs a few. When
 * the CPU promises a TSC that ticks at a constant rate in every power state
 * (invariant TSC), we pair one TSC reading with one CLOCK_MONOTONIC reading,
 * wait ~10 ms, pair again, and derive a 32.32 fixed-point ns-per-tick
 * multiplier. docs/adr/0003-fast-clock.md explains the trade-offs.
 */
#include <pthread.h>
#include <time.h>

#include "floodgate/clock.h"
#include "floodgate/error.h"

#include "gcra.h" /* fg_u128 */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define FG_HAVE_TSC 1
#endif

static struct {
    uint64_t tsc0;
    uint64_t ns0;
    uint64_t mult; /* ns per tick, 32.32 fixed point */
    int ok;
} fg_tsc;

static pthread_once_t fg_tsc_once = PTHREAD_ONCE_INIT;

#ifdef FG_HAVE_TSC
static uint64_t fg_rdtsc(void) {
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static int fg_tsc_invariant(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0x80000000u, &a, &b, &c, &d) || a < 0x80000007u)
        return 0;
    if (!__get_cpuid(0x80000007u, &a, &b, &c, &d))
        return 0;
    return (int)((d >> 8) & 1u);
}

/* One (tsc, ns) pair: of a few tries, the one with the tightest bracket of
 * CLOCK_MONOTONIC readings around the TSC read, so preemption between the
 * reads cannot skew the calibration. */
static void fg_tsc_pair(uint64_t *tsc, uint64_t *ns) {
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 16; i++) {
        uint64_t a = fg_clock_monotonic_now(NULL);
        uint64_t t = fg_rdtsc();
        uint64_t b = fg_clock_monotonic_now(NULL);
        if (b - a < best) {
            best = b - a;
            *tsc = t;
            *ns = a + (b - a) / 2;
        }
    }
}

static void fg_tsc_calibrate(void) {
    if (!fg_tsc_invariant())
        return;
    uint64_t t0, n0, t1, n1;
    fg_tsc_pair(&t0, &n0);
    struct timespec ten_ms = {0, 10000000L};
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ten_ms, &ten_ms) != 0) {
    }
    fg_tsc_pair(&t1, &n1);
    if (t1 <= t0 || n1 <= n0)
        return; /* a TSC that did not move: do not trust it */
    fg_tsc.mult = (uint64_t)(((fg_u128)(n1 - n0) << 32) / (t1 - t0));
    fg_tsc.tsc0 = t1;
    fg_tsc.ns0 = n1;
    fg_tsc.ok = fg_tsc.mult != 0;
}

static uint64_t fg_tsc_now(void *unused) {
    (void)unused;
    uint64_t t = fg_rdtsc();
    /* Another core's TSC may lag tsc0 by a few ticks: clamp, never wrap. */
    uint64_t dt = t > fg_tsc.tsc0 ? t - fg_tsc.tsc0 : 0;
    return fg_tsc.ns0 + (uint64_t)(((fg_u128)dt * fg_tsc.mult) >> 32);
}

static void fg_tsc_sleep(void *unused, uint64_t ns) {
    (void)unused;
    fg_clock_sleep(NULL, ns);
}
#else
static void fg_tsc_calibrate(void) {}
#endif

int fg_clock_fast(fg_clock *out) {
    if (out == NULL)
        return FG_EINVAL;
    *out = fg_clock_monotonic();
    if (pthread_once(&fg_tsc_once, fg_tsc_calibrate) != 0)
        return 0;
#ifdef FG_HAVE_TSC
    if (fg_tsc.ok) {
        out->now = fg_tsc_now;
        out->arg = NULL;
        out->sleep = fg_tsc_sleep;
        return 1;
    }
#endif
    return 0;
}
