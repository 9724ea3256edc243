"""TopK (Gao et al. 2024): keep the ``k`` largest pre-activations of each input, then ReLU them.

Encode, as SAELens 6: select the ``k`` largest pre-activations first and apply the ReLU to the
selected values, so a selected negative pre-activation gives 0. SAELens name ``topk``; the
export writes ``k`` and ``rescale_acts_by_decoder_norm`` (true for unit-norm decoder rows, where
SAELens's rescaling is the identity, so ``sae.fold_W_dec_norm()`` works on our exports), and a
SAELens folder with non-unit rows and the rescaling on has the row norms folded in on load.

Training (hyperparameters ``k``, ``aux_k_coefficient``, ``topk_variant``): ``||x - x^||^2`` plus
AuxK on the latents that have not fired for one epoch of steps (at most 1000 steps, SAELens's
window): ``e^`` decodes the top ``d_in // 2`` pre-activations among them (no bias) and is fitted
to the residual ``r = x - x^``. Two variants (``sae.topk_variant``):

* ``saelens`` (default; SAELens 6 and sparsify): ``aux_k_coefficient * min(n_dead / (d_in //
  2), 1) * ||e^ - r||^2``, the selected pre-activations used as they are;
* ``openai`` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", and their
  reference code): ``aux_k_coefficient * V * sum_b ||e^_b - r_b||^2 / sum_b ||r_b - mean(r)||^2``,
  the AuxK MSE normalised by the batch residual's variance (``V``, the training data's variance
  per example, only expresses it in this loss's units), the selected values ReLU'd; and before
  every Adam step the decoder gradient loses its component along each (unit-norm) decoder row,
  ``G_j -= <G_j, W_j> W_j``, so the step moves rows along the sphere they are projected back to.

The step touches the ``d_sae - k`` unselected latents only in the encoder matmul: the latents
form a CSR sparse matrix ``F`` ``[b, d_sae]`` (``k`` entries per row, column indices sorted), so
decoding is ``F @ W_dec``, the latent gradient is F's pattern sampled from ``g @ W_dec^T``, and
the decoder and encoder gradients are ``F^T @ g`` and ``F_g^T @ (x - b_dec)``, with ``F^T``
built once per step by a stable sort of the chosen latent ids (so each of its rows lists batch
rows in increasing order). Without CSR support ``F`` and ``F_g`` are dense matrices. The encoder
starts as ``W_dec^T`` (gain 1).
"""

from __future__ import annotations

from typing import Any

import torch

from lib.sae.architectures.spec import UNIT_ROW_ATOL, ArchitectureSpec, Trainer, has_unit_rows


