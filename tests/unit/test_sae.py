"""The SAE library: definitions, gradients, known answers, export, errors and the grid stage."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from lib.core.config import SAEConfig, SteConfig
from lib.core.fileio import RunDirError
from lib.core.rundir import init_run
from lib.sae.architectures.jumprelu_ste import ste_kernel, ste_threshold_grad
from lib.sae.fused_step import FastSAETrainer, FusedAdam, csr_supported
from lib.sae.model import SAE, SAEFormatError, is_complete, load_sae, read_metrics, save_sae
from lib.sae.train_grid import heldout_mask
from lib.sae.trainer import (
    L0_STABLE,
    NotConvergedWarning,
    l0_trend,
    scale_factor,
    train_sae,
    training_budget,
)

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


# ----- definitions ------------------------------------------------------------------------------------
def test_encode_is_saelens_definition_topk_selects_then_relus():
    sae = random_sae("topk", k=5)
    with torch.no_grad():
        # every pre-activation negative: the top 5 are still selected, then ReLU'd to 0
        sae.b_enc.fill_(-50.0)
    x = torch.randn(7, 12)
    assert torch.count_nonzero(sae.encode(x)) == 0
    sae = random_sae("topk", k=5)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = sae.encode(x)
    for row in range(7):
        top = torch.topk(pre[row], 5).indices
        expect = torch.zeros(40)
        expect[top] = pre[row, top].clamp(min=0)
        assert torch.equal(f[row], expect)
    assert torch.allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec)


def test_encode_is_saelens_definition_jumprelu():
    sae = random_sae("jumprelu_ste")
    x = torch.randn(9, 12)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    expect = torch.where(pre > sae.threshold, pre, torch.zeros(()))
    assert torch.equal(sae.encode(x), expect.clamp(min=0))
    assert not sae.encode(x).requires_grad  # probes call .numpy() on it


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


# ----- known answers on synthetic dictionary data -------------------------------------------------------
def _dictionary_data(n: int, dictionary: torch.Tensor, active: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n_atoms = dictionary.shape[0]
    idx = torch.argsort(torch.rand(n, n_atoms, generator=g), dim=1)[:, :active]
    coef = torch.rand(n, active, generator=g) * 1.5 + 0.5
    return torch.nn.functional.embedding_bag(idx, dictionary, per_sample_weights=coef, mode="sum")


TRUE_L0 = 4


@pytest.fixture(scope="module")
def known_answer():
    """SAEs of each kind on d=64 data made of 4 of 256 unit-norm atoms, with non-negative weights."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    D = torch.randn(256, 64, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    x = _dictionary_data(8192, D, TRUE_L0, seed=1)
    held = _dictionary_data(2048, D, TRUE_L0, seed=2)
    cfg = SAEConfig(
        expansion_factor=4,
        k=TRUE_L0,
        epochs=30,
        batch_size=128,
        lr=3e-3,
        ste=SteConfig(l0_coefficient=1e-2),
    )
    out = {}
    for arch in ARCHS:
        sae, hist = train_sae(x, arch, cfg, seed=0, progress=False)
        with torch.no_grad():
            f = sae.encode(held)
        out[arch] = (sae, hist, f, held)
    return out


def test_ste_learns_the_true_sparsity_and_threshold_zero_does_not(known_answer):
    l0 = {a: float((known_answer[a][2] > 0).sum(1).float().mean()) for a in ARCHS}
    assert abs(l0["jumprelu_ste"] - TRUE_L0) <= 0.5 * TRUE_L0, l0
    assert l0["jumprelu"] > 5 * TRUE_L0, l0  # a ReLU SAE: far denser than the data
    per_example = (known_answer["topk"][2] > 0).sum(1)
    assert bool((per_example == TRUE_L0).all()), per_example.unique()


