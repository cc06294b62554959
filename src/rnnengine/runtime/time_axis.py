"""Can a graph without state inputs stream along its time axis? (``InferenceSession.stream``)

Streaming a chunk of timesteps at a time through the whole graph, with the recurrent
nodes carrying their state between calls, gives the same result as one call on the whole
sequence only when every other operator treats timesteps independently. ``check_streamable``
follows the time axis from the recurrent nodes' X back to the graph inputs, then forward
through every node, and raises ValueError naming the first operator that mixes timesteps
(a convolution wider than one step, a reduction or softmax over time, a Reshape that fixes
the number of steps, a node run by ONNX Runtime or a control-flow node on timed data, ...).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import onnx

from ..onnx.fold import attrs, node_label
from ..ops import elementwise

POINTWISE = frozenset(elementwise.OPS) | {"Cast", "Identity", "Dropout", "CastLike"}
_RECURRENT = {"LSTM", "GRU", "RNN"}


class _Mixes(Exception):
    pass


def _ranks(model: onnx.ModelProto) -> Dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:   # shape inference is only a help here
        return {}
    ranks = {}
    g = inferred.graph
    for info in list(g.value_info) + list(g.input) + list(g.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            ranks[info.name] = len(t.shape.dim)
    return ranks


def _norm(axis: int, rank: Optional[int]) -> int:
    return axis + rank if axis < 0 and rank is not None else axis


def _axes(node, plan, k=1):
    a = attrs(node)
    if "axes" in a:
        return [int(x) for x in a["axes"]]
    if len(node.input) > k and node.input[k]:
        value = plan.const(node.input[k])
        if value is None:
            raise _Mixes("its axes are computed at run time")
        value = np.asarray(value)
        if value.dtype.kind not in "iu":      # a hostile graph's axes (found by the fuzzer)
            raise _Mixes(f"its axes are a {value.dtype} tensor, not integers")
        return [int(x) for x in value.reshape(-1)]
    return None


def _forward(node, plan, t_in: Dict[str, int], ranks) -> Dict[str, int]:
    """{output: time axis} for a node some of whose inputs carry time; _Mixes if it mixes."""
    op, a = node.op_type, attrs(node)
    timed = {n: t for n, t in t_in.items()}
    first = next(iter(timed.items()))
    name, t = first
    rank_out = ranks.get(node.output[0]) if node.output else None
    if op in _RECURRENT:
        if node.input[0] not in timed or timed[node.input[0]] != int(a.get("layout", 0)):
            raise _Mixes("its X does not carry time on the recurrent axis")
        if len(node.input) > 4 and node.input[4]:
            raise _Mixes("it takes sequence_lens")
        return {node.output[0]: int(a.get("layout", 0))} if node.output else {}
    if op in POINTWISE:
        outs = set()
        for n, tn in timed.items():
            r = ranks.get(n)
            outs.add(tn + (rank_out - r) if rank_out is not None and r is not None else tn)
        if len(outs) != 1:
            raise _Mixes("its inputs carry time on different axes")
        return {node.output[0]: outs.pop()}
    if op in ("MatMul", "Gemm"):
        if node.input[0] not in timed or len(timed) > 1:
            raise _Mixes("time is on its weight operand")
        r = ranks.get(name)
        if op == "Gemm" and (a.get("transA", 0) or t != 0):
            raise _Mixes("it contracts the time axis")
        if r is not None and t >= r - 1:
            raise _Mixes("it contracts the time axis")
        return {node.output[0]: t}
    if op == "Transpose":
        perm = a.get("perm")
        r = ranks.get(name)
        perm = list(perm) if perm else (list(range(r))[::-1] if r else None)
        if perm is None:
            raise _Mixes("its permutation is unknown")
        return {node.output[0]: perm.index(t)}
    if op == "Unsqueeze":
        axes = sorted(_norm(x, rank_out) for x in _axes(node, plan))
        out = t
        for x in axes:
            if x <= out:
                out += 1
        return {node.output[0]: out}
    if op == "Squeeze":
        axes = _axes(node, plan)
        if axes is None:
            raise _Mixes("it squeezes every unit axis, time included when a chunk is 1 step")
        axes = [_norm(x, ranks.get(name)) for x in axes]
        if t in axes:
            raise _Mixes("it removes the time axis")
        return {node.output[0]: t - sum(x < t for x in axes)}
    if op == "Gather":
        axis = _norm(int(a.get("axis", 0)), ranks.get(node.input[0]))
        if node.input[0] in timed:
            if node.input[1] in timed or axis == t:
                raise _Mixes("it gathers along time")
            r_idx = ranks.get(node.input[1], 0)
            return {node.output[0]: t if t < axis else t + r_idx - 1}
        return {node.output[0]: timed[node.input[1]] + axis}
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        axis = _norm(int(a.get("axis", -1 if plan.loaded.opset >= 13 else 1)), ranks.get(name))
        if axis == t or (plan.loaded.opset < 13 and axis <= t):
            raise _Mixes("it normalises across time")
        return {node.output[0]: t}
    if op == "LayerNormalization":
        axis = _norm(int(a.get("axis", -1)), ranks.get(name))
        if axis <= t:
            raise _Mixes("it normalises across time")
        return {node.output[0]: t}
    if op in ("Concat", "Split", "Slice"):
        if op == "Slice":
            axes = _axes(node, plan, 3)
            axes = [_norm(x, ranks.get(name)) for x in axes] if axes is not None else None
            bad = axes is None or t in axes
        else:
            bad = _norm(int(a.get("axis", 0)), ranks.get(name)) == t
            bad = bad or len(set(timed.values())) != 1
        if bad:
            raise _Mixes("it cuts or joins along time")
        return {o: t for o in node.output if o}
    if op == "Conv":
        kernel = a.get("kernel_shape")
        w = plan.const(node.input[1]) if len(node.input) > 1 else None
        if kernel is None and w is not None:
            kernel = w.shape[2:]
        if t < 2 or kernel is None or kernel[t - 2] != 1 or any(
                s != 1 for s in a.get("strides", [1])) or any(a.get("pads", [0])):
            raise _Mixes("its kernel spans several timesteps")
        return {node.output[0]: t}
    if op in ("Shape", "Size"):
        return {}
    raise _Mixes(f"{op} is not known to keep timesteps apart")


def _backward(plan, ranks) -> Dict[str, int]:
    """{graph input: time axis}, followed back from each recurrent node's X."""
    producer = {o: n for n in plan.nodes for o in n.output if o}
    inputs = set(plan.input_names)
    found: Dict[str, int] = {}
    todo = [(n.input[0], int(attrs(n).get("layout", 0))) for n in plan.nodes
            if n.op_type in _RECURRENT and n.input]
    seen = set()
    while todo:
        name, t = todo.pop()
        if (name, t) in seen or plan.const(name) is not None:
            continue
        seen.add((name, t))
        if name in inputs:
            found.setdefault(name, t)
            continue
        node = producer.get(name)
        if node is None or node.op_type in _RECURRENT:
            continue
        op, a = node.op_type, attrs(node)
        dyn = [i for i in node.input if i and plan.const(i) is None]
        if op in POINTWISE or op in ("MatMul", "Gemm", "Conv", "Softmax", "LogSoftmax",
                                     "LayerNormalization"):
            for i in dyn[:1] if op in ("MatMul", "Gemm", "Conv") else dyn:
                r_in, r_out = ranks.get(i), ranks.get(name)
                todo.append((i, t - (r_out - r_in) if r_in is not None and r_out is not None
                             else t))
        elif op == "Transpose" and a.get("perm"):
            todo.append((node.input[0], list(a["perm"])[t]))
        elif op == "Unsqueeze" and _safe_axes(node, plan) is not None:
            axes = _safe_axes(node, plan)
            todo.append((node.input[0], t - sum(_norm(x, ranks.get(name)) < t for x in axes)))
        elif op == "Squeeze" and _safe_axes(node, plan) is not None:
            axes = sorted(_norm(x, ranks.get(node.input[0])) for x in _safe_axes(node, plan))
            src = t
            for x in axes:
                if x <= src:
                    src += 1
            todo.append((node.input[0], src))
        elif op == "Gather" and plan.const(node.input[0]) is not None:
            todo.append((node.input[1], t - _norm(int(a.get("axis", 0)), None)))
    return found


