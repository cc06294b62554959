"""The ``rnnengine`` command line: info, run, convert, bench, verify, demo.

Every failure ends as one line on stderr and a non-zero exit status (1 for errors, 2 for
usage), never a traceback (``RNNENGINE_TRACEBACK=1`` shows one). onnxruntime and torch are
imported only by the subcommands that compare against them (bench, verify), and only if
installed. Long measurements draw a progress bar on stderr when it is a terminal.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from importlib import resources
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import ModelError
from .gate_order import from_onnx
from .model import Model

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
DIRECTION_NAMES = {1: "forward", 2: "bidirectional"}


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class Unsupported(Exception):
    """A reference (onnxruntime, torch) cannot express this model; the reason is shown."""


# --- small utilities -----------------------------------------------------------------------

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


def fmt_time(seconds: float) -> str:
    """1.2e-5 -> '12.0 us', 0.0031 -> '3.10 ms'."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


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


def load_model(path: str, node: Optional[str] = None, **options) -> Model:
    """``rnnengine.load`` with every failure turned into one line naming the file."""
    existing_file(path)
    from .loaders import load
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return load(path, node=node, **options)
    except ModelError as exc:
        if "node=" in str(exc) and node is None:  # the API's wording; say it the CLI's way
            raise ModelError(f"{exc} (on the command line: --node NAME)") from exc
        raise
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (TypeError, ValueError):  # a bad option (the loader reports file faults as ModelError)
        raise
    except Exception as exc:  # anything a hostile file still provokes: name it, one line
        raise ModelError(f"{path}: cannot read model ({type(exc).__name__}): {exc}") from exc


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


def onnx_recurrent_nodes(path: str) -> List[Tuple[str, str, str]]:
    """Every LSTM/GRU/RNN node of an ONNX file, subgraphs included:
    (name, op_type, where) with ``where`` '' for the main graph."""
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model: {exc}") from exc
    found = []

    def walk(graph, where: str) -> None:
        for node in graph.node:
            if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx"):
                found.append((node.name, node.op_type, where))
            for attr in node.attribute:
                inside = f"{where}/{node.op_type} {node.name!r}".lstrip("/")
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g, inside)
                for sub in attr.graphs:
                    walk(sub, inside)

    walk(proto.graph, "")
    return found


def random_input(model: Model, T: int, N: int, seed: int) -> np.ndarray:
    """x (T, N, I) float32, standard normal."""
    return np.random.default_rng(seed).standard_normal((T, N, model.input_size)).astype(np.float32)


# --- references: the same weights in onnxruntime and torch ---------------------------------

ONNX_ACTIVATION_NAMES = {
    "relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "affine": "Affine",
    "leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "scaledtanh": "ScaledTanh",
    "hardsigmoid": "HardSigmoid", "elu": "Elu", "softsign": "Softsign", "softplus": "Softplus",
}