def test_reconstruction_is_good_on_known_data(known_answer):
    for arch in ARCHS:
        sae, _, f, held = known_answer[arch]
        with torch.no_grad():
            fvu = float((held - sae.decode(f)).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
        assert fvu < 0.25, (arch, fvu)


def test_history_has_curves_and_counts(known_answer):
    _, hist, _, _ = known_answer["jumprelu_ste"]
    assert hist["steps"] == 30 * math.ceil(8192 / 128) == len(hist["step_loss"])
    assert len(hist["epoch_loss"]) == 30 and hist["n_train"] == 8192
    assert hist["epoch_loss"][-1] < 0.5 * hist["epoch_loss"][0]
    assert hist["epoch_l0"][-1] < hist["epoch_l0"][0]
    assert all(0.0 <= d <= 1.0 for d in hist["epoch_dead_fraction"]) and hist["seconds"] > 0


def test_exported_thresholds(known_answer, tmp_path):
    ste, relu = known_answer["jumprelu_ste"][0], known_answer["jumprelu"][0]
    assert bool((ste.threshold > 0).all()), "every STE threshold learned and positive"
    assert float(ste.threshold.median()) > 5 * 1e-3 * 8  # well above its init (1e-3 at unit norm)
    assert bool((relu.threshold == 0).all())
    for name, sae in (("ste", ste), ("relu", relu)):
        save_sae(sae, tmp_path / name)
        back = load_sae(tmp_path / name)
        assert torch.equal(back.threshold, sae.threshold)
        assert back.architecture == sae.architecture


def test_decoder_rows_have_unit_norm(known_answer):
    for arch in ARCHS:
        norms = known_answer[arch][0].W_dec.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


# ----- scaling, seeding, input checks -------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_scale_folding_raw_equals_training_space(arch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 16, generator=g) * 37.0 + 5.0  # raw scale far from sqrt(d_in)
    cfg = SAEConfig(expansion_factor=4, k=4, epochs=2, batch_size=64, lr=1e-3)
    s = scale_factor(x)
    assert float((x * s).norm(dim=1).mean()) == pytest.approx(4.0, rel=1e-5)
    tr = FastSAETrainer(16, arch, cfg, seed=0, scale=s, b_dec_init=(x * s).mean(0))
    for b in (x * s).split(64):
        tr.step(b.contiguous())
    raw, train_space = tr.export(), tr.training_space_sae()
    with torch.no_grad():
        f_raw, f_train = raw.encode(x), train_space.encode(x * s)
        assert torch.allclose(f_raw, f_train / s, atol=1e-5, rtol=1e-4)
        assert torch.allclose(raw(x), train_space(x * s) / s, atol=1e-4, rtol=1e-4)
        assert int((f_raw != 0).sum()) == int((f_train != 0).sum())


def test_same_seed_same_weights_other_seed_differs():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig(expansion_factor=4, k=3, epochs=2, batch_size=64)
    a, _ = train_sae(x, "jumprelu_ste", cfg, seed=7, progress=False)
    b, _ = train_sae(x, "jumprelu_ste", cfg, seed=7, progress=False)
    c, _ = train_sae(x, "jumprelu_ste", cfg, seed=8, progress=False)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.W_dec, c.W_dec)


# ----- training length and convergence ------------------------------------------------------------
def test_training_budget_steps_govern_when_set():
    cfg = SAEConfig(batch_size=100, epochs=3)
    assert training_budget(250, cfg) == (9, "epochs")  # 3 passes of ceil(250 / 100) batches
    with_steps = cfg.model_copy(update={"steps": 40})
    assert training_budget(250, with_steps) == (40, "steps")
    assert training_budget(25_000, with_steps) == (40, "steps")  # whatever the data size
    assert training_budget(250, with_steps, epochs=2) == (6, "epochs")  # an argument overrides
    assert training_budget(250, cfg, steps=5) == (5, "steps")
    with pytest.raises(ValueError, match="steps=0 must be >= 1"):
        training_budget(250, cfg, steps=0)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        SAEConfig(steps=0)


@pytest.mark.parametrize("n", [40, 300, 1000])
def test_a_step_budget_trains_equally_long_on_any_data_size(n):
    cfg = SAEConfig(expansion_factor=2, k=2, batch_size=32, steps=25, epochs=1)
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(n))
    _, h = train_sae(x, "topk", cfg, 0, progress=False)
    per_epoch = math.ceil(n / 32)
    assert h["steps"] == len(h["step_loss"]) == 25 and h["budget"] == "steps"
    assert len(h["epoch_loss"]) == math.ceil(25 / per_epoch)  # reshuffled passes, last cut short
    assert h["epoch_step"][-1] == 25 and h["epochs"] == pytest.approx(25 / per_epoch, abs=1e-4)
    assert h["training_mean_norm"] == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-5)


def test_l0_trend_is_the_change_over_the_last_tenth():
    assert l0_trend([12.0] * 100) == 0.0
    assert l0_trend([100.0] * 80 + [90.0] * 10 + [81.0] * 10) == pytest.approx(-0.1)
    assert l0_trend([3.0] * 19) is None  # too short to tell


