"""Unrolled one-step LSTM/GRU cells rewritten into ONNX LSTM/GRU nodes.

PyTorch's exporters (TorchScript and dynamo, torch 2.13) write ``nn.LSTMCell`` and
``nn.GRUCell`` as plain operators, so does Keras' own ONNX export of ``LSTMCell``/``GRUCell``
(torch backend; a float->float Cast on nearly every edge, looked through here), and tf2onnx
writes Keras cells as MatMul/Add/Split too; the graph then has no recurrent node and the cell
runs operator by operator (and a stream cannot keep its state). ``fuse_unrolled_cells`` finds

    LSTM:  gates = x W + h R + b          (Gemm, MatMul + Add, or one MatMul on Concat(x, h))
           i, f, g, o = Split(gates) (or 4 Slices), in any order on the last axis
           c' = sigmoid(f) * c + sigmoid(i) * tanh(g);   h' = sigmoid(o) * tanh(c')
    GRU:   gx = x W + bw;  gh = h R + br;  each split in 3 (linear_before_reset=1, as PyTorch's
           GRUCell and Keras' reset_after=True)
           z = sigmoid(gx_z + gh_z); r = sigmoid(gx_r + gh_r); n = tanh(gx_n + r * gh_n)
           h' = (h - n) * z + n   or   z * h + (1 - z) * n

and replaces each with ``Unsqueeze -> LSTM/GRU (one timestep) -> Squeeze``, weights moved to
ONNX's gate order (``gate_order``), so the session runs the cell on the fused kernels and its
state machinery (pairs, stream, pool) sees an ordinary recurrent node. Which block is which
gate is read from the wiring (which Split output feeds which activation and which product),
never from an exporter's convention. Correctness first: a candidate is left alone unless
every intermediate is read only inside the pattern, the weights fold to float32 constants,
the activations are exactly Sigmoid/Tanh and the shapes agree. A Python loop over a cell
for every step of an input [N, T, I] (exported as T chained cells reading x[:, t]) becomes
one node over the T steps (``_join_loops``).
"""
from __future__ import annotations

import hashlib
from typing import Dict, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .cell_patterns import DOMAINS, View, feeds_blocks, match_gru, match_lstm
from .fold import Folder, Scope, attrs, subgraph_free_names, subgraphs

# readers of h' that only move it (towards a state output, say): they read Y_h
_GLUE = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Transpose", "Slice",
         "Flatten", "Gather", "Split", "Expand"}
REWRITTEN = "rnnengine: unrolled cell"     # doc_string prefix of the nodes written here


def fuse_unrolled_cells(model: onnx.ModelProto, base_dir: Optional[str]) -> onnx.ModelProto:
    """``model`` with every unrolled LSTM/GRU cell (module docstring) replaced by a one-step
    LSTM/GRU node; ``model`` itself (never modified) when there is none."""
    opset = next((o.version for o in model.opset_import if o.domain in DOMAINS), 0)
    if opset < 7 or not _has_candidates(model.graph):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    try:
        rewriter = _Rewriter(out, base_dir, opset)
        rewriter.graph(out.graph, None, ())
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, AttributeError,
            RecursionError):
        # A graph malformed in a way the matcher trips on: the rewrite is only a speed-up,
        # so the graph is planned as written and the Plan reports what is wrong with it.
        return model
    return out if rewriter.count else model


def _has_candidates(graph: onnx.GraphProto) -> bool:
    ops = set()
    todo = [graph]
    while todo:
        g = todo.pop()
        for node in g.node:
            ops.add(node.op_type)
            todo.extend(sub for _, sub in subgraphs(node))
    return {"Sigmoid", "Tanh", "Mul"} <= ops and bool({"Split", "Slice"} & ops)


