"""``rnnengine verify``: on an ONNX file, the whole graph against ONNX Runtime (run and
stream: ``verify_session.py``); the loaded recurrent layers against ONNX Runtime running the
file's own recurrent nodes, ONNX Runtime and PyTorch holding the loaded weights, on random
inputs."""
from __future__ import annotations

import argparse
from typing import Optional

import numpy as np
import onnx

from .._checks import is_one_way
from ..interop import Unsupported
from ..interop.onnx_cut import cut_chain
from ..interop.ort import OrtReference
from ..interop.pytorch import (STATE_DICT_FILES, torch_module_for, torch_module_from_state_dict,
                               torch_run)
from ..loaders.onnx import chain_nodes
from ..errors import ModelError
from ..model import Model
from ._common import (CommandError, Progress, add_command, describe, load_from_args, max_diff,
                      one_line, optional_import, random_input, table)
from ._session import whole_model, whole_model_args
from .verify_session import whole_rows


def add_parser(sub) -> None:
    p = add_command(sub, "verify", HELP, cmd_verify)
    p.add_argument("--seq-len", type=int, default=20, help="T (20); whole graph: the size of "
                   "every symbolic dim but the batch dim and those given with --dim")
    p.add_argument("--batch", type=int, default=3, help="N (3)")
    p.add_argument("--steps", type=int, default=20,
                   help="whole graph with state pairs: steps of the streamed comparison (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float,
                   help="largest absolute difference accepted (default: 1e-4 for fp32, the "
                   "mode's budget with --precision: fp16 5e-3, bf16 3e-2, int8 6e-2)")
    whole_model_args(p, "default: --batch for the batch dim, --seq-len for the others")


HELP = ("compare with onnxruntime (and torch) on random inputs: the whole ONNX graph (run "
        "and stream) and its recurrent layers")


def file_graph_check(path: str, node_name: Optional[str], chain: bool, model: Model, T: int,
                     N: int, seed: int):
    """The file's own recurrent node(s) run by onnxruntime (``interop.onnx_cut``: the nodes the
    loader took, with the chains that compute their weights), against the engine, on the
    same random x, initial states and full lengths.

    Independent of rnnengine's loader: returns ``(label, diff_y, diff_state)``, or
    ``(label, reason)`` when this file cannot be cut that way."""
    import onnxruntime as ort

    label = "onnxruntime, the file's own node(s)"
    proto = onnx.load(path)
    chain_ = chain_nodes(proto, node_name, chain)
    if len(chain_) != model.num_layers:
        return label, (f"not compared: {len(chain_)} recurrent nodes for "
                       f"{model.num_layers} layer(s)")
    label = "onnxruntime, node " + ", ".join(repr(f.qualname) for f in chain_) + " from the file"
    try:
        cut = cut_chain(proto, chain_)
        session = ort.InferenceSession(cut.model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    except Unsupported as exc:
        return label, f"not compared: {exc}"
    except Exception as exc:
        return label, f"not compared: onnxruntime cannot run the node(s) ({one_line(exc)[:80]})"
    types = {i.name: i.type for i in session.get_inputs()}
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16}.get(types[cut.x])
    if dtype is None:
        return label, f"not compared: X is {types[cut.x]}"
    rng = np.random.default_rng(seed + 1)
    x = random_input(model, T, N, seed).astype(dtype)
    h_shape, c_shape = model._state_shapes(N)
    D = model.num_directions
    feeds, h0, c0 = {cut.x: x}, [], []
    for slots in cut.states:
        # every initial state random (whatever the file computes it from), lengths full
        h = rng.standard_normal((D,) + h_shape[1:]).astype(np.float32) * 0.5
        c = rng.standard_normal((D,) + c_shape[1:]).astype(np.float32) * 0.5
        for slot, name in slots.items():
            value = {4: np.full(N, T, np.int32), 5: h, 6: c}[slot]
            feeds[name] = feeds.get(name, value if slot == 4 else value.astype(dtype))
        h0.append(feeds[slots[5]].astype(np.float32) if 5 in slots else np.zeros_like(h))
        c0.append(feeds[slots[6]].astype(np.float32) if 6 in slots else np.zeros_like(c))
    state0 = np.concatenate(h0)
    if model.kind == "lstm":
        state0 = (state0, np.concatenate(c0))
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feeds)))
    y, state = model.run(x.astype(np.float32), state0)
    h, c = state if isinstance(state, tuple) else (state, None)
    Y = got[cut.y]  # (T, D, N, H) -> (T, N, D*H)
    diff_y = max_diff(y, Y.transpose(0, 2, 1, 3).reshape(T, N, -1))
    diffs = []
    for k, (h_name, c_name) in enumerate(cut.finals):
        diffs.append(max_diff(h[k * D:(k + 1) * D], got[h_name]))
        if c is not None and c_name:
            diffs.append(max_diff(c[k * D:(k + 1) * D], got[c_name]))
    return label, diff_y, max(diffs)


