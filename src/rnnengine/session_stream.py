"""Streams and pools of a whole ONNX model (SPEC §6): ``InferenceSession.stream()`` and
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

import functools
import threading
from typing import Dict, List, Optional

import numpy as np

from ._checks import check_one_way, check_positive_int
from .state_blob import pack_arrays, unpack_arrays
from .state_pairs import find_pairs
from .stream_plan import Carrier, ElidedPlan, SlotCarrier
from .stream_runner import compile_runner
from .time_axis import check_streamable


def _exclusive(method):
    """One thread at a time in a stream or pool: a second one gets RuntimeError instead of
    corrupting the state (the lock never waits; nested calls of one thread are fine)."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"{type(self).__name__}.{method.__name__}() called while "
                               "another thread is using it: give each thread its own "
                               "stream/pool or serialize the calls")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._lock.release()
    return guarded


def _pairs(sess, state) -> Dict[str, str]:
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if state is None:
        return find_pairs(sess._loaded.model.graph, inputs, outputs)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict {{output name: input name}}; got "
                        f"{type(state).__name__}")
    in_names, out_names = {a.name for a in inputs}, {a.name for a in outputs}
    for out, inp in state.items():
        if out not in out_names:
            raise ValueError(f"state: {out!r} is not an output of the graph; the outputs "
                             f"are {sorted(out_names)}")
        if inp not in in_names:
            raise ValueError(f"state: {inp!r} is not an input of the graph; the inputs "
                             f"are {sorted(in_names)}")
    if len(set(state.values())) != len(state):
        raise ValueError(f"state: two outputs feed the same input: {state}")
    return dict(state)


def _symbols(args_by_name, feeds: dict) -> dict:
    """Sizes of the named dims ('batch', ...) as the fed arrays give them."""
    sizes = {}
    for name, value in feeds.items():
        arg = args_by_name.get(name)
        if arg is not None and arg.shape is not None and getattr(value, "ndim", -1) == len(arg.shape):
            for d, n in zip(arg.shape, value.shape):
                if isinstance(d, str):
                    sizes.setdefault(d, n)
    return sizes


def _zeros(arg, sizes: dict, batch_dim=None, batch: int = 1) -> np.ndarray:
    shape = [d if isinstance(d, int) else (batch if d == batch_dim and d is not None
                                           else sizes.get(d, 1)) for d in (arg.shape or [])]
    return np.zeros(shape, arg.dtype if arg.dtype is not None else np.float32)


