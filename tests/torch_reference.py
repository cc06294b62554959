"""Random engine models and their PyTorch twins: the independent reference for the pool,
state-migration, thread and service tests.

The engine model is built from ONNX-layout arrays (``Layer.from_onnx``); the twin is an
``nn.LSTM``/``nn.GRU``/``nn.RNN`` in float64 holding the same weights, gate blocks reordered
from ONNX's order to PyTorch's. GRU models use ``linear_before_reset=1`` (PyTorch's GRU).
"""
from __future__ import annotations

import numpy as np
import torch

from rnnengine.core.gate_order import from_onnx, to_onnx
from rnnengine.core.layers import Layer
from rnnengine.runtime.model import Model

GATES = {"lstm": 4, "gru": 3, "rnn": 1}

torch.set_num_threads(1)


def onnx_arrays(kind: str, input_size: int, hidden_size: int, num_layers: int = 1,
                proj_size: int = 0, seed: int = 0) -> list:
    """Per layer a dict of ONNX-layout arrays W, R, B (and proj), float32, uniform in
    +-1/sqrt(H) like PyTorch's default initialisation."""
    rng = np.random.default_rng(seed)
    G, H = GATES[kind], hidden_size
    out = proj_size or H
    bound = 1.0 / np.sqrt(H)
    layers = []
    for k in range(num_layers):
        I = input_size if k == 0 else out
        u = lambda *shape: rng.uniform(-bound, bound, shape).astype(np.float32)  # noqa: E731
        arrays = {"W": u(1, G * H, I), "R": u(1, G * H, out), "B": u(1, 2 * G * H)}
        if proj_size:
            arrays["proj"] = u(1, proj_size, H)
        layers.append(arrays)
    return layers


def build_model(kind: str, arrays: list) -> Model:
    """The engine model of ``onnx_arrays``' output."""
    extra = {"linear_before_reset": 1} if kind == "gru" else {}
    return Model([Layer.from_onnx(kind, a["W"], a["R"], a["B"], proj=a.get("proj"), **extra)
                  for a in arrays])


def random_model(kind: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 proj_size: int = 0, seed: int = 0):
    """(engine Model, PyTorch twin)."""
    arrays = onnx_arrays(kind, input_size, hidden_size, num_layers, proj_size, seed)
    return build_model(kind, arrays), torch_twin(kind, arrays)


def _torch_blocks(kind: str, a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(from_onnx(a, kind, "torch"))


def torch_twin(kind: str, arrays: list) -> torch.nn.Module:
    G = GATES[kind]
    H = arrays[0]["W"].shape[1] // G
    I = arrays[0]["W"].shape[2]
    proj = arrays[0].get("proj")
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    extra = {"proj_size": proj.shape[1]} if proj is not None else {}
    module = cls(I, H, num_layers=len(arrays), **extra).double()
    with torch.no_grad():
        for k, a in enumerate(arrays):
            getattr(module, f"weight_ih_l{k}").copy_(_torch_blocks(kind, a["W"][0]))
            getattr(module, f"weight_hh_l{k}").copy_(_torch_blocks(kind, a["R"][0]))
            getattr(module, f"bias_ih_l{k}").copy_(_torch_blocks(kind, a["B"][0, :G * H]))
            getattr(module, f"bias_hh_l{k}").copy_(_torch_blocks(kind, a["B"][0, G * H:]))
            if proj is not None:
                getattr(module, f"weight_hr_l{k}").copy_(torch.from_numpy(a["proj"][0]))
    return module


def torch_run(module: torch.nn.Module, xs, state=None):
    """One unbatched sequence xs ``(T, I)`` from ``state`` (engine structure, batch 1, or None
    for zeros) -> (ys ``(T, Hout)``, final state in the engine structure, batch 1), float64."""
    x = torch.from_numpy(np.asarray(xs, np.float64)).reshape(len(xs), 1, -1)
    if state is not None:
        if isinstance(state, tuple):
            state = tuple(torch.from_numpy(np.asarray(s, np.float64).reshape(s.shape[0], 1, -1))
                          for s in state)
        else:
            state = torch.from_numpy(np.asarray(state, np.float64).reshape(state.shape[0], 1, -1))
    with torch.no_grad():
        y, final = module(x, state)
    if isinstance(final, tuple):
        final = tuple(s.numpy() for s in final)
    else:
        final = final.numpy()
    return y[:, 0].numpy(), final


def assert_close(actual, expected, what: str = "") -> None:
    """float32 engine results against a float64 reference."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), what
        for a, e in zip(actual, expected):
            assert_close(a, e, what)
        return
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-6,
                               err_msg=what)


def torch_model_to_layers(m, kind):
    """nn.LSTM/GRU/RNN -> rnnengine layers (ONNX gate order), independent of any loader."""
    L = m.num_layers
    D = 2 if m.bidirectional else 1
    proj = getattr(m, "proj_size", 0)

    def onnx_rows(a):
        return to_onnx(a, kind, "torch")

    layers = []
    for l in range(L):
        Ws, Rs, Bs, Ps = [], [], [], []
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            g = lambda n: getattr(m, n + sfx).detach().numpy()  # noqa: E731
            Ws.append(onnx_rows(g("weight_ih")))
            Rs.append(onnx_rows(g("weight_hh")))
            Bs.append(np.concatenate([onnx_rows(g("bias_ih")), onnx_rows(g("bias_hh"))]))
            if proj:
                Ps.append(g("weight_hr"))
        acts = None
        if kind == "rnn" and m.nonlinearity == "relu":
            acts = ["Relu"]
        layers.append(Layer.from_onnx(
            kind, np.stack(Ws), np.stack(Rs), np.stack(Bs),
            direction="bidirectional" if D == 2 else "forward", activations=acts,
            linear_before_reset=1 if kind == "gru" else 0,
            proj=np.stack(Ps) if proj else None))
    return layers
