"""Reduced-precision weights: fp16, bf16 and int8 on every ISA variant this machine
runs, against the float64 NumPy reference (`_reference.py`) with the fp32 weights, within each
mode's budget; the real Silero LSTM nodes and the shipped character model against fp32; the
engine's own file format keeps the reduced weights.

Protocol: weights N(0, 1/H), inputs N(0, 1), 300-step streams at batch 1 and T=100
sequences at batch 4, LSTM and GRU (and RNN) at H=256 and 1024.
"""
import contextlib
import importlib
import inspect
import json
import os

import numpy as np
import pytest

import rnnengine
from rnnengine import Layer, Model, ModelError
from rnnengine.core import kernels as _kernels
from rnnengine.testing import reference as _reference
from rnnengine.core import precision
from rnnengine.core import precision_route
import conftest

ISAS = _kernels.supported_isas()
BUDGET = {"fp16": 5e-3, "bf16": 3e-2, "int8": 6e-2}
MODES = sorted(BUDGET)
# "int8r": int8 with the residual weight part forced on for every layer (cells.h: i8r; the
# rule that picks it, precision.int8_residual, is tested on its own below)
BUDGET_R = {**BUDGET, "int8r": BUDGET["int8"], "fp32": 1e-5}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
STREAM_STEPS, SEQ_T, SEQ_N = 300, 100, 4
SILERO = os.path.join(conftest.DATA, "silero_vad_16k_op15.onnx")


@pytest.fixture(autouse=True)
def each_weight_types_own_product(monkeypatch):
    """Here each weight type's own product is held to its budget on every variant, so the
    reroute by variant is off (tests/core/test_precision_route.py tests the reroute)."""
    monkeypatch.setattr(precision_route, "REROUTE", False)


def random_case(kind, H, seed):
    """ONNX-layout weights N(0, 1/H) (GRU with linear_before_reset=1, as PyTorch)."""
    rng = np.random.default_rng(seed)
    G, s = GATES[kind], 1 / np.sqrt(H)
    return dict(W=rng.normal(0, s, (1, G * H, H)).astype(np.float32),
                R=rng.normal(0, s, (1, G * H, H)).astype(np.float32),
                B=rng.normal(0, s, (1, 2 * G * H)).astype(np.float32),
                linear_before_reset=int(kind == "gru"))


_REFERENCES = {}


def reference(kind, H, how):
    """(weights, x, y) with y from the float64 reference; computed once per case."""
    key = (kind, H, how)
    if key not in _REFERENCES:
        case = random_case(kind, H, seed=H + len(kind))
        rng = np.random.default_rng(7)
        shape = (STREAM_STEPS, 1, H) if how == "stream" else (SEQ_T, SEQ_N, H)
        x = rng.normal(size=shape).astype(np.float32)
        y = _reference.onnx_rnn(kind, x, **case)[0][:, 0]
        _REFERENCES[key] = (case, x, y)
    return _REFERENCES[key]


def make_model(layer_list, mode, **options):
    """Model(layer_list, precision=mode); mode "int8r" packs every layer with the int8
    residual (the rule's threshold set to 0 while packing)."""
    with contextlib.ExitStack() as stack:
        if mode == "int8r":
            stack.enter_context(pytest.MonkeyPatch.context()).setattr(
                precision, "INT8_RESIDUAL_ABOVE", 0.0)
        model = Model(layer_list, precision="int8" if mode == "int8r" else mode, **options)
    assert {cell.precision for cell in model.cells} == {mode}
    return model


def run_engine(model, x, how):
    if how == "sequence":
        return model.run(x)[0]
    stream = model.stream(batch=x.shape[1])
    return np.stack([stream.step(x[t]) for t in range(x.shape[0])])


CASES = [(kind, H) for kind in ("lstm", "gru") for H in (256, 1024)] + [("rnn", 256)]


