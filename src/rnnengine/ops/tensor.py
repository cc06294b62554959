"""Operators that make, convert, cut or join tensors: Constant, ConstantOfShape, Cast, CastLike,
QuantizeLinear, DequantizeLinear, Concat, Split, Slice, Gather, Tile, Pad, Range.

Slice, Split and Gather with a scalar index return views of their input.
"""
from __future__ import annotations

import math

import numpy as np

from ._common import (MAX_ELEMENTS, check_size, frozen, ints_of, norm_axis, registrar, same_dtype,
                      scalar_of)

OPS = {}
op = registrar(OPS)

_CONSTANT_KINDS = ("value", "value_float", "value_floats", "value_int", "value_ints")


@op("Constant", inputs=(0, 0))
def _constant(a, opset, n_in, n_out):
    given = [k for k in a.raw if k in _CONSTANT_KINDS or k.startswith(("value_", "sparse"))]
    if len(given) != 1:
        a.fail(f"needs exactly one value attribute; got {given or 'none'}")
    kind = given[0]
    if kind not in _CONSTANT_KINDS:
        a.fail(f"attribute {kind!r} is not handled natively")
    if kind == "value":
        value = a.tensor("value")
    elif kind == "value_float":
        value = np.array(a.float(kind), dtype=np.float32)
    elif kind == "value_floats":
        value = np.array(a.floats(kind), dtype=np.float32)
    elif kind == "value_int":
        value = np.array(a.int(kind), dtype=np.int64)
    else:
        value = np.array(a.ints(kind), dtype=np.int64)
    out = (frozen(value),)

    def f():
        return out
    return f


@op("ConstantOfShape")
def _constant_of_shape(a, opset, n_in, n_out):
    value = a.tensor("value")
    if value is None:
        value = np.zeros(1, dtype=np.float32)
    if value.size != 1:
        a.fail(f"attribute 'value' must hold one element; got shape {value.shape}")
    fill, dtype = value.reshape(-1)[0], value.dtype

    def f(shape):
        dims = ints_of(shape, "input")
        if any(d < 0 for d in dims):
            raise ValueError(f"shape {dims} has a negative dimension")
        check_size(dims, "the output")
        return (np.full(dims, fill, dtype=dtype),)
    return f


@op("Cast")
def _cast(a, opset, n_in, n_out):
    to = a.dtype("to")
    if opset >= 19:
        a.flag("saturate", 1)   # only affects float8 targets, which are not handled here

    def f(x):
        return (x.astype(to, copy=False),)
    return f


@op("CastLike", inputs=(2, 2))
def _cast_like(a, opset, n_in, n_out):
    if opset >= 19:
        a.flag("saturate", 1)   # only affects float8 targets, which are not handled here

    def f(x, like):
        return (x.astype(like.dtype, copy=False),)
    return f


def _per_axis(x, v, axis, what):
    """A scale or zero point: a scalar, or 1-D along ``axis`` (reshaped to broadcast)."""
    if v.size == 1:
        return v.reshape(())
    k = norm_axis(axis, x.ndim)
    if v.shape != (x.shape[k],):
        raise ValueError(f"{what} must be a scalar or of shape ({x.shape[k]},); got {v.shape}")
    return v.reshape((-1,) + (1,) * (x.ndim - 1 - k))


def _quant_attrs(a, opset):
    axis = a.int("axis", 1) if opset >= 13 else 1
    if opset >= 21 and a.int("block_size", 0):
        a.fail("blocked quantization (block_size) is not handled natively")
    return axis


@op("DequantizeLinear", inputs=(2, 3))
def _dequantize(a, opset, n_in, n_out):
    axis = _quant_attrs(a, opset)

    def f(x, scale, zero=None):
        if x.dtype.kind not in "iu":
            raise ValueError(f"x must be an integer tensor; got {x.dtype}")
        s = _per_axis(x, scale, axis, "x_scale")
        y = x.astype(scale.dtype)
        if zero is not None:
            y -= _per_axis(x, zero, axis, "x_zero_point").astype(scale.dtype)
        y *= s
        return (y,)
    return f


