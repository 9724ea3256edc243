"""The SAE stage (notebook 04): one SAE per (layer, architecture, condition) of the grid.

For a grid cell, :func:`train_grid_cell` selects the condition's completions (the primary judge's
decisive ones; ``deceptive_only`` / ``honest_only`` keep one class), holds out a seeded share of
them (:func:`split_condition`), trains an SAE on the training completions' vectors
(``sae.train_on``; :func:`lib.sae.trainer.train_sae`), measures it on the held-out ones
(reconstruction, sparsity, dead latents, the language model's loss with the SAE spliced in:
``ce_delta`` and ``kl`` against the clean model, loss recovered against zero-ablation;
:mod:`lib.sae.metrics`) and exports it in SAELens format with a ``metrics.json`` beside it
(:func:`lib.sae.model.save_sae`). A finished SAE is reused while its :func:`training_fingerprint` is
unchanged. :func:`train_grid` trains a whole grid in one process, sharing the model and the
clean/zero-ablation losses between cells.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed

from lib.capture.labelled import (
    Labelled,
    LayerData,
    labelled_rows,
    read_index,
    read_layer,
    training_vectors,
)
from lib.core.config import ConfigError, RunConfig
from lib.core.fileio import read_jsonl
from lib.core.rundir import RunDir, fingerprint, guard_sae_write
from lib.core.runtime import progress as progress_bar
from lib.core.vocabulary import ARCHITECTURES, CONDITIONS
from lib.models.loading import hook_name, load_model, resolve_device
from lib.sae.metrics import (
    ce_with_replacement,
    loss_recovered,
    reconstruction_metrics,
    sae_lm_metrics,
)
from lib.sae.model import SAE, check_architecture, is_complete, read_metrics, save_sae
from lib.sae.trainer import NotConvergedWarning, train_sae


# ----- which completions an SAE sees -------------------------------------------------------------
def heldout_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded held-out completions, drawn per label (so each condition keeps ``fraction``).

    Returns a bool array over the labelled completions. One draw serves all conditions: a
    completion held out of ``mixed`` is held out of its single-label condition too. Each label
    with at least two completions keeps at least one for training and, when ``fraction > 0``,
    holds out at least one.
    """
    y = np.asarray(y)
    mask = np.zeros(len(y), dtype=bool)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng([int(seed), 4])
    for label in np.unique(y):
        pos = np.flatnonzero(y == label)
        if len(pos) < 2:
            continue
        n_held = min(max(int(round(fraction * len(pos))), 1), len(pos) - 1)
        mask[rng.permutation(pos)[:n_held]] = True
    return mask


def split_condition(
    labelled: Labelled, condition: str, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labelled``) of a condition's training and held-out completions."""
    sel = labelled.select(condition)
    if len(sel) == 0:
        raise ValueError(
            f"condition {condition!r} has no completions under judge {labelled.judge!r}"
        )
    held = heldout_mask(labelled.y, fraction, seed)
    return sel[~held[sel]], sel[held[sel]]


def evaluation_positions(labelled: Labelled, cfg: RunConfig, condition: str) -> np.ndarray:
    """Positions of the completions an SAE of ``condition`` is measured on: its held-out ones,
    or its training ones when nothing is held out (``metrics.json`` says which)."""
    train_pos, held_pos = split_condition(labelled, condition, cfg.sae.heldout_fraction, cfg.seed)
    return held_pos if len(held_pos) else train_pos


def evaluation_vectors(
    run: RunDir, cfg: RunConfig, layer: int, condition: str, labelled: Labelled | None = None
) -> torch.Tensor:
    """The vectors (``sae.train_on``) an SAE of ``(layer, condition)`` is measured on."""
    labelled = labelled if labelled is not None else labelled_rows(run, cfg)
    pos = evaluation_positions(labelled, cfg, condition)
    return training_vectors(read_layer(run, layer), labelled.rows[pos], cfg.sae.train_on)


def check_sae_cell(run: RunDir, cfg: RunConfig, layer: int, arch: str, condition: str) -> None:
    """A clear error for a grid cell that cannot exist (a notebook's parameters typed by hand):
    an unknown architecture or condition names the allowed ones; a layer the run did not capture
    names the captured ones (and the model's depth)."""

    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"arch={arch!r} is not an SAE architecture; allowed: {list(ARCHITECTURES)}"
        )
    if condition not in CONDITIONS:
        raise ConfigError(f"condition={condition!r}; allowed: {list(CONDITIONS)}")
    index = read_index(run)
    captured = [int(x) for x in index.get("layers", [])]
    if layer not in captured:
        depth = index.get("n_layers")
        beyond = depth is not None and not 0 <= layer < int(depth)
        where = f"the model has layers 0..{int(depth) - 1}" if beyond else "it was not captured"
        raise ConfigError(
            f"layer={layer}: {where}; captured layers of run {cfg.name!r}: {captured}"
        )


