"""floodgate - Python bindings for the floodgate C library (ctypes, standard library only).

This module loads libfloodgate.so with ctypes and wraps the parts of the C API
a Python service needs: a runtime that serves a hot-reloaded JSON config with
Python handlers (synchronously, or in two halves with enter/exit), the token
bucket limiter, the circuit breaker, W3C traceparent parsing and formatting,
and the runtime's metrics. Every failure is raised as a FloodgateError
subclass carrying the floodgate code.

Where the library is found: the path in the environment variable
FLOODGATE_LIB, else ctypes.util.find_library("floodgate"). Importing the
module raises ImportError with a clear message when neither finds it.

Layout: the module never depends on the layout of fg_ctx. Requests live on
the C heap (fg_ctx_new) and are read through accessor functions. The plain
structures it mirrors (options, stats, traceparent, config errors) are
checked against the C headers by the test suite.

Threads and the GIL: the library is loaded with ctypes.CDLL, which releases
the GIL for the length of every foreign call, so other Python threads run
while floodgate works (or sleeps). Calls from C back into Python (handlers,
fallbacks, clocks, breaker listeners, reload callbacks) go through ctypes
callback trampolines that take the GIL first, from whatever thread the C
code runs on, including threads Python did not start (the file watcher's).
A Python exception never crosses into C: a callback catches it, a handler's
or fallback's is raised again to the caller of call()/dispatch(), and a
listener's is reported through sys.unraisablehook. docs/python.md has the
details.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import datetime
import enum
import json
import os
import sys
import threading
import types
import warnings
import weakref
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_double,
    c_int,
    c_size_t,
    c_uint,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)

__all__ = [
    # errors
    "Code", "FloodgateError", "InvalidArgument", "OutOfMemory", "TooLong", "TooMany",
    "StateError", "NotFound", "AlreadyExists", "OutOfRange", "ConfigError", "ConfigIssue",
    "SystemCallError", "ParseError", "RequestError", "RateLimited", "BreakerOpen", "NoRoute",
    "TimedOut", "Overloaded", "FaultInjected", "HandlerFailed", "Canceled", "Rejected",
    "strerror", "err_name", "outcome_name", "is_outcome",
    # clocks
    "Clock", "MonotonicClock", "FakeClock", "CallbackClock",
    # requests and runtime
    "Request", "Admission", "Registry", "Runtime", "Watch", "WatchStats", "check_config",
    # components
    "Limiter", "LimiterOptions", "Breaker", "BreakerPermit", "BreakerStats", "BreakerEvent",
    "TraceParent", "new_trace_id", "new_span_id", "Metrics", "RouteStats",
    # library
    "library_path", "library_version", "ctx_size",
]

ABI_MAJOR = 0  # the soname major this module was written for (libfloodgate.so.0)


# ---- loading the library ---------------------------------------------------------------------


def _load_library():
    path = os.environ.get("FLOODGATE_LIB")
    how = "FLOODGATE_LIB"
    if not path:
        path = ctypes.util.find_library("floodgate")
        how = 'ctypes.util.find_library("floodgate")'
    if not path:
        raise ImportError(
            "floodgate: libfloodgate not found: set FLOODGATE_LIB to the path of "
            "libfloodgate.so (for example build/release/libfloodgate.so after `make`), "
            "or install floodgate where the dynamic linker looks (make install; ldconfig)"
        )
    try:
        lib = ctypes.CDLL(path)  # CDLL: the GIL is released during every call
    except OSError as e:
        raise ImportError(f"floodgate: cannot load {path!r} (from {how}): {e}") from e
    try:
        version = lib.fg_version
    except AttributeError:
        raise ImportError(f"floodgate: {path!r} (from {how}) is not libfloodgate") from None
    version.restype = c_uint
    version.argtypes = []
    if version() // 10000 != ABI_MAJOR:
        raise ImportError(
            f"floodgate: {path!r} is version {version()}, this module needs major {ABI_MAJOR}"
        )
    return lib, path


_lib, _lib_path = _load_library()


def _fn(name, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


# ---- plain structures mirrored from the headers ----------------------------------------------
# Each names its C type in _c_name_; tests/test_python.sh's suite compiles a
# program that prints sizeof and offsetof for every one and compares.

P = POINTER


class _Str(Structure):
    _c_name_ = "fg_str"
    _fields_ = [("ptr", c_void_p), ("len", c_size_t)]


class _ClockC(Structure):
    _c_name_ = "fg_clock"
    _fields_ = [("now", c_void_p), ("arg", c_void_p), ("sleep", c_void_p)]


class _LimiterOptionsC(Structure):
    _c_name_ = "fg_limiter_options"
    _fields_ = [
        ("rate", c_uint64),
        ("period_ns", c_uint64),
        ("burst", c_uint64),
        ("max_wait_ns", c_uint64),
        ("warmup_ns", c_uint64),
        ("cold_factor", c_uint32),
        ("clock", _ClockC),
    ]


class _BreakerOptionsC(Structure):
    _c_name_ = "fg_breaker_options"
    _fields_ = [
        ("failure_ratio", c_double),
        ("slow_ratio", c_double),
        ("slow_call_ns", c_uint64),
        ("min_requests", c_uint32),
        ("consecutive_failures", c_uint32),
        ("window", c_int),
        ("window_size", c_uint32),
        ("window_ns", c_uint64),
        ("window_buckets", c_uint32),
        ("open_for_ns", c_uint64),
        ("open_backoff", c_double),
        ("max_open_ns", c_uint64),
        ("half_open_probes", c_uint32),
        ("half_open_timeout_ns", c_uint64),
        ("clock", _ClockC),
        ("listener", c_void_p),
        ("listener_arg", c_void_p),
    ]


class _BreakerStatsC(Structure):
    _c_name_ = "fg_breaker_stats"
    _fields_ = [("state", c_int), ("mode", c_int)] + [
        (n, c_uint64)
        for n in (
            "generation", "window_calls", "window_failures", "window_slow",
            "consecutive_failures", "open_until_ns", "probes_admitted", "probes_succeeded",
            "rejected", "shadow_rejected", "discarded", "opened", "half_opened", "closed",
        )
    ]


class _BreakerEventC(Structure):
    _c_name_ = "fg_breaker_event"
    _fields_ = [
        ("from_", c_int),
        ("to", c_int),
        ("mode", c_int),
        ("reason", c_int),
        ("at_ns", c_uint64),
        ("generation", c_uint64),
        ("open_for_ns", c_uint64),
    ]


class _TraceParentC(Structure):
    _c_name_ = "fg_traceparent"
    _fields_ = [
        ("version", c_uint8),
        ("trace_id", c_uint8 * 16),
        ("parent_id", c_uint8 * 8),
        ("flags", c_uint8),
    ]


class _TraceHeadersC(Structure):
    _c_name_ = "fg_trace_headers"
    _fields_ = [("traceparent", _Str), ("tracestate", _Str), ("baggage", _Str)]


class _ConfigErrorC(Structure):
    _c_name_ = "fg_config_error"
    _fields_ = [
        ("path", ctypes.c_char * 192),
        ("line", c_int),
        ("column", c_int),
        ("message", ctypes.c_char * 224),
    ]


CONFIG_MAX_ERRORS = 32


class _ConfigErrorsC(Structure):
    _c_name_ = "fg_config_errors"
    _fields_ = [
        ("count", c_size_t),
        ("omitted", c_size_t),
        ("items", _ConfigErrorC * CONFIG_MAX_ERRORS),
    ]


class _WatchOptionsC(Structure):
    _c_name_ = "fg_watch_options"
    _fields_ = [
        ("debounce_ns", c_uint64),
        ("on_reload", c_void_p),
        ("arg", c_void_p),
        ("timeout_ns", c_uint64),
        ("backoff_min_ns", c_uint64),
        ("backoff_max_ns", c_uint64),
    ]


class _WatchStatsC(Structure):
    _c_name_ = "fg_watch_stats"
    _fields_ = [
        ("attempts", c_uint64),
        ("loaded", c_uint64),
        ("failed", c_uint64),
        ("revision", c_uint64),
        ("reconnects", c_uint64),
    ]


class _RouteStatsC(Structure):
    _c_name_ = "fg_route_stats"
    _fields_ = [
        ("ok", c_uint64),
        ("failed", c_uint64),
        ("rejected", c_uint64),
        ("rejected_by_code", c_uint64 * 9),
        ("other", c_uint64),
        ("delayed", c_uint64),
        ("delay_ns", c_uint64),
        ("latency_count", c_uint64),
        ("latency_sum_ns", c_uint64),
        ("p50_ns", c_uint64),
        ("p90_ns", c_uint64),
        ("p99_ns", c_uint64),
        ("p999_ns", c_uint64),
    ]


# The structures the layout test checks.
_MIRRORED = (
    _Str, _ClockC, _LimiterOptionsC, _BreakerOptionsC, _BreakerStatsC, _BreakerEventC,
    _TraceParentC, _TraceHeadersC, _ConfigErrorC, _ConfigErrorsC, _WatchOptionsC,
    _WatchStatsC, _RouteStatsC,
)

# ---- callback types --------------------------------------------------------------------------

_HANDLER_FN = CFUNCTYPE(c_int, c_void_p, c_void_p)  # int (*)(fg_ctx *, void *)
_FALLBACK_FN = CFUNCTYPE(c_int, c_void_p, c_int, c_void_p)  # int (*)(fg_ctx *, int, void *)
_CLOCK_NOW_FN = CFUNCTYPE(c_uint64, c_void_p)  # uint64_t (*)(void *)
_BREAKER_LISTENER_FN = CFUNCTYPE(None, c_void_p, P(_BreakerEventC), c_void_p)
_RT_BREAKER_FN = CFUNCTYPE(None, c_char_p, P(_BreakerEventC), c_void_p)
_RELOAD_FN = CFUNCTYPE(None, c_void_p, c_int, P(_ConfigErrorsC), c_void_p)

# ---- prototypes ------------------------------------------------------------------------------

_VPP = P(c_void_p)
_U64P = P(c_uint64)
_SIZEP = P(c_size_t)
_U8P = P(c_uint8)

_lib_version_string = _fn("fg_version_string", c_char_p)
_strerror = _fn("fg_strerror", c_char_p, c_int)
_err_name = _fn("fg_err_name", c_char_p, c_int)
_err_is_outcome = _fn("fg_err_is_outcome", c_int, c_int)
_outcome_name = _fn("fg_outcome_name", c_char_p, c_int)

_ctx_size = _fn("fg_ctx_size", c_size_t)
_ctx_new = _fn("fg_ctx_new", c_int, _VPP)
_ctx_free = _fn("fg_ctx_free", None, c_void_p)
_ctx_init_n = _fn("fg_ctx_init_n", c_int, c_void_p, c_char_p, c_size_t, c_char_p, c_size_t)
_ctx_add_header_n = _fn(
    "fg_ctx_add_header_n", c_int, c_void_p, c_char_p, c_size_t, c_char_p, c_size_t
)
_ctx_status = _fn("fg_ctx_status", c_int, c_void_p)
_ctx_route = _fn("fg_ctx_route", c_char_p, c_void_p)  # c_char_p: copied to bytes at once
_ctx_target = _fn("fg_ctx_target", c_char_p, c_void_p)
_ctx_rejected_by = _fn("fg_ctx_rejected_by", c_char_p, c_void_p)
_ctx_retry_after = _fn("fg_ctx_retry_after", c_uint64, c_void_p)
_ctx_delay = _fn("fg_ctx_delay", c_uint64, c_void_p)
_ctx_trace_id = _fn("fg_ctx_trace_id", c_int, c_void_p, c_char_p, c_size_t)
_ctx_param = _fn("fg_ctx_param", c_int, c_void_p, c_char_p, P(_Str))
_ctx_baggage = _fn(
    "fg_ctx_baggage", c_int, c_void_p, c_char_p, c_size_t, c_char_p, c_size_t, _SIZEP
)
_ctx_time_left = _fn("fg_ctx_time_left", c_uint64, c_void_p)
_ctx_set_deadline = _fn("fg_ctx_set_deadline", c_int, c_void_p, c_uint64)
_ctx_cancel = _fn("fg_ctx_cancel", None, c_void_p)
_ctx_canceled = _fn("fg_ctx_canceled", c_int, c_void_p)
_trace_outgoing = _fn(
    "fg_trace_outgoing", c_int, c_void_p, c_char_p, c_char_p, c_size_t, P(_TraceHeadersC)
)
_route_dispatch = _fn("fg_route_dispatch", c_int, c_void_p)

_clock_monotonic = _fn("fg_clock_monotonic", _ClockC)
_clock_read = _fn("fg_clock_read", c_uint64, P(_ClockC))
_clock_sleep = _fn("fg_clock_sleep", None, P(_ClockC), c_uint64)
_fake_clock_new = _fn("fg_fake_clock_new", c_int, c_uint64, _VPP)
_fake_clock_free = _fn("fg_fake_clock_free", None, c_void_p)
_fake_clock_as_clock = _fn("fg_fake_clock_as_clock", _ClockC, c_void_p)
_fake_clock_set = _fn("fg_fake_clock_set", None, c_void_p, c_uint64)
_fake_clock_advance = _fn("fg_fake_clock_advance", c_uint64, c_void_p, c_uint64)
_fake_clock_now = _fn("fg_fake_clock_now", c_uint64, c_void_p)

_limiter_new = _fn("fg_limiter_new", c_int, P(_LimiterOptionsC), _VPP)
_limiter_free = _fn("fg_limiter_free", None, c_void_p)
_limiter_try = _fn("fg_limiter_try", c_int, c_void_p, c_uint64, c_uint64, _U64P)
_limiter_try_wait = _fn(
    "fg_limiter_try_wait", c_int, c_void_p, c_uint64, c_uint64, c_uint64, _U64P
)
_limiter_set_rate = _fn("fg_limiter_set_rate", c_int, c_void_p, c_uint64, c_uint64)
_limiter_set_burst = _fn("fg_limiter_set_burst", c_int, c_void_p, c_uint64)
_limiter_tokens = _fn("fg_limiter_tokens", c_uint64, c_void_p, c_uint64)
_limiter_get = _fn("fg_limiter_get", c_int, c_void_p, P(_LimiterOptionsC))

_breaker_new = _fn("fg_breaker_new", c_int, P(_BreakerOptionsC), _VPP)
_breaker_free = _fn("fg_breaker_free", None, c_void_p)
_breaker_enter = _fn("fg_breaker_enter", c_int, c_void_p, c_uint64, _U64P, _U64P)
_breaker_exit = _fn("fg_breaker_exit", c_int, c_void_p, c_uint64, c_uint64, c_int, c_uint64)
_breaker_state = _fn("fg_breaker_state", c_int, c_void_p)
_breaker_snapshot = _fn("fg_breaker_snapshot", c_int, c_void_p, c_uint64, P(_BreakerStatsC))
_breaker_set_mode = _fn("fg_breaker_set_mode", c_int, c_void_p, c_int)
_breaker_reset = _fn("fg_breaker_reset", c_int, c_void_p)
_breaker_state_name = _fn("fg_breaker_state_name", c_char_p, c_int)
_breaker_reason_name = _fn("fg_breaker_reason_name", c_char_p, c_int)
_breaker_mode_name = _fn("fg_breaker_mode_name", c_char_p, c_int)

_traceparent_parse = _fn("fg_traceparent_parse", c_int, c_char_p, c_size_t, P(_TraceParentC))
_traceparent_format = _fn("fg_traceparent_format", c_int, P(_TraceParentC), c_char_p, c_size_t)
_trace_id_new = _fn("fg_trace_id_new", None, _U8P)
_span_id_new = _fn("fg_span_id_new", None, _U8P)

_runtime_new = _fn("fg_runtime_new", c_int, _VPP)
_runtime_free = _fn("fg_runtime_free", None, c_void_p)
_runtime_call = _fn("fg_runtime_call", c_int, c_void_p, c_void_p, c_void_p, c_void_p)
_runtime_enter = _fn("fg_runtime_enter", c_int, c_void_p, c_void_p)
_runtime_exit = _fn("fg_runtime_exit", c_int, c_void_p, c_void_p, c_int)
_runtime_set_clock = _fn("fg_runtime_set_clock", c_int, c_void_p, _ClockC)
_runtime_set_breaker_listener = _fn(
    "fg_runtime_set_breaker_listener", c_int, c_void_p, _RT_BREAKER_FN, c_void_p
)
_runtime_generation = _fn("fg_runtime_generation", c_uint64, c_void_p)
_runtime_version = _fn("fg_runtime_version", c_int, c_void_p, c_char_p, c_size_t)

_config_errors_format = _fn(
    "fg_config_errors_format", c_size_t, P(_ConfigErrorsC), c_char_p, c_size_t
)
_registry_new = _fn("fg_registry_new", c_int, _VPP)
_registry_free = _fn("fg_registry_free", None, c_void_p)
_registry_add_handler = _fn(
    "fg_registry_add_handler", c_int, c_void_p, c_char_p, _HANDLER_FN, c_void_p
)
_registry_add_fallback = _fn(
    "fg_registry_add_fallback", c_int, c_void_p, c_char_p, _FALLBACK_FN, c_void_p
)
_config_check = _fn("fg_config_check", c_int, c_void_p, c_char_p, c_size_t, P(_ConfigErrorsC))
_runtime_load_json = _fn(
    "fg_runtime_load_json", c_int, c_void_p, c_void_p, c_char_p, c_size_t, P(_ConfigErrorsC)
)
_runtime_load_file = _fn(
    "fg_runtime_load_file", c_int, c_void_p, c_void_p, c_char_p, P(_ConfigErrorsC)
)
_runtime_watch = _fn(
    "fg_runtime_watch", c_int, c_void_p, c_void_p, c_char_p, P(_WatchOptionsC), _VPP
)
_watch_stats_get = _fn("fg_watch_stats_get", c_int, c_void_p, P(_WatchStatsC))
_watch_stop = _fn("fg_watch_stop", None, c_void_p)

_runtime_metrics = _fn("fg_runtime_metrics", c_void_p, c_void_p)
_metrics_prometheus = _fn("fg_metrics_prometheus", c_int, c_void_p, c_char_p, c_size_t, _SIZEP)
_metrics_json = _fn("fg_metrics_json", c_int, c_void_p, c_char_p, c_size_t, _SIZEP)
_metrics_route = _fn("fg_metrics_route", c_int, c_void_p, c_char_p, c_char_p, P(_RouteStatsC))
_metrics_stage_rejections = _fn(
    "fg_metrics_stage_rejections", c_uint64, c_void_p, c_char_p, c_int
)

UINT64_MAX = (1 << 64) - 1
NS_PER_S = 1_000_000_000


def library_path() -> str:
    """The path the shared library was loaded from."""
    return _lib_path


def library_version() -> str:
    """The version of the loaded library, e.g. "0.1.0" (fg_version_string)."""
    return _lib_version_string().decode()


def ctx_size() -> int:
    """sizeof(fg_ctx) in the loaded library (fg_ctx_size). This module never
    depends on it: requests are allocated by the library and read through
    accessors."""
    return _ctx_size()


# ---- small helpers ---------------------------------------------------------------------------


def _b(s, what="value") -> bytes:
    """str (UTF-8) or bytes-like as bytes."""
    if isinstance(s, bytes):
        return s
    if isinstance(s, str):
        return s.encode("utf-8", "surrogateescape")
    if isinstance(s, (bytearray, memoryview)):
        return bytes(s)
    raise InvalidArgument(detail=f"{what} must be str or bytes, not {type(s).__name__}")


def _s(b):
    return None if b is None else b.decode("utf-8", "surrogateescape")


def _ns(duration, what="duration") -> int:
    """A duration in seconds (int, float or datetime.timedelta) as integer ns."""
    if duration is None:
        return 0
    if isinstance(duration, datetime.timedelta):
        ns = (duration.days * 86400 + duration.seconds) * NS_PER_S + duration.microseconds * 1000
    elif isinstance(duration, int):
        ns = duration * NS_PER_S
    elif isinstance(duration, float):
        if duration != duration:
            raise InvalidArgument(detail=f"{what} is not a number")
        ns = round(duration * NS_PER_S)
    else:
        raise InvalidArgument(detail=f"{what} must be seconds (int, float) or a timedelta")
    if ns < 0:
        raise InvalidArgument(detail=f"{what} must not be negative")
    if ns > UINT64_MAX:
        raise OutOfRange(detail=f"{what} is too long")
    return ns


def _free_keep(free, h, _keepalive):
    """A finalizer: free h; _keepalive (clocks, callbacks the C object uses)
    is referenced until then."""
    free(h)


def _report_unraisable(exc, where, obj=None):
    """Report an exception no caller can receive (raised in a C callback)."""
    try:
        sys.unraisablehook(
            types.SimpleNamespace(
                exc_type=type(exc),
                exc_value=exc,
                exc_traceback=exc.__traceback__,
                err_msg=f"Exception ignored in floodgate {where}",
                object=obj,
            )
        )
    except BaseException:  # noqa: BLE001 - nothing may escape into C
        pass


# ---- errors ----------------------------------------------------------------------------------


class Code(enum.IntEnum):
    """floodgate's codes (include/floodgate/error.h). Values are pinned."""

    OK = 0
    EINVAL = -1
    ENOMEM = -2
    ETOOLONG = -3
    ETOOMANY = -4
    ESTATE = -5
    ENOTFOUND = -6
    EEXIST = -7
    ERANGE = -8
    ECONFIG = -9
    ESYS = -10
    EPARSE = -11
    ELIMITED = -100
    EBREAKER = -101
    ENOROUTE = -102
    ETIMEDOUT = -103
    EOVERLOADED = -104
    EINJECTED = -105
    EHANDLER = -106
    ECANCELED = -107
    EREJECTED = -108


