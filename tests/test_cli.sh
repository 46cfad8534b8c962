#!/bin/sh
# tests/test_cli.sh - the `floodgate` command line: `check` on every shipped
# config (all valid), on a broken config (exit 1, one "FILE: path: message"
# line per error), on a file that does not exist (exit 2), and usage errors;
# a small `replay` of every shipped config; `replay` golden tests: a limiter's exact token-bucket decisions, a
# breaker's transitions at their virtual times, a sticky 95/5 split over
# 100,000 users, bad traces (nothing on stdout) and the SVG timeline.
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

# A small replay of every shipped config: a trace touching the paths the
# examples route (the same trace for each), one decision per request.
cat > "$tmp/shipped.jsonl" <<'JSONL'
{"t_ms": 0, "path": "/healthz"}
{"t_ms": 1, "method": "GET", "path": "/api/orders/7", "headers": {"x-user-id": "42"}}
{"t_ms": 2, "method": "GET", "path": "/api/orders/7", "headers": {"x-user-id": "43", "x-env": "gray"}}
{"t_ms": 3, "method": "POST", "path": "/api/payments/9", "status": "error", "latency_ms": 5}
{"t_ms": 4, "path": "/api/other", "meta": {"geo": "beijing", "age": "30"}, "baggage": "tenant=acme"}
{"t_ms": 5, "path": "/static/app.js"}
{"t_ms": 6, "path": "/nowhere"}
JSONL
for cfg in examples/config/*.json; do
    if ! "$tool" replay "$cfg" "$tmp/shipped.jsonl" > "$tmp/replay.out" 2> "$tmp/replay.err"; then
        echo "FAIL cli: replay of shipped config $cfg failed:"; cat "$tmp/replay.err"; fail=1
    elif [ "$(grep -c '"decision"' "$tmp/replay.out")" -ne 7 ]; then
        echo "FAIL cli: replay of $cfg: want 7 decisions, got:"; cat "$tmp/replay.out"; fail=1
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

# ---- replay ------------------------------------------------------------------

# expect NAME FILE: compare FILE with the expected text on standard input.
expect() {
    cat > "$tmp/want"
    if ! cmp -s "$tmp/want" "$2"; then
        echo "FAIL cli: replay $1: output differs (- want, + got):"
        diff "$tmp/want" "$2" | sed 's/^/    /'
        fail=1
    fi
}

# (1) A limiter of 1/s with burst 2: two admitted at 0, the third rejected
# with the time to the next token, one admitted a second later.
cat > "$tmp/lim.json" <<'JSON'
{ "version": "lim", "limiters": { "api": { "rate": "1/s", "burst": 2 } },
  "chain": [ { "limiter": "api" } ], "handler": "hello" }
JSON
cat > "$tmp/lim.jsonl" <<'JSONL'
{"t_ms": 0, "path": "/a"}
{"t_ms": 0, "method": "POST", "path": "/a"}
{"t_ms": 0, "path": "/a", "headers": {"x-user-id": "7"}}

{"t_ms": 1000, "path": "/a"}
JSONL
"$tool" replay "$tmp/lim.json" "$tmp/lim.jsonl" > "$tmp/out" 2> "$tmp/err"
rc=$?
[ "$rc" -eq 0 ] || { echo "FAIL cli: replay limiter exit $rc:"; cat "$tmp/err"; fail=1; }
expect limiter "$tmp/out" <<'OUT'
{"line":1,"t_ms":0,"decision":"admit","code":"ok","stage":null,"route":"default","target":"default"}
{"line":2,"t_ms":0,"decision":"admit","code":"ok","stage":null,"route":"default","target":"default"}
{"line":3,"t_ms":0,"decision":"reject","code":"rate_limited","stage":"api","route":null,"target":null,"retry_after_ms":1000}
{"line":5,"t_ms":1000,"decision":"admit","code":"ok","stage":null,"route":"default","target":"default"}
OUT

# (2) A breaker over a failing handler: open after the 4th failure (at its
# exit, 30 ms + 2.5 ms of latency), reject while open, half-open 1 s later
# and close on the one successful probe.
cat > "$tmp/brk.json" <<'JSON'
{ "version": "brk",
  "breakers": { "pay": { "min_requests": 4, "failure_ratio": 0.5, "window": { "count": 4 },
                         "open_for": "1s", "half_open_probes": 1 } },
  "chain": [],
  "routes": [ { "name": "payments", "stages": [ { "breaker": "pay" } ], "handler": "pay_v1" } ] }
JSON
cat > "$tmp/brk.jsonl" <<'JSONL'
{"t_ms": 0, "path": "/pay", "status": "error", "latency_ms": 5}
{"t_ms": 10, "path": "/pay", "status": "error"}
{"t_ms": 20, "path": "/pay", "status": "error"}
{"t_ms": 30, "path": "/pay", "status": "error", "latency_ms": 2.5}
{"t_ms": 500, "path": "/pay"}
{"t_ms": 1032, "path": "/pay"}
{"t_ms": 1032.5, "path": "/pay"}
{"t_ms": 1040, "path": "/pay", "status": "ok"}
JSONL
"$tool" replay --summary "$tmp/brk.json" "$tmp/brk.jsonl" > "$tmp/out" 2> "$tmp/err"
rc=$?
[ "$rc" -eq 0 ] || { echo "FAIL cli: replay breaker exit $rc:"; cat "$tmp/err"; fail=1; }
expect breaker "$tmp/out" <<'OUT'
{"line":1,"t_ms":0,"decision":"admit","code":"handler_failed","stage":null,"route":"payments","target":"payments"}
{"line":2,"t_ms":10,"decision":"admit","code":"handler_failed","stage":null,"route":"payments","target":"payments"}
{"line":3,"t_ms":20,"decision":"admit","code":"handler_failed","stage":null,"route":"payments","target":"payments"}
{"line":4,"t_ms":30,"decision":"admit","code":"handler_failed","stage":null,"route":"payments","target":"payments"}
{"line":5,"t_ms":500,"decision":"reject","code":"breaker_open","stage":"pay","route":"payments","target":"payments","retry_after_ms":533}
{"line":6,"t_ms":1032,"decision":"reject","code":"breaker_open","stage":"pay","route":"payments","target":"payments","retry_after_ms":1}
{"line":7,"t_ms":1032.5,"decision":"admit","code":"ok","stage":null,"route":"payments","target":"payments"}
{"line":8,"t_ms":1040,"decision":"admit","code":"ok","stage":null,"route":"payments","target":"payments"}
OUT
expect "breaker --summary" "$tmp/err" <<'OUT'
# summary: 8 requests, 6 admitted, 2 rejected
code ok 2
code breaker_open 2
code handler_failed 4
route payments 8
target payments 8
stage pay 2
handler pay_v1 6
t_ms=32.5 breaker pay closed -> open (failure_ratio)
t_ms=1032.5 breaker pay open -> half_open (open_elapsed)
t_ms=1032.5 breaker pay half_open -> closed (probes_ok)
OUT

# (3) A 95/5 split sticky on x-user-id: 100,000 distinct users, then the
# same users again. The canary gets 5% +- 0.5%, every user the same target
# both times, and a second run the identical output.
cat > "$tmp/split.json" <<'JSON'
{ "version": "split", "chain": [],
  "routes": [ { "name": "search", "split": { "key": { "header": "x-user-id" }, "targets": [
      { "name": "stable", "weight": 95, "handler": "search_v1" },
      { "name": "canary", "weight": 5, "handler": "search_v2" } ] } } ] }
JSON
awk 'BEGIN { for (p = 0; p < 2; p++) for (i = 0; i < 100000; i++)
    printf "{\"t_ms\": %d, \"path\": \"/search\", \"headers\": {\"x-user-id\": \"user-%d\"}}\n", p * 100000 + i, i }' \
    > "$tmp/split.jsonl"
"$tool" replay "$tmp/split.json" "$tmp/split.jsonl" > "$tmp/split1" 2> "$tmp/err" || { echo "FAIL cli: replay split:"; cat "$tmp/err"; fail=1; }
"$tool" replay "$tmp/split.json" "$tmp/split.jsonl" > "$tmp/split2" 2>&1
cmp -s "$tmp/split1" "$tmp/split2" || { echo "FAIL cli: replay split: two runs differ"; fail=1; }
sed 's/.*"target":"\([a-z]*\)".*/\1/' "$tmp/split1" > "$tmp/targets"
head -n 100000 "$tmp/targets" > "$tmp/pass1"
tail -n 100000 "$tmp/targets" > "$tmp/pass2"
cmp -s "$tmp/pass1" "$tmp/pass2" || { echo "FAIL cli: replay split: not sticky"; fail=1; }
canary=$(grep -c '^canary$' "$tmp/pass1")
stable=$(grep -c '^stable$' "$tmp/pass1")
if [ "$canary" -lt 4500 ] || [ "$canary" -gt 5500 ] || [ $((canary + stable)) -ne 100000 ]; then
    echo "FAIL cli: replay split: $canary canary, $stable stable of 100000 (want 5% +- 0.5%)"; fail=1
