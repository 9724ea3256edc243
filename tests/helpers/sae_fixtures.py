"""SAEs with random weights for the SAE tests."""

from __future__ import annotations

import torch

from lib.sae.model import SAE

ARCHS = ("topk", "jumprelu", "jumprelu_ste")


def random_sae(arch: str, d_in: int = 12, d_sae: int = 40, k: int = 5, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, arch, k=k if arch == "topk" else None)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g))
        sae.b_enc.copy_(torch.randn(d_sae, generator=g))
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g))
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 2)
    return sae
