#!/bin/sh
# tests/test_bench.sh - `bench --quick` runs the real benchmark code paths
# briefly and prints every figure name users and scripts rely on, in the
# stable `bench=<name> threads=<n> ns_per_op=<x>` format, with zero
# allocations per request. (Speed itself is judged by `make bench`, never
# here: this machine is shared and noisy.)
set -eu
bench=$1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$bench" --quick >"$out"
fail=0
expect() { # expect <name> <threads>
    if ! grep -Eq "^bench=$1 threads=$2 ns_per_op=[0-9]+\.[0-9]+( |\$)" "$out"; then
        echo "FAIL bench: no line for bench=$1 threads=$2"; fail=1
    fi
}
expect floor_cas 1
expect floor_clock 1
for name in chain_empty chain_4noop chain_4noop_split; do
    expect $name 1
    expect $name 2
done
if grep -E 'allocs_per_op=' "$out" | grep -vq 'allocs_per_op=0\.0000'; then
    echo "FAIL bench: a request allocated:"; grep -E 'allocs_per_op=' "$out" | grep -v 'allocs_per_op=0\.0000'
    fail=1
fi
if [ "$fail" -ne 0 ]; then cat "$out"; exit 1; fi
echo "bench: $(wc -l <"$out") figures in the stable format, 0 allocations per request"
