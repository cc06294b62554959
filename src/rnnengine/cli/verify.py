"""``rnnengine verify``: on random inputs, the whole ONNX graph against ONNX Runtime, and the
loaded recurrent layers against ONNX Runtime running the file's own recurrent nodes, ONNX
Runtime and PyTorch holding the loaded weights; one table of differences, one verdict.

The whole graph: ``InferenceSession.run`` against ONNX Runtime on the same file and random
feeds; when the graph has state pairs (found automatically or named with ``--state``), a
stream and a pool of streams (state carried inside) against ONNX Runtime's author-style loop
(each step's state outputs fed back by hand, never random); else a stream along the time
axis against one ORT run."""
from __future__ import annotations

import argparse
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import onnx

from ..core.checks import is_one_way
from ..interop import Unsupported
from ..interop.onnx_cut import cut_chain
from ..interop.ort import OrtReference
from ..interop.pytorch import (STATE_DICT_FILES, torch_module_for, torch_module_from_state_dict,
                               torch_run)
from ..loaders.onnx import chain_nodes
from ..errors import ModelError
from ..runtime.model import Model
from ..runtime.stream_checks import state_hint
from ..runtime.time_axis import check_streamable
from ._common import (CommandError, add_command, describe, diff_scale, load_from_args,
                      one_line, optional_import, random_input, table, with_progress)
from ._session import (batch_dim, hinted, is_onnx, load_session, ort_loop, ort_run,
                       ort_session, parse_dims, parse_feeds, parse_state, random_feeds,
                       stack_feeds, state_pairs, whole_model, whole_model_args, zero_state)

POOL_STREAMS = 3


def add_parser(sub) -> None:
    p = add_command(sub, "verify", HELP, cmd_verify)
    p.add_argument("--seq-len", type=int, default=20, help="T (20); whole graph: the size of "
                   "every symbolic dim but the batch dim and those given with --dim")
    p.add_argument("--batch", type=int, default=3, help="N (3)")
    p.add_argument("--steps", type=int, default=20,
                   help="whole graph with state pairs: steps of the streamed comparison (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float,
                   help="absolute part of the tolerance: an output passes when max |diff| <= "
                   "tol + rtol * max |reference| (default: 1e-4 for fp32, the mode's budget "
                   "with --precision: fp16 5e-3, bf16 3e-2, int8 6e-2)")
    p.add_argument("--rtol", type=float,
                   help="relative part, to the output's largest value (default: 1e-5 for "
                   "fp32, fp16 1e-3, bf16 1e-2, int8 1e-2; 0 when --tol is given alone); "
                   "state outputs are reported apart and "
                   f"held to {STATE_SLACK:g} times both")
    p.add_argument("--state", dest="pairs", action="append", default=[], metavar="OUT=IN",
                   help="whole graph: a state pair, output OUT fed back as input IN at the "
                   "next step (when the pairs are not found automatically); repeatable")
    whole_model_args(p, "default: --batch for the batch dim, --seq-len for the others")


HELP = ("compare with onnxruntime (and torch) on random inputs: the whole ONNX graph (run "
        "and stream) and its recurrent layers")


# Tolerance by default, (absolute, relative to the output's largest value): exact fp32, or
# each reduced mode's error budget.
TOLERANCE = {None: (1e-4, 1e-5), "fp32": (1e-4, 1e-5), "fp16": (5e-3, 1e-3),
             "bf16": (3e-2, 1e-2), "int8": (6e-2, 1e-2)}
# State outputs (an LSTM's cell state runs to ~100 in Silero) drift further than the
# outputs computed from them; they are held to this many times the tolerance.
STATE_SLACK = 10.0


class Row(NamedTuple):
    """One comparison: [(max |diff|, max |reference|)] over the model's own outputs and
    over the state outputs (None: not compared), a note, and whether it ran a stream."""
    label: str
    out: Optional[list]
    state: Optional[list]
    note: str = ""
    stream: bool = False


