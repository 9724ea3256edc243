"""The whole real book on an edge of its grid: one captured layer, no STE SAEs, one architecture.

Every notebook must run to the end and say what it could not do (no STE comparison, no
steering SAE, a profile of one layer that cannot be tested for a rise) instead of failing.
Small counts keep it to about a minute; the numbers are not checked, the plumbing is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

from lib.core.config import REPO_ROOT

EDGE = {
    "capture.layers": "[5]",
    "sae.layers": "[5]",
    "sae.ste_layers": "[]",
    "sae.architectures": "[topk]",
    "sae.seeds": "1",
    "sae.steps": "40",
    "sampling.samples_per_scenario": "6",
    "sampling.max_new_tokens": "16",
    "probe.n_bootstrap": "40",
    "probe.n_permutations": "10",
    "probe.fold_steps": "20",
    "features.saes": "all",
    "features.n_bootstrap": "30",
    "features.k_values": "[1, 2]",
    "steering.samples_per_scenario": "2",
    "steering.alphas": "[0.0, 1.0]",
    "steering.n_random": "1",
}


def _outputs(notebook) -> str:
    nb = json.loads(notebook.read_text())
    return "".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in nb["cells"]
        for o in c.get("outputs", [])
    )


def test_the_book_runs_with_one_layer_and_no_ste_saes(tmp_path):
    args = [a for k, v in EDGE.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "DECEPTION_SAES_RUNS": str(tmp_path), "DECEPTION_SAES_BATCH": "1"}
    cmd = [sys.executable, "-m", "lib.pipeline.grid", "--config", "organism", "--run-name", "edge"]
    done = subprocess.run(
        [*cmd, "--workers", "2", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "grid: 10 ran, 0 skipped (finished before), 0 failed" in done.stdout
    run = tmp_path / "edge"
    ste = pd.read_csv(run / "results" / "ste_comparison.csv")
    assert ste.empty and "verdict" in ste.columns  # a header, and notebook 06 says why
    assert "sae.ste_layers is empty" in _outputs(run / "notebooks" / "06_ste_comparison.ipynb")
    summary = pd.read_csv(run / "results" / "summary.csv", dtype=str, keep_default_na=False)
    ste_row = summary[summary.claim.str.contains("STE")].iloc[0]
    assert ste_row["ours: study's recipe"] == "n/a"
    profile = pd.read_csv(run / "results" / "layer_profile.csv")
    assert set(profile.layer.dropna()) == {5}
    steering = _outputs(run / "notebooks" / "09_steering.ipynb")
    assert "no SAE organism_jumprelu_ste_L5_mixed: latent directions and ablation left out" in (
        steering
    )
    assert "edge, stratified: untestable (fewer than 3 layers)" in _outputs(
        run / "notebooks" / "10_cross_model.ipynb"
    )
