"""The hand-written training step of the book's SAEs: forward, backward and Adam, fused.

:class:`FastSAETrainer` holds one SAE's parameters in training space (inputs already scaled, see
:mod:`lib.sae_trainer`) and updates them with its own forward and backward passes (no autograd,
no recomputation): every buffer is allocated once, Adam is PyTorch's fused kernel called once
per step (:class:`FusedAdam`), and a TopK SAE touches the ``d_sae - k`` unselected latents only
in the encoder matmul: its latents form a CSR sparse matrix, so decoding, the latent gradient (a
sampled product) and both weight gradients are sparse products over the ``k`` chosen rows. The
passes are checked against autograd in ``tests/test_sae.py``; speed against SAELens in
``tests/benchmarks/bench_sae_train.py``.

Parameters carry the SAE's names (:class:`lib.sae.SAE`): ``W_enc_T`` is ``W_enc`` stored
transposed (``[d_sae, d_in]``, so that one latent's gradient is a row, like the decoder's),
``b_enc``, ``W_dec``, ``b_dec`` and, for the STE JumpReLU, ``threshold``.

Losses (per example, averaged over the batch, as SAELens): ``||x - x^||^2`` plus

- ``topk``: AuxK, ``aux_k_coefficient * scale * ||e^ - (x - x^)||^2`` where ``e^`` decodes the
  top ``d_in // 2`` pre-activations among dead latents (no bias), ``scale = min(n_dead /
  (d_in // 2), 1)``; a latent is dead when it has not fired for one epoch of steps (at most
  1000 steps, SAELens's window);
- ``jumprelu`` (threshold fixed at 0): ``l1_coefficient * sum_j f_j``;
- ``jumprelu_ste``: ``lambda * L0`` with the straight-through estimator of Rajamanoharan et
  al. (2024): the threshold receives ``-(theta/eps) K((pre - theta)/eps)`` through the JumpReLU
  and ``-(1/eps) K((pre - theta)/eps)`` through the step inside L0; no STE gradient reaches the
  pre-activations (DeepMind's variant). ``K`` is the rectangle kernel (default) or a standard
  Gaussian. The threshold is a direct (not log) parameter, projected to ``>= 0`` after each
  step as in SAELens 6: Adam moves a parameter by about ``lr`` per step, so a log threshold
  barely leaves a small initial value within a short run. Bandwidth and initial threshold are
  given for inputs at unit mean norm and the L0 coefficient for an MSE at unit mean norm, so in
  the ``sqrt(d_in)`` training space they are used multiplied by ``sqrt(d_in)``, ``sqrt(d_in)``
  and ``d_in``.

Decoder rows are renormalised to unit norm after every step. Because the rows are always unit
norm when the loss is evaluated, SAELens's weighting of the L1 penalty by decoder-row norms
(``sum_j f_j * ||W_dec_j||``) equals the plain ``sum_j f_j`` used here.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from lib.config import SAEConfig, SteConfig
from lib.sae import SAE, check_architecture

DEAD_WINDOW_MAX_STEPS = 1000


# ----- the STE pieces, shared by the step and the tests ------------------------------------------
def kernel(u: torch.Tensor, name: str) -> torch.Tensor:
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
    k = kernel((pre - threshold) / bandwidth, kernel_name)
    b = pre.shape[0]
    return -(threshold * (k * grad_f).sum(0) + (l0_coefficient / b) * k.sum(0)) / bandwidth


def ste_hyperparameters(ste: SteConfig, d_in: int) -> dict[str, float]:
    """Bandwidth, initial threshold (unit-mean-norm units) and L0 weight, in training space."""
    r = math.sqrt(d_in)
    return {
        "bandwidth": ste.bandwidth * r,
        "threshold_init": ste.threshold_init * r,
        "l0_coefficient": ste.l0_coefficient * d_in,
        "kernel": ste.kernel,
    }


# ----- the step ------------------------------------------------------------------------------------
class FastSAETrainer:
    """Adam on one SAE with hand-written passes and preallocated buffers.

    Works in training space (inputs already multiplied by ``scale``). ``step(x)`` does one
    update on a ``[b, d_in]`` batch (``b <= batch_size``) and returns the batch's losses;
    :meth:`export` returns the raw-space :class:`lib.sae.SAE`.

    The encoder is stored transposed (``W_enc_T [d_sae, d_in]``) so that gradients of single
    latents are rows, like the decoder's.
    """

    def __init__(
        self,
        d_in: int,
        architecture: str,
        sae_cfg: SAEConfig,
        seed: int,
        scale: float = 1.0,
        b_dec_init: torch.Tensor | None = None,
        dead_window: int = DEAD_WINDOW_MAX_STEPS,
        device: str | torch.device = "cpu",
    ):
        self.arch = check_architecture(architecture)
        self.device = dev = torch.device(device)
        self.cfg = sae_cfg
        self.d_in = d = int(d_in)
        self.d_sae = m = int(d_in * sae_cfg.expansion_factor)
        self.k = int(sae_cfg.k) if architecture == "topk" else None
        if self.k is not None and self.k > m:
            raise ValueError(
                f"sae.k={self.k} exceeds d_sae={m} (d_in={d} x {sae_cfg.expansion_factor})"
            )
        self.scale = float(scale)
        self.B = B = int(sae_cfg.batch_size)
        self.dead_window = max(1, int(dead_window))
        self.n_steps = 0
        gen = torch.Generator().manual_seed(int(seed))  # on the CPU: the same init everywhere
        with torch.no_grad(), torch.device(dev):
            W_dec = torch.randn(m, d, generator=gen, device="cpu").to(dev)
            W_dec /= torch.linalg.vector_norm(W_dec, dim=1, keepdim=True)
            self.W_dec = torch.nn.Parameter(W_dec)
            # W_enc = c * W_dec^T. About half the latents of a (threshold-0 or small-threshold)
            # JumpReLU SAE fire at init, so c = d_in / d_sae keeps the first reconstruction near
            # the input's size instead of overshooting it; TopK (k << d_in) keeps c = 1.
            c = 1.0 if self.arch == "topk" else d / m
            self.W_enc_T = torch.nn.Parameter(W_dec * c)
            self.b_enc = torch.nn.Parameter(torch.zeros(m))
            b_dec = (
                torch.zeros(d)
                if b_dec_init is None
                else b_dec_init.detach().float().to(dev).clone()
            )
            self.b_dec = torch.nn.Parameter(b_dec)
        with torch.device(dev):
            self._allocate(d, m, B)

    def _allocate(self, d: int, m: int, B: int) -> None:
        sae_cfg = self.cfg
        params = [self.W_enc_T, self.b_enc, self.W_dec, self.b_dec]
        self.ste = None
        if self.arch == "jumprelu_ste":
            self.ste = ste_hyperparameters(sae_cfg.ste, d)
            self.threshold = torch.nn.Parameter(torch.full((m,), self.ste["threshold_init"]))
            params.append(self.threshold)
        for p in params:
            p.grad = torch.zeros_like(p)
        self.params = params
        self.opt = FusedAdam(params, sae_cfg.lr)
        # buffers (views [:b] serve short batches)
        self.xc = torch.empty(B, d)
        self.pre = torch.empty(B, m)
        self.e = torch.empty(B, d)
        self.g = torch.empty(B, d)
        self.last_fired = torch.zeros(m, dtype=torch.long)
        self.fired_epoch = torch.zeros(m, dtype=torch.bool)
        if self.arch == "topk":
            k = self.k
            self.tv = torch.empty(B, k)
            self.ti = torch.empty(B, k, dtype=torch.long)
            self.fv = torch.empty(B, k)
            self.recon = torch.empty(B, d)
            i32 = torch.int32
            self.cols32 = torch.empty(B * k, dtype=i32)
            self.crow_f = torch.arange(0, B * k + 1, k, dtype=i32)
            self.crow_t = torch.zeros(m + 1, dtype=i32)
            self.rows32 = torch.arange(B, dtype=i32).repeat_interleave(k)
        else:
            self.f = torch.empty(B, m)
            self.gf = torch.empty(B, m)
            self.mask = torch.empty(B, m)
            self.counts = torch.empty(m)
            if self.arch == "jumprelu_ste":
                self.kbuf = torch.empty(B, m)
            self.recon = torch.empty(B, d)

    # ----- one step ------------------------------------------------------------------------
    @torch.no_grad()
    def loss_and_grads(self, x: torch.Tensor) -> dict[str, float]:
        """Forward and backward pass on a training-space batch; fills each parameter's ``.grad``."""
        if self.arch == "topk":
            return self._step_topk(x)
        return self._step_jumprelu(x)

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One Adam update on a training-space batch ``[b, d_in]``; returns its losses."""
        out = self.loss_and_grads(x)
        self.opt.step()
        # unit-norm decoder rows (and a non-negative threshold)
        norms = torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True)
        self.W_dec.div_(norms.clamp_(min=1e-12))
        if self.arch == "jumprelu_ste":
            self.threshold.clamp_(min=0.0)
        self.n_steps += 1
        return out

    def _dead_latents(self) -> torch.Tensor | None:
        """Indices of latents that have not fired within the dead window (SAELens's rule)."""
        if self.n_steps < self.dead_window:
            return None
        dead = torch.nonzero(self.n_steps - self.last_fired > self.dead_window).view(-1)
        return dead if dead.numel() else None

    def _step_topk(self, x: torch.Tensor) -> dict[str, float]:
        """TopK with the latents as a CSR matrix: every product touches the k chosen rows only.

        Decode is ``F @ W_dec`` (F sparse ``[b, d_sae]`` with k entries per row); the latent
        gradient is F's sparsity pattern sampled from ``g @ W_dec^T``; the decoder and encoder
        gradients are ``F^T @ g`` and ``F_g^T @ (x - b_dec)``, with ``F^T`` built once per step
        by sorting the chosen latent ids.
        """
        b, m, k = x.shape[0], self.d_sae, self.k
        W_enc_T, b_enc, W_dec, b_dec = self.W_enc_T, self.b_enc, self.W_dec, self.b_dec
        g_W_dec, g_W_enc_T, g_b_enc, g_b_dec = W_dec.grad, W_enc_T.grad, b_enc.grad, b_dec.grad
        xc = torch.sub(x, b_dec, out=self.xc[:b])
        pre = torch.addmm(b_enc, xc, W_enc_T.t(), out=self.pre[:b])
        tv, ti = torch.topk(pre, k, dim=1, sorted=False, out=(self.tv[:b], self.ti[:b]))
        fv = torch.clamp(tv, min=0.0, out=self.fv[:b])
        flat = ti.view(-1)
        cols = self.cols32[: b * k]
        cols.copy_(flat)
        with warnings.catch_warnings():  # torch flags its whole CSR API as beta
            warnings.simplefilter("ignore", UserWarning)
            F = torch.sparse_csr_tensor(
                self.crow_f[: b + 1], cols, fv.view(-1), (b, m), check_invariants=False
            )
        recon = torch.addmm(self.recon[:b], F, W_dec, beta=0.0, out=self.recon[:b])
        recon += b_dec
        e = torch.sub(recon, x, out=self.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=self.g[:b])
        gvals = torch.sparse.sampled_addmm(F, g, W_dec.t(), beta=0.0).values().view(b, k)
        gvals.mul_(tv > 0)  # the ReLU comes after the selection
        # F^T in CSR: latents sorted; rows of F^T are latents, columns are batch rows
        order = torch.argsort(flat)
        counts = torch.bincount(flat, minlength=m)
        crow_t = self.crow_t
        crow_t[1:].copy_(torch.cumsum(counts, 0))
        rows_t = torch.index_select(self.rows32[: b * k], 0, order)
        FT = torch.sparse_csr_tensor(
            crow_t, rows_t, fv.view(-1).index_select(0, order), (m, b), check_invariants=False
        )
        torch.addmm(g_W_dec, FT, g, beta=0.0, out=g_W_dec)
        FT = torch.sparse_csr_tensor(
            crow_t, rows_t, gvals.view(-1).index_select(0, order), (m, b), check_invariants=False
        )
        torch.addmm(g_W_enc_T, FT, xc, beta=0.0, out=g_W_enc_T)
        g_b_enc.zero_()
        g_b_enc.index_add_(0, flat, gvals.view(-1))
        aux = self._auxk(x, xc, pre, e, b) if self.cfg.aux_k_coefficient > 0 else 0.0
        torch.sum(g, 0, out=g_b_dec)
        g_b_dec.sub_(g_b_enc @ W_enc_T)
        fired = torch.masked_select(flat, fv.view(-1) > 0)
        self._mark_fired(fired)
        l0 = float(fired.numel()) / b
        return {"loss": mse + aux, "mse": mse, "l0": l0, "aux": aux}

    def _auxk(self, x, xc, pre, e, b) -> float:
        """AuxK on dead latents; adds its gradients in place. Cost grows with the dead count."""
        dead = self._dead_latents()
        if dead is None:
            return 0.0
        n_dead = dead.numel()
        k_aux_full = max(self.d_in // 2, 1)
        scale = min(n_dead / k_aux_full, 1.0)
        k_aux = min(k_aux_full, n_dead)
        coef = self.cfg.aux_k_coefficient * scale
        P = torch.index_select(pre, 1, dead)  # [b, n_dead]
        if k_aux < n_dead:
            av, ai = torch.topk(P, k_aux, dim=1, sorted=False)
            A = torch.zeros_like(P).scatter_(1, ai, av)
            sel = torch.zeros_like(P, dtype=torch.bool).scatter_(1, ai, True)
        else:
            A, sel = P, None
        W_dec_dead = torch.index_select(self.W_dec, 0, dead)  # [n_dead, d]
        diff = A @ W_dec_dead
        diff += e  # e = x^ - x, so (e^ - (x - x^)) = e^ + e
        aux = coef * float(torch.dot(diff.view(-1), diff.view(-1))) / b
        g_aux = diff.mul_(2.0 * coef / b)
        self.W_dec.grad.index_add_(0, dead, A.t() @ g_aux)
        gA = g_aux @ W_dec_dead.t()
        if sel is not None:
            gA.mul_(sel)
        self.W_enc_T.grad.index_add_(0, dead, gA.t() @ xc)
        self.b_enc.grad.index_add_(0, dead, gA.sum(0))
        return aux

    def _step_jumprelu(self, x: torch.Tensor) -> dict[str, float]:
        b = x.shape[0]
        W_enc_T, b_enc, W_dec, b_dec = self.W_enc_T, self.b_enc, self.W_dec, self.b_dec
        ste = self.arch == "jumprelu_ste"
        xc = torch.sub(x, b_dec, out=self.xc[:b])
        pre = torch.addmm(b_enc, xc, W_enc_T.t(), out=self.pre[:b])
        mask = torch.gt(pre, self.threshold if ste else 0.0, out=self.mask[:b])  # float 0/1
        f = torch.mul(pre, mask, out=self.f[:b])
        recon = torch.addmm(b_dec, f, W_dec, out=self.recon[:b])
        e = torch.sub(recon, x, out=self.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=self.g[:b])
        gf = torch.mm(g, W_dec.t(), out=self.gf[:b])
        counts = torch.sum(mask, 0, out=self.counts)
        l0 = float(counts.sum()) / b
        if ste:
            h = self.ste
            self._threshold_grad(pre, gf, b)
            penalty = h["l0_coefficient"] * l0
        else:
            l1 = self.cfg.l1_coefficient
            penalty = l1 * float(f.sum()) / b
            gf.add_(l1 / b)
        torch.mm(f.t(), g, out=W_dec.grad)
        gpre = gf.mul_(mask)
        torch.mm(gpre.t(), xc, out=W_enc_T.grad)
        torch.sum(gpre, 0, out=b_enc.grad)
        torch.sum(g, 0, out=b_dec.grad)
        b_dec.grad.sub_(b_enc.grad @ W_enc_T)
        fired = counts > 0
        self.last_fired.masked_fill_(fired, self.n_steps + 1)
        self.fired_epoch |= fired
        return {"loss": mse + penalty, "mse": mse, "l0": l0, "aux": penalty}

    def _threshold_grad(self, pre: torch.Tensor, gf: torch.Tensor, b: int) -> None:
        """:func:`ste_threshold_grad` into ``theta.grad``, in preallocated buffers.

        Overwrites ``pre`` (no longer needed once the JumpReLU mask is taken).
        """
        h, threshold = self.ste, self.threshold
        eps = h["bandwidth"]
        kmat = torch.sub(pre, threshold, out=self.kbuf[:b])
        if h["kernel"] == "rectangle":
            kmat.abs_()
            torch.lt(kmat, 0.5 * eps, out=kmat)
        else:
            kmat.mul_(kmat).mul_(-0.5 / (eps * eps)).exp_().mul_(1.0 / math.sqrt(2.0 * math.pi))
        ksum = kmat.sum(0)
        kg = torch.mul(kmat, gf, out=pre).sum(0)
        kg.mul_(threshold).add_(ksum, alpha=h["l0_coefficient"] / b).mul_(-1.0 / eps)
        threshold.grad.copy_(kg)

    # ----- bookkeeping -------------------------------------------------------------------------
    def _mark_fired(self, idx: torch.Tensor) -> None:
        self.last_fired.index_fill_(0, idx, self.n_steps + 1)
        self.fired_epoch.index_fill_(0, idx, True)

    def take_epoch_dead_fraction(self) -> float:
        """Fraction of latents that did not fire since the last call; resets the record."""
        frac = 1.0 - float(self.fired_epoch.float().mean())
        self.fired_epoch.zero_()
        return frac

    # ----- export ----------------------------------------------------------------------------
    @torch.no_grad()
    def training_space_sae(self) -> SAE:
        """The SAE as trained, for inputs multiplied by ``scale``."""
        sae = SAE(self.d_in, self.d_sae, self.arch, k=self.k)
        sae.W_enc.copy_(self.W_enc_T.t())
        sae.b_enc.copy_(self.b_enc)
        sae.W_dec.copy_(self.W_dec)
        sae.b_dec.copy_(self.b_dec)
        if self.arch == "jumprelu_ste":
            sae.threshold.copy_(self.threshold)
        return sae

    @torch.no_grad()
    def export(self, meta: dict[str, Any] | None = None) -> SAE:
        """The raw-space SAE: ``s`` folded into ``b_enc``, ``b_dec`` and ``threshold``."""
        sae = self.training_space_sae()
        s = self.scale
        sae.b_enc.div_(s)
        sae.b_dec.div_(s)
        if sae.threshold is not None:
            sae.threshold.div_(s)
        sae.meta.update(meta or {})
        return sae.eval()


class FusedAdam:
    """Adam (betas 0.9/0.999, eps 1e-8, no weight decay) as one fused kernel call per step.

    The same update as ``torch.optim.Adam(fused=True)`` without its per-step Python
    bookkeeping (which costs as much as the kernel for a small SAE). Falls back to
    ``torch.optim.Adam`` (foreach) when this torch build lacks the fused CPU kernel.
    """

    def __init__(
        self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8
    ):
        self.params = params
        self.lr, self.betas, self.eps = float(lr), betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]
        self._fallback = None
        if not hasattr(torch, "_fused_adam_"):
            self._fallback = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, foreach=True)

    @torch.no_grad()
    def step(self) -> None:
        if self._fallback is not None:
            self._fallback.step()
            return
        torch._foreach_add_(self.steps, 1)
        torch._fused_adam_(
            self.params,
            [p.grad for p in self.params],
            self.exp_avg,
            self.exp_avg_sq,
            [],
            self.steps,
            amsgrad=False,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )
