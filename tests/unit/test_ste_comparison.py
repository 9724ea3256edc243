"""The study's "STE beats TopK in k of n" claim and its summary sentence, on hand-made tables
in the long format of ``results/ste_comparison.csv``."""

import numpy as np
import pandas as pd

from lib.core.markdown import to_markdown
from lib.probing.ste_comparison import COLUMNS, study_claim
from lib.report.summary import _ste_claim


def _table():
    rows = []
    # stratified: STE higher in 3 of 4 TopK cells, one significant win, one collapsed
    for cond, a, b, verdict in [
        ("mixed", 0.70, 0.60, "win"),
        ("deceptive_only", 0.66, 0.65, "inconclusive"),
        ("honest_only", 0.60, 0.62, "inconclusive"),
        ("shuffled", 0.64, 0.50, "collapsed"),
    ]:
        rows.append(
            dict(
                condition=cond,
                cv="stratified",
                arch_b="topk",
                bal_acc_a=a,
                bal_acc_b=b,
                delta=a - b,
                verdict=verdict,
            )
        )
        # the threshold-0 comparison of the same cell is a separate family
        rows.append(
            dict(
                condition=cond,
                cv="stratified",
                arch_b="jumprelu",
                bal_acc_a=a,
                bal_acc_b=0.9,
                delta=a - 0.9,
                verdict="loss",
            )
        )
    rows.append(
        dict(
            condition="mixed",
            cv="scenario",
            arch_b="topk",
            bal_acc_a=0.9,
            bal_acc_b=0.1,
            delta=0.8,
            verdict="win",
        )
    )
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    classes = {"win": "better", "loss": "worse"}
    df["verdict_class"] = [classes.get(v, v) for v in df.verdict]
    return df


def test_study_claim_counts_any_gain_and_significant_wins_separately():
    c = study_claim(_table())
    assert (c["n"], c["ste_higher"], c["wins"], c["losses"]) == (4, 3, 1, 0)
    assert (c["inconclusive"], c["collapsed"]) == (2, 1)
    assert np.isclose(c["mean_ste"], 0.65) and np.isclose(c["mean_other"], 0.5925)
    j = study_claim(_table(), other="jumprelu")
    assert (j["n"], j["ste_higher"], j["losses"]) == (4, 0, 4)
    assert study_claim(_table(), cv="scenario")["wins"] == 1


def test_summary_sentence_reports_both_counts():
    text = _ste_claim(_table(), "stratified")
    assert text.startswith(
        "STE higher in 3 of 4; 1 better, 0 worse, 0 equivalent within 2 points, 2 inconclusive "
        "(Holm over 4)"
    )
    assert _ste_claim(None, "stratified") == "n/a"
    assert _ste_claim(_table().iloc[:0], "stratified") == "n/a"


def test_markdown_table_has_a_header_rule_and_one_line_per_row():
    md = to_markdown(pd.DataFrame({"claim": ["a", "b"], "value": ["1", "2"]})).splitlines()
    assert md[0] == "| claim | value |" and md[1] == "|---|---|" and len(md) == 4
