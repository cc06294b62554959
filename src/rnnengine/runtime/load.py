"""``rnnengine.load``, ``from_torch``, ``from_keras``: the entries that build a ``Model`` from
a file's or a module's layers (read by ``loaders``).

Options beyond the loaders' (``loaders`` lists them by format):

    threads=      all: intra-op threads of the returned Model (default 1)
    precision=    all: "fp32" | "fp16" | "bf16" | "int8" | "auto" (docs/precision.md); default
                  fp32, or the precision an rnnengine file was saved in
    calibrate=, tolerance=   with precision="auto": representative inputs and the error allowed
"""
from __future__ import annotations

import os
from typing import Optional, Union

from ..errors import ModelError
from ..core.checks import check_threads
from ..core.precision import check_precision
from ..loaders import file_errors, keras as keras_loader, read, torch as torch_loader
from .model import Model
from .precision_auto import AUTO


def load(path: Union[str, os.PathLike], node: Optional[str] = None, **options) -> Model:
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
    got = read(path, node, **options)
    with file_errors(path):
        try:
            # no precision= given: an rnnengine file loads in the precision it was saved in
            return Model(got.layers, got.batch_first, threads,
                         precision or got.precision or "fp32", **auto)
        except ModelError as e:
            if got.label is None:
                raise
            raise ModelError(f"{path}: {got.label}: {e}") from None


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
