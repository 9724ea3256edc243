"""Figures of the probing stages: the layer profile, SAE probes, leakage and controls (05) and
the STE comparison (06). Style (theme, colours, names, saving) comes from :mod:`lib.figures.style`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lib.figures.style import (
    ARCH_COLOURS,
    ARCH_LABELS,
    CONDITION_MARKERS,
    CONDITION_NAMES,
    CV_COLOURS,
    CV_LABELS,
    CV_SHORT,
    CV_STYLES,
    METRIC_LABELS,
    caption,
    n_text,
    title,
)
from lib.probing.sae_verdicts import DESCRIPTIVE
from lib.probing.wording import WORDING

ARCH_ORDER = ("topk", "jumprelu", "jumprelu_ste")


#: line style of each wording baseline in the layer profile
WORDING_STYLES = {"text": ":", "first_tokens": "-.", "embed": (0, (8, 2, 1, 2, 1, 2))}


def _curve(profile, cv, feature, metric):
    d = profile[(profile.cv == cv) & (profile.feature == feature) & (profile.metric == metric)]
    if "subset" in d:
        d = d[d.subset == "all"]
    return d.dropna(subset=["value"]).sort_values("layer")


CONDITION_ORDER = tuple(CONDITION_NAMES)


def _cell_order(cell) -> tuple:
    arch, cond = cell
    return (
        ARCH_ORDER.index(arch) if arch in ARCH_ORDER else 9,
        CONDITION_ORDER.index(cond) if cond in CONDITION_ORDER else 9,
        cond,
    )


#: x-offset of each CV mode inside an SAE cell's slot (filled: stratified, hollow: held-out)
CV_DODGE = {"stratified": -0.2, "scenario": 0.2}


def _sae_panel(ax, grid, profile, feature, metric) -> list[int]:
    """The grid SAE probes of one pooled feature, one slot per (architecture, condition) in one
    group per layer, beside the raw probe of that layer (lines and 95% CI bands across the
    group); each CV mode dodged in its slot, marker = mean over seeds, bar = seed range. Returns
    the layers drawn."""
    cells = sorted(
        {(a, c) for a, c in zip(grid.arch, grid.condition, strict=True)}, key=_cell_order
    )
    layers = sorted({int(x) for x in grid.layer})
    width = len(cells) + 1  # one empty slot between layer groups
    for g, layer in enumerate(layers):
        x0, x1 = g * width - 0.5, g * width + len(cells) - 0.5
        for cv in ("stratified", "scenario"):
            raw = _curve(profile, cv, feature, metric)
            raw = raw[raw.layer == layer]
            if len(raw):
                r = raw.iloc[0]
                ax.fill_between(
                    [x0, x1], r.ci_low, r.ci_high, color=CV_COLOURS[cv], alpha=0.12, lw=0
                )
                ax.plot([x0, x1], [r.value] * 2, CV_STYLES[cv], color=CV_COLOURS[cv], lw=1.4)
        if g:
            ax.axvline(x0 - 0.5, color="#bbbbbb", lw=0.8)
        for i, (arch, cond) in enumerate(cells):
            colour = ARCH_COLOURS.get(arch, "#555555")
            for cv in ("stratified", "scenario"):
                d = grid[
                    (grid.layer == layer)
                    & (grid.arch == arch)
                    & (grid.condition == cond)
                    & (grid.cv == cv)
                ]
                if d.empty:
                    continue
                x = g * width + i + CV_DODGE[cv]
                ax.plot([x, x], [d.bal_acc.min(), d.bal_acc.max()], color=colour, lw=1.0, zorder=3)
                ax.plot(
                    x,
                    d.bal_acc.mean(),
                    CONDITION_MARKERS.get(cond, "o"),
                    color=colour,
                    ms=5,
                    mfc=colour if cv == "stratified" else "white",
                    mew=1.1,
                    zorder=4,
                )
    ax.set_xlim(-0.7, (len(layers) - 1) * width + len(cells) - 0.3)
    ax.set_xticks([g * width + (len(cells) - 1) / 2 for g in range(len(layers))])
    ax.set_xticklabels([f"layer {x}" for x in layers])
    ax.grid(axis="x", visible=False)
    return layers


def plot_layer_profile(profile, model_label, sae=None, metric="bal_acc", pooling="mean", n=None):
    """Deception probe ``metric`` by layer: one panel per pooled feature, both CV modes with 95%
    CI bands, the wording baselines as thin horizontal lines (colour: CV mode; style: baseline);
    with ``sae`` (per-seed rows of ``sae_probes.csv``) a panel to the right of the profile(s)
    shows every grid SAE probe beside the raw probe of its layer.

    SAE panel: one slot per (architecture, training condition) in one group per layer; colour =
    architecture, shape = training condition, filled = stratified folds, hollow = held-out
    scenarios; the marker is the mean over seeds, the bar spans the seeds; the raw probe of the
    layer (line and 95% CI band, both CV modes) runs across its group. Triangles on the top edge of
    a profile panel mark the layers that have SAEs.
    """
    features = [f for f in ("last", "mean") if f in set(profile.feature)]
    grid = None
    if sae is not None and metric == "bal_acc" and len(sae):
        grid = sae[(sae.sae_source == "grid") & sae.raw_feature.isin(features)].dropna(
            subset=["bal_acc"]
        )
        grid = grid if len(grid) else None
    sae_features = [f for f in features if grid is not None and (grid.raw_feature == f).any()]
    # the profile(s) on top; the SAE probes (if any) in a full-width row below, same y axis
    fig = plt.figure(figsize=(12.6, 7.6 if sae_features else 4.4))
    gs = fig.add_gridspec(
        2 if sae_features else 1, 1, height_ratios=[1.1, 1] if sae_features else None
    )
    top = gs[0].subgridspec(1, len(features))
    first = fig.add_subplot(top[0])
    profile_axes = [first] + [
        fig.add_subplot(top[i], sharey=first) for i in range(1, len(features))
    ]
    sae_axes = []
    if sae_features:
        below = gs[1].subgridspec(1, len(sae_features))
        sae_axes = [fig.add_subplot(below[i], sharey=first) for i in range(len(sae_features))]
    for ax in profile_axes[1:]:
        ax.tick_params(axis="y", labelleft=False)
    chance = 0.5 if metric != "recall_at_1fpr" else 0.01
    for ax, feature in zip(profile_axes, features, strict=True):
        for cv in ("stratified", "scenario"):
            d = _curve(profile, cv, feature, metric)
            if d.empty:
                continue
            ax.plot(d.layer, d.value, CV_STYLES[cv], color=CV_COLOURS[cv], marker="o", ms=4, lw=1.6)
            ax.fill_between(
                d.layer.astype(float), d.ci_low, d.ci_high, color=CV_COLOURS[cv], alpha=0.12, lw=0
            )
            for (
                baseline,
                ls,
            ) in WORDING_STYLES.items():  # thin lines, no bands: the raw CIs stay visible
                base = _curve(profile, cv, baseline, metric)
                if len(base):
                    ax.axhline(base.value.iloc[0], color=CV_COLOURS[cv], lw=0.9, ls=ls, alpha=0.85)
        ax.axhline(chance, color="#999999", lw=0.8)
        if feature in sae_features:  # where the SAE panel's layers are
            for layer in sorted({int(x) for x in grid[grid.raw_feature == feature].layer}):
                ax.plot(
                    layer,
                    1.0,
                    "v",
                    color="#555555",
                    ms=6,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                    zorder=5,
                )
        ax.set_xlabel("layer (residual stream after the block)")
        ax.set_title(f"raw probe, {feature} pooling", pad=9)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    for ax, feature in zip(sae_axes, sae_features, strict=True):
        _sae_panel(ax, grid[grid.raw_feature == feature], profile, feature, metric)
        ax.axhline(chance, color="#999999", lw=0.8)
        ax.set_title(
            f"SAE probes beside the raw probe of their layer ({feature} pooling); "
            "one slot per architecture x training condition",
            fontsize=10,
        )
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)}")
    profile_axes[0].set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (95% CI)")
    handles = [
        Line2D(
            [],
            [],
            color=CV_COLOURS[cv],
            ls=CV_STYLES[cv],
            marker="o",
            ms=4,
            label=f"raw probe, {CV_LABELS[cv]}",
        )
        for cv in ("stratified", "scenario")
    ]
    handles += [
        Line2D([], [], color="#555555", ls=ls, lw=1.0, label=f"wording baseline: {WORDING[b]}")
        for b, ls in WORDING_STYLES.items()
        if b in set(profile.feature)
    ]
    if grid is not None:
        archs = [a for a in ARCH_ORDER if a in set(grid.arch)]
        handles += [Patch(color=ARCH_COLOURS[a], label=f"{ARCH_LABELS[a]} SAE") for a in archs]
        handles += [
            Line2D(
                [],
                [],
                color="#555555",
                ls="none",
                marker=CONDITION_MARKERS[c],
                label=f"SAE trained on: {CONDITION_NAMES[c]}",
            )
            for c in CONDITION_NAMES
            if c in set(grid.condition)
        ]
        handles += [
            Line2D(
                [],
                [],
                color="#555555",
                ls="none",
                marker="o",
                mfc="#555555",
                label="filled: SAE probe, stratified folds",
            ),
            Line2D(
                [],
                [],
                color="#555555",
                ls="none",
                marker="o",
                mfc="white",
                label="hollow: SAE probe, held-out scenarios",
            ),
            Line2D(
                [],
                [],
                color="#555555",
                ls="none",
                marker="v",
                ms=6,
                label="layer with SAEs (lower panel)",
            ),
        ]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(
        title(f"Deception probe {METRIC_LABELS.get(metric, metric)} by layer", model_label)
    )
    note = n_text(*n) + ". " if n else ""
    note += (
        "Bands: 95% CIs of the raw probe (completions resampled within class for stratified folds, "
        "whole scenarios resampled for held-out scenarios). Thin horizontal lines: wording "
        "baselines (no activations), coloured by CV mode like the raw curves; their CIs are in "
        "results/layer_profile.csv."
    )
    if grid is not None:
        pooling_text = {"mean": "mean-pooled", "max": "max-pooled", "last": "last-token"}.get(
            pooling, pooling
        )
        n_seeds = int(grid.groupby(["layer", "arch", "condition", "cv"]).size().max())
        note += (
            f" SAE probes: the SAE's codes of every response token, {pooling_text} per completion "
            f"(SAEs trained on tokens); marker = mean over {n_seeds} seeds, bar = seed range; "
            "each layer's raw probe runs across its group for comparison."
        )
    caption(fig, note)
    return fig


def _ink(rgba) -> str:
    """Black or white text, whichever reads better on the colour ``rgba`` (relative luminance)."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "#111111" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.30 else "white"


