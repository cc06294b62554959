"""rnnengine: a CPU inference engine for LSTM, GRU and plain RNN networks.

The compute core is a compiled extension; if it did not build, this import fails loudly
(there is no pure-Python fallback).

``InferenceSession``, ``Batcher`` and ``backend`` work on ONNX graphs and need the ``onnx``
package, whose import costs more than all of rnnengine: they load on first access (PEP 562
``__getattr__`` below), so ``import rnnengine`` to run .npz weights stays quick."""
import importlib
from typing import TYPE_CHECKING

from .core.kernels import CellKernel as _CellKernel  # noqa: F401  (fails loudly if not built)
from .errors import (ConcurrentStep, DeadlineExceeded, Error, ModelError, StreamClosed,
                     StreamsFull)
from .core.layers import Layer
from .runtime.model import Model
from .runtime.stream import Stream
from .runtime.load import from_keras, from_torch, load

if TYPE_CHECKING:   # for type checkers and the API docs, which read the source, not __getattr__
    from .runtime.backend import backend
    from .serving.batcher import Batcher
    from .runtime.session import InferenceSession

__all__ = ["Batcher", "ConcurrentStep", "DeadlineExceeded", "Error", "InferenceSession",
           "ModelError", "Layer", "Model", "Stream", "StreamClosed", "StreamsFull", "backend",
           "from_keras", "from_torch", "load"]
__version__ = "0.1.0"

# public name -> the submodule that defines it (imported on first access)
_LAZY = {"InferenceSession": ".runtime.session", "Batcher": ".serving.batcher",
         "backend": ".runtime.backend"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
