"""NumPy archives -> layers (the engine's own format is read by ``own_format``).

Archives are opened with ``allow_pickle=False``, always. Names recognised (the part before
them is a prefix; each prefix is one weight group, ``node=`` picks one when there are several):

    PyTorch  {prefix}weight_ih_l{k}[_reverse], weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k},
             weight_hr_l{k} (proj_size); nn.LSTMCell/GRUCell/RNNCell: {prefix}weight_ih, ...
             Gate order i,f,g,o / r,z,n; GRU always linear-before-reset. The kind follows from
             the shapes (G*H rows against H columns). Input layout (T, N, I); batch_first and
             nn.RNN's nonlinearity are not in a state_dict: pass them as load options.
    Keras    {path}/kernel [I, G*U], {path}/recurrent_kernel [U, G*U], {path}/bias
             ([G*U], or [2, G*U] for GRU reset_after=True); gate order i,f,c,o / z,r,h.
             A Bidirectional wrapper's .../forward_*/... and .../backward_*/... groups load as
             one bidirectional layer. Keras takes (N, T, I), so the model is batch_first. What
             the weights do not record: activations (Keras defaults tanh/sigmoid assumed;
             nonlinearity="relu" for a relu SimpleRNN), go_backwards, reset_after of a GRU
             without bias (Keras' default, True, assumed).
    ONNX     {prefix}W, R and optional B, P, with the node's attributes as arrays: op_type
             (or kind), hidden_size, direction, activations, activation_alpha,
             activation_beta, clip, input_forget, linear_before_reset, layout.
    own      the header array ``__rnnengine__`` (JSON as uint8) and layer{k}/W, R, B, P, proj.
             With a reduced "precision" in the header, W, R and proj are stored in it:
             float16, bfloat16 bits as uint16, or int8 with float32 {name}_scale per row.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from . import own_format
from ..errors import ModelError
from ..core.gate_order import to_onnx
from ..core.layers import GATES, Layer, check_stack
from ..core.files import open_regular

HEADER = own_format.HEADER
KIND_BY_GATES = {4: "lstm", 3: "gru", 1: "rnn"}

_TORCH_LAYER = re.compile(r"^(.*?)(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
_TORCH_CELL = re.compile(r"^(.*?)(weight_ih|weight_hh|bias_ih|bias_hh)$")
_KERAS = re.compile(r"^(.+)/(kernel|recurrent_kernel|bias)(?::\d+)?$")
_ONNX_PARAMS = ("W", "R", "B", "P", "op_type", "kind", "hidden_size", "direction",
                "activations", "activation_alpha", "activation_beta", "clip", "input_forget",
                "linear_before_reset", "layout")
_ONNX = re.compile(r"^(.*?[/.])?(" + "|".join(_ONNX_PARAMS) + r")$")


class _Archive:
    """Reads arrays by name, turning every failure into a ModelError that names the file.

    ``arrays`` is any mapping of names to arrays read on access: an open ``NpzFile``, a
    ``.safetensors`` file's tensors, a PyTorch ``state_dict`` as NumPy arrays."""

    def __init__(self, arrays, path: str):
        self.npz = arrays
        self.path = path
        self.files = list(arrays.files if hasattr(arrays, "files") else arrays.keys())

    def get(self, key: str, group: str) -> np.ndarray:
        try:
            value = self.npz[key]
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise ModelError(f"{self.path}: {group}: array {key!r} holds Python objects "
                                 "(a pickle); refused, only numeric arrays are read") from None
            raise ModelError(f"{self.path}: {group}: cannot read array {key!r}: {e}") from None
        except Exception as e:  # zip/zlib/npy-header corruption
            raise ModelError(f"{self.path}: {group}: cannot read array {key!r}: "
                             f"{type(e).__name__}: {e}") from None
        if not isinstance(value, np.ndarray):
            # NumPy hands back the raw bytes of a member that is not in .npy format.
            raise ModelError(f"{self.path}: {group}: member {key!r} is not a .npy array")
        return value

    def weight(self, key: str, group: str, ndim: int) -> np.ndarray:
        a = self.get(key, group)
        if a.dtype.kind != "f":
            raise ModelError(f"{self.path}: {group}: {key!r} must be a float array; got dtype {a.dtype}")
        if a.ndim != ndim:
            raise ModelError(f"{self.path}: {group}: {key!r} must have {ndim} dimension(s); "
                             f"got shape {a.shape}")
        return a


