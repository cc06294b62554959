"""``rnnengine info``: what a model file holds: kind, layers, sizes, state shapes, and every
recurrent node with the name ``--node`` takes; for an ONNX file also the whole graph as
``InferenceSession`` plans it (``cli/info_session.py``)."""
from __future__ import annotations

import argparse
import os

from ..errors import ModelError
from ._common import add_command, describe, existing_file, load_from_args, one_line
from ._nodes import node_lines
from ._session import is_onnx
from .info_session import session_lines


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
        print()
        _print_rows(whole)
        return 0
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
    for i, line in enumerate(nodes):
        rows.append(("nodes found" if i == 0 else "", line))
    _print_rows(rows)
    if whole:
        print()
        _print_rows(whole)
    return 0


def _print_rows(rows) -> None:
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{key.ljust(width)}  {value}" for key, value in rows))

