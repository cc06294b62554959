"""Model and Stream: validation, shapes and state. All arithmetic happens in _kernels.

Conventions are PyTorch's (SPEC §2): ``x`` is ``(T, N, I)`` or ``(N, T, I)`` with
``batch_first``; ``y`` is ``(T, N, D*Hout)``; the state is ``h`` for GRU/RNN and ``(h, c)`` for
LSTM, each ``(L*D, N, ·)``, layer-major and direction-minor; an unbatched ``(T, I)`` input gives
an unbatched output and state.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _kernels
from .layers import Layer, check_precision, check_stack, pack_layer

State = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


# The kernels index some buffers with C ints: any buffer they see
# must hold fewer elements than this. Checked before anything is allocated.
MAX_ELEMENTS = 2**31 - 1


def check_size(name: str, shape) -> None:
    count = 1
    for dim in shape:
        count *= int(dim)
    if count > MAX_ELEMENTS:
        raise ValueError(f"{name} of shape {tuple(shape)} has {count:,} elements; at most "
                         f"{MAX_ELEMENTS:,} fit one call (split the batch or the sequence)")


def as_float32(name: str, a, expected: str) -> np.ndarray:
    """Any float array -> C-contiguous float32; anything else is a TypeError naming ``expected``."""
    return np.ascontiguousarray(float_array(name, a, expected), dtype=np.float32)


def float_array(name: str, a, expected: str) -> np.ndarray:
    """``as_float32``'s checks without its copy: the array as given (a list becomes one), for
    shape checks that must come before a broadcast view is materialised."""
    if isinstance(a, (tuple, list)):
        try:
            a = np.asarray(a, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a float array of shape {expected}; got a "
                            f"{type(a).__name__} that is not one ({error})") from None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a float array of shape {expected}; got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array of shape {expected}; got dtype {a.dtype}")
    check_size(name, a.shape)
    return a


def check_positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def check_one_way(model: "Model", use: str) -> None:
    """Streams and pools advance a step at a time, which a reverse direction cannot do: it
    reads the sequence from its end."""
    if model.num_directions != 1 or any(layer.reverse for layer in model.layers):
        which = "bidirectional" if model.num_directions != 1 else "reverse-direction"
        raise ValueError(f"a {which} model cannot {use}: its reverse direction needs "
                         "the whole sequence; use Model.run")


def check_threads(threads) -> int:
    return check_positive_int("threads", threads)


class Model:
    """A stack of recurrent layers, immutable once built and safe to share between threads
    (every call allocates its own buffers; streams and pools own their state).

    threads: intra-op threads for ``run`` and the default for ``stream``. The hidden units of
    every layer are split between them (results change only by float rounding); worth it for
    large hidden sizes (about 256 and up), not for small ones.

    precision: how the weights are stored and multiplied (SPEC §7): "fp32" (default, exact),
    "fp16", "bf16" or "int8" (per output row, with inputs quantized per step); state and gate
    math stay float32 in every mode."""

    def __init__(self, layers: Sequence[Layer], batch_first: bool = False, threads: int = 1,
                 precision: str = "fp32"):
        layers = tuple(layers)
        check_stack(layers)
        self._precision = check_precision(precision)
        self._layers = layers
        self._cells = [kernel for k, layer in enumerate(layers)
                       for kernel in pack_layer(layer, precision, f"layer {k}")]
        self.batch_first = bool(batch_first)
        self._threads = check_threads(threads)

    @property
    def precision(self) -> str:
        """The weights' precision: "fp32", "fp16", "bf16" or "int8"."""
        return self._precision

    @property
    def threads(self) -> int:
        return self._threads

    # -- description -------------------------------------------------------------------
    @property
    def layers(self) -> Tuple[Layer, ...]:
        return self._layers

    @property
    def kind(self) -> str:
        return self._layers[0].kind

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def num_directions(self) -> int:
        return self._layers[0].num_directions

    @property
    def input_size(self) -> int:
        return self._layers[0].input_size

    @property
    def hidden_size(self) -> int:
        return self._layers[0].hidden_size

    @property
    def proj_size(self) -> int:
        """PyTorch's ``proj_size``: width of h for an LSTM with projection, else 0."""
        layer = self._layers[0]
        return layer.output_size if layer.proj is not None else 0

    @property
    def output_size(self) -> int:
        """Width of y: D * Hout."""
        return self.num_directions * self._layers[-1].output_size

    @property
    def num_parameters(self) -> int:
        return sum(layer.num_parameters for layer in self._layers)

    def __repr__(self) -> str:
        directions = {1: "forward", 2: "bidirectional"}[self.num_directions]
        if self.num_directions == 1 and all(layer.reverse for layer in self._layers):
            directions = "reverse"
        proj = f", proj_size={self.proj_size}" if self.proj_size else ""
        return (f"rnnengine.Model({self.kind.upper()}, layers={self.num_layers}, "
                f"directions={directions}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}{proj}, batch_first={self.batch_first}, "
                + (f"precision={self.precision!r}, " if self.precision != "fp32" else "") +
                f"parameters={self.num_parameters:,})")

    # -- state helpers -------------------------------------------------------------------
    def _state_shapes(self, batch: int):
        LD = self.num_layers * self.num_directions
        h_shape = (LD, batch, self._layers[0].output_size)
        c_shape = (LD, batch, self.hidden_size) if self.kind == "lstm" else None
        return h_shape, c_shape

    def zero_state(self, batch: int) -> State:
        """The zero state for ``batch`` streams, in the structure ``run`` returns."""
        h_shape, c_shape = self._state_shapes(batch)
        h = np.zeros(h_shape, np.float32)
        return (h, np.zeros(c_shape, np.float32)) if c_shape else h

    def _check_state(self, state, batch: int, unbatched: bool):
        """User state -> fresh float32 arrays (h, c or None) the kernel may overwrite."""
        h_shape, c_shape = self._state_shapes(batch)
        show = (lambda s: (s[0], s[2])) if unbatched else (lambda s: s)
        if state is None:
            return np.zeros(h_shape, np.float32), (np.zeros(c_shape, np.float32) if c_shape else None)
        if c_shape:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"LSTM state must be a tuple (h, c) with h of shape {show(h_shape)} "
                                f"and c of shape {show(c_shape)}; got {type(state).__name__}")
            h, c = state
        else:
            if isinstance(state, (tuple, list)) and len(state) == 1:
                state = state[0]
            h, c = state, None
        def checked(name, a, shape):
            a = float_array(name, a, str(show(shape)))
            given = a.shape
            if unbatched and a.ndim == 2:
                a = a[:, None, :]
            if a.shape != shape:
                raise ValueError(f"{name} must have shape {show(shape)}; got {given}")
            return np.array(a, dtype=np.float32, order="C")   # a fresh copy

        return checked("state h", h, h_shape), (checked("state c", c, c_shape) if c_shape else None)

    def _check_lengths(self, lengths, T: int, N: int) -> Optional[np.ndarray]:
        if lengths is None:
            return None
        arr = np.asarray(lengths)
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise TypeError(f"lengths must be a 1-D sequence of {N} integers; got "
                            f"dtype {arr.dtype}, shape {arr.shape}")
        if arr.shape[0] != N:
            raise ValueError(f"lengths must have {N} entries (one per batch entry); got {arr.shape[0]}")
        if N and (arr.min() < 0 or arr.max() > T):
            raise ValueError(f"lengths must lie in [0, {T}] (T={T}); got {arr.tolist()}")
        return np.ascontiguousarray(arr, dtype=np.int32)

    def _time_major(self, x: np.ndarray) -> np.ndarray:
        """(T, I) -> (T, 1, I); (N, T, I) -> (T, N, I) when batch_first; other shapes pass
        through for the caller's shape check. A view: the caller checks the sizes, then makes
        it contiguous float32 (a broadcast x is never copied before it is known to fit)."""
        if x.ndim == 2:
            return x[:, None, :]
        if x.ndim == 3 and self.batch_first:
            return x.transpose(1, 0, 2)
        return x

    def _check_work_size(self, T: int, N: int) -> None:
        """The kernels' scratch for T steps of N rows must fit one call (``check_size``)."""
        widest = max(max(k.gates * k.hidden_size for k in self._cells), self.output_size)
        check_size("the work buffers for x", (T, N, widest))

    # -- whole sequence ------------------------------------------------------------------
    def run(self, x, state: Optional[State] = None, lengths=None):
        """Run the whole sequence ``x``.

        x: ``(T, N, I)`` (``(N, T, I)`` when ``batch_first``) or unbatched ``(T, I)``.
        state: initial state or None for zeros. lengths: N ints in ``[0, T]`` or None.
        Returns ``(y, state)``: y ``(T, N, D*Hout)`` (or ``(N, T, ·)``, or ``(T, ·)``),
        zero past each entry's length; the final state after each entry's last valid step."""
        I = self.input_size
        expected = "(N, T, %d)" % I if self.batch_first else "(T, N, %d)" % I
        x = float_array("x", x, f"{expected} or (T, {I})")
        unbatched = x.ndim == 2
        given = x.shape
        x = self._time_major(x)
        if x.ndim != 3 or x.shape[2] != I:
            raise ValueError(f"x must be float32 of shape {expected} or (T, {I}); got {given}")
        T, N = x.shape[0], x.shape[1]
        self._check_work_size(T, N)
        x = np.ascontiguousarray(x, dtype=np.float32)
        lens = self._check_lengths(lengths, T, N)
        if unbatched and lens is not None and lens.shape[0] != 1:
            raise ValueError("lengths for an unbatched input must have one entry")
        h, c = self._check_state(state, N, unbatched)
        y = np.zeros((T, N, self.output_size), np.float32)
        _kernels.run_stack(self._cells, self.num_directions, x, lens, h, c, y, self._threads)
        if unbatched:
            y, h = y[:, 0], h[:, 0]
            c = None if c is None else c[:, 0]
        elif self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        return y, ((h, c) if c is not None else h)

    # -- streaming -----------------------------------------------------------------------
    def stream(self, batch: int = 1, threads: Optional[int] = None) -> "Stream":
        """A stateful stream of ``batch`` sequences advanced a few timesteps at a time.
        threads: intra-op threads for this stream (default: the model's)."""
        return Stream(self, batch, threads)

    def pool(self, capacity: int = 64):
        """Many independent streams stepped together (see ``rnnengine.pool.Pool``)."""
        from .pool import Pool
        return Pool(self, capacity)

    def save(self, path) -> None:
        """Write the engine's own ``.npz`` (arrays plus a JSON header; ``rnnengine.load`` reads it)."""
        from .loaders.npz import save_model
        save_model(self, path)


