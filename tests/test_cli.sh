#!/bin/sh
# tests/test_cli.sh - the `floodgate` command line: `check` on every shipped
# config (all valid), on a broken config (exit 1, one "FILE: path: message"
# line per error), on a file that does not exist (exit 2), and usage errors.
set -u
tool=${1:?usage: test_cli.sh path/to/floodgate}
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for cfg in examples/config/*.json; do
    if ! out=$("$tool" check "$cfg" 2>&1); then
        echo "FAIL cli: shipped config $cfg does not check:"; echo "$out"; fail=1
    elif [ "$out" != "$cfg: ok" ]; then
        echo "FAIL cli: $cfg: unexpected output: $out"; fail=1
    fi
done

cat > "$tmp/bad.json" <<'JSON'
{
  "version": "bad",
  "limiters": { "api": { "rate": "100/s", "burst": 0, "brust": 3 } },
  "chain": [ { "limiter": "nope" } ],
  "handler": "hello"
}
JSON
"$tool" check "$tmp/bad.json" > "$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 1 ] || { echo "FAIL cli: bad config exit $rc, want 1"; fail=1; }
for want in "$tmp/bad.json: limiters.api.burst: " "$tmp/bad.json: limiters.api.brust: " \
            "$tmp/bad.json: chain[0]"; do
    grep -qF "$want" "$tmp/out" || { echo "FAIL cli: no line starting '$want' in:"; cat "$tmp/out"; fail=1; }
done

printf '{ "version": "x",\n  "chain": [ }' > "$tmp/syntax.json"
"$tool" check "$tmp/syntax.json" > "$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 1 ] || { echo "FAIL cli: syntax error exit $rc, want 1"; fail=1; }
grep -Eq "line 2, column [0-9]+" "$tmp/out" || { echo "FAIL cli: no line/column in:"; cat "$tmp/out"; fail=1; }

"$tool" check "$tmp/missing.json" > "$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 2 ] || { echo "FAIL cli: missing file exit $rc, want 2"; fail=1; }
grep -qF "$tmp/missing.json: cannot read: " "$tmp/out" || { echo "FAIL cli: missing-file message:"; cat "$tmp/out"; fail=1; }

"$tool" > /dev/null 2>&1; rc=$?
[ "$rc" -eq 2 ] || { echo "FAIL cli: no arguments exit $rc, want 2"; fail=1; }
"$tool" check > /dev/null 2>&1; rc=$?
[ "$rc" -eq 2 ] || { echo "FAIL cli: check without a file exit $rc, want 2"; fail=1; }
"$tool" version | grep -Eq '^floodgate [0-9]+\.[0-9]+\.[0-9]+$' || { echo "FAIL cli: version"; fail=1; }

[ "$fail" -eq 0 ] && echo "cli: check on shipped, broken, syntax-error and missing configs"
exit "$fail"
