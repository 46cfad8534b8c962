/*
 * floodgate/bulkhead.h - a bulkhead: at most N requests in flight at once
 * through whatever it guards (a backend, a route, a pool of connections),
 * and the chain stage around it.
 *
 * A bulkhead holds max_concurrent slots. A request takes a slot when it
 * enters and gives it back when it exits; a request that finds every slot
 * taken is rejected with FG_EOVERLOADED, or, when the bulkhead has a
 * max_wait_ns and the request runs through the synchronous chain
 * (fg_chain_call), waits for a slot up to that long (never past the
 * request's deadline) and only then is rejected. Taking and giving back a
 * slot are lock-free and never admit more than max_concurrent requests, however
 * many threads race.
 *
 * It bounds concurrency, not rate: a rate limiter (limiter.h) caps how
 * many requests START per second and lets slow ones pile up; a bulkhead
 * caps how many are INSIDE at once, whatever their rate, so one slow
 * dependency cannot take every thread of the service. The limit is fixed
 * (changed only by fg_bulkhead_set_max, e.g. on a config reload), unlike an
 * adaptive concurrency limit, which moves its own limit with the measured
 * latency. docs/bulkhead.md is the guide.
 *
 * A bulkhead is a component, like a limiter: several stages (in several
 * chains or routes) may share one, and then share its slots.
 */
#ifndef FLOODGATE_BULKHEAD_H
#define FLOODGATE_BULKHEAD_H

#include <stdint.h>

#include "clock.h"
#include "common.h"
#include "stage.h"

FG_BEGIN_DECLS

/* A bulkhead (opaque): fg_bulkhead_new makes one. */
typedef struct fg_bulkhead fg_bulkhead;

/*
 * Bulkhead options. Start from FG_BULKHEAD_OPTIONS_INIT and set
 * max_concurrent, which is required.
 */
typedef struct fg_bulkhead_options {
    uint32_t max_concurrent; /* slots: requests in flight at once, >= 1 */
    /* When every slot is taken: 0 rejects at once; > 0 lets a request that
     * may block (fg_bulkhead_enter_wait, or the stage inside fg_chain_call)
     * wait up to this long for a slot. UINT64_MAX: no bound of its own (a
     * stage still stops waiting at the request's deadline). */
    uint64_t max_wait_ns;
    fg_clock clock; /* what waits read and sleep on; now == NULL: monotonic */
} fg_bulkhead_options;

/* Defaults: no wait, the monotonic clock; max_concurrent must be set.
 * In C: fg_bulkhead_options o = FG_BULKHEAD_OPTIONS_INIT; o.max_concurrent = 32; */
#define FG_BULKHEAD_OPTIONS_INIT                                                              \
    {                                                                                         \
        0, 0, { NULL, NULL, NULL }                                                            \
    }

/*
 * What a bulkhead has done, counted exactly. Every attempt to take a slot
 * counts in exactly one of admitted, rejected and shadow_rejected; waited
 * and wait_timeouts say more about some of them. max_in_flight is counted
 * by each admission from its own reading of the slots, so it may include
 * a request that was just giving its slot back; it never exceeds the
 * largest max_concurrent the bulkhead has had.
 */
typedef struct fg_bulkhead_stats {
    uint64_t admitted;        /* given a slot, at once or after waiting */
    uint64_t rejected;        /* refused a slot, at once or after waiting */
    uint64_t waited;          /* found every slot taken and waited (either result) */
    uint64_t wait_timeouts;   /* waited and got no slot (also in rejected) */
    uint64_t shadow_rejected; /* a shadow stage found every slot taken and admitted */
    uint32_t in_flight;       /* slots taken now */
    uint32_t max_in_flight;   /* most slots taken at once, as admissions saw it */
} fg_bulkhead_stats;

/*
 * fg_bulkhead_new - a bulkhead with every slot free.
 *
 * Returns: 0 and *out; FG_EINVAL when opts or out is NULL or max_concurrent
 * is 0; FG_ENOMEM. On error *out is unchanged.
 * Ownership: opts is copied. The caller owns *out: fg_bulkhead_free, after
 * every stage that uses it is gone.
 * Thread-safety: MT-safe.
 */
