"""State migration: a state exported to bytes and imported elsewhere (another stream, pool or
process) continues exactly; malformed, truncated or foreign blobs are refused."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnnengine
from rnnengine.runtime.state_io import MAGIC, export_state, import_state, model_fingerprint
from torch_reference import assert_close, build_model, onnx_arrays, random_model, torch_run

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__))))

# Runs in a fresh interpreter: rebuilds the model from the saved ONNX-layout arrays, imports
# the state into a Stream or a Pool, steps through xs, writes ys and the exported final state.
CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from rnnengine.core.layers import Layer
    from rnnengine.runtime.model import Model

    arrays, blob, ys_path, out_blob, target = sys.argv[1:6]
    d = np.load(arrays, allow_pickle=False)
    kind = str(d["kind"])
    extra = {"linear_before_reset": 1} if kind == "gru" else {}
    model = Model([Layer.from_onnx(kind, d[f"W{k}"], d[f"R{k}"], d[f"B{k}"],
                                   proj=d[f"proj{k}"] if f"proj{k}" in d.files else None, **extra)
                   for k in range(int(d["num_layers"]))])
    data = open(blob, "rb").read()
    if target == "pool":
        pool = model.pool(4)
        pool.open()                       # another stream in the way: ids need not match
        sid = pool.import_state(data)
        ys = np.array([pool.step([sid], x[None])[0] for x in d["xs"]])
        final = pool.export_state(sid)
    else:
        stream = model.stream(batch=1)
        stream.import_state(data)
        ys = np.array([stream.step(x) for x in d["xs"]])
        final = stream.export_state()
    np.save(ys_path, ys)
    open(out_blob, "wb").write(final)
""")

CASES = {
    "lstm-2layers-proj": dict(kind="lstm", input_size=4, hidden_size=6, num_layers=2, proj_size=3),
    "gru": dict(kind="gru", input_size=5, hidden_size=7),
    "rnn": dict(kind="rnn", input_size=3, hidden_size=5, num_layers=2),
}


def _leaves(state):
    return state if isinstance(state, tuple) else (state,)


def _assert_same_bits(a, b):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("source,target", [("stream", "pool"), ("pool", "stream")])
@pytest.mark.parametrize("case", list(CASES))
def test_state_continues_exactly_in_another_process(tmp_path, case, source, target):
    cfg = CASES[case]
    arrays = onnx_arrays(seed=3, **cfg)
    model, ref = build_model(cfg["kind"], arrays), random_model(seed=3, **cfg)[1]
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((12, cfg["input_size"])).astype(np.float32)
    first, rest = xs[:7], xs[7:]

    if source == "stream":
        here = model.stream(batch=1)
        y_first = np.array([here.step(x) for x in first])
        blob = here.export_state()
    else:
        pool = model.pool(3)
        sid = pool.open()
        y_first = np.array([pool.step([sid], x[None])[0] for x in first])
        blob = pool.export_state(sid)

    saved = {"kind": cfg["kind"], "num_layers": len(arrays), "xs": rest}
    for k, a in enumerate(arrays):
        saved.update({f"{name}{k}": v for name, v in a.items()})
    np.savez(tmp_path / "arrays.npz", **saved)
    (tmp_path / "state.bin").write_bytes(blob)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "arrays.npz"),
                    str(tmp_path / "state.bin"), str(tmp_path / "ys.npy"),
                    str(tmp_path / "final.bin"), target],
                   check=True, env=env, timeout=120)
    y_rest = np.load(tmp_path / "ys.npy", allow_pickle=False)

    # Against PyTorch: the migrated stream is one uninterrupted sequence.
    y_ref, state_ref = torch_run(ref, xs)
    assert_close(np.concatenate([y_first, y_rest]), y_ref)
    final = import_state(model, (tmp_path / "final.bin").read_bytes())
    assert_close(final, state_ref)
    # Exactly: the other process continued bit for bit as this one would have.
    stay = model.stream(batch=1)
    stay.import_state(blob)
    np.testing.assert_array_equal(np.array([stay.step(x) for x in rest]), y_rest)
    _assert_same_bits(stay.state, final)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch", [None, 1, 3])
