"""Scenario prompts of the same-prompt sampling design (``data/scenarios.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from lib.config import ConfigError, RunConfig

LABELS = ("deceptive", "honest")
KINDS = ("incentive", "roleplay")


@dataclass(frozen=True)
class Scenario:
    id: str
    kind: str
    title: str
    prompt: str
    cues: dict[str, tuple[str, ...]]  # label -> cue phrases (lower case)


def load_scenarios(path: Path | str) -> dict[str, Scenario]:
    """All scenarios of a scenario file, by id, in file order. Malformed entries raise."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"scenario file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Scenario] = {}
    for i, raw in enumerate(data.get("scenarios") or []):
        where = f"{path} scenario #{i + 1}"
        missing = {"id", "kind", "prompt", "cues"} - set(raw)
        if missing:
            raise ConfigError(f"{where}: missing keys {sorted(missing)}")
        if raw["kind"] not in KINDS:
            raise ConfigError(f"{where}: kind={raw['kind']!r}; allowed: {list(KINDS)}")
        cues = raw["cues"] or {}
        if set(cues) != set(LABELS) or not all(cues[lbl] for lbl in LABELS):
            raise ConfigError(f"{where}: cues must give non-empty lists for {list(LABELS)}")
        if raw["id"] in out:
            raise ConfigError(f"{where}: duplicate id {raw['id']!r}")
        out[raw["id"]] = Scenario(
            id=raw["id"],
            kind=raw["kind"],
            title=raw.get("title", raw["id"]),
            prompt=raw["prompt"].rstrip("\n"),
            cues={lbl: tuple(c.lower() for c in cues[lbl]) for lbl in LABELS},
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
