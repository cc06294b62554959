"""Sliding-window operators over any number of spatial dims: Conv, ConvTranspose, MaxPool,
AveragePool, GlobalAveragePool, GlobalMaxPool.

Each is planned once per input shape as a gather: an index array mapping every (kernel offset,
output position) to the flat input position it reads, or to one filler value appended past the
end (zero for convolutions and average pools, -inf for max pools) where it reads padding or,
for ConvTranspose, a gap between strided inputs. A step is then one ``np.take`` (the only copy
of the input) and one ``np.matmul`` (convolutions: W viewed as (group, M/group, C/group * K))
or one reduction over the kernel axis (pools). A 1x1 Conv with unit strides and no padding
skips the gather.

``compiled_conv`` runs a Conv with constant weights (and a Relu after it) as one C call
instead: a 1-D one of group 1 on ``_conv.Conv1d`` (include/rnnengine/conv.h, tuned for the
few output positions of a streaming step), any other 1-D or 2-D one on ``_conv.Conv2d``
(include/rnnengine/conv2d.h).
"""
from __future__ import annotations

import math

import numpy as np

from ..core.conv import Conv1d, Conv2d
from ._common import MAX_ELEMENTS, Attrs, check_size, guard, node_label, registrar, same_dtype

OPS = {}
op = registrar(OPS)


