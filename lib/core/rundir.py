"""The run directory: the only channel between notebooks.

``data/runs/<run>/`` holds everything a run makes; :data:`LAYOUT` lists it file by file (the
path, the stage that writes it, what it holds), and ``docs/running.md`` renders that table.

Writes here are atomic (temp file + rename) or whole-line appends (:func:`append_jsonl`), so a
killed notebook loses at most the rows in flight. One process writes into a run at a time: every
writer holds the run's lock (:mod:`lib.core.runlock`; :func:`open_run` takes it, readers open with
``write=False``), and :func:`append_jsonl` refuses to append inside a run another process holds.
Only the grid, or the first writer of a new run, writes ``config.yaml``.

This module also holds what every stage needs to make its work reproducible and resumable:
stable seeds and fingerprints (:func:`stable_seed`, :func:`fingerprint`), and keyed JSON caches
(:func:`read_cached`, :func:`write_cached`) that a stage reuses only while its key is unchanged.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import platform
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from lib.core.config import REPO_ROOT, RunConfig, config_to_yaml, load_config
from lib.core.fileio import (
    RunDirError,
    atomic_write_text,
    read_json,
    read_jsonl,
    write_json,
)
from lib.core.runlock import acquire
from lib.core.runtime import cpu_has_fast_bf16

T = TypeVar("T")
RUNS_ROOT = REPO_ROOT / "data" / "runs"
VERSIONED_PACKAGES = ("torch", "transformers", "sae-lens", "scikit-learn", "google-genai", "numpy")


#: The run directory, file by file: ``(path, the stage that writes it, what it holds)``. The one
#: description of the layout: ``docs/running.md``'s table is rendered from it by ``make publish``
#: (:func:`render_layout`) and ``tests/unit/test_publish.py`` keeps the two equal.
LAYOUT: tuple[tuple[str, str, str], ...] = (
    (
        "`config.yaml`",
        "the grid (or the first notebook of a new run)",
        "the resolved config, library versions, git commit",
    ),
    (
        "`completions.jsonl`",
        "01",
        "`id`, `scenario`, `sample`, `seed`, `prompt`, `completion`, `n_prompt_tokens`, `n_completion_tokens`, `completion_token_ids`, `finished`",
    ),
    (
        "`labels.jsonl`",
        "02",
        "`id`, `judge`, `label` (`deceptive` / `honest` / `ambiguous`), `rationale`, `confidence`, `model`, `prompt_version`, `failed`; one row per completion and judge",
    ),
    (
        "`activations/L{layer:02d}.safetensors`",
        "03",
        "`last` [N, d], `mean` [N, d], `tokens` [T, d] (every response token), `token_owner` [T]",
    ),
    (
        "`activations/index.json`",
        "03",
        "completion ids in row order, model, dtype, hook names",
    ),
    (
        "`activations/input_embeddings.safetensors`",
        "03",
        "`mean` [N, d]: the mean of the model's input embeddings of each response (the `embed` wording baseline)",
    ),
    (
        "`activations/prompt_last.safetensors`",
        "03",
        "`L{layer}` [P, d]: the residual stream after each layer at every distinct prompt's last token; `prompt_of` [N], each completion's prompt (the last-prompt-token probe of 11)",
    ),
    (
        "`saes/<sae_id>/`",
        "04",
        "SAELens folder: `cfg.json`, `sae_weights.safetensors`, plus `metrics.json` and `history.json`; `sae_id` = `{model_tag}_{arch}_L{layer}_{condition}`, with `_s{i}` for seeds beyond the first",
    ),
    (
        "`results/layer_profile.csv`",
        "05",
        "long format: `layer`, `feature` (`last`, `mean`, `text`), `cv`, `subset`, `metric` (`bal_acc`, `auroc`, `recall_at_1fpr`, ...), `value`, `ci_low`, `ci_high`, `ci_method`, `p_value`, `realised_fpr`, `n_negatives`, ...",
    ),
    (
        "`results/layer_tests.csv`",
        "05",
        "per (pooling, cv, layer): the confidence set for the best layer (`p_best_set`, `below_peak`), how often each layer is best under resampling, the peak's accuracy on data not used to choose it (`peak_split_bal_acc`), layers above the wording baselines",
    ),
    (
        "`results/probe_controls.csv`",
        "05",
        "shuffled labels, scenario identity",
    ),
    (
        "`results/sae_probes.csv`",
        "05",
        "one row per SAE, seed and cv, with the SAE's input norm ratio and L0 on the probe's own inputs (`grid`, `refit_all`, `per_fold` sources)",
    ),
    (
        "`results/sae_verdicts.csv`, `results/sae_leakage.csv`",
        "05",
        "SAE against raw, and leakage, across seeds: paired test, Holm",
    ),
    (
        "`results/ste_comparison.csv`",
        "06",
        "one row per (layer, condition, cv, comparison)",
    ),
    (
        "`results/k_sweep.csv`",
        "06",
        "TopK SAEs at several k on one STE layer: L0 and balanced accuracy per (k, seed), for the comparison at matched sparsity",
    ),
    (
        "`results/summary.csv`",
        "07",
        "our numbers beside the study's",
    ),
    (
        "`results/latents/`, `results/k_sparse/`",
        "08",
        "per-latent statistics and k-sparse probes, one file per SAE (`lib.latents.separating.read_parts` joins them)",
    ),
    (
        "`features/<sae_id>/`",
        "08",
        "`report.json`, the dashboard `index.html` with its pages `latents/page-NN.html` (every latent that fires), `histograms.png`, `k_sparse.png`",
    ),
    (
        "`results/steering.csv`, `results/steering/`",
        "09",
        "dose-response per direction and judge, ablation",
    ),
    (
        "`results/wording_controls.csv`",
        "11",
        "runs of a version 2 scenario file: per layer (and the input embeddings) polarity transfer, same-word AUROC, the answer word, falsehood, the neutral-calibrated monitor, each with its Bonferroni-adjusted band, and the layer's verdict",
    ),
    (
        "`results/prompt_probe.csv`",
        "11",
        "per layer, the last-prompt-token probe: AUROC within a prompt (0.5 by construction), under stratified folds beside the scenario prior, on held-out families with its band",
    ),
    (
        "`results/sae_wording_controls.csv`",
        "11",
        "the same controls on each grid SAE's mean-pooled codes (first seed), with its verdict",
    ),
    (
        "`results/family_transfer.csv`",
        "11",
        "one probe per scenario family scored on every other family (AUROC matrix)",
    ),
    (
        "`results/rehearsal.csv`, `results/cost_model.md`",
        "`make rehearsal` (`python -m lib.pipeline.grid --costs rehearsal.csv`)",
        "each stage's wall time, peak memory, disk written and throughput; the projection of the real run",
    ),
    (
        "`figures/`",
        "02-10",
        "every figure of the run, PNG and PDF",
    ),
    (
        "`notebooks/`",
        "the grid",
        "executed notebooks and the grid's markers of finished cells",
    ),
    (
        "`cache/`",
        "02, 05, 09",
        "judge answers (one line each, as they arrive), probe intermediates, steering samples",
    ),
)


def render_layout() -> str:
    """:data:`LAYOUT` as the markdown table of ``docs/running.md``."""
    rows = ["| path | written by | contents |", "|---|---|---|"]
    rows += [f"| {path} | {writer} | {contents} |" for path, writer, contents in LAYOUT]
    return "\n".join(rows)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def for_config(cls, cfg: RunConfig, runs_root: Path | str | None = None) -> RunDir:
        root = runs_root or os.environ.get("DECEPTION_SAES_RUNS") or RUNS_ROOT
        return cls(Path(root) / cfg.name)

    # ----- paths -------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def read_config(self) -> RunConfig:
        """The config this run was made with (its ``config.yaml``, provenance left out)."""
        data = yaml.safe_load(self.config.read_text()) or {}
        data.pop("_provenance", None)
        return RunConfig.model_validate(data)

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
    def input_embeddings(self) -> Path:
        """Per completion the mean of the model's input embeddings of its response tokens."""
        return self.activations / "input_embeddings.safetensors"

    @property
    def prompt_last(self) -> Path:
        """Per prompt the residual stream at its last token, every captured layer, and each
        completion's prompt (notebook 03; the last-prompt-token probe of notebook 11)."""
        return self.activations / "prompt_last.safetensors"

    @property
    def saes(self) -> Path:
        return self.root / "saes"

    def sae_dir(self, sae_id: str) -> Path:
        return self.saes / sae_id

    @property
    def features(self) -> Path:
        return self.root / "features"

    def feature_dir(self, sae_id: str) -> Path:
        """``features/<sae_id>/``: an analysed SAE's report, dashboard and figures (stage 08)."""
        return self.features / sae_id

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


