"""NumPy-archive loader: PyTorch state_dicts against PyTorch, Keras 3 variable dumps against the
Keras layers (KERAS_BACKEND=torch), ONNX-named arrays against ONNX Runtime, the engine's own
format round trip (exact), and every malformed archive against a ModelError naming the file,
the weight group and the reason."""
import os
import re

os.environ.setdefault("KERAS_BACKEND", "torch")   # real Keras layers without TensorFlow

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import rnnengine  # noqa: E402
from conftest import assert_bytes_are_a_model_error, onnx_node_model, ort_run  # noqa: E402
from rnnengine import ModelError  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
TORCH_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
PREFIXES = ["", "rnn.", "module.encoder.lstm.", "net/"]


def save_npz(path, arrays):
    with open(path, "wb") as f:   # a file object: numpy adds no ".npz" to the name
        np.savez(f, **arrays)
    return str(path)


def assert_state_close(state, state_ref):
    if isinstance(state_ref, tuple):
        for s, r in zip(state, state_ref):
            np.testing.assert_allclose(s, r, **TOL)
    else:
        np.testing.assert_allclose(state, state_ref, **TOL)


# --- PyTorch state_dict ----------------------------------------------------------------------

def torch_config(seed):
    rng = np.random.default_rng(seed)
    kind = ["lstm", "gru", "rnn"][seed % 3]
    H = int(rng.integers(1, 9))
    config = dict(input_size=int(rng.integers(1, 9)), hidden_size=H,
                  num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
                  batch_first=bool(rng.integers(2)), bias=bool(rng.integers(2)))
    if kind == "lstm" and H > 1 and rng.integers(2):
        config["proj_size"] = int(rng.integers(1, H))
    if kind == "rnn":
        config["nonlinearity"] = ["tanh", "relu"][int(rng.integers(2))]
    return kind, config, PREFIXES[int(rng.integers(len(PREFIXES)))]


