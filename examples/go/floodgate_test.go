package floodgate

// Tests of the Go binding, run by tests/test_go.sh (release `make check`)
// with GODEBUG=cgocheck=2. Every test asserts exact statuses and counts:
// the limiters use a rate of one token an hour, so only the burst counts.

import (
	"context"
	"errors"
	"fmt"
	"io/ioutil"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newRT makes a runtime declaring handlers and loads config into it.
func newRT(t *testing.T, handlers Handlers, config string) *Runtime {
	t.Helper()
	rt, err := NewRuntime(handlers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	if config != "" {
		if err := rt.Load([]byte(config)); err != nil {
			t.Fatal(err)
		}
	}
	return rt
}

// counter is a handler that counts its calls and answers status.
type counter struct {
	n      int64
	status int
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	atomic.AddInt64(&c.n, 1)
	if c.status != 0 {
		w.WriteHeader(c.status)
	}
	fmt.Fprint(w, "ok")
}

func (c *counter) calls() int64 { return atomic.LoadInt64(&c.n) }

func do(h http.Handler, method, target string, hdr http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func wantStatus(t *testing.T, w *httptest.ResponseRecorder, status int, hdr ...string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d (headers %v, body %q)", w.Code, status, w.Header(), w.Body)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if got := w.Header().Get(hdr[i]); got != hdr[i+1] {
			t.Fatalf("%s: %q, want %q (headers %v)", hdr[i], got, hdr[i+1], w.Header())
		}
	}
}

func wantStats(t *testing.T, rt *Runtime, route string, ok, failed, rejected uint64) RouteStats {
	t.Helper()
	st, err := rt.RouteStats(route)
	if err != nil {
		t.Fatalf("RouteStats(%q): %v", route, err)
	}
	if st.OK != ok || st.Failed != failed || st.Rejected != rejected {
		t.Fatalf("route %q: ok %d failed %d rejected %d, want %d %d %d", route, st.OK,
			st.Failed, st.Rejected, ok, failed, rejected)
	}
	return st
}

const limitConfig = `{"version": "%s", "limiters": {"api": {"rate": "%s", "burst": %d}},
  "chain": ["trace", {"limiter": "api"}], "handler": "app"}`

// ---- codes -------------------------------------------------------------------

func TestCodesMatchTheCTable(t *testing.T) {
	names := map[Code]string{ErrInvalid: "EINVAL", ErrNoMem: "ENOMEM", ErrTooLong: "ETOOLONG",
		ErrTooMany: "ETOOMANY", ErrState: "ESTATE", ErrNotFound: "ENOTFOUND",
		ErrExist: "EEXIST", ErrRange: "ERANGE", ErrConfig: "ECONFIG", ErrSys: "ESYS",
		ErrParse: "EPARSE", ErrLimited: "ELIMITED", ErrBreaker: "EBREAKER",
		ErrNoRoute: "ENOROUTE", ErrTimedOut: "ETIMEDOUT", ErrOverloaded: "EOVERLOADED",
		ErrInjected: "EINJECTED", ErrHandler: "EHANDLER", ErrCanceled: "ECANCELED",
		ErrRejected: "EREJECTED"}
	for c, n := range names {
		if c.Name() != "FG_"+n {
			t.Errorf("Code(%d).Name() = %s, want FG_%s", int(c), c.Name(), n)
		}
	}
	for c := Code(-200); c <= 0; c++ {
		if c.Outcome() != outcomeC(c) {
			t.Errorf("Code(%d).Outcome() = %q, fg_outcome_name %q", int(c), c.Outcome(), outcomeC(c))
		}
	}
	if ErrLimited.Error() != "rate limited" || !errors.Is(fmt.Errorf("w: %w", ErrLimited), ErrLimited) {
		t.Errorf("ErrLimited: %q", ErrLimited.Error())
	}
	statuses := map[error]int{nil: 200, ErrLimited: 429, ErrBreaker: 503, ErrOverloaded: 503,
		ErrInjected: 503, ErrNoRoute: 404, ErrTimedOut: 504, ErrCanceled: 499,
		ErrRejected: 403, ErrHandler: 502, ErrInvalid: 500, errors.New("x"): 500}
	for err, want := range statuses {
		if got := HTTPStatus(err); got != want {
			t.Errorf("HTTPStatus(%v) = %d, want %d", err, got, want)
		}
	}
}

// ---- the middleware ----------------------------------------------------------

func TestBurstFiveAdmitsFiveThen429(t *testing.T) {
	app := &counter{}
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "v1", "1/h", 5))
	h := rt.Middleware(app)
	for i := 0; i < 10; i++ {
		w := do(h, "GET", "/orders", nil)
		if i < 5 {
			wantStatus(t, w, 200, "X-Fg-Route", "default", "X-Fg-Outcome", "")
		} else {
			// The next token is an hour (less a few microseconds) away.
			wantStatus(t, w, 429, "Retry-After", "3600", "X-Fg-Outcome", "rate_limited")
		}
		if len(w.Header().Get("X-Fg-Trace-Id")) != 32 {
			t.Fatalf("request %d: X-Fg-Trace-Id %q", i, w.Header().Get("X-Fg-Trace-Id"))
		}
	}
	if app.calls() != 5 {
		t.Fatalf("handler called %d times, want 5", app.calls())
	}
	// The chain's limiter rejects before the router: route "" counts those.
	wantStats(t, rt, "default", 5, 0, 0)
	st := wantStats(t, rt, "", 0, 0, 5)
	if st.RejectedBy[ErrLimited] != 5 || len(st.RejectedBy) != 1 {
		t.Fatalf("rejected by %v", st.RejectedBy)
	}
}

