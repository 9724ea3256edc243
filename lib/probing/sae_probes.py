"""SAE probes against the raw probe of their layer, across seeds and without leakage (notebook 05).

Features: every SAE is probed on the inputs it was trained on (:mod:`lib.sae.codes`): a
token-trained SAE encodes every response token and its codes are pooled per completion
(``probe.sae_pooling``); an SAE trained on pooled vectors encodes that pooled vector. L0, FVU and
the norm ratio are measured *on those inputs* (``input_l0``, ``input_fvu``, ``input_norm_ratio``)
and an SAE whose inputs are off its training norm by more than 2x is refused with a note. The raw
reference is the layer's raw probe on the matching pooled vector (``mean``, or ``last`` for
``last`` pooling), on exactly the same folds.

Seeds: each grid cell has ``sae.seeds`` SAEs (:meth:`lib.core.config.RunConfig.sae_id`). Per-seed rows
go to ``results/sae_probes.csv`` (:data:`SAE_COLUMNS`). The verdicts, one per (cell, cv,
sae_source), go to ``results/sae_verdicts.csv`` (:data:`VERDICT_COLUMNS`): the mean over seeds
and its seed spread, and ``delta`` = mean over seeds of SAE minus raw pooled balanced accuracy
with the book's one paired test (:func:`lib.core.stats.paired_seed_test`: a bootstrap over
completions and a t term over seeds; under ``scenario`` folds a delete-one-scenario jackknife
t-interval). ``p_holm``: Holm within a
stated family, ``(cv, sae_source, family)`` where ``family`` is ``study`` (TopK and threshold-0
JumpReLU, the study's 30) or ``ste``; ``verdict`` is ``win`` / ``loss`` when ``p_holm < 0.05``,
else ``inconclusive``.

Sources: ``grid`` (the SAEs of notebook 04, trained on every completion of the condition except
its held-out metrics share: they saw the probe's test completions, as in the study) and, with
``probe.leakage_free`` (cells of ``probe.leakage_conditions``), ``refit_all`` and ``per_fold``
(:mod:`lib.probing.leakage`), summarised in
``results/sae_leakage.csv``. Work is cached per SAE in ``cache/probing/`` with its out-of-fold
scores, which notebook 06 reads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.capture.labelled import LayerData, labelled_rows, pooled, read_index, read_layer
from lib.core import stats
from lib.core.config import RunConfig
from lib.core.fileio import atomic_write_text
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
from lib.core.vocabulary import CV_MODES
from lib.probing.layer_profile import cached_layer_cv
from lib.probing.leakage import budget_config, budget_label, leakage_free_cv, refit_all
from lib.probing.probe import CVResult, bootstrap_plan, cross_validate, save_cv
from lib.probing.sae_verdicts import SOURCE_PREFIX, family_of, leakage_table, sae_verdicts
from lib.sae.codes import SAEFeatures, sae_features
from lib.sae.model import load_sae as load_sae_folder
from lib.study.claims import load_published_sae

CACHE_VERSION = 2
#: per-fold SAEs start from the reference SAE's seed (before: seed + fold), so leakage is not
#: mixed with seed noise; part of their cache key
PER_FOLD_SEEDS = "reference seed"
SAE_COLUMNS = [
    "sae_id",
    "cell_id",
    "seed_index",
    "layer",
    "arch",
    "condition",
    "family",
    "inputs",
    "pooling",
    "raw_feature",
    "cv",
    "sae_source",
    "budget",
    "bal_acc",
    "bal_acc_ci_low",
    "bal_acc_ci_high",
    "ci_method",
    "auroc",
    "raw_bal_acc",
    "raw_auroc",
    "delta",
    "input_l0",
    "input_fvu",
    "input_norm_ratio",
    "collapsed",
    "n",
    "d_sae",
    "note",
]


def raw_feature(pooling: str, inputs: str) -> str:
    """The pooled raw vector an SAE probe is compared with."""
    return "last" if "last" in (pooling, inputs) else "mean"


def collapsed(feats: SAEFeatures) -> bool:
    """Fewer than one active latent per input on the probe's own inputs: a collapsed code."""
    return bool(np.isfinite(feats.input_l0) and feats.input_l0 < 1.0)