class SessionStream:
    """One stream of a whole model. ``step(feeds)`` -> list of the non-state outputs.
    Not for concurrent use from two threads (one stream per thread; the session itself
    is shareable)."""

    def __init__(self, sess, state=None, feeds=None):
        self._sess = sess
        self._lock = threading.RLock()
        self.state_names: Dict[str, str] = _pairs(sess, state)
        self._args = {a.name: a for a in sess.get_inputs()}
        self._fixed = {name: self._args[name].check(value).copy()
                       for name, value in _check_feeds(self._args, feeds).items()}
        self._state_inputs = list(self.state_names.values())
        self._keep = [k for k, a in enumerate(sess.get_outputs())
                      if a.name not in self.state_names]
        index = {a.name: k for k, a in enumerate(sess.get_outputs())}
        self._state_out = [(index[out], inp) for out, inp in self.state_names.items()]
        self._all = list(range(len(index)))
        self._recurrent = sess._loaded.recurrent
        self._time_mode = not self.state_names
        self._elided = None
        if self._time_mode:
            _check_time_mode(sess)
        else:
            elided = ElidedPlan(sess, self.state_names, set(self._fixed))
            self._elided = elided if elided.ok else None
        self._fast = False       # the elided plan is used once verified on the first step
        # the fast path's table: the template with the fixed feeds in place; step feeds whose
        # shape and dtype passed the full check once skip it ({name: (shape, dtype, slot)})
        plan = sess._plan
        self._base = plan.template.copy()
        for name, value in self._fixed.items():
            self._base[plan.input_slots[sess._input_index[name]]] = value
        self._known: Dict[str, tuple] = {}
        self._n_step_feeds = len(self._args) - len(self._state_inputs) - len(self._fixed)
        # the compiled step (stream_runner): built from a traced step once the fast path
        # runs with known feeds; while it exists, ``self.step`` is its C method
        self._runner = None
        self._compile_next = False
        self.not_compiled: Optional[str] = None   # why the step is not compiled, if so
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

    def _drop_runner(self) -> None:     # the next fast step with known feeds compiles again
        self._runner = None
        self.__dict__.pop("step", None)
        self._compile_next = self._fast

    @_exclusive
    def reset(self) -> None:
        """Every state back to zero."""
        self._state: Dict[str, Optional[np.ndarray]] = {n: None for n in self._state_inputs}
        self._context = self._lean = None
        self._drop_runner()
        if self._time_mode or self._fast:
            # RecurrentStep.step finds its carrier in the table's slot 0
            recs = self._elided.recs if self._fast else self._recurrent
            carrier = Carrier(self._elided.want if self._fast else None)
            self._context = {rec: carrier for rec in recs}
            self._lean = self._elided.lean_steps(carrier) if self._fast else None

    def _merged(self, feeds) -> dict:
        merged = dict(self._fixed)
        if feeds:
            merged.update(_check_feeds(self._args, feeds, self._state_inputs))
        return merged

    @_exclusive
    def step(self, feeds: Optional[dict] = None) -> List[np.ndarray]:
        """One call of the graph: ``feeds`` (the inputs that are neither state nor given
        as fixed feeds) -> the non-state outputs, in the graph's order."""
        sess = self._sess
        if self._fast:
            v = self._known_table(feeds)
            if v is None:
                v = sess.new_table(self._merged(feeds), self._state_inputs)
                self._learn(feeds)
            elif self._compile_next:
                return self._compile(v, feeds or {})
            self._elided.step(v, self._context, self._lean)
            if self._runner is not None and any(
                    c.streams.get(rec) is not s for c, rec, s in self._cores):
                self._drop_runner()      # a feed of another batch replaced the streams
            return sess.finish(v, self._keep)
        merged = self._merged(feeds)
        if self._state_inputs:
            sizes = None
            for name in self._state_inputs:
                value = self._state[name]
                if value is None:
                    sizes = sizes or _symbols(self._args, merged)
                    value = self._state[name] = _zeros(self._args[name], sizes)
                merged[name] = value
            if self._elided is not None:
                return self._go_fast(merged)
        if self._context is None:
            outs = sess.evaluate(merged, self._all, self._fixed)
        else:
            v = sess.new_table(merged)
            v[0] = self._context
            sess._plan.execute(v)
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
        sess, elided, carrier = self._sess, self._elided, next(iter(self._context.values()))
        steps = elided.lean_run(carrier)
        elided.step(v, self._context, (steps, elided.run_steps))
        outs = sess.finish(v, self._keep)
        self._compile_next = False
        runner, self.not_compiled = compile_runner(
            sess, elided, carrier, steps, v, feeds, self._fixed, self._keep, self._lock,
            functools.partial(SessionStream.step, self))
        if runner is not None:
            self._runner = runner
            self._cores = [(carrier, rec, carrier.streams.get(rec)) for rec in elided.recs]
            self.step = runner.step
        return outs

    def _learn(self, feeds) -> None:
        """Remember the shapes and dtypes of step feeds that passed the full check."""
        sess = self._sess
        for name, value in (feeds or {}).items():
            if name not in self._fixed and isinstance(value, np.ndarray):
                slot = sess._plan.input_slots[sess._input_index[name]]
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
            return self.step({k: v for k, v in feeds.items() if k not in self._fixed})
        current = [merged[n] for n in self._state_inputs]
        self._elided, self._fast = elided, True
        self.reset()
        elided.unpack(next(iter(self._context.values())), current, self._fixed)
        return self.step({k: v for k, v in feeds.items() if k not in self._fixed})

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> Dict[str, np.ndarray]:
        """A copy of the carried state: {state input name: array} (time-axis mode:
        {"<node>/h": (1, N, H), "<node>/c": ...} per recurrent node)."""
        if self._fast:
            carrier = next(iter(self._context.values()))
            packed = self._elided.pack(carrier, self._fixed)
            if packed is not None:
                return dict(zip(self._state_inputs, packed))
            return {n: None for n in self._state_inputs}
        if not self._time_mode:
            return {n: (None if a is None else a.copy()) for n, a in self._state.items()}
        out = {}
        carrier = next(iter(self._context.values()), None)
        for rec, stream in (carrier.streams.items() if carrier else []):
            s = stream.state
            h, c = s if rec.kind == "lstm" else (s, None)
            out[f"{rec.label}/h"] = h
            if c is not None:
                out[f"{rec.label}/c"] = c
        return out

    @state.setter
    def state(self, value: Dict[str, np.ndarray]) -> None:
        if self._time_mode:
            raise ValueError("this stream carries recurrent state along the time axis; "
                             "restore it with import_state")
        if not isinstance(value, dict) or set(value) != set(self._state_inputs):
            raise ValueError(f"state must be a dict with keys {self._state_inputs}; got "
                             f"{sorted(value) if isinstance(value, dict) else type(value).__name__}")
        checked = {n: self._args[n].check(a).copy() for n, a in value.items()}
        if self._fast:
            self._drop_runner()     # unpack may give the carrier new streams
            carrier = next(iter(self._context.values()))
            self._elided.unpack(carrier, [checked[n] for n in self._state_inputs], self._fixed)
        else:
            self._state = checked

    def export_state(self) -> bytes:
        """The carried state as bytes (no pickle), for ``import_state``."""
        state = {k: v for k, v in self.state.items() if v is not None}
        return pack_arrays(state)

    @_exclusive
    def import_state(self, data: bytes) -> None:
        """Continue from ``export_state`` bytes; ValueError if they do not fit."""
        arrays = unpack_arrays(data)
        if not arrays:          # exported before the first step: the zero state
            self.reset()
            return
        if not self._time_mode:
            self.state = arrays
            return
        carrier = next(iter(self._context.values()), None)
        by_label = {rec.label: rec for rec in self._recurrent}
        for key in arrays:
            label, _, which = key.rpartition("/")
            if label not in by_label or which not in ("h", "c"):
                raise ValueError(f"state blob holds {key!r}, which is not a recurrent "
                                 f"state of this model ({sorted(by_label)})")
        for label, rec in by_label.items():
            h = arrays.get(f"{label}/h")
            if h is None:
                continue
            if h.ndim != 3:
                raise ValueError(f"state {label}/h must be (1, N, H); got {h.shape}")
            stream = carrier.streams[rec] = rec.model.stream(batch=h.shape[1])  # noqa
            stream.state = (h, arrays.get(f"{label}/c")) if rec.kind == "lstm" else h