class Stream(_kernels.StreamCore):
    """Carries the state of ``batch`` sequences across calls. Its buffers are allocated once,
    so ``step`` allocates nothing but its output (none with ``out=``). Not for concurrent use
    from two threads: that raises RuntimeError; use one stream per thread (the Model itself is
    shareable).

    ``step(x_t, out=None)`` (implemented in ``_kernels.StreamCore``): one timestep, x_t
    ``(N, I)`` (or ``(I,)`` when batch is 1) -> y_t ``(N, Hout)`` (or ``(Hout,)``)."""

    def __init__(self, model: Model, batch: int = 1, threads: Optional[int] = None):
        check_one_way(model, "stream")
        batch = check_positive_int("batch", batch)
        threads = model.threads if threads is None else check_threads(threads)
        self.model = model
        self.batch = batch
        self._init_core(model._cells, self.batch, threads)

    @property
    def state(self) -> State:
        """A copy of the current state, in the structure ``Model.run`` returns."""
        self._lock()
        try:
            h, c = self._state_views()
            return (h.copy(), c.copy()) if c is not None else h.copy()
        finally:
            self._unlock()

    @state.setter
    def state(self, value: State) -> None:
        h_new, c_new = self.model._check_state(value, self.batch, False)
        self._lock()
        try:
            h, c = self._state_views()
            h[...] = h_new
            if c is not None:
                c[...] = c_new
        finally:
            self._unlock()

    def reset(self) -> None:
        """Back to the zero state."""
        self._lock()
        try:
            h, c = self._state_views()
            h[...] = 0
            if c is not None:
                c[...] = 0
        finally:
            self._unlock()

    def run(self, chunk):
        """Several timesteps, state carried on: chunk ``(T, N, I)`` (``(N, T, I)`` when the
        model is batch_first, or ``(T, I)`` when batch is 1) -> y of the matching shape.
        Ctrl-C (KeyboardInterrupt) stops it between timesteps and leaves the state as it was
        before the call."""
        I = self.model.input_size
        batch_first = self.model.batch_first
        expected = f"({self.batch}, T, {I})" if batch_first else f"(T, {self.batch}, {I})"
        chunk = float_array("chunk", chunk, expected)
        single = chunk.ndim == 2 and self.batch == 1
        x = self.model._time_major(chunk) if chunk.ndim == 3 or single else chunk
        if x.ndim != 3 or x.shape[1:] != (self.batch, I):
            raise ValueError(f"chunk must be float32 of shape {expected}; got {chunk.shape}")
        self.model._check_work_size(x.shape[0], self.batch)
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty((x.shape[0], self.batch, self.model.output_size), np.float32)
        self._run(x, y)
        if single:
            return y[:, 0]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if batch_first else y

    def export_state(self) -> bytes:
        """The current state as bytes (``rnnengine.state_io`` format), to continue this stream
        in another process, stream or pool of the same model."""
        from .state_io import export_state
        return export_state(self.model, self.state)

    def import_state(self, data: bytes) -> None:
        """Continue from bytes written by ``export_state`` (same model and batch; a Pool
        stream's export fits a batch-1 stream). ValueError if they do not fit."""
        from .state_io import import_state
        self.state = import_state(self.model, data)
