"""The run directory: the only channel between notebooks.

``data/runs/<run>/`` holds, stage by stage::

    config.yaml                 resolved config + library versions + git commit
    completions.jsonl           01 sampling     (id, scenario, sample, seed, prompt, completion, ...)
    labels.jsonl                02 judges       (id, judge, label, rationale, ...)
    activations/L{ll}.safetensors, index.json      03 capture
    saes/<sae_id>/{cfg.json, sae_weights.safetensors, metrics.json}   04 SAEs
    results/*.csv               05-07 probing, comparisons, summary
    notebooks/*.ipynb           papermill outputs
    cache/                      judge cache and other resumable state

Writes here are atomic (temp file + rename) or append-and-flush per batch, so a killed notebook
loses at most the batch in flight.

This module also holds what every stage needs to make its work reproducible and resumable:
stable seeds and fingerprints (:func:`stable_seed`, :func:`fingerprint`), and keyed JSON caches
(:func:`read_cached`, :func:`write_cached`) that a stage reuses only while its key is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from lib.config import REPO_ROOT, RunConfig, config_to_yaml, load_config

RUNS_ROOT = REPO_ROOT / "data" / "runs"
VERSIONED_PACKAGES = ("torch", "transformers", "sae-lens", "scikit-learn", "google-genai", "numpy")


class RunDirError(RuntimeError):
    """A run directory is missing a file a stage needs, or holds files from another run."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def for_config(cls, cfg: RunConfig, runs_root: Path | str | None = None) -> RunDir:
        return cls(Path(runs_root or os.environ.get("DECEPTION_SAES_RUNS", RUNS_ROOT)) / cfg.name)

    # ----- paths -------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def completions(self) -> Path:
        return self.root / "completions.jsonl"

    @property
    def labels(self) -> Path:
        return self.root / "labels.jsonl"

    @property
    def activations(self) -> Path:
        return self.root / "activations"

    def activation_file(self, layer: int) -> Path:
        return self.activations / f"L{layer:02d}.safetensors"

    @property
    def activation_index(self) -> Path:
        return self.activations / "index.json"

    @property
    def saes(self) -> Path:
        return self.root / "saes"

    def sae_dir(self, sae_id: str) -> Path:
        return self.saes / sae_id

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def result(self, name: str) -> Path:
        """``results/<name>`` (e.g. ``layer_profile.csv``)."""
        return self.results / name

    @property
    def figures(self) -> Path:
        """This run's figures (PNG and PDF); ``make publish`` copies them into the repository."""
        return self.root / "figures"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def probing_cache(self) -> Path:
        """Per-layer and per-SAE probe results of stages 05 and 06."""
        return self.cache / "probing"

    def judge_cache(self, judge: str) -> Path:
        """Every answer a paid judge gave, one JSON line each."""
        return self.cache / "judge" / f"{judge}.jsonl"

    def require(self, path: Path, stage: str) -> Path:
        """Return ``path`` or fail saying which notebook makes it."""
        if not path.exists():
            raise RunDirError(f"{path} is missing; run {stage} for run '{self.root.name}' first")
        return path


def shown(path: Path | str) -> str:
    """A path as a notebook should print it: relative to the repository when inside it, else
    relative to the run directories' root (``<runs>/...``); never a machine's absolute path."""
    path = Path(path).resolve()
    roots = (
        (REPO_ROOT.resolve(), ""),
        (Path(os.environ.get("DECEPTION_SAES_RUNS", RUNS_ROOT)).resolve(), "<runs>/"),
    )
    for root, prefix in roots:
        try:
            return prefix + str(path.relative_to(root))
        except ValueError:
            continue
    return path.name


