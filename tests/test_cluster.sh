#!/bin/sh
# tests/test_cluster.sh - the cluster limiter (include/floodgate/cluster.h)
# against a real redis-server on 127.0.0.1 (tests/servers.sh: a free port, a
# temporary directory, stopped on exit). The programs are tests/cluster_driver.c.
#
#   1. three processes (2 threads each) share one bucket, rate 1000/s, burst
#      100, the default lease, for 3 s. They all wait for one start time on
#      CLOCK_REALTIME and make their limiter after it, so the bucket (a fresh
#      key) is created inside the window elapsed = start .. last try. Total
#      admitted <= burst + rate x elapsed + 1 (from the bucket's creation,
#      cluster.h) and <= burst + rate x elapsed + instances x held_max (the
#      window bound), and >= 95% of rate x elapsed (saturated). Redis's
#      script cache is flushed at 1.5 s: the first limiter to call answers
#      NOSCRIPT by loading it again, and none switches to fallback.
#   2. the same with lease 1, rate 200/s, burst 10, 2 s: total admitted <=
#      burst + rate x elapsed + 1, and the limiters' round trips match the
#      calls Redis counted (INFO commandstats) and are >= the admissions.
#      The + 1: Redis's TIME has microsecond resolution, so the bucket's
#      creation may be stamped up to 1 us early: rate x 1 us = 0.0002 of a
#      token, which can tip the whole count by one at most.
#   3. Redis killed (SIGKILL) at 1 s and restarted on the same port at 2 s,
#      then paused (SIGSTOP) at 3 s and resumed at 3.6 s, under two processes
#      at once: fallback local (instances 2) and fallback closed, timeout
#      20 ms, backoff 50 .. 200 ms. Each driver checks its own tries (none
#      slower than timeout + margin, the fallback counted, both transitions
#      seen by its listener, leases again after recovery); this script checks
#      the timing against the moments it acted: the switch to fallback soon
#      after each stop, the return within backoff_max + timeout (+ margin)
#      after Redis is back and never before, no switch while Redis is up.
#   4. refunds (single process, several limiters, rate 1/min so nothing
#      refills): free gives the unspent lease back; a lease is cut to what
#      the bucket holds; an idle instance's lease expires after lease_ttl
#      (200 ms); and the same per key (max_keys), where the sweep gives an
#      idle key's lease back within 1.5 x lease_ttl.
# Under asan and tsan every driver's stderr must hold no sanitizer report.
#
# Usage: sh tests/test_cluster.sh DRIVER VARIANT   (VARIANT release | asan | tsan)
set -u
driver=${1:?usage: test_cluster.sh DRIVER VARIANT}
variant=${2:-release}
here=$(cd "$(dirname "$0")" && pwd)
start_s=$(date +%s)
fail=0
pids=""
tmp=$(mktemp -d)
# Read by servers.sh's fg_servers_stop (from the trap) before anything started.
FG_REDIS_PID=
# shellcheck disable=SC2034
FG_ETCD_PID=
# shellcheck source=tests/servers.sh
. "$here/servers.sh"

cleanup() {
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    # A paused Redis would never see the SIGTERM.
    [ -n "${FG_REDIS_PID:-}" ] && kill -CONT "$FG_REDIS_PID" 2>/dev/null
    fg_servers_stop
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

[ -x "$driver" ] || { echo "FAIL cluster: $driver is not an executable"; exit 1; }
for c in redis-server redis-cli python3 timeout awk; do
    command -v "$c" >/dev/null 2>&1 || { echo "FAIL cluster: $c is needed"; exit 1; }
done
if [ "$("$driver" available)" != 1 ]; then
    echo "skip cluster ($variant): floodgate built without hiredis"
    exit 0
fi

# Per variant: how long the processes get to start before the common start
# time, the margin over the 20 ms timeout a try may take (a sanitizer's
# slowdown and a busy two-CPU machine's scheduling, not the limiter's), and
# the slack on the detection and recovery times and the lease expiry.
case "$variant" in
release) lead_ms=700 margin_ms=20 slack_ms=150 ;;
asan) lead_ms=1500 margin_ms=40 slack_ms=300 ;;
tsan) lead_ms=2000 margin_ms=60 slack_ms=400 ;;
*) echo "FAIL cluster: unknown variant $variant"; exit 1 ;;
esac
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23:${ASAN_OPTIONS:-}"
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
TSAN_OPTIONS="halt_on_error=0:exitcode=66:second_deadlock_stack=1:${TSAN_OPTIONS:-}"
export ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS

