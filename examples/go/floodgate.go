// Package floodgate puts the floodgate C library in front of Go HTTP
// handlers through cgo.
//
// A Runtime holds the current floodgate config (JSON: limiters, breakers,
// bulkheads, trace, routes), loaded with Load, LoadFile or Watch and
// reloaded while requests flow: a broken config returns a *ConfigError and
// the old one keeps serving. Middleware runs each request through the
// config's chain with the split API (fg_runtime_enter, then the Go
// handler, then fg_runtime_exit) and answers rejections itself (429, 503,
// 404, 504 ...). A Limiter is one token bucket on its own.
//
// Config handler names: a config names the handler of every route. The Go
// side declares those names when it makes the Runtime (Handlers), each with
// the http.Handler that serves it, or nil for "the handler Middleware
// wraps". Every declared name is registered with a C trampoline that only
// records which name the routed target has; the Go handler then runs in Go,
// between enter and exit. A config naming an undeclared handler fails to
// load, as it would in C.
//
// Memory: every fg_ctx, and every byte a ctx borrows (method, path,
// headers), lives in C memory (shim.h), pooled per request; no Go pointer
// is kept by C past a call. Threads: a goroutine may move to another OS
// thread between enter and exit; the split API allows exit on any thread.
//
// The build links the static library: CGO_CFLAGS=-I<repo>/include and
// CGO_LDFLAGS="<build>/libfloodgate.a $(pkg-config --libs ck jansson)
// $(pkg-config --libs hiredis libcurl) -lpthread" (tests/test_go.sh does
// it). docs/go.md is the guide.
package floodgate

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"
	"unsafe"
)

// Code is a floodgate error code (FG_E*, negative) used as a Go error.
// Codes compare with == and errors.Is.
type Code int

// The codes of floodgate/error.h; values are pinned by the C library.
const (
	ErrInvalid    Code = -1 // FG_EINVAL
	ErrNoMem      Code = -2 // FG_ENOMEM
	ErrTooLong    Code = -3 // FG_ETOOLONG
	ErrTooMany    Code = -4 // FG_ETOOMANY
	ErrState      Code = -5 // FG_ESTATE
	ErrNotFound   Code = -6 // FG_ENOTFOUND
	ErrExist      Code = -7 // FG_EEXIST
	ErrRange      Code = -8 // FG_ERANGE
	ErrConfig     Code = -9 // FG_ECONFIG
	ErrSys        Code = -10
	ErrParse      Code = -11
	ErrLimited    Code = -100 // rate limited
	ErrBreaker    Code = -101 // circuit breaker open
	ErrNoRoute    Code = -102 // no route matches
	ErrTimedOut   Code = -103 // deadline exceeded
	ErrOverloaded Code = -104 // too many requests in flight
	ErrInjected   Code = -105 // fault injected
	ErrHandler    Code = -106 // handler failed
	ErrCanceled   Code = -107 // request canceled
	ErrRejected   Code = -108 // rejected by a stage
)

// Error is fg_strerror's message.
func (c Code) Error() string { return C.GoString(C.fg_strerror(C.int(c))) }

// Name is fg_err_name's symbolic name, e.g. "FG_ELIMITED".
func (c Code) Name() string { return C.GoString(C.fg_err_name(C.int(c))) }

// Outcome is fg_outcome_name's short name ("rate_limited", ...), "" for a
// code that is not a request outcome.
func (c Code) Outcome() string {
	if c == 0 {
		return "ok"
	}
	if i := -int(c) - 100; i >= 0 && i < len(outcomeNames) {
		return outcomeNames[i]
	}
	return ""
}

// outcomeNames mirrors fg_outcome_name (index -code-100),
// so that the request path makes no cgo call for it; a test checks it.
var outcomeNames = [...]string{"rate_limited", "breaker_open", "no_route", "timed_out",
	"overloaded", "fault_injected", "handler_failed", "canceled", "rejected"}

// outcomeC is fg_outcome_name itself, for the test that outcomeNames
// matches it.
func outcomeC(c Code) string {
	if p := C.fg_outcome_name(C.int(c)); p != nil {
		return C.GoString(p)
	}
	return ""
}

func codeErr(rc C.int) error {
	if rc == 0 {
		return nil
	}
	return Code(rc)
}

