"""Constant folding for ONNX weight inputs: tensor reading and the small NumPy evaluator.

Exporters rarely hand a recurrent node its weights as plain initializers: PyTorch with
constant folding off writes ``initializer -> Slice x3 -> Concat -> Unsqueeze`` to reorder the
gates, silero-vad's branches take ``Constant -> Unsqueeze``, quantized models go through
``DequantizeLinear``. ``Folder.value(name, scope)`` evaluates such a chain through the same
operator code the executor runs (``rnnengine.ops``), so a folded value is the value a run
computes; it refuses anything that depends on a graph input or on an operator that is not
run natively. The one thing folding does that no operator does is reading tensors: a
``Constant`` node's TensorProto (external data included) is read here (``fold_node``).
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import ModelError
from ..ops import MAX_ELEMENTS, NATIVE_OPS, native_op, node_label
from ..core.files import open_regular

if TYPE_CHECKING:
    import onnx
    from onnx import TensorProto

# onnx is imported in the functions below that need it, not at the top: importing it costs
# more than the rest of the package, and loading .npz weights never needs it.


class NotConstant(Exception):
    """The value depends on something only known at run time (or that we cannot fold)."""


class Scope:
    """One graph (the main graph or an If/Loop/Scan body) and the scope it is nested in."""

    def __init__(self, graph: onnx.GraphProto, parent: Optional["Scope"], path: tuple,
                 overridable: bool = False):
        self.graph = graph
        self.parent = parent
        self.path = path                      # ("If_1::then_branch", ...) for messages
        self.initializers = {t.name: t for t in graph.initializer}
        self.sparse = {t.values.name for t in graph.sparse_initializer}
        # An initializer that is also listed as a graph input (IR < 4, or PyTorch's
        # keep_initializers_as_inputs) is read as the constant it holds; with
        # ``overridable`` it is an input instead (a default the caller overrides, IR >= 4).
        self.inputs = {i.name for i in graph.input}
        if overridable:
            for name in self.inputs:
                self.initializers.pop(name, None)
        self.inputs -= set(self.initializers)
        self.outputs = {o.name for o in graph.output}
        # One list of node objects, used by everything that compares nodes by identity
        # (protobuf hands out a new wrapper object on each iteration of graph.node).
        self.nodes = list(graph.node)
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for k, out in enumerate(node.output):
                if out:
                    self.producer[out] = (node, k)
            for name in list(node.input) + sorted(subgraph_free_names(node)):
                if name:
                    self.consumers[name].append(node)

    def lookup(self, name: str):
        """-> (defining scope, what): what is ("node", node, k), ("init", tensor),
        ("input",) or ("sparse",); ("missing",) when no scope defines the name."""
        scope = self
        while scope is not None:
            if name in scope.producer:
                return scope, ("node",) + scope.producer[name]
            if name in scope.initializers:
                return scope, ("init", scope.initializers[name])
            if name in scope.sparse:
                return scope, ("sparse",)
            if name in scope.inputs:
                return scope, ("input",)
            scope = scope.parent
        return None, ("missing",)


def subgraphs(node: onnx.NodeProto):
    """(attribute label, graph) for every subgraph attribute of ``node``."""
    from onnx import AttributeProto
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for k, g in enumerate(attr.graphs):
                yield f"{attr.name}[{k}]", g


def subgraph_free_names(node: onnx.NodeProto) -> set:
    """Names a node's subgraphs read from enclosing scopes (its implicit inputs)."""
    free = set()
    for _, g in subgraphs(node):
        defined = {i.name for i in g.input} | {t.name for t in g.initializer}
        defined |= {t.values.name for t in g.sparse_initializer}
        for n in g.node:
            defined.update(n.output)
        for n in g.node:
            free.update(name for name in n.input if name and name not in defined)
            free.update(name for name in subgraph_free_names(n) if name not in defined)
    return free


def read_tensor(t: TensorProto, base_dir: Optional[str]) -> np.ndarray:
    """TensorProto -> ndarray in its own dtype (bfloat16 via ml_dtypes), reading external
    data from ``base_dir`` and refusing a location that leaves it."""
    from onnx import TensorProto, numpy_helper
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        raise ModelError(f"tensor {t.name!r} has type "
                         f"{TensorProto.DataType.Name(t.data_type)}, not a number type")
    if any(d < 0 for d in t.dims):
        # numpy would read a negative dimension as "infer it" and accept a lying shape.
        raise ModelError(f"tensor {t.name!r} declares negative dimensions {list(t.dims)}")
    if t.data_location == TensorProto.EXTERNAL:
        t = _inline_external(t, base_dir)
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # malformed protobuf content: wrong byte count, bad type code
        raise ModelError(f"cannot read tensor {t.name!r}: {e}") from None


