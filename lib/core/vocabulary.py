"""The book's vocabulary: every name a run, a file or a figure uses for a kind of thing.

Architectures, training conditions, labels, cross-validation modes, poolings and judges are
spelled here once; every other module takes them from here. :class:`SAEKey` is the only place
an SAE id is made or read back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Architecture = Literal["topk", "jumprelu", "jumprelu_ste"]
Condition = Literal["mixed", "deceptive_only", "honest_only"]
#: SAE architectures: TopK, the study's threshold-0 JumpReLU (a ReLU SAE), JumpReLU with an STE threshold
ARCHITECTURES: tuple[str, ...] = ("topk", "jumprelu", "jumprelu_ste")
#: SAE training conditions: which judged completions an SAE trains on
CONDITIONS: tuple[str, ...] = ("mixed", "deceptive_only", "honest_only")
#: judge labels; ambiguous completions are dropped before probing and SAE training
LABELS: tuple[str, ...] = ("deceptive", "honest", "ambiguous")
DECISIVE: tuple[str, ...] = ("deceptive", "honest")
#: class ids of the decisive labels (probes predict 1 = deceptive)
DECEPTIVE, HONEST = 1, 0
CLASS_NAMES: dict[int, str] = {DECEPTIVE: "deceptive", HONEST: "honest"}
#: the class ids each training condition keeps
CONDITION_CLASSES: dict[str, tuple[int, ...]] = {
    "mixed": (HONEST, DECEPTIVE),
    "deceptive_only": (DECEPTIVE,),
    "honest_only": (HONEST,),
}
#: judges: cue phrases in the first characters; the first word alone; Gemini 2.5 Flash
JUDGES: tuple[str, ...] = ("keyword", "first_word", "gemini")
#: pooled per-completion vectors stored by the capture stage
POOLINGS: tuple[str, ...] = ("last", "mean")
#: labels of control prompts: a sincere false answer, a true answer to a contradiction prompt, and
#: any answer to a neutral prompt. Never decisive: no deception probe sees them.
CONTROL_LABELS: tuple[str, ...] = ("false_not_deceptive", "true_not_deceptive", "neutral")
#: scenario variants of a family (data/scenarios_v2.yaml): the lie is "no" (direct) or "yes"
#: (swapped); a contradiction prompt invites a sincere false answer; a neutral one has no stakes
VARIANTS: tuple[str, ...] = ("direct", "swapped", "contradiction", "neutral")
CONTROL_VARIANTS: tuple[str, ...] = ("contradiction", "neutral")
#: the answer words whose polarity the controls track
ANSWER_WORDS: tuple[str, ...] = ("no", "yes")


def cue_labels(variant: str) -> tuple[str, ...]:
    """The labels a variant's cues (and its judges) decide between; a neutral prompt has none."""
    if variant == "contradiction":
        return ("false_not_deceptive", "true_not_deceptive")
    if variant == "neutral":
        return ()
    return DECISIVE


#: cross-validation modes: stratified folds over completions; whole scenarios held out
CV_MODES: tuple[str, ...] = ("stratified", "scenario")

_SAE_ID = re.compile(
    r"^(?P<model>[a-z0-9-]+)_(?P<arch>jumprelu_ste|jumprelu|topk)_L(?P<layer>\d+)_"
    r"(?P<condition>mixed|deceptive_only|honest_only)(?:_s(?P<seed>[1-9]\d*))?$"
)


@dataclass(frozen=True, order=True)
class SAEKey:
    """One SAE of a grid: ``{model}_{arch}_L{layer}_{condition}``, ``_s{seed}`` beyond seed 0.

    The first seed's id carries no suffix, so the study's ids name seed 0.
    """

    model: str
    arch: str
    layer: int
    condition: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"SAE architecture {self.arch!r}; allowed: {list(ARCHITECTURES)}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"SAE condition {self.condition!r}; allowed: {list(CONDITIONS)}")
        if not re.fullmatch(r"[a-z0-9-]+", self.model):
            raise ValueError(f"model tag {self.model!r}: lower-case letters, digits and '-'")
        if self.layer < 0 or self.seed < 0:
            raise ValueError(f"layer {self.layer} and seed {self.seed} must be >= 0")

    @property
    def id(self) -> str:
        suffix = f"_s{self.seed}" if self.seed else ""
        return f"{self.model}_{self.arch}_L{self.layer}_{self.condition}{suffix}"

    @property
    def cell(self) -> tuple[int, str, str]:
        """``(layer, arch, condition)``: the grid cell, the same for every seed."""
        return (self.layer, self.arch, self.condition)

    @classmethod
    def parse(cls, sae_id: str) -> SAEKey:
        """The key of an SAE id; a string that is not one raises ValueError naming the form."""
        m = _SAE_ID.match(sae_id)
        if not m:
            raise ValueError(
                f"{sae_id!r} is not an SAE id of the form "
                "{model}_{arch}_L{layer}_{condition}[_s{seed}]"
            )
        return cls(m["model"], m["arch"], int(m["layer"]), m["condition"], int(m["seed"] or 0))
