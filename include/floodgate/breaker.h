/*
 * floodgate/breaker.h - the circuit breaker: closed, open, half-open.
 *
 * CLOSED: requests pass and their outcomes are recorded in a sliding
 * window (the last N calls, or the last `window_ns` of time). Once the
 * window holds at least min_requests calls, the breaker opens when the
 * failure ratio or the slow-call ratio reaches its threshold; it also opens
 * after consecutive_failures failures in a row (if set), window or not.
 * OPEN: requests are rejected at once with FG_EBREAKER for open_for_ns
 * (growing by open_backoff on each reopen, up to max_open_ns, if set).
 * HALF-OPEN: the first request after that is admitted as a probe, and so
 * are the next, up to exactly half_open_probes however many threads race;
 * everyone else is rejected. When every probe has succeeded the breaker
 * closes with a fresh window; one probe failure reopens it; probes that do
 * not all report within half_open_timeout_ns count as failed (a lost
 * completion callback cannot wedge the breaker).
 *
 * Every admission carries a permit: the state generation it was admitted
 * under. An outcome whose generation is no longer current is discarded, so a
 * slow call admitted while closed cannot close or reopen a breaker that has
 * moved on since.
 *
 * Time: nanoseconds on the breaker's clock; the now_ns passed in must come
 * from the same clock (the stage passes the ctx's). State changes are lazy:
 * OPEN becomes HALF-OPEN at the first request after open_for_ns.
 *
 * Thread-safety: every function is MT-safe unless stated. The closed-state
 * path (enter + exit) is lock-free, and so are rejections while open.
 * State transitions, which are rare, take a mutex whose critical section is
 * a few stores (closing also clears a COUNT window: window_size bytes) and
 * never calls out: a request that finds a trip condition
 * while another thread holds it leaves the trip to the next outcome; a
 * request that finds the open time over waits for a concurrent transition
 * to finish, so that the half-open probes are counted exactly.
 */
#ifndef FLOODGATE_BREAKER_H
#define FLOODGATE_BREAKER_H

#include <stdint.h>

#include "clock.h"
#include "common.h"
#include "ctx.h"
#include "stage.h"

FG_BEGIN_DECLS

/* A circuit breaker (opaque): fg_breaker_new makes one. */
typedef struct fg_breaker fg_breaker;

/* A breaker's state. */
typedef enum fg_breaker_state_kind {
    FG_BREAKER_CLOSED = 0,
    FG_BREAKER_OPEN = 1,
    FG_BREAKER_HALF_OPEN = 2,
} fg_breaker_state_kind;

/* Manual control, set with fg_breaker_set_mode. */
typedef enum fg_breaker_mode {
    FG_BREAKER_AUTO = 0,          /* the state machine decides (default) */
    FG_BREAKER_FORCED_OPEN = 1,   /* reject everything; nothing recorded */
    FG_BREAKER_FORCED_CLOSED = 2, /* admit everything; nothing recorded */
    /* Shadow: admit everything, but record and run the state machine as in
     * AUTO (states, transitions, callbacks, counters), counting the requests
     * it would have rejected. How a new breaker is rolled out safely. */
    FG_BREAKER_DISABLED = 3,
} fg_breaker_mode;

/* How the closed state's sliding window is measured. */
typedef enum fg_breaker_window_kind {
    FG_BREAKER_WINDOW_COUNT = 0, /* the last window_size calls */
    FG_BREAKER_WINDOW_TIME = 1,  /* the last window_ns, in window_buckets buckets */
} fg_breaker_window_kind;

/* What a finished call counts as. */
typedef enum fg_breaker_result {
    FG_BREAKER_SUCCESS = 0,
    FG_BREAKER_FAILURE = 1,
    FG_BREAKER_IGNORE = 2, /* not counted (e.g. a client error); a probe's slot is freed */
} fg_breaker_result;

/* Why the state changed. */
typedef enum fg_breaker_reason {
    FG_BREAKER_REASON_FAILURE_RATIO = 0, /* closed -> open */
    FG_BREAKER_REASON_SLOW_RATIO = 1,    /* closed -> open */
    FG_BREAKER_REASON_CONSECUTIVE = 2,   /* closed -> open */
    FG_BREAKER_REASON_OPEN_ELAPSED = 3,  /* open -> half-open */
    FG_BREAKER_REASON_PROBES_OK = 4,     /* half-open -> closed */
    FG_BREAKER_REASON_PROBE_FAILED = 5,  /* half-open -> open */
    FG_BREAKER_REASON_PROBE_TIMEOUT = 6, /* half-open -> open */
    FG_BREAKER_REASON_MANUAL = 7,        /* fg_breaker_set_mode */
    FG_BREAKER_REASON_RESET = 8,         /* fg_breaker_reset */
} fg_breaker_reason;

