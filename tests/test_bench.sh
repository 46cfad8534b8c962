#!/bin/sh
# tests/test_bench.sh - `bench --quick` runs the real benchmark code paths
# briefly and prints every figure name users and scripts rely on, in the
# stable `bench=<name> threads=<n> ns_per_op=<x>` format, with zero
# allocations per request. (Speed itself is judged by `make bench`, never
# here: this machine is shared and noisy. The target=... met=yes|no fields
# must be there, whatever they say.) Then bench/replay.sh replays a 20,000-line
# trace through the floodgate tool and must print its replay_throughput line.
#
# The scale-out figures (cluster_try_leased, cluster_roundtrips_per_1e6,
# etcd_change_to_swap_ms) need redis-server and etcd: the binary runs
# through bench/servers.sh, which starts whichever is installed. A figure
# must then be measured, unless floodgate was built without its library
# (skipped=built_without_hiredis / built_without_libcurl); without the
# server it must say skipped=FG_BENCH_REDIS_unset / FG_BENCH_ETCD_unset.
#
# Usage: sh tests/test_bench.sh BENCH_BINARY FLOODGATE_BINARY
set -eu
bench=$1
tool=$2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! sh "$(dirname "$0")/../bench/servers.sh" "$bench" --quick >"$out"; then
    echo "FAIL bench: bench/servers.sh $bench --quick exited non-zero"; cat "$out"; exit 1
fi
if ! sh "$(dirname "$0")/../bench/replay.sh" "$tool" 20000 >>"$out"; then
    echo "FAIL bench: bench/replay.sh $tool 20000 exited non-zero"; cat "$out"; exit 1
fi
fail=0
expect() { # expect <name> <threads> [<field regex> ...]: the line, with these fields
    e_name=$1 e_threads=$2
    shift 2
    line=$(grep -E "^bench=$e_name threads=$e_threads ns_per_op=[0-9]+\.[0-9]+( |\$)" "$out" || true)
    if [ -z "$line" ]; then
        echo "FAIL bench: no line for bench=$e_name threads=$e_threads"; fail=1; return
    fi
    for field in "$@"; do
        if ! printf '%s\n' "$line" | grep -Eq " $field( |\$)"; then
            echo "FAIL bench: bench=$e_name threads=$e_threads lacks $field"; fail=1
        fi
    done
}
num='[0-9]+\.[0-9]+'
met='met=(yes|no)'
expect floor_cas 1
expect floor_clock 1
expect floor_clock_fast 1 'clock=(tsc|monotonic)'
for name in chain_empty chain_4noop chain_4noop_split; do
    expect "$name" 1 "allocs_per_op=$num"
    expect "$name" 2 "allocs_per_op=$num"
done
expect deadline_check 1 "ratio_cas=$num" "timeout_stage_ns=$num" "allocs_per_op=$num" \
    'target=3xfloor_cas' "$met"
expect deadline_check 2 "ratio_cas=$num" "timeout_stage_ns=$num" "allocs_per_op=$num"
expect config_compile_1000routes 1 "ms=$num" 'routes=1000' 'target=10ms' "$met"
expect runtime_steady_p99 1 'samples=[0-9]+'
expect runtime_reload_p99 1 'samples=[0-9]+' 'reloads=[0-9]+' "ratio_steady=$num"
expect runtime_indirection 1 "runtime_ns=$num" "chain_ns=$num" "allocs_per_op=$num" 'target=10ns' "$met"
expect runtime_indirection 2 "runtime_ns=$num" "chain_ns=$num" "allocs_per_op=$num"
expect limiter_try_ctxclock 1 "ratio_cas=$num" "allocs_per_op=$num" 'target=[^ ]+' "$met"
expect limiter_try_ctxclock 2 "ratio_cas=$num" "allocs_per_op=$num"
for threads in 1 2; do
    expect limiter_try_ownclock "$threads" "ratio_clock=$num" "allocs_per_op=$num" 'clock=(tsc|monotonic)'
    expect limiter_try_monoclock "$threads" "ratio_clock=$num" "allocs_per_op=$num" 'clock=monotonic'
done
expect limiter_try_2buckets 2 "ratio_cas=$num" "allocs_per_op=$num"
for threads in 1 2; do
    expect keyed_try_1e3 "$threads" "allocs_per_op=$num"
    expect keyed_try_1e5 "$threads" "allocs_per_op=$num" 'target=[^ ]+' "$met"
done
expect keyed_bytes_per_key 1 "bytes=$num" 'target=[^ ]+' "$met"
expect breaker_closed 1 "ratio_cas=$num" "allocs_per_op=$num" 'target=3xfloor_cas' "$met"
expect breaker_closed 2 "ratio_cas=$num" "allocs_per_op=$num"
for threads in 1 2; do
    expect breaker_closed_time "$threads" "ratio_cas=$num" "allocs_per_op=$num"
    expect breaker_open_reject "$threads" "ratio_cas=$num" "allocs_per_op=$num"
done
expect retry_success_path 1 "ratio_cas=$num" "with_ns=$num" "without_ns=$num" "allocs_per_op=$num" \
    'target=3xfloor_cas' "$met"
