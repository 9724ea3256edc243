"""The shape of ``lib``: subpackages on levels, no circles, lazy imports only with a reason.

The level table in ``lib/__init__.py`` is the declared structure and each subpackage's docstring
lists its modules (and its own subpackages, e.g. ``sae``'s ``architectures``); these tests read
every module's imports with ``ast`` (top-level and in-function) and hold the code to both. A
module is named by its dotted path under ``lib`` (``sae.model``, ``sae.architectures.topk``); a
nested package's ``__init__`` is a module of its parent (``sae.architectures``); its level is
its top subpackage's.
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


def module_name(path: Path, lib: Path = LIB) -> str:
    """``sae.model`` for ``lib/sae/model.py``; ``sae.architectures`` for its ``__init__.py``."""
    parts = path.relative_to(lib).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lib_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, at_top_level)`` for every import of a ``lib`` module in ``path``.

    A module is named by its dotted path under ``lib`` (``package.module``,
    ``package.subpackage.module``); ``from lib.x import name`` names the module ``x.name`` when
    that is a module of ``lib`` (or when ``x`` is a top subpackage: its modules are checked to
    exist by the other tests), and ``x`` itself otherwise (a name defined in module ``x``, or in
    the ``__init__`` of package ``x``).
    """
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib."):
            base = node.module.split(".", 1)[1]
            if "." in base:
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in ALL_MODULES else base
                    for a in node.names
                ]
            else:  # from lib.package import module, ...
                names = [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("lib.")]
        out += [(n, node.lineno, id(node) in top) for n in dict.fromkeys(names)]
    return out


PACKAGES = sorted(p.name for p in LIB.iterdir() if (p / "__init__.py").exists())
#: every module of lib's subpackages at any depth (a nested package's __init__ included)
ALL_MODULES = sorted(
    module_name(p) for p in LIB.glob("*/**/*.py") if module_name(p) not in PACKAGES
)
MODULES = ALL_MODULES
#: packages inside the top subpackages (``sae.architectures``)
NESTED = sorted(module_name(p) for p in LIB.glob("*/*/**/__init__.py"))


def module_path(m: str) -> Path:
    path = LIB / m.replace(".", "/")
    return path / "__init__.py" if m in NESTED else path.with_suffix(".py")


GRAPH = {m: sorted({t for t, _, _ in lib_imports(module_path(m))} - {m}) for m in MODULES}


def test_every_subpackage_is_in_the_level_table_and_nothing_else():
    assert sorted(declared_levels()) == PACKAGES
    assert not list(LIB.glob("[!_]*.py")), "every module of lib lives in a subpackage"


@pytest.mark.parametrize("package", PACKAGES + NESTED)
def test_each_subpackage_lists_its_modules(package):
    """A package's docstring lists its modules and its own packages, nothing else."""
    doc = ast.get_docstring(
        ast.parse((LIB / package.replace(".", "/") / "__init__.py").read_text())
    )
    listed = sorted(MODULE_ROW.findall(doc))
    depth = package.count(".") + 1
    children = [m for m in MODULES if m.startswith(package + ".") and m.count(".") == depth]
    assert listed == sorted(m.rsplit(".", 1)[1] for m in children)


def test_every_import_names_a_module_of_lib():
    """The import walker resolves every import to a module it checks (none falls through)."""
    unknown = {m: [t for t in GRAPH[m] if t not in MODULES and t not in PACKAGES] for m in MODULES}
    assert not {m: ts for m, ts in unknown.items() if ts}


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


def imported_closure(module: str) -> set[str]:
    """Every module ``module`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for t in GRAPH.get(todo.pop(), []):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


TRAINING = {"sae.trainer", "sae.fused_step", "sae.train_grid", "sae.metrics", "sae.codes"}


def test_the_sae_model_never_imports_its_trainer():
    """The model reaches the architectures (their specs hold their steps, taking the trainer as
    an argument) and nothing else of ``sae``; nothing it imports reaches the trainer."""
    closure = imported_closure("sae.model")
    sae_part = {t for t in closure if t.startswith("sae.")}
    assert all(t.startswith("sae.architectures") for t in sae_part), sorted(sae_part)
    assert not closure & TRAINING, sorted(closure & TRAINING)


@pytest.mark.parametrize("module", MODULES)
def test_in_function_lib_imports_say_why_they_are_lazy(module):
    path = module_path(module)
    text = path.read_text()
    lines = text.splitlines()
    imports = (ast.Import, ast.ImportFrom)
    ends = {n.lineno: n.end_lineno for n in ast.walk(ast.parse(text)) if isinstance(n, imports)}
    lazy = [line for _, line, top in lib_imports(path) if not top]
    # the reason sits on the statement (a wrapped import carries it on any of its lines)
    silent = [n for n in lazy if not any("# lazy:" in x for x in lines[n - 1 : ends[n]])]
    assert not silent, (
        f"{path.relative_to(LIB.parent)} imports lib inside a function at lines {silent} "
        "without '# lazy: <why>'"
    )


def test_the_walker_sees_a_planted_circle_and_an_upward_import(tmp_path):
    """The checks above can fail: a module importing its importer, or a higher level, is seen."""
    (tmp_path / "a.py").write_text("from lib.core.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from lib.core import a\n")
    (tmp_path / "c.py").write_text("import lib.pipeline.grid\n")
    assert [m for m, _, _ in lib_imports(tmp_path / "a.py")] == ["core.b"]
    assert lib_imports(tmp_path / "b.py") == [("core.a", 2, False)]
    assert lib_imports(tmp_path / "c.py") == [("pipeline.grid", 1, True)]
    (tmp_path / "d.py").write_text(
        "from lib.sae.architectures import topk, REGISTRY\nimport lib.sae.architectures.spec\n"
    )
    assert lib_imports(tmp_path / "d.py") == [
        ("sae.architectures.topk", 1, True),
        ("sae.architectures", 1, True),
        ("sae.architectures.spec", 2, True),
    ]
    levels = declared_levels()
    assert levels["pipeline"] > levels["core"]  # so core.c importing pipeline.grid is upward
