"""``rnnengine.load``, ``from_torch``, ``from_keras``: the entries that build a ``Model``.

``load`` chooses the format by the file's content: a zip archive written by ``torch.save``
is a PyTorch ``state_dict`` (``loaders.torch``, needs torch); another zip archive is a NumPy
``.npz`` (``loaders.npz``); an 8-byte length followed by ``{`` is ``.safetensors``
(``loaders.safetensors``); anything else is parsed as ONNX (``loaders.onnx``). The weight
files (.npz, .safetensors, .pt) share one naming route (``npz.layers_from_arrays``).
Options by format:

    node=         all: which recurrent node / weight group to load when there are several
    batch_first=  all: override the input layout the file implies
    chain=        ONNX: False loads only the named node, not the layers chained after it
    nonlinearity= weight files: "tanh" (default) or "relu" for RNN weights whose file does not
                  record it (PyTorch nn.RNN state_dict, Keras SimpleRNN)
    threads=      all: intra-op threads of the returned Model (default 1)
    precision=    all: "fp32" | "fp16" | "bf16" | "int8" (docs/precision.md); default fp32, or the
                  precision an rnnengine file was saved in
"""
from __future__ import annotations

import os
import zipfile
from typing import Optional, Union

import numpy as np

from ..errors import ModelError
from .._checks import check_threads
from ..layers import check_precision
from ..precision_auto import AUTO
from ..model import Model
from . import keras as keras_loader, npz, onnx as onnx_loader, safetensors, torch as torch_loader
from ._files import open_regular


def load(path: Union[str, os.PathLike], node: Optional[str] = None, **options):
    """Load an ONNX model, or weights (``.npz``, ``.safetensors``, ``.pt`` state_dict), as an
    ``rnnengine.Model``.

    Raises ``ModelError`` (naming the file, the node and the reason) for a file that is
    malformed or holds nothing this engine runs; ``OSError`` when it cannot be read."""
    threads = check_threads(options.pop("threads", 1))
    precision = options.pop("precision", None)
    if isinstance(precision, str) and precision != AUTO:
        check_precision(precision)
    # precision="auto": a few representative inputs and the error allowed (Model)
    auto = {k: options.pop(k) for k in ("calibrate", "tolerance") if k in options}
    path = os.fspath(path)
    with open_regular(path, "the model file")[0] as f:
        magic = f.read(9)
    if magic.startswith(b"\x93NUMPY"):
        raise ModelError(f"{path}: a single .npy array, not a model; save the weights "
                         "together with numpy.savez (names -> arrays)")
    fmt = _format(path, magic)
    _check_options(node, options, ONNX_OPTIONS if fmt == "ONNX" else NPZ_OPTIONS, fmt)
    try:
        if fmt == ".npz":
            layers, batch_first, saved = npz.load_npz(path, node, **options)
            # no precision= given: an rnnengine file loads in the precision it was saved in
            return Model(layers, batch_first, threads, precision or saved, **auto)
        if fmt == "ONNX":
            layers, batch_first = onnx_loader.load_onnx(path, node, **options)
            return Model(layers, batch_first, threads, precision or "fp32", **auto)
        arrays = (safetensors.SafetensorsFile(path) if fmt == ".safetensors"
                  else torch_loader.read_state_dict(path))
        layers, batch_first, label, _ = npz.layers_from_arrays(arrays, path, node,
                                                               options.get("nonlinearity"))
        if options.get("batch_first") is not None:
            batch_first = options["batch_first"]
        try:
            return Model(layers, bool(batch_first), threads, precision or "fp32", **auto)
        except ModelError as e:
            raise ModelError(f"{path}: {label}: {e}") from None
    except (ModelError, OSError):
        raise
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, RecursionError,
            MemoryError, EOFError) as e:
        # The parsers below us (protobuf, zipfile, numpy, json) raise these on hostile bytes that
        # slip past the checks in npz.py/onnx.py; the contract is one exception type.
        raise ModelError(f"{path}: malformed file ({type(e).__name__}: {e})") from e


def from_torch(module, *, node: Optional[str] = None, threads: int = 1) -> Model:
    """An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (any options) or ``nn.LSTMCell``/``GRUCell``/
    ``RNNCell`` as a ``Model`` with the same weights, ``batch_first`` and nonlinearity; or the
    only such module inside ``module`` (a warning names it; ``node=`` names it outright, as
    in ``module.named_modules()``). A cell's Model takes whole sequences (T, N, I) and
    streams one (N, I) step at a time. Raises ``ValueError`` for what cannot be mapped."""
    threads = check_threads(threads)
    layers, batch_first = torch_loader.layers_from_torch(module, node)
    return Model(layers, batch_first, threads)


def from_keras(layer, *, threads: int = 1) -> Model:
    """A built Keras 3 ``LSTM``/``GRU``/``SimpleRNN`` (or ``Bidirectional`` of two, concat
    merge) as a ``batch_first`` ``Model``; activations read from the layer. Raises
    ``ValueError`` naming what cannot be mapped (a merge mode, an activation)."""
    threads = check_threads(threads)
    layers, batch_first = keras_loader.layers_from_keras(layer)
    return Model(layers, batch_first, threads)


def _format(path: str, magic: bytes) -> str:
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except Exception:  # BadZipFile, NotImplementedError, EOFError, ... on hostile bytes
            return ".npz"   # the .npz reader reports the damage
        return ".pt" if torch_loader.is_torch_zip(names) else ".npz"
    if magic.startswith(b"\x80"):   # a pickle: torch.save's legacy format (not ONNX's 1st byte)
        return ".pt"
    if safetensors.looks_like_safetensors(magic) or path.lower().endswith(".safetensors"):
        return ".safetensors"
    return "ONNX"


ONNX_OPTIONS = ("batch_first", "chain")
NPZ_OPTIONS = ("batch_first", "nonlinearity")


def _check_options(node, options: dict, accepted: tuple, fmt: str) -> None:
    """User errors are TypeError/ValueError, checked before the file is read, so that
    everything the loaders raise afterwards is about the file."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"unexpected option(s) {unknown} for an {fmt} file; accepted: "
                        f"node, threads, {', '.join(accepted)}")
    if node is not None and not isinstance(node, str):
        raise TypeError(f"node must be a str naming a node or weight group; got {type(node).__name__}")
    for name in ("batch_first", "chain"):
        value = options.get(name)
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False; got {value!r}")
    nonlinearity = options.get("nonlinearity")
    if nonlinearity is not None and nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; got {nonlinearity!r}")
