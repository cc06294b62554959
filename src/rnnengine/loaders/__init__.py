"""Model files and in-memory modules -> recurrent ``Layer`` objects.

``read`` chooses the format by the file's content: a zip archive written by ``torch.save``
is a PyTorch ``state_dict`` (``loaders.torch``, needs torch); another zip archive is a NumPy
``.npz`` (``loaders.npz``); an 8-byte length followed by ``{`` is ``.safetensors``
(``loaders.safetensors``); anything else is parsed as ONNX (``loaders.onnx``). The weight
files (.npz, .safetensors, .pt) share one naming route (``npz.layers_from_arrays``).
``own_format`` is the engine's own ``.npz``. Options by format:

    node=         all: which recurrent node / weight group to load when there are several
    batch_first=  all: override the input layout the file implies
    chain=        ONNX: False loads only the named node, not the layers chained after it
    nonlinearity= weight files: "tanh" (default) or "relu" for RNN weights whose file does not
                  record it (PyTorch nn.RNN state_dict, Keras SimpleRNN)

The public entries that wrap the layers in a ``Model`` (``rnnengine.load``, ``from_torch``,
``from_keras``) are ``runtime.load``'s. This subpackage imports ``core`` and ``onnx`` only.
"""
from __future__ import annotations

import contextlib
import zipfile
from typing import List, NamedTuple, Optional

import numpy as np

from ..errors import ModelError
from ..core.files import open_regular
from ..core.layers import Layer
from . import npz, onnx as onnx_loader, safetensors, torch as torch_loader


class Loaded(NamedTuple):
    """What a file holds: its layers, its input layout, the precision it was saved in (an
    rnnengine file; else None) and, for weight files, the weight group's label (for errors)."""
    layers: List[Layer]
    batch_first: bool
    precision: Optional[str]
    label: Optional[str]


def read(path: str, node: Optional[str] = None, **options) -> Loaded:
    """The layers of a model file. Raises ``ModelError`` (naming the file, the node and the
    reason) for a file that is malformed or holds nothing this engine runs; ``OSError`` when
    it cannot be read; ``TypeError``/``ValueError`` for options that do not fit the format."""
    with open_regular(path, "the model file")[0] as f:
        magic = f.read(9)
    if magic.startswith(b"\x93NUMPY"):
        raise ModelError(f"{path}: a single .npy array, not a model; save the weights "
                         "together with numpy.savez (names -> arrays)")
    fmt = _format(path, magic)
    _check_options(node, options, ONNX_OPTIONS if fmt == "ONNX" else NPZ_OPTIONS, fmt)
    with file_errors(path):
        if fmt == ".npz":
            layers, batch_first, saved = npz.load_npz(path, node, **options)
            return Loaded(layers, batch_first, saved, None)
        if fmt == "ONNX":
            layers, batch_first = onnx_loader.load_onnx(path, node, **options)
            return Loaded(layers, batch_first, None, None)
        arrays = (safetensors.SafetensorsFile(path) if fmt == ".safetensors"
                  else torch_loader.read_state_dict(path))
        layers, batch_first, label, _ = npz.layers_from_arrays(arrays, path, node,
                                                               options.get("nonlinearity"))
        if options.get("batch_first") is not None:
            batch_first = options["batch_first"]
        return Loaded(layers, bool(batch_first), None, label)


@contextlib.contextmanager
def file_errors(path: str):
    """Errors raised while a file's contents are turned into a model become ``ModelError``."""
    try:
        yield
    except (ModelError, OSError):
        raise
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, RecursionError,
            MemoryError, EOFError) as e:
        # The parsers below us (protobuf, zipfile, numpy, json) raise these on hostile bytes that
        # slip past the checks in npz.py/onnx.py; the contract is one exception type.
        raise ModelError(f"{path}: malformed file ({type(e).__name__}: {e})") from e


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
