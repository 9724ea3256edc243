"""STE JumpReLU against TopK at matched sparsity: a TopK k sweep (notebook 06).

On both real models the STE SAEs fire far more latents per token than TopK's fixed k (SmolLM2:
283 against 32), so "STE beats TopK" may be "more active latents read more". At one layer and
condition, TopK SAEs are trained at several k (the grid's k and doublings up to twice the STE
SAEs' measured L0), with the grid's data, split, steps and seeds; each is probed exactly as the
grid's SAEs are (codes of every response token, mean-pooled per completion, the study's probe,
stratified folds; the exact solver of :mod:`lib.probing.solver`, the same estimator as the study's
pipeline, so a sweep costs seconds per SAE). The figure sets probe accuracy against L0 measured on the probe's inputs, with
the STE SAEs of the same cell as points: an STE point on the TopK curve means its advantage is its
sparsity.

Descriptive: one fit per (k, seed), no paired test and no win/loss counts; the row for the k
nearest the STE L0 says how far apart the two are there. Output: ``results/k_sweep.csv``
(:data:`COLUMNS`); a rerun with the same settings reads it back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.capture.labelled import labelled_rows, read_layer, training_vectors
from lib.core.config import RunConfig
from lib.core.fileio import atomic_write_text
from lib.core.rundir import RunDir, fingerprint
from lib.core.runtime import progress
from lib.probing.probe import cross_validate
from lib.probing.sae_probes import read_sae_probes
from lib.sae.codes import sae_features
from lib.sae.train_grid import split_condition
from lib.sae.trainer import train_sae

COLUMNS = ["layer", "condition", "arch", "k", "seed", "l0", "bal_acc", "auroc", "fvu_note", "key"]


def sweep_ks(cfg: RunConfig, ste_l0: float, d_sae: int) -> list[int]:
    """The grid's k, then doublings up to twice the STE L0 (at least one; at most half the latents)."""
    ks, k = [int(cfg.sae.k)], int(cfg.sae.k)
    limit = min(max(2 * ste_l0, 2 * k), d_sae // 2)
    while k * 2 <= limit:
        k *= 2
        ks.append(k)
    return ks


def ste_points(run: RunDir, layer: int, condition: str, cv: str = "stratified") -> pd.DataFrame:
    """The grid's STE and TopK SAE probes of one cell (notebook 05): seed, L0, balanced accuracy."""
    probes = read_sae_probes(run)
    keep = (
        (probes["layer"] == layer)
        & (probes["condition"] == condition)
        & (probes["cv"] == cv)
        & probes["arch"].isin(["jumprelu_ste", "topk"])
    )
    if "sae_source" in probes:
        keep &= probes["sae_source"] == "grid"
    cols = ["arch", "seed_index", "input_l0", "bal_acc"]
    return probes.loc[keep, cols].rename(columns={"input_l0": "l0", "seed_index": "seed"})


def k_sweep(
    run: RunDir,
    cfg: RunConfig,
    layer: int,
    condition: str = "mixed",
    ks: list[int] | None = None,
    seeds: int | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """TopK SAEs at every k of ``ks`` (default :func:`sweep_ks`) and ``seeds`` seeds (default
    ``sae.seeds``), probed like the grid's SAEs. Cached in ``results/k_sweep.csv``."""
    path = run.result("k_sweep.csv")
    lab = labelled_rows(run, cfg)
    points = ste_points(run, layer, condition)
    ste_l0 = float(points.loc[points["arch"] == "jumprelu_ste", "l0"].mean()) if len(points) else 0
    d_sae = int(cfg.sae.expansion_factor) * int(read_layer(run, layer).d)
    ks = ks or sweep_ks(cfg, ste_l0 if np.isfinite(ste_l0) else 0, d_sae)
    seeds = int(seeds or cfg.sae.seeds)
    key = fingerprint(
        [cfg.sae.model_dump(mode="json"), layer, condition, ks, seeds, lab.ids, lab.y.tolist()]
    )[:16]
    if path.exists():
        old = pd.read_csv(path)
        if len(old) and (old["key"] == key).all():
            return old
    data = read_layer(run, layer)
    train_pos, _ = split_condition(lab, condition, cfg.sae.heldout_fraction, cfg.seed)
    x = training_vectors(data, lab.rows[train_pos], cfg.sae.train_on)
    rows = []
    jobs = [(k, s) for k in ks for s in range(seeds)]
    for k, s in progress(jobs, desc="k sweep", unit="SAE", on=show_progress):
        sae_cfg = cfg.sae.model_copy(update={"k": k})
        sae, _ = train_sae(
            x, "topk", sae_cfg, cfg.sae_seed(s), progress=False, meta={"train_on": cfg.sae.train_on}
        )
        feats = sae_features(sae, data, lab.rows, poolings=("mean",))
        value, note = {}, feats.note  # refused features (off-distribution inputs): no probe
        if feats.features:
            res = cross_validate(
                feats.features["mean"], lab.y, lab.scenario, "stratified", solver="exact"
            )
            value, note = res.value, res.note
        rows.append(
            {
                "layer": layer,
                "condition": condition,
                "arch": "topk",
                "k": k,
                "seed": s,
                "l0": feats.input_l0,
                "bal_acc": value.get("bal_acc", np.nan),
                "auroc": value.get("auroc", np.nan),
                "fvu_note": note,
                "key": key,
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(path, df.to_csv(index=False))
    return df


def at_matched_l0(sweep: pd.DataFrame, points: pd.DataFrame) -> dict:
    """TopK's balanced accuracy interpolated (in log L0) at the STE SAEs' mean L0, beside theirs."""
    ste = points[points["arch"] == "jumprelu_ste"]
    curve = sweep.groupby("k")[["l0", "bal_acc"]].mean().sort_values("l0")
    out = {
        "ste_l0": float(ste["l0"].mean()) if len(ste) else np.nan,
        "ste_bal_acc": float(ste["bal_acc"].mean()) if len(ste) else np.nan,
        "topk_bal_acc_at_ste_l0": np.nan,
        "inside": False,
    }
    if len(curve) >= 2 and np.isfinite(out["ste_l0"]):
        lx = np.log(curve["l0"].to_numpy())
        out["inside"] = bool(lx.min() <= np.log(out["ste_l0"]) <= lx.max())
        out["topk_bal_acc_at_ste_l0"] = float(
            np.interp(np.log(out["ste_l0"]), lx, curve["bal_acc"].to_numpy())
        )
    return out


def describe(sweep: pd.DataFrame, points: pd.DataFrame, layer: int, condition: str) -> str:
    m = at_matched_l0(sweep, points)
    if not np.isfinite(m["ste_bal_acc"]):
        return f"L{layer} {condition}: no STE SAE probe to set beside the k sweep."
    where = "" if m["inside"] else " (extrapolated: the STE L0 is outside the swept range)"
    gap = 100 * (m["ste_bal_acc"] - m["topk_bal_acc_at_ste_l0"])
    return (
        f"L{layer} {condition}, stratified folds: the STE SAEs fire {m['ste_l0']:.0f} latents per "
        f"token and reach {100 * m['ste_bal_acc']:.1f}%; TopK at that L0 reaches "
        f"{100 * m['topk_bal_acc_at_ste_l0']:.1f}%{where}: a gap of {gap:+.1f} points at matched "
        f"sparsity (TopK at its grid k={int(sweep['k'].min())}: "
        f"{100 * sweep[sweep['k'] == sweep['k'].min()]['bal_acc'].mean():.1f}%). Descriptive: one "
        "fit per k and seed, no paired test."
    )


def raw_at(run: RunDir, layer: int, cv: str = "stratified") -> float:
    """The raw mean-pooled probe's balanced accuracy at ``layer`` (notebook 05), or NaN."""
    path = run.result("layer_profile.csv")
    if not path.exists():
        return float("nan")
    p = pd.read_csv(path)
    keep = (
        (pd.to_numeric(p["layer"], errors="coerce") == layer)
        & (p["feature"] == "mean")
        & (p["cv"] == cv)
        & (p["subset"] == "all")
        & (p["target"] == "deception")
        & (p["metric"] == "bal_acc")
    )
    return float(p.loc[keep, "value"].iloc[0]) if keep.any() else float("nan")
