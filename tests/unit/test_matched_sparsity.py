"""STE against TopK at matched sparsity (lib.probing.matched_sparsity): the sweep's k values and
the interpolation at the STE SAEs' L0."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.core.config import load_config
from lib.probing.matched_sparsity import at_matched_l0, describe, sweep_ks


def test_the_sweep_doubles_k_from_the_grids_up_to_twice_the_ste_l0():
    cfg = load_config("smollm2-135m-instruct")  # k = 32, d_sae = 2304
    assert sweep_ks(cfg, 246.3, 2304) == [32, 64, 128, 256]  # 256 covers the STE L0
    assert sweep_ks(cfg, 10.0, 2304) == [32, 64]  # at least one doubling
    assert sweep_ks(cfg, 5000.0, 512) == [32, 64, 128, 256]  # at most half the latents


def test_topk_is_read_at_the_ste_l0_in_log_l0():
    sweep = pd.DataFrame(
        {
            "layer": 3,
            "condition": "mixed",
            "k": [16, 16, 64, 64],
            "seed": [0, 1, 0, 1],
            "l0": [16.0, 16.0, 64.0, 64.0],
            "bal_acc": [0.80, 0.82, 0.90, 0.90],
        }
    )
    points = pd.DataFrame(
        {"arch": ["jumprelu_ste"] * 2, "seed": [0, 1], "l0": [32.0, 32.0], "bal_acc": [0.88, 0.86]}
    )
    m = at_matched_l0(sweep, points)
    assert m["inside"] and m["ste_l0"] == 32.0
    assert np.isclose(m["topk_bal_acc_at_ste_l0"], 0.855)  # halfway in log L0 between 0.81 and 0.90
    assert "+1.5 points at matched sparsity" in describe(sweep, points, 3, "mixed")
    far = points.assign(l0=500.0)
    assert "extrapolated" in describe(sweep, far, 3, "mixed")


def test_the_summary_counts_the_ste_saes_that_did_not_converge(tmp_path):
    import json

    from lib.core.rundir import RunDir
    from lib.report.summary import unconverged

    run = RunDir(tmp_path / "run")
    for sae_id, ok in [
        ("m_jumprelu_ste_L3_mixed", False),
        ("m_jumprelu_ste_L3_mixed_s1", True),
        ("m_jumprelu_ste_L5_mixed", False),
        ("m_topk_L3_mixed", False),
        ("not-an-sae-id", False),
    ]:
        (run.saes / sae_id).mkdir(parents=True)
        (run.saes / sae_id / "metrics.json").write_text(json.dumps({"converged": ok}))
    assert unconverged(run) == (2, 3)
    assert unconverged(run, "topk") == (1, 1)
