"""What every command shares: reading a model or an array and writing a file with one-line
errors, the model's one-line description, progress bar, tables, optional imports, and the
command-line arguments that name a model."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from ..errors import ModelError
from ..core.precision import PRECISIONS
from ..runtime.load import load
from ..runtime.model import Model

DIRECTION_NAMES = {1: "forward", 2: "bidirectional"}
Read = TypeVar("Read")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label, self.done = max(int(total), 1), label, 0
        self.stream = stream if stream is not None else sys.stderr
        self.active = bool(getattr(self.stream, "isatty", lambda: False)())

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        if self.active:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.active:  # erase the bar so the results start on a clean line
            self.stream.write("\r" + " " * (len(self.label) + 50) + "\r")
            self.stream.flush()


def with_progress(n: int, label: str):
    """``range(n)`` drawing a progress bar that advances after each step, erased at the end."""
    progress = Progress(n, label)
    try:
        for i in range(n):
            yield i
            progress.advance()
    finally:
        progress.close()


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def existing_file(path: str) -> str:
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CommandError(f"{path}: is a directory, expected a model file")
    return path


def read_model(path: str, read: Callable[[], Read]) -> Read:
    """``read()`` of the model file at ``path``, with every failure turned into one line
    naming the file: the typed errors as they are (file faults are ModelError, a bad option
    TypeError or ValueError), anything else a hostile file still provokes as a ModelError."""
    existing_file(path)
    try:
        return read()
    except (ModelError, ValueError, TypeError):
        raise
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise ModelError(f"{path}: cannot read model ({type(exc).__name__}): {exc}") from exc


def load_model(path: str, node: Optional[str] = None, **options) -> Model:
    """``rnnengine.load`` with every failure turned into one line naming the file."""
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return read_model(path, lambda: load(path, node=node, **options))
    except ModelError as exc:
        if "node=" in str(exc) and node is None:  # the API's wording; say it the CLI's way
            raise ModelError(f"{exc} (on the command line: --node NAME)") from exc
        raise


def write(path: str, save: Callable[..., object], /, *args, **kwargs) -> None:
    """``save(path, *args, **kwargs)`` (np.save, np.savez, Model.save), a failure to write
    as one line naming the file."""
    try:
        save(path, *args, **kwargs)
    except OSError as exc:
        raise CommandError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def load_array(path: str, what: str) -> np.ndarray:
    existing_file(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CommandError(f"{path}: cannot read {what} as a .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise CommandError(f"{path}: expected a .npy array for {what}, got an .npz archive")
    return arr


def describe(model: Model) -> str:
    directions = DIRECTION_NAMES[model.num_directions]
    if model.num_directions == 1 and all(layer.reverse for layer in model.layers):
        directions = "reverse"
    layers = f"{model.num_layers} layer{'s' if model.num_layers > 1 else ''}"
    proj = f", projection {model.proj_size}" if model.proj_size else ""
    return (f"{model.kind.upper()}, {layers}, {directions}, input {model.input_size}, "
            f"hidden {model.hidden_size}{proj} ({model.num_parameters:,} parameters)")


def random_input(model: Model, T: int, N: int, seed: int) -> np.ndarray:
    """x (T, N, I) float32, standard normal."""
    return np.random.default_rng(seed).standard_normal((T, N, model.input_size)).astype(np.float32)


def optional_import(name: str):
    """The module, or None when it is not installed."""
    try:
        module = __import__(name)
    except ImportError:
        return None
    if name == "torch":  # its note that projections bypass oneDNN is noise here
        warnings.filterwarnings("ignore", message=".*oneDNN", category=UserWarning)
    return module


def max_diff(a, b) -> float:
    """Largest absolute difference between two outputs or two states of the same structure."""
    if isinstance(a, tuple):
        return max(max_diff(u, v) for u, v in zip(a, b))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise CommandError(f"shape mismatch: rnnengine {a.shape} vs reference {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def diff_scale(a, b) -> List[Tuple[float, float]]:
    """(largest |a - b|, largest |b|) per array of two outputs or states of the same
    structure: the difference and the scale a relative tolerance applies to."""
    if isinstance(a, tuple):
        return [d for u, v in zip(a, b) for d in diff_scale(u, v)]
    scale = float(np.max(np.abs(np.asarray(b, np.float64)))) if np.size(b) else 0.0
    return [(max_diff(a, b), scale)]


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def add_command(sub, name: str, help_text: str, func, takes_model: bool = True):
    """The subcommand's parser, with the model arguments unless it takes none."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=func)
    if takes_model:
        model_args(p)
    return p


def model_args(p: argparse.ArgumentParser) -> None:
    """The arguments that name a model and how to read it (every command but demo)."""
    p.add_argument("model", metavar="MODEL", help="an .onnx model, or weights: .npz, "
                   ".safetensors, .pt (a PyTorch state_dict)")
    p.add_argument("--node", help="the recurrent node (ONNX) or weight group (.npz) to "
                   "load, when the file has several; on a chain of ONNX nodes the layers "
                   "after it are loaded too (rnnengine info shows the chains)")
    p.add_argument("--nonlinearity", choices=("tanh", "relu"),
                   help="for RNN weights in a file that does not record it (default tanh)")
    p.add_argument("--no-chain", action="store_true",
                   help="with --node on an ONNX chain: that node alone, not the layers an "
                   "exporter chained after it (load(..., chain=False))")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="weights of the recurrent layers: fp32 (exact, the default), fp16, "
                   "bf16 or int8 (docs/precision.md)")


def load_from_args(args: argparse.Namespace, **options) -> Model:
    """The model the arguments of ``model_args`` name (``options``: more load options)."""
    return load_model(args.model, args.node, nonlinearity=args.nonlinearity,
                      chain=False if args.no_chain else None, precision=args.precision,
                      **options)
