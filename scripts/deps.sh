#!/bin/sh
# scripts/deps.sh - install the Debian packages floodgate needs, only if missing.
#
# Usage: scripts/deps.sh [build|servers|lint|promtool|peers|lang|loadtest|docs|all]
#   build: pkg-config, Concurrency Kit, jansson, Check, libevent, hiredis,
#          libcurl (what `make`, `make demo` and `make check` need; libevent only
#          for the gateway example; hiredis and libcurl for the cluster limiter
#          and the etcd config source, which the core builds without)
#   servers: redis-server, etcd and etcdctl, which `make check` starts on
#          127.0.0.1 for the cluster limiter's and the etcd watcher's tests,
#          and python3, which those tests and the gateway's use in every variant
#   lint:  clang-tidy, cppcheck, clang-format (what `make lint` needs)
#   promtool: Prometheus's promtool, which `make check` (release) runs on the
#          metrics exposition (tests/test_promtool.sh)
#   peers: Go and golang.org/x/time/rate, used offline in GOPATH mode by
#          `make bench-peers`
#   lang:  Python 3 and the same Go packages, for the Python and Go bindings'
#          tests that release `make check` runs (examples/python, examples/go)
#   loadtest: wrk and nginx, for `make loadtest`
#   docs:  Doxygen, for `make docs`
# It asks pkg-config (or the PATH, for tools) first and calls apt-get only for
# what is really missing. When not run as root it prints the command to run.
set -eu

want=${1:-build}
missing=""

need_pc() { # need_pc <pkg-config name> <debian package>
    if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists "$1"; then
        missing="$missing $2"
    fi
}
need_cmd() { # need_cmd <command> <debian package>
    command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
need_dir() { # need_dir <directory> <debian package>
    [ -d "$1" ] || missing="$missing $2"
}

case "$want" in
build | all)
    need_cmd cc gcc
    need_cmd make make
    need_cmd pkg-config pkgconf
    need_pc ck libck-dev
    need_pc jansson libjansson-dev
    need_pc check check
    need_pc libevent libevent-dev
    need_pc hiredis libhiredis-dev
    need_pc libcurl libcurl4-openssl-dev
    ;;
esac
case "$want" in
servers | all)
    [ -x /usr/bin/redis-server ] || need_cmd redis-server redis-server
    [ -x /usr/bin/etcd ] || need_cmd etcd etcd-server
    [ -x /usr/bin/etcdctl ] || need_cmd etcdctl etcd-client
    need_cmd python3 python3 # tests/servers.sh and the tests' HTTP probes
    ;;
esac
case "$want" in
lint | all)
    need_cmd clang-tidy clang-tidy
    need_cmd cppcheck cppcheck
    need_cmd clang-format clang-format
    ;;
esac
case "$want" in
promtool | all)
    need_cmd promtool prometheus
    ;;
esac
case "$want" in
peers | lang | all)
    need_cmd go golang-go
    need_dir /usr/share/gocode/src/golang.org/x/time/rate golang-golang-x-time-dev
    ;;
esac
case "$want" in
lang | all)
    need_cmd python3 python3
    ;;
esac
case "$want" in
loadtest | all)
    need_cmd wrk wrk
    [ -x /usr/sbin/nginx ] || need_cmd nginx nginx
    ;;
esac
case "$want" in
docs | all)
    need_cmd doxygen doxygen
    ;;
esac

if [ -z "$missing" ]; then
    echo "deps: all $want dependencies present"
    exit 0
fi

# pkgconf must come first when pkg-config itself was missing: the rest were
# only "missing" because nobody could ask.
echo "deps: missing Debian packages:$missing"
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "deps: not root; install them with:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y$missing" >&2
        exit 1
    fi
else
    SUDO=""
fi
echo "deps: running apt-get update and apt-get install -y --no-install-recommends$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086 # word splitting of the package list is intended
$SUDO apt-get install -y -q --no-install-recommends $missing
echo "deps: installed$missing"
