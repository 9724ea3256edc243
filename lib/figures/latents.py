"""Figures of stages 08 (latents) and 09 (steering). Style from :mod:`lib.figures.style`."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from lib.figures.style import (
    CV_LABELS,
    CV_STYLES,
    JUDGE_LABELS,
    JUDGE_NOTES,
    LABEL_COLOURS,
    caption,
    title,
)

PROBE_COLOURS = {"k_sparse": "#e67e22", "dense_sae": "#16a085", "raw": "#212121"}


def plot_k_sparse(ks, sae_id: str, model_label: str, n: int):
    """Balanced accuracy of the k-sparse probes against k (log axis) with 95% CIs, one line per
    CV mode, beside the dense SAE probe and the raw probe (bands: their CIs)."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2), constrained_layout=True)
    for cv in dict.fromkeys(ks["cv"]):
        sub = ks[ks["cv"] == cv]
        k = sub[sub["probe"] == "k_sparse"].sort_values("k")
        err = np.vstack([k["bal_acc"] - k["ci_low"], k["ci_high"] - k["bal_acc"]])
        ax.errorbar(
            k["k"],
            k["bal_acc"],
            yerr=err,
            ls=CV_STYLES[cv],
            marker="o",
            color=PROBE_COLOURS["k_sparse"],
            capsize=3,
            label=f"top-k latents, {CV_LABELS[cv]}",
        )
        for probe in ("dense_sae", "raw"):
            r = sub[sub["probe"] == probe].iloc[0]
            ax.axhline(r["bal_acc"], ls=CV_STYLES[cv], color=PROBE_COLOURS[probe], lw=1.2)
            ax.axhspan(r["ci_low"], r["ci_high"], color=PROBE_COLOURS[probe], alpha=0.08)
    for probe, name in (("dense_sae", "dense SAE probe (all latents)"), ("raw", "raw probe")):
        ax.plot([], [], color=PROBE_COLOURS[probe], label=name)
    ax.axhline(0.5, color="#999", lw=0.8)
    ax.set_xscale("log")
    kk = sorted(ks.loc[ks["probe"] == "k_sparse", "k"].unique())
    ax.set_xticks(kk, [str(k) for k in kk])
    ax.set_xlabel("k (latents chosen on the training folds)")
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0.4, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title(f"How few latents carry the signal: {sae_id} (n={n})", model_label))
    return fig


def plot_latent_histograms(report, model_label: str, per_row: int = 5):
    """Share of each class's completions per bin of the pooled value, for the top latents:
    deceptive-high latents in the first row, honest-high in the second. Completions where the
    latent never fires are not drawn (their shares, deceptive / honest, are written in the
    panel); the title gives the "no"-vs-"yes" AUROC and names a word latent."""
    rows = [report.top["deceptive"], report.top["honest"]]
    ncol = max(1, min(per_row, max(len(r) for r in rows)))
    fig, axes = plt.subplots(
        2, ncol, figsize=(2.6 * ncol, 4.6), squeeze=False, constrained_layout=True
    )
    for r, (direction, ids) in enumerate(zip(("deceptive", "honest"), rows, strict=True)):
        for c in range(ncol):
            ax = axes[r][c]
            if c >= len(ids):
                ax.axis("off")
                continue
            lat = ids[c]
            h = report.histograms[lat]
            edges = np.asarray(h["edges"])
            width = np.diff(edges)
            silent = h.get("silent") or {}
            quiet = []
            for j, label in enumerate(("deceptive", "honest")):
                counts = np.asarray(h[label], dtype=float)
                total = max(counts.sum(), 1)
                counts[0] -= min(silent.get(label, 0), counts[0])  # never fires: not drawn
                quiet.append(silent.get(label, 0) / total)
                share = counts / total
                ax.bar(
                    edges[:-1] + j * width / 2,
                    share,
                    width=width / 2,
                    align="edge",
                    color=LABEL_COLOURS[label],
                    label=label,
                )
            row = report.table.loc[report.table["latent"] == lat].iloc[0]
            word = ""
            if "word_auroc" in row and np.isfinite(row["word_auroc"]):
                word = f', "no"/"yes" {row["word_auroc"]:.2f}'
                if row.get("word_verdict") == "word":
                    word += " (word latent)"
            ax.set_title(
                f"latent {lat} ({direction}-high)\nAUROC {row['auroc']:.2f}{word}", fontsize=8
            )
            if silent:
                ax.text(
                    0.98, 0.97, f"silent: {quiet[0]:.0%} / {quiet[1]:.0%}", transform=ax.transAxes,
                    ha="right", va="top", fontsize=6.5, color="#555",
                )  # fmt: skip
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel("share of class")
    axes[0][0].legend(fontsize=7)
    n = report.meta.get("n", "?")
    fig.suptitle(
        title(f"Top latents of {report.sae_id}: pooled activation by class (n={n})", model_label),
        fontsize=10,
    )
    return fig


