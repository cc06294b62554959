"""tools/check_layout.py finds what it promises on small packages built here: an import
cycle (also one through a package's __init__), an in-function import of an own module; and
lets through lazy third-party imports and TYPE_CHECKING imports."""
import importlib.util
import os
import textwrap

import pytest

TOOL = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "check_layout.py")
spec = importlib.util.spec_from_file_location("check_layout", TOOL)
check_layout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_layout)


def package(tmp_path, files: dict) -> str:
    root = tmp_path / "rnnengine"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return str(root)


def test_clean_package_passes(tmp_path):
    root = package(tmp_path, {
        "a.py": "from . import b\nfrom .sub import c\n",
        "b.py": "import numpy\n\ndef f():\n    import torch  # optional third-party: fine\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..b import f\nfrom typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from ..a import x\n",
        "_k.pyx": "from libc.stdlib cimport malloc\nfrom ._checks import y\n",
        "_checks.py": "import numpy\n",
    })
    assert check_layout.check(root) == []


@pytest.mark.parametrize("files, words", [
    ({"a.py": "from .b import x\n", "b.py": "from .a import y\n"},
     "import cycle among: rnnengine.a, rnnengine.b"),
    # model -> loaders.own runs loaders/__init__, which imports model
    ({"model.py": "from .loaders.own import save\n", "loaders/__init__.py": "from ..model import M\n",
      "loaders/own.py": "import json\n"},
     "import cycle among: rnnengine.loaders, rnnengine.model"),
    ({"a.py": "def f():\n    from .b import x\n", "b.py": ""},
     "a.py:2: imports rnnengine.b inside a function"),
    ({"a.py": "class C:\n    def m(self):\n        from . import b\n", "b.py": ""},
     "a.py:3: imports rnnengine.b inside a function"),
    ({"_k.pyx": "def f():\n    from .b import x\n", "b.py": ""},
     "_k.pyx:2: imports rnnengine.b inside a function"),
])
def test_violations_are_reported(tmp_path, files, words):
    problems = check_layout.check(package(tmp_path, files))
    assert any(words in p for p in problems), problems
