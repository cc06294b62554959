"""The compute kernels under every ISA variant this machine runs (serial, avx2, avx512),
against independent references: float64 NumPy for the activations, ONNX Runtime for every ONNX
attribute, PyTorch for stacks / projection / bidirectional / streaming, the ONNX conformance
cases; and every variant against the portable serial one.

The variant is switched in process with ``_kernels.set_isa`` (packed weights are the same for
all variants); RNNENGINE_ISA itself is checked in subprocesses.
"""
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import rnnengine
from conftest import conformance_cases
from session_models import ort_session
from rnnengine import Layer, Model
from rnnengine.core import kernels as _kernels
from rnnengine.testing.reference import onnx_rnn
from torch_reference import torch_model_to_layers

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper  # noqa: E402

ISAS = _kernels.supported_isas()
RTOL = ATOL = 1e-5
# The folder the imported package lives in (installed, or src/ with PYTHONPATH=src), so the
# subprocesses below import the same build.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))


# -- ISA selection ----------------------------------------------------------------------------

def _run_python(code, isa_env):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if isa_env is None:
        env.pop("RNNENGINE_ISA", None)
    else:
        env["RNNENGINE_ISA"] = isa_env
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("name", _kernels.ISA_NAMES)
def test_env_var_forces_each_supported_isa(name):
    if name not in ISAS:
        pytest.skip(f"this CPU lacks {name}")
    out = _run_python("import rnnengine.core.kernels as k; print(k.isa())", name.upper())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == name


def test_default_isa_is_the_widest_supported():
    out = _run_python("import rnnengine.core.kernels as k; print(k.isa())", None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ISAS[-1]


def test_invalid_env_value_fails_import_with_a_clear_message():
    out = _run_python("import rnnengine", "sse9")
    assert out.returncode != 0
    assert "RNNENGINE_ISA" not in out.stdout
    assert "unknown ISA 'sse9'" in out.stderr and "serial, avx2, avx512" in out.stderr


REFUSE = """
import rnnengine.core.kernels as k
print(k.supported_isas())
for name in ("avx2", "avx512"):
    if name in k.supported_isas():
        continue
    try:
        k.set_isa(name)
    except RuntimeError as e:
        print("refused", name, e)
"""


@pytest.fixture(scope="module")
def build_without_simd(tmp_path_factory):
    """src/ of a copy of the tree built with the portable switch (-DRNN_X86=0: the serial
    variant only, as on ARM), so that avx2/avx512 are unsupported even on a CPU that has
    them. Built only when this machine runs every variant."""
    root = os.path.dirname(SRC)
    if not os.path.exists(os.path.join(root, "setup.py")):
        pytest.skip("the package is installed, not a source tree: no portable build here")
    work = tmp_path_factory.mktemp("portable")
    skip = shutil.ignore_patterns("*.so", "*.pyd", "_kernels.c", "_pool.c", "__pycache__")
    for folder in ("src", "include"):
        shutil.copytree(os.path.join(root, folder), work / folder, ignore=skip)
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(root, name), work / name)
    env = dict(os.environ, CFLAGS="-DRNN_X86=0")
    env.pop("LD_PRELOAD", None)   # a sanitizer run: the compiler itself runs without it
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    return str(work / "src")


def test_unsupported_isa_is_refused(request):
    missing = [n for n in ("avx2", "avx512") if n not in ISAS]
    if missing:   # this CPU lacks one: the installed build refuses it
        with pytest.raises(RuntimeError, match="not supported"):
            _kernels.set_isa(missing[0])
        return
    # Every variant runs here: refuse them in a build that has only the serial one.
    src = request.getfixturevalue("build_without_simd")
    done = subprocess.run([sys.executable, "-c", REFUSE], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=src), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "['serial']"
    assert lines[1:] == [
        f"refused {name} ISA '{name}' is not supported by this CPU or build; supported: serial"
        for name in ("avx2", "avx512")]


def test_set_isa_switches_and_reports(isa):
    assert _kernels.isa() == isa


# -- activations vs float64 NumPy ----------------------------------------------------------

def _ref_activation(code, a, b, x):
    # the kernels take float32 parameters: compare against the same rounded values
    a, b = float(np.float32(a)), float(np.float32(b))
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return {
            0: np.maximum(x, 0),
            1: np.tanh(x),
            2: 1 / (1 + np.exp(-x)),
            3: a * x + b,
            4: np.where(x >= 0, x, a * x),
            5: np.where(x > a, x, 0),
            6: a * np.tanh(b * x),
            7: np.clip(a * x + b, 0, 1),
            8: np.where(x >= 0, x, a * (np.exp(x) - 1)),
            9: x / (1 + np.abs(x)),
            10: np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0),
        }[code]