@op("QuantizeLinear", inputs=(2, 3))
def _quantize(a, opset, n_in, n_out):
    axis = _quant_attrs(a, opset)
    if opset >= 19:
        a.flag("saturate", 1)   # only affects float8 outputs, which are not handled here
    if opset >= 21 and a.has("output_dtype") and a.int("output_dtype"):
        a.fail("output_dtype is not handled natively; give a zero point instead")

    def f(x, scale, zero=None):
        same_dtype(x, scale, "y_scale")
        dtype = np.dtype(np.uint8) if zero is None else zero.dtype
        if dtype.kind not in "iu" or dtype.itemsize > 2:
            raise ValueError(f"the zero point must be (u)int8 or (u)int16; got {dtype}")
        # Round half to even, add the zero point, saturate to the integer range.
        y = np.rint(x / _per_axis(x, scale, axis, "y_scale"))
        if zero is not None:
            y += _per_axis(x, zero, axis, "y_zero_point")
        info = np.iinfo(dtype)
        return (np.asarray(np.clip(y, info.min, info.max).astype(dtype)),)
    return f


@op("Concat", inputs=(1, 2**31))
def _concat(a, opset, n_in, n_out):
    axis = a.int("axis", required=True)

    def f(*xs):
        dtype = xs[0].dtype
        for i, x in enumerate(xs):
            if x.dtype != dtype:
                raise ValueError(f"input {i} is {x.dtype}; input 0 is {dtype}")
        if sum(x.size for x in xs) > MAX_ELEMENTS:   # a Loop doubling a carried value
            k = norm_axis(axis, xs[0].ndim)
            shape = list(xs[0].shape)
            shape[k] = sum(x.shape[k] for x in xs)
            check_size(shape, "the output", dtype.itemsize)
        return (np.concatenate(xs, axis=norm_axis(axis, xs[0].ndim)),)
    return f


def _pieces(x, axis, sizes):
    lead = (slice(None),) * axis
    out, start = [], 0
    for s in sizes:
        out.append(x[lead + (slice(start, start + s),)])
        start += s
    return tuple(out)


@op("Split", inputs=(1, 2), outputs=(1, 2**31))
def _split(a, opset, n_in, n_out):
    a.inputs_before(opset, 13, n_in, 1)
    axis = a.int("axis", 0)
    fixed = a.ints("split", None) if opset < 13 else None
    parts = a.int("num_outputs", None) if opset >= 18 else None
    if parts is not None and parts != n_out:
        a.fail(f"num_outputs is {parts} but the node has {n_out} outputs")
    if fixed is not None and len(fixed) != n_out:
        a.fail(f"split has {len(fixed)} entries but the node has {n_out} outputs")
    if opset >= 18 and parts is None and n_in < 2:
        a.fail("from opset 18 either the split input or num_outputs is required")

    def f(x, split=None):
        k = norm_axis(axis, x.ndim)
        dim = x.shape[k]
        sizes = fixed if split is None else ints_of(split, "split")
        if sizes is None:
            if parts is not None:   # opset 18: the last piece may be smaller
                chunk = -(-dim // n_out)
                sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(n_out)]
            elif dim % n_out:
                raise ValueError(f"axis {k} of size {dim} does not split into {n_out} "
                                 "equal parts")
            else:
                sizes = [dim // n_out] * n_out
        if len(sizes) != n_out or sum(sizes) != dim or min(sizes) < 0:
            raise ValueError(f"split sizes {sizes} do not cut axis {k} of size {dim} into "
                             f"{n_out} outputs")
        return _pieces(x, k, sizes)
    return f


def _sliced(x, starts, ends, axes, steps):
    n, nd = len(starts), x.ndim
    if not n == len(ends) == len(axes) == len(steps) or n > nd:
        raise ValueError(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} "
                         "differ in length")
    index = [slice(None)] * nd
    for i in range(n):
        k, st = axes[i], steps[i]
        if not -nd <= k < nd or st == 0:
            raise ValueError(f"axis {k} (rank {nd}) with step {st} cannot be sliced")
        s = starts[i]
        if st < 0 and s < -x.shape[k]:
            s = 0   # ONNX clamps it to the first element; Python would make the slice empty
        # Otherwise Python's slice clamps out-of-range starts and ends as ONNX does.
        index[k] = slice(s, ends[i], st)
    return x[tuple(index)]