func TestNoConfigIs503(t *testing.T) {
	app := &counter{}
	rt := newRT(t, Handlers{"app": nil}, "")
	wantStatus(t, do(rt.Middleware(app), "GET", "/", nil), 503, "Retry-After", "1")
	if app.calls() != 0 || rt.Version() != "" || rt.Generation() != 0 {
		t.Fatalf("calls %d version %q generation %d", app.calls(), rt.Version(), rt.Generation())
	}
}

func TestBrokenReloadKeepsTheOldConfig(t *testing.T) {
	app := &counter{}
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "v1", "1/h", 5))
	h := rt.Middleware(app)
	for i := 0; i < 3; i++ {
		wantStatus(t, do(h, "GET", "/", nil), 200)
	}

	err := rt.Load([]byte(fmt.Sprintf(limitConfig, "v2", "1/h", 0)))
	var ce *ConfigError
	if !errors.As(err, &ce) || !errors.Is(err, ErrConfig) || len(ce.Problems) != 1 ||
		ce.Problems[0] != (ConfigProblem{Path: "limiters.api.burst", Message: "must be >= 1"}) ||
		ce.Text != "limiters.api.burst: must be >= 1" {
		t.Fatalf("broken load: %#v", err)
	}
	err = rt.Load([]byte("{\"version\": \"v3\",\n  \"chain\": [}"))
	if !errors.As(err, &ce) || len(ce.Problems) != 1 || ce.Problems[0].Line != 2 ||
		ce.Problems[0].Column != 13 || ce.Problems[0].Path != "" {
		t.Fatalf("syntax error: %#v", err)
	}
	err = rt.Load([]byte(`{"version": "v4", "chain": [], "handler": "nope"}`))
	if !errors.As(err, &ce) || ce.Text != `handler: unknown handler "nope" (not registered)` {
		t.Fatalf("unknown handler: %#v", err)
	}
	if rt.Version() != "v1" || rt.Generation() != 1 {
		t.Fatalf("version %q generation %d after broken loads", rt.Version(), rt.Generation())
	}
	// The old config still serves, with its two tokens left.
	wantStatus(t, do(h, "GET", "/", nil), 200)
	wantStatus(t, do(h, "GET", "/", nil), 200)
	wantStatus(t, do(h, "GET", "/", nil), 429)
	if app.calls() != 5 {
		t.Fatalf("handler called %d times, want 5", app.calls())
	}
}

