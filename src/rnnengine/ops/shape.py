"""Operators that only look at or rearrange shapes: Shape, Size, Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Expand, Identity.

They return NumPy views of their input wherever NumPy can (Expand's is read-only, with zero
strides): no data moves on a streaming step. A consumer must not write into an op's output
unless it allocated it.
"""
from __future__ import annotations

import math

import numpy as np

from ._common import check_size, ints_of, norm_axis, registrar

OPS = {}
op = registrar(OPS)


@op("Identity")
def _identity(a, opset, n_in, n_out):
    def f(x):
        return (x,)
    return f


@op("Shape")
def _shape(a, opset, n_in, n_out):
    start = a.int("start", 0) if opset >= 15 else 0
    end = a.int("end", None) if opset >= 15 else None

    def f(x):
        # Python slicing clamps start and end exactly as ONNX specifies.
        return (np.array(x.shape[start:end], dtype=np.int64),)
    return f


@op("Size")
def _size(a, opset, n_in, n_out):
    def f(x):
        return (np.array(x.size, dtype=np.int64),)
    return f


@op("Reshape", inputs=(2, 2))
def _reshape(a, opset, n_in, n_out):
    allowzero = a.flag("allowzero") if opset >= 14 else 0

    def f(x, shape):
        dims = ints_of(shape, "shape")
        if min(dims, default=0) < -1 or dims.count(-1) > 1:
            # NumPy reads any negative dimension as "infer it"; ONNX allows one -1 only.
            raise ValueError(f"shape {dims} is not a valid target: dimensions must be >= 0, "
                             "or -1 (at most one)")
        if not allowzero and 0 in dims:
            # 0 copies the input's dimension at that position.
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return (x.reshape(dims),)
    return f


@op("Flatten")
def _flatten(a, opset, n_in, n_out):
    axis = a.int("axis", 1)

    def f(x):
        k = axis + x.ndim if axis < 0 else axis
        if not 0 <= k <= x.ndim:
            raise ValueError(f"axis {axis} is out of range for rank {x.ndim}")
        # math.prod, not np.prod: ~0.1 us instead of ~3 us on a shape tuple.
        return (x.reshape(math.prod(x.shape[:k]), math.prod(x.shape[k:])),)
    return f


def _squeeze_axes(x, axes):
    axes = tuple(norm_axis(i, x.ndim) for i in axes)
    for i in axes:
        if x.shape[i] != 1:
            raise ValueError(f"cannot squeeze axis {i} of shape {x.shape}: its size is not 1")
    return axes


@op("Squeeze", inputs=(1, 2))
def _squeeze(a, opset, n_in, n_out):
    a.inputs_before(opset, 13, n_in, 1)
    if opset < 13:
        fixed = a.ints("axes", None)

        def f(x):
            if fixed is None:
                return (x.squeeze(),)
            return (x.squeeze(_squeeze_axes(x, fixed)),)
        return f

    def g(x, axes=None):
        k = None if axes is None else ints_of(axes, "axes")
        if not k:   # absent or empty (ONNX Runtime treats both alike): every unit dim
            return (x.squeeze(),)
        return (x.squeeze(_squeeze_axes(x, k)),)
    return g


def _unsqueezed(x, axes):
    # A reshape with the new unit dims inserted: a view, and ~7x cheaper than expand_dims.
    rank = x.ndim + len(axes)
    norm = sorted(norm_axis(i, rank) for i in axes)
    if len(set(norm)) != len(norm):
        raise ValueError(f"axes {axes} repeat an axis")
    shape = list(x.shape)
    for i in norm:
        shape.insert(i, 1)
    return x.reshape(shape)


@op("Unsqueeze", inputs=(1, 2))
def _unsqueeze(a, opset, n_in, n_out):
    a.inputs_before(opset, 13, n_in, 1)
    if opset < 13:
        axes = a.ints("axes", required=True)

        def f(x):
            return (_unsqueezed(x, axes),)
        return f
    if n_in != 2:
        a.fail("from opset 13 the axes are the second input, which is missing")

    def g(x, axes):
        return (_unsqueezed(x, ints_of(axes, "axes")),)
    return g


@op("Transpose")
def _transpose(a, opset, n_in, n_out):
    perm = a.ints("perm", None)
    if perm is not None and sorted(perm) != list(range(len(perm))):
        a.fail(f"perm {perm} is not a permutation of 0..{len(perm) - 1}")

    def f(x):
        if perm is not None and len(perm) != x.ndim:
            raise ValueError(f"perm {perm} does not fit rank {x.ndim}")
        return (x.transpose(perm),)
    return f


@op("Expand", inputs=(2, 2))
def _expand(a, opset, n_in, n_out):
    def f(x, shape):
        # Bidirectional: a 1 in ``shape`` keeps the input's dimension.
        out = np.broadcast_shapes(x.shape, tuple(ints_of(shape, "shape")))
        # A view, but every consumer (and the caller's copy of a graph output) allocates it.
        check_size(out, "the expanded output", x.itemsize)
        return (np.broadcast_to(x, out),)
    return f
