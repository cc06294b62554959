"""The executor's kernels for the operators of sequence models beyond the first set
(``executor_ops``, ``exec.h``): Softmax/LogSoftmax on any axis and both opset semantics,
LayerNormalization and InstanceNormalization, Gelu, the rounding, sign and trigonometric
unaries, HardSwish, Softsign, float Mod, and the masks' operators: comparisons and logic to
bools, Not, Where on a computed condition, Cast between float32, int64 and bool. Each is
checked against ONNX Runtime on random shapes and attributes, on the call that runs the
program, and must have been compiled to its kernel (``program_status`` names it, and names
no call).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnengine
from test_executor import compiled_matches_ort, single


def random_shape(rng, rank, low=1, high=5):
    return tuple(int(d) for d in rng.integers(low, high + 1, rank))


def assert_compiled(status, kind):
    assert kind in status and "call" not in status, status


# -- Softmax / LogSoftmax ---------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_softmax_random_shapes_and_axes(op, opset, rank, rng):
    for _ in range(3):
        x = rng.standard_normal(random_shape(rng, rank)).astype(np.float32)
        axis = int(rng.integers(-rank, rank))
        status = compiled_matches_ort(single(op, {"x": x}, {"axis": axis}, opset=opset),
                                      {"x": x}, rng, rtol=1e-5, atol=1e-6)
        assert_compiled(status, "softmax")


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_default_axis(op, opset, rng):
    """No axis attribute: the last axis from opset 13, 1 (everything from it on) before."""
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    status = compiled_matches_ort(single(op, {"x": x}, opset=opset), {"x": x}, rng)
    assert_compiled(status, "softmax")


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_is_stable_on_large_values(op, axis, rng):
    """Inputs scaled to hundreds: exp would overflow without the maximum subtracted."""
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "k"], ["big"]),
             helper.make_node(op, ["big"], ["y"], axis=axis)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(400.0, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    status = compiled_matches_ort(model, {"x": x}, rng, rtol=1e-5, atol=1e-4)
    assert_compiled(status, "softmax")


@pytest.mark.parametrize("shape,axis", [((0, 4), -1), ((3, 0), 0), ((3, 0), 1),
                                        ((2, 0, 3), -1)])
def test_softmax_empty(shape, axis, rng):
    x = np.zeros(shape, np.float32)
    nodes = [helper.make_node("Neg", ["x"], ["n"]),       # so the program has a kernel to run
             helper.make_node("Softmax", ["n"], ["y"], axis=axis)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    status = compiled_matches_ort(model, {"x": x}, rng)
    assert_compiled(status, "softmax")


# -- LayerNormalization -----------------------------------------------------------------------

def _param_shape(row, kind):
    """A scale or bias shape for a row shape ``row``: the row itself, its trailing dims with a
    leading 1 kept, a single value, or its last dim (broadcast over the rest of the row)."""
    if kind == "full":
        return row
    if kind == "one":
        return (1,)
    if kind == "last":
        return row[-1:]
    return (1,) * (len(row) - 1) + row[-1:]


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
@pytest.mark.parametrize("scale_kind", ["full", "one", "last", "ones"])
@pytest.mark.parametrize("bias", ["const", "input", None])
def test_layernorm_random(rank, scale_kind, bias, rng):
    x = rng.standard_normal(random_shape(rng, rank)).astype(np.float32)
    axis = int(rng.integers(-rank, rank))
    row = x.shape[axis % rank:]
    scale = rng.standard_normal(_param_shape(row, scale_kind)).astype(np.float32)
    consts = {"s": scale}
    inputs = {"x": x}
    names = ["x", "s"]
    if bias == "const":
        consts["b"] = rng.standard_normal(_param_shape(row, "last")).astype(np.float32)
        names.append("b")
    elif bias == "input":
        inputs["b"] = rng.standard_normal(row).astype(np.float32)
        names.append("b")
    model = single("LayerNormalization", inputs,
                   {"axis": axis, "epsilon": float(rng.choice([1e-5, 1e-3])), "_order": names},
                   consts=consts)
    status = compiled_matches_ort(model, inputs, rng, rtol=1e-4, atol=1e-4)
    assert_compiled(status, "norm")


def test_layernorm_computed_scale_broadcast_over_rows(rng):
    """A scale from the graph that broadcasts over the row as [T, 1] (not one value per
    element): normalised by the kernel, scaled and shifted by binary kernels after it."""
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    s = rng.standard_normal((3, 1)).astype(np.float32)
    b = rng.standard_normal((5,)).astype(np.float32)
    model = single("LayerNormalization", {"x": x, "s": s}, {"axis": 1}, consts={"b": b})
    status = compiled_matches_ort(model, {"x": x, "s": s}, rng, rtol=1e-4, atol=1e-4)
    assert_compiled(status, "norm")
    assert "binary" in status


def _layernorm_three_outputs(x, outputs):
    d = x.shape[-1]
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"],
                            axis=-1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.linspace(0.5, 1.5, d, dtype=np.float32), "s"),
         numpy_helper.from_array(np.linspace(-1, 1, d, dtype=np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layernorm_unread_statistics_are_compiled(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    status = compiled_matches_ort(_layernorm_three_outputs(x, ["y"]), {"x": x}, rng,
                                  rtol=1e-4, atol=1e-4)
    assert_compiled(status, "norm")


@pytest.mark.parametrize("outputs", [["y", "mean", "inv"], ["y", "inv"], ["mean", "y"]])
def test_layernorm_statistics(outputs, rng):
    """Mean and InvStdDev, when read, come from the same pass as Y."""
    x = rng.standard_normal((2, 4, 6)).astype(np.float32)
    status = compiled_matches_ort(_layernorm_three_outputs(x, outputs), {"x": x}, rng,
                                  rtol=1e-4, atol=1e-4)
    assert_compiled(status, "norm")


def test_layernorm_empty_rows(rng):
    x = np.zeros((0, 4), np.float32)
    model = single("LayerNormalization", {"x": x},
                   consts={"s": rng.standard_normal(4).astype(np.float32),
                           "b": rng.standard_normal(4).astype(np.float32)})
    model.graph.node.insert(0, helper.make_node("Neg", ["x0"], ["x"]))
    model.graph.input[0].name = "x0"
    status = compiled_matches_ort(model, {"x0": x}, rng)
    assert_compiled(status, "norm")


# -- InstanceNormalization --------------------------------------------------------------------

@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("computed", [False, True])
def test_instancenorm_random(rank, computed, rng):
    for _ in range(2):
        x = rng.standard_normal(random_shape(rng, rank, 1, 6)).astype(np.float32)
        C = x.shape[1]
        params = {"s": rng.standard_normal(C).astype(np.float32),
                  "b": rng.standard_normal(C).astype(np.float32)}
        inputs = {"x": x, **params} if computed else {"x": x}
        model = single("InstanceNormalization", inputs, {"epsilon": 1e-4},
                       consts={} if computed else params)
        status = compiled_matches_ort(model, inputs, rng, rtol=1e-4, atol=1e-4)
        assert_compiled(status, "norm")


# -- element-wise ------------------------------------------------------------------------------

@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("rank", [1, 3])
def test_gelu(approximate, rank, rng):
    x = (3 * rng.standard_normal(random_shape(rng, rank, 2, 7))).astype(np.float32)
    status = compiled_matches_ort(single("Gelu", {"x": x}, {"approximate": approximate},
                                         opset=20), {"x": x}, rng, rtol=1e-5, atol=1e-6)
    assert_compiled(status, "unary")


UNARY_MORE = [("HardSwish", {}), ("Softsign", {}), ("Sign", {}), ("Floor", {}), ("Ceil", {}),
              ("Round", {}), ("Sin", {}), ("Cos", {}), ("Tan", {}), ("Atan", {}), ("Mish", {}),
              ("Selu", {}), ("Selu", {"alpha": 1.3, "gamma": 0.8}), ("Celu", {}),
              ("Celu", {"alpha": 0.6}), ("ThresholdedRelu", {}),
              ("ThresholdedRelu", {"alpha": -0.4})]


@pytest.mark.parametrize("op,attrs", UNARY_MORE, ids=lambda p: str(p))
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_unary_more(op, attrs, rank, rng):
    x = (3 * rng.standard_normal(random_shape(rng, rank))).astype(np.float32)
    status = compiled_matches_ort(single(op, {"x": x}, dict(attrs), opset=18), {"x": x}, rng,
                                  rtol=2e-6, atol=1e-6)
    assert_compiled(status, "unary")


@pytest.mark.parametrize("op", ["ReduceL1", "ReduceProd", "ReduceLogSumExp"])
@pytest.mark.parametrize("rank", [1, 2, 3, 4])
@pytest.mark.parametrize("keep", [0, 1])
def test_reduce_more(op, rank, keep, rng):
    x = rng.standard_normal(random_shape(rng, rank)).astype(np.float32)
    axes = [int(a) - (rank if rng.random() < 0.5 else 0)        # some of them negative
            for a in rng.choice(rank, int(rng.integers(1, rank + 1)), replace=False)]
    model = single(op, {"x": x}, {"keepdims": keep}, consts={"axes": np.array(axes, np.int64)},
                   opset=18)
    status = compiled_matches_ort(model, {"x": x}, rng, rtol=1e-5, atol=1e-6)
    assert_compiled(status, "reduce")


def test_logsumexp_is_stable_on_large_values(rng):
    x = rng.standard_normal((3, 6)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "k"], ["big"]),
             helper.make_node("ReduceLogSumExp", ["big", "axes"], ["y"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(300.0, np.float32), "k"),
         numpy_helper.from_array(np.array([-1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    status = compiled_matches_ort(model, {"x": x}, rng, rtol=1e-5, atol=1e-4)
    assert_compiled(status, "reduce")


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
@pytest.mark.parametrize("shapes", [[(3, 4), (3, 4)], [(2, 3, 4), (4,), (3, 1)],
                                    [(1,), (2, 5), (2, 1), ()], [(5, 1, 2), (1, 3, 1)]])
def test_variadic(op, shapes, rng):
    inputs = {f"x{k}": rng.standard_normal(s).astype(np.float32) for k, s in enumerate(shapes)}
    status = compiled_matches_ort(single(op, inputs), inputs, rng, rtol=1e-6, atol=1e-6)
    assert_compiled(status, "binary")


def test_round_halves_to_even_and_sign_of_zero(rng):
    """Values that land on halves and zeros: Round takes the even neighbour, Sign gives 0."""
    x = np.array([-2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 3.5, -3.0, 0.25], np.float32)
    nodes = [helper.make_node("Round", ["x"], ["r"]), helper.make_node("Sign", ["x"], ["s"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("r", "s")])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    sess = rnnengine.InferenceSession(data)
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for _ in range(3):
        got = sess.run(None, {"x": x})
    status = list(sess.program_status().values())[0]
    assert_compiled(status, "unary")
    for g, w in zip(got, ref.run(None, {"x": x})):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got[0], [-2, -2, -0, 0, 0, 2, 2, 4, -3, 0])


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((5, 1), (1, 6)),
                                    ((), (2, 3))])
def test_float_mod(shapes, rng):
    a = (5 * rng.standard_normal(shapes[0])).astype(np.float32)
    b = (np.abs(rng.standard_normal(shapes[1])) + 0.5).astype(np.float32)
    nodes = [helper.make_node("Abs", ["b"], ["d"]), helper.make_node("Add", ["d", "h"], ["e"]),
             helper.make_node("Mod", ["a", "e"], ["y"], fmod=1)]   # divisors kept off zero
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape)
                     for n, v in (("a", a), ("b", b))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0.5, np.float32), "h")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    status = compiled_matches_ort(model, {"a": a, "b": b}, rng, rtol=1e-5, atol=1e-5)
    assert_compiled(status, "binary")


# -- what the runner refuses --------------------------------------------------------------------

def test_runner_refuses_geometry_past_the_buffers():
    from rnnengine.runtime._exec import Runner
    x = np.zeros(12, np.float32)
    y = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="does not fit the buffers"):
        Runner([("softmax", 0, x, y, 2, 4, 2)])
    with pytest.raises(ValueError, match="does not fit the buffers"):
        Runner([("softmax", 1, x, np.zeros(6, np.float32), 2, 3, 2)])
    empty = np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="does not fit the buffers"):     # 2**64 elements
        Runner([("softmax", 0, empty, empty, 2**62, 4, 1)])
    with pytest.raises(ValueError, match="does not fit the buffers"):
        Runner([("norm", empty, empty, 2**62, 4, 1e-5, None, None, (1, 0, 0, 0, 0), None, None)])
    with pytest.raises(ValueError, match="does not fit the buffers"):
        Runner([("norm", x, y, 4, 4, 1e-5, None, None, (1, 0, 0, 0, 0), None, None)])
    s = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="scale or bias"):       # a row of 4 reads s[3]
        Runner([("norm", x, y, 3, 4, 1e-5, s, None, (1, 0, 1, 0, 0), None, None)])
    with pytest.raises(ValueError, match="scale or bias"):       # the fourth row's channel
        Runner([("norm", x, y, 4, 3, 1e-5, None, s, (4, 0, 0, 1, 0), None, None)])
    with pytest.raises(ValueError, match="bad geometry"):
        Runner([("norm", x, y, 3, 4, 1e-5, s, None, (0, 0, 0, 0, 0), None, None)])
    with pytest.raises(ValueError, match="statistics"):
        Runner([("norm", x, y, 4, 3, 1e-5, None, None, (1, 0, 0, 0, 0), s, None)])
    Runner([("norm", x, y, 4, 3, 1e-5, s, s, (3, 1, 0, 1, 0), np.zeros(4, np.float32),
             None)])                                           # fits: accepted


# -- bools and int64: comparisons, logic, Where, Cast, Not --------------------------------------

def _graph(nodes, inputs, outputs, consts=None, opset=17):
    """A model of ``nodes``: ``inputs`` {name: array}, ``outputs`` {name: TensorProto type}."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                   v.shape) for n, v in inputs.items()],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs.items()],
        [numpy_helper.from_array(v, n) for n, v in (consts or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((5, 1), (1, 6)), ((), (2, 3)),
          ((2, 1, 3, 1), (4, 1, 5)), ((0, 3), (3,))]


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
@pytest.mark.parametrize("shapes", SHAPES)
def test_compare_float(op, shapes, rng):
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = rng.standard_normal(shapes[1]).astype(np.float32)
    nodes = [helper.make_node("Floor", ["a"], ["fa"]),      # so that Equal meets equal values
             helper.make_node("Floor", ["b"], ["fb"]),
             helper.make_node(op, ["fa", "fb"], ["y"])]
    model = _graph(nodes, {"a": a, "b": b}, {"y": TensorProto.BOOL})
    status = compiled_matches_ort(model, {"a": a, "b": b}, rng)
    # an empty output is a buffer with nothing to compute: no kernel, and no call either
    assert_compiled(status, "compare" if a.size else "unary")


@pytest.mark.parametrize("op", ["Equal", "Less", "GreaterOrEqual"])
def test_compare_int64(op, rng):
    a = rng.standard_normal((3, 5)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["a"], ["i"], to=TensorProto.INT64),
             helper.make_node(op, ["i", "k"], ["y"])]
    model = _graph(nodes, {"a": a}, {"y": TensorProto.BOOL},
                   {"k": np.array([0, -1, 1, 0, 2], np.int64)})
    status = compiled_matches_ort(model, {"a": a}, rng)
    assert_compiled(status, "compare")


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
@pytest.mark.parametrize("shapes", SHAPES[:5])
def test_logic_not_and_where_on_computed_conditions(op, shapes, rng):
    """A streaming model's masks: comparisons combined, negated, used to select."""
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = rng.standard_normal(shapes[1]).astype(np.float32)
    F, B = TensorProto.FLOAT, TensorProto.BOOL
    nodes = [helper.make_node("Less", ["a", "b"], ["lt"]),
             helper.make_node("Greater", ["a", "z"], ["pos"]),
             helper.make_node(op, ["lt", "pos"], ["m"]),
             helper.make_node("Not", ["m"], ["n"]),
             helper.make_node("Where", ["n", "a", "b"], ["y"]),
             helper.make_node("Where", ["lt", "b", "z"], ["w"])]
    model = _graph(nodes, {"a": a, "b": b}, {"y": F, "w": F, "n": B},
                   {"z": np.array(0.0, np.float32)})
    status = compiled_matches_ort(model, {"a": a, "b": b}, rng)
    assert_compiled(status, "where")
    assert "compare" in status and "convert" in status