def cmd_verify(args: argparse.Namespace) -> int:
    atol, rtol = TOLERANCE[args.precision]
    if args.rtol is None:  # --tol alone: the plain absolute bound it always was
        args.rtol = rtol if args.tol is None else 0.0
    args.tol = atol if args.tol is None else args.tol
    if min(args.seq_len, args.batch, args.steps) < 1:
        raise CommandError("--seq-len, --batch and --steps must be positive")
    if args.tol < 0 or args.rtol < 0:
        raise CommandError("--tol and --rtol must not be negative")
    try:
        return _verify(args)
    except TypeError as exc:
        # user input is checked before (a bad feed is a CommandError): a TypeError here is
        # a fault in verify itself, so report it as one (with the traceback hint)
        raise RuntimeError(f"{type(exc).__name__}: {one_line(exc)}") from exc


def _verify(args: argparse.Namespace) -> int:
    """Whole graph or layer stack, decided once; both end in the same table and verdict."""
    whole = whole_model(args)
    if not whole and (args.feed or args.dim or args.pairs):
        raise CommandError("--feed, --dim and --state name inputs of a whole ONNX graph")
    rows = whole_rows(args) if whole else []
    try:
        # time-major, whatever the file implies: a load option, never set on a Model
        model = load_from_args(args, batch_first=False)
    except ModelError as exc:  # no recurrent layers to load alone (or several)
        if not whole:
            raise
        reason = ("several recurrent nodes: pick one with --node NAME (rnnengine info "
                  "lists them)" if "candidate" in str(exc) else one_line(exc))
        rows.append(Row("recurrent layers alone", None, None, f"not compared: {reason}"))
        return report(args, None, rows)
    return report(args, model, rows + layer_rows(args, model))


def layer_rows(args: argparse.Namespace, model: Model) -> List[Row]:
    """The loaded recurrent layers against the file's own nodes in onnxruntime, and against
    onnxruntime and torch holding the loaded weights."""
    T, N, seed = args.seq_len, args.batch, args.seed
    ort = optional_import("onnxruntime")
    torch = optional_import("torch")
    if ort is None and torch is None:
        raise CommandError("verify needs onnxruntime or torch as a reference: "
                           "pip install \"rnnengine[onnxruntime]\"")
    rng = np.random.default_rng(seed)
    x = random_input(model, T, N, seed)
    state0 = model.zero_state(N)
    state0 = (tuple(rng.standard_normal(a.shape).astype(np.float32) * 0.5 for a in state0)
              if isinstance(state0, tuple) else rng.standard_normal(state0.shape).astype(np.float32) * 0.5)
    lengths = rng.integers(1, T + 1, N)
    lengths[0] = T
    rows = []
    if ort is not None:
        if is_onnx(args.model):
            rows.append(file_graph_check(args.model, args.node, not args.no_chain, model, T, N,
                                         seed))
        try:
            ref = OrtReference(model)
            y_ref, s_ref = ref.run(x, state0, lengths)
            y, s = model.run(x, state0, lengths=lengths)
            rows.append(Row("onnxruntime, weights as loaded, random state and lengths",
                            diff_scale(y, y_ref), diff_scale(s, s_ref)))
            if is_one_way(model.layers):
                y_full, s_full = ref.run(x, state0, None)
                stream = model.stream(batch=N)
                stream.state = state0
                ys = [stream.step(x[t]) for t in with_progress(T, "verify stream")]
                rows.append(Row(f"stream.step x{T} vs onnxruntime",
                                diff_scale(np.stack(ys), y_full),
                                diff_scale(stream.state, s_full), stream=True))
        except Unsupported as exc:
            rows.append(Row("onnxruntime", None, None, f"not compared: {exc}"))
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
            rows.append(Row(label, diff_scale(y, y_ref), diff_scale(s, s_ref)))
        except Unsupported as exc:
            rows.append(Row("torch", None, None, f"not compared: {exc}"))
        except ImportError as exc:  # safetensors, to read the file independently
            rows.append(Row(label, None, None, f"not compared: {exc}"))
        except (RuntimeError, KeyError) as exc:  # the file's state_dict does not fit the module
            rows.append(Row(label, None, None, f"not compared: {str(exc).splitlines()[0]}"))
    return rows


