"""The engine's own ``.npz`` format, written and read here: every array under
``layer{k}/{W,R,B,P,proj}`` and a JSON header (as a uint8 array ``__rnnengine__``) with the
attributes. With a reduced "precision" in the header, W, R and proj are stored in the weight
type that precision ran the layer with (precision.weight_type): float16, bfloat16 bits as uint16
(or float16 for the layers a bf16 model runs with fp16 weights: precision.bf16_as_fp16), or int8
with a float32 ``{name}_scale`` per row, plus the int8 residual part ``{name}_fine`` for the
layers that carry one (precision.int8_residual); the rest stays float32. A reloaded layer runs
with the type its file holds (Layer.stored_types), not the rules again. No pickle: it is read
back with ``allow_pickle=False`` (loaders/npz.py opens the archive and hands it here when it
holds the header)."""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import ModelError
from ..core.layers import ACTIVATIONS, Layer
from ..core.precision import (PRECISIONS, dequantize_int8, from_bfloat16, int8_residual,
                              int8_residual_part, quantize_int8, to_bfloat16, to_float16,
                              weight_type)

HEADER = "__rnnengine__"
FORMAT_VERSION = 1


REDUCED = ("W", "R", "proj")   # the tensors a reduced precision stores (biases stay float32)


def save(layers, batch_first: bool, path, precision="fp32") -> None:
    """Write a stack of ``layers`` as the engine's own ``.npz`` at ``path``, its weights in
    ``precision`` (one mode, or one per layer; the values the kernels use, no more)."""
    path = os.fspath(path)
    modes = [precision] * len(layers) if isinstance(precision, str) else list(precision)
    header = {"format": "rnnengine", "version": FORMAT_VERSION,
              "batch_first": bool(batch_first),
              "precision": modes[0] if len(set(modes)) == 1 else modes, "layers": []}
    arrays = {}
    for k, (layer, mode) in enumerate(zip(layers, modes)):
        onnx_form = layer.to_onnx()
        header["layers"].append(layer.attributes())
        wtype = weight_type(layer, mode)
        for name in ("W", "R", "B", "P", "proj"):
            if onnx_form[name] is not None:
                a = np.ascontiguousarray(onnx_form[name], np.float32)
                key = f"layer{k}/{name}"
                arrays.update(_stored(key, a, wtype) if name in REDUCED
                              else {key: a})
    arrays[HEADER] = np.frombuffer(json.dumps(header).encode("ascii"), np.uint8)
    # Write beside the target and rename, so a crash never leaves half a model behind; an
    # open file object also stops numpy from appending ".npz" to the name.
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _stored(key: str, a: np.ndarray, wtype: str) -> dict:
    """The arrays that hold weight ``a`` in weight type ``wtype`` (_kernels.WEIGHT_TYPES)."""
    if wtype == "fp16":
        return {key: to_float16(a, key)}
    if wtype == "bf16":
        return {key: to_bfloat16(a)}
    if wtype in ("int8", "int8r"):
        q, scale = quantize_int8(a)
        fine = {f"{key}_fine": int8_residual_part(a, q, scale)} if wtype == "int8r" else {}
        return {key: q, f"{key}_scale": scale[..., 0], **fine}
    return {key: a}


def _restored(archive, key: str, precision: str, where: str) -> tuple:
    """Inverse of ``_stored``: (the weight as float32, its weight type); fp16 and bf16
    exactly, int8 as precision.dequantize_int8, which quantizes back to the same parts."""
    a = archive.get(key, where)
    if precision == "fp32":
        return a, "fp32"
    if precision == "bf16" and a.dtype == np.float16:
        return a.astype(np.float32), "fp16"     # precision.bf16_as_fp16
    expected = {"fp16": "f", "bf16": "u", "int8": "i"}[precision]
    if a.dtype.kind != expected or (precision == "bf16" and a.dtype != np.uint16):
        raise ModelError(f"{archive.path}: {where}: {key!r} has dtype {a.dtype}, not what a "
                         f"{precision} file stores")
    if precision == "bf16":
        return from_bfloat16(a), "bf16"
    if precision == "int8":
        scale = archive.get(f"{key}_scale", where)
        if scale.dtype.kind != "f" or scale.shape != a.shape[:-1]:
            raise ModelError(f"{archive.path}: {where}: {key}_scale must be float of shape "
                             f"{a.shape[:-1]}; got {scale.dtype} {scale.shape}")
        fine = None
        if f"{key}_fine" in archive.files:
            fine = archive.get(f"{key}_fine", where)
            if fine.dtype != np.int8 or fine.shape != a.shape:
                raise ModelError(f"{archive.path}: {where}: {key}_fine must be int8 of shape "
                                 f"{a.shape}; got {fine.dtype} {fine.shape}")
        return dequantize_int8(a, scale[..., None], fine), "int8" if fine is None else "int8r"
    return a, precision


