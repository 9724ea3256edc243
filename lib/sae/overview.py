"""What notebook 04 shows of the SAEs it trained, short and true for one cell or the whole grid:
one sentence for the training budget and convergence (not a line per SAE), a metrics table with
one row per SAE that fits a page, and which SAEs its figures draw (every SAE of one layer for the
training curves; an SAE whose L0 varies for the L0 histogram: a TopK SAE's is one bar at k)."""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd

from lib.sae.trainer import L0_STABLE


def seed_index(sae_id: str) -> int:
    """0 for ``..._mixed``, 2 for ``..._mixed_s2`` (the folder names of ``train_grid``)."""
    match = re.search(r"_s(\d+)$", sae_id)
    return int(match.group(1)) if match else 0


#: training conditions in a table row
CONDITION_SHORT = {"mixed": "mixed", "deceptive_only": "deceptive", "honest_only": "honest"}


def short_name(m: dict) -> str:
    """``jumprelu_ste L2 deceptive s1``: an SAE in a table row, without the run's prefix."""
    cond = CONDITION_SHORT.get(m["condition"], m["condition"])
    return f"{m['architecture']} L{m['layer']} {cond} s{seed_index(m['sae_id'])}"


def _spread(values, fmt: str = "{}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)} to {fmt.format(hi)}"


def training_summary(metrics: dict[str, dict]) -> str:
    """Two sentences on every SAE of ``metrics`` (``{sae_id: metrics.json}``): how many, their
    budget (optimiser steps, and what set it), and which had not converged."""
    ms = list(metrics.values())
    if not ms:
        return "no SAEs"
    cells = {(m["layer"], m["architecture"], m["condition"]) for m in ms}
    seeds = {seed_index(m["sae_id"]) for m in ms}
    budgets = Counter(m["budget"] for m in ms)
    why = {
        "steps": "sae.steps, the same for every condition",
        "epochs": f"sae.epochs: {_spread([round(m['epochs'], 2) for m in ms], '{:g}')} passes "
        "over the training vectors",
    }
    steps = _spread([m["train_steps"] for m in ms])
    each = " each" if len({m["train_steps"] for m in ms}) == 1 else ""
    first = (
        f"{len(ms)} SAEs ({len(cells)} grid cell(s) x {len(seeds)} seed(s)) trained for {steps} "
        f"optimiser steps{each} ({'; '.join(why[b] for b in budgets)})."
    )
    moving = [m for m in ms if m.get("converged") is False]
    if not moving:
        known = sum(m.get("converged") is True for m in ms)
        return first + (
            f" All {known} converged (mean L0 moved less than {L0_STABLE:.0%} over the last 10% "
            "of their steps)." if known == len(ms) else f" {known} of {len(ms)} converged."
        )  # fmt: skip
    groups = {}
    for m in moving:
        groups.setdefault(m["architecture"], set()).add(m["layer"])
    where = "; ".join(
        f"{sum(m['architecture'] == a for m in moving)} of "
        f"{sum(m['architecture'] == a for m in ms)} {a} SAEs (layer(s) "
        f"{', '.join(map(str, sorted(layers)))})"
        for a, layers in groups.items()
    )
    change = _spread([abs(m["l0_change_last_10pct"]) * 100 for m in moving], "{:.1f}")
    return first + (
        f" Not converged: {len(moving)} of {len(ms)}, their mean L0 still moving {change}% over "
        f"the last 10% of steps (limit {L0_STABLE:.0%}): {where}."
        + (
            " An STE JumpReLU's L0 falls as a power of the steps with no plateau in sight (30,000"
            " steps on the organism: tests/benchmarks/bench_ste_convergence.py), so no CPU budget"
            " converges it: compare it with other SAEs at its measured L0 (notebook 06's k sweep)."
            if "jumprelu_ste" in groups
            else ""
        )
    )


def data_lines(metrics: dict[str, dict]) -> list[str]:
    """One line per training condition: completions and token vectors trained on / held out."""
    out = {}
    for m in metrics.values():
        out.setdefault(
            m["condition"],
            f"{m['condition']}: {m['n_train_completions']} training / "
            f"{m['n_heldout_completions']} held-out completions ({m['n_train_vectors']} / "
            f"{m['n_eval_vectors']} token vectors)",
        )
    return list(out.values())


def metrics_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """One row per SAE with short columns (held-out L0, FVU, dead latents, dCE, KL, the mean
    threshold, converged): at most 80 characters wide as text, whatever the grid's size. (CE loss
    recovered, near 1 for every SAE, stays in metrics.json.)"""
    rows = {
        short_name(m): {
            "L0": f"{m['l0']:.1f}",
            "FVU": f"{m['fvu']:.4f}",
            "dead": f"{m['dead_fraction']:.0%}",
            "dCE": f"{m['ce_delta']:.4f}",
            "KL": f"{m['kl']:.4f}",
            "thr.": "-" if m["threshold_mean"] is None else f"{m['threshold_mean']:.3g}",
            "conv.": {True: "yes", False: "no", None: "-"}[m.get("converged")],
        }
        for m in metrics.values()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "SAE"
    return table


def curve_layer(metrics: dict[str, dict]) -> int:
    """The layer whose SAEs the training curves show: the first of the grid."""
    return min(m["layer"] for m in metrics.values())


def histogram_saes(metrics: dict[str, dict]) -> list[str]:
    """The keys of ``metrics`` to draw L0 histograms of: one SAE per architecture whose L0 varies from vector to vector (not TopK: its histogram
    is one bar at k), the first seed in :func:`curve_layer`; a TopK SAE only when there is no
    other."""
    layer = curve_layer(metrics)
    ordered = sorted(
        metrics.items(), key=lambda kv: (kv[1]["layer"] != layer, seed_index(kv[1]["sae_id"]))
    )
    picks: dict[str, str] = {}
    for name, m in ordered:
        if m["architecture"] != "topk":
            picks.setdefault(m["architecture"], name)
    return list(picks.values()) or [ordered[0][0]]
