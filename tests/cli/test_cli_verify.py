"""``rnnengine verify`` tells the truth: every recurrent kind, tolerances relative to each
output's scale (state held looser), state carried (never random), a pool checked against
lone ONNX Runtime runs, exit 1 when no stream was compared; ``info`` and ``stream()`` say
how to name pairs an automatic pairing leaves out."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import rnnengine
from rnnengine.cli import main, verify
import conftest

pytest.importorskip("onnxruntime")
DATA = Path(conftest.DATA)
SILERO = str(DATA / "silero_vad_16k_op15.onnx")
SILERO_OFFICIAL = str(DATA / "silero_vad.onnx")
GTCRN = str(DATA / "gtcrn.onnx")
GTCRN_PAIRS = ["--state", "conv_cache_out=conv_cache", "--state", "tra_cache_out=tra_cache",
               "--state", "inter_cache_out=inter_cache"]
SILERO_FEEDS = ["--feed", "sr=16000", "--dim", "sequence=512"]


def run(capsys, *argv):
    status = main(["verify", *map(str, argv)])
    out = capsys.readouterr()
    return status, out.out, out.err


def row(out: str, label: str) -> str:
    line = next((ln for ln in out.splitlines() if ln.startswith(label)), None)
    assert line is not None, out
    return line


@pytest.fixture(scope="module")
def fixed_size_exports(tmp_path_factory):
    """torch GRU and RNN exported with x declared (5, 1, 8): fixed sizes, no state input."""
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("fixed")
    torch.manual_seed(0)
    paths = {}
    for kind in ("GRU", "RNN"):
        path = d / f"{kind.lower()}.onnx"
        with warnings.catch_warnings():     # the exporter's notes on batch sizes
            warnings.simplefilter("ignore")
            torch.onnx.export(getattr(torch.nn, kind)(8, 16), (torch.randn(5, 1, 8),),
                              str(path), input_names=["x"], output_names=["y", "h"],
                              dynamo=False)
        paths[kind] = path
    return paths


@pytest.mark.parametrize("kind", ["GRU", "RNN"])
def test_gru_and_rnn_files_are_compared_on_their_fixed_shape(fixed_size_exports, kind, capsys):
    status, out, err = run(capsys, fixed_size_exports[kind], "--steps", "3")
    assert status == 0, err
    # the file's own node run by onnxruntime: GRU/RNN have no cell state to index
    assert re.search(rf"node '/{kind}' from the file\s+\d\.\d\de-\d\d\s+\d\.\d\de-\d\d",
                     out), out
    # x is declared (5, 1, 8): the stream takes whole calls of 5 steps, not chunks of 1
    assert re.search(r"stream, one call of 5 steps.*fixed at 5\)\s+\d\.\d\de-\d\d", out), out


def test_a_fault_inside_verify_is_an_internal_error(fixed_size_exports, capsys, monkeypatch):
    def broken(*args):
        # what indexing a GRU's missing cell-state shape raised
        raise TypeError("'NoneType' object is not subscriptable")
    monkeypatch.setattr(verify, "file_graph_check", broken)
    status, _, err = run(capsys, fixed_size_exports["GRU"], "--steps", "2")
    assert status == 1
    assert "internal error" in err and "RNNENGINE_TRACEBACK=1" in err, err


def test_silero_passes_fp32_seed_1_and_int8_on_its_own_outputs(capsys):
    status, out, err = run(capsys, SILERO, *SILERO_FEEDS, "--seed", "1", "--steps", "10")
    assert status == 0, err
    assert "tolerance 0.0001 + 1e-05 * max |reference| per output" in out, out
    # int8: the cell state (~100) drifts by more than the budget in absolute terms; the
    # model's own output (a probability) is judged within the budget
    status, out, err = run(capsys, SILERO, *SILERO_FEEDS, "--precision", "int8",
                           "--steps", "20")
    assert status == 0, err
    stream = row(out, "onnxruntime, whole model: stream x20")
    d_out, d_state = (float(v) for v in re.findall(r"\d\.\d\de-\d\d", stream)[:2])
    assert d_out < 6e-2 and d_state > 0     # state drift reported, apart from the outputs


def test_a_tolerance_nothing_meets_still_fails(capsys):
    status, _, err = run(capsys, SILERO, *SILERO_FEEDS, "--tol", "0", "--rtol", "1e-12",
                         "--steps", "3")
    assert status == 1 and "exceeds tolerance" in err, err


def test_silero_pool_of_three_streams_against_lone_runs(capsys):
    status, out, err = run(capsys, SILERO, *SILERO_FEEDS, "--steps", "5")
    assert status == 0, err
    pool = row(out, "onnxruntime, whole model: pool of 3 streams x5")
    assert len(re.findall(r"\d\.\d\de-\d\d", pool)) == 2, pool


def test_gtcrn_without_its_pairs_is_not_compared_and_exits_1(capsys):
    status, out, err = run(capsys, GTCRN, "--steps", "2")
    assert status == 1
    assert "no stream compared" in err and "conv_cache_out -> conv_cache" in err, err
    assert "--state OUT=IN" in err, err


def test_gtcrn_with_its_pairs_named_carries_every_cache(capsys):
    status, out, err = run(capsys, GTCRN, *GTCRN_PAIRS, "--steps", "4")
    assert status == 0, err
    stream = row(out, "onnxruntime, whole model: stream x4, state conv_cache_out -> "
                      "conv_cache, tra_cache_out -> tra_cache, inter_cache_out -> inter_cache")
    assert len(re.findall(r"\d\.\d\de-\d\d", stream)) == 2, stream
    row(out, "onnxruntime, whole model: pool of 3 streams x4")


def test_state_names_are_checked(capsys):
    status, _, err = run(capsys, GTCRN, "--state", "nope=conv_cache")
    assert status == 1 and "'nope' is not an output" in err, err


@pytest.mark.parametrize("name, extra", [("dtln_model_1.onnx", []), ("dtln_model_2.onnx", []),
                                         ("silero_vad_op18_ifless.onnx", SILERO_FEEDS)])
def test_shipped_models_pass(name, extra, capsys):
    status, out, err = run(capsys, DATA / name, *extra, "--steps", "4")
    assert status == 0, err
    assert re.search(r"stream x4, state \S+ -> \S+ fed back\s+\d\.\d\de-\d\d", out), out


def test_unnamed_dims_are_fed_as_1_and_the_error_is_whole(capsys):
    """The official silero_vad.onnx leaves its dynamic dims unnamed (None)."""
    status, _, err = run(capsys, SILERO_OFFICIAL, "--feed", "sr=16000", "--steps", "2")
    assert status == 1
    # input [?, ?] fed (1, 1) (before: the --seq-len for every unnamed dim); the message
    # ends with its hint, which says how to size an unnamed dim, not cut off
    assert "float32(1, 1)" in err, err
    assert err.rstrip().endswith("--dim INPUT[AXIS]=SIZE, e.g. --dim input[1]=512)"), err


def test_unnamed_dims_are_sized_by_input_and_axis(capsys):
    """--dim input[1]=512 sizes the official file's unnamed chunk dim: run, stream and pool
    all compare against ONNX Runtime."""
    status, out, err = run(capsys, SILERO_OFFICIAL, "--feed", "sr=16000", "--dim",
                           "input[1]=512", "--steps", "3")
    assert status == 0, err
    assert re.search(r"run, random feeds\s+\d\.\d\de-\d\d", out), out
    assert re.search(r"stream x3, state stateN -> state fed back\s+\d\.\d\de-\d\d", out), out
    assert re.search(r"pool of 3 streams x3.*\s\d\.\d\de-\d\d", out), out


def test_a_dim_the_model_does_not_have_is_refused(capsys):
    status, _, err = run(capsys, SILERO_OFFICIAL, "--feed", "sr=16000", "--dim",
                         "input[2]=512")
    assert status == 1, err
    assert "--dim input[2]: the model has no dynamic dim of that name" in err, err
    assert "input[0], input[1], state[1]" in err, err


def test_info_says_what_stream_will_do(capsys):
    assert main(["info", GTCRN]) == 0
    out = capsys.readouterr().out
    line = row(out, "stream ")
    assert "name the pairs with state={" in line and "'conv_cache_out': 'conv_cache'" in line
    assert "candidates conv_cache_out -> conv_cache" in line, line
    assert main(["info", SILERO]) == 0
    assert "automatic state pairs {'stateN': 'state'}" in row(capsys.readouterr().out,
                                                              "stream ")


def test_stream_missing_a_cache_says_how_to_name_the_pairs():
    sess = rnnengine.InferenceSession(GTCRN)
    stream = sess.stream()
    with pytest.raises(ValueError, match=r"missing input 'conv_cache'.*state=\{.*"
                       r"'conv_cache_out': 'conv_cache'.*candidates conv_cache_out -> "
                       r"conv_cache"):
        stream.step({"mix": np.zeros((1, 257, 1, 2), np.float32)})
    with pytest.raises(ValueError, match=re.escape(
            "missing input 'mix' (tensor(float), shape (1, 257, 1, 2))")) as info:
        stream.step({})     # a missing data input gets no such hint
    assert "candidates" not in str(info.value)
    # named pairs: the stream runs
    pairs = {"conv_cache_out": "conv_cache", "tra_cache_out": "tra_cache",
             "inter_cache_out": "inter_cache"}
    (enh,) = sess.stream(state=pairs).step({"mix": np.zeros((1, 257, 1, 2), np.float32)})
    assert enh.shape[1] == 257
