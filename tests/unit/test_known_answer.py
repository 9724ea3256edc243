"""Known answer end to end: the organism's planted behaviour is found from its captured residuals.

The probe (the study's recipe, lib.probing) must separate the planted labels with balanced
accuracy >= 0.9 at the best layer under both CV modes, and must not separate shuffled labels.
"""

import numpy as np

from lib.capture.labelled import labelled_rows, pooled, read_layer
from lib.models.organism import planted_mask
from lib.probing import probe


def test_planted_behaviour_is_found_under_both_cv_modes(sampled_run):
    cfg, run = sampled_run
    lab = labelled_rows(run, cfg)
    decisive, y = planted_mask(run, lab)
    scen = lab.scenario[decisive]
    best = {"stratified": 0.0, "scenario": 0.0}
    for layer in range(8):
        X = pooled(read_layer(run, layer), lab, "mean")[decisive]
        for mode in best:
            res = probe.cross_validate(X, y, scen, mode)
            best[mode] = max(best[mode], res.value["bal_acc"])
    assert best["stratified"] >= 0.9 and best["scenario"] >= 0.9, best


def test_shuffled_planted_labels_are_not_found(sampled_run):
    cfg, run = sampled_run
    lab = labelled_rows(run, cfg)
    decisive, y = planted_mask(run, lab)
    X = pooled(read_layer(run, 7), lab, "mean")[decisive]
    y_shuffled = np.random.default_rng(0).permutation(y)
    res = probe.cross_validate(X, y_shuffled, lab.scenario[decisive], "stratified")
    from lib.core import stats

    lo, hi = stats.bootstrap_ci(y_shuffled, res.scores, 500, 0)["bal_acc"]
    assert lo <= 0.5 <= hi, (lo, hi)
