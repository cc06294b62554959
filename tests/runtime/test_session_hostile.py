"""Hostile graphs and feeds for InferenceSession: ModelError at load, ValueError naming the
input or node at run; never a crash or a hang."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import session_models as sm
from session_models import graph_model, value_info
from rnnengine import InferenceSession, ModelError


def test_cycle_is_a_model_error():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"])]
    with pytest.raises(ModelError, match="cycle.*first.*second"):
        InferenceSession(graph_model(nodes, [value_info("x", [2])], [value_info("y", [2])]))


def test_dangling_input_is_a_model_error():
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")]
    with pytest.raises(ModelError, match="'adder'.*'ghost'.*dangling"):
        InferenceSession(graph_model(nodes, [value_info("x", [2])], [value_info("y", [2])]))


def test_dangling_graph_output_is_a_model_error():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ModelError, match="'nowhere'.*dangling"):
        InferenceSession(graph_model(nodes, [value_info("x", [2])], [value_info("nowhere", [2])]))


def test_dangling_name_inside_a_branch_is_a_model_error():
    branch = helper.make_graph([helper.make_node("Identity", ["ghost"], ["o"])], "b", [],
                               [value_info("o", [1])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
    with pytest.raises(ModelError, match="ghost"):
        InferenceSession(graph_model(nodes, [value_info("c", [], TensorProto.BOOL)], [value_info("y", [1])]))


def test_name_produced_twice_is_a_model_error():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]
    with pytest.raises(ModelError, match="twice"):
        InferenceSession(graph_model(nodes, [value_info("x", [2])], [value_info("y", [2])]))


def test_not_a_model():
    with pytest.raises(ModelError, match=r"^<bytes>: not an ONNX model \("):
        InferenceSession(b"\x08\x01garbage\xff\xff")
    with pytest.raises(TypeError, match="InferenceSession takes a path, the model's bytes or an "
                                        "onnx.ModelProto; got int"):
        InferenceSession(12)


@pytest.fixture(scope="module")
def head():
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    return InferenceSession(graph_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")],
                                   [value_info("x", ["N", "F"])], [value_info("y", ["N", 3])], [w]))


def test_shape_that_does_not_fit_at_run_time_names_the_node(head):
    with pytest.raises(ValueError, match="dense"):
        head.run(None, {"x": np.ones((2, 5), np.float32)})


def test_wrong_feed_name(head):
    with pytest.raises(ValueError, match=r"unknown input name 'X'.*\['x'\]"):
        head.run(None, {"X": np.ones((2, 4), np.float32)})


def test_missing_feed(head):
    with pytest.raises(ValueError, match="missing input 'x'"):
        head.run(None, {})


def test_wrong_dtype_names_the_input(head):
    with pytest.raises(ValueError, match=r"input 'x' must be tensor\(float\).*float64"):
        head.run(None, {"x": np.ones((2, 4))})


def test_wrong_rank_names_the_input(head):
    with pytest.raises(ValueError, match=r"input 'x' must have shape \(N, F\); got \(4,\)"):
        head.run(None, {"x": np.ones(4, np.float32)})


def test_unknown_output_name(head):
    with pytest.raises(ValueError, match="unknown output name 'z'"):
        head.run(["z"], {"x": np.ones((2, 4), np.float32)})


def test_if_with_a_non_scalar_condition():
    def branch(v):
        return helper.make_graph([helper.make_node("Constant", [], ["o"], value=numpy_helper.from_array(
            np.array([v], np.float32)))], "b", [], [value_info("o", [1])])

    model = graph_model([helper.make_node("If", ["cond"], ["y"], then_branch=branch(1.0),
                                     else_branch=branch(0.0), name="switch")],
                   [value_info("cond", ["K"], TensorProto.BOOL)], [value_info("y", [1])])
    sess = InferenceSession(model)
    assert sess.run(None, {"cond": np.array([True])})[0].tolist() == [1.0]
    with pytest.raises(ValueError, match="condition 'cond' of If node 'switch'.*one element"):
        sess.run(None, {"cond": np.array([True, False])})


def test_recurrent_input_of_the_wrong_width_names_the_node():
    x = np.zeros((1, 1, 7), np.float32)   # the graph declares 10 features; use a free dim
    model = sm.packed_lstm()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "F"
    with pytest.raises(ValueError, match="lstm0"):
        InferenceSession(model).run(None, {"x": x, "state": np.zeros((1, 2, 8, 2), np.float32)})


def test_bad_precision():
    with pytest.raises(ValueError, match="one of"):
        InferenceSession(sm.packed_lstm(), precision="fp8")


def test_stream_state_names_checked():
    sess = InferenceSession(sm.packed_lstm())
    with pytest.raises(ValueError, match="'nope' is not an output"):
        sess.stream(state={"nope": "state"})
    with pytest.raises(ValueError, match="'nope' is not an input"):
        sess.stream(state={"stateN": "nope"})
    stream = sess.stream()
    with pytest.raises(ValueError, match="carries"):
        stream.step({"x": np.zeros((1, 1, 10), np.float32), "state": np.zeros((1, 2, 8, 2),
                                                                               np.float32)})


def test_outputs_never_alias_what_the_session_reuses():
    """A shape computed from the input is memoised per shape; the caller's copy of it (and
    of a constant output) may be written without changing the next run."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Mul", ["s", "two"], ["shape2"]),
             helper.make_node("Identity", ["two"], ["k"])]
    two = numpy_helper.from_array(np.array([2, 2], np.int64), "two")
    sess = InferenceSession(graph_model(nodes, [value_info("x", ["A", "B"])],
                                   [helper.make_tensor_value_info("shape2", TensorProto.INT64, [2]),
                                    helper.make_tensor_value_info("k", TensorProto.INT64, [2])],
                                   [two]))
    x = np.zeros((3, 4), np.float32)
    first, k = sess.run(None, {"x": x})
    first[...] = -1
    k[...] = -1
    again, k2 = sess.run(None, {"x": x})
    assert again.tolist() == [6, 8] and k2.tolist() == [2, 2]


def test_a_loop_that_never_stops_is_refused(monkeypatch):
    from rnnengine.runtime import steps as graph_steps
    monkeypatch.setattr(graph_steps, "MAX_LOOP_ITERATIONS", 1000)
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Add", ["s_in", "one"], ["s_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []), value_info("s_in", [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), value_info("s_out", [])])
    one = numpy_helper.from_array(np.array(1, np.float32), "one")
    model = graph_model([helper.make_node("Loop", ["", "go", "s0"], ["s"], body=body, name="spin")],
                   [helper.make_tensor_value_info("go", TensorProto.BOOL, []), value_info("s0", [])],
                   [value_info("s", [])], [one])
    sess = InferenceSession(model)
    with pytest.raises(ValueError, match="'spin' ran 1,000 iterations"):
        sess.run(None, {"go": np.array(True), "s0": np.array(0, np.float32)})
    assert sess.run(None, {"go": np.array(False), "s0": np.array(5, np.float32)})[0] == 5


def test_a_stream_or_pool_used_from_two_threads_raises():
    import threading
    sess = InferenceSession(sm.packed_lstm())
    for obj, call in ((sess.stream(), lambda s: s.step({"x": np.zeros((1, 1, 10), np.float32)})),
                      (sess.pool(2), lambda p: p.open())):
        holder = threading.Thread(target=obj._lock.acquire)   # another thread inside
        holder.start()
        holder.join()
        with pytest.raises(RuntimeError, match="another thread"):
            call(obj)
