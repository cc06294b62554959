"""A session pool pads each batch to a short ladder of sizes so that a live service's ever
changing batch sizes share a few executor programs: padded steps still give each stream
what ONNX Runtime gives it alone, only the real streams' states change, and batches of 1 to
40 streams leave a dozen programs, not forty."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnengine
from rnnengine.runtime.pool_layout import padded_batch
import conftest

ort = pytest.importorskip("onnxruntime")

SILERO = str(Path(conftest.DATA) / "silero_vad.onnx")
SR = np.array(16000, np.int64)


def test_the_ladder():
    assert [padded_batch(k) for k in range(1, 18)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12,
                                                      16, 16, 16, 16, 24]
    assert padded_batch(100) == 128 and padded_batch(96) == 96 and padded_batch(97) == 128


def test_padded_steps_match_onnxruntime_stream_by_stream():
    """Batches of 10, 5, 7, 1, 9, 5, 3 streams (padded to 12, 6, 8, 1, 12, 6, 3) of 10 open,
    in shuffled order, against one ONNX Runtime session per stream fed back by hand."""
    rng = np.random.default_rng(21)
    ref = ort.InferenceSession(SILERO, providers=["CPUExecutionProvider"])
    pool = rnnengine.InferenceSession(SILERO).pool(16, feeds={"sr": SR})
    ids = [pool.open() for _ in range(10)]
    states = [np.zeros((2, 1, 128), np.float32) for _ in ids]
    for k in (10, 5, 7, 1, 9, 5, 3):      # the first step gives every stream a state
        who = rng.permutation(10)[:k]
        x = (0.1 * rng.standard_normal((k, 512))).astype(np.float32)
        untouched = {s: pool.state(ids[s]).get("state") for s in range(10) if s not in who}
        (prob,) = pool.step([ids[s] for s in who], {"input": x})
        assert prob.shape == (k, 1)
        for j, s in enumerate(who):
            want, states[s] = ref.run(None, {"input": x[j:j + 1], "state": states[s], "sr": SR})
            np.testing.assert_allclose(prob[j:j + 1], want, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(pool.state(ids[s])["state"], states[s], rtol=1e-4,
                                       atol=1e-5)
        for s, before in untouched.items():
            np.testing.assert_array_equal(pool.state(ids[s])["state"], before)


def test_batches_of_every_size_share_a_few_programs():
    sess = rnnengine.InferenceSession(SILERO)
    pool = sess.pool(40, feeds={"sr": SR})
    ids = [pool.open() for _ in range(40)]
    for _ in range(3):                     # seen, built, run
        for k in range(1, 41):
            pool.step(ids[:k], {"input": np.zeros((k, 512), np.float32)})
    sizes = {dict((n, shape) for n, shape, _, _ in key)["input"][0]
             for key in sess.program_status()}
    assert sizes == {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48}, sorted(sizes)
    assert all(v.startswith("compiled") for v in sess.program_status().values())
