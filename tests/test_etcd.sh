#!/bin/sh
# tests/test_etcd.sh - the etcd config source (fg_runtime_watch_etcd) against
# a real etcd on 127.0.0.1, through tests/etcd_driver.
#
# etcd runs in a temporary directory on a free port (tests/servers.sh). The
# driver reaches it through a small TCP proxy (python3, below), so that the
# test can cut the watcher off while etcd itself stays writable: that is how
# a write made while the watcher is disconnected is made for sure, not by
# luck of timing. The driver is fed commands through a FIFO and prints a line
# per reload; every wait polls its output for at most $limit seconds.
#
# Scenarios, one PASS/FAIL line each:
#   swap       a valid config written is served (the handler it names answers)
#   reject     a broken config is refused; the old one keeps answering
#   delete     a deleted key is reported; the old config keeps answering; a
#              new put applies again
#   restart    etcd restarted while the watcher is cut off, two writes made
#              meanwhile: the watcher reconnects, ends on the last one (its
#              revision), and never applied a revision below one it had
#   compact    writes while cut off, then the revisions compacted away: the
#              watcher reads the key afresh and serves the last write
#   last-wins  50 quick writes: the last one serves
#   latency    put-to-serving time on loopback (median of 20; bound 100 ms)
#   stop       fg_watch_stop is prompt; the driver exits 0; under asan and
#              tsan its stderr holds no sanitizer report
#   gateway    (with GATEWAY) the HTTP gateway example started with --etcd
#              serves the key's config, then a new one put there; its
#              /-/config names the source and the revision serving
#
# Usage: sh tests/test_etcd.sh DRIVER VARIANT [GATEWAY]
#        (VARIANT release | asan | tsan)
set -u
driver=${1:?usage: test_etcd.sh DRIVER VARIANT [GATEWAY]}
variant=${2:-release}
gateway=${3:-}
gw_pid=
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/servers.sh
. "$here/servers.sh"
start_s=$(date +%s)
fail=0
passed=0
tmp=$(mktemp -d)
proxy_pid=
driver_pid=
cleanup() {
    exec 3>&- 2>/dev/null
    [ -n "$driver_pid" ] && kill -KILL "$driver_pid" 2>/dev/null
    [ -n "$proxy_pid" ] && kill -KILL "$proxy_pid" 2>/dev/null
    [ -n "$gw_pid" ] && kill -KILL "$gw_pid" 2>/dev/null
    fg_servers_stop
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

[ -x "$driver" ] || { echo "FAIL etcd: $driver is not an executable"; exit 1; }

case "$variant" in
release) limit=10 ;;
asan | tsan) limit=20 ;;
*) echo "FAIL etcd: unknown variant $variant"; exit 1 ;;
esac
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23:${ASAN_OPTIONS:-}"
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
TSAN_OPTIONS="halt_on_error=0:exitcode=66:second_deadlock_stack=1:${TSAN_OPTIONS:-}"
export ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS

pass() { echo "PASS etcd $1"; passed=$((passed + 1)); }
failed() {
    echo "FAIL etcd $1"
    fail=1
    echo "--- driver output (tail):"
    tail -15 "$tmp/out" 2>/dev/null
    echo "--- driver stderr (tail):"
    tail -15 "$tmp/err" 2>/dev/null
}

# Built without libcurl the driver checks FG_ESTATE itself.
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
    echo "FAIL etcd: etcd and etcdctl are needed (make deps-servers)"
    exit 1
fi
command -v python3 >/dev/null 2>&1 || { echo "FAIL etcd: python3 is needed"; exit 1; }

fg_etcd_start "$tmp/etcd" || exit 1
etcd_port=$FG_ETCD_PORT
key=/floodgate/test/config
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$FG_ETCD_URL" --command-timeout=5s "$@"; }

# put VERSION HANDLER: a valid config; prints the revision of the put.
put() {
    ctl put -w json "$key" "{\"version\": \"$1\", \"chain\": [], \"handler\": \"$2\"}" |
        sed -n 's/.*"revision":\([0-9]*\).*/\1/p'
}

