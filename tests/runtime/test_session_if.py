"""``If`` branches run in the value table they share with the main graph, and a condition that
comes from a memoised shape computation (or a constant) picks its branch once per shape: the
answers must follow the condition whenever it changes, and match ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnengine

ort = pytest.importorskip("onnxruntime")


def branch(name, node, out):
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(
        out, TensorProto.FLOAT, None)])


def shape_if_model():
    """y = If(Shape(x)[0] == 1, then: Neg(x) * w, else: If(Shape(x)[1] == 3, x + w, x)):
    nested Ifs on shapes, branches reading outer values and an outer initializer."""
    w = numpy_helper.from_array(np.array(2.0, np.float32), "w")
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    three = numpy_helper.from_array(np.array([3], np.int64), "three")
    inner = helper.make_node(
        "If", ["c3"], ["e"],
        then_branch=branch("t2", helper.make_node("Add", ["x", "w"], ["e_t"]), "e_t"),
        else_branch=branch("e2", helper.make_node("Identity", ["x"], ["e_e"]), "e_e"))
    then_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Mul", ["n", "w"], ["t"])],
        "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s2"]),
         helper.make_node("Slice", ["s2", "one", "c2end"], ["d1"]),
         helper.make_node("Equal", ["d1", "three"], ["c3v"]),
         helper.make_node("Squeeze", ["c3v"], ["c3"]), inner],
        "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    c2end = numpy_helper.from_array(np.array([2], np.int64), "c2end")
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["d0"]),
             helper.make_node("Equal", ["d0", "one"], ["cv"]),
             helper.make_node("Squeeze", ["cv"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, one, three, c2end, zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def cond_input_model():
    """The condition is a graph input: the caller may write the same array over."""
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"],
                          then_branch=branch("t", helper.make_node("Neg", ["x"], ["a"]), "a"),
                          else_branch=branch("e", helper.make_node("Abs", ["x"], ["b"]), "b"))],
        "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_shape_conditions_follow_every_shape_change():
    model = shape_if_model()
    sess = rnnengine.InferenceSession(model)
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in [(1, 3), (2, 3), (2, 3), (1, 3), (2, 4), (1, 4), (2, 3), (2, 4)]:
        x = rng.standard_normal(shape).astype(np.float32)
        (want,) = ref.run(None, {"x": x})
        (got,) = sess.run(None, {"x": x})
        assert got.shape == want.shape and np.allclose(got, want, rtol=1e-6)


def test_condition_fed_in_place_is_read_every_run():
    model = cond_input_model()
    sess = rnnengine.InferenceSession(model)
    c = np.array(True)
    x = np.array([-1.5, 2.0], np.float32)
    assert np.array_equal(sess.run(None, {"c": c, "x": x})[0], -x)
    c[...] = False          # the same array object, a new value
    assert np.array_equal(sess.run(None, {"c": c, "x": x})[0], np.abs(x))
