"""The fused training step: hand-written gradients against autograd, CSR matrices, bf16 matmuls, the fused Adam, the STE threshold gradient."""

from __future__ import annotations

import pytest
import torch

from lib.core.config import SAEConfig, SteConfig
from lib.sae.architectures.jumprelu_ste import ste_kernel, ste_threshold_grad
from lib.sae.fused_step import FastSAETrainer, FusedAdam, csr_supported


# ----- gradients --------------------------------------------------------------------------------------
class _JumpSTE(torch.autograd.Function):
    """Reference JumpReLU with the paper's pseudo-derivative (written from the equations)."""

    @staticmethod
    def forward(ctx, pre, th, eps, kname):
        ctx.save_for_backward(pre, th)
        ctx.eps, ctx.kname = eps, kname
        return pre * (pre > th)

    @staticmethod
    def backward(ctx, g):
        pre, th = ctx.saved_tensors
        K = ste_kernel((pre - th) / ctx.eps, ctx.kname)
        return g * (pre > th), (-(th / ctx.eps) * K * g).sum(0), None, None


class _StepSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, th, eps, kname):
        ctx.save_for_backward(pre, th)
        ctx.eps, ctx.kname = eps, kname
        return (pre > th).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, th = ctx.saved_tensors
        K = ste_kernel((pre - th) / ctx.eps, ctx.kname)
        return None, (-(1.0 / ctx.eps) * K * g).sum(0), None, None


def _reference_loss(
    tr: FastSAETrainer, P: dict, x: torch.Tensor, dead: torch.Tensor
) -> torch.Tensor:
    """The batch loss written directly from the definitions, for autograd."""
    cfg = tr.cfg
    pre = (x - P["b_dec"]) @ P["W_enc_T"].t() + P["b_enc"]
    if tr.arch == "topk":
        tv, ti = torch.topk(pre, tr.k, dim=1)
        f = torch.zeros_like(pre).scatter(1, ti, tv.relu())
        recon = f @ P["W_dec"] + P["b_dec"]
        loss = (recon - x).pow(2).sum(1).mean()
        n_dead, k_aux = dead.numel(), tr.d_in // 2
        if n_dead:
            scale, k_aux = min(n_dead / k_aux, 1.0), min(k_aux, n_dead)
            is_dead = torch.zeros(tr.d_sae, dtype=torch.bool, device=x.device)
            is_dead[dead] = True
            masked = torch.where(is_dead[None], pre, -torch.inf)
            av, ai = masked.topk(k_aux, dim=1)
            resid = (x - recon).detach()
            if tr.openai:  # ReLU'd, normalised by the residual variance, in units of V
                A = torch.zeros_like(pre).scatter(1, ai, av.relu())
                norm = (resid - resid.mean(0)).pow(2).sum()
                v = tr.data_variance or float((x - x.mean(0)).pow(2).sum(1).mean())
                aux = v * (A @ P["W_dec"] - resid).pow(2).sum() / norm
                return loss + cfg.aux_k_coefficient * aux
            A = torch.zeros_like(pre).scatter(1, ai, av)
            aux = (A @ P["W_dec"] - resid).pow(2).sum(1).mean()
            loss = loss + cfg.aux_k_coefficient * scale * aux
        return loss
    if tr.arch == "jumprelu":
        f = pre.relu()
        recon = f @ P["W_dec"] + P["b_dec"]
        return (recon - x).pow(2).sum(1).mean() + cfg.l1_coefficient * f.sum(1).mean()
    h = tr.ste
    f = _JumpSTE.apply(pre, P["threshold"], h["bandwidth"], h["kernel"])
    recon = f @ P["W_dec"] + P["b_dec"]
    l0 = _StepSTE.apply(pre, P["threshold"], h["bandwidth"], h["kernel"]).sum(1).mean()
    return (recon - x).pow(2).sum(1).mean() + h["l0_coefficient"] * l0


PARAM_NAMES = ["W_enc_T", "b_enc", "W_dec", "b_dec", "threshold"]


