"""The kernels' weight layout: a layer repacked, once per precision, into the per-direction
kernel descriptors the C code runs (``pack_layer``; layout: include/rnnengine/cells.h), in the
weight type ``precision.weight_type`` picks."""
from __future__ import annotations

import numpy as np

from .kernels import BLOCK, KIND_CODES, WEIGHT_TYPES, CellKernel
from ..errors import ModelError
from .layers import GATES, Layer
from .precision import (check_precision, from_bfloat16, int8_residual_part, quantize_int8,
                        to_bfloat16, to_float16, weight_type)


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
