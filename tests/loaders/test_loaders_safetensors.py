"""The .safetensors reader on hostile files: every malformation is a ModelError naming it.

Files are written byte by byte here (the format is small), so each case breaks exactly one
rule; the happy path against PyTorch is in test_loaders_torch.py."""
import json
import os
import struct

import numpy as np
import pytest

import rnnengine
from rnnengine import ModelError

H, I = 3, 2


def entries():
    rng = np.random.default_rng(0)
    return {"rnn.weight_ih_l0": rng.standard_normal((3 * H, I)).astype(np.float32),
            "rnn.weight_hh_l0": rng.standard_normal((3 * H, H)).astype(np.float32)}


def file_bytes(header: dict, data: bytes, length=None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def valid_parts():
    header, data = {}, b""
    for name, a in entries().items():
        raw = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, data


def write(tmp_path, content: bytes):
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    return path


def test_valid_file_loads_as_a_gru(tmp_path):
    header, data = valid_parts()
    header["__metadata__"] = {"format": "pt"}
    model = rnnengine.load(write(tmp_path, file_bytes(header, data)))
    assert (model.kind, model.input_size, model.hidden_size) == ("gru", I, H)


def test_bf16_and_f16_are_widened(tmp_path):
    header, data = {}, b""
    for name, a in entries().items():
        if name.endswith("ih_l0"):
            raw, dtype = a.astype(np.float16).tobytes(), "F16"
            expect_ih = a.astype(np.float16).astype(np.float32)
        else:
            bits = (a.view(np.uint32) >> 16).astype("<u2")
            raw, dtype = bits.tobytes(), "BF16"
            expect_hh = (bits.astype(np.uint32) << 16).view(np.float32)
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    model = rnnengine.load(write(tmp_path, file_bytes(header, data)))
    # GRU: torch r,z,n -> ONNX z,r,h; compare the r blocks
    np.testing.assert_array_equal(model.layers[0].W[0, H:2 * H], expect_ih[:H])
    np.testing.assert_array_equal(model.layers[0].R[0, H:2 * H], expect_hh[:H])


def hostile_cases():
    header, data = valid_parts()
    first = next(iter(header))
    yield "absurd header length", struct.pack("<Q", 2**63) + b"{}" + data, "header length"
    yield "header claims gigabytes", file_bytes(header, data, length=3 * 2**30), "header length"
    yield "header past the end", file_bytes(header, data, length=len(json.dumps(header)) + len(data) + 1), "header length"
    yield "truncated length", b"\x05\x00\x00", "8-byte header length"
    yield "not JSON", struct.pack("<Q", 5) + b"{nope" + data, "not JSON"
    yield "JSON list", file_bytes([1, 2], data), "JSON object"
    for change, message in (
            ({"dtype": "F8_E4M3"}, "dtype 'F8_E4M3'"),
            ({"dtype": 7}, "dtype 7"),
            ({"data_offsets": [0, len(data) + 4]}, "outside"),
            ({"data_offsets": [-4, 32]}, "outside"),
            ({"data_offsets": [0]}, r"\[begin, end\]"),
            ({"shape": [-1, 2]}, "non-negative"),
            ({"shape": [2**40, 2**40]}, "needs"),
            ({"shape": "9,2"}, "non-negative"),
    ):
        bad = json.loads(json.dumps(header))
        bad[first].update(change)
        yield f"entry {change}", file_bytes(bad, data), message
    overlap = json.loads(json.dumps(header))
    second = list(overlap)[1]
    overlap[second]["data_offsets"] = [4, 4 + overlap[second]["data_offsets"][1]
                                       - overlap[second]["data_offsets"][0]]
    yield "overlapping tensors", file_bytes(overlap, data), "overlap"
    missing = json.loads(json.dumps(header))
    del missing[first]["dtype"]
    yield "entry without dtype", file_bytes(missing, data), "dtype, shape and data_offsets"
    text = json.dumps(header)
    twice = text[:-1] + ", " + text[1:]
    yield "a name twice", struct.pack("<Q", len(twice)) + twice.encode() + data, "twice"
    deep = "[" * 100000 + "]" * 100000
    yield ("deep nesting", struct.pack("<Q", len(deep) + 7) + b'{"a": ' + deep.encode() + b"}",
           "header is not JSON")


@pytest.mark.parametrize("name, content, message", list(hostile_cases()),
                         ids=[c[0] for c in hostile_cases()])
def test_hostile_header_is_a_model_error(tmp_path, name, content, message):
    with pytest.raises(ModelError, match=message):
        rnnengine.load(write(tmp_path, content))


def test_non_regular_file_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)   # opening it for reading would block forever
    with pytest.raises(ModelError, match="not a regular file"):
        rnnengine.load(fifo)


def test_integer_weights_are_refused(tmp_path):
    header, data = {}, b""
    for name, a in entries().items():
        raw = a.astype("<i4").tobytes()
        header[name] = {"dtype": "I32", "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    with pytest.raises(ModelError, match="must be a float array"):
        rnnengine.load(write(tmp_path, file_bytes(header, data)))
