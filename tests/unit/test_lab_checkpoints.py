"""``make lab`` keeps JupyterLab's checkpoints in one git-ignored folder: none in a run's folder
or in notebooks/, and two notebooks of one name in two folders keep two checkpoints."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess

import nbformat
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

from lib.core.config import REPO_ROOT
from lib.pipeline.lab_checkpoints import MirroredCheckpoints


def lab_options() -> dict[str, str]:
    """The ``--Class.trait=value`` options of the Makefile's ``lab`` recipe, make variables
    expanded (``make -n``: nothing runs)."""
    recipe = subprocess.run(
        ["make", "-n", "-W", ".venv/.installed", "lab"], cwd=REPO_ROOT, capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in recipe.replace("\\\n", " ").splitlines() if "jupyter lab " in x)
    return dict(
        re.match(r"--([\w.]+)=(.*)", a).groups()
        for a in shlex.split(line)
        if a.startswith("--") and "=" in a
    )


def test_make_lab_puts_checkpoints_in_one_ignored_folder():
    options = lab_options()
    cls = options["ContentsManager.checkpoints_class"]
    assert cls == f"{MirroredCheckpoints.__module__}.{MirroredCheckpoints.__name__}"
    folder = options["MirroredCheckpoints.checkpoint_dir"]
    assert folder == str(REPO_ROOT / ".cache" / "lab-checkpoints")
    probe = f"{folder}/data/runs/default/notebooks/07_summary-checkpoint.ipynb"
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO_ROOT)
    assert ignored.returncode == 0


def test_checkpoints_mirror_the_notebooks_paths(tmp_path):
    root, store = tmp_path / "repo", tmp_path / "checkpoints"
    root.mkdir()
    manager = AsyncLargeFileManager(root_dir=str(root), checkpoints_class=MirroredCheckpoints)
    manager.checkpoints.checkpoint_dir = str(store)
    paths = ["notebooks/07_summary.ipynb", "data/runs/default/notebooks/07_summary.ipynb"]

    async def save_and_checkpoint():
        for i, path in enumerate(paths):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"print({i})")])
            await manager.save({"type": "notebook", "content": nb}, path)
            await manager.create_checkpoint(path)
        return [await manager.list_checkpoints(p) for p in paths]

    listed = asyncio.run(save_and_checkpoint())
    assert [len(x) for x in listed] == [1, 1]
    assert not list(root.rglob(".ipynb_checkpoints"))
    saved = sorted(str(p.relative_to(store)) for p in store.rglob("*.ipynb"))
    assert saved == [
        "data/runs/default/notebooks/07_summary-checkpoint.ipynb",
        "notebooks/07_summary-checkpoint.ipynb",
    ]
    first = nbformat.read(store / "notebooks/07_summary-checkpoint.ipynb", as_version=4)
    assert first.cells[0].source == "print(0)"  # its own, not the run's notebook
