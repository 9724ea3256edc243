"""Training one of the study's SAEs on a matrix of activations: :func:`train_sae`.

:func:`train_sae` trains one SAE on a ``[N, d_in]`` float32 tensor and returns it ready for raw
activations, with a history dict. The step itself (hand-written forward and backward passes,
fused Adam, sparse TopK products) is :class:`lib.sae_kernels.FastSAETrainer`; this module owns
the recipe around it. Small SAEs (fewer than ~1M encoder weights) train single-threaded: there a
second thread only adds synchronisation.

Training recipe (study defaults in :class:`lib.config.SAEConfig`):

* Inputs are scaled by one factor ``s`` so that their mean norm is ``sqrt(d_in)`` (SAELens's
  ``expected_average_only_in`` convention). At the end ``s`` is folded into the biases and the
  threshold (``b_enc/s``, ``b_dec/s``, ``threshold/s``; ``W_enc`` and ``W_dec`` unchanged), so
  the returned SAE takes raw activations, keeps unit-norm decoder rows, and its latent values
  are in raw activation units.
* Adam (betas 0.9/0.999), constant learning rate, no gradient clipping; one shuffled pass over
  the data per epoch (a permutation of row indices per epoch); the last short batch is used.
* Init: decoder rows random unit vectors, ``W_enc = c * W_dec^T`` (``c = 1`` for TopK,
  ``d_in / d_sae`` for the JumpReLU kinds), ``b_enc = 0``, ``b_dec`` = mean training vector (in
  training space).
* The losses of each architecture: see :mod:`lib.sae_kernels`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from lib.config import SAEConfig
from lib.runtime import progress as progress_bar
from lib.runtime import torch_threads
from lib.sae import SAE, check_architecture
from lib.sae_kernels import DEAD_WINDOW_MAX_STEPS, FastSAETrainer

# Below this many encoder weights a step is a few hundred small kernels; a second thread only
# adds synchronisation (and on 2 shared cores, waits), so small SAEs train single-threaded.
SINGLE_THREAD_BELOW = 1 << 20


def scale_factor(x: torch.Tensor) -> float:
    """The factor that brings the mean row norm of ``x`` to ``sqrt(d_in)``."""
    mean_norm = float(torch.linalg.vector_norm(x, dim=1).double().mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"training activations have mean norm {mean_norm}; cannot normalise them")
    return math.sqrt(x.shape[1]) / mean_norm


def check_training_input(x: torch.Tensor, d_in: int | None = None) -> torch.Tensor:
    """``x`` as a contiguous float32 CPU tensor ``[N, d_in]``; a clear error for anything else."""
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
    path uses the same operations but is not tested on this project's machines). Returns
    ``(sae, history)``: the SAE takes raw activations
    (``sae.encode(x) -> [N, d_sae]``); ``history`` holds ``step_loss``/``step_l0`` (per step),
    ``epoch_loss``/``epoch_mse``/``epoch_l0``/``epoch_fvu``/``epoch_dead_fraction`` (per epoch,
    dead = no activation during that epoch), ``steps``, ``epochs``, ``seconds``, ``n_train``,
    ``scale`` and the training-space STE settings.
    """
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
        device=dev,
    )
    total_var = float((xs - xs.mean(0)).pow(2).sum(1).mean())
    single = d * trainer.d_sae < SINGLE_THREAD_BELOW and dev.type == "cpu"
    hist = _new_history()
    with torch_threads(1 if single else None):
        _fit(trainer, xs, n_epochs, seed, total_var, hist, progress, architecture)
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


def _new_history() -> dict[str, Any]:
    keys = ("step_loss", "step_l0", "epoch_loss", "epoch_mse", "epoch_l0", "epoch_fvu")
    return {k: [] for k in (*keys, "epoch_dead_fraction")}


def _fit(
    trainer: FastSAETrainer,
    xs: torch.Tensor,
    n_epochs: int,
    seed: int,
    total_var: float,
    hist: dict,
    progress: bool,
    architecture: str,
) -> None:
    """``n_epochs`` shuffled passes over the training-space vectors ``xs``; fills ``hist``."""
    n, d = xs.shape
    B, dev = trainer.B, xs.device
    steps_per_epoch = math.ceil(n / B)
    xb = torch.empty(B, d, device=dev)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    bar = progress_bar(
        total=n_epochs * steps_per_epoch, desc=f"SAE {architecture}", on=progress, leave=False
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
