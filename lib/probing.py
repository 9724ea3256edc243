"""Linear probes for deception: the layer profile, SAE probes against their raw baseline, controls.

The probe is the study's recipe: ``StandardScaler`` then
``LogisticRegression(class_weight="balanced", max_iter=5000)`` (L2, C=1, lbfgs), fitted on one
pooled residual-stream vector per completion (``last`` token or ``mean`` over the response).

Two cross-validation modes, always both reported
-------------------------------------------------
``stratified``
    The study's folds: ``StratifiedKFold(5, shuffle=True, random_state=42)``. ``value`` of
    ``bal_acc`` and ``auroc`` is the **mean of the five per-fold scores**, exactly what
    ``cross_val_score(pipeline, X, y, cv=..., scoring="balanced_accuracy" | "roc_auc")`` returns;
    the tests check this against sklearn to 3 decimals.
``scenario``
    Leave-one-scenario-out: every fold holds out all completions of one scenario, so the probe
    is scored on a scenario it never saw. A held-out scenario may contain one class only; its
    per-fold balanced accuracy and AUROC are then meaningless, so every ``scenario`` metric is
    computed on the **pooled out-of-fold scores** (all folds' test predictions together).
    The probe of this mode is fitted with the exact solver below (the same estimator as
    sklearn's pipeline, converged further); see :data:`SOLVERS`.

``recall_at_1fpr`` (the share of deceptive completions caught while flagging at most 1% of honest
ones) is always computed on pooled out-of-fold scores; ``pooled`` columns give the pooled value
of every metric next to ``value``.

Uncertainty
-----------
* 95% CIs: percentile bootstrap over completions of the pooled out-of-fold scores, resampling
  within each class (:func:`lib.stats.bootstrap_ci`, ``ProbeConfig.n_bootstrap`` resamples). The
  probes are not refitted, so the interval covers test-set sampling, not training variation:
  a layer without signal scatters around 0.5 more widely than its CI suggests, and can land
  visibly below 0.5 (cross-validation anti-learns a little under the null). The permutation
  null, shown as the ``shuffled_labels`` control, has the full spread; judge "is there signal"
  by the p-value, and "how much" by ``value`` and its CI.
* p-values: a label-permutation test that refits the whole cross-validation for every
  permutation (``ProbeConfig.n_permutations``). Labels are permuted **within each test fold**:
  the fold partition, the class counts of every training fold (hence the class weights) and,
  for stratified folds, the stratification are unchanged. For ``scenario`` folds this is the
  within-scenario permutation, i.e. the null "no signal beyond scenario identity"; for
  ``stratified`` folds it is the ordinary null "the activations carry no information about the
  label". The statistic is the metric as ``value`` defines it; ``p = (1 + #{null >= observed})
  / (1 + n_permutations)``.

  Refitting sklearn 200 x 14 times per layer and feature is too slow at d=2048, so the
  permutation refits use :func:`oof_scores_many`, an exact reformulation of the same estimator
  that fits all permutations of a fold at once. For L2-penalised logistic regression the weight
  vector lies in the span of the (standardised) training vectors, so with the training Gram
  matrix ``K = U diag(w) U^T`` the problem in d dimensions equals the problem on the
  ``r <= n_train`` coordinates ``Z = U sqrt(w)`` (same loss, same penalty, same unpenalised
  intercept, same class weights). That r-dimensional problem is solved for every label vector
  together by Newton's method with a preconditioned conjugate-gradient inner solve, to a
  gradient tolerance 100 times tighter than sklearn's default. The observed statistic of the
  test is recomputed with the same solver, so the null and the observed value are like for like.
  The ``stratified`` ``value`` comes from sklearn's own pipeline; the ``scenario`` value is the
  exact solver's fit of the real labels (the permutation run's first column).

Controls (``results/probe_controls.csv``, same columns, ``target`` names the probe)
------------------------------------------------------------------------------------
* ``shuffled_labels``: the probe refitted on labels shuffled within folds (the permutation
  refits): ``value`` is the mean over the ``n_permutations`` shuffles and ``ci_low``/``ci_high``
  the central 95% of them; the interval should include 0.5. (A single shuffle is a poor control:
  when the activations have strong structure, cross-validation under shuffled labels
  anti-learns, because the label/structure association of the training folds is the mirror
  image of the test fold's, and single shuffles land well below 0.5.)
* ``scenario_identity``: a multiclass probe (stratified 5-fold over scenarios) predicting which
  scenario a completion came from; its ``chance`` is 1 / #scenarios. A layer that identifies the
  scenario almost perfectly can fake a deception signal under stratified folds whenever the
  deception rate differs between scenarios; the ``scenario`` CV mode removes that route.

SAE probes
----------
SAE features are ``sae.encode(x)`` of the completion's pooled vector (``ProbeConfig.sae_feature``),
i.e. the SAE is applied to the same vector the raw probe sees (the study's single pooled vector
per completion), not to each token before pooling. Every SAE probe uses exactly the folds of its
layer's raw probe (the folds depend only on the labels and scenarios), so the two are compared
completion by completion: ``delta = bal_acc(SAE) - bal_acc(raw)`` (as ``value`` defines it), a
95% CI from a paired stratified bootstrap of the pooled out-of-fold predictions, and a two-sided
p-value from approximate randomisation (swap the two probes' predictions of each completion at
random, 10,000 rounds by default, so that Holm over a grid of 39 can reach 0.05).
``p_holm`` is Holm-corrected over the SAEs of one ``(cv, sae_source)`` family.

Leakage-free SAE probes (``ProbeConfig.leakage_free``): for each stratified fold a fresh SAE of the
same architecture and config is trained on that fold's training completions only (those of the
SAE's condition; token vectors when ``sae.train_on == "tokens"``), so no SAE has seen a probe test
completion (``sae_source="per_fold"``). Budget: this runs for the ``stratified`` mode only (5 SAEs
per grid cell; the study's claims were made under stratified folds), with ``fold_epochs`` epochs
(default ``sae.epochs``). When ``fold_epochs`` is below ``sae.epochs`` (to fit a time budget), one
more SAE per cell is trained on *all* labelled completions of the condition with the same
``fold_epochs`` (``sae_source="refit_all"``: the study's data choice at the fold SAEs' training
length), so that ``refit_all - per_fold`` measures leakage and not training length.
Torch runs single-threaded while training them (on 2 shared cores extra threads only contend).

Insufficient data never raises inside a stage: a probe that cannot be cross-validated (fewer
than 5 completions of a class, a held-out scenario leaving one class to train on, a condition
without training completions, a missing SAE) gets NaN metrics and a sentence in ``note``.

Files and resuming
------------------
``results/layer_profile.csv`` (deception probe), ``results/probe_controls.csv``,
``results/sae_probes.csv`` (grid and per-fold SAE probes), ``results/sae_leakage.csv`` (per SAE,
with and without leakage), all written atomically. Finished work is cached in
``cache/probing/`` per (layer, feature) and per SAE, keyed on the labels, the input files and
the settings; the stages reuse it unless ``force=True``.

Numerical work runs with BLAS limited to one thread (``threadpoolctl``): on two shared cores a
two-thread OpenBLAS made sklearn's fit ~50x slower than one thread. ``n_jobs=2`` runs two
single-threaded worker processes instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from lib import stats
from lib.config import RunConfig
from lib.dataset import (
    CONDITION_LABELS,
    Labelled,
    LayerData,
    labelled_rows,
    pooled,
    read_index,
    read_layer,
    training_vectors,
)
from lib.rundir import RunDir, atomic_write_bytes, atomic_write_text, read_json, write_json

N_SPLITS = 5
MIN_PER_CLASS = 5  # completions of each class a probe needs (one per stratified fold)
CV_SEED = 42
CV_MODES = ("stratified", "scenario")
SOLVERS = {"stratified": "sklearn", "scenario": "exact"}  # who fits the reported probe of each mode
METRICS = stats.METRICS
C_STUDY = 1.0
N_RANDOMIZATIONS = 10_000
CACHE_VERSION = 1
CLASS_NAMES = {1: "deceptive", 0: "honest"}

PROFILE_COLUMNS = [
    "layer",
    "feature",
    "cv",
    "target",
    "metric",
    "value",
    "pooled",
    "ci_low",
    "ci_high",
    "p_value",
    "chance",
    "n",
    "n_deceptive",
    "n_honest",
    "n_folds",
    "n_bootstrap",
    "n_permutations",
    "note",
]
SAE_COLUMNS = [
    "sae_id",
    "layer",
    "arch",
    "condition",
    "feature",
    "cv",
    "sae_source",
    "leakage_free",
    "bal_acc",
    "bal_acc_ci_low",
    "bal_acc_ci_high",
    "auroc",
    "raw_bal_acc",
    "raw_auroc",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_holm",
    "significant",
    "n",
    "d_sae",
    "epochs",
    "note",
]


class ProbeInputError(ValueError):
    """Labels or groups that cannot be cross-validated; the message says why."""


def study_probe() -> Pipeline:
    """The study's probe: StandardScaler + class-balanced L2 logistic regression."""
    return make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000)
    )


