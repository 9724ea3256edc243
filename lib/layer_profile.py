"""The layer profile (notebook 05): where is deception linearly readable in the residual stream?

For every captured layer and pooled feature (``last`` token, ``mean`` over the response), the
study's probe (:mod:`lib.probe`) under both CV modes, with for every metric:

* a 95% CI: percentile bootstrap over completions of the pooled out-of-fold scores, resampling
  within each class (:func:`lib.stats.bootstrap_ci`, ``ProbeConfig.n_bootstrap`` resamples). The
  probes are not refitted, so the interval covers test-set sampling, not training variation:
  a layer without signal scatters around 0.5 more widely than its CI suggests, and can land
  visibly below 0.5 (cross-validation anti-learns a little under the null). The permutation
  null, shown as the ``shuffled_labels`` control, has the full spread; judge "is there signal"
  by the p-value, and "how much" by ``value`` and its CI;
* a permutation p-value (:func:`lib.controls.permutation_pvalue`);

plus the controls ``shuffled_labels`` and ``scenario_identity`` (:mod:`lib.controls`).

Files: ``results/layer_profile.csv`` (the deception probe) and ``results/probe_controls.csv``
(the controls), both with columns :data:`PROFILE_COLUMNS`; their readers are below. Work is cached
per (layer, feature) in ``cache/probing/``, keyed on the labels, the activation file and the
settings, and reused unless ``force``. ``n_jobs`` > 1 probes layers in single-threaded worker
processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lib import stats
from lib.config import RunConfig
from lib.controls import permutation_pvalue, scenario_identity_probe
from lib.dataset import Labelled, labelled_rows, pooled, read_index, read_layer
from lib.probe import (
    CV_MODES,
    METRICS,
    SOLVERS,
    CVResult,
    cross_validate,
    fold_problem,
    load_cv,
    result_from_scores,
    save_cv,
)
from lib.rundir import (
    RunDir,
    atomic_write_text,
    file_stamp,
    fingerprint,
    jsonable_rows,
    read_cached,
    read_results_csv,
    stable_seed,
    write_cached,
)
from lib.runtime import progress as progress_bar

CACHE_VERSION = 1
PROFILE_COLUMNS = [
    "layer",
    "feature",
    "cv",
    "target",
    "metric",
    "value",
    "pooled",
    "ci_low",
    "ci_high",
    "p_value",
    "chance",
    "n",
    "n_deceptive",
    "n_honest",
    "n_folds",
    "n_bootstrap",
    "n_permutations",
    "note",
]


def probe_feature(
    X: np.ndarray,
    y: np.ndarray,
    scenario: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    n_permutations: int = 200,
    seed: int = 0,
    modes: tuple[str, ...] = CV_MODES,
) -> tuple[list[dict], dict[str, CVResult]]:
    """Everything the layer profile reports for one feature matrix ``X`` [n, d].

    Returns the table rows (targets ``deception``, ``shuffled_labels``, ``scenario_identity``) and
    the sklearn :class:`CVResult` of each mode (kept for the SAE comparison).
    """
    y = np.asarray(y).astype(np.int64)
    base = {
        "n": len(y),
        "n_deceptive": int((y == 1).sum()),
        "n_honest": int((y == 0).sum()),
        "n_bootstrap": n_bootstrap,
        "n_permutations": n_permutations,
    }
    rows, results = [], {}
    for mode in modes:
        problem = fold_problem(y, scenario, mode)
        if problem:
            res = CVResult.failed(mode, y, problem)
        else:
            perm = permutation_pvalue(
                X, y, scenario, mode, n_permutations, stable_seed(seed, mode, "perm")
            )
            if SOLVERS[mode] == "exact":  # the permutation run's first column is this very fit
                res = result_from_scores(mode, y, perm.observed_scores, perm.folds)
            else:
                res = cross_validate(X, y, scenario, mode)
        results[mode] = res
        if not res.ok:
            for target, metrics in (
                ("deception", METRICS),
                ("shuffled_labels", ("bal_acc", "auroc")),
            ):
                for m in metrics:
                    rows.append(
                        {
                            **base,
                            "cv": mode,
                            "target": target,
                            "metric": m,
                            "value": np.nan,
                            "pooled": np.nan,
                            "ci_low": np.nan,
                            "ci_high": np.nan,
                            "p_value": np.nan,
                            "chance": 0.5,
                            "n_folds": 0,
                            "note": res.note,
                        }
                    )
            continue
        ci = stats.bootstrap_ci(y, res.scores, n_bootstrap, stable_seed(seed, mode, "ci"))
        for m in METRICS:
            rows.append(
                {
                    **base,
                    "cv": mode,
                    "target": "deception",
                    "metric": m,
                    "value": res.value[m],
                    "pooled": res.pooled[m],
                    "ci_low": ci[m][0],
                    "ci_high": ci[m][1],
                    "p_value": perm.p[m],
                    "chance": 0.5 if m != "recall_at_1fpr" else stats.FPR_LEVEL,
                    "n_folds": res.n_folds,
                    "note": "",
                }
            )
        for m in ("bal_acc", "auroc"):
            null = perm.null[m][np.isfinite(perm.null[m])]
            lo, hi = stats.percentile_ci(null)
            rows.append(
                {
                    **base,
                    "cv": mode,
                    "target": "shuffled_labels",
                    "metric": m,
                    "value": float(null.mean()) if null.size else np.nan,
                    "pooled": np.nan,
                    "ci_low": lo,
                    "ci_high": hi,
                    "p_value": np.nan,
                    "chance": 0.5,
                    "n_folds": res.n_folds,
                    "note": (
                        f"mean and central 95% of {null.size} label shuffles"
                        if null.size
                        else "no permutations (probe.n_permutations = 0)"
                    ),
                }
            )
    sid = scenario_identity_probe(X, scenario, n_bootstrap, stable_seed(seed, "scenario_identity"))
    rows.append(
        {
            **base,
            "cv": "stratified",
            "target": "scenario_identity",
            "metric": "bal_acc",
            "value": sid["value"],
            "pooled": sid["pooled"],
            "ci_low": sid["ci_low"],
            "ci_high": sid["ci_high"],
            "p_value": np.nan,
            "chance": sid["chance"],
            "n": sid["n"],
            "n_folds": sid["n_folds"],
            "note": sid["note"],
        }
    )
    return rows, results


# ----- the stage ------------------------------------------------------------------------------
def captured_layers(run: RunDir) -> list[int]:
    """The captured layers (``layers`` of ``activations/index.json``; else the files present)."""
    index = read_index(run)
    if "layers" in index:
        return sorted(int(layer) for layer in index["layers"])
    return sorted(int(p.stem[1:]) for p in run.activations.glob("L*.safetensors"))


def _layer_key(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int, feature: str) -> str:
    return fingerprint(
        [
            CACHE_VERSION,
            "layer",
            layer,
            feature,
            lab.stamp(),
            cfg.seed,
            cfg.probe.n_bootstrap,
            cfg.probe.n_permutations,
            file_stamp(run.activation_file(layer)),
        ]
    )


def _layer_paths(run: RunDir, layer: int, feature: str) -> tuple[Path, Path]:
    stem = run.probing_cache / f"layer_L{layer:02d}_{feature}"
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def _layer_cached(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int, feature: str) -> bool:
    jpath, npath = _layer_paths(run, layer, feature)
    return (
        npath.exists() and read_cached(jpath, _layer_key(run, cfg, lab, layer, feature)) is not None
    )


def cached_layer_cv(
    run: RunDir, cfg: RunConfig, lab: Labelled, layer: int, feature: str
) -> dict[str, CVResult] | None:
    """The raw probe's CV results of one layer and feature from the cache, when current."""
    jpath, npath = _layer_paths(run, layer, feature)
    if read_cached(jpath, _layer_key(run, cfg, lab, layer, feature)) is None or not npath.exists():
        return None
    res = load_cv(npath)
    return res if all(m in res for m in CV_MODES) else None


