"""What the notebooks and the README say about a run: host-proof facts and generated prose.

Floating point differs between machines (BLAS kernels, reduction order), so the third decimal of
a probe's balanced accuracy, and sometimes which of two tied layers is the peak, moves from host
to host. The executed notebooks are checked by nbval, so the outputs it compares
(cells tagged ``nbval-check-output``) print only what cannot move: counts, ids, and verdicts whose margin is
far wider than the host-to-host spread (each ``*_facts`` function says which thresholds it uses).
The numbers themselves are checked by ``tests/book/`` with measured tolerances. The prose
functions turn a run's CSVs into sentences, so that text and numbers cannot disagree.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.probing.layer_profile import profile_values
from lib.probing.layer_verdicts import peak_summary
from lib.probing.sae_verdicts import class_counts
from lib.probing.ste_comparison import study_claim
from lib.probing.wording import WORDING

#: a "signal found" verdict needs a best balanced accuracy this high with a permutation p this low
SIGNAL_BAL_ACC, SIGNAL_P = 0.70, 0.01


def _fmt(facts: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in facts.items())


def profile_facts(profile: pd.DataFrame, controls: pd.DataFrame) -> str:
    """Host-proof facts of the layer profile (notebook 05)."""
    raw = profile[profile.layer.notna()]  # the wording baselines' rows have no layer
    first = raw.iloc[0]
    facts = {
        "layers probed": int(raw.layer.nunique()),
        "pooled features": ", ".join(sorted(set(raw.feature))),
        "completions (deceptive / honest)": f"{int(first.n)} ({int(first.n_deceptive)} / {int(first.n_honest)})",
        "text-only baseline probed": bool((profile.feature == "text").any()),
        "wording baselines probed": ", ".join(f for f in WORDING if (profile.feature == f).any()),
    }
    for cv in ("stratified", "scenario"):
        d = raw[(raw.cv == cv) & (raw.metric == "bal_acc") & (raw.subset == "all")].dropna(
            subset=["value"]
        )
        found = bool(len(d) and ((d.value >= SIGNAL_BAL_ACC) & (d.p_value <= SIGNAL_P)).any())
        facts[
            f"deception read at some layer, {cv} folds (bal_acc >= {SIGNAL_BAL_ACC}, p <= {SIGNAL_P})"
        ] = found
    rec = raw[
        (raw.metric == "recall_at_1fpr") & (raw.subset == "all") & (raw.cv == "stratified")
    ].dropna(subset=["realised_fpr"])
    # a threshold carried to an unseen scenario need not keep its rate (notebook 05's table)
    facts["1%-FPR monitor thresholds chosen on training folds; realised FPR <= 5%, stratified"] = (
        bool(len(rec) and (rec.realised_fpr <= 0.05).all())
    )
    sh = controls[(controls.target == "shuffled_labels") & (controls.metric == "bal_acc")].dropna(
        subset=["value"]
    )
    facts["shuffled-label means within 0.40-0.60 everywhere"] = bool(
        len(sh) and sh.value.between(0.4, 0.6).all()
    )
    sid = controls[controls.target == "scenario_identity"].dropna(subset=["value"])
    facts["scenario identity above 2x chance at every layer"] = bool(
        len(sid) and (sid.value > 2 * sid.chance).all()
    )
    return _fmt(facts)


def sae_facts(probes: pd.DataFrame, verdicts: pd.DataFrame, train_on: str) -> str:
    """Host-proof facts of the SAE probes (notebook 05)."""
    grid = probes[probes.sae_source == "grid"]
    facts = {
        "grid cells": int(grid.cell_id.nunique()),
        "SAEs probed (every seed)": int(grid.sae_id.nunique()),
        "seeds per cell": int(grid.groupby("cell_id").sae_id.nunique().max()) if len(grid) else 0,
        "probed on their training inputs": f"{train_on}: {bool(len(grid) and (grid.inputs.dropna() == train_on).all())}",
        "refused (inputs off the training norm)": int(
            grid.note.str.startswith("refused").sum() // 2
        ),
        "collapsed on the probe's inputs (L0 < 1)": int(
            grid.collapsed.fillna(False).astype(bool).sum() // 2
        ),
        "verdicts (cell x CV mode x source)": len(verdicts),
        "leakage-free SAE probes": int((probes.sae_source == "per_fold").sum()),
    }
    return _fmt(facts)


def ste_facts(ste: pd.DataFrame) -> str:
    """Host-proof facts of the STE comparison (notebook 06)."""
    if ste is None or ste.empty:
        return "no STE SAEs in this config (sae.ste_layers is empty): nothing to compare"
    topk = ste[ste.arch_b == "topk"]
    relu = ste[(ste.arch_b == "jumprelu") & (ste.cv == "stratified")]
    facts = {
        "(layer, condition) cells": int(topk[["layer", "condition"]].drop_duplicates().shape[0]),
        "comparisons (cell x CV mode x other architecture)": len(ste),
        "STE codes sparser than threshold-0 JumpReLU in every cell (L0 below half)": bool(
            len(relu) and (relu.l0_a < 0.5 * relu.l0_b).all()
        ),
        "collapsed STE SAEs": int((ste.verdict == "collapsed").sum()),
    }
    return _fmt(facts)


# ----- prose ---------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def describe_profile(profile: pd.DataFrame, tests: pd.DataFrame, feature: str = "mean") -> str:
    """A paragraph on where deception is readable, generated from the layer profile and tests."""
    out = []
    for cv, what in (
        ("stratified", "the study's stratified folds"),
        ("scenario", "held-out scenarios"),
    ):
        pk = peak_summary(tests, feature, cv)
        if not pk:
            out.append(f"Under {what} the probe could not be fitted.")
            continue
        at = profile_values(profile, cv, feature).set_index("layer").loc[pk["layer"]]
        value = f"{_pct(at.value)}, 95% CI {_pct(at.ci_low)} to {_pct(at.ci_high)}"
        if pk["n_layers"] == 1:
            out.append(
                f"Under {what}, the {feature}-pooled probe at the one probed layer, "
                f"{pk['layer']}, reaches {value}."
            )
        else:
            others = [x for x in pk["not_below"] if x != pk["layer"]]
            near = (
                f"layer{'s' if len(others) > 1 else ''} {', '.join(str(x) for x in others)} "
                f"{'are' if len(others) > 1 else 'is'} not significantly below any other layer"
                if others
                else "every other layer is significantly below it"
            )
            out.append(
                f"Under {what}, the {feature}-pooled probe peaks at layer {pk['layer']} ({value}); "
                f"{near} (a confidence set for the best layer: all pairs of layers compared, "
                "family-wise error 5%), and it is the best layer in "
                f"{pk['argmax_share']:.0%} of bootstrap resamples."
            )
            if np.isfinite(pk.get("split_bal_acc", float("nan"))):
                out.append(
                    f"Chosen on one half of the {'scenarios' if cv == 'scenario' else 'completions'}"
                    f" and scored on the other, the best layer reaches {_pct(pk['split_bal_acc'])}"
                    " (the peak's own figure is a maximum, and optimistic)."
                )
        if np.isfinite(pk.get("wording_bal_acc", float("nan"))):
            out.append(
                f"The strongest wording baseline, a probe on the {WORDING[pk['wording_feature']]}, "
                f"reaches {_pct(pk['wording_bal_acc'])}; {pk['beats_wording']} of "
                f"{pk['n_layers']} layers read significantly more than it (TF-IDF alone: "
                f"{_pct(pk['text_bal_acc'])}, {pk['beats_text']} layers above it)."
            )
        elif np.isfinite(pk["text_bal_acc"]):
            out.append(
                f"The text-only probe reaches {_pct(pk['text_bal_acc'])}; {pk['beats_text']} of "
                f"{pk['n_layers']} layers read significantly more than the words."
            )
    s = profile_values(profile, "stratified", feature)
    c = profile_values(profile, "scenario", feature)
    if len(s) and len(c):
        gap = (s.set_index("layer").value - c.set_index("layer").value).dropna()
        within = c.within_scenario.mean()
        text = (
            f"Held-out scenarios cost {100 * gap.mean():.1f} points on average (at most "
            f"{100 * gap.max():.1f}); within each held-out scenario the probes separate "
            f"completions with balanced accuracy {_pct(within)} on average (the mean over the "
            "scenarios that have both labels, each scored alone)"
        )
        out.append(text + ".")
    return " ".join(out)


def describe_saes(verdicts: pd.DataFrame) -> str:
    """A paragraph on the SAE probes against raw, generated from the verdicts."""
    out = []
    for cv, what in (("stratified", "stratified folds"), ("scenario", "held-out scenarios")):
        v = verdicts[(verdicts.sae_source == "grid") & (verdicts.cv == cv)].dropna(subset=["delta"])
        if v.empty:
            continue
        out.append(
            f"Under {what}, {int((v.delta > 0).sum())} of {len(v)} SAE cells have a seed-mean "
            f"balanced accuracy above their layer's raw probe (mean difference "
            f"{100 * v.delta.mean():+.1f} points); by the paired test with Holm within each family: "
            f"{class_counts(v.get('verdict_class'))}."
        )
    return " ".join(out)


def describe_ste(ste: pd.DataFrame) -> str:
    """A paragraph on STE JumpReLU vs TopK, generated from the comparison."""
    if ste is None or ste.empty:
        return "This config has no STE SAEs."
    out = []
    for cv, what in (("stratified", "stratified folds"), ("scenario", "held-out scenarios")):
        c = study_claim(ste, cv)
        rows = ste[(ste.cv == cv) & (ste.arch_b == "topk")]
        if c["n"]:
            out.append(
                f"Under {what}, the STE SAE's seed mean is higher than TopK's in {c['ste_higher']} "
                f"of {c['n']} cells (the study counted 8 of 9; mean {_pct(c['mean_ste'])} vs "
                f"{_pct(c['mean_other'])}); by the paired test with Holm: "
                f"{class_counts(rows.get('verdict_class'))}. The STE SAEs fire "
                f"{rows.l0_a.mean():.0f} latents per token against TopK's {rows.l0_b.mean():.0f}: "
                "the comparison is not at matched sparsity."
            )
    return " ".join(out)
