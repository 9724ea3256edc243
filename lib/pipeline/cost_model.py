"""The cost model: the expected time, memory and disk of a full run on one GPU, from a rehearsal.

A rehearsal (``make rehearsal``) runs every stage at the real model's shapes with small counts
and measures each (:mod:`lib.pipeline.stage_costs`, ``<run>/results/rehearsal.csv``). :func:`project`
scales that to a target config: passes through the language model and SAE training steps from
their FLOP and byte counts at a stated GPU's peak rates and utilisation (:class:`GPU`), CPU-bound
stages from the rehearsal's measured time times their growth in work, Gemini calls from their
count, concurrency and latency, disk from byte counts and the rehearsal's bytes per unit.
:func:`markdown` writes the table with every assumption beside it::

    python -m lib.pipeline.cost_model data/runs/rehearsal/results/rehearsal.csv --config tinyllama
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from lib.core.config import RunConfig, load_config
from lib.core.rundir import RunDir
from lib.core.scenarios import scenarios_for
from lib.models.random_models import PRESETS
from lib.pipeline.process_costs import GB, MB, read_rows
from lib.pipeline.stage_costs import rehearsal_facts


@dataclass(frozen=True)
class GPU:
    """A GPU and how much of it the book's code is assumed to reach (every figure is stated in
    the projection's notes). Defaults: an NVIDIA A100 40GB SXM (datasheet peaks, dense)."""

    name: str = "NVIDIA A100 40GB SXM"
    bf16_tflops: float = 312.0  # tensor cores, dense
    fp32_tflops: float = 19.5  # no TF32: torch's default for float32 matmuls
    hbm_gb_s: float = 1555.0
    memory_gb: float = 40.0
    forward_utilisation: float = 0.30  # share of bf16 peak of HF eager forward passes
    sae_utilisation: float = 0.50  # share of fp32 peak of the SAE step's matmuls
    bandwidth_utilisation: float = 0.70  # share of HBM bandwidth a decode step reaches
    decode_overhead_s: float = 0.020  # floor of one eager decode step (kernel launches, python)
    sae_step_overhead_s: float = 0.002  # Adam, decoder-row normalisation, python, per step
    cuda_context_gb: float = 0.8  # the CUDA context and allocator slack
    model_load_s: float = 15.0  # bf16 weights from a local disk onto the GPU
    disk_write_gb_s: float = 1.0
    gemini_latency_s: float = 3.0  # one gemini-2.5-flash verdict (no batching: the study's rule)


A100_40GB = GPU()


@dataclass(frozen=True)
class CpuCalibration:
    """The CPU-bound analyses measured at the real shapes on this machine (2 cores), by the
    benchmarks; a rehearsal's seconds-long analyses are mostly a notebook's fixed cost and scale
    badly. Update the figures when the benchmarks are run again (the README quotes them)."""

    # python tests/benchmarks/bench_probing.py --jobs 2: notebook 05's raw-activation and text
    # probes, 22 layers x d=2048 x 300 completions, 1000 resamples, 200 permutations, both CV
    # modes (2026-11-28, load 1.8)
    probing_s: float = 126.9
    probing_n: int = 300
    # python tests/benchmarks/bench_latents.py: one SAE's latent statistics with CIs (33.1 s) and
    # k-sparse probes (2.2 s), 8192 latents x 300 completions x 64 tokens, 1000 resamples
    # (2026-11-28, load 1.4); the dashboard and figures (~5 s per SAE in the rehearsal) not counted
    latents_per_sae_s: float = 35.3
    latents_n: int = 300


MEASURED = CpuCalibration()


def llama_shapes(preset: str = "tinyllama") -> dict:
    """The shapes of a study model (:data:`lib.models.random_models.PRESETS`) and its forward cost:
    ``flops_per_token`` = 2 x the matmul weights (attention projections, MLP, LM head) plus the
    attention scores at a context of ~200 tokens; ``weight_bytes_bf16``."""
    c = PRESETS[preset]["config"]
    d, ff, layers, vocab = (
        c["hidden_size"],
        c["intermediate_size"],
        c["num_hidden_layers"],
        c["vocab_size"],
    )
    d_kv = d * c["num_key_value_heads"] // c["num_attention_heads"]
    per_layer = 2 * d * d + 2 * d * d_kv + 3 * d * ff
    matmul = layers * per_layer + vocab * d
    params = matmul + vocab * d + (2 * layers + 1) * d  # + input embeddings and norms
    return {
        "d": d,
        "layers": layers,
        "vocab": vocab,
        "d_kv": d_kv,
        "params": params,
        "flops_per_token": 2 * matmul + 4 * layers * d * 200,
        "weight_bytes_bf16": 2 * params,
    }


