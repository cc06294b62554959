"""InferenceSession's threads: ``threads=`` or an ONNX Runtime SessionOptions'
``intra_op_num_threads`` reaches every recurrent node's kernels (whole-sequence runs stay
on the threaded kernels rather than a compiled one-thread sequence core), results stay those
of ONNX Runtime (1e-4), and ORT's 0 ("ORT picks") means rnnengine's default, 1."""
from __future__ import annotations

import numpy as np
import pytest

import rnnengine
import session_models as sm

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lstm():
    """Embedding -> 2-layer LSTM (hidden 64) -> Linear, state in and out."""
    return sm.embedding_lstm(True, seed=5, hidden=64)


def options(threads: int):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    return o


def recurrent_threads(sess) -> set:
    return {rec.model.threads for rec in sess.loaded.recurrent}


def test_intra_op_num_threads_reaches_every_recurrent_node(lstm):
    assert rnnengine.InferenceSession(lstm).threads == 1
    assert recurrent_threads(rnnengine.InferenceSession(lstm)) == {1}
    for sess in (rnnengine.InferenceSession(lstm, sess_options=options(3)),
                 rnnengine.InferenceSession(lstm, options(3)),           # ORT's position
                 rnnengine.InferenceSession(lstm, threads=3)):
        assert sess.threads == 3 and recurrent_threads(sess) == {3}
    assert rnnengine.InferenceSession(lstm, options(0)).threads == 1
    assert rnnengine.InferenceSession(lstm, options(3), threads=2).threads == 2
    with pytest.raises(ValueError, match="threads"):
        rnnengine.InferenceSession(lstm, threads=0)


def test_threaded_runs_and_streams_match_onnxruntime(lstm):
    rng = np.random.default_rng(6)
    ref = sm.ort_session(lstm)
    sess = rnnengine.InferenceSession(lstm, options(2))
    feeds = {"tokens": rng.integers(0, 20, (3, 40)).astype(np.int64),
             "h0": rng.standard_normal((2, 3, 64)).astype(np.float32),
             "c0": rng.standard_normal((2, 3, 64)).astype(np.float32)}
    want = ref.run(None, feeds)
    for _ in range(4):                          # general path, then the compiled program
        for got, w in zip(sess.run(None, feeds), want):
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4)
    status = list(sess.program_status().values())
    assert status and all("LSTM node" in s for s in status), status   # the threaded kernels
    stream = sess.stream()
    state = {"h0": np.zeros((2, 1, 64), np.float32), "c0": np.zeros((2, 1, 64), np.float32)}
    for t in range(5):
        tok = {"tokens": feeds["tokens"][:1, t:t + 1]}
        logp, hn, cn = ref.run(None, {**tok, **state})
        state = {"h0": hn, "c0": cn}
        np.testing.assert_allclose(stream.step(tok)[0], logp, rtol=1e-4, atol=1e-4)
