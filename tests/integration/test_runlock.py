"""One writer per run directory (lib/core/runlock.py, lib/core/rundir.py): the lock, its lease to the grid's
kernels, read-only opens, config.yaml written only by the grid or a new run, the SAE guard, and
notebook parameter and checkout checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lib.core.config import REPO_ROOT, load_config
from lib.core.fileio import RunDirError, append_jsonl, read_jsonl
from lib.core.rundir import RunDir, check_notebook_parameters, guard_sae_write, init_run, open_run
from lib.core.runlock import LEASE_ENV, RunLockedError, acquire, busy, holder_info, release

ACQUIRE = "import sys; from lib.core.runlock import acquire; acquire(sys.argv[1]); print('got it', flush=True)"
HOLD = ACQUIRE.replace("flush=True)", "flush=True); import time; time.sleep(60)")
APPEND = (
    "import sys; from pathlib import Path; from lib.core.fileio import append_jsonl; "
    "append_jsonl(Path(sys.argv[1]) / 'completions.jsonl', [{'id': 'x'}]); print('appended')"
)


def _outside(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` in a process that is *not* a child of this test's locks (their lease is
    dropped from the environment) unless ``env`` lends one."""
    base = {k: v for k, v in os.environ.items() if k != LEASE_ENV}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**base, **(env or {})}
    )


def _py(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return _outside([sys.executable, "-c", code, *args], env)


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    root = tmp_path / "run"
    lock = acquire(root)
    try:
        assert acquire(root) is lock  # re-entrant within a process
        t0 = time.time()
        other = _py(ACQUIRE, str(root))
        assert other.returncode != 0 and time.time() - t0 < 15
        last = other.stderr.strip().splitlines()[-1]
        assert f"RunLockedError: run directory {root} is being written by pid {os.getpid()}" in last
        assert "pytest" in last and f"(kill {os.getpid()})" in last and "write=False" in last
        assert busy(root)["pid"] == os.getpid()
        # appends into the run from another process are refused too
        assert _py(APPEND, str(root)).returncode != 0
        assert not (root / "completions.jsonl").exists()
    finally:
        release(root)
    assert busy(root) is None
    assert _py(ACQUIRE, str(root)).stdout.strip() == "got it"


def test_kill_9_of_the_holder_leaves_no_stale_lock(tmp_path):
    root = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "got it"
    with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
        acquire(root)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    try:
        assert acquire(root).holder_pid == os.getpid()  # at once: the kernel freed the flock
    finally:
        release(root)


def test_the_lease_lets_the_holders_kernels_write_and_no_one_else(tmp_path):
    root = tmp_path / "run"
    lock = acquire(root)
    try:
        lent = _py(APPEND, str(root), env=lock.lease_env())
        assert lent.stdout.strip() == "appended", lent.stderr
        forged = _py(APPEND, str(root), env={LEASE_ENV: "0" * 32})
        assert forged.returncode != 0 and "is being written by" in forged.stderr
        # a process the holder starts (a notebook's worker) inherits the right to write
        child = subprocess.run(
            [sys.executable, "-c", APPEND, str(root)], capture_output=True, text=True, timeout=60
        )
        assert child.stdout.strip() == "appended", child.stderr
    finally:
        release(root)
    # the holder is gone: its lease is void, not a licence to write beside a new holder
    void = _py(APPEND, str(root), env={LEASE_ENV: lock.token})
    assert void.returncode != 0 and "has exited, so its lease is void" in void.stderr
    assert [r["id"] for r in read_jsonl(root / "completions.jsonl")] == ["x", "x"]
    assert lock.token not in os.environ.get(LEASE_ENV, "")  # released: no longer lent


def test_a_command_run_as_the_writer_lets_two_of_its_processes_write(tmp_path):
    """``python -m lib.core.runlock RUN -- CMD`` (make check-book's nbval): CMD's processes write side
    by side; the lock is free afterwards; a held run refuses the command without running it."""
    root = tmp_path / "run"
    two = (
        f"import subprocess, sys; ps = [subprocess.Popen([sys.executable, '-c', {APPEND!r}, "
        f"{str(root)!r}]) for _ in range(2)]; sys.exit(max(p.wait() for p in ps))"
    )
    cmd = [sys.executable, "-m", "lib.core.runlock", str(root), "--", sys.executable, "-c", two]
    done = _outside(cmd)
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in read_jsonl(root / "completions.jsonl")] == ["x", "x"]
    assert busy(root) is None
    acquire(root)
    try:
        refused = _outside(cmd)
        assert refused.returncode == 1
        assert f"lib.core.runlock: run directory {root} is being written by pid {os.getpid()}" in (
            refused.stderr
        )
    finally:
        release(root)
    assert len(read_jsonl(root / "completions.jsonl")) == 2  # the refused command never ran
    assert _py("from lib.core.runlock import main; main([])").returncode == 2  # usage error


