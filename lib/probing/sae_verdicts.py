"""Verdicts across seeds: SAE probes against raw, and leakage (notebook 05).

Every verdict here is the book's one paired test (:func:`lib.core.stats.paired_seed_test`): the
difference of pooled balanced accuracies, averaged over the SAE seeds of a grid cell, with a
bootstrap over completions and a t term over seeds (under ``scenario`` folds a delete-one-scenario
jackknife t-interval), and Holm's correction within a stated family. A cell probed with one SAE
seed only (the ``refit_all`` / ``per_fold`` SAEs of the leakage check usually are) gets
:data:`DESCRIPTIVE` instead of a verdict: one fit carries no estimate of its own variance, so its
p-value (kept in ``p_value``) takes no part in Holm's correction of the others. Each verdict is also classed by the book's one rule
(:func:`lib.core.stats.verdict_class`: ``better`` / ``worse`` / ``equivalent`` within 2 points /
``inconclusive``), with the seed spread pooled over the cells of its family
(:func:`lib.core.stats.pooled_seed_sd`). Families for SAE vs raw: ``(cv, sae_source, family)`` with
``family`` ``study`` (TopK and threshold-0 JumpReLU, the study's 30 SAEs) or ``ste``; for
leakage: ``cv``. The per-seed probe rows and their cached out-of-fold scores come from
:mod:`lib.probing.sae_probes`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.capture.labelled import Labelled
from lib.core import stats
from lib.core.config import RunConfig
from lib.core.rundir import RunDir, read_results_csv, stable_seed
from lib.probing.layer_profile import cached_layer_cv
from lib.probing.probe import load_cv

ALPHA = 0.05
#: the verdict of a comparison that rests on one fitted SAE: its test leaves out the fit's own
#: variance (8.5-18.5% false positives at 0.05 in the review's simulations), so it is reported
#: with its interval but counted as neither a win nor a loss
DESCRIPTIVE = "descriptive (one fit)"
#: cache file prefix (``cache/probing/<prefix>_<sae_id>.npz``) of each SAE source
SOURCE_PREFIX = {"grid": "sae", "refit_all": "refit", "per_fold": "folds"}
VERDICT_COLUMNS = [
    "cell_id", "layer", "arch", "condition", "family", "cv", "sae_source", "n_seeds", "bal_acc",
    "bal_acc_sd", "raw_bal_acc", "delta", "delta_ci_low", "delta_ci_high", "p_value", "p_holm",
    "verdict", "verdict_class", "eq_low", "eq_high", "seed_sd_pooled", "seed_df", "input_l0",
    "collapsed", "budget", "note",
]  # fmt: skip


def class_counts(verdict_class) -> str:
    """``b better, w worse, e equivalent within 2 points, i inconclusive`` of a column of
    :func:`lib.core.stats.verdict_class` values (a missing column says so)."""
    if verdict_class is None:
        return "verdict classes not computed"
    counts = verdict_class.value_counts()
    names = {"equivalent": f"equivalent within {100 * stats.EQUIVALENCE_MARGIN:.0f} points"}
    text = ", ".join(f"{int(counts.get(c, 0))} {names.get(c, c)}" for c in stats.VERDICT_CLASSES)
    if counts.get(DESCRIPTIVE, 0):
        text += f", {int(counts[DESCRIPTIVE])} descriptive (one SAE seed: no test)"
    return text


def family_of(arch: str) -> str:
    """The Holm family of an architecture: ``ste`` for the STE JumpReLU, else ``study``."""
    return "ste" if arch == "jumprelu_ste" else "study"


def seed_scores(run: RunDir, source: str, sae_ids: list[str], mode: str) -> np.ndarray | None:
    """``[n_seeds, n]`` cached out-of-fold scores of some SAEs (None if any is missing)."""
    prefix = SOURCE_PREFIX[source]
    out = []
    for sae_id in sae_ids:
        path = run.probing_cache / f"{prefix}_{sae_id}.npz"
        if not path.exists():
            return None
        res = load_cv(path).get(mode)
        if res is None or not res.ok:
            return None
        out.append(res.scores)
    return np.stack(out) if out else None


def sae_verdicts(run: RunDir, cfg: RunConfig, lab: Labelled, df: pd.DataFrame) -> pd.DataFrame:
    """One verdict per (cell, cv, sae_source): the SAE probe against raw, across seeds."""
    rows = []
    sizes = df.groupby(["cv", "sae_source", "family"]).cell_id.nunique()
    pooled = {  # the seed spread of each family, pooled over its cells (its degrees of freedom)
        key: stats.pooled_seed_sd([c.bal_acc.to_numpy(float) for _, c in fam.groupby("cell_id")])
        for key, fam in df.groupby(["cv", "sae_source", "family"])
    }
    for (cell_id, mode, source), d in df.groupby(["cell_id", "cv", "sae_source"], sort=False):
        first = d.iloc[0]
        sd_pooled, seed_df = pooled[mode, source, first.family]
        n_boot = stats.resamples_for_family(
            cfg.probe.n_bootstrap, sizes[mode, source, first.family]
        )
        ok = d.dropna(subset=["bal_acc"])
        row = {k: first[k] for k in ("cell_id", "layer", "arch", "condition", "family", "budget")}
        row.update(
            cv=mode,
            sae_source=source,
            n_seeds=len(ok),
            raw_bal_acc=first.raw_bal_acc,
            input_l0=d.input_l0.mean(),
            collapsed=bool(d.collapsed.fillna(False).any()),
            note="; ".join(sorted({n for n in d.note if n})),
        )
        S = seed_scores(run, source, list(ok.sae_id), mode) if len(ok) == len(d) else None
        raw = cached_layer_cv(run, cfg, lab, int(first.layer), first.raw_feature)
        if S is not None and raw is not None:
            t = stats.paired_seed_test(
                lab.y,
                S,
                raw[mode].scores,
                n_boot,
                stable_seed(cfg.seed, "verdict", cell_id, mode, source),
                lab.scenario if mode == "scenario" else None,
                seed_sd_a=(sd_pooled, seed_df),
            )
            row.update(
                bal_acc=ok.bal_acc.mean(),
                bal_acc_sd=t["sd_a"],
                delta=t["delta"],
                delta_ci_low=t["ci_low"],
                delta_ci_high=t["ci_high"],
                eq_low=t["eq_low"],
                eq_high=t["eq_high"],
                p_value=t["p_value"],
                seed_sd_pooled=sd_pooled,
                seed_df=seed_df,
            )
        rows.append(row)
    out = pd.DataFrame(rows).reindex(columns=VERDICT_COLUMNS)
    one_fit = out.p_value.notna() & (out.n_seeds < 2)
    for _, idx in out.groupby(["cv", "sae_source", "family"]).groups.items():
        p = out.loc[idx, "p_value"].to_numpy(dtype=float, copy=True)
        p[one_fit.loc[idx].to_numpy()] = np.nan  # a one-fit p-value must not loosen the others
        out.loc[idx, "p_holm"] = stats.holm(p)
    out["verdict"] = np.where(
        out.p_holm < ALPHA, np.where(out.delta > 0, "win", "loss"), "inconclusive"
    )
    out.loc[out.p_value.isna(), "verdict"] = "untested"
    out["verdict_class"] = [
        stats.verdict_class(*v)
        for v in zip(out.delta, out.p_holm, out.eq_low, out.eq_high, strict=True)
    ]
    out.loc[one_fit, ["verdict", "verdict_class"]] = DESCRIPTIVE
    out["note"] = out["note"].astype(object).fillna("")
    return out


#: the leakage test's classes (:func:`lib.core.stats.verdict_class` of reference vs per-fold)
LEAKAGE_VERDICTS = {
    "better": "leaks",
    "worse": "negative",
    "equivalent": "no leakage (within 2 points)",
}


def leakage_table(run: RunDir, cfg: RunConfig, lab: Labelled, df: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, cv): leakage = refit_all minus per_fold balanced accuracy, paired over
    completions (or scenarios) and seeds; both SAEs with the same budget and seeds. ``verdict``
    by the book's one rule (Holm within each CV mode, then the +/- 2-point equivalence test):
    ``leaks`` / ``negative`` / ``no leakage (within 2 points)`` / ``inconclusive``, or
    ``descriptive (one fit)`` with one seed."""
    rows = []
    sel = df[df.sae_source.isin(["refit_all", "per_fold"])]
    n_boot = stats.resamples_for_family(cfg.probe.n_bootstrap, max(sel.cell_id.nunique(), 1))
    for (cell_id, mode), d in sel.groupby(["cell_id", "cv"], sort=False):
        ref, free = d[d.sae_source == "refit_all"], d[d.sae_source == "per_fold"]
        row = {
            "cell_id": cell_id,
            "layer": d.layer.iloc[0],
            "arch": d.arch.iloc[0],
            "condition": d.condition.iloc[0],
            "cv": mode,
            "budget": d.budget.iloc[0],
            "n_seeds": len(ref),
            "raw_bal_acc": d.raw_bal_acc.iloc[0],
            "bal_acc_reference": ref.bal_acc.mean(),
            "bal_acc_per_fold": free.bal_acc.mean(),
            "note": "; ".join(sorted({n for n in d.note if n})),
        }
        A = seed_scores(run, "refit_all", list(ref.sae_id), mode)
        B = seed_scores(run, "per_fold", list(free.sae_id), mode)
        if A is not None and B is not None:
            t = stats.paired_seed_test(
                lab.y,
                A,
                B,
                n_boot,
                stable_seed(cfg.seed, "leakage", cell_id, mode),
                lab.scenario if mode == "scenario" else None,
            )
            row.update(
                leakage=t["delta"],
                leakage_ci_low=t["ci_low"],
                leakage_ci_high=t["ci_high"],
                eq_low=t["eq_low"],
                eq_high=t["eq_high"],
                p_value=t["p_value"],
            )
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out) and "p_value" in out:
        for _, idx in out.groupby("cv").groups.items():
            out.loc[idx, "p_holm"] = stats.holm(out.loc[idx, "p_value"].to_numpy(dtype=float))
        cls = [
            stats.verdict_class(*v)
            for v in zip(out.leakage, out.p_holm, out.eq_low, out.eq_high, strict=True)
        ]
        out["verdict"] = [LEAKAGE_VERDICTS.get(c, c) for c in cls]
        out.loc[out.p_value.notna() & (out.n_seeds < 2), "verdict"] = DESCRIPTIVE
    return out