def read(archive):
    """-> (layers, batch_first, precision: one mode or a tuple per layer) from an archive
    holding the header. ``archive`` has
    ``get(key, where)`` (the array or a ModelError), ``files`` and ``path``."""
    where = "rnnengine header"
    raw = archive.get(HEADER, where)
    try:
        if raw.dtype == np.uint8:
            text = raw.tobytes().decode("utf-8")
        elif raw.dtype.kind == "U" and raw.size == 1:
            text = str(raw.reshape(-1)[0])
        else:
            raise ValueError(f"expected a uint8 array, got dtype {raw.dtype}")
        header = json.loads(text)
        if header.get("format") != "rnnengine":
            raise ValueError("format is not 'rnnengine'")
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {header.get('version')!r}; this engine reads version "
                             f"{FORMAT_VERSION}")
        specs = header["layers"]
        if not isinstance(specs, list) or not specs:
            raise ValueError("no layers")
        batch_first = header["batch_first"]
        if not isinstance(batch_first, bool):
            raise ValueError("batch_first must be true or false")
        precision = header.get("precision", "fp32")
        modes = precision if isinstance(precision, list) else [precision] * len(specs)
        if len(modes) != len(specs) or any(m not in PRECISIONS for m in modes):
            raise ValueError(f"precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
                             f" or a list of those, one per layer ({len(specs)})")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{archive.path}: malformed rnnengine header: {e}") from None
    return ([_layer(archive, k, spec, mode) for k, (spec, mode) in enumerate(zip(specs, modes))],
            batch_first, precision if isinstance(precision, str) else tuple(modes))


def _layer(archive, k: int, spec, precision: str) -> Layer:
    here = f"layer {k}"
    try:
        # Every activation keeps its own alpha/beta; from_onnx's ONNX-style lists hand them
        # only to the functions that take them, so they are filtered the same way here.
        names = [str(a[0]) for a in spec["activations"]]
        alphas = [float(a[1]) for a in spec["activations"]
                  if ACTIVATIONS.get(str(a[0]), (0, False))[1]]
        betas = [float(a[2]) for a in spec["activations"]
                 if ACTIVATIONS.get(str(a[0]), (0, False, False))[2]]
        present = [name for name in ("W", "R", "B", "P", "proj")
                   if f"layer{k}/{name}" in archive.files]
        reduced = {name: _restored(archive, f"layer{k}/{name}", precision, here)
                   for name in present if name in REDUCED}
        arrays = {name: reduced[name][0] if name in reduced
                  else archive.get(f"layer{k}/{name}", here) for name in present}
        if "W" not in arrays or "R" not in arrays:
            raise ModelError(f"{archive.path}: {here}: W or R is missing")
        wtypes = {name: wtype for name, (_, wtype) in reduced.items()}
        if len(set(wtypes.values())) > 1:
            found = ", ".join(f"{name} {wtype}" for name, wtype in wtypes.items())
            raise ModelError(f"{archive.path}: {here}: W, R and proj must share one weight "
                             f"type; got {found}")
        layer = Layer.from_onnx(
            str(spec["kind"]), arrays["W"], arrays["R"], arrays.get("B"), arrays.get("P"),
            direction=str(spec["direction"]), activations=names,
            activation_alpha=alphas, activation_beta=betas, clip=spec["clip"],
            input_forget=int(spec["input_forget"]),
            linear_before_reset=int(spec["linear_before_reset"]),
            proj=arrays.get("proj"))
        # Residual int8 weights must be what the layer's per-row scales call for
        # (precision.int8_rounding_error depends on nothing else, so a saved layer passes).
        fine = any(f"layer{k}/{name}_fine" in archive.files for name in REDUCED)
        if fine and not (wtypes["W"] == "int8r" and int8_residual(layer)):
            raise ModelError(f"{archive.path}: {here}: holds int8 residual weights (_fine) "
                             "that its int8 scales do not call for")
        layer.stored_types[precision] = wtypes["W"]
        return layer
    except ModelError as e:
        message = str(e)
        raise ModelError(message if message.startswith(archive.path)
                         else f"{archive.path}: {here}: {message}") from None
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ModelError(f"{archive.path}: {here}: malformed header entry "
                         f"({type(e).__name__}: {e})") from None
