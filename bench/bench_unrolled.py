"""Unrolled cells (PyTorch nn.LSTMCell / nn.GRUCell exports: Gemm/Split/Sigmoid/Tanh, no
LSTM node), one step per call with the state fed back: rnnengine after the rewrite
(``onnx.rewrite``: one LSTM/GRU node on the fused kernels), rnnengine before it (the same
file planned operator by operator), ONNX Runtime plain and with IOBinding.

    python bench/bench_unrolled.py [--quick] [--silero-ifless PATH]

The last row is silero-vad's own ``silero_vad_op18_ifless.onnx`` (shipped in tests/data; MIT):
a dynamo export whose decoder LSTMCell is unrolled in both branches of its one If.
``--silero-ifless`` points at another copy.

One process, every engine single-threaded, batches interleaved, best of several. "before"
is the session with the rewrite switched off for this benchmark only (the module attribute
``rnnengine.runtime.session.fuse_unrolled_cells`` replaced by the identity while it loads).
"""
import argparse
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

from _models import SILERO_IFLESS, session_models as sm, unrolled_models as um  # noqa: E402
from bench_session import measure, ort_plain  # noqa: E402

import rnnengine  # noqa: E402
import rnnengine.runtime.session  # noqa: E402
from rnnengine.interop.ort import graph_iobinding_stepper  # noqa: E402


def unrewritten(data: bytes):
    real = rnnengine.runtime.session.fuse_unrolled_cells
    rnnengine.runtime.session.fuse_unrolled_cells = lambda model, base_dir: model
    try:
        return rnnengine.InferenceSession(data)
    finally:
        rnnengine.runtime.session.fuse_unrolled_cells = real


def stepper(stream, feeds_of_step):
    k = [0]

    def step():
        out = stream.step(feeds_of_step(k[0]))
        k[0] += 1
        return out
    return step


def row(kind: str, dynamo: bool, features: int, hidden: int, reps: int) -> None:
    data = um.torch_cell(kind, dynamo, features=features, hidden=hidden)
    pairs = {"hn": "h", "cn": "c"} if kind == "lstm" else {"hn": "h"}
    zero = {i: np.zeros((1, hidden), np.float32) for i in pairs.values()}
    rng = np.random.default_rng(0)
    xs = (0.5 * rng.standard_normal((64, 1, features))).astype(np.float32)
    exporter = "dynamo" if dynamo else "TorchScript"
    compare(f"nn.{'LSTMCell' if kind == 'lstm' else 'GRUCell'}({features}, {hidden}) + Linear, "
            f"{exporter} export, one step per call", data, lambda k: {"x": xs[k % 64]},
            pairs, zero, {}, reps)


def compare(title, data, feeds, pairs, zero, fixed, reps) -> None:
    after = rnnengine.InferenceSession(data)
    before = unrewritten(data)
    assert any(v == "recurrent" for v in after.placement().values())
    assert not any(v == "recurrent" for v in before.placement().values())
    ort_sess = sm.ort_session(data)
    full = lambda k: {**feeds(k), **fixed}  # noqa: E731
    contenders = {
        "rnnengine, cell rewritten": stepper(after.stream(feeds=fixed), feeds),
        "rnnengine, as exported": stepper(before.stream(state=pairs, feeds=fixed), feeds),
        "ORT run": ort_plain(ort_sess, full, pairs, zero),
        "ORT IOBinding": graph_iobinding_stepper(ort_sess, full, pairs, zero)}
    measure(title, contenders, reps, "rnnengine, cell rewritten")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--silero-ifless", metavar="PATH", default=SILERO_IFLESS)
    args = parser.parse_args()
    reps = 5 if args.quick else 15
    row("lstm", False, 10, 16, reps)
    row("lstm", False, 64, 128, reps)
    row("lstm", True, 256, 256, reps)
    row("gru", False, 64, 128, reps)
    xs = (0.5 * np.random.default_rng(2).standard_normal((64, 1, 8, 64))).astype(np.float32)
    compare("for t in range(8): nn.LSTMCell(64, 128) on x[:, t], then Linear (TorchScript): "
            "8 steps per call", um.torch_cell_loop(steps=8, features=64, hidden=128),
            lambda k: {"x": xs[k % 64]}, {"hn": "h", "cn": "c"},
            {i: np.zeros((1, 128), np.float32) for i in ("h", "c")}, {}, reps)
    if args.silero_ifless:
        with open(args.silero_ifless, "rb") as f:
            data = f.read()
        chunks = (0.1 * np.random.default_rng(1).standard_normal((64, 1, 512))).astype(np.float32)
        compare("Silero VAD op18 ifless (dynamo export, LSTMCell unrolled), 512 samples per step",
                data, lambda k: {"input": chunks[k % 64]}, {"stateN": "state"},
                {"state": np.zeros((2, 1, 128), np.float32)}, {"sr": np.array(16000, np.int64)},
                reps)


if __name__ == "__main__":
    main()
