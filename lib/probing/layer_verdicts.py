"""Which layers read deception best, and which read more than the text (notebook 05).

The "peak layer" is a maximum over layers, so its own CI overstates how sure we are that it is
the peak. Two selection-aware answers, both from the cached out-of-fold scores of the layer
profile:

* ``argmax_share``: in how many bootstrap resamples (completions within class, or whole
  scenarios for ``scenario`` folds; the same resamples for every layer) each layer has the best
  pooled balanced accuracy;
* ``below_peak``: whether the layer is significantly below *some* other layer, with the error
  rate of all pairwise comparisons of the curve held at 5% (``p_best_set``,
  :func:`lib.core.stats.best_set_pvalues`). The layers not below are a confidence set for the
  best layer, the honest "peak region". Every pair's variance is widened by Nadeau and Bengio's
  correction for the fits' own variance (:func:`lib.core.stats.cv_fit_inflation`; x2.25 at 5
  folds): with 8 equally good layers fitted by real CV probes the uncorrected set wrongly
  excluded one in 18% of simulated runs under stratified folds and the corrected one in 0.3%
  (8% and 1.1% held out); testing each layer against the sample peak did in up to a third
  (``tests/benchmarks/results/power.csv``, from ``python -m lib.probing.power``). The paired
  test against the sample peak stays as a description (``delta_vs_peak``, ``p_vs_peak``,
  ``p_holm_vs_peak``);
* ``peak_split_bal_acc``: the peak's accuracy on data not used to choose it
  (:func:`lib.core.stats.split_sample_peak`: the best layer of one half of the completions, or
  of the scenarios under held-out folds, scored on the other half, both ways; the two chosen
  layers in ``peak_split_layers``). ``bal_acc`` of the peak row is a maximum and is optimistic.

Every activation probe is also tested against the wording baselines (:mod:`lib.probing.wording`)
on the same completions and folds, with the same fit-variance factor: ``beats_text`` when the layer's balanced accuracy is
significantly above the TF-IDF probe's, and ``beats_wording`` when it is above the *strongest*
wording baseline of that CV mode (``wording_feature``: the one with the highest balanced
accuracy among ``text``, ``first_tokens`` and ``embed``), each with Holm over the layers of the
same (feature, cv). Output: ``results/layer_tests.csv`` (:data:`COLUMNS`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.capture.labelled import labelled_rows
from lib.core import stats
from lib.core.config import RunConfig
from lib.core.fileio import atomic_write_text
from lib.core.rundir import RunDir, read_results_csv, stable_seed
from lib.core.vocabulary import CV_MODES
from lib.probing.layer_profile import cached_layer_cv, captured_layers, wording_features

ALPHA = 0.05
COLUMNS = [
    "feature",
    "cv",
    "layer",
    "bal_acc",
    "is_peak",
    "argmax_share",
    "delta_vs_peak",
    "delta_vs_peak_ci_low",
    "delta_vs_peak_ci_high",
    "p_vs_peak",
    "p_holm_vs_peak",
    "p_best_set",
    "below_peak",
    "text_bal_acc",
    "delta_vs_text",
    "delta_vs_text_ci_low",
    "delta_vs_text_ci_high",
    "p_vs_text",
    "p_holm_vs_text",
    "beats_text",
    "wording_feature",
    "wording_bal_acc",
    "delta_vs_wording",
    "delta_vs_wording_ci_low",
    "delta_vs_wording_ci_high",
    "p_vs_wording",
    "p_holm_vs_wording",
    "beats_wording",
    "peak_split_bal_acc",
    "peak_split_layers",
    "n",
    "n_bootstrap",
    "note",
]


def _curve_tests(
    y, scenario, results: dict, baselines: dict, mode: str, n_boot: int, seed: int
) -> list[dict]:
    """Rows of one (feature, cv): ``results`` maps layer -> CVResult of that mode; ``baselines``
    maps ``text`` (TF-IDF) and ``wording`` (the strongest wording baseline) to ``(feature,
    CVResult or None)``."""
    layers = [layer for layer, r in results.items() if r.ok]
    if not layers:
        return []
    clusters = scenario if mode == "scenario" else None
    value = {layer: results[layer].value["bal_acc"] for layer in layers}
    peak = max(layers, key=lambda layer: value[layer])
    rng = np.random.default_rng(seed)
    if mode == "scenario":
        W = stats.cluster_multiplicities(scenario, n_boot, rng)
    else:
        W = stats.stratified_multiplicities(y, n_boot, rng)
    M = np.stack([stats.balanced_accuracy(y, results[layer].scores, W) for layer in layers], 1)
    best = np.nanargmax(np.where(np.isnan(M), -np.inf, M), axis=1)
    share = np.bincount(best, minlength=len(layers)) / n_boot
    S = np.stack([results[layer].scores for layer in layers])
    inflation = stats.cv_fit_inflation(results[layers[0]].n_folds)
    best_set = stats.best_set_pvalues(y, S, clusters, W=W, fit_inflation=inflation)
    split = stats.split_sample_peak(y, S, clusters, rng)
    rows = []
    for i, layer in enumerate(layers):
        r = {
            "layer": layer,
            "bal_acc": value[layer],
            "is_peak": layer == peak,
            "argmax_share": float(share[i]),
            "p_best_set": float(best_set[i]),
            "peak_split_bal_acc": split["bal_acc"],
            "peak_split_layers": "/".join(str(layers[j]) for j in split["chosen"]),
            "n": len(y),
            "n_bootstrap": n_boot,
        }
        if layer != peak:
            t = stats.paired_seed_test(
                y,
                results[peak].scores,
                results[layer].scores,
                n_boot,
                stable_seed(seed, "peak", layer),
                clusters,
                W=W,
                fit_inflation=inflation,
            )
            r.update(
                delta_vs_peak=t["delta"],
                delta_vs_peak_ci_low=t["ci_low"],
                delta_vs_peak_ci_high=t["ci_high"],
                p_vs_peak=t["p_value"],
            )
        for name, (feature, base) in baselines.items():
            if base is None:
                continue
            t = stats.paired_seed_test(
                y,
                results[layer].scores,
                base.scores,
                n_boot,
                stable_seed(seed, "text" if name == "text" else feature, layer),
                clusters,
                W=W,
                fit_inflation=inflation,
            )
            r.update(
                {
                    f"{name}_bal_acc": base.value["bal_acc"],
                    f"delta_vs_{name}": t["delta"],
                    f"delta_vs_{name}_ci_low": t["ci_low"],
                    f"delta_vs_{name}_ci_high": t["ci_high"],
                    f"p_vs_{name}": t["p_value"],
                }
            )
            if name == "wording":
                r["wording_feature"] = feature
        rows.append(r)
    df = pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if c not in ("feature", "cv")])
    others = df.is_peak == False  # noqa: E712
    df.loc[others, "p_holm_vs_peak"] = stats.holm(df.loc[others, "p_vs_peak"].to_numpy(float))
    df["below_peak"] = df.p_best_set < ALPHA
    for name in ("text", "wording"):
        df[f"p_holm_vs_{name}"] = stats.holm(df[f"p_vs_{name}"].to_numpy(float))
        df[f"beats_{name}"] = (df[f"p_holm_vs_{name}"] < ALPHA) & (df[f"delta_vs_{name}"] > 0)
    return df.to_dict("records")


def _baselines(wording: dict, mode: str) -> dict:
    """``text`` (TF-IDF) and ``wording`` (the strongest wording baseline under ``mode``, by
    balanced accuracy) as ``(feature, CVResult or None)``."""
    ok = {f: c[mode] for f, c in wording.items() if c is not None and c[mode].ok}
    strongest = max(ok, key=lambda f: ok[f].value["bal_acc"], default=None)
    return {"text": ("text", ok.get("text")), "wording": (strongest, ok.get(strongest))}


def layer_tests(run: RunDir, cfg: RunConfig) -> pd.DataFrame:
    """Selection-aware peak and text-baseline tests of every (feature, cv) curve of the profile;
    writes ``results/layer_tests.csv``. Needs the layer profile's cache (run
    :func:`lib.probing.layer_profile.layer_profile` first)."""
    lab = labelled_rows(run, cfg)
    layers = captured_layers(run)
    n_boot = stats.resamples_for_family(max(cfg.probe.n_bootstrap, 1), len(layers))
    wording = {f: cached_layer_cv(run, cfg, lab, None, f) for f in wording_features(run, cfg)}
    rows = []
    for feature in cfg.probe.features:
        cached = {layer: cached_layer_cv(run, cfg, lab, layer, feature) for layer in layers}
        missing = [layer for layer, c in cached.items() if c is None]
        if missing:
            raise RuntimeError(
                f"layer profile results of layers {missing} ({feature}) are not cached or stale; "
                "run lib.probing.layer_profile.layer_profile first"
            )
        for mode in CV_MODES:
            seed = stable_seed(cfg.seed, "layer_tests", feature, mode)
            res = {layer: c[mode] for layer, c in cached.items()}
            curve = _curve_tests(
                lab.y, lab.scenario, res, _baselines(wording, mode), mode, n_boot, seed
            )
            rows += [{"feature": feature, "cv": mode, **r} for r in curve]
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    df["note"] = df["note"].astype(object).fillna("")
    atomic_write_text(run.result("layer_tests.csv"), df.to_csv(index=False))
    return df


def read_layer_tests(run: RunDir) -> pd.DataFrame:
    """``results/layer_tests.csv`` (:func:`layer_tests`)."""
    return read_results_csv(run, "layer_tests.csv", "05_layer_profile_probing")


def peak_summary(tests: pd.DataFrame, feature: str, cv: str) -> dict:
    """The peak of one curve with its selection-aware companions: the layers not significantly
    below it and the share of resamples in which it is the best layer. Empty when not probed."""
    d = tests[(tests.feature == feature) & (tests.cv == cv)]
    if d.empty or not d.is_peak.any():
        return {}
    peak = d[d.is_peak].iloc[0]
    region = sorted(int(x) for x in d[~d.below_peak.astype(bool)].layer)
    return {
        "layer": int(peak.layer),
        "bal_acc": float(peak.bal_acc),
        "argmax_share": float(peak.argmax_share),
        "split_bal_acc": float(peak.get("peak_split_bal_acc", float("nan"))),
        "split_layers": str(peak.get("peak_split_layers", "")),
        "not_below": region,
        "n_layers": int(len(d)),
        "beats_text": int(d.beats_text.astype(bool).sum()),
        "text_bal_acc": float(peak.text_bal_acc) if pd.notna(peak.text_bal_acc) else float("nan"),
        "beats_wording": int(d.beats_wording.astype(bool).sum()) if "beats_wording" in d else 0,
        "wording_feature": str(peak.get("wording_feature", "")) if "wording_feature" in d else "",
        "wording_bal_acc": float(peak.get("wording_bal_acc", float("nan"))),
        "below_text": _below(d, "text"),
        "below_wording": _below(d, "wording"),
    }


def _below(d: pd.DataFrame, name: str) -> int:
    """Layers significantly *below* a baseline (the same Holm-adjusted test as ``beats_*``): the
    other side of the count, so that "0 above" is not read as "as good as"."""
    p, delta = f"p_holm_vs_{name}", f"delta_vs_{name}"
    if p not in d or delta not in d:
        return 0
    return int(((d[p] < ALPHA) & (d[delta] < 0)).sum())
