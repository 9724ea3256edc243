"""Loading causal LMs, finding their decoder layers, and hooking the residual stream.

The same code path loads TinyLlama from the Hugging Face hub (or a local copy) and the embedded
model organism from ``data/organism/``: ``AutoModelForCausalLM.from_pretrained(path)``.

The residual stream after decoder layer ``i`` (``resid_post``) is the output of
``decoder_layers(model)[i]``; :func:`resid_hooks` reads it and :func:`replace_resid` replaces it.
:func:`row_ids` and :func:`pad_right` turn ``completions.jsonl`` rows into the token sequences
every teacher-forced pass uses (capture, SAE loss metrics, feature analyses).

Prompt cache (``prompt_cache: true`` in a config): the completions of one scenario share its
prompt, so :func:`prefill_rows` runs each prompt once (batch 1) and :func:`after_prompt` runs only
the completion tokens of a batch on those caches, stacked and left-padded to the longest prompt
(rows of several scenarios in one pass). Same model, same positions; the activations differ
from a full pass by float rounding (~1e-6 relative on TinyLlama's shapes in float32), so runs
made without it keep their results.
"""

from __future__ import annotations

import copy
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from lib.core.config import REPO_ROOT, RunConfig
from lib.core.fileio import safetensors_problem
from lib.core.runtime import cpu_has_fast_bf16, fast_bf16, library_bars_follow_batch_mode
from lib.models.organism import ORGANISM_DIR, ensure_organism
from lib.models.random_models import ensure_random_model
from lib.models.registry import ensure_gguf_model, is_gguf_spec

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


def resolve_model_path(model: str) -> str:
    """``organism`` -> the embedded model organism (built on first use); ``random:<preset>`` ->
    a randomly initialised model of a study model's shapes (``lib.models.random_models``, built on first
    use into ``data/models/``); ``gguf:<package>[/<file>]`` -> a trained model shipped inside a
    Python package, converted once into ``data/models/`` (``lib.models.registry``); a path
    relative to the repository -> absolute; else unchanged."""
    if model == "organism":
        return str(ensure_organism())
    if is_gguf_spec(model):
        return str(ensure_gguf_model(model))
    if model.startswith("random:"):
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


def resolve_dtype(dtype: str, device: str | torch.device) -> str:
    """``auto`` -> ``bfloat16`` where its matmuls are fast (a GPU, or a CPU with bfloat16
    instructions: :func:`lib.core.runtime.fast_bf16`), else ``float32``; any other dtype as it is.
    On this book's AVX512-BF16 CPU, bfloat16 sampled SmolLM2 1.5x and captured it 1.7x faster
    (``tests/benchmarks/bench_sampler.py``, ``bench_capture.py``); without those instructions it
    ran several times slower (``bench_dtype.py``). At temperature 1.0 it samples other
    completions than float32 do (``docs/costs.md``), so the CPU configs keep float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if fast_bf16(resolve_device(str(device))) else "float32"


def load_model_path(model: str, dtype: str = "float32", device: str = "cpu"):
    """``(model, tokenizer)`` of a model spec (:func:`resolve_model_path`), in eval mode, with the
    dtype :func:`resolve_dtype` resolves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype, device)
    library_bars_follow_batch_mode()  # papermill would store "Loading weights: 0%| 0/75"
    path = resolve_model_path(model)
    check_weight_files(path, model)
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


def check_weight_files(path: str, model: str) -> None:
    """Fail with the damaged file's name and how to rebuild it when a local model's safetensors
    file is truncated or has no valid header (``from_pretrained`` would only say "incomplete
    metadata")."""
    folder = Path(path)
    if not folder.is_dir():
        return
    for f in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem is None:
            continue
        if folder.resolve() == Path(ORGANISM_DIR).resolve():
            rel = os.path.relpath(f, REPO_ROOT)
            fix = (
                f"restore the committed copy (git checkout -- {rel}) or rebuild the organism: "
                f"delete {os.path.relpath(folder / 'organism.json', REPO_ROOT)} and rerun "
                "(lib.models.organism.ensure_organism builds it again, about 4 minutes)"
            )
        else:
            fix = f"download {model!r} again into {folder}"
        raise ModelLoadError(f"{f} is damaged: {problem}; {fix}")


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


# ----- token sequences of completion rows ---------------------------------------------------------
def encode_pair(tokenizer, prompt: str, completion: str, completion_ids: list[int] | None = None):
    """Token ids of prompt + completion and the number of prompt tokens.

    The prompt is tokenised with the tokenizer's special tokens (BOS), the completion without;
    when the sampled ``completion_ids`` are known they are used as they are (re-tokenising the
    decoded text can differ from what the model generated).
    """
    p = tokenizer(prompt).input_ids
    c = (
        list(completion_ids)
        if completion_ids is not None
        else tokenizer(completion, add_special_tokens=False).input_ids
    )
    return p + c, len(p)


def row_ids(tokenizer, row: dict) -> tuple[list[int], int]:
    """:func:`encode_pair` for a ``completions.jsonl`` row."""
    return encode_pair(tokenizer, row["prompt"], row["completion"], row.get("completion_token_ids"))


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``ids`` and ``attention_mask`` ``[B, max_len]`` (long) of token sequences."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


