"""The wording baselines: what a probe can read from the words alone.

The label of a completion is decided by a judge reading its text, so a linear probe on the text
itself is the bar an activation probe must clear before it shows anything beyond the words. The
features are TF-IDF unigrams and bigrams of the completion (the prompt is the same for every
completion of a scenario and adds nothing), with the vocabulary and document frequencies fitted
on each training fold only, then the study's probe on them, with the same folds as the
activation probes. With a keyword judge the label is a function of the first words, so this
baseline is near perfect by construction; with an LLM judge it measures how much of the label
the surface text carries.

Three wording baselines, each probed like a layer (rows with ``layer`` empty in the profile):

``text``
    TF-IDF unigrams and bigrams of the completion (above), the probe's ``C`` chosen from
    :data:`TEXT_C_GRID` by inner CV in every training fold, for the real labels and every
    permutation alike (:func:`lib.probing.solver.oof_scores_tuned`).
``first_tokens``
    the identities of the first :data:`FIRST_K` response tokens, one-hot by position (``p0=id``,
    ``p1=id``, ...), the vocabulary fitted on each training fold: what "read the first words",
    which is how a keyword judge decides, can do.
``embed``
    the mean of the model's own input embeddings of the response tokens (what enters layer 0,
    Gemma's sqrt(d) scale included; ``activations/input_embeddings.safetensors``): what reading
    the words can do with the model's vocabulary geometry, no model computation at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

#: the vectoriser's settings (also written into results as the baseline's description)
TFIDF = dict(
    ngram_range=(1, 2),
    sublinear_tf=True,
    min_df=1,
    lowercase=True,
    token_pattern=r"(?u)\b\w+\b|[^\w\s]",  # words of any length and single punctuation marks
)


#: the TF-IDF probe's C, chosen by inner CV in every training fold: the study's C=1 and two
#: stronger, so that the baseline every activation probe must clear is as strong as its own
#: training data can make it. Weaker ones (10, 100) were never better on the organism's or
#: SmolLM2's text and took the organism's probe 7x as long (TF-IDF separates a training fold,
#: and the solver then creeps towards the maximum-margin solution).
TEXT_C_GRID = (0.01, 0.1, 1.0)

FIRST_K = 3
#: the wording baselines, in the order they are probed and drawn, with what each reads
WORDING = {
    "text": "TF-IDF of the completion",
    "first_tokens": f"first {FIRST_K} response tokens",
    "embed": "input embeddings, mean over the response",
}


def first_token_features(
    token_lists: list[list[int]], folds: np.ndarray, k: int = FIRST_K
) -> Callable[[int], np.ndarray]:
    """``fold -> [n, vocab_fold]`` one-hot matrix of the first ``k`` token ids by position, with
    the (position, id) vocabulary of the completions outside the fold (memoised per fold)."""
    keys = [[f"p{i}={t}" for i, t in enumerate(toks[:k])] for toks in token_lists]
    folds = np.asarray(folds)
    memo: dict[int, np.ndarray] = {}

    def features(fold: int) -> np.ndarray:
        fold = int(fold)
        if fold not in memo:
            vocab = sorted(
                {key for ks, f in zip(keys, folds, strict=True) if f != fold for key in ks}
            )
            col = {key: j for j, key in enumerate(vocab)}
            X = np.zeros((len(keys), max(len(vocab), 1)))
            for r, ks in enumerate(keys):
                for key in ks:
                    if key in col:
                        X[r, col[key]] = 1.0
            memo[fold] = X
        return memo[fold]

    return features


def text_features(texts: list[str], folds: np.ndarray) -> Callable[[int], np.ndarray]:
    """``k -> [n, vocab_k]`` float64 TF-IDF matrix of every completion, with the vocabulary and
    IDF fitted on the completions outside fold ``k`` (memoised per fold)."""
    texts = [t if t.strip() else "(empty)" for t in texts]
    folds = np.asarray(folds)
    memo: dict[int, np.ndarray] = {}

    def features(k: int) -> np.ndarray:
        k = int(k)
        if k not in memo:
            train = [t for t, f in zip(texts, folds, strict=True) if f != k]
            vec = TfidfVectorizer(**TFIDF).fit(train)
            memo[k] = vec.transform(texts).toarray()
        return memo[k]

    return features
