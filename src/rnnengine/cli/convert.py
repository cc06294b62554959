"""``rnnengine convert``: the model in rnnengine's own .npz format, read back before it is
reported written."""
from __future__ import annotations

import argparse
import os

from ._common import CommandError, describe, load_from_args, load_model, model_args


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help=HELP, description=HELP)
    p.set_defaults(func=cmd_convert)
    model_args(p)
    p.add_argument("out", metavar="OUT.npz")


HELP = "write the model in rnnengine's own .npz format"


def cmd_convert(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    try:
        model.save(out)
    except OSError as exc:
        raise CommandError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    again = load_model(out)  # proves the file reads back before we say it was written
    print(f"wrote {out} ({os.path.getsize(out):,} bytes): {describe(again)}")
    return 0

