"""Indexing and ordering operators: GatherElements, GatherND, ScatterElements, ScatterND,
OneHot, NonZero, TopK, CumSum, Trilu, ReverseSequence, Einsum.

Indices may be negative (counted from the end) wherever ONNX allows it; out-of-range indices
raise a ValueError naming the node, as ONNX Runtime refuses them too.
"""
from __future__ import annotations

import numpy as np

from ._common import check_size, norm_axis, registrar, same_dtype, scalar_of

OPS = {}
op = registrar(OPS)


def _indices(ix, dim, what="indices"):
    if ix.dtype.kind not in "iu":
        raise ValueError(f"{what} must be int32 or int64; got {ix.dtype}")
    if ix.size and (ix.min() < -dim or ix.max() >= dim):
        raise ValueError(f"{what} must lie in [{-dim}, {dim - 1}]; got values from "
                         f"{ix.min()} to {ix.max()}")
    return np.where(ix < 0, ix + dim, ix)


@op("GatherElements", inputs=(2, 2))
def _gather_elements(a, opset, n_in, n_out):
    axis = a.int("axis", 0)

    def f(x, ix):
        k = norm_axis(axis, x.ndim)
        if ix.ndim != x.ndim:
            raise ValueError(f"indices must have the rank of data ({x.ndim}); got {ix.ndim}")
        if any(i > d for j, (i, d) in enumerate(zip(ix.shape, x.shape)) if j != k):
            raise ValueError(f"indices {ix.shape} must not be larger than data {x.shape} "
                             f"off axis {k}")
        # the output has the indices' shape (take_along_axis would broadcast them)
        x = x[tuple(slice(None) if j == k else slice(0, i) for j, i in enumerate(ix.shape))]
        return (np.take_along_axis(x, _indices(ix, x.shape[k]), axis=k),)
    return f


_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _reduction(a, opset):
    """The ufunc that combines repeated scatter targets (opset 16+), or None to overwrite."""
    if opset < 16:
        return None
    return _REDUCTIONS.get(a.choice("reduction", ("none", *_REDUCTIONS), "none"))


def _scattered(x, where, updates, ufunc):
    y = x.copy()
    if ufunc is None:
        y[where] = updates
    else:
        ufunc.at(y, where, updates)
    return y


@op("ScatterElements", inputs=(3, 3))
def _scatter_elements(a, opset, n_in, n_out):
    axis = a.int("axis", 0)
    ufunc = _reduction(a, opset)

    def f(x, ix, updates):
        same_dtype(x, updates, "updates")
        k = norm_axis(axis, x.ndim)
        if ix.shape != updates.shape or ix.ndim != x.ndim:
            raise ValueError(f"indices {ix.shape} and updates {updates.shape} must match and "
                             f"have the rank of data ({x.ndim})")
        ix = _indices(ix, x.shape[k])
        where = list(np.indices(ix.shape, sparse=True))
        where[k] = ix
        return (_scattered(x, tuple(where), updates, ufunc),)
    return f


def _nd_index(x, ix, batch):
    if ix.dtype.kind not in "iu":
        raise ValueError(f"indices must be int64; got {ix.dtype}")
    depth = ix.shape[-1]
    if ix.ndim < 1 or batch + depth > x.ndim or ix.shape[:batch] != x.shape[:batch]:
        raise ValueError(f"indices {ix.shape} do not fit data {x.shape} with batch_dims "
                         f"{batch}")
    dims = np.array(x.shape[batch:batch + depth])
    if ix.size and ((ix < -dims).any() or (ix >= dims).any()):
        raise ValueError(f"indices out of range for data {x.shape}")
    return np.where(ix < 0, ix + dims, ix), depth