func TestReloadKeepsTokens(t *testing.T) {
	// docs/config.md: rate 1/h, burst 5, take 3, reload with rate 2/h: 2 admitted.
	app := &counter{}
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "v1", "1/h", 5))
	h := rt.Middleware(app)
	for i := 0; i < 3; i++ {
		wantStatus(t, do(h, "GET", "/", nil), 200)
	}
	if err := rt.Load([]byte(fmt.Sprintf(limitConfig, "v2", "2/h", 5))); err != nil {
		t.Fatal(err)
	}
	if rt.Version() != "v2" || rt.Generation() != 2 {
		t.Fatalf("version %q generation %d", rt.Version(), rt.Generation())
	}
	codes := []int{}
	for i := 0; i < 4; i++ {
		codes = append(codes, do(h, "GET", "/", nil).Code)
	}
	if fmt.Sprint(codes) != "[200 200 429 429]" {
		t.Fatalf("after reload: %v", codes)
	}
}

func TestReloadWhileRequestsRun(t *testing.T) {
	// The same limiter in every config keeps its bucket: however the
	// reloads interleave with 16 goroutines' requests, exactly the burst
	// is admitted, and broken configs change nothing.
	app := &counter{}
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "r0", "1/h", 500))
	h := rt.Middleware(app)
	var admitted, limited, other int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	reloads := make(chan error, 1)
	go func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				reloads <- nil
				return
			default:
			}
			burst := 500
			if i%3 == 0 {
				burst = 0 // broken
			}
			err := rt.Load([]byte(fmt.Sprintf(limitConfig, fmt.Sprintf("r%d", i), "1/h", burst)))
			if (err == nil) != (burst != 0) {
				reloads <- fmt.Errorf("reload %d: %v", i, err)
				return
			}
		}
	}()
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				switch do(h, "GET", "/", nil).Code {
				case 200:
					atomic.AddInt64(&admitted, 1)
				case 429:
					atomic.AddInt64(&limited, 1)
				default:
					atomic.AddInt64(&other, 1)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-reloads; err != nil {
		t.Fatal(err)
	}
	if admitted != 500 || limited != 1100 || other != 0 || app.calls() != 500 {
		t.Fatalf("admitted %d limited %d other %d calls %d, want 500 1100 0 500",
			admitted, limited, other, app.calls())
	}
	if rt.Generation() < 2 {
		t.Fatalf("generation %d: no reload happened", rt.Generation())
	}
}

func TestTraceIDFollowsTraceparent(t *testing.T) {
	var seen *Info
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = FromContext(r.Context()) })
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "v1", "1/h", 100))
	h := rt.Middleware(app)

	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	w := do(h, "GET", "/", http.Header{"Traceparent": {"00-" + trace + "-00f067aa0ba902b7-01"}})
	wantStatus(t, w, 200, "X-Fg-Trace-Id", trace)
	if seen == nil || seen.TraceID != trace {
		t.Fatalf("handler saw %+v", seen)
	}
	// Downstream: same trace, this hop's span (not the caller's), sampled.
	tp := strings.Split(seen.Traceparent, "-")
	if len(tp) != 4 || tp[0] != "00" || tp[1] != trace || len(tp[2]) != 16 ||
		tp[2] == "00f067aa0ba902b7" || tp[3] != "01" {
		t.Fatalf("outgoing traceparent %q", seen.Traceparent)
	}

	// No (or a malformed) traceparent: a new trace, the same id both sides.
	for _, hdr := range []http.Header{nil, {"Traceparent": {"00-zz-00f067aa0ba902b7-01"}}} {
		w = do(h, "GET", "/", hdr)
		id := w.Header().Get("X-Fg-Trace-Id")
		if len(id) != 32 || id == trace || seen.TraceID != id {
			t.Fatalf("new trace: header %q, handler %q", id, seen.TraceID)
		}
	}
	// A rejected request still carries its trace id.
	rt2 := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "v1", "1/h", 1))
	h2 := rt2.Middleware(app)
	wantStatus(t, do(h2, "GET", "/", nil), 200)
	w = do(h2, "GET", "/", http.Header{"Traceparent": {"00-" + trace + "-00f067aa0ba902b7-01"}})
	wantStatus(t, w, 429, "X-Fg-Trace-Id", trace)
}