def plot_sae_vs_raw(verdicts, model_label, source="grid", n=None):
    """Heatmaps of SAE minus raw balanced accuracy (points, mean over seeds), one panel per CV
    mode: rows are architecture x training condition, columns layers. Every cell is coloured by
    its delta (diverging palette centred at 0); a cell whose paired test survives Holm within its
    family gets a thick black outline and a star; text is black or white by the cell's shade."""
    v = verdicts[verdicts.sae_source == source]
    modes = [m for m in ("stratified", "scenario") if (v.cv == m).any()]
    rows = sorted({(a, c) for a, c in zip(v.arch, v.condition, strict=True)}, key=_cell_order)
    layers = sorted(set(v.layer))
    lim = max(float(np.nanmax(np.abs(v.delta))) * 100 if v.delta.notna().any() else 1.0, 1.0)
    fig, axes = plt.subplots(
        1,
        max(len(modes), 1),
        figsize=(2.0 + 1.3 * len(layers) * max(len(modes), 1) + 2.5, 0.45 * len(rows) + 2.1),
        sharey=True,
        squeeze=False,
    )
    cmap = plt.get_cmap("RdBu_r")
    norm = plt.Normalize(-lim, lim)
    for ax, mode in zip(axes[0], modes, strict=False):
        sub = v[v.cv == mode]
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        for _, r in sub.iterrows():
            i, j = rows.index((r.arch, r.condition)), layers.index(r.layer)
            val = r.delta * 100
            sig = r.verdict in ("win", "loss")
            face = cmap(norm(val)) if np.isfinite(val) else (0.93, 0.93, 0.93, 1.0)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fc=face, ec="white", lw=1.0))
            if sig:  # inset so that neighbouring outlines do not merge
                ax.add_patch(
                    plt.Rectangle(
                        (j - 0.45, i - 0.42), 0.9, 0.84, fill=False, ec="black", lw=2.2, zorder=3
                    )
                )
            label = "no result" if not np.isfinite(val) else f"{val:+.1f}{' *' if sig else ''}"
            ax.text(
                j,
                i,
                label,
                ha="center",
                va="center",
                fontsize=9,
                color=_ink(face),
                fontweight="bold" if sig else "normal",
                zorder=4,
            )
        n_sig = int(sub.verdict.isin(["win", "loss"]).sum())
        ax.set_xticks(range(len(layers)), [f"layer {x}" for x in layers])
        ax.set_yticks(
            range(len(rows)),
            [f"{ARCH_LABELS.get(a, a)}, {CONDITION_NAMES.get(c, c)}" for a, c in rows],
        )
        ax.set_title(
            f"{CV_LABELS[mode]}\n{n_sig} of {sub.delta.notna().sum()} cells significant after Holm",
            fontsize=10,
        )
        ax.grid(False)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=norm)
    fig.colorbar(
        sm,
        ax=axes[0].tolist(),
        label="SAE minus raw balanced accuracy (points)\nred: SAE probe higher, blue: lower",
        shrink=0.85,
    )
    fig.suptitle(
        title("SAE probes against the raw probe of their layer (mean over seeds)", model_label)
    )
    any_sig = v.verdict.isin(["win", "loss"]).any()
    note = (n_text(*n) + ". " if n else "") + (
        "Colour and number: SAE minus raw balanced accuracy in points, every cell. "
        + (
            "Black outline and *: the paired test over completions and seeds survives Holm "
            "within its family (p < 0.05); no outline: not significant."
            if any_sig
            else "No cell's paired test (over completions and seeds) survives Holm within its "
            "family (p < 0.05): the differences are within noise."
        )
    )
    caption(fig, note)
    return fig


