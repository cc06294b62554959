"""rnnengine.ops against ONNX Runtime, part two: products, normalizations, sliding windows and
the fused dense head (the harness is in test_ops.py)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from test_ops import CASES as FIRST_CASES
from test_ops import (F, I, add_case, assert_fresh_outputs, check, one_node_model, pos, r,
                      run_ort)

ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

from rnnengine.ops import NATIVE_OPS, fuse_chain, native_op  # noqa: E402

CASES = []
case = functools.partial(add_case, CASES)

# -- nn -------------------------------------------------------------------------------------
case("MatMul", [r(3, 4), r(4, 5)], opsets=(7, 13))
case("MatMul", [r(2, 3, 4), r(4, 5)])
case("MatMul", [r(4), r(4, 5)])
case("MatMul", [r(2, 1, 3, 4), r(5, 4, 2)])
case("MatMul", [r(4), r(4)])
case("MatMul", [r(1, 128), r(128, 257)])
case("Gemm", [r(3, 4), r(4, 5), r(5)], opsets=(7, 13))
case("Gemm", [r(4, 3), r(5, 4), r(3, 5)], {"transA": 1, "transB": 1, "alpha": 0.5,
                                           "beta": 2.0})
case("Gemm", [r(3, 4), r(4, 5)], opsets=(11,))
case("Gemm", [r(3, 4), r(4, 5), r(1, 1)], {"beta": 0.0})
for op in ("Softmax", "LogSoftmax"):
    case(op, [r(2, 3, 4)], opsets=(7, 11, 13))
    case(op, [r(2, 3, 4)], {"axis": 0}, opsets=(11, 13))
    case(op, [r(2, 3, 4)], {"axis": -2}, opsets=(11, 13))
    case(op, [r(1, 257) * 10])
case("LayerNormalization", [r(2, 3, 8), r(8), r(8)], opsets=(17,), n_out=3)
case("LayerNormalization", [r(2, 3, 8), r(3, 8)], {"axis": 1, "epsilon": 1e-3}, n_out=1)
case("LayerNormalization", [r(4, 8), r(8), r(8)])
case("LayerNormalization", [r(2, 5).astype(np.float16), r(5).astype(np.float16),
                            r(5).astype(np.float16)], n_out=3)
case("InstanceNormalization", [r(2, 3, 5), r(3), r(3)], opsets=(6 + 1, 22))
case("InstanceNormalization", [r(1, 4, 3, 5), r(4), r(4)], {"epsilon": 1e-2})
case("BatchNormalization", [r(2, 3, 5), r(3), r(3), r(3), pos(3)], opsets=(7, 9, 15))
case("BatchNormalization", [r(2, 3, 4, 5), r(3), r(3), r(3), pos(3)],
     {"epsilon": 1e-3}, opsets=(14,))
case("Dropout", [r(3, 4)], opsets=(7, 12, 13))
case("Dropout", [r(3, 4)], opsets=(7, 10, 12, 13), n_out=2)
case("Dropout", [r(3, 4), np.array(0.3, F)], opsets=(13,))
for spec in [
        dict(x=(1, 4, 10), w=(6, 4, 3)),
        dict(x=(2, 4, 10), w=(6, 2, 3), group=2, pads=[1, 2], strides=[2]),
        dict(x=(1, 4, 12), w=(4, 1, 3), group=4, dilations=[2], pads=[2, 2]),
        dict(x=(1, 3, 9), w=(5, 3, 1)),
        dict(x=(1, 3, 9), w=(5, 3, 4), auto_pad="SAME_UPPER", strides=[2]),
        dict(x=(1, 3, 9), w=(5, 3, 4), auto_pad="SAME_LOWER"),
        dict(x=(1, 3, 9), w=(5, 3, 4), auto_pad="VALID", strides=[3]),
        dict(x=(2, 3, 7, 6), w=(4, 3, 3, 3), pads=[1, 1, 1, 1]),
        dict(x=(1, 4, 7, 6), w=(4, 2, 3, 2), group=2, strides=[2, 1], dilations=[1, 2],
             pads=[0, 1, 2, 0]),
        dict(x=(1, 2, 5, 5), w=(3, 2, 2, 2), kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
        dict(x=(1, 2, 4, 4, 4), w=(2, 2, 2, 2, 2)),
        dict(x=(1, 258, 4), w=(128, 258, 1)),
]:
    spec = dict(spec)
    x, w = r(*spec.pop("x")), r(*spec.pop("w"))
    case("Conv", [x, w, r(w.shape[0])], spec, opsets=(11,))
    case("Conv", [x, w], spec, opsets=(22,))

def test_conv_plans_per_input_shape():
    node = helper.make_node("Conv", ["in0", "in1", "in2"], ["out0"], pads=[1, 2], strides=[2])
    f = native_op(node, 15)
    w, b = r(4, 3, 3), r(4)
    for length in (9, 4, 9, 1):   # a new shape, another, a cached one, the smallest
        x = r(2, 3, length)
        model, _ = one_node_model("Conv", [x, w, b], {"pads": [1, 2], "strides": [2]}, 15, 1)
        want = run_ort(model, [x, w, b])[0]
        np.testing.assert_allclose(f(x, w, b)[0], want, rtol=1e-5, atol=1e-5)


for spec in [
        dict(x=(1, 4, 5), w=(4, 3, 3)),
        dict(x=(2, 4, 5), w=(4, 2, 3), strides=[2], pads=[1, 0], output_padding=[1]),
        dict(x=(1, 4, 6), w=(4, 1, 4), group=2, strides=[2], pads=[1, 1]),
        dict(x=(1, 2, 5), w=(2, 3, 3), dilations=[2], strides=[3]),
        dict(x=(1, 2, 5), w=(2, 3, 3), strides=[2], output_shape=[10]),
        dict(x=(1, 2, 5), w=(2, 3, 4), strides=[2], output_shape=[10], auto_pad="SAME_UPPER"),
        dict(x=(1, 2, 5), w=(2, 3, 3), strides=[2], auto_pad="SAME_LOWER"),
        dict(x=(1, 3, 4, 5), w=(3, 2, 3, 2), strides=[2, 1], pads=[1, 0, 0, 1]),
        dict(x=(1, 16, 1, 8), w=(16, 8, 1, 4), strides=[1, 2], pads=[0, 1, 0, 1]),
]:
    spec = dict(spec)
    x, w = r(*spec.pop("x")), r(*spec.pop("w"))
    m = w.shape[1] * spec.get("group", 1)
    case("ConvTranspose", [x, w, r(m)], spec, opsets=(11,))
    case("ConvTranspose", [x, w], spec, opsets=(22,))
for op in ("MaxPool", "AveragePool"):
    for spec in [dict(kernel_shape=[3]), dict(kernel_shape=[3], strides=[2], pads=[1, 1]),
                 dict(kernel_shape=[2], strides=[2], ceil_mode=1),
                 dict(kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1),
                 dict(kernel_shape=[3], auto_pad="SAME_UPPER"),
                 dict(kernel_shape=[2, 3], strides=[1, 2], pads=[1, 0, 1, 2])]:
        x = r(2, 3, 7) if len(spec["kernel_shape"]) == 1 else r(1, 2, 5, 6)
        case(op, [x], spec, opsets=(11, 19))
    case(op, [r(1, 2, 9)], {"kernel_shape": [3], "dilations": [2]}, opsets=(19,))
for spec in [dict(kernel_shape=[3], pads=[1, 1], count_include_pad=1),
             dict(kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1,
                  count_include_pad=1),
             dict(kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)]:
    x = r(2, 3, 8) if len(spec["kernel_shape"]) == 1 else r(1, 2, 4, 5)
    case("AveragePool", [x], spec, opsets=(11, 19))
for op in ("GlobalAveragePool", "GlobalMaxPool"):
    case(op, [r(2, 3, 7)], opsets=(1 + 10,))
    case(op, [r(1, 3, 4, 5)], opsets=(22,))


def test_every_case_op_is_native():
    assert {c.values[0] for c in CASES} <= NATIVE_OPS


def test_every_native_op_has_cases():
    covered = {c.values[0] for c in CASES + FIRST_CASES} | {"Constant"}  # test_constant_kinds
    assert NATIVE_OPS - covered == set()


def test_ops_outside_aliasing_ops_return_fresh_arrays():
    assert_fresh_outputs(CASES)


@pytest.mark.parametrize("op, inputs, attrs, opset, n_out", CASES)
def test_matches_onnxruntime(op, inputs, attrs, opset, n_out):
    check(op, inputs, attrs, opset, n_out)


# -- fused heads ----------------------------------------------------------------------------
def chain_nodes(head, act, bias, bias_first=False, head_attrs=None, act_attrs=None, c=False):
    nodes = [helper.make_node(head, ["x", "w"] + (["c"] if c else []), ["p"], name="head",
                              **(head_attrs or {}))]
    last = "p"
    if bias:
        nodes.append(helper.make_node("Add", ["b", "p"] if bias_first else ["p", "b"], ["q"],
                                      name="bias"))
        last = "q"
    if act:
        nodes.append(helper.make_node(act, [last], ["y"], name="act", **(act_attrs or {})))
    return nodes


FUSED = [
    ("MatMul", "Sigmoid", True, {}, {}, False, [r(1, 128), r(128, 257), r(257)], 15),
    ("MatMul", "Relu", True, {}, {}, False, [r(2, 5, 8), r(8, 6), r(6)], 13),
    ("MatMul", "Tanh", False, {}, {}, False, [r(3, 8), r(8, 6)], 13),
    ("MatMul", None, True, {}, {}, False, [r(3, 8), r(8, 6), r(6)], 13),
    ("MatMul", "Softmax", True, {}, {}, False, [r(2, 3, 8), r(8, 6), r(6)], 13),
    ("MatMul", "LogSoftmax", True, {}, {"axis": 1}, False, [r(2, 3, 8), r(8, 6), r(6)], 11),
    ("MatMul", "Sigmoid", True, {}, {}, False, [r(1, 8, dtype=np.float64),
                                               r(8, 6, dtype=np.float64),
                                               r(6, dtype=np.float64)], 13),
    ("MatMul", "Relu", True, {}, {}, False, [r(6), r(6, 4), r(3, 4)], 13),  # bias grows Y
    ("Gemm", "Sigmoid", False, {"transB": 1}, {}, True, [r(2, 8), r(6, 8), r(6)], 13),
    ("Gemm", "Tanh", True, {"alpha": 0.5}, {}, False, [r(2, 8), r(8, 6), r(6)], 13),
    ("Gemm", "LogSoftmax", False, {}, {}, True, [r(2, 8), r(8, 6), r(1, 6)], 13),
    ("Gemm", "Softmax", True, {"transA": 1, "beta": 2.0}, {"axis": 0}, True,
     [r(8, 2), r(8, 6), r(6), r(2, 1)], 13),
]


@pytest.mark.parametrize("bias_first", [False, True])
@pytest.mark.parametrize("head, act, bias, head_attrs, act_attrs, c, inputs, opset", FUSED)
def test_fused_chain_matches_onnxruntime(head, act, bias, head_attrs, act_attrs, c, inputs,
                                         opset, bias_first):
    nodes = chain_nodes(head, act, bias, bias_first, head_attrs, act_attrs, c)
    fused = fuse_chain(nodes, opset)
    assert fused is not None
    names = ["x", "w"] + (["c"] if c else []) + (["b"] if bias else [])
    assert list(fused.inputs) == names and fused.outputs == (nodes[-1].output[0],)
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
         for n, x in zip(names, inputs)],
        [helper.make_empty_tensor_value_info(nodes[-1].output[0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, dict(zip(names, inputs)))[0]
    got = fused(*inputs)
    assert len(got) == 1 and got[0].dtype == want.dtype and got[0].shape == want.shape
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6 * max(1, np.abs(want).max()))


def test_fused_chain_declines_what_it_cannot_fuse():
    good = chain_nodes("MatMul", "Sigmoid", True)
    assert fuse_chain(good[:1], 13) is None                     # nothing to fuse
    assert fuse_chain(good[1:], 13) is None                     # no product first
    assert fuse_chain(chain_nodes("MatMul", "Exp", True), 13) is None
    assert fuse_chain([good[0], good[2]], 13) is None           # Sigmoid does not read p
    assert fuse_chain(good + [helper.make_node("Relu", ["y"], ["z"])], 13) is None
    sub = [good[0], helper.make_node("Sub", ["p", "b"], ["q"]), good[2]]
    assert fuse_chain(sub, 13) is None
    square = [good[0], helper.make_node("Add", ["p", "p"], ["q"]), good[2]]
    assert fuse_chain(square, 13) is None


def test_fused_chain_misfit_is_value_error_naming_nodes():
    fused = fuse_chain(chain_nodes("MatMul", "Sigmoid", True), 13)
    with pytest.raises(ValueError, match="head"):
        fused(r(1, 8), r(7, 6), r(6))
    with pytest.raises(ValueError, match="bias"):
        fused(r(1, 8), r(8, 6), r(6, dtype=I))
