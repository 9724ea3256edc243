"""The hand-written training step of the book's SAEs: forward, backward and Adam, fused.

:class:`FastSAETrainer` holds one SAE's parameters in training space (inputs already scaled, see
:mod:`lib.sae.trainer`) and updates them with its own forward and backward passes (no autograd,
no recomputation): every buffer is allocated once, Adam is PyTorch's fused kernel called once
per step (:class:`FusedAdam`), and a TopK SAE touches the ``d_sae - k`` unselected latents only
in the encoder matmul: its latents form a CSR sparse matrix, so decoding, the latent gradient (a
sampled product) and both weight gradients are sparse products over the ``k`` chosen rows. The
passes are checked against autograd in ``tests/unit/test_sae.py``; speed and quality against SAELens,
plain PyTorch and sparsify in ``tests/benchmarks/bench_sae_train.py``.

Parameters carry the SAE's names (:class:`lib.sae.model.SAE`; ``W_enc_T`` is ``W_enc`` transposed,
``[d_sae, d_in]``, so that one latent's gradient is a row, like the decoder's).

Losses (per example, averaged over the batch, as SAELens): ``||x - x^||^2`` plus

- ``topk``: AuxK on the latents that have not fired for one epoch of steps (at most 1000
  steps, SAELens's window): ``e^`` decodes the top ``d_in // 2`` pre-activations among them (no
  bias) and is fitted to the residual ``r = x - x^``. Two variants (``sae.topk_variant``):

  * ``saelens`` (default; SAELens 6 and sparsify): ``aux_k_coefficient * min(n_dead / (d_in //
    2), 1) * ||e^ - r||^2``, the selected pre-activations used as they are;
  * ``openai`` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", and their
    reference code): ``aux_k_coefficient * V * sum_b ||e^_b - r_b||^2 / sum_b ||r_b - mean(r)||^2``,
    the AuxK MSE normalised by the batch residual's variance (``V``, the training data's variance
    per example, only expresses it in this loss's units), the selected values ReLU'd; and before
    every Adam step the decoder gradient loses its component along each (unit-norm) decoder row,
    ``G_j -= <G_j, W_j> W_j``, so the step moves rows along the sphere they are projected back to.

- ``jumprelu`` (threshold fixed at 0): ``l1_coefficient * sum_j f_j``;
- ``jumprelu_ste``: ``lambda * L0`` with the straight-through estimator of Rajamanoharan et
  al. (2024): the threshold receives ``-(theta/eps) K((pre - theta)/eps)`` through the JumpReLU
  and ``-(1/eps) K((pre - theta)/eps)`` through the step inside L0; no STE gradient reaches the
  pre-activations (DeepMind's variant). ``K``: rectangle (default) or standard Gaussian. The
  threshold is a direct (not log) parameter, clamped to ``>= 0`` after each step as in SAELens
  6 (Adam moves a log threshold too little within a short run). Bandwidth and initial threshold
  are given for inputs at unit mean norm, the L0 coefficient for an MSE at unit mean norm; in
  the ``sqrt(d_in)`` training space they are multiplied by ``sqrt(d_in)``, ``sqrt(d_in)`` and
  ``d_in``. (The JumpReLU paper's bandwidth 0.001 is for inputs at unit mean *squared* norm,
  ``E||x||^2 = 1``: a factor ``sqrt(E||x||^2) / E||x||`` apart, 4-5% on the organism's tokens.)

Decoder rows are renormalised to unit norm after every step, so SAELens's weighting of the L1
penalty by decoder-row norms (``sum_j f_j * ||W_dec_j||``) equals the plain ``sum_j f_j`` here.

Devices and precision. The TopK step's CSR matrices have sorted column indices in every row
(valid for ``check_invariants=True``). Where sparse kernels cannot run (:func:`csr_supported`
False, e.g. MPS) the step uses dense ``[b, d_sae]`` latent matrices (``sparse=False``: slower,
same results). The CUDA path is tested only by a test skipped without a GPU. ``sae.matmul_dtype:
bfloat16`` runs the dense matmuls (the TopK encoder; all five of a JumpReLU step) on bfloat16
copies of the operands with float32 results; weights, gradients and Adam's state stay float32.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from lib.core.config import SAEConfig, SteConfig
from lib.core.runtime import fast_bf16
from lib.sae.model import SAE, check_architecture

DEAD_WINDOW_MAX_STEPS = 1000
MATMUL_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "auto": None}


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


def csr_supported(device: str | torch.device) -> bool:
    """Whether ``device`` runs the CSR products of the TopK step (a tiny check, run once)."""
    try:
        with warnings.catch_warnings(), torch.device(torch.device(device)):
            warnings.simplefilter("ignore", UserWarning)
            idx = torch.tensor([0, 1, 2], dtype=torch.int32)
            F = torch.sparse_csr_tensor(idx, idx[:2], torch.ones(2), (2, 2), check_invariants=True)
            W = torch.ones(2, 3)
            out = torch.addmm(torch.zeros(2, 3), F, W, beta=0.0)
            torch.sparse.sampled_addmm(F, W, W.t(), beta=0.0)
        return bool(torch.equal(out.cpu(), torch.ones(2, 3)))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False


# ----- the step ------------------------------------------------------------------------------------
class FastSAETrainer:
    """Adam on one SAE with hand-written passes and preallocated buffers.

    Works in training space (inputs already multiplied by ``scale``). ``step(x)`` does one
    update on a ``[b, d_in]`` batch (``b <= batch_size``) and returns the batch's losses;
    :meth:`export` returns the raw-space :class:`lib.sae.model.SAE`. ``data_variance`` (the training
    vectors' mean ``||x - mean||^2``) sets the units of the ``openai`` AuxK (the batch's own when
    None). ``sparse`` picks the TopK products (None: CSR where :func:`csr_supported`, else dense);
    ``check_invariants`` validates every CSR matrix the step builds (slower; for tests).

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
        data_variance: float | None = None,
        sparse: bool | None = None,
        check_invariants: bool = False,
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
        self.openai = self.arch == "topk" and sae_cfg.topk_variant == "openai"
        self.data_variance = None if data_variance is None else float(data_variance)
        self.sparse = csr_supported(dev) if sparse is None else bool(sparse)
        self.check_invariants = bool(check_invariants)
        auto = sae_cfg.matmul_dtype == "auto" and fast_bf16(torch.device(dev))  # 1.2-1.5x here
        self.lp = torch.bfloat16 if auto else MATMUL_DTYPES[sae_cfg.matmul_dtype]
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
            b0 = torch.zeros(d) if b_dec_init is None else b_dec_init.detach().float().to(dev)
            self.b_dec = torch.nn.Parameter(b0.clone())
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
        # the matmul operands: the weights themselves, or low-precision copies refreshed per step
        # (bf16 decodes from a transposed copy: CPU bf16 GEMMs are ~10x slower in f @ W layout)
        self.W_enc_mm, self.W_dec_mm, self.W_decT_mm = self.W_enc_T, self.W_dec, self.W_dec.t()
        if self.lp is not None:
            self.W_enc_mm = torch.empty(m, d, dtype=self.lp)
            if self.arch != "topk":
                self.W_dec_mm = torch.empty(m, d, dtype=self.lp)
                self.W_decT_mm = torch.empty(d, m, dtype=self.lp)
        # buffers (views [:b] serve short batches)
        self.xc, self.e, self.g, self.recon = (torch.empty(B, d) for _ in range(4))
        self.pre = torch.empty(B, m)
        self.last_fired = torch.zeros(m, dtype=torch.long)
        self.fired_epoch = torch.zeros(m, dtype=torch.bool)
        if self.arch == "topk":
            k, i32 = self.k, torch.int32
            self.tv, self.tvs = torch.empty(B, k), torch.empty(B, k)
            self.ti, self.si = (torch.empty(B, k, dtype=torch.long) for _ in range(2))
            self.order = torch.empty(B, k, dtype=torch.long)
            self.cols32 = torch.empty(B * k, dtype=i32)
            self.crow_f = torch.arange(0, B * k + 1, k, dtype=i32)
            self.crow_t = torch.zeros(m + 1, dtype=i32)
            self.rows32 = torch.arange(B, dtype=i32).repeat_interleave(k)
            if not self.sparse:
                self.dense_f, self.dense_g = torch.empty(B, m), torch.empty(B, m)
        else:
            self.f, self.gf, self.mask = (torch.empty(B, m) for _ in range(3))
            self.counts = torch.empty(m)
            if self.arch == "jumprelu_ste":
                self.kbuf = torch.empty(B, m)

    # ----- one step ------------------------------------------------------------------------
    @torch.no_grad()
    def loss_and_grads(self, x: torch.Tensor) -> dict[str, float]:
        """Forward and backward pass on a training-space batch; fills each parameter's ``.grad``."""
        if self.lp is not None:
            self.W_enc_mm.copy_(self.W_enc_T)
            if self.W_dec_mm is not self.W_dec:
                self.W_dec_mm.copy_(self.W_dec)
                self.W_decT_mm.copy_(self.W_dec_mm.t())
        if self.arch != "topk":
            return self._step_jumprelu(x)
        out = self._step_topk(x)
        if self.openai:  # the TopK paper: no gradient along the (unit-norm) decoder rows
            W, G = self.W_dec, self.W_dec.grad
            G.addcmul_(W, torch.einsum("md,md->m", G, W).unsqueeze(1), value=-1.0)
        return out

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

    def _mm(self, a, b, out, bias=None) -> torch.Tensor:
        """``out = a @ b (+ bias)`` in float32, or from bfloat16 operands (``sae.matmul_dtype``)."""
        if self.lp is None:
            return torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)
        lp = self.lp
        out.copy_(torch.mm(a if a.dtype == lp else a.to(lp), b if b.dtype == lp else b.to(lp)))
        return out if bias is None else out.add_(bias)

    def _csr(self, crow, col, val, shape) -> torch.Tensor:
        with warnings.catch_warnings():  # torch flags its whole CSR API as beta
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                crow, col, val, shape, check_invariants=self.check_invariants
            )

    def _dead_latents(self) -> torch.Tensor | None:
        """Indices of latents that have not fired within the dead window (SAELens's rule)."""
        if self.n_steps < self.dead_window:
            return None
        dead = torch.nonzero(self.n_steps - self.last_fired > self.dead_window).view(-1)
        return dead if dead.numel() else None

    def _step_topk(self, x: torch.Tensor) -> dict[str, float]:
        """TopK with the latents as a CSR matrix: every product touches the k chosen rows only.

        Decode is ``F @ W_dec`` (F sparse ``[b, d_sae]`` with k entries per row, column indices
        sorted); the latent gradient is F's sparsity pattern sampled from ``g @ W_dec^T``; the
        decoder and encoder gradients are ``F^T @ g`` and ``F_g^T @ (x - b_dec)``, with ``F^T``
        built once per step by a stable sort of the chosen latent ids (so each of its rows lists
        batch rows in increasing order). Without CSR support, F and F_g are dense matrices.
        """
        b, m, k = x.shape[0], self.d_sae, self.k
        W_enc_T, b_enc, W_dec, b_dec = self.W_enc_T, self.b_enc, self.W_dec, self.b_dec
        g_W_dec, g_W_enc_T, g_b_enc, g_b_dec = W_dec.grad, W_enc_T.grad, b_enc.grad, b_dec.grad
        xc = torch.sub(x, b_dec, out=self.xc[:b])
        pre = self._mm(xc, self.W_enc_mm.t(), self.pre[:b], bias=b_enc)
        tv, ti = torch.topk(pre, k, dim=1, sorted=False, out=(self.tv[:b], self.ti[:b]))
        si, order = torch.sort(ti, dim=1, out=(self.si[:b], self.order[:b]))
        tv = torch.gather(tv, 1, order, out=self.tvs[:b])  # values in sorted-id order
        fv = tv.clamp(min=0.0)  # the ReLU comes after the selection
        flat = si.view(-1)
        if self.sparse:
            cols = self.cols32[: b * k]
            cols.copy_(flat)
            F = self._csr(self.crow_f[: b + 1], cols, fv.view(-1), (b, m))
            recon = torch.addmm(self.recon[:b], F, W_dec, beta=0.0, out=self.recon[:b])
        else:
            F = self.dense_f[:b].zero_().scatter_(1, si, fv)
            recon = torch.mm(F, W_dec, out=self.recon[:b])
        recon += b_dec
        e = torch.sub(recon, x, out=self.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=self.g[:b])
        if self.sparse:
            gvals = torch.sparse.sampled_addmm(F, g, W_dec.t(), beta=0.0).values().view(b, k)
        else:
            gvals = torch.mm(g, W_dec.t()).gather(1, si)
        gvals.mul_(tv > 0)
        if self.sparse:
            order_t = torch.argsort(flat, stable=True)
            counts = torch.bincount(flat, minlength=m)
            crow_t = self.crow_t
            crow_t[1:].copy_(torch.cumsum(counts, 0))
            rows_t = torch.index_select(self.rows32[: b * k], 0, order_t)
            FT = self._csr(crow_t, rows_t, fv.view(-1).index_select(0, order_t), (m, b))
            torch.addmm(g_W_dec, FT, g, beta=0.0, out=g_W_dec)
            FT = self._csr(crow_t, rows_t, gvals.view(-1).index_select(0, order_t), (m, b))
            torch.addmm(g_W_enc_T, FT, xc, beta=0.0, out=g_W_enc_T)
        else:
            torch.mm(F.t(), g, out=g_W_dec)
            G = self.dense_g[:b].zero_().scatter_(1, si, gvals)
            torch.mm(G.t(), xc, out=g_W_enc_T)
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
        k_aux = min(k_aux_full, n_dead)
        if self.openai:  # normalised by the residual's variance (e = -r), in this loss's units
            r_var = float((e - e.mean(0)).pow(2).sum())
            if not r_var > 0:
                return 0.0
            v = self.data_variance
            v = float((x - x.mean(0)).pow(2).sum()) / b if v is None else v
            coef = self.cfg.aux_k_coefficient * v * b / r_var
        else:
            coef = self.cfg.aux_k_coefficient * min(n_dead / k_aux_full, 1.0)
        P = torch.index_select(pre, 1, dead)  # [b, n_dead]
        if k_aux < n_dead:
            av, ai = torch.topk(P, k_aux, dim=1, sorted=False)
            A = torch.zeros_like(P).scatter_(1, ai, av)
            sel = torch.zeros_like(P, dtype=torch.bool).scatter_(1, ai, True)
        else:
            A, sel = P, None
        if self.openai:  # ReLU'd selection: unselected entries are 0 and stay out of the mask
            sel = A > 0
            A = A.clamp(min=0.0)
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
        pre = self._mm(xc, self.W_enc_mm.t(), self.pre[:b], bias=b_enc)
        mask = torch.gt(pre, self.threshold if ste else 0.0, out=self.mask[:b])  # float 0/1
        f = torch.mul(pre, mask, out=self.f[:b])
        recon = self._mm(f, self.W_decT_mm.t(), self.recon[:b], bias=b_dec)
        e = torch.sub(recon, x, out=self.e[:b])
        ef = e.view(-1)
        mse = float(torch.dot(ef, ef)) / b
        g = torch.mul(e, 2.0 / b, out=self.g[:b])
        gf = self._mm(g, self.W_dec_mm.t(), self.gf[:b])
        counts = torch.sum(mask, 0, out=self.counts)
        l0 = float(counts.sum()) / b
        if ste:
            self._threshold_grad(pre, gf, b)
            penalty = self.ste["l0_coefficient"] * l0
        else:
            l1 = self.cfg.l1_coefficient
            penalty = l1 * float(f.sum()) / b
            gf.add_(l1 / b)
        self._mm(f.t(), g, W_dec.grad)
        gpre = gf.mul_(mask)
        self._mm(gpre.t(), xc, W_enc_T.grad)
        torch.sum(gpre, 0, out=b_enc.grad)
        torch.sum(g, 0, out=b_dec.grad)
        b_dec.grad.sub_(b_enc.grad @ W_enc_T)
        fired = counts > 0
        self.last_fired.masked_fill_(fired, self.n_steps + 1)
        self.fired_epoch |= fired
        return {"loss": mse + penalty, "mse": mse, "l0": l0, "aux": penalty}

    def _threshold_grad(self, pre: torch.Tensor, gf: torch.Tensor, b: int) -> None:
        """:func:`ste_threshold_grad` into ``theta.grad`` in preallocated buffers; overwrites ``pre``."""
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
    def _mark_fired(self, idx: torch.Tensor) -> None:  # TopK: ids of the latents that fired
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
        for name in ("b_enc", "W_dec", "b_dec") + (("threshold",) if self.ste else ()):
            getattr(sae, name).copy_(getattr(self, name))
        sae.W_enc.copy_(self.W_enc_T.t())
        return sae

    @torch.no_grad()
    def export(self, meta: dict[str, Any] | None = None) -> SAE:
        """The raw-space SAE: ``s`` folded into ``b_enc``, ``b_dec`` and ``threshold``."""
        sae = self.training_space_sae()
        for p in (sae.b_enc, sae.b_dec) + ((sae.threshold,) if self.ste else ()):
            p.div_(self.scale)
        sae.meta.update(meta or {})
        return sae.eval()


FIXED = {"weight_decay": 0.0, "amsgrad": False, "maximize": False}  # per fused Adam call


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
        self.hyper = {"lr": self.lr, "beta1": betas[0], "beta2": betas[1], "eps": eps, **FIXED}
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
        grads = [p.grad for p in self.params]
        state = (self.exp_avg, self.exp_avg_sq, [], self.steps)
        torch._fused_adam_(self.params, grads, *state, **self.hyper)
