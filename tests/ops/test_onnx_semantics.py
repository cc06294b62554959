"""ONNX LSTM/GRU/RNN semantics: the engine against ONNX Runtime on hundreds of random
single-node models (every attribute and optional input), and the Model API against the NumPy
oracle for multi-layer stacks (projection, unbatched input, batch_first, lengths).

ONNX Runtime rejects layout=1, so layout=1 models are checked against ORT's outputs for their
transposed layout=0 twin."""
import numpy as np
import pytest

from conftest import (ACTIVATION_SLOTS, FEATURES, RECURRENT_OPS, activation_slot_case,
                      assert_outputs_close, build_model, graph_feeds, onnx_node_model,
                      ort_attrs, ort_run, outputs_to_layout1, peephole_clip_case,
                      random_onnx_case, random_stack, random_state, states, to_layout1)

import rnnengine
from rnnengine import Layer, Model
from rnnengine.testing.reference import run_stack

WEIGHTS = ("W", "R", "B", "P")


def engine_vs_ort(op, inputs, attrs, *, initializers=(), opset=22, layout=0):
    """Run the node in ORT (layout 0) and in rnnengine.backend (``layout``); compare all outputs."""
    expected = ort_run(onnx_node_model(op, inputs, ort_attrs(attrs), opset=opset), inputs)
    if layout:
        inputs = to_layout1(inputs)
        attrs = dict(attrs, layout=1)
        expected = outputs_to_layout1(expected)
    model = onnx_node_model(op, inputs, attrs, initializers=initializers, opset=opset)
    got = rnnengine.backend.prepare(model).run(graph_feeds(model, inputs))
    assert_outputs_close(got, expected, names=["Y", "Y_h", "Y_c"])


# ---------------------------------------------------------------- random single nodes

@pytest.mark.parametrize("seed", range(70))
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_random_node(op, seed):
    """Everything random; weights as graph inputs for even seeds, initializers for odd."""
    rng = np.random.default_rng(1000 + seed)
    inputs, attrs = random_onnx_case(rng, op)
    engine_vs_ort(op, inputs, attrs, initializers=WEIGHTS if seed % 2 else ())


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_random_node_layout1(op, seed):
    rng = np.random.default_rng(2000 + seed)
    inputs, attrs = random_onnx_case(rng, op)
    engine_vs_ort(op, inputs, attrs, initializers=WEIGHTS if seed % 2 else (), layout=1)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_feature(op, feature, seed, rng):
    inputs, attrs = random_onnx_case(rng, op, **FEATURES[feature])
    engine_vs_ort(op, inputs, attrs, initializers=WEIGHTS if seed == 1 else ())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_peepholes_clip_input_forget(direction, seed, rng):
    engine_vs_ort("LSTM", *peephole_clip_case(rng, direction, bool(seed % 2), seed >= 2))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_input_forget(direction, seed, rng):
    inputs, attrs = random_onnx_case(rng, "LSTM", direction=direction, input_forget=True,
                                     initial=True)
    engine_vs_ort("LSTM", inputs, attrs)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr, direction, seed, rng):
    inputs, attrs = random_onnx_case(rng, "GRU", direction=direction, bias=True, initial=True,
                                     linear_before_reset=bool(lbr))
    engine_vs_ort("GRU", inputs, attrs)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_zero_and_short_lengths(op, direction, rng):
    # len 0 gives zero outputs and a zero final state even with an initial state (ORT);
    # here no entry uses the full T.
    inputs, attrs = random_onnx_case(rng, op, T=6, N=5, direction=direction, initial=True,
                                     lengths=True)
    inputs["sequence_lens"] = np.array([3, 0, 5, 1, 0], np.int32)
    engine_vs_ort(op, inputs, attrs)
    engine_vs_ort(op, inputs, attrs, layout=1)


@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_all_lengths_zero(op, rng):
    inputs, attrs = random_onnx_case(rng, op, T=3, N=2, direction="bidirectional",
                                     initial=True, lengths=True)
    inputs["sequence_lens"] = np.zeros(2, np.int32)
    engine_vs_ort(op, inputs, attrs)


