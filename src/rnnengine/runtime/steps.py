"""The steps of a Plan (``graph``) that are not plain operators: recurrent nodes on
rnnengine's kernels, ``If`` and ``Loop``; and ``bind``, which turns any operator function
into a step over the value table.

A step is a closure ``step(v)`` over a value table ``v`` (a list indexed by slot): it reads
its inputs' slots and writes its outputs' slots. Slot 0 holds the run's context: None for
``InferenceSession.run``; for a session stream that carries recurrent state along the time
axis, a dict ``{RecurrentStep: rnnengine.Stream}`` (``SessionStream``).
"""
from __future__ import annotations

import threading
from typing import Callable, List

import numpy as np
import onnx

from ..core import kernels as _kernels
from ..errors import ModelError
from ..onnx.fold import Scope, attrs, node_label
from ..loaders.onnx import RECURRENT as _RECURRENT_KINDS, Found, node_layer
from ..core.checks import MAX_ELEMENTS
from ..ops import MAX_ELEMENTS as BUDGET, check_size

RECURRENT = frozenset(_RECURRENT_KINDS)
_F32 = np.dtype(np.float32)
# Loop trips in one run, all Loops counted together (nested ones multiply): a hostile or
# broken graph must not hang the host. Read at run time (tests lower it).
MAX_LOOP_ITERATIONS = 1 << 24
CONTROL = frozenset({"If", "Loop"})

# The trips of the current run on this thread (runs on different threads are independent;
# a run never moves between threads). ``RUN_BUDGET`` brackets a whole-graph run; a Loop
# called outside one (a stream's own step list) counts from its outermost Loop.
_TRIPS = threading.local()


class RunBudget:
    """``with RUN_BUDGET:`` one run of a whole graph: one Loop-trip count for all of it."""

    def __enter__(self):
        _TRIPS.count, _TRIPS.in_run = 0, True

    def __exit__(self, *exc):
        _TRIPS.in_run = False


RUN_BUDGET = RunBudget()


def _trip(label: str) -> None:
    count = getattr(_TRIPS, "count", 0) + 1
    _TRIPS.count = count
    if count > MAX_LOOP_ITERATIONS:
        raise ValueError(f"Loop node {label!r} ran {count - 1:,} iterations in this run "
                         "(all Loops counted together, nested ones too); the limit is "
                         f"{MAX_LOOP_ITERATIONS:,} per run: refused")


def bind(fn: Callable, ins: List[int], outs: List[int]) -> Callable:
    """``fn(*inputs) -> tuple of outputs`` as a step over slots ``ins`` -> ``outs``.
    The common arities get their own closure: no list building on the hot path.
    ``step.fn`` is ``fn`` (the compiled stream step reads a dense head's weights there)."""
    step = _bind(fn, ins, outs)
    step.fn = fn
    return step


def _bind(fn: Callable, ins: List[int], outs: List[int]) -> Callable:
    if len(outs) == 1:
        o = outs[0]
        if len(ins) == 1:
            a = ins[0]

            def step(v):
                v[o] = fn(v[a])[0]
        elif len(ins) == 2:
            a, b = ins

            def step(v):
                v[o] = fn(v[a], v[b])[0]
        else:
            def step(v):
                v[o] = fn(*[v[i] for i in ins])[0]
        return step

    def step_many(v):
        for o, value in zip(outs, fn(*[v[i] for i in ins])):
            v[o] = value
    return step_many


def lookup_step(table: np.ndarray, i: int, o: int, general: Callable) -> Callable:
    """Gather on axis 0 of a constant ``table`` (an embedding) by the indices in slot ``i``:
    one ``take`` for an integer index array of rank >= 1 in range (ONNX and ``take`` agree
    on negative indices); anything else runs the ``general`` operator step, which also
    reports the error."""
    n = table.shape[0] if table.ndim else 0

    def step(v):
        idx = v[i]
        if idx.__class__ is np.ndarray and idx.ndim and idx.dtype.kind in "iu" and n:
            try:
                v[o] = table.take(idx, axis=0)
                return
            except IndexError:
                pass
        general(v)
    step.lookup = (table, i, o)          # for the compiled stream step (stream_runner)
    return step


# --- recurrent nodes ---------------------------------------------------------------------

