"""Leakage: SAE probes whose SAEs never saw the probe's test completions.

In the study, and in notebook 04, each SAE was trained on completions that are also test
completions of the probe's folds. :func:`leakage_free_cv` trains, for each stratified fold, a
fresh SAE of the same architecture and config on that fold's training completions only (those of
the SAE's condition; token vectors when ``sae.train_on == "tokens"``), so no SAE has seen a
completion it is tested on. :func:`leakage_comparison` sets those probes beside probes of SAEs
that saw every completion (``refit_all`` at the same epochs when present, else the grid SAE):
``leakage = bal_acc(reference) - bal_acc(per_fold)``. The stage that runs them is
:func:`lib.sae_probes.sae_probes`; the file is ``results/sae_leakage.csv``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from lib.config import CONDITION_CLASSES, SAEConfig
from lib.dataset import Labelled, LayerData, training_vectors
from lib.probe import CVResult, cross_validate_folds, cv_folds, fold_problem
from lib.rundir import RunDir
from lib.runtime import torch_threads
from lib.sae import encode_rows
from lib.sae_trainer import train_sae as train_sae_default


def train_quietly(train_sae: Callable | None, x, arch: str, sae_cfg: SAEConfig, seed: int):
    """Train an SAE single-threaded and without a progress bar; returns ``(sae, history)``."""
    train_sae = train_sae or train_sae_default
    with torch_threads(1):
        sae, info = train_sae(x, arch, sae_cfg, seed, progress=False)
    if hasattr(sae, "eval"):
        sae.eval()
    return sae, info


def training_facts(info) -> dict:
    """The few numbers of an SAE training history worth keeping beside a probe result."""
    keep = ("seconds", "steps", "epochs", "n_train")
    return {k: v for k, v in (info or {}).items() if k in keep and isinstance(v, (int, float))}


def leakage_free_cv(
    layer_data: LayerData,
    lab: Labelled,
    X_pooled: np.ndarray,
    arch: str,
    condition: str,
    sae_cfg: SAEConfig,
    seed: int,
    train_sae: Callable | None = None,
) -> tuple[CVResult, list[dict]]:
    """Stratified CV where each fold's SAE is trained on that fold's training completions only.

    The fold's training completions are filtered by the condition's labels; their token vectors
    (or pooled vectors when ``sae_cfg.train_on`` is ``last``/``mean``) train a fresh SAE with
    ``train_sae(x, arch, sae_cfg, seed)``; the probe is fitted on that SAE's features of the
    fold's training completions and scored on its test completions, so no SAE has seen a
    completion it is tested on. Returns the CV result and each fold's SAE training facts.
    """
    y = lab.y
    problem = fold_problem(y, None, "stratified")
    if problem:
        return CVResult.failed("stratified", y, problem), []
    folds = cv_folds(y, None, "stratified")
    in_condition = np.isin(y, CONDITION_CLASSES[condition])
    features, facts = {}, []
    for k in np.unique(folds):
        train_pos = np.flatnonzero((folds != k) & in_condition)
        if len(train_pos) < 2:
            note = (
                f"condition {condition}: fold {k} has {len(train_pos)} training completion(s) to "
                "train an SAE on; leakage-free probe not possible"
            )
            return CVResult.failed("stratified", y, note), facts
        x = training_vectors(layer_data, lab.rows[train_pos], sae_cfg.train_on)
        sae, info = train_quietly(train_sae, x, arch, sae_cfg, seed + int(k))
        features[int(k)] = encode_rows(sae, X_pooled)
        facts.append(
            {"fold": int(k), "n_train_completions": int(len(train_pos)), **training_facts(info)}
        )
    return cross_validate_folds(lambda k: features[int(k)], y, folds, "stratified"), facts


def read_sae_leakage(run: RunDir) -> pd.DataFrame | None:
    """``results/sae_leakage.csv`` (:func:`leakage_comparison`); None when not computed."""
    path = run.result("sae_leakage.csv")
    return pd.read_csv(path) if path.exists() else None


def leakage_comparison(sae: pd.DataFrame) -> pd.DataFrame:
    """Per SAE, stratified balanced accuracy with SAEs that saw the test completions vs without.

    ``reference`` is the ``refit_all`` SAE when present (same epochs as the fold SAEs: the gap is
    leakage alone, plus fold-to-fold SAE variation) and the grid SAE otherwise.
    ``leakage = bal_acc(reference) - bal_acc(per_fold)``; ``grid_minus_per_fold`` compares with
    the grid SAE in every case.
    """
    columns = [
        "sae_id",
        "layer",
        "arch",
        "condition",
        "reference",
        "reference_epochs",
        "per_fold_epochs",
        "raw_bal_acc",
        "bal_acc_grid",
        "bal_acc_reference",
        "bal_acc_reference_ci_low",
        "bal_acc_reference_ci_high",
        "bal_acc_per_fold",
        "bal_acc_per_fold_ci_low",
        "bal_acc_per_fold_ci_high",
        "delta_reference",
        "delta_per_fold",
        "leakage",
        "grid_minus_per_fold",
    ]
    s = sae[sae.cv == "stratified"]
    by = {src: d.set_index("sae_id") for src, d in s.groupby("sae_source")}
    if "per_fold" not in by or "grid" not in by:
        return pd.DataFrame(columns=columns)
    free, grid = by["per_fold"], by["grid"]
    ref = by.get("refit_all", grid)
    ref_name = "refit_all" if "refit_all" in by else "grid"
    ids = free.index.intersection(grid.index).intersection(ref.index)
    out = pd.DataFrame(
        {
            "layer": free.loc[ids, "layer"],
            "arch": free.loc[ids, "arch"],
            "condition": free.loc[ids, "condition"],
            "reference": ref_name,
            "reference_epochs": ref.loc[ids, "epochs"],
            "per_fold_epochs": free.loc[ids, "epochs"],
            "raw_bal_acc": free.loc[ids, "raw_bal_acc"],
            "bal_acc_grid": grid.loc[ids, "bal_acc"],
            "bal_acc_reference": ref.loc[ids, "bal_acc"],
            "bal_acc_reference_ci_low": ref.loc[ids, "bal_acc_ci_low"],
            "bal_acc_reference_ci_high": ref.loc[ids, "bal_acc_ci_high"],
            "bal_acc_per_fold": free.loc[ids, "bal_acc"],
            "bal_acc_per_fold_ci_low": free.loc[ids, "bal_acc_ci_low"],
            "bal_acc_per_fold_ci_high": free.loc[ids, "bal_acc_ci_high"],
            "delta_reference": ref.loc[ids, "delta"],
            "delta_per_fold": free.loc[ids, "delta"],
        }
    )
    out["leakage"] = out["bal_acc_reference"] - out["bal_acc_per_fold"]
    out["grid_minus_per_fold"] = out["bal_acc_grid"] - out["bal_acc_per_fold"]
    return out.rename_axis("sae_id").reset_index().reindex(columns=columns)
