"""Layer profiles of several runs side by side (notebook 10), beside the study's published peaks.

Each run contributes ``config.yaml`` and ``results/layer_profile.csv`` (notebook 05). Models of
different depth share one axis, the relative depth ``layer / (n_layers - 1)`` (0 = first decoder
layer, 1 = last). For every run the table gives our raw-probe peak next to the study's published
one (``data/published.yaml``) and tests the study's TinyLlama claim that the profile "rises
monotonically" (see :func:`rising_test`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from scipy.stats import rankdata

from lib.core.config import RunConfig, config_from_dict
from lib.core.fileio import RunDirError
from lib.core.rundir import RUNS_ROOT, RunDir, shown
from lib.study.claims import published_for, published_models

CV_TITLES = {"stratified": "stratified 5-fold (the study's)", "scenario": "leave-one-scenario-out"}
ALPHA = 0.05


@dataclass
class RunProfile:
    """One run's raw-activation deception profile (balanced accuracy by layer).

    ``profile``: rows ``layer, cv, value, ci_low, ci_high, n`` for one pooled feature, both CV
    modes present in the file. ``kind``: ``"organism"``, ``"random weights"`` or ``"model"``.
    """

    run: str
    path: Path
    cfg: RunConfig
    kind: str
    n_layers: int
    profile: pd.DataFrame

    @property
    def label(self) -> str:
        """The run's ``model_label``, with what kind of model it is when the label does not say."""
        label = self.cfg.label
        if self.kind == "organism" and "organism" not in label.lower():
            label += " [model organism]"
        if self.kind == "random weights" and "random" not in label.lower():
            label += " [random weights]"
        return label

    @property
    def n(self) -> int:
        """Completions the probes saw (decisive labels)."""
        return int(self.profile["n"].max())

    @property
    def published(self) -> dict | None:
        return published_for(self.cfg.model_tag)


def model_kind(cfg: RunConfig) -> str:
    if cfg.model == "organism":
        return "organism"
    if cfg.model.startswith("random:") or "random weights" in cfg.model_label.lower():
        return "random weights"
    return "model"


def display_path(path: Path) -> str:
    """``path`` as notebooks print it (:func:`lib.core.rundir.shown`: never a machine's absolute path)."""
    return shown(path)


def _n_layers(run_dir: Path, profile: pd.DataFrame) -> int:
    index = RunDir(run_dir).activation_index
    if index.exists():
        return int(json.loads(index.read_text())["n_layers"])
    return int(profile["layer"].max()) + 1  # every layer captured (the book's default)


def load_run_profile(
    run: str, runs_root: Path | str | None = None, feature: str = "mean"
) -> RunProfile:
    """Read one run's config and deception balanced-accuracy profile for ``feature`` pooling.

    Raises :class:`lib.core.rundir.RunDirError` naming the file when the run or its profile is missing.
    """
    root = runs_root or os.environ.get("DECEPTION_SAES_RUNS", RUNS_ROOT)
    run_dir = Path(root) / run
    cfg_path, csv = run_dir / "config.yaml", run_dir / "results" / "layer_profile.csv"
    for p, stage in ((cfg_path, "any notebook"), (csv, "05_layer_profile_probing")):
        if not p.exists():
            raise RunDirError(f"{display_path(p)} is missing; run {stage} for run {run!r} first")
    data = yaml.safe_load(cfg_path.read_text()) or {}
    known = set(RunConfig.model_fields)
    cfg = config_from_dict({k: v for k, v in data.items() if k in known}, source=str(cfg_path))
    df = pd.read_csv(csv)
    need = {"layer", "feature", "cv", "target", "metric", "value", "ci_low", "ci_high", "n"}
    if not need <= set(df.columns):
        raise RunDirError(f"{display_path(csv)} lacks columns {sorted(need - set(df.columns))}")
    sel = df[
        (df["target"] == "deception") & (df["metric"] == "bal_acc") & (df["feature"] == feature)
    ]
    if "subset" in sel:
        sel = sel[sel["subset"] == "all"]  # the incentive / role-play split is not compared here
    if sel.empty:
        raise RunDirError(
            f"{display_path(csv)} has no deception bal_acc rows for feature={feature!r}"
        )
    prof = sel[["layer", "cv", "value", "ci_low", "ci_high", "n"]].sort_values(["cv", "layer"])
    return RunProfile(
        run, run_dir, cfg, model_kind(cfg), _n_layers(run_dir, prof), prof.reset_index(drop=True)
    )


