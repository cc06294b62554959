"""Network layers: MatMul, Gemm, Softmax, LogSoftmax, LayerNormalization, BatchNormalization
and Dropout (inference only). Conv is in conv.py.

Products go through ``np.matmul`` (BLAS for float32/float64); the work after a product is done
in place on the buffer the product allocated.
"""
from __future__ import annotations

import math

import numpy as np

from ._common import ARRAY, MAX_ELEMENTS, check_size, norm_axis, registrar, same_dtype

OPS = {}
op = registrar(OPS)


def _matmul_shape(a: tuple, b: tuple) -> tuple:
    if not a or not b:
        raise ValueError(f"MatMul needs operands of rank >= 1; got {a} and {b}")
    rows = a[-2:-1] if len(a) > 1 else ()
    cols = b[-1:] if len(b) > 1 else ()
    return np.broadcast_shapes(a[:-2], b[:-2]) + rows + cols


@op("MatMul", inputs=(2, 2))
def _matmul(a, opset, n_in, n_out):
    def f(x, w):
        if x.dtype != w.dtype:
            same_dtype(x, w)
        if x.size * w.size > MAX_ELEMENTS:   # a bound on the output: the exact size then
            check_size(_matmul_shape(x.shape, w.shape), "the product", x.itemsize)
        return (np.matmul(x, w, out=ARRAY),)
    return f


def gemm_attrs(a):
    """(alpha, beta, transA, transB) of a Gemm node."""
    return a.float("alpha", 1.0), a.float("beta", 1.0), a.flag("transA"), a.flag("transB")


def gemm(x, w, c, alpha, beta, ta, tb):
    """alpha * A' @ B' + beta * C in a fresh buffer; C must broadcast to the product (ONNX's
    unidirectional broadcast), since it is added in place."""
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"A and B must be 2-D; got shapes {x.shape} and {w.shape}")
    same_dtype(x, w)
    y = np.matmul(x.T if ta else x, w.T if tb else w)
    if alpha != 1.0:
        y *= alpha
    if c is not None and beta != 0.0:
        same_dtype(x, c, "C")
        y += c if beta == 1.0 else beta * c
    return y


@op("Gemm", inputs=(2, 3))
def _gemm(a, opset, n_in, n_out):
    params = gemm_attrs(a)

    def f(x, w, c=None):
        return (gemm(x, w, c, *params),)
    return f


# The ufunc reductions (np.add.reduce) skip the Python layer of np.sum / np.mean, a
# microsecond per call on streaming-sized rows.

