"""Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceSumSquare,
ReduceL1, ReduceL2, ReduceLogSumExp, ArgMax, ArgMin.

The axes are an attribute before the opset where each op takes them as an input (13 for
ReduceSum, 18 for the others); with the input, empty axes reduce everything unless
``noop_with_empty_axes`` is set. Results keep the input's dtype, as ONNX Runtime's do.
"""
from __future__ import annotations

import math

import numpy as np

from ._common import ints_of, norm_axis, registrar

OPS = {}
op = registrar(OPS)


# Ufunc reductions (np.add.reduce, ...) rather than np.sum / np.mean: the latter add a
# Python layer that costs more than the arithmetic on streaming-sized tensors.

def _mean(x, axis, keepdims):
    count = x.size if axis is None else math.prod(x.shape[k] for k in axis)
    return np.add.reduce(x, axis=axis, keepdims=keepdims) / count


def _l1(x, axis, keepdims):
    return np.add.reduce(np.abs(x), axis=axis, keepdims=keepdims)


def _l2(x, axis, keepdims):
    return np.sqrt(np.add.reduce(np.square(x), axis=axis, keepdims=keepdims))


def _sum_square(x, axis, keepdims):
    return np.add.reduce(np.square(x), axis=axis, keepdims=keepdims)


def _log_sum_exp(x, axis, keepdims):
    top = np.maximum.reduce(x, axis=axis, keepdims=True)
    s = np.log(np.add.reduce(np.exp(x - top), axis=axis, keepdims=True)) + top
    return s if keepdims else np.squeeze(s, axis=axis)


# With noop_with_empty_axes and no axes, ONNX Runtime still applies the elementwise part.
_NOOP = {"ReduceSumSquare": np.square, "ReduceL1": np.abs, "ReduceL2": np.abs}

_REDUCE = {"ReduceMean": _mean, "ReduceSum": np.add.reduce, "ReduceMax": np.maximum.reduce,
           "ReduceMin": np.minimum.reduce, "ReduceProd": np.multiply.reduce,
           "ReduceSumSquare": _sum_square,
           "ReduceL1": _l1, "ReduceL2": _l2, "ReduceLogSumExp": _log_sum_exp}


def _empty_value(kind, dtype):
    """What ONNX Runtime gives for a reduction over nothing: the operation's identity."""
    if kind in ("ReduceMax", "ReduceLogSumExp"):
        return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min
    if kind == "ReduceMin":
        return np.inf if dtype.kind == "f" else np.iinfo(dtype).max
    return 1 if kind == "ReduceProd" else 0


def _reducer(kind, keepdims):
    fn, keep = _REDUCE[kind], bool(keepdims)
    plain = fn if kind != "ReduceMean" else np.add.reduce
    seen = {}   # (shape, dtype, axes) -> normalised axes and divisor, for non-empty inputs

    def reduce(x, axes):
        key = (x.shape, x.dtype, tuple(axes) if axes else None)
        known = seen.get(key)
        if known is not None:   # a streaming step reduces the same shape every time
            k, count = known
            y = plain(x, axis=k, keepdims=keep)
            if count != 1:
                y = y / count
            return y if y.__class__ is np.ndarray else np.asarray(y)
        k = tuple(norm_axis(i, x.ndim) for i in axes) if axes else None
        if x.size and x.dtype.kind == "f" and kind in ("ReduceMean", "ReduceSum", "ReduceMax",
                                                       "ReduceMin"):
            # results keep x's dtype: a float ufunc reduction (and / count) already does
            if len(seen) > 64:
                seen.clear()
            seen[key] = (k, (x.size if k is None else math.prod(x.shape[i] for i in k))
                         if kind == "ReduceMean" else 1)
        if x.size == 0:
            shape = np.add.reduce(x, axis=k, keepdims=keep).shape
            return np.full(shape, _empty_value(kind, x.dtype), dtype=x.dtype)
        return np.asarray(fn(x, axis=k, keepdims=keep)).astype(x.dtype, copy=False)
    return reduce


@op(*_REDUCE, inputs=(1, 2))
def _reduce(a, opset, n_in, n_out):
    kind = a.node.op_type
    reduce = _reducer(kind, a.flag("keepdims", 1))
    if opset < (13 if kind == "ReduceSum" else 18):
        a.inputs_before(opset, 13 if kind == "ReduceSum" else 18, n_in, 1)
        axes = a.ints("axes", None)

        def f(x):
            return (reduce(x, axes),)
        return f
    noop = a.flag("noop_with_empty_axes")
    elementwise = _NOOP.get(kind)

    def g(x, axes=None):
        k = [] if axes is None else ints_of(axes, "axes")
        if not k and noop:
            return (x if elementwise is None else elementwise(x),)
        return (reduce(x, k),)
    return g


@op("ArgMax", "ArgMin")
def _arg(a, opset, n_in, n_out):
    axis, keepdims = a.int("axis", 0), a.flag("keepdims", 1)
    last = a.flag("select_last_index") if opset >= 12 else 0
    fn = np.argmax if a.node.op_type == "ArgMax" else np.argmin

    def f(x):
        k = norm_axis(axis, x.ndim)
        if last:   # the last of equal extremes: search the reversed axis
            flipped = np.flip(x, axis=k)
            i = x.shape[k] - 1 - fn(flipped, axis=k, keepdims=bool(keepdims))
        else:
            i = fn(x, axis=k, keepdims=bool(keepdims))
        return (np.asarray(i, dtype=np.int64),)
    return f
