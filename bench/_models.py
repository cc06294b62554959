"""The models the benchmarks run: the one place bench/ reaches into tests/.

* Exported models: the files in tests/data (silero-vad, DTLN, GTCRN), which the tests check
  against ONNX Runtime; bench reads them there instead of keeping a second copy of several MB.
* Built models: ``session_models`` (the PyTorch exports of the InferenceSession tests:
  ``embedding_lstm``, ``packed_lstm``, and ``ort_session``) and ``unrolled_models`` (unrolled
  ``nn.LSTMCell``/``GRUCell`` exports). One copy, in tests/: the tests check exactly the models
  these benchmarks time. They are loaded here by file path, so a benchmark puts nothing of
  tests/ (its conftest.py, its modules) on ``sys.path``.
"""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
SILERO = os.path.join(DATA, "silero_vad_16k_op15.onnx")
SILERO_IFLESS = os.path.join(DATA, "silero_vad_op18_ifless.onnx")


def _builders(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                  os.path.join(ROOT, "tests", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


session_models = _builders("session_models")
unrolled_models = _builders("unrolled_models")