now_ns() { date +%s%N; }

# sleep_until NS: sleep until CLOCK_REALTIME reads NS.
sleep_until() {
    su_d=$(($1 - $(now_ns)))
    if [ "$su_d" -gt 0 ]; then
        sleep "$(awk -v d="$su_d" 'BEGIN { printf "%.3f", d / 1e9 }')"
    fi
}

# bg NAME ARGS...: a driver in the background (bounded: 60 s); sets b_pid.
bg() {
    b_name=$1
    shift
    timeout 60 "$driver" "$@" >"$tmp/$b_name.out" 2>"$tmp/$b_name.err" &
    b_pid=$!
    pids="$pids $b_pid"
}

# finish NAME PID: its exit status, its FAIL lines, its stderr; returns 1 on any failure.
finish() {
    wait "$2"
    f_rc=$?
    f_bad=0
    if [ "$f_rc" -ne 0 ]; then
        echo "FAIL cluster: driver $1 exited $f_rc (124: killed after 60 s)"
        grep '^FAIL' "$tmp/$1.out"
        f_bad=1
    fi
    if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer|runtime error:|SUMMARY: [A-Za-z]+Sanitizer' "$tmp/$1.err"; then
        echo "FAIL cluster: driver $1 has a sanitizer report on stderr:"
        grep -E -A30 'ERROR: |WARNING: ThreadSanitizer|runtime error:' "$tmp/$1.err" | head -80
        f_bad=1
    elif [ "$f_rc" -ne 0 ] && [ -s "$tmp/$1.err" ]; then
        echo "driver $1 stderr (tail):"
        tail -20 "$tmp/$1.err"
    fi
    return $f_bad
}

if ! fg_redis_start "$tmp/redis"; then
    echo "FAIL cluster: redis-server did not start"
    exit 1
fi
rport=$FG_REDIS_PORT
addr=127.0.0.1:$rport
run=$$-$(date +%s%N) # every bucket a fresh key

# The eval-family calls Redis counted since the last CONFIG RESETSTAT.
redis_calls() {
    redis-cli -p "$rport" INFO commandstats | tr -d '\r' | awk -F'[:,=]' '
        /^cmdstat_(eval|evalsha|eval_ro|evalsha_ro|script[|]load|script|fcall):/ { n += $3 }
        END { print n + 0 }'
}

# ---- 1 and 2: several processes on one bucket ---------------------------------------------

# share LABEL KEY DURATION_MS ARGS...: three drivers, 2 threads each; leaves
# their load lines in $tmp/LABEL.load and the start time in sh_start.
share() {
    sh_label=$1 sh_key=$2 sh_ms=$3
    shift 3
    sh_start=$(($(now_ns) + lead_ms * 1000000))
    sh_pids=""
    for i in 1 2 3; do
        bg "${sh_label}_$i" load --redis "$addr" --name "$sh_key" --threads 2 \
            --start_at "$sh_start" --duration_ms "$sh_ms" --timeout_ms 250 "$@"
        sh_pids="$sh_pids $b_pid"
    done
    # FLUSH_AT_MS: empty Redis's script cache then; every limiter must load
    # its script again by itself (NOSCRIPT), without a switch to fallback.
    if [ -n "${FLUSH_AT_MS:-}" ]; then
        sleep_until $((sh_start + FLUSH_AT_MS * 1000000))
        redis-cli -p "$rport" SCRIPT FLUSH >/dev/null
    fi
    sh_bad=0
    i=1
    for p in $sh_pids; do
        finish "${sh_label}_$i" "$p" || sh_bad=1
        i=$((i + 1))
    done
    cat "$tmp/${sh_label}_1.out" "$tmp/${sh_label}_2.out" "$tmp/${sh_label}_3.out" |
        grep '^load ' >"$tmp/$sh_label.load"
    return $sh_bad
}