@pytest.mark.parametrize("how", ["stream", "sequence"])
@pytest.mark.parametrize("kind,H", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_mode_within_budget_of_float64(isa, mode, kind, H, how):
    case, x, y = reference(kind, H, how)
    model = Model([Layer.from_onnx(kind, **case)], precision=mode)
    assert model.precision == mode
    err = float(np.abs(run_engine(model, x, how) - y).max())
    budget = BUDGET[mode]
    assert err <= budget, f"{mode} on {isa} ({_kernels.gemm_isa(mode)}): max |diff| {err:.3e}"
    # The mode really is reduced: further from float64 than fp32 is (1e-5).
    assert err > 1e-5


@pytest.mark.parametrize("how", ["stream", "sequence"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_int8_residual_within_budget_of_float64(isa, kind, how):
    """The residual path (a second int8 product over the weights' remainder) on every
    variant: within the budget and, with about 15-bit weights, well below plain int8's
    error on the same case (1.1e-4-2.3e-4 against 1.8e-2-4.4e-2)."""
    case, x, y = reference(kind, 256, how)
    err = float(np.abs(run_engine(make_model([Layer.from_onnx(kind, **case)], "int8r"), x, how)
                       - y).max())
    plain = float(np.abs(run_engine(make_model([Layer.from_onnx(kind, **case)], "int8"), x, how)
                         - y).max())
    assert 1e-5 < err <= plain / 50, f"int8r {err:.3e}, int8 {plain:.3e}"   # measured ~1/150


@pytest.mark.parametrize("mode", MODES)
def test_variants_agree_within_budget(mode):
    """Each variant against the portable serial one (the oracle of the mode's arithmetic)."""
    case, x, _ = reference("lstm", 256, "sequence")
    model = Model([Layer.from_onnx("lstm", **case)], precision=mode)
    previous = _kernels.isa()
    try:
        _kernels.set_isa("serial")
        serial = model.run(x)[0]
        for name in ISAS:
            _kernels.set_isa(name)
            assert np.abs(model.run(x)[0] - serial).max() <= BUDGET[mode]
    finally:
        _kernels.set_isa(previous)


def test_gemm_isa_names_the_product(isa):
    # amx is avx512 with AMX tiles for bf16 products only
    assert _kernels.gemm_isa("fp32") == ("avx512" if isa == "amx" else isa)
    if isa == "amx":
        assert _kernels.gemm_isa("bf16") == "amx"
    # int8's integer products: vpdpbusd where the CPU has AVX512-VNNI, else vpmaddwd of the
    # variant's width; set_isa's `without` leaves a feature's products out (the fixture
    # switches back)
    if isa == "avx2":
        assert _kernels.gemm_isa("int8") == _kernels.gemm_isa("int8r") == "avx2madd"
    if isa in ("avx512", "amx"):
        assert _kernels.gemm_isa("int8") in ("avx512vnni", "avx512madd")
        _kernels.set_isa(isa, without=("avx512vnni",))
        assert _kernels.gemm_isa("int8") == _kernels.gemm_isa("int8r") == "avx512madd"
    if isa == "avx512":
        _kernels.set_isa(isa, without=("avx512bf16",))
        assert _kernels.gemm_isa("bf16") == "avx512"
    with pytest.raises(ValueError, match="not in tuple"):
        _kernels.gemm_isa("fp8")


# -- projection, GRU linear_before_reset=0, odd sizes: every panel the cells have ------------

@pytest.mark.parametrize("mode", MODES + ["int8r"])
def test_odd_sizes_projection_and_gru_lbr0(isa, mode):
    rng = np.random.default_rng(3)
    H, I, P = 37, 29, 19            # K not a multiple of the 2- or 4-k groups, tail blocks
    s = 1 / np.sqrt(H)
    lstm = dict(W=rng.normal(0, s, (1, 4 * H, I)), R=rng.normal(0, s, (1, 4 * H, P)),
                B=rng.normal(0, s, (1, 8 * H)), proj=rng.normal(0, s, (1, P, H)))
    gru = dict(W=rng.normal(0, s, (1, 3 * H, I)), R=rng.normal(0, s, (1, 3 * H, H)),
               B=rng.normal(0, s, (1, 6 * H)), linear_before_reset=0)
    x = rng.normal(size=(40, 3, I)).astype(np.float32)
    for kind, case in (("lstm", lstm), ("gru", gru)):
        case = {k: np.asarray(v, np.float32) if isinstance(v, np.ndarray) else v
                for k, v in case.items()}
        y = _reference.onnx_rnn(kind, x, **case)[0][:, 0]
        model = make_model([Layer.from_onnx(kind, **case)], mode)
        for how in ("sequence", "stream"):
            err = float(np.abs(run_engine(model, x, how) - y).max())
            assert err <= BUDGET_R[mode], f"{kind} {how}: {err:.3e}"


# -- real models -----------------------------------------------------------------------------

SILERO_NODES = ["/model/decoder/rnn/LSTM", "/model/decoder/rnn_1/LSTM"]


@pytest.mark.parametrize("how", ["stream", "sequence"])
@pytest.mark.parametrize("node", SILERO_NODES)
@pytest.mark.parametrize("mode", MODES)
def test_silero_lstm_nodes_within_budget_of_fp32(isa, node, mode, how):
    """The issue's protocol on Silero's real weights: 300-step streams, T=100 batch-4
    sequences, N(0, 1) inputs. Their rows are large: int8 packs them with the residual weight
    part (plain int8 was 0.11-0.18 from fp32 here; with it, ~1e-3) and bf16 with fp16 weights
    (bf16 weights were 2.0e-2-7.1e-2 on seeds 5-12; fp16 2.3e-3-3.7e-3 on every variant)."""
    exact = rnnengine.load(SILERO, node=node)
    reduced = rnnengine.load(SILERO, node=node, precision=mode)
    assert reduced.precision == mode and exact.precision == "fp32"
    shape = (STREAM_STEPS, 1) if how == "stream" else (SEQ_T, SEQ_N)
    x = np.random.default_rng(5).normal(size=shape + (exact.input_size,)).astype(np.float32)
    err = float(np.abs(run_engine(reduced, x, how) - run_engine(exact, x, how)).max())
    assert 0 < err <= BUDGET[mode], f"{mode} {how}: {err:.3e}"


def silero_layer(node=SILERO_NODES[0]):
    return rnnengine.load(SILERO, node=node).layers[0]


# precision -> (the rule's predicted error, its threshold's name in core.precision, the weight type
# it picks for the layers over the threshold)
RULES = {"int8": (precision.int8_rounding_error, "INT8_RESIDUAL_ABOVE", "int8r"),
         "bf16": (precision.bf16_rounding_error, "BF16_AS_FP16_ABOVE", "fp16")}


@pytest.mark.parametrize("mode", sorted(RULES))
def test_rounding_rule_picks_silero_not_ordinary_weights(mode):
    """The rules (precision.int8_rounding_error against INT8_RESIDUAL_ABOVE, bf16_rounding_error
    against BF16_AS_FP16_ABOVE) from the weights alone: Silero's large rows get the residual
    int8 part or fp16 weights; N(0, 1/H) weights and PyTorch's default initialisation
    U(-1/sqrt(H), 1/sqrt(H)) keep the mode's own weights (bf16: its AMX and vdpbf16ps
    products)."""
    error, threshold, picked = RULES[mode]
    limit = getattr(precision, threshold)
    for node in SILERO_NODES:
        assert error(silero_layer(node)) > 2 * limit
        model = rnnengine.load(SILERO, node=node, precision=mode)
        assert {cell.precision for cell in model.cells} == {picked}
    rng = np.random.default_rng(0)
    for kind in GATES:
        for H in (256, 1024):
            layer = Layer.from_onnx(kind, **random_case(kind, H, seed=H))
            assert error(layer) < limit / 2, (kind, H)
            assert precision.weight_type(layer, mode) == mode
            bound, G = 1 / np.sqrt(H), GATES[kind]
            torch_like = Layer.from_onnx(kind, W=rng.uniform(-bound, bound, (1, G * H, H)),
                                         R=rng.uniform(-bound, bound, (1, G * H, H)))
            assert error(torch_like) < limit / 5, (kind, H)
    ordinary = Model([Layer.from_onnx("lstm", **random_case("lstm", 256, 0))], precision=mode)
    assert {cell.precision for cell in ordinary.cells} == {mode}


def test_bf16_keeps_bf16_weights_beyond_the_fp16_range():
    """A layer the bf16 rule picks keeps bf16 when a weight is beyond fp16's range (bf16 has
    fp32's exponents), instead of refusing the model."""
    layer = silero_layer()
    R = layer.R.copy()
    R[0, 3, 5] = 1e5
    big = Layer.from_onnx("lstm", layer.W, R, np.concatenate([layer.Wb, layer.Rb], axis=1))
    assert precision.bf16_rounding_error(big) > precision.BF16_AS_FP16_ABOVE
    assert {cell.precision for cell in Model([big], precision="bf16").cells} == {"bf16"}


def test_cell_refuses_panels_of_another_weight_type():
    """An int8r cell reads twice the quads: given plain int8 panels it must refuse them
    (_kernels.CellKernel checks every panel against cells.h: rnn_panel_bytes)."""
    layer = Layer.from_onnx("lstm", **random_case("lstm", 32, 0))
    px, ph, bias, *_ = Model([layer], precision="int8").cells[0].arrays
    acts = [(a.code, a.alpha, a.beta) for a in layer.activations[0]]
    with pytest.raises(ValueError, match="bytes; expected"):
        _kernels.CellKernel(_kernels.KIND_CODES["lstm"], 4, 32, 32, 32, False, False, False,
                            0.0, acts, px, ph, bias, wtype=_kernels.WEIGHT_TYPES.index("int8r"))


@pytest.mark.parametrize("mode", sorted(RULES))
def test_picked_weight_type_save_load_exact(tmp_path, mode):
    """A Silero layer's file holds the weight type its mode ran it with (int8: q, the scales
    and the residual part; bf16: float16), and reloads to exactly the weights it ran with."""
    picked = RULES[mode][2]
    model = rnnengine.load(SILERO, node=SILERO_NODES[0], precision=mode)
    path = tmp_path / "silero_lstm.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as archive:
        if mode == "int8":
            assert archive["layer0/W"].dtype == archive["layer0/W_fine"].dtype == np.int8
            assert archive["layer0/R_fine"].shape == archive["layer0/R"].shape
            assert np.abs(archive["layer0/W_fine"]).max() <= 126
        else:
            assert archive["layer0/W"].dtype == archive["layer0/R"].dtype == np.float16
            assert json.loads(archive["__rnnengine__"].tobytes())["precision"] == "bf16"
    loaded = rnnengine.load(path)
    assert loaded.precision == mode
    assert {cell.precision for cell in loaded.cells} == {picked}
    x = np.random.default_rng(3).normal(size=(50, 2, model.input_size)).astype(np.float32)
    np.testing.assert_array_equal(loaded.run(x)[0], model.run(x)[0])
    for k, (a, b) in enumerate(zip(model.cells, loaded.cells)):
        for p, q in zip(a.arrays, b.arrays):
            if p is not None:
                np.testing.assert_array_equal(p, q, err_msg=f"cell {k}")
    # the values run are within int8r's or fp16's rounding of the fp32 weights
    exact = silero_layer()
    for name in ("W", "R"):
        w, r = getattr(exact, name), getattr(loaded.layers[0], name)
        if mode == "int8":
            step = np.abs(w).max(axis=-1, keepdims=True) / 127
            assert np.all(np.abs(w - r) <= step * 1.5 / 254 + 1e-6)
        else:
            assert np.all(np.abs(w - r) <= np.abs(w) * 2.0 ** -11 + 2.0 ** -25)


@pytest.mark.parametrize("limit,kept", [(1.0, "bf16"), (0.0, "fp16")])
def test_reloaded_layer_runs_the_type_its_file_holds(tmp_path, limit, kept):
    """The bf16 rule is not run again on reload (the rounded weights could land on the
    other side of its threshold): a file decides, whatever the rule would say now."""
    layer = Layer.from_onnx("lstm", **random_case("lstm", 48, 1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "BF16_AS_FP16_ABOVE", limit)
        model = Model([layer], precision="bf16")
        assert {cell.precision for cell in model.cells} == {kept}
        model.save(tmp_path / "m.npz")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "BF16_AS_FP16_ABOVE", 1.0 - limit)   # the rule flips
        loaded = rnnengine.load(tmp_path / "m.npz")
        assert {cell.precision for cell in loaded.cells} == {kept}
    x = np.random.default_rng(2).normal(size=(30, 2, 48)).astype(np.float32)
    np.testing.assert_array_equal(loaded.run(x)[0], model.run(x)[0])


def test_int8_residual_file_checks(tmp_path):
    """A residual part of the wrong type, or one the layer's scales do not call for, is a
    ModelError, not weights silently dropped."""
    path = tmp_path / "m.npz"
    rnnengine.load(SILERO, node=SILERO_NODES[0], precision="int8").save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = dict(archive)
    bad = dict(arrays, **{"layer0/W_fine": arrays["layer0/W_fine"].astype(np.int16)})
    np.savez(tmp_path / "bad_dtype.npz", **bad)
    with pytest.raises(ModelError, match="W_fine must be int8"):
        rnnengine.load(tmp_path / "bad_dtype.npz")
    small = Model([Layer.from_onnx("lstm", **random_case("lstm", 32, 0))], precision="int8")
    small.save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = dict(archive)
    arrays["layer0/W_fine"] = np.zeros_like(arrays["layer0/W"])
    np.savez(tmp_path / "half.npz", **arrays)
    with pytest.raises(ModelError, match="W int8r, R int8"):
        rnnengine.load(tmp_path / "half.npz")
    arrays["layer0/R_fine"] = np.zeros_like(arrays["layer0/R"])
    np.savez(tmp_path / "unwanted.npz", **arrays)
    with pytest.raises(ModelError, match="scales do not call for"):
        rnnengine.load(tmp_path / "unwanted.npz")


def test_bf16_file_weight_type_checks(tmp_path):
    """A bf16 file holds each layer's weights as bfloat16 bits or, for the layers bf16 runs
    with fp16 weights, float16: one type per layer; anything else is a ModelError."""
    path = tmp_path / "m.npz"
    rnnengine.load(SILERO, node=SILERO_NODES[0], precision="bf16").save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = dict(archive)
    mixed = dict(arrays, **{"layer0/R": precision.to_bfloat16(arrays["layer0/R"])})
    np.savez(tmp_path / "mixed.npz", **mixed)
    with pytest.raises(ModelError, match="W fp16, R bf16"):
        rnnengine.load(tmp_path / "mixed.npz")
    wide = dict(arrays, **{"layer0/W": arrays["layer0/W"].astype(np.float32)})
    np.savez(tmp_path / "wide.npz", **wide)
    with pytest.raises(ModelError, match="float32, not what a bf16 file stores"):
        rnnengine.load(tmp_path / "wide.npz")


HELD_OUT_MODULES = ["fileinput", "filecmp", "colorsys", "graphlib", "shelve", "quopri",
                    "tabnanny", "codeop", "linecache", "zlib", "sched", "bdb", "cmd"]


def held_out_text(chars, size=6000):
    """Docstrings of stdlib modules the demo model was not trained on
    (examples/train_char_lstm.py trains on other modules)."""
    docs = []
    for name in HELD_OUT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs += [inspect.getdoc(obj) or "" for obj in
                 [module] + [v for k, v in sorted(vars(module).items()) if not k.startswith("_")
                             and callable(v) and getattr(v, "__module__", None) == name]]
    text = "\n\n".join(d for d in docs if d)
    text = "".join(c for c in text if c in chars)
    assert len(text) > 2000
    return text[:size]


def cross_entropy(model, head_w, head_b, ids, vocab_size):
    onehot = np.eye(vocab_size, dtype=np.float32)[ids[:-1]][:, None, :]
    h = model.run(onehot)[0][:, 0].astype(np.float64)
    logits = h @ head_w.T.astype(np.float64) + head_b
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())


@pytest.mark.parametrize("mode,limit", [("fp16", 0.002), ("bf16", 0.01), ("int8", 0.01)])
def test_demo_model_cross_entropy_close_to_fp32(isa, mode, limit):
    data = os.path.join(os.path.dirname(rnnengine.__file__), "data")
    with open(os.path.join(data, "char_lstm_vocab.json"), encoding="utf-8") as f:
        chars = json.load(f)["chars"]
    path = os.path.join(data, "char_lstm.npz")
    with np.load(path, allow_pickle=False) as archive:
        head_w, head_b = archive["head.weight"], archive["head.bias"]
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in held_out_text(chars)])
    exact = cross_entropy(rnnengine.load(path), head_w, head_b, ids, len(chars))
    reduced = cross_entropy(rnnengine.load(path, precision=mode), head_w, head_b, ids,
                            len(chars))
    assert 0.5 < exact < 3.5          # the model does predict the text
    assert abs(reduced - exact) / exact <= limit, (mode, exact, reduced)


