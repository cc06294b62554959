"""Whole models, one step at a time: rnnengine.InferenceSession streams and pools against
ONNX Runtime on the same .onnx file (protocol: docs/benchmarks.md).

    python bench/bench_session.py            # all rows, a couple of minutes
    python bench/bench_session.py --quick    # fewer repetitions

Rows (every engine single-threaded, one process, interleaved, best of several batches):

* DTLN-shaped: 2-layer LSTM 257->128->128, Dense 128->257 + Sigmoid, (h, c) of both layers
  packed in one state tensor [1, 2, 128, 2] as tf2onnx writes it; one block per step.
* model (a): Embedding -> 2-layer LSTM -> Linear -> LogSoftmax (a PyTorch export), one token
  per step with explicit (h0, c0) -> (hn, cn): the tests' size (H=16) and H=256.
* Silero VAD (tests/data): one 512-sample chunk per step, state [2, 1, 128], sr fixed.
* Silero pool: 16 streams in one pool.step against 16 ORT calls.

ORT runs twice: plain ``run`` with the state fed back by hand, and with IOBinding (inputs
and outputs bound once, the state ping-ponged between two bound buffers). OpenVINO, when
installed, compiles the same file (f32 hint) and is fed the state by hand, and runs its
best streaming case: the graph made stateful (MakeStateful on the state pairs, static shapes),
with its default precision (bf16 on this CPU) and with f32 forced. Each row prints
every engine's max |diff| against ORT plain over the timed steps and rnnengine's ratios.
"""
import argparse
import os
import sys

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

from _models import SILERO, session_models as sm  # noqa: E402
from bench_rnn import interleaved  # noqa: E402

import rnnengine  # noqa: E402
from rnnengine.cli.bench import openvino_stateful_model  # noqa: E402
from rnnengine.interop.ort import graph_iobinding_stepper  # noqa: E402


def ort_plain(sess, feeds_of_step, pairs, zero):
    names = [o.name for o in sess.get_outputs()]
    state = dict(zero)
    k = [0]

    def step():
        outs = dict(zip(names, sess.run(None, {**feeds_of_step(k[0]), **state})))
        for out, inp in pairs.items():
            state[inp] = outs[out]
        k[0] += 1
        return [outs[n] for n in names if n not in pairs]
    return step


def openvino_plain(model_bytes, feeds_of_step, pairs, zero):
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(model_bytes, b""), "CPU", {
            "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    except RuntimeError as e:   # e.g. Silero: "Model wasn't fully converted"
        print(f"(OpenVINO cannot compile this model: {str(e).splitlines()[0][:100]})")
        return None
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]
    state = dict(zero)
    k = [0]

    def step():
        res = request.infer({**feeds_of_step(k[0]), **state})
        outs = {n: res[compiled.output(n)].copy() for n in names}   # results are reused buffers
        for out, inp in pairs.items():
            state[inp] = outs[out]
        k[0] += 1
        return [outs[n] for n in names if n not in pairs]
    return step


def openvino_stateful(model_bytes, feeds_of_step, pairs, zero, f32):
    """OpenVINO's best streaming case (``openvino_stateful_model``: MakeStateful on the state
    pairs, static shapes), default precision or f32 forced; only the step's feeds cross the
    call."""
    try:
        first = feeds_of_step(0)
        shapes = {**{n: v.shape for n, v in first.items() if v.ndim},
                  **{n: v.shape for n, v in zero.items()}}
        compiled = openvino_stateful_model(model_bytes, shapes, pairs, f32)
    except ImportError:
        return None
    except RuntimeError as e:
        print(f"(OpenVINO stateful: {str(e).splitlines()[0][:100]})")
        return None
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]
    k = [0]

    def step():
        res = request.infer(feeds_of_step(k[0]))
        k[0] += 1
        return [res[compiled.output(n)].copy() for n in names]
    return step


def row(title, model, feeds_of_step, zero, fixed, reps):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = rnnengine.InferenceSession(data)
    stream = sess.stream(feeds=fixed)
    pairs = stream.state_names
    ort_sess = sm.ort_session(data)
    k = [0]

    def ours():
        out = stream.step(feeds_of_step(k[0]))
        k[0] += 1
        return out

    full = lambda i: {**feeds_of_step(i), **fixed}  # noqa: E731
    contenders = {"rnnengine stream.step": ours,
                  "ORT run": ort_plain(ort_sess, full, pairs, zero),
                  "ORT IOBinding": graph_iobinding_stepper(ort_sess, full, pairs, zero)}
    ov = openvino_plain(data, full, pairs, zero)
    if ov is not None:
        contenders["OpenVINO f32 infer"] = ov
        for name, f32 in (("OpenVINO default stateful", False), ("OpenVINO f32 stateful", True)):
            stateful = openvino_stateful(data, full, pairs, zero, f32)
            if stateful is not None:
                contenders[name] = stateful
    measure(title, contenders, reps, "rnnengine stream.step")


