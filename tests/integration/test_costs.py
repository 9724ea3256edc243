"""Measuring a stage (lib.pipeline.process_costs), reading its throughput from its outputs (lib.pipeline.stage_costs) and
projecting a full run (lib.pipeline.cost_model): on small processes, files and hand-made tables.

Nothing here asserts a time: memory and disk are asserted from what the test process allocates
and writes (they do not move with the machine's load), times only for consistency."""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from lib.core.config import load_config
from lib.core.rundir import RunDir
from lib.pipeline import process_costs as costs
from lib.pipeline.cost_model import (
    A100_40GB,
    GPU,
    CpuCalibration,
    Reference,
    llama_shapes,
    markdown,
    measured_rates,
    project,
)
from lib.pipeline.stage_costs import _prompt_tokens, stage_units

MB = 1024**2
# a child that holds `mb` MiB (touched, so resident), starts a grandchild holding as much, waits
HOLDER = """
import subprocess, sys, time
mb = int(sys.argv[1])
block = bytearray(mb * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
if len(sys.argv) > 2:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], str(mb)])
    time.sleep(1.5)
    child.wait()
else:
    time.sleep(1.5)
"""
GRANDCHILD = """
import sys, time
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(1.0)
"""

linux = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")


@linux
def test_monitor_sees_the_process_and_its_children():
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, "150", GRANDCHILD])
    mon = costs.ProcessTreeMonitor(interval=0.1).start(proc.pid)
    time.sleep(1.2)  # both hold their 150 MiB now
    assert proc.pid in costs.descendants(proc.pid)
    assert len(costs.descendants(proc.pid)) == 2
    usage = mon.stop()
    proc.wait()
    assert 150 * MB <= usage["root_hwm_bytes"] < 400 * MB  # the child's own peak
    assert usage["tree_peak_bytes"] >= 300 * MB  # child + grandchild, sampled together
    assert usage["peak_rss_bytes"] == max(usage["tree_peak_bytes"], usage["root_hwm_bytes"])
    assert usage["load_mean"] is not None and len(usage["load_avg"].split("/")) == 3
    assert mon.stop() == usage | {"load_avg": mon.stop()["load_avg"]}  # stopping twice is harmless


def test_dir_bytes_counts_written_blocks_not_holes(tmp_path):
    assert costs.dir_bytes(tmp_path / "absent") == 0
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "data").write_bytes(os.urandom(3 * MB))
    with open(tmp_path / "sparse", "wb") as f:  # a preallocated activation file, not written yet
        f.truncate(100 * MB)
    os.symlink(tmp_path / "a" / "data", tmp_path / "link")  # not followed
    assert 3 * MB <= costs.dir_bytes(tmp_path) < 3.5 * MB


@linux
def test_measure_writes_a_row_with_memory_and_disk(tmp_path, capsys):
    # this process peaks at >= 0.6 GB first, as a pytest worker does after heavy tests: Linux
    # carries that peak into a child's ru_maxrss, which must not pass for the child's own
    peak = np.ones(80_000_000)
    del peak
    out = tmp_path / "written"
    out.mkdir()
    code = f"import sys; open({str(out / 'f')!r}, 'wb').write(b'x' * {5 * MB}); exec(sys.argv[1])"
    csv = tmp_path / "results" / "costs.csv"
    rc = costs.main(
        ["measure", "--csv", str(csv), "--stage", "00_build", "--dir", str(out), "--note", "hi",
         "--", sys.executable, "-c", code, HOLDER.replace("sys.argv[1]", "'80'")]
    )  # fmt: skip
    assert rc == 0
    (row,) = costs.read_rows(csv)
    assert row["stage"] == "00_build" and row["status"] == "done" and row["note"] == "hi"
    assert 80 / 1024 <= float(row["peak_rss_gb"]) < 0.5
    assert float(row["kernel_hwm_gb"]) >= 80 / 1024  # wait4's ru_maxrss: exact, not sampled
    assert 5.0 <= float(row["disk_written_mb"]) < 5.5
    assert float(row["wall_s"]) >= 1.5  # the holder sleeps 1.5 s
    failed = costs.main(["measure", "--csv", str(csv), "--stage", "01_x", "--", sys.executable, "-c", "raise SystemExit(3)"])  # fmt: skip
    assert failed == 3
    assert [r["status"] for r in costs.read_rows(csv)] == ["done", "failed"]


