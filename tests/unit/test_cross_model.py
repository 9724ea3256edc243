"""Cross-model layer profiles (notebook 10): reading runs, the rising test, table and figure."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.transforms import Bbox

from lib.core.config import config_to_yaml, load_config
from lib.core.fileio import RunDirError
from lib.report.cross_model import (
    comparison_table,
    load_profiles,
    load_run_profile,
    plot_cross_model,
    relative_depth,
    rising_test,
)


def test_rising_test_exact_and_monte_carlo():
    up = np.linspace(0.55, 0.72, 8)
    r = rising_test(range(8), up, up - 0.01, up + 0.01)
    assert r["rho"] == pytest.approx(1.0) and r["p_perm"] == pytest.approx(1 / 40320)
    assert r["rho_low"] > 0.9 and r["monotonic"] and r["steps_up"] == 7
    assert r["verdict"] == "rising"
    # the same rise inside CIs of +-30 points is not evidence of a rise
    wide = rising_test(range(8), up, up - 0.3, up + 0.3)
    assert wide["rho_low"] < 0 and wide["verdict"] == "not rising"
    down = rising_test(range(8), up[::-1])
    assert down["rho"] == pytest.approx(-1.0) and down["p_perm"] == 1.0
    assert down["verdict"] == "not rising" and down["steps_up"] == 0
    # 22 layers: random orders, the observed one counted once
    r22 = rising_test(range(22), np.linspace(0.5, 0.7, 22), n_permutations=999)
    assert r22["p_perm"] == pytest.approx(1 / 1000) and r22["verdict"] == "rising"
    flat = rising_test(range(22), np.r_[np.full(11, 0.6), np.full(11, 0.59)], n_permutations=999)
    assert flat["rho"] < 0 and flat["verdict"] == "not rising"
    with pytest.raises(ValueError, match=">= 3 layers"):
        rising_test([0, 1], [0.5, 0.6])


def test_relative_depth():
    assert relative_depth(21, 22) == 1.0 and relative_depth(0, 12) == 0.0
    assert relative_depth([7, 14], 29).tolist() == [0.25, 0.5]


def _fake_run(root, name, config, n_layers, values, n=120):
    cfg = load_config(config, run_name=name)
    run = root / name
    (run / "results").mkdir(parents=True)
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    rows = []
    for cv, shift in (("stratified", 0.0), ("scenario", -0.05)):
        for layer, v in zip(range(n_layers), values, strict=True):
            for feature in ("last", "mean"):
                for metric in ("bal_acc", "auroc"):
                    val = v + shift + (0.02 if feature == "last" else 0)
                    rows.append(
                        dict(
                            layer=layer,
                            feature=feature,
                            cv=cv,
                            target="deception",
                            metric=metric,
                            value=val,
                            ci_low=val - 0.04,
                            ci_high=val + 0.04,
                            n=n,
                        )
                    )
    rows.append(
        dict(
            layer=0,
            feature="mean",
            cv="stratified",
            target="scenario",
            metric="bal_acc",
            value=0.99,
            ci_low=0.9,
            ci_high=1.0,
            n=n,
        )
    )
    pd.DataFrame(rows).to_csv(run / "results" / "layer_profile.csv", index=False)
    return run


def test_runs_are_read_and_labelled(tmp_path):
    _fake_run(tmp_path, "org", "organism", 8, np.linspace(0.6, 0.9, 8))
    _fake_run(
        tmp_path, "reh", "rehearsal", 22, np.full(22, 0.5) + 0.01 * np.sin(np.arange(22)), n=21
    )
    org, reh = load_profiles(["org", "reh"], runs_root=tmp_path)
    assert (org.kind, reh.kind) == ("organism", "random weights")
    assert "organism" in org.label and "random weights" in reh.label
    assert (org.n_layers, reh.n_layers, org.n, reh.n) == (8, 22, 120, 21)
    assert set(org.profile["cv"]) == {"stratified", "scenario"} and len(org.profile) == 16
    assert org.published is None and reh.published is None

    table = comparison_table([org, reh])
    assert list(table["run"]) == ["org", "org", "reh", "reh"]
    assert list(table["cv"]) == ["stratified", "scenario"] * 2
    first = table.iloc[0]
    assert (first["peak_layer"], first["peak_depth"]) == (7, 1.0)
    assert first["peak_bal_acc"] == pytest.approx(0.9) and first["verdict"] == "rising"
    assert (table[table.run == "reh"]["verdict"] == "not rising").all()

    fig = plot_cross_model([org, reh])
    assert len(fig.axes) == 2
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("random weights" in t and "(n=21)" in t for t in legend)
    assert any("organism" in t and "(n=120)" in t for t in legend)
    assert "`" not in fig._suptitle.get_text()
    # published peaks of the study's models are drawn on the stratified panel only
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert "TinyLlama-1.1B" in notes and "Phi-2~" in notes and not fig.axes[1].texts


def test_a_real_models_run_carries_the_published_peak(tmp_path):
    _fake_run(tmp_path, "tl", "tinyllama", 22, np.linspace(0.55, 0.72, 22))
    (tl,) = load_profiles(["tl"], runs_root=tmp_path)
    assert tl.kind == "model" and tl.published["peak_layer"] == 21
    row = comparison_table([tl], cv="stratified").iloc[0]
    assert (row["published_peak_layer"], row["published_bal_acc"]) == (21, 0.724)
    assert row["published_depth"] == 1.0 and row["published_profile"].startswith("monotonic rise")
    assert row["verdict"] == "rising"


def test_missing_run_files_are_named(tmp_path):
    with pytest.raises(
        RunDirError, match=r"config.yaml is missing; run any notebook for run 'nope'"
    ):
        load_run_profile("nope", tmp_path)
    run = _fake_run(tmp_path, "x", "organism", 8, np.linspace(0.6, 0.9, 8))
    (run / "results" / "layer_profile.csv").unlink()
    with pytest.raises(RunDirError, match="layer_profile.csv is missing; run 05_layer_profile"):
        load_run_profile("x", tmp_path)
    with pytest.raises(ValueError, match="runs is empty"):
        load_profiles([], tmp_path)


def test_a_run_with_one_probed_layer_is_untestable_not_an_error(tmp_path):
    _fake_run(tmp_path, "one", "organism", 1, [0.8])
    (one,) = load_profiles(["one"], runs_root=tmp_path)
    table = comparison_table([one])
    assert table["verdict"].str.startswith("untestable (fewer than 3 layers)").all()
    assert (table["steps"] == 0).all() and table["rho"].isna().all()
    assert table["peak_bal_acc"].iloc[0] == pytest.approx(0.8)
    plot_cross_model([one])  # draws a single point per cv mode


def test_published_peak_labels_do_not_overlap(tmp_path):
    _fake_run(tmp_path, "org", "organism", 8, np.linspace(0.6, 0.9, 8))
    fig = plot_cross_model(load_profiles(["org"], runs_root=tmp_path))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts]
    assert len(boxes) >= 9  # every published model is labelled (Qwen3 and Phi-4 sit side by side)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    ax = fig.axes[0]
    half = 2.5 * fig.dpi / 72  # half the published diamond (ms=5), in pixels
    diamonds = [
        Bbox.from_extents(x - half, y - half, x + half, y + half)
        for line in ax.get_lines()
        if line.get_marker() == "D"
        for x, y in ax.transData.transform(line.get_xydata())
    ]
    for box, diamond in itertools.product(boxes, diamonds):  # no label covers a peak
        assert not box.overlaps(diamond)
