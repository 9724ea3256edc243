"""The papermill grid: planning, parameter checks, one writer per run, outputs checked before a
skip, resume after a kill, failures, clear errors, Dask.

The notebooks here are stand-ins (``tests/helpers/fake_book.py``): each opens its run like a real one and
writes one declared output, so the grid's machinery is tested in seconds.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_book import RUNNER, fake_stages, make_fake_notebooks

from lib.core.config import load_config
from lib.core.fileio import append_jsonl, read_jsonl
from lib.core.rundir import RunDir, open_run
from lib.core.runlock import RunLockedError, holder_info
from lib.pipeline.grid import (
    NOTEBOOK_DIR as NOTEBOOK_DIR_REAL,
)
from lib.pipeline.grid import (
    check_parameters,
    dry_run,
    execute_cell,
    main,
    plan,
    run_grid,
    summarise,
)

OVERRIDES = {
    "sae.layers": [2],
    "sae.ste_layers": [],
    "sae.architectures": ["topk"],
    "sae.fan_out": True,  # one fake 04 per cell
    "features.saes": "all",  # the organism's list names SAEs of its full grid
}
ONE = {**OVERRIDES, "sae.conditions": ["mixed"]}  # 7 notebooks
ONE_ARGS = [
    "--config",
    "organism",
    "--set",
    "sae.layers=[2]",
    "--set",
    "sae.ste_layers=[]",
    "--set",
    "sae.architectures=[topk]",
    "--set",
    "sae.conditions=[mixed]",
    "--set",
    "features.saes=all",
    "--set",
    "sae.fan_out=true",
]


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """Fake notebooks, a runs root, and one finished solo run of seven notebooks ("solo")."""
    root = tmp_path_factory.mktemp("grid")
    nbdir = make_fake_notebooks(root)
    runs = root / "runs"
    mp = pytest.MonkeyPatch()
    mp.setenv("DECEPTION_SAES_RUNS", str(runs))
    results = run_grid(
        "organism", ONE, "solo", workers=2, notebook_dir=nbdir, progress=False, stages=fake_stages()
    )
    assert [r.status for r in results] == ["done"] * 7, summarise(results)
    yield {"nbdir": nbdir, "runs": runs, "root": root}
    mp.undo()


@pytest.fixture
def grid_env(book, monkeypatch):
    monkeypatch.setenv("DECEPTION_SAES_RUNS", str(book["runs"]))
    return book["nbdir"]


def _results(runs: Path, name: str) -> dict:
    return {p.name: p.read_text() for p in sorted((runs / name / "results").glob("*.json"))}


def _log(runs: Path, name: str) -> list[str]:
    return sorted(r["cell"] for r in read_jsonl(runs / name / "results" / "log.jsonl"))


def _grid_cmd(book, run_name: str, *extra: str) -> list[str]:
    nbdir = str(book["nbdir"])
    return [sys.executable, "-c", RUNNER, *ONE_ARGS, "--notebook-dir", nbdir, "--run-name", run_name, *extra]  # fmt: skip


def _env(book, **kw) -> dict:
    return {**os.environ, "DECEPTION_SAES_RUNS": str(book["runs"]), **kw}


def test_plan_covers_the_grid():
    cfg = load_config("tinyllama")
    cells = plan(cfg, "configs/tinyllama.yaml")
    assert sum(c.notebook == "04_sae_training" for c in cells) == 39
    assert sum(c.notebook == "08_features" for c in cells) == 39
    phase = {c.notebook: c.phase for c in cells}
    assert phase["05_layer_profile_probing"] < phase["06_ste_comparison"] < phase["07_summary"]
    assert phase["08_features"] < phase["09_steering"] < phase["10_cross_model"]
    organism = plan(load_config("organism"), "organism")  # fan_out false: one 04 and one 08
    assert [c.params.get("all_cells") for c in organism if c.notebook == "04_sae_training"] == [
        True
    ]
    assert [c.params.get("all_saes") for c in organism if c.notebook == "08_features"] == [True]
    check_parameters(organism)
    names = [c.name for c in cells]
    assert len(set(names)) == len(names)
    assert "04_sae_training__L15_jumprelu_ste_honest_only" in names
    check_parameters(cells)  # the real notebooks declare every parameter the grid passes


def _scheduled(monkeypatch, tmp_path, seconds: dict, fail: str = "") -> tuple[list, list]:
    """Run the real organism plan with stand-in executions (``seconds`` per notebook, the rest
    0.01 s): ``(events, results)``, events being ``("start" | "end", cell name)`` in order."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import lib.pipeline.grid as grid

    cfg = load_config("organism")
    cells = plan(cfg, "organism")
    events, lock = [], threading.Lock()
    monkeypatch.setattr(grid, "cell_state", lambda run, cfg, c, ins: ("to do", ""))

    def finish(run, cfg, c, out, ins):
        return grid.CellResult(c, "failed" if c.notebook == fail else "done", 0.0)

    monkeypatch.setattr(grid, "_finish", finish)

    class Ins:
        def digest(self, notebook, params):
            return "same"

    pool = ThreadPoolExecutor(max_workers=2)

    def submit(fn, notebook, params, out, *rest):
        name = Path(out).stem
        with lock:
            events.append(("start", name))

        def work():
            time.sleep(seconds.get(notebook, 0.01))
            with lock:
                events.append(("end", name))
            return {}

        return pool.submit(work)

    session = grid._Session(
        RunDir(tmp_path), cfg, cells, cells, Ins(), NOTEBOOK_DIR_REAL, {}, False, False, False, None
    )

    class Bar:
        def update(self, n):
            pass

        def set_postfix_str(self, s):
            pass

    try:
        results = session.run_cells(submit, None, Bar())
    finally:
        pool.shutdown()
    return events, results


