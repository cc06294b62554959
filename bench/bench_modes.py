"""Each weight precision against fp32 on the active ISA variant (or the one given), on the
three workloads where a reduced precision can lose to fp32: a streamed step at H=1024 batch 1
(memory bound: fewer weight bytes should win), a T=100 sequence at batch 1 and one at batch
16, H=256 (the panels stay in L2: the product's arithmetic decides).

    python bench/bench_modes.py                    # the default variant
    python bench/bench_modes.py --isa avx2         # as on an AVX2-only CPU (e.g. Zen 3)
    python bench/bench_modes.py --raw              # also each weight type without the
                                                   # precision policy's reroute
    python bench/bench_modes.py --isa avx512 --without avx512vnni
                                                   # as on an AVX-512 CPU without VNNI
                                                   # (e.g. Skylake-SP)

Thread CPU time (time.thread_time: time the thread spent preempted on a shared machine is
left out), single thread, the modes interleaved batch by batch and each one's best batch
kept. Ratios are fp32's time over the mode's: below 1 the mode is slower than fp32.
"""
import argparse
import os
import sys
import time
import warnings

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "src"))

from rnnengine import Layer, Model  # noqa: E402
from rnnengine.core import kernels as _kernels
from rnnengine.core import precision_route

MODES = ("fp32", "fp16", "bf16", "int8")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def calibrate(fn, target):
    n = 1
    while True:
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        if time.thread_time() - t0 >= target or n >= 1 << 16:
            return n
        n *= 2


def interleaved(fns, reps, target=0.02):
    """Best thread-CPU seconds per call of each function, batches interleaved."""
    counts = [calibrate(f, target) for f in fns]
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, (f, n) in enumerate(zip(fns, counts)):
            t0 = time.thread_time()
            for _ in range(n):
                f()
            best[i] = min(best[i], (time.thread_time() - t0) / n)
    return best


def layer_for(kind, H, seed=0):
    """One layer, weights N(0, 1/H), H inputs (GRU with linear_before_reset=1)."""
    rng = np.random.default_rng(seed)
    G, s = GATES[kind], 1 / np.sqrt(H)
    return Layer.from_onnx(kind, rng.normal(0, s, (1, G * H, H)),
                           rng.normal(0, s, (1, G * H, H)), rng.normal(0, s, (1, 2 * G * H)),
                           linear_before_reset=int(kind == "gru"))


def models(layer, raw):
    """{label: Model}: each precision through the policy (labelled with what runs), and with
    ``raw`` each mode's own weight type (precision_route's reroute off)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for mode in MODES:
            m = Model([layer], precision=mode)
            out[mode if m.precision == mode else f"{mode}->{m.precision}"] = m
    if raw:
        precision_route.REROUTE = False
        try:
            for mode in MODES[1:]:
                out[f"{mode} (raw)"] = Model([layer], precision=mode)
        finally:
            precision_route.REROUTE = True
    return out


def workloads(kind, raw):
    """(title, {label: callable})."""
    rng = np.random.default_rng(1)
    big = layer_for(kind, 1024)
    x1 = rng.standard_normal((1, 1024)).astype(np.float32)
    fns = {}
    for label, m in models(big, raw).items():
        s = m.stream(1)
        fns[label] = lambda s=s: s.step(x1)
    yield f"{kind} stream step H=1024 N=1", fns
    small = layer_for(kind, 256)
    for N in (1, 16):
        x = rng.standard_normal((100, N, 256)).astype(np.float32)
        yield (f"{kind} sequence T=100 N={N} H=256",
               {label: (lambda m=m, x=x: m.run(x)) for label, m in models(small, raw).items()})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", help="variant to force (serial, avx2, avx512, amx)")
    ap.add_argument("--without", default="",
                    help="CPU features to act as if missing, comma-separated "
                         f"({', '.join(_kernels.CPU_FEATURES)})")
    ap.add_argument("--kinds", default="lstm,gru")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--raw", action="store_true")
    args = ap.parse_args()
    if args.isa or args.without:
        _kernels.set_isa(args.isa or _kernels.isa(),
                         without=[f for f in args.without.split(",") if f])
    print(f"variant {_kernels.isa()}; products: "
          + ", ".join(f"{t} {_kernels.gemm_isa(t)}" for t in _kernels.WEIGHT_TYPES))
    for kind in args.kinds.split(","):
        for title, fns in workloads(kind, args.raw):
            times = dict(zip(fns, interleaved(list(fns.values()), args.reps)))
            base = times["fp32"]
            cells = "  ".join(f"{k} {t * 1e6:.0f}us x{base / t:.2f}" for k, t in times.items())
            print(f"{title}: {cells}")


if __name__ == "__main__":
    main()
