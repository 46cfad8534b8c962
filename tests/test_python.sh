#!/bin/sh
# tests/test_python.sh - the Python binding (examples/python/floodgate.py):
# its unittest suite, run against the freshly built shared library. The
# suite checks the mirrored structures against the headers (it compiles a
# small probe with cc), then the runtime, limiter, breaker, traceparent,
# metrics, the split API, callbacks' lifetime and threads.
#
# Usage: test_python.sh BUILD_DIR   (the directory holding libfloodgate.so)
# python3 comes from scripts/deps.sh lang. Without it the test fails, unless
# FG_NO_DEPS=1 (offline and packager builds), where it is skipped with a
# message. The suite is bounded to 300 s (it takes a few seconds).
set -u
build=${1:?usage: test_python.sh BUILD_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)

lib="$build/libfloodgate.so"
if [ ! -e "$lib" ]; then
    echo "FAIL python: $lib not found (build the library first)"
    exit 1
fi
lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")

if ! command -v python3 > /dev/null 2>&1; then
    if [ "${FG_NO_DEPS:-0}" = 1 ]; then
        echo "SKIP python: python3 not installed and FG_NO_DEPS=1 (scripts/deps.sh lang installs it)"
        exit 0
    fi
    echo "FAIL python: python3 not installed (run scripts/deps.sh lang)"
    exit 1
fi

# Bound the run when coreutils' timeout is there; the suite's own waits are
# bounded too (threads joined and queues read with timeouts).
bound=""
if command -v timeout > /dev/null 2>&1; then
    bound="timeout 300"
fi

cd "$here/examples/python" || exit 1
# -B: no __pycache__ in the source tree. PYTHONDEVMODE shows ResourceWarnings
# and unraisable exceptions the suite does not expect.
out=$(mktemp)
FLOODGATE_LIB="$lib" FLOODGATE_INCLUDE="$here/include" PYTHONDEVMODE=1 \
    $bound python3 -B -m unittest -v test_floodgate > "$out" 2>&1
rc=$?
if [ "$rc" -eq 0 ]; then
    tail -n 3 "$out"
    rm -f "$out"
    echo "ok python: examples/python unittest suite"
    exit 0
fi
cat "$out"
rm -f "$out"
if [ "$rc" -eq 124 ]; then
    echo "FAIL python: the suite did not finish within 300 s"
else
    echo "FAIL python: examples/python unittest suite (exit $rc)"
fi
exit 1