def test_a_notebook_starts_once_what_it_reads_has_finished(monkeypatch, tmp_path):
    events, results = _scheduled(monkeypatch, tmp_path, {"05_layer_profile_probing": 0.5})
    at = {e: i for i, e in enumerate(events)}
    assert [r.status for r in results] == ["done"] * len(results) and len(results) == 10
    # 08 and 09 run while the slow 05 does; 06, 07 and 10 wait for it
    assert at[("start", "09_steering")] < at[("end", "05_layer_profile_probing")]
    assert at[("end", "08_features__all")] < at[("start", "09_steering")]
    for after_05 in ("06_ste_comparison", "07_summary", "10_cross_model"):
        assert at[("end", "05_layer_profile_probing")] < at[("start", after_05)]
    assert at[("end", "06_ste_comparison")] < at[("start", "07_summary")]
    for name in ("05_layer_profile_probing", "08_features__all"):
        assert at[("end", "04_sae_training__all")] < at[("start", name)]


def test_a_failed_capture_stops_what_needs_it_and_a_failed_04_does_not(monkeypatch, tmp_path):
    _, results = _scheduled(monkeypatch, tmp_path, {}, fail="03_activation_capture")
    status = {r.cell.notebook: (r.status, r.error) for r in results}
    assert status["02_classification"][0] == "done"
    for later in ("04_sae_training", "05_layer_profile_probing", "09_steering", "07_summary"):
        assert status[later] == ("failed", "not run: 03_activation_capture failed"), later
    _, results = _scheduled(monkeypatch, tmp_path, {}, fail="04_sae_training")
    status = {r.cell.notebook: r.status for r in results}
    assert status["04_sae_training"] == "failed"
    assert status["05_layer_profile_probing"] == status["09_steering"] == "done"


def test_unknown_parameter_is_an_error_before_anything_runs(grid_env):
    cfg = load_config("organism")
    cells = plan(cfg, "organism", grid_env)
    bad = [c.__class__(c.phase, c.notebook, {**c.params, "epochs": 3}, c.name) for c in cells[:1]]
    with pytest.raises(ValueError, match=r"01_sampling: unknown parameter\(s\) \['epochs'\]"):
        check_parameters(bad, grid_env)