def environment_versions() -> dict[str, str]:
    out = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def init_run(cfg: RunConfig, runs_root: Path | str | None = None) -> RunDir:
    """Create the run directory and write ``config.yaml``.

    An existing run with a different *experiment* (model, scenarios, seed, sampling) is refused:
    resuming into it would mix rows of two runs. Later-stage settings (SAE grid, probes) may change.
    """
    run = RunDir.for_config(cfg, runs_root)
    run.root.mkdir(parents=True, exist_ok=True)
    resolved = cfg.model_dump(mode="json")
    if run.config.exists():
        old = yaml.safe_load(run.config.read_text()) or {}
        for key in ("model", "scenarios", "scenario_file", "seed", "sampling"):
            if key in old and old[key] != resolved[key]:
                raise RunDirError(
                    f"{run.config}: run '{cfg.name}' was made with {key}={old[key]!r}, the config "
                    f"now says {resolved[key]!r}. Use another run name or delete {run.root}."
                )
    text = config_to_yaml(cfg)
    text += yaml.safe_dump(
        {"_provenance": {"versions": environment_versions(), "git_commit": git_commit()}}
    )
    atomic_write_text(run.config, text)
    return run


# ----- atomic file I/O -------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(
            f"{path} is not valid JSON ({e}); delete it and rerun its stage"
        ) from None


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file. A torn last line (a write killed mid-way) is ignored; others fail."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise RunDirError(f"{path}:{i + 1} is not valid JSON; the file is corrupt") from None
    return rows


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows and fsync. Rows are written whole; a previously torn tail is repaired first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            keep = raw[: raw.rfind(b"\n") + 1]
            atomic_write_bytes(path, keep)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def iter_batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def read_results_csv(run: RunDir, name: str, stage: str):
    """``results/<name>`` as a DataFrame (``note`` as text, never NaN); says which stage makes it."""
    import pandas as pd

    df = pd.read_csv(run.require(run.result(name), stage), dtype={"note": object})
    if "note" in df:
        df["note"] = df["note"].fillna("")
    return df


def read_label_rows(run: RunDir) -> dict[tuple[str, str], dict]:
    """``(completion id, judge) -> row`` of ``labels.jsonl``; a later row replaces an earlier one.

    ``labels.jsonl`` is append-only: a completion judged again (a failed verdict retried, a new
    prompt version) gets a new row, and the last row written for a pair is its current label.
    """
    out: dict[tuple[str, str], dict] = {}
    for r in read_jsonl(run.labels):
        out[(r["id"], r["judge"])] = r
    return out


# ----- hashes, seeds and fingerprints ---------------------------------------------------------------
def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(obj) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys; non-JSON values by ``str``)."""
    return sha256_text(json.dumps(obj, sort_keys=True, default=str))


def stable_seed(*parts) -> int:
    """A 31-bit seed that depends only on ``parts`` (ints and strings), never on the process."""
    ints = [int(sha256_text(str(p))[:8], 16) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0] & 0x7FFFFFFF)


def file_stamp(path: Path) -> list[int]:
    """Size and modification time of a file: a cheap key for "this input has not changed"."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


# ----- keyed caches -------------------------------------------------------------------------------
def read_cached(path: Path, key: str) -> dict | None:
    """The JSON object at ``path`` when it was written with ``key``; else None (also if unreadable)."""
    if not Path(path).exists():
        return None
    try:
        obj = read_json(path)
    except RunDirError:
        return None
    return obj if isinstance(obj, dict) and obj.get("key") == key else None


def write_cached(path: Path, key: str, payload: dict) -> None:
    write_json(path, {"key": key, **payload})


def jsonable_rows(rows: list[dict]) -> list[dict]:
    """Result rows with numpy scalars made plain and NaN/inf made ``null`` (strict JSON)."""

    def conv(v):
        if isinstance(v, (np.floating, float)):
            return None if not math.isfinite(float(v)) else float(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        return v

    return [{k: conv(v) for k, v in r.items()} for r in rows]


def open_run(
    config: str = "organism",
    run_name: str | None = None,
    overrides: dict | None = None,
    runs_root: Path | str | None = None,
) -> tuple[RunConfig, RunDir]:
    """What every notebook does first: load the config (with overrides) and open its run dir."""
    cfg = load_config(config, overrides, run_name=run_name)
    return cfg, init_run(cfg, runs_root)
