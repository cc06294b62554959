"""Pool: many independent streams of one model, stepped together in one batched product.

Each open stream owns one slot of preallocated state arrays ``h (L, capacity, Hout)`` and
``c (L, capacity, H)`` (LSTM). ``step(ids, xs)`` gathers the named slots into contiguous
scratch ``(L, k, ·)``, runs one timestep of the whole stack for all ``k`` rows at once (one
GEMM per layer and product instead of ``k`` GEMVs, the GIL released throughout), and scatters
the new states back. Streams join (``open``) and leave (``close``) at any time.

Stream ids are ints, unique for the life of the pool: ``id = generation * capacity + slot``,
so an id of a closed stream never silently names the stream that later reuses its slot.

A pool is not for concurrent use: every public method takes a non-blocking lock and raises
``ConcurrentStep`` (a RuntimeError) when another thread is inside the pool, instead of corrupting its state.
Give each thread its own pool (the model itself is shareable).
"""
from __future__ import annotations

import threading
from typing import List, Optional

import numpy as np

from ..core import kernels as _kernels
from . import _pool
from . import state_io
from ..core.checks import (State, check_one_way, check_positive_int, check_size, check_state,
                           float_array, state_shapes)
from ..errors import ConcurrentStep, StreamClosed, StreamsFull