expect retry_success_path 2 "ratio_cas=$num" "with_ns=$num" "without_ns=$num" "allocs_per_op=$num"
expect trace_parse_child 1 "allocs_per_op=$num" 'target=40ns' "$met"
expect trace_parse_child 2 "allocs_per_op=$num"
for threads in 1 2; do
    expect tracestate_parse_32 "$threads" "allocs_per_op=$num"
    expect trace_format_outgoing "$threads" "allocs_per_op=$num"
done
for threads in 1 2; do
    expect route_match_10 "$threads" "ratio_cas=$num" "allocs_per_op=$num"
    for n in 100 1000 10000; do
        expect "route_match_$n" "$threads" "ratio_cas=$num" "allocs_per_op=$num" \
            "ratio_route_match_10=$num"
    done
    expect rule_eval_geo_age "$threads" "ratio_cas=$num" "allocs_per_op=$num"
    expect split_sticky "$threads" "ratio_cas=$num" "allocs_per_op=$num" "canary_share=$num"
done
expect route_match_1000 1 'target=2xroute_match_10' "$met"
for threads in 1 2; do
    expect counter_inc "$threads" "ratio_cas=$num" "allocs_per_op=$num"
    expect histogram_record "$threads" "ratio_cas=$num" "allocs_per_op=$num"
done
expect histogram_record 1 'target=15ns' "$met"
expect bulkhead_enter_exit 1 "ratio_cas=$num" "allocs_per_op=$num" 'target=3xfloor_cas' "$met"
expect bulkhead_enter_exit 2 "ratio_cas=$num" "allocs_per_op=$num"
expect adaptive_update 1 "ratio_cas=$num" "allocs_per_op=$num" 'target=3xfloor_cas' "$met"
expect adaptive_update 2 "ratio_cas=$num" "allocs_per_op=$num"
for name in chain_full chain_full_split; do
    expect "$name" 1 "ratio_clock_cas=$num" "allocs_per_op=$num" 'target=5x\(floor_clock\+floor_cas\)' "$met"
    expect "$name" 2 "ratio_clock_cas=$num" "allocs_per_op=$num" "throughput_vs_1=$num" 'target=1\.6x' "$met"
done
expect replay_throughput 1 'rps=[0-9]+' 'lines=20000' 'config=full.json'
# expect_server <name> <server binary> <library> <variable> <expect arguments...>:
# measured with the server, skipped without it or without the library.
expect_server() {
    s_name=$1 s_server=$2 s_lib=$3 s_var=$4
    shift 4
    if grep -Eq "^bench=$s_name threads=1 ns_per_op=0\.00 skipped=built_without_$s_lib\$" "$out"; then
        return
    fi
    if ! command -v "$s_server" >/dev/null 2>&1; then
        expect "$s_name" 1 "skipped=${s_var}_unset"
        return
    fi
    if grep -Eq "^bench=$s_name .*skipped=" "$out"; then
        echo "FAIL bench: $s_name skipped although $s_server is installed"; fail=1; return
    fi
    expect "$s_name" "$@"
}
expect_server cluster_try_leased redis-server hiredis FG_BENCH_REDIS 1 "ratio_ctxclock=$num" \
    "ctxclock_ns=$num" "ratio_cas=$num" "allocs_per_op=$num" 'lease=[0-9]+' 'roundtrips=[0-9]+' \
    "lease_hits_min=$num" 'target=2xlimiter_try_ctxclock' "$met"
expect_server cluster_try_leased redis-server hiredis FG_BENCH_REDIS 2 "ratio_ctxclock=$num" \
    "ctxclock_ns=$num" "allocs_per_op=$num" 'roundtrips=[0-9]+'
expect_server cluster_roundtrips_per_1e6 redis-server hiredis FG_BENCH_REDIS 1 \
    "roundtrips_per_1e6=$num" 'lease=[0-9]+' 'rate=[0-9]+/s' 'admitted=[0-9]+' \
    'roundtrips=[0-9]+' 'rejected=[0-9]+' 'fallbacks=[0-9]+' 'target=[0-9]+' "$met"
expect_server etcd_change_to_swap_ms etcd libcurl FG_BENCH_ETCD 1 "ms=$num" "max_ms=$num" \
    'puts=[0-9]+' 'target=100ms' "$met"
if ! grep -Eq '^bench=keyed_bytes_per_key threads=1 ns_per_op=0\.00 ' "$out"; then
    echo "FAIL bench: keyed_bytes_per_key is not ns_per_op=0.00"; fail=1
fi
if grep -E 'allocs_per_op=' "$out" | grep -vq 'allocs_per_op=0\.0000'; then
    echo "FAIL bench: a request allocated:"; grep -E 'allocs_per_op=' "$out" | grep -v 'allocs_per_op=0\.0000'
    fail=1
fi
if [ "$fail" -ne 0 ]; then cat "$out"; exit 1; fi
echo "bench: $(wc -l <"$out") figures in the stable format, 0 allocations per request"
