#!/bin/sh
# examples/gateway/demo.sh - what `make demo` runs: the gateway under load, with a report.
#
#   sh examples/gateway/demo.sh GATEWAY LOADGEN      (KEEP=1: leave the gateway running)
#
# Starts GATEWAY on 127.0.0.1 on a free port, drives it with LOADGEN for
# DURATION_MS (default 12000) and prints LOADGEN's report, then stops the
# gateway with SIGTERM. The payments backend's schedule (FLAKY_PERIOD_MS,
# default 16000: failing from a quarter to half of it) fits inside the run,
# so the breaker opens, probes and closes again while the report watches.
# With KEEP=1 the gateway stays up afterwards until Ctrl-C.
#
# POSIX sh. Every wait is bounded; temporary files go away on exit.

set -u

gateway=${1:-}
loadgen=${2:-}
duration_ms=${DURATION_MS:-12000}
period_ms=${FLAKY_PERIOD_MS:-16000}
keep=${KEEP:-}

if [ -z "$gateway" ] || [ -z "$loadgen" ]; then
    echo "usage: [KEEP=1] sh examples/gateway/demo.sh GATEWAY LOADGEN" >&2
    exit 2
fi
for f in "$gateway" "$loadgen"; do
    if [ ! -x "$f" ]; then
        echo "demo: $f is not built (make $f)" >&2
        exit 1
    fi
done
case $duration_ms$period_ms in
*[!0-9]*)
    echo "demo: DURATION_MS and FLAKY_PERIOD_MS must be numbers of milliseconds" >&2
    exit 2
    ;;
esac

tmp=$(mktemp -d "${TMPDIR:-/tmp}/floodgate-demo.XXXXXX") || exit 1
gw_pid=

# Stops the gateway (SIGTERM, then up to 10 s for it to finish in-flight
# requests, then SIGKILL). Returns the gateway's exit status.
stop_gateway() {
    [ -n "$gw_pid" ] || return 0
    pid=$gw_pid
    gw_pid=
    kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: the gateway did not stop within 10 s of SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 1
    fi
    wait "$pid" 2>/dev/null
}

cleanup() {
    stop_gateway
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo; echo "demo: stopping the gateway"; exit 130' INT
trap 'exit 143' TERM

# The gateway's log, when something went wrong.
show_log() {
    echo "demo: $1" >&2
    for f in "$tmp/gateway.out" "$tmp/gateway.err"; do
        if [ -s "$f" ]; then
            echo "--- the gateway's ${f##*/} (last 40 lines):" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

"$gateway" --addr 127.0.0.1 --port 0 --port-file "$tmp/port" \
    --flaky-period-ms "$period_ms" >"$tmp/gateway.out" 2>"$tmp/gateway.err" &
gw_pid=$!

# Up to 10 s for the port file (the gateway writes it once it listens).
port=
i=0
while [ $i -lt 100 ]; do
    if [ -s "$tmp/port" ]; then
        read -r port <"$tmp/port"
        break
    fi
    if ! kill -0 "$gw_pid" 2>/dev/null; then
        wait "$gw_pid"
        rc=$?
        gw_pid=
        show_log "the gateway exited with status $rc before it listened"
        exit 1
    fi
    sleep 0.1
    i=$((i + 1))
done
case $port in
'' | *[!0-9]*)
    show_log "the gateway wrote no port to its --port-file within 10 s"
    exit 1
    ;;
esac

url=http://127.0.0.1:$port
echo "demo: gateway on $url; $((duration_ms / 1000)) s of traffic (the payments backend" \
    "fails from $((period_ms / 4000)) s to $((period_ms / 2000)) s)..."
"$loadgen" --host 127.0.0.1 --port "$port" --duration-ms "$duration_ms" \
    --flaky-period-ms "$period_ms" --report
lg_rc=$?
if ! kill -0 "$gw_pid" 2>/dev/null; then
    wait "$gw_pid"
    rc=$?
    gw_pid=
    show_log "the gateway died during the run (exit status $rc)"
    exit 1
fi
if [ $lg_rc -ne 0 ]; then
    show_log "the load generator failed (exit status $lg_rc)"
    exit 1
fi

if [ "$keep" = 1 ]; then
    echo
    echo "demo: the gateway keeps running at $url (pid $gw_pid); try"
    echo "  curl $url/metrics"
    echo "  curl -i -H 'x-user-id: alice' $url/api/orders"
    echo "Its log is $tmp/gateway.err. Press Ctrl-C to stop it."
    wait "$gw_pid"
    rc=$?
    gw_pid=
    echo "demo: the gateway exited (status $rc)"
    exit 0
fi

if ! stop_gateway; then
    show_log "the gateway did not stop cleanly"
    exit 1
fi
echo
echo "demo: gateway stopped. \`make demo KEEP=1\` keeps it running for your own requests."
