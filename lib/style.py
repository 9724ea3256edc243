"""The book's visual style: one palette, one set of names, one way to save a figure.

Every figure module takes its colours, markers and display names from here, and every figure
names the model it shows (:func:`title` with ``RunConfig.label``) so that organism figures are
never taken for TinyLlama's. :func:`save_figure` writes PNG and PDF.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from lib.config import REPO_ROOT

FIGURES_ROOT = REPO_ROOT / "figures"

LABEL_COLOURS = {"deceptive": "#c0392b", "honest": "#2471a3", "ambiguous": "#a6acaf"}
ARCH_COLOURS = {
    "raw": "#212121",
    "topk": "#e67e22",
    "jumprelu": "#8e44ad",
    "jumprelu_ste": "#16a085",
}
ARCH_LABELS = {
    "raw": "raw activations",
    "topk": "TopK",
    "jumprelu": "JumpReLU (threshold 0)",
    "jumprelu_ste": "JumpReLU (STE)",
}
ARCH_MARKERS = {"raw": "o", "topk": "s", "jumprelu": "^", "jumprelu_ste": "D"}
CONDITION_NAMES = {
    "mixed": "mixed",
    "deceptive_only": "deceptive only",
    "honest_only": "honest only",
}
CV_STYLES = {"stratified": "-", "scenario": "--"}
CV_LABELS = {"stratified": "stratified 5-fold (study)", "scenario": "leave-one-scenario-out"}

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}
plt.rcParams.update(RC)


def title(text: str, model_label: str) -> str:
    """A figure title that always names the model."""
    return f"{text}\n{model_label}"


def save_figure(fig, run_name: str, stem: str, root: Path | None = None) -> list[Path]:
    """Write ``figures/<run_name>/<stem>.png`` and ``.pdf``; return both paths."""
    out = Path(root or FIGURES_ROOT) / run_name
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    return paths


JUDGE_LABELS = {"keyword": "keyword judge", "gemini": "Gemini judge"}

METRIC_LABELS = {
    "bal_acc": "balanced accuracy",
    "auroc": "AUROC",
    "recall_at_1fpr": "recall at 1% FPR",
}
SAE_SOURCE_SHORT = {
    "grid": "grid SAEs (04)",
    "refit_all": "refit on all, fold epochs",
    "per_fold": "per-fold (leakage-free)",
}
CV_SHORT = {"stratified": "stratified (study)", "scenario": "leave-one-scenario-out"}
SAE_SOURCE_LABELS = {
    "grid": "SAE from 04 (saw the test completions)",
    "refit_all": "SAE refitted on all completions (same epochs as per-fold)",
    "per_fold": "SAE trained inside each fold (leakage-free)",
}
