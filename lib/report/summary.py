"""Our results beside the study's published numbers (notebook 07), and their prose.

:func:`summarise_run` reads a run's results (layer profile and layer tests, SAE verdicts, STE
comparison, leakage) and writes ``results/summary.csv``: one row per claim of the study, with the
published values (the run's own model where the study published it, e.g. the SmolLM2-135M card
for a SmolLM2 run, and TinyLlama-1.1B's always: :func:`published_columns`) and ours under three
evaluations: the study's recipe (stratified folds, the grid
SAEs of notebook 04, which saw every completion), held-out scenarios (every probe tested on a
scenario it never saw; CIs resample scenarios), and leakage-free SAEs (SAEs that never saw the
probe's test completions, at the fold budget). Every SAE number is a mean over seeds, and every
verdict is the book's paired test after Holm within the family it counts over.

:func:`render_results_markdown` turns a summary table into the README's results section; the
publish step writes it, and a test checks the README against the committed summary.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from lib.core.config import RunConfig
from lib.core.fileio import atomic_write_text
from lib.core.rundir import RunDir
from lib.core.vocabulary import SAEKey
from lib.probing.layer_profile import profile_values, read_layer_profile
from lib.probing.layer_verdicts import peak_summary, read_layer_tests
from lib.probing.matched_sparsity import at_matched_l0, ste_points
from lib.probing.sae_probes import read_sae_probes
from lib.probing.sae_verdicts import (
    DESCRIPTIVE,
    class_counts,
    read_sae_leakage,
    read_sae_verdicts,
)
from lib.probing.ste_comparison import read_ste_comparison, study_claim
from lib.probing.wording import WORDING
from lib.sae.model import read_metrics
from lib.study.claims import claim_texts, published_for

CLAIMS = {
    "raw_peak_layer": "raw-activation peak layer",
    "raw_peak_bal_acc": "raw-activation peak balanced accuracy",
    "raw_peak_auroc": "raw-activation AUROC at the peak",
    "profile": "layer profile (Spearman rho of layer vs balanced accuracy)",
    "text_baseline": "wording baselines (TF-IDF, first tokens, input embeddings) and layers above the strongest",
    "monitor": "recall at 1% FPR at the peak (threshold chosen on training folds)",
    "best_sae": "best SAE probe (mean over seeds)",
    "saes_beating_raw": "SAEs beating their layer's raw probe",
    "ste_vs_topk": "STE JumpReLU vs TopK",
    "ste_matched_l0": "STE JumpReLU vs TopK at matched L0 (TopK k sweep, one cell, descriptive)",
    "leakage": "leakage (SAE saw the test completions minus it did not)",
}
SETTINGS = {
    "ours: study's recipe": ("stratified", "grid"),
    "ours: held-out scenarios": ("scenario", "grid"),
    "ours: leakage-free SAEs": ("stratified", "per_fold"),
}
NA = "n/a"
WORDING_SHORT = {"text": "TF-IDF", "first_tokens": "first tokens", "embed": "input embeddings"}


def _pct(x) -> str:
    return NA if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def _ci(lo, hi) -> str:
    ok = lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi)
    return f" [{100 * lo:.1f}, {100 * hi:.1f}]" if ok else ""


def _span(layers: list[int]) -> str:
    if not layers:
        return "none"
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"L{layers[0]}-L{layers[-1]}"
    return ", ".join(f"L{x}" for x in layers)


def _raw_claims(profile: pd.DataFrame, tests: pd.DataFrame, cv: str, feature: str) -> dict:
    pk = peak_summary(tests, feature, cv) if len(tests) else {}
    if not pk:
        return {}
    curve = profile_values(profile, cv, feature)
    at = curve[curve.layer == pk["layer"]].iloc[0]
    auc = profile_values(profile, cv, feature, "auroc")
    rec = profile_values(profile, cv, feature, "recall_at_1fpr")
    rec = rec[rec.layer == pk["layer"]]
    rho = spearmanr(curve.layer, curve.value).statistic if len(curve) > 2 else math.nan
    wording = {f: profile_values(profile, cv, f) for f in WORDING}
    out = {
        "raw_peak_layer": (
            f"L{pk['layer']} of {pk['n_layers']} ({feature} pooling); not below it: "
            f"{_span(pk['not_below'])}; best in {pk['argmax_share']:.0%} of resamples"
        ),
        "raw_peak_bal_acc": f"{_pct(at.value)}{_ci(at.ci_low, at.ci_high)}"
        + (
            f"; {_pct(pk['split_bal_acc'])} on data not used to choose it"
            if math.isfinite(pk.get("split_bal_acc", math.nan))
            else ""
        ),
        "raw_peak_auroc": f"{auc[auc.layer == pk['layer']].value.iloc[0]:.3f}" if len(auc) else NA,
        "profile": (
            f"rho={rho:.2f} (descriptive: adjacent layers share their errors, so no test); "
            f"{_pct(curve.value.iloc[0])} at L{int(curve.layer.iloc[0])} to "
            f"{_pct(curve.value.iloc[-1])} at L{int(curve.layer.iloc[-1])}"
        ),
    }
    shown = [
        f"{WORDING_SHORT[f]} {_pct(w.value.iloc[0])}{_ci(w.ci_low.iloc[0], w.ci_high.iloc[0])}"
        for f, w in wording.items()
        if len(w)
    ]
    if shown:
        strongest = WORDING_SHORT.get(pk.get("wording_feature", ""), "the strongest")
        out["text_baseline"] = (
            f"{'; '.join(shown)}; layers significantly above {strongest}: "
            f"{pk['beats_wording']} of {pk['n_layers']}, below it: {pk['below_wording']} "
            f"(TF-IDF: {pk['beats_text']} above, {pk['below_text']} below)"
        )
    if len(rec):
        r = rec.iloc[0]
        out["monitor"] = (
            f"{_pct(r.value)}{_ci(r.ci_low, r.ci_high)} at realised FPR {_pct(r.realised_fpr)} "
            f"({int(r.n_negatives)} honest)"
        )
    return out


def _sae_claims(verdicts: pd.DataFrame, cv: str, source: str) -> dict:
    v = verdicts[(verdicts.cv == cv) & (verdicts.sae_source == source)].dropna(subset=["bal_acc"])
    if v.empty:
        return {}
    b = v.loc[v.bal_acc.idxmax()]
    sd = f" (seed SD {100 * b.bal_acc_sd:.1f})" if np.isfinite(b.bal_acc_sd) else ""
    study = v[v.family == "study"]
    out = {"best_sae": f"{_pct(b.bal_acc)}{sd} ({b.arch}, L{int(b.layer)}, {b.condition})"}
    if len(study):
        out["saes_beating_raw"] = (
            f"{int((study.delta > 0).sum())} of {len(study)} above raw; "
            f"{class_counts(study.get('verdict_class'))} (paired test, Holm over {len(study)}"
            f"{_seed_df(study)})"
        )
    return out


def _seed_df(rows: pd.DataFrame) -> str:
    if "seed_df" not in rows or not rows.seed_df.notna().any():
        return ""
    return f"; seed SD pooled over the family, {int(rows.seed_df.max())} df"


def unconverged(run: RunDir, arch: str = "jumprelu_ste") -> tuple[int, int]:
    """``(not converged, trained)`` SAEs of one architecture: L0 still moving by more than the
    trainer's tolerance over the last 10% of steps (``converged`` in each ``metrics.json``)."""
    flags = []
    for folder in sorted(run.saes.glob("*")) if run.saes.exists() else []:
        try:
            key = SAEKey.parse(folder.name)
        except ValueError:
            continue
        if key.arch == arch and (folder / "metrics.json").exists():
            flags.append(read_metrics(folder).get("converged"))
    return sum(f is False for f in flags), len(flags)