def _rows_of(rows: list[dict], stem: str) -> list[dict]:
    return [r for r in rows if str(r["stage"]).startswith(stem)]


def _wall(rows: list[dict], stem: str) -> float:
    return sum(float(r["wall_s"] or 0) for r in _rows_of(rows, stem))


def _peak(rows: list[dict], stem: str) -> float:
    return max([float(r["peak_rss_gb"] or 0) for r in _rows_of(rows, stem)] or [0.0])


def _disk(rows: list[dict], stem: str) -> float:
    return sum(float(r["disk_written_mb"] or 0) for r in _rows_of(rows, stem)) * MB


@dataclass(frozen=True)
class Reference:
    """A finished run at the real statistical sizes (the organism book): its config, decisive
    completions and each notebook's seconds (:func:`reference_run`)."""

    cfg: RunConfig
    n_decisive: int
    seconds: dict


def reference_run(root: Path) -> Reference:
    """The seconds each notebook of a finished grid run took (its markers under
    ``notebooks/.done/``), with the run's config and decisive completions."""
    run = RunDir(root)
    cfg = run.read_config()
    seconds: dict[str, float] = {}
    for marker in sorted((run.notebooks / ".done").glob("*.json")):
        stem = marker.stem.split("__")[0]
        seconds[stem] = seconds.get(stem, 0.0) + float(json.loads(marker.read_text())["seconds"])
    return Reference(cfg, rehearsal_facts(run, cfg)["n_decisive"], seconds)


