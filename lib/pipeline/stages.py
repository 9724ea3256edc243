"""What each stage of the book produces, and whether a run holds it.

A stage is finished when its outputs are valid, not when its notebook ran. :data:`STAGES` declares,
per notebook, what it produces; :class:`Inspector` checks those outputs in a run directory
against the config (files exist and parse, ids and row counts match, SAEs are current) and says
why when they are not. The grid (:mod:`lib.pipeline.grid`) skips a notebook only when its outputs pass,
re-runs it otherwise (each stage resumes inside itself), and reports the same checks under
``--dry-run``.

=======================  ==================================================================
notebook                 produces
=======================  ==================================================================
01_sampling              ``completions.jsonl`` with exactly the planned completion ids
02_classification        a current label for every completion from every configured judge;
                         no more failed verdicts of the primary judge than
                         ``judge.max_failed_fraction`` (any failed verdict is still to do)
03_activation_capture    ``activations/index.json`` over the run's completions, every layer
                         file sound with the right row counts, and ``prompt_last.safetensors``
04_sae_training          ``saes/<sae_id>/`` of its cell (or the whole grid), every seed, complete
                         and current (``training_fingerprint``)
05_layer_profile_probing ``results/layer_profile.csv``, ``probe_controls.csv``, ``layer_tests.csv``,
                         ``sae_probes.csv``, ``sae_verdicts.csv``
06_ste_comparison        ``results/ste_comparison.csv``
07_summary               ``results/summary.csv``
08_features              ``features/<sae_id>/report.json``, ``results/latents/<sae_id>.csv`` and
                         ``results/k_sparse/<sae_id>.csv`` of its SAE (or every analysed SAE)
09_steering              ``results/steering.csv``
10_cross_model           ``figures/layer_profiles_by_depth.png`` of its first run
11_wording_controls      ``results/wording_controls.csv``, ``prompt_probe.csv`` (runs of a
                         version 2 scenario file)
=======================  ==================================================================

Result CSVs are checked as files only (exist, parse, non-empty header): their columns belong to
the stages that write them.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from lib.core.config import RunConfig
from lib.core.fileio import (
    RunDirError,
    read_json,
    read_jsonl,
    safetensors_problem,
    safetensors_shapes,
)
from lib.core.rundir import RunDir, file_stamp, fingerprint, read_label_rows
from lib.core.scenarios import scenarios_for
from lib.judging.gemini import PROMPT_VERSION
from lib.judging.judges import FIRST_WORD_VERSION, KEYWORD_VERSION


@dataclass(frozen=True)
class Check:
    """``valid``: later stages can use the outputs. ``complete``: nothing is left to do."""

    valid: bool
    complete: bool
    why: str = ""


OK = Check(True, True)
#: a cell's papermill parameters (layer, arch, condition, all_cells, ...)
Params = dict[str, Any]
R = TypeVar("R")


def invalid(why: str) -> Check:
    return Check(False, False, why)


@dataclass(frozen=True)
class Stage:
    """A notebook's promise, declared once: ``check`` its outputs; ``outputs`` are the files a
    rerun may change (their digest decides whether later stages must run again); ``needs`` the
    notebooks whose outputs it reads (the grid's schedule, :data:`lib.pipeline.grid_plan.NEEDS`);
    ``unit`` what its throughput counts (:mod:`lib.pipeline.stage_costs`)."""

    produces: str
    check: Callable[[Inspector, Params], Check]
    outputs: Callable[[Inspector, Params], list[Path]]
    digest: Callable[[Inspector, Params], str] | None = None
    needs: tuple[str, ...] = ()
    unit: str = ""


class Inspector:
    """Checks one run's outputs against one config; memoises what several checks read."""

    def __init__(self, run: RunDir, cfg: RunConfig, stages: dict[str, Stage] | None = None):
        self.run, self.cfg = run, cfg
        self.stages = STAGES if stages is None else stages
        self._memo: dict[str, tuple[Any, Any]] = {}

    def _cached(self, name: str, paths: list[Path], fn: Callable[[], R]) -> R:
        stamp = tuple(tuple(file_stamp(p)) if p.exists() else None for p in paths)
        hit = self._memo.get(name)
        if hit is None or hit[0] != stamp:
            hit = (stamp, fn())
            self._memo[name] = hit
        return cast(R, hit[1])

    def check(self, notebook: str, params: Params | None = None) -> Check:
        """The state of a notebook's outputs (a notebook the table does not know always passes)."""
        stage = self.stages.get(notebook)
        if stage is None:
            return OK
        try:
            return stage.check(self, params or {})
        except RunDirError as e:
            return invalid(str(e))

    def digest(self, notebook: str, params: Params | None = None) -> str:
        """A digest of a notebook's outputs: a rerun that changes it invalidates later stages."""
        stage = self.stages.get(notebook)
        if stage is None:
            return ""
        try:
            if stage.digest is not None:
                return stage.digest(self, params or {})
            return _files_digest(stage.outputs(self, params or {}))
        except (RunDirError, OSError, ValueError):
            return "unreadable"

    # ----- shared reads ---------------------------------------------------------------------------
    def completion_ids(self) -> list[str]:
        path = self.run.completions
        return self._cached("ids", [path], lambda: [r["id"] for r in read_jsonl(path)])

    def label_rows(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self._cached("labels", [self.run.labels], lambda: read_label_rows(self.run))

    def sae_fingerprint(self) -> str:
        def compute() -> str:
            from lib.capture.labelled import labelled_rows  # lazy: torch; only SAE checks need it
            from lib.sae.train_grid import training_fingerprint  # lazy: torch, as above

            return training_fingerprint(self.cfg, labelled_rows(self.run, self.cfg), self.run)

        paths = [self.run.labels, self.run.activation_index, self.run.completions]
        return self._cached("sae_fp", paths, compute)


def _files_digest(paths: list[Path]) -> str:
    """Content hash of small files; size and mtime of large ones (activations, SAE weights)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode())
        if not p.exists():
            h.update(b"absent")
        elif p.stat().st_size > 16 << 20 or p.suffix == ".safetensors":
            h.update(str(file_stamp(p)).encode())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


# ----- 01 ---------------------------------------------------------------------------------------
def planned_ids(cfg: RunConfig) -> list[str]:
    from lib.capture.sampling import (
        completion_id,  # lazy: torch; the id scheme lives with the sampler
    )

    n = cfg.sampling.samples_per_scenario
    return [completion_id(s.id, i) for s in scenarios_for(cfg) for i in range(n)]


def _check_sampling(ins: Inspector, params: Params) -> Check:
    if not ins.run.completions.exists():
        return invalid("completions.jsonl is missing")
    ids = ins.completion_ids()
    planned = planned_ids(ins.cfg)
    if len(ids) != len(set(ids)):
        return invalid(f"completions.jsonl repeats {len(ids) - len(set(ids))} ids (two writers?)")
    extra = sorted(set(ids) - set(planned))
    if extra:
        return invalid(f"completions.jsonl holds {len(extra)} ids the config does not plan")
    missing = len(set(planned) - set(ids))
    if missing:
        return invalid(f"{missing} of {len(planned)} planned completions are missing")
    return OK


# ----- 02 ---------------------------------------------------------------------------------------
def judge_version(cfg: RunConfig, judge: str) -> tuple[str | None, str]:
    """``(model, prompt_version)`` a judge's current labels carry (as :func:`label_run` writes)."""
    if judge == "keyword":
        return None, f"{KEYWORD_VERSION}-w{cfg.judge.keyword_window}"
    if judge == "first_word":
        return None, FIRST_WORD_VERSION
    return cfg.judge.gemini_model, PROMPT_VERSION


def _check_labels(ins: Inspector, params: Params) -> Check:
    if not ins.run.labels.exists():
        return invalid("labels.jsonl is missing")
    rows, ids = ins.label_rows(), ins.completion_ids()
    jc = ins.cfg.judge
    pending = []
    for judge in jc.judges:
        model, version = judge_version(ins.cfg, judge)
        current = [
            r
            for cid in ids
            if (r := rows.get((cid, judge)))
            and r.get("model") == model
            and r.get("prompt_version") == version
        ]
        if len(current) < len(ids):
            return invalid(
                f"{len(ids) - len(current)} of {len(ids)} completions lack a {judge} label"
            )
        failed = sum(bool(r.get("failed")) for r in current)
        if judge == jc.primary and failed > jc.max_failed_fraction * len(ids):
            return invalid(
                f"{failed} of {len(ids)} verdicts of the primary judge {judge} failed (allowed: "
                f"judge.max_failed_fraction = {jc.max_failed_fraction:g})"
            )
        if failed:
            pending.append(f"{failed} failed {judge} verdicts to judge again")
    return Check(True, not pending, "; ".join(pending))


def _labels_digest(ins: Inspector, params: Params) -> str:
    """Only the labels matter downstream: a failed verdict that fails again changes nothing."""
    return fingerprint(sorted((k[0], k[1], r["label"]) for k, r in ins.label_rows().items()))


# ----- 03 ---------------------------------------------------------------------------------------
def _check_activations(ins: Inspector, params: Params) -> Check:
    run = ins.run
    if not run.activation_index.exists():
        return invalid("activations/index.json is missing")
    if (run.activations / ".progress.json").exists():
        return invalid("the capture did not finish (activations/.progress.json is present)")
    index = read_json(run.activation_index)
    if index.get("ids") != ins.completion_ids():
        return invalid("activations/index.json lists other completions than completions.jsonl")
    want = ins.cfg.capture_layers(int(index.get("n_layers", 0)))
    if index.get("layers") != want:
        return invalid(f"captured layers {index.get('layers')}, the config asks for {want}")
    n, t = len(index["ids"]), index.get("n_tokens")
    for layer in index["layers"]:
        path = run.activation_file(layer)
        problem = safetensors_problem(path)
        if problem:
            return invalid(f"activations/{problem}")
        shapes = safetensors_shapes(path)
        rows: dict[str, int | None] = {
            k: (shapes[k][0] if shapes.get(k) else None) for k in ("last", "mean", "tokens")
        }
        if rows != {"last": n, "mean": n, "tokens": t}:
            return invalid(f"activations/{path.name} has rows {rows}, the index says {n} and {t}")
    problem = safetensors_problem(run.prompt_last)
    if problem:
        return invalid(f"activations/{problem}")
    shapes = safetensors_shapes(run.prompt_last)
    if shapes.get("prompt_of", [-1])[:1] != [n]:
        return invalid(f"activations/{run.prompt_last.name} does not cover the {n} completions")
    missing = [layer for layer in index["layers"] if f"L{layer}" not in shapes]
    if missing:
        return invalid(f"activations/{run.prompt_last.name} lacks layers {missing}")
    return OK


def _activation_outputs(ins: Inspector, params: Params) -> list[Path]:
    run = ins.run
    files = [run.activation_index, run.prompt_last]
    if run.activation_index.exists():
        files += [run.activation_file(i) for i in read_json(run.activation_index).get("layers", [])]
    return files


# ----- 04 ---------------------------------------------------------------------------------------
def _sae_files() -> tuple[str, str, str]:
    from lib.sae.model import (  # lazy: imports torch
        CFG_FILENAME,
        METRICS_FILENAME,
        WEIGHTS_FILENAME,
    )

    return CFG_FILENAME, WEIGHTS_FILENAME, METRICS_FILENAME


def _sae_dirs(ins: Inspector, params: Params) -> list[Path]:
    """Every SAE folder a notebook-04 cell promises: its cell (or the whole grid, ``all_cells``),
    every seed."""
    cfg = ins.cfg
    cells = (
        cfg.sae_grid()
        if params.get("all_cells")
        else [(params["layer"], params["arch"], params["condition"])]
    )
    return [ins.run.sae_dir(cfg.sae_id(*c, i)) for c in cells for i in range(cfg.sae.seeds)]


def _check_sae(ins: Inspector, params: Params) -> Check:
    files = _sae_files()  # config, weights, metrics (written last)
    for path in _sae_dirs(ins, params):
        name = f"saes/{path.name}"
        absent = [f for f in files if not (path / f).exists()]
        if absent:
            return invalid(f"{name} lacks {', '.join(absent)}")
        problem = safetensors_problem(path / files[1])
        if problem:
            return invalid(f"{name}/{problem}")
        got = read_json(path / files[2]).get("training_fingerprint")
        if got != ins.sae_fingerprint():
            return invalid(f"{name} was trained with other settings, labels or activations")
    return OK


def _sae_outputs(ins: Inspector, params: Params) -> list[Path]:
    _, weights, metrics = _sae_files()
    return [p / f for p in _sae_dirs(ins, params) for f in (metrics, weights)]


# ----- 08 -----------------------------------------------------------------------------------------
def _feature_ids(ins: Inspector, params: Params) -> list[str]:
    if params.get("all_saes"):
        return ins.cfg.analysed_saes()
    return [ins.cfg.sae_id(params["layer"], params["arch"], params["condition"])]


def _feature_files(ins: Inspector, sae_id: str) -> list[Path]:
    run = ins.run
    return [
        run.feature_dir(sae_id) / "report.json",
        run.results / "latents" / f"{sae_id}.csv",
        run.results / "k_sparse" / f"{sae_id}.csv",
    ]


def _check_features(ins: Inspector, params: Params) -> Check:
    for sae_id in _feature_ids(ins, params):
        report, *tables = _feature_files(ins, sae_id)
        if not report.exists():
            return invalid(f"features/{sae_id}/report.json is missing")
        for path in tables:
            problem = csv_problem(path)
            if problem:
                return invalid(problem.replace("results/", f"results/{path.parent.name}/"))
    return OK


# ----- 05-07 ------------------------------------------------------------------------------------
def csv_problem(path: Path) -> str | None:
    """Why a result CSV is unusable (missing, unparseable, no header), or None."""
    if not path.exists():
        return f"results/{path.name} is missing"
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        return f"results/{path.name} does not parse ({type(e).__name__})"
    if not rows or not any(cell.strip() for cell in rows[0]):
        return f"results/{path.name} has no header"
    return None


def _results(*names: str, needs: tuple[str, ...] = (), unit: str = "") -> Stage:
    def check(ins: Inspector, params: Params) -> Check:
        for name in names:
            problem = csv_problem(ins.run.result(name))
            if problem:
                return invalid(problem)
        return OK

    return Stage(
        ", ".join(f"results/{n}" for n in names),
        check,
        lambda ins, params: [ins.run.result(n) for n in names],
        needs=needs,
        unit=unit,
    )


STAGES: dict[str, Stage] = {
    "01_sampling": Stage(
        "completions.jsonl with the planned ids",
        _check_sampling,
        lambda ins, params: [ins.run.completions],
        unit="completion tokens",
    ),
    "02_classification": Stage(
        "a label per completion and judge; primary judge's failed verdicts within the limit",
        _check_labels,
        lambda ins, params: [ins.run.labels],
        _labels_digest,
        needs=("01_sampling",),
        unit="verdicts",
    ),
    "03_activation_capture": Stage(
        "activations/index.json and every layer file with the right rows",
        _check_activations,
        _activation_outputs,
        needs=("02_classification",),
        unit="tokens captured",
    ),
    "04_sae_training": Stage(
        "saes/<sae_id>/ complete and current",
        _check_sae,
        _sae_outputs,
        needs=("03_activation_capture",),
        unit="SAE steps",
    ),
    "05_layer_profile_probing": _results(
        "layer_profile.csv",
        "probe_controls.csv",
        "layer_tests.csv",
        "sae_probes.csv",
        "sae_verdicts.csv",
        needs=("04_sae_training",),
        unit="probes",
    ),
    "08_features": Stage(
        "features/<sae_id>/report.json, results/latents/ and k_sparse/<sae_id>.csv",
        _check_features,
        lambda ins, params: [p for i in _feature_ids(ins, params) for p in _feature_files(ins, i)],
        needs=("04_sae_training",),
        unit="SAEs analysed",
    ),
    "06_ste_comparison": _results(
        "ste_comparison.csv", needs=("05_layer_profile_probing",), unit="comparisons"
    ),
    "09_steering": _results(
        "steering.csv",
        needs=("08_features",),
        unit="completions sampled",
    ),
    "07_summary": _results(
        "summary.csv", needs=("05_layer_profile_probing", "06_ste_comparison"), unit="claims"
    ),
    "10_cross_model": Stage(
        "figures/layer_profiles_by_depth.png of the first run",
        lambda ins, params: (
            OK
            if (ins.run.figures / "layer_profiles_by_depth.png").exists()
            else invalid("figures/layer_profiles_by_depth.png is missing")
        ),
        lambda ins, params: [ins.run.figures / "layer_profiles_by_depth.png"],
        needs=("05_layer_profile_probing",),
        unit="runs drawn",
    ),
    "11_wording_controls": _results(
        "wording_controls.csv",
        "prompt_probe.csv",
        needs=("03_activation_capture", "04_sae_training"),  # 04: the SAE controls
        unit="layers controlled",
    ),
}
