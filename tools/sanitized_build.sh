# Sourced by tools/sanitize.sh and tools/fuzz_sanitized.sh: builds the compiled core with
# AddressSanitizer + UndefinedBehaviorSanitizer (Cython's bounds checks and the C drivers'
# RNN_ASSERT buffer checks on: RNNENGINE_DEBUG=1) in a scratch copy of the tree, cds there and
# exports what a Python process needs to run against it ($work is removed on exit).
# Leak detection is off: CPython itself keeps memory alive until exit, which LeakSanitizer
# would report; growth over time is checked by tests/core/test_no_leaks.py instead.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && git ls-files -co --exclude-standard | grep -vE '\.(so|o)$|^src/rnnengine/_.*\.c$' \
    | tar -cf - -T -) | tar -C "$work" -xf -
cd "$work"
RNNENGINE_SANITIZE_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
    RNNENGINE_SANITIZE_LDFLAGS="${SANITIZE_LDFLAGS:--fsanitize=address,undefined}" \
    RNNENGINE_DEBUG=1 python setup.py -q build_ext --inplace >/dev/null
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$work/src"
