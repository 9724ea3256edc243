"""Known answers of the wording controls (lib.probing.wording_controls) on planted data.

A planted "no" reader must be caught (transfer below chance, same-word AUROC at chance); a
planted meaning direction must pass every control; a feature constant within a scenario can
reach only the scenario prior.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict

from lib.core import stats
from lib.probing.probe import study_probe
from lib.probing.prompt_probe import scenario_prior_scores
from lib.probing.wording_controls import ControlSet, layer_controls, verdict


def planted(kind: str, seed: int = 0, per_prompt: int = 24, families: int = 12, d: int = 16):
    """Families with a direct prompt (lie "no"), a swapped one (lie "yes"), a contradiction
    prompt (false answers "yes" in half the families) and neutral prompts; X plants either the
    answer word (``words``) or deception itself (``meaning``) on its first coordinate."""
    rng = np.random.default_rng(seed)
    fam, var, lab, ans, scen = [], [], [], [], []
    for f in range(families):
        for v in ("direct", "swapped", "contradiction"):
            for _ in range(per_prompt):
                truthful = rng.random() < 0.5
                if v == "contradiction":
                    false_word = "yes" if f % 2 else "no"
                    label = "true_not_deceptive" if truthful else "false_not_deceptive"
                    word = ({"yes": "no", "no": "yes"}[false_word]) if truthful else false_word
                else:
                    lie = "no" if v == "direct" else "yes"
                    label = "honest" if truthful else "deceptive"
                    word = ({"yes": "no", "no": "yes"}[lie]) if truthful else lie
                fam.append(f"f{f}"), var.append(v), lab.append(label), ans.append(word)
                scen.append(f"f{f}_{v}")
    for p in range(8):
        for _ in range(per_prompt):
            fam.append("neutral"), var.append("neutral"), lab.append("neutral")
            ans.append("no" if rng.random() < 0.5 else "yes"), scen.append(f"n{p}")
    cs = ControlSet(
        rows=np.arange(len(fam)),
        family=np.array(fam),
        variant=np.array(var),
        label=np.array(lab),
        answer=np.array(ans),
        scenario=np.array(scen),
    )
    X = rng.normal(size=(len(fam), d))
    if kind == "words":
        X[:, 0] += 2.0 * (cs.answer == "no")
    else:
        X[:, 0] += 2.0 * (cs.label == "deceptive")
    return X, cs


def test_a_probe_that_reads_no_is_caught_by_the_swapped_twins():
    X, cs = planted("words")
    r = layer_controls(X, cs, n_boot=200)
    assert r["transfer_direct_to_swapped"] < 0.2 and r["transfer_swapped_to_direct"] < 0.2
    for word in ("no", "yes"):  # among same-word answers, nothing separates the labels
        assert r[f"same_word_{word}_low"] < 0.5 < r[f"same_word_{word}_high"]
    assert r["answer_word"] > 0.8
    assert verdict(_row(r)) == "the words"


def test_a_planted_meaning_direction_passes_every_control():
    X, cs = planted("meaning")
    r = layer_controls(X, cs, n_boot=200)
    for m in (
        "transfer_direct_to_swapped",
        "transfer_swapped_to_direct",
        "same_word_no",
        "same_word_yes",
    ):
        assert r[f"{m}_low"] > 0.6, (m, r[m])
    assert r["falsehood_low"] < 0.5 < r["falsehood_high"]  # meaning is not falsehood here
    assert r["answer_word_low"] < 0.5 < r["answer_word_high"]  # and the word is unreadable
    assert verdict(_row(r)) == "beyond the words"


def test_the_neutral_monitor_keeps_its_threshold_off_the_evaluated_data():
    X, cs = planted("meaning", seed=1)
    r = layer_controls(X, cs, n_boot=0)
    # neutral completions look like honest ones: ~1% flagged, most deceptive ones caught
    assert r["monitor_fpr"] <= 0.05 and r["monitor_recall"] > 0.3  # a 2-SD shift: ~40% at 1%
    assert r["n_monitor_fpr"] == 4 * 24


def test_a_feature_constant_within_a_scenario_reaches_only_the_scenario_prior():
    """The last prompt token's activation under same-prompt sampling: the known answer."""
    rng = np.random.default_rng(3)
    scen = np.repeat(np.arange(20), 30)
    rate = rng.uniform(0.1, 0.9, 20)
    y = (rng.random(len(scen)) < rate[scen]).astype(np.int64)
    X = rng.normal(size=(20, 32))[scen]  # one vector per scenario
    folds = np.empty(len(y), dtype=np.int64)
    for k, (_, te) in enumerate(StratifiedKFold(5, shuffle=True, random_state=42).split(X, y)):
        folds[te] = k
    prior = stats.auroc(y, scenario_prior_scores(scen, y, folds))
    probe = stats.auroc(
        y,
        cross_val_predict(
            study_probe(),
            X,
            y,
            cv=StratifiedKFold(5, shuffle=True, random_state=42),
            method="decision_function",
        ),
    )
    assert prior > 0.65 and probe <= prior + 0.02  # stratified: at most the prior
    held = cross_val_predict(
        study_probe(), X, y, cv=GroupKFold(5), groups=scen, method="decision_function"
    )
    within = [stats.auroc(y[scen == s], held[scen == s]) for s in range(20)]
    assert np.nanmax(np.abs(np.array(within) - 0.5)) == 0  # constant within a scenario: chance
    assert scenario_prior_scores(scen, y, scen % 5).std() > 0


def _row(r):
    import pandas as pd

    return pd.Series(r)


@pytest.mark.parametrize("kind", ["words", "meaning"])
def test_the_controls_are_reproducible(kind):
    X, cs = planted(kind, seed=5)
    a, b = layer_controls(X, cs, n_boot=50, seed=1), layer_controls(X, cs, n_boot=50, seed=1)
    assert a == pytest.approx(b, nan_ok=True)


def test_cue_excluded_pooling_averages_only_the_tokens_after_the_cue():
    import torch

    from lib.capture.labelled import LayerData
    from lib.probing.wording_controls import pooled_after

    owner = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    tokens = torch.arange(13, dtype=torch.float32)[:, None].repeat(1, 2)  # token i holds i
    n = 3
    data = LayerData(0, ["a", "b", "c"], torch.zeros(n, 2), torch.zeros(n, 2), tokens, owner)
    out = pooled_after(data, 4)
    assert out[0].tolist() == [4.0, 4.0]  # completion a: its 5th token only
    assert np.isnan(out[1]).all()  # completion b: 2 tokens, nothing after the cue
    assert out[2].tolist() == [11.5, 11.5]  # completion c: its 5th and 6th tokens (11, 12)
    assert np.allclose(pooled_after(data, 0)[1], [5.5, 5.5])  # k = 0 is the ordinary mean


def test_the_family_transfer_matrix_carries_meaning_and_not_the_word():
    from lib.probing.wording_controls import family_transfer

    X, cs = planted("meaning", seed=2)
    m = family_transfer(X, cs)
    off = m.to_numpy(dtype=float)
    assert m.shape == (12, 12) and np.isnan(np.diag(off)).all()
    assert np.nanmean(off) > 0.75  # a meaning direction learned in one family holds in the others
    X, cs = planted("words", seed=2)
    words = family_transfer(X, cs).to_numpy(dtype=float)
    assert abs(np.nanmean(words) - 0.5) < 0.08  # both polarities in each family: the word is no cue