/* A state change, as a listener receives it. */
typedef struct fg_breaker_event {
    /* The state before and after the change (equal for a mode change). */
    fg_breaker_state_kind from, to;
    fg_breaker_mode mode; /* the mode after the change */
    /* Why it changed. */
    fg_breaker_reason reason;
    uint64_t at_ns;       /* the clock reading that caused it */
    uint64_t generation;  /* increases with every change: orders reports */
    uint64_t open_for_ns; /* when to == OPEN: how long it stays open */
} fg_breaker_event;

/*
 * Called after every state change by the thread that made it (a request's
 * thread, or the caller of set_mode / reset), outside any lock. Changes made
 * in quick succession by different threads may be reported out of order;
 * event->generation gives the true order. It may call any fg_breaker
 * function, including on this breaker.
 */
typedef void (*fg_breaker_listener)(fg_breaker *breaker, const fg_breaker_event *event,
                                    void *arg);

/*
 * Breaker options. 0 in a field means its default, given in its comment.
 * Start from FG_BREAKER_OPTIONS_INIT and set what you need.
 */
typedef struct fg_breaker_options {
    double failure_ratio;          /* open at >= this share of failures; 0 means 0.5; > 1
                                      never */
    double slow_ratio;             /* open at >= this share of slow calls; 0 means 1.0; > 1
                                      never */
    uint64_t slow_call_ns;         /* a call is slow when latency >= this; 0 means 60 s */
    uint32_t min_requests;         /* calls in the window before ratios count; 0 means 100 */
    uint32_t consecutive_failures; /* open after this many failures in a row; 0: off */
    fg_breaker_window_kind window; /* COUNT (the default) or TIME */
    uint32_t window_size;          /* COUNT: calls; 0 means 100 */
    uint64_t window_ns;            /* TIME: length; 0 means 10 s */
    uint32_t window_buckets;       /* TIME: buckets; 0 means 10 */
    uint64_t open_for_ns;          /* 0 means 60 s */
    double open_backoff;           /* each consecutive reopen multiplies open_for; 0 or 1:
                                      constant */
    uint64_t max_open_ns;          /* cap on the grown open time; 0 means 10 x open_for_ns */
    uint32_t half_open_probes;     /* 0 means 10 */
    uint64_t half_open_timeout_ns; /* probes must all report within this; 0 means
                                      open_for_ns */
    fg_clock clock;                /* for set_mode / reset times; now == NULL: monotonic */
    fg_breaker_listener listener;  /* NULL: none */
    void *listener_arg;            /* passed to listener */
} fg_breaker_options;

/* Defaults: every option at its default. */
#define FG_BREAKER_OPTIONS_INIT                                                               \
    {                                                                                         \
        0, 0, 0, 0, 0, FG_BREAKER_WINDOW_COUNT, 0, 0, 0, 0, 0, 0, 0, 0, {NULL, NULL, NULL},   \
            NULL, NULL                                                                        \
    }

/* Bounds on the options (inclusive). */
#define FG_BREAKER_MAX_WINDOW_SIZE                                                            \
    (UINT32_C(1) << 20)           /* COUNT window calls                                       \
                                   */
#define FG_BREAKER_MAX_BUCKETS 64 /* TIME window buckets */
/* The most half_open_probes. */
#define FG_BREAKER_MAX_PROBES  10000

/*
 * fg_breaker_new - a closed breaker with an empty window.
 *
 * Ratios are compared exactly to 6 decimal places (a call share is compared
 * as failures * 10^6 >= round(ratio * 10^6) * calls). A TIME window counts
 * up to 65,535 calls per bucket; past that a bucket halves its counts (the
 * ratios stay, the weight of that bucket is capped).
 *
 * Returns: 0 and *out; FG_EINVAL when opts or out is NULL, a ratio is
 * negative or not a number, open_backoff is not a number, or an enum is out
 * of range; FG_ERANGE when window_size exceeds
 * FG_BREAKER_MAX_WINDOW_SIZE, window_buckets FG_BREAKER_MAX_BUCKETS,
 * half_open_probes FG_BREAKER_MAX_PROBES, window_ns is shorter than
 * window_buckets ns, open_backoff is below 1 or above 1000, max_open_ns is
 * below open_for_ns, a duration (given or derived, such as the default
 * max_open_ns) is 2^62 ns or more, or min_requests exceeds
 * what the window can hold (window_size for COUNT; 32,767 per bucket for
 * TIME); FG_ENOMEM.
 * Ownership: opts copied; the caller owns *out (fg_breaker_free).
 * Thread-safety: MT-safe.
 */
