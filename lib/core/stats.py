"""Metrics, bootstrap confidence intervals, permutation p-values and Holm's correction.

Everything here works on plain numpy arrays: labels ``y`` (1 = deceptive, 0 = honest), real-valued
classifier ``scores`` (a probe's decision function; the predicted class is ``scores > 0``, as in
sklearn's ``LogisticRegression.predict``) and, for resampling, *multiplicity matrices*.

A multiplicity matrix ``W`` of shape ``[B, n]`` says how often each of ``n`` completions appears in
each of ``B`` bootstrap resamples. Every metric has a weighted form that takes ``W``, so one
resampling plan serves several metrics and two classifiers (a paired bootstrap uses the same
``W`` for both). The bootstrap is stratified: each resample keeps the number of completions of
each class (or other stratum), so no resample loses a class.
"""

from __future__ import annotations

import warnings

import numpy as np

#: metrics of one score vector; ``oracle_recall_at_1fpr`` picks its threshold on the very scores
#: it is scored on (a point of the ROC curve, not a monitor's operating point)
METRICS = ("bal_acc", "auroc", "oracle_recall_at_1fpr")
FPR_LEVEL = 0.01


# ----- metrics ---------------------------------------------------------------------------------
def _as_weights(w: np.ndarray | None, n: int) -> np.ndarray:
    """``None`` -> one unit-weight row; a vector -> one row; a matrix stays."""
    if w is None:
        return np.ones((1, n))
    w = np.asarray(w, dtype=float)
    return w[None, :] if w.ndim == 1 else w


def balanced_accuracy(
    y: np.ndarray, scores: np.ndarray, w: np.ndarray | None = None
) -> np.ndarray | float:
    """Mean of the recall of each class; the prediction is ``scores > 0``.

    With ``w`` ``[B, n]`` returns ``[B]``; a resample without one of the two classes (possible in
    a cluster bootstrap) gets NaN, which :func:`percentile_ci` leaves out.
    """
    y = np.asarray(y)
    W = _as_weights(w, len(y))
    correct = ((np.asarray(scores) > 0) == (y == 1)).astype(float)
    recall = []
    for m in (y == 1, y == 0):
        tot = W[:, m].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall.append(np.where(tot > 0, (W[:, m] * correct[m]).sum(1) / tot, np.nan))
    out = 0.5 * (recall[0] + recall[1])
    return float(out[0]) if w is None or np.ndim(w) == 1 else out


def balanced_accuracy_labels(y: np.ndarray, pred: np.ndarray, w: np.ndarray | None = None):
    """Balanced accuracy of predicted labels ``pred`` (binary or multiclass).

    Classes absent from a resample are left out of its mean (as sklearn leaves out classes absent
    from ``y_true``). Returns a float without ``w``, else one value per row of ``w``.
    """
    y, pred = np.asarray(y), np.asarray(pred)
    W = _as_weights(w, len(y))
    correct = (y == pred).astype(float)
    recalls = []
    for c in np.unique(y):
        m = y == c
        tot = W[:, m].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(tot > 0, (W[:, m] * correct[m]).sum(1) / tot, np.nan))
    with warnings.catch_warnings():  # a resample holding no class at all is NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(np.vstack(recalls), axis=0) if recalls else np.full(W.shape[0], np.nan)
    return float(out[0]) if w is None or np.ndim(w) == 1 else out