def _ste_claim(ste: pd.DataFrame | None, cv: str, run: RunDir | None = None) -> str:
    if ste is None or ste.empty:
        return NA
    c = study_claim(ste, cv)
    if not c["n"]:
        return NA
    rows = ste[(ste.cv == cv) & (ste.arch_b == "topk")]
    return (
        f"STE higher in {c['ste_higher']} of {c['n']}; {class_counts(rows.get('verdict_class'))} "
        f"(Holm over {c['n']}); mean {_pct(c['mean_ste'])} vs {_pct(c['mean_other'])}; "
        f"L0 {rows.l0_a.mean():.0f} vs {rows.l0_b.mean():.0f} (not matched)"
        + _convergence_note(run)
    )


def _convergence_note(run: RunDir | None) -> str:
    if run is None:
        return ""
    bad, n = unconverged(run)
    return f"; {bad} of {n} STE SAEs not converged (L0 still falling)" if bad else ""


def _matched_claim(run: RunDir) -> str:
    """The k sweep of notebook 06 (``results/k_sweep.csv``), in one cell of the table."""
    path = run.result("k_sweep.csv")
    if not path.exists():
        return NA
    sweep = pd.read_csv(path)
    if sweep.empty:
        return NA
    layer, cond = int(sweep["layer"].iloc[0]), str(sweep["condition"].iloc[0])
    m = at_matched_l0(sweep, ste_points(run, layer, cond))
    if not np.isfinite(m["ste_bal_acc"]):
        return NA
    ext = "" if m["inside"] else ", extrapolated"
    return (
        f"L{layer} {cond}: STE {_pct(m['ste_bal_acc'])} at L0 {m['ste_l0']:.0f}; TopK at that L0 "
        f"{_pct(m['topk_bal_acc_at_ste_l0'])}{ext} (k = {', '.join(map(str, sorted(set(sweep['k']))))})"
    )


