"""``.safetensors`` files: parsed here (no safetensors package), then the ``.npz`` name route.

The format (huggingface/safetensors): an 8-byte little-endian header length ``n``, ``n``
bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``, then the tensors' raw little-endian bytes, offsets counted from the end of the
header. Nothing is executed; every inconsistency is a ``ModelError`` before a byte of tensor
data is read: a header longer than the file or than ``MAX_HEADER``, JSON that is not an
object of such entries (duplicate names included), unknown dtypes, offsets outside the data,
sizes that disagree with dtype x shape, tensors that overlap.
"""
from __future__ import annotations

import json
import struct

import numpy as np

from ..errors import ModelError
from ..core.files import open_regular

MAX_HEADER = 100 * 2**20   # the reference implementation's own limit (100 MB)
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bf16",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
MAGIC_JSON = b"{"


def looks_like_safetensors(head: bytes) -> bool:
    """The first bytes of a file: a plausible header length, then the JSON's opening brace."""
    return len(head) >= 9 and head[8:9] == MAGIC_JSON and struct.unpack("<Q", head[:8])[0] >= 2


class SafetensorsFile:
    """The tensors of one file as a read-on-access mapping ``name -> float/int array``."""

    def __init__(self, path: str):
        self.path = path
        f, self.size = open_regular(path, "the .safetensors file")
        with f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{path}: {len(head)} bytes; a .safetensors file starts with an "
                                 "8-byte header length")
            n = struct.unpack("<Q", head)[0]
            if n > self.size - 8 or n > MAX_HEADER:
                raise ModelError(f"{path}: header length {n:,} bytes does not fit the file "
                                 f"({self.size:,} bytes; at most {MAX_HEADER:,} accepted)")
            raw = f.read(n)
        self.data_start = 8 + n
        self.data_size = self.size - self.data_start
        self.entries = self._parse(raw)
        self.files = list(self.entries)

    def _parse(self, raw: bytes) -> dict:
        def no_duplicates(pairs):
            keys = [k for k, _ in pairs]
            if len(keys) != len(set(keys)):
                raise ModelError(f"{self.path}: header names a tensor twice")
            return dict(pairs)

        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ModelError(f"{self.path}: header is not JSON ({type(e).__name__}: {e})") from None
        if not isinstance(header, dict):
            raise ModelError(f"{self.path}: header must be a JSON object; got "
                             f"{type(header).__name__}")
        entries, spans = {}, []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            entries[name] = self._entry(name, entry)
            spans.append((entries[name][2], entries[name][3], name))
        spans.sort()
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
            if begin < end:
                raise ModelError(f"{self.path}: tensors {a!r} and {b!r} overlap")
        return entries

    def _entry(self, name: str, entry) -> tuple:
        """-> (dtype code, shape, begin, end), checked against the file."""
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise ModelError(f"{where}: expected an object with dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ModelError(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ModelError(f"{where}: shape must be a list of non-negative integers; got {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ModelError(f"{where}: data_offsets must be [begin, end]; got {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= self.data_size:
            raise ModelError(f"{where}: data_offsets [{begin}, {end}] lie outside the "
                             f"{self.data_size:,} bytes of data")
        itemsize = 2 if dtype == "BF16" else np.dtype(DTYPES[dtype]).itemsize
        count = 1
        for d in shape:
            count *= d   # Python ints: no overflow on hostile shapes
        if count * itemsize != end - begin:
            raise ModelError(f"{where}: {dtype} {shape} needs {count * itemsize:,} bytes; "
                             f"data_offsets give {end - begin:,}")
        return dtype, tuple(shape), begin, end

    def keys(self):
        return self.entries.keys()

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        with open_regular(self.path, "the .safetensors file")[0] as f:
            f.seek(self.data_start + begin)
            data = f.read(end - begin)
        if len(data) != end - begin:  # the file shrank since the header was checked
            raise ModelError(f"{self.path}: tensor {name!r} is truncated")
        if dtype == "BF16":   # the upper half of a float32
            bits = np.frombuffer(data, "<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(shape)
        return np.frombuffer(data, DTYPES[dtype]).reshape(shape).copy()
