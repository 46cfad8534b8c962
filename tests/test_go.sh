#!/bin/sh
# tests/test_go.sh - build the Go package in examples/go (cgo, linked
# statically against <build>/libfloodgate.a) offline in GOPATH mode, vet it
# and run its tests (no benchmarks: `make bench-go` runs those).
#
# Usage: tests/test_go.sh <build dir holding libfloodgate.a>
# runs `go vet`, then the tests with GODEBUG=cgocheck=2, then again under
# the race detector.
# Needs Debian's golang-go and golang-golang-x-time-dev (scripts/deps.sh
# lang). Everything Go writes goes under <build dir>/go: the GOPATH (whose
# src/floodgate is a symlink to examples/go), the build cache and temporary
# files. No network: GO111MODULE=off, GOPROXY=off.
#
# Usage: tests/test_go.sh <build dir> bench   (what `make bench-go` runs)
# runs the benchmarks instead: every one on 1 thread and the Parallel ones
# on 2, GO_BENCH_COUNT times each (default 3) for GO_BENCH_TIME (default
# 500ms), prints go test's lines, then the medians side by side:
#     bench=go_<name> threads=<n> floodgate_ns_per_op=<x> xtime_ns_per_op=<y> ratio=<y/x> ...
# (ratio > 1: floodgate from Go is faster than golang.org/x/time/rate).
set -eu
B=${1:?usage: tests/test_go.sh <build dir>}
root=$(pwd)
case $B in /*) ;; *) B="$root/$B" ;; esac
lib="$B/libfloodgate.a"
[ -f "$lib" ] || { echo "FAIL go: $lib missing (make $B/libfloodgate.a)"; exit 1; }
command -v go >/dev/null 2>&1 || { echo "FAIL go: no go (scripts/deps.sh lang)"; exit 1; }
[ -d /usr/share/gocode/src/golang.org/x/time/rate ] ||
    { echo "FAIL go: no golang.org/x/time/rate (scripts/deps.sh lang)"; exit 1; }

mkdir -p "$B/go/gopath/src" "$B/go/cache" "$B/go/tmp"
ln -sfn "$root/examples/go" "$B/go/gopath/src/floodgate"

export GO111MODULE=off GOPROXY=off GOFLAGS='' GOENV=off CGO_ENABLED=1
export GOPATH="$B/go/gopath:/usr/share/gocode"
export GOCACHE="$B/go/cache" GOTMPDIR="$B/go/tmp"
# Go's build cache does not see a C library change: name the library's and
# the headers' hash in the flags so that a new build is relinked.
hash=$(cat "$lib" "$root"/include/floodgate.h "$root"/include/floodgate/*.h | cksum | tr ' ' _)
export CGO_CFLAGS="-O2 -g -I$root/include -DFGGO_LIB_HASH=$hash"
deplibs=$(pkg-config --libs ck jansson)
# the optional parts (cluster limiter, etcd source) when the library has them
for opt in hiredis libcurl; do
    if pkg-config --exists "$opt"; then deplibs="$deplibs $(pkg-config --libs "$opt")"; fi
done
CGO_LDFLAGS="$lib $deplibs -lpthread"
export CGO_LDFLAGS

if [ "${2:-}" = bench ]; then
    out="$B/go/bench.txt"
    count=${GO_BENCH_COUNT:-3}
    btime=${GO_BENCH_TIME:-500ms}
    part="$B/go/bench.part"
    : >"$out"
    for run in "-bench . -cpu 1" "-bench Parallel -cpu 2"; do
        # shellcheck disable=SC2086 # $run is a list of arguments
        if ! go test -run XXX $run -count "$count" -benchtime "$btime" -timeout 30m floodgate \
            >"$part" 2>&1; then
            cat "$part"; echo "FAIL bench-go: go test $run"; exit 1
        fi
        cat "$part"; cat "$part" >>"$out"
    done
    awk '
        $1 ~ /^Benchmark/ && $4 == "ns/op" {
            name = $1; threads = 1
            if (match(name, /-[0-9]+$/)) {
                threads = substr(name, RSTART + 1); name = substr(name, 1, RSTART - 1)
            }
            sub(/^Benchmark/, "", name)
            key = name " " threads
            n[key]++; v[key, n[key]] = $3 + 0
        }
        function median(key,    i, j, t, m, a) {
            m = n[key]
            if (m == 0) return -1
            for (i = 1; i <= m; i++) a[i] = v[key, i]
            for (i = 2; i <= m; i++)
                for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return a[int((m + 1) / 2)]
        }
        function side(label, fg, xt, threads, extra,    f, x) {
            f = median(fg " " threads); x = median(xt " " threads)
            if (f <= 0 || x <= 0) {
                printf "bench-go: no %s or %s figure for threads=%d\n", fg, xt, threads > "/dev/stderr"
                bad = 1
                return
            }
            printf "bench=%s threads=%d floodgate_ns_per_op=%.2f xtime_ns_per_op=%.2f ratio=%.2f%s\n",
                label, threads, f, x, x / f, extra
        }
        END {
            side("go_limiter_try", "FloodgateLimiterTry", "XTimeRateAllow", 1, "")
            side("go_limiter_try_parallel", "FloodgateLimiterTryParallel", "XTimeRateAllowParallel", 1, "")
            side("go_limiter_try_parallel", "FloodgateLimiterTryParallel", "XTimeRateAllowParallel", 2, "")
            bare = median("MiddlewareBare 1"); cside = median("FloodgateEnterExit 1")
            trace = median("MiddlewareFloodgateTrace 1")
            side("go_middleware", "MiddlewareFloodgate", "MiddlewareXTime", 1,
                sprintf(" bare_ns_per_op=%.2f c_enter_exit_ns_per_op=%.2f with_trace_ns_per_op=%.2f",
                    bare, cside, trace))
            side("go_middleware_parallel", "MiddlewareFloodgateParallel", "MiddlewareXTimeParallel", 1, "")
            side("go_middleware_parallel", "MiddlewareFloodgateParallel", "MiddlewareXTimeParallel", 2, "")
            exit bad
        }' "$out"
    exit
fi

go vet floodgate
# cgocheck=2 checks every pointer C is given and every write of one into C
# memory, beyond the default's checks at the call.
GODEBUG=cgocheck=2 go test -count=1 -timeout 180s floodgate
# The race detector sees the Go side only (the C library is not
# instrumented): the pool, the handler state, the tests' own counters.
go test -race -count=1 -timeout 300s floodgate
echo "ok go: examples/go tests passed (cgocheck=2, and -race)"
