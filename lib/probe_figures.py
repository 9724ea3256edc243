"""Figures of the probing stages: layer profile, SAE probes, controls and leakage (05), the STE
comparison (06).

Style (colours, names, saving) comes from :mod:`lib.style`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from lib.style import (
    ARCH_COLOURS,
    ARCH_LABELS,
    ARCH_MARKERS,
    CONDITION_NAMES,
    CV_LABELS,
    CV_SHORT,
    CV_STYLES,
    METRIC_LABELS,
    SAE_SOURCE_LABELS,
    SAE_SOURCE_SHORT,
    title,
)


def _sae_offsets(sae):
    """A small x-offset per (architecture, condition) so SAE points sit beside the raw line."""
    cells = sorted({(a, c) for a, c in zip(sae["arch"], sae["condition"], strict=True)}, key=str)
    span = 0.6
    step = span / max(len(cells), 1)
    return {cell: 0.12 + i * step for i, cell in enumerate(cells)}


def plot_layer_profile(
    profile,
    model_label: str,
    sae=None,
    metric: str = "bal_acc",
    sae_layers=None,
    sae_feature: str | None = None,
):
    """Deception probe ``metric`` by layer: one panel per pooled feature, both CV modes with 95% CIs.

    ``profile`` is ``results/layer_profile.csv``; ``sae`` (optional, ``results/sae_probes.csv``)
    adds the grid SAE probes beside their layer on the ``sae_feature`` panel (filled markers:
    stratified, hollow: leave-one-scenario-out), with their CIs. ``sae_layers`` are marked with
    dotted vertical lines.
    """
    dec = profile[(profile["target"] == "deception") & (profile["metric"] == metric)]
    features = [f for f in ("last", "mean") if f in set(dec["feature"])]
    fig, axes = plt.subplots(
        1, len(features), figsize=(5.6 * len(features), 3.8), squeeze=False, sharey=True
    )
    for ax, feature in zip(axes[0], features, strict=True):
        for cv in ("stratified", "scenario"):
            d = dec[(dec["feature"] == feature) & (dec["cv"] == cv)].sort_values("layer")
            if d.empty:
                continue
            colour = ARCH_COLOURS["raw"] if cv == "stratified" else "#7f8c8d"
            ax.plot(
                d["layer"],
                d["value"],
                CV_STYLES[cv],
                color=colour,
                marker="o",
                ms=3.5,
                label=f"raw, {CV_LABELS[cv]}",
            )
            ax.fill_between(
                d["layer"],
                d["ci_low"],
                d["ci_high"],
                color=colour,
                alpha=0.15 if cv == "stratified" else 0.1,
                lw=0,
            )
        chance = 0.5 if metric != "recall_at_1fpr" else 0.01
        ax.axhline(chance, color="#999999", lw=0.9, ls=":", label="chance")
        for layer in sae_layers or []:
            ax.axvline(layer, color="#bbbbbb", lw=0.8, ls=":", zorder=0)
        if sae is not None and metric == "bal_acc" and feature == (sae_feature or feature):
            grid = sae[(sae["sae_source"] == "grid")].dropna(subset=["bal_acc"])
            offsets = _sae_offsets(grid) if len(grid) else {}
            seen = set()
            for _, r in grid.iterrows():
                arch = r["arch"]
                filled = r["cv"] == "stratified"
                x = r["layer"] + offsets[(arch, r["condition"])] + (0 if filled else 0.03)
                lab = None
                if filled and arch not in seen:
                    lab = f"{ARCH_LABELS.get(arch, arch)} SAE"
                    seen.add(arch)
                ax.errorbar(
                    x,
                    r["bal_acc"],
                    yerr=[
                        [r["bal_acc"] - r["bal_acc_ci_low"]],
                        [r["bal_acc_ci_high"] - r["bal_acc"]],
                    ],
                    fmt=ARCH_MARKERS.get(arch, "o"),
                    color=ARCH_COLOURS.get(arch, "#555555"),
                    ms=4.5,
                    lw=0.7,
                    mfc=ARCH_COLOURS.get(arch, "#555555") if filled else "white",
                    label=lab,
                    alpha=0.9,
                )
        ax.set(xlabel="layer (resid_post)", title=f"`{feature}` pooling")
    axes[0][0].set_ylabel(METRIC_LABELS.get(metric, metric) + " (95% CI)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    for ax in axes[0][:-1]:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab, strict=True):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8)
    fig.tight_layout()
    fig.suptitle(
        title(f"Deception probe {METRIC_LABELS.get(metric, metric)} by layer", model_label),
        y=1.0,
        va="bottom",
    )
    return fig


def plot_sae_vs_raw(sae, model_label: str):
    """Heatmaps of SAE minus raw balanced accuracy (pp): one panel per (source, CV mode).

    Rows: architecture x condition; columns: layer. ``*`` marks Holm-significant differences
    (p_holm < 0.05); empty cells are SAEs without a result (see their ``note``).
    """
    import numpy as np

    panels = [
        (src, cv)
        for src in ("grid", "refit_all", "per_fold")
        for cv in ("stratified", "scenario")
        if ((sae["sae_source"] == src) & (sae["cv"] == cv)).any()
    ]
    rows = sorted(
        {(a, c) for a, c in zip(sae["arch"], sae["condition"], strict=True)},
        key=lambda t: (list(ARCH_LABELS).index(t[0]) if t[0] in ARCH_LABELS else 9, t[1]),
    )
    layers = sorted(set(sae["layer"]))
    lim = float(np.nanmax(np.abs(sae["delta"]))) * 100 if sae["delta"].notna().any() else 1.0
    lim = max(lim, 1.0)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(1.1 * len(layers), 2.2) * len(panels) + 3.5, 0.42 * len(rows) + 1.8),
        squeeze=False,
        sharey=True,
    )
    im = None
    for ax, (src, cv) in zip(axes[0], panels, strict=True):
        sub = sae[(sae["sae_source"] == src) & (sae["cv"] == cv)]
        grid = np.full((len(rows), len(layers)), np.nan)
        for _, r in sub.iterrows():
            i, j = rows.index((r["arch"], r["condition"])), layers.index(r["layer"])
            grid[i, j] = r["delta"] * 100
            if np.isfinite(grid[i, j]):
                star = "*" if r["p_holm"] < 0.05 else ""
                ink = "white" if abs(grid[i, j]) > 0.6 * lim else "black"
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:+.1f}{star}",
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color=ink,
                )
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers])
        ax.set_yticks(
            range(len(rows)),
            [f"{ARCH_LABELS.get(a, a)}, {CONDITION_NAMES.get(c, c)}" for a, c in rows],
        )
        ax.set(xlabel="layer", title=f"{SAE_SOURCE_SHORT.get(src, src)}\n{CV_SHORT.get(cv, cv)}")
        ax.title.set_size(9)
        ax.grid(False)
    fig.colorbar(im, ax=axes[0].tolist(), label="SAE - raw balanced accuracy (pp)", shrink=0.9)
    fig.suptitle(
        title("SAE probes against the raw probe of their layer (* Holm p < 0.05)", model_label),
        y=1.0,
        va="bottom",
    )
    return fig


def plot_probe_controls(profile, model_label: str):
    """Controls per layer: the shuffled-label null (mean, central 95%) and scenario identity."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sh = profile[(profile["target"] == "shuffled_labels") & (profile["metric"] == "bal_acc")]
    styles = {"last": "o", "mean": "s"}
    for (feature, cv), d in sh.groupby(["feature", "cv"]):
        d = d.sort_values("layer")
        colour = ARCH_COLOURS["raw"] if cv == "stratified" else "#7f8c8d"
        axes[0].plot(
            d["layer"],
            d["value"],
            CV_STYLES.get(cv, "-"),
            marker=styles.get(feature, "o"),
            ms=3,
            color=colour,
            label=f"{feature}, {CV_LABELS.get(cv, cv)}",
        )
        axes[0].fill_between(d["layer"], d["ci_low"], d["ci_high"], color=colour, alpha=0.08, lw=0)
    axes[0].axhline(0.5, color="#999999", lw=0.9, ls=":")
    axes[0].set(
        xlabel="layer", ylabel="balanced accuracy", title="shuffled labels (mean, 95% of shuffles)"
    )
    axes[0].legend(fontsize=7)
    sid = profile[profile["target"] == "scenario_identity"]
    for feature, d in sid.groupby("feature"):
        d = d.sort_values("layer")
        axes[1].plot(
            d["layer"],
            d["value"],
            "-",
            marker=styles.get(feature, "o"),
            ms=3,
            label=f"`{feature}` pooling",
        )
        axes[1].fill_between(d["layer"], d["ci_low"], d["ci_high"], alpha=0.15, lw=0)
    if len(sid):
        axes[1].axhline(
            float(sid["chance"].dropna().iloc[0]) if sid["chance"].notna().any() else 0,
            color="#999999",
            lw=0.9,
            ls=":",
            label="chance",
        )
    axes[1].set(
        xlabel="layer",
        ylabel="balanced accuracy (multiclass)",
        title="which scenario? (confound check)",
        ylim=(0, 1.02),
    )
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.suptitle(title("Probe controls", model_label), y=1.0, va="bottom")
    return fig