def project(
    rows: list[dict],
    reh: RunConfig,
    facts: dict,
    tgt: RunConfig,
    gpu: GPU = A100_40GB,
    n_decisive: int = 243,
    preset: str = "tinyllama",
    cpu: CpuCalibration = MEASURED,
    reference: Reference | None = None,
) -> pd.DataFrame:
    """Expected wall time, peak host and GPU memory and disk of every stage of ``tgt`` on one
    ``gpu``, from a rehearsal's costs ``rows`` (:data:`lib.pipeline.process_costs.COLUMNS`) of config ``reh`` and
    its :func:`rehearsal_facts`. Model passes and SAE steps come from FLOP and byte counts at the
    GPU's assumed utilisation; CPU-bound stages (05-08, 10) scale the rehearsal's measured time by
    their work; every notebook pays the rehearsal's lightest notebook (kernel start, imports).
    ``n_decisive``: decisive completions assumed for ``tgt`` (the study's ``mixed`` n).

    The analyses that run on the CPU whatever the GPU: 05's raw probes and 08's latent
    statistics from the benchmarks at the real shapes (``cpu``); 05's SAE probes from the
    rehearsal (an upper bound: all of its 05 beyond a notebook's fixed cost is counted as SAE
    probes); 06, which does not depend on the model's width, from ``reference`` (a config and its
    notebooks' seconds, :func:`reference_seconds`: the organism book, which has the real numbers
    of completions, resamples and seeds), else from the rehearsal."""
    m = llama_shapes(preset)
    f_tok, w_bytes, d, n_layers = m["flops_per_token"], m["weight_bytes_bf16"], m["d"], m["layers"]
    fwd = gpu.bf16_tflops * 1e12 * gpu.forward_utilisation
    step_s = max(gpu.decode_overhead_s, w_bytes / (gpu.hbm_gb_s * 1e9 * gpu.bandwidth_utilisation))
    light = [w for s in ("02_", "06_", "07_", "10_") if (w := _wall(rows, s))]
    nb = min(light) if light else 10.0  # a notebook's fixed cost: kernel, imports, figures
    host0 = min([p for s in ("02_", "07_", "10_") if (p := _peak(rows, s))] or [0.5])
    f32_weights = 2 * w_bytes / GB
    p, n_r, dec_r = facts["prompt_tokens"], facts["n"], max(facts["n_decisive"], 1)
    s, n_scen = tgt.sampling, len(scenarios_for(tgt))
    n = n_scen * s.samples_per_scenario
    batches = n_scen * math.ceil(s.samples_per_scenario / s.batch_size)
    gem = tgt.judge.concurrency
    gemini = "gemini" in tgt.judge.judges
    model_gpu = w_bytes / GB + gpu.cuda_context_gb
    out: list[dict] = []

    def add(stage, work, seconds, host, gpu_gb, disk, basis):
        out.append(
            {
                "stage": stage,
                "work": work,
                "time_s": round(seconds, 1),
                "host_gb": round(host, 1),
                "gpu_gb": round(gpu_gb, 1) if gpu_gb else None,
                "disk_gb": round(disk / GB, 2),
                "basis": basis,
            }
        )

    def host_model(stem):  # the rehearsal's peak without its float32 weights, plus bf16 staging
        return max(_peak(rows, stem) - f32_weights, host0) + w_bytes / GB + 1.0

    prefill = (batches if tgt.prompt_cache else n) * p
    steps = batches * s.max_new_tokens
    kv = s.batch_size * (p + s.max_new_tokens) * n_layers * 2 * m["d_kv"] * 2 / GB
    logits = s.batch_size * p * m["vocab"] * 2 / GB
    add(
        "01 sampling",
        f"{n} completions: {prefill:,.0f} prompt tokens prefilled, {steps} decode steps",
        nb + gpu.model_load_s + prefill * f_tok / fwd + steps * step_s,
        host_model("01_"),
        model_gpu + kv + logits,
        _disk(rows, "01_") / n_r * n,
        f"prefill at {gpu.forward_utilisation:.0%} of bf16 peak; a decode step {step_s * 1e3:.0f} ms",
    )
    calls = n if gemini else 0
    add(
        "02 classification",
        f"{calls} Gemini verdicts, {gem} at a time" if calls else f"{n} keyword verdicts",
        nb + math.ceil(calls / gem) * gpu.gemini_latency_s,
        _peak(rows, "02_"),
        None,
        _disk(rows, "02_") / n_r * n,
        f"{gpu.gemini_latency_s:g} s per verdict" if calls else "rehearsal",
    )
    toks = n * s.max_new_tokens
    cap = n * s.max_new_tokens + (batches if tgt.prompt_cache else n) * p
    act = n_layers * ((toks + 2 * n) * d * 4 + toks * 8)
    add(
        "03 capture",
        f"{cap:,.0f} tokens through the model; {n_layers} layers x {toks:,} token vectors",
        nb + gpu.model_load_s + cap * f_tok / fwd + act / (gpu.disk_write_gb_s * GB),
        host_model("03_") + act / n_layers / GB,
        model_gpu
        + tgt.capture.batch_size
        * (p + s.max_new_tokens)
        * (m["vocab"] * 2 + n_layers * d * 4)
        / GB,
        act,
        f"float32 activations written at {gpu.disk_write_gb_s:g} GB/s",
    )
    sc = tgt.sae
    width = d * sc.expansion_factor
    n_sae = len(tgt.sae_grid()) * sc.seeds
    vectors = n_decisive * (s.max_new_tokens if sc.train_on == "tokens" else 1)
    sae_steps = n_sae * (sc.steps or sc.epochs * math.ceil(vectors / sc.batch_size))
    step_flops = 12 * sc.batch_size * d * width
    t_step = step_flops / (gpu.fp32_tflops * 1e12 * gpu.sae_utilisation) + gpu.sae_step_overhead_s
    held = sc.heldout_fraction * n_decisive * 2 / 3  # mean held-out completions over conditions
    cells = len({(lay, c) for lay, _, c in tgt.sae_grid()})
    ce_tokens = (n_sae * 2 + cells) * held * (p + s.max_new_tokens)
    sae_disk = n_sae * facts["sae_bytes"]
    add(
        "04 SAE training",
        f"{n_sae} SAEs x {sae_steps // n_sae} steps = {sae_steps:,} steps; {ce_tokens:,.0f} CE tokens",
        nb
        + gpu.model_load_s
        + sae_steps * t_step
        + ce_tokens * f_tok / fwd
        + sae_disk / (gpu.disk_write_gb_s * GB),
        host_model("04_"),
        model_gpu
        + 4 * 2 * d * width * 4 / GB
        + 8 * (p + s.max_new_tokens) * m["vocab"] * 4 * 3 / GB,
        sae_disk,
        f"{step_flops / 1e9:.0f} GFLOP/step at {gpu.sae_utilisation:.0%} of fp32 peak + {gpu.sae_step_overhead_s * 1e3:g} ms",
    )
    n_probe_sae = len(tgt.sae_grid()) * sc.seeds
    sae_scale = n_probe_sae / max(len(reh.sae_grid()) * reh.sae.seeds, 1) * n_decisive / dec_r
    raw_s = cpu.probing_s * n_decisive / cpu.probing_n
    sae_s = max(_wall(rows, "05_") - nb, 0.0) * sae_scale
    add(
        "05 probing",
        f"raw probes on {n_layers} layers x 2 CV modes, {tgt.probe.n_permutations} permutations; "
        f"{n_probe_sae} SAE probes",
        nb + raw_s + sae_s,
        _peak(rows, "05_"),
        None,
        _disk(rows, "05_") * n_probe_sae / max(len(reh.sae_grid()) * reh.sae.seeds, 1),
        f"CPU: raw probes {raw_s:,.0f} s (bench_probing: {cpu.probing_s:g} s at "
        f"{cpu.probing_n} completions); SAE probes at most {sae_s:,.0f} s (the rehearsal's x "
        f"{sae_scale:,.0f})",
    )
    if reference is not None:
        ref_cfg, ref_s = reference.cfg, reference.seconds
        ref_nb = min([ref_s[k] for k in ("07_summary", "10_cross_model") if k in ref_s] or [nb])
        boot = (
            max(_ste_cells(tgt), 1)
            / max(_ste_cells(ref_cfg), 1)
            * (tgt.probe.n_bootstrap * n_decisive * sc.seeds)
            / max(ref_cfg.probe.n_bootstrap * reference.n_decisive * ref_cfg.sae.seeds, 1)
        )
        ste_s = nb + max(ref_s.get("06_ste_comparison", ref_nb) - ref_nb, 0.0) * boot
        ste_basis = f"CPU: the organism book's 06 x {boot:,.1f} (STE cells x resamples x completions x seeds)"
    else:
        boot = (tgt.probe.n_bootstrap * n_decisive * sc.seeds) / max(
            reh.probe.n_bootstrap * dec_r * reh.sae.seeds, 1
        )
        ste_s = nb + (_wall(rows, "06_") - nb) * boot
        ste_basis = f"CPU: the rehearsal's time x {boot:,.0f} (resamples x completions x seeds)"
    add(
        "06 STE comparison",
        "paired bootstraps over completions and seeds",
        ste_s,
        _peak(rows, "06_"),
        None,
        _disk(rows, "06_"),
        ste_basis,
    )
    add(
        "07 summary",
        "tables",
        _wall(rows, "07_"),
        _peak(rows, "07_"),
        None,
        _disk(rows, "07_"),
        "rehearsal",
    )
    fc = tgt.features
    n_feat = len(tgt.analysed_saes())
    per = cpu.latents_per_sae_s * n_decisive / cpu.latents_n
    labels = n_feat * (2 * fc.n_top + fc.autointerp_random) if fc.autointerp else 0
    add(
        "08 features",
        f"{n_feat} SAEs x {width} latents"
        + (f"; {labels:,} Gemini latent labels" if labels else ""),
        nb + per * n_feat + math.ceil(labels / gem) * gpu.gemini_latency_s,
        _peak(rows, "08_"),
        None,
        n_feat * facts["feature_bytes"],
        f"CPU: {per:.0f} s per SAE (bench_latents: {cpu.latents_per_sae_s:g} s at "
        f"{cpu.latents_n} completions); {gpu.gemini_latency_s:g} s per label",
    )
    st = tgt.steering
    n_dirs = 1 + st.n_latents + st.n_random
    conds = len(st.layers) * (1 + n_dirs * len({a for a in st.alphas if a != 0}) + 2)
    sc_steer = n_scen if st.scenarios == "all" else len(st.scenarios)
    st_batches = sc_steer * math.ceil(st.samples_per_scenario / s.batch_size)
    mnt = st.max_new_tokens or s.max_new_tokens
    st_prefill = (
        conds * (st_batches if tgt.prompt_cache else sc_steer * st.samples_per_scenario) * p
    )
    st_steps = conds * st_batches * mnt
    st_calls = conds * sc_steer * st.samples_per_scenario if tgt.judge.primary == "gemini" else 0
    add(
        "09 steering",
        f"{conds} conditions x {sc_steer * st.samples_per_scenario} completions"
        + (f"; {st_calls:,} Gemini verdicts" if st_calls else ""),
        nb
        + gpu.model_load_s
        + st_prefill * f_tok / fwd
        + st_steps * step_s
        + math.ceil(st_calls / gem) * gpu.gemini_latency_s,
        host_model("09_"),
        model_gpu + kv + logits,
        _disk(rows, "09_") * conds / max(_steer_conditions(reh), 1),
        f"{st_steps:,} decode steps of {step_s * 1e3:.0f} ms; {gpu.gemini_latency_s:g} s per verdict",
    )
    add(
        "10 cross-model",
        "figure",
        _wall(rows, "10_"),
        _peak(rows, "10_"),
        None,
        _disk(rows, "10_"),
        "rehearsal",
    )
    df = pd.DataFrame(out)
    total = {
        "stage": "total",
        "work": f"model download {w_bytes / GB:.1f} GB (bf16) not included",
        "time_s": round(df["time_s"].sum(), 1),
        "host_gb": df["host_gb"].max(),
        "gpu_gb": df["gpu_gb"].max(),
        "disk_gb": round(df["disk_gb"].sum() + w_bytes / GB, 2),
        "basis": "stages one after another (--workers 1); disk includes the model",
    }
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def _ste_cells(cfg: RunConfig) -> int:
    """(layer, condition) cells with an STE SAE: the comparisons of notebook 06."""
    return len({(lay, c) for lay, a, c in cfg.sae_grid() if a == "jumprelu_ste"})