# Largest difference accepted by default: exact fp32, or each reduced mode's error budget.
TOLERANCE = {None: 1e-4, "fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2, "int8": 6e-2}


def cmd_verify(args: argparse.Namespace) -> int:
    if args.tol is None:
        args.tol = TOLERANCE[args.precision]
    T, N, seed = args.seq_len, args.batch, args.seed
    if min(T, N, args.steps) < 1:
        raise CommandError("--seq-len, --batch and --steps must be positive")
    whole = []
    if whole_model(args):
        whole = whole_rows(args)
        try:
            model = load_from_args(args, batch_first=False)
        except ModelError as exc:  # no recurrent layers to load alone (or several)
            reason = ("several recurrent nodes: pick one with --node NAME (rnnengine info "
                      "lists them)" if "candidate" in str(exc) else one_line(exc)[:120])
            whole.append(("recurrent layers alone", None, None, f"not compared: {reason}"))
            return report(args, None, whole)
    else:
        if args.feed or args.dim:
            raise CommandError("--feed and --dim name inputs of a whole ONNX graph")
        # time-major, whatever the file implies: a load option, never set on a Model
        model = load_from_args(args, batch_first=False)
    ort = optional_import("onnxruntime")
    torch = optional_import("torch")
    if ort is None and torch is None:
        raise CommandError("verify needs onnxruntime or torch as a reference: "
                           "pip install onnxruntime")
    rng = np.random.default_rng(seed)
    x = random_input(model, T, N, seed)
    state0 = model.zero_state(N)
    state0 = (tuple(rng.standard_normal(a.shape).astype(np.float32) * 0.5 for a in state0)
              if isinstance(state0, tuple) else rng.standard_normal(state0.shape).astype(np.float32) * 0.5)
    lengths = rng.integers(1, T + 1, N)
    lengths[0] = T
    rows = list(whole)  # (reference, diff y or None, diff state or None, note)

    if ort is not None:
        if args.model.lower().endswith(".onnx"):
            result = file_graph_check(args.model, args.node, not args.no_chain, model, T, N,
                                      seed)
            rows.append((result[0], None, None, result[1]) if len(result) == 2
                        else (result[0], result[1], result[2], ""))
        try:
            ref = OrtReference(model)
            y_ref, s_ref = ref.run(x, state0, lengths)
            y, s = model.run(x, state0, lengths=lengths)
            rows.append(("onnxruntime, weights as loaded, random state and lengths",
                         max_diff(y, y_ref), max_diff(s, s_ref), ""))
            if is_one_way(model.layers):
                y_full, s_full = ref.run(x, state0, None)
                stream = model.stream(batch=N)
                stream.state = state0
                progress = Progress(T, "verify stream")
                ys = []
                for t in range(T):
                    ys.append(stream.step(x[t]))
                    progress.advance()
                progress.close()
                rows.append((f"stream.step x{T} vs onnxruntime", max_diff(np.stack(ys), y_full),
                             max_diff(stream.state, s_full), ""))
        except Unsupported as exc:
            rows.append(("onnxruntime", None, None, f"not compared: {exc}"))
    if torch is not None:
        label, module = "torch, weights as loaded", None
        try:
            if args.model.lower().endswith(STATE_DICT_FILES):
                module = torch_module_from_state_dict(args.model, model)
                label = "torch, state_dict read by PyTorch from the file"
            if module is None:
                label = "torch, weights as loaded"
                module = torch_module_for(model)
            y_ref, s_ref = torch_run(module, x, state0, model.kind)
            y, s = model.run(x, state0)
            rows.append((label, max_diff(y, y_ref), max_diff(s, s_ref), ""))
        except Unsupported as exc:
            rows.append(("torch", None, None, f"not compared: {exc}"))
        except ImportError as exc:  # safetensors, to read the file independently
            rows.append((label, None, None, f"not compared: {exc}"))
        except (RuntimeError, KeyError) as exc:  # the file's state_dict does not fit the module
            rows.append((label, None, None, f"not compared: {str(exc).splitlines()[0]}"))

    return report(args, model, rows)


def report(args: argparse.Namespace, model: Optional[Model], rows: list) -> int:
    """The table of differences; CommandError when one exceeds the tolerance."""
    if model is not None:
        print(f"rnnengine verify: {describe(model)}")
        print(f"random input x ({args.seq_len}, {args.batch}, {model.input_size}), seed "
              f"{args.seed}; tolerance {args.tol:g}")
    else:
        print(f"rnnengine verify: {args.model}, whole graph; seed {args.seed}; tolerance "
              f"{args.tol:g}")
    out = [["reference", "max |diff| y (outputs)", "max |diff| state"]]
    for label, dy, ds, note in rows:
        out.append([label, "-" if dy is None else f"{dy:.2e}", "-" if ds is None else f"{ds:.2e}"]
                   + ([note] if note else []))
    print(table([r + [""] * (4 - len(r)) for r in out]))
    diffs = [d for _, dy, ds, _ in rows for d in (dy, ds) if d is not None]
    if not diffs:
        raise CommandError("no reference could run this model (see the notes above)")
    worst = max(diffs)
    if not np.isfinite(worst) or worst > args.tol:
        raise CommandError(f"largest difference {worst:.3e} exceeds tolerance {args.tol:g}")
    print(f"largest difference {worst:.2e}: within tolerance {args.tol:g}")
    return 0

