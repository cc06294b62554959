"""Shape-only glue compiled to NumPy views at plan time.

Exporters surround recurrent nodes with Slice/Squeeze/Unsqueeze/Transpose/Reshape/Gather
nodes whose every input but the data is a constant (state unpacking, layer joins). Run as
operators, each decodes its constant inputs again and pays a guarded call (~2 us); here each
becomes a closure that only indexes or reshapes the data (a view, no copy), with the index or
shape computed once per input rank or shape and cached. ONNX's checks are kept (a squeezed
dim must be 1, an index in range, a Reshape target that fits); a failed check raises
ValueError naming the node. ``view_op`` returns None for anything else (the general
operator runs then).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..onnx.fold import attrs, node_label

_OPS = ("Identity", "Squeeze", "Unsqueeze", "Transpose", "Reshape", "Slice", "Gather")


def _ints(value) -> Optional[list]:
    if value is None:
        return None
    a = np.asarray(value)
    if a.dtype.kind not in "iu" or a.ndim > 1:
        return None
    return [int(v) for v in a.reshape(-1)]


def view_op(node, const: Callable, opset: int):
    """-> (f(x) -> (y,), name of the data input) or None. ``const(name)`` gives a folded
    constant or None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS or len(node.output) != 1:
        return None
    inputs = [n for n in node.input]
    if not inputs or not inputs[0] or any(n and const(n) is None for n in inputs[1:]):
        return None
    a = attrs(node)
    label = f"{node.op_type} node {node_label(node)!r}"
    make = globals()["_" + node.op_type.lower()]
    raw = [const(n) if n else None for n in inputs[1:]]
    fn = make(a, [_ints(v) for v in raw], raw, opset, label)
    return None if fn is None else (fn, inputs[0])


def _cached(compute: Callable, apply: Callable, key=lambda x: x.shape):
    cache = {}

    def f(x):
        k = key(x)
        plan = cache.get(k)
        if plan is None:
            if len(cache) > 64:      # a stream of ever-new shapes: keep the cache small
                cache.clear()
            plan = cache[k] = compute(x)
        return (apply(x, plan),)
    return f


def _identity(a, consts, raw, opset, label):
    if a:
        return None
    return lambda x: (x,)


def _axes_of(a, consts):
    if "axes" in a:
        return list(a["axes"])
    return consts[0] if consts else None


def _norm(axes, rank, label):
    out = []
    for ax in axes:
        if not -rank <= ax < rank:
            raise ValueError(f"{label}: axis {ax} is out of range for rank {rank}")
        out.append(ax % rank)
    if len(set(out)) != len(out):
        raise ValueError(f"{label}: repeated axes {axes}")
    return out


def _squeeze(a, consts, raw, opset, label):
    axes = _axes_of(a, consts)
    if axes is None or set(a) - {"axes"}:
        return None

    def compute(x):
        drop = _norm(axes, x.ndim, label)
        if any(x.shape[k] != 1 for k in drop):
            raise ValueError(f"{label}: cannot squeeze axes {axes} of shape {x.shape}")
        return tuple(d for k, d in enumerate(x.shape) if k not in drop)
    return _cached(compute, lambda x, shape: x.reshape(shape))


def _unsqueeze(a, consts, raw, opset, label):
    axes = _axes_of(a, consts)
    if axes is None or set(a) - {"axes"}:
        return None

    def compute(x):
        rank = x.ndim + len(axes)
        where = _norm(axes, rank, label)
        shape, it = [], iter(x.shape)
        for k in range(rank):
            shape.append(1 if k in where else next(it))
        return tuple(shape)
    return _cached(compute, lambda x, shape: x.reshape(shape))


def _transpose(a, consts, raw, opset, label):
    perm = a.get("perm")
    if set(a) - {"perm"}:
        return None
    perm = tuple(perm) if perm else None

    def f(x):
        if perm is not None and sorted(perm) != list(range(x.ndim)):
            raise ValueError(f"{label}: perm {list(perm)} does not fit rank {x.ndim}")
        return (x.transpose(perm),)
    return f


def _reshape(a, consts, raw, opset, label):
    target = consts[0] if consts else None
    if target is None or set(a) - {"allowzero"}:
        return None
    allowzero = bool(a.get("allowzero", 0))

    def compute(x):
        shape = [x.shape[k] if (d == 0 and not allowzero and k < x.ndim) else d
                 for k, d in enumerate(target)]
        if shape.count(-1) > 1 or any(d < -1 for d in shape):
            raise ValueError(f"{label}: bad target shape {target}")
        known = int(np.prod([d for d in shape if d != -1]))
        if -1 in shape:
            if known == 0 or x.size % known:
                raise ValueError(f"{label}: cannot reshape {x.shape} to {target}")
            shape[shape.index(-1)] = x.size // known
        elif known != x.size:
            raise ValueError(f"{label}: cannot reshape {x.shape} to {target}")
        return tuple(shape)
    return _cached(compute, lambda x, shape: x.reshape(shape))


def _slice(a, consts, raw, opset, label):
    if opset < 10:
        if set(a) - {"starts", "ends", "axes"} or "starts" not in a or "ends" not in a:
            return None
        starts, ends = list(a["starts"]), list(a["ends"])
        axes, steps = a.get("axes"), None
    else:
        if a or len(consts) < 2 or consts[0] is None or consts[1] is None:
            return None
        starts, ends = consts[0], consts[1]
        axes = consts[2] if len(consts) > 2 else None
        steps = consts[3] if len(consts) > 3 else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        return None    # the general operator reports it

    def compute(x):
        index = [slice(None)] * x.ndim
        for s, e, k, st in zip(starts, ends, _norm(axes, x.ndim, label), steps):
            index[k] = slice(s, e, st)    # Python clamps out-of-range bounds as ONNX does
        return tuple(index)
    return _cached(compute, lambda x, index: x[index], key=lambda x: x.ndim)


def _gather(a, consts, raw, opset, label):
    index = consts[0] if consts else None
    if index is None or set(a) - {"axis"} or len(index) != 1:
        return None
    axis, i = int(a.get("axis", 0)), index[0]
    # a 0-d index drops the axis (the Ellipsis keeps a 0-d result an array); [i] keeps it
    scalar = np.ndim(raw[0]) == 0

    def compute(x):
        k = _norm([axis], x.ndim, label)[0]
        n = x.shape[k]
        if not -n <= i < n:
            raise ValueError(f"{label}: index {i} is out of range for axis {k} of size {n}")
        j = i % n
        return (slice(None),) * k + ((j, Ellipsis) if scalar else (slice(j, j + 1),))
    return _cached(compute, lambda x, index: x[index], key=lambda x: x.shape)
