"""Where a session pool's streams sit in the graph's arrays, and whether one graph pass may
serve them all.

Declared shapes only suggest it (``guess_axes``): exporters name the batch dim differently
on inputs and outputs (Keras: ``batch`` in, ``Softmax255_dim_0`` out), leave dims unnamed
(silero_vad.onnx) or declare stale shapes; and no declaration says whether the graph keeps
the rows of the batch apart (a peak normalisation over all axes does not). So ``probe`` runs
the graph on made-up rows, each stream alone and then ``K`` of them stacked, and batches only
if every state and kept output stacks the streams on one axis and row j of the stacked pass
equals stream j's lone pass. Otherwise the pool steps the streams one by one; the probe still
gives the axis each output stacks them on.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

K = 3   # streams in the probe's stacked pass (not 2: a size-2 axis is common in graphs)


def guess_axes(inputs, outputs, state_inputs, kept_outputs, time_axes=None) -> tuple:
    """From the declared shapes: (batch dim name or None, {step input: stream axis},
    {state input: stream axis or None}, [stream axis per kept output]).

    The batch dim is the named dim found in the most inputs; an argument that has it once
    has the streams there, any other on its first axis of size 1, named or unknown. The
    name is returned only when every state input and kept output has it exactly once (the
    pool's guess until ``probe`` decides). Time axes (``time_axes``: {input: axis}) are
    never the streams' axis."""
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
        return dim is not None and a.shape is not None and list(a.shape).count(dim) == 1

    def axis(a):
        if has_once(a):
            return a.shape.index(dim)
        for k, d in enumerate(a.shape or []):
            if (d == 1 or isinstance(d, str) or d is None) and time_axes.get(a.name) != k:
                return k
        return None

    by_name = {a.name: a for a in inputs}
    named = all(has_once(by_name[n]) for n in state_inputs) and all(
        has_once(a) for a in kept_outputs)
    # with the batch dim named throughout, an input without it is shared by the streams
    in_axis = {a.name: axis(a) for a in inputs
               if a.name not in state_inputs and axis(a) is not None
               and (has_once(a) or not named or dim is None)}
    state_axis = {n: axis(by_name[n]) for n in state_inputs}
    return (dim if named else None), in_axis, state_axis, [axis(a) or 0 for a in kept_outputs]


class Layout:
    """What ``probe`` found: ``batched``; ``out_axis`` {output index: stream axis};
    ``why`` (the reason when not batched); ``settled`` False when the made-up rows did not
    run alone (nothing could be judged: the pool asks again at its next step)."""
    __slots__ = ("batched", "out_axis", "why", "settled")

    def __init__(self, batched: bool, out_axis: Dict[int, int], why: Optional[str],
                 settled: bool = True):
        self.batched, self.out_axis, self.why, self.settled = batched, out_axis, why, settled


def probe(runner: Callable, one: dict, stacked: Dict[str, int], samples: Dict[str, np.ndarray],
          states: Dict[str, np.ndarray], state_axis: Dict[str, Optional[int]],
          outputs: List[Tuple[str, Optional[str]]], guess: Dict[int, int]) -> Layout:
    """``runner(k)`` -> ``run(feeds, slots)``: the graph on fresh zero recurrent state for
    ``k`` slots -> every output. ``one``: one stream's feeds (the ``stacked`` ones, {name:
    stream axis}, at size 1 there); ``samples``: values the integer feeds may take (the
    caller's); ``states``: one stream's state inputs, ``state_axis`` their stream axes;
    ``outputs``: (name, the state input it feeds or None) per graph output; ``guess``: the
    declared stream axis of the kept outputs."""
    rng = np.random.default_rng(0)
    rows = []
    for j in range(K):
        row = {n: (_made_up(v, samples.get(n), rng, j) if n in stacked else v)
               for n, v in one.items()}
        row.update({n: _made_up(z, None, rng, j) for n, z in states.items()})
        rows.append(row)
    try:
        run = runner(K)
        lone = [run(rows[j], [j]) for j in range(K)]
    except Exception as error:      # noqa: BLE001 -- made-up rows the graph refuses
        return Layout(False, dict(guess), f"the graph did not run on made-up rows "
                      f"({type(error).__name__}: {str(error)[:200]})", settled=False)
    why = None
    together = dict(one)
    for n in stacked:
        together[n] = np.concatenate([r[n] for r in rows], axis=stacked[n])
    for n, z in states.items():
        ax = state_axis.get(n)
        if ax is None or z.shape[ax] != 1:
            why = f"state input {n!r} {z.shape} has no axis of size 1 to stack the streams on"
            break
        together[n] = np.concatenate([r[n] for r in rows], axis=ax)
    outs = None
    if why is None:
        try:
            outs = runner(K)(together, list(range(K)))
        except Exception as error:  # noqa: BLE001 -- fixed at batch 1, say
            why = (f"the graph does not run {K} streams stacked ({type(error).__name__}: "
                   f"{str(error)[:200]})")
    out_axis = {}
    for i, (name, carried) in enumerate(outputs):
        pieces = [np.asarray(lone[j][i]) for j in range(K)]
        want = state_axis.get(carried) if carried is not None else guess.get(i)
        ax = _stream_axis(pieces, None if outs is None else np.asarray(outs[i]), want)
        out_axis[i] = ax if ax is not None else _unit_axis(pieces[0].shape, want)
        if why is not None:
            continue
        if ax is None:
            why = (f"output {name!r} does not stack the streams on one axis "
                   f"({pieces[0].shape} for one stream, {np.shape(outs[i])} for {K})")
        elif carried is not None and ax != state_axis[carried]:
            why = (f"state output {name!r} stacks the streams on axis {ax}, its input "
                   f"{carried!r} on axis {state_axis[carried]}")
        elif not _same(np.asarray(outs[i]), np.concatenate(pieces, axis=ax)):
            why = (f"the graph mixes the streams: output {name!r} of a stream depends on "
                   "the other streams in the batch")
    return Layout(why is None, out_axis, why)


def _made_up(value: np.ndarray, sample, rng, j: int) -> np.ndarray:
    """Row ``j``, like ``value`` (shape, dtype) with random content: normal floats, random
    bools, integers in the span of ``sample`` (the caller's values, so token ids likely stay
    in range) widened to [0, 1], a ramp shifted by ``j`` so that rows differ."""
    value = np.asarray(value)
    if value.dtype.kind == "f":
        return rng.standard_normal(value.shape).astype(value.dtype)
    if value.dtype.kind == "b":
        return (rng.random(value.shape) < 0.5) ^ (j % 2 == 1)
    if value.dtype.kind in "iu" and sample is not None and np.size(sample):
        lo, hi = min(int(np.min(sample)), 0), max(int(np.max(sample)), 1)
        ramp = np.arange(value.size).reshape(value.shape) + j
        return (lo + ramp % (hi - lo + 1)).astype(value.dtype)
    return value.copy()


def _stream_axis(pieces: List[np.ndarray], together: Optional[np.ndarray],
                 want: Optional[int]) -> Optional[int]:
    """The axis along which ``together`` stacks the equally shaped ``pieces`` (``want``
    first among several), or None."""
    shape = pieces[0].shape
    if together is None or any(p.shape != shape for p in pieces) or together.ndim != len(shape):
        return None
    k = len(pieces)
    found = [a for a in range(len(shape)) if shape[a] and together.shape[a] == k * shape[a]
             and together.shape[:a] + together.shape[a + 1:] == shape[:a] + shape[a + 1:]]
    if want in found:
        return want
    return found[0] if found else None


def _unit_axis(shape: tuple, want: Optional[int]) -> int:
    """Where one stream's output of ``shape`` can be stacked with others: ``want`` if it has
    size 1 there, else its first axis of size 1 (0 if none)."""
    if want is not None and want < len(shape) and shape[want] == 1:
        return want
    return next((a for a, n in enumerate(shape) if n == 1), 0)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the rounding of a batched kernel against a batch-1 one."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        finite = np.abs(b[np.isfinite(b)])
        scale = float(finite.max()) if finite.size else 1.0
        return bool(np.allclose(a, b, rtol=1e-3, atol=1e-5 * max(scale, 1.0), equal_nan=True))
    return bool(np.array_equal(a, b))


def padded_batch(k: int) -> int:
    """The batch a pool step of ``k`` streams runs at: ``k`` rounded up to 1, 2, 3, 4, 6, 8,
    12, 16, 24, ... (the powers of two and 3/4 of them). The executor plans one program per
    shape, a few ms to build at batch 5 and 100 ms at batch 100 (the build grows with the
    arrays), and remembers a handful: batches of every size a live service sees would build
    one again and again. The ladder keeps two sizes per doubling at the price of at most a
    third more rows."""
    if k <= 4:
        return k
    top = 1 << (k - 1).bit_length()
    return top * 3 // 4 if k <= top * 3 // 4 else top


def pad_rows(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``x`` with its first row on ``axis`` repeated until the axis is ``size`` long."""
    extra = np.repeat(np.take(x, [0], axis=axis), size - x.shape[axis], axis=axis)
    return np.concatenate([x, extra], axis=axis)


def stack_rows(rows: np.ndarray, axis: int) -> np.ndarray:
    """(k, one stream's shape, size 1 at ``axis``) -> the k streams stacked on ``axis``."""
    return np.ascontiguousarray(np.moveaxis(
        rows.reshape(rows.shape[:axis + 1] + rows.shape[axis + 2:]), 0, axis))


def unstack_rows(out: np.ndarray, axis: int, name: str, one: tuple, k: int) -> np.ndarray:
    """The inverse of ``stack_rows`` for a state output; ValueError if ``out`` is not ``k``
    streams of shape ``one`` stacked on ``axis``."""
    if out.shape != one[:axis] + (k,) + one[axis + 1:]:
        raise ValueError(f"state output for {name!r} has shape {out.shape}; one stream's "
                         f"state input is {one} with the streams on axis {axis}")
    return np.expand_dims(np.moveaxis(out, axis, 0), axis + 1)
