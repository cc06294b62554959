"""ONNX -> layers: find the recurrent nodes, fold their weights, join exporter-made stacks.

* Every LSTM/GRU/RNN node of the default domain is a candidate, also inside If/Loop/Scan
  bodies. A node is named by ``node.name``, by its first output's name, or (when names repeat
  across subgraphs) by its qualified name ``outer::attribute::name``.
* Weight inputs (W, R, B, P) are folded to constants by ``onnx.fold.Folder``.
* Exporters write a multi-layer ``nn.LSTM`` as one node per layer joined by glue: layer k's Y
  ``[T, D, N, H]`` goes through ``Transpose(0,2,1,3)`` + ``Reshape(T, N, D*H)`` (or just
  ``Squeeze(1)`` when D=1) into layer k+1's X; the dynamo exporter with dynamic shapes computes
  that Reshape's target from ``Shape`` -> ``Slice`` -> ``Mul`` -> ``Concat``. ``_Glue`` follows
  the axes of Y symbolically through those operators, so two nodes are joined exactly when the
  next X is the previous Y with its (D, H) axes merged, whatever the exporter's spelling, and
  the tensors between them feed nothing else. Each chain is one candidate, loaded as a stack.
* ``batch_first`` is inferred from the first layer: ``layout=1`` or a ``Transpose`` that swaps
  batch and time in front of X (PyTorch's ``batch_first=True``) gives a batch-first model.

Runtime inputs (sequence_lens, initial_h, initial_c) are not part of the model: pass
``lengths=``/``state`` to ``Model.run``. A *constant* non-zero initial state or constant
sequence_lens would be silently lost, so it is refused.
"""
from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from ..errors import ModelError
from ..core.layers import Layer, check_stack
from ..core.files import open_regular
from ._chains import RECURRENT, link_chains
from ..onnx.fold import Folder, NotConstant, Scope, attrs, model_opset, node_label, subgraphs

if TYPE_CHECKING:
    import onnx



class Found:
    """One recurrent node and the graph it sits in."""

    def __init__(self, node: onnx.NodeProto, scope: Scope):
        self.node = node
        self.scope = scope
        self.kind = RECURRENT[node.op_type]
        self.name = node_label(node)
        self.qualname = "::".join(scope.path + (self.name,))

    def names(self) -> set:
        out = {self.name, self.qualname}
        if self.node.output and self.node.output[0]:
            out.add(self.node.output[0])
        return out


def load_onnx(source: Union[str, os.PathLike, onnx.ModelProto], node: Optional[str] = None, *,
              batch_first: Optional[bool] = None, chain: bool = True):
    """The recurrent part of an ONNX model -> (layers, batch_first), the layers checked to
    form one stack.

    ``node`` picks a recurrent node by name (required when there are several candidates);
    the layers are that node and, with ``chain=True``, the layers an exporter chained after
    it. ``batch_first`` overrides the layout inferred from the graph."""
    model, base_dir, where = read_model(source)
    folder = Folder(base_dir, model_opset(model))
    nodes = _chain(model, folder, where, node, chain)
    layers = [_layer(f, folder, where) for f in nodes]   # checks X and layout first
    widths = {(layer.hidden_size, layer.output_size) for layer in layers}
    if len(widths) > 1:
        # A valid graph, but not one stack: the state is one (L*D, N, Hout) array, so every
        # layer of a Model has the same width. Load the first node alone; the user can load
        # each of the others with node=.
        sizes = ", ".join(f"{f.name} {layer.hidden_size}" for f, layer in zip(nodes, layers))
        warnings.warn(f"{where}: the chained recurrent nodes have different hidden sizes "
                      f"({sizes}); loaded {nodes[0].qualname!r} alone (load the others with "
                      "node=<name>)", stacklevel=3)
        nodes, layers = nodes[:1], layers[:1]
    if batch_first is None:
        batch_first = _input_is_batch_first(nodes[0])
    try:
        check_stack(layers)
    except ModelError as e:
        raise ModelError(f"{where}: {_describe(nodes)}: {e}") from None
    return layers, bool(batch_first)


def recurrent_nodes(source: Union[str, os.PathLike, onnx.ModelProto]) -> list:
    """Every LSTM/GRU/RNN node (main graph and subgraphs, in graph order) as
    ``(node, chained)``: ``node.qualname`` is the name ``node=`` always accepts (``outer::
    attribute::name`` inside subgraphs) and ``chained`` lists the nodes an exporter chained
    after it, which ``node=`` loads too unless ``chain=False``."""
    model, base_dir, where = read_model(source)
    found = []
    _find_recurrent(Scope(model.graph, None, ()), found)
    following = link_chains(found, Folder(base_dir, model_opset(model)))
    out = []
    for f in found:
        chained, cur = [], f
        while cur in following and following[cur] not in chained and following[cur] is not f:
            cur = following[cur]
            chained.append(cur)
        out.append((f, chained))
    return out