def load_profiles(
    runs: list[str], runs_root: Path | str | None = None, feature: str = "mean"
) -> list[RunProfile]:
    if not runs:
        raise ValueError("runs is empty; name at least one run under data/runs/")
    return [load_run_profile(r, runs_root, feature) for r in runs]


# ----- the monotonic-rise test ---------------------------------------------------------------------
def _rank_corr(rx: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``rx`` [L] with each row of ``ranks`` [R, L] (Spearman on ranks)."""
    a = rx - rx.mean()
    b = ranks - ranks.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (b @ a) / (np.linalg.norm(a) * np.linalg.norm(b, axis=1))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


#: probed layers a profile needs before its rise can be tested
MIN_LAYERS = 3
UNTESTED = {
    "rho": float("nan"),
    "p_perm": float("nan"),
    "rho_low": float("nan"),
    "rho_high": float("nan"),
    "steps_up": 0,
    "monotonic": False,
    "verdict": f"untestable (fewer than {MIN_LAYERS} layers)",
}


def rising_test(
    layers,
    values,
    ci_low=None,
    ci_high=None,
    n_permutations: int = 20000,
    n_draws: int = 2000,
    seed: int = 0,
) -> dict:
    """Does balanced accuracy rise with depth? (the study's TinyLlama claim, tested).

    In: per-layer ``values`` [L] with their 95% CIs [L] (optional). Out: a dict with

    - ``rho``: Spearman correlation of layer and value;
    - ``p_perm``: one-sided permutation p-value of ``rho`` (layers exchangeable under no trend;
      exact when L <= 8, else ``n_permutations`` random orders);
    - ``rho_low``, ``rho_high``: 2.5/97.5% of ``rho`` when each layer's value is redrawn from a
      normal with the standard error its CI implies (the trend must survive the per-layer noise);
    - ``steps_up``: how many of the L-1 layer-to-layer steps go up; ``monotonic``: all of them;
    - ``verdict``: ``"rising"`` when ``p_perm < 0.05`` and ``rho_low > 0``, else ``"not rising"``.

    Neighbouring layers are correlated (one residual stream), which makes smooth drifts more
    likely than exchangeability assumes; the CI condition guards against reading noise as a rise.
    """
    x = np.asarray(layers, dtype=float)
    y = np.asarray(values, dtype=float)
    if len(x) != len(y) or len(x) < MIN_LAYERS:
        raise ValueError(
            f"need >= {MIN_LAYERS} layers with one value each; got {len(x)} and {len(y)}"
        )
    order = np.argsort(x)
    x, y = x[order], y[order]
    rho = _spearman(x, y)
    rng = np.random.default_rng(seed)
    rx, ry = rankdata(x), rankdata(y)
    if len(y) <= 8:  # every order of the layers: exact
        shuffled, extra = ry[np.array(list(permutations(range(len(y)))))], 0
    else:  # random orders; the observed one counts once (Phipson & Smyth)
        shuffled, extra = rng.permuted(np.tile(ry, (n_permutations, 1)), axis=1), 1
    null = _rank_corr(rx, shuffled)
    p_perm = float((np.sum(null >= rho - 1e-12) + extra) / (len(null) + extra))
    rho_low = rho_high = float("nan")
    if ci_low is not None and ci_high is not None:
        se = (np.asarray(ci_high, float)[order] - np.asarray(ci_low, float)[order]) / (2 * 1.96)
        draws = y + rng.standard_normal((n_draws, len(y))) * se
        rhos = _rank_corr(rx, rankdata(draws, axis=1))
        rho_low, rho_high = (float(v) for v in np.nanquantile(rhos, [0.025, 0.975]))
    steps = np.diff(y)
    verdict = (
        "rising"
        if math.isfinite(rho) and p_perm < ALPHA and (math.isnan(rho_low) or rho_low > 0)
        else "not rising"
    )
    return {
        "rho": rho,
        "p_perm": p_perm,
        "rho_low": rho_low,
        "rho_high": rho_high,
        "steps_up": int((steps > 0).sum()),
        "steps": len(steps),
        "monotonic": bool((steps > 0).all()),
        "verdict": verdict,
    }


# ----- table and figure ----------------------------------------------------------------------------
def relative_depth(layer, n_layers: int):
    """``layer / (n_layers - 1)``: 0 at the first decoder layer, 1 at the last."""
    return np.asarray(layer, dtype=float) / max(n_layers - 1, 1)


def comparison_table(profiles: list[RunProfile], cv: str | None = None) -> pd.DataFrame:
    """One row per (run, CV mode): our peak beside the study's, and the rising test.

    Columns: run, model, kind, cv, n, n_layers, peak_layer, peak_depth, peak_bal_acc,
    peak_ci_low, peak_ci_high, published_peak_layer, published_depth, published_bal_acc,
    published_profile, rho, p_perm, rho_low, rho_high, steps_up, steps, monotonic, verdict.
    """
    rows = []
    for rp in profiles:
        pub = rp.published
        claim = ((pub or {}).get("claims") or {}).get("profile")
        present = set(rp.profile["cv"])
        modes = [m for m in CV_TITLES if m in present] + sorted(present - set(CV_TITLES))
        for mode in modes:
            if cv is not None and mode != cv:
                continue
            d = rp.profile[rp.profile["cv"] == mode].sort_values("layer")
            peak = d.loc[d["value"].idxmax()]
            if len(d) >= MIN_LAYERS:
                test = rising_test(d["layer"], d["value"], d["ci_low"], d["ci_high"])
            else:  # a run that captured one or two layers has no profile to test
                test = {**UNTESTED, "steps": len(d) - 1}
            rows.append(
                {
                    "run": rp.run,
                    "model": rp.label,
                    "kind": rp.kind,
                    "cv": mode,
                    "n": int(d["n"].max()),
                    "n_layers": rp.n_layers,
                    "peak_layer": int(peak["layer"]),
                    "peak_depth": float(relative_depth(peak["layer"], rp.n_layers)),
                    "peak_bal_acc": float(peak["value"]),
                    "peak_ci_low": float(peak["ci_low"]),
                    "peak_ci_high": float(peak["ci_high"]),
                    "published_peak_layer": pub["peak_layer"] if pub else None,
                    "published_depth": (
                        float(relative_depth(pub["peak_layer"], pub["n_layers"])) if pub else None
                    ),
                    "published_bal_acc": pub["bal_acc"] if pub else None,
                    "published_profile": (
                        "monotonic rise (study, TinyLlama)"
                        if claim
                        else ("not claimed" if pub else "")
                    ),
                    **test,
                }
            )
    return pd.DataFrame(rows)


def plot_cross_model(
    profiles: list[RunProfile], cvs: tuple[str, ...] = ("stratified", "scenario"), feature="mean"
):
    """Balanced accuracy of the raw-activation probe against relative depth, one panel per CV mode.

    Each run: its profile with a 95% CI band and its peak (star). Grey diamonds: the study's
    published raw-probe peaks of every model (``data/published.yaml``), at their relative depth;
    a published peak of a run's own model is drawn in the run's colour.
    """
    cvs = tuple(c for c in cvs if any((rp.profile["cv"] == c).any() for rp in profiles))
    fig, axes = plt.subplots(
        1,
        len(cvs),
        figsize=(6.2 * len(cvs), 4.4),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pubs = published_models()
    pending: list[tuple] = []  # (ax, [(x, y, text)]) labelled once the layout is final
    for ax, cv in zip(axes[0], cvs, strict=True):
        items = []
        for pub in pubs.values() if cv == "stratified" else ():  # the study used stratified folds
            x = float(relative_depth(pub.peak_layer, pub.n_layers))
            ax.plot(x, pub.bal_acc, "D", mfc="white", mec="#9a9a9a", ms=5, zorder=2)
            items.append((x, pub.bal_acc, pub.label + ("~" if pub.approximate else "")))
        if items:
            pending.append((ax, items))
        for i, rp in enumerate(profiles):
            c = colours[i % len(colours)]
            d = rp.profile[rp.profile["cv"] == cv].sort_values("layer")
            if d.empty:
                continue
            x = relative_depth(d["layer"], rp.n_layers)
            ax.plot(x, d["value"], "-o", color=c, ms=3, lw=1.4, label=f"{rp.label} (n={rp.n})")
            ax.fill_between(x, d["ci_low"], d["ci_high"], color=c, alpha=0.15, lw=0)
            peak = d.loc[d["value"].idxmax()]
            ax.plot(relative_depth(peak["layer"], rp.n_layers), peak["value"], "*", color=c, ms=11)
            pub = rp.published
            if pub:
                ax.plot(
                    relative_depth(pub["peak_layer"], pub["n_layers"]),
                    pub["bal_acc"],
                    "D",
                    mfc="white",
                    mec=c,
                    mew=1.5,
                    ms=7,
                    zorder=3,
                )
        ax.axhline(0.5, color="#999999", lw=0.9, ls=":")
        ax.set(
            xlabel="relative depth: layer / (layers - 1)",
            title=CV_TITLES.get(cv, cv),
            xlim=(-0.03, 1.12),
        )
    axes[0][0].set_ylabel("balanced accuracy (95% CI)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [
        plt.Line2D([], [], ls="", marker="*", color="#444444", ms=9),
        plt.Line2D([], [], ls="", marker="D", mfc="white", mec="#9a9a9a", ms=5),
        plt.Line2D([], [], ls=":", color="#999999"),
    ]
    labels += ["our peak", "study's published peak, stratified folds (~: approximate)", "chance"]
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    names = ", ".join(f"{rp.label} (n={rp.n})" for rp in profiles)
    fig.suptitle(
        f"Raw-activation deception probe by relative depth, {feature} pooling\n{names}", fontsize=10
    )
    for ax, items in pending:
        _place_labels(ax, items)
    return fig


def _place_labels(ax, items, fontsize: float = 6.5, colour: str = "#7a7a7a", pad: float = 1.5):
    """Write each ``(x, y, text)`` beside its point without overlapping another label or a
    marker of the axes: the label goes right of its point, else left, nudged up or down in small
    steps until its box is free (a thin leader line then joins it to its point).

    Positions are measured on the drawn figure (the layout must be final), in points, so they
    hold at any dpi."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = fig.dpi / 72.0
    box = ax.get_window_extent(renderer)
    obstacles = []  # pixel boxes (x0, y0, x1, y1) of every marker drawn so far
    for line in ax.get_lines():
        if line.get_marker() in (None, "", "None", " ") or not line.get_visible():
            continue
        half = (line.get_markersize() / 2 + 1) * to_px
        xy = ax.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
        obstacles += [(px - half, py - half, px + half, py + half) for px, py in xy]

    def free(b) -> bool:
        inside = box.x0 <= b[0] and b[2] <= box.x1 and box.y0 <= b[1] and b[3] <= box.y1
        return inside and not any(
            b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in obstacles
        )

    step, gap = 3.5, 4.0  # points
    shifts = [0.0] + [s * k * step for k in range(1, 9) for s in (1, -1)]
    for x, y, text in sorted(items, key=lambda t: (-t[1], t[0])):
        probe = ax.text(0, 0, text, fontsize=fontsize)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width + 2 * pad * to_px, ext.height + 2 * pad * to_px
        px, py = ax.transData.transform((x, y))
        best = None
        for dy in shifts:
            for side in (1, -1):
                x0 = px + gap * to_px if side > 0 else px - gap * to_px - w
                cy = py + dy * to_px
                b = (x0, cy - h / 2, x0 + w, cy + h / 2)
                if free(b):
                    best = (side, dy, b)
                    break
            if best:
                break
        if best is None:  # nowhere free: the default place
            x0 = px + gap * to_px
            best = (1, 0.0, (x0, py - h / 2, x0 + w, py + h / 2))
        side, dy, b = best
        ax.annotate(
            text,
            (x, y),
            xytext=(side * gap, dy),
            textcoords="offset points",
            ha="left" if side > 0 else "right",
            va="center",
            fontsize=fontsize,
            color=colour,
            arrowprops=(
                {"arrowstyle": "-", "color": "#b0b0b0", "lw": 0.6, "shrinkA": 0, "shrinkB": 3}
                if abs(dy) > 4
                else None
            ),
        )
        obstacles.append(b)
