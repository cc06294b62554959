"""Streaming: Stream.step one timestep at a time and Stream.run over uneven chunks must give
what the whole sequence gives in the NumPy oracle (and Model.run), on multi-layer models.

Against the float64 oracle the float32 tolerance is the project's 1e-5; against Model.run
(float32 too, but a different path: one GEMM for all timesteps) it is 1e-6."""
import re

import numpy as np
import pytest

from conftest import build_model, random_stack, random_state, states

from rnnengine.testing.reference import run_stack


STACKS = [
    # kind, layers, proj
    ("lstm", 1, 0), ("lstm", 3, 0), ("lstm", 2, 4), ("lstm", 1, 1),
    ("gru", 1, 0), ("gru", 3, 0), ("rnn", 1, 0), ("rnn", 2, 0),
]
IDS = ["-".join(map(str, s)) for s in STACKS]


def close(got, expected, rtol=1e-5, atol=1e-5):
    """Results against the float64 oracle; atol relative to the largest value (at least 1)."""
    for g, e in zip(got, expected):
        assert np.shape(g) == np.shape(e), (np.shape(g), np.shape(e))
        scale = max(1.0, float(np.max(np.abs(e)))) if np.size(e) else 1.0
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * scale)


def make(rng, stack, I=5, H=9):
    kind, L, proj = stack
    layers = random_stack(rng, kind, L, "forward", I, H, proj)
    return layers, build_model(layers)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("stack", STACKS, ids=IDS)
