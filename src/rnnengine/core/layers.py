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

from .kernels import ACTIVATION_CODES, BLOCK, I8_FINE, KIND_CODES, WEIGHT_TYPES, CellKernel
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


# Weight precisions (docs/precision.md), each the name of its weight type in the kernels
# (_kernels.WEIGHT_TYPES: enum rnn_wtype in include/rnnengine/cells.h).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
FP16_MAX = 65504.0


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; "
                         f"got {precision!r}")
    return precision


def _aligned(a: np.ndarray) -> np.ndarray:
    """A 64-byte aligned, C-contiguous copy of ``a`` (whole cache lines for the kernels'
    vector loads)."""
    raw = np.empty(a.nbytes + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    out = raw[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _panels(w: np.ndarray, gates: int) -> np.ndarray:
    """Gate-major weights ``[G*H, K]`` -> gate-interleaved panels ``[HB, K, G, 16]`` with
    ``panel[b, k, g, u] = w[g*H + 16*b + u, k]`` (zero where ``16*b + u >= H``)."""
    H = w.shape[0] // gates
    K = w.shape[1]
    HB = -(-H // BLOCK)
    padded = np.zeros((gates, HB * BLOCK, K), np.float32)
    padded[:, :H] = w.reshape(gates, H, K)
    return padded.reshape(gates, HB, BLOCK, K).transpose(1, 3, 0, 2)


def _blocked(v: np.ndarray, gates: int) -> np.ndarray:
    """Gate-major vector ``[G*H]`` -> ``[HB, G, 16]`` (biases, peepholes)."""
    H = v.shape[0] // gates
    HB = -(-H // BLOCK)
    padded = np.zeros((gates, HB * BLOCK), np.float32)
    padded[:, :H] = v.reshape(gates, H)
    return _aligned(padded.reshape(gates, HB, BLOCK).transpose(1, 0, 2))


def to_bfloat16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def quantize_int8(w: np.ndarray, axis: int = -1):
    """Symmetric int8 along ``axis`` (the inputs of one output unit): ``(q, scale)`` with
    ``w ~= q * scale``, ``q`` in [-127, 127] and ``scale = max|w| / 127`` (0 for a zero
    row)."""
    w = np.asarray(w, np.float32)
    scale = (np.abs(w).max(axis=axis, keepdims=True) / np.float32(127)).astype(np.float32)
    q = np.divide(w, scale, out=np.zeros_like(w), where=scale > 0)
    return np.clip(np.rint(q), -127, 127).astype(np.int8), scale


def int8_residual_part(w: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What ``q * scale`` (``quantize_int8``) leaves of ``w``, in ``I8_FINE`` (254) times finer
    steps: ``q2`` with ``w ~= scale * (q + q2 / I8_FINE)``, about 15 bits, the split the
    kernels apply to their inputs. ``|q2|`` would reach 127 only at rounding ties; it is
    clipped to 126 so that ``dequantize_int8`` of the parts quantizes back to the same ``q``
    and ``q2`` (a file keeps exactly the weights that ran; the cost is an error of 1.5 instead
    of 0.5 fine steps for those weights)."""
    w = np.asarray(w, np.float32)
    t = np.divide(w, scale, out=np.zeros_like(w), where=scale > 0)
    return np.clip(np.rint((t - q) * np.float32(I8_FINE)), -126, 126).astype(np.int8)


def dequantize_int8(q: np.ndarray, scale: np.ndarray, q2=None) -> np.ndarray:
    """float32 ``scale * q``, or ``scale * (q + q2 / I8_FINE)`` with a residual part (the
    weights the kernels multiply with); quantizing them again gives the same parts."""
    t = q.astype(np.float32)
    if q2 is not None:
        t += q2.astype(np.float32) / np.float32(I8_FINE)
    return t * scale.astype(np.float32)


# int8 weights get a residual part ("int8r" in the kernels: twice the bytes) when the
# predicted int8 rounding error of a layer's worst unit exceeds this (int8_rounding_error).
# Measured values: N(0, 1/H) weights 0.015 (H=64) to 0.021 (H=1024), LSTM, GRU and RNN;
# PyTorch's default initialisation 0.0045; Silero's LSTM nodes 0.134 (max |diff| 0.11-0.18 from
# fp32 without the residual on tests/core/test_precision.py's protocol, budget 6e-2); the demo
# character model 0.129. The value of Gaussian rows grows only like sqrt(log K), so ordinary
# layers stay well below 0.05 and keep int8's bytes.
INT8_RESIDUAL_ABOVE = 0.05

# bf16 layers are packed with fp16 weights instead (the same 2 bytes, 8 times finer steps; the
# fp16 product: fp32 inputs and arithmetic, no AMX or vdpbf16ps) when the predicted bf16
# rounding error of the worst unit exceeds this (bf16_rounding_error). Measured values:
# N(0, 1/H) weights 0.0050-0.0056 (LSTM, GRU and RNN, H=64 to 1024); PyTorch's default
# initialisation 0.0025-0.0027; Silero's LSTM nodes 0.033 (max |diff| from fp32 on
# tests/core/test_precision.py's protocol up to 7.1e-2 in bf16, budget 3e-2; 3.7e-3 with fp16
# weights); the demo character model 0.038. A relative step makes the value of Gaussian rows
# their norm, about constant in K: ordinary layers keep bf16 and its AMX products.
BF16_AS_FP16_ABOVE = 0.015


def _unit_errors(step: np.ndarray, K: int) -> np.ndarray:
    """Per row, given the row's rounding ``step`` (the root mean square of its weights'
    steps): the standard deviation of the error rounding puts on the row's dot product with K
    inputs of unit RMS. Each weight's rounding is uniform in +-step/2 (variance step^2/12),
    independent across k: step * sqrt(K / 12)."""
    return np.asarray(step, np.float64) * np.sqrt(K / 12)


def _int8_row_errors(w: np.ndarray) -> np.ndarray:
    """``_unit_errors`` of int8 rows: one step per row, its scale."""
    _, scale = quantize_int8(w)
    return _unit_errors(scale[:, 0], w.shape[1])


def _bf16_row_errors(w: np.ndarray) -> np.ndarray:
    """``_unit_errors`` of bf16 rows. bf16 keeps 8 significant bits: a weight in
    [2^(e-1), 2^e) is rounded to steps of 2^(e-8) (a relative error of 2^-9 to 2^-8). The
    avx512bf16 and AMX products round the inputs to bf16 too, which adds about as much again
    (unit-RMS inputs, the same relative steps; measured on Silero: 3.8e-2 there against
    2.5e-2 on serial and avx2, which round the weights only): sqrt(2) times the weights'."""
    w = np.asarray(w, np.float64)
    _, e = np.frexp(w)
    steps = np.where(w != 0, np.ldexp(1.0, e - 8), 0.0)
    return np.sqrt(2) * _unit_errors(np.sqrt((steps ** 2).mean(axis=1)), w.shape[1])


def _worst_unit(layer: "Layer", row_errors) -> float:
    """The largest predicted rounding error of one unit of ``layer`` (``row_errors``: the
    errors of the rows of one weight matrix): per unit, the W and R rows' errors summed, as
    both feed one pre-activation (a sum, not a root sum of squares: an upper bound whatever
    their correlation), and each projection row on its own; the largest over units and
    directions."""
    worst = 0.0
    for d in range(layer.num_directions):
        units = row_errors(layer.W[d]) + row_errors(layer.R[d])
        worst = max(worst, float(units.max()))
        if layer.proj is not None:
            worst = max(worst, float(row_errors(layer.proj[d]).max()))
    return worst


def int8_rounding_error(layer: "Layer") -> float:
    """The predicted int8 weight rounding error of the layer's worst unit (``_worst_unit``),
    from its weights alone (int8 has no calibration data). It depends only on the
    per-row scales, so a model reloaded from its int8 file (own_format) gets the same value."""
    return _worst_unit(layer, _int8_row_errors)


def int8_residual(layer: "Layer") -> bool:
    """Whether precision="int8" packs ``layer`` with residual weights (INT8_RESIDUAL_ABOVE)."""
    return int8_rounding_error(layer) > INT8_RESIDUAL_ABOVE


def bf16_rounding_error(layer: "Layer") -> float:
    """The predicted bf16 rounding error (weights and inputs) of the layer's worst unit
    (``_worst_unit``), from its weights alone."""
    return _worst_unit(layer, _bf16_row_errors)


def bf16_as_fp16(layer: "Layer") -> bool:
    """Whether precision="bf16" packs ``layer`` with fp16 weights (BF16_AS_FP16_ABOVE): not
    when a weight is beyond fp16's range, which bf16 covers."""
    weights = [a for a in (layer.W, layer.R, layer.proj) if a is not None]
    return (bf16_rounding_error(layer) > BF16_AS_FP16_ABOVE
            and max(float(np.abs(a).max()) for a in weights) <= FP16_MAX)


def weight_type(layer: "Layer", precision: str) -> str:
    """The kernels' weight type (_kernels.WEIGHT_TYPES) ``precision`` runs ``layer`` with:
    the one an own-format file stored it in (``Layer.stored_types``), else the precision's
    own, except "int8r" where ``int8_residual`` and "fp16" in a bf16 model where
    ``bf16_as_fp16``."""
    if precision in layer.stored_types:
        return layer.stored_types[precision]
    if precision == "int8" and int8_residual(layer):
        return "int8r"
    if precision == "bf16" and bf16_as_fp16(layer):
        return "fp16"
    return precision


def to_float16(w: np.ndarray, name: str) -> np.ndarray:
    """``w`` as IEEE half; values beyond its range raise ModelError naming the tensor."""
    if np.any(np.abs(w) > FP16_MAX):
        raise ModelError(f"{name} has values beyond the fp16 range (|w| <= {FP16_MAX:g}; "
                         f"max |w| = {float(np.abs(w).max()):g}): use precision='bf16' "
                         "or 'fp32'")
    return np.asarray(w, np.float32).astype(np.float16)


def _check_rounded(w: np.ndarray, rounded: np.ndarray, name: str, wtype: str) -> None:
    """ModelError naming the tensor when rounding ``w`` to ``wtype`` made a finite weight
    infinite (bf16's largest finite value is 3.3895e38: float32 weights just below
    float32's own limit round past it)."""
    if np.isinf(rounded).sum() > np.isinf(w).sum():
        big = float(np.abs(w[np.isfinite(w)]).max())
        raise ModelError(f"{name} has values beyond the {wtype} range (max finite |w| = "
                         f"{big:g} rounds to inf in {wtype}): use precision='fp32'")


def _grouped(p: np.ndarray, ks: int) -> np.ndarray:
    """``[HB, K, G, 16]`` -> ``[HB, K/ks, G, 16, ks]``: ks consecutive k's of one unit
    together (K zero-padded to a multiple of ks), the operand layout of vdpbf16ps (ks=2) and
    vpdpbusd (ks=4)."""
    HB, K, G, _ = p.shape
    Kp = -(-K // ks) * ks
    if Kp != K:
        p = np.concatenate([p, np.zeros((HB, Kp - K, G, BLOCK), p.dtype)], axis=1)
    return p.reshape(HB, Kp // ks, ks, G, BLOCK).transpose(0, 1, 3, 4, 2)


def pack_weights(w: np.ndarray, gates: int, wtype: str, name: str) -> np.ndarray:
    """Gate-major ``[G*H, K]`` -> the kernels' panels of weight type ``wtype`` (a name in
    _kernels.WEIGHT_TYPES; layouts: include/rnnengine/cells.h)."""
    p = _panels(w, gates)
    if wtype == "fp32":
        return _aligned(p)
    if wtype == "fp16":
        to_float16(w, name)   # the range check, naming the tensor
        return _aligned(p.astype(np.float16))
    if wtype == "bf16":
        bits = to_bfloat16(_grouped(p, 2))
        _check_rounded(w, from_bfloat16(bits), name, "bf16")
        return _aligned(bits)
    # int8: per block, the quads, then the [G][16] scales and the [G][16] sums of each unit;
    # with the residual, its quads and their sums after that
    q, scale = quantize_int8(p, axis=1)            # scale [HB, 1, G, 16]
    HB = p.shape[0]

    def quads_and_sums(part):
        return (_grouped(part, 4).reshape(HB, -1).view(np.uint8),
                part.sum(axis=1, dtype=np.int32).reshape(HB, -1).view(np.uint8))

    quads, sums = quads_and_sums(q)
    pieces = [quads, scale.reshape(HB, -1).view(np.uint8), sums]
    if wtype == "int8r":
        pieces += quads_and_sums(int8_residual_part(p, q, scale))
    return _aligned(np.concatenate(pieces, axis=1))


def pack_layer(layer: Layer, precision: str = "fp32", where: str = "layer") -> list:
    """Repack one layer, once per precision, into the per-direction kernel descriptors the C
    code runs (layout: include/rnnengine/cells.h).

    Weights become gate-interleaved panels per block of 16 hidden units, so the kernels read
    each weight once per step in one sequential pass and run the gate math while a block's
    pre-activations are in registers. Biases are pre-summed (Wb + Rb); the one exception is
    GRU with linear_before_reset, whose Rbh must stay inside r * (h' Rh^T + Rbh). GRU with
    linear_before_reset=0 keeps Rh apart, since it multiplies r*h' which needs r first.
    W, R and the projection are stored in ``precision``'s weight type for the layer
    (``weight_type``: int8 adds a residual part to the layers ``int8_residual`` picks, bf16
    takes fp16 for those ``bf16_as_fp16`` picks); biases and peepholes stay float32."""
    check_precision(precision)
    if precision in layer.packed:
        return layer.packed[precision]
    H = layer.hidden_size
    G = GATES[layer.kind]
    if precision == "int8":
        for name, w in (("W", layer.W), ("R", layer.R), ("projection", layer.proj)):
            if w is not None and not np.isfinite(w).all():
                # One inf or NaN makes its unit's scale inf or NaN, and with it every
                # weight of the unit: NaN outputs where fp32 keeps the rest finite.
                raise ModelError(f"{where} {name} has non-finite values (inf or NaN), "
                                 "which int8 cannot hold (the unit's scale would spoil "
                                 "its whole row); use precision='fp32'")
    wtype = weight_type(layer, precision)

    def panels(w, gates, name):
        return pack_weights(w, gates, wtype, f"{where} {name}")

    kernels = []
    for d in range(layer.num_directions):
        bias = layer.Wb[d] + layer.Rb[d]
        rbh = prh = None
        R = layer.R[d]
        if layer.kind == "gru" and layer.linear_before_reset:
            bias[2 * H:] = layer.Wb[d, 2 * H:]
            rbh = _blocked(layer.Rb[d, 2 * H:], 1)
            ph = panels(R, G, "R")
        elif layer.kind == "gru":
            ph = panels(R[:2 * H], 2, "R")
            prh = panels(R[2 * H:], 1, "R")
        else:
            ph = panels(R, G, "R")
        kernels.append(CellKernel(
            KIND_CODES[layer.kind], G, layer.input_size, H, layer.output_size,
            d == 1 or layer.reverse, layer.input_forget, layer.linear_before_reset,
            layer.clip or 0.0,
            [(a.code, a.alpha, a.beta) for a in layer.activations[d]],
            panels(layer.W[d], G, "W"), ph, _blocked(bias, G), prh=prh,
            pproj=None if layer.proj is None else panels(layer.proj[d], 1, "projection"),
            rbh=rbh, peep=None if layer.P is None else _blocked(layer.P[d], 3),
            wtype=WEIGHT_TYPES.index(wtype)))
    layer.packed[precision] = kernels
    return kernels
