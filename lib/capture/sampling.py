"""Same-prompt behavioural sampling (notebook 01).

Every scenario prompt is sampled ``samples_per_scenario`` times from a base model (no chat
template; ``sampling.prompt_style: chat`` wraps it in an instruct model's template) at temperature 1.0 with *no* top-k and *no* nucleus truncation. Note that
``model.generate(do_sample=True)`` in transformers silently applies ``top_k=50`` unless told
otherwise; this module does not use ``generate``'s sampler at all: it runs its own KV-cached
loop so that every completion draws from its own random generator, seeded from
(run seed, scenario, sample index). Any completion can therefore be regenerated alone
(:func:`regenerate`), and a batch's composition never changes a completion's random stream.

With ``prompt_cache`` (a config switch) each scenario prompt is prefilled once and the rows of
several scenarios decode together (:func:`generate_rows`): the same tokens, far fewer passes
through the model.

Output: ``completions.jsonl``, one row per completion, written batch by batch (append + fsync),
so a killed run resumes where it stopped and ends with exactly the file an uninterrupted run
writes.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from lib.core.config import ConfigError, RunConfig, SamplingConfig
from lib.core.fileio import append_jsonl, read_jsonl
from lib.core.rundir import RunDir, iter_batches, sha256_text
from lib.core.runtime import progress as progress_bar
from lib.core.scenarios import Scenario, scenarios_for
from lib.models.loading import decode_attention, prefill_rows, stack_prompts


def model_prompt(tokenizer, sc: Scenario, style: str = "raw") -> str:
    """The text the model continues for a scenario: its prompt as it is (``raw``, the study's
    setting), or the prompt as one user turn of the tokenizer's chat template followed by the
    assistant's turn (``chat``). The template's own leading BOS text is dropped when the tokenizer
    adds BOS itself, so a chat prompt never starts with two."""
    if style == "raw":
        return sc.prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "sampling.prompt_style=chat: this model's tokenizer has no chat template (a base "
            "model?); use prompt_style: raw"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": sc.prompt}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    return text.removeprefix(bos) if adds_bos else text


def model_prompts(cfg: RunConfig, tokenizer) -> dict[str, str]:
    """:func:`model_prompt` of every scenario of the run, by scenario id."""
    style = cfg.sampling.prompt_style
    return {sc.id: model_prompt(tokenizer, sc, style) for sc in scenarios_for(cfg)}


def completion_id(scenario: str, sample: int) -> str:
    return f"{scenario}-{sample:04d}"


def sample_seed(run_seed: int, scenario: str, sample: int) -> int:
    """A 63-bit seed that depends only on (run seed, scenario id, sample index)."""
    return int(sha256_text(f"{run_seed}/{scenario}/{sample}")[:16], 16) >> 1


def filter_logits(logits: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k (0 = off) and top-p (1.0 = off), as transformers defines them."""
    logits = logits.float()
    if s.temperature != 1.0:  # x / 1.0 is x: skip the pass over [B, V]
        logits = logits / s.temperature
    if s.top_k > 0:
        logits = TopKLogitsWarper(s.top_k)(None, logits)
    if s.top_p < 1.0:
        logits = TopPLogitsWarper(s.top_p)(None, logits)
    return logits


