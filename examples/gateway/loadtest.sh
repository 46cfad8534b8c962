#!/bin/sh
# examples/gateway/loadtest.sh - what floodgate costs inside a real HTTP server,
# next to what an extra proxy hop costs. wrk drives GET /api/orders/7 with a
# per-request x-user-id (1,000 users, a Lua script) on loopback against:
#   bare      the gateway with --bare: the same libevent server, worker pool
#             and backends, no floodgate at all (the baseline)
#   floodgate the gateway with examples/gateway/loadtest.json: the full chain
#             of the demo config (trace, global limiter, per-user keyed
#             limiter, split, bulkhead, breaker, timeout), with limits so
#             high that every request is admitted (and a 5 s timeout and
#             slow-call bound: they do their work but never fire even on a
#             busy machine): the comparison measures the overhead, not
#             rejections
#   nginx     nginx with limit_req keyed on x-user-id (rate and burst so high
#             nothing is rejected) as a reverse proxy in front of the bare
#             gateway, over keep-alive upstream connections
# Each configuration runs RUNS times (default 3), interleaved, each run after
# a short warm-up; the table shows the medians, and the two ratios:
#   throughput floodgate / bare                       (target >= 0.95)
#   added p99: (p99 floodgate - p99 bare) / (p99 nginx - p99 bare)
#                                                     (target: a small fraction)
# It also shows the server side's CPU time per request (user + system, from
# /proc: the gateway's, or nginx's worker's plus the bare gateway's), which
# other work on the machine disturbs far less than throughput and latency.
# The targets are reported as met=yes|no, not enforced (a loaded or shared
# machine moves them); the script fails only when something does not work:
# a server that does not start, non-2xx answers, connect errors or timeouts.
#
# Usage: sh examples/gateway/loadtest.sh path/to/gateway     (`make loadtest`)
# Environment (defaults in brackets):
#   RUNS [3]          runs per configuration; the table shows medians
#   DURATION [10]     seconds of each measured run (a 2 s warm-up precedes it)
#   CONNECTIONS [64]  wrk connections
#   WRK_THREADS [1]   wrk threads
#   WORKERS [2]       gateway handler threads
#   NGINX [nginx on PATH, else /usr/sbin/nginx]
# Why these settings: the machine this was written on has 2 cores, shared by
# wrk, the gateway (its event loop plus WORKERS handler threads) and, in the
# third configuration, nginx. One wrk thread keeps 64 keep-alive connections
# busy, two gateway workers match the two cores, and one nginx worker process
# keeps the proxy from taking a core away from the gateway it fronts. All
# three configurations share these settings, so the ratios compare like with
# like; on a bigger machine raise them together (e.g. WRK_THREADS=4 WORKERS=8).
set -u
gw=${1:?usage: loadtest.sh path/to/gateway}
runs=${RUNS:-3}
dur=${DURATION:-10}
conns=${CONNECTIONS:-64}
wthreads=${WRK_THREADS:-1}
workers=${WORKERS:-2}
here=$(cd "$(dirname "$0")" && pwd)
nginx=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

for tool in wrk "$nginx" "$gw"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || {
        echo "loadtest: $tool not found (scripts/deps.sh loadtest installs wrk and nginx)" >&2
        exit 1
    }
done