class TopK(ArchitectureSpec):
    name = "topk"
    saelens_name = "topk"
    reads = {"topk": ()}
    default_for = ("topk",)
    uses_k = True
    hyperparameters = ("k", "aux_k_coefficient", "topk_variant")
    dense_decode = False

    # ----- the model and its format ------------------------------------------------------------
    def activation(self, sae: Any, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = torch.topk(pre, sae.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def cfg_fields(self, sae: Any) -> dict[str, Any]:
        # With unit-norm rows SAELens's rescaling is the identity, and writing true lets a user
        # call sae.fold_W_dec_norm() (SAELens refuses it for a TopK SAE without it).
        return {"k": sae.k, "rescale_acts_by_decoder_norm": has_unit_rows(sae.W_dec)}

    def check_cfg(self, cfg: dict[str, Any]) -> str | None:
        return None if "k" in cfg else "a topk SAE needs 'k' (SAELens would silently use 100)"

    def fold_loaded(self, cfg, W_enc, b_enc, W_dec):
        if not cfg.get("rescale_acts_by_decoder_norm", False):
            return W_enc, b_enc, W_dec
        # SAELens multiplies pre-activations by the decoder row norms and divides the latents by
        # them before decoding; folding the norms into the weights gives the same maps exactly
        # (nothing to fold when the rows are unit norm already, as in our exports).
        norms = W_dec.norm(dim=-1).clamp(min=1e-8)
        if bool(((norms - 1.0).abs() <= UNIT_ROW_ATOL).all()):
            return W_enc, b_enc, W_dec
        return W_enc * norms, b_enc * norms, W_dec / norms[:, None]

    # ----- training ----------------------------------------------------------------------------
    def encoder_gain(self, d_in: int, d_sae: int) -> float:
        return 1.0  # k << d_in latents fire: no overshoot to correct

    def prepare(self, trainer: Trainer) -> dict[str, torch.nn.Parameter]:
        trainer.openai = trainer.cfg.topk_variant == "openai"
        return {}

    def allocate(self, trainer: Trainer, d: int, m: int, B: int) -> None:
        t, k, i32 = trainer, trainer.k, torch.int32
        t.tv, t.tvs = torch.empty(B, k), torch.empty(B, k)
        t.ti, t.si = (torch.empty(B, k, dtype=torch.long) for _ in range(2))
        t.order = torch.empty(B, k, dtype=torch.long)
        t.cols32 = torch.empty(B * k, dtype=i32)
        t.crow_f = torch.arange(0, B * k + 1, k, dtype=i32)
        t.crow_t = torch.zeros(m + 1, dtype=i32)
        t.rows32 = torch.arange(B, dtype=i32).repeat_interleave(k)
        if not t.sparse:
            t.dense_f, t.dense_g = torch.empty(B, m), torch.empty(B, m)

    def loss_and_grads(self, trainer: Trainer, x: torch.Tensor) -> dict[str, float]:
        out = self._step(trainer, x)
        if trainer.openai:  # the TopK paper: no gradient along the (unit-norm) decoder rows
            W, G = trainer.W_dec, trainer.W_dec.grad
            G.addcmul_(W, torch.einsum("md,md->m", G, W).unsqueeze(1), value=-1.0)
        return out

    def _step(self, t: Trainer, x: torch.Tensor) -> dict[str, float]:
        """MSE and AuxK with the latents as a CSR matrix (see the module docstring)."""
        b, m, k = x.shape[0], t.d_sae, t.k
        W_enc_T, b_enc, W_dec, b_dec = t.W_enc_T, t.b_enc, t.W_dec, t.b_dec
        g_W_dec, g_W_enc_T, g_b_enc, g_b_dec = W_dec.grad, W_enc_T.grad, b_enc.grad, b_dec.grad
        xc = torch.sub(x, b_dec, out=t.xc[:b])
        pre = t.mm(xc, t.W_enc_mm.t(), t.pre[:b], bias=b_enc)
        tv, ti = torch.topk(pre, k, dim=1, sorted=False, out=(t.tv[:b], t.ti[:b]))
        si, order = torch.sort(ti, dim=1, out=(t.si[:b], t.order[:b]))
        tv = torch.gather(tv, 1, order, out=t.tvs[:b])  # values in sorted-id order
        fv = tv.clamp(min=0.0)  # the ReLU comes after the selection
        flat = si.view(-1)
        if t.sparse:
            cols = t.cols32[: b * k]
            cols.copy_(flat)
            F = t.csr(t.crow_f[: b + 1], cols, fv.view(-1), (b, m))
            recon = torch.addmm(t.recon[:b], F, W_dec, beta=0.0, out=t.recon[:b])
        else:
            F = t.dense_f[:b].zero_().scatter_(1, si, fv)
            recon = torch.mm(F, W_dec, out=t.recon[:b])
        recon += b_dec
        e = torch.sub(recon, x, out=t.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=t.g[:b])
        if t.sparse:
            gvals = torch.sparse.sampled_addmm(F, g, W_dec.t(), beta=0.0).values().view(b, k)
        else:
            gvals = torch.mm(g, W_dec.t()).gather(1, si)
        gvals.mul_(tv > 0)
        if t.sparse:
            order_t = torch.argsort(flat, stable=True)
            counts = torch.bincount(flat, minlength=m)
            crow_t = t.crow_t
            crow_t[1:].copy_(torch.cumsum(counts, 0))
            rows_t = torch.index_select(t.rows32[: b * k], 0, order_t)
            FT = t.csr(crow_t, rows_t, fv.view(-1).index_select(0, order_t), (m, b))
            torch.addmm(g_W_dec, FT, g, beta=0.0, out=g_W_dec)
            FT = t.csr(crow_t, rows_t, gvals.view(-1).index_select(0, order_t), (m, b))
            torch.addmm(g_W_enc_T, FT, xc, beta=0.0, out=g_W_enc_T)
        else:
            torch.mm(F.t(), g, out=g_W_dec)
            G = t.dense_g[:b].zero_().scatter_(1, si, gvals)
            torch.mm(G.t(), xc, out=g_W_enc_T)
        g_b_enc.zero_()
        g_b_enc.index_add_(0, flat, gvals.view(-1))
        aux = self._auxk(t, x, xc, pre, e, b) if t.cfg.aux_k_coefficient > 0 else 0.0
        torch.sum(g, 0, out=g_b_dec)
        g_b_dec.sub_(g_b_enc @ W_enc_T)
        fired = torch.masked_select(flat, fv.view(-1) > 0)
        t.mark_fired(fired)
        l0 = float(fired.numel()) / b
        return {"loss": mse + aux, "mse": mse, "l0": l0, "aux": aux}

    def _auxk(self, t: Trainer, x, xc, pre, e, b) -> float:
        """AuxK on dead latents; adds its gradients in place. Cost grows with the dead count."""
        dead = t.dead_latents()
        if dead is None:
            return 0.0
        n_dead = dead.numel()
        k_aux_full = max(t.d_in // 2, 1)
        k_aux = min(k_aux_full, n_dead)
        if t.openai:  # normalised by the residual's variance (e = -r), in this loss's units
            r_var = float((e - e.mean(0)).pow(2).sum())
            if not r_var > 0:
                return 0.0
            v = t.data_variance
            v = float((x - x.mean(0)).pow(2).sum()) / b if v is None else v
            coef = t.cfg.aux_k_coefficient * v * b / r_var
        else:
            coef = t.cfg.aux_k_coefficient * min(n_dead / k_aux_full, 1.0)
        P = torch.index_select(pre, 1, dead)  # [b, n_dead]
        if k_aux < n_dead:
            av, ai = torch.topk(P, k_aux, dim=1, sorted=False)
            A = torch.zeros_like(P).scatter_(1, ai, av)
            sel = torch.zeros_like(P, dtype=torch.bool).scatter_(1, ai, True)
        else:
            A, sel = P, None
        if t.openai:  # ReLU'd selection: unselected entries are 0 and stay out of the mask
            sel = A > 0
            A = A.clamp(min=0.0)
        W_dec_dead = torch.index_select(t.W_dec, 0, dead)  # [n_dead, d]
        diff = A @ W_dec_dead
        diff += e  # e = x^ - x, so (e^ - (x - x^)) = e^ + e
        aux = coef * float(torch.dot(diff.view(-1), diff.view(-1))) / b
        g_aux = diff.mul_(2.0 * coef / b)
        t.W_dec.grad.index_add_(0, dead, A.t() @ g_aux)
        gA = g_aux @ W_dec_dead.t()
        if sel is not None:
            gA.mul_(sel)
        t.W_enc_T.grad.index_add_(0, dead, gA.t() @ xc)
        t.b_enc.grad.index_add_(0, dead, gA.sum(0))
        return aux


SPEC = TopK()
