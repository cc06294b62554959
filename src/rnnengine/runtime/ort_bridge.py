"""Operators rnnengine does not run natively, run through ONNX Runtime (optional extra
``rnnengine[onnxruntime]``).

A Plan groups such nodes into maximal connected subgraphs (``graph.Plan._units``); each
group is cut out as a small ONNX model of its own (its nodes, the constants they read as
initializers, its free names as inputs, the names read outside it as outputs) and runs in
one single-threaded ``onnxruntime.InferenceSession``. The session is created at the first
run, typed by the dtypes it is fed (a new dtype combination gets its own session).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from ..onnx.fold import node_label


def require_onnxruntime(ops: List[str], where: str) -> None:
    """ModelError listing ``ops`` when onnxruntime cannot be imported."""
    try:
        import onnxruntime  # noqa: F401  (optional dependency, imported lazily)
    except ImportError:
        raise ModelError(
            f"{where}: these operators do not run natively in rnnengine and need ONNX "
            f"Runtime, which is not installed: {', '.join(sorted(set(ops)))} "
            "(pip install rnnengine[onnxruntime])") from None


class OrtGroup:
    """A connected group of nodes run by one ONNX Runtime session."""

    def __init__(self, nodes: list, inputs: List[str], outputs: List[str],
                 consts: Dict[str, np.ndarray], model: onnx.ModelProto, where: str):
        self.nodes = nodes
        self.inputs = inputs
        self.outputs = outputs
        self.consts = consts
        self.model = model
        self.where = where
        self.op_types = sorted({n.op_type for n in nodes})
        first = node_label(nodes[0])
        self.label = (f"ONNX Runtime group of {len(nodes)} node(s) from {first!r} "
                      f"({', '.join(self.op_types)})")
        self.sessions: dict = {}

    def _session(self, dtypes: tuple):
        import onnxruntime as ort  # optional dependency, checked at load
        graph = helper.make_graph(
            [n for n in self.nodes], "rnnengine_ort_group",
            [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dt), None)
             for name, dt in zip(self.inputs, dtypes)],
            [helper.make_value_info(name, onnx.TypeProto()) for name in self.outputs],
            [numpy_helper.from_array(np.asarray(value), name)
             for name, value in self.consts.items()])
        sub = helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                ir_version=self.model.ir_version)
        sub.functions.extend(self.model.functions)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(sub.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"{self.where}: ONNX Runtime cannot run the {self.label}: "
                             f"{e}") from None

    def run(self, *values) -> list:
        values = [np.asarray(x) for x in values]
        key = tuple(x.dtype for x in values)
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = self._session(key)
        return session.run(self.outputs, dict(zip(self.inputs, values)))
