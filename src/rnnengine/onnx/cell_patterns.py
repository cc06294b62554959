"""Which subgraphs of an ONNX graph are one unrolled LSTM or GRU cell (for onnx.rewrite).

``match_lstm(view, node)`` / ``match_gru(view, tanh)`` read a graph through a ``View``
(producers, consumers, folded constants, inferred shapes) and return the cell they found:
its inputs x, h (, c), outputs h' (, c'), the nodes it covers and its weights already in
ONNX's layout and gate order (``gate_order``), or None. The gate each block is, is read from
the wiring: which Split/Slice output feeds which activation and which product. The checks
are strict (see rewrite's docstring for the patterns): anything unexpected is None.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import onnx

from ..errors import ModelError
from ..core.gate_order import ORDERS
from .fold import Folder, NotConstant, Scope, attrs

DOMAINS = ("", "ai.onnx")


class View:
    """Read-only questions about one (sub)graph: producers, consumers, constants, shapes."""

    def __init__(self, scope: Scope, folder: Folder, shapes: Dict[str, list]):
        self.scope = scope
        self.folder = folder
        self.shapes = shapes

    def node(self, name: str, *ops) -> Optional[onnx.NodeProto]:
        """The node of this graph producing ``name`` if its op is one of ``ops``."""
        found = self.scope.producer.get(name)
        if found and found[0].op_type in ops and found[0].domain in DOMAINS:
            return found[0]
        return None

    def users(self, name: str) -> list:
        return self.scope.consumers.get(name, [])

    def only_user(self, name: str, *ops) -> Optional[onnx.NodeProto]:
        users = self.users(name)
        if len(users) == 1 and users[0].op_type in ops and users[0].domain in DOMAINS:
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


def _projection(view: View, node) -> Optional[tuple]:
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


def _gate_sum(view: View, name: str, width: int, used: list) -> Optional[tuple]:
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


def _split_concat(view: View, operand: str, w: np.ndarray, used: list) -> list:
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

def _blocks(view: View, gates: str, parts: int, width: int, used: list) -> Optional[list]:
    """The ``parts`` equal blocks of ``gates`` [B, width] as names, in column order."""
    users = view.users(gates)
    block = width // parts
    if width % parts or not users or gates in view.scope.outputs:
        return None
    if len(users) == 1 and users[0].op_type == "Split" and users[0].domain in DOMAINS:
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
        if node.op_type != "Slice" or node.domain not in DOMAINS or len(node.input) < 3:
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


def _activations(view: View, blocks: list, used: list) -> Optional[list]:
    """(op type, output name) of the one Sigmoid/Tanh reading each block."""
    out = []
    for b in blocks:
        act = view.only_user(b, "Sigmoid", "Tanh")
        if act is None:
            return None
        used.append(act)
        out.append((act.op_type, act.output[0]))
    return out


def _check_closed(view: View, used: list, keep: set) -> bool:
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


def _batch_agrees(view: View, names: list, width: dict) -> bool:
    """Every state/input is [B, width] with one batch size: a state of batch 1 broadcast
    against a larger batch (which ONNX Runtime would allow here) is no recurrent state."""
    shapes = [view.shape(n) for n in names]
    if any(s is None or len(s) != 2 or s[1] != width[n] for s, n in zip(shapes, names)):
        return False
    batch = [s[0] for s in shapes]
    ints = [b for b in batch if isinstance(b, int)]
    return len(ints) in (0, len(batch)) and len(set(ints)) <= 1


# -- LSTM -----------------------------------------------------------------------------------

def match_lstm(view: View, gates_node) -> Optional[dict]:
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
        if tanh_c.op_type != "Tanh" or tanh_c.domain not in DOMAINS:
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


def _width(view: View, node) -> Optional[int]:
    """The number of gate columns a gate-sum node produces, from its constant weight."""
    for proj_node in _walk_adds(view, node):
        proj = _projection(view, proj_node)
        if proj is not None:
            return int(proj[1].shape[1])
    return None


def _walk_adds(view: View, node) -> list:
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


def _pick_h(view: View, weights: dict, H: int, c: str) -> Optional[str]:
    """Which of the two operands is the recurrent state h. Only its R has H rows; when the
    input is also H wide, the operand that travels with c decides (moved out of the same
    tensor as c, as a state input holding both; or o * tanh(c) itself, the previous step's
    h); failing that, a weight named like a recurrent one (PyTorch's ``weight_hh``, Keras'
    ``recurrent_kernel``); otherwise the cell is left alone (the math would be right, but a
    stream would carry the wrong input as state)."""
    if len(weights) != 2 or any(view.const(n) is not None for n in weights) or c in weights:
        return None
    fits = [n for n, w in weights.items() if w.shape[0] == H]
    if len(fits) == 1:
        return fits[0]
    if len(fits) != 2:
        return None
    for tied in (_same_source, _made_from, _looks_recurrent):
        hinted = [n for n in fits if tied(view, n, c)]
        if len(hinted) == 1:
            return hinted[0]
    return None


# ops that only move or select values: a value read through them is still the same state
_MOVES = {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose",
          "Slice", "Gather", "Split", "Expand"}


def _source(view: View, name: str) -> str:
    """The value ``name`` is moved out of: followed back through ops that only move or
    select their first input (a Concat of one input too) to a graph input or a computed
    value."""
    for _ in range(64):
        found = view.scope.producer.get(name)
        node = found[0] if found else None
        if node is None or node.domain not in DOMAINS or not node.input or not (
                node.op_type in _MOVES or (node.op_type == "Concat" and len(node.input) == 1)):
            return name
        name = node.input[0]
    return name


def _same_source(view: View, operand: str, c: str) -> bool:
    """``operand`` and c are both moved out of one tensor (a state input holding h and c)."""
    return _source(view, operand) == _source(view, c)


def _made_from(view: View, operand: str, c: str) -> bool:
    """``operand`` is sigmoid(.) * tanh(c) of this cell's own c: the h that goes with it."""
    mul = view.node(_source(view, operand), "Mul")
    if mul is None or len(mul.input) != 2:
        return False
    tanhs = [view.node(i, "Tanh") for i in mul.input]
    return any(t is not None and _source(view, t.input[0]) == _source(view, c) for t in tanhs)


def _looks_recurrent(view: View, operand: str, c: str = "") -> bool:
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

def match_gru(view: View, tanh_n) -> Optional[dict]:
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


def _z_sigmoid(view: View, blocks: list, r: tuple):
    """The Sigmoid over the remaining x and h blocks (neither r's nor the candidate's)."""
    for name in blocks[0]:
        if blocks[0].index(name) == r[0]:
            continue
        add = view.only_user(name, "Add")
        sig = view.only_user(add.output[0], "Sigmoid") if add is not None else None
        if sig is not None:
            return sig
    return None


def _blend(view: View, n: str, z: str, h: str, used: list) -> Optional[str]:
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


def feeds_blocks(view: View, node, parts: int) -> bool:
    """``node``'s output is cut in ``parts`` by one Split or by Slices (a first test)."""
    users = view.users(node.output[0]) if len(node.output) == 1 else []
    if len(users) == 1 and users[0].op_type == "Split":
        return len(users[0].output) == parts
    return len(users) == parts and all(u.op_type == "Slice" for u in users)
