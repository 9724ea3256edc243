"""Training the study's SAEs fast on a CPU, and the grid stage of notebook 04.

:func:`train_sae` trains one SAE on a ``[N, d_in]`` float32 tensor and returns it ready for raw
activations, with a history dict. The trainer writes its own forward and backward passes (no
autograd, no recomputation): every buffer is allocated once, Adam is PyTorch's fused kernel
called once per step, and a TopK SAE touches the ``d_sae - k`` unselected latents only in the
encoder matmul: its latents form a CSR sparse matrix, so decoding, the latent gradient (a
sampled product) and both weight gradients are sparse products over the ``k`` chosen rows. The
passes are checked against autograd in ``tests/test_sae.py``; speed against SAELens in
``tests/benchmarks/bench_sae_train.py``. Small SAEs (fewer than ~1M encoder weights) train
single-threaded: there a second thread only adds synchronisation.

Training recipe (study defaults in :class:`lib.config.SAEConfig`):

* Inputs are scaled by one factor ``s`` so that their mean norm is ``sqrt(d_in)`` (SAELens's
  ``expected_average_only_in`` convention). At the end ``s`` is folded into the biases and the
  threshold (``b_enc/s``, ``b_dec/s``, ``threshold/s``; ``W_enc`` and ``W_dec`` unchanged), so
  the returned SAE takes raw activations, keeps unit-norm decoder rows, and its latent values
  are in raw activation units.
* Adam (betas 0.9/0.999), constant learning rate, no gradient clipping; one shuffled pass over
  the data per epoch (a permutation of row indices per epoch); the last short batch is used.
* Decoder rows are renormalised to unit norm after every step. Because the rows are always unit
  norm at the time the loss is evaluated, SAELens's weighting of the L1 penalty by decoder-row
  norms (``sum_j f_j * ||W_dec_j||``) equals the plain ``sum_j f_j`` used here.
* Init: decoder rows random unit vectors, ``W_enc = c * W_dec^T`` (``c = 1`` for TopK,
  ``d_in / d_sae`` for the JumpReLU kinds), ``b_enc = 0``, ``b_dec`` = mean training vector (in
  training space).
* Losses (per example, averaged over the batch, as SAELens): ``||x - x^||^2`` plus

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
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib.config import CONDITIONS, SAEConfig, SteConfig
from lib.dataset import training_vectors  # re-exported for notebook 04
from lib.sae import ARCHITECTURES, SAE, check_architecture

DEAD_WINDOW_MAX_STEPS = 1000
# Below this many encoder weights a step is a few hundred small kernels; a second thread only
# adds synchronisation (and on 2 shared cores, waits), so small SAEs train single-threaded.
SINGLE_THREAD_BELOW = 1 << 20


# ----- the STE pieces, shared by the trainer and the tests ------------------------------------------
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


def scale_factor(x: torch.Tensor) -> float:
    """The factor that brings the mean row norm of ``x`` to ``sqrt(d_in)``."""
    mean_norm = float(torch.linalg.vector_norm(x, dim=1).double().mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"training activations have mean norm {mean_norm}; cannot normalise them")
    return math.sqrt(x.shape[1]) / mean_norm


# ----- the trainer ------------------------------------------------------------------------------------
class FastSAETrainer:
    """Adam on one SAE with hand-written passes and preallocated buffers.

    Works in training space (inputs already multiplied by ``scale``). ``step(x)`` does one
    update on a ``[b, d_in]`` batch (``b <= batch_size``) and returns the batch's losses;
    :meth:`export` returns the raw-space :class:`lib.sae.SAE`.

    Internally the encoder is stored transposed (``W_encT [d_sae, d_in]``) so that gradients of
    single latents are rows, like the decoder's.
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
        sparse_topk: bool = True,
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
        self.sparse_topk = sparse_topk
        self.n_steps = 0
        gen = torch.Generator().manual_seed(int(seed))  # on the CPU: the same init everywhere
        with torch.no_grad(), torch.device(dev):
            Wd = torch.randn(m, d, generator=gen, device="cpu").to(dev)
            Wd /= torch.linalg.vector_norm(Wd, dim=1, keepdim=True)
            self.Wd = torch.nn.Parameter(Wd)
            # W_enc = c * W_dec^T. About half the latents of a (threshold-0 or small-threshold)
            # JumpReLU SAE fire at init, so c = d_in / d_sae keeps the first reconstruction near
            # the input's size instead of overshooting it; TopK (k << d_in) keeps c = 1.
            c = 1.0 if self.arch == "topk" else d / m
            self.Wt = torch.nn.Parameter(Wd * c)
            self.be = torch.nn.Parameter(torch.zeros(m))
            bd = (
                torch.zeros(d)
                if b_dec_init is None
                else b_dec_init.detach().float().to(dev).clone()
            )
            self.bd = torch.nn.Parameter(bd)
        with torch.device(dev):
            self._allocate(d, m, B, sparse_topk)

    def _allocate(self, d: int, m: int, B: int, sparse_topk: bool) -> None:
        sae_cfg = self.cfg
        params = [self.Wt, self.be, self.Wd, self.bd]
        self.ste = None
        if self.arch == "jumprelu_ste":
            self.ste = ste_hyperparameters(sae_cfg.ste, d)
            self.theta = torch.nn.Parameter(torch.full((m,), self.ste["threshold_init"]))
            params.append(self.theta)
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
            if sparse_topk:
                i32 = torch.int32
                self.cols32 = torch.empty(B * k, dtype=i32)
                self.crow_f = torch.arange(0, B * k + 1, k, dtype=i32)
                self.crow_t = torch.zeros(m + 1, dtype=i32)
                self.rows32 = torch.arange(B, dtype=i32).repeat_interleave(k)
            else:
                self.fd = torch.zeros(B, m)
                self.gf = torch.empty(B, m)
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
            return self._step_topk_sparse(x) if self.sparse_topk else self._step_topk_dense(x)
        return self._step_jumprelu(x)

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One Adam update on a training-space batch ``[b, d_in]``; returns its losses."""
        out = self.loss_and_grads(x)
        self.opt.step()
        # unit-norm decoder rows (and a non-negative threshold)
        norms = torch.linalg.vector_norm(self.Wd, dim=1, keepdim=True)
        self.Wd.div_(norms.clamp_(min=1e-12))
        if self.arch == "jumprelu_ste":
            self.theta.clamp_(min=0.0)
        self.n_steps += 1
        return out

    def _dead_latents(self) -> torch.Tensor | None:
        """Indices of latents that have not fired within the dead window (SAELens's rule)."""
        if self.n_steps < self.dead_window:
            return None
        dead = torch.nonzero(self.n_steps - self.last_fired > self.dead_window).view(-1)
        return dead if dead.numel() else None

    def _step_topk_sparse(self, x: torch.Tensor) -> dict[str, float]:
        """TopK with the latents as a CSR matrix: every product touches the k chosen rows only.

        Decode is ``F @ W_dec`` (F sparse ``[b, d_sae]`` with k entries per row); the latent
        gradient is F's sparsity pattern sampled from ``g @ W_dec^T``; the decoder and encoder
        gradients are ``F^T @ g`` and ``F_g^T @ (x - b_dec)``, with ``F^T`` built once per step
        by sorting the chosen latent ids.
        """
        b, m, k = x.shape[0], self.d_sae, self.k
        Wt, be, Wd, bd = self.Wt, self.be, self.Wd, self.bd
        gWd, gWt, gbe, gbd = Wd.grad, Wt.grad, be.grad, bd.grad
        xc = torch.sub(x, bd, out=self.xc[:b])
        pre = torch.addmm(be, xc, Wt.t(), out=self.pre[:b])
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
        recon = torch.addmm(self.recon[:b], F, Wd, beta=0.0, out=self.recon[:b])
        recon += bd
        e = torch.sub(recon, x, out=self.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=self.g[:b])
        gvals = torch.sparse.sampled_addmm(F, g, Wd.t(), beta=0.0).values().view(b, k)
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
        torch.addmm(gWd, FT, g, beta=0.0, out=gWd)
        FT = torch.sparse_csr_tensor(
            crow_t, rows_t, gvals.view(-1).index_select(0, order), (m, b), check_invariants=False
        )
        torch.addmm(gWt, FT, xc, beta=0.0, out=gWt)
        gbe.zero_()
        gbe.index_add_(0, flat, gvals.view(-1))
        aux = self._auxk(x, xc, pre, e, b) if self.cfg.aux_k_coefficient > 0 else 0.0
        torch.sum(g, 0, out=gbd)
        gbd.sub_(gbe @ Wt)
        fired = torch.masked_select(flat, fv.view(-1) > 0)
        self._mark_fired(fired)
        l0 = float(fired.numel()) / b
        return {"loss": mse + aux, "mse": mse, "l0": l0, "aux": aux}

    def _step_topk_dense(self, x: torch.Tensor) -> dict[str, float]:
        """The same maths with dense [b, d_sae] latents (the reference the tests check against)."""
        b, k = x.shape[0], self.k
        Wt, be, Wd, bd = self.Wt, self.be, self.Wd, self.bd
        xc = torch.sub(x, bd, out=self.xc[:b])
        pre = torch.addmm(be, xc, Wt.t(), out=self.pre[:b])
        tv, ti = torch.topk(pre, k, dim=1, sorted=False, out=(self.tv[:b], self.ti[:b]))
        fv = torch.clamp(tv, min=0.0, out=self.fv[:b])
        fd = self.fd[:b]
        fd.zero_()
        fd.scatter_(1, ti, fv)
        recon = torch.addmm(bd, fd, Wd, out=self.recon[:b])
        e = torch.sub(recon, x, out=self.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=self.g[:b])
        gf = torch.mm(g, Wd.t(), out=self.gf[:b])
        gvals = torch.gather(gf, 1, ti) * (tv > 0)
        gpre = fd  # reuse: the gradient of the pre-activations, non-zero at the selection only
        torch.mm(fd.t(), g, out=Wd.grad)
        gpre.zero_()
        gpre.scatter_(1, ti, gvals)
        torch.mm(gpre.t(), xc, out=Wt.grad)
        torch.sum(gpre, 0, out=be.grad)
        aux = self._auxk(x, xc, pre, e, b) if self.cfg.aux_k_coefficient > 0 else 0.0
        torch.sum(g, 0, out=bd.grad)
        bd.grad.sub_(be.grad @ Wt)
        fired = ti.view(-1)[fv.view(-1) > 0]
        self._mark_fired(fired)
        return {"loss": mse + aux, "mse": mse, "l0": float(fired.numel()) / b, "aux": aux}

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
        Wd_dead = torch.index_select(self.Wd, 0, dead)  # [n_dead, d]
        diff = A @ Wd_dead
        diff += e  # e = x^ - x, so (e^ - (x - x^)) = e^ + e
        aux = coef * float(torch.dot(diff.view(-1), diff.view(-1))) / b
        g_aux = diff.mul_(2.0 * coef / b)
        self.Wd.grad.index_add_(0, dead, A.t() @ g_aux)
        gA = g_aux @ Wd_dead.t()
        if sel is not None:
            gA.mul_(sel)
        self.Wt.grad.index_add_(0, dead, gA.t() @ xc)
        self.be.grad.index_add_(0, dead, gA.sum(0))
        return aux

    def _step_jumprelu(self, x: torch.Tensor) -> dict[str, float]:
        b = x.shape[0]
        Wt, be, Wd, bd = self.Wt, self.be, self.Wd, self.bd
        ste = self.arch == "jumprelu_ste"
        xc = torch.sub(x, bd, out=self.xc[:b])
        pre = torch.addmm(be, xc, Wt.t(), out=self.pre[:b])
        mask = torch.gt(pre, self.theta if ste else 0.0, out=self.mask[:b])  # float 0/1
        f = torch.mul(pre, mask, out=self.f[:b])
        recon = torch.addmm(bd, f, Wd, out=self.recon[:b])
        e = torch.sub(recon, x, out=self.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=self.g[:b])
        gf = torch.mm(g, Wd.t(), out=self.gf[:b])
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
        torch.mm(f.t(), g, out=Wd.grad)
        gpre = gf.mul_(mask)
        torch.mm(gpre.t(), xc, out=Wt.grad)
        torch.sum(gpre, 0, out=be.grad)
        torch.sum(g, 0, out=bd.grad)
        bd.grad.sub_(be.grad @ Wt)
        fired = counts > 0
        self.last_fired.masked_fill_(fired, self.n_steps + 1)
        self.fired_epoch |= fired
        return {"loss": mse + penalty, "mse": mse, "l0": l0, "aux": penalty}

    def _threshold_grad(self, pre: torch.Tensor, gf: torch.Tensor, b: int) -> None:
        """:func:`ste_threshold_grad` into ``theta.grad``, in preallocated buffers.

        Overwrites ``pre`` (no longer needed once the JumpReLU mask is taken).
        """
        h, theta = self.ste, self.theta
        eps = h["bandwidth"]
        kmat = torch.sub(pre, theta, out=self.kbuf[:b])
        if h["kernel"] == "rectangle":
            kmat.abs_()
            torch.lt(kmat, 0.5 * eps, out=kmat)
        else:
            kmat.mul_(kmat).mul_(-0.5 / (eps * eps)).exp_().mul_(1.0 / math.sqrt(2.0 * math.pi))
        ksum = kmat.sum(0)
        kg = torch.mul(kmat, gf, out=pre).sum(0)
        kg.mul_(theta).add_(ksum, alpha=h["l0_coefficient"] / b).mul_(-1.0 / eps)
        theta.grad.copy_(kg)

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
        sae.W_enc.copy_(self.Wt.t())
        sae.b_enc.copy_(self.be)
        sae.W_dec.copy_(self.Wd)
        sae.b_dec.copy_(self.bd)
        if self.arch == "jumprelu_ste":
            sae.threshold.copy_(self.theta)
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


# ----- the public entry point ------------------------------------------------------------------------
def check_training_input(x: torch.Tensor, d_in: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [N, d_in], got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be a non-empty [N, d_in] tensor; got shape {tuple(x.shape)}")
    if d_in is not None and x.shape[1] != d_in:
        raise ValueError(f"x has width {x.shape[1]} but d_in={d_in} was expected")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    x = x.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise ValueError(f"x has {bad} row(s) with NaN or inf values")
    return x.contiguous()


def train_sae(
    x: torch.Tensor,
    architecture: str,
    sae_cfg: SAEConfig,
    seed: int,
    progress: bool = True,
    *,
    epochs: int | None = None,
    meta: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[SAE, dict]:
    """Train one SAE on ``x`` ``[N, d_in]`` (float32, raw activations).

    ``architecture`` is ``topk``, ``jumprelu`` (threshold 0, L1) or ``jumprelu_ste``; all other
    settings come from ``sae_cfg`` (``epochs`` overrides ``sae_cfg.epochs``). The same seed and
    data give identical weights. ``device`` is where training runs (CPU by default; the CUDA
    path uses the same operations but is not tested on this project's machines). Returns ``(sae, history)``: the SAE takes raw activations
    (``sae.encode(x) -> [N, d_sae]``); ``history`` holds ``step_loss``/``step_l0`` (per step),
    ``epoch_loss``/``epoch_mse``/``epoch_l0``/``epoch_fvu``/``epoch_dead_fraction`` (per epoch,
    dead = no activation during that epoch), ``steps``, ``epochs``, ``seconds``, ``n_train``,
    ``scale`` and the training-space STE settings.
    """
    from tqdm.auto import tqdm

    check_architecture(architecture)
    x = check_training_input(x)
    n, d = x.shape
    n_epochs = int(epochs if epochs is not None else sae_cfg.epochs)
    if n_epochs < 1:
        raise ValueError(f"epochs={n_epochs} must be >= 1")
    t0 = time.perf_counter()
    s = scale_factor(x)
    dev = torch.device(device)
    xs = (x * s).to(dev)
    B = int(sae_cfg.batch_size)
    steps_per_epoch = math.ceil(n / B)
    trainer = FastSAETrainer(
        d,
        architecture,
        sae_cfg,
        seed,
        scale=s,
        b_dec_init=xs.mean(0),
        dead_window=min(steps_per_epoch, DEAD_WINDOW_MAX_STEPS),
        sparse_topk=True,
        device=dev,
    )
    total_var = float((xs - xs.mean(0)).pow(2).sum(1).mean())
    old_threads = torch.get_num_threads()
    if d * trainer.d_sae < SINGLE_THREAD_BELOW and dev.type == "cpu":
        torch.set_num_threads(1)
    xb = torch.empty(B, d, device=dev)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    hist: dict[str, Any] = {
        k: []
        for k in (
            "step_loss",
            "step_l0",
            "epoch_loss",
            "epoch_mse",
            "epoch_l0",
            "epoch_fvu",
            "epoch_dead_fraction",
        )
    }
    bar = tqdm(
        total=n_epochs * steps_per_epoch,
        desc=f"SAE {architecture}",
        disable=not progress,
        leave=False,
    )
    try:
        for _ in range(n_epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            sums = {"loss": 0.0, "mse": 0.0, "l0": 0.0}
            for i in range(0, n, B):
                idx = perm[i : i + B]
                b = idx.numel()
                batch = torch.index_select(xs, 0, idx, out=xb[:b])
                out = trainer.step(batch)
                hist["step_loss"].append(out["loss"])
                hist["step_l0"].append(out["l0"])
                for key in sums:
                    sums[key] += out[key] * b
            dead = trainer.take_epoch_dead_fraction()
            ep = {key: v / n for key, v in sums.items()}
            hist["epoch_loss"].append(ep["loss"])
            hist["epoch_mse"].append(ep["mse"])
            hist["epoch_l0"].append(ep["l0"])
            hist["epoch_fvu"].append(ep["mse"] / total_var if total_var > 0 else float("nan"))
            hist["epoch_dead_fraction"].append(dead)
            bar.update(steps_per_epoch)
            bar.set_postfix(
                loss=f"{ep['loss']:.4g}", L0=f"{ep['l0']:.1f}", dead=f"{dead:.2f}", refresh=False
            )
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
    sae = trainer.export(meta)
    hist.update(
        architecture=architecture,
        steps=trainer.n_steps,
        epochs=n_epochs,
        seconds=time.perf_counter() - t0,
        n_train=n,
        scale=s,
        batch_size=B,
        lr=sae_cfg.lr,
    )
    if trainer.ste is not None:
        hist["ste_training_space"] = dict(trainer.ste)
    return sae, hist


# ----- the grid stage (notebook 04) ------------------------------------------------------------------
def heldout_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded held-out completions, drawn per label (so each condition keeps ``fraction``).

    Returns a bool array over the labelled completions. One draw serves all conditions: a
    completion held out of ``mixed`` is held out of its single-label condition too. Each label
    with at least two completions keeps at least one for training and, when ``fraction > 0``,
    holds out at least one.
    """
    y = np.asarray(y)
    mask = np.zeros(len(y), dtype=bool)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng([int(seed), 4])
    for label in np.unique(y):
        pos = np.flatnonzero(y == label)
        if len(pos) < 2:
            continue
        n_held = min(max(int(round(fraction * len(pos))), 1), len(pos) - 1)
        mask[rng.permutation(pos)[:n_held]] = True
    return mask


def split_condition(
    labelled, condition: str, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labelled``) of a condition's training and held-out completions."""
    sel = labelled.select(condition)
    if len(sel) == 0:
        raise ValueError(
            f"condition {condition!r} has no completions under judge {labelled.judge!r}"
        )
    held = heldout_mask(labelled.y, fraction, seed)
    return sel[~held[sel]], sel[held[sel]]


def _hook_name(run, layer: int, lm) -> str:
    if lm is not None:
        from lib.models import hook_name

        return hook_name(lm[0], layer)
    try:
        from lib.dataset import read_index

        names = read_index(run).get("hook_names") or {}
        if str(layer) in names:
            return names[str(layer)]
    except Exception:  # noqa: BLE001 - the index is optional here
        pass
    return f"model.layers.{layer}"


def training_fingerprint(cfg, labelled, run) -> str:
    """What an SAE of the grid depends on: SAE settings, seed, labels and the captured activations.

    A finished SAE is reused only while this is unchanged (a changed ``sae.epochs`` retrains).
    """
    import hashlib
    import json

    from lib.dataset import read_index

    blob = {
        "sae": cfg.sae.model_dump(mode="json"),
        "seed": cfg.seed,
        "judge": labelled.judge,
        "labelled": [labelled.ids, labelled.y.tolist()],
        "activations": read_index(run).get("completions_sha256"),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def train_grid_cell(
    run,
    cfg,
    layer: int,
    arch: str,
    condition: str,
    progress: bool = True,
    force: bool = False,
    lm=None,
    layer_data=None,
    labelled=None,
    ce_cache: dict | None = None,
    ce_batch_size: int = 8,
) -> Path:
    """Train, evaluate and export the SAE of one grid cell to ``<run>/saes/<sae_id>/``.

    Completions: the primary judge's decisive ones selected by ``condition``; a seeded
    ``sae.heldout_fraction`` of them (per label) is held out. The SAE trains on the training
    completions' vectors (``sae.train_on``) and is scored on the held-out ones (or on the training
    set when nothing is held out; ``metrics.json`` says which). A complete folder is skipped unless
    ``force``. ``lm`` = ``(model, tokenizer)`` avoids reloading the model; ``layer_data``,
    ``labelled`` and ``ce_cache`` let :func:`train_grid` share work between cells.
    Returns the SAE folder.
    """
    from lib.dataset import labelled_rows, read_layer
    from lib.rundir import read_jsonl
    from lib.sae import is_complete, save_sae
    from lib.sae_metrics import ce_with_replacement, loss_recovered, reconstruction_metrics

    check_architecture(arch)
    if condition not in CONDITIONS:
        raise ValueError(f"condition={condition!r}; allowed: {list(CONDITIONS)}")
    sae_id = cfg.sae_id(layer, arch, condition)
    out = run.sae_dir(sae_id)
    labelled = labelled if labelled is not None else labelled_rows(run, cfg)
    fingerprint = training_fingerprint(cfg, labelled, run)
    if is_complete(out) and not force:
        from lib.sae import read_metrics

        if read_metrics(out).get("training_fingerprint") == fingerprint:
            return out
        print(
            f"{sae_id}: SAE settings, labels or activations changed since it was trained; retraining"
        )
    layer_data = layer_data if layer_data is not None else read_layer(run, layer)
    sc = cfg.sae
    train_pos, held_pos = split_condition(labelled, condition, sc.heldout_fraction, cfg.seed)
    if len(train_pos) == 0:
        raise ValueError(
            f"{sae_id}: no training completions left after holding out {sc.heldout_fraction:.0%}"
        )
    x_train = training_vectors(layer_data, labelled.rows[train_pos], sc.train_on)
    eval_on = "heldout" if len(held_pos) else "train"
    eval_pos = held_pos if len(held_pos) else train_pos
    x_eval = training_vectors(layer_data, labelled.rows[eval_pos], sc.train_on)
    if lm is None:
        from lib.models import load_model

        lm = load_model(cfg)
    hook = _hook_name(run, layer, lm)
    meta = {
        "model_name": cfg.model,
        "hook_name": hook,
        "hook_layer": int(layer),
        "training_condition": condition,
        "expansion_factor": sc.expansion_factor,
        "sae_id": sae_id,
        "run": cfg.name,
        "judge": labelled.judge,
        "train_on": sc.train_on,
        "seed": cfg.seed,
    }
    from lib.models import resolve_device

    sae, hist = train_sae(
        x_train, arch, sc, cfg.seed, progress=progress, meta=meta, device=resolve_device(cfg.device)
    )
    sae.meta["activation_scale"] = hist["scale"]
    rec = reconstruction_metrics(sae, x_eval)
    rec_train = reconstruction_metrics(sae, x_train)
    fired_all = rec["fired"] | rec_train["fired"]
    # language-model loss on the evaluation completions
    model, tok = lm
    rows_by_id = {r["id"]: r for r in read_jsonl(run.completions)}
    eval_ids = [labelled.ids[p] for p in eval_pos]
    eval_rows = [rows_by_id[i] for i in eval_ids]
    cache = ce_cache if ce_cache is not None else {}
    key = tuple(eval_ids)
    if ("clean", key) not in cache:
        cache[("clean", key)] = ce_with_replacement(
            model, tok, eval_rows, layer, "clean", batch_size=ce_batch_size
        )
    if ("zero", layer, key) not in cache:
        cache[("zero", layer, key)] = ce_with_replacement(
            model, tok, eval_rows, layer, "zero", batch_size=ce_batch_size
        )
    (ce_clean, n_tok), (ce_zero, _) = cache[("clean", key)], cache[("zero", layer, key)]
    ce_sae, _ = ce_with_replacement(
        model, tok, eval_rows, layer, "sae", sae=sae, batch_size=ce_batch_size
    )
    sae = sae.cpu()
    metrics = {
        "sae_id": sae_id,
        "layer": int(layer),
        "architecture": arch,
        "saelens_architecture": sae.saelens_architecture,
        "condition": condition,
        "hook_name": hook,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "train_on": sc.train_on,
        "evaluated_on": eval_on,
        "n_completions": len(train_pos) + len(held_pos),
        "n_train_completions": int(len(train_pos)),
        "n_heldout_completions": int(len(held_pos)),
        "n_train_vectors": int(x_train.shape[0]),
        "n_eval_vectors": int(x_eval.shape[0]),
        "l0": rec["l0"],
        "l0_fraction": rec["l0"] / sae.d_sae,
        "fvu": rec["fvu"],
        "mse": rec["mse"],
        "train_fvu": rec_train["fvu"],
        "train_l0": rec_train["l0"],
        "dead_fraction": 1.0 - float(fired_all.float().mean()),
        "dead_fraction_eval": 1.0 - float(rec["fired"].float().mean()),
        "dead_definition": "never active on any training or evaluation vector of the condition",
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "ce_zero": ce_zero,
        "ce_loss_recovered": loss_recovered(ce_clean, ce_sae, ce_zero),
        "ce_n_tokens": n_tok,
        "threshold_mean": float(sae.threshold.mean()) if sae.threshold is not None else None,
        "threshold_zero_fraction": float((sae.threshold == 0).float().mean())
        if sae.threshold is not None
        else None,
        "train_seconds": hist["seconds"],
        "train_steps": hist["steps"],
        "epochs": hist["epochs"],
        "batch_size": hist["batch_size"],
        "lr": hist["lr"],
        "seed": cfg.seed,
        "activation_scale": hist["scale"],
        "final_loss": hist["epoch_loss"][-1],
        "history": {
            k: hist[k]
            for k in ("epoch_loss", "epoch_mse", "epoch_l0", "epoch_fvu", "epoch_dead_fraction")
        },
    }
    if "ste_training_space" in hist:
        metrics["ste_training_space"] = hist["ste_training_space"]
    history = {k: hist[k] for k in ("step_loss", "step_l0")}
    metrics["training_fingerprint"] = fingerprint
    save_sae(sae, out, extra_files={"history.json": history, "metrics.json": metrics})
    return out


def train_grid(run, cfg, progress: bool = True, force: bool = False) -> list[Path]:
    """Every SAE of ``cfg.sae_grid()`` (resumable: finished cells are skipped).

    Loads the model and each layer's activations once, and shares the clean and zero-ablation
    cross-entropies between the cells that have the same held-out completions.
    """
    from tqdm.auto import tqdm

    from lib.dataset import labelled_rows, read_layer
    from lib.sae import is_complete, read_metrics

    cells = cfg.sae_grid()
    labelled = labelled_rows(run, cfg)
    fingerprint = training_fingerprint(cfg, labelled, run)

    def current(c) -> bool:
        path = run.sae_dir(cfg.sae_id(*c))
        return is_complete(path) and read_metrics(path).get("training_fingerprint") == fingerprint

    todo = [c for c in cells if force or not current(c)]
    paths = {c: run.sae_dir(cfg.sae_id(*c)) for c in cells}
    if todo:
        from lib.models import load_model

        lm = load_model(cfg)
        cache: dict = {}
        layers: dict[int, object] = {}
        for layer, arch, cond in tqdm(todo, desc="SAE grid", disable=not progress):
            if layer not in layers:
                layers.clear()
                layers[layer] = read_layer(run, layer)
            paths[(layer, arch, cond)] = train_grid_cell(
                run,
                cfg,
                layer,
                arch,
                cond,
                progress=False,
                force=force,
                lm=lm,
                layer_data=layers[layer],
                labelled=labelled,
                ce_cache=cache,
            )
    return [paths[c] for c in cells]


def grid_metrics(run, cfg):
    """A pandas table of ``metrics.json`` of every finished SAE of the config's grid."""
    import pandas as pd

    from lib.sae import is_complete, read_metrics

    rows = []
    for layer, arch, cond in cfg.sae_grid():
        path = run.sae_dir(cfg.sae_id(layer, arch, cond))
        if is_complete(path):
            m = read_metrics(path)
            rows.append({k: v for k, v in m.items() if k != "history"})
    return pd.DataFrame(rows)


__all__ = [
    "ARCHITECTURES",
    "FastSAETrainer",
    "FusedAdam",
    "grid_metrics",
    "heldout_mask",
    "kernel",
    "scale_factor",
    "split_condition",
    "ste_hyperparameters",
    "ste_threshold_grad",
    "train_grid",
    "train_grid_cell",
    "train_sae",
    "training_vectors",
]
