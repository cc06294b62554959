"""The executor (``rnnengine.runtime.executor``): whole-model calls planned into C operators.

Every operator it lowers is checked against ONNX Runtime on random shapes and attributes
(broadcasting, negative axes, groups, strides, dilations, pads), on the call that runs the
program (the third call of a signature: the first is seen, the second builds), and the real
models in tests/data are streamed against ONNX Runtime with their state carried by hand.
"""
from __future__ import annotations

import functools
import os
import sys
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnengine
import conftest

DATA = conftest.DATA


def single(op, inputs, attrs=None, consts=None, opset=17, n_out=1, out_dtype=TensorProto.FLOAT):
    """A one-node model: ``inputs`` {name: array} are graph inputs, ``consts`` initializers."""
    consts = consts or {}
    names = list(inputs) + list(consts)
    order = attrs.pop("_order") if attrs and "_order" in attrs else names
    node = helper.make_node(op, order, [f"y{k}" for k in range(n_out)], **(attrs or {}))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_tensor_value_info(f"y{k}", out_dtype, None) for k in range(n_out)],
        [numpy_helper.from_array(a, n) for n, a in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compiled_matches_ort(model, feeds, rng, kinds=None, rtol=1e-5, atol=1e-5):
    """Three runs with fresh data of the same shapes; the third runs the program."""
    data = model.SerializeToString()
    sess = rnnengine.InferenceSession(data)
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def fresh():
        return {k: (rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
                for k, v in feeds.items()}
    for _ in range(2):
        sess.run(None, fresh())
    status = list(sess.program_status().values())
    assert status and status[0].startswith("compiled"), status
    if kinds:
        for kind in kinds:
            assert kind in status[0], status
    f = fresh()
    got, want = sess.run(None, f), ref.run(None, f)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return status[0]


BROADCASTS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 3, 4), (3, 1)), ((1,), (2, 5)),
              ((2, 1, 4), (1, 3, 1)), ((5, 1, 1, 7), (6, 1)), ((), (3, 2)), ((4, 3), ())]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"])
@pytest.mark.parametrize("shapes", BROADCASTS)
def test_binary_broadcast(op, shapes, rng):
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = rng.standard_normal(shapes[1]).astype(np.float32)
    if op == "Pow":
        a = np.abs(a) + 0.1
    compiled_matches_ort(single(op, {"a": a, "b": b}), {"a": a, "b": b}, rng, ["binary"],
                         rtol=1e-4)


@pytest.mark.parametrize("slope", [(1,), (3, 1, 1), (4,)])
def test_prelu_constant_slope(slope, rng):
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    s = rng.standard_normal(slope).astype(np.float32)
    compiled_matches_ort(single("PRelu", {"x": x}, consts={"s": s}), {"x": x}, rng, ["binary"])


UNARY = [("Sigmoid", {}), ("Tanh", {}), ("Relu", {}), ("Exp", {}), ("Neg", {}), ("Abs", {}),
         ("Erf", {}), ("Softplus", {}), ("LeakyRelu", {"alpha": 0.2}),
         ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Elu", {"alpha": 0.7})]


@pytest.mark.parametrize("op,attrs", UNARY)
def test_unary(op, attrs, rng):
    x = (3 * rng.standard_normal((2, 7, 5))).astype(np.float32)
    compiled_matches_ort(single(op, {"x": x}, dict(attrs)), {"x": x}, rng, ["unary"])


@pytest.mark.parametrize("op", ["Sqrt", "Log", "Reciprocal"])
def test_unary_positive(op, rng):
    x = (np.abs(rng.standard_normal((3, 9))) + 0.5).astype(np.float32)
    model = single(op, {"x": x})
    sess = rnnengine.InferenceSession(model.SerializeToString())
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for _ in range(3):
        x = (np.abs(rng.standard_normal((3, 9))) + 0.5).astype(np.float32)
        got = sess.run(None, {"x": x})[0]
    assert "compiled" in list(sess.program_status().values())[0]
    np.testing.assert_allclose(got, ref.run(None, {"x": x})[0], rtol=1e-5)


def test_clip_bounds_from_constants(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    model = single("Clip", {"x": x}, consts={"lo": np.array(-0.5, np.float32),
                                             "hi": np.array(0.3, np.float32)})
    compiled_matches_ort(model, {"x": x}, rng, ["unary"])


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                                "ReduceSumSquare", "ReduceL2"])
@pytest.mark.parametrize("axes,keep", [([1], 1), ([-1], 0), ([0, 2], 1), (None, 0),
                                       ([-3, -1], 0)])
def test_reduce(op, axes, keep, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    attrs = {"keepdims": keep}
    consts = {}
    if axes is not None:
        consts = {"axes": np.array(axes, np.int64)}
    model = single(op, {"x": x}, attrs, consts=consts, opset=18)
    compiled_matches_ort(model, {"x": x}, rng, ["reduce"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 6)),
                                             ((2, 3, 4), (2, 4, 5)), ((1, 3, 4), (5, 4, 2)),
                                             ((2, 1, 3, 4), (3, 4, 2))])
def test_matmul_computed_operands(a_shape, b_shape, rng):
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    compiled_matches_ort(single("MatMul", {"a": a, "b": b}), {"a": a, "b": b}, rng,
                         ["matmul"], rtol=1e-4, atol=1e-5)


def test_matmul_constant_weights(rng):
    a = rng.standard_normal((2, 3, 8)).astype(np.float32)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    compiled_matches_ort(single("MatMul", {"a": a}, consts={"w": w}), {"a": a}, rng, ["dense"],
                         rtol=1e-4)


@pytest.mark.parametrize("trans_b,bias", [(0, (5,)), (1, (1, 5)), (1, None), (0, (1,))])
def test_gemm(trans_b, bias, rng):
    a = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((5, 8) if trans_b else (8, 5)).astype(np.float32)
    consts = {"w": w}
    if bias is not None:
        consts["c"] = rng.standard_normal(bias).astype(np.float32)
    compiled_matches_ort(single("Gemm", {"a": a}, {"transB": trans_b}, consts=consts),
                         {"a": a}, rng, ["dense"], rtol=1e-4)


