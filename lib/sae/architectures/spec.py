"""What an SAE architecture declares: :class:`ArchitectureSpec`, the base of every module here.

An architecture is one subclass and one instance of it, registered by name in
:mod:`lib.sae.architectures` (``register(SPEC)``). The model (:class:`lib.sae.model.SAE`), its
SAELens export and loading (:func:`lib.sae.model.save_sae`, :func:`lib.sae.model.load_sae`) and the
trainer's step (:class:`lib.sae.fused_step.FastSAETrainer`) ask the spec of the SAE's
architecture for everything that differs between architectures, and branch on nothing else:

* the model: the activation that turns pre-activations into latents, whether it has a ``k``, the
  per-latent parameters beyond ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` (e.g. ``threshold``);
* the format: the SAELens ``architecture`` it writes, the extra ``cfg.json`` fields, the SAELens
  architectures it reads (and the extra tensors a file of each holds), checks and folds on load;
* training: the encoder's initial gain, its buffers and parameters, its loss with the gradients
  of every parameter (``loss_and_grads``), what happens after each Adam step, and the
  :class:`lib.core.config.SAEConfig` fields it reads (``hyperparameters``).

The training hooks receive the :class:`lib.sae.fused_step.FastSAETrainer` (typed ``Any`` here:
that module imports this package) and work in its training space (inputs scaled to mean norm
``sqrt(d_in)``). What they may use of it: ``cfg`` (the :class:`lib.core.config.SAEConfig`),
``d_in``, ``d_sae``, ``k``; the parameters ``W_enc_T [d_sae, d_in]``, ``b_enc``, ``W_dec``,
``b_dec`` and those ``prepare`` returned, listed in ``params`` (the order Adam sees), each with
a preallocated ``.grad`` that ``loss_and_grads`` overwrites; the shared buffers ``xc``, ``e``,
``g``, ``recon`` ``[B, d_in]`` and ``pre`` ``[B, d_sae]`` (views ``[:b]`` for a short batch);
the matmul operands ``W_enc_mm``, ``W_dec_mm``, ``W_decT_mm`` (bfloat16 copies under ``sae.matmul_dtype:
bfloat16``) and ``mm`` (a product in the configured precision), ``csr`` (a CSR matrix),
``sparse`` (whether CSR kernels run here), ``dead_latents()``, ``mark_fired(ids)`` and
``mark_fired_mask(mask)``. A spec may equally compute its loss with autograd on ``params`` (the
test ``tests/unit/test_sae_registry.py`` adds SAELens's ``standard`` SAE that way).
"""

from __future__ import annotations

from typing import Any

import torch

#: a :class:`lib.sae.fused_step.FastSAETrainer` (not imported: it imports this package)
Trainer = Any
#: the tensors every SAE has, in the order they are written
BASE_TENSORS: tuple[str, ...] = ("W_enc", "b_enc", "W_dec", "b_dec")
#: decoder rows this close to norm 1 are unit rows (SAELens's decoder-norm rescaling is a no-op)
UNIT_ROW_ATOL = 1e-5


def has_unit_rows(W_dec: torch.Tensor, atol: float = UNIT_ROW_ATOL) -> bool:
    """Whether every row of ``W_dec`` has norm 1 within ``atol``."""
    norms = torch.linalg.vector_norm(W_dec.detach().float(), dim=1)
    return bool(((norms - 1.0).abs() <= atol).all())


class ArchitectureSpec:
    """The base: a ReLU-family SAE without ``k`` or extra parameters; subclasses override.

    Class attributes (set by every subclass):

    ``name``
        the study's name of the architecture (SAE ids, configs, ``metadata.study_architecture``).
    ``saelens_name``
        the SAELens 6 ``architecture`` written to ``cfg.json``.
    ``reads``
        SAELens architectures a folder of which loads as this architecture, each with the
        tensors beyond :data:`BASE_TENSORS` that such a file holds.
    ``default_for``
        SAELens architectures that load as this one when ``cfg.json`` names no study
        architecture (each SAELens name has at most one default among the registered specs).
    ``uses_k``
        whether the SAE keeps ``k`` latents per input (``sae.k``; ``SAEConfig.k`` in training).
    ``latent_params``
        per-latent parameters ``[d_sae]`` beyond the base tensors, in pre-activation units: the
        model holds them, the export writes them, the trainer divides them by the input scale.
    ``hyperparameters``
        the :class:`lib.core.config.SAEConfig` fields the training loss reads.
    ``dense_decode``
        whether the step decodes with a dense ``[b, d_sae] @ W_dec`` (then ``sae.matmul_dtype:
        bfloat16`` keeps low-precision copies of ``W_dec`` for it).
    """

    name: str = ""
    saelens_name: str = ""
    reads: dict[str, tuple[str, ...]] = {}
    default_for: tuple[str, ...] = ()
    uses_k: bool = False
    latent_params: tuple[str, ...] = ()
    hyperparameters: tuple[str, ...] = ()
    dense_decode: bool = True

    def __repr__(self) -> str:
        return f"<SAE architecture {self.name!r} (SAELens {self.saelens_name!r})>"

    # ----- the model ---------------------------------------------------------------------------
    def activation(self, sae: Any, pre: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` of pre-activations ``pre`` for the SAE ``sae``."""
        raise NotImplementedError(f"{self.name}: activation")

    # ----- the SAELens format ------------------------------------------------------------------
    def cfg_fields(self, sae: Any) -> dict[str, Any]:
        """``cfg.json`` fields of this architecture, written after the common ones."""
        return {}

    def check_cfg(self, cfg: dict[str, Any]) -> str | None:
        """Why a ``cfg.json`` cannot load as this architecture (None when it can)."""
        return None

    def fold_loaded(
        self, cfg: dict[str, Any], W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W_enc, b_enc, W_dec)`` read from a folder, with run-time rescalings folded in."""
        return W_enc, b_enc, W_dec

    # ----- training ----------------------------------------------------------------------------
    def encoder_gain(self, d_in: int, d_sae: int) -> float:
        """``c`` in the initial ``W_enc = c * W_dec^T``.

        About half the latents of a ReLU-like SAE fire at init, so ``d_in / d_sae`` keeps the
        first reconstruction near the input's size instead of overshooting it.
        """
        return d_in / d_sae

    def prepare(self, trainer: Trainer) -> dict[str, torch.nn.Parameter]:
        """Set this architecture's training settings on ``trainer``; return its trained
        parameters beyond the base four, by name (each one of ``latent_params``: the trainer
        holds it as an attribute, Adam updates it, the export divides it by the input scale)."""
        return {}

    def allocate(self, trainer: Trainer, d: int, m: int, B: int) -> None:
        """Preallocate this architecture's buffers on ``trainer`` (under its device)."""

    def loss_and_grads(self, trainer: Trainer, x: torch.Tensor) -> dict[str, float]:
        """Forward and backward on a training-space batch ``x [b, d_in]``: fill every
        ``p.grad`` of ``trainer.params``, record which latents fired
        (``trainer.mark_fired(ids)`` or ``trainer.mark_fired_mask(mask)``) and return ``{"loss", "mse", "l0", "aux"}`` of the batch."""
        raise NotImplementedError(f"{self.name}: loss_and_grads")

    def after_step(self, trainer: Trainer) -> None:
        """Constraints applied after each Adam step (the decoder rows are renormalised before)."""

    def history_facts(self, trainer: Trainer) -> dict[str, Any]:
        """Training settings of this architecture for the history (and ``metrics.json``)."""
        return {}
