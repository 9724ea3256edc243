"""The study's linear probe and its cross-validation, in the two modes the book reports.

The probe is the study's recipe: ``StandardScaler`` then
``LogisticRegression(class_weight="balanced", max_iter=5000)`` (L2, C=1, lbfgs), fitted on one
vector per completion (a pooled residual-stream vector, or SAE features of one).

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
    The probe of this mode is fitted with the exact solver of :mod:`lib.probing.solver` (the same
    estimator as sklearn's pipeline, converged further); see :data:`SOLVERS`.

A deception monitor needs a threshold chosen before it sees the data it is judged on. With
``monitor=True``, :func:`cross_validate` chooses, inside every training fold, the threshold that
flags 1% of that fold's honest completions (:func:`monitor_thresholds`: the 99th percentile of
their out-of-fold scores under an inner cross-validation of the training fold), and the test
fold is flagged with it: ``recall_at_1fpr`` is the share of deceptive test completions caught,
``realised_fpr`` the share of honest ones flagged (near 1%, not at most 1%). The threshold taken
from the evaluated scores themselves is kept only as ``oracle_recall_at_1fpr``, a point of the
ROC curve. ``pooled`` gives the pooled value of every metric next to ``value``.

Two probes on the same completions and folds are compared completion by completion
(:func:`compare_probes`): the difference of their balanced accuracies with a paired bootstrap CI
and a two-sided paired randomisation p-value.

Data that cannot be cross-validated (fewer than 5 completions of a class, a held-out scenario
leaving one class to train on) never raises inside a stage: it gets NaN metrics and a sentence
in ``note``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from lib.core import stats
from lib.core.fileio import atomic_write_bytes
from lib.core.runtime import blas_threads
from lib.core.vocabulary import CLASS_NAMES, CV_MODES
from lib.probing.solver import (
    C_STUDY,
    ProbeInputError,
    balanced_weights,
    fit_logistic_many,
    fold_basis,
)

N_SPLITS = 5
MIN_PER_CLASS = 5  # completions of each class a probe needs (one per stratified fold)
CV_SEED = 42
SOLVERS = {"stratified": "sklearn", "scenario": "exact"}  # who fits the reported probe of each mode
METRICS = stats.METRICS
N_RANDOMIZATIONS = 10_000


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
    oracle_recall_at_1fpr is pooled. ``scenario``: all pooled.
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
    oracle = pooled_vals["oracle_recall_at_1fpr"]
    return {"bal_acc": ba, "auroc": au, "oracle_recall_at_1fpr": oracle}


def pooled_columns(Y: np.ndarray, S: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric on the pooled out-of-fold scores, column by column."""
    return {
        "bal_acc": stats.balanced_accuracy_columns(Y, S),
        "auroc": stats.auroc_columns(Y, S),
        "oracle_recall_at_1fpr": stats.recall_at_fpr_columns(Y, S),
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
    thresholds: np.ndarray | None = None  # monitor threshold of each completion's test fold
    groups: np.ndarray | None = None  # scenario of each completion (set where it is known)

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


def result_from_scores(mode: str, y: np.ndarray, scores: np.ndarray, folds: np.ndarray) -> CVResult:
    """The :class:`CVResult` of out-of-fold ``scores`` (metrics computed as ``mode`` defines them)."""
    fm = {"bal_acc": [], "auroc": []}
    for k in np.unique(folds):
        te = folds == k
        yt, st = y[te], scores[te]
        if (
            len(np.unique(yt)) == 2
        ):  # lib.core.stats equals sklearn's scores (tested), without its overhead
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


def cross_validate_folds(
    features, y: np.ndarray, folds: np.ndarray, mode: str, solver: str = "sklearn"
) -> CVResult:
    """Fit the probe per fold; ``features(k)`` gives the [n, d] matrix used in fold k.

    ``solver="sklearn"``: the study's pipeline as it is. ``solver="exact"``: the same estimator
    solved by :func:`fit_logistic_many` in the exact training-span basis.
    """
    if solver not in ("sklearn", "exact"):
        raise ValueError(f"solver={solver!r}; allowed: 'sklearn', 'exact'")
    scores = np.full(len(y), np.nan)
    with blas_threads(1):
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
    return result_from_scores(mode, y, scores, folds)


def monitor_thresholds(
    features,
    y: np.ndarray,
    folds: np.ndarray,
    fpr: float = stats.FPR_LEVEL,
    inner_splits: int = 5,
    seed: int = CV_SEED,
    C: dict[int, float] | None = None,
) -> np.ndarray:
    """Per completion, the threshold its test fold is flagged with, chosen on training data only.

    For each outer fold, the training completions get out-of-fold scores from an inner
    ``StratifiedKFold(inner_splits)`` (the study's estimator, exact solver); the threshold is the
    ``1 - fpr`` quantile (``method="higher"``) of the inner scores of the *honest* training
    completions, i.e. what a monitor calibrated on its own training data would use.
    ``features(k)`` gives the ``[n, d]`` matrix of fold ``k``; ``C``: each outer fold's ``C``
    (a tuned probe, :func:`lib.probing.solver.oof_scores_tuned`), else the study's C=1.
    """
    y = np.asarray(y)
    out = np.full(len(y), np.nan)
    with blas_threads(1):
        for k in np.unique(folds):
            tr = np.flatnonzero(folds != k)
            X, ytr = features(k), y[tr]
            splits = min(inner_splits, int(np.bincount(ytr, minlength=2).min()))
            inner = np.full(len(tr), np.nan)
            if splits >= 2:
                splitter = StratifiedKFold(splits, shuffle=True, random_state=seed)
                for itr, ite in splitter.split(np.zeros((len(tr), 1)), ytr):
                    Z, Zt = fold_basis(X[tr[itr]], X[tr[ite]])
                    col = ytr[itr][:, None]
                    c = C_STUDY if C is None else C[int(k)]
                    beta = fit_logistic_many(Z, col, balanced_weights(col), c)
                    inner[ite] = Zt @ beta[:-1, 0] + beta[-1, 0]
            honest = inner[(ytr == 0) & np.isfinite(inner)]
            if honest.size:
                out[folds == k] = np.quantile(honest, 1 - fpr, method="higher")
    return out


def within_groups(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict:
    """Mean balanced accuracy and AUROC *within* each group that holds both classes.

    Pooling the scores of separately fitted probes (one per held-out scenario) mixes their
    offsets; the mean within held-out scenario asks only "does each probe rank its own scenario's
    completions". Returns ``bal_acc``, ``auroc`` and ``n_groups`` (groups with both classes).
    """
    y, s, g = np.asarray(y), np.asarray(scores, float), np.asarray(groups)
    ba, au = [], []
    for name in np.unique(g):
        m = g == name
        if len(np.unique(y[m])) == 2:
            ba.append(stats.balanced_accuracy(y[m], s[m]))
            au.append(stats.auroc(y[m], s[m]))
    nan = float("nan")
    return {
        "bal_acc": float(np.mean(ba)) if ba else nan,
        "auroc": float(np.mean(au)) if au else nan,
        "n_groups": len(ba),
    }


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    mode: str = "stratified",
    seed: int = CV_SEED,
    solver: str | None = None,
    monitor: bool = False,
    inner_splits: int = 5,
) -> CVResult:
    """Out-of-fold decision scores and metrics of the study's probe on ``X`` [n, d], labels ``y``.

    ``groups`` (the scenario of each completion) is needed for ``mode="scenario"``. ``solver``
    defaults to :data:`SOLVERS` of the mode: sklearn's own pipeline for ``stratified`` (the
    study's numbers), the exact solver for ``scenario`` (same estimator, converged further, and
    the same computation as its permutation null; 9+ sklearn refits per probe at d=2048 would
    dominate the stage's time). ``monitor`` also chooses each fold's 1%-FPR threshold on its
    training data (:func:`monitor_thresholds`). Data that cannot be cross-validated returns a
    result with NaN metrics and ``note`` set; it never raises.
    """
    y = np.asarray(y).astype(np.int64)
    problem = fold_problem(y, groups, mode)
    if problem:
        return CVResult.failed(mode, y, problem)
    folds = cv_folds(y, groups, mode, seed)
    res = cross_validate_folds(lambda k: X, y, folds, mode, solver or SOLVERS[mode])
    if monitor:
        res.thresholds = monitor_thresholds(lambda k: X, y, folds, inner_splits=inner_splits)
    return res


def bootstrap_plan(
    y: np.ndarray, groups: np.ndarray | None, mode: str, n_boot: int, seed: int
) -> tuple[np.ndarray, str]:
    """The resampling that matches a CV mode's question, as ``(W [n_boot, n], ci_method)``:
    completions within class for ``stratified`` folds (``"completion"``); whole scenarios for
    ``scenario`` folds, whose question is an unseen scenario (``"cluster"``)."""
    rng = np.random.default_rng(seed)
    if mode == "scenario":
        return stats.cluster_multiplicities(groups, n_boot, rng), "cluster"
    return stats.stratified_multiplicities(y, n_boot, rng), "completion"


# ----- saving cross-validation results -----------------------------------------------------------
def save_cv(path: Path, results: dict[str, CVResult]) -> None:
    """Out-of-fold scores, folds, labels, thresholds and metrics of each mode, in one ``.npz``."""
    arrays = {}
    for mode, r in results.items():
        arrays[f"{mode}__scores"] = r.scores
        arrays[f"{mode}__folds"] = r.folds
        arrays[f"{mode}__y"] = r.y
        if r.thresholds is not None:
            arrays[f"{mode}__thresholds"] = r.thresholds
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


def load_cv(path: Path) -> dict[str, CVResult]:
    """What :func:`save_cv` wrote, by CV mode."""
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
                z[f"{mode}__thresholds"] if f"{mode}__thresholds" in z.files else None,
            )
    return out


