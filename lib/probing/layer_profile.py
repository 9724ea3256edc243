"""The layer profile (notebook 05): where is deception linearly readable in the residual stream?

For every captured layer and pooled feature (``last`` token, ``mean`` over the response), and once
for each wording baseline (``feature`` in :data:`lib.probing.wording.WORDING`: ``text``,
``first_tokens``, ``embed``; ``layer`` empty), the study's probe (:mod:`lib.probing.probe`) under both CV modes, with for every metric:

* a 95% CI from a bootstrap that matches the question: completions resampled within class for
  ``stratified`` folds; whole scenarios resampled (a cluster bootstrap, ``ci_method ==
  "cluster"``) for ``scenario`` folds, whose question is generalisation to an unseen scenario.
  The probes are not refitted, so the interval covers test-set sampling, not training
  variation; the permutation null (the ``shuffled_labels`` control) has the full spread. Judge
  "is there signal" by the p-value and "how much" by ``value`` and its CI;
* a permutation p-value (:func:`lib.probing.controls.permutation_pvalue`) for ``bal_acc`` and ``auroc``;
* for ``scenario`` folds, ``within_scenario``: the mean of the metric within each held-out
  scenario (pooled scores mix nine separately fitted probes' offsets);
* the monitor's operating point: ``recall_at_1fpr`` with the threshold chosen inside each
  training fold, with ``realised_fpr`` and ``n_negatives`` beside it; the threshold chosen on the
  evaluated scores is ``oracle_recall_at_1fpr``.

Rows are given for all completions (``subset == "all"``) and for the incentive and role-play
scenarios apart (``subset == "incentive" | "roleplay"``: the same out-of-fold scores), since the
study's label mixes two phenomena. Controls: ``shuffled_labels`` and ``scenario_identity``
(:mod:`lib.probing.controls`).

Files: ``results/layer_profile.csv`` (the deception probe) and ``results/probe_controls.csv``
(the controls), both with columns :data:`PROFILE_COLUMNS`; their readers are below. Out-of-fold
results are cached per (layer, feature) in ``cache/probing/`` (keyed on the labels, the inputs
and the settings) and reused unless ``force``; :mod:`lib.probing.layer_verdicts` and the SAE probes read
them. ``probe.n_jobs`` > 1 probes layers in single-threaded worker processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.capture.labelled import (
    Labelled,
    labelled_rows,
    pooled,
    read_index,
    read_input_embeddings,
    read_layer,
)
from lib.core import stats
from lib.core.config import RunConfig
from lib.core.fileio import atomic_write_text, read_jsonl
from lib.core.rundir import (
    RunDir,
    file_stamp,
    fingerprint,
    jsonable_rows,
    read_cached,
    read_results_csv,
    stable_seed,
    write_cached,
)
from lib.core.runtime import progress as progress_bar
from lib.core.scenarios import load_scenarios
from lib.probing.controls import permutation_pvalue, scenario_identity_probe
from lib.probing.probe import (
    CV_MODES,
    SOLVERS,
    CVResult,
    bootstrap_plan,
    cross_validate_folds,
    cv_folds,
    fold_problem,
    load_cv,
    monitor_thresholds,
    result_from_scores,
    save_cv,
    within_groups,
)
from lib.probing.wording import (
    FIRST_K,
    TEXT_C_GRID,
    TFIDF,
    WORDING,
    first_token_features,
    text_features,
)

CACHE_VERSION = 2
SUBSETS = ("all", "incentive", "roleplay")
PROFILE_COLUMNS = [
    "layer",
    "feature",
    "cv",
    "subset",
    "target",
    "metric",
    "value",
    "pooled",
    "within_scenario",
    "ci_low",
    "ci_high",
    "ci_method",
    "p_value",
    "realised_fpr",
    "n_negatives",
    "chance",
    "n",
    "n_deceptive",
    "n_honest",
    "n_folds",
    "n_bootstrap",
    "n_permutations",
    "note",
]
CHANCE = {"bal_acc": 0.5, "auroc": 0.5, "recall_at_1fpr": stats.FPR_LEVEL}
CHANCE["oracle_recall_at_1fpr"] = stats.FPR_LEVEL


def _fold_features(features, folds: np.ndarray):
    """``k -> X``: ``features`` is a matrix (the same in every fold) or ``folds -> (k -> X)``."""
    return features(folds) if callable(features) else (lambda _k: features)


def _metric_rows(res: CVResult, mask, W, ci_method, kinds_note) -> list[dict]:
    """The deception rows of one CV result on the completions ``mask`` (one subset)."""
    y, s, scen = res.y[mask], res.scores[mask], res.groups[mask]
    Wm = W[:, mask] if W is not None else None
    full = bool(mask.all())
    rows = []
    pooled_vals = stats.binary_metrics(y, s)
    within = within_groups(y, s, scen) if res.mode == "scenario" else {}
    for m in ("bal_acc", "auroc", "oracle_recall_at_1fpr"):
        lo, hi = (
            stats.percentile_ci(stats.binary_metrics(y, s, Wm)[m])
            if Wm is not None
            else (np.nan,) * 2
        )
        rows.append(
            {
                "metric": m,
                "value": res.value[m] if full else pooled_vals[m],
                "pooled": pooled_vals[m],
                "within_scenario": within.get(m, np.nan),
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    if res.thresholds is not None:
        t = res.thresholds[mask]
        recall, fpr = stats.recall_and_fpr(y, s, t)
        lo, hi = (np.nan, np.nan)
        if Wm is not None:
            lo, hi = stats.percentile_ci(stats.recall_and_fpr(y, s, t, Wm)[0])
        rows.append(
            {
                "metric": "recall_at_1fpr",
                "value": recall,
                "pooled": recall,
                "ci_low": lo,
                "ci_high": hi,
                "realised_fpr": fpr,
                "n_negatives": int((y == 0).sum()),
            }
        )
    for r in rows:
        r.update(ci_method=ci_method, chance=CHANCE[r["metric"]], note=kinds_note)
    return rows


def probe_feature(
    features,
    y: np.ndarray,
    scenario: np.ndarray,
    kinds: np.ndarray | None = None,
    *,
    n_bootstrap: int = 1000,
    n_permutations: int = 200,
    seed: int = 0,
    modes: tuple[str, ...] = CV_MODES,
    monitor: bool = True,
    inner_splits: int = 5,
    identity: bool = True,
    c_grid: tuple[float, ...] | None = None,
) -> tuple[list[dict], dict[str, CVResult]]:
    """Everything the layer profile reports for one feature: rows and each mode's CV result.

    ``features``: an ``[n, d]`` matrix, or ``folds -> (k -> [n, d])`` for features fitted per
    training fold (the text baseline). ``kinds``: the scenario kind of every completion
    (``incentive`` / ``roleplay``) for the subset rows. Rows carry ``cv``, ``subset``, ``target``
    (``deception``, ``shuffled_labels``, ``scenario_identity``) and the columns of
    :data:`PROFILE_COLUMNS` except ``layer`` and ``feature``. ``c_grid``: the probe's ``C`` is
    chosen by inner CV in every training fold (the TF-IDF baseline,
    :data:`lib.probing.wording.TEXT_C_GRID`), its permutation null and monitor thresholds alike.
    """
    y = np.asarray(y).astype(np.int64)
    kinds = np.asarray(kinds) if kinds is not None else np.full(len(y), "all")

    def base(mask):
        return {
            "n": int(mask.sum()),
            "n_deceptive": int((y[mask] == 1).sum()),
            "n_honest": int((y[mask] == 0).sum()),
            "n_bootstrap": n_bootstrap,
            "n_permutations": n_permutations,
        }

    everyone = np.ones(len(y), dtype=bool)
    rows, results = [], {}
    for mode in modes:
        problem = fold_problem(y, scenario, mode)
        if problem:
            results[mode] = CVResult.failed(mode, y, problem)
            rows += [
                {
                    **base(everyone),
                    "cv": mode,
                    "subset": "all",
                    "target": t,
                    "metric": m,
                    "chance": 0.5,
                    "n_folds": 0,
                    "note": problem,
                }
                for t, ms in (
                    ("deception", ("bal_acc", "auroc")),
                    ("shuffled_labels", ("bal_acc",)),
                )
                for m in ms
            ]
            continue
        folds = cv_folds(y, scenario, mode)
        fx = _fold_features(features, folds)
        perm = permutation_pvalue(
            fx,
            y,
            scenario,
            mode,
            n_permutations,
            stable_seed(seed, mode, "perm"),
            c_grid=c_grid,
            inner_splits=inner_splits,
        )
        if SOLVERS[mode] == "exact" or c_grid:  # the permutation run's first column is this fit
            res = result_from_scores(mode, y, perm.observed_scores, folds)
        else:
            res = cross_validate_folds(fx, y, folds, mode, "sklearn")
        if monitor:
            res.thresholds = monitor_thresholds(
                fx, y, folds, inner_splits=inner_splits, C=perm.c_chosen
            )
        tuned = (
            "C by inner CV per training fold: "
            + ", ".join(f"{c:g}" for c in perm.c_chosen.values())
            if perm.c_chosen
            else ""
        )
        res.groups = np.asarray(scenario)
        results[mode] = res
        W, how = (None, "")
        if n_bootstrap > 0:
            W, how = bootstrap_plan(y, scenario, mode, n_bootstrap, stable_seed(seed, mode, "ci"))
        for subset in SUBSETS:
            mask = everyone if subset == "all" else kinds == subset
            if subset != "all" and (mask.sum() == 0 or len(np.unique(y[mask])) < 2):
                continue
            n_scen = len(np.unique(np.asarray(scenario)[mask]))
            note = (
                "" if subset == "all" else f"{n_scen} {subset} scenario(s); same out-of-fold scores"
            )
            note = "; ".join(filter(None, [note, tuned]))
            for r in _metric_rows(res, mask, W, how, note):
                p = perm.p.get(r["metric"], np.nan) if subset == "all" else np.nan
                if r["metric"] == "oracle_recall_at_1fpr":
                    p = np.nan
                rows.append(
                    {
                        **base(mask),
                        "cv": mode,
                        "subset": subset,
                        "target": "deception",
                        "p_value": p,
                        "n_folds": res.n_folds,
                        **r,
                    }
                )
        for m in ("bal_acc", "auroc"):
            null = perm.null[m][np.isfinite(perm.null[m])]
            lo, hi = stats.percentile_ci(null)
            note = (
                f"mean and central 95% of {null.size} label shuffles"
                if null.size
                else ("no permutations (probe.n_permutations = 0)")
            )
            rows.append(
                {
                    **base(everyone),
                    "cv": mode,
                    "subset": "all",
                    "target": "shuffled_labels",
                    "metric": m,
                    "value": float(null.mean()) if null.size else np.nan,
                    "ci_low": lo,
                    "ci_high": hi,
                    "chance": 0.5,
                    "n_folds": res.n_folds,
                    "note": note,
                }
            )
    if identity and not callable(features):
        sid = scenario_identity_probe(
            features, scenario, n_bootstrap, stable_seed(seed, "identity")
        )
        rows.append(
            {
                **base(everyone),
                "cv": "stratified",
                "subset": "all",
                "target": "scenario_identity",
                "metric": "bal_acc",
                "value": sid["value"],
                "pooled": sid["pooled"],
                "ci_low": sid["ci_low"],
                "ci_high": sid["ci_high"],
                "ci_method": "completion",
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


def scenario_kinds(cfg: RunConfig, lab: Labelled) -> np.ndarray:
    """The kind (``incentive`` / ``roleplay``) of every labelled completion's scenario."""
    pool = load_scenarios(cfg.scenario_path())
    return np.array([pool[s].kind if s in pool else "unknown" for s in lab.scenario])