def _steer_conditions(cfg: RunConfig) -> int:
    st = cfg.steering
    return len(st.layers) * (
        1 + (1 + st.n_latents + st.n_random) * len({a for a in st.alphas if a != 0}) + 2
    )


def _number(text: str, pattern: str) -> float | None:
    found = re.search(pattern, text or "")
    return float(found.group(1)) if found else None


def measured_rates(
    rows: list[dict], preset: str = "tinyllama", reh: RunConfig | None = None
) -> list[str]:
    """What the rehearsal's CPU reached, per stage (whole-stage walls: model loading included, so
    these are lower bounds), as sentences for the notes."""
    m, out = llama_shapes(preset), []
    for r in _rows_of(rows, "03_"):
        prompt = _number(r["note"], r"(\d+) prompt tokens") or 0
        toks = float(r["units"] or 0) + prompt
        rate = toks / float(r["wall_s"])
        out.append(
            f"03 capture: {toks:,.0f} tokens through the model in {float(r['wall_s']):.0f} s (model load "
            f"included): {rate:.1f} tokens/s, >= {rate * m['flops_per_token'] / 1e9:.0f} GFLOP/s"
        )
    for r in _rows_of(rows, "04_"):
        train = _number(r["note"], r"([\d.]+) s in training")
        steps = float(r["units"] or 0)
        if train and steps and reh is not None:
            width = m["d"] * reh.sae.expansion_factor
            flops = 12 * reh.sae.batch_size * m["d"] * width
            per = train / steps
            out.append(
                f"04 SAE training: {steps:.0f} steps of batch {reh.sae.batch_size} at "
                f"{m['d']} -> {width} in {train:.0f} s of optimisation: {per:.2f} s/step, "
                f"{flops / per / 1e9:.0f} GFLOP/s (12 x B x d x d_sae per step)"
            )
    for r in _rows_of(rows, "01_"):
        out.append(
            f"01 sampling: {float(r['units'] or 0):.0f} completion tokens in {float(r['wall_s']):.0f} s "
            f"({r['note']})"
        )
    return out


