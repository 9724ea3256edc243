"""STE JumpReLU vs TopK vs threshold-0 JumpReLU (notebook 06).

The study reports that its 9 STE JumpReLU SAEs beat TopK in 8 of 9 (layer, condition) pairs,
counting any positive difference. Here, for every (layer, condition) with an STE SAE, the STE
SAE is compared with the TopK and with the threshold-0 JumpReLU SAE of the same cell by the
book's one paired test (:func:`lib.core.stats.paired_seed_test`: the difference of pooled balanced
accuracies, averaged over each architecture's seeds, with a bootstrap over completions and a t
term over seeds; under ``scenario`` folds a delete-one-scenario jackknife t-interval), Holm-corrected within each (cv, comparison)
family. ``verdict``: ``win`` / ``loss`` when ``p_holm < 0.05``, ``inconclusive`` otherwise (``untested`` without results),
``collapsed`` when the STE code fires less than one latent per input on the probe's own inputs.

The architectures are compared at their *measured* sparsity: ``l0_a``/``l0_b`` are the mean
active latents on the probe's inputs (:mod:`lib.sae.codes`), ``fvu_a``/``fvu_b`` the held-out
FVU of ``metrics.json``; a TopK SAE has L0 = k by construction, a threshold-0 JumpReLU a large
share of its latents, so a difference in balanced accuracy is also a difference in sparsity.

Input: the per-seed SAE probes of notebook 05 (``results/sae_probes.csv`` and their cached
out-of-fold scores): nothing is re-encoded or re-fitted. Output: ``results/ste_comparison.csv``
(:data:`COLUMNS`, one row per (layer, condition, cv, comparison); a config without STE SAEs gets
a header-only file and a note).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.capture.labelled import labelled_rows
from lib.core import stats
from lib.core.config import RunConfig
from lib.core.fileio import atomic_write_text
from lib.core.rundir import RunDir, read_results_csv, stable_seed
from lib.probing.sae_probes import read_sae_probes
from lib.probing.sae_verdicts import ALPHA, seed_scores
from lib.sae.model import read_metrics

COLUMNS = [
    "layer",
    "condition",
    "cv",
    "comparison",
    "arch_a",
    "arch_b",
    "n_seeds_a",
    "n_seeds_b",
    "bal_acc_a",
    "bal_acc_a_sd",
    "bal_acc_b",
    "bal_acc_b_sd",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "verdict",
    "verdict_class",
    "eq_low",
    "eq_high",
    "seed_df_a",
    "seed_df_b",
    "l0_a",
    "l0_b",
    "fvu_a",
    "fvu_b",
    "note",
]
OTHERS = ("topk", "jumprelu")


def _fvu(run: RunDir, sae_ids) -> float:
    vals = []
    for sae_id in sae_ids:
        path = run.sae_dir(sae_id)
        if (path / "metrics.json").exists():
            vals.append(read_metrics(path).get("fvu", np.nan))
    return float(np.nanmean(vals)) if vals else float("nan")


def ste_comparison(run: RunDir, cfg: RunConfig) -> pd.DataFrame:
    """One row per (layer, condition, cv, comparison); writes ``results/ste_comparison.csv``."""
    lab = labelled_rows(run, cfg)
    probes = read_sae_probes(run)
    grid = probes[probes.sae_source == "grid"]
    rows = []
    cells = [(layer, cond) for layer in cfg.sae.ste_layers for cond in cfg.sae.conditions]
    n_boot = stats.resamples_for_family(cfg.probe.n_bootstrap, max(len(cells), 1))
    pooled = {  # each architecture's seed spread per cv, pooled over its cells
        key: stats.pooled_seed_sd(
            [c.bal_acc.to_numpy(float) for _, c in d.groupby(["layer", "condition"])]
        )
        for key, d in grid.groupby(["arch", "cv"])
    }
    for layer, cond in cells:
        for mode in ("stratified", "scenario"):
            here = grid[(grid.layer == layer) & (grid.condition == cond) & (grid.cv == mode)]
            a = here[here.arch == "jumprelu_ste"]
            for other in OTHERS:
                b = here[here.arch == other]
                row = {
                    "layer": layer,
                    "condition": cond,
                    "cv": mode,
                    "arch_a": "jumprelu_ste",
                    "arch_b": other,
                    "comparison": f"jumprelu_ste vs {other}",
                    "n_seeds_a": int(a.bal_acc.notna().sum()),
                    "n_seeds_b": int(b.bal_acc.notna().sum()),
                    "bal_acc_a": a.bal_acc.mean(),
                    "bal_acc_b": b.bal_acc.mean(),
                    "l0_a": a.input_l0.mean(),
                    "l0_b": b.input_l0.mean(),
                    "fvu_a": _fvu(run, a.sae_id),
                    "fvu_b": _fvu(run, b.sae_id),
                    "collapsed": bool(a.collapsed.fillna(False).any()),
                }
                notes = sorted({n for n in pd.concat([a.note, b.note]) if n})
                A = seed_scores(run, "grid", list(a.sae_id), mode) if len(a) else None
                B = seed_scores(run, "grid", list(b.sae_id), mode) if len(b) else None
                if A is None or B is None:
                    missing = [arch for arch, d in (("jumprelu_ste", a), (other, b)) if d.empty]
                    notes.append(f"no probe results for {missing or 'every seed'}")
                else:
                    t = stats.paired_seed_test(
                        lab.y,
                        A,
                        B,
                        n_boot,
                        stable_seed(cfg.seed, "ste", layer, cond, mode, other),
                        lab.scenario if mode == "scenario" else None,
                        seed_sd_a=pooled.get(("jumprelu_ste", mode)),
                        seed_sd_b=pooled.get((other, mode)),
                    )
                    row.update(
                        delta=t["delta"],
                        ci_low=t["ci_low"],
                        ci_high=t["ci_high"],
                        eq_low=t["eq_low"],
                        eq_high=t["eq_high"],
                        seed_df_a=pooled.get(("jumprelu_ste", mode), (0, 0))[1],
                        seed_df_b=pooled.get((other, mode), (0, 0))[1],
                        p_value=t["p_value"],
                        bal_acc_a_sd=t["sd_a"],
                        bal_acc_b_sd=t["sd_b"],
                    )
                row["note"] = "; ".join(notes)
                rows.append(row)
    df = pd.DataFrame(rows, columns=[*COLUMNS, "collapsed"])
    for _, idx in df.groupby(["cv", "comparison"]).groups.items():
        df.loc[idx, "p_holm"] = stats.holm(df.loc[idx, "p_value"].to_numpy(dtype=float))
    verdict = np.where(df.p_holm < ALPHA, np.where(df.delta > 0, "win", "loss"), "inconclusive")
    df["verdict"] = np.where(df.p_value.isna(), "untested", verdict)
    df.loc[df.collapsed.astype(bool), "verdict"] = "collapsed"
    df["verdict_class"] = [
        "collapsed" if c else stats.verdict_class(*v)
        for c, *v in zip(
            df.collapsed.astype(bool), df.delta, df.p_holm, df.eq_low, df.eq_high, strict=True
        )
    ]
    df = df.drop(columns="collapsed").reindex(columns=COLUMNS)
    atomic_write_text(run.result("ste_comparison.csv"), df.to_csv(index=False))
    return df


def read_ste_comparison(run: RunDir) -> pd.DataFrame | None:
    """``results/ste_comparison.csv`` (:func:`ste_comparison`); None when the run has none."""
    if not run.result("ste_comparison.csv").exists():
        return None
    return read_results_csv(run, "ste_comparison.csv", "06_ste_comparison")


def study_claim(df: pd.DataFrame, cv: str = "stratified", other: str = "topk") -> dict:
    """The study's "STE beats TopK in k of n" recomputed: any gain in the seed mean, and wins and
    losses by the paired test after Holm."""
    rows = df[(df.cv == cv) & (df.arch_b == other)]
    return {
        "n": int(len(rows)),
        "ste_higher": int((rows.delta > 0).sum()),
        "wins": int((rows.verdict == "win").sum()),
        "losses": int((rows.verdict == "loss").sum()),
        "inconclusive": int((rows.verdict == "inconclusive").sum()),
        "collapsed": int((rows.verdict == "collapsed").sum()),
        "equivalent": int((rows.get("verdict_class", pd.Series(dtype=str)) == "equivalent").sum()),
        "mean_ste": float(rows.bal_acc_a.mean()) if len(rows) else float("nan"),
        "mean_other": float(rows.bal_acc_b.mean()) if len(rows) else float("nan"),
    }
