"""Our SAE folders against the real sae_lens package, both ways, and our STE against SAELens's."""

from __future__ import annotations

import json

import pytest
import torch

from lib.core.config import SAEConfig, SteConfig
from lib.sae.architectures.jumprelu_ste import ste_threshold_grad
from lib.sae.model import SAE, SAEFormatError, load_sae, save_sae
from lib.sae.trainer import train_sae

sae_lens = pytest.importorskip("sae_lens")

ARCHS = ("topk", "jumprelu", "jumprelu_ste")
EXPORTS = (*ARCHS, "topk_openai")  # every kind of SAE the trainer writes


def random_sae(d_in: int = 20, d_sae: int = 64) -> SAE:
    g = torch.Generator().manual_seed(5)
    sae = SAE(d_in, d_sae, "jumprelu")
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g))
    return sae


@pytest.fixture(scope="module")
def trained():
    """One briefly trained SAE of each kind (d_in 24, raw inputs far from unit scale)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 24, generator=g) * 6.0 + 2.0
    cfg = SAEConfig(
        expansion_factor=4,
        k=6,
        epochs=3,
        batch_size=128,
        lr=3e-3,
        ste=SteConfig(l0_coefficient=1e-2),
    )
    out = {}
    for arch in EXPORTS:
        variant = "openai" if arch == "topk_openai" else "saelens"
        kind_cfg = cfg.model_copy(update={"topk_variant": variant})
        sae, _ = train_sae(x, arch.removesuffix("_openai"), kind_cfg, seed=0, progress=False)
        sae.meta.update(
            hook_name="model.layers.3",
            hook_layer=3,
            model_name="organism",
            training_condition="mixed",
        )
        out[arch] = sae
    return out, torch.randn(300, 24, generator=g) * 6.0 + 2.0


@pytest.mark.parametrize("arch", EXPORTS)
def test_saelens_loads_our_export_and_computes_the_same(arch, trained, tmp_path):
    """Every kind of export: SAELens loads it, its maps equal ours, and folding the decoder
    norms (``fold_W_dec_norm``, which SAELens refuses for a TopK SAE without
    ``rescale_acts_by_decoder_norm``) works and changes nothing."""
    from sae_lens import SAE as LensSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE
    from sae_lens.saes.topk_sae import TopKSAE

    saes, x = trained
    ours = saes[arch]
    save_sae(ours, tmp_path / arch)
    cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none" and "activation_scale" not in cfg["metadata"]
    theirs = LensSAE.load_from_disk(tmp_path / arch)
    assert isinstance(theirs, TopKSAE if arch.startswith("topk") else JumpReLUSAE)
    assert theirs.cfg.d_in == 24 and theirs.cfg.d_sae == 96
    assert theirs.cfg.metadata.hook_name == "model.layers.3"
    if arch.startswith("topk"):
        assert theirs.cfg.k == 6 and theirs.cfg.rescale_acts_by_decoder_norm is True
    else:
        assert torch.equal(theirs.threshold.detach(), ours.threshold)
    with torch.no_grad():
        f_ours = ours.encode(x)
        assert (f_ours != 0).sum() > 0
        for stage in ("loaded", "folded"):
            if stage == "folded":
                theirs.fold_W_dec_norm()
            f_theirs = theirs.encode(x)
            assert torch.allclose(f_ours, f_theirs, atol=1e-5), stage
            assert torch.allclose(ours.decode(f_ours), theirs.decode(f_theirs), atol=1e-5), stage
            assert torch.allclose(ours(x), theirs(x), atol=1e-5), stage
    back = load_sae(tmp_path / arch)  # our own loader: the same weights, bit for bit
    for name, t in ours.state_tensors().items():
        assert torch.equal(back.state_tensors()[name], t), name


def test_topk_rescale_flag_is_written_only_for_unit_decoder_rows(trained, tmp_path):
    saes, x = trained
    sae = saes["topk"]
    assert sae.saelens_cfg()["rescale_acts_by_decoder_norm"] is True
    with torch.no_grad():
        sae_off = load_sae(save_sae(sae, tmp_path / "a"))
        sae_off.W_dec.mul_(1.5)  # rows no longer unit: rescaling would change the TopK choice
    assert sae_off.saelens_cfg()["rescale_acts_by_decoder_norm"] is False
    back = load_sae(save_sae(sae_off, tmp_path / "b"))
    assert torch.equal(back.encode(x), sae_off.encode(x))


def test_our_loader_needs_the_scale_of_an_sae_trained_on_scaled_inputs(tmp_path):
    s = 0.37  # SAELens's norm_scaling_factor: the SAE expects inputs x * s
    theirs = _lens_sae("topk", k=7, normalize_activations="expected_average_only_in")
    theirs.save_model(tmp_path / "scaled")
    with pytest.raises(SAEFormatError, match="pass input_scale="):
        load_sae(tmp_path / "scaled")
    ours = load_sae(tmp_path / "scaled", input_scale=s)
    assert ours.meta["folded_input_scale"] == s
    x = torch.randn(50, 20, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        assert (theirs.encode(x * s) != 0).sum() > 0
        assert torch.allclose(ours.encode(x), theirs.encode(x * s), atol=1e-5)
        assert torch.allclose(ours(x), theirs.decode(theirs.encode(x * s)) / s, atol=1e-5)
        theirs.fold_activation_norm_scaling_factor(s)  # SAELens's own fold gives the same SAE
        assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-5)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    per_input = _lens_sae("standard", normalize_activations="layer_norm")
    per_input.save_model(tmp_path / "ln")
    with pytest.raises(SAEFormatError, match="cannot be folded"):
        load_sae(tmp_path / "ln", input_scale=s)
    with pytest.raises(ValueError, match="must not be given"):
        load_sae(save_sae(random_sae(), tmp_path / "raw"), input_scale=s)


def _lens_sae(kind: str, d_in: int = 20, d_sae: int = 64, **kw):
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    cls, cfg_cls = {
        "topk": (TopKSAE, TopKSAEConfig),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
        "standard": (StandardSAE, StandardSAEConfig),
    }[kind]
    sae = cls(cfg_cls(d_in=d_in, d_sae=d_sae, **kw))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if kind == "jumprelu":
            sae.threshold.abs_()
    return sae


@pytest.mark.parametrize(
    "kind,kw,arch",
    [
        ("topk", {"k": 7}, "topk"),
        ("topk", {"k": 7, "rescale_acts_by_decoder_norm": True}, "topk"),
        ("jumprelu", {}, "jumprelu_ste"),
        ("standard", {}, "jumprelu"),
    ],
)
def test_our_loader_reads_what_saelens_saved(kind, kw, arch, tmp_path):
    theirs = _lens_sae(kind, **kw)
    theirs.save_model(tmp_path / kind)
    ours = load_sae(tmp_path / kind, d_in=20)
    assert ours.architecture == arch and ours.d_sae == 64
    x = torch.randn(50, 20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f_theirs, f_ours = theirs.encode(x), ours.encode(x)
        assert (f_theirs != 0).sum() > 0
        # SAELens's decoder-norm rescaling (TopK) is folded into our weights: same latents
        assert torch.allclose(f_ours, f_theirs, atol=1e-5)
        assert torch.allclose(ours(x), theirs.decode(f_theirs), atol=1e-5)


def test_ste_threshold_gradient_equals_saelens():
    """Our closed form vs autograd through SAELens's JumpReLU and Step (rectangle kernel)."""
    from sae_lens.saes.jumprelu_sae import JumpReLU, Step

    g = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 30, generator=g)
    theta = (torch.rand(30, generator=g) * 0.5).requires_grad_()
    w = torch.randn(64, 30, generator=g)  # d loss/d f of a linear loss in f
    eps, lam = 0.3, 0.05
    loss = (JumpReLU.apply(pre, theta, eps, False) * w).sum() + lam * Step.apply(
        pre, theta, eps, False
    ).sum(1).mean()
    loss.backward()
    ours = ste_threshold_grad(pre, theta.detach(), w, eps, lam, "rectangle")
    assert theta.grad.abs().sum() > 0
    assert torch.allclose(ours, theta.grad, atol=1e-5)


def test_saelens_rejects_nothing_we_write(trained, tmp_path):
    """SAELens loads strictly: our weight file holds exactly the tensors it expects."""
    from safetensors.torch import load_file

    saes, _ = trained
    for arch, sae in saes.items():
        save_sae(sae, tmp_path / arch)
        keys = set(load_file(str(tmp_path / arch / "sae_weights.safetensors")))
        topk = arch.startswith("topk")
        want = {"W_enc", "b_enc", "W_dec", "b_dec"} | (set() if topk else {"threshold"})
        assert keys == want
    assert isinstance(saes["topk"], SAE)