def strerror(code: int) -> str:
    """fg_strerror: "rate limited", "success", "unknown error", ..."""
    return _strerror(int(code)).decode()


def err_name(code: int) -> str:
    """fg_err_name: "FG_ELIMITED", "FG_OK", "FG_EUNKNOWN", ..."""
    return _err_name(int(code)).decode()


def outcome_name(code: int):
    """fg_outcome_name: "ok", "rate_limited", ...; None for a code that is not
    a request outcome."""
    return _s(_outcome_name(int(code)))


def is_outcome(code: int) -> bool:
    """Whether code is a request outcome (-100 .. -199) rather than an API error."""
    return bool(_err_is_outcome(int(code)))


def _as_code(code):
    try:
        return Code(code)
    except ValueError:
        return int(code)


class FloodgateError(Exception):
    """A floodgate failure: .code (a Code, or an int for a code this module
    does not know), .name (fg_err_name), .message (fg_strerror) and .detail
    (what the binding adds, may be None). Outcome errors (RequestError) also
    say which stage rejected the request, its route and the retry-after hint."""

    default_code = None  # set by each subclass

    def __init__(self, code=None, detail=None):
        if code is None:
            code = self.default_code if self.default_code is not None else Code.EREJECTED
        self.code = _as_code(code)
        self.name = err_name(self.code)
        self.message = strerror(self.code)
        self.detail = detail
        super().__init__(int(self.code), detail)

    def __str__(self):
        s = f"{self.name}: {self.message}"
        return f"{s}: {self.detail}" if self.detail else s

    def __reduce__(self):
        return (type(self), (int(self.code), self.detail))


