#!/usr/bin/env bash
# The fuzzers against the AddressSanitizer + UndefinedBehaviorSanitizer build, so a read or
# write out of bounds is a finding even when it does not crash:
#   1. fuzz/fuzz_loaders.py (atheris) from the seeds of fuzz/seeds.py (single- and multi-layer
#      ONNX and .npz, chains of mixed hidden sizes, a cycle); every model that loads is run
#      (Model.run, Stream, Pool: fuzz/exercise.py);
#   2. fuzz/fuzz_session.py (atheris): whole graphs through InferenceSession (load, run,
#      stream, whose step runs compiled from the third on) from the same corpus (its
#      session.onnx and session_compiled.onnx seeds);
#   3. fuzz/fuzz_stateful.py (atheris): random small stateful graphs through SessionStream,
#      SessionPool and Batcher, good and bad calls interleaved; outputs against ONNX Runtime,
#      state after every failed call against a replay ($STATEFUL_RUNS inputs, about a minute);
#   4. tests/runtime/test_fuzz_api.py (hypothesis): random stacks through the public constructors.
# Bounded and reproducible by default (fixed seed and counts, a few minutes on CI):
#   bash tools/fuzz_sanitized.sh                       # CI
#   FUZZ_ARGS="-max_total_time=600" API_EXAMPLES=5000 bash tools/fuzz_sanitized.sh  # by hand
# On a finding the crashing input is printed and kept in $FUZZ_ARTIFACTS (default: a temp dir).
set -euo pipefail
FUZZ_ARGS=${FUZZ_ARGS:-"-seed=1 -runs=20000"}
API_EXAMPLES=${API_EXAMPLES:-300}
STATEFUL_RUNS=${STATEFUL_RUNS:-400}
artifacts=${FUZZ_ARTIFACTS:-$(mktemp -d)}
# The extension is not linked against gcc's libasan (only instrumented for it): the ASan
# runtime it uses is the one preloaded below.
SANITIZE_LDFLAGS="-fsanitize=undefined"
# shellcheck source=tools/sanitized_build.sh
source "$(dirname "$0")/sanitized_build.sh"
# atheris's libFuzzer must own the coverage hooks: preloading the compiler's libasan alone
# shadows them (no input ever adds coverage). atheris ships an ASan runtime with libFuzzer
# built in; the gcc-instrumented extension runs against it (same ASan ABI), with gcc's UBSan.
atheris_dir=$(python -c 'import atheris; print(atheris.path())')
export LD_PRELOAD="$atheris_dir/asan_with_fuzzer.so:$(gcc -print-file-name=libubsan.so)"
corpus="$work/corpus"
python fuzz/seeds.py "$corpus"
# libFuzzer's own leak check is off for the same reason as LeakSanitizer's (sanitized_build.sh).
# shellcheck disable=SC2086
python fuzz/fuzz_loaders.py "$corpus" $FUZZ_ARGS -timeout=30 -rss_limit_mb=6144 -detect_leaks=0 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 > "$artifacts/fuzz.log" 2>&1 \
    || { grep -v '^WARNING' "$artifacts/fuzz.log" | tail -n 60; ls -l "$artifacts"; exit 1; }
grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$artifacts/fuzz.log"
# shellcheck disable=SC2086
python fuzz/fuzz_session.py "$corpus" $FUZZ_ARGS -timeout=30 -rss_limit_mb=6144 -detect_leaks=0 \
    -artifact_prefix="$artifacts/session-" -print_final_stats=1 > "$artifacts/fuzz_session.log" 2>&1 \
    || { grep -v '^WARNING' "$artifacts/fuzz_session.log" | tail -n 60; ls -l "$artifacts"; exit 1; }
grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$artifacts/fuzz_session.log"
python fuzz/fuzz_stateful.py -atheris -seed=1 -runs="$STATEFUL_RUNS" -timeout=60 -rss_limit_mb=6144 \
    -detect_leaks=0 -artifact_prefix="$artifacts/stateful-" -print_final_stats=1 \
    > "$artifacts/fuzz_stateful.log" 2>&1 \
    || { grep -v '^WARNING' "$artifacts/fuzz_stateful.log" | tail -n 60; ls -l "$artifacts"; exit 1; }
grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$artifacts/fuzz_stateful.log"
RNNENGINE_API_FUZZ_EXAMPLES=$API_EXAMPLES python -m pytest -q -p no:cacheprovider \
    tests/runtime/test_fuzz_api.py --hypothesis-seed=1 --hypothesis-show-statistics