# ----- the residual stream ------------------------------------------------------------------------
def _output_tensor(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def resid_hooks(model, layers: list[int], sink):
    """Register forward hooks calling ``sink(layer, resid_post)`` on each layer; removed on exit."""
    blocks = decoder_layers(model)
    handles = [
        blocks[i].register_forward_hook(lambda _m, _in, out, i=i: sink(i, _output_tensor(out)))
        for i in layers
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replace_resid(model, layer: int, fn):
    """Within the block, the output of decoder layer ``layer`` becomes ``fn(hidden)``."""
    block = decoder_layers(model)[layer]

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def decode_attention(model):
    """Within: eager attention where torch's fused CPU attention is slow for one-token decode
    steps, i.e. a bfloat16 model on a CPU (``tests/benchmarks/bench_sampler.py``, SmolLM2, 48
    rows, bfloat16: 196 and 204 tok/s with ``sdpa`` in two runs, 308 with ``eager``; in float32
    ``sdpa`` was the faster in three of four alternating pairs and stays). The model's own choice
    is restored after."""
    param = next(model.parameters())
    current = getattr(model.config, "_attn_implementation", None)
    switch = param.device.type == "cpu" and param.dtype == torch.bfloat16 and current == "sdpa"
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(current)


# ----- the prompt cache ---------------------------------------------------------------------------
@torch.no_grad()
def prefill(model, prompt: list[int]):
    """One forward pass over ``prompt`` (batch 1): ``(past_key_values, logits [1, 1, V])``, the
    logits of the last position only (the LM head over every prompt position cost SmolLM2 7 GFLOP
    per prompt for logits nobody reads)."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits


def prefill_rows(model, prompts: list[tuple[int, ...]], store: dict | None = None) -> list:
    """``(past, last_logits [1, V], n_prompt)`` per row: each distinct prompt (token ids) is
    prefilled once, and kept in ``store`` for later calls when one is given (only prompts run
    without hooks may be kept: a hook changes the prompt's cache)."""
    store = {} if store is None else store
    for prompt in dict.fromkeys(prompts):
        if prompt not in store:
            past, logits = prefill(model, list(prompt))
            store[prompt] = (past, logits[:, -1], len(prompt))
    return [store[prompt] for prompt in prompts]


class GrowingLayer(DynamicLayer):
    """A :class:`~transformers.cache_utils.DynamicLayer` that writes each decode step's keys and
    values into room reserved ahead, instead of concatenating the whole cache again at every step
    (``torch.cat`` of every layer's cache was 30% of SmolLM2's sampling time at 48 rows). Attention
    sees the same ``[B, H, length, D]`` keys, as a view of the buffer."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, reserve: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self._length = keys.shape[-2]
        self._buffers = []
        for t in (keys, values):
            b, h, n, d = t.shape
            buf = t.new_empty((b, h, n + reserve, d))
            buf[:, :, :n].copy_(t)
            self._buffers.append(buf)
        self._views()

    def _views(self) -> None:
        self.keys, self.values = (buf[:, :, : self._length] for buf in self._buffers)

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if self._length + n > self._buffers[0].shape[-2]:  # out of room: grow as DynamicLayer does
            self._buffers = [
                torch.cat([buf[:, :, : self._length], new], dim=-2)
                for buf, new in zip(self._buffers, (key_states, value_states), strict=True)
            ]
        else:
            for buf, new in zip(self._buffers, (key_states, value_states), strict=True):
                buf[:, :, self._length : self._length + n].copy_(new)
        self._length += n
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._buffers = [buf[indices] for buf in self._buffers]
        self._views()


def stack_prompts(rows: list, reserve: int = 0) -> tuple:
    """One batch cache from the batch-1 caches of :func:`prefill_rows` (a row per entry; entries
    may repeat), left-padded to the longest prompt, with the prefix attention mask ``[B, W]``
    (``None`` when no row is padded). The originals stay reusable.

    ``reserve``: room for that many more tokens in every full-attention layer
    (:class:`GrowingLayer`), for a decode loop that appends one token per step."""
    width = max(n for _, _, n in rows)
    past = copy.deepcopy(rows[0][0])
    for i, layer in enumerate(past.layers):
        k, v = (
            torch.cat(
                [
                    nn.functional.pad(getattr(p.layers[i], name), (0, 0, width - n, 0))
                    for p, _, n in rows
                ]
            )
            for name in ("keys", "values")
        )
        if reserve and type(layer) is DynamicLayer:
            past.layers[i] = GrowingLayer(k, v, reserve)
            continue
        layer.keys, layer.values = k, v
        if hasattr(layer, "cumulative_length"):  # sliding-window layers (Gemma 3) count tokens
            layer.cumulative_length = width
    if all(n == width for _, _, n in rows):
        return past, None
    device = rows[0][1].device
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for r, (_, _, n) in enumerate(rows):
        mask[r, width - n :] = 1
    return past, mask


@torch.no_grad()
def after_prompt(
    model, rows: list, completions: list[list[int]], pad_id: int, logits_to_keep: int = 0
):
    """Logits ``[B, T, V]`` of right-padded ``completions`` (each non-empty), row ``r`` continuing
    the prompt of ``rows[r]`` (:func:`prefill_rows`); hooks see ``[B, T, d]``. ``logits_to_keep``:
    as transformers means it (0: every position; 1: the last, for a caller that reads only the
    hooks)."""
    device = next(model.parameters()).device
    past, prefix = stack_prompts(rows)
    ids, mask = pad_right(completions, pad_id, device)
    b, t = ids.shape
    if prefix is None:
        prefix = torch.ones((b, past.get_seq_length()), dtype=mask.dtype, device=device)
    starts = torch.tensor([n for _, _, n in rows], device=device)
    pos = starts[:, None] + torch.arange(t, device=device)
    out = model(
        input_ids=ids,
        attention_mask=torch.cat([prefix, mask], dim=1),
        position_ids=pos,
        past_key_values=past,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return out.logits
