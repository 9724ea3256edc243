"""Figures of the data stages: judge labels (02), residual norms and PCA (03), SAE training (04).

Style (colours, names, saving) comes from :mod:`lib.style`; the figures of the probing stages are
in :mod:`lib.probe_figures`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from lib.style import (
    ARCH_COLOURS,
    ARCH_LABELS,
    ARCH_MARKERS,
    CONDITION_NAMES,
    JUDGE_LABELS,
    LABEL_COLOURS,
    title,
)


def plot_label_counts(counts: dict, model_label: str, primary: str | None = None):
    """Stacked horizontal bars of label counts per scenario, one panel per judge.

    ``counts``: judge name -> DataFrame from ``lib.judges.label_counts`` (index scenario, columns
    deceptive / honest / ambiguous; an ``all`` row is left out). ``primary`` marks the judge later
    stages use.
    """
    judges = list(counts)
    height = 0.45 * max(len(c) for c in counts.values()) + 1.6
    fig, axes = plt.subplots(
        1, len(judges), figsize=(5.2 * len(judges), height), sharey=True, squeeze=False
    )
    order = list(counts[judges[0]].drop(index="all", errors="ignore").index)
    for ax, judge in zip(axes[0], judges, strict=True):
        c = counts[judge].drop(index="all", errors="ignore").reindex(order, fill_value=0)
        y = range(len(c))
        left = [0] * len(c)
        for label in ("deceptive", "honest", "ambiguous"):
            vals = c[label].tolist() if label in c else [0] * len(c)
            ax.barh(list(y), vals, left=left, color=LABEL_COLOURS[label], label=label, height=0.7)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_yticks(list(y), list(c.index))
        ax.set_xlabel("completions")
        ax.grid(axis="y", visible=False)
        name = JUDGE_LABELS.get(judge, judge)
        ax.set_title(f"{name} (primary)" if judge == primary else name)
    axes[0][0].invert_yaxis()  # first scenario on top (the y axis is shared: invert once)
    fig.suptitle(title("Judge labels per scenario", model_label))
    fig.tight_layout()
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3)
    return fig


# ---- capture (03) ------------------------------------------------------------------------------


def plot_layer_norms(norms, model_label: str):
    """Mean residual norm per layer (``lib.activations.norm_table``)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for col, style in zip(norms.columns, ("-o", "-s", ":"), strict=True):
        ax.plot(norms.index, norms[col], style, ms=3, label=f"{col} vectors")
    ax.set(
        xlabel="layer (resid_post)",
        ylabel="mean L2 norm",
        title=title("Residual-stream norm by layer", model_label),
    )
    ax.legend()
    return fig


def plot_pca_by_label(vectors: dict, labels, model_label: str, feature: str = "last"):
    """2-D PCA of pooled vectors for a few layers, one panel each, coloured by judge label.

    ``vectors`` maps layer -> [n, d] array; ``labels`` is a sequence of label strings.
    """
    import numpy as np

    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, len(vectors), figsize=(3.2 * len(vectors), 3.2), squeeze=False)
    for ax, (layer, x) in zip(axes[0], vectors.items(), strict=True):
        x = np.asarray(x, dtype=np.float64)
        x = x - x.mean(0)
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        pc = u[:, :2] * s[:2]
        explained = (s[:2] ** 2 / (s**2).sum()) * 100
        for lab in ("honest", "deceptive", "ambiguous"):
            m = labels == lab
            if m.any():
                ax.scatter(pc[m, 0], pc[m, 1], s=9, alpha=0.7, c=LABEL_COLOURS[lab], label=lab)
        ax.set(
            title=f"layer {layer}",
            xlabel=f"PC1 ({explained[0]:.0f}%)",
            ylabel=f"PC2 ({explained[1]:.0f}%)",
        )
    axes[0][0].legend()
    fig.suptitle(title(f"PCA of `{feature}` residuals, coloured by label", model_label), y=1.04)
    return fig


# ---- SAEs (04) ---------------------------------------------------------------------------------


def plot_sae_training(history: dict, model_label: str, arch: str, name: str = ""):
    """Training curves of one SAE: loss per step (and per epoch), L0 and dead fraction per epoch.

    ``history`` is the dict :func:`lib.sae_training.train_sae` returns (or the ``history`` of a
    ``metrics.json`` plus ``step_loss`` from ``history.json``).
    """
    import numpy as np

    colour = ARCH_COLOURS.get(arch, "#555555")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.1))
    epochs = np.arange(1, len(history["epoch_loss"]) + 1)
    steps = history.get("step_loss") or []
    ax = axes[0]
    if steps:
        per_epoch = len(steps) / max(len(epochs), 1)
        ax.plot(
            np.arange(1, len(steps) + 1) / per_epoch,
            steps,
            color=colour,
            alpha=0.35,
            lw=0.8,
            label="step",
        )
    ax.plot(epochs, history["epoch_loss"], "-o", color=colour, ms=3, label="epoch mean")
    ax.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    ax.legend()
    axes[1].plot(epochs, history["epoch_l0"], "-o", color=colour, ms=3)
    axes[1].set(xlabel="epoch", ylabel="mean active latents", title="L0")
    axes[2].plot(epochs, np.asarray(history["epoch_dead_fraction"]) * 100, "-o", color=colour, ms=3)
    axes[2].set(
        xlabel="epoch", ylabel="% latents silent that epoch", title="dead latents", ylim=(-2, 102)
    )
    label = f"{ARCH_LABELS.get(arch, arch)} SAE training" + (f" ({name})" if name else "")
    fig.suptitle(title(label, model_label), y=1.02)
    fig.tight_layout()
    return fig


def plot_l0_histogram(l0_per_example, d_sae: int, model_label: str, arch: str, name: str = ""):
    """Histogram of the number of active latents per held-out vector."""
    import numpy as np

    l0 = np.asarray(l0_per_example)
    fig, ax = plt.subplots(figsize=(5.2, 3.1))
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
    ax.set_title(title(label, model_label))
    return fig


def plot_sae_grid(metrics, model_label: str):
    """Every trained SAE of a run: FVU against L0 (log), and loss recovered per layer.

    ``metrics`` is :func:`lib.sae_training.grid_metrics` (one row per SAE).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    cond_fill = {"mixed": "full", "deceptive_only": "left", "honest_only": "none"}
    for arch, sub in metrics.groupby("architecture"):
        for cond, rows in sub.groupby("condition"):
            kw = dict(
                color=ARCH_COLOURS.get(arch),
                marker=ARCH_MARKERS.get(arch, "o"),
                fillstyle=cond_fill.get(cond, "full"),
                ls="none",
                ms=7,
            )
            lab = f"{ARCH_LABELS.get(arch, arch)}, {CONDITION_NAMES.get(cond, cond)}"
            axes[0].plot(rows["l0"], rows["fvu"], label=lab, **kw)
            axes[1].plot(rows["layer"], rows["ce_loss_recovered"], **kw)
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    axes[0].set(
        xscale="log",
        xlabel="mean L0 (held-out)",
        ylabel="FVU (held-out)",
        title="sparsity vs reconstruction",
    )
    axes[0].xaxis.set_major_formatter(ScalarFormatter())
    axes[0].xaxis.set_minor_formatter(NullFormatter())
    axes[1].set(
        xlabel="layer", ylabel="CE loss recovered", title="LM loss recovered vs zero-ablation"
    )
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].axhline(1.0, color="#999999", lw=0.8, ls=":")
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=3,
        fontsize=8,
    )
    fig.suptitle(title("The SAE grid", model_label), y=1.02)
    fig.tight_layout()
    return fig
