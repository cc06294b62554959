"""Streams and pools of a whole ONNX model: ``InferenceSession.stream()`` and
``InferenceSession.pool()``.

Two ways a graph carries state from one call to the next:

* **state pairs** (``state_names = {"output": "input"}``): found by ``state_pairs`` or named
  with ``state={"out": "in"}``. A step feeds the stored state into the input and keeps the
  output for the next step; unpaired inputs are the step's feeds. Zero state to start.
* **time axis**: a graph with no state inputs; the recurrent nodes keep their state between
  calls (``rnnengine.Stream`` objects, one per node), each call passing the next chunk of
  timesteps through the whole graph.

Fixed feeds (a sample rate, say) are given once as ``feeds=`` or with each step.
"""
from __future__ import annotations

import threading
from typing import Dict, List, Optional

import numpy as np

from ..core.checks import check_positive_int
from ..core.log import log
from ..errors import StreamClosed, StreamsFull
from .executor import Program
from .pool_layout import guess_axes, pad_rows, padded_batch, probe, stack_rows, unstack_rows
from .state_blob import pack_arrays, session_fingerprint, unpack_arrays
from .stream_checks import (_check_feeds, _check_time_mode, _exclusive, _pairs, _symbols,
                            _zeros, state_hint)
from .stream_plan import Carrier, ElidedPlan, SlotCarrier
from ._plan import ProgramStep
from .stream_runner import compile_runner


