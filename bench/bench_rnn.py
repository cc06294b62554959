"""Side-by-side benchmark of rnnengine against ONNX Runtime and PyTorch (docs/benchmarks.md).

    python bench/bench_rnn.py            # full run, a few minutes; prints a Markdown report
    python bench/bench_rnn.py --quick    # fewer repetitions and workloads, under a minute
    python bench/bench_rnn.py --write    # also puts the report into bench/RESULTS.md

Every engine runs single-threaded (torch.set_num_threads(1), ORT intra/inter-op threads 1,
OpenBLAS/OMP/MKL env vars 1) on the same weights and inputs, in one process. Measurements are
interleaved (engine A, B, C, A, B, C, ...) and each engine's best batch is kept, so load on a
shared machine hurts every engine alike; the ratios are the figures that count.

Roofline columns: "mem" is the bytes of weights one step reads divided by the bandwidth measured
here for a buffer of that size (in-cache sizes get cache bandwidth), "fma" the FLOPs divided by
the measured FMA peak of the active ISA; "roof" = max(mem, fma) / rnnengine's time, the fraction
of the roofline reached.
"""
import argparse
import os
import platform
import subprocess
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import rnnengine  # noqa: E402
from rnnengine.core import kernels as _kernels  # noqa: E402
from rnnengine.interop.ort import OrtReference  # noqa: E402
from rnnengine.interop.pytorch import TorchCells  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

GATES = {"lstm": 4, "gru": 3}


# -- timing -------------------------------------------------------------------------------

def calibrate(fn, target=0.02):
    """Calls per timed batch so that one batch takes about `target` seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(target / dt))


def interleaved(fns, reps, target=0.02, clock=time.perf_counter):
    """Best seconds per call of each function, batches interleaved across functions, timed
    with ``clock`` (``time.process_time`` leaves out time the process spent preempted)."""
    counts = [calibrate(f, target) for f in fns]
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, (f, n) in enumerate(zip(fns, counts)):
            t0 = clock()
            for _ in range(n):
                f()
            best[i] = min(best[i], (clock() - t0) / n)
    return best


# -- roofline probes ------------------------------------------------------------------------

_bw_cache = {}


def bandwidth(nbytes, reps):
    """Bytes/s streaming-read rate for a buffer of nbytes (rounded up to 256 bytes)."""
    n = max(64, (int(nbytes) // 4 + 63) // 64 * 64)
    if n in _bw_cache:
        return _bw_cache[n]
    buf = np.ones(n + 16, np.float32)
    off = (-buf.ctypes.data % 64) // 4
    buf = buf[off:off + n]
    inner = max(1, int(2e8 / (n * 4)))
    _kernels.read_sum(buf, inner)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        _kernels.read_sum(buf, inner)
        best = min(best, (time.perf_counter() - t0) / inner)
    _bw_cache[n] = n * 4 / best
    return _bw_cache[n]


def fma_peak(reps):
    """FLOP/s of independent vector FMAs with the active ISA."""
    iters = 2_000_000
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        _, flops = _kernels.fma_loop(iters)
        best = max(best, flops / (time.perf_counter() - t0))
    return best


# -- one model, three engines ---------------------------------------------------------------

class Workload:
    """Same weights for rnnengine, ONNX Runtime and PyTorch. kind lstm|gru, I = H."""

    def __init__(self, kind, H, seed=0):
        self.kind, self.H, self.I = kind, H, H
        torch.manual_seed(seed)
        cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        self.torch_seq = cls(H, H).eval()
        self.torch_cells = TorchCells(self.torch_seq, kind, 1)   # PyTorch's streaming idiom
        self.G = GATES[kind]
        self.model = rnnengine.from_torch(self.torch_seq)
        self.W, self.R = self.model.layers[0].W, self.model.layers[0].R
        # ONNX Runtime: the bare LSTM/GRU node (no sequence_lens, no glue), its best case
        self.ort = OrtReference(self.model, threads=1, bare=True)

    # bytes read per step and FLOPs per step (one row)
    def step_bytes(self):
        return (self.W.size + self.R.size) * 4

    def step_flops(self, N=1):
        return 2.0 * self.G * self.H * (self.I + self.H) * N


def stream_row(w, reps, threads=1):
    """(rnnengine, ort run, ort IOBinding, torch) seconds per streamed step at batch 1, and a
    correctness gap."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, w.I)).astype(np.float32)
    stream = w.model.stream(1, threads=threads)
    xe = x[0]
    ort_plain, ort_bound = w.ort.steps(1), w.ort.steps(1)
    xt = torch.from_numpy(x)
    cells = w.torch_cells
    cells.state = None

    def torch_step():
        with torch.inference_mode():
            return cells.step(xt)

    # same results from the same state: one step from zero
    y_e = stream.step(xe)
    stream.reset()
    y_o = ort_plain.step_run(x).reshape(-1)
    y_b = ort_bound.step_bound(x).reshape(-1)
    y_t = torch_step().numpy().reshape(-1)
    gap = float(max(np.abs(y_e - y_o).max(), np.abs(y_e - y_b).max(), np.abs(y_e - y_t).max()))
    times = interleaved([lambda: stream.step(xe), lambda: ort_plain.step_run(x),
                         lambda: ort_bound.step_bound(x), torch_step], reps)
    return times, gap


