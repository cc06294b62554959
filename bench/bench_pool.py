"""Pool and threads benchmark: a pool of 64 streams at H=256.

    python bench/bench_pool.py                 # full run, ~1 minute
    python bench/bench_pool.py --quick         # fewer repetitions

Rows, all in one process, contenders interleaved, best of several repetitions:

1. 64 streams of an LSTM with I = H = 256, one timestep each:
   rnnengine ``pool.step`` over all 64 ids, against 64 ``Stream.step`` calls (the figure the
   issue asks for, >= 2.5x), PyTorch ``nn.LSTMCell`` on a batch of 64 and ONNX Runtime's LSTM
   node with T=1, N=64 (state fed back each step; plain run and IOBinding). All single-threaded (every library pinned to
   one thread), so ratios compare implementations, not core counts.
2. Threads: 2 threads each driving their own pool of 64 streams (and, separately, their own
   batch-1 streams) against 1 thread doing the same per-thread work: throughput ratio
   ``2 * t(1 thread) / t(2 threads)`` (>= 1.6x on 2 cores asked). This is the row that uses
   two cores; each library stays at one thread per calling thread. A control row (sha256, GIL
   released, nothing shared) shows how much of a second core the machine gives at the time.

Roofline for row 1: FLOPs of a pool step over the FMA peak (a large single-thread sgemm), and
weight bytes read per step over the copy bandwidth of a buffer the size of the weights.
"""
from __future__ import annotations

import os

# One thread per calling thread for the peers' math libraries (torch reads OMP_NUM_THREADS at
# import): otherwise the baseline already uses every core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from rnnengine.interop.ort import OrtReference  # noqa: E402
from rnnengine.interop.pytorch import TorchCells, torch_module_for  # noqa: E402
from rnnengine.core.layers import Layer  # noqa: E402
from rnnengine.runtime.model import Model  # noqa: E402

STREAMS, H, I = 64, 256, 256