@op("GatherND", inputs=(2, 2))
def _gather_nd(a, opset, n_in, n_out):
    batch = a.int("batch_dims", 0) if opset >= 12 else 0

    def f(x, ix):
        ix, depth = _nd_index(x, ix, batch)
        lead = [np.arange(d).reshape((-1,) + (1,) * (ix.ndim - 2 - i))
                for i, d in enumerate(x.shape[:batch])]
        cols = tuple(lead) + tuple(np.moveaxis(ix, -1, 0))
        return (np.asarray(x[cols]),)
    return f


@op("ScatterND", inputs=(3, 3))
def _scatter_nd(a, opset, n_in, n_out):
    ufunc = _reduction(a, opset)

    def f(x, ix, updates):
        same_dtype(x, updates, "updates")
        ix, depth = _nd_index(x, ix, 0)
        if updates.shape != ix.shape[:-1] + x.shape[depth:]:
            raise ValueError(f"updates must have shape {ix.shape[:-1] + x.shape[depth:]}; got "
                             f"{updates.shape}")
        return (_scattered(x, tuple(np.moveaxis(ix, -1, 0)), updates, ufunc),)
    return f


@op("OneHot", inputs=(3, 3))
def _one_hot(a, opset, n_in, n_out):
    axis = a.int("axis", -1)

    def f(ix, depth, values):
        d = int(scalar_of(depth, "depth"))
        if values.shape != (2,):
            raise ValueError(f"values must be [off, on]; got shape {values.shape}")
        k = norm_axis(axis, ix.ndim + 1)
        check_size(ix.shape + (d,), "the one-hot output")
        ix = np.asarray(ix).astype(np.int64)
        ix = np.where(ix < 0, ix + d, ix)   # out-of-range indices give all-off rows
        hot = np.arange(d).reshape((-1,) + (1,) * (ix.ndim - k)) == np.expand_dims(ix, k)
        return (np.where(hot, values[1], values[0]),)
    return f


@op("NonZero")
def _non_zero(a, opset, n_in, n_out):
    def f(x):
        if x.ndim == 0:
            return (np.zeros((0, int(x != 0)), np.int64),)
        return (np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1),)
    return f


@op("TopK", inputs=(1, 2), outputs=(2, 2))
def _top_k(a, opset, n_in, n_out):
    axis = a.int("axis", -1)
    a.inputs_before(opset, 10, n_in, 1)
    fixed_k = a.int("k", required=True) if opset < 10 else None   # an input from opset 10
    if fixed_k is None and n_in < 2:
        a.fail("from opset 10 K is the second input, which is missing")
    largest = a.flag("largest", 1) if opset >= 11 else 1
    ordered = a.flag("sorted", 1) if opset >= 11 else 1
    if not ordered:
        a.fail("sorted=0 is not handled natively (ONNX Runtime's order is unspecified)")

    def f(x, k=None):
        kk = fixed_k if k is None else int(scalar_of(k, "K"))
        ax = norm_axis(axis, x.ndim)
        if not 0 <= kk <= x.shape[ax]:
            raise ValueError(f"K {kk} is outside [0, {x.shape[ax]}]")
        # Stable sort on the negated keys keeps equal values in index order, as ORT does.
        keys = -x if largest and x.dtype.kind != "u" else x
        if largest and x.dtype.kind == "u":
            keys = np.iinfo(x.dtype).max - x
        order = np.argsort(keys, axis=ax, kind="stable")
        index = np.take(order, np.arange(kk), axis=ax)
        return (np.take_along_axis(x, index, axis=ax), index.astype(np.int64))
    return f


@op("CumSum", inputs=(2, 2))
def _cum_sum(a, opset, n_in, n_out):
    exclusive, reverse = a.flag("exclusive"), a.flag("reverse")

    def f(x, axis):
        k = norm_axis(int(scalar_of(axis, "axis")), x.ndim)
        y = np.flip(x, k) if reverse else x
        y = np.cumsum(y, axis=k, dtype=x.dtype)
        if exclusive:
            y = np.concatenate((np.zeros_like(np.take(y, [0], axis=k)),
                                np.take(y, np.arange(y.shape[k] - 1), axis=k)), axis=k)
        return (np.flip(y, k).copy() if reverse else y,)
    return f


