"""Deception or the answer word? The word control of every latent (notebook 08, issue 24).

The keyword judges decide a label from the completion's opening words, and in the study's nine
scenarios the lie nearly always opens with "No". A latent that fires on "no" therefore separates
deceptive from honest completions as well as a latent that carries deception. Per latent, on the
same decisive completions as its deception AUROC (:func:`word_table`):

``word_auroc`` [``word_ci_low``, ``word_ci_high``]
    AUROC of the completions that open with "no" against those that open with "yes", whatever
    their label (:func:`lib.judging.judges.answer_word`; completions with neither are left out).
    Above 0.5: a *no-high* latent.
``within_no_auroc`` / ``within_yes_auroc``
    The deception AUROC (deceptive vs honest) among the completions that open with that word
    only; NaN when fewer than ``min_per_class`` completions of either label open with it (on the
    study's nine scenarios, lies and truths rarely share a word). Version 2 scenarios
    (``data/scenarios_v2.yaml``) have both polarities, so both are measured there.
``within_word_auroc`` [``within_ci_low``, ``within_ci_high``]
    The two within-word AUROCs averaged with weights ``n_deceptive x n_honest`` (the AUROC of
    all pairs of a lie and a truth that open with the same word); its CI is the percentile
    interval of that average under a bootstrap within each word and label
    (:func:`lib.latents.auroc.bootstrap_auroc_samples`, one resampling per word).
``word_q`` / ``within_q``
    Benjamini-Hochberg q-values over all latents of the SAE, the book's rule for latents (as the
    deception AUROC's ``q_value``): of the word AUROC's Mann-Whitney p-value, and of the
    within-word AUROC's (``z = (AUROC - 0.5) / SD`` of its bootstrap samples, two-sided normal).
``word_verdict``
    ``word``: a *word latent*. Its word AUROC is significant (``word_q < 0.05``) and its whole
    interval lies further from 0.5 than the within-word AUROC's whole interval (the word
    explains more of it than the deception does within a word). ``deception``: not a word
    latent, and the within-word AUROC is significant (``within_q < 0.05``): it separates lies
    from truths that open with the same word. ``untestable``: the word AUROC is significant but
    no within-word AUROC can be measured (lies and truths open with different words: word and
    label cannot be told apart). ``""``: none of these.

The CIs are 95% percentile intervals of a stratified bootstrap, per latent (as the deception
AUROC's); the verdicts use the q-values, so with thousands of latents a verdict is not a
per-latent 5% accident.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtr

from lib.core.vocabulary import ANSWER_WORDS
from lib.latents.auroc import (
    auroc_and_pvalues,
    benjamini_hochberg,
    bootstrap_auroc,
    bootstrap_auroc_samples,
)

WORD_COLUMNS = [
    "word_auroc",
    "word_ci_low",
    "word_ci_high",
    "within_no_auroc",
    "within_yes_auroc",
    "within_word_auroc",
    "within_ci_low",
    "within_ci_high",
    "word_q",
    "within_q",
    "word_verdict",
]
#: the verdicts of :func:`word_table`, strongest claim first
VERDICTS = ("word", "deception", "untestable", "")
#: a within-word AUROC needs this many completions of each label opening with the word
MIN_PER_CLASS = 5
#: the false discovery rate of the verdicts (Benjamini-Hochberg over the SAE's latents)
ALPHA = 0.05


def _interval_distance(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(nearest, farthest)`` distance of an interval from 0.5 (nearest is 0 when it covers 0.5)."""
    nearest = np.maximum(np.maximum(lo - 0.5, 0.5 - hi), 0.0)
    farthest = np.maximum(np.abs(lo - 0.5), np.abs(hi - 0.5))
    return nearest, farthest