# The proxy: 127.0.0.1:$proxy_port to etcd's port, one thread pair per
# connection; killed with SIGKILL, the kernel closes every connection.
proxy_port=$(fg_free_port)
proxy_start() {
    python3 -c '
import socket, sys, threading
lp, tp = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", lp))
s.listen(64)
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    for x in (a, b):
        try:
            x.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    c, _ = s.accept()
    try:
        u = socket.create_connection(("127.0.0.1", tp))
    except OSError:
        c.close()
        continue
    for a, b in ((c, u), (u, c)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
' "$proxy_port" "$etcd_port" >/dev/null 2>&1 &
    proxy_pid=$!
    fg_wait_port "$proxy_port" "$proxy_pid" /dev/null proxy
}
proxy_stop() {
    [ -n "$proxy_pid" ] && kill -KILL "$proxy_pid" 2>/dev/null
    wait "$proxy_pid" 2>/dev/null
    proxy_pid=
}

# wait_for REGEX: until a line of the driver's output matches (bounded).
wait_for() {
    i=0
    while [ $i -lt $((limit * 20)) ]; do
        grep -qE "$1" "$tmp/out" && return 0
        kill -0 "$driver_pid" 2>/dev/null || return 1
        sleep 0.05
        i=$((i + 1))
    done
    return 1
}
# ask CMD: send a command, print its answer line (the next line starting
# with the command's first word).
ask() {
    word=${1%% *}
    n=$(grep -c "^$word " "$tmp/out")
    echo "$1" >&3
    i=0
    while [ $i -lt $((limit * 20)) ]; do
        if [ "$(grep -c "^$word " "$tmp/out")" -gt "$n" ]; then
            grep "^$word " "$tmp/out" | tail -1
            return 0
        fi
        kill -0 "$driver_pid" 2>/dev/null || break
        sleep 0.05
        i=$((i + 1))
    done
    echo "$word NO-ANSWER"
    return 1
}
# serves HANDLER VERSION: a request answers with that handler and version.
serves() {
    case "$(ask call)" in
    "call rc=FG_OK handler=$1 version=$2") return 0 ;;
    *) return 1 ;;
    esac
}

# ---- the driver ----------------------------------------------------------------------

rev1=$(put v1 green)
proxy_start || exit 1
mkfifo "$tmp/in"
# Backoff 100 ms to 400 ms: reconnections are quick, the test short.
"$driver" "http://127.0.0.1:$proxy_port" "$key" 100 <"$tmp/in" >"$tmp/out" 2>"$tmp/err" &
driver_pid=$!
exec 3>"$tmp/in"

wait_for '^(start|unavailable) '
if grep -q '^unavailable ' "$tmp/out"; then
    wait "$driver_pid"
    rc=$?
    driver_pid=
    if [ "$rc" -eq 0 ]; then
        echo "PASS etcd unavailable: built without libcurl, fg_runtime_watch_etcd says FG_ESTATE"
        exit 0
    fi
    echo "FAIL etcd unavailable: driver exit $rc: $(cat "$tmp/out")"
    exit 1
fi

# swap
if wait_for "^start rc=FG_OK revision=$rev1 version=v1\$" && serves green v1; then
    rev2=$(put v2 blue)
    if wait_for "^reload rc=FG_OK revision=$rev2 version=v2 " && serves blue v2; then
        pass "swap: v1 (rev $rev1) then v2 (rev $rev2) served"
    else
        failed "swap: v2 (rev $rev2) not served"
    fi
else
    failed "swap: the first load of v1 (rev $rev1) not served"
fi

# reject
ctl put "$key" '{"version": "broken", "chain": [' >/dev/null
if wait_for '^reload rc=FG_ECONFIG revision=[0-9]+ version=v2 ' && serves blue v2; then
    pass "reject: a broken config refused, v2 keeps answering"
else
    failed "reject"
fi

# delete
drev=$(ctl del -w json "$key" | sed -n 's/.*"revision":\([0-9]*\).*/\1/p')
if wait_for "^reload rc=FG_ENOTFOUND .*error=$key: key deleted at revision $drev" && serves blue v2; then
    rev3=$(put v3 red)
    if wait_for "^reload rc=FG_OK revision=$rev3 version=v3 " && serves red v3; then
        pass "delete: reported at rev $drev, v2 kept answering; v3 put afterwards served"
    else
        failed "delete: v3 after the delete not served"
    fi
