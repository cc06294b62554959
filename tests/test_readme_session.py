"""The whole-model guide (docs/whole-models.md, which README.md links to) stays true: its
Python snippets run as written (in a scratch directory that sees ``tests/data``), their results
are checked against ONNX Runtime and PyTorch, and every ``$ rnnengine ...`` command shown runs
and prints the lines shown (numbers and timings aside; bench with fewer steps)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from rnnengine.cli import main
from conftest import reaches_openvino

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SILERO = ROOT / "tests" / "data" / "silero_vad_16k_op15.onnx"


def section() -> str:
    return (ROOT / "docs" / "whole-models.md").read_text(encoding="utf-8")


def blocks(kind: str) -> list:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.S)


@pytest.fixture(scope="module")
def snippets(tmp_path_factory):
    """The Python blocks run in order in one namespace, from a scratch directory (the third,
    the executor's, after the two these tests check)."""
    d = tmp_path_factory.mktemp("whole_models")
    os.symlink(ROOT / "tests", d / "tests")
    old = os.getcwd()
    os.chdir(d)
    try:
        code = blocks("python")
        assert len(code) == 3
        namespace: dict = {}
        torch.manual_seed(0)
        after = []      # what each block left (the second reuses names: sess, stream)
        for block in code:
            exec(compile(block, "docs/whole-models.md", "exec"), namespace)
            after.append(dict(namespace))
        yield d, after
    finally:
        os.chdir(old)


def ort_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_silero_snippet_run_stream_pool_match_onnxruntime(snippets):
    ns = snippets[1][0]
    ref = ort_session(SILERO)
    chunks, sr = ns["chunks"], ns["sr"]
    state = np.zeros((2, 1, 128), np.float32)
    expected = []
    for chunk in chunks:          # the author-style loop: stateN fed back as state
        prob, state = ref.run(None, {"input": chunk, "state": state, "sr": sr})
        expected.append(prob)
    np.testing.assert_allclose(np.concatenate(ns["probs"]), np.concatenate(expected),
                               rtol=1e-4, atol=1e-5)
    # run: three steps by hand
    np.testing.assert_allclose(ns["prob"], expected[2], rtol=1e-4, atol=1e-5)
    assert ns["stream"].state_names == {"stateN": "state"}
    # pool: stream b saw chunks[1] then chunks[2]
    s = np.zeros((2, 1, 128), np.float32)
    for chunk in (chunks[1], chunks[2]):
        p, s = ref.run(None, {"input": chunk, "state": s, "sr": sr})
    np.testing.assert_allclose(ns["p"], p, rtol=1e-4, atol=1e-5)
    assert ns["pool"].ids == [ns["b"]]


def test_pytorch_snippet_matches_torch(snippets):
    ns = snippets[1][1]
    net, tokens = ns["net"], ns["tokens"]
    with torch.no_grad():
        logits, hn, cn = net(tokens, ns["h0"], ns["c0"])
    np.testing.assert_allclose(ns["logits"], logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ns["hn"], hn.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ns["logits_t"], logits.numpy()[:, -1:], rtol=1e-4, atol=1e-5)
    assert ns["stream"].state_names == {"hn": "h0", "cn": "c0"}


def _shown_commands() -> list:
    """[(argv, [lines shown after it])] from the text block."""
    text = next(b for b in blocks("text") if "$ rnnengine" in b)
    found = []
    for part in re.split(r"^\$ rnnengine ", text, flags=re.M)[1:]:
        lines = part.rstrip("\n").split("\n")
        found.append((lines[0].split(), [ln for ln in lines[1:] if ln.strip()]))
    return found


def _skeleton(line: str) -> str:
    """A shown line with its numbers and the parts it elides (...) taken out."""
    line = line.split("...")[0]
    return re.sub(r"\s+", " ", re.sub(r"\d+(\.\d+)?(e-\d+)?", "#", line)).strip()


@reaches_openvino
def test_shown_commands_run_and_print_what_is_shown(snippets, capsys):
    d, _ = snippets
    old = os.getcwd()
    os.chdir(d)
    try:
        commands = _shown_commands()
        assert [c[0][0] for c in commands] == ["info", "run", "verify", "bench"]
        for argv, shown in commands:
            if argv[0] == "bench":
                argv = argv + ["--steps", "20", "--repeat", "1"]
            assert main(argv) == 0, argv
            out = capsys.readouterr().out
            printed = {_skeleton(ln) for ln in out.splitlines()}
            for line in shown:
                if line.startswith("...") or argv[0] == "bench" and re.search(r"\d us", line):
                    continue      # an elision, or a timing row (checked by label below)
                if argv[0] == "bench" and "best of" in line:
                    continue
                shape = _skeleton(line)      # a line shown ending in "..." is a prefix
                assert any(p.startswith(shape) if "..." in line else p == shape
                           for p in printed), (argv, line, out)
            if argv[0] == "bench":
                assert re.search(r"^stream step, batch 1 ", out, re.M), out
                assert re.search(r"^pool of 16 streams, one step ", out, re.M), out
    finally:
        os.chdir(old)
    with np.load(d / "out.npz") as got:
        ref = ort_session(SILERO).run(None, {"input": np.load(d / "chunk.npy"),
                                             "state": np.zeros((2, 1, 128), np.float32),
                                             "sr": np.array(16000)})
        np.testing.assert_allclose(got["output"], ref[0], rtol=1e-4, atol=1e-5)
