/*
 * floodgate/adaptive.h - an adaptive concurrency limit: how many requests may
 * be in flight at once, moved by the latencies the requests report (issue 9).
 *
 * A fixed bulkhead (floodgate/bulkhead.h) needs someone to know the right
 * number; this limit finds it. Every admitted request takes a slot
 * (fg_adaptive_try_enter) and gives it back with its latency
 * (fg_adaptive_exit). Samples are gathered into windows; when a window
 * closes the limit is recomputed, between min_limit and max_limit, by one of
 * two algorithms:
 *
 *  - GRADIENT (the default; after Envoy's adaptive concurrency filter and
 *    Netflix's Gradient2Limit). The window's mean latency is compared with
 *    the no-load latency:
 *        gradient = clamp(tolerance * rtt_noload / rtt_window, 0.5, 2.0)
 *        target   = limit * gradient + queue_size      (sqrt(limit) by default)
 *        limit    = limit + smoothing * (target - limit)
 *    The no-load latency is measured by a periodic probe (the limit drops to
 *    min_limit until probe_samples requests admitted during the probe have
 *    finished; their mean is rtt_noload) or, optionally, tracked as a
 *    long-term moving average of the window means, as Gradient2 does.
 *  - AIMD (additive increase, multiplicative decrease, as TCP). A window
 *    with a drop multiplies the limit by backoff_ratio (and lowers it by at
 *    least 1); a window without one in which the limit was used adds
 *    `increase`. A drop is a request the caller reports as dropped (a
 *    failure or a timeout; the stage decides from the outcome) or one slower
 *    than drop_latency_ns.
 *
 * A window closes when it holds at least window_samples samples and has
 * lasted at least window_ns and at least the previous window's mean latency
 * (so that its samples come mostly from requests admitted under the limit
 * it judges). The limit only grows while it is used: when a window's mean
 * concurrency (by Little's law, the sum of its latencies over its length)
 * stayed below half the limit, the limit does not rise.
 *
 * Cost: fg_adaptive_try_enter is a compare-and-swap loop on the admission
 * count (it never admits more than the limit it read); fg_adaptive_exit is
 * one atomic add that both frees the slot and records the latency. The
 * thread whose exit completes a window recomputes the limit; others never
 * wait for it. docs/adaptive.md is the guide.
 */
#ifndef FLOODGATE_ADAPTIVE_H
#define FLOODGATE_ADAPTIVE_H

#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "common.h"
#include "stage.h"

FG_BEGIN_DECLS

/* An adaptive concurrency limit (opaque): fg_adaptive_new makes one. */
typedef struct fg_adaptive fg_adaptive;

/* The algorithm that moves the limit. */
typedef enum fg_adaptive_algo {
    FG_ADAPTIVE_GRADIENT = 0, /* latency gradient against the no-load latency */
    FG_ADAPTIVE_AIMD = 1,     /* additive increase, multiplicative decrease on drops */
} fg_adaptive_algo;

/* How GRADIENT estimates the no-load latency. */
typedef enum fg_adaptive_noload {
    /* Measure it: at start and every probe_interval_ns, hold the limit at
     * min_limit until probe_samples requests admitted in the probe have
     * finished; their mean latency is rtt_noload. Anchored, at the price of
     * a short dip in throughput per probe. */
    FG_ADAPTIVE_NOLOAD_PROBE = 0,
    /* Track it: an exponential moving average of the window means over about
     * noload_samples samples (Gradient2). No dips, but no anchor either:
     * under sustained saturation it follows the queueing latency up (see
     * docs/adaptive.md). */
    FG_ADAPTIVE_NOLOAD_EWMA = 1,
} fg_adaptive_noload;

#define FG_ADAPTIVE_LIMIT_MAX   1000000u /* largest max_limit */
#define FG_ADAPTIVE_SAMPLES_MAX 65536u   /* largest window_samples / probe_samples */

/*
 * Options. Start from FG_ADAPTIVE_OPTIONS_INIT and set what you need. Every
 * field's default is in its comment.
 */
