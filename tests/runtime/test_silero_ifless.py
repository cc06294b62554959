"""A real export without an LSTM node: silero-vad's own `silero_vad_op18_ifless.onnx` (MIT,
tests/data/silero_vad.LICENSE; a dynamo export whose decoder LSTMCell is unrolled into
Gemm/Split/Sigmoid/Tanh/Mul/Add in both branches of its one If). The session must recognise
both cells, pair the state, and stream and pool it exactly like ONNX Runtime running the file as
written (the author-style loop feeds `stateN` back as `state` by hand)."""
import os

import numpy as np
import onnxruntime as ort

from rnnengine import InferenceSession
import conftest
from session_models import AuthorLoop
from stream_checks import same

PATH = os.path.join(conftest.DATA, "silero_vad_op18_ifless.onnx")
SR = np.array(16000, np.int64)
TOL = dict(rtol=1e-4, atol=1e-4)


def chunks(rng, n, batch=1):
    t = np.arange(512) / 16000
    return [(0.2 * np.sin(2 * np.pi * 150 * (k % 7 + 1) * t)[None].repeat(batch, 0)
             + 0.05 * rng.standard_normal((batch, 512))).astype(np.float32) for k in range(n)]


def author_loop():
    """ONNX Runtime on the file as written, the state round-tripped by hand."""
    return AuthorLoop(PATH, {"stateN": "state"}, {"state": np.zeros((2, 1, 128), np.float32)})


def test_both_unrolled_cells_run_on_the_recurrent_kernels():
    sess = InferenceSession(PATH)
    recurrent = [k for k, v in sess.placement().items() if v == "recurrent"]
    assert len(recurrent) == 2 and all(k.startswith("LSTM cell") for k in recurrent)
    assert sess.stream(feeds={"sr": SR}).state_names == {"stateN": "state"}


def test_run_matches_onnxruntime():
    xs = chunks(np.random.default_rng(0), 1, batch=3)
    state = np.random.default_rng(1).standard_normal((2, 3, 128)).astype(np.float32) * 0.3
    feeds = {"input": xs[0], "sr": SR, "state": state}
    want = ort.InferenceSession(PATH, providers=["CPUExecutionProvider"]).run(None, feeds)
    same(InferenceSession(PATH).run(None, feeds), want)


def test_stream_200_steps_matches_the_author_loop():
    xs = chunks(np.random.default_rng(2), 200)
    ref = author_loop()
    stream = InferenceSession(PATH).stream(feeds={"sr": SR})
    for x in xs:
        same(stream.step({"input": x}), ref.step({"input": x, "sr": SR}))
    np.testing.assert_allclose(stream.state["state"], ref.state["state"], **TOL)


def test_pool_of_interleaved_streams_matches_separate_loops():
    rng = np.random.default_rng(3)
    streams = [chunks(rng, 8) for _ in range(4)]
    refs = [author_loop() for _ in streams]
    want = [[refs[i].step({"input": x, "sr": SR})[0] for x in xs] for i, xs in enumerate(streams)]
    pool = InferenceSession(PATH).pool(8, feeds={"sr": SR})
    ids = [pool.open() for _ in streams]
    done = [0] * len(streams)
    for t in range(12):
        active = [i for i in range(4) if (t + i) % 3 and done[i] < 8]   # a changing subset
        if not active:
            continue
        (got,) = pool.step([ids[i] for i in active],
                           {"input": np.concatenate([streams[i][done[i]] for i in active])})
        for row, i in enumerate(active):
            np.testing.assert_allclose(got[row:row + 1], want[i][done[i]], **TOL)
            done[i] += 1
    assert min(done) >= 6
