"""State migration: a stream's state as bytes, to continue it in another process or pool.

Format (all integers little-endian), never pickle::

    magic    8 bytes  b"RNNESTAT"
    version  uint16   1
    hlen     uint32   length of the header
    header   hlen bytes of UTF-8 JSON:
             {"kind", "num_layers", "num_directions", "input_size", "hidden_size",
              "output_size", "batch", "unbatched", "arrays": [["h", shape], ["c", shape]],
              "model": sha256 fingerprint of the weights, "crc32": of the payload}
    payload  the arrays of "arrays", in order, raw little-endian float32, C order

The state is exactly the structure ``Model.run`` returns (``h``, or ``(h, c)`` for LSTM, each
``(L*D, N, ·)``, or ``(L*D, ·)`` unbatched), so what ``Stream.state`` or ``Pool.state`` gives
can be exported and what ``import_state`` returns can be assigned back. Float32 bits are
copied as they are, so an imported stream continues exactly where it left off.

A state only fits the model it came from: importing checks the sizes and a fingerprint of
the weights and attributes (a model saved and loaded elsewhere has the same fingerprint) and
raises ``ValueError`` on any mismatch or on a malformed, truncated or corrupted blob.

The envelope (magic, version, JSON header with "kind", "model" and "crc32", payload) is the
one format of every exported state: ``seal`` and ``unseal`` are shared with the whole-model
streams' state (state_blob.py, kind "session").
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
import weakref
import zlib
from typing import Callable, Tuple

import numpy as np

from ..core.checks import State, check_state, state_shapes

MAGIC = b"RNNESTAT"
VERSION = 1
_OLD_SESSION_MAGIC = b"RNNESESS"        # session states before they had this envelope
_PREFIX = struct.Struct("<8sHI")        # magic, version, header length
_MAX_HEADER = 1 << 20                   # a real header is a few hundred bytes

_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Model -> str
_fingerprints_lock = threading.Lock()


def cached_fingerprint(owner, compute: Callable[[], str]) -> str:
    """``compute()`` once per ``owner`` (a model or session: immutable), then from the cache."""
    with _fingerprints_lock:
        cached = _fingerprints.get(owner)
    if cached is None:
        cached = compute()
        with _fingerprints_lock:
            _fingerprints[owner] = cached
    return cached


def model_fingerprint(model) -> str:
    """sha256 (hex) of everything that decides what a state means: kind, sizes, every weight
    (as little-endian float32) and every attribute, layer by layer. Cached per model (models
    are immutable)."""
    return cached_fingerprint(model, lambda: _layers_fingerprint(model))


def _layers_fingerprint(model) -> str:
    digest = hashlib.sha256(b"rnnengine-model-v1")
    for layer in model.layers:
        attrs = layer.attributes()
        # Numbers as the exact repr of what the kernels use, flags as booleans (the form
        # fingerprints have had since version 1: older exports keep importing).
        attrs.update(
            activations=[[name, repr(float(np.float32(alpha))), repr(float(np.float32(beta)))]
                         for name, alpha, beta in attrs["activations"]],
            clip=None if attrs["clip"] is None else repr(float(attrs["clip"])),
            input_forget=bool(attrs["input_forget"]),
            linear_before_reset=bool(attrs["linear_before_reset"]))
        digest.update(json.dumps(attrs, sort_keys=True).encode())
        for name in ("W", "R", "Wb", "Rb", "P", "proj"):
            array = getattr(layer, name)
            if array is None:
                digest.update(f"{name}:none;".encode())
                continue
            array = np.ascontiguousarray(array, dtype="<f4")
            digest.update(f"{name}:{list(array.shape)};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _describe(model) -> dict:
    return {
        "kind": model.kind, "num_layers": model.num_layers,
        "num_directions": model.num_directions, "input_size": model.input_size,
        "hidden_size": model.hidden_size, "output_size": model.layers[0].output_size,
    }


def export_state(model, state: State) -> bytes:
    """``state`` of ``model`` (``h`` or ``(h, c)``, each ``(L*D, N, ·)`` or ``(L*D, ·)``)
    -> bytes in the format of this module's docstring."""
    h0 = state[0] if isinstance(state, (tuple, list)) else state
    shape = np.shape(h0)
    unbatched = len(shape) == 2
    if len(shape) not in (2, 3):
        LD, out = model.num_layers * model.num_directions, model.layers[0].output_size
        raise ValueError(f"state h must have shape ({LD}, N, {out}) or ({LD}, {out}); got {shape}")
    batch = 1 if unbatched else shape[1]
    h, c = check_state(model.layers, state, batch, unbatched)   # float32 copies (L*D, N, ·)
    arrays = [("h", h)] + ([("c", c)] if c is not None else [])
    if unbatched:
        arrays = [(name, a[:, 0]) for name, a in arrays]
    payload = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for _, a in arrays)
    header = dict(_describe(model), batch=batch, unbatched=unbatched,
                  arrays=[[name, list(a.shape)] for name, a in arrays],
                  model=model_fingerprint(model))
    return seal(header, payload)