def best_per_call(fns: dict, calls: int, reps: int) -> dict:
    """Seconds per call of each fn, best of ``reps`` rounds; contenders interleaved."""
    best = {name: float("inf") for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


def lstm_arrays(rng):
    bound = 1 / np.sqrt(H)
    W = rng.uniform(-bound, bound, (1, 4 * H, I)).astype(np.float32)
    R = rng.uniform(-bound, bound, (1, 4 * H, H)).astype(np.float32)
    B = rng.uniform(-bound, bound, (1, 8 * H)).astype(np.float32)
    return W, R, B


def roofline(seconds_per_step: float) -> str:
    """Achieved fraction of the FMA peak and of the bandwidth bound for one pool step."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    peak = best_per_call({"sgemm": lambda: a @ a}, 3, 5)["sgemm"]
    flops_peak = 2 * 1024 ** 3 / peak
    weights = np.ones((8 * H * I + 8 * H * H) // 8, np.float32)   # 2 MB, the LSTM weights
    dst = np.empty_like(weights)
    copy = best_per_call({"copy": lambda: np.copyto(dst, weights)}, 20, 5)["copy"]
    bandwidth = 2 * weights.nbytes / copy                       # read + write
    flops = 2 * STREAMS * 4 * H * (I + H)
    weight_bytes = 4 * 4 * H * (I + H)
    return (f"roofline: {flops / 1e6:.0f} MFLOP per pool step at {flops / seconds_per_step / 1e9:.1f} "
            f"GFLOP/s = {flops / seconds_per_step / flops_peak:.0%} of the 1-thread sgemm peak "
            f"({flops_peak / 1e9:.1f} GFLOP/s); weights {weight_bytes / 2**20:.1f} MB per step: "
            f"bandwidth bound {weight_bytes / bandwidth * 1e6:.0f} us "
            f"({bandwidth / 1e9:.1f} GB/s copy of a 2 MB buffer)")


def row_pool(model, reps: int, calls: int) -> float:
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((STREAMS, I)).astype(np.float32)
    pool = model.pool(STREAMS)
    ids = [pool.open() for _ in range(STREAMS)]
    streams = [model.stream(batch=1) for _ in range(STREAMS)]

    def stream_steps():
        for stream, x in zip(streams, xs):
            stream.step(x)

    fns = {"rnnengine pool.step(64 ids)": lambda: pool.step(ids, xs),
           "rnnengine 64 x Stream.step": stream_steps}
    try:
        import torch

        torch.set_num_threads(1)
        cells = TorchCells(torch_module_for(model), "lstm", 1)
        tx = torch.from_numpy(xs)

        def torch_step():
            with torch.no_grad():
                return cells.step(tx)
        fns["PyTorch LSTMCell batch 64"] = torch_step
    except ImportError:
        pass
    try:
        ref = OrtReference(model, threads=1, bare=True)   # the bare LSTM node, T=1, N=64
        plain, bound = ref.steps(STREAMS), ref.steps(STREAMS)
        fns["ONNX Runtime LSTM T=1 N=64"] = lambda: plain.step_run(xs)
        fns["ONNX Runtime IOBinding T=1 N=64"] = lambda: bound.step_bound(xs)
    except ImportError:
        pass
    best = best_per_call(fns, calls, reps)
    base = best["rnnengine pool.step(64 ids)"]
    print(f"\n64 streams, LSTM I=H={H}, one timestep each (single-threaded, best of {reps}):")
    for name, seconds in best.items():
        print(f"  {name:32s} {seconds * 1e6:9.1f} us   {seconds / base:5.2f}x pool.step")
    print(f"  => pool.step is {best['rnnengine 64 x Stream.step'] / base:.2f}x faster than "
          f"64 Stream.step calls")
    print("  " + roofline(base))
    return best["rnnengine 64 x Stream.step"] / base


def threads_ratios(works: dict, reps: int) -> dict:
    """name -> (best 1-thread seconds, best 2-thread seconds) of ``work(k)`` (k = thread
    index); every repetition runs all works, 1 then 2 threads, so they see the same machine."""
    best = {name: [float("inf"), float("inf")] for name in works}
    for _ in range(reps):
        for name, work in works.items():
            start = time.perf_counter()
            work(0)
            best[name][0] = min(best[name][0], time.perf_counter() - start)
            threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            best[name][1] = min(best[name][1], time.perf_counter() - start)
    return best


def row_threads(model, reps: int, steps: int) -> dict:
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((STREAMS, I)).astype(np.float32)
    pools = [model.pool(STREAMS) for _ in range(2)]
    pool_ids = [[p.open() for _ in range(STREAMS)] for p in pools]
    streams = [model.stream(batch=1) for _ in range(2)]

    def pool_work(k):
        for _ in range(steps):
            pools[k].step(pool_ids[k], xs)

    def stream_work(k):
        for t in range(steps * 16):
            streams[k].step(xs[t % STREAMS])

    data = bytes(1 << 20)

    def control_work(k):
        # Control: C work that releases the GIL and shares nothing. It shows how much of a
        # second core this machine actually gives right now (other processes share it).
        for _ in range(steps * 2):
            hashlib.sha256(data).digest()

    print(f"\nThreads sharing one model, each with its own streams (throughput, best of {reps}):")
    works = {"own pool of 64 streams": (pool_work, steps * STREAMS),
             "own batch-1 Stream": (stream_work, steps * 16),
             "control: sha256 of 1 MB": (control_work, steps * 2)}
    best = threads_ratios({name: work for name, (work, _) in works.items()}, reps)
    ratios = {}
    for name, (_, unit) in works.items():
        one, two = best[name]
        ratios[name] = 2 * one / two
        print(f"  {name:24s} 1 thread {unit / one:9.0f} /s   2 threads "
              f"{2 * unit / two:9.0f} /s   => {ratios[name]:.2f}x")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 5 if args.quick else 15
    rng = np.random.default_rng(0)
    W, R, B = lstm_arrays(rng)
    model = Model([Layer.from_onnx("lstm", W, R, B)])
    print(f"{model}; {os.cpu_count()} CPUs")
    row_pool(model, reps, calls=10 if args.quick else 20)
    row_threads(model, reps=5 if args.quick else 25, steps=20)


if __name__ == "__main__":
    main()
