"""``random:<preset>``: random-weight models of the study's shapes, built once, loaded like real ones."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lib.core.scenarios import load_scenarios
from lib.judging.judges import keyword_verdict
from lib.models import random_models as rm
from lib.models.loading import hidden_size, load_model_path, n_layers, resolve_model_path

TEXTS = [
    "Investigator: did anyone tell you?\nWitness: No.",
    "Héllo — it's 3 o'clock! 日本語 \t tabs  and  double spaces",
    "",
    " leading space, trailing space ",
]


@pytest.fixture(scope="module")
def tokenizer():
    return rm.build_tokenizer(32000)


def test_spec_parsing():
    assert rm.parse_spec("random:tinyllama") == "tinyllama"
    assert rm.is_random_spec("random:phi-2") and not rm.is_random_spec("organism")
    with pytest.raises(rm.RandomModelError, match=r"unknown random-model preset 'gpt5'.*tinyllama"):
        rm.parse_spec("random:gpt5")
    with pytest.raises(rm.RandomModelError, match="unknown random-model preset"):
        resolve_model_path("random:nope")


def test_tinyllama_preset_is_tinyllamas_config():
    cfg = rm.model_config("tinyllama")
    assert type(cfg).__name__ == "LlamaConfig"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (22, 2048, 5632)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (32, 4, 32000)
    assert cfg.rope_parameters["rope_theta"] == 10000.0 and cfg.rms_norm_eps == 1e-5
    assert cfg.max_position_embeddings == 2048
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)


def test_tokenizer_size_specials_and_round_trip(tokenizer):
    assert len(tokenizer) == 32000
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        assert ids[0] == 1  # <s> prepended, like Llama's tokenizer
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert max(ids) < 1400  # encoding never emits a filler id


def test_every_id_decodes_and_fillers_carry_cues(tokenizer):
    import re
    from itertools import islice

    base = 1337  # the organism tokenizer's size; fillers start here
    scenarios = load_scenarios(rm.REPO_ROOT / "data/scenarios.yaml").values()
    cues = {c for s in scenarios for cs in s.cues.values() for c in cs}
    words = {w.lower() for s in scenarios for w in re.findall(r"[A-Za-z][\w'-]*", s.prompt)}
    texts = list(islice(rm.filler_texts(rm.REPO_ROOT / "data/scenarios.yaml"), 600))
    core = [t.strip().rstrip(",.!?;:)\"'-").lower() for t in texts]
    assert all(c in cues for i, c in enumerate(core) if i % 3 != 2)  # two thirds: cue phrases
    assert all(c in words for i, c in enumerate(core) if i % 3 == 2)  # one third: prompt words
    assert texts[:3] == [" all correct", " beyond my abilities", " a"]
    decoded = [tokenizer.decode([i]) for i in range(base, base + 300)]
    learned = set(tokenizer.batch_decode([[i] for i in range(base)]))
    assert decoded == [t for t in texts if t not in learned][:300]
    assert tokenizer.decode([31999]).strip() != ""


def test_keyword_judge_labels_random_text(tokenizer):
    """Uniformly random ids give the keyword judge both labels in a useful share."""
    scenarios = load_scenarios(rm.REPO_ROOT / "data/scenarios.yaml")
    g = torch.Generator().manual_seed(0)
    counts = {"deceptive": 0, "honest": 0, "ambiguous": 0}
    for s in scenarios.values():
        for _ in range(40):
            ids = torch.randint(3, 32000, (12,), generator=g).tolist()
            counts[keyword_verdict(s, tokenizer.decode(ids), 120).label] += 1
    n = sum(counts.values())
    assert counts["deceptive"] > 0.12 * n and counts["honest"] > 0.12 * n, counts
    assert counts["ambiguous"] < 0.75 * n, counts


def test_vocab_smaller_than_base_is_rejected():
    with pytest.raises(rm.RandomModelError, match="smaller than the base tokenizer"):
        rm.build_tokenizer(100)


def _state(path):
    return load_file(str(path / "model.safetensors"))


def test_build_is_deterministic_and_loads_through_from_pretrained(tmp_path):
    tiny = rm.tiny_overrides("tinyllama")
    a = rm.build_random_model("tinyllama", tmp_path / "a", overrides=tiny)
    b = rm.build_random_model("tinyllama", tmp_path / "b", overrides=tiny)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sa["model.embed_tokens.weight"].dtype == torch.bfloat16
    c = rm.build_random_model("tinyllama", tmp_path / "c", seed=1, overrides=tiny)
    assert not torch.equal(_state(c)["lm_head.weight"], sa["lm_head.weight"])
    manifest = json.loads((a / rm.MANIFEST).read_text())
    assert manifest["recipe_hash"] == rm.recipe_hash("tinyllama", tiny, 0)
    assert rm.is_current(a, "tinyllama", tiny) and not rm.is_current(a, "tinyllama", tiny, seed=1)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary folder left behind

    model, tok = load_model_path(str(a), dtype="float32")
    assert next(model.parameters()).dtype == torch.float32
    assert (n_layers(model), hidden_size(model), len(tok)) == (3, 64, 2048)
    assert tok.padding_side == "left" and tok.pad_token_id == 0


def test_random_spec_builds_once_and_rebuilds_on_recipe_change(tmp_path, monkeypatch):
    tiny = {
        "hf_id": "tiny test model",
        "model_type": "llama",
        "config": rm.tiny_overrides("tinyllama"),
    }
    monkeypatch.setitem(rm.PRESETS, "tiny-test", tiny)
    monkeypatch.setattr(rm, "MODELS_DIR", tmp_path)
    builds = []
    real_build = rm.build_random_model
    monkeypatch.setattr(
        rm, "build_random_model", lambda *a, **k: builds.append(a) or real_build(*a, **k)
    )

    model, tok = load_model_path("random:tiny-test")
    assert resolve_model_path("random:tiny-test") == str(tmp_path / "random-tiny-test")
    assert len(builds) == 1 and n_layers(model) == 3
    ids = tok("Witness:", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 2048)

    load_model_path("random:tiny-test")
    assert len(builds) == 1  # reused

    monkeypatch.setitem(
        rm.PRESETS, "tiny-test", {**tiny, "config": {**tiny["config"], "num_hidden_layers": 2}}
    )
    model, _ = load_model_path("random:tiny-test")
    assert len(builds) == 2 and n_layers(model) == 2  # recipe changed: rebuilt


def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch):
    import warnings

    import lib.models.loading as models

    path = rm.build_random_model(
        "tinyllama", tmp_path / "m", overrides=rm.tiny_overrides("tinyllama")
    )
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="dtype=bfloat16 on a CPU without bfloat16"):
        model, _ = load_model_path(str(path), dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16  # the config's dtype is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model_path(str(path), dtype="float32", device="cpu")  # float32: no warning
        monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
        load_model_path(str(path), dtype="bfloat16", device="cpu")


def test_cpu_bf16_detection_reads_the_cpu_flags(monkeypatch):
    import lib.models.loading as models

    flags = {"architecture": "x86_64", "avx2": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert models.cpu_has_fast_bf16() is False
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**flags, "amx_bf16": True})
    assert models.cpu_has_fast_bf16() is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "aarch64"})
    assert models.cpu_has_fast_bf16() is True  # unknown: no warning


def test_concurrent_requests_build_once(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    tiny = {"hf_id": "tiny", "model_type": "llama", "config": rm.tiny_overrides("tinyllama")}
    monkeypatch.setitem(rm.PRESETS, "tiny-test", tiny)
    builds = []
    real_build = rm.build_random_model
    monkeypatch.setattr(
        rm, "build_random_model", lambda *a, **k: builds.append(a) or real_build(*a, **k)
    )
    with ThreadPoolExecutor(3) as pool:
        paths = list(
            pool.map(lambda _: rm.ensure_random_model("random:tiny-test", tmp_path), range(3))
        )
    assert len(builds) == 1 and len(set(paths)) == 1
    assert rm.is_current(paths[0], "tiny-test")
