"""A whole model's call compiled for one signature of feed shapes: a flat list of C operators
(``_exec.Runner``) over buffers allocated once.

Why: a streaming model's step is hundreds of tiny operators (GTCRN: 522 planned steps, most
of them on tensors of a few hundred elements); dispatching each from Python costs more than
its arithmetic. With the feeds' shapes fixed, everything that depends only on shapes is a
constant, every value has a fixed shape, and each operator can be planned once:

* values computed from constants and shapes only (``Shape`` chains, the plan's memoised
  shape clusters) are taken from the traced call as constants;
* Reshape/Squeeze/Unsqueeze/Flatten/Identity are the same buffer under another shape;
* data movement (Transpose, Slice, Concat, Split, Pad, Expand, Tile, Gather/ScatterND with
  constant indices, Where with a constant condition, ...) becomes an index map: the very
  operator the general path runs is applied once to arrays of element codes, and the map it
  returns, compressed into strided runs, is what the C kernel copies every call;
* element-wise arithmetic (broadcast strides fixed), activations (the recurrent kernels'
  own, through the active ISA's table; Gelu, HardSwish, Mish, Sin, Floor, ...), comparisons
  and boolean logic, Where on a computed condition, Cast between float32, int64 and bool,
  reductions, Softmax/LogSoftmax on any axis, Layer-/Instance-/BatchNormalization,
  MatMul/Gemm and Conv/ConvTranspose (a direct convolution over output rows, or for short
  rows a window gather and a product; bias and a following Relu fused) run as C kernels
  (``include/rnnengine/exec.h``, ``dense.h``, ``conv2d.h``; ``lowering.Lowering`` plans
  them);
* LSTM/GRU/RNN nodes run on the recurrent kernels: one timestep one way on a stream core
  (``_kernels.StreamCore``), anything longer as one sequence run (``_kernels.SequenceCore``),
  their state copied in and out of buffers;
* an ``If`` whose condition is a constant runs its chosen branch inline;
* every other step is called as the general path calls it, on arrays that are views of the
  buffers (``Program.called`` names them).

The program is checked once against the traced call it was built from (same feeds, every
output within float32 rounding); if it disagrees, or a step cannot be planned, the session
keeps the general path for that signature (``Program.build`` returns the reason).

A program holds no state between calls: feeds are copied in, outputs copied out, so a call
that fails changes nothing the caller sees, and no output aliases a buffer or a feed.
"""
from __future__ import annotations

import threading
from typing import Dict, List, Optional, Tuple

import numpy as np

from ._exec import Runner
from .lowering import RANDOM, Lowering

class NotPlanned(Exception):
    """A step or value the program does not take; the message names it."""


class Program:
    """Build with ``Program.build``; ``run(feeds)`` -> every graph output (new arrays)."""

    def __init__(self, runner: Runner, feeds: Dict[str, np.ndarray], outputs: list,
                 called: List[str]):
        self.runner = runner
        self.called = called           # labels of the steps called as the general path runs them
        self.lock = threading.Lock()   # one call at a time: the buffers are the program's
        self._feeds = feeds            # name -> the buffer it is copied into
        self._bufs = list(feeds.values())
        self._outputs = outputs        # graph output -> the buffer holding it

    @property
    def kinds(self) -> List[str]:
        return self.runner.kinds

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """The graph's outputs for ``feeds`` (which must have the shapes and dtypes of the
        call the program was built from: ``session.programs_key``)."""
        return self.runner.run_fed([feeds[name] for name in self._feeds], self._bufs,
                                   self._outputs)

    def run_if_fits(self, feeds: Dict[str, np.ndarray]) -> Optional[List[np.ndarray]]:
        """``run(feeds)`` when ``feeds`` are exactly the program's feeds, each a C-contiguous
        ndarray of the shape and dtype it was built for; None (nothing run) otherwise. A
        stream calls this with feeds it has not checked: a signature that matches is one
        the session checked and traced when it built the program."""
        if len(feeds) != len(self._bufs):
            return None
        return self.runner.run_fed([feeds.get(name) for name in self._feeds], self._bufs,
                                   self._outputs, True)

    @staticmethod
    def build(sess, v: list, feed_names: List[str], fixed_names=()
              ) -> Tuple[Optional["Program"], str]:
        """From ``v``, the value table of one call of the general path: (program, "") or
        (None, why not). ``feed_names``: the inputs each call feeds; ``fixed_names``: inputs
        whose traced value the program keeps (a stream's fixed feeds)."""
        try:
            return _Builder(sess, v, feed_names, fixed_names).program(), ""
        except NotPlanned as e:
            return None, str(e)


