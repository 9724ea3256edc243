"""The shape of ``lib``: subpackages on levels, no circles, lazy imports only with a reason.

The level table in ``lib/__init__.py`` is the declared structure and each subpackage's docstring
lists its modules; these tests read every module's imports with ``ast`` (top-level and
in-function) and hold the code to both.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "lib"
LEVEL_ROW = re.compile(r"^(\d+)\s+``(\w+)``\s", re.M)
MODULE_ROW = re.compile(r"^``(\w+)``\s", re.M)


def declared_levels(lib: Path = LIB) -> dict[str, int]:
    doc = ast.get_docstring(ast.parse((lib / "__init__.py").read_text()))
    return {name: int(level) for level, name in LEVEL_ROW.findall(doc)}


def lib_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, at_top_level)`` for every import of a ``lib`` module in ``path``.

    A module is named ``package.module``; ``from lib.package import module`` names the module
    when it is one, and the package's ``__init__`` (``package``) otherwise.
    """
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib."):
            parts = node.module.split(".")
            if len(parts) >= 3:
                names = [".".join(parts[1:3])]
            else:  # from lib.package import module, ...
                names = [f"{parts[1]}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [
                ".".join(a.name.split(".")[1:3]) for a in node.names if a.name.startswith("lib.")
            ]
        out += [(n, node.lineno, id(node) in top) for n in names]
    return out


PACKAGES = sorted(p.name for p in LIB.iterdir() if (p / "__init__.py").exists())
MODULES = sorted(f"{p.parent.name}.{p.stem}" for p in LIB.glob("*/*.py") if p.stem != "__init__")
GRAPH = {
    m: sorted({t for t, _, _ in lib_imports(LIB / f"{m.replace('.', '/')}.py")} - {m})
    for m in MODULES
}


def test_every_subpackage_is_in_the_level_table_and_nothing_else():
    assert sorted(declared_levels()) == PACKAGES
    assert not list(LIB.glob("[!_]*.py")), "every module of lib lives in a subpackage"


@pytest.mark.parametrize("package", PACKAGES)
def test_each_subpackage_lists_its_modules(package):
    doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text()))
    listed = sorted(MODULE_ROW.findall(doc))
    assert listed == sorted(m.split(".")[1] for m in MODULES if m.startswith(package + "."))


@pytest.mark.parametrize("module", MODULES)
def test_imports_stay_in_the_subpackage_or_go_down_the_levels(module):
    levels = declared_levels()
    own = module.split(".")[0]
    up = [
        t
        for t in GRAPH[module]
        if t.split(".")[0] != own and levels[t.split(".")[0]] >= levels[own]
    ]
    assert not up, (
        f"lib.{module} (subpackage {own}, level {levels[own]}) imports {up} "
        "of the same or a higher level"
    )


def test_no_import_circle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in GRAPH[m]:
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, m, t]))
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [])


def test_the_sae_model_never_imports_its_trainer():
    assert GRAPH["sae.model"] == [] or all(not t.startswith("sae.") for t in GRAPH["sae.model"]), (
        GRAPH["sae.model"]
    )


@pytest.mark.parametrize("module", MODULES)
def test_in_function_lib_imports_say_why_they_are_lazy(module):
    path = LIB / f"{module.replace('.', '/')}.py"
    text = path.read_text()
    lines = text.splitlines()
    imports = (ast.Import, ast.ImportFrom)
    ends = {n.lineno: n.end_lineno for n in ast.walk(ast.parse(text)) if isinstance(n, imports)}
    lazy = [line for _, line, top in lib_imports(path) if not top]
    # the reason sits on the statement (a wrapped import carries it on any of its lines)
    silent = [n for n in lazy if not any("# lazy:" in x for x in lines[n - 1 : ends[n]])]
    assert not silent, (
        f"lib/{module}.py imports lib inside a function at lines {silent} without '# lazy: <why>'"
    )


def test_the_walker_sees_a_planted_circle_and_an_upward_import(tmp_path):
    """The checks above can fail: a module importing its importer, or a higher level, is seen."""
    (tmp_path / "a.py").write_text("from lib.core.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from lib.core import a\n")
    (tmp_path / "c.py").write_text("import lib.pipeline.grid\n")
    assert [m for m, _, _ in lib_imports(tmp_path / "a.py")] == ["core.b"]
    assert lib_imports(tmp_path / "b.py") == [("core.a", 2, False)]
    assert lib_imports(tmp_path / "c.py") == [("pipeline.grid", 1, True)]
    levels = declared_levels()
    assert levels["pipeline"] > levels["core"]  # so core.c importing pipeline.grid is upward
