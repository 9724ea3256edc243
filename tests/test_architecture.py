"""The shape of ``lib``: floors without circles, small modules, lazy imports only with a reason.

The floor table in ``lib/__init__.py`` is the declared structure; these tests read every module's
imports with ``ast`` (top-level and in-function) and hold the code to it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
MAX_LINES = 500
TABLE_ROW = re.compile(r"^(\d+)\s+``(\w+)``\s", re.M)


def declared_floors() -> dict[str, int]:
    doc = ast.get_docstring(ast.parse((LIB / "__init__.py").read_text()))
    return {name: int(floor) for floor, name in TABLE_ROW.findall(doc)}


def lib_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, at_top_level)`` for every import of a ``lib`` module in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "lib":
                names = [a.name for a in node.names]
            elif node.module.startswith("lib."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("lib.")]
        out += [(n, node.lineno, id(node) in top) for n in names]
    return out


MODULES = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")
GRAPH = {m: sorted({t for t, _, _ in lib_imports(LIB / f"{m}.py")} - {m}) for m in MODULES}


def test_every_module_is_in_the_floor_table_and_nothing_else():
    assert sorted(declared_floors()) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_imports_go_down_the_floors(module):
    floors = declared_floors()
    up = [t for t in GRAPH[module] if floors[t] >= floors[module]]
    assert not up, (
        f"lib.{module} (floor {floors[module]}) imports {up} of the same or a higher floor"
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
    assert not set(GRAPH["sae"]) & {"sae_kernels", "sae_trainer", "sae_training", "sae_metrics"}


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_small(module):
    n = len((LIB / f"{module}.py").read_text().splitlines())
    assert n <= MAX_LINES, (
        f"lib/{module}.py has {n} lines (at most {MAX_LINES}): split it by concept"
    )


@pytest.mark.parametrize("module", MODULES)
def test_in_function_lib_imports_say_why_they_are_lazy(module):
    path = LIB / f"{module}.py"
    lines = path.read_text().splitlines()
    lazy = [line for _, line, top in lib_imports(path) if not top]
    silent = [n for n in lazy if "# lazy:" not in lines[n - 1]]
    assert not silent, (
        f"lib/{module}.py imports lib inside a function at lines {silent} without '# lazy: <why>'"
    )


def test_the_walker_sees_a_planted_circle(tmp_path):
    """The checks above can fail: a module importing its importer is seen."""
    (tmp_path / "a.py").write_text("from lib.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from lib import a\n")
    assert [m for m, _, _ in lib_imports(tmp_path / "a.py")] == ["b"]
    assert lib_imports(tmp_path / "b.py") == [("a", 2, False)]
