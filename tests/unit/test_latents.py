"""Which latents carry deception: known answers on synthetic codes, the organism, the dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from lib.core import stats
from lib.latents.auroc import (
    auroc_and_pvalues,
    benjamini_hochberg,
    bootstrap_auroc,
    latent_table,
    loso_auroc,
    top_latents,
)
from lib.latents.separating import k_sparse_table, select_examples


def synthetic_codes(n=240, n_latents=400, seed=0, planted=True):
    """Sparse non-negative codes (each latent fires on ~30% of completions) for 9 scenarios with
    ~1/3 deceptive; with ``planted``, latent 17 fires only on deceptive completions and latent
    42 only on honest ones."""
    g = np.random.default_rng(seed)
    y = (g.uniform(size=n) < 0.35).astype(int)
    groups = np.array([f"s{i % 9}" for i in range(n)])
    F = np.maximum(g.normal(size=(n, n_latents)) - 0.5, 0).astype(np.float32)
    if planted:
        F[:, 17] = np.where(y == 1, 1.0 + g.uniform(size=n), 0.0)
        F[:, 42] = np.where(y == 0, 0.5 + g.uniform(size=n), 0.0)
    return F, y, groups


def test_auroc_and_pvalues_equal_scipy_mann_whitney():
    F, y, _ = synthetic_codes(n=90, n_latents=50)
    F[:, 3] = 0.0  # a dead latent
    F = F.round(1)  # ties
    auc, p = auroc_and_pvalues(F, y)
    for j in [0, 1, 2, 3, 4, 17, 42]:
        assert auc[j] == pytest.approx(stats.auroc(y, F[:, j]), abs=1e-12)
        if j == 3:
            assert (auc[j], p[j]) == (0.5, 1.0)
            continue
        ref = mannwhitneyu(F[y == 1, j], F[y == 0, j], method="asymptotic", use_continuity=True)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-5)


def test_vectorised_bootstrap_equals_the_weighted_auroc_of_each_resample():
    F, y, _ = synthetic_codes(n=80, n_latents=50)
    F = F.round(1)
    lo, hi = bootstrap_auroc(F, y, n_boot=300, seed=4)
    W = stats.stratified_multiplicities(y, 300, np.random.default_rng(4))
    for j in [0, 1, 2, 17, 42]:
        ref = np.quantile(stats.auroc(y, F[:, j], W), [0.025, 0.975])
        assert (lo[j], hi[j]) == pytest.approx(tuple(ref), abs=1e-6)
    assert lo[17] > 0.95 and hi[42] < 0.05  # the planted latents' CIs sit at the extremes


def test_benjamini_hochberg_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(1).uniform(size=200) ** 3
    p[5] = np.nan
    q = benjamini_hochberg(p)
    ok = np.isfinite(p)
    np.testing.assert_allclose(q[ok], multipletests(p[ok], method="fdr_bh")[1], atol=1e-12)
    assert np.isnan(q[5])


def test_a_planted_latent_is_ranked_first_with_q_below_001():
    F, y, groups = synthetic_codes()
    table = latent_table(F, y, groups, n_boot=200, seed=0)
    top = top_latents(table, 3)
    assert top["deceptive"][0] == 17 and top["honest"][0] == 42
    row = table.set_index("latent").loc[17]
    assert row["auroc"] > 0.99 and row["q_value"] < 0.01 and row["auroc_ci_low"] > 0.95
    assert row["rate_deceptive"] == 1.0 and row["rate_honest"] == 0.0
    assert row["loso_auroc"] > 0.99  # its direction holds in every held-out scenario
    assert table.set_index("latent").loc[42, "auroc"] < 0.01
    # the noise latents: a handful of false discoveries at most
    assert (table["q_value"] < 0.05).sum() <= 4


def test_shuffled_labels_give_no_discovery():
    F, y, groups = synthetic_codes()
    y_shuffled = np.random.default_rng(7).permutation(y)
    table = latent_table(F, y_shuffled, groups, n_boot=0)
    assert table["q_value"].min() >= 0.05
    assert table["auroc_ci_low"].isna().all()  # no bootstrap asked, no CI invented


def test_held_out_scenario_auroc_exposes_a_scenario_confound():
    """A latent that fires by scenario, in scenarios where lying is common, separates the pooled
    classes but not completions within a scenario: its held-out-scenario AUROC is near 0.5."""
    g = np.random.default_rng(3)
    n = 360
    groups = np.repeat([f"s{i}" for i in range(9)], 40)
    liar_rate = np.repeat(np.linspace(0.1, 0.8, 9), 40)
    y = (g.uniform(size=n) < liar_rate).astype(int)
    F = np.zeros((n, 2), dtype=np.float32)
    F[:, 0] = np.repeat(np.linspace(0.0, 2.0, 9), 40) + 0.01 * g.uniform(size=n)  # scenario only
    F[:, 1] = y * 1.0 + 0.3 * g.uniform(size=n)  # the label, in every scenario
    auc, _ = auroc_and_pvalues(F, y)
    loso = loso_auroc(F, y, groups)
    assert auc[0] > 0.7 and abs(loso[0] - 0.5) < 0.1
    assert auc[1] > 0.95 and loso[1] > 0.95


def test_k_sparse_with_k1_finds_the_planted_latent():
    F, y, groups = synthetic_codes()
    X_raw = np.random.default_rng(2).normal(size=(len(y), 16))
    ks = k_sparse_table(F, X_raw, y, groups, [1, 2], n_boot=100, seed=0)
    k1 = ks[(ks["probe"] == "k_sparse") & (ks["k"] == 1)].set_index("cv")
    assert (k1["bal_acc"] > 0.97).all() and (k1["ci_low"] > 0.9).all()
    raw = ks[ks["probe"] == "raw"].set_index("cv")
    assert (raw["bal_acc"] < 0.7).all()  # noise vectors: the raw probe is near chance
    assert set(ks["probe"]) == {"k_sparse", "dense_sae", "raw"}
    assert ks.loc[ks["probe"] == "dense_sae", "k"].iloc[0] == F.shape[1]
    # without the planted latents, one latent carries nothing
    F0, y0, g0 = synthetic_codes(planted=False)
    ks0 = k_sparse_table(F0, X_raw, y0, g0, [1], n_boot=0, seed=0)
    assert (ks0.loc[ks0["probe"] == "k_sparse", "bal_acc"] < 0.65).all()


def test_k_sparse_reports_a_note_when_folds_are_impossible():
    F, y, _ = synthetic_codes(n=60, n_latents=50)
    ks = k_sparse_table(F, F, y, np.array(["one"] * 60), [1], n_boot=0)
    scen = ks[ks["cv"] == "scenario"]
    assert scen["bal_acc"].isna().all() and scen["note"].str.contains("only one scenario").all()


def test_examples_are_top_then_quantiles_without_repeats():
    fmax = np.array([0, 5, 1, 4, 0, 3, 2, 2.5, 6, 0.5, 0.1, 0.2], dtype=float)
    picks = select_examples(fmax, 2, 3, 1, np.random.default_rng(0))
    assert picks[:2] == [(8, "top"), (1, "top")]
    positions = [i for i, _ in picks]
    assert len(set(positions)) == len(positions) and all(fmax[i] > 0 for i in positions)
    kinds = [k for _, k in picks[2:]]
    assert kinds == ["quantile 1/3", "quantile 2/3", "quantile 3/3"]
    assert fmax[picks[2][0]] <= 1.0 and fmax[picks[4][0]] == 4.0  # bins by rank, weakest first
    # a bin whose completions are all top examples already gives none
    assert [k for _, k in select_examples(fmax, 3, 3, 1, np.random.default_rng(0))[3:]] == [
        "quantile 1/3",
        "quantile 2/3",
    ]


# ----- the organism -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def organism_report(sampled_run, organism):
    """A small TopK SAE trained on layer 5 of the fixture run, analysed by lib.latents.separating."""
    from lib.capture.labelled import labelled_rows, read_layer, training_vectors
    from lib.latents.separating import analyse_sae
    from lib.sae.model import save_sae
    from lib.sae.trainer import train_sae

    cfg, run = sampled_run
    cfg = cfg.model_copy(
        update={"features": cfg.features.model_copy(update={"n_bootstrap": 100, "n_top": 3})}
    )
    sae_id = cfg.sae_id(5, "topk", "mixed")
    lab = labelled_rows(run, cfg)
    x = training_vectors(read_layer(run, 5), lab.rows, "tokens")
    sae, hist = train_sae(x, "topk", cfg.sae, seed=0, progress=False, epochs=10)
    sae.meta.update(train_on="tokens", activation_scale=hist["scale"], hook_layer=5)
    save_sae(sae, run.sae_dir(sae_id), {"metrics.json": {"sae_id": sae_id}})
    _, tok = organism
    return cfg, run, analyse_sae(run, cfg, sae_id, tok), tok


def test_organism_examples_link_to_real_completions(organism_report):
    from lib.core.fileio import read_jsonl

    cfg, run, report, _ = organism_report
    completions = {r["id"]: r for r in read_jsonl(run.completions)}
    assert len(report.top_ids) == 6
    for lat in report.top_ids:
        exs = report.examples[lat]
        assert exs, f"latent {lat} has no examples"
        for ex in exs:
            row = completions[ex["id"]]  # a real completion id
            assert len(ex["tokens"]) == len(ex["acts"]) == len(row["completion_token_ids"])
            assert "".join(ex["tokens"]) == row["completion"]  # decoded tokens are the completion
            assert max(ex["acts"]) == pytest.approx(ex["max"], abs=1e-3)
        tops = [e["max"] for e in exs if e["kind"] == "top"]
        assert tops == sorted(tops, reverse=True)


def test_organism_report_resumes_and_files_match(organism_report):
    from lib.latents.separating import analyse_sae, features_dir, read_parts

    cfg, run, report, tok = organism_report
    stamp = (features_dir(run, report.sae_id) / "report.json").stat().st_mtime_ns
    again = analyse_sae(run, cfg, report.sae_id, tok)
    assert (features_dir(run, report.sae_id) / "report.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.table, report.table, check_exact=False, atol=1e-9)
    assert again.top == report.top and again.examples == report.examples
    latents = read_parts(run, "latents")
    assert list(latents.columns[:12]) == [
        "sae_id", "latent", "auroc", "auroc_ci_low", "auroc_ci_high", "q_value",
        "rate_deceptive", "rate_honest", "mean_deceptive", "mean_honest", "loso_auroc", "label",
    ]  # fmt: skip
    assert len(latents) == report.meta["d_sae"]
    ks = read_parts(run, "k_sparse")
    assert list(ks.columns[:6]) == ["sae_id", "k", "cv", "bal_acc", "ci_low", "ci_high"]
    assert report.table["auroc"].max() > 0.8  # the organism's label is in its layer-5 latents


# ----- the dashboard ------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_dashboard_is_self_contained(organism_report):
    from lib.latents.dashboard import render_dashboard

    cfg, _, report, _ = organism_report
    html = render_dashboard(report, cfg.label)
    assert 'id="latent-table"' in html and html.count('class="latent-row"') == 6
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "<script" not in html
    # one histogram per top latent, the density histogram and the word-control scatter
    assert html.count("<svg") == 6 + 2 and cfg.label in html
    assert html.count("<section") == 6 and 'id="all-latents"' in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_dashboard_renders_in_headless_chromium(organism_report, tmp_path):
    from lib.latents.dashboard import write_dashboard
    from lib.latents.separating import features_dir

    cfg, run, report, _ = organism_report
    page = write_dashboard(features_dir(run, report.sae_id) / "index.html", report, cfg.label)
    flags = CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    ).stdout
    # the DOM chromium built (not the file's text): the table and one row per top latent
    assert '<table id="latent-table">' in dom
    assert dom.count('<tr class="latent-row">') == len(report.top_ids)
    for lat in report.top_ids:
        assert f'id="latent-{lat}"' in dom
    shot = tmp_path / "dashboard.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=90,
    )
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((features_dir(run, report.sae_id) / "report.json").read_text())["top"]


# ----- auto-interpretation ------------------------------------------------------------------------
class FakeClient:
    """Answers like a labeller would: from the marked tokens of the prompt. Counts calls; fails
    on demand."""

    def __init__(self, fail_on: str | None = None):
        self.calls, self.prompts, self.fail_on = 0, [], fail_on

    def generate_json(self, prompt, schema):
        self.calls += 1
        self.prompts.append(prompt)
        if self.fail_on and self.fail_on in prompt:
            raise TimeoutError("the service kept timing out")
        import re

        marked = re.findall(r"\[\[([^|\]]+)\|", prompt)
        words = " ".join(m.strip() for m in marked[:3]) or "nothing"
        return schema(label=f"fires on {words}", explanation="the marked tokens")


def test_autointerp_labels_once_per_latent_and_caches(organism_report, tmp_path):
    from lib.latents.autointerp import AutoInterpCache, choose_latents, label_latents

    cfg, run, report, _ = organism_report
    latents = choose_latents(report, 0, seed=1)
    assert latents == report.top_ids
    client = FakeClient()
    cache = AutoInterpCache(tmp_path / "autointerp.jsonl")
    labels, failures = label_latents(client, report, latents, cache, "fake-model")
    assert client.calls == len(latents) == len(labels) and not failures
    prompt = client.prompts[0]
    assert "deceptive" not in prompt and "honest" not in prompt  # the judge's labels stay hidden
    assert "[[" in prompt and "|9]]" in prompt  # the strongest token is marked at level 9
    # a rerun (fresh cache object on the same file) makes no call
    again = FakeClient()
    labels2, _ = label_latents(
        again, report, latents, AutoInterpCache(tmp_path / "autointerp.jsonl"), "fake-model"
    )
    assert again.calls == 0 and labels2 == labels
    # another model is another key: asked again
    other = FakeClient()
    label_latents(other, report, latents[:1], cache, "another-model")
    assert other.calls == 1


def test_autointerp_failures_are_reported_and_not_cached(organism_report, tmp_path):
    from lib.latents.autointerp import AutoInterpCache, label_latents

    _, _, report, _ = organism_report
    lat = report.top_ids[0]
    cache = AutoInterpCache(tmp_path / "a.jsonl")
    client = FakeClient(fail_on="Strongest activations")  # in every prompt: every call fails
    labels, failures = label_latents(client, report, [lat], cache, "m")
    assert labels == {} and "timing out" in failures[lat]
    assert cache.get(cache.key("m", client.prompts[0])) is None
    assert not (tmp_path / "a.jsonl").exists()
    ok = FakeClient()
    labels, failures = label_latents(ok, report, [lat], cache, "m")  # asked again, then cached
    assert ok.calls == 1 and lat in labels and not failures


def test_deception_label_rank_test_known_answers():
    from lib.latents.autointerp import deception_label_test, mentions_deception

    assert mentions_deception("denial of wrongdoing") and mentions_deception("Lying about X")
    assert mentions_deception("concealment of facts") and not mentions_deception("the word 'ask'")
    assert not mentions_deception("believes")  # no substring matches ("lie" in "believes")
    n = 200
    auroc = np.linspace(0.2, 0.8, n)
    table = pd.DataFrame({"latent": np.arange(n), "auroc": auroc, "rate_deceptive": 0.5})
    # deception-labelled latents are the 10 most deceptive-high: the test sees it
    labels = {i: "deceptive denial" for i in range(190, 200)} | {i: "punctuation" for i in range(5)}
    res = deception_label_test(table, labels).set_index("reference")
    assert res.loc["all_other_latents", "p_greater"] == 1.0
    assert res.loc["all_other_latents", "p_value"] < 1e-6
    assert res.loc["other_labelled_latents", "n_reference"] == 5
    # labelled at random: nothing to find
    rand = np.random.default_rng(0).choice(n, 20, replace=False)
    res = deception_label_test(table, {int(i): "lying" for i in rand}).set_index("reference")
    assert res.loc["all_other_latents", "p_value"] > 0.05
    assert 0.3 < res.loc["all_other_latents", "p_greater"] < 0.7
    # no deception label at all: NaN, not an error
    res = deception_label_test(table, {1: "commas"})
    assert res["n_deception"].eq(0).all() and res["p_value"].isna().all()


def test_label_report_puts_labels_in_the_files(organism_report):
    import copy

    from lib.latents.autointerp import label_report
    from lib.latents.separating import read_parts

    cfg, run, report, tok = organism_report
    report = copy.deepcopy(report)
    cfg = cfg.model_copy(
        update={"features": cfg.features.model_copy(update={"autointerp_random": 2})}
    )
    client = FakeClient()
    failures = label_report(run, cfg, report, client, tok)
    assert not failures and client.calls == len(report.top_ids) + 2
    assert len(report.labels) == len(report.top_ids) + 2
    extra = set(report.labels) - set(report.top_ids)
    assert len(extra) == 2 and all(report.examples[i] for i in extra)  # examples were added
    csv = read_parts(run, "latents", [report.sae_id]).set_index("latent")
    assert csv["label"].notna().sum() == len(report.labels)
    assert csv.loc[report.top_ids[0], "label"].startswith("fires on")


def test_make_client_is_the_runs_gemini_client(monkeypatch, sampled_run):
    from lib.judging.gemini_client import GeminiClient, GeminiError
    from lib.latents.autointerp import make_client

    cfg, run = sampled_run
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(GeminiError, match="GEMINI_API_KEY"):
        make_client(cfg, run)  # no key: a clear error before any request
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-real")
    client = make_client(cfg, run)
    assert isinstance(client, GeminiClient) and client.model == cfg.features.autointerp_model
    assert client.max_retries == cfg.judge.max_retries and "test-key" not in repr(client)


def test_every_firing_latent_has_examples_and_labelled_ones_get_the_full_set(organism_report):
    """The dashboard reaches every latent that fires: those outside the top get FEW_EXAMPLES;
    a latent chosen for auto-interpretation is upgraded to the configured numbers."""
    from lib.latents.separating import FEW_EXAMPLES, extend_examples

    cfg, run, report, tok = organism_report
    firing = report.firing_ids()
    assert set(firing) <= set(report.examples) and set(report.top_ids).isdisjoint(report.few)
    other = next(i for i in firing if i in report.few and len(report.examples[i]) >= 3)
    assert len(report.examples[other]) <= sum(FEW_EXAMPLES[:1]) + FEW_EXAMPLES[1] * FEW_EXAMPLES[2]
    extend_examples(run, cfg, report, [other], tok)
    assert other not in report.few
    assert len(report.examples[other]) > sum(FEW_EXAMPLES[:1]) + FEW_EXAMPLES[1] * FEW_EXAMPLES[2]
