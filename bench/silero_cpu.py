"""Silero VAD against ONNX Runtime in CPU time (``time.process_time``), interleaved: the
targets (one stream >= 0.9x ORT; a pool of 16 >= 3x 16 ORT calls) measured so
that time the process spends preempted on a shared machine does not count.

    python bench/silero_cpu.py [batches]

bench_session.py measures the same rows in wall time. Single-threaded, one process, best of
``batches`` (default 9) batches of ~20 ms each.
"""
import os
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

from _models import SILERO, session_models as sm  # noqa: E402
from bench_rnn import interleaved  # noqa: E402
from rnnengine.interop.ort import graph_iobinding_stepper  # noqa: E402

import rnnengine  # noqa: E402


def main():
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    sr = np.array(16000, np.int64)
    rng = np.random.default_rng(0)
    chunks = (0.1 * rng.standard_normal((64, 1, 512))).astype(np.float32)
    sess = rnnengine.InferenceSession(SILERO)
    ort_sess = sm.ort_session(SILERO)
    stream = sess.stream(feeds={"sr": sr})
    k = [0]

    def ours():
        k[0] += 1
        return stream.step({"input": chunks[k[0] % 64]})

    zero = {"state": np.zeros((2, 1, 128), np.float32)}
    iobinding = graph_iobinding_stepper(ort_sess, lambda i: {"input": chunks[i % 64], "sr": sr},
                                        stream.state_names, zero)
    pool = sess.pool(capacity=16, feeds={"sr": sr})
    ids = [pool.open() for _ in range(16)]
    xs = (0.1 * rng.standard_normal((16, 512))).astype(np.float32)
    states = [np.zeros((2, 1, 128), np.float32) for _ in range(16)]

    def ort_16():
        for j in range(16):
            _, states[j] = ort_sess.run(None, {"input": xs[j:j + 1], "state": states[j],
                                               "sr": sr})

    def pool_step():
        pool.step(ids, {"input": xs})

    t = interleaved([ours, iobinding, pool_step, ort_16], batches, clock=time.process_time)
    print("| Silero VAD, CPU us per step | rnnengine | ORT | rnnengine speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| one stream vs ORT IOBinding | {t[0] * 1e6:.1f} | {t[1] * 1e6:.1f} | "
          f"{t[1] / t[0]:.2f}x |")
    print(f"| pool of 16 vs 16 ORT runs | {t[2] * 1e6:.1f} | {t[3] * 1e6:.1f} | "
          f"{t[3] / t[2]:.2f}x |")


if __name__ == "__main__":
    main()
