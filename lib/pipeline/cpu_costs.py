"""The cost of a run on this CPU, projected from a measured run of the same model.

A run made with ``python -m lib.pipeline.grid --config X --costs costs.csv`` records each stage's
wall time (:mod:`lib.pipeline.stage_costs`). :func:`project` scales every stage to a *target*
config by its work, counted the same way in both runs (:func:`stage_work`):

=======================  ===============================================================
stage                    work
=======================  ===============================================================
01 sampling              tokens through the model: completion tokens + prompt tokens prefilled
02 classification        verdicts: completions x judges
03 capture               tokens through the model: completion tokens + prompt tokens prefilled
04 SAE training          SAE steps' FLOPs (12 x batch x d x d_sae each), at the measured run's
                         seconds per FLOP of each architecture; plus a per-SAE share (loading,
                         CE metrics, export) times the number of SAEs
05 probing               probes: raw/text probes + SAE probes, each in both CV modes (at these
                         sizes a probe's fixed cost, not its width or n, dominates)
06 STE comparison        its TopK k sweep's SAE steps' FLOPs (as many k values as measured)
08 features              analysed SAEs
09 steering              steered completions x new tokens
11 wording controls      (layers + embeddings) x decisive completions
07, 10                   none: the measured wall time as it is
=======================  ===============================================================

A stage costs ``F + (measured - F) x target work / measured work``, where ``F`` is a notebook's
fixed cost (kernel start, imports: the lightest of 02, 07, 10 in the measured run). The target's
completion tokens use the measured run's share of ``max_new_tokens`` used, its decisive
completions the measured share of decisive ones (``decisive=`` overrides), its prompt lengths
the model's tokenizer (else the measured mean). A stage the measured run did not run, or whose
units it did not record, is reported and not projected. :func:`check` sets a projection beside a
measured run of the target; ``make publish`` renders the committed checks
(``tests/benchmarks/results/cpu_costs.csv``) into ``docs/costs.md``
(:mod:`lib.report.cpu_costs_text`)::

    python -m lib.pipeline.cpu_costs data/runs/smollm2-smoke/results/costs.csv \\
        --config configs/smollm2-135m-instruct.yaml [--actual <full run>/results/costs.csv]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lib.core.config import RunConfig, load_config
from lib.core.fileio import read_json, read_jsonl
from lib.core.rundir import RunDir, read_label_rows
from lib.core.scenarios import has_controls, scenarios_for
from lib.pipeline.process_costs import read_rows
from lib.pipeline.stage_costs import _prompt_tokens
from lib.report.cpu_costs_text import CHECK_RESULTS, markdown

REQUIRED = ("stage", "wall_s", "units")
#: raw-activation text baselines of notebook 05 (TF-IDF, first tokens, input embeddings)
N_BASELINES = 3


class CostsError(ValueError):
    """A costs CSV or run that cannot be projected from (one line says why)."""


@dataclass(frozen=True)
class SaeWork:
    arch: str
    steps: int
    batch: int
    d_in: int
    d_sae: int

    @property
    def flops(self) -> float:
        return 12.0 * self.steps * self.batch * self.d_in * self.d_sae


@dataclass(frozen=True)
class RunFacts:
    """What a run's stages work on: measured (:func:`measured_facts`) or expected
    (:func:`target_facts`). ``train_seconds``: seconds of optimisation per architecture (measured
    runs only)."""

    n: int
    n_decisive: float
    completion_tokens: float
    prefill_sampling: float
    prefill_capture: float
    d: int
    n_layers: int  # layers of the model
    n_captured: int
    saes: tuple[SaeWork, ...] = ()
    train_seconds: dict = field(default_factory=dict)
    prompt_tokens: dict = field(default_factory=dict)  # scenario id -> prompt tokens
    n_ks: int = 0  # k values of notebook 06's TopK k sweep


@dataclass(frozen=True)
class Work:
    units: float | None
    unit: str
    detail: str = ""


def notebook_of(stage: str) -> str:
    """``04_sae_training__all`` -> ``04_sae_training``."""
    return str(stage).split("__")[0]


def read_costs(path: Path | str) -> dict[str, dict]:
    """The finished stages of a costs CSV by notebook (cells of one notebook summed); raises
    :class:`CostsError` with one line when it is missing, empty or not a costs CSV."""
    path = Path(path)
    if not path.is_file():
        raise CostsError(
            f"{path}: no such costs CSV (make one with python -m lib.pipeline.grid --costs costs.csv)"
        )
    try:
        rows = read_rows(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CostsError(f"{path}: not readable as CSV ({e})") from None
    missing = [c for c in REQUIRED if rows and c not in rows[0]]
    if not rows or missing:
        raise CostsError(
            f"{path}: not a costs CSV ({'no rows' if not rows else 'no column ' + ', '.join(missing)})"
        )
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("status", "done") != "done":
            continue
        try:
            wall = float(r["wall_s"])
        except (TypeError, ValueError):
            raise CostsError(
                f"{path}: stage {r['stage']}: wall_s {r['wall_s']!r} is not a number"
            ) from None
        units = r.get("units")
        nb = notebook_of(r["stage"])
        got = out.setdefault(nb, {"wall_s": 0.0, "units_known": True, "load": [], "load_mean": []})
        got["wall_s"] += wall
        got["units_known"] &= units not in (None, "")
        got["load"].append(r.get("load_avg") or "")
        try:
            got["load_mean"].append(float(r.get("load_mean") or ""))
        except ValueError:
            pass
    if not out:
        raise CostsError(f"{path}: no finished stage (status done)")
    return out


def _run_config(run: RunDir) -> RunConfig:
    if not run.config.is_file():
        raise CostsError(
            f"{run.config}: missing; the costs CSV must sit in <run>/results/ of a grid run"
        )
    return run.read_config()


def measured_facts(run: RunDir, cfg: RunConfig) -> RunFacts:
    """The work a finished run did, read from its completions, labels, activation index and SAE
    metrics."""
    for p in (run.completions, run.activation_index):
        if not p.is_file():
            raise CostsError(f"{p}: missing; the measured run must have finished 01-03")
    rows = read_jsonl(run.completions)
    labels = read_label_rows(run)
    decisive = sum(
        labels.get((r["id"], cfg.judge.primary), {}).get("label") in ("deceptive", "honest")
        for r in rows
    )
    index = read_json(run.activation_index)
    saes, train = [], {}
    for layer, arch, cond in cfg.sae_grid():
        for i in range(cfg.sae.seeds):
            path = run.sae_dir(cfg.sae_id(layer, arch, cond, i)) / "metrics.json"
            if not path.is_file():
                continue
            m = read_json(path)
            saes.append(
                SaeWork(
                    arch,
                    int(m["train_steps"]),
                    int(m["batch_size"]),
                    int(m["d_in"]),
                    int(m["d_sae"]),
                )
            )
            train[arch] = train.get(arch, 0.0) + float(m["train_seconds"])
    prompts = {r["scenario"]: r["n_prompt_tokens"] for r in rows}
    sweep = run.result("k_sweep.csv")
    n_ks = pd.read_csv(sweep)["k"].nunique() if sweep.is_file() else 0
    return RunFacts(
        n=len(rows),
        n_decisive=decisive,
        completion_tokens=sum(r["n_completion_tokens"] for r in rows),
        prefill_sampling=_prompt_tokens(rows, cfg, cfg.sampling.batch_size),
        prefill_capture=_prompt_tokens(rows, cfg, cfg.capture.batch_size),
        d=int(index["d_model"]),
        n_layers=int(index["n_layers"]),
        n_captured=len(index["layers"])
        if isinstance(index["layers"], list)
        else int(index["layers"]),
        saes=tuple(saes),
        train_seconds=train,
        prompt_tokens=prompts,
        n_ks=int(n_ks),
    )


def tokenizer_prompt_tokens(cfg: RunConfig) -> dict[str, int]:
    """Prompt tokens of every scenario of ``cfg`` with its model's tokenizer (as notebook 01
    counts them)."""
    from transformers import AutoTokenizer

    from lib.capture.sampling import model_prompts  # lazy: torch, only for the tokenizer
    from lib.models.loading import resolve_model_path  # lazy: torch, only for the tokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model))
    return {k: len(tok(p).input_ids) for k, p in model_prompts(cfg, tok).items()}


def _sae_steps(tgt: RunConfig, cond: str, decisive: float, tokens_per: float) -> int:
    sc = tgt.sae
    if sc.steps:
        return int(sc.steps)
    share = 1.0 if cond == "mixed" else 0.5  # an assumption: half the decisive completions
    vectors = decisive * share * (tokens_per if sc.train_on == "tokens" else 1)
    return int(sc.epochs * math.ceil(vectors / sc.batch_size))


def target_facts(
    tgt: RunConfig,
    mcfg: RunConfig,
    m: RunFacts,
    decisive: float | None = None,
    prompt_tokens: dict[str, int] | None = None,
) -> tuple[RunFacts, list[str]]:
    """The work ``tgt`` is expected to do, from the measured run ``m`` of config ``mcfg``, and
    notes on what was assumed."""
    if tgt.model != mcfg.model:  # a per-token cost holds for one model only
        raise CostsError(
            f"the measured run is of {mcfg.model}, the target of {tgt.model}: calibrate on a run of the target's model"
        )
    notes = []
    scen = [s.id for s in scenarios_for(tgt)]
    spp = tgt.sampling.samples_per_scenario
    n = len(scen) * spp
    fill = m.completion_tokens / max(m.n * mcfg.sampling.max_new_tokens, 1)
    notes.append(f"completion tokens: {fill:.0%} of max_new_tokens, as in the measured run")
    if prompt_tokens is None:
        known = {s: m.prompt_tokens[s] for s in scen if s in m.prompt_tokens}
        mean = sum(m.prompt_tokens.values()) / max(len(m.prompt_tokens), 1)
        prompt_tokens = {s: known.get(s, mean) for s in scen}
        if len(known) < len(scen):
            notes.append(
                f"prompt tokens: the measured mean ({mean:.0f}) for {len(scen) - len(known)} scenarios"
            )
    else:
        notes.append("prompt tokens: the model's tokenizer")
    if _ste_cells(tgt):
        notes.append(
            f"notebook 06's k sweep: {m.n_ks} k values, as measured (they follow the STE L0)"
        )
    rows = [{"scenario": s, "n_prompt_tokens": prompt_tokens[s]} for s in scen for _ in range(spp)]
    if decisive is None:
        decisive = n * m.n_decisive / max(m.n, 1)
        notes.append(
            f"decisive completions: {decisive:.0f} ({m.n_decisive / max(m.n, 1):.0%} of {n}, the measured share)"
        )
    else:
        notes.append(f"decisive completions: {decisive:.0f} (given)")
    tokens = n * tgt.sampling.max_new_tokens * fill
    d_sae = m.d * tgt.sae.expansion_factor
    saes = tuple(
        SaeWork(
            arch,
            _sae_steps(tgt, cond, decisive, tokens / max(n, 1)),
            tgt.sae.batch_size,
            m.d,
            d_sae,
        )
        for _, arch, cond in tgt.sae_grid()
        for _ in range(tgt.sae.seeds)
    )
    return (
        RunFacts(
            n=n,
            n_decisive=decisive,
            completion_tokens=tokens,
            prefill_sampling=_prompt_tokens(rows, tgt, tgt.sampling.batch_size),
            prefill_capture=_prompt_tokens(rows, tgt, tgt.capture.batch_size),
            d=m.d,
            n_layers=m.n_layers,
            n_captured=len(tgt.capture_layers(m.n_layers)),
            saes=saes,
            prompt_tokens=prompt_tokens,
            n_ks=m.n_ks,
        ),
        notes,
    )


def _ste_cells(cfg: RunConfig) -> int:
    return len({(lay, c) for lay, a, c in cfg.sae_grid() if a == "jumprelu_ste"})


def notebooks_of(cfg: RunConfig) -> list[str]:
    """The notebooks a grid run of ``cfg`` executes (:func:`lib.pipeline.grid_plan.plan`)."""
    out = ["01_sampling", "02_classification", "03_activation_capture"]
    out += ["04_sae_training"] if cfg.sae_grid() else []
    out += ["05_layer_profile_probing"]
    out += ["08_features"] if cfg.analysed_saes() else []
    out += ["06_ste_comparison", "09_steering", "07_summary"]
    out += ["11_wording_controls"] if has_controls(cfg) else []
    return out + ["10_cross_model"]


def stage_work(cfg: RunConfig, f: RunFacts) -> dict[str, Work]:
    """Each notebook's work, counted the same way for a measured and a target run (module doc)."""
    tok = f.completion_tokens
    d_sae = {s.d_sae for s in f.saes}
    width = max(d_sae) if d_sae else f.d * cfg.sae.expansion_factor
    raw = 2 * (f.n_captured * len(cfg.probe.features) + N_BASELINES)
    sae_rows = 2 * len(f.saes)
    cells = _ste_cells(cfg)
    steps = next((s.steps for s in f.saes if s.arch == "topk"), cfg.sae.steps or 0)
    sweep = (
        f.n_ks * cfg.sae.seeds * 12.0 * steps * cfg.sae.batch_size * f.d * width if cells else 0.0
    )
    n_feat = len(cfg.analysed_saes())
    st = cfg.steering
    n_dirs = 1 + st.n_latents + st.n_random
    conds = len(st.layers) * (1 + n_dirs * len({a for a in st.alphas if a != 0}) + 2)
    n_st = len(scenarios_for(cfg)) if st.scenarios == "all" else len(st.scenarios)
    mnt = st.max_new_tokens or cfg.sampling.max_new_tokens
    return {
        "01_sampling": Work(
            tok + f.prefill_sampling,
            "tokens through the model",
            f"{f.n} completions: {tok:,.0f} completion + {f.prefill_sampling:,.0f} prompt tokens",
        ),
        "02_classification": Work(
            f.n * len(cfg.judge.judges),
            "verdicts",
            f"{f.n} completions x {len(cfg.judge.judges)} judges",
        ),
        "03_activation_capture": Work(
            tok + f.prefill_capture,
            "tokens through the model",
            f"{tok:,.0f} completion + {f.prefill_capture:,.0f} prompt tokens; {f.n_captured} layers x d={f.d}",
        ),
        "04_sae_training": Work(
            sum(s.flops for s in f.saes) / 1e9,
            "GFLOP of SAE steps",
            f"{len(f.saes)} SAEs, {sum(s.steps for s in f.saes):,} steps",
        ),
        "05_layer_profile_probing": Work(
            raw + sae_rows,
            "probes",
            f"{raw} raw/text probes, {sae_rows} SAE probes ({f.n_decisive:.0f} decisive)",
        ),
        "06_ste_comparison": Work(
            sweep / 1e9,
            "GFLOP of k-sweep SAE steps",
            f"TopK k sweep: {f.n_ks} k x {cfg.sae.seeds} seeds x {cfg.sae.steps or 0} steps; "
            f"{cells} STE cells",
        ),
        "07_summary": Work(None, "fixed"),
        "08_features": Work(
            n_feat, "SAEs analysed", f"{n_feat} SAEs x {width} latents, {f.n_decisive:.0f} decisive"
        ),
        "09_steering": Work(
            conds * n_st * st.samples_per_scenario * mnt,
            "steered tokens",
            f"{conds} conditions x {n_st} scenarios x {st.samples_per_scenario} samples x {mnt} tokens",
        ),
        "10_cross_model": Work(None, "fixed"),
        "11_wording_controls": Work(
            (f.n_captured + 1) * f.n_decisive,
            "layer x decisive",
            f"{f.n_captured + 1} layers and embeddings x {f.n_decisive:.0f} decisive",
        ),
    }


