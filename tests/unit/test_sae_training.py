"""Training SAEs: known answers on synthetic dictionary data, input scaling, seeding, the step budget and convergence, input errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from sae_fixtures import ARCHS, random_sae

from lib.core.config import SAEConfig, SteConfig
from lib.sae.fused_step import FastSAETrainer
from lib.sae.model import load_sae, save_sae
from lib.sae.trainer import (
    L0_STABLE,
    NotConvergedWarning,
    l0_trend,
    scale_factor,
    train_sae,
    training_budget,
)


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