def test_an_sae_still_changing_sparsity_is_flagged():
    g = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=1)
    x = _dictionary_data(2048, D, 3, seed=1)
    cfg = SAEConfig(expansion_factor=4, k=3, batch_size=64, lr=1e-2, steps=80)
    cfg = cfg.model_copy(update={"ste": SteConfig(l0_coefficient=1e-2)})
    with pytest.warns(NotConvergedWarning, match="has not converged"):
        _, h = train_sae(x, "jumprelu_ste", cfg, 0, progress=False)
    assert h["converged"] is False and h["l0_change_last_10pct"] < -L0_STABLE
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvergedWarning)
        _, h = train_sae(x, "topk", cfg, 0, progress=False)  # TopK: L0 fixed at k from the start
    assert h["converged"] is True and abs(h["l0_change_last_10pct"]) <= L0_STABLE


def test_training_input_errors():
    cfg = SAEConfig(expansion_factor=2, k=2, epochs=1)
    with pytest.raises(ValueError, match="architecture='relu'"):
        train_sae(torch.randn(10, 4), "relu", cfg, 0, progress=False)
    with pytest.raises(ValueError, match=r"\[N, d_in\]"):
        train_sae(torch.randn(10), "topk", cfg, 0, progress=False)
    x = torch.randn(10, 4)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_sae(x, "topk", cfg, 0, progress=False)
    with pytest.raises(ValueError, match="k=99"):
        train_sae(torch.randn(10, 4), "topk", cfg.model_copy(update={"k": 99}), 0, progress=False)
    sae = random_sae("topk")
    with pytest.raises(ValueError, match="last dimension 13"):
        sae.encode(torch.randn(2, 13))


