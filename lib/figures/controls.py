"""Figures of the wording controls (notebook 11, :mod:`lib.probing.wording_controls`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lib.figures.style import caption, title

#: (column, legend, colour, line style) of the AUROC panel
CONTROL_LINES = (
    ("transfer_direct_to_swapped", 'trained on lie = "no", tested on lie = "yes"', "#c0392b", "-"),
    ("transfer_swapped_to_direct", 'trained on lie = "yes", tested on lie = "no"', "#e67e22", "-"),
    ("same_word_no", 'same word "no": lie vs truth, one family', "#2471a3", "--"),
    ("same_word_yes", 'same word "yes": lie vs truth, one family', "#16a085", "--"),
    ("answer_word", 'the word itself: "no" vs "yes" (any label)', "#7f8c8d", ":"),
    ("falsehood", "sincere false vs true (contradiction prompts)", "#8e44ad", "-."),
)


def _x(layers: pd.Series) -> np.ndarray:
    """``embed`` (the response's input embeddings) at -2, apart from layer 0, then the layers."""
    return np.array([-2 if str(v) == "embed" else int(v) for v in layers])


def plot_wording_controls(df: pd.DataFrame, model_label: str, n_note: str = ""):
    """AUROC of each control by layer with its Bonferroni-adjusted cluster-bootstrap band (left),
    and the neutral-calibrated 1%-FPR monitor (right)."""
    df = df[df["pooling"] == "mean"].copy() if "pooling" in df else df.copy()
    x = _x(df["layer"])
    order = np.argsort(x)
    df, x = df.iloc[order], x[order]
    fig, (ax, mon) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    for col, label, colour, ls in CONTROL_LINES:
        if col not in df or df[col].isna().all():
            continue
        ax.plot(x, df[col], ls=ls, color=colour, lw=1.6, marker="o", ms=3, label=label)
        ax.fill_between(x, df[f"{col}_low"], df[f"{col}_high"], color=colour, alpha=0.12, lw=0)
    ax.axhline(0.5, color="#212121", lw=0.8)
    ax.text(x.max(), 0.505, "chance", ha="right", va="bottom", fontsize=8)
    beyond = x[df["verdict"].to_numpy() == "beyond the words"]
    if len(beyond):
        ax.plot(
            beyond,
            np.full(len(beyond), 1.02),
            "k*",
            ms=7,
            clip_on=False,
            label="reads deception beyond the words (all four dark lines above 0.5)",
        )
    ax.set_ylim(0, 1.04)
    ax.set_ylabel("AUROC (band: cluster bootstrap over families,\nBonferroni over layers)")
    ax.set_xlabel("layer (emb: the response's input embeddings, no model computation)")
    ticks = [t for t in ax.get_xticks() if 0 <= t <= x.max()]
    ax.set_xticks([-2, *ticks], ["emb", *[f"{t:g}" for t in ticks]])
    ax.set_title(title("Deception or the answer word?", model_label), fontsize=11)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    if "monitor_recall" in df:
        mon.plot(
            x,
            df["monitor_recall"],
            color="#c0392b",
            marker="o",
            ms=3,
            label="recall on held-out deceptive",
        )
        mon.plot(
            x,
            df["monitor_fpr"],
            color="#2471a3",
            marker="o",
            ms=3,
            label="flagged: held-out neutral prompts",
        )
        mon.axhline(0.01, color="#2471a3", lw=0.8, ls=":")
        top = np.nanmax(df[["monitor_recall", "monitor_fpr"]].to_numpy(dtype=float))
        mon.set_ylim(0, max(0.1, 1.3 * top) if np.isfinite(top) else 1)
        mon.set_xlabel("layer")
        mon.set_xlim(ax.get_xlim())
        every = [t for t in range(0, int(x.max()) + 1, 10)]  # fewer ticks: a narrow panel
        mon.set_xticks([-2, *every[1:]], ["emb", *[str(t) for t in every[1:]]])
        mon.set_ylabel("share of completions flagged")
        mon.set_title(
            "1%-FPR monitor, threshold from neutral prompts\n(Apollo's rule)", fontsize=10
        )
        mon.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    caption(
        fig,
        "Probes on mean-pooled resid_post; folds hold out whole scenario families. A probe that "
        "reads the word 'no' falls below 0.5 when the polarity swaps and sits at 0.5 among answers "
        "of one word. " + n_note,
    )
    return fig


def plot_family_transfer(matrix: pd.DataFrame, model_label: str, layer: int, n_note: str = ""):
    """The family transfer matrix as a heatmap: AUROC, white at 0.5 (chance)."""
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(0.26 * n + 4.5, 0.26 * n + 2.5))
    cmap = plt.get_cmap("RdBu_r").copy()
    cmap.set_bad("#bdbdbd")  # the diagonal, and families with too few completions of a class
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(n), matrix.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(n), matrix.index, fontsize=7)
    ax.set_xlabel("tested on (family)")
    ax.set_ylabel("trained on (family)")
    off = matrix.to_numpy(dtype=float)
    off = off[np.isfinite(off)]
    share = f"{(off > 0.5).mean():.0%}" if off.size else "n/a"
    ax.set_title(
        title(
            f"Transfer across scenario families, layer {layer} (mean {np.mean(off):.2f}; "
            f"{share} of cells above 0.5)",
            model_label,
        ),
        fontsize=10,
    )
    fig.colorbar(im, ax=ax, shrink=0.7, label="AUROC (0.5: chance; blue: inverted)")
    caption(
        fig,
        "One probe per family, trained on its direct and role-swapped decisive "
        "completions (both polarities), scored on every other family; grey: too few "
        "completions of a class. " + n_note,
    )
    return fig


