"""The pools a ``Batcher`` steps, behind one small interface (``Resident``):

- ``check_input(x)`` -> one stream's input for one step, validated in the caller's thread
  (so a bad input fails its own call, never a batch); the Batcher never looks inside it.
- ``parse(data)`` -> a state for ``open`` from ``export`` bytes (ValueError if foreign).
- ``open(state=None)`` -> handle; ``close(handle)``; ``export(handle)`` -> bytes.
- ``step(handles, inputs)`` -> a sequence whose item j is the output of ``handles[j]``, or
  the exception that step raised (the Batcher hands it to that caller only).
- ``step_one(handle, input)`` -> the output of one stream's step alone (raises its error):
  what a batch of one gives, without the batch's gathering and splitting.

``ModelSlots`` wraps a ``Pool`` of a ``Model`` (input: x ``(I,)``); ``SessionSlots`` a
``SessionPool`` of an ``InferenceSession`` (input: a dict of one stream's feeds).

Resident memory follows the streams that hold a slot, not ``max_streams``: the pool starts
at ``min(max_streams, max_batch)`` slots, doubles when a stream needs a slot and none is
free, and halves once no more than a quarter of its slots are used (after idle eviction or
closes), moving the resident streams' states into the new pool. Handles stay valid across
a resize (they map to the current pool's ids).

Every method but ``check_input`` and ``parse`` is called with the Batcher's pool lock held,
so the pools themselves need no thread safety.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..core.checks import as_float32
from ..runtime.pool import Pool
from ..runtime.session_stream import SessionPool
from ..runtime.state_blob import session_fingerprint, unpack_arrays
from ..runtime.state_io import import_state


class Resident:
    """Handles over a pool that grows and shrinks with its resident streams. A subclass
    gives ``_new(capacity)`` (an empty pool with ``open/close/state/export_state``)."""

    def __init__(self, limit: int, first: int):
        self.limit = limit
        self.first = min(limit, first)
        self.pool = self._new(self.first)
        self._pid: Dict[int, int] = {}       # handle -> id in the current pool
        self._next = 0

    def _new(self, capacity: int):
        raise NotImplementedError

    @property
    def resident(self) -> int:
        """Streams holding a slot."""
        return len(self._pid)

    @property
    def capacity(self) -> int:
        """Slots allocated now (at most ``limit``)."""
        return self.pool.capacity

    def open(self, state=None) -> int:
        if len(self._pid) >= self.pool.capacity and self.pool.capacity < self.limit:
            self._resize(min(self.limit, 2 * self.pool.capacity))
        pid = self.pool.open(state)
        handle = self._next
        self._next += 1
        self._pid[handle] = pid
        return handle

    def close(self, handle: int) -> None:
        self.pool.close(self._pid.pop(handle))
        capacity = self.pool.capacity
        if capacity > self.first and len(self._pid) <= capacity // 4:
            self._resize(max(self.first, capacity // 2))

    def export(self, handle: int) -> bytes:
        return self.pool.export_state(self._pid[handle])

    def pids(self, handles: List[int]) -> List[int]:
        return [self._pid[h] for h in handles]

    def _resize(self, capacity: int) -> None:
        """Move every resident stream into a new pool of ``capacity`` slots."""
        old, new = self.pool, self._new(capacity)
        moved = {h: new.open(self._carry(old.state(pid))) for h, pid in self._pid.items()}
        self.pool, self._pid = new, moved

    @staticmethod
    def _carry(state):
        return state


class ModelSlots(Resident):
    """Streams of a ``Model``: x ``(I,)`` -> y ``(Hout,)`` per step."""

    def __init__(self, model, limit: int, first: int):
        self.model = model
        self.shape = (model.input_size,)
        super().__init__(limit, first)

    def _new(self, capacity: int):
        return Pool(self.model, capacity)

    def check_input(self, x) -> np.ndarray:
        """One stream's input for one timestep -> float32 ``(I,)``; errors name the shape."""
        I = self.model.input_size
        x = as_float32("x", x, f"({I},)")
        if x.shape != self.shape:
            raise ValueError(f"x must be float32 of shape ({I},) (one timestep of one stream); "
                             f"got {x.shape}")
        return x

    def parse(self, data):
        """Bytes from ``export`` -> a state for ``open``; ValueError/TypeError if they do
        not fit."""
        return import_state(self.model, data)

    def step(self, handles: List[int], inputs: List[np.ndarray]) -> np.ndarray:
        """One timestep of the streams; row j of the result belongs to ``handles[j]``."""
        return self.pool.step(self.pids(handles), np.stack(inputs))

    def step_one(self, handle: int, x: np.ndarray) -> np.ndarray:
        return self.pool.step([self._pid[handle]], x[None])[0]


