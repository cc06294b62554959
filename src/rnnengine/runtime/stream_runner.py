"""A session stream's step compiled to one C loop (``_plan.StepRunner``).

Why: with the state kept inside the recurrent kernels (``stream_plan.ElidedPlan``), what
was left of a streamed step on model (a) H=16 was 1.3 us of native calls in 5.2 us, and on
the DTLN-shaped model 15 of 21 us (bench/session_bounds.py, one loaded run): the rest was a
Python closure per operator, the plan's loop, the lock wrapper, the value table and the
output list. The runner removes all of it: one call checks each feed's shape and dtype
against the ones it was built for, allocates the outputs and calls the operators from C.

How: it is built from one real step of the general path, traced (``compile_runner``): with
the feeds' shapes and dtypes fixed, every value of the step has a fixed shape, because each
operator the runner covers computes its output's shape from its inputs' shapes alone:

* a recurrent node whose final state nobody reads (one timestep, layout 0) -> the very
  ``StreamCore`` its ``Stream`` holds, so the state, ``stream.state``, export and import are
  unchanged;
* a compiled dense head (``ops.fusion.compiled_head``) -> the same ``dense.h`` call with
  the same weights;
* an embedding lookup (``steps.lookup_step``) -> a row copy per index;
* a view step (Squeeze/Unsqueeze/Reshape/Slice/Transpose... ``graph_views``) that was seen
  to give a C-contiguous view of its whole C-contiguous input -> nothing: its output shares
  the input's buffer (as ``stream_plan.absorb_views`` reasons, a view's result depends on
  its input's shape only). Unpacking and packing the state never run (ElidedPlan).

Each operator does exactly what the general path does on the same values, so results are
bit-identical. A plan with any other step is not compiled (``compile_runner`` says which
step); the stream then keeps its general path, whose operators are native too.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ._plan import StepRunner


class Uncovered(Exception):
    """A step or value the runner does not take; the message names it."""


class _Builder:
    """Buffers of the compiled step: one per value that owns memory (a feed, a constant or
    fixed feed, an operator's output); views share their source's."""

    def __init__(self, plan, v: list, fixed_slots: set):
        self.plan, self.v, self.fixed_slots = plan, v, fixed_slots
        self.info: Dict[int, Tuple[int, tuple, np.dtype]] = {}   # slot -> (buffer, shape, dtype)
        self.kind: List[str] = []                                # "feed" | "fixed" | "made"
        self.fixed: Dict[int, np.ndarray] = {}
        self.size: Dict[int, int] = {}                           # made buffer -> bytes
        self.feeds: list = []
        self.ops: list = []

    def _new(self, kind: str) -> int:
        self.kind.append(kind)
        return len(self.kind) - 1

    def feed(self, name: str, slot: int, value) -> None:
        if value.__class__ is not np.ndarray:
            raise Uncovered(f"feed {name!r} is not an ndarray")
        buf = self._new("feed")
        self.feeds.append((name, buf, value.shape, value.dtype))
        self.info[slot] = (buf, value.shape, value.dtype)

    def source(self, slot: int) -> Tuple[int, tuple, np.dtype]:
        """The buffer an operator reads ``slot`` from."""
        if slot in self.info:
            return self.info[slot]
        value = self.v[slot]
        constant = self.plan.template[slot] is not None or slot in self.fixed_slots
        if not constant or not isinstance(value, np.ndarray):
            raise Uncovered(f"value {self._name(slot)!r} is not computed by a compiled step")
        buf = self._new("fixed")
        self.fixed[buf] = np.ascontiguousarray(value)
        self.info[slot] = (buf, value.shape, value.dtype)
        return self.info[slot]

    def made(self, slot: int, shape: tuple, dtype) -> int:
        """A new buffer for an operator's output ``slot``, which the trace must show with
        ``shape`` and ``dtype``."""
        value = self.v[slot]
        if (value.__class__ is not np.ndarray or value.shape != tuple(shape)
                or value.dtype != dtype):
            raise Uncovered(f"value {self._name(slot)!r} was traced as "
                            f"{getattr(value, 'shape', None)}, not {tuple(shape)} {dtype}")
        buf = self._new("made")
        self.size[buf] = value.nbytes
        self.info[slot] = (buf, value.shape, value.dtype)
        return buf

    def _name(self, slot: int) -> str:
        return next((n for n, s in self.plan.slots.items() if s == slot), f"#{slot}")

    # -- the operators ---------------------------------------------------------------------
    def recurrent(self, rec, carrier) -> None:
        stream = carrier.streams.get(rec)
        if rec.layout or stream is None or (carrier.want is not None and rec in carrier.want):
            raise Uncovered(f"recurrent node {rec.label!r} is not a lean one-step node")
        N = stream.batch
        buf, shape, dtype = self.source(rec.x)
        if dtype != np.float32 or shape != (1, N, rec.I):
            raise Uncovered(f"recurrent node {rec.label!r}: X traced as {shape} {dtype}")
        dst = self.made(rec.y, (1, 1, N, rec.Hout), np.float32)
        self.ops.append(("recurrent", stream.core, buf, dst))

    def dense(self, spec, ins: list, outs: list, label: str) -> None:
        w, b, act, lo, top = spec
        buf, shape, dtype = self.source(ins[0])
        K, N = w.shape
        if dtype != np.float32 or not lo <= len(shape) <= top or shape[-1] != K:
            raise Uncovered(f"{label}: input traced as {shape} {dtype}")
        dst = self.made(outs[0], shape[:-1] + (N,), np.float32)
        self.ops.append(("dense", w, b, act, int(np.prod(shape[:-1], dtype=np.int64)), buf,
                         dst))

    def gather(self, table: np.ndarray, i: int, o: int, label: str) -> None:
        buf, shape, dtype = self.source(i)
        if (self.kind[buf] == "made" or dtype not in (np.int64, np.int32) or not shape
                or not table.ndim or not table.shape[0]):
            raise Uncovered(f"{label}: indices traced as {shape} {dtype}")
        dst = self.made(o, shape + table.shape[1:], table.dtype)
        self.ops.append(("gather", table, int(np.prod(shape, dtype=np.int64)), dtype, buf, dst))

    def view(self, src: int, out: int, label: str) -> None:
        x, y = self.v[src], self.v[out]
        if not (x.__class__ is np.ndarray and y.__class__ is np.ndarray and x.size
                and x.size == y.size and x.dtype == y.dtype and x.flags.c_contiguous
                and y.flags.c_contiguous
                and x.__array_interface__["data"][0] == y.__array_interface__["data"][0]):
            raise Uncovered(f"{label} is not a reshape of its whole input")
        self.info[out] = (self.source(src)[0], y.shape, y.dtype)


def compile_runner(sess, elided, carrier, steps: list, v: list, feeds: dict, fixed: dict,
                   keep: List[int], lock, fallback: Callable
                   ) -> Tuple[Optional[StepRunner], Optional[str]]:
    """(runner, None), or (None, why not) when a step or value is not covered.

    ``steps``: ``elided.lean_run(carrier)``, just run on table ``v`` for ``feeds`` (the
    step feeds, {name: array}) and the stream's ``fixed`` feeds; ``keep``: indices of the
    returned outputs, in order; ``lock`` and ``fallback``: see ``StepRunner``."""
    plan = elided.plan

    def slot(name):
        return plan.input_slots[sess.input_index[name]]

    b = _Builder(plan, v, {slot(n) for n in fixed})
    kept = [plan.output_slots[k] for k in keep]
    try:
        for name, value in feeds.items():
            b.feed(name, slot(name), value)
        for j, (step, k) in enumerate(zip(steps, elided.run_steps)):
            ins, outs = plan.io[k]
            label = plan.labels[k]
            dense = getattr(getattr(step, "fn", None), "dense", None)
            if j in elided.rec_at:
                b.recurrent(elided.rec_at[j], carrier)
            elif getattr(step, "view_of", None) is not None:
                b.view(step.view_of, outs[0], label)
            elif dense is not None:
                b.dense(dense, ins, outs, label)
            elif getattr(step, "lookup", None) is not None:
                table, i, o = step.lookup
                b.gather(table, i, o, label)
            else:
                raise Uncovered(f"{label} is not an operator the compiled step runs")
        outputs, used = [], set()
        for slot in kept:
            buf, shape, dtype = b.source(slot) if slot in b.info else (None, None, None)
            if buf is None or b.kind[buf] != "made" or buf in used:
                raise Uncovered(f"output {b._name(slot)!r} is not computed by its own "
                                "compiled operator")
            used.add(buf)
            outputs.append((buf, shape, dtype))
    except Uncovered as e:
        return None, str(e)
    for buf, nbytes in b.size.items():
        if buf not in used:
            b.fixed[buf] = np.empty(max(nbytes, 1), np.uint8)
    label = ", ".join(op[0] for op in b.ops)
    runner = StepRunner(b.feeds, outputs, b.ops, len(b.kind), b.fixed, lock, fallback, label)
    return runner, None