def onnx_graph_for(model: Model):
    """The model as an ONNX graph of LSTM/GRU/RNN nodes (one per layer, joined by the same
    Transpose+Reshape glue PyTorch exports), with the loaded weights.

    Inputs: X (T, N, I), sequence_lens (N,) int32, h0_k (D, N, Hout) [and c0_k] per layer k.
    Outputs: y (T, N, D*Hout), hN_k [and cN_k] per layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if model.proj_size:
        raise Unsupported("an LSTM projection (proj_size) has no ONNX equivalent")
    inits, nodes, inputs, outputs = [], [], [], []
    f32 = TensorProto.FLOAT
    inputs.append(helper.make_tensor_value_info("X", f32, ["T", "N", model.input_size]))
    inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["N"]))
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "flat_shape"))
    x_name = "X"
    for k, layer in enumerate(model.layers):
        a = layer.to_onnx()
        D, H, Hout = layer.num_directions, layer.hidden_size, layer.output_size
        names = [f"W_{k}", f"R_{k}", f"B_{k}"]
        inits += [numpy_helper.from_array(a["W"], names[0]),
                  numpy_helper.from_array(a["R"], names[1]),
                  numpy_helper.from_array(a["B"], names[2])]
        node_inputs = [x_name] + names + ["sequence_lens", f"h0_{k}"]
        inputs.append(helper.make_tensor_value_info(f"h0_{k}", f32, [D, "N", Hout]))
        node_outputs = [f"Y_{k}", f"hN_{k}"]
        outputs.append(helper.make_tensor_value_info(f"hN_{k}", f32, [D, "N", Hout]))
        if layer.kind == "lstm":
            node_inputs.append(f"c0_{k}")
            inputs.append(helper.make_tensor_value_info(f"c0_{k}", f32, [D, "N", H]))
            node_outputs.append(f"cN_{k}")
            outputs.append(helper.make_tensor_value_info(f"cN_{k}", f32, [D, "N", H]))
            if layer.P is not None:
                inits.append(numpy_helper.from_array(layer.P, f"P_{k}"))
                node_inputs.append(f"P_{k}")
        attrs = {"hidden_size": H, "direction": a["direction"],
                 "activations": [ONNX_ACTIVATION_NAMES[name] for name in a["activations"]]}
        for key in ("activation_alpha", "activation_beta"):
            if a[key]:
                attrs[key] = a[key]
        if a["clip"] is not None:
            attrs["clip"] = a["clip"]
        if layer.kind == "lstm" and a["input_forget"]:
            attrs["input_forget"] = 1
        if layer.kind == "gru":
            attrs["linear_before_reset"] = a["linear_before_reset"]
        nodes.append(helper.make_node(layer.kind.upper(), node_inputs, node_outputs,
                                      name=f"layer{k}", **attrs))
        last = k == model.num_layers - 1
        nodes.append(helper.make_node("Transpose", [f"Y_{k}"], [f"Yt_{k}"], perm=[0, 2, 1, 3]))
        x_name = "y" if last else f"X_{k + 1}"
        nodes.append(helper.make_node("Reshape", [f"Yt_{k}", "flat_shape"], [x_name]))
    outputs.insert(0, helper.make_tensor_value_info("y", f32, ["T", "N", model.output_size]))
    graph = helper.make_graph(nodes, "rnnengine_reference", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def state_layers(model: Model, state, k: int):
    """Slice layer k's (h, c) out of a (L*D, N, ·) state; c is None for GRU/RNN."""
    D = model.num_directions
    h, c = state if isinstance(state, tuple) else (state, None)
    return h[k * D:(k + 1) * D], (None if c is None else c[k * D:(k + 1) * D])


class OrtReference:
    """The model in an onnxruntime InferenceSession (CPU provider, ``threads`` intra-op)."""

    def __init__(self, model: Model, threads: int = 1):
        import onnxruntime as ort

        self.model = model
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_graph_for(model).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, x: np.ndarray, state, lengths) -> dict:
        T, N = x.shape[0], x.shape[1]
        model = self.model
        if state is None:
            state = model.zero_state(N)
        feeds = {"X": x, "sequence_lens": np.full(N, T, np.int32) if lengths is None
                 else np.asarray(lengths, np.int32)}
        for k in range(model.num_layers):
            h, c = state_layers(model, state, k)
            feeds[f"h0_{k}"] = np.ascontiguousarray(h, np.float32)
            if c is not None:
                feeds[f"c0_{k}"] = np.ascontiguousarray(c, np.float32)
        return feeds

    def run(self, x: np.ndarray, state=None, lengths=None):
        """x (T, N, I) -> (y (T, N, D*Hout), state as Model.run returns it)."""
        out = dict(zip(self.output_names, self.session.run(None, self.feeds(x, state, lengths))))
        L = self.model.num_layers
        h = np.concatenate([out[f"hN_{k}"] for k in range(L)], axis=0)
        if self.model.kind == "lstm":
            return out["y"], (h, np.concatenate([out[f"cN_{k}"] for k in range(L)], axis=0))
        return out["y"], h


TORCH_DEFAULT_ACTIVATIONS = {"lstm": ("sigmoid", "tanh", "tanh"), "gru": ("sigmoid", "tanh")}