def training_fingerprint(cfg: RunConfig, labelled: Labelled, run: RunDir) -> str:
    """What an SAE of the grid depends on: SAE settings, seed, labels and the captured activations.

    A finished SAE is reused only while this is unchanged (a changed ``sae.steps`` retrains).
    """
    blob = {
        # how the grid is scheduled (notebooks, processes) does not change an SAE
        "sae": cfg.sae.model_dump(mode="json", exclude={"seeds", "fan_out", "n_jobs"}),
        "seed": cfg.seed,
        "judge": labelled.judge,
        "labelled": [labelled.ids, labelled.y.tolist()],
        "activations": read_index(run).get("completions_sha256"),
    }
    return fingerprint(blob)[:16]


def _is_current(path: Path, fp: str) -> bool:
    return is_complete(path) and read_metrics(path).get("training_fingerprint") == fp


# ----- one grid cell -----------------------------------------------------------------------------
def train_grid_cell(
    run: RunDir,
    cfg: RunConfig,
    layer: int,
    arch: str,
    condition: str,
    progress: bool = True,
    force: bool = False,
    lm=None,
    layer_data: LayerData | None = None,
    labelled: Labelled | None = None,
    ce_cache: dict | None = None,
    ce_batch_size: int = 8,
    seed_index: int = 0,
) -> Path:
    """Train, evaluate and export one SAE of a grid cell to ``<run>/saes/<sae_id>/``.

    ``seed_index`` picks which of the cell's ``sae.seeds`` SAEs (its id gains ``_s{i}`` beyond the
    first; its training seed is :meth:`lib.core.config.RunConfig.sae_seed`).

    Completions: the primary judge's decisive ones selected by ``condition``; a seeded
    ``sae.heldout_fraction`` of them (per label) is held out. The SAE trains on the training
    completions' vectors (``sae.train_on``) and is scored on the held-out ones (or on the training
    set when nothing is held out; ``metrics.json`` says which). A current folder (same
    :func:`training_fingerprint`) is kept unless ``force``. ``lm`` = ``(model, tokenizer)``
    avoids reloading the model; ``layer_data``, ``labelled`` and ``ce_cache`` let
    :func:`train_grid` share work between cells. Returns the SAE folder.
    """
    check_architecture(arch)
    if condition not in CONDITIONS:
        raise ValueError(f"condition={condition!r}; allowed: {list(CONDITIONS)}")
    sae_id = cfg.sae_id(layer, arch, condition, seed_index)
    seed = cfg.sae_seed(seed_index)
    out = run.sae_dir(sae_id)
    labelled = labelled if labelled is not None else labelled_rows(run, cfg)
    fp = training_fingerprint(cfg, labelled, run)
    if not force and is_complete(out):
        if _is_current(out, fp):
            return out
        print(
            f"{sae_id}: SAE settings, labels or activations changed since it was trained; retraining"
        )
    guard_sae_write(run, cfg, sae_id)
    layer_data = layer_data if layer_data is not None else read_layer(run, layer)
    sc = cfg.sae
    train_pos, held_pos = split_condition(labelled, condition, sc.heldout_fraction, cfg.seed)
    if len(train_pos) == 0:
        raise ValueError(
            f"{sae_id}: no training completions left after holding out {sc.heldout_fraction:.0%}"
        )
    eval_pos = evaluation_positions(labelled, cfg, condition)
    x_train = training_vectors(layer_data, labelled.rows[train_pos], sc.train_on)
    x_eval = training_vectors(layer_data, labelled.rows[eval_pos], sc.train_on)
    lm = lm if lm is not None else load_model(cfg)
    hook = hook_name(lm[0], layer)
    meta = {
        "model_name": cfg.model,
        "hook_name": hook,
        "hook_layer": int(layer),
        "training_condition": condition,
        "expansion_factor": sc.expansion_factor,
        "sae_id": sae_id,
        "run": cfg.name,
        "judge": labelled.judge,
        "train_on": sc.train_on,
        "seed": seed,
        "seed_index": seed_index,
    }
    sae, hist = train_sae(
        x_train, arch, sc, seed, progress=progress, meta=meta, device=resolve_device(cfg.device)
    )
    # informational: the weights take raw activations (the training scale is folded in)
    sae.meta["training_mean_norm"] = hist["training_mean_norm"]
    eval_rows = _completion_rows(run, [labelled.ids[p] for p in eval_pos])
    ce_cache = ce_cache if ce_cache is not None else {}
    prompts = ce_cache.setdefault("prompts", {}) if cfg.prompt_cache else None
    ce = _lm_losses(lm, eval_rows, layer, sae, ce_cache, ce_batch_size, prompts)
    sae = sae.cpu()
    metrics = {
        "sae_id": sae_id,
        "layer": int(layer),
        "architecture": arch,
        "saelens_architecture": sae.saelens_architecture,
        "condition": condition,
        "hook_name": hook,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "train_on": sc.train_on,
        "evaluated_on": "heldout" if len(held_pos) else "train",
        "n_completions": len(train_pos) + len(held_pos),
        "n_train_completions": int(len(train_pos)),
        "n_heldout_completions": int(len(held_pos)),
        "n_train_vectors": int(x_train.shape[0]),
        "n_eval_vectors": int(x_eval.shape[0]),
        **_reconstruction(sae, x_train, x_eval),
        **ce,
        **_threshold_facts(sae),
        **_training_facts(hist, seed),
    }
    if "ste_training_space" in hist:
        metrics["ste_training_space"] = hist["ste_training_space"]
    history = {k: hist[k] for k in ("step_loss", "step_l0")}
    metrics["training_fingerprint"] = fp
    save_sae(sae, out, extra_files={"history.json": history, "metrics.json": metrics})
    return out