class _Group:
    """One loadable set of weights: source scheme, display name, {parameter: archive key}."""

    def __init__(self, source: str, name: str, keys: dict):
        self.source = source
        self.name = name
        self.keys = keys

    def label(self) -> str:
        return f"{self.name or '<no prefix>'} ({self.source})"


def load_npz(path, node: Optional[str] = None, *, batch_first: Optional[bool] = None,
             nonlinearity: Optional[str] = None):
    """Weights from a ``.npz`` archive (see the module docstring) -> (layers, batch_first,
    the precision an rnnengine file was saved in or "fp32"), the layers checked to form one
    stack."""
    path = os.fspath(path)
    file = open_regular(path, "the model file")[0]
    with file:
        return _load_open_npz(file, path, node, batch_first, nonlinearity)


def _load_open_npz(file, path: str, node, batch_first, nonlinearity):
    try:
        npz = np.load(file, allow_pickle=False)
    except Exception as e:  # zipfile raises BadZipFile, NotImplementedError, EOFError, ...
        raise ModelError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ModelError(f"{path}: not a .npz archive (numpy read a single array)")
    with npz:
        layers, implied_batch_first, label, precision = layers_from_arrays(npz, path, node,
                                                                           nonlinearity)
    if batch_first is None:
        batch_first = implied_batch_first
    try:
        check_stack(layers)
    except ModelError as e:
        raise ModelError(f"{path}: {label}: {e}") from None
    return layers, bool(batch_first), precision


def layers_from_arrays(arrays, path: str, node: Optional[str] = None,
                       nonlinearity: Optional[str] = None):
    """Named arrays (any mapping: an ``NpzFile``, a ``.safetensors`` file, a ``state_dict``)
    -> (layers, the batch_first the names imply, the weight group's label, the precision an
    rnnengine file was saved in or "fp32"), by the naming
    schemes of the module docstring. ``path`` names the source in error messages."""
    archive = _Archive(arrays, path)
    groups = _find_groups(archive.files)
    if not groups:
        shown = ", ".join(repr(f) for f in archive.files[:12])
        raise ModelError(
            f"{path}: no recurrent weights recognised; expected PyTorch state_dict names "
            "(weight_ih_l0, weight_hh_l0, ...), Keras paths (.../kernel, "
            ".../recurrent_kernel), ONNX names (W, R) or an rnnengine file; "
            f"found {len(archive.files)} array(s): {shown}")
    group = _select(groups, node, path)
    build = {"pytorch": _build_torch, "keras": _build_keras, "onnx": _build_onnx,
             "rnnengine": _build_own}[group.source]
    try:
        layers, implied_batch_first, *saved = build(archive, group, nonlinearity)
    except ModelError as e:
        message = str(e)
        if not message.startswith(path):
            message = f"{path}: {group.label()}: {message}"
        raise ModelError(message) from None
    return layers, implied_batch_first, group.label(), saved[0] if saved else "fp32"


def _select(groups: list, node: Optional[str], path: str) -> _Group:
    if node is None:
        if len(groups) == 1:
            return groups[0]
        listing = "\n  ".join(g.label() for g in groups)
        raise ModelError(f"{path}: {len(groups)} weight groups; pick one with node=<name>:\n  {listing}")
    wanted = node.rstrip("./")
    matches = [g for g in groups if g.name == wanted]
    if len(matches) != 1:
        listing = "\n  ".join(g.label() for g in groups)
        what = "no weight group" if not matches else f"{len(matches)} weight groups"
        raise ModelError(f"{path}: {what} named {node!r}; the groups are:\n  {listing}")
    return matches[0]