def _inline_external(t: TensorProto, base_dir: Optional[str]) -> TensorProto:
    from onnx import TensorProto, helper
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise ModelError(f"tensor {t.name!r} keeps its data in external file "
                         f"{location!r}; load the model from a path so it can be found")
    base = os.path.realpath(base_dir)
    target = os.path.realpath(os.path.join(base, location))
    if not location or os.path.isabs(location) or os.path.commonpath([base, target]) != base:
        raise ModelError(f"tensor {t.name!r}: external data location {location!r} "
                         f"is outside the model's folder {base_dir!r}; refused")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelError(f"tensor {t.name!r}: bad external data offset/length "
                         f"{info}") from None
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    expected = int(np.prod(t.dims, dtype=np.int64)) * itemsize
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        expected = (int(np.prod(t.dims, dtype=np.int64)) + 1) // 2
    if length is not None and length != expected:
        raise ModelError(f"tensor {t.name!r}: external length {length} bytes but "
                         f"shape {list(t.dims)} needs {expected}")
    if offset < 0:
        raise ModelError(f"tensor {t.name!r}: external data offset {offset} is negative")
    try:
        file, size = open_regular(target, f"external data of tensor {t.name!r}")
        with file:
            if offset + expected > size:   # checked before reading anything
                raise ModelError(f"tensor {t.name!r}: external file {location!r} holds "
                                 f"{size} bytes; shape {list(t.dims)} needs {expected} at "
                                 f"offset {offset}")
            file.seek(offset)
            data = file.read(expected)
    except OSError as e:
        raise ModelError(f"tensor {t.name!r}: cannot read external data "
                         f"{location!r}: {e.strerror}") from None
    if len(data) != expected:
        raise ModelError(f"tensor {t.name!r}: external file {location!r} holds "
                         f"{len(data)} bytes at offset {offset}; shape {list(t.dims)} "
                         f"needs {expected}")
    inline = TensorProto()
    inline.CopyFrom(t)
    del inline.external_data[:]
    inline.data_location = TensorProto.DEFAULT
    inline.raw_data = data
    return inline


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def foldable(node: onnx.NodeProto) -> bool:
    """Whether ``fold_node`` can evaluate ``node`` (given constant inputs)."""
    return node.domain in ("", "ai.onnx") and node.op_type in NATIVE_OPS


def fold_node(node: onnx.NodeProto, inputs: list, opset: int,
              base_dir: Optional[str]) -> list:
    """The outputs of ``node`` on constant ``inputs`` (None for an absent one), computed by
    the operator the executor runs. Raises ModelError for attributes the operator refuses
    and ValueError for inputs that do not fit (as a run would); refuses an output over the
    operators' element budget."""
    value = next((a for a in node.attribute if a.name == "value"), None)
    if node.op_type == "Constant" and value is not None and value.type == value.TENSOR:
        # The operator reads inline tensors only; the folder also reads external data
        # (checked to stay inside the model's folder) and bfloat16.
        outs = [read_tensor(value.t, base_dir)]
    else:
        try:
            fn = native_op(node, opset)
        except ModelError as e:
            raise NotConstant(str(e)) from None
        with np.errstate(all="ignore"):   # ONNX gives inf/nan, not warnings
            outs = [np.asarray(o) for o in fn(*inputs)]
    for o in outs:
        if o.size > MAX_ELEMENTS:
            raise ModelError(f"{node.op_type} node {node_label(node)!r} folds to "
                             f"{o.size} elements; more than {MAX_ELEMENTS} is refused")
    return outs


def attrs(node: onnx.NodeProto) -> dict:
    """An ONNX node's attributes as Python values, strings decoded (the one decoder: the
    loader, the folder and the backend all read attributes through it)."""
    from onnx import helper
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


class Folder:
    """Evaluates constant tensors by name, memoised per defining scope. Errors name the
    tensor and the node; the caller adds the file and the recurrent node they feed."""

    def __init__(self, base_dir: Optional[str], opset: int):
        self.base_dir = base_dir
        self.opset = opset
        self.memo = {}
        self.active = set()   # keys being evaluated: meeting one again means a cycle

    def value(self, name: str, scope: Scope) -> np.ndarray:
        """The constant value of ``name`` as seen from ``scope``; raises NotConstant
        (with the reason) when it is not a compile-time constant."""
        owner, what = scope.lookup(name)
        key = (id(owner), name)
        if key in self.memo:
            if isinstance(self.memo[key], NotConstant):
                raise self.memo[key]
            return self.memo[key]
        if key in self.active:
            raise NotConstant(f"{name!r} depends on itself (a cycle in the graph)")
        self.active.add(key)
        try:
            return self._value(name, owner, what, key)
        except NotConstant as e:   # remembered too: a shared runtime tensor is walked once
            self.memo[key] = e
            raise
        finally:
            self.active.discard(key)

    def _value(self, name, owner, what, key) -> np.ndarray:
        if what[0] == "init":
            out = read_tensor(what[1], self.base_dir)
        elif what[0] == "node":
            node = what[1]
            outs = self._evaluate(node, owner)
            for k, o in enumerate(node.output):
                if o and k < len(outs):
                    self.memo[(id(owner), o)] = outs[k]
            if what[2] >= len(outs):
                raise NotConstant(f"output {what[2]} of {node.op_type} node "
                                  f"{node_label(node)!r} cannot be folded")
            return outs[what[2]]
        elif what[0] == "input":
            raise NotConstant(f"it depends on graph input {name!r}")
        elif what[0] == "sparse":
            raise NotConstant(f"it depends on sparse initializer {name!r} (unsupported)")
        else:
            raise NotConstant(f"no node, initializer or input defines {name!r}")
        self.memo[key] = out
        return out

    def _evaluate(self, node: onnx.NodeProto, scope: Scope) -> list:
        if not foldable(node):
            raise NotConstant(f"it is computed by {node.op_type} node {node_label(node)!r}, "
                              "which the loader does not fold")
        inputs = [self.value(n, scope) if n else None for n in node.input]
        try:
            return fold_node(node, inputs, self.opset, self.base_dir)
        except (NotConstant, ModelError):
            raise
        except Exception as e:  # bad shapes/attributes inside the chain
            raise ModelError(f"cannot fold {node.op_type} node "
                             f"{node_label(node)!r}: {e}") from None