FG_API int fg_bulkhead_new(const fg_bulkhead_options *opts, fg_bulkhead **out);

/*
 * fg_bulkhead_free - free a bulkhead. NULL is ignored.
 * Thread-safety: not thread-safe: nobody may use the bulkhead any more.
 */
FG_API void fg_bulkhead_free(fg_bulkhead *bulkhead);

/*
 * fg_bulkhead_try_enter - take a slot if one is free; never waits.
 *
 * Returns: 0 when a slot was taken: the caller must give it back with
 * fg_bulkhead_exit exactly once, from any thread. FG_EOVERLOADED when
 * max_concurrent slots were taken at the moment of the decision (counted in
 * rejected). FG_EINVAL for a NULL bulkhead.
 * Thread-safety: MT-safe, lock-free: a CAS loop that retries only when
 * another thread took a slot in between; one CAS when uncontended.
 */
FG_API int fg_bulkhead_try_enter(fg_bulkhead *bulkhead);

/*
 * fg_bulkhead_enter_wait - take a slot, waiting for one for up to
 * min(the max_wait_ns option, max_wait_ns) when all are taken: pass
 * UINT64_MAX for "the option's". The wait polls on the bulkhead's clock,
 * sleeping between tries in steps that start at 10 us and double up to
 * 1 ms (never past the end of the wait), so a slot freed during the wait is
 * taken at the next try; waiters are not served in arrival order. On a
 * fake clock the sleeps advance it, so the wait takes no real time.
 *
 * Returns: 0 when a slot was taken (give it back with fg_bulkhead_exit);
 * FG_EOVERLOADED when none was free by the end of the wait (at once when
 * the wait allowed is 0); FG_EINVAL for a NULL bulkhead. *waited_ns (may
 * be NULL) is the time waited on the bulkhead's clock, 0 when a slot was
 * free at once.
 * Thread-safety: MT-safe; blocks the calling thread for up to the wait.
 */
FG_API int fg_bulkhead_enter_wait(fg_bulkhead *bulkhead, uint64_t max_wait_ns,
                                  uint64_t *waited_ns);

/*
 * fg_bulkhead_exit - give back a slot taken by fg_bulkhead_try_enter or
 * fg_bulkhead_enter_wait (or by a bulkhead stage). May run on another
 * thread than the enter did.
 *
 * Returns: 0; FG_EINVAL for a NULL bulkhead; FG_ESTATE when no slot is
 * taken (more exits than enters: a caller bug; nothing changes). The check
 * is exact when no enter races the exit, best effort otherwise.
 * Thread-safety: MT-safe, lock-free (one atomic add).
 */
FG_API int fg_bulkhead_exit(fg_bulkhead *bulkhead);

/*
 * fg_bulkhead_in_flight - slots taken now.
 * Returns: the count; 0 for NULL. It may exceed max_concurrent just after
 * fg_bulkhead_set_max lowered it.
 * Thread-safety: MT-safe, lock-free; the count is a moment's, as any
 * reading of a moving count is.
 */
FG_API uint32_t fg_bulkhead_in_flight(const fg_bulkhead *bulkhead);

/*
 * fg_bulkhead_set_max - change the number of slots in place (a config
 * reload keeps the bulkhead, and so the requests in flight, and calls
 * this). Raising it lets more requests in at once, waiters included.
 * Lowering it never evicts anyone: the requests in flight finish, and
 * nobody is admitted until fewer than the new max_concurrent are in
 * flight. The change applies to decisions that start after it returns.
 *
 * Returns: 0; FG_EINVAL for a NULL bulkhead or max_concurrent 0 (nothing
 * changes then).
 * Thread-safety: MT-safe, lock-free (one atomic store).
 */
FG_API int fg_bulkhead_set_max(fg_bulkhead *bulkhead, uint32_t max_concurrent);

/*
 * fg_bulkhead_set_max_wait - change max_wait_ns. Waits already under way
 * keep the bound they started with.
 *
 * Returns: 0; FG_EINVAL for a NULL bulkhead.
 * Thread-safety: MT-safe, lock-free (one atomic store).
 */
FG_API int fg_bulkhead_set_max_wait(fg_bulkhead *bulkhead, uint64_t max_wait_ns);

