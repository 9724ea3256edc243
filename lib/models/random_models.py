"""Randomly initialised models with the exact shapes of the study's models (``random:<preset>``).

A model spec ``random:tinyllama`` (in a config's ``model`` or ``--set model=...``) names a
Hugging Face causal LM with TinyLlama-1.1B's architecture and sizes, initialised at random with a
fixed seed. It needs no download: it is built on first use into ``data/models/random-<preset>/``
(git-ignored) in Hugging Face format and then loaded by the same ``from_pretrained`` path as a
real model. It lets the whole book run at a real model's scale (memory, disk, time, shapes) on a
machine without hub access. Nothing it produces is evidence about any real model: every config
that uses it must say "random weights" in its ``model_label``.

Presets (:data:`PRESETS`) carry the shapes of the study's Hugging Face models, written from their
published ``config.json`` files. Rope scaling of the long-context models (Llama-3.2's ``llama3``
and Phi-4-mini's ``longrope``) is kept where it is a few scalars and left out for Phi-4-mini
(its per-frequency factor lists only matter beyond 4k tokens; the book uses a few hundred).

The tokenizer
    Byte-level BPE: the organism's tokenizer (``lib.models.organism.build_tokenizer``: ``<pad>`` = 0,
    ``<s>`` = 1, ``</s>`` = 2, about 1,300 tokens learned on the scenario corpus, so any text
    round-trips and prompts tokenize compactly) padded to the model's vocabulary with *filler*
    tokens. No merge produces a filler, so encoding never emits one, but a random model samples
    them and they decode to text: two thirds are the keyword judge's cue phrases
    (``data/scenarios.yaml``), one third words of the scenario prompts, each with a punctuation
    and capitalisation variant. A random model's samples are therefore word salad in which the
    keyword judge finds a cue in about a third to a half of them, so a rehearsal has labels to
    train SAEs and probes on. The labels are the judge's reading of random text, not behaviour.

Rebuilds
    ``random-model.json`` in the folder records :func:`recipe_hash` (preset, overrides, seed,
    :data:`RECIPE_VERSION`, the transformers version, the tokenizer's sources). A folder whose
    hash differs is rebuilt; a build is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from itertools import count, product
from pathlib import Path
from typing import Any

import torch

from lib.core.config import REPO_ROOT
from lib.core.runtime import library_bars_follow_batch_mode, temp_sibling
from lib.core.scenarios import load_scenarios
from lib.models.organism import CORPUS_FILE, SCENARIO_FILE, VOCAB_SIZE
from lib.models.organism import build_tokenizer as organism_tokenizer

SPEC_PREFIX = "random:"
MODELS_DIR = REPO_ROOT / "data" / "models"
MANIFEST = "random-model.json"
RECIPE_VERSION = 1  # bump when the build changes what is written
DEFAULT_SEED = 0
CUE_SHARE = 2 / 3  # share of filler ids that decode to cue phrases (the rest: prompt words)
PUNCTUATION = ",.!?;:)\"'-"  # filler suffixes: every string of up to 3 of these (1,111 of them)

# The study's Hugging Face models (shapes from each model's config.json). ``hf_id`` is the
# model the shapes belong to; ``model_type`` picks the transformers config class.
PRESETS: dict[str, dict[str, Any]] = {
    "tinyllama": {
        "hf_id": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
        "model_type": "llama",
        "config": dict(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    },
    "smollm2-135m": {
        "hf_id": "HuggingFaceTB/SmolLM2-135M",
        "model_type": "llama",
        "config": dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        ),
    },
    "pythia-160m": {
        "hf_id": "EleutherAI/pythia-160m",
        "model_type": "gpt_neox",
        "config": dict(
            vocab_size=50304,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=2048,
            rotary_pct=0.25,
            rotary_emb_base=10000,
            use_parallel_residual=True,
            layer_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    },
    "llama-3-2-1b": {
        "hf_id": "meta-llama/Llama-3.2-1B",
        "model_type": "llama",
        "config": dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_scaling=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=32.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
            tie_word_embeddings=True,
        ),
    },
    "qwen3-1-7b": {
        "hf_id": "Qwen/Qwen3-1.7B-Base",
        "model_type": "qwen3",
        "config": dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
    },
    "phi-2": {
        "hf_id": "microsoft/phi-2",
        "model_type": "phi",
        "config": dict(
            vocab_size=51200,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=2048,
            partial_rotary_factor=0.4,
            rope_theta=10000.0,
            layer_norm_eps=1e-5,
            hidden_act="gelu_new",
            tie_word_embeddings=False,
        ),
    },
    "phi-4-mini-reasoning": {
        "hf_id": "microsoft/Phi-4-mini-reasoning",
        "model_type": "phi3",
        "config": dict(
            vocab_size=200064,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=24,
            num_key_value_heads=8,
            max_position_embeddings=131072,
            original_max_position_embeddings=4096,
            partial_rotary_factor=0.75,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
    },
}

# Sizes of a tiny member of each family (tests): same classes, same structure, small numbers.
TINY_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
)


class RandomModelError(ValueError):
    """A ``random:`` spec or build request that cannot be honoured; the message says why."""


def is_random_spec(model: str) -> bool:
    return model.startswith(SPEC_PREFIX)


def parse_spec(spec: str) -> str:
    """``random:<preset>`` -> the preset name; raises :class:`RandomModelError` otherwise."""
    if not is_random_spec(spec):
        raise RandomModelError(f"{spec!r} is not a random-model spec (random:<preset>)")
    name = spec[len(SPEC_PREFIX) :]
    if name not in PRESETS:
        raise RandomModelError(
            f"unknown random-model preset {name!r} in {spec!r}; known: {sorted(PRESETS)}"
        )
    return name


def real_depth(preset: str) -> int:
    """``num_hidden_layers`` of the real model the preset copies."""
    return int(PRESETS[preset]["config"]["num_hidden_layers"])


def model_config(preset: str, overrides: dict[str, Any] | None = None):
    """The transformers config of ``preset`` (``overrides`` replace single keys).

    Token ids follow the tokenizer of :func:`build_tokenizer`: pad 0, bos 1, eos 2.
    """
    from transformers import AutoConfig

    if preset not in PRESETS:
        raise RandomModelError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    spec = PRESETS[preset]
    kwargs = {**spec["config"], **(overrides or {})}
    kwargs.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return AutoConfig.for_model(spec["model_type"], **kwargs)


def tiny_overrides(preset: str, vocab_size: int = 2048) -> dict[str, Any]:
    """Overrides that shrink ``preset`` to a tiny model of the same family (for tests)."""
    sizes = dict(TINY_SIZES, vocab_size=vocab_size)
    model_type = PRESETS[preset]["model_type"]
    if model_type in ("gpt_neox", "phi"):
        # no grouped-query attention in these families' configs (Phi: kv heads = heads)
        sizes.pop("head_dim")
        sizes["num_key_value_heads"] = sizes["num_attention_heads"]
        if model_type == "gpt_neox":
            sizes.pop("num_key_value_heads")
    if model_type == "phi3":
        sizes.pop("head_dim")
        sizes["original_max_position_embeddings"] = sizes["max_position_embeddings"]
    if model_type == "llama" and "head_dim" not in PRESETS[preset]["config"]:
        sizes.pop("head_dim")
    if "rope_scaling" in PRESETS[preset]["config"]:
        scaling = dict(PRESETS[preset]["config"]["rope_scaling"])
        if "original_max_position_embeddings" in scaling:
            scaling["original_max_position_embeddings"] = sizes["max_position_embeddings"] // 4
        sizes["rope_scaling"] = scaling
    return sizes


# ----- tokenizer ---------------------------------------------------------------------------------
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _variants(items: list[str]) -> Iterator[str]:
    """``" " + item + suffix`` in lower, Capital and UPPER case, the shortest suffixes first."""
    for n in range(4):
        for suffix in map("".join, product(PUNCTUATION, repeat=n)):
            for case in (str.lower, str.capitalize, str.upper):
                for item in items:
                    yield " " + case(item) + suffix


def filler_texts(scenario_file: Path) -> Iterator[str]:
    """The decoded texts of the filler tokens, in id order, without repeats.

    Two of every three are the keyword judge's cue phrases of ``scenario_file``, one a word of
    its prompts (:data:`CUE_SHARE`), each with a case and punctuation variant; when both supplies
    run out, numbered words (``" w0"``, ``" w1"``, ...) follow.
    """
    scenarios = load_scenarios(scenario_file)
    cues = sorted({c for s in scenarios.values() for cs in s.cues.values() for c in cs})
    words = sorted(
        {w for s in scenarios.values() for w in re.findall(r"[A-Za-z][\w'-]*", s.prompt)}
    )
    per_word = round(1 / (1 - CUE_SHARE))
    # a text both supplies produce (a prompt word that is also a cue) is taken once
    seen: set[str] = set()
    cue_iter = (t for t in _variants(cues) if t not in seen)
    word_iter = (t for t in _variants(words) if t not in seen)
    for i in count():
        first, second = (
            (word_iter, cue_iter) if i % per_word == per_word - 1 else (cue_iter, word_iter)
        )
        text = next(first, None) or next(second, None) or f" w{i}"
        seen.add(text)
        yield text


def build_tokenizer(vocab_size: int, max_length: int = 2048, scenario_file: Path | None = None):
    """The organism's byte-level BPE tokenizer padded with filler tokens to ``vocab_size``.

    Returns a ``PreTrainedTokenizerFast`` with exactly ``vocab_size`` ids, ``<pad>``/``<s>``/
    ``</s>`` at 0/1/2, that prepends ``<s>`` and round-trips any text. Raises
    :class:`RandomModelError` when ``vocab_size`` is smaller than the organism's tokenizer.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    base = organism_tokenizer(0)
    state = json.loads(base.backend_tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    if vocab_size < len(vocab):
        raise RandomModelError(
            f"vocab_size={vocab_size} is smaller than the base tokenizer ({len(vocab)} tokens)"
        )
    table = _byte_to_unicode()
    for text in filler_texts(scenario_file or SCENARIO_FILE):
        if len(vocab) >= vocab_size:
            break
        token = "".join(table[b] for b in text.encode("utf-8"))
        if token not in vocab:  # a learned token already decodes to this text
            vocab[token] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(state))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=base.bos_token,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        model_max_length=max_length,
    )


