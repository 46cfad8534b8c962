package floodgate

// Benchmarks, floodgate from Go beside golang.org/x/time/rate in the same
// run (`make bench-go`; tests/test_go.sh prints the side-by-side lines):
//
//   - LimiterTry: one token from one shared bucket that always admits
//     (1e9 tokens a second, a burst of 1e9, as bench/peers/xtime), one cgo
//     call per decision against x/time/rate's Limiter.Allow;
//   - Middleware: a request through an http.Handler middleware around a
//     handler that does nothing: floodgate's (a config with one limiter:
//     two cgo calls, the request copied into C memory) against the same
//     middleware written with x/time/rate, and the bare handler;
//   - the Parallel forms run on every GOMAXPROCS thread (-cpu).

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"golang.org/x/time/rate"
)

const (
	benchRate  = 1000000000 // tokens a second: the bucket never runs dry
	benchBurst = 1000000000
)

func BenchmarkFloodgateLimiterTry(b *testing.B) {
	l, err := NewLimiter(LimiterOptions{Rate: benchRate, Burst: benchBurst})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.Try(1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkXTimeRateAllow(b *testing.B) {
	l := rate.NewLimiter(rate.Limit(benchRate), benchBurst)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !l.Allow() {
			b.Fatal("denied")
		}
	}
}

func BenchmarkFloodgateLimiterTryParallel(b *testing.B) {
	l, err := NewLimiter(LimiterOptions{Rate: benchRate, Burst: benchBurst})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Try(1); err != nil {
				panic(err)
			}
		}
	})
}

func BenchmarkXTimeRateAllowParallel(b *testing.B) {
	l := rate.NewLimiter(rate.Limit(benchRate), benchBurst)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !l.Allow() {
				panic("denied")
			}
		}
	})
}

// ---- middleware -------------------------------------------------------------

// nopWriter is a ResponseWriter that keeps nothing, reused across requests.
type nopWriter struct {
	h    http.Header
	code int
}

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(code int)        { w.code = code }

var nopHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})

// xtimeMiddleware is the same middleware written with x/time/rate.
func xtimeMiddleware(l *rate.Limiter, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !l.Allow() {
			w.Header()["Retry-After"] = []string{"1"}
			http.Error(w, "Too Many Requests", http.StatusTooManyRequests)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func benchRequest() *http.Request {
	r := httptest.NewRequest("GET", "/api/orders/42", nil)
	r.Header["User-Agent"] = []string{"bench/1.0"}
	r.Header["Accept"] = []string{"application/json"}
	r.Header["X-User-Id"] = []string{"user-1234"}
	return r
}

// benchConfig is one limiter that always admits, after a trace stage when
// trace is set, and one handler.
func benchConfig(trace bool) string {
	chain := `[{"limiter": "api"}]`
	if trace {
		chain = `["trace", {"limiter": "api"}]`
	}
	return `{"version": "bench", "chain": ` + chain + `,
	  "limiters": {"api": {"rate": "1000000000/s", "burst": 1000000000}}, "handler": "app"}`
}

func floodgateMiddleware(b *testing.B, trace bool) (http.Handler, func()) {
	rt, err := NewRuntime(Handlers{"app": nil})
	if err != nil {
		b.Fatal(err)
	}
	if err := rt.Load([]byte(benchConfig(trace))); err != nil {
		b.Fatal(err)
	}
	return rt.Middleware(nopHandler), rt.Close
}

func serveLoop(b *testing.B, h http.Handler) {
	r, w := benchRequest(), &nopWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.code = 200
		h.ServeHTTP(w, r)
		if w.code != 200 {
			b.Fatalf("status %d", w.code)
		}
	}
}

func serveParallel(b *testing.B, h http.Handler) {
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r, w := benchRequest(), &nopWriter{h: http.Header{}}
		for pb.Next() {
			w.code = 200
			h.ServeHTTP(w, r)
			if w.code != 200 {
				panic(w.code)
			}
		}
	})
}

// BenchmarkFloodgateEnterExit is the C side of BenchmarkMiddlewareFloodgate:
// the same request, already copied into C memory, entered and exited (two
// cgo calls) with no Go handler, context or response.
func BenchmarkFloodgateEnterExit(b *testing.B) {
	rt, err := NewRuntime(Handlers{"app": nil})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	if err := rt.Load([]byte(benchConfig(false))); err != nil {
		b.Fatal(err)
	}
	q := newRequest().(*request)
	if q.fill(benchRequest()) != 0 {
		b.Fatal("fill")
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if rc := rt.enterExit(q); rc != 0 {
			b.Fatal(rc)
		}
	}
}

func BenchmarkMiddlewareFloodgate(b *testing.B) {
	h, done := floodgateMiddleware(b, false)
	defer done()
	serveLoop(b, h)
}

func BenchmarkMiddlewareFloodgateTrace(b *testing.B) {
	h, done := floodgateMiddleware(b, true)
	defer done()
	serveLoop(b, h)
}

func BenchmarkMiddlewareXTime(b *testing.B) {
	serveLoop(b, xtimeMiddleware(rate.NewLimiter(rate.Limit(benchRate), benchBurst), nopHandler))
}

func BenchmarkMiddlewareBare(b *testing.B) {
	serveLoop(b, nopHandler)
}

func BenchmarkMiddlewareFloodgateParallel(b *testing.B) {
	h, done := floodgateMiddleware(b, false)
	defer done()
	serveParallel(b, h)
}

func BenchmarkMiddlewareXTimeParallel(b *testing.B) {
	serveParallel(b, xtimeMiddleware(rate.NewLimiter(rate.Limit(benchRate), benchBurst), nopHandler))
}
