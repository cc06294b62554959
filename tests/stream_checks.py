"""Whole-model stream and pool checks shared by the tests of several rooms: each stream is
compared with ONNX Runtime run the way a model's author runs it (state fed back by hand)."""
import numpy as np

import session_models as sm
from rnnengine import InferenceSession

TOL = dict(rtol=1e-4, atol=1e-4)


def author_loop(ort, steps, state_inputs, state_outputs, first_state):
    """Feed each step's state outputs back as the next step's state inputs, by hand.
    -> (each step's other outputs, the final state)."""
    loop = sm.AuthorLoop(ort, dict(zip(state_outputs, state_inputs)), first_state)
    return [loop.step(feeds) for feeds in steps], loop.state


def same(got, want):
    """The engine's outputs ``got`` are arrays of ``want``'s shapes and dtypes, values within TOL."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, **TOL)


def check_stream(model, steps, pairs, zero_state, stream_feeds=None):
    sess = InferenceSession(model)
    stream = sess.stream(feeds=stream_feeds)
    assert stream.state_names == pairs
    expected, final = author_loop(sm.ort_session(model), [{**s, **(stream_feeds or {})}
                                                          for s in steps],
                                  list(pairs.values()), list(pairs), zero_state)
    for feeds, want in zip(steps, expected):
        same(stream.step(feeds), want)
    for name, value in final.items():
        np.testing.assert_allclose(stream.state[name], value, **TOL)
    return stream


def silero_chunks(rng, n, batch=1):
    t = np.arange(512) / 16000
    return [(0.2 * np.sin(2 * np.pi * 200 * (k + 1) * t)[None].repeat(batch, 0)
             + 0.05 * rng.standard_normal((batch, 512))).astype(np.float32) for k in range(n)]


def check_pool(model, make_feeds, pairs, zero, n_streams, steps, fixed=None, batched=True):
    """Streams join and leave at different times; every step moves a different subset;
    each stream must match its own ORT author loop."""
    sess = InferenceSession(model)
    pool = sess.pool(capacity=n_streams, feeds=fixed)
    assert pool.batched == batched
    assert ("one graph pass" in repr(pool)) == batched
    ort = sm.ort_session(model)
    rng = np.random.default_rng(8)
    ids = [pool.open() for _ in range(n_streams)]
    loops = {sid: sm.AuthorLoop(ort, pairs, zero) for sid in ids}
    for step in range(steps):
        chosen = [sid for sid in ids if rng.random() < 0.7]
        rng.shuffle(chosen)
        if not chosen:
            continue
        rows = {sid: make_feeds(rng) for sid in chosen}
        stacked = {k: np.concatenate([rows[sid][k] for sid in chosen], axis=ax)
                   for k, ax in pool.in_axis.items() if k in rows[chosen[0]]}
        got = pool.step(chosen, stacked)
        for j, sid in enumerate(chosen):
            want = loops[sid].step({**rows[sid], **(fixed or {})})
            for a, b, ax in zip(got, want, pool.out_axis):
                np.testing.assert_allclose(np.take(a, [j], axis=ax), b, **TOL)
        if step == steps // 2:       # a stream leaves, a new one joins at zero state
            pool.close(ids[0])
            ids[0] = pool.open()
            loops[ids[0]] = sm.AuthorLoop(ort, pairs, zero)
    for sid in ids:
        for name, value in pool.state(sid).items():
            np.testing.assert_allclose(value, loops[sid].state[name], **TOL)
    return pool
