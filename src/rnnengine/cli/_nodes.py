"""The recurrent nodes of an ONNX file as ``rnnengine info`` lists them: the loader's own
names (what ``--node`` takes), the chains an exporter made of them, and, for nodes inside
``If`` branches, when each branch runs if the condition is computed from graph inputs."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from ..onnx.fold import attrs, node_label, subgraphs
from ..loaders.onnx import recurrent_nodes

# op -> how its inputs print; a condition built from anything else is not described
_FORMATS = {
    "Shape": "shape({0})", "Size": "size({0})", "Gather": "{0}[{1}]", "Not": "not {0}",
    "Equal": "{0} == {1}", "Greater": "{0} > {1}", "Less": "{0} < {1}",
    "GreaterOrEqual": "{0} >= {1}", "LessOrEqual": "{0} <= {1}",
    "And": "({0} and {1})", "Or": "({0} or {1})",
    "Squeeze": "{0}", "Unsqueeze": "{0}", "Identity": "{0}", "Reshape": "{0}",
}


def node_lines(path: str) -> List[str]:
    """One line per recurrent node (op, the name --node takes, its chain), then one line per
    If that holds some, saying which branch is which. [] for a file that is not ONNX."""
    try:
        nodes = recurrent_nodes(path)
    except ModelError:
        return []
    chained_after = {id(c): head for head, chain in nodes for c in chain}
    lines = []
    for f, chain in nodes:
        line = f"{f.node.op_type:4s} {f.qualname}"
        if chain:
            line += (f"   chain of {len(chain) + 1} layers: --node loads the {len(chain)} "
                     "after it too (--no-chain, or load(..., chain=False), loads it alone)")
        elif id(f) in chained_after:
            line += f"   (a later layer of the chain from {chained_after[id(f)].qualname})"
        lines.append(line)
    ifs = sorted({part for f, _ in nodes for part in f.qualname.split("::")[:-1:2]})
    if ifs:
        proto = onnx.load(path, load_external_data=False)
        for label in ifs:
            text = _branches(proto, label)
            if text:
                lines.append(text)
    return lines


def _branches(proto: onnx.ModelProto, label: str) -> Optional[str]:
    graphs = list(_graphs(proto.graph))
    producers = {out: n for g in graphs for n in g.node for out in n.output if out}
    inits = {t.name: t for g in graphs for t in g.initializer}
    inputs = {i.name for i in proto.graph.input} - set(inits)
    node = next((n for g in graphs for n in g.node
                 if n.op_type == "If" and node_label(n) == label), None)
    if node is None or not node.input:
        return None
    seen_inputs: set = set()
    cond = _render(node.input[0], producers, inits, inputs, seen_inputs, 0)
    if cond is None or not seen_inputs:
        return f"If {label!r}: its condition is computed inside the graph"
    return (f"If {label!r}: then_branch runs when {cond} is true, else_branch otherwise "
            f"(from the input{'s' if len(seen_inputs) > 1 else ''} "
            f"{', '.join(sorted(seen_inputs))})")


def _graphs(graph):
    yield graph
    for n in graph.node:
        for _, g in subgraphs(n):
            yield from _graphs(g)


def _render(name: str, producers: Dict, inits: Dict, inputs: set, seen: set, depth: int):
    if depth > 16:
        return None
    if name in inputs:
        seen.add(name)
        return name
    if name in inits:
        return _literal(numpy_helper.to_array(inits[name]))
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        a = node.attribute[0] if node.attribute else None
        value = None if a is None else helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        return None if value is None else _literal(np.asarray(value))
    if node.op_type == "Cast":
        inner = _render(node.input[0], producers, inits, inputs, seen, depth + 1)
        is_bool = attrs(node).get("to") == onnx.TensorProto.BOOL
        return None if inner is None else (f"bool({inner})" if is_bool else inner)
    fmt = _FORMATS.get(node.op_type)
    if fmt is None or (node.op_type == "Shape" and attrs(node)):
        return None
    needed = 2 if "{1}" in fmt else 1
    parts = [_render(i, producers, inits, inputs, seen, depth + 1) for i in node.input[:needed]]
    if len(parts) < needed or any(p is None for p in parts):
        return None
    return fmt.format(*parts)


def _literal(a: np.ndarray) -> Optional[str]:
    if a.size > 4:
        return None
    return str(a.reshape(-1)[0].item()) if a.size == 1 else str(a.reshape(-1).tolist())