# ----- export and load ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_roundtrip_and_cfg(arch, tmp_path):
    sae = random_sae(arch)
    sae.meta.update(hook_name="model.layers.2", hook_layer=2, training_condition="mixed")
    path = save_sae(sae, tmp_path / "s")
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == ("topk" if arch == "topk" else "jumprelu")
    assert cfg["metadata"]["study_architecture"] == arch
    assert cfg["metadata"]["hook_name"] == "model.layers.2"
    assert cfg["metadata"]["model_class_name"] == "AutoModelForCausalLM"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert (cfg.get("k") == 5) == (arch == "topk")
    back = load_sae(path, d_in=12)
    x = torch.randn(6, 12)
    assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back(x), sae(x))
    save_sae(back, path)  # replacing an existing folder works
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(SAEFormatError, match="not an SAE folder"):
        load_sae(tmp_path / "nope")
    path = save_sae(random_sae("topk"), tmp_path / "s")
    with pytest.raises(SAEFormatError, match="d_in=12 but the activations have width 2048"):
        load_sae(path, d_in=2048)
    (path / "sae_weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors is unreadable or corrupt"):
        load_sae(path)
    (path / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors is missing"):
        load_sae(path)
    path = save_sae(random_sae("topk"), tmp_path / "t")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(SAEFormatError, match="cfg.json: architecture='gated' is not supported"):
        load_sae(path)
    (path / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="cfg.json is not valid JSON"):
        load_sae(path)
    path = save_sae(random_sae("jumprelu"), tmp_path / "u")
    from safetensors.torch import load_file, save_file

    t = load_file(str(path / "sae_weights.safetensors"))
    save_file({**t, "scaling_factor": torch.ones(1)}, str(path / "sae_weights.safetensors"))
    with pytest.raises(SAEFormatError, match="needs exactly"):
        load_sae(path)


# ----- the grid stage on a tiny model -------------------------------------------------------------------
def test_heldout_mask_is_stratified_and_seeded():
    y = np.array([0] * 30 + [1] * 10)
    m = heldout_mask(y, 0.2, seed=0)
    assert m[y == 0].sum() == 6 and m[y == 1].sum() == 2
    assert np.array_equal(m, heldout_mask(y, 0.2, seed=0))
    assert not np.array_equal(m, heldout_mask(y, 0.2, seed=1))
    assert heldout_mask(y, 0.0, 0).sum() == 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run of an untrained 8-layer toy Llama: fake completions, labels, real captured activations."""
    from lib.capture.activations import capture_run
    from lib.core.config import load_config
    from lib.core.fileio import append_jsonl
    from lib.core.rundir import init_run
    from lib.core.scenarios import load_scenarios
    from lib.models.loading import load_model_path
    from lib.models.organism import build_organism

    root = tmp_path_factory.mktemp("sae_stage")
    model_dir = build_organism(root / "model", steps=0, progress=False)
    cfg = load_config(
        "organism",
        {
            "name": "t",
            "model": str(model_dir),
            "capture.layers": [1, 2],
            "capture.batch_size": 8,
            "sae.layers": [1],
            "sae.architectures": ["topk"],
            "features.saes": "all",
            "sae.ste_layers": [2],
            "sae.conditions": ["mixed", "honest_only"],
            "sae.steps": 30,
            "sae.heldout_fraction": 0.25,
            "sae.seeds": 1,
            "sae.n_jobs": 1,  # in this process: tests replace parts of it
        },
    )
    run = init_run(cfg, root / "runs")
    rng = np.random.default_rng(0)
    words = "yes no the money report i did not we should tell them everything hide it".split()
    scen = list(load_scenarios(cfg.scenario_path()).values())[:3]
    rows, labels = [], []
    for sc in scen:
        for i in range(8):
            text = " " + " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
            cid = f"{sc.id}-{i:03d}"
            rows.append(
                {"id": cid, "scenario": sc.id, "sample": i, "prompt": sc.prompt, "completion": text}
            )
            labels.append(
                {
                    "id": cid,
                    "judge": "keyword",
                    "label": ["honest", "deceptive", "ambiguous"][i % 3],
                }
            )
    append_jsonl(run.completions, rows)
    append_jsonl(run.labels, labels)
    lm = load_model_path(str(model_dir))
    capture_run(run, cfg, *lm, progress=False)
    return cfg, run, lm


def test_replacement_hook_identity_keeps_the_loss(tiny_run):
    from lib.core.fileio import read_jsonl
    from lib.models.loading import replace_resid
    from lib.sae.metrics import ce_with_replacement

    cfg, run, (model, tok) = tiny_run
    rows = read_jsonl(run.completions)[:5]
    clean, n = ce_with_replacement(model, tok, rows, 1, "clean")
    ids = tok(rows[0]["prompt"] + rows[0]["completion"], return_tensors="pt").input_ids
    with torch.no_grad():
        base = model(ids).logits
        with replace_resid(model, 1, lambda h: h.clone()):
            same = model(ids).logits
        with replace_resid(model, 1, torch.zeros_like):
            other = model(ids).logits
    assert torch.equal(base, same) and not torch.allclose(base, other)
    zero, _ = ce_with_replacement(model, tok, rows, 1, "zero")
    assert n > 0 and math.isfinite(clean) and zero != clean


def test_sae_lm_metrics_agree_with_separate_runs_and_a_direct_kl(tiny_run):
    from lib.core.fileio import read_jsonl
    from lib.models.loading import replace_resid, row_ids
    from lib.sae.metrics import ce_with_replacement, sae_lm_metrics

    cfg, run, (model, tok) = tiny_run
    rows = read_jsonl(run.completions)[:4]
    sae = random_sae("jumprelu", d_in=128, d_sae=256)
    with torch.no_grad():
        sae.W_dec.mul_(0.05)
    m = sae_lm_metrics(model, tok, rows, 1, sae, batch_size=3)
    clean, n = ce_with_replacement(model, tok, rows, 1, "clean")
    spliced, _ = ce_with_replacement(model, tok, rows, 1, "sae", sae=sae)
    assert m["n_tokens"] == n > 0
    assert m["ce_clean"] == pytest.approx(clean, rel=1e-6)
    assert m["ce_sae"] == pytest.approx(spliced, rel=1e-6)
    assert m["delta_ce"] == pytest.approx(spliced - clean, rel=1e-6) and m["delta_ce"] != 0
    # KL(clean || sae) of one completion, written out
    ids, n_prompt = row_ids(tok, rows[0])
    ids_t = torch.tensor([ids])
    comp = torch.zeros(1, len(ids), dtype=torch.bool)
    comp[0, n_prompt:] = True

    def splice(h):
        out = h.clone()
        out[comp] = sae(h[comp].float()).to(h.dtype)
        return out

    with torch.no_grad():
        p = torch.log_softmax(model(ids_t).logits[0, n_prompt - 1 : -1].float(), -1)
        with replace_resid(model, 1, splice):
            q = torch.log_softmax(model(ids_t).logits[0, n_prompt - 1 : -1].float(), -1)
    kl_one = float((p.exp() * (p - q)).sum(-1).mean())
    one = sae_lm_metrics(model, tok, rows[:1], 1, sae)
    assert one["kl"] == pytest.approx(kl_one, rel=1e-4) and kl_one > 0


def test_train_grid_cell_writes_a_complete_resumable_folder(tiny_run):
    from lib.capture.labelled import labelled_rows
    from lib.sae.train_grid import train_grid, train_grid_cell

    cfg, run, lm = tiny_run
    path = train_grid_cell(run, cfg, 2, "jumprelu_ste", "mixed", progress=False, lm=lm)
    assert path == run.sae_dir("organism_jumprelu_ste_L2_mixed") and is_complete(path)
    m = read_metrics(path)
    lab = labelled_rows(run, cfg)
    assert m["n_completions"] == len(lab.select("mixed")) == 18
    assert m["n_heldout_completions"] == 4 and m["evaluated_on"] == "heldout"
    assert m["d_in"] == 128 and m["d_sae"] == 512 and m["hook_name"] == "model.layers.2"
    assert 0 <= m["dead_fraction"] <= 1 and 0 < m["fvu"] < 2 and m["l0"] > 0
    for key in ("ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "ce_delta", "kl"):
        assert math.isfinite(m[key]), key
    assert m["ce_loss_recovered"] == pytest.approx(
        (m["ce_zero"] - m["ce_sae"]) / (m["ce_zero"] - m["ce_clean"])
    )
    assert m["ce_delta"] == pytest.approx(m["ce_sae"] - m["ce_clean"]) and m["kl"] > 0
    assert m["train_steps"] == 30 and m["budget"] == "steps"
    assert m["history"]["epoch_step"][-1] == 30 and isinstance(m["converged"], bool)
    sae = load_sae(path, d_in=128)
    assert sae.architecture == "jumprelu_ste" and sae.meta["training_condition"] == "mixed"
    assert "activation_scale" not in sae.meta  # the name that read like a factor to apply
    assert sae.meta["training_mean_norm"] == pytest.approx(m["training_mean_norm"])
    stamp = (path / "metrics.json").stat().st_mtime_ns
    train_grid_cell(run, cfg, 2, "jumprelu_ste", "mixed", progress=False, lm=lm)  # skipped
    assert (path / "metrics.json").stat().st_mtime_ns == stamp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = train_grid(run, cfg, progress=False)
    assert len(paths) == len(cfg.sae_grid()) == 4 and all(is_complete(p) for p in paths)
    # unconverged SAEs are named in one warning, not one warning each
    said = [str(w.message) for w in caught if issubclass(w.category, NotConvergedWarning)]
    trained = [p for p in paths if p != path]  # the first SAE was trained above
    late = [p.name for p in trained if read_metrics(p)["converged"] is False]
    assert len(said) == (1 if late else 0)
    honest = read_metrics(run.sae_dir("organism_topk_L1_honest_only"))
    assert honest["n_completions"] == 9 and honest["l0"] == pytest.approx(cfg.sae.k)
    # sae.steps: every condition trains for the same number of steps, whatever its size
    grid = [read_metrics(p) for p in paths]
    assert {g["train_steps"] for g in grid} == {30}
    assert len({g["n_train_vectors"] for g in grid}) > 1
    assert {g["condition"] for g in grid} == {"mixed", "honest_only"}
    # changed SAE settings must not silently reuse the old SAE
    cfg2 = cfg.model_copy(update={"sae": cfg.sae.model_copy(update={"steps": 12})})
    with pytest.raises(RunDirError, match="differ from the run's config.yaml"):
        train_grid_cell(run, cfg2, 2, "jumprelu_ste", "mixed", progress=False, lm=lm)
    init_run(cfg2, run.root.parent, write_config=True)  # what the grid does with new settings
    train_grid_cell(run, cfg2, 2, "jumprelu_ste", "mixed", progress=False, lm=lm)
    assert (path / "metrics.json").stat().st_mtime_ns != stamp
    assert read_metrics(path)["train_steps"] == 12


def test_train_grid_names_unconverged_saes_in_one_warning(tiny_run, monkeypatch):
    from lib.sae import train_grid as sae_training

    cfg, run, lm = tiny_run

    def fake_cell(run, cfg, layer, arch, condition, **kw):
        if arch == "jumprelu_ste":
            warnings.warn("has not converged", NotConvergedWarning, stacklevel=1)
        warnings.warn("another warning", UserWarning, stacklevel=1)
        return run.sae_dir(cfg.sae_id(layer, arch, condition, kw["seed_index"]))

    monkeypatch.setattr(sae_training, "train_grid_cell", fake_cell)
    monkeypatch.setattr(sae_training, "load_model", lambda cfg: lm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sae_training.train_grid(run, cfg, progress=False, force=True)
    said = [str(w.message) for w in caught if issubclass(w.category, NotConvergedWarning)]
    ste = [cfg.sae_id(*c) for c in cfg.sae_grid() if c[1] == "jumprelu_ste"]
    assert len(said) == 1 and ste
    assert said[0].startswith(f"{len(ste)} of {len(cfg.sae_grid())} SAEs had not converged")
    assert all(sae_id in said[0] for sae_id in ste)
    others = [w for w in caught if w.category is UserWarning]
    assert len(others) == len(cfg.sae_grid())  # other warnings pass through, one per cell


def test_the_grid_trained_by_two_processes_equals_one_process(tiny_run, tmp_path):
    """``sae.n_jobs: 2`` shares the layers out over two processes; every SAE file and metric
    (timing aside) is byte for byte what one process writes."""
    import shutil

    from lib.sae.train_grid import train_grid

    cfg, run, _ = tiny_run
    out = {}
    for jobs in (1, 2):
        root = tmp_path / f"jobs{jobs}"
        shutil.copytree(run.root, root / run.root.name, ignore=shutil.ignore_patterns("saes"))
        c = cfg.model_copy(update={"sae": cfg.sae.model_copy(update={"n_jobs": jobs})})
        copy = init_run(c, root, write_config=True)
        paths = train_grid(copy, c, progress=False)
        assert len({p.name.split("_L")[1][0] for p in paths}) == 2  # two layers: two processes
        out[jobs] = {
            p.name: (
                (p / "sae_weights.safetensors").read_bytes(),
                {k: v for k, v in read_metrics(p).items() if "second" not in k},
            )
            for p in paths
        }
    assert out[1].keys() == out[2].keys() and len(out[1]) == len(cfg.sae_grid())
    for name in out[1]:
        assert out[1][name][0] == out[2][name][0], name
        assert out[1][name][1] == out[2][name][1], name


def test_seeds_train_one_sae_each_under_their_own_ids(tiny_run):
    from lib.sae.train_grid import train_grid_cell

    cfg, run, lm = tiny_run
    cfg2 = cfg.model_copy(update={"sae": cfg.sae.model_copy(update={"seeds": 2, "steps": 5})})
    init_run(cfg2, run.root.parent, write_config=True)
    first = train_grid_cell(run, cfg2, 1, "topk", "mixed", progress=False, lm=lm)
    second = train_grid_cell(run, cfg2, 1, "topk", "mixed", progress=False, lm=lm, seed_index=1)
    assert first.name == "organism_topk_L1_mixed" and second.name == "organism_topk_L1_mixed_s1"
    a, b = read_metrics(first), read_metrics(second)
    assert a["seed"] == cfg.seed and b["seed"] == cfg2.sae_seed(1) != cfg.seed
    assert not torch.equal(load_sae(first).W_dec, load_sae(second).W_dec)


def test_a_grid_cell_typed_by_hand_gets_a_clear_error(tiny_run):
    from lib.core.config import ConfigError
    from lib.sae.train_grid import check_sae_cell

    cfg, run, _ = tiny_run
    check_sae_cell(run, cfg, 2, "jumprelu_ste", "mixed")  # a real cell passes
    with pytest.raises(
        ConfigError, match=r"arch='relu'.*allowed: \['topk', 'jumprelu', 'jumprelu_ste'\]"
    ):
        check_sae_cell(run, cfg, 2, "relu", "mixed")
    with pytest.raises(ConfigError, match="condition='lying'"):
        check_sae_cell(run, cfg, 2, "topk", "lying")
    with pytest.raises(ConfigError, match=r"layer=40: the model has layers 0..7"):
        check_sae_cell(run, cfg, 40, "topk", "mixed")
    with pytest.raises(
        ConfigError, match=r"layer=5: it was not captured; captured layers .*\[1, 2\]"
    ):
        check_sae_cell(run, cfg, 5, "topk", "mixed")
