"""atheris fuzz target for rnnengine.load (ONNX, .npz and .safetensors).

Contract under test: any bytes either load into a model that then runs (Model.run with and
without lengths, and for one-way models a Stream and a Pool), or raise rnnengine.ModelError.
Any other exception, a crash, or a hang is a finding; run it against the sanitizer build
(tools/fuzz_sanitized.sh) so out-of-bounds reads and writes are findings too.

    python fuzz/seeds.py fuzz/corpus                     # valid seeds to mutate
    python fuzz/fuzz_loaders.py fuzz/corpus -max_total_time=60
"""
import os
import sys
import tempfile
import warnings

import atheris

with atheris.instrument_imports():
    import rnnengine
    from exercise import run_every_way

# A chain of mixed hidden sizes loads with a UserWarning; thousands of them are noise here.
warnings.simplefilter("ignore")

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
    # A model that loads must run, every way it can be run, on its own declared sizes (this
    # is what reaches the C drivers' buffers: a multi-layer model whose layers disagree would
    # overflow them, and the sanitizer build of tools/fuzz_sanitized.sh catches that).
    if model.input_size > 4096 or model.num_parameters > 4_000_000:
        return
    run_every_way(model)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
