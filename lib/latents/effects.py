"""What a latent writes and how often it fires: logit effects and activation density (notebook 08).

**Logit effects** (sae-dashboard's and Neuronpedia's first table): a latent adds its decoder row
``W_dec[i]`` to the residual stream; read straight through the unembedding, that raises the
logits of some tokens and lowers others: ``W_dec[i] @ W_U``, where ``W_U`` [d, vocab] is the
model's output embedding with the final norm's per-dimension gain folded in (as TransformerLens
folds it: :func:`unembedding`). This is the direct path only (no later layers), so on a middle
layer it says what the direction *means* in the output vocabulary, not what the model will do.
:func:`logit_effects` returns the ``k`` most promoted and most suppressed tokens of every latent.

**Activation density** (:func:`activation_density`): the share of *all* response tokens of the
run (every completion, labelled or not) on which a latent fires (code > 0), the statistic
sae-dashboard and Neuronpedia plot as a log-density histogram. Dense latents (firing on most
tokens) and dead ones (never) are read differently from sparse ones.

**Token text** (:func:`token_pieces`, :func:`token_label`): byte-level BPE splits characters of
more than one byte over several tokens; decoding one token alone gives U+FFFD. Examples are
decoded as differences of decoded prefixes, so a split character appears whole on the token
that completes it; a byte that never completes a character (a model can sample one) keeps its
U+FFFD on its own token instead of leaking into the next one.
"""

from __future__ import annotations

import numpy as np
import torch

from lib.core.runtime import torch_threads

#: attribute paths of the final norm (before the unembedding), tried in order
FINAL_NORM_PATHS = (
    "model.norm",  # Llama, SmolLM2, Qwen, Gemma 1-3, Mistral, Phi-3
    "model.language_model.norm",  # Gemma 3 multimodal wrappers
    "model.final_layernorm",  # Phi
    "gpt_neox.final_layer_norm",  # Pythia
    "transformer.ln_f",  # GPT-2
    "model.decoder.final_layer_norm",  # OPT
)
REPLACEMENT = "\ufffd"


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def final_norm_gain(model) -> torch.Tensor | None:
    """The per-dimension gain ``[d]`` of the model's final norm (None when it has none).

    An RMSNorm's output is ``x / rms(x) * g`` with ``g`` its weight (Llama) or ``1 + weight``
    (Gemma); both are read the same way, by normalising ``sqrt(d)`` times each basis vector
    (whose rms is 1, so the norm returns ``sqrt(d) g_i`` in place ``i``). A LayerNorm's gain is its weight (its centring is not folded).
    """
    norm = next((m for m in (_get(model, p) for p in FINAL_NORM_PATHS) if m is not None), None)
    weight = getattr(norm, "weight", None)
    if norm is None or weight is None:
        return None
    d = weight.shape[0]
    if "layernorm" in type(norm).__name__.lower() and "rms" not in type(norm).__name__.lower():
        return weight.detach().float().clone()
    with torch.no_grad():
        eye = torch.eye(d, dtype=weight.dtype, device=weight.device) * d**0.5
        return (torch.diagonal(norm(eye)) / d**0.5).float().cpu()


def unembedding(model) -> torch.Tensor:
    """``W_U`` [d, vocab] (float32, CPU): the output embedding, times the final norm's gain."""
    W = model.get_output_embeddings().weight.detach().float().cpu().T.contiguous()  # [d, V]
    gain = final_norm_gain(model)
    return W if gain is None else W * gain[:, None]