def host_facts() -> dict[str, Any]:
    """The machine a run is made on: what moves its speed and its floating point."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "fast_bf16": cpu_has_fast_bf16()}


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def init_run(
    cfg: RunConfig, runs_root: Path | str | None = None, write_config: bool = False
) -> RunDir:
    """Open the run directory for writing: take its lock, check and maybe write ``config.yaml``.

    Fails at once (:class:`lib.core.runlock.RunLockedError`) when another process writes the run. An
    existing run with a different *experiment* (model, scenarios, seed, sampling) is refused:
    resuming into it would mix rows of two runs. ``config.yaml`` is written when the run is new
    or ``write_config`` (the grid, which owns the run's settings); a notebook run by hand with
    other later-stage settings leaves it as it is and says which settings differ.
    """
    run = RunDir.for_config(cfg, runs_root)
    acquire(run.root)
    resolved = cfg.model_dump(mode="json")
    if run.config.exists():
        old = yaml.safe_load(run.config.read_text()) or {}
        for key in ("model", "scenarios", "scenario_file", "seed", "sampling"):
            if key in old and _with_defaults(key, old[key]) != resolved[key]:
                raise RunDirError(
                    f"{run.config}: run '{cfg.name}' was made with {key}={old[key]!r}, the config "
                    f"now says {resolved[key]!r}. Use another run name or delete {run.root}."
                )
        if not write_config:
            filled = {
                k: _with_defaults(k, v) if k in RunConfig.model_fields else v
                for k, v in old.items()
            }
            diff = config_differences(filled, resolved)
            if diff:
                print(
                    f"note: {run.config.name} of run '{cfg.name}' is kept as written; this "
                    f"process runs with other settings: {'; '.join(diff[:6])}"
                )
            return run
    text = config_to_yaml(cfg)
    text += yaml.safe_dump(
        {
            "_provenance": {
                "versions": environment_versions(),
                "git_commit": git_commit(),
                "host": host_facts(),
            }
        }
    )
    atomic_write_text(run.config, text)
    return run


def _with_defaults(key: str, value: Any) -> Any:
    """A section of an older run's ``config.yaml`` with the fields added to the config since
    filled in with their defaults (a run made before a field existed was made with its default)."""
    field = RunConfig.model_fields[key]
    if not isinstance(value, dict) or field.default_factory is None:
        return value
    default = field.default_factory()  # type: ignore[call-arg]  # pydantic: no-argument factories
    return {**default.model_dump(mode="json"), **value}


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (provenance ignored)."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k.startswith("_"):
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def guard_sae_write(run: RunDir, cfg: RunConfig, sae_id: str) -> None:
    """Refuse to write ``saes/<sae_id>`` with SAE settings other than the run's ``config.yaml``.

    The SAEs in ``saes/`` are the grid's: notebook 04 run by hand with other ``sae.*``, ``seed``
    or ``judge.primary`` would overwrite one with an SAE the rest of the run does not describe.
    """
    if not run.config.exists():
        return
    old = yaml.safe_load(run.config.read_text()) or {}
    new = cfg.model_dump(mode="json")
    sched = ("fan_out", "n_jobs")  # how the grid is scheduled does not change an SAE

    def pick(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "sae": {k: v for k, v in (d.get("sae") or {}).items() if k not in sched},
            "seed": d.get("seed"),
            "judge": {"primary": (d.get("judge") or {}).get("primary")},
        }

    diff = config_differences(pick(old), pick(new))
    if diff:
        raise RunDirError(
            f"{run.sae_dir(sae_id)}: this notebook's settings differ from the run's config.yaml "
            f"({'; '.join(diff[:4])}); writing would replace the grid's SAE. Use another run_name "
            "for an experiment, or change the config and rerun the grid (python -m lib.pipeline.grid)."
        )


def iter_batches(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def read_results_csv(run: RunDir, name: str, stage: str) -> Any:
    """``results/<name>`` as a DataFrame (``note`` as text, never NaN); says which stage makes it."""
    import pandas as pd  # type: ignore[import-untyped]  # no stubs pinned

    df = pd.read_csv(run.require(run.result(name), stage), dtype={"note": object})
    if "note" in df:
        df["note"] = df["note"].fillna("")
    return df


def read_label_rows(run: RunDir) -> dict[tuple[str, str], dict[str, Any]]:
    """``(completion id, judge) -> row`` of ``labels.jsonl``; a later row replaces an earlier one.

    ``labels.jsonl`` is append-only: a completion judged again (a failed verdict retried, a new
    prompt version) gets a new row, and the last row written for a pair is its current label.
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in read_jsonl(run.labels):
        out[(r["id"], r["judge"])] = r
    return out


# ----- hashes, seeds and fingerprints ---------------------------------------------------------------
def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys; non-JSON values by ``str``)."""
    return sha256_text(json.dumps(obj, sort_keys=True, default=str))


def stable_seed(*parts: object) -> int:
    """A 31-bit seed that depends only on ``parts`` (ints and strings), never on the process."""
    ints = [int(sha256_text(str(p))[:8], 16) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0] & 0x7FFFFFFF)


def file_stamp(path: Path) -> list[int]:
    """Size and modification time of a file: a cheap key for "this input has not changed"."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


