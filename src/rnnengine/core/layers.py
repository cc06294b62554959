"""The internal weight layout: one documented gate order, checked and packed once at load.

Every loader (ONNX, PyTorch/Keras/ONNX ``.npz``, the engine's own format) ends by building
``Layer`` objects through ``Layer.from_onnx``; the kernels never see any other layout.

Internal gate order is ONNX's, because ONNX defines the reference semantics:

    LSTM  i, o, f, c   (peepholes i, o, f)
    GRU   z, r, h
    RNN   i

Arrays of one layer, ``D`` directions, ``G`` gates, hidden size ``H``, recurrent width
``Hout`` (``P`` with a projection, else ``H``), all float32 and C-contiguous:

    W   [D, G*H, I]       input weights
    R   [D, G*H, Hout]    recurrent weights
    Wb  [D, G*H]          input bias
    Rb  [D, G*H]          recurrent bias
    P   [D, 3*H]          LSTM peepholes, or None
    proj [D, Hout, H]     LSTM projection (PyTorch ``weight_hr``), or None
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .kernels import ACTIVATION_CODES
from ..errors import ModelError

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
DEFAULT_ACTIVATIONS = {
    "lstm": ("sigmoid", "tanh", "tanh"),
    "gru": ("sigmoid", "tanh"),
    "rnn": ("tanh",),
}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}

# name -> (kernel code, takes alpha, takes beta, default alpha, default beta). testing/reference.py
# keeps its own table of the same ONNX Runtime defaults on purpose: the oracle must not share
# the engine's facts, or a wrong default here would go unseen. The codes are
# the C enum's (include/rnnengine/activations.h, exported by core.kernels). Defaults and the
# alpha/beta consumption rule are ONNX Runtime's (rnn_helpers.cc): a function takes the next
# alpha/beta only if it uses one.
_PARAMETERS = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "affine": (True, True, 0.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 0.0, 0.0),
    "scaledtanh": (True, True, 0.0, 0.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
}
ACTIVATIONS = {name: (ACTIVATION_CODES[name],) + rest for name, rest in _PARAMETERS.items()}


@dataclass(frozen=True)
class Activation:
    name: str
    alpha: float = 0.0
    beta: float = 0.0

    @property
    def code(self) -> int:
        return ACTIVATIONS[self.name][0]


def resolve_activations(kind: str, num_directions: int, names=None, alphas=None, betas=None):
    """ONNX attributes -> per-direction tuples of ``Activation`` (f, g, h order).

    ``names`` may list the functions for one direction (then every direction uses them) or for
    all directions, forward first, as ONNX requires for bidirectional nodes."""
    per_dir = len(DEFAULT_ACTIVATIONS[kind])
    if names is None or len(names) == 0:
        names = list(DEFAULT_ACTIVATIONS[kind]) * num_directions
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) == per_dir and num_directions == 2:
        names = names * 2
    if len(names) != per_dir * num_directions:
        raise ModelError(
            f"{kind.upper()} with {num_directions} direction(s) needs {per_dir * num_directions} "
            f"activations; got {len(names)}: {names}")
    alphas = list(alphas or [])
    betas = list(betas or [])
    resolved = []
    for raw in names:
        name = raw.lower()
        if name not in ACTIVATIONS:
            raise ModelError(f"unknown activation {raw!r}; expected one of "
                             "Relu, Tanh, Sigmoid, Affine, LeakyRelu, ThresholdedRelu, "
                             "ScaledTanh, HardSigmoid, Elu, Softsign, Softplus")
        _, takes_alpha, takes_beta, alpha, beta = ACTIVATIONS[name]
        if takes_alpha and alphas:
            alpha = float(alphas.pop(0))
        if takes_beta and betas:
            beta = float(betas.pop(0))
        resolved.append(Activation(name, alpha, beta))
    return tuple(tuple(resolved[d * per_dir:(d + 1) * per_dir]) for d in range(num_directions))


def _as_f32(name: str, a, shape: tuple) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise ModelError(f"{name} must be a float tensor; got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape != shape:
        raise ModelError(f"{name} must have shape {shape}; got {a.shape}")
    return a


@dataclass(frozen=True, eq=False)
class Layer:
    """One recurrent layer (all its directions) in the internal layout (module docstring)."""

    kind: str
    W: np.ndarray
    R: np.ndarray
    Wb: np.ndarray
    Rb: np.ndarray
    P: Optional[np.ndarray] = None
    proj: Optional[np.ndarray] = None
    activations: tuple = ()
    clip: Optional[float] = None
    input_forget: bool = False
    linear_before_reset: bool = False
    reverse: bool = False      # direction='reverse': the only direction runs from t=T-1 down
    # precision -> the packed kernels of every direction (pack_layer), built once per precision
    packed: dict = field(default_factory=dict, repr=False, compare=False)
    # precision -> the kernels' weight type an own-format file stored this layer in for that
    # precision (own_format): it takes the place of the rules (weight_type), so a reloaded
    # model runs exactly the weights it was saved with
    stored_types: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_directions(self) -> int:
        return self.W.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.W.shape[1] // GATES[self.kind]

    @property
    def input_size(self) -> int:
        return self.W.shape[2]

    @property
    def output_size(self) -> int:
        """Width of h: the projection size P when there is one, else H."""
        return self.R.shape[2]

    @property
    def num_parameters(self) -> int:
        arrays = [self.W, self.R, self.Wb, self.Rb, self.P, self.proj]
        return int(sum(a.size for a in arrays if a is not None))

    @classmethod
    def from_onnx(cls, kind: str, W, R, B=None, P=None, *, direction: str = "forward",
                  hidden_size: Optional[int] = None, activations: Optional[Sequence] = None,
                  activation_alpha=None, activation_beta=None, clip: Optional[float] = None,
                  input_forget: int = 0, linear_before_reset: int = 0, proj=None) -> "Layer":
        """Build a layer from arrays in ONNX layout with ONNX attributes.

        ``W [D, G*H, I]``, ``R [D, G*H, Hout]``, ``B [D, 2*G*H]`` (Wb then Rb) or None,
        ``P [D, 3*H]`` or None, ``proj [D, Hout, H]`` or None (an extension for PyTorch's
        ``proj_size``; then ``Hout`` is the projection size). Raises ``ModelError`` when the
        shapes and attributes disagree."""
        kind = kind.lower()
        if kind not in GATES:
            raise ModelError(f"unknown cell kind {kind!r}; expected lstm, gru or rnn")
        if isinstance(direction, bytes):
            direction = direction.decode()
        if direction not in DIRECTIONS:
            raise ModelError(f"direction must be forward, reverse or bidirectional; got {direction!r}")
        D = DIRECTIONS[direction]
        G = GATES[kind]
        W = np.asarray(W)
        if W.ndim != 3:
            raise ModelError(f"W must have 3 dimensions [D, {G}*H, I]; got shape {W.shape}")
        if W.shape[0] != D:
            raise ModelError(f"W has {W.shape[0]} direction(s) but direction={direction!r}")
        if W.shape[1] % G:
            raise ModelError(f"W's second dimension must be {G}*hidden_size; got {W.shape[1]}")
        H = W.shape[1] // G
        if hidden_size is not None and int(hidden_size) != H:
            raise ModelError(f"hidden_size={hidden_size} but W implies {H} (W shape {W.shape})")
        if H <= 0 or W.shape[2] <= 0:
            raise ModelError(f"W must have non-empty dimensions; got shape {W.shape}")
        I = W.shape[2]
        Hout = H
        if proj is not None:
            if kind != "lstm":
                raise ModelError("a projection is only defined for LSTM")
            proj = np.asarray(proj)
            if proj.ndim != 3 or proj.shape[0] != D or proj.shape[2] != H:
                raise ModelError(f"projection must have shape [{D}, P, {H}]; got {proj.shape}")
            Hout = proj.shape[1]
            proj = _as_f32("projection", proj, (D, Hout, H))
        W = _as_f32("W", W, (D, G * H, I))
        R = _as_f32("R", R, (D, G * H, Hout))
        if B is None:
            Wb = np.zeros((D, G * H), np.float32)
            Rb = np.zeros((D, G * H), np.float32)
        else:
            B = _as_f32("B", B, (D, 2 * G * H))
            Wb = np.ascontiguousarray(B[:, :G * H])
            Rb = np.ascontiguousarray(B[:, G * H:])
        if P is not None:
            if kind != "lstm":
                raise ModelError("peepholes (P) are only defined for LSTM")
            P = _as_f32("P", P, (D, 3 * H))
        if clip is not None:
            clip = float(clip)
            if not clip > 0:
                raise ModelError(f"clip must be a positive number; got {clip}")
        if input_forget and kind != "lstm":
            raise ModelError("input_forget is only defined for LSTM")
        if linear_before_reset and kind != "gru":
            raise ModelError("linear_before_reset is only defined for GRU")
        acts = resolve_activations(kind, D, activations, activation_alpha, activation_beta)
        return cls(kind, W, R, Wb, Rb, P, proj, acts, clip, bool(input_forget),
                   bool(linear_before_reset), direction == "reverse")

    def to_onnx(self) -> dict:
        """The inverse of ``from_onnx``: arrays and attributes (used by ``Model.save``)."""
        return {
            "kind": self.kind,
            "W": self.W, "R": self.R, "B": np.concatenate([self.Wb, self.Rb], axis=1),
            "P": self.P, "proj": self.proj,
            "direction": self.direction,
            "activations": [a.name for d in self.activations for a in d],
            # Only the functions that take an alpha/beta consume one (resolve_activations).
            "activation_alpha": [a.alpha for d in self.activations for a in d
                                 if ACTIVATIONS[a.name][1]],
            "activation_beta": [a.beta for d in self.activations for a in d
                                if ACTIVATIONS[a.name][2]],
            "clip": self.clip, "input_forget": int(self.input_forget),
            "linear_before_reset": int(self.linear_before_reset),
        }

    def attributes(self) -> dict:
        """Everything but the arrays, in one JSON-ready form (the own format's header and the
        state fingerprint are built from it): every activation with its own alpha and beta."""
        return {
            "kind": self.kind,
            "direction": self.direction,
            "activations": [[a.name, a.alpha, a.beta] for d in self.activations for a in d],
            "clip": self.clip,
            "input_forget": int(self.input_forget),
            "linear_before_reset": int(self.linear_before_reset),
        }

    @property
    def direction(self) -> str:
        if self.num_directions == 2:
            return "bidirectional"
        return "reverse" if self.reverse else "forward"


def check_stack(layers: Sequence[Layer]) -> None:
    """A stack is valid when its layers share kind, directions and widths (H and Hout) and
    every layer k>0 takes the previous layer's D*Hout outputs."""
    if not layers:
        raise ModelError("a model needs at least one recurrent layer")
    kind = layers[0].kind
    for k, layer in enumerate(layers):
        if layer.kind != kind:
            raise ModelError(f"layer {k} is {layer.kind} but layer 0 is {kind}: a stack has one kind")
        if k and layer.input_size != layers[k - 1].num_directions * layers[k - 1].output_size:
            prev = layers[k - 1]
            raise ModelError(
                f"layer {k} takes {layer.input_size} inputs but layer {k - 1} gives "
                f"{prev.num_directions}*{prev.output_size}")
        if layer.num_directions != layers[0].num_directions:
            raise ModelError("every layer of a stack must have the same number of directions")
        # The state is one (L*D, N, Hout) array (and (L*D, N, H) for c), as in PyTorch: every
        # layer has the same widths. A wider layer would not fit the state buffers.
        if (layer.hidden_size, layer.output_size) != (layers[0].hidden_size, layers[0].output_size):
            raise ModelError(
                f"layer {k} has hidden size {layer.hidden_size} (h width {layer.output_size}) "
                f"but layer 0 has {layers[0].hidden_size} (h width {layers[0].output_size}): "
                "every layer of a stack has the same hidden size")