@pytest.mark.parametrize("given", ["initial_h", "initial_c"])
@pytest.mark.parametrize("layout", [0, 1])
def test_lstm_one_initial_state_only(given, layout, rng):
    # The absent one of initial_h / initial_c is zero.
    inputs, attrs = random_onnx_case(rng, "LSTM", direction="bidirectional", initial=True,
                                     lengths=True)
    del inputs["initial_c" if given == "initial_h" else "initial_h"]
    engine_vs_ort("LSTM", inputs, attrs, layout=layout)


@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_hidden_size_attribute_absent(op, rng):
    # hidden_size is optional in ONNX: the engine infers it from W; ORT is given it.
    inputs, attrs = random_onnx_case(rng, op, initial=True, lengths=True)
    expected = ort_run(onnx_node_model(op, inputs, ort_attrs(attrs)), inputs)
    del attrs["hidden_size"]
    model = onnx_node_model(op, inputs, attrs)
    got = rnnengine.backend.prepare(model).run(graph_feeds(model, inputs))
    assert_outputs_close(got, expected)


@pytest.mark.parametrize("params", ["defaults", "given"])
@pytest.mark.parametrize("op,slot,name", ACTIVATION_SLOTS)
def test_every_activation_in_every_slot(op, slot, name, params, rng):
    """Each of the eleven functions in each slot (f, g, h), odd letter case, with ORT's
    default alpha/beta and with given ones."""
    engine_vs_ort(op, *activation_slot_case(rng, op, slot, name, params == "given"))


@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_alpha_beta_consumed_in_order(op, rng):
    """Lists shorter and longer than needed; only functions that take alpha/beta consume them."""
    D = 2
    inputs, attrs = random_onnx_case(rng, op, T=4, N=3, direction="bidirectional",
                                     activations=False, initial=True)
    names = {"LSTM": ["HardSigmoid", "Affine", "LeakyRelu", "Sigmoid", "ScaledTanh", "Elu"],
             "GRU": ["ScaledTanh", "Affine", "HardSigmoid", "ThresholdedRelu"],
             "RNN": ["Elu", "Affine"]}[op]
    assert len(names) == D * {"LSTM": 3, "GRU": 2, "RNN": 1}[op]
    attrs["activations"] = names
    attrs["activation_alpha"] = [0.3, 0.5, 0.8]
    attrs["activation_beta"] = [0.6, 0.2]
    engine_vs_ort(op, inputs, attrs)


@pytest.mark.parametrize("opset", [7, 14, 22])
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_opsets(op, opset, rng):
    inputs, attrs = random_onnx_case(rng, op, lengths=True, initial=True, activations=True)
    engine_vs_ort(op, inputs, attrs, opset=opset)


@pytest.mark.parametrize("H,I", [(64, 40), (100, 7), (129, 65)])
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_larger_sizes(op, H, I, rng):
    # Sizes past the SIMD widths, with remainders, so the vector and tail paths both run.
    inputs, attrs = random_onnx_case(rng, op, H=H, I=I, T=5, N=4, direction="bidirectional",
                                     lengths=True, initial=True, activations=False)
    engine_vs_ort(op, inputs, attrs)


@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_long_sequence(op, rng):
    inputs, attrs = random_onnx_case(rng, op, T=40, N=3, H=17, I=8, direction="bidirectional",
                                     lengths=True, initial=True, activations=False)
    inputs["sequence_lens"] = np.array([40, 17, 1], np.int32)
    engine_vs_ort(op, inputs, attrs)
    engine_vs_ort(op, inputs, attrs, layout=1)


def test_non_canonical_activation_case(rng):
    # The engine is case-insensitive; ORT's RNN kernel is not, so ORT gets canonical names.
    inputs, attrs = random_onnx_case(rng, "RNN", activations=False, direction="bidirectional")
    attrs["activations"] = ["rElU", "SOFTSIGN"]
    engine_vs_ort("RNN", inputs, attrs)


# ---------------------------------------------------------------- Model API vs the oracle

