"""rnnengine.ops against ONNX Runtime: each case is a one-node model run by ORT and by
``native_op`` on the same inputs (same dtype and shape; float values within 1e-5 relative,
1e-6 of the largest output absolute)."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from rnnengine import ModelError  # noqa: E402
from rnnengine.ops import NATIVE_OPS, native_op  # noqa: E402
import conftest

RNG = np.random.default_rng(7)
F, I, B = np.float32, np.int64, np.bool_


def r(*shape, dtype=F):
    """Random values: floats in [-2, 2], ints in [-5, 5], bools."""
    if dtype == B:
        return RNG.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(-5, 6, size=shape).astype(dtype)
    return RNG.uniform(-2, 2, size=shape).astype(dtype)


def pos(*shape):
    return RNG.uniform(0.1, 3, size=shape).astype(F)


def a(*values, dtype=I):
    return np.array(values, dtype=dtype)


def one_node_model(op, inputs, attrs, opset, n_out):
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name="the_node", **attrs)
    graph_inputs = [helper.make_tensor_value_info(
        n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
        for n, x in zip(names, inputs) if x is not None]
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 10
    return model, node


def run_ort(model, inputs):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {f"in{i}": x for i, x in enumerate(inputs) if x is not None}
    return sess.run(None, feeds)


def check(op, inputs, attrs=None, opset=17, n_out=1):
    model, node = one_node_model(op, inputs, attrs or {}, opset, n_out)
    want = run_ort(model, inputs)
    got = native_op(node, opset)(*inputs)
    assert isinstance(got, tuple) and len(got) == len(want)
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray)
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if w.dtype.kind == "f":
            # atol scales with the output: sums of many products (Conv over 258 channels)
            # cancel, and then float32 summation order shows in the small results.
            scale = max(1.0, float(np.nanmax(np.abs(w), initial=0)))
            tol = 1e-3 if w.dtype == np.float16 else 1e-5   # float16: an ulp is ~5e-4
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol / 10 * scale)
        else:
            np.testing.assert_array_equal(g, w)


# (op, inputs, attrs, opset, n_out): ids are derived from the op and the index.
def add_case(cases, op, inputs, attrs=None, opsets=(17,), n_out=1):
    """Append one pytest.param per opset to ``cases``."""
    for opset in opsets:
        cases.append(pytest.param(op, inputs, attrs or {}, opset, n_out,
                                  id=f"{op}-{len([c for c in cases if c.values[0] == op])}"
                                     f"-op{opset}"))


CASES = []
case = functools.partial(add_case, CASES)


# -- elementwise ----------------------------------------------------------------------------
for op in ("Add", "Sub", "Mul", "Div"):
    case(op, [r(2, 3), r(2, 3)], opsets=(7, 14))
    case(op, [r(1, 4, 5), r(5)])
    case(op, [r(3, 1), r(1, 4)])
    case(op, [r(dtype=F), r(dtype=F)])
    case(op, [r(4, dtype=np.int32), np.array([1, 2, -3, 4], np.int32)])
    case(op, [r(2, 3, dtype=np.float64), r(3, dtype=np.float64)])
case("Div", [np.array([7, -7, 7, -7, 6], I), np.array([2, 2, -2, -2, 3], I)])
case("Div", [np.array(-7, np.int32), np.array(2, np.int32)])
case("Mod", [np.array([7, -7, 7, -7], I), np.array([3, 3, -3, -3], I)])
case("Mod", [r(5), np.full(5, 1.5, F)], {"fmod": 1})
case("Pow", [pos(3, 4), a(2.0, dtype=F).reshape(())], opsets=(7, 15))
case("Pow", [pos(3, 4), r(3, 4)])
case("Pow", [pos(5), np.array(2, I)], opsets=(15,))
case("Pow", [np.array([1, 2, 3], I), np.array([2, 3, 0], I)], opsets=(15,))
for op in ("Equal", "Greater", "Less"):
    case(op, [r(3, 4, dtype=I), r(4, dtype=I)], opsets=(11, 13))
    case(op, [r(3, 4), r(3, 4)], opsets=(13,))
for op in ("GreaterOrEqual", "LessOrEqual"):
    case(op, [r(3, 4), r(1, 4)], opsets=(16,))
for op in ("And", "Or", "Xor"):
    case(op, [r(3, 4, dtype=B), r(4, dtype=B)], opsets=(7,))
case("Not", [r(3, 4, dtype=B)], opsets=(1 + 6,))
for op in ("Neg", "Abs", "Exp", "Tanh", "Relu", "Sigmoid", "Floor", "Ceil", "Sign",
           "Reciprocal", "Sin", "Cos", "Round", "Softsign", "Softplus", "Erf"):
    case(op, [r(3, 5)], opsets=(13,))
for op in ("Tan", "Atan", "Sinh", "Cosh", "Asinh"):
    case(op, [r(3, 4)], opsets=(9, 22))
for op in ("Asin", "Acos", "Atanh"):
    case(op, [r(3, 4) / 2.5], opsets=(9,))
case("Acosh", [pos(3, 4) + 1], opsets=(9,))
case("IsNaN", [np.array([np.nan, 0.0, -np.inf, 1.0], F)], opsets=(9, 20))
case("Sigmoid", [np.array([-200, -90, -20, -5, 0, 5, 20, 90, 200], F)])
case("Sigmoid", [r(2, 3, dtype=np.float64)])
case("Relu", [r(dtype=F)])
case("Relu", [r(6, dtype=np.int32)], opsets=(14,))
case("Neg", [r(6, dtype=I)])
case("Abs", [r(6, dtype=np.int32)])
for op in ("Log", "Sqrt"):
    case(op, [pos(4, 3)], opsets=(7, 13))
case("Erf", [np.linspace(-4, 4, 81).astype(F)])
case("LeakyRelu", [r(3, 4)], opsets=(7, 16))
case("LeakyRelu", [r(3, 4)], {"alpha": 0.3})
case("PRelu", [r(2, 3, 4), r(3, 1)], opsets=(16,))
case("Elu", [r(3, 4)], {"alpha": 0.7})
case("Selu", [r(3, 4)])
case("Celu", [r(3, 4)], {"alpha": 2.0}, opsets=(12,))
case("ThresholdedRelu", [r(3, 4)], {"alpha": 0.5}, opsets=(10,))
case("HardSigmoid", [r(3, 4)])
case("HardSigmoid", [r(3, 4)], {"alpha": 0.4, "beta": 0.3}, opsets=(7, 22))
case("HardSwish", [r(3, 4) * 3], opsets=(14,))
case("Clip", [r(3, 4)], {"min": -0.5, "max": 0.7}, opsets=(7,))
case("Clip", [r(3, 4)], {"min": -0.5}, opsets=(7,))
case("Clip", [r(3, 4), a(-0.5, dtype=F).reshape(()), a(0.7, dtype=F).reshape(())],
     opsets=(11, 13))
case("Clip", [r(3, 4), None, a(0.7, dtype=F).reshape(())], opsets=(13,))
case("Clip", [r(3, 4), a(1.0, dtype=F).reshape(()), a(0.5, dtype=F).reshape(())])
case("Clip", [r(3, 4, dtype=I), a(-1), a(2)][:1] + [np.array(-1, I), np.array(2, I)],
     opsets=(13,))
case("Clip", [r(3, 4)], opsets=(13,))
for op in ("Max", "Min", "Sum", "Mean"):
    case(op, [r(3, 4), r(4), r(1, 4)], opsets=(8, 13))
    case(op, [r(3, 4)], opsets=(13,))
case("Max", [r(3, 4, dtype=I), r(3, 1, dtype=I)], opsets=(13,))
case("Where", [r(3, 4, dtype=B), r(3, 4), r(4)], opsets=(9, 16))
case("Where", [r(3, 1, dtype=B), r(3, 4, dtype=I), r(1, 4, dtype=I)])
case("Gelu", [r(3, 5)], opsets=(20,))
case("Mish", [r(3, 5) * 4], opsets=(18,))
for attrs in ({}, {"detect_positive": 0}, {"detect_negative": 0}):
    case("IsInf", [np.array([np.inf, -np.inf, 0.0, np.nan, 3.0], F)], attrs, opsets=(10, 20))
case("Gelu", [r(3, 5)], {"approximate": "tanh"}, opsets=(20,))

# -- shape ----------------------------------------------------------------------------------
case("Identity", [r(2, 3)], opsets=(7, 16))
case("Shape", [r(2, 3, 4)], opsets=(7, 15))
case("Shape", [r(2, 3, 4)], {"start": 1}, opsets=(15,))
case("Shape", [r(2, 3, 4)], {"start": -2, "end": -1}, opsets=(19,))
case("Size", [r(2, 3, 4)], opsets=(7, 13))
case("Reshape", [r(2, 3, 4), a(4, -1)], opsets=(7, 14))
case("Reshape", [r(2, 3, 4), a(0, 0, 2, 2)], opsets=(13,))
case("Reshape", [r(2, 0, 4), a(0, 8)], {"allowzero": 1}, opsets=(14,))
case("Reshape", [r(6), a(-1, 1, 3)])
case("Flatten", [r(2, 3, 4, 5)], opsets=(9, 13))
case("Flatten", [r(2, 3, 4, 5)], {"axis": 0})
case("Flatten", [r(2, 3, 4, 5)], {"axis": -1}, opsets=(13,))
case("Flatten", [r(2, 3, 4, 5)], {"axis": 4})
case("Squeeze", [r(1, 3, 1, 2)], opsets=(7, 13))
case("Squeeze", [r(1, 3, 1, 2)], {"axes": [0, -2]}, opsets=(11,))
case("Squeeze", [r(1, 3, 1, 2), a(2)], opsets=(13, 21))
case("Squeeze", [r(1, 3, 1), np.zeros(0, I)])
case("Unsqueeze", [r(3, 2)], {"axes": [0, 3]}, opsets=(7, 11))
case("Unsqueeze", [r(3, 2), a(-1, 0)], opsets=(13,))
case("Unsqueeze", [r(3, 2)], {"axes": [-1, 1]}, opsets=(11,))
case("Unsqueeze", [r(dtype=F), a(0)], opsets=(13,))
case("Transpose", [r(2, 3, 4)], opsets=(7, 13))
case("Transpose", [r(2, 3, 4)], {"perm": [1, 0, 2]})
case("Transpose", [r(2, 3, 4, 5)], {"perm": [0, 2, 3, 1]})
case("Expand", [r(3, 1), a(2, 3, 4)], opsets=(8, 13))
case("Expand", [r(3, 4), a(1, 1)])
case("Expand", [r(1, 4), a(3, 1)])

# -- tensor ---------------------------------------------------------------------------------
for dt in (np.float32, np.int64, np.bool_, np.int32, np.float16):
    case("Cast", [r(3, 4) * 3], {"to": int(helper.np_dtype_to_tensor_dtype(np.dtype(dt)))},
         opsets=(9, 13, 19))
case("Cast", [r(5, dtype=I)], {"to": TensorProto.FLOAT})
case("Cast", [r(5, dtype=B)], {"to": TensorProto.FLOAT})
case("CastLike", [r(3, 4) * 3, r(1, dtype=I)], opsets=(15, 19))
case("CastLike", [r(5, dtype=I), np.zeros(2, np.float16)], opsets=(15,))
U8 = np.uint8
case("DequantizeLinear", [np.array([0, 3, 128, 255], U8), np.array(0.5, F),
                          np.array(128, U8)], opsets=(10, 13, 21))
case("DequantizeLinear", [np.array([-128, 0, 5, 127], np.int8), np.array(0.25, F)],
     opsets=(13,))
case("DequantizeLinear", [r(2, 3, dtype=np.int8), pos(3), np.array([1, 0, -2], np.int8)],
     opsets=(13, 19))
case("DequantizeLinear", [r(3, 2, dtype=np.int32), pos(3)], {"axis": 0}, opsets=(13,))
case("QuantizeLinear", [r(2, 5) * 100, np.array(0.5, F), np.array(10, U8)],
     opsets=(10, 13, 21))
case("QuantizeLinear", [np.array([0.5, 1.5, 2.5, -0.5, -300], F), np.array(1.0, F),
                        np.array(0, np.int8)], opsets=(13,))
case("QuantizeLinear", [r(4, 3) * 10, pos(3), np.array([0, 5, 200], U8)], opsets=(13,))
case("QuantizeLinear", [r(4, 3) * 10, np.array(0.1, F)], opsets=(19,))
case("QuantizeLinear", [r(3, 4) * 10, pos(3), np.array([0, 5, -7], np.int8)], {"axis": 0},
     opsets=(13,))
case("ConstantOfShape", [a(2, 3)], opsets=(9,))
case("ConstantOfShape", [a(2, 3)], {"value": helper.make_tensor("v", TensorProto.INT64, [1],
                                                                 [7])})
case("ConstantOfShape", [a(4)], {"value": helper.make_tensor("v", TensorProto.FLOAT, [1],
                                                              [0.5])}, opsets=(20,))
case("ConstantOfShape", [np.zeros(0, I)])
case("Concat", [r(2, 3), r(2, 1)], {"axis": 1}, opsets=(7, 13))
case("Concat", [r(2, 3), r(1, 3), r(4, 3)], {"axis": -2})
case("Concat", [r(2, dtype=I)], {"axis": 0})
case("Split", [r(6, 4)], {"axis": 0}, opsets=(7, 13), n_out=3)
case("Split", [r(6, 4)], {"axis": 1, "split": [1, 3]}, opsets=(11,), n_out=2)
case("Split", [r(6, 4), a(2, 4)], {"axis": 0}, opsets=(13,), n_out=2)
case("Split", [r(6, 7)], {"axis": -1, "num_outputs": 3}, opsets=(18,), n_out=3)
case("Split", [r(6, 4), a(1, 2, 3)], {"axis": 0}, opsets=(18,), n_out=3)
case("Slice", [r(5, 6)], {"starts": [1], "ends": [4]}, opsets=(7,))
case("Slice", [r(5, 6)], {"starts": [1, -3], "ends": [1000, -1], "axes": [0, 1]},
     opsets=(9,))
case("Slice", [r(5, 6), a(1), a(4)], opsets=(10, 13))
case("Slice", [r(5, 6), a(-1), a(-1000), a(1), a(-2)], opsets=(10, 13))
case("Slice", [r(5, 6), a(4, 0), a(0, 2**62), a(0, 1), a(-1, 2)])
case("Slice", [r(5, 6), a(0), a(-1), a(-1)])
case("Slice", [r(5, 6), a(-2**62), a(-2**62), a(1), a(-1)])   # start clamps to 0, not empty
case("Slice", [r(5, 6), a(10), a(20), a(1)])
case("Slice", [r(5, 6), np.array([1], np.int32), np.array([3], np.int32)])
case("Gather", [r(5, 4), a(0, 3, -1)], opsets=(7, 13))
case("Gather", [r(5, 4), a(2, 0).reshape(2, 1)], {"axis": 1})
case("Gather", [r(5, 4), np.array(-2, I)])
case("Gather", [r(5), np.array(3, I)], opsets=(13,))
case("Gather", [r(5, 4, dtype=I), np.array([1], np.int32)], {"axis": -1})
case("Tile", [r(2, 3), a(2, 1)], opsets=(7, 13))
case("Tile", [r(2, 3, dtype=I), a(1, 3)])
case("Pad", [r(2, 5)], {"pads": [0, 1, 0, 2]}, opsets=(7,))
case("Pad", [r(2, 5)], {"pads": [0, 1, 0, 2], "mode": "reflect"}, opsets=(7,))
case("Pad", [r(2, 5)], {"pads": [1, 1, 0, 2], "mode": "edge", "value": 3.0}, opsets=(2 + 7,))
case("Pad", [r(2, 5), a(0, 1, 0, 2)], opsets=(11, 13))
case("Pad", [r(2, 5), a(1, 2, 1, 0), a(1.5, dtype=F).reshape(())], opsets=(11, 18))
case("Pad", [r(1, 3, 8), a(0, 0, 3, 0, 0, 3)], {"mode": "reflect"}, opsets=(13, 15))
case("Pad", [r(2, 5), a(0, 2, 0, 1)], {"mode": "edge"}, opsets=(13,))
case("Pad", [r(2, 5), a(0, -1, 1, 2)], opsets=(13,))
case("Pad", [r(2, 5), a(2, 3), None, a(-1)], opsets=(18,))
case("Pad", [r(2, 5), a(1, 2, 1, 2)], {"mode": "wrap"}, opsets=(19,))
case("Pad", [r(2, 5, dtype=I), a(0, 1, 0, 1), np.array(9, I)], opsets=(13,))
case("Pad", [r(2, 3), a(0, 5, 0, 4)], {"mode": "wrap"}, opsets=(19,))
case("Pad", [r(2, 5), a(0, -1, 0, 2)], {"mode": "reflect"}, opsets=(13,))
case("Pad", [r(2, 5), a(1, -2, 0, 3)], {"mode": "edge"}, opsets=(13,))
case("Pad", [r(3, 4), a(0, 0, 0, 0)], {"mode": "reflect"}, opsets=(13,))
case("Range", [np.array(0, I), np.array(10, I), np.array(3, I)], opsets=(11,))
case("Range", [np.array(10, I), np.array(2, I), np.array(-3, I)])
case("Range", [np.array(0.5, F), np.array(2.0, F), np.array(0.25, F)])
case("Range", [np.array(5, np.int32), np.array(2, np.int32), np.array(1, np.int32)])

# -- index ----------------------------------------------------------------------------------
case("GatherElements", [r(3, 4), np.array([[0, 2, -1, 1], [2, 2, 0, 0]], I)], opsets=(11, 13))
case("GatherElements", [r(3, 4), np.array([[0], [3], [-4]], np.int32)], {"axis": 1})
case("ScatterElements", [r(3, 4), np.array([[0, 2, 1, 1]], I), r(1, 4)], opsets=(11, 13))
case("ScatterElements", [r(3, 4), np.array([[1], [-1]], I), r(2, 1)], {"axis": 1},
     opsets=(16,))
case("ScatterElements", [r(3, 4), np.array([[1, 1]], I), r(1, 2)],
     {"axis": 1, "reduction": "add"}, opsets=(18,))
case("GatherND", [r(3, 4, 2), np.array([[0, 1], [2, -1]], I)], opsets=(11, 13))
case("GatherND", [r(3, 4, 2), np.array([[1], [0]], I)], {"batch_dims": 0}, opsets=(12,))
case("GatherND", [r(2, 4, 3), np.array([[1], [3]], I)], {"batch_dims": 1}, opsets=(13,))
case("ScatterND", [r(4, 3), np.array([[1], [3]], I), r(2, 3)], opsets=(11, 13))
case("ScatterND", [r(4, 3), np.array([[1, 2], [0, 0]], I), r(2)], {"reduction": "mul"},
     opsets=(16,))
case("OneHot", [np.array([0, 2, -1, 5], I), np.array(4, I), np.array([0, 1], F)],
     opsets=(11,))
case("OneHot", [np.array([[1, 0], [2, 3]], I), np.array([4], I), np.array([-1, 2], I)],
     {"axis": 1}, opsets=(11,))
case("NonZero", [r(3, 4, dtype=I)], opsets=(9, 13))
case("NonZero", [r(5, dtype=B)], opsets=(13,))
case("TopK", [r(3, 6), np.array([2], I)], opsets=(11, 13), n_out=2)
case("TopK", [r(3, 6)], {"k": 3}, opsets=(9,), n_out=2)
case("TopK", [np.array([[1, 3, 3, 2, 3]], np.int32), np.array([3], I)],
     {"largest": 0, "axis": 1}, opsets=(11,), n_out=2)
case("TopK", [np.array([[1, 3, 3, 2, 3]], np.int32), np.array([3], I)], opsets=(11,),
     n_out=2)
case("CumSum", [r(3, 4), np.array(1, I)], opsets=(11, 14))
case("CumSum", [r(3, 4), np.array(0, np.int32)], {"exclusive": 1, "reverse": 1})
case("CumSum", [r(3, 4, dtype=I), np.array(-1, I)], {"reverse": 1})
case("ReverseSequence", [r(4, 3, 2), np.array([4, 1, 2], I)], opsets=(10,))
case("ReverseSequence", [r(3, 5), np.array([0, 5, 3], I)], {"batch_axis": 0, "time_axis": 1},
     opsets=(10,))
case("Trilu", [r(4, 5)], opsets=(14,))
case("Trilu", [r(2, 4, 5), np.array(-1, I)], {"upper": 0}, opsets=(14,))
case("Einsum", [r(2, 3, 4), r(2, 4, 5)], {"equation": "bij,bjk->bik"}, opsets=(12,))
case("Einsum", [r(3, 3)], {"equation": "ii->i"}, opsets=(12,))
case("Einsum", [r(2, 3), r(3, 4), r(4)], {"equation": "ij, jk, k -> i"}, opsets=(12,))

# -- reduce ---------------------------------------------------------------------------------
for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
           "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp"):
    case(op, [r(2, 3, 4)], {"axes": [1]}, opsets=(11,))
    case(op, [r(2, 3, 4)], {"axes": [0, -1], "keepdims": 0}, opsets=(11,))
    case(op, [r(2, 3, 4)], opsets=(11,))
    case(op, [r(2, 3, 4), a(1)], opsets=(18,))
    case(op, [r(2, 3, 4), a(-1, 0)], {"keepdims": 0}, opsets=(18,))
    case(op, [r(2, 3, 4)], {"keepdims": 0}, opsets=(18,))
    case(op, [r(2, 3, 4), np.zeros(0, I)], {"noop_with_empty_axes": 1}, opsets=(18,))
case("ReduceSum", [r(2, 3, 4), a(1)], opsets=(13,))
case("ReduceSum", [r(2, 3, 4, dtype=I), a(1)], opsets=(13,))
case("ReduceMax", [r(2, 3, 4, dtype=I)], {"axes": [2]}, opsets=(13,))
case("ReduceMean", [r(1, 1, 16)], {"axes": [-1]}, opsets=(15,))
for op in ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL2", "ReduceLogSumExp"):
    case(op, [r(2, 0, 3)], {"axes": [1]}, opsets=(13,))   # over nothing: the identity
case("ReduceMax", [r(2, 0, 3, dtype=np.int32)], {"axes": [1]}, opsets=(13,))
for op in ("ArgMax", "ArgMin"):
    case(op, [r(3, 4)], opsets=(11, 13))
    case(op, [r(3, 4, dtype=I)], {"axis": 1, "keepdims": 0, "select_last_index": 1},
         opsets=(13,))


def test_every_case_op_is_native():
    assert {c.values[0] for c in CASES} <= NATIVE_OPS


@pytest.mark.parametrize("op, inputs, attrs, opset, n_out", CASES)
def test_matches_onnxruntime(op, inputs, attrs, opset, n_out):
    check(op, inputs, attrs, opset, n_out)


def test_constant_kinds():
    t = helper.make_tensor("v", TensorProto.FLOAT, [2, 2], [1, 2, 3, 4])
    for attrs, opset in [({"value": t}, 9), ({"value_float": 1.5}, 13),
                         ({"value_floats": [1.5, 2]}, 13), ({"value_int": 3}, 13),
                         ({"value_ints": [3, 4]}, 22)]:
        check("Constant", [], attrs, opset)
    node = helper.make_node("Constant", [], ["c"], value=t)
    out = native_op(node, 13)()[0]
    with pytest.raises(ValueError, match="read-only"):   # shared between calls, so read-only
        out[0, 0] = 9


def assert_fresh_outputs(cases):
    """Ops outside ALIASING_OPS share no memory with their inputs."""
    from rnnengine.ops import ALIASING_OPS
    assert ALIASING_OPS <= NATIVE_OPS
    for param in cases:
        op, inputs, attrs, opset, n_out = param.values
        if op in ALIASING_OPS or not inputs:
            continue
        _, node = one_node_model(op, inputs, attrs, opset, n_out)
        for y in native_op(node, opset)(*inputs):
            assert not any(x is not None and np.shares_memory(y, x) for x in inputs), op


def test_ops_outside_aliasing_ops_return_fresh_arrays():
    assert_fresh_outputs(CASES)


def test_shape_ops_return_views():
    x = r(1, 3, 1, 4)
    for op, ins, attrs, opset in [("Identity", [], {}, 13), ("Reshape", [a(3, 4)], {}, 13),
                                  ("Squeeze", [a(0)], {}, 13), ("Unsqueeze", [a(0)], {}, 13),
                                  ("Transpose", [], {}, 13), ("Flatten", [], {}, 13),
                                  ("Slice", [a(1), a(3), a(1)], {}, 13)]:
        node = helper.make_node(op, ["x"] + [f"i{k}" for k in range(len(ins))], ["y"],
                                **attrs)
        y = native_op(node, opset)(x, *ins)[0]
        assert np.shares_memory(y, x), op


BAD_ATTRS = [
    ("Concat", 2, {}, 13),                               # axis is required
    ("Concat", 2, {"axis": 1.5}, 13),                    # axis of the wrong type
    ("Add", 2, {"foo": 1}, 13),                          # unknown attribute
    ("Cast", 1, {"to": TensorProto.STRING}, 13),         # target type not handled
    ("Cast", 1, {}, 13),                                 # to is required
    ("Pad", 2, {"mode": "mirror"}, 13),                  # no such mode
    ("Pad", 2, {"mode": "wrap"}, 13),                    # wrap needs opset 19
    ("Transpose", 1, {"perm": [0, 0]}, 13),              # not a permutation
    ("Unsqueeze", 1, {}, 11),                            # axes required before 13
    ("Unsqueeze", 1, {}, 13),                            # axes input required from 13
    ("Squeeze", 1, {"axes": [0]}, 13),                   # axes became an input in 13
    ("Slice", 1, {"starts": [0], "ends": [1]}, 13),      # attributes became inputs in 10
    ("Split", 1, {}, 18),                                # needs split or num_outputs
    ("Conv", 2, {"group": 0}, 11),
    ("Conv", 2, {"auto_pad": "SAME_UPPER", "pads": [1, 1]}, 11),
    ("Conv", 2, {"strides": [0]}, 11),
    ("MaxPool", 1, {}, 11),                              # kernel_shape is required
    ("AveragePool", 1, {"kernel_shape": [2], "dilations": [2]}, 18),
    ("MaxPool", 1, {"kernel_shape": [2], "ceil_mode": 3}, 12),
    ("LayerNormalization", 2, {"stash_type": 7}, 17),
    ("BatchNormalization", 5, {"training_mode": 1}, 15),
    ("Gelu", 1, {"approximate": "fast"}, 20),
    ("Gemm", 2, {"transA": 2}, 13),
    ("ReduceSum", 2, {}, 11),                            # axes input needs opset 13
    ("ReduceMean", 2, {}, 17),                           # axes input needs opset 18
    ("Squeeze", 2, {}, 11),
    ("Unsqueeze", 2, {}, 12),
    ("Split", 2, {}, 11),
    ("Clip", 3, {}, 10),
    ("Pad", 2, {}, 10),
    ("Slice", 3, {}, 9),
    ("Dropout", 2, {}, 11),
    ("Constant", 0, {}, 13),
    ("Einsum", 2, {"equation": "ij->i"}, 12),            # names one input, node has two
    ("TopK", 2, {"sorted": 0}, 11),
    ("ScatterND", 3, {"reduction": "sum"}, 16),
    ("Constant", 0, {"value_string": "s"}, 13),
    ("MatMul", 1, {}, 13),                               # too few inputs
    ("Relu", 2, {}, 13),                                 # too many inputs
    ("LSTM", 3, {}, 13),                                 # not a native op
]


@pytest.mark.parametrize("op, n_in, attrs, opset", BAD_ATTRS,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_ATTRS)])
def test_bad_attributes_raise_model_error(op, n_in, attrs, opset):
    node = helper.make_node(op, [f"i{k}" for k in range(n_in)], ["y"], name="bad", **attrs)
    with pytest.raises(ModelError, match="bad"):
        native_op(node, opset)


def test_empty_required_input_is_model_error():
    node = helper.make_node("MatMul", ["", "w"], ["y"], name="hole")
    with pytest.raises(ModelError, match="hole.*empty"):
        native_op(node, 13)


def test_malformed_tensor_attribute_is_model_error():
    t = helper.make_tensor("v", TensorProto.FLOAT, [2, 2], [1, 2, 3, 4])
    t.float_data.pop()   # three values for a 2x2 tensor
    node = helper.make_node("Constant", [], ["c"], name="broken", value=t)
    with pytest.raises(ModelError, match="broken.*malformed"):
        native_op(node, 13)


def test_foreign_domain_is_model_error():
    node = helper.make_node("Add", ["a", "b"], ["y"], domain="com.microsoft")
    with pytest.raises(ModelError, match="domain"):
        native_op(node, 13)


BAD_INPUTS = [
    ("Add", {}, 13, [r(3), r(4)]),                       # shapes do not broadcast
    ("Add", {}, 13, [r(3), r(3, dtype=I)]),              # dtypes differ
    ("MatMul", {}, 13, [r(3, 4), r(5, 6)]),
    ("Gemm", {}, 13, [r(3, 4, 1), r(4, 5)]),
    ("Reshape", {}, 13, [r(2, 3), a(4, -1)]),
    ("Reshape", {}, 13, [r(2, 3), a(6.0, dtype=F)]),
    ("Squeeze", {}, 13, [r(2, 3), a(0)]),                # axis of size 2
    ("Unsqueeze", {}, 13, [r(2, 3), a(5)]),
    ("Transpose", {"perm": [1, 0]}, 13, [r(2, 3, 4)]),
    ("Concat", {"axis": 0}, 13, [r(2, 3), r(2, 4)]),
    ("Concat", {"axis": 3}, 13, [r(2, 3), r(2, 3)]),
    ("Gather", {}, 13, [r(5, 4), a(5)]),                 # index out of range
    ("Gather", {}, 13, [r(5, 4), a(1.0, dtype=F)]),
    ("Slice", {}, 13, [r(5, 4), a(0), a(1), a(0), a(0)]),  # step 0
    ("Slice", {}, 13, [r(5, 4), a(0, 1), a(1)]),
    ("Conv", {}, 11, [r(1, 4, 10), r(6, 3, 3)]),         # channels do not match
    ("Conv", {}, 11, [r(1, 4, 2), r(6, 4, 3)]),          # kernel longer than the input
    ("Split", {"axis": 0}, 13, [r(5, 4)]),               # 5 rows into 2 equal parts
    ("Where", {}, 16, [r(3), r(3), r(3)]),               # condition not bool
    ("Not", {}, 13, [r(3)]),
    ("Pad", {}, 13, [r(2, 3), a(1, 1)]),
    ("Pad", {"mode": "reflect"}, 13, [r(2, 3), a(0, 3, 0, 0)]),   # ORT refuses too
    ("Pad", {"mode": "reflect"}, 13, [r(2, 1), a(0, 0, 0, 1)]),
    ("Expand", {}, 13, [r(3, 4), a(2, 4)]),
    ("Tile", {}, 13, [r(3, 4), a(2)]),
    ("Range", {}, 13, [np.array(0, I), np.array(5, I), np.array(0, I)]),
    ("Range", {}, 13, [np.array(0, I), np.array(2**40, I), np.array(1, I)]),   # too big
    ("ConstantOfShape", {}, 13, [a(2**20, 2**20)]),
    ("Tile", {}, 13, [r(3, 4), a(2**20, 2**20)]),
    ("Pad", {}, 13, [r(2, 3), a(0, 2**30, 0, 0)]),
    ("OneHot", {}, 11, [a(1, 2), np.array(2**40, I), np.array([0, 1], F)]),
    ("Conv", {}, 11, [r(1, 1, 2**15), r(1, 1, 2**14)]),                    # gather too big
    ("BatchNormalization", {}, 15, [r(2, 3, 4), r(4), r(3), r(3), r(3)]),
    ("Sigmoid", {}, 13, [r(3, dtype=I)]),
    ("Exp", {}, 13, [r(3, dtype=I)]),
    ("GatherElements", {}, 13, [r(3, 4), np.array([[3, 0, 0, 0]], I)]),
    ("ScatterND", {}, 13, [r(4, 3), np.array([[4]], I), r(1, 3)]),
    ("Einsum", {"equation": "ij,jk->ik"}, 12, [r(2, 3), r(4, 5)]),
    ("Softmax", {}, 13, [r(3, dtype=I)]),
]


@pytest.mark.parametrize("op, attrs, opset, inputs", BAD_INPUTS,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_INPUTS)])
def test_misfitting_inputs_raise_value_error(op, attrs, opset, inputs):
    n_out = 2 if op == "Split" else 1
    node = helper.make_node(op, [f"i{k}" for k in range(len(inputs))],
                            [f"y{k}" for k in range(n_out)], name="misfit", **attrs)
    f = native_op(node, opset)
    with pytest.raises(ValueError, match="misfit") as info:
        f(*inputs)
    assert not isinstance(info.value, ModelError)


def test_numpy_before_2_3_still_returns_arrays():
    """NumPy < 2.3 has no ufunc ``out=...``; the ops then convert 0-d scalar results."""
    import subprocess
    import sys
    code = (
        "import numpy as np\n"
        "np.__version__ = '2.2.0'\n"
        "from onnx import helper\n"
        "from rnnengine.ops import native_op, fuse_chain\n"
        "from rnnengine.ops._common import ARRAY\n"
        "assert ARRAY is None\n"
        "s = np.array(2.0, np.float32)\n"
        "for op in ('Add', 'Mul', 'Div', 'Pow', 'Equal', 'Max'):\n"
        "    y, = native_op(helper.make_node(op, ['a', 'b'], ['y']), 15)(s, s)\n"
        "    assert type(y) is np.ndarray and y.shape == (), (op, type(y))\n"
        "i = np.array(-7, np.int64)\n"
        "y, = native_op(helper.make_node('Div', ['a', 'b'], ['y']), 15)(i, np.array(2))\n"
        "assert type(y) is np.ndarray and y == -3\n"
        "y, = native_op(helper.make_node('Exp', ['a'], ['y']), 15)(s)\n"
        "assert type(y) is np.ndarray\n"
        "nodes = [helper.make_node('MatMul', ['x', 'w'], ['p']),\n"
        "         helper.make_node('Sigmoid', ['p'], ['y'])]\n"
        "v = np.ones(3, np.float32)\n"
        "y, = fuse_chain(nodes, 15)(v, v)\n"
        "assert type(y) is np.ndarray and abs(y - 1 / (1 + np.exp(-3))) < 1e-6\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_silero_ops_are_all_native():
    path = os.path.join(conftest.DATA, "silero_vad_16k_op15.onnx")
    model = onnx.load(path)
    ops = set()

    def walk(g):
        for n in g.node:
            ops.add(n.op_type)
            for attr in n.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)
    walk(model.graph)
    assert ops - {"LSTM", "If"} <= NATIVE_OPS
