#!/bin/sh
# tests/test_headers.sh - every public header compiles on its own as C11 and
# as C++ (g++ -fsyntax-only), warning-free, and the umbrella header works from
# C++ code that uses it.
set -eu
CC=${CC:-cc}
CXX=${CXX:-g++}
WARN="-Wall -Wextra -Wpedantic -Werror"
n=0
for h in include/floodgate.h include/floodgate/*.h; do
    rel=${h#include/}
    printf '#include <%s>\ntypedef int fg_test_tu_;\n' "$rel" | $CC -std=c11 $WARN -Iinclude -x c -fsyntax-only -
    printf '#include <%s>\ntypedef int fg_test_tu_;\n' "$rel" | $CXX -std=c++11 $WARN -Iinclude -x c++ -fsyntax-only -
    n=$((n + 1))
done
$CXX -std=c++11 $WARN -Iinclude -fsyntax-only tests/cxx_header.cpp
echo "headers: $n headers compile standalone as C11 and C++11"
