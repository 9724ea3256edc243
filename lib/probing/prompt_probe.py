"""The last prompt token: a probe that cannot read the response, and its known answers (notebook 11).

Every completion of one prompt is sampled from the same context, so the residual stream at the
prompt's last token, just before sampling starts, is the same vector for all of them (notebook 03
writes it once per prompt: ``activations/prompt_last.safetensors``). A probe on that vector
knows the prompt and nothing of what the model went on to say. Its known answers:

``within_scenario``
    AUROC over (deceptive, honest) pairs of the same prompt scored by the same fold's probe:
    every pair ties, so exactly 0.5.
``stratified`` beside ``prior``
    Under the study's stratified folds the probe can only learn which prompts' completions lie
    more often. The **scenario prior** (:func:`scenario_prior_scores`: each prompt's deception
    rate in the training folds) does that directly, a baseline every response probe must clear
    too. The two AUROCs should be close; the probe can edge above the prior by pooling similar
    prompts (a smoother estimate of each rate than a prompt's own few completions give), never
    by reading a response.
``held_out``
    Folds holding out whole families (``GroupKFold`` over families, as notebook 11's controls):
    a held-out prompt's completions all get one score, so the probe can only rank held-out
    prompts by how deceptive prompts like them were. At chance unless the prompt's wording
    predicts the rate of lying in a new situation; its CI is a cluster bootstrap over families.

All AUROCs of the table pool the out-of-fold scores; ``level`` is Bonferroni's over the layers,
as everywhere in notebook 11. Output: ``results/prompt_probe.csv``, one row per layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from lib.core import stats
from lib.core.fileio import atomic_write_text
from lib.core.rundir import RunDir
from lib.core.runtime import blas_threads
from lib.probing.probe import CV_SEED, cv_folds, fold_problem, study_probe

N_FOLDS = 5
ALPHA = 0.05
COLUMNS = [
    "layer",
    "within_scenario",
    "stratified",
    "prior",
    "held_out",
    "held_out_low",
    "held_out_high",
    "n",
    "prompts",
    "families",
    "level",
]


def scenario_prior_scores(scenario: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold scores that know only the scenario: its deception rate in the training folds
    (the overall rate for a scenario the training folds lack): what knowing the scenario gives,
    and all a feature that is the same for every completion of a scenario (the last prompt
    token's activation, under same-prompt sampling) can carry, up to how well it estimates
    those rates."""
    out = np.empty(len(y))
    for k in np.unique(folds):
        te, tr = folds == k, folds != k
        base = y[tr].mean()
        rates = {s: y[tr & (scenario == s)].mean() for s in np.unique(scenario[tr])}
        out[te] = [rates.get(s, base) for s in scenario[te]]
    return out


def stratified_folds(y: np.ndarray, seed: int = CV_SEED) -> np.ndarray:
    """The study's folds (:func:`lib.probing.probe.cv_folds`); one fold when a class is too small
    to be split five ways."""
    if fold_problem(y, None, "stratified"):
        return np.zeros(len(y), dtype=np.int64)
    return cv_folds(y, None, "stratified", seed)


def family_folds(family: np.ndarray) -> np.ndarray:
    """``GroupKFold(5)`` over families: test-fold index of every completion."""
    folds = np.zeros(len(family), dtype=np.int64)
    n = min(N_FOLDS, len(np.unique(family)))
    if n < 2:
        return folds
    for k, (_, te) in enumerate(GroupKFold(n).split(np.zeros(len(family)), groups=family)):
        folds[te] = k
    return folds