# -- the API ---------------------------------------------------------------------------------

def test_fp16_overflow_names_the_tensor():
    case = random_case("lstm", 16, 0)
    case["R"][0, 3, 5] = 1e5
    with pytest.raises(ModelError, match=r"layer 0 R .*fp16 range"):
        Model([Layer.from_onnx("lstm", **case)], precision="fp16")
    # the same weights run in bf16 and int8
    Model([Layer.from_onnx("lstm", **case)], precision="bf16")


@pytest.mark.parametrize("bad", ["fp8", "FP16", None, 16])
def test_unknown_precision_is_refused(bad):
    layer = Layer.from_onnx("gru", **random_case("gru", 16, 0))
    with pytest.raises(ValueError, match="precision must be one of"):
        Model([layer], precision=bad)
    if bad is None:
        return                 # load's default: fp32, or what an rnnengine file was saved in
    with pytest.raises(ValueError, match="precision must be one of"):
        rnnengine.load(SILERO, node="/model/decoder/rnn/LSTM", precision=bad)


@pytest.mark.parametrize("mode", ["fp32"] + MODES)
def test_save_keeps_the_reduced_weights(tmp_path, mode):
    case = random_case("lstm", 48, 1)
    layer = Layer.from_onnx("lstm", **case)
    model = Model([layer], precision=mode)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as archive:
        stored = archive["layer0/W"].dtype
        header = json.loads(archive["__rnnengine__"].tobytes())
    assert header["precision"] == mode
    assert stored == {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16,
                      "int8": np.int8}[mode]
    loaded = rnnengine.load(path)
    assert loaded.precision == mode
    x = np.random.default_rng(2).normal(size=(30, 2, 48)).astype(np.float32)
    y = _reference.onnx_rnn("lstm", x, **case)[0][:, 0]
    err = float(np.abs(loaded.run(x)[0] - y).max())
    assert err <= BUDGET.get(mode, 1e-5)
    # the file holds exactly the weights the model ran with: reloading changes nothing
    np.testing.assert_array_equal(loaded.run(x)[0], model.run(x)[0])
    # and a file can be loaded at another precision
    assert rnnengine.load(path, precision="fp32").precision == "fp32"


