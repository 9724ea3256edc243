"""SAE probes against the raw probe of their layer, with and without leakage (notebook 05).

SAE features are ``sae.encode(x)`` of the completion's pooled vector (``ProbeConfig.sae_feature``),
i.e. the SAE is applied to the same vector the raw probe sees (the study's single pooled vector
per completion), not to each token before pooling. Every SAE probe uses exactly the folds of its
layer's raw probe (the folds depend only on the labels and scenarios), so the two are compared
completion by completion (:func:`lib.probe.compare_probes`): ``delta = bal_acc(SAE) -
bal_acc(raw)``, a 95% CI from a paired stratified bootstrap of the pooled out-of-fold
predictions, and a two-sided p-value from approximate randomisation (10,000 rounds by default, so
that Holm over a grid of 39 can reach 0.05). ``p_holm`` is Holm-corrected over the SAEs of one
``(cv, sae_source)`` family.

Leakage-free SAE probes (``ProbeConfig.leakage_free``, :mod:`lib.leakage`) run for the
``stratified`` mode only (5 SAEs per grid cell; the study's claims were made under stratified
folds), with ``probe.fold_epochs`` epochs (default ``sae.epochs``). When that is below
``sae.epochs``, one more SAE per cell is trained on *all* labelled completions of the condition
with the same epochs (``sae_source="refit_all"``: the study's data choice at the fold SAEs'
training length), so that ``refit_all - per_fold`` measures leakage and not training length.

Files: ``results/sae_probes.csv`` (grid and per-fold SAE probes, columns :data:`SAE_COLUMNS`) and
``results/sae_leakage.csv`` (per SAE, with and without leakage); their readers are below. Work is
cached per SAE in ``cache/probing/``; a missing SAE or a condition too small to train on gives a
row with a ``note`` instead of an error.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from lib import stats
from lib.config import RunConfig, SAEConfig
from lib.dataset import Labelled, labelled_rows, pooled, read_layer, training_vectors
from lib.layer_profile import cached_layer_cv
from lib.leakage import leakage_comparison, leakage_free_cv, train_quietly, training_facts
from lib.probe import (
    CV_MODES,
    N_RANDOMIZATIONS,
    CVResult,
    compare_probes,
    cross_validate,
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
from lib.sae import encode_rows
from lib.sae import load_sae as load_sae_folder

CACHE_VERSION = 1
SAE_COLUMNS = [
    "sae_id",
    "layer",
    "arch",
    "condition",
    "feature",
    "cv",
    "sae_source",
    "leakage_free",
    "bal_acc",
    "bal_acc_ci_low",
    "bal_acc_ci_high",
    "auroc",
    "raw_bal_acc",
    "raw_auroc",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_holm",
    "significant",
    "n",
    "d_sae",
    "epochs",
    "note",
]


_LAYER_MEMO: dict = {}


def _layer_inputs(run: RunDir, cfg: RunConfig, lab: Labelled, layer: int):
    """(layer data, pooled SAE-probe features, raw CV results) of a layer, memoised per process."""
    feature = cfg.probe.sae_feature
    key = (
        str(run.root),
        layer,
        tuple(file_stamp(run.activation_file(layer))),
        feature,
        fingerprint(lab.stamp()),
    )
    if key not in _LAYER_MEMO:
        _LAYER_MEMO.clear()
        data = read_layer(run, layer)
        X = pooled(data, lab, feature)
        raw = cached_layer_cv(run, cfg, lab, layer, feature)
        if raw is None:
            raw = {mode: cross_validate(X, lab.y, lab.scenario, mode) for mode in CV_MODES}
        _LAYER_MEMO[key] = (data, X, raw)
    return _LAYER_MEMO[key]


class _CacheMiss(Exception):
    pass


class _SAECell:
    """The probe rows of one grid cell: its grid SAE (both CV modes) and, when asked, the
    leakage-free (``per_fold``) and matched reference (``refit_all``) rows, each cached."""

    def __init__(self, run, cfg, lab, layer, arch, condition, n_randomizations, force, cache_only):
        self.run, self.cfg, self.lab, self.layer = run, cfg, lab, layer
        self.arch, self.condition = arch, condition
        self.n_rand, self.force, self.cache_only = n_randomizations, force, cache_only
        self.sae_id = cfg.sae_id(layer, arch, condition)
        self.path = run.sae_dir(self.sae_id)
        self.feature = cfg.probe.sae_feature
        self.seed = stable_seed(cfg.seed, "sae", self.sae_id)
        self.base = {
            "sae_id": self.sae_id,
            "layer": layer,
            "arch": arch,
            "condition": condition,
            "feature": self.feature,
        }
        self._inputs = None

    def inputs(self):  # (layer data, pooled features, raw CV results), read only when needed
        if self._inputs is None:
            self._inputs = _layer_inputs(self.run, self.cfg, self.lab, self.layer)
        return self._inputs

    def key(self, source: str, *settings) -> str:
        lab, cfg = self.lab, self.cfg
        return fingerprint(
            [CACHE_VERSION, source, self.sae_id, lab.stamp(), cfg.seed, cfg.probe.n_bootstrap]
            + [
                self.n_rand,
                self.feature,
                *settings,
                file_stamp(self.run.activation_file(self.layer)),
            ]
        )

    def cached_or(self, name: str, key: str, compute) -> list[dict]:
        jpath = self.run.probing_cache / f"{name}_{self.sae_id}.json"
        hit = None if self.force else read_cached(jpath, key)
        if hit is not None:
            return hit["rows"]
        if self.cache_only:
            raise _CacheMiss(name)
        new, extra = compute()
        write_cached(jpath, key, {"rows": jsonable_rows(new), **extra})
        return new

    def compare(self, res: CVResult, mode: str, tag: str) -> dict:
        raw = self.inputs()[2][mode]
        cmp = compare_probes(
            res,
            raw,
            self.cfg.probe.n_bootstrap,
            self.n_rand,
            stable_seed(self.seed, tag),
            reference_name="raw",
        )
        return cmp

    # the study's way: the grid SAE trained in 04 (on data that includes the probe's test folds)
    def grid_rows(self, load_sae: Callable | None) -> list[dict]:
        weights = self.path / "sae_weights.safetensors"
        if weights.exists():
            key = self.key("grid", file_stamp(weights))
            return self.cached_or("sae", key, lambda: (self._grid_rows(load_sae), {}))
        if self.cache_only:
            raise _CacheMiss("grid")
        raw = self.inputs()[2]
        note = f"SAE {self.sae_id} not found in {self.run.saes}; run 04_sae_training"
        return [
            {
                **self.base,
                "cv": mode,
                "sae_source": "grid",
                "leakage_free": False,
                "n": len(self.lab),
                "note": note,
                "raw_bal_acc": raw[mode].value["bal_acc"],
                "raw_auroc": raw[mode].value["auroc"],
            }
            for mode in CV_MODES
        ]

    def _grid_rows(self, load_sae: Callable | None) -> list[dict]:
        _, X, _ = self.inputs()
        F = encode_rows((load_sae or load_sae_folder)(self.path), X)
        out = []
        for mode in CV_MODES:
            res = cross_validate(F, self.lab.y, self.lab.scenario, mode)
            out.append(
                {
                    **self.base,
                    "cv": mode,
                    "sae_source": "grid",
                    "leakage_free": False,
                    "d_sae": F.shape[1],
                    "epochs": self.cfg.sae.epochs,
                    **self.compare(res, mode, mode),
                }
            )
        return out

    # the study's data choice at the fold SAEs' epochs: one SAE on every labelled completion of
    # the condition (test completions included), so leakage is not confused with training length
    def refit_rows(self, sae_cfg: SAEConfig, train_sae: Callable | None) -> list[dict]:
        key = self.key("refit_all", sae_cfg.model_dump(mode="json"))

        def compute():
            layer_data, X, _ = self.inputs()
            idx = self.lab.select(self.condition)
            row = {
                **self.base,
                "cv": "stratified",
                "sae_source": "refit_all",
                "leakage_free": False,
            }
            if len(idx) < 2:
                note = f"condition {self.condition}: {len(idx)} completion(s) to train an SAE on"
                return [{**row, "n": len(self.lab), "note": note}], {}
            x = training_vectors(layer_data, self.lab.rows[idx], sae_cfg.train_on)
            sae, info = train_quietly(
                train_sae, x, self.arch, sae_cfg, stable_seed(self.seed, "refit_all")
            )
            res = cross_validate(encode_rows(sae, X), self.lab.y, self.lab.scenario, "stratified")
            d_sae = self.cfg.sae.expansion_factor * X.shape[1]
            cmp = self.compare(res, "stratified", "refit_all")
            return [{**row, "d_sae": d_sae, "epochs": sae_cfg.epochs, **cmp}], {
                "sae": training_facts(info)
            }

        return self.cached_or("sae_refit", key, compute)

    def fold_rows(self, sae_cfg: SAEConfig, train_sae: Callable | None) -> list[dict]:
        key = self.key("per_fold", sae_cfg.model_dump(mode="json"))

        def compute():
            layer_data, X, _ = self.inputs()
            res, facts = leakage_free_cv(
                layer_data,
                self.lab,
                X,
                self.arch,
                self.condition,
                sae_cfg,
                stable_seed(self.seed, "per_fold"),
                train_sae,
            )
            row = {**self.base, "cv": "stratified", "sae_source": "per_fold", "leakage_free": True}
            d_sae = self.cfg.sae.expansion_factor * X.shape[1]
            cmp = self.compare(res, "stratified", "per_fold")
            return [{**row, "d_sae": d_sae, "epochs": sae_cfg.epochs, **cmp}], {"folds": facts}

        return self.cached_or("sae_lf", key, compute)


def _sae_cell(
    run: RunDir,
    cfg: RunConfig,
    lab: Labelled,
    layer: int,
    arch: str,
    condition: str,
    leakage_free: bool,
    n_randomizations: int,
    force: bool,
    train_sae: Callable | None = None,
    load_sae: Callable | None = None,
    cache_only: bool = False,
) -> list[dict]:
    """Every row of one grid cell. With ``cache_only``, raises :class:`_CacheMiss` instead of
    computing anything."""
    cell = _SAECell(run, cfg, lab, layer, arch, condition, n_randomizations, force, cache_only)
    rows = cell.grid_rows(load_sae)
    if not leakage_free:
        return rows
    epochs = int(cfg.probe.fold_epochs or cfg.sae.epochs)
    sae_cfg = cfg.sae.model_copy(update={"epochs": epochs})
    if epochs != cfg.sae.epochs:
        rows += cell.refit_rows(sae_cfg, train_sae)
    return rows + cell.fold_rows(sae_cfg, train_sae)


# ----- the stage ---------------------------------------------------------------------------------
def sae_probes(
    run: RunDir,
    cfg: RunConfig,
    progress: bool = True,
    force: bool = False,
    leakage_free: bool | None = None,
    n_randomizations: int = N_RANDOMIZATIONS,
    n_jobs: int | None = None,
    train_sae: Callable | None = None,
    load_sae: Callable | None = None,
) -> pd.DataFrame:
    """Probe every SAE of the grid against its layer's raw probe; write ``results/sae_probes.csv``.

    Rows of ``results/sae_probes.csv`` (returned; columns :data:`SAE_COLUMNS`), by ``sae_source``:

    * ``grid`` (``leakage_free`` False): the SAE trained in 04 (the study's way; it saw the
      probe's test completions); both CV modes.
    * ``per_fold`` (``leakage_free`` True): SAEs retrained inside each stratified fold on that
      fold's training completions (:func:`leakage_free_cv`), ``probe.fold_epochs`` epochs;
      ``cv`` is ``stratified`` only.

    When ``probe.fold_epochs`` differs from ``sae.epochs``, one more SAE per cell is trained on
    all labelled completions of the condition with the fold epochs (``refit_all``), the matched
    reference against which ``per_fold`` measures leakage alone; it appears only in
    ``results/sae_leakage.csv`` (:func:`leakage_comparison`, written whenever per-fold SAEs ran).

    ``leakage_free`` defaults to ``cfg.probe.leakage_free`` and ``n_jobs`` (parallel processes
    over grid cells) to ``cfg.probe.n_jobs``. ``p_holm``: Holm over the SAEs of each
    ``(cv, sae_source)`` family; ``significant``: ``p_holm < 0.05`` and ``delta > 0``. Cached per
    SAE in ``cache/probing/``; ``force`` recomputes. ``train_sae``/``load_sae`` default to the
    book's trainer and loader (arguments exist for tests).
    """
    leakage_free = cfg.probe.leakage_free if leakage_free is None else leakage_free
    n_jobs = cfg.probe.n_jobs if n_jobs is None else n_jobs
    lab = labelled_rows(run, cfg)
    grid = sorted(cfg.sae_grid(), key=lambda c: c[0])  # by layer, so each layer is read once
    args = [
        (
            run,
            cfg,
            lab,
            layer,
            arch,
            cond,
            leakage_free,
            n_randomizations,
            force,
            train_sae,
            load_sae,
        )
        for layer, arch, cond in grid
    ]
    parts: dict[int, list[dict]] = {}
    if not force:  # what the cache already holds needs no worker
        for i, a in enumerate(args):
            try:
                parts[i] = _sae_cell(*a, cache_only=True)
            except _CacheMiss:
                pass
    todo = [i for i in range(len(args)) if i not in parts]
    if n_jobs == 1 or len(todo) <= 1:
        for i in progress_bar(todo, len(todo), "SAE probes", progress):
            parts[i] = _sae_cell(*args[i])
    else:
        from joblib import Parallel, delayed

        gen = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_sae_cell)(*args[i]) for i in todo
        )
        for i, rows in zip(todo, progress_bar(gen, len(todo), "SAE probes", progress), strict=True):
            parts[i] = rows
    _LAYER_MEMO.clear()
    df = pd.DataFrame([r for i in range(len(args)) for r in parts[i]]).reindex(columns=SAE_COLUMNS)
    df["note"] = df["note"].fillna("")
    df["leakage_free"] = df["leakage_free"].astype(bool)
    for _, idx in df.groupby(["cv", "sae_source"]).groups.items():
        df.loc[idx, "p_holm"] = stats.holm(df.loc[idx, "p_value"].to_numpy(dtype=float))
    df["significant"] = (df["p_holm"] < 0.05) & (df["delta"] > 0)
    leak_path = run.result("sae_leakage.csv")
    if (df["sae_source"] == "per_fold").any():
        atomic_write_text(leak_path, leakage_comparison(df).to_csv(index=False))
    else:
        leak_path.unlink(missing_ok=True)
    probes = df[df["sae_source"] != "refit_all"].reset_index(drop=True)
    atomic_write_text(run.result("sae_probes.csv"), probes.to_csv(index=False))
    return probes


def read_sae_probes(run: RunDir) -> pd.DataFrame:
    """``results/sae_probes.csv``: grid SAEs (``leakage_free`` False) and per-fold SAEs (True)."""
    return read_results_csv(run, "sae_probes.csv", "05_layer_profile_probing")


def sae_wins(sae: pd.DataFrame) -> pd.DataFrame:
    """SAEs beating their layer's raw probe, counted the study's way and by significance.

    Per ``(cv, sae_source)``: ``beats_raw`` counts any positive delta (the study's count);
    ``significant_wins`` needs ``p_holm < 0.05`` and ``delta > 0``; ``significant_losses``
    ``p_holm < 0.05`` and ``delta < 0``.
    """
    rows = []
    for (cv, source), d in sae.dropna(subset=["delta"]).groupby(["cv", "sae_source"], sort=False):
        rows.append(
            {
                "cv": cv,
                "sae_source": source,
                "n_saes": len(d),
                "beats_raw": int((d.delta > 0).sum()),
                "significant_wins": int(((d.p_holm < 0.05) & (d.delta > 0)).sum()),
                "significant_losses": int(((d.p_holm < 0.05) & (d.delta < 0)).sum()),
                "mean_delta": float(d.delta.mean()),
                "best_bal_acc": float(d.bal_acc.max()),
            }
        )
    return pd.DataFrame(rows)
