"""Notebook 04's view of the SAEs it trained: one sentence for the budget (not a line per SAE),
a table one row per SAE within 80 characters, an L0 histogram of an SAE whose L0 varies, and the
training curves of every SAE of one layer."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from lib.figures.data_and_saes import plot_sae_training_curves  # noqa: E402
from lib.sae import overview  # noqa: E402


def sae(arch, layer, cond, seed, converged=True, change=0.01, steps=500):
    sae_id = f"organism_{arch}_L{layer}_{cond}" + (f"_s{seed}" if seed else "")
    return sae_id, {
        "sae_id": sae_id, "architecture": arch, "layer": layer, "condition": cond,
        "train_steps": steps, "budget": "steps", "epochs": 13.5, "converged": converged,
        "l0_change_last_10pct": change, "l0": 16.0 if arch == "topk" else 90.5, "fvu": 0.0131,
        "dead_fraction": 0.0, "ce_delta": -0.0012, "kl": 0.0087,
        "threshold_mean": None if arch == "topk" else 1.012, "n_train_completions": 235,
        "n_heldout_completions": 26, "n_train_vectors": 4628, "n_eval_vectors": 496,
        "history": {"epoch_loss": [3.0, 2.0], "epoch_l0": [100.0, 90.0],
                    "epoch_dead_fraction": [0.0, 0.1], "epoch_step": [250, 500]},
    }  # fmt: skip


GRID = dict(
    [
        sae("topk", layer, c, s)
        for layer in (2, 5)
        for c in ("mixed", "deceptive_only")
        for s in range(3)
    ]  # fmt: skip
    + [sae("jumprelu_ste", 5, "mixed", s, False, -0.098 - s / 100) for s in range(3)]
    + [sae("jumprelu_ste", 2, "honest_only", s, False, -0.09) for s in range(3)]
)
WIDEST = dict([sae("jumprelu_ste", 12, "deceptive_only", 2)])  # the longest row name
WIDEST["organism_jumprelu_ste_L12_deceptive_only_s2"].update(l0=1234.5, ce_delta=-0.0123)


def test_one_sentence_for_the_budget_and_the_unconverged():
    assert overview.training_summary(GRID) == (
        "18 SAEs (6 grid cell(s) x 3 seed(s)) trained for 500 optimiser steps each (sae.steps, "
        "the same for every condition). Not converged: 6 of 18, their mean L0 still moving 9.0 "
        "to 11.8% over the last 10% of steps (limit 5%): 6 of 6 jumprelu_ste SAEs (layer(s) 2, 5)."
        " An STE JumpReLU's L0 falls as a power of the steps with no plateau in sight (30,000 "
        "steps on the organism: tests/benchmarks/bench_ste_convergence.py), so no CPU budget "
        "converges it: compare it with other SAEs at its measured L0 (notebook 06's k sweep)."
    )
    topk = {k: m for k, m in GRID.items() if m["architecture"] == "topk"}
    assert overview.training_summary(topk).endswith(
        "All 12 converged (mean L0 moved less than 5% over the last 10% of their steps)."
    )


def test_the_table_has_one_row_per_sae_and_fits_80_columns():
    table = overview.metrics_table(GRID)
    assert len(table) == 18 and table.index.name == "SAE"
    assert table.loc["jumprelu_ste L5 mixed s2"].tolist() == [
        "90.5", "0.0131", "0%", "-0.0012", "0.0087", "1.01", "no"
    ]  # fmt: skip
    widest = overview.metrics_table({**GRID, **WIDEST})
    assert max(len(line) for line in widest.to_string().splitlines()) <= 80
    assert "\\" not in repr(widest)  # pandas' text repr (a notebook's text/plain) does not wrap
    assert overview.data_lines(GRID)[0] == (
        "mixed: 235 training / 26 held-out completions (4628 / 496 token vectors)"
    )


def test_histograms_skip_topk_and_curves_show_every_sae_of_a_layer():
    assert overview.histogram_saes(GRID) == ["organism_jumprelu_ste_L2_honest_only"]
    topk = {k: m for k, m in GRID.items() if m["architecture"] == "topk"}
    assert overview.histogram_saes(topk) == ["organism_topk_L2_mixed"]  # nothing else to draw
    assert overview.curve_layer(GRID) == 2
    curves = [(m, m["history"]) for m in GRID.values() if m["layer"] == 2]
    fig = plot_sae_training_curves(curves, "model organism", 2)
    assert [len(ax.get_lines()) for ax in fig.axes] == [9, 9, 9]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["TopK", "JumpReLU (STE)", "mixed", "deceptive only", "honest only"]