# ----- keyed caches -------------------------------------------------------------------------------
def read_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The JSON object at ``path`` when it was written with ``key``; else None (also if unreadable)."""
    if not Path(path).exists():
        return None
    try:
        obj = read_json(path)
    except RunDirError:
        return None
    return obj if isinstance(obj, dict) and obj.get("key") == key else None


def write_cached(path: Path, key: str, payload: dict[str, Any]) -> None:
    write_json(path, {"key": key, **payload})


def jsonable_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Result rows with numpy scalars made plain and NaN/inf made ``null`` (strict JSON)."""

    def conv(v: Any) -> Any:
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
    overrides: dict[str, Any] | None = None,
    runs_root: Path | str | None = None,
    *,
    write: bool = True,
    check: Callable[[RunDir], None] | None = None,
) -> tuple[RunConfig, RunDir]:
    """What every notebook does first: load the config (with overrides) and open its run dir.

    ``check`` (a stage's own input check, e.g. :func:`lib.capture.activations.check_capture_inputs`)
    sees the run before anything is written or locked: a stage run on a run without its inputs
    fails there with one line, and leaves no ``config.yaml`` behind.

    ``write=True`` (a stage) takes the run's lock, failing at once when another process writes
    it, and writes ``config.yaml`` only for a new run. ``write=False`` (a reader: a figure
    script, a notebook opened to look) takes no lock and writes nothing; the run must exist.
    Under papermill, a parameter the notebook's parameters cell does not declare is an error
    here. A warning says when ``lib`` comes from another checkout than the notebook's.
    """
    check_notebook_parameters()
    _warn_other_checkout()
    cfg = load_config(config, overrides, run_name=run_name)
    if check is not None:
        check(RunDir.for_config(cfg, runs_root))
    if write:
        return cfg, init_run(cfg, runs_root)
    run = RunDir.for_config(cfg, runs_root)
    if not run.root.is_dir():
        raise RunDirError(f"run '{cfg.name}' does not exist ({run.root}); run its stages first")
    return cfg, run