def _leakage_claim(leak: pd.DataFrame | None, cv: str) -> str:
    if leak is None or leak.empty or "leakage" not in leak:
        return NA
    d = leak[leak.cv == cv].dropna(subset=["leakage"])
    if d.empty:
        return NA
    if "verdict" in d and (d.verdict == DESCRIPTIVE).all():
        return (
            f"mean {100 * d.leakage.mean():+.1f} pp over {len(d)} SAEs; descriptive: one SAE seed "
            f"per cell, so no test (its fit variance is unknown); budget {d.budget.iloc[0]}"
        )
    conds = ", ".join(dict.fromkeys(d.condition)) if "condition" in d else "?"
    if "verdict" in d:
        counts = d.verdict.value_counts()
        tally = ", ".join(f"{counts[v]} {v}" for v in counts.index)
    else:
        tally = f"{int(((d.p_holm < 0.05) & (d.leakage > 0)).sum())} leaks"
    return (
        f"mean {100 * d.leakage.mean():+.1f} pp over {len(d)} cells ({conds}; "
        f"{int(d.n_seeds.min())} seeds each): {tally} (Holm over {len(d)}); budget "
        f"{d.budget.iloc[0]}"
    )


def published_columns(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """The study's claims this run is set beside, by column name: the run's own model when the
    study published it (``study_model`` or ``model_tag``), and TinyLlama-1.1B, the study's main
    model, always (``data/published.yaml`` through :func:`lib.study.claims.claim_texts`)."""
    cols = {}
    for key in dict.fromkeys([cfg.study_key, "tinyllama"]):
        texts = claim_texts(key)
        if texts is not None:
            cols[f"published: {published_for(key)['label']}"] = texts
    return cols


def comparison_note(cfg: RunConfig) -> str:
    """One sentence on what the published columns are for this run's model."""
    own = published_for(cfg.study_key)
    if own is not None and cfg.study_model and cfg.study_model != cfg.model_tag:
        return (
            f"The study's {own['label']} numbers are of that model as the study ran it (the base "
            f"model, full precision); this run is {cfg.label}: the two compare in structure "
            "(which layers read the label, how far above chance), not to the decimal."
        )
    if own is not None:
        return f"The study published this model ({own['label']}); its numbers stand beside ours."
    return (
        f"The study did not publish {cfg.label}; its TinyLlama-1.1B numbers stand beside ours "
        "for reference only."
    )


def summarise_run(run: RunDir, cfg: RunConfig, feature: str = "mean") -> pd.DataFrame:
    """The summary table of a run (see the module docstring); also ``results/summary.csv``."""
    profile = read_layer_profile(run)
    tests = read_layer_tests(run) if run.result("layer_tests.csv").exists() else pd.DataFrame()
    verdicts = read_sae_verdicts(run) if run.result("sae_verdicts.csv").exists() else pd.DataFrame()
    ste = read_ste_comparison(run)
    leak = read_sae_leakage(run)
    published = published_columns(cfg)
    table = {c: {"claim": CLAIMS[c], **{k: v[c] for k, v in published.items()}} for c in CLAIMS}
    for name, (cv, source) in SETTINGS.items():
        values = {}
        if source == "grid":
            values.update(_raw_claims(profile, tests, cv, feature))
            values["ste_vs_topk"] = _ste_claim(ste, cv, run)
            if cv == "stratified":
                values["ste_matched_l0"] = _matched_claim(run)
        else:
            values["leakage"] = _leakage_claim(leak, cv)
        if len(verdicts):
            values.update(_sae_claims(verdicts, cv, source))
        for claim, text in values.items():
            table[claim][name] = text
    out = pd.DataFrame(list(table.values())).reindex(columns=["claim", *published, *SETTINGS])
    out = out.fillna(NA)
    atomic_write_text(run.result("summary.csv"), out.to_csv(index=False))
    return out


def read_summary(run: RunDir) -> pd.DataFrame:
    path = run.require(run.result("summary.csv"), "07_summary")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


#: each of our settings in a sentence
SETTING_PHRASES = {
    "ours: study's recipe": "under the study's recipe",
    "ours: held-out scenarios": "on held-out scenarios",
    "ours: leakage-free SAEs": "with leakage-free SAEs",
}


def describe_counts(facts: dict) -> str:
    """:func:`n_facts` as a sentence."""
    return (
        f"This run has {facts['n']} completions ({facts['n_deceptive']} deceptive, "
        f"{facts['n_honest']} honest) and {facts['n_saes']} SAEs in {facts['n_cells']} grid cells."
    )


def describe_coverage(summary: pd.DataFrame) -> list[str]:
    """Which of our settings each claim of the summary table was measured in, as sentences: the
    claims grouped by the settings that hold a result (host-proof: which cells are n/a, never
    their numbers)."""
    ours = [c for c in SETTINGS if c in summary.columns]
    groups: dict[tuple[str, ...], list[str]] = {}
    for _, row in summary.iterrows():
        settings = tuple(c for c in ours if row[c] != NA)
        groups.setdefault(settings, []).append(row.claim)
    lines = [f"The table below sets {len(summary)} claims beside the study's; this run measured"]
    for settings, claims in groups.items():
        phrases = [SETTING_PHRASES[c] for c in settings]
        where = (
            ", ".join(phrases[:-1]) + " and " + phrases[-1]
            if len(phrases) > 1
            else "".join(phrases)
        )
        n = f"{len(claims)} claim{'s' if len(claims) > 1 else ''}"
        head = f"{n} {where}" if phrases else f"{n} in none of its settings (no result)"
        lines.append(f"- {head}: {'; '.join(claims)}.")
    return lines


def n_facts(run: RunDir) -> dict:
    """Completion and SAE counts a reader needs beside the numbers."""
    probes = read_sae_probes(run) if run.result("sae_probes.csv").exists() else pd.DataFrame()
    profile = read_layer_profile(run)
    first = profile.iloc[0] if len(profile) else None
    return {
        "n": int(first.n) if first is not None else 0,
        "n_deceptive": int(first.n_deceptive) if first is not None else 0,
        "n_honest": int(first.n_honest) if first is not None else 0,
        "n_saes": int(probes.sae_id.nunique()) if len(probes) else 0,
        "n_cells": int(probes.cell_id.nunique()) if len(probes) else 0,
    }
