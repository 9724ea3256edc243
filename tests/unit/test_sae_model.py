"""The SAE model: encode as SAELens defines it, export in its format, loading errors that name the file."""

from __future__ import annotations

import json

import pytest
import torch
from sae_fixtures import ARCHS, random_sae

from lib.sae.model import SAEFormatError, load_sae, save_sae


# ----- definitions ------------------------------------------------------------------------------------
def test_encode_is_saelens_definition_topk_selects_then_relus():
    sae = random_sae("topk", k=5)
    with torch.no_grad():
        # every pre-activation negative: the top 5 are still selected, then ReLU'd to 0
        sae.b_enc.fill_(-50.0)
    x = torch.randn(7, 12)
    assert torch.count_nonzero(sae.encode(x)) == 0
    sae = random_sae("topk", k=5)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = sae.encode(x)
    for row in range(7):
        top = torch.topk(pre[row], 5).indices
        expect = torch.zeros(40)
        expect[top] = pre[row, top].clamp(min=0)
        assert torch.equal(f[row], expect)
    assert torch.allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec)


def test_encode_is_saelens_definition_jumprelu():
    sae = random_sae("jumprelu_ste")
    x = torch.randn(9, 12)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    expect = torch.where(pre > sae.threshold, pre, torch.zeros(()))
    assert torch.equal(sae.encode(x), expect.clamp(min=0))
    assert not sae.encode(x).requires_grad  # probes call .numpy() on it


# ----- export and load ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_roundtrip_and_cfg(arch, tmp_path):
    sae = random_sae(arch)
    sae.meta.update(hook_name="model.layers.2", hook_layer=2, training_condition="mixed")
    path = save_sae(sae, tmp_path / "s")
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == ("topk" if arch == "topk" else "jumprelu")
    assert cfg["metadata"]["study_architecture"] == arch
    assert cfg["metadata"]["hook_name"] == "model.layers.2"
    assert cfg["metadata"]["model_class_name"] == "AutoModelForCausalLM"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert (cfg.get("k") == 5) == (arch == "topk")
    back = load_sae(path, d_in=12)
    x = torch.randn(6, 12)
    assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back(x), sae(x))
    save_sae(back, path)  # replacing an existing folder works
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(SAEFormatError, match="not an SAE folder"):
        load_sae(tmp_path / "nope")
    path = save_sae(random_sae("topk"), tmp_path / "s")
    with pytest.raises(SAEFormatError, match="d_in=12 but the activations have width 2048"):
        load_sae(path, d_in=2048)
    (path / "sae_weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors is unreadable or corrupt"):
        load_sae(path)
    (path / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors is missing"):
        load_sae(path)
    path = save_sae(random_sae("topk"), tmp_path / "t")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(SAEFormatError, match="cfg.json: architecture='gated' is not supported"):
        load_sae(path)
    (path / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="cfg.json is not valid JSON"):
        load_sae(path)
    path = save_sae(random_sae("jumprelu"), tmp_path / "u")
    from safetensors.torch import load_file, save_file

    t = load_file(str(path / "sae_weights.safetensors"))
    save_file({**t, "scaling_factor": torch.ones(1)}, str(path / "sae_weights.safetensors"))
    with pytest.raises(SAEFormatError, match="needs exactly"):
        load_sae(path)