def torch_module_for(model: Model):
    """An equivalent ``torch.nn.LSTM/GRU/RNN`` holding the loaded weights (float32, eval)."""
    import torch

    layers = model.layers
    first = layers[0]
    if any(layer.reverse for layer in layers):
        raise Unsupported("a reverse-only direction has no PyTorch module")
    if any(layer.clip is not None or layer.input_forget for layer in layers):
        raise Unsupported("clip / input_forget have no PyTorch equivalent")
    if any(layer.P is not None and np.any(layer.P) for layer in layers):
        raise Unsupported("LSTM peepholes have no PyTorch equivalent")
    if model.kind == "gru" and not all(layer.linear_before_reset for layer in layers):
        raise Unsupported("PyTorch's GRU is linear_before_reset=1; this model uses 0")
    names = {tuple(a.name for a in d) for layer in layers for d in layer.activations}
    nonlinearity = None
    if model.kind == "rnn":
        if names not in ({("tanh",)}, {("relu",)}):
            raise Unsupported(f"PyTorch's RNN is tanh or relu; this model uses {sorted(names)}")
        nonlinearity = next(iter(names))[0]
    elif names != {TORCH_DEFAULT_ACTIVATIONS[model.kind]}:
        raise Unsupported(f"non-default activations {sorted(names)} have no PyTorch module")
    if any(layer.hidden_size != first.hidden_size or layer.output_size != first.output_size
           for layer in layers):
        raise Unsupported("PyTorch needs the same hidden size in every layer")
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[model.kind]
    kwargs = dict(num_layers=model.num_layers, bidirectional=model.num_directions == 2)
    if nonlinearity:
        kwargs["nonlinearity"] = nonlinearity
    if model.proj_size:
        kwargs["proj_size"] = model.proj_size
    module = cls(model.input_size, model.hidden_size, **kwargs)

    def reorder(a):  # (G*H, ...) ONNX gate blocks -> PyTorch's
        return from_onnx(a, model.kind, "torch")

    weights = {}
    for k, layer in enumerate(layers):
        for d in range(layer.num_directions):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            weights["weight_ih" + suffix] = reorder(layer.W[d])
            weights["weight_hh" + suffix] = reorder(layer.R[d])
            weights["bias_ih" + suffix] = reorder(layer.Wb[d])
            weights["bias_hh" + suffix] = reorder(layer.Rb[d])
            if layer.proj is not None:
                weights["weight_hr" + suffix] = layer.proj[d]
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})
    return module.eval()


def torch_module_from_state_dict(path: str, model: Model):
    """The recurrent module PyTorch itself builds from a ``state_dict`` saved as ``.npz``
    (any module prefix), independent of rnnengine's loader; None if the file has no PyTorch
    recurrent names. ``model`` only tells the RNN nonlinearity, which the file does not."""
    import torch

    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    prefixes = {m.group(1) for k in arrays
                if (m := re.fullmatch(r"(.*)weight_ih_l\d+(_reverse)?", k))}
    if len(prefixes) != 1:
        return None
    prefix = prefixes.pop()
    own = {k[len(prefix):]: v for k, v in arrays.items()
           if k.startswith(prefix) and re.fullmatch(r"(weight|bias)_(ih|hh|hr)_l\d+(_reverse)?",
                                                    k[len(prefix):])}
    w_ih, w_hh = own["weight_ih_l0"], own["weight_hh_l0"]
    H = own["weight_hr_l0"].shape[1] if "weight_hr_l0" in own else w_hh.shape[1]
    kind = {4: "lstm", 3: "gru", 1: "rnn"}.get(w_ih.shape[0] // H)
    if kind is None:
        return None
    layers = 1 + max(int(re.search(r"_l(\d+)", k).group(1)) for k in own)
    kwargs = dict(num_layers=layers, bidirectional=any(k.endswith("_reverse") for k in own),
                  bias="bias_ih_l0" in own)
    if "weight_hr_l0" in own:
        kwargs["proj_size"] = own["weight_hr_l0"].shape[0]
    if kind == "rnn":
        kwargs["nonlinearity"] = model.layers[0].activations[0][0].name
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    module = cls(w_ih.shape[1], H, **kwargs)
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, np.float32))
                            for k, v in own.items()})
    return module.eval()


def torch_run(module, x: np.ndarray, state, kind: str):
    """x (T, N, I) -> (y, state) from a torch recurrent module, as NumPy."""
    import torch

    with torch.no_grad():
        if state is None:
            y, s = module(torch.from_numpy(x))
        elif kind == "lstm":
            y, s = module(torch.from_numpy(x), tuple(torch.from_numpy(a) for a in state))
        else:
            y, s = module(torch.from_numpy(x), torch.from_numpy(state))
    if kind == "lstm":
        return y.numpy(), (s[0].numpy(), s[1].numpy())
    return y.numpy(), s.numpy()


