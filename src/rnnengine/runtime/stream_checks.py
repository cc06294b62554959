"""Checks and shapes shared by session streams and pools (session_stream.py): one thread
at a time, the state pairs, the feeds, the sizes of named dims, zero states, and whether a
graph without state pairs can stream along time."""
from __future__ import annotations

import functools
from typing import Dict

import numpy as np

from ..core.checks import check_one_way
from ..errors import ConcurrentStep
from .state_pairs import candidate_pairs, find_pairs, name_pairs_hint
from .time_axis import check_streamable


def _exclusive(method):
    """One thread at a time in a stream or pool: a second one gets ConcurrentStep (a RuntimeError) instead of
    corrupting the state (the lock never waits; nested calls of one thread are fine)."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if not self._lock.acquire(blocking=False):
            raise ConcurrentStep(f"{type(self).__name__}.{method.__name__.lstrip('_')}() called while "
                               "another thread is using it: give each thread its own "
                               "stream/pool or serialize the calls")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._lock.release()
    return guarded


def _pairs(sess, state) -> Dict[str, str]:
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if state is None:
        return find_pairs(sess.loaded.model.graph, inputs, outputs)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict {{output name: input name}}; got "
                        f"{type(state).__name__}")
    in_names, out_names = {a.name for a in inputs}, {a.name for a in outputs}
    for out, inp in state.items():
        if out not in out_names:
            raise ValueError(f"state: {out!r} is not an output of the graph; the outputs "
                             f"are {sorted(out_names)}")
        if inp not in in_names:
            raise ValueError(f"state: {inp!r} is not an input of the graph; the inputs "
                             f"are {sorted(in_names)}")
    if len(set(state.values())) != len(state):
        raise ValueError(f"state: two outputs feed the same input: {state}")
    return dict(state)


def state_hint(sess, pairs: Dict[str, str], error: str = "") -> str:
    """How to name the pairs when the graph has inputs that look like state but are not
    paired ("" when it has none; with ``error``, also when it is not about a missing one of
    those inputs)."""
    found = candidate_pairs(sess.loaded.model, sess.get_inputs(), sess.get_outputs(), pairs)
    if error and not any(error.startswith(f"missing input {i!r}") for _, i in found):
        return ""
    return name_pairs_hint(pairs, found) if found else ""


def _symbols(args_by_name, feeds: dict) -> dict:
    """Sizes of the named dims ('batch', ...) as the fed arrays give them."""
    sizes = {}
    for name, value in feeds.items():
        arg = args_by_name.get(name)
        if arg is not None and arg.shape is not None and getattr(value, "ndim", -1) == len(arg.shape):
            for d, n in zip(arg.shape, value.shape):
                if isinstance(d, str):
                    sizes.setdefault(d, n)
    return sizes


def _zeros(arg, sizes: dict) -> np.ndarray:
    shape = [d if isinstance(d, int) else sizes.get(d, 1) for d in (arg.shape or [])]
    return np.zeros(shape, arg.dtype if arg.dtype is not None else np.float32)


def _check_feeds(args: dict, feeds, carried=()) -> dict:
    if feeds is None:
        return {}
    if not isinstance(feeds, dict):
        raise TypeError(f"feeds must be a dict of input name -> array; got "
                        f"{type(feeds).__name__}")
    for name in feeds:
        if name not in args:
            raise ValueError(f"unknown input name {name!r}; the inputs are {list(args)}")
        if name in carried:
            raise ValueError(f"input {name!r} is state the stream carries; set it with "
                             "stream.state or import_state, not as a feed")
    return feeds


def _check_time_mode(sess) -> Dict[str, int]:
    """A graph without state pairs streams along time: every operator must keep timesteps
    apart and every recurrent node run one way (ValueError naming the offender).
    Returns {input: its time axis}."""
    time_axes = check_streamable(sess)
    for rec in sess.loaded.recurrent:
        try:
            check_one_way(rec.model.layers, "stream")
        except ValueError as e:
            raise ValueError(f"recurrent node {rec.label!r}: {e}") from None
    return time_axes
