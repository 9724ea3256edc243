"""How good an SAE is: reconstruction, sparsity, dead latents, and the language-model loss.

* :func:`reconstruction_metrics` on a set of vectors: mean L0, FVU, MSE, the latents that
  never fire, and the per-example L0 (for histograms).
* :func:`ce_with_replacement`, :func:`sae_lm_metrics` and :func:`loss_recovered`: the run's
  model on completion tokens when the residual stream after one decoder layer is replaced, at
  the completion positions, by the SAE's reconstruction or by zeros: cross-entropies, their
  difference and the KL divergence from the clean model's predictions.

Definitions (all on the vectors given, usually held-out completions):

``fvu``   ``sum ||x - x^||^2 / sum ||x - mean(x)||^2`` (mean over the same vectors)
``mse``   ``mean (x - x^)^2`` over all elements, in raw activation units
``l0``    mean number of non-zero latents per vector
``delta_ce``  ``CE_sae - CE_clean``, nats per completion token: what splicing the SAE in costs
          the model (:func:`sae_lm_metrics`)
``kl``    mean ``KL(p_clean || p_sae)`` of the next-token distributions, nats per token
``loss_recovered``  ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``: 1 when the reconstruction is
          as good as the true residual for the model, 0 when it is as bad as zeroing it. Zeroing
          a residual stream is so destructive that this is ~0.999 for every organism SAE and
          separates nothing; read ``delta_ce`` and ``kl`` beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lib.core.runtime import threads_for, torch_threads
from lib.models.loading import after_prompt, pad_right, prefill_rows, replace_resid, row_ids
from lib.sae.model import SAE


@torch.no_grad()
def reconstruction_metrics(sae: SAE, x: torch.Tensor, batch_size: int = 4096) -> dict:
    """``l0``, ``fvu``, ``mse``, ``n`` plus ``fired`` (bool [d_sae]) and ``l0_per_example``."""
    x = x.float()
    n = x.shape[0]
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    l0s, sq_err = [], 0.0
    for i in range(0, n, batch_size):
        xb = x[i : i + batch_size]
        f = sae.encode(xb)
        active = f != 0
        fired |= active.any(0)
        l0s.append(active.sum(1))
        sq_err += float((sae.decode(f) - xb).double().pow(2).sum())
    var = float((x.double() - x.double().mean(0)).pow(2).sum()) if n else float("nan")
    l0 = torch.cat(l0s).numpy() if l0s else np.zeros(0, dtype=np.int64)
    return {
        "n": int(n),
        "l0": float(l0.mean()) if n else float("nan"),
        "fvu": sq_err / var if var > 0 else float("nan"),
        "mse": sq_err / (n * x.shape[1]) if n else float("nan"),
        "fired": fired,
        "l0_per_example": l0,
    }


# ----- the model with a replaced residual stream ------------------------------------------------------
@torch.no_grad()
def ce_with_replacement(
    model,
    tokenizer,
    rows: Sequence[dict],
    layer: int,
    mode: str,
    sae: SAE | None = None,
    batch_size: int = 8,
    prompts: dict | None = None,
) -> tuple[float, int]:
    """Mean next-token cross-entropy over the completion tokens of ``rows`` and the token count.

    ``mode``: ``clean`` (no change), ``sae`` (the residual after ``layer`` at the completion
    positions replaced by ``sae``'s reconstruction) or ``zero`` (replaced by zeros). The
    completion positions are those whose vectors the capture stage stores as ``tokens``, i.e. the
    vectors the SAE was trained on; earlier positions keep their true residual.

    ``prompts``: a dict (kept by the caller across calls) of prefilled prompt caches; given, the
    rows of a batch that share a prompt run their completion tokens on its cache
    (:func:`lib.models.loading.prefill_rows`): the same losses up to float rounding, without recomputing the
    prompt for every row, layer and mode. The prompt positions are never replaced, so one clean
    prefill serves every mode.
    """
    if mode not in ("clean", "sae", "zero"):
        raise ValueError(f"mode={mode!r}; allowed: 'clean', 'sae', 'zero'")
    if mode == "sae" and sae is None:
        raise ValueError("mode='sae' needs an SAE")
    total, count = 0.0, 0
    with torch_threads(threads_for(model)):
        for ids, logits, target in _forward_batches(
            model, tokenizer, rows, layer, mode, sae, batch_size, prompts
        ):
            total += float(_nll(logits, ids)[target].double().sum())
            count += int(target.sum())
    return (total / count if count else float("nan")), count


@torch.no_grad()
def sae_lm_metrics(
    model,
    tokenizer,
    rows: Sequence[dict],
    layer: int,
    sae: SAE,
    batch_size: int = 8,
    prompts: dict | None = None,
) -> dict:
    """How much splicing ``sae`` in after ``layer`` changes the model's next-token predictions.

    Over the completion tokens of ``rows`` (see :func:`ce_with_replacement`): ``ce_clean`` and
    ``ce_sae`` (mean cross-entropy, nats), ``delta_ce = ce_sae - ce_clean`` (nats per token) and
    ``kl`` (mean ``KL(p_clean || p_sae)`` of the next-token distributions, nats per token), with
    ``n_tokens``. Both runs see the same batches. ``prompts``: see :func:`ce_with_replacement`;
    it also keeps the clean passes of ``rows`` for the next call on the same rows.
    """
    clean_total = sae_total = kl_total = 0.0
    count = 0
    with torch_threads(threads_for(model)):
        clean = _forward_batches(model, tokenizer, rows, layer, "clean", None, batch_size, prompts)
        if prompts is not None:  # the clean passes depend on the rows only: kept for the next SAE
            key = ("clean", tuple(r["id"] for r in rows), batch_size)
            clean = prompts[key] = prompts[key] if key in prompts else list(clean)
        spliced = _forward_batches(model, tokenizer, rows, layer, "sae", sae, batch_size, prompts)
        for (ids, logits_c, target), (_, logits_s, _) in zip(clean, spliced, strict=True):
            logp_c = torch.log_softmax(logits_c[:, :-1].float(), dim=-1)[target]
            logp_s = torch.log_softmax(logits_s[:, :-1].float(), dim=-1)[target]
            tgt = ids[:, 1:][target].unsqueeze(-1)
            clean_total -= float(logp_c.gather(-1, tgt).double().sum())
            sae_total -= float(logp_s.gather(-1, tgt).double().sum())
            kl_total += float((logp_c.exp() * (logp_c - logp_s)).sum(-1).double().sum())
            count += int(target.sum())
    if not count:
        nan = float("nan")
        return {"ce_clean": nan, "ce_sae": nan, "delta_ce": nan, "kl": nan, "n_tokens": 0}
    ce_clean, ce_sae = clean_total / count, sae_total / count
    return {
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "delta_ce": ce_sae - ce_clean,
        "kl": kl_total / count,
        "n_tokens": count,
    }


def _replacement(mode, sae, comp):
    """The residual ``h -> h'`` of ``mode`` at the positions ``comp`` marks."""

    def fn(h):
        if mode == "zero":
            return torch.where(comp[..., None], torch.zeros((), dtype=h.dtype, device=h.device), h)
        recon = sae(h[comp].float()).to(h.dtype)
        out = h.clone()
        out[comp] = recon
        return out

    return fn


def _forward_batches(model, tokenizer, rows, layer, mode, sae, batch_size, prompts=None):
    """Per batch: ``(ids [b, T], logits [b, T, V], target [b, T-1])``, where ``target`` marks the
    positions whose next token is a completion token (the residual there is replaced)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = [row_ids(tokenizer, r) for r in rows]
    if sae is not None:
        sae = sae.to(device)
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        if prompts is not None and all(len(s) > n for s, n in chunk):
            yield from _cached_batches(model, chunk, layer, mode, sae, pad, prompts)
            continue
        ids, attn = pad_right([s for s, _ in chunk], pad, device)
        comp = torch.zeros(ids.shape, dtype=torch.bool)
        for r, (s, n_prompt) in enumerate(chunk):
            comp[r, n_prompt : len(s)] = True
        comp = comp.to(device)
        if mode == "clean":
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        else:
            with replace_resid(model, layer, _replacement(mode, sae, comp)):
                logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        # position t-1 predicts token t; score the completion tokens t in [n_prompt, len)
        yield ids, logits, comp[:, 1:]


def _cached_batches(model, chunk, layer, mode, sae, pad, prompts):
    """:func:`_forward_batches` on prompt caches (:func:`lib.models.loading.prefill_rows`, clean: the
    prompt positions are never replaced): ``ids`` are each row's last prompt token and its
    completion, ``logits`` the prompt's last logits and those of the completion tokens."""
    device = next(model.parameters()).device
    rows = prefill_rows(model, [tuple(s[:n]) for s, n in chunk], prompts)
    comps = [s[n:] for s, n in chunk]
    width = max(len(c) for c in comps)
    ids = torch.tensor(
        [[s[n - 1], *c, *[pad] * (width - len(c))] for (s, n), c in zip(chunk, comps, strict=True)],
        device=device,
    )
    comp = torch.zeros((len(comps), width), dtype=torch.bool, device=device)
    for r, c in enumerate(comps):
        comp[r, : len(c)] = True
    if mode == "clean":
        logits = after_prompt(model, rows, comps, pad)
    else:
        with replace_resid(model, layer, _replacement(mode, sae, comp)):
            logits = after_prompt(model, rows, comps, pad)
    last = torch.stack([lg for _, lg, _ in rows])  # [b, 1, V]
    yield ids, torch.cat([last.to(logits.dtype), logits], dim=1), comp


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihood ``[b, T-1]`` of ``ids`` under ``logits``."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def loss_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> float:
    den = ce_zero - ce_clean
    if not math.isfinite(den) or abs(den) < 1e-12:
        return float("nan")
    return (ce_zero - ce_sae) / den