fi

# (4) Bad traces: "TRACE:LINE: message" on stderr, exit 1, nothing on stdout.
bad_trace() { # name, expected message, trace lines...
    name=$1 want=$2
    shift 2
    printf '%s\n' "$@" > "$tmp/bad.jsonl"
    "$tool" replay "$tmp/lim.json" "$tmp/bad.jsonl" > "$tmp/out" 2> "$tmp/err"
    rc=$?
    [ "$rc" -eq 1 ] || { echo "FAIL cli: replay $name: exit $rc, want 1"; fail=1; }
    [ -s "$tmp/out" ] && { echo "FAIL cli: replay $name: wrote to stdout:"; cat "$tmp/out"; fail=1; }
    grep -qF "$tmp/bad.jsonl:$want" "$tmp/err" || { echo "FAIL cli: replay $name: want '$want', got:"; cat "$tmp/err"; fail=1; }
}
ok='{"t_ms": 1, "path": "/a"}'
bad_trace "unknown key" "3: colour: unknown key" "$ok" "$ok" '{"t_ms": 2, "path": "/a", "colour": "red"}'
bad_trace "time backwards" "2: t_ms: goes backwards (1 after 5)" '{"t_ms": 5, "path": "/a"}' "$ok"
bad_trace "syntax" "2: " "$ok" '{"t_ms": 2, "path": "/a"'
bad_trace "not an object" "1: must be a JSON object" '[1, 2]'
bad_trace "no path" "1: path: required" '{"t_ms": 1}'
bad_trace "no time" "1: t_ms: required" '{"path": "/a"}'
bad_trace "negative time" "1: t_ms: must be a number" '{"t_ms": -1, "path": "/a"}'
bad_trace "status" "1: status: must be \"ok\" or \"error\"" '{"t_ms": 1, "path": "/a", "status": "fine"}'
bad_trace "header value" "1: headers.x: must be a string" '{"t_ms": 1, "path": "/a", "headers": {"x": 1}}'
bad_trace "latency" "1: latency_ms: must be a number" '{"t_ms": 1, "path": "/a", "latency_ms": "3"}'