def logit_effects(
    W_dec: torch.Tensor | np.ndarray, W_U: torch.Tensor | np.ndarray, k: int = 10, chunk: int = 256
) -> dict[str, np.ndarray]:
    """The ``k`` most promoted and suppressed tokens of every latent through ``W_dec @ W_U``.

    ``W_dec`` [L, d], ``W_U`` [d, V]. Returns ``top_ids`` / ``top_values`` (largest first) and
    ``bottom_ids`` / ``bottom_values`` (most negative first), each ``[L, k]``. Computed ``chunk``
    latents at a time, so the [L, V] matrix is never held.
    """
    W_dec = torch.as_tensor(W_dec).float()
    W_U = torch.as_tensor(W_U).float()
    k = min(k, W_U.shape[1])
    out = {n: [] for n in ("top_ids", "top_values", "bottom_ids", "bottom_values")}
    with torch.no_grad(), torch_threads(1):
        for s in range(0, W_dec.shape[0], chunk):
            logits = W_dec[s : s + chunk] @ W_U
            tv, ti = torch.topk(logits, k, dim=1)
            bv, bi = torch.topk(-logits, k, dim=1)
            out["top_ids"].append(ti)
            out["top_values"].append(tv)
            out["bottom_ids"].append(bi)
            out["bottom_values"].append(-bv)
    return {n: torch.cat(v).numpy() for n, v in out.items()}


def activation_density(sae, tokens: torch.Tensor, batch: int = 4096) -> np.ndarray:
    """Share ``[d_sae]`` of the rows of ``tokens`` [T, d] (every response token of a run) on
    which each latent fires (code > 0)."""
    counts = torch.zeros(sae.d_sae, dtype=torch.float64)
    with torch.no_grad(), torch_threads(1):
        for s in range(0, len(tokens), batch):
            counts += (sae.encode(tokens[s : s + batch].float()) > 0).sum(0).double()
    return (counts / max(len(tokens), 1)).numpy()


def density_histogram(density: np.ndarray, bins: int = 30) -> dict:
    """Histogram of ``log10(density)`` over the latents that fire: ``{"edges", "counts",
    "dead"}`` (``dead``: latents that never fire, left out of the histogram)."""
    density = np.asarray(density, dtype=float)
    live = density[density > 0]
    if not len(live):
        return {"edges": [], "counts": [], "dead": int(len(density))}
    lo = np.floor(np.log10(live.min()) * 2) / 2
    edges = np.linspace(min(lo, -1.0), 0.0, bins + 1)
    counts = np.histogram(np.log10(live), edges)[0]
    return {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "dead": int((density <= 0).sum()),
    }


# ----- token text -------------------------------------------------------------------------------
def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded completion, one string per token (joined, they
    are ``tokenizer.decode(ids, skip_special_tokens=True)``).

    Prefixes are decoded and differenced, which keeps spaces right (per-token decoding drops
    SentencePiece's leading spaces). A token whose prefix ends inside a multi-byte character
    gets ``""`` and the whole character goes to the token that completes it. When the next
    token does not complete it (the bytes are not valid UTF-8), the U+FFFD stays on the tokens
    that produced it and the next token keeps only its own text.
    """
    pieces: list[str] = []
    shown = ""  # text attributed so far
    held = ""  # the decoded prefix up to the first token held back (ends in U+FFFD)
    held_at: list[int] = []  # positions of the tokens held back
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        if text.endswith(REPLACEMENT) and i + 1 < len(ids):
            if not held_at:
                held = text
            pieces.append("")
            held_at.append(i)
            continue
        if held_at and text.startswith(held) and held.startswith(shown):
            # the held bytes never became a character: their U+FFFD stays on the first of them
            pieces[held_at[0]] = held[len(shown) :]
            shown = held
        held_at = []
        pieces.append(text[len(shown) :] if text.startswith(shown) else text)
        shown = text
    return pieces


def token_label(tokenizer, token_id: int) -> str:
    """One vocabulary entry as text for a logit table: decoded alone, or, when alone it is not
    valid text (a piece of a multi-byte character), its vocabulary string (e.g. ``Ã`` or
    ``<0xE2>``)."""
    text = tokenizer.decode([int(token_id)])
    if REPLACEMENT in text or not text:
        return str(tokenizer.convert_ids_to_tokens(int(token_id)))
    return text