def fixed_cost(costs: dict[str, dict]) -> float:
    """A notebook's fixed cost: the lightest of 02, 07 and 10 in the measured run (0 if none)."""
    light = [
        costs[k]["wall_s"]
        for k in ("02_classification", "07_summary", "10_cross_model")
        if k in costs
    ]
    return min(light) if light else 0.0


def _sae_training(
    measured_s: float, fixed: float, mcfg: RunConfig, m: RunFacts, tgt: RunConfig, t: RunFacts
) -> tuple[float | None, str]:
    """04: optimisation at the measured seconds per FLOP of each architecture, over the
    processes it runs in, plus the measured per-SAE remainder times the SAEs."""
    if not m.saes or not m.train_seconds:
        return None, "no SAE metrics in the measured run: not projected"
    flops = {}
    for s in m.saes:
        flops[s.arch] = flops.get(s.arch, 0.0) + s.flops
    rate = {a: m.train_seconds[a] / flops[a] for a in flops if flops[a] > 0}
    overall = sum(m.train_seconds.values()) / sum(flops.values())
    par_m = max(min(mcfg.sae.n_jobs, len(m.saes)), 1)
    par_t = max(min(tgt.sae.n_jobs, len(t.saes)), 1)
    train_m = sum(m.train_seconds.values()) / par_m
    per_sae = max(measured_s - fixed - train_m, 0.0) / len(m.saes)
    new = [a for a in {s.arch for s in t.saes} if a not in rate]
    train_t = sum(rate.get(s.arch, overall) * s.flops for s in t.saes) / par_t
    rest = per_sae * len(t.saes) * par_m / par_t
    basis = (
        f"optimisation {train_t:,.0f} s at the measured "
        + ", ".join(f"{a} {1 / r / 1e9:.0f}" for a, r in sorted(rate.items()))
        + f" GFLOP/s over {par_t} processes; {per_sae:.1f} s per SAE besides (load, CE metrics, export)"
    )
    if new:
        basis += f"; {', '.join(new)} at the measured mean rate"
    return fixed + train_t + rest, basis