func TestRoutesNameGoHandlers(t *testing.T) {
	var seen *Info
	orders := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = FromContext(r.Context())
		fmt.Fprint(w, "orders")
	})
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = FromContext(r.Context())
		fmt.Fprint(w, "next")
	})
	rt := newRT(t, Handlers{"orders": orders, "search_v1": nil, "search_v2": nil}, `{
	  "version": "routes-1", "chain": [],
	  "routes": [
	    {"name": "orders", "match": {"path": {"pattern": "/orders/:id"}, "methods": ["GET"]},
	     "handler": "orders"},
	    {"name": "search", "match": {"path": {"exact": "/search"}},
	     "split": {"targets": [{"name": "stable", "weight": 10000, "handler": "search_v1"},
	                           {"name": "canary", "weight": 0, "handler": "search_v2"}]}}]}`)
	h := rt.Middleware(next)

	w := do(h, "GET", "/orders/42?x=1", nil)
	wantStatus(t, w, 200, "X-Fg-Route", "orders", "X-Fg-Target", "orders", "X-Fg-Trace-Id", "")
	if w.Body.String() != "orders" || seen.Handler != "orders" || seen.Route != "orders" ||
		len(seen.Params) != 1 || seen.Params[0] != (Param{"id", "42"}) || seen.TraceID != "" {
		t.Fatalf("orders: body %q info %+v", w.Body, seen)
	}
	w = do(h, "GET", "/search", nil)
	wantStatus(t, w, 200, "X-Fg-Route", "search", "X-Fg-Target", "stable")
	if w.Body.String() != "next" || seen.Handler != "search_v1" || seen.Target != "stable" {
		t.Fatalf("search: body %q info %+v", w.Body, seen)
	}
	seen = nil
	wantStatus(t, do(h, "POST", "/orders/42", nil), 404, "X-Fg-Outcome", "no_route", "X-Fg-Route", "")
	wantStatus(t, do(h, "GET", "/other", nil), 404, "X-Fg-Outcome", "no_route")
	if seen != nil {
		t.Fatal("a handler ran for an unrouted request")
	}
	wantStats(t, rt, "", 0, 0, 2)
	wantStats(t, rt, "orders", 1, 0, 0)

	// Without a next handler, a name declared nil has nothing to run.
	wantStatus(t, do(rt.Handler(), "GET", "/search", nil), 500)
	wantStats(t, rt, "search", 1, 1, 0)
}

func TestBreakerOpensAfterFailures(t *testing.T) {
	app := &counter{status: 500}
	rt := newRT(t, Handlers{"app": nil}, `{"version": "b1",
	  "breakers": {"db": {"consecutive_failures": 2, "open_for": "1h"}},
	  "chain": [{"breaker": "db"}], "handler": "app"}`)
	h := rt.Middleware(app)
	wantStatus(t, do(h, "GET", "/", nil), 500)
	wantStatus(t, do(h, "GET", "/", nil), 500)
	for i := 0; i < 3; i++ {
		wantStatus(t, do(h, "GET", "/", nil), 503, "Retry-After", "3600", "X-Fg-Outcome", "breaker_open")
	}
	if app.calls() != 2 {
		t.Fatalf("handler called %d times, want 2", app.calls())
	}
	wantStats(t, rt, "default", 0, 2, 0)
	st := wantStats(t, rt, "", 0, 0, 3)
	if st.RejectedBy[ErrBreaker] != 3 {
		t.Fatalf("rejected by %v", st.RejectedBy)
	}
}

