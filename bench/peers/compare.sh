#!/bin/sh
# bench/peers/compare.sh - run a peer and floodgate's matching figure side by
# side, then print one comparison line per thread count (`make bench-peers`).
#
# Usage: compare.sh <peer binary> <floodgate bench binary>
# Prints the peer's lines, the bench's (with --filter limiter_try_ownclock,
# floors included), then
#     bench=compare_ownclock_vs_xtime threads=<n> ratio=<peer_ns / floodgate_ns> target=3 met=yes|no
#     bench=compare_monoclock_vs_xtime threads=<n> ratio=<peer_ns / floodgate_ns>
# (ownclock reads fg_clock_fast's clock, monoclock the default
# CLOCK_MONOTONIC: both are shown so the clock's share is visible).
# met=yes when floodgate is at least 3 times as fast. Missing the target is
# not a failure; a missing figure or a failed run is.
set -eu
peer=$1
bench=$2
out=$(mktemp)
part=$(mktemp)
trap 'rm -f "$out" "$part"' EXIT
run() { # run <command...>: print its lines and keep them; stop when it fails
    if ! "$@" >"$part"; then
        cat "$part"; echo "compare: $* failed" >&2; exit 1
    fi
    cat "$part"; cat "$part" >>"$out"
}
run "$peer"
run "$bench" --filter limiter_try_ownclock
run "$bench" --filter limiter_try_monoclock
awk -v target=3 '
    function field(key,    i) {
        for (i = 1; i <= NF; i++)
            if (index($i, key "=") == 1)
                return substr($i, length(key) + 2)
        return ""
    }
    $1 == "bench=peer_xtime_allow" { peer[field("threads")] = field("ns_per_op") }
    $1 == "bench=limiter_try_ownclock" { fg[field("threads")] = field("ns_per_op") }
    $1 == "bench=limiter_try_monoclock" { mono[field("threads")] = field("ns_per_op") }
    END {
        rc = 0
        for (t = 1; t <= 2; t++) {
            if (!(t in peer) || !(t in fg) || (fg[t] + 0) <= 0) {
                printf "compare: no peer_xtime_allow or limiter_try_ownclock figure for threads=%d\n", t > "/dev/stderr"
                rc = 1
                continue
            }
            ratio = peer[t] / fg[t]
            printf "bench=compare_ownclock_vs_xtime threads=%d ratio=%.2f target=%d met=%s\n",
                t, ratio, target, (ratio >= target ? "yes" : "no")
            if ((t in mono) && (mono[t] + 0) > 0)
                printf "bench=compare_monoclock_vs_xtime threads=%d ratio=%.2f\n", t, peer[t] / mono[t]
        }
        exit rc
    }' "$out"
