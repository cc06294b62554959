"""precision="auto" (with calibrate= and tolerance=) and one precision per layer or node:
the choice stays within its tolerance against independent references (the float64 NumPy
reference for layer stacks, ONNX Runtime for whole models), layers the calibration data never
reach stay fp32, and mixed choices survive a save and load."""
from __future__ import annotations

import os

import numpy as np
import pytest

import rnnengine
from rnnengine.testing import reference as _reference
from rnnengine.runtime import precision_auto
from rnnengine.core.layers import Layer
from rnnengine.core.precision import PRECISIONS
import conftest

DATA = conftest.DATA


def stack(rng, hidden=(96, 96), inputs=24):
    """LSTM layers with N(0, 1/K) weights, and their specs for the float64 reference."""
    layers, specs, width = [], [], inputs
    for H in hidden:
        W = rng.standard_normal((1, 4 * H, width)).astype(np.float32) / np.sqrt(width)
        R = rng.standard_normal((1, 4 * H, H)).astype(np.float32) / np.sqrt(H)
        B = rng.standard_normal((1, 8 * H)).astype(np.float32) * 0.1
        layers.append(Layer.from_onnx("lstm", W, R, B))
        specs.append({"kind": "lstm", "W": W, "R": R, "B": B})
        width = H
    stack.specs = specs
    return layers


def reference(layers, x):
    """float64 run of the stack ``stack`` built last (the NumPy oracle)."""
    return _reference.run_stack(stack.specs, x)[0]


def test_auto_stays_within_its_tolerance_of_the_float64_reference(rng):
    layers = stack(rng)
    calibrate = [rng.standard_normal((30, 2, 24)).astype(np.float32) for _ in range(2)]
    model = rnnengine.Model(layers, precision="auto", calibrate=calibrate, tolerance=2e-3)
    modes = model.precision if isinstance(model.precision, tuple) else (model.precision,) * 2
    assert len(modes) == 2 and all(m in PRECISIONS for m in modes)
    x = rng.standard_normal((30, 2, 24)).astype(np.float32)
    want = reference(layers, x)
    got = model.run(x)[0]
    # the tolerance on the calibration data, plus fp32's own error, on fresh data
    assert np.abs(got - want).max() <= 2e-3 * max(1.0, np.abs(want).max()) * 1.5 + 1e-5


