#!/usr/bin/env python3
"""Checks the package's layout rules:

  * every top-level room is a subpackage or one of the public modules named in ``ROOMS``, and a
    room imports only the rooms ``ROOMS`` allows it (dependencies run one way: cli, serving,
    interop -> runtime -> loaders -> onnx -> ops -> core -> errors);
  * no module imports a private module or name (``_x``) of another room;
  * no import cycle among the package's modules (module-level imports, as Python runs them:
    importing ``pkg.sub.mod`` also runs ``pkg.sub``'s ``__init__``);
  * no import of the package's own modules inside a function or class body (lazy imports are
    for optional third-party packages only).

Files are split by job, not by length: there is no line limit.

Reads src/rnnengine/**/*.py and *.pyx (the .pyx by a line scan of its ``import``/``from``
statements; ``cimport`` is compile-time and not counted). Imports under ``if TYPE_CHECKING:``
are ignored. Exit status 1 and one line per violation when a rule is broken.

    python tools/check_layout.py [src/rnnengine]
"""
import ast
import os
import re
import sys

PACKAGE = "rnnengine"

_BELOW_RUNTIME = ("loaders", "onnx", "ops", "core", "errors")
# room -> the rooms it may import; "" is the package's __init__ (the public names)
ROOMS = {
    "": ("core", "runtime", "serving", "errors"),
    "__main__": ("cli",),
    "errors": (),
    "testing": (),
    "core": ("errors",),
    "ops": ("core", "errors"),
    "onnx": ("ops", "core", "errors"),
    "loaders": ("onnx", "core", "errors"),
    "runtime": _BELOW_RUNTIME,
    "interop": ("runtime",) + _BELOW_RUNTIME,
    "serving": ("runtime",) + _BELOW_RUNTIME,
    "cli": ("serving", "interop", "runtime") + _BELOW_RUNTIME,
}


def room(module: str) -> str:
    """'rnnengine.runtime.session' -> 'runtime'; 'rnnengine' -> ''"""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def private_part(module: str) -> bool:
    """Whether a module below its room is private: 'rnnengine.ops._common'."""
    return any(p.startswith("_") and not p.startswith("__") for p in module.split(".")[2:])


def module_name(root: str, path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(root))
    parts = rel[: rel.rindex(".")].split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(current: str, is_package: bool, level: int, target: str) -> str:
    """The absolute name of ``from <.*level><target>`` written in module ``current``."""
    if level == 0:
        return target
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


class Imports(ast.NodeVisitor):
    """(name, line, inside a function or class) of every import in a module."""

    def __init__(self, current: str, is_package: bool):
        self.current, self.is_package = current, is_package
        self.found = []
        self.depth = 0

    def _nested(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _nested

    def visit_If(self, node):
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth > 0, ()))

    def visit_ImportFrom(self, node):
        base = resolve(self.current, self.is_package, node.level, node.module or "")
        names = tuple(alias.name for alias in node.names)
        self.found.append((base, node.lineno, self.depth > 0, names))


PYX_IMPORT = re.compile(r"^(\s*)(?:from\s+(\.*)([\w.]*)\s+import\s+(?!\*)([\w, ()]+)|import\s+([\w.]+))")


def pyx_imports(current: str, text: str):
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if re.match(r"\s*(from\s+\S+\s+)?cimport\b", line):
            continue
        m = PYX_IMPORT.match(line)
        if not m:
            continue
        indent, dots, target, names, plain = m.groups()
        nested = bool(indent)
        if plain:
            found.append((plain, lineno, nested, ()))
        else:
            base = resolve(current, False, len(dots), target)
            found.append((base, lineno, nested, tuple(n.strip(" ()") for n in names.split(","))))
    return found


def scan(root: str):
    modules, problems = {}, []
    for folder, _, files in os.walk(root):
        for file in sorted(files):
            if not file.endswith((".py", ".pyx")):
                continue
            path = os.path.join(folder, file)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            name = module_name(root, path)
            if file.endswith(".pyx"):
                imports = pyx_imports(name, text)
            else:
                visitor = Imports(name, file == "__init__.py")
                visitor.visit(ast.parse(text, path))
                imports = visitor.found
            modules[name] = (path, imports)
    return modules, problems


def own_targets(modules: dict, base: str, names: tuple) -> list:
    """Own modules an import statement runs: every package on the way to ``base``, ``base``
    itself, and ``base.name`` for names that are submodules."""
    if base != PACKAGE and not base.startswith(PACKAGE + "."):
        return []
    parts = base.split(".")
    targets = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    targets += [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
    return [t for t in targets if t in modules]


def find_cycles(graph: dict) -> list:
    """Strongly connected components with more than one module, or a self-import (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def room_problems(name: str, path: str, lineno: int, base: str, names: tuple,
                  targets: list) -> list:
    """Imports that cross rooms the wrong way or reach into another room's private parts."""
    here = room(name)
    out = []
    for target in targets:
        there = room(target)
        if there in ("", here) or name.startswith(target + "."):
            continue
        if there not in ROOMS.get(here, ()):
            out.append(f"{path}:{lineno}: room {here or PACKAGE!r} may not import {target} "
                       f"(it may import: {', '.join(ROOMS.get(here, ())) or 'nothing'})")
        elif private_part(target):
            out.append(f"{path}:{lineno}: imports {target}, a private module of room {there!r}")
    if room(base) not in ("", here):
        hidden = [n for n in names if n.startswith("_") and not n.startswith("__")
                  and f"{base}.{n}" not in targets]
        if hidden:
            out.append(f"{path}:{lineno}: imports private name(s) {', '.join(hidden)} of "
                       f"{base}")
    return out


def check(root: str) -> list:
    modules, problems = scan(root)
    for name, (path, _) in modules.items():
        if room(name) not in ROOMS:
            problems.append(f"{path}: {room(name)!r} is not a room: a top-level module must "
                            "be a subpackage or one of " + ", ".join(sorted(ROOMS)))
    graph = {}
    for name, (path, imports) in modules.items():
        edges = graph.setdefault(name, set())
        for base, lineno, nested, names in imports:
            targets = [t for t in own_targets(modules, base, names) if t != name]
            problems += room_problems(name, path, lineno, base, names, targets)
            if nested and targets:
                problems.append(f"{path}:{lineno}: imports {max(targets, key=len)} inside a "
                                "function or class "
                                "(only optional third-party packages may be imported lazily)")
            if not nested:
                # Importing from an enclosing package adds no edge: its __init__ is already
                # running (or done) whenever one of its modules runs.
                edges.update(t for t in targets if not name.startswith(t + "."))
    for component in find_cycles(graph):
        problems.append("import cycle among: " + ", ".join(component))
    return problems


def main(argv) -> int:
    root = argv[1] if len(argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), os.pardir, "src", PACKAGE)
    root = os.path.normpath(root)
    problems = check(root)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"layout ok: rooms import one way, no private imports across rooms, no import "
              f"cycles, no in-function imports of own modules ({root})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