def file_graph_check(path: str, node_name: Optional[str], chain: bool, model: Model, T: int,
                     N: int, seed: int) -> Row:
    """The file's own recurrent node(s) run by onnxruntime (``interop.onnx_cut``: the nodes the
    loader took, with the chains that compute their weights), against the engine, on the
    same random x, initial states and full lengths.

    Independent of rnnengine's loader; the row says why not when this file cannot be cut
    that way."""
    import onnxruntime as ort

    label = "onnxruntime, the file's own node(s)"
    proto = onnx.load(path)
    chain_ = chain_nodes(proto, node_name, chain)
    if len(chain_) != model.num_layers:
        return Row(label, None, None, f"not compared: {len(chain_)} recurrent nodes for "
                   f"{model.num_layers} layer(s)")
    label = "onnxruntime, node " + ", ".join(repr(f.qualname) for f in chain_) + " from the file"
    try:
        cut = cut_chain(proto, chain_)
        session = ort.InferenceSession(cut.model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    except Unsupported as exc:
        return Row(label, None, None, f"not compared: {exc}")
    except Exception as exc:
        return Row(label, None, None,
                   f"not compared: onnxruntime cannot run the node(s) ({one_line(exc)})")
    types = {i.name: i.type for i in session.get_inputs()}
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16}.get(types[cut.x])
    if dtype is None:
        return Row(label, None, None, f"not compared: X is {types[cut.x]}")
    rng = np.random.default_rng(seed + 1)
    x = random_input(model, T, N, seed).astype(dtype)
    h_shape, c_shape = model.state_shapes(N)
    c_shape = c_shape or h_shape  # GRU and RNN: no cell state (slot 6 never occurs)
    D = model.num_directions
    feeds, h0, c0 = {cut.x: x}, [], []
    for slots in cut.states:
        # every initial state random (whatever the file computes it from), lengths full
        h = rng.standard_normal((D,) + tuple(h_shape[1:])).astype(np.float32) * 0.5
        c = rng.standard_normal((D,) + tuple(c_shape[1:])).astype(np.float32) * 0.5
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
    diff_y = diff_scale(y, Y.transpose(0, 2, 1, 3).reshape(T, N, -1))
    diffs = []
    for k, (h_name, c_name) in enumerate(cut.finals):
        if h_name:
            diffs += diff_scale(h[k * D:(k + 1) * D], got[h_name])
        if c is not None and c_name:
            diffs += diff_scale(c[k * D:(k + 1) * D], got[c_name])
    return Row(label, diff_y, diffs or None)


def whole_rows(args: argparse.Namespace) -> List[Row]:
    sess = load_session(args.model, args.precision)
    ort = ort_session(args.model)
    if ort is None:
        return [Row("onnxruntime, whole model", None, None, "not compared: onnxruntime is "
                    "not installed (pip install \"rnnengine[onnxruntime]\")", stream=True)]
    fixed = parse_feeds(sess, args.feed)
    pairs = parse_state(sess, args.pairs) or state_pairs(sess)
    dims = {d: args.batch for d in [batch_dim(sess, pairs)] if d is not None}
    dims.update(parse_dims(args.dim, sess))
    rng = np.random.default_rng(args.seed)
    feeds = {**fixed, **random_feeds(sess, fixed, dims, args.seq_len, rng)}
    names = [a.name for a in sess.get_outputs()]
    ours = dict(zip(names, hinted(sess.run, None, feeds)))
    theirs = dict(zip(names, ort_run(ort, feeds)))
    rows = [Row("onnxruntime, whole model: run, random feeds", *_split(ours, theirs, pairs))]
    hint = state_hint(sess, pairs)
    if hint:  # a stream would miss those inputs, or feed them something else than state
        how = ("no state pairs found automatically, yet inputs look like state" if not pairs
               else "inputs that look like state are left out of the automatic pairs")
        rows.append(Row("stream", None, None, f"not compared: {how}: {hint}; on the command "
                        "line: --state OUT=IN (repeatable)", stream=True))
    elif pairs:
        rows.append(_stream_row(sess, ort, fixed, pairs, dims, args, rng))
        rows.append(_pool_row(sess, ort, fixed, pairs, dims, args, rng))
    else:
        rows.append(_time_row(sess, feeds, theirs, args.seq_len))
    return rows


def _split(ours: Dict, theirs: Dict, pairs: Dict[str, str]) -> tuple:
    """(diffs of the model's own outputs, diffs of the state outputs or None)."""
    out = [d for n in ours if n not in pairs for d in diff_scale(ours[n], theirs[n])]
    state = [d for n in pairs for d in diff_scale(ours[n], theirs[n])]
    return out, state or None


def _worst(acc: Dict[str, tuple], name: str, ours, theirs) -> None:
    """Keep per output the largest difference and the largest reference value seen."""
    (d, s), = diff_scale(ours, theirs)
    old = acc.get(name, (0.0, 0.0))
    acc[name] = (max(old[0], d), max(old[1], s))


