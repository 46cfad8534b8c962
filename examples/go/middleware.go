package floodgate

// The http.Handler middleware: each request is copied into a pooled C
// request (shim.h), entered with one cgo call (fggo_enter), served by the
// Go handler the routed target names, and exited with a second call
// (fg_runtime_exit), whatever the handler does, panics included.

/*
#include "shim.h"
*/
import "C"

import (
	"context"
	"net/http"
	"runtime"
	"strconv"
	"time"
	"unsafe"
)

// Info is what floodgate decided for an admitted request, for its handler:
// FromContext(r.Context()).
type Info struct {
	Route   string // the config route that serves it (ctx->route)
	Target  string // the route's split target (ctx->target)
	Handler string // the config handler name
	// TraceID is this hop's trace id (32 hex digits, the incoming
	// traceparent's when it had a valid one) and Traceparent the header to
	// send downstream (this hop's span as the parent); both "" unless the
	// config's chain has a "trace" stage.
	TraceID     string
	Traceparent string
	Params      []Param   // path parameters of a pattern route
	Deadline    time.Time // zero unless a timeout stage set one (also the context's)
}

// Param is one path parameter (":id" or "*rest", named without the sigil).
type Param struct{ Name, Value string }

type infoKey struct{}

// FromContext returns the Info Middleware stored in a request's context,
// or nil outside Middleware.
func FromContext(ctx context.Context) *Info {
	i, _ := ctx.Value(infoKey{}).(*Info)
	return i
}

// Middleware returns a handler that runs every request through the current
// config's chain and router. An admitted request is served by the Go
// handler its route's config handler name was declared with (Handlers), or
// by next when that was nil; with the response headers X-Fg-Route,
// X-Fg-Target and X-Fg-Trace-Id (when a trace stage ran) already set. A
// handler that answers 5xx counts as failed (a breaker sees it); one that
// writes nothing by the time a timeout stage's deadline passes is answered
// 504 and counts as timed out.
//
// Rejections are answered here: 429 rate limited, 503 breaker open,
// overloaded or fault injected (each with Retry-After in whole seconds, at
// least 1), 404 no route, 504 timed out, 403 rejected, 503 before the
// first config; with X-Fg-Outcome (fg_outcome_name) and the trace id. A
// request that does not fit a fg_ctx never enters: more than
// FG_CTX_MAX_HEADERS header lines (the Host counting as one) or a header
// over its bound gets 431, a path and query over FG_PATH_MAX 414, a method
// over FG_METHOD_MAX 501.
func (rt *Runtime) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt.serve(w, r, next)
	})
}

// Handler is Middleware(nil): every config handler name must then have
// been declared with a Go handler.
func (rt *Runtime) Handler() http.Handler { return rt.Middleware(nil) }

// request is one C request object, reused through the runtime's pool; a
// finalizer frees its C memory when the pool lets it go.
type request struct {
	c    *C.fggo_req
	addr C.uintptr_t // c as an integer for the request path (shim.h says why)
}

const (
	arenaStart = 4 << 10  // arena bytes of a new request
	arenaKeep  = 64 << 10 // a larger arena is given back before pooling
)

func newRequest() interface{} {
	c := C.fggo_req_new(arenaStart)
	if c == nil {
		panic("floodgate: out of C memory")
	}
	q := &request{c: c, addr: C.uintptr_t(uintptr(unsafe.Pointer(c)))}
	runtime.SetFinalizer(q, func(q *request) { C.fggo_req_free(q.c) })
	return q
}

func (rt *Runtime) put(q *request) {
	if q.c.arena_cap > arenaKeep {
		return // let the finalizer free the big arena
	}
	rt.pool.Put(q)
}

// requestPath is the request target as the router wants it: the path and
// the query, as they came on the wire when known.
func requestPath(r *http.Request) string {
	if p := r.RequestURI; p != "" && p[0] == '/' {
		return p
	}
	return r.URL.RequestURI()
}

// arena is a writer into q's C arena; Go writes straight into C memory:
// no pointer crosses, no call is made unless the arena must grow.
type arena struct {
	c   *C.fggo_req
	buf []byte
	off int
}

func (a *arena) put(s string) bool {
	if need := a.off + len(s); need > len(a.buf) {
		grow := 2 * len(a.buf)
		if grow < need {
			grow = need
		}
		if C.fggo_req_reserve(a.c, C.size_t(grow)) != 0 {
			return false
		}
		a.buf = unsafe.Slice((*byte)(unsafe.Pointer(a.c.arena)), int(a.c.arena_cap))
	}
	a.off += copy(a.buf[a.off:], s)
	return true
}

