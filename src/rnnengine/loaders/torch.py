"""PyTorch modules in memory -> layers (``rnnengine.from_torch``), and ``.pt`` state_dicts.

Taken: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` with any options (layers, bidirectional,
``proj_size``, ``bias=False``, ``batch_first``, ``nonlinearity``; dropout only acts in
training) and the cells ``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``, or a module that
contains exactly one of these. The weights go through the ``.npz`` route's PyTorch names
(``npz.layers_from_arrays``), so a module and its saved ``state_dict`` load identically;
what a state_dict does not record (``batch_first``, ``nonlinearity``) is read from the module.

torch is imported here only, when called: it is never a dependency of rnnengine.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np

from ..errors import ModelError
from .npz import layers_from_arrays

MODULE_TYPES = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")


def layers_from_torch(module, node: Optional[str] = None):
    """``module`` -> (layers, batch_first). ``node`` names the submodule to take (as in
    ``module.named_modules()``) when ``module`` is a container."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch takes a torch.nn.Module; got {type(module).__name__}")
    if node is not None and not isinstance(node, str):
        raise TypeError(f"node must be a str naming a submodule; got {type(node).__name__}")
    name, rnn = _pick(module, node)
    what = f"{type(rnn).__name__} {name!r}" if name else type(rnn).__name__
    if isinstance(rnn, torch.nn.RNNBase):
        if rnn.mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
            raise ValueError(f"{what}: unknown recurrent mode {rnn.mode!r}")
        suffixes = [f"_l{k}{rev}" for k in range(rnn.num_layers)
                    for rev in (("", "_reverse") if rnn.bidirectional else ("",))]
        params = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
        params += ["weight_hr"] if getattr(rnn, "proj_size", 0) else []
        names = [p + s for s in suffixes for p in params]
        batch_first = bool(rnn.batch_first)
    else:
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if rnn.bias else [])
        batch_first = False  # a cell steps (N, I); its Model takes (T, N, I)
    nonlinearity = getattr(rnn, "nonlinearity", None)  # nn.RNN / nn.RNNCell only
    arrays = {n: _numpy(getattr(rnn, n), f"{what}.{n}") for n in names}
    layers, _, _ = layers_from_arrays(arrays, what, None, nonlinearity)
    return layers, batch_first


def _pick(module, node: Optional[str]):
    """(name, module) of the one recurrent module to take: ``module`` itself, or the only
    one inside it (a warning says which), or the one named ``node``."""
    import torch

    types = tuple(getattr(torch.nn, t) for t in MODULE_TYPES)
    if node is None and isinstance(module, types):
        return "", module
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, types)]
    listing = ", ".join(f"{n or '<the module itself>'} ({type(m).__name__})" for n, m in found)
    if node is not None:
        chosen = [(n, m) for n, m in found if n == node]
        if not chosen:
            raise ValueError(f"no recurrent module named {node!r} in the "
                             f"{type(module).__name__}; its recurrent modules: {listing or 'none'}")
        return chosen[0]
    if not found:
        raise ValueError(f"the {type(module).__name__} holds no nn.LSTM, nn.GRU, nn.RNN or "
                         "their cells")
    if len(found) > 1:
        raise ValueError(f"the {type(module).__name__} holds {len(found)} recurrent modules: "
                         f"{listing}; pick one with node=NAME")
    name, rnn = found[0]
    warnings.warn(f"from_torch: took {type(rnn).__name__} {name!r}, the only recurrent module "
                  f"in the {type(module).__name__} (node={name!r} says so and silences this)",
                  stacklevel=4)
    return name, rnn


def _numpy(tensor, what: str) -> np.ndarray:
    import torch

    if tensor is None:
        raise ValueError(f"{what} is None")
    if not tensor.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor; got {tensor.dtype}")
    # float32 on the CPU: from float64/float16/bfloat16 or another device
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def read_state_dict(path: str) -> dict:
    """A ``.pt``/``.pth`` file holding a ``state_dict`` (possibly nested in dicts: their keys
    joined with ".") -> {name: float32 array}, through ``torch.load(weights_only=True)``,
    which refuses anything but tensors and plain containers (no code runs)."""
    try:
        import torch
    except ImportError:
        raise ModelError(f"{path}: a PyTorch file; reading it needs torch "
                         "(pip install torch), or save the state_dict as .safetensors") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for anything but plain data, zip faults
        raise ModelError(f"{path}: not a state_dict torch.load(weights_only=True) accepts "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    arrays = {}

    def walk(value, prefix: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                arrays[prefix] = value.detach().to(dtype=torch.float32).numpy()
            else:  # e.g. BatchNorm's num_batches_tracked; the name route reports what it lacks
                arrays[prefix] = value.detach().numpy()
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))

    try:
        walk(obj, "")
    except Exception as e:  # quantized, sparse or meta tensors have no plain NumPy form
        raise ModelError(f"{path}: a tensor cannot be read as an array ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    if not arrays:
        raise ModelError(f"{path}: holds no tensors (a {type(obj).__name__}); expected a "
                         "state_dict")
    return arrays


def is_torch_zip(names) -> bool:
    """A zip archive written by ``torch.save`` (its members are ``<name>/data.pkl``, ...)."""
    return any(os.path.basename(n) == "data.pkl" for n in names)
