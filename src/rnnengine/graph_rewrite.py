"""Unrolled one-step LSTM/GRU cells rewritten into ONNX LSTM/GRU nodes (issue 11, stretch).

PyTorch's exporters (TorchScript and dynamo, torch 2.13) write ``nn.LSTMCell`` and
``nn.GRUCell`` as plain operators, and so does tf2onnx for Keras cells; the graph then has no
recurrent node and the cell runs operator by operator. ``fuse_unrolled_cells`` finds

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
the activations are exactly Sigmoid/Tanh and the shapes agree.
"""
from __future__ import annotations

import hashlib
import heapq
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .errors import ModelError
from .gate_order import ORDERS
from .loaders._fold import Folder, NotConstant, Scope, attrs, subgraph_free_names, subgraphs

_DOMAINS = ("", "ai.onnx")
# readers of h' that only move it (towards a state output, say): they read Y_h
_GLUE = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Transpose", "Slice",
         "Flatten", "Gather", "Split", "Expand"}
REWRITTEN = "rnnengine: unrolled cell"     # doc_string prefix of the nodes written here


class _View:
    """Read-only questions about one (sub)graph: producers, consumers, constants, shapes."""

    def __init__(self, scope: Scope, folder: Folder, shapes: Dict[str, list]):
        self.scope = scope
        self.folder = folder
        self.shapes = shapes

    def node(self, name: str, *ops) -> Optional[onnx.NodeProto]:
        """The node of this graph producing ``name`` if its op is one of ``ops``."""
        found = self.scope.producer.get(name)
        if found and found[0].op_type in ops and found[0].domain in _DOMAINS:
            return found[0]
        return None

    def users(self, name: str) -> list:
        return self.scope.consumers.get(name, [])

    def only_user(self, name: str, *ops) -> Optional[onnx.NodeProto]:
        users = self.users(name)
        if len(users) == 1 and users[0].op_type in ops and users[0].domain in _DOMAINS:
            return users[0]
        return None

    def const(self, name: str) -> Optional[np.ndarray]:
        if not name:
            return None
        try:
            return self.folder.value(name, self.scope)
        except (NotConstant, ModelError):   # a bad constant chain is the Plan's to report
            return None

    def shape(self, name: str) -> Optional[list]:
        return self.shapes.get(name)


def _other(node, name: str) -> Optional[str]:
    """The other input of a two-input commutative node that reads ``name``."""
    if len(node.input) != 2 or name not in node.input or node.input[0] == node.input[1]:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


# -- gate sums: gates = sum of (operand @ W) + bias ---------------------------------------

def _bias(value: np.ndarray, width: int) -> Optional[np.ndarray]:
    if value.dtype != np.float32 or value.size not in (1, width) or value.ndim > 2 or (
            value.ndim == 2 and value.shape[0] != 1):
        return None
    return np.broadcast_to(value.reshape(-1), (width,)).astype(np.float32)