# ----- folds -----------------------------------------------------------------------------------
def fold_problem(y: np.ndarray, groups: np.ndarray | None, mode: str) -> str:
    """Why ``y``/``groups`` cannot be cross-validated in ``mode``; ``""`` when they can."""
    if mode not in CV_MODES:
        raise ValueError(f"cv mode {mode!r}; allowed: {CV_MODES}")
    y = np.asarray(y)
    counts = {c: int(np.sum(y == c)) for c in (1, 0)}
    if set(np.unique(y)) - {0, 1}:
        return f"labels must be 0/1, got {sorted(set(np.unique(y).tolist()))}"
    for c, k in counts.items():
        if k == 0:
            return f"no {CLASS_NAMES[c]} completions (n={len(y)}); nothing to separate"
    for c, k in counts.items():
        if k < MIN_PER_CLASS:
            what = (
                f"{N_SPLITS} stratified folds" if mode == "stratified" else "leave-one-scenario-out"
            )
            return f"too few {CLASS_NAMES[c]} completions ({k}) for {what} (need at least {MIN_PER_CLASS}); not probed"
    if mode == "stratified":
        return ""
    if groups is None:
        return "scenario folds need the scenario of every completion"
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        return f"only one scenario ({str(uniq[0])!r}); leave-one-scenario-out needs at least two"
    for g in uniq:
        rest = y[groups != g]
        for c in (1, 0):
            if not np.any(rest == c):
                return (
                    f"holding out scenario {str(g)!r} leaves no {CLASS_NAMES[c]} completions to train on; "
                    "leave-one-scenario-out not possible"
                )
    return ""


def cv_folds(
    y: np.ndarray, groups: np.ndarray | None, mode: str, seed: int = CV_SEED
) -> np.ndarray:
    """Test-fold index of every completion. Raises :class:`ProbeInputError` (see :func:`fold_problem`).

    ``stratified``: ``StratifiedKFold(5, shuffle=True, random_state=seed)`` (depends on ``y`` only).
    ``scenario``: one fold per scenario, in sorted scenario order.
    """
    problem = fold_problem(y, groups, mode)
    if problem:
        raise ProbeInputError(problem)
    y = np.asarray(y)
    folds = np.empty(len(y), dtype=np.int64)
    if mode == "stratified":
        splitter = StratifiedKFold(N_SPLITS, shuffle=True, random_state=seed)
        for k, (_, te) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
            folds[te] = k
    else:
        _, folds[:] = np.unique(np.asarray(groups), return_inverse=True)
    return folds


# ----- metrics as `value` defines them -------------------------------------------------------------
def value_columns(
    Y: np.ndarray, S: np.ndarray, folds: np.ndarray, mode: str
) -> dict[str, np.ndarray]:
    """The headline metric of every column of labels ``Y`` [n, P] and out-of-fold scores ``S``.

    ``stratified``: bal_acc and auroc are means of per-fold scores (cross_val_score style);
    recall_at_1fpr is pooled. ``scenario``: all pooled.
    """
    Y, S = np.atleast_2d(Y.T).T, np.atleast_2d(S.T).T
    pooled_vals = pooled_columns(Y, S)
    if mode == "scenario":
        return pooled_vals
    ks = np.unique(folds)
    ba = np.mean(
        [stats.balanced_accuracy_columns(Y[folds == k], S[folds == k]) for k in ks], axis=0
    )
    au = np.mean([stats.auroc_columns(Y[folds == k], S[folds == k]) for k in ks], axis=0)
    return {"bal_acc": ba, "auroc": au, "recall_at_1fpr": pooled_vals["recall_at_1fpr"]}