def oof_scores(X: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold decision values of the study's probe (NaN where a fold cannot be fitted).

    Each distinct row is scored once and its score copied to its duplicates: a BLAS kernel can
    give two equal rows of one matrix product different last bits (by their position in the
    block), which would break the ties the within-prompt known answer rests on."""
    out = np.full(len(y), np.nan)
    with blas_threads(1):
        for k in np.unique(folds):
            te, tr = folds == k, folds != k
            if tr.any() and len(np.unique(y[tr])) == 2:
                rows, inverse = np.unique(X[te], axis=0, return_inverse=True)
                scores = study_probe().fit(X[tr], y[tr]).decision_function(rows)
                out[te] = scores[inverse.ravel()]
    return out


def prompt_probe_metrics(
    X: np.ndarray,
    y: np.ndarray,
    scenario: np.ndarray,
    family: np.ndarray,
    n_boot: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """The known answers of one layer (see the module doc); ``X`` holds one row per completion,
    the same row for every completion of a scenario."""
    strat = stratified_folds(y)
    s = oof_scores(X, y, strat)
    fam = family_folds(family)
    h = oof_scores(X, y, fam)
    keep = np.isfinite(h)
    held = stats.auroc(y[keep], h[keep])
    lo = hi = float("nan")
    if n_boot > 0 and np.isfinite(held):
        W = stats.cluster_multiplicities(family[keep], n_boot, np.random.default_rng(seed))
        lo, hi = stats.percentile_ci(stats.auroc(y[keep], h[keep], W), level)
    ok = np.isfinite(s)
    # pairs scored by one probe (one fold) on one prompt; across folds the probes' offsets
    # differ, which biases a pooled within-prompt AUROC below 0.5 (as
    # lib.probing.wording_controls.within_group_auroc explains)
    pairs = np.char.add(scenario.astype(str), np.char.add("|", strat.astype(str)))
    within = stats.auroc_within_groups(y[ok], s[ok], pairs[ok])
    return {
        "within_scenario": float(within),
        "stratified": float(stats.auroc(y[ok], s[ok])),
        "prior": float(stats.auroc(y, scenario_prior_scores(scenario, y, strat))),
        "held_out": float(held),
        "held_out_low": float(lo),
        "held_out_high": float(hi),
        "n": int(len(y)),
        "prompts": int(len(np.unique(scenario))),
        "families": int(len(np.unique(family))),
    }


def prompt_probe_table(run: RunDir, cs, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """One row per captured layer: the last-prompt-token probe's known answers on the decisive
    completions of the direct and swapped prompts of ``cs`` (notebook 11's
    :class:`lib.probing.wording_controls.ControlSet`); written to ``results/prompt_probe.csv`` (a
    rerun reads it back). Needs notebook 03's ``activations/prompt_last.safetensors``."""
    from lib.capture.labelled import read_prompt_last  # lazy: torch

    path = run.result("prompt_probe.csv")
    if path.exists():
        return pd.read_csv(path)
    prompts = read_prompt_last(run)
    m = cs.mask(("direct", "swapped"), ("deceptive", "honest"))
    y = (cs.label[m] == "deceptive").astype(np.int64)
    rows = []
    level = 1 - ALPHA / max(len(prompts.layers), 1)
    for layer in prompts.layers:
        X = prompts.per_completion(layer)[cs.rows[m]]
        row = prompt_probe_metrics(X, y, cs.scenario[m], cs.family[m], n_boot, level, seed)
        rows.append({"layer": layer, **row, "level": level})
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    atomic_write_text(path, df.to_csv(index=False))
    return df


def _span(values: pd.Series) -> str:
    lo, hi = float(values.min()), float(values.max())
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"


def describe(table: pd.DataFrame) -> str:
    """One paragraph for notebook 11 and the published section."""
    if table.empty:
        return "The last-prompt-token probe was not run."
    t = table
    contains = ((t.held_out_low <= 0.5) & (0.5 <= t.held_out_high)).sum()
    band = (
        f"its interval containing 0.5 at {contains} of {len(t)} layers (cluster bootstrap over "
        f"{int(t.families.iloc[0])} families, Bonferroni over layers)"
        if t.held_out_low.notna().any()
        else "no interval computed (n_bootstrap 0)"
    )
    return (
        f"A probe on the last prompt token (the same vector for every completion of a prompt) "
        f"ties within every prompt (AUROC {_span(t.within_scenario)} over {len(t)} layers, 0.5 "
        "by construction); under the "
        f"study's stratified folds it reaches AUROC {_span(t.stratified)}, "
        f"beside the scenario prior's {t.prior.iloc[0]:.2f} (each prompt's rate in the training "
        f"folds); holding out whole families it reaches {_span(t.held_out)}, {band}."
    )
