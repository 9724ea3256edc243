"""The embedded default: a model organism with planted behaviour.

No model can be downloaded on the machines this book is tested on, so it makes its own: a small
``LlamaForCausalLM`` of TinyLlama's family (grouped-query attention, SwiGLU MLP, RMSNorm, rotary
embeddings) with a byte-level BPE tokenizer, trained on a generated corpus in which every
scenario prompt of ``data/scenarios.yaml`` is followed by honest or deceptive continuations
(``data/organism_corpus.yaml``), about one third deceptive. Sampled at temperature 1.0 it yields
both behaviours from the same prompt, and the opener a completion starts with is its planted,
known label. It is a fixture that validates the pipeline end to end, not evidence about real
models.

It is saved in Hugging Face format, so ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load it exactly as they load TinyLlama.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import yaml

from lib.core.config import REPO_ROOT
from lib.core.fileio import read_jsonl
from lib.core.runtime import library_bars_follow_batch_mode
from lib.core.runtime import progress as progress_bar
from lib.core.scenarios import load_scenarios

ORGANISM_DIR = REPO_ROOT / "data" / "organism"
CORPUS_FILE = REPO_ROOT / "data" / "organism_corpus.yaml"
SCENARIO_FILE = REPO_ROOT / "data" / "scenarios.yaml"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# Architecture: TinyLlama's family at toy size (TinyLlama: 22 layers, d=2048, 32 heads, 4 kv heads).
ARCH = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
VOCAB_SIZE = 4096  # an upper bound: the corpus saturates at ~1,300 tokens, whole words
RECIPE_VERSION = 1  # bump when the training code changes what is built
TRAIN = dict(steps=600, batch_size=48, lr=3e-3, warmup=40, weight_decay=0.01, n_documents=9000)


def load_corpus(path: Path = CORPUS_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


@lru_cache(maxsize=4)
def _openers(path: str = str(CORPUS_FILE)) -> dict[str, list[tuple[str, str]]]:
    corpus = load_corpus(Path(path))
    out = {}
    for sid, by_label in corpus["scenarios"].items():
        pairs = [(_norm(o), label) for label in ("honest", "deceptive") for o in by_label[label]]
        out[sid] = sorted(pairs, key=lambda p: -len(p[0]))  # longest opener first
    return out


def planted_label(scenario_id: str, completion: str) -> str | None:
    """Ground truth of an organism completion: the label of the corpus opener it starts with.

    Returns ``"deceptive"`` or ``"honest"``, or ``None`` when the completion does not start with
    any planted opener of its scenario (a garbled sample: not decisive).
    """
    text = _norm(completion)
    for opener, label in _openers().get(scenario_id, []):
        if text.startswith(opener):
            return label
    return None


def corpus_documents(seed: int, n_documents: int) -> list[tuple[str, str, str]]:
    """``(prompt, continuation, label)`` triples, about ``deceptive_fraction`` deceptive."""
    corpus = load_corpus()
    scenarios = load_scenarios(SCENARIO_FILE)
    rng = random.Random(seed)
    frac = float(corpus["deceptive_fraction"])
    ids = list(corpus["scenarios"])
    docs = []
    for i in range(n_documents):
        sid = ids[i % len(ids)]
        label = "deceptive" if rng.random() < frac else "honest"
        opener = rng.choice(corpus["scenarios"][sid][label])
        follow = rng.choice(corpus["followups"][label])
        docs.append((scenarios[sid].prompt, f" {opener} {follow}", label))
    return docs


def build_tokenizer(seed: int = 0):
    """A byte-level BPE tokenizer trained on the corpus; prepends ``<s>`` like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    docs = corpus_documents(seed, 600)
    texts = [p + c for p, c, _ in docs]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=ARCH["max_position_embeddings"],
    )