def test_unknown_parameter_is_an_error_in_the_notebook_itself(grid_env, tmp_path):
    """papermill without the grid: the notebook's open_run names the stray parameter."""
    params = {"config": "organism", "run_name": "stray", "overrides": {}, "epochs": 3}
    out = execute_cell("01_sampling", params, str(tmp_path / "o.ipynb"), str(grid_env))
    assert not out["ok"]
    assert "unknown notebook parameter(s) ['epochs']" in out["error"]


def test_failed_cell_is_reported_and_the_others_finish(grid_env, book, monkeypatch):
    monkeypatch.setenv("GRID_TEST_FAIL", "deceptive_only")
    results = run_grid(
        "organism",
        OVERRIDES,
        "failing",
        workers=2,
        notebook_dir=grid_env,
        progress=False,
        stages=fake_stages(),
    )
    failed = [r for r in results if r.status == "failed"]
    assert [r.cell.name for r in failed] == ["04_sae_training__L2_topk_deceptive_only"]
    assert "04_sae_training__L2_topk_deceptive_only.ipynb: cell" in failed[0].error
    assert "planted failure" in failed[0].error
    done = _results(book["runs"], "failing")
    assert {
        "04_sae_training_2_topk_mixed.json",
        "04_sae_training_2_topk_honest_only.json",
        "07_summary.json",
    } <= set(done)
    assert "FAILED 04_sae_training__L2_topk_deceptive_only" in summarise(results)


