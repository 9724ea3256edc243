"""Controls of a probe: is there any signal, and could the scenario fake it?

Permutation p-values
--------------------
:func:`permutation_pvalue` refits the whole cross-validation for every label permutation
(``ProbeConfig.n_permutations``), with the exact solver of :mod:`lib.probing.solver`. Labels are
permuted **within each test fold**: the fold partition, the class counts of every training fold
(hence the class weights) and, for stratified folds, the stratification are unchanged. For
``scenario`` folds this is the within-scenario permutation, i.e. the null "no signal beyond
scenario identity"; for ``stratified`` folds it is the ordinary null "the activations carry no
information about the label". The statistic is the metric as :func:`lib.probing.probe.value_columns`
defines it; ``p = (1 + #{null >= observed}) / (1 + n_permutations)``. The observed statistic is
recomputed with the same solver, so the null and the observed value are like for like.

The permutations double as the ``shuffled_labels`` control: the mean and central 95% of the
null should sit at 0.5. (A single shuffle is a poor control: when the activations have strong
structure, cross-validation under shuffled labels anti-learns, because the label/structure
association of the training folds is the mirror image of the test fold's.)

Scenario identity
-----------------
:func:`scenario_identity_probe`: a multiclass probe (stratified 5-fold over scenarios) predicting
which scenario a completion came from; chance is 1 / #scenarios. A layer that identifies the
scenario can fake a deception signal under stratified folds whenever the deception rate differs
between scenarios; the ``scenario`` CV mode removes that route.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold

from lib.core import stats
from lib.core.runtime import blas_threads
from lib.probing.probe import CV_SEED, METRICS, N_SPLITS, cv_folds, value_columns
from lib.probing.solver import (
    balanced_weights,
    fit_logistic_many,
    fold_basis,
    oof_scores_many,
    oof_scores_tuned,
)


@dataclass
class PermutationResult:
    """A permutation test of one probe: statistics as :func:`value_columns` defines them."""

    observed: dict[str, float]
    null: dict[str, np.ndarray]
    p: dict[str, float]
    folds: np.ndarray
    observed_scores: np.ndarray  # out-of-fold scores of the real labels (exact solver)
    c_chosen: dict[int, float] | None = None  # with a C grid: each outer fold's C (real labels)


def permutation_pvalue(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    mode: str = "stratified",
    n_permutations: int = 200,
    seed: int = 0,
    cv_seed: int = CV_SEED,
    c_grid: tuple[float, ...] | None = None,
    inner_splits: int = 5,
) -> PermutationResult:
    """Label-permutation p-values of the probe's cross-validated metrics (refits every fold).

    Permutations shuffle labels within each test fold (see the module docstring). ``null`` holds
    each metric for every permutation; it doubles as the shuffled-label control. ``c_grid``: the
    probe's ``C`` chosen per training fold and per label vector by inner CV
    (:func:`lib.probing.solver.oof_scores_tuned`), for the real labels and every permutation
    alike; else the study's C=1. Raises :class:`ProbeInputError` when the data cannot be
    cross-validated.
    """
    y = np.asarray(y).astype(np.int64)
    folds = cv_folds(y, groups, mode, cv_seed)
    rng = np.random.default_rng(seed)
    perms = stats.within_group_permutations(folds, n_permutations, rng)
    Y = np.column_stack([y, y[perms].T]) if n_permutations else y[:, None]
    chosen = None
    if c_grid:
        S, chosen = oof_scores_tuned(X, Y, folds, c_grid, inner_splits, cv_seed)
    else:
        S = oof_scores_many(X, Y, folds)
    vals = value_columns(Y, S, folds, mode)
    observed = {m: float(v[0]) for m, v in vals.items()}
    null = {m: v[1:] for m, v in vals.items()}
    p = {m: stats.empirical_pvalue(observed[m], null[m]) for m in METRICS}
    return PermutationResult(observed, null, p, folds, S[:, 0], chosen)


# ----- scenario identity control ----------------------------------------------------------------
def scenario_identity_probe(
    X: np.ndarray, scenario: np.ndarray, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """How well a linear probe tells the scenarios apart (multiclass balanced accuracy).

    Stratified 5-fold over scenarios (random_state=42); per fold, StandardScaler and one-vs-rest
    L2 logistic regressions (C=1, each balanced between its scenario and the rest; all classes
    solved together by :func:`fit_logistic_many`); the prediction is the scenario with the
    highest decision value. ``value`` is the mean per-fold balanced accuracy, ``pooled`` the
    pooled one. Scenarios with fewer than 5 completions are left out (named in ``note``).
    CI: bootstrap within scenarios of the pooled predictions.
    """
    scenario = np.asarray(scenario)
    names, counts = np.unique(scenario, return_counts=True)
    small = names[counts < N_SPLITS]
    keep = ~np.isin(scenario, small)
    note = (
        f"left out scenarios with < {N_SPLITS} completions: {', '.join(map(str, small))}"
        if len(small)
        else ""
    )
    nan = float("nan")
    out = {
        "value": nan,
        "pooled": nan,
        "ci_low": nan,
        "ci_high": nan,
        "chance": nan,
        "n": int(keep.sum()),
        "n_classes": int(len(names) - len(small)),
        "n_folds": 0,
        "note": note,
    }
    if out["n_classes"] < 2:
        out["note"] = "; ".join(
            filter(None, [note, "fewer than two scenarios with enough completions"])
        )
        return out
    Xk, sk = np.asarray(X)[keep], scenario[keep]
    labels = np.unique(sk, return_inverse=True)[1]
    pred = np.empty(len(labels), dtype=np.int64)
    fold_scores = []
    with blas_threads(1):
        splitter = StratifiedKFold(N_SPLITS, shuffle=True, random_state=CV_SEED)
        for tr, te in splitter.split(np.zeros((len(labels), 1)), labels):
            Z, Zt = fold_basis(Xk[tr], Xk[te])
            onehot = (labels[tr][:, None] == np.arange(out["n_classes"])).astype(np.float64)
            beta = fit_logistic_many(Z, onehot, balanced_weights(onehot))
            pred[te] = np.argmax(Zt @ beta[:-1] + beta[-1], axis=1)
            fold_scores.append(balanced_accuracy_score(labels[te], pred[te]))
    out["value"] = float(np.mean(fold_scores))
    out["pooled"] = float(stats.balanced_accuracy_labels(labels, pred))
    out["chance"] = 1.0 / out["n_classes"]
    out["n_folds"] = N_SPLITS
    if n_bootstrap > 0:
        W = stats.stratified_multiplicities(labels, n_bootstrap, np.random.default_rng(seed))
        out["ci_low"], out["ci_high"] = stats.percentile_ci(
            stats.balanced_accuracy_labels(labels, pred, W)
        )
    return out
