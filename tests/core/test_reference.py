"""The NumPy oracle (rnnengine.testing.reference) against independent implementations: ONNX Runtime
for every ONNX attribute, the ONNX conformance cases, and PyTorch for multi-layer stacks and
LSTM projection. Every other numeric test trusts the oracle only because of this file."""
import numpy as np
import pytest

from conftest import (ACTIVATION_SLOTS, FEATURES, RECURRENT_OPS, activation_slot_case,
                      assert_outputs_close, conformance_cases, conformance_node_inputs,
                      node_attributes, onnx_node_model, ort_attrs, ort_run,
                      peephole_clip_case, random_onnx_case)
from rnnengine.testing.reference import onnx_rnn, run_stack

torch = pytest.importorskip("torch")

# after the skip: torch_reference imports torch
from torch_reference import torch_run, torch_to_onnx_layers  # noqa: E402


def oracle_vs_ort(op, inputs, attrs, opset=22):
    model = onnx_node_model(op, inputs, ort_attrs(attrs), opset=opset)
    expected = ort_run(model, inputs)
    got = onnx_rnn(op, **inputs, **attrs)
    assert_outputs_close(got, expected, names=["Y", "Y_h", "Y_c"])
    return got


# ---------------------------------------------------------------- ONNX Runtime, random nodes

