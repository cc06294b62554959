"""The stateful fuzz harness (fuzz/fuzz_stateful.py) in its deterministic mode: random small
graphs through SessionStream, SessionPool and Batcher, good and bad calls interleaved; outputs
against ONNX Runtime, and after every failed call the state against a replay of the calls
that succeeded."""
import os
import sys

import pytest

import conftest

pytest.importorskip("onnxruntime")
sys.path.insert(0, os.path.join(conftest.ROOT, "fuzz"))
import fuzz_stateful  # noqa: E402

CASES = int(os.environ.get("RNNENGINE_STATEFUL_FUZZ_CASES", "600"))


def report(findings) -> str:
    return "\n".join(m for messages in findings.values() for m in messages[:5])


def test_outputs_match_onnxruntime_and_bad_calls_raise_typed_errors():
    findings = fuzz_stateful.run_cases(CASES, seed=1, kinds={"OUTPUT", "ERROR_TYPE",
                                                            "UNEXPECTED"})
    assert not findings, report(findings)


def test_failed_calls_leave_the_state_of_the_calls_that_succeeded():
    findings = fuzz_stateful.run_cases(CASES, seed=2, kinds={"STATE"})
    assert not findings, report(findings)