def test_where_empty(rng):
    a = rng.standard_normal((0, 3)).astype(np.float32)
    b = rng.standard_normal((3,)).astype(np.float32)
    nodes = [helper.make_node("Less", ["a", "b"], ["lt"]),
             helper.make_node("Where", ["lt", "a", "b"], ["y"]),
             helper.make_node("Neg", ["b"], ["nb"])]
    status = compiled_matches_ort(_graph(nodes, {"a": a, "b": b},
                                         {"y": TensorProto.FLOAT, "nb": TensorProto.FLOAT}),
                                  {"a": a, "b": b}, rng)
    assert "call" not in status, status


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_cast_between_float_int64_and_bool(rank, rng):
    x = (3 * rng.standard_normal(random_shape(rng, rank))).astype(np.float32)
    F, I, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=I),           # truncated toward zero
             helper.make_node("Cast", ["i"], ["f"], to=F),
             helper.make_node("Cast", ["x"], ["b"], to=B),
             helper.make_node("Cast", ["i"], ["ib"], to=B),
             helper.make_node("Cast", ["ib"], ["bi"], to=I),
             helper.make_node("Cast", ["b"], ["bf"], to=F)]
    model = _graph(nodes, {"x": x}, {"i": I, "f": F, "b": B, "ib": B, "bi": I, "bf": F})
    status = compiled_matches_ort(model, {"x": x}, rng)
    assert_compiled(status, "convert")


def test_runner_refuses_mismatched_bool_and_int_buffers():
    from rnnengine.runtime._exec import Runner
    f = np.zeros(6, np.float32)
    b = np.zeros(6, np.bool_)
    with pytest.raises(ValueError, match="bool"):
        Runner([("compare", 0, f, f, f, [6], [1], [1])])
    with pytest.raises(ValueError, match="does not fit the buffers"):
        Runner([("compare", 0, f, f[:3].copy(), b, [6], [1], [1])])
    with pytest.raises(ValueError, match="does not fit the buffers"):
        Runner([("where", b[:2].copy(), f, f, f, [6], [1], [1], [1])])
    with pytest.raises(ValueError, match="int64"):
        Runner([("convert", 0, f, f)])
    with pytest.raises(ValueError, match="sizes differ"):
        Runner([("convert", 3, f, b[:5].copy())])