class InvalidArgument(FloodgateError, ValueError):
    default_code = Code.EINVAL


class OutOfMemory(FloodgateError, MemoryError):
    default_code = Code.ENOMEM


class TooLong(FloodgateError, ValueError):
    default_code = Code.ETOOLONG


class TooMany(FloodgateError):
    default_code = Code.ETOOMANY


class StateError(FloodgateError):
    default_code = Code.ESTATE


class NotFound(FloodgateError, LookupError):
    default_code = Code.ENOTFOUND


class AlreadyExists(FloodgateError):
    default_code = Code.EEXIST


class OutOfRange(FloodgateError, ValueError):
    default_code = Code.ERANGE


class SystemCallError(FloodgateError):
    default_code = Code.ESYS


class ParseError(FloodgateError, ValueError):
    default_code = Code.EPARSE


@dataclasses.dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: its JSON path ("" for syntax errors), line and
    column (0 when the parser does not know them) and the message."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self):
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(FloodgateError):
    """FG_ECONFIG: a config was refused and the runtime kept the old one.
    .issues lists every problem (ConfigIssue), .omitted counts those past 32,
    and .text is fg_config_errors_format's text: one "path: message" per line."""

    default_code = Code.ECONFIG

    def __init__(self, code=None, detail=None, issues=(), omitted=0, text=""):
        super().__init__(code, detail)
        self.issues = list(issues)
        self.omitted = omitted
        self.text = text

    def __str__(self):
        s = super().__str__()
        return f"{s}:\n{self.text.rstrip()}" if self.text else s

    def __reduce__(self):
        return (
            type(self),
            (int(self.code), self.detail, self.issues, self.omitted, self.text),
        )


class RequestError(FloodgateError):
    """A request outcome other than success: rejected by a stage or by the
    chain, or failed in its handler. .stage is the rejecting stage's name (or
    None), .route and .target the router's choice (or None), .retry_after the
    rejecting stage's hint in seconds (0.0: none; .retry_after_ns exact) and
    .request the Request (or None)."""

    default_code = Code.EREJECTED

    def __init__(self, code=None, detail=None, *, stage=None, route=None, target=None,
                 retry_after_ns=0, request=None):
        super().__init__(code, detail)
        self.stage = stage
        self.route = route
        self.target = target
        self.retry_after_ns = int(retry_after_ns)
        self.request = request

    @property
    def outcome(self):
        """The outcome's short name ("rate_limited", ...), as metrics label it."""
        return outcome_name(self.code)

    @property
    def retry_after(self) -> float:
        return self.retry_after_ns / NS_PER_S

    def __str__(self):
        s = super().__str__()
        extra = []
        if self.stage:
            extra.append(f"stage {self.stage!r}")
        if self.route:
            extra.append(f"route {self.route!r}")
        if self.retry_after_ns:
            extra.append(f"retry after {self.retry_after:g}s")
        return f"{s} ({', '.join(extra)})" if extra else s


class RateLimited(RequestError):
    default_code = Code.ELIMITED


class BreakerOpen(RequestError):
    default_code = Code.EBREAKER


class NoRoute(RequestError):
    default_code = Code.ENOROUTE


class TimedOut(RequestError):
    default_code = Code.ETIMEDOUT


class Overloaded(RequestError):
    default_code = Code.EOVERLOADED


class FaultInjected(RequestError):
    default_code = Code.EINJECTED


class HandlerFailed(RequestError):
    default_code = Code.EHANDLER


class Canceled(RequestError):
    default_code = Code.ECANCELED


class Rejected(RequestError):
    default_code = Code.EREJECTED


_ERROR_CLASSES = {
    cls.default_code: cls
    for cls in (
        InvalidArgument, OutOfMemory, TooLong, TooMany, StateError, NotFound, AlreadyExists,
        OutOfRange, ConfigError, SystemCallError, ParseError, RateLimited, BreakerOpen,
        NoRoute, TimedOut, Overloaded, FaultInjected, HandlerFailed, Canceled, Rejected,
    )
}


def _error(code, detail=None, **info):
    """The exception for a negative code: its class from the table; an
    unknown outcome code gives RequestError, any other unknown code
    FloodgateError."""
    cls = _ERROR_CLASSES.get(code)
    if cls is None:
        cls = RequestError if is_outcome(code) or -199 <= code <= -100 else FloodgateError
    if issubclass(cls, RequestError):
        return cls(code, detail, **info)
    return cls(code, detail)


def _check(rc, detail=None):
    if rc < 0:
        raise _error(rc, detail)
    return rc


def _failure_code(exc) -> int:
    """The code a Python exception reports to C: a FloodgateError's own
    negative code, else FG_EHANDLER."""
    code = getattr(exc, "code", None) if isinstance(exc, FloodgateError) else None
    return int(code) if isinstance(code, int) and code < 0 else int(Code.EHANDLER)


def _config_error(rc, errors, detail=None):
    if rc != Code.ECONFIG and (errors is None or errors.count == 0):
        return _error(rc, detail)
    issues = []
    text = ""
    if errors is not None:
        n = min(errors.count, CONFIG_MAX_ERRORS)
        for i in range(n):
            it = errors.items[i]
            issues.append(ConfigIssue(_s(it.path), it.line, it.column, _s(it.message)))
        # Each line is under 512 bytes (lib/config.c), and there are at most
        # 32 and a "... and N more"; the function cannot report a size.
        cap = 512 * (CONFIG_MAX_ERRORS + 1) + 1
        buf = ctypes.create_string_buffer(cap)
        n = _config_errors_format(byref(errors), buf, cap)
        text = _s(buf.raw[:n])
    omitted = errors.omitted if errors is not None else 0
    if rc == Code.ECONFIG:
        return ConfigError(rc, detail, issues, omitted, text)
    err = _error(rc, detail or text.strip() or None)
    return err


# ---- clocks ----------------------------------------------------------------------------------


class Clock:
    """A floodgate clock (fg_clock): integer nanoseconds on a monotonic scale.
    Give one to a Runtime, Limiter or Breaker; every reading they take goes
    through it. Use MonotonicClock, FakeClock or CallbackClock."""

    def __init__(self, c_clock: _ClockC, keepalive=None):
        self._c = c_clock
        self._keepalive = keepalive  # a callback the C struct points to

    def now_ns(self) -> int:
        """The current reading in nanoseconds."""
        return _clock_read(byref(self._c))

    def now(self) -> float:
        """The current reading in seconds."""
        return self.now_ns() / NS_PER_S

    def sleep(self, seconds) -> None:
        """Wait on this clock (a fake clock just advances). The GIL is released."""
        _clock_sleep(byref(self._c), _ns(seconds, "sleep"))


class MonotonicClock(Clock):
    """CLOCK_MONOTONIC, the library's default clock."""

    def __init__(self):
        super().__init__(_clock_monotonic())


