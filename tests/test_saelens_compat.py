"""Our SAE folders against the real sae_lens package, both ways, and our STE against SAELens's."""

from __future__ import annotations

import pytest
import torch

from lib.config import SAEConfig, SteConfig
from lib.sae import SAE, load_sae, save_sae
from lib.sae_kernels import ste_threshold_grad
from lib.sae_trainer import train_sae

sae_lens = pytest.importorskip("sae_lens")

ARCHS = ("topk", "jumprelu", "jumprelu_ste")


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
    for arch in ARCHS:
        sae, _ = train_sae(x, arch, cfg, seed=0, progress=False)
        sae.meta.update(
            hook_name="model.layers.3",
            hook_layer=3,
            model_name="organism",
            training_condition="mixed",
        )
        out[arch] = sae
    return out, torch.randn(300, 24, generator=g) * 6.0 + 2.0


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_our_export_and_computes_the_same(arch, trained, tmp_path):
    from sae_lens import SAE as LensSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE
    from sae_lens.saes.topk_sae import TopKSAE

    saes, x = trained
    ours = saes[arch]
    save_sae(ours, tmp_path / arch)
    theirs = LensSAE.load_from_disk(tmp_path / arch)
    assert isinstance(theirs, TopKSAE if arch == "topk" else JumpReLUSAE)
    assert theirs.cfg.d_in == 24 and theirs.cfg.d_sae == 96
    assert theirs.cfg.metadata.hook_name == "model.layers.3"
    if arch == "topk":
        assert theirs.cfg.k == 6
    else:
        assert torch.equal(theirs.threshold.detach(), ours.threshold)
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        assert (f_ours != 0).sum() > 0
        assert torch.allclose(f_ours, f_theirs, atol=1e-5)
        assert torch.allclose(ours.decode(f_ours), theirs.decode(f_theirs), atol=1e-5)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


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
        want = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if arch != "topk" else set())
        assert keys == want
    assert isinstance(saes["topk"], SAE)