// HTTPStatus is the HTTP status Middleware answers a request outcome with:
// 200 for nil, 429 rate limited, 503 breaker open, overloaded or fault
// injected, 404 no route, 504 timed out, 499 canceled, 403 rejected, 502
// handler failed, 500 anything else (docs/errors.md).
func HTTPStatus(err error) int {
	if err == nil {
		return http.StatusOK
	}
	var c Code
	if !errors.As(err, &c) {
		return http.StatusInternalServerError
	}
	switch c {
	case ErrLimited:
		return http.StatusTooManyRequests
	case ErrBreaker, ErrOverloaded, ErrInjected:
		return http.StatusServiceUnavailable
	case ErrNoRoute:
		return http.StatusNotFound
	case ErrTimedOut:
		return http.StatusGatewayTimeout
	case ErrCanceled:
		return 499
	case ErrRejected:
		return http.StatusForbidden
	case ErrHandler:
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// ---- configs --------------------------------------------------------------

// ConfigProblem is one fg_config_error: where (a JSON path, and line and
// column for syntax errors) and what.
type ConfigProblem struct {
	Path    string
	Line    int
	Column  int
	Message string
}

// ConfigError is a load that failed: Code is ErrConfig with Problems, or
// the load's other code (ErrSys for an unreadable file, ErrTooLong ...).
// The runtime keeps serving its previous config.
type ConfigError struct {
	Code     Code
	Problems []ConfigProblem
	Omitted  int    // problems past FG_CONFIG_MAX_ERRORS
	Text     string // fg_config_errors_format: "path: message" lines
}

func (e *ConfigError) Error() string {
	if e.Text == "" {
		return "floodgate: config not loaded: " + e.Code.Error()
	}
	return "floodgate: config not loaded: " + e.Text
}

// Unwrap makes errors.Is(err, ErrConfig) work.
func (e *ConfigError) Unwrap() error { return e.Code }

func configError(rc C.int, errs *C.fg_config_errors) error {
	e := &ConfigError{Code: Code(rc), Omitted: int(errs.omitted)}
	n := int(errs.count)
	for i := 0; i < n && i < C.FG_CONFIG_MAX_ERRORS; i++ {
		it := &errs.items[i]
		e.Problems = append(e.Problems, ConfigProblem{
			Path:    C.GoString(&it.path[0]),
			Line:    int(it.line),
			Column:  int(it.column),
			Message: C.GoString(&it.message[0]),
		})
	}
	if n > 0 {
		buf := make([]byte, 16384)
		l := C.fg_config_errors_format(errs, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
		e.Text = string(buf[:l])
		for len(e.Text) > 0 && e.Text[len(e.Text)-1] == '\n' {
			e.Text = e.Text[:len(e.Text)-1]
		}
	}
	return e
}

// ---- the runtime ----------------------------------------------------------

// Handlers maps the handler names a config may use to the Go handlers that
// serve them; nil means the handler Middleware wraps.
type Handlers map[string]http.Handler

// Runtime is a floodgate runtime with its registry: the config that is
// current now, swapped by Load while requests run. All methods are safe
// for concurrent use, except Close.
type Runtime struct {
	rt       *C.fg_runtime
	hot      C.uintptr_t // rt as an integer for the request path (shim.h says why)
	reg      *C.fg_registry
	names    []string       // handler names, by registry index
	handlers []http.Handler // the Go handlers, by registry index
	pool     sync.Pool      // *request
	close    sync.Once
}

// NewRuntime makes a runtime with no config yet (Middleware answers 503
// until the first Load) whose configs may name the given handlers.
func NewRuntime(handlers Handlers) (*Runtime, error) {
	r := &Runtime{}
	for name := range handlers {
		r.names = append(r.names, name)
	}
	sort.Strings(r.names) // registry indices are stable
	for _, name := range r.names {
		r.handlers = append(r.handlers, handlers[name])
	}
	if rc := C.fg_registry_new(&r.reg); rc != 0 {
		return nil, Code(rc)
	}
	for i, name := range r.names {
		cs := C.CString(name)
		rc := C.fggo_registry_add(r.reg, cs, C.int(i))
		C.free(unsafe.Pointer(cs))
		if rc != 0 {
			C.fg_registry_free(r.reg)
			return nil, fmt.Errorf("floodgate: handler %q: %w", name, Code(rc))
		}
	}
	if rc := C.fg_runtime_new(&r.rt); rc != 0 {
		C.fg_registry_free(r.reg)
		return nil, Code(rc)
	}
	r.hot = C.uintptr_t(uintptr(unsafe.Pointer(r.rt)))
	r.pool.New = func() interface{} { return newRequest() }
	return r, nil
}

// Load compiles a JSON config and makes it current (fg_runtime_load_json).
// On any error it returns a *ConfigError and the previous config keeps
// serving. Requests never wait for a load.
func (r *Runtime) Load(config []byte) error {
	errs := (*C.fg_config_errors)(C.calloc(1, C.sizeof_fg_config_errors))
	if errs == nil {
		return ErrNoMem
	}
	defer C.free(unsafe.Pointer(errs))
	var p *C.char
	if len(config) > 0 {
		p = (*C.char)(unsafe.Pointer(&config[0])) // read during the call only
	}
	if rc := C.fg_runtime_load_json(r.rt, r.reg, p, C.size_t(len(config)), errs); rc != 0 {
		return configError(rc, errs)
	}
	return nil
}

// LoadFile is Load on a file's contents (fg_runtime_load_file).
func (r *Runtime) LoadFile(path string) error {
	errs := (*C.fg_config_errors)(C.calloc(1, C.sizeof_fg_config_errors))
	if errs == nil {
		return ErrNoMem
	}
	defer C.free(unsafe.Pointer(errs))
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	if rc := C.fg_runtime_load_file(r.rt, r.reg, cs, errs); rc != 0 {
		return configError(rc, errs)
	}
	return nil
}

// Version is the current config's "version" ("" before the first load).
func (r *Runtime) Version() string {
	var buf [260]C.char
	if C.fg_runtime_version(r.rt, &buf[0], C.size_t(len(buf))) != 0 {
		return ""
	}
	return C.GoString(&buf[0])
}

// Generation counts the configs swapped in (0 before the first).
func (r *Runtime) Generation() uint64 { return uint64(C.fg_runtime_generation(r.rt)) }

// Prometheus returns every metric of the runtime in the Prometheus text
// format (fg_metrics_prometheus).
func (r *Runtime) Prometheus() ([]byte, error) {
	return export(r, true)
}

// MetricsJSON returns the same figures as a JSON document (fg_metrics_json).
func (r *Runtime) MetricsJSON() ([]byte, error) {
	return export(r, false)
}

func export(r *Runtime, prom bool) ([]byte, error) {
	m := C.fg_runtime_metrics(r.rt)
	size := C.size_t(64 << 10)
	for {
		buf := C.malloc(size)
		if buf == nil {
			return nil, ErrNoMem
		}
		var n C.size_t
		var rc C.int
		if prom {
			rc = C.fg_metrics_prometheus(m, (*C.char)(buf), size, &n)
		} else {
			rc = C.fg_metrics_json(m, (*C.char)(buf), size, &n)
		}
		if rc == 0 {
			out := C.GoBytes(buf, C.int(n))
			C.free(buf)
			return out, nil
		}
		C.free(buf)
		if Code(rc) != ErrTooLong {
			return nil, Code(rc)
		}
		size = n + 1
	}
}

// RouteStats are the counts of one route's series (fg_route_stats).
type RouteStats struct {
	OK, Failed, Rejected uint64
	RejectedBy           map[Code]uint64 // rejections by outcome code (only non-zero)
	Delayed              uint64
	LatencyCount         uint64
	P50, P99             time.Duration
}

// RouteStats reads a route's figures ("" is the no-route series) from the
// runtime's metrics; ErrNotFound for an unknown route.
func (r *Runtime) RouteStats(route string) (RouteStats, error) {
	var st C.fg_route_stats
	cc := C.CString("main")
	cr := C.CString(route)
	rc := C.fg_metrics_route(C.fg_runtime_metrics(r.rt), cc, cr, &st)
	C.free(unsafe.Pointer(cc))
	C.free(unsafe.Pointer(cr))
	if rc != 0 {
		return RouteStats{}, Code(rc)
	}
	out := RouteStats{OK: uint64(st.ok), Failed: uint64(st.failed),
		Rejected: uint64(st.rejected), Delayed: uint64(st.delayed),
		LatencyCount: uint64(st.latency_count), P50: time.Duration(st.p50_ns),
		P99: time.Duration(st.p99_ns), RejectedBy: map[Code]uint64{}}
	for i := range st.rejected_by_code {
		if st.rejected_by_code[i] != 0 {
			out.RejectedBy[Code(-100-i)] = uint64(st.rejected_by_code[i])
		}
	}
	return out, nil
}

// Close frees the runtime and its registry. No request may be in flight
// and no Watcher may run (Stop them first); the Runtime is unusable after.
func (r *Runtime) Close() {
	r.close.Do(func() {
		C.fg_runtime_free(r.rt)
		C.fg_registry_free(r.reg)
		r.rt, r.reg, r.hot = nil, nil, 0
	})
}

// ---- watching a file ------------------------------------------------------

// Watcher reloads a config file whenever it changes (fg_runtime_watch).
type Watcher struct {
	fw   *C.fggo_watch
	stop sync.Once
}

// WatchStats are a watcher's load attempts, the first included.
type WatchStats struct{ Attempts, Loaded, Failed uint64 }

// Watch loads path now, then again after every change, debounced (0: 100
// ms). When the first load fails it returns its *ConfigError and nothing
// runs. Stop the watcher before Close.
func (r *Runtime) Watch(path string, debounce time.Duration) (*Watcher, error) {
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	var fw *C.fggo_watch
	rc := C.fggo_watch_start(r.rt, r.reg, cs, C.uint64_t(debounce), &fw)
	if rc != 0 {
		var err error = Code(rc)
		if fw != nil {
			if w := (&Watcher{fw: fw}); w.LastError() != nil {
				err = w.LastError()
			}
			C.fggo_watch_free(fw)
		}
		return nil, err
	}
	return &Watcher{fw: fw}, nil
}

// Stats reads the watcher's counters.
func (w *Watcher) Stats() WatchStats {
	var s C.fg_watch_stats
	C.fg_watch_stats_get(w.fw.w, &s)
	return WatchStats{uint64(s.attempts), uint64(s.loaded), uint64(s.failed)}
}

// LastError is the last load attempt's error (a *ConfigError), nil when it
// loaded.
func (w *Watcher) LastError() error {
	errs := (*C.fg_config_errors)(C.calloc(1, C.sizeof_fg_config_errors))
	if errs == nil {
		return ErrNoMem
	}
	defer C.free(unsafe.Pointer(errs))
	if rc := C.fggo_watch_last(w.fw, errs); rc != 0 {
		return configError(rc, errs)
	}
	return nil
}

// Stop stops watching (fg_watch_stop: waits for a load in progress).
func (w *Watcher) Stop() {
	w.stop.Do(func() { C.fggo_watch_free(w.fw) })
}

// ---- a limiter on its own ---------------------------------------------------

// LimiterOptions are a token bucket's settings (fg_limiter_options): Rate
// tokens per Period (0: one second), at most Burst held, starting full.
// MaxWait > 0 turns on smoothing: a request may reserve a slot up to that
// far ahead instead of being rejected.
type LimiterOptions struct {
	Rate    uint64
	Period  time.Duration
	Burst   uint64
	MaxWait time.Duration
}

// Limiter is one fg_limiter: exact and lock-free, on the monotonic clock.
// Safe for concurrent use; Close it when no goroutine uses it any more.
type Limiter struct {
	l   *C.fg_limiter
	hot C.uintptr_t // l as an integer for Try and Allow (shim.h says why)
}

// NewLimiter makes a full bucket (fg_limiter_new).
func NewLimiter(o LimiterOptions) (*Limiter, error) {
	var co C.fg_limiter_options
	co.rate = C.uint64_t(o.Rate)
	co.period_ns = C.uint64_t(o.Period)
	co.burst = C.uint64_t(o.Burst)
	co.max_wait_ns = C.uint64_t(o.MaxWait)
	l := &Limiter{}
	if rc := C.fg_limiter_new(&co, &l.l); rc != 0 {
		return nil, Code(rc)
	}
	l.hot = C.uintptr_t(uintptr(unsafe.Pointer(l.l)))
	return l, nil
}

// Try asks for n tokens now (fg_limiter_try_now). nil: admitted, and wait
// is 0 or, when smoothing, how long to wait before going ahead. ErrLimited:
// rejected, and wait is the time until n tokens are there. ErrRange: n >
// burst, which can never be admitted.
func (l *Limiter) Try(n uint64) (wait time.Duration, err error) {
	t := C.fggo_limiter_try_now(l.hot, C.uint64_t(n))
	return time.Duration(t.wait_ns), codeErr(t.rc)
}

// Allow is Try(1) == nil, as x/time/rate's Limiter.Allow (one cgo call).
func (l *Limiter) Allow() bool {
	return C.fggo_limiter_allow(l.hot) == 0
}

// Tokens is how many whole tokens the bucket holds now.
func (l *Limiter) Tokens() uint64 {
	return uint64(C.fg_limiter_tokens(l.l, C.fg_clock_monotonic_now(nil)))
}

// SetRate changes the rate, keeping the tokens held (fg_limiter_set_rate).
func (l *Limiter) SetRate(rate uint64, period time.Duration) error {
	return codeErr(C.fg_limiter_set_rate(l.l, C.uint64_t(rate), C.uint64_t(period)))
}

// Close frees the limiter.
func (l *Limiter) Close() {
	C.fg_limiter_free(l.l)
	l.l, l.hot = nil, 0
}