FG_API int fg_breaker_new(const fg_breaker_options *opts, fg_breaker **out);

/* fg_breaker_free - free a breaker; NULL is ignored.
 * Thread-safety: not thread-safe: nobody may use it any more. */
FG_API void fg_breaker_free(fg_breaker *breaker);

/*
 * fg_breaker_enter - may a call start at now_ns?
 *
 * Returns: 0 and *permit (pass it to fg_breaker_exit) when admitted;
 * FG_EBREAKER when rejected, with *retry_after_ns the time left open (0
 * when unknown: forced open, or half-open with its probes taken);
 * FG_EINVAL for NULL breaker or permit. retry_after_ns may be NULL.
 * Thread-safety: MT-safe; lock-free when closed; in half-open, a CAS loop
 * admits exactly half_open_probes.
 */
FG_API int fg_breaker_enter(fg_breaker *breaker, uint64_t now_ns, uint64_t *permit,
                            uint64_t *retry_after_ns);

/*
 * fg_breaker_exit - report how an admitted call ended, at now_ns, after
 * latency_ns. Each permit must be reported at most once (a permit never
 * reported is what half_open_timeout_ns is for).
 *
 * A probe's result alone decides (a slow successful probe is a success);
 * a probe reported after half_open_timeout_ns has passed counts as the
 * timeout (the breaker reopens). IGNORE neither counts nor breaks a run of
 * consecutive failures.
 *
 * Returns: 0 when the outcome was taken (counted, or ignored as asked); 1
 * when it was discarded because
 * the breaker has changed state since the permit was issued (or the permit
 * records nothing: forced modes, shadow rejections); FG_EINVAL for a NULL
 * breaker or a result outside the enum.
 * Thread-safety: MT-safe; lock-free when closed.
 */
FG_API int fg_breaker_exit(fg_breaker *breaker, uint64_t permit, uint64_t now_ns,
                           fg_breaker_result result, uint64_t latency_ns);

/*
 * fg_breaker_state - the current state (as last changed: an OPEN
 * breaker whose open time has passed reads OPEN until a request arrives).
 * Returns FG_BREAKER_CLOSED for NULL. Thread-safety: MT-safe, wait-free.
 */
FG_API fg_breaker_state_kind fg_breaker_state(const fg_breaker *breaker);

/* A snapshot of a breaker's state and counters. */
typedef struct fg_breaker_stats {
    fg_breaker_state_kind state;   /* the state now */
    fg_breaker_mode mode;          /* the mode now */
    uint64_t generation;           /* state changes so far (the last event's generation) */
    uint64_t window_calls;         /* calls in the window at now_ns */
    uint64_t window_failures;      /* of those, failures */
    uint64_t window_slow;          /* of those, slow calls */
    uint64_t consecutive_failures; /* failures in a row, up to now */
    uint64_t open_until_ns;        /* when OPEN */
    uint64_t probes_admitted;      /* in the current half-open period */
    uint64_t probes_succeeded;     /* of those, the ones that succeeded */
    uint64_t rejected;             /* since creation */
    uint64_t shadow_rejected;      /* DISABLED mode: would have been rejected */
    uint64_t discarded;            /* outcomes of permits from an earlier state */
    uint64_t opened;               /* transitions into OPEN */
    uint64_t half_opened;          /* transitions into HALF-OPEN */
    uint64_t closed;               /* transitions into CLOSED */
} fg_breaker_stats;

/*
 * fg_breaker_snapshot - fill *stats; window counts as of now_ns.
 * Returns: 0, FG_EINVAL for NULL. Thread-safety: MT-safe; each field is
 * read atomically, the set is not one snapshot.
 */
FG_API int fg_breaker_snapshot(const fg_breaker *breaker, uint64_t now_ns,
                               fg_breaker_stats *stats);