class _Builder(Lowering):
    def __init__(self, sess, v: list, feed_names: List[str], fixed_names=()):
        self.sess, self.plan, self.v = sess, sess.plan, v
        self.opset = sess.loaded.opset
        self.buf: Dict[int, np.ndarray] = {}       # slot -> the buffer holding its value
        self.static: set = set()                   # slots whose value is fixed (constants)
        self.ops: list = []
        self.called: List[str] = []
        self._read_counts: Optional[dict] = None   # lowering.Lowering._reads
        self.table = list(v)                       # what "call" steps read and write
        self.table[0] = None
        plan = self.plan
        for slot, value in enumerate(plan.template):
            if value is not None:
                self._constant(slot)
        for name in fixed_names:
            self._constant(plan.input_slots[sess.input_index[name]])
        self.feeds = {}
        for name in feed_names:
            slot = plan.input_slots[sess.input_index[name]]
            value = v[slot]
            if value.__class__ is not np.ndarray:
                raise NotPlanned(f"feed {name!r} is not an ndarray")
            b = self._new(slot, value.shape, value.dtype)
            self.feeds[name] = b

    # -- buffers ---------------------------------------------------------------------------
    def _constant(self, slot: int) -> np.ndarray:
        value = np.asarray(self.v[slot])
        if not value.flags.c_contiguous:
            value = value.copy()
        self.static.add(slot)
        self.buf[slot] = value
        self.table[slot] = value
        return value

    def _new(self, slot: int, shape, dtype) -> np.ndarray:
        b = np.zeros(shape, dtype)
        self.buf[slot] = b
        self.table[slot] = b
        return b

    def _out(self, slot: int) -> np.ndarray:
        """A new buffer for the value the trace shows in ``slot``."""
        value = self.v[slot]
        if value.__class__ is not np.ndarray:
            raise NotPlanned(f"value {self._name(slot)!r} is not an array")
        return self._new(slot, value.shape, value.dtype)

    def _in(self, slot: int, label: str) -> np.ndarray:
        b = self.buf.get(slot)
        if b is None:
            if slot == 1:
                raise NotPlanned(f"{label} reads an absent optional input")
            raise NotPlanned(f"{label} reads {self._name(slot)!r}, which no planned step "
                             "computes")
        return b

    def _name(self, slot: int) -> str:
        return next((n for n, s in self.plan.slots.items() if s == slot), f"#{slot}")

    # -- the plan --------------------------------------------------------------------------
    def program(self) -> Program:
        self._steps(self.plan, range(len(self.plan.steps)))
        outputs = []
        for slot in self.plan.output_slots:
            outputs.append(self._in(slot, "a graph output"))
        if not any(k != "call" for k in (op[0] for op in self.ops)):
            raise NotPlanned("no step has a C kernel")
        program = Program(Runner(self.ops), self.feeds, outputs, self.called)
        self._check(program)
        return program

    def _check(self, program: Program) -> None:
        """Run once on the traced feeds: every output must match the traced call."""
        feeds = {name: self.v[self.plan.input_slots[self.sess.input_index[name]]]
                 for name in self.feeds}
        try:
            got = program.run(feeds)
        except Exception as e:
            raise NotPlanned(f"the program failed on the traced feeds: {e}") from None
        for slot, g in zip(self.plan.output_slots, got):
            want = np.asarray(self.v[slot])
            if g.shape != want.shape or g.dtype != want.dtype:
                raise NotPlanned(f"output {self._name(slot)!r} came out {g.shape} {g.dtype}")
            if g.dtype.kind == "f":
                scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
                if not np.allclose(g, want, rtol=1e-4, atol=1e-5 * scale, equal_nan=True):
                    raise NotPlanned(f"output {self._name(slot)!r} differs from the general "
                                     "path")
            elif not np.array_equal(g, want):
                raise NotPlanned(f"output {self._name(slot)!r} differs from the general path")

    def _steps(self, plan, indices) -> None:
        for k in indices:
            ins, outs = plan.io[k]
            step = plan.steps[k]
            label = plan.labels[k]
            live = [o for o in outs if o != 2]
            if all(o in self.static for o in live):
                continue
            if self._is_static(step, ins, live):
                for o in live:
                    self._constant(o)
                continue
            if not self._lower(step, ins, live, label, plan):
                self._call(step, ins, live, label)

    def _is_static(self, step, ins, outs) -> bool:
        """Fixed for this signature: the plan's memoised shape computations, Shape/Size, and
        deterministic operators of fixed values."""
        if outs and all(o in self.plan.shared for o in outs):
            return True
        node = getattr(step, "node", None)
        if node is None or node.op_type in RANDOM:
            return False
        if node.op_type in ("Shape", "Size"):
            return True
        if getattr(step, "native_view", None) is not None:
            return step.view_of in self.static
        return (getattr(step, "native", None) is not None and bool(ins)
                and all(i in self.static or i == 1 for i in ins))

    def _call(self, step, ins, outs, label) -> None:
        self.called.append(label)
        for i in ins:
            if i not in self.buf and i != 1 and i != 0:
                self.table[i] = self.v[i]      # read by the step but not planned: as traced
        bufs = [(o, self._out(o)) for o in outs]
        table = self.table

        def call():
            step(table)
            for o, b in bufs:
                r = table[o]
                if r is not b:
                    if r.__class__ is not np.ndarray or r.shape != b.shape or r.dtype != b.dtype:
                        raise ValueError(f"{label} gave {getattr(r, 'shape', r)} where the "
                                         f"program planned {b.shape} {b.dtype}")
                    np.copyto(b, r)
                    table[o] = b
        self.ops.append(("call", call))

    def _inline_if(self, step, outs) -> bool:
        cond, branches = step.branches
        if cond not in self.static:
            return False
        c = np.asarray(self.v[cond])
        if c.size != 1:
            return False
        sub, moves = branches[bool(c.reshape(-1)[0])]
        self._steps(sub, range(len(sub.steps)))
        for o, s in moves:
            if s in self.static:
                self._constant_as(o, s)
            else:
                src = self._in(s, "an If branch output")
                self.buf[o] = src
                self.table[o] = src
        return True

    def _constant_as(self, o: int, s: int) -> None:
        self.static.add(o)
        self.buf[o] = self.buf[s]
        self.table[o] = self.buf[s]

    def _view(self, i: int, o: int) -> bool:
        y = self.v[o]
        src = self.buf.get(i)
        if src is None or y.__class__ is not np.ndarray or y.size != src.size or y.dtype != src.dtype:
            return False
        view = src.reshape(y.shape)
        self.buf[o] = view
        self.table[o] = view
        if i in self.static:
            self.static.add(o)
        return True