def project(
    costs: dict[str, dict],
    mcfg: RunConfig,
    m: RunFacts,
    tgt: RunConfig,
    t: RunFacts,
    fixed: float | None = None,
) -> pd.DataFrame:
    """One row per notebook of ``tgt``: measured seconds and work, target work, projected
    seconds and the basis; then the total (``projected_s`` empty where a stage cannot be
    projected, and the total says how many)."""
    fixed = fixed_cost(costs) if fixed is None else fixed
    wm, wt = stage_work(mcfg, m), stage_work(tgt, t)
    out = []
    for nb in notebooks_of(tgt):
        got, a, b = costs.get(nb), wm[nb], wt[nb]
        row = {
            "stage": nb,
            "measured_s": None if got is None else round(got["wall_s"], 1),
            "measured_load": None if got is None else stage_load(got),
            "measured_units": None if a.units is None else round(a.units, 1),
            "target_units": None if b.units is None else round(b.units, 1),
            "unit": b.unit,
            "projected_s": None,
            "basis": "",
        }
        if got is None:
            row["basis"] = "not in the measured run: not projected"
        elif not got["units_known"]:
            row["basis"] = "its units are missing from the costs CSV (stage failed?): not projected"
        elif b.units is None or (not a.units and not b.units):
            row["projected_s"] = got["wall_s"]
            row["basis"] = "fixed cost: the measured time"
        elif not a.units:
            row["basis"] = f"no work measured ({a.detail}): not projected"
        elif nb == "04_sae_training":
            row["projected_s"], row["basis"] = _sae_training(got["wall_s"], fixed, mcfg, m, tgt, t)
            row["basis"] = f"{b.detail}; " + row["basis"]
        else:
            ratio = b.units / a.units
            row["projected_s"] = fixed + max(got["wall_s"] - fixed, 0.0) * ratio
            row["basis"] = f"{b.detail}; x {ratio:.3g} the measured work"
        if row["projected_s"] is not None:
            row["projected_s"] = round(row["projected_s"], 1)
        out.append(row)
    df = pd.DataFrame(out)
    missing = int(df["projected_s"].isna().sum())
    total = {
        "stage": "total",
        "measured_s": round(df["measured_s"].sum(), 1),  # the target's stages only
        "projected_s": round(df["projected_s"].sum(), 1),
        "basis": (
            f"stages one after another; notebook fixed cost {fixed:.1f} s"
            + (f"; INCOMPLETE: {missing} stage(s) not projected" if missing else "")
        ),
    }
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def stage_load(c: dict) -> float | None:
    """The mean 1-minute load average while a stage ran (its cells' means averaged)."""
    return round(sum(c["load_mean"]) / len(c["load_mean"]), 1) if c.get("load_mean") else None