class FakeClock(Clock):
    """A clock that moves only when told (fg_fake_clock), for exact tests.
    It lives in C: reading it costs no GIL. Sleeping on it (a smoothing
    limiter's wait in Runtime.call) advances it by the time slept.
    It is freed when the last object using it is gone."""

    def __init__(self, start_ns: int = 0):
        h = c_void_p()
        _check(_fake_clock_new(int(start_ns), byref(h)))
        self._h = h.value
        super().__init__(_fake_clock_as_clock(self._h))
        self._finalizer = weakref.finalize(self, _fake_clock_free, self._h)

    def now_ns(self) -> int:
        return _fake_clock_now(self._h)

    def set_ns(self, ns: int) -> None:
        """Make the clock read ns (it may go back: stages tolerate it)."""
        _fake_clock_set(self._h, int(ns))

    def advance_ns(self, ns: int) -> int:
        """Move forward by ns; returns the new reading."""
        return _fake_clock_advance(self._h, int(ns))

    def advance(self, seconds) -> int:
        """Move forward by a duration in seconds; returns the new reading in ns."""
        return self.advance_ns(_ns(seconds, "advance"))


class CallbackClock(Clock):
    """A clock read from a Python callable returning integer nanoseconds.
    Every reading takes the GIL (the callable may run on any thread, at any
    time a request or a component reads the clock), so prefer FakeClock or
    MonotonicClock where speed matters. An exception in the callable is
    reported through sys.unraisablehook and the reading is 0 (which floodgate
    treats as no time having passed)."""

    def __init__(self, now_ns):
        if not callable(now_ns):
            raise InvalidArgument(detail="CallbackClock needs a callable")

        def now(_arg, _fn=now_ns):
            try:
                v = int(_fn())
                return v if 0 <= v <= UINT64_MAX else 0
            except BaseException as e:  # noqa: BLE001 - nothing may escape into C
                _report_unraisable(e, "clock callback", _fn)
                return 0

        cb = _CLOCK_NOW_FN(now)
        super().__init__(_ClockC(ctypes.cast(cb, c_void_p), None, None), keepalive=cb)
        self._fn = now_ns


_DEFAULT_CLOCK = None


def _clock_arg(clock):
    """A component's clock argument: a Clock, or None for the monotonic one."""
    global _DEFAULT_CLOCK
    if clock is None:
        if _DEFAULT_CLOCK is None:
            _DEFAULT_CLOCK = MonotonicClock()
        return _DEFAULT_CLOCK
    if not isinstance(clock, Clock):
        raise InvalidArgument(
            detail="clock must be a floodgate.Clock (MonotonicClock, FakeClock, CallbackClock)"
        )
    return clock


# ---- requests --------------------------------------------------------------------------------

# Requests inside a runtime, by the address of their fg_ctx: how a handler
# trampoline finds the Request a C callback names. Plain dict operations are
# atomic under the GIL.
_inflight: dict = {}


class Request:
    """One request: method, path and headers, and once it has run, how it
    ended. It owns a fg_ctx on the C heap (fg_ctx_new) and keeps the bytes
    the ctx borrows alive. A Request can be run again after it has finished
    (each run starts afresh), but by one thread at a time.

    timeout (seconds) gives each run a deadline that far from its start on
    the runtime's clock; the chain then rejects it with TimedOut once the
    deadline has passed (a running handler is not interrupted: poll
    time_left).
    """

    def __init__(self, method="GET", path="/", headers=None, *, timeout=None):
        self._method_b = _b(method, "method") if method is not None else b""
        self._path_b = _b(path, "path")
        if headers is None:
            pairs = []
        elif hasattr(headers, "items"):
            pairs = list(headers.items())
        else:
            pairs = list(headers)
        self._headers_b = tuple((_b(k, "header name"), _b(v, "header value")) for k, v in pairs)
        self.timeout = timeout
        self._timeout_ns = _ns(timeout, "timeout") if timeout is not None else None
        h = c_void_p()
        _check(_ctx_new(byref(h)))
        self._ctx = h.value
        self._finalizer = weakref.finalize(self, _ctx_free, self._ctx)
        self._busy = threading.Lock()  # held while the request is in a runtime
        self._canceled = False
        self._reset_outcome()
        self._init_ctx()  # validates method, path and headers now

    # -- running ------------------------------------------------------------------

    def _reset_outcome(self):
        self.route = None
        self.target = None
        self.stage = None
        self._result = None
        self._exc = None
        self._fresh = False
        self._in_flight = False

    def _init_ctx(self):
        m = self._method_b
        _check(
            _ctx_init_n(self._ctx, m if m else None, len(m), self._path_b, len(self._path_b)),
            f"request {self.method} {self.path!r}",
        )
        for name, value in self._headers_b:
            _check(
                _ctx_add_header_n(self._ctx, name, len(name), value, len(value)),
                f"header {_s(name)!r}",
            )
        self._fresh = True

    def _prepare(self, clock):
        """Before a run: a fresh ctx, the deadline and any cancellation."""
        if not self._fresh:
            self._reset_outcome()
            self._init_ctx()
        self._fresh = False
        self._result = None
        self._exc = None
        if self._timeout_ns is not None:
            _ctx_set_deadline(self._ctx, clock.now_ns() + self._timeout_ns)
        if self._canceled:
            _ctx_cancel(self._ctx)

    def _capture_names(self):
        r = _ctx_route(self._ctx)
        if r is not None:
            self.route = _s(r)
        t = _ctx_target(self._ctx)
        if t is not None:
            self.target = _s(t)

    def _capture_rejection(self):
        self._capture_names()
        st = _ctx_rejected_by(self._ctx)
        self.stage = _s(st)

    # -- reading ------------------------------------------------------------------

    @property
    def method(self) -> str:
        """The method ("" for none). Read-only: the ctx borrows its bytes."""
        return _s(self._method_b)

    @property
    def path(self) -> str:
        return _s(self._path_b)

    @property
    def headers(self):
        """The headers as (name, value) pairs, in order."""
        return [(_s(k), _s(v)) for k, v in self._headers_b]

    def header(self, name, default=None):
        """The first header with this name (ASCII case-insensitive), or default."""
        key = _b(name, "name").lower()
        for k, v in self._headers_b:
            if k.lower() == key:
                return _s(v)
        return default

    @property
    def status(self) -> int:
        """0 while admitted or after success, else the outcome code (fg_ctx_status)."""
        return _ctx_status(self._ctx)

    @property
    def in_flight(self) -> bool:
        """Whether the request is inside a runtime (in call() or between enter and exit)."""
        return self._in_flight

    @property
    def retry_after_ns(self) -> int:
        """A rejecting stage's retry-after hint in ns (0: none)."""
        return _ctx_retry_after(self._ctx)

    @property
    def retry_after(self) -> float:
        return self.retry_after_ns / NS_PER_S

    @property
    def delay_ns(self) -> int:
        """How long after its start an admitted request should begin (smoothing)."""
        return _ctx_delay(self._ctx)

    @property
    def delay(self) -> float:
        return self.delay_ns / NS_PER_S

    @property
    def trace_id(self):
        """This hop's trace id as 32 hex digits, once a trace stage ran; else None."""
        buf = ctypes.create_string_buffer(33)
        rc = _ctx_trace_id(self._ctx, buf, 33)
        if rc == Code.ENOTFOUND:
            return None
        _check(rc)
        return buf.value.decode()

    def param(self, name, default=None):
        """A path parameter of the matched pattern route (":id" -> "id").
        Only while the request is in flight (in its handler or fallback, or
        admitted): the parameter names belong to the router, which a reload
        may free once the request has finished."""
        if not self._in_flight:
            raise StateError(detail="path parameters are only known while the request is in flight")
        v = _Str()
        rc = _ctx_param(self._ctx, _b(name, "name"), byref(v))
        if rc == Code.ENOTFOUND:
            return default
        _check(rc)
        return _s(ctypes.string_at(v.ptr, v.len)) if v.len else ""

    def baggage(self, key, default=None):
        """One W3C baggage entry of the request's baggage headers, decoded."""
        k = _b(key, "key")
        n = c_size_t()
        cap = 256
        while True:
            buf = ctypes.create_string_buffer(cap)
            rc = _ctx_baggage(self._ctx, k, len(k), buf, cap, byref(n))
            if rc == Code.ETOOLONG and cap < 65536:
                cap *= 8
                continue
            if rc == Code.ENOTFOUND:
                return default
            _check(rc)
            return _s(buf.raw[: n.value])

    def outgoing_headers(self, vendor_key=None) -> dict:
        """The trace headers for a downstream call made while serving this
        request (fg_trace_outgoing): {"traceparent": ..., "tracestate": ...,
        "baggage": ...}, leaving out empty ones. StateError when no trace
        stage ran."""
        cap = 55 + 1 + 512 + 1 + 8192 + 1  # FG_TRACE_HEADERS_MAX
        buf = ctypes.create_string_buffer(cap)
        out = _TraceHeadersC()
        vk = _b(vendor_key, "vendor_key") if vendor_key is not None else None
        _check(_trace_outgoing(self._ctx, vk, buf, cap, byref(out)))
        result = {}
        for name in ("traceparent", "tracestate", "baggage"):
            s = getattr(out, name)
            if s.len:
                result[name] = _s(ctypes.string_at(s.ptr, s.len))
        return result

    @property
    def time_left(self):
        """Seconds left before the deadline (0.0 once passed), or None without
        one. Only while the request is in flight: the clock it reads is the
        chain's, which may be gone after the request."""
        if not self._in_flight:
            raise StateError(detail="time_left is only known while the request is in flight")
        v = _ctx_time_left(self._ctx)
        return None if v == UINT64_MAX else v / NS_PER_S

    def cancel(self) -> None:
        """Cancel the request, from any thread: the chain rejects it with
        Canceled before its next stage or its handler. A request canceled
        before it runs is rejected at its start. The flag stays for later runs."""
        self._canceled = True
        _ctx_cancel(self._ctx)

    @property
    def canceled(self) -> bool:
        return self._canceled or bool(_ctx_canceled(self._ctx))

    def __repr__(self):
        return f"Request({self.method!r}, {self.path!r}, status={self.status})"


