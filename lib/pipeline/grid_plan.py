"""The grid of a config: which notebook executions it holds, what each reads, whether a run has them.

:func:`plan` turns a config into :class:`GridCell` s (one per notebook execution, with its
papermill parameters and output name); :data:`NEEDS` says which notebooks each one reads outputs
of, which is all the scheduler in :mod:`lib.pipeline.grid` needs to order them; :func:`cell_state` says
whether a run already holds a cell (its marker under ``<run>/notebooks/.done/`` matches the
settings and its outputs are valid, :mod:`lib.pipeline.stages`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lib.core.config import REPO_ROOT, RunConfig
from lib.core.rundir import RunDir, fingerprint
from lib.core.scenarios import has_controls
from lib.models.registry import converted_config, is_gguf_spec
from lib.pipeline.jupyter_kernels import check_parameters as _check_parameters
from lib.pipeline.stages import STAGES, Inspector

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: the notebooks each notebook reads outputs of (directly; the rest follows transitively), as
#: each stage of :data:`lib.pipeline.stages.STAGES` declares them
NEEDS: dict[str, tuple[str, ...]] = {name: stage.needs for name, stage in STAGES.items()}
#: stages whose failure leaves nothing for the notebooks after them to read
BLOCKING = ("01_sampling", "02_classification", "03_activation_capture")


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
    analysed = set(cfg.analysed_saes())
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
    if has_controls(cfg):  # a version 2 scenario file: role-swapped and control prompts
        add(5, "11_wording_controls")
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
    if is_gguf_spec(cfg.model):  # converted once on first use; checked here when it has been
        mc = converted_config(cfg.model)
        if mc is None:
            return
    else:
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


def cell_fingerprint(cfg: RunConfig, cell: GridCell) -> str:
    """The settings a finished cell ran with. Fields at their default values are left out, so a
    field added to the config later (at a default that reproduces the old behaviour) does not
    make every finished notebook of every run look stale."""
    dump = cfg.model_dump(mode="json", exclude_defaults=True)
    return fingerprint({"config": dump, "params": cell.params})[:16]


def _ran(run: RunDir, cfg: RunConfig, cell: GridCell) -> str:
    """``"yes"`` when the notebook ran under the grid with these settings; else why not."""
    m = cell.marker(run)
    if not m.exists():
        return "not run yet"
    if not cell.output(run).exists():
        return "its executed notebook is missing"
    try:
        same = json.loads(m.read_text()).get("fingerprint") == cell_fingerprint(cfg, cell)
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
