"""Named arrays <-> bytes for a session stream's exported state. Never pickle.

Format (little-endian)::

    magic   8 bytes  b"RNNESESS"
    hlen    uint32   length of the header
    header  UTF-8 JSON: [[name, dtype str, shape], ...]
    payload the arrays in header order, raw, C order, little-endian

Anything that does not parse exactly (truncated, extra bytes, unknown dtype, negative or
oversized shapes) raises ValueError.
"""
from __future__ import annotations

import json
import struct
from typing import Dict

import numpy as np

MAGIC = b"RNNESESS"
_PREFIX = struct.Struct("<8sI")
_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}
_MAX_HEADER = 1 << 20


def pack_arrays(arrays: Dict[str, np.ndarray]) -> bytes:
    header, payload = [], []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        header.append([name, dt.name, list(a.shape)])
        payload.append(a.astype(dt.newbyteorder("<"), copy=False).tobytes())
    head = json.dumps(header).encode()
    return _PREFIX.pack(MAGIC, len(head)) + head + b"".join(payload)


def _bad(reason: str) -> ValueError:
    return ValueError(f"not a session state exported by rnnengine: {reason}")


def unpack_arrays(data) -> Dict[str, np.ndarray]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"state data must be bytes; got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise _bad(f"{len(data)} bytes is too short")
    magic, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _bad("wrong magic bytes")
    if hlen > _MAX_HEADER or _PREFIX.size + hlen > len(data):
        raise _bad("truncated header")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + hlen].decode())
    except (UnicodeDecodeError, ValueError):
        raise _bad("malformed header") from None
    if not isinstance(header, list):
        raise _bad("malformed header")
    offset, out = _PREFIX.size + hlen, {}
    for entry in header:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or entry[1] not in _DTYPES or not isinstance(entry[2], list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                           for d in entry[2]) or entry[0] in out):
            raise _bad(f"malformed header entry {str(entry)[:80]}")
        name, dtype, shape = entry
        dt = np.dtype(dtype).newbyteorder("<")
        count = 1
        for d in shape:
            count *= d
        size = count * dt.itemsize
        if offset + size > len(data):
            raise _bad(f"array {name!r} is truncated")
        out[name] = np.frombuffer(data, dt, count, offset).reshape(shape).astype(
            dt.newbyteorder("="))
        offset += size
    if offset != len(data):
        raise _bad(f"{len(data) - offset} unexpected trailing bytes")
    return out