def state_dict_arrays(net, prefix):
    # a state_dict keeps "." between module names; the "net/" prefix stands for a user's own
    # naming when dumping it
    return {prefix + k: v.detach().numpy() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("seed", range(36))
def test_pytorch_state_dict_matches_pytorch(tmp_path, seed):
    kind, config, prefix = torch_config(seed)
    torch.manual_seed(seed)
    net = TORCH_CLASSES[kind](**config).eval()
    arrays = state_dict_arrays(net, prefix)
    arrays["head.weight"] = np.ones((2, 3), np.float32)   # other modules' weights are ignored
    path = save_npz(tmp_path / "sd.npz", arrays)
    options = {"batch_first": True} if net.batch_first else {}
    if kind == "rnn":
        options["nonlinearity"] = config["nonlinearity"]
    model = rnnengine.load(path, **options)
    assert (model.kind, model.num_layers, model.proj_size) == (kind, net.num_layers,
                                                              config.get("proj_size", 0))
    T, N = 6, 3
    x = np.random.default_rng(seed).standard_normal(
        (N, T, net.input_size) if net.batch_first else (T, N, net.input_size)).astype(np.float32)
    with torch.no_grad():
        y_ref, state_ref = net(torch.from_numpy(x))
    state_ref = tuple(s.numpy() for s in state_ref) if kind == "lstm" else state_ref.numpy()
    y, state = model.run(x)
    np.testing.assert_allclose(y, y_ref.numpy(), **TOL)
    assert_state_close(state, state_ref)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_pytorch_cell_state_dict_matches_stepping_the_cell(tmp_path, kind):
    torch.manual_seed(3)
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn_relu": torch.nn.RNNCell}[kind]
    cell = cls(5, 4, **({"nonlinearity": "relu"} if kind == "rnn_relu" else {})).eval()
    path = save_npz(tmp_path / "cell.npz", state_dict_arrays(cell, "decoder.rnn."))
    model = rnnengine.load(path, **({"nonlinearity": "relu"} if kind == "rnn_relu" else {}))
    x = np.random.default_rng(0).standard_normal((7, 2, 5)).astype(np.float32)
    state = None
    ys = []
    with torch.no_grad():
        for t in range(7):
            state = cell(torch.from_numpy(x[t]), state)
            ys.append((state[0] if kind == "lstm" else state).numpy())
    y, final = model.run(x)
    np.testing.assert_allclose(y, np.stack(ys), **TOL)
    h = final[0] if kind == "lstm" else final
    np.testing.assert_allclose(h[0], ys[-1], **TOL)


def test_several_modules_need_node(tmp_path):
    torch.manual_seed(0)
    encoder = torch.nn.GRU(3, 4, num_layers=2).eval()
    decoder = torch.nn.LSTM(4, 5).eval()
    arrays = {**state_dict_arrays(encoder, "model.encoder."), **state_dict_arrays(decoder, "model.decoder.")}
    path = save_npz(tmp_path / "two.npz", arrays)
    with pytest.raises(ModelError, match=r"2 weight groups; pick one with node=<name>:\n"
                                         r"  model\.encoder \(pytorch\)\n  model\.decoder \(pytorch\)"
                       ) as info:
        rnnengine.load(path)
    assert path in str(info.value)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    with torch.no_grad():
        y_enc = encoder(torch.from_numpy(x))[0]
        y_dec = decoder(y_enc)[0].numpy()
    np.testing.assert_allclose(rnnengine.load(path, node="model.encoder").run(x)[0], y_enc.numpy(), **TOL)
    np.testing.assert_allclose(rnnengine.load(path, node="model.decoder.").run(y_enc.numpy())[0], y_dec, **TOL)


# --- Keras 3 ---------------------------------------------------------------------------------

KERAS_CASES = {
    "lstm": lambda: keras.layers.LSTM(5, return_sequences=True, return_state=True),
    "lstm_no_bias": lambda: keras.layers.LSTM(4, use_bias=False, return_sequences=True, return_state=True),
    "gru_reset_after": lambda: keras.layers.GRU(5, reset_after=True, return_sequences=True, return_state=True),
    "gru_reset_before": lambda: keras.layers.GRU(5, reset_after=False, return_sequences=True, return_state=True),
    "simple_rnn": lambda: keras.layers.SimpleRNN(6, return_sequences=True, return_state=True),
    "simple_rnn_relu": lambda: keras.layers.SimpleRNN(6, activation="relu", return_sequences=True,
                                                      return_state=True),
    "bidirectional_lstm": lambda: keras.layers.Bidirectional(
        keras.layers.LSTM(3, return_sequences=True, return_state=True)),
    "bidirectional_gru": lambda: keras.layers.Bidirectional(
        keras.layers.GRU(3, reset_after=False, return_sequences=True, return_state=True)),
}


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_keras_variables_match_the_keras_layer(tmp_path, case):
    layer = KERAS_CASES[case]()
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)      # Keras: (N, T, I)
    layer.build((None, 7, 4))
    layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    outputs = [keras.ops.convert_to_numpy(o) for o in layer(x)]
    path = save_npz(tmp_path / "keras.npz", {v.path: keras.ops.convert_to_numpy(v.value)
                                             for v in layer.weights})
    model = rnnengine.load(path, **({"nonlinearity": "relu"} if case.endswith("relu") else {}))
    assert model.batch_first
    y, state = model.run(x)
    np.testing.assert_allclose(y, outputs[0], **TOL)
    states = outputs[1:]
    if case.startswith("bidirectional"):   # Keras: forward states, then backward states
        half = len(states) // 2
        states = [np.stack([f, b]) for f, b in zip(states[:half], states[half:])]
    else:
        states = [s[None] for s in states]
    if model.kind == "lstm":
        np.testing.assert_allclose(state[0], states[0], **TOL)
        np.testing.assert_allclose(state[1], states[1], **TOL)
    else:
        np.testing.assert_allclose(state, states[0], **TOL)


# --- ONNX names ------------------------------------------------------------------------------

G = {"LSTM": 4, "GRU": 3, "RNN": 1}


def onnx_names_case(op, D, attributes, peepholes=False, seed=0):
    rng = np.random.default_rng(seed)
    H, I = 4, 3
    arrays = {"W": rng.uniform(-0.6, 0.6, (D, G[op] * H, I)).astype(np.float32),
              "R": rng.uniform(-0.6, 0.6, (D, G[op] * H, H)).astype(np.float32),
              "B": rng.uniform(-0.6, 0.6, (D, 2 * G[op] * H)).astype(np.float32)}
    if peepholes:
        arrays["P"] = rng.uniform(-0.6, 0.6, (D, 3 * H)).astype(np.float32)
    return arrays


def ort_single_node(op, X, arrays, attributes):
    inputs = dict(arrays, X=X)
    model = onnx_node_model(op, inputs, dict(hidden_size=arrays["R"].shape[-1], **attributes),
                            initializers=("W", "R", "B", "P"))
    return ort_run(model, inputs)


