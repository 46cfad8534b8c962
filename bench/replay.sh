#!/bin/sh
# bench/replay.sh - the replay_throughput figure (`make bench`): a synthetic
# trace of LINES requests through `floodgate replay` and
# examples/config/full.json, end to end: reading and parsing every JSON
# line (most of the time), then the chain, router, limiters and breaker on
# the virtual clock.
#
# Usage: sh bench/replay.sh FLOODGATE_BINARY [LINES]    (LINES: 1000000)
# Prints one line, in the format of the bench binary:
#     bench=replay_throughput threads=1 ns_per_op=<x> rps=<n> lines=<LINES> config=full.json
# ns_per_op and rps come from the median wall time of three
# `floodgate replay --quiet` runs (timed with `date +%s%N`), after one
# untimed `--summary` run that warms the caches and checks that every
# request was replayed. Exits 1 with a message on standard error when a run
# fails or the summary's total is not LINES, 2 for a usage error.
#
# POSIX sh, awk and coreutils only (no python): the trace is generated with
# awk, from a fixed seed, so every run replays the same trace.
set -eu

usage() { echo "usage: sh bench/replay.sh FLOODGATE_BINARY [LINES]" >&2; exit 2; }
case $# in 1 | 2) ;; *) usage ;; esac
tool=$1
lines=${2:-1000000}
case $lines in '' | *[!0-9]* | 0*) usage ;; esac
[ -x "$tool" ] || { echo "replay.sh: $tool: not an executable" >&2; exit 2; }
config=$(cd "$(dirname "$0")/.." && pwd)/examples/config/full.json
[ -r "$config" ] || { echo "replay.sh: $config: cannot read" >&2; exit 2; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
trap 'exit 1' HUP INT TERM
trace=$dir/trace.jsonl

# The trace. Arrivals are a Poisson process at 1,500 requests per second
# (under the global limiter's 2,000/s), with a 2-second burst at 4,000/s in
# every minute that drains its bucket, so some requests wait (max_wait) and
# some are rejected. Users are log-uniform over 20,000 ids, so a few heavy
# users go over the per-user 20/s; 50 tenants in the baggage, the same way,
# against the shadow per-tenant limit. The mix, by route of full.json:
#   health (4%)      GET or HEAD /healthz
#   orders (40%)     /api/orders[/ID[/items]], mostly GET, with x-user-id
#                    (1% without: the per-user limit rejects them) and the
#                    user in meta.uid; 3% send x-env: gray (orders-gray)
#   payments (10%)   POST /api/payments/ID (5% GET, which no payments route
#                    takes); 2% errors, but 70% in a 15-second outage and
#                    mostly slow (> 500 ms) in a 5-second slowdown every two
#                    minutes, so the breaker opens, probes and closes again
#   vip (8%)         GET /api/recommendations or /api/profile with meta geo
#                    and age: the rule holds for some, the rest fall back
#   static (25%)     GET /static/{js,css,img}/...
#   the rest (13%)   /, /favicon.ico, /login, /api/v2/...: the fallback
# A third of the requests carry a sampled or unsampled traceparent.
awk -v n="$lines" 'BEGIN {
    srand(20261101)
    t = 0
    nusers = 20000; ntenants = 50
    split("beijing shanghai london berlin beijing", geos, " ")
    split("js/app css/site img/logo js/vendor img/hero", assets, " ")
    split("/ /favicon.ico /login /api/v2/search /robots.txt /api/internal/stats", other, " ")
    for (i = 1; i <= n; i++) {
        sec = t / 1000
        rate = (sec % 60 < 2) ? 4000 : 1500
        t += -log(1 - rand()) * 1000 / rate
        cycle = sec % 120
        outage = (cycle >= 60 && cycle < 75)
        slowdown = (cycle >= 100 && cycle < 105)

        method = "GET"; status = "ok"; hdr = ""; meta = ""; bag = ""
        user = int(exp(rand() * log(nusers)))
        tenant = int(exp(rand() * log(ntenants)))
        r = rand()
        if (r < 0.04) {
            path = "/healthz"
            if (rand() < 0.1) method = "HEAD"
            lat = rand()
        } else if (r < 0.44) {
            id = int(rand() * 1000000)
            p = rand()
            path = (p < 0.4) ? "/api/orders" : (p < 0.85) ? "/api/orders/" id : "/api/orders/" id "/items"
            m = rand()
            method = (m < 0.7) ? "GET" : (m < 0.9) ? "POST" : (m < 0.95) ? "PUT" : "DELETE"
            if (rand() >= 0.01) {
                hdr = "\"x-user-id\": \"" user "\""
                meta = "\"uid\": \"" user "\""
            }
            if (rand() < 0.03) hdr = hdr (hdr == "" ? "" : ", ") "\"x-env\": \"gray\""
            bag = "tenant=t" tenant
            lat = 5 + rand() * 45
            if (rand() < 0.005) status = "error"
        } else if (r < 0.54) {
            path = "/api/payments/pay_" int(rand() * 100000000)
            method = (rand() < 0.95) ? "POST" : "GET"
            hdr = "\"x-user-id\": \"" user "\""
            bag = "tenant=t" tenant ",region=eu"
            if (rand() < (outage ? 0.7 : 0.02)) status = "error"
            lat = (slowdown && rand() < 0.9) ? 500 + rand() * 400 : 20 + rand() * 180
            if (rand() < 0.02) lat += 600
        } else if (r < 0.62) {
            path = (rand() < 0.5) ? "/api/recommendations" : "/api/profile"
            hdr = "\"x-user-id\": \"" user "\""
            meta = "\"geo\": \"" geos[int(rand() * 5) + 1] "\", \"age\": \"" (18 + int(rand() * 50)) "\""
            bag = "tenant=t" tenant
            lat = 10 + rand() * 90
            if (rand() < 0.01) status = "error"
        } else if (r < 0.87) {
            path = "/static/" assets[int(rand() * 5) + 1] "." int(rand() * 200) (rand() < 0.5 ? ".js" : ".png")
            lat = 1 + rand() * 4
        } else {
            path = other[int(rand() * 6) + 1]
            if (path == "/login") method = "POST"
            lat = 2 + rand() * 20
            if (rand() < 0.01) status = "error"
        }
        if (rand() < 0.33)
            hdr = hdr (hdr == "" ? "" : ", ") sprintf("\"traceparent\": \"00-%08x%08x%08x%08x-%08x%08x-%s\"", \
                i, int(rand() * 2147483647), int(rand() * 2147483647), 1 + int(rand() * 2147483646), \
                int(rand() * 2147483647), 1 + int(rand() * 2147483646), rand() < 0.5 ? "01" : "00")

        printf "{\"t_ms\": %.3f, \"method\": \"%s\", \"path\": \"%s\"", t, method, path
        if (hdr != "") printf ", \"headers\": {%s}", hdr
        if (meta != "") printf ", \"meta\": {%s}", meta
        if (bag != "") printf ", \"baggage\": \"%s\"", bag
        printf ", \"status\": \"%s\", \"latency_ms\": %.1f}\n", status, lat
    }
}' >"$trace"

