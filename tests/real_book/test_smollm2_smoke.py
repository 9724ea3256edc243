"""Structural, host-proof checks of the SmolLM2-135M-Instruct smoke book (``make smoke-book``).

The run directory is ``$BOOK_RUN_DIR`` (default ``data/runs/smollm2-smoke``). Nothing here compares
a number with a stored value: counts, ids, shapes, files that load, and the captured activations
against an independent recomputation by ``output_hidden_states`` on this host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from lib.capture.labelled import read_index, read_layer
from lib.core.config import REPO_ROOT, load_config
from lib.core.fileio import read_jsonl
from lib.core.rundir import RunDir
from lib.core.scenarios import scenarios_for
from lib.models.loading import decoder_layers, load_model, row_ids

N_LAYERS = 30  # SmolLM2-135M's decoder layers (its config.json)


@pytest.fixture(scope="module")
def book():
    root = Path(os.environ.get("BOOK_RUN_DIR", REPO_ROOT / "data" / "runs" / "smollm2-smoke"))
    if not (root / "results" / "summary.csv").exists():
        pytest.fail(f"no finished smoke book at {root}: run `make smoke-book`")
    return load_config("smollm2-smoke", run_name=root.name), RunDir(root)


def test_every_planned_completion_once_and_judged(book):
    cfg, run = book
    rows = read_jsonl(run.completions)
    ids = [r["id"] for r in rows]
    scenarios = scenarios_for(cfg)
    assert len(ids) == len(set(ids)) == len(scenarios) * cfg.sampling.samples_per_scenario
    assert all(r["n_completion_tokens"] <= cfg.sampling.max_new_tokens for r in rows)
    labels = {r["id"]: r["label"] for r in read_jsonl(run.labels) if r["judge"] == "keyword"}
    assert set(labels) == set(ids)
    assert {"deceptive", "honest"} <= set(labels.values())  # a real model does both


def test_every_layer_is_captured_with_the_real_hook_names(book):
    _, run = book
    index = read_index(run)
    assert (index["n_layers"], index["d_model"], index["layers"]) == (
        N_LAYERS,
        576,
        list(range(N_LAYERS)),
    )
    assert index["hook_names"]["29"] == "model.layers.29"
    n = len(read_jsonl(run.completions))
    for layer in (0, 15, 29):
        data = read_layer(run, layer)
        assert data.mean.shape == data.last.shape == (n, 576)
        assert int(data.token_owner.max()) == n - 1


def test_captured_resid_post_equals_a_recomputation_by_output_hidden_states(book):
    """Five completions re-run alone, without the prompt cache, padding or hooks."""
    cfg, run = book
    model, tok = load_model(cfg)
    rows = {r["id"]: r for r in read_jsonl(run.completions)}
    index = read_index(run)
    layers = {L: read_layer(run, L) for L in (0, 4, 17, N_LAYERS - 1)}
    picked = [i for i in index["ids"] if rows[i]["n_completion_tokens"] > 1][:5]
    assert len(picked) == 5
    for cid in picked:
        ids, n_prompt = row_ids(tok, rows[cid])
        r = index["ids"].index(cid)
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer, data in layers.items():
            ref = hs[layer + 1][0, n_prompt:]
            if layer == N_LAYERS - 1:  # hidden_states[-1] is after the final norm; ours before
                with torch.no_grad():
                    mine = model.model.norm(data.tokens[data.token_owner == r])
                torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-4)
                continue
            tol = dict(rtol=0, atol=2e-5 * ref.abs().max().item())
            torch.testing.assert_close(data.mean[r], ref.mean(0), **tol)
            torch.testing.assert_close(data.last[r], ref[-1], **tol)
    assert len(decoder_layers(model)) == N_LAYERS


def test_saes_load_in_saelens_and_hook_into_the_real_model(book):
    from sae_lens import SAE

    cfg, run = book
    folders = sorted(p for p in run.saes.iterdir() if (p / "metrics.json").exists())
    grid = sorted(cfg.sae_id(layer, arch, cond) for layer, arch, cond in cfg.sae_grid())
    assert len(grid) == 2 * 2 * 3 + 1 * 3  # (topk, jumprelu) x 2 layers x 3 conditions + STE at L4
    assert [p.name for p in folders] == grid
    for folder in folders[:: max(1, len(folders) // 4)]:
        sae = SAE.load_from_disk(str(folder), device="cpu")
        meta = json.loads((folder / "cfg.json").read_text())["metadata"]
        assert meta["hook_name"] in {f"model.layers.{L}" for L in (4, 21)}
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (576, 2304)


def test_profile_covers_all_layers_under_both_cv_modes_with_the_text_baseline(book):
    _, run = book
    df = pd.read_csv(run.result("layer_profile.csv"))
    acc = df[(df.metric == "bal_acc") & (df.target == "deception")]
    for cv in ("stratified", "scenario"):
        layers = set(acc[(acc.cv == cv) & (acc.feature == "mean")].layer)
        assert layers == set(range(N_LAYERS)), cv
        assert len(acc[(acc.cv == cv) & (acc.feature == "text")]) >= 1


def test_summary_sets_the_run_beside_the_studys_smollm2_card(book):
    _, run = book
    summary = pd.read_csv(run.result("summary.csv"), dtype=str, keep_default_na=False)
    assert "published: SmolLM2-135M" in summary.columns
    assert "published: TinyLlama-1.1B" in summary.columns
    row = summary[summary.claim == "raw-activation peak layer"].iloc[0]
    assert row["published: SmolLM2-135M"].startswith("L4 (of 30; 13% depth)")


def _study_sae(folder: Path, d_in: int, layer: int) -> Path:
    """A folder in the study's published SmolLM2 format (d_sae = 4 d_in, threshold all zeros)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d_sae = 4 * d_in
    folder.mkdir(parents=True)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    tensors = {
        "W_enc": w,
        "b_enc": torch.zeros(d_sae),
        "W_dec": w.T.contiguous(),
        "b_dec": torch.zeros(d_in),
        "threshold": torch.zeros(d_sae),
    }
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = {
        "architecture": "jumprelu",
        "d_in": d_in,
        "d_sae": d_sae,
        "hook_name": f"model.layers.{layer}.hook_resid_post",
        "training_condition": "mixed",
        "dtype": "float32",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def test_the_studys_published_smollm2_saes_probe_on_this_run_and_refuse_another_width(
    book, tmp_path
):
    from lib.probing.sae_probes import probe_published_sae
    from lib.sae.model import SAEFormatError

    cfg, run = book
    out = probe_published_sae(run, cfg, _study_sae(tmp_path / "smollm2_jumprelu_L4_mixed", 576, 4))
    labels = [
        r
        for r in read_jsonl(run.labels)
        if r["judge"] == cfg.judge.primary and r["label"] in ("deceptive", "honest")
    ]
    assert (out["sae_id"], out["layer"], out["n"]) == ("smollm2_jumprelu_L4_mixed", 4, len(labels))
    assert 0.0 <= out["bal_acc"] <= 1.0 and 0.0 <= out["raw_bal_acc"] <= 1.0
    assert out["input_l0"] > 1  # pooled inputs: the threshold-0 SAE is a ReLU SAE, half active
    with pytest.raises(SAEFormatError, match=r"d_in=640 but the activations have width 576"):
        probe_published_sae(run, cfg, _study_sae(tmp_path / "gemma_sized", 640, 4))


def test_the_wording_controls_cover_every_layer_and_the_embeddings(book):
    """Notebook 11 on a real model: one row per layer and one for the input embeddings, every
    control measured on the completions it needs, a verdict from the allowed three."""
    _, run = book
    both = pd.read_csv(run.result("wording_controls.csv"))
    df = both[both["pooling"] == "mean"]
    assert list(df["layer"].astype(str)) == ["embed", *map(str, range(N_LAYERS))]
    after = both[both["pooling"] != "mean"]  # the cue tokens left out: every layer, no embeddings
    assert list(after["layer"].astype(str)) == list(map(str, range(N_LAYERS)))
    assert set(df["verdict"]) <= {"beyond the words", "the words", "inconclusive"}
    for col in ("transfer_direct_to_swapped", "transfer_swapped_to_direct", "answer_word"):
        assert df[col].between(0, 1).all() and (df[f"n_{col}"] > 0).all()
    assert (df["transfer_direct_to_swapped_low"] <= df["transfer_direct_to_swapped"]).all()
    assert (run.figures / "wording_controls.png").exists()


def test_the_last_prompt_token_probe_ties_within_every_prompt_on_every_layer(book):
    """The known answer of the last-prompt-token probe on a real model: every completion of a
    prompt shares the vector, so within a prompt (one fold's probe) every pair ties."""
    _, run = book
    table = pd.read_csv(run.result("prompt_probe.csv"))
    assert list(table["layer"]) == list(range(N_LAYERS))
    assert (table["within_scenario"] == 0.5).all()
    assert table["prior"].nunique() == 1 and table["prior"].between(0.5, 1).all()
    assert (table["held_out_low"] <= table["held_out"]).all()
    assert (run.figures / "prompt_probe.png").exists()


def test_every_sae_of_the_grid_goes_through_the_wording_controls(book):
    cfg, run = book
    table = pd.read_csv(run.result("sae_wording_controls.csv"))
    assert sorted(table["sae_id"]) == sorted(cfg.sae_id(*cell, 0) for cell in cfg.sae_grid())
    assert set(table["verdict"]) <= {"beyond the words", "the words", "inconclusive"}
    assert table["transfer_direct_to_swapped"].between(0, 1).all()