/*
 * fg_breaker_set_mode - manual control (see fg_breaker_mode). The state is
 * kept (the listener's event has from == to, the new mode in event->mode,
 * reason FG_BREAKER_REASON_MANUAL); leaving a forced mode for AUTO resumes
 * it, and a resumed half-open period starts over with fresh probe slots.
 * Every change starts a new generation, so outcomes of calls admitted
 * before it are discarded.
 * Returns: 0; FG_EINVAL for NULL or a mode outside the enum; FG_ESYS when
 * the transition mutex cannot be taken.
 */
FG_API int fg_breaker_set_mode(fg_breaker *breaker, fg_breaker_mode mode);

/*
 * fg_breaker_reset - back to CLOSED in AUTO mode with an empty window, no
 * consecutive failures and the open time back to open_for_ns. Outcomes of
 * calls admitted before are discarded.
 * Returns: 0; FG_EINVAL for NULL; FG_ESYS as above.
 */
FG_API int fg_breaker_reset(fg_breaker *breaker);

/*
 * fg_breaker_carry - give `to`, a breaker nobody uses yet, the state of
 * `from`: how a breaker keeps its state when its settings change (the
 * config layer builds the new breaker aside with the new thresholds and
 * carries the old one's state into it just before the swap).
 *
 * Carried: the state and mode; an OPEN breaker's end of the open period and
 * its reopen count (the open time promised to clients stands; the next one
 * follows the new settings); a HALF-OPEN breaker stays half-open with fresh
 * probe slots from now_ns (probes in flight on `from` report to `from`);
 * the run of consecutive failures; the counters of fg_breaker_stats, so
 * they never go backwards; the transition count, so listener generations
 * keep increasing; and the window's outcomes when both windows have the
 * same shape (COUNT: same window_size; TIME: same bucket count and bucket
 * length). A window of another shape starts empty: recorded outcomes cannot
 * be mapped onto it. Outcomes `from` records after the call are not carried.
 * No listener is called. Both breakers must read the same clock.
 *
 * Returns: 0; FG_EINVAL for NULL or to == from; FG_ESYS when a transition
 * mutex cannot be taken.
 * Ownership: neither breaker is taken. Thread-safety: `from` may be in use
 * by any thread; `to` must not be in use by any other thread until the
 * call returns (publish it afterwards, e.g. with a snapshot swap).
 */
FG_API int fg_breaker_carry(fg_breaker *to, fg_breaker *from, uint64_t now_ns);

/*
 * A classifier: turns a chain outcome into what the breaker counts. The
 * default (NULL) counts FG_OUTCOME_OK as success, FG_OUTCOME_FAILED as
 * failure except FG_ECANCELED (the caller went away or gave up: IGNORE),
 * and a rejection by a later stage as IGNORE (that was not the dependency
 * failing). Called on the thread that exits the request.
 */
typedef fg_breaker_result (*fg_breaker_classifier)(const fg_ctx *ctx,
                                                   const fg_outcome *outcome, void *arg);

/*
 * fg_stage_breaker - a stage around a breaker: enter asks fg_breaker_enter
 * at ctx->now_ns and rejects with FG_EBREAKER, putting the time left open in
 * ctx->retry_after_ns; exit classifies the outcome and reports it at
 * ctx->now_ns + latency.
 *
 * Returns: 0 and *out; FG_EINVAL for NULL breaker or out; FG_ETOOLONG for a
 * name over FG_STAGE_NAME_MAX; FG_ENOMEM.
 * Ownership: borrows breaker (it must outlive the stage); name copied (NULL
 * means "breaker"); the caller owns one reference to *out.
 * Thread-safety: MT-safe.
 */
FG_API int fg_stage_breaker(fg_breaker *breaker, fg_breaker_classifier classify, void *arg,
                            const char *name, fg_stage **out);

/*
 * fg_breaker_state_name / fg_breaker_reason_name / fg_breaker_mode_name -
 * names for logs and metrics labels:
 *   states:  "closed", "open", "half_open";
 *   reasons: "failure_ratio", "slow_ratio", "consecutive_failures",
 *            "open_elapsed", "probes_ok", "probe_failed", "probe_timeout",
 *            "manual", "reset";
 *   modes:   "auto", "forced_open", "forced_closed", "disabled".
 * Returns: a static string; "unknown" outside the enums. Thread-safety:
 * MT-safe.
 */
FG_API const char *fg_breaker_state_name(fg_breaker_state_kind state);
FG_API const char *fg_breaker_reason_name(fg_breaker_reason reason);
FG_API const char *fg_breaker_mode_name(fg_breaker_mode mode);

FG_END_DECLS

#endif /* FLOODGATE_BREAKER_H */