STACKS = [
    # kind, layers, direction, proj
    ("lstm", 1, "forward", 0), ("lstm", 2, "bidirectional", 0), ("lstm", 3, "reverse", 0),
    ("lstm", 2, "forward", 3), ("lstm", 2, "bidirectional", 5), ("lstm", 1, "reverse", 1),
    ("gru", 1, "forward", 0), ("gru", 3, "bidirectional", 0), ("gru", 2, "reverse", 0),
    ("rnn", 1, "bidirectional", 0), ("rnn", 3, "forward", 0), ("rnn", 2, "reverse", 0),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("stack", STACKS, ids=lambda s: "-".join(map(str, s)))
def test_model_run_matches_oracle(stack, seed, rng):
    kind, L, direction, proj = stack
    D = 2 if direction == "bidirectional" else 1
    I, H = int(rng.choice([1, 4, 9])), int(rng.choice([1, 3, 8, 17]))
    T, N = int(rng.integers(1, 8)), int(rng.integers(1, 5))
    layers = random_stack(rng, kind, L, direction, I, H, proj)
    batch_first = seed == 1
    model = build_model(layers, batch_first)
    assert (model.num_layers, model.num_directions, model.hidden_size, model.proj_size) == \
        (L, D, H, proj)
    x = rng.standard_normal((N, T, I) if batch_first else (T, N, I)).astype(np.float32)
    state = random_state(rng, kind, L, D, N, H, proj or H) if seed != 0 else None
    lengths = rng.integers(0, T + 1, N).tolist() if seed != 0 else None
    y, s = model.run(x, state, lengths=lengths)
    y_ref, s_ref = run_stack(layers, x, state, lengths, batch_first=batch_first)
    assert_outputs_close([y] + states(s), [y_ref] + states(s_ref))
    assert y.dtype == np.float32


@pytest.mark.parametrize("stack", STACKS, ids=lambda s: "-".join(map(str, s)))
def test_model_run_unbatched(stack, rng):
    kind, L, direction, proj = stack
    D = 2 if direction == "bidirectional" else 1
    I, H, T = 5, 6, 7
    layers = random_stack(rng, kind, L, direction, I, H, proj)
    model = build_model(layers)
    x = rng.standard_normal((T, I)).astype(np.float32)
    state = random_state(rng, kind, L, D, 1, H, proj or H)
    state = tuple(a[:, 0] for a in state) if kind == "lstm" else state[:, 0]
    y, s = model.run(x, state)
    y_ref, s_ref = run_stack(layers, x, state)
    assert y.shape == (T, D * (proj or H))
    assert_outputs_close([y] + states(s), [y_ref] + states(s_ref))
    y, s = model.run(x, state, lengths=[4])
    y_ref, s_ref = run_stack(layers, x, state, [4])
    assert_outputs_close([y] + states(s), [y_ref] + states(s_ref))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_model_batch_first_is_settable(kind, rng):
    layers = random_stack(rng, kind, 2, "bidirectional", 4, 5)
    model = build_model(layers)
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    y0, s0 = model.run(x, lengths=[6, 2, 0])
    model.batch_first = True
    y1, s1 = model.run(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=[6, 2, 0])
    y_ref, s_ref = run_stack(layers, x, None, [6, 2, 0])
    assert_outputs_close([y0] + states(s0), [y_ref] + states(s_ref))
    assert_outputs_close([y1] + states(s1), [y_ref.transpose(1, 0, 2)] + states(s_ref))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_model_non_contiguous_and_float64_input(kind, rng):
    layers = random_stack(rng, kind, 2, "forward", 4, 5, proj=3 if kind == "lstm" else 0)
    model = build_model(layers)
    big = rng.standard_normal((6, 3, 8))
    x = big[:, :, ::2]                         # float64, strided
    y, s = model.run(x)
    y_ref, s_ref = run_stack(layers, x.astype(np.float32))
    assert_outputs_close([y] + states(s), [y_ref] + states(s_ref))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_layer_to_onnx_describes_the_same_node(kind, rng):
    """Layer.to_onnx() (what Model.save writes) rebuilt through Layer.from_onnx must compute
    the node it came from, alpha/beta included (only functions that use them consume them)."""
    layers = random_stack(rng, kind, 1, "bidirectional", 3, 4, features=False)
    names = {"lstm": ["Sigmoid", "Affine", "Tanh", "HardSigmoid", "Tanh", "LeakyRelu"],
             "gru": ["Sigmoid", "ScaledTanh", "Softsign", "Elu"],
             "rnn": ["Tanh", "Affine"]}[kind]
    layers[0].update(activations=names, activation_alpha=[0.5, 0.7, 0.9],
                     activation_beta=[0.3, 0.4])
    rebuilt = Model([Layer.from_onnx(**build_model(layers).layers[0].to_onnx())])
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, s = rebuilt.run(x)
    y_ref, s_ref = run_stack(layers, x)
    assert_outputs_close([y] + states(s), [y_ref] + states(s_ref))
