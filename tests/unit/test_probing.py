"""Probes: planted signals are found, nothing is found in noise, numbers equal sklearn's recipe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score

from lib.capture import labelled as dataset
from lib.core import stats
from lib.core.config import load_config
from lib.core.fileio import append_jsonl, write_json
from lib.core.rundir import RunDir
from lib.probing import controls, probe
from lib.probing import layer_profile as lp
from lib.probing import layer_verdicts as lt
from lib.probing import sae_probes as sp
from lib.probing import sae_verdicts as sv
from lib.probing import solver as logistic

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
            "features.saes": "all",
            "sae.seeds": 1,
            "sae.architectures": ["topk", "jumprelu"],
            "sae.epochs": 2,
            "sae.steps": None,
            "sae.expansion_factor": 2,
            "sae.k": 4,
            "probe.n_bootstrap": 100,
            "probe.n_permutations": 20,
            "probe.n_jobs": 1,
            **(overrides or {}),
        },
    )
    run = RunDir(root / cfg.name)
    words = [f"w{j}" for j in range(8)]  # label-free text for the text baseline
    texts = [" ".join(rng.choice(words, 3)) for _ in ids]
    append_jsonl(
        run.completions,
        [
            {"id": i, "scenario": s, "completion": t}
            for i, s, t in zip(ids, scen, texts, strict=True)
        ],
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
    assert len(strat) == 2 and strat.note.str.contains("too few deceptive").all()
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
    assert set(lp.PROFILE_COLUMNS) == set(on_disk.columns)
    # layers x features x CV modes x metrics, plus two wording baselines' CV modes x metrics
    # (TF-IDF and first tokens; a synthetic run has no input embeddings, so no `embed`)
    assert len(on_disk) == len(df) == 3 * 2 * 2 * 4 + 2 * 2 * 4
    for baseline in ("text", "first_tokens"):
        rows = df[df.feature == baseline]
        assert rows.layer.isna().all() and len(rows) == 8
    assert "embed" not in set(df.feature)
    controls = lp.read_probe_controls(run)
    assert len(controls) == 3 * 2 * (2 * 2 + 1) + 2 * 2 * 2
    assert set(controls.target) == {"shuffled_labels", "scenario_identity"}
    assert set(df.target) == {"deception"}
    dec = lp.profile_values(df, "stratified", "mean")
    assert (dec.n == 120).all()  # ambiguous completions dropped
    assert dec.set_index("layer").value.is_monotonic_increasing  # the planted profile rises
    assert 0.75 < dec.value.iloc[-1] < 1
    loso = lp.profile_values(df, "scenario", "mean")
    assert (loso.ci_method == "cluster").all() and loso.within_scenario.notna().all()
    recall = lp.profile_values(df, "stratified", "mean", "recall_at_1fpr")
    assert recall.realised_fpr.between(0, 0.2).all() and (recall.n_negatives > 60).all()
    # the text is label-free here: the text probe sits at chance, every strong layer beats it
    assert lp.profile_values(df, "stratified", "text").value.iloc[0] < 0.65
    assert lp.profile_values(df, "stratified", "first_tokens").value.iloc[0] < 0.65
    tests = lt.layer_tests(run, cfg)
    pk = lt.peak_summary(tests, "mean", "stratified")
    assert pk["layer"] == 2 and 2 in pk["not_below"] and 0 < pk["argmax_share"] <= 1
    strat = tests[(tests.feature == "mean") & (tests.cv == "stratified")].set_index("layer")
    assert strat.beats_text[2] and strat.p_holm_vs_text[2] < 0.05

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
    """A ReLU projection with a tied decoder: enough of an SAE for the probing stage."""

    def __init__(self, W, b):
        super().__init__()
        self.W, self.b = torch.nn.Parameter(W), torch.nn.Parameter(b)
        self.d_in, self.d_sae = W.shape
        self.meta = {"train_on": "tokens"}

    def encode(self, x):
        return torch.relu(x @ self.W + self.b)

    def decode(self, f):
        return f @ self.W.T / self.d_sae


class StandInTrainer:
    """``train_sae`` for the probing stage: a 'trained' SAE is a random ReLU projection centred on
    its training data; every call's training vectors are kept in ``seen``."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, x, architecture, sae_cfg, seed, progress=False):
        g = torch.Generator().manual_seed(int(seed))
        W = torch.randn(x.shape[1], x.shape[1] * sae_cfg.expansion_factor, generator=g)
        self.seen.append(x.clone())
        return StandInSAE(W, -(x.mean(0) @ W)), {"seconds": 0.0, "epochs": sae_cfg.epochs}


