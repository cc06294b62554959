"""The command line on whole ONNX models: ``info`` describes the graph as
InferenceSession plans it, ``run`` writes the model's outputs (not the recurrent layers'),
``verify`` and ``bench`` compare the whole graph with ONNX Runtime. Numbers are checked
against ONNX Runtime on the same file, never against rnnengine itself."""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import session_models as sm

from rnnengine.cli import main
import conftest
from conftest import reaches_openvino

ort = pytest.importorskip("onnxruntime")
SILERO = sm.SILERO


def cli(capsys, *args):
    """(exit status, stdout, stderr) of ``rnnengine ARGS`` run in this process."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("whole")
    (d / "a_state.onnx").write_bytes(sm.embedding_lstm(True))
    (d / "a.onnx").write_bytes(sm.embedding_lstm(False))
    onnx.save(sm.packed_lstm(), str(d / "packed.onnx"))
    onnx.save(_lstm_then("Hardmax", axis=-1), str(d / "hardmax.onnx"))
    onnx.save(_lstm_then("ReduceMean", axes=[0], keepdims=1), str(d / "reduce.onnx"))
    return d


def _lstm_then(op: str, **attributes) -> onnx.ModelProto:
    """x [T, N, 4] -> LSTM(H=3) -> Squeeze -> ``op`` (Hardmax: rnnengine leaves it to ORT;
    ReduceMean over time: mixes timesteps)."""
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "W")
    R = numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "R")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=3, name="lstm"),
             helper.make_node("Squeeze", ["Y", "axes"], ["Ys"]),
             helper.make_node(op, ["Ys"], ["y"], **attributes)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [W, R, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_outputs(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


# --- info -----------------------------------------------------------------------------------

def test_info_describes_silero_whole(capsys):
    status, out, _ = cli(capsys, "info", SILERO)
    assert status == 0
    assert re.search(r"^input\s+input\s+\[batch, sequence\]\s+tensor\(float\)$", out, re.M)
    assert re.search(r"^input\s+sr\s+\[\]\s+tensor\(int64\)$", out, re.M)
    assert re.search(r"^output\s+stateN\s", out, re.M)
    assert re.search(r"^runs native\s+\d+ nodes: .*Conv 6", out, re.M)
    assert re.search(r"^runs recurrent kernels\s+2 nodes: LSTM 2$", out, re.M)
    assert re.search(r"^runs onnxruntime\s+nothing", out, re.M)
    assert re.search(r"^state pair\s+stateN -> state$", out, re.M)
    assert re.search(r"^fixed inputs\s+sr ", out, re.M)
    assert re.search(r"^pool\s+batched: .*'batch'", out, re.M)


def test_info_counts_what_runs_through_onnxruntime(capsys, files):
    status, out, _ = cli(capsys, "info", files / "hardmax.onnx")
    assert status == 0
    assert re.search(r"^runs onnxruntime\s+1 nodes: Hardmax 1$", out, re.M), out
    assert re.search(r"in 1 onnxruntime session \(maximal groups\)", out), out
    assert re.search(r"^state pairs\s+none found$", out, re.M), out
    assert re.search(r"^stream\s+yes, along the time axis", out, re.M), out   # per timestep
    # an operator that mixes timesteps: info says the graph cannot stream, naming it
    status, out, _ = cli(capsys, "info", files / "reduce.onnx")
    assert status == 0
    assert re.search(r"^stream\s+no: .*ReduceMean", out, re.M), out


def test_info_says_how_the_executor_runs_a_call(capsys, files):
    """The executor's row: a graph whose steps all have C kernels (DTLN model_2) runs as one
    C loop with nothing left over; steps without a C kernel (an embedding's Gather by run-time
    ids, Hardmax through ONNX Runtime) are named as steps the loop calls; inputs that cannot
    run at the declared shapes say so."""
    status, out, _ = cli(capsys, "info", os.path.join(conftest.DATA, "dtln_model_2.onnx"))
    assert status == 0
    assert re.search(r"^executor\s+one C loop: .*2 recurrent", out, re.M), out
    assert re.search(r"^no C kernel yet\s+none \(every step runs in the loop\)$", out, re.M)
    status, out, _ = cli(capsys, "info", files / "a_state.onnx")
    assert re.search(r"^no C kernel yet\s+Gather node '/emb/Gather'$", out, re.M), out
    status, out, _ = cli(capsys, "info", files / "hardmax.onnx")
    assert status == 0
    assert re.search(r"^no C kernel yet\s+.*Hardmax", out, re.M), out
    status, out, _ = cli(capsys, "info", SILERO)    # a 1-sample chunk is too short to pad
    assert re.search(r"^executor\s+planned on the first calls: .*Pad", out, re.M), out


def test_info_pairs_of_a_pytorch_export(capsys, files):
    status, out, _ = cli(capsys, "info", files / "a_state.onnx")
    assert status == 0
    assert re.search(r"^state pair\s+hn -> h0$", out, re.M)
    assert re.search(r"^state pair\s+cn -> c0$", out, re.M)
    assert re.search(r"^input\s+tokens\s+\[batch, time\]\s+tensor\(int64\)$", out, re.M)
    assert re.search(r"^runs native\s+\d+ nodes: .*Gather 1.*LogSoftmax 1", out, re.M)


# --- run ------------------------------------------------------------------------------------

def test_run_writes_the_models_outputs_not_the_lstms(capsys, files, tmp_path):
    tokens = np.random.default_rng(1).integers(0, 20, (2, 7)).astype(np.int64)
    np.save(tmp_path / "tok.npy", tokens)
    # a bare file goes to the one input that is not state; h0/c0 start at zero
    status, out, err = cli(capsys, "run", files / "a_state.onnx", "-i", tmp_path / "tok.npy",
                           "-o", tmp_path / "out.npz")
    assert status == 0, err
    assert "zero state h0 (2, 2, 16)" in out
    zero = np.zeros((2, 2, 16), np.float32)
    ref = ort_outputs(files / "a_state.onnx", {"tokens": tokens, "h0": zero, "c0": zero})
    with np.load(tmp_path / "out.npz") as got:
        assert sorted(got.files) == ["cn", "hn", "logp"]
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-5)
    # named inputs, a given state, and one output to an .npy
    h0 = np.random.default_rng(2).standard_normal((2, 2, 16)).astype(np.float32)
    np.save(tmp_path / "h0.npy", h0)
    np.save(tmp_path / "c0.npy", -h0)
    status, _, err = cli(capsys, "run", files / "a_state.onnx", "-i", f"tokens={tmp_path}/tok.npy",
                         "-i", f"h0={tmp_path}/h0.npy", "-i", f"c0={tmp_path}/c0.npy",
                         "-o", tmp_path / "out2.npz")
    assert status == 0, err
    ref = ort_outputs(files / "a_state.onnx", {"tokens": tokens, "h0": h0, "c0": -h0})
    with np.load(tmp_path / "out2.npz") as got:
        np.testing.assert_allclose(got["hn"], ref["hn"], rtol=1e-4, atol=1e-5)
    status, _, err = cli(capsys, "run", files / "a.onnx", "-i", tmp_path / "tok.npy",
                         "-o", tmp_path / "logp.npy")
    assert status == 0, err
    ref = ort_outputs(files / "a.onnx", {"tokens": tokens})
    np.testing.assert_allclose(np.load(tmp_path / "logp.npy"), ref["logp"], rtol=1e-4, atol=1e-5)


def test_run_silero_with_a_fixed_feed(capsys, tmp_path):
    x = np.random.default_rng(3).standard_normal((3, 512)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    status, _, err = cli(capsys, "run", SILERO, "-i", f"input={tmp_path}/x.npy",
                         "--feed", "sr=16000", "-o", tmp_path / "out.npz")
    assert status == 0, err
    ref = ort_outputs(SILERO, {"input": x, "state": np.zeros((2, 3, 128), np.float32),
                               "sr": np.array(16000)})
    with np.load(tmp_path / "out.npz") as got:
        np.testing.assert_allclose(got["output"], ref["output"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["stateN"], ref["stateN"], rtol=1e-4, atol=1e-5)


def test_run_refuses_what_a_whole_graph_cannot_take(capsys, files, tmp_path):
    tokens = np.zeros((1, 3), np.int64)
    np.save(tmp_path / "tok.npy", tokens)
    cases = [
        (("-i", tmp_path / "tok.npy", "-o", tmp_path / "o.npy"), "3 outputs"),
        (("-i", tmp_path / "tok.npy", "-o", tmp_path / "o.npz", "--state", tmp_path / "s.npz"),
         "--recurrent-only"),
        (("-i", tmp_path / "tok.npy", "-o", tmp_path / "o.npz", "--feed", "nope=1"),
         "'nope' is not an input"),
        (("-i", tmp_path / "tok.npy", "-o", tmp_path / "o.npz", "--feed", "h0"), "NAME=VALUE"),
    ]
    for extra, fragment in cases:
        status, _, err = cli(capsys, "run", files / "a_state.onnx", *extra)
        assert status == 1 and fragment in err and len(err.strip().splitlines()) == 1, err
    status, _, err = cli(capsys, "run", SILERO, "-i", f"input={tmp_path}/tok.npy",
                         "-o", tmp_path / "o.npz")
    assert status == 1 and "missing input ['sr']" in err, err


# --- verify ---------------------------------------------------------------------------------

def test_verify_compares_the_whole_graph_run_and_stream(capsys, files):
    status, out, err = cli(capsys, "verify", files / "a_state.onnx", "--steps", "12")
    assert status == 0, err
    run_row = re.search(r"^onnxruntime, whole model: run, random feeds\s+(\S+)\s+(\S+)", out, re.M)
    stream_row = re.search(r"^onnxruntime, whole model: stream x12, state hn -> h0, cn -> c0 "
                           r"fed back\s+(\S+)\s+(\S+)", out, re.M)
    assert run_row and stream_row, out
    assert all(float(v) < 1e-4 for v in run_row.groups() + stream_row.groups())
    # a tolerance nothing meets fails: the comparison is real
    status, _, err = cli(capsys, "verify", files / "a_state.onnx", "--tol", "1e-13")
    assert status == 1 and "exceeds tolerance" in err


def test_verify_streams_a_stateless_graph_along_time(capsys, files):
    """No state inputs: chunks of 1, 2, 3, ... steps through stream() against one ORT run."""
    status, out, err = cli(capsys, "verify", files / "a.onnx", "--seq-len", "9")
    assert status == 0, err
    row = re.search(r"^onnxruntime, whole model: stream along time, 9 steps in chunks\s+(\S+)",
                    out, re.M)
    assert row and float(row.group(1)) < 1e-4, out
    status, out, err = cli(capsys, "verify", files / "reduce.onnx", "--seq-len", "5")
    assert re.search(r"stream along time.*not compared: .*ReduceMean", out), out


def test_verify_silero_needs_and_takes_fixed_feeds(capsys):
    status, out, err = cli(capsys, "verify", SILERO, "--feed", "sr=16000",
                           "--dim", "sequence=512", "--steps", "5")
    assert status == 0, err
    assert re.search(r"stream x5, state stateN -> state fed back\s+\d\.\d\de-\d\d", out), out
    status, _, err = cli(capsys, "verify", SILERO, "--feed", "sr=16000")   # 20 samples
    assert status == 1 and "--dim NAME=SIZE" in err, err


# --- bench ----------------------------------------------------------------------------------

@reaches_openvino
def test_bench_times_whole_steps_against_ort_and_iobinding(capsys, files):
    status, out, err = cli(capsys, "bench", files / "a_state.onnx", "--steps", "20",
                           "--repeat", "1", "--batch", "4")
    assert status == 0, err
    header = next(line for line in out.splitlines() if line.startswith("workload"))
    assert "onnxruntime (x)" in header and "onnxruntime IOBinding (x)" in header
    assert re.search(r"^stream step, batch 1\s+\d", out, re.M), out
    assert re.search(r"^pool of 4 streams, one step\s+\d", out, re.M), out
    assert "openvino" in out     # a column, or a note saying why not
    assert "whole graph" in out


@reaches_openvino
def test_bench_pool_of_a_graph_fixed_at_batch_1(capsys, files):
    """tf2onnx-style packed state, shapes fixed at batch 1: the pool steps the streams one
    by one, and bench says so."""
    status, out, err = cli(capsys, "bench", files / "packed.onnx", "--steps", "12",
                           "--repeat", "1", "--batch", "3")
    assert status == 0, err
    assert re.search(r"^pool of 3 streams, one step\s+\d.*\(\d+\.\d\dx\)", out, re.M), out
    assert "pool of 3: one pool.step (streams one by one) against 3 onnxruntime calls" in out


def test_bench_recurrent_only_keeps_the_layer_rows(capsys, files):
    status, out, err = cli(capsys, "bench", files / "a.onnx", "--recurrent-only", "--steps",
                           "10", "--repeat", "1", "--seq-len", "4", "--batch", "2",
                           "--no-compare")
    assert status == 0, err
    assert re.search(r"^sequence T=4, batch 2\s", out, re.M) and "whole graph" not in out
