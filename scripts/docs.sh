#!/bin/sh
# scripts/docs.sh - build the API reference with Doxygen (what `make docs` runs).
#
# Renders the public headers (through scripts/doxygen-filter.awk, see
# docs/Doxyfile), docs/index.md as the main page, and the guides and ADRs
# under docs/ as related pages, into build/docs/html/. Doxygen's warnings go
# to build/docs/warnings.log; any warning (an undocumented public symbol, a
# broken reference, a markup error) fails the build, so the reference stays
# complete. Needs only doxygen and a POSIX awk; works on a clean clone.
set -eu

cd "$(dirname "$0")/.."

out=build/docs
log=$out/warnings.log

if ! command -v doxygen >/dev/null 2>&1; then
    echo "docs: doxygen not found; install it with: scripts/deps.sh docs" >&2
    exit 1
fi

# The version shown on every page, read from the header as the Makefile does.
FG_DOCS_VERSION=$(sed -n 's/^#define FG_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9][0-9]*\).*/\2/p' \
    include/floodgate/version.h | paste -sd. -)
export FG_DOCS_VERSION

# Start from nothing, so no page of an earlier run survives.
rm -rf "$out"
mkdir -p "$out"

if ! doxygen docs/Doxyfile >"$out/doxygen.log" 2>&1; then
    cat "$out/doxygen.log" >&2
    echo "docs: doxygen failed (its output is in $out/doxygen.log)" >&2
    exit 1
fi

# Doxygen reports some problems on stderr rather than in the log file.
grep -i 'warning:\|error:' "$out/doxygen.log" >>"$log" || true

if [ -s "$log" ]; then
    cat "$log" >&2
    echo "docs: $(wc -l <"$log") warning(s), listed in $log" >&2
    exit 1
fi

echo "docs: no warnings; the API reference is $out/html/index.html"
