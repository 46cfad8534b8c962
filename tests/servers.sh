# tests/servers.sh - start and stop the real servers the scale-out tests and
# benchmarks use: redis-server and etcd, each on 127.0.0.1 on a free port
# with its own temporary data directory. Sourced (". tests/servers.sh"),
# not run. Every wait is bounded; a server that does not come up fails the
# caller with its log.
#
#   fg_free_port                 print a TCP port nobody listens on
#   fg_redis_start DIR [PORT]    start redis-server; sets FG_REDIS_PORT, FG_REDIS_PID
#   fg_redis_stop                stop it (SIGTERM, then SIGKILL after 5 s)
#   fg_etcd_start DIR [PORT]     start etcd; sets FG_ETCD_PORT, FG_ETCD_PID,
#                                FG_ETCD_URL (http://127.0.0.1:PORT)
#   fg_etcd_stop                 stop it
#   fg_servers_stop              stop whichever runs (for a trap)
#
# A restart reuses the port and the data directory: pass the same DIR and
# $FG_REDIS_PORT / $FG_ETCD_PORT again.

fg_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# fg_wait_port PORT PID LOG WHAT: wait up to 10 s for a listener on PORT.
fg_wait_port() {
    i=0
    while [ $i -lt 200 ]; do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "FAIL servers: $4 exited at start; its log:" >&2
            tail -20 "$3" >&2
            return 1
        fi
        if python3 -c 'import socket, sys
s = socket.socket()
s.settimeout(0.2)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"; then
            return 0
        fi
        sleep 0.05
        i=$((i + 1))
    done
    echo "FAIL servers: $4 not listening on 127.0.0.1:$1 after 10 s; its log:" >&2
    tail -20 "$3" >&2
    return 1
}

# fg_stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL.
fg_stop_pid() {
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null || return 0
    i=0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 100 ]; do
        sleep 0.05
        i=$((i + 1))
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

fg_redis_start() {
    mkdir -p "$1"
    FG_REDIS_PORT=${2:-$(fg_free_port)}
    # No persistence: a restart starts from an empty bucket, as a failover
    # to a fresh replica would. No protected mode: loopback only anyway.
    redis-server --port "$FG_REDIS_PORT" --bind 127.0.0.1 --dir "$1" --save '' \
        --appendonly no --protected-mode no --daemonize no \
        --logfile "$1/redis.log" >/dev/null 2>&1 &
    FG_REDIS_PID=$!
    fg_wait_port "$FG_REDIS_PORT" "$FG_REDIS_PID" "$1/redis.log" redis-server
}

fg_redis_stop() {
    fg_stop_pid "${FG_REDIS_PID:-}"
    FG_REDIS_PID=
}

fg_etcd_start() {
    mkdir -p "$1"
    FG_ETCD_PORT=${2:-$(fg_free_port)}
    if [ -z "${FG_ETCD_PEER_PORT:-}" ]; then
        FG_ETCD_PEER_PORT=$(fg_free_port)
    fi
    FG_ETCD_URL="http://127.0.0.1:$FG_ETCD_PORT"
    etcd --name fgtest --data-dir "$1/data" \
        --listen-client-urls "$FG_ETCD_URL" --advertise-client-urls "$FG_ETCD_URL" \
        --listen-peer-urls "http://127.0.0.1:$FG_ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$FG_ETCD_PEER_PORT" \
        --initial-cluster "fgtest=http://127.0.0.1:$FG_ETCD_PEER_PORT" \
        >"$1/etcd.log" 2>&1 &
    FG_ETCD_PID=$!
    fg_wait_port "$FG_ETCD_PORT" "$FG_ETCD_PID" "$1/etcd.log" etcd
}

fg_etcd_stop() {
    fg_stop_pid "${FG_ETCD_PID:-}"
    FG_ETCD_PID=
}

fg_servers_stop() {
    fg_redis_stop
    fg_etcd_stop
}
