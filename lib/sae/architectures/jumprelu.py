"""The study's JumpReLU, threshold fixed at 0 and trained with an L1 penalty: a ReLU SAE.

Encode: ``relu(pre) * (pre > threshold)`` with a per-latent ``threshold`` that this architecture
never trains (it stays 0: the study's "threshold bug"). SAELens name ``jumprelu``, so the export
writes the zero ``threshold`` tensor; SAELens ``standard`` (ReLU) folders load as this
architecture too, their threshold zero.

Training (hyperparameter ``l1_coefficient``): ``||x - x^||^2 + l1_coefficient * sum_j f_j`` per
example, averaged over the batch. Decoder rows are renormalised to unit norm after every step,
so SAELens's weighting of the L1 penalty by decoder-row norms (``sum_j f_j * ||W_dec_j||``)
equals the plain ``sum_j f_j`` here. The step is dense: five matmuls (encode, decode, the latent
gradient, both weight gradients), on bfloat16 copies of the operands with ``sae.matmul_dtype:
bfloat16``. The encoder starts as ``(d_in / d_sae) * W_dec^T``.

:class:`JumpReLU` is also the base of :mod:`lib.sae.architectures.jumprelu_ste`, which shares its
forward and backward passes and replaces the penalty (:meth:`JumpReLU.penalty`) and the mask's
threshold (:meth:`JumpReLU.mask_threshold`).
"""

from __future__ import annotations

from typing import Any

import torch

from lib.sae.architectures.spec import ArchitectureSpec, Trainer


class JumpReLU(ArchitectureSpec):
    name = "jumprelu"
    saelens_name = "jumprelu"
    reads = {"jumprelu": ("threshold",), "standard": ()}
    default_for = ("standard",)
    latent_params = ("threshold",)
    hyperparameters = ("l1_coefficient",)

    def activation(self, sae: Any, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu() * (pre > sae.threshold).to(pre.dtype)

    # ----- training ----------------------------------------------------------------------------
    def allocate(self, trainer: Trainer, d: int, m: int, B: int) -> None:
        t = trainer
        t.f, t.gf, t.mask = (torch.empty(B, m) for _ in range(3))
        t.counts = torch.empty(m)

    def mask_threshold(self, trainer: Trainer) -> torch.Tensor | float:
        """The threshold the pre-activations must exceed in training (0 here)."""
        return 0.0

    def penalty(
        self, t: Trainer, pre: torch.Tensor, f: torch.Tensor, gf: torch.Tensor, l0: float, b: int
    ) -> float:
        """The sparsity penalty of the batch; adds its gradient to ``gf`` (d loss / d latents)
        and to any parameter of its own. ``pre`` may be overwritten."""
        l1 = t.cfg.l1_coefficient
        gf.add_(l1 / b)
        return l1 * float(f.sum()) / b

    def loss_and_grads(self, trainer: Trainer, x: torch.Tensor) -> dict[str, float]:
        t, b = trainer, x.shape[0]
        W_enc_T, b_enc, W_dec, b_dec = t.W_enc_T, t.b_enc, t.W_dec, t.b_dec
        xc = torch.sub(x, b_dec, out=t.xc[:b])
        pre = t.mm(xc, t.W_enc_mm.t(), t.pre[:b], bias=b_enc)
        mask = torch.gt(pre, self.mask_threshold(t), out=t.mask[:b])  # float 0/1
        f = torch.mul(pre, mask, out=t.f[:b])
        recon = t.mm(f, t.W_decT_mm.t(), t.recon[:b], bias=b_dec)
        e = torch.sub(recon, x, out=t.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=t.g[:b])
        gf = t.mm(g, t.W_dec_mm.t(), t.gf[:b])
        counts = torch.sum(mask, 0, out=t.counts)
        l0 = float(counts.sum()) / b
        penalty = self.penalty(t, pre, f, gf, l0, b)
        t.mm(f.t(), g, W_dec.grad)
        gpre = gf.mul_(mask)
        t.mm(gpre.t(), xc, W_enc_T.grad)
        torch.sum(gpre, 0, out=b_enc.grad)
        torch.sum(g, 0, out=b_dec.grad)
        b_dec.grad.sub_(b_enc.grad @ W_enc_T)
        t.mark_fired_mask(counts > 0)
        return {"loss": mse + penalty, "mse": mse, "l0": l0, "aux": penalty}


SPEC = JumpReLU()