def chain_nodes(source: Union[str, os.PathLike, onnx.ModelProto], node: Optional[str] = None,
                chain: bool = True) -> list:
    """The nodes ``load_onnx(source, node, chain=chain)`` loads, first layer first (each
    with ``.node``, the NodeProto, and ``.scope``, the graph it sits in)."""
    model, base_dir, where = read_model(source)
    return _chain(model, Folder(base_dir, model_opset(model)), where, node, chain)


def _chain(model, folder: Folder, where: str, node: Optional[str], chain: bool) -> list:
    found = []
    _find_recurrent(Scope(model.graph, None, ()), found)
    if not found:
        raise ModelError(f"{where}: no LSTM, GRU or RNN node found (searched the main graph "
                         "and every If/Loop/Scan body); an exporter that unrolls the "
                         "recurrence into MatMul/Tanh nodes leaves nothing to load here "
                         "(rnnengine.InferenceSession runs unrolled LSTM/GRU cells, such as "
                         "PyTorch's LSTMCell/GRUCell exports, on the kernels)")
    following = link_chains(found, folder)
    heads = [f for f in found if f not in set(following.values())]

    def stack_from(start):
        nodes = [start]
        while chain and nodes[-1] in following:
            if following[nodes[-1]] in nodes:   # only a malformed (cyclic) graph does this
                raise ModelError(f"{where}: recurrent nodes feed each other in a cycle: "
                                 + " -> ".join(f.name for f in nodes))
            nodes.append(following[nodes[-1]])
        return nodes

    if node is None:
        if not heads:
            raise ModelError(f"{where}: recurrent nodes feed each other in a cycle")
        if len(heads) > 1:
            listing = "\n  ".join(_describe(stack_from(h)) for h in heads)
            raise ModelError(f"{where}: {len(heads)} candidate recurrent models; pick one with "
                             f"node=<name>:\n  {listing}")
        start = heads[0]
    else:
        matches = [f for f in found if node in f.names()]
        if not matches:
            listing = "\n  ".join(f.qualname + f" ({f.node.op_type})" for f in found)
            raise ModelError(f"{where}: no LSTM/GRU/RNN node named {node!r}; the recurrent "
                             f"nodes are:\n  {listing}")
        if len(matches) > 1:
            listing = "\n  ".join(f.qualname for f in matches)
            raise ModelError(f"{where}: {node!r} names {len(matches)} recurrent nodes; use "
                             f"a qualified name:\n  {listing}")
        start = matches[0]
    nodes = stack_from(start)
    _check_no_cycle(nodes, where)
    return nodes


def _check_no_cycle(nodes: list, where: str) -> None:
    """ModelError when the first node's input X is computed from one of the nodes loaded
    with it. link_chains leaves such a back edge unlinked when its tensor is also a graph
    output, so the chain alone cannot show the cycle; the producers of X can."""
    head = nodes[0]
    members = {id(f.node) for f in nodes}
    pending, seen = [head.node.input[0]], set()
    while pending:
        name = pending.pop()
        if name in seen or name not in head.scope.producer:
            continue
        seen.add(name)
        producer = head.scope.producer[name][0]
        if id(producer) in members:
            raise ModelError(f"{where}: recurrent nodes feed each other in a cycle: input X of "
                             f"{head.qualname!r} is computed from the output of "
                             f"{node_label(producer)!r}")
        pending.extend(i for i in producer.input if i)


def read_model(source):
    """-> (ModelProto, folder for external data or None, name for messages)."""
    import onnx   # here, not at the top: importing rnnengine for .npz weights does not load it
    if isinstance(source, onnx.ModelProto):
        return source, None, "<onnx.ModelProto>"
    path = os.fspath(source)
    file, size = open_regular(path, "the model file")
    with file:
        data = file.read(size)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # google.protobuf DecodeError and friends
        raise ModelError(f"{path}: not an ONNX model (protobuf parse failed: {e})") from None
    if not model.HasField("graph"):
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    return model, os.path.dirname(os.path.abspath(path)), path


def _find_recurrent(scope: Scope, out: list) -> None:
    for node in scope.nodes:
        if node.domain in ("", "ai.onnx") and node.op_type in RECURRENT:
            out.append(Found(node, scope))
        for label, g in subgraphs(node):
            _find_recurrent(Scope(g, scope, scope.path + (f"{node_label(node)}::{label}",)),
                            out)