def read_sae_verdicts(run: RunDir) -> pd.DataFrame:
    """``results/sae_verdicts.csv``: one verdict per grid cell, CV mode and source."""
    return read_results_csv(run, "sae_verdicts.csv", "05_layer_profile_probing")


def read_sae_leakage(run: RunDir) -> pd.DataFrame | None:
    """``results/sae_leakage.csv`` (:func:`leakage_table`); None when leakage was not run."""
    path = run.result("sae_leakage.csv")
    return (
        read_results_csv(run, "sae_leakage.csv", "05_layer_profile_probing")
        if path.exists()
        else None
    )


def sae_wins(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per (cv, sae_source, family): SAEs above raw the study's way (any positive mean delta)
    and by the paired test after Holm (``wins``, ``losses``), over the same family."""
    rows = []
    for (cv, source, fam), d in verdicts.dropna(subset=["delta"]).groupby(
        ["cv", "sae_source", "family"], sort=False
    ):
        rows.append(
            {
                "cv": cv,
                "sae_source": source,
                "family": fam,
                "n_cells": len(d),
                "above_raw": int((d.delta > 0).sum()),
                "wins": int((d.verdict == "win").sum()),
                "losses": int((d.verdict == "loss").sum()),
                "mean_delta": float(d.delta.mean()),
                "best_bal_acc": float(d.bal_acc.max()),
            }
        )
    return pd.DataFrame(rows)