ACTIVATION_CASES = [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0.7, -0.3), (4, 0.05, 0),
                    (5, 0.4, 0), (6, 1.7, 0.6), (7, 0.2, 0.5), (8, 1.3, 0), (9, 0, 0),
                    (10, 0, 0)]


@pytest.mark.parametrize("code,alpha,beta", ACTIVATION_CASES)
def test_activation_matches_float64(isa, code, alpha, beta):
    rng = np.random.default_rng(code)
    x = np.concatenate([np.linspace(-30, 30, 6001), rng.standard_normal(4093) * 4,
                        np.linspace(-0.7, 0.7, 1401), [-100, -88, 88, 100, 0.0]]).astype(np.float32)
    y = x.copy()
    _kernels.activate(code, alpha, beta, y)
    ref = _ref_activation(code, alpha, beta, x)
    # within ~2 float32 ulp of the true value (3e-7 relative) or 2e-7 absolute near zero
    np.testing.assert_allclose(y, ref, rtol=3e-7, atol=2e-7)


@pytest.mark.parametrize("code", [1, 2])
def test_sigmoid_tanh_saturate_and_propagate_nan(isa, code):
    x = np.array([-1e30, -1e4, 1e4, 1e30, np.inf, -np.inf, np.nan], np.float32)
    y = x.copy()
    _kernels.activate(code, 0, 0, y)
    lo = -1.0 if code == 1 else 0.0
    np.testing.assert_allclose(y[:6], [lo, lo, 1, 1, 1, lo], atol=1e-30)
    assert np.isnan(y[6])


# -- ONNX Runtime: every attribute ---------------------------------------------------------

def _onnx_case(op, D, H, I, T, N, rng, **attrs):
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    W = rng.uniform(-0.6, 0.6, (D, G * H, I)).astype(np.float32)
    R = rng.uniform(-0.6, 0.6, (D, G * H, H)).astype(np.float32)
    B = rng.uniform(-0.5, 0.5, (D, 2 * G * H)).astype(np.float32)
    X = rng.standard_normal((T, N, I)).astype(np.float32)
    lens = rng.integers(0, T + 1, N).astype(np.int32)
    lens[0] = T
    h0 = rng.standard_normal((D, N, H)).astype(np.float32) * 0.5
    feeds = {"X": X, "W": W, "R": R, "B": B, "sequence_lens": lens, "initial_h": h0}
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h"]
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        feeds["initial_c"] = rng.standard_normal((D, N, H)).astype(np.float32) * 0.5
        feeds["P"] = rng.uniform(-0.5, 0.5, (D, 3 * H)).astype(np.float32)
        names += ["initial_c", "P"]
        outputs.append("Y_c")
    direction = {1: "forward", 2: "bidirectional"}[D] if attrs.pop("reverse", False) is False \
        else "reverse"
    node = helper.make_node(op, names, outputs, hidden_size=H, direction=direction, **attrs)
    dtypes = {"sequence_lens": TensorProto.INT32}
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, dtypes.get(n, TensorProto.FLOAT), feeds[n].shape)
         for n in names],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT,
                                       [T, D, N, H] if o == "Y" else [D, N, H])
         for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, [feeds[n] for n in names], names


ORT_CASES = [
    # op, D, H, I, T, N, attributes
    ("LSTM", 1, 17, 5, 4, 7, {}),
    ("LSTM", 2, 40, 9, 3, 13, {"clip": 2.5}),
    ("LSTM", 1, 16, 16, 5, 3, {"input_forget": 1, "reverse": True}),
    ("LSTM", 1, 7, 3, 3, 30, {"activations": ["HardSigmoid", "Elu", "Softsign"],
                              "activation_alpha": [0.3, 0.9], "activation_beta": [0.4]}),
    ("LSTM", 1, 1, 2, 2, 2, {}),
    ("GRU", 1, 33, 6, 4, 9, {"linear_before_reset": 0}),
    ("GRU", 2, 20, 4, 3, 5, {"linear_before_reset": 1, "clip": 1.5}),
    ("GRU", 1, 5, 5, 3, 17, {"linear_before_reset": 0, "activations": ["Softplus", "ScaledTanh"],
                             "activation_alpha": [0.8], "activation_beta": [1.2]}),
    ("GRU", 1, 64, 8, 2, 1, {"linear_before_reset": 1, "reverse": True}),
    ("RNN", 1, 24, 7, 4, 6, {}),
    ("RNN", 2, 9, 3, 3, 4, {"activations": ["Relu", "LeakyRelu"], "activation_alpha": [0.1]}),
    ("RNN", 1, 12, 4, 3, 3, {"activations": ["ThresholdedRelu"], "activation_alpha": [0.2]}),
    ("RNN", 1, 12, 4, 3, 3, {"activations": ["Affine"], "activation_alpha": [0.5],
                             "activation_beta": [0.1]}),
]


