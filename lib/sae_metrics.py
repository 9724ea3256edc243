"""How good an SAE is: reconstruction, sparsity, dead latents, and the language-model loss.

* :func:`reconstruction_metrics` on a set of vectors: mean L0, FVU, MSE, the latents that
  never fire, and the per-example L0 (for histograms).
* :func:`ce_with_replacement` and :func:`loss_recovered`: the next-token cross-entropy of the
  run's model on completion tokens when the residual stream after one decoder layer is replaced,
  at the completion positions, by the SAE's reconstruction or by zeros.

Definitions (all on the vectors given, usually held-out completions):

``fvu``   ``sum ||x - x^||^2 / sum ||x - mean(x)||^2`` (mean over the same vectors)
``mse``   ``mean (x - x^)^2`` over all elements, in raw activation units
``l0``    mean number of non-zero latents per vector
``loss_recovered``  ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``: 1 when the reconstruction is
          as good as the true residual for the model, 0 when it is as bad as zeroing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lib.models import pad_right, replace_resid, row_ids
from lib.runtime import threads_for, torch_threads
from lib.sae import SAE


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
) -> tuple[float, int]:
    """Mean next-token cross-entropy over the completion tokens of ``rows`` and the token count.

    ``mode``: ``clean`` (no change), ``sae`` (the residual after ``layer`` at the completion
    positions replaced by ``sae``'s reconstruction) or ``zero`` (replaced by zeros). The
    completion positions are those whose vectors the capture stage stores as ``tokens``, i.e. the
    vectors the SAE was trained on; earlier positions keep their true residual.
    """
    if mode not in ("clean", "sae", "zero"):
        raise ValueError(f"mode={mode!r}; allowed: 'clean', 'sae', 'zero'")
    if mode == "sae" and sae is None:
        raise ValueError("mode='sae' needs an SAE")
    with torch_threads(threads_for(model)):
        return _ce(model, tokenizer, rows, layer, mode, sae, batch_size)


def _ce(model, tokenizer, rows, layer, mode, sae, batch_size) -> tuple[float, int]:
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = [row_ids(tokenizer, r) for r in rows]
    if sae is not None:
        sae = sae.to(device)
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        ids, attn = pad_right([s for s, _ in chunk], pad, device)
        comp = torch.zeros(ids.shape, dtype=torch.bool)
        for r, (s, n_prompt) in enumerate(chunk):
            comp[r, n_prompt : len(s)] = True
        comp = comp.to(device)

        def fn(h, comp=comp):
            if mode == "zero":
                return torch.where(
                    comp[..., None], torch.zeros((), dtype=h.dtype, device=h.device), h
                )
            recon = sae(h[comp].float()).to(h.dtype)
            out = h.clone()
            out[comp] = recon
            return out

        if mode == "clean":
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        else:
            with replace_resid(model, layer, fn):
                logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        # position t-1 predicts token t; score the completion tokens t in [n_prompt, len)
        target = comp[:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        total += float(nll[target].double().sum())
        count += int(target.sum())
    return (total / count if count else float("nan")), count


def loss_recovered(ce_clean: float, ce_sae: float, ce_zero: float) -> float:
    den = ce_zero - ce_clean
    if not math.isfinite(den) or abs(den) < 1e-12:
        return float("nan")
    return (ce_zero - ce_sae) / den
