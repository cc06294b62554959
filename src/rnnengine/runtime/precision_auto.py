"""``precision="auto"``: per recurrent layer (of a stack) or node (of a whole graph), the
fastest weight precision on this CPU whose error on calibration inputs stays within a
tolerance.

Speed is measured, not assumed: each mode's batch-1 stream step of the layer is timed here,
on the variant that runs (a mode without its instructions takes its route first,
precision_route), and only modes faster than fp32 are tried. Error is measured on the
caller's outputs for the calibration inputs, against the all-fp32 outputs, as
max |y - y_fp32| / max(1, max |y_fp32|) over every output. Layers are decided in order, each
tried with the choices before it in place, so the error of the final choice is the last one
measured and stays within the tolerance. A layer the calibration inputs never reach (its
outputs equal fp32's bit for bit) stays fp32.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..core import kernels as _kernels
from ..core.checks import state_shapes
from ..errors import ModelError
from ..core.layers import Layer
from ..core.packing import pack_layer
from ..core.precision import PRECISIONS, check_precision
from ..core.precision_route import route

AUTO = "auto"
DEFAULT_TOLERANCE = 1e-3
# a mode must beat fp32's step by this factor to be worth its error
MIN_GAIN = 1.05
_REPEATS, _STEPS = 5, 20


def check_request(precision, n_layers: Optional[int], calibrate, tolerance) -> object:
    """``precision`` as given: a mode, "auto" (which needs ``calibrate``) or one mode per
    layer (``n_layers`` of them; None: counted later). Raises ValueError naming what was
    expected."""
    if isinstance(precision, str):
        if precision == AUTO:
            if calibrate is None:
                raise ValueError("precision='auto' needs calibrate=: a few representative "
                                 "inputs to measure each mode's error on")
            if not (isinstance(tolerance, (int, float)) and tolerance > 0):
                raise ValueError(f"tolerance must be a positive number; got {tolerance!r}")
            return precision
        return check_precision(precision)
    if isinstance(precision, (list, tuple)):
        modes = tuple(check_precision(p) for p in precision)
        if n_layers is not None and len(modes) != n_layers:
            raise ValueError(f"precision per layer needs {n_layers} entries (one per "
                             f"recurrent layer); got {len(modes)}")
        return modes
    raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, 'auto' "
                    f"or a sequence of those per layer; got {precision!r}")


def reported(modes: Sequence[str]):
    """What ``.precision`` says: the one mode every layer runs, else the tuple per layer."""
    return modes[0] if len(set(modes)) == 1 else tuple(modes)


def step_time(layer: Layer, precision: str) -> float:
    """Seconds per timestep of ``layer`` alone in ``precision`` (as it runs), batch 1, over
    a short sequence (bidirectional layers included)."""
    cells = pack_layer(layer, precision, "calibration")
    h_shape, c_shape = state_shapes([layer], 1)
    h = np.zeros(h_shape, np.float32)
    c = np.zeros(c_shape, np.float32) if c_shape else None
    x = np.zeros((_STEPS, 1, layer.input_size), np.float32)
    y = np.empty((_STEPS, 1, layer.num_directions * layer.output_size), np.float32)
    best = float("inf")
    for _ in range(_REPEATS):
        start = time.perf_counter()
        _kernels.run_stack(cells, layer.num_directions, x, None, h, c, y, 1)
        best = min(best, (time.perf_counter() - start) / _STEPS)
    return best


def faster_modes(layer: Layer) -> List[str]:
    """The modes (as they run on this CPU) whose step of ``layer`` beats fp32's by MIN_GAIN,
    fastest first."""
    times = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # a mode's own warnings: measured here instead
        for mode in ("fp16", "bf16", "int8"):
            runs = route(mode, [layer])
            if runs in times:
                continue
            try:
                times[runs] = step_time(layer, runs)
            except ModelError:             # weights the mode cannot hold (fp16 range, inf)
                continue
    base = step_time(layer, "fp32")
    return sorted((m for m, t in times.items() if t * MIN_GAIN < base), key=times.get)


def output_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """max |got - want| / max(1, max |want|) over every output pair (inf for a NaN)."""
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.size == 0:
            continue
        diff = np.abs(g - w)
        if np.isnan(diff).any() and not np.array_equal(np.isnan(g), np.isnan(w)):
            return float("inf")
        scale = max(1.0, float(np.nanmax(np.abs(w))))
        worst = max(worst, float(np.nanmax(diff)) / scale)
    return worst


def choose(layers: Sequence[Layer], outputs: Callable[[tuple], list],
           tolerance: float) -> tuple:
    """One mode per layer: ``outputs(modes)`` gives the outputs on the calibration inputs
    with ``modes`` (one per layer); see the module docstring for the search."""
    chosen = ["fp32"] * len(layers)
    want = current = outputs(tuple(chosen))
    for k, layer in enumerate(layers):
        for mode in faster_modes(layer):
            trial = list(chosen)
            trial[k] = mode
            got = outputs(tuple(trial))
            if all(np.array_equal(g, c, equal_nan=True) for g, c in zip(got, current)):
                break       # the calibration inputs never reach this layer: it stays fp32
            if output_error(got, want) <= tolerance:
                chosen, current = trial, got
                break
    return tuple(chosen)