def test_round_trip_keeps_structure_and_bits(case, batch):
    model, _ = random_model(seed=1, **CASES[case])
    rng = np.random.default_rng(2)
    template = model.zero_state(batch or 1)
    state = tuple(rng.standard_normal(s.shape).astype(np.float32) for s in _leaves(template))
    if batch is None:
        state = tuple(s[:, 0] for s in state)
    state = state if len(state) == 2 else state[0]
    back = import_state(model, export_state(model, state))
    _assert_same_bits(back, state)
    if batch and batch > 1:
        stream = model.stream(batch=batch)
        stream.state = state
        other = model.stream(batch=batch)
        other.import_state(stream.export_state())
        _assert_same_bits(other.state, state)


def _model_pair():
    a = build_model("lstm", onnx_arrays("lstm", 3, 4, seed=0))
    same = build_model("lstm", onnx_arrays("lstm", 3, 4, seed=0))
    other = build_model("lstm", onnx_arrays("lstm", 3, 4, seed=1))
    return a, same, other


def test_fingerprint_follows_weights_and_attributes():
    a, same, other = _model_pair()
    assert model_fingerprint(a) == model_fingerprint(same) != model_fingerprint(other)
    arr = onnx_arrays("lstm", 3, 4, seed=0)[0]
    clipped = rnnengine.Model([rnnengine.Layer.from_onnx("lstm", arr["W"], arr["R"], arr["B"], clip=3.0)])
    assert model_fingerprint(clipped) != model_fingerprint(a)
    # A state moves between equal models built separately, not to a different one.
    blob = export_state(a, a.zero_state(1))
    _assert_same_bits(import_state(same, blob), a.zero_state(1))
    with pytest.raises(ValueError, match="different model"):
        import_state(other, blob)
    with pytest.raises(ValueError, match="different model"):
        import_state(clipped, blob)


def test_refuses_states_of_other_shapes():
    a, _, _ = _model_pair()
    gru = build_model("gru", onnx_arrays("gru", 3, 4))
    bigger = build_model("lstm", onnx_arrays("lstm", 3, 5))
    blob = export_state(a, a.zero_state(2))
    with pytest.raises(ValueError, match="its kind is 'lstm', the model's is 'gru'"):
        import_state(gru, blob)
    with pytest.raises(ValueError, match="its hidden_size is 4, the model's is 5"):
        import_state(bigger, blob)
    # A batch-2 state does not fit a batch-1 stream or a pool stream.
    with pytest.raises(ValueError, match="shape"):
        a.stream(batch=1).import_state(blob)
    with pytest.raises(ValueError, match="shape"):
        a.pool(2).import_state(blob)
    with pytest.raises(ValueError, match=r"state h must have shape \(1, N, 4\)"):
        export_state(a, (np.zeros(4, np.float32), np.zeros(4, np.float32)))


def _rebuild(blob: bytes, header_edit=None, payload=None, version=1, magic=MAGIC) -> bytes:
    _, _, hlen = struct.unpack_from("<8sHI", blob)
    header = json.loads(blob[14:14 + hlen])
    if header_edit:
        header_edit(header)
    head = json.dumps(header).encode()
    body = blob[14 + hlen:] if payload is None else payload
    return struct.pack("<8sHI", magic, version, len(head)) + head + body


