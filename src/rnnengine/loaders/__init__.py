"""``rnnengine.load``: one entry point, the format chosen by the file's content.

A zip archive is a NumPy ``.npz`` (``loaders.npz``); anything else is parsed as ONNX
(``loaders.onnx``). Options by format:

    node=         both: which recurrent node / weight group to load when there are several
    batch_first=  both: override the input layout the file implies
    chain=        ONNX: False loads only the named node, not the layers chained after it
    nonlinearity= .npz: "tanh" (default) or "relu" for RNN weights whose file does not
                  record it (PyTorch nn.RNN state_dict, Keras SimpleRNN)
    threads=      both: intra-op threads of the returned Model (default 1)
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from .._checks import check_threads
from ..errors import ModelError
from ..model import Model
from . import npz, onnx as onnx_loader
from ._files import open_regular


def load(path: Union[str, os.PathLike], node: Optional[str] = None, **options):
    """Load an ONNX model or a ``.npz`` of weights as an ``rnnengine.Model``.

    Raises ``ModelError`` (naming the file, the node and the reason) for a file that is
    malformed or holds nothing this engine runs; ``OSError`` when it cannot be read."""
    threads = check_threads(options.pop("threads", 1))
    path = os.fspath(path)
    with open_regular(path, "the model file")[0] as f:
        magic = f.read(8)
    if magic.startswith(b"\x93NUMPY"):
        raise ModelError(f"{path}: a single .npy array, not a model; save the weights "
                         "together with numpy.savez (names -> arrays)")
    is_npz = magic.startswith(b"PK")
    _check_options(node, options, NPZ_OPTIONS if is_npz else ONNX_OPTIONS,
                   ".npz" if is_npz else "ONNX")
    loader = npz.load_npz if is_npz else onnx_loader.load_onnx
    try:
        layers, batch_first = loader(path, node, **options)
        return Model(layers, batch_first, threads)
    except (ModelError, OSError):
        raise
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, RecursionError,
            MemoryError, EOFError) as e:
        # The parsers below us (protobuf, zipfile, numpy) raise these on hostile bytes that
        # slip past the checks in npz.py/onnx.py; the contract is one exception type.
        raise ModelError(f"{path}: malformed file ({type(e).__name__}: {e})") from e


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