def seal(header: dict, payload: bytes) -> bytes:
    """``header`` (a dict; "crc32" of the payload is added) and ``payload`` -> the bytes."""
    head = json.dumps(dict(header, crc32=zlib.crc32(payload)), sort_keys=True).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(head)) + head + payload


def _bad(reason: str) -> ValueError:
    return ValueError(f"not a valid rnnengine state: {reason}")


def unseal(data) -> Tuple[dict, bytes]:
    """Bytes from ``seal`` -> (header dict, payload), the prefix, version and header checked
    (the payload is checked by ``check_payload`` once its size is known). ValueError naming
    what is wrong; TypeError when ``data`` is not bytes-like."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"state data must be bytes (from export_state); got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise _bad(f"{len(data)} bytes is shorter than the {_PREFIX.size}-byte prefix (truncated?)")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic == _OLD_SESSION_MAGIC:
        raise _bad("a session state exported by an older rnnengine, without a model "
                   "fingerprint or checksum; export it again with this version")
    if magic != MAGIC:
        raise _bad(f"wrong magic bytes {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"rnnengine state format version {version} is not supported "
                         f"(this rnnengine reads version {VERSION})")
    if hlen > _MAX_HEADER or _PREFIX.size + hlen > len(data):
        raise _bad(f"header of {hlen} bytes does not fit in {len(data)} bytes (truncated?)")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _bad(f"header is not JSON ({error})") from None
    except RecursionError:   # nesting deeper than the interpreter's recursion limit
        raise _bad("header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise _bad("header is not a JSON object")
    return header, data[_PREFIX.size + hlen:]


def check_payload(header: dict, payload: bytes, size: int) -> None:
    """The payload is ``size`` bytes and its CRC-32 is the header's."""
    if len(payload) != size:
        raise _bad(f"payload is {len(payload)} bytes, expected {size} "
                   f"({'truncated' if len(payload) < size else 'trailing bytes'})")
    if zlib.crc32(payload) != header.get("crc32"):
        raise _bad("payload checksum mismatch (corrupted in transit?)")


def import_state(model, data) -> State:
    """bytes from ``export_state`` -> the state, in the structure it was exported with.
    ValueError when the bytes are malformed, truncated or corrupted, or come from another
    model; TypeError when ``data`` is not bytes-like."""
    header, payload = unseal(data)
    expected = _describe(model)
    for key, want in expected.items():
        if header.get(key) != want:
            raise ValueError(f"state does not fit this model: its {key} is {header.get(key)!r}, "
                             f"the model's is {want!r}")
    if header.get("model") != model_fingerprint(model):
        raise ValueError("state was exported from a different model (same sizes, different "
                         "weights or attributes): its fingerprint "
                         f"{str(header.get('model'))[:16]}... is not this model's "
                         f"{model_fingerprint(model)[:16]}...")

    batch, unbatched = header.get("batch"), header.get("unbatched")
    if type(batch) is not int or batch < 1 or type(unbatched) is not bool or (unbatched and batch != 1):
        raise _bad(f"batch {batch!r} / unbatched {unbatched!r} are not a valid pair")
    h_shape, c_shape = state_shapes(model.layers, batch)
    want = [["h", list(h_shape)]] + ([["c", list(c_shape)]] if c_shape else [])
    if unbatched:
        want = [[name, [shape[0], shape[2]]] for name, shape in want]
    if header.get("arrays") != want:
        raise _bad(f"arrays {header.get('arrays')!r} do not match {want!r}")

    sizes = [math.prod(shape) for _, shape in want]   # Python ints: a huge batch cannot wrap
    check_payload(header, payload, 4 * sum(sizes))
    flat = np.frombuffer(payload, dtype="<f4").astype(np.float32)   # a copy, owned
    arrays, offset = [], 0
    for (_, shape), size in zip(want, sizes):
        arrays.append(flat[offset:offset + size].reshape(shape))
        offset += size
    return tuple(arrays) if len(arrays) == 2 else arrays[0]
