"""Wall time of one SAE's latent statistics at TinyLlama's shape (goal: under 60 s on 2 cores).

A TopK SAE (k=64) of TinyLlama's width (d_in 2048 -> d_sae 8192, random weights with unit-norm
decoder rows) and 300 completions x 64 response tokens of synthetic residuals (a shared offset,
noise, a label direction on deceptive completions; 35% deceptive, 9 scenarios) are made in memory.
Timed, as notebook 08 runs them:

1. ``sae_features``: encode all 19,200 response tokens, pool the codes per completion (mean, max);
2. ``latent_table``: per-latent AUROC, 1000-resample stratified bootstrap CI, Mann-Whitney
   q-values, firing rates, means, held-out-scenario AUROC, for all 8192 latents.

(1) + (2) is the figure the goal is about. The k-sparse probes (not part of the goal) are timed
after it for the record. Run: ``python tests/benchmarks/bench_latents.py`` or
``pytest tests/benchmarks/bench_latents.py -s``; prints, never asserts. Wall clock moves with
other load on the machine; the load average is printed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.capture.labelled import LayerData  # noqa: E402
from lib.latents.auroc import latent_table  # noqa: E402
from lib.latents.separating import k_sparse_table  # noqa: E402
from lib.sae.codes import sae_features  # noqa: E402
from lib.sae.model import SAE  # noqa: E402

D_IN, D_SAE, K, N, TOKENS, N_SCENARIOS, N_BOOT = 2048, 8192, 64, 300, 64, 9, 1000
BUDGET_S = 60.0


def synthetic(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    y = (rng.random(N) < 0.35).astype(int)
    scen = np.array([f"s{i % N_SCENARIOS}" for i in range(N)])
    owner = torch.arange(N).repeat_interleave(TOKENS)
    direction = torch.nn.functional.normalize(torch.randn(D_IN, generator=g), dim=0)
    tokens = 0.5 * torch.randn(D_IN, generator=g) + torch.randn(N * TOKENS, D_IN, generator=g)
    tokens += 4.0 * torch.as_tensor(y, dtype=torch.float32)[owner, None] * direction
    mean = tokens.view(N, TOKENS, D_IN).mean(1)
    data = LayerData(
        0, [f"c{i}" for i in range(N)], tokens[TOKENS - 1 :: TOKENS], mean, tokens, owner
    )
    sae = SAE(D_IN, D_SAE, "topk", k=K, meta={"train_on": "tokens"})
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=1))
        sae.W_enc.copy_(sae.W_dec.T)
    return data, sae, y, scen


def main() -> dict:
    data, sae, y, scen = synthetic()
    t0 = time.perf_counter()
    feats = sae_features(sae, data, np.arange(N), poolings=("mean", "max"), check_norm=False)
    t1 = time.perf_counter()
    table = latent_table(feats.features["mean"], y, scen, n_boot=N_BOOT, seed=0)
    t2 = time.perf_counter()
    ks = k_sparse_table(
        feats.features["mean"], data.mean.numpy(), y, scen, [1, 2, 5, 10, 20, 50], 1000, 0
    )
    t3 = time.perf_counter()
    out = {
        "encode_pool_seconds": t1 - t0,
        "latent_table_seconds": t2 - t1,
        "latent_statistics_seconds": t2 - t0,
        "k_sparse_seconds": t3 - t2,
    }
    for k, v in out.items():
        print(f"{k} {v:.1f}")
    total = out["latent_statistics_seconds"]
    print(
        f"latent statistics with CIs for one SAE ({D_SAE} latents, {N} x {TOKENS} tokens, "
        f"{N_BOOT} bootstrap resamples): {total:.1f} s, goal {BUDGET_S:.0f} s: "
        f"{'met' if total <= BUDGET_S else 'MISSED'}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"latents with q < 0.05: {(table['q_value'] < 0.05).sum()}; k-sparse rows: {len(ks)}")
    return out


def test_latent_statistics_speed():
    main()


if __name__ == "__main__":
    main()
