"""A new SAE architecture is one module-level spec and one registry line.

The fixture's architecture is SAELens's ``standard`` SAE: ``f = relu(pre)``, trained with an L1
penalty weighted by the decoder-row norms (``||x - x^||^2 + l1 * sum_j f_j ||W_dec_j||``), its
gradients from autograd rather than a hand-written step. Registered for one test module only,
it trains with the book's trainer (:func:`lib.sae.trainer.train_sae`) on planted sparse data,
exports with :func:`lib.sae.model.save_sae` and loads in SAELens
(``sae_lens.SAE.load_from_disk``) with the same encodings; the book's registry is untouched
afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from lib.core.config import SAEConfig
from lib.core.vocabulary import ARCHITECTURES
from lib.sae.architectures import REGISTRY, register, unregister
from lib.sae.architectures.spec import ArchitectureSpec, Trainer
from lib.sae.model import SAE, SAEFormatError, load_sae, save_sae
from lib.sae.trainer import train_sae


# ----- the new architecture: one spec ------------------------------------------------------------
class StandardL1(ArchitectureSpec):
    """SAELens's ``standard`` ReLU SAE with its decoder-norm-weighted L1 penalty."""

    name = "standard_l1"
    saelens_name = "standard"
    reads = {"standard": ()}
    hyperparameters = ("l1_coefficient",)

    def activation(self, sae: Any, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def loss_and_grads(self, trainer: Trainer, x: torch.Tensor) -> dict[str, float]:
        l1 = trainer.cfg.l1_coefficient
        with torch.enable_grad():
            W_enc_T, b_enc, W_dec, b_dec = (p.detach().requires_grad_() for p in trainer.params)
            f = ((x - b_dec) @ W_enc_T.t() + b_enc).relu()
            mse = (f @ W_dec + b_dec - x).pow(2).sum(1).mean()
            sparsity = (f * W_dec.norm(dim=1)).sum(1).mean()
            loss = mse + l1 * sparsity
            grads = torch.autograd.grad(loss, [W_enc_T, b_enc, W_dec, b_dec])
        for p, g in zip(trainer.params, grads, strict=True):
            p.grad.copy_(g)
        fired = f.detach() > 0
        trainer.mark_fired_mask(fired.any(0))
        l0 = float(fired.sum(1).float().mean())
        return {"loss": float(loss), "mse": float(mse), "l0": l0, "aux": l1 * float(sparsity)}


SPEC = StandardL1()


@contextmanager
def registered(spec: ArchitectureSpec) -> Iterator[ArchitectureSpec]:
    register(spec)  # the one registry line
    try:
        yield spec
    finally:
        unregister(spec.name)


@pytest.fixture
def standard_l1():
    """The new architecture, registered for one test and removed after it."""
    with registered(SPEC) as spec:
        yield spec


# ----- planted sparse data -----------------------------------------------------------------------
TRUE_L0, N_ATOMS, D_IN = 3, 64, 32
#: the L1 weight is in training space (inputs at mean norm sqrt(d_in)); 0.1 as a denser contrast
L1 = 1.0
CFG = SAEConfig(expansion_factor=4, steps=1500, batch_size=128, lr=3e-3, l1_coefficient=L1)


def planted() -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out vectors, each a sum of 3 of 64 unit atoms with weights 0.5-2."""
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(N_ATOMS, D_IN, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)

    def draw(n: int) -> torch.Tensor:
        idx = torch.argsort(torch.rand(n, N_ATOMS, generator=g), dim=1)[:, :TRUE_L0]
        coef = torch.rand(n, TRUE_L0, generator=g) * 1.5 + 0.5
        return torch.einsum("nk,nkd->nd", coef, atoms[idx])

    return draw(6000), draw(1000)


def fvu(sae: SAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The new architecture trained by the book's trainer at two L1 weights and exported."""
    x, held = planted()
    out: dict[str, Any] = {"held": held, "folder": tmp_path_factory.mktemp("sae") / "standard"}
    with registered(SPEC):
        for l1 in (L1, 0.1):
            sae, hist = train_sae(
                x, SPEC.name, CFG.model_copy(update={"l1_coefficient": l1}), 0, progress=False
            )
            with torch.no_grad():
                f = sae.encode(held)
            out[l1] = {"sae": sae, "hist": hist, "f": f, "fvu": fvu(sae, held)}
        save_sae(out[L1]["sae"], out["folder"])
    return out


# ----- the tests ---------------------------------------------------------------------------------
def test_the_book_registers_exactly_its_three_architectures():
    assert tuple(REGISTRY) == ARCHITECTURES
    for name, spec in REGISTRY.items():
        assert spec.name == name and name in spec.__module__  # one module each, named for it
        assert set(spec.default_for) <= set(spec.reads) and spec.saelens_name in spec.reads
        assert all(f in SAEConfig.model_fields for f in spec.hyperparameters), spec


def test_the_new_architecture_trains_to_a_sparse_faithful_code(trained, standard_l1):
    """Measured on this data: FVU 0.092 and L0 8.8 of 128 latents at L1 = 1 (the data has 3
    active atoms); 0.0076 and 46.7 at L1 = 0.1. The L0 settled (L0 moved < 5% at the end)."""
    run, dense = trained[L1], trained[0.1]
    l0 = float((run["f"] > 0).sum(1).float().mean())
    assert run["fvu"] < 0.15, run["fvu"]
    assert 3.0 <= l0 <= 15.0, l0
    assert float((dense["f"] > 0).sum(1).float().mean()) > 3 * l0  # the penalty is what sparsifies
    assert dense["fvu"] < run["fvu"]
    assert run["hist"]["converged"] is True
    assert run["sae"].threshold is None and run["sae"].k is None
    assert torch.allclose(run["sae"].W_dec.norm(dim=1), torch.ones(128), atol=1e-5)


def test_the_export_loads_in_saelens_with_our_encodings(trained, standard_l1):
    from sae_lens import SAE as LensSAE
    from sae_lens.saes.standard_sae import StandardSAE

    folder, held, ours = trained["folder"], trained["held"], trained[L1]["sae"]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and "k" not in cfg
    assert cfg["metadata"]["study_architecture"] == "standard_l1"
    assert sorted(ours.state_tensors()) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    theirs = LensSAE.load_from_disk(folder)
    assert isinstance(theirs, StandardSAE)
    with torch.no_grad():
        f = theirs.encode(held)
        # measured: equal to the last bit on this host (the same float32 ops in the same order)
        assert torch.allclose(f, trained[L1]["f"], rtol=0, atol=1e-6)
        assert torch.allclose(theirs.decode(f), ours.decode(f), rtol=0, atol=1e-5)
    back = load_sae(folder)  # and our own loader, while the architecture is registered
    assert back.architecture == "standard_l1"
    for name, t in ours.state_tensors().items():
        assert torch.equal(back.state_tensors()[name], t), name


def test_registering_refuses_a_clash(standard_l1):
    with pytest.raises(ValueError, match="already registered"):
        register(SPEC)

    class Greedy(StandardL1):
        name = "greedy"
        default_for = ("topk",)  # topk folders already load as topk

    with pytest.raises(ValueError, match="already load as"):
        register(Greedy())


def test_after_the_fixture_the_registry_is_the_books_again(trained):
    """The teardown removed the architecture: the book's three remain, and our loader refuses
    the exported folder (SAELens still reads it)."""
    assert tuple(REGISTRY) == ARCHITECTURES
    with pytest.raises(SAEFormatError, match="study_architecture='standard_l1' does not fit"):
        load_sae(trained["folder"])
    with pytest.raises(ValueError, match="allowed"):
        train_sae(trained["held"], SPEC.name, CFG, 0, progress=False)
