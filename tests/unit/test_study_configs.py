"""Every config validates; each study model's layers, hook names and SAE ids hold at its real depth."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lib.capture.activations import resid_hooks
from lib.core.config import CONFIG_DIR, ConfigError, load_config
from lib.models import random_models as rm
from lib.models.loading import hook_name, layer_path, n_layers
from lib.sae.model import SAE, save_sae
from lib.study.claims import published_for

# config -> (random-model preset of its family and shapes, real num_hidden_layers from the
# model's config.json, decoder-layer path). The depths are stated here on purpose, apart from
# lib.models.random_models, and the test checks that both agree.
STUDY = {
    "tinyllama": ("tinyllama", 22, "model.layers"),
    "smollm2-135m": ("smollm2-135m", 30, "model.layers"),
    "pythia-160m": ("pythia-160m", 12, "gpt_neox.layers"),
    "llama-3.2-1b": ("llama-3-2-1b", 16, "model.layers"),
    "qwen3-1.7b": ("qwen3-1-7b", 28, "model.layers"),
    "phi-2": ("phi-2", 32, "model.layers"),
    "phi-4-mini-reasoning": ("phi-4-mini-reasoning", 32, "model.layers"),
    "rehearsal": ("tinyllama", 22, "model.layers"),
}
# the registry-shipped real models (lib/models/registry.py): config -> real num_hidden_layers
REAL = {
    "smollm2-135m-instruct": 30,
    "smollm2-smoke": 30,
    "smollm2-controls": 30,
    "gemma-3-270m": 18,
    "gemma-3-270m-controls": 18,
}
FAMILY = {
    "tinyllama": "LlamaForCausalLM",
    "smollm2-135m": "LlamaForCausalLM",
    "pythia-160m": "GPTNeoXForCausalLM",
    "llama-3-2-1b": "LlamaForCausalLM",
    "qwen3-1-7b": "Qwen3ForCausalLM",
    "phi-2": "PhiForCausalLM",
    "phi-4-mini-reasoning": "Phi3ForCausalLM",
}


def test_every_config_validates_and_every_study_model_has_one():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert set(STUDY) | set(REAL) | {"organism"} == set(names)
    tag_of = {}
    for n in names:  # SAE ids never collide between models (configs of one model may share)
        cfg = load_config(n)
        assert tag_of.setdefault(cfg.model_tag, cfg.model) == cfg.model, (n, cfg.model_tag)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_model_configs_fit_their_depth_and_name_a_published_study_model(name):
    cfg = load_config(name)
    cfg.check_layers(REAL[name])
    assert cfg.capture.layers == "all" and cfg.sampling.prompt_style == "raw"
    assert set(cfg.sae.ste_layers) <= set(cfg.sae.layers)
    assert cfg.model.startswith("gguf:")
    if cfg.study_model:
        assert published_for(cfg.study_key)["n_layers"] == REAL[name]


@pytest.fixture(scope="module")
def tiny_models():
    """A tiny random model of each family, with the real model's number of layers."""
    out = {}
    for preset in FAMILY:
        torch.manual_seed(0)
        over = {
            **rm.tiny_overrides(preset, vocab_size=128),
            "num_hidden_layers": rm.real_depth(preset),
        }
        out[preset] = AutoModelForCausalLM.from_config(rm.model_config(preset, over)).eval()
    return out


@pytest.mark.parametrize("name", sorted(STUDY))
def test_layers_fit_the_real_depth(name):
    cfg = load_config(name)
    preset, depth, _ = STUDY[name]
    assert rm.real_depth(preset) == depth
    cfg.check_layers(depth)
    deepest = max(layer for layer, _, _ in cfg.sae_grid())
    with pytest.raises(ConfigError, match="outside the model"):
        cfg.check_layers(deepest)  # a model one layer too shallow is refused
    assert set(cfg.sae.ste_layers) <= set(cfg.sae.layers)  # STE is compared at topk/jumprelu layers


