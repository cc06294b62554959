"""rnnengine.from_keras against the Keras 3 layer's own outputs (KERAS_BACKEND=torch)."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import rnnengine  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
L = keras.layers
MAPPED = ["tanh", "sigmoid", "relu", "linear", "hard_sigmoid", "elu", "leaky_relu",
          "softsign", "softplus"]
BOUNDED = ["tanh", "sigmoid", "hard_sigmoid", "softsign"]   # keep long random runs finite


def random_layer(seed: int):
    rng = np.random.default_rng(seed)
    kind = ("lstm", "gru", "rnn")[seed % 3]
    units = int(rng.integers(1, 12))
    pick = lambda pool: str(rng.choice(pool))  # noqa: E731
    options = dict(units=units, return_sequences=True, return_state=True,
                   use_bias=bool(rng.integers(4)), activation=pick(MAPPED),
                   go_backwards=bool(rng.integers(2)))
    if kind != "rnn":
        options["recurrent_activation"] = pick(BOUNDED + ["relu", "linear"])
    if kind == "gru":
        options["reset_after"] = bool(rng.integers(2))
    cls = {"lstm": L.LSTM, "gru": L.GRU, "rnn": L.SimpleRNN}[kind]
    if rng.integers(3) == 0:   # Bidirectional around a forward layer
        options["go_backwards"] = False
        return L.Bidirectional(cls(**options)), True
    return cls(**options), False


def keras_initializers_randomised(layer, rng):
    """Non-zero biases everywhere (Keras initialises them to zero), so a bias mistake shows."""
    for w in layer.weights:
        value = keras.ops.convert_to_numpy(w)
        w.assign(value + rng.uniform(-0.3, 0.3, value.shape).astype(np.float32))


@pytest.mark.parametrize("seed", range(36))
def test_random_layers(seed):
    layer, bidirectional = random_layer(seed)
    rng = np.random.default_rng(seed + 1000)
    N, T, I = int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 6))
    x = rng.standard_normal((N, T, I)).astype(np.float32)
    layer(x)
    keras_initializers_randomised(layer, rng)
    out = [keras.ops.convert_to_numpy(o) for o in layer(x)]
    model = rnnengine.from_keras(layer)
    assert model.batch_first
    y, state = model.run(x)
    h, c = state if isinstance(state, tuple) else (state, None)
    y_ref = out[0]
    if not bidirectional and layer.go_backwards:
        y_ref = y_ref[:, ::-1]   # Keras returns the steps in the order it computed them
    np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL)
    # return_state: [y, h(, c)] per direction, forward first
    per_dir = 2 if model.kind == "lstm" else 1
    states = out[1:]
    for d in range(model.num_directions):
        np.testing.assert_allclose(h[d], states[d * per_dir], rtol=RTOL, atol=ATOL)
        if c is not None:
            np.testing.assert_allclose(c[d], states[d * per_dir + 1], rtol=RTOL, atol=ATOL)


def test_hard_sigmoid_is_keras_3s():
    """Keras 3: relu6(x + 3) / 6, i.e. ONNX HardSigmoid alpha 1/6, beta 0.5 (not Keras 2's
    0.2x + 0.5)."""
    layer = L.SimpleRNN(3, activation="hard_sigmoid", return_sequences=True)
    x = np.linspace(-4, 4, 2 * 5 * 1, dtype=np.float32).reshape(2, 5, 1)
    layer(x)
    (act,), = rnnengine.from_keras(layer).layers[0].activations
    assert act.name == "hardsigmoid" and act.alpha == pytest.approx(1 / 6) and act.beta == 0.5
    np.testing.assert_allclose(rnnengine.from_keras(layer).run(x)[0],
                               keras.ops.convert_to_numpy(layer(x)), rtol=RTOL, atol=ATOL)


def test_gru_without_bias_keeps_reset_after():
    """Without a bias the weights cannot tell reset_after; it is read from the layer."""
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    for reset_after in (True, False):
        layer = L.GRU(5, use_bias=False, reset_after=reset_after, return_sequences=True)
        layer(x)
        model = rnnengine.from_keras(layer)
        assert model.layers[0].linear_before_reset == reset_after
        np.testing.assert_allclose(model.run(x)[0], keras.ops.convert_to_numpy(layer(x)),
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("make, message", [
    (lambda: L.SimpleRNN(3, activation="gelu"), "activation 'gelu'"),
    (lambda: L.LSTM(3, recurrent_activation=lambda v: v), "activation '<lambda>'"),
    (lambda: L.Bidirectional(L.GRU(3), merge_mode="sum"), "merge_mode='sum'"),
    (lambda: L.Bidirectional(L.GRU(3), merge_mode=None), "merge_mode=None"),
    (lambda: L.RNN(L.StackedRNNCells([L.LSTMCell(3), L.LSTMCell(3)])), "StackedRNNCells"),
])
def test_unmappable_layers_are_refused_by_name(make, message):
    layer = make()
    layer(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rnnengine.from_keras(layer)


def test_unbuilt_layer_and_wrong_type():
    with pytest.raises(ValueError, match="no weights yet"):
        rnnengine.from_keras(L.LSTM(3))
    with pytest.raises(TypeError, match="Dense"):
        rnnengine.from_keras(L.Dense(3))


def test_dropout_is_irrelevant_at_inference():
    layer = L.LSTM(4, dropout=0.5, recurrent_dropout=0.5, return_sequences=True)
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    layer(x)
    np.testing.assert_allclose(rnnengine.from_keras(layer).run(x)[0],
                               keras.ops.convert_to_numpy(layer(x, training=False)),
                               rtol=RTOL, atol=ATOL)


def test_rnn_wrapper_around_one_cell():
    layer = L.RNN(L.GRUCell(4, reset_after=False), return_sequences=True, go_backwards=True)
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype(np.float32)
    layer(x)
    keras_initializers_randomised(layer, np.random.default_rng(3))
    y_ref = keras.ops.convert_to_numpy(layer(x))[:, ::-1]
    np.testing.assert_allclose(rnnengine.from_keras(layer).run(x)[0], y_ref, rtol=RTOL, atol=ATOL)
