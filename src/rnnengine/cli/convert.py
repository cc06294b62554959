"""``rnnengine convert``: the model in rnnengine's own .npz format, read back before it is
reported written."""
from __future__ import annotations

import argparse
import os

from ._common import add_command, describe, load_from_args, load_model, write


def add_parser(sub) -> None:
    p = add_command(sub, "convert", HELP, cmd_convert)
    p.add_argument("out", metavar="OUT.npz")


HELP = "write the model in rnnengine's own .npz format"


def cmd_convert(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    write(out, model.save)
    again = load_model(out)  # proves the file reads back before we say it was written
    print(f"wrote {out} ({os.path.getsize(out):,} bytes): {describe(again)}")
    return 0