// fill copies the method, path and headers into q's C arena, in one pass
// over the header map; returns 0, or the HTTP status to answer when the
// request does not fit a fg_ctx.
func (q *request) fill(r *http.Request) int {
	method, path := r.Method, requestPath(r)
	if len(method) > C.FG_METHOD_MAX {
		return http.StatusNotImplemented
	}
	if len(path) > C.FG_PATH_MAX {
		return http.StatusRequestURITooLong
	}
	c := q.c
	a := arena{c: c, buf: unsafe.Slice((*byte)(unsafe.Pointer(c.arena)), int(c.arena_cap))}
	if !a.put(method) || !a.put(path) {
		return http.StatusInternalServerError
	}
	c.method_len, c.path_len = C.uint32_t(len(method)), C.uint32_t(len(path))
	n := 0
	if r.Host != "" {
		if len(r.Host) > C.FG_HEADER_VALUE_MAX {
			return http.StatusRequestHeaderFieldsTooLarge
		}
		if !a.put("host") || !a.put(r.Host) {
			return http.StatusInternalServerError
		}
		c.name_len[0], c.value_len[0] = 4, C.uint32_t(len(r.Host))
		n = 1
	}
	for name, values := range r.Header {
		if len(name) > C.FG_HEADER_NAME_MAX {
			return http.StatusRequestHeaderFieldsTooLarge
		}
		for _, v := range values {
			if n == C.FG_CTX_MAX_HEADERS || len(v) > C.FG_HEADER_VALUE_MAX {
				return http.StatusRequestHeaderFieldsTooLarge
			}
			if !a.put(name) || !a.put(v) {
				return http.StatusInternalServerError
			}
			c.name_len[n], c.value_len[n] = C.uint32_t(len(name)), C.uint32_t(len(v))
			n++
		}
	}
	c.nheaders = C.uint32_t(n)
	return 0
}

// served is the Go state of one admitted request, in one allocation: the
// handler's context and Info, the status-recording writer, and the
// backing arrays of the response headers set for it.
type served struct {
	ctx  infoCtx
	info Info
	sw   statusWriter
	hv   [3]string
}

// infoCtx carries the Info; a context.Context of its own rather than
// context.WithValue's so that it shares the allocation.
type infoCtx struct {
	context.Context
	info *Info
}

func (c *infoCtx) Value(key interface{}) interface{} {
	if _, ok := key.(infoKey); ok {
		return c.info
	}
	return c.Context.Value(key)
}