# ---- the registry ----------------------------------------------------------------------------


class Registry:
    """The handlers and fallbacks a config may name (fg_registry).

    The registry keeps every C trampoline (ctypes CFUNCTYPE object) it hands
    to the library, and with it the Python callable, for as long as it lives;
    a Runtime keeps its registry alive until the runtime is freed, because
    the runtime's compiled configs call the trampolines. So a lambda
    registered and then forgotten by the caller stays callable.

    Register everything before loading; registering while a Watch reloads
    from the same registry raises StateError (the watcher reads it from its
    own thread).
    """

    def __init__(self):
        h = c_void_p()
        _check(_registry_new(byref(h)))
        self._h = h.value
        self._lock = threading.RLock()  # building vs loading (fg_registry is not MT-safe)
        self._handlers = {}  # name -> (callable, CFUNCTYPE)
        self._fallbacks = {}
        self._watchers = 0
        self._finalizer = weakref.finalize(self, _registry_free, self._h)

    def _check_open(self):
        if not self._finalizer.alive:
            raise StateError(detail="the registry has been freed")

    def add_handler(self, name, fn):
        """Register fn(request) -> result under name. The result becomes
        Runtime.call's; raising fails the request (FG_EHANDLER, or the code of
        a FloodgateError raised) and the exception is raised again to the
        caller of call() or dispatch(). Returns fn."""
        if not callable(fn):
            raise InvalidArgument(detail="handler must be callable")
        name_b = _b(name, "name")

        def trampoline(ctx, _arg, _fn=fn):
            # Called by C with the GIL taken by ctypes, on the request's thread.
            try:
                req = _inflight.get(ctx)
                if req is None:
                    return int(Code.ESTATE)  # a ctx this module did not send
                req._capture_names()  # valid while the request is inside
                try:
                    req._result = _fn(req)
                    req._exc = None
                    return 0
                except BaseException as e:  # noqa: BLE001 - never into C
                    req._exc = e
                    req._result = None
                    return _failure_code(e)
            except BaseException as e:  # noqa: BLE001
                _report_unraisable(e, "handler trampoline", _fn)
                return int(Code.EHANDLER)

        cb = _HANDLER_FN(trampoline)
        with self._lock:
            self._check_open()
            if self._watchers:
                raise StateError(detail="a watcher reloads from this registry: register first")
            _check(_registry_add_handler(self._h, name_b, cb, None), f"handler {name!r}")
            self._handlers[_s(name_b)] = (fn, cb)
        return fn

    def handler(self, name=None):
        """Decorator form of add_handler; the name defaults to the function's."""

        def deco(fn):
            self.add_handler(name or fn.__name__, fn)
            return fn

        return deco

    def add_fallback(self, name, fn):
        """Register fn(request, error) -> result under name, for a config's
        "fallback": it receives the requests its routes' stages rejected and
        those whose handler failed (error is the RequestError; for a handler
        that raised, error.__cause__ is that exception). Returning answers
        the request: Runtime.call returns the value and counts it a success.
        Raising makes call() raise that exception instead. Returns fn."""
        if not callable(fn):
            raise InvalidArgument(detail="fallback must be callable")
        name_b = _b(name, "name")

        def trampoline(ctx, code, _arg, _fn=fn):
            try:
                req = _inflight.get(ctx)
                if req is None:
                    return code
                req._capture_rejection()
                err = _error(
                    code,
                    stage=req.stage,
                    route=req.route,
                    target=req.target,
                    retry_after_ns=_ctx_retry_after(ctx),
                    request=req,
                )
                if req._exc is not None:
                    err.__cause__ = req._exc
                try:
                    req._result = _fn(req, err)
                    req._exc = None
                    return 0
                except BaseException as e:  # noqa: BLE001 - never into C
                    req._exc = e
                    req._result = None
                    return code if code < 0 else int(Code.EHANDLER)
            except BaseException as e:  # noqa: BLE001
                _report_unraisable(e, "fallback trampoline", _fn)
                return code

        cb = _FALLBACK_FN(trampoline)
        with self._lock:
            self._check_open()
            if self._watchers:
                raise StateError(detail="a watcher reloads from this registry: register first")
            _check(_registry_add_fallback(self._h, name_b, cb, None), f"fallback {name!r}")
            self._fallbacks[_s(name_b)] = (fn, cb)
        return fn

    def fallback(self, name=None):
        """Decorator form of add_fallback."""

        def deco(fn):
            self.add_fallback(name or fn.__name__, fn)
            return fn

        return deco

    @property
    def handlers(self):
        return sorted(self._handlers)

    @property
    def fallbacks(self):
        return sorted(self._fallbacks)

    def check(self, config) -> None:
        """Validate a config against this registry's names (fg_config_check)."""
        check_config(config, self)


def _config_text(config) -> bytes:
    if isinstance(config, (dict, list)):
        return json.dumps(config).encode()
    return _b(config, "config")


def check_config(config, registry: Registry = None) -> None:
    """Validate a config (JSON text, bytes or a dict) without loading it.
    Without a registry, handler and custom stage names are not checked (as
    `floodgate check` does). Raises ConfigError with every problem."""
    text = _config_text(config)
    errors = _ConfigErrorsC()
    if registry is None:
        rc = _config_check(None, text, len(text), byref(errors))
    else:
        with registry._lock:
            registry._check_open()
            rc = _config_check(registry._h, text, len(text), byref(errors))
    if rc != 0:
        raise _config_error(rc, errors)


# ---- breaker events (shared by Breaker and Runtime) ------------------------------------------


@dataclasses.dataclass(frozen=True)
class BreakerEvent:
    """A breaker state change: from_state/to_state ("closed", "open",
    "half_open"), mode ("auto", ...), reason ("consecutive_failures", ...),
    at_ns (the clock reading), generation (orders events) and open_for_ns
    (when to_state is "open"). breaker is the config's name for runtime
    events, None for a standalone Breaker."""

    breaker: object
    from_state: str
    to_state: str
    mode: str
    reason: str
    at_ns: int
    generation: int
    open_for_ns: int


def _breaker_event(name, ev: _BreakerEventC) -> BreakerEvent:
    return BreakerEvent(
        name,
        _breaker_state_name(ev.from_).decode(),
        _breaker_state_name(ev.to).decode(),
        _breaker_mode_name(ev.mode).decode(),
        _breaker_reason_name(ev.reason).decode(),
        ev.at_ns,
        ev.generation,
        ev.open_for_ns,
    )


# ---- the runtime -----------------------------------------------------------------------------


class _RuntimeState:
    """What the runtime's finalizer needs: the handle and the in-flight count."""

    def __init__(self, h):
        self.h = h
        self.lock = threading.Lock()
        self.in_flight = 0
        self.closing = False  # set under lock by close(): no new request starts
        self.watches = set()  # running Watch objects


def _free_runtime(state, _keepalive):
    # _keepalive (registry, clock, callbacks) outlives the C runtime: it is
    # referenced by this finalizer until the runtime is freed.
    for w in list(state.watches):
        w.stop()
    if state.in_flight:
        return  # never free under a request: leak instead
    if state.h:
        _runtime_free(state.h)
        state.h = None


