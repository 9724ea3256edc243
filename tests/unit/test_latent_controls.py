"""The word control of single latents and the dashboard's parts: known answers on planted data."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from lib.core.config import REPO_ROOT
from lib.latents.word_control import word_table, word_verdicts


def planted_words(n_cell=60, seed=0):
    """Decisive completions of both polarities: lies and truths open with "no" and with "yes"
    equally often (version 2 scenarios), plus a few with no answer word. Latent 0 fires on "no"
    whatever the label; latent 1 fires on lies whatever the word; latent 2 is noise."""
    g = np.random.default_rng(seed)
    answer = np.array(["no"] * 2 * n_cell + ["yes"] * 2 * n_cell + [""] * 20, dtype=object)
    y = np.array(([1] * n_cell + [0] * n_cell) * 2 + [1, 0] * 10)
    n = len(y)
    F = np.zeros((n, 3), dtype=np.float32)
    F[:, 0] = np.where(answer == "no", 1.0 + g.uniform(size=n), 0.0)
    F[:, 1] = np.where(y == 1, 0.5 + g.uniform(size=n), 0.0)
    F[:, 2] = np.maximum(g.normal(size=n) - 0.3, 0.0)
    return F, y, answer


def test_a_no_latent_is_named_a_word_latent_and_a_deception_latent_is_not():
    F, y, answer = planted_words()
    t = word_table(F, y, answer, n_boot=200, seed=0)
    no, lie, noise = t.iloc[0], t.iloc[1], t.iloc[2]
    assert no["word_auroc"] == 1.0 and no["word_ci_low"] == 1.0
    # inside one word it carries nothing: its within-word interval covers 0.5
    assert no["within_ci_low"] < 0.5 < no["within_ci_high"]
    assert no["word_verdict"] == "word"
    assert abs(lie["word_auroc"] - 0.5) < 0.05 and lie["word_ci_low"] < 0.5 < lie["word_ci_high"]
    assert lie["within_no_auroc"] == lie["within_yes_auroc"] == 1.0
    assert lie["within_ci_low"] == 1.0 and lie["word_verdict"] == "deception"
    assert noise["word_verdict"] == ""


def test_one_word_per_label_cannot_tell_word_from_deception():
    """The study's nine scenarios: every lie opens "no", every truth "yes". A latent on either
    separates both ways; no within-word AUROC exists, so the verdict is "untestable"."""
    F, y, answer = planted_words()
    keep = ((answer == "no") & (y == 1)) | ((answer == "yes") & (y == 0))
    t = word_table(F[keep], y[keep], answer[keep], n_boot=100)
    assert t["within_word_auroc"].isna().all()
    assert list(t["word_verdict"][:2]) == ["untestable", "untestable"]


def test_a_latent_carrying_both_is_a_word_latent_only_when_the_word_dominates():
    # word interval [0.9, 1.0] vs within-word [0.55, 0.65]: the word explains more -> word
    # word interval [0.55, 0.6] vs within-word [0.8, 0.9]: deception within words
    v = word_verdicts([0.9, 0.55, 0.45], [1.0, 0.6, 0.55], [0.55, 0.8, 0.4], [0.65, 0.9, 0.6])
    assert list(v) == ["word", "deception", ""]
    # a no-low latent (word AUROC below 0.5) is a word latent as well
    assert list(word_verdicts([0.0], [0.05], [0.4], [0.6])) == ["word"]


# ----- logit effects ------------------------------------------------------------------------------
def test_a_decoder_row_along_a_tokens_unembedding_puts_that_token_first():
    from lib.latents.effects import logit_effects

    g = np.random.default_rng(0)
    W_U = g.normal(size=(16, 300))
    W_U /= np.linalg.norm(W_U, axis=0)  # unit columns: only the token itself has cosine 1
    W_dec = g.normal(size=(40, 16))
    W_dec[3] = 2.0 * W_U[:, 7]  # latent 3 writes token 7's direction
    W_dec[5] = -W_U[:, 123]  # latent 5 writes against token 123
    eff = logit_effects(W_dec.astype(np.float32), W_U.astype(np.float32), k=5, chunk=8)
    assert eff["top_ids"].shape == (40, 5)
    assert eff["top_ids"][3, 0] == 7 and eff["top_values"][3, 0] == pytest.approx(2.0, rel=1e-5)
    assert eff["bottom_ids"][5, 0] == 123 and eff["bottom_values"][5, 0] == pytest.approx(-1.0)
    assert (np.diff(eff["top_values"], axis=1) <= 0).all()  # largest first
    assert (np.diff(eff["bottom_values"], axis=1) >= 0).all()  # most negative first
    ref = W_dec @ W_U  # the chunks equal the full product
    np.testing.assert_array_equal(eff["top_ids"][:, 0], ref.argmax(1))


def test_the_final_norm_gain_is_folded_into_the_unembedding():
    import torch
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from lib.latents.effects import final_norm_gain, unembedding

    class Tiny(torch.nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.norm = norm
            self.lm_head = torch.nn.Linear(6, 11, bias=False)

        def get_output_embeddings(self):
            return self.lm_head

    w = torch.linspace(-0.5, 2.0, 6)
    llama, gemma = LlamaRMSNorm(6), Gemma3RMSNorm(6)
    with torch.no_grad():
        llama.weight.copy_(w)
        gemma.weight.copy_(w)  # Gemma scales by 1 + weight
    torch.testing.assert_close(final_norm_gain(Tiny(llama)), w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final_norm_gain(Tiny(gemma)), 1 + w, atol=1e-4, rtol=1e-4)
    m = Tiny(llama)
    W_U = unembedding(m)
    assert W_U.shape == (6, 11)
    torch.testing.assert_close(W_U, m.lm_head.weight.detach().T * w[:, None], atol=1e-4, rtol=1e-4)


def test_density_is_the_share_of_tokens_where_a_latent_fires():
    import torch

    from lib.latents.effects import activation_density, density_histogram

    class Identity:
        d_sae = 3

        def encode(self, x):
            return torch.relu(x)

    x = torch.tensor([[1.0, 0.0, -1.0], [1.0, 2.0, -1.0], [0.0, 0.0, -1.0], [3.0, 0.0, -2.0]])
    dens = activation_density(Identity(), x, batch=3)
    np.testing.assert_allclose(dens, [0.75, 0.25, 0.0])
    h = density_histogram(dens, bins=4)
    assert h["dead"] == 1 and sum(h["counts"]) == 2 and h["edges"][-1] == 0.0


# ----- token text ---------------------------------------------------------------------------------
SMOLLM2 = REPO_ROOT / "data/models/gguf-SmolLM2-135M-Instruct.Q4_1-b179c9523d0e-tf5.23.0"


@pytest.fixture(scope="module")
def byte_bpe():
    if not (SMOLLM2 / "tokenizer.json").exists():
        pytest.skip("the converted SmolLM2 model is not in data/models (make models)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOLLM2)


def test_a_character_split_over_byte_level_tokens_decodes_whole(byte_bpe):
    from lib.latents.effects import token_pieces

    text = " 鬱 ok"  # three bytes, three byte-level tokens: alone, each decodes to U+FFFD
    ids = byte_bpe.encode(text, add_special_tokens=False)
    assert any("\ufffd" in byte_bpe.decode([i]) for i in ids)
    pieces = token_pieces(byte_bpe, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces) and " 鬱" in pieces


def test_a_lone_byte_keeps_its_replacement_character_on_its_own_token(byte_bpe):
    """A model can sample a lead byte that nothing completes ("will", 0xE8, " I"): the U+FFFD
    belongs to the byte's token, not to the next one."""
    from lib.latents.effects import token_label, token_pieces

    ids = byte_bpe.convert_tokens_to_ids(["Ġwill", "è", "ĠI"])
    assert token_pieces(byte_bpe, ids) == [" will", "\ufffd", " I"]
    assert token_label(byte_bpe, ids[1]) == "è" and token_label(byte_bpe, ids[0]) == " will"


