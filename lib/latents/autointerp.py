"""Auto-interpretation of latents, and the paper's test made quantitative (notebook 08).

**Labelling.** Each latent is labelled from its examples alone, one latent per call: the
completions where it fires most and completions from its activation quantiles, with the tokens
it fires on marked. The labeller is never told which completions the judge called deceptive, so a
label says what the latent fires on, not how it separates the classes (as in the study, whose
auto-labels came from activation examples). The client is anything with
``generate_json(prompt, schema) -> schema instance`` (:class:`JSONClient`): the run's Gemini
client (with the judge's retries, cache and key handling) in the real study, a fake in the tests.
Answers are cached in ``features/<sae_id>/autointerp.jsonl`` keyed on the prompt version, the
model and the prompt, so a rerun makes no call that was answered; a failed call is not cached.

**Which latents.** The top latents in both directions, plus ``features.autointerp_random``
latents drawn at random among those that fire: an unselected set, because the top latents are
chosen *by* their AUROC and comparing them with the rest would find what the selection put there.

**The test** (:func:`deception_label_test`): the latents whose label mentions deception, lying,
concealment or similar (:data:`DECEPTION_PATTERN`) against the other latents, on their AUROC
(deceptive vs honest): a two-sided Mann-Whitney test, with ``p_greater`` = P(a deception-labelled
latent's AUROC exceeds another latent's). Two references: every other latent of the SAE, and
the other *labelled* latents. The paper's claim ("deception" latents rarely fired while models
lied) predicts ``p_greater`` near 0.5 and a low firing rate on deceptive completions.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from scipy.stats import mannwhitneyu

from lib.core.fileio import append_jsonl, read_jsonl
from lib.core.rundir import sha256_text, stable_seed
from lib.judging import gemini
from lib.latents.separating import extend_examples, features_dir, write_report

PROMPT_VERSION = "ai1"
#: words that make a label "about deception" (case-insensitive, whole words)
DECEPTION_PATTERN = re.compile(
    r"\b(decept\w*|deceiv\w*|lie|lies|lied|liar\w*|lying|dishonest\w*|conceal\w*|hide|hides|"
    r"hiding|hidden|evasi\w*|deny|denies|denied|denial\w*|mislead\w*|false\w*|falsif\w*|"
    r"cover[- ]?up\w*|secret\w*|manipulat\w*|untruth\w*|fabricat\w*)\b",
    re.IGNORECASE,
)
MARK_LEVELS = 9  # activations shown on a 1..9 scale relative to the latent's largest example


class JSONClient(Protocol):
    """A model client that answers a prompt with JSON validated against a pydantic model."""

    def generate_json(self, prompt: str, schema: type[BaseModel]) -> BaseModel: ...


class LatentLabel(BaseModel):
    """What the labeller must answer for one latent."""

    label: str = Field(min_length=1, max_length=80, description="a few words: what it fires on")
    explanation: str = Field(min_length=1, description="one or two sentences of evidence")


def mark_tokens(tokens: list[str], acts: list[float], scale: float) -> str:
    """The completion with every token the latent fires on written as ``[[token|level]]``,
    ``level`` in 1..9 relative to ``scale`` (the latent's largest activation in its examples)."""
    out = []
    for tok, act in zip(tokens, acts, strict=True):
        if act > 0 and scale > 0:
            level = max(1, min(MARK_LEVELS, round(MARK_LEVELS * act / scale)))
            out.append(f"[[{tok}|{level}]]")
        else:
            out.append(tok)
    return "".join(out).strip()


def render_prompt(examples: list[dict]) -> str:
    """The labelling prompt of one latent from its example dicts (``tokens``, ``acts``, ``kind``);
    the judge's label and the scenario are deliberately left out."""
    scale = max((max(e["acts"], default=0.0) for e in examples), default=0.0)
    lines = [
        "You are labelling one latent (feature) of a sparse autoencoder trained on a language",
        "model's residual stream. Below are text continuations the model wrote. Tokens where the",
        "latent is active are written [[token|level]], level 1 (weak) to 9 (its strongest).",
        "The first group shows where it fires most; the second shows weaker, typical activity.",
        "",
        "Strongest activations:",
    ]
    top = [e for e in examples if e["kind"] == "top"]
    rest = [e for e in examples if e["kind"] != "top"]
    lines += [f"{i + 1}. {mark_tokens(e['tokens'], e['acts'], scale)}" for i, e in enumerate(top)]
    if rest:
        lines += ["", "Typical activations (from lower quantiles):"]
        lines += [
            f"{i + 1}. {mark_tokens(e['tokens'], e['acts'], scale)}" for i, e in enumerate(rest)
        ]
    lines += [
        "",
        "What does this latent respond to? Answer in JSON with two keys: 'label', a short phrase of",
        "at most eight words naming the pattern, and 'explanation', one or two sentences citing the",
        "evidence. Describe the text the latent fires on; do not guess the writer's intentions",
        "unless the text itself shows them.",
    ]
    return "\n".join(lines)


def choose_latents(report, n_random: int, seed: int) -> list[int]:
    """The report's top latents, then ``n_random`` other latents that fire, drawn with ``seed``."""
    table = report.table
    firing = table[(table["rate_deceptive"] > 0) | (table["rate_honest"] > 0)]["latent"]
    others = sorted(set(int(i) for i in firing) - set(report.top_ids))
    rng = np.random.default_rng(seed)
    extra = [int(i) for i in rng.permutation(others)[:n_random]] if others else []
    return report.top_ids + sorted(extra)


class AutoInterpCache:
    """Answers of the labeller, one JSON line each, keyed on (version, model, prompt)."""

    def __init__(self, path) -> None:
        self.path = path
        self._rows = {r["key"]: r for r in read_jsonl(path)}

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return sha256_text(f"{PROMPT_VERSION}\n{model}\n{prompt}")

    def get(self, key: str) -> LatentLabel | None:
        row = self._rows.get(key)
        return LatentLabel(label=row["label"], explanation=row["explanation"]) if row else None

    def put(self, key: str, latent: int, answer: LatentLabel) -> None:
        row = {"key": key, "latent": latent, **answer.model_dump()}
        append_jsonl(self.path, [row])
        self._rows[key] = row


def label_latents(
    client: JSONClient, report, latents: list[int], cache: AutoInterpCache, model: str
) -> tuple[dict[int, LatentLabel], dict[int, str]]:
    """Label ``latents`` of ``report`` (one call each, cached). Returns ``(labels, failures)``:
    latent -> answer, and latent -> why its call failed (failed latents stay unlabelled and are
    asked again on the next run). Latents without examples (never firing) are skipped."""
    labels, failures = {}, {}
    for lat in latents:
        examples = report.examples.get(int(lat)) or []
        if not examples:
            continue
        prompt = render_prompt(examples)
        key = cache.key(model, prompt)
        answer = cache.get(key)
        if answer is None:
            try:
                answer = client.generate_json(prompt, LatentLabel)
                answer = LatentLabel.model_validate(answer.model_dump())
            except Exception as e:  # the client already retried; record and go on
                failures[int(lat)] = f"{type(e).__name__}: {e}"[:300]
                continue
            cache.put(key, int(lat), answer)
        labels[int(lat)] = answer
    return labels, failures


def mentions_deception(label: str) -> bool:
    return bool(DECEPTION_PATTERN.search(label or ""))


def deception_label_test(table: pd.DataFrame, labels: dict[int, str]) -> pd.DataFrame:
    """Deception-labelled latents against the others on AUROC (see the module docstring).

    ``table``: the SAE's latent table (``latent``, ``auroc``, ``rate_deceptive``); ``labels``:
    latent -> label. One row per reference (``all_other_latents``, ``other_labelled_latents``):
    ``n_deception``, ``n_reference``, medians of AUROC, ``p_greater``, ``p_value``, and the
    deception-labelled latents' median firing rate on deceptive completions. NaN where a group
    is empty.
    """
    t = table.set_index("latent")
    deceptive_ids = sorted(i for i, s in labels.items() if mentions_deception(s))
    labelled = set(labels)
    refs = {
        "all_other_latents": [i for i in t.index if i not in set(deceptive_ids)],
        "other_labelled_latents": sorted(labelled - set(deceptive_ids)),
    }
    rows = []
    a = t.loc[deceptive_ids, "auroc"].to_numpy(dtype=float)
    for name, ids in refs.items():
        b = t.loc[ids, "auroc"].to_numpy(dtype=float)
        nan = float("nan")
        p_greater = p = nan
        if len(a) and len(b):
            res = mannwhitneyu(a, b, alternative="two-sided")
            p_greater, p = float(res.statistic) / (len(a) * len(b)), float(res.pvalue)
        rows.append(
            {
                "reference": name,
                "n_deception": len(a),
                "n_reference": len(b),
                "median_auroc_deception": float(np.median(a)) if len(a) else nan,
                "median_auroc_reference": float(np.median(b)) if len(b) else nan,
                "p_greater": p_greater,
                "p_value": p,
                "median_rate_deceptive": float(t.loc[deceptive_ids, "rate_deceptive"].median())
                if len(a)
                else nan,
            }
        )
    return pd.DataFrame(rows)


def autointerp_seed(run_seed: int, sae_id: str) -> int:
    return stable_seed(run_seed, sae_id, "autointerp")


# ----- the stage: label one SAE's report ----------------------------------------------------------
def make_client(cfg, run) -> JSONClient:
    """The run's Gemini client for labelling, from ``lib.judging.gemini.make_json_client(cfg, run,
    model)`` (the judge's retries, cache and key handling behind ``generate_json``)."""
    return gemini.make_json_client(cfg, run, model=cfg.features.autointerp_model)


def label_report(run, cfg, report, client: JSONClient, tokenizer) -> dict[int, str]:
    """Label the report's top latents and ``features.autointerp_random`` random firing latents
    (examples added first), store the labels in the report and its files; returns failures."""
    latents = choose_latents(
        report, cfg.features.autointerp_random, autointerp_seed(cfg.seed, report.sae_id)
    )
    extend_examples(run, cfg, report, latents, tokenizer)
    cache = AutoInterpCache(features_dir(run, report.sae_id) / "autointerp.jsonl")
    labels, failures = label_latents(client, report, latents, cache, cfg.features.autointerp_model)
    report.labels = {lat: a.label for lat, a in labels.items()}
    write_report(run, report)
    return failures