def _find_groups(files: list) -> list:
    if HEADER in files:
        return [_Group("rnnengine", "", {"header": HEADER})]
    groups = {}

    def add(source, prefix, param, key):
        name = prefix.rstrip("./")
        groups.setdefault((source, name), _Group(source, name, {})).keys[param] = key

    for key in files:
        m = _TORCH_LAYER.match(key)
        if m and _is_prefix(m.group(1)):
            add("pytorch", m.group(1), (int(m.group(3)), bool(m.group(4)), m.group(2)), key)
            continue
        m = _TORCH_CELL.match(key)
        if m and _is_prefix(m.group(1)):
            add("pytorch-cell", m.group(1), (0, False, m.group(2)), key)
            continue
        m = _KERAS.match(key)
        if m:
            add("keras", m.group(1), m.group(2), key)
            continue
        m = _ONNX.match(key)
        if m:
            add("onnx", m.group(1) or "", m.group(2), key)
    found = []
    for (source, name), g in groups.items():
        params = {p[2] if isinstance(p, tuple) else p for p in g.keys}
        # A group counts once it has a name only recurrent layers use; what else it lacks
        # is then reported by the builder (e.g. "layer 0: weight_hh is missing").
        if source.startswith("pytorch") and {"weight_ih", "weight_hh"} & params:
            found.append(_Group("pytorch", name, g.keys))
        elif source == "keras" and "recurrent_kernel" in params:
            found.append(g)
        elif source == "onnx" and {"W", "R"} <= params:
            found.append(g)
    return _merge_keras_bidirectional(found)


def _is_prefix(prefix: str) -> bool:
    return prefix == "" or prefix.endswith((".", "/"))


def _merge_keras_bidirectional(groups: list) -> list:
    """A Keras Bidirectional wrapper stores .../forward_<layer>/<cell> and
    .../backward_<layer>/<cell>: one group per wrapper, named by the wrapper's path."""
    halves = {}
    for g in groups:
        if g.source != "keras":
            continue
        parts = g.name.split("/")
        for i in range(len(parts) - 1, -1, -1):
            if parts[i].startswith(("forward_", "backward_")):
                side = "forward" if parts[i].startswith("forward_") else "backward"
                halves.setdefault("/".join(parts[:i]), {}).setdefault(side, []).append(g)
                break
    out = list(groups)
    for parent, sides in halves.items():
        if len(sides.get("forward", [])) == 1 and len(sides.get("backward", [])) == 1:
            fwd, bwd = sides["forward"][0], sides["backward"][0]
            out = [g for g in out if g is not fwd and g is not bwd]
            out.append(_Group("keras", parent, {"forward": fwd.keys, "backward": bwd.keys}))
    return out


def _activations(kind: str, nonlinearity: Optional[str], num_directions: int, source: str):
    if nonlinearity is None:
        return None
    if kind != "rnn":
        raise ModelError(f"nonlinearity={nonlinearity!r} applies to plain RNN weights; "
                         f"these are {kind.upper()} ({source})")
    return [nonlinearity.capitalize()] * num_directions


# --- PyTorch -----------------------------------------------------------------------------