def _probe_rows(base, F, feats, lab, raw, cfg, seed) -> tuple[list[dict], dict[str, CVResult]]:
    """Per-mode rows of one feature matrix against the raw probe."""
    rows, results = [], {}
    stamp = {
        "input_l0": feats.input_l0,
        "input_fvu": feats.input_fvu,
        "collapsed": collapsed(feats),
        "input_norm_ratio": feats.norm_ratio,
        "inputs": feats.inputs,
        "n": len(lab),
        "d_sae": F.shape[1] if isinstance(F, np.ndarray) else None,
    }
    for mode in CV_MODES:
        res = F[mode] if isinstance(F, dict) else cross_validate(F, lab.y, lab.scenario, mode)
        res.groups = lab.scenario
        results[mode] = res
        row = {
            **base,
            **stamp,
            "cv": mode,
            "raw_bal_acc": raw[mode].value["bal_acc"],
            "raw_auroc": raw[mode].value["auroc"],
            "note": res.note or feats.note,
        }
        if res.ok:
            W, how = bootstrap_plan(
                lab.y, lab.scenario, mode, cfg.probe.n_bootstrap, stable_seed(seed, mode)
            )
            lo, hi = stats.percentile_ci(stats.balanced_accuracy(lab.y, res.scores, W))
            row.update(
                bal_acc=res.value["bal_acc"],
                auroc=res.value["auroc"],
                bal_acc_ci_low=lo,
                bal_acc_ci_high=hi,
                ci_method=how,
                delta=res.value["bal_acc"] - raw[mode].value["bal_acc"],
            )
        rows.append(row)
    return rows, results


