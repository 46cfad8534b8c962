#!/bin/sh
# tests/test_gateway.sh - the HTTP gateway example (examples/gateway/) over real
# HTTP on loopback, against examples/gateway/README.md; the probes themselves
# are in tests/gateway_probe.py (Python 3, standard library only).
#
# Two gateways run on free ports (--port 0 --port-file):
#   A: the embedded config. basic (health, routing, the sticky 95/5 split,
#      the per-user burst, trace context, /metrics, /-/config), badinput
#      (over-long paths and headers, malformed trace headers, hostile
#      baggage, garbage requests), slowloris (in the background: slow and
#      silent connections while others are served), then users (10,000
#      distinct user ids from several threads; RSS bound).
#   B: --config FILE (a copy of floodgate.json in a temp dir) and
#      --flaky-period-ms 4000. breaker (the payments breaker opens, rejects
#      with 503 breaker_open, closes again), then reload (a changed file is
#      served, broken ones are refused while the old config keeps serving).
#   C: --workers 1 --latency-us 500000. drain (SIGTERM with two requests in
#      flight: both are answered, new connections are refused).
# Both are stopped with SIGTERM and must exit 0 within a bound; under asan and
# tsan their stderr must hold no sanitizer report (LeakSanitizer runs at exit).
#
# Usage: sh tests/test_gateway.sh GATEWAY LOADGEN VARIANT
#   VARIANT release | asan | tsan: sanitizer options, the time and RSS bounds.
#   LOADGEN is the demo's load generator: when it is built, a 1.5 s run
#   against A must exit 0 (its own output is the demo's business).
set -u
gw=${1:?usage: test_gateway.sh GATEWAY LOADGEN VARIANT}
loadgen=${2:-}
variant=${3:-release}
here=$(cd "$(dirname "$0")" && pwd)
probe="$here/gateway_probe.py"
start_s=$(date +%s)
fail=0
pids=""
tmp=$(mktemp -d)
cleanup() {
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

[ -x "$gw" ] || { echo "FAIL gateway: $gw is not an executable"; exit 1; }
command -v python3 >/dev/null 2>&1 || { echo "FAIL gateway: python3 is needed"; exit 1; }

# Per variant: how long a normal request may take while slow clients dribble,
# how much RSS may grow over the 10,000 users (ASan's quarantine and shadow
# memory and TSan's shadow memory grow with every allocation: their bound is
# the sanitizer's, the release one is the gateway's), and the probes' time
# limit. Every assertion runs in every variant.
case "$variant" in
release) prompt=1.0 rss_mib=64 limit=120 ;;
asan) prompt=3.0 rss_mib=320 limit=240 ;;
tsan) prompt=3.0 rss_mib=320 limit=300 ;;
*) echo "FAIL gateway: unknown variant $variant"; exit 1 ;;
esac
# halt_on_error: the first report ends the gateway (exit non-zero, caught
# below); every report also goes to stderr, which is searched at the end.
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23:${ASAN_OPTIONS:-}"
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
# The gateway's TSan suppressions cover Concurrency Kit's ring only (see the
# file); everything else it does must be clean.
TSAN_OPTIONS="halt_on_error=0:exitcode=66:second_deadlock_stack=1:suppressions=$here/../examples/gateway/tsan.supp:${TSAN_OPTIONS:-}"
export ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS

# start NAME ARGS...: run the gateway; sets s_pid and s_port.
start() {
    s_name=$1
    shift
    "$gw" --port 0 --port-file "$tmp/$s_name.port" "$@" \
        >"$tmp/$s_name.out" 2>"$tmp/$s_name.err" &
    s_pid=$!
    pids="$pids $s_pid"
    s_i=0
    while [ ! -s "$tmp/$s_name.port" ]; do
        if ! kill -0 "$s_pid" 2>/dev/null || [ "$s_i" -ge 300 ]; then
            echo "FAIL gateway: $s_name ($gw $*) did not write its port file within 30 s"
            cat "$tmp/$s_name.err"
            exit 1
        fi
        s_i=$((s_i + 1))
        sleep 0.1
    done
    s_port=$(cat "$tmp/$s_name.port")
    case "$s_port" in
    '' | *[!0-9]*) echo "FAIL gateway: $s_name port file holds '$s_port'"; exit 1 ;;
    esac
}

