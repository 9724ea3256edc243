"""The wording baselines every activation probe must clear (lib/probing/wording.py, notebook 05)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.capture.labelled import labelled_rows, read_input_embeddings
from lib.core.fileio import read_jsonl
from lib.probing.layer_profile import layer_profile, profile_values, wording_features
from lib.probing.layer_verdicts import layer_tests
from lib.probing.probe import cross_validate_folds, cv_folds
from lib.probing.wording import first_token_features


def test_first_tokens_are_one_hot_by_position_with_the_training_folds_vocabulary():
    toks = [[5, 7, 9], [5, 8], [6, 7, 9, 11], [42]]
    folds = np.array([0, 0, 1, 1])
    X = first_token_features(toks, folds, k=2)(1)  # vocabulary of rows 0 and 1 only
    # columns: p0=5, p1=7, p1=8 (sorted keys); rows 2 and 3 keep only what fold 0 saw
    assert X.shape == (4, 3)
    assert X[0].tolist() == [1, 1, 0] and X[1].tolist() == [1, 0, 1]
    assert X[2].tolist() == [0, 1, 0]  # p1=7 seen in training; p0=6 was not
    assert X[3].tolist() == [0, 0, 0]  # an unseen first token carries nothing


def _planted(n=200, seed=0):
    """Completions whose label is read off the first token: 'No' (id 3) lies, 'Yes' (id 4)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    toks = [[3 if yi else 4, *rng.integers(10, 60, 5).tolist()] for yi in y]
    return y, toks


@pytest.mark.parametrize("shuffle", [False, True], ids=["planted", "shuffled"])
def test_a_planted_first_word_is_found_and_shuffled_labels_are_not(shuffle):
    y, toks = _planted()
    if shuffle:
        y = np.random.default_rng(1).permutation(y)
    folds = cv_folds(y, None, "stratified", 42)
    feats = first_token_features(toks, folds)
    res = cross_validate_folds(feats, y, folds, "stratified", "sklearn")
    if shuffle:
        assert abs(res.value["bal_acc"] - 0.5) < 0.12
    else:
        assert res.value["bal_acc"] == 1.0


def _weak_words(n=160, seed=0):
    """TF-IDF-like inputs: 30 weakly informative columns among 300 (many words, each a little)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 300))
    X[:, :30] += 0.3 * (2 * y - 1)[:, None]
    return X, y


def test_a_grid_of_one_C_is_the_study_probe_at_that_C():
    from lib.probing.solver import oof_scores_many, oof_scores_tuned

    X, y = _weak_words()
    folds = cv_folds(y, None, "stratified", 42)
    for C in (1.0, 0.01):
        tuned, chosen = oof_scores_tuned(X, y[:, None], folds, (C,))
        np.testing.assert_allclose(tuned, oof_scores_many(X, y[:, None], folds, C), rtol=1e-10)
        assert set(chosen.values()) == {C}


def test_C_is_chosen_per_fold_and_label_vector_and_beats_C1_on_weak_words():
    from lib.probing.controls import permutation_pvalue
    from lib.probing.wording import TEXT_C_GRID

    X, y = _weak_words()
    fixed = permutation_pvalue(X, y, None, "stratified", n_permutations=40, seed=3)
    tuned = permutation_pvalue(
        X, y, None, "stratified", n_permutations=40, seed=3, c_grid=TEXT_C_GRID
    )
    # spread thin over many columns, the signal needs strong regularisation (0.78 -> 0.83 here)
    assert tuned.observed["bal_acc"] > fixed.observed["bal_acc"] + 0.03
    assert set(tuned.c_chosen) == set(np.unique(tuned.folds))
    assert max(tuned.c_chosen.values()) < 1.0
    # permuted label vectors go through the same choice: their null stays at chance
    assert abs(np.mean(tuned.null["bal_acc"]) - 0.5) < 0.05
    assert tuned.p["bal_acc"] < 0.05


def test_input_embeddings_are_the_mean_of_the_response_tokens_embedding_rows(sampled_run, organism):
    cfg, run = sampled_run
    model, tok = organism
    mean = read_input_embeddings(run)
    rows = read_jsonl(run.completions)
    assert mean.shape == (len(rows), model.config.hidden_size)
    W = model.get_input_embeddings().weight.detach()
    for r in (0, 7, len(rows) - 1):
        ids = rows[r]["completion_token_ids"] or tok(rows[r]["prompt"]).input_ids[-1:]
        torch.testing.assert_close(mean[r], W[ids].mean(0), rtol=0, atol=1e-6)


def test_the_profile_probes_every_wording_baseline_and_tests_layers_against_the_strongest(
    sampled_run,
):
    cfg, run = sampled_run
    assert wording_features(run, cfg) == ["text", "first_tokens", "embed"]
    profile = layer_profile(run, cfg, progress=False, n_jobs=1)
    tests = layer_tests(run, cfg)
    lab = labelled_rows(run, cfg)
    for cv in ("stratified", "scenario"):
        vals = {f: profile_values(profile, cv, f) for f in ("text", "first_tokens", "embed")}
        assert all(len(v) == 1 and v.layer.isna().all() for v in vals.values())
        t = tests[(tests.cv == cv) & (tests.feature == "mean")]
        strongest = max(vals, key=lambda f: vals[f].value.iloc[0])
        assert set(t.wording_feature) == {strongest}
        assert np.allclose(t.wording_bal_acc, vals[strongest].value.iloc[0])
        assert (t.beats_wording <= (t.delta_vs_wording > 0)).all()
    # the organism's label is its planted opener: every wording baseline reads it (measured on
    # this small run: TF-IDF 0.905, first tokens 0.838, input embeddings 0.910)
    vals = {
        f: profile_values(profile, "stratified", f).value.iloc[0]
        for f in ("text", "first_tokens", "embed")
    }
    assert min(vals.values()) >= 0.75, vals
    assert int(profile.n.max()) == len(lab)
