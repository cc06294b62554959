"""A dense head as one call: MatMul or Gemm, then optionally an Add of a bias, then optionally
one activation (Relu, Sigmoid, Tanh, Softmax, LogSoftmax). The bias and the pointwise
activations work in place in the buffer the product allocates (Softmax's max subtraction
allocates once more). Run op by op, the same head allocates a temporary per op and pays a
Python round trip per op.
"""
from __future__ import annotations

import math

import numpy as np

from ..core import dense as _dense
from ._common import ARRAY, Attrs, guard, node_label, norm_axis, same_dtype
from .elementwise import sigmoid_
from .nn import gemm, gemm_attrs, log_softmax, softmax


def _relu_(y):
    return np.maximum(y, 0, out=y)


def _tanh_(y):
    return np.tanh(y, out=y)


_POINTWISE = {"Relu": _relu_, "Sigmoid": sigmoid_, "Tanh": _tanh_}


def _activation(node, opset):
    """The in-place activation for ``node``, or None when it is not one the chain fuses."""
    kind = node.op_type
    a = Attrs(node)
    if kind in _POINTWISE:
        fn = _POINTWISE[kind]
    elif kind in ("Softmax", "LogSoftmax"):
        inner = softmax if kind == "Softmax" else log_softmax
        if opset >= 13:
            axis = a.int("axis", -1)

            def fn(y):
                return inner(y, norm_axis(axis, y.ndim))
        else:
            axis = a.int("axis", 1)

            def fn(y):
                # Before opset 13: the product seen as 2-D at ``axis``.
                k = norm_axis(axis, y.ndim)
                return inner(y.reshape(math.prod(y.shape[:k]), -1), 1).reshape(y.shape)
    else:
        return None
    return None if a.unread() else fn


def _add_bias(y, b):
    if b.dtype != y.dtype:
        same_dtype(y, b, "bias")
    try:
        y += b
    except ValueError:   # the bias broadcasts to a bigger shape than the product
        y = y + b
    return y


def _matmul_chain(bias, act):
    """MatMul (+ bias) (+ activation) as one Python frame: the common streaming head, where
    every extra frame is a visible share of a few-microsecond step."""
    if bias:
        def run(x, w, b):
            if x.dtype != w.dtype:
                same_dtype(x, w)
            y = np.matmul(x, w, out=ARRAY)
            if ARRAY is None:   # old NumPy: a 1-D @ 1-D product is a scalar; act needs an array
                y = np.asarray(y)
            y = _add_bias(y, b)
            return (y if act is None else act(y),)
    else:
        def run(x, w):
            if x.dtype != w.dtype:
                same_dtype(x, w)
            y = np.matmul(x, w, out=ARRAY)
            if ARRAY is None:
                y = np.asarray(y)
            return (y if act is None else act(y),)
    return run


def _gemm_head(params, n_in, bias):
    def head(x, w, c=None, b=None):
        y = gemm(x, w, c, *params)
        return y if b is None else _add_bias(y, b)
    if n_in == 2 and bias:   # the Add's bias comes third, where Gemm's C would be
        return lambda x, w, b: head(x, w, None, b)
    return head


def _single(node):
    return node.domain in ("", "ai.onnx") and len(node.output) == 1 and node.output[0]


def fuse_chain(nodes, opset: int):
    """One callable for ``nodes`` = [MatMul | Gemm, (Add), (activation)], each node taking the
    previous one's only output; None when the nodes are not such a chain (or just one node).

    The callable takes the chain's outside inputs in the order of its ``inputs`` attribute
    (the product's inputs, then the Add's other input) and returns a 1-tuple: the last node's
    output, named by its ``outputs`` attribute. The caller checks that the intermediate values
    have no other consumer.
    """
    nodes = list(nodes)
    if not 2 <= len(nodes) <= 3 or not all(_single(n) for n in nodes):
        return None
    first = nodes[0]
    if first.op_type not in ("MatMul", "Gemm") or "" in first.input:
        return None
    n_mul = len(first.input)
    inputs = list(first.input)
    prev, rest = first.output[0], nodes[1:]
    bias = False
    if rest[0].op_type == "Add":
        add = rest.pop(0)
        if len(add.input) != 2 or add.attribute or list(add.input).count(prev) != 1:
            return None
        inputs.append(add.input[1] if add.input[0] == prev else add.input[0])
        prev, bias = add.output[0], True
    act = None
    if rest:
        node = rest.pop(0)
        act = _activation(node, opset)
        if act is None or list(node.input) != [prev] or rest:
            return None
    if first.op_type == "MatMul":
        if n_mul != 2 or first.attribute:
            return None
        run = _matmul_chain(bias, act)
    else:
        a = Attrs(first)
        params = gemm_attrs(a)
        if a.unread() or n_mul not in (2, 3):
            return None
        head = _gemm_head(params, n_mul, bias)

        def run(*xs):
            y = head(*xs)
            return (y if act is None else act(y),)

    where = "fused " + " + ".join(f"{n.op_type} {node_label(n)!r}" for n in nodes)
    fused = guard(run, where)
    fused.inputs = tuple(inputs)
    fused.outputs = (nodes[-1].output[0],)
    return fused


def compiled_head(nodes, opset: int, const):
    """The chain of ``fuse_chain`` as one C call (``_dense.DenseHead``, weights packed once)
    when its weights and biases are float32 constants (``const(name)`` -> array or None):
    a function of the product's first input alone, with ``inputs``/``outputs`` as
    ``fuse_chain``'s. Inputs the C head does not take (another dtype or rank, a Softmax not
    over the last axis) run through the NumPy chain, which also reports bad inputs.
    None when the chain is not such a head."""
    fused = fuse_chain(nodes, opset)
    if fused is None:
        return None
    consts = [const(n) for n in fused.inputs[1:]]
    if any(c is None or c.dtype != np.float32 for c in consts) or consts[0].ndim != 2:
        return None
    first, w, biases = nodes[0], consts[0], consts[1:]
    lo, hi = max([1] + [b.ndim for b in biases]), None
    if first.op_type == "Gemm":
        alpha, beta, ta, tb = gemm_attrs(Attrs(first))
        if alpha != 1.0 or ta:
            return None
        w = w.T if tb else w
        if len(first.input) == 3:
            biases[0] = biases[0] * np.float32(beta)
        lo = hi = 2
    N = w.shape[1]
    total = np.zeros(N, np.float32)
    for b in biases:
        if b.size == 1:
            total += b.reshape(-1)[0]
        elif b.shape[-1] == N and b.size == N:
            total += b.reshape(-1)
        else:       # a bias that broadcasts along more than the last axis
            return None
    act = nodes[-1].op_type if nodes[-1].op_type in _dense.ACTIVATIONS else None
    if act in ("Softmax", "LogSoftmax"):
        axis = Attrs(nodes[-1]).int("axis", -1 if opset >= 13 else 1)
        if axis < -1:             # only over the last axis: -1, or outputs of axis + 1 dims
            return None
        if axis >= 0:
            if axis + 1 < lo or (hi is not None and axis + 1 > hi):
                return None
            lo = hi = axis + 1
    head = _dense.DenseHead(w, total if biases else None, act)
    top = 32 if hi is None else hi

    def run(x):
        if x.__class__ is np.ndarray and lo <= x.ndim <= top:
            y = head(x)
            if y is not None:
                return (y,)
        return fused(x, *consts)
    run.inputs, run.outputs = fused.inputs[:1], fused.outputs
    # what the compiled stream step (stream_runner) needs to call the same C head itself
    run.dense = (w, total if biases else None, head.act, lo, top)
    return run