def _check_feeds(args: dict, feeds, carried=()) -> dict:
    if feeds is None:
        return {}
    if not isinstance(feeds, dict):
        raise TypeError(f"feeds must be a dict of input name -> array; got "
                        f"{type(feeds).__name__}")
    for name in feeds:
        if name not in args:
            raise ValueError(f"unknown input name {name!r}; the inputs are {list(args)}")
        if name in carried:
            raise ValueError(f"input {name!r} is state the stream carries; set it with "
                             "stream.state or import_state, not as a feed")
    return feeds


class SessionPool:
    """Many streams of one whole model. ``step(ids, feeds)``: feeds stacked on the batch
    axis (one entry per id, in the order of ``ids``); fixed feeds as they are. Where the
    graph has a batch dimension, one graph pass serves all the streams; where its shapes
    are fixed, the streams are stepped one by one (the repr says which). Not thread-safe:
    serialize calls (``rnnengine.Batcher`` will)."""

    def __init__(self, sess, capacity: int = 64, state=None, feeds=None):
        self._sess = sess
        self._lock = threading.RLock()
        self.capacity = check_positive_int("capacity", capacity)
        self.state_names = _pairs(sess, state)
        self._time_mode = not self.state_names
        self._context = None
        time_axes = {}
        if self._time_mode:      # recurrent state per slot, carried along the time axis
            time_axes = _check_time_mode(sess)
            self._carrier = SlotCarrier(sess._loaded.recurrent, self.capacity)
            self._context = {rec: self._carrier for rec in sess._loaded.recurrent}
        self._args = {a.name: a for a in sess.get_inputs()}
        self._fixed = {name: self._args[name].check(value).copy()
                       for name, value in _check_feeds(self._args, feeds).items()}
        self._state_inputs = list(self.state_names.values())
        outputs = sess.get_outputs()
        index = {a.name: k for k, a in enumerate(outputs)}
        self._state_out = [(index[out], inp) for out, inp in self.state_names.items()]
        self._keep = [k for k, a in enumerate(outputs) if a.name not in self.state_names]
        self._all = list(range(len(outputs)))
        self.batch_dim, self._in_axis, self._out_axis = _batch_axes(
            sess.get_inputs(), outputs, self._state_inputs, [outputs[k] for k in self._keep],
            time_axes)
        self.batched = self.batch_dim is not None
        self._state: Dict[str, np.ndarray] = {}
        self._slot_axis = {n: (self._in_axis[n] if self.batched else None)
                           for n in self._state_inputs}
        if self._time_mode:
            self._state = self._carrier.stores()
            self._slot_axis = {n: 1 for n in self._state}
        self._sid_at = [-1] * self.capacity
        self._opened = [0] * self.capacity
        self._free = list(range(self.capacity - 1, -1, -1))

    def __repr__(self) -> str:
        how = (f"one graph pass for all streams (batch dim {self.batch_dim!r})" if self.batched
               else "streams stepped one by one (the graph's shapes are fixed at batch 1)")
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
            raise ValueError(f"stream id {sid} is not open in this pool")
        return slot

    @_exclusive
    def open(self, state: Optional[dict] = None) -> int:
        """A new stream (zero state, or ``state`` {state input: per-stream array})."""
        if not self._free:
            raise RuntimeError(f"the pool is full ({self.capacity} streams); close one first")
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
        ax = self._slot_axis[name]
        if ax is None:
            return arr[slot]
        return arr[(slice(None),) * ax + (slice(slot, slot + 1),)]

    def _ensure(self, merged: dict) -> None:
        """Allocate the state stores once the feeds tell the size of every named dim."""
        if self._state or self._time_mode:
            return
        sizes = _symbols(self._args, merged)
        for name in self._state_inputs:
            arg = self._args[name]
            if self.batched:
                self._state[name] = _zeros(arg, sizes, self.batch_dim, self.capacity)
            else:
                one = _zeros(arg, sizes)
                self._state[name] = np.zeros((self.capacity,) + one.shape, one.dtype)

    @_exclusive
    def state(self, sid) -> Dict[str, np.ndarray]:
        slot = self._slot(sid)
        return {n: self._view(n, a, slot).copy() for n, a in self._state.items()}

    @_exclusive
    def set_state(self, sid, state: dict) -> None:
        slot = self._slot(sid)
        names = list(self._state) if self._time_mode else self._state_inputs
        if not isinstance(state, dict) or set(state) != set(names):
            raise ValueError(f"state must be a dict with keys {names}")
        checked = {n: (np.asarray(a, np.float32) if self._time_mode else self._args[n].check(a))
                   for n, a in state.items()}
        self._ensure(checked)
        for name, value in checked.items():
            view = self._view(name, self._state[name], slot)
            if value.shape != view.shape:
                raise ValueError(f"state {name!r} of one stream must have shape "
                                 f"{view.shape}; got {value.shape}")
            view[...] = value

    def export_state(self, sid) -> bytes:
        return pack_arrays(self.state(sid))

    def import_state(self, data: bytes, sid=None) -> int:
        arrays = unpack_arrays(data)
        if sid is None:
            return self.open(arrays)
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
        merged = dict(self._fixed)
        merged.update(_check_feeds(self._args, feeds, self._state_inputs))
        self._ensure(merged)
        k = len(slots)
        for name, value in merged.items():
            ax = self._in_axis.get(name)
            if ax is not None and name not in self._fixed:
                shape = getattr(value, "shape", ())
                if len(shape) <= ax or shape[ax] != k:
                    raise ValueError(f"input {name!r} must stack the {k} streams on axis "
                                     f"{ax}; got shape {tuple(shape)}")
        if self.batched:
            return self._step_batched(slots, merged)
        return self._step_each(slots, merged)

    def _run(self, merged: dict, slots) -> list:
        sess = self._sess
        if self._context is None:
            return sess.evaluate(merged, self._all, self._fixed)
        v = sess.new_table(merged)
        if self._context is not None:
            self._carrier.index = np.asarray(slots, np.intp)
            v[0] = self._context
        sess._plan.execute(v)
        return sess.finish(v, self._all)

    def _step_batched(self, slots, merged) -> List[np.ndarray]:
        index = np.asarray(slots, np.intp)
        for name in self._state_inputs:
            merged[name] = np.take(self._state[name], index, axis=self._in_axis[name])
        outs = self._run(merged, slots)
        for k, name in self._state_out:
            ax = self._in_axis[name]
            store = self._state[name]
            if outs[k].shape[:ax] + outs[k].shape[ax + 1:] != store.shape[:ax] + store.shape[ax + 1:]:
                raise ValueError(f"state output for {name!r} has shape {outs[k].shape}; "
                                 f"the state input is {store.shape} with the streams on "
                                 f"axis {ax}")
            store[(slice(None),) * ax + (index,)] = outs[k]
        return [outs[k] for k in self._keep]

    def _step_each(self, slots, merged) -> List[np.ndarray]:
        results = []
        for j, slot in enumerate(slots):
            one = dict(merged)
            for name, ax in self._in_axis.items():
                if name in merged and name not in self._fixed and name not in self._state:
                    one[name] = np.take(merged[name], [j], axis=ax)
            for name in self._state_inputs:
                one[name] = self._state[name][slot]
            outs = self._run(one, [slot])
            for k, name in self._state_out:
                self._state[name][slot] = outs[k]
            results.append([outs[k] for k in self._keep])
        return [np.concatenate([r[i] for r in results], axis=self._out_axis[i])
                if results else np.empty((0,)) for i in range(len(self._keep))]


