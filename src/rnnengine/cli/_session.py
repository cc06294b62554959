"""What the whole-model commands share (run, verify, bench on an ``.onnx`` file through
``rnnengine.InferenceSession``): the session loaded with one-line errors, feeds named on the
command line (``-i name=file.npy``, ``--feed name=value``, ``--dim name=size``), random
feeds that respect each input's dtype and shape, the feeds of a pool's streams stacked, and
ONNX Runtime's session on the file, stepped with the state fed back by hand."""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..runtime.session import InferenceSession
from ._common import CommandError, load_array, one_line, optional_import, read_model

# Options that pick recurrent layers: they mean --recurrent-only.
PICK_LAYERS = ("node", "no_chain", "nonlinearity")
# Options of the recurrent-layers run that a whole graph would ignore: refused without it.
RECURRENT_ONLY_OPTIONS = ("lengths", "batch_first", "state", "initial_state")


def is_onnx(path: str) -> bool:
    return path.lower().endswith(".onnx")


def whole_model_args(p: argparse.ArgumentParser, dims_help: str) -> None:
    """--feed / --dim / --recurrent-only, for the commands that run the whole graph."""
    p.add_argument("--feed", action="append", default=[], metavar="NAME=VALUE",
                   help="fix an input to a value: a number or comma-separated numbers, cast "
                   "to the input's dtype (e.g. --feed sr=16000); repeatable")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of a symbolic dimension of the inputs (e.g. --dim "
                   f"sequence=512); {dims_help}; repeatable")
    p.add_argument("--recurrent-only", action="store_true",
                   help="on an .onnx file: the recurrent layers alone, as loaded by "
                   "rnnengine.load (the behaviour before whole-model support; --node implies "
                   "it)")


def whole_model(args: argparse.Namespace) -> bool:
    """True when the command should run the whole ONNX graph: not --recurrent-only nor an
    option that picks recurrent layers (--node), refusing the recurrent-layer options that
    the whole graph would ignore."""
    if not is_onnx(args.model) or args.recurrent_only or any(
            getattr(args, o, None) not in (None, False) for o in PICK_LAYERS):
        return False
    given = ["--" + o.replace("_", "-") for o in RECURRENT_ONLY_OPTIONS
             if getattr(args, o, None) not in (None, False)]
    if given:
        raise CommandError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                           "the recurrent layers alone: add --recurrent-only (without it, "
                           "the whole graph runs)")
    return True


def load_session(path: str, precision: Optional[str] = None) -> InferenceSession:
    """The whole graph's session, with every failure turned into one line naming the file."""
    return read_model(path, lambda: InferenceSession(path, precision=precision or "fp32"))


def _split(text: str, option: str) -> tuple:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise CommandError(f"{option} takes NAME=VALUE; got {text!r}")
    return name, value


def _check_name(sess: InferenceSession, name: str, option: str):
    args = {a.name: a for a in sess.get_inputs()}
    if name not in args:
        raise CommandError(f"{option}: {name!r} is not an input of the model; the inputs are "
                           f"{list(args)}")
    return args[name]


def parse_feeds(sess: InferenceSession, texts: Sequence[str]) -> Dict[str, np.ndarray]:
    """--feed name=16000 / name=1,2,3 -> {name: array in the input's dtype} (0-d for one
    number when the input's rank is 0 or unknown, else reshaped to a fully known shape)."""
    feeds = {}
    for text in texts:
        name, value = _split(text, "--feed")
        arg = _check_name(sess, name, "--feed")
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            raise CommandError(f"--feed {name}: expected numbers, got {value!r}") from None
        dtype = arg.dtype if arg.dtype is not None else np.float32
        arr = np.array(numbers if len(numbers) > 1 else numbers[0]).astype(dtype)
        shape = arg.shape
        if shape is not None and all(isinstance(d, int) for d in shape):
            if int(np.prod(shape)) != arr.size:
                raise CommandError(f"--feed {name}: the input has shape {tuple(shape)} "
                                   f"({int(np.prod(shape))} values); got {arr.size}")
            arr = arr.reshape(shape)
        feeds[name] = arr
    return feeds


