"""Model files from anywhere: absurd declared sizes, lying headers, bombs and hostile archives.

Each file is loaded in a fresh subprocess whose address space is capped at 2 GiB, so a loader
that trusts a declared size and allocates it fails the test (MemoryError or a crash) instead of
taking the machine down; the only acceptable outcomes are rnnengine.ModelError or a model that
runs."""
import io
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

RUNNER = textwrap.dedent("""
    import os, resource, sys
    # AddressSanitizer (tools/sanitize.sh) reserves terabytes of shadow address space and caps
    # allocations itself; the 2 GiB cap is for ordinary runs.
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    import numpy as np
    import rnnengine
    try:
        model = rnnengine.load(sys.argv[1])
    except rnnengine.ModelError as error:
        print("ModelError:", error)
        sys.exit(0)
    model.run(np.zeros((2, 1, model.input_size), np.float32))
    print("loaded", model)
""")


def load_in_subprocess(path):
    done = subprocess.run([sys.executable, "-c", RUNNER, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout.strip()


def lstm_model(W, R, extra_nodes=(), inits=(), H=3, **attrs):
    nodes = list(extra_nodes) + [helper.make_node("LSTM", ["X", "W", "R"], ["Y"], name="lstm",
                                                  hidden_size=H, **attrs)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[t for t in (W, R) if t is not None] + list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def write(model, path):
    # Serialized by hand: onnx.save itself refuses some of the hostile external-data entries.
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def tensor(name, dims, raw=b"", dtype=TensorProto.FLOAT):
    t = TensorProto(name=name, data_type=dtype, dims=dims)
    t.raw_data = raw
    return t


def npy_bytes_with_header(shape, payload=b"\0" * 64, descr="<f4"):
    """A .npy whose header declares ``shape`` but whose data is only ``payload``."""
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def npz_file(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


R_OK = numpy_helper.from_array(np.zeros((1, 12, 3), np.float32), "R")
W_OK = numpy_helper.from_array(np.zeros((1, 12, 2), np.float32), "W")


def case_onnx_tensor_declares_a_trillion_floats(path):
    write(lstm_model(tensor("W", [1, 10**6, 10**6], b"\0" * 16), R_OK), path)


def case_onnx_tensor_with_negative_dims(path):
    write(lstm_model(tensor("W", [1, -12, 2], b"\0" * 96), R_OK), path)


def case_onnx_hidden_size_huge_weights_small(path):
    write(lstm_model(W_OK, R_OK, H=2**40), path)


def case_onnx_reshape_to_huge_shape(path):
    shape = numpy_helper.from_array(np.array([1, 2**31, 2**31], np.int64), "shape")
    small = numpy_helper.from_array(np.zeros(24, np.float32), "small")
    reshape = helper.make_node("Reshape", ["small", "shape"], ["W"])
    write(lstm_model(None, R_OK, [reshape], [shape, small]), path)


def case_onnx_expand_bomb(path):
    shape = numpy_helper.from_array(np.array([1, 2**20, 2**20], np.int64), "shape")
    one = numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "one")
    expand = helper.make_node("Expand", ["one", "shape"], ["W"])
    write(lstm_model(None, R_OK, [expand], [shape, one]), path)


def case_onnx_external_data_escapes_folder(path):
    W = tensor("W", [1, 12, 2])
    W.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "96")):
        W.external_data.add(key=key, value=value)
    write(lstm_model(W, R_OK), path)


def case_onnx_external_data_absolute_path(path):
    W = tensor("W", [1, 12, 2])
    W.data_location = TensorProto.EXTERNAL
    W.external_data.add(key="location", value="/etc/passwd")
    write(lstm_model(W, R_OK), path)


def case_onnx_external_data_huge_length(path):
    with open(os.path.join(os.path.dirname(path), "w.bin"), "wb") as f:
        f.write(b"\0" * 96)
    W = tensor("W", [1, 12, 2])
    W.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(2**40))):
        W.external_data.add(key=key, value=value)
    write(lstm_model(W, R_OK), path)


