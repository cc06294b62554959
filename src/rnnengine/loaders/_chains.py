"""Chains of recurrent nodes: which node an exporter chained after which (loaders/onnx.py).

Exporters write a multi-layer ``nn.LSTM`` as one node per layer joined by glue: layer k's Y
``[T, D, N, H]`` goes through ``Transpose(0,2,1,3)`` + ``Reshape(T, N, D*H)`` (or just
``Squeeze(1)`` when D=1) into layer k+1's X, sometimes with the Reshape's target computed
from ``Shape`` -> ``Slice`` -> ``Mul`` -> ``Concat``. ``_Glue`` follows the axes of Y
symbolically through those operators, so two nodes are joined exactly when the next X is the
previous Y with its (D, H) axes merged, whatever the exporter's spelling.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..core.layers import GATES
from ..onnx.fold import Folder, NotConstant, Scope, attrs, fold_node

RECURRENT = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


class _NotGlue(Exception):
    pass


class _Lab:
    """A data tensor between two recurrent nodes: each axis is the tuple of Y's axes
    ("T", "N", "D", "H") merged into it, outermost first."""

    def __init__(self, axes):
        self.axes = [tuple(ax) for ax in axes]


class _Sym:
    """An integer vector (or scalar) computed from a _Lab's shape. Each entry is
    (known factor, sorted tuple of unknown axes) standing for their product."""

    def __init__(self, entries, scalar=False):
        self.entries = list(entries)
        self.scalar = scalar


class _Glue:
    """Evaluates X of a recurrent node as a function of some earlier node's Y."""

    OPS = ("Identity", "Cast", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Shape",
           "Slice", "Gather", "Concat", "Mul")

    def __init__(self, folder: Folder, scope: Scope):
        self.folder = folder
        self.scope = scope
        self.origin = None          # the node whose Y the value comes from
        self.sizes = {}             # "D", "H" and any bound "T"/"N" -> size
        self.nodes = set()          # glue nodes visited (by id)
        self.lab_names = set()      # tensors holding (parts of) Y's data
        self.memo = {}              # name -> value (a tensor read by Shape and Reshape, ...)

    def value(self, name: str, depth: int = 0):
        if name not in self.memo:
            if depth > 64:
                raise _NotGlue
            try:
                self.memo[name] = self._value(name, depth)
            except _NotGlue:
                self.memo[name] = None
        if self.memo[name] is None:
            raise _NotGlue
        return self.memo[name]

    def _value(self, name: str, depth: int):
        owner, what = self.scope.lookup(name)
        if owner is self.scope and what[0] == "node":
            node, k = what[1], what[2]
            if node.op_type in RECURRENT and node.domain in ("", "ai.onnx") and k == 0:
                return self._origin(node, name)
            if node.op_type in self.OPS:
                try:
                    return self.folder.value(name, self.scope)
                except (NotConstant, ModelError):
                    pass
                inputs = [self.value(i, depth + 1) if i else None for i in node.input]
                self.nodes.add(id(node))
                out = getattr(self, "_" + node.op_type.lower())(inputs, attrs(node))
                if isinstance(out, _Lab):
                    self.lab_names.add(name)
                return out
        try:
            return self.folder.value(name, self.scope)
        except (NotConstant, ModelError):
            raise _NotGlue from None

    def _origin(self, node, name):
        if self.origin is not None and self.origin is not node:
            raise _NotGlue
        self.origin = node
        self.lab_names.add(name)
        a = attrs(node)
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        hidden = a.get("hidden_size")
        if hidden is None:
            try:
                hidden = self.folder.value(node.input[1], self.scope).shape[1] // GATES[
                    RECURRENT[node.op_type]]
            except (NotConstant, ModelError, IndexError):
                raise _NotGlue from None
        self.sizes = {"D": _DIRECTIONS.get(direction, 0), "H": int(hidden)}
        if a.get("layout", 0):
            return _Lab([("N",), ("T",), ("D",), ("H",)])
        return _Lab([("T",), ("D",), ("N",), ("H",)])

    # helpers
    def _size(self, atom):
        return self.sizes.get(atom)

    def _strip(self, axis):
        """Drop D or H when it is 1: a unit axis does not move data."""
        return tuple(atom for atom in axis if atom not in self.sizes or self.sizes[atom] != 1
                     or atom in ("T", "N"))

    def _dim(self, axis):
        factor, unknown = 1, []
        for atom in axis:
            size = self._size(atom)
            if size is None:
                unknown.append(atom)
            else:
                factor *= size
        return factor, tuple(sorted(unknown))

    def _entries(self, v):
        """A constant int array or a _Sym -> list of (factor, unknowns)."""
        if isinstance(v, _Sym):
            return v.entries
        if isinstance(v, np.ndarray) and v.dtype.kind in "iu" and v.ndim <= 1:
            return [(int(x), ()) for x in v.reshape(-1)]
        raise _NotGlue

    # operators
    def _identity(self, inputs, a):
        return inputs[0]

    _cast = _identity

    def _transpose(self, inputs, a):
        x = inputs[0]
        if not isinstance(x, _Lab):
            raise _NotGlue
        perm = a.get("perm") or list(range(len(x.axes)))[::-1]
        if sorted(perm) != list(range(len(x.axes))):
            raise _NotGlue
        return _Lab([x.axes[p] for p in perm])

    def _axes_arg(self, inputs, a):
        if "axes" in a:
            return list(a["axes"])
        if len(inputs) > 1 and inputs[1] is not None:
            return [e[0] for e in self._entries(inputs[1]) if not e[1]]
        return None

    def _squeeze(self, inputs, a):
        x, axes = inputs[0], self._axes_arg(inputs, a)
        if isinstance(x, _Sym):
            if x.scalar or len(x.entries) != 1:
                raise _NotGlue
            return _Sym(x.entries, scalar=True)
        if not isinstance(x, _Lab):
            raise _NotGlue
        rank = len(x.axes)
        if axes is None:
            axes = [k for k, ax in enumerate(x.axes) if self._dim(ax) == (1, ())]
        axes = {ax % rank for ax in axes}
        if any(self._dim(x.axes[k]) != (1, ()) for k in axes):
            raise _NotGlue
        return _Lab([ax for k, ax in enumerate(x.axes) if k not in axes])

    def _unsqueeze(self, inputs, a):
        x, axes = inputs[0], self._axes_arg(inputs, a)
        if isinstance(x, _Sym):
            if not x.scalar:
                raise _NotGlue
            return _Sym(x.entries)
        if not isinstance(x, _Lab) or axes is None:
            raise _NotGlue
        out = list(x.axes)
        rank = len(out) + len(axes)
        for ax in sorted(ax % rank for ax in axes):
            out.insert(ax, ())
        return _Lab(out)

    def _shape(self, inputs, a):
        x = inputs[0]
        if not isinstance(x, _Lab):
            raise _NotGlue
        dims = [self._dim(ax) for ax in x.axes]
        return _Sym(dims[a.get("start", 0):a.get("end", None)])

    def _index_op(self, inputs, a, op):
        """Slice/Gather on a _Sym: apply the real operator to the entry indices."""
        x = inputs[0]
        if not isinstance(x, _Sym) or x.scalar:
            raise _NotGlue
        rest = inputs[1:]
        if not all(v is None or isinstance(v, np.ndarray) for v in rest):
            raise _NotGlue
        from onnx import helper
        fake = helper.make_node(op, [f"x{k}" if v is not None else "" for k, v in
                                     enumerate(inputs)], ["y"], **a)
        try:
            index = fold_node(fake, [np.arange(len(x.entries))] + rest, self.folder.opset,
                              None)[0]
        except (NotConstant, ValueError):
            raise _NotGlue from None
        picked = [x.entries[i] for i in np.asarray(index).reshape(-1)]
        return _Sym(picked, scalar=np.ndim(index) == 0)

    def _slice(self, inputs, a):
        return self._index_op(inputs, a, "Slice")

    def _gather(self, inputs, a):
        if a.get("axis", 0) != 0:
            raise _NotGlue
        return self._index_op(inputs, a, "Gather")

    def _concat(self, inputs, a):
        if any(isinstance(v, _Lab) for v in inputs):
            raise _NotGlue
        return _Sym([e for v in inputs if v is not None for e in self._entries(v)])

    def _mul(self, inputs, a):
        if any(isinstance(v, _Lab) for v in inputs):
            raise _NotGlue
        x, y = self._entries(inputs[0]), self._entries(inputs[1])
        if len(x) != len(y):
            if min(len(x), len(y)) != 1:
                raise _NotGlue
            x, y = (x * len(y), y) if len(x) == 1 else (x, y * len(x))
        scalar = all(isinstance(v, _Sym) and v.scalar or
                     isinstance(v, np.ndarray) and v.ndim == 0 for v in inputs)
        return _Sym([(fx * fy, tuple(sorted(ux + uy))) for (fx, ux), (fy, uy) in zip(x, y)],
                    scalar=scalar)

    def _reshape(self, inputs, a):
        x, target = inputs[0], self._entries(inputs[1])
        if isinstance(x, _Sym):
            if len(target) != 1 or target[0] not in ((-1, ()), (len(x.entries), ())):
                raise _NotGlue
            return _Sym(x.entries)
        if not isinstance(x, _Lab):
            raise _NotGlue
        return _Lab(self._reshape_lab(x, target, allowzero=a.get("allowzero", 0)))

    def _reshape_lab(self, x: _Lab, target, allowzero):
        axes = [self._strip(ax) for ax in x.axes]
        starts = np.cumsum([0] + [len(ax) for ax in axes])
        stream = [atom for ax in axes for atom in ax]
        specs = []
        for k, (factor, unknown) in enumerate(target):
            if not unknown and factor == 0 and not allowzero:
                specs.append(("copy", k))
            elif not unknown and factor == -1:
                specs.append(("rest", k))
            elif factor >= 1:
                specs.append(((factor, unknown), k))
            else:
                raise _NotGlue
        rest = [k for k, (s, _) in enumerate(specs) if s == "rest"]
        if len(rest) > 1:
            raise _NotGlue
        split = rest[0] if rest else len(specs)
        out, pos = [], 0
        for spec, k in specs[:split]:
            if spec == "copy":
                if k >= len(axes) or pos != starts[k]:
                    raise _NotGlue
                taken = axes[k]
            else:
                taken = self._consume(stream[pos:], spec)
            out.append(taken)
            pos += len(taken)
        tail, end = [], len(stream)
        for spec, k in reversed(specs[split + 1:]):
            if spec == "copy":
                raise _NotGlue
            taken = self._consume(stream[pos:end][::-1], spec)[::-1]
            tail.insert(0, taken)
            end -= len(taken)
        if rest:
            out.append(tuple(stream[pos:end]))
        elif pos != end:
            raise _NotGlue
        return out + tail

    def _consume(self, stream, spec):
        """Take atoms from the front of ``stream`` whose product is ``spec``. An unknown
        axis meeting a plain number (a static-shape export) is bound to that number."""
        factor, unknown = spec
        if spec == (1, ()) and stream and self._size(stream[0]) is None:
            self.sizes[stream[0]] = 1  # a static export with T=1 or N=1
            return (stream[0],)
        got_factor, got_unknown, taken = 1, [], []
        for atom in stream:
            if got_factor == factor and tuple(sorted(got_unknown)) == unknown:
                break
            size = self._size(atom)
            if size is None:
                if atom in unknown:
                    got_unknown.append(atom)
                elif factor % got_factor == 0 and factor // got_factor > 1:
                    self.sizes[atom] = size = factor // got_factor
                else:
                    raise _NotGlue
            if size is not None:
                got_factor *= size
            taken.append(atom)
        if got_factor != factor or tuple(sorted(got_unknown)) != unknown:
            raise _NotGlue
        return tuple(taken)


