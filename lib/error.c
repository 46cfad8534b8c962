/*
 * lib/error.c - messages and names for the error table, and the version.
 * Both lookups are generated from FG_ERRNO_MAP, so they cannot drift apart.
 */
#include "floodgate/error.h"
#include "floodgate/version.h"

const char *fg_strerror(int code) {
    switch (code) {
    case FG_OK:
        return "success";
#define FG_STRERROR_CASE_(name, value, msg)                                                   \
    case FG_##name:                                                                           \
        return msg;
        FG_ERRNO_MAP(FG_STRERROR_CASE_)
#undef FG_STRERROR_CASE_
    default:
        return "unknown error";
    }
}

const char *fg_err_name(int code) {
    switch (code) {
    case FG_OK:
        return "FG_OK";
#define FG_ERR_NAME_CASE_(name, value, msg)                                                   \
    case FG_##name:                                                                           \
        return "FG_" #name;
        FG_ERRNO_MAP(FG_ERR_NAME_CASE_)
#undef FG_ERR_NAME_CASE_
    default:
        return "FG_EUNKNOWN";
    }
}

int fg_err_is_outcome(int code) {
    switch (code) {
#define FG_OUTCOME_CASE_(name, value, msg)                                                    \
    case FG_##name:                                                                           \
        return (value) <= -100 && (value) >= -199;
        FG_ERRNO_MAP(FG_OUTCOME_CASE_)
#undef FG_OUTCOME_CASE_
    default:
        return 0;
    }
}

const char *fg_outcome_name(int code) {
    switch (code) {
    case 0:
        return "ok";
    case FG_ELIMITED:
        return "rate_limited";
    case FG_EBREAKER:
        return "breaker_open";
    case FG_ENOROUTE:
        return "no_route";
    case FG_ETIMEDOUT:
        return "timed_out";
    case FG_EOVERLOADED:
        return "overloaded";
    case FG_EINJECTED:
        return "fault_injected";
    case FG_EHANDLER:
        return "handler_failed";
    case FG_ECANCELED:
        return "canceled";
    case FG_EREJECTED:
        return "rejected";
    default:
        return NULL;
    }
}

unsigned fg_version(void) { return FG_VERSION_NUMBER; }

const char *fg_version_string(void) { return FG_VERSION_STRING; }
