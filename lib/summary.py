"""Our results beside the study's published TinyLlama numbers (notebook 07).

Reads ``results/layer_profile.csv``, ``results/sae_probes.csv`` and
``results/ste_comparison.csv`` of a run and writes ``results/summary.csv``: one row per claim of
the study, with the published value, ours under the study's recipe (stratified folds, SAEs
trained on all completions) and ours under the stricter evaluation (held-out scenarios,
leakage-free SAEs), each with its 95% CI where one exists.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from lib.layer_profile import peak_layer, read_layer_profile
from lib.rundir import RunDir, atomic_write_text
from lib.sae_probes import read_sae_probes
from lib.ste_comparison import read_ste_comparison

# From the study's TinyLlama-1.1B model card and paper (see shared/RESEARCH.md).
PUBLISHED = {
    "raw_peak_layer": "L21 (of 22)",
    "raw_peak_bal_acc": "72.4%",
    "raw_peak_auroc": "0.784",
    "profile": "rises monotonically, ~55% at L3 to 72.4% at L21",
    "best_sae": "77.8% (jumprelu, L15, honest_only)",
    "saes_beating_raw": "14 of 30",
    "ste_vs_topk": "STE wins 8 of 9; mean 69.2% vs 64.1%",
}
CLAIMS = {
    "raw_peak_layer": "raw-activation peak layer",
    "raw_peak_bal_acc": "raw-activation peak balanced accuracy",
    "raw_peak_auroc": "raw-activation AUROC at the peak",
    "profile": "layer profile (Spearman rho of layer vs balanced accuracy)",
    "best_sae": "best SAE probe",
    "saes_beating_raw": "SAEs beating their layer's raw probe",
    "ste_vs_topk": "STE JumpReLU vs TopK",
}


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def _ci(lo: float, hi: float) -> str:
    return "" if not (np.isfinite(lo) and np.isfinite(hi)) else f" [{100 * lo:.1f}, {100 * hi:.1f}]"


def _peak(profile: pd.DataFrame, cv: str, feature: str) -> dict:
    best = peak_layer(profile, cv=cv, feature=feature)
    if best["layer"] is None:
        return {}
    bal = profile[
        (profile.cv == cv) & (profile.feature == feature) & (profile.metric == "bal_acc")
    ].dropna(subset=["value"])
    auc = profile[
        (profile.cv == cv)
        & (profile.feature == feature)
        & (profile.metric == "auroc")
        & (profile.layer == best["layer"])
    ]
    rho = spearmanr(bal.layer, bal.value).statistic if len(bal) > 2 else float("nan")
    return {
        "layer": int(best["layer"]),
        "n_layers": int(bal.layer.max()) + 1,
        "bal": f"{_pct(best['value'])}{_ci(best['ci_low'], best['ci_high'])}",
        "auroc": f"{auc.value.iloc[0]:.3f}" if len(auc) else "n/a",
        "rho": rho,
        "first": bal.sort_values("layer").iloc[0],
        "last": bal.sort_values("layer").iloc[-1],
    }


def _sae_rows(sae: pd.DataFrame, cv: str, leakage_free: bool) -> pd.DataFrame:
    return sae[(sae.cv == cv) & (sae.leakage_free == leakage_free)].dropna(subset=["bal_acc"])


def _best_sae(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "n/a"
    b = rows.loc[rows.bal_acc.idxmax()]
    return f"{_pct(b.bal_acc)}{_ci(b.bal_acc_ci_low, b.bal_acc_ci_high)} ({b.arch}, L{int(b.layer)}, {b.condition})"


def _beating(rows: pd.DataFrame) -> str:
    rows = rows[rows.arch != "jumprelu_ste"]  # the study's count is over its 30 original SAEs
    if rows.empty:
        return "n/a"
    any_pos = int((rows.delta > 0).sum())
    sig = int(((rows.delta > 0) & (rows.p_holm < 0.05)).sum())
    return f"{any_pos} of {len(rows)} (any gain); {sig} significant after Holm"


def _ste(ste: pd.DataFrame | None, cv: str, leakage_free: bool) -> str:
    if ste is None or ste.empty:
        return "n/a"
    if leakage_free:
        return "n/a (compared on the grid SAEs of 04)"
    rows = ste[ste.cv == cv]
    if rows.empty:
        return "n/a"
    wins = int((rows.jumprelu_ste_bal_acc > rows.topk_bal_acc).sum())
    sig = int((rows.verdict == "wins").sum())
    return (
        f"STE higher in {wins} of {len(rows)} ({sig} wins by CI); "
        f"mean {_pct(rows.jumprelu_ste_bal_acc.mean())} vs {_pct(rows.topk_bal_acc.mean())}"
    )


def summarise_run(run: RunDir, feature: str = "mean") -> pd.DataFrame:
    """The summary table of a run (see module docstring); also written to results/summary.csv."""
    profile = read_layer_profile(run)
    sae = (
        read_sae_probes(run)
        if run.result("sae_probes.csv").exists()
        else pd.DataFrame(columns=["cv", "leakage_free", "bal_acc"])
    )
    ste = read_ste_comparison(run)
    settings = {
        "ours: study's recipe": ("stratified", False),
        "ours: leakage-free SAEs": ("stratified", True),
        "ours: held-out scenarios": ("scenario", False),
    }
    table = {claim: {"claim": CLAIMS[claim], "published": PUBLISHED[claim]} for claim in CLAIMS}
    for name, (cv, lf) in settings.items():
        pk = _peak(profile, cv, feature)
        if pk:
            table["raw_peak_layer"][name] = f"L{pk['layer']} (of {pk['n_layers']})"
            table["raw_peak_bal_acc"][name] = pk["bal"]
            table["raw_peak_auroc"][name] = pk["auroc"]
            table["profile"][name] = (
                f"rho={pk['rho']:.2f}; {_pct(pk['first'].value)} at L{int(pk['first'].layer)} to "
                f"{_pct(pk['last'].value)} at L{int(pk['last'].layer)}"
            )
        rows = _sae_rows(sae, cv, lf) if len(sae) else sae
        table["best_sae"][name] = _best_sae(rows)
        table["saes_beating_raw"][name] = _beating(rows) if len(rows) else "n/a"
        table["ste_vs_topk"][name] = _ste(ste, cv, lf)
    out = pd.DataFrame(list(table.values())).fillna("n/a")
    atomic_write_text(run.result("summary.csv"), out.to_csv(index=False))
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