else
    failed "delete: not reported, or v2 not answering"
fi

# restart: v4 while connected; cut the watcher off; restart etcd; write v5
# and v6 while it is cut off; reconnect it.
rev4=$(put v4 green)
if wait_for "^reload rc=FG_OK revision=$rev4 version=v4 "; then
    proxy_stop
    fg_etcd_stop
    fg_etcd_start "$tmp/etcd" "$etcd_port" || exit 1
    rev5=$(put v5 blue)
    rev6=$(put v6 red)
    sleep 0.5
    before=$(ask stats)
    proxy_start || exit 1
    if wait_for "^reload rc=FG_OK revision=$rev6 version=v6 " && serves red v6; then
        case "$before" in
        "stats "*"revision=$rev4 "*"version=v4") ok=1 ;;
        *) ok=0 ;;
        esac
        reconn=$(ask stats | sed -n 's/.* reconnects=\([0-9]*\).*/\1/p')
        if [ "$ok" -eq 1 ] && [ "${reconn:-0}" -ge 1 ]; then
            pass "restart: v5 (rev $rev5) and v6 (rev $rev6) written while cut off, v6 served after $reconn reconnections"
        else
            failed "restart: cut off, the watcher should still serve v4 (got: $before; reconnects ${reconn:-?})"
        fi
    else
        failed "restart: v6 (rev $rev6) not served after reconnecting"
    fi
else
    failed "restart: v4 (rev $rev4) not served"
fi

# compact: writes while cut off, compacted away before the watcher is back.
proxy_stop
put v7 green >/dev/null
rev8=$(put v8 blue)
ctl compact "$rev8" >/dev/null
proxy_start || exit 1
if wait_for "^reload rc=FG_OK revision=$rev8 version=v8 " && serves blue v8; then
    pass "compact: revisions compacted while cut off, the key read afresh, v8 (rev $rev8) served"
else
    failed "compact: v8 (rev $rev8) not served"
fi

# last-wins
i=1
while [ $i -lt 50 ]; do
    ctl put "$key" "{\"version\": \"q$i\", \"chain\": [], \"handler\": \"green\"}" >/dev/null
    i=$((i + 1))
done
rev50=$(put q50 red)
if wait_for "^reload rc=FG_OK revision=$rev50 version=q50 " && serves red q50; then
    sleep 0.2
    last=$(ask stats)
    case "$last" in
    "stats "*"revision=$rev50 "*"version=q50") pass "last-wins: 50 quick writes, q50 (rev $rev50) serves" ;;
    *) failed "last-wins: after q50 something else applied: $last" ;;
    esac
else
    failed "last-wins: q50 (rev $rev50) not served"
fi

# Never older over newer: the revisions of the loads applied only grow.
if grep '^reload rc=FG_OK ' "$tmp/out" | sed 's/.* revision=\([0-9]*\) .*/\1/' |
    awk 'NR > 1 && $1 <= prev { bad = 1 } { prev = $1 } END { exit bad }'; then
    pass "order: the revisions applied strictly increase ($(grep -c '^reload rc=FG_OK ' "$tmp/out") loads)"
else
    failed "order: a revision was applied after a newer one"
fi

# latency
lat=$(ask "latency 20")
med=$(echo "$lat" | sed -n 's/.*median_ms=\([0-9.]*\).*/\1/p')
if [ -n "$med" ] && awk -v m="$med" 'BEGIN { exit !(m < 100) }'; then
    pass "latency: put to serving, $lat"
else
    failed "latency: $lat"
fi

# stop
echo quit >&3
exec 3>&-
i=0
while kill -0 "$driver_pid" 2>/dev/null && [ $i -lt $((limit * 20)) ]; do
    sleep 0.05
    i=$((i + 1))
done
if kill -0 "$driver_pid" 2>/dev/null; then
    failed "stop: the driver did not exit within $limit s"
