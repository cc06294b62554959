"""Constant folding for ONNX weight inputs: tensor reading and the small NumPy evaluator.

Exporters rarely hand a recurrent node its weights as plain initializers: PyTorch with
constant folding off writes ``initializer -> Slice x3 -> Concat -> Unsqueeze`` to reorder the
gates, silero-vad's branches take ``Constant -> Unsqueeze``, quantized models go through
``DequantizeLinear``. ``Folder.value(name, scope)`` evaluates such a chain with NumPy, keeping
each tensor's own dtype (float16 stays float16 through a Mul, as ONNX Runtime computes it) and
refusing anything that depends on a graph input or on an operator outside ``FOLD_OPS``.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError
from ._files import open_regular

# Expand / Tile / ConstantOfShape can turn a few bytes of file into any amount of memory;
# no recurrent weight is this large, so refuse before allocating.
MAX_FOLDED_ELEMENTS = 1 << 30


class NotConstant(Exception):
    """The value depends on something only known at run time (or that we cannot fold)."""


class Scope:
    """One graph (the main graph or an If/Loop/Scan body) and the scope it is nested in."""

    def __init__(self, graph: onnx.GraphProto, parent: Optional["Scope"], path: tuple):
        self.graph = graph
        self.parent = parent
        self.path = path                      # ("If_1::then_branch", ...) for messages
        self.initializers = {t.name: t for t in graph.initializer}
        self.sparse = {t.values.name for t in graph.sparse_initializer}
        # An initializer that is also listed as a graph input (IR < 4, or PyTorch's
        # keep_initializers_as_inputs) is a default a caller could override; weights are
        # always exported that way, so it is read as the constant it holds.
        self.inputs = {i.name for i in graph.input} - set(self.initializers)
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
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
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


def node_label(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else ''}>"


def attrs(node: onnx.NodeProto) -> dict:
    """An ONNX node's attributes as Python values, strings decoded (the one decoder: the
    loader, the folder and the backend all read attributes through it)."""
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

    def __init__(self, base_dir: Optional[str]):
        self.base_dir = base_dir
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
        if node.domain not in ("", "ai.onnx") or node.op_type not in FOLD_OPS:
            raise NotConstant(f"it is computed by {node.op_type} node {node_label(node)!r}, "
                              "which the loader does not fold")
        inputs = [self.value(n, scope) if n else None for n in node.input]
        node_attrs = attrs(node)
        if isinstance(node_attrs.get("value"), TensorProto):
            node_attrs["value"] = read_tensor(node_attrs["value"], self.base_dir)
        try:
            with np.errstate(all="ignore"):   # ONNX gives inf/nan, not warnings
                outs = FOLD_OPS[node.op_type](node, inputs, node_attrs)
        except (NotConstant, ModelError):
            raise
        except Exception as e:  # bad shapes/attributes inside the chain
            raise ModelError(f"cannot fold {node.op_type} node "
                             f"{node_label(node)!r}: {e}") from None
        outs = [np.asarray(o) for o in outs]
        for o in outs:
            if o.size > MAX_FOLDED_ELEMENTS:
                raise ModelError(f"{node.op_type} node {node_label(node)!r} "
                                 f"folds to {o.size} elements; refused")
        return outs


# --- the operators -----------------------------------------------------------------------
# Each takes (node, input arrays (None for an empty name), attributes) and returns the list
# of outputs. Attribute forms of older opsets (Squeeze axes, Slice starts, Split split) and
# input forms of newer ones are both accepted, whichever the node carries.

def _ints(a) -> list:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"shape/axes/index input must be integers; got dtype {a.dtype}")
    return [int(v) for v in a.reshape(-1)]


def _axes(node_attrs, inputs, k=1):
    if "axes" in node_attrs:
        return list(node_attrs["axes"])
    if len(inputs) > k and inputs[k] is not None:
        return _ints(inputs[k])
    return None


def _constant(node, inputs, a):
    if "value" in a:
        return [a["value"]]  # already read by Folder._evaluate (external data checked)
    if "value_float" in a:
        return [np.array(a["value_float"], np.float32)]
    if "value_floats" in a:
        return [np.array(a["value_floats"], np.float32)]
    if "value_int" in a:
        return [np.array(a["value_int"], np.int64)]
    if "value_ints" in a:
        return [np.array(a["value_ints"], np.int64)]
    raise NotConstant(f"Constant node {node_label(node)!r} holds no numeric value "
                      f"(attributes {sorted(a)})")


def _cast(node, inputs, a):
    return [inputs[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))]


def _squeeze(node, inputs, a):
    axes = _axes(a, inputs)
    x = inputs[0]
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(ax % x.ndim for ax in axes))]


def _unsqueeze(node, inputs, a):
    axes = _axes(a, inputs)
    x = inputs[0]
    rank = x.ndim + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = np.expand_dims(x, ax)
    return [x]


def _reshape(node, inputs, a):
    x, shape = inputs[0], _ints(inputs[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten(node, inputs, a):
    x = inputs[0]
    axis = a.get("axis", 1) % (x.ndim + 1) if x.ndim else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


def _slice(node, inputs, a):
    x = inputs[0]
    if "starts" in a:  # opset 1
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.ndim
        dim = x.shape[axis]
        if step == 0:
            raise ValueError("Slice step must not be 0")
        # ONNX clamps after adding dim to negatives; Python would read end=-1 as "last".
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[axis] = slice(start, None if end < 0 else end, step)
    return [x[tuple(index)]]


def _concat(node, inputs, a):
    return [np.concatenate([x for x in inputs if x is not None], axis=a["axis"])]


def _transpose(node, inputs, a):
    perm = a.get("perm")
    return [np.transpose(inputs[0], perm if perm else None)]


def _gather(node, inputs, a):
    return [np.take(inputs[0], inputs[1].astype(np.int64), axis=a.get("axis", 0))]


def _split(node, inputs, a):
    x = inputs[0]
    axis = a.get("axis", 0) % x.ndim
    if "split" in a:
        sizes = list(a["split"])
    elif len(inputs) > 1 and inputs[1] is not None:
        sizes = _ints(inputs[1])
    else:
        parts = a.get("num_outputs", len(node.output))
        chunk = -(-x.shape[axis] // parts)  # ceil: the last part is the smaller (opset 18)
        sizes = [min(chunk, x.shape[axis] - k * chunk) for k in range(parts)]
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f"split sizes {sizes} do not add up to dimension {x.shape[axis]}")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _binary(fn):
    def op(node, inputs, a):
        x, y = inputs[0], inputs[1]
        if x.dtype != y.dtype:
            raise ValueError(f"input types differ: {x.dtype} and {y.dtype}")
        if fn is np.divide and x.dtype.kind in "iu":
            return [(np.trunc(x / y)).astype(x.dtype)]  # ONNX integer Div truncates
        return [fn(x, y).astype(x.dtype)]
    return op


def _expand(node, inputs, a):
    shape = np.broadcast_shapes(inputs[0].shape, tuple(_ints(inputs[1])))
    if int(np.prod(shape)) > MAX_FOLDED_ELEMENTS:
        raise ModelError(f"Expand to {shape} is too large")
    return [np.array(np.broadcast_to(inputs[0], shape))]


def _tile(node, inputs, a):
    reps = _ints(inputs[1])
    if int(np.prod(inputs[0].shape, dtype=np.int64) * np.prod(reps)) > MAX_FOLDED_ELEMENTS:
        raise ModelError(f"Tile by {reps} is too large")
    return [np.tile(inputs[0], reps)]


def _constant_of_shape(node, inputs, a):
    shape = _ints(inputs[0])
    if int(np.prod(shape)) > MAX_FOLDED_ELEMENTS or min(shape, default=0) < 0:
        raise ModelError(f"ConstantOfShape {shape} is negative or too large")
    value = a["value"] if "value" in a else np.zeros(1, np.float32)
    return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]


def _shape(node, inputs, a):
    shape = np.array(inputs[0].shape, np.int64)
    return [shape[a.get("start", 0):a.get("end", None)]]


def _dequantize(node, inputs, a):
    x, scale = inputs[0], inputs[1]
    if x.dtype.kind not in "iu" or scale.dtype.kind != "f":
        raise ValueError(f"expects integer data and a float scale; got {x.dtype}, {scale.dtype}")
    zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros((), x.dtype)
    if a.get("block_size", 0):
        raise NotConstant("blocked DequantizeLinear is not folded")
    if scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[a.get("axis", 1) % x.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    y = (x.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
    return [y.astype(scale.dtype)]


FOLD_OPS = {
    "Constant": _constant,
    "Identity": lambda node, inputs, a: [inputs[0]],
    "Cast": _cast,
    "CastLike": lambda node, inputs, a: [inputs[0].astype(inputs[1].dtype)],
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Slice": _slice,
    "Concat": _concat,
    "Transpose": _transpose,
    "Gather": _gather,
    "Split": _split,
    "Mul": _binary(np.multiply),
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Div": _binary(np.divide),
    "Neg": lambda node, inputs, a: [np.negative(inputs[0])],
    "Expand": _expand,
    "Tile": _tile,
    "ConstantOfShape": _constant_of_shape,
    "Shape": _shape,
    "DequantizeLinear": _dequantize,
}