def _describe(nodes: list) -> str:
    first = nodes[0]
    if len(nodes) == 1:
        return f"{first.qualname} ({first.node.op_type})"
    return (f"{first.qualname} ({first.node.op_type}, {len(nodes)} layers: "
            + " -> ".join(f.name for f in nodes) + ")")


# --- one node -> one Layer ---------------------------------------------------------------

def _layer(found: Found, folder: Folder, where: str) -> Layer:
    layer = node_layer(found, folder, where)
    _check_runtime_inputs(found, folder, where)
    return layer


def node_layer(found: Found, folder: Folder, where: str) -> Layer:
    """The Layer of one recurrent node: its weights (W, R, B, P) folded to constants and its
    attributes decoded. The node's run-time inputs (X, sequence_lens, initial state) are
    not looked at (``InferenceSession`` feeds them from the graph)."""
    node, scope = found.node, found.scope
    a = attrs(node)
    here = f"{where}: node {found.qualname!r}"

    def weight(k: int, label: str, required: bool):
        name = node.input[k] if k < len(node.input) else ""
        if not name:
            if required:
                raise ModelError(f"{here}: input {label} is missing")
            return None
        try:
            value = folder.value(name, scope)
        except NotConstant as e:
            raise ModelError(f"{here}: input {label} ({name!r}) is not a constant: {e}") from None
        except ModelError as e:
            raise ModelError(f"{here}: input {label} ({name!r}): {e}") from None
        # float16/bfloat16/float8/float64 -> float32; anything else is not a weight
        if value.dtype.kind == "f" or value.dtype.name.startswith(("bfloat16", "float8")):
            return value.astype(np.float32)
        raise ModelError(f"{here}: input {label} ({name!r}) has dtype {value.dtype}; "
                         "expected a float tensor")

    if not node.input or not node.input[0]:
        raise ModelError(f"{here}: input X is missing")
    if a.get("layout", 0) not in (0, 1):
        raise ModelError(f"{here}: layout must be 0 or 1; got {a.get('layout')}")
    W = weight(1, "W", True)
    R = weight(2, "R", True)
    B = weight(3, "B", False)
    P = weight(7, "P", False) if found.kind == "lstm" else None
    try:
        return Layer.from_onnx(
            found.kind, W, R, B, P,
            direction=a.get("direction", b"forward"),
            hidden_size=a.get("hidden_size"),
            activations=a.get("activations"),
            activation_alpha=a.get("activation_alpha"),
            activation_beta=a.get("activation_beta"),
            clip=a.get("clip"),
            input_forget=a.get("input_forget", 0),
            linear_before_reset=a.get("linear_before_reset", 0))
    except ModelError as e:
        raise ModelError(f"{here}: {e}") from None


def _check_runtime_inputs(found: Found, folder: Folder, where: str) -> None:
    """``load`` returns only the layers: a constant sequence_lens or non-zero constant
    initial state would be silently lost, so it is refused."""
    node, scope = found.node, found.scope
    here = f"{where}: node {found.qualname!r}"
    for k, label in ((4, "sequence_lens"), (5, "initial_h"), (6, "initial_c")):
        if k >= len(node.input) or not node.input[k]:
            continue
        try:
            value = folder.value(node.input[k], scope)
        except NotConstant:
            continue  # a run-time input, as it should be
        except ModelError as e:
            raise ModelError(f"{here}: input {label} ({node.input[k]!r}): {e}") from None
        if label == "sequence_lens":
            raise ModelError(f"{here}: sequence_lens is a constant {value.tolist()}; the "
                             "engine takes lengths at run time (Model.run(lengths=...))")
        if np.any(value != 0):
            raise ModelError(f"{here}: {label} is a non-zero constant; the engine takes the "
                             "initial state at run time (Model.run(x, state))")


def _input_is_batch_first(found: Found) -> bool:
    """Follow X back through Transpose/Identity/Cast: is the tensor the user feeds (N, T, I)?"""
    layout = attrs(found.node).get("layout", 0)
    labels = ["N", "T", "I"] if layout else ["T", "N", "I"]
    name, scope = found.node.input[0], found.scope
    for _ in range(64):  # glue is short; a bound keeps a cyclic (malformed) graph harmless
        if name not in scope.producer:
            break
        producer = scope.producer[name][0]
        if producer.op_type == "Transpose":
            perm = attrs(producer).get("perm") or [2, 1, 0]
            if sorted(perm) != [0, 1, 2]:
                break
            source = [None] * 3
            for j, p in enumerate(perm):
                source[p] = labels[j]
            labels = source
        elif producer.op_type not in ("Identity", "Cast"):
            break
        name = producer.input[0]
    return labels.index("N") < labels.index("T")
