/*
 * floodgate/error.h - error codes, one table for all of floodgate.
 *
 * Every floodgate function that can fail returns an int: 0 on success or a
 * negative FG_E* code. Request outcomes (rate limited, breaker open, ...) are
 * codes from the same table, so one switch handles both. The values are
 * pinned: a code is never renumbered or reused, new codes are only appended.
 */
#ifndef FLOODGATE_ERROR_H
#define FLOODGATE_ERROR_H

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
    FG_OK = 0,
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

FG_END_DECLS

#endif /* FLOODGATE_ERROR_H */