def _shape_of(info: onnx.ValueInfoProto) -> Optional[list]:
    t = info.type.tensor_type if info.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.shape.dim]


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, base_dir: Optional[str], opset: int):
        self.opset = opset
        self.folder = Folder(base_dir, opset)
        self.scopes: list = []        # kept alive: the Folder memoises by id(scope)
        self.count = 0
        self.names = set()
        self.shapes: Dict[str, list] = {}
        self.types: Dict[str, int] = {}   # element types, for Casts that change nothing
        self.written: Dict[tuple, str] = {}   # initializers added to one graph, by content
        try:
            inferred = shape_inference.infer_shapes(model)
        except Exception:             # a graph ONNX cannot infer: declared shapes only
            inferred = model
        todo = [inferred.graph, model.graph]
        while todo:
            g = todo.pop()
            for info in list(g.input) + list(g.value_info) + list(g.output):
                shape = _shape_of(info)
                if shape is not None:
                    self.shapes.setdefault(info.name, shape)
                if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                    self.types.setdefault(info.name, info.type.tensor_type.elem_type)
            for t in g.initializer:
                self.types.setdefault(t.name, t.data_type)
                self.names.add(t.name)
            for node in g.node:
                self.names.update(node.output)
                self.names.update(node.input)
                todo.extend(sub for _, sub in subgraphs(node))
            self.names.update(i.name for i in g.input)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def graph(self, graph: onnx.GraphProto, parent: Optional[Scope], path: tuple) -> None:
        _skip_noop_casts(graph, self.types)
        scope = Scope(graph, parent, path)
        self.scopes.append(scope)
        view = View(scope, self.folder, self.shapes)
        cells, taken = [], set()
        for node in scope.nodes:
            if node.domain not in DOMAINS or id(node) in taken:
                continue
            cell = None
            if node.op_type in ("Add", "Gemm", "MatMul") and feeds_blocks(view, node, 4):
                cell = match_lstm(view, node)
            elif node.op_type == "Tanh" and view.node(node.input[0], "Add") is not None:
                cell = match_gru(view, node)
            if cell is not None and not taken & {id(n) for n in cell["used"]}:
                taken.update(id(n) for n in cell["used"])
                cells.append(cell)
        if cells:
            self._replace(graph, scope, _join_loops(view, cells))
            scope = Scope(graph, parent, path)
            self.scopes.append(scope)
        for node in scope.nodes:
            for label, sub in subgraphs(node):
                self.graph(sub, scope, path + (label,))

    def _replace(self, graph: onnx.GraphProto, scope: Scope, cells: list) -> None:
        self.written = {}
        gone = {id(n) for cell in cells for n in cell["used"]}
        where = {o: k for k, n in enumerate(scope.nodes) for o in n.output if o}
        placed = [(k, _copy(n)) for k, n in enumerate(scope.nodes) if id(n) not in gone]
        for cell in cells:
            h_out = cell["h_out"]
            nodes = [n for _, n in placed]
            readers = [n for n in nodes if h_out in n.input and n.op_type not in _GLUE]
            # h' is Y_h where the state machinery must see a final state (a graph output,
            # glue on the way to one, a subgraph's capture); the operators that compute with
            # it take Y instead, the same values, so a stream that keeps the state in the
            # kernels never copies it out for them.
            final = h_out in scope.outputs or any(
                h_out in subgraph_free_names(n) or (h_out in n.input and n.op_type in _GLUE)
                for n in nodes)
            new, h_y = self._cell_nodes(graph, cell, final)
            if final and readers:
                for n in readers:
                    n.input[:] = [h_y if i == h_out else i for i in n.input]
            # right after the last producer of x, h, c: every one of them reaches both h'
            # and c', so (the graph being in order) this precedes every reader of those
            at = max((where.get(cell[k], -1) for k in ("x", "h", "c") if cell[k]), default=-1)
            placed += [(at + 0.5, n) for n in new]
            self.count += 1
        placed.sort(key=lambda item: item[0])
        del graph.node[:]
        graph.node.extend(n for _, n in placed)

    def _cell_nodes(self, graph: onnx.GraphProto, cell: dict, final: bool) -> tuple:
        """Unsqueeze x, h (, c) -> LSTM/GRU of one step -> Squeeze Y (, Y_h) (, Y_c), weights
        as new initializers of ``graph``. -> (nodes, name of Y squeezed to [N, H]); h' is
        that name unless ``final`` (then h' is Y_h squeezed)."""
        base = cell["h_out"]
        op = "LSTM" if cell["kind"] == "lstm" else "GRU"
        replaced = (f"one {op} node in place of {len(cell['used'])} operators (" +
                    ", ".join(n.name or n.op_type for n in cell["used"]) + ")")
        weights = []
        for key, value in (("W", cell["W"][None]), ("R", cell["R"][None]),
                           ("B", np.concatenate([cell["Wb"], cell["Rb"]])[None])):
            weights.append(self._initializer(graph, f"{base}/rnnengine_{op}_{key}", value))
        nodes = []

        def reshape(kind: str, src: str, dst: str, axes: list) -> None:
            if self.opset >= 13:
                name = self._initializer(graph, f"{base}/rnnengine_axes", np.array(axes))
                node = helper.make_node(kind, [src, name], [dst], name=self.fresh(f"{dst}/{kind}"))
            else:
                node = helper.make_node(kind, [src], [dst], name=self.fresh(f"{dst}/{kind}"),
                                        axes=axes)
            nodes.append(node)

        ins = {}
        for key in ("x", "h", "c"):
            if cell[key] is not None:
                ins[key] = self.fresh(f"{base}/rnnengine_{key}_seq")
                if key == "x" and cell["steps"] > 1:   # x [N, T, I] of a joined loop
                    nodes.append(helper.make_node("Transpose", [cell[key]], [ins[key]],
                                                  perm=[1, 0, 2], name=self.fresh(ins[key])))
                else:
                    reshape("Unsqueeze", cell[key], ins[key], [0])
        final = final or cell["steps"] > 1      # Y holds every step then: h' is Y_h's
        names = {k: self.fresh(f"{base}/rnnengine_{k}") for k in ("Y", "Y_h", "Y_c")}
        outs = [names["Y"] if cell["steps"] == 1 else "", names["Y_h"] if final else ""]
        attributes = {"hidden_size": cell["H"]}
        inputs = [ins["x"]] + weights + ["", ins["h"]]
        if cell["kind"] == "lstm":
            outs.append(names["Y_c"])
            inputs.append(ins["c"])
        else:
            attributes["linear_before_reset"] = 1
        nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(f"{op} cell {base}"),
                                      doc_string=f"{REWRITTEN}: {replaced}", **attributes))
        h_y = self.fresh(f"{base}/rnnengine_h") if final else cell["h_out"]
        if cell["steps"] == 1:
            reshape("Squeeze", names["Y"], h_y, [0, 1])            # Y [1, 1, N, H]
        else:
            h_y = cell["h_out"]
        if final:
            reshape("Squeeze", names["Y_h"], cell["h_out"], [0])
        if cell["kind"] == "lstm":
            reshape("Squeeze", names["Y_c"], cell["c_out"], [0])
        return nodes, h_y

    def _initializer(self, graph: onnx.GraphProto, base: str, value: np.ndarray) -> str:
        """A new initializer of ``graph`` holding ``value``; cells of one unrolled loop share
        their weights, so an equal value already written to this graph is reused."""
        value = value.astype(np.int64 if value.dtype.kind in "iu" else np.float32)
        key = (value.dtype.str, value.shape,
               hashlib.sha256(np.ascontiguousarray(value).tobytes()).digest())
        if key not in self.written:
            self.written[key] = self.fresh(base)
            graph.initializer.append(numpy_helper.from_array(value, self.written[key]))
        return self.written[key]


