"""README.md's examples run as written from the root of a clone, each printing the output
shown in the text block after it (numbers within a small tolerance: the SIMD variant may move
the last digits), and their results agree with ONNX Runtime."""
import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def examples() -> list:
    """[(code, output shown)] for every python block of README.md followed by a text block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```\s*```text\n(.*?)```", text, re.S)


def same_output(printed: str, shown: str) -> bool:
    if re.sub(NUMBER, "#", printed).split() != re.sub(NUMBER, "#", shown).split():
        return False
    got, want = (np.array(re.findall(NUMBER, s), float) for s in (printed, shown))
    return np.allclose(got, want, rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every example in order, in one namespace, from a scratch directory seeing tests/."""
    d = tmp_path_factory.mktemp("readme")
    os.symlink(ROOT / "tests", d / "tests")
    old = os.getcwd()
    os.chdir(d)
    try:
        namespace: dict = {}
        printed = []
        for i, (code, _) in enumerate(examples()):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"README.md example {i + 1}", "exec"), namespace)
            printed.append(out.getvalue())
        yield namespace, printed
    finally:
        os.chdir(old)


def test_three_examples_print_what_is_shown(ran):
    _, printed = ran
    shown = [out for _, out in examples()]
    assert len(shown) == 3
    for got, want in zip(printed, shown):
        assert same_output(got, want), (got, want)


def test_same_output_compares_numbers():
    assert same_output("(1, 1) 0.001234\n", "(1, 1) 0.001234")
    assert not same_output("(1, 1) 0.002234\n", "(1, 1) 0.001234")
    assert not same_output("(1, 2) 0.001234\n", "(1, 1) 0.001234")
    assert not same_output("{'a': 'b'}", "{'a': 'c'}")


def test_examples_agree_with_onnxruntime(ran):
    ort = pytest.importorskip("onnxruntime")
    ns, _ = ran
    ref = ort.InferenceSession(str(ROOT / "tests" / "data" / "silero_vad_16k_op15.onnx"),
                               providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    probs = []
    for chunk in ns["chunks"]:
        p, state = ref.run(None, {"input": chunk, "state": state, "sr": ns["sr"]})
        probs.append(p)
    np.testing.assert_allclose(ns["state"], state, rtol=1e-4, atol=1e-5)
    # the stream ran all three chunks; the pool's stream b saw chunks[1] alone
    np.testing.assert_allclose(ns["stream"].state["state"], state, rtol=1e-4, atol=1e-5)
    first = ref.run(None, {"input": ns["chunks"][1], "state": np.zeros((2, 1, 128), np.float32),
                           "sr": ns["sr"]})[0]
    np.testing.assert_allclose(ns["probs"][1:], first, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ns["prob"], probs[0], rtol=1e-4, atol=1e-5)