def pooled_columns(Y: np.ndarray, S: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric on the pooled out-of-fold scores, column by column."""
    return {
        "bal_acc": stats.balanced_accuracy_columns(Y, S),
        "auroc": stats.auroc_columns(Y, S),
        "recall_at_1fpr": stats.recall_at_fpr_columns(Y, S),
    }


# ----- cross-validation with the study's probe ------------------------------------------------------
@dataclass
class CVResult:
    """Out-of-fold results of one probe under one CV mode.

    ``scores``: out-of-fold decision values [n] (NaN when not probed); ``folds``: test fold of each
    completion; ``fold_metrics``: per-fold ``bal_acc``/``auroc`` (NaN for a one-class fold);
    ``value``: headline metrics (see :func:`value_columns`); ``pooled``: pooled out-of-fold metrics.
    """

    mode: str
    y: np.ndarray
    scores: np.ndarray
    folds: np.ndarray
    fold_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    value: dict[str, float] = field(default_factory=dict)
    pooled: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.note

    @property
    def n_folds(self) -> int:
        return int(len(np.unique(self.folds[self.folds >= 0]))) if self.ok else 0

    @classmethod
    def failed(cls, mode: str, y: np.ndarray, note: str) -> CVResult:
        nan = {m: float("nan") for m in METRICS}
        n = len(y)
        return cls(
            mode, np.asarray(y), np.full(n, np.nan), np.full(n, -1), {}, dict(nan), dict(nan), note
        )


def _finish(mode: str, y: np.ndarray, scores: np.ndarray, folds: np.ndarray) -> CVResult:
    fm = {"bal_acc": [], "auroc": []}
    for k in np.unique(folds):
        te = folds == k
        yt, st = y[te], scores[te]
        if (
            len(np.unique(yt)) == 2
        ):  # lib.stats equals sklearn's scores (tested), without its overhead
            fm["bal_acc"].append(stats.balanced_accuracy(yt, st))
            fm["auroc"].append(stats.auroc(yt, st))
        else:  # one class in this test fold: per-fold scores are undefined
            fm["bal_acc"].append(float("nan"))
            fm["auroc"].append(float("nan"))
    value = {
        m: float(v[0]) for m, v in value_columns(y[:, None], scores[:, None], folds, mode).items()
    }
    pooled_vals = {m: float(v[0]) for m, v in pooled_columns(y[:, None], scores[:, None]).items()}
    return CVResult(
        mode, y, scores, folds, {m: np.asarray(v) for m, v in fm.items()}, value, pooled_vals
    )


def _cross_validate_folds(
    features, y: np.ndarray, folds: np.ndarray, mode: str, solver: str = "sklearn"
) -> CVResult:
    """Fit the probe per fold; ``features(k)`` gives the [n, d] matrix used in fold k.

    ``solver="sklearn"``: the study's pipeline as it is. ``solver="exact"``: the same estimator
    solved by :func:`fit_logistic_many` in the exact training-span basis.
    """
    if solver not in ("sklearn", "exact"):
        raise ValueError(f"solver={solver!r}; allowed: 'sklearn', 'exact'")
    scores = np.full(len(y), np.nan)
    with threadpool_limits(1):
        for k in np.unique(folds):
            te = folds == k
            X = features(k)
            if solver == "sklearn":
                model = study_probe().fit(X[~te], y[~te])
                scores[te] = model.decision_function(X[te])
            else:
                Z, Zt = fold_basis(X[~te], X[te])
                ytr = y[~te][:, None]
                beta = fit_logistic_many(Z, ytr, balanced_weights(ytr))
                scores[te] = Zt @ beta[:-1, 0] + beta[-1, 0]
    return _finish(mode, y, scores, folds)


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    mode: str = "stratified",
    seed: int = CV_SEED,
    solver: str | None = None,
) -> CVResult:
    """Out-of-fold decision scores and metrics of the study's probe on ``X`` [n, d], labels ``y``.

    ``groups`` (the scenario of each completion) is needed for ``mode="scenario"``. ``solver``
    defaults to :data:`SOLVERS` of the mode: sklearn's own pipeline for ``stratified`` (the
    study's numbers), the exact solver for ``scenario`` (same estimator, converged further, and
    the same computation as its permutation null; 9+ sklearn refits per probe at d=2048 would
    dominate the stage's time). Data that cannot be cross-validated returns a result with NaN
    metrics and ``note`` set; it never raises.
    """
    y = np.asarray(y).astype(np.int64)
    problem = fold_problem(y, groups, mode)
    if problem:
        return CVResult.failed(mode, y, problem)
    folds = cv_folds(y, groups, mode, seed)
    return _cross_validate_folds(lambda k: X, y, folds, mode, solver or SOLVERS[mode])


# ----- the exact fast solver for many label vectors ---------------------------------------------------
def _standardise(Xtr: np.ndarray, Xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Xtr = np.asarray(Xtr, dtype=np.float64)
    Xte = np.asarray(Xte, dtype=np.float64)
    mu = Xtr.mean(0)
    sd = Xtr.std(0)
    sd[sd <= 1e-12 + 1e-7 * np.abs(mu)] = 1.0  # constant features: sklearn keeps scale 1 too
    return (Xtr - mu) / sd, (Xte - mu) / sd


def fold_basis(
    Xtr: np.ndarray, Xte: np.ndarray, rel_tol: float = 1e-11
) -> tuple[np.ndarray, np.ndarray]:
    """Standardise with training statistics, then express both sets in the exact r-dim basis.

    Returns ``Z_train`` [n_train, r] and ``Z_test`` [n_test, r] with ``Z_train Z_train^T`` equal to
    the standardised training Gram matrix and ``Z_test Z_train^T`` equal to the test-train one
    (directions with eigenvalue below ``rel_tol`` x the largest are dropped). Any L2-penalised
    linear model with an unpenalised intercept has the same training objective and the same test
    scores on ``Z`` as on the standardised d-dimensional vectors.
    """
    Xs, Xt = _standardise(Xtr, Xte)
    n, d = Xs.shape
    if d <= n:
        w, V = np.linalg.eigh(Xs.T @ Xs)
        keep = w > max(w.max(), 0.0) * rel_tol
        V = V[:, keep]
        return Xs @ V, Xt @ V
    w, U = np.linalg.eigh(Xs @ Xs.T)
    keep = w > max(w.max(), 0.0) * rel_tol
    U, root = U[:, keep], np.sqrt(w[keep])
    return U * root, (Xt @ Xs.T) @ U / root


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic_many(
    Z: np.ndarray,
    Y: np.ndarray,
    sample_weight: np.ndarray,
    C: float = C_STUDY,
    gtol_rel: float = 1e-6,
    max_newton: int = 100,
    max_cg: int = 250,
) -> np.ndarray:
    """L2 logistic regression for every column of ``Y`` [n, P] at once; returns ``[r + 1, P]``.

    Minimises ``C * sum_i s_i * logloss_i + ||beta||^2 / 2`` (intercept, the last row, unpenalised)
    -- sklearn's objective -- by Newton's method with a Jacobi-preconditioned conjugate-gradient
    inner solve (inexact Newton) and a backtracking Armijo line search, column by column in
    lockstep. Stops when every column's largest gradient entry is below
    ``gtol_rel * C * sum(s)`` (sklearn's default lbfgs tolerance is ``1e-4`` on the same scale).
    """
    n, r = Z.shape
    P = Y.shape[1]
    Za = np.hstack([Z, np.ones((n, 1))])
    Za2 = Za * Za
    Za32 = Za.astype(np.float32)  # Hessian-vector products only need an approximate direction
    reg = np.ones((r + 1, 1))
    reg[-1] = 0.0
    S, Y = np.asarray(sample_weight, float), np.asarray(Y, float)
    beta = np.zeros((r + 1, P))
    z = np.zeros((n, P))
    gtol = gtol_rel * C * S.sum(0)

    def objective(z_, b_):
        return C * (S * (np.logaddexp(0.0, z_) - Y * z_)).sum(0) + 0.5 * (reg * b_ * b_).sum(0)

    f = objective(z, beta)
    for _ in range(max_newton):
        p = _sigmoid(z)
        g = C * (Za.T @ (S * (p - Y))) + reg * beta
        active = np.abs(g).max(0) > gtol
        if not active.any():
            break
        cols = np.flatnonzero(active)
        D = C * S[:, cols] * p[:, cols] * (1.0 - p[:, cols])
        M = Za2.T @ D + reg
        D32 = D.astype(np.float32)
        gA = g[:, cols]
        x = np.zeros_like(gA)
        res = -gA
        pre = res / M
        direction = pre.copy()
        rz = (res * pre).sum(0)
        gnorm = np.sqrt((gA * gA).sum(0))
        target = np.minimum(0.5, np.sqrt(gnorm)) * gnorm
        done = np.zeros(len(cols), dtype=bool)
        for _ in range(max_cg):
            Hd = (Za32.T @ (D32 * (Za32 @ direction.astype(np.float32)))).astype(
                np.float64
            ) + reg * direction
            curv = (direction * Hd).sum(0)
            alpha = np.where(done, 0.0, rz / np.where(curv > 0, curv, 1.0))
            x += alpha * direction
            res = res - alpha * Hd
            done |= np.sqrt((res * res).sum(0)) <= target
            if done.all():
                break
            pre = res / M
            rz_new = (res * pre).sum(0)
            direction = pre + np.where(done, 0.0, rz_new / np.where(rz > 0, rz, 1.0)) * direction
            rz = rz_new
        step = np.zeros_like(beta)
        step[:, cols] = x
        dz = Za @ step
        slope = (g * step).sum(0)
        t = np.ones(P)
        accepted = ~active
        new_beta, new_z, new_f = beta.copy(), z.copy(), f.copy()
        for _ in range(50):
            cand_beta = beta + t * step
            cand_z = z + t * dz
            cand_f = objective(cand_z, cand_beta)
            ok = ~accepted & (cand_f <= f + 1e-4 * t * slope)
            new_beta[:, ok], new_z[:, ok], new_f[ok] = cand_beta[:, ok], cand_z[:, ok], cand_f[ok]
            accepted |= ok
            if accepted.all():
                break
            t = np.where(accepted, t, 0.5 * t)
        if not (accepted & active).any():
            break  # no column can improve any more (numerically converged)
        beta, z, f = new_beta, new_z, new_f
    return beta


def balanced_weights(Y: np.ndarray) -> np.ndarray:
    """sklearn's ``class_weight="balanced"`` sample weights, column by column."""
    Y = np.asarray(Y)
    n = Y.shape[0]
    n_pos = Y.sum(0)
    if np.any(n_pos == 0) or np.any(n_pos == n):
        raise ProbeInputError("a training fold of some label vector holds one class only")
    return np.where(Y == 1, n / (2.0 * n_pos), n / (2.0 * (n - n_pos)))


def oof_scores_many(
    X: np.ndarray, Y: np.ndarray, folds: np.ndarray, C: float = C_STUDY
) -> np.ndarray:
    """Out-of-fold decision scores ``[n, P]`` of the study's probe for every label column of ``Y``.

    Mathematically the same estimator as :func:`study_probe` (per-fold standardisation, balanced
    class weights, L2 with C=1, unpenalised intercept), solved exactly in the training span by
    :func:`fit_logistic_many`. Used for permutation nulls and the shuffled-label control.
    """
    Y = np.asarray(Y).reshape(len(folds), -1)
    out = np.full(Y.shape, np.nan)
    with threadpool_limits(1):
        for k in np.unique(folds):
            te = folds == k
            Z, Zt = fold_basis(X[~te], X[te])
            beta = fit_logistic_many(Z, Y[~te], balanced_weights(Y[~te]), C)
            out[te] = Zt @ beta[:-1] + beta[-1]
    return out


@dataclass
class PermutationResult:
    """A permutation test of one probe: statistics as :func:`value_columns` defines them."""

    observed: dict[str, float]
    null: dict[str, np.ndarray]
    p: dict[str, float]
    folds: np.ndarray
    observed_scores: np.ndarray  # out-of-fold scores of the real labels (exact solver)


def permutation_pvalue(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    mode: str = "stratified",
    n_permutations: int = 200,
    seed: int = 0,
    cv_seed: int = CV_SEED,
) -> PermutationResult:
    """Label-permutation p-values of the probe's cross-validated metrics (refits every fold).

    Permutations shuffle labels within each test fold (see the module docstring). ``null`` holds
    each metric for every permutation; it doubles as the shuffled-label control. Raises
    :class:`ProbeInputError` when the data cannot be cross-validated.
    """
    y = np.asarray(y).astype(np.int64)
    folds = cv_folds(y, groups, mode, cv_seed)
    rng = np.random.default_rng(seed)
    perms = stats.within_group_permutations(folds, n_permutations, rng)
    Y = np.column_stack([y, y[perms].T]) if n_permutations else y[:, None]
    S = oof_scores_many(X, Y, folds)
    vals = value_columns(Y, S, folds, mode)
    observed = {m: float(v[0]) for m, v in vals.items()}
    null = {m: v[1:] for m, v in vals.items()}
    p = {m: stats.empirical_pvalue(observed[m], null[m]) for m in METRICS}
    return PermutationResult(observed, null, p, folds, S[:, 0])


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
    with threadpool_limits(1):
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


# ----- one layer and feature: every row of the layer profile ----------------------------------------
def _seed(*parts) -> int:
    """A stable 31-bit seed from ints and strings."""
    ints = [int(hashlib.sha256(str(p).encode()).hexdigest()[:8], 16) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0] & 0x7FFFFFFF)


def probe_feature(
    X: np.ndarray,
    y: np.ndarray,
    scenario: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    n_permutations: int = 200,
    seed: int = 0,
    modes: tuple[str, ...] = CV_MODES,
) -> tuple[list[dict], dict[str, CVResult]]:
    """Everything the layer profile reports for one feature matrix ``X`` [n, d].

    Returns the table rows (targets ``deception``, ``shuffled_labels``, ``scenario_identity``) and
    the sklearn :class:`CVResult` of each mode (kept for the SAE comparison).
    """
    y = np.asarray(y).astype(np.int64)
    base = {
        "n": len(y),
        "n_deceptive": int((y == 1).sum()),
        "n_honest": int((y == 0).sum()),
        "n_bootstrap": n_bootstrap,
        "n_permutations": n_permutations,
    }
    rows, results = [], {}
    for mode in modes:
        problem = fold_problem(y, scenario, mode)
        if problem:
            res = CVResult.failed(mode, y, problem)
        else:
            perm = permutation_pvalue(
                X, y, scenario, mode, n_permutations, _seed(seed, mode, "perm")
            )
            if SOLVERS[mode] == "exact":  # the permutation run's first column is this very fit
                res = _finish(mode, y, perm.observed_scores, perm.folds)
            else:
                res = cross_validate(X, y, scenario, mode)
        results[mode] = res
        if not res.ok:
            for target, metrics in (
                ("deception", METRICS),
                ("shuffled_labels", ("bal_acc", "auroc")),
            ):
                for m in metrics:
                    rows.append(
                        {
                            **base,
                            "cv": mode,
                            "target": target,
                            "metric": m,
                            "value": np.nan,
                            "pooled": np.nan,
                            "ci_low": np.nan,
                            "ci_high": np.nan,
                            "p_value": np.nan,
                            "chance": 0.5,
                            "n_folds": 0,
                            "note": res.note,
                        }
                    )
            continue
        ci = stats.bootstrap_ci(y, res.scores, n_bootstrap, _seed(seed, mode, "ci"))
        for m in METRICS:
            rows.append(
                {
                    **base,
                    "cv": mode,
                    "target": "deception",
                    "metric": m,
                    "value": res.value[m],
                    "pooled": res.pooled[m],
                    "ci_low": ci[m][0],
                    "ci_high": ci[m][1],
                    "p_value": perm.p[m],
                    "chance": 0.5 if m != "recall_at_1fpr" else stats.FPR_LEVEL,
                    "n_folds": res.n_folds,
                    "note": "",
                }
            )
        for m in ("bal_acc", "auroc"):
            null = perm.null[m][np.isfinite(perm.null[m])]
            lo, hi = stats.percentile_ci(null)
            rows.append(
                {
                    **base,
                    "cv": mode,
                    "target": "shuffled_labels",
                    "metric": m,
                    "value": float(null.mean()) if null.size else np.nan,
                    "pooled": np.nan,
                    "ci_low": lo,
                    "ci_high": hi,
                    "p_value": np.nan,
                    "chance": 0.5,
                    "n_folds": res.n_folds,
                    "note": (
                        f"mean and central 95% of {null.size} label shuffles"
                        if null.size
                        else "no permutations (probe.n_permutations = 0)"
                    ),
                }
            )
    sid = scenario_identity_probe(X, scenario, n_bootstrap, _seed(seed, "scenario_identity"))
    rows.append(
        {
            **base,
            "cv": "stratified",
            "target": "scenario_identity",
            "metric": "bal_acc",
            "value": sid["value"],
            "pooled": sid["pooled"],
            "ci_low": sid["ci_low"],
            "ci_high": sid["ci_high"],
            "p_value": np.nan,
            "chance": sid["chance"],
            "n": sid["n"],
            "n_folds": sid["n_folds"],
            "note": sid["note"],
        }
    )
    return rows, results


# ----- caching ------------------------------------------------------------------------------------
def _cache_dir(run: RunDir) -> Path:
    return run.cache / "probing"


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: Path) -> list:
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def _labelled_stamp(lab: Labelled) -> list:
    return [lab.ids, lab.y.tolist(), lab.scenario.tolist(), lab.judge]


def _save_cv(path: Path, results: dict[str, CVResult]) -> None:
    arrays = {}
    for mode, r in results.items():
        arrays[f"{mode}__scores"] = r.scores
        arrays[f"{mode}__folds"] = r.folds
        arrays[f"{mode}__y"] = r.y
        arrays[f"{mode}__meta"] = np.array(
            json.dumps(
                {
                    "value": r.value,
                    "pooled": r.pooled,
                    "note": r.note,
                    "fold_metrics": {k: v.tolist() for k, v in r.fold_metrics.items()},
                }
            )
        )
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load_cv(path: Path) -> dict[str, CVResult]:
    out = {}
    with np.load(path) as z:
        modes = sorted({k.split("__")[0] for k in z.files})
        for mode in modes:
            meta = json.loads(str(z[f"{mode}__meta"]))
            out[mode] = CVResult(
                mode,
                z[f"{mode}__y"],
                z[f"{mode}__scores"],
                z[f"{mode}__folds"],
                {k: np.asarray(v) for k, v in meta["fold_metrics"].items()},
                meta["value"],
                meta["pooled"],
                meta["note"],
            )
    return out


def _read_cached(json_path: Path, key: str) -> dict | None:
    if not json_path.exists():
        return None
    try:
        obj = read_json(json_path)
    except Exception:
        return None
    return obj if obj.get("key") == key else None