def auroc(y: np.ndarray, scores: np.ndarray, w: np.ndarray | None = None):
    """Area under the ROC curve: P(score of a deceptive > score of an honest), ties count 1/2.

    NaN when a class is missing. With ``w`` ``[B, n]``, the weighted Mann-Whitney form
    ``sum_ij w_i w_j [s_i > s_j] / (sum_i w_i sum_j w_j)`` over positives i and negatives j.
    """
    y, s = np.asarray(y), np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    W = _as_weights(w, len(y))
    if len(pos) == 0 or len(neg) == 0:
        out = np.full(W.shape[0], np.nan)
    else:
        cmp = (pos[:, None] > neg[None, :]).astype(float) + 0.5 * (pos[:, None] == neg[None, :])
        wp, wn = W[:, y == 1], W[:, y == 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = ((wp @ cmp) * wn).sum(1) / (wp.sum(1) * wn.sum(1))
    return float(out[0]) if w is None or np.ndim(w) == 1 else out


def auroc_within_groups(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """AUROC over (positive, negative) pairs of the same group only (ties count one half); NaN
    when no group holds both classes. The point estimate only: notebook 11's controls, which need
    a cluster-bootstrap interval of it too, use
    :func:`lib.probing.wording_controls.within_group_auroc`."""
    y, s, groups = np.asarray(y), np.asarray(scores, float), np.asarray(groups)
    num = den = 0.0
    for g in np.unique(groups):
        m = groups == g
        pos, neg = s[m & (y == 1)], s[m & (y == 0)]
        num += (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        den += len(pos) * len(neg)
    return float(num / den) if den else float("nan")


def recall_at_fpr(
    y: np.ndarray, scores: np.ndarray, fpr: float = FPR_LEVEL, w: np.ndarray | None = None
):
    """The largest recall of deceptive completions at a false-positive rate of at most ``fpr``.

    A threshold that flags completions with ``score >= t`` may pass at most
    ``k = floor(fpr * n_honest)`` honest completions, so the best threshold sits just above the
    ``(k+1)``-th highest honest score ``v``, and the recall is the share of deceptive scores
    strictly above ``v``. (This equals sklearn's ``roc_curve`` TPR at the largest FPR <= ``fpr``.)
    With 1% FPR and fewer than 100 honest completions, ``k = 0``: recall above every honest score.
    """
    y, s = np.asarray(y), np.asarray(scores, dtype=float)
    W = _as_weights(w, len(y))
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        out = np.full(W.shape[0], np.nan)
    else:
        order = np.argsort(-neg, kind="stable")
        neg_sorted = neg[order]
        wn = W[:, y == 0][:, order]
        wp = W[:, y == 1]
        n_neg = wn.sum(1)
        k = np.floor(fpr * n_neg + 1e-9)
        cum = np.cumsum(wn, axis=1)
        reach = cum >= (k + 1)[:, None]
        idx = np.argmax(reach, axis=1)
        v = np.where(reach.any(1), neg_sorted[idx], -np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (wp * (pos[None, :] > v[:, None])).sum(1) / wp.sum(1)
    return float(out[0]) if w is None or np.ndim(w) == 1 else out


def binary_metrics(y: np.ndarray, scores: np.ndarray, w: np.ndarray | None = None) -> dict:
    """``bal_acc``, ``auroc`` and ``oracle_recall_at_1fpr`` of one score vector (optionally
    resampled)."""
    return {
        "bal_acc": balanced_accuracy(y, scores, w),
        "auroc": auroc(y, scores, w),
        "oracle_recall_at_1fpr": recall_at_fpr(y, scores, FPR_LEVEL, w),
    }


# ----- column-wise metrics (many label/score vectors at once, for permutation nulls) -----------
def balanced_accuracy_columns(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each column pair of ``Y`` [n, P] (binary) and scores ``S`` [n, P]."""
    pred = S > 0
    pos = Y == 1
    n_pos, n_neg = pos.sum(0), (~pos).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (pred & pos).sum(0) / n_pos
        tnr = (~pred & ~pos).sum(0) / n_neg
    return 0.5 * (tpr + tnr)


def auroc_columns(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """AUROC of each column via mid-ranks (the Mann-Whitney U statistic)."""
    from scipy.stats import rankdata

    ranks = rankdata(S, axis=0)
    pos = Y == 1
    n_pos, n_neg = pos.sum(0), (~pos).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * pos).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def recall_at_fpr_columns(Y: np.ndarray, S: np.ndarray, fpr: float = FPR_LEVEL) -> np.ndarray:
    """:func:`recall_at_fpr` of each column."""
    return np.array([recall_at_fpr(Y[:, j], S[:, j], fpr) for j in range(Y.shape[1])])


# ----- resampling plans ------------------------------------------------------------------------
def stratified_multiplicities(
    strata: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``[n_boot, n]`` counts of a bootstrap that resamples within each stratum separately."""
    strata = np.asarray(strata)
    W = np.zeros((n_boot, len(strata)), dtype=np.int32)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        W[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return W


def cluster_multiplicities(
    clusters: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``[n_boot, n]`` counts of a cluster bootstrap: each resample draws as many clusters as there
    are, with replacement, and every completion counts as often as its cluster was drawn.

    This is the resampling that matches a question about *unseen clusters* (held-out scenarios):
    completions of one scenario share its quirks, so resampling completions alone understates
    the spread.
    """
    names, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    draws = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=n_boot)
    return draws[:, inverse].astype(np.int32)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (NaN samples ignored; NaN if none are finite)."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ci(
    y: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """95% percentile CIs of the three binary metrics of pooled out-of-fold ``scores``.

    Completions are resampled with replacement within each class (a stratified bootstrap), so
    every resample has the observed numbers of deceptive and honest completions.
    """
    if n_boot <= 0:
        return {m: (float("nan"), float("nan")) for m in METRICS}
    W = stratified_multiplicities(y, n_boot, np.random.default_rng(seed))
    return {m: percentile_ci(v, level) for m, v in binary_metrics(y, scores, W).items()}


def resamples_for_family(n_boot: int, family_size: int, alpha: float = 0.05) -> int:
    """At least ``n_boot`` resamples, and ``20 x family_size / alpha``: the smallest bootstrap
    p-value (``2 / (1 + B)``) is then a tenth of Holm's strictest threshold ``alpha /
    family_size``, so a real difference is not lost to the resolution of the p-value (with
    ``2.5 x family / alpha`` it could only just pass)."""
    return max(int(n_boot), int(np.ceil(20 * family_size / alpha)))


#: the equivalence margin of every verdict: a difference of balanced accuracy within +/- 2 points
EQUIVALENCE_MARGIN = 0.02
VERDICT_CLASSES = ("better", "worse", "equivalent", "inconclusive")


def verdict_class(
    delta: float, p_holm: float, eq_low: float, eq_high: float, margin: float = EQUIVALENCE_MARGIN
) -> str:
    """The book's one rule for a paired comparison of A with B: ``better`` / ``worse`` when the
    two-sided test survives Holm within its family (``p_holm < 0.05``), else ``equivalent`` when
    the 90% interval of the difference lies inside ``[-margin, margin]`` (two one-sided tests at
    5%, per comparison), else ``inconclusive``: the data can say neither. NaN input: ``untested``."""
    if not all(np.isfinite(v) for v in (delta, p_holm)):
        return "untested"
    if p_holm < 0.05:
        return "better" if delta > 0 else "worse"
    if np.isfinite(eq_low) and np.isfinite(eq_high) and -margin < eq_low and eq_high < margin:
        return "equivalent"
    return "inconclusive"


def leave_one_cluster_out(clusters: np.ndarray) -> np.ndarray:
    """``[G, n]`` weights: row ``g`` keeps every completion except those of the ``g``-th cluster
    (clusters in sorted order), the jackknife's resampling plan."""
    names, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    return (inverse[None, :] != np.arange(len(names))[:, None]).astype(np.int32)


def jackknife_t(
    point: float,
    leave_out: np.ndarray,
    level: float = 0.95,
    extra_var: tuple[tuple[float, int], ...] = (),
    var_factor: float = 1.0,
) -> dict:
    """A t-interval from a delete-one-cluster jackknife: the cluster-level design the held-out
    scenario comparisons need when clusters are few.

    ``point`` is the statistic on all clusters and ``leave_out`` its ``G`` values with one cluster
    left out. The jackknife variance ``(G-1)/G * sum (t_(-g) - mean)^2`` has ``G - 1`` degrees of
    freedom; ``var_factor`` multiplies it (the fit-variance correction of
    :func:`cv_fit_inflation`); ``extra_var`` adds independent terms ``(variance, df)`` (a probe's
    seed spread), and the degrees of freedom of the sum are Welch-Satterthwaite's. Returns
    ``se``, ``df``, the ``level`` interval (``ci_low``, ``ci_high``), the 90% interval (``eq_low``, ``eq_high``, for
    the equivalence test) and the two-sided ``p_value`` of "the statistic is 0".

    Why not the percentile cluster bootstrap: with 9 clusters it covers 83-88% at nominal 95%
    (measured, :mod:`lib.probing.power`), because a resample of 9 clusters repeats some and drops
    about a third, so its spread is that of a smaller experiment's, and percentiles carry no
    small-sample correction. The jackknife's t with ``G - 1`` df does.
    """
    from scipy import stats as sps  # lazy: scipy's import costs 0.3 s, needed by cluster designs

    vals = np.asarray(leave_out, dtype=float)
    vals = vals[np.isfinite(vals)]
    g = vals.size
    nan = float("nan")
    out = dict.fromkeys(("se", "ci_low", "ci_high", "eq_low", "eq_high", "p_value"), nan)
    out["df"] = nan
    if g < 2 or not np.isfinite(point):
        return out
    terms = [(var_factor * (g - 1) / g * float(np.sum((vals - vals.mean()) ** 2)), g - 1)]
    terms += [(float(v), int(d)) for v, d in extra_var if np.isfinite(v) and v > 0 and d > 0]
    var = sum(v for v, _ in terms)
    if var <= 0:
        return out
    df = var**2 / sum(v**2 / d for v, d in terms)
    se = float(np.sqrt(var))
    out.update(se=se, df=float(df))
    for lo, hi, lvl in (("ci_low", "ci_high", level), ("eq_low", "eq_high", 0.90)):
        q = float(sps.t.ppf(0.5 + lvl / 2, df))
        out[lo], out[hi] = point - q * se, point + q * se
    out["p_value"] = float(2 * sps.t.sf(abs(point) / se, df))
    return out


def split_sample_peak(
    y: np.ndarray, scores: np.ndarray, cluster: np.ndarray | None, rng: np.random.Generator
) -> dict:
    """The best layer's balanced accuracy estimated on data not used to choose it.

    ``scores`` ``[L, n]``: out-of-fold scores of ``L`` layers. The completions are split in two
    halves (whole ``cluster`` s when given, else completions within each class); the layer best
    on one half is scored on the other, both ways, and the two honest estimates are averaged.
    Returns ``bal_acc`` and the two chosen layer indices (``chosen``). A split of clusters is
    drawn again (up to 50 times) until both halves hold both classes; when none does (too few
    clusters with both labels) or no layer can be scored, ``bal_acc`` is NaN and ``chosen``
    empty."""
    y = np.asarray(y)
    nan: dict = {"bal_acc": float("nan"), "chosen": ()}
    for _ in range(50 if cluster is not None else 1):
        if cluster is not None:
            names = np.unique(cluster)
            first = rng.permutation(names)[: len(names) // 2]
            half = np.isin(cluster, first)
        else:
            half = np.zeros(len(y), bool)
            for c in (0, 1):
                idx = np.flatnonzero(y == c)
                half[rng.permutation(idx)[: len(idx) // 2]] = True
        if all(len(np.unique(y[m])) == 2 for m in (half, ~half)):
            break
    else:
        return nan
    estimates, chosen = [], []
    for pick, score in ((half, ~half), (~half, half)):
        acc = np.array([balanced_accuracy(y[pick], s[pick]) for s in scores], dtype=float)
        if not np.isfinite(acc).any():
            return nan
        best = int(np.nanargmax(acc))
        chosen.append(best)
        estimates.append(balanced_accuracy(y[score], scores[best][score]))
    return {"bal_acc": float(np.nanmean(estimates)), "chosen": tuple(chosen)}


def best_set_pvalues(
    y: np.ndarray,
    scores: np.ndarray,
    clusters: np.ndarray | None = None,
    W: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    fit_inflation: float = 1.0,
) -> np.ndarray:
    """Which of ``L`` probes are significantly below another, with the family-wise error rate
    of all ``L (L - 1) / 2`` pairwise comparisons held at alpha: ``[L]`` p-values, probe ``j``
    leaving the "not below the best" set when its p-value is below alpha.

    ``p_j`` is the smallest adjusted p-value of a comparison in which another probe ``i`` has the
    higher balanced accuracy. Adjusted: with completions resampled within class (``W`` or
    ``n_boot`` draws), a max-t over all pairs (each difference studentised by its bootstrap SD;
    ``p_ij`` the share of resamples whose largest centred |t| reaches ``t_ij``, which keeps the
    correlation of the pairs); with ``clusters`` (held-out scenarios), Holm over the pairs'
    jackknife t p-values (:func:`jackknife_t`). Since every exclusion needs a rejected pair, the
    truly best probe stays with probability ``>= 1 - alpha``, and when all probes are equally
    good one leaves in about alpha of experiments (simulated: 2-7%), whichever probe the data
    make look best. ``fit_inflation`` (:func:`cv_fit_inflation`) multiplies every pair's
    variance: resampling completions with the out-of-fold scores held fixed leaves out how much
    the probes' fits themselves vary, and equal probes fitted by CV are then excluded far more
    often than alpha (simulated with real fits). (Testing every probe against the *sample*
    maximum ignores that it was chosen on the same data: with 8 equal layers that excludes one in 8-31% of runs; the numbers are in
    ``tests/benchmarks/results/power.csv``, from :mod:`lib.probing.power`.)"""
    y = np.asarray(y)
    S = np.atleast_2d(scores)
    k = len(S)
    if k < 2:
        return np.full(k, np.nan if k == 0 else 1.0)
    point = np.array([balanced_accuracy(y, s) for s in S])
    i_idx, j_idx = np.triu_indices(k, 1)
    delta = point[i_idx] - point[j_idx]
    if clusters is not None:
        L = leave_one_cluster_out(clusters)
        left = np.stack([balanced_accuracy(y, s, L) for s in S], axis=1)  # [G, k]
        raw = np.array(
            [
                jackknife_t(d, left[:, i] - left[:, j], var_factor=fit_inflation)["p_value"]
                for d, i, j in zip(delta, i_idx, j_idx, strict=True)
            ]
        )
        adjusted = holm(raw)
    else:
        if W is None:
            W = stratified_multiplicities(y, n_boot, np.random.default_rng(seed))
        M = np.stack([balanced_accuracy(y, s, W) for s in S], axis=1)  # [B, k]
        M = M[np.isfinite(M).all(1)]
        D = M[:, i_idx] - M[:, j_idx]  # [B, pairs]
        se = D.std(axis=0, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            t_obs = np.where(se > 0, np.abs(delta) / (se * np.sqrt(fit_inflation)), 0.0)
            t_max = np.nanmax(np.where(se > 0, np.abs(D - delta) / se, 0.0), axis=1)
        adjusted = (1 + np.sum(t_max[:, None] >= t_obs[None, :], axis=0)) / (1 + len(t_max))
    out = np.ones(k)
    for d, i, j, p in zip(delta, i_idx, j_idx, adjusted, strict=True):
        if not np.isfinite(p) or d == 0:
            continue
        lower = j if d > 0 else i
        out[lower] = min(out[lower], p)
    return out


def cv_fit_inflation(n_folds: int) -> float:
    """How much larger the variance of a difference between two cross-validated probes is than
    its test-set part, by Nadeau and Bengio's correction (Machine Learning 52, 2003): ``1 +
    n_folds * n_test / n_train = 1 + n_folds / (n_folds - 1)`` for ``n_folds``-fold CV (2.25 at 5
    folds; 2.13 leaving one of 9 scenarios out). The test-set part is what a bootstrap of the
    completions (or a jackknife of the scenarios) with the out-of-fold scores held fixed
    measures; the rest comes from the folds' training sets overlapping, so that every fold's
    probe errs alike. Its effect is measured with real fits in :mod:`lib.probing.power`."""
    if n_folds < 2:
        raise ValueError(f"n_folds={n_folds}: cross-validation needs at least 2 folds")
    return 1.0 + n_folds / (n_folds - 1.0)


def pooled_seed_sd(per_seed: list[np.ndarray]) -> tuple[float, int]:
    """The seed-to-seed SD pooled over the cells of a family, and its degrees of freedom:
    ``sqrt(sum((S_i - 1) var_i) / sum(S_i - 1))`` over cells with ``S_i >= 2`` seeds. One cell's
    2 or 3 seeds give 1 or 2 degrees of freedom, which makes a t-draw so wide that no verdict can
    come out; assuming the seed variance is the same across the cells of a family (its
    architectures at one training budget: the stated model) gives ``sum(S_i - 1)``."""
    vals = [np.asarray(v, dtype=float) for v in per_seed]
    vals = [v[np.isfinite(v)] for v in vals]
    vals = [v for v in vals if len(v) >= 2]
    df = sum(len(v) - 1 for v in vals)
    if df == 0:
        return float("nan"), 0
    return float(np.sqrt(sum((len(v) - 1) * v.var(ddof=1) for v in vals) / df)), int(df)


def bootstrap_pvalue(samples: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of "the statistic equals ``null``": twice the smaller tail of
    the bootstrap distribution beyond ``null`` (each tail counted as ``(1 + k) / (1 + B)``)."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan")
    b = samples.size
    lo = (1 + np.sum(samples <= null)) / (1 + b)
    hi = (1 + np.sum(samples >= null)) / (1 + b)
    return float(min(1.0, 2 * min(lo, hi)))


def _metric_matrix(metric: str, y: np.ndarray, S: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``[B, n_seeds]``: the metric of every seed's scores (rows of ``S``) on every resample."""
    fn = {"bal_acc": balanced_accuracy, "auroc": auroc}[metric]
    return np.stack([np.atleast_1d(fn(y, s, W)) for s in np.atleast_2d(S)], axis=1)


def paired_seed_test(
    y: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    clusters: np.ndarray | None = None,
    metric: str = "bal_acc",
    level: float = 0.95,
    seed_sd_a: tuple[float, int] | None = None,
    seed_sd_b: tuple[float, int] | None = None,
    W: np.ndarray | None = None,
    cluster_design: str = "jackknife_t",
    fit_inflation: float = 1.0,
) -> dict:
    """The book's one paired test: is probe A better than probe B on the same completions?

    ``scores_a`` ``[S_a, n]`` and ``scores_b`` ``[S_b, n]`` (or ``[n]``): out-of-fold scores of
    the two probes on the same ``n`` completions, one row per training seed (SAEs trained with
    different seeds; a raw probe has one row). The statistic is ``delta = mean_s metric(a_s) -
    mean_t metric(b_t)`` on the pooled scores. Its sampling distribution has two parts:

    * the completions: a paired bootstrap of the seed-mean difference (completions within
      class, both probes on the same resamples); or, with ``clusters`` (held-out scenarios or
      families), a delete-one-cluster jackknife with a t-interval on ``G - 1`` degrees of
      freedom (:func:`jackknife_t`; ``cluster_design="percentile"`` keeps the percentile cluster
      bootstrap, which under-covers with few clusters: kept for the simulations that show it);
    * the seeds: a probe with ``S > 1`` seeds adds ``sd_s / sqrt(S)`` times a Student-t draw with
      ``S - 1`` degrees of freedom, ``sd_s`` being the spread of its per-seed metric. (Resampling
      three seeds with replacement understates their variance; with ``S - 1`` degrees of freedom
      the t draw does not.) The per-seed spread also holds completion noise, so this errs on the
      conservative side. ``seed_sd_a = (sd, df)`` replaces A's own spread and ``S - 1`` by a
      spread pooled over a family (:func:`pooled_seed_sd`); ``seed_sd_b`` likewise for B. Under
      the jackknife the seed terms add their variance ``sd_s^2 / S`` with their degrees of
      freedom (Welch-Satterthwaite).
    ``W``: precomputed ``[n_boot, n]`` multiplicities of the completions (the resampling above),
    shared by the tests of one family: the same resamples for every comparison, drawn once. The
    jackknife (``clusters``) uses neither ``W`` nor ``n_boot``: its leave-one-out plan is fixed.
    ``fit_inflation`` (:func:`cv_fit_inflation`) widens the completions' part by that factor of
    variance, for two probes each fitted once by CV (the layer tests), whose own fit variance the
    resampling of fixed out-of-fold scores leaves out.

    Returns ``delta``, the CI (``ci_low``, ``ci_high``), the 90% interval for the equivalence
    test (``eq_low``, ``eq_high``), the two-sided ``p_value`` (bootstrap:
    :func:`bootstrap_pvalue`; jackknife: the t distribution's, and its ``df``) and the per-seed
    spread (``sd_a``, ``sd_b``).
    """
    y = np.asarray(y)
    A, B = np.atleast_2d(scores_a), np.atleast_2d(scores_b)
    rng = np.random.default_rng(seed)
    point_a = _metric_matrix(metric, y, A, np.ones((1, len(y))))[0]
    point_b = _metric_matrix(metric, y, B, np.ones((1, len(y))))[0]
    sd = [float(p.std(ddof=1)) if len(p) > 1 else float("nan") for p in (point_a, point_b)]
    out = {
        "delta": float(point_a.mean() - point_b.mean()),
        "sd_a": sd[0],
        "sd_b": sd[1],
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "eq_low": float("nan"),
        "eq_high": float("nan"),
        "p_value": float("nan"),
    }
    seed_terms = [
        (sd[0], len(point_a), len(point_a) - 1, 1.0),
        (sd[1], len(point_b), len(point_b) - 1, -1.0),
    ]
    if seed_sd_a is not None and len(point_a) > 1 and seed_sd_a[1] > 0:
        seed_terms[0] = (seed_sd_a[0], len(point_a), seed_sd_a[1], 1.0)
    if seed_sd_b is not None and len(point_b) > 1 and seed_sd_b[1] > 0:
        seed_terms[1] = (seed_sd_b[0], len(point_b), seed_sd_b[1], -1.0)
    if cluster_design not in ("jackknife_t", "percentile"):
        raise ValueError(f"cluster_design={cluster_design!r}; allowed: 'jackknife_t', 'percentile'")
    out["df"] = float("nan")
    if clusters is not None and cluster_design == "jackknife_t":
        L = leave_one_cluster_out(clusters)
        left_out = np.nanmean(_metric_matrix(metric, y, A, L), axis=1) - np.nanmean(
            _metric_matrix(metric, y, B, L), axis=1
        )
        extra = tuple((s**2 / k, dof) for s, k, dof, _ in seed_terms if k > 1 and np.isfinite(s))
        t = jackknife_t(out["delta"], left_out, level, extra, var_factor=fit_inflation)
        out.update({k: t[k] for k in ("ci_low", "ci_high", "eq_low", "eq_high", "p_value")})
        out["df"] = t["df"]
        return out
    if n_boot <= 0:
        return out
    if W is not None:
        n_boot = len(W)
    elif clusters is None:
        W = stratified_multiplicities(y, n_boot, rng)
    else:
        W = cluster_multiplicities(clusters, n_boot, rng)
    deltas = np.nanmean(_metric_matrix(metric, y, A, W), axis=1) - np.nanmean(
        _metric_matrix(metric, y, B, W), axis=1
    )
    if fit_inflation != 1.0:
        deltas = out["delta"] + np.sqrt(fit_inflation) * (deltas - out["delta"])
    for s, k, dof, sign in seed_terms:
        if k > 1 and np.isfinite(s) and s > 0:
            deltas = deltas + sign * s / np.sqrt(k) * rng.standard_t(dof, size=n_boot)
    out["ci_low"], out["ci_high"] = percentile_ci(deltas, level)
    out["eq_low"], out["eq_high"] = percentile_ci(deltas, 0.90)
    out["p_value"] = bootstrap_pvalue(deltas)
    return out


def recall_and_fpr(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, w=None):
    """Share of deceptive completions flagged (``score > threshold``) and share of honest ones
    flagged, with a threshold per completion (each chosen inside that completion's training fold).
    With ``w`` ``[B, n]`` returns two ``[B]`` arrays."""
    y, s, t = np.asarray(y), np.asarray(scores, float), np.asarray(thresholds, float)
    W = _as_weights(w, len(y))
    flag = (s > t).astype(float)
    pos, neg = y == 1, y == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (W[:, pos] * flag[pos]).sum(1) / W[:, pos].sum(1)
        fpr = (W[:, neg] * flag[neg]).sum(1) / W[:, neg].sum(1)
    if w is None or np.ndim(w) == 1:
        return float(recall[0]), float(fpr[0])
    return recall, fpr


def paired_bootstrap_delta(
    y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """Bootstrap samples of ``bal_acc(a) - bal_acc(b)``, both scored on the same resamples."""
    W = stratified_multiplicities(y, n_boot, np.random.default_rng(seed))
    return balanced_accuracy(y, scores_a, W) - balanced_accuracy(y, scores_b, W)


def paired_randomization_pvalue(
    y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_rounds: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p-value of ``bal_acc(a) != bal_acc(b)`` on the same completions.

    Approximate randomization: under the null the two classifiers are exchangeable on each
    completion, so each round swaps the two predictions of every completion with probability 1/2
    and recomputes the difference. ``p = (1 + #{|delta*| >= |delta|}) / (1 + n_rounds)``.
    """
    y = np.asarray(y)
    pa, pb = np.asarray(scores_a) > 0, np.asarray(scores_b) > 0
    pos = y == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # per-completion contribution to balanced accuracy of a correct prediction
    unit = np.where(pos, 0.5 / max(n_pos, 1), 0.5 / max(n_neg, 1))
    ca = (pa == pos) * unit
    cb = (pb == pos) * unit
    diff = ca - cb  # bal_acc(a) - bal_acc(b) = diff.sum()
    observed = diff.sum()
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(n_rounds, len(y)), dtype=np.int8) * 2 - 1
    null = signs @ diff
    tol = 1e-12
    return float((1 + np.sum(np.abs(null) >= abs(observed) - tol)) / (1 + n_rounds))


def within_group_permutations(
    groups: np.ndarray, n_perm: int, rng: np.random.Generator
) -> np.ndarray:
    """``[n_perm, n]`` index arrays; each permutes positions only within its group.

    ``y[perm]`` is then a label vector with the same class counts in every group.
    """
    groups = np.asarray(groups)
    out = np.tile(np.arange(len(groups)), (n_perm, 1))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        shuffled = rng.permuted(np.tile(np.arange(len(idx)), (n_perm, 1)), axis=1)
        out[:, idx] = idx[shuffled]
    return out


def empirical_pvalue(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value ``(1 + #{null >= observed}) / (1 + #null)``.

    NaN entries of the null are dropped; NaN when the observed value is NaN.
    """
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return float("nan")
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    NaN p-values are ignored (they do not count towards the number of tests) and stay NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out
