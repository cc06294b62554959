"""Argument checks and state shapes shared by Model, Stream, Pool and state_io (a leaf: it
imports nothing of the package but its exception type).

Every check raises TypeError/ValueError naming what was expected and what was given."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

# A model's state: h (GRU/RNN) or (h, c) (LSTM), each (L*D, N, ·).
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


def check_threads(threads) -> int:
    return check_positive_int("threads", threads)


def is_one_way(layers: Sequence) -> bool:
    """True when every layer runs forward only: what a stream or a pool can advance a step at
    a time (a reverse direction reads the sequence from its end)."""
    return all(layer.num_directions == 1 and not layer.reverse for layer in layers)


def check_one_way(layers: Sequence, use: str) -> None:
    if not is_one_way(layers):
        which = ("bidirectional" if any(layer.num_directions != 1 for layer in layers)
                 else "reverse-direction")
        raise ValueError(f"a {which} model cannot {use}: its reverse direction needs "
                         "the whole sequence; use Model.run")


def state_shapes(layers: Sequence, batch: int) -> Tuple[tuple, Optional[tuple]]:
    """(h shape, c shape or None) of a stack's state for ``batch`` sequences: h (L*D, N, Hout)
    and, for LSTM, c (L*D, N, H); every layer of a stack has the same widths."""
    first = layers[0]
    LD = len(layers) * first.num_directions
    h_shape = (LD, batch, first.output_size)
    c_shape = (LD, batch, first.hidden_size) if first.kind == "lstm" else None
    return h_shape, c_shape


def check_state(layers: Sequence, state, batch: int, unbatched: bool):
    """A user's state for ``batch`` sequences -> fresh float32 arrays (h, c or None) the
    kernels may overwrite; errors show shapes the way the user gave them (unbatched: the
    batch axis left out)."""
    h_shape, c_shape = state_shapes(layers, batch)
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


def time_major(x: np.ndarray, batch_first: bool) -> np.ndarray:
    """(T, I) -> (T, 1, I); (N, T, I) -> (T, N, I) when batch_first; other shapes pass
    through for the caller's shape check. A view: the caller checks the sizes, then makes it
    contiguous float32 (a broadcast x is never copied before it is known to fit)."""
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim == 3 and batch_first:
        return x.transpose(1, 0, 2)
    return x


def check_work_size(cells: Sequence, output_size: int, T: int, N: int) -> None:
    """The kernels' scratch for T steps of N rows must fit one call (``check_size``)."""
    widest = max(max(k.gates * k.hidden_size for k in cells), output_size)
    check_size("the work buffers for x", (T, N, widest))


def step_input_error(shape, batch: int, input_size: int) -> ValueError:
    """What Stream.step raises for an x_t of the wrong shape."""
    if batch == 1:
        expected = f"(1, {input_size}) or ({input_size},)"
    else:
        expected = f"({batch}, {input_size})"
    return ValueError(f"x_t must be float32 of shape {expected}; got {tuple(shape)}")


def out_error(out, shape: tuple) -> ValueError:
    """What Stream.step raises for an ``out=`` array it cannot write y_t into."""
    got = f"{type(out).__name__} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}"
    return ValueError(f"out must be a writeable C-contiguous float32 array of shape "
                      f"{shape}; got {got}")