def test_second_writer_fails_at_once_and_the_first_run_is_unharmed(book):
    """Two grids on one run: the second exits non-zero at once naming the first; a notebook run
    by hand and a bare append fail the same way; the first grid's results equal a solo run's."""
    first = subprocess.Popen(
        _grid_cmd(book, "pair", "--log-output"),
        # long enough that the DAG's parallel notebooks outlast a second grid's start-up
        env=_env(book, GRID_TEST_SLEEP="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = RunDir(book["runs"] / "pair")
    deadline = time.time() + 60
    while holder_info(run.root).get("pid") != first.pid and time.time() < deadline:
        time.sleep(0.05)
    t0 = time.time()
    second = subprocess.run(
        _grid_cmd(book, "pair"), env=_env(book), capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 2 and time.time() - t0 < 20
    msg = second.stderr.strip()
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg
    assert f"is being written by pid {first.pid}" in msg and f"(kill {first.pid})" in msg
    assert first.poll() is None, "the first grid ended before the intruders could be tried"
    with pytest.raises(RunLockedError, match=f"pid {first.pid}"):
        open_run("organism", "pair", ONE, book["runs"])  # a notebook run by hand
    with pytest.raises(RunLockedError):
        append_jsonl(run.results / "log.jsonl", [{"cell": "intruder"}])
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    solo_cells = sorted(p.stem for p in (book["runs"] / "solo" / "results").glob("*.json"))
    assert _log(book["runs"], "pair") == solo_cells  # each notebook wrote once: no doubled rows
    assert _results(book["runs"], "pair") == _results(book["runs"], "solo")
    # one line per finished notebook with its time; --log-output streams cell output, prefixed
    assert len([ln for ln in out.splitlines() if ln.startswith("grid: done")]) == 7
    assert "[07_summary] cell 07_summary ran" in out
    assert "KeyboardInterrupt" not in err  # kernels are shut down without an interrupt


def test_killed_grid_resumes_to_the_same_results(book):
    env = _env(book, GRID_TEST_SLEEP="1")
    proc = subprocess.Popen(
        _grid_cmd(book, "killed"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    done_dir = book["runs"] / "killed" / "notebooks" / ".done"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(done_dir.glob("04_*.json"))) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(done_dir.glob("*.json")))
    assert 4 <= n_before < 7, n_before
    # the kernel released the dead grid's lock: the rerun starts at once and resumes
    resumed = subprocess.run(_grid_cmd(book, "killed"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n_before} skipped" in resumed.stdout
    assert _results(book["runs"], "killed") == _results(book["runs"], "solo")


def test_deleted_output_is_rebuilt_by_a_plain_rerun(grid_env, book, capsys):
    runs = book["runs"]
    lost = runs / "solo" / "results" / "04_sae_training_2_topk_mixed.json"
    kept = lost.read_text()
    lost.unlink()
    states = {c.name: (s, why) for c, s, why in dry_run("organism", ONE, "solo", None, grid_env, stages=fake_stages())}  # fmt: skip
    assert states["04_sae_training__L2_topk_mixed"] == (
        "damaged",
        "results/04_sae_training_2_topk_mixed.json is missing",
    )
    assert states["01_sampling"] == ("done", "")
    results = run_grid(
        "organism", ONE, "solo", notebook_dir=grid_env, progress=False, stages=fake_stages()
    )
    ran = sorted(r.cell.name for r in results if r.status == "done")
    # the damaged cell, and every later phase (their inputs changed); nothing before it
    assert ran == [
        "04_sae_training__L2_topk_mixed",
        "05_layer_profile_probing",
        "06_ste_comparison",
        "07_summary",
    ]
    assert lost.read_text() == kept
    assert all(s == "done" for _, s, _ in dry_run("organism", ONE, "solo", None, grid_env, stages=fake_stages()))  # fmt: skip


def test_cli_dry_run_help_and_one_line_config_errors(grid_env, book, capsys):
    config_yaml = book["runs"] / "solo" / "config.yaml"
    before = config_yaml.read_bytes()
    args = [*ONE_ARGS, "--notebook-dir", str(grid_env), "--run-name", "solo"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "run 'solo'" in out and "to do" not in out  # the real stage table: outputs absent
    assert "damaged  01_sampling: completions.jsonl is missing" in out
    # a count, and the command that does the work (with the same overrides)
    assert "summary: 7 damaged" in out
    assert "next: python -m lib.pipeline.grid --config organism --run-name solo" in out
    # a layer the organism lacks: one line, no traceback, config.yaml untouched
    assert main([*args, "--set", "sae.layers=[99]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "python -m lib.pipeline.grid: sae.layers: layer(s) [99] outside the model"
    )
    assert len(err.splitlines()) == 1
    assert main([*args, "--set", "sae.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sae.bogus: unknown key" in err
    assert config_yaml.read_bytes() == before
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out
    assert "(default: 1)" in helptext and "(default: None)" not in helptext
    assert "sae.epochs counts only where sae.steps is unset" in " ".join(helptext.split())
    # an override another field overrules: a note, and the run goes on
    assert main([*args, "--dry-run", "--set", "sae.epochs=5"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "python -m lib.pipeline.grid: note: sae.epochs=5 has no effect: sae.steps=500 governs "
        "(set sae.steps=null to train by epochs)\n"
    )
    assert main([*args, "--dry-run", "--set", "sae.epochs=5", "--set", "sae.steps=null"]) == 0
    assert capsys.readouterr().err == ""


def test_grid_on_a_dask_local_cluster(grid_env, book):
    results = run_grid(
        "organism",
        OVERRIDES,
        "dask",
        workers=2,
        dask="local",
        notebook_dir=grid_env,
        progress=False,
        stages=fake_stages(),
    )
    assert [r.status for r in results].count("done") == len(results) == 9
    assert len(_results(book["runs"], "dask")) == 9
    assert json.loads((book["runs"] / "dask" / "results" / "01_sampling.json").read_text()) == {}


def test_kernels_are_shut_down_without_an_interrupt(grid_env, tmp_path, monkeypatch):
    """jupyter_client sends SIGINT before shutting a kernel down, which an idle kernel logs as
    "KeyboardInterrupt caught in kernel"; the grid's kernel manager skips that interrupt."""
    from jupyter_client.manager import AsyncKernelManager

    sent, real = [], AsyncKernelManager._async_signal_kernel

    async def record(self, signum):
        sent.append(signum)
        return await real(self, signum)

    monkeypatch.setattr(AsyncKernelManager, "_async_signal_kernel", record)
    params = {"config": "organism", "run_name": "quiet", "overrides": {}}
    out = execute_cell("07_summary", params, str(tmp_path / "o.ipynb"), str(grid_env))
    assert out["ok"], out["error"]
    assert sent == []
