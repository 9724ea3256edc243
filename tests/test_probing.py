"""Probes: planted signals are found, nothing is found in noise, numbers equal sklearn's recipe."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score

from lib import controls, dataset, leakage, logistic, probe, stats
from lib import layer_profile as lp
from lib import sae_probes as sp
from lib.config import load_config
from lib.rundir import RunDir, append_jsonl, write_json

STUDY_CV = StratifiedKFold(5, shuffle=True, random_state=42)


# ----- synthetic data ------------------------------------------------------------------------------
def planted(n=240, d=64, n_scen=6, strength=2.0, seed=0, confound=False):
    """Noise with a label direction (or, with ``confound``, scenario directions that track the label)."""
    rng = np.random.default_rng(seed)
    scen = np.arange(n) % n_scen
    if confound:
        # scenarios 0..n/2-1 are mostly deceptive, the rest mostly honest; no within-scenario signal
        p = np.where(scen < n_scen // 2, 0.9, 0.1)
        y = (rng.random(n) < p).astype(int)
        X = rng.normal(size=(n, d))
        X[np.arange(n), scen] += 6.0  # each scenario has its own direction
    else:
        y = (rng.random(n) < 0.4).astype(int)
        X = rng.normal(size=(n, d))
        X[:, 0] += strength * (2 * y - 1)
    return X.astype(np.float32), y, np.array([f"s{s}" for s in scen])


def write_synthetic_run(
    root,
    *,
    n_layers=3,
    d=16,
    n=120,
    n_scenarios=4,
    tokens_per=3,
    n_ambiguous=6,
    seed=0,
    signal=1.5,
    deceptive_rate=0.4,
    n_deceptive=None,
    overrides=None,
):
    """A run directory with completions, keyword labels and activations of ``n_layers`` layers.

    The label signal grows with the layer (``signal * (layer + 1) / n_layers`` along one
    direction); ambiguous completions are labelled too (the probes must drop them). Token vectors
    are random, and ``last``/``mean`` are the last/mean of them plus the signal.
    """
    rng = np.random.default_rng(seed)
    total = n + n_ambiguous
    ids = [f"c{i:04d}" for i in range(total)]
    scen = [f"scen{i % n_scenarios}" for i in range(total)]
    if n_deceptive is None:
        y = (rng.random(n) < deceptive_rate).astype(int)
    else:
        y = np.zeros(n, dtype=int)
        y[rng.choice(n, n_deceptive, replace=False)] = 1
    labels = ["deceptive" if v else "honest" for v in y] + ["ambiguous"] * n_ambiguous
    cfg = load_config(
        "organism",
        {
            "name": "synthetic",
            "sae.layers": [1],
            "sae.ste_layers": [],
            "sae.architectures": ["topk", "jumprelu"],
            "sae.epochs": 2,
            "sae.expansion_factor": 2,
            "sae.k": 4,
            "probe.n_bootstrap": 100,
            "probe.n_permutations": 20,
            "probe.n_jobs": 1,
            **(overrides or {}),
        },
    )
    run = RunDir(root / cfg.name)
    append_jsonl(
        run.completions,
        [{"id": i, "scenario": s, "completion": "..."} for i, s in zip(ids, scen, strict=True)],
    )
    append_jsonl(
        run.labels,
        [{"id": i, "judge": "keyword", "label": lab} for i, lab in zip(ids, labels, strict=True)],
    )
    owner = torch.arange(total).repeat_interleave(tokens_per)
    run.activations.mkdir(parents=True)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    label_sign = np.concatenate([2 * y - 1, np.zeros(n_ambiguous)])
    for layer in range(n_layers):
        tokens = torch.from_numpy(rng.normal(size=(total * tokens_per, d)).astype(np.float32))
        shift = torch.from_numpy(
            (signal * (layer + 1) / n_layers * label_sign[:, None] * direction).astype(np.float32)
        )
        tokens += shift.repeat_interleave(tokens_per, 0)
        per = tokens.view(total, tokens_per, d)
        save_file(
            {
                "last": per[:, -1].contiguous(),
                "mean": per.mean(1).contiguous(),
                "tokens": tokens,
                "token_owner": owner,
            },
            str(run.activation_file(layer)),
        )
    write_json(run.activation_index, {"ids": ids, "layers": list(range(n_layers)), "d_model": d})
    return cfg, run


# ----- metrics -------------------------------------------------------------------------------------
def test_metrics_equal_sklearn_and_resampled_metrics_equal_explicit_resamples():
    rng = np.random.default_rng(3)
    y = (rng.random(150) < 0.3).astype(int)
    s = np.round(rng.normal(size=150) + y, 1)  # rounding makes ties
    assert stats.balanced_accuracy(y, s) == pytest.approx(
        balanced_accuracy_score(y, (s > 0).astype(int)), abs=1e-12
    )
    assert stats.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    W = stats.stratified_multiplicities(y, 5, rng)
    assert (W[:, y == 1].sum(1) == (y == 1).sum()).all() and (
        W[:, y == 0].sum(1) == (y == 0).sum()
    ).all()
    ba, au = stats.balanced_accuracy(y, s, W), stats.auroc(y, s, W)
    rec = stats.recall_at_fpr(y, s, 0.05, W)
    for b in range(5):
        idx = np.repeat(np.arange(150), W[b])  # the resample written out
        assert ba[b] == pytest.approx(
            balanced_accuracy_score(y[idx], (s[idx] > 0).astype(int)), abs=1e-12
        )
        assert au[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)
        assert rec[b] == pytest.approx(stats.recall_at_fpr(y[idx], s[idx], 0.05), abs=1e-12)


def test_recall_at_1pct_fpr_known_answer_and_roc_curve():
    # 200 honest scores 0..199: 1% FPR allows 2 false positives, so the threshold sits just above
    # the third-highest honest score (197); deceptive scores above it: 198.5, 199.5, 250 -> 3 of 5.
    y = np.array([0] * 200 + [1] * 5)
    s = np.concatenate([np.arange(200.0), [198.5, 199.5, 250.0, 196.0, 10.0]])
    assert stats.recall_at_fpr(y, s, 0.01) == pytest.approx(0.6)
    # 50 honest: k = 0, so only deceptive scores above the top honest score (49) count
    y2 = np.array([0] * 50 + [1] * 4)
    s2 = np.concatenate([np.arange(50.0), [49.0, 49.5, 60.0, 3.0]])
    assert stats.recall_at_fpr(y2, s2, 0.01) == pytest.approx(0.5)
    # against sklearn's ROC curve on random data with ties
    rng = np.random.default_rng(0)
    y3 = (rng.random(400) < 0.5).astype(int)
    s3 = np.round(rng.normal(size=400) + 1.5 * y3, 1)
    for level in (0.01, 0.05, 0.2):
        fpr, tpr, _ = roc_curve(y3, s3)
        assert stats.recall_at_fpr(y3, s3, level) == pytest.approx(
            tpr[np.searchsorted(fpr, level, side="right") - 1]
        )


def test_holm_matches_statsmodels_and_ignores_nan():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(1)
    p = np.concatenate([rng.uniform(0, 0.02, 6), rng.uniform(0, 1, 14)])
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1], atol=1e-12)
    with_nan = np.array([0.01, np.nan, 0.04, 0.03])
    np.testing.assert_allclose(stats.holm(with_nan), [0.03, np.nan, 0.06, 0.06])  # by hand, m = 3


def test_paired_randomization_and_bootstrap():
    rng = np.random.default_rng(2)
    y = (rng.random(200) < 0.5).astype(int)
    good = np.where(rng.random(200) < 0.9, 2 * y - 1, 1 - 2 * y).astype(float)  # 90% right
    coin = rng.normal(size=200)
    assert stats.paired_randomization_pvalue(y, good, good, 2000, 0) == 1.0
    assert stats.paired_randomization_pvalue(y, good, coin, 2000, 0) < 0.001
    deltas = stats.paired_bootstrap_delta(y, good, coin, 500, 0)
    lo, hi = stats.percentile_ci(deltas)
    observed = stats.balanced_accuracy(y, good) - stats.balanced_accuracy(y, coin)
    assert 0 < lo < observed < hi


# ----- cross-validation ----------------------------------------------------------------------------
def test_stratified_equals_sklearn_study_recipe():
    X, y, scen = planted(n=230, d=40, strength=0.5, seed=5)
    res = probe.cross_validate(X, y, scen, "stratified")
    pipe = probe.study_probe()
    ba = cross_val_score(pipe, X, y, cv=STUDY_CV, scoring="balanced_accuracy").mean()
    au = cross_val_score(pipe, X, y, cv=STUDY_CV, scoring="roc_auc").mean()
    assert 0.6 < ba < 0.95  # a real but imperfect signal, so the comparison means something
    assert round(res.value["bal_acc"], 3) == round(ba, 3)
    assert round(res.value["auroc"], 3) == round(au, 3)
    oof = cross_val_predict(pipe, X, y, cv=STUDY_CV, method="decision_function")
    np.testing.assert_allclose(res.scores, oof, rtol=1e-6, atol=1e-6)
    assert res.pooled["bal_acc"] == pytest.approx(balanced_accuracy_score(y, (oof > 0).astype(int)))


def test_planted_signal_found_under_both_modes_and_shuffled_labels_not():
    X, y, scen = planted(n=240, d=64, strength=2.0, seed=0)
    rows, results = lp.probe_feature(X, y, scen, n_bootstrap=300, n_permutations=50, seed=0)
    df = pd.DataFrame(rows)
    real = df[(df.target == "deception") & (df.metric == "bal_acc")].set_index("cv")
    for mode in probe.CV_MODES:
        assert real.loc[mode, "value"] >= 0.9, mode
        assert real.loc[mode, "ci_low"] > 0.8
        assert real.loc[mode, "p_value"] == pytest.approx(1 / 51)  # beats every permutation
    shuffled = df[(df.target == "shuffled_labels") & (df.metric == "bal_acc")]
    assert len(shuffled) == 2
    assert ((shuffled.ci_low < 0.5) & (shuffled.ci_high > 0.5)).all()
    assert shuffled.value.between(0.45, 0.55).all()
    # pure noise: a CI that includes chance and an unremarkable p-value
    rng = np.random.default_rng(9)
    y_noise = rng.permutation(y)
    res = probe.cross_validate(X[:, 1:], y_noise, scen, "stratified")
    ci = stats.bootstrap_ci(y_noise, res.scores, 300, 0)["bal_acc"]
    assert ci[0] < 0.5 < ci[1]
    perm = controls.permutation_pvalue(X[:, 1:], y_noise, scen, "stratified", 50, seed=1)
    assert perm.p["bal_acc"] > 0.05
    assert perm.observed["bal_acc"] == pytest.approx(res.value["bal_acc"], abs=0.02)


def test_scenario_confound_is_caught_by_leave_one_scenario_out():
    X, y, scen = planted(n=300, d=30, n_scen=6, seed=4, confound=True)
    strat = probe.cross_validate(X, y, scen, "stratified")
    loso = probe.cross_validate(X, y, scen, "scenario")
    assert strat.value["bal_acc"] > 0.8  # scenario identity predicts the label
    assert loso.value["bal_acc"] < 0.65  # an unseen scenario's direction says nothing
    ci = stats.bootstrap_ci(y, loso.scores, 300, 0)["bal_acc"]
    assert ci[0] < 0.5 + 0.05
    assert loso.n_folds == 6
    sid = controls.scenario_identity_probe(X, scen, 200, 0)
    assert sid["value"] > 0.95 and sid["chance"] == pytest.approx(1 / 6)


def test_fast_solver_equals_tightly_converged_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    for n, d in ((150, 20), (120, 300)):  # d < n and d > n (the Gram-matrix basis)
        X, y, _ = planted(n=n, d=d, strength=0.7, seed=n)
        tr = np.arange(n) % 4 != 0
        sc = StandardScaler().fit(X[tr])
        ref = LogisticRegression(class_weight="balanced", max_iter=100_000, tol=1e-10).fit(
            sc.transform(X[tr]), y[tr]
        )
        Z, Zt = logistic.fold_basis(X[tr], X[~tr])
        beta = logistic.fit_logistic_many(
            Z, y[tr][:, None], logistic.balanced_weights(y[tr][:, None])
        )
        mine = Zt @ beta[:-1, 0] + beta[-1, 0]
        theirs = ref.decision_function(sc.transform(X[~tr]))
        np.testing.assert_allclose(mine, theirs, atol=2e-3 * np.abs(theirs).max())


def test_too_few_of_a_class_gives_a_note_not_a_crash():
    X, y, scen = planted(n=100, d=10, seed=1)
    y = np.zeros(100, dtype=int)
    y[[3, 50, 77]] = 1
    res = probe.cross_validate(X, y, scen, "stratified")
    assert "too few deceptive completions (3)" in res.note and np.isnan(res.value["bal_acc"])
    rows, _ = lp.probe_feature(X, y, scen, n_bootstrap=20, n_permutations=5)
    df = pd.DataFrame(rows)
    strat = df[(df.cv == "stratified") & (df.target == "deception")]
    assert len(strat) == 3 and strat.note.str.contains("too few deceptive").all()
    # held-out scenario leaves one class to train on
    y2 = (scen == "s0").astype(int)
    res2 = probe.cross_validate(X, y2, scen, "scenario")
    assert "holding out scenario 's0' leaves no deceptive" in res2.note
    with pytest.raises(probe.ProbeInputError, match="too few"):
        probe.cv_folds(y, scen, "stratified")


# ----- stages ------------------------------------------------------------------------------------
def test_layer_profile_stage_writes_table_and_resumes(tmp_path, monkeypatch):
    cfg, run = write_synthetic_run(tmp_path, n_layers=3, signal=0.7)
    df = lp.layer_profile(run, cfg, progress=False)
    on_disk = pd.read_csv(run.results / "layer_profile.csv")
    assert {
        "layer",
        "feature",
        "cv",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "p_value",
        "n",
        "note",
    } <= set(on_disk.columns)
    assert len(on_disk) == len(df) == 3 * 2 * 2 * 3  # layers x features x CV modes x metrics
    controls = lp.read_probe_controls(run)
    assert len(controls) == 3 * 2 * (2 * 2 + 1) and set(controls.target) == {
        "shuffled_labels",
        "scenario_identity",
    }
    assert set(df.target) == {"deception"}
    dec = df[
        (df.target == "deception")
        & (df.metric == "bal_acc")
        & (df.cv == "stratified")
        & (df.feature == "mean")
    ]
    assert (dec.n == 120).all()  # ambiguous completions dropped
    assert dec.set_index("layer").value.is_monotonic_increasing  # the planted profile rises
    assert 0.75 < dec.value.iloc[-1] < 1
    peak = lp.peak_layer(df, feature="mean")
    assert peak["layer"] == 2 and peak["ci_low"] < peak["value"] < peak["ci_high"]

    def boom(*a, **k):
        raise AssertionError("cached work was redone")

    monkeypatch.setattr(lp, "probe_feature", boom)
    again = lp.layer_profile(run, cfg, progress=False)
    pd.testing.assert_frame_equal(
        again.reset_index(drop=True), df.reset_index(drop=True), check_dtype=False
    )
    with pytest.raises(AssertionError, match="redone"):
        lp.layer_profile(run, cfg, progress=False, force=True)


def test_layer_profile_with_too_few_deceptive_has_notes(tmp_path):
    cfg, run = write_synthetic_run(tmp_path, n_layers=1, n_deceptive=3)
    df = lp.layer_profile(run, cfg, progress=False)
    dec = df[df.target == "deception"]
    assert dec.value.isna().all()
    assert dec.note.str.contains("too few deceptive completions").all()


class StandInSAE(torch.nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.W, self.b = torch.nn.Parameter(W), torch.nn.Parameter(b)

    def encode(self, x):
        return torch.relu(x @ self.W + self.b)


def standin_train(x, architecture, sae_cfg, seed, progress=False):
    """A 'trained' SAE: a random ReLU projection centred on its training data; records its input."""
    g = torch.Generator().manual_seed(int(seed))
    W = torch.randn(x.shape[1], x.shape[1] * sae_cfg.expansion_factor, generator=g)
    standin_train.seen.append(x.clone())
    return StandInSAE(W, -(x.mean(0) @ W)), {"seconds": 0.0, "epochs": sae_cfg.epochs}


standin_train.seen = []


def standin_load(path):
    t = load_file(str(path / "sae_weights.safetensors"))
    return StandInSAE(t["W"], t["b"])


def test_sae_probes_stage_with_stand_in(tmp_path):
    cfg, run = write_synthetic_run(
        tmp_path, n_layers=2, n=150, signal=0.5, overrides={"probe.fold_epochs": 1}
    )
    lp.layer_profile(run, cfg, progress=False)
    layer = dataset.read_layer(run, 1)
    for _, arch, cond in cfg.sae_grid():
        if (arch, cond) == ("jumprelu", "honest_only"):
            continue  # one SAE missing: a note, not a crash
        sae, _ = standin_train(layer.tokens, arch, cfg.sae, 0)
        path = run.sae_dir(cfg.sae_id(1, arch, cond))
        path.mkdir(parents=True)
        save_file({"W": sae.W.detach(), "b": sae.b.detach()}, str(path / "sae_weights.safetensors"))
    standin_train.seen.clear()
    df = sp.sae_probes(
        run,
        cfg,
        progress=False,
        leakage_free=True,
        n_randomizations=2000,
        train_sae=standin_train,
        load_sae=standin_load,
    )
    on_disk = pd.read_csv(run.results / "sae_probes.csv")
    need = {
        "sae_id",
        "layer",
        "arch",
        "condition",
        "cv",
        "bal_acc",
        "bal_acc_ci_low",
        "bal_acc_ci_high",
        "auroc",
        "raw_bal_acc",
        "delta",
        "delta_ci_low",
        "delta_ci_high",
        "p_value",
        "p_holm",
        "leakage_free",
    }
    assert need <= set(on_disk.columns)
    assert (
        len(df) == 6 * 3
    )  # grid x {stratified, scenario}, per_fold (refit_all only in sae_leakage.csv)
    assert set(df[df.leakage_free].sae_source) == {"per_fold"} and set(
        df[~df.leakage_free].sae_source
    ) == {"grid"}
    missing = df[df.sae_id == cfg.sae_id(1, "jumprelu", "honest_only")]
    assert missing[missing.sae_source == "grid"].note.str.contains("not found").all()
    ok = df.dropna(subset=["p_value"])
    assert (ok.p_holm >= ok.p_value - 1e-12).all()
    # raw baseline equals the layer profile's stratified number at that layer
    prof = lp.read_layer_profile(run)
    raw = prof[
        (prof.layer == 1)
        & (prof.feature == cfg.probe.sae_feature)
        & (prof.cv == "stratified")
        & (prof.target == "deception")
        & (prof.metric == "bal_acc")
    ].value.item()
    assert np.allclose(df[df.cv == "stratified"].raw_bal_acc, raw)
    good = df[(df.sae_source == "grid") & (df.cv == "stratified") & (df.note == "")]
    assert (good.delta == good.bal_acc - good.raw_bal_acc).all()
    assert (good.delta_ci_low <= good.delta_ci_high).all()
    wins = sp.sae_wins(df)
    g = wins[(wins.cv == "stratified") & (wins.sae_source == "grid")].iloc[0]
    assert g.beats_raw == int((good.delta > 0).sum()) and g.significant_wins <= g.beats_raw
    # leakage-free: 5 fold SAEs + 1 refit per available condition, none trained on a test completion
    lab = dataset.labelled_rows(run, cfg)
    folds = probe.cv_folds(lab.y, None, "stratified")
    owner_of = {
        tuple(v.tolist()): int(o) for v, o in zip(layer.tokens, layer.token_owner, strict=True)
    }
    row_to_pos = {int(r): i for i, r in enumerate(lab.rows)}
    assert len(standin_train.seen) == 6 * 6
    for cell in range(6):
        xs = standin_train.seen[cell * 6 : cell * 6 + 6]
        fold_sets = xs[1:]  # the refit_all SAE is trained first, then folds 0..4
        for k, x in enumerate(fold_sets):
            positions = {row_to_pos[owner_of[tuple(v.tolist())]] for v in x}
            assert not positions & set(np.flatnonzero(folds == k)), (cell, k)
    lc = leakage.read_sae_leakage(run)
    assert len(lc) == 6 and (lc.reference == "refit_all").all() and (lc.reference_epochs == 1).all()
    assert lc.bal_acc_grid.isna().sum() == 1  # the missing grid SAE
    np.testing.assert_allclose(lc.leakage, lc.bal_acc_reference - lc.bal_acc_per_fold)
    # cached: the second call trains nothing
    standin_train.seen.clear()
    sp.sae_probes(
        run,
        cfg,
        progress=False,
        leakage_free=True,
        n_randomizations=2000,
        train_sae=standin_train,
        load_sae=standin_load,
    )
    assert standin_train.seen == []


def test_sae_probes_with_the_real_sae_library(tmp_path):
    from lib import sae as sae_lib
    from lib.sae_trainer import train_sae

    cfg, run = write_synthetic_run(
        tmp_path,
        n_layers=2,
        n=100,
        signal=2.0,
        overrides={
            "sae.architectures": ["topk"],
            "sae.conditions": ["mixed"],
            "probe.fold_epochs": None,
        },
    )
    layer = dataset.read_layer(run, 1)
    sae, _ = train_sae(layer.tokens, "topk", cfg.sae, 0, progress=False)
    sae_lib.save_sae(sae, run.sae_dir(cfg.sae_id(1, "topk", "mixed")))
    df = sp.sae_probes(run, cfg, progress=False, leakage_free=True, n_randomizations=500)
    assert set(df.sae_source) == {"grid", "per_fold"}  # fold_epochs = sae.epochs: no refit needed
    assert df.note.eq("").all() and df.bal_acc.between(0.5, 1.0).all()
    assert json.loads(
        (run.cache / "probing" / f"sae_lf_{cfg.sae_id(1, 'topk', 'mixed')}.json").read_text()
    )["folds"]