def word_verdicts(
    word_lo: np.ndarray,
    word_hi: np.ndarray,
    within_lo: np.ndarray,
    within_hi: np.ndarray,
    word_q: np.ndarray | None = None,
    within_q: np.ndarray | None = None,
) -> np.ndarray:
    """The ``word_verdict`` of every latent (see the module docstring); NaN intervals are "not
    measured". Without q-values, an interval that excludes 0.5 counts as significant."""
    word_lo, word_hi = np.asarray(word_lo, float), np.asarray(word_hi, float)
    within_lo, within_hi = np.asarray(within_lo, float), np.asarray(within_hi, float)
    w_near, _ = _interval_distance(word_lo, word_hi)
    d_near, d_far = _interval_distance(within_lo, within_hi)
    word_sig = np.isfinite(w_near) & (w_near > 0)
    within_sig = d_near > 0
    if word_q is not None:
        word_sig &= np.asarray(word_q, float) < ALPHA
    if within_q is not None:
        within_sig &= np.asarray(within_q, float) < ALPHA
    measured = np.isfinite(d_far)
    out = np.full(len(word_lo), "", dtype=object)
    out[word_sig & ~measured] = "untestable"
    out[measured & within_sig] = "deception"
    out[word_sig & measured & (w_near > d_far)] = "word"
    return out


def word_table(
    F: np.ndarray,
    y: np.ndarray,
    answer: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    min_per_class: int = MIN_PER_CLASS,
) -> pd.DataFrame:
    """One row per latent with :data:`WORD_COLUMNS` (latent order), from pooled codes ``F``
    ``[n, L]``, labels ``y`` (1 = deceptive) and each completion's answer word ``answer``
    (``"no"``, ``"yes"`` or anything else for neither)."""
    F = np.asarray(F, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    answer = np.asarray(answer, dtype=object)
    L = F.shape[1]
    nan = np.full(L, np.nan)
    out = {c: nan.copy() for c in WORD_COLUMNS[:-1]}
    no, yes = ANSWER_WORDS
    worded = np.isin(answer, ANSWER_WORDS)
    is_no = (answer[worded] == no).astype(np.int64)
    if 0 < is_no.sum() < len(is_no):
        out["word_auroc"], word_p = auroc_and_pvalues(F[worded], is_no)
        out["word_q"] = benjamini_hochberg(word_p)
        if n_boot > 0:
            out["word_ci_low"], out["word_ci_high"] = bootstrap_auroc(
                F[worded], is_no, n_boot, seed
            )
    num, den, samples = np.zeros(L), 0.0, np.zeros((max(n_boot, 0), L))
    for j, word in enumerate((no, yes)):
        m = answer == word
        n1, n0 = int(y[m].sum()), int((y[m] == 0).sum())
        if min(n1, n0) < max(min_per_class, 1):
            continue
        auc = auroc_and_pvalues(F[m], y[m])[0]
        out[f"within_{word}_auroc"] = auc
        num += n1 * n0 * auc
        den += n1 * n0
        if n_boot > 0:
            samples += n1 * n0 * bootstrap_auroc_samples(F[m], y[m], n_boot, seed + 1 + j)
    if den > 0:
        out["within_word_auroc"] = num / den
        if n_boot > 0:
            ci = np.quantile(samples / den, [0.025, 0.975], axis=0)
            out["within_ci_low"], out["within_ci_high"] = ci[0], ci[1]
            sd = (samples / den).std(axis=0, ddof=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                gap = np.abs(out["within_word_auroc"] - 0.5)
                # every resample separates perfectly (SD 0): as significant as it gets
                z = np.where(sd > 0, gap / sd, np.where(gap > 0, np.inf, 0.0))
            out["within_q"] = benjamini_hochberg(2 * ndtr(-z))
    table = pd.DataFrame(out)
    table["word_verdict"] = word_verdicts(
        table["word_ci_low"],
        table["word_ci_high"],
        table["within_ci_low"],
        table["within_ci_high"],
        table["word_q"],
        table["within_q"],
    )
    return table[WORD_COLUMNS]


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many latents of a table (with ``word_verdict``) got each non-empty verdict."""
    counts = table["word_verdict"].fillna("").value_counts()
    return {v: int(counts.get(v, 0)) for v in VERDICTS if v}
