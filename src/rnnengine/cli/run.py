"""``rnnengine run``: a whole sequence from a .npy file, y (and the state) written back."""
from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np

from ..model import Model
from ._common import CommandError, add_command, existing_file, load_array, load_from_args


def add_parser(sub) -> None:
    p = add_command(sub, "run", HELP, cmd_run)
    p.add_argument("--input", "-i", required=True, help="x as .npy: (T, N, I), or (T, I)")
    p.add_argument("--output", "-o", required=True, help="where to write y (.npy)")
    p.add_argument("--lengths", help="per-batch lengths: '5,3,7' or a .npy of N integers")
    p.add_argument("--batch-first", action="store_true", help="x is (N, T, I); y is (N, T, ·)")
    p.add_argument("--state", help="also write the final state (h[, c]) to this .npz")
    p.add_argument("--initial-state", metavar="STATE.npz",
                   help="start from this state (h[, c] as --state writes it; default zeros): "
                   "a long stream runs in pieces, each from the last one's --state")


HELP = "run a whole sequence from a .npy file and write the output as .npy"


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
    # --batch-first is a load option: the layout is decided here, never set on a Model
    model = load_from_args(args, batch_first=True if args.batch_first else None)
    x = load_array(args.input, "--input")
    lengths = parse_lengths(args.lengths)
    state0 = None if args.initial_state is None else read_state(args.initial_state, model)
    y, state = model.run(x, state0, lengths=lengths)
    try:
        np.save(args.output, y)
    except OSError as exc:
        raise CommandError(f"{args.output}: cannot write: {exc.strerror or exc}") from exc
    shapes = f"y {y.shape}"
    if args.state:
        arrays = {"h": state[0], "c": state[1]} if isinstance(state, tuple) else {"h": state}
        try:
            np.savez(args.state, **arrays)
        except OSError as exc:
            raise CommandError(f"{args.state}: cannot write: {exc.strerror or exc}") from exc
        shapes += ", state " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    print(f"{args.input} x {x.shape} -> {args.output} ({shapes})")
    return 0