def test_append_writes_whole_lines_and_repairs_a_torn_tail(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, [{"a": 1}])
    with open(path, "a") as f:
        f.write('{"a": 2, "b"')  # a writer killed mid-line
    append_jsonl(path, [{"a": 3}, {"a": 4}])
    assert path.read_text() == '{"a": 1}\n{"a": 3}\n{"a": 4}\n'


def test_readers_take_no_lock_and_manual_runs_keep_config_yaml(tmp_path, capsys):
    cfg = load_config("organism", {"name": "r"})
    run = init_run(cfg, tmp_path, write_config=True)
    written = run.config.read_bytes()
    release(run.root)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "got it"
        # a reader opens the run while another process writes it, and writes nothing
        rcfg, rrun = open_run("organism", "r", None, tmp_path, write=False)
        assert rrun.root == run.root and rcfg.name == "r"
        assert run.config.read_bytes() == written
        with pytest.raises(RunDirError, match="does not exist"):
            open_run("organism", "nope", None, tmp_path, write=False)
    finally:
        holder.kill()
        holder.wait()
    # a notebook run by hand with other settings: config.yaml is kept, the difference is said
    open_run("organism", "r", {"sae.epochs": 3}, tmp_path)
    assert run.config.read_bytes() == written
    assert "sae.epochs: 20 -> 3" in capsys.readouterr().out
    release(run.root)
    # the grid (write_config) writes the settings it runs with
    init_run(load_config("organism", {"name": "r", "sae.epochs": 3}), tmp_path, write_config=True)
    assert yaml.safe_load(run.config.read_text())["sae"]["epochs"] == 3
    release(run.root)


def test_sae_guard_refuses_other_settings(tmp_path):
    cfg = load_config("organism", {"name": "g"})
    run = init_run(cfg, tmp_path, write_config=True)
    release(run.root)
    guard_sae_write(run, cfg, "x")  # the run's own settings
    guard_sae_write(run, load_config("organism", {"name": "g", "probe.n_jobs": 1}), "x")
    other = load_config("organism", {"name": "g", "sae.epochs": 3, "seed": 4})
    with pytest.raises(RunDirError, match=r"sae\.epochs: 20 -> 3; seed: 0 -> 4.*grid's SAE"):
        guard_sae_write(run, other, "organism_topk_L2_mixed")
    guard_sae_write(RunDir(tmp_path / "fresh"), other, "x")  # no config.yaml yet: a new run


def test_unknown_notebook_parameters_are_named():
    params = 'config = "organism"\nrun_name = None\noverrides = {}'
    injected = '# Parameters\nconfig = "organism"\nrun_name = "t"\noverrides = {}\nepochs = 3\n'
    with pytest.raises(ValueError, match=r"unknown notebook parameter\(s\) \['epochs'\]"):
        check_notebook_parameters(["", params, injected, "x = 1"])
    check_notebook_parameters(["", params, injected.replace("epochs = 3\n", "")])
    check_notebook_parameters(["", "x = 1"])  # not run by papermill: nothing to check


def test_a_notebook_in_another_checkout_warns(tmp_path, monkeypatch):
    other = tmp_path / "clone"
    (other / "lib").mkdir(parents=True)
    (other / "lib" / "__init__.py").write_text("")
    (other / "notebooks").mkdir()
    monkeypatch.chdir(other / "notebooks")
    with pytest.warns(UserWarning, match="the .venv.s editable install points at the other clone"):
        open_run("organism", "w", None, tmp_path / "runs")
    release(tmp_path / "runs" / "w")
    monkeypatch.chdir(REPO_ROOT / "notebooks")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_run("organism", "w", None, tmp_path / "runs")
    release(tmp_path / "runs" / "w")
    assert holder_info(tmp_path / "runs" / "w")["pid"] == os.getpid()
    assert Path(tmp_path / "runs" / "w" / ".writer.lock").exists()
