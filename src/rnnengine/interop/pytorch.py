"""An rnnengine ``Model`` as PyTorch modules: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with the same
weights, PyTorch's streaming idiom (one cell per layer), and a module built by PyTorch itself
from a ``state_dict`` file (independent of rnnengine's loaders). torch is imported when one
is made."""
from __future__ import annotations

import re

import numpy as np

from ..core.gate_order import from_onnx
from ..runtime.model import Model
from . import Unsupported

TORCH_DEFAULT_ACTIVATIONS = {"lstm": ("sigmoid", "tanh", "tanh"), "gru": ("sigmoid", "tanh")}


def torch_module_for(model: Model):
    """An equivalent ``torch.nn.LSTM/GRU/RNN`` holding the loaded weights (float32, eval)."""
    import torch

    layers = model.layers
    first = layers[0]
    if any(layer.reverse for layer in layers):
        raise Unsupported("a reverse-only direction has no PyTorch module")
    if any(layer.clip is not None or layer.input_forget for layer in layers):
        raise Unsupported("clip / input_forget have no PyTorch equivalent")
    if any(layer.P is not None and np.any(layer.P) for layer in layers):
        raise Unsupported("LSTM peepholes have no PyTorch equivalent")
    if model.kind == "gru" and not all(layer.linear_before_reset for layer in layers):
        raise Unsupported("PyTorch's GRU is linear_before_reset=1; this model uses 0")
    names = {tuple(a.name for a in d) for layer in layers for d in layer.activations}
    nonlinearity = None
    if model.kind == "rnn":
        if names not in ({("tanh",)}, {("relu",)}):
            raise Unsupported(f"PyTorch's RNN is tanh or relu; this model uses {sorted(names)}")
        nonlinearity = next(iter(names))[0]
    elif names != {TORCH_DEFAULT_ACTIVATIONS[model.kind]}:
        raise Unsupported(f"non-default activations {sorted(names)} have no PyTorch module")
    if any(layer.hidden_size != first.hidden_size or layer.output_size != first.output_size
           for layer in layers):
        raise Unsupported("PyTorch needs the same hidden size in every layer")
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[model.kind]
    kwargs = dict(num_layers=model.num_layers, bidirectional=model.num_directions == 2)
    if nonlinearity:
        kwargs["nonlinearity"] = nonlinearity
    if model.proj_size:
        kwargs["proj_size"] = model.proj_size
    module = cls(model.input_size, model.hidden_size, **kwargs)

    def reorder(a):  # (G*H, ...) ONNX gate blocks -> PyTorch's
        return from_onnx(a, model.kind, "torch")

    weights = {}
    for k, layer in enumerate(layers):
        for d in range(layer.num_directions):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            weights["weight_ih" + suffix] = reorder(layer.W[d])
            weights["weight_hh" + suffix] = reorder(layer.R[d])
            weights["bias_ih" + suffix] = reorder(layer.Wb[d])
            weights["bias_hh" + suffix] = reorder(layer.Rb[d])
            if layer.proj is not None:
                weights["weight_hr" + suffix] = layer.proj[d]
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})
    return module.eval()


STATE_DICT_FILES = (".npz", ".safetensors", ".pt", ".pth")


def torch_module_from_state_dict(path: str, model: Model):
    """The recurrent module PyTorch itself builds from a ``state_dict`` saved as ``.npz``,
    ``.safetensors`` (read by the safetensors package) or ``.pt`` (``torch.load``), any
    module prefix, independent of rnnengine's loaders; None if the file has no PyTorch
    recurrent names. ``model`` only tells the RNN nonlinearity, which the file does not."""
    import torch

    arrays = _read_state_dict(path)
    prefixes = {m.group(1) for k in arrays
                if (m := re.fullmatch(r"(.*)weight_ih_l\d+(_reverse)?", k))}
    if len(prefixes) != 1:
        return None
    prefix = prefixes.pop()
    own = {k[len(prefix):]: v for k, v in arrays.items()
           if k.startswith(prefix) and re.fullmatch(r"(weight|bias)_(ih|hh|hr)_l\d+(_reverse)?",
                                                    k[len(prefix):])}
    w_ih, w_hh = own["weight_ih_l0"], own["weight_hh_l0"]
    H = own["weight_hr_l0"].shape[1] if "weight_hr_l0" in own else w_hh.shape[1]
    kind = {4: "lstm", 3: "gru", 1: "rnn"}.get(w_ih.shape[0] // H)
    if kind is None:
        return None
    layers = 1 + max(int(re.search(r"_l(\d+)", k).group(1)) for k in own)
    kwargs = dict(num_layers=layers, bidirectional=any(k.endswith("_reverse") for k in own),
                  bias="bias_ih_l0" in own)
    if "weight_hr_l0" in own:
        kwargs["proj_size"] = own["weight_hr_l0"].shape[0]
    if kind == "rnn":
        kwargs["nonlinearity"] = model.layers[0].activations[0][0].name
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    module = cls(w_ih.shape[1], H, **kwargs)
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, np.float32))
                            for k, v in own.items()})
    return module.eval()


def _read_state_dict(path: str) -> dict:
    import torch

    suffix = path.lower().rsplit(".", 1)[-1]
    if suffix == "safetensors":
        from safetensors.numpy import load_file
        return load_file(path)
    if suffix in ("pt", "pth"):
        flat = {}

        def walk(value, prefix):
            if isinstance(value, torch.Tensor):
                flat[prefix] = value.detach().float().numpy()
            elif isinstance(value, dict):
                for key, item in value.items():
                    walk(item, f"{prefix}.{key}" if prefix else str(key))
        walk(torch.load(path, map_location="cpu", weights_only=True), "")
        return flat
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def torch_run(module, x: np.ndarray, state, kind: str):
    """x (T, N, I) -> (y, state) from a torch recurrent module, as NumPy."""
    import torch

    with torch.no_grad():
        if state is None:
            y, s = module(torch.from_numpy(x))
        elif kind == "lstm":
            y, s = module(torch.from_numpy(x), tuple(torch.from_numpy(a) for a in state))
        else:
            y, s = module(torch.from_numpy(x), torch.from_numpy(state))
    if kind == "lstm":
        return y.numpy(), (s[0].numpy(), s[1].numpy())
    return y.numpy(), s.numpy()


class TorchCells:
    """PyTorch's streaming idiom: one ``nn.LSTMCell``/``GRUCell``/``RNNCell`` per layer,
    stepped one timestep at a time (forward, no projection)."""

    def __init__(self, module, kind: str, num_layers: int):
        import torch

        cell_cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[kind]
        self.kind, self.cells = kind, []
        for k in range(num_layers):
            ih = getattr(module, f"weight_ih_l{k}")
            kwargs = {"nonlinearity": module.nonlinearity} if kind == "rnn" else {}
            cell = cell_cls(ih.shape[1], module.hidden_size, **kwargs)
            cell.weight_ih.data = ih.data
            cell.weight_hh.data = getattr(module, f"weight_hh_l{k}").data
            cell.bias_ih.data = getattr(module, f"bias_ih_l{k}").data
            cell.bias_hh.data = getattr(module, f"bias_hh_l{k}").data
            self.cells.append(cell.eval())
        self.state = None

    def step(self, x_t):
        """x_t: torch (N, I) -> y_t (N, H); the state is carried in ``self.state``."""
        state = self.state or [None] * len(self.cells)
        for k, cell in enumerate(self.cells):
            state[k] = cell(x_t, state[k]) if state[k] is not None else cell(x_t)
            x_t = state[k][0] if self.kind == "lstm" else state[k]
        self.state = state
        return x_t
