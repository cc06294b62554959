"""Pool: interleaved steps over random subsets of streams equal independent per-stream runs of
PyTorch with the same weights; ids, state access and errors."""
from __future__ import annotations

import numpy as np
import pytest

from rnnengine.core.layers import Layer
from rnnengine.runtime.model import Model
from rnnengine.runtime.pool import Pool
from torch_reference import assert_close, random_model, torch_run

CONFIGS = {
    "lstm": dict(kind="lstm", input_size=5, hidden_size=7),
    "gru": dict(kind="gru", input_size=5, hidden_size=7),
    "rnn": dict(kind="rnn", input_size=5, hidden_size=7),
    "lstm-2layers-proj": dict(kind="lstm", input_size=6, hidden_size=9, num_layers=2, proj_size=4),
    "gru-3layers": dict(kind="gru", input_size=3, hidden_size=8, num_layers=3),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def twins(request):
    return random_model(seed=len(request.param), **CONFIGS[request.param])


def test_interleaved_random_subsets_equal_independent_runs(twins):
    model, ref = twins
    rng = np.random.default_rng(7)
    pool = model.pool(capacity=6)
    inputs, outputs, finals = {}, {}, {}
    for _ in range(60):
        # Streams join and leave at any time.
        if len(pool) < pool.capacity and rng.random() < 0.4:
            sid = pool.open()
            assert sid not in inputs
            inputs[sid], outputs[sid] = [], []
        if len(pool) > 1 and rng.random() < 0.15:
            sid = int(rng.choice(pool.ids))
            finals[sid] = pool.state(sid)
            pool.close(sid)
        live = pool.ids
        if not live:
            continue
        ids = [int(s) for s in rng.permutation(live)[:rng.integers(1, len(live) + 1)]]
        xs = rng.standard_normal((len(ids), model.input_size)).astype(np.float32)
        ys = pool.step(ids, xs)
        assert ys.shape == (len(ids), model.layers[-1].output_size) and ys.dtype == np.float32
        for sid, x, y in zip(ids, xs, ys):
            inputs[sid].append(x)
            outputs[sid].append(y)
    for sid in pool.ids:
        finals[sid] = pool.state(sid)
    stepped = [sid for sid in inputs if inputs[sid]]
    assert len(stepped) >= 6   # reuse of slots happened: more streams than capacity
    for sid in stepped:
        y_ref, state_ref = torch_run(ref, np.array(inputs[sid]))
        assert_close(np.array(outputs[sid]), y_ref, f"outputs of stream {sid}")
        assert_close(finals[sid], state_ref, f"final state of stream {sid}")


def test_state_get_set_and_stream_interop(twins):
    model, ref = twins
    rng = np.random.default_rng(3)
    pool = model.pool(capacity=3)
    a, b = pool.open(), pool.open()
    L, Hout, H = model.num_layers, model.layers[0].output_size, model.hidden_size
    h0 = rng.standard_normal((L, 1, Hout)).astype(np.float32) * 0.5
    start = (h0, rng.standard_normal((L, 1, H)).astype(np.float32)) if model.kind == "lstm" else h0
    pool.set_state(a, start)
    got = pool.state(a)
    zero = pool.state(b)
    for g, s in zip(got if isinstance(got, tuple) else (got,), start if isinstance(start, tuple) else (start,)):
        assert g.shape == s.shape
        np.testing.assert_array_equal(g, s)
    for z in zero if isinstance(zero, tuple) else (zero,):
        assert not z.any()
    # The returned state is a copy.
    (got[0] if isinstance(got, tuple) else got)[...] = 99
    xs = rng.standard_normal((4, 2, model.input_size)).astype(np.float32)
    ys = [pool.step([b, a], x) for x in xs]
    y_ref, state_ref = torch_run(ref, xs[:, 1], start)
    assert_close(np.array([y[1] for y in ys]), y_ref)
    assert_close(pool.state(a), state_ref)
    # The pool's state structure is a batch-1 stream's: hand it over and continue there.
    stream = model.stream(batch=1)
    stream.state = pool.state(a)
    more = rng.standard_normal((3, model.input_size)).astype(np.float32)
    y_more = np.array([stream.step(x) for x in more])
    y_ref2, _ = torch_run(ref, np.concatenate([xs[:, 1], more]), start)
    assert_close(y_more, y_ref2[4:])
    # Unbatched (L, .) states are accepted too; reset goes back to zeros.
    unb = tuple(s[:, 0] for s in start) if isinstance(start, tuple) else start[:, 0]
    pool.set_state(b, unb)
    np.testing.assert_array_equal(pool.state(b)[0] if isinstance(start, tuple) else pool.state(b),
                                  h0)
    pool.reset(b)
    for z in pool.state(b) if isinstance(start, tuple) else (pool.state(b),):
        assert not z.any()


def test_open_with_state_and_empty_step(twins):
    model, ref = twins
    pool = model.pool(capacity=2)
    rng = np.random.default_rng(11)
    x0 = rng.standard_normal((5, model.input_size)).astype(np.float32)
    _, mid = torch_run(ref, x0)
    mid32 = tuple(m.astype(np.float32) for m in mid) if isinstance(mid, tuple) else mid.astype(np.float32)
    sid = pool.open(mid32)
    x1 = rng.standard_normal((1, model.input_size)).astype(np.float32)
    y = pool.step([sid], x1)
    y_ref, _ = torch_run(ref, np.concatenate([x0, x1]))
    np.testing.assert_allclose(y[0], y_ref[-1], rtol=1e-5, atol=1e-5)
    empty = pool.step([], np.zeros((0, model.input_size), np.float32))
    assert empty.shape == (0, model.layers[-1].output_size)


def test_ids_are_unique_across_slot_reuse():
    model, _ = random_model("gru", 3, 4)
    pool = model.pool(capacity=2)
    a, b = pool.open(), pool.open()
    assert (a, b) == (0, 1) and len(pool) == 2 and pool.ids == [0, 1]
    pool.close(a)
    c = pool.open()
    assert c not in (a, b) and c in pool and a not in pool
    with pytest.raises(ValueError, match=f"stream id {a} was closed"):
        pool.step([a], np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=f"stream id {a} was closed"):
        pool.state(a)
    with pytest.raises(ValueError, match=f"stream id {a} was closed"):
        pool.close(a)
    assert "2/2" in repr(pool)


def test_errors_leave_states_untouched():
    model, _ = random_model("lstm", 3, 4)
    pool = model.pool(capacity=3)
    a, b = pool.open(), pool.open()
    pool.step([a, b], np.ones((2, 3), np.float32))
    before = [pool.state(s) for s in (a, b)]
    x1, x2 = np.ones((1, 3), np.float32), np.ones((2, 3), np.float32)
    cases = [
        (ValueError, "unknown stream id 5", lambda: pool.step([a, 5], x2)),
        (ValueError, "unknown stream id -1", lambda: pool.step([-1], x1)),
        (ValueError, "unknown stream id", lambda: pool.step([2**70], x1)),
        (ValueError, f"stream id {a} appears more than once", lambda: pool.step([a, a], x2)),
        (TypeError, "ids must be ints.*bool", lambda: pool.step([True], x1)),
        (TypeError, "ids must be ints.*float", lambda: pool.step([0.0], x1)),
        (TypeError, "ids must be ints.*float", lambda: pool.step(np.array([0.0]), x1)),
        (TypeError, "sequence of stream ids", lambda: pool.step(a, x1)),
        (TypeError, "sequence of stream ids", lambda: pool.step(None, x1)),
        (ValueError, r"xs must be float32 of shape \(2, 3\).*got \(1, 3\)", lambda: pool.step([a, b], x1)),
        (ValueError, r"xs must be float32 of shape \(1, 3\).*got \(1, 4\)",
         lambda: pool.step([a], np.ones((1, 4), np.float32))),
        (ValueError, r"got \(3,\)", lambda: pool.step([a], np.ones(3, np.float32))),
        (TypeError, "dtype int64", lambda: pool.step([a], np.ones((1, 3), np.int64))),
        (TypeError, "a stream id is an int", lambda: pool.state("a")),
        (ValueError, "unknown stream id 9", lambda: pool.set_state(9, before[0])),
        (ValueError, r"state h must have shape \(1, 4\)",
         lambda: pool.set_state(a, (np.zeros((1, 5), np.float32), np.zeros((1, 4), np.float32)))),
        (TypeError, r"LSTM state must be a tuple \(h, c\)", lambda: pool.set_state(a, before[0][0])),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()
    for sid, state in zip((a, b), before):
        for got, want in zip(pool.state(sid), state):
            np.testing.assert_array_equal(got, want)
    # Steps with ids in numpy form and from any iterable work.
    pool.step(np.array([b, a]), x2)
    pool.step(iter([a]), x1)


def test_capacity_and_construction_errors():
    model, _ = random_model("rnn", 2, 3)
    pool = model.pool(capacity=2)
    assert isinstance(pool, Pool) and pool.capacity == 2
    pool.open(), pool.open()
    with pytest.raises(RuntimeError, match="pool is full: all 2 streams are open"):
        pool.open()
    for bad in (0, -3, 2.5, True, "4"):
        with pytest.raises(ValueError, match="capacity must be a positive integer"):
            model.pool(capacity=bad)
    rng = np.random.default_rng(0)
    bi = Model([Layer.from_onnx("gru", rng.standard_normal((2, 9, 2)), rng.standard_normal((2, 9, 3)),
                                direction="bidirectional")])
    with pytest.raises(ValueError, match="bidirectional model cannot pool"):
        bi.pool(4)


def test_reverse_model_cannot_pool():
    """Like Model.stream: a reverse direction starts from the end of the whole sequence."""
    model, _ = random_model("gru", 3, 4, seed=5)
    layer = model.layers[0]
    rev = Model([Layer.from_onnx("gru", layer.W, layer.R, np.concatenate([layer.Wb, layer.Rb], 1),
                                 direction="reverse", linear_before_reset=1)])
    with pytest.raises(ValueError, match="reverse-direction model cannot pool"):
        rev.pool(1)


def test_one_stream_steps_between_batched_ones_equal_independent_runs(twins):
    """A step of one stream runs on a batch-1 stream core, the state copied in and back:
    alternated with batched steps of the same streams it equals PyTorch, and leaves the
    other streams' states as they were."""
    model, ref = twins
    rng = np.random.default_rng(11)
    pool = model.pool(capacity=4)
    a, b, c = pool.open(), pool.open(), pool.open()
    xs = rng.standard_normal((2, 9, model.input_size)).astype(np.float32)
    ys = [[], []]
    for t in range(9):
        if t % 3 == 2:
            both = pool.step([b, a], xs[::-1, t])
            ys[0].append(both[1])
            ys[1].append(both[0])
        else:
            before = pool.state(c)
            ys[0].append(pool.step([a], xs[0, t:t + 1])[0])
            ys[1].append(pool.step([b], xs[1, t:t + 1])[0])
            after = pool.state(c)
            for u, v in zip(*(s if isinstance(s, tuple) else (s,) for s in (before, after))):
                np.testing.assert_array_equal(u, v)
    for s, sid in enumerate((a, b)):
        y_ref, state_ref = torch_run(ref, xs[s])
        assert_close(np.array(ys[s]), y_ref, f"outputs of stream {s}")
        assert_close(pool.state(sid), state_ref, f"final state of stream {s}")
