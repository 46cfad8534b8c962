/*
 * floodgate/deadline.h - deadlines and cancellation, as Go's
 * context.WithTimeout / WithCancel give them.
 *
 * A request's deadline is ctx->deadline_ns: an absolute time on the chain's
 * clock, 0 for none. The caller may set one before the chain runs (an
 * inherited deadline); a timeout stage shortens it, never extends it; every
 * later stage and the handler can ask how much time is left. A chain
 * rejects with FG_ETIMEDOUT a request whose deadline has passed once its
 * stages have admitted it (counting any wait a stage asked for), in the
 * sync chain (before every attempt) and in the split API (in
 * fg_chain_enter) alike. A handler that is already running is not
 * interrupted: C code cannot be preempted safely, so long handlers should
 * check fg_ctx_time_left and give up themselves.
 *
 * Cancellation: any thread may cancel a ctx (fg_ctx_cancel) while the
 * request runs; a chain rejects a canceled request with FG_ECANCELED before
 * each stage and before its handler, and handlers and stages can poll
 * fg_ctx_canceled.
 *
 * On the wire, deadlines travel as a relative timeout in gRPC's
 * grpc-timeout form: 1 to 8 digits and a unit, H (hours), M (minutes), S
 * (seconds), m (milliseconds), u (microseconds) or n (nanoseconds).
 */
#ifndef FLOODGATE_DEADLINE_H
#define FLOODGATE_DEADLINE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "ctx.h"
#include "stage.h"

FG_BEGIN_DECLS

/*
 * fg_ctx_remaining - the time left before ctx's deadline at now_ns (on the
 * chain's clock): UINT64_MAX when there is no deadline, 0 once it has
 * passed. NULL ctx: UINT64_MAX. Thread-safety: MT-safe (reads the ctx).
 */
FG_API uint64_t fg_ctx_remaining(const fg_ctx *ctx, uint64_t now_ns);

/*
 * fg_ctx_time_left - fg_ctx_remaining at the current reading of the clock
 * of the chain ctx runs in (the monotonic clock before it entered one, and
 * once a request through a runtime has finished, since a reload may free
 * its chain): for handlers, which have no clock at hand.
 */
FG_API uint64_t fg_ctx_time_left(const fg_ctx *ctx);

/*
 * fg_ctx_set_deadline - shorten ctx's deadline to deadline_ns: it becomes
 * the earlier of the two (a deadline is never extended; 0 changes nothing).
 * Returns 1 when it changed, 0 when not, FG_EINVAL for NULL.
 * Thread-safety: the request's own thread(s) only.
 */
FG_API int fg_ctx_set_deadline(fg_ctx *ctx, uint64_t deadline_ns);

/*
 * fg_ctx_cancel - cancel the request: from now on the chain rejects it with
 * FG_ECANCELED before its next stage or its handler (a stage that is running
 * finishes), and fg_ctx_canceled is 1.
 * Idempotent. The ctx must stay alive until the call returns (the caller
 * owns it). Thread-safety: MT-safe, from any thread, lock-free.
 */
FG_API void fg_ctx_cancel(fg_ctx *ctx);

/* fg_ctx_canceled - 1 once fg_ctx_cancel was called on ctx, else 0 (and 0
 * for NULL). Thread-safety: MT-safe, lock-free. */
FG_API int fg_ctx_canceled(const fg_ctx *ctx);

/*
 * fg_timeout_parse - read a grpc-timeout value ("250m", "5S", "1H"): 1 to 8
 * ASCII digits giving a positive number, then exactly one unit letter,
 * nothing else. A value beyond 2^64 - 1 ns (over 5,124,095 hours) is
 * UINT64_MAX.
 * Returns: 0 and *ns; FG_EPARSE for anything else (empty, 9 digits, zero, no
 * or another unit, a sign, spaces); FG_EINVAL for NULL s (with len > 0) or ns.
 * Thread-safety: MT-safe.
 */
FG_API int fg_timeout_parse(const char *s, size_t len, uint64_t *ns);