def link_chains(found: list, folder: Folder) -> dict:
    """{node: the node an exporter chained after it} for nodes joined by pure glue."""
    following = {}
    for b in found:
        glue = _Glue(folder, b.scope)
        try:
            x = glue.value(b.node.input[0]) if b.node.input else None
        except _NotGlue:
            continue
        if not isinstance(x, _Lab) or glue.origin is None or glue.origin is b.node:
            continue
        a = next(f for f in found if f.node is glue.origin)
        if a.kind != b.kind or a.scope is not b.scope or a in following:
            continue
        layout = attrs(b.node).get("layout", 0)
        expected = [("N",), ("T",), ("D", "H")] if layout else [("T",), ("N",), ("D", "H")]
        if [glue._strip(ax) for ax in x.axes] != [glue._strip(ax) for ax in expected]:
            continue
        # The data between the two nodes must feed only the glue and the next node, else
        # the intermediate output is used elsewhere and the layers are separate models.
        # Shape/Size read no data (exporters size the zero initial state that way).
        allowed = glue.nodes | {id(b.node)}
        scope = b.scope
        if any(name in scope.outputs or
               any(id(c) not in allowed and c.op_type not in ("Shape", "Size")
                   for c in scope.consumers.get(name, []))
               for name in glue.lab_names):
            continue
        following[a] = b
    return following
