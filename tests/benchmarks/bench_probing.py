"""Wall time of the layer-profile stage at TinyLlama's shape (must be <= 5 minutes on 2 cores).

A synthetic run directory with 22 layers of d=2048 activations, 300 labelled completions (35%
deceptive) from 9 scenarios is written to a temporary folder; then
``lib.probing.layer_profile.layer_profile`` and ``lib.probing.layer_verdicts.layer_tests`` run exactly as notebook 05
runs them with the ``tinyllama`` config's probe settings: both CV modes (held-out scenarios with
the cluster bootstrap), both pooled features and the text-only baseline (TF-IDF of 300
completions of ~40 words), 1000 bootstrap resamples and 200 label permutations per (layer,
feature, mode), the monitor thresholds chosen by inner folds, the incentive / role-play subsets,
the controls, and the selection-aware peak and text tests.

The activations imitate a residual stream: a large shared offset, a low-rank component with a
decaying spectrum (64 directions), isotropic noise, scenario offsets, and a label direction whose
strength rises with depth. Token vectors (2 per completion) are written because the file format
needs them; the layer profile does not read them.

Run: ``python tests/benchmarks/bench_probing.py [--jobs N]`` (default 2 processes) or
``pytest tests/benchmarks/bench_probing.py -s``. Prints ``layer_profile_seconds <t>`` and whether
that is within the 5-minute goal (printed, never asserted). Timings are wall clock and move with
other load on the machine; the CPU time of the process tree is printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.core.config import load_config  # noqa: E402
from lib.core.fileio import append_jsonl, write_json  # noqa: E402
from lib.core.rundir import RunDir  # noqa: E402
from lib.core.scenarios import load_scenarios  # noqa: E402
from lib.probing import layer_profile as lp  # noqa: E402
from lib.probing import layer_verdicts as lt  # noqa: E402

N_LAYERS, D, N, N_SCENARIOS, TOKENS_PER = 22, 2048, 300, 9, 2
BUDGET_S = 300.0


def write_tinyllama_shaped_run(root: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    cfg = load_config(
        "tinyllama", {"name": "bench", "judge.judges": ["keyword"], "judge.primary": "keyword"}
    )
    run = RunDir(root / cfg.name)
    ids = [f"c{i:04d}" for i in range(N)]
    scen = np.arange(N) % N_SCENARIOS
    names = list(load_scenarios(cfg.scenario_path()))[:N_SCENARIOS]
    y = (rng.random(N) < 0.35).astype(int)
    vocab = [f"w{j}" for j in range(400)] + ["never", "admit", "truth", "lie"]
    texts = [" ".join(rng.choice(vocab, 40)) for _ in range(N)]
    append_jsonl(
        run.completions,
        [
            {"id": i, "scenario": names[s], "completion": t}
            for i, s, t in zip(ids, scen, texts, strict=True)
        ],
    )
    append_jsonl(
        run.labels,
        [
            {"id": i, "judge": "keyword", "label": "deceptive" if v else "honest"}
            for i, v in zip(ids, y, strict=True)
        ],
    )
    run.activations.mkdir(parents=True)
    basis = rng.normal(size=(64, D)) / np.sqrt(D)
    spectrum = 30.0 / np.arange(1, 65) ** 0.7
    offset = rng.normal(size=D) * 3
    scen_dirs = rng.normal(size=(N_SCENARIOS, D)) * 0.5
    label_dir = rng.normal(size=D)
    label_dir /= np.linalg.norm(label_dir)
    owner = torch.arange(N).repeat_interleave(TOKENS_PER)
    for layer in range(N_LAYERS):
        strength = 0.3 + 2.0 * layer / max(N_LAYERS - 1, 1)
        feats = {}
        for name in ("last", "mean"):
            x = offset + (rng.normal(size=(N, 64)) * spectrum) @ basis * np.sqrt(D)
            x += (
                rng.normal(size=(N, D))
                + scen_dirs[scen]
                + strength * (2 * y[:, None] - 1) * label_dir
            )
            feats[name] = torch.from_numpy(x.astype(np.float32))
        tokens = feats["mean"].repeat_interleave(TOKENS_PER, 0)
        save_file(
            {**feats, "tokens": tokens, "token_owner": owner}, str(run.activation_file(layer))
        )
    write_json(run.activation_index, {"ids": ids, "layers": list(range(N_LAYERS)), "d_model": D})
    return cfg, run


def main(jobs: int = 2) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg, run = write_tinyllama_shaped_run(Path(tmp))
        print(
            f"synthetic run written in {time.perf_counter() - t0:.1f} s "
            f"({N_LAYERS} layers, d={D}, n={N}, {N_SCENARIOS} scenarios)"
        )
        print(
            f"probe settings: n_bootstrap={cfg.probe.n_bootstrap}, n_permutations={cfg.probe.n_permutations}, "
            f"features={cfg.probe.features}, n_jobs={jobs}"
        )
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        df = lp.layer_profile(run, cfg, progress=False, n_jobs=jobs)
        tests = lt.layer_tests(run, cfg)
        seconds = time.perf_counter() - t0
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)  # reap the workers so their CPU time is counted
        cpu = _cpu_seconds() - cpu0
        peak = lt.peak_summary(tests, "mean", "stratified")
        print(
            f"rows={len(df)} peak layer {peak['layer']} (mean) bal_acc={peak['bal_acc']:.3f}; "
            f"not below it: {peak['not_below']}"
        )
        verdict = "within" if seconds <= BUDGET_S else "OVER"
        print(
            f"layer_profile_seconds {seconds:.1f} ({verdict} the {BUDGET_S:.0f} s goal); "
            f"CPU seconds incl. workers {cpu:.1f}; load average {os.getloadavg()[0]:.1f}"
        )
        return seconds


def _cpu_seconds() -> float:
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def test_layer_profile_speed():
    main()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    main(ap.parse_args().jobs)
