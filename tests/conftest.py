"""Generic test helpers: single-node ONNX models, ONNX Runtime runs, random node configurations.

Tests import these directly (``from conftest import ...``); pytest puts ``tests/`` on the path.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from rnnengine.core import kernels as _kernels
from rnnengine.onnx.fold import attrs as node_attributes  # noqa: F401  (tests import it)

# Under tools/sanitize.sh (ASan preloaded) OpenVINO's own compile_model aborts inside
# OpenVINO, not in rnnengine: the tests that reach OpenVINO skip there and run everywhere else.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")
reaches_openvino = pytest.mark.skipif(SANITIZED, reason="OpenVINO aborts under ASan")

# Tests import the installed package (CI: `pip install .`). For an in-place build during
# development, run them with PYTHONPATH=src.

# Where things are, for the tests in tests/<room>/: this folder, its data, the clone's root.
TESTS = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(TESTS, "data")
ROOT = os.path.dirname(TESTS)

ONNX_INPUTS = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
ONNX_OUTPUTS = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h"), "RNN": ("Y", "Y_h")}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ACTIVATION_NAMES = ("Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu",
                    "ScaledTanh", "HardSigmoid", "Elu", "Softsign", "Softplus")


def onnx_node_model(op: str, inputs: dict, attrs: dict, *, initializers=(), opset: int = 22):
    """A model with one ``op`` node. ``inputs`` maps ONNX input names to arrays (or None when
    absent); names in ``initializers`` become initializers, the others graph inputs.
    Outputs are all of the node's outputs (Y, Y_h[, Y_c])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = ONNX_INPUTS[op]
    present = [n for n in names if inputs.get(n) is not None]
    last = max(names.index(n) for n in present)
    node_inputs = [n if inputs.get(n) is not None else "" for n in names[:last + 1]]
    graph_inputs, inits = [], []
    for n in present:
        a = np.asarray(inputs[n])
        if n in initializers:
            inits.append(numpy_helper.from_array(a, n))
        else:
            dtype = TensorProto.INT32 if n == "sequence_lens" else TensorProto.FLOAT
            graph_inputs.append(helper.make_tensor_value_info(n, dtype, list(a.shape)))
    # Rank only: Y is 4-D and the states 3-D in both layouts.
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * (4 if n == "Y" else 3))
               for n in ONNX_OUTPUTS[op]]
    attrs = {k: v for k, v in attrs.items() if v is not None}
    node = helper.make_node(op, node_inputs, list(ONNX_OUTPUTS[op]), name=f"{op.lower()}_node",
                            **attrs)
    graph = helper.make_graph([node], "g", graph_inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def graph_feeds(model, inputs: dict) -> list:
    """The arrays for ``model``'s graph inputs, in graph order (what backend.run takes)."""
    return [inputs[i.name] for i in model.graph.input]


def ort_run(model, inputs: dict) -> list:
    """Run ``model`` in ONNX Runtime (CPU, one thread); ``inputs`` may hold extra names."""
    from session_models import ort_session    # imports onnx: only for the tests that run ORT

    return ort_session(model).run(None, {i.name: inputs[i.name] for i in model.graph.input})


# Gate functions multiply the cell/hidden state: outside [0, 1] (Relu, Tanh, ...) they can make
# the recurrence unstable, and float32 rounding then grows ~10x per step and dominates any
# comparison. Random configurations draw gates from the [0, 1]-valued functions;
# activation_slot_case puts each of the eleven in every slot, on short sequences.
GATE_ACTIVATIONS = ("Sigmoid", "HardSigmoid")


def canonical_activation(name: str) -> str:
    """The ONNX spelling of an activation name (ONNX Runtime's RNN kernel is case-sensitive)."""
    return {n.lower(): n for n in ACTIVATION_NAMES}[name.lower()]


def random_activations(rng, op: str, num_directions: int):
    """Random activation names (random letter case) with alpha/beta lists of random length:
    too short lists exercise the defaults, as ONNX Runtime applies them."""
    slots = {"LSTM": ("gate", "any", "any"), "GRU": ("gate", "any"), "RNN": ("any",)}[op]
    names = [str(rng.choice(GATE_ACTIVATIONS if slot == "gate" else ACTIVATION_NAMES))
             for _ in range(num_directions) for slot in slots]
    names = [n if rng.random() < 0.6 else (n.lower() if rng.random() < 0.5 else n.upper())
             for n in names]
    n_alpha = int(rng.integers(0, len(names) + 1))
    n_beta = int(rng.integers(0, len(names) + 1))
    alphas = [float(v) for v in rng.uniform(0.2, 1.2, n_alpha).astype(np.float32)]
    betas = [float(v) for v in rng.uniform(-0.5, 0.8, n_beta).astype(np.float32)]
    return names, (alphas or None), (betas or None)


def ort_attrs(attrs: dict) -> dict:
    """``attrs`` with activation names spelled as ONNX Runtime requires."""
    if not attrs.get("activations"):
        return attrs
    return dict(attrs, activations=[canonical_activation(n) for n in attrs["activations"]])


def random_onnx_case(rng, op: str, *, T=None, N=None, I=None, H=None, direction=None,
                     lengths=None, initial=None, clip=None, activations=None, peepholes=None,
                     input_forget=None, linear_before_reset=None, bias=None):
    """A random ONNX node configuration: ``(inputs, attrs)`` in layout 0, float32 arrays.

    Each keyword left as None is drawn at random; booleans switch a feature on or off."""
    def pick(value, draw):
        return draw() if value is None else value

    T = pick(T, lambda: int(rng.integers(1, 9)))
    N = pick(N, lambda: int(rng.integers(1, 6)))
    I = pick(I, lambda: int(rng.choice([1, 2, 3, 5, 8, 17])))
    H = pick(H, lambda: int(rng.choice([1, 3, 4, 17, 33])))
    direction = pick(direction, lambda: str(rng.choice(["forward", "reverse", "bidirectional"])))
    D = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    scale = 1.0 / np.sqrt(max(I, H))

    def u(*shape, s=scale):
        return rng.uniform(-s, s, shape).astype(np.float32) * 2.0

    inputs = {"X": rng.standard_normal((T, N, I)).astype(np.float32), "W": u(D, G * H, I),
              "R": u(D, G * H, H)}
    if pick(bias, lambda: rng.random() < 0.75):
        inputs["B"] = u(D, 2 * G * H, s=0.5)
    if pick(lengths, lambda: rng.random() < 0.5):
        inputs["sequence_lens"] = rng.integers(0, T + 1, N).astype(np.int32)
    if pick(initial, lambda: rng.random() < 0.5):
        inputs["initial_h"] = u(D, N, H, s=0.8)
        if op == "LSTM":
            inputs["initial_c"] = u(D, N, H, s=0.8)
    attrs = {"hidden_size": H, "direction": direction}
    if op == "LSTM" and pick(peepholes, lambda: rng.random() < 0.4):
        inputs["P"] = u(D, 3 * H, s=0.7)
    if pick(clip, lambda: rng.random() < 0.3):
        attrs["clip"] = float(np.float32(rng.uniform(0.3, 2.0)))
    if pick(activations, lambda: rng.random() < 0.5):
        names, alphas, betas = random_activations(rng, op, D)
        attrs["activations"] = names
        attrs["activation_alpha"] = alphas
        attrs["activation_beta"] = betas
    if op == "LSTM" and pick(input_forget, lambda: rng.random() < 0.3):
        attrs["input_forget"] = 1
    if op == "GRU" and pick(linear_before_reset, lambda: rng.random() < 0.5):
        attrs["linear_before_reset"] = 1
    return inputs, attrs


def to_layout1(inputs: dict) -> dict:
    """The layout=1 (batch-first) twin of layout-0 inputs."""
    out = dict(inputs)
    out["X"] = np.ascontiguousarray(inputs["X"].transpose(1, 0, 2))
    for k in ("initial_h", "initial_c"):
        if inputs.get(k) is not None:
            out[k] = np.ascontiguousarray(inputs[k].transpose(1, 0, 2))
    return out


def outputs_to_layout1(outputs):
    """Layout-0 node outputs (Y [T,D,N,H], Y_h/Y_c [D,N,H]) in layout-1 form."""
    return [outputs[0].transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outputs[1:]]


def assert_outputs_close(got, expected, rtol=1e-5, atol=1e-5, names=None):
    """Every output of ``got`` matches ``expected`` (same count, shapes, values).

    ``atol`` is relative to the output's largest magnitude (at least 1): float32 rounding of a
    recurrence is proportional to the size of the state, not of each element."""
    assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected)):
        name = names[k] if names else f"output {k}"
        g = np.asarray(g)
        assert g.shape == np.shape(e), f"{name}: shape {g.shape}, expected {np.shape(e)}"
        scale = max(1.0, float(np.max(np.abs(e)))) if np.size(e) else 1.0
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * scale, err_msg=name)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so every parametrized case is reproducible."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=_kernels.ISA_NAMES)
def isa(request):
    """Every ISA variant name (serial, avx2, avx512, amx, neon), switched in process (packed
    weights are the same for all variants) and switched back after the test. A variant this
    build or CPU cannot run is a recorded skip, so a report shows what was not covered."""
    if request.param not in _kernels.supported_isas():
        pytest.skip(f"this CPU lacks {request.param}")
    previous = _kernels.isa()
    _kernels.set_isa(request.param)
    yield request.param
    _kernels.set_isa(previous)


RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@functools.lru_cache(maxsize=None)
def conformance_cases() -> tuple:
    """The ONNX backend test cases whose single node is LSTM, GRU or RNN.

    ``collect_testcases`` imports every node-test module once per process (later calls return
    the same list whatever the op), so collect everything once and filter by op type."""
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # other ops' cases overflow casts on purpose
        cases = collect_testcases(None)
    return tuple(c for c in cases if len(c.model.graph.node) == 1
                 and c.model.graph.node[0].op_type in RECURRENT_OPS)


def conformance_node_inputs(case) -> dict:
    """A conformance case's input arrays keyed by ONNX input name (X, W, R, B, ...)."""
    node = case.model.graph.node[0]
    inputs, _ = case.data_sets[0]
    by_graph_name = dict(zip([i.name for i in case.model.graph.input], inputs))
    names = ONNX_INPUTS[node.op_type]
    return {names[k]: by_graph_name[n] for k, n in enumerate(node.input) if n}


def random_stack(rng, kind, num_layers, direction, I, H, proj=0, features=True):
    """ONNX-layout dicts for a stack: layer k>0 takes D*Hout inputs. With ``features``, each
    layer draws its own activations, clip, peepholes, input_forget, linear_before_reset."""
    D = 2 if direction == "bidirectional" else 1
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    Hout = proj or H
    layers = []
    for k in range(num_layers):
        width = I if k == 0 else D * Hout
        s = 1.0 / np.sqrt(max(width, H))
        d = dict(kind=kind, direction=direction,
                 W=rng.uniform(-2 * s, 2 * s, (D, G * H, width)).astype(np.float32),
                 R=rng.uniform(-2 * s, 2 * s, (D, G * H, Hout)).astype(np.float32),
                 B=rng.uniform(-0.5, 0.5, (D, 2 * G * H)).astype(np.float32))
        if proj:
            d["proj"] = rng.uniform(-0.6, 0.6, (D, proj, H)).astype(np.float32)
        if features:
            if rng.random() < 0.5:
                names, alphas, betas = random_activations(rng, kind.upper(), D)
                d.update(activations=names, activation_alpha=alphas, activation_beta=betas)
            if rng.random() < 0.3:
                d["clip"] = float(np.float32(rng.uniform(0.5, 2.0)))
            if kind == "lstm" and rng.random() < 0.4:
                d["P"] = rng.uniform(-0.5, 0.5, (D, 3 * H)).astype(np.float32)
            if kind == "lstm" and rng.random() < 0.3:
                d["input_forget"] = 1
            if kind == "gru":
                d["linear_before_reset"] = int(rng.random() < 0.5)
        layers.append(d)
    return layers