func TestBulkheadOverloaded(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
	})
	rt := newRT(t, Handlers{"app": nil}, `{"version": "k1",
	  "bulkheads": {"one": {"max_concurrent": 1}}, "chain": [{"bulkhead": "one"}], "handler": "app"}`)
	h := rt.Middleware(app)
	done := make(chan int)
	go func() { done <- do(h, "GET", "/slow", nil).Code }() // holds the only slot
	<-entered
	wantStatus(t, do(h, "GET", "/", nil), 503, "Retry-After", "1", "X-Fg-Outcome", "overloaded")
	close(release)
	if c := <-done; c != 200 {
		t.Fatalf("slow request: %d", c)
	}
	wantStatus(t, do(h, "GET", "/", nil), 200) // the slot came back at exit
	wantStats(t, rt, "default", 2, 0, 0)
	wantStats(t, rt, "", 0, 0, 1)
}

func TestPanickingHandlerStillExits(t *testing.T) {
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("boom")
		}
	})
	rt := newRT(t, Handlers{"app": nil}, `{"version": "p1",
	  "bulkheads": {"one": {"max_concurrent": 1}}, "chain": [{"bulkhead": "one"}], "handler": "app"}`)
	h := rt.Middleware(app)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("no panic")
			}
		}()
		do(h, "GET", "/panic", nil)
	}()
	wantStatus(t, do(h, "GET", "/", nil), 200) // the bulkhead slot was given back
	wantStats(t, rt, "default", 1, 1, 0)
}

func TestFaultOutcomes(t *testing.T) {
	cases := []struct {
		code, retryAfter string
		status           int
		hdr              string
	}{
		{"timed_out", "", 504, ""},
		{"overloaded", "2500ms", 503, "3"}, // rounded up to whole seconds
		{"fault_injected", "", 503, "1"},
		{"rejected", "", 403, ""},
		{"rate_limited", "10s", 429, "10"},
	}
	for _, c := range cases {
		app := &counter{}
		abort := fmt.Sprintf(`{"percent": 100, "code": %q}`, c.code)
		if c.retryAfter != "" {
			abort = fmt.Sprintf(`{"percent": 100, "code": %q, "retry_after": %q}`, c.code, c.retryAfter)
		}
		rt := newRT(t, Handlers{"app": nil}, `{"version": "f1",
		  "faults": {"drill": {"abort": `+abort+`, "seed": 1}},
		  "chain": [{"fault": "drill"}], "handler": "app"}`)
		w := do(rt.Middleware(app), "GET", "/", nil)
		wantStatus(t, w, c.status, "Retry-After", c.hdr, "X-Fg-Outcome", c.code)
		if app.calls() != 0 {
			t.Fatalf("%s: handler ran", c.code)
		}
	}
}

func TestTimeoutStageGivesTheHandlerADeadline(t *testing.T) {
	var seen *Info
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = FromContext(r.Context())
		<-r.Context().Done() // writes nothing: the middleware answers 504
	})
	rt := newRT(t, Handlers{"app": nil}, `{"version": "t1",
	  "chain": [{"timeout": "30ms"}], "handler": "app"}`)
	start := time.Now()
	wantStatus(t, do(rt.Middleware(app), "GET", "/", nil), 504)
	if took := time.Since(start); took < 25*time.Millisecond || took > 5*time.Second {
		t.Fatalf("took %v", took)
	}
	if seen == nil || seen.Deadline.IsZero() || seen.Deadline.Sub(start) < 30*time.Millisecond ||
		seen.Deadline.Sub(start) > time.Second {
		t.Fatalf("deadline %v, start %v", seen.Deadline, start)
	}
	st := wantStats(t, rt, "default", 0, 1, 0)
	if st.LatencyCount != 1 {
		t.Fatalf("latency count %d", st.LatencyCount)
	}
}