def _gradient_case(arch, kname="rectangle", device="cpu", cfg_kw=None, **trainer_kw):
    """A trainer mid-training (latents 40.. dead, so AuxK is on), its hand-written loss and
    gradients on one batch, and the same from autograd through :func:`_reference_loss`."""
    d = 16
    cfg = SAEConfig(
        expansion_factor=4,
        k=5,
        batch_size=32,
        lr=1e-3,
        l1_coefficient=1e-2,
        aux_k_coefficient=0.5,
        ste=SteConfig(bandwidth=0.5, l0_coefficient=0.01, kernel=kname),
        **(cfg_kw or {}),
    )
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(32, d, generator=g) * 2).to(device)
    tr = FastSAETrainer(d, arch, cfg, seed=1, dead_window=1, device=device, **trainer_kw)
    tr.n_steps = 5
    tr.last_fired[:40] = 5  # latents 40.. have not fired for 5 steps: dead, so AuxK is on
    with torch.no_grad():
        tr.b_dec.add_(0.1 * torch.randn(d, generator=g).to(device))
        tr.b_enc.add_(0.1 * torch.randn(tr.d_sae, generator=g).to(device))
    dead = torch.nonzero(tr.n_steps - tr.last_fired > tr.dead_window).view(-1)
    P = {
        n: p.detach().clone().requires_grad_() for n, p in zip(PARAM_NAMES, tr.params, strict=False)
    }
    out = tr.loss_and_grads(x)
    ref = _reference_loss(tr, P, x, dead)
    ref.backward()
    return tr, out, ref, P


def _assert_gradients_match(tr, out, ref, P, rel=1e-5):
    assert out["loss"] == pytest.approx(ref.item(), rel=rel)
    for n, p in zip(PARAM_NAMES, tr.params, strict=False):
        want = P[n].grad
        if n == "W_dec" and tr.openai:  # the paper's projection, applied to autograd's gradient
            W = P["W_dec"].detach()
            want = want - (want * W).sum(1, keepdim=True) * W
        scale = float(want.abs().max())
        assert scale > 0, n
        assert torch.allclose(p.grad, want, atol=1e-5 * scale, rtol=1e-4), n


GRADIENT_CASES = [
    ("topk", "rectangle", {}, {}),
    ("topk", "rectangle", {}, {"sparse": False}),  # the dense fallback of devices without CSR
    ("topk", "rectangle", {"topk_variant": "openai"}, {"data_variance": 7.0}),
    ("topk", "rectangle", {"topk_variant": "openai"}, {"sparse": False}),  # V from the batch
    ("jumprelu", "rectangle", {}, {}),
    ("jumprelu_ste", "rectangle", {}, {}),
    ("jumprelu_ste", "gaussian", {}, {}),
]


@pytest.mark.parametrize("arch,kname,cfg_kw,trainer_kw", GRADIENT_CASES)
def test_hand_written_gradients_match_autograd(arch, kname, cfg_kw, trainer_kw):
    case = _gradient_case(arch, kname, cfg_kw=cfg_kw, check_invariants=True, **trainer_kw)
    assert case[0].sparse == trainer_kw.get("sparse", True)
    _assert_gradients_match(*case)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch,kname,cfg_kw,trainer_kw", GRADIENT_CASES)
def test_hand_written_gradients_match_autograd_on_cuda(arch, kname, cfg_kw, trainer_kw):
    """The same check on the GPU, CSR invariants validated by the device's own checks."""
    case = _gradient_case(arch, kname, "cuda", cfg_kw=cfg_kw, check_invariants=True, **trainer_kw)
    assert case[0].W_dec.is_cuda and case[0].sparse == trainer_kw.get("sparse", True)
    _assert_gradients_match(*case, rel=1e-4)


def test_topk_csr_matrices_are_valid_with_sorted_indices():
    """Every CSR matrix a TopK step builds passes torch's invariant check (sorted column
    indices per row); a matrix with unsorted indices, as the step once built, does not."""
    tr = _gradient_case("topk", check_invariants=True)[0]
    tr.step(torch.randn(32, 16))  # a full step with the check on raises if any matrix is invalid
    ti = torch.topk(torch.randn(4, 64), 5, dim=1, sorted=True).indices  # by value: unsorted ids
    assert not bool((ti.diff(dim=1) > 0).all())
    crow = torch.arange(0, 21, 5, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="sorted"):
        torch.sparse_csr_tensor(
            crow, ti.view(-1).int(), torch.ones(20), (4, 64), check_invariants=True
        )