def _direction_style(name: str, i: int) -> dict:
    if name == "diff_means":
        return {
            "color": "#212121",
            "marker": "o",
            "lw": 2.0,
            "label": "difference of means (the raw probe's direction)",
        }
    if name.startswith("random_"):
        return {
            "color": "#a6acaf",
            "marker": "x",
            "ls": "--",
            "label": "random unit directions (controls)",
        }
    oranges = ["#e67e22", "#d35400", "#f0b27a", "#ba4a00", "#f5cba7"]
    idx = name.rsplit("_", 1)[-1]
    return {
        "color": oranges[i % len(oranges)],
        "marker": "s",
        "label": f"SAE latent {idx} (its decoder row)",
    }


#: the legend entry of the dotted, hollow-marker lines of :func:`plot_dose_response`
DECIDED_LABEL = "dotted, hollow: lie share among decided samples (ambiguous ones left out)"

#: the conditions without a steering strength: the SAE's reconstruction replaces the layer output
SWAPS = ("reconstruction", "ablate")


def _swap_name(direction: str) -> tuple[str, str]:
    """``(short label, SAE id)`` of an ablation / reconstruction condition."""
    kind, _, sae_id = direction.partition("_")
    if kind.startswith("ablate"):
        k = kind.removeprefix("ablate_top").removeprefix("ablate")
        if not k:  # ablate_top5_<sae>: the k sits in the second part
            head, _, sae_id = sae_id.partition("_")
            k = head.removeprefix("top")
        return f"ablate top {k}\nlatents", sae_id
    return "SAE recon-\nstruction", sae_id


