"""State integrity of the whole-model streaming surface (SessionStream, SessionPool, the
compiled step, the Batcher): a failed call leaves the state exactly as it was, a rejected
state is never half written, a stream's batch is fixed once it has state, outputs never
share memory with feeds, with each other or with the carried state, a kept ``stream.step``
stays valid across ``reset()``, and the compiled step holds the arrays it reads while it
runs without the GIL. Every output is compared with ONNX Runtime stepped by hand (state
outputs fed back as inputs)."""
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import session_models as sm
from rnnengine import Batcher, InferenceSession

pytest.importorskip("onnxruntime")

TOL = dict(rtol=1e-4, atol=1e-4)


def _model(nodes, inputs, outputs, inits) -> bytes:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def lstm_pairs(I=8, H=8, batch="N", seed=0) -> bytes:
    """x [1, N, I], h0/c0 [1, N, H] -> LSTM -> Y [1, 1, N, H] (its own output), hn, cn."""
    rng = np.random.default_rng(seed)

    def u(*s):
        return rng.uniform(-0.3, 0.3, s).astype(np.float32)

    f = TensorProto.FLOAT
    return _model(
        [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", "hn", "cn"],
                          hidden_size=H, name="lstm")],
        [("x", f, [1, batch, I]), ("h0", f, [1, batch, H]), ("c0", f, [1, batch, H])],
        [("Y", f, [1, 1, batch, H]), ("hn", f, [1, batch, H]), ("cn", f, [1, batch, H])],
        {"W": u(1, 4 * H, I), "R": u(1, 4 * H, H), "B": u(1, 8 * H)})


class AuthorLoop:
    """ONNX Runtime stepped by hand: the state outputs fed back as the next inputs."""

    def __init__(self, model, pairs, zero):
        self.ort = sm.ort_session(model)
        self.names = [o.name for o in self.ort.get_outputs()]
        self.pairs, self.state = pairs, dict(zero)

    def step(self, feeds):
        outs = dict(zip(self.names, self.ort.run(None, {**feeds, **self.state})))
        self.state = {i: outs[o] for o, i in self.pairs.items()}
        return [outs[n] for n in self.names if n not in self.pairs]


def same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, **TOL)


# -- the compiled step holds what it reads ------------------------------------------------

def test_compiled_step_holds_its_feeds_while_other_threads_replace_them():
    """Threads replace and delete the entries of the feed dict a compiled step was given
    while it runs without the GIL, and fill freshly allocated arrays of the same size with
    garbage (the allocator hands them the memory a dropped feed had): the step must read
    the array it was given, so every output matches ONNX Runtime."""
    I, H = 2048, 64                     # x is 8 KiB: the allocator reuses it, numpy does not
    model = lstm_pairs(I, H, batch=1)
    pairs = {"hn": "h0", "cn": "c0"}
    stream = InferenceSession(model).stream(state=pairs)
    ort = AuthorLoop(model, pairs, {n: np.zeros((1, 1, H), np.float32) for n in pairs.values()})

    def x_of(k):
        return (0.1 * np.random.default_rng(k).standard_normal((1, 1, I))).astype(np.float32)

    for k in range(3):
        same(stream.step({"x": x_of(k)}), ort.step({"x": x_of(k)}))
    assert stream.compiled, stream.not_compiled
    current = {"feeds": {}}
    stop = threading.Event()

    def vandal(seed):
        # replace x by a copy (or take it out and put a copy back): the array the step
        # was given loses its last reference, and the garbage allocated next takes its place
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            feeds = current["feeds"]
            x = feeds.pop("x", None) if rng.random() < 0.5 else feeds.get("x")
            if x is not None:
                feeds["x"] = x.copy()
            del x
            junk = [np.full((1, 1, I), 7e2, np.float32) for _ in range(4)]
            del junk
            time.sleep(0)

    threads = [threading.Thread(target=vandal, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    failed = 0
    try:
        for k in range(3, 1500):
            current["feeds"] = feeds = {"x": x_of(k)}     # the dict holds the only reference
            try:
                got = stream.step(feeds)
            except ValueError as e:        # a vandal had taken x out at that moment
                assert "missing input 'x'" in str(e)
                failed += 1
                continue
            same(got, ort.step({"x": x_of(k)}))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failed < 1000
    assert stream.compiled