func TestSmoothingDelaysThenCancels(t *testing.T) {
	app := &counter{}
	rt := newRT(t, Handlers{"app": nil}, `{"version": "s1",
	  "limiters": {"api": {"rate": "4/s", "burst": 1, "max_wait": "10s"}},
	  "chain": [{"limiter": "api"}], "handler": "app"}`)
	h := rt.Middleware(app)
	wantStatus(t, do(h, "GET", "/", nil), 200)
	start := time.Now()
	wantStatus(t, do(h, "GET", "/", nil), 200) // waits for its slot, 250 ms on
	if took := time.Since(start); took < 240*time.Millisecond || took > 5*time.Second {
		t.Fatalf("delayed request took %v", took)
	}
	// A client that leaves while it waits for its slot (another 250 ms)
	// never reaches the handler; the request exits as canceled.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil).WithContext(ctx))
	if took := time.Since(start); took < 15*time.Millisecond || took > 200*time.Millisecond {
		t.Fatalf("canceled wait took %v", took)
	}
	if app.calls() != 2 {
		t.Fatalf("handler called %d times, want 2", app.calls())
	}
	st := wantStats(t, rt, "default", 2, 1, 0)
	if st.Delayed != 2 {
		t.Fatalf("delayed %d, want 2", st.Delayed)
	}
}

func TestRequestBounds(t *testing.T) {
	app := &counter{}
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "v1", "1/h", 1000))
	h := rt.Middleware(app)
	headers := func(n int) http.Header { // n lines; Host makes n + 1
		hd := http.Header{}
		for i := 0; i < n; i++ {
			hd[fmt.Sprintf("X-H-%02d", i)] = []string{"v"}
		}
		return hd
	}
	wantStatus(t, do(h, "GET", "/", headers(31)), 200)
	wantStatus(t, do(h, "GET", "/", headers(32)), 431)
	many := http.Header{"X-Multi": make([]string, 32)} // each value is a line
	wantStatus(t, do(h, "GET", "/", many), 431)
	wantStatus(t, do(h, "GET", "/", http.Header{"X-Big": {strings.Repeat("v", 8192)}}), 200)
	wantStatus(t, do(h, "GET", "/", http.Header{"X-Big": {strings.Repeat("v", 8193)}}), 431)
	wantStatus(t, do(h, "GET", "/", http.Header{strings.Repeat("N", 256): {"v"}}), 200)
	wantStatus(t, do(h, "GET", "/", http.Header{strings.Repeat("N", 257): {"v"}}), 431)
	wantStatus(t, do(h, "GET", "/"+strings.Repeat("p", 8191), nil), 200)
	wantStatus(t, do(h, "GET", "/"+strings.Repeat("p", 8192), nil), 414)
	wantStatus(t, do(h, "GET", "/?"+strings.Repeat("q", 8192), nil), 414)
	wantStatus(t, do(h, strings.Repeat("M", 32), "/", nil), 200)
	wantStatus(t, do(h, strings.Repeat("M", 33), "/", nil), 501)
	if app.calls() != 5 {
		t.Fatalf("handler called %d times, want 5", app.calls())
	}
	wantStats(t, rt, "default", 5, 0, 0) // refused requests never enter
}