class SessionStream:
    """One stream of a whole model. ``step(feeds)`` -> list of the non-state outputs.
    Not for concurrent use from two threads (one stream per thread; the session itself
    is shareable)."""

    def __init__(self, sess, state=None, feeds=None):
        self._sess = sess
        self._lock = threading.RLock()
        self.state_names: Dict[str, str] = _pairs(sess, state)
        self._args = {a.name: a for a in sess.get_inputs()}
        self.fixed = {name: self._args[name].check(value).copy()     # the feeds given once
                      for name, value in _check_feeds(self._args, feeds).items()}
        self._state_inputs = list(self.state_names.values())
        self._keep = [k for k, a in enumerate(sess.get_outputs())
                      if a.name not in self.state_names]
        index = {a.name: k for k, a in enumerate(sess.get_outputs())}
        self._state_out = [(index[out], inp) for out, inp in self.state_names.items()]
        self._all = list(range(len(index)))
        self._recurrent = sess.loaded.recurrent
        self._time_mode = not self.state_names
        self._elided = None
        if self._time_mode:
            _check_time_mode(sess)
        else:
            elided = ElidedPlan(sess, self.state_names, set(self.fixed))
            self._elided = elided if elided.ok else None
        self._fast = False       # the elided plan is used once verified on the first step
        # the fast path's table: the template with the fixed feeds in place; step feeds whose
        # shape and dtype passed the full check once skip it ({name: (shape, dtype, slot)})
        plan = sess.plan
        self._base = plan.template.copy()
        for name, value in self.fixed.items():
            self._base[plan.input_slots[sess.input_index[name]]] = value
        self._known: Dict[str, tuple] = {}
        self._n_step_feeds = len(self._args) - len(self._state_inputs) - len(self.fixed)
        # the compiled step (stream_runner): built from a traced step once the fast path
        # runs with known feeds; while it exists, ``step`` hands the call to it
        self._runner = None
        self._compile_next = False
        self._why: Optional[str] = None     # why compile_runner refused this plan
        # the session's program for the signature of this stream's steps (state fed in and
        # out), once ``evaluate`` has built it: later steps that fit it go straight to it,
        # through ``_whole`` (its step in one compiled call, the general step its fallback)
        self._program: Optional[Program] = None
        self._whole: Optional[ProgramStep] = None
        self.reset()

    def __repr__(self) -> str:
        how = (f"state={self.state_names}" if self.state_names else
               f"recurrent state of {len(self._recurrent)} node(s) carried along time")
        if self._fast:
            how += ", state kept inside the recurrent kernels"
        if self._runner is not None:
            how += f", compiled step ({', '.join(self._runner.ops)})"
        return f"rnnengine.SessionStream({how})"

    @property
    def compiled(self) -> bool:
        """Whether the step runs compiled (stream_runner); if not, ``not_compiled`` says why."""
        return self._runner is not None

    @property
    def not_compiled(self) -> Optional[str]:
        """Why the step is not compiled (None when it is)."""
        if self._runner is not None:
            return None
        if self._why is not None:
            return self._why
        if self._time_mode:
            return ("the recurrent state is carried along the time axis; only streams whose "
                    "state pairs the recurrent kernels keep are compiled")
        if not self._fast:
            return ("the state is not kept inside the recurrent kernels, so the whole graph "
                    "runs every step" if self._elided is None else "not yet compiled: "
                    "compiles on the second step with feeds of the shapes seen before")
        return "not yet compiled: compiles on the next step with feeds of the shapes seen before"

    def _drop_runner(self) -> None:     # the next fast step with known feeds compiles again
        self._runner = None
        self._why = None
        self._compile_next = self._fast

    @_exclusive
    def reset(self) -> None:
        """Every state back to zero."""
        self._state: Dict[str, Optional[np.ndarray]] = {n: None for n in self._state_inputs}
        self._context = self._lean = self._carrier = None
        self._drop_runner()
        if self._time_mode or self._fast:
            # RecurrentStep.step finds its carrier in the table's slot 0
            recs = self._elided.recs if self._fast else self._recurrent
            carrier = self._carrier = Carrier(self._elided.want if self._fast else None)
            self._context = {rec: carrier for rec in recs}
            self._lean = self._elided.lean_steps(carrier) if self._fast else None

    def _merged(self, feeds) -> dict:
        merged = dict(self.fixed)
        if feeds:
            merged.update(_check_feeds(self._args, feeds, self._state_inputs))
        return merged

    def step(self, feeds: Optional[dict] = None) -> List[np.ndarray]:
        """One call of the graph: ``feeds`` (the inputs that are neither state nor given
        as fixed feeds) -> the non-state outputs, in the graph's order. A call that fails
        leaves the state as it was."""
        runner = self._runner or self._whole
        try:
            if runner is not None:       # a compiled step (it takes the lock itself)
                return runner.step(feeds)
            return self._step(feeds)
        except ValueError as exc:
            hint = state_hint(self._sess, self.state_names, str(exc))
            if not hint:
                raise
            raise ValueError(f"{exc}; it looks like state: {hint}") from exc

    def _undoing(self, run, *args) -> None:
        """``run(*args)`` with the recurrent kernels' state put back if it raises (a later
        operator may fail after the recurrent nodes stepped)."""
        saved = self._carrier.saved()
        try:
            run(*args)
        except BaseException:
            self._carrier.restore(saved)
            raise

    @_exclusive
    def _step(self, feeds: Optional[dict] = None) -> List[np.ndarray]:
        """The general step (also the compiled step's fallback)."""
        sess = self._sess
        if self._fast:
            v = self._known_table(feeds)
            if v is None:
                v = sess.new_table(self._merged(feeds), self._state_inputs)
                self._undoing(self._elided.step, v, self._context, self._lean)
                self._learn(feeds)
            elif self._compile_next:
                return self._compile(v, feeds or {})
            else:
                self._undoing(self._elided.step, v, self._context, self._lean)
            return sess.finish(v, self._keep)
        merged = self._merged(feeds)
        if self._state_inputs:
            sizes = None
            for name in self._state_inputs:
                value = self._state[name]
                if value is None:
                    sizes = sizes or _symbols(self._args, merged)
                    value = _zeros(self._args[name], sizes)
                merged[name] = value
            if self._elided is not None:
                return self._go_fast(merged)
        if self._context is None:      # the whole graph: planned per feed signature
            outs = sess.evaluate(merged, self._all, self.fixed)
            if self._state_inputs:
                program = sess.program_for(merged, self.fixed)
                if program is not self._program:
                    self._program = program
                    self._whole = None if program is None else ProgramStep(
                        program, self, self._lock, self._step, self._state_out, self._keep)
        else:
            v = sess.new_table(merged)
            v[0] = self._context
            if self._carrier is None:
                sess.plan.execute(v)
            else:
                self._undoing(sess.plan.execute, v)
            outs = sess.finish(v, self._all)
        for k, name in self._state_out:
            self._state[name] = outs[k]
        return [outs[k] for k in self._keep]

    def _known_table(self, feeds) -> Optional[list]:
        """The value table for ``feeds`` when each is an ndarray of a shape and dtype that
        passed the full check before (``_learn``) and together they are the step's inputs;
        None otherwise (the caller checks them in full)."""
        feeds = feeds or {}
        if feeds.__class__ is not dict or len(feeds) != self._n_step_feeds:
            return None
        v = self._base.copy()
        known = self._known
        for name, value in feeds.items():
            seen = known.get(name)
            if (seen is None or value.__class__ is not np.ndarray or value.shape != seen[0]
                    or value.dtype is not seen[1]):
                return None
            v[seen[2]] = value
        return v

    def _compile(self, v: list, feeds: dict) -> List[np.ndarray]:
        """This step on the general path, traced (views unmerged), then the compiled step
        built from it (``stream_runner.compile_runner``)."""
        sess, elided, carrier = self._sess, self._elided, self._carrier
        steps = elided.lean_run(carrier)
        self._undoing(elided.step, v, self._context, (steps, elided.run_steps))
        outs = sess.finish(v, self._keep)
        self._compile_next = False
        self._runner, self._why = compile_runner(
            sess, elided, carrier, steps, v, feeds, self.fixed, self._keep, self._lock,
            self._step)
        if self._runner is None:
            log.debug("stream step not compiled: %s", self._why)
            self._leave_fast()
        else:
            log.debug("stream step compiled to one C loop for feeds %s",
                      {n: a.shape for n, a in feeds.items()})
        return outs

    def _leave_fast(self) -> None:
        """The state back out of the recurrent kernels into the stream's arrays: a step the
        compiled step cannot take would otherwise run operator by operator every time,
        while the whole graph with its state fed in and out is planned into one program
        (``session.evaluate``), state glue included."""
        packed = self._elided.pack(self._carrier, self.fixed)
        if packed is None:
            return
        why = self._why
        self._elided, self._fast = None, False
        self.reset()
        self._state = dict(zip(self._state_inputs, packed))
        self._why = f"{why}; the whole graph runs as one program, state fed in and out"

    def _learn(self, feeds) -> None:
        """Remember the shapes and dtypes of step feeds that passed the full check."""
        sess = self._sess
        for name, value in (feeds or {}).items():
            if name not in self.fixed and isinstance(value, np.ndarray):
                slot = sess.plan.input_slots[sess.input_index[name]]
                self._known[name] = (value.shape, value.dtype, slot)

    def _go_fast(self, merged: dict) -> List[np.ndarray]:
        """First step of a stream with an elided plan: check it on these feeds, then move
        the state into the recurrent kernels and take the step there."""
        elided = self._elided
        sizes = _symbols(self._args, merged)
        zero = {n: _zeros(self._args[n], sizes) for n in self._state_inputs}
        feeds = {k: v for k, v in merged.items() if k not in self._state_inputs}
        exact = elided.verify(feeds, zero)      # a bad feed raises here; retried next step
        self._elided = None
        if not exact:
            return self.step({k: v for k, v in feeds.items() if k not in self.fixed})
        current = [merged[n] for n in self._state_inputs]
        self._elided, self._fast = elided, True
        self.reset()
        elided.unpack(self._carrier, current, self.fixed)
        return self.step({k: v for k, v in feeds.items() if k not in self.fixed})

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> Dict[str, np.ndarray]:
        """A copy of the carried state: {state input name: array} (time-axis mode:
        {"<node>/h": (1, N, H), "<node>/c": ...} per recurrent node)."""
        if self._fast:
            packed = self._elided.pack(self._carrier, self.fixed)
            if packed is not None:
                return dict(zip(self._state_inputs, packed))
            return {n: None for n in self._state_inputs}
        if not self._time_mode:
            return {n: (None if a is None else a.copy()) for n, a in self._state.items()}
        return self._carrier.export()

    @state.setter
    def state(self, value: Dict[str, np.ndarray]) -> None:
        self._set_state(value)

    @_exclusive
    def _set_state(self, value: Dict[str, np.ndarray]) -> None:
        """Check every array (their shapes must be the current state's once there is one:
        the batch is fixed), then replace the state all at once."""
        if self._time_mode:
            raise ValueError("this stream carries recurrent state along the time axis; "
                             "restore it with import_state")
        if not isinstance(value, dict) or set(value) != set(self._state_inputs):
            raise ValueError(f"state must be a dict with keys {self._state_inputs}; got "
                             f"{sorted(value) if isinstance(value, dict) else type(value).__name__}")
        checked = {n: self._args[n].check(a).copy() for n, a in value.items()}
        for name, now in self.state.items():
            if now is not None and now.shape != checked[name].shape:
                raise ValueError(f"state {name!r} must have shape {now.shape}, as this "
                                 f"stream's state has; got {checked[name].shape} (the batch "
                                 "is fixed once a stream has state; reset() first to start "
                                 "with another)")
        if self._fast:
            self._elided.unpack(self._carrier, [checked[n] for n in self._state_inputs],
                                self.fixed)
            self._drop_runner()     # unpack gave the carrier new streams
        else:
            self._state = checked

    def export_state(self) -> bytes:
        """The carried state as bytes (no pickle), for ``import_state``."""
        state = {k: v for k, v in self.state.items() if v is not None}
        return pack_arrays(state, session_fingerprint(self._sess))

    @_exclusive
    def import_state(self, data: bytes) -> None:
        """Continue from ``export_state`` bytes; ValueError if they do not fit (the state
        is then unchanged)."""
        arrays = unpack_arrays(data, session_fingerprint(self._sess))
        if not arrays:          # exported before the first step: the zero state
            self.reset()
        elif not self._time_mode:
            self.state = arrays
        else:
            self._carrier.load(self._recurrent, arrays)


