"""``rnnengine run``: the whole ONNX graph on inputs from .npy files (``-i name=x.npy``),
its outputs written to an .npz (or one .npy); ``--recurrent-only``, and every weights file,
runs the recurrent layers on a whole sequence, y (and the state) written back."""
from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np

from ..runtime.model import Model
from ._common import (CommandError, add_command, existing_file, load_array, load_from_args,
                      write)
from ._session import (is_onnx, load_session, parse_dims, parse_feeds, parse_inputs,
                       state_pairs, whole_model, whole_model_args, zero_state)


def add_parser(sub) -> None:
    p = add_command(sub, "run", HELP, cmd_run)
    p.add_argument("--input", "-i", required=True, action="append", metavar="[NAME=]X.npy",
                   help="an input as .npy: NAME=FILE.npy for each input of an ONNX graph "
                   "(FILE.npy alone when it has one input besides its state inputs and --feed "
                   "inputs); repeatable. --recurrent-only and "
                   "weights files: x, (T, N, I) or (T, I)")
    p.add_argument("--output", "-o", required=True,
                   help="where to write the outputs: an .npz holding every output by name, "
                   "or an .npy when the graph has one output; --recurrent-only: y (.npy)")
    p.add_argument("--lengths", help="per-batch lengths: '5,3,7' or a .npy of N integers")
    p.add_argument("--batch-first", action="store_true", help="x is (N, T, I); y is (N, T, ·)")
    p.add_argument("--state", help="also write the final state (h[, c]) to this .npz")
    p.add_argument("--initial-state", metavar="STATE.npz",
                   help="start from this state (h[, c] as --state writes it; default zeros): "
                   "a long stream runs in pieces, each from the last one's --state")
    whole_model_args(p, "sizes the zero state of state inputs not given (default: as the "
                     "given inputs imply, else 1)")


HELP = ("run the whole model on inputs from .npy files and write its outputs (.npz/.npy); "
        "--recurrent-only: the recurrent layers on a sequence")


def parse_lengths(text: Optional[str]) -> Optional[np.ndarray]:
    """'3,5,2' or a path to a .npy of integers -> int array, or None."""
    if text is None:
        return None
    if os.path.exists(text) or text.endswith(".npy"):
        arr = load_array(text, "--lengths")
    else:
        try:
            arr = np.array([int(v) for v in text.split(",") if v.strip()], np.int64)
        except ValueError:
            raise CommandError(f"--lengths must be comma-separated integers or a .npy file; "
                               f"got {text!r}") from None
    return arr


def read_state(path: str, model: Model):
    """An .npz with h (and c for an LSTM), as ``--state`` writes; Model.run checks shapes."""
    existing_file(path)
    names = ("h", "c") if model.kind == "lstm" else ("h",)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [n for n in names if n not in archive.files]
            if missing:
                raise CommandError(f"{path}: --initial-state needs arrays {list(names)} for an "
                                   f"{model.kind.upper()}; {missing} missing (has "
                                   f"{archive.files})")
            arrays = [archive[n] for n in names]
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(f"{path}: cannot read --initial-state as an .npz: {exc}") from exc
    return tuple(arrays) if model.kind == "lstm" else arrays[0]


def cmd_run(args: argparse.Namespace) -> int:
    return run_whole(args) if whole_model(args) else run_layers(args)


def run_layers(args: argparse.Namespace) -> int:
    """The recurrent layers on one sequence x; y (and with --state the final state)
    written."""
    if len(args.input) != 1 or (is_onnx(args.model) and "=" in args.input[0]
                                and not os.path.exists(args.input[0])):
        raise CommandError("the recurrent layers take one input: -i x.npy")
    if args.feed or args.dim:
        raise CommandError("--feed and --dim name inputs of a whole ONNX graph; the "
                           "recurrent layers take -i x.npy")
    args.input = args.input[0]
    # --batch-first is a load option: the layout is decided here, never set on a Model
    model = load_from_args(args, batch_first=True if args.batch_first else None)
    x = load_array(args.input, "--input")
    lengths = parse_lengths(args.lengths)
    state0 = None if args.initial_state is None else read_state(args.initial_state, model)
    y, state = model.run(x, state0, lengths=lengths)
    write(args.output, np.save, y)
    shapes = f"y {y.shape}"
    if args.state:
        arrays = {"h": state[0], "c": state[1]} if isinstance(state, tuple) else {"h": state}
        write(args.state, np.savez, **arrays)
        shapes += ", state " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    print(f"{args.input} x {x.shape} -> {args.output} ({shapes})")
    return 0


def run_whole(args: argparse.Namespace) -> int:
    """The whole graph through InferenceSession: every input from -i/--feed; a state
    input (one that stream() pairs with an output) not given starts at zero."""
    sess = load_session(args.model, args.precision)
    fixed = parse_feeds(sess, args.feed)
    pairs = state_pairs(sess)
    feeds = parse_inputs(sess, args.input, list(fixed) + list(pairs.values()))
    for name, value in fixed.items():
        if name in feeds:
            raise CommandError(f"input {name!r} given both with -i and --feed")
        feeds[name] = value
    outputs = [a.name for a in sess.get_outputs()]
    as_npz = args.output.lower().endswith(".npz")
    if not as_npz and len(outputs) != 1:
        raise CommandError(f"the model has {len(outputs)} outputs {outputs}: write them to "
                           "an .npz (-o out.npz)")
    zeros = {n: v for n, v in zero_state(sess, pairs, _sizes(sess, feeds, args),
                                         1).items() if n not in feeds}
    missing = [a.name for a in sess.get_inputs() if a.name not in feeds and a.name not in zeros]
    if missing:
        raise CommandError(f"missing input{'s' * (len(missing) > 1)} {missing}: give each "
                           "with -i NAME=FILE.npy (or --feed NAME=VALUE)")
    results = sess.run(None, {**feeds, **zeros})
    if as_npz:
        write(args.output, np.savez, **dict(zip(outputs, results)))
    else:
        write(args.output, np.save, results[0])
    given = ", ".join(f"{n} {tuple(v.shape)}" for n, v in feeds.items())
    if zeros:
        given += ", zero state " + ", ".join(f"{n} {tuple(v.shape)}" for n, v in zeros.items())
    written = ", ".join(f"{n} {tuple(r.shape)}" for n, r in zip(outputs, results))
    print(f"{given} -> {args.output} ({written})")
    return 0


def _sizes(sess, feeds: dict, args: argparse.Namespace) -> dict:
    """Sizes of the symbolic dims: --dim, else as the given inputs have them."""
    sizes = {}
    for a in sess.get_inputs():
        value = feeds.get(a.name)
        if value is not None and a.shape is not None and value.ndim == len(a.shape):
            for d, n in zip(a.shape, value.shape):
                if isinstance(d, str):
                    sizes.setdefault(d, n)
    sizes.update(parse_dims(args.dim, sess))
    return sizes
