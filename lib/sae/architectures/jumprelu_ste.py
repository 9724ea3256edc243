"""JumpReLU with a learned per-latent threshold (Rajamanoharan et al. 2024), trained by an STE.

Encode, as the study's :mod:`lib.sae.architectures.jumprelu`: ``relu(pre) * (pre > threshold)``,
the same forward pass; only training differs. SAELens name ``jumprelu`` (SAELens has one
JumpReLU); a SAELens ``jumprelu`` folder without ``metadata.study_architecture`` loads as this
architecture.

Training (hyperparameters ``ste``: :class:`lib.core.config.SteConfig`): ``||x - x^||^2 + lambda
* L0`` with the straight-through estimator of the paper: the threshold receives ``-(theta/eps)
K((pre - theta)/eps)`` through the JumpReLU and ``-(1/eps) K((pre - theta)/eps)`` through the
step inside L0; no STE gradient reaches the pre-activations (DeepMind's variant). ``K``:
rectangle (default) or standard Gaussian (:func:`ste_kernel`). The threshold is a direct (not
log) parameter, clamped to ``>= 0`` after each step as in SAELens 6 (Adam moves a log threshold
too little within a short run). Bandwidth and initial threshold are given for inputs at unit
mean norm, the L0 coefficient for an MSE at unit mean norm; in the ``sqrt(d_in)`` training space
they are multiplied by ``sqrt(d_in)``, ``sqrt(d_in)`` and ``d_in`` (:func:`ste_hyperparameters`).
(The JumpReLU paper's bandwidth 0.001 is for inputs at unit mean *squared* norm, ``E||x||^2 =
1``: a factor ``sqrt(E||x||^2) / E||x||`` apart, 4-5% on the organism's tokens.)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lib.core.config import SteConfig
from lib.sae.architectures.jumprelu import JumpReLU
from lib.sae.architectures.spec import Trainer


# ----- the STE pieces, shared by the step and the tests ------------------------------------------
def ste_kernel(u: torch.Tensor, name: str) -> torch.Tensor:
    """The STE kernel ``K(u)``: rectangle ``1{-1/2 < u < 1/2}`` or the standard normal density."""
    if name == "rectangle":
        return ((u > -0.5) & (u < 0.5)).to(u.dtype)
    if name == "gaussian":
        return torch.exp(-0.5 * u * u) * (1.0 / math.sqrt(2.0 * math.pi))
    raise ValueError(f"STE kernel={name!r}; allowed: ['rectangle', 'gaussian']")


def ste_threshold_grad(
    pre: torch.Tensor,
    threshold: torch.Tensor,
    grad_f: torch.Tensor,
    bandwidth: float,
    l0_coefficient: float,
    kernel_name: str = "rectangle",
) -> torch.Tensor:
    """d loss / d threshold for ``loss = mean_b[ L(f_b) + l0_coefficient * ||f_b||_0 ]``.

    ``pre`` ``[B, d_sae]`` pre-activations, ``grad_f`` ``[B, d_sae]`` the gradient of the batch
    loss with respect to the JumpReLU outputs ``f`` (already divided by B). With
    ``K_bj = K((pre_bj - theta_j) / eps)`` this is::

        -(1/eps) * sum_b K_bj * (theta_j * grad_f_bj + l0_coefficient / B)

    The L0 part is never positive: inside the window, raising a threshold lowers L0.
    """
    k = ste_kernel((pre - threshold) / bandwidth, kernel_name)
    b = pre.shape[0]
    return -(threshold * (k * grad_f).sum(0) + (l0_coefficient / b) * k.sum(0)) / bandwidth


def ste_hyperparameters(ste: SteConfig, d_in: int) -> dict[str, Any]:
    """Bandwidth, initial threshold (unit-mean-norm units) and L0 weight, in training space."""
    r = math.sqrt(d_in)
    return {
        "bandwidth": ste.bandwidth * r,
        "threshold_init": ste.threshold_init * r,
        "l0_coefficient": ste.l0_coefficient * d_in,
        "kernel": ste.kernel,
    }


class JumpReLUSTE(JumpReLU):
    name = "jumprelu_ste"
    default_for = ("jumprelu",)
    hyperparameters = ("ste",)

    def prepare(self, trainer: Trainer) -> dict[str, torch.nn.Parameter]:
        trainer.ste = h = ste_hyperparameters(trainer.cfg.ste, trainer.d_in)
        return {"threshold": torch.nn.Parameter(torch.full((trainer.d_sae,), h["threshold_init"]))}

    def allocate(self, trainer: Trainer, d: int, m: int, B: int) -> None:
        super().allocate(trainer, d, m, B)
        trainer.kbuf = torch.empty(B, m)

    def mask_threshold(self, trainer: Trainer) -> torch.Tensor | float:
        return trainer.threshold

    def penalty(
        self, t: Trainer, pre: torch.Tensor, f: torch.Tensor, gf: torch.Tensor, l0: float, b: int
    ) -> float:
        """``lambda * L0``; its STE gradient goes to the threshold only."""
        self._threshold_grad(t, pre, gf, b)
        return t.ste["l0_coefficient"] * l0

    def _threshold_grad(self, t: Trainer, pre: torch.Tensor, gf: torch.Tensor, b: int) -> None:
        """:func:`ste_threshold_grad` into ``theta.grad`` in preallocated buffers; overwrites ``pre``."""
        h, threshold = t.ste, t.threshold
        eps = h["bandwidth"]
        kmat = torch.sub(pre, threshold, out=t.kbuf[:b])
        if h["kernel"] == "rectangle":
            kmat.abs_()
            torch.lt(kmat, 0.5 * eps, out=kmat)
        else:
            kmat.mul_(kmat).mul_(-0.5 / (eps * eps)).exp_().mul_(1.0 / math.sqrt(2.0 * math.pi))
        ksum = kmat.sum(0)
        kg = torch.mul(kmat, gf, out=pre).sum(0)
        kg.mul_(threshold).add_(ksum, alpha=h["l0_coefficient"] / b).mul_(-1.0 / eps)
        threshold.grad.copy_(kg)

    def after_step(self, trainer: Trainer) -> None:
        trainer.threshold.clamp_(min=0.0)

    def history_facts(self, trainer: Trainer) -> dict[str, Any]:
        return {"ste_training_space": dict(trainer.ste)}


SPEC = JumpReLUSTE()