def test_precision_survives_threads_option():
    model = rnnengine.load(SILERO, node="/model/decoder/rnn/LSTM", precision="int8", threads=2)
    assert (model.precision, model.threads) == ("int8", 2)


@pytest.mark.parametrize("mode", MODES + ["int8r"])
def test_two_threads_within_budget(isa, mode):
    """Worker threads run the reduced products too (the amx variant: per-thread tile state
    and converted-input buffers)."""
    case, x, y = reference("lstm", 256, "sequence")
    model = make_model([Layer.from_onnx("lstm", **case)], mode, threads=2)
    assert float(np.abs(model.run(x)[0] - y).max()) <= BUDGET_R[mode]
    stream = model.stream(batch=x.shape[1])
    ys = np.stack([stream.step(x[t]) for t in range(x.shape[0])])
    assert float(np.abs(ys - y).max()) <= BUDGET_R[mode]


@pytest.mark.parametrize("mode", MODES)
def test_inference_session_runs_its_recurrent_nodes_in_the_mode(mode):
    """The whole Silero model: the session's recurrent nodes take precision=; its output
    (a speech probability) stays within the mode's budget of the fp32 session's."""
    from rnnengine import InferenceSession

    rng = np.random.default_rng(4)
    feeds = {"input": (rng.standard_normal((2, 512)) * 0.1).astype(np.float32),
             "state": (rng.standard_normal((2, 2, 128)) * 0.3).astype(np.float32),
             "sr": np.array(16000, np.int64)}
    exact = InferenceSession(SILERO).run(None, feeds)
    sess = InferenceSession(SILERO, precision=mode)
    assert sess.precision == mode
    assert [step.model.precision for step in sess.loaded.recurrent] == [mode, mode]
    reduced = sess.run(None, feeds)
    # int8 measured <= 8.9e-6 here (seeds 4-11, every variant; 2.2e-3 before its residual)
    budget = BUDGET[mode]
    # the probability; the returned state holds the cell state c, which is not bounded like
    # h, so its error is not on the same scale
    err = float(np.abs(reduced[0] - exact[0]).max())
    assert 0 < err <= budget
    assert np.isfinite(reduced[1]).all()


