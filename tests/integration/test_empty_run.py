"""Notebook 03 on a run without completions: one line naming the stage to run first, before the
model is loaded, and nothing written (no run folder, no ``config.yaml``)."""

from __future__ import annotations

import pytest

from lib.capture.activations import check_capture_inputs
from lib.core.config import REPO_ROOT
from lib.core.fileio import RunDirError
from lib.core.rundir import open_run
from lib.pipeline.jupyter_kernels import execute_cell


def test_open_run_checks_a_stages_inputs_before_writing(tmp_path):
    with pytest.raises(RunDirError, match=r"completions.jsonl is missing; run 01_sampling for run 'empty' first"):  # fmt: skip
        open_run("organism", "empty", runs_root=tmp_path, check=check_capture_inputs)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "completions.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(RunDirError, match=r"labels.jsonl is missing; run 02_classification"):
        open_run("organism", "empty", runs_root=tmp_path, check=check_capture_inputs)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["completions.jsonl"]


def test_notebook_03_on_an_empty_run_fails_at_once_and_writes_nothing(tmp_path):
    out = execute_cell(
        "03_activation_capture",
        {"config": "organism", "run_name": "empty"},
        str(tmp_path / "out" / "03.ipynb"),
        str(REPO_ROOT / "notebooks"),
        env={"DECEPTION_SAES_RUNS": str(tmp_path / "runs")},
    )
    assert not out["ok"]
    # cell 3: the open_run cell (after papermill's injected parameters), not the model's cell
    assert out["error"].startswith("cell 3: RunDirError: ")
    assert out["error"].endswith(
        "completions.jsonl is missing; run 01_sampling for run 'empty' first"
    )
    assert "\n" not in out["error"]
    assert not (tmp_path / "runs").exists()