def standin_load(path):
    t = load_file(str(path / "sae_weights.safetensors"))
    return StandInSAE(t["W"], t["b"])


@pytest.fixture(scope="module")
def sae_stage(tmp_path_factory):
    """A synthetic run with 6 grid cells x 2 seeds of stand-in SAEs at layer 1 (one SAE missing),
    through the SAE-probe stage once, with leakage SAEs for the first seed of every cell."""
    cfg, run = write_synthetic_run(
        tmp_path_factory.mktemp("sae_stage"),
        n_layers=2,
        n=150,
        signal=0.5,
        overrides={
            "probe.fold_epochs": 1,
            "sae.seeds": 2,
            "probe.leakage_seeds": 1,
            "probe.leakage_conditions": None,
        },
    )
    lp.layer_profile(run, cfg, progress=False)
    layer = dataset.read_layer(run, 1)
    missing_id = cfg.sae_id(1, "jumprelu", "honest_only", 1)
    maker = StandInTrainer()
    for _, arch, cond in cfg.sae_grid():
        for i in range(2):
            sae_id = cfg.sae_id(1, arch, cond, i)
            if sae_id == missing_id:
                continue  # one SAE missing: a note, not a crash
            sae, _ = maker(layer.tokens, arch, cfg.sae, 10 * i)
            path = run.sae_dir(sae_id)
            path.mkdir(parents=True)
            save_file(
                {"W": sae.W.detach(), "b": sae.b.detach()}, str(path / "sae_weights.safetensors")
            )
    trainer = StandInTrainer()
    df = sp.sae_probes(run, cfg, progress=False, train_sae=trainer, load_sae=standin_load)
    return {"cfg": cfg, "run": run, "df": df, "trainer": trainer, "missing_id": missing_id}


def test_sae_probes_have_a_row_per_cell_seed_and_cv_and_a_note_for_a_missing_sae(sae_stage):
    cfg, run, df = sae_stage["cfg"], sae_stage["run"], sae_stage["df"]
    assert set(sp.SAE_COLUMNS) == set(pd.read_csv(run.results / "sae_probes.csv").columns)
    grid = df[df.sae_source == "grid"]
    assert len(grid) == 6 * 2 * 2  # cells x seeds x CV modes
    assert set(grid.sae_id) >= {cfg.sae_id(1, "topk", "mixed"), cfg.sae_id(1, "topk", "mixed", 1)}
    assert grid[grid.sae_id == sae_stage["missing_id"]].note.str.contains("not found").all()
    ok = grid[grid.note == ""]
    assert ok.input_l0.gt(1).all() and ok.inputs.eq("tokens").all()
    assert (ok[ok.cv == "scenario"].ci_method == "cluster").all()
    assert np.allclose(ok.delta, ok.bal_acc - ok.raw_bal_acc)


def test_the_raw_reference_is_the_layer_profiles_mean_pooled_probe(sae_stage):
    run, df = sae_stage["run"], sae_stage["df"]
    ok = df[(df.sae_source == "grid") & (df.note == "")]
    raw = lp.profile_values(lp.read_layer_profile(run), "stratified", "mean")
    assert np.allclose(ok[ok.cv == "stratified"].raw_bal_acc, raw.set_index("layer").value[1])


def test_verdicts_are_one_per_cell_cv_and_source_over_seeds_with_holm_in_the_family(sae_stage):
    cfg, run = sae_stage["cfg"], sae_stage["run"]
    verdicts = sv.read_sae_verdicts(run)
    g = verdicts[verdicts.sae_source == "grid"]
    assert len(g) == 6 * 2
    assert (g.n_seeds[g.cell_id != cfg.sae_id(1, "jumprelu", "honest_only")] == 2).all()
    tested = g.dropna(subset=["p_value"])
    assert (tested.p_holm >= tested.p_value - 1e-12).all()
    assert set(g.family) == {"study"}
    assert set(g.verdict) <= {"win", "loss", "inconclusive", "untested"}
    w = sv.sae_wins(verdicts)
    w = w[(w.cv == "stratified") & (w.sae_source == "grid")].iloc[0]
    assert w.wins + w.losses <= w.n_cells