# ----- stage: the layer profile -------------------------------------------------------------------
def captured_layers(run: RunDir) -> list[int]:
    """The captured layers (``layers`` of ``activations/index.json``; else the files present)."""
    index = read_index(run)
    if "layers" in index:
        return sorted(int(layer) for layer in index["layers"])
    return sorted(int(p.stem[1:]) for p in run.activations.glob("L*.safetensors"))


def _layer_key(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int, feature: str) -> str:
    return _fingerprint(
        CACHE_VERSION,
        "layer",
        layer,
        feature,
        _labelled_stamp(lab),
        cfg.seed,
        cfg.probe.n_bootstrap,
        cfg.probe.n_permutations,
        _file_stamp(run.activation_file(layer)),
    )


def _layer_paths(run: RunDir, layer: int, feature: str) -> tuple[Path, Path]:
    stem = _cache_dir(run) / f"layer_L{layer:02d}_{feature}"
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def _layer_cached(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int, feature: str) -> bool:
    jpath, npath = _layer_paths(run, layer, feature)
    return (
        npath.exists()
        and _read_cached(jpath, _layer_key(run, cfg, lab, layer, feature)) is not None
    )


def _probe_layer(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int, force: bool) -> list[dict]:
    """All rows of one layer (both features), from the cache when it is current."""
    rows, data = [], None
    for feature in cfg.probe.features:
        key = _layer_key(run, cfg, lab, layer, feature)
        jpath, npath = _layer_paths(run, layer, feature)
        cached = None if force else _read_cached(jpath, key)
        if cached is not None and npath.exists():
            rows += cached["rows"]
            continue
        data = data if data is not None else read_layer(run, layer)
        X = pooled(data, lab, feature)
        frows, results = probe_feature(
            X,
            lab.y,
            lab.scenario,
            n_bootstrap=cfg.probe.n_bootstrap,
            n_permutations=cfg.probe.n_permutations,
            seed=_seed(cfg.seed, "layer", layer, feature),
        )
        frows = [{"layer": layer, "feature": feature, **r} for r in frows]
        _save_cv(npath, results)
        write_json(jpath, {"key": key, "rows": _jsonable(frows)})
        rows += frows
    return rows