class Runtime:
    """A floodgate runtime serving a JSON config (fg_runtime + fg_registry).

        rt = Runtime()
        @rt.handler("hello")
        def hello(req):
            return f"hello {req.path}"
        rt.load_json(config)            # dict, str or bytes
        rt.call(Request("GET", "/x"))   # -> "hello /x", or raises RateLimited, ...

    clock (a Clock; default monotonic) is read by every component a config
    makes; on_breaker(event) hears every state change of the config's
    breakers, on the thread that caused it (it must not block; exceptions go
    to sys.unraisablehook). Both are fixed at construction, before any load.

    Thread-safety: call, enter/exit, load_json/load_file, metrics and watch
    are safe from any number of threads. close() (or the end of a `with`
    block) needs every request to have finished.
    """

    def __init__(self, registry: Registry = None, *, clock: Clock = None, on_breaker=None):
        if registry is not None and not isinstance(registry, Registry):
            raise InvalidArgument(detail="registry must be a floodgate.Registry")
        self.registry = registry if registry is not None else Registry()
        self.clock = _clock_arg(clock)
        h = c_void_p()
        _check(_runtime_new(byref(h)))
        self._state = _RuntimeState(h.value)
        self._load_lock = threading.Lock()  # Python loads vs reading names after a call
        keep = [self.registry, self.clock]
        self._finalizer = weakref.finalize(self, _free_runtime, self._state, keep)
        try:
            if clock is not None:
                _check(_runtime_set_clock(self._state.h, clock._c), "set_clock")
            if on_breaker is not None:
                if not callable(on_breaker):
                    raise InvalidArgument(detail="on_breaker must be callable")

                def listener(name, ev, _arg, _fn=on_breaker):
                    try:
                        _fn(_breaker_event(_s(name), ev.contents))
                    except BaseException as e:  # noqa: BLE001 - never into C
                        _report_unraisable(e, "breaker listener", _fn)

                cb = _RT_BREAKER_FN(listener)
                keep.append(cb)
                _check(_runtime_set_breaker_listener(self._state.h, cb, None), "on_breaker")
        except BaseException:
            self.close()
            raise

    # -- lifetime -------------------------------------------------------------------

    @property
    def _h(self):
        h = self._state.h
        if not h:
            raise StateError(detail="the runtime is closed")
        return h

    @property
    def closed(self) -> bool:
        return not self._state.h

    def close(self) -> None:
        """Stop its watchers and free the runtime. StateError while a request
        is in flight (a call running or an admission not exited)."""
        with self._state.lock:
            if self._state.in_flight:
                raise StateError(
                    detail=f"{self._state.in_flight} request(s) still in flight"
                )
            self._state.closing = True  # requests starting from now are refused
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- registration (delegates to the registry) ---------------------------------

    def add_handler(self, name, fn):
        return self.registry.add_handler(name, fn)

    def handler(self, name=None):
        return self.registry.handler(name)

    def add_fallback(self, name, fn):
        return self.registry.add_fallback(name, fn)

    def fallback(self, name=None):
        return self.registry.fallback(name)

    # -- configs ------------------------------------------------------------------------

    def load_json(self, config) -> None:
        """Compile a config (dict, JSON str or bytes) and make it current.
        Raises ConfigError (with every problem) when it is invalid; the
        runtime then keeps serving the previous config unchanged. Limiters
        keep their tokens across a rate change (docs/config.md)."""
        text = _config_text(config)
        errors = _ConfigErrorsC()
        reg = self.registry
        with reg._lock, self._load_lock:
            reg._check_open()
            rc = _runtime_load_json(self._h, reg._h, text, len(text), byref(errors))
        if rc != 0:
            raise _config_error(rc, errors)

    def load_file(self, path) -> None:
        """load_json on a file's contents; SystemCallError when unreadable."""
        errors = _ConfigErrorsC()
        reg = self.registry
        with reg._lock, self._load_lock:
            reg._check_open()
            rc = _runtime_load_file(self._h, reg._h, os.fsencode(path), byref(errors))
        if rc != 0:
            raise _config_error(rc, errors)

    def check(self, config) -> None:
        """Validate a config against this runtime's registry, loading nothing."""
        check_config(config, self.registry)

    @property
    def version(self):
        """The version label of the config serving now, or None before the first."""
        buf = ctypes.create_string_buffer(257)
        rc = _runtime_version(self._h, buf, 257)
        if rc == Code.ESTATE:
            return None
        _check(rc)
        return _s(buf.value)

    @property
    def generation(self) -> int:
        """How many configs have been swapped in."""
        return _runtime_generation(self._h)

    @property
    def metrics(self) -> "Metrics":
        """The runtime's metrics registry (every config counts there)."""
        return Metrics(self)

    def watch(self, path, on_reload=None, *, debounce=0.1) -> "Watch":
        """Load a config file now, then reload it whenever it changes
        (fg_runtime_watch, inotify). on_reload(runtime, error) runs after each
        attempt, error None or the FloodgateError (ConfigError with its
        issues); the first on this thread, later ones on the watcher's own C
        thread. Raises as load_file when the first load fails (nothing then
        runs). Stop the Watch (or leave its `with` block) before closing."""
        return Watch(self, path, on_reload, debounce)

    # -- requests -------------------------------------------------------------------------

    def _begin(self, req: Request):
        if not isinstance(req, Request):
            raise InvalidArgument(detail="expected a Request")
        if not req._busy.acquire(blocking=False):
            raise StateError(detail="the request is already in flight")
        try:
            with self._state.lock:
                h = self._h
                if self._state.closing:
                    raise StateError(detail="the runtime is closing")
                self._state.in_flight += 1
            try:
                req._prepare(self.clock)
            except BaseException:
                with self._state.lock:
                    self._state.in_flight -= 1
                raise
        except BaseException:
            req._busy.release()
            raise
        req._in_flight = True
        _inflight[req._ctx] = req
        return h

    def _end(self, req: Request):
        _inflight.pop(req._ctx, None)
        req._in_flight = False
        with self._state.lock:
            self._state.in_flight -= 1
        req._busy.release()

    def _rejection(self, req: Request, rc: int):
        """Read who rejected (names may be the chain's: read them before a
        Python load could free it) and make the exception."""
        with self._load_lock:
            req._capture_rejection()
        return _error(
            rc,
            stage=req.stage,
            route=req.route,
            target=req.target,
            retry_after_ns=req.retry_after_ns,
            request=req,
        )

    def call(self, request, path=None, headers=None, *, timeout=None):
        """Run a request through the current config synchronously
        (fg_runtime_call): its stages, then the handler the config names for
        its route. Returns what the handler (or a fallback) returned.

        Raises the handler's own exception when it raised; a RequestError
        subclass (RateLimited, BreakerOpen, NoRoute, ...) when a stage or the
        chain rejected it; StateError before any config is loaded. A smoothing
        limiter's wait is slept inside, on the runtime's clock, with the GIL
        released. `call("GET", "/x")` builds the Request for you."""
        req = request
        if not isinstance(req, Request):
            req = Request(request, path if path is not None else "/", headers, timeout=timeout)
        h = self._begin(req)
        try:
            rc = _runtime_call(h, req._ctx, None, None)
            # Take what the callbacks left before the request is released:
            # another thread may run it again right after.
            exc, req._exc = req._exc, None
            result, req._result = req._result, None
            err = self._rejection(req, rc) if rc != 0 and exc is None else None
        finally:
            self._end(req)
        if rc == 0:
            return result
        if exc is not None:
            if isinstance(exc, RequestError) and exc.route is None:
                exc.route, exc.target, exc.request = req.route, req.target, req
            if hasattr(exc, "add_note") and not isinstance(exc, FloodgateError):
                exc.add_note(
                    f"floodgate: the handler of route {req.route!r} failed ({err_name(rc)})"
                )
            raise exc
        raise err

    def enter(self, request, path=None, headers=None, *, timeout=None) -> "Admission":
        """Admit a request without running its handler (fg_runtime_enter), for
        event loops and worker pools. Returns an Admission: run the work (or
        admission.dispatch() for the config's handler), then exit it exactly
        once, from any thread, or use it as a context manager. Never sleeps:
        a smoothing limiter's wait is admission.delay, for you to honour.
        Raises a RequestError subclass when rejected (nothing to exit then)."""
        req = request
        if not isinstance(req, Request):
            req = Request(request, path if path is not None else "/", headers, timeout=timeout)
        h = self._begin(req)
        try:
            rc = _runtime_enter(h, req._ctx)
            if rc != 0:
                err = self._rejection(req, rc)
        except BaseException:
            self._end(req)
            raise
        if rc != 0:
            self._end(req)
            raise err
        req._capture_names()  # safe: an admitted request holds its snapshot
        return Admission(self, req)

    def __repr__(self):
        if self.closed:
            return "<floodgate.Runtime closed>"
        return f"<floodgate.Runtime version={self.version!r} generation={self.generation}>"


def _abandon(state, req):
    """An Admission dropped without exit: exit it as canceled, so the
    runtime's snapshot and counters are released."""
    if state.h:
        _runtime_exit(state.h, req._ctx, int(Code.ECANCELED))
    _inflight.pop(req._ctx, None)
    req._in_flight = False
    with state.lock:
        state.in_flight -= 1
    req._busy.release()


class Admission:
    """An admitted request between Runtime.enter and its exit.

        with rt.enter(req) as adm:       # exit(0) on success; on an exception,
            adm.dispatch()               # exit with its code, then re-raise
        adm = rt.enter(req); ...; adm.exit()   # or by hand, from any thread

    .request, .route, .target, .delay / .delay_ns (start the work that much
    later). An Admission garbage-collected without exit is exited as
    Canceled, with a ResourceWarning.
    """

    def __init__(self, runtime: Runtime, req: Request):
        self.runtime = runtime
        self.request = req
        self.route = req.route
        self.target = req.target
        self.delay_ns = req.delay_ns
        self._exited = False
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._warn_abandon, runtime._state, req)

    @staticmethod
    def _warn_abandon(state, req):
        warnings.warn(
            f"floodgate: Admission for {req.path!r} dropped without exit; exited as canceled",
            ResourceWarning,
            stacklevel=2,
        )
        _abandon(state, req)

    @property
    def delay(self) -> float:
        return self.delay_ns / NS_PER_S

    @property
    def exited(self) -> bool:
        return self._exited

    def dispatch(self):
        """Run the handler the config gives the request's route
        (fg_route_dispatch) on this thread, and return its result. Raises the
        handler's exception when it raised; does not exit."""
        req = self.request
        if self._exited:
            raise StateError(detail="the request has exited")
        rc = _route_dispatch(req._ctx)
        exc, req._exc = req._exc, None
        result, req._result = req._result, None
        if exc is not None:
            raise exc
        if rc != 0:
            raise _error(rc, route=req.route, target=req.target, request=req)
        return result

    def exit(self, status=0) -> None:
        """Report how the work ended and leave the chain (fg_runtime_exit):
        status 0 or None for success, a negative code, or an exception (its
        FloodgateError code, else FG_EHANDLER). Exactly once; any thread."""
        if status is None:
            code = 0
        elif isinstance(status, BaseException):
            code = _failure_code(status)
        else:
            code = int(status)
        with self._lock:
            if self._exited:
                raise StateError(detail="the request has already exited")
            self._exited = True
        self._finalizer.detach()
        state = self.runtime._state
        req = self.request
        try:
            rc = _runtime_exit(state.h, req._ctx, code) if state.h else int(Code.ESTATE)
            if rc == 0:
                req._capture_names()  # kept in the ctx by the runtime
        finally:
            _inflight.pop(req._ctx, None)
            req._in_flight = False
            with state.lock:
                state.in_flight -= 1
            req._busy.release()
        _check(rc, "exit")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._exited:
            self.exit(exc if exc is not None else 0)
        return False


# ---- watching a config file ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WatchStats:
    attempts: int
    loaded: int
    failed: int


