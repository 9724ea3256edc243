"""STE JumpReLU vs TopK vs threshold-0 JumpReLU (notebook 06).

For every (layer, condition) that has an STE SAE, the three architectures side by side: probe
balanced accuracy with its CI, L0, FVU, dead fraction and loss recovered (from each SAE's
``metrics.json``), collapse detection, and a verdict on STE vs TopK from the paired difference of
their probes on the same folds: ``wins`` when the 95% CI of ``bal_acc(STE) - bal_acc(TopK)`` lies
above 0, ``loses`` when it lies below, ``inconclusive`` otherwise. The study's claim ("STE beats
TopK in 8 of 9 conditions") counted any positive difference; both counts are reported.

The probes are the study's recipe (:mod:`lib.probe`) on the SAEs trained in 04 (the study's
way), under both CV modes, on the pooled feature ``cfg.probe.sae_feature``.
Output: ``results/ste_comparison.csv``: per architecture ``<arch>_bal_acc`` and ``<arch>_<metric>``
(architecture names as in :data:`lib.config.ARCHITECTURES`), the STE probe's CI, and
``delta_vs_topk`` / ``delta_vs_jumprelu`` (STE minus the other) with paired CIs and p-values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.config import RunConfig
from lib.dataset import labelled_rows, pooled, read_layer
from lib.probe import CV_MODES, compare_probes, cross_validate
from lib.rundir import RunDir, atomic_write_text, stable_seed
from lib.runtime import progress as progress_bar
from lib.sae import encode_rows, load_sae, read_metrics

COLLAPSE_DEAD = 0.99  # a dictionary with this share of dead latents has collapsed
COLLAPSE_L0 = 1.0  # ... as has one whose mean L0 is below one latent per input
METRIC_KEYS = ("l0", "fvu", "dead_fraction", "ce_loss_recovered")


def _metrics(run: RunDir, sae_id: str) -> dict:
    path = run.sae_dir(sae_id)
    if not (path / "metrics.json").exists():
        return {}
    m = read_metrics(path)
    return {k: m.get(k, np.nan) for k in METRIC_KEYS}


def collapsed(metrics: dict) -> bool:
    """All-dead or near-zero-L0 dictionaries (the failure mode the study screened for)."""
    if not metrics:
        return False
    return bool(
        metrics.get("dead_fraction", 0) >= COLLAPSE_DEAD or metrics.get("l0", np.inf) < COLLAPSE_L0
    )


def verdict(ci_low: float, ci_high: float) -> str:
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "n/a"
    return "wins" if ci_low > 0 else "loses" if ci_high < 0 else "inconclusive"


def ste_comparison(run: RunDir, cfg: RunConfig, progress: bool = True) -> pd.DataFrame:
    """One row per (layer, condition, cv) with an STE SAE; writes ``results/ste_comparison.csv``."""
    lab = labelled_rows(run, cfg)
    feature = cfg.probe.sae_feature
    cells = [(layer, cond) for layer in cfg.sae.ste_layers for cond in cfg.sae.conditions]
    rows = []
    for layer in progress_bar(sorted({c[0] for c in cells}), desc="STE comparison", on=progress):
        X = pooled(read_layer(run, layer), lab, feature)
        for cond in (c for lay, c in cells if lay == layer):
            ids = {a: cfg.sae_id(layer, a, cond) for a in ("jumprelu_ste", "topk", "jumprelu")}
            results, facts = {}, {}
            for arch, sae_id in ids.items():
                path = run.sae_dir(sae_id)
                facts[arch] = _metrics(run, sae_id)
                if (path / "sae_weights.safetensors").exists():
                    F = encode_rows(load_sae(path), X)
                    results[arch] = {m: cross_validate(F, lab.y, lab.scenario, m) for m in CV_MODES}
            for mode in CV_MODES:
                row = {
                    "layer": layer,
                    "condition": cond,
                    "cv": mode,
                    "feature": feature,
                    "n": len(lab),
                }
                note = []
                for arch in ids:
                    res = results.get(arch, {}).get(mode)
                    row[f"{arch}_bal_acc"] = res.value["bal_acc"] if res is not None else np.nan
                    for k in METRIC_KEYS:
                        row[f"{arch}_{k}"] = facts[arch].get(k, np.nan)
                    row[f"{arch}_collapsed"] = collapsed(facts[arch])
                    if res is None:
                        note.append(f"{ids[arch]} missing")
                    elif not res.ok:
                        note.append(f"{ids[arch]}: {res.note}")
                seed = stable_seed(cfg.seed, "ste", layer, cond, mode)
                for other, prefix in (("topk", "vs_topk"), ("jumprelu", "vs_jumprelu")):
                    a, b = (
                        results.get("jumprelu_ste", {}).get(mode),
                        results.get(other, {}).get(mode),
                    )
                    if a is not None and b is not None:
                        cmp = compare_probes(a, b, cfg.probe.n_bootstrap, seed=seed)
                        if prefix == "vs_topk":
                            row["jumprelu_ste_ci_low"], row["jumprelu_ste_ci_high"] = (
                                cmp["bal_acc_ci_low"],
                                cmp["bal_acc_ci_high"],
                            )
                        row[f"delta_{prefix}"] = cmp["delta"]
                        row[f"delta_{prefix}_ci_low"] = cmp["delta_ci_low"]
                        row[f"delta_{prefix}_ci_high"] = cmp["delta_ci_high"]
                        row[f"p_{prefix}"] = cmp["p_value"]
                row["verdict"] = verdict(
                    row.get("delta_vs_topk_ci_low", np.nan),
                    row.get("delta_vs_topk_ci_high", np.nan),
                )
                if row["jumprelu_ste_collapsed"]:
                    row["verdict"] = "collapsed"
                row["note"] = "; ".join(note)
                rows.append(row)
    df = pd.DataFrame(rows)
    atomic_write_text(run.result("ste_comparison.csv"), df.to_csv(index=False))
    return df


def read_ste_comparison(run: RunDir) -> pd.DataFrame | None:
    """``results/ste_comparison.csv`` (:func:`ste_comparison`); None when the run has none."""
    path = run.result("ste_comparison.csv")
    return pd.read_csv(path, dtype={"note": object}).fillna({"note": ""}) if path.exists() else None


def study_claim(df: pd.DataFrame, cv: str = "stratified") -> dict:
    """The study's "STE beats TopK in k of n" recomputed: any gain, and gains whose CI excludes 0."""
    rows = df[df.cv == cv]
    return {
        "n": int(len(rows)),
        "ste_higher": int((rows.jumprelu_ste_bal_acc > rows.topk_bal_acc).sum()),
        "wins": int((rows.verdict == "wins").sum()),
        "loses": int((rows.verdict == "loses").sum()),
        "inconclusive": int((rows.verdict == "inconclusive").sum()),
        "collapsed": int((rows.verdict == "collapsed").sum()),
        "mean_ste": float(rows.jumprelu_ste_bal_acc.mean()),
        "mean_topk": float(rows.topk_bal_acc.mean()),
    }