def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax along ``axis`` into a fresh array (the max subtraction allocates it)."""
    if x.size == 0:         # nothing to normalise (and no max of an empty axis)
        return x.copy()
    y = np.subtract(x, x.max(axis=axis, keepdims=True), out=ARRAY)
    np.exp(y, out=y)
    y /= np.add.reduce(y, axis=axis, keepdims=True)
    return y


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    if x.size == 0:
        return x.copy()
    y = np.subtract(x, x.max(axis=axis, keepdims=True), out=ARRAY)
    y -= np.log(np.add.reduce(np.exp(y), axis=axis, keepdims=True))
    return y


@op("Softmax", "LogSoftmax")
def _softmax(a, opset, n_in, n_out):
    fn = softmax if a.node.op_type == "Softmax" else log_softmax
    if opset >= 13:
        axis = a.int("axis", -1)

        def f(x):
            if x.dtype.kind != "f":
                raise ValueError(f"input must be floating-point; got {x.dtype}")
            return (fn(x, norm_axis(axis, x.ndim)),)
        return f
    axis = a.int("axis", 1)

    def g(x):
        # Before opset 13 the input is seen as 2-D: dims before ``axis`` by the rest.
        if x.dtype.kind != "f":
            raise ValueError(f"input must be floating-point; got {x.dtype}")
        k = norm_axis(axis, x.ndim) if x.ndim else 0
        return (fn(x.reshape(math.prod(x.shape[:k]), -1), 1).reshape(x.shape),)
    return g


@op("LayerNormalization", inputs=(2, 3), outputs=(1, 3))
def _layer_norm(a, opset, n_in, n_out):
    axis, eps = a.int("axis", -1), a.float("epsilon", 1e-5)
    stash = a.int("stash_type", 1)
    if stash not in (1, 11):
        a.fail(f"stash_type must be 1 (float) or 11 (double); got {stash}")

    def f(x, scale, bias=None):
        if x.dtype.kind != "f":
            raise ValueError(f"X must be floating-point; got {x.dtype}")
        k = norm_axis(axis, x.ndim)
        axes = tuple(range(k, x.ndim))
        count = math.prod(x.shape[k:])   # math.prod: np.prod costs ~3 us on a tuple
        # Everything in the stash type (float32 or float64); Y is cast once at the end.
        xs = x.astype(np.float64 if stash == 11 else np.float32, copy=False)
        mean = np.add.reduce(xs, axis=axes, keepdims=True)
        mean /= count
        y = xs - mean
        inv = np.add.reduce(np.square(y), axis=axes, keepdims=True)
        inv /= count
        inv += eps
        np.power(inv, -0.5, out=inv)   # one pass instead of sqrt then reciprocal
        y *= inv
        y *= scale
        if bias is not None:
            y += bias
        y = y.astype(x.dtype, copy=False)
        return (y, mean, inv)[:n_out]
    return f


@op("InstanceNormalization", inputs=(3, 3))
def _instance_norm(a, opset, n_in, n_out):
    eps = a.float("epsilon", 1e-5)

    def f(x, scale, bias):
        if x.ndim < 3 or x.dtype.kind != "f":
            raise ValueError(f"X must be floating-point (N, C, spatial...); got "
                             f"{x.dtype}{x.shape}")
        for v, what in ((scale, "scale"), (bias, "B")):
            if v.shape != (x.shape[1],):
                raise ValueError(f"{what} must have shape ({x.shape[1]},); got {v.shape}")
        axes = tuple(range(2, x.ndim))
        y = x - x.mean(axis=axes, keepdims=True)
        inv = np.mean(np.square(y), axis=axes, keepdims=True)
        inv += eps
        y /= np.sqrt(inv, out=inv)
        shape = (-1,) + (1,) * (x.ndim - 2)
        y *= scale.reshape(shape)
        y += bias.reshape(shape)
        return (y,)
    return f


@op("BatchNormalization", inputs=(5, 5), outputs=(1, 1))
def _batch_norm(a, opset, n_in, n_out):
    eps = a.float("epsilon", 1e-5)
    a.float("momentum", 0.9)   # only used in training
    if opset < 9 and a.int("spatial", 1) != 1:
        a.fail("spatial=0 is not handled natively")
    if opset >= 14 and a.flag("training_mode"):
        a.fail("training_mode=1 is not handled (inference only)")

    def f(x, scale, bias, mean, var):
        for v, what in ((scale, "scale"), (bias, "B"), (mean, "input_mean"),
                        (var, "input_var")):
            if v.shape != (x.shape[1],):
                raise ValueError(f"{what} must have shape ({x.shape[1]},); got {v.shape}")
        shape = (-1,) + (1,) * (x.ndim - 2)
        k = scale / np.sqrt(var + eps)
        y = x * k.reshape(shape).astype(x.dtype, copy=False)
        y += (bias - mean * k).reshape(shape).astype(x.dtype, copy=False)
        return (y,)
    return f


@op("Dropout", inputs=(1, 3), outputs=(1, 2))
def _dropout(a, opset, n_in, n_out):
    a.inputs_before(opset, 12, n_in, 1)
    if opset < 12:
        a.float("ratio", 0.5)
    else:
        a.int("seed", 0)
    # ONNX Runtime's inference mask: all true from opset 12; before, an all-zero mask
    # (its opset 7-11 kernel is an identity that memsets the mask).
    mask_value = opset >= 12

    def f(x, ratio=None, training=None):
        if training is not None and training.size == 1 and bool(training.reshape(-1)[0]):
            raise ValueError("training_mode is true; only inference is handled natively")
        if n_out == 1:
            return (x,)
        mask_type = np.bool_ if opset >= 10 else x.dtype
        return (x, np.full(x.shape, mask_value, dtype=mask_type))
    return f
