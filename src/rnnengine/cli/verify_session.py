"""The whole-graph rows of ``rnnengine verify MODEL.onnx``: ``InferenceSession.run`` against
ONNX Runtime on the same file and random feeds; when the graph has state pairs (found
automatically or named with ``--state``), a stream and a pool of streams (state carried
inside) against ONNX Runtime's author-style loop (each step's state outputs fed back by
hand, never random); else a stream along the time axis against one ORT run."""
from __future__ import annotations

import argparse
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from ._common import Progress, diff_scale, one_line
from ..runtime.stream_checks import state_hint
from ..runtime.time_axis import check_streamable
from ._session import (batch_dim, hinted, load_session, ort_run, ort_session, parse_dims,
                       parse_feeds, parse_state, random_feeds, state_pairs, zero_state)

POOL_STREAMS = 3


class Row(NamedTuple):
    """One comparison: [(max |diff|, max |reference|)] over the model's own outputs and
    over the state outputs (None: not compared), a note, and whether it ran a stream."""
    label: str
    out: Optional[list]
    state: Optional[list]
    note: str = ""
    stream: bool = False


def whole_rows(args: argparse.Namespace) -> List[Row]:
    sess = load_session(args.model, args.precision)
    ort = ort_session(args.model)
    if ort is None:
        return [Row("onnxruntime, whole model", None, None, "not compared: onnxruntime is "
                    "not installed (pip install \"rnnengine[onnxruntime]\")", stream=True)]
    fixed = parse_feeds(sess, args.feed)
    pairs = parse_state(sess, args.pairs) or state_pairs(sess)
    dims = {d: args.batch for d in [batch_dim(sess, pairs)] if d is not None}
    dims.update(parse_dims(args.dim, sess))
    rng = np.random.default_rng(args.seed)
    feeds = {**fixed, **random_feeds(sess, fixed, dims, args.seq_len, rng)}
    names = [a.name for a in sess.get_outputs()]
    ours = dict(zip(names, hinted(sess.run, None, feeds)))
    theirs = dict(zip(names, ort_run(ort, feeds)))
    rows = [Row("onnxruntime, whole model: run, random feeds", *_split(ours, theirs, pairs))]
    hint = state_hint(sess, pairs)
    if hint:  # a stream would miss those inputs, or feed them something else than state
        how = ("no state pairs found automatically, yet inputs look like state" if not pairs
               else "inputs that look like state are left out of the automatic pairs")
        rows.append(Row("stream", None, None, f"not compared: {how}: {hint}; on the command "
                        "line: --state OUT=IN (repeatable)", stream=True))
    elif pairs:
        rows.append(_stream_row(sess, ort, fixed, pairs, dims, args, rng))
        rows.append(_pool_row(sess, ort, fixed, pairs, dims, args, rng))
    else:
        rows.append(_time_row(sess, feeds, theirs, args.seq_len))
    return rows


def _split(ours: Dict, theirs: Dict, pairs: Dict[str, str]) -> tuple:
    """(diffs of the model's own outputs, diffs of the state outputs or None)."""
    out = [d for n in ours if n not in pairs for d in diff_scale(ours[n], theirs[n])]
    state = [d for n in pairs for d in diff_scale(ours[n], theirs[n])]
    return out, state or None


def _worst(acc: Dict[str, tuple], name: str, ours, theirs) -> None:
    """Keep per output the largest difference and the largest reference value seen."""
    (d, s), = diff_scale(ours, theirs)
    old = acc.get(name, (0.0, 0.0))
    acc[name] = (max(old[0], d), max(old[1], s))


def _pair_label(pairs: Dict[str, str]) -> str:
    return ", ".join(f"{o} -> {i}" for o, i in pairs.items())


def _stream_row(sess, ort, fixed, pairs, dims, args, rng) -> Row:
    """``steps`` steps of sess.stream() (fixed feeds given once) against ORT's loop that
    feeds each step's state outputs to the next step."""
    steps = args.steps
    stream = sess.stream(state=pairs, feeds=fixed)
    ort_state = zero_state(sess, pairs, dims, args.seq_len)
    outputs = [a.name for a in sess.get_outputs()]
    kept = [n for n in outputs if n not in pairs]
    acc: Dict[str, tuple] = {}
    progress = Progress(steps, "verify stream")
    for _ in range(steps):
        step_feeds = random_feeds(sess, fixed, dims, args.seq_len, rng, skip=pairs.values())
        ours = dict(zip(kept, hinted(stream.step, step_feeds)))
        theirs = dict(zip(outputs, ort_run(ort, {**fixed, **step_feeds, **ort_state})))
        for n in kept:
            _worst(acc, n, ours[n], theirs[n])
        ort_state = {inp: theirs[out] for out, inp in pairs.items()}
        progress.advance()
    progress.close()
    carried = stream.state
    state = [d for inp in pairs.values() for d in diff_scale(carried[inp], ort_state[inp])]
    return Row(f"onnxruntime, whole model: stream x{steps}, state {_pair_label(pairs)} "
               "fed back", list(acc.values()), state, stream=True)