tmp=$(mktemp -d)
pids=""
cleanup() {
    for p in $pids; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.2
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

die() {
    echo "loadtest: $*" >&2
    exit 1
}

# start_gw NAME ARGS...: a gateway on a free port; sets s_pid and s_port.
start_gw() {
    s_name=$1
    shift
    "$gw" --port 0 --port-file "$tmp/$s_name.port" --workers "$workers" --quiet "$@" \
        >"$tmp/$s_name.out" 2>"$tmp/$s_name.err" &
    s_pid=$!
    pids="$pids $s_pid"
    s_i=0
    while [ ! -s "$tmp/$s_name.port" ]; do
        if ! kill -0 "$s_pid" 2>/dev/null || [ "$s_i" -ge 100 ]; then
            die "gateway $s_name ($*) did not start: $(cat "$tmp/$s_name.err")"
        fi
        s_i=$((s_i + 1))
        sleep 0.1
    done
    s_port=$(cat "$tmp/$s_name.port")
}

start_gw bare --bare --latency-us 0
bare_pid=$s_pid bare_port=$s_port
start_gw fg --config "$here/loadtest.json" --latency-us 0
fg_pid=$s_pid fg_port=$s_port
grep -q "config gateway-loadtest-1" "$tmp/fg.out" ||
    die "the floodgate gateway does not serve loadtest.json: $(cat "$tmp/fg.out" "$tmp/fg.err")"

# nginx on the first free port from a pseudo-random start; nginx writes its pid
# file only after it has bound its listening socket.
mkdir "$tmp/nginx"
ng_port=$((20000 + $$ % 20000))
ng_tries=0
while :; do
    cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    limit_req_zone \$http_x_user_id zone=users:10m rate=100000r/s;
    upstream gateway {
        server 127.0.0.1:$bare_port;
        keepalive 128;
        keepalive_timeout 5s;  # below the gateway's 10 s idle timeout
    }
    server {
        listen 127.0.0.1:$ng_port;
        location / {
            limit_req zone=users burst=100000 nodelay;
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    "$nginx" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" \
        >"$tmp/nginx/stdout" 2>&1 &
    ng_pid=$!
    pids="$pids $ng_pid"
    i=0
    while [ ! -s "$tmp/nginx/nginx.pid" ] && kill -0 "$ng_pid" 2>/dev/null && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    [ -s "$tmp/nginx/nginx.pid" ] && kill -0 "$ng_pid" 2>/dev/null && break
    kill -KILL "$ng_pid" 2>/dev/null
    ng_tries=$((ng_tries + 1))
    if ! grep -q "Address already in use" "$tmp/nginx/error.log" "$tmp/nginx/stdout" 2>/dev/null ||
        [ $ng_tries -ge 20 ]; then
        die "nginx did not start: $(cat "$tmp/nginx/error.log" "$tmp/nginx/stdout")"
    fi
    ng_port=$((ng_port + 1))
    : >"$tmp/nginx/error.log"
done

# nginx's worker process (the master only supervises it).
ng_worker=$(cut -d' ' -f1 "/proc/$ng_pid/task/$ng_pid/children" 2>/dev/null)
[ -n "$ng_worker" ] || ng_worker=$ng_pid

# cpu_ticks PID...: user + system CPU time of the processes, in clock ticks.
clk_tck=$(getconf CLK_TCK)
cpu_ticks() {
    for p in "$@"; do sed 's/.*) //' "/proc/$p/stat"; done |
        awk '{ t += $12 + $13 } END { print t }'
}

# One request per call, a different user each time (1,000 of them per wrk
# thread), the same script for every configuration.
cat >"$tmp/users.lua" <<'EOF'
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", "/api/orders/7", { ["x-user-id"] = "user-" .. (n % 1000) })
end
EOF

# to_us VALUE: a wrk latency ("452.00us", "1.23ms", "1.01s") in microseconds.
to_us() {
    echo "$1" | awk '{ v = $1; u = v; sub(/^[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        m = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : (u == "m") ? 60000000 : -1;
        if (m < 0) exit 1; printf "%.1f\n", v * m }'
}

# bench NAME PORT RUN PID...: a warm-up, then the measured run; appends
# "NAME rps p50_us p99_us cpu_us_per_request" to $tmp/results, the CPU time
# being what the server processes PID... used during the run.
bench() {
    b_name=$1 b_port=$2 b_run=$3
    shift 3
    url="http://127.0.0.1:$b_port/api/orders/7"
    out="$tmp/$b_name.$b_run.txt"
    wrk -t"$wthreads" -c"$conns" -d2s -s "$tmp/users.lua" "$url" >"$tmp/warm.txt" 2>&1 ||
        die "wrk warm-up against $b_name failed: $(cat "$tmp/warm.txt")"
    c0=$(cpu_ticks "$@")
    timeout $((dur + 30)) wrk -t"$wthreads" -c"$conns" -d"${dur}s" --latency -s "$tmp/users.lua" \
        "$url" >"$out" 2>&1 || die "wrk against $b_name failed: $(cat "$out")"
    c1=$(cpu_ticks "$@")
    for f in "$tmp/warm.txt" "$out"; do
        if grep -q "Non-2xx or 3xx responses" "$f"; then
            die "$b_name: answers other than 2xx; every request must be admitted:
$(cat "$f")"
        fi
        if grep -E "Socket errors: connect [1-9]|timeout [1-9]" "$f" >/dev/null; then
            die "$b_name: connect errors or timeouts:
$(cat "$f")"
        fi
    done
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(awk '$1 == "50%" { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    nreq=$(awk '/ requests in / { print $1 }' "$out")
    if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ] || [ -z "$nreq" ]; then
        die "cannot parse wrk's output for $b_name:
$(cat "$out")"
    fi
    cpu=$(awk -v a="$c0" -v b="$c1" -v t="$clk_tck" -v n="$nreq" \
        'BEGIN { printf "%.2f", (b - a) * 1000000 / t / n }')
    echo "$b_name $rps $(to_us "$p50") $(to_us "$p99") $cpu" >>"$tmp/results"
    printf 'run %d %-9s %10.0f req/s  p50 %8.1f us  p99 %8.1f us  server CPU %6.2f us/req\n' \
        "$b_run" "$b_name" "$rps" "$(to_us "$p50")" "$(to_us "$p99")" "$cpu"
}

echo "loadtest: wrk -t$wthreads -c$conns -d${dur}s --latency (2 s warm-up first), $runs runs each;"
echo "          gateway --workers $workers --latency-us 0; nginx worker_processes 1; $(nproc) cores"
# Other work on the machine moves every figure: say how busy it was.
echo "          load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$tmp/results"
run=1
while [ $run -le "$runs" ]; do
    bench bare "$bare_port" $run "$bare_pid"
    bench floodgate "$fg_port" $run "$fg_pid"
    bench nginx "$ng_port" $run "$bare_pid" "$ng_worker"
    run=$((run + 1))
done

# median NAME FIELD: the median of column FIELD (2 rps, 3 p50, 4 p99) of NAME's runs.
median() {
    awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$tmp/results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
printf '%-36s %10s %10s %10s %12s\n' "configuration (median of $runs)" "requests/s" "p50 (us)" \
    "p99 (us)" "CPU us/req"
for n in bare floodgate nginx; do
    case $n in
    bare) label="bare gateway (--bare)" ;;
    floodgate) label="gateway + floodgate (loadtest.json)" ;;
    nginx) label="nginx limit_req -> bare gateway" ;;
    esac
    printf '%-36s %10.0f %10.1f %10.1f %12.2f\n' "$label" "$(median $n 2)" "$(median $n 3)" \
        "$(median $n 4)" "$(median $n 5)"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -s "$tmp/nginx/error.log" ]; then
    echo "nginx's error log ($(wc -l <"$tmp/nginx/error.log") lines), the last ones:"
    tail -3 "$tmp/nginx/error.log"
fi
echo
awk -v rb="$(median bare 2)" -v rf="$(median floodgate 2)" \
    -v pb="$(median bare 4)" -v pf="$(median floodgate 4)" -v pn="$(median nginx 4)" \
    -v cb="$(median bare 5)" -v cf="$(median floodgate 5)" -v cn="$(median nginx 5)" 'BEGIN {
    t = rf / rb
    printf "throughput floodgate / bare: %.3f (target >= 0.95) met=%s\n", t, (t >= 0.95) ? "yes" : "no"
    af = pf - pb; an = pn - pb
    printf "added p99: floodgate %+.1f us, nginx hop %+.1f us", af, an
    if (an > 0) {
        r = af / an
        printf "; floodgate / nginx %.3f (target: a small fraction, < 0.25) met=%s\n", r,
            (r < 0.25) ? "yes" : "no"
    } else
        printf "; the nginx hop added nothing measurable: no ratio\n"
    printf "server CPU per request: bare %.2f us; floodgate adds %+.2f us, the nginx hop %+.2f us\n",
        cb, cf - cb, cn - cb
}'