def _completion_rows(run: RunDir, ids: list[str]) -> list[dict]:
    by_id = {r["id"]: r for r in read_jsonl(run.completions)}
    return [by_id[i] for i in ids]


def _reconstruction(sae: SAE, x_train: torch.Tensor, x_eval: torch.Tensor) -> dict:
    """L0, FVU and MSE on the evaluation vectors; dead latents over training and evaluation."""
    rec = reconstruction_metrics(sae, x_eval)
    rec_train = reconstruction_metrics(sae, x_train)
    fired_all = rec["fired"] | rec_train["fired"]
    return {
        "l0": rec["l0"],
        "l0_fraction": rec["l0"] / sae.d_sae,
        "fvu": rec["fvu"],
        "mse": rec["mse"],
        "train_fvu": rec_train["fvu"],
        "train_l0": rec_train["l0"],
        "dead_fraction": 1.0 - float(fired_all.float().mean()),
        "dead_fraction_eval": 1.0 - float(rec["fired"].float().mean()),
        "dead_definition": "never active on any training or evaluation vector of the condition",
    }


def _lm_losses(
    lm, rows: list[dict], layer: int, sae: SAE, cache: dict, batch_size: int, prompts=None
) -> dict:
    """The model on the evaluation completions with the SAE spliced in, against the clean model.

    ``ce_delta`` (``ce_sae - ce_clean``, nats per token) and ``kl`` (``KL(clean || SAE)``, nats
    per token) say what the reconstruction costs the model; ``ce_loss_recovered`` measures it
    against zero-ablation (``ce_zero``), which is so destructive that the ratio stays near 1.
    The zero-ablation loss depends only on the completions and layer: ``cache`` shares it.
    ``prompts``: prefilled prompt caches (``prompt_cache: true``; :func:`lib.sae.metrics.ce_with_replacement`).
    """
    model, tok = lm
    key = tuple(r["id"] for r in rows)
    if ("zero", layer, key) not in cache:
        cache[("zero", layer, key)] = ce_with_replacement(
            model, tok, rows, layer, "zero", batch_size=batch_size, prompts=prompts
        )
    ce_zero, _ = cache[("zero", layer, key)]
    lm_fit = sae_lm_metrics(model, tok, rows, layer, sae, batch_size=batch_size, prompts=prompts)
    return {
        "ce_clean": lm_fit["ce_clean"],
        "ce_sae": lm_fit["ce_sae"],
        "ce_zero": ce_zero,
        "ce_delta": lm_fit["delta_ce"],
        "kl": lm_fit["kl"],
        "ce_loss_recovered": loss_recovered(lm_fit["ce_clean"], lm_fit["ce_sae"], ce_zero),
        "ce_n_tokens": lm_fit["n_tokens"],
    }


def _threshold_facts(sae: SAE) -> dict:
    if sae.threshold is None:
        return {"threshold_mean": None, "threshold_zero_fraction": None}
    return {
        "threshold_mean": float(sae.threshold.mean()),
        "threshold_zero_fraction": float((sae.threshold == 0).float().mean()),
    }