ONNX_NAME_CASES = {
    "lstm_peepholes_clip": ("LSTM", "forward", dict(clip=1.5, input_forget=1), True),
    "lstm_activations": ("LSTM", "bidirectional",
                         dict(activations=["Affine", "LeakyRelu", "ScaledTanh"] * 2,
                              activation_alpha=[0.7, 0.2, 1.1] * 2, activation_beta=[0.1, 0.9] * 2), False),
    "gru_before_reset": ("GRU", "reverse", dict(linear_before_reset=0), False),
    "gru_after_reset": ("GRU", "bidirectional", dict(linear_before_reset=1), False),
    "rnn_relu": ("RNN", "forward", dict(activations=["Relu"]), False),
}


@pytest.mark.parametrize("case", sorted(ONNX_NAME_CASES))
@pytest.mark.parametrize("prefix", ["", "encoder/"])
def test_onnx_names_match_onnxruntime(tmp_path, case, prefix):
    op, direction, attributes, peepholes = ONNX_NAME_CASES[case]
    D = 2 if direction == "bidirectional" else 1
    arrays = onnx_names_case(op, D, attributes, peepholes, seed=len(case))
    stored = {prefix + k: v for k, v in arrays.items()}
    stored[prefix + "direction"] = np.array(direction)
    stored[prefix + "op_type"] = np.array(op)
    for name, value in attributes.items():
        stored[prefix + name] = np.array(value)
    path = save_npz(tmp_path / "onnx_names.npz", stored)
    model = rnnengine.load(path)
    X = np.random.default_rng(2).standard_normal((5, 2, 3)).astype(np.float32)
    expected = ort_single_node(op, X, arrays, dict(direction=direction, **attributes))
    y, state = model.run(X)
    Y = expected[0]
    np.testing.assert_allclose(y, Y.transpose(0, 2, 1, 3).reshape(5, 2, -1), **TOL)
    np.testing.assert_allclose(state[0] if op == "LSTM" else state, expected[1], **TOL)
    if op == "LSTM":
        np.testing.assert_allclose(state[1], expected[2], **TOL)


def test_onnx_names_without_attributes_infer_kind_and_layout(tmp_path):
    arrays = onnx_names_case("GRU", 1, {}, seed=4)
    path = save_npz(tmp_path / "gru.npz", {**arrays, "layout": np.array(1)})
    model = rnnengine.load(path)
    assert model.kind == "gru" and model.batch_first
    X = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    Y, Y_h = ort_single_node("GRU", X, arrays, {})
    y, h = model.run(np.ascontiguousarray(X.transpose(1, 0, 2)))
    np.testing.assert_allclose(y, Y[:, 0].transpose(1, 0, 2), **TOL)
    np.testing.assert_allclose(h, Y_h, **TOL)


# --- the engine's own format -----------------------------------------------------------------

def models_of_every_kind(tmp_path):
    """Models as the loaders build them from each source, covering every attribute."""
    torch.manual_seed(1)
    out = {}
    for name, net, options in (
            ("torch_lstm_proj", torch.nn.LSTM(3, 6, num_layers=2, proj_size=2, bidirectional=True), {}),
            ("torch_gru_nobias", torch.nn.GRU(3, 4, num_layers=3, bias=False), {"batch_first": True}),
            ("torch_rnn_relu", torch.nn.RNN(3, 4, nonlinearity="relu"), {"nonlinearity": "relu"})):
        out[name] = rnnengine.load(save_npz(tmp_path / f"{name}.npz", state_dict_arrays(net, "")), **options)
    for case in sorted(ONNX_NAME_CASES):
        op, direction, attributes, peepholes = ONNX_NAME_CASES[case]
        arrays = onnx_names_case(op, 2 if direction == "bidirectional" else 1, attributes, peepholes)
        stored = {**arrays, "direction": np.array(direction), "op_type": np.array(op),
                  **{k: np.array(v) for k, v in attributes.items()}}
        out["onnx_" + case] = rnnengine.load(save_npz(tmp_path / f"{case}.npz", stored))
    # alpha/beta lists name only the functions that take them, in order: a function without
    # one (Sigmoid) before one with (Affine) is where a naive round trip would shift them
    for name, op, activations, alpha, beta in (
            ("lstm", "LSTM", ["Sigmoid", "Affine", "LeakyRelu"], [0.8, 0.05], [0.3]),
            ("gru", "GRU", ["HardSigmoid", "Elu", "Softplus", "ThresholdedRelu"], [0.3, 1.7, 0.9], [0.45])):
        arrays = onnx_names_case(op, 1 if op == "LSTM" else 2, {})
        stored = {**arrays, "activations": np.array(activations), "op_type": np.array(op),
                  "activation_alpha": np.array(alpha), "activation_beta": np.array(beta),
                  "clip": np.array(3.0), "layout": np.array(1),
                  "direction": np.array("forward" if op == "LSTM" else "bidirectional")}
        out["onnx_alpha_beta_" + name] = rnnengine.load(save_npz(tmp_path / f"ab_{name}.npz", stored))
    keras_layer = keras.layers.GRU(3, reset_after=True)
    keras_layer.build((None, 4, 2))
    out["keras_gru"] = rnnengine.load(save_npz(tmp_path / "k.npz", {
        v.path: keras.ops.convert_to_numpy(v.value) for v in keras_layer.weights}))
    return out