def plot_dose_response(df, layer: int, model_label: str):
    """Deceptive rate against alpha (units of the layer's mean token norm) per direction, with
    95% CIs, one panel per judge; beside each, a small panel with the conditions that have no
    alpha (the layer output replaced by the SAE's reconstruction, plain and with its top
    deceptive-high latents zeroed). The unsteered rate (alpha 0) runs through both panels."""
    sub = df[df["layer"] == layer]
    judges = list(dict.fromkeys(sub["judge"]))
    swaps = [d for d in dict.fromkeys(sub["direction"]) if d.startswith(SWAPS)]
    swaps.sort(key=lambda d: not d.startswith("reconstruction"))  # the control first
    ratios = [4.2, 0.5 + 0.75 * len(swaps)] if swaps else [4.2]
    fig, axes = plt.subplots(
        len(judges),
        len(ratios),
        figsize=(sum(ratios) + 4.4, 3.5 * len(judges) + 0.6),
        squeeze=False,
        sharey=True,
        sharex="col",
        gridspec_kw={"width_ratios": ratios},
    )
    handles: dict[str, object] = {}
    sae_ids = set()
    for k, judge in enumerate(judges):
        ax = axes[k][0]
        j = sub[sub["judge"] == judge]
        steer = [d for d in dict.fromkeys(j["direction"]) if not d.startswith(SWAPS)]
        latent_i = 0
        for d in steer:
            s = j[j["direction"] == d].sort_values("alpha")
            style = _direction_style(d, latent_i)
            latent_i += d.startswith("latent_")
            err = np.vstack([s["deceptive_rate"] - s["ci_low"], s["ci_high"] - s["deceptive_rate"]])
            h = ax.errorbar(s["alpha"], s["deceptive_rate"], yerr=err, capsize=3, **style)
            handles.setdefault(style["label"], h)
            if "decided_rate" in s:  # garbling lowers the rate over all samples by itself
                ax.plot(
                    s["alpha"], s["decided_rate"], ls=":", lw=1.1, marker=style.get("marker", "o"),
                    mfc="white", ms=5, color=h[0].get_color(), alpha=0.8,
                )  # fmt: skip
                key = Line2D([], [], ls=":", marker="o", mfc="white", color="0.35")
                handles.setdefault(DECIDED_LABEL, key)
        base = j[(j["alpha"] == 0) & ~j["direction"].str.startswith(SWAPS)]
        n = int(j["n"].iloc[0])
        alphas = sorted(set(j.loc[~j["direction"].str.startswith(SWAPS), "alpha"]))
        if 0 < len(alphas) <= 12:  # the strengths that were run, no in-between ticks
            ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        if k == len(judges) - 1:
            ax.set_xlabel("alpha (x the layer's mean token norm)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(
            f"{JUDGE_LABELS.get(judge, judge)}: steering (n={n} samples per condition)",
            fontsize=10,
        )
        ax.set_ylabel("deceptive rate\n(share of samples)")
        ref_axes = [ax]
        if swaps:
            ax_s = axes[k][1]
            ref_axes.append(ax_s)
            names = []
            for x, d in enumerate(swaps):
                r = j[j["direction"] == d]
                name, sae_id = _swap_name(d)
                names.append(name)
                sae_ids.add(sae_id)
                if r.empty:
                    continue
                r = r.iloc[0]
                ablate = d.startswith("ablate")
                h = ax_s.errorbar(
                    [x],
                    [r["deceptive_rate"]],
                    yerr=[
                        [r["deceptive_rate"] - r["ci_low"]],
                        [r["ci_high"] - r["deceptive_rate"]],
                    ],
                    marker="D",
                    ms=7,
                    color="#8e44ad" if ablate else "#7f8c8d",
                    capsize=3,
                    ls="none",
                )
                handles.setdefault(
                    "ablation: the SAE's reconstruction with its top deceptive-high latents zeroed"
                    if ablate
                    else "reconstruction: the layer output replaced by the SAE's reconstruction "
                    "(the ablation's control)",
                    h,
                )
            ax_s.set_xlim(-0.6, len(swaps) - 0.4)
            ax_s.set_xticks(range(len(swaps)), names, fontsize=8)
            ax_s.set_title("no alpha:\nSAE swapped in", fontsize=9)
            ax_s.grid(axis="x", visible=False)
        if len(base):
            rate = float(base["deceptive_rate"].iloc[0])
            for a in ref_axes:
                h = a.axhline(rate, color="#7f8c8d", ls=":", lw=1.2, zorder=0)
            handles.setdefault("unsteered rate (alpha 0)", h)
    fig.legend(
        list(handles.values()),
        [textwrap.fill(label, 34) for label in handles],
        loc="outside right center",
        fontsize=9,
        labelspacing=0.9,
    )
    fig.suptitle(title(f"Steering and ablation at layer {layer}", model_label))
    notes = [JUDGE_NOTES.get(jd, JUDGE_LABELS.get(jd, jd)) for jd in judges]
    text = (
        "Steering adds alpha x (the layer's mean response-token norm) x a unit direction at every "
        "position; 95% CIs: bootstrap over samples, stratified by scenario. Judges: "
        + "; ".join(notes)
        + "."
    )
    if sae_ids:
        text += f" Latents, reconstruction and ablation from SAE {', '.join(sorted(sae_ids))}."
    caption(fig, text)
    return fig
