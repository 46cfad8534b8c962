#!/bin/sh
# tests/test_install.sh - `make install` into a temporary prefix (and into a
# DESTDIR staging tree), then build examples/hello out of tree with the
# installed pkg-config file, linked shared and static, and run both.
# `make uninstall` must leave the prefix empty of floodgate files.
set -eu
MAKE=${MAKE:-make}
CC=${CC:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
expected_first="floodgate"

$MAKE --no-print-directory -s install PREFIX="$prefix" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pkg-config --exists floodgate

# Consumers must not inherit Concurrency Kit's -D__x86_64__.
cflags=$(pkg-config --cflags floodgate)
case "$cflags" in *-D*) echo "FAIL install: pkg-config cflags leak defines: $cflags"; exit 1 ;; esac

mkdir "$tmp/app"
cp examples/hello.c "$tmp/app/"
cd "$tmp/app"
# shellcheck disable=SC2046 # pkg-config output is meant to be split
$CC -std=c11 -Wall -Wextra -Wpedantic -Werror hello.c -o hello_shared $(pkg-config --cflags --libs floodgate)
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Wextra -Wpedantic -Werror hello.c -static -o hello_static \
    $(pkg-config --static --cflags --libs floodgate)
cd - >/dev/null

LD_LIBRARY_PATH="$prefix/lib" "$tmp/app/hello_shared" >"$tmp/out_shared"
"$tmp/app/hello_static" >"$tmp/out_static"
for out in "$tmp/out_shared" "$tmp/out_static"; do
    head -1 "$out" | grep -q "^$expected_first " || { echo "FAIL install: bad output"; cat "$out"; exit 1; }
    grep -q '^GET /world -> FG_OK' "$out" || { echo "FAIL install: /world not OK"; cat "$out"; exit 1; }
    grep -q '^GET /anonymous -> FG_EREJECTED.*rejected by api-key' "$out" ||
        { echo "FAIL install: /anonymous not rejected"; cat "$out"; exit 1; }
done
ldd "$tmp/app/hello_shared" | grep -q 'libfloodgate.so.0 ' ||
    { echo "FAIL install: shared hello does not use libfloodgate.so.0"; exit 1; }
if ldd "$tmp/app/hello_static" 2>/dev/null | grep -q libfloodgate; then
    echo "FAIL install: static hello links libfloodgate dynamically"; exit 1
fi

# The command line is installed and runs.
"$prefix/bin/floodgate" version | grep -q '^floodgate ' ||
    { echo "FAIL install: bin/floodgate missing or broken"; exit 1; }

# DESTDIR stages under another root without changing the recorded prefix.
$MAKE --no-print-directory -s install DESTDIR="$tmp/stage" PREFIX=/opt/fg >/dev/null
test -f "$tmp/stage/opt/fg/include/floodgate.h"
test -L "$tmp/stage/opt/fg/lib/libfloodgate.so.0"
grep -q '^prefix=/opt/fg$' "$tmp/stage/opt/fg/lib/pkgconfig/floodgate.pc"

$MAKE --no-print-directory -s uninstall PREFIX="$prefix" >/dev/null
left=$(find "$prefix" -type f -o -type l | grep -c floodgate || true)
[ "$left" -eq 0 ] || { echo "FAIL install: uninstall left $left files"; exit 1; }
echo "install: shared and static out-of-tree hello ran; DESTDIR and uninstall work"
