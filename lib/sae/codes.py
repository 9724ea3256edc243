"""SAE features of completions, computed on the inputs the SAE was trained on.

An SAE is only meaningful on vectors from the distribution it was trained on. The book's SAEs
train on every response token (``sae.train_on: tokens``) or on one pooled vector per completion
(``last`` / ``mean``, the study's per-completion setting). A mean over ~20 token vectors has
about a third of a token vector's norm, and a token-trained SAE fed such means collapses (its
STE thresholds silence almost every latent). So:

* ``train_on == "tokens"``: every response token of a completion is encoded, and the codes are
  pooled per completion (:data:`POOLINGS`: ``mean`` over the response, ``max`` over it, or the
  ``last`` token's codes);
* ``train_on == "last" | "mean"``: the completion's pooled vector of that kind is encoded.

:func:`sae_features` also measures the encoded inputs (mean norm, L0, FVU) and compares their norm
with the SAE's training vectors (``training_mean_norm`` from its metadata): more than
a factor :data:`MAX_NORM_RATIO` apart, the features are refused with a note rather than returned.

Token layout (``activations/L{layer}.safetensors``, written by :mod:`lib.capture.activations`): ``tokens``
[T, d] holds the residual after the layer at every *response* token (the sampled completion
tokens, not the prompt), completion by completion in the row order of ``activations/index.json``
and, within a completion, in generation order; ``token_owner`` [T] gives the row of the
completion each token vector belongs to. A completion that ended at once (EOS as its first
token) has no token rows; its ``last`` and ``mean`` are the residual at the last prompt position,
which is also what it is given here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from lib.capture.labelled import LayerData
from lib.core.runtime import torch_threads

POOLINGS = ("mean", "max", "last")
#: inputs whose mean norm is this many times larger or smaller than the training vectors' are refused
MAX_NORM_RATIO = 2.0


@dataclass
class SAEFeatures:
    """Pooled SAE codes of some completions, with what the SAE was actually fed.

    ``features``: pooling -> float32 ``[n, d_sae]`` (empty when refused); ``input_norm``: mean L2
    norm of the encoded vectors; ``train_norm``: the training vectors' mean norm (None when the
    SAE does not record it); ``input_l0``/``input_fvu``: mean active latents and fraction of
    variance unexplained on the encoded vectors; ``note``: why the features were refused, else "".
    """

    features: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: str = "tokens"
    n_inputs: int = 0
    input_norm: float = float("nan")
    train_norm: float | None = None
    input_l0: float = float("nan")
    input_fvu: float = float("nan")
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.note

    @property
    def norm_ratio(self) -> float:
        if not self.train_norm:
            return float("nan")
        return self.input_norm / self.train_norm


def training_norm(sae) -> float | None:
    """Mean norm of the vectors the SAE was trained on: its ``training_mean_norm`` metadata, or
    from the older ``activation_scale`` (``sqrt(d_in) / mean_norm``); None when not recorded."""
    meta = getattr(sae, "meta", None) or {}
    if meta.get("training_mean_norm"):
        return float(meta["training_mean_norm"])
    scale = meta.get("activation_scale")
    if not scale:
        return None
    return math.sqrt(sae.d_in) / float(scale)


def sae_features(
    sae,
    layer: LayerData,
    rows: np.ndarray,
    train_on: str | None = None,
    poolings: tuple[str, ...] = ("mean",),
    batch: int = 2048,
    check_norm: bool = True,
) -> SAEFeatures:
    """Pooled SAE codes ``[len(rows), d_sae]`` of the completions at activation ``rows``.

    ``train_on`` (default: the SAE's ``meta["train_on"]``, else ``"tokens"``) decides the inputs,
    as the module docstring says; ``poolings`` apply to token codes (pooled inputs have one code
    per completion, returned under every requested name). With ``check_norm``, inputs whose mean
    norm is more than :data:`MAX_NORM_RATIO` from the training vectors' give empty features and a
    ``note``.
    """
    meta = getattr(sae, "meta", None) or {}
    train_on = train_on or meta.get("train_on") or "tokens"
    bad = [p for p in poolings if p not in POOLINGS]
    if bad:
        raise ValueError(f"poolings {bad}; allowed: {list(POOLINGS)}")
    rows = np.asarray(rows, dtype=np.int64)
    out = SAEFeatures(inputs=train_on, train_norm=training_norm(sae))
    with torch.no_grad(), torch_threads(1):
        if train_on == "tokens":
            codes, stats = _pooled_token_codes(sae, layer, rows, poolings, batch)
        elif train_on in ("last", "mean"):
            x = getattr(layer, train_on)[torch.as_tensor(rows)].float()
            f, stats = _encode_and_measure(sae, x, batch)
            codes = {p: f for p in poolings}
        else:
            raise ValueError(f"train_on={train_on!r}; allowed: 'tokens', 'last', 'mean'")
    out.n_inputs, out.input_norm, out.input_l0, out.input_fvu = stats
    if (
        check_norm
        and out.train_norm
        and not (1 / MAX_NORM_RATIO <= out.norm_ratio <= MAX_NORM_RATIO)
    ):
        out.note = (
            f"refused: the {train_on} vectors fed to this SAE have mean norm {out.input_norm:.3g}, "
            f"{out.norm_ratio:.2f}x its training vectors' {out.train_norm:.3g} (allowed "
            f"1/{MAX_NORM_RATIO:g}..{MAX_NORM_RATIO:g}x): they are not from its training distribution"
        )
        return out
    out.features = {p: c.numpy() for p, c in codes.items()}
    return out


def _encode_and_measure(sae, x: torch.Tensor, batch: int):
    """Codes of ``x`` [n, d] and (n, mean norm, mean L0, FVU) of the encoding."""
    codes, sq_err, l0 = [], 0.0, 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        f = sae.encode(xb).float()
        sq_err += float((sae.decode(f).float() - xb).double().pow(2).sum())
        l0 += float((f != 0).sum())
        codes.append(f)
    n = len(x)
    var = float((x.double() - x.double().mean(0)).pow(2).sum())
    stats = (n, float(x.norm(dim=1).mean()), l0 / max(n, 1), sq_err / var if var > 0 else math.nan)
    return (torch.cat(codes) if codes else torch.zeros(0, sae.d_sae)), stats


def _pooled_token_codes(sae, layer: LayerData, rows: np.ndarray, poolings, batch: int):
    """Encode every response token of ``rows``' completions and pool the codes per completion."""
    n, m = len(rows), sae.d_sae
    pos_of_row = torch.full((len(layer.last),), -1, dtype=torch.long)
    pos_of_row[torch.as_tensor(rows)] = torch.arange(n)
    owner_pos = pos_of_row[layer.token_owner]
    keep = torch.nonzero(owner_pos >= 0).view(-1)  # token rows of the requested completions
    counts = torch.bincount(owner_pos[keep], minlength=n).float()
    sums = torch.zeros(n, m)
    maxs = torch.zeros(n, m)  # codes are >= 0, so 0 is the identity of max
    last_tok = torch.full((n,), -1, dtype=torch.long)
    last_tok.scatter_reduce_(0, owner_pos[keep], keep, reduce="amax")
    last = torch.zeros(n, m)
    sq_err, l0, norm_sum, total = 0.0, 0.0, 0.0, 0
    mean_x = layer.tokens[keep].double().mean(0) if len(keep) else None
    var = 0.0
    for i in range(0, len(keep), batch):
        idx = keep[i : i + batch]
        x = layer.tokens[idx].float()
        f = sae.encode(x).float()
        pos = owner_pos[idx]
        sums.index_add_(0, pos, f)
        maxs.scatter_reduce_(0, pos[:, None].expand(-1, m), f, reduce="amax")
        is_last = idx == last_tok[pos]
        last[pos[is_last]] = f[is_last]
        sq_err += float((sae.decode(f).float() - x).double().pow(2).sum())
        var += float((x.double() - mean_x).pow(2).sum())
        l0 += float((f != 0).sum())
        norm_sum += float(x.norm(dim=1).sum())
        total += len(idx)
    empty = torch.nonzero(counts == 0).view(-1)
    if len(empty):  # no response tokens: the residual at the last prompt position stands in
        f = sae.encode(layer.last[torch.as_tensor(rows)[empty]].float()).float()
        sums[empty], maxs[empty], last[empty] = f, f, f
        counts[empty] = 1.0
    pooled = {"mean": sums / counts[:, None], "max": maxs, "last": last}
    stats = (
        total,
        norm_sum / max(total, 1),
        l0 / max(total, 1),
        sq_err / var if var > 0 else math.nan,
    )
    return {p: pooled[p] for p in poolings}, stats
