"""Model: a stack of layers, its description and the whole-sequence run. All arithmetic
happens in core.kernels; streams live in stream.py, pools in pool.py.

Conventions are PyTorch's: ``x`` is ``(T, N, I)`` or ``(N, T, I)`` with
``batch_first``; ``y`` is ``(T, N, D*Hout)``; the state is ``h`` for GRU/RNN and ``(h, c)`` for
LSTM, each ``(L*D, N, ·)``, layer-major and direction-minor; an unbatched ``(T, I)`` input gives
an unbatched output and state.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ..core import kernels as _kernels
from ..loaders import own_format
from ..core.log import log
from ..core.checks import (State, check_state, check_threads, check_work_size, float_array,
                           state_shapes, time_major)
from ..core.layers import Layer, check_stack
from ..core.packing import pack_layer
from .pool import Pool
from .precision_auto import AUTO, DEFAULT_TOLERANCE, check_request, choose, reported
from ..core.precision_route import route
from .stream import Stream

class Model:
    """A stack of recurrent layers, immutable once built and safe to share between threads
    (every call allocates its own buffers; streams and pools own their state).

    threads: intra-op threads for ``run`` and the default for ``stream``. The hidden units of
    every layer are split between them (results change only by float rounding); worth it for
    large hidden sizes (about 256 and up), not for small ones.

    precision: how the weights are stored and multiplied: "fp32" (default, exact),
    "fp16", "bf16" or "int8" (per output row, with inputs quantized per step). Layers whose
    weight rows are too large for the mode's error budget get a second, residual int8 part
    (precision.int8_residual) or, in bf16, fp16 weights (precision.bf16_as_fp16); state and gate
    math stay float32 in every mode. On a CPU without AVX512-BF16, bf16 runs fp16 weights,
    which are faster there, and so does int8 without a fast integer product (on AArch64; x86
    has VNNI or 16-bit multiply-adds) (``precision`` reports it; int8 warns), and on the
    portable variant every reduced mode warns that it is slower than fp32.

    precision may also be one mode per layer, or "auto" with ``calibrate`` (a few
    representative inputs x, each as ``run`` takes it): per layer, the fastest mode on this
    CPU whose error on the outputs for those inputs stays within ``tolerance`` (relative to
    the outputs' scale; precision_auto)."""

    def __init__(self, layers: Sequence[Layer], batch_first: bool = False, threads: int = 1,
                 precision="fp32", calibrate=None, tolerance: float = DEFAULT_TOLERANCE):
        layers = tuple(layers)
        check_stack(layers)
        self._layers = layers
        self.batch_first = bool(batch_first)
        self._threads = check_threads(threads)
        request = check_request(precision, len(layers), calibrate, tolerance)
        if request == AUTO:
            inputs = [calibrate] if isinstance(calibrate, np.ndarray) else list(calibrate)
            modes = choose(layers, lambda ms: [y for x in inputs for y in Model(
                layers, batch_first, 1, ms).run(x)[:1]], tolerance)
        else:
            modes = (request,) * len(layers) if isinstance(request, str) else request
        # what runs: on a CPU without the mode's instruction, possibly another precision
        # (a loop, not a comprehension: route's warnings point at the caller's line)
        runs = []
        for mode, layer in zip(modes, layers):
            runs.append(route(mode, [layer]))
        self._modes = tuple(runs)
        # the packed kernels the C code runs, one per layer and direction (streams, pools and
        # the session's recurrent steps run these)
        self.cells = [kernel for k, (layer, mode) in enumerate(zip(layers, self._modes))
                      for kernel in pack_layer(layer, mode, f"layer {k}")]
        log.debug("model: %d %s layer(s), input %d, hidden %s, %s, %d thread(s)", len(layers),
                  layers[0].kind, layers[0].input_size, [la.hidden_size for la in layers],
                  self.precision, self._threads)

    @property
    def precision(self):
        """The weights' precision, the one that runs: "fp32", "fp16", "bf16" or "int8" (bf16
        and int8 run as fp16 where the variant lacks their fast products: precision_route),
        or a tuple of those per layer when the layers differ (precision="auto" or per layer)."""
        return reported(self._modes)

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
    def state_shapes(self, batch: int):
        return state_shapes(self._layers, batch)

    def zero_state(self, batch: int) -> State:
        """The zero state for ``batch`` streams, in the structure ``run`` returns."""
        h_shape, c_shape = state_shapes(self._layers, batch)
        h = np.zeros(h_shape, np.float32)
        return (h, np.zeros(c_shape, np.float32)) if c_shape else h

    def _check_state(self, state, batch: int, unbatched: bool):
        """User state -> fresh float32 arrays (h, c or None) the kernel may overwrite."""
        return check_state(self._layers, state, batch, unbatched)

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
        x = time_major(x, self.batch_first)
        if x.ndim != 3 or x.shape[2] != I:
            raise ValueError(f"x must be float32 of shape {expected} or (T, {I}); got {given}")
        T, N = x.shape[0], x.shape[1]
        check_work_size(self.cells, self.output_size, T, N)
        x = np.ascontiguousarray(x, dtype=np.float32)
        lens = self._check_lengths(lengths, T, N)
        if unbatched and lens is not None and lens.shape[0] != 1:
            raise ValueError("lengths for an unbatched input must have one entry")
        h, c = check_state(self._layers, state, N, unbatched)
        # every element is written (rows past a length get zeros): no need to clear it first
        y = np.empty((T, N, self.output_size), np.float32)
        _kernels.run_stack(self.cells, self.num_directions, x, lens, h, c, y, self._threads)
        if unbatched:
            y, h = y[:, 0], h[:, 0]
            c = None if c is None else c[:, 0]
        elif self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        return y, ((h, c) if c is not None else h)

    # -- streaming -----------------------------------------------------------------------
    def stream(self, batch: int = 1, threads: Optional[int] = None) -> Stream:
        """A stateful stream of ``batch`` sequences advanced a few timesteps at a time.
        threads: intra-op threads for this stream (default: the model's)."""
        return Stream(self, batch, threads)

    def pool(self, capacity: int = 64) -> Pool:
        """Many independent streams stepped together (see ``rnnengine.runtime.pool.Pool``)."""
        return Pool(self, capacity)

    def save(self, path) -> None:
        """Write the engine's own ``.npz`` (arrays plus a JSON header; ``rnnengine.load`` reads it)."""
        own_format.save(self._layers, self.batch_first, path, self._modes)