typedef struct fg_adaptive_options {
    fg_adaptive_algo algo;  /* FG_ADAPTIVE_GRADIENT */
    uint32_t initial_limit; /* 20: the limit before the first update */
    uint32_t min_limit;     /* 3: never below (also the probe's limit); >= 1 */
    uint32_t max_limit;     /* 1000: never above; <= FG_ADAPTIVE_LIMIT_MAX */
    /* Windows: one limit update per window. */
    uint32_t window_samples; /* 50: samples a window needs; 1 .. FG_ADAPTIVE_SAMPLES_MAX */
    uint64_t window_ns;      /* 0: the least time a window lasts (beyond one mean latency) */
    /* GRADIENT. */
    double tolerance;    /* 1.25: window latency may be this multiple of rtt_noload; 1..1e6 */
    double smoothing;    /* 0.2: share of the step to the target taken per window; (0, 1] */
    uint32_t queue_size; /* 0: sqrt(limit); else this many requests of headroom */
    fg_adaptive_noload noload;  /* FG_ADAPTIVE_NOLOAD_PROBE */
    uint64_t probe_interval_ns; /* 60 s: PROBE, time from one probe's end to the next */
    double probe_jitter;        /* 0.1: PROBE, interval stretched by up to this share */
    uint32_t probe_samples;     /* 50: PROBE, samples a probe needs */
    uint32_t noload_samples;    /* 600: EWMA, the average's span in samples */
    /* AIMD. */
    double backoff_ratio;     /* 0.9: limit multiplier after a window with a drop; [0.5, 1) */
    uint32_t increase;        /* 1: added after a used window without a drop; >= 1 */
    uint64_t drop_latency_ns; /* 0 (off): a sample slower than this is a drop */
    /* The stage (fg_stage_adaptive): which outcomes are drops. */
    int drop_on_failure; /* 1: every failed request; 0: only FG_ETIMEDOUT / FG_EOVERLOADED */
    uint64_t seed;       /* 0: random; the probe jitter's draws */
    fg_clock clock;      /* now == NULL: the monotonic clock; read once per window */
} fg_adaptive_options;

/* Defaults. In C: fg_adaptive_options o = FG_ADAPTIVE_OPTIONS_INIT; o.max_limit = 200; */
/* clang-format off */
#define FG_ADAPTIVE_OPTIONS_INIT                                        \
    { FG_ADAPTIVE_GRADIENT, 20, 3, 1000,     /* algo, limits */         \
      50, 0,                                 /* window */               \
      1.25, 0.2, 0, FG_ADAPTIVE_NOLOAD_PROBE, /* gradient */            \
      UINT64_C(60000000000), 0.1, 50, 600,   /* probe, EWMA */          \
      0.9, 1, 0,                             /* AIMD */                 \
      1, 0, {NULL, NULL, NULL} }             /* stage, seed, clock */
/* clang-format on */

/*
 * fg_adaptive_new - an adaptive limit. With GRADIENT and PROBE it starts
 * with a probe (limit min_limit); afterwards, and with the other modes from
 * the start, the limit is initial_limit until the first update.
 *
 * Returns: 0 and *out; FG_EINVAL when opts or out is NULL or an option is
 * out of its range: algo or noload outside its enum; min_limit 0, above
 * initial_limit, or initial_limit above max_limit; max_limit above
 * FG_ADAPTIVE_LIMIT_MAX; window_samples, probe_samples, noload_samples or
 * increase 0; window_samples or probe_samples above FG_ADAPTIVE_SAMPLES_MAX;
 * tolerance outside [1, 1e6], smoothing outside (0, 1], probe_jitter outside [0, 1],
 * backoff_ratio outside [0.5, 1) (NaN fails every range); probe_interval_ns
 * 0 with PROBE. FG_ENOMEM. On error *out is unchanged.
 * Ownership: opts is read. The caller owns *out (fg_adaptive_free).
 * Thread-safety: MT-safe.
 */
FG_API int fg_adaptive_new(const fg_adaptive_options *opts, fg_adaptive **out);

/*
 * fg_adaptive_free - free it; NULL is ignored.
 * Thread-safety: not thread-safe: nobody may use it any more, and every
 * stage made from it must be gone.
 */
FG_API void fg_adaptive_free(fg_adaptive *adaptive);

/*
 * fg_adaptive_try_enter - take a slot if fewer than the limit are in
 * flight. Never admits more than the limit it read, under any race (a CAS
 * loop on the in-flight count); a limit that falls below the in-flight count
 * lets requests drain, it does not cut them off.
 *
 * Returns: 0 and *permit (pass it to fg_adaptive_exit or
 * fg_adaptive_release, exactly once) when admitted; FG_EOVERLOADED when the
 * limit is reached; FG_EINVAL for a NULL argument.
 * Thread-safety: MT-safe, lock-free, allocation-free.
 */
FG_API int fg_adaptive_try_enter(fg_adaptive *adaptive, uint64_t *permit);