@op("Trilu", inputs=(1, 2))
def _trilu(a, opset, n_in, n_out):
    fn = np.triu if a.int("upper", 1) else np.tril

    def f(x, k=None):
        if x.ndim < 2:
            raise ValueError(f"input must have rank >= 2; got {x.shape}")
        return (fn(x, 0 if k is None else int(scalar_of(k, "k"))),)
    return f


@op("ReverseSequence", inputs=(2, 2))
def _reverse_sequence(a, opset, n_in, n_out):
    batch_axis, time_axis = a.int("batch_axis", 1), a.int("time_axis", 0)
    if {batch_axis, time_axis} not in ({0, 1},):
        a.fail(f"batch_axis and time_axis must be 0 and 1 in some order; got {batch_axis} "
               f"and {time_axis}")

    def f(x, lens):
        if x.ndim < 2 or lens.shape != (x.shape[batch_axis],) or lens.dtype.kind not in "iu":
            raise ValueError(f"sequence_lens must be int64 of shape ({x.shape[batch_axis]},) "
                             f"for input {x.shape}; got {lens.dtype}{lens.shape}")
        steps = x.shape[time_axis]
        if lens.size and (lens.min() < 0 or lens.max() > steps):
            raise ValueError(f"sequence_lens must lie in [0, {steps}]; got {lens.tolist()}")
        t = np.arange(steps)[:, None]
        index = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)   # (time, batch)
        if time_axis == 1:
            index = index.T
        index = index.reshape(index.shape + (1,) * (x.ndim - 2))
        return (np.take_along_axis(x, index, axis=time_axis),)
    return f


def _einsum_shape(equation: str, xs) -> tuple:
    """The output shape ``equation`` gives for operands ``xs``, before computing it (an
    outer product of two small vectors can be huge)."""
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(xs):
        raise ValueError(f"equation {equation!r} names {len(terms)} operands; got {len(xs)}")
    sizes, ellipsis = {}, []
    for term, x in zip(terms, xs):
        letters = term.replace("...", "")
        rest = x.ndim - len(letters)
        if rest < 0 or (rest and "..." not in term):
            raise ValueError(f"operand {term!r} does not fit shape {x.shape}")
        head = term.split("...")[0] if "..." in term else term
        dims = list(x.shape[:len(head)]) + list(x.shape[len(head) + rest:])
        ellipsis.append(x.shape[len(head):len(head) + rest])
        for letter, d in zip(letters, dims):
            if sizes.get(letter, 1) != 1 and d not in (1, sizes[letter]):
                raise ValueError(f"subscript {letter!r} is {sizes[letter]} and {d}")
            sizes[letter] = max(sizes.get(letter, 1), d)
    broadcast = np.broadcast_shapes(*ellipsis)
    if not arrow:   # implicit output: the letters used once, in order, after the ellipsis
        rhs = "..." + "".join(sorted(c for c in sizes if lhs.count(c) == 1))
    before, dots, after = rhs.partition("...")
    return (tuple(sizes.get(c, 1) for c in before) + (tuple(broadcast) if dots else ())
            + tuple(sizes.get(c, 1) for c in after))


@op("Einsum", inputs=(1, 2**31))
def _einsum(a, opset, n_in, n_out):
    equation = a.str("equation", required=True).replace(" ", "")
    if equation.count(",") != n_in - 1:
        a.fail(f"equation {equation!r} does not name {n_in} inputs")

    def f(*xs):
        for x in xs[1:]:
            same_dtype(xs[0], x, "operand")
        check_size(_einsum_shape(equation, xs), "the output", xs[0].itemsize)
        return (np.asarray(np.einsum(equation, *xs, optimize=len(xs) > 2)),)
    return f
