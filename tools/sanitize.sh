#!/usr/bin/env bash
# Build the compiled core with AddressSanitizer + UndefinedBehaviorSanitizer (and Cython's
# bounds checks and the C drivers' buffer asserts on) in a scratch copy of the tree, then run
# the test suite against it.
#   bash tools/sanitize.sh                 # whole suite
#   bash tools/sanitize.sh tests/test_x.py # a part of it (any pytest arguments)
set -euo pipefail
# shellcheck source=tools/sanitized_build.sh
source "$(dirname "$0")/sanitized_build.sh"
python -m pytest -q -p no:cacheprovider "${@:-tests}"
