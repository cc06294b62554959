"""rnnengine.ops against ONNX Runtime on random geometry (hypothesis): slicing parameters,
broadcast shapes, convolution and pooling windows, padding."""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("onnxruntime")
from hypothesis import given, settings, strategies as st  # noqa: E402

from onnx import helper  # noqa: E402
from test_ops import check  # noqa: E402

from rnnengine import ModelError  # noqa: E402
from rnnengine.ops import NATIVE_OPS, _SPECS, native_op  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def arrays(shape, seed, dtype=np.float32):
    return np.asarray(np.random.default_rng(seed).uniform(-2, 2, size=shape), dtype=dtype)


@SETTINGS
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data())
def test_slice(shape, data):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank,
                              unique_by=lambda k: k % rank))
    n = len(axes)
    bound = st.integers(-8, 8) | st.sampled_from([2**62, -2**62])
    starts = data.draw(st.lists(bound, min_size=n, max_size=n))
    ends = data.draw(st.lists(bound, min_size=n, max_size=n))
    steps = data.draw(st.lists(st.integers(-3, 3).filter(bool), min_size=n, max_size=n))
    ints = [np.array(v, np.int64) for v in (starts, ends, axes, steps)]
    check("Slice", [arrays(shape, 1)] + ints, {}, 13)


def _broadcastable(shape, data):
    return [data.draw(st.sampled_from([1, d])) for d in shape[data.draw(
        st.integers(0, len(shape))):]]


@SETTINGS
@given(st.lists(st.integers(1, 4), min_size=0, max_size=4), st.data(),
       st.sampled_from(["Add", "Sub", "Mul", "Div", "Max", "Where", "Pow", "Greater"]))
def test_broadcasting(shape, data, op):
    a, b = _broadcastable(shape, data), _broadcastable(shape, data)
    if data.draw(st.booleans()):
        a, b = b, shape
    x, y = arrays(a, 2), arrays(b, 3)
    if op == "Pow":
        x = np.asarray(np.abs(x) + 0.1)
    if op == "Where":
        check(op, [np.asarray(arrays(shape, 4) > 0), x, y], {}, 16)
    else:
        check(op, [x, y], {}, 14)


@SETTINGS
@given(st.integers(1, 2), st.integers(1, 3), st.data())
def test_conv(spatial_dims, group, data):
    k = [data.draw(st.integers(1, 3)) for _ in range(spatial_dims)]
    dil = [data.draw(st.integers(1, 2)) for _ in range(spatial_dims)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(spatial_dims)]
    pads = [data.draw(st.integers(0, 2)) for _ in range(2 * spatial_dims)]
    size = [data.draw(st.integers((kk - 1) * d + 1, 8)) for kk, d in zip(k, dil)]
    c, m = group * data.draw(st.integers(1, 2)), group * data.draw(st.integers(1, 2))
    x, w = arrays([2, c] + size, 5), arrays([m, c // group] + k, 6)
    attrs = dict(group=group, dilations=dil, strides=strides, pads=pads)
    check("Conv", [x, w, arrays([m], 7)], attrs, 11)
    check("ConvTranspose", [x, arrays([c, m // group] + k, 8)],
          dict(attrs, pads=[min(p, kk - 1) for p, kk in zip(pads, k + k)]), 11)


@SETTINGS
@given(st.sampled_from(["MaxPool", "AveragePool"]), st.data())
def test_pool(op, data):
    k = data.draw(st.integers(1, 4))
    pads = [data.draw(st.integers(0, k - 1)) for _ in range(2)]
    attrs = dict(kernel_shape=[k], strides=[data.draw(st.integers(1, 3))], pads=pads,
                 ceil_mode=int(data.draw(st.booleans())))
    if op == "AveragePool":
        attrs["count_include_pad"] = int(data.draw(st.booleans()))
    check(op, [arrays([1, 2, data.draw(st.integers(k, 9))], 9)], attrs, 19)


@SETTINGS
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.data(),
       st.sampled_from(["constant", "reflect", "edge", "wrap"]))
def test_pad(shape, data, mode):
    rank = len(shape)
    low = -1 if mode == "constant" else 0
    pads = []
    for i in range(2 * rank):
        dim = shape[i % rank]
        top = dim - 1 if mode == "reflect" else 4
        pads.append(data.draw(st.integers(max(low, -dim + 1) if low else 0, max(top, 0))))
    check("Pad", [arrays(shape, 10), np.array(pads, np.int64)], {"mode": mode}, 19)


@SETTINGS
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data(),
       st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceLogSumExp"]))
def test_reduce(shape, data, op):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), max_size=rank,
                              unique_by=lambda k: k % rank))
    keep = int(data.draw(st.booleans()))
    x = arrays(shape, 11)
    if axes or data.draw(st.booleans()):
        check(op, [x, np.array(axes, np.int64)], {"keepdims": keep}, 18)
    else:
        check(op, [x], {"keepdims": keep}, 18)


@SETTINGS
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_gather_and_transpose(shape, data):
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1))
    dim = shape[axis]
    index_shape = data.draw(st.lists(st.integers(1, 3), max_size=2))
    index = np.array(data.draw(st.lists(st.integers(-dim, dim - 1),
                                        min_size=int(np.prod(index_shape)),
                                        max_size=int(np.prod(index_shape)))),
                     np.int64).reshape(index_shape)
    x = arrays(shape, 12)
    check("Gather", [x, index], {"axis": axis}, 13)
    perm = data.draw(st.permutations(range(rank)))
    check("Transpose", [x], {"perm": list(perm)}, 13)


