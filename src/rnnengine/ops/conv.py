"""Conv (any number of spatial dims, groups, pads, strides, dilations, auto_pad) as im2col and
one batched matmul.

The im2col gather is planned once per input shape: an index array that maps every (kernel
offset, output position) to the flat input position it reads, or to one zero appended past the
end where it reads padding. A step is then one ``np.take`` (the only copy of the input) and one
``np.matmul`` (W viewed as (group, M/group, C/group * K)). A 1x1 kernel with unit strides and
no padding skips the gather.
"""
from __future__ import annotations

import numpy as np

from ._common import registrar, same_dtype

OPS = {}
op = registrar(OPS)


def _same_pads(spatial, kernel, strides, dilations, upper):
    begins, ends = [], []
    for d, k, s, dl in zip(spatial, kernel, strides, dilations):
        total = max(0, (-(-d // s) - 1) * s + (k - 1) * dl + 1 - d)
        small = total // 2
        begins.append(small if upper else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def _gather_index(spatial, kernel, pads, strides, dilations, outs):
    """(prod(kernel), prod(outs)) flat source positions; prod(spatial) means 'padding'."""
    n = len(spatial)
    size = int(np.prod(spatial))
    index = np.zeros([1] * (2 * n), dtype=np.intp)
    valid = np.ones([1] * (2 * n), dtype=bool)
    step = 1
    for i in reversed(range(n)):
        shape = [1] * (2 * n)
        shape[i], shape[n + i] = kernel[i], outs[i]
        src = (np.arange(kernel[i])[:, None] * dilations[i]
               + np.arange(outs[i])[None, :] * strides[i] - pads[i]).reshape(shape)
        valid = valid & (src >= 0) & (src < spatial[i])
        index = index + src * step
        step *= spatial[i]
    index = np.where(valid, index, size)
    return index.reshape(int(np.prod(kernel)), int(np.prod(outs))), not valid.all()


class _Conv:
    """One Conv node: attributes decoded once, a gather plan per input shape."""

    def __init__(self, a):
        self.auto = a.choice("auto_pad", ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"),
                             "NOTSET")
        self.group = a.int("group", 1)
        self.kshape = a.ints("kernel_shape", None)
        self.pads, self.strides = a.ints("pads", None), a.ints("strides", None)
        self.dilations = a.ints("dilations", None)
        if self.group < 1:
            a.fail(f"group must be positive; got {self.group}")
        if self.auto != "NOTSET" and self.pads is not None and any(self.pads):
            a.fail(f"pads {self.pads} cannot be combined with auto_pad {self.auto}")
        for name in ("strides", "dilations", "kshape"):
            v = getattr(self, name)
            if v is not None and min(v, default=1) < 1:
                a.fail(f"{name} must be positive; got {v}")
        if self.pads is not None and min(self.pads, default=0) < 0:
            a.fail(f"pads must be non-negative; got {self.pads}")
        self.plans = {}

    def plan(self, xshape, wshape):
        n = len(xshape) - 2
        if n < 1 or len(wshape) != len(xshape):
            raise ValueError(f"X (N, C, spatial...) and W (M, C/group, kernel...) must have "
                             f"the same rank >= 3; got {xshape} and {wshape}")
        kernel, spatial = wshape[2:], xshape[2:]
        if self.kshape is not None and tuple(self.kshape) != kernel:
            raise ValueError(f"kernel_shape {self.kshape} does not match W's {kernel}")
        c, m, g = xshape[1], wshape[0], self.group
        if c != wshape[1] * g or m % g:
            raise ValueError(f"X has {c} channels and W is {wshape} with group {g}")
        strides = self.strides or [1] * n
        dil = self.dilations or [1] * n
        if self.auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(spatial, kernel, strides, dil, self.auto == "SAME_UPPER")
        else:
            pads = (self.auto == "NOTSET" and self.pads) or [0] * (2 * n)
        if len(pads) != 2 * n or len(strides) != n or len(dil) != n:
            raise ValueError(f"pads {pads}, strides {strides}, dilations {dil} do not fit "
                             f"{n} spatial dims")
        outs = [(d + pads[i] + pads[n + i] - (k - 1) * dl - 1) // s + 1
                for i, (d, k, s, dl) in enumerate(zip(spatial, kernel, strides, dil))]
        if min(outs) < 1:
            raise ValueError(f"kernel {kernel} (dilations {tuple(dil)}) does not fit the "
                             f"input {spatial} padded by {pads}")
        if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads):
            index, padded = None, False
        else:
            index, padded = _gather_index(spatial, kernel, pads, strides, dil, outs)
        if len(self.plans) > 16:   # shapes change rarely; keep the table small if they do
            self.plans.clear()
        plan = self.plans[xshape, wshape] = (index, padded, (xshape[0], m) + tuple(outs),
                                             (g, m // g, -1), int(np.prod(outs)))
        return plan

    def __call__(self, x, w, b=None):
        if x.dtype != w.dtype:
            same_dtype(x, w, "W")
        plan = self.plans.get((x.shape, w.shape)) or self.plan(x.shape, w.shape)
        index, padded, out_shape, w_shape, p = plan
        batch, g = x.shape[0], self.group
        flat = x.reshape(batch, x.shape[1], -1)
        if index is None:
            cols = flat.reshape(batch, g, -1, p)
        else:
            if padded:   # the zero that padding positions read
                flat = np.concatenate((flat, np.zeros((batch, x.shape[1], 1), x.dtype)), 2)
            cols = np.take(flat, index, axis=2).reshape(batch, g, -1, p)
        y = np.matmul(w.reshape(w_shape), cols).reshape(out_shape)
        if b is not None:
            if b.dtype != x.dtype:
                same_dtype(x, b, "B")
            if b.shape != (out_shape[1],):
                raise ValueError(f"B must have shape ({out_shape[1]},); got {b.shape}")
            y += b.reshape(out_shape[1], *(1,) * (len(out_shape) - 2))
        return (y,)


@op("Conv", inputs=(2, 3))
def _conv(a, opset, n_in, n_out):
    return _Conv(a)
