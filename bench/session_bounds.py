"""What bounds a streamed whole-model step: rnnengine's ``stream.step`` (the compiled step,
stream_runner) and the general step it replaces (``SessionStream.step`` run as the class
method: the plan's closures) against the same step's native calls alone (``Stream.step`` of
each recurrent node and the compiled dense head, no graph, no checks: what a step could cost
with zero glue from Python) and ORT with IOBinding.

    python bench/session_bounds.py

Reaches into the session stream's internals (``_elided``, ``_context``, the planned steps) to
find the very kernel objects the stream uses; a measurement tool, not an API.
Single-threaded, one process, interleaved, best of several batches.
"""
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

from _models import session_models as sm  # noqa: E402
from bench_rnn import interleaved  # noqa: E402
from rnnengine.interop.ort import graph_iobinding_stepper  # noqa: E402

import rnnengine  # noqa: E402


def native_parts(sess, stream):
    carrier = next(iter(stream._context.values()))
    layers = [carrier.streams[r] for r in stream._elided.recs]
    head = next(c.cell_contents for s in sess.plan.steps for c in (s.__closure__ or ())
                if getattr(c.cell_contents, "__qualname__", "").startswith("compiled_head."))
    return layers, head


def main():
    rng = np.random.default_rng(0)
    x = (0.5 * rng.standard_normal((1, 1, 257))).astype(np.float32)
    cases = [("DTLN-shaped", sm.packed_lstm(features=257, hidden=128, outputs=257), {"x": x},
              {"state": np.zeros((1, 2, 128, 2), np.float32)}),
             ("model (a) H=16", sm.embedding_lstm(True, vocab=20, embed=8, hidden=16),
              {"tokens": np.array([[3]], np.int64)},
              {"h0": np.zeros((2, 1, 16), np.float32), "c0": np.zeros((2, 1, 16), np.float32)})]
    print("| model | rnnengine stream.step (compiled) | general step | native calls alone | "
          "ORT IOBinding | stream vs ORT | general vs ORT | native-only ceiling vs ORT |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, model, feeds, zero in cases:
        data = model if isinstance(model, bytes) else model.SerializeToString()
        sess = rnnengine.InferenceSession(data)
        stream = sess.stream()
        for _ in range(3):
            stream.step(feeds)
        (l0, l1), head = native_parts(sess, stream)
        if "tokens" in feeds:
            table = next(v for v in sess.plan.consts.values() if getattr(v, "shape", 0) == (20, 8))
            tokens = feeds["tokens"].reshape(-1)

            def native():
                return head(l1.step(l0.step(table.take(tokens, axis=0))))
        else:
            block = feeds["x"].reshape(1, -1)

            def native():
                return head(l1.step(l0.step(block)))
        ort = graph_iobinding_stepper(sm.ort_session(data), lambda k: feeds, stream.state_names, zero)
        assert stream.compiled, stream.not_compiled
        general = type(stream).step
        t = interleaved([lambda: stream.step(feeds), lambda: general(stream, feeds), native,
                         ort], 9)
        print(f"| {name} | {t[0] * 1e6:.1f} | {t[1] * 1e6:.1f} | {t[2] * 1e6:.1f} | "
              f"{t[3] * 1e6:.1f} | {t[3] / t[0]:.2f}x | {t[3] / t[1]:.2f}x | "
              f"{t[3] / t[2]:.2f}x |")


if __name__ == "__main__":
    main()