def _build_torch(archive: _Archive, group: _Group, nonlinearity):
    where = group.label()
    by_layer = {}
    for (k, reverse, param), key in group.keys.items():
        by_layer.setdefault(k, {}).setdefault(reverse, {})[param] = key
    if sorted(by_layer) != list(range(len(by_layer))):
        raise ModelError(f"layers {sorted(by_layer)} are not numbered 0..{len(by_layer) - 1}")
    bidirectional = any(True in dirs for dirs in by_layer.values())
    layers, kind = [], None
    for k in range(len(by_layer)):
        dirs = by_layer[k]
        if bidirectional and set(dirs) != {False, True}:
            raise ModelError(f"layer {k} lacks its {'reverse' if True not in dirs else 'forward'} "
                             "direction while other layers have both")
        per_dir = [_torch_direction(archive, where, k, dirs[rev]) for rev in sorted(dirs)]
        kinds = {p[0] for p in per_dir}
        if len(kinds) != 1 or (kind is not None and kinds != {kind}):
            raise ModelError(f"layer {k} mixes cell kinds {sorted(kinds | {kind} - {None})}")
        kind = per_dir[0][0]
        if k == 0:
            ref = (dirs[sorted(dirs)[0]]["weight_hh"], per_dir[0][2].shape)
        _check_same_width(k, dirs, per_dir, ref)
        W, R, B, proj = (None if any(p[i] is None for p in per_dir)
                         else np.stack([p[i] for p in per_dir]) for i in range(1, 5))
        if any(p[3] is None for p in per_dir) != all(p[3] is None for p in per_dir):
            raise ModelError(f"layer {k}: bias in one direction only")
        layers.append(Layer.from_onnx(
            kind, W, R, B, proj=proj,
            direction="bidirectional" if len(per_dir) == 2 else "forward",
            linear_before_reset=int(kind == "gru"),
            activations=_activations(kind, nonlinearity, len(per_dir), "PyTorch state_dict")))
    return layers, False


def _check_same_width(k: int, dirs: dict, per_dir: list, ref: tuple) -> None:
    """Every direction of layer k has the widths of ``ref`` (key, shape of layer 0's first
    weight_hh): nn.LSTM has one hidden_size and one proj_size for all its layers, so anything
    else is a malformed file, named by its arrays. weight_hh is [G*H, Hout] in every layer,
    its shape carries both widths."""
    for rev, p in zip(sorted(dirs), per_dir):
        if p[2].shape != ref[1]:
            raise ModelError(
                f"layer {k}: {dirs[rev]['weight_hh']!r} has shape {p[2].shape} but "
                f"{ref[0]!r} has {ref[1]}: every layer of a PyTorch RNN has the same "
                "hidden_size (and proj_size)")


