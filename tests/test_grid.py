"""The papermill grid: planning, parameter checks, resume after a kill, failures, Dask."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat as nbf
import pytest

from lib.config import load_config
from lib.grid import check_parameters, plan, run_grid, summarise

STEMS = [
    "01_sampling",
    "02_classification",
    "03_activation_capture",
    "04_sae_training",
    "05_layer_profile_probing",
    "06_ste_comparison",
    "07_summary",
]

# A stand-in for each numbered notebook: it records its parameters in the run directory, so
# that results can be compared between runs, and sleeps a little so a run can be killed mid-way.
BODY = """
import json, os, time
from pathlib import Path
from lib.config import load_config
cfg = load_config(config, overrides, run_name=run_name)
out = Path(os.environ["DECEPTION_SAES_RUNS"]) / cfg.name / "results"
out.mkdir(parents=True, exist_ok=True)
extra = {k: v for k, v in globals().items() if k in ("layer", "arch", "condition")}
if os.environ.get("GRID_TEST_FAIL") and extra.get("condition") == os.environ["GRID_TEST_FAIL"]:
    raise RuntimeError("planted failure")
time.sleep(float(os.environ.get("GRID_TEST_SLEEP", "0")))
name = "{stem}" + "".join(f"_{v}" for v in extra.values())
(out / f"{name}.json").write_text(json.dumps(extra, sort_keys=True))
"""


def _fake_notebooks(root: Path) -> Path:
    nbdir = root / "notebooks"
    nbdir.mkdir()
    for stem in STEMS:
        nb = nbf.v4.new_notebook()
        params = 'config = "organism"\nrun_name = None\noverrides = {}'
        if stem == "04_sae_training":
            params += '\nlayer = 0\narch = "topk"\ncondition = "mixed"'
        nb.cells = [
            nbf.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
            nbf.v4.new_code_cell(BODY.replace("{stem}", stem)),
        ]
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbf.write(nb, nbdir / f"{stem}.ipynb")
    return nbdir


OVERRIDES = {"sae.layers": [2], "sae.ste_layers": [], "sae.architectures": ["topk"]}


@pytest.fixture
def grid_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DECEPTION_SAES_RUNS", str(tmp_path / "runs"))
    return _fake_notebooks(tmp_path)


def _results(runs: Path, name: str) -> dict:
    return {p.name: p.read_text() for p in sorted((runs / name / "results").glob("*.json"))}


def test_plan_covers_the_grid():
    cfg = load_config("tinyllama")
    cells = plan(cfg, "configs/tinyllama.yaml")
    assert sum(c.notebook == "04_sae_training" for c in cells) == 39
    names = [c.name for c in cells]
    assert len(set(names)) == len(names)
    assert "04_sae_training__L15_jumprelu_ste_honest_only" in names
    check_parameters(cells)  # the real notebooks declare every parameter the grid passes


def test_unknown_parameter_is_an_error_before_anything_runs(grid_env):
    cfg = load_config("organism")
    cells = plan(cfg, "organism", grid_env)
    bad = [c.__class__(c.phase, c.notebook, {**c.params, "epochs": 3}, c.name) for c in cells[:1]]
    with pytest.raises(ValueError, match=r"01_sampling: unknown parameter\(s\) \['epochs'\]"):
        check_parameters(bad, grid_env)


def test_failed_cell_is_reported_and_the_others_finish(grid_env, tmp_path, monkeypatch):
    monkeypatch.setenv("GRID_TEST_FAIL", "deceptive_only")
    results = run_grid(
        "organism", OVERRIDES, "failing", workers=2, notebook_dir=grid_env, progress=False
    )
    failed = [r for r in results if r.status == "failed"]
    assert [r.cell.name for r in failed] == ["04_sae_training__L2_topk_deceptive_only"]
    assert "04_sae_training__L2_topk_deceptive_only.ipynb: cell" in failed[0].error
    assert "planted failure" in failed[0].error
    done = _results(tmp_path / "runs", "failing")
    assert {
        "04_sae_training_2_topk_mixed.json",
        "04_sae_training_2_topk_honest_only.json",
        "07_summary.json",
    } <= set(done)
    assert "FAILED 04_sae_training__L2_topk_deceptive_only" in summarise(results)


def test_killed_grid_resumes_to_the_same_results(grid_env, tmp_path):
    env = {**os.environ, "GRID_TEST_SLEEP": "1"}
    cmd = [
        sys.executable,
        "-m",
        "lib.grid",
        "--config",
        "organism",
        "--notebook-dir",
        str(grid_env),
        "--set",
        "sae.layers=[2]",
        "--set",
        "sae.ste_layers=[]",
        "--set",
        "sae.architectures=[topk]",
    ]
    ref = subprocess.run(cmd + ["--run-name", "whole"], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(
        cmd + ["--run-name", "killed"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    done_dir = tmp_path / "runs" / "killed" / "notebooks" / ".done"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(done_dir.glob("04_*.json"))) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(done_dir.glob("*.json")))
    assert 3 <= n_before < 10, n_before
    resumed = subprocess.run(
        cmd + ["--run-name", "killed"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n_before} skipped" in resumed.stdout
    assert _results(tmp_path / "runs", "killed") == _results(tmp_path / "runs", "whole")


def test_grid_on_a_dask_local_cluster(grid_env, tmp_path):
    results = run_grid(
        "organism",
        OVERRIDES,
        "dask",
        workers=2,
        dask="local",
        notebook_dir=grid_env,
        progress=False,
    )
    assert [r.status for r in results].count("done") == len(results) == 9
    assert len(_results(tmp_path / "runs", "dask")) == 9