def _pair_label(pairs: Dict[str, str]) -> str:
    return ", ".join(f"{o} -> {i}" for o, i in pairs.items())


def _stream_row(sess, ort, fixed, pairs, dims, args, rng) -> Row:
    """``steps`` steps of sess.stream() (fixed feeds given once) against ORT's loop that
    feeds each step's state outputs to the next step."""
    steps = args.steps
    stream = sess.stream(state=pairs, feeds=fixed)
    ort_step, ort_state = ort_loop(ort, pairs, zero_state(sess, pairs, dims, args.seq_len))
    kept = [a.name for a in sess.get_outputs() if a.name not in pairs]
    acc: Dict[str, tuple] = {}
    for _ in with_progress(steps, "verify stream"):
        step_feeds = random_feeds(sess, fixed, dims, args.seq_len, rng, skip=pairs.values())
        ours = dict(zip(kept, hinted(stream.step, step_feeds)))
        theirs = ort_step({**fixed, **step_feeds})
        for n in kept:
            _worst(acc, n, ours[n], theirs[n])
    carried = stream.state
    state = [d for inp in pairs.values() for d in diff_scale(carried[inp], ort_state[inp])]
    return Row(f"onnxruntime, whole model: stream x{steps}, state {_pair_label(pairs)} "
               "fed back", list(acc.values()), state, stream=True)


def _pool_row(sess, ort, fixed, pairs, dims, args, rng) -> Row:
    """``POOL_STREAMS`` streams stepped together through sess.pool, each against its own
    ORT loop (feeds of one stream, its state fed back)."""
    k, steps = POOL_STREAMS, args.steps
    label = f"onnxruntime, whole model: pool of {k} streams x{steps}, each against its own loop"
    try:
        pool = sess.pool(k, state=pairs, feeds=fixed)
    except ValueError as exc:
        return Row(label, None, None, f"not compared: {one_line(exc)}", stream=True)
    one = {**dims, pool.batch_dim: 1} if pool.batch_dim else dims
    # inputs the pool does not stack per stream are given once, the same for every stream
    shared = {**fixed, **random_feeds(sess, fixed, one, args.seq_len, rng, skip=list(
        pool.in_axis) + list(pairs.values()))}
    if len(shared) > len(fixed):
        pool = sess.pool(k, state=pairs, feeds=shared)
    ids = [pool.open() for _ in range(k)]
    loops = [ort_loop(ort, pairs, zero_state(sess, pairs, one, args.seq_len)) for _ in ids]
    kept = [a.name for a in sess.get_outputs() if a.name not in pairs]
    acc: Dict[str, tuple] = {}
    for _ in with_progress(steps, "verify pool"):
        each = [random_feeds(sess, shared, one, args.seq_len, rng, skip=pairs.values())
                for _ in ids]
        ours = hinted(pool.step, ids, stack_feeds(pool, each))
        alone = [step({**shared, **f}) for (step, _), f in zip(loops, each)]
        for i, n in enumerate(kept):
            _worst(acc, n, ours[i], np.concatenate([a[n] for a in alone],
                                                    axis=pool.out_axis[i]))
    state = [d for sid, (_, carried) in zip(ids, loops) for inp, value in
             pool.state(sid).items() for d in diff_scale(value, carried[inp])]
    return Row(label, list(acc.values()), state, stream=True)


