/*
 * floodgate/error.h - error codes, one table for all of floodgate.
 *
 * Every floodgate function that can fail returns an int: 0 on success or a
 * negative FG_E* code. Request outcomes (rate limited, breaker open, ...) are
 * codes from the same table, so one switch handles both. The values are
 * pinned: a code is never renumbered or reused, new codes are only appended.
 *
 * Where a code is not enough (a log line, an error handed up through a
 * service), a fg_error carries the code with a message, the trace it
 * happened in, the retry count, the rejecting stage and a chain of causes,
 * and writes itself as one JSON log line.
 */
#ifndef FLOODGATE_ERROR_H
#define FLOODGATE_ERROR_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/*
 * FG_ERRNO_MAP(XX) - the table. XX(name, value, message) is expanded once per
 * code; the enum below, fg_strerror() and fg_err_name() are all generated
 * from it. Callers may expand it too, e.g. to map codes to HTTP statuses.
 *
 * -1 .. -99 are API and configuration errors; -100 .. -199 are request
 * outcomes that a stage or the chain reports for one request.
 */
#define FG_ERRNO_MAP(XX)                                                                      \
    XX(EINVAL, -1, "invalid argument")                                                        \
    XX(ENOMEM, -2, "out of memory")                                                           \
    XX(ETOOLONG, -3, "value longer than its bound")                                           \
    XX(ETOOMANY, -4, "more items than the bound allows")                                      \
    XX(ESTATE, -5, "operation not allowed in the object's current state")                     \
    XX(ENOTFOUND, -6, "no such item")                                                         \
    XX(EEXIST, -7, "item already exists")                                                     \
    XX(ERANGE, -8, "value out of range")                                                      \
    XX(ECONFIG, -9, "invalid configuration")                                                  \
    XX(ESYS, -10, "system call failed")                                                       \
    XX(EPARSE, -11, "malformed input")                                                        \
    XX(ELIMITED, -100, "rate limited")                                                        \
    XX(EBREAKER, -101, "circuit breaker open")                                                \
    XX(ENOROUTE, -102, "no route matches the request")                                        \
    XX(ETIMEDOUT, -103, "deadline exceeded")                                                  \
    XX(EOVERLOADED, -104, "overloaded: too many requests in flight")                          \
    XX(EINJECTED, -105, "fault injected")                                                     \
    XX(EHANDLER, -106, "handler failed")                                                      \
    XX(ECANCELED, -107, "request canceled")                                                   \
    XX(EREJECTED, -108, "rejected by a stage")

FG_BEGIN_DECLS

/* FG_OK is 0; every FG_E<name> from the table is its negative value. */
enum fg_errno {
    FG_OK = 0, /* success */
#define FG_ERRNO_ENUM_(name, value, msg) FG_##name = (value),
    FG_ERRNO_MAP(FG_ERRNO_ENUM_)
#undef FG_ERRNO_ENUM_
};

/*
 * fg_strerror - a stable, human-readable message for a code.
 *
 * Returns: a static string: "success" for 0, the table's message for a known
 * code, "unknown error" for anything else. Never NULL.
 * Ownership: the library's; do not free.
 * Thread-safety: MT-safe.
 */
FG_API const char *fg_strerror(int code);

/*
 * fg_err_name - the symbolic name of a code, e.g. "FG_ELIMITED".
 *
 * Returns: a static string: "FG_OK" for 0, "FG_E<name>" for a known code,
 * "FG_EUNKNOWN" for anything else. Never NULL.
 * Ownership: the library's; do not free.
 * Thread-safety: MT-safe.
 */
FG_API const char *fg_err_name(int code);

/*
 * fg_err_is_outcome - whether a code is a request outcome (-100 .. -199:
 * rejected, timed out, handler failed, ...) rather than an API error.
 *
 * Returns: 1 for a known outcome code, 0 otherwise.
 * Thread-safety: MT-safe.
 */
FG_API int fg_err_is_outcome(int code);

/*
 * fg_outcome_name - the short name of how a request ended, as logs, metrics
 * labels and `floodgate replay` write it: "ok" for 0, then "rate_limited",
 * "breaker_open", "no_route", "timed_out", "overloaded", "fault_injected",
 * "handler_failed", "canceled", "rejected" for the outcome codes.
 *
 * Returns: a static string; NULL for any other code (an API error is not an
 * outcome). Thread-safety: MT-safe.
 */
FG_API const char *fg_outcome_name(int code);

/* ---- error values ------------------------------------------------------------- */

#define FG_ERROR_MESSAGE_MAX 1024 /* bytes of message kept; longer ones are cut */
#define FG_ERROR_LOG_CAUSES  16   /* causes a log line lists; the rest are counted */

struct fg_ctx;

/*
 * fg_error - an error value (opaque, on the heap): code, message, trace-id
 * and span-id, retry count, rejecting stage, and an optional cause, which is
 * itself a fg_error (a chain, like Go's wrapped errors). An error owns its
 * cause. Setters and getters accept NULL and do nothing / return a neutral
 * value, so error paths need no checks of their own.
 *
 * Out of memory: constructors never return NULL for a real error. When they
 * cannot allocate they return a shared static error (code FG_ENOMEM) that
 * setters leave unchanged and fg_error_free ignores.
 *
 * Thread-safety: an error belongs to one thread at a time; getters are
 * MT-safe on an error nobody modifies.
 */
