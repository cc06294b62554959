"""The ``rnnengine`` command line: info, run, convert, bench, verify, demo, serve (a module
each).

Every failure ends as one line on stderr and a non-zero exit status (1 for errors, 2 for
usage), never a traceback (``RNNENGINE_TRACEBACK=1`` shows one). onnxruntime and torch are
imported only by the subcommands that compare against them (bench, verify), and only if
installed. Long measurements draw a progress bar on stderr when it is a terminal.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import ModelError
from . import bench, convert, demo, info, run, serve, verify
from ._common import CommandError, one_line

COMMANDS = (info, run, convert, bench, verify, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnengine",
        description="CPU inference for LSTM/GRU/RNN models exported from PyTorch, Keras or ONNX.")
    parser.add_argument("--version", action="version", version=f"rnnengine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: ``rnnengine COMMAND ...``. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `rnnengine demo | head`: the reader left; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CommandError, ModelError, ValueError, TypeError, OSError) as exc:
        if os.environ.get("RNNENGINE_TRACEBACK"):
            raise
        sys.stdout.flush()
        print(f"rnnengine {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rnnengine {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in rnnengine: still one line, with a way to see more
        if os.environ.get("RNNENGINE_TRACEBACK"):
            raise
        print(f"rnnengine {args.command}: internal error: {type(exc).__name__}: "
              f"{one_line(exc)} (RNNENGINE_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1

