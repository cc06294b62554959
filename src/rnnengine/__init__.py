"""rnnengine: a CPU inference engine for LSTM, GRU and plain RNN networks.

The compute core is a compiled extension; if it did not build, this import fails loudly
(there is no pure-Python fallback).

``InferenceSession``, ``Batcher`` and ``backend`` work on ONNX graphs and need the ``onnx``
package, whose import costs more than all of rnnengine: they load on first access (PEP 562
``__getattr__`` below), so ``import rnnengine`` to run .npz weights stays quick."""
import importlib
from typing import TYPE_CHECKING

from ._kernels import CellKernel as _CellKernel  # noqa: F401  (fails loudly if not built)
from .errors import (ConcurrentStep, DeadlineExceeded, Error, ModelError, StreamClosed,
                     StreamsFull)
from .layers import Layer
from .model import Model
from .stream import Stream
from .loaders import from_keras, from_torch, load

if TYPE_CHECKING:   # for type checkers and the API docs, which read the source, not __getattr__
    from .backend import backend
    from .batcher import Batcher
    from .session import InferenceSession

__all__ = ["Batcher", "ConcurrentStep", "DeadlineExceeded", "Error", "InferenceSession",
           "ModelError", "Layer", "Model", "Stream", "StreamClosed", "StreamsFull", "backend",
           "from_keras", "from_torch", "load"]
__version__ = "0.1.0"

# public name -> the submodule that defines it (imported on first access)
_LAZY = {"InferenceSession": ".session", "Batcher": ".batcher", "backend": ".backend"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    # Bound after the import: importing ``.backend`` sets the package attribute ``backend`` to
    # the submodule, which the public name (the Backend class) must shadow.
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