func TestConcurrentExactCount(t *testing.T) {
	// 32 goroutines, 300 requests each, a bucket of 5000: exactly 5000
	// admitted. Handlers yield and sleep so that goroutines change OS
	// threads between enter and exit.
	var calls int64
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&calls, 1)
		runtime.Gosched()
		if atomic.LoadInt64(&calls)%64 == 0 {
			time.Sleep(time.Millisecond)
		}
	})
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "c1", "1/h", 5000))
	h := rt.Middleware(app)
	var ok, limited, other int64
	var wg sync.WaitGroup
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				hd := http.Header{"X-User": {fmt.Sprint(g)}}
				switch do(h, "GET", fmt.Sprintf("/u/%d/%d", g, i), hd).Code {
				case 200:
					atomic.AddInt64(&ok, 1)
				case 429:
					atomic.AddInt64(&limited, 1)
				default:
					atomic.AddInt64(&other, 1)
				}
			}
		}(g)
	}
	wg.Wait()
	if ok != 5000 || limited != 4600 || other != 0 || calls != 5000 {
		t.Fatalf("ok %d limited %d other %d calls %d, want 5000 4600 0 5000", ok, limited, other, calls)
	}
	wantStats(t, rt, "default", 5000, 0, 0)
	wantStats(t, rt, "", 0, 0, 4600)
}

func TestOverRealHTTP(t *testing.T) {
	// The same over sockets: 64 client goroutines, 40 requests each, burst
	// 1000 (the Go client sends Host, User-Agent and Accept-Encoding).
	app := &counter{}
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "h1", "1/h", 1000))
	loaded := time.Now()
	// The hint is the time until the next token: an hour after the first
	// take, so down by one each second the test runs (-race is slow).
	retryOK := func(v string) bool {
		n, err := strconv.Atoi(v)
		return err == nil && n <= 3600 && n >= 3600-int(time.Since(loaded).Seconds())-1
	}
	srv := httptest.NewServer(rt.Middleware(app))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	var ok, limited, other int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				resp, err := client.Get(srv.URL + "/x")
				if err != nil {
					firstErr.Store(err)
					atomic.AddInt64(&other, 1)
					continue
				}
				ioutil.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == 200 && len(resp.Header.Get("X-Fg-Trace-Id")) == 32:
					atomic.AddInt64(&ok, 1)
				case resp.StatusCode == 429 && retryOK(resp.Header.Get("Retry-After")):
					atomic.AddInt64(&limited, 1)
				default:
					atomic.AddInt64(&other, 1)
				}
			}
		}()
	}
	wg.Wait()
	if ok != 1000 || limited != 1560 || other != 0 || app.calls() != 1000 {
		t.Fatalf("ok %d limited %d other %d calls %d (err %v), want 1000 1560 0 1000",
			ok, limited, other, app.calls(), firstErr.Load())
	}
}

func TestPrometheus(t *testing.T) {
	rt := newRT(t, Handlers{"app": nil}, fmt.Sprintf(limitConfig, "m1", "1/h", 2))
	h := rt.Middleware(&counter{})
	for i := 0; i < 3; i++ {
		do(h, "GET", "/", nil)
	}
	text, err := rt.Prometheus()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		`floodgate_requests_total{chain="main",route="default",decision="admitted",code="ok"} 2`,
		`floodgate_requests_total{chain="main",route="",decision="rejected",code="rate_limited"} 1`,
		`floodgate_config_info{version="m1"} 1`,
	} {
		if !strings.Contains(string(text), line+"\n") {
			t.Errorf("no line %s", line)
		}
	}
	js, err := rt.MetricsJSON()
	if err != nil || len(js) == 0 || js[0] != '{' {
		t.Fatalf("json: %v %.40q", err, js)
	}
}

