"""STE comparison verdicts and the summary table, on hand-made result tables."""

import numpy as np
import pandas as pd

from lib.rundir import RunDir
from lib.ste_comparison import collapsed, study_claim, verdict
from lib.summary import summarise_run, to_markdown


def test_verdict_follows_the_ci_of_the_paired_difference():
    assert verdict(0.01, 0.12) == "wins"
    assert verdict(-0.12, -0.01) == "loses"
    assert verdict(-0.05, 0.08) == "inconclusive"
    assert verdict(np.nan, 0.1) == "n/a"


def test_collapse_detection():
    assert collapsed({"dead_fraction": 1.0, "l0": 0.0})
    assert collapsed({"dead_fraction": 0.2, "l0": 0.4})
    assert not collapsed({"dead_fraction": 0.2, "l0": 12.0})
    assert not collapsed({})


def test_study_claim_counts_any_gain_and_significant_wins_separately():
    df = pd.DataFrame(
        {
            "cv": ["stratified"] * 4 + ["scenario"],
            "jumprelu_ste_bal_acc": [0.70, 0.66, 0.60, 0.64, 0.9],
            "topk_bal_acc": [0.60, 0.65, 0.62, 0.50, 0.1],
            "verdict": ["wins", "inconclusive", "inconclusive", "collapsed", "wins"],
        }
    )
    c = study_claim(df)
    assert (c["n"], c["ste_higher"], c["wins"], c["inconclusive"], c["collapsed"]) == (
        4,
        3,
        1,
        2,
        1,
    )
    assert round(c["mean_ste"], 3) == 0.65 and round(c["mean_topk"], 4) == 0.5925


def _profile():
    rows = []
    for cv in ("stratified", "scenario"):
        for layer in range(4):
            acc = 0.55 + 0.05 * layer - (0.05 if cv == "scenario" else 0)
            for metric, value in (("bal_acc", acc), ("auroc", acc + 0.05)):
                rows.append(
                    {
                        "layer": layer,
                        "feature": "mean",
                        "cv": cv,
                        "target": "deception",
                        "metric": metric,
                        "value": value,
                        "ci_low": value - 0.05,
                        "ci_high": value + 0.05,
                        "p_value": 0.01,
                        "n": 100,
                    }
                )
    return pd.DataFrame(rows)


def test_summary_reads_the_peak_and_counts(tmp_path):
    run = RunDir(tmp_path)
    run.results.mkdir()
    _profile().to_csv(run.results / "layer_profile.csv", index=False)
    sae = pd.DataFrame(
        {
            "sae_id": ["a", "b", "c", "d"],
            "layer": [1, 1, 2, 2],
            "arch": ["topk", "jumprelu", "topk", "jumprelu_ste"],
            "condition": ["mixed", "honest_only", "mixed", "mixed"],
            "cv": ["stratified"] * 4,
            "bal_acc": [0.70, 0.58, 0.66, 0.80],
            "bal_acc_ci_low": [0.6] * 4,
            "bal_acc_ci_high": [0.8] * 4,
            "delta": [0.10, -0.02, 0.01, 0.15],
            "p_holm": [0.01, 0.9, 0.5, 0.001],
            "leakage_free": [False] * 4,
        }
    )
    sae.to_csv(run.results / "sae_probes.csv", index=False)
    out = summarise_run(run, feature="mean")
    by = out.set_index("claim")
    study = by["ours: study's recipe"]
    assert study["raw-activation peak layer"] == "L3 (of 4)"
    assert study["raw-activation peak balanced accuracy"] == "70.0% [65.0, 75.0]"
    assert study["layer profile (Spearman rho of layer vs balanced accuracy)"].startswith(
        "rho=1.00"
    )
    assert (
        study["best SAE probe"].startswith("80.0%")
        and "jumprelu_ste, L2" in study["best SAE probe"]
    )
    # the study's count is over its original (non-STE) SAEs: 2 of 3 gained, 1 significantly
    assert (
        study["SAEs beating their layer's raw probe"]
        == "2 of 3 (any gain); 1 significant after Holm"
    )
    assert by.loc["raw-activation peak layer", "published"] == "L21 (of 22)"
    assert (run.results / "summary.csv").exists()
    assert to_markdown(out).splitlines()[1].startswith("|---|")
