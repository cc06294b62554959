"""Every ``python`` block of the documentation site (docs/*.md) runs as written: each page's
blocks in order, in one namespace, from a scratch directory that sees the clone's ``tests/``
(the guides say "from the root of a clone"). A block preceded by a ``<!-- no-run -->`` line
is skipped; that is kept for the few that need a cluster, a network or a server."""
import contextlib
import io
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^(<!-- no-run -->\n)?```python\n(.*?)^```", re.S | re.M)
MAX_NO_RUN = 2          # the Ray Serve deployment; anything more needs a good reason


def blocks(text: str) -> list:
    """[(runs, code)] for every python block of a page, in order."""
    return [(not marker, code) for marker, code in BLOCK.findall(text)]


def pages() -> list:
    return sorted(p.name for p in DOCS.glob("*.md") if "```python" in p.read_text("utf-8"))


def test_block_extraction_honours_the_marker():
    text = ("intro\n```python\na = 1\n```\n\n<!-- no-run -->\n```python\nb = 2\n```\n"
            "```text\nnot python\n```\n```python\nc = a\n```\n")
    assert blocks(text) == [(True, "a = 1\n"), (False, "b = 2\n"), (True, "c = a\n")]


def test_no_run_blocks_are_rare():
    skipped = sum(not runs for p in pages()
                  for runs, _ in blocks((DOCS / p).read_text("utf-8")))
    assert skipped <= MAX_NO_RUN


def test_guides_have_code():
    assert {"whole-models.md", "streaming.md", "serving.md", "precision.md",
            "loaders.md"} <= set(pages())


@pytest.mark.parametrize("page", pages())
def test_page_runs(page, tmp_path, monkeypatch):
    os.symlink(ROOT / "tests", tmp_path / "tests")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
    namespace: dict = {"__name__": "__main__"}
    ran = 0
    for i, (runs, code) in enumerate(blocks((DOCS / page).read_text("utf-8"))):
        if not runs:
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"docs/{page} python block {i + 1}", "exec"), namespace)
        ran += 1
    assert ran