# The check, untimed: it also warms the page cache and the binary.
if ! "$tool" replay --summary --quiet "$config" "$trace" >"$dir/out" 2>"$dir/err"; then
    echo "replay.sh: $tool replay --summary --quiet $config TRACE failed:" >&2
    cat "$dir/err" >&2; exit 1
fi
total=$(sed -n 's/^# summary: \([0-9][0-9]*\) requests,.*/\1/p' "$dir/err")
if [ "$total" != "$lines" ]; then
    echo "replay.sh: the summary reports ${total:-no} requests, not $lines:" >&2
    cat "$dir/err" >&2; exit 1
fi

: >"$dir/times"
for run in 1 2 3; do
    start=$(date +%s%N)
    if ! "$tool" replay --quiet "$config" "$trace" >"$dir/out" 2>"$dir/err"; then
        echo "replay.sh: $tool replay --quiet $config TRACE failed (run $run):" >&2
        cat "$dir/err" >&2; exit 1
    fi
    end=$(date +%s%N)
    case $start$end in *[!0-9]*) echo "replay.sh: date +%s%N gives no nanoseconds" >&2; exit 1 ;; esac
    echo $((end - start)) >>"$dir/times"
done

sort -n "$dir/times" | awk -v n="$lines" 'NR == 2 {
    printf "bench=replay_throughput threads=1 ns_per_op=%.2f rps=%.0f lines=%d config=full.json\n", \
        $1 / n, n * 1e9 / $1, n
}'
