/*
 * lib/clock.c - the monotonic clock and the fake clock for tests.
 */
#include <errno.h>
#include <time.h>

#include "floodgate/clock.h"
#include "floodgate/error.h"

#include "alloc.h"
#include "atomic.h"

uint64_t fg_clock_monotonic_now(void *unused) {
    (void)unused;
    struct timespec ts;
    /* CLOCK_MONOTONIC cannot fail with a valid pointer on Linux; if it ever
     * did, ts is zeroed so callers see time 0 rather than garbage. */
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * FG_NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void fg_clock_monotonic_sleep(void *unused, uint64_t ns) {
    (void)unused;
    struct timespec left = {(time_t)(ns / FG_NS_PER_S), (long)(ns % FG_NS_PER_S)};
    /* clock_nanosleep returns the remaining time after a signal; go on
     * sleeping for it so the caller's wait is never cut short. */
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &left, &left) == EINTR) {
    }
}

fg_clock fg_clock_monotonic(void) {
    fg_clock c = {fg_clock_monotonic_now, NULL, fg_clock_monotonic_sleep};
    return c;
}

void fg_clock_sleep(const fg_clock *clock, uint64_t ns) {
    if (ns == 0)
        return;
    if (clock != NULL && clock->now != NULL && clock->sleep != NULL)
        clock->sleep(clock->arg, ns);
    else
        fg_clock_monotonic_sleep(NULL, ns);
}

uint64_t fg_clock_read(const fg_clock *clock) {
    if (clock == NULL || clock->now == NULL)
        return fg_clock_monotonic_now(NULL);
    return clock->now(clock->arg);
}

/* The fake clock is one 64-bit word; readers and writers use atomics so a
 * test may move it while other threads read it. */
struct fg_fake_clock {
    uint64_t now_ns;
};

static uint64_t fg_fake_clock_read(void *arg) {
    return fg__load_u64(&((struct fg_fake_clock *)arg)->now_ns);
}

int fg_fake_clock_new(uint64_t start_ns, fg_fake_clock **out) {
    if (out == NULL)
        return FG_EINVAL;
    fg_fake_clock *fake = fg__malloc(sizeof(*fake));
    if (fake == NULL)
        return FG_ENOMEM;
    fake->now_ns = start_ns;
    *out = fake;
    return 0;
}

void fg_fake_clock_free(fg_fake_clock *fake) { fg__free(fake); }

static void fg_fake_clock_sleep(void *arg, uint64_t ns) {
    fg__faa_u64(&((struct fg_fake_clock *)arg)->now_ns, ns);
}

fg_clock fg_fake_clock_as_clock(fg_fake_clock *fake) {
    fg_clock c = {fg_fake_clock_read, fake, fg_fake_clock_sleep};
    return c;
}

/* A NULL fake clock is a caller bug; it is ignored (and reads 0) rather
 * than crashing a test harness. */
void fg_fake_clock_set(fg_fake_clock *fake, uint64_t ns) {
    if (fake)
        fg__store_u64(&fake->now_ns, ns);
}

uint64_t fg_fake_clock_advance(fg_fake_clock *fake, uint64_t delta_ns) {
    if (fake == NULL)
        return 0;
    return fg__faa_u64(&fake->now_ns, delta_ns) + delta_ns;
}

uint64_t fg_fake_clock_now(const fg_fake_clock *fake) {
    return fake ? fg__load_u64(&fake->now_ns) : 0;
}
