"""Run the numbered notebooks over a config's grid with papermill.

Phases run in order; the cells of one phase run in parallel::

    01_sampling -> 02_classification -> 03_activation_capture
      -> 04_sae_training x every (layer, architecture, condition) of the SAE grid
         (or once for the whole grid: sae.fan_out false)
      -> 05_layer_profile_probing, 08_features x every analysed SAE (or once: features.fan_out)
      -> 06_ste_comparison, 09_steering -> 07_summary
      -> 10_cross_model (this run, and the ``--cross-runs`` that have a layer profile)

The grid is the run's one writer: it holds the run directory's lock (:mod:`lib.runlock`) from
start to end and lends it to the kernels it starts, so a second grid, or a notebook run by hand
on the same run, fails at once with the holder's pid and command. It alone writes the run's
``config.yaml``, after every check passed.

A cell is skipped only when its notebook ran under the grid with the same settings (a marker in
``<run>/notebooks/.done/``) *and* its outputs are valid (:mod:`lib.stages`); else it runs again and
the notebook resumes. A rerun that changed a cell's outputs invalidates every later phase. A
failed cell is reported with its output notebook and failing cell while the others go on, and
the command exits non-zero at the end. Each cell gets its own kernel (:mod:`lib.kernel`); the
same cells can be submitted to Dask (``--dask local`` or ``--dask tcp://host:8786``).
``--costs rehearsal.csv`` writes every executed notebook's wall time, peak memory, disk written
and throughput to ``<run>/results/rehearsal.csv`` (:mod:`lib.stage_costs`).

    python -m lib.grid --config configs/organism.yaml --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lib.config import REPO_ROOT, ConfigError, RunConfig, load_config
from lib.fileio import RunDirError, write_json
from lib.kernel import check_parameters as _check_parameters
from lib.kernel import completed, execute_cell, executor
from lib.latents import analysed_saes
from lib.rundir import RunDir, fingerprint, init_run
from lib.runlock import RunLockedError, acquire, busy, held, release
from lib.stages import Inspector, Stage

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


@dataclass(frozen=True)
class GridCell:
    """One notebook execution: a notebook, its parameters, and where its output goes."""

    phase: int
    notebook: str  # stem, e.g. "04_sae_training"
    params: dict = field(default_factory=dict, hash=False, compare=False)
    name: str = ""  # output stem, e.g. "04_sae_training__L2_topk_mixed"

    def output(self, run: RunDir) -> Path:
        return run.notebooks / f"{self.name}.ipynb"

    def marker(self, run: RunDir) -> Path:
        return run.notebooks / ".done" / f"{self.name}.json"


@dataclass
class CellResult:
    cell: GridCell
    status: str  # "done" | "skipped" | "failed"
    seconds: float = 0.0
    error: str = ""
    note: str = ""  # e.g. work left for the next run (failed verdicts within the limit)
    usage: dict = field(default_factory=dict)  # the kernel's memory and the load (lib.costs)


def plan(
    cfg: RunConfig,
    config_ref: str,
    notebook_dir: Path = NOTEBOOK_DIR,
    only: list[str] | None = None,
    overrides: dict | None = None,
    cross_runs: list[str] | None = None,
    runs_root: Path | None = None,
) -> list[GridCell]:
    """The grid of a config: every notebook execution with its parameters, by phase.

    ``cross_runs``: other runs 10_cross_model draws beside this one, those of them that have a
    layer profile under the runs root (this run first: the figure goes to its folder)."""
    common = {"config": config_ref, "run_name": cfg.name, "overrides": dict(overrides or {})}
    cells: list[GridCell] = []

    def add(
        phase: int, stem: str, extra: dict | None = None, suffix: str = "", common_params=True
    ) -> None:
        if not (notebook_dir / f"{stem}.ipynb").exists():
            return
        if only and stem[:2] not in only and stem not in only:
            return
        params = {**(common if common_params else {}), **(extra or {})}
        cells.append(GridCell(phase, stem, params, stem + (f"__{suffix}" if suffix else "")))

    add(1, "01_sampling")
    add(2, "02_classification")
    add(3, "03_activation_capture")
    if cfg.sae.fan_out:
        for layer, arch, cond in cfg.sae_grid():
            cell = {"layer": layer, "arch": arch, "condition": cond}
            add(4, "04_sae_training", cell, f"L{layer}_{arch}_{cond}")
    elif cfg.sae_grid():
        add(4, "04_sae_training", {"all_cells": True}, "all")
    add(5, "05_layer_profile_probing")
    analysed = set(analysed_saes(cfg))
    if cfg.features.fan_out:
        for layer, arch, cond in cfg.sae_grid():
            if cfg.sae_id(layer, arch, cond) in analysed:
                cell = {"layer": layer, "arch": arch, "condition": cond}
                add(5, "08_features", cell, f"L{layer}_{arch}_{cond}")
    elif analysed:
        add(5, "08_features", {"all_saes": True}, "all")
    add(6, "06_ste_comparison")  # reads 05's SAE probes
    add(6, "09_steering")  # assembles 08's per-SAE results
    add(7, "07_summary")  # reads 05 and 06
    root = RunDir.for_config(cfg, runs_root).root.parent
    others = [r for r in cross_runs or [] if r != cfg.name]
    others = [r for r in others if (root / r / "results" / "layer_profile.csv").exists()]
    add(8, "10_cross_model", {"runs": [cfg.name, *others]}, common_params=False)
    return cells


def check_parameters(cells: list[GridCell], notebook_dir: Path = NOTEBOOK_DIR) -> None:
    """Fail before running anything when a cell passes a name its notebook does not declare."""
    _check_parameters(cells, notebook_dir)


def check_model_layers(cfg: RunConfig) -> None:
    """Check the configured layers against the model's ``config.json`` when it is on disk.

    Runs before the grid writes anything, so a config naming a layer the model lacks never
    reaches the run's ``config.yaml``. A hub id not downloaded yet is checked later (notebook 03).
    """
    path = REPO_ROOT / "data" / "organism" if cfg.model == "organism" else Path(cfg.model)
    if not path.is_absolute():
        path = REPO_ROOT / path
    try:
        mc = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return
    mc = mc.get("text_config", mc)
    n = mc.get("num_hidden_layers") or mc.get("n_layer")
    if isinstance(n, int):
        cfg.check_layers(n)


def _fingerprint(cfg: RunConfig, cell: GridCell) -> str:
    return fingerprint({"config": cfg.model_dump(mode="json"), "params": cell.params})[:16]


def _ran(run: RunDir, cfg: RunConfig, cell: GridCell) -> str:
    """``"yes"`` when the notebook ran under the grid with these settings; else why not."""
    m = cell.marker(run)
    if not m.exists():
        return "not run yet"
    if not cell.output(run).exists():
        return "its executed notebook is missing"
    try:
        same = json.loads(m.read_text()).get("fingerprint") == _fingerprint(cfg, cell)
    except json.JSONDecodeError:
        same = False
    return "yes" if same else "the settings changed since it ran"


def cell_state(run: RunDir, cfg: RunConfig, cell: GridCell, ins: Inspector) -> tuple[str, str]:
    """``("done" | "to do" | "damaged", why)`` of one cell, from its marker and its outputs."""
    ran = _ran(run, cfg, cell)
    check = ins.check(cell.notebook, cell.params)
    if ran != "yes":
        return "to do", ran if check.valid or ran != "not run yet" else f"{ran} ({check.why})"
    if not check.valid:
        return "damaged", check.why
    if not check.complete:
        return "to do", check.why
    return "done", ""


def _print_line(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)


def run_grid(
    config_ref: str,
    overrides: dict | None = None,
    run_name: str | None = None,
    workers: int = 1,
    dask: str | None = None,
    only: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    notebook_dir: Path = NOTEBOOK_DIR,
    runs_root: Path | None = None,
    on_result: Callable[[CellResult], None] | None = None,
    log_output: bool = False,
    stages: dict[str, Stage] | None = None,
    cross_runs: list[str] | None = None,
) -> list[CellResult]:
    """Run (or resume) the grid of a config; returns one result per cell.

    ``config_ref``, ``overrides`` and ``run_name`` are passed to every notebook as they are, so
    the notebooks resolve exactly the config the grid was planned from. Everything is checked
    (config, notebook parameters, layers, the run's lock) before ``config.yaml`` is written.
    ``stages`` replaces :data:`lib.stages.STAGES` (tests). Raises
    :class:`lib.runlock.RunLockedError` when another process writes the run.
    """
    from tqdm.auto import tqdm

    cfg = load_config(config_ref, overrides, run_name=run_name)
    run = RunDir.for_config(cfg, runs_root)
    new_run, ours = not run.root.exists(), held(run.root) is None
    lock = acquire(run.root)  # first: a second writer fails at once
    try:
        try:
            cells = plan(cfg, config_ref, notebook_dir, only, overrides, cross_runs, runs_root)
            check_parameters(cells, notebook_dir)
            check_model_layers(cfg)
        except Exception:
            if new_run:  # leave no empty run directory behind a config that cannot run
                release(run.root)
                shutil.rmtree(run.root, ignore_errors=True)
            raise
        init_run(cfg, runs_root, write_config=True)
        session = _Session(
            run,
            cfg,
            cells,
            plan(cfg, config_ref, notebook_dir, None, overrides, cross_runs, runs_root),
            Inspector(run, cfg, stages),
            notebook_dir,
            lock.lease_env(),
            log_output,
            force,
            progress,
            on_result,
        )
        submit, shutdown = executor(workers, dask)
        bar = tqdm(total=len(cells), desc=f"grid {cfg.name}", unit="notebook", disable=not progress)
        try:
            return session.run_phases(submit, dask, bar)
        finally:
            bar.close()
            shutdown()
    finally:
        if ours:
            release(run.root)


@dataclass
class _Session:
    """One grid invocation on one run, with the lock held."""

    run: RunDir
    cfg: RunConfig
    cells: list[GridCell]  # what runs (``--only`` applied)
    every_cell: list[GridCell]  # the whole grid (markers a changed output invalidates)
    ins: Inspector
    notebook_dir: Path
    env: dict
    log_output: bool
    force: bool
    progress: bool
    on_result: Callable[[CellResult], None] | None

    def run_phases(self, submit, dask: str | None, bar) -> list[CellResult]:
        run, cfg, ins = self.run, self.cfg, self.ins
        results: list[CellResult] = []
        failed_phase = None
        for phase in sorted({c.phase for c in self.cells}):
            todo = []
            for c in (c for c in self.cells if c.phase == phase):
                if failed_phase is not None and failed_phase < 4:
                    results.append(
                        CellResult(c, "failed", error=f"not run: phase {failed_phase} failed")
                    )
                elif not self.force and cell_state(run, cfg, c, ins)[0] == "done":
                    results.append(CellResult(c, "skipped"))
                else:
                    todo.append(c)
                    continue
                bar.update(1)
            before = {c.name: ins.digest(c.notebook, c.params) for c in todo}
            futures = {self._submit(submit, c): c for c in todo}
            for fut in completed(futures, dask):
                c = futures[fut]
                res = _finish(run, cfg, c, fut.result(), ins)
                if res.status == "failed":
                    failed_phase = phase if failed_phase is None else min(failed_phase, phase)
                elif ins.digest(c.notebook, c.params) != before[c.name]:
                    self._invalidate_after(phase)
                results.append(res)
                if self.progress:
                    _print_line(_describe(res))
                if self.on_result:
                    self.on_result(res)
                bar.set_postfix_str(f"{c.name} {res.status}")
                bar.update(1)
        return results

    def _submit(self, submit, c: GridCell):
        out, nbdir = str(c.output(self.run)), str(self.notebook_dir)
        return submit(
            execute_cell, c.notebook, c.params, out, nbdir, "python3", self.env, self.log_output
        )

    def _invalidate_after(self, phase: int) -> None:
        """Outputs of ``phase`` changed: every later notebook must run again (markers removed)."""
        for c in self.every_cell:
            if c.phase > phase:
                c.marker(self.run).unlink(missing_ok=True)


def _finish(run: RunDir, cfg: RunConfig, c: GridCell, out: dict, ins: Inspector) -> CellResult:
    """The result of an executed cell: its notebook must succeed and its outputs be valid."""
    usage = out.get("usage") or {}
    if not out["ok"]:
        return CellResult(
            c, "failed", out["seconds"], f"{c.output(run)}: {out['error']}", "", usage
        )
    check = ins.check(c.notebook, c.params)
    if not check.valid:
        why = f"{c.output(run)} ran, but its outputs are not valid: {check.why}"
        return CellResult(c, "failed", out["seconds"], why, "", usage)
    write_json(
        c.marker(run),
        {
            "fingerprint": _fingerprint(cfg, c),
            "params": c.params,
            "seconds": round(out["seconds"], 1),
        },
    )
    return CellResult(c, "done", out["seconds"], note=check.why, usage=usage)


def _describe(r: CellResult) -> str:
    line = f"grid: {r.status:<7} {r.cell.name} ({r.seconds:.1f} s)"
    if r.error:
        line += f": {r.error}"
    if r.note:
        line += f"; left for the next run: {r.note}"
    return line


def dry_run(
    config_ref: str,
    overrides: dict | None = None,
    run_name: str | None = None,
    only: list[str] | None = None,
    notebook_dir: Path = NOTEBOOK_DIR,
    runs_root: Path | None = None,
    stages: dict[str, Stage] | None = None,
    cross_runs: list[str] | None = None,
) -> list[tuple[GridCell, str, str]]:
    """``(cell, "done" | "to do" | "damaged", why)`` for every cell; reads only, takes no lock."""
    cfg = load_config(config_ref, overrides, run_name=run_name)
    run = RunDir.for_config(cfg, runs_root)
    cells = plan(cfg, config_ref, notebook_dir, only, overrides, cross_runs, runs_root)
    check_parameters(cells, notebook_dir)
    ins = Inspector(run, cfg, stages)
    return [(c, *cell_state(run, cfg, c, ins)) for c in cells]


def summarise(results: list[CellResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines = [
        f"grid: {counts['done']} ran, {counts['skipped']} skipped (finished before), {counts['failed']} failed"
    ]
    lines += [f"  FAILED {r.cell.name}: {r.error}" for r in results if r.status == "failed"]
    lines += [f"  TO DO {r.cell.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lib.grid",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--config", default="configs/organism.yaml", help="config name or YAML path")
    ap.add_argument("--run-name", default=None, help="run directory name (default: the config's)")
    ap.add_argument("--workers", type=int, default=1, help="notebooks executed at once")
    ap.add_argument(
        "--dask", default=None, help="'local' for a LocalCluster, or a scheduler address"
    )
    ap.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 01,02")
    ap.add_argument("--force", action="store_true", help="re-execute finished cells")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="list every notebook as done / to do / damaged (and why); run nothing",
    )
    ap.add_argument(
        "--log-output",
        action="store_true",
        help="stream each notebook's cell output, lines prefixed with the notebook's name",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field for every notebook, e.g. --set sae.epochs=5 (YAML value)",
    )
    ap.add_argument(
        "--notebook-dir", default=str(NOTEBOOK_DIR), help="where the numbered notebooks are"
    )
    ap.add_argument("--cross-runs", default="", help="other runs 10 draws, e.g. default")
    ap.add_argument("--costs", default=None, help="write <run>/results/<COSTS>, e.g. costs.csv")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    only = args.only.split(",") if args.only else None
    cross = [r for r in args.cross_runs.split(",") if r]
    t0 = time.time()
    try:
        if args.dry_run:
            return _print_dry_run(args, overrides, only)
        on_result = None
        if args.costs:
            from lib.stage_costs import CostRecorder  # lazy: only --costs reads stage outputs

            on_result = CostRecorder(
                load_config(args.config, overrides, run_name=args.run_name), args.costs
            )
        results = run_grid(
            args.config,
            overrides,
            args.run_name,
            args.workers,
            args.dask,
            only,
            args.force,
            notebook_dir=Path(args.notebook_dir),
            on_result=on_result,
            log_output=args.log_output,
            cross_runs=cross,
        )
    except (ConfigError, RunDirError, RunLockedError, ValueError) as e:
        print(f"python -m lib.grid: {_one_line(str(e))}", file=sys.stderr)
        return 2
    cfg = load_config(args.config, overrides, run_name=args.run_name)
    print(summarise(results))
    print(f"grid: {time.time() - t0:.0f} s; run directory {RunDir.for_config(cfg).root}")
    return 1 if any(r.status == "failed" for r in results) else 0


def _one_line(message: str) -> str:
    """A multi-line error (a config with several bad keys) as one line."""
    head, *rest = [ln.strip() for ln in message.splitlines() if ln.strip()] or [""]
    if rest and head.endswith(":") and head.startswith("invalid config"):
        head = ""  # "invalid config <path>:" adds nothing to the keys that follow
    return "; ".join([h for h in [head] if h] + rest)


def _print_dry_run(args, overrides: dict, only: list[str] | None) -> int:
    cfg = load_config(args.config, overrides, run_name=args.run_name)
    run = RunDir.for_config(cfg)
    nbdir, cross = Path(args.notebook_dir), [r for r in args.cross_runs.split(",") if r]
    states = dry_run(args.config, overrides, args.run_name, only, nbdir, cross_runs=cross)
    print(f"run '{cfg.name}' ({run.root}): {len(states)} notebooks")
    info = busy(run.root)
    if info:
        print(f"  in use by pid {info['pid']} ({info['command']}) since {info['started']}")
    for cell, state, why in states:
        print(f"  {state:<8} {cell.name}" + (f": {why}" if why else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
