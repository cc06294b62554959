"""rnnengine's weight precisions (fp32, fp16, bf16, int8; docs/precision.md) side by side with ONNX
Runtime (plain run and IOBinding), PyTorch and OpenVINO (its default precision, which it
reports, and f32 forced; its stateful MakeStateful model for streaming).

    python bench/bench_precision.py            # full run, several minutes
    python bench/bench_precision.py --quick    # fewer repetitions and workloads
    python bench/bench_precision.py --write    # also puts the report into bench/RESULTS.md

One process, every engine single-threaded, same weights and inputs, batches interleaved and
the best kept (bench_rnn.py's protocol). Each rnnengine mode is its own row with its max |diff|
against the float64 NumPy reference. The roofline of a stream step is the bytes of weights the
mode reads per step over the bandwidth measured here for a buffer of that size.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# bench_rnn first: it sets the single-thread environment before NumPy loads its BLAS
from bench_rnn import (Workload, bandwidth, cpu_model, fmt_us, interleaved, ort,  # noqa: E402
                       write_section)
import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import torch  # noqa: E402
from openvino._offline_transformations import apply_make_stateful_transformation  # noqa: E402

import rnnengine  # noqa: E402
from rnnengine import Model  # noqa: E402
from rnnengine.core import kernels as _kernels
from rnnengine.testing import reference as _reference
from rnnengine.interop.onnx_export import onnx_graph_for  # noqa: E402

MODES = ("fp32", "fp16", "bf16", "int8")
WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def reference(w, x):
    """y (T, N, H) of the float64 NumPy reference on the workload's fp32 weights."""
    layer = w.model.layers[0]
    return _reference.onnx_rnn(w.kind, x, layer.W, layer.R,
                               np.concatenate([layer.Wb, layer.Rb], axis=1),
                               linear_before_reset=int(layer.linear_before_reset))[0][:, 0]


# -- peers ------------------------------------------------------------------------------------
# The ONNX graph is rnnengine's own export (interop.onnx_export, bare: X, h0_0 [, c0_0] ->
# y (T, 1, N, H), hN_0 [, cN_0]), the one ONNX Runtime runs in interop.ort.

def ort_iobinding_run(w, x):
    """A whole sequence with IOBinding: inputs and y bound once."""
    sess = w.ort.session
    io = sess.io_binding()
    for name, a in w.ort.feeds(x, None, None).items():
        io.bind_cpu_input(name, a)
    y = np.zeros((x.shape[0], 1, x.shape[1], w.H), np.float32)
    io.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
    return lambda: sess.run_with_iobinding(io), lambda: y[:, 0]


def openvino_model(w, T, N, stateful):
    """The exported graph with static shapes (a stateful model needs them for its state)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        with open(path, "wb") as f:
            f.write(onnx_graph_for(w.model, bare=True).SerializeToString())
        model = ov.Core().read_model(path)
    shapes = {"X": [T, N, w.I], "h0_0": [1, N, w.H]}
    if w.kind == "lstm":
        shapes["c0_0"] = [1, N, w.H]
    model.reshape(shapes)
    if stateful:
        pairs = {"h0_0": "hN_0"}
        if w.kind == "lstm":
            pairs["c0_0"] = "cN_0"
        apply_make_stateful_transformation(model, pairs)
    return model


def openvino_compiled(model, f32):
    config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(model, "CPU", config)
    picked = compiled.get_property("INFERENCE_PRECISION_HINT")
    return compiled, getattr(picked, "type_name", None) or str(picked)


def openvino_step(w, x, f32):
    """The stateful model: h (and c) live inside the request; x bound once."""
    compiled, picked = openvino_compiled(openvino_model(w, 1, 1, True), f32)
    req = compiled.create_infer_request()
    y = compiled.output("y")
    req.set_tensor("X", ov.Tensor(x[None]))
    return req.infer, req.reset_state, lambda: req.get_tensor(y).data.reshape(-1), picked


def openvino_run(w, x, f32):
    N = x.shape[1]
    compiled, picked = openvino_compiled(openvino_model(w, x.shape[0], N, False), f32)
    req = compiled.create_infer_request()
    req.set_tensor("X", ov.Tensor(x))
    req.set_tensor("h0_0", ov.Tensor(np.zeros((1, N, w.H), np.float32)))
    if w.kind == "lstm":
        req.set_tensor("c0_0", ov.Tensor(np.zeros((1, N, w.H), np.float32)))
    y = compiled.output("y")
    return req.infer, lambda: req.get_tensor(y).data[:, 0], picked


# -- rows -------------------------------------------------------------------------------------

STEPS_CHECKED = 10   # steps from the zero state compared with the float64 reference


def step_rows(w, reps):
    """{engine: (seconds per step, max |diff| after STEPS_CHECKED steps)}, OpenVINO's pick."""
    x = np.random.default_rng(1).standard_normal((1, w.I)).astype(np.float32)
    ref = reference(w, np.repeat(x[None], STEPS_CHECKED, 0))[-1, 0]
    engines = {}     # name -> (step fn, reset fn, output fn)
    for mode in MODES:
        stream = Model(w.model.layers, precision=mode).stream(1)
        out = {}
        engines[f"rnnengine {mode}"] = (lambda s=stream, o=out: o.__setitem__("y", s.step(x[0])),
                                        stream.reset, lambda o=out: o["y"])
    for name, method in (("ORT", "step_run"), ("ORT IOBinding", "step_bound")):
        ort_state = {}

        def reset(st=ort_state, method=method):   # fresh buffers: state back to zero
            st["steps"] = w.ort.steps(1)
            st["step"] = getattr(st["steps"], method)

        reset()
        engines[name] = (lambda st=ort_state: st.__setitem__("y", st["step"](x)), reset,
                         lambda st=ort_state: st["y"].reshape(-1))
    cells, xt = w.torch_cells, torch.from_numpy(x)
    tout = {}

    def torch_step():
        with torch.inference_mode():
            tout["y"] = cells.step(xt)

    engines["PyTorch"] = (torch_step, lambda: setattr(cells, "state", None),
                          lambda: tout["y"].numpy().reshape(-1))
    picked = {}
    for f32 in (False, True):
        infer, reset, out, picked[f32] = openvino_step(w, x, f32)
        engines[f"OpenVINO {'f32' if f32 else 'default'} (stateful)"] = (infer, reset, out)
    diffs = {}
    for name, (step, reset, out) in engines.items():
        reset()
        for _ in range(STEPS_CHECKED):
            step()
        diffs[name] = float(np.abs(out() - ref).max())
    times = interleaved([e[0] for e in engines.values()], reps)
    return {n: (t, diffs[n]) for n, t in zip(engines, times)}, picked


