"""The whole-graph part of ``rnnengine info MODEL.onnx``: what ``InferenceSession`` made of
the file, read from the session's own plan (never recomputed here): inputs and outputs,
which operators run natively, on the recurrent kernels or through ONNX Runtime (counts per
op type), the constant nodes folded at load, the state pairs ``stream()`` finds, the fixed
inputs, and whether streams and pools of streams run batched."""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Tuple

from ..onnx.rewrite import REWRITTEN
from ..onnx.fold import node_label
from ..runtime.stream_checks import state_hint
from ._common import one_line
from ._session import fmt_shape, load_session

_KIND_NAMES = {"native": "native", "recurrent": "recurrent kernels", "if": "native (If)",
               "loop": "native (Loop)", "ort": "onnxruntime"}


def session_lines(path: str) -> List[Tuple[str, str]]:
    """(key, value) rows; the session's ModelError when it cannot load the file."""
    sess = load_session(path)
    rows = [("whole model", "rnnengine.InferenceSession (run, stream, pool)")]
    for what, args in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        for a in args:
            rows.append((what, f"{a.name}  {fmt_shape(a.shape)}  {a.type}"))
    rows += _placement_rows(sess)
    rows += [("unrolled cell", f"{node_label(n)}: {n.doc_string[len(REWRITTEN) + 2:]}")
             for plan in sess.loaded.plans for n in plan.nodes
             if n.doc_string.startswith(REWRITTEN)]
    pairs, error = _pairs(sess)
    if pairs:
        rows += [("state pair", f"{out} -> {inp}") for out, inp in pairs.items()]
    else:
        rows.append(("state pairs", error or "none found"))
    rows += _stream_rows(sess, pairs, error)
    return rows


def _placement_rows(sess) -> List[Tuple[str, str]]:
    """Per kind: how many nodes of each op type, over the main graph and every subgraph."""
    counts: Dict[str, Counter] = {}
    folded = 0
    for plan in sess.loaded.plans:
        folded += len(plan.graph.node) - len(plan.nodes)
        for node in plan.nodes:
            kind = plan.kinds.get(node_label(node), "native")
            counts.setdefault(_KIND_NAMES.get(kind, kind), Counter())[node.op_type] += 1
    native = Counter()
    for kind in ("native", "native (If)", "native (Loop)"):
        native += counts.pop(kind, Counter())
    rows = []
    for kind in ("native", "recurrent kernels", "onnxruntime"):
        c = native if kind == "native" else counts.get(kind, Counter())
        if c:
            text = ", ".join(f"{op} {n}" for op, n in sorted(c.items(),
                                                             key=lambda t: (-t[1], t[0])))
            rows.append((f"runs {kind}", f"{sum(c.values())} nodes: {text}"))
    if "onnxruntime" not in counts:
        rows.append(("runs onnxruntime", "nothing (every operator is native)"))
    else:
        groups = len(sess.loaded.ort_groups)
        rows.append(("", f"in {groups} onnxruntime session{'s' * (groups != 1)} "
                     "(maximal groups)"))
    rows.append(("folded at load", f"{folded} constant node{'s' * (folded != 1)}"))
    return rows


def _pairs(sess):
    try:
        return sess.state_pairs(), None
    except ValueError as exc:
        return {}, f"ambiguous ({one_line(exc)})"


def _stream_rows(sess, pairs: Dict[str, str], error) -> List[Tuple[str, str]]:
    """What ``sess.stream()`` will do: carry the automatic pairs, carry recurrent state
    along time, or nothing until the pairs are named (inputs that look like state left
    unpaired would otherwise be missing at the first step)."""
    hint = state_hint(sess, pairs)
    if error or hint:
        return [("stream", hint or "name the pairs with state={'output': 'input', ...}")]
    try:
        stream = sess.stream()
    except ValueError as exc:
        stream_text = f"no: {one_line(exc)}"
    else:
        stream_text = (f"automatic state pairs {pairs}" if pairs else
                       "yes, along the time axis (recurrent state carried between calls)")
        del stream
    rows = [("stream", stream_text)]
    try:
        pool = sess.pool(1)
    except ValueError as exc:
        rows.append(("pool", f"no: {one_line(exc)}"))
        return rows
    # inputs the pool neither stacks per stream nor carries as state: given once
    fixed = [a.name for a in sess.get_inputs()
             if a.name not in pool.in_axis and a.name not in pairs.values()]
    rows.append(("fixed inputs", ", ".join(fixed) + " (give once: stream(feeds=...))"
                 if fixed else "none"))
    rows.append(("pool", f"batched: one graph pass for all streams, stacked on dim "
                 f"{pool.batch_dim!r}" if pool.batched else
                 "streams stepped one by one (the graph's shapes are fixed at batch 1)"))
    return rows