def build_model(layer_dicts, batch_first=False):
    """An engine Model from ``random_stack``-style dicts, through Layer.from_onnx."""
    from rnnengine import Layer, Model

    layers = [Layer.from_onnx(d["kind"], d["W"], d["R"], d.get("B"), d.get("P"),
                              **{k: v for k, v in d.items()
                                 if k not in ("kind", "W", "R", "B", "P")})
              for d in layer_dicts]
    return Model(layers, batch_first=batch_first)


def random_state(rng, kind, L, D, N, H, Hout):
    """A random state in Model.run's structure: h or (h, c), each (L*D, N, .)."""
    h = rng.uniform(-1, 1, (L * D, N, Hout)).astype(np.float32)
    return (h, rng.uniform(-1, 1, (L * D, N, H)).astype(np.float32)) if kind == "lstm" else h


def states(s):
    """A state as a list of arrays, for comparisons."""
    return list(s) if isinstance(s, tuple) else [s]


# Feature switches for random_onnx_case, shared by the oracle and the engine tests.
FEATURES = {
    "lengths": dict(lengths=True, initial=False),
    "lengths_initial": dict(lengths=True, initial=True),
    "initial": dict(initial=True, lengths=False),
    "bidirectional_lengths": dict(direction="bidirectional", lengths=True, initial=True),
    "reverse_lengths": dict(direction="reverse", lengths=True, initial=True),
    "clip": dict(clip=True),
    "activations": dict(activations=True),
    "no_bias": dict(bias=False),
    "batch1_T1": dict(N=1, T=1),
    "H1": dict(H=1),
    "H33_I17": dict(H=33, I=17),
}

