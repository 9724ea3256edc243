"""What a reader sees comes from one command: the README's results section equals what
``make publish`` renders from the committed summary, and every figure it shows is committed."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from lib.core.config import REPO_ROOT, load_config
from lib.report.publish import (
    TRAINER_BEGIN,
    TRAINER_END,
    TRAINER_FILE,
    TRAINER_RESULTS,
    figures_link,
    parse_trainer_results,
    read_published_summary,
    readme_section,
    render_results_markdown,
    render_trainer_markdown,
    replace_section,
    results_markers,
    section_file,
    shown_figures,
)

PUBLISHED = REPO_ROOT / "figures" / load_config("organism").figures_name
#: every published run: a folder of figures/ with a summary.csv
FOLDERS = sorted(p.parent.name for p in (REPO_ROOT / "figures").glob("*/summary.csv"))


@pytest.mark.parametrize("name", FOLDERS)
def test_readme_results_equal_the_render_of_the_committed_summary(name):
    folder = REPO_ROOT / "figures" / name
    facts = json.loads((folder / "facts.json").read_text())
    expected = render_results_markdown(
        read_published_summary(folder),
        facts,
        str(folder.relative_to(REPO_ROOT)),
        shown_figures(folder),
        figures_link(name),
    )
    assert readme_section(section_file(name).read_text(), *results_markers(name)) == expected


def test_the_real_models_are_published():
    assert {"organism", "smollm2-135m-instruct"} <= set(FOLDERS)


@pytest.mark.parametrize("name", FOLDERS)
def test_every_figure_the_readme_shows_is_committed_in_both_formats(name):
    section = readme_section(section_file(name).read_text(), *results_markers(name))
    shown = re.findall(r"\]\(([^)]+\.png)\)", section)
    folder = REPO_ROOT / "figures" / name
    # every README figure the run has (a run without leakage SAEs or wording controls lacks those)
    link = figures_link(name)  # relative to the file the section is in (docs/ or the README)
    assert shown == [f"{link}/{s}.png" for s in shown_figures(folder)]
    assert f"{link}/layer_profile.png" in shown
    for png in shown:  # every link resolves from the section's own file, as GitHub reads it
        assert (section_file(name).parent / png).exists(), png
    for png in shown:
        path = (section_file(name).parent / png).resolve()
        assert path.exists() and path.with_suffix(".pdf").exists(), png


def test_a_changed_summary_changes_the_section():
    """The check above can fail: a different summary renders to a different section."""
    summary = read_published_summary(PUBLISHED)
    facts = json.loads((PUBLISHED / "facts.json").read_text())
    edited = summary.copy()
    edited.iloc[0, 2] = "L99 of 100"
    a = render_results_markdown(summary, facts, "figures/organism")
    b = render_results_markdown(edited, facts, "figures/organism")
    assert a != b and "L99 of 100" in b
    text = replace_section(section_file("organism").read_text(), b)
    assert readme_section(text) == b


def test_published_summary_keeps_not_available_as_text():
    summary = read_published_summary(PUBLISHED)
    assert isinstance(summary, pd.DataFrame) and not summary.isna().any().any()


def test_readme_without_markers_is_an_error():
    with pytest.raises(
        ValueError, match="README has no generated section .*results:organism:begin"
    ):
        readme_section("# a README without the markers\n")


def test_readme_trainer_section_equals_the_render_of_the_committed_benchmark():
    section = readme_section(TRAINER_FILE.read_text(), TRAINER_BEGIN, TRAINER_END)
    assert section == render_trainer_markdown(TRAINER_RESULTS.read_text())


def test_trainer_results_are_parsed_line_by_line():
    text = "\n".join(
        [
            "# bench_sae_train 2026-01-02 host x86_64 nproc 2 load 1.0 2.0",
            "ratio_vs_saelens topk 4.5",
            "converged topk steps 10 l0_ours 16 fvu_ours 0.25 l0_saelens 16 fvu_saelens 0.26 "
            "seconds_to_target_ours 1 seconds_to_target_saelens 2",
            "# goal topk >= 3.0x SAELens: 4.5x met",
        ]
    )
    r = parse_trainer_results(text)
    assert r[("ratio_vs_saelens", "topk")] == {"ratio": 4.5}
    assert r[("converged", "topk")]["fvu_saelens"] == 0.26 and r["goals"] == [
        "topk >= 3.0x SAELens: 4.5x met"
    ]
    md = render_trainer_markdown(text)
    assert "measured 2026-01-02 on x86_64, 2 cores" in md
    assert "| `topk` | 4.50x | n/a | n/a | 0.25 vs 0.26 (16 vs 16), 10 steps | 1 vs 2 | n/a |" in md
    assert "| `jumprelu` | n/a |" in md  # missing lines say so
    matched = text + (
        "\nconverged jumprelu steps 10 l0_ours 120 fvu_ours 0.1 l0_saelens 124 fvu_saelens 0.09 "
        "seconds_to_target_ours 1 seconds_to_target_saelens 2"
        "\nmatched_l0 jumprelu l0 124 fvu_ours 0.091 fvu_saelens 0.09"
    )
    assert "(120 vs 124), 10 steps; at L0 124: 0.091 vs 0.09 |" in render_trainer_markdown(matched)


def test_the_book_time_is_the_last_whole_grid_that_ran_everything(tmp_path):
    from lib.core.fileio import append_jsonl
    from lib.core.rundir import RunDir
    from lib.report.publish import whole_book_time

    run = RunDir(tmp_path / "r")
    assert whole_book_time(run) is None
    base = {"workers": 2, "host": {}, "load_avg": [1, 1, 1], "finished": "2026-12-06"}
    rows = [
        {**base, "seconds": 700, "only": None, "done": 10, "skipped": 0, "failed": 0},
        {**base, "seconds": 50, "only": None, "done": 2, "skipped": 8, "failed": 0},  # a resume
        {**base, "seconds": 9, "only": ["10"], "done": 1, "skipped": 0, "failed": 0},  # one cell
        {**base, "seconds": 300, "only": None, "done": 9, "skipped": 0, "failed": 1},
    ]
    append_jsonl(run.result("grid_runs.jsonl"), rows)
    assert whole_book_time(run)["seconds"] == 700


def test_the_power_table_and_paragraph_equal_the_render_of_the_committed_simulation():
    from lib.report import power_text as pt
    from lib.report.publish import README

    power = pt.read_power()
    table = readme_section(
        pt.POWER_TABLE_FILE.read_text(), pt.POWER_TABLE_BEGIN, pt.POWER_TABLE_END
    )
    assert table == pt.render_power_table(power)
    prose = readme_section(README.read_text(), pt.POWER_PROSE_BEGIN, pt.POWER_PROSE_END)
    assert prose == pt.render_power_prose(power)
    assert table.count("\n") == len(power) + 1  # a header, a rule and one line per row


def test_the_host_spread_sentence_equals_the_render_of_the_committed_comparison():
    import pandas as pd

    from lib.report import host_spread as hs
    from lib.report.publish import README

    spread = pd.read_csv(hs.SPREAD_RESULTS)
    text = readme_section(README.read_text(), hs.SPREAD_BEGIN, hs.SPREAD_END)
    assert text == hs.render_spread(spread)
    assert int(spread.identical.iloc[0]) <= int(spread.completions.iloc[0])


def test_the_run_directory_table_of_the_docs_is_the_render_of_the_layout():
    from lib.core.rundir import LAYOUT, render_layout
    from lib.report.publish import LAYOUT_BEGIN, LAYOUT_END, LAYOUT_FILE

    table = readme_section(LAYOUT_FILE.read_text(), LAYOUT_BEGIN, LAYOUT_END)
    assert table == render_layout()
    paths = [p for p, _, _ in LAYOUT]
    assert "`activations/prompt_last.safetensors`" in paths and len(set(paths)) == len(paths)


def test_the_speed_section_equals_the_render_of_the_committed_benchmarks():
    from lib.report import speed_text as st

    text = readme_section(st.SPEED_FILE.read_text(), st.SPEED_BEGIN, st.SPEED_END)
    assert text == st.render_committed()
    _, sampler = st.parse_lines(st.SAMPLER_RESULTS.read_text())
    assert {k for k, _ in sampler} == {"sampler", "bf16"}  # the lines issue 22 fixes
    assert set(sampler[("sampler", "SmolLM2-135M-Instruct.Q4_1")]) == {
        "ours_tok_s",
        "generate_tok_s",
        "ratio",
        "roofline_frac",
    }


def test_speed_lines_are_parsed_as_key_value_pairs():
    from lib.report.speed_text import parse_lines

    comments, rows = parse_lines("# head\nbf16 capture speedup 1.30 kernel amx\n")
    assert comments == ["head"] and rows == {
        ("bf16", "capture"): {"speedup": "1.30", "kernel": "amx"}
    }
    with pytest.raises(ValueError, match="kind"):
        parse_lines("bf16 capture speedup\n")