@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_random_node_matches_ort(op, seed):
    rng = np.random.default_rng(seed)
    oracle_vs_ort(op, *random_onnx_case(rng, op))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_feature_matches_ort(op, feature, seed, rng):
    oracle_vs_ort(op, *random_onnx_case(rng, op, **FEATURES[feature]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_peepholes_clip_input_forget(direction, seed, rng):
    oracle_vs_ort("LSTM", *peephole_clip_case(rng, direction, bool(seed % 2), seed >= 3))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr, seed, rng):
    # every sequence runs (no sequence_lens): zero-length ones give zeros under either formula
    inputs, attrs = random_onnx_case(rng, "GRU", H=int(rng.choice([3, 17])), bias=True,
                                     linear_before_reset=bool(lbr), initial=True,
                                     activations=False, lengths=False)
    got = oracle_vs_ort("GRU", inputs, attrs)
    # The two formulas really differ on these inputs, so the comparison above decides.
    other = onnx_rnn("GRU", **inputs, **dict(attrs, linear_before_reset=1 - lbr))
    assert not np.allclose(got[0], other[0], atol=1e-4)


@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_zero_and_short_lengths(op, rng):
    # len 0 gives zero output and zero final state even with an initial state (ONNX Runtime);
    # no entry uses the full T.
    for direction in ("forward", "reverse", "bidirectional"):
        inputs, attrs = random_onnx_case(rng, op, T=6, N=4, direction=direction, initial=True,
                                         lengths=True)
        inputs["sequence_lens"] = np.array([3, 0, 5, 1], np.int32)
        Y, Y_h = oracle_vs_ort(op, inputs, attrs)[:2]
        assert not Y[3:, :, 0].any() and not Y[1:, :, 3].any() and not Y[:, :, 1].any()
        assert not Y_h[:, 1].any()


@pytest.mark.parametrize("params", ["defaults", "given"])
@pytest.mark.parametrize("op,slot,name", ACTIVATION_SLOTS)
def test_every_activation_in_every_slot(op, slot, name, params, rng):
    oracle_vs_ort(op, *activation_slot_case(rng, op, slot, name, params == "given"))


def test_alpha_beta_consumed_in_order(rng):
    # Affine takes alpha[0], beta[0]; LeakyRelu alpha[1]; ScaledTanh alpha[2], beta[1];
    # the reverse direction's Elu gets the default alpha 1.0 (lists exhausted).
    inputs, attrs = random_onnx_case(rng, "LSTM", T=3, N=2, direction="bidirectional",
                                     activations=False)
    attrs["activations"] = ["HardSigmoid", "Affine", "LeakyRelu",
                            "Sigmoid", "ScaledTanh", "Elu"]
    attrs["activation_alpha"] = [0.3, 0.5, 0.8, 1.1]
    attrs["activation_beta"] = [0.6, 0.2, 0.9]
    got = oracle_vs_ort("LSTM", inputs, attrs)
    shifted = onnx_rnn("LSTM", **inputs, **dict(attrs, activation_alpha=[0.5, 0.8, 1.1]))
    assert not np.allclose(got[0], shifted[0], atol=1e-4)


@pytest.mark.parametrize("opset", [7, 14, 22])
@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_opsets(op, opset, rng):
    oracle_vs_ort(op, *random_onnx_case(rng, op, lengths=True, initial=True), opset=opset)


@pytest.mark.parametrize("op", RECURRENT_OPS)
def test_layout1_is_transposed_layout0(op, rng):
    # ORT rejects layout=1; layout 0 is proven above and by the conformance batchwise cases.
    inputs, attrs = random_onnx_case(rng, op, direction="bidirectional", initial=True,
                                     lengths=True)
    ref = onnx_rnn(op, **inputs, **attrs)
    x1 = dict(inputs, X=inputs["X"].transpose(1, 0, 2),
              initial_h=inputs["initial_h"].transpose(1, 0, 2))
    if op == "LSTM":
        x1["initial_c"] = inputs["initial_c"].transpose(1, 0, 2)
    got = onnx_rnn(op, **x1, **attrs, layout=1)
    assert got[0].shape == (ref[0].shape[2], ref[0].shape[0], ref[0].shape[1], ref[0].shape[3])
    np.testing.assert_array_equal(got[0], ref[0].transpose(2, 0, 1, 3))
    for g, r in zip(got[1:], ref[1:]):
        np.testing.assert_array_equal(g, r.transpose(1, 0, 2))


# ---------------------------------------------------------------- ONNX conformance cases

@pytest.mark.parametrize("case", conformance_cases(), ids=lambda c: c.name)
def test_conformance_case(case):
    node = case.model.graph.node[0]
    got = onnx_rnn(node.op_type, **conformance_node_inputs(case), **node_attributes(node))
    got = [g for g, name in zip(got, node.output) if name]
    _, expected = case.data_sets[0]
    assert_outputs_close(got, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- PyTorch stacks, projection

TORCH_CASES = [
    # kind, layers, bidirectional, proj, batch_first, lengths, initial state, bias
    ("lstm", 1, False, 0, False, False, False, True),
    ("lstm", 2, True, 0, False, True, True, True),
    ("lstm", 3, False, 3, True, True, True, True),
    ("lstm", 2, True, 2, False, True, True, False),
    ("lstm", 1, True, 5, True, False, True, True),
    ("gru", 1, False, 0, False, True, True, True),
    ("gru", 3, True, 0, True, True, True, True),
    ("gru", 2, False, 0, False, False, False, False),
    ("rnn_tanh", 2, True, 0, False, True, True, True),
    ("rnn_relu", 3, False, 0, True, True, True, False),
    ("rnn_relu", 1, True, 0, False, False, True, True),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "-".join(map(str, c)))
def test_run_stack_matches_torch(case, rng):
    kind, L, bidir, proj, batch_first, with_lengths, with_state, bias = case
    torch.manual_seed(int(rng.integers(1 << 30)))
    I, H, T, N = 5, 7, 6, 3
    kw = dict(num_layers=L, bidirectional=bidir, batch_first=batch_first, bias=bias)
    if kind == "lstm":
        module = torch.nn.LSTM(I, H, proj_size=proj, **kw)
    elif kind == "gru":
        module = torch.nn.GRU(I, H, **kw)
    else:
        module = torch.nn.RNN(I, H, nonlinearity=kind[4:], **kw)
    D = 2 if bidir else 1
    Hout = proj or H
    x = rng.standard_normal((N, T, I) if batch_first else (T, N, I)).astype(np.float32)
    lengths = [6, 2, 4] if with_lengths else None
    state = None
    if with_state:
        h0 = rng.standard_normal((L * D, N, Hout)).astype(np.float32)
        state = (h0, rng.standard_normal((L * D, N, H)).astype(np.float32)) \
            if kind == "lstm" else h0
    y_t, s_t = torch_run(module, x, state, lengths)
    y, s = run_stack(torch_to_onnx_layers(module), x, state, lengths, batch_first=batch_first)
    assert_outputs_close([y], [y_t])
    assert_outputs_close(list(s) if kind == "lstm" else [s],
                         list(s_t) if kind == "lstm" else [s_t])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_run_stack_unbatched_matches_torch(kind, rng):
    torch.manual_seed(3)
    module = (torch.nn.LSTM(4, 6, num_layers=2, proj_size=3) if kind == "lstm"
              else torch.nn.GRU(4, 6, num_layers=2))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y_t, s_t = torch_run(module, x)
    y, s = run_stack(torch_to_onnx_layers(module), x)
    assert y.shape == y_t.shape
    assert_outputs_close([y], [y_t])
    # torch_run gives the state with batch 1; an unbatched run of torch's own has no batch axis
    assert_outputs_close(list(s) if kind == "lstm" else [s],
                         [t[:, 0] for t in s_t] if kind == "lstm" else [s_t[:, 0]])
