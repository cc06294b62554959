"""``rnnengine info``: what a model file holds: kind, layers, sizes, state shapes, and every
recurrent node with the name ``--node`` takes; for an ONNX file also the whole graph as
``InferenceSession`` planned it, read from the session's own plan (never recomputed here):
inputs and outputs, which operators run natively, on the recurrent kernels or through ONNX
Runtime (counts per op type), how the executor runs a call once planned (its C operators,
and the steps it still calls without a C kernel), the constant nodes folded at load, the
state pairs
``stream()`` finds, the fixed inputs, and whether streams and pools of streams run
batched."""
from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Dict, List, Tuple

import numpy as np

from ..errors import ModelError
from ..onnx.fold import node_label
from ..onnx.rewrite import REWRITTEN
from ..runtime.model import Model
from ..runtime.stream_checks import state_hint
from ._common import (CommandError, add_command, describe, existing_file, load_from_args,
                      one_line)
from ._nodes import node_lines
from ._session import fmt_shape, is_onnx, load_session, random_feeds


def add_parser(sub) -> None:
    add_command(sub, "info", HELP, cmd_info)


HELP = ("describe a model: kind, layers, directions, sizes, parameters, nodes; for ONNX also "
        "the whole graph: inputs/outputs, where each operator runs, state pairs")


def cmd_info(args: argparse.Namespace) -> int:
    path = existing_file(args.model)
    nodes = node_lines(path) if is_onnx(path) else []
    whole, runnable = [], False
    if is_onnx(path) and args.node is None:
        try:
            whole, runnable = session_lines(path), True
        except (ModelError, ValueError, TypeError) as exc:
            whole = [("whole model", f"InferenceSession cannot run it: {one_line(exc)}")]
    try:
        model = load_from_args(args)
    except ModelError as exc:
        recurrent = [n for n in nodes if not n.startswith("If ")]
        if args.node is not None or (len(recurrent) < 2 and not runnable):
            raise
        if len(recurrent) >= 2:
            # Several candidates and none asked for: listing them is what info is for.
            print(f"{path}: several recurrent models; load one with --node NAME (names as "
                  "below):")
            print("\n".join("  " + line for line in nodes))
        else:
            print(f"{path}: recurrent layers: none loaded ({exc})")
    else:
        _print_rows(layer_lines(path, model)
                    + [("nodes found" if i == 0 else "", line) for i, line in enumerate(nodes)])
    if whole:
        print()
        _print_rows(whole)
    return 0


def layer_lines(path: str, model: Model) -> List[Tuple[str, str]]:
    """(key, value) rows of the loaded recurrent layers: sizes, shapes, each layer's options."""
    D = model.num_directions
    L = model.num_layers
    hout = model.proj_size or model.hidden_size
    state = f"h ({L * D}, N, {hout})"
    if model.kind == "lstm":
        state = f"(h, c): h ({L * D}, N, {hout}), c ({L * D}, N, {model.hidden_size})"
    directions = describe(model).split(", ")[2]
    rows = [
        ("file", f"{path} ({os.path.getsize(path):,} bytes)"),
        ("kind", model.kind.upper()),
        ("layers", str(L)),
        ("directions", directions),
        ("input_size", str(model.input_size)),
        ("hidden_size", str(model.hidden_size)),
        ("proj_size", str(model.proj_size) if model.proj_size else "none"),
        ("batch_first", str(model.batch_first)),
        ("parameters", f"{model.num_parameters:,}"),
        ("input x", "(N, T, %d)" % model.input_size if model.batch_first
         else "(T, N, %d)" % model.input_size),
        ("output y", "(N, T, %d)" % model.output_size if model.batch_first
         else "(T, N, %d)" % model.output_size),
        ("state", state),
        ("streaming", "yes" if D == 1 else "no (bidirectional)"),
    ]
    for k, layer in enumerate(model.layers):
        extras = []
        acts = [a.name for a in layer.activations[0]]
        extras.append("activations " + "/".join(acts))
        if layer.P is not None:
            extras.append("peepholes")
        if layer.clip is not None:
            extras.append(f"clip {layer.clip:g}")
        if layer.input_forget:
            extras.append("input_forget")
        if layer.kind == "gru":
            extras.append(f"linear_before_reset {int(layer.linear_before_reset)}")
        rows.append((f"layer {k}", f"{layer.direction}, {layer.input_size} -> "
                     f"{layer.output_size}, " + ", ".join(extras)))
    return rows


def _print_rows(rows) -> None:
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{key.ljust(width)}  {value}" for key, value in rows))


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
    rows += _executor_rows(sess)
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


def _executor_rows(sess) -> List[Tuple[str, str]]:
    """How one call runs once planned: the executor's C operators, and the steps it calls as
    the general path runs them (no C kernel yet). Planned from two calls on feeds of the
    declared shapes (dynamic dims 1, random values); a graph those feeds do not fit is
    planned on its first real calls instead, which ``verify`` (with --feed, --dim) shows."""
    try:
        feeds = random_feeds(sess, {}, {}, 1, np.random.default_rng(0))
        for _ in range(2):
            sess.run(None, feeds)
    except (CommandError, ValueError, TypeError, ModelError, ArithmeticError) as exc:
        why = one_line(exc)
        return [("executor", "planned on the first calls: inputs of the declared shapes "
                             "(dynamic dims 1, random values) do not run here ("
                             + (why if len(why) <= 80 else why[:77] + "...") + ")")]
    status = list(sess.program_status().values())
    if not status:
        return [("executor", "not planned on inputs of the declared shapes")]
    how = status[0]
    if how.startswith("compiled: "):
        ops, _, called = how[len("compiled: "):].partition(
            "; called as the general path runs them: ")
        rows = [("executor", f"one C loop: {ops}")]
        rows.append(("no C kernel yet", called if called else
                     "none (every step runs in the loop)"))
        return rows
    return [("executor", how)]


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
