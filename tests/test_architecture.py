"""The shape of the package: no import cycles among the modules of ``opd_cli``, and ``opd_cli.core`` imports
nothing of opd_cli outside it.

Every ``import`` statement counts, wherever it sits: at the top, inside a function (a late import only hides a
cycle until that function runs) and under ``if TYPE_CHECKING:`` (a reader still has to follow it). The implicit
import of a package by its submodules does not count; a package's ``__init__`` importing its own submodules does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import opd_cli

PACKAGE = Path(opd_cli.__file__).parent


def modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__) for every .py file under ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules of ``known`` that one import statement of ``module`` imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from . import x, from ..toy import world
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # from pkg import name: the submodule pkg.name when there is one, else a name defined in pkg
        names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names]
    out = []
    for name in names:
        while name and name not in known:  # import opd_cli.toy.world.x -> the nearest module that exists
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, from every import statement in its source."""
    mods = modules(package_dir)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in mods.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(_imported(node, name, is_package, set(mods)))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for comp in components:  # a shortest path from the component's first module back to it, by breadth-first search
        start = min(comp)
        paths = {w: [start, w] for w in sorted(graph[start] & comp)}
        frontier = list(paths)
        while start not in paths:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        found.append(paths[start])
    return sorted(found)


def test_opd_cli_has_no_import_cycles() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 40 and "opd_cli.toy.world" in graph and "opd_cli.analyses" in graph  # every module read
    found = cycles(graph)
    assert not found, "import cycles in opd_cli:\n" + "\n".join(" -> ".join(c) for c in found)


def outside_core(graph: dict[str, set[str]], core: str = "opd_cli.core") -> dict[str, set[str]]:
    """Module of ``core`` -> the modules outside ``core`` it imports (only those that import any)."""
    inside = {m for m in graph if m == core or m.startswith(core + ".")}
    return {m: out for m in sorted(inside) if (out := graph[m] - inside)}


def test_core_imports_nothing_outside_core() -> None:
    """The method and the shared machinery (``opd_cli.core``) build on nothing else of opd_cli: the commands, the toy
    world, the problem sources, the analyses and the plots depend on core, never the other way round."""
    graph = import_graph(PACKAGE)
    assert {"opd_cli.core", "opd_cli.core.maths", "opd_cli.core.config"} <= set(graph)
    found = outside_core(graph)
    assert not found, "opd_cli.core imports modules outside it:\n" + "\n".join(
        f"{m} -> {', '.join(sorted(out))}" for m, out in found.items())


def test_outside_core_is_found(tmp_path: Path) -> None:
    """A core module importing a command (at the top or inside a function) is reported; imports within core, and
    the commands' imports of core, are not."""
    pkg = tmp_path / "pkg"
    (pkg / "core").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "cmd.py": "from pkg.core import a\n",
        "core/__init__.py": "",
        "core/a.py": "from pkg.core.b import x\n",
        "core/b.py": "x = 1\ndef f():\n    from pkg import cmd\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    assert outside_core(import_graph(pkg), core="pkg.core") == {"pkg.core.b": {"pkg.cmd"}}


def test_the_graph_holds_every_kind_of_import() -> None:
    """Top-level, function-level and ``from opd_cli import x`` imports all become edges of the graph."""
    graph = import_graph(PACKAGE)
    assert "opd_cli.evaluate.model" in graph["opd_cli.evaluate.run"]  # top level: from opd_cli.evaluate.model import ...
    assert "opd_cli.train.trainer" in graph["opd_cli.train.run"]  # in run_train: from opd_cli.train import trainer as ...
    assert "opd_cli.toy.build" in graph["opd_cli.data"]  # inside a function: the toy world built on first use
    assert "opd_cli.plot.config" in graph["opd_cli.plot.curves"]  # under TYPE_CHECKING
    assert "opd_cli.toy.world" in graph["opd_cli.toy.build"] and "opd_cli.toy.build" not in graph["opd_cli.toy.world"]


def test_cycles_are_found_and_named(tmp_path: Path) -> None:
    """A package with a late-import cycle, a relative-import cycle, a type-only cycle and a package/submodule cycle:
    each is reported as a path back to its first module; acyclic imports are not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "def f():\n    from pkg import a\n",  # function-level
        "c.py": "from .d import x\n",
        "d.py": "from . import c\nx = 1\n",  # relative
        "e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.f import F\n",
        "f.py": "from pkg.e import E\n",  # type-only in e.py
        "g.py": "import os\nimport pkg.a\nfrom pkg.sub.leaf import y\n",  # imports others, nothing imports it
        "sub/__init__.py": "from pkg.sub.leaf import y\n",
        "sub/leaf.py": "from .. import g\nfrom pkg.sub import z\n",  # relative two levels up; pkg.sub's name z
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.d"] == {"pkg.c"} and graph["pkg.sub.leaf"] == {"pkg.g", "pkg.sub"}
    assert cycles(graph) == [
        ["pkg.a", "pkg.b", "pkg.a"],
        ["pkg.c", "pkg.d", "pkg.c"],
        ["pkg.e", "pkg.f", "pkg.e"],
        ["pkg.g", "pkg.sub.leaf", "pkg.g"],  # one cycle per component (pkg.sub is in this one too)
    ]
    (pkg / "b.py").write_text("def f():\n    return 1\n")
    assert ["pkg.a", "pkg.b", "pkg.a"] not in cycles(graph=import_graph(pkg))