def test_a_tolerance_no_mode_meets_keeps_fp32(rng):
    layers = stack(rng, hidden=(64,))
    x = rng.standard_normal((10, 1, 24)).astype(np.float32)
    model = rnnengine.Model(layers, precision="auto", calibrate=x, tolerance=1e-12)
    assert model.precision == "fp32"
    np.testing.assert_allclose(model.run(x)[0], reference(layers, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("modes", [("int8", "fp32"), ("fp32", "fp16"), ("bf16", "int8")])
def test_one_precision_per_layer_runs_and_saves(modes, rng, tmp_path):
    layers = stack(rng)
    model = rnnengine.Model(layers, precision=list(modes))
    assert len(model.precision) == 2
    x = rng.standard_normal((12, 3, 24)).astype(np.float32)
    y = model.run(x)[0]
    assert np.abs(y - reference(layers, x)).max() < 5e-2     # the loosest mode's budget
    model.save(tmp_path / "mixed.npz")
    again = rnnengine.load(tmp_path / "mixed.npz")
    assert again.precision == model.precision
    np.testing.assert_array_equal(again.run(x)[0], y)       # the stored weights, exactly


def test_bad_requests_say_what_was_expected(rng):
    layers = stack(rng, hidden=(32,))
    with pytest.raises(ValueError, match="precision='auto' needs calibrate="):
        rnnengine.Model(layers, precision="auto")
    with pytest.raises(ValueError, match="tolerance must be a positive number"):
        rnnengine.Model(layers, precision="auto", calibrate=np.zeros((2, 1, 24), np.float32),
                        tolerance=0)
    with pytest.raises(ValueError, match="needs 1 entries"):
        rnnengine.Model(layers, precision=["fp16", "fp32"])
    with pytest.raises(ValueError, match="precision must be one of"):
        rnnengine.Model(layers, precision=["fp8"])
    with pytest.raises(ValueError, match="a sequence of those per layer"):
        rnnengine.Model(layers, precision=8)


ort = pytest.importorskip("onnxruntime")


def test_session_auto_on_dtln_stays_within_tolerance_of_onnxruntime(rng):
    path = os.path.join(DATA, "dtln_model_1.onnx")
    sess0 = rnnengine.InferenceSession(path)
    names = [a.name for a in sess0.get_inputs()]

    def feeds():
        return {names[0]: rng.standard_normal((1, 1, 257)).astype(np.float32),
                names[1]: np.zeros((1, 2, 128, 2), np.float32)}
    sess = rnnengine.InferenceSession(path, precision="auto", calibrate=[feeds() for _ in
                                                                         range(3)])
    assert isinstance(sess.precision, (str, tuple))
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    f = feeds()
    for got, want in zip(sess.run(None, f), ref.run(None, f)):
        assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max()) * 2 + 1e-5


def _two_branch_model(rng, I=16, H=64):
    """If(flag) then one LSTM node else another, on the same input: one graph input picks
    which node runs."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name):
        W = (rng.standard_normal((1, 4 * H, I)) / np.sqrt(I)).astype(np.float32)
        R = (rng.standard_normal((1, 4 * H, H)) / np.sqrt(H)).astype(np.float32)
        node = helper.make_node("LSTM", ["x", f"{name}_W", f"{name}_R"], [f"{name}_Y"],
                                hidden_size=H)
        return helper.make_graph(
            [node], name, [], [helper.make_tensor_value_info(f"{name}_Y", TensorProto.FLOAT,
                                                             None)],
            [numpy_helper.from_array(W, f"{name}_W"), numpy_helper.from_array(R, f"{name}_R")])
    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch("a"),
                            else_branch=branch("b"))
    graph = helper.make_graph(
        [node], "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 1, I]),
                        helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                             ).SerializeToString()


def test_session_node_the_calibration_never_reaches_stays_fp32(rng, monkeypatch):
    """Calibrated on one branch with a tolerance any mode meets, that branch's node takes a
    reduced mode and the other stays fp32: its branch still matches ONNX Runtime closely.
    (Which modes beat fp32 is measured on the machine; fixed here to fp16.)"""
    monkeypatch.setattr(precision_auto, "faster_modes", lambda layer: ["fp16"])
    blob = _two_branch_model(rng)
    x = rng.standard_normal((20, 1, 16)).astype(np.float32)
    sess = rnnengine.InferenceSession(blob, precision="auto", tolerance=1.0,
                                      calibrate={"x": x, "flag": np.array(True)})
    assert sorted(sess.precision) == ["fp16", "fp32"]
    ref = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    other = {"x": x, "flag": np.array(False)}
    np.testing.assert_allclose(sess.run(None, other)[0], ref.run(None, other)[0],
                               rtol=1e-5, atol=1e-5)


def test_session_precision_per_node_is_counted():
    path = os.path.join(DATA, "dtln_model_1.onnx")
    with pytest.raises(ValueError, match="needs 2 entries"):
        rnnengine.InferenceSession(path, precision=["fp16"])
    assert rnnengine.InferenceSession(path, precision=["fp16", "fp32"]).precision == (
        "fp16", "fp32")


def test_load_takes_auto_with_calibrate(rng, tmp_path):
    layers = stack(rng, hidden=(48,))
    rnnengine.Model(layers).save(tmp_path / "m.npz")
    x = rng.standard_normal((15, 2, 24)).astype(np.float32)
    model = rnnengine.load(tmp_path / "m.npz", precision="auto", calibrate=x, tolerance=1e-12)
    assert model.precision == "fp32"                      # nothing is that close
    np.testing.assert_allclose(model.run(x)[0], reference(layers, x), rtol=1e-5, atol=1e-5)
