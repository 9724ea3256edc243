"""Training one of the study's SAEs on a matrix of activations: :func:`train_sae`.

:func:`train_sae` trains one SAE on a ``[N, d_in]`` float32 tensor and returns it ready for raw
activations, with a history dict. The step itself (hand-written forward and backward passes,
fused Adam, sparse TopK products) is :class:`lib.sae.fused_step.FastSAETrainer`; this module owns
the recipe around it. Small SAEs (fewer than ~1M encoder weights) train single-threaded: there a
second thread only adds synchronisation.

Training recipe (study defaults in :class:`lib.core.config.SAEConfig`):

* Inputs are scaled by one factor ``s`` so that their mean norm is ``sqrt(d_in)`` (SAELens's
  ``expected_average_only_in`` convention; the JumpReLU paper instead scales to unit mean
  *squared* norm). At the end ``s`` is folded into the biases and the
  threshold (``b_enc/s``, ``b_dec/s``, ``threshold/s``; ``W_enc`` and ``W_dec`` unchanged), so
  the returned SAE takes raw activations, keeps unit-norm decoder rows, and its latent values
  are in raw activation units.
* Adam (betas 0.9/0.999), constant learning rate, no gradient clipping; one shuffled pass over
  the data per epoch (a permutation of row indices per epoch); the last short batch is used.
* Length (:func:`training_budget`): ``sae.steps`` optimiser steps when set, so that every
  condition of a grid trains equally long however many vectors it has (a small condition cycles
  through more reshuffled epochs; the last one is cut short); otherwise ``sae.epochs`` passes,
  the study's setting, under which a condition with a third of the data gets a third of the
  steps. Training ends with a check that the mean L0 has settled (:func:`l0_trend`).
* Init: decoder rows random unit vectors, ``W_enc = c * W_dec^T`` (the architecture's gain:
  ``c = 1`` for TopK, ``d_in / d_sae`` for the JumpReLU kinds), ``b_enc = 0``, ``b_dec`` = mean training vector (in
  training space).
* The losses of each architecture: its module in :mod:`lib.sae.architectures`.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch

from lib.core.config import SAEConfig
from lib.core.runtime import progress as progress_bar
from lib.core.runtime import torch_threads
from lib.sae.fused_step import DEAD_WINDOW_MAX_STEPS, FastSAETrainer
from lib.sae.model import SAE, check_architecture

# Below this many encoder weights a step is a few hundred small kernels; a second thread only
# adds synchronisation (and on 2 shared cores, waits), so small SAEs train single-threaded.
SINGLE_THREAD_BELOW = 1 << 20
#: an SAE whose mean L0 moved more than this (relative) over its last 10% of steps has not converged
L0_STABLE = 0.05


class NotConvergedWarning(UserWarning):
    """An SAE's sparsity was still changing when its training budget ran out."""


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


def training_budget(
    n: int, sae_cfg: SAEConfig, epochs: int | None = None, steps: int | None = None
) -> tuple[int, str]:
    """``(optimiser steps, "steps" | "epochs")`` for ``n`` training vectors.

    One setting governs: an explicit ``steps`` or ``epochs`` argument (``steps`` first), else
    ``sae_cfg.steps`` when set, else ``sae_cfg.epochs`` passes of ``ceil(n / batch_size)`` steps.
    """
    if steps is None and epochs is None:
        steps = sae_cfg.steps
        epochs = sae_cfg.epochs if steps is None else None
    if steps is not None:
        if int(steps) < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        return int(steps), "steps"
    if int(epochs) < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    return int(epochs) * math.ceil(n / int(sae_cfg.batch_size)), "epochs"


def l0_trend(step_l0: list[float], fraction: float = 0.1) -> float | None:
    """Relative change of the mean L0 over the last ``fraction`` of the steps.

    ``(mean L0 of the last 10% of steps) / (mean L0 of the 10% before) - 1``; None when there are
    fewer than 20 steps or no latent fired in the earlier window.
    """
    n = len(step_l0)
    w = int(n * fraction)
    if w < 1 or n < 20:
        return None
    before = sum(step_l0[n - 2 * w : n - w]) / w
    last = sum(step_l0[n - w :]) / w
    return last / before - 1.0 if before > 0 else None


