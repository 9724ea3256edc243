"""Figures of the data stages: judge labels (02), residual norms and label geometry (03), SAE
training and the SAE grid (04, 06). Style (theme, colours, names, saving) comes from
:mod:`lib.figures.style`; the figures of the probing stages are in :mod:`lib.figures.probing`."""

from __future__ import annotations

from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from lib.core import stats
from lib.figures.style import (
    ARCH_COLOURS,
    ARCH_LABELS,
    CONDITION_MARKERS,
    CONDITION_NAMES,
    JUDGE_LABELS,
    LABEL_COLOURS,
    caption,
    title,
)

LABEL_ORDER = ("deceptive", "honest", "ambiguous")


def plot_label_counts(counts: dict, model_label: str, primary: str | None = None, names=None):
    """Stacked horizontal bars of label counts per scenario, one panel per judge, with the
    deceptive share ``k/n`` written at the end of each bar.

    ``counts``: judge -> DataFrame from :func:`lib.judging.labelling.label_counts` (index scenario id,
    columns deceptive / honest / ambiguous; an ``all`` row is left out); ``names``: scenario id ->
    readable title; ``primary``: the judge later stages use.
    """
    judges = list(counts)
    first = counts[judges[0]].drop(index="all", errors="ignore")
    order = list(first.index)
    fig, axes = plt.subplots(
        1,
        len(judges),
        figsize=(5.0 * len(judges) + 3.5, 0.42 * len(order) + 1.9),
        sharey=True,
        squeeze=False,
    )
    for ax, judge in zip(axes[0], judges, strict=True):
        c = counts[judge].drop(index="all", errors="ignore").reindex(order, fill_value=0)
        y = np.arange(len(c))
        left = np.zeros(len(c))
        for label in LABEL_ORDER:
            vals = c[label].to_numpy() if label in c else np.zeros(len(c))
            ax.barh(y, vals, left=left, color=LABEL_COLOURS[label], label=label, height=0.7)
            left += vals
        for yy, (_, row) in zip(y, c.iterrows(), strict=True):
            n = int(sum(row.get(lbl, 0) for lbl in LABEL_ORDER))
            ax.text(
                n + 0.4,
                yy,
                f"{int(row.get('deceptive', 0))}/{n} deceptive",
                va="center",
                fontsize=8,
            )
        ax.set_yticks(y, [(names or {}).get(s, s) for s in c.index])
        ax.set_xlim(0, left.max() * 1.35 + 1)
        ax.set_xlabel("completions")
        ax.grid(axis="y", visible=False)
        name = JUDGE_LABELS.get(judge, judge)
        ax.set_title(f"{name} (primary)" if judge == primary else name)
    axes[0][0].invert_yaxis()  # the first scenario on top (shared y axis: invert once)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right center")
    total = int(first[[lbl for lbl in LABEL_ORDER if lbl in first]].to_numpy().sum())
    fig.suptitle(title(f"Judge labels per scenario ({total} completions)", model_label))
    return fig


# ---- capture (03) ------------------------------------------------------------------------------
def plot_layer_norms(norms, model_label: str):
    """Mean residual norm per layer (:func:`lib.capture.activations.norm_table`)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = {
        "last": "last response token",
        "mean": "mean over the response",
        "tokens": "every response token",
    }
    for col, style in zip(norms.columns, ("-o", "-s", ":"), strict=True):
        ax.plot(norms.index, norms[col], style, ms=3, label=names.get(col, col))
    ax.set(xlabel="layer (residual stream after the block)", ylabel="mean L2 norm")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend()
    fig.suptitle(title("Residual-stream norm by layer", model_label))
    return fig


def _sign_free_auroc(labels, scores) -> float:
    """AUROC of deceptive vs honest along ``scores`` whichever way the axis points (>= 0.5)."""
    m = np.isin(labels, ("deceptive", "honest"))
    a = stats.auroc((labels[m] == "deceptive").astype(int), scores[m])
    return float(max(a, 1 - a)) if np.isfinite(a) else float("nan")


def plot_label_geometry(
    vectors: dict, labels, model_label: str, feature: str = "mean", seed: int = 0
):
    """For a few layers: is the label where the variance is, or along one direction?

    Left: a 2-D PCA of the pooled vectors coloured by label, with the class means and the
    (sign-free) AUROC of deceptive vs honest along PC1 and PC2: how much of the label the largest
    directions of variance carry. Right: the projection of held-out completions on the
    deceptive-minus-honest mean difference estimated on the other half, as outlined histograms
    (no blended overlap colour; integer count ticks) with its held-out AUROC.

    ``vectors``: layer -> ``[n, d]``; ``labels``: label strings (ambiguous ones drawn grey in the
    PCA and left out of the projection and of every AUROC).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    half = rng.random(len(labels)) < 0.5
    fig, axes = plt.subplots(len(vectors), 2, figsize=(10.0, 3.3 * len(vectors)), squeeze=False)
    for (ax_pca, ax_proj), (layer, x) in zip(axes, vectors.items(), strict=True):
        x = np.asarray(x, dtype=np.float64)
        xc = x - x.mean(0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        pc, explained = u[:, :2] * s[:2], 100 * s[:2] ** 2 / (s**2).sum()
        for lab in ("ambiguous", "honest", "deceptive"):
            m = labels == lab
            faint = lab == "ambiguous"
            ax_pca.scatter(
                pc[m, 0],
                pc[m, 1],
                s=5 if faint else 8,
                alpha=0.3 if faint else 0.6,
                c=LABEL_COLOURS[lab],
                lw=0,
            )
        for lab in ("honest", "deceptive"):
            m = labels == lab
            if m.any():
                ax_pca.plot(
                    *pc[m].mean(0), "X", ms=11, color=LABEL_COLOURS[lab], mec="black", mew=1.0
                )
        auc1, auc2 = (_sign_free_auroc(labels, pc[:, i]) for i in range(2))
        ax_pca.set(
            xlabel=f"PC1 ({explained[0]:.0f}% of variance)", ylabel=f"PC2 ({explained[1]:.0f}%)"
        )
        ax_pca.set_title(
            f"layer {layer}: top 2 principal components\nlabel AUROC along PC1 {auc1:.2f}, PC2 {auc2:.2f}",
            fontsize=10,
        )
        fit, test = half & (labels != "ambiguous"), ~half & (labels != "ambiguous")
        direction = x[fit & (labels == "deceptive")].mean(0) - x[fit & (labels == "honest")].mean(0)
        direction /= np.linalg.norm(direction) + 1e-12
        proj = (x - x[fit].mean(0)) @ direction
        bins = np.histogram_bin_edges(proj[test], 25)
        for lab in ("honest", "deceptive"):
            m = test & (labels == lab)
            ax_proj.hist(proj[m], bins=bins, histtype="step", lw=1.8, color=LABEL_COLOURS[lab])
        auc = _sign_free_auroc(labels[test], proj[test])
        ax_proj.set(
            xlabel="projection on the deceptive-minus-honest direction",
            ylabel="held-out completions",
        )
        ax_proj.yaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in (ax_pca, ax_proj):  # no crowded tick labels on wide ranges
            ax.xaxis.set_major_locator(MaxNLocator(5, steps=[1, 2, 5, 10]))
        ax_proj.set_title(
            f"layer {layer}: one direction, held-out half\nheld-out AUROC {auc:.2f}", fontsize=10
        )
    handles = [
        Line2D([], [], marker="o", ls="-", lw=1.8, color=LABEL_COLOURS[lab], label=lab)
        for lab in ("deceptive", "honest")
    ]
    handles += [
        Line2D(
            [],
            [],
            ls="none",
            marker="o",
            color=LABEL_COLOURS["ambiguous"],
            label="ambiguous (PCA only)",
        ),
        Line2D(
            [],
            [],
            ls="none",
            marker="X",
            ms=9,
            color="#888888",
            mec="black",
            label="class mean (PCA)",
        ),
    ]
    fig.legend(handles=handles, loc="outside right center")
    pooling = {"mean": "mean over the response", "last": "last response token"}.get(
        feature, feature
    )
    fig.suptitle(title(f"Label geometry of the residual stream ({pooling})", model_label))
    n_dec, n_hon = int((labels == "deceptive").sum()), int((labels == "honest").sum())
    test = ~half & (labels != "ambiguous")
    caption(
        fig,
        f"n = {len(labels)} completions ({n_dec} deceptive, {n_hon} honest, "
        f"{len(labels) - n_dec - n_hon} ambiguous). Left: the two directions of largest variance; "
        "AUROC of deceptive vs honest along each (0.5: no separation; sign-free, so >= 0.5). "
        "Right: the direction is the difference of class means on a random half; the histograms "
        f"(outlines) and the AUROC are on the other half ({int((test & (labels == 'deceptive')).sum())} "
        f"deceptive, {int((test & (labels == 'honest')).sum())} honest). Where the right AUROC is "
        "far above the left ones, the label lies along a direction that is not where most of "
        "the variance is.",
    )
    return fig


# ---- SAEs (04) ---------------------------------------------------------------------------------
CONDITION_LINES = {"mixed": "-", "deceptive_only": "--", "honest_only": ":"}


def plot_sae_training_curves(runs, model_label: str, layer: int):
    """Training curves of every SAE of one layer against optimiser steps, in three panels: the
    loss per pass over the data, L0 (log scale: a ReLU code's hundreds beside TopK's k) and the
    share of latents silent during a pass. Colour = architecture, line style = training
    condition, one line per seed.

    ``runs``: ``(metrics, history)`` pairs: a ``metrics.json`` and its ``history``.
    """
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.6))
    archs, conds = {}, {}
    for m, history in runs:
        arch, cond = m["architecture"], m["condition"]
        n_pass = len(history["epoch_loss"])
        ends = np.asarray(history.get("epoch_step") or np.arange(1, n_pass + 1))
        style = {"color": ARCH_COLOURS.get(arch, "#555555"), "ls": CONDITION_LINES.get(cond, "-")}
        style.update(lw=1.0, alpha=0.8)
        axes[0].plot(ends, history["epoch_loss"], **style)
        axes[1].plot(ends, history["epoch_l0"], **style)
        axes[2].plot(ends, np.asarray(history["epoch_dead_fraction"]) * 100, **style)
        archs.setdefault(arch, style["color"])
        conds.setdefault(cond, style["ls"])
    axes[0].set(ylabel="training loss (pass mean)", yscale="log", title="loss")
    axes[1].set(ylabel="mean active latents", yscale="log", title="L0")
    axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[1].yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[2].set(ylabel="% latents silent during the pass", title="dead latents", ylim=(-2, 102))
    for ax in axes:
        ax.set_xlabel("optimiser step")
    handles = [Line2D([], [], color=c, lw=2, label=ARCH_LABELS.get(a, a)) for a, c in archs.items()]
    handles += [
        Line2D([], [], color="#555555", ls=ls, label=CONDITION_NAMES.get(c, c))
        for c, ls in conds.items()
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    n_seeds = max(Counter((m["architecture"], m["condition"]) for m, _ in runs).values())
    label = f"SAE training at layer {layer}: {len(runs)} SAEs, one line per seed ({n_seeds} each)"
    fig.suptitle(title(label, model_label))
    return fig


def plot_l0_histogram(l0_per_example, d_sae: int, model_label: str, arch: str, name: str = ""):
    """Histogram of the number of active latents per held-out vector."""
    l0 = np.asarray(l0_per_example)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    hi = int(l0.max()) if l0.size else 1
    bins = np.arange(0, hi + 2) - 0.5 if hi <= 80 else 40
    ax.hist(l0, bins=bins, color=ARCH_COLOURS.get(arch, "#555555"), alpha=0.85)
    if l0.size:
        ax.axvline(
            l0.mean(), color="#212121", ls="--", lw=1, label=f"mean {l0.mean():.1f} of {d_sae}"
        )
        ax.legend()
    ax.set(xlabel="active latents per vector (L0)", ylabel="held-out vectors")
    label = f"{ARCH_LABELS.get(arch, arch)}: L0 per held-out vector" + (
        f" ({name})" if name else ""
    )
    fig.suptitle(title(label, model_label))
    return fig


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks from the largest one <= ``lo`` to the smallest one >= ``hi``."""
    ladder = [m * 10.0**e for e in range(-4, 6) for m in (1, 2, 5)]
    first = max([t for t in ladder if t <= lo], default=ladder[0])
    last = min([t for t in ladder if t >= hi], default=ladder[-1])
    return [t for t in ladder if first <= t <= last]


#: horizontal dodge in decades of L0: per training condition, and per seed within it
CONDITION_DODGE = {"mixed": 0.0, "deceptive_only": -0.075, "honest_only": 0.075}
SEED_DODGE = 0.02


def plot_sae_grid(metrics, model_label: str):
    """Every trained SAE of a run, one panel per layer: held-out FVU against L0 (log-log).

    ``metrics``: :func:`lib.sae.train_grid.grid_metrics` (one row per SAE and seed). Colour =
    architecture, shape = training condition; every seed is its own hollow marker, the seeds of a
    cell joined by a thin line. Markers are dodged horizontally (by condition, then by seed; the
    shift is stated in the caption) so that SAEs with the same L0 (TopK: exactly k) stay visible;
    the axes run from a tick below the smallest value to a tick above the largest.
    """
    layers = sorted(set(metrics.layer))
    fig, axes = plt.subplots(
        1, len(layers), figsize=(4.2 * len(layers) + 2.4, 4.0), sharey=True, squeeze=False
    )
    seeds = sorted(set(metrics.seed_index)) if "seed_index" in metrics else [0]
    mid = (len(seeds) - 1) / 2
    max_shift = max(abs(v) for v in CONDITION_DODGE.values()) + SEED_DODGE * mid
    xticks = _log_ticks(metrics.l0.min(), metrics.l0.max())
    # the axis holds every dodged marker and the ticks on both sides of the data
    xlim = (
        min(xticks[0], metrics.l0.min() / 10**max_shift) / 1.12,
        max(xticks[-1], metrics.l0.max() * 10**max_shift) * 1.12,
    )
    yticks = _log_ticks(metrics.fvu.min(), metrics.fvu.max())
    for ax, layer in zip(axes[0], layers, strict=True):
        d = metrics[metrics.layer == layer]
        for (arch, cond), rows in d.groupby(["architecture", "condition"]):
            rows = rows.sort_values("seed_index") if "seed_index" in rows else rows
            seed = rows.seed_index if "seed_index" in rows else np.zeros(len(rows))
            shift = CONDITION_DODGE.get(cond, 0.0) + SEED_DODGE * (np.asarray(seed) - mid)
            x = rows.l0.to_numpy() * 10**shift
            colour = ARCH_COLOURS.get(arch)
            ax.plot(x, rows.fvu, "-", color=colour, lw=0.8, alpha=0.7)
            ax.plot(
                x,
                rows.fvu,
                ls="none",
                marker=CONDITION_MARKERS.get(cond, "o"),
                ms=5.5,
                mfc="white",
                mec=colour,
                mew=1.3,
            )
            moving = (rows["converged"] == False).to_numpy() if "converged" in rows else None  # noqa: E712
            if moving is not None and moving.any():
                ax.plot(x[moving], rows.fvu[moving], ls="none", marker="x", ms=4, color="#222222")
        for ax_, ticks, name in ((ax.xaxis, xticks, "x"), (ax.yaxis, yticks, "y")):
            getattr(ax, f"set_{name}scale")("log")
            ax_.set_major_locator(FixedLocator(ticks))
            ax_.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
            ax_.set_minor_locator(NullLocator())
            ax_.set_minor_formatter(NullFormatter())
        ax.set_xlim(*xlim)
        ax.set_ylim(yticks[0] / 1.15, yticks[-1] * 1.15)
        ax.set(xlabel="mean active latents (held-out L0, log)", title=f"layer {layer}")
    axes[0][0].set_ylabel("fraction of variance unexplained\n(held-out, log)")
    archs = [a for a in ("topk", "jumprelu", "jumprelu_ste") if a in set(metrics.architecture)]
    handles = [
        Line2D([], [], ls="none", marker="s", color=ARCH_COLOURS[a], label=ARCH_LABELS[a])
        for a in archs
    ]
    handles += [
        Line2D(
            [],
            [],
            ls="none",
            marker=CONDITION_MARKERS[c],
            mfc="white",
            mec="#555555",
            mew=1.3,
            label=f"trained on: {CONDITION_NAMES[c]}",
        )
        for c in CONDITION_NAMES
        if c in set(metrics.condition)
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="#555555",
            lw=0.8,
            marker="o",
            mfc="white",
            ms=4,
            label="seeds of one SAE cell",
        )
    )
    n_moving = int((metrics["converged"] == False).sum()) if "converged" in metrics else 0  # noqa: E712
    if n_moving:
        handles.append(
            Line2D([], [], ls="none", marker="x", ms=4, color="#222222", label="not converged")
        )
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    n_seeds = int(metrics.groupby(["layer", "architecture", "condition"]).size().max())
    fig.suptitle(
        title(
            f"Sparsity and reconstruction of every SAE ({len(metrics)} SAEs, {n_seeds} seeds per cell)",
            model_label,
        )
    )
    pct = round(100 * (10**max_shift - 1))
    note = ""
    if {"n_completions", "n_heldout_completions", "n_eval_vectors"} <= set(metrics.columns):
        sizes = metrics.groupby("condition")[
            ["n_completions", "n_heldout_completions", "n_eval_vectors"]
        ].max()
        order = [c for c in CONDITION_NAMES if c in sizes.index]
        sizes = sizes.reindex(order + [c for c in sizes.index if c not in order])
        note = (
            "Completions per training condition (of them held out for FVU and L0, and their "
            "token vectors): "
            + "; ".join(
                f"{CONDITION_NAMES.get(c, c)} n = {int(r.n_completions)} "
                f"({int(r.n_heldout_completions)} held out, {int(r.n_eval_vectors)} vectors)"
                for c, r in sizes.iterrows()
            )
            + ". "
        )
    caption(
        fig,
        note + "Lower left is better (fewer active latents, less variance left unexplained). One "
        "hollow marker per SAE seed, the seeds of a cell joined by a line; markers are dodged "
        f"horizontally by training condition and seed (at most {pct}% of L0) so that SAEs "
        "with the same L0 do not hide each other (TopK's L0 is exactly its k)."
        + (
            f" x: {n_moving} of {len(metrics)} SAEs had not converged (mean L0 still moved more "
            "than 5% over the last 10% of their steps): their L0 and FVU are not final."
            if n_moving
            else ""
        ),
    )
    return fig