class Pool:
    """Up to ``capacity`` independent streams of ``model`` (a forward-only model).

    ``open()`` -> id; ``step(ids, xs)`` with xs ``(k, I)`` -> y ``(k, Hout)``;
    ``state(id)`` / ``set_state(id, state)`` with state ``h`` or ``(h, c)``, each
    ``(L, 1, ·)`` as ``model.stream(batch=1).state``; ``close(id)``."""

    def __init__(self, model, capacity: int = 64):
        check_one_way(model.layers, "pool")
        self.model = model
        self.capacity = check_positive_int("capacity", capacity)
        h_shape, c_shape = state_shapes(model.layers, self.capacity)
        check_size("the pool's state", h_shape)
        self._h = np.zeros(h_shape, np.float32)
        self._c = np.zeros(c_shape, np.float32) if c_shape else None
        # Gather scratch: the first L*k*width floats are viewed as a contiguous (L, k, width).
        self._h_work = np.empty(self._h.size, np.float32)
        self._c_work = np.empty(self._c.size, np.float32) if c_shape else None
        self._sid_at = np.full(self.capacity, -1, np.int64)   # id living in each slot, -1: free
        self._opened = np.zeros(self.capacity, np.int64)      # times each slot was opened
        self._free = list(range(self.capacity - 1, -1, -1))   # pop() gives the lowest slot
        self._stamp = np.zeros(self.capacity, np.int64)       # repeat check (_pool.resolve_ids)
        self._mark = 0
        self._lock = threading.Lock()
        self._solo = None       # a batch-1 stream core for steps of one stream (_step_one)

    # -- concurrency guard ----------------------------------------------------------------
    # Every public method runs between _enter() and self._lock.release(). The lock never
    # waits: a second thread inside the pool is a bug in the caller, reported, not serialized.
    def _enter(self, method: str) -> None:
        if not self._lock.acquire(blocking=False):
            raise ConcurrentStep(
                f"Pool.{method}() called while another call is using this pool (concurrent use "
                f"from two threads): a Pool is not thread-safe; give each thread its own pool "
                f"or serialize calls with a lock")

    # -- ids ------------------------------------------------------------------------------
    def _bad_id(self, sid) -> StreamClosed:
        if isinstance(sid, (int, np.integer)) and not isinstance(sid, bool) and sid >= 0:
            slot, generation = int(sid) % self.capacity, int(sid) // self.capacity
            if generation < self._opened[slot]:
                return StreamClosed(f"stream id {sid} was closed")
        shown = int(sid) if isinstance(sid, np.integer) else sid
        return StreamClosed(f"unknown stream id {shown!r}: ids come from Pool.open() of this pool")

    def _slot(self, sid) -> int:
        """One open id -> its slot; ValueError/TypeError otherwise."""
        if not isinstance(sid, (int, np.integer)) or isinstance(sid, bool):
            raise TypeError(f"a stream id is an int from Pool.open(); got {type(sid).__name__}")
        slot = int(sid) % self.capacity
        if sid < 0 or self._sid_at[slot] != sid:
            raise self._bad_id(sid)
        return slot

    def _slots(self, ids) -> np.ndarray:
        """A sequence of open, distinct ids -> their slots (intp array, same order)."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        elif isinstance(ids, (int, np.integer, str, bytes)):
            raise TypeError(f"ids must be a sequence of stream ids (e.g. [sid]); got "
                            f"{type(ids).__name__}")
        elif not isinstance(ids, list):
            try:
                ids = list(ids)
            except TypeError:
                raise TypeError(f"ids must be a sequence of stream ids; got "
                                f"{type(ids).__name__}") from None
        slots = np.empty(len(ids), np.intp)
        self._mark += 1
        status, j = _pool.resolve_ids(ids, self._sid_at, self._stamp, self._mark, slots)
        if status == _pool.NOT_AN_INT:
            raise TypeError(f"ids must be ints from Pool.open(); got {type(ids[j]).__name__} "
                            f"at position {j}")
        if status == _pool.NOT_OPEN:
            raise self._bad_id(ids[j])
        if status == _pool.REPEATED:
            raise ValueError(f"stream id {ids[j]} appears more than once in one step; "
                             f"a step advances each named stream by exactly one timestep")
        return slots

    def _step_one(self, slot: int, xs: np.ndarray) -> np.ndarray:
        """One stream's step on a batch-1 stream core (what ``Stream.step`` runs): its
        state copied in and back, which for one row costs far less than the gather, the
        one-step sequence run and the scatter of a batched step (33 against 17 us, LSTM
        I = H = 256). The state is written back only after the step returned."""
        core = self._solo
        if core is None:
            core = self._solo = _kernels.StreamCore(self.model.cells, 1, self.model.threads)
        h, c = core._state_views()
        h[...] = self._h[:, slot:slot + 1]
        if c is not None:
            c[...] = self._c[:, slot:slot + 1]
        y = core.step(xs)
        h, c = core._state_views()
        self._h[:, slot:slot + 1] = h
        if c is not None:
            self._c[:, slot:slot + 1] = c
        return y

    # -- streams --------------------------------------------------------------------------
    @property
    def ids(self) -> List[int]:
        """The open stream ids, in slot order."""
        return [int(s) for s in self._sid_at if s >= 0]

    def __len__(self) -> int:
        return self.capacity - len(self._free)

    def __contains__(self, sid) -> bool:
        try:
            self._slot(sid)
        except (TypeError, ValueError):
            return False
        return True

    def __repr__(self) -> str:
        return f"rnnengine.Pool({len(self)}/{self.capacity} streams open, {self.model!r})"

    def open(self, state: Optional[State] = None) -> int:
        """A new stream id, starting from the zero state (or ``state``, as ``set_state``
        takes it). StreamsFull (a RuntimeError) when all ``capacity`` streams are open."""
        h = c = None
        if state is not None:
            h, c = self._check_state(state)
        self._enter("open")
        try:
            if not self._free:
                raise StreamsFull(f"the pool is full: all {self.capacity} streams are open; "
                                   f"close one, or create the pool with a larger capacity")
            slot = self._free.pop()
            sid = int(self._opened[slot]) * self.capacity + slot
            self._opened[slot] += 1
            self._sid_at[slot] = sid
            self._write(slot, h, c)
            return sid
        finally:
            self._lock.release()

    def close(self, sid: int) -> None:
        """Free the stream's slot; its id is never valid again."""
        self._enter("close")
        try:
            slot = self._slot(sid)
            self._sid_at[slot] = -1
            self._free.append(slot)
        finally:
            self._lock.release()

    def _check_state(self, state):
        """A user state for one stream, ``(L, 1, ·)`` or ``(L, ·)`` leaves -> (h, c) float32
        copies ``(L, 1, ·)``; errors name the shape in the form the user gave."""
        h = state[0] if isinstance(state, (tuple, list)) and len(state) else state
        return check_state(self.model.layers, state, 1, np.ndim(h) == 2)

    def _write(self, slot: int, h, c) -> None:
        """Set one slot's state; None means zeros. h (L, 1, Hout), c (L, 1, H)."""
        self._h[:, slot] = 0 if h is None else h[:, 0]
        if self._c is not None:
            self._c[:, slot] = 0 if c is None else c[:, 0]

    def state(self, sid: int) -> State:
        """A copy of one stream's state: ``h`` (GRU/RNN) or ``(h, c)`` (LSTM), each
        ``(L, 1, ·)``: the structure of ``model.stream(batch=1).state`` and of ``model.run``'s
        state for a batch of one, so it can be handed to either."""
        self._enter("state")
        try:
            slot = self._slot(sid)
            h = self._h[:, slot:slot + 1].copy()
            return (h, self._c[:, slot:slot + 1].copy()) if self._c is not None else h
        finally:
            self._lock.release()

    def set_state(self, sid: int, state: State) -> None:
        """Assign one stream's state: ``h`` or ``(h, c)``, each ``(L, 1, ·)`` or ``(L, ·)``."""
        h, c = self._check_state(state)
        self._enter("set_state")
        try:
            self._write(self._slot(sid), h, c)
        finally:
            self._lock.release()

    def reset(self, sid: int) -> None:
        """Back to the zero state."""
        self._enter("reset")
        try:
            self._write(self._slot(sid), None, None)
        finally:
            self._lock.release()

    def export_state(self, sid: int) -> bytes:
        """One stream's state as bytes (``rnnengine.runtime.state_io``), to continue elsewhere."""
        return state_io.export_state(self.model, self.state(sid))

    def import_state(self, data: bytes, sid: Optional[int] = None) -> int:
        """Continue a stream exported by ``export_state`` (of a Pool or a batch-1 Stream of
        the same model): in a newly opened stream, or in ``sid``. Returns the id."""
        state = state_io.import_state(self.model, data)
        if sid is None:
            return self.open(state)
        self.set_state(sid, state)
        return sid

    # -- compute --------------------------------------------------------------------------
    def step(self, ids, xs) -> np.ndarray:
        """Advance the streams ``ids`` (any open, distinct ids, any order) by one timestep.

        xs: ``(k, I)``, row j the input of ``ids[j]``. Returns y ``(k, Hout)``, row j the
        output of ``ids[j]``. The other streams are untouched."""
        self._enter("step")
        try:
            slots = self._slots(ids)
            k = len(slots)
            I = self.model.input_size
            xs = float_array("xs", xs, f"({k}, {I}) (one row per id)")
            if xs.shape != (k, I) and not (k == 0 and xs.size == 0):
                raise ValueError(f"xs must be float32 of shape ({k}, {I}) (one row per id); "
                                 f"got {xs.shape}")
            xs = np.ascontiguousarray(xs, dtype=np.float32)   # only once it is known to fit
            L, _, out = self._h.shape
            if k == 0:
                return np.empty((0, out), np.float32)
            if k == 1:
                return self._step_one(int(slots[0]), xs)
            h = self._h_work[:L * k * out].reshape(L, k, out)
            np.take(self._h, slots, axis=1, out=h)
            c = None
            if self._c is not None:
                H = self._c.shape[2]
                c = self._c_work[:L * k * H].reshape(L, k, H)
                np.take(self._c, slots, axis=1, out=c)
            y = np.empty((1, k, out), np.float32)
            _kernels.run_stack(self.model.cells, 1, xs[None], None, h, c, y)
            # Scatter only after the kernel returned: a failed step leaves every state as it was.
            self._h[:, slots] = h
            if c is not None:
                self._c[:, slots] = c
            return y[0]
        finally:
            self._lock.release()
