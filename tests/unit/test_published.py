"""The study's published numbers (data/published.yaml) and SAEs in the study's published format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lib.sae.model import SAEFormatError
from lib.study.claims import (
    PublishedDataError,
    load_published_sae,
    normalise_hook,
    published_for,
    published_models,
)

# ----- published numbers --------------------------------------------------------------------------
# (peak layer, depth %, balanced accuracy, AUROC, approximate) as RESEARCH.md gives them
EXPECTED = {
    "nanochat-d32": (12, 37, 0.869, 0.923, False),
    "qwen3-1-7b": (17, 63, 0.809, 0.893, False),
    "phi-4-mini-reasoning": (20, 64, 0.808, 0.860, False),
    "phi-2": (21, 75, 0.75, None, True),
    "tinyllama": (21, 95, 0.724, 0.784, False),
    "llama-3-2-1b": (9, 56, 0.725, None, False),
    "nanochat-d20": (14, 70, 0.67, None, True),
    "smollm2-135m": (4, 13, 0.69, 0.725, True),  # its own card (the collection card: "80%")
    "pythia-160m": (0, 0, 0.660, 0.696, False),
}


@pytest.mark.parametrize("tag", sorted(EXPECTED))
def test_published_raw_probe_numbers(tag):
    p = published_for(tag)
    peak, depth, bal_acc, auroc, approx = EXPECTED[tag]
    assert (p["peak_layer"], p["depth_pct"], p["bal_acc"], p["auroc"], p["approximate"]) == (
        peak,
        depth,
        bal_acc,
        auroc,
        approx,
    )


def test_tinyllama_and_llama_claims():
    t = published_for("tinyllama")
    assert t["other_bal_acc"] == [0.732]
    c = t["claims"]
    assert c["best_sae"] == {
        "bal_acc": 0.778,
        "architecture": "jumprelu",
        "layer": 15,
        "condition": "honest_only",
    }
    assert c["saes_beating_raw"] == {"count": 14, "of": 30}
    ste = c["ste_vs_topk"]
    assert (ste["ste_wins"], ste["of"], ste["ste_mean_bal_acc"], ste["topk_mean_bal_acc"]) == (
        8,
        9,
        0.692,
        0.641,
    )
    assert ste["gain_pp"] == {"layer": 15, "condition": "honest_only", "value": 10.1}
    assert c["profile"] == {
        "shape": "monotonic_rise",
        "from_layer": 3,
        "from_bal_acc": 0.55,
        "from_approximate": True,
    }
    llama = published_for("llama-3-2-1b")["claims"]
    assert llama["sae_layers"] == [2, 4, 6] and llama["best_sae"]["bal_acc"] == 0.651
    assert llama["saes_beating_raw"] == {"count": 4, "of": 18}


def test_unpublished_models_give_none():
    assert published_for("organism") is None and published_for("tinyllama-random") is None
    assert set(published_models()) == set(EXPECTED)


def _write(tmp_path, text):
    p = tmp_path / "published.yaml"
    p.write_text(text)
    return p


def test_malformed_file_names_the_key(tmp_path):
    bad = _write(
        tmp_path,
        "version: 1\nmodels:\n  m:\n    label: M\n    n_layers: 8\n    peak_layer: 3\n"
        "    depth_pct: 40\n    bal_acc: 72.4\n",
    )
    with pytest.raises(PublishedDataError, match=r"models\.m\.bal_acc.*less than or equal to 1"):
        published_for("m", bad)
    outside = _write(
        tmp_path,
        "version: 1\nmodels:\n  m: {label: M, n_layers: 8, peak_layer: 8, depth_pct: 0, bal_acc: 0.7}\n",
    )
    with pytest.raises(PublishedDataError, match="peak_layer=8 outside a model of 8 layers"):
        published_for("m", outside)
    unknown = _write(
        tmp_path,
        "version: 1\nmodels:\n  m: {label: M, n_layers: 8, peak_layer: 1, depth_pct: 0, bal_acc: 0.7, "
        "peak: 3}\n",
    )
    with pytest.raises(PublishedDataError, match=r"models\.m\.peak: Extra inputs"):
        published_for("m", unknown)
    with pytest.raises(PublishedDataError, match="not valid YAML"):
        published_for("m", _write(tmp_path, "version: [1\n"))
    with pytest.raises(PublishedDataError, match="not found"):
        published_for("m", tmp_path / "nope.yaml")


# ----- published SAEs -----------------------------------------------------------------------------
D_IN, D_SAE = 4, 6


def _weights(threshold):
    g = torch.Generator().manual_seed(1)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
        "threshold": threshold,
    }


def write_study_sae(folder, cfg: dict, tensors: dict):
    """A folder in the study's published format: cfg.json + sae_weights.safetensors."""
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    return folder


def _cfg(**kw):
    base = {
        "architecture": "jumprelu",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "training_condition": "honest_only",
        "hook_name": "model.layers.15.hook_resid_post",
        "dtype": "float32",
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def _by_hand(w, x, arch, k=None):
    """Encode and decode in numpy, term by term (SAELens with apply_b_dec_to_input)."""
    W_enc, b_enc, W_dec, b_dec, thr = (w[n].numpy().astype(np.float64) for n in w)
    x = x.numpy().astype(np.float64)
    pre = (x - b_dec) @ W_enc + b_enc
    if arch == "topk":
        f = np.zeros_like(pre)
        for r in range(len(pre)):
            top = np.argsort(-pre[r])[:k]
            f[r, top] = np.maximum(pre[r, top], 0)
    else:
        f = np.where(pre > thr, np.maximum(pre, 0), 0.0)
    return f, f @ W_dec + b_dec


X = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(2))