def plot_probe_controls(controls, model_label, n=None):
    """Left two panels: the probe refitted on labels shuffled within folds (mean and central 95%
    of the shuffles, per pooled feature), one panel per CV mode; right: scenario identity."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    sh = controls[(controls.target == "shuffled_labels") & (controls.metric == "bal_acc")]
    for ax, cv in zip(axes[:2], ("stratified", "scenario"), strict=True):
        for feature, colour in (("last", "#e67e22"), ("mean", "#2471a3"), ("text", "#7f8c8d")):
            d = sh[(sh.cv == cv) & (sh.feature == feature)].dropna(subset=["value"])
            if d.empty:
                continue
            if feature == "text":
                ax.axhspan(
                    d.ci_low.iloc[0],
                    d.ci_high.iloc[0],
                    color=colour,
                    alpha=0.12,
                    lw=0,
                    label="text, 95% of shuffles",
                )
                continue
            d = d.sort_values("layer")
            ax.plot(d.layer, d.value, "-o", ms=3, color=colour, label=f"{feature} pooling")
            ax.fill_between(
                d.layer.astype(float), d.ci_low, d.ci_high, color=colour, alpha=0.15, lw=0
            )
        ax.axhline(0.5, color="#999999", lw=0.8)
        ax.set(
            xlabel="layer",
            ylabel="balanced accuracy",
            ylim=(0.2, 0.8),
            title=f"shuffled labels, {CV_SHORT[cv]}",
        )
        ax.legend(fontsize=8, loc="upper right")
    sid = controls[controls.target == "scenario_identity"]
    for feature, colour in (("last", "#e67e22"), ("mean", "#2471a3")):
        d = sid[sid.feature == feature].sort_values("layer")
        if len(d):
            axes[2].plot(d.layer, d.value, "-o", ms=3, color=colour, label=f"{feature} pooling")
            axes[2].fill_between(
                d.layer.astype(float), d.ci_low, d.ci_high, color=colour, alpha=0.15, lw=0
            )
    if sid.chance.notna().any():
        axes[2].axhline(
            float(sid.chance.dropna().iloc[0]), color="#999999", lw=0.8, ls=":", label="chance"
        )
    axes[2].set(
        xlabel="layer",
        ylabel="balanced accuracy (multiclass)",
        ylim=(0, 1.02),
        title="which scenario? (confound check)",
    )
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.suptitle(title("Probe controls", model_label))
    caption(
        fig,
        (n_text(*n) + ". " if n else "") + "Shuffled labels: mean and central 95% of the "
        "label permutations of the p-values; they should straddle 0.5.",
    )
    return fig


def _forest(ax, d, labels, columns, ms, lw, tick_size=None) -> list:
    """The two CV modes' estimates with 95% CIs (``columns``: value, low, high; in points) on
    one row per label, a line at 0, the legend above the axes (no CI hides under it); returns
    each mode's ``(rows, y)``."""
    value, low, high = columns
    drawn = []
    for cv, shift in (("stratified", -0.15), ("scenario", 0.15)):
        s = d[d.cv == cv]
        y = np.array([labels.index(lbl) for lbl in s.label]) + shift
        ax.errorbar(
            100 * s[value],
            y,
            xerr=[100 * (s[value] - s[low]), 100 * (s[high] - s[value])],
            fmt="o",
            color=CV_COLOURS[cv],
            ms=ms,
            lw=lw,
            label=CV_LABELS[cv],
        )
        drawn.append((s, y))
    ax.axvline(0, color="#999999", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, **({"fontsize": tick_size} if tick_size else {}))
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return drawn


