"""The weight precisions and the policy that maps each to the kernels' weight type for a layer:
rounding to bf16/fp16, symmetric int8 with an optional residual part, and the predicted
rounding error of a layer's worst unit that decides when int8 takes its residual or bf16 runs
as fp16 (docs/precision.md). Which precision runs fastest on this CPU is
``precision_route``'s job; packing the weights in the chosen type is ``packing``'s."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .kernels import I8_FINE
from ..errors import ModelError

if TYPE_CHECKING:
    from .layers import Layer


# Weight precisions (docs/precision.md), each the name of its weight type in the kernels
# (_kernels.WEIGHT_TYPES: enum rnn_wtype in include/rnnengine/cells.h).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
FP16_MAX = 65504.0


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; "
                         f"got {precision!r}")
    return precision


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