/*
 * fg_adaptive_exit - give the slot back with the request's latency; dropped
 * (nonzero) marks it as a drop (failed, timed out) for AIMD. The sample
 * joins the current window, and the exit that completes a window
 * recomputes the limit (reading the clock once). Latencies are kept in
 * units of 1.024 us (a shift, not a division); one above 2^23 units (about
 * 8.6 s) counts as that.
 *
 * The sample is left out (the slot is still freed) when a probe is running
 * and the permit was issued before it: such a request ran under the old
 * limit and would spoil the no-load measurement.
 *
 * Returns: 0; FG_EINVAL for NULL; FG_ESTATE when nothing is in flight (an
 * exit without a try_enter: nothing is changed).
 * Thread-safety: MT-safe, lock-free: a window's update runs on one thread,
 * and the others never wait for it.
 */
FG_API int fg_adaptive_exit(fg_adaptive *adaptive, uint64_t permit, uint64_t latency_ns,
                            int dropped);

/*
 * fg_adaptive_release - give the slot back without a sample: the request
 * never reached the service (a later stage rejected it), so its latency
 * says nothing.
 *
 * Returns: 0; FG_EINVAL for NULL; FG_ESTATE as fg_adaptive_exit.
 * Thread-safety: MT-safe, lock-free.
 */
FG_API int fg_adaptive_release(fg_adaptive *adaptive, uint64_t permit);

/*
 * fg_adaptive_limit / fg_adaptive_in_flight - the current limit, and the
 * requests holding a slot now. 0 for NULL.
 * Thread-safety: MT-safe, wait-free.
 */
FG_API uint32_t fg_adaptive_limit(const fg_adaptive *adaptive);
FG_API uint32_t fg_adaptive_in_flight(const fg_adaptive *adaptive);

/* What a limit has seen, and its estimates. */
typedef struct fg_adaptive_stats {
    uint64_t admitted;      /* try_enter calls that took a slot */
    uint64_t rejected;      /* try_enter calls refused with FG_EOVERLOADED */
    uint64_t samples;       /* latencies taken into windows */
    uint64_t drops;         /* of those, drops (reported or over drop_latency_ns) */
    uint64_t discarded;     /* exits whose sample was left out (permits from before a probe) */
    uint64_t released;      /* fg_adaptive_release calls */
    uint64_t windows;       /* windows closed: limit updates run */
    uint64_t limit_changes; /* updates that changed the limit */
    uint64_t probes;        /* no-load probes started (GRADIENT with PROBE) */
    uint32_t limit;         /* the limit now */
    uint32_t in_flight;     /* slots taken now */
    int probing;            /* a probe is running */
    uint64_t rtt_noload_ns; /* GRADIENT: the no-load latency; 0 before the first estimate */
    uint64_t rtt_window_ns; /* the last closed window's mean latency; 0 before */
    double gradient;        /* GRADIENT: the last update's gradient; 0 before */
    double estimate;        /* the limit before rounding down (GRADIENT); the limit (AIMD) */
} fg_adaptive_stats;

/*
 * fg_adaptive_stats_get - fill *out.
 * Returns: 0; FG_EINVAL for NULL.
 * Thread-safety: MT-safe, lock-free; each field is read atomically, the set
 * is not one snapshot (exact once requests have stopped).
 */
FG_API int fg_adaptive_stats_get(const fg_adaptive *adaptive, fg_adaptive_stats *out);

/*
 * fg_stage_adaptive - a stage (kind "adaptive") around a limit. enter takes
 * a slot or rejects with FG_EOVERLOADED (no retry-after hint: a slot frees
 * when any request finishes). exit reports the outcome: OK is a sample;
 * FAILED is a sample and a drop when drop_on_failure is set or its code is
 * FG_ETIMEDOUT or FG_EOVERLOADED; REJECTED by a later stage is a drop
 * sample when the code is FG_ETIMEDOUT (it held the slot until it timed
 * out) and otherwise only releases the slot.
 *
 * Returns: 0 and *out; FG_EINVAL for NULL adaptive or out; FG_ETOOLONG for
 * a name over FG_STAGE_NAME_MAX; FG_ENOMEM.
 * Ownership: borrows adaptive (it must outlive the stage); name copied
 * (NULL means "adaptive"); the caller owns one reference to *out.
 * Thread-safety: MT-safe.
 */
FG_API int fg_stage_adaptive(fg_adaptive *adaptive, const char *name, fg_stage **out);

/*
 * fg_adaptive_of_stage - the limit behind a stage made by fg_stage_adaptive
 * (for its stats).
 * Returns: 0 and *out; FG_EINVAL when stage or out is NULL or the stage is
 * of another kind.
 * Ownership: *out is borrowed from the stage's maker. Thread-safety: MT-safe.
 */
FG_API int fg_adaptive_of_stage(const fg_stage *stage, fg_adaptive **out);

FG_END_DECLS

#endif /* FLOODGATE_ADAPTIVE_H */