def _check_time_mode(sess) -> Dict[str, int]:
    """A graph without state pairs streams along time: every operator must keep timesteps
    apart and every recurrent node run one way (ValueError naming the offender).
    Returns {input: its time axis}."""
    time_axes = check_streamable(sess)
    for rec in sess._loaded.recurrent:
        try:
            check_one_way(rec.model.layers, "stream")
        except ValueError as e:
            raise ValueError(f"recurrent node {rec.label!r}: {e}") from None
    return time_axes


def _batch_axes(inputs, outputs, state_inputs, kept_outputs, time_axes=None):
    """(batch dim name or None, {input: stream axis}, [stream axis per kept output]).

    The batch dim is the named dim found in the most inputs; the graph is batched when
    every state input and every kept output has it exactly once. Otherwise the streams
    step one by one, stacked on each input's first axis of size 1 (or named). Time axes
    (``time_axes``: {input: axis}) are never the streams' axis."""
    time_axes = time_axes or {}
    count, timed = {}, set()
    for a in inputs:
        shape = a.shape or []
        if a.name in time_axes and time_axes[a.name] < len(shape):
            timed.add(shape[time_axes[a.name]])
        for d in set(x for x in shape if isinstance(x, str)):
            count[d] = count.get(d, 0) + 1
    for d in timed:
        count.pop(d, None)
    dim = max(count, key=lambda d: (count[d], d == "batch"), default=None)

    def has_once(a):
        return a.shape is not None and [x for x in a.shape].count(dim) == 1

    by_name = {a.name: a for a in inputs}
    if dim is not None and all(has_once(by_name[n]) for n in state_inputs) and all(
            has_once(a) for a in kept_outputs):
        in_axis = {a.name: a.shape.index(dim) for a in inputs if has_once(a)}
        return dim, in_axis, [a.shape.index(dim) for a in kept_outputs]

    def first_unit(a):
        for k, d in enumerate(a.shape or []):
            if (d == 1 or isinstance(d, str) or d is None) and time_axes.get(a.name) != k:
                return k
        return None

    in_axis = {a.name: first_unit(a) for a in inputs
               if a.shape and first_unit(a) is not None and a.name not in state_inputs}
    return None, in_axis, [first_unit(a) or 0 for a in kept_outputs]