def wording_features(run: RunDir, cfg: RunConfig) -> list[str]:
    """The wording baselines this run probes: all of :data:`WORDING` when ``probe.text_baseline``
    (``embed`` only when the capture wrote the input embeddings)."""
    if not cfg.probe.text_baseline:
        return []
    return [f for f in WORDING if f != "embed" or run.input_embeddings.exists()]


def _source(run: RunDir, layer: int | None, feature: str) -> Path:
    if layer is not None:
        return run.activation_file(layer)
    return run.input_embeddings if feature == "embed" else run.completions


def _key(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int | None, feature: str) -> str:
    source = file_stamp(_source(run, layer, feature))
    p = cfg.probe
    return fingerprint(
        [
            CACHE_VERSION,
            "layer",
            layer,
            feature,
            lab.stamp(),
            cfg.seed,
            p.n_bootstrap,
            p.n_permutations,
            p.inner_splits,
            source,
            (TFIDF, TEXT_C_GRID)
            if feature == "text"
            else FIRST_K
            if feature == "first_tokens"
            else None,
        ]
    )


def _paths(run: RunDir, layer: int | None, feature: str) -> tuple[Path, Path]:
    name = feature if layer is None else f"L{layer:02d}_{feature}"
    stem = run.probing_cache / f"layer_{name}"
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def _cached(run, cfg, lab, layer, feature) -> dict | None:
    jpath, npath = _paths(run, layer, feature)
    hit = read_cached(jpath, _key(run, cfg, lab, layer, feature))
    return hit if hit is not None and npath.exists() else None


