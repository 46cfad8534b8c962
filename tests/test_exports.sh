#!/bin/sh
# tests/test_exports.sh - the shared library exports exactly the FG_API
# functions declared in the public headers: nothing more (no ck_, no fg__
# internals) and nothing less (a declared function that was never defined).
#
# Usage: tests/test_exports.sh build/<variant>/libfloodgate.so <variant>
set -eu
lib=$1
variant=${2:-release}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sort -u >"$tmp/exported"
# A declaration is "FG_API <type> <name>(": take the identifier before "(".
sed -n 's/^FG_API[^(]*[ *]\(fg_[a-z0-9_]*\)(.*/\1/p' include/floodgate.h include/floodgate/*.h |
    sort -u >"$tmp/declared"

fail=0
if [ "$variant" = release ]; then
    # Sanitizer runtimes add their own hooks to an instrumented library, so
    # "nothing else" is checked on the release build only.
    if grep -v '^fg_' "$tmp/exported" >"$tmp/foreign"; then
        echo "FAIL exports: non-fg_ symbols exported:"; cat "$tmp/foreign"; fail=1
    fi
    if ! diff -u "$tmp/declared" "$tmp/exported" >"$tmp/diff"; then
        echo "FAIL exports: exported symbols differ from the FG_API declarations" \
             "(- declared only, + exported only):"
        cat "$tmp/diff"; fail=1
    fi
else
    grep '^fg_' "$tmp/exported" >"$tmp/exported_fg" || true
    if ! diff -u "$tmp/declared" "$tmp/exported_fg" >"$tmp/diff"; then
        echo "FAIL exports: fg_ symbols differ from the FG_API declarations:"; cat "$tmp/diff"; fail=1
    fi
fi
n=$(wc -l <"$tmp/declared")
if [ "$fail" -ne 0 ]; then
    echo "0 passed, 1 failed"
    exit 1
fi
echo "exports: $n fg_ functions exported, exactly the declared ones"