def test_step_matches_whole_sequence(stack, batch, rng):
    layers, model = make(rng, stack)
    T = 9
    x = rng.standard_normal((T, batch, 5)).astype(np.float32)
    stream = model.stream(batch=batch)
    ys = np.stack([stream.step(x[t]) for t in range(T)])
    y_ref, s_ref = run_stack(layers, x)
    y_run, s_run = model.run(x)
    close([ys] + states(stream.state), [y_ref] + states(s_ref))
    close([ys] + states(stream.state), [y_run] + states(s_run), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stack", STACKS, ids=IDS)
def test_step_unbatched_vector(stack, rng):
    # batch 1: x_t may be (I,), giving y_t (Hout,)
    layers, model = make(rng, stack)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    stream = model.stream()
    ys = np.stack([stream.step(x[t]) for t in range(6)])
    y_ref, _ = run_stack(layers, x)
    assert ys.shape == y_ref.shape
    close([ys], [y_ref])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("stack", STACKS, ids=IDS)
def test_run_uneven_chunks(stack, batch, batch_first, rng):
    layers, model = make(rng, stack)
    model.batch_first = batch_first
    T = 13
    x = rng.standard_normal((T, batch, 5)).astype(np.float32)
    state0 = random_state(rng, stack[0], stack[1], 1, batch, 9, stack[2] or 9)
    stream = model.stream(batch=batch)
    stream.state = state0
    pieces, t = [], 0
    for size in (1, 4, 2, 0, 5, 1):
        chunk = x[t:t + size]
        if batch_first:
            chunk = chunk.transpose(1, 0, 2)          # non-contiguous on purpose
        y = stream.run(chunk)
        pieces.append(y.transpose(1, 0, 2) if batch_first else y)
        t += size
    assert t == T
    ys = np.concatenate(pieces)
    y_ref, s_ref = run_stack(layers, x, state0)
    close([ys] + states(stream.state), [y_ref] + states(s_ref))
    y_run, s_run = model.run(x.transpose(1, 0, 2) if batch_first else x, state0)
    close([ys] + states(stream.state),
          [y_run.transpose(1, 0, 2) if batch_first else y_run] + states(s_run),
          rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stack", STACKS, ids=IDS)
def test_run_unbatched_chunks(stack, rng):
    layers, model = make(rng, stack)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    stream = model.stream()
    ys = np.concatenate([stream.run(x[:3]), stream.run(x[3:4]), stream.run(x[4:])])
    y_ref, s_ref = run_stack(layers, x)
    close([ys], [y_ref])
    # the stream's state is batched (L*D, 1, .) as documented for batch=1 streams
    close(states(stream.state), [s[:, None] for s in states(s_ref)])


@pytest.mark.parametrize("stack", STACKS, ids=IDS)
def test_state_read_and_assign(stack, rng):
    kind, L, proj = stack
    layers, model = make(rng, stack)
    batch, T = 2, 8
    x = rng.standard_normal((T, batch, 5)).astype(np.float32)
    stream = model.stream(batch=batch)
    zero = stream.state
    for s in states(zero):
        assert s.dtype == np.float32 and not s.any()
    assert [s.shape for s in states(zero)] == [s.shape for s in states(model.run(x)[1])]

    stream.run(x[:5])
    _, s5 = run_stack(layers, x[:5])
    mid = stream.state
    close(states(mid), states(s5))
    # The state read is a snapshot: mutating it or stepping on does not change the other.
    for s in states(mid):
        s += 100.0
    close(states(stream.state), states(s5))
    snapshot = stream.state
    stream.step(x[5])
    close(states(snapshot), states(s5))

    # Assigning a state continues from it, and the assigned arrays are not aliased.
    start = random_state(rng, kind, L, 1, batch, 9, proj or 9)
    given = tuple(a.copy() for a in start) if isinstance(start, tuple) else start.copy()
    stream.state = given
    for s in states(given):
        s[...] = 7.0
    y = stream.run(x)
    y_ref, s_ref = run_stack(layers, x, start)
    close([y] + states(stream.state), [y_ref] + states(s_ref))

    # The state just read can be assigned to a fresh stream and resumes exactly.
    other = model.stream(batch=batch)
    stream.state = start
    stream.run(x[:3])
    other.state = stream.state
    close([other.run(x[3:])], [y_ref[3:]])


@pytest.mark.parametrize("stack", STACKS, ids=IDS)
def test_state_assign_float64_and_wrong_shape(stack, rng):
    kind, L, proj = stack
    layers, model = make(rng, stack)
    stream = model.stream(batch=3)
    start = random_state(rng, kind, L, 1, 3, 9, proj or 9)
    stream.state = tuple(a.astype(np.float64) for a in start) if kind == "lstm" \
        else start.astype(np.float64)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    close([stream.run(x)], [run_stack(layers, x, start)[0]])
    bad = tuple(a[:, :2] for a in start) if kind == "lstm" else start[:, :2]
    with pytest.raises(ValueError, match=r"\(.*3.*\)"):
        stream.state = bad


@pytest.mark.parametrize("stack", STACKS, ids=IDS)
def test_reset(stack, rng):
    layers, model = make(rng, stack)
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    stream = model.stream(batch=2)
    first = stream.run(x)
    stream.reset()
    for s in states(stream.state):
        assert not s.any()
    again = stream.run(x)
    y_ref, s_ref = run_stack(layers, x)
    close([first], [y_ref])
    close([again] + states(stream.state), [y_ref] + states(s_ref))


def test_streams_are_independent(rng):
    layers, model = make(rng, ("lstm", 2, 3))
    a, b = model.stream(batch=2), model.stream(batch=2)
    xa = rng.standard_normal((5, 2, 5)).astype(np.float32)
    xb = rng.standard_normal((5, 2, 5)).astype(np.float32)
    ya = [a.step(xa[t]) for t in range(5)]
    yb = [b.step(xb[t]) for t in range(5)]        # interleaving would show shared state
    close([np.stack(ya)], [run_stack(layers, xa)[0]])
    close([np.stack(yb)], [run_stack(layers, xb)[0]])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_bidirectional_model_cannot_stream(kind, rng):
    model = build_model(random_stack(rng, kind, 2, "bidirectional", 4, 5))
    with pytest.raises(ValueError, match="bidirectional"):
        model.stream()
    with pytest.raises(ValueError, match="bidirectional"):
        model.stream(batch=3)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_reverse_model_refuses_to_stream(kind, rng):
    """A reverse-direction model needs the whole sequence as a bidirectional one does: a
    stream or a pool of one is refused, naming why; Model.run still runs it."""
    layers = random_stack(rng, kind, 1, "reverse", 4, 5)
    model = build_model(layers)
    for make_one in (model.stream, model.pool):
        with pytest.raises(ValueError, match="a reverse-direction model cannot"):
            make_one()
    x = rng.standard_normal((6, 1, 4)).astype(np.float32)
    close([model.run(x)[0]], [run_stack(layers, x)[0]])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_batch(bad, rng):
    _, model = make(rng, ("gru", 1, 0))
    with pytest.raises((ValueError, TypeError),
                       match=f"^batch must be a positive integer; got {re.escape(repr(bad))}$"):
        model.stream(batch=bad)


def test_step_wrong_shape_names_expected(rng):
    _, model = make(rng, ("lstm", 2, 0))
    stream = model.stream(batch=2)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        stream.step(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"2, 5"):
        stream.run(np.zeros((3, 1, 5), np.float32))
    # a failed call leaves the state untouched
    for s in states(stream.state):
        assert not s.any()