def _jsonable(rows: list[dict]) -> list[dict]:
    def conv(v):
        if isinstance(v, (np.floating, float)):
            return None if not math.isfinite(float(v)) else float(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        return v

    return [{k: conv(v) for k, v in r.items()} for r in rows]


def _progress(iterable, total: int, desc: str, on: bool):
    if not on:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def layer_profile(
    run: RunDir, cfg: RunConfig, progress: bool = True, force: bool = False, n_jobs: int = 1
) -> pd.DataFrame:
    """Probe every captured layer and pooled feature; write the layer profile and its controls.

    ``results/layer_profile.csv`` (returned): the deception probe, one row per (layer, feature,
    cv, metric); ``results/probe_controls.csv`` (:func:`read_probe_controls`): the
    ``shuffled_labels`` and ``scenario_identity`` rows. Both have columns
    :data:`PROFILE_COLUMNS` (``target`` says which probe a row belongs to). Work is cached per
    layer and feature in ``cache/probing/`` (keyed on the labels, the activation file and the
    probe settings) and skipped when current unless ``force``. ``n_jobs`` > 1 probes layers in
    parallel processes (each single-threaded).
    """
    lab = labelled_rows(run, cfg)
    layers = captured_layers(run)
    if not layers:
        raise FileNotFoundError(
            f"no activation files in {run.activations}; run 03_activation_capture"
        )
    if not force:  # layers whose every feature is cached need no worker
        todo = [
            layer
            for layer in layers
            if not all(_layer_cached(run, cfg, lab, layer, f) for f in cfg.probe.features)
        ]
        if not todo:
            n_jobs = 1
    if n_jobs == 1:
        parts = [
            _probe_layer(run, cfg, lab, layer, force)
            for layer in _progress(layers, len(layers), "layers", progress)
        ]
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_probe_layer)(run, cfg, lab, layer, force) for layer in layers
        )
        parts = list(_progress(gen, len(layers), "layers", progress))
    df = pd.DataFrame([r for part in parts for r in part])
    df = df.reindex(columns=PROFILE_COLUMNS)
    df["note"] = df["note"].fillna("")
    profile = df[df["target"] == "deception"].reset_index(drop=True)
    controls = df[df["target"] != "deception"].reset_index(drop=True)
    atomic_write_text(run.results / "probe_controls.csv", controls.to_csv(index=False))
    atomic_write_text(run.results / "layer_profile.csv", profile.to_csv(index=False))
    return profile


def _read_results(run: RunDir, name: str) -> pd.DataFrame:
    df = pd.read_csv(
        run.require(run.results / name, "05_layer_profile_probing"), dtype={"note": object}
    )
    if "note" in df:
        df["note"] = df["note"].fillna("")
    return df


def read_layer_profile(run: RunDir) -> pd.DataFrame:
    """``results/layer_profile.csv``: the deception probe by layer, feature, CV mode and metric."""
    return _read_results(run, "layer_profile.csv")


def read_probe_controls(run: RunDir) -> pd.DataFrame:
    """``results/probe_controls.csv``: shuffled-label and scenario-identity probes by layer."""
    return _read_results(run, "probe_controls.csv")


def peak_layer(
    profile: pd.DataFrame,
    cv: str = "stratified",
    metric: str = "bal_acc",
    feature: str | None = None,
) -> dict:
    """The (layer, feature) with the highest deception ``value`` of ``metric`` under ``cv``."""
    sel = profile[(profile.target == "deception") & (profile.cv == cv) & (profile.metric == metric)]
    if feature is not None:
        sel = sel[sel.feature == feature]
    sel = sel.dropna(subset=["value"])
    if sel.empty:
        return {
            "layer": None,
            "feature": feature,
            "value": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "p_value": float("nan"),
        }
    best = sel.loc[sel["value"].idxmax()]
    return {k: best[k] for k in ("layer", "feature", "value", "ci_low", "ci_high", "p_value")}