def _join_loops(view: View, cells: list) -> list:
    """``cells`` with each run that is one loop over a sequence joined into one cell of T
    steps: cell t reads x_t = Gather(X, t, axis=1) of one X [N, T, I] for t = 0..T-1, has
    cell t-1's weights and takes its h' (, c') as h (, c), which nothing else reads (a loop
    over nn.LSTMCell in forward(), exported unrolled). One LSTM/GRU node then runs the whole
    sequence, and its initial and final states are the graph's."""
    by_state = {(c["h"], c["c"]): c for c in cells}
    nxt = {}
    for a in cells:
        b = by_state.get((a["h_out"], a["c_out"]))
        if b is not None and b is not a and _continues(view, a, b):
            nxt[id(a)] = b
    later = {id(b) for b in nxt.values()}
    out = []
    for cell in cells:
        if id(cell) in later:
            continue                      # inside a run that starts earlier
        run = [cell]
        while id(run[-1]) in nxt:
            run.append(nxt[id(run[-1])])
        found = _sequence(view, run)
        if found is None:
            out += [dict(c, steps=1) for c in run]
            continue
        X, gathers = found
        out.append(dict(run[0], x=X, h_out=run[-1]["h_out"], c_out=run[-1]["c_out"],
                        used=[n for c in run for n in c["used"]] + gathers, steps=len(run)))
    return out