@pytest.mark.parametrize("how", ["stream", "sequence"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("mode", MODES + ["int8r"])
def test_nan_input_propagates_like_fp32(isa, mode, kind, how):
    """A NaN in one row's input makes that row NaN from then on, as in fp32, and leaves the
    other rows alone (int8 quantizes each row with its own step: a NaN must not vanish in
    the max that finds it, nor spread to the other rows)."""
    case = random_case(kind, 40, 4)
    x = np.random.default_rng(9).normal(size=(12, 3, 40)).astype(np.float32)
    x[4, 1, 7] = np.nan
    exact = run_engine(Model([Layer.from_onnx(kind, **case)]), x, how)
    reduced = run_engine(make_model([Layer.from_onnx(kind, **case)], mode), x, how)
    assert np.isnan(exact[4:, 1]).all() and not np.isnan(exact[:, [0, 2]]).any()
    np.testing.assert_array_equal(np.isnan(reduced), np.isnan(exact))
    assert np.abs(reduced[:, [0, 2]] - exact[:, [0, 2]]).max() <= BUDGET_R[mode]


@pytest.mark.parametrize("kind,H", [("lstm", 64), ("gru", 64), ("rnn", 64), ("lstm", 256)])
@pytest.mark.parametrize("mode", ["fp32"] + MODES + ["int8r"])
def test_batch16_sequence_equals_its_stream(isa, mode, kind, H):
    """At 16 rows a sequence whose panels fit in L2 fuses its input product into the timestep
    loop (driver.h: rnn_fuse_input), and the amx variant runs a fused block's two products in
    one tile pass (gemm_amx.h: rnn_gemm2_bf16_amx); larger panels take the input GEMM first.
    Every way sums bias + x Wx + h Wh in the same order: the same bits as streaming, and
    within the mode's budget of float64."""
    case = random_case(kind, H, 11)
    x = np.random.default_rng(12).normal(size=(20, 16, H)).astype(np.float32)
    model = make_model([Layer.from_onnx(kind, **case)], mode)
    seq = run_engine(model, x, "sequence")
    np.testing.assert_array_equal(seq, run_engine(model, x, "stream"))
    y = _reference.onnx_rnn(kind, x, **case)[0][:, 0]
    assert float(np.abs(seq - y).max()) <= BUDGET_R[mode]