def _time_row(sess, feeds: Dict, theirs: Dict, T: int) -> Row:
    """A graph without state pairs streamed along its time axis in chunks of 1, 2, 3, ...
    steps (recurrent state carried between calls) against ORT's one run on all T steps;
    a time axis declared at a fixed size takes whole calls of it, so one call is compared."""
    label = f"onnxruntime, whole model: stream along time, {T} steps in chunks"
    try:
        axes = check_streamable(sess)
        stream = sess.stream()
    except ValueError as exc:
        return Row(label, None, None, f"not compared: {one_line(exc)}", stream=True)
    args = {a.name: a for a in sess.get_inputs()}
    fixed = {n: args[n].shape[ax] for n, ax in axes.items() if args[n].shape is not None
             and isinstance(args[n].shape[ax], int)}
    if fixed:
        T = next(iter(fixed.values()))
        label = (f"onnxruntime, whole model: stream, one call of {T} steps (the time axis "
                 f"of {', '.join(map(repr, fixed))} is fixed at {T})")
        bounds = [(0, T)]
    else:
        bounds, start, size = [], 0, 1
        while start < T:
            bounds.append((start, min(T, start + size)))
            start, size = start + size, size + 1
    names = [a.name for a in sess.get_outputs()]
    pieces = []
    for a, b in bounds:
        chunk = {n: (np.take(v, range(a, b), axis=axes[n]) if n in axes else v)
                 for n, v in feeds.items()}
        pieces.append(hinted(stream.step, chunk))
    diffs = []
    for k, name in enumerate(names):
        full = theirs[name]
        axis = next((ax for ax in range(full.ndim) if full.shape[ax] == T and all(
            p[k].ndim == full.ndim and p[k].shape[ax] == b - a
            for p, (a, b) in zip(pieces, bounds))), None)
        if axis is None and pieces[-1][k].shape == full.shape:
            # no time axis: a final state, which the last call must end on
            diffs += diff_scale(pieces[-1][k], full)
            continue
        if axis is None:
            return Row(label, None, None, f"not compared: output {name!r} has no time axis "
                       f"of {T} steps", stream=True)
        diffs += diff_scale(np.concatenate([p[k] for p in pieces], axis), full)
    return Row(label, diffs, None, stream=True)


def _ratio(diffs: Optional[list], atol: float, rtol: float) -> Optional[float]:
    """The largest max |diff| / (atol + rtol * max |reference|): at most 1 passes."""
    if diffs is None:
        return None
    return max((d / (atol + rtol * scale) if atol + rtol * scale > 0 else
                (0.0 if d == 0 else float("inf")) for d, scale in diffs), default=0.0)


def _fmt(diffs: Optional[list]) -> str:
    return "-" if diffs is None else f"{max((d for d, _ in diffs), default=0.0):.2e}"


def report(args: argparse.Namespace, model: Optional[Model], rows: list) -> int:
    """The table of differences; CommandError when an output exceeds its tolerance, a
    state output its looser one, or nothing (no stream, on a whole graph) was compared."""
    tol = (f"tolerance {args.tol:g} + {args.rtol:g} * max |reference| per output, state "
           f"outputs {STATE_SLACK:g}x that")
    if model is not None:
        print(f"rnnengine verify: {describe(model)}")
        print(f"random input x ({args.seq_len}, {args.batch}, {model.input_size}), seed "
              f"{args.seed}; {tol}")
    else:
        print(f"rnnengine verify: {args.model}, whole graph; seed {args.seed}; {tol}")
    out = [["reference", "max |diff| outputs", "max |diff| state", "of tolerance"]]
    worst, worst_state, failed = 0.0, 0.0, []
    for row in rows:
        r_out = _ratio(row.out, args.tol, args.rtol)
        r_state = _ratio(row.state, args.tol * STATE_SLACK, args.rtol * STATE_SLACK)
        used = [r for r in (r_out, r_state) if r is not None]
        share = "-" if not used else f"{100 * max(used):.0f}%"
        out.append([row.label, _fmt(row.out), _fmt(row.state), share]
                   + ([row.note] if row.note else []))
        worst = max(worst, r_out or 0.0)
        worst_state = max(worst_state, r_state or 0.0)
        if any(not np.isfinite(r) or r > 1 for r in used):
            failed.append(row.label)
    print(table([r + [""] * (5 - len(r)) for r in out]))
    compared = [row for row in rows if row.out is not None or row.state is not None]
    if not compared:
        raise CommandError("no reference could run this model (see the notes above)")
    streams = [row for row in rows if row.stream]
    if streams and not any(row.out is not None for row in streams):
        why = "; ".join(row.note.replace("not compared: ", "") for row in streams if row.note)
        raise CommandError(f"no stream compared: {why or 'see the notes above'}")
    largest = max(d for row in compared for diffs in (row.out, row.state) if diffs
                  for d, _ in diffs)
    shares = (f"outputs at {100 * worst:.0f}% of their tolerance, state at "
              f"{100 * worst_state:.0f}% of its")
    if failed:
        raise CommandError(f"largest difference {largest:.3e} exceeds tolerance ({shares}) "
                           f"in: {'; '.join(failed)}")
    print(f"largest difference {largest:.2e}: within tolerance ({shares})")
    return 0
