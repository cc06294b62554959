"""Which graph outputs are the next step's state inputs (``InferenceSession.stream``).

An output is paired with an input when the output is computed from recurrent nodes' final
states (Y_h, Y_c), the input's data feeds some of those nodes' initial states (initial_h,
initial_c), both through any glue, and their declared shapes agree where both are known
(when several inputs qualify, the one feeding the most of those states wins). Shape and Size
read no data: a zero state built from an input's shape (Silero's branch for an empty
state) does not make that input a state. tf2onnx's ``[batch, layer, unit, h/c]`` packing, PyTorch's
``(h0, c0)`` -> ``(hn, cn)`` and Silero's ``state [2, N, 128]`` -> ``stateN`` all pair this
way. The walk goes through If/Loop bodies (names resolved scope by scope).
"""
from __future__ import annotations

from typing import Dict, List

import onnx

from ..onnx.fold import Scope, subgraphs

_RECURRENT = {"LSTM", "GRU", "RNN"}
_FINAL = {1: "h", 2: "c"}       # output index -> which final state
_INITIAL = {5: "h", 6: "c"}     # input index -> which initial state
_SHAPE_ONLY = {"Shape", "Size"}


class _Graphs:
    """Scopes of every (sub)graph of a model, built once, and the node that owns each."""

    def __init__(self, graph: onnx.GraphProto):
        self.scopes: Dict[int, Scope] = {}
        self.main = self._add(graph, None)

    def _add(self, graph, parent):
        scope = Scope(graph, parent, ())
        self.scopes[id(graph)] = scope
        scope.children = {}
        for node in scope.nodes:
            kids = [self._add(g, scope) for _, g in subgraphs(node)]
            if kids:
                scope.children[id(node)] = kids
        return scope


def _key(node) -> str:
    return f"{node.op_type}:{node.name}:{node.output[0] if node.output else ''}"


def _sources(graphs: _Graphs, name: str, scope: Scope, seen: set) -> set:
    """{(recurrent node key, "h"|"c")} whose final state flows into ``name``."""
    owner, what = scope.lookup(name)
    if what[0] != "node" or (id(owner), name) in seen:
        return set()
    seen.add((id(owner), name))
    node, k = what[1], what[2]
    if node.op_type in _RECURRENT:
        return {(_key(node), _FINAL[k])} if k in _FINAL else set()
    found = set()
    if node.op_type in _SHAPE_ONLY:
        return found
    for child in owner.children.get(id(node), []):
        outs = [o.name for o in child.graph.output]
        if node.op_type == "If" and k < len(outs):
            outs = [outs[k]]
        for out in outs:
            found |= _sources(graphs, out, child, seen)
    for inp in node.input:
        if inp:
            found |= _sources(graphs, inp, owner, seen)
    return found


def _sinks(graphs: _Graphs, name: str, scope: Scope, seen: set) -> set:
    """{(recurrent node key, "h"|"c")} whose initial state ``name`` flows into."""
    if (id(scope), name) in seen:
        return set()
    seen.add((id(scope), name))
    found = set()
    for node in scope.consumers.get(name, []):
        if node.op_type in _SHAPE_ONLY:
            continue
        if node.op_type in _RECURRENT:
            found |= {(_key(node), _INITIAL[k]) for k, n in enumerate(node.input)
                      if n == name and k in _INITIAL}
            continue
        for child in scope.children.get(id(node), []):
            found |= _sinks(graphs, name, child, seen)
        for out in node.output:
            if out:
                found |= _sinks(graphs, out, scope, seen)
    return found


def _compatible(a, b) -> bool:
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(not (isinstance(x, int) and isinstance(y, int) and x != y)
                                    for x, y in zip(a, b))


def find_pairs(graph: onnx.GraphProto, inputs: List, outputs: List) -> Dict[str, str]:
    """{output name: input name} for the automatic state pairs (``inputs``/``outputs``:
    NodeArgs). Raises ValueError when the pairing is ambiguous."""
    graphs = _Graphs(graph)
    ins = {a.name: _sinks(graphs, a.name, graphs.main, set()) for a in inputs}
    outs = {a.name: _sources(graphs, a.name, graphs.main, set()) for a in outputs}
    shape_in = {a.name: a.shape for a in inputs}
    shape_out = {a.name: a.shape for a in outputs}
    pairs = {}
    for out, reached in outs.items():
        if not reached:
            continue
        match = [i for i, fed in ins.items() if fed and fed <= reached and _compatible(
            shape_out[out], shape_in[i])]
        best = max((len(ins[i]) for i in match), default=0)
        match = [i for i in match if len(ins[i]) == best]
        if len(match) > 1:
            raise ValueError(f"output {out!r} could be the state of inputs {match}; name "
                             "the pairs with state={'output': 'input', ...}")
        if match:
            pairs[out] = match[0]
    taken = list(pairs.values())
    for name in set(taken):
        if taken.count(name) > 1:
            both = [o for o, i in pairs.items() if i == name]
            raise ValueError(f"outputs {both} could all be the state of input {name!r}; "
                             "name the pairs with state={'output': 'input', ...}")
    return pairs


def _declared(arg) -> tuple:
    return tuple(arg.shape) if arg.shape is not None else None


def _same_shape(a, b) -> bool:
    """Identical and fully declared (symbolic dims only match the same name)."""
    return (a is not None and b is not None and len(a) == len(b)
            and all(x is not None and x == y for x, y in zip(a, b)))


def candidate_pairs(model: onnx.ModelProto, inputs: List, outputs: List,
                    pairs: Dict[str, str]) -> List[tuple]:
    """(output, input) pairs left out of ``pairs`` whose shapes are identical: inputs that
    look like state (a cache an exporter feeds back, say) which nothing pairs yet. Output
    shapes an exporter left symbolic are taken from ONNX shape inference."""
    shapes = {a.name: _declared(a) for a in outputs}
    if any(s is None or not all(isinstance(d, int) for d in s) for s in shapes.values()):
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph.output
        except Exception:  # inference is only a better guess; the declared shapes remain
            inferred = []
        for o in inferred:
            dims = o.type.tensor_type.shape.dim
            if o.name in shapes and all(d.HasField("dim_value") for d in dims):
                shapes[o.name] = tuple(d.dim_value for d in dims)
    taken = set(pairs.values())
    found = [(o.name, i.name) for i in inputs if i.name not in taken for o in outputs
             if o.name not in pairs and _same_shape(shapes[o.name], _declared(i))]
    # an output named after the input (conv_cache -> conv_cache_out) is the strong sign
    named = [(o, i) for o, i in found if i in o]
    if named:
        return named
    # else a shape alone: a model that maps a frame to a frame (a mask) has one too, so
    # some input must remain to carry the data a step consumes
    used = taken | {i for _, i in found}
    return found if any(a.name not in used for a in inputs) else []


def name_pairs_hint(pairs: Dict[str, str], candidates: List[tuple]) -> str:
    """How to name the pairs when inputs that look like state are left unpaired."""
    named = dict(pairs)
    for out, inp in candidates:
        if inp not in named.values() and out not in named:
            named[out] = inp
    listed = ", ".join(f"{o} -> {i}" for o, i in candidates)
    return f"name the pairs with state={named}: candidates {listed} (identical shapes)"