def train_sae(
    x: torch.Tensor,
    architecture: str,
    sae_cfg: SAEConfig,
    seed: int,
    progress: bool = True,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    meta: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[SAE, dict]:
    """Train one SAE on ``x`` ``[N, d_in]`` (float32, raw activations).

    ``architecture`` is ``topk``, ``jumprelu`` (threshold 0, L1), ``jumprelu_ste`` or any other
    registered in :mod:`lib.sae.architectures`; all other settings come from ``sae_cfg``. The
    length is :func:`training_budget`: ``sae_cfg.steps`` optimiser steps when set (cycling
    through reshuffled epochs, the last one cut short), else ``sae_cfg.epochs`` full passes; the ``steps``/``epochs`` arguments override both. The same
    seed and data give identical weights. ``device`` is where training runs (CPU by default; the
    CUDA path is tested only where a GPU is present). Returns ``(sae, history)``: the SAE takes
    raw activations (``sae.encode(x) -> [N, d_sae]``); ``history`` holds ``step_loss``/``step_l0``
    (per step), ``epoch_loss``/``epoch_mse``/``epoch_l0``/``epoch_fvu``/``epoch_dead_fraction``
    and ``epoch_step`` (per pass over the data: its means, and the step count at its end; dead =
    no activation during that pass), ``steps``, ``budget``, ``epochs`` (passes, fractional when
    the last is cut short), ``seconds``, ``n_train``, ``scale``, ``training_mean_norm``,
    ``l0_change_last_10pct`` (:func:`l0_trend`), ``converged`` (that change within
    :data:`L0_STABLE`; a :class:`NotConvergedWarning` otherwise) and the architecture's own
    training settings (``jumprelu_ste``: ``ste_training_space``).
    """
    check_architecture(architecture)
    x = check_training_input(x)
    n, d = x.shape
    n_steps, budget = training_budget(n, sae_cfg, epochs, steps)
    t0 = time.perf_counter()
    s = scale_factor(x)
    dev = torch.device(device)
    xs = (x * s).to(dev)
    steps_per_epoch = math.ceil(n / int(sae_cfg.batch_size))
    total_var = float((xs - xs.mean(0)).pow(2).sum(1).mean())
    trainer = FastSAETrainer(
        d,
        architecture,
        sae_cfg,
        seed,
        scale=s,
        b_dec_init=xs.mean(0),
        dead_window=min(steps_per_epoch, DEAD_WINDOW_MAX_STEPS),
        device=dev,
        data_variance=total_var,
    )
    single = d * trainer.d_sae < SINGLE_THREAD_BELOW and dev.type == "cpu"
    hist = _new_history()
    with torch_threads(1 if single else None):
        _fit(trainer, xs, n_steps, seed, total_var, hist, progress, architecture)
    sae = trainer.export(meta)
    trend = l0_trend(hist["step_l0"])
    hist.update(
        architecture=architecture,
        steps=trainer.n_steps,
        budget=budget,
        epochs=round(trainer.n_steps / steps_per_epoch, 4),
        seconds=time.perf_counter() - t0,
        n_train=n,
        scale=s,
        training_mean_norm=math.sqrt(d) / s,
        batch_size=int(sae_cfg.batch_size),
        lr=sae_cfg.lr,
        matmul_dtype=str(trainer.lp or torch.float32).removeprefix("torch."),
        l0_change_last_10pct=trend,
        converged=None if trend is None else abs(trend) <= L0_STABLE,
    )
    if hist["converged"] is False:
        warnings.warn(
            f"{architecture} SAE: mean L0 still moved {trend:+.1%} over the last 10% of its "
            f"{trainer.n_steps} steps (more than {L0_STABLE:.0%}); it has not converged: "
            "compare it with others at its measured L0, or train longer (sae.steps)",
            NotConvergedWarning,
            stacklevel=2,
        )
    hist.update(trainer.spec.history_facts(trainer))
    return sae, hist


def _new_history() -> dict[str, Any]:
    keys = ("step_loss", "step_l0", "epoch_loss", "epoch_mse", "epoch_l0", "epoch_fvu")
    return {k: [] for k in (*keys, "epoch_dead_fraction", "epoch_step")}


def _fit(
    trainer: FastSAETrainer,
    xs: torch.Tensor,
    n_steps: int,
    seed: int,
    total_var: float,
    hist: dict,
    progress: bool,
    architecture: str,
) -> None:
    """``n_steps`` Adam steps over reshuffled passes of ``xs``; fills ``hist`` per pass."""
    n, d = xs.shape
    B, dev = trainer.B, xs.device
    xb = torch.empty(B, d, device=dev)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    bar = progress_bar(total=n_steps, desc=f"SAE {architecture}", on=progress, leave=False)
    try:
        while trainer.n_steps < n_steps:
            perm = torch.randperm(n, generator=gen).to(dev)
            sums = {"loss": 0.0, "mse": 0.0, "l0": 0.0}
            seen = 0
            for i in range(0, n, B):
                if trainer.n_steps >= n_steps:
                    break
                idx = perm[i : i + B]
                b = idx.numel()
                batch = torch.index_select(xs, 0, idx, out=xb[:b])
                out = trainer.step(batch)
                hist["step_loss"].append(out["loss"])
                hist["step_l0"].append(out["l0"])
                for key in sums:
                    sums[key] += out[key] * b
                seen += b
                bar.update(1)
            dead = trainer.take_epoch_dead_fraction()
            ep = {key: v / seen for key, v in sums.items()}
            hist["epoch_loss"].append(ep["loss"])
            hist["epoch_mse"].append(ep["mse"])
            hist["epoch_l0"].append(ep["l0"])
            hist["epoch_fvu"].append(ep["mse"] / total_var if total_var > 0 else float("nan"))
            hist["epoch_dead_fraction"].append(dead)
            hist["epoch_step"].append(trainer.n_steps)
            bar.set_postfix(
                loss=f"{ep['loss']:.4g}", L0=f"{ep['l0']:.1f}", dead=f"{dead:.2f}", refresh=False
            )
    finally:
        bar.close()