ACTIVATION_SLOTS = [(op, slot, name)
                    for op, slots in (("LSTM", 3), ("GRU", 2), ("RNN", 1))
                    for slot in range(slots) for name in ACTIVATION_NAMES]


def activation_slot_case(rng, op: str, slot: int, name: str, given_params: bool):
    """``name`` in activation slot ``slot`` (f, g, h) of a short bidirectional node, in odd
    letter case; with ``given_params`` one alpha and one beta, else ORT's defaults. The
    reverse direction keeps the default functions, which consume no alpha/beta, so only
    ``name`` can take them. Short sequences keep unbounded gate functions from blowing up."""
    inputs, attrs = random_onnx_case(rng, op, T=3, N=2, I=3, H=5, direction="bidirectional",
                                     activations=False, initial=True, lengths=False)
    defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                "RNN": ["Tanh"]}[op]
    names = list(defaults)
    names[slot] = name.lower() if slot % 2 else name.upper()
    attrs["activations"] = names + defaults
    if given_params:
        attrs["activation_alpha"] = [0.7]
        attrs["activation_beta"] = [0.3]
    return inputs, attrs


def peephole_clip_case(rng, direction: str, input_forget: bool, lengths: bool):
    """An LSTM with large peepholes and a small clip: the clip must bound the peephole term."""
    inputs, attrs = random_onnx_case(rng, "LSTM", direction=direction, peepholes=True,
                                     clip=True, initial=True, input_forget=input_forget,
                                     lengths=lengths)
    inputs["P"] = inputs["P"] * 4
    attrs["clip"] = 0.4
    return inputs, attrs


def assert_bytes_are_a_model_error(path, content: bytes, reason: str) -> None:
    """Write ``content`` to ``path``: loading it must raise a ModelError that names the file,
    then says ``reason`` (a regex) about what is wrong with it."""
    import re

    import rnnengine

    path.write_bytes(content)
    with pytest.raises(rnnengine.ModelError, match=f"^{re.escape(str(path))}: {reason}"):
        rnnengine.load(path)


def run_isolated(code: str, timeout: float = 120):
    """Run ``code`` (dedented) in a fresh interpreter with this one's environment, so a crash
    or a hang fails one test instead of the run; -> CompletedProcess (text stdout/stderr)."""
    import subprocess
    import sys
    import textwrap

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def interrupted(code, args, after, timeout):
    """Run ``code`` in a child until it prints "ready", send SIGINT ``after`` seconds later:
    (its output, its stderr, its exit code, seconds from the signal to its exit)."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", code, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = child.stdout.readline().split()
        assert ready and ready[0] == "ready", child.stderr.read()
        time.sleep(after)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=timeout)
        waited = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return out, err, child.returncode, waited


def load_fuzz_seeds():
    """fuzz/seeds.py as a module: the seed builders (multi-layer ONNX chains among them) are
    the tests' builders too, so the seeds the fuzzer mutates are known to load and run."""
    import importlib.util
    import os

    path = os.path.join(ROOT, "fuzz", "seeds.py")
    spec = importlib.util.spec_from_file_location("fuzz_seeds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

