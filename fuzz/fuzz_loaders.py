"""atheris fuzz target for rnnengine.load (ONNX, .npz and .safetensors).

Contract under test: any bytes either load into a model that then runs, or raise
rnnengine.ModelError. Any other exception, a crash, or a hang is a finding.

    python fuzz/seeds.py fuzz/corpus                     # valid seeds to mutate
    python fuzz/fuzz_loaders.py fuzz/corpus -max_total_time=60
"""
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import numpy as np
    import rnnengine

FOLDER = tempfile.mkdtemp(prefix="rnnengine-fuzz-")
ZIP_MAGIC = b"PK"


def test_one_input(data: bytes) -> None:
    # load() chooses the format by content (zip -> .npz, length + "{" -> .safetensors, else
    # ONNX); the suffix only mirrors what a user's file would be called.
    suffix = (".npz" if data[:2] == ZIP_MAGIC
              else ".safetensors" if data[8:9] == b"{" else ".onnx")
    path = os.path.join(FOLDER, "model" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    try:
        model = rnnengine.load(path)
    except rnnengine.ModelError:
        return
    # A model that loads must run: small input, its own declared sizes.
    if model.input_size <= 4096:
        x = np.zeros((2, 1, model.input_size), np.float32)
        model.run(x)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
