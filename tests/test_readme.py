"""README.md's Quick start runs as written, from the model the package ships (a snippet that
named a file nobody has would fail here)."""
import os

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_quick_start_runs_as_written(tmp_path, monkeypatch):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Quick start (Python)"):]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)           # it saves model.npz
    exec(compile(code, "README.md Quick start", "exec"), {})
    assert (tmp_path / "model.npz").exists()