@SETTINGS
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data(),
       st.sampled_from(["Softmax", "LogSoftmax"]), st.sampled_from([11, 13]))
def test_softmax_axes(shape, data, op, opset):
    rank = len(shape)
    check(op, [arrays(shape, 13) * 4], {"axis": data.draw(st.integers(-rank, rank - 1))},
          opset)


# -- hostile nodes: any attributes, any inputs --------------------------------------------
_ATTR_NAMES = ["axis", "axes", "perm", "to", "mode", "pads", "strides", "kernel_shape", "group",
               "dilations", "split", "starts", "ends", "keepdims", "alpha", "beta", "value",
               "epsilon", "transA", "auto_pad", "num_outputs", "equation", "k", "batch_dims"]
_ATTR_VALUES = st.one_of(
    st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.lists(st.integers(-5, 2**33), max_size=5), st.sampled_from(["", "x", "SAME_UPPER",
                                                                   "reflect", "ij->ji"]))
_DTYPES = [np.float32, np.float64, np.int64, np.int32, np.bool_, np.uint8, np.float16]


@st.composite
def _hostile_node(draw):
    """An op with an input count it accepts (or one more), random inputs and attributes."""
    op = draw(st.sampled_from(sorted(NATIVE_OPS)))
    lo, hi = _SPECS[op].inputs
    inputs = []
    for _ in range(draw(st.integers(lo, min(hi, lo + 2)))):
        if draw(st.integers(0, 9)) == 0:
            inputs.append(None)
            continue
        shape = draw(st.lists(st.integers(0, 3), max_size=4))
        values = np.random.default_rng(draw(st.integers(0, 9))).integers(-3, 4, size=shape)
        inputs.append(np.asarray(values).astype(draw(st.sampled_from(_DTYPES))))
    attrs = draw(st.dictionaries(st.sampled_from(_ATTR_NAMES), _ATTR_VALUES, max_size=2))
    lo, hi = _SPECS[op].outputs
    return op, attrs, inputs, draw(st.integers(7, 22)), draw(st.integers(lo, min(hi, 3)))


def _outputs_or_refusal(node, opset, inputs):
    """The op's outputs, or None when it refused: ModelError at plan time, or a ValueError
    (not a ModelError) naming the node at call time. Anything else fails the test."""
    try:
        f = native_op(node, opset)
    except ModelError:
        return None
    with np.errstate(all="ignore"):
        try:
            return f(*inputs)
        except ValueError as e:
            assert not isinstance(e, ModelError) and node.name in str(e)
            return None


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_hostile_node())
def test_hostile_nodes_end_in_model_or_value_errors(case):
    op, attrs, inputs, opset, n_out = case
    try:
        node = helper.make_node(op, [f"i{k}" if x is not None else "" for k, x in
                                     enumerate(inputs)], [f"o{k}" for k in range(n_out)],
                                name="hostile", **attrs)
    except (ValueError, TypeError):
        return   # onnx.helper itself refuses the attribute
    outs = _outputs_or_refusal(node, opset, inputs)
    assert outs is None or (isinstance(outs, tuple)
                            and all(type(y) is np.ndarray for y in outs))


def test_scalar_inputs_give_arrays():
    """0-d inputs: NumPy turns many 0-d results into scalars; every op returns ndarrays."""
    for op in sorted(NATIVE_OPS):
        lo, hi = _SPECS[op].inputs
        for n in range(lo, min(hi, lo + 2) + 1):
            for dtypes in [(np.float32,), (np.float64,), (np.int64,), (np.bool_,),
                           (np.int32, np.float32), (np.float32, np.int64)]:
                inputs = [np.array(1, dtype=dtypes[k % len(dtypes)]) for k in range(n)]
                for opset in (11, 13, 18, 22):
                    node = helper.make_node(op, [f"i{k}" for k in range(n)], ["o0", "o1"][
                        :max(1, _SPECS[op].outputs[0])], name="scalar")
                    outs = _outputs_or_refusal(node, opset, inputs)
                    assert outs is None or all(type(y) is np.ndarray for y in outs), (
                        op, dtypes, opset)