def _safe_axes(node, plan):
    try:
        return _axes(node, plan)
    except _Mixes:
        return None


def check_streamable(sess) -> Dict[str, int]:
    """{graph input: time axis}; ValueError naming the node that mixes timesteps."""
    plan = sess.plan
    if not sess.loaded.recurrent:
        raise ValueError("this graph has neither state inputs/outputs nor recurrent nodes: "
                         "there is nothing to stream; use run()")
    nested = [r.label for r in sess.loaded.recurrent
              if not any(r.node is n for n in plan.nodes)]
    if nested:
        raise ValueError(f"recurrent node(s) {nested} sit inside If/Loop bodies: streaming "
                         "along time needs state inputs and outputs (state=...)")
    ranks = _ranks(sess.loaded.model)
    timed = dict(_backward(plan, ranks))
    inputs = dict(timed)
    for node in plan.nodes:
        t_in = {n: timed[n] for n in list(node.input) if n in timed}
        if not t_in:
            continue
        try:
            timed.update(_forward(node, plan, t_in, ranks))
        except _Mixes as e:
            raise ValueError(f"cannot stream along time: {node.op_type} node "
                             f"{node_label(node)!r} mixes timesteps ({e}); give the graph "
                             "state inputs/outputs or use run()") from None
    return inputs
