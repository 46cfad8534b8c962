#!/bin/sh
# tests/test_promtool.sh - the Prometheus exposition, checked by Prometheus's
# own linter: `promtool check metrics` on the output of tests/prom_sample
# (every metric family, an SLO, a breaker, rejections, hostile label values)
# and on what `floodgate replay --metrics FILE` writes for
# examples/config/full.json. promtool exits 1 on a parse error and 3 on lint
# problems; any line it prints is a failure too (none is allowed: the
# exporter can meet every lint rule, so no exception is needed).
#
# Usage: test_promtool.sh path/to/prom_sample path/to/floodgate
# promtool comes from Debian's `prometheus` package (scripts/deps.sh
# promtool). Without it the test fails, unless FG_NO_DEPS=1 (offline and
# packager builds), where it is skipped with a message.
set -u
sample=${1:?usage: test_promtool.sh path/to/prom_sample path/to/floodgate}
tool=${2:?usage: test_promtool.sh path/to/prom_sample path/to/floodgate}
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! command -v promtool > /dev/null 2>&1; then
    if [ "${FG_NO_DEPS:-0}" = 1 ]; then
        echo "SKIP promtool: promtool not installed and FG_NO_DEPS=1 (scripts/deps.sh promtool installs it)"
        exit 0
    fi
    echo "FAIL promtool: promtool not installed (run scripts/deps.sh promtool)"
    exit 1
fi

# lint NAME FILE: promtool check metrics on FILE; silent success or a failure.
lint() {
    promtool check metrics < "$2" > "$tmp/lint.out" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ] || [ -s "$tmp/lint.out" ]; then
        echo "FAIL promtool: $1: promtool check metrics exit $rc:"
        sed 's/^/    /' "$tmp/lint.out"
        fail=1
    fi
}

# (1) The sample: every family, written by the library itself.
if ! "$sample" > "$tmp/sample.prom" 2> "$tmp/sample.err"; then
    echo "FAIL promtool: $sample failed:"; cat "$tmp/sample.err"; fail=1
else
    lint sample "$tmp/sample.prom"
    # It must really hold what it is meant to test: all 12 families (23 with
    # the cluster limiter's, when floodgate was built with hiredis), the
    # escaped hostile values, histogram buckets.
    n=$(grep -c '^# TYPE ' "$tmp/sample.prom")
    want_n=12 cluster_want=
    if grep -q '^# TYPE floodgate_cluster_mode ' "$tmp/sample.prom"; then
        want_n=23 cluster_want='limiter="ten\"ant\\\n"'
    fi
    [ "$n" -eq "$want_n" ] ||
        { echo "FAIL promtool: sample has $n families, want $want_n"; fail=1; }
    for want in $cluster_want 'route="we\"ird\\route\n2"' 'stage="gate \"x\\y\"\nz"' \
                 'version="v\"2\\b\nc"' 'breaker="pay\"ments\\\n"' 'le="+Inf"' \
                 'floodgate_slo_burn_rate{' 'floodgate_breaker_transitions_total{'; do
        grep -qF "$want" "$tmp/sample.prom" ||
            { printf 'FAIL promtool: sample lacks %s\n' "$want"; fail=1; }
    done
    # A lint that would let anything through is no test: a broken copy must fail.
    sed 's/_total{/{/' "$tmp/sample.prom" > "$tmp/broken.prom"
    if promtool check metrics < "$tmp/broken.prom" > /dev/null 2>&1; then
        echo "FAIL promtool: a counter without _total passed promtool"; fail=1
    fi
fi

# (2) `floodgate replay --metrics FILE` on a shipped config, if the tool has it.
if "$tool" replay 2>&1 | grep -q -- '--metrics'; then
    cat > "$tmp/trace.jsonl" <<'JSONL'
{"t_ms": 0, "path": "/healthz"}
{"t_ms": 1, "method": "GET", "path": "/api/orders/7", "headers": {"x-user-id": "42"}}
{"t_ms": 2, "method": "GET", "path": "/api/orders/7", "headers": {"x-user-id": "43", "x-env": "gray"}}
{"t_ms": 3, "method": "POST", "path": "/api/payments/9", "status": "error", "latency_ms": 5}
{"t_ms": 4, "path": "/api/other", "meta": {"geo": "beijing", "age": "30"}, "baggage": "tenant=acme"}
{"t_ms": 5, "path": "/static/app.js"}
{"t_ms": 6, "path": "/nowhere"}
{"t_ms": 7, "method": "POST", "path": "/api/payments/9", "status": "error", "latency_ms": 250}
{"t_ms": 8, "method": "GET", "path": "/api/orders/8", "headers": {"x-user-id": "42"}, "latency_ms": 12}
JSONL
    if ! "$tool" replay --quiet --metrics "$tmp/replay.prom" examples/config/full.json \
            "$tmp/trace.jsonl" > "$tmp/replay.out" 2> "$tmp/replay.err"; then
        echo "FAIL promtool: floodgate replay --metrics failed:"; cat "$tmp/replay.err"; fail=1
    elif [ ! -s "$tmp/replay.prom" ]; then
        echo "FAIL promtool: floodgate replay --metrics wrote nothing"; fail=1
    else
        lint "replay of examples/config/full.json" "$tmp/replay.prom"
        grep -q '^floodgate_requests_total{chain="main",' "$tmp/replay.prom" ||
            { echo "FAIL promtool: replay metrics have no requests of chain main"; fail=1; }
        grep -q '^floodgate_config_reloads_total{result="ok"} 1$' "$tmp/replay.prom" ||
            { echo "FAIL promtool: replay metrics do not count the one config load"; fail=1; }
    fi
    replay_note="; replay --metrics of examples/config/full.json"
else
    echo "SKIP promtool: $tool replay has no --metrics option yet; only the sample was checked"
    replay_note=""
fi

[ "$fail" -eq 0 ] && echo "promtool: check metrics clean on the sample exposition$replay_note"
exit "$fail"