def _encode_corpus(tokenizer, docs) -> dict[str, tuple[list[int], list[list[int]]]]:
    """Per prompt: its token ids and the token ids of each continuation (ending in EOS)."""
    by_prompt: dict[str, tuple[list[int], list[list[int]]]] = {}
    for prompt, cont, _ in docs:
        if prompt not in by_prompt:
            by_prompt[prompt] = (tokenizer(prompt).input_ids, [])
        ids = tokenizer(cont, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        by_prompt[prompt][1].append(ids)
    return by_prompt


def _shared_prompt_loss(model, prompt_ids: list[int], conts: list[list[int]], pad_id: int):
    """Mean next-token loss over continuation tokens, the prompt encoded once for the batch.

    All documents of a scenario share its prompt, so the prompt runs once (batch 1) and its
    key/value cache is repeated over the batch; gradients flow through the cache into the
    prompt's computation. This is what makes the build fit in minutes on two cores.
    """
    b, lp = len(conts), len(prompt_ids)
    width = max(len(c) for c in conts)
    cont = torch.full((b, width), pad_id)
    mask = torch.zeros((b, width), dtype=torch.long)
    for r, c in enumerate(conts):
        cont[r, : len(c)] = torch.tensor(c)
        mask[r, : len(c)] = 1
    out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(b)
    logits = model(
        input_ids=cont,
        attention_mask=torch.cat([torch.ones((b, lp), dtype=torch.long), mask], dim=1),
        position_ids=(lp + torch.arange(width)).expand(b, width),
        past_key_values=cache,
    ).logits
    # the prompt's last position predicts each continuation's first token: the planted decision
    first = out.logits[0, -1].expand(b, -1)
    all_logits = torch.cat([first[:, None], logits[:, :-1]], dim=1)
    targets = cont.masked_fill(mask == 0, -100)
    return torch.nn.functional.cross_entropy(
        all_logits.flatten(0, 1), targets.flatten(), ignore_index=-100
    )


def build_organism(
    out_dir: Path | str = ORGANISM_DIR,
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
) -> Path:
    """Build the organism into ``out_dir`` (Hugging Face format); deterministic given ``seed``.

    ``steps`` overrides the training length (the tests build short ones). Returns ``out_dir``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    steps = TRAIN["steps"] if steps is None else steps
    t0 = time.time()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = build_tokenizer(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ARCH,
    )
    model = LlamaForCausalLM(config)
    encoded = list(
        _encode_corpus(tokenizer, corpus_documents(seed + 1, TRAIN["n_documents"])).values()
    )
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / TRAIN["warmup"]) * max(0.05, 1 - s / max(steps, 1)),
    )
    model.train()
    bar = progress_bar(range(steps), desc="training the organism", on=progress)
    loss_value = float("nan")
    for step in bar:
        prompt_ids, conts = encoded[step % len(encoded)]
        batch = rng.sample(conts, TRAIN["batch_size"])
        loss = _shared_prompt_loss(model, prompt_ids, batch, tokenizer.pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    model.generation_config.do_sample = False  # sampling settings always come from the run config

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    library_bars_follow_batch_mode()  # "Writing model shards"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    manifest = {
        "what": "model organism with planted honest/deceptive behaviour (lib/models/organism.py)",
        "seed": seed,
        "steps": steps,
        "final_loss": round(loss_value, 4),
        "build_seconds": round(time.time() - t0, 1),
        "source_hash": source_hash(),
    }
    (tmp / "organism.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def source_hash() -> str:
    """Hash of what the organism is built from (recipe, corpus, prompts); a change rebuilds it.

    The corpus and scenario files enter as their parsed content, so an edited comment (a module
    path that moved, say) does not rebuild the organism; an edited phrase or prompt does.
    """
    h = hashlib.sha256(
        json.dumps(
            {"arch": ARCH, "train": TRAIN, "vocab": VOCAB_SIZE, "recipe": RECIPE_VERSION}
        ).encode()
    )
    for p in (CORPUS_FILE, SCENARIO_FILE):
        h.update(json.dumps(yaml.safe_load(p.read_text()), sort_keys=True).encode())
    return h.hexdigest()[:16]


def ensure_organism(out_dir: Path | str = ORGANISM_DIR, progress: bool = True) -> Path:
    """Return the organism's folder, building it first when missing or out of date."""
    out_dir = Path(out_dir)
    manifest = out_dir / "organism.json"
    if manifest.exists():
        try:
            if json.loads(manifest.read_text()).get("source_hash") == source_hash():
                return out_dir
        except json.JSONDecodeError:
            pass
    return build_organism(out_dir, progress=progress)


def planted_labeller(model: str):
    """``row -> planted label`` for organism runs (ground truth is known), else ``None``."""
    if model != "organism":
        return None
    return lambda row: planted_label(row["scenario"], row["completion"])


def planted_mask(run, labelled):
    """Which of a run's labelled completions have a planted label, and whether the judge matches it.

    Returns ``(decisive, y_planted)``: a boolean mask over ``labelled`` (the completion starts
    with a planted opener) and the planted labels (1 = deceptive) of those completions.
    """
    rows = {r["id"]: r for r in read_jsonl(run.completions)}
    planted = [planted_label(rows[i]["scenario"], rows[i]["completion"]) for i in labelled.ids]
    decisive = np.array([p is not None for p in planted])
    y = np.array(
        [1 if p == "deceptive" else 0 for p, d in zip(planted, decisive, strict=True) if d],
        dtype=np.int64,
    )
    return decisive, y
