"""How each operator of a planned call becomes C kernels (``executor.Program`` plans the
call; ``include/rnnengine/exec.h`` holds the kernels). ``Lowering`` is the planner's half
that knows the operators: each method adds the kernels for one step and returns True, or
returns False and leaves nothing behind (the planner then calls the step as the general
path does). Values are read from the traced call (``self.v``); buffers are ``self.buf``.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from ..core.checks import is_one_way
from ..core.conv import Conv2d
from ..core.kernels import SequenceCore
from .steps import RecurrentStep
from ..onnx.fold import attrs
from ..ops.conv import same_pads

_CODE = np.int64(1) << 40   # element codes: (source + 1) << 40 | flat index
_F32 = np.dtype(np.float32)

_VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
# inputs that carry data (the others are parameters: indices, axes, pads, shapes)
_MOVES = {"Transpose": (0,), "Slice": (0,), "Concat": None, "Split": (0,), "Expand": (0,),
          "Tile": (0,), "Pad": (0,), "Gather": (0,), "GatherElements": (0,),
          "GatherND": (0,), "ScatterND": (0, 2), "ScatterElements": (0, 2), "Where": (1, 2)}
_BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4, "Max": 5, "Min": 6, "PRelu": 7}
_FMOD = 8       # Mod with fmod=1 (a float Mod must have it)
_UNARY = {"Sigmoid": 0, "Tanh": 1, "Relu": 2, "Sqrt": 3, "Exp": 4, "Log": 5, "Neg": 6,
          "Abs": 7, "Reciprocal": 8, "LeakyRelu": 9, "HardSigmoid": 10, "Clip": 11, "Erf": 12,
          "Softplus": 13, "Elu": 14, "Gelu": 15, "HardSwish": 17, "Softsign": 18,
          "Sign": 19, "Floor": 20, "Ceil": 21, "Round": 22, "Sin": 23, "Cos": 24, "Tan": 25,
          "Atan": 26, "Selu": 27, "Celu": 28, "Mish": 29, "ThresholdedRelu": 30}
_GELU_TANH = 16
# exec.h's comparisons (the int64 ones 5 past the float32 ones) and logic, to bools
_COMPARE = {"Equal": 0, "Less": 1, "Greater": 2, "LessOrEqual": 3, "GreaterOrEqual": 4}
_LOGIC = {"And": 10, "Or": 11, "Xor": 12}
_BOOL = np.dtype(np.bool_)
_I64 = np.dtype(np.int64)
# exec.h's conversions by (input, output) dtype; Not is a conversion of bools to bools
_CONVERT = {(_F32, _I64): 0, (_I64, _F32): 1, (_BOOL, _F32): 2, (_F32, _BOOL): 3,
            (_I64, _BOOL): 4, (_BOOL, _I64): 5}
_NOT = 6
_REDUCE = {"ReduceSum": 0, "ReduceMean": 1, "ReduceMax": 2, "ReduceMin": 3,
           "ReduceSumSquare": 4, "ReduceL2": 5, "ReduceL1": 6, "ReduceProd": 7,
           "ReduceLogSumExp": 8}
_MAXD = 8
# A convolution (or transposed one) runs on conv2d.h's direct kernel when its output rows
# are at least this long (the kernel vectorises along them: a shorter row wastes most of a
# vector, where the gather and product below vectorise over the channels) and its kernel
# at most this wide (the runner's kernel then allocates nothing).
_DIRECT_MIN_WO = 12
_DIRECT_MAX_KW = 64
RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
           "Multinomial", "Bernoulli"}


def _strides(shape) -> List[int]:
    out, n = [], 1
    for d in reversed(shape):
        out.append(n)
        n *= d
    return out[::-1]


def _geometry(inputs, shape) -> Optional[list]:
    """Arrays ``inputs`` broadcast to ``shape``: [(n, each input's stride), ...] per dim, dims
    of one dropped and dims merged where every input runs on contiguously; None past the
    kernels' rank or when an input does not broadcast so."""
    out = list(shape) or [1]
    geo = []
    for x in inputs:
        s = [1] * (len(out) - x.ndim) + list(x.shape) if len(shape) else [1]
        if len(s) != len(out) or any(a != 1 and a != b for a, b in zip(s, out)):
            return None
        st = _strides(s)
        geo.append([0 if s[d] == 1 and out[d] != 1 else st[d] for d in range(len(out))])
    merged: list = []
    for d in range(len(out)):
        n = out[d]
        if n == 1:
            continue
        strides = [g[d] for g in geo]
        if merged and all(m == t * n for m, t in zip(merged[-1][1:], strides)):
            merged[-1] = (merged[-1][0] * n, *strides)
        else:
            merged.append((n, *strides))
    merged = merged or [(1,) + (0,) * len(inputs)]
    return None if len(merged) > _MAXD else merged


def _progressions(columns: list, cuts: np.ndarray) -> np.ndarray:
    """Starts of the maximal stretches over which every column (int64 arrays of one length
    n) is an arithmetic progression and no ``cuts`` (bool, n) falls inside: a stretch
    breaks where a column's step changes; then a lone element joins the stretch after it
    when it continues that stretch's steps (a transpose's rows: 0 4 8 | 1 5 9, not
    0 4 8 | 1 | 5 9)."""
    n = len(cuts)
    brk = cuts.copy()
    brk[0] = True
    for c in columns:     # i-1 starting a stretch (a cut) lets i set its step
        d = np.diff(c)
        if n > 2:
            brk[2:] |= (d[1:] != d[:-1]) & ~cuts[1:-1]
    starts = np.flatnonzero(brk)
    if len(starts) < 2:
        return starts
    lens = np.diff(np.append(starts, n))
    j = np.flatnonzero((lens[:-1] == 1) & (lens[1:] >= 2))
    nxt = starts[j + 1]
    ok = ~cuts[nxt]
    for c in columns:
        ok &= c[nxt] - c[starts[j]] == c[nxt + 1] - c[nxt]
    return np.delete(starts, j[ok] + 1)


def _runs(codes: np.ndarray) -> np.ndarray:
    """Element codes (flat, one per output element) -> groups of runs [dst, src_off, len,
    stride, src, reps, dst_step, src_step] (``exec.h``: rnn_exec_move): a run is a stretch of
    one source at a constant stride; a group repeats equal runs at constant steps."""
    n = codes.size
    src = codes >> 40
    off = codes & (_CODE - 1)
    cuts = np.zeros(n, bool)
    cuts[1:] = src[1:] != src[:-1]
    starts = _progressions([off], cuts)
    lens = np.diff(np.append(starts, n))
    stride = np.where(lens > 1, off[np.minimum(starts + 1, n - 1)] - off[starts], 1)
    runs = np.stack([starts, off[starts], lens, stride, src[starts] - 1], axis=1)
    # runs write disjoint stretches, so any order will do: alike runs side by side (a
    # convolution's window rows alternate padding and data runs) group into fewer
    runs = runs[np.lexsort((runs[:, 0], runs[:, 3], runs[:, 2], runs[:, 4]))]
    cuts = np.zeros(len(runs), bool)
    cuts[1:] = np.any(runs[1:, 2:5] != runs[:-1, 2:5], axis=1)
    first = _progressions([runs[:, 0], runs[:, 1]], cuts)
    reps = np.diff(np.append(first, len(runs)))
    nxt = np.minimum(first + 1, len(runs) - 1)
    steps = np.where(reps[:, None] > 1, runs[nxt, :2] - runs[first, :2], 0)
    return np.concatenate([runs[first], reps[:, None], steps], axis=1).astype(np.int64)


class Lowering:
    """Mixed into the planner (``executor._Builder``), whose buffers it uses."""

    # -- lowering --------------------------------------------------------------------------
    def _lower(self, step, ins, outs, label, plan) -> bool:
        """Add C operators for ``step``; False when it has none."""
        branch = getattr(step, "branches", None)
        if branch is not None:
            return self._inline_if(step, outs)
        rec = getattr(step, "__self__", None)
        if isinstance(rec, RecurrentStep):
            return self._recurrent(rec)
        dense = getattr(getattr(step, "fn", None), "dense", None)
        if dense is not None and len(ins) == 1 and len(outs) == 1:
            return self._dense(dense, ins[0], outs[0], label)
        chain = getattr(getattr(step, "fn", None), "conv_nodes", None)
        if chain is not None and len(outs) == 1 and len(ins) == 1:
            names = list(chain[0].input) + [""] * (3 - len(chain[0].input))
            return self._conv(chain[0], ins, outs[0], label, relu=len(chain) > 1,
                              w=plan.const(names[1]), bias=plan.const(names[2]) if names[2] else None)
        node = getattr(step, "node", None)
        if node is not None and node.op_type == "LayerNormalization":
            # Y, and Mean / InvStdDev where the plan keeps them (an unread one may be either)
            slots = [plan.slots.get(n) if n else None for n in node.output] + [None, None]
            if slots[0] not in outs or any(o not in slots[:3] for o in outs):
                return False
            return self._norm(node, ins, slots[0], label,
                              [t if t in outs else None for t in slots[1:3]])
        if node is None or len(outs) != len(node.output) or any(o == 2 for o in outs):
            return False
        op = node.op_type
        if op in _VIEWS or (op in ("Cast", "CastLike") and self.v[outs[0]].__class__ is np.ndarray
                            and self.buf.get(ins[0]) is not None
                            and self.v[outs[0]].dtype == self.buf[ins[0]].dtype):
            return self._view(ins[0], outs[0])      # a cast to the same type is the value
        if op in _MOVES:
            if self._move(step, node, ins, outs, label):
                return True
            return op == "Where" and self._where(ins, outs[0], label)
        if op in ("Cast", "CastLike"):
            return self._convert(ins[0], outs[0])
        if op == "Not" and len(ins) == 1:
            return self._convert(ins[0], outs[0], _NOT)
        if op in _COMPARE or op in _LOGIC:
            return self._compare(node, ins, outs[0], label)
        if op in _BINARY and len(ins) == 2:
            return self._binary(_BINARY[op], ins, outs[0], label)
        if op in ("Sum", "Mean", "Max", "Min") and len(ins) >= 2:
            return self._variadic(op, ins, outs[0], label)
        if op == "Mod" and len(ins) == 2 and attrs(node).get("fmod", 0) == 1:
            return self._binary(_FMOD, ins, outs[0], label)
        if op in _UNARY:
            return self._unary(node, ins, outs[0], label)
        if op in _REDUCE:
            return self._reduce(node, ins, outs[0], label)
        if op in ("Conv", "ConvTranspose"):
            return self._conv(node, ins, outs[0], label)
        if op == "BatchNormalization":
            return self._batchnorm(node, ins, outs[0], label)
        if op in ("Softmax", "LogSoftmax"):
            return self._softmax(node, ins, outs[0], label)
        if op == "InstanceNormalization":
            return self._norm(node, ins, outs[0], label)
        if op == "MatMul":
            return self._matmul(ins, outs[0], label)
        if op == "Gemm":
            return self._gemm(node, ins, outs[0], label)
        return False

    def _recurrent(self, rec) -> bool:
        """A node with its state read from and written to buffers (an exported model's step
        or sequence): one timestep one way on a stream core of the program's own (the
        kernels' own step); anything longer, or both ways, as one sequence run."""
        x = self.buf.get(rec.x)
        if (rec.layout or rec.lens != 1 or x is None or x.dtype != _F32 or x.ndim != 3
                or x.shape[2] != rec.I or not x.shape[0]):
            return False
        T, N, D = x.shape[0], x.shape[1], rec.D
        state = []
        for slot, size in ((rec.h0, rec.Hout), (rec.c0, rec.H)):
            if slot == 1 or (rec.kind != "lstm" and slot is rec.c0):
                state.append(None)
                continue
            b = self.buf.get(slot)
            if b is None or b.dtype != _F32 or b.shape != (D, N, size):
                return False
            state.append(b)
        lstm = rec.kind == "lstm"
        yh = None if rec.yh == 2 else self._new(rec.yh, (D, N, rec.Hout), _F32)
        yc = None if rec.yc == 2 or not lstm else self._new(rec.yc, (D, N, rec.H), _F32)
        if T == 1 and is_one_way(rec.model.layers):
            core = rec.model.stream(batch=N).core
            y = self._new(rec.y, (1, 1, N, rec.Hout), _F32)
            self.ops.append(("recurrent", core, x, state[0], state[1], y, yh, yc))
            return True
        if rec.model.threads > 1:
            return False        # a sequence core runs on one thread; the general path splits
        core = SequenceCore(rec.cells, D, T, N)
        y = np.zeros((T, N, D * rec.Hout), _F32)      # the kernels' layout
        hbuf = np.zeros((D, N, rec.Hout), _F32)
        cbuf = np.zeros((D, N, rec.H), _F32) if lstm else None
        self.ops.append(("sequence", core, x, state[0], state[1], y, yh, yc, hbuf, cbuf))
        Y = self._new(rec.y, (T, D, N, rec.Hout), _F32)
        order = np.arange(y.size, dtype=np.int64).reshape(T, N, D, rec.Hout)
        self.ops.append(("move", Y, [y.reshape(-1)],
                         _runs(_CODE + order.transpose(0, 2, 1, 3).reshape(-1))))
        return True

    def _move(self, step, node, ins, outs, label) -> bool:
        fn = getattr(step, "native", None)
        data = _MOVES[node.op_type]
        data = range(len(ins)) if data is None else [j for j in data if j < len(ins)]
        if fn is None:          # a view step: a function of the data alone
            fn = getattr(step, "native_view", None)
            if fn is None or getattr(step, "view_of", None) not in ins:
                return False
            ins = [step.view_of]
            data = [0]
        args, sources = [], []
        for j, i in enumerate(ins):
            value = self.v[i]
            if j in data and i != 1:
                b = self.buf.get(i)
                if b is None or value.__class__ is not np.ndarray or b.size >= _CODE:
                    return False
                args.append(((len(sources) + 1) * _CODE + np.arange(b.size, dtype=np.int64))
                            .reshape(value.shape))
                sources.append(b)
            elif i == 1 or i in self.static:
                args.append(value)
            else:
                return False
        dtypes = {s.dtype for s in sources}
        if len(dtypes) != 1:
            return False
        try:
            with np.errstate(all="ignore"):
                coded = fn(*args)
        except Exception:
            return False
        for o, c in zip(outs, coded):
            want = self.v[o]
            c = np.asarray(c)
            if (c.dtype != np.int64 or want.__class__ is not np.ndarray or c.shape != want.shape
                    or want.dtype not in dtypes):
                return False
        for o, c in zip(outs, coded):
            want = np.ascontiguousarray(self.v[o])
            flat = np.asarray(c).reshape(-1)
            unmapped = (flat >> 40) == 0
            srcs = list(sources)
            if unmapped.any():         # Pad's fill: the traced value at that position
                srcs.append(want.reshape(-1).copy())
                flat = np.where(unmapped, (len(srcs)) * _CODE + np.arange(flat.size), flat)
            if (flat >> 40).max() > len(srcs):
                return False
            dst = self._out(o)
            # the map must reproduce the traced value from the traced inputs
            traced = [np.ascontiguousarray(self.v[i]).reshape(-1) for j, i in enumerate(ins)
                      if j in data and i != 1] + ([srcs[-1]] if unmapped.any() else [])
            picked = np.empty(flat.size, want.dtype)
            for s, src in enumerate(traced):
                sel = (flat >> 40) == s + 1
                picked[sel] = src[flat[sel] & (_CODE - 1)]
            if not np.array_equal(picked, want.reshape(-1), equal_nan=True):
                return False
            self.ops.append(("move", dst, [s.reshape(-1) for s in srcs], _runs(flat)))
        return True

    def _f32(self, slots, label) -> Optional[list]:
        out = []
        for i in slots:
            b = self.buf.get(i)
            if b is None or b.dtype != _F32:
                return None
            out.append(b)
        return out

    def _binary(self, code: int, ins, o: int, label) -> bool:
        bufs = self._f32(ins, label)
        y = self.v[o]
        if bufs is None or y.__class__ is not np.ndarray or y.dtype != _F32:
            return False
        return self._broadcast(code, bufs[0], bufs[1], o, y.shape)

    def _broadcast(self, code: int, a: np.ndarray, b: np.ndarray, o: int, shape,
                   dst: Optional[np.ndarray] = None) -> bool:
        """y = a (op) b broadcast to ``shape``, the dims collapsed where both inputs run
        contiguously; into ``dst`` when given (which may be ``a``: same element, read then
        written), else a new buffer for slot ``o``."""
        merged = _geometry((a, b), shape)
        if merged is None:
            return False
        if dst is None:
            dst = self._new(o, tuple(shape), _F32)
        if dst.size:       # an empty output has nothing to compute
            self.ops.append(("binary", code, a, b, dst, *map(list, zip(*merged))))
        return True

    def _variadic(self, op: str, ins, o: int, label) -> bool:
        """Sum / Mean / Max / Min of two or more inputs: the first two into the output, each
        further one folded into it, all broadcast to the output's shape (Mean divided last)."""
        bufs = self._f32(ins, label)
        y = self.v[o]
        if bufs is None or y.__class__ is not np.ndarray or y.dtype != _F32:
            return False
        full = np.broadcast_to(np.float32(0), y.shape)      # the output's geometry
        pairs = [bufs[:2]] + [(full, b) for b in bufs[2:]]
        if any(_geometry(p, y.shape) is None for p in pairs):
            return False
        code = {"Sum": 0, "Mean": 0, "Max": 5, "Min": 6}[op]
        dst = self._new(o, y.shape, _F32)
        self._broadcast(code, bufs[0], bufs[1], o, y.shape, dst=dst)
        for b in bufs[2:]:
            self._broadcast(code, dst, b, o, y.shape, dst=dst)
        if op == "Mean":
            self._broadcast(3, dst, np.array(len(bufs), _F32), o, y.shape, dst=dst)
        return True

    def _compare(self, node, ins, o: int, label) -> bool:
        """Equal/Less/Greater/LessOrEqual/GreaterOrEqual of float32 or int64, And/Or/Xor of
        bools: to bools, broadcast as the binary kernels are."""
        bufs = [self.buf.get(i) for i in ins]
        y = self.v[o]
        if (len(ins) != 2 or any(b is None for b in bufs) or y.__class__ is not np.ndarray
                or y.dtype != _BOOL or bufs[0].dtype != bufs[1].dtype):
            return False
        dtype = bufs[0].dtype
        if node.op_type in _LOGIC:
            if dtype != _BOOL:
                return False
            code = _LOGIC[node.op_type]
        elif dtype in (_F32, _I64):
            code = _COMPARE[node.op_type] + (5 if dtype == _I64 else 0)
        else:
            return False
        merged = _geometry(bufs, y.shape)
        if merged is None:
            return False
        dst = self._out(o)
        if dst.size:
            self.ops.append(("compare", code, *bufs, dst, *map(list, zip(*merged))))
        return True

    def _where(self, ins, o: int, label) -> bool:
        """Where with a computed condition (a constant one is a move) on float32."""
        bufs = [self.buf.get(i) for i in ins]
        y = self.v[o]
        if (len(ins) != 3 or any(b is None for b in bufs) or bufs[0].dtype != _BOOL
                or y.__class__ is not np.ndarray or y.dtype != _F32
                or any(b.dtype != _F32 for b in bufs[1:])):
            return False
        c, a, b = bufs
        merged = _geometry((a, b, c), y.shape)
        if merged is None:
            return False
        dst = self._out(o)
        if dst.size:
            shape, sa, sb, sc = map(list, zip(*merged))
            self.ops.append(("where", c, a, b, dst, shape, sc, sa, sb))
        return True

    def _convert(self, i: int, o: int, code: Optional[int] = None) -> bool:
        """Cast between float32, int64 and bool (``code`` None), or Not."""
        x = self.buf.get(i)
        y = self.v[o]
        if x is None or y.__class__ is not np.ndarray or y.size != x.size:
            return False
        if code is None:
            code = _CONVERT.get((x.dtype, y.dtype))
        elif x.dtype != _BOOL or y.dtype != _BOOL:
            return False
        if code is None:
            return False
        self.ops.append(("convert", code, x, self._out(o)))
        return True

    def _unary(self, node, ins, o: int, label) -> bool:
        a = attrs(node)
        op = node.op_type
        code = _UNARY[op]
        alpha, beta = 0.0, 0.0
        if op == "Gelu":
            approximate = a.pop("approximate", "none")
            if approximate not in ("none", "tanh") or a or len(ins) != 1:
                return False
            if approximate == "tanh":
                code = _GELU_TANH
        elif op == "LeakyRelu":
            alpha = a.get("alpha", 0.01)
        elif op == "HardSigmoid":
            alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        elif op in ("Elu", "Celu", "ThresholdedRelu"):
            alpha = a.get("alpha", 1.0)
        elif op == "Selu":
            alpha = a.get("alpha", 1.67326319217681884765625)
            beta = a.get("gamma", 1.05070102214813232421875)
        elif op == "Clip":
            if self.opset < 11:
                alpha, beta = a.get("min", -np.inf), a.get("max", np.inf)
            else:
                bounds = []
                for j, default in ((1, -np.inf), (2, np.inf)):
                    if j < len(ins) and ins[j] != 1:
                        if ins[j] not in self.static:
                            return False
                        bounds.append(float(np.asarray(self.v[ins[j]]).reshape(-1)[0]))
                    else:
                        bounds.append(default)
                alpha, beta = bounds
        elif len(ins) != 1 or a:
            return False
        if op == "Relu" and self._relu_into_product(ins[0], o):
            return True
        bufs = self._f32(ins[:1], label)
        y = self.v[o]
        if bufs is None or y.__class__ is not np.ndarray or y.dtype != _F32 or y.size != bufs[0].size:
            return False
        self.ops.append(("unary", code, bufs[0], self._out(o), float(alpha), float(beta)))
        return True

    def _softmax(self, node, ins, o: int, label) -> bool:
        """Softmax / LogSoftmax as [outer, n, inner] rows: from opset 13 along one axis, before
        it over everything from the axis on (the input seen as 2-D there)."""
        xs = self._f32(ins, label)
        y = self.v[o]
        if xs is None or len(ins) != 1 or y.__class__ is not np.ndarray or y.dtype != _F32:
            return False
        x = xs[0]
        shape = x.shape
        axis = attrs(node).get("axis", -1 if self.opset >= 13 else 1)
        if y.shape != shape or (x.ndim and not -x.ndim <= axis < x.ndim):
            return False
        k = (axis + x.ndim if axis < 0 else axis) if x.ndim else 0   # 0-d: one row of one
        if self.opset >= 13:
            if not x.ndim:
                return False
            outer, n, inner = math.prod(shape[:k]), shape[k], math.prod(shape[k + 1:])
        else:
            outer, n, inner = math.prod(shape[:k]), math.prod(shape[k:]), 1
        self.ops.append(("softmax", int(node.op_type == "LogSoftmax"), x, self._out(o), outer,
                         n, inner))
        return True

    def _norm(self, node, ins, o: int, label, stats=(None, None)) -> bool:
        """LayerNormalization or InstanceNormalization: rows of contiguous elements
        normalised, then scaled and shifted in the same pass when the scale and bias are one
        value per element of a row or per row's channel; any other broadcast of them runs
        as binary kernels after it. ``stats``: the slots of LayerNormalization's Mean and
        InvStdDev (None: not kept)."""
        a = attrs(node)
        xs = self._f32(ins[:1], label)
        y = self.v[o]
        if (xs is None or y.__class__ is not np.ndarray or y.dtype != _F32
                or y.shape != xs[0].shape or xs[0].ndim > _MAXD):
            return False
        x = xs[0]
        params = []
        for j in (1, 2):
            if j < len(ins) and ins[j] != 1:
                p = self._f32(ins[j:j + 1], label)
                if p is None:
                    return False
                params.append(p[0])
            else:
                params.append(None)
        scale, bias = params
        if scale is None:
            return False
        eps = float(a.get("epsilon", 1e-5))
        if node.op_type == "InstanceNormalization":
            if x.ndim < 3 or bias is None or any(p.shape != (x.shape[1],) for p in params):
                return False
            rows, C = x.shape[0] * x.shape[1], x.shape[1]
            self.ops.append(("norm", x, self._out(o), rows, math.prod(x.shape[2:]), eps,
                             scale, bias, (C, 1, 0, 1, 0), None, None))
            return True
        if a.get("stash_type", 1) not in (1, 11):
            return False
        axis = a.get("axis", -1)
        if not -x.ndim <= axis < x.ndim:
            return False
        k = axis + x.ndim if axis < 0 else axis
        row = x.shape[k:]
        n = math.prod(row)
        rows = math.prod(x.shape[:k])
        for t in stats:
            want = None if t is None else self.v[t]
            if t is not None and (want.__class__ is not np.ndarray or want.dtype != _F32
                                  or want.size != rows):
                return False
        fused, after = [], []     # (param, column stride) applied in the pass; (code, param)
        for code, p in ((2, scale), (0, bias)):
            if p is None:
                fused.append((None, 0))
                continue
            try:
                if np.broadcast_shapes(p.shape, x.shape) != x.shape:
                    return False
                fits = np.broadcast_shapes(p.shape, row) == row
            except ValueError:
                return False
            if fits and p.size in (1, n) and not after:
                fused.append((p, 1 if p.size == n else 0))
            else:
                fused.append((None, 0))
                after.append((code, p))
        dst = self._out(o)
        self.ops.append(("norm", x, dst, rows, n, eps, fused[0][0], fused[1][0],
                         (1, 0, fused[0][1], 0, fused[1][1]),
                         *(None if t is None else self._out(t) for t in stats)))
        for code, p in after if x.size else ():
            self._broadcast(code, dst, p, o, x.shape, dst=dst)
        return True

    def _reduce(self, node, ins, o: int, label) -> bool:
        a = attrs(node)
        bufs = self._f32(ins[:1], label)
        y = self.v[o]
        if bufs is None or y.__class__ is not np.ndarray or y.dtype != _F32:
            return False
        x = bufs[0]
        axes = a.get("axes")
        if len(ins) > 1 and ins[1] != 1:
            if ins[1] not in self.static:
                return False
            axes = [int(t) for t in np.asarray(self.v[ins[1]]).reshape(-1)]
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return False
            axes = list(range(x.ndim))
        axes = sorted({ax + x.ndim if ax < 0 else ax for ax in axes})
        if x.size == 0 or any(not 0 <= ax < x.ndim for ax in axes):
            return False
        st = _strides(x.shape)
        kept = [d for d in range(x.ndim) if d not in axes]
        base = np.zeros([x.shape[d] for d in kept] or [1], np.int64)
        for j, d in enumerate(kept):
            shape = [1] * len(kept)
            shape[j] = x.shape[d]
            base = base + (np.arange(x.shape[d], dtype=np.int64) * st[d]).reshape(shape)
        rshape = [x.shape[d] for d in axes]
        rstride = [st[d] for d in axes]
        if base.size != y.size or len(rshape) > _MAXD:
            return False
        self.ops.append(("reduce", _REDUCE[node.op_type], x, self._out(o), base.reshape(-1),
                         rshape, rstride))
        return True

    def _dense(self, spec, i: int, o: int, label) -> bool:
        w, b, act, lo, top = spec
        bufs = self._f32([i], label)
        y = self.v[o]
        if bufs is None or y.__class__ is not np.ndarray or y.dtype != _F32:
            return False
        K = w.shape[0]
        x = bufs[0]
        if x.ndim < 1 or x.shape[-1] != K or not x.size:
            return False
        self.ops.append(("dense", x, np.ascontiguousarray(w, np.float32),
                         None if b is None else np.ascontiguousarray(b, np.float32).reshape(-1),
                         self._out(o), x.size // K, act))
        return True

    def _matmul(self, ins, o: int, label) -> bool:
        bufs = self._f32(ins, label)
        y = self.v[o]
        if bufs is None or y.__class__ is not np.ndarray or y.dtype != _F32 or not y.size:
            return False
        a, b = bufs
        if a.ndim < 2 or b.ndim < 1:
            return False
        if ins[1] in self.static and b.ndim == 2:
            K = b.shape[0]
            if a.shape[-1] != K:
                return False
            self.ops.append(("dense", a, b, None, self._out(o), a.size // K, 0))
            return True
        if b.ndim < 2:
            return False
        M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
        if b.shape[-2] != K or y.shape[-2:] != (M, N):
            return False
        bo = y.shape[:-2]
        na = np.arange(int(np.prod(a.shape[:-2], dtype=np.int64))).reshape(a.shape[:-2])
        nb = np.arange(int(np.prod(b.shape[:-2], dtype=np.int64))).reshape(b.shape[:-2])
        try:
            ia = np.broadcast_to(na, bo).reshape(-1)
            ib = np.broadcast_to(nb, bo).reshape(-1)
        except ValueError:
            return False
        offs = np.stack([ia * M * K, ib * K * N, np.arange(ia.size) * M * N], axis=1)
        self.ops.append(("matmul", a, b, self._out(o), offs, M, K, N))
        return True

    def _gemm(self, node, ins, o: int, label) -> bool:
        a = attrs(node)
        if (a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or len(ins) < 2
                or ins[1] not in self.static):
            return False
        bufs = self._f32(ins[:1], label)
        w = np.asarray(self.v[ins[1]])
        if bufs is None or w.dtype != _F32 or w.ndim != 2:
            return False
        w = np.ascontiguousarray(w.T if a.get("transB", 0) else w)
        N = w.shape[1]
        bias = None
        if len(ins) > 2 and ins[2] != 1:
            if ins[2] not in self.static or a.get("beta", 1.0) != 1.0:
                return False
            c = np.asarray(self.v[ins[2]], np.float32)
            if c.size not in (1, N) or (c.ndim == 2 and c.shape[0] != 1):
                return False
            bias = np.ascontiguousarray(np.broadcast_to(c.reshape(-1), (N,)))
        x = bufs[0]
        if x.ndim != 2 or x.shape[1] != w.shape[0]:
            return False
        self.ops.append(("dense", x, w, bias, self._out(o), x.shape[0], 0))
        return True

    # -- convolution as a gather and a product ---------------------------------------------
    def _conv(self, node, ins, o: int, label, relu: bool = False, w=None, bias=None) -> bool:
        """Conv / ConvTranspose (1-D or 2-D, any group, stride, dilation, pads): one whose
        output rows are long enough runs on conv2d.h's direct kernel (bias and ReLU fused);
        otherwise the input is gathered into columns [N, G, Cg*KH*KW, Ho*Wo] (zeros where
        the window leaves the input; for ConvTranspose, where the stride skips), then per
        group W_g [Cog, Cg*KH*KW] @ columns, then the bias. Checked against the traced
        output."""
        a = attrs(node)
        transpose = node.op_type == "ConvTranspose"
        xs = self._f32(ins[:1], label)
        y = self.v[o]
        if w is None:      # a node's own inputs (a fused chain passes its constants)
            if len(ins) < 2 or ins[1] not in self.static:
                return False
            w = self.v[ins[1]]
            if len(ins) > 2 and ins[2] != 1:
                if ins[2] not in self.static:
                    return False
                bias = self.v[ins[2]]
        auto = a.get("auto_pad", "NOTSET")
        if (xs is None or y.__class__ is not np.ndarray or y.dtype != _F32
                or auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")
                or (transpose and auto != "NOTSET" and auto != "VALID") or "output_shape" in a):
            return False
        x = xs[0]
        w = np.asarray(w)
        bias = None if bias is None else np.asarray(bias)
        nsp = x.ndim - 2
        if nsp not in (1, 2) or w.dtype != _F32 or w.ndim != x.ndim or y.ndim != x.ndim:
            return False
        G = int(a.get("group", 1))
        N, C = x.shape[:2]
        strides = list(a.get("strides", [1] * nsp))
        dil = list(a.get("dilations", [1] * nsp))
        if auto == "NOTSET":
            pads = list(a.get("pads", [0] * 2 * nsp))
        elif auto == "VALID":
            pads = [0] * 2 * nsp
        elif len(strides) != nsp or len(dil) != nsp:
            return False
        else:      # the traced input's shape fixes them
            pads = same_pads(x.shape[2:], w.shape[2:], strides, dil, auto == "SAME_UPPER")
        if nsp == 1:       # as 2-D with a height of one
            x4, w4, y4 = x.reshape(N, C, 1, -1), w[:, :, None, :], (y.shape[0], y.shape[1], 1, y.shape[2])
            pads, strides, dil = [0, pads[0], 0, pads[1]], [1] + strides, [1] + dil
        else:
            x4, w4, y4 = x, w, y.shape
        if len(pads) != 4 or len(strides) != 2 or len(dil) != 2 or G < 1 or C % G:
            return False
        H, W = x4.shape[2:]
        Ho, Wo = y4[2:]
        KH, KW = w4.shape[2:]
        Cg = C // G
        if transpose:
            if w4.shape[0] != C:
                return False
            Cog = w4.shape[1]
            A = w4.reshape(G, Cg, Cog, KH, KW).transpose(0, 2, 1, 3, 4).reshape(G, Cog, Cg * KH * KW)
        else:
            if w4.shape[1] != Cg or w4.shape[0] % G:
                return False
            Cog = w4.shape[0] // G
            A = w4.reshape(G, Cog, Cg * KH * KW)
        Co = G * Cog
        if y4[:2] != (N, Co) or (bias is not None and bias.size != Co):
            return False
        n = np.arange(N).reshape(N, 1, 1, 1, 1, 1, 1)
        c = (np.arange(G).reshape(1, G, 1, 1, 1, 1, 1) * Cg
             + np.arange(Cg).reshape(1, 1, Cg, 1, 1, 1, 1))
        kh = np.arange(KH).reshape(1, 1, 1, KH, 1, 1, 1)
        kw = np.arange(KW).reshape(1, 1, 1, 1, KW, 1, 1)
        oh = np.arange(Ho).reshape(1, 1, 1, 1, 1, Ho, 1)
        ow = np.arange(Wo).reshape(1, 1, 1, 1, 1, 1, Wo)
        if transpose:
            th, tw = oh + pads[0] - kh * dil[0], ow + pads[1] - kw * dil[1]
            ih, iw = th // strides[0], tw // strides[1]
            ok = (th % strides[0] == 0) & (tw % strides[1] == 0)
        else:
            ih, iw = oh * strides[0] - pads[0] + kh * dil[0], ow * strides[1] - pads[1] + kw * dil[1]
            ok = True
        ok = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        index = ((n * C + c) * H + ih) * W + iw
        index, ok = np.broadcast_arrays(index, ok)
        codes = np.where(ok, _CODE + index, 2 * _CODE).reshape(-1).astype(np.int64)
        K, P = Cg * KH * KW, Ho * Wo
        A = np.ascontiguousarray(A, np.float32)
        # the lowering must give the traced output
        traced = np.asarray(self.v[ins[0]]).reshape(-1)      # the buffer is not filled yet
        col = np.where(ok, traced[np.where(ok, index, 0)], 0).reshape(N, G, K, P)
        with np.errstate(all="ignore"):
            want = np.einsum("gmk,ngkp->ngmp", A, col).reshape(y.shape)
            if bias is not None:
                want = want + bias.reshape([Co] + [1] * nsp)
            if relu:
                want = np.maximum(want, 0)
        scale = max(1.0, float(np.max(np.abs(y), initial=0.0)))
        if not np.allclose(want, y, rtol=1e-4, atol=1e-5 * scale):
            return False
        dst = self._new(o, y.shape, _F32)
        # a pointwise one (1x1, unit strides, no pads) is a plain product: the gather
        # below is then a copy, and the product runs faster than the direct kernel
        pointwise = KH == KW == 1 and strides == [1, 1] and not any(pads)
        if Wo >= _DIRECT_MIN_WO and KW <= _DIRECT_MAX_KW and not pointwise:
            conv = self._direct_conv(a, transpose, nsp, w4, bias, strides, dil, pads, G, relu)
            if conv is not None and conv.out_shape(H, W) == (Ho, Wo):
                self.ops.append(("conv2d", conv, x, dst, (N, H, W), int(relu)))
                return True
        zero = np.zeros(1, _F32)
        if Cog >= P:
            # rows of the window per output position, grouped [G, N*P, K], then dense.h once
            # per group: rows @ W_g^T [K, Cog] (+ bias, Relu), vectorised over the channels
            rows = codes.reshape(N, G, K, P).transpose(1, 0, 3, 2).reshape(-1)
            columns = np.zeros(rows.size, _F32)
            self.ops.append(("move", columns, [x.reshape(-1), zero], _runs(rows)))
            direct = G == 1 and P == 1          # [N, Cog] is already y's layout
            out = dst if direct else np.zeros((G, N, P, Cog), _F32)
            flat = out.reshape(G, N * P * Cog)
            cols = columns.reshape(G, N * P * K)
            for g in range(G):
                b = None if bias is None else np.ascontiguousarray(bias[g * Cog:(g + 1) * Cog],
                                                                    np.float32)
                self.ops.append(("dense", cols[g], np.ascontiguousarray(A[g].T), b, flat[g],
                                 N * P, 1 if relu else 0))
            if not direct:
                order = np.arange(out.size, dtype=np.int64).reshape(G, N, P, Cog)
                self.ops.append(("move", dst, [out.reshape(-1)],
                                 _runs(_CODE + order.transpose(1, 0, 3, 2).reshape(-1))))
            return True
        columns = np.zeros(codes.size, _F32)
        self.ops.append(("move", columns, [x.reshape(-1), zero], _runs(codes)))
        g = np.arange(G)
        offs = np.stack([np.tile(g * Cog * K, N), np.arange(N * G) * K * P,
                         np.arange(N * G) * Cog * P], axis=1)
        # the bias starts each output channel's sums and ReLU is applied row by row (A's
        # rows are the channels), not as two more passes over the output
        rows_bias = None if bias is None else np.ascontiguousarray(bias, np.float32).reshape(-1)
        self.ops.append(("matmul", A, columns, dst, offs, Cog, K, P, rows_bias, int(relu)))
        return True

    @staticmethod
    def _direct_conv(a, transpose, nsp, w4, bias, strides, dil, pads, G, relu):
        """The direct kernel of a Conv (2-D geometry: a 1-D one has a height of one), or of a
        ConvTranspose as a convolution of its input spread out by its strides, with each
        group's weights transposed and flipped and pads the kernel's reach minus its pads
        (output_padding adds to the end); None when such pads would be negative."""
        if not transpose:
            return Conv2d(w4, bias, strides, dil, pads, G, relu)
        extra = list(a.get("output_padding", [0] * nsp))
        extra = [0] + extra if nsp == 1 else extra
        C, Cog, KH, KW = w4.shape
        if len(extra) != 2:
            return None
        reach = [(KH - 1) * dil[0], (KW - 1) * dil[1]]
        cpads = [reach[0] - pads[0], reach[1] - pads[1], reach[0] - pads[2] + extra[0],
                 reach[1] - pads[3] + extra[1]]
        if min(cpads) < 0:
            return None
        w = (w4.reshape(G, C // G, Cog, KH, KW).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
             .reshape(G * Cog, C // G, KH, KW))
        return Conv2d(w, bias, (1, 1), dil, cpads, G, relu, upsample=strides)

    def _relu_into_product(self, i: int, o: int) -> bool:
        """Relu of the convolution product planned just before, whose output nothing else
        reads: the product applies it to each row as the row is stored (one pass less over
        the output), and ``o`` is that buffer."""
        last = self.ops[-1] if self.ops else None
        src = self.buf.get(i)
        # the product's or the direct kernel's output, and where its ReLU flag is
        at = {"matmul": (3, 9, 10), "conv2d": (3, 5, 6)}.get(last[0] if last else None)
        if (at is None or len(last) != at[2] or last[at[1]] or src is None
                or last[at[0]] is not src or self._reads().get(i, 0) != 1
                or i in self.plan.output_slots or self.v[o].__class__ is not np.ndarray
                or self.v[o].shape != src.shape or self.v[o].dtype != src.dtype):
            return False
        self.ops[-1] = last[:at[1]] + (1,)
        self.buf[o] = src
        self.table[o] = src
        return True

    def _reads(self) -> dict:
        """{slot: how many steps read it}, over the plan and its If branches (a branch's
        output moved out counts as a read)."""
        if self._read_counts is None:
            counts: dict = {}
            todo = [self.plan]
            while todo:
                plan = todo.pop()
                for step, (ins, _) in zip(plan.steps, plan.io):
                    for slot in ins:
                        counts[slot] = counts.get(slot, 0) + 1
                    branches = getattr(step, "branches", None)
                    for sub, moves in (branches[1].values() if branches else ()):
                        todo.append(sub)
                        for _, slot in moves:
                            counts[slot] = counts.get(slot, 0) + 1
            self._read_counts = counts
        return self._read_counts

    def _batchnorm(self, node, ins, o: int, label) -> bool:
        """Inference BatchNormalization as x * a + b per channel, a and b folded once."""
        a = attrs(node)
        xs = self._f32(ins[:1], label)
        if (xs is None or len(ins) != 5 or any(i not in self.static for i in ins[1:])
                or a.get("training_mode", 0)):
            return False
        x = xs[0]
        scale, bias, mean, var = (np.asarray(self.v[i], np.float64) for i in ins[1:])
        if x.ndim < 2 or any(t.shape != (x.shape[1],) for t in (scale, bias, mean, var)):
            return False
        mul = scale / np.sqrt(var + a.get("epsilon", 1e-5))
        add = bias - mean * mul
        shape = [x.shape[1]] + [1] * (x.ndim - 2)
        mul, add = (np.ascontiguousarray(t.reshape(shape), np.float32) for t in (mul, add))
        if not self._broadcast(2, x, mul, o, x.shape):
            return False
        dst = self.buf[o]
        return self._broadcast(0, dst, add, o, x.shape, dst=dst)