def _holm_star(ax, x: float, y: float, label: str, first: bool) -> None:
    """The star of a forest row whose test survives Holm (labelled once, for the legend)."""
    ax.plot(
        x,
        y,
        "*",
        color="#f1c40f",
        ms=11,
        mec="#444444",
        mew=0.6,
        zorder=4,
        label=label if first else None,
    )


def plot_leakage(leak, model_label, n=None):
    """Leakage per SAE cell: balanced accuracy with an SAE that saw the test completions minus
    with SAEs that did not (same budget and seeds), with the paired 95% CI, per CV mode.

    The bars are per-comparison CIs; the verdict is the Holm-adjusted p-value (Holm within each
    CV mode), printed at the right of every row; a star marks a row that survives Holm."""
    d = leak.dropna(subset=["leakage"]).copy()
    d["label"] = [
        f"L{int(r.layer)} {ARCH_LABELS.get(r.arch, r.arch)}, {CONDITION_NAMES.get(r.condition, r.condition)}"
        for r in d.itertuples()
    ]
    labels = list(dict.fromkeys(d.sort_values(["layer", "arch", "condition"]).label))
    fig, ax = plt.subplots(figsize=(8.2, 0.42 * len(labels) + 1.9))
    drawn = _forest(
        ax, d, labels, ("leakage", "leakage_ci_low", "leakage_ci_high"), 4, 1, tick_size=8
    )
    has_p = "p_holm" in d and d.p_holm.notna().any()
    n_star = 0
    for (s, y), cv in zip(drawn, ("stratified", "scenario"), strict=True):
        for yy, (_, r) in zip(y, s.iterrows(), strict=True):
            if not has_p or not np.isfinite(r.p_holm):
                continue
            sig = r.p_holm < 0.05 and r.get("verdict") != DESCRIPTIVE
            ax.text(
                1.02,
                yy,
                f"{r.p_holm:.3f}",
                transform=ax.get_yaxis_transform(),
                ha="left",
                va="center",
                fontsize=7.5,
                color=CV_COLOURS[cv],
                fontweight="bold" if sig else "normal",
            )
            if sig:
                _holm_star(ax, 100 * r.leakage, yy, "survives Holm (p < 0.05)", first=not n_star)
                n_star += 1
    if has_p:
        ax.text(
            1.02,
            1.0,
            "p (Holm)",
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize=8,
            color="#444444",
        )
    if n_star:  # the star joins the legend only when it is drawn
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.set_xlabel(
        "leakage: SAE saw the test completions minus it did not\n"
        "(points; bars: per-comparison 95% CIs, not Holm-adjusted)"
    )
    budget = d.budget.iloc[0] if len(d) else ""
    fig.suptitle(title("Leakage of SAE training data into the probe's test folds", model_label))
    note = (
        n_text(*n) + ". " if n else ""
    ) + f"Both SAEs trained for {budget} with the same seeds. "
    descriptive = "verdict" in d and (d.verdict == DESCRIPTIVE).all()
    if has_p and descriptive:
        note += (
            "One SAE seed per cell: each bar is descriptive (a test of one fit leaves out the "
            "fit's own variance), so no comparison is called significant; p (Holm) for reference."
        )
    elif has_p:
        counts = "; ".join(
            f"{CV_SHORT[cv]}: {int((d[d.cv == cv].p_holm < 0.05).sum())} of {int((d.cv == cv).sum())}"
            for cv in ("stratified", "scenario")
            if (d.cv == cv).any()
        )
        note += (
            "Each bar is the 95% CI of one comparison on its own, not adjusted for the "
            "multiple comparisons: a bar can exclude 0 while the comparison is not significant. "
            "Significance is the Holm-adjusted p-value (Holm within each CV mode), printed at "
            f"the right of each row; p < 0.05 (starred) in {counts}."
        )
        if "verdict" in d:
            note += (
                " Verdicts (Holm, then the +/- 2-point equivalence test): "
                + "; ".join(
                    f"{CV_SHORT[cv]}: "
                    + ", ".join(f"{k} {v}" for v, k in d[d.cv == cv].verdict.value_counts().items())
                    for cv in ("stratified", "scenario")
                    if (d.cv == cv).any()
                )
                + "."
            )

    else:
        note += "Bars: per-comparison 95% CIs, not adjusted for multiple comparisons."
    caption(fig, note)
    return fig


