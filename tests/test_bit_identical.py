"""kernels_impl.h promises that every output is the same sum in the same order whatever the
path: a streamed step, a whole sequence, any batch size and any thread split. Checked bit for
bit here (not to a tolerance), per ISA variant and cell kind, including the two-phase cells
(GRU linear_before_reset=0, LSTM projection). Sizes span several 16-unit blocks and a
partial one, so every thread gets blocks and the panel kernels' row counts vary."""
import numpy as np
import pytest

from rnnengine import Layer, Model

CASES = [("lstm", {}), ("lstm", {"proj": 19}), ("gru", {"linear_before_reset": 0}),
         ("gru", {"linear_before_reset": 1}), ("rnn", {})]


def model_for(kind, extra, threads=1, layers=2):
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rng = np.random.default_rng(11)
    H, I = 70, 9
    P = extra.get("proj")
    made, width = [], I
    for _ in range(layers):
        proj = rng.uniform(-0.3, 0.3, (1, P, H)) if P else None
        made.append(Layer.from_onnx(
            kind, rng.uniform(-0.3, 0.3, (1, G * H, width)),
            rng.uniform(-0.3, 0.3, (1, G * H, P or H)), rng.uniform(-0.3, 0.3, (1, 2 * G * H)),
            proj=proj, linear_before_reset=extra.get("linear_before_reset", 0)))
        width = P or H
    return Model(made, threads=threads)


@pytest.mark.parametrize("kind, extra", CASES)
def test_sequence_step_batch_and_threads_agree_bit_for_bit(isa, kind, extra):
    model = model_for(kind, extra)
    T, N = 7, 8
    x = np.random.default_rng(3).standard_normal((T, N, model.input_size)).astype(np.float32)
    y, _ = model.run(x)

    stream = model.stream(N)
    stepped = np.stack([stream.step(x[t]) for t in range(T)])
    np.testing.assert_array_equal(stepped, y)            # streamed steps vs whole sequence

    chunked = model.stream(N)
    np.testing.assert_array_equal(np.concatenate([chunked.run(x[:3]), chunked.run(x[3:])]), y)

    for n in range(N):                                    # batch of one vs batch of N
        np.testing.assert_array_equal(model.run(x[:, n:n + 1])[0], y[:, n:n + 1])

    for threads in (2, 3):                                # any thread split
        np.testing.assert_array_equal(model_for(kind, extra, threads).run(x)[0], y)
        pool = model_for(kind, extra, threads).pool(N)
        ids = [pool.open() for _ in range(N)]
        np.testing.assert_array_equal(np.stack([pool.step(ids, x[t]) for t in range(T)]), y)