def _probe_layer(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int, force: bool) -> list[dict]:
    """All rows of one layer (both features), from the cache when it is current."""
    rows, data = [], None
    for feature in cfg.probe.features:
        key = _layer_key(run, cfg, lab, layer, feature)
        jpath, npath = _layer_paths(run, layer, feature)
        cached = None if force else read_cached(jpath, key)
        if cached is not None and npath.exists():
            rows += cached["rows"]
            continue
        data = data if data is not None else read_layer(run, layer)
        X = pooled(data, lab, feature)
        frows, results = probe_feature(
            X,
            lab.y,
            lab.scenario,
            n_bootstrap=cfg.probe.n_bootstrap,
            n_permutations=cfg.probe.n_permutations,
            seed=stable_seed(cfg.seed, "layer", layer, feature),
        )
        frows = [{"layer": layer, "feature": feature, **r} for r in frows]
        save_cv(npath, results)
        write_cached(jpath, key, {"rows": jsonable_rows(frows)})
        rows += frows
    return rows


def layer_profile(
    run: RunDir,
    cfg: RunConfig,
    progress: bool = True,
    force: bool = False,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Probe every captured layer and pooled feature; write the layer profile and its controls.

    ``results/layer_profile.csv`` (returned): the deception probe, one row per (layer, feature,
    cv, metric); ``results/probe_controls.csv`` (:func:`read_probe_controls`): the
    ``shuffled_labels`` and ``scenario_identity`` rows. Both have columns
    :data:`PROFILE_COLUMNS` (``target`` says which probe a row belongs to). Work is cached per
    layer and feature in ``cache/probing/`` (keyed on the labels, the activation file and the
    probe settings) and skipped when current unless ``force``. ``n_jobs`` (default
    ``cfg.probe.n_jobs``) > 1 probes layers in parallel processes (each single-threaded).
    """
    n_jobs = cfg.probe.n_jobs if n_jobs is None else n_jobs
    lab = labelled_rows(run, cfg)
    layers = captured_layers(run)
    if not layers:
        raise FileNotFoundError(
            f"no activation files in {run.activations}; run 03_activation_capture"
        )
    if not force:  # layers whose every feature is cached need no worker
        todo = [
            layer
            for layer in layers
            if not all(_layer_cached(run, cfg, lab, layer, f) for f in cfg.probe.features)
        ]
        if not todo:
            n_jobs = 1
    if n_jobs == 1:
        parts = [
            _probe_layer(run, cfg, lab, layer, force)
            for layer in progress_bar(layers, len(layers), "layers", progress)
        ]
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_probe_layer)(run, cfg, lab, layer, force) for layer in layers
        )
        parts = list(progress_bar(gen, len(layers), "layers", progress))
    df = pd.DataFrame([r for part in parts for r in part])
    df = df.reindex(columns=PROFILE_COLUMNS)
    df["note"] = df["note"].fillna("")
    profile = df[df["target"] == "deception"].reset_index(drop=True)
    controls = df[df["target"] != "deception"].reset_index(drop=True)
    atomic_write_text(run.result("probe_controls.csv"), controls.to_csv(index=False))
    atomic_write_text(run.result("layer_profile.csv"), profile.to_csv(index=False))
    return profile


def read_layer_profile(run: RunDir) -> pd.DataFrame:
    """``results/layer_profile.csv``: the deception probe by layer, feature, CV mode and metric."""
    return read_results_csv(run, "layer_profile.csv", "05_layer_profile_probing")


def read_probe_controls(run: RunDir) -> pd.DataFrame:
    """``results/probe_controls.csv``: shuffled-label and scenario-identity probes by layer."""
    return read_results_csv(run, "probe_controls.csv", "05_layer_profile_probing")


def peak_layer(
    profile: pd.DataFrame,
    cv: str = "stratified",
    metric: str = "bal_acc",
    feature: str | None = None,
) -> dict:
    """The (layer, feature) with the highest deception ``value`` of ``metric`` under ``cv``."""
    sel = profile[(profile.target == "deception") & (profile.cv == cv) & (profile.metric == metric)]
    if feature is not None:
        sel = sel[sel.feature == feature]
    sel = sel.dropna(subset=["value"])
    if sel.empty:
        return {
            "layer": None,
            "feature": feature,
            "value": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "p_value": float("nan"),
        }
    best = sel.loc[sel["value"].idxmax()]
    return {k: best[k] for k in ("layer", "feature", "value", "ci_low", "ci_high", "p_value")}