def check(table: pd.DataFrame, actual: dict[str, dict]) -> pd.DataFrame:
    """The projection beside a measured run of the target: ``actual_s`` and ``error_pct``
    (projected over actual, minus 1) per stage and for the total of the stages both have."""
    out = table.copy()
    out["actual_s"] = [round(actual[s]["wall_s"], 1) if s in actual else None for s in out["stage"]]
    out["actual_load"] = [stage_load(actual[s]) if s in actual else None for s in out["stage"]]
    both = out[(out["stage"] != "total") & out["projected_s"].notna() & out["actual_s"].notna()]
    out.loc[out["stage"] == "total", "actual_s"] = round(both["actual_s"].sum(), 1)
    out.loc[out["stage"] == "total", "projected_s"] = round(both["projected_s"].sum(), 1)
    out.loc[out["stage"] == "total", "measured_s"] = round(both["measured_s"].sum(), 1)
    out["error_pct"] = [
        round(100 * (p / a - 1), 1) if pd.notna(p) and pd.notna(a) and a else None
        for p, a in zip(out["projected_s"], out["actual_s"], strict=True)
    ]
    return out


def _load(costs: dict[str, dict]) -> str:
    """The 1-minute load averages recorded beside the stages: ``min-max``."""
    ones = [float(x.split("/")[0]) for c in costs.values() for x in c["load"] if x]
    return f"{min(ones):.1f}-{max(ones):.1f}" if ones else "unknown"


