#!/usr/bin/env bash
# Build the compiled core with AddressSanitizer + UndefinedBehaviorSanitizer (and Cython's
# bounds checks back on) in a scratch copy of the tree, then run the test suite against it.
#   bash tools/sanitize.sh                 # whole suite
#   bash tools/sanitize.sh tests/test_x.py # a part of it (any pytest arguments)
# Leak detection is off: CPython itself keeps memory alive until exit, which LeakSanitizer
# would report; growth over time is checked by tests/test_no_leaks.py instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && git ls-files -co --exclude-standard | grep -vE '\.(so|o)$|^src/rnnengine/_.*\.c$' \
    | tar -cf - -T -) | tar -C "$work" -xf -
cd "$work"
export CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
export LDFLAGS="-fsanitize=address,undefined"
RNNENGINE_DEBUG=1 python setup.py -q build_ext --inplace >/dev/null
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$work/src"
python -m pytest -q -p no:cacheprovider "${@:-tests}"