def case_onnx_recursion_bomb(path):
    # If nodes nested 25 deep (protobuf refuses messages nested past 100 levels, 3 per If).
    inner = lstm_model(W_OK, R_OK).graph
    empty = helper.make_graph([], "empty", [], [])
    for depth in range(25):
        node = helper.make_node("If", ["cond"], ["Y"], name=f"if{depth}",
                                then_branch=inner, else_branch=empty)
        inner = helper.make_graph([node], f"g{depth}", [],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    write(helper.make_model(inner, opset_imports=[helper.make_opsetid("", 14)]), path)


def case_onnx_truncated(path):
    data = lstm_model(W_OK, R_OK).SerializeToString()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def case_onnx_random_bytes(path):
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))


def case_onnx_empty_file(path):
    open(path, "wb").close()


def case_npz_header_declares_huge_array(path):
    npz_file(path, {"W.npy": npy_bytes_with_header((1, 10**6, 10**6)),
                    "R.npy": npy_bytes_with_header((1, 12, 3), b"\0" * 144)})


def case_npz_negative_shape(path):
    npz_file(path, {"W.npy": npy_bytes_with_header((1, -12, 2))})


def case_npz_object_array(path):
    npz_file(path, {"W.npy": npy_bytes_with_header((1,), b"\x80\x04K\x01.", descr="|O")})


def case_npz_zip_bomb(path):
    # 1 GiB of zeros compresses to about 1 MiB; declared as a small float array.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("W.npy", "w", force_zip64=True) as member:
            member.write(npy_bytes_with_header((1, 12, 2), b""))
            chunk = b"\0" * (1 << 24)
            for _ in range(64):
                member.write(chunk)


def case_npz_structured_dtype(path):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 12, 2), dtype=[("a", "<f4"), ("b", "<i4")]))
    npz_file(path, {"W.npy": buffer.getvalue()})


def case_npz_string_weights(path):
    buffer = io.BytesIO()
    np.save(buffer, np.array([["x"] * 2] * 12)[None])
    npz_file(path, {"W.npy": buffer.getvalue(), "R.npy": buffer.getvalue()})


def case_npz_nan_weights(path):
    # Not malformed: NaN weights load and run (NaN propagates); nothing may crash.
    np.savez(path, W=np.full((1, 12, 2), np.nan, np.float32), R=np.zeros((1, 12, 3), np.float32))


def case_npz_truncated(path):
    buffer = io.BytesIO()
    np.savez(buffer, W=np.zeros((1, 12, 2), np.float32), R=np.zeros((1, 12, 3), np.float32))
    with open(path, "wb") as f:
        f.write(buffer.getvalue()[:-40])


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_is_a_model_error_or_runs(tmp_path, name):
    suffix = ".npz" if name.startswith("npz") else ".onnx"
    folder = tmp_path / "models" / "inner"
    folder.mkdir(parents=True)
    path = str(folder / ("model" + suffix))
    CASES[name](path)
    outcome = load_in_subprocess(path)
    assert outcome.startswith(("ModelError:", "loaded")), outcome
    if "escapes" in name or "absolute" in name:
        assert outcome.startswith("ModelError:") and "root:" not in outcome
    if name not in ("npz_nan_weights", "onnx_recursion_bomb"):   # these two are valid models
        assert outcome.startswith("ModelError:"), outcome
        assert "model" in outcome, "the error names the file"


def test_member_that_is_not_npy_is_a_model_error(tmp_path):
    # Found by the fuzzer: NumPy returns such a member as raw bytes instead of an array.
    path = tmp_path / "model.npz"
    npz_file(path, {"weight_ih_l0.npy": npy_bytes_with_header((12, 2), b"\0" * 96),
                    "weight_hh_l0.npy": b"not an array at all"})
    assert load_in_subprocess(path).startswith("ModelError:")
