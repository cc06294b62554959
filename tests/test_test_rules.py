"""Rules the tests keep: every ``pytest.raises`` names the message it expects (``match=``), so a
test cannot pass on an error raised for some other reason, or on one that no longer tells the
user what was wrong."""
from __future__ import annotations

import ast
import pathlib

from conftest import TESTS


def _is_pytest_raises(func: ast.expr, raises_names: set) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "raises" and isinstance(func.value, ast.Name) and func.value.id == "pytest"
    return isinstance(func, ast.Name) and func.id in raises_names


def unmatched_raises(paths) -> list:
    """``file:line: call`` for every pytest.raises in ``paths`` without a non-empty match=."""
    found = []
    for path in paths:
        text = pathlib.Path(path).read_text(encoding="utf-8")
        tree = ast.parse(text, str(path))
        # `from pytest import raises [as r]` names it without the module
        raises_names = {alias.asname or alias.name for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom) and node.module == "pytest"
                        for alias in node.names if alias.name == "raises"}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _is_pytest_raises(node.func, raises_names)):
                continue
            match = next((k.value for k in node.keywords if k.arg == "match"), None)
            if match is None or (isinstance(match, ast.Constant) and not match.value):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_every_pytest_raises_names_its_message():
    paths = sorted(pathlib.Path(TESTS).rglob("*.py"))
    assert paths, TESTS
    bad = unmatched_raises(paths)
    assert not bad, "pytest.raises without match= (name the message expected):\n" + "\n".join(bad)


def test_the_rule_finds_bare_and_empty_matches(tmp_path):
    source = tmp_path / "test_sample.py"
    source.write_text(
        "import pytest\n"
        "from pytest import raises as r\n"
        "def test_a():\n"
        "    with pytest.raises(ValueError):\n"            # bare
        "        int('x')\n"
        "    with pytest.raises(ValueError, match=''):\n"  # empty
        "        int('x')\n"
        "    with r(ValueError):\n"                        # imported under another name
        "        int('x')\n"
        "    with pytest.raises(ValueError, match='invalid literal'):\n"
        "        int('x')\n")
    bad = unmatched_raises([source])
    assert [line.split(":")[1] for line in bad] == ["4", "6", "8"], bad
