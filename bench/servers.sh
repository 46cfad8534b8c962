#!/bin/sh
# bench/servers.sh - run the bench binary with the servers its scale-out
# figures need. When redis-server and etcd are installed (scripts/deps.sh
# servers), each is started on a free 127.0.0.1 port with its own data in a
# temporary directory (tests/servers.sh), its address is exported as
# FG_BENCH_REDIS=127.0.0.1:PORT / FG_BENCH_ETCD=http://127.0.0.1:PORT, and
# both are stopped when the run ends, however it ends. Without a server the
# binary runs anyway and the figures that need it print skipped=...
# A server is not started when --filter selects none of its figures.
# The exit code is the binary's.
#
# Usage: sh bench/servers.sh BENCH_BINARY [--quick] [--filter SUBSTRING]
set -u
bench=$1
shift
here=$(dirname "$0")
# shellcheck source=tests/servers.sh
. "$here/../tests/servers.sh"

# Which figures the run selects, as the binary matches them (substring).
filter=
prev=
for arg in "$@"; do
    [ "$prev" = --filter ] && filter=$arg
    prev=$arg
done
wants() { # wants FIGURE...: 0 when --filter selects one of them
    for fig in "$@"; do
        case $fig in *"$filter"*) return 0 ;; esac
    done
    return 1
}

dir=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    fg_servers_stop
    [ -n "$dir" ] && rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

unset FG_BENCH_REDIS FG_BENCH_ETCD
if command -v redis-server >/dev/null 2>&1 &&
    wants cluster_try_leased cluster_roundtrips_per_1e6; then
    dir=${dir:-$(mktemp -d "${TMPDIR:-/tmp}/fg-bench.XXXXXX")}
    if fg_redis_start "$dir/redis"; then
        FG_BENCH_REDIS=127.0.0.1:$FG_REDIS_PORT
        export FG_BENCH_REDIS
    else
        echo "bench/servers.sh: redis-server did not start; the cluster figures are skipped" >&2
    fi
fi
if command -v etcd >/dev/null 2>&1 && wants etcd_change_to_swap_ms; then
    dir=${dir:-$(mktemp -d "${TMPDIR:-/tmp}/fg-bench.XXXXXX")}
    if fg_etcd_start "$dir/etcd"; then
        FG_BENCH_ETCD=$FG_ETCD_URL
        export FG_BENCH_ETCD
    else
        echo "bench/servers.sh: etcd did not start; the etcd figure is skipped" >&2
    fi
fi

"$bench" "$@"
rc=$?
exit $rc