class _Feeds:
    """One stream's checked feeds and the key of the steps they can share a graph pass with
    (same shapes and dtypes; same values for inputs that are not stacked per stream)."""
    __slots__ = ("key", "values")

    def __init__(self, key: tuple, values: dict):
        self.key = key
        self.values = values


class SessionSlots(Resident):
    """Streams of an ``InferenceSession``: a dict of one stream's feeds (batch 1; neither
    state nor fixed feeds) -> the list of non-state outputs, as ``SessionStream.step``.

    Steps whose feeds have the same shapes share one graph pass where the graph has a batch
    dimension (else the pool steps them one by one). A graph pass that fails is retried one
    stream at a time, so a feed that only the graph can reject (a token out of range, say)
    fails its own step only: with state pairs the pool writes no state before the pass
    succeeds; state carried along time is put back first."""

    def __init__(self, sess, limit: int, first: int, state=None, feeds=None):
        self.sess = sess
        self._pairs, self._feeds = state, feeds
        super().__init__(limit, first)       # the first pool checks state= and feeds=
        pool = self.pool
        self._pairs, self._feeds = pool.state_names, pool.fixed
        self._args = {a.name: a for a in sess.get_inputs()}
        carried = set(pool.state_names.values())
        self._carried = carried
        self._step_inputs = [n for n in self._args if n not in carried and n not in pool.fixed]
        self._stacked = {n: ax for n, ax in pool.in_axis.items() if n in self._step_inputs}
        self._time_mode = not pool.state_names
        # the last signature of feeds that passed the full check, when every feed is stacked
        # per stream: (key, {name: (shape, dtype)}); feeds that match it skip the check
        self._known: Optional[tuple] = None

    def _new(self, capacity: int):
        return SessionPool(self.sess, capacity, self._pairs, self._feeds)

    @staticmethod
    def _carry(state):
        return state or None        # no state stores yet: nothing to move

    def check_input(self, feeds) -> _Feeds:
        """``{input name: array}`` for one stream's step -> checked feeds; ValueError naming
        the input that does not fit."""
        known = self._known
        if known is not None and feeds.__class__ is dict and len(feeds) == len(known[1]):
            sig = known[1]
            for name, value in feeds.items():
                seen = sig.get(name)
                if (seen is None or value.__class__ is not np.ndarray or value.shape != seen[0]
                        or value.dtype is not seen[1]):
                    break
            else:
                return _Feeds(known[0], dict(feeds))
        if feeds is None:
            feeds = {}
        if not isinstance(feeds, dict):
            raise TypeError(f"feeds must be a dict of input name -> array (one stream's "
                            f"step); got {type(feeds).__name__}")
        for name in feeds:
            if name not in self._args:
                raise ValueError(f"unknown input name {name!r}; the step inputs are "
                                 f"{self._step_inputs}")
            if name in self._carried:
                raise ValueError(f"input {name!r} is state the Batcher carries for the "
                                 f"stream; resume(data) starts a stream from a given state")
        for name in self._step_inputs:
            if name not in feeds:
                raise ValueError(f"missing input {name!r} ({self._args[name].type}); each "
                                 f"step feeds {self._step_inputs}")
        values, key = {}, []
        for name in sorted(feeds):
            value = values[name] = self._args[name].check(feeds[name])
            ax = self._stacked.get(name)
            if ax is None:
                key.append((name, value.shape, value.dtype.str, value.tobytes()))
                continue
            if value.shape[ax] != 1:
                raise ValueError(f"input {name!r} is one stream's step: its axis {ax} "
                                 f"(the streams' axis) must be 1; got shape {value.shape}")
            key.append((name, value.shape, value.dtype.str))
        key = tuple(key)
        if all(name in self._stacked and feeds[name].__class__ is np.ndarray
               for name in values):
            self._known = (key, {name: (feeds[name].shape, feeds[name].dtype)
                                 for name in values})
        return _Feeds(key, values)

    def parse(self, data) -> Optional[dict]:
        """Bytes from ``export`` (or ``SessionStream.export_state``) -> a state for ``open``
        (None: the zero state); ValueError/TypeError if they do not fit this session."""
        names = set(self.pool._state) if self._time_mode else self._carried
        arrays = unpack_arrays(data, session_fingerprint(self.sess), names)
        if not arrays:
            return None
        if set(arrays) != names:
            raise ValueError(f"the state bytes hold {sorted(arrays)}; this session's streams "
                             f"carry {sorted(names)}")
        return self.pool.check_state(arrays)     # shapes too: a stream is batch 1 here

    def step(self, handles: List[int], inputs: List[_Feeds]) -> list:
        """Item j: the outputs of ``handles[j]``'s step (a list), or the exception it raised."""
        results: list = [None] * len(handles)
        groups: Dict[tuple, List[int]] = {}
        for j, feeds in enumerate(inputs):
            groups.setdefault(feeds.key, []).append(j)
        for js in groups.values():
            if self.pool.batched and len(js) > 1 and self._together(handles, inputs, js,
                                                                    results):
                continue
            for j in js:
                try:
                    results[j] = self._run([handles[j]], [inputs[j]])[0]
                except Exception as error:     # this stream's feeds: its caller gets it
                    results[j] = error
        return results

    def step_one(self, handle: int, feeds: _Feeds) -> list:
        pool = self.pool
        if pool.slot_path:     # SessionPool.step_one's work without its guard and checks:
            # the Batcher's pool lock serializes every call, the feeds passed check_input
            return pool._step_slot(pool._slot(self._pid[handle]),
                                   {**pool.fixed, **feeds.values})
        return pool.step_one(self._pid[handle], feeds.values)

    def _together(self, handles, inputs, js, results) -> bool:
        """One graph pass for the streams ``js``; False (state as before) if it failed."""
        pids = self.pids([handles[j] for j in js])
        saved = [self.pool.state(pid) for pid in pids] if self._time_mode else None
        try:
            outs = self._run([handles[j] for j in js], [inputs[j] for j in js])
        except Exception:
            for pid, state in zip(pids, saved or ()):
                self.pool.set_state(pid, state)
            return False
        for j, out in zip(js, outs):
            results[j] = out
        return True

    def _run(self, handles: List[int], inputs: List[_Feeds]) -> List[list]:
        """One pool step of feeds with the same key -> each stream's outputs (batch 1)."""
        first = inputs[0].values
        if len(inputs) == 1:
            return [self.pool.step(self.pids(handles), first)]
        stacked = dict(first)
        for name, ax in self._stacked.items():
            stacked[name] = np.concatenate([f.values[name] for f in inputs], axis=ax)
        outs = self.pool.step(self.pids(handles), stacked)
        # the pool's output axes are settled by its first step (what the graph computes);
        # each stream gets its rows as a view: the arrays are this step's own, and the
        # streams' rows do not overlap
        cut = [(o, (slice(None),) * ax) for o, ax in zip(outs, self.pool.out_axis)]
        return [[o[lead + (slice(j, j + 1),)] for o, lead in cut] for j in range(len(inputs))]