def cached_layer_cv(
    run: RunDir, cfg: RunConfig, lab: Labelled, layer: int | None, feature: str
) -> dict[str, CVResult] | None:
    """The CV results of one layer and feature (``layer=None``: a wording baseline, ``feature``
    one of :data:`WORDING`) from the cache, when current; ``None`` otherwise."""
    if _cached(run, cfg, lab, layer, feature) is None:
        return None
    res = load_cv(_paths(run, layer, feature)[1])
    return res if all(m in res for m in CV_MODES) else None


def _probe_unit(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int | None, force: bool):
    """All rows of one layer (every feature), or of the wording baselines (``layer=None``)."""
    features = wording_features(run, cfg) if layer is None else list(cfg.probe.features)
    rows, data = [], None
    kinds = scenario_kinds(cfg, lab)
    for feature in features:
        hit = None if force else _cached(run, cfg, lab, layer, feature)
        if hit is not None:
            rows += hit["rows"]
            continue
        if layer is None:
            X = _wording_inputs(run, lab, feature)
        else:
            data = data if data is not None else read_layer(run, layer)
            X = pooled(data, lab, feature)
        frows, results = probe_feature(
            X,
            lab.y,
            lab.scenario,
            kinds,
            n_bootstrap=cfg.probe.n_bootstrap,
            n_permutations=cfg.probe.n_permutations,
            seed=stable_seed(cfg.seed, "layer", layer if layer is not None else "text", feature),
            inner_splits=cfg.probe.inner_splits,
            c_grid=TEXT_C_GRID if feature == "text" else None,
        )
        frows = [{"layer": layer, "feature": feature, **r} for r in frows]
        jpath, npath = _paths(run, layer, feature)
        save_cv(npath, results)
        write_cached(jpath, _key(run, cfg, lab, layer, feature), {"rows": jsonable_rows(frows)})
        rows += frows
    return rows