def measure(title, contenders, reps, ours) -> None:
    """Max |diff| of each contender against ORT plain over the same 50 steps from zero state
    (copies: IOBinding hands out views of its bound output buffers), then the interleaved
    times, reported against ``ours``."""
    check = {name: [[np.array(a) for a in fn()] for _ in range(50)]
             for name, fn in contenders.items()}
    diffs = {name: max(float(np.abs(a - b).max()) for s, r in zip(check[name], check["ORT run"])
                       for a, b in zip(s, r)) for name in contenders}
    times = dict(zip(contenders, interleaved(list(contenders.values()), reps)))
    report(title, times, diffs, ours)


def pool_row(reps, streams=16):
    sess = rnnengine.InferenceSession(SILERO)
    sr = np.array(16000, np.int64)
    pool = sess.pool(capacity=streams, feeds={"sr": sr})
    ids = [pool.open() for _ in range(streams)]
    rng = np.random.default_rng(1)
    xs = (0.1 * rng.standard_normal((streams, 512))).astype(np.float32)
    ort_sess = sm.ort_session(SILERO)
    states = [np.zeros((2, 1, 128), np.float32) for _ in range(streams)]

    def ort_16():
        outs = []
        for j in range(streams):
            y, states[j] = ort_sess.run(None, {"input": xs[j:j + 1], "state": states[j], "sr": sr})
            outs.append(y)
        return [np.concatenate(outs)]

    contenders = {f"rnnengine pool.step ({streams})": lambda: pool.step(ids, {"input": xs}),
                  f"ORT run x{streams}": ort_16}
    check = {name: [fn() for _ in range(20)] for name, fn in contenders.items()}
    ref = check[f"ORT run x{streams}"]
    diffs = {name: max(float(np.abs(a - b).max()) for s, r in zip(check[name], ref)
                       for a, b in zip(s, r)) for name in contenders}
    times = dict(zip(contenders, interleaved(list(contenders.values()), reps)))
    report(f"Silero VAD, {streams} streams per step ({pool!r})", times, diffs,
           f"rnnengine pool.step ({streams})")


def report(title, times, diffs, ours):
    print(f"\n### {title}\n")
    print("| engine | us/step | max abs diff vs ORT | rnnengine speed-up |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        ratio = t / times[ours]
        print(f"| {name} | {t * 1e6:.1f} | {diffs[name]:.1e} | "
              f"{'' if name == ours else f'{ratio:.2f}x'} |")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 5 if args.quick else 15
    rng = np.random.default_rng(0)
    blocks = (0.5 * rng.standard_normal((64, 1, 1, 257))).astype(np.float32)
    row("DTLN-shaped: LSTM 257->128->128, Dense 128->257 + Sigmoid, state [1, 2, 128, 2]",
        sm.packed_lstm(features=257, hidden=128, outputs=257),
        lambda k: {"x": blocks[k % 64]}, {"state": np.zeros((1, 2, 128, 2), np.float32)}, {},
        reps)
    for vocab, embed, hidden in ((20, 8, 16), (256, 64, 256)):
        tokens = rng.integers(0, vocab, (64, 1, 1)).astype(np.int64)
        row(f"model (a): Embedding({vocab}, {embed}) -> LSTM {embed}->{hidden}->{hidden} -> "
            "Linear -> LogSoftmax, one token per step",
            sm.embedding_lstm(True, vocab=vocab, embed=embed, hidden=hidden),
            lambda k, t=tokens: {"tokens": t[k % 64]},
            {"h0": np.zeros((2, 1, hidden), np.float32),
             "c0": np.zeros((2, 1, hidden), np.float32)}, {}, reps)
    chunks = (0.1 * rng.standard_normal((64, 1, 512))).astype(np.float32)
    with open(SILERO, "rb") as f:
        silero = f.read()
    row("Silero VAD 16 kHz, 512 samples per step", silero, lambda k: {"input": chunks[k % 64]},
        {"state": np.zeros((2, 1, 128), np.float32)}, {"sr": np.array(16000, np.int64)}, reps)
    pool_row(reps)


if __name__ == "__main__":
    main()