def _continues(view: View, a: dict, b: dict) -> bool:
    """Cell ``b`` is the next step of ``a``: the same weights, and a's outputs read by b only."""
    if a["kind"] != b["kind"] or a["H"] != b["H"] or not all(
            np.array_equal(a[k], b[k]) for k in ("W", "R", "Wb", "Rb")):
        return False
    inside = {id(n) for n in a["used"] + b["used"]}     # a's own tanh(c') reads c' too
    for name in (a["h_out"], a["c_out"]):
        if name and (name in view.scope.outputs or any(
                id(u) not in inside for u in view.users(name))):
            return False
    return True


def _sequence(view: View, run: list) -> Optional[tuple]:
    """(X, the Gather nodes) when cell t of ``run`` reads Gather(X, t, axis=1) (read by
    nothing else) for t = 0..T-1 and X is [N, T, I] with T = len(run); else None."""
    if len(run) < 2:
        return None
    gathers = []
    for t, cell in enumerate(run):
        node = view.node(cell["x"], "Gather")
        if node is None or len(node.input) != 2 or attrs(node).get("axis", 0) not in (1, -2):
            return None
        index = view.const(node.input[1])
        if index is None or index.ndim != 0 or int(index) != t or (
                gathers and node.input[0] != gathers[0].input[0]):
            return None
        inside = {id(n) for n in cell["used"]}
        if cell["x"] in view.scope.outputs or any(id(u) not in inside
                                                  for u in view.users(cell["x"])):
            return None
        gathers.append(node)
    X = gathers[0].input[0]
    shape = view.shape(X)
    if shape is None or len(shape) != 3 or shape[1] != len(run):
        return None
    return X, gathers


def _skip_noop_casts(graph: onnx.GraphProto, types: Dict[str, int]) -> None:
    """Readers of a Cast to its input's own type, or of an Identity, read its input instead
    (Keras' torch-backend export puts a float->float Cast on nearly every edge); the node
    stays only where something else needs its name (a graph output, a subgraph capture).
    Only the discarded copy of the model is changed when no cell is found."""
    nodes = list(graph.node)
    alias = {}
    for node in nodes:
        if node.domain not in DOMAINS or len(node.input) != 1 or len(node.output) != 1:
            continue
        src = alias.get(node.input[0], node.input[0])
        if node.op_type == "Identity" or (node.op_type == "Cast" and types.get(src) and
                                          attrs(node).get("to") == types.get(src)):
            alias[node.output[0]] = src
    if not alias:
        return
    for node in nodes:
        node.input[:] = [alias.get(i, i) for i in node.input]
    needed = {o.name for o in graph.output}
    for node in nodes:
        needed.update(subgraph_free_names(node))
    kept = [n for n in nodes if not (n.output and n.output[0] in alias
                                     and n.output[0] not in needed)]
    if len(kept) != len(nodes):
        kept = [_copy(n) for n in kept]
        del graph.node[:]
        graph.node.extend(kept)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out
