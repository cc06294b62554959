"""Named arrays <-> bytes for the exported state of a whole model's stream. Never pickle.

The envelope is the one every rnnengine state has (``state_io.seal``: magic, version, JSON
header, payload, CRC-32); the header here::

    {"kind": "session", "model": fingerprint of the session (``session_fingerprint``),
     "arrays": [[name, dtype str, shape], ...], "crc32": of the payload}

and the payload is the arrays in header order, raw, C order, little-endian.

Bytes that do not parse exactly (truncated, extra bytes, unknown dtype, negative or oversized
shapes, a corrupted payload), that hold another kind of state, or that come from another
model raise ValueError naming why.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Dict, Iterable, Optional

import numpy as np

from .state_io import cached_fingerprint, check_payload, seal, unseal

KIND = "session"
_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}


def session_fingerprint(sess) -> str:
    """sha256 (hex) of what decides what a session's state means: the graph's inputs and
    outputs (names, types, shapes) and the graph itself, initializers and the constants of
    subgraphs included (silero keeps its weights inside If branches). Computed once per
    session (sessions are immutable); a few ms for a model of a few MB."""
    def compute() -> str:
        digest = hashlib.sha256(b"rnnengine-session-v1")
        for arg in sess.get_inputs() + sess.get_outputs():
            digest.update(json.dumps([arg.name, arg.type, arg.shape]).encode())
        digest.update(sess.loaded.model.graph.SerializeToString())
        return digest.hexdigest()
    return cached_fingerprint(sess, compute)


def pack_arrays(arrays: Dict[str, np.ndarray], fingerprint: str) -> bytes:
    header, payload = [], []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        header.append([name, dt.name, list(a.shape)])
        payload.append(a.astype(dt.newbyteorder("<"), copy=False).tobytes())
    return seal({"kind": KIND, "model": fingerprint, "arrays": header}, b"".join(payload))


def _bad(reason: str) -> ValueError:
    return ValueError(f"not a session state exported by rnnengine: {reason}")


def unpack_arrays(data, fingerprint: str,
                  names: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
    """Bytes from ``pack_arrays`` -> {name: array}. ``fingerprint``: the importing session's;
    ``names``: the arrays its streams carry (an empty blob, the zero state, always fits)."""
    header, payload = unseal(data)
    if header.get("kind") != KIND:
        raise _bad(f"it holds the state of a {str(header.get('kind'))[:40]!r} layer stream, "
                   "not of a session's stream")
    entries = header.get("arrays")
    if not isinstance(entries, list):
        raise _bad("malformed header")
    shapes = {}
    for entry in entries:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or entry[1] not in _DTYPES or not isinstance(entry[2], list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                           for d in entry[2]) or entry[0] in shapes):
            raise _bad(f"malformed header entry {str(entry)[:80]}")
        shapes[entry[0]] = entry
    if names is not None and shapes and set(shapes) != set(names):
        raise ValueError(f"the state bytes hold {sorted(shapes)}; this session's streams "
                         f"carry {sorted(names)}")
    if header.get("model") != fingerprint:
        raise ValueError("state was exported from a different model (its fingerprint "
                         f"{str(header.get('model'))[:16]}... is not this session's "
                         f"{fingerprint[:16]}...)")
    sizes = [math.prod(shape) * np.dtype(dtype).itemsize for _, dtype, shape in entries]
    check_payload(header, payload, sum(sizes))
    out, offset = {}, 0
    for (name, dtype, shape), size in zip(entries, sizes):
        dt = np.dtype(dtype).newbyteorder("<")
        out[name] = np.frombuffer(payload, dt, math.prod(shape), offset).reshape(shape).astype(
            dt.newbyteorder("="))
        offset += size
    return out