def draw(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row by inverse-CDF sampling, each row with its own generator."""
    probs = torch.softmax(logits.double(), dim=-1)
    cdf = probs.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    u = u.to(cdf.device) * cdf[:, -1]
    return torch.searchsorted(cdf, u[:, None]).squeeze(1).clamp_max(logits.shape[-1] - 1)


def _eos_ids(model, tokenizer) -> set[int]:
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return eos | set(gen_eos if isinstance(gen_eos, list) else [] if gen_eos is None else [gen_eos])


def _record(
    tokens: torch.Tensor,
    out: list[list[int]],
    done: list[bool],
    eos: set[int],
    rows: list[int] | None = None,
) -> None:
    """Append each drawn token to its completion (``rows[i]``: the completion batch row ``i``
    holds; all in order by default) until the completion has drawn an EOS."""
    for r, t in zip(rows if rows is not None else range(len(out)), tokens.tolist(), strict=True):
        if done[r]:
            continue
        if t in eos:
            done[r] = True
        else:
            out[r].append(t)


@torch.inference_mode()
def generate_batch(
    model, tokenizer, prompt: str, seeds: list[int], s: SamplingConfig, prompt_cache: bool = False
) -> list[list[int]]:
    """Sample ``len(seeds)`` continuations of one prompt; returns token ids without EOS.

    ``prompt_cache``: the prompt is prefilled once (batch 1) and its KV cache repeated over the
    batch (:func:`generate_rows`), instead of a batch of identical prompt rows.
    """
    if prompt_cache:
        return generate_rows(model, tokenizer, [prompt] * len(seeds), seeds, s)
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer(prompt).input_ids], device=device).expand(len(seeds), -1)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    eos = _eos_ids(model, tokenizer)
    out: list[list[int]] = [[] for _ in seeds]
    done = [False] * len(seeds)
    step_input, past = ids, None
    position = torch.arange(ids.shape[1], device=device).expand(len(seeds), -1)
    for _ in range(s.max_new_tokens):
        result = model(
            input_ids=step_input, position_ids=position, past_key_values=past, use_cache=True
        )
        past = result.past_key_values
        tokens = draw(filter_logits(result.logits[:, -1], s), generators)
        _record(tokens, out, done, eos)
        if all(done):
            break
        step_input = tokens[:, None]
        position = position[:, -1:] + 1
    return out


@torch.inference_mode()
def generate_rows(
    model, tokenizer, prompts: list[str], seeds: list[int], s: SamplingConfig
) -> list[list[int]]:
    """One continuation per ``(prompt, seed)`` row, rows of several prompts decoded together.

    Each distinct prompt is prefilled once (:func:`lib.models.loading.prefill_rows`); the caches are
    stacked, left-padded to the longest prompt, with room for the new tokens
    (:func:`lib.models.loading.stack_prompts`), and every decode step runs the rows still
    running: once a quarter of the batch has ended (EOS), those rows leave it (their cache
    rows too). Each row draws from its own generator, so it samples what
    :func:`generate_batch` samples up to float rounding (the same tokens:
    ``tests/integration/test_prompt_cache.py``).
    """
    device = next(model.parameters()).device
    rows = prefill_rows(model, [tuple(tokenizer(p).input_ids) for p in prompts])
    past, prefix = stack_prompts(rows, reserve=s.max_new_tokens)
    logits = torch.cat([lg for _, lg, _ in rows])
    position = torch.tensor([[n] for _, _, n in rows], device=device)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    eos = _eos_ids(model, tokenizer)
    out: list[list[int]] = [[] for _ in seeds]
    done = [False] * len(seeds)
    live = list(range(len(seeds)))  # the rows of ``out`` the batch's rows hold, in order
    step_input = None
    for step in range(s.max_new_tokens):
        if step:
            attn = None
            if prefix is not None:
                grown = torch.ones((len(live), step), dtype=prefix.dtype, device=device)
                attn = torch.cat([prefix, grown], dim=1)
            result = model(
                input_ids=step_input,
                attention_mask=attn,
                position_ids=position,
                past_key_values=past,
                use_cache=True,
            )
            past, logits = result.past_key_values, result.logits[:, -1]
            position = position + 1
        tokens = draw(filter_logits(logits, s), [generators[r] for r in live])
        _record(tokens, out, done, eos, live)
        if all(done):
            break
        step_input = tokens[:, None]
        finished = [i for i, r in enumerate(live) if done[r]]
        if len(finished) * 4 >= len(live):
            keep = torch.tensor([i for i, r in enumerate(live) if not done[r]], device=device)
            live = [live[i] for i in keep.tolist()]
            past.batch_select_indices(keep)
            step_input, position = step_input[keep], position[keep]
            prefix = None if prefix is None else prefix[keep]
    return out


def _row(
    cfg: RunConfig, tokenizer, sc: Scenario, prompt: str, sample: int, seed: int, ids: list[int]
) -> dict:
    return {
        "id": completion_id(sc.id, sample),
        "scenario": sc.id,
        "sample": sample,
        "seed": seed,
        "prompt": prompt,
        "completion": tokenizer.decode(ids, skip_special_tokens=True),
        "n_prompt_tokens": len(tokenizer(prompt).input_ids),
        "n_completion_tokens": len(ids),
        "completion_token_ids": ids,
        "finished": len(ids) < cfg.sampling.max_new_tokens,
    }


def planned_batches(cfg: RunConfig) -> list[tuple[Scenario, list[int]]]:
    """The fixed batch plan of a run: per scenario, consecutive sample indices."""
    plan = []
    for sc in scenarios_for(cfg):
        samples = list(range(cfg.sampling.samples_per_scenario))
        plan += [(sc, chunk) for chunk in iter_batches(samples, cfg.sampling.batch_size)]
    return plan


def _decode_groups(plan: list, cfg: RunConfig) -> list[list]:
    """The plan's batches decoded together: one each; with ``prompt_cache``, consecutive batches
    (of several scenarios) up to ``sampling.batch_size`` rows."""
    if not cfg.prompt_cache:
        return [[item] for item in plan]
    groups: list[list] = []
    for item in plan:
        if groups and sum(len(c) for _, c in groups[-1]) + len(item[1]) <= cfg.sampling.batch_size:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def sample_run(run: RunDir, cfg: RunConfig, model, tokenizer, progress: bool = True) -> list[dict]:
    """Sample every completion of the run that ``completions.jsonl`` does not hold yet.

    Returns all rows of the file (old and new), in file order.
    """
    done = {r["id"] for r in read_jsonl(run.completions)}
    prompt_of = model_prompts(cfg, tokenizer)
    plan = planned_batches(cfg)
    total = sum(len(chunk) for _, chunk in plan)
    bar = progress_bar(total=total, desc="sampling", on=progress, unit="completion")
    finished = sum(completion_id(sc.id, i) in done for sc, chunk in plan for i in chunk)
    if finished:
        bar.update(finished)  # at once: one line in a batch run, not one per skipped batch
    for group in _decode_groups(plan, cfg):
        todo = [
            (sc, i) for sc, chunk in group for i in chunk if completion_id(sc.id, i) not in done
        ]
        if not todo:
            continue
        bar.set_postfix(scenario=todo[0][0].id)
        seeds = [sample_seed(cfg.seed, sc.id, i) for sc, i in todo]
        with decode_attention(model):
            if cfg.prompt_cache:
                prompts = [prompt_of[sc.id] for sc, _ in todo]
                ids = generate_rows(model, tokenizer, prompts, seeds, cfg.sampling)
            else:
                prompt = prompt_of[todo[0][0].id]
                ids = generate_batch(model, tokenizer, prompt, seeds, cfg.sampling)
        rows = [
            _row(cfg, tokenizer, sc, prompt_of[sc.id], i, sd, t)
            for (sc, i), sd, t in zip(todo, seeds, ids, strict=True)
        ]
        append_jsonl(run.completions, rows)
        bar.update(len(todo))
    bar.close()
    return read_jsonl(run.completions)


def regenerate(cfg: RunConfig, model, tokenizer, scenario: str, sample: int) -> dict:
    """Regenerate one completion alone from its seed (equals the batched one up to float noise)."""
    sc = {s.id: s for s in scenarios_for(cfg)}[scenario]
    seed = sample_seed(cfg.seed, scenario, sample)
    prompt = model_prompt(tokenizer, sc, cfg.sampling.prompt_style)
    ids = generate_batch(model, tokenizer, prompt, [seed], cfg.sampling)[0]
    return _row(cfg, tokenizer, sc, prompt, sample, seed, ids)


def counts_table(rows: list[dict], label_of=None) -> pd.DataFrame:
    """Completions per scenario, with label columns when ``label_of(row) -> str|None`` is given."""
    counts: dict[str, Counter] = {}
    for r in rows:
        c = counts.setdefault(r["scenario"], Counter())
        c["completions"] += 1
        c["finished (EOS)"] += int(r.get("finished", False))
        if label_of is not None:
            c[label_of(r) or "not decisive"] += 1
    df = pd.DataFrame.from_dict(counts, orient="index").fillna(0).astype(int)
    df.index.name = "scenario"
    df.loc["total"] = df.sum()
    return df