def _pool_row(sess, ort, fixed, pairs, dims, args, rng) -> Row:
    """``POOL_STREAMS`` streams stepped together through sess.pool, each against its own
    ORT loop (feeds of one stream, its state fed back)."""
    k, steps = POOL_STREAMS, args.steps
    label = f"onnxruntime, whole model: pool of {k} streams x{steps}, each against its own loop"
    try:
        pool = sess.pool(k, state=pairs, feeds=fixed)
    except ValueError as exc:
        return Row(label, None, None, f"not compared: {one_line(exc)}", stream=True)
    one = {**dims, pool.batch_dim: 1} if pool.batch_dim else dims
    # inputs the pool does not stack per stream are given once, the same for every stream
    shared = {**fixed, **random_feeds(sess, fixed, one, args.seq_len, rng, skip=list(
        pool.in_axis) + list(pairs.values()))}
    if len(shared) > len(fixed):
        pool = sess.pool(k, state=pairs, feeds=shared)
    ids = [pool.open() for _ in range(k)]
    states = [zero_state(sess, pairs, one, args.seq_len) for _ in ids]
    outputs = [a.name for a in sess.get_outputs()]
    kept = [n for n in outputs if n not in pairs]
    acc: Dict[str, tuple] = {}
    progress = Progress(steps, "verify pool")
    for _ in range(steps):
        each = [random_feeds(sess, shared, one, args.seq_len, rng, skip=pairs.values())
                for _ in ids]
        stacked = {n: np.concatenate([f[n] for f in each], axis=ax)
                   for n, ax in pool.in_axis.items() if n in each[0]}
        ours = hinted(pool.step, ids, stacked)
        alone = []
        for j, f in enumerate(each):
            got = dict(zip(outputs, ort_run(ort, {**shared, **f, **states[j]})))
            states[j] = {inp: got[out] for out, inp in pairs.items()}
            alone.append(got)
        for i, n in enumerate(kept):
            _worst(acc, n, ours[i], np.concatenate([a[n] for a in alone],
                                                    axis=pool.out_axis[i]))
        progress.advance()
    progress.close()
    state = [d for j, sid in enumerate(ids) for inp, value in pool.state(sid).items()
             for d in diff_scale(value, states[j][inp])]
    return Row(label, list(acc.values()), state, stream=True)


def _time_row(sess, feeds: Dict, theirs: Dict, T: int) -> Row:
    """A graph without state pairs streamed along its time axis in chunks of 1, 2, 3, ...
    steps (recurrent state carried between calls) against ORT's one run on all T steps;
    a time axis declared at a fixed size takes whole calls of it, so one call is compared."""
    label = f"onnxruntime, whole model: stream along time, {T} steps in chunks"
    try:
        axes = check_streamable(sess)
        stream = sess.stream()
    except ValueError as exc:
        return Row(label, None, None, f"not compared: {one_line(exc)}", stream=True)
    args = {a.name: a for a in sess.get_inputs()}
    fixed = {n: args[n].shape[ax] for n, ax in axes.items() if args[n].shape is not None
             and isinstance(args[n].shape[ax], int)}
    if fixed:
        T = next(iter(fixed.values()))
        label = (f"onnxruntime, whole model: stream, one call of {T} steps (the time axis "
                 f"of {', '.join(map(repr, fixed))} is fixed at {T})")
        bounds = [(0, T)]
    else:
        bounds, start, size = [], 0, 1
        while start < T:
            bounds.append((start, min(T, start + size)))
            start, size = start + size, size + 1
    names = [a.name for a in sess.get_outputs()]
    pieces = []
    for a, b in bounds:
        chunk = {n: (np.take(v, range(a, b), axis=axes[n]) if n in axes else v)
                 for n, v in feeds.items()}
        pieces.append(hinted(stream.step, chunk))
    diffs = []
    for k, name in enumerate(names):
        full = theirs[name]
        axis = next((ax for ax in range(full.ndim) if full.shape[ax] == T and all(
            p[k].ndim == full.ndim and p[k].shape[ax] == b - a
            for p, (a, b) in zip(pieces, bounds))), None)
        if axis is None and pieces[-1][k].shape == full.shape:
            # no time axis: a final state, which the last call must end on
            diffs += diff_scale(pieces[-1][k], full)
            continue
        if axis is None:
            return Row(label, None, None, f"not compared: output {name!r} has no time axis "
                       f"of {T} steps", stream=True)
        diffs += diff_scale(np.concatenate([p[k] for p in pieces], axis), full)
    return Row(label, diffs, None, stream=True)
