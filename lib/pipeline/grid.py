"""Run the numbered notebooks over a config's grid with papermill.

A notebook starts as soon as every notebook it reads from (:data:`NEEDS`) has finished, with at
most ``--workers`` running at once::

    01_sampling -> 02_classification -> 03_activation_capture
      -> 04_sae_training x every (layer, architecture, condition) of the SAE grid
         (or once for the whole grid: sae.fan_out false)
      -> 05_layer_profile_probing -> 06_ste_comparison -> 07_summary (after 05 and 06)
                                  -> 10_cross_model (this run, and the
                                    ``--cross-runs`` that have a layer profile)
      -> 08_features x every analysed SAE (or once: features.fan_out false) -> 09_steering

The grid is the run's one writer: it holds the run directory's lock (:mod:`lib.core.runlock`) from
start to end and lends it to the kernels it starts, so a second grid, or a notebook run by hand
on the same run, fails at once with the holder's pid and command. It alone writes the run's
``config.yaml``, after every check passed.

A cell is skipped only when its notebook ran under the grid with the same settings (a marker in
``<run>/notebooks/.done/``) *and* its outputs are valid (:mod:`lib.pipeline.stages`); else it runs again and
the notebook resumes. A rerun that changed a cell's outputs invalidates every notebook that reads
them, directly or not. A failed 01-03 stops what depends on it; any other failed cell is reported
with its output notebook and failing cell while the others go on, and the command exits non-zero
at the end. Each cell gets its own kernel (:mod:`lib.pipeline.jupyter_kernels`); the same cells can be submitted
to Dask (``--dask local`` or ``--dask tcp://host:8786``).
``--costs rehearsal.csv`` writes every executed notebook's wall time, peak memory, disk written
and throughput to ``<run>/results/rehearsal.csv`` (:mod:`lib.pipeline.stage_costs`).

    python -m lib.pipeline.grid --config configs/organism.yaml --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lib.core.config import ConfigError, RunConfig, ignored_overrides, load_config
from lib.core.fileio import RunDirError, append_jsonl, write_json
from lib.core.rundir import RunDir, host_facts, init_run
from lib.core.runlock import RunLockedError, acquire, busy, held, release
from lib.core.runtime import batch_mode
from lib.pipeline.grid_plan import (
    BLOCKING,
    NEEDS,
    NOTEBOOK_DIR,
    GridCell,
    cell_fingerprint,
    cell_state,
    check_model_layers,
    check_parameters,
    plan,
)
from lib.pipeline.jupyter_kernels import completed, execute_cell, executor
from lib.pipeline.stages import Inspector, Stage


@dataclass
class CellResult:
    cell: GridCell
    status: str  # "done" | "skipped" | "failed"
    seconds: float = 0.0
    error: str = ""
    note: str = ""  # e.g. work left for the next run (failed verdicts within the limit)
    usage: dict = field(
        default_factory=dict
    )  # the kernel's memory and the load (lib.pipeline.process_costs)


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
    ``stages`` replaces :data:`lib.pipeline.stages.STAGES` (tests). Raises
    :class:`lib.core.runlock.RunLockedError` when another process writes the run.
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
        quiet = not progress or batch_mode()  # logs (stderr no terminal): the per-notebook lines
        bar = tqdm(total=len(cells), desc=f"grid {cfg.name}", unit="notebook", disable=quiet)
        try:
            return session.run_cells(submit, dask, bar)
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

    def needs(self, c: GridCell) -> list[GridCell]:
        """The cells of this invocation that ``c`` waits for."""
        return [d for d in self.cells if d.notebook in NEEDS.get(c.notebook, ())]

    def run_cells(self, submit, dask: str | None, bar) -> list[CellResult]:
        """Submit each cell once the cells it needs have finished; returns results as they come."""
        run, cfg, ins = self.run, self.cfg, self.ins
        results: list[CellResult] = []
        pending, running = list(self.cells), {}
        resolved: set[str] = set()
        blocked: dict[str, str] = {}  # cell -> the failed 01-03 cell it cannot run without
        before: dict[str, str] = {}

        def settle(res: CellResult) -> None:
            results.append(res)
            resolved.add(res.cell.name)
            bar.set_postfix_str(f"{res.cell.name} {res.status}")
            bar.update(1)

        while pending or running:
            for c in [c for c in pending if all(d.name in resolved for d in self.needs(c))]:
                pending.remove(c)
                cause = next((blocked[d.name] for d in self.needs(c) if d.name in blocked), None)
                if cause:
                    blocked[c.name] = cause
                    settle(CellResult(c, "failed", error=f"not run: {cause} failed"))
                elif not self.force and cell_state(run, cfg, c, ins)[0] == "done":
                    settle(CellResult(c, "skipped"))
                else:
                    before[c.name] = ins.digest(c.notebook, c.params)
                    running[self._submit(submit, c)] = c
            if not running:
                if pending and not any(
                    all(d.name in resolved for d in self.needs(c)) for c in pending
                ):
                    raise RuntimeError(f"grid: circular NEEDS among {[c.name for c in pending]}")
                continue
            fut = next(iter(completed(running, dask)))
            c = running.pop(fut)
            res = _finish(run, cfg, c, fut.result(), ins)
            if res.status == "failed" and c.notebook in BLOCKING:
                blocked[c.name] = c.name
            elif res.status == "done" and ins.digest(c.notebook, c.params) != before[c.name]:
                self._invalidate_dependents(c)
            if self.progress:
                _print_line(_describe(res))
            if self.on_result:
                self.on_result(res)
            settle(res)
        return results

    def _submit(self, submit, c: GridCell):
        out, nbdir = str(c.output(self.run)), str(self.notebook_dir)
        return submit(
            execute_cell, c.notebook, c.params, out, nbdir, "python3", self.env, self.log_output
        )

    def _invalidate_dependents(self, changed: GridCell) -> None:
        """``changed``'s outputs changed: every notebook that reads them, directly or not, must run
        again (markers removed)."""
        stale, grew = {changed.notebook}, True
        while grew:
            more = {n for n, needs in NEEDS.items() if stale & set(needs)} - stale
            stale |= more
            grew = bool(more)
        for c in self.every_cell:
            if c.notebook in stale - {changed.notebook}:
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
            "fingerprint": cell_fingerprint(cfg, c),
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
    check_model_layers(cfg)  # what the real run checks before it starts, the dry run checks too
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


class _DefaultsShown(argparse.HelpFormatter):
    """Help lines end with the default only where there is one worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], "", argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lib.pipeline.grid",
        description=__doc__.split("\n\n")[0],
        formatter_class=_DefaultsShown,
    )
    ap.add_argument("--config", default="configs/organism.yaml", help="config name or YAML path")
    ap.add_argument(
        "--run-name", default=None, help="run directory name (default: the config's name)"
    )
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
        help="override a config field for every notebook, e.g. --set sae.steps=200 (a YAML value; "
        "repeatable). sae.epochs counts only where sae.steps is unset (null): with sae.steps set, "
        "--set sae.epochs=5 does nothing (a note on stderr says so)",
    )
    ap.add_argument(
        "--notebook-dir",
        default=str(NOTEBOOK_DIR),
        help="where the numbered notebooks are (default: notebooks/)",
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
        planned = load_config(args.config, overrides, run_name=args.run_name)
        for note in ignored_overrides(planned, overrides):
            print(f"python -m lib.pipeline.grid: note: {note}", file=sys.stderr)
        if args.dry_run:
            return _print_dry_run(args, overrides, only)
        on_result = None
        if args.costs:
            from lib.pipeline.stage_costs import (
                CostRecorder,  # lazy: only --costs reads stage outputs
            )

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
        print(f"python -m lib.pipeline.grid: {_one_line(str(e))}", file=sys.stderr)
        return 2
    cfg = load_config(args.config, overrides, run_name=args.run_name)
    print(summarise(results))
    seconds = time.time() - t0
    run = RunDir.for_config(cfg)
    record_invocation(run, results, seconds, args.workers, only)
    print(f"grid: {seconds:.0f} s; run directory {run.root}")
    return 1 if any(r.status == "failed" for r in results) else 0


def record_invocation(
    run: RunDir, results: list[CellResult], seconds: float, workers: int, only=None
) -> None:
    """One line per grid invocation in ``<run>/results/grid_runs.jsonl``: when, how long, what
    ran (``only``: the notebooks it was limited to), on which host. A line of the whole grid with
    nothing skipped or failed is a whole book's time (what the README's time of ``make book`` is
    generated from)."""
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    row = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(seconds, 1),
        "workers": workers,
        "only": only,
        **counts,
        "host": host_facts(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    append_jsonl(run.result("grid_runs.jsonl"), [row])


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
    counts = {s: sum(1 for _, st, _ in states if st == s) for s in ("done", "to do", "damaged")}
    print("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if counts["to do"] or counts["damaged"]:
        cmd = ["python -m lib.pipeline.grid", f"--config {args.config}"]
        cmd += [f"--run-name {args.run_name}"] if args.run_name else []
        cmd += [f"--only {args.only}"] if args.only else []
        cmd += [f"--set {s}" for s in args.set]
        print("next: " + " ".join(cmd) + " --workers 2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