def sequence_rows(w, T, N, reps):
    x = np.random.default_rng(2).standard_normal((T, N, w.I)).astype(np.float32)
    n_ref = min(N, 4)  # the float64 reference runs row by row: the first rows only
    ref = reference(w, x[:, :n_ref])
    engines = {}    # name -> (run fn, output fn)
    for mode in MODES:
        model = Model(w.model.layers, precision=mode)
        out = {}
        engines[f"rnnengine {mode}"] = (
            lambda m=model, o=out: o.__setitem__("y", m.run(x)[0]), lambda o=out: o["y"])
    sess, feeds = w.ort.session, w.ort.feeds(x, None, None)
    out = {}
    engines["ORT"] = (lambda: out.__setitem__("y", sess.run(["y"], feeds)[0][:, 0]),
                      lambda: out["y"])
    engines["ORT IOBinding"] = ort_iobinding_run(w, x)
    xt = torch.from_numpy(x)
    tout = {}

    def torch_run():
        with torch.inference_mode():
            tout["y"] = w.torch_seq(xt)[0]

    engines["PyTorch"] = (torch_run, lambda: tout["y"].numpy())
    picked = {}
    for f32 in (False, True):
        infer, outfn, picked[f32] = openvino_run(w, x, f32)
        engines[f"OpenVINO {'f32' if f32 else 'default'}"] = (infer, outfn)
    diffs = {}
    for name, (run, outfn) in engines.items():
        run()
        diffs[name] = float(np.abs(outfn()[:, :n_ref] - ref).max())
    times = interleaved([e[0] for e in engines.values()], reps)
    return {n: (t, diffs[n]) for n, t in zip(engines, times)}, picked


# -- report -----------------------------------------------------------------------------------

def block(title, results, roof=None):
    """Rows of one workload: every engine, its time, ratios and max |diff|."""
    own = results["rnnengine fp32"][0]
    peers = {n: v for n, v in results.items() if not n.startswith("rnnengine")}
    exact = min(t for t, d in peers.values() if d <= 1e-4) if any(
        d <= 1e-4 for _, d in peers.values()) else float("nan")
    best_any = min(t for t, _ in peers.values())
    lines = [f"| **{title}** | | | | | | |"]
    for name, (t, d) in results.items():
        mine = name.startswith("rnnengine")
        vs_own = f"{own / t:.2f}x" if mine else ""
        vs_exact = f"{exact / t:.2f}x" if mine else ""
        vs_any = f"{best_any / t:.2f}x" if mine else ""
        r = ""
        if roof and mine:
            r = f"{roof[name.split()[-1]] / t:.2f}"
        lines.append(f"| {name} | {fmt_us(t)} | {vs_own} | {vs_exact} | {vs_any} | {r} | {d:.1e} |")
    return lines