# ----- two probes on the same folds --------------------------------------------------------------
def compare_probes(
    probe: CVResult,
    reference: CVResult,
    n_bootstrap: int = 1000,
    n_randomizations: int = N_RANDOMIZATIONS,
    seed: int = 0,
    reference_name: str = "reference",
) -> dict:
    """``probe`` against ``reference`` on the same completions and folds.

    Returns the probe's ``bal_acc``/``auroc`` with the balanced accuracy's bootstrap CI, the
    reference's as ``<reference_name>_bal_acc``/``_auroc``, ``delta`` = probe minus reference
    balanced accuracy with a paired stratified bootstrap CI (``delta_ci_low``/``_high``) and a
    two-sided paired randomisation ``p_value``, ``n`` and ``note`` (why a value is NaN).
    """
    nan = float("nan")
    ref = reference_name
    out = {
        "bal_acc": probe.value.get("bal_acc", nan),
        "auroc": probe.value.get("auroc", nan),
        f"{ref}_bal_acc": reference.value.get("bal_acc", nan),
        f"{ref}_auroc": reference.value.get("auroc", nan),
        "bal_acc_ci_low": nan,
        "bal_acc_ci_high": nan,
        "delta": nan,
        "delta_ci_low": nan,
        "delta_ci_high": nan,
        "p_value": nan,
        "n": len(probe.y),
        "note": "; ".join(
            n for n in (probe.note, reference.note and f"{ref} probe: {reference.note}") if n
        ),
    }
    if not (probe.ok and reference.ok):
        return out
    if not np.array_equal(probe.folds, reference.folds):
        raise ValueError(f"the probe and the {ref} probe were cross-validated on different folds")
    y = probe.y
    out["delta"] = out["bal_acc"] - out[f"{ref}_bal_acc"]
    if n_bootstrap > 0:
        ci = stats.bootstrap_ci(y, probe.scores, n_bootstrap, seed)
        out["bal_acc_ci_low"], out["bal_acc_ci_high"] = ci["bal_acc"]
        deltas = stats.paired_bootstrap_delta(
            y, probe.scores, reference.scores, n_bootstrap, seed + 1
        )
        out["delta_ci_low"], out["delta_ci_high"] = stats.percentile_ci(deltas)
    if n_randomizations > 0:
        out["p_value"] = stats.paired_randomization_pvalue(
            y, probe.scores, reference.scores, n_randomizations, seed + 2
        )
    return out