else
    wait "$driver_pid"
    rc=$?
    driver_pid=
    stop_ms=$(sed -n 's/^stopped ms=\([0-9.]*\)$/\1/p' "$tmp/out")
    if [ "$rc" -ne 0 ]; then
        failed "stop: driver exit $rc"
    elif grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer|runtime error:|SUMMARY: [A-Za-z]+Sanitizer' "$tmp/err"; then
        failed "stop: a sanitizer report on the driver's stderr"
        grep -E -A30 'ERROR: |WARNING: ThreadSanitizer|runtime error:' "$tmp/err" | head -80
    elif [ -z "$stop_ms" ] || ! awk -v m="$stop_ms" 'BEGIN { exit !(m < 500) }'; then
        failed "stop: fg_watch_stop took ${stop_ms:-?} ms"
    else
        pass "stop: fg_watch_stop took $stop_ms ms, exit 0, stderr clean"
    fi
fi

# gateway: the example's --etcd, end to end over HTTP.
# gw_config: the gateway's /-/config as "version revision source".
gw_config() {
    python3 -c '
import json, sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:%s/-/config" % sys.argv[1], timeout=5) as r:
    c = json.load(r)
print(c["version"], c["revision"], c["source"])' "$1" 2>/dev/null
}
if [ -n "$gateway" ]; then
    gkey=/floodgate/test/gateway
    here_root=$(cd "$here/.." && pwd)
    gput() { # gput VERSION: the demo config under another version; prints the revision
        sed "s/\"version\": *\"[^\"]*\"/\"version\": \"$1\"/" \
            "$here_root/examples/gateway/floodgate.json" > "$tmp/gw.json"
        ctl put -w json "$gkey" < "$tmp/gw.json" | sed -n 's/.*"revision":\([0-9]*\).*/\1/p'
    }
    g1=$(gput gw-etcd-1)
    # the gateway's TSan suppressions: Concurrency Kit's ring only (test_gateway.sh)
    TSAN_OPTIONS="$TSAN_OPTIONS:suppressions=$here_root/examples/gateway/tsan.supp" \
        "$gateway" --port 0 --port-file "$tmp/gw.port" --etcd "$FG_ETCD_URL" "$gkey" --quiet \
        >"$tmp/gw.out" 2>"$tmp/gw.err" &
    gw_pid=$!
    i=0
    while [ ! -s "$tmp/gw.port" ] && kill -0 "$gw_pid" 2>/dev/null && [ $i -lt $((limit * 20)) ]; do
        sleep 0.05
        i=$((i + 1))
    done
    gport=$(cat "$tmp/gw.port" 2>/dev/null)
    first=$(gw_config "$gport")
    g2=$(gput gw-etcd-2)
    i=0
    second=
    while [ $i -lt $((limit * 20)) ]; do
        second=$(gw_config "$gport")
        [ "${second%% *}" = gw-etcd-2 ] && break
        sleep 0.05
        i=$((i + 1))
    done
    kill -TERM "$gw_pid" 2>/dev/null
    wait "$gw_pid"
    grc=$?
    gw_pid=
    want1="gw-etcd-1 $g1 etcd $FG_ETCD_URL $gkey"
    want2="gw-etcd-2 $g2 etcd $FG_ETCD_URL $gkey"
    if [ "$first" != "$want1" ] || [ "$second" != "$want2" ]; then
        failed "gateway: /-/config said '$first' then '$second', want '$want1' then '$want2'"
        tail -5 "$tmp/gw.err"
    elif [ "$grc" -ne 0 ]; then
        failed "gateway: exit $grc after SIGTERM"
        tail -20 "$tmp/gw.err"
    elif grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer|runtime error:|SUMMARY: [A-Za-z]+Sanitizer' "$tmp/gw.err"; then
        failed "gateway: a sanitizer report on the gateway's stderr"
        grep -E -A30 'ERROR: |WARNING: ThreadSanitizer|runtime error:' "$tmp/gw.err" | head -60
    else
        pass "gateway: --etcd served revision $g1, then $g2 put while serving; exit 0"
    fi
fi

secs=$(($(date +%s) - start_s))
if [ "$fail" -ne 0 ]; then
    echo "FAIL etcd ($variant, ${secs} s)"
    exit 1
fi
echo "etcd ($variant): $passed passed in ${secs} s"
