"""What every operator family shares: the registration decorator, attribute decoding (done once
per node, at plan time) and the call-time guard that turns NumPy's complaints about inputs into
a ValueError naming the node and the inputs.

A builder has the signature ``build(a: Attrs, opset: int, n_in: int, n_out: int) -> fn``;
``fn(*inputs)`` returns a tuple of arrays, one per node output. Builders read every attribute
they accept through ``a`` (so an attribute nobody read is reported as unknown) and raise
``ModelError`` through ``a.fail`` for values they cannot run.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Callable, Dict, NamedTuple

import numpy as np

from ..errors import ModelError

if TYPE_CHECKING:
    import onnx

# onnx is imported inside the functions that read protos: importing it (and the ml_dtypes it
# pulls in) costs more than the rest of the package, and a user of .npz weights never needs it.


# ``out=ARRAY`` makes a ufunc return a 0-d ndarray rather than a NumPy scalar (NumPy >= 2.3
# accepts out=...). Older NumPy has no such switch: there ``guard`` converts scalar results.
ARRAY = ... if np.lib.NumpyVersion(np.__version__) >= "2.3.0" else None


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or a description that finds it when it has none (for messages)."""
    return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else ''}>"


class Spec(NamedTuple):
    build: Callable
    inputs: tuple    # (fewest, most) node inputs, trailing absent ones included
    outputs: tuple   # (fewest, most) node outputs


def registrar(table: Dict[str, Spec]):
    """A decorator factory that files builders in a family's ``table`` under op names."""
    def op(*names: str, inputs=(1, 1), outputs=(1, 1)):
        def file(build):
            for name in names:
                table[name] = Spec(build, inputs, outputs)
            return build
        return file
    return op


@functools.lru_cache(maxsize=None)
def _np_types() -> dict:
    """NumPy dtypes of the ONNX tensor types the native ops handle (strings, bfloat16 and the
    float8/int4 families are left to ONNX Runtime)."""
    from onnx import TensorProto
    return {
        TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
        TensorProto.FLOAT16: np.float16, TensorProto.BOOL: np.bool_,
        TensorProto.INT8: np.int8, TensorProto.INT16: np.int16,
        TensorProto.INT32: np.int32, TensorProto.INT64: np.int64,
        TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16,
        TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64,
    }


class Attrs:
    """A node's attributes decoded once; typed getters raise ModelError naming the node."""

    def __init__(self, node: onnx.NodeProto):
        self.node = node
        self.where = f"{node.op_type} node {node_label(node)!r}"
        self.raw = {a.name: a for a in node.attribute}
        self.read = set()

    def fail(self, reason: str):
        raise ModelError(f"{self.where}: {reason}")

    def has(self, name: str) -> bool:
        return name in self.raw

    def _get(self, name, kinds, default, required):
        """``kinds``: the accepted ``AttributeProto`` type names ("INT", "FLOATS", ...)."""
        from onnx import AttributeProto, helper
        a = self.raw.get(name)
        self.read.add(name)
        if a is None:
            if required:
                self.fail(f"attribute {name!r} is required")
            return default
        if a.type not in [AttributeProto.AttributeType.Value(k) for k in kinds]:
            want = " or ".join(kinds)
            got = AttributeProto.AttributeType.Name(a.type)
            self.fail(f"attribute {name!r} must be {want}; got {got}")
        return helper.get_attribute_value(a)

    def int(self, name, default=None, required=False):
        return self._get(name, ("INT",), default, required)

    def float(self, name, default=None, required=False):
        return self._get(name, ("FLOAT",), default, required)

    def ints(self, name, default=None, required=False):
        v = self._get(name, ("INTS",), default, required)
        return None if v is None else [int(i) for i in v]

    def floats(self, name, default=None, required=False):
        v = self._get(name, ("FLOATS",), default, required)
        return None if v is None else [float(f) for f in v]

    def str(self, name, default=None, required=False):
        v = self._get(name, ("STRING",), default, required)
        return v.decode() if isinstance(v, bytes) else v

    def choice(self, name, options, default):
        v = self.str(name, default)
        if v not in options:
            self.fail(f"attribute {name!r} must be one of {', '.join(options)}; got {v!r}")
        return v

    def flag(self, name, default=0):
        v = self.int(name, default)
        if v not in (0, 1):
            self.fail(f"attribute {name!r} must be 0 or 1; got {v}")
        return v

    def tensor(self, name):
        from onnx import TensorProto, numpy_helper
        t = self._get(name, ("TENSOR",), None, False)
        if t is None:
            return None
        if t.data_type not in _np_types():
            self.fail(f"attribute {name!r} holds a {type_name(t.data_type)} tensor, "
                      "which the native ops do not handle")
        if t.data_location == TensorProto.EXTERNAL:
            self.fail(f"attribute {name!r} refers to external data, which is not read here")
        try:
            return numpy_helper.to_array(t)
        except Exception as e:   # malformed tensor protos fail in many ways inside onnx
            self.fail(f"attribute {name!r} holds a malformed tensor: {type(e).__name__}: {e}")

    def dtype(self, name, required=True, default=None):
        """A TensorProto element type attribute (Cast's ``to``) as a NumPy dtype."""
        code = self.int(name, default, required)
        if code not in _np_types():
            self.fail(f"attribute {name!r}: element type {type_name(code)} is not handled "
                      "natively")
        return np.dtype(_np_types()[code])

    def inputs_before(self, opset, since, n_in, most):
        """Before opset ``since`` the op took at most ``most`` inputs (the rest were
        attributes then)."""
        if opset < since and n_in > most:
            self.fail(f"takes at most {most} input(s) before opset {since}; got {n_in} at "
                      f"opset {opset}")

    def unread(self) -> list:
        return sorted(set(self.raw) - self.read)