_AXES = [list(range(n)) for n in range(65)]   # defaults, indexed by the number of starts
_ONES = [[1] * n for n in range(65)]


@op("Slice", inputs=(1, 5))
def _slice(a, opset, n_in, n_out):
    a.inputs_before(opset, 10, n_in, 1)
    if opset < 10:
        starts, ends = a.ints("starts", required=True), a.ints("ends", required=True)
        axes = a.ints("axes", None) or list(range(len(starts)))
        steps = [1] * len(starts)

        def f(x):
            return (_sliced(x, starts, ends, axes, steps),)
        return f
    if n_in < 3:
        a.fail(f"from opset 10 Slice needs the starts and ends inputs; got {n_in} inputs")

    def g(x, starts, ends, axes=None, steps=None):
        s, e = ints_of(starts, "starts"), ints_of(ends, "ends")
        k = _AXES[len(s)] if axes is None else ints_of(axes, "axes")
        st = _ONES[len(s)] if steps is None else ints_of(steps, "steps")
        return (_sliced(x, s, e, k, st),)
    return g


@op("Gather", inputs=(2, 2))
def _gather(a, opset, n_in, n_out):
    axis = a.int("axis", 0)

    def f(x, indices):
        if indices.dtype.kind not in "iu":
            raise ValueError(f"indices must be int32 or int64; got {indices.dtype}")
        k = norm_axis(axis, x.ndim)
        if indices.ndim == 0:
            # A view; the trailing Ellipsis keeps a 0-d result an ndarray.
            return (x[(slice(None),) * k + (int(indices), Ellipsis)],)
        if indices.size * (x.size // max(x.shape[k], 1)) > MAX_ELEMENTS:
            check_size(x.shape[:k] + indices.shape + x.shape[k + 1:], "the output",
                       x.itemsize)
        return (x.take(indices, axis=k),)   # the method: 1 us less than np.take
    return f


@op("Tile", inputs=(2, 2))
def _tile(a, opset, n_in, n_out):
    def f(x, repeats):
        reps = ints_of(repeats, "repeats")
        if len(reps) != x.ndim or min(reps, default=0) < 0:
            raise ValueError(f"repeats {reps} must be {x.ndim} non-negative counts")
        check_size([d * k for d, k in zip(x.shape, reps)], "the output")
        return (np.tile(x, reps),)
    return f


def _pad_index(dim, begin, end, mode):
    """Source positions along one axis for reflect, edge or wrap padding (one np.take)."""
    p = np.arange(-begin, dim + end)
    if mode == "edge":
        return np.clip(p, 0, dim - 1)
    if mode == "wrap":
        return p % dim
    if dim < 2 or max(begin, end) > dim - 1:   # ONNX Runtime refuses these too
        raise ValueError(f"reflect padding ({begin}, {end}) needs an axis longer than both; "
                         f"got {dim}")
    return np.where(p < 0, -p, np.where(p < dim, p, 2 * (dim - 1) - p))


def _padded(x, pads, axes, mode, value, cache, takes=None):
    """``x`` padded; for reflect, edge and wrap without cropping, the ``(axis, index)`` of
    each ``take`` it ran are appended to ``takes`` (a plan the caller may replay)."""
    k = len(axes)
    if len(pads) != 2 * k:
        raise ValueError(f"pads {pads} must hold {2 * k} values (begin and end per axis)")
    widths = [[0, 0] for _ in range(x.ndim)]
    for i, ax in enumerate(axes):
        widths[norm_axis(ax, x.ndim, "pad axis")] = [pads[i], pads[i + k]]
    if any(b < 0 or e < 0 for b, e in widths):   # negative pads crop
        takes = None
        x = x[tuple(slice(-b if b < 0 else 0, x.shape[i] + e if e < 0 else None)
                    for i, (b, e) in enumerate(widths))]
        widths = [[max(b, 0), max(e, 0)] for b, e in widths]
    shape = [d + b + e for d, (b, e) in zip(x.shape, widths)]
    check_size(shape, "the padded output")
    if mode == "constant":
        out = np.full(shape, value, dtype=x.dtype)
        out[tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, widths))] = x
        return out
    for i, (b, e) in enumerate(widths):
        if b or e:
            if x.shape[i] == 0:
                raise ValueError(f"cannot {mode}-pad axis {i} of size 0")
            key = (x.shape[i], b, e)
            index = cache.get(key)
            if index is None:   # the same shapes come back every streaming step
                if len(cache) > 64:
                    cache.clear()
                index = cache[key] = _pad_index(x.shape[i], b, e, mode)
            x = x.take(index, axis=i)
            if takes is not None:
                takes.append((i, index))
    return x