# ----- building and caching ----------------------------------------------------------------------
def recipe_hash(preset: str, overrides: dict | None = None, seed: int = DEFAULT_SEED) -> str:
    """Hash of everything a build depends on; a folder with another hash is rebuilt."""
    import transformers

    h = hashlib.sha256(
        json.dumps(
            {
                "preset": PRESETS[preset],
                "overrides": overrides or {},
                "seed": seed,
                "recipe": RECIPE_VERSION,
                "cue_share": CUE_SHARE,
                "punctuation": PUNCTUATION,
                "organism_vocab": VOCAB_SIZE,
                "transformers": transformers.__version__,
            },
            sort_keys=True,
        ).encode()
    )
    for p in (CORPUS_FILE, SCENARIO_FILE):
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def build_random_model(
    preset: str,
    out_dir: Path | str,
    seed: int = DEFAULT_SEED,
    overrides: dict[str, Any] | None = None,
    save_dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Build ``preset`` with random weights (``torch.manual_seed(seed)``) into ``out_dir``.

    Writes ``config.json``, ``model.safetensors`` (``save_dtype``), the tokenizer files and
    ``random-model.json`` (the recipe hash and what was built), atomically. Returns ``out_dir``.
    """
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    t0 = time.time()
    config = model_config(preset, overrides)
    tokenizer = build_tokenizer(config.vocab_size, config.max_position_embeddings)
    if len(tokenizer) != config.vocab_size:
        raise RandomModelError(f"tokenizer has {len(tokenizer)} ids, model {config.vocab_size}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(save_dtype).eval()
    model.generation_config.do_sample = False  # sampling settings always come from the run config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    try:
        library_bars_follow_batch_mode()  # "Writing model shards"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "what": f"random weights with the shapes of {PRESETS[preset]['hf_id']} (lib/models/random_models.py)",
            "preset": preset,
            "seed": seed,
            "overrides": overrides or {},
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "saved_dtype": str(save_dtype).removeprefix("torch."),
            "build_seconds": round(time.time() - t0, 1),
            "recipe_hash": recipe_hash(preset, overrides, seed),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_current(path: Path | str, preset: str, overrides: dict | None = None, seed: int = 0) -> bool:
    """True when ``path`` holds a finished build of exactly this recipe."""
    manifest = Path(path) / MANIFEST
    try:
        return json.loads(manifest.read_text()).get("recipe_hash") == recipe_hash(
            preset, overrides, seed
        )
    except (OSError, json.JSONDecodeError):
        return False


def ensure_random_model(spec: str, root: Path | str | None = None) -> Path:
    """The folder of ``random:<preset>`` under ``root`` (default :data:`MODELS_DIR`), built first
    when missing or stale (see :func:`recipe_hash`)."""
    import fcntl

    preset = parse_spec(spec)
    out = Path(root if root is not None else MODELS_DIR) / f"random-{preset}"
    if is_current(out, preset):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time (grid workers may ask together); the others wait and reuse its build
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(out, preset):
            hf_id = PRESETS[preset]["hf_id"]
            print(f"building {spec} (random weights, {hf_id} shapes) into {out.name}")
            build_random_model(preset, out)
    return out