class RecurrentStep:
    """One LSTM/GRU/RNN node on rnnengine's kernels. Inputs X, sequence_lens, initial_h,
    initial_c are graph values read at run time; the weights are folded at load.

    ONNX shapes (layout 0; layout 1 puts the batch first): X ``[T, N, I]``, initial state
    ``[D, N, H]``, Y ``[T, D, N, H]``, Y_h/Y_c ``[D, N, H]``. The engine's Model gives
    y ``(T, N, D*H)``, so Y is a view of it."""

    def __init__(self, node: onnx.NodeProto, scope: Scope, loaded, ins: List[int],
                 outs: List[int]):
        found = Found(node, scope)
        self.label = found.qualname
        self.node = node
        layer = node_layer(found, loaded.folder, loaded.where)
        self.layout = int(attrs(node).get("layout", 0))
        self.kind = layer.kind
        self.D = layer.num_directions
        self.H = layer.hidden_size
        self.Hout = layer.output_size
        self.I = layer.input_size
        self.model = loaded.model_factory([layer], self.layout == 1)
        self.cells = self.model.cells
        self.widest = max(max(k.gates * k.hidden_size for k in self.cells), self.D * self.Hout)
        ins = list(ins) + [1] * (8 - len(ins))        # slot 1 is always None
        self.x, self.lens, self.h0, self.c0 = ins[0], ins[4], ins[5], ins[6]
        outs = list(outs) + [2] * (3 - len(outs))     # slot 2 swallows unused outputs
        self.y, self.yh, self.yc = outs[0], outs[1], outs[2]

    def _state(self, v, N: int):
        h0, c0 = v[self.h0], v[self.c0]
        if h0 is None and c0 is None:
            return None
        shape = (self.D, N, self.Hout)
        if h0 is None:
            h0 = np.zeros(shape, np.float32)
        elif self.layout:
            h0 = np.swapaxes(h0, 0, 1)
        if self.kind != "lstm":
            return h0
        if c0 is None:
            c0 = np.zeros((self.D, N, self.H), np.float32)
        elif self.layout:
            c0 = np.swapaxes(c0, 0, 1)
        return (h0, c0)

    def step(self, v: list) -> None:
        x = v[self.x]
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != self.I:
            shape = getattr(x, "shape", None)
            raise ValueError(f"recurrent node {self.label!r}: X must be a 3-D tensor with "
                             f"{self.I} features on its last axis; got shape {shape}")
        N = x.shape[0] if self.layout else x.shape[1]
        context = v[0]
        if context is not None:
            stream = context.get(self)
            if stream is not None:
                y, h, c = stream.advance(self, x, v)
                self._write(v, x, y, h, c)
                return
        lens = v[self.lens]
        if (lens is None and not self.layout and x.dtype == np.float32
                and x.shape[0] * N * self.widest < MAX_ELEMENTS):
            # The common case straight into the kernel: shapes are checked above, the
            # state is copied (the kernel writes the final state over it).
            y = np.empty((x.shape[0], N, self.D * self.Hout), np.float32)
            h = self._initial(v[self.h0], (self.D, N, self.Hout))
            c = self._initial(v[self.c0], (self.D, N, self.H)) if self.kind == "lstm" else None
            _kernels.run_stack(self.cells, self.D, np.ascontiguousarray(x), None, h, c, y,
                               self.model.threads)
            self._write(v, x, y, h, c)
            return
        y, state = self.model.run(x, self._state(v, N), lengths=lens)
        if self.kind == "lstm":
            h, c = state
        else:
            h, c = state, None
        self._write(v, x, y, h, c)

    def _initial(self, value, shape) -> np.ndarray:
        if value is None:
            return np.zeros(shape, np.float32)
        if value.shape != shape:
            raise ValueError(f"recurrent node {self.label!r}: initial state must have shape "
                             f"{shape}; got {value.shape}")
        # A copy: the kernel writes the final state over it. Subnormal values in it (a
        # sigmoid far below zero gives ~1e-39) cost nothing: the kernels run with x86's
        # FTZ/DAZ on (include/rnnengine/fpenv.h), so no flush here (it took ~2 us per state).
        return np.array(value, np.float32, order="C")

    def _write(self, v, x, y, h, c) -> None:
        dtype = x.dtype
        if dtype is not _F32:   # ORT computes LSTM in the input's float type
            y, h = y.astype(dtype), h.astype(dtype)
            c = None if c is None else c.astype(dtype)
        D, Hout = self.D, self.Hout
        if self.layout:
            N, T = y.shape[0], y.shape[1]
            v[self.y] = y.reshape(N, T, D, Hout)
            v[self.yh] = np.swapaxes(h, 0, 1)
            v[self.yc] = None if c is None else np.swapaxes(c, 0, 1)
        else:
            T, N = y.shape[0], y.shape[1]
            # [T, N, D*H] -> [T, D, N, H]; with one direction the same memory, one reshape
            v[self.y] = (y.reshape(T, 1, N, Hout) if D == 1 else
                         y.reshape(T, N, D, Hout).transpose(0, 2, 1, 3))
            v[self.yh] = h
            v[self.yc] = c