def test_one_fit_comparisons_are_descriptive_and_never_wins(sae_stage):
    """The leakage check's SAEs have one seed per cell: their verdicts are descriptive."""
    verdicts = sv.read_sae_verdicts(sae_stage["run"])
    one = verdicts[verdicts.sae_source.isin(["refit_all", "per_fold"])].dropna(subset=["p_value"])
    assert len(one) and (one.verdict == sv.DESCRIPTIVE).all()
    assert (one.verdict_class == sv.DESCRIPTIVE).all()
    leak = sv.read_sae_leakage(sae_stage["run"])
    assert (leak.verdict == sv.DESCRIPTIVE).all()


def test_no_fold_sae_saw_a_completion_of_its_test_fold(sae_stage):
    """Per cell a refit_all SAE, 5 stratified and 4 scenario fold SAEs (seed 0 only)."""
    cfg, run, seen = sae_stage["cfg"], sae_stage["run"], sae_stage["trainer"].seen
    layer = dataset.read_layer(run, 1)
    lab = dataset.labelled_rows(run, cfg)
    owner_of = {
        tuple(v.tolist()): int(o) for v, o in zip(layer.tokens, layer.token_owner, strict=True)
    }
    row_to_pos = {int(r): i for i, r in enumerate(lab.rows)}
    assert len(seen) == 6 * (1 + 5 + 4)
    for cell in range(6):
        xs = seen[cell * 10 : cell * 10 + 10]
        for mode, fold_sets in (("stratified", xs[1:6]), ("scenario", xs[6:])):
            folds = probe.cv_folds(lab.y, lab.scenario, mode)
            for k, x in enumerate(fold_sets):
                positions = {row_to_pos[owner_of[tuple(v.tolist())]] for v in x}
                assert not positions & set(np.flatnonzero(folds == k)), (cell, mode, k)


def test_leakage_has_a_row_per_cell_and_cv_with_its_interval(sae_stage):
    leak = sv.read_sae_leakage(sae_stage["run"])
    assert len(leak) == 6 * 2 and (leak.budget == "1 epochs").all() and leak.leakage.notna().all()
    assert ((leak.leakage_ci_low <= leak.leakage) & (leak.leakage <= leak.leakage_ci_high)).all()


def test_a_second_call_reads_its_cache_and_trains_nothing(sae_stage):
    cfg, run = sae_stage["cfg"], sae_stage["run"]
    trainer = StandInTrainer()
    sp.sae_probes(run, cfg, progress=False, train_sae=trainer, load_sae=standin_load)
    assert trainer.seen == []


def test_leakage_conditions_limit_the_leakage_saes_to_their_cells(sae_stage, tmp_path):
    """``probe.leakage_conditions: [mixed]``: 2 of the 6 cells get leakage SAEs (on a copy)."""
    import shutil

    cfg = sae_stage["cfg"]
    run = RunDir(shutil.copytree(sae_stage["run"].root, tmp_path / sae_stage["run"].root.name))
    only = cfg.model_copy(
        update={"probe": cfg.probe.model_copy(update={"leakage_conditions": ["mixed"]})}
    )
    trainer = StandInTrainer()
    sp.sae_probes(run, only, progress=False, train_sae=trainer, load_sae=standin_load, force=True)
    assert len(trainer.seen) == 2 * (1 + 5 + 4)
    leak = sv.read_sae_leakage(run)
    assert len(leak) == 2 * 2 and set(leak.condition) == {"mixed"}


def test_sae_probes_with_the_real_sae_library(tmp_path):
    from lib.sae import model as sae_lib
    from lib.sae.trainer import train_sae

    cfg, run = write_synthetic_run(
        tmp_path,
        n_layers=2,
        n=100,
        signal=2.0,
        overrides={
            "sae.architectures": ["topk"],
            "sae.conditions": ["mixed"],
            "features.saes": "all",
            "probe.leakage_free": False,
        },
    )
    layer = dataset.read_layer(run, 1)
    sae, hist = train_sae(layer.tokens, "topk", cfg.sae, 0, progress=False)
    sae.meta.update(train_on="tokens", training_mean_norm=hist["training_mean_norm"])
    sae_lib.save_sae(sae, run.sae_dir(cfg.sae_id(1, "topk", "mixed")))
    df = sp.sae_probes(run, cfg, progress=False)
    assert set(df.sae_source) == {"grid"} and df.note.eq("").all()
    assert df.bal_acc.between(0.5, 1.0).all() and df.input_norm_ratio.between(0.8, 1.25).all()
    assert (df.input_l0 == cfg.sae.k).all()  # TopK fires k latents on every token it encodes