class Watch:
    """A config file watched by a runtime (see Runtime.watch). It keeps
    running until stop() or the runtime's close(); the runtime holds it."""

    def __init__(self, runtime: Runtime, path, on_reload, debounce):
        if on_reload is not None and not callable(on_reload):
            raise InvalidArgument(detail="on_reload must be callable")
        self.runtime = runtime
        self.path = os.fspath(path)
        first = {"pending": True, "error": None}  # the first attempt's result
        self._in_cb = in_cb = threading.local()
        rt_ref = weakref.ref(runtime)

        def reload_cb(_rt, rc, errors, _arg, _fn=on_reload, _first=first, _in=in_cb):
            # The first call runs on the thread inside fg_runtime_watch; later
            # ones on the watcher's own C thread (ctypes takes the GIL for it).
            _in.active = True
            try:
                err = None
                if rc != 0:
                    err = _config_error(rc, errors.contents if errors else None)
                if _first["pending"]:
                    _first["pending"] = False
                    _first["error"] = err
                if _fn is not None:
                    _fn(rt_ref(), err)
            except BaseException as e:  # noqa: BLE001 - never into C
                _report_unraisable(e, "reload callback", _fn)
            finally:
                _in.active = False

        cb = _RELOAD_FN(reload_cb)
        opts = _WatchOptionsC(_ns(debounce, "debounce"), ctypes.cast(cb, c_void_p), None)
        reg = runtime.registry
        h = c_void_p()
        with reg._lock:
            reg._check_open()
            rc = _runtime_watch(runtime._h, reg._h, os.fsencode(self.path), byref(opts), byref(h))
            if rc == 0:
                reg._watchers += 1
        if rc != 0:
            err = first["error"]
            raise err if err is not None else _error(rc, self.path)
        self._h = h.value
        # The callback and the registry outlive the watcher's thread: the
        # finalizer holds them until fg_watch_stop has joined it.
        self._finalizer = weakref.finalize(self, _stop_watch, self._h, reg, cb)
        runtime._state.watches.add(self)

    def stop(self) -> None:
        """Stop watching and wait for a reload in progress (fg_watch_stop).
        No callback runs afterwards. Idempotent. The GIL is released while
        waiting, so a callback in progress can finish. Not from inside
        on_reload (StateError): that would free the callback under itself."""
        if getattr(self._in_cb, "active", False):
            raise StateError(detail="cannot stop a watch from its own on_reload")
        self._finalizer()
        self.runtime._state.watches.discard(self)

    @property
    def stopped(self) -> bool:
        return not self._finalizer.alive

    @property
    def stats(self) -> WatchStats:
        """Load attempts so far, the first included (fg_watch_stats_get)."""
        if self.stopped:
            raise StateError(detail="the watch has stopped")
        s = _WatchStatsC()
        _check(_watch_stats_get(self._h, byref(s)))
        return WatchStats(s.attempts, s.loaded, s.failed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def _stop_watch(h, registry, _cb):
    _watch_stop(h)
    with registry._lock:
        registry._watchers -= 1


# ---- metrics ---------------------------------------------------------------------------------


_OUTCOME_CODES = [
    Code.ELIMITED, Code.EBREAKER, Code.ENOROUTE, Code.ETIMEDOUT, Code.EOVERLOADED,
    Code.EINJECTED, Code.EHANDLER, Code.ECANCELED, Code.EREJECTED,
]


@dataclasses.dataclass(frozen=True)
class RouteStats:
    """The figures of one (chain, route) series (fg_route_stats).
    rejected_by maps outcome names ("rate_limited", ...) to counts."""

    ok: int
    failed: int
    rejected: int
    rejected_by: dict
    other: int
    delayed: int
    delay_ns: int
    latency_count: int
    latency_sum_ns: int
    p50_ns: int
    p90_ns: int
    p99_ns: int
    p999_ns: int


class Metrics:
    """A runtime's metrics registry (fg_runtime_metrics): counters and
    latency histograms per route, rejections per stage, breaker transitions
    and reloads. Valid while its runtime is open."""

    def __init__(self, runtime: Runtime):
        self._rt = runtime

    @property
    def _h(self):
        return _runtime_metrics(self._rt._h)

    def _export(self, fn) -> str:
        n = c_size_t()
        cap = 16384
        while True:
            buf = ctypes.create_string_buffer(cap)
            rc = fn(self._h, buf, cap, byref(n))
            if rc == Code.ETOOLONG:
                cap = n.value + 1 + 4096  # room for series added meanwhile
                continue
            _check(rc)
            return buf.raw[: n.value].decode("utf-8", "replace")

    def prometheus(self) -> str:
        """Every metric in the Prometheus text format (version 0.0.4)."""
        return self._export(_metrics_prometheus)

    def json(self) -> dict:
        """The same figures as a dict (fg_metrics_json, docs/observability.md)."""
        return json.loads(self._export(_metrics_json))

    def route(self, route="", chain="main") -> RouteStats:
        """The figures of a route ("" is requests no route matched). NotFound
        for a series that does not exist."""
        out = _RouteStatsC()
        _check(
            _metrics_route(self._h, _b(chain, "chain"), _b(route, "route"), byref(out)),
            f"route {route!r} of chain {chain!r}",
        )
        by = {outcome_name(c): out.rejected_by_code[i] for i, c in enumerate(_OUTCOME_CODES)}
        return RouteStats(
            out.ok, out.failed, out.rejected, by, out.other, out.delayed, out.delay_ns,
            out.latency_count, out.latency_sum_ns, out.p50_ns, out.p90_ns, out.p99_ns,
            out.p999_ns,
        )

    def stage_rejections(self, stage, code=0) -> int:
        """How many requests the stages named `stage` rejected with code (0: any)."""
        return _metrics_stage_rejections(self._h, _b(stage, "stage"), int(code))


# ---- the limiter -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LimiterOptions:
    """A limiter's settings as the library holds them (fg_limiter_get), in ns."""

    rate: int
    period_ns: int
    burst: int
    max_wait_ns: int
    warmup_ns: int
    cold_factor: int


class Limiter:
    """A token bucket (fg_limiter): at most `burst` tokens, refilled at
    `rate` per `period` seconds, full at the start. Lock-free and MT-safe:
    share one between threads.

    try_acquire(n) -> bool; acquire(n) -> the wait in seconds (0.0, or a
    smoothing slot when max_wait > 0), or raises RateLimited with
    retry_after. now_ns defaults to the limiter's clock."""

    def __init__(self, rate, burst, *, period=1, max_wait=0, warmup=0, cold_factor=0,
                 clock: Clock = None):
        self.clock = _clock_arg(clock)
        o = _LimiterOptionsC()
        o.rate = int(rate)
        o.burst = int(burst)
        o.period_ns = _ns(period, "period")
        o.max_wait_ns = _ns(max_wait, "max_wait")
        o.warmup_ns = _ns(warmup, "warmup")
        o.cold_factor = int(cold_factor)
        o.clock = self.clock._c
        h = c_void_p()
        _check(_limiter_new(byref(o), byref(h)), "limiter options")
        self._hv = h.value
        # The clock outlives the C limiter, which reads it: the finalizer holds it.
        self._finalizer = weakref.finalize(self, _free_keep, _limiter_free, self._hv, self.clock)

    @property
    def _h(self):
        if not self._finalizer.alive:
            raise StateError(detail="the limiter is closed")
        return self._hv

    def close(self) -> None:
        """Free the limiter; nobody may use it afterwards."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _now(self, now_ns):
        return self.clock.now_ns() if now_ns is None else int(now_ns)

    def try_acquire(self, n=1, *, now_ns=None) -> bool:
        """Take n tokens if the bucket holds them. OutOfRange when n > burst."""
        rc = _limiter_try(self._h, self._now(now_ns), int(n), None)
        if rc == Code.ELIMITED:
            return False
        _check(rc)
        return True

    def acquire(self, n=1, *, now_ns=None, max_wait=None) -> float:
        """Take n tokens: returns the wait in seconds before proceeding (0.0
        without smoothing), or raises RateLimited with .retry_after. max_wait
        (seconds) bounds a smoothing wait further for this call."""
        wait = c_uint64()
        now = self._now(now_ns)
        if max_wait is None:
            rc = _limiter_try(self._h, now, int(n), byref(wait))
        else:
            rc = _limiter_try_wait(self._h, now, int(n), _ns(max_wait, "max_wait"), byref(wait))
        if rc == Code.ELIMITED:
            raise RateLimited(retry_after_ns=wait.value)
        _check(rc)
        return wait.value / NS_PER_S

    def tokens(self, *, now_ns=None) -> int:
        """Whole tokens in the bucket now, taking none."""
        return _limiter_tokens(self._h, self._now(now_ns))

    def set_rate(self, rate, period=1) -> None:
        """Change the rate at once for every thread, keeping the tokens held."""
        _check(_limiter_set_rate(self._h, int(rate), _ns(period, "period")), "set_rate")

    def set_burst(self, burst) -> None:
        """Change the capacity, keeping the tokens held (cut to a smaller burst)."""
        _check(_limiter_set_burst(self._h, int(burst)), "set_burst")

    @property
    def options(self) -> LimiterOptions:
        o = _LimiterOptionsC()
        _check(_limiter_get(self._h, byref(o)))
        return LimiterOptions(o.rate, o.period_ns, o.burst, o.max_wait_ns, o.warmup_ns,
                              o.cold_factor)


# ---- the breaker -----------------------------------------------------------------------------


_BREAKER_MODES = {"auto": 0, "forced_open": 1, "forced_closed": 2, "disabled": 3}
_BREAKER_RESULTS = {"success": 0, "failure": 1, "ignore": 2}


@dataclasses.dataclass(frozen=True)
class BreakerStats:
    """A breaker's state and counters (fg_breaker_snapshot); state and mode by name."""

    state: str
    mode: str
    generation: int
    window_calls: int
    window_failures: int
    window_slow: int
    consecutive_failures: int
    open_until_ns: int
    probes_admitted: int
    probes_succeeded: int
    rejected: int
    shadow_rejected: int
    discarded: int
    opened: int
    half_opened: int
    closed: int


class BreakerPermit:
    """An admission by a Breaker: report it exactly once with success(),
    failure() or ignore() (or let Breaker.guard do it)."""

    __slots__ = ("breaker", "permit", "start_ns", "done")

    def __init__(self, breaker, permit, start_ns):
        self.breaker = breaker
        self.permit = permit
        self.start_ns = start_ns
        self.done = False

    def _report(self, result, now_ns):
        if self.done:
            raise StateError(detail="the permit was already reported")
        self.done = True
        return self.breaker._exit(self, result, now_ns)

    def success(self, *, now_ns=None) -> bool:
        """The call succeeded. Returns False when the outcome was discarded
        (the breaker changed state since the permit was issued)."""
        return self._report(0, now_ns)

    def failure(self, *, now_ns=None) -> bool:
        return self._report(1, now_ns)

    def ignore(self, *, now_ns=None) -> bool:
        """Not counted (e.g. a client error); a probe's slot is freed."""
        return self._report(2, now_ns)


class Breaker:
    """A circuit breaker (fg_breaker): closed, open, half-open.

        b = Breaker(consecutive_failures=5, open_for=30)
        with b.guard():        # BreakerOpen when open; an exception is a failure
            call_dependency()

    Durations are in seconds. window_size (calls) selects a count window;
    window_time (seconds) and window_buckets a time window. on_change(event)
    hears every state change, on the thread that made it (must not block;
    exceptions go to sys.unraisablehook). MT-safe; the closed path is
    lock-free."""

    def __init__(self, *, failure_ratio=0.0, slow_ratio=0.0, slow_call=0, min_requests=0,
                 consecutive_failures=0, window_size=0, window_time=None, window_buckets=0,
                 open_for=0, open_backoff=0.0, max_open=0, half_open_probes=0,
                 half_open_timeout=0, clock: Clock = None, on_change=None):
        self.clock = _clock_arg(clock)
        o = _BreakerOptionsC()
        o.failure_ratio = float(failure_ratio)
        o.slow_ratio = float(slow_ratio)
        o.slow_call_ns = _ns(slow_call, "slow_call")
        o.min_requests = int(min_requests)
        o.consecutive_failures = int(consecutive_failures)
        o.window = 1 if window_time is not None else 0
        o.window_size = int(window_size)
        o.window_ns = _ns(window_time, "window_time")
        o.window_buckets = int(window_buckets)
        o.open_for_ns = _ns(open_for, "open_for")
        o.open_backoff = float(open_backoff)
        o.max_open_ns = _ns(max_open, "max_open")
        o.half_open_probes = int(half_open_probes)
        o.half_open_timeout_ns = _ns(half_open_timeout, "half_open_timeout")
        o.clock = self.clock._c
        self._cb = None
        self._in_cb = in_cb = threading.local()
        if on_change is not None:
            if not callable(on_change):
                raise InvalidArgument(detail="on_change must be callable")

            def listener(_b, ev, _arg, _fn=on_change, _in=in_cb):
                _in.active = True
                try:
                    _fn(_breaker_event(None, ev.contents))
                except BaseException as e:  # noqa: BLE001 - never into C
                    _report_unraisable(e, "breaker listener", _fn)
                finally:
                    _in.active = False

            self._cb = _BREAKER_LISTENER_FN(listener)
            o.listener = ctypes.cast(self._cb, c_void_p)
        h = c_void_p()
        _check(_breaker_new(byref(o), byref(h)), "breaker options")
        self._hv = h.value
        # The listener and clock outlive the C breaker: the finalizer holds them.
        self._finalizer = weakref.finalize(
            self, _free_keep, _breaker_free, self._hv, (self._cb, self.clock)
        )

    @property
    def _h(self):
        if not self._finalizer.alive:
            raise StateError(detail="the breaker is closed")
        return self._hv

    def close(self) -> None:
        """Free the breaker; nobody may use it afterwards. Not from inside
        on_change (StateError)."""
        if getattr(self._in_cb, "active", False):
            raise StateError(detail="cannot close a breaker from its own listener")
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _now(self, now_ns):
        return self.clock.now_ns() if now_ns is None else int(now_ns)

    def enter(self, *, now_ns=None) -> BreakerPermit:
        """May a call start? Returns a BreakerPermit, or raises BreakerOpen
        with .retry_after (the time left open; 0 when unknown)."""
        now = self._now(now_ns)
        permit = c_uint64()
        retry = c_uint64()
        rc = _breaker_enter(self._h, now, byref(permit), byref(retry))
        if rc == Code.EBREAKER:
            raise BreakerOpen(retry_after_ns=retry.value)
        _check(rc)
        return BreakerPermit(self, permit.value, now)

    def _exit(self, p: BreakerPermit, result, now_ns):
        now = self._now(now_ns)
        latency = now - p.start_ns if now > p.start_ns else 0
        rc = _breaker_exit(self._h, p.permit, now, result, latency)
        _check(rc)
        return rc == 0

    def guard(self, *, ignore=()):
        """A context manager around one call: enter (BreakerOpen when
        rejected), then success, or failure when the block raises (ignore:
        exception types that count as neither). The exception propagates."""
        return _BreakerGuard(self, tuple(ignore))

    def __call__(self, fn):
        """Decorator: run every call of fn under guard()."""

        def wrapper(*args, **kwargs):
            with self.guard():
                return fn(*args, **kwargs)

        wrapper.__wrapped__ = fn
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        return wrapper

    @property
    def state(self) -> str:
        """"closed", "open" or "half_open", as last changed (an open breaker
        whose time is over reads "open" until a request arrives)."""
        return _breaker_state_name(_breaker_state(self._h)).decode()

    def stats(self, *, now_ns=None) -> BreakerStats:
        s = _BreakerStatsC()
        _check(_breaker_snapshot(self._h, self._now(now_ns), byref(s)))
        vals = [getattr(s, f) for f, _ in _BreakerStatsC._fields_[2:]]
        return BreakerStats(
            _breaker_state_name(s.state).decode(), _breaker_mode_name(s.mode).decode(), *vals
        )

    def set_mode(self, mode: str) -> None:
        """"auto", "forced_open", "forced_closed" or "disabled" (shadow)."""
        if mode not in _BREAKER_MODES:
            raise InvalidArgument(detail=f"mode must be one of {', '.join(_BREAKER_MODES)}")
        _check(_breaker_set_mode(self._h, _BREAKER_MODES[mode]))

    def reset(self) -> None:
        """Back to closed in auto mode with an empty window."""
        _check(_breaker_reset(self._h))


class _BreakerGuard:
    __slots__ = ("breaker", "ignore", "permit")

    def __init__(self, breaker, ignore):
        self.breaker = breaker
        self.ignore = ignore
        self.permit = None

    def __enter__(self):
        self.permit = self.breaker.enter()
        return self.permit

    def __exit__(self, exc_type, exc, tb):
        p = self.permit
        if p is not None and not p.done:
            if exc_type is None:
                p.success()
            elif self.ignore and issubclass(exc_type, self.ignore):
                p.ignore()
            else:
                p.failure()
        return False


# ---- trace context ---------------------------------------------------------------------------

FLAG_SAMPLED = 0x01
FLAG_RANDOM = 0x02


def new_trace_id() -> str:
    """A fresh random trace id, 32 lowercase hex digits, never all zero."""
    a = (c_uint8 * 16)()
    _trace_id_new(a)
    return bytes(a).hex()


def new_span_id() -> str:
    """A fresh random span id, 16 lowercase hex digits, never all zero."""
    a = (c_uint8 * 8)()
    _span_id_new(a)
    return bytes(a).hex()


def _id_bytes(v, n, what) -> bytes:
    if isinstance(v, (bytes, bytearray)) and len(v) == n:
        b = bytes(v)
    elif isinstance(v, str) and len(v) == 2 * n:
        try:
            b = bytes.fromhex(v)
        except ValueError:
            raise InvalidArgument(detail=f"{what} must be {2 * n} hex digits") from None
    else:
        raise InvalidArgument(detail=f"{what} must be {2 * n} hex digits or {n} bytes")
    if not any(b):
        raise InvalidArgument(detail=f"{what} must not be all zero")
    return b


class TraceParent:
    """A W3C traceparent: trace_id (32 hex digits), parent_id (16 hex
    digits), flags (FLAG_SAMPLED | FLAG_RANDOM ...) and version.

        tp = TraceParent.parse(headers["traceparent"])   # ParseError if malformed
        str(tp.child())                                   # for the next hop
    """

    __slots__ = ("version", "trace_id", "parent_id", "flags")

    def __init__(self, trace_id, parent_id, flags=FLAG_SAMPLED, version=0):
        self.trace_id = _id_bytes(trace_id, 16, "trace_id").hex()
        self.parent_id = _id_bytes(parent_id, 8, "parent_id").hex()
        if not 0 <= int(flags) <= 255 or not 0 <= int(version) <= 254:
            raise InvalidArgument(detail="flags and version are bytes (version ff is invalid)")
        self.flags = int(flags)
        self.version = int(version)

    @classmethod
    def parse(cls, value) -> "TraceParent":
        """Parse a traceparent header value (fg_traceparent_parse); spaces and
        tabs around it are skipped. ParseError when malformed: start a new
        trace then, as the recommendation says."""
        b = _b(value, "traceparent")
        tp = _TraceParentC()
        _check(_traceparent_parse(b, len(b), byref(tp)), f"traceparent {value!r}")
        return cls(bytes(tp.trace_id), bytes(tp.parent_id), tp.flags, tp.version)

    @classmethod
    def new(cls, sampled=True) -> "TraceParent":
        """A new trace: random ids, the random flag, and sampled as asked."""
        return cls(new_trace_id(), new_span_id(), FLAG_RANDOM | (FLAG_SAMPLED if sampled else 0))

    def child(self) -> "TraceParent":
        """The traceparent for a downstream call: same trace, a new span id."""
        return TraceParent(self.trace_id, new_span_id(), self.flags, 0)

    @property
    def sampled(self) -> bool:
        return bool(self.flags & FLAG_SAMPLED)

    @property
    def random(self) -> bool:
        return bool(self.flags & FLAG_RANDOM)

    def format(self) -> str:
        """The version-00 header value (fg_traceparent_format)."""
        tp = _TraceParentC()
        tp.version = self.version
        ctypes.memmove(tp.trace_id, bytes.fromhex(self.trace_id), 16)
        ctypes.memmove(tp.parent_id, bytes.fromhex(self.parent_id), 8)
        tp.flags = self.flags
        buf = ctypes.create_string_buffer(56)
        _check(_traceparent_format(byref(tp), buf, 56))
        return buf.value.decode()

    __str__ = format

    def __repr__(self):
        return (
            f"TraceParent(trace_id={self.trace_id!r}, parent_id={self.parent_id!r}, "
            f"flags=0x{self.flags:02x}, version={self.version})"
        )

    def __eq__(self, other):
        if not isinstance(other, TraceParent):
            return NotImplemented
        return (self.version, self.trace_id, self.parent_id, self.flags) == (
            other.version, other.trace_id, other.parent_id, other.flags
        )

    def __hash__(self):
        return hash((self.version, self.trace_id, self.parent_id, self.flags))