def _assigned_names(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    ]


def check_notebook_parameters(history: list[str] | None = None) -> None:
    """Fail when papermill passed a parameter the notebook's parameters cell does not declare.

    Papermill runs the parameters cell, then its injected cell (first line ``# Parameters``); the
    kernel's input history ``In`` holds both. Outside papermill there is nothing to check.
    """
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        history = list(shell.user_ns.get("In", [])) if shell is not None else []
    for i in range(len(history) - 1, 0, -1):
        if history[i].startswith("# Parameters\n"):
            declared = set(_assigned_names(history[i - 1]))
            unknown = sorted(set(_assigned_names(history[i])) - declared)
            if declared and unknown:
                raise ValueError(
                    f"unknown notebook parameter(s) {unknown}; this notebook declares "
                    f"{sorted(declared)}"
                )
            return


def _warn_other_checkout() -> None:
    here = Path.cwd().resolve()
    for repo in (here, *here.parents):
        if (repo / "lib" / "__init__.py").exists() and (repo / "notebooks").is_dir():
            if repo != REPO_ROOT.resolve():
                warnings.warn(
                    f"lib is imported from {REPO_ROOT}, but this notebook runs in the checkout "
                    f"{repo}: the .venv's editable install points at the other clone. Run "
                    f"`pip install -e {repo}` or set PYTHONPATH={repo}.",
                    stacklevel=3,
                )
            return
