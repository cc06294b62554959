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


def torch_run(module: torch.nn.Module, x, state=None, lengths=None):
    """Run a PyTorch RNN ``module`` in its own dtype -> (y, final state) as NumPy arrays.

    ``x`` is batched in the module's layout (``(T, N, I)``, or ``(N, T, I)`` batch-first) or one
    unbatched sequence ``(T, I)``; ``state`` is NumPy in the engine's structure (h, or (h, c) for
    an LSTM) or None for zeros; ``lengths`` (one a batch entry) go through packing. An unbatched
    sequence gives y ``(T, Hout)`` and takes and gives the state with batch 1, as a stream holds
    it."""
    dtype = next(module.parameters()).dtype
    x = np.asarray(x)
    unbatched = x.ndim == 2
    if unbatched:
        x = x[None] if module.batch_first else x[:, None]

    def tensor(a):
        if unbatched:
            a = np.reshape(a, (a.shape[0], 1, -1))
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    if state is not None:
        state = tuple(map(tensor, state)) if isinstance(state, tuple) else tensor(state)
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
        if lengths is None:
            y, final = module(xt, state)
        else:
            T = x.shape[1] if module.batch_first else x.shape[0]
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.tensor(lengths), batch_first=module.batch_first, enforce_sorted=False)
            y, final = module(packed, state)
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=module.batch_first,
                                                          total_length=T)
    final = tuple(t.numpy() for t in final) if isinstance(final, tuple) else final.numpy()
    y = y.numpy()
    if unbatched:
        y = y[0] if module.batch_first else y[:, 0]
    return y, final


def assert_close(actual, expected, what: str = "") -> None:
    """float32 engine results against a float64 reference."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), what
        for a, e in zip(actual, expected):
            assert_close(a, e, what)
        return
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-6,
                               err_msg=what)


def torch_to_onnx_layers(module):
    """PyTorch nn.LSTM/GRU/RNN parameters -> one ONNX-layout dict per layer (run_stack's input).

    Gate orders: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h (always linear-before-reset)."""
    if isinstance(module, torch.nn.LSTM):
        kind, extra = "lstm", {}
    elif isinstance(module, torch.nn.GRU):
        kind, extra = "gru", {"linear_before_reset": 1}
    else:
        kind = "rnn"
        extra = {"activations": ["Relu" if module.nonlinearity == "relu" else "Tanh"]
                 * (2 if module.bidirectional else 1)}

    def reorder(a):
        return to_onnx(a, kind, "torch")

    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    sfx = ["", "_reverse"] if module.bidirectional else [""]
    layers = []
    for k in range(module.num_layers):
        d = dict(kind=kind, direction="bidirectional" if module.bidirectional else "forward",
                 W=np.stack([reorder(sd[f"weight_ih_l{k}{s}"]) for s in sfx]),
                 R=np.stack([reorder(sd[f"weight_hh_l{k}{s}"]) for s in sfx]), **extra)
        if module.bias:
            d["B"] = np.stack([np.concatenate([reorder(sd[f"bias_ih_l{k}{s}"]),
                                               reorder(sd[f"bias_hh_l{k}{s}"])]) for s in sfx])
        if getattr(module, "proj_size", 0):
            d["proj"] = np.stack([sd[f"weight_hr_l{k}{s}"] for s in sfx])
        layers.append(d)
    return layers


def torch_model_to_layers(module):
    """nn.LSTM/GRU/RNN -> rnnengine layers (ONNX gate order), independent of any loader."""
    return [Layer.from_onnx(**arrays) for arrays in torch_to_onnx_layers(module)]