/*
 * fg_timeout_format - write ns as a grpc-timeout value with a NUL: the
 * finest unit whose value fits in 8 digits, rounded down (a downstream
 * service is never given more time than there is). Every uint64_t fits
 * (UINT64_MAX is 5124095H); 0 is written "0n", which a receiver following
 * gRPC refuses: do not send a timeout with nothing left.
 * Returns: the length written (without the NUL); FG_ETOOLONG when cap < 10
 * (the longest value and its NUL); FG_EINVAL for NULL buf.
 * Thread-safety: MT-safe.
 */
FG_API int fg_timeout_format(uint64_t ns, char *buf, size_t cap);

/*
 * fg_deadline_outgoing - the grpc-timeout value to send downstream for
 * ctx's deadline at now_ns (fg_timeout_format of the time left).
 * Returns: the length written; FG_ENOTFOUND when ctx has no deadline;
 * FG_ETIMEDOUT when it has passed (nothing written: do not call
 * downstream); FG_ETOOLONG / FG_EINVAL as fg_timeout_format.
 */
FG_API int fg_deadline_outgoing(const fg_ctx *ctx, uint64_t now_ns, char *buf, size_t cap);

/* ---- the timeout stage ---------------------------------------------------------------- */

/* Timeout stage options. Start from FG_TIMEOUT_OPTIONS_INIT; set timeout_ns,
 * header, or both. */
typedef struct fg_timeout_options {
    /* The request's time budget from the moment it enters this stage; 0:
     * none (only an inbound header, if any, sets a deadline). */
    uint64_t timeout_ns;
    /* An inbound header carrying the caller's remaining time in
     * grpc-timeout form (e.g. "grpc-timeout"); copied; NULL: none. A value
     * that does not parse is ignored and counted. */
    const char *header;
    /* Cap on an inbound header's value; 0: none. A caller cannot ask for
     * more time than this. */
    uint64_t max_inbound_ns;
} fg_timeout_options;

/* Defaults: nothing set. */
#define FG_TIMEOUT_OPTIONS_INIT                                                               \
    { 0, NULL, 0 }

/*
 * fg_stage_timeout - a stage that gives a request a deadline: the earliest
 * of the deadline it already has, now + timeout_ns, and now + the inbound
 * header's timeout (capped by max_inbound_ns). It never rejects by itself:
 * the chain rejects once the deadline has passed (see above). Its exit
 * counts the requests that finished after their deadline.
 *
 * Returns: 0 and *out; FG_EINVAL for NULL opts or out, both timeout_ns and
 * header unset, or a header that is not an HTTP token; FG_ETOOLONG for a
 * name over FG_STAGE_NAME_MAX or a header name over 128 bytes; FG_ENOMEM.
 * Ownership: opts copied; the caller owns one reference to *out (NULL name:
 * "timeout"). Thread-safety: MT-safe.
 */
FG_API int fg_stage_timeout(const fg_timeout_options *opts, const char *name, fg_stage **out);

/* What a timeout stage has counted (fg_timeout_stats_get). */
typedef struct fg_timeout_stats {
    uint64_t requests;        /* entered the stage */
    uint64_t shortened;       /* whose deadline this stage set or shortened */
    uint64_t inbound;         /* that carried a valid inbound header */
    uint64_t inbound_invalid; /* whose inbound header did not parse */
    uint64_t late;            /* admitted, but finished after their deadline */
    uint64_t timed_out;       /* rejected with FG_ETIMEDOUT after this stage admitted them */
} fg_timeout_stats;

/*
 * fg_timeout_stats_get - the stage's counters.
 * Returns: 0; FG_EINVAL for NULL or a stage that is not a timeout stage.
 * Thread-safety: MT-safe; each counter is read atomically.
 */
FG_API int fg_timeout_stats_get(const fg_stage *stage, fg_timeout_stats *out);

FG_END_DECLS

#endif /* FLOODGATE_DEADLINE_H */