def _wording_inputs(run: RunDir, lab: Labelled, feature: str):
    """The probe's input of a wording baseline: a matrix, or ``folds -> (k -> X)`` for features
    fitted on training folds."""
    if feature == "embed":
        return read_input_embeddings(run)[torch.as_tensor(lab.rows)].numpy()
    rows = {r["id"]: r for r in read_jsonl(run.completions)}
    if feature == "first_tokens":
        toks = [rows[i].get("completion_token_ids") or [] for i in lab.ids]
        return lambda folds, toks=toks: first_token_features(toks, folds)
    texts = [rows[i]["completion"] for i in lab.ids]
    return lambda folds, texts=texts: text_features(texts, folds)


def layer_profile(
    run: RunDir,
    cfg: RunConfig,
    progress: bool = True,
    force: bool = False,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Probe every captured layer and pooled feature (and the text); write profile and controls.

    ``results/layer_profile.csv`` (returned): the deception probe, one row per (layer, feature,
    cv, subset, metric); ``results/probe_controls.csv`` (:func:`read_probe_controls`): the
    ``shuffled_labels`` and ``scenario_identity`` rows. Both have columns :data:`PROFILE_COLUMNS`.
    ``n_jobs`` defaults to ``cfg.probe.n_jobs``.
    """
    n_jobs = cfg.probe.n_jobs if n_jobs is None else n_jobs
    lab = labelled_rows(run, cfg)
    layers = captured_layers(run)
    if not layers:
        raise FileNotFoundError(
            f"no activation files in {run.activations}; run 03_activation_capture"
        )
    wording = wording_features(run, cfg)
    units: list[int | None] = [*layers, *([None] if wording else [])]
    todo = [
        u
        for u in units
        if force
        or any(
            _cached(run, cfg, lab, u, f) is None
            for f in (wording if u is None else cfg.probe.features)
        )
    ]
    if n_jobs == 1 or len(todo) <= 1:
        parts = [
            _probe_unit(run, cfg, lab, u, force)
            for u in progress_bar(units, desc="layers", on=progress)
        ]
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_probe_unit)(run, cfg, lab, u, force) for u in units
        )
        parts = list(progress_bar(gen, len(units), "layers", progress))
    df = pd.DataFrame([r for part in parts for r in part]).reindex(columns=PROFILE_COLUMNS)
    df["note"] = df["note"].fillna("")
    df["layer"] = df["layer"].astype("Int64")
    profile = df[df["target"] == "deception"].reset_index(drop=True)
    controls = df[df["target"] != "deception"].reset_index(drop=True)
    atomic_write_text(run.result("probe_controls.csv"), controls.to_csv(index=False))
    atomic_write_text(run.result("layer_profile.csv"), profile.to_csv(index=False))
    return profile


def read_layer_profile(run: RunDir) -> pd.DataFrame:
    """``results/layer_profile.csv``: the deception probe by layer, feature, CV mode, subset and
    metric (rows of a wording baseline, ``feature`` in :data:`WORDING`, have ``layer`` empty)."""
    df = read_results_csv(run, "layer_profile.csv", "05_layer_profile_probing")
    df["layer"] = df["layer"].astype("Int64")
    return df


def read_probe_controls(run: RunDir) -> pd.DataFrame:
    """``results/probe_controls.csv``: shuffled-label and scenario-identity probes by layer."""
    return read_results_csv(run, "probe_controls.csv", "05_layer_profile_probing")


def profile_values(
    profile: pd.DataFrame, cv: str, feature: str, metric: str = "bal_acc", subset: str = "all"
) -> pd.DataFrame:
    """The rows of one curve of the profile (sorted by layer, NaN values dropped)."""
    sel = profile[(profile.cv == cv) & (profile.feature == feature) & (profile.metric == metric)]
    if "subset" in sel:
        sel = sel[sel.subset == subset]
    return sel.dropna(subset=["value"]).sort_values("layer")