def _projection(view: _View, node) -> Optional[tuple]:
    """(operand name, W^T [rows, cols], bias or None) of a Gemm or 2-D MatMul on a constant."""
    if node.op_type == "MatMul":
        a, b = node.input[0], view.const(node.input[1])
        if b is None or b.ndim != 2 or b.dtype != np.float32 or view.const(a) is not None:
            return None
        shape = view.shape(a)
        if shape is None or len(shape) != 2:
            return None
        return a, b, None
    a = attrs(node)
    if a.get("transA", 0) or len(node.input) < 2 or view.const(node.input[0]) is not None:
        return None
    b = view.const(node.input[1])
    if b is None or b.ndim != 2 or b.dtype != np.float32:
        return None
    w = (b.T if a.get("transB", 0) else b) * np.float32(a.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = view.const(node.input[2])
        if c is None or _bias(c, w.shape[1]) is None:
            return None
        bias = _bias(c, w.shape[1]) * np.float32(a.get("beta", 1.0))
    return node.input[0], w, bias


def _gate_sum(view: _View, name: str, width: int, used: list) -> Optional[tuple]:
    """``name`` as {operand: W^T [rows, width]} and a bias [width]; the Add/Gemm/MatMul/
    Concat nodes it walks through are appended to ``used``. None if it is anything else."""
    weights: Dict[str, np.ndarray] = {}
    bias = np.zeros(width, np.float32)
    todo = [name]
    while todo:
        t = todo.pop()
        value = view.const(t)
        if value is not None:
            b = _bias(value, width)
            if b is None:
                return None
            bias = bias + b
            continue
        node = view.node(t, "Add", "Gemm", "MatMul")
        if node is None:
            return None
        used.append(node)
        if node.op_type == "Add":
            if len(node.input) != 2:
                return None
            todo.extend(node.input)
            continue
        proj = _projection(view, node)
        if proj is None or proj[1].dtype != np.float32 or proj[1].shape[1] != width:
            return None
        operand, w, b = proj
        if b is not None:
            bias = bias + b
        for operand, w in _split_concat(view, operand, w, used):
            if operand in weights:
                weights[operand] = weights[operand] + w
            else:
                weights[operand] = w
    return weights, bias


def _split_concat(view: _View, operand: str, w: np.ndarray, used: list) -> list:
    """One MatMul on Concat(x, h) along the last axis is x W_x + h W_h: split W's rows."""
    node = view.node(operand, "Concat")
    if node is None or attrs(node).get("axis") not in (1, -1):
        return [(operand, w)]
    widths = [view.shape(n) for n in node.input]
    if any(s is None or len(s) != 2 or not isinstance(s[1], int) for s in widths) or \
            sum(s[1] for s in widths) != w.shape[0] or len(set(node.input)) != len(node.input):
        return [(operand, w)]
    used.append(node)
    edges = np.cumsum([0] + [s[1] for s in widths])
    return [(n, w[edges[k]:edges[k + 1]]) for k, n in enumerate(node.input)]


# -- gate blocks: Split or Slices on the last axis -----------------------------------------

def _blocks(view: _View, gates: str, parts: int, width: int, used: list) -> Optional[list]:
    """The ``parts`` equal blocks of ``gates`` [B, width] as names, in column order."""
    users = view.users(gates)
    block = width // parts
    if width % parts or not users or gates in view.scope.outputs:
        return None
    if len(users) == 1 and users[0].op_type == "Split" and users[0].domain in _DOMAINS:
        split = users[0]
        a = attrs(split)
        sizes = a.get("split")
        if sizes is None and len(split.input) > 1 and split.input[1]:
            sizes = view.const(split.input[1])
            if sizes is None:
                return None
        if a.get("axis", 0) not in (1, -1) or len(split.output) != parts or \
                any(not o for o in split.output) or (
                    sizes is not None and [int(s) for s in np.ravel(sizes)] != [block] * parts):
            return None
        used.append(split)
        return list(split.output)
    found = {}
    for node in users:
        if node.op_type != "Slice" or node.domain not in _DOMAINS or len(node.input) < 3:
            return None
        starts, ends = view.const(node.input[1]), view.const(node.input[2])
        axes = view.const(node.input[3]) if len(node.input) > 3 and node.input[3] else \
            np.array([0])                         # ONNX's default: the first axes
        steps = view.const(node.input[4]) if len(node.input) > 4 and node.input[4] else \
            np.array([1])
        if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or \
                int(axes.reshape(-1)[0]) not in (1, -1) or int(steps.reshape(-1)[0]) != 1:
            return None
        start, end = int(starts.reshape(-1)[0]), min(int(ends.reshape(-1)[0]), width)
        if start % block or end - start != block or not 0 <= start < width:
            return None
        found[start // block] = node
    if sorted(found) != list(range(parts)) or len(users) != parts:
        return None
    used.extend(found.values())
    return [found[k].output[0] for k in range(parts)]


def _activations(view: _View, blocks: list, used: list) -> Optional[list]:
    """(op type, output name) of the one Sigmoid/Tanh reading each block."""
    out = []
    for b in blocks:
        act = view.only_user(b, "Sigmoid", "Tanh")
        if act is None:
            return None
        used.append(act)
        out.append((act.op_type, act.output[0]))
    return out


def _check_closed(view: _View, used: list, keep: set) -> bool:
    """Every value made inside the pattern but ``keep`` is read only inside it."""
    ids = {id(n) for n in used}
    if len(ids) != len(used):
        return False
    for node in used:
        for out in node.output:
            if out in keep or not out:
                continue
            if out in view.scope.outputs or any(id(u) not in ids for u in view.users(out)):
                return False
    return True


def _batch_agrees(view: _View, names: list, width: dict) -> bool:
    """Every state/input is [B, width] with one batch size: a state of batch 1 broadcast
    against a larger batch (which ONNX Runtime would allow here) is no recurrent state."""
    shapes = [view.shape(n) for n in names]
    if any(s is None or len(s) != 2 or s[1] != width[n] for s, n in zip(shapes, names)):
        return False
    batch = [s[0] for s in shapes]
    ints = [b for b in batch if isinstance(b, int)]
    return len(ints) in (0, len(batch)) and len(set(ints)) <= 1


# -- LSTM -----------------------------------------------------------------------------------

def _match_lstm(view: _View, gates_node) -> Optional[dict]:
    """An LSTM cell whose gate pre-activations are ``gates_node``'s output, or None."""
    gates = gates_node.output[0]
    w_shape = _width(view, gates_node)
    if w_shape is None:
        return None
    used: list = []
    blocks = _blocks(view, gates, 4, w_shape, used)
    acts = _activations(view, blocks, used) if blocks else None
    if acts is None or sorted(op for op, _ in acts) != ["Sigmoid"] * 3 + ["Tanh"]:
        return None
    sig = {name: k for k, (op, name) in enumerate(acts) if op == "Sigmoid"}
    g = next(k for k, (op, _) in enumerate(acts) if op == "Tanh")
    mul_ig = view.only_user(acts[g][1], "Mul")
    i_name = _other(mul_ig, acts[g][1]) if mul_ig else None
    if i_name not in sig:
        return None
    add_c = view.only_user(mul_ig.output[0], "Add")
    prod_fc = _other(add_c, mul_ig.output[0]) if add_c else None
    mul_fc = view.node(prod_fc, "Mul") if prod_fc else None
    if mul_fc is None or len(view.users(prod_fc)) != 1:
        return None
    f_name = next((n for n in mul_fc.input if n in sig and n != i_name), None)
    c = _other(mul_fc, f_name) if f_name else None
    if c is None or c in sig:
        return None
    c_new = add_c.output[0]
    for tanh_c in view.users(c_new):
        if tanh_c.op_type != "Tanh" or tanh_c.domain not in _DOMAINS:
            continue
        mul_h = view.only_user(tanh_c.output[0], "Mul")
        o_name = _other(mul_h, tanh_c.output[0]) if mul_h else None
        if o_name in sig and o_name not in (i_name, f_name):
            break
    else:
        return None
    used += [mul_ig, add_c, mul_fc, tanh_c, mul_h]
    order = {"i": sig[i_name], "f": sig[f_name], "o": sig[o_name], "c": g}
    summed = _gate_sum(view, gates, w_shape, used)
    if summed is None:
        return None
    weights, bias = summed
    H = w_shape // 4
    h = _pick_h(view, weights, H, c)
    if h is None:
        return None
    x = next(n for n in weights if n != h)
    if not _batch_agrees(view, [x, h, c], {x: weights[x].shape[0], h: H, c: H}) or \
            not _check_closed(view, used, {c_new, mul_h.output[0]}):
        return None
    perm = [order[gate] for gate in ORDERS["onnx"]["lstm"]]
    return {"kind": "lstm", "H": H, "x": x, "h": h, "c": c, "used": used,
            "h_out": mul_h.output[0], "c_out": c_new,
            "W": _onnx_blocks(weights[x], perm), "R": _onnx_blocks(weights[h], perm),
            "Wb": _onnx_blocks(bias[None, :], perm)[:, 0],
            "Rb": np.zeros(4 * H, np.float32)}


def _width(view: _View, node) -> Optional[int]:
    """The number of gate columns a gate-sum node produces, from its constant weight."""
    for proj_node in _walk_adds(view, node):
        proj = _projection(view, proj_node)
        if proj is not None:
            return int(proj[1].shape[1])
    return None


def _walk_adds(view: _View, node) -> list:
    """The Gemm/MatMul nodes reachable from ``node`` through Adds (a few levels)."""
    out, todo = [], [node]
    while todo and len(out) < 8:
        n = todo.pop()
        if n.op_type in ("Gemm", "MatMul"):
            out.append(n)
        elif n.op_type == "Add":
            todo.extend(p for p in (view.node(i, "Add", "Gemm", "MatMul") for i in n.input)
                        if p is not None)
    return out


def _pick_h(view: _View, weights: dict, H: int, c: str) -> Optional[str]:
    """Which of the two operands is the recurrent state h. Only its R has H rows; when the
    input is also H wide, a weight named like a recurrent one (PyTorch's ``weight_hh``,
    Keras' ``recurrent_kernel``) or an operand that is another cell's h' decides; otherwise
    the cell is left alone (the math would be right, but the wrong input would be carried
    as state by a stream)."""
    if len(weights) != 2 or any(view.const(n) is not None for n in weights) or c in weights:
        return None
    fits = [n for n, w in weights.items() if w.shape[0] == H]
    if len(fits) == 1:
        return fits[0]
    if len(fits) != 2:
        return None
    hinted = [n for n in fits if _looks_recurrent(view, n)]
    return hinted[0] if len(hinted) == 1 else None


def _looks_recurrent(view: _View, operand: str) -> bool:
    for node in view.users(operand):
        if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and \
                node.input[0] == operand:
            name = node.input[1].lower()
            if "weight_hh" in name or "recurrent" in name:
                return True
    return False


def _onnx_blocks(wt: np.ndarray, perm: list) -> np.ndarray:
    """W^T [rows, G*H] in the graph's block order -> ONNX W [G*H, rows] in ONNX's order."""
    blocks = np.split(np.ascontiguousarray(wt.T), len(perm), axis=0)
    return np.ascontiguousarray(np.concatenate([blocks[k] for k in perm]), np.float32)


# -- GRU ------------------------------------------------------------------------------------

def _match_gru(view: _View, tanh_n) -> Optional[dict]:
    """A GRU cell (linear_before_reset=1) whose candidate state is ``tanh_n``'s output."""
    used = [tanh_n]
    add_n = view.node(tanh_n.input[0], "Add")
    if add_n is None or len(view.users(add_n.output[0])) != 1 or len(add_n.input) != 2:
        return None
    used.append(add_n)
    for xn, rh in (add_n.input, reversed(add_n.input)):
        mul_r = view.node(rh, "Mul")
        if mul_r is not None and len(mul_r.input) == 2:
            break
    else:
        return None
    used.append(mul_r)
    for r_name, hn in (mul_r.input, reversed(mul_r.input)):
        sig_r = view.node(r_name, "Sigmoid")
        if sig_r is not None:
            break
    else:
        return None
    sums, blocks = [], []
    for part in (xn, hn):                                   # x side, h side
        cut = view.node(part, "Split", "Slice")
        gate_node = view.node(cut.input[0], "Add", "Gemm", "MatMul") if cut else None
        width = _width(view, gate_node) if gate_node is not None else None
        found = _blocks(view, cut.input[0], 3, width, used) if width else None
        summed = _gate_sum(view, cut.input[0], width, used) if found and part in found \
            else None
        if summed is None or len(summed[0]) != 1:
            return None
        sums.append(summed)
        blocks.append(found)
    if blocks[0] == blocks[1]:
        return None
    (wx, bx), (wh, bh) = sums
    x, h = next(iter(wx)), next(iter(wh))
    H = wh[h].shape[1] // 3
    if x == h or wh[h].shape[0] != H or wx[x].shape[1] != 3 * H:
        return None
    # r = sigmoid(x_r + h_r); z = sigmoid(x_z + h_z), each sum read by its sigmoid only
    gate = {}
    for sig_node, role in ((sig_r, "r"), (None, "z")):
        if sig_node is None:
            sig_node = _z_sigmoid(view, blocks, gate["r"])
            if sig_node is None:
                return None
        add = view.node(sig_node.input[0], "Add")
        if add is None or len(add.input) != 2:
            return None
        kx = [blocks[0].index(n) for n in add.input if n in blocks[0]]
        kh = [blocks[1].index(n) for n in add.input if n in blocks[1]]
        if len(kx) != 1 or len(kh) != 1:
            return None
        gate[role] = (kx[0], kh[0])
        used += [sig_node, add]
        if role == "z":
            z_out = sig_node.output[0]
    gate["h"] = (blocks[0].index(xn), blocks[1].index(hn))
    if sorted(k for k, _ in gate.values()) != [0, 1, 2] or \
            sorted(k for _, k in gate.values()) != [0, 1, 2]:
        return None
    blend = _blend(view, tanh_n.output[0], z_out, h, used)
    if blend is None or not _batch_agrees(view, [x, h], {x: wx[x].shape[0], h: H}) or \
            not _check_closed(view, used, {blend}):
        return None
    px = [gate[g][0] for g in ORDERS["onnx"]["gru"]]
    ph = [gate[g][1] for g in ORDERS["onnx"]["gru"]]
    return {"kind": "gru", "H": H, "x": x, "h": h, "c": None, "used": used,
            "h_out": blend, "c_out": None,
            "W": _onnx_blocks(wx[x], px), "R": _onnx_blocks(wh[h], ph),
            "Wb": _onnx_blocks(bx[None, :], px)[:, 0], "Rb": _onnx_blocks(bh[None, :], ph)[:, 0]}


def _z_sigmoid(view: _View, blocks: list, r: tuple):
    """The Sigmoid over the remaining x and h blocks (neither r's nor the candidate's)."""
    for name in blocks[0]:
        if blocks[0].index(name) == r[0]:
            continue
        add = view.only_user(name, "Add")
        sig = view.only_user(add.output[0], "Sigmoid") if add is not None else None
        if sig is not None:
            return sig
    return None


def _blend(view: _View, n: str, z: str, h: str, used: list) -> Optional[str]:
    """h' from (h - n) * z + n (PyTorch) or z * h + (1 - z) * n (Keras, ONNX); its name."""
    users = view.users(n)
    sub = next((u for u in users if u.op_type == "Sub" and list(u.input) == [h, n]), None)
    if sub is not None and len(users) == 2:                       # PyTorch form
        mul = view.only_user(sub.output[0], "Mul")
        if mul is None or _other(mul, sub.output[0]) != z:
            return None
        add = view.only_user(mul.output[0], "Add")
        if add is None or _other(add, mul.output[0]) != n or len(view.users(z)) != 1:
            return None
        used += [sub, mul, add]
        return add.output[0]
    mul_n = view.only_user(n, "Mul")                              # Keras / ONNX form
    one_minus = view.node(_other(mul_n, n), "Sub") if mul_n else None
    if one_minus is None or list(one_minus.input)[1:] != [z]:
        return None
    one = view.const(one_minus.input[0])
    if one is None or one.size != 1 or float(one.reshape(-1)[0]) != 1.0:
        return None
    zs = [u for u in view.users(z) if u is not one_minus]
    mul_h = zs[0] if len(zs) == 1 and zs[0].op_type == "Mul" else None
    if mul_h is None or _other(mul_h, z) != h:
        return None
    add = view.only_user(mul_n.output[0], "Add")
    if add is None or _other(add, mul_n.output[0]) != mul_h.output[0]:
        return None
    used += [mul_n, one_minus, mul_h, add]
    return add.output[0]


# -- the rewrite ----------------------------------------------------------------------------

def fuse_unrolled_cells(model: onnx.ModelProto, base_dir: Optional[str]) -> onnx.ModelProto:
    """``model`` with every unrolled LSTM/GRU cell (module docstring) replaced by a one-step
    LSTM/GRU node; ``model`` itself (never modified) when there is none."""
    opset = next((o.version for o in model.opset_import if o.domain in _DOMAINS), 0)
    if opset < 7 or not _has_candidates(model.graph):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewriter = _Rewriter(out, base_dir, opset)
    rewriter.graph(out.graph, None, ())
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
        self.folder = Folder(base_dir)
        self.scopes: list = []        # kept alive: the Folder memoises by id(scope)
        self.count = 0
        self.names = set()
        self.shapes: Dict[str, list] = {}
        self.types: Dict[str, int] = {}   # element types, for Casts that change nothing
        self.written: Dict[tuple, str] = {}   # initializers added, by content
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
            for t in g.initializer:
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
        view = _View(scope, self.folder, self.shapes)
        cells, taken = [], set()
        for node in scope.nodes:
            if node.domain not in _DOMAINS or id(node) in taken:
                continue
            cell = None
            if node.op_type in ("Add", "Gemm", "MatMul") and _feeds_blocks(view, node, 4):
                cell = _match_lstm(view, node)
            elif node.op_type == "Tanh" and view.node(node.input[0], "Add") is not None:
                cell = _match_gru(view, node)
            if cell is not None and not taken & {id(n) for n in cell["used"]}:
                taken.update(id(n) for n in cell["used"])
                cells.append(cell)
        if cells:
            self._replace(graph, scope, cells)
            scope = Scope(graph, parent, path)
            self.scopes.append(scope)
        for node in scope.nodes:
            for label, sub in subgraphs(node):
                self.graph(sub, scope, path + (label,))

    def _replace(self, graph: onnx.GraphProto, scope: Scope, cells: list) -> None:
        gone = {id(n) for cell in cells for n in cell["used"]}
        nodes = [_copy(n) for n in scope.nodes if id(n) not in gone]
        for cell in cells:
            h_out = cell["h_out"]
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
            nodes += new
            self.count += 1
        del graph.node[:]
        graph.node.extend(_toposorted(nodes))

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
                reshape("Unsqueeze", cell[key], ins[key], [0])
        names = {k: self.fresh(f"{base}/rnnengine_{k}") for k in ("Y", "Y_h", "Y_c")}
        outs = [names["Y"], names["Y_h"] if final else ""]
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
        reshape("Squeeze", names["Y"], h_y, [0, 1])                # Y [1, 1, N, H]
        if final:
            reshape("Squeeze", names["Y_h"], cell["h_out"], [0])
        if cell["kind"] == "lstm":
            reshape("Squeeze", names["Y_c"], cell["c_out"], [0])
        return nodes, h_y

    def _initializer(self, graph: onnx.GraphProto, base: str, value: np.ndarray) -> str:
        """A new initializer of ``graph`` holding ``value``; cells of one unrolled loop share
        their weights, so an equal value already written to this graph is reused."""
        value = value.astype(np.int64 if value.dtype.kind in "iu" else np.float32)
        key = (id(graph), value.dtype.str, value.shape,
               hashlib.sha256(np.ascontiguousarray(value).tobytes()).digest())
        if key not in self.written:
            self.written[key] = self.fresh(base)
            graph.initializer.append(numpy_helper.from_array(value, self.written[key]))
        return self.written[key]


def _skip_noop_casts(graph: onnx.GraphProto, types: Dict[str, int]) -> None:
    """Readers of a Cast to its input's own type, or of an Identity, read its input instead
    (Keras' torch-backend export puts a float->float Cast on nearly every edge); the node
    stays only where something else needs its name (a graph output, a subgraph capture).
    Only the discarded copy of the model is changed when no cell is found."""
    nodes = list(graph.node)
    alias = {}
    for node in nodes:
        if node.domain not in _DOMAINS or len(node.input) != 1 or len(node.output) != 1:
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


def _feeds_blocks(view: _View, node, parts: int) -> bool:
    users = view.users(node.output[0]) if len(node.output) == 1 else []
    if len(users) == 1 and users[0].op_type == "Split":
        return len(users[0].output) == parts
    return len(users) == parts and all(u.op_type == "Slice" for u in users)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _toposorted(nodes: List[onnx.NodeProto]) -> list:
    """``nodes`` in a topological order, stable (ONNX requires one; ORT's bridge and
    onnx.checker read the graph as written). Names nothing here produces are available."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps = [set() for _ in nodes]
    users: List[list] = [[] for _ in nodes]
    for k, node in enumerate(nodes):
        names = list(node.input) + [i for _, g in subgraphs(node) for n in g.node
                                    for i in n.input]
        for name in names:
            p = producer.get(name)
            if p is not None and p != k and p not in deps[k]:
                deps[k].add(p)
                users[p].append(k)
    ready = [k for k in range(len(nodes)) if not deps[k]]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for u in users[k]:
            deps[u].discard(k)
            if not deps[u]:
                heapq.heappush(ready, u)
    return order if len(order) == len(nodes) else nodes
