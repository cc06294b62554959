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
        "errors.py": "",
        "core/__init__.py": "",
        "core/a.py": "from . import b\nfrom ..errors import E\n",
        "core/b.py": "import numpy\n\ndef f():\n    import torch  # optional third-party: fine\n",
        "runtime/__init__.py": "",
        "runtime/c.py": "from ..core.b import f\nfrom ..core import a as _a\n"
                        "from typing import TYPE_CHECKING\n"
                        "if TYPE_CHECKING:\n    from ..cli import x\n",
        "runtime/_k.pyx": "from libc.stdlib cimport malloc\nfrom ._checks import y\n",
        "runtime/_checks.py": "import numpy\n",
    })
    assert check_layout.check(root) == []


@pytest.mark.parametrize("files, words", [
    ({"core/__init__.py": "", "core/a.py": "from .b import x\n", "core/b.py": "from .a import y\n"},
     "import cycle among: rnnengine.core.a, rnnengine.core.b"),
    # runtime.model -> loaders.own runs loaders/__init__, which imports runtime.model
    ({"runtime/__init__.py": "", "runtime/model.py": "from ..loaders.own import save\n",
      "loaders/__init__.py": "from ..runtime.model import M\n", "loaders/own.py": "import json\n"},
     "import cycle among: rnnengine.loaders, rnnengine.runtime.model"),
    ({"core/__init__.py": "", "core/a.py": "def f():\n    from .b import x\n", "core/b.py": ""},
     "a.py:2: imports rnnengine.core.b inside a function"),
    ({"core/__init__.py": "", "core/a.py": "class C:\n    def m(self):\n        from . import b\n",
      "core/b.py": ""},
     "a.py:3: imports rnnengine.core.b inside a function"),
    ({"core/__init__.py": "", "core/_k.pyx": "def f():\n    from .b import x\n", "core/b.py": ""},
     "_k.pyx:2: imports rnnengine.core.b inside a function"),
    # dependencies run one way: core may not import runtime
    ({"core/__init__.py": "", "core/a.py": "from ..runtime import b\n",
      "runtime/__init__.py": "", "runtime/b.py": ""},
     "a.py:1: room 'core' may not import rnnengine.runtime.b"),
    # another room's private module, and a private name of another room's module
    ({"core/__init__.py": "", "core/_k.py": "", "runtime/__init__.py": "",
      "runtime/a.py": "from ..core import _k\n"},
     "imports rnnengine.core._k, a private module of room 'core'"),
    ({"core/__init__.py": "", "core/k.py": "_x = 1\n", "runtime/__init__.py": "",
      "runtime/a.py": "from ..core.k import _x\n"},
     "imports private name(s) _x of rnnengine.core.k"),
    # a flat module at the top is not a room
    ({"graph_steps.py": ""}, "'graph_steps' is not a room"),
])
def test_violations_are_reported(tmp_path, files, words):
    problems = check_layout.check(package(tmp_path, files))
    assert any(words in p for p in problems), problems
