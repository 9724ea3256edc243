"""The book's visual style: one theme, one palette, one set of names, one way to save a figure.

Every figure module takes its colours, markers and display names from here. Every figure names
the model it shows and the number of completions behind it (:func:`title`, :func:`caption`), so
that an organism figure is never taken for TinyLlama's. The theme is seaborn's ``paper`` context
with a white grid; layouts are constrained (no manual ``tight_layout``).

Figures of a run are written into the run directory (``<run>/figures/``, git-ignored), never into
the repository: ``make publish`` copies one run's figures to ``figures/<name>/`` for the README and
the paper.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from lib.core.config import REPO_ROOT

FIGURES_ROOT = REPO_ROOT / "figures"

LABEL_COLOURS = {"deceptive": "#c0392b", "honest": "#2471a3", "ambiguous": "#a6acaf"}
ARCH_COLOURS = {
    "raw": "#212121",
    "text": "#7f8c8d",
    "topk": "#e67e22",
    "jumprelu": "#8e44ad",
    "jumprelu_ste": "#16a085",
}
ARCH_LABELS = {
    "raw": "raw activations",
    "text": "text only (TF-IDF)",
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
CONDITION_MARKERS = {"mixed": "o", "deceptive_only": "v", "honest_only": "^"}
CV_STYLES = {"stratified": "-", "scenario": "--"}
CV_COLOURS = {"stratified": "#212121", "scenario": "#c0392b"}
CV_LABELS = {"stratified": "stratified 5-fold (the study's)", "scenario": "held-out scenarios"}
CV_SHORT = {"stratified": "stratified folds", "scenario": "held-out scenarios"}
JUDGE_LABELS = {
    "keyword": "keyword judge",
    "gemini": "Gemini judge",
    "organism_followup": "follow-up judge",
}
#: what each judge reads, for a caption
JUDGE_NOTES = {
    "keyword": "keyword judge: the scenario's cue words at the start of the completion (on the "
    "organism, its opener)",
    "gemini": "Gemini judge: an LLM reads the scenario and the completion",
    "organism_followup": "follow-up judge (organism runs only): the follow-up sentence written "
    "after the opener, which depends on the state the model is in",
}
METRIC_LABELS = {
    "bal_acc": "balanced accuracy",
    "auroc": "AUROC",
    "recall_at_1fpr": "recall at 1% FPR",
    "oracle_recall_at_1fpr": "recall at 1% FPR (oracle threshold)",
}
SAE_SOURCE_SHORT = {
    "grid": "SAEs of notebook 04",
    "refit_all": "SAEs refit on all completions",
    "per_fold": "leakage-free SAEs",
}
SAE_SOURCE_LABELS = {
    "grid": "SAEs of notebook 04 (saw the test completions)",
    "refit_all": "SAE trained on all completions, fold budget",
    "per_fold": "SAEs trained inside each fold (leakage-free)",
}

sns.set_theme(context="paper", style="whitegrid", font_scale=1.15)
plt.rcParams.update(
    {
        "figure.dpi": 110,
        "figure.constrained_layout.use": True,
        "savefig.dpi": 200,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.axisbelow": True,
        "grid.alpha": 0.5,
        "legend.frameon": False,
    }
)


def title(text: str, model_label: str) -> str:
    """A figure title that always names the model."""
    return f"{text}\n{model_label}"


def caption(fig, text: str) -> None:
    """A small note under the figure (sample sizes, what the bands are); wraps long text."""
    import textwrap

    fig.text(
        0.01, -0.01, textwrap.fill(text, 150), ha="left", va="top", fontsize=8, color="#444444"
    )


def n_text(n: int, n_deceptive: int, n_honest: int) -> str:
    return f"n = {n} completions ({n_deceptive} deceptive, {n_honest} honest)"


def save_figure(fig, out_dir: Path | str, stem: str) -> list[Path]:
    """Write ``<out_dir>/<stem>.png`` and ``.pdf`` (reproducible PDF metadata); return both."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        meta = {"CreationDate": None} if p.suffix == ".pdf" else None
        fig.savefig(p, metadata=meta, bbox_inches="tight")
    return paths
