"""The whole-graph rows of ``rnnengine verify MODEL.onnx``: ``InferenceSession.run`` against
ONNX Runtime on the same file and random feeds, and, when the graph has state pairs, a
stream (state carried inside) against ONNX Runtime's author-style loop (each step's state
outputs fed back by hand)."""
from __future__ import annotations

import argparse
from typing import Dict, List

import numpy as np

from ._common import Progress, max_diff, one_line
from ..time_axis import check_streamable
from ._session import (batch_dim, hinted, load_session, ort_run, ort_session, parse_dims,
                       parse_feeds, random_feeds, state_pairs, zero_state)


def whole_rows(args: argparse.Namespace) -> List[tuple]:
    """(reference, diff of the outputs, diff of the state outputs, note) rows."""
    sess = load_session(args.model)
    ort = ort_session(args.model)
    if ort is None:
        return [("onnxruntime, whole model", None, None, "not compared: onnxruntime is not "
                 "installed")]
    fixed = parse_feeds(sess, args.feed)
    pairs = state_pairs(sess)
    dims = {d: args.batch for d in [batch_dim(sess, pairs)] if d is not None}
    dims.update(parse_dims(args.dim))
    rng = np.random.default_rng(args.seed)
    feeds = {**fixed, **random_feeds(sess, fixed, dims, args.seq_len, rng)}
    names = [a.name for a in sess.get_outputs()]
    ours = dict(zip(names, hinted(sess.run, None, feeds)))
    theirs = dict(zip(names, ort_run(ort, feeds)))
    rows = [("onnxruntime, whole model: run, random feeds",) + _diffs(ours, theirs, pairs)]
    if pairs:
        rows.append(_stream_row(sess, ort, fixed, pairs, dims, args, rng))
    else:
        rows.append(_time_row(sess, feeds, theirs, fixed, args.seq_len))
    return rows


def _diffs(ours: Dict, theirs: Dict, pairs: Dict[str, str]) -> tuple:
    """(max diff over the non-state outputs, over the state outputs or None, note)."""
    out = [max_diff(ours[n], theirs[n]) for n in ours if n not in pairs]
    state = [max_diff(ours[n], theirs[n]) for n in pairs]
    return (max(out, default=0.0), max(state) if state else None, "")


def _stream_row(sess, ort, fixed, pairs, dims, args, rng) -> tuple:
    """``steps`` steps of sess.stream() (fixed feeds given once) against ORT's loop."""
    steps = args.steps
    stream = sess.stream(feeds=fixed)
    ort_state = zero_state(sess, pairs, dims, args.seq_len)
    outputs = [a.name for a in sess.get_outputs()]
    kept = [n for n in outputs if n not in pairs]
    worst = 0.0
    progress = Progress(steps, "verify stream")
    for _ in range(steps):
        step_feeds = random_feeds(sess, fixed, dims, args.seq_len, rng, skip=pairs.values())
        ours = dict(zip(kept, hinted(stream.step, step_feeds)))
        theirs = dict(zip(outputs, ort_run(ort, {**fixed, **step_feeds, **ort_state})))
        worst = max([worst] + [max_diff(ours[n], theirs[n]) for n in kept])
        ort_state = {inp: theirs[out] for out, inp in pairs.items()}
        progress.advance()
    progress.close()
    carried = stream.state
    diff_state = max(max_diff(carried[inp], ort_state[inp]) for inp in pairs.values())
    label = (f"onnxruntime, whole model: stream x{steps}, state "
             f"{', '.join(f'{o} -> {i}' for o, i in pairs.items())} fed back")
    return (label, worst, diff_state, "")


def _time_row(sess, feeds: Dict, theirs: Dict, fixed: Dict, T: int) -> tuple:
    """A graph without state pairs streamed along its time axis in chunks of 1, 2, 3, ...
    steps (recurrent state carried between calls) against ORT's one run on all T steps."""
    label = f"onnxruntime, whole model: stream along time, {T} steps in chunks"
    try:
        axes = check_streamable(sess)
        stream = sess.stream()
    except ValueError as exc:
        return (label, None, None, f"not compared: {one_line(exc)[:120]}")
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
    worst = 0.0
    for k, name in enumerate(names):
        full = theirs[name]
        axis = next((ax for ax in range(full.ndim) if full.shape[ax] == T and all(
            p[k].ndim == full.ndim and p[k].shape[ax] == b - a
            for p, (a, b) in zip(pieces, bounds))), None)
        if axis is None:
            return (label, None, None, f"not compared: output {name!r} has no time axis of "
                    f"{T} steps")
        worst = max(worst, max_diff(np.concatenate([p[k] for p in pieces], axis), full))
    return (label, worst, None, "")