def _torch_direction(archive: _Archive, where: str, k: int, keys: dict):
    """One direction of one layer -> (kind, W [G*H, I], R [G*H, Hout], B [2*G*H] or None,
    proj [P, H] or None) in ONNX gate order."""
    for needed in ("weight_ih", "weight_hh"):
        if needed not in keys:
            raise ModelError(f"layer {k}: {needed} is missing")
    w_ih = archive.weight(keys["weight_ih"], where, 2)
    w_hh = archive.weight(keys["weight_hh"], where, 2)
    w_hr = archive.weight(keys["weight_hr"], where, 2) if "weight_hr" in keys else None
    # hidden size H: weight_hh's columns, or weight_hr's with a projection; G*H rows
    H = w_hr.shape[1] if w_hr is not None else w_hh.shape[1]
    if (H == 0 or w_ih.shape[0] != w_hh.shape[0] or w_ih.shape[0] % H
            or w_ih.shape[0] // H not in KIND_BY_GATES):
        shapes = f"{keys['weight_ih']!r} {w_ih.shape}, {keys['weight_hh']!r} {w_hh.shape}"
        if w_hr is not None:
            shapes += f", {keys['weight_hr']!r} {w_hr.shape}"
        raise ModelError(f"layer {k}: shapes {shapes} do not make 1, 3 or 4 gates of one "
                         "hidden size")
    G = w_ih.shape[0] // H
    kind = KIND_BY_GATES[G]
    if w_hr is not None and (kind != "lstm" or w_hh.shape[1] != w_hr.shape[0]):
        raise ModelError(f"layer {k}: {keys['weight_hr']!r} {w_hr.shape} does not fit "
                         f"{keys['weight_hh']!r} {w_hh.shape} (proj_size exists for LSTM only)")
    has_bias = ("bias_ih" in keys, "bias_hh" in keys)
    B = None
    if any(has_bias):
        if not all(has_bias):
            raise ModelError(f"layer {k}: bias_ih and bias_hh must come together")
        b_ih = archive.weight(keys["bias_ih"], where, 1)
        b_hh = archive.weight(keys["bias_hh"], where, 1)
        for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
            if b.shape != (G * H,):
                raise ModelError(f"layer {k}: {keys[name]!r} has shape {b.shape}; expected ({G * H},)")
        B = np.concatenate([to_onnx(b_ih, kind, "torch"), to_onnx(b_hh, kind, "torch")])
    return kind, to_onnx(w_ih, kind, "torch"), to_onnx(w_hh, kind, "torch"), B, w_hr


# --- Keras -------------------------------------------------------------------------------

def _build_keras(archive: _Archive, group: _Group, nonlinearity):
    where = group.label()
    halves = [group.keys["forward"], group.keys["backward"]] if "forward" in group.keys else [group.keys]
    parts = [_keras_direction(archive, where, keys) for keys in halves]
    kinds = {p[0] for p in parts}
    if len(kinds) != 1:
        raise ModelError(f"the forward and backward layers are of different kinds {sorted(kinds)}")
    kind = parts[0][0]
    if len({p[2].shape for p in parts}) != 1:
        shown = ", ".join(f"{keys['recurrent_kernel']!r} (units {p[2].shape[1]})"
                          for keys, p in zip(halves, parts))
        raise ModelError(f"the forward and backward layers differ in units: {shown}")
    lbr = {p[4] for p in parts}
    if len(lbr) != 1:
        raise ModelError("the forward and backward GRUs differ in reset_after")
    W, R, B = (np.stack([p[i] for p in parts]) for i in (1, 2, 3))
    layer = Layer.from_onnx(
        kind, W, R, B, direction="bidirectional" if len(parts) == 2 else "forward",
        linear_before_reset=lbr.pop(),
        activations=_activations(kind, nonlinearity, len(parts), "Keras"))
    return [layer], True


def keras_cell(arrays: dict, where: str):
    """One Keras cell's ``kernel``, ``recurrent_kernel`` and optional ``bias`` (a dict of
    arrays) -> (kind, W, R, B, linear_before_reset the bias shape implies), ONNX order."""
    return _keras_direction(_Archive(arrays, where), where, {k: k for k in arrays})


def _keras_direction(archive: _Archive, where: str, keys: dict):
    if "kernel" not in keys:
        raise ModelError(f"{keys['recurrent_kernel']!r} has no kernel beside it")
    kernel = archive.weight(keys["kernel"], where, 2)
    recurrent = archive.weight(keys["recurrent_kernel"], where, 2)
    U = recurrent.shape[0]
    if U == 0 or recurrent.shape[1] % U or recurrent.shape[1] // U not in KIND_BY_GATES:
        raise ModelError(f"{keys['recurrent_kernel']!r} has shape {recurrent.shape}; expected "
                         "(units, G*units) with G = 1, 3 or 4")
    G = recurrent.shape[1] // U
    kind = KIND_BY_GATES[G]
    if kernel.shape[1] != G * U:
        raise ModelError(f"{keys['kernel']!r} has shape {kernel.shape}; expected (input, {G * U})")
    Wb = Rb = np.zeros(G * U, np.float32)
    lbr = int(kind == "gru")  # Keras 3 GRU default reset_after=True
    if "bias" in keys:
        bias = archive.get(keys["bias"], where)
        if bias.dtype.kind != "f":
            raise ModelError(f"{keys['bias']!r} must be a float array; got dtype {bias.dtype}")
        if kind == "gru" and bias.shape == (2, G * U):
            Wb, Rb = bias[0], bias[1]
        elif bias.shape == (G * U,):
            Wb, lbr = bias, 0
        else:
            expected = f"({G * U},) or (2, {G * U})" if kind == "gru" else f"({G * U},)"
            raise ModelError(f"{keys['bias']!r} has shape {bias.shape}; expected {expected}")
    B = np.concatenate([to_onnx(Wb, kind, "keras"), to_onnx(Rb, kind, "keras")])
    return kind, to_onnx(kernel.T, kind, "keras"), to_onnx(recurrent.T, kind, "keras"), B, lbr


# --- ONNX names --------------------------------------------------------------------------

def _build_onnx(archive: _Archive, group: _Group, nonlinearity):
    where = group.label()
    get = lambda p: archive.get(group.keys[p], where) if p in group.keys else None
    W = archive.weight(group.keys["W"], where, 3)
    R = archive.weight(group.keys["R"], where, 3)
    B = archive.weight(group.keys["B"], where, 2) if "B" in group.keys else None
    P = archive.weight(group.keys["P"], where, 2) if "P" in group.keys else None
    op = get("op_type") if "op_type" in group.keys else get("kind")
    if op is not None:
        kind = _text(op, "op_type").lower()
        if kind not in GATES:
            raise ModelError(f"op_type must be LSTM, GRU or RNN; got {kind!r}")
    else:
        if R.shape[2] == 0 or R.shape[1] % R.shape[2] or R.shape[1] // R.shape[2] not in KIND_BY_GATES:
            raise ModelError(f"cannot tell the cell kind from R of shape {R.shape}; add an "
                             "op_type array")
        kind = KIND_BY_GATES[R.shape[1] // R.shape[2]]
    activations = get("activations")
    activations = None if activations is None else [str(s) for s in activations.reshape(-1)]
    if activations is None:
        D = 2 if _scalar(get("direction"), "direction", str, "forward") == "bidirectional" else 1
        activations = _activations(kind, nonlinearity, D, "ONNX names")
    elif nonlinearity is not None:
        raise ModelError("nonlinearity= given but the archive records its activations")
    layer = Layer.from_onnx(
        kind, W, R, B, P,
        direction=_scalar(get("direction"), "direction", str, "forward"),
        hidden_size=_scalar(get("hidden_size"), "hidden_size", int, None),
        activations=activations,
        activation_alpha=_floats(get("activation_alpha")),
        activation_beta=_floats(get("activation_beta")),
        clip=_scalar(get("clip"), "clip", float, None),
        input_forget=_scalar(get("input_forget"), "input_forget", int, 0),
        linear_before_reset=_scalar(get("linear_before_reset"), "linear_before_reset", int, 0))
    layout = _scalar(get("layout"), "layout", int, 0)
    if layout not in (0, 1):
        raise ModelError(f"layout must be 0 or 1; got {layout}")
    return [layer], bool(layout)


def _text(a: np.ndarray, name: str) -> str:
    if a.dtype.kind not in "US" or a.size != 1:
        raise ModelError(f"{name} must be a single string; got dtype {a.dtype}, shape {a.shape}")
    value = a.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def _scalar(a, name, cast, default):
    if a is None:
        return default
    if cast is str:
        return _text(a, name)
    if a.size != 1 or a.dtype.kind not in "fiub":
        raise ModelError(f"{name} must be a single number; got dtype {a.dtype}, shape {a.shape}")
    return cast(a.reshape(-1)[0])


def _floats(a):
    if a is None:
        return None
    if a.dtype.kind not in "fiu":
        raise ModelError(f"activation alpha/beta must be numbers; got dtype {a.dtype}")
    return [float(v) for v in a.reshape(-1)]


def _build_own(archive: _Archive, group: _Group, nonlinearity):
    if nonlinearity is not None:
        raise ModelError(f"{archive.path}: nonlinearity= given but an rnnengine file records "
                         "its activations")
    return own_format.read(archive)