typedef struct fg_error fg_error;

#if defined(__GNUC__)
#define FG_PRINTF_(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define FG_PRINTF_(fmt, args)
#endif

/*
 * fg_error_new - a new error with code and a printf-style message (NULL
 * fmt: fg_strerror(code)).
 *
 * Returns: the error (see "Out of memory" above).
 * Ownership: the caller owns it: fg_error_free, or hand it to fg_error_wrap.
 */
FG_API fg_error *fg_error_new(int code, const char *fmt, ...) FG_PRINTF_(2, 3);

/*
 * fg_error_wrap - a new error whose cause is `cause`; it starts with the
 * cause's trace ids, retry count and stage, so wrapping keeps the trace.
 * NULL cause makes it fg_error_new.
 *
 * Returns: the new error. Out of memory: returns cause itself (the wrap is
 * lost, the cause kept).
 * Ownership: takes cause; the caller owns the result.
 */
FG_API fg_error *fg_error_wrap(fg_error *cause, int code, const char *fmt, ...)
    FG_PRINTF_(3, 4);

/*
 * fg_error_from_ctx - the error a request ended with: ctx->status as the
 * code, the message "rejected by stage '<name>': <strerror>" (or the
 * strerror alone when no stage rejected), ctx's trace ids, retry count,
 * rejecting stage and retry-after hint.
 *
 * Returns: the error; NULL when ctx is NULL or ctx->status is 0 (the
 * request succeeded: there is no error).
 * Ownership: the caller owns the result. Thread-safety: reads ctx.
 */
FG_API fg_error *fg_error_from_ctx(const struct fg_ctx *ctx);

/*
 * fg_error_set_trace - attach a trace: trace_id (16 bytes) and span_id (8
 * bytes; NULL: zero). A NULL or all-zero trace_id detaches it.
 */
FG_API void fg_error_set_trace(fg_error *err, const uint8_t trace_id[16],
                               const uint8_t span_id[8]);

/* fg_error_set_retry_count - the number of retries made before the error. */
FG_API void fg_error_set_retry_count(fg_error *err, uint32_t retry_count);

/* fg_error_code - the code; 0 for NULL. */
FG_API int fg_error_code(const fg_error *err);

/* fg_error_message - the message; "" for NULL. Borrowed from err. */
FG_API const char *fg_error_message(const fg_error *err);

/* fg_error_cause - the cause, or NULL. Borrowed from err. */
FG_API const fg_error *fg_error_cause(const fg_error *err);

/*
 * fg_error_trace - copy the trace ids (either pointer may be NULL).
 * Returns: 0; FG_ENOTFOUND when err carries no trace (or is NULL).
 */
FG_API int fg_error_trace(const fg_error *err, uint8_t trace_id[16], uint8_t span_id[8]);

/* fg_error_retry_count - retries made before the error; 0 for NULL. */
FG_API uint32_t fg_error_retry_count(const fg_error *err);

/* fg_error_retry_after_ns - the rejecting stage's retry-after hint; 0 for
 * none or NULL. */
FG_API uint64_t fg_error_retry_after_ns(const fg_error *err);

/* fg_error_stage - the rejecting stage's name, or NULL. Borrowed. */
FG_API const char *fg_error_stage(const fg_error *err);

/*
 * fg_error_has - whether err or any of its causes has code (Go's
 * errors.Is). Returns 1 or 0.
 */
FG_API int fg_error_has(const fg_error *err, int code);

/*
 * fg_error_log_json - one structured log line for err, as compact JSON and a
 * NUL (no newline), e.g.
 *   {"level":"warn","msg":"rejected by stage 'api': rate limited",
 *    "code":"FG_ELIMITED","trace_id":"4bf9...","span_id":"00f0...",
 *    "retry":0,"stage":"api","retry_after_ms":250,
 *    "causes":[{"code":"...","msg":"..."}]}
 * level is copied as given (NULL: "error"). trace_id/span_id appear when
 * the error carries a trace, stage and retry_after_ms when set, causes
 * (outermost first, at most FG_ERROR_LOG_CAUSES, then "causes_omitted")
 * when there is a cause. Strings are JSON-escaped.
 *
 * Returns: 0 and *len (without the NUL; len may be NULL); FG_ETOOLONG when
 * the line and its NUL do not fit in cap (buf then holds "" when cap > 0);
 * FG_EINVAL for NULL err or buf; FG_ENOMEM.
 * Allocation: the JSON is built by jansson, whose temporary allocations
 * use jansson's own allocator (json_set_alloc_funcs, process-wide and the
 * application's to set), not fg_set_alloc_funcs.
 * Thread-safety: MT-safe on an err nobody modifies.
 */
FG_API int fg_error_log_json(const fg_error *err, const char *level, char *buf, size_t cap,
                             size_t *len);

/* fg_error_free - free err and its causes. NULL is ignored. */
FG_API void fg_error_free(fg_error *err);

FG_END_DECLS

#endif /* FLOODGATE_ERROR_H */