class SessionPool:
    """Many streams of one whole model. ``step(ids, feeds)``: feeds stacked on the batch
    axis (one entry per id, in the order of ``ids``); fixed feeds as they are. Where the
    graph batches the streams and keeps them apart, one graph pass serves them all; else
    (shapes fixed at batch 1, rows mixed across the batch) the streams are stepped one by
    one. The first step decides by running the graph (``pool_layout.probe``); ``batched``
    and the repr say which. Each stream's state is kept at the size of one stream. Not
    thread-safe: serialize calls (``rnnengine.Batcher`` will)."""

    def __init__(self, sess, capacity: int = 64, state=None, feeds=None):
        self._sess = sess
        self._lock = threading.RLock()
        self.capacity = check_positive_int("capacity", capacity)
        self.state_names = _pairs(sess, state)
        self._time_mode = not self.state_names
        time_axes = {}
        if self._time_mode:      # recurrent state per slot, carried along the time axis
            time_axes = _check_time_mode(sess)
            self._carrier = SlotCarrier(sess.loaded.recurrent, self.capacity)
        self._args = {a.name: a for a in sess.get_inputs()}
        self.fixed = {name: self._args[name].check(value).copy()     # the feeds given once
                      for name, value in _check_feeds(self._args, feeds).items()}
        self._state_inputs = list(self.state_names.values())
        outputs = sess.get_outputs()
        index = {a.name: k for k, a in enumerate(outputs)}
        self._state_out = [(index[out], inp) for out, inp in self.state_names.items()]
        self._keep = [k for k, a in enumerate(outputs) if a.name not in self.state_names]
        self._all = list(range(len(outputs)))
        self.batch_dim, self.in_axis, self._state_axis, self.out_axis = guess_axes(
            sess.get_inputs(), outputs, self._state_inputs, [outputs[k] for k in self._keep],
            time_axes)
        # the declared shapes' guess until the first step probes the graph (_settle)
        self.batched = self.batch_dim is not None
        self._settled, self._why, self._probes = False, None, 0
        # a step of one stream can take _step_slot: settled, batched, with state pairs (the
        # Batcher's adapter reads it, as it reads in_axis, out_axis and fixed)
        self.slot_path = False
        self._state: Dict[str, np.ndarray] = {}     # one stream's state per slot (axis 0)
        self._slot_axis: Dict[str, int] = {}     # time mode's stores: slots on axis 1
        if self._time_mode:
            self._state = self._carrier.stores()
            self._slot_axis = {n: 1 for n in self._state}
        self._sid_at = [-1] * self.capacity
        self._opened = [0] * self.capacity
        self._free = list(range(self.capacity - 1, -1, -1))

    def __repr__(self) -> str:
        dim = f"batch dim {self.batch_dim!r}" if self.batch_dim else "unnamed batch axis"
        if self._settled:
            how = (f"one graph pass for all streams ({dim}; rows checked to stay apart)"
                   if self.batched else f"streams stepped one by one: {self._why}")
        else:
            how = (f"one graph pass for all streams if the first step confirms it ({dim})"
                   if self.batched else "streams stepped one by one unless the first step "
                   "shows that the graph batches them")
        state = (f"state={self.state_names}" if not self._time_mode else
                 "recurrent state carried along time")
        return (f"rnnengine.SessionPool(capacity={self.capacity}, open={len(self.ids)}, "
                f"{state}, {how})")

    @property
    def ids(self) -> List[int]:
        return [s for s in self._sid_at if s >= 0]

    # -- ids -------------------------------------------------------------------------------
    def _slot(self, sid) -> int:
        if isinstance(sid, (bool, np.bool_)) or not isinstance(sid, (int, np.integer)):
            raise ValueError(f"stream ids are ints from open(); got {sid!r}")
        slot = int(sid) % self.capacity
        if sid < 0 or self._sid_at[slot] != sid:
            raise StreamClosed(f"stream id {sid} is not open in this pool")
        return slot

    @_exclusive
    def open(self, state: Optional[dict] = None) -> int:
        """A new stream (zero state, or ``state`` {state input: per-stream array})."""
        if not self._free:
            raise StreamsFull(f"the pool is full ({self.capacity} streams); close one first")
        slot = self._free.pop()
        sid = self._opened[slot] * self.capacity + slot
        self._opened[slot] += 1
        self._sid_at[slot] = sid
        for name, arr in self._state.items():
            self._view(name, arr, slot)[...] = 0
        if state is not None:
            try:
                self.set_state(sid, state)
            except Exception:
                self.close(sid)
                raise
        return sid

    @_exclusive
    def close(self, sid) -> None:
        slot = self._slot(sid)
        self._sid_at[slot] = -1
        self._free.append(slot)

    def _view(self, name: str, arr: np.ndarray, slot: int) -> np.ndarray:
        """The part of a state store that belongs to ``slot`` (batch axis kept, size 1)."""
        ax = self._slot_axis.get(name)
        if ax is None:
            return arr[slot]
        return arr[(slice(None),) * ax + (slice(slot, slot + 1),)]

    def _one(self, merged: dict, j: int) -> dict:
        """Stream j's part of feeds stacked on their streams' axes (the rest as they are)."""
        one = dict(merged)
        for name, ax in self.in_axis.items():
            if name in merged and name not in self.fixed:
                one[name] = np.take(merged[name], [j], axis=ax)
        return one

    def _ensure(self, merged: dict) -> None:
        """Allocate the state stores once the feeds (of one stream: row 0 of stacked ones)
        tell the size of every named dim."""
        if self._state or self._time_mode:
            return
        sizes = _symbols(self._args, self._one(merged, 0))
        for name in self._state_inputs:
            one = _zeros(self._args[name], sizes)
            self._state[name] = np.zeros((self.capacity,) + one.shape, one.dtype)

    def check_state(self, state) -> Dict[str, np.ndarray]:
        """One stream's state (``state``/``export_state``'s dict) checked against the
        pool's: ValueError naming the array that does not fit."""
        names = list(self._state) if self._time_mode else self._state_inputs
        if not isinstance(state, dict) or set(state) != set(names):
            raise ValueError(f"state must be a dict with keys {names}")
        checked = {n: (np.asarray(a, np.float32) if self._time_mode else self._args[n].check(a))
                   for n, a in state.items()}
        sizes = _symbols(self._args, checked)
        for name, value in checked.items():
            if self._state:
                want = self._view(name, self._state[name], 0).shape
            else:       # a pool's streams have batch 1 each
                want = list(_zeros(self._args[name], sizes).shape)
                ax = self._state_axis.get(name)
                if ax is not None and ax < len(want):
                    want[ax] = 1
                want = tuple(want)
            if value.shape != want:
                raise ValueError(f"state {name!r} of one stream must have shape {want}; got "
                                 f"{value.shape} (a pool's streams have batch 1 each)")
        return checked

    def _settle(self, merged: dict) -> None:
        """On the first step's feeds: batch or not, and each output's stream axis, from
        what the graph computes (``pool_layout.probe``). Made-up rows the graph refuses
        decide nothing: this step goes one by one and the next asks again (three times)."""
        outputs = self._sess.get_outputs()
        stacked = {n: ax for n, ax in self.in_axis.items()
                   if n in merged and n not in self.fixed}
        layout = probe(self._runner, self._one(merged, 0), stacked,
                       {n: merged[n] for n in stacked},
                       {n: np.zeros_like(self._state[n][0]) for n in self._state_inputs},
                       self._state_axis,
                       [(o.name, self.state_names.get(o.name)) for o in outputs],
                       dict(zip(self._keep, self.out_axis)))
        self._probes += 1
        self._settled = layout.settled or self._probes >= 3
        self.batched, self._why = layout.batched, layout.why
        self.out_axis = [layout.out_axis[k] for k in self._keep]
        if not self.batched:
            self.batch_dim = None
        self.slot_path = self._settled and self.batched and not self._time_mode

    @_exclusive
    def state(self, sid) -> Dict[str, np.ndarray]:
        slot = self._slot(sid)
        return {n: self._view(n, a, slot).copy() for n, a in self._state.items()}

    @_exclusive
    def set_state(self, sid, state: dict) -> None:
        slot = self._slot(sid)
        checked = self.check_state(state)     # all of it, before any is written
        self._ensure(checked)
        for name, value in checked.items():
            self._view(name, self._state[name], slot)[...] = value

    def export_state(self, sid) -> bytes:
        return pack_arrays(self.state(sid), session_fingerprint(self._sess))

    def import_state(self, data: bytes, sid=None) -> int:
        arrays = unpack_arrays(data, session_fingerprint(self._sess))
        if sid is None:
            return self.open(arrays or None)     # exported before its first step: zeros
        self.set_state(sid, arrays)
        return sid

    # -- compute ---------------------------------------------------------------------------
    @_exclusive
    def step(self, ids, feeds: dict) -> List[np.ndarray]:
        """Advance the streams ``ids`` by one call of the graph; returns the non-state
        outputs with the streams stacked on their batch axis, in the order of ``ids``."""
        slots = [self._slot(s) for s in ids]
        if len(set(slots)) != len(slots):
            raise ValueError(f"ids must be distinct; got {list(ids)}")
        merged = dict(self.fixed)
        merged.update(_check_feeds(self._args, feeds, self._state_inputs))
        k = len(slots)
        for name, value in merged.items():
            ax = self.in_axis.get(name)
            if ax is not None and name not in self.fixed:
                shape = getattr(value, "shape", ())
                if len(shape) <= ax or shape[ax] != k:
                    raise ValueError(f"input {name!r} must stack the {k} streams on axis "
                                     f"{ax}; got shape {tuple(shape)}")
        if k:
            self._ensure(merged)
            if not self._settled:
                self._settle(merged)
        if k == 1 and self.slot_path:
            return self._step_slot(slots[0], merged)
        if self._time_mode:
            self._carrier.pending = []
        outs = (self._step_batched if self.batched and k else self._step_each)(slots, merged)
        if self._time_mode:        # the whole step succeeded: the final states go in
            self._carrier.commit()
        return outs

    @_exclusive
    def step_one(self, sid, feeds: dict) -> List[np.ndarray]:
        """``step([sid], feeds)`` for one stream, feeds at batch 1: the same outputs, for
        less. Once the first step has shown that the graph batches the streams, the slot's
        state is fed as it is stored (one stream's state is the graph's batch-1 state) and
        written back in place; the general ``step`` gathers rows, moves the stream axis and
        scatters them back, which for one stream costs as much as a small model's step."""
        if not self.slot_path:
            return self.step([sid], feeds)
        slot = sid % self.capacity if sid.__class__ is int else -1
        if slot < 0 or self._sid_at[slot] != sid:
            slot = self._slot(sid)          # another type of id, or an error
        return self._step_slot(slot, {**self.fixed,
                                      **_check_feeds(self._args, feeds, self._state_inputs)})

    def _step_slot(self, slot: int, merged: dict) -> List[np.ndarray]:
        """One stream's graph pass on its slot's state (batched, settled pools)."""
        state = self._state
        for name in self._state_inputs:
            merged[name] = state[name][slot]
        outs = self._sess.evaluate(merged, self._all, self.fixed)
        for k, name in self._state_out:     # every output checked before any state is written
            if outs[k].shape != state[name].shape[1:]:
                raise ValueError(f"state output for {name!r} has shape {outs[k].shape}; one "
                                 f"stream's state input is {state[name].shape[1:]}")
        for k, name in self._state_out:
            state[name][slot] = outs[k]
        return [outs[k] for k in self._keep]

    def _run(self, merged: dict, slots, carrier=None) -> list:
        """One graph pass; time mode: on the recurrent state of ``slots`` in ``carrier``
        (the pool's own by default)."""
        sess = self._sess
        if not self._time_mode:        # the whole graph: planned per feed signature
            return sess.evaluate(merged, self._all, self.fixed)
        v = sess.new_table(merged)
        if self._time_mode:
            carrier = carrier or self._carrier
            carrier.index = np.asarray(slots, np.intp)
            v[0] = {rec: carrier for rec in sess.loaded.recurrent}
        sess.plan.execute(v)
        return sess.finish(v, self._all)

    def _runner(self, capacity: int):
        """``run(feeds, slots)`` on zero recurrent state of its own (for the probe)."""
        carrier = (SlotCarrier(self._sess.loaded.recurrent, capacity) if self._time_mode
                   else None)
        return lambda merged, slots: self._run(merged, slots, carrier)

    def _step_batched(self, slots, merged) -> List[np.ndarray]:
        """One graph pass for the streams. With state pairs, the batch is padded to
        ``padded_batch`` rows by repeating the first stream's (rows stay apart: the probe
        checked), so that batches of every size share a few programs; the extra rows'
        outputs are dropped."""
        k = len(slots)
        size = k if self._time_mode else padded_batch(k)
        index = np.asarray(slots + slots[:1] * (size - k), np.intp)
        if size > k:
            for name, ax in self.in_axis.items():
                if name in merged and name not in self.fixed:
                    merged[name] = pad_rows(merged[name], ax, size)
        for name in self._state_inputs:
            merged[name] = stack_rows(self._state[name][index], self._state_axis[name])
        outs = self._run(merged, slots)
        news = [(self._state[name], unstack_rows(outs[j], self._state_axis[name], name,
                                                 self._state[name].shape[1:], size)[:k])
                for j, name in self._state_out]
        for store, new in news:      # every output checked before any state is written
            store[index[:k]] = new
        if size == k:
            return [outs[j] for j in self._keep]
        return [outs[j][(slice(None),) * ax + (slice(0, k),)]
                for j, ax in zip(self._keep, self.out_axis)]

    def _step_each(self, slots, merged) -> List[np.ndarray]:
        """The streams one graph pass each; their new states are kept once all passed."""
        results, finals = [], []
        for j, slot in enumerate(slots):
            one = dict(merged)
            for name, ax in self.in_axis.items():
                if name in merged and name not in self.fixed and name not in self._state:
                    one[name] = np.take(merged[name], [j], axis=ax)
            for name in self._state_inputs:
                one[name] = self._state[name][slot]
            outs = self._run(one, [slot])
            for k, name in self._state_out:
                finals.append((name, slot, np.broadcast_to(   # raises if it cannot fit
                    outs[k], self._state[name][slot].shape)))
            results.append([outs[k] for k in self._keep])
        for name, slot, value in finals:
            self._state[name][slot] = value
        return [np.concatenate([r[i] for r in results], axis=self.out_axis[i])
                if results else np.empty((0,)) for i in range(len(self._keep))]
