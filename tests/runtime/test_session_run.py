"""InferenceSession.run against ONNX Runtime on the same file and feeds (within 1e-4)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import session_models as sm
from session_models import graph_model, value_info
from rnnengine import InferenceSession, ModelError

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

TOL = dict(rtol=1e-4, atol=1e-4)


def assert_same_as_ort(model, feeds, names=None):
    ours = InferenceSession(model).run(names, feeds)
    theirs = sm.ort_session(model).run(names, feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert isinstance(a, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, **TOL)
    return ours


@pytest.fixture(scope="module")
def models():
    return {"a_state": sm.embedding_lstm(True), "a_plain": sm.embedding_lstm(False),
            "b_linear": sm.frontend_gru(False), "b_conv": sm.frontend_gru(True),
            "c": sm.bilstm_classifier(), "d": sm.packed_lstm()}


@pytest.mark.parametrize("N,T", [(1, 1), (1, 7), (3, 5)])
def test_embedding_lstm(models, N, T):
    rng = np.random.default_rng(N * 10 + T)
    tokens = rng.integers(0, 20, (N, T)).astype(np.int64)
    assert_same_as_ort(models["a_plain"], {"tokens": tokens})
    h0, c0 = (rng.standard_normal((2, N, 16)).astype(np.float32) for _ in range(2))
    outs = assert_same_as_ort(models["a_state"], {"tokens": tokens, "h0": h0, "c0": c0})
    assert outs[0].shape == (N, T, 20)


def test_only_named_outputs_in_their_order(models):
    rng = np.random.default_rng(1)
    feeds = {"tokens": rng.integers(0, 20, (2, 4)).astype(np.int64),
             "h0": np.zeros((2, 2, 16), np.float32), "c0": np.ones((2, 2, 16), np.float32)}
    outs = assert_same_as_ort(models["a_state"], feeds, ["cn", "logp"])
    assert outs[0].shape == (2, 2, 16) and outs[1].shape == (2, 4, 20)


@pytest.mark.parametrize("front", ["b_linear", "b_conv"])
def test_frontend_gru(models, front):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 10, 6) if front == "b_conv" else (3, 6, 10)).astype(np.float32)
    assert_same_as_ort(models[front], {"x": x, "h0": rng.standard_normal((1, 3, 16)).astype(
        np.float32)})


@pytest.mark.parametrize("lens", [[7, 3, 1], [7, 7, 7], [2, 5, 4]])
def test_bidirectional_classifier_with_lengths(models, lens):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 3, 6)).astype(np.float32)
    assert_same_as_ort(models["c"], {"x": x, "lens": np.array(lens, np.int32)})


def test_packed_state_graph(models):
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((1, 1, 10)).astype(np.float32),
             "state": rng.standard_normal((1, 2, 8, 2)).astype(np.float32)}
    assert_same_as_ort(models["d"], feeds)


@pytest.mark.parametrize("N,samples", [(1, 512), (4, 512), (2, 576)])
def test_silero_whole(N, samples):
    rng = np.random.default_rng(N)
    feeds = {"input": (rng.standard_normal((N, samples)) * 0.1).astype(np.float32),
             "state": (rng.standard_normal((2, N, 128)) * 0.3).astype(np.float32),
             "sr": np.array(16000, np.int64)}
    assert_same_as_ort(sm.SILERO, feeds)


def test_one_session_follows_changing_shapes():
    """Shape computations are memoised per input shape: changing the batch and back must
    still give ORT's results (Silero's If conditions and sizes come from Shape nodes)."""
    ours, theirs = InferenceSession(sm.SILERO), sm.ort_session(sm.SILERO)
    rng = np.random.default_rng(11)
    for N, samples in [(1, 512), (3, 512), (2, 576), (1, 512)]:
        feeds = {"input": (rng.standard_normal((N, samples)) * 0.1).astype(np.float32),
                 "state": (rng.standard_normal((2, N, 128)) * 0.3).astype(np.float32),
                 "sr": np.array(16000, np.int64)}
        for a, b in zip(ours.run(None, feeds), theirs.run(None, feeds)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, **TOL)
    assert any(label.startswith("shapes of") for p in ours.loaded.plans for label in p.labels)


def test_silero_state_of_wrong_fixed_dim_is_refused_like_ort():
    feeds = {"input": np.full((1, 512), 0.05, np.float32),
             "state": np.zeros((0, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    with pytest.raises(Exception, match="Got invalid dimensions for input: state"):
        sm.ort_session(sm.SILERO).run(None, feeds)
    with pytest.raises(ValueError, match=r"input 'state' must have shape \(2, batch, 128\)"):
        InferenceSession(sm.SILERO).run(None, feeds)


def test_ort_style_arguments_are_accepted():
    import onnxruntime as ort
    sess = InferenceSession(sm.SILERO, ort.SessionOptions(), providers=["CPUExecutionProvider"])
    assert sess.precision == "fp32"
    assert sess.state_pairs() == {"stateN": "state"}


def test_inputs_and_outputs_like_ort():
    ours = InferenceSession(sm.SILERO)
    theirs = sm.ort_session(sm.SILERO)
    for a, b in zip(ours.get_inputs() + ours.get_outputs(),
                    theirs.get_inputs() + theirs.get_outputs()):
        assert (a.name, a.type, a.shape) == (b.name, b.type, b.shape)


def test_placement_runs_recurrent_nodes_on_the_engine():
    sess = InferenceSession(sm.SILERO)
    kinds = sess.placement()
    assert [k for k, v in kinds.items() if v == "recurrent"] == [
        "/model/decoder/rnn/LSTM", "/model/decoder/rnn_1/LSTM"]
    assert "ort" not in kinds.values()   # every Silero operator is native
    assert "recurrent" in repr(sess)


def test_silero_runs_natively_without_onnxruntime(monkeypatch):
    rng = np.random.default_rng(12)
    feeds = {"input": (rng.standard_normal((2, 512)) * 0.1).astype(np.float32),
             "state": (rng.standard_normal((2, 2, 128)) * 0.3).astype(np.float32),
             "sr": np.array(16000, np.int64)}
    expected = sm.ort_session(sm.SILERO).run(None, feeds)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    sess = InferenceSession(sm.SILERO)
    assert "ort" not in sess.placement().values()
    for a, b in zip(sess.run(None, feeds), expected):
        np.testing.assert_allclose(a, b, **TOL)


def test_bytes_path_and_proto_load_the_same(tmp_path):
    data = sm.packed_lstm().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    feeds = {"x": np.ones((1, 1, 10), np.float32), "state": np.zeros((1, 2, 8, 2), np.float32)}
    results = [InferenceSession(src).run(None, feeds)
               for src in (data, str(path), path, onnx.load(str(path)))]
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)


# --- operators through ONNX Runtime, control flow ----------------------------------------

def test_unknown_ops_are_grouped_into_few_ort_sessions():
    """LpNormalization -> Hardmax are joined (one session); the native Add between the
    first LpNormalization and the second splits them."""
    nodes = [helper.make_node("LpNormalization", ["x"], ["a"]),
             helper.make_node("Hardmax", ["a"], ["b"]),
             helper.make_node("Add", ["a", "x"], ["r"]),
             helper.make_node("LpNormalization", ["r"], ["c"]),
             helper.make_node("Add", ["b", "c"], ["y"])]
    model = graph_model(nodes, [value_info("x", ["N", 5])], [value_info("y", ["N", 5])])
    sess = InferenceSession(model)
    groups = sess.loaded.ort_groups
    assert sorted(len(g.nodes) for g in groups) == [1, 2]
    assert sess.placement()["<unnamed Add -> r>"] == "native"
    x = np.random.default_rng(5).standard_normal((3, 5)).astype(np.float32)
    assert_same_as_ort(model, {"x": x})


def test_without_onnxruntime_loading_lists_the_ops(monkeypatch):
    model = graph_model([helper.make_node("LpNormalization", ["x"], ["a"]),
                    helper.make_node("Hardmax", ["a"], ["y"])],
                   [value_info("x", [2, 5])], [value_info("y", [2, 5])])
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ModelError, match="Hardmax, LpNormalization"):
        InferenceSession(model)


def _lstm_weights(rng, I, H):
    return [numpy_helper.from_array(rng.uniform(-0.5, 0.5, s).astype(np.float32), n)
            for n, s in (("W", (1, 4 * H, I)), ("R", (1, 4 * H, H)), ("B", (1, 8 * H)))]


def test_loop_with_an_lstm_in_its_body():
    """A Loop that runs an LSTM M times on its own output state (the body reads W/R/B and
    x from the outer graph)."""
    rng = np.random.default_rng(6)
    I = H = 4
    body = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h_in", "c_in"],
                          ["Y", "h_out", "c_out"], hidden_size=H),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("ReduceSum", ["h_out"], ["scan"], keepdims=0)],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         value_info("h_in", [1, 2, H]), value_info("c_in", [1, 2, H])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         value_info("h_out", [1, 2, H]), value_info("c_out", [1, 2, H]), value_info("scan", [])])
    nodes = [helper.make_node("Loop", ["M", "", "h0", "c0"], ["hN", "cN", "sums"], body=body)]
    model = graph_model(nodes, [value_info("x", [3, 2, I]), value_info("h0", [1, 2, H]), value_info("c0", [1, 2, H]),
                           helper.make_tensor_value_info("M", TensorProto.INT64, [])],
                   [value_info("hN", [1, 2, H]), value_info("cN", [1, 2, H]), value_info("sums", ["K"])],
                   _lstm_weights(rng, I, H))
    sess = InferenceSession(model)
    assert "recurrent" in sess.placement().values()
    feeds = {"x": rng.standard_normal((3, 2, I)).astype(np.float32),
             "h0": np.zeros((1, 2, H), np.float32), "c0": np.zeros((1, 2, H), np.float32),
             "M": np.array(3, np.int64)}
    assert_same_as_ort(model, feeds)


def test_if_picks_its_branch_from_a_run_time_value():
    """The branch depends on an input (like a sample-rate switch); each branch holds an
    LSTM with different weights read from the outer scope."""
    rng = np.random.default_rng(7)
    I = H = 3
    w1, w2 = _lstm_weights(rng, I, H), _lstm_weights(rng, I, H)
    for t in w2:
        t.name += "2"

    def branch(suffix):
        return helper.make_graph(
            [helper.make_node("LSTM", ["x", "W" + suffix, "R" + suffix, "B" + suffix],
                              ["Y" + suffix, "h" + suffix], hidden_size=H)],
            "b" + suffix, [], [value_info("h" + suffix, [1, 1, H])])

    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
                 np.array(16000, np.int64))),
             helper.make_node("Equal", ["sr", "k"], ["is16"]),
             helper.make_node("If", ["is16"], ["h"], then_branch=branch(""),
                              else_branch=branch("2"))]
    model = graph_model(nodes, [value_info("x", [2, 1, I]), helper.make_tensor_value_info(
        "sr", TensorProto.INT64, [])], [value_info("h", [1, 1, H])], w1 + w2)
    x = rng.standard_normal((2, 1, I)).astype(np.float32)
    a = assert_same_as_ort(model, {"x": x, "sr": np.array(16000, np.int64)})
    b = assert_same_as_ort(model, {"x": x, "sr": np.array(8000, np.int64)})
    assert not np.allclose(a[0], b[0])


def test_ort_group_inside_a_branch_reads_outer_values():
    then = helper.make_graph([helper.make_node("LpNormalization", ["x"], ["t"], axis=0),
                              helper.make_node("Relu", ["t"], ["o"])], "then", [],
                             [value_info("o", [4])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [value_info("e", [4])])
    model = graph_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                   [value_info("x", [4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                   [value_info("y", [4])])
    sess = InferenceSession(model)
    assert "ort" in sess.placement().values()
    x = np.array([1.0, -2.0, 3.0, -4.0], np.float32)
    for c in (True, False):
        assert_same_as_ort(model, {"x": x, "c": np.array(c)})


@pytest.mark.parametrize("axis", [0, 1])
def test_gather_from_a_constant_table(axis):
    """Gather of a constant table by run-time indices (an embedding: graph_steps.lookup_step
    on axis 0) against ORT: negative indices, int32, 1-D to 3-D indices; a 0-d index and
    an index out of range go through the general operator (ValueError naming the node)."""
    rng = np.random.default_rng(9)
    table = rng.standard_normal((7, 5)).astype(np.float32)
    for dtype in (TensorProto.INT64, TensorProto.INT32):
        graph = helper.make_graph(
            [helper.make_node("Gather", ["table", "idx"], ["y"], name="emb", axis=axis)], "g",
            [helper.make_tensor_value_info("idx", dtype, None)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(table, "table")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        data = model.SerializeToString()
        np_dtype = np.int64 if dtype == TensorProto.INT64 else np.int32
        for idx in ([3], [[0, -1], [4, 2]], [[[1]], [[-5]]], 2):
            assert_same_as_ort(data, {"idx": np.array(idx, np_dtype)})
        with pytest.raises(ValueError, match="emb"):
            InferenceSession(data).run(None, {"idx": np.array([1, 7 if axis == 0 else 5],
                                                              np_dtype)})
