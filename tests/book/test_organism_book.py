"""Host-proof checks of a finished organism book (see ``conftest.py``): exact counts and ids,
known-answer verdicts, and the headline numbers within measured tolerances."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.capture.labelled import read_index
from lib.capture.sampling import completion_id, planned_batches
from lib.core.fileio import read_jsonl
from lib.probing.layer_profile import profile_values, read_layer_profile, read_probe_controls
from lib.probing.sae_probes import leaks, read_sae_probes
from lib.probing.sae_verdicts import read_sae_leakage, read_sae_verdicts
from lib.report.summary import CLAIMS, read_summary
from lib.sae.model import is_complete, read_metrics


def test_completions_labels_and_capture_counts_are_exact(book, expected):
    cfg, run = book
    rows = read_jsonl(run.completions)
    planned = [completion_id(sc.id, i) for sc, chunk in planned_batches(cfg) for i in chunk]
    assert [r["id"] for r in rows] == planned
    labels = pd.Series(
        {r["id"]: r["label"] for r in read_jsonl(run.labels) if r["judge"] == "keyword"}
    )
    assert labels.value_counts().to_dict() == expected["labels"]
    index = read_index(run)
    assert index["n_completions"] == len(planned) and len(index["layers"]) == expected["layers"]
    assert index["n_tokens"] == expected["completion_tokens"]


def test_every_grid_sae_is_complete_and_as_sparse_as_its_architecture(book, expected):
    cfg, run = book
    for layer, arch, cond in cfg.sae_grid():
        for i in range(cfg.sae.seeds):
            path = run.sae_dir(cfg.sae_id(layer, arch, cond, i))
            assert is_complete(path), path.name
            m = read_metrics(path)
            share = m["l0"] / m["d_sae"]
            if arch == "topk":
                assert m["l0"] == cfg.sae.k, path.name
            elif arch == "jumprelu":
                assert share > 0.25, (path.name, share)  # a ReLU code
            else:
                assert share < 0.5, (path.name, share)  # a learned threshold
            assert m["fvu"] < expected["max_fvu"], (path.name, m["fvu"])


def test_known_answers_hold(book):
    cfg, run = book
    profile, controls = read_layer_profile(run), read_probe_controls(run)
    for cv in ("stratified", "scenario"):
        d = profile_values(profile, cv, "mean")
        assert ((d.value >= 0.7) & (d.p_value <= 0.01)).any(), cv  # the planted signal is found
    # the keyword judge labels from the first words, so the words alone carry the label
    assert profile_values(profile, "stratified", "text").value.iloc[0] >= 0.9
    rec = profile[(profile.metric == "recall_at_1fpr") & (profile.subset == "all")]
    # thresholds chosen on training folds keep their 1% rate on test folds of the same scenarios
    # (measured at most 1.7%, i.e. 3 of 180 honest completions); carried to an unseen scenario
    # they do not (0.6% to 6.7% measured), which is a finding, bounded here only loosely
    assert (rec[rec.cv == "stratified"].realised_fpr <= 0.05).all()
    assert (rec[rec.cv == "scenario"].realised_fpr <= 0.15).all()
    sh = controls[(controls.target == "shuffled_labels") & (controls.metric == "bal_acc")]
    assert sh.value.dropna().between(0.4, 0.6).all()


def test_headline_numbers_within_measured_tolerance(book, expected):
    cfg, run = book
    profile = read_layer_profile(run)
    tol = expected["profile_tolerance"]
    for key, want in expected["profile"].items():
        feature, cv = key.split("/")
        got = profile_values(profile, cv, feature).set_index("layer").value
        np.testing.assert_allclose(got.to_numpy(float), want, atol=tol, err_msg=key)


def test_sae_probes_are_in_distribution_and_complete(book, expected):
    cfg, run = book
    probes = read_sae_probes(run)
    grid = probes[probes.sae_source == "grid"]
    n_saes = len(cfg.sae_grid()) * cfg.sae.seeds
    assert grid.sae_id.nunique() == n_saes and len(grid) == 2 * n_saes
    assert (grid.note == "").all() and (grid.inputs == cfg.sae.train_on).all()
    assert grid.input_norm_ratio.between(0.5, 2.0).all() and (~grid.collapsed.astype(bool)).all()
    verdicts = read_sae_verdicts(run)
    assert len(verdicts[verdicts.sae_source == "grid"]) == 2 * len(cfg.sae_grid())
    leak = read_sae_leakage(run)
    leaky = [cell for cell in cfg.sae_grid() if leaks(cfg, cell[2])]
    assert len(leak) == 2 * len(leaky) and leak.leakage.notna().all()
    tol = expected["sae_tolerance"]
    mean_delta = verdicts[verdicts.sae_source == "grid"].groupby("cv").delta.mean()
    for cv, want in expected["mean_sae_minus_raw"].items():
        assert abs(mean_delta[cv] - want) <= tol, (cv, mean_delta[cv])


def test_summary_names_every_claim(book):
    cfg, run = book
    summary = read_summary(run)
    assert list(summary.claim) == list(CLAIMS.values())
    assert (summary["ours: study's recipe"] != "n/a").sum() >= 8