# ----- the dashboard ------------------------------------------------------------------------------
def synthetic_report(n_latents=12):
    """A LatentReport of planted codes: latent 0 reads "no", latent 1 lies; the rest noise, one dead."""
    import pandas as pd

    from lib.latents.auroc import class_histograms, latent_table, top_latents
    from lib.latents.effects import density_histogram
    from lib.latents.separating import LatentReport

    F, y, answer = planted_words(n_cell=20)
    g = np.random.default_rng(1)
    F = np.concatenate([F, np.maximum(g.normal(size=(len(y), n_latents - 3)) - 1, 0)], axis=1)
    F[:, -1] = 0.0  # never fires
    F = F.astype(np.float32)
    table = latent_table(F, y, np.array([f"s{i % 4}" for i in range(len(y))]), n_boot=50)
    table["density"] = (F > 0).mean(0)
    table = pd.concat([table, word_table(F, y, answer, n_boot=50)], axis=1)
    ks = pd.DataFrame(
        [
            {
                "k": 1,
                "cv": "stratified",
                "bal_acc": 0.9,
                "ci_low": 0.8,
                "ci_high": 0.95,
                "probe": "k_sparse",
                "auroc": 0.9,
                "n": len(y),
                "note": "",
            }
        ]  # fmt: skip
    )
    report = LatentReport("toy_topk_L1_mixed", 1, table, ks, top_latents(table, 2), {}, {})
    words = ["No", ",", " it", " will", "", "’", " I"]  # a character split over two tokens
    for lat in report.firing_ids():
        acts = [float(a) for a in g.uniform(size=len(words))]
        report.examples[lat] = [
            {
                "id": f"c-{lat}",
                "scenario": "s0",
                "label": "deceptive",
                "kind": "top",
                "pooled": 0.5,
                "max": max(acts),
                "tokens": words,
                "acts": acts,
            }  # fmt: skip
        ]
        report.histograms[lat] = class_histograms(F[:, lat], y, 8)
        report.logits[lat] = {"top": [["<promoted>", 1.5], ["é", 1.0]], "bottom": [["x", -1.0]] * 2}
    report.density_hist = density_histogram(table["density"].to_numpy())
    report.meta = {"n": len(y), "n_deceptive": int(y.sum()), "n_honest": int((y == 0).sum()),
                   "d_sae": n_latents, "judge": "keyword", "pooling": "mean", "n_significant": 2,
                   "n_tokens": len(y), "answer_words": {"no": 80, "yes": 80},
                   "word_verdicts": {"word": 1, "deception": 1, "untestable": 0}}  # fmt: skip
    return report