@op("Pad", inputs=(1, 4))
def _pad(a, opset, n_in, n_out):
    modes = ("constant", "reflect", "edge") + (("wrap",) if opset >= 19 else ())
    mode = a.choice("mode", modes, "constant")
    cache = {}
    a.inputs_before(opset, 11, n_in, 1)
    if opset < 11:
        pads, value = a.ints("pads", required=True), a.float("value", 0.0)

        def f(x):
            return (_padded(x, pads, range(x.ndim), mode, value, cache),)
        return f
    if n_in < 2:
        a.fail("from opset 11 the pads are the second input, which is missing")
    if n_in > 3 and opset < 18:
        a.fail("the axes input needs opset 18")

    plans = {}   # (x's shape, the pads' bytes) -> the takes that pad it (reflect/edge/wrap)

    def g(x, pads, value=None, axes=None):
        if axes is None and mode != "constant":
            # a streaming step pads the same shape by the same pads every time: replay
            key = (x.shape, pads.dtype.char, pads.tobytes())
            takes = plans.get(key)
            if takes is not None:
                for i, index in takes:
                    x = x.take(index, axis=i)
                return (x,)
        fill = 0 if value is None or value.size == 0 else scalar_of(value, "constant_value")
        k = range(x.ndim) if axes is None else ints_of(axes, "axes")
        takes = [] if axes is None and mode != "constant" else None
        y = _padded(x, ints_of(pads, "pads"), k, mode, fill, cache, takes)
        if takes is not None and takes:
            if len(plans) > 64:
                plans.clear()
            plans[key] = takes
        return (y,)
    return g


@op("Range", inputs=(3, 3))
def _range(a, opset, n_in, n_out):
    def f(start, limit, delta):
        dtype = start.dtype
        for v, what in ((start, "start"), (limit, "limit"), (delta, "delta")):
            if v.size != 1 or v.dtype != dtype:
                raise ValueError(f"{what} must be a single {dtype} value; got "
                                 f"{v.dtype}{v.shape}")
        s, lim, d = (v.reshape(-1)[0].item() for v in (start, limit, delta))
        if d == 0:
            raise ValueError("delta is 0")
        n = max(math.ceil((lim - s) / d), 0)
        check_size([n], "the range")
        return ((s + np.arange(n, dtype=np.float64 if dtype.kind == "f" else np.int64)
                 * d).astype(dtype),)
    return f