@pytest.mark.parametrize("case", ORT_CASES, ids=lambda c: f"{c[0]}-D{c[1]}-H{c[2]}-N{c[5]}")
def test_onnx_attributes_match_onnxruntime(isa, case):
    op, D, H, I, T, N, attrs = case
    rng = np.random.default_rng(H * 131 + N)
    model, inputs, names = _onnx_case(op, D, H, I, T, N, rng, **dict(attrs))
    expected = ort_session(model).run(None, dict(zip(names, inputs)))
    got = rnnengine.backend.prepare(model).run(inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_onnx_conformance_cases(isa):
    cases = conformance_cases()
    assert len(cases) >= 18
    for case in cases:
        for inputs, outputs in case.data_sets:
            got = rnnengine.backend.prepare(case.model).run(inputs)
            for g, o in zip(got, outputs):
                np.testing.assert_allclose(g, o, rtol=case.rtol, atol=case.atol,
                                           err_msg=case.name)


# -- PyTorch: stacks, projection, bidirectional, streaming ------------------------------------

TORCH_CASES = [
    # kind, I, H, layers, bidirectional, proj, T, N, extra
    ("lstm", 5, 7, 2, False, 0, 6, 3, {}),
    ("lstm", 20, 70, 2, True, 0, 4, 8, {}),
    ("lstm", 12, 33, 2, False, 5, 5, 7, {}),
    ("lstm", 9, 16, 1, True, 4, 3, 2, {}),
    ("lstm", 6, 40, 1, False, 0, 3, 31, {}),
    ("gru", 11, 48, 3, False, 0, 5, 9, {}),
    ("gru", 8, 19, 1, True, 0, 4, 26, {}),
    ("rnn", 10, 21, 2, False, 0, 5, 4, {"nonlinearity": "relu"}),
    ("rnn", 4, 50, 1, True, 0, 4, 3, {}),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: f"{c[0]}-H{c[2]}-L{c[3]}-"
                         f"{'bi' if c[4] else 'uni'}-P{c[5]}-N{c[7]}")
def test_matches_pytorch_run_step_and_chunks(isa, case):
    kind, I, H, L, bidir, proj, T, N, extra = case
    torch.manual_seed(I * 7 + H)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    kw = dict(extra)
    if proj:
        kw["proj_size"] = proj
    m = cls(I, H, num_layers=L, bidirectional=bidir, **kw).eval()
    model = Model(torch_model_to_layers(m))
    x = np.random.default_rng(H).standard_normal((T, N, I)).astype(np.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yt, st = m(torch.from_numpy(x))
    y, state = model.run(x)
    np.testing.assert_allclose(y, yt.numpy(), rtol=RTOL, atol=ATOL)
    if kind == "lstm":
        np.testing.assert_allclose(state[0], st[0].numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(state[1], st[1].numpy(), rtol=RTOL, atol=ATOL)
    else:
        np.testing.assert_allclose(state, st.numpy(), rtol=RTOL, atol=ATOL)
    if not bidir:
        s = model.stream(N)
        ys = np.stack([s.step(x[t]) for t in range(T)])
        np.testing.assert_allclose(ys, yt.numpy(), rtol=RTOL, atol=ATOL)
        s.reset()
        yc = np.concatenate([s.run(x[:1]), s.run(x[1:3]), s.run(x[3:])])
        np.testing.assert_allclose(yc, yt.numpy(), rtol=RTOL, atol=ATOL)


# -- every variant against the portable one ------------------------------------------------

@pytest.mark.parametrize("kind,lbr", [("lstm", 0), ("gru", 0), ("gru", 1), ("rnn", 0)])
def test_each_isa_matches_serial_and_the_reference(isa, kind, lbr):
    """Every variant, serial included, against the float64 reference on the same arrays; the
    SIMD variants also against serial (the portable fallback they must agree with)."""
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rng = np.random.default_rng(5)
    H, I, T, N = 45, 13, 6, 11
    W, R, B = (rng.uniform(-0.5, 0.5, shape) for shape in
               ((1, G * H, I), (1, G * H, H), (1, 2 * G * H)))
    model = Model([Layer.from_onnx(kind, W, R, B, linear_before_reset=lbr)])
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    y, _ = model.run(x)
    s = model.stream(N)
    ys = np.stack([s.step(x[t]) for t in range(T)])
    y_ref = onnx_rnn(kind, x, *(a.astype(np.float32) for a in (W, R, B)),
                     linear_before_reset=lbr)[0][:, 0]
    np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ys, y_ref, rtol=RTOL, atol=ATOL)
    if isa != "serial":
        _kernels.set_isa("serial")
        y_serial, _ = model.run(x)
        _kernels.set_isa(isa)
        np.testing.assert_allclose(y, y_serial, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(ys, y_serial, rtol=RTOL, atol=ATOL)


# -- stream mechanics: preallocated step -------------------------------------------------------

@pytest.fixture
def lstm_model():
    torch.manual_seed(0)
    m = torch.nn.LSTM(6, 20).eval()
    return m, Model(torch_model_to_layers(m))


def test_step_out_argument_writes_in_place(lstm_model):
    m, model = lstm_model
    x = np.random.default_rng(1).standard_normal((3, 1, 6)).astype(np.float32)
    with torch.no_grad():
        yt, _ = m(torch.from_numpy(x))
    s = model.stream(1)
    out = np.empty(20, np.float32)
    for t in range(3):
        r = s.step(x[t, 0], out=out)
        assert r is out
        np.testing.assert_allclose(out, yt.numpy()[t, 0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bad", [np.empty(21, np.float32), np.empty(20, np.float64),
                                 np.empty((1, 20), np.float32), np.empty(40, np.float32)[::2],
                                 [0.0] * 20])
def test_step_rejects_bad_out(lstm_model, bad):
    _, model = lstm_model
    with pytest.raises(ValueError, match=r"out must be a writeable C-contiguous float32 array "
                                         r"of shape \(20,\)"):
        model.stream(1).step(np.zeros(6, np.float32), out=bad)


def test_step_converts_and_checks_input(lstm_model):
    m, model = lstm_model
    x = np.random.default_rng(2).standard_normal((1, 1, 6))
    with torch.no_grad():
        yt, _ = m(torch.from_numpy(x.astype(np.float32)))
    s = model.stream(1)
    wide = np.zeros((1, 12))
    wide[:, ::2] = x[0]
    np.testing.assert_allclose(s.step(wide[:, ::2]), yt.numpy()[0], rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match=r"x_t must be float32 of shape \(1, 6\) or \(6,\); "
                                         r"got \(5,\)"):
        s.step(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="x_t must be a float array"):
        s.step(np.zeros(6, np.int32))
    s3 = model.stream(3)
    with pytest.raises(ValueError, match=r"shape \(3, 6\); got \(6,\)"):
        s3.step(np.zeros(6, np.float32))


def test_concurrent_use_of_a_stream_is_refused(lstm_model):
    _, model = lstm_model
    s = model.stream(1)
    s.core._lock()   # what another thread holds while its step runs
    try:
        for call in (lambda: s.step(np.zeros(6, np.float32)),
                     lambda: s.run(np.zeros((2, 6), np.float32)),
                     s.reset,
                     lambda: s.state,
                     lambda: setattr(s, "state", model.zero_state(1))):
            with pytest.raises(RuntimeError, match="already in use by another thread"):
                call()
    finally:
        s.core._unlock()
    s.step(np.zeros(6, np.float32))


def test_state_roundtrip_through_double_buffer(lstm_model):
    m, model = lstm_model
    x = np.random.default_rng(3).standard_normal((5, 2, 6)).astype(np.float32)
    with torch.no_grad():
        yt, (ht, ct) = m(torch.from_numpy(x))
    s = model.stream(2)
    for t in range(3):
        s.step(x[t])
    saved = s.state
    fresh = model.stream(2)
    fresh.state = saved
    for t in range(3, 5):
        y = fresh.step(x[t])
    np.testing.assert_allclose(y, yt.numpy()[4], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fresh.state[0], ht.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fresh.state[1], ct.numpy(), rtol=RTOL, atol=ATOL)


def test_workspace_reuse_across_models_does_not_leak_values(isa):
    """Sequence workspaces are cached per thread: a small run after a large one must not see
    the large one's leftovers."""
    torch.manual_seed(4)
    big = torch.nn.GRU(30, 90, num_layers=2).eval()
    small = torch.nn.GRU(4, 9).eval()
    mb, ms = Model(torch_model_to_layers(big)), Model(torch_model_to_layers(small))
    rng = np.random.default_rng(6)
    xb = rng.standard_normal((12, 5, 30)).astype(np.float32)
    xs = rng.standard_normal((7, 3, 4)).astype(np.float32)
    with torch.no_grad():
        yb, ys = big(torch.from_numpy(xb))[0].numpy(), small(torch.from_numpy(xs))[0].numpy()
    for _ in range(2):
        np.testing.assert_allclose(mb.run(xb)[0], yb, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(ms.run(xs)[0], ys, rtol=RTOL, atol=ATOL)
