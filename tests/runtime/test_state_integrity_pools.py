"""Pools keep their streams apart, and state bytes only go back into the model they came
from. Each stream of a pool is checked against ONNX Runtime running that stream alone, its
state outputs fed back by hand."""
import json
import struct
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnengine
import session_models as sm
from rnnengine import InferenceSession

pytest.importorskip("onnxruntime")

TOL = dict(rtol=1e-4, atol=1e-4)
SR = np.array(16000, np.int64)
F, H = 5, 6


def cell_graph(out_dims, seed=0, state_dims=("batch", H), x_dims=("batch", F)):
    """h' = tanh(x W + h U); y = Softmax(h'). The output y's declared shape is ``out_dims``
    (None: no shape), as exporters write it: Keras names its batch dim after the node."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, (F, H)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-1, 1, (H, H)).astype(np.float32), "U")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("MatMul", ["h", "U"], ["hu"]),
             helper.make_node("Add", ["xw", "hu"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["h_out"]),
             helper.make_node("Softmax", ["h_out"], ["y"], axis=-1)]
    y = (helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_dims))
         if out_dims is not None else helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "cell",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims)),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, list(state_dims))],
        [y, helper.make_tensor_value_info("h_out", TensorProto.FLOAT, list(state_dims))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def peak_graph(y_dims=("batch", 4)):
    """Peak normalisation over ALL axes, batch included: x / max|x|; s' = 0.5 s + that."""
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("Abs", ["x"], ["ax"]),
             helper.make_node("ReduceMax", ["ax"], ["peak"], keepdims=1),
             helper.make_node("Div", ["x", "peak"], ["xn"]),
             helper.make_node("Mul", ["s", "half"], ["sh"]),
             helper.make_node("Add", ["sh", "xn"], ["s_out"]),
             helper.make_node("Identity", ["s_out"], ["y"])]
    graph = helper.make_graph(
        nodes, "peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_dims)),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["batch", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def torch_gru(out_name="N"):
    """A torch export whose output names its batch dim differently from the inputs."""
    import torch

    class G(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(F, H, batch_first=True)
            self.head = torch.nn.Linear(H, 2)

        def forward(self, x, h0):
            y, h = self.gru(x, h0)
            return torch.sigmoid(self.head(y)), h

    torch.manual_seed(1)
    dyn = {"x": {0: "batch"}, "h0": {1: "batch"}, "y": {0: out_name}, "hn": {1: "batch"}}
    return sm._export(G(), (torch.randn(1, 1, F), torch.zeros(1, 1, H)), ["x", "h0"],
                      ["y", "hn"], dyn)


def silero_unnamed():
    """The silero file with every dim_param of its inputs and outputs cleared (None dims),
    as the official silero_vad.onnx declares them."""
    model = onnx.load(sm.SILERO)
    for value in list(model.graph.input) + list(model.graph.output):
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.ClearField("dim_param")
    return model


def alone(ort, feeds_per_step, pairs, zero, fixed=None):
    """Each stream run alone through ORT: [outputs per step] and the final state."""
    names = [o.name for o in ort.get_outputs()]
    state, results = dict(zero), []
    for feeds in feeds_per_step:
        outs = dict(zip(names, ort.run(None, {**feeds, **state, **(fixed or {})})))
        state = {i: outs[o] for o, i in pairs.items()}
        results.append([outs[n] for n in names if n not in pairs])
    return results, state


def pool_matches_ort(model, make_row, pairs, zero, n=3, steps=4, fixed=None, axis=0):
    """n streams stepped together for ``steps`` steps; each must match ORT alone."""
    sess = InferenceSession(model)
    pool = sess.pool(capacity=n + 1, state=pairs, feeds=fixed)
    ids = [pool.open() for _ in range(n)]
    rng = np.random.default_rng(5)
    rows = [[make_row(rng) for _ in range(steps)] for _ in ids]
    ort = sm.ort_session(model)
    want = [alone(ort, rows[j], pairs, zero, fixed) for j in range(n)]
    for t in range(steps):
        stacked = {k: np.concatenate([rows[j][t][k] for j in range(n)], axis=axis)
                   for k in rows[0][t]}
        got = pool.step(ids, stacked)
        assert len(got) == len(want[0][0][t])
        for i, out in enumerate(got):
            expect = np.concatenate([want[j][0][t][i] for j in range(n)], axis=axis)
            assert out.shape == expect.shape, (t, i, out.shape, expect.shape)
            np.testing.assert_allclose(out, expect, **TOL)
    for j, sid in enumerate(ids):
        for name, value in pool.state(sid).items():
            np.testing.assert_allclose(value, want[j][1][name], **TOL)
    return pool


def x_row(rng):
    return {"x": rng.standard_normal((1, F)).astype(np.float32)}


ZERO = {"h": np.zeros((1, H), np.float32)}


# --- batchability from what the graph computes ----------------------------------------------

@pytest.mark.parametrize("out_dims", [("Softmax255_dim_0", H), None, (1, H)],
                         ids=["keras-named", "no-shape", "stale-1"])
def test_pool_streams_stay_apart_whatever_the_output_dims_say(out_dims):
    pool = pool_matches_ort(cell_graph(out_dims), x_row, {"h_out": "h"}, ZERO)
    assert pool.batched and "one graph pass" in repr(pool)
    assert "fixed at batch 1" not in repr(pool)


def test_pool_of_a_torch_export_with_its_own_output_dim_name():
    zero = {"h0": np.zeros((1, 1, H), np.float32)}
    pool = pool_matches_ort(torch_gru(), lambda rng: {
        "x": rng.standard_normal((1, 1, F)).astype(np.float32)}, {"hn": "h0"}, zero)
    assert pool.batched


def test_pool_batches_a_graph_with_unnamed_dims():
    chunks = lambda rng: {"input": (0.1 * rng.standard_normal((1, 512))).astype(np.float32)}
    pool = pool_matches_ort(silero_unnamed(), chunks, {"stateN": "state"},
                            {"state": np.zeros((2, 1, 128), np.float32)}, n=3, steps=3,
                            fixed={"sr": SR})
    assert pool.batched and "one graph pass" in repr(pool)
    assert "fixed at batch 1" not in repr(pool)


def test_pool_refuses_to_batch_a_graph_that_mixes_streams():
    pool = pool_matches_ort(peak_graph(), lambda rng: {
        "x": rng.standard_normal((1, 4)).astype(np.float32)}, {"s_out": "s"},
        {"s": np.zeros((1, 4), np.float32)})
    assert not pool.batched
    assert "one by one" in repr(pool) and "mix" in repr(pool)


def test_batcher_splits_outputs_on_the_axis_the_graph_computes():
    """y declared (4, batch) though the graph gives (batch, 4): a stale declaration."""
    model = peak_graph(y_dims=(4, "batch"))
    # no mixing, so that the graph may batch: drop the peak normalisation
    for node in model.graph.node:
        if node.op_type == "Div":
            node.input[1] = "half"
    sess = InferenceSession(model)
    ort = sm.ort_session(model)
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(2)]
    results = [None, None]
    with rnnengine.Batcher(sess, state={"s_out": "s"}, max_delay_us=5_000_000) as batcher:
        sids = [batcher.open(), batcher.open()]

        def go(j):
            results[j] = batcher.step(sids[j], {"x": xs[j]})

        threads = [threading.Thread(target=go, args=(j,)) for j in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for j in range(2):
        want, _ = alone(ort, [{"x": xs[j]}], {"s_out": "s"}, {"s": np.zeros((1, 4), np.float32)})
        assert results[j][0].shape == want[0][0].shape
        np.testing.assert_allclose(results[j][0], want[0][0], **TOL)


# --- state bytes: fingerprint, checksum, nesting --------------------------------------------

def test_session_state_bytes_only_fit_their_model():
    a, b = InferenceSession(cell_graph(("batch", H), seed=0)), InferenceSession(
        cell_graph(("batch", H), seed=1))
    stream = a.stream(state={"h_out": "h"})
    stream.step({"x": np.ones((1, F), np.float32)})
    blob = stream.export_state()
    other = b.stream(state={"h_out": "h"})
    with pytest.raises(ValueError, match="different model"):
        other.import_state(blob)
    pool = b.pool(2, state={"h_out": "h"})
    with pytest.raises(ValueError, match="different model"):
        pool.import_state(blob)
    with rnnengine.Batcher(b, state={"h_out": "h"}) as batcher:
        with pytest.raises(ValueError, match="different model"):
            batcher.resume(blob)
    # the same model loaded again takes it
    again = InferenceSession(cell_graph(("batch", H), seed=0)).stream(state={"h_out": "h"})
    again.import_state(blob)
    np.testing.assert_array_equal(again.state["h"], stream.state["h"])


def test_corrupted_session_state_bytes_are_refused():
    sess = InferenceSession(cell_graph(("batch", H)))
    stream = sess.stream(state={"h_out": "h"})
    stream.step({"x": np.ones((1, F), np.float32)})
    blob = bytearray(stream.export_state())
    blob[-3] ^= 0x40                       # one bit of the payload
    with pytest.raises(ValueError, match="checksum"):
        sess.stream(state={"h_out": "h"}).import_state(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        sess.pool(2, state={"h_out": "h"}).import_state(bytes(blob))


def test_old_session_state_bytes_are_refused_clearly():
    head = json.dumps([["h", "float32", [1, H]]]).encode()
    old = b"RNNESESS" + struct.pack("<I", len(head)) + head + bytes(4 * H)
    with pytest.raises(ValueError, match="older"):
        InferenceSession(cell_graph(("batch", H))).stream(state={"h_out": "h"}).import_state(old)


def test_layer_and_session_state_bytes_do_not_cross():
    sess = InferenceSession(cell_graph(("batch", H)))
    stream = sess.stream(state={"h_out": "h"})
    model = InferenceSession(sm.embedding_lstm(False)).loaded.recurrent[0].model
    blob = model.stream().export_state()
    with pytest.raises(ValueError, match="session"):
        stream.import_state(blob)
    with pytest.raises(ValueError, match="session"):
        model.stream().import_state(stream.export_state())


def nested(magic_version: bytes) -> bytes:
    head = ("[" * 100_000 + "]" * 100_000).encode()
    return magic_version + struct.pack("<I", len(head)) + head


@pytest.mark.parametrize("blob, reason", [
    (nested(b"RNNESESS"), "a session state exported by an older rnnengine"),
    (nested(b"RNNESTAT\x01\x00"), "header JSON is nested too deeply")], ids=["old-magic", "current"])
def test_deeply_nested_state_header_is_a_value_error(blob, reason):
    sess = InferenceSession(sm.SILERO)
    reason = f"^not a valid rnnengine state: {reason}"
    with pytest.raises(ValueError, match=reason):
        sess.stream(feeds={"sr": SR}).import_state(blob)
    with pytest.raises(ValueError, match=reason):
        sess.pool(2, feeds={"sr": SR}).import_state(blob)
    with rnnengine.Batcher(sess, feeds={"sr": SR}) as batcher:
        with pytest.raises(ValueError, match=reason):
            batcher.resume(blob)
