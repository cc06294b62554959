"""InferenceSession(precision=...) runs its recurrent nodes in the reduced precisions
and stays within each mode's error budget against ONNX Runtime on the same file."""
import numpy as np
import pytest

import session_models as sm
from rnnengine import InferenceSession

pytest.importorskip("onnxruntime")

BUDGET = {"fp16": 5e-3, "bf16": 3e-2, "int8": 6e-2}


@pytest.mark.parametrize("precision", sorted(BUDGET))
def test_silero_stream_within_budget(precision):
    rng = np.random.default_rng(0)
    sr = np.array(16000, np.int64)
    ort = sm.ort_session(sm.SILERO)
    sess = InferenceSession(sm.SILERO, precision=precision)
    assert sess.precision == precision
    stream = sess.stream(feeds={"sr": sr})
    state = np.zeros((2, 1, 128), np.float32)
    worst = 0.0
    for _ in range(30):
        x = (rng.standard_normal((1, 512)) * 0.3).astype(np.float32)
        want, state = ort.run(None, {"input": x, "state": state, "sr": sr})
        got, = stream.step({"input": x})
        worst = max(worst, float(np.abs(got - want).max()))
    # The speech probability is the model's answer; its state holds LSTM cells whose
    # magnitudes reach the thousands on Silero's ReLU front end, so it has no absolute budget.
    assert worst <= BUDGET[precision], worst


@pytest.mark.parametrize("precision", sorted(BUDGET))
def test_packed_state_model_run_within_budget(precision):
    model = sm.packed_lstm(hidden=64, features=32)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 1, 32)).astype(np.float32),
             "state": (rng.standard_normal((1, 2, 64, 2)) * 0.5).astype(np.float32)}
    want = sm.ort_session(model).run(None, feeds)
    got = InferenceSession(model, precision=precision).run(None, feeds)
    exact = InferenceSession(model).run(None, feeds)
    for g, e, w in zip(got, exact, want):
        assert np.abs(e - w).max() <= 1e-4
        assert 0 < np.abs(g - w).max() <= BUDGET[precision]   # reduced, and within budget