def projection_for(
    costs_path: Path | str, target: str, decisive: float | None = None, tokenizer: bool = True
) -> tuple[pd.DataFrame, RunConfig, RunConfig, dict, list[str]]:
    """Read a measured run's costs CSV and run directory and project ``target`` (a config name or
    path): ``(table, measured config, target config, costs, notes)``."""
    costs = read_costs(costs_path)
    run = RunDir(Path(costs_path).resolve().parent.parent)
    mcfg = _run_config(run)
    tgt = load_config(target)
    m = measured_facts(run, mcfg)
    prompts = None
    if tokenizer:
        try:
            prompts = tokenizer_prompt_tokens(tgt)
        except Exception as e:  # noqa: BLE001 - the measured mean is the stated fallback
            print(
                f"note: no tokenizer for {tgt.model} ({type(e).__name__}): measured prompt lengths",
                file=sys.stderr,
            )
    t, notes = target_facts(tgt, mcfg, m, decisive, prompts)
    return project(costs, mcfg, m, tgt, t), mcfg, tgt, costs, notes


def check_rows(
    table: pd.DataFrame, label: str, cal: str, target: str, loads: str, notes: list[str]
) -> pd.DataFrame:
    """A check table as rows of the committed results file."""
    out = table.copy()
    out.insert(0, "check", label)
    out["calibration"], out["target"], out["load"] = cal, target, loads
    out["notes"] = "; ".join(notes)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lib.pipeline.cpu_costs", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("costs", help="a measured run's costs CSV, <run>/results/costs.csv")
    ap.add_argument("--config", required=True, help="the target config (name or YAML path)")
    ap.add_argument(
        "--decisive",
        type=float,
        default=None,
        help="decisive completions of the target (default: the measured share)",
    )
    ap.add_argument(
        "--no-tokenizer", action="store_true", help="prompt lengths from the measured run"
    )
    ap.add_argument(
        "--actual",
        default=None,
        help="a measured run of the target: its costs CSV, to check against",
    )
    ap.add_argument(
        "--record",
        default=None,
        metavar="LABEL",
        help="with --actual: write the check into the results file under LABEL",
    )
    ap.add_argument(
        "--results", default=str(CHECK_RESULTS), help="the results file --record writes"
    )
    args = ap.parse_args(argv)
    try:
        table, mcfg, tgt, costs, notes = projection_for(
            args.costs, args.config, args.decisive, not args.no_tokenizer
        )
        actual = read_costs(args.actual) if args.actual else None
    except CostsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head = f"Projected CPU cost of `{tgt.name}` from `{args.costs}` (load {_load(costs)})"
    if actual is not None:
        table = check(table, actual)
        head += f", beside `{args.actual}` (load {_load(actual)})"
    print(markdown(table, head + ":", notes))
    if args.record:
        if actual is None:
            ap.error("--record needs --actual")
        rel = lambda p: str(Path(p).resolve().parent.parent.name)  # noqa: E731
        rows = check_rows(
            table,
            args.record,
            rel(args.costs),
            rel(args.actual),
            f"{_load(costs)} and {_load(actual)}",
            notes,
        )
        path = Path(args.results)
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        if len(old):
            old = old[old["check"] != args.record]
        pd.concat([old, rows], ignore_index=True).to_csv(path, index=False)
        print(f"recorded check {args.record!r} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