class TorchCells:
    """PyTorch's streaming idiom: one ``nn.LSTMCell``/``GRUCell``/``RNNCell`` per layer,
    stepped one timestep at a time (forward, no projection)."""

    def __init__(self, module, kind: str, num_layers: int):
        import torch

        cell_cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[kind]
        self.kind, self.cells = kind, []
        for k in range(num_layers):
            ih = getattr(module, f"weight_ih_l{k}")
            kwargs = {"nonlinearity": module.nonlinearity} if kind == "rnn" else {}
            cell = cell_cls(ih.shape[1], module.hidden_size, **kwargs)
            cell.weight_ih.data = ih.data
            cell.weight_hh.data = getattr(module, f"weight_hh_l{k}").data
            cell.bias_ih.data = getattr(module, f"bias_ih_l{k}").data
            cell.bias_hh.data = getattr(module, f"bias_hh_l{k}").data
            self.cells.append(cell.eval())
        self.state = None

    def step(self, x_t):
        """x_t: torch (N, I) -> y_t (N, H); the state is carried in ``self.state``."""
        state = self.state or [None] * len(self.cells)
        for k, cell in enumerate(self.cells):
            state[k] = cell(x_t, state[k]) if state[k] is not None else cell(x_t)
            x_t = state[k][0] if self.kind == "lstm" else state[k]
        self.state = state
        return x_t


def optional_import(name: str):
    """The module, or None when it is not installed."""
    try:
        module = __import__(name)
    except ImportError:
        return None
    if name == "torch":  # its note that projections bypass oneDNN is noise here
        warnings.filterwarnings("ignore", message=".*oneDNN", category=UserWarning)
    return module


# --- subcommands ---------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    path = existing_file(args.model)
    is_onnx = path.lower().endswith(".onnx")
    try:
        model = load_model(path, args.node, nonlinearity=args.nonlinearity)
    except ModelError:
        try:
            nodes = onnx_recurrent_nodes(path) if is_onnx else []
        except ModelError:
            nodes = []
        if len(nodes) > 1:  # show what there is to choose from before the error line
            print(f"{path}: {len(nodes)} recurrent nodes")
            for name, op, where in nodes:
                print(f"  {op:4s} {name}" + (f"   (inside {where})" if where else ""))
        raise
    nodes = onnx_recurrent_nodes(path) if is_onnx else []
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
    if nodes:
        for i, (name, op, where) in enumerate(nodes):
            rows.append(("nodes found" if i == 0 else "",
                         f"{op} {name!r}" + (f" (inside {where})" if where else "")))
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{key.ljust(width)}  {value}" for key, value in rows))
    return 0


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


def cmd_run(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.node, nonlinearity=args.nonlinearity)
    if args.batch_first:
        model.batch_first = True
    x = load_array(args.input, "--input")
    lengths = parse_lengths(args.lengths)
    y, state = model.run(x, lengths=lengths)
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


def cmd_convert(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.node, nonlinearity=args.nonlinearity)
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    try:
        model.save(out)
    except OSError as exc:
        raise CommandError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    again = load_model(out)  # proves the file reads back before we say it was written
    print(f"wrote {out} ({os.path.getsize(out):,} bytes): {describe(again)}")
    return 0


def best_of(repeat: int, contenders: Dict[str, Callable[[], float]], progress: Progress):
    """Interleaved repetitions (every contender once per round), best time of each."""
    best = {name: float("inf") for name in contenders}
    for _ in range(repeat):
        for name, measure in contenders.items():
            best[name] = min(best[name], measure())
            progress.advance()
    return best


