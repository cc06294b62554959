"""rnnengine: a CPU inference engine for LSTM, GRU and plain RNN networks.

The compute core is a compiled extension; if it did not build, this import fails loudly
(there is no pure-Python fallback)."""
from ._kernels import CellKernel as _CellKernel  # noqa: F401  (fails loudly if not built)
from .errors import (ConcurrentStep, DeadlineExceeded, Error, ModelError, StreamClosed,
                     StreamsFull)
from .backend import backend  # noqa: E402  (the Backend class shadows the submodule name)
from .layers import Layer
from .model import Model
from .stream import Stream
from .loaders import from_keras, from_torch, load
from .batcher import Batcher
from .session import InferenceSession

__all__ = ["Batcher", "ConcurrentStep", "DeadlineExceeded", "Error", "InferenceSession",
           "ModelError", "Layer", "Model", "Stream", "StreamClosed", "StreamsFull", "backend",
           "from_keras", "from_torch", "load"]
__version__ = "0.1.0"