CONVS = [
    # (x shape, w shape, attrs)
    ((1, 4, 20), (6, 4, 3), {}),
    ((2, 4, 21), (6, 2, 5), {"group": 2, "strides": [2], "pads": [2, 1]}),
    ((1, 3, 9, 12), (8, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 16, 5, 33), (16, 1, 3, 3), {"group": 16, "dilations": [2, 1], "pads": [0, 1, 0, 1]}),
    ((1, 9, 1, 129), (16, 9, 1, 5), {"strides": [1, 2], "pads": [0, 2, 0, 2]}),
    ((2, 6, 4, 7), (4, 6, 1, 1), {}),
    ((1, 1, 40), (20, 1, 8), {"strides": [4]}),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONVS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(x_shape, w_shape, attrs, bias, rng):
    x = rng.standard_normal(x_shape).astype(np.float32)
    consts = {"w": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        consts["b"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    compiled_matches_ort(single("Conv", {"x": x}, dict(attrs), consts=consts), {"x": x}, rng,
                         rtol=1e-4, atol=1e-4)


def conv_graph(rng, op: str, attrs: dict, x, w, out_channels: int):
    """A one-``op`` graph on input x with constant weights w, a random bias (70% of the time)
    and a following Relu (half of the time)."""
    consts = {"w": w}
    if rng.random() < 0.7:
        consts["b"] = rng.standard_normal(out_channels).astype(np.float32)
    relu = rng.random() < 0.5
    nodes = [helper.make_node(op, ["x", *consts], ["c" if relu else "y"], **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def random_conv_model(seed):
    """A Conv (1-D or 2-D, maybe followed by a Relu) with random groups, strides, dilations,
    pads (asymmetric, or an auto_pad), bias, and an input whose output rows are long enough
    for the direct kernel: (model, x)."""
    rng = np.random.default_rng(seed)
    two_d = rng.random() < 0.7
    group = int(rng.choice([1, 2, 3]))
    cg, cog = int(rng.integers(1, 4)), int(rng.choice([1, 2, 4, 7, 8, 12]))
    if rng.random() < 0.25:
        group, cg, cog = int(rng.integers(2, 7)), 1, 1                 # depthwise
    k = [int(rng.integers(1, 4)), int(rng.integers(1, 6))] if two_d else [int(rng.integers(1, 6))]
    strides = [int(rng.integers(1, 3)) for _ in k]
    if max(k) == 1 and max(strides) == 1:
        k[-1] = 2       # not pointwise: that one is a plain product (test_pointwise_conv...)
    auto = str(rng.choice(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    # ONNX Runtime refuses dilations with auto_pad SAME
    dil = [1 if auto.startswith("SAME") else int(rng.integers(1, 3)) for _ in k]
    attrs = dict(group=group, strides=strides, dilations=dil, kernel_shape=k)
    if auto == "NOTSET":
        attrs["pads"] = [int(p) for p in rng.integers(0, 3, 2 * len(k))]
    else:
        attrs["auto_pad"] = auto
    spatial = ([int(rng.integers(max(k[0], 2) * dil[0], 9))] if two_d else []) + \
        [int(rng.integers(12 * strides[-1] + k[-1] * dil[-1], 90))]
    x = rng.standard_normal((int(rng.integers(1, 3)), group * cg, *spatial)).astype(np.float32)
    w = rng.standard_normal((group * cog, cg, *k)).astype(np.float32)
    return conv_graph(rng, "Conv", attrs, x, w, group * cog), x


@pytest.mark.parametrize("seed", range(16))
def test_random_convs_run_on_the_direct_kernel(seed, isa, rng):
    """Random convolutions planned onto the direct kernel (its Relu fused: no unary left),
    against ONNX Runtime, on every ISA variant this CPU runs."""
    model, x = random_conv_model(seed)
    status = compiled_matches_ort(model, {"x": x}, rng, ["conv2d"], rtol=1e-4, atol=1e-4)
    assert "unary" not in status and "matmul" not in status and "move" not in status, status


def random_conv_transpose_model(seed):
    """A ConvTranspose (1-D or 2-D, maybe followed by a Relu) with random groups, strides,
    dilations, output_padding and pads within the kernel's reach, and output rows long
    enough for the direct kernel: (model, x)."""
    rng = np.random.default_rng(seed)
    nsp = int(rng.choice([1, 2, 2]))
    group = int(rng.choice([1, 2, 3]))
    cg, cog = int(rng.integers(1, 4)), int(rng.choice([1, 2, 5, 8, 9]))
    k = [int(rng.integers(1, 5)) for _ in range(nsp)]
    strides = [int(rng.integers(1, 4)) for _ in range(nsp)]
    if max(k) == 1 and max(strides) == 1:
        k[-1] = 2       # not pointwise: that one is a plain product (test_pointwise_conv...)
    dil = [int(rng.integers(1, 3)) for _ in range(nsp)]
    extra = [int(rng.integers(0, s)) for s in strides]     # ONNX Runtime: below the stride
    reach = [(kk - 1) * d for kk, d in zip(k, dil)]
    pads = [int(rng.integers(0, r + 1)) for r in reach * 2]
    spatial = [int(rng.integers(1, 6)) for _ in range(nsp - 1)] + [int(rng.integers(14, 40))]
    for i in range(nsp):    # at least one output row
        while strides[i] * (spatial[i] - 1) + extra[i] + reach[i] + 1 - pads[i] - pads[nsp + i] < 1:
            spatial[i] += 1
    attrs = dict(group=group, strides=strides, dilations=dil, kernel_shape=k, pads=pads,
                 output_padding=extra)
    x = rng.standard_normal((int(rng.integers(1, 3)), group * cg, *spatial)).astype(np.float32)
    w = rng.standard_normal((group * cg, cog, *k)).astype(np.float32)
    return conv_graph(rng, "ConvTranspose", attrs, x, w, group * cog), x


@pytest.mark.parametrize("seed", range(16))
def test_random_conv_transposes_run_on_the_direct_kernel(seed, isa, rng):
    """Random transposed convolutions planned onto the direct kernel (the input spread out
    by the strides), against ONNX Runtime, on every ISA variant this CPU runs."""
    model, x = random_conv_transpose_model(seed)
    status = compiled_matches_ort(model, {"x": x}, rng, ["conv2d"], rtol=1e-4, atol=1e-4)
    assert "unary" not in status and "matmul" not in status and "move" not in status, status


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_pointwise_conv_stays_a_product(op, rng):
    """A 1x1 convolution with unit strides and no pads is a plain product, which runs faster
    than the direct kernel: it stays one."""
    x = rng.standard_normal((2, 8, 5, 30)).astype(np.float32)
    w_shape = (6, 8, 1, 1) if op == "Conv" else (8, 6, 1, 1)
    consts = {"w": rng.standard_normal(w_shape).astype(np.float32)}
    compiled_matches_ort(single(op, {"x": x}, {}, consts=consts), {"x": x}, rng, ["matmul"],
                         rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("also_read", [False, True])
@pytest.mark.parametrize("width,kind", [(20, "conv2d"), (6, "matmul")])
def test_conv_relu_runs_inside_the_kernel(width, kind, also_read, rng):
    """Conv (2-D, bias, stride) -> Relu: bias and Relu are applied by the kernel as it stores
    its output (the direct kernel for long rows, the product of the window gather for short
    ones), no pass of their own; when the convolution's own output is read too (here a graph
    output), the Relu stays an operator."""
    x = rng.standard_normal((1, 3, 12, width)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    outs = ["y", "c"] if also_read else ["y"]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    status = compiled_matches_ort(model, {"x": x}, rng, [kind], rtol=1e-4, atol=1e-4)
    assert ("unary" in status) == also_read and "binary" not in status, status


CONV_TRANSPOSES = [   # (x shape, w shape, attributes, on the direct kernel)
    ((1, 4, 10), (4, 3, 3), {}, True),
    ((1, 4, 5), (4, 3, 3), {}, False),
    ((1, 4, 10), (4, 2, 4), {"strides": [2], "pads": [1, 1]}, True),
    ((1, 4, 10), (4, 2, 4), {"strides": [3], "pads": [0, 2], "output_padding": [2]}, True),
    ((1, 16, 1, 33), (16, 2, 1, 5), {"group": 8, "strides": [1, 2], "pads": [0, 2, 0, 2],
                                     "output_padding": [0, 1]}, True),
    ((2, 6, 3, 4), (6, 2, 3, 3), {"group": 3, "dilations": [2, 1]}, False),
    ((2, 6, 3, 14), (6, 2, 3, 3), {"group": 3, "dilations": [2, 1], "strides": [2, 1],
                                   "pads": [1, 0, 2, 1]}, True),
    ((1, 16, 12, 20), (16, 1, 3, 3), {"group": 16, "dilations": [5, 1], "pads": [10, 1, 10, 1]},
     True),                                      # GTCRN's depthwise dilated ones
    ((1, 3, 2, 20), (3, 2, 3, 3), {"pads": [3, 1, 0, 1]}, False),   # pads past the reach
]


@pytest.mark.parametrize("x_shape,w_shape,attrs,direct", CONV_TRANSPOSES)
def test_conv_transpose(x_shape, w_shape, attrs, direct, rng):
    x = rng.standard_normal(x_shape).astype(np.float32)
    consts = {"w": rng.standard_normal(w_shape).astype(np.float32),
              "b": rng.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32)}
    status = compiled_matches_ort(single("ConvTranspose", {"x": x}, dict(attrs),
                                         consts=consts), {"x": x}, rng, rtol=1e-4, atol=1e-4)
    # output rows of 12 or more run on the direct kernel, shorter ones on the product
    assert ("conv2d" if direct else "matmul") in status, status


def test_batchnorm(rng):
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    consts = {k: rng.standard_normal(5).astype(np.float32) for k in ("s", "b", "m")}
    consts["v"] = (np.abs(rng.standard_normal(5)) + 0.1).astype(np.float32)
    compiled_matches_ort(single("BatchNormalization", {"x": x}, {"epsilon": 1e-3},
                                consts=consts), {"x": x}, rng, ["binary"], rtol=1e-4)


MOVES = [
    ("Transpose", {"perm": [2, 0, 1]}, {}),
    ("Transpose", {}, {}),
    ("Slice", {}, {"st": np.array([1, -1], np.int64), "en": np.array([3, -6], np.int64),
                   "ax": np.array([0, -1], np.int64), "sp": np.array([1, -2], np.int64)}),
    ("Split", {"axis": 1, "_out": 2}, {"sz": np.array([1, 3], np.int64)}),
    ("Pad", {"mode": "constant"}, {"p": np.array([0, 1, 2, 0, 0, 1], np.int64),
                                   "v": np.array(1.5, np.float32)}),
    ("Pad", {"mode": "reflect"}, {"p": np.array([0, 1, 2, 0, 2, 1], np.int64)}),
    ("Pad", {"mode": "edge"}, {"p": np.array([1, 0, 0, 0, 0, 3], np.int64)}),
    ("Expand", {}, {"s": np.array([2, 2, 4, 7], np.int64)}),
    ("Tile", {}, {"r": np.array([1, 2, 3], np.int64)}),
    ("Gather", {"axis": -1}, {"i": np.array([[0, 6], [-1, 3]], np.int64)}),
    ("GatherElements", {"axis": 1}, {"i": np.array([[[0], [3]], [[1], [-2]], [[2], [0]]],
                                                   np.int64)}),
]


@pytest.mark.parametrize("op,attrs,consts", MOVES, ids=lambda p: str(p)[:30])
def test_data_movement(op, attrs, consts, rng):
    attrs = dict(attrs)
    n_out = attrs.pop("_out", 1)
    x = rng.standard_normal((3, 4, 7)).astype(np.float32)
    if op == "Expand":
        x = rng.standard_normal((2, 1, 4, 1)).astype(np.float32)
    model = single(op, {"x": x}, attrs, consts=consts, opset=18, n_out=n_out)
    compiled_matches_ort(model, {"x": x}, rng, ["move"])


def test_concat_scatternd_where(rng):
    """Concat of a computed and a constant tensor, ScatterND with constant indices (a
    streaming cache update), Where with a constant condition."""
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    c = rng.standard_normal((2, 1, 4)).astype(np.float32)
    idx = np.array([[[0, 2]], [[1, 0]]], np.int64)
    upd = rng.standard_normal((2, 1, 4)).astype(np.float32)
    cond = rng.random((3, 4)) > 0.5
    nodes = [helper.make_node("Concat", ["x", "c"], ["cat"], axis=1),
             helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("ScatterND", ["cat", "idx", "upd_in"], ["sc"]),
             helper.make_node("Where", ["cond", "x", "sq"], ["wh"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
                     helper.make_tensor_value_info("upd_in", TensorProto.FLOAT, upd.shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("sc", "wh")],
        [numpy_helper.from_array(c, "c"), numpy_helper.from_array(idx, "idx"),
         numpy_helper.from_array(cond, "cond")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    status = compiled_matches_ort(model, {"x": x, "upd_in": upd}, rng, ["move"])
    assert "call" not in status


def test_other_signature_runs_general_path_and_compiles_its_own(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    model = single("Sigmoid", {"x": x})
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    sess = rnnengine.InferenceSession(model.SerializeToString())
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (3, 3, 3, 5, 5, 5, 3):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0],
                                   rtol=1e-6)
    assert len([s for s in sess.program_status().values() if s.startswith("compiled")]) == 2


def test_outputs_are_new_arrays(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    sess = rnnengine.InferenceSession(single("Relu", {"x": x}).SerializeToString())
    outs = [sess.run(None, {"x": x})[0] for _ in range(4)]
    outs[-1][...] = 7
    again = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(again, np.maximum(x, 0))
    assert not np.shares_memory(outs[-2], again)


def test_threads_share_a_session(rng):
    x = rng.standard_normal((16, 32)).astype(np.float32)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    model = single("MatMul", {"x": x}, consts={"w": w})
    sess = rnnengine.InferenceSession(model.SerializeToString())
    xs = [rng.standard_normal((16, 32)).astype(np.float32) for _ in range(8)]
    errors = []

    def work(k):
        for _ in range(200):
            got = sess.run(None, {"x": xs[k]})[0]
            if not np.allclose(got, xs[k] @ w, rtol=1e-4, atol=1e-4):
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# -- real models ------------------------------------------------------------------------------

REAL = {
    "dtln_model_1.onnx": ({"input_2": (1, 1, 257)}, {"tf_op_layer_stack_2": "input_3"}, {}),
    "dtln_model_2.onnx": ({"input_4": (1, 1, 512)}, {"tf_op_layer_stack_5": "input_5"}, {}),
    "gtcrn.onnx": ({"mix": (1, 257, 1, 2)}, {"conv_cache_out": "conv_cache",
                                             "tra_cache_out": "tra_cache",
                                             "inter_cache_out": "inter_cache"}, {}),
    "silero_vad_16k_op15.onnx": ({"input": (1, 512)}, {"stateN": "state"},
                                 {"sr": np.array(16000, np.int64)}),
    "silero_vad_op18_ifless.onnx": ({"input": (1, 512)}, {"stateN": "state"},
                                    {"sr": np.array(16000, np.int64)}),
    "silero_vad.onnx": ({"input": (1, 512)}, {"stateN": "state"},
                        {"sr": np.array(16000, np.int64)}),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_model_streams_compiled_like_ort(name, rng):
    shapes, pairs, fixed = REAL[name]
    path = os.path.join(DATA, name)
    sess = rnnengine.InferenceSession(path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    args = {i.name: i for i in ref.get_inputs()}
    state = {n: np.zeros([d if isinstance(d, int) else 1 for d in args[n].shape], np.float32)
             for n in pairs.values()}
    stream = sess.stream(state=pairs, feeds=fixed)
    for t in range(25):
        x = {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
        want = dict(zip(names, ref.run(None, {**x, **state, **fixed})))
        for out, inp in pairs.items():
            state[inp] = want[out]
        got = stream.step(x)
        kept = [n for n in names if n not in pairs]
        for g, n in zip(got, kept):
            np.testing.assert_allclose(g, want[n], rtol=1e-4, atol=1e-4, err_msg=f"{n} step {t}")
    for n, a in stream.state.items():
        if a is not None:
            scale = max(1.0, float(np.abs(state[n]).max()))
            np.testing.assert_allclose(a, state[n], rtol=1e-4, atol=1e-4 * scale)
    if not stream._fast:       # streams without the kept-inside fast path run the program
        status = list(sess.program_status().values())
        assert status and status[0].startswith("compiled"), status


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("T,state", [(1, True), (6, True), (6, False)])
def test_recurrent_nodes(op, direction, T, state, rng):
    """Recurrent nodes inside a program: one step one way on a stream core, anything else
    as a sequence run; state from buffers or zeros; Y, Y_h (and Y_c) all read."""
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    D, N, I, H = (2 if direction == "bidirectional" else 1), 3, 5, 7
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    consts = {"W": (0.4 * rng.standard_normal((D, G * H, I))).astype(np.float32),
              "R": (0.4 * rng.standard_normal((D, G * H, H))).astype(np.float32),
              "B": (0.1 * rng.standard_normal((D, 2 * G * H))).astype(np.float32)}
    inputs = {"X": x}
    names = ["X", "W", "R", "B", ""]
    if state:
        inputs["h0"] = rng.standard_normal((D, N, H)).astype(np.float32)
        names.append("h0")
        if op == "LSTM":
            inputs["c0"] = rng.standard_normal((D, N, H)).astype(np.float32)
            names.append("c0")
    attrs = {"hidden_size": H, "direction": direction, "_order": names}
    model = single(op, inputs, attrs, consts=consts, n_out=3 if op == "LSTM" else 2)
    status = compiled_matches_ort(model, inputs, rng, rtol=1e-5, atol=1e-5)
    assert "call" not in status, status
    assert ("recurrent" if T == 1 and direction == "forward" else "sequence") in status


def test_every_shipped_model_is_a_real_model_here():
    shipped = sorted(f for f in os.listdir(DATA) if f.endswith(".onnx"))
    assert shipped == sorted(REAL)


def python_calls(fn) -> list:
    """Names of the Python functions that run while ``fn()`` runs (C calls do not count)."""
    calls = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize("name", sorted(REAL))
def test_no_python_call_inside_a_compiled_call(name):
    """Between entry and return of the program's C loop, no Python function runs."""
    shapes, pairs, fixed = REAL[name]
    sess = rnnengine.InferenceSession(os.path.join(DATA, name))
    args = {a.name: a for a in sess.get_inputs()}
    feeds = {n: np.full([d if isinstance(d, int) else (1 if n == "state" or j == 0 else 512)
                         for j, d in enumerate(a.shape)], 0.1, np.float32)
             for n, a in args.items()}
    feeds.update({n: v for n, v in fixed.items()})
    for _ in range(2):
        sess.run(None, feeds)
    program = next(iter(sess._programs.values()))
    assert "call" not in program.kinds
    assert python_calls(program.runner.run) == []


@pytest.mark.parametrize("name", sorted(REAL))
def test_no_python_call_inside_a_compiled_stream_step(name, rng):
    """A stream's step, once compiled, is one C call: the stream's own compiled step (state
    kept inside the recurrent kernels) or the session's whole-graph program it feeds."""
    shapes, pairs, fixed = REAL[name]
    sess = rnnengine.InferenceSession(os.path.join(DATA, name))
    stream = sess.stream(state=pairs, feeds=fixed)
    x = {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    for _ in range(6):      # the compiled step is built on the second step, a program on
        stream.step(x)      # the second call of the whole graph after that
    if stream.compiled:
        calls = python_calls(functools.partial(stream._runner.step, x))
    else:
        program = stream._program
        assert program is not None and "call" not in program.kinds, stream.not_compiled
        calls = python_calls(program.runner.run)
    assert calls == []


@pytest.mark.parametrize("shape,perm", [((3, 4), (1, 0)), ((2, 3, 5), (2, 0, 1)),
                                        ((4, 1, 6), (1, 2, 0)), ((7,), (0,))])
def test_index_maps_compress_to_groups_that_reproduce_them(shape, perm, rng):
    """The runs a move plans reproduce the element map exactly, and a transpose is a few
    groups, not one run per element."""
    from rnnengine.runtime.lowering import _CODE, _runs
    order = np.arange(int(np.prod(shape))).reshape(shape).transpose(perm).reshape(-1)
    runs = _runs(_CODE + order)
    got = np.full(order.size, -1)
    for d0, off, ln, st, _, reps, dstep, sstep in runs:
        for j in range(reps):
            got[d0 + j * dstep:d0 + j * dstep + ln] = off + j * sstep + np.arange(ln) * st
    np.testing.assert_array_equal(got, order)
    assert len(runs) <= 2 * max(shape)


def test_builds_refuse_what_they_cannot_check():
    """A Runner checks every geometry against its buffers: a run past a buffer is refused."""
    from rnnengine.core.conv import Conv2d
    from rnnengine.runtime._exec import Runner
    dst = np.zeros(4, np.float32)
    src = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="reads outside"):
        Runner([("move", dst, [src], np.array([[0, 0, 4, 1, 0, 1, 0, 0]], np.int64))])
    with pytest.raises(ValueError, match="reads outside"):       # the third repeat
        Runner([("move", dst, [src], np.array([[0, 0, 1, 1, 0, 3, 1, 2]], np.int64))])
    with pytest.raises(ValueError, match="does not fit the destination"):
        Runner([("move", dst, [src], np.array([[2, 0, 3, 0, 0, 1, 0, 0]], np.int64))])
    with pytest.raises(ValueError, match="does not fit the destination"):
        Runner([("move", dst, [src], np.array([[0, 0, 2, 0, 0, 2, 3, 0]], np.int64))])
    with pytest.raises(ValueError, match="does not fit the buffers"):
        Runner([("binary", 0, src, src, dst, [4], [1], [1])])
    with pytest.raises(ValueError, match="does not fit"):
        Runner([("matmul", src, src, dst, np.array([[0, 0, 0]]), 2, 2, 2)])
    # a 3 -> 4 channel 2-D conv, 3x3 kernel, padded by 1: (2, 3, 5, 6) -> (2, 4, 5, 6)
    conv = Conv2d(np.ones((4, 3, 3, 3), np.float32), None, (1, 1), (1, 1), (1, 1, 1, 1), 1,
                  False)
    x, y = np.zeros(2 * 3 * 5 * 6, np.float32), np.zeros(2 * 4 * 5 * 6, np.float32)
    Runner([("conv2d", conv, x, y, (2, 5, 6), 0)])          # fits
    for bad_x, bad_y, nhw, match in ((x[:-1], y, (2, 5, 6), "does not fit the buffers"),
                                     (x, y[:-1], (2, 5, 6), "does not fit the buffers"),
                                     (x, y, (2, 5, 7), "does not fit the buffers"),
                                     (x, y, (2, 0, 6), "does not fit an input"),
                                     (x[::2], y, (1, 5, 6), "C-contiguous"),
                                     (x.astype(np.float64), y, (2, 5, 6), "float32")):
        with pytest.raises(ValueError, match=match):
            Runner([("conv2d", conv, bad_x, bad_y, nhw, 0)])
    with pytest.raises(ValueError, match="Conv2d"):
        Runner([("conv2d", object(), x, y, (2, 5, 6), 0)])


def test_token_ids_of_one_shape_share_one_program(rng):
    """Integer arrays are keyed by shape, not value: a token stream plans once, and every
    token's outputs match ONNX Runtime (only integer scalars, such as a sample rate, are
    planned by value)."""
    table = rng.standard_normal((50, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "tok"], ["e"]),
             helper.make_node("MatMul", ["e", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("tok", TensorProto.INT64, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    sess = rnnengine.InferenceSession(data)
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for t in rng.integers(0, 50, 40):
        tok = np.array([[t]], np.int64)
        np.testing.assert_allclose(sess.run(None, {"tok": tok})[0],
                                   ref.run(None, {"tok": tok})[0], rtol=1e-5, atol=1e-6)
    assert len(sess.program_status()) == 1, sess.program_status()
    assert list(sess.program_status().values())[0].startswith("compiled")