# ----- SAE probes ---------------------------------------------------------------------------------
def encode(sae, X: np.ndarray, batch: int = 1024) -> np.ndarray:
    """``sae.encode`` of the rows of ``X`` as float32 numpy ``[n, d_sae]``."""
    import torch

    params = list(sae.parameters()) if hasattr(sae, "parameters") else []
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params else torch.float32
    out = []
    with torch.no_grad(), _torch_threads(1):
        for i in range(0, len(X), batch):
            x = torch.as_tensor(np.asarray(X[i : i + batch]), dtype=dtype, device=device)
            out.append(sae.encode(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def compare_to_raw(
    sae_res: CVResult,
    raw_res: CVResult,
    n_bootstrap: int = 1000,
    n_randomizations: int = N_RANDOMIZATIONS,
    seed: int = 0,
) -> dict:
    """SAE probe vs the raw probe on the same folds: metrics, paired delta with CI, p-value."""
    nan = float("nan")
    out = {
        "bal_acc": sae_res.value.get("bal_acc", nan),
        "auroc": sae_res.value.get("auroc", nan),
        "raw_bal_acc": raw_res.value.get("bal_acc", nan),
        "raw_auroc": raw_res.value.get("auroc", nan),
        "bal_acc_ci_low": nan,
        "bal_acc_ci_high": nan,
        "delta": nan,
        "delta_ci_low": nan,
        "delta_ci_high": nan,
        "p_value": nan,
        "n": len(sae_res.y),
        "note": "; ".join(
            n for n in (sae_res.note, raw_res.note and f"raw probe: {raw_res.note}") if n
        ),
    }
    if not (sae_res.ok and raw_res.ok):
        return out
    if not np.array_equal(sae_res.folds, raw_res.folds):
        raise ValueError("SAE and raw probes were cross-validated on different folds")
    y = sae_res.y
    out["delta"] = out["bal_acc"] - out["raw_bal_acc"]
    if n_bootstrap > 0:
        ci = stats.bootstrap_ci(y, sae_res.scores, n_bootstrap, seed)
        out["bal_acc_ci_low"], out["bal_acc_ci_high"] = ci["bal_acc"]
        deltas = stats.paired_bootstrap_delta(
            y, sae_res.scores, raw_res.scores, n_bootstrap, seed + 1
        )
        out["delta_ci_low"], out["delta_ci_high"] = stats.percentile_ci(deltas)
    if n_randomizations > 0:
        out["p_value"] = stats.paired_randomization_pvalue(
            y, sae_res.scores, raw_res.scores, n_randomizations, seed + 2
        )
    return out


class _torch_threads:
    """Run torch single-threaded inside the block (2 shared cores: threads only fight)."""

    def __init__(self, n: int = 1):
        self.n = n

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)


def _train(train_sae, x, arch: str, sae_cfg, seed: int):
    if train_sae is None:
        from lib.sae import train_sae
    with _torch_threads(1):
        sae, info = train_sae(x, arch, sae_cfg, seed, progress=False)
    if hasattr(sae, "eval"):
        sae.eval()
    return sae, info


def _info(info) -> dict:
    keep = ("seconds", "steps", "epochs", "n_train")
    return {k: v for k, v in (info or {}).items() if k in keep and isinstance(v, (int, float))}


def leakage_free_cv(
    layer_data: LayerData,
    lab: Labelled,
    X_pooled: np.ndarray,
    arch: str,
    condition: str,
    sae_cfg,
    seed: int,
    train_sae=None,
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
    in_condition = np.isin(y, CONDITION_LABELS[condition])
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
        sae, info = _train(train_sae, x, arch, sae_cfg, seed + int(k))
        features[int(k)] = encode(sae, X_pooled)
        facts.append({"fold": int(k), "n_train_completions": int(len(train_pos)), **_info(info)})
    return _cross_validate_folds(lambda k: features[int(k)], y, folds, "stratified"), facts


def _raw_reference(
    run: RunDir, cfg: RunConfig, lab: Labelled, layer: int, feature: str, X: np.ndarray
) -> dict[str, CVResult]:
    """The raw probe's CV results of one layer: from the layer-profile cache when current."""
    key = _layer_key(run, cfg, lab, layer, feature)
    jpath, npath = _layer_paths(run, layer, feature)
    if _read_cached(jpath, key) is not None and npath.exists():
        res = _load_cv(npath)
        if all(m in res for m in CV_MODES):
            return res
    return {mode: cross_validate(X, lab.y, lab.scenario, mode) for mode in CV_MODES}


_LAYER_MEMO: dict = {}


def _layer_inputs(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int):
    """(layer data, pooled SAE-probe features, raw CV results) of a layer, memoised per process."""
    key = (
        str(run.root),
        layer,
        tuple(_file_stamp(run.activation_file(layer))),
        cfg.probe.sae_feature,
        _fingerprint(_labelled_stamp(lab)),
    )
    if key not in _LAYER_MEMO:
        _LAYER_MEMO.clear()
        data = read_layer(run, layer)
        X = pooled(data, lab, cfg.probe.sae_feature)
        _LAYER_MEMO[key] = (data, X, _raw_reference(run, cfg, lab, layer, cfg.probe.sae_feature, X))
    return _LAYER_MEMO[key]


class _CacheMiss(Exception):
    pass


def _sae_cell(
    run: RunDir,
    cfg: RunConfig,
    lab: Labelled,
    layer: int,
    arch: str,
    condition: str,
    leakage_free: bool,
    fold_epochs: int | None,
    n_randomizations: int,
    force: bool,
    train_sae=None,
    load_sae=None,
    cache_only: bool = False,
) -> list[dict]:
    """Every row of one grid cell: the grid SAE (both CV modes) and, if asked, leakage-free rows.

    With ``cache_only``, raises :class:`_CacheMiss` instead of computing anything.
    """
    memo: dict = {}

    def inputs():  # (layer data, pooled features, raw CV results), read only when needed
        if not memo:
            memo["v"] = _layer_inputs(run, cfg, lab, layer)
        return memo["v"]

    sae_id = cfg.sae_id(layer, arch, condition)
    path = run.sae_dir(sae_id)
    feature = cfg.probe.sae_feature
    base = {
        "sae_id": sae_id,
        "layer": layer,
        "arch": arch,
        "condition": condition,
        "feature": feature,
    }
    seed = _seed(cfg.seed, "sae", sae_id)
    nb = cfg.probe.n_bootstrap
    lab_stamp = _labelled_stamp(lab)
    act_stamp = _file_stamp(run.activation_file(layer))
    rows = []

    def cached_or(name: str, key: str, compute) -> list[dict]:
        jpath = _cache_dir(run) / f"{name}_{sae_id}.json"
        hit = None if force else _read_cached(jpath, key)
        if hit is not None:
            return hit["rows"]
        if cache_only:
            raise _CacheMiss(name)
        new, extra = compute()
        write_json(jpath, {"key": key, "rows": _jsonable(new), **extra})
        return new

    # the study's way: the grid SAE trained in 04 (on data that includes the probe's test folds)
    weights = path / "sae_weights.safetensors"
    if not weights.exists():
        if cache_only:
            raise _CacheMiss("grid")
        raw = inputs()[2]
        note = f"SAE {sae_id} not found in {run.saes}; run 04_sae_training"
        rows += [
            {
                **base,
                "cv": mode,
                "sae_source": "grid",
                "leakage_free": False,
                "n": len(lab),
                "note": note,
                "raw_bal_acc": raw[mode].value["bal_acc"],
                "raw_auroc": raw[mode].value["auroc"],
            }
            for mode in CV_MODES
        ]
    else:

        def grid_rows():
            loader = load_sae
            if loader is None:
                from lib.sae import load_sae as loader
            _, X, raw = inputs()
            F = encode(loader(path), X)
            out = []
            for mode in CV_MODES:
                res = cross_validate(F, lab.y, lab.scenario, mode)
                cmp = compare_to_raw(res, raw[mode], nb, n_randomizations, _seed(seed, mode))
                out.append(
                    {
                        **base,
                        "cv": mode,
                        "sae_source": "grid",
                        "leakage_free": False,
                        "d_sae": F.shape[1],
                        "epochs": cfg.sae.epochs,
                        **cmp,
                    }
                )
            return out, {}

        key = _fingerprint(
            CACHE_VERSION,
            "grid",
            sae_id,
            lab_stamp,
            cfg.seed,
            nb,
            n_randomizations,
            feature,
            _file_stamp(weights),
            act_stamp,
        )
        rows += cached_or("sae", key, grid_rows)
    if not leakage_free:
        return rows

    epochs = int(fold_epochs or cfg.sae.epochs)
    sae_cfg = cfg.sae.model_copy(update={"epochs": epochs})
    cfg_stamp = sae_cfg.model_dump(mode="json")
    if epochs != cfg.sae.epochs:
        # the study's data choice at the fold SAEs' epochs: one SAE on every labelled completion
        # of the condition (test completions included), so leakage is not confused with training length
        def refit_rows():
            layer_data, X, raw = inputs()
            idx = lab.select(condition)
            if len(idx) < 2:
                note = f"condition {condition}: {len(idx)} completion(s) to train an SAE on"
                return [
                    {
                        **base,
                        "cv": "stratified",
                        "sae_source": "refit_all",
                        "leakage_free": False,
                        "n": len(lab),
                        "note": note,
                    }
                ], {}
            sae, info = _train(
                train_sae,
                training_vectors(layer_data, lab.rows[idx], sae_cfg.train_on),
                arch,
                sae_cfg,
                _seed(seed, "refit_all"),
            )
            res = cross_validate(encode(sae, X), lab.y, lab.scenario, "stratified")
            cmp = compare_to_raw(
                res, raw["stratified"], nb, n_randomizations, _seed(seed, "refit_all")
            )
            return [
                {
                    **base,
                    "cv": "stratified",
                    "sae_source": "refit_all",
                    "leakage_free": False,
                    "d_sae": cfg.sae.expansion_factor * X.shape[1],
                    "epochs": epochs,
                    **cmp,
                }
            ], {"sae": _info(info)}

        key = _fingerprint(
            CACHE_VERSION,
            "refit_all",
            sae_id,
            lab_stamp,
            cfg.seed,
            nb,
            n_randomizations,
            feature,
            cfg_stamp,
            act_stamp,
        )
        rows += cached_or("sae_refit", key, refit_rows)

    def fold_rows():
        layer_data, X, raw = inputs()
        res, facts = leakage_free_cv(
            layer_data, lab, X, arch, condition, sae_cfg, _seed(seed, "per_fold"), train_sae
        )
        cmp = compare_to_raw(res, raw["stratified"], nb, n_randomizations, _seed(seed, "per_fold"))
        return [
            {
                **base,
                "cv": "stratified",
                "sae_source": "per_fold",
                "leakage_free": True,
                "d_sae": cfg.sae.expansion_factor * X.shape[1],
                "epochs": epochs,
                **cmp,
            }
        ], {"folds": facts}

    key = _fingerprint(
        CACHE_VERSION,
        "per_fold",
        sae_id,
        lab_stamp,
        cfg.seed,
        nb,
        n_randomizations,
        feature,
        cfg_stamp,
        act_stamp,
    )
    rows += cached_or("sae_lf", key, fold_rows)
    return rows


def sae_probes(
    run: RunDir,
    cfg: RunConfig,
    progress: bool = True,
    force: bool = False,
    leakage_free: bool | None = None,
    fold_epochs: int | None = None,
    n_randomizations: int = N_RANDOMIZATIONS,
    n_jobs: int = 1,
    train_sae=None,
    load_sae=None,
) -> pd.DataFrame:
    """Probe every SAE of the grid against its layer's raw probe; write ``results/sae_probes.csv``.

    Rows of ``results/sae_probes.csv`` (returned; columns :data:`SAE_COLUMNS`), by ``sae_source``:

    * ``grid`` (``leakage_free`` False): the SAE trained in 04 (the study's way; it saw the
      probe's test completions); both CV modes.
    * ``per_fold`` (``leakage_free`` True): SAEs retrained inside each stratified fold on that
      fold's training completions (:func:`leakage_free_cv`), ``fold_epochs`` epochs (default
      ``cfg.sae.epochs``); ``cv`` is ``stratified`` only.

    When ``fold_epochs`` differs from ``cfg.sae.epochs``, one more SAE per cell is trained on all
    labelled completions of the condition with ``fold_epochs`` epochs (``refit_all``), the matched
    reference against which ``per_fold`` measures leakage alone; it appears only in
    ``results/sae_leakage.csv`` (:func:`leakage_comparison`, written whenever per-fold SAEs ran).

    ``leakage_free`` defaults to ``cfg.probe.leakage_free``. ``p_holm``: Holm over the SAEs of each
    ``(cv, sae_source)`` family; ``significant``: ``p_holm < 0.05`` and ``delta > 0``. Cached per
    SAE in ``cache/probing/``; ``force`` recomputes. ``n_jobs`` > 1 runs grid cells in parallel
    processes. ``train_sae``/``load_sae`` default to :mod:`lib.sae`'s (arguments exist for tests).
    """
    leakage_free = cfg.probe.leakage_free if leakage_free is None else leakage_free
    lab = labelled_rows(run, cfg)
    grid = sorted(cfg.sae_grid(), key=lambda c: c[0])  # by layer, so each layer is read once
    args = [
        (
            run,
            cfg,
            lab,
            layer,
            arch,
            cond,
            leakage_free,
            fold_epochs,
            n_randomizations,
            force,
            train_sae,
            load_sae,
        )
        for layer, arch, cond in grid
    ]
    parts: dict[int, list[dict]] = {}
    if not force:  # what the cache already holds needs no worker
        for i, a in enumerate(args):
            try:
                parts[i] = _sae_cell(*a, cache_only=True)
            except _CacheMiss:
                pass
    todo = [i for i in range(len(args)) if i not in parts]
    if n_jobs == 1 or len(todo) <= 1:
        for i in _progress(todo, len(todo), "SAE probes", progress):
            parts[i] = _sae_cell(*args[i])
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_sae_cell)(*args[i]) for i in todo
        )
        for i, rows in zip(todo, _progress(gen, len(todo), "SAE probes", progress), strict=True):
            parts[i] = rows
    parts = [parts[i] for i in range(len(args))]
    _LAYER_MEMO.clear()
    df = pd.DataFrame([r for part in parts for r in part]).reindex(columns=SAE_COLUMNS)
    df["note"] = df["note"].fillna("")
    df["leakage_free"] = df["leakage_free"].astype(bool)
    for _, idx in df.groupby(["cv", "sae_source"]).groups.items():
        df.loc[idx, "p_holm"] = stats.holm(df.loc[idx, "p_value"].to_numpy(dtype=float))
    df["significant"] = (df["p_holm"] < 0.05) & (df["delta"] > 0)
    leak_path = run.results / "sae_leakage.csv"
    if (df["sae_source"] == "per_fold").any():
        atomic_write_text(leak_path, leakage_comparison(df).to_csv(index=False))
    else:
        leak_path.unlink(missing_ok=True)
    probes = df[df["sae_source"] != "refit_all"].reset_index(drop=True)
    atomic_write_text(run.results / "sae_probes.csv", probes.to_csv(index=False))
    return probes