# sum_load FILE START: one line of totals: n admitted elapsed_s rate burst lease
# roundtrips leased refunded max_late_ms
sum_load() {
    awk -v start="$2" '
        { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          n++; adm += v["admitted"]; rt += v["roundtrips"]; le += v["leased"]
          rf += v["refunded"]; if (v["end_ns"] > end) end = v["end_ns"]
          if (v["late_ns"] > late) late = v["late_ns"]
          rate = v["rate"]; burst = v["burst"]; lease = v["lease"] }
        END { printf "%d %d %.6f %d %d %d %d %d %d %.1f\n", n, adm, (end - start) / 1e9,
              rate, burst, lease, rt, le, rf, late / 1e6 }' "$1"
}

# 1. lease at its default (rate x 10 ms = 10); Redis's script cache flushed at 1.5 s.
redis-cli -p "$rport" CONFIG RESETSTAT >/dev/null
s1_ok=1
FLUSH_AT_MS=1500
share s1 "s1-$run" 3000 --rate 1000 --burst 100 || s1_ok=0
FLUSH_AT_MS=
loads=$(redis-cli -p "$rport" INFO commandstats | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_script[|]load:/ { n += $3 } END { print n + 0 }')
# 3 at connect, then at least one NOSCRIPT answered by a reload (once one
# process has loaded it again, the others' EVALSHA work as before).
if [ "$loads" -lt 4 ]; then
    echo "FAIL cluster 1: Redis saw $loads SCRIPT LOADs, want >= 4 (3 at connect, 1 after SCRIPT FLUSH)"
    s1_ok=0
fi
# shellcheck disable=SC2046
set -- $(sum_load "$tmp/s1.load" "$sh_start")
if [ "$#" -ne 10 ] || [ "$1" -ne 3 ]; then
    echo "FAIL cluster 1: want 3 load lines, got: $(cat "$tmp/s1.load")"
    s1_ok=0
else
    verdict=$(awk -v n="$1" -v adm="$2" -v el="$3" -v rate="$4" -v burst="$5" -v lease="$6" \
        -v rt="$7" -v late="${10}" -v loads="$loads" 'BEGIN {
        strict = burst + rate * el + 1; held_max = lease + int((lease + 3) / 4) - 1; window = burst + rate * el + n * held_max
        pct = 100 * adm / (rate * el); bad = ""
        if (adm > strict) bad = bad sprintf(" admitted %d > burst + rate x elapsed + 1 = %.1f;", adm, strict)
        if (adm > window) bad = bad sprintf(" admitted %d > documented bound %.1f;", adm, window)
        if (pct < 95) bad = bad sprintf(" admitted %.2f%% of rate x elapsed, want >= 95%%;", pct)
        printf "%s|admitted %d <= %.1f (burst %d + %d/s x %.4f s + 1) <= %.1f (+ %d x held_max, lease %d); %.2f%% of rate x elapsed; %d round trips (%.1f admissions each); latest start %.1f ms; %d script loads (SCRIPT FLUSH at 1.5 s)\n",
            bad, adm, strict, burst, rate, el, window, n, lease, pct, rt, rt ? adm / rt : 0, late, loads }')
    if [ -n "${verdict%%|*}" ]; then
        echo "FAIL cluster 1 (3 processes share a bucket):${verdict%%|*} ${verdict#*|}"
        s1_ok=0
    elif [ "$s1_ok" -eq 1 ]; then
        echo "PASS cluster 1 (3 processes x 2 threads share a bucket, 3 s): ${verdict#*|}"
    else
        echo "FAIL cluster 1 (a driver failed, above): ${verdict#*|}"
    fi
fi
[ "$s1_ok" -eq 1 ] || fail=1

# 2. lease 1: exact.
redis-cli -p "$rport" CONFIG RESETSTAT >/dev/null
s2_ok=1
share s2 "s2-$run" 2000 --rate 200 --burst 10 --lease 1 || s2_ok=0
rcalls=$(redis_calls)
# shellcheck disable=SC2046
set -- $(sum_load "$tmp/s2.load" "$sh_start")
if [ "$#" -ne 10 ] || [ "$1" -ne 3 ]; then
    echo "FAIL cluster 2: want 3 load lines, got: $(cat "$tmp/s2.load")"
    s2_ok=0
else
    verdict=$(awk -v n="$1" -v adm="$2" -v el="$3" -v rate="$4" -v burst="$5" -v lease="$6" \
        -v rt="$7" -v rc="$rcalls" 'BEGIN {
        strict = burst + rate * el + 1; pct = 100 * adm / (rate * el); bad = ""
        if (lease != 1) bad = bad sprintf(" lease %d, want 1;", lease)
        if (adm > strict) bad = bad sprintf(" admitted %d > burst + rate x elapsed + 1 = %.1f;", adm, strict)
        if (pct < 95) bad = bad sprintf(" admitted %.2f%% of rate x elapsed, want >= 95%%;", pct)
        if (rt < adm) bad = bad sprintf(" round trips %d < admitted %d;", rt, adm)
        # Each process may give back at most one token at free, after it printed.
        if (rc < rt || rc > rt + n) bad = bad sprintf(" Redis counted %d calls, the limiters %d round trips (+ up to %d refunds at free);", rc, rt, n)
        printf "%s|admitted %d <= %.1f (burst %d + %d/s x %.4f s + 1); %.2f%% of rate x elapsed; round trips %d, Redis counted %d calls, admitted %d\n",
            bad, adm, strict, burst, rate, el, pct, rt, rc, adm }')
    if [ -n "${verdict%%|*}" ]; then
        echo "FAIL cluster 2 (lease 1 is exact):${verdict%%|*} ${verdict#*|}"
        s2_ok=0
    elif [ "$s2_ok" -eq 1 ]; then
        echo "PASS cluster 2 (lease 1, 3 processes x 2 threads, 2 s): ${verdict#*|}"
    else
        echo "FAIL cluster 2 (a driver failed, above): ${verdict#*|}"
    fi
fi
[ "$s2_ok" -eq 1 ] || fail=1

# ---- 3. Redis killed, restarted, paused, resumed -------------------------------------------

s3_ok=1
s3_start=$(($(now_ns) + lead_ms * 1000000))
for pol in local closed; do
    bg "s3_$pol" outage --redis "$addr" --name "s3-$pol-$run" --rate 1000 --burst 100 \
        --instances 2 --fallback "$pol" --timeout_ms 20 --backoff_min_ms 50 \
        --backoff_max_ms 200 --threads 2 --start_at "$s3_start" --duration_ms 4500 \
        --margin_ms "$margin_ms" --expect_outages 2
    if [ "$pol" = local ]; then s3_pid_local=$b_pid; else s3_pid_closed=$b_pid; fi
done
sleep_until $((s3_start + 1000000000))
kill_ns=$(now_ns)
kill -KILL "$FG_REDIS_PID"
wait "$FG_REDIS_PID" 2>/dev/null
sleep_until $((s3_start + 2000000000))
launch_ns=$(now_ns)
if ! fg_redis_start "$tmp/redis" "$rport"; then
    echo "FAIL cluster 3: redis-server did not restart on port $rport"
    s3_ok=0
fi
up_ns=$(now_ns)
sleep_until $((s3_start + 3000000000))
stop_ns=$(now_ns)
kill -STOP "$FG_REDIS_PID"
sleep_until $((s3_start + 3600000000))
# Stamped before the signal: a recovery can only follow it.
cont_ns=$(now_ns)
kill -CONT "$FG_REDIS_PID"
s3_local_ok=1 s3_closed_ok=1
finish s3_local "$s3_pid_local" || s3_local_ok=0
finish s3_closed "$s3_pid_closed" || s3_closed_ok=0
for pol in local closed; do
    if [ "$pol" = local ]; then pol_ok=$s3_local_ok; else pol_ok=$s3_closed_ok; fi
    [ "$s3_ok" -eq 1 ] || pol_ok=0
    # The timing of the switches against the moments Redis stopped and came back.
    verdict=$(awk -v kill="$kill_ns" -v launch="$launch_ns" -v up="$up_ns" -v stop="$stop_ns" \
        -v cont="$cont_ns" -v slack="$slack_ms" '
        function ms(x) { return x / 1e6 }
        /^event / { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            n++; to[n] = v["to"]; t[n] = v["real_ns"] }
        /^outage / { for (i = 2; i <= NF; i++) { split($i, kv, "="); o[kv[1]] = kv[2] } }
        END {
            det = 20 + slack; rec = 200 + 20 + slack; bad = ""
            fb1 = rc1 = fb2 = rc2 = 0
            for (i = 1; i <= n; i++) {
                if (to[i] == "fallback") {
                    if (t[i] < kill) bad = bad sprintf(" fallback at %.0f ms, before Redis was stopped;", ms(t[i] - kill))
                    else if (!fb1) fb1 = i
                    else if (t[i] >= stop && !fb2) fb2 = i
                    else if (t[i] > t[rc1] && t[i] < stop) bad = bad sprintf(" fallback %.0f ms after recovery with Redis up;", ms(t[i] - t[rc1]))
                } else {
                    if (fb1 && !rc1 && i > fb1) rc1 = i
                    if (fb2 && !rc2 && i > fb2) rc2 = i
                }
            }
            if (!fb1) bad = bad " no switch to fallback after the kill;"
            if (!rc1) bad = bad " no return to cluster after the restart;"
            if (!fb2) bad = bad " no switch to fallback after SIGSTOP;"
            if (!rc2) bad = bad " no return to cluster after SIGCONT;"
            d1 = fb1 ? ms(t[fb1] - kill) : -1; r1 = rc1 ? ms(t[rc1] - launch) : -1
            d2 = fb2 ? ms(t[fb2] - stop) : -1; r2 = rc2 ? ms(t[rc2] - cont) : -1
            if (fb1 && d1 > det) bad = bad sprintf(" fallback %.1f ms after the kill, want <= %d;", d1, det)
            if (rc1 && t[rc1] < launch) bad = bad sprintf(" back to cluster %.1f ms before Redis was restarted;", -r1)
            if (rc1 && r1 > rec + ms(up - launch)) bad = bad sprintf(" back %.1f ms after the restart, want <= %.0f;", r1, rec + ms(up - launch))
            if (fb2 && d2 > det) bad = bad sprintf(" fallback %.1f ms after SIGSTOP, want <= %d;", d2, det)
            if (fb2 && t[fb2] > cont) bad = bad " the pause was not noticed before SIGCONT;"
            if (rc2 && t[rc2] < cont) bad = bad sprintf(" back to cluster %.1f ms before SIGCONT;", -r2)
            if (rc2 && r2 > rec) bad = bad sprintf(" back %.1f ms after SIGCONT, want <= %d;", r2, rec)
            printf "%s|kill -> fallback %.1f ms, restart -> cluster %.1f ms (listening after %.1f ms), SIGSTOP -> fallback %.1f ms, SIGCONT -> cluster %.1f ms; slowest try %.1f ms (bound %.0f; %s of %s tries over the 20 ms timeout itself); %s fallback decisions admitted, %s rejected; %.0f ms in fallback; errors %s\n",
                bad, d1, r1, ms(up - launch), d2, r2, ms(o["max_try_ns"]), ms(o["slow_bound_ns"]), o["over_timeout"], o["tries"],
                o["fallback_admitted"], o["fallback_rejected"], ms(o["fallback_time_ns"]), o["errors"] }' \
        "$tmp/s3_$pol.out")
    if [ -n "${verdict%%|*}" ]; then
        echo "FAIL cluster 3 ($pol: Redis killed, restarted, paused):${verdict%%|*} ${verdict#*|}"
        grep '^event ' "$tmp/s3_$pol.out"
        pol_ok=0
    elif [ "$pol_ok" -eq 1 ]; then
        echo "PASS cluster 3 (fallback $pol; Redis killed at 1 s, restarted at 2 s, paused 3 .. 3.6 s): ${verdict#*|}"
    else
        echo "FAIL cluster 3 (fallback $pol; a driver check failed, above): ${verdict#*|}"
    fi
    grep -E "^(episode|outage) " "$tmp/s3_$pol.out"
    [ "$pol_ok" -eq 1 ] || fail=1
done

# ---- 4. refunds at free and lease expiry ---------------------------------------------------

bg s4 refund --redis "$addr" --name "s4-$run" --lease_ttl_ms 200 --margin_ms "$slack_ms"
if finish s4 "$b_pid"; then
    echo "PASS cluster 4 (lease refunds): $(grep '^refund-' "$tmp/s4.out" | tr '\n' ';')"
else
    echo "FAIL cluster 4 (lease refunds): $(grep '^refund-' "$tmp/s4.out" | tr '\n' ';')"
    fail=1
fi

secs=$(($(date +%s) - start_s))
if [ "$fail" -ne 0 ]; then
    echo "FAIL cluster ($variant, ${secs} s); redis log (tail):"
    tail -5 "$tmp/redis/redis.log"
    exit 1
fi
echo "ok cluster ($variant): shared bucket, lease 1, outage, refunds in ${secs} s"