def plot_prompt_probe(table: pd.DataFrame, model_label: str, n_note: str = ""):
    """The last-prompt-token probe per layer: AUROC under stratified folds beside the scenario
    prior, on held-out families with its band, and within prompts (0.5)."""
    x = table["layer"].to_numpy(int)
    fig, ax = plt.subplots(figsize=(8.2, 4.2))
    ax.axhline(0.5, color="#888888", lw=0.8, ls=":", label="chance")
    ax.axhline(
        table["prior"].iloc[0],
        color="#c0392b",
        lw=1.2,
        ls="--",
        label="scenario prior (stratified)",
    )
    ax.plot(x, table["stratified"], "o-", ms=3.5, color="#2c3e50", label="stratified folds")
    ax.fill_between(
        x, table["held_out_low"], table["held_out_high"], color="#2980b9", alpha=0.18, lw=0
    )
    ax.plot(x, table["held_out"], "s-", ms=3.5, color="#2980b9", label="held-out families")
    ax.plot(x, table["within_scenario"], "_", ms=8, color="#7f8c8d", label="within a prompt")
    ax.set_xlabel("layer (residual stream at the prompt's last token)")
    ax.set_ylabel("AUROC, deceptive vs honest")
    low = np.nanmin(table["held_out_low"].to_numpy(float), initial=0.3)
    ax.set_ylim(min(0.3, np.floor(10 * low) / 10), 1.0)
    ax.legend(fontsize=8, ncol=3, loc="upper left", frameon=False)
    ax.set_title(title("A probe that cannot read the response", model_label), fontsize=10)
    level = table["level"].iloc[0] if "level" in table and len(table) else 0.95
    caption(
        fig,
        "Every completion of a prompt shares this vector, so the probe knows the prompt only: it "
        "ties within a prompt, can only learn which prompts are lied on more (as the scenario prior "
        "does) under "
        "stratified folds, and on held-out families reads only what the wording predicts of a "
        f"new situation's rate. Band: cluster bootstrap over families at {level:.1%} "
        "(Bonferroni over layers). " + n_note,
    )
    return fig
