"""Leakage: SAE probes whose SAEs never saw the probe's test completions (notebook 05).

In the study, and in notebook 04, each SAE was trained on completions that are also test
completions of the probe's folds. Here, for each CV fold, a fresh SAE of the same architecture
and settings is trained on that fold's training completions only (those of the SAE's
condition), so no SAE saw a completion it is tested on (``sae_source="per_fold"``). Under
``scenario`` folds that means nine SAEs, none of which saw its held-out scenario.

The reference it is compared with (``sae_source="refit_all"``) is an SAE of the same
architecture, settings, training budget and seed (every fold's SAE starts from the reference's
seed, so the two differ only in the data they saw) trained on *all* labelled completions of the
condition, probed on exactly the same folds: the only difference between the two is whether the
SAE saw the test completions. ``leakage = bal_acc(refit_all) - bal_acc(per_fold)``, with the
book's paired test over completions (or scenarios) and seeds (:func:`lib.core.stats.paired_seed_test`).
The training budget of both is the same (:func:`budget_config`: ``probe.fold_steps`` optimiser
steps when the config counts steps, else ``probe.fold_epochs`` epochs); the grid SAEs of
notebook 04 may have trained longer and are never put beside these without saying so.

Both are run for the first ``probe.leakage_seeds`` seeds of each grid cell whose condition is
in ``probe.leakage_conditions`` (every condition when unset).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lib.capture.labelled import Labelled, LayerData, training_vectors
from lib.core.config import RunConfig, SAEConfig
from lib.core.runtime import torch_threads
from lib.core.vocabulary import CONDITION_CLASSES
from lib.probing.probe import CVResult, cross_validate_folds, cv_folds, fold_problem
from lib.sae.codes import SAEFeatures, sae_features
from lib.sae.trainer import train_sae as train_sae_default


def train_quietly(train_sae: Callable | None, x, arch: str, sae_cfg: SAEConfig, seed: int):
    """Train an SAE single-threaded and without a progress bar; returns ``(sae, history)``."""
    train_sae = train_sae or train_sae_default
    with torch_threads(1):
        sae, info = train_sae(x, arch, sae_cfg, seed, progress=False)
    if hasattr(sae, "eval"):
        sae.eval()
    return sae, info


def budget_config(cfg: RunConfig) -> SAEConfig:
    """The SAE settings of the leakage SAEs: the grid's, at the fold budget: ``probe.fold_steps``
    optimiser steps (default ``sae.steps``) when the config counts steps, else
    ``probe.fold_epochs`` epochs (default ``sae.epochs``)."""
    if cfg.sae.steps:
        return cfg.sae.model_copy(update={"steps": int(cfg.probe.fold_steps or cfg.sae.steps)})
    return cfg.sae.model_copy(update={"epochs": int(cfg.probe.fold_epochs or cfg.sae.epochs)})


def budget_label(sae_cfg: SAEConfig) -> str:
    steps = getattr(sae_cfg, "steps", None)
    return f"{steps} steps" if steps else f"{sae_cfg.epochs} epochs"


def _fit_features(
    layer: LayerData,
    lab: Labelled,
    train_pos: np.ndarray,
    arch: str,
    sae_cfg: SAEConfig,
    seed: int,
    pooling: str,
    train_sae: Callable | None,
) -> tuple[np.ndarray | None, SAEFeatures, dict]:
    """Train an SAE on ``train_pos``'s vectors; its pooled features of every labelled completion."""
    x = training_vectors(layer, lab.rows[train_pos], sae_cfg.train_on)
    sae, info = train_quietly(train_sae, x, arch, sae_cfg, seed)
    meta = getattr(sae, "meta", None)
    if isinstance(meta, dict):
        meta.setdefault("train_on", sae_cfg.train_on)
        meta.setdefault("training_mean_norm", (info or {}).get("training_mean_norm"))
    feats = sae_features(sae, layer, lab.rows, sae_cfg.train_on, (pooling,))
    facts = {k: info[k] for k in ("steps", "epochs", "n_train") if k in (info or {})}
    return (feats.features.get(pooling) if feats.ok else None), feats, facts


def refit_all(
    layer: LayerData,
    lab: Labelled,
    arch: str,
    condition: str,
    sae_cfg: SAEConfig,
    seed: int,
    pooling: str,
    train_sae: Callable | None = None,
) -> tuple[np.ndarray | None, SAEFeatures | None, dict, str]:
    """The reference SAE: trained on every labelled completion of the condition.

    Returns ``(features [n, d_sae] or None, feature facts, training facts, note)``."""
    pos = np.flatnonzero(np.isin(lab.y, CONDITION_CLASSES[condition]))
    if len(pos) < 2:
        return None, None, {}, f"condition {condition}: {len(pos)} completion(s) to train an SAE on"
    F, feats, facts = _fit_features(layer, lab, pos, arch, sae_cfg, seed, pooling, train_sae)
    return F, feats, facts, "" if F is not None else feats.note


def leakage_free_cv(
    layer: LayerData,
    lab: Labelled,
    arch: str,
    condition: str,
    sae_cfg: SAEConfig,
    seed: int,
    mode: str,
    pooling: str = "mean",
    train_sae: Callable | None = None,
) -> tuple[CVResult, list[dict]]:
    """Cross-validation in ``mode`` where each fold's SAE is trained on that fold's training
    completions only (filtered by the condition's labels); the probe is fitted on that SAE's
    features of the fold's training completions and scored on its test completions. Returns the
    CV result (``note`` says why when it cannot run) and each fold's SAE training facts."""
    y = lab.y
    problem = fold_problem(y, lab.scenario, mode)
    if problem:
        return CVResult.failed(mode, y, problem), []
    folds = cv_folds(y, lab.scenario, mode)
    in_condition = np.isin(y, CONDITION_CLASSES[condition])
    features, facts = {}, []
    for k in np.unique(folds):
        train_pos = np.flatnonzero((folds != k) & in_condition)
        if len(train_pos) < 2:
            note = (
                f"condition {condition}: fold {k} has {len(train_pos)} training completion(s) to "
                "train an SAE on; leakage-free probe not possible"
            )
            return CVResult.failed(mode, y, note), facts
        F, feats, fact = _fit_features(
            layer, lab, train_pos, arch, sae_cfg, seed, pooling, train_sae
        )
        if F is None:
            return CVResult.failed(mode, y, f"fold {k}: {feats.note}"), facts
        features[int(k)] = F
        facts.append({"fold": int(k), "n_train_completions": int(len(train_pos)), **fact})
    solver = "sklearn" if mode == "stratified" else "exact"
    res = cross_validate_folds(lambda k: features[int(k)], y, folds, mode, solver)
    res.groups = lab.scenario
    return res, facts
