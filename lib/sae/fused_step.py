"""The hand-written training step of the book's SAEs: forward, backward and Adam, fused.

:class:`FastSAETrainer` holds one SAE's parameters in training space (inputs already scaled, see
:mod:`lib.sae.trainer`) and updates them with its own forward and backward passes (no autograd,
no recomputation): every buffer is allocated once, Adam is PyTorch's fused kernel called once
per step (:class:`FusedAdam`), and a TopK SAE touches the ``d_sae - k`` unselected latents only
in the encoder matmul: its latents form a CSR sparse matrix, so decoding, the latent gradient (a
sampled product) and both weight gradients are sparse products over the ``k`` chosen rows. The
passes are checked against autograd in ``tests/unit/test_sae_gradients.py``; speed and quality against SAELens,
plain PyTorch and sparsify in ``tests/benchmarks/bench_sae_train.py``.

Parameters carry the SAE's names (:class:`lib.sae.model.SAE`; ``W_enc_T`` is ``W_enc`` transposed,
``[d_sae, d_in]``, so that one latent's gradient is a row, like the decoder's).

Losses (per example, averaged over the batch, as SAELens): ``||x - x^||^2`` plus the
architecture's penalty. Everything that differs between architectures (the loss, its forward
and backward passes, the extra parameters and buffers, the encoder's initial gain) is the
architecture's spec in :mod:`lib.sae.architectures` (``topk``: AuxK and the CSR step;
``jumprelu``: L1 and the dense step; ``jumprelu_ste``: the STE threshold gradient and L0); this
class owns what they share: the init, the buffers, the low-precision operands, Adam, the
decoder-row renormalisation, the dead-latent record and the export.

Devices and precision. The TopK step's CSR matrices have sorted column indices in every row
(valid for ``check_invariants=True``). Where sparse kernels cannot run (:func:`csr_supported`
False, e.g. MPS) the step uses dense ``[b, d_sae]`` latent matrices (``sparse=False``: slower,
same results). The CUDA path is tested only by a test skipped without a GPU. ``sae.matmul_dtype:
bfloat16`` runs the dense matmuls (the TopK encoder; all five of a JumpReLU step) on bfloat16
copies of the operands with float32 results; weights, gradients and Adam's state stay float32.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from lib.core.config import SAEConfig
from lib.core.runtime import fast_bf16
from lib.sae.architectures import get_spec
from lib.sae.model import SAE

DEAD_WINDOW_MAX_STEPS = 1000
MATMUL_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "auto": None}


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
        self.spec = spec = get_spec(architecture)
        self.arch = spec.name
        self.device = dev = torch.device(device)
        self.cfg = sae_cfg
        self.d_in = d = int(d_in)
        self.d_sae = m = int(d_in * sae_cfg.expansion_factor)
        self.k = int(sae_cfg.k) if spec.uses_k else None
        if self.k is not None and self.k > m:
            raise ValueError(
                f"sae.k={self.k} exceeds d_sae={m} (d_in={d} x {sae_cfg.expansion_factor})"
            )
        self.scale = float(scale)
        self.B = B = int(sae_cfg.batch_size)
        self.dead_window = max(1, int(dead_window))
        self.n_steps = 0
        self.openai = False  # the TopK paper's AuxK and decoder projection (set by topk)
        self.ste: dict[str, Any] | None = None  # the STE's training-space settings (jumprelu_ste)
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
            c = spec.encoder_gain(d, m)  # W_enc = c * W_dec^T
            self.W_enc_T = torch.nn.Parameter(W_dec * c)
            self.b_enc = torch.nn.Parameter(torch.zeros(m))
            b0 = torch.zeros(d) if b_dec_init is None else b_dec_init.detach().float().to(dev)
            self.b_dec = torch.nn.Parameter(b0.clone())
        with torch.device(dev):
            self._allocate(d, m, B)

    def _allocate(self, d: int, m: int, B: int) -> None:
        sae_cfg, spec = self.cfg, self.spec
        params = [self.W_enc_T, self.b_enc, self.W_dec, self.b_dec]
        extra = spec.prepare(self)
        for name, p in extra.items():
            setattr(self, name, p)
            params.append(p)
        self.extra_params = tuple(extra)
        for p in params:
            p.grad = torch.zeros_like(p)
        self.params = params
        self.opt = FusedAdam(params, sae_cfg.lr)
        # the matmul operands: the weights themselves, or low-precision copies refreshed per step
        # (bf16 decodes from a transposed copy: CPU bf16 GEMMs are ~10x slower in f @ W layout)
        self.W_enc_mm, self.W_dec_mm, self.W_decT_mm = self.W_enc_T, self.W_dec, self.W_dec.t()
        if self.lp is not None:
            self.W_enc_mm = torch.empty(m, d, dtype=self.lp)
            if spec.dense_decode:
                self.W_dec_mm = torch.empty(m, d, dtype=self.lp)
                self.W_decT_mm = torch.empty(d, m, dtype=self.lp)
        # buffers (views [:b] serve short batches)
        self.xc, self.e, self.g, self.recon = (torch.empty(B, d) for _ in range(4))
        self.pre = torch.empty(B, m)
        self.last_fired = torch.zeros(m, dtype=torch.long)
        self.fired_epoch = torch.zeros(m, dtype=torch.bool)
        spec.allocate(self, d, m, B)

    # ----- one step ------------------------------------------------------------------------
    @torch.no_grad()
    def loss_and_grads(self, x: torch.Tensor) -> dict[str, float]:
        """Forward and backward pass on a training-space batch; fills each parameter's ``.grad``."""
        if self.lp is not None:
            self.W_enc_mm.copy_(self.W_enc_T)
            if self.W_dec_mm is not self.W_dec:
                self.W_dec_mm.copy_(self.W_dec)
                self.W_decT_mm.copy_(self.W_dec_mm.t())
        return self.spec.loss_and_grads(self, x)

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One Adam update on a training-space batch ``[b, d_in]``; returns its losses."""
        out = self.loss_and_grads(x)
        self.opt.step()
        # unit-norm decoder rows, then the architecture's constraints
        norms = torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True)
        self.W_dec.div_(norms.clamp_(min=1e-12))
        self.spec.after_step(self)
        self.n_steps += 1
        return out

    # ----- helpers of the architectures' steps --------------------------------------------------
    def mm(self, a, b, out, bias=None) -> torch.Tensor:
        """``out = a @ b (+ bias)`` in float32, or from bfloat16 operands (``sae.matmul_dtype``)."""
        if self.lp is None:
            return torch.mm(a, b, out=out) if bias is None else torch.addmm(bias, a, b, out=out)
        lp = self.lp
        out.copy_(torch.mm(a if a.dtype == lp else a.to(lp), b if b.dtype == lp else b.to(lp)))
        return out if bias is None else out.add_(bias)

    def csr(self, crow, col, val, shape) -> torch.Tensor:
        with warnings.catch_warnings():  # torch flags its whole CSR API as beta
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                crow, col, val, shape, check_invariants=self.check_invariants
            )

    def dead_latents(self) -> torch.Tensor | None:
        """Indices of latents that have not fired within the dead window (SAELens's rule)."""
        if self.n_steps < self.dead_window:
            return None
        dead = torch.nonzero(self.n_steps - self.last_fired > self.dead_window).view(-1)
        return dead if dead.numel() else None

    # ----- bookkeeping -------------------------------------------------------------------------
    def mark_fired(self, idx: torch.Tensor) -> None:
        """Record that the latents with ids ``idx`` fired in this step."""
        self.last_fired.index_fill_(0, idx, self.n_steps + 1)
        self.fired_epoch.index_fill_(0, idx, True)

    def mark_fired_mask(self, fired: torch.Tensor) -> None:
        """Record that the latents where the bool ``fired [d_sae]`` is true fired in this step."""
        self.last_fired.masked_fill_(fired, self.n_steps + 1)
        self.fired_epoch |= fired

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
        for name in ("b_enc", "W_dec", "b_dec", *self.extra_params):
            getattr(sae, name).copy_(getattr(self, name))
        sae.W_enc.copy_(self.W_enc_T.t())
        return sae

    @torch.no_grad()
    def export(self, meta: dict[str, Any] | None = None) -> SAE:
        """The raw-space SAE: ``s`` folded into ``b_enc``, ``b_dec`` and the trained per-latent
        parameters (e.g. ``threshold``), all in pre-activation units."""
        sae = self.training_space_sae()
        for name in ("b_enc", "b_dec", *self.extra_params):
            getattr(sae, name).div_(self.scale)
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