def sequence_row(w, T, N, reps):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, N, w.I)).astype(np.float32)
    sess, feed = w.ort.session, w.ort.feeds(x, None, None)
    xt = torch.from_numpy(x)

    def torch_run():
        with torch.inference_mode():
            return w.torch_seq(xt)

    y_e, _ = w.model.run(x)
    y_o = sess.run(["y"], feed)[0][:, 0]
    y_t = torch_run()[0].numpy()
    gap = float(max(np.abs(y_e - y_o).max(), np.abs(y_e - y_t).max()))
    times = interleaved([lambda: w.model.run(x), lambda: sess.run(["y"], feed), torch_run], reps)
    return times, gap


def roofline(nbytes, flops, reps, peak):
    """Lower-bound seconds: (memory time, compute time)."""
    return nbytes / bandwidth(nbytes, reps), flops / peak


# -- report ---------------------------------------------------------------------------------

def cpu_model():
    """lscpu's model name, family/model numbers and cache sizes (a VM may hide the name)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    parts = [fields.get("Model name", platform.machine())]
    if "CPU family" in fields and "Model" in fields:
        parts.append(f"family {fields['CPU family']} model {fields['Model']}")
    for cache in ("L1d cache", "L2 cache", "L3 cache"):
        if cache in fields:
            parts.append(f"{cache} {fields[cache]}")
    return ", ".join(parts)


def fmt_us(s):
    return f"{s * 1e6:.2f}" if s < 1e-4 else f"{s * 1e6:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and workloads")
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    ap.add_argument("--isa", default=None, help="force an rnnengine ISA variant")
    args = ap.parse_args()
    if args.isa:
        _kernels.set_isa(args.isa)
    reps = 3 if args.quick else 11
    sizes = (64, 256) if args.quick else (64, 256, 1024)
    started = time.time()
    peak = fma_peak(reps)

    rows = []   # (workload, eng, ort, torch, target, roof_mem, roof_fma, gap)

    for kind in ("lstm", "gru"):
        for H in sizes:
            w = Workload(kind, H)
            (te, to, tio, tt), gap = stream_row(w, reps)
            mem, fma = roofline(w.step_bytes(), w.step_flops(), reps, peak)
            target = {64: 5.0, 256: 2.0, 1024: 1.2}[H]
            rows.append((f"stream step {kind.upper()} H={H} N=1", te, to, tio, tt, target, mem,
                         fma, gap))
            print(f"  done {rows[-1][0]}", file=sys.stderr)

    for N in (1, 16):
        for kind in ("lstm", "gru"):
            for H in sizes:
                if args.quick and N == 16 and H > 64:
                    continue
                w = Workload(kind, H)
                T = 100
                (te, to, tt), gap = sequence_row(w, T, N, max(2, reps // 2))
                wbytes, rbytes = w.W.size * 4, w.R.size * 4
                mem = wbytes / bandwidth(wbytes, reps) + T * rbytes / bandwidth(rbytes, reps)
                fma = T * w.step_flops(N) / peak
                target = 1.2 if N == 1 else 1.0
                rows.append((f"sequence T=100 {kind.upper()} H={H} N={N}", te, to, None, tt, target,
                             mem, fma, gap))
                print(f"  done {rows[-1][0]}", file=sys.stderr)

    # per-step overhead on a tiny model vs one np.add on 8 floats
    tiny = Workload("lstm", 8)
    s8 = tiny.model.stream(1)
    x8 = np.random.default_rng(3).standard_normal(8).astype(np.float32)
    a, b, c = (np.ones(8, np.float32) for _ in range(3))
    t_step, t_add = interleaved([lambda: s8.step(x8), lambda: np.add(a, b, out=c)], reps)

    # threads: H=1024 (or 256 in quick mode) streaming LSTM, 2 threads vs 1
    Ht = 256 if args.quick else 1024
    wt = Workload("lstm", Ht)
    s1, s2 = wt.model.stream(1, threads=1), wt.model.stream(1, threads=2)
    xt = np.random.default_rng(4).standard_normal(Ht).astype(np.float32)
    t1, t2 = interleaved([lambda: s1.step(xt), lambda: s2.step(xt)], reps)
    s1.reset()
    s2.reset()
    thread_gap = float(max(np.abs(s1.step(xt) - s2.step(xt)).max() for _ in range(3)))

    elapsed = time.time() - started
    lines = []
    lines.append(f"# rnnengine benchmark{' (quick)' if args.quick else ''}")
    lines.append("")
    lines.append(f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs (shared machine)")
    lines.append(f"- rnnengine {rnnengine.__version__} ISA `{_kernels.isa()}`; onnxruntime "
                 f"{ort.__version__}; torch {torch.__version__}; numpy {np.__version__}; "
                 f"Python {platform.python_version()}")
    lines.append(f"- single thread everywhere; interleaved, best of {reps} batches; "
                 f"FMA peak {peak / 1e9:.0f} GFLOP/s; run took {elapsed:.0f} s")
    lines.append("- times in microseconds per call (a step, or a whole T=100 sequence); "
                 "`speedup` = best peer / rnnengine; `roof` = roofline time / rnnengine time")
    lines.append("")
    lines.append("| workload | rnnengine | ORT | ORT IOBinding | PyTorch | speedup | target | met | "
                 "mem | fma | roof | max diff |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|")
    for name, te, to, tio, tt, target, mem, fma, gap in rows:
        speed = min(t for t in (to, tio, tt) if t is not None) / te
        met = "yes" if speed >= target else "**no**"
        io = "-" if tio is None else fmt_us(tio)
        lines.append(f"| {name} | {fmt_us(te)} | {fmt_us(to)} | {io} | {fmt_us(tt)} | {speed:.2f}x | "
                     f"{target:.1f}x | {met} | {fmt_us(mem)} | {fmt_us(fma)} | "
                     f"{max(mem, fma) / te:.2f} | {gap:.1e} |")
    ratio = t_step / t_add
    lines.append("")
    lines.append("| overhead | time (us) | ratio | target | met |")
    lines.append("|---|---:|---:|---:|:---:|")
    lines.append(f"| stream.step, LSTM H=8 | {t_step * 1e6:.3f} | {ratio:.2f}x np.add | <= 3x | "
                 f"{'yes' if ratio <= 3 else '**no**'} |")
    lines.append(f"| np.add(a, b, out=c), 8 floats | {t_add * 1e6:.3f} | 1 | | |")
    lines.append("")
    lines.append("| threads (rnnengine, streaming LSTM) | 1 thread | 2 threads | speedup | target | met |")
    lines.append("|---|---:|---:|---:|---:|:---:|")
    sp = t1 / t2
    lines.append(f"| H={Ht} N=1 (max diff {thread_gap:.1e}) | {fmt_us(t1)} | {fmt_us(t2)} | "
                 f"{sp:.2f}x | 1.6x | {'yes' if sp >= 1.6 else '**no**'} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        write_section(os.path.join(HERE, "RESULTS.md"), report)


BEGIN, END = "<!-- bench_rnn.py: begin -->", "<!-- bench_rnn.py: end -->"


def write_section(path, report, begin=BEGIN, end=END, first=True):
    """Replace one script's section of RESULTS.md (between its markers), keeping the rest;
    a missing section goes first (or last with first=False)."""
    text = open(path).read() if os.path.exists(path) else ""
    section = f"{begin}\n{report}{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    elif first:
        text = section + ("\n" + text if text else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
