"""Operators that remember a plan per input shape (Pad's takes, a reduction's axes) give ONNX
Runtime's answer on every call, not only the first: new values of the same shape, new pads
of the same shape, new shapes."""
from __future__ import annotations

import numpy as np
import pytest

from test_ops import one_node_model, run_ort

ort = pytest.importorskip("onnxruntime")

from rnnengine.ops import native_op  # noqa: E402


def ort_node(op, inputs, attrs, opset):
    return run_ort(one_node_model(op, inputs, attrs, opset, 1)[0], inputs)[0]


def ours(op, attrs, opset, n_in):
    return native_op(one_node_model(op, [np.zeros(1)] * n_in, attrs, opset, 1)[1], opset)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_pad_replays_per_shape_and_pads(mode):
    pad = ours("Pad", {"mode": mode}, 15, 2)
    rng = np.random.default_rng(0)
    cases = [((1, 512), [0, 64, 0, 64])] * 3 + [((1, 512), [0, 3, 0, 1]), ((2, 5), [1, 2, 0, 3]),
                                                ((1, 512), [0, 64, 0, 64])]
    for shape, pads in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        p = np.array(pads, np.int64)
        got = pad(x, p)[0]
        assert np.array_equal(got, ort_node("Pad", [x, p], {"mode": mode}, 15))
    with pytest.raises(ValueError, match="integer"):
        pad(x, np.array(pads, np.float32))


@pytest.mark.parametrize("kind", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions_replay_per_shape(kind, keepdims):
    rng = np.random.default_rng(1)
    for axes, shape in [([1], (1, 1)), ([1], (1, 1)), ([1], (3, 4)), ([0, 2], (2, 3, 5)),
                        ([-1], (2, 3, 5)), ([1], (3, 4))]:
        attrs = {"keepdims": keepdims, **({"axes": axes} if kind != "ReduceSum" else {})}
        inputs = [rng.standard_normal(shape).astype(np.float32)]
        opset = 15 if kind != "ReduceSum" else 13
        if kind == "ReduceSum":
            inputs.append(np.array(axes, np.int64))
        op = ours(kind, attrs, opset, len(inputs))
        for _ in range(2):   # the second call replays the remembered axes
            got = op(*inputs)[0]
            want = ort_node(kind, inputs, attrs, opset)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.allclose(got, want, rtol=1e-6, atol=1e-7)
            inputs[0] = rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("exponent", [np.array(2.0), np.array(2, np.int64)])
def test_pow_by_two_squares_like_ort(dtype, exponent):
    # Pow by a 0-d 2 takes a fast path (np.square): same values as ORT's, signs, NaN, inf
    x = np.array([[-3.5, -1e-3, 0.0, 2.5], [np.nan, np.inf, -np.inf, 70.0]], dtype)
    y = exponent.astype(dtype) if exponent.dtype.kind == "f" else exponent
    got = ours("Pow", {}, 15, 2)(x, y)[0]
    want = ort_node("Pow", [x, y], {}, 15)
    assert got.dtype == want.dtype == x.dtype
    assert np.array_equal(got, want, equal_nan=True)
