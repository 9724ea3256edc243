"""The paper figures say what they draw: every mark visible, every legend entry and caption
claim matching what is on the page (synthetic tables, no run needed)."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lib.figures import data_and_saes, latents, probing  # noqa: E402

ARCHS = ("topk", "jumprelu", "jumprelu_ste")
CONDS = ("mixed", "deceptive_only", "honest_only")
N = (120, 40, 80)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig) -> str:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts] + [ax.get_title(), ax.get_xlabel()]
    for leg in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        out += [t.get_text() for t in leg.get_texts()]
    return "\n".join(out)


def _profile(layers=range(8)):
    rows = []
    for cv, feature, layer in itertools.product(
        ("stratified", "scenario"), ("last", "mean"), layers
    ):
        v = 0.8 + 0.01 * layer - (0.1 if cv == "scenario" else 0)
        rows.append(
            dict(
                layer=layer,
                feature=feature,
                cv=cv,
                metric="bal_acc",
                subset="all",
                value=v,
                ci_low=v - 0.05,
                ci_high=v + 0.05,
            )
        )
    for cv, b in itertools.product(("stratified", "scenario"), ("text", "first_tokens", "embed")):
        rows.append(
            dict(
                layer=np.nan,
                feature=b,
                cv=cv,
                metric="bal_acc",
                subset="all",
                value=0.9,
                ci_low=0.82,
                ci_high=0.98,
            )
        )
    return pd.DataFrame(rows)


def _sae_rows(layers=(2, 5), seeds=3):
    rows = []
    for layer, arch, cond, cv, seed in itertools.product(
        layers, ARCHS, CONDS, ("stratified", "scenario"), range(seeds)
    ):
        rows.append(
            dict(
                sae_source="grid",
                raw_feature="mean",
                layer=layer,
                arch=arch,
                condition=cond,
                cv=cv,
                seed_index=seed,
                bal_acc=0.85 + 0.001 * seed,
            )
        )
    return pd.DataFrame(rows)


def test_layer_profile_baselines_are_lines_and_every_sae_marker_has_its_own_place():
    fig = probing.plot_layer_profile(_profile(), "toy", sae=_sae_rows(), n=N)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert not any("filled / hollow" in t for t in legend)
    assert sum("filled" in t for t in legend) == 1 and sum("hollow" in t for t in legend) == 1
    assert len(legend) == len(set(legend))
    profile_axes, sae_ax = fig.axes[:2], fig.axes[2]
    for ax in profile_axes:  # the only bands are the raw CIs: no wide baseline band
        assert len(ax.collections) == 2
    # one marker per (layer, arch, condition, cv), each at its own x
    xs = [
        float(np.asarray(line.get_xdata())[0])
        for line in sae_ax.get_lines()
        if line.get_marker() not in (None, "None", "", " ") and len(line.get_xdata()) == 1
    ]
    assert len(xs) == 2 * len(ARCHS) * len(CONDS) * 2 and len(set(np.round(xs, 6))) == len(xs)


def _verdicts(verdict="inconclusive"):
    rows = []
    for (layer, arch, cond, cv), d in zip(
        itertools.product((2, 5), ARCHS, CONDS, ("stratified", "scenario")),
        np.linspace(-0.05, 0.06, 36),
        strict=True,
    ):
        rows.append(
            dict(
                sae_source="grid",
                layer=layer,
                arch=arch,
                condition=cond,
                cv=cv,
                delta=d,
                verdict=verdict,
            )
        )
    return pd.DataFrame(rows)


def test_sae_vs_raw_colours_every_cell_by_its_delta_even_when_nothing_is_significant():
    fig = probing.plot_sae_vs_raw(_verdicts(), "toy", n=N)
    faces = {p.get_facecolor() for ax in fig.axes[:2] for p in ax.patches}
    assert len(faces) > 10  # not one grey
    assert "0 of 18 cells significant" in _texts(fig)
    v = _verdicts()
    v.loc[0, "verdict"] = "loss"
    fig = probing.plot_sae_vs_raw(v, "toy", n=N)
    outlined = [p for p in fig.axes[0].patches if not p.get_fill()]
    assert len(outlined) == 1 and "Black outline" in _texts(fig)


def _ste(verdicts):
    rows = []
    for (layer, cond, cv), verdict in zip(
        itertools.product((2, 5), CONDS, ("stratified", "scenario")), verdicts, strict=True
    ):
        rows.append(
            dict(
                layer=layer,
                condition=cond,
                cv=cv,
                arch_b="topk",
                delta=0.01,
                ci_low=-0.02,
                ci_high=0.04,
                verdict=verdict,
                l0_a=90.0,
                l0_b=16.0,
            )
        )
    return pd.DataFrame(rows)


def test_ste_vs_topk_explains_a_star_only_when_one_is_drawn():
    fig = probing.plot_ste_vs_topk(_ste(["inconclusive"] * 12), "toy", n=N)
    text = _texts(fig)
    assert "star" not in text.lower() and "No paired test survives Holm" in text
    assert not [line for line in fig.axes[0].get_lines() if line.get_marker() == "*"]
    fig = probing.plot_ste_vs_topk(_ste(["win"] + ["inconclusive"] * 11), "toy", n=N)
    assert "Star:" in _texts(fig)
    assert len([line for line in fig.axes[0].get_lines() if line.get_marker() == "*"]) == 1


def test_leakage_says_the_cis_are_per_comparison_and_prints_holm():
    rows = []
    for layer, arch, cv in itertools.product((2, 5), ARCHS, ("stratified", "scenario")):
        rows.append(
            dict(
                layer=layer,
                arch=arch,
                condition="mixed",
                cv=cv,
                budget="150 steps",
                leakage=0.03,
                leakage_ci_low=0.005,
                leakage_ci_high=0.06,
                p_holm=0.2,
            )
        )
    fig = probing.plot_leakage(pd.DataFrame(rows), "toy", n=N)
    text = _texts(fig)
    assert "not adjusted" in text and "Holm" in text and "0 of 6" in text
    assert text.count("0.200") == 12


def test_sae_grid_shows_every_seed_inside_the_ticks():
    rows = []
    for layer, arch, cond, seed in itertools.product((2, 5), ARCHS, CONDS, range(3)):
        l0 = {"topk": 16.0, "jumprelu": 280.0, "jumprelu_ste": 95.0}[arch]
        rows.append(
            dict(
                layer=layer,
                architecture=arch,
                condition=cond,
                seed_index=seed,
                l0=l0,
                fvu=0.01 * (1 + ARCHS.index(arch)) + 1e-4 * seed,
            )
        )
    m = pd.DataFrame(rows)
    fig = data_and_saes.plot_sae_grid(m, "toy")
    ax = fig.axes[0]
    ticks = ax.get_xticks()
    assert ticks[0] <= m.l0.min() and ticks[-1] >= m.l0.max()
    lo, hi = ax.get_xlim()
    pts = [
        (x, y)
        for line in ax.get_lines()
        if line.get_linestyle() == "None"
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)
    ]
    assert len(pts) == 27 and len(set(pts)) == 27  # every seed its own point
    assert all(lo < x < hi for x, _ in pts)


def test_sae_grid_marks_the_saes_that_had_not_converged():
    rows = [
        dict(layer=2, architecture=arch, condition="mixed", seed_index=0, l0=l0, fvu=0.02,
             converged=arch != "jumprelu_ste")
        for arch, l0 in (("topk", 16.0), ("jumprelu", 280.0), ("jumprelu_ste", 95.0))
    ]  # fmt: skip
    fig = data_and_saes.plot_sae_grid(pd.DataFrame(rows), "toy")
    crosses = [line for line in fig.axes[0].get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == pytest.approx([95.0], rel=0.2)
    assert "1 of 3 SAEs had not converged" in _texts(fig)
    rows = [{**r, "converged": True} for r in rows]
    fig = data_and_saes.plot_sae_grid(pd.DataFrame(rows), "toy")
    assert "not converged" not in _texts(fig)


def test_label_geometry_has_integer_counts_and_no_blended_overlap():
    rng = np.random.default_rng(0)
    labels = np.array(["deceptive"] * 40 + ["honest"] * 60 + ["ambiguous"] * 10)
    x = rng.normal(size=(110, 16))
    x[:40, 0] += 3
    fig = data_and_saes.plot_label_geometry({0: x, 3: x * 2}, labels, "toy")
    for ax in fig.axes[1::2]:
        assert all(float(t).is_integer() for t in ax.get_yticks())
        assert all(not p.get_fill() for p in ax.patches)  # outlines only
    assert "AUROC" in _texts(fig)


def test_dose_response_keeps_swaps_off_the_alpha_axis_and_explains_the_judges():
    rows = []
    for judge in ("keyword", "organism_followup"):
        for d, a in itertools.product(
            ("diff_means", "random_0", "latent_x_L5_mixed_7"), (-1.0, 0.0, 1.0)
        ):
            rows.append(
                dict(
                    layer=5,
                    judge=judge,
                    direction=d,
                    alpha=a,
                    n=50,
                    deceptive_rate=0.3,
                    ci_low=0.2,
                    ci_high=0.4,
                )
            )
        for d in ("ablate_top5_x_L5_mixed", "reconstruction_x_L5_mixed"):
            rows.append(
                dict(
                    layer=5,
                    judge=judge,
                    direction=d,
                    alpha=1.0,
                    n=50,
                    deceptive_rate=0.3,
                    ci_low=0.2,
                    ci_high=0.4,
                )
            )
    fig = latents.plot_dose_response(pd.DataFrame(rows), 5, "toy")
    main = fig.axes[0]
    xs = [
        x
        for line in main.get_lines()
        for x in np.atleast_1d(line.get_xdata())
        if line.get_marker() not in (None, "None", "", " ")
    ]
    assert max(xs) <= 1.0  # nothing drawn at a made-up alpha
    text = _texts(fig)
    assert "follow-up judge" in text and "organism_followup" not in text
    assert "ablation" in text and "reconstruction" in text