def test_rows_are_replaced_by_stage_and_the_table_totals(tmp_path):
    path = tmp_path / "c.csv"
    usage = {
        "peak_rss_bytes": 2 * costs.GB,
        "root_hwm_bytes": costs.GB,
        "load_avg": "1.00/2.00/3.00",
    }
    a = costs.cost_row("01_sampling", "done", 10.0, usage, 3 * MB, unit="tokens", units=50)
    b = costs.cost_row("02_classification", "done", 5.0, {}, 0, unit="verdicts", units=10)
    costs.upsert_rows(path, [a, b])
    assert a["units_per_s"] == 5.0 and a["peak_rss_gb"] == 2.0 and a["kernel_hwm_gb"] == 1.0
    assert a["disk_written_mb"] == 3.0
    again = costs.cost_row("01_sampling", "done", 20.0, usage, 0, unit="tokens", units=50)
    rows = costs.upsert_rows(path, [again])
    assert [(r["stage"], float(r["wall_s"])) for r in rows] == [
        ("01_sampling", 20.0),
        ("02_classification", 5.0),
    ]
    table = costs.format_table(costs.read_rows(path))
    total = table.splitlines()[-1].split()
    assert total[:4] == ["total", "25.0", "2.00", "0.0"]  # walls summed, memory the max
    assert "1.00/2.00/3.00" in table


def test_stage_units_from_outputs(tmp_path):
    cfg = load_config("rehearsal")
    run = RunDir(tmp_path / "rehearsal")
    rows = [
        {"id": f"{s}-{i:04d}", "scenario": s, "n_prompt_tokens": 100, "n_completion_tokens": 12}
        for s in ("a", "b")
        for i in range(6)
    ]
    run.completions.parent.mkdir(parents=True)
    run.completions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    units, note = stage_units(run, cfg, "01_sampling", {})
    assert units == 144 and note == "12 completions; 200 prompt tokens prefilled"
    # capture batches of 18 rows: rows of one scenario share one prefill per batch
    assert _prompt_tokens(rows, cfg, 5) == 100 * 4  # batches a a a a a | a b b b b | b b
    no_cache = load_config("rehearsal", {"prompt_cache": False})
    assert _prompt_tokens(rows, no_cache, 5) == 1200
    for i in cfg.sae_grid()[:2]:
        path = run.sae_dir(cfg.sae_id(*i))
        path.mkdir(parents=True)
        m = {"train_steps": 2, "train_seconds": 1.5, "ce_n_tokens": 24, "d_sae": 8192}
        (path / "metrics.json").write_text(json.dumps(m))
    params = {"layer": 3, "arch": "topk", "condition": "mixed"}
    assert stage_units(run, cfg, "04_sae_training", params) == (
        2,
        "1 SAEs of d_sae 8192; 1.5 s in training; 24 CE tokens",
    )
    assert stage_units(run, cfg, "10_cross_model", {"runs": ["rehearsal", "default"]})[0] == 2


def test_llama_shapes_are_tinyllamas():
    m = llama_shapes("tinyllama")
    assert 1.09e9 < m["params"] < 1.11e9  # TinyLlama-1.1B: 1,100,048,384 parameters
    assert m["params"] == 1_100_048_384
    assert 2.0e9 < m["flops_per_token"] < 2.2e9
    assert m["d_kv"] == 256


def _fake_rows() -> list[dict]:
    walls = {"01_sampling": 120, "02_classification": 10, "03_activation_capture": 60,
             "04_sae_training__all": 200, "05_layer_profile_probing": 110, "06_ste_comparison": 12,
             "07_summary": 11, "08_features__all": 50, "09_steering": 90, "10_cross_model": 9}  # fmt: skip
    notes = {
        "03_activation_capture": "22 layers x d=2048; 1000 prompt tokens prefilled",
        "04_sae_training__all": "39 SAEs of d_sae 8192; 60.0 s in training; 500 CE tokens",
    }
    units = {"03_activation_capture": 648, "04_sae_training__all": 60}
    return [
        costs.cost_row(s, "done", w, {"peak_rss_gb": None}, 10 * MB, units=units.get(s), note=notes.get(s, ""))
        | {"peak_rss_gb": 6.7 if s[:2] in ("01", "03", "04", "09") else 0.5}
        for s, w in walls.items()
    ]  # fmt: skip