def read_sae_probes(run: RunDir) -> pd.DataFrame:
    """``results/sae_probes.csv``: grid SAEs (``leakage_free`` False) and per-fold SAEs (True)."""
    return _read_results(run, "sae_probes.csv")


def read_sae_leakage(run: RunDir) -> pd.DataFrame | None:
    """``results/sae_leakage.csv`` (:func:`leakage_comparison`); None when not computed."""
    path = run.results / "sae_leakage.csv"
    return pd.read_csv(path) if path.exists() else None


def sae_wins(sae: pd.DataFrame) -> pd.DataFrame:
    """SAEs beating their layer's raw probe, counted the study's way and by significance.

    Per ``(cv, sae_source)``: ``beats_raw`` counts any positive delta (the study's count);
    ``significant_wins`` needs ``p_holm < 0.05`` and ``delta > 0``; ``significant_losses``
    ``p_holm < 0.05`` and ``delta < 0``.
    """
    rows = []
    for (cv, source), d in sae.dropna(subset=["delta"]).groupby(["cv", "sae_source"], sort=False):
        rows.append(
            {
                "cv": cv,
                "sae_source": source,
                "n_saes": len(d),
                "beats_raw": int((d.delta > 0).sum()),
                "significant_wins": int(((d.p_holm < 0.05) & (d.delta > 0)).sum()),
                "significant_losses": int(((d.p_holm < 0.05) & (d.delta < 0)).sum()),
                "mean_delta": float(d.delta.mean()),
                "best_bal_acc": float(d.bal_acc.max()),
            }
        )
    return pd.DataFrame(rows)


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