def test_save_then_load_round_trips_exactly(tmp_path):
    for name, model in models_of_every_kind(tmp_path).items():
        path = str(tmp_path / f"{name}.rnnengine")        # any name: written exactly there
        model.save(path)
        assert os.path.exists(path) and not os.path.exists(path + ".npz")
        again = rnnengine.load(path)
        assert again.batch_first == model.batch_first, name
        assert len(again.layers) == len(model.layers), name
        for a, b in zip(model.layers, again.layers):
            for field in ("W", "R", "Wb", "Rb", "P", "proj"):
                x, y = getattr(a, field), getattr(b, field)
                assert (x is None) == (y is None), (name, field)
                if x is not None:
                    assert x.dtype == y.dtype and np.array_equal(x, y), (name, field)
            for field in ("kind", "activations", "clip", "input_forget", "linear_before_reset",
                          "reverse"):
                assert getattr(a, field) == getattr(b, field), (name, field)
        shape = (2, 5, model.input_size) if model.batch_first else (5, 2, model.input_size)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        assert np.array_equal(model.run(x)[0], again.run(x)[0]), name


def test_saved_file_has_no_pickle_and_a_json_header(tmp_path):
    model = models_of_every_kind(tmp_path)["torch_lstm_proj"]
    path = str(tmp_path / "own.npz")
    model.save(path)
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        import json
        header = json.loads(z["__rnnengine__"].tobytes())
    assert header["format"] == "rnnengine" and len(header["layers"]) == 2


# --- malformed archives ----------------------------------------------------------------------

def torch_arrays(**changes):
    torch.manual_seed(0)
    arrays = state_dict_arrays(torch.nn.LSTM(3, 4, num_layers=2), "rnn.")
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return arrays


def own_file(tmp_path, header_bytes=None, drop=None):
    torch.manual_seed(0)
    model = rnnengine.load(save_npz(tmp_path / "src.npz", state_dict_arrays(torch.nn.GRU(3, 4), "")))
    path = str(tmp_path / "own.npz")
    model.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != drop}
    if header_bytes is not None:
        arrays["__rnnengine__"] = np.frombuffer(header_bytes, np.uint8)
    return arrays


