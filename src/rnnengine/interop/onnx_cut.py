"""A file's own recurrent node(s), cut out with what computes their weights, as an ONNX model
ONNX Runtime runs: the independent check of ``rnnengine verify``.

The cut keeps the chain of LSTM/GRU/RNN nodes ``rnnengine.load`` would load (wherever they
sit: the main graph or an If/Loop/Scan body), the glue an exporter put between its layers,
and every node and initializer their weights (W, R, B, P) are computed from, taken from the
node's own graph or the graphs around it. What varies at run time becomes an input of the
cut fed with the caller's values: X of the first node, each node's initial_h/initial_c and
sequence_lens, whatever the file computes them from (a graph input such as a streaming
model's ``state``, a branch's own Slice of it, zeros). So ONNX Runtime evaluates the weight
chains itself, independently of rnnengine's folding, and runs its own kernels on them.
"""
from __future__ import annotations

from typing import List

import onnx
from onnx import TensorProto, helper

from ..onnx.fold import subgraphs
from . import Unsupported

STATE_SLOTS = {4: "sequence_lens", 5: "initial_h", 6: "initial_c"}


class Cut:
    """``model``: the cut as a ModelProto. ``x``: the name of its input X; ``states[k]``:
    {slot: input name} of layer k (slot 4, 5, 6 as in the ONNX node); ``y``: the last layer's
    Y; ``finals[k]``: (Y_h name, Y_c name or None) of layer k."""

    def __init__(self, model, x: str, states: list, y: str, finals: list):
        self.model, self.x, self.states, self.y, self.finals = model, x, states, y, finals


def cut_chain(proto: onnx.ModelProto, chain: list) -> Cut:
    """``chain``: the loader's nodes (``loaders.onnx.chain_nodes``), first layer first."""
    for f in chain:
        if any(a.name == "layout" and a.i == 1 for a in f.node.attribute):
            raise Unsupported("onnxruntime rejects layout=1")
    nodes: List[onnx.NodeProto] = []
    copies = []
    for k, f in enumerate(chain):   # copies whose missing outputs get names of our own
        node = onnx.NodeProto()
        node.CopyFrom(f.node)
        wanted = 3 if f.node.op_type == "LSTM" else 2
        while len(node.output) < wanted:
            node.output.append("")
        for i in range(wanted):
            if not node.output[i]:
                node.output[i] = f"rnnengine_verify_{k}_{i}"
        copies.append(node)
    x = chain[0].node.input[0]
    cut_names = {x}
    states = []
    for f in chain:
        slots = {i: f.node.input[i] for i in STATE_SLOTS
                 if len(f.node.input) > i and f.node.input[i]}
        states.append(slots)
        cut_names |= set(slots.values())
    produced = {out for c in copies for out in c.output}
    inits, seen = {}, set()

    def need(name: str, scope) -> None:
        if not name or name in cut_names or name in produced or name in inits:
            return
        where, what = scope.lookup(name)
        if what[0] == "init":
            inits[name] = what[1]
        elif what[0] == "node":
            node = what[1]
            if id(node) in seen:
                return
            seen.add(id(node))
            if any(True for _ in subgraphs(node)):
                raise Unsupported(f"{node.op_type} {node.name!r} computes a weight through a "
                                  "subgraph")
            for i in node.input:
                need(i, where)
            nodes.append(node)
        elif what[0] == "input":
            raise Unsupported(f"the weights or the glue between layers read the graph input "
                              f"{name!r}")
        else:
            raise Unsupported(f"tensor {name!r} is {what[0]}")

    for k, f in enumerate(chain):
        for i, name in enumerate(f.node.input):
            if i == 0 and k == 0 or i in STATE_SLOTS:
                continue
            need(name, f.scope)
        nodes.append(copies[k])
    finals = [(c.output[1], c.output[2] if c.op_type == "LSTM" else None) for c in copies]
    inputs = [helper.make_tensor_value_info(x, _elem_type(proto, x), None)]
    for slots in states:
        for i, name in slots.items():
            if name not in {v.name for v in inputs}:
                elem = TensorProto.INT32 if i == 4 else _elem_type(proto, name)
                inputs.append(helper.make_tensor_value_info(name, elem, None))
    outputs = [copies[-1].output[0]] + [n for pair in finals for n in pair if n]
    graph = helper.make_graph(
        nodes, "rnnengine_verify", inputs,
        [helper.make_tensor_value_info(o, _elem_type(proto, x), None) for o in outputs],
        list(inits.values()))
    model = helper.make_model(graph, opset_imports=proto.opset_import)
    model.ir_version = proto.ir_version
    return Cut(model, x, states, copies[-1].output[0], finals)


def _elem_type(proto: onnx.ModelProto, name: str) -> int:
    """The recorded element type of ``name`` anywhere in the file, float if unrecorded."""
    def walk(graph):
        for v in list(graph.input) + list(graph.value_info) + list(graph.output):
            if v.name == name and v.type.tensor_type.elem_type:
                return v.type.tensor_type.elem_type
        for node in graph.node:
            for _, g in subgraphs(node):
                found = walk(g)
                if found:
                    return found
        return None

    return walk(proto.graph) or TensorProto.FLOAT