def plot_leakage(comparison, model_label: str):
    """Per SAE: stratified balanced accuracy with an SAE that saw the test completions (x) vs
    SAEs trained inside each fold (y). Points below the diagonal: the score owed to leakage."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ref = comparison["reference"].iloc[0] if len(comparison) else "grid"
    for arch, d in comparison.groupby("arch"):
        ax.scatter(
            d["bal_acc_reference"],
            d["bal_acc_per_fold"],
            marker=ARCH_MARKERS.get(arch, "o"),
            color=ARCH_COLOURS.get(arch, "#555555"),
            label=ARCH_LABELS.get(arch, arch),
            s=30,
            alpha=0.85,
        )
    vals = (
        np.concatenate([comparison["bal_acc_reference"], comparison["bal_acc_per_fold"]])
        if len(comparison)
        else np.array([0.5, 1])
    )
    vals = vals[np.isfinite(vals)] if vals.size else np.array([0.5, 1.0])
    lo, hi = (float(vals.min()) - 0.02, float(vals.max()) + 0.02) if vals.size else (0.4, 1.0)
    ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.9, ls=":")
    ax.set(
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel=f"balanced accuracy, {SAE_SOURCE_LABELS.get(ref, ref)}",
        ylabel="balanced accuracy, leakage-free (per-fold SAEs)",
    )
    ax.xaxis.label.set_size(8)
    ax.legend(fontsize=8)
    ax.set_title(title("Leakage: SAE probes with and without the test data", model_label))
    return fig


# ---- STE comparison and summary (06, 07) -------------------------------------------------------


def plot_ste_vs_topk(df, model_label: str, cv: str = "stratified"):
    """Paired plot: each (layer, condition) a line from TopK to STE JumpReLU (and threshold-0)."""
    import numpy as np

    rows = df[df.cv == cv].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    xs = {"topk": 0, "jumprelu": 1, "jumprelu_ste": 2}
    verdict_colour = {
        "wins": ARCH_COLOURS["jumprelu_ste"],
        "loses": "#c0392b",
        "inconclusive": "#7f8c8d",
        "collapsed": "#000000",
        "n/a": "#bdc3c7",
    }
    for _, r in rows.iterrows():
        ys = [r.topk_bal_acc, r.jumprelu_bal_acc, r.jumprelu_ste_bal_acc]
        ax.plot(
            list(xs.values()),
            ys,
            "-",
            color=verdict_colour.get(r.verdict, "#7f8c8d"),
            alpha=0.8,
            lw=1.2,
        )
        ax.annotate(
            f"L{int(r.layer)} {CONDITION_NAMES.get(r.condition, r.condition)}",
            (2.05, r.jumprelu_ste_bal_acc),
            fontsize=7,
            va="center",
        )
    for arch, x in xs.items():
        col = rows[f"{arch}_bal_acc"].to_numpy(dtype=float)
        ax.scatter(
            np.full(len(col), x), col, color=ARCH_COLOURS[arch], marker=ARCH_MARKERS[arch], zorder=3
        )
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xticks(
        list(xs.values()),
        [ARCH_LABELS["topk"], ARCH_LABELS["jumprelu"], ARCH_LABELS["jumprelu_ste"]],
    )
    ax.set_xlim(-0.3, 2.9)
    ax.set_ylabel("probe balanced accuracy")
    handles = [
        plt.Line2D([], [], color=c, label=f"STE vs TopK: {v}")
        for v, c in verdict_colour.items()
        if (rows.verdict == v).any()
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.set_title(
        title(f"STE JumpReLU vs TopK per (layer, condition), {CV_LABELS.get(cv, cv)}", model_label)
    )
    return fig
