"""The TopK k sweep against the STE SAEs at matched sparsity (notebook 06)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from lib.figures.style import ARCH_COLOURS, ARCH_LABELS, CONDITION_NAMES, caption, title


def plot_k_sweep(sweep, points, model_label: str, raw_bal_acc: float | None = None, n_note=""):
    """Probe balanced accuracy against L0 on the probe's inputs: TopK at each k (one point per
    seed, the line through the seed means), the grid's STE SAEs of the same cell as points."""
    fig, ax = plt.subplots(figsize=(10, 4.6))
    means = sweep.groupby("k")[["l0", "bal_acc"]].mean().sort_values("l0")
    ax.plot(
        means["l0"],
        100 * means["bal_acc"],
        "-",
        color=ARCH_COLOURS["topk"],
        lw=1.5,
        label=f"{ARCH_LABELS['topk']} at k = {', '.join(str(int(k)) for k in means.index)}",
    )
    ax.plot(
        sweep["l0"],
        100 * sweep["bal_acc"],
        "o",
        mfc="none",
        color=ARCH_COLOURS["topk"],
        ms=5,
        label="TopK, one point per seed",
    )
    for k, r in means.iterrows():
        ax.annotate(
            f"k={int(k)}",
            (r["l0"], 100 * r["bal_acc"]),
            textcoords="offset points",
            xytext=(8, -3),
            ha="left",
            fontsize=7,
            color=ARCH_COLOURS["topk"],
        )
    ste = points[points["arch"] == "jumprelu_ste"]
    if len(ste):
        ax.plot(
            ste["l0"],
            100 * ste["bal_acc"],
            "D",
            color=ARCH_COLOURS["jumprelu_ste"],
            ms=7,
            label=f"{ARCH_LABELS['jumprelu_ste']} of the grid, one point per seed",
        )
    if raw_bal_acc is not None and np.isfinite(raw_bal_acc):
        ax.axhline(
            100 * raw_bal_acc,
            color=ARCH_COLOURS["raw"],
            lw=0.9,
            ls="--",
            label="raw activations, same layer",
        )
    ax.set_xscale("log")
    ticks = {int(round(v)) for v in means["l0"]}
    if len(ste):  # the STE SAEs' mean L0, named beside their points (a tick would collide)
        l0 = float(ste["l0"].mean())
        ax.annotate(
            f"STE, L0 {l0:.0f}",
            (l0, 100 * ste["bal_acc"].max()),
            textcoords="offset points",
            xytext=(0, 9),
            ha="center",
            fontsize=8,
            color=ARCH_COLOURS["jumprelu_ste"],
        )
    ticks = sorted(ticks)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("L0: mean active latents per token on the probe's inputs (log scale)")
    ax.set_ylabel("balanced accuracy (%), stratified folds")
    layer, cond = int(sweep["layer"].iloc[0]), sweep["condition"].iloc[0]
    ax.set_title(
        title(
            f"STE against TopK at matched sparsity: L{layer}, {CONDITION_NAMES.get(cond, cond)}",
            model_label,
        ),
        fontsize=11,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption(
        fig,
        "Each TopK SAE is trained like the grid's (same completions, split, steps, seed "
        "recipe) at its k and probed like them. Descriptive: one fit per k and seed. " + n_note,
    )
    return fig
