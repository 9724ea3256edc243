"""Speed of our SAE trainer against SAELens's ``SAETrainer`` at TinyLlama's size.

Both train a 2048 -> 8192 SAE (batch 128, Adam lr 3e-4, the study's coefficients) on the same
synthetic activations: sparse non-negative combinations of a random dictionary with a
power-law atom frequency, a shared offset (residual streams have a large mean) and Gaussian
noise. Each trainer runs ``WARMUP`` untimed steps, then ``TIMED`` timed steps, on the same
batches; FVU is then measured on held-out vectors. SAELens is fed the data already at mean norm
sqrt(d_in), our trainer's training space, so that every hyperparameter means the same thing;
our trainer gets raw data and does its own scaling. Both JumpReLU kinds are compared with
SAELens's ``jumprelu`` trainer (its own STE); for ``jumprelu`` (threshold 0 + L1) an extra line
compares with SAELens's ``standard`` (ReLU + L1) trainer, the like-for-like objective.

Run: ``python tests/benchmarks/bench_sae_train.py`` (about 3 minutes on 2 cores), or through
pytest (``pytest tests/benchmarks/bench_sae_train.py -s``). Prints one line per architecture::

    ratio_vs_saelens <arch> <their ms/step / our ms/step> fvu_ours <x> fvu_saelens <y>

Threads are fixed at 2. Timings are wall clock and move with other load on the machine.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.config import SAEConfig, SteConfig  # noqa: E402
from lib.sae_kernels import FastSAETrainer  # noqa: E402
from lib.sae_trainer import scale_factor  # noqa: E402

D_IN, EXPANSION, K, BATCH, LR = 2048, 4, 64, 128, 3e-4
WARMUP, TIMED, N_HELDOUT = 10, 30, 1024
DEAD_WINDOW = 10  # steps without firing before a latent is dead (AuxK), the same for both trainers
STE = SteConfig()  # rectangle kernel, bandwidth 1e-3, threshold 1e-3, L0 1e-3 (unit-norm units)
L1 = 1e-3


def synthetic_activations(
    n: int, d: int = D_IN, n_atoms: int = 16384, active: int = 32, seed: int = 0
):
    """Sparse dictionary data: ``offset + sum_i c_i * atom_i + noise`` with power-law atom use."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    freq = 1.0 / torch.arange(1, n_atoms + 1, dtype=torch.float64) ** 0.8
    idx = torch.multinomial(freq.float().expand(n, -1), active, replacement=False, generator=g)
    coef = torch.empty(n, active).exponential_(1.0, generator=g) * 3.0
    x = torch.nn.functional.embedding_bag(idx, atoms, per_sample_weights=coef, mode="sum")
    offset = torch.randn(d, generator=g) * 0.5
    return x + offset * math.sqrt(d) / 4 + 0.3 * torch.randn(n, d, generator=g)


def fvu(x: torch.Tensor, recon: torch.Tensor) -> float:
    return float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def ours(arch: str, x_raw: torch.Tensor, held_raw: torch.Tensor) -> tuple[float, float]:
    cfg = SAEConfig(
        expansion_factor=EXPANSION, k=K, batch_size=BATCH, lr=LR, l1_coefficient=L1, ste=STE
    )
    s = scale_factor(x_raw)
    xs = x_raw * s
    tr = FastSAETrainer(
        D_IN, arch, cfg, seed=0, scale=s, b_dec_init=xs.mean(0), dead_window=DEAD_WINDOW
    )
    batches = xs.split(BATCH)
    for b in batches[:WARMUP]:
        tr.step(b.contiguous())
    t0 = time.perf_counter()
    for b in batches[WARMUP : WARMUP + TIMED]:
        tr.step(b.contiguous())
    ms = (time.perf_counter() - t0) / TIMED * 1000
    sae = tr.export()
    with torch.no_grad():
        return ms, fvu(held_raw, sae(held_raw))


def saelens(arch: str, x_norm: torch.Tensor, held_norm: torch.Tensor) -> tuple[float, float]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    common = dict(d_in=D_IN, d_sae=D_IN * EXPANSION, dtype="float32", device="cpu")
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=K, aux_loss_coefficient=1 / 32, **common))
    elif arch == "standard":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=L1, **common))
    else:
        r = math.sqrt(D_IN)
        sae = JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                jumprelu_init_threshold=STE.threshold_init * r,
                jumprelu_bandwidth=STE.bandwidth * r,
                l0_coefficient=STE.l0_coefficient * D_IN,
                **common,
            )
        )
    steps = WARMUP + TIMED + 1
    marks: dict[int, float] = {}

    def provider():
        for i, b in enumerate(x_norm.split(BATCH)[:steps]):
            marks[i] = time.perf_counter()
            yield b.contiguous()

    cfg = SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=LR,
        lr_end=LR,  # constant schedule (SAELens's runner config fills this in; we build the trainer directly)
        device="cpu",
        dead_feature_window=DEAD_WINDOW,
        feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg, sae, provider())
    trainer.fit()
    ms = (marks[WARMUP + TIMED] - marks[WARMUP]) / TIMED * 1000
    with torch.no_grad():
        return ms, fvu(held_norm, sae.decode(sae.encode(held_norm)))


def main() -> list[str]:
    torch.set_num_threads(2)
    n = (WARMUP + TIMED + 1) * BATCH
    data = synthetic_activations(n + N_HELDOUT)
    x_raw, held_raw = data[:n], data[n:]
    s = scale_factor(x_raw)
    lines = []
    pairs = [
        ("topk", "topk"),
        ("jumprelu", "jumprelu"),
        ("jumprelu_ste", "jumprelu"),
        ("jumprelu", "standard"),
    ]
    for arch, theirs in pairs:
        ms_o, fvu_o = ours(arch, x_raw, held_raw)
        ms_s, fvu_s = saelens(theirs, x_raw * s, held_raw * s)
        tag = (
            "ratio_vs_saelens"
            if arch == theirs or arch == "jumprelu_ste"
            else f"ratio_vs_saelens_{theirs}"
        )
        line = (
            f"{tag} {arch} {ms_s / ms_o:.2f} fvu_ours {fvu_o:.4f} fvu_saelens {fvu_s:.4f}"
            f"  (ours {ms_o:.0f} ms/step, saelens {ms_s:.0f} ms/step)"
        )
        print(line, flush=True)
        lines.append(line)
    return lines


def test_bench_sae_train():
    lines = main()
    assert len(lines) == 4


if __name__ == "__main__":
    main()