def test_every_firing_latent_is_reachable_and_word_latents_are_named(tmp_path):
    import re

    from lib.latents.dashboard import render_pages, write_dashboard

    report = synthetic_report()
    firing = report.firing_ids()
    assert len(firing) == 11 and 11 not in firing  # the dead latent has no section
    files = render_pages(report, "toy model", page_size=4)
    assert sorted(files) == ["index.html"] + [f"latents/page-0{i}.html" for i in (1, 2, 3)]
    index = files["index.html"]
    rows = re.findall(r'<a href="(latents/page-\d+\.html)#latent-(\d+)">', index)
    assert [int(lat) for _, lat in rows] == firing  # the table of every latent, in rank order
    for page, lat in rows:  # and each link lands on a section of that page
        assert f'<section class="latent" id="latent-{lat}">' in files[page]
    assert "word latent" in index and "deception within words" in index
    row0 = index[index.index('#latent-0">0</a>') :]  # the "no" latent's row in the full table
    row0 = row0[: row0.index("</tr>")]
    assert '<span class="verdict v-word">word latent</span>' in row0
    assert "<script" not in index and "https://" not in index
    assert "&lt;promoted&gt;" in index  # logit tokens are escaped, not markup
    assert "’ I" not in index and "\ufffd" not in index  # the split character shows whole, once
    assert "(one character, split over tokens)" in index
    assert index.count('<th class="l">label</th>') == 0  # no labels: no empty label column
    # written with ordinary modes (0644 under the usual umask), stale pages removed
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / "page-09.html").write_text("old")
    old = os.umask(0o022)
    try:
        write_dashboard(tmp_path / "index.html", report, "toy model", page_size=4)
    finally:
        os.umask(old)
    written = [tmp_path / "index.html", *sorted((tmp_path / "latents").iterdir())]
    assert [p.name for p in written[1:]] == ["page-01.html", "page-02.html", "page-03.html"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in written)


def test_histograms_have_ticks_and_leave_silent_completions_apart():
    from lib.latents.auroc import class_histograms
    from lib.latents.dashboard import histogram_svg

    y = np.array([1] * 10 + [0] * 10)
    values = np.array([0.0] * 6 + [1.0, 2.0, 3.0, 4.0] + [0.0] * 9 + [0.5])
    h = class_histograms(values, y, 4)
    assert h["silent"] == {"deceptive": 6, "honest": 9}
    svg = histogram_svg(h)
    assert svg.count("<line") >= 6 and ">0%<" in svg  # axis ticks with labels
    assert "silent (not drawn): 60% / 90%" in svg


def test_a_split_character_is_shown_once_with_both_activations():
    from lib.latents.dashboard import shown_tokens

    shown = shown_tokens(["No", "", "’", " I"], [0.0, 0.7, 0.2, 1.0])
    assert shown == [
        ("No", 0.0, "0"),
        ("’", 0.7, "0.7 + 0.2 (one character, split over tokens)"),
        (" I", 1.0, "1"),
    ]
    # a control character the model sampled stays visible
    assert shown_tokens([" a\x88", "\n"], [1.0, 0.0])[0][0] == " a\\x88"
    assert shown_tokens(["\n"], [0.0])[0][0] == "\n"


def test_noise_latents_get_no_verdict_once_the_false_discovery_rate_is_held():
    """500 latents of pure noise on both polarities: per-latent 95% intervals alone call about
    25 of them "deception"; with Benjamini-Hochberg over the latents almost none."""
    rng = np.random.default_rng(7)
    n = 400
    y = rng.integers(0, 2, n)
    answer = np.where(rng.uniform(size=n) < 0.5, "no", "yes").astype(object)
    F = rng.exponential(size=(n, 500)).astype(np.float32)
    t = word_table(F, y, answer, n_boot=200, seed=1)
    per_latent = word_verdicts(t.word_ci_low, t.word_ci_high, t.within_ci_low, t.within_ci_high)
    assert (per_latent == "deception").sum() >= 10  # the accident the q-values prevent
    assert (t.word_verdict != "").sum() <= 2, t.word_verdict.value_counts()