def step_roofline(w, reps):
    """Seconds a step needs to stream its weights once, per mode."""
    out = {}
    for mode in MODES:
        nbytes = (w.W.size + w.R.size) * WEIGHT_BYTES[mode]
        out[mode] = nbytes / bandwidth(nbytes, reps)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    reps = 3 if args.quick else 7
    started = time.time()
    lines = []
    summary = []
    picks = set()

    steps = [("lstm", 1024), ("gru", 1024), ("lstm", 256)]
    if args.quick:
        steps = [("lstm", 1024)]
    for kind, H in steps:
        w = Workload(kind, H)
        results, picked = step_rows(w, reps)
        picks.add(picked[False])
        roof = step_roofline(w, reps)
        lines += block(f"stream step {kind.upper()} H={H} N=1", results, roof)
        summary.append((f"stream step {kind.upper()} H={H}", results,
                        "OpenVINO default (stateful)"))
        print(f"  done step {kind} {H}", file=sys.stderr)

    seqs = [(N, kind, H) for N in (1, 16) for kind in ("lstm", "gru") for H in (64, 256, 1024)]
    if args.quick:
        seqs = [(16, "lstm", 256), (1, "lstm", 256)]
    for N, kind, H in seqs:
        w = Workload(kind, H)
        results, picked = sequence_rows(w, 100, N, max(2, reps // 2) if H == 1024 else reps)
        picks.add(picked[False])
        lines += block(f"sequence T=100 {kind.upper()} H={H} N={N}", results)
        summary.append((f"sequence T=100 {kind.upper()} H={H} N={N}", results,
                        "OpenVINO default"))
        print(f"  done sequence {kind} {H} {N}", file=sys.stderr)

    elapsed = time.time() - started
    head = [
        f"# rnnengine precisions{' (quick)' if args.quick else ''}",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, **shared with other jobs "
        "while measured** (absolute times are noisy; the ratios come from one interleaved run)",
        f"- rnnengine {rnnengine.__version__} ISA `{_kernels.isa()}` (products: fp16 "
        f"`{_kernels.gemm_isa('fp16')}`, bf16 `{_kernels.gemm_isa('bf16')}`, int8 "
        f"`{_kernels.gemm_isa('int8')}`); onnxruntime {ort.__version__}; torch "
        f"{torch.__version__}; openvino {ov.__version__} (default precision picked: "
        f"{', '.join(sorted(picks))}); Python {platform.python_version()}",
        f"- single thread everywhere; interleaved, best of {reps} batches; run took "
        f"{elapsed:.0f} s",
        "- µs per call (a step, or a whole T=100 sequence). `vs fp32`: rnnengine fp32 / this; "
        "`vs exact`: best peer with max |diff| <= 1e-4 / this; `vs any`: best peer at any "
        "precision / this; `roof`: time to stream the mode's weights once at the bandwidth "
        "measured for that size / this; max |diff| against float64 (streams: after "
        f"{STEPS_CHECKED} steps; sequences: first 4 rows)",
        "",
        "| engine | µs | vs fp32 | vs exact | vs any | roof | max diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    targets = ["", "| target | measured | target | met |", "|---|---:|---:|:---:|"]
    for title, results, ov_name in summary:
        fp32 = results["rnnengine fp32"][0]
        best_mode = min(MODES, key=lambda m: results[f"rnnengine {m}"][0])
        best = results[f"rnnengine {best_mode}"][0]
        ovt = results[ov_name][0]
        if title.startswith("stream step LSTM H=1024"):
            for mode, goal in (("fp16", 1.6), ("bf16", 1.6), ("int8", 2.5)):
                r = fp32 / results[f"rnnengine {mode}"][0]
                targets.append(f"| {title}: {mode} vs own fp32 | {r:.2f}x | {goal}x | "
                               f"{'yes' if r >= goal else '**no**'} |")
            r = ovt / best
            targets.append(f"| {title}: best mode ({best_mode}) vs {ov_name} | {r:.2f}x | "
                           f"1.2x | {'yes' if r >= 1.2 else '**no**'} |")
        if "N=16" in title:
            r = ovt / results["rnnengine bf16"][0]
            targets.append(f"| {title}: bf16 vs {ov_name} | {r:.2f}x | 1.2x | "
                           f"{'yes' if r >= 1.2 else '**no**'} |")
    report = "\n".join(head + lines + targets) + "\n"
    print(report)
    if args.write:
        write_section(os.path.join(HERE, "RESULTS.md"), report, BEGIN, END, first=False)


BEGIN, END = "<!-- bench_precision.py: begin -->", "<!-- bench_precision.py: end -->"


if __name__ == "__main__":
    main()