/*
 * fg_bulkhead_get - the bulkhead's current settings (after any set_max /
 * set_max_wait), into *opts.
 *
 * Returns: 0; FG_EINVAL for a NULL argument.
 * Thread-safety: MT-safe; each field is read atomically.
 */
FG_API int fg_bulkhead_get(const fg_bulkhead *bulkhead, fg_bulkhead_options *opts);

/*
 * fg_bulkhead_stats_get - the counters, into *out.
 *
 * Returns: 0; FG_EINVAL for a NULL argument.
 * Thread-safety: MT-safe, lock-free; each counter is read atomically, the
 * set is not one snapshot while requests flow.
 */
FG_API int fg_bulkhead_stats_get(const fg_bulkhead *bulkhead, fg_bulkhead_stats *out);

/* ---- the stage ------------------------------------------------------------ */

/* Bulkhead stage options. Start from FG_BULKHEAD_STAGE_OPTIONS_INIT. */
typedef struct fg_bulkhead_stage_options {
    int shadow; /* nonzero: decide and count, never reject or wait */
} fg_bulkhead_stage_options;

/* Defaults: an enforcing stage (not shadow). */
#define FG_BULKHEAD_STAGE_OPTIONS_INIT                                                        \
    { 0 }

/*
 * fg_stage_bulkhead - a stage (kind "bulkhead") whose enter takes a slot of
 * bulkhead and whose exit gives it back, whatever the outcome.
 *
 * When every slot is taken, enter rejects with FG_EOVERLOADED and
 * ctx->retry_after_ns 0 (a bulkhead cannot know when a slot frees up).
 *
 * Waiting: a request run by fg_chain_call (or fg_runtime_call) first waits
 * as fg_bulkhead_enter_wait does, for up to max_wait_ns and never past
 * ctx->deadline_ns (a request at or past its deadline does not wait). The
 * wait blocks the calling thread. A request canceled meanwhile
 * (fg_ctx_cancel, floodgate/deadline.h) stops waiting at the next try and
 * is rejected with FG_ECANCELED (counted in rejected, not in
 * wait_timeouts). A request entered with fg_chain_enter (the split API, on
 * an event loop that must not block) never waits: it is rejected at once.
 * After a wait, ctx->now_ns is moved forward by the time waited, so the
 * stages after this one decide at the time the request got its slot, and
 * ctx->delay_ns (a wait an earlier stage asked for, counted from now_ns)
 * is shortened by the same amount. ctx->deadline_ns must be on the
 * bulkhead's clock: give the chain and the bulkhead the same one.
 *
 * In shadow mode enter takes a slot when one is free (so in_flight counts
 * what an enforcing bulkhead would hold), and when none is, admits the
 * request without a slot and counts it in shadow_rejected; it never waits.
 * Behind a retrying stage each attempt takes a slot of its own; in front of
 * one, the request keeps its one slot over all attempts.
 *
 * Returns: 0 and *out; FG_EINVAL when bulkhead or out is NULL; FG_ETOOLONG
 * when name is longer than FG_STAGE_NAME_MAX; FG_ENOMEM. On error *out is
 * unchanged.
 * Ownership: borrows bulkhead, which must outlive the stage; opts is read
 * (NULL: the defaults); name is copied (NULL: "bulkhead"). The caller owns
 * one reference to *out (fg_chain_use takes it).
 * Thread-safety: MT-safe. Enter and exit are lock-free and allocation-free
 * apart from the wait.
 */
FG_API int fg_stage_bulkhead(fg_bulkhead *bulkhead, const fg_bulkhead_stage_options *opts,
                             const char *name, fg_stage **out);

/*
 * fg_bulkhead_from_stage - the bulkhead behind a stage made by
 * fg_stage_bulkhead, e.g. to read its stats or change it on a reload.
 *
 * Returns: the bulkhead (borrowed); NULL when stage is NULL or of another
 * kind.
 * Thread-safety: MT-safe.
 */
FG_API fg_bulkhead *fg_bulkhead_from_stage(const fg_stage *stage);

FG_END_DECLS

#endif /* FLOODGATE_BULKHEAD_H */