def timed(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    """A measurement: mean seconds per call over ``calls`` back-to-back calls."""
    def measure() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    return measure


def cmd_bench(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.node, nonlinearity=args.nonlinearity)
    model.batch_first = False
    T, N, steps, repeat = args.seq_len, args.batch, args.steps, args.repeat
    if min(T, N, steps, repeat) < 1:
        raise CommandError("--seq-len, --batch, --steps and --repeat must be positive")
    rng = np.random.default_rng(0)
    I = model.input_size
    x_step = rng.standard_normal((1, I)).astype(np.float32)
    x_seq1 = rng.standard_normal((T, 1, I)).astype(np.float32)
    x_seqN = rng.standard_normal((T, N, I)).astype(np.float32)
    seq_calls = max(1, steps // T)

    workloads = {}   # name -> {contender: measurement}
    notes = []
    if model.num_directions == 1 and not any(layer.reverse for layer in model.layers):
        stream = model.stream(batch=1)
        workloads["stream step, batch 1"] = {"rnnengine": timed(lambda: stream.step(x_step), steps)}
    else:
        notes.append("streaming: skipped (a bidirectional or reverse model cannot stream)")
    workloads[f"sequence T={T}, batch 1"] = {"rnnengine": timed(lambda: model.run(x_seq1), seq_calls)}
    if N > 1:
        workloads[f"sequence T={T}, batch {N}"] = {
            "rnnengine": timed(lambda: model.run(x_seqN), seq_calls)}
    contenders = ["rnnengine"]

    ort = None if args.no_compare else optional_import("onnxruntime")
    if ort is not None:
        try:
            ref = OrtReference(model, threads=1)
            contenders.append("onnxruntime")
            if "stream step, batch 1" in workloads:
                ort_state = {"s": ref.feeds(x_step[None], None, None)}
                names = ref.output_names

                def ort_step():
                    # Stream with ORT the usual way: a T=1 run fed back its final state.
                    feeds = ort_state["s"]
                    out = dict(zip(names, ref.session.run(None, feeds)))
                    for k in range(model.num_layers):
                        feeds[f"h0_{k}"] = out[f"hN_{k}"]
                        if model.kind == "lstm":
                            feeds[f"c0_{k}"] = out[f"cN_{k}"]
                    return out["y"]
                workloads["stream step, batch 1"]["onnxruntime"] = timed(ort_step, steps)
            for name, x in ((f"sequence T={T}, batch 1", x_seq1), (f"sequence T={T}, batch {N}", x_seqN)):
                if name in workloads:
                    feeds = ref.feeds(x, None, None)
                    workloads[name]["onnxruntime"] = timed(
                        lambda feeds=feeds: ref.session.run(None, feeds), seq_calls)
        except Unsupported as exc:
            notes.append(f"onnxruntime: skipped ({exc})")
    elif not args.no_compare:
        notes.append("onnxruntime: not installed")

    torch = None if args.no_compare else optional_import("torch")
    if torch is not None:
        try:
            module = torch_module_for(model)
            torch.set_num_threads(1)
            contenders.append("torch")
            if "stream step, batch 1" in workloads:
                if model.proj_size:  # no cell with a projection: nn.LSTM one step at a time
                    holder = {"s": None}
                    xt = torch.from_numpy(x_step[None])

                    def torch_step():
                        with torch.no_grad():
                            y, holder["s"] = module(xt, holder["s"])
                        return y
                else:
                    cells = TorchCells(module, model.kind, model.num_layers)
                    xt = torch.from_numpy(x_step)

                    def torch_step():
                        with torch.no_grad():
                            return cells.step(xt)
                workloads["stream step, batch 1"]["torch"] = timed(torch_step, steps)
            for name, x in ((f"sequence T={T}, batch 1", x_seq1), (f"sequence T={T}, batch {N}", x_seqN)):
                if name in workloads:
                    xt_seq = torch.from_numpy(x)

                    def torch_seq(xt_seq=xt_seq):
                        with torch.no_grad():
                            return module(xt_seq)
                    workloads[name]["torch"] = timed(torch_seq, seq_calls)
        except Unsupported as exc:
            notes.append(f"torch: skipped ({exc})")
    elif not args.no_compare:
        notes.append("torch: not installed")

    print(f"rnnengine bench: {describe(model)}")
    print(f"best of {repeat} interleaved repetitions; {steps} steps per streaming measurement, "
          f"{seq_calls} sequence(s) per sequence measurement")
    print("threads: 1 each (rnnengine, onnxruntime, torch)")
    total = repeat * sum(len(c) for c in workloads.values())
    progress = Progress(total, "bench")
    results = {}
    try:
        for name, measures in workloads.items():
            results[name] = best_of(repeat, measures, progress)
    finally:
        progress.close()

    header = ["workload", "rnnengine", "throughput"] + [f"{c} (x)" for c in contenders[1:]]
    rows = [header]
    for name, best in results.items():
        ours = best["rnnengine"]
        if name.startswith("stream"):
            throughput = f"{1 / ours:,.0f} steps/s"
        else:
            batch = 1 if name.endswith("batch 1") else N
            throughput = f"{batch / ours:,.0f} seq/s"
        row = [name, fmt_time(ours), throughput]
        for c in contenders[1:]:
            row.append(f"{fmt_time(best[c])} ({best[c] / ours:.2f}x)" if c in best else "-")
        rows.append(row)
    print()
    print(table(rows))
    if len(contenders) > 1:
        print("(x) = their time / rnnengine's time: above 1 means rnnengine is faster")
    for note in notes:
        print(note)
    return 0


def max_diff(a, b) -> float:
    """Largest absolute difference between two outputs or two states of the same structure."""
    if isinstance(a, tuple):
        return max(max_diff(u, v) for u, v in zip(a, b))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise CommandError(f"shape mismatch: rnnengine {a.shape} vs reference {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def cut_graph(proto, x_name: str, wanted: List[str]):
    """The part of an ONNX graph that computes ``wanted`` from the tensor ``x_name`` alone
    (plus initializers and constants), as a model of its own whose only input is X."""
    from onnx import TensorProto, helper

    producer = {out: node for node in proto.graph.node for out in node.output if out}
    initializers = {t.name for t in proto.graph.initializer}
    x_info = next((v for v in list(proto.graph.input) + list(proto.graph.value_info)
                   if v.name == x_name), None)
    if x_info is None:  # an intermediate tensor without a recorded type: assume float
        x_info = helper.make_tensor_value_info(x_name, TensorProto.FLOAT, None)
    needed, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if not name or name == x_name or name in initializers:
            continue
        node = producer.get(name)
        if node is None:
            raise Unsupported(f"the node(s) depend on the graph input {name!r}")
        if id(node) in needed:
            continue
        needed.add(id(node))
        todo += list(node.input)
        for attr in node.attribute:  # subgraphs may read outer tensors
            if attr.type in (attr.GRAPH, attr.GRAPHS):
                raise Unsupported(f"{node.op_type} {node.name!r} on the path has a subgraph")
    nodes = [n for n in proto.graph.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    elem = x_info.type.tensor_type.elem_type
    graph = helper.make_graph(
        nodes, "cut", [x_info], [helper.make_tensor_value_info(w, elem, None) for w in wanted],
        [t for t in proto.graph.initializer if t.name in used])
    model = helper.make_model(graph, opset_imports=proto.opset_import)
    model.ir_version = proto.ir_version
    return model


def file_graph_check(path: str, node_name: Optional[str], model: Model, T: int, N: int,
                     seed: int):
    """Run the file's own recurrent node(s) in onnxruntime, cut out of the file together with
    their weight chains and the glue between layers, and the engine on the same random input.

    Independent of rnnengine's loader: returns ``(label, diff_y, diff_state)``, or
    ``(label, reason)`` when this file cannot be cut that way."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    nodes = onnx_recurrent_nodes(path)
    label = "onnxruntime, the file's own node(s)"
    if any(where for _, _, where in nodes):
        return label, "not compared: recurrent nodes inside subgraphs"
    proto = onnx.load(path)
    in_order = [n for n in proto.graph.node if n.op_type in RECURRENT_OPS]
    start = 0
    if node_name is not None:
        start = next((i for i, n in enumerate(in_order) if n.name == node_name), -1)
        if start < 0:
            return label, f"not compared: no node {node_name!r} in the main graph"
    elif len(in_order) != model.num_layers:
        return label, (f"not compared: {len(in_order)} recurrent nodes for "
                       f"{model.num_layers} layer(s)")
    chain = in_order[start:start + model.num_layers]
    if len(chain) != model.num_layers:
        return label, "not compared: the loaded layers are not consecutive nodes"
    label = ("onnxruntime, node " + ", ".join(repr(n.name) for n in chain) + " from the file")
    for n in chain:
        if any(a.name == "layout" and a.i == 1 for a in n.attribute):
            return label, "not compared: onnxruntime rejects layout=1"
        if len(n.input) > 4 and n.input[4]:
            return label, "not compared: the file feeds sequence_lens"
    initializers = {t.name: t for t in proto.graph.initializer}
    wanted = [chain[-1].output[0]] if chain[-1].output[0] else []
    for n in chain:
        wanted += [name for name in list(n.output[1:3]) + list(n.input[5:7])
                   if name and name not in initializers]
    wanted = list(dict.fromkeys(wanted))
    try:
        small = cut_graph(proto, chain[0].input[0], wanted)
        session = ort.InferenceSession(small.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    except Unsupported as exc:
        return label, f"not compared: {exc}"
    except Exception as exc:
        return label, f"not compared: onnxruntime cannot run the node(s) ({one_line(exc)[:80]})"
    x_info = session.get_inputs()[0]
    dims = [d if isinstance(d, int) and d > 0 else None for d in x_info.shape]
    if len(dims) == 3:  # a file may fix T or N
        T, N = dims[0] or T, dims[1] or N
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16}.get(x_info.type)
    if dtype is None:
        return label, f"not compared: X is {x_info.type}"
    x = random_input(model, T, N, seed).astype(dtype)
    got = dict(zip(wanted, session.run(None, {x_info.name: x})))

    def value(name, shape):  # an initial state as the file computes it (zeros if absent)
        if not name:
            return np.zeros(shape, np.float32)
        if name in initializers:
            return numpy_helper.to_array(initializers[name]).astype(np.float32)
        return got[name].astype(np.float32)

    h_shape, c_shape = model._state_shapes(N)
    D = model.num_directions
    h0 = np.concatenate([value(n.input[5] if len(n.input) > 5 else "", (D,) + h_shape[1:])
                         for n in chain])
    state0 = h0
    if model.kind == "lstm":
        state0 = (h0, np.concatenate([value(n.input[6] if len(n.input) > 6 else "",
                                            (D,) + c_shape[1:]) for n in chain]))
    model.batch_first = False
    y, state = model.run(x.astype(np.float32), state0)
    h, c = state if isinstance(state, tuple) else (state, None)
    diff_y = diff_s = None
    if wanted and wanted[0] == chain[-1].output[0]:
        Y = got[wanted[0]]  # (T, D, N, H) -> (T, N, D*H)
        diff_y = max_diff(y, Y.transpose(0, 2, 1, 3).reshape(T, N, -1))
    diffs = []
    for k, n in enumerate(chain):
        if len(n.output) > 1 and n.output[1]:
            diffs.append(max_diff(h[k * D:(k + 1) * D], got[n.output[1]]))
        if c is not None and len(n.output) > 2 and n.output[2]:
            diffs.append(max_diff(c[k * D:(k + 1) * D], got[n.output[2]]))
    if diffs:
        diff_s = max(diffs)
    return label, diff_y, diff_s


def cmd_verify(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.node, nonlinearity=args.nonlinearity)
    model.batch_first = False
    T, N, seed = args.seq_len, args.batch, args.seed
    if min(T, N) < 1:
        raise CommandError("--seq-len and --batch must be positive")
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
    rows = []  # (reference, diff y or None, diff state or None, note)

    if ort is not None:
        if args.model.lower().endswith(".onnx"):
            result = file_graph_check(args.model, args.node, model, T, N, seed)
            rows.append((result[0], None, None, result[1]) if len(result) == 2
                        else (result[0], result[1], result[2], ""))
        try:
            ref = OrtReference(model)
            y_ref, s_ref = ref.run(x, state0, lengths)
            y, s = model.run(x, state0, lengths=lengths)
            rows.append(("onnxruntime, weights as loaded, random state and lengths",
                         max_diff(y, y_ref), max_diff(s, s_ref), ""))
            if model.num_directions == 1 and not model.layers[0].reverse:
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
            if args.model.lower().endswith(".npz"):
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
        except (RuntimeError, KeyError) as exc:  # the file's state_dict does not fit the module
            rows.append((label, None, None, f"not compared: {str(exc).splitlines()[0]}"))

    print(f"rnnengine verify: {describe(model)}")
    print(f"random input x ({T}, {N}, {model.input_size}), seed {seed}; tolerance {args.tol:g}")
    out = [["reference", "max |diff| y", "max |diff| state"]]
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


def demo_files() -> Tuple[str, dict]:
    """Path of the shipped character LSTM (.npz state_dict) and its vocabulary."""
    data = resources.files("rnnengine") / "data"
    weights = data / "char_lstm.npz"
    vocab = json.loads((data / "char_lstm_vocab.json").read_text(encoding="utf-8"))
    return str(weights), vocab


def cmd_demo(args: argparse.Namespace) -> int:
    weights_path, vocab = demo_files()
    model = load_model(weights_path)       # the recurrent part, read by rnnengine.load
    with np.load(weights_path, allow_pickle=False) as archive:   # the output layer, in NumPy
        head_w, head_b = archive["head.weight"], archive["head.bias"]
    chars = vocab["chars"]
    index = {c: i for i, c in enumerate(chars)}
    unknown = sorted({c for c in args.prompt if c not in index})
    if unknown:
        raise CommandError(f"--prompt has characters the model does not know: {unknown!r}")
    if args.length < 1 or args.temperature < 0:
        raise CommandError("--length must be positive and --temperature >= 0")
    rng = np.random.default_rng(args.seed)
    onehot = np.eye(len(chars), dtype=np.float32)
    stream = model.stream(batch=1)
    out = sys.stdout
    print(f"rnnengine demo: a character-level {describe(model)},")
    print("trained with PyTorch on Python's stdlib docstrings; streamed one character per step.\n")
    out.write(args.prompt)
    out.flush()
    latencies = []
    y = None
    for ch in args.prompt:           # the prompt goes through the same per-step path
        start = time.perf_counter_ns()
        y = stream.step(onehot[index[ch]])
        latencies.append(time.perf_counter_ns() - start)
    for _ in range(args.length):
        logits = head_w @ y + head_b
        if args.temperature == 0:
            nxt = int(np.argmax(logits))
        else:
            z = logits.astype(np.float64) / args.temperature
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(chars), p=p / p.sum()))
        out.write(chars[nxt])
        out.flush()
        start = time.perf_counter_ns()
        y = stream.step(onehot[nxt])
        latencies.append(time.perf_counter_ns() - start)
    us = np.array(latencies) / 1e3
    print("\n")
    print(f"{len(us)} steps ({len(args.prompt)} prompt + {args.length} generated), batch 1: "
          f"per-step latency of stream.step median {np.median(us):.1f} us, "
          f"p99 {np.percentile(us, 99):.1f} us")
    return 0


# --- entry point ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnengine",
        description="CPU inference for LSTM/GRU/RNN models exported from PyTorch, Keras or ONNX.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"rnnengine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name, help_text, func):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def model_args(p):
        p.add_argument("model", metavar="MODEL", help="an .onnx model or an .npz of weights")
        p.add_argument("--node", help="the recurrent node (ONNX) or weight group (.npz) to "
                       "load, when the file has several")
        p.add_argument("--nonlinearity", choices=("tanh", "relu"),
                       help="for RNN weights in an .npz that does not record it (default tanh)")

    p = command("info", "describe a model: kind, layers, directions, sizes, parameters, nodes",
                cmd_info)
    model_args(p)
    p = command("run", "run a whole sequence from a .npy file and write the output as .npy",
                cmd_run)
    model_args(p)
    p.add_argument("--input", "-i", required=True, help="x as .npy: (T, N, I), or (T, I)")
    p.add_argument("--output", "-o", required=True, help="where to write y (.npy)")
    p.add_argument("--lengths", help="per-batch lengths: '5,3,7' or a .npy of N integers")
    p.add_argument("--batch-first", action="store_true", help="x is (N, T, I); y is (N, T, ·)")
    p.add_argument("--state", help="also write the final state (h[, c]) to this .npz")
    p = command("convert", "write the model in rnnengine's own .npz format", cmd_convert)
    model_args(p)
    p.add_argument("out", metavar="OUT.npz")
    p = command("bench", "streaming latency and sequence throughput, side by side with "
                "onnxruntime and torch when installed", cmd_bench)
    model_args(p)
    p.add_argument("--seq-len", type=int, default=100, help="T for sequence runs (100)")
    p.add_argument("--batch", type=int, default=16, help="N for the batched sequence run (16)")
    p.add_argument("--steps", type=int, default=1000, help="steps per measurement (1000)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions, best kept (5)")
    p.add_argument("--no-compare", action="store_true", help="rnnengine only")
    p = command("verify", "compare with onnxruntime (and torch) on random inputs", cmd_verify)
    model_args(p)
    p.add_argument("--seq-len", type=int, default=20, help="T (20)")
    p.add_argument("--batch", type=int, default=3, help="N (3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4,
                   help="largest absolute difference accepted (1e-4)")
    p = command("demo", "stream the shipped character-level LSTM and print what it writes",
                cmd_demo)
    p.add_argument("--prompt", default="Return the ", help="text to start from")
    p.add_argument("--length", type=int, default=300, help="characters to generate (300)")
    p.add_argument("--temperature", type=float, default=0.6,
                   help="sampling temperature; 0 picks the likeliest character (0.6)")
    p.add_argument("--seed", type=int, default=0)
    return parser


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


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


if __name__ == "__main__":
    sys.exit(main())
