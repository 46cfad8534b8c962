// bench/peers/xtime - the peer figure for limiter_try_ownclock:
// golang.org/x/time/rate Limiter.Allow, which, like fg_limiter_try_now,
// reads the clock itself and takes one token from one shared bucket.
//
// Built offline in GOPATH mode against Debian's golang-golang-x-time-dev
// (`make bench-peers`). Prints, in bench.c's format,
//
//	bench=peer_xtime_allow threads=<n> ns_per_op=<x> [key=value ...]
//
// for threads 1 (a b.N loop) and 2 (b.RunParallel with GOMAXPROCS=2): the
// median of reps testing.Benchmark runs of wall time / all operations, so,
// as in bench.c, perfect scaling on 2 threads halves it.
//
// The limiter always admits, so every call does the whole admission: a
// finite rate of 1e9 tokens per second and a burst of 1e9. (rate.Inf would
// return before touching the bucket.) A denial fails the program.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"
)

const (
	reps      = 5
	limit     = rate.Limit(1e9)
	burst     = 1000000000
	benchTime = "300ms" // per testing.Benchmark run, after its ramp-up
)

// measure runs fn as a benchmark reps times on a fresh limiter each time;
// returns the median ns per operation and the denials seen.
func measure(procs int, fn func(b *testing.B, lim *rate.Limiter, denied *int64)) (float64, int64) {
	prev := runtime.GOMAXPROCS(procs)
	defer runtime.GOMAXPROCS(prev)
	var denied int64
	v := make([]float64, 0, reps)
	for r := 0; r < reps; r++ {
		lim := rate.NewLimiter(limit, burst)
		res := testing.Benchmark(func(b *testing.B) { fn(b, lim, &denied) })
		if res.N == 0 {
			return 0, -1
		}
		v = append(v, float64(res.T.Nanoseconds())/float64(res.N))
	}
	sort.Float64s(v)
	return v[reps/2], atomic.LoadInt64(&denied)
}

func allowLoop(b *testing.B, lim *rate.Limiter, denied *int64) {
	var d int64
	for i := 0; i < b.N; i++ {
		if !lim.Allow() {
			d++
		}
	}
	atomic.AddInt64(denied, d)
}

func allowParallel(b *testing.B, lim *rate.Limiter, denied *int64) {
	b.RunParallel(func(pb *testing.PB) {
		var d int64
		for pb.Next() {
			if !lim.Allow() {
				d++
			}
		}
		atomic.AddInt64(denied, d)
	})
}

func main() {
	testing.Init()
	if err := flag.Set("test.benchtime", benchTime); err != nil {
		fmt.Fprintln(os.Stderr, "peer_xtime:", err)
		os.Exit(1)
	}
	figures := []struct {
		threads int
		fn      func(*testing.B, *rate.Limiter, *int64)
	}{{1, allowLoop}, {2, allowParallel}}
	for _, f := range figures {
		ns, denied := measure(f.threads, f.fn)
		if denied != 0 {
			fmt.Fprintf(os.Stderr, "peer_xtime: threads=%d: %d calls denied or failed\n",
				f.threads, denied)
			os.Exit(1)
		}
		fmt.Printf("bench=peer_xtime_allow threads=%d ns_per_op=%.2f go=%s\n",
			f.threads, ns, runtime.Version())
	}
}