def test_threshold_zero_jumprelu_is_our_jumprelu_and_matches_hand(tmp_path):
    w = _weights(torch.zeros(D_SAE))
    sae = load_published_sae(write_study_sae(tmp_path / "a", _cfg(), w), d_in=D_IN)
    assert sae.architecture == "jumprelu" and sae.k is None
    assert sae.meta["hook_name"] == "model.layers.15" and sae.meta["hook_layer"] == 15
    assert sae.meta["published_hook_name"] == "model.layers.15.hook_resid_post"
    assert sae.meta["training_condition"] == "honest_only"
    f_hand, x_hat_hand = _by_hand(w, X, "jumprelu")
    f = sae.encode(X)
    assert np.allclose(f.numpy(), f_hand, atol=1e-5) and (f_hand > 0).any() and (f_hand == 0).any()
    assert np.allclose(sae.decode(f).numpy(), x_hat_hand, atol=1e-5)


def test_learned_threshold_is_ste_and_gates(tmp_path):
    thr = torch.full((D_SAE,), 0.3)
    w = _weights(thr)
    cfg = _cfg(hook_name="model.layers.9", training_condition="mixed")
    sae = load_published_sae(write_study_sae(tmp_path / "b", cfg, w), d_in=D_IN)
    assert sae.architecture == "jumprelu_ste" and torch.equal(sae.threshold, thr)
    assert sae.meta["hook_name"] == "model.layers.9" and sae.meta["hook_layer"] == 9
    f_hand, x_hat_hand = _by_hand(w, X, "jumprelu")
    pre = sae.pre_activations(X)
    assert ((pre > 0) & (pre <= 0.3)).any()  # some latents are gated off by the threshold
    assert np.allclose(sae.encode(X).numpy(), f_hand, atol=1e-5)
    assert np.allclose(sae(X).numpy(), x_hat_hand, atol=1e-5)


def test_topk_with_zero_threshold_and_hook_layer(tmp_path):
    w = _weights(torch.zeros(D_SAE))
    cfg = _cfg(architecture="topk", k=2, hook_name=None, hook_layer=3)
    sae = load_published_sae(write_study_sae(tmp_path / "c", cfg, w))
    assert sae.architecture == "topk" and sae.k == 2
    assert sae.meta["hook_name"] == "model.layers.3" and sae.meta["hook_layer"] == 3
    f_hand, x_hat_hand = _by_hand(w, X, "topk", k=2)
    f = sae.encode(X)
    assert ((f > 0).sum(-1) <= 2).all()
    assert np.allclose(f.numpy(), f_hand, atol=1e-5)
    assert np.allclose(sae.decode(f).numpy(), x_hat_hand, atol=1e-5)


@pytest.mark.parametrize(
    "hook, expected",
    [
        ("model.layers.12.hook_resid_post", ("model.layers.12", 12)),
        ("model.layers.12", ("model.layers.12", 12)),
        ("gpt_neox.layers.0", ("gpt_neox.layers.0", 0)),
    ],
)
def test_both_hook_spellings(hook, expected):
    assert normalise_hook(hook) == expected


def _rejects(tmp_path, name, cfg, tensors, match, d_in=None):
    folder = write_study_sae(tmp_path / name, cfg, tensors)
    with pytest.raises(SAEFormatError, match=match) as e:
        load_published_sae(folder, d_in=d_in)
    return str(e.value)


def test_rejections_name_the_file(tmp_path):
    w = _weights(torch.zeros(D_SAE))
    msg = _rejects(tmp_path, "dmis", _cfg(), w, r"d_in=4 but the activations have width 2048", 2048)
    assert str(tmp_path / "dmis" / "cfg.json") in msg
    _rejects(tmp_path, "nok", _cfg(architecture="topk"), w, r"topk SAE needs 'k'")
    _rejects(tmp_path, "arch", _cfg(architecture="gated"), w, r"architecture='gated'.*allowed")
    no_thr = {k: v for k, v in w.items() if k != "threshold"}
    msg = _rejects(tmp_path, "miss", _cfg(), no_thr, r"missing tensors \['threshold'\]")
    assert "sae_weights.safetensors" in msg
    extra = {**w, "scale": torch.ones(1)}
    _rejects(tmp_path, "extra", _cfg(), extra, r"unexpected tensors \['scale'\]")
    bad = {**w, "W_dec": torch.zeros(D_IN, D_SAE)}
    _rejects(tmp_path, "shape", _cfg(), bad, r"W_dec has shape \(4, 6\), expected \(6, 4\)")
    _rejects(tmp_path, "hook", _cfg(hook_name="resid"), w, r"hook_name='resid'")
    _rejects(tmp_path, "dis", _cfg(hook_layer=3), w, r"hook_layer=3 disagrees")
    learned_topk = _weights(torch.full((D_SAE,), 0.1))
    _rejects(tmp_path, "tk", _cfg(architecture="topk", k=2), learned_topk, "non-zero threshold")
    with pytest.raises(SAEFormatError, match="cfg.json is missing"):
        load_published_sae(tmp_path / "absent")
