"""Notebook 07's checked lines read as sentences: the counts, and which of our settings each claim
of the summary table holds a result in (not the table's column names listed per claim)."""

from __future__ import annotations

import pandas as pd

from lib.report.summary import NA, describe_counts, describe_coverage


def test_counts_and_coverage_are_sentences():
    facts = {"n": 261, "n_deceptive": 81, "n_honest": 180, "n_saes": 54, "n_cells": 18}
    assert describe_counts(facts) == (
        "This run has 261 completions (81 deceptive, 180 honest) and 54 SAEs in 18 grid cells."
    )
    summary = pd.DataFrame(
        [
            ["raw-activation peak layer", "6", "5", "6", NA],
            ["best SAE probe", "90%", "91%", "80%", "79%"],
            ["SAEs beating raw", "4", "3", "2", "1"],
            ["leakage", NA, NA, NA, "+1.0"],
            ["steering", NA, NA, NA, NA],
        ],
        columns=["claim", "published: TinyLlama-1.1B", "ours: study's recipe",
                 "ours: held-out scenarios", "ours: leakage-free SAEs"],
    )  # fmt: skip
    assert describe_coverage(summary) == [
        "The table below sets 5 claims beside the study's; this run measured",
        "- 1 claim under the study's recipe and on held-out scenarios: raw-activation peak layer.",
        "- 2 claims under the study's recipe, on held-out scenarios and with leakage-free SAEs: "
        "best SAE probe; SAEs beating raw.",
        "- 1 claim with leakage-free SAEs: leakage.",
        "- 1 claim in none of its settings (no result): steering.",
    ]
