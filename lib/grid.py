"""Run the numbered notebooks over a config's grid with papermill.

Phases run in order; the cells of one phase run in parallel::

    01_sampling -> 02_classification -> 03_activation_capture
      -> 04_sae_training x every (layer, architecture, condition) of the SAE grid
      -> 05_layer_profile_probing, 06_ste_comparison -> 07_summary

Executed notebooks go to ``<run>/notebooks/<stem>[__<params>].ipynb``; they are the log of the
run. A cell that finished is skipped on the next call (a marker in ``<run>/notebooks/.done/``
records its parameters); a failed cell is reported with its output notebook and failing cell
while the others go on, and the command exits non-zero at the end. Each cell gets its own kernel,
talking over IPC sockets rather than TCP ports, which avoids the port clash of kernels started
in parallel. The same cells can be submitted to a Dask cluster (``--dask local`` starts a
``LocalCluster`` on loopback; ``--dask tcp://host:8786`` uses an existing scheduler).

    python -m lib.grid --config configs/organism.yaml --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lib.config import REPO_ROOT, RunConfig, load_config
from lib.rundir import RunDir, fingerprint, init_run, write_json

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


def plan(
    cfg: RunConfig,
    config_ref: str,
    notebook_dir: Path = NOTEBOOK_DIR,
    only: list[str] | None = None,
    overrides: dict | None = None,
) -> list[GridCell]:
    """The grid of a config: every notebook execution with its parameters, by phase."""
    common = {"config": config_ref, "run_name": cfg.name, "overrides": dict(overrides or {})}
    cells: list[GridCell] = []

    def add(phase: int, stem: str, extra: dict | None = None, suffix: str = "") -> None:
        if not (notebook_dir / f"{stem}.ipynb").exists():
            return
        if only and stem[:2] not in only and stem not in only:
            return
        cells.append(
            GridCell(
                phase, stem, {**common, **(extra or {})}, stem + (f"__{suffix}" if suffix else "")
            )
        )

    add(1, "01_sampling")
    add(2, "02_classification")
    add(3, "03_activation_capture")
    for layer, arch, cond in cfg.sae_grid():
        add(
            4,
            "04_sae_training",
            {"layer": layer, "arch": arch, "condition": cond},
            f"L{layer}_{arch}_{cond}",
        )
    add(5, "05_layer_profile_probing")
    add(5, "06_ste_comparison")
    add(6, "07_summary")
    return cells


def check_parameters(cells: list[GridCell], notebook_dir: Path = NOTEBOOK_DIR) -> None:
    """Fail before running anything when a cell passes a name its notebook does not declare."""
    import papermill as pm

    declared: dict[str, set[str]] = {}
    problems = []
    for c in cells:
        if c.notebook not in declared:
            declared[c.notebook] = set(
                pm.inspect_notebook(str(notebook_dir / f"{c.notebook}.ipynb"))
            )
        unknown = sorted(set(c.params) - declared[c.notebook])
        if unknown:
            problems.append(
                f"{c.notebook}: unknown parameter(s) {unknown}; declared: {sorted(declared[c.notebook])}"
            )
    if problems:
        raise ValueError(
            "grid parameters do not match the notebooks' parameters cells:\n  "
            + "\n  ".join(problems)
        )


def _fingerprint(cfg: RunConfig, cell: GridCell) -> str:
    return fingerprint({"config": cfg.model_dump(mode="json"), "params": cell.params})[:16]


def is_done(run: RunDir, cfg: RunConfig, cell: GridCell) -> bool:
    m = cell.marker(run)
    if not (m.exists() and cell.output(run).exists()):
        return False
    try:
        return json.loads(m.read_text()).get("fingerprint") == _fingerprint(cfg, cell)
    except json.JSONDecodeError:
        return False


def execute_cell(
    notebook: str, params: dict, output: str, notebook_dir: str, kernel: str = "python3"
) -> dict:
    """Execute one notebook with papermill in its own kernel (IPC transport). Picklable for Dask.

    Returns ``{"ok": bool, "seconds": float, "error": str}``; never raises for a notebook error.
    """
    import papermill as pm
    from jupyter_client.manager import AsyncKernelManager
    from papermill.exceptions import PapermillExecutionError

    sockets = tempfile.mkdtemp(prefix="kernel-")

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            super().__init__(**kw)
            self.ip = str(Path(sockets) / "ipc")

    t0 = time.time()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(Path(notebook_dir) / f"{notebook}.ipynb"),
            output,
            parameters=params,
            kernel_name=kernel,
            progress_bar=False,
            cwd=str(Path(notebook_dir)),
            kernel_manager_class=IPCKernelManager,
        )
    except PapermillExecutionError as e:
        return {
            "ok": False,
            "seconds": time.time() - t0,
            "error": f"cell {e.cell_index}: {e.ename}: {e.evalue}",
        }
    except Exception as e:  # kernel died, notebook unreadable, ...
        return {"ok": False, "seconds": time.time() - t0, "error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    return {"ok": True, "seconds": time.time() - t0, "error": ""}


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
) -> list[CellResult]:
    """Run (or resume) the grid of a config; returns one result per cell.

    ``config_ref``, ``overrides`` and ``run_name`` are passed to every notebook as they are, so
    the notebooks resolve exactly the config the grid was planned from.
    """
    from tqdm.auto import tqdm

    cfg = load_config(config_ref, overrides, run_name=run_name)
    run = init_run(cfg, runs_root)
    cells = plan(cfg, config_ref, notebook_dir, only, overrides)
    check_parameters(cells, notebook_dir)
    results: list[CellResult] = []
    submit, shutdown = _executor(workers, dask)
    bar = tqdm(total=len(cells), desc=f"grid {cfg.name}", unit="notebook", disable=not progress)
    failed_phase = None
    try:
        for phase in sorted({c.phase for c in cells}):
            todo = []
            for c in (c for c in cells if c.phase == phase):
                if failed_phase is not None and failed_phase < 4:
                    results.append(
                        CellResult(c, "failed", error=f"not run: phase {failed_phase} failed")
                    )
                elif not force and is_done(run, cfg, c):
                    results.append(CellResult(c, "skipped"))
                else:
                    todo.append(c)
                    continue
                bar.update(1)
            futures = {
                submit(execute_cell, c.notebook, c.params, str(c.output(run)), str(notebook_dir)): c
                for c in todo
            }
            for fut in _as_completed(futures, dask):
                c = futures[fut]
                out = fut.result()
                if out["ok"]:
                    write_json(
                        c.marker(run),
                        {
                            "fingerprint": _fingerprint(cfg, c),
                            "params": c.params,
                            "seconds": round(out["seconds"], 1),
                        },
                    )
                    res = CellResult(c, "done", out["seconds"])
                else:
                    res = CellResult(
                        c, "failed", out["seconds"], f"{c.output(run)}: {out['error']}"
                    )
                    failed_phase = phase if failed_phase is None else min(failed_phase, phase)
                results.append(res)
                if on_result:
                    on_result(res)
                bar.set_postfix_str(f"{c.name} {res.status}")
                bar.update(1)
    finally:
        bar.close()
        shutdown()
    return results


def _executor(workers: int, dask: str | None):
    if dask:
        from dask.distributed import Client, LocalCluster

        if dask == "local":
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            client = Client(cluster)
        else:
            cluster, client = None, Client(dask)

        def shutdown():
            client.close()
            if cluster is not None:
                cluster.close()

        return (lambda fn, *a: client.submit(fn, *a, pure=False)), shutdown
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    return pool.submit, lambda: pool.shutdown(wait=True)


def _as_completed(futures: dict, dask: str | None):
    if dask:
        from dask.distributed import as_completed as dask_as_completed

        return dask_as_completed(list(futures))
    return as_completed(futures)


def summarise(results: list[CellResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines = [
        f"grid: {counts['done']} ran, {counts['skipped']} skipped (finished before), {counts['failed']} failed"
    ]
    lines += [f"  FAILED {r.cell.name}: {r.error}" for r in results if r.status == "failed"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.grid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/organism.yaml", help="config name or YAML path")
    ap.add_argument("--run-name", default=None, help="run directory name (default: the config's)")
    ap.add_argument("--workers", type=int, default=1, help="notebooks executed at once")
    ap.add_argument(
        "--dask", default=None, help="'local' for a LocalCluster, or a scheduler address"
    )
    ap.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 01,02")
    ap.add_argument("--force", action="store_true", help="re-execute finished cells")
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
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    t0 = time.time()
    only = args.only.split(",") if args.only else None
    results = run_grid(
        args.config,
        overrides,
        args.run_name,
        args.workers,
        args.dask,
        only,
        args.force,
        notebook_dir=Path(args.notebook_dir),
    )
    cfg = load_config(args.config, overrides, run_name=args.run_name)
    print(summarise(results))
    print(f"grid: {time.time() - t0:.0f} s; run directory {RunDir.for_config(cfg).root}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