"$tool" replay "$tmp/lim.json" "$tmp/missing.jsonl" > "$tmp/out" 2>&1; rc=$?
[ "$rc" -eq 2 ] || { echo "FAIL cli: replay of a missing trace exit $rc, want 2"; fail=1; }
"$tool" replay "$tmp/lim.json" > /dev/null 2>&1; rc=$?
[ "$rc" -eq 2 ] || { echo "FAIL cli: replay without a trace exit $rc, want 2"; fail=1; }
printf '{ "version": "c", "chain": [ { "custom": "waf" } ], "handler": "h" }' > "$tmp/custom.json"
"$tool" replay "$tmp/custom.json" "$tmp/lim.jsonl" > "$tmp/out" 2> "$tmp/err"; rc=$?
[ "$rc" -eq 1 ] && [ ! -s "$tmp/out" ] && grep -qF 'unknown stage kind "waf"' "$tmp/err" ||
    { echo "FAIL cli: replay with a custom stage exit $rc:"; cat "$tmp/err"; fail=1; }

# (5) --svg: an SVG with one admitted and one rejected bar per interval and
# breaker bands, renamed into place (no .tmp left); an unwritable path fails.
"$tool" replay --quiet --svg "$tmp/t.svg" "$tmp/brk.json" "$tmp/brk.jsonl" > "$tmp/out" 2> "$tmp/err"
rc=$?
[ "$rc" -eq 0 ] && [ ! -s "$tmp/out" ] || { echo "FAIL cli: replay --svg exit $rc:"; cat "$tmp/err"; fail=1; }
head -c 4 "$tmp/t.svg" | grep -q '^<svg' || { echo "FAIL cli: replay --svg: not an SVG"; fail=1; }
[ "$(grep -c 'class="adm"' "$tmp/t.svg")" -eq 100 ] && [ "$(grep -c 'class="rej"' "$tmp/t.svg")" -eq 100 ] ||
    { echo "FAIL cli: replay --svg: want 100 admitted and 100 rejected bars"; fail=1; }
grep -q 'class="band open"' "$tmp/t.svg" || { echo "FAIL cli: replay --svg: no open band"; fail=1; }
grep -qi '<script' "$tmp/t.svg" && { echo "FAIL cli: replay --svg: has a script"; fail=1; }
[ -e "$tmp/t.svg.tmp" ] && { echo "FAIL cli: replay --svg: left t.svg.tmp"; fail=1; }
"$tool" replay --svg "$tmp/no/such/dir/t.svg" "$tmp/lim.json" "$tmp/lim.jsonl" > "$tmp/out" 2> "$tmp/err"
rc=$?
[ "$rc" -eq 1 ] && [ ! -s "$tmp/out" ] || { echo "FAIL cli: replay --svg to a bad path exit $rc"; fail=1; }

[ "$fail" -eq 0 ] && echo "cli: check on shipped, broken, syntax-error and missing configs; replay golden tests"
exit "$fail"
