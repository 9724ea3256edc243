"""What a run costs, stage by stage, read from what each stage wrote.

:class:`CostRecorder` is the grid's ``on_result`` under ``python -m lib.pipeline.grid --costs NAME``: for
every executed notebook it writes one row of :data:`lib.pipeline.process_costs.COLUMNS` to ``<run>/results/NAME``
with the wall time, the kernel's peak memory (:mod:`lib.pipeline.jupyter_kernels` measures it), the growth of the
run directory while it ran (exact with ``--workers 1``; with parallel cells a cell is charged
what the run grew since the previous cell finished) and its throughput, read from what the
stage wrote (:func:`stage_units`). :func:`rehearsal_facts` gives what :mod:`lib.pipeline.cost_model` needs
besides the table to project a full run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from lib.core.config import RunConfig
from lib.core.fileio import read_json, read_jsonl
from lib.core.rundir import RunDir, read_label_rows
from lib.core.scenarios import scenarios_for
from lib.pipeline.process_costs import cost_row, dir_bytes, upsert_rows
from lib.pipeline.stages import STAGES

#: the unit each stage's throughput counts (declared by its stage)
UNITS = {name: stage.unit for name, stage in STAGES.items()}


def _sae_ids(cfg: RunConfig, params: dict) -> list[str]:
    cells = (
        cfg.sae_grid()
        if params.get("all_cells") or "layer" not in params
        else [(params["layer"], params["arch"], params["condition"])]
    )
    return [cfg.sae_id(*c, i) for c in cells for i in range(cfg.sae.seeds)]


def _prompt_tokens(rows: list[dict], cfg: RunConfig, batch_size: int) -> int:
    """Prompt tokens a pass over ``rows`` runs through the model: every row's prompt, or with
    ``prompt_cache`` one prompt per run of rows of one scenario in a batch."""
    if not cfg.prompt_cache:
        return sum(r["n_prompt_tokens"] for r in rows)
    total = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        total += sum(
            r["n_prompt_tokens"]
            for j, r in enumerate(chunk)
            if j == 0 or chunk[j - 1]["scenario"] != r["scenario"]
        )
    return total


def stage_units(run: RunDir, cfg: RunConfig, notebook: str, params: dict) -> tuple[float, str]:
    """``(units, note)`` of an executed notebook, read from its outputs (:data:`UNITS` names the
    unit); the note gives what the cost model needs besides (tokens through the model, ...)."""
    if notebook == "01_sampling":
        rows = read_jsonl(run.completions)
        prompt = _prompt_tokens(rows, cfg, cfg.sampling.batch_size)
        return sum(
            r["n_completion_tokens"] for r in rows
        ), f"{len(rows)} completions; {prompt} prompt tokens prefilled"
    if notebook == "02_classification":
        return len(read_jsonl(run.completions)) * len(cfg.judge.judges), ""
    if notebook == "03_activation_capture":
        index, rows = read_json(run.activation_index), read_jsonl(run.completions)
        prompt = _prompt_tokens(rows, cfg, cfg.capture.batch_size)
        note = f"{len(index['layers'])} layers x d={index['d_model']}; {prompt} prompt tokens prefilled"
        return index["n_tokens"], note
    if notebook == "04_sae_training":
        ms = [read_json(run.sae_dir(i) / "metrics.json") for i in _sae_ids(cfg, params)]
        steps = sum(m["train_steps"] for m in ms)
        opt = sum(m["train_seconds"] for m in ms)
        ce = sum(m.get("ce_n_tokens") or 0 for m in ms)
        d_sae = ms[0]["d_sae"] if ms else 0
        return steps, f"{len(ms)} SAEs of d_sae {d_sae}; {opt:.1f} s in training; {ce} CE tokens"
    if notebook == "05_layer_profile_probing":
        prof = pd.read_csv(run.result("layer_profile.csv"))
        sae = pd.read_csv(run.result("sae_probes.csv"))
        raw = prof[(prof["metric"] == "bal_acc") & (prof.get("subset", "all") == "all")]
        n_raw = len(raw.drop_duplicates(["layer", "feature", "cv"]))
        return n_raw + len(sae), f"{n_raw} raw/text probes, {len(sae)} SAE probe rows"
    if notebook == "06_ste_comparison":
        return len(pd.read_csv(run.result("ste_comparison.csv"))), ""
    if notebook == "07_summary":
        return len(pd.read_csv(run.result("summary.csv"))), ""
    if notebook == "08_features":
        ids = cfg.analysed_saes() if params.get("all_saes") else _sae_ids(cfg, params)
        return len(ids), ""
    if notebook == "09_steering":
        df = pd.read_csv(run.result("steering.csv"))
        df = df[df["judge"] == cfg.judge.primary]
        conds = len(df[df["alpha"] != 0].drop_duplicates(["layer", "direction", "alpha"]))
        conds += df["layer"].nunique()  # one baseline per layer
        sc = cfg.steering
        n = len(sc.scenarios) if sc.scenarios != "all" else len(scenarios_for(cfg))
        mnt = sc.max_new_tokens or cfg.sampling.max_new_tokens
        done = conds * n * sc.samples_per_scenario
        return (
            done,
            f"{conds} conditions x {n} scenarios x {sc.samples_per_scenario} samples x <= {mnt} tokens",
        )
    if notebook == "10_cross_model":
        return len(params.get("runs", [])), ", ".join(params.get("runs", []))
    if notebook == "11_wording_controls":
        return len(pd.read_csv(run.result("wording_controls.csv"))), "layers and embeddings"
    raise KeyError(notebook)


class CostRecorder:
    """The grid's ``on_result``: one costs row per executed notebook (see the module doc)."""

    def __init__(self, cfg: RunConfig, name: str, runs_root: Path | str | None = None):
        self.cfg, self.run = cfg, RunDir.for_config(cfg, runs_root)
        self.path = self.run.result(name)
        self.size = dir_bytes(self.run.root)

    def __call__(self, res) -> None:
        size = dir_bytes(self.run.root)
        grew, self.size = size - self.size, size
        c = res.cell
        try:
            units, note = stage_units(self.run, self.cfg, c.notebook, c.params)
        except Exception as e:  # noqa: BLE001 - a failed stage has no outputs to count
            units, note = None, f"units unknown ({type(e).__name__})"
        row = cost_row(
            c.name,
            res.status,
            res.seconds,
            res.usage,
            grew,
            unit=UNITS.get(c.notebook, ""),
            units=units,
            note=note,
        )
        upsert_rows(self.path, [row])
        print(
            f"costs: {c.name}: {row['wall_s']} s, peak {row['peak_rss_gb']} GB, "
            f"{row['disk_written_mb']} MB written, {units} {row['unit']} "
            f"({row['units_per_s']}/s), load {row['load_avg']}",
            file=sys.stdout,
            flush=True,
        )


def rehearsal_facts(run: RunDir, cfg: RunConfig) -> dict:
    """What the projection reads from a finished rehearsal besides its costs CSV: completions,
    decisive completions, mean prompt tokens, bytes per SAE folder and per analysed SAE."""
    rows = read_jsonl(run.completions)
    labels = read_label_rows(run)
    decisive = sum(
        labels.get((r["id"], cfg.judge.primary), {}).get("label") in ("deceptive", "honest")
        for r in rows
    )
    saes = [p for p in run.saes.iterdir() if p.is_dir()] if run.saes.exists() else []
    feats = run.features
    n_feat = len([p for p in feats.iterdir() if p.is_dir()]) if feats.exists() else 0
    return {
        "n": len(rows),
        "n_decisive": decisive,
        "prompt_tokens": sum(r["n_prompt_tokens"] for r in rows) / max(len(rows), 1),
        "sae_bytes": dir_bytes(run.saes) / max(len(saes), 1),
        "feature_bytes": dir_bytes(feats) / max(n_feat, 1),
    }