def test_refuses_malformed_truncated_and_corrupted_blobs():
    a, _, _ = _model_pair()
    rng = np.random.default_rng(0)
    state = tuple(rng.standard_normal(s.shape).astype(np.float32) for s in a.zero_state(1))
    blob = export_state(a, state)
    for cut in range(len(blob)):
        with pytest.raises(ValueError, match="not a valid rnnengine state"):
            import_state(a, blob[:cut])
    with pytest.raises(ValueError, match="trailing bytes"):
        import_state(a, blob + b"\0")
    corrupt = bytearray(blob)
    corrupt[-3] ^= 0x10
    with pytest.raises(ValueError, match="checksum"):
        import_state(a, bytes(corrupt))
    with pytest.raises(ValueError, match="magic"):
        import_state(a, _rebuild(blob, magic=b"PK\x03\x04\0\0\0\0"))
    with pytest.raises(ValueError, match="version 2 is not supported"):
        import_state(a, _rebuild(blob, version=2))
    bad_headers = [
        lambda h: h.update(arrays=[["h", [1, 1, 4]]]),
        lambda h: h.update(arrays=[["h", [1, 1, 4]], ["c", [1, 2, 4]]]),
        lambda h: h.update(batch=0),
        lambda h: h.update(batch="1"),
        lambda h: h.update(unbatched=True, batch=2),
    ]
    for edit in bad_headers:
        with pytest.raises(ValueError, match="not a valid rnnengine state"):
            import_state(a, _rebuild(blob, edit))
    with pytest.raises(ValueError, match="not JSON"):
        import_state(a, struct.pack("<8sHI", MAGIC, 1, 3) + b"{x}" + blob[-32:])
    with pytest.raises(ValueError, match="not a JSON object"):
        import_state(a, struct.pack("<8sHI", MAGIC, 1, 2) + b"[]")
    with pytest.raises(ValueError, match="does not fit"):
        import_state(a, struct.pack("<8sHI", MAGIC, 1, 2**31) + b"{}")
    with pytest.raises(TypeError, match="must be bytes"):
        import_state(a, "not bytes")
    # bytearray and memoryview are fine.
    _assert_same_bits(import_state(a, bytearray(blob)), state)
    _assert_same_bits(import_state(a, memoryview(blob)), state)


def test_bidirectional_run_state_round_trip():
    """Model.run's final state of a bidirectional stack, (L*D, N, .), exports and imports
    like any other; run continues from it as from the original."""
    rng = np.random.default_rng(4)
    layers = [rnnengine.Layer.from_onnx("lstm", rng.uniform(-.3, .3, (2, 20, 3)),
                                        rng.uniform(-.3, .3, (2, 20, 5)), direction="bidirectional"),
              rnnengine.Layer.from_onnx("lstm", rng.uniform(-.3, .3, (2, 20, 10)),
                                        rng.uniform(-.3, .3, (2, 20, 5)), direction="bidirectional")]
    model = rnnengine.Model(layers)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    _, state = model.run(x)
    assert state[0].shape == (4, 2, 5)
    back = import_state(model, export_state(model, state))
    _assert_same_bits(back, state)
    np.testing.assert_array_equal(model.run(x, back)[0], model.run(x, state)[0])


@pytest.mark.parametrize("depth", [5000, 200000])
def test_deeply_nested_header_is_a_value_error(depth):
    a, _, _ = _model_pair()
    head = b"[" * depth + b"]" * depth
    with pytest.raises(ValueError, match="nested too deeply"):
        import_state(a, struct.pack("<8sHI", MAGIC, 1, len(head)) + head)
    head = b'{"kind": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ValueError, match="nested too deeply"):
        import_state(a, struct.pack("<8sHI", MAGIC, 1, len(head)) + head)


def test_absurd_batch_gives_the_exact_size_in_the_message():
    """The expected payload is computed in Python ints: 2**62 rows do not wrap int64."""
    a, _, _ = _model_pair()
    blob = export_state(a, a.zero_state(1))
    batch = 2**62
    L, _, out = a.zero_state(1)[0].shape
    H = a.zero_state(1)[1].shape[2]
    huge = _rebuild(blob, lambda h: h.update(batch=batch, arrays=[["h", [L, batch, out]],
                                                                   ["c", [L, batch, H]]]))
    expected = 4 * (L * batch * out + L * batch * H)
    with pytest.raises(ValueError, match=f"expected {expected} ") as info:
        import_state(a, huge)
    assert "truncated" in str(info.value)