class _Cell:
    """One grid cell (layer, arch, condition): its SAEs of every seed, probed and cached."""

    def __init__(self, run, cfg, lab, layer, arch, condition, force, train_sae, load_sae):
        self.run, self.cfg, self.lab, self.layer = run, cfg, lab, layer
        self.arch, self.condition, self.force = arch, condition, force
        self.train_sae, self.load_sae = train_sae, load_sae or load_sae_folder
        self.pooling = cfg.probe.sae_pooling
        self.cell_id = cfg.sae_id(layer, arch, condition)
        self._data = None

    def data(self) -> tuple[LayerData, dict]:
        """(layer data, raw CV results of the matching pooled vector), read when first needed."""
        if self._data is None:
            layer = read_layer(self.run, self.layer)
            feature = raw_feature(self.pooling, self.cfg.sae.train_on)
            raw = cached_layer_cv(self.run, self.cfg, self.lab, self.layer, feature)
            if raw is None:
                X = pooled(layer, self.lab, feature)
                raw = {m: cross_validate(X, self.lab.y, self.lab.scenario, m) for m in CV_MODES}
            self._data = (layer, raw)
        return self._data

    def base(self, sae_id: str, i: int, source: str, budget: str) -> dict:
        return {
            "sae_id": sae_id,
            "cell_id": self.cell_id,
            "seed_index": i,
            "layer": self.layer,
            "arch": self.arch,
            "condition": self.condition,
            "family": family_of(self.arch),
            "pooling": self.pooling,
            "sae_source": source,
            "budget": budget,
            "raw_feature": raw_feature(self.pooling, self.cfg.sae.train_on),
        }

    def cached(self, name: str, key: str, compute) -> list[dict]:
        jpath = self.run.probing_cache / f"{name}.json"
        hit = None if self.force else read_cached(jpath, key)
        if hit is not None and (self.run.probing_cache / f"{name}.npz").exists():
            return hit["rows"]
        rows, results = compute()
        if results:
            save_cv(self.run.probing_cache / f"{name}.npz", results)
        write_cached(jpath, key, {"rows": jsonable_rows(rows)})
        return rows

    def key(self, *parts) -> str:
        c, p = self.cfg, self.cfg.probe
        return fingerprint(
            [
                CACHE_VERSION,
                *parts,
                self.lab.stamp(),
                c.seed,
                p.n_bootstrap,
                self.pooling,
                p.inner_splits,
                file_stamp(self.run.activation_file(self.layer)),
            ]
        )

    def grid_rows(self, i: int) -> list[dict]:
        sae_id = self.cfg.sae_id(self.layer, self.arch, self.condition, i)
        weights = self.run.sae_dir(sae_id) / "sae_weights.safetensors"
        base = self.base(sae_id, i, "grid", f"{self.cfg.sae.epochs} epochs (grid)")
        if not weights.exists():
            note = f"SAE {sae_id} not found in {self.run.saes}; run 04_sae_training"
            return [{**base, "cv": m, "n": len(self.lab), "note": note} for m in CV_MODES]

        def compute():
            layer, raw = self.data()
            sae = self.load_sae(self.run.sae_dir(sae_id))
            meta = getattr(sae, "meta", None) or {}
            train_on = meta.get("train_on") or self.cfg.sae.train_on
            feats = sae_features(sae, layer, self.lab.rows, train_on, (self.pooling,))
            if not feats.ok:
                return [
                    {
                        **base,
                        "cv": m,
                        "n": len(self.lab),
                        "input_l0": feats.input_l0,
                        "input_norm_ratio": feats.norm_ratio,
                        "note": feats.note,
                    }
                    for m in CV_MODES
                ], {}
            F = feats.features[self.pooling]
            return _probe_rows(
                base, F, feats, self.lab, raw, self.cfg, stable_seed(self.cfg.seed, sae_id)
            )

        return self.cached(
            f"{SOURCE_PREFIX['grid']}_{sae_id}",
            self.key("grid", sae_id, file_stamp(weights)),
            compute,
        )

    def leakage_rows(self, i: int) -> list[dict]:
        sae_id = self.cfg.sae_id(self.layer, self.arch, self.condition, i)
        sae_cfg = budget_config(self.cfg)
        budget = budget_label(sae_cfg)
        seed = self.cfg.sae_seed(i)
        settings = sae_cfg.model_dump(mode="json")

        def compute_refit():
            layer, raw = self.data()
            base = self.base(sae_id, i, "refit_all", budget)
            F, feats, _, note = refit_all(
                layer,
                self.lab,
                self.arch,
                self.condition,
                sae_cfg,
                seed,
                self.pooling,
                self.train_sae,
            )
            if F is None:
                return [{**base, "cv": m, "n": len(self.lab), "note": note} for m in CV_MODES], {}
            return _probe_rows(base, F, feats, self.lab, raw, self.cfg, stable_seed(seed, "refit"))

        def compute_folds():
            layer, raw = self.data()
            base = self.base(sae_id, i, "per_fold", budget)
            res = {}
            for mode in CV_MODES:
                res[mode], _ = leakage_free_cv(
                    layer,
                    self.lab,
                    self.arch,
                    self.condition,
                    sae_cfg,
                    seed,  # the reference's seed: the two differ only in the data they saw
                    mode,
                    self.pooling,
                    self.train_sae,
                )
            return _probe_rows(
                base,
                res,
                SAEFeatures(inputs=sae_cfg.train_on),
                self.lab,
                raw,
                self.cfg,
                stable_seed(seed, "per_fold"),
            )

        refit = self.cached(
            f"refit_{sae_id}", self.key("refit_all", sae_id, settings), compute_refit
        )
        folds = self.cached(
            f"folds_{sae_id}",
            self.key("per_fold", sae_id, settings, PER_FOLD_SEEDS),
            compute_folds,
        )
        return refit + folds


def leaks(cfg: RunConfig, condition: str) -> bool:
    """Whether grid cells of ``condition`` get leakage-free and reference SAEs
    (``probe.leakage_free``, limited to ``probe.leakage_conditions`` when set)."""
    only = cfg.probe.leakage_conditions
    return cfg.probe.leakage_free and (only is None or condition in only)