def test_openai_decoder_gradient_is_orthogonal_to_each_row():
    tr, _, _, P = _gradient_case("topk", cfg_kw={"topk_variant": "openai"})
    along = (tr.W_dec.grad * tr.W_dec.detach()).sum(1)
    assert float(along.abs().max()) < 1e-6 * float(tr.W_dec.grad.norm(dim=1).max())
    raw_along = (P["W_dec"].grad * P["W_dec"].detach()).sum(1)
    assert float(raw_along.abs().max()) > 1e-3  # autograd's own gradient has that component


def test_bfloat16_matmuls_keep_float32_state_and_nearly_the_gradients():
    ref = _gradient_case("jumprelu")[0]
    for arch in ("jumprelu", "topk"):
        fp32 = _gradient_case(arch)[0]
        bf16 = _gradient_case(arch, cfg_kw={"matmul_dtype": "bfloat16"})[0]
        assert bf16.W_enc_mm.dtype == torch.bfloat16
        for a, b in zip(fp32.params, bf16.params, strict=True):
            assert b.dtype == b.grad.dtype == torch.float32
            err = float((a.grad - b.grad).norm() / a.grad.norm())
            assert 0 < err < 0.03, (arch, err)  # bf16 rounding, not a different gradient
        bf16.step(torch.randn(32, 16))
        assert all(s.dtype == torch.float32 for s in bf16.opt.exp_avg + bf16.opt.exp_avg_sq)
    assert ref.W_enc_mm is ref.W_enc_T  # float32: no copies


def test_csr_support_probe_on_this_machine():
    assert csr_supported("cpu") is True
    assert csr_supported("meta") is False  # no sparse kernels there


def test_fused_adam_matches_torch_adam():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(5, 3, generator=g), torch.randn(4, generator=g)]
    b = [torch.nn.Parameter(t.clone()) for t in a]
    ours = FusedAdam(a, lr=1e-2)
    ref = torch.optim.Adam(b, lr=1e-2, foreach=False)
    for _ in range(4):
        grads = [torch.randn(t.shape, generator=g) for t in a]
        for t, p, gr in zip(a, b, grads, strict=True):
            t.grad, p.grad = gr.clone(), gr.clone()
        ours.step()
        ref.step()
    for t, p in zip(a, b, strict=True):
        assert torch.allclose(t, p.detach(), atol=1e-6)


def test_ste_threshold_gradient_window_and_sign():
    eps, theta = 0.2, torch.tensor([1.0, 1.0, 1.0])
    # latent 0: one value inside the window; latent 1: values just outside; latent 2: far away
    pre = torch.tensor([[1.05, 1.0 + 0.11, 3.0], [0.5, 1.0 - 0.11, -2.0]])
    zero = torch.zeros_like(pre)
    g = ste_threshold_grad(pre, theta, zero, eps, l0_coefficient=0.3, kernel_name="rectangle")
    # only the L0 term: -(1/eps) * lambda / B for each pre inside |pre - theta| < eps/2
    assert g[0].item() == pytest.approx(-(1 / eps) * 0.3 / 2)
    assert g[1].item() == 0.0 and g[2].item() == 0.0
    # the L0 term pushes thresholds up (negative gradient); a useful latent (d loss/d f < 0)
    # pushes its threshold down through the JumpReLU term
    useful = torch.full_like(pre, -1.0)
    g2 = ste_threshold_grad(pre, theta, useful, eps, l0_coefficient=0.0, kernel_name="rectangle")
    assert g2[0].item() == pytest.approx((1.0 / eps) * 1.0) and g2[1].item() == 0.0
    # the gaussian kernel: the standard normal density, no hard window
    gg = ste_threshold_grad(pre, theta, zero, eps, 0.3, "gaussian")
    density = torch.distributions.Normal(0.0, 1.0).log_prob((pre - theta) / eps).exp()
    assert torch.allclose(gg, -(1 / eps) * 0.3 / 2 * density.sum(0))
    assert (gg < 0).all()