def plot_ste_vs_topk(ste, model_label, n=None):
    """A forest plot of the paired STE JumpReLU minus TopK difference (mean over seeds) with its
    95% CI per (layer, condition), both CV modes, with both architectures' measured L0. A star
    marks a comparison whose paired test survives Holm within its CV mode; the caption explains
    the star only when one is drawn, and otherwise says that none survives."""
    d = ste[ste.arch_b == "topk"].dropna(subset=["delta"]).copy()
    d["label"] = [
        f"L{int(r.layer)}, {CONDITION_NAMES.get(r.condition, r.condition)}" for r in d.itertuples()
    ]
    labels = list(dict.fromkeys(d.sort_values(["layer", "condition"]).label))
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(labels) + 2.0))
    n_star = 0
    for s, y in _forest(ax, d, labels, ("delta", "ci_low", "ci_high"), 5, 1.1):
        for yy, (_, r) in zip(y, s.iterrows(), strict=True):
            if r.verdict in ("win", "loss"):
                _holm_star(ax, 100 * r.delta, yy, "survives Holm", first=not n_star)
                n_star += 1
    if n_star:  # the star joins the legend only when it is drawn
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    l0 = d[d.cv == "stratified"].drop_duplicates("label").set_index("label")
    right = ax.secondary_yaxis("right")
    right.set_yticks(
        range(len(labels)),
        [f"L0 {l0.l0_a.get(lbl, np.nan):.0f} vs {l0.l0_b.get(lbl, np.nan):.0f}" for lbl in labels],
    )
    right.tick_params(labelsize=8, length=0)
    ax.set_xlabel(
        "STE JumpReLU minus TopK balanced accuracy (points, 95% CI over completions and seeds)"
    )
    fig.suptitle(
        title("STE JumpReLU against TopK, paired, per (layer, training condition)", model_label)
    )
    counts = "; ".join(
        f"{CV_SHORT[cv]}: {int(d[d.cv == cv].verdict.isin(['win', 'loss']).sum())} of "
        f"{int((d.cv == cv).sum())}"
        for cv in ("stratified", "scenario")
        if (d.cv == cv).any()
    )
    verdict = (
        f"Star: the paired test survives Holm within its CV mode ({counts})."
        if n_star
        else f"No paired test survives Holm within its CV mode ({counts} significant)."
    )
    caption(
        fig,
        (n_text(*n) + ". " if n else "")
        + verdict
        + " The bars are per-comparison 95% CIs, not adjusted for multiple comparisons. "
        "Right: mean active latents (STE vs TopK) on the probe's own inputs.",
    )
    return fig
