"""An exact, fast solver for the study's probe, fitted to many label vectors at once.

Permutation tests refit the whole cross-validation for every permutation; refitting sklearn
200 x 14 times per layer and feature is too slow at d=2048. :func:`oof_scores_many` is an exact
reformulation of the same estimator (per-fold standardisation, balanced class weights, L2 with
C=1, unpenalised intercept) that fits all label vectors of a fold at once. For L2-penalised
logistic regression the weight vector lies in the span of the (standardised) training vectors,
so with the training Gram matrix ``K = U diag(w) U^T`` the problem in d dimensions equals the
problem on the ``r <= n_train`` coordinates ``Z = U sqrt(w)`` (same loss, same penalty, same
unpenalised intercept, same class weights; :func:`fold_basis`). That r-dimensional problem is
solved for every label vector together by Newton's method with a preconditioned
conjugate-gradient inner solve (:func:`fit_logistic_many`), to a gradient tolerance 100 times
tighter than sklearn's default.
"""

from __future__ import annotations

import numpy as np

from lib.core.runtime import blas_threads

C_STUDY = 1.0


class ProbeInputError(ValueError):
    """Labels or groups that cannot be cross-validated; the message says why."""


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


def oof_scores_many(X, Y: np.ndarray, folds: np.ndarray, C: float = C_STUDY) -> np.ndarray:
    """Out-of-fold decision scores ``[n, P]`` of the study's probe for every label column of ``Y``.

    Mathematically the same estimator as :func:`lib.probing.probe.study_probe` (per-fold standardisation,
    balanced class weights, L2 with C=1, unpenalised intercept), solved exactly in the training
    span by :func:`fit_logistic_many`. Used for permutation nulls and the shuffled-label control.
    ``X`` is an ``[n, d]`` matrix or a function ``k -> [n, d]`` giving fold ``k``'s features
    (features fitted on the training fold, such as a TF-IDF vocabulary).
    """
    Y = np.asarray(Y).reshape(len(folds), -1)
    out = np.full(Y.shape, np.nan)
    features = X if callable(X) else (lambda _k: X)
    with blas_threads(1):
        for k in np.unique(folds):
            te = folds == k
            Xk = features(k)
            Z, Zt = fold_basis(Xk[~te], Xk[te])
            beta = fit_logistic_many(Z, Y[~te], balanced_weights(Y[~te]), C)
            out[te] = Zt @ beta[:-1] + beta[-1]
    return out


def _column_balanced_accuracy(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Balanced accuracy of ``S > 0`` against every column of ``Y`` ``[n, P]`` -> ``[P]``."""
    hit = (S > 0) == (Y == 1)
    pos = Y == 1
    n_pos, n_neg = pos.sum(0), (~pos).sum(0)
    recall_pos = (hit & pos).sum(0) / np.maximum(n_pos, 1)
    recall_neg = (hit & ~pos).sum(0) / np.maximum(n_neg, 1)
    return 0.5 * (recall_pos + recall_neg)


def oof_scores_tuned(
    X,
    Y: np.ndarray,
    folds: np.ndarray,
    c_grid: tuple[float, ...],
    inner_splits: int = 5,
    seed: int = 42,
) -> tuple[np.ndarray, dict[int, float]]:
    """:func:`oof_scores_many` with ``C`` chosen inside every training fold, per label column.

    For each outer fold, the training rows are split by ``StratifiedKFold(inner_splits)`` (on the
    first column, the real labels); every ``C`` of ``c_grid`` is fitted on the inner training
    rows and scored on the inner held-out rows; each column takes the ``C`` with the best inner
    balanced accuracy (ties: the first in ``c_grid``) and is refitted on the whole training fold
    with it. A permuted column therefore goes through the same selection as the real labels, so
    a permutation null includes the optimism of the choice. The features of fold ``k`` are used
    as they are in the inner folds (a TF-IDF vocabulary fitted on the outer training fold: its
    inner held-out rows took part in the vocabulary, which can only flatter the inner scores of
    every ``C`` alike, never the outer test fold). Returns the scores and the ``C`` each outer
    fold chose for the first column.
    """
    from sklearn.model_selection import StratifiedKFold

    Y = np.asarray(Y).reshape(len(folds), -1)
    out = np.full(Y.shape, np.nan)
    chosen: dict[int, float] = {}
    features = X if callable(X) else (lambda _k: X)
    grid = tuple(float(c) for c in c_grid)
    with blas_threads(1):
        for k in np.unique(folds):
            te = folds == k
            tr = np.flatnonzero(~te)
            Xk, Ytr = features(k), Y[~te]
            splits = min(inner_splits, int(np.bincount(Ytr[:, 0].astype(int), minlength=2).min()))
            if splits < 2:
                raise ProbeInputError(
                    f"fold {k}: fewer than 2 completions of a class to choose C by inner CV"
                )
            inner = np.full((len(grid), *Ytr.shape), np.nan)
            splitter = StratifiedKFold(splits, shuffle=True, random_state=seed)
            for itr, ite in splitter.split(np.zeros((len(tr), 1)), Ytr[:, 0]):
                Z, Zt = fold_basis(Xk[tr[itr]], Xk[tr[ite]])
                W = balanced_weights(Ytr[itr])
                for g, C in enumerate(grid):
                    beta = fit_logistic_many(Z, Ytr[itr], W, C)
                    inner[g, ite] = Zt @ beta[:-1] + beta[-1]
            score = np.stack([_column_balanced_accuracy(Ytr, s) for s in inner])
            pick = np.argmax(score, axis=0)  # first best per column
            chosen[int(k)] = grid[int(pick[0])]
            Z, Zt = fold_basis(Xk[~te], Xk[te])
            W = balanced_weights(Ytr)
            for g in np.unique(pick):
                cols = np.flatnonzero(pick == g)
                beta = fit_logistic_many(Z, Ytr[:, cols], W[:, cols], grid[g])
                out[np.ix_(te, cols)] = Zt @ beta[:-1] + beta[-1]
    return out, chosen
