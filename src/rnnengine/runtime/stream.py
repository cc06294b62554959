"""Stream: the state of ``batch`` sequences of one model carried across calls.

The buffers and the per-step C call live in ``_kernels.StreamCore``; this module is the
Python-level API around it (shapes, state access, migration)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import state_io
from ..core.checks import (check_one_way, check_positive_int, check_state, check_threads,
                           check_work_size, float_array, time_major)
from ..core.kernels import StreamCore


class Stream:
    """Carries the state of ``batch`` sequences across calls. Its buffers are allocated once,
    so ``step`` allocates nothing but its output (none with ``out=``). Not for concurrent use
    from two threads: that raises RuntimeError; use one stream per thread (the Model itself is
    shareable)."""

    def __init__(self, model, batch: int = 1, threads: Optional[int] = None):
        check_one_way(model.layers, "stream")
        batch = check_positive_int("batch", batch)
        threads = model.threads if threads is None else check_threads(threads)
        self.model = model
        self.batch = batch
        # the stream's state lives in its core (the session executor steps such cores too)
        self.core = StreamCore(model.cells, batch, threads)
        # The per-step hot path is the core's own method: a Python wrapper around it would
        # add a call to every step (the class-level step below documents it).
        self.step = self.core.step

    def step(self, x_t, out: Optional[np.ndarray] = None) -> np.ndarray:
        """One timestep: x_t ``(N, I)`` (or ``(I,)`` when batch is 1) -> y_t ``(N, Hout)``
        (or ``(Hout,)``). out: an optional float32 C-contiguous array of that shape to write
        y_t into (no allocation); it is returned."""
        return self.core.step(x_t, out)

    @property
    def threads(self) -> int:
        return self.core.threads

    @property
    def state(self):
        """A copy of the current state, in the structure ``Model.run`` returns."""
        self.core._lock()
        try:
            h, c = self.core._state_views()
            return (h.copy(), c.copy()) if c is not None else h.copy()
        finally:
            self.core._unlock()

    @state.setter
    def state(self, value) -> None:
        h_new, c_new = check_state(self.model.layers, value, self.batch, False)
        self.core._lock()
        try:
            h, c = self.core._state_views()
            h[...] = h_new
            if c is not None:
                c[...] = c_new
        finally:
            self.core._unlock()

    def reset(self) -> None:
        """Back to the zero state."""
        self.core._lock()
        try:
            h, c = self.core._state_views()
            h[...] = 0
            if c is not None:
                c[...] = 0
        finally:
            self.core._unlock()

    def run(self, chunk) -> np.ndarray:
        """Several timesteps, state carried on: chunk ``(T, N, I)`` (``(N, T, I)`` when the
        model is batch_first, or ``(T, I)`` when batch is 1) -> y of the matching shape.
        Ctrl-C (KeyboardInterrupt) stops it between timesteps and leaves the state as it was
        before the call."""
        model = self.model
        I, batch_first = model.input_size, model.batch_first
        expected = f"({self.batch}, T, {I})" if batch_first else f"(T, {self.batch}, {I})"
        chunk = float_array("chunk", chunk, expected)
        single = chunk.ndim == 2 and self.batch == 1
        x = time_major(chunk, batch_first) if chunk.ndim == 3 or single else chunk
        if x.ndim != 3 or x.shape[1:] != (self.batch, I):
            raise ValueError(f"chunk must be float32 of shape {expected}; got {chunk.shape}")
        check_work_size(model.cells, model.output_size, x.shape[0], self.batch)
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty((x.shape[0], self.batch, model.output_size), np.float32)
        self.core._run(x, y)
        if single:
            return y[:, 0]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if batch_first else y

    def export_state(self) -> bytes:
        """The current state as bytes (``rnnengine.runtime.state_io`` format), to continue this stream
        in another process, stream or pool of the same model."""
        return state_io.export_state(self.model, self.state)

    def import_state(self, data: bytes) -> None:
        """Continue from bytes written by ``export_state`` (same model and batch; a Pool
        stream's export fits a batch-1 stream). ValueError if they do not fit."""
        self.state = state_io.import_state(self.model, data)