def _cell_rows(run, cfg, lab, layer, arch, cond, leakage, force, train_sae, load_sae) -> list[dict]:
    cell = _Cell(run, cfg, lab, layer, arch, cond, force, train_sae, load_sae)
    rows = []
    for i in range(cfg.sae.seeds):
        rows += cell.grid_rows(i)
        if leakage and i < cfg.probe.leakage_seeds:
            rows += cell.leakage_rows(i)
    return rows


def sae_probes(
    run: RunDir,
    cfg: RunConfig,
    progress: bool = True,
    force: bool = False,
    n_jobs: int | None = None,
    train_sae: Callable | None = None,
    load_sae: Callable | None = None,
) -> pd.DataFrame:
    """Probe every SAE of the grid (every seed) against its layer's raw probe; write
    ``results/sae_probes.csv``, ``results/sae_verdicts.csv`` and, with ``probe.leakage_free``,
    ``results/sae_leakage.csv``. Returns the per-seed rows. ``train_sae``/``load_sae`` default to
    the book's trainer and loader (arguments exist for tests)."""
    n_jobs = cfg.probe.n_jobs if n_jobs is None else n_jobs
    lab = labelled_rows(run, cfg)
    grid = sorted(cfg.sae_grid(), key=lambda c: c[0])  # by layer
    args = [(run, cfg, lab, *c, leaks(cfg, c[2]), force, train_sae, load_sae) for c in grid]
    if n_jobs == 1 or len(args) <= 1:
        parts = [_cell_rows(*a) for a in progress_bar(args, desc="SAE probes", on=progress)]
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(_cell_rows)(*a) for a in args)
        parts = list(progress_bar(gen, len(args), "SAE probes", progress))
    df = pd.DataFrame([r for part in parts for r in part]).reindex(columns=SAE_COLUMNS)
    df["note"] = df["note"].fillna("")
    atomic_write_text(run.result("sae_probes.csv"), df.to_csv(index=False))
    atomic_write_text(
        run.result("sae_verdicts.csv"), sae_verdicts(run, cfg, lab, df).to_csv(index=False)
    )
    if cfg.probe.leakage_free:
        atomic_write_text(
            run.result("sae_leakage.csv"), leakage_table(run, cfg, lab, df).to_csv(index=False)
        )
    else:
        run.result("sae_leakage.csv").unlink(missing_ok=True)
    return df


def read_sae_probes(run: RunDir) -> pd.DataFrame:
    """``results/sae_probes.csv``: one row per SAE (every seed), CV mode and source."""
    return read_results_csv(run, "sae_probes.csv", "05_layer_profile_probing")


def probe_published_sae(
    run: RunDir, cfg: RunConfig, folder, mode: str = "stratified", pooling: str = "mean"
) -> dict:
    """One of the study's published SAEs (e.g. its SmolLM2 SAEs: d_in 576, d_sae 2304, hook
    ``model.layers.{L}``) probed on this run beside the raw probe of its layer, same folds.

    The study trained its SAEs on one pooled vector per completion, so they encode the run's
    pooled ``pooling`` vectors (never token vectors: an SAE is probed on its own input kind).
    The SAE is loaded by :func:`lib.study.claims.load_published_sae` with ``d_in`` set to the run's
    width, which refuses an SAE of another model. Returns ``sae_id``, ``layer``, ``bal_acc``,
    ``raw_bal_acc``, ``delta``, ``input_l0`` and ``n``; descriptive (one fit, no seeds).
    """
    sae = load_published_sae(folder, d_in=int(read_index(run)["d_model"]))
    layer = int(sae.meta["hook_layer"])
    lab = labelled_rows(run, cfg)
    X = pooled(read_layer(run, layer), lab, pooling)
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(X)).numpy()
    sae_res = cross_validate(codes, lab.y, lab.scenario, mode)
    raw_res = cross_validate(X, lab.y, lab.scenario, mode)
    return {
        "sae_id": Path(folder).name,
        "layer": layer,
        "cv": mode,
        "bal_acc": sae_res.value["bal_acc"],
        "raw_bal_acc": raw_res.value["bal_acc"],
        "delta": sae_res.value["bal_acc"] - raw_res.value["bal_acc"],
        "input_l0": float((codes > 0).sum(1).mean()),
        "n": len(lab.y),
    }