MALFORMED = {
    "missing_weight_hh": (lambda p: torch_arrays(**{"rnn.weight_hh_l1": None}), "weight_hh is missing"),
    "bias_ih_alone": (lambda p: torch_arrays(**{"rnn.bias_hh_l0": None}), "must come together"),
    "bad_weight_hh_shape": (lambda p: torch_arrays(**{"rnn.weight_hh_l0": np.ones((16, 5), np.float32)}),
                            "shapes 'rnn.weight_ih_l0' (16, 3), 'rnn.weight_hh_l0' (16, 5) do not make "
                            "1, 3 or 4 gates of one hidden size"),
    "gap_in_layers": (lambda p: {k.replace("_l1", "_l2"): v for k, v in torch_arrays().items()},
                      "layers [0, 2] are not numbered 0..1"),
    "integer_weights": (lambda p: torch_arrays(**{"rnn.weight_ih_l0": np.ones((16, 3), np.int32)}),
                        "'rnn.weight_ih_l0' must be a float array; got dtype int32"),
    "stack_sizes_disagree": (lambda p: torch_arrays(**{"rnn.weight_ih_l1": np.ones((16, 7), np.float32)}),
                             "layer 1 takes 7 inputs"),
    "pickled_array": (lambda p: {"W": np.array([{"evil": 1}], dtype=object),
                                 "R": np.ones((1, 4, 1), np.float32)},
                      "array 'W' holds Python objects (a pickle); refused"),
    "keras_bias_shape": (lambda p: {"l/cell/kernel": np.ones((2, 12), np.float32),
                                    "l/cell/recurrent_kernel": np.ones((3, 12), np.float32),
                                    "l/cell/bias": np.ones((5,), np.float32)},
                         "'l/cell/bias' has shape (5,); expected (12,)"),
    "keras_no_kernel": (lambda p: {"l/cell/recurrent_kernel": np.ones((3, 12), np.float32)},
                        "'l/cell/recurrent_kernel' has no kernel beside it"),
    "onnx_names_bad_op": (lambda p: {"W": np.ones((1, 4, 2), np.float32), "R": np.ones((1, 4, 1), np.float32),
                                     "op_type": np.array("Conv")},
                          "op_type must be LSTM, GRU or RNN; got 'conv'"),
    "onnx_names_bad_direction": (lambda p: {"W": np.ones((1, 4, 2), np.float32),
                                            "R": np.ones((1, 4, 1), np.float32),
                                            "direction": np.array("bidirectional")},
                                 "W has 1 direction(s) but direction='bidirectional'"),
    "nothing_recognised": (lambda p: {"conv.weight": np.ones(3, np.float32)},
                           "or an rnnengine file; found 1 array(s): 'conv.weight'"),
    "own_bad_json": (lambda p: own_file(p, b"{not json"), "malformed rnnengine header"),
    "own_future_version": (lambda p: own_file(p, b'{"format": "rnnengine", "version": 99, '
                                                 b'"batch_first": false, "layers": [{}]}'), "version 99"),
    "own_missing_array": (lambda p: own_file(p, drop="layer0/R"), "W or R is missing"),
    "own_bad_layer_entry": (lambda p: own_file(p, b'{"format": "rnnengine", "version": 1, '
                                                  b'"batch_first": false, "layers": [{"kind": "gru"}]}'),
                            "malformed header entry"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_archive_names_file_group_reason(tmp_path, case):
    build, reason = MALFORMED[case]
    path = save_npz(tmp_path / "bad.npz", build(tmp_path))
    with pytest.raises(ModelError, match=re.escape(reason)) as info:
        rnnengine.load(path)
    assert path in str(info.value)


def test_nonlinearity_for_lstm_weights_is_refused(tmp_path):
    path = save_npz(tmp_path / "lstm.npz", torch_arrays())
    with pytest.raises(ModelError, match="nonlinearity='relu' applies to plain RNN"):
        rnnengine.load(path, nonlinearity="relu")
    with pytest.raises(ValueError, match="'tanh' or 'relu'"):
        rnnengine.load(path, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="chain"):
        rnnengine.load(path, chain=False)          # an ONNX-only option


def test_unknown_group_name_lists_the_groups(tmp_path):
    path = save_npz(tmp_path / "lstm.npz", torch_arrays())
    with pytest.raises(ModelError, match=r"no weight group named 'decoder'; the groups are:\n  rnn \(pytorch\)"):
        rnnengine.load(path, node="decoder")


@pytest.mark.parametrize("content, reason", [
    (b"PK\x03\x04" + b"\x00" * 40, "not a readable .npz archive"),
    (b"PK" + bytes(range(256)), "not a readable .npz archive"),
    (b"\x93NUMPY\x01\x00", "a single .npy array, not a model"),
])
def test_corrupt_archives_are_model_errors(tmp_path, content, reason):
    assert_bytes_are_a_model_error(tmp_path / "corrupt.npz", content, re.escape(reason))


def test_truncated_archive_is_a_model_error(tmp_path):
    path = save_npz(tmp_path / "whole.npz", torch_arrays())
    data = open(path, "rb").read()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=f"^{re.escape(str(cut))}: not a readable .npz archive"):
        rnnengine.load(cut)


def test_threads_option_gives_a_threaded_model_with_the_same_results(tmp_path):
    torch.manual_seed(5)
    net = torch.nn.LSTM(600, 600)
    path = save_npz(tmp_path / "big.npz", state_dict_arrays(net, "rnn."))
    model = rnnengine.load(path, threads=2)
    assert model.threads == 2
    x = np.random.default_rng(5).standard_normal((3, 2, 600)).astype(np.float32)
    with torch.no_grad():
        y_ref, _ = net(torch.from_numpy(x))
    np.testing.assert_allclose(model.run(x)[0], y_ref.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="threads"):
        rnnengine.load(path, threads=0)