def _training_facts(hist: dict, seed: int) -> dict:
    keys = ("epoch_loss", "epoch_mse", "epoch_l0", "epoch_fvu", "epoch_dead_fraction", "epoch_step")
    return {
        "train_seconds": hist["seconds"],
        "train_steps": hist["steps"],
        "budget": hist["budget"],
        "epochs": hist["epochs"],
        "batch_size": hist["batch_size"],
        "lr": hist["lr"],
        "matmul_dtype": hist["matmul_dtype"],  # what ran on this host (sae.matmul_dtype: auto)
        "seed": seed,
        "training_scale": hist["scale"],
        "training_mean_norm": hist["training_mean_norm"],
        "final_loss": hist["epoch_loss"][-1],
        "converged": hist["converged"],
        "l0_change_last_10pct": hist["l0_change_last_10pct"],
        "history": {k: hist[k] for k in keys},
    }


# ----- the whole grid ----------------------------------------------------------------------------
def train_grid(
    run: RunDir, cfg: RunConfig, progress: bool = True, force: bool = False
) -> list[Path]:
    """Every SAE of ``cfg.sae_grid()``, every seed (resumable: current SAEs are skipped).

    Each process loads the model and each layer's activations once, and shares the clean and
    zero-ablation cross-entropies between the cells that have the same held-out completions.
    With ``sae.n_jobs`` > 1 the layers are shared out over that many worker processes (an SAE
    depends only on its own seed and data, so the SAEs are the same as a serial run's).
    """
    units = [(*c, i) for c in cfg.sae_grid() for i in range(cfg.sae.seeds)]
    labelled = labelled_rows(run, cfg)
    fp = training_fingerprint(cfg, labelled, run)
    paths = {u: run.sae_dir(cfg.sae_id(*u)) for u in units}
    todo = [u for u in units if force or not _is_current(paths[u], fp)]
    layers = sorted({u[0] for u in todo})
    jobs = min(cfg.sae.n_jobs, len(layers))
    if jobs > 1:
        groups = [[u for u in todo if u[0] in layers[j::jobs]] for j in range(jobs)]
        work = Parallel(n_jobs=jobs, return_as="generator")(
            delayed(_train_units)(run, cfg, g, labelled, force, False) for g in groups
        )
        parts = list(progress_bar(work, total=jobs, desc="SAE grid (processes)", on=progress))
    elif todo:
        parts = [_train_units(run, cfg, todo, labelled, force, progress)]
    else:
        parts = []
    unconverged = [sae_id for part in parts for sae_id in part]
    if unconverged:
        warnings.warn(
            f"{len(unconverged)} of {len(todo)} SAEs had not converged (mean L0 still moved "
            "more than 5% over the last 10% of their steps; `converged` and "
            f"`l0_change_last_10pct` in their metrics.json): {', '.join(unconverged)}",
            NotConvergedWarning,
            stacklevel=2,
        )
    return [paths[u] for u in units]


def _train_units(
    run: RunDir, cfg: RunConfig, units: list, labelled, force: bool, progress: bool
) -> list[str]:
    """Train ``units`` (``(layer, arch, condition, seed index)``) in this process, the model
    loaded once and each layer read once; returns the ids of the SAEs that had not converged
    (their warnings are collected into one by :func:`train_grid`; others pass through)."""
    lm = load_model(cfg)
    cache: dict = {}
    data: dict[int, LayerData] = {}
    unconverged = []
    for layer, arch, cond, i in progress_bar(units, desc="SAE grid", on=progress):
        if layer not in data:
            data.clear()
            data[layer] = read_layer(run, layer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NotConvergedWarning)
            train_grid_cell(
                run,
                cfg,
                layer,
                arch,
                cond,
                progress=False,
                force=force,
                lm=lm,
                layer_data=data[layer],
                labelled=labelled,
                ce_cache=cache,
                seed_index=i,
            )
        for w in caught:
            if issubclass(w.category, NotConvergedWarning):
                unconverged.append(cfg.sae_id(layer, arch, cond, i))
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return unconverged


def grid_metrics(run: RunDir, cfg: RunConfig) -> pd.DataFrame:
    """A table of ``metrics.json`` of every finished SAE of the config's grid, every seed (no
    histories)."""
    rows = []
    for layer, arch, cond in cfg.sae_grid():
        for i in range(cfg.sae.seeds):
            path = run.sae_dir(cfg.sae_id(layer, arch, cond, i))
            if is_complete(path):
                m = read_metrics(path)
                rows.append({**{k: v for k, v in m.items() if k != "history"}, "seed_index": i})
    return pd.DataFrame(rows)
