"""The non-recurrent ONNX operators that rnnengine runs natively, in NumPy.

``NATIVE_OPS`` names the default-domain op types handled here; ``native_op(node, opset)``
decodes a node's attributes once and returns ``f(*inputs) -> tuple`` of output arrays, one per
node output up to the last one with a name (``None`` stands for an absent optional input).
Semantics and output dtypes follow ONNX (opsets 7..22) as ONNX Runtime implements them.
``native_op`` raises ``ModelError`` for attributes it cannot run (the caller may hand such a
node to ONNX Runtime instead); ``f`` raises ``ValueError`` naming the node for inputs that do
not fit. Outputs may be views of inputs (Reshape, Squeeze, Transpose, Slice, Expand...) or
constants shared between calls: never write into an output you did not allocate.

``fuse_chain(nodes, opset)`` runs a MatMul/Gemm (+ Add) (+ activation) head as one call;
``compiled_head`` runs it in C when its weights are constant; ``compiled_conv`` runs a 1-D
or 2-D Conv (+ Relu) with constant weights in C.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelError
from . import conv, elementwise, index, nn, reduce, shape, tensor
from ._common import Attrs, guard
from ._common import MAX_ELEMENTS, check_size, node_label  # noqa: F401  (for onnx/, runtime/)
from .conv import compiled_conv
from .fusion import compiled_head, fuse_chain

if TYPE_CHECKING:
    import onnx

_SPECS = {**elementwise.OPS, **shape.OPS, **tensor.OPS, **index.OPS, **nn.OPS, **conv.OPS,
          **reduce.OPS}
NATIVE_OPS = frozenset(_SPECS)

# Ops whose outputs may be their input itself, a view of it, or a constant shared between
# calls (read-only where NumPy allows). A caller that hands results to users, or writes in
# place, copies these first; every other op returns fresh arrays.
ALIASING_OPS = frozenset({
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand",
    "Constant", "Cast", "CastLike", "Slice", "Split", "Gather", "Pad", "Dropout", "Max", "Min", "Sum",
    "Mean", "Einsum", *(op for op in reduce.OPS if op.startswith("Reduce"))})

__all__ = ["ALIASING_OPS", "NATIVE_OPS", "native_op", "fuse_chain", "compiled_head",
           "compiled_conv"]


def _count(node, n: int, bounds: tuple, what: str, where: str):
    lo, hi = bounds
    if not lo <= n <= hi:
        want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi < 2**31 else f"at least {lo}"
        raise ModelError(f"{where}: takes {want} {what}; got {n}")


def native_op(node: onnx.NodeProto, opset: int):
    """The callable that runs ``node`` (default ONNX domain) at ``opset``."""
    a = Attrs(node)
    if node.domain not in ("", "ai.onnx"):
        a.fail(f"domain {node.domain!r} is not run natively")
    spec = _SPECS.get(node.op_type)
    if spec is None:
        a.fail("this operator is not run natively")
    # Trailing empty names are absent optional inputs/outputs; they do not count.
    n_in = len(node.input)
    while n_in and not node.input[n_in - 1]:
        n_in -= 1
    n_out = len(node.output)
    while n_out and not node.output[n_out - 1]:
        n_out -= 1
    _count(node, n_in, spec.inputs, "inputs", a.where)
    missing = [i for i in range(spec.inputs[0]) if not node.input[i]]
    if missing:
        a.fail(f"required input(s) {missing} are empty")
    _count(node, n_out, spec.outputs, "outputs", a.where)
    fn = spec.build(a, opset, n_in, n_out)
    unknown = a.unread()
    if unknown:
        a.fail(f"unknown or unsupported attribute(s) {', '.join(unknown)} at opset {opset}")
    return guard(fn, a.where)