def markdown(table: pd.DataFrame, gpu: GPU, tgt: RunConfig, rates: list[str], source: str) -> str:
    """The projection as a markdown table, with the GPU's figures and the rehearsal's rates."""
    shown = table.copy()
    shown["time"] = [_duration(t) for t in shown["time_s"]]
    cols = ["stage", "work", "time", "time_s", "host_gb", "gpu_gb", "disk_gb", "basis"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join(
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in r) + " |\n"
        for r in shown[cols].itertuples(index=False)
    )
    assumptions = "".join(f"- `{k}` = {v}\n" for k, v in asdict(gpu).items())
    return (
        f"Projected cost of config `{tgt.name}` ({tgt.label}) on one {gpu.name}, from {source}.\n\n"
        + head
        + body
        + "\nGPU and code assumptions (lib.pipeline.cost_model.GPU):\n\n"
        + assumptions
        + "\nMeasured in the rehearsal (CPU):\n\n"
        + "".join(f"- {r}\n" for r in rates)
    )


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lib.pipeline.cost_model", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("costs", help="a rehearsal's costs CSV, <run>/results/rehearsal.csv")
    ap.add_argument("--config", default="tinyllama", help="the config to project")
    ap.add_argument("--rehearsal-config", default="rehearsal", help="the rehearsal's config")
    ap.add_argument("--decisive", type=int, default=243, help="decisive completions assumed")
    ap.add_argument("--out", default=None, help="write the markdown here (else print it)")
    ap.add_argument(
        "--reference", default=None, help="a finished organism run: 06 scaled from it (make book)"
    )
    args = ap.parse_args(argv)
    path = Path(args.costs)
    reh, tgt = load_config(args.rehearsal_config), load_config(args.config)
    run = RunDir(path.resolve().parent.parent)
    rows = read_rows(path)
    ref = reference_run(Path(args.reference)) if args.reference else None
    table = project(
        rows, reh, rehearsal_facts(run, reh), tgt, A100_40GB, args.decisive, reference=ref
    )
    text = markdown(table, A100_40GB, tgt, measured_rates(rows, reh=reh), str(path))
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
