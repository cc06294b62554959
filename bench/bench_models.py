"""Real published models, one stream step at a time: rnnengine against ONNX Runtime (plain
``run`` with the state fed back by hand, and IOBinding with the state ping-ponged between
bound buffers: its best case) and OpenVINO's stateful model (MakeStateful, f32 and its
default precision) where it converts, on the very .onnx files in tests/data.

    python bench/bench_models.py            # every row (a few minutes)
    python bench/bench_models.py --quick    # fewer rounds

Every engine single-threaded, one process, rounds interleaved; each figure is the median
over rounds of the calling thread's CPU time per step (``time.thread_time``), so another
job on the machine does not count against whichever engine it preempts. Each row also gives
every engine's max |diff| against ORT plain over the same 50 steps from zero state.

Rows: Silero VAD (both exports in tests/data: 512 samples per step, sr fixed), DTLN
model_1 (magnitude mask, LSTM nodes) and model_2 (time-domain, an unrolled LSTM), DTLN as
its author runs it (model_1 then model_2 per 8 ms block), GTCRN (streaming enhancer: convs,
GRUs, caches), and a pool of 16 Silero streams against sixteen ORT calls.
"""
import argparse
import os
import statistics
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import rnnengine  # noqa: E402
from rnnengine.core import kernels as _kernels  # noqa: E402
from rnnengine.cli.bench import openvino_stateful_model  # noqa: E402
from rnnengine.interop.ort import graph_iobinding_stepper  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _models import DATA  # noqa: E402
from bench_rnn import calibrate, cpu_model  # noqa: E402

SR = {"sr": np.array(16000, np.int64)}

# file -> (step feeds' shapes, state pairs {output: input}, fixed feeds)
MODELS = {
    "silero_vad.onnx": ({"input": (1, 512)}, {"stateN": "state"}, SR),
    "silero_vad_16k_op15.onnx": ({"input": (1, 512)}, {"stateN": "state"}, SR),
    "silero_vad_op18_ifless.onnx": ({"input": (1, 512)}, {"stateN": "state"}, SR),
    "dtln_model_1.onnx": ({"input_2": (1, 1, 257)}, {"tf_op_layer_stack_2": "input_3"}, {}),
    "dtln_model_2.onnx": ({"input_4": (1, 1, 512)}, {"tf_op_layer_stack_5": "input_5"}, {}),
    "gtcrn.onnx": ({"mix": (1, 257, 1, 2)}, {"conv_cache_out": "conv_cache",
                                             "tra_cache_out": "tra_cache",
                                             "inter_cache_out": "inter_cache"}, {}),
}
TARGETS = {"silero_vad.onnx": 1.5, "silero_vad_16k_op15.onnx": 1.5, "silero_vad_op18_ifless.onnx": 1.5,
           "dtln_model_1.onnx": 3.0, "dtln_model_2.onnx": 2.0, "gtcrn.onnx": 2.0}


def ort_session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def zero_state(sess, pairs):
    args = {a.name: a for a in sess.get_inputs()}
    return {inp: np.zeros([d if isinstance(d, int) else 1 for d in args[inp].shape], np.float32)
            for inp in pairs.values()}