func (rt *Runtime) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	q := rt.pool.Get().(*request)
	if st := q.fill(r); st != 0 {
		rt.put(q)
		http.Error(w, http.StatusText(st), st)
		return
	}
	c := q.c
	rc := Code(C.fggo_enter(rt.hot, q.addr))
	if rc != 0 {
		h := w.Header()
		if c.has_trace != 0 {
			h["X-Fg-Trace-Id"] = []string{C.GoString(&c.trace_id[0])}
		}
		if c.ctx.route != nil {
			h["X-Fg-Route"] = []string{C.GoString(c.ctx.route)}
		}
		if c.ctx.target != nil {
			h["X-Fg-Target"] = []string{C.GoString(c.ctx.target)}
		}
		retryAfter, badHeader := uint64(c.ctx.retry_after_ns), c.bad_header >= 0
		rt.put(q)
		reject(w, h, rc, retryAfter, badHeader)
		return
	}

	// Admitted: from here fg_runtime_exit must run exactly once, on
	// whatever thread this goroutine then runs on (the split API allows
	// it), with ErrHandler if the handler panics.
	code := ErrHandler
	defer func() {
		C.fggo_exit(rt.hot, q.addr, C.int(code))
		rt.put(q)
		runtime.KeepAlive(q)
	}()

	st := &served{sw: statusWriter{ResponseWriter: w}}
	info := &st.info
	st.ctx = infoCtx{Context: r.Context(), info: info}
	h := w.Header()
	if c.has_trace != 0 {
		info.TraceID = C.GoString(&c.trace_id[0])
		info.Traceparent = C.GoString(&c.traceparent[0])
		st.hv[0] = info.TraceID
		h["X-Fg-Trace-Id"] = st.hv[0:1:1]
	}
	if c.ctx.route != nil {
		info.Route = C.GoString(c.ctx.route)
		st.hv[1] = info.Route
		h["X-Fg-Route"] = st.hv[1:2:2]
	}
	if c.ctx.target != nil {
		info.Target = info.Route // a route without a split: its target has its name
		if !cEqual(c.ctx.target, info.Route) {
			info.Target = C.GoString(c.ctx.target)
		}
		st.hv[2] = info.Target
		h["X-Fg-Target"] = st.hv[2:3:3]
	}
	for i := 0; i < int(c.ctx.nparams) && i < C.FG_CTX_MAX_PARAMS; i++ {
		p := &c.ctx.params[i]
		info.Params = append(info.Params, Param{
			C.GoStringN(p.name.ptr, C.int(p.name.len)),
			C.GoStringN(p.value.ptr, C.int(p.value.len))})
	}
	var handler http.Handler
	if i := int(c.handler); i >= 0 && i < len(rt.handlers) {
		info.Handler = rt.names[i]
		handler = rt.handlers[i]
	}
	if handler == nil {
		handler = next
	}
	if handler == nil {
		http.Error(w, "floodgate: no Go handler for "+strconv.Quote(info.Handler),
			http.StatusInternalServerError)
		return
	}

	var ctx context.Context = &st.ctx
	if dl, now := uint64(c.ctx.deadline_ns), uint64(c.ctx.now_ns); dl != 0 {
		// The deadline is on the chain's clock; enter read it at now_ns,
		// a moment ago.
		left := time.Duration(0)
		if dl > now {
			left = time.Duration(dl - now)
		}
		info.Deadline = time.Now().Add(left)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, info.Deadline)
		defer cancel()
	}

	// A smoothing limiter admitted the request for a later slot.
	if d := time.Duration(c.ctx.delay_ns); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			code = ErrCanceled // the client went away while it waited
			return
		}
	}

	sw := &st.sw
	handler.ServeHTTP(sw, r.WithContext(ctx))
	switch {
	case sw.status >= 500:
		code = ErrHandler
	case !sw.wrote && ctx.Err() == context.DeadlineExceeded:
		http.Error(w, http.StatusText(http.StatusGatewayTimeout), http.StatusGatewayTimeout)
		code = ErrTimedOut
	case r.Context().Err() != nil:
		code = ErrCanceled
	default:
		code = 0
	}
}

// enterExit runs q's request through the chain and out again with no Go
// handler: the C side of a request and its two cgo calls, for
// BenchmarkFloodgateEnterExit.
func (rt *Runtime) enterExit(q *request) Code {
	if rc := C.fggo_enter(rt.hot, q.addr); rc != 0 {
		return Code(rc)
	}
	return Code(C.fggo_exit(rt.hot, q.addr, 0))
}

// cEqual is strcmp(p, s) == 0 without a cgo call: it reads p's bytes up
// to its NUL or the first difference, never past either.
func cEqual(p *C.char, s string) bool {
	for i := 0; i < len(s); i++ {
		if *(*byte)(unsafe.Add(unsafe.Pointer(p), i)) != s[i] {
			return false
		}
	}
	return *(*byte)(unsafe.Add(unsafe.Pointer(p), len(s))) == 0
}

// reject answers a request that did not get through.
func reject(w http.ResponseWriter, h http.Header, code Code, retryAfterNs uint64, badHeader bool) {
	var status int
	switch {
	case badHeader && (code == ErrTooLong || code == ErrTooMany):
		status = http.StatusRequestHeaderFieldsTooLarge
	case code == ErrTooLong: // the path (the method was checked before)
		status = http.StatusRequestURITooLong
	case code == ErrInvalid: // a header name or method that is not a token
		status = http.StatusBadRequest
	case code == ErrState: // no config loaded yet
		status = http.StatusServiceUnavailable
	default:
		status = HTTPStatus(code)
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		secs := (retryAfterNs + uint64(time.Second) - 1) / uint64(time.Second)
		if secs < 1 {
			secs = 1
		}
		h["Retry-After"] = []string{strconv.FormatUint(secs, 10)}
	}
	if o := code.Outcome(); o != "" {
		h["X-Fg-Outcome"] = []string{o}
	}
	http.Error(w, http.StatusText(status), status)
}

// statusWriter records the status the handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if !s.wrote {
		s.status, s.wrote = http.StatusOK, true
	}
	return s.ResponseWriter.Write(b)
}

// Flush passes http.Flusher through.
func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		if !s.wrote {
			s.status, s.wrote = http.StatusOK, true
		}
		f.Flush()
	}
}

// Unwrap gives http.ResponseController (Go 1.20) the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