def same_pads(spatial, kernel, strides, dilations, upper):
    begins, ends = [], []
    for d, k, s, dl in zip(spatial, kernel, strides, dilations):
        total = max(0, (-(-d // s) - 1) * s + (k - 1) * dl + 1 - d)
        small = total // 2
        begins.append(small if upper else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def _gather_index(spatial, per_dim):
    """``per_dim[i]`` = (src, valid), (K_i, O_i) arrays of source positions along dim i.
    Returns the (prod K, prod O) flat index (prod(spatial) where any dim is invalid) and
    whether any position is invalid."""
    n = len(spatial)
    index = np.zeros([1] * (2 * n), dtype=np.intp)
    valid = np.ones([1] * (2 * n), dtype=bool)
    step = 1
    for i in reversed(range(n)):
        src, ok = per_dim[i]
        shape = [1] * (2 * n)
        shape[i], shape[n + i] = src.shape
        valid = valid & ok.reshape(shape)
        index = index + src.reshape(shape) * step
        step *= spatial[i]
    kernel = int(np.prod([s[0].shape[0] for s in per_dim]))
    index = np.where(valid, index, step).reshape(kernel, -1)
    return index, not valid.all()


def _sliding(spatial, kernel, pads, strides, dilations, outs):
    """Per-dim (src, valid) for windows that start at o * stride - pad_begin."""
    check_size(list(kernel) + list(outs), "the window gather")
    per_dim = []
    for i, d in enumerate(spatial):
        src = (np.arange(kernel[i])[:, None] * dilations[i]
               + np.arange(outs[i])[None, :] * strides[i] - pads[i])
        per_dim.append((src, (src >= 0) & (src < d)))
    return per_dim


class _Window:
    """The attributes every windowed op shares, decoded once, and its plans by shape."""

    def __init__(self, a, pool=False):
        self.where = a.where
        self.auto = a.choice("auto_pad", ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"),
                             "NOTSET")
        self.kshape = a.ints("kernel_shape", None, required=pool)
        self.pads, self.strides = a.ints("pads", None), a.ints("strides", None)
        self.dilations = a.ints("dilations", None)
        if self.auto != "NOTSET" and self.pads is not None and any(self.pads):
            a.fail(f"pads {self.pads} cannot be combined with auto_pad {self.auto}")
        for name in ("strides", "dilations", "kshape"):
            v = getattr(self, name)
            if v is not None and min(v, default=1) < 1:
                a.fail(f"{name} must be positive; got {v}")
        if self.pads is not None and min(self.pads, default=0) < 0:
            a.fail(f"pads must be non-negative; got {self.pads}")
        self.plans = {}

    def geometry(self, spatial, kernel, transpose=False):
        """strides, dilations and pads (begins then ends) for these spatial dims."""
        n = len(spatial)
        if self.kshape is not None and tuple(self.kshape) != tuple(kernel):
            raise ValueError(f"kernel_shape {self.kshape} does not match W's {kernel}")
        strides = self.strides or [1] * n
        dil = self.dilations or [1] * n
        if len(strides) != n or len(dil) != n:
            raise ValueError(f"strides {strides} and dilations {dil} do not fit {n} spatial "
                             "dims")
        if self.auto in ("SAME_UPPER", "SAME_LOWER") and not transpose:
            pads = same_pads(spatial, kernel, strides, dil, self.auto == "SAME_UPPER")
        else:
            pads = (self.auto == "NOTSET" and self.pads) or [0] * (2 * n)
        if len(pads) != 2 * n:
            raise ValueError(f"pads {pads} do not fit {n} spatial dims")
        return strides, dil, pads

    def remember(self, key, plan):
        if len(self.plans) > 16:   # shapes change rarely; keep the table small if they do
            self.plans.clear()
        self.plans[key] = plan
        return plan


def _check_conv_shapes(xshape, wshape, group, transpose):
    if len(xshape) < 3 or len(wshape) != len(xshape):
        raise ValueError(f"X (N, C, spatial...) and W must have the same rank >= 3; got "
                         f"{xshape} and {wshape}")
    c = xshape[1]
    if transpose:   # W is (C, M/group, kernel...)
        if wshape[0] != c or c % group:
            raise ValueError(f"X has {c} channels and W is {wshape} with group {group}")
        return wshape[1] * group
    if c != wshape[1] * group or wshape[0] % group:
        raise ValueError(f"X has {c} channels and W is {wshape} with group {group}")
    return wshape[0]


def _matmul_cols(x, w_view, plan, batch, group):
    """One gather and one batched matmul: (N, M, outs...)."""
    index, padded, out_shape, p = plan
    if index is not None and batch * x.shape[1] * index.size > MAX_ELEMENTS:
        check_size((batch, x.shape[1]) + index.shape, "the window gather", x.itemsize)
    if batch * out_shape[1] * p > MAX_ELEMENTS:
        check_size(out_shape, "the output", x.itemsize)
    flat = x.reshape(batch, x.shape[1], -1)
    if index is None:
        cols = flat.reshape(batch, group, -1, p)
    else:
        if padded:   # the zero that padding positions read
            flat = np.concatenate((flat, np.zeros((batch, x.shape[1], 1), x.dtype)), 2)
        cols = flat.take(index, axis=2).reshape(batch, group, -1, p)
    return np.matmul(w_view, cols).reshape(out_shape)


def _add_channel_bias(y, b):
    if b.dtype != y.dtype:
        same_dtype(y, b, "B")
    if b.shape != (y.shape[1],):
        raise ValueError(f"B must have shape ({y.shape[1]},); got {b.shape}")
    y += b.reshape(y.shape[1], *(1,) * (y.ndim - 2))
    return y


class _Convolution(_Window):
    """What Conv and ConvTranspose share: groups, the plan table, one gather and matmul."""

    def __init__(self, a):
        super().__init__(a)
        self.group = a.int("group", 1)
        if self.group < 1:
            a.fail(f"group must be positive; got {self.group}")

    def planned(self, xshape, wshape, m, index, padded, outs):
        return self.remember((xshape, wshape), (index, padded, (xshape[0], m) + tuple(outs),
                                                int(np.prod(outs))))

    def __call__(self, x, w, b=None):
        if x.dtype != w.dtype:
            same_dtype(x, w, "W")
        plan = self.plans.get((x.shape, w.shape)) or self.plan(x.shape, w.shape)
        y = _matmul_cols(x, self.weights(w, x.shape[1]), plan, x.shape[0], self.group)
        return (y if b is None else _add_channel_bias(y, b),)


class _Conv(_Convolution):
    """Output o reads input o * s + k * d - pad_begin through kernel offset k."""

    def plan(self, xshape, wshape):
        m = _check_conv_shapes(xshape, wshape, self.group, False)
        spatial, kernel = xshape[2:], wshape[2:]
        strides, dil, pads = self.geometry(spatial, kernel)
        n = len(spatial)
        outs = [(d + pads[i] + pads[n + i] - (k - 1) * dl - 1) // s + 1
                for i, (d, k, s, dl) in enumerate(zip(spatial, kernel, strides, dil))]
        if min(outs) < 1:
            raise ValueError(f"kernel {kernel} (dilations {tuple(dil)}) does not fit the "
                             f"input {spatial} padded by {pads}")
        if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads):
            index, padded = None, False
        else:
            index, padded = _gather_index(spatial, _sliding(spatial, kernel, pads, strides,
                                                            dil, outs))
        return self.planned(xshape, wshape, m, index, padded, outs)

    def weights(self, w, c):
        return w.reshape(self.group, w.shape[0] // self.group, -1)


@op("Conv", inputs=(2, 3))
def _conv(a, opset, n_in, n_out):
    return _Conv(a)


_F32 = np.dtype(np.float32)


def compiled_conv(nodes, const):
    """``nodes`` = [Conv] or [Conv, Relu] (the Relu reading the Conv's only output) as one C
    call when the Conv is 1-D or 2-D and its W and B are float32 constants
    (``const(name)`` -> array or None): a function of X alone, with ``inputs``/``outputs``
    naming the chain's X and its output. An X the kernel does not take (another dtype or
    rank, a wrong channel count) runs the NumPy path, which also reports the error. None when
    the nodes are not such a chain."""
    conv = nodes[0]
    if (conv.op_type != "Conv" or len(nodes) > 2 or len(conv.output) != 1
            or not 2 <= len(conv.input) <= 3 or not conv.input[0]):
        return None
    relu = len(nodes) == 2
    if relu and (nodes[1].op_type != "Relu" or list(nodes[1].input) != [conv.output[0]]
                 or nodes[1].attribute or len(nodes[1].output) != 1):
        return None
    a = Attrs(conv)
    try:
        general = _Conv(a)
    except Exception:   # native_op reports bad attributes with the node's name
        return None
    names = list(conv.input) + [""] * (3 - len(conv.input))
    w = const(names[1]) if names[1] else None
    b = const(names[2]) if names[2] else None
    if (a.unread() or w is None or w.dtype != _F32 or w.ndim not in (3, 4)
            or min(w.shape) < 1 or w.shape[0] % general.group
            or (names[2] and (b is None or b.dtype != _F32 or b.shape != (w.shape[0],)))):
        return None
    one_d = w.ndim == 3 and general.group == 1
    w4 = w if w.ndim == 4 else w[:, :, None, :]      # a 1-D conv as a height of one
    channels = w.shape[1] * general.group
    # input's spatial shape -> (kernel, output shape); auto_pad SAME makes pads depend on it
    kernels = {}

    def kernel(spatial):
        strides, dil, pads = general.geometry(spatial, w.shape[2:])
        if one_d:
            k = Conv1d(w, b, strides[0], dil[0], pads[0], pads[1], relu)
            out = (w.shape[0], k.out_length(spatial[0]))
        else:
            if len(spatial) == 1:
                strides, dil, pads = [1, *strides], [1, *dil], [0, pads[0], 0, pads[1]]
            k = Conv2d(w4, b, strides, dil, pads, general.group, relu)
            out = (w.shape[0], *k.out_shape(*((1,) * (2 - len(spatial)) + tuple(spatial))))
            out = out if len(spatial) == 2 else out[:1] + out[2:]
        if min(out) < 1:
            raise ValueError(f"kernel {w.shape[2:]} (dilations {tuple(dil)}) does not fit the "
                             f"input {spatial} padded by {pads}")
        if len(kernels) > 16:   # shapes change rarely; keep the table small if they do
            kernels.clear()
        kernels[spatial] = k, out
        return kernels[spatial]

    def run(x):
        if (x.__class__ is np.ndarray and x.dtype is _F32 and x.ndim == w.ndim
                and x.shape[1] == channels):
            spatial = x.shape[2:]
            k, out = kernels.get(spatial) or kernel(spatial)
            if x.shape[0] * math.prod(out) > MAX_ELEMENTS:
                check_size((x.shape[0], *out), "the output")   # raises
            if one_d:
                return (k(x),)
            return (k(x if x.ndim == 4 else x[:, :, None, :]).reshape(x.shape[0], *out),)
        y = general(x, w, b)[0]
        return (np.maximum(y, 0, out=y) if relu else y,)

    fused = guard(run, " + ".join(f"{n.op_type} node {node_label(n)!r}" for n in nodes))
    fused.inputs, fused.outputs = (conv.input[0],), (nodes[-1].output[0],)
    fused.conv_nodes = list(nodes)      # the executor plans the same chain (executor.py)
    return fused


class _ConvTranspose(_Convolution):
    """Each output position gathers the inputs that a strided scatter would have sent to it:
    input i reaches output o through kernel offset k when i * s + k * d - pad_begin = o."""

    def __init__(self, a):
        super().__init__(a)
        self.output_padding = a.ints("output_padding", None)
        self.output_shape = a.ints("output_shape", None)

    def plan(self, xshape, wshape):
        m = _check_conv_shapes(xshape, wshape, self.group, True)
        spatial, kernel = xshape[2:], wshape[2:]
        n = len(spatial)
        strides, dil, pads = self.geometry(spatial, kernel, transpose=True)
        extra = self.output_padding or [0] * n
        if len(extra) != n:
            raise ValueError(f"output_padding {extra} does not fit {n} spatial dims")
        full = [s * (d - 1) + e + (k - 1) * dl + 1
                for d, k, s, dl, e in zip(spatial, kernel, strides, dil, extra)]
        if self.output_shape is not None or self.auto in ("SAME_UPPER", "SAME_LOWER"):
            want = list(self.output_shape or [d * s for d, s in zip(spatial, strides)])
            want = want[-n:]
            total = [f - o for f, o in zip(full, want)]
            if min(total) < 0:
                raise ValueError(f"output_shape {want} is larger than the {full} the "
                                 "transposed convolution produces")
            # ONNX Runtime (checked for NOTSET, SAME_UPPER and SAME_LOWER) puts the larger
            # half of odd padding at the start; we follow the runtime users compare against.
            pads = [t - t // 2 for t in total]
            pads = pads + [t - b for t, b in zip(total, pads)]
        outs = [f - pads[i] - pads[n + i] for i, f in enumerate(full)]
        if min(outs) < 1:
            raise ValueError(f"pads {pads} leave no output for input {spatial}")
        check_size(list(kernel) + list(outs), "the window gather")
        per_dim = []
        for i, d in enumerate(spatial):
            num = (np.arange(outs[i])[None, :] + pads[i]
                   - np.arange(kernel[i])[:, None] * dil[i])
            src = num // strides[i]
            per_dim.append((src, (num % strides[i] == 0) & (src >= 0) & (src < d)))
        index, padded = _gather_index(spatial, per_dim)
        return self.planned(xshape, wshape, m, index, padded, outs)

    def weights(self, w, c):
        # W (C, M/g, K...) -> (g, M/g, C/g * K): per group, output channels by (c, k).
        g, k = self.group, math.prod(w.shape[2:])
        return w.reshape(g, c // g, w.shape[1], k).transpose(0, 2, 1, 3).reshape(
            g, w.shape[1], -1)


@op("ConvTranspose", inputs=(2, 3))
def _conv_transpose(a, opset, n_in, n_out):
    return _ConvTranspose(a)


class _Pool(_Window):
    def __init__(self, a, opset, kind):
        super().__init__(a, pool=True)
        self.kind = kind
        self.ceil = a.flag("ceil_mode") if opset >= 10 else 0
        if kind == "max":
            a.int("storage_order", 0)   # only affects the Indices output, not produced
            self.include_pad = 0
        else:
            self.include_pad = a.flag("count_include_pad")
            if opset < 19 and self.dilations is not None and any(d != 1 for d in
                                                                 self.dilations):
                a.fail("AveragePool dilations need opset 19")

    def plan(self, xshape):
        if len(xshape) < 3:
            raise ValueError(f"X must be (N, C, spatial...); got {xshape}")
        spatial, kernel = xshape[2:], tuple(self.kshape)
        if len(kernel) != len(spatial):
            raise ValueError(f"kernel_shape {list(kernel)} does not fit {len(spatial)} "
                             "spatial dims")
        strides, dil, pads = self.geometry(spatial, kernel)
        n = len(spatial)
        outs = []
        for i, (d, k, s, dl) in enumerate(zip(spatial, kernel, strides, dil)):
            span = d + pads[i] + pads[n + i] - (k - 1) * dl - 1
            o = (-(-span // s) if self.ceil else span // s) + 1
            if self.ceil and (o - 1) * s >= d + pads[i]:
                o -= 1   # a window may not start in the end padding (ONNX, ORT)
            outs.append(o)
        if min(outs) < 1:
            raise ValueError(f"kernel {kernel} does not fit the input {spatial} padded by "
                             f"{pads}")
        per_dim = _sliding(spatial, kernel, pads, strides, dil, outs)
        index, padded = _gather_index(spatial, per_dim)
        count = None
        if self.kind == "avg":
            # The divisor per output: the real inputs, or with count_include_pad also the
            # pad positions (but not what ceil_mode reaches beyond the end padding).
            inside = [(src < d + pads[n + i]) if self.include_pad else ok
                      for i, (d, (src, ok)) in enumerate(zip(spatial, per_dim))]
            count = np.ones(1)
            for m in inside:
                count = np.multiply.outer(count, m.sum(axis=0)).reshape(-1)
        return self.remember(xshape, (index, padded, xshape[:2] + tuple(outs), count))

    def __call__(self, x):
        if x.dtype.kind != "f":
            raise ValueError(f"X must be floating-point; got {x.dtype}")
        index, padded, out_shape, count = self.plans.get(x.shape) or self.plan(x.shape)
        if x.shape[0] * x.shape[1] * index.size > MAX_ELEMENTS:
            check_size(x.shape[:2] + index.shape, "the window gather", x.itemsize)
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        if padded:
            fill = -np.inf if self.kind == "max" else 0
            flat = np.concatenate((flat, np.full(flat.shape[:2] + (1,), fill, x.dtype)), 2)
        cols = flat.take(index, axis=2)   # (N, C, K, P)
        if self.kind == "max":
            return (cols.max(axis=2).reshape(out_shape),)
        y = cols.sum(axis=2)
        y /= count.astype(x.dtype)
        return (y.reshape(out_shape),)


@op("MaxPool", "AveragePool")
def _pool(a, opset, n_in, n_out):
    return _Pool(a, opset, "max" if a.node.op_type == "MaxPool" else "avg")


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(a, opset, n_in, n_out):
    fn = np.mean if a.node.op_type == "GlobalAveragePool" else np.max

    def f(x):
        if x.ndim < 3 or x.dtype.kind != "f":
            raise ValueError(f"X must be floating-point (N, C, spatial...); got "
                             f"{x.dtype}{x.shape}")
        return (fn(x, axis=tuple(range(2, x.ndim)), keepdims=True),)
    return f
