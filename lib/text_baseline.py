"""The text-only baseline: what a probe can read from the words alone.

The label of a completion is decided by a judge reading its text, so a linear probe on the text
itself is the bar an activation probe must clear before it shows anything beyond the words. The
features are TF-IDF unigrams and bigrams of the completion (the prompt is the same for every
completion of a scenario and adds nothing), with the vocabulary and document frequencies fitted
on each training fold only, then the study's probe on them, with the same folds as the
activation probes. With a keyword judge the label is a function of the first words, so this
baseline is near perfect by construction; with an LLM judge it measures how much of the label
the surface text carries.
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