def test_projection_of_the_tinyllama_study():
    reh, tgt = load_config("rehearsal"), load_config("tinyllama")
    facts = {
        "n": 54,
        "n_decisive": 21,
        "prompt_tokens": 110.0,
        "sae_bytes": 134.3 * MB,
        "feature_bytes": 2 * MB,
    }
    table = project(_fake_rows(), reh, facts, tgt, A100_40GB, n_decisive=243).set_index("stage")
    # 01: 270 completions x 110 prompt tokens prefilled; 9 batches x 64 decode steps of 20 ms
    assert "29,700 prompt tokens prefilled, 576 decode steps" in table.loc["01 sampling", "work"]
    f = llama_shapes()["flops_per_token"]
    expect = 9 + 15 + 29_700 * f / (312e12 * 0.3) + 576 * 0.02
    assert table.loc["01 sampling", "time_s"] == pytest.approx(expect, abs=0.1)
    # 02: 270 Gemini verdicts, 4 at a time, 3 s each
    assert table.loc["02 classification", "time_s"] == pytest.approx(9 + 68 * 3.0)
    # 04: 117 SAEs x 600 steps; each 12 x 128 x 2048 x 8192 FLOP at half of 19.5 TFLOP/s + 2 ms
    assert "117 SAEs x 600 steps = 70,200 steps" in table.loc["04 SAE training", "work"]
    assert table.loc["04 SAE training", "disk_gb"] == pytest.approx(117 * 134.3 / 1024, abs=0.01)
    step = 12 * 128 * 2048 * 8192 / (19.5e12 * 0.5) + 0.002
    assert table.loc["04 SAE training", "time_s"] > 70_200 * step
    # 03: 22 layers x (270 x 64 token vectors + 2 pooled per completion) x 2048 float32, + owners
    act = 22 * ((270 * 64 + 540) * 2048 * 4 + 270 * 64 * 8)
    assert table.loc["03 capture", "disk_gb"] == pytest.approx(act / 1024**3, abs=0.01)
    # 09: 2 layers x (1 + 6 directions x 6 alphas + 2 reconstructions) = 78 conditions x 270
    assert (
        "78 conditions x 270 completions; 21,060 Gemini verdicts"
        in table.loc["09 steering", "work"]
    )
    assert table.loc["total", "time_s"] == pytest.approx(table["time_s"].iloc[:-1].sum(), abs=0.5)
    assert table.loc["total", "gpu_gb"] < A100_40GB.memory_gb
    # a faster GPU makes the GPU stages, not the CPU ones, faster
    fast = GPU(bf16_tflops=624, fp32_tflops=39, decode_overhead_s=0.01)
    quick = project(_fake_rows(), reh, facts, tgt, fast).set_index("stage")
    assert quick.loc["04 SAE training", "time_s"] < table.loc["04 SAE training", "time_s"]
    assert quick.loc["05 probing", "time_s"] == table.loc["05 probing", "time_s"]
    # the CPU analyses: 05's raw probes and 08's latents from the benchmarks at the real shapes,
    # 05's SAE probes from the rehearsal (117 SAE probes for its 39, 243 completions for its 21)
    cpu = CpuCalibration(probing_s=300.0, probing_n=300, latents_per_sae_s=60.0, latents_n=300)
    cal = project(_fake_rows(), reh, facts, tgt, A100_40GB, cpu=cpu).set_index("stage")
    nb = 9  # the lightest notebook of the rehearsal: a notebook's fixed cost
    expect_05 = nb + 300 * 243 / 300 + (110 - nb) * 117 / 39 * 243 / 21
    assert cal.loc["05 probing", "time_s"] == pytest.approx(expect_05, abs=0.1)
    labels = 39 * (2 * tgt.features.n_top + tgt.features.autointerp_random)
    expect_08 = nb + 60 * 243 / 300 * 39 + math.ceil(labels / 4) * 3.0
    assert cal.loc["08 features", "time_s"] == pytest.approx(expect_08, abs=0.1)
    # 06 from a reference run at the real sizes (the organism book), when there is one
    org = load_config("organism")
    ref = Reference(org, 261, {"06_ste_comparison": 16.0, "07_summary": 6.0})
    with_ref = project(_fake_rows(), reh, facts, tgt, A100_40GB, reference=ref)
    cells = (9 * 1000 * 243 * 3) / (
        6 * 500 * 261 * 3
    )  # grid cells x resamples x completions x seeds
    assert with_ref.set_index("stage").loc["06 STE comparison", "time_s"] == pytest.approx(
        nb + 10 * cells, abs=0.1
    )
    text = markdown(
        table.reset_index(), A100_40GB, tgt, measured_rates(_fake_rows(), reh=reh), "x.csv"
    )
    assert text.count("\n| ") == len(table) + 1 and "`fp32_tflops` = 19.5" in text
    assert "1.00 s/step" in text  # 60 s of training over 60 steps
    assert isinstance(pd.read_csv, object)