// ---- hot reload from a file ------------------------------------------------------

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := ioutil.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // one event, a whole file
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestWatchReloadsAFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "floodgate.json")
	rt := newRT(t, Handlers{"app": nil}, "")

	writeFile(t, path, fmt.Sprintf(limitConfig, "w0", "1/h", 0))
	w, err := rt.Watch(path, 10*time.Millisecond)
	var ce *ConfigError
	if w != nil || !errors.As(err, &ce) || ce.Text != "limiters.api.burst: must be >= 1" {
		t.Fatalf("first load of a broken file: %v %#v", w, err)
	}

	writeFile(t, path, fmt.Sprintf(limitConfig, "w1", "1/h", 1))
	if w, err = rt.Watch(path, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	h := rt.Middleware(&counter{})
	if rt.Version() != "w1" || w.LastError() != nil {
		t.Fatalf("version %q, last error %v", rt.Version(), w.LastError())
	}
	wantStatus(t, do(h, "GET", "/", nil), 200)

	writeFile(t, path, `{"version": "w2", "chain": [`)
	// The counters and the callback that keeps the errors come just after
	// the load: wait for both.
	waitFor(t, "a failed reload", func() bool { return w.Stats().Failed == 1 && w.LastError() != nil })
	if err := w.LastError(); !errors.As(err, &ce) || ce.Problems[0].Line == 0 {
		t.Fatalf("last error %#v", err)
	}
	if rt.Version() != "w1" {
		t.Fatalf("version %q after a broken file", rt.Version())
	}
	wantStatus(t, do(h, "GET", "/", nil), 429) // the old bucket, still empty

	writeFile(t, path, fmt.Sprintf(limitConfig, "w3", "1/h", 3))
	waitFor(t, "a second load", func() bool { return w.Stats().Loaded == 2 && w.LastError() == nil })
	if rt.Version() != "w3" {
		t.Fatalf("version %q, want w3", rt.Version())
	}
	// Burst 1 -> 3 keeps the (zero) tokens held: still limited.
	wantStatus(t, do(h, "GET", "/", nil), 429)
	if s := w.Stats(); s.Attempts != 3 || s.Loaded != 2 || s.Failed != 1 || w.LastError() != nil {
		t.Fatalf("stats %+v, last error %v", s, w.LastError())
	}
}

// ---- the limiter on its own --------------------------------------------------------

func TestLimiter(t *testing.T) {
	if _, err := NewLimiter(LimiterOptions{Rate: 0, Burst: 1}); err != ErrInvalid {
		t.Fatalf("rate 0: %v", err)
	}
	l, err := NewLimiter(LimiterOptions{Rate: 1, Period: time.Hour, Burst: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Tokens() != 5 {
		t.Fatalf("tokens %d", l.Tokens())
	}
	for i := 0; i < 4; i++ {
		if wait, err := l.Try(1); err != nil || wait != 0 {
			t.Fatalf("try %d: %v %v", i, wait, err)
		}
	}
	if !l.Allow() || l.Allow() {
		t.Fatal("Allow: want true then false")
	}
	wait, err := l.Try(1)
	if err != ErrLimited || wait <= 3599*time.Second || wait > time.Hour {
		t.Fatalf("6th: %v %v", wait, err)
	}
	if _, err := l.Try(6); err != ErrRange {
		t.Fatalf("n > burst: %v", err)
	}
	if err := l.SetRate(0, 0); err != ErrInvalid {
		t.Fatalf("SetRate(0): %v", err)
	}

	// Smoothing: a full bucket of 1 at 1000/s; the second call waits ~1 ms.
	s, err := NewLimiter(LimiterOptions{Rate: 1000, Burst: 1, MaxWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if wait, err := s.Try(1); err != nil || wait != 0 {
		t.Fatalf("smoothing first: %v %v", wait, err)
	}
	if wait, err := s.Try(1); err != nil || wait <= 0 || wait > time.Millisecond {
		t.Fatalf("smoothing second: %v %v", wait, err)
	}
}

func TestLimiterConcurrentExact(t *testing.T) {
	l, err := NewLimiter(LimiterOptions{Rate: 1, Period: time.Hour, Burst: 10000})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var admitted int64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(0)
			for i := 0; i < 1000; i++ {
				if l.Allow() {
					n++
				}
			}
			atomic.AddInt64(&admitted, n)
		}()
	}
	wg.Wait()
	if admitted != 10000 {
		t.Fatalf("admitted %d of 16000, want 10000", admitted)
	}
}