def steps_of(shapes, n=64, seed=0):
    rng = np.random.default_rng(seed)
    blocks = [{k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
              for _ in range(n)]
    return lambda k: blocks[k % n]


def stepper(fn):
    k = [0]

    def step():
        out = fn(k[0])
        k[0] += 1
        return out
    return step


def contenders(path, shapes, pairs, fixed):
    """{engine: step()} for one model; each step returns the non-state outputs."""
    feeds = steps_of(shapes)
    o = ort_session(path)
    names = [a.name for a in o.get_outputs()]
    zero = zero_state(o, pairs)
    stream = rnnengine.InferenceSession(path).stream(state=pairs, feeds=fixed)
    state = dict(zero)

    def ort_plain(k):
        outs = dict(zip(names, o.run(None, {**feeds(k), **state, **fixed})))
        for out, inp in pairs.items():
            state[inp] = outs[out]
        return [outs[n] for n in names if n not in pairs]

    out = {"rnnengine stream.step": stepper(lambda k: stream.step(feeds(k))),
           "ORT run": stepper(ort_plain),
           "ORT IOBinding": graph_iobinding_stepper(o, lambda k: {**feeds(k), **fixed}, pairs,
                                                    zero)}
    for label, f32 in (("OpenVINO f32 stateful", True), ("OpenVINO default stateful", False)):
        try:
            shapes_all = {**{n: s for n, s in shapes.items()}, **{n: a.shape for n, a in zero.items()}}
            compiled = openvino_stateful_model(path, shapes_all, pairs, f32)
        except ImportError:
            break
        except Exception as e:   # a graph OpenVINO does not convert
            print(f"({label}: {str(e).splitlines()[0][:100]})")
            continue
        request = compiled.create_infer_request()
        outs = [o_.get_any_name() for o_ in compiled.outputs]

        def ov_step(k, request=request, compiled=compiled, outs=outs):
            res = request.infer({**feeds(k), **{n: v for n, v in fixed.items()}})
            return [res[compiled.output(n)].copy() for n in outs]
        out[label] = stepper(ov_step)
    return out


def median_times(fns: dict, rounds: int) -> dict:
    """Median over interleaved rounds of thread CPU seconds per call, after a few calls each
    (every engine's first calls prepare it: rnnengine plans a signature on its second)."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    counts = {name: calibrate(fn, 0.02) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.thread_time()
            for _ in range(counts[name]):
                fn()
            times[name].append((time.thread_time() - t0) / counts[name])
    return {name: statistics.median(t) for name, t in times.items()}


def diffs_against_ort(fns: dict) -> dict:
    runs = {name: [[np.array(a) for a in fn()] for _ in range(50)] for name, fn in fns.items()}
    ref = runs["ORT run"]
    return {name: max(float(np.abs(a.astype(np.float64) - b).max())
                      for s, r in zip(run, ref) for a, b in zip(s, r) if a.shape == b.shape)
            for name, run in runs.items()}


def report(title, times, diffs, ours, target=None):
    best_ort = min(times["ORT run"], times["ORT IOBinding"])
    ratio = best_ort / times[ours]
    met = "" if target is None else f"; target {target}x ORT-iob: {'met' if ratio >= target else 'MISSED'}"
    print(f"\n### {title}  ({ratio:.2f}x the best ORT{met})\n")
    print("| engine | us/step | max abs diff vs ORT | rnnengine speed-up |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {t * 1e6:.1f} | {diffs.get(name, float('nan')):.1e} | "
              f"{'' if name == ours else f'{t / times[ours]:.2f}x'} |")
    sys.stdout.flush()


def model_row(name, rounds):
    shapes, pairs, fixed = MODELS[name]
    fns = contenders(os.path.join(DATA, name), shapes, pairs, fixed)
    diffs = diffs_against_ort(fns)
    report(name, median_times(fns, rounds), diffs, "rnnengine stream.step", TARGETS.get(name))


def dtln_row(rounds):
    """model_1 then model_2 per block, as real_time_processing_onnx.py runs them (the mask
    of model_1 times the block's magnitude is model_2's input; here a fixed stand-in block,
    the same for every engine)."""
    rows = [contenders(os.path.join(DATA, n), *MODELS[n]) for n in ("dtln_model_1.onnx",
                                                                    "dtln_model_2.onnx")]
    both = {name: (lambda a=rows[0][name], b=rows[1][name]: a() + b())
            for name in rows[0] if name in rows[1]}
    diffs = diffs_against_ort(both)
    report("DTLN as its author runs it: model_1 then model_2 per block",
           median_times(both, rounds), diffs, "rnnengine stream.step")


def pool_row(rounds, streams=16):
    path = os.path.join(DATA, "silero_vad_16k_op15.onnx")
    pool = rnnengine.InferenceSession(path).pool(capacity=streams, feeds=SR)
    ids = [pool.open() for _ in range(streams)]
    xs = (0.1 * np.random.default_rng(1).standard_normal((streams, 512))).astype(np.float32)
    o = ort_session(path)
    states = [np.zeros((2, 1, 128), np.float32) for _ in range(streams)]

    def ort_16():
        outs = []
        for j in range(streams):
            y, states[j] = o.run(None, {"input": xs[j:j + 1], "state": states[j], **SR})
            outs.append(y)
        return [np.concatenate(outs)]

    fns = {f"rnnengine pool.step ({streams})": lambda: pool.step(ids, {"input": xs}),
           "ORT run": ort_16}
    times = median_times(fns, rounds)
    ratio = times["ORT run"] / times[f"rnnengine pool.step ({streams})"]
    print(f"\n### Silero pool of {streams}: {ratio:.2f}x sixteen ORT calls (target 5x: "
          f"{'met' if ratio >= 5 else 'MISSED'}); {pool!r}\n")
    for name, t in times.items():
        print(f"| {name} | {t * 1e6:.1f} us |")


def crnn_bytes(features=32, channels=16, hidden=64, classes=30) -> bytes:
    """A CRNN as a PyTorch user exports it: Conv2d -> ReLU -> Conv2d (stride 2 in frequency)
    -> ReLU -> bidirectional GRU over time -> Linear -> LogSoftmax (a CTC head)."""
    import io
    import warnings

    import torch

    class CRNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, channels, 3, padding=1)
            self.c2 = torch.nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1)
            self.gru = torch.nn.GRU(channels * features // 2, hidden, bidirectional=True)
            self.out = torch.nn.Linear(2 * hidden, classes)

        def forward(self, x):                       # x [N, 1, F, T]
            z = torch.relu(self.c2(torch.relu(self.c1(x))))
            n, c, f, t = z.shape
            z = z.permute(3, 0, 1, 2).reshape(t, n, c * f)
            y, _ = self.gru(z)
            return torch.log_softmax(self.out(y), -1)

    torch.manual_seed(0)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CRNN().eval(), torch.zeros(1, 1, features, 100), f,
                          input_names=["x"], output_names=["logp"], dynamo=False,
                          opset_version=17, dynamic_axes={"x": {3: "T"}, "logp": {0: "T"}})
    return f.getvalue()


def crnn_row(rounds, T=100):
    data = crnn_bytes()
    x = (0.5 * np.random.default_rng(2).standard_normal((1, 1, 32, T))).astype(np.float32)
    sess = rnnengine.InferenceSession(data)
    o = ort_session(data)
    fns = {"rnnengine run": lambda: sess.run(None, {"x": x}),
           "ORT run": lambda: o.run(None, {"x": x})}
    diffs = diffs_against_ort(fns)
    times = median_times(fns, rounds)
    ratio = times["ORT run"] / times["rnnengine run"]
    print(f"\n### CRNN (Conv2d x2 -> BiGRU -> Linear -> LogSoftmax), run on T={T}: {ratio:.2f}x "
          f"ORT (target 1.2x: {'met' if ratio >= 1.2 else 'MISSED'})\n")
    for name, t in times.items():
        print(f"| {name} | {t * 1e6:.1f} us | max abs diff vs ORT {diffs[name]:.1e} |")
    status = list(sess.program_status().values())
    print(f"({status[0][:160] if status else 'general path'})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    rounds = 7 if args.quick else 21
    print(f"CPU: {cpu_model()}; rnnengine ISA variant {_kernels.isa()}; "
          f"onnxruntime {ort.__version__}")
    for name in args.models:
        model_row(name, rounds)
    dtln_row(rounds)
    pool_row(rounds)
    crnn_row(rounds)


if __name__ == "__main__":
    main()