# stop NAME PID PORT VERSION [sent]: SIGTERM (unless a probe has sent it: a second one
# could land after the gateway has restored the default action while it tears
# down), exit 0 within 30 s, the ready line on stdout, no sanitizer report on
# stderr.
stop() {
    t_pid=$2 t_port=$3
    [ "${5:-}" = sent ] || kill -TERM "$t_pid" 2>/dev/null
    # A watchdog: short sleeps, so nothing outlives it for long when killed.
    (
        i=0
        while [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$t_pid"
    ) >/dev/null 2>&1 &
    t_wd=$!
    wait "$t_pid"
    t_rc=$?
    # KILL: a TERM could reach the watchdog before it has dropped the trap it
    # inherited from this shell, and be lost.
    kill -KILL "$t_wd" 2>/dev/null
    wait "$t_wd" 2>/dev/null
    if [ "$t_rc" -ne 0 ]; then
        echo "FAIL gateway: $1 exited $t_rc after SIGTERM, want 0 (137: did not stop in 30 s)"
        fail=1
    fi
    if ! grep -qxF "gateway: listening on http://127.0.0.1:$t_port (config $4)" "$tmp/$1.out"; then
        echo "FAIL gateway: $1 stdout lacks the ready line for port $t_port, config $4:"
        head -5 "$tmp/$1.out"
        fail=1
    fi
    if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer|runtime error:|SUMMARY: [A-Za-z]+Sanitizer' "$tmp/$1.err"; then
        echo "FAIL gateway: $1 has a sanitizer report on stderr:"
        grep -E -A30 'ERROR: |WARNING: ThreadSanitizer|runtime error:' "$tmp/$1.err" | head -80
        fail=1
    fi
}

# run PROBE ARGS...: a probe in the foreground, bounded in time.
run() {
    r_name=$1
    shift
    timeout "$limit" python3 "$probe" "$r_name" "$@"
    r_rc=$?
    [ "$r_rc" -eq 0 ] || { echo "FAIL gateway: probe $r_name exited $r_rc"; fail=1; }
}

mkdir "$tmp/cfg"
cp "$here/../examples/gateway/floodgate.json" "$tmp/cfg/floodgate.json"
start A
A_pid=$s_pid A_port=$s_port

run basic --port "$A_port"
run badinput --port "$A_port" --pid "$A_pid" --max-rss-growth-mib "$rss_mib"

# The slow clients take the idle timeout (10 s) to be closed: meanwhile gateway
# B starts and its probes run. Only the slowloris probe talks to A until it is
# done.
timeout "$limit" python3 "$probe" slowloris --port "$A_port" --prompt "$prompt" \
    >"$tmp/slow.log" 2>&1 &
slow_pid=$!
pids="$pids $slow_pid"
start B --config "$tmp/cfg/floodgate.json" --flaky-period-ms 4000
B_pid=$s_pid B_port=$s_port
run breaker --port "$B_port" --period-ms 4000
run reload --port "$B_port" --config "$tmp/cfg/floodgate.json"
wait "$slow_pid"
slow_rc=$?
cat "$tmp/slow.log"
[ "$slow_rc" -eq 0 ] || { echo "FAIL gateway: probe slowloris exited $slow_rc"; fail=1; }

run users --port "$A_port" --pid "$A_pid" --max-rss-growth-mib "$rss_mib" --max-seconds "$limit"

# The demo's load generator, briefly, when it is built: it must get answers.
if [ -x "$loadgen" ]; then
    if ! timeout 60 "$loadgen" --port "$A_port" --duration-ms 1500 --sweep 100 --json \
        >"$tmp/loadgen.out" 2>&1; then
        echo "FAIL gateway: $loadgen --port $A_port --duration-ms 1500 failed:"
        tail -20 "$tmp/loadgen.out"
        fail=1
    fi
fi

stop A "$A_pid" "$A_port" gateway-demo-1
stop B "$B_pid" "$B_port" gateway-demo-1

# C: one worker, 500 ms orders; the probe sends SIGTERM with two in flight.
start C --workers 1 --latency-us 500000
C_pid=$s_pid C_port=$s_port
run drain --port "$C_port" --pid "$C_pid"
stop C "$C_pid" "$C_port" gateway-demo-1 sent

secs=$(($(date +%s) - start_s))
if [ "$fail" -ne 0 ]; then
    echo "FAIL gateway ($variant, ${secs} s); gateway A stderr (tail):"
    tail -20 "$tmp/A.err"
    for g in B C; do
        if [ -f "$tmp/$g.err" ]; then
            echo "gateway $g stderr (tail):"
            tail -20 "$tmp/$g.err"
        fi
    done
    exit 1
fi
echo "ok gateway ($variant): basic, badinput, slowloris, breaker, reload, users, drain in ${secs} s"