# --- control flow ------------------------------------------------------------------------

def _condition(value, what: str) -> bool:
    if not isinstance(value, np.ndarray) or value.size != 1:
        shape = getattr(value, "shape", None)
        raise ValueError(f"{what} must be a tensor with exactly one element (a scalar "
                         f"bool); got shape {shape}")
    return bool(value.reshape(-1)[0])


def if_step(node, ins, outs, subs: dict, where: str, stable: bool = False) -> Callable:
    """``If``: the branch is chosen at run time from the condition, as ONNX Runtime does.
    The branches share the caller's value table (``graph.Plan``): running one is running its
    steps and moving its outputs. ``stable``: the condition's slot holds a constant or a
    memoised shape computation, whose arrays are never written, so the same array object
    picks the same branch again (a stream's fixed sample rate or state shape: the check runs
    once per stream, not every step)."""
    then_plan, else_plan = subs.get("then_branch"), subs.get("else_branch")
    label = node_label(node)
    if then_plan is None or else_plan is None or not ins:
        raise ModelError(f"{where}: If node {label!r} needs a condition input and both "
                         "then_branch and else_branch")
    for plan in (then_plan, else_plan):
        if len(plan.output_slots) != len(outs):
            raise ModelError(f"{where}: If node {label!r} has {len(outs)} outputs but a "
                             f"branch has {len(plan.output_slots)}")
    cond = ins[0]
    what = f"the condition {node.input[0]!r} of If node {label!r}"
    branches = {True: (then_plan, list(zip(outs, then_plan.output_slots))),
                False: (else_plan, list(zip(outs, else_plan.output_slots)))}
    last = [(None, None)]   # (condition array, branch): one tuple, replaced whole (threads)

    def step(v):
        c = v[cond]
        seen, branch = last[0]
        if c is not seen or not stable:
            branch = branches[_condition(c, what)]
            if stable:
                last[0] = (c, branch)
        plan, moves = branch
        plan.execute(v)
        for o, s in moves:
            v[o] = v[s]
    step.branches = (cond, branches)    # the executor inlines a constant condition's branch
    return step


def loop_step(node, ins, outs, subs: dict, where: str) -> Callable:
    """``Loop``: ONNX semantics (max trip count M and/or condition; loop-carried values;
    scan outputs stacked on a new first axis)."""
    body = subs.get("body")
    label = node_label(node)
    if body is None or len(ins) < 2:
        raise ModelError(f"{where}: Loop node {label!r} needs inputs M, cond and a body")
    carried = ins[2:]
    n_carried = len(carried)
    n_scan = len(body.output_slots) - 1 - n_carried
    if n_scan < 0 or len(body.input_slots) != 2 + n_carried:
        raise ModelError(f"{where}: Loop node {label!r}: body has {len(body.input_slots)} "
                         f"inputs and {len(body.output_slots)} outputs for {n_carried} "
                         "loop-carried values")
    m_slot, cond_slot = ins[0], ins[1]
    what = f"the condition of Loop node {label!r}"

    def step(v):
        depth = getattr(_TRIPS, "depth", 0)
        if depth == 0 and not getattr(_TRIPS, "in_run", False):
            _TRIPS.count = 0
        _TRIPS.depth = depth + 1
        try:
            run(v)
        finally:
            _TRIPS.depth = depth

    def run(v):
        trips = v[m_slot]
        trips = None if trips is None else int(np.asarray(trips).reshape(-1)[0])
        keep = True if v[cond_slot] is None else _condition(v[cond_slot], what)
        state = [v[s] for s in carried]
        scans = [[] for _ in range(n_scan)]
        stacked = [0] * n_scan          # elements each scan output will hold
        i = 0
        while keep and (trips is None or i < trips):
            _trip(label)
            result = body.run_sub(v, [np.array(i, np.int64), np.array(keep)] + state)
            keep = _condition(result[0], what)
            state = result[1:1 + n_carried]
            for k in range(n_scan):
                y = np.asarray(result[1 + n_carried + k])
                stacked[k] += y.size
                if stacked[k] > BUDGET:
                    check_size((i + 1,) + y.shape, f"Loop node {label!r}: scan output {k}",
                               y.itemsize)
                scans[k].append(y)
            i += 1
        values = state + [np.stack(s) if s else np.zeros((0,), np.float32) for s in scans]
        for o, value in zip(outs, values):
            v[o] = value
    return step
