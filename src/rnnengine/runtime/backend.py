"""``rnnengine.backend``: an ``onnx.backend.base.Backend`` for graphs whose compute nodes are
LSTM, GRU and RNN, returning exactly the ONNX node outputs (Y, Y_h, Y_c).

Weights may be graph inputs (given to ``run``) or initializers; Constant and Identity nodes are
allowed around the recurrent nodes. Each recurrent node runs through ``Model.run``; the
conversion between the ONNX tensor layouts and the engine's PyTorch-style shapes is here.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from ..errors import ModelError
from ..core.layers import Layer
from ..onnx.fold import attrs as node_attributes
from .model import Model

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
PASS_THROUGH_OPS = ("Constant", "Identity")
_ONNX_ATTRIBUTES = ("activations", "activation_alpha", "activation_beta", "clip",
                    "direction", "hidden_size", "input_forget", "linear_before_reset")


def run_recurrent_node(op: str, inputs: Sequence, attrs: Dict[str, Any]):
    """Run one ONNX LSTM/GRU/RNN node on NumPy inputs ``[X, W, R, B, sequence_lens, initial_h,
    initial_c, P]`` (None where absent); returns the outputs ``(Y, Y_h[, Y_c])`` in ONNX layout
    and X's dtype."""
    inputs = list(inputs) + [None] * (8 - len(inputs))
    X, W, R, B, seq_lens, init_h, init_c, P = inputs[:8]
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise ModelError(f"{op}: layout must be 0 or 1; got {layout}")
    unknown = set(attrs) - set(_ONNX_ATTRIBUTES) - {"layout", "output_sequence"}
    if unknown:
        raise ModelError(f"{op}: unsupported attribute(s) {sorted(unknown)}")
    kwargs = {k: attrs[k] for k in _ONNX_ATTRIBUTES if k in attrs}
    layer = Layer.from_onnx(op.lower(), W, R, B, P if op == "LSTM" else None, **kwargs)
    model = Model([layer], batch_first=bool(layout))
    D, H = layer.num_directions, layer.hidden_size

    def state_in(s):
        if s is None:
            return None
        s = np.asarray(s)
        return s.transpose(1, 0, 2) if layout else s

    state = None
    if op == "LSTM" and (init_h is not None or init_c is not None):
        N = X.shape[0] if layout else X.shape[1]
        zeros = np.zeros((D, N, H), np.float32)
        state = (zeros if init_h is None else state_in(init_h),
                 zeros if init_c is None else state_in(init_c))
    elif init_h is not None:
        state = state_in(init_h)
    lengths = None if seq_lens is None else np.asarray(seq_lens).astype(np.int64)
    y, final = model.run(X, state, lengths)
    finals = final if isinstance(final, tuple) else (final,)
    dtype = np.asarray(X).dtype
    if layout:
        Y = y.reshape(y.shape[0], y.shape[1], D, H)                 # [N, T, D, H]
        outs = [f.transpose(1, 0, 2) for f in finals]                # [N, D, H]
    else:
        Y = y.reshape(y.shape[0], y.shape[1], D, H).transpose(0, 2, 1, 3)   # [T, D, N, H]
        outs = list(finals)
    return tuple(np.ascontiguousarray(a).astype(dtype, copy=False) for a in [Y] + outs)


class RnnEngineRep(BackendRep):
    """A prepared graph: its nodes in order, initializers already converted."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        for node in graph.node:
            if node.op_type not in RECURRENT_OPS + PASS_THROUGH_OPS or node.domain not in ("", "ai.onnx"):
                raise ModelError(f"rnnengine.backend runs LSTM/GRU/RNN graphs only; node "
                                 f"{node.name or node.op_type!r} is {node.op_type}")
        self._graph = graph
        self._constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self._inputs = [i.name for i in graph.input if i.name not in self._constants]

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            values = dict(inputs)
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            if len(inputs) > len(self._inputs):
                raise ValueError(f"the graph takes {len(self._inputs)} inputs "
                                 f"{self._inputs}; got {len(inputs)}")
            values = dict(zip(self._inputs, inputs))
        values = {**self._constants, **{k: np.asarray(v) for k, v in values.items()}}
        for node in self._graph.node:
            attrs = node_attributes(node)
            if node.op_type == "Constant":
                values[node.output[0]] = numpy_helper.to_array(attrs["value"]) \
                    if "value" in attrs else np.asarray(next(iter(attrs.values())))
                continue
            args = [values[name] if name else None for name in node.input]
            if node.op_type == "Identity":
                outs = (args[0],)
            else:
                outs = run_recurrent_node(node.op_type, args, attrs)
            for name, value in zip(node.output, outs):
                if name:
                    values[name] = value
        return tuple(values[o.name] for o in self._graph.output)


class RnnEngineBackend(Backend):
    """``prepare(model).run(inputs)`` as for any ONNX backend; CPU only."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> RnnEngineRep:
        super().prepare(model, device, **kwargs)
        return RnnEngineRep(model)

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        if node.op_type not in RECURRENT_OPS:
            raise ModelError(f"rnnengine.backend runs LSTM/GRU/RNN nodes only; got {node.op_type}")
        args = [inputs[i] if name and i < len(inputs) else None
                for i, name in enumerate(node.input)]
        return run_recurrent_node(node.op_type, args, node_attributes(node))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")


backend = RnnEngineBackend

# ``rnnengine.backend`` is the class above, bound when first read. Importing this submodule by
# name (``from rnnengine.backend import ...`` before that) makes the package attribute the
# module instead, so the module answers the same calls.
prepare = RnnEngineBackend.prepare
run_model = RnnEngineBackend.run_model
run_node = RnnEngineBackend.run_node
supports_device = RnnEngineBackend.supports_device