def type_name(code) -> str:
    from onnx import TensorProto
    try:
        return TensorProto.DataType.Name(code)
    except ValueError:
        return f"type code {code}"


def frozen(a: np.ndarray) -> np.ndarray:
    """A constant handed out on every call: read-only, so a consumer that writes in place
    fails loudly instead of changing the next call's value."""
    a = np.array(a, order="C")   # a private copy (ascontiguousarray would make 0-d 1-d)
    a.flags.writeable = False
    return a


def describe(inputs) -> str:
    return ", ".join("absent" if x is None else
                     f"{getattr(x, 'dtype', type(x).__name__)}{tuple(np.shape(x))}"
                     for x in inputs)


def guard(fn, where: str):
    """``fn`` with NumPy's input errors re-raised as a ValueError naming the node and the
    shapes and dtypes it was given. The wrapper is the only per-call cost it adds."""
    def run(*inputs):
        try:
            return fn(*inputs)
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"{where}: inputs ({describe(inputs)}) do not fit: {e}") from None

    if ARRAY is None:
        def run_old_numpy(*inputs):
            return tuple(np.asarray(y) for y in run(*inputs))
        return run_old_numpy
    return run


def ints_of(x, what: str) -> list:
    """A 1-D (or scalar) integer tensor input (axes, shape, pads, repeats) as Python ints."""
    if x.ndim == 1 and x.dtype.kind in "iu":   # the usual case, first: it runs every step
        return x.tolist()
    if x.dtype.kind not in "iu":
        raise ValueError(f"input {what} must be an integer tensor; got {x.dtype}")
    if x.ndim > 1:
        raise ValueError(f"input {what} must be 1-D; got shape {x.shape}")
    return [int(x)]


# THE allocation budget of the executor: the most elements one value may hold, checked
# before anything is allocated by every operator whose output can outgrow its inputs (shape-
# like inputs: ConstantOfShape, Tile, Range, Pad, OneHot, Expand; broadcasting; Gather,
# Einsum, Concat; Conv and pool gathers), by folding at load and by Loop's stacked and
# carried values. 2**28 elements: 1 GiB of float32. A hostile or broken graph then ends in a
# ValueError naming the node instead of exhausting memory.
MAX_ELEMENTS = 2**28


def check_size(shape, what: str, itemsize: int = 4):
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise ValueError(f"{what} of shape {tuple(shape)} would allocate {n:,} elements "
                         f"({n * itemsize / 2**30:.3g} GiB); the limit is {MAX_ELEMENTS:,} "
                         "elements: refused")


def check_broadcast(*xs, what: str = "the broadcast output"):
    """The budget for an elementwise op's output: only when shapes differ (equal shapes
    give an output the size of an input that already exists)."""
    shape = np.broadcast_shapes(*(x.shape for x in xs))
    check_size(shape, what, max(x.itemsize for x in xs))


def scalar_of(x, what: str):
    if x.size != 1:
        raise ValueError(f"input {what} must hold one value; got shape {x.shape}")
    return x.reshape(-1)[0]


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def same_dtype(a, b, what="B"):
    if a.dtype != b.dtype:
        raise ValueError(f"input {what} must have the dtype of A ({a.dtype}); got {b.dtype}")
