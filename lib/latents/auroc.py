"""Per-latent statistics of an SAE: which latents separate deceptive from honest completions.

Everything here works on a matrix ``F`` ``[n, L]`` of pooled latent activations (one row per
completion, one column per latent; codes are >= 0), labels ``y`` ``[n]`` (1 = deceptive) and
the scenario of each completion. It is plain numpy/torch with no run directory, so the known
answers can be tested on synthetic data and the speed measured on TinyLlama-shaped matrices.

Per latent (:func:`latent_table`):

``auroc``
    P(a deceptive completion's value > an honest one's), ties 1/2 (Mann-Whitney). Above 0.5 the
    latent is *deceptive-high*, below 0.5 *honest-high*; a latent that never fires has 0.5.
``auroc_ci_low`` / ``auroc_ci_high``
    95% percentile interval of a bootstrap that resamples completions within each class
    (:func:`lib.core.stats.stratified_multiplicities`), all latents on the same resamples
    (:func:`bootstrap_auroc`, a weighted Mann-Whitney statistic, vectorised).
``p_value`` / ``q_value``
    Two-sided Mann-Whitney U test (normal approximation with tie and continuity correction) and
    its Benjamini-Hochberg q-value over all latents of the SAE (:func:`benjamini_hochberg`).
``rate_*`` / ``mean_*``
    The share of completions of a class on which the latent fires (pooled value > 0: with mean or
    max pooling, it fired on at least one response token) and its mean pooled value.
``loso_auroc``
    Does the latent's direction hold in scenarios it was not ranked on? For each held-out
    scenario, the direction (deceptive-high or honest-high) is chosen from the AUROC on the other
    scenarios, and the held-out scenario's completions are scored in that direction; the
    within-scenario AUROCs are averaged with weights n_deceptive x n_honest (scenarios with one
    class are skipped). The result is reported on the scale of ``auroc``: near ``auroc`` when the
    direction transfers, near 0.5 when it does not (NaN with fewer than two usable scenarios).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtr
from scipy.stats import rankdata

from lib.core import stats
from lib.core.runtime import torch_threads

LATENT_COLUMNS = [
    "latent",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "p_value",
    "q_value",
    "rate_deceptive",
    "rate_honest",
    "mean_deceptive",
    "mean_honest",
    "loso_auroc",
]


def _check(F: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    F = np.asarray(F, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if F.ndim != 2 or len(F) != len(y):
        raise ValueError(f"F must be [n, L] with n = len(y) = {len(y)}; got shape {F.shape}")
    if set(np.unique(y)) - {0, 1}:
        raise ValueError(f"labels must be 0/1, got {sorted(set(np.unique(y).tolist()))}")
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError(f"both classes are needed (n={len(y)}, deceptive={int(y.sum())})")
    return F, y


# ----- AUROC and the Mann-Whitney test ----------------------------------------------------------
def tie_sums(F: np.ndarray) -> np.ndarray:
    """``sum over tie groups of (t^3 - t)`` for every column of ``F`` [n, L] (vectorised)."""
    n, L = F.shape
    S = np.sort(F, axis=0)
    starts = np.ones((n, L), dtype=bool)
    starts[1:] = S[1:] != S[:-1]
    flat = np.flatnonzero(starts.T.ravel())  # start of every run, as column * n + row
    lengths = np.diff(np.append(flat, L * n)).astype(np.float64)
    return np.bincount(flat // n, weights=lengths**3 - lengths, minlength=L)


def auroc_and_pvalues(F: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC ``[L]`` of every column of ``F`` ``[n, L]`` and its two-sided Mann-Whitney p-value.

    The p-value uses the normal approximation with tie correction and a continuity correction of
    1/2; a column with one value only (a latent that never fires) has AUROC 0.5 and p = 1.
    """
    F, y = _check(F, y)
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    n = n1 + n0
    ranks = rankdata(F, axis=0)
    U = ranks[pos].sum(0) - n1 * (n1 + 1) / 2
    auc = U / (n1 * n0)
    var = n1 * n0 / 12.0 * ((n + 1) - tie_sums(F) / (n * (n - 1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (np.abs(U - n1 * n0 / 2.0) - 0.5).clip(min=0) / np.sqrt(var)
    p = np.where(var > 1e-12, 2 * ndtr(-z), 1.0)
    return auc, np.minimum(p, 1.0)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up, monotone, capped at 1); NaN p-values stay NaN."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(adj[::-1])[::-1], 1.0)
    return q


def bootstrap_auroc(
    F: np.ndarray,
    y: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI ``(low [L], high [L])`` of every column's AUROC under one stratified bootstrap.

    Resample b gives completion i the multiplicity ``W[b, i]``; its AUROC is the weighted
    Mann-Whitney statistic ``sum_{i pos, j neg} W_bi W_bj K_ij / (n_pos n_neg)`` with
    ``K_ij = [f_i > f_j] + [f_i = f_j] / 2`` (the class totals are fixed by the stratification).
    Codes are >= 0 and mostly 0, so the pairs split by whether each side fires: a silent
    negative is beaten by every firing positive and ties every silent positive, which for all
    latents at once is two matrix products with the firing indicators; only firing-by-firing
    pairs need K. Those are batched, ``chunk`` latents of similar firing counts at a time, as
    ``[B, p] x [p, q]`` products over each latent's firing positives (p) and negatives (q).
    Exact in float32 (weights are small integers, K a multiple of 1/2); single-threaded, like
    every per-SAE computation of the stage (the grid's workers own the cores). Columns that
    never vary get (0.5, 0.5); ``n_boot`` 0 gives NaN.
    """
    F, y = _check(F, y)
    L = F.shape[1]
    if n_boot <= 0:
        return np.full(L, np.nan), np.full(L, np.nan)
    lo, hi = np.full(L, 0.5), np.full(L, 0.5)
    a = (1 - level) / 2
    for cols, auc in _bootstrap_chunks(F, y, n_boot, seed, chunk):
        ci = np.quantile(auc, [a, 1 - a], axis=0)
        lo[cols], hi[cols] = ci[0], ci[1]
    return lo, hi


def bootstrap_auroc_samples(
    F: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0, chunk: int = 32
) -> np.ndarray:
    """The resampled AUROCs ``[n_boot, L]`` behind :func:`bootstrap_auroc` (same resamples for
    the same seed; columns that never vary are 0.5 in every resample), for statistics built
    from several AUROCs (:mod:`lib.latents.word_control` averages the within-word AUROCs)."""
    F, y = _check(F, y)
    out = np.full((max(n_boot, 0), F.shape[1]), 0.5, dtype=np.float32)
    for cols, auc in _bootstrap_chunks(F, y, n_boot, seed, chunk):
        out[:, cols] = auc
    return out


def _bootstrap_chunks(F, y, n_boot, seed, chunk):
    """``(columns, resampled AUROCs [n_boot, len(columns)])`` of every column that varies."""
    if n_boot <= 0:
        return
    W = stats.stratified_multiplicities(y, n_boot, np.random.default_rng(seed)).astype(np.float32)
    pos = y == 1
    fp, fn = torch.as_tensor(F[pos]), torch.as_tensor(F[~pos])  # [n1, L], [n0, L]
    wp, wn = torch.as_tensor(W[:, pos]), torch.as_tensor(W[:, ~pos])  # [B, n1], [B, n0]
    n1, n0 = fp.shape[0], fn.shape[0]
    with torch.no_grad(), torch_threads(1):
        fires_p = (fp > 0).float()
        neg_silent = wn @ (fn <= 0).float()  # [B, L] weight of silent negatives
        pos_firing = wp @ fires_p  # [B, L] weight of firing positives
        base = (pos_firing + 0.5 * (n1 - pos_firing)) * neg_silent
        nnz_p, nnz_n = (F[pos] > 0).sum(0), (F[~pos] > 0).sum(0)
        live = np.flatnonzero(F.max(0) > F.min(0))
        live = live[np.argsort(nnz_p[live] * nnz_n[live], kind="stable")]
        for s in range(0, len(live), chunk):
            cols = torch.as_tensor(live[s : s + chunk])
            num = base[:, cols].clone()  # [B, c]
            p, q = int(nnz_p[cols].max()), int(nnz_n[cols].max())
            if p > 0 and q > 0:
                vp, ip = torch.topk(fp[:, cols].T, p, dim=1)  # [c, p]: firing values first
                vn, jn = torch.topk(fn[:, cols].T, q, dim=1)  # [c, q]
                K = (vp[:, :, None] > vn[:, None, :]).float()
                K += 0.5 * (vp[:, :, None] == vn[:, None, :]).float()
                K *= (vp[:, :, None] > 0) & (vn[:, None, :] > 0)  # padding pairs count 0
                M = torch.bmm(wp[:, ip].permute(1, 0, 2), K)  # [c, B, q]
                num += (M * wn[:, jn].permute(1, 0, 2)).sum(2).T
            yield cols.numpy(), (num / (n1 * n0)).numpy()


def loso_auroc(F: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Held-out-scenario AUROC of every column (see the module docstring), on ``auroc``'s scale."""
    F, y = _check(F, y)
    groups = np.asarray(groups)
    L = F.shape[1]
    num, den = np.zeros(L), 0.0
    for g in np.unique(groups):
        test, train = groups == g, groups != g
        n1, n0 = int(y[test].sum()), int((y[test] == 0).sum())
        if n1 == 0 or n0 == 0 or len(np.unique(y[train])) < 2:
            continue
        direction = np.where(stats.auroc_columns(y[train, None], F[train]) >= 0.5, 1.0, -1.0)
        within = stats.auroc_columns(y[test, None], F[test] * direction)
        num += n1 * n0 * within
        den += n1 * n0
    if den == 0:
        return np.full(L, np.nan)
    held = num / den  # 1 = the direction chosen elsewhere holds perfectly
    overall = stats.auroc_columns(y[:, None], F)
    return np.where(overall >= 0.5, held, 1.0 - held)


# ----- the table --------------------------------------------------------------------------------
def latent_table(
    F: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per latent with :data:`LATENT_COLUMNS` (see the module docstring), latent order."""
    F, y = _check(F, y)
    auc, p = auroc_and_pvalues(F, y)
    lo, hi = bootstrap_auroc(F, y, n_boot, seed)
    dec, hon = F[y == 1], F[y == 0]
    loso = loso_auroc(F, y, groups) if groups is not None else np.full(F.shape[1], np.nan)
    return pd.DataFrame(
        {
            "latent": np.arange(F.shape[1]),
            "auroc": auc,
            "auroc_ci_low": lo,
            "auroc_ci_high": hi,
            "p_value": p,
            "q_value": benjamini_hochberg(p),
            "rate_deceptive": (dec > 0).mean(0),
            "rate_honest": (hon > 0).mean(0),
            "mean_deceptive": dec.mean(0, dtype=np.float64),
            "mean_honest": hon.mean(0, dtype=np.float64),
            "loso_auroc": loso,
        },
        columns=LATENT_COLUMNS,
    )


def top_latents(table: pd.DataFrame, n_top: int) -> dict[str, list[int]]:
    """The ``n_top`` most deceptive-high latents (largest AUROC above 0.5) and the ``n_top`` most
    honest-high (smallest below 0.5), ties broken by q-value then index."""
    t = table.sort_values(["auroc", "q_value", "latent"], ascending=[False, True, True])
    dec = t[t["auroc"] > 0.5].head(n_top)["latent"].tolist()
    t = table.sort_values(["auroc", "q_value", "latent"], ascending=[True, True, True])
    hon = t[t["auroc"] < 0.5].head(n_top)["latent"].tolist()
    return {"deceptive": [int(i) for i in dec], "honest": [int(i) for i in hon]}


def class_histograms(values: np.ndarray, y: np.ndarray, bins: int = 24) -> dict:
    """Histogram of one latent's pooled values by class on shared bins:
    ``{"edges": [bins + 1], "deceptive": [bins], "honest": [bins], "silent": {class: count}}``
    (counts; ``silent``: completions where the latent never fires, value 0, which the first
    bin also counts)."""
    values = np.asarray(values, dtype=float)
    top = float(values.max()) if len(values) and values.max() > 0 else 1.0
    edges = np.linspace(0.0, top, bins + 1)
    return {
        "edges": edges.tolist(),
        "deceptive": np.histogram(values[y == 1], edges)[0].tolist(),
        "honest": np.histogram(values[y == 0], edges)[0].tolist(),
        "silent": {
            "deceptive": int((values[y == 1] <= 0).sum()),
            "honest": int((values[y == 0] <= 0).sum()),
        },
    }