def parse_inputs(sess: InferenceSession, texts: Sequence[str],
                 others: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """-i name=file.npy; a bare file.npy goes to the one input that is not in ``others``
    (state inputs, --feed inputs)."""
    feeds = {}
    names = [a.name for a in sess.get_inputs()]
    free = [n for n in names if n not in others]
    for text in texts:
        if text.partition("=")[0] in names:
            name, path = _split(text, "--input")
        elif len(free) == 1:
            name, path = free[0], text
        else:
            raise CommandError(f"--input {text!r}: the model has inputs {names}; name each "
                               "one: -i NAME=FILE.npy")
        if name in feeds:
            raise CommandError(f"input {name!r} given twice")
        feeds[name] = load_array(path, f"input {name!r}")
    return feeds


def dynamic_dims(sess: InferenceSession) -> List[str]:
    """The names ``--dim`` takes: the inputs' symbolic dims, and ``INPUT[AXIS]`` for each
    dynamic dim the file leaves unnamed."""
    names: Dict[str, None] = {}
    for a in sess.get_inputs():
        for k, d in enumerate(a.shape or []):
            if not isinstance(d, int):
                names[d if isinstance(d, str) else unnamed_dim(a, k)] = None
    return list(names)


def parse_dims(texts: Sequence[str], sess: InferenceSession) -> Dict[str, int]:
    dims = {}
    known = dynamic_dims(sess)
    for text in texts:
        name, value = _split(text, "--dim")
        if name not in known:
            raise CommandError(f"--dim {name}: the model has no dynamic dim of that name; "
                               f"its dynamic dims: {', '.join(known) or 'none'}")
        try:
            dims[name] = int(value)
        except ValueError:
            raise CommandError(f"--dim {name}: expected an integer, got {value!r}") from None
        if dims[name] < 1:
            raise CommandError(f"--dim {name}: must be positive, got {value}")
    return dims


def parse_state(sess: InferenceSession, texts: Sequence[str]) -> Dict[str, str]:
    """--state out=in -> {output: input}: a state pair named on the command line."""
    pairs = {}
    outputs = [a.name for a in sess.get_outputs()]
    for text in texts:
        out, inp = _split(text, "--state")
        if out not in outputs:
            raise CommandError(f"--state {text}: {out!r} is not an output of the model; the "
                               f"outputs are {outputs}")
        _check_name(sess, inp, "--state")
        pairs[out] = inp
    return pairs


def state_pairs(sess: InferenceSession) -> Dict[str, str]:
    """The pairs ``stream()`` finds; {} when the graph has none or they are ambiguous."""
    try:
        return sess.state_pairs()
    except ValueError:
        return {}


def unnamed_dim(arg, axis: int) -> str:
    """How ``--dim`` names a dynamic dim the file leaves unnamed: ``INPUT[AXIS]``."""
    return f"{arg.name}[{axis}]"


def shape_of(arg, dims: Dict[str, int], default: int) -> tuple:
    """An input's shape: fixed dims as declared, symbolic ones from ``dims`` (or
    ``default``), unnamed ones from ``dims`` under ``INPUT[AXIS]``, else 1 (nothing names
    them, and 1 fits a batch or a step)."""
    return tuple(d if isinstance(d, int) else dims.get(d, default) if isinstance(d, str)
                 else dims.get(unnamed_dim(arg, k), 1) for k, d in enumerate(arg.shape or []))


def random_feed(arg, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Standard normal * 0.5 for floats, 0 or 1 for integers (ids of an embedding, say),
    random for bools."""
    dtype = arg.dtype if arg.dtype is not None else np.dtype(np.float32)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 0.5).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 2, shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    raise CommandError(f"input {arg.name!r} is {arg.type}: give it with --feed")


def random_feeds(sess: InferenceSession, fixed: Dict[str, np.ndarray], dims: Dict[str, int],
                 default: int, rng: np.random.Generator,
                 skip: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """One random value per input that is neither fixed nor in ``skip``."""
    return {a.name: random_feed(a, shape_of(a, dims, default), rng)
            for a in sess.get_inputs() if a.name not in fixed and a.name not in skip}


def zero_state(sess: InferenceSession, pairs: Dict[str, str], dims: Dict[str, int],
               default: int) -> Dict[str, np.ndarray]:
    args = {a.name: a for a in sess.get_inputs()}
    return {i: np.zeros(shape_of(args[i], dims, default), args[i].dtype or np.float32)
            for i in pairs.values()}


def batch_dim(sess: InferenceSession, pairs: Dict[str, str]) -> Optional[str]:
    """The dim the session's pool stacks streams on (None: no batch dim / cannot pool)."""
    try:
        return sess.pool(1, state=pairs or None).batch_dim
    except (ValueError, TypeError):
        return None


def ort_session(path: str, threads: Optional[int] = None):
    """ONNX Runtime's session on the file, or None when onnxruntime is not installed."""
    ort = optional_import("onnxruntime")
    if ort is None:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CommandError(f"onnxruntime cannot load {path}: {one_line(exc)}") from exc


FEED_HINT = ("fix inputs with --feed NAME=VALUE and sizes with --dim NAME=SIZE (a dim the file "
             "leaves unnamed: --dim INPUT[AXIS]=SIZE, e.g. --dim input[1]=512)")


def ort_run(session, feeds: Dict[str, np.ndarray], names: Optional[List[str]] = None) -> list:
    """ORT's run with its failure named as a hint to the feed options."""
    try:
        return session.run(names, feeds)
    except Exception as exc:
        raise CommandError(f"onnxruntime cannot run the model on these feeds "
                           f"({one_line(exc)}); {FEED_HINT}") from exc


def ort_loop(session, pairs: Dict[str, str], zero: Dict[str, np.ndarray]):
    """ONNX Runtime stepped the way a graph's authors stream it: one run per step, each
    step's state outputs fed back by hand as the next step's state inputs (``pairs``: output
    -> input; ``zero``: the first state). -> (step(feeds) -> {output: value}, the state it
    carries, updated in place)."""
    names = [o.name for o in session.get_outputs()]
    state = dict(zero)

    def step(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        outs = dict(zip(names, ort_run(session, {**feeds, **state})))
        state.update({inp: outs[out] for out, inp in pairs.items()})
        return outs
    return step, state


def stack_feeds(pool, each: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The feeds of several streams stacked on the axis the pool takes each input on
    (KeyError: an input the pool does not stack)."""
    return {n: np.concatenate([f[n] for f in each], axis=pool.in_axis[n]) for n in each[0]}


def hinted(call, *args):
    """rnnengine's own run/step: a ValueError about the feeds gets the same hint."""
    try:
        return call(*args)
    except ValueError as exc:
        raise CommandError(f"rnnengine cannot run the model on these feeds "
                           f"({one_line(exc)}); {FEED_HINT}") from exc


def fmt_shape(shape) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