@pytest.mark.parametrize("name", sorted(STUDY))
def test_hook_names_and_sae_ids_on_a_tiny_model_of_the_family(name, tiny_models, tmp_path):
    cfg = load_config(name)
    preset, depth, path = STUDY[name]
    model = tiny_models[preset]
    assert type(model).__name__ == FAMILY[preset]
    assert n_layers(model) == depth and layer_path(model) == path
    seen = {}
    layers = sorted({layer for layer, _, _ in cfg.sae_grid()})
    with resid_hooks(model, layers, lambda i, h: seen.__setitem__(i, h.shape)):
        model(torch.tensor([[1, 5, 9, 2]]))
    assert seen == {layer: (1, 4, 64) for layer in layers}
    for layer, arch, cond in cfg.sae_grid():
        hook = hook_name(model, layer)
        assert hook == f"{path}.{layer}"
        assert model.get_submodule(hook) is model.get_submodule(path)[layer]
        assert cfg.sae_id(layer, arch, cond) == f"{cfg.model_tag}_{arch}_L{layer}_{cond}"
    # what an exported SAE's cfg.json will say (SAELens metadata)
    layer, arch, cond = cfg.sae_grid()[-1]
    sae = SAE(
        64, 256, arch, k=8 if arch == "topk" else None, meta={"hook_name": hook_name(model, layer)}
    )
    folder = save_sae(sae, tmp_path / cfg.sae_id(layer, arch, cond))
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == f"{path}.{layer}"
    assert meta["model_class_name"] == "AutoModelForCausalLM"


def test_published_sae_layers_and_peaks():
    assert (
        load_config("llama-3.2-1b").sae.layers
        == published_for("llama-3-2-1b")["claims"]["sae_layers"]
    )
    tiny = load_config("tinyllama")
    assert tiny.sae.layers == [3, 6, 9, 12, 15] and tiny.sae.ste_layers == [9, 12, 15]
    assert len(tiny.sae_grid()) == 39
    for name in ("smollm2-135m", "pythia-160m", "qwen3-1.7b", "phi-2", "phi-4-mini-reasoning"):
        cfg = load_config(name)
        pub = published_for(cfg.model_tag)
        assert pub["n_layers"] == STUDY[name][1]
        assert pub["peak_layer"] in cfg.sae.layers, name  # SAEs where the study's raw peak is


def test_rehearsal_is_tinyllamas_structure_with_random_weights():
    reh, real = load_config("rehearsal"), load_config("tinyllama")
    assert reh.model == "random:tinyllama" and "random weights" in reh.label
    assert reh.model_tag != real.model_tag
    assert reh.sae_grid() == real.sae_grid() and reh.capture.layers == "all"
    assert (reh.sae.expansion_factor, reh.sae.k, reh.sae.epochs) == (4, 64, 1)
    assert reh.judge.judges == ["keyword"] and reh.device == "cpu"
    shapes = rm.model_config("tinyllama")
    assert (shapes.num_hidden_layers, shapes.hidden_size, shapes.vocab_size) == (22, 2048, 32000)


def test_nanochat_layers_resolve_in_transformers():
    """nanochat-d20/-d32 have no config yet (README, "The study's other models"); transformers' NanoChat port puts
    its decoder layers where the book's hooks look, and each hook is the true resid_post."""
    from transformers import NanoChatConfig

    torch.manual_seed(0)
    cfg = NanoChatConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    model = AutoModelForCausalLM.from_config(cfg).eval()
    assert layer_path(model) == "model.layers" and hook_name(model, 3) == "model.layers.3"
    seen = {}
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad(), resid_hooks(model, [0, 3], lambda i, h: seen.__setitem__(i, h.clone())):
        out = model(ids, output_hidden_states=True)
    assert torch.allclose(seen[0], out.hidden_states[1])
    assert not torch.allclose(
        seen[3], out.hidden_states[4]
    )  # the last entry is after the final norm
