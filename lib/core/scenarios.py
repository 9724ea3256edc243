"""Scenario prompts of the same-prompt sampling design (``data/scenarios.yaml``, version 1: the
study's nine; ``data/scenarios_v2.yaml``: 30 families with role-swapped and control variants)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from lib.core.config import ConfigError, RunConfig
from lib.core.vocabulary import ANSWER_WORDS, CONTROL_VARIANTS, DECISIVE, VARIANTS, cue_labels

LABELS = DECISIVE  # the cue labels of a study scenario (direct or swapped variant)
KINDS = ("incentive", "roleplay", "control")


@dataclass(frozen=True)
class Scenario:
    """One prompt of the scenario file.

    Version 2 files group prompts into families (``family``) of variants (``variant``, see
    :data:`lib.core.vocabulary.VARIANTS`); a version 1 file's prompts are each their own family's
    ``direct`` variant. ``lie_answer`` is the first word (``no`` / ``yes``) of the deceptive
    answer (of the sincere false answer for a ``contradiction`` variant); ``None`` where the
    answer is not a yes/no word. ``cues`` maps each cue label of the variant
    (:func:`lib.core.vocabulary.cue_labels`) to its phrases; a neutral prompt has none.
    """

    id: str
    kind: str
    title: str
    prompt: str
    cues: dict[str, tuple[str, ...]]  # label -> cue phrases (lower case)
    family: str = ""
    variant: str = "direct"
    study: bool = True
    lie_answer: str | None = None

    @property
    def is_control(self) -> bool:
        """A contradiction or neutral prompt: never in a deception probe's data."""
        return self.variant in CONTROL_VARIANTS


def load_scenarios(path: Path | str) -> dict[str, Scenario]:
    """All scenarios of a scenario file, by id, in file order. Malformed entries raise."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"scenario file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    version = data.get("version", 1)
    out: dict[str, Scenario] = {}
    for i, raw in enumerate(data.get("scenarios") or []):
        where = f"{path} scenario #{i + 1}"
        variant = raw.get("variant", "direct")
        if variant not in VARIANTS:
            raise ConfigError(f"{where}: variant={variant!r}; allowed: {list(VARIANTS)}")
        required = {"id", "kind", "prompt"} | (set() if variant == "neutral" else {"cues"})
        missing = required - set(raw)
        if missing:
            raise ConfigError(f"{where}: missing keys {sorted(missing)}")
        if raw["kind"] not in KINDS:
            raise ConfigError(f"{where}: kind={raw['kind']!r}; allowed: {list(KINDS)}")
        want = cue_labels(variant)
        cues = raw.get("cues") or {}
        if set(cues) != set(want) or not all(cues[lbl] for lbl in want):
            raise ConfigError(f"{where}: cues must give non-empty lists for {list(want)}")
        lie = raw.get("lie_answer")
        if lie is not None and lie not in ANSWER_WORDS:
            raise ConfigError(f"{where}: lie_answer={lie!r}; allowed: {list(ANSWER_WORDS)}")
        if raw["id"] in out:
            raise ConfigError(f"{where}: duplicate id {raw['id']!r}")
        out[raw["id"]] = Scenario(
            id=raw["id"],
            kind=raw["kind"],
            title=raw.get("title", raw["id"]),
            prompt=raw["prompt"].rstrip("\n"),
            cues={lbl: tuple(c.lower() for c in cues[lbl]) for lbl in want},
            family=raw.get("family", raw["id"]),
            variant=variant,
            study=bool(raw.get("study", version == 1)),
            lie_answer=lie,
        )
    if not out:
        raise ConfigError(f"{path}: no scenarios")
    return out


def scenarios_for(cfg: RunConfig) -> list[Scenario]:
    """The scenarios a run samples, in config order; unknown ids name the allowed ones."""
    pool = load_scenarios(cfg.scenario_path())
    if cfg.scenarios == "all":
        return list(pool.values())
    unknown = [s for s in cfg.scenarios if s not in pool]
    if unknown:
        raise ConfigError(f"scenarios: unknown id(s) {unknown}; allowed: {list(pool)}")
    return [pool[s] for s in cfg.scenarios]


def has_controls(cfg: RunConfig) -> bool:
    """Whether the run's scenario file has direct and role-swapped variants (notebook 11 runs)."""
    variants = {s.variant for s in load_scenarios(cfg.scenario_path()).values()}
    return {"direct", "swapped"} <= variants
