"""Loading causal LMs and finding their decoder layers.

The same code path loads TinyLlama from the Hugging Face hub (or a local copy) and the embedded
model organism from ``data/organism/``: ``AutoModelForCausalLM.from_pretrained(path)``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from lib.config import REPO_ROOT, RunConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Attribute paths to the decoder-layer list, tried in order. Hook names are these module paths.
LAYER_PATHS = (
    "model.layers",  # Llama (TinyLlama, SmolLM2, Llama-3.2), Qwen2/3, Phi, Phi-3, Gemma 1-3, Mistral
    "model.language_model.layers",  # Gemma 3 multimodal wrappers
    "gpt_neox.layers",  # GPT-NeoX (Pythia)
    "transformer.h",  # GPT-2
    "model.decoder.layers",  # OPT
)


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded, with what to do about it."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (x86: AVX512-BF16 or AMX-BF16).

    Without them (e.g. AVX2-only x86), torch runs bfloat16 and float16 matmuls in a slow
    fallback kernel: on the 2-core AVX2 machine this book is built on, a TinyLlama-shaped forward
    pass ran several times slower in bfloat16 than in float32 (``tests/benchmarks/bench_dtype.py``).
    Returns True when the answer is unknown (not x86), so that nothing warns without cause.
    """
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        return True
    if caps.get("architecture") not in ("x86_64", "x86", "AMD64"):
        return True
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_model_path(model: str) -> str:
    """``organism`` -> the embedded model organism (built on first use); ``random:<preset>`` ->
    a randomly initialised model of a study model's shapes (``lib.random_models``, built on first
    use into ``data/models/``); a path relative to the repository -> absolute; else unchanged."""
    if model == "organism":
        from lib.organism import ensure_organism

        return str(ensure_organism())
    if model.startswith("random:"):
        from lib.random_models import ensure_random_model

        return str(ensure_random_model(model))
    p = Path(model)
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return str(REPO_ROOT / p)
    return model


def load_model(cfg: RunConfig, device: str | None = None):
    """Load the run's causal LM and tokenizer, in eval mode, on the configured device and dtype.

    Returns ``(model, tokenizer)``. The tokenizer pads on the left (for batched generation) and
    always has a pad token.
    """
    return load_model_path(cfg.model, dtype=cfg.dtype, device=device or cfg.device)


def load_model_path(model: str, dtype: str = "float32", device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not Path(path).exists()
        hint = (
            f"Could not load {model!r}. If this machine cannot reach the Hugging Face hub, "
            "download the model elsewhere (`huggingface-cli download <id> --local-dir DIR`), copy "
            "DIR here and set `model: DIR` in the config (or override model=DIR)."
        )
        raise ModelLoadError(hint + (f"\nUnderlying error: {e}" if offline else "")) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    target = resolve_device(device)
    if target.type == "cpu" and dtype in ("bfloat16", "float16") and not cpu_has_fast_bf16():
        warnings.warn(
            f"dtype={dtype} on a CPU without bfloat16/float16 matrix instructions: matmuls use a "
            "slow fallback kernel (a TinyLlama-shaped forward ran several times slower than in "
            "float32 on an AVX2 machine); set dtype: float32 for CPU runs on this machine",
            stacklevel=2,
        )
    lm.to(target)
    lm.eval()
    return lm, tok


def _get_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def layer_path(model: nn.Module) -> str:
    """The dotted module path of the decoder-layer list of ``model`` (e.g. ``model.layers``)."""
    for path in LAYER_PATHS:
        try:
            layers = _get_path(model, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path
    raise ModelLoadError(
        f"cannot find the decoder layers of {type(model).__name__}; known paths: {LAYER_PATHS}"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks whose outputs are the residual stream after each layer (resid_post)."""
    return _get_path(model, layer_path(model))


def hook_name(model: nn.Module, layer: int) -> str:
    """Hugging Face module path of a layer, the SAELens ``hook_name`` (e.g. ``model.layers.12``)."""
    return f"{layer_path(model)}.{layer}"


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
