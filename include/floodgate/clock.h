/*
 * floodgate/clock.h - where floodgate gets the time.
 *
 * Time in floodgate is a uint64_t count of nanoseconds on a monotonic clock;
 * only differences between readings mean anything. A chain reads its clock
 * once when a request enters (ctx->now_ns, shared by every stage) and once
 * when it exits (for the latency). The clock is a plain function pointer, so
 * an event loop can supply its cached loop time and tests can supply a fake
 * clock that moves only when told to.
 */
#ifndef FLOODGATE_CLOCK_H
#define FLOODGATE_CLOCK_H

#include <stdint.h>

#include "common.h"

FG_BEGIN_DECLS

/*
 * fg_clock - a clock: now(arg) returns nanoseconds; sleep(arg, ns) waits
 * that long on this clock. now must be callable from any thread at once and
 * should never go backwards as seen by one thread (floodgate tolerates it:
 * an earlier reading counts as no time elapsed). sleep may be NULL: then
 * waiting uses the real monotonic clock. A fg_clock with now == NULL means
 * "the default", the monotonic clock, for both.
 *
 * Waits happen where a stage asks the synchronous chain to delay a request
 * (a smoothing rate limiter); the fake clock's sleep simply advances it, so
 * such tests take no real time.
 */
typedef struct fg_clock {
    uint64_t (*now)(void *arg);            /* the reading in ns; NULL: the default clock */
    void *arg;                             /* passed to now and sleep */
    void (*sleep)(void *arg, uint64_t ns); /* wait ns; NULL: a real monotonic sleep */
} fg_clock;

/*
 * fg_clock_monotonic_now - CLOCK_MONOTONIC in nanoseconds. The arg is ignored.
 *
 * Thread-safety: MT-safe, lock-free.
 */
FG_API uint64_t fg_clock_monotonic_now(void *unused);

/*
 * fg_clock_monotonic - the default clock: reads CLOCK_MONOTONIC and sleeps
 * with clock_nanosleep on it.
 *
 * Thread-safety: MT-safe.
 */
FG_API fg_clock fg_clock_monotonic(void);

/*
 * fg_clock_fast - the cheapest monotonic clock this machine offers. On
 * x86-64 with an invariant TSC (CPUID 0x80000007, EDX bit 8) it reads the
 * TSC and scales it to nanoseconds with a multiplier calibrated once against
 * CLOCK_MONOTONIC: a few ns per reading instead of a vDSO call. Readings start
 * at CLOCK_MONOTONIC's value at calibration and may drift from it by a few
 * parts per million, so use one clock per chain and its limiters, never a
 * mix. A reading on a core whose TSC lags may be a few ns behind one taken
 * just before on another core; floodgate's stages treat an earlier reading
 * as no time elapsed. Elsewhere it is the monotonic clock. Sleeping on
 * either sleeps on CLOCK_MONOTONIC.
 *
 * The first call calibrates for about 10 ms; later calls return at once.
 * Returns: 1 with *out the TSC clock, 0 with *out the monotonic clock, or
 * FG_EINVAL when out is NULL.
 * Thread-safety: MT-safe (calibration runs once); the clock is MT-safe.
 */
FG_API int fg_clock_fast(fg_clock *out);

/*
 * fg_clock_read - read a clock; a NULL clock or one with now == NULL reads
 * the monotonic clock.
 *
 * Thread-safety: as the clock's now function; MT-safe for the built-in ones.
 */
FG_API uint64_t fg_clock_read(const fg_clock *clock);

/*
 * fg_clock_sleep - wait ns nanoseconds on a clock: its sleep function, or a
 * real monotonic sleep when it has none (or clock is NULL). A real sleep
 * interrupted by a signal resumes for the time that is left.
 *
 * Thread-safety: MT-safe; blocks the calling thread only.
 */
FG_API void fg_clock_sleep(const fg_clock *clock, uint64_t ns);

/*
 * fg_fake_clock - a clock for tests: it returns the value last set and moves
 * only by fg_fake_clock_set / fg_fake_clock_advance. Every time-based test
 * uses one instead of sleeping.
 */
typedef struct fg_fake_clock fg_fake_clock;

/*
 * fg_fake_clock_new - a fake clock reading start_ns.
 *
 * Returns: 0 and *out, or FG_EINVAL (out NULL) or FG_ENOMEM.
 * Ownership: the caller owns *out and frees it with fg_fake_clock_free, after
 * every chain or stage that reads it is gone.
 * Thread-safety: MT-safe.
 */
FG_API int fg_fake_clock_new(uint64_t start_ns, fg_fake_clock **out);

/*
 * fg_fake_clock_free - free a fake clock. NULL is ignored.
 * Thread-safety: not thread-safe: nobody may read the clock any more.
 */
FG_API void fg_fake_clock_free(fg_fake_clock *fake);

/*
 * fg_fake_clock_as_clock - the fg_clock that reads this fake clock, to pass
 * to a chain or stage. Sleeping on it advances it by the time slept.
 *
 * Ownership: borrows fake; the result is valid while fake lives.
 * Thread-safety: MT-safe.
 */
FG_API fg_clock fg_fake_clock_as_clock(fg_fake_clock *fake);

/*
 * fg_fake_clock_set - make the clock read ns from now on. Setting it back in
 * time is allowed (tests of clock anomalies need it); stages must tolerate it.
 * A NULL fake is ignored (as it is by advance; fg_fake_clock_now(NULL) is 0).
 *
 * Thread-safety: MT-safe; readers see either the old or the new value.
 */
FG_API void fg_fake_clock_set(fg_fake_clock *fake, uint64_t ns);

/*
 * fg_fake_clock_advance - move the clock forward by delta_ns, atomically.
 *
 * Returns: the new reading.
 * Thread-safety: MT-safe; concurrent advances all take effect.
 */
FG_API uint64_t fg_fake_clock_advance(fg_fake_clock *fake, uint64_t delta_ns);

/*
 * fg_fake_clock_now - the fake clock's reading (same as reading it through
 * fg_fake_clock_as_clock).
 *
 * Thread-safety: MT-safe.
 */
FG_API uint64_t fg_fake_clock_now(const fg_fake_clock *fake);

/* Handy constants for writing durations. */
#define FG_NS_PER_US UINT64_C(1000)
#define FG_NS_PER_MS UINT64_C(1000000)
#define FG_NS_PER_S  UINT64_C(1000000000)

FG_END_DECLS

#endif /* FLOODGATE_CLOCK_H */
