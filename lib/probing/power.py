"""What the book's verdicts can detect: power, false-positive rates and coverage by simulation.

Every verdict of the book is the paired test of :func:`lib.core.stats.paired_seed_test` under
Holm within its family, classed by :func:`lib.core.stats.verdict_class`. This module measures,
on simulated probes whose truth is planted, how often that machinery

* finds a planted advantage (**power**), after Holm over a family of the book's size;
* calls a difference where there is none (**false-positive rate**, family-wise);
* covers the true difference with its 95% interval (**coverage**), in particular under held-out
  scenarios, where the completions come in a few clusters;
* says ``equivalent`` when two probes are equally good;
* estimates the best layer's accuracy without the optimism of choosing it on the same data.

The simulated probes: every completion has a label and a reading ``z`` that all probes share
(the label's signal plus completion noise, as probes of one model share most of their errors);
a probe adds its own noise. Completions come in scenarios ("clusters") that differ in their
deception rate, in a shift every probe sees, and in a shift each probe sees on its own (a probe's
calibration differs by scenario under held-out folds, which makes per-scenario differences vary:
what a cluster interval must carry). Equal probes are exchangeable, so under the null the true
difference is exactly 0; a planted advantage lowers one probe's own noise.

``python -m lib.probing.power [--reps N] [--out FILE]`` prints the table (markdown) and writes it as
CSV; ``make bench`` runs it (``tests/benchmarks/bench_power.py``) and the README's method
section quotes it. The fast known-answer versions are in ``tests/unit/test_power.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core import stats
from lib.core.markdown import to_markdown
from lib.probing.probe import cv_folds
from lib.probing.solver import oof_scores_many

ALPHA = 0.05
#: the study's nine scenarios, and the 30 families of the version-2 scenarios
CLUSTER_COUNTS = (9, 30)


@dataclass(frozen=True)
class Design:
    """One simulated experiment: ``clusters`` scenarios of ``per_cluster`` completions on
    average (uniform between half and 1.5 times), probes whose own noise is ``probe_sd``."""

    clusters: int = 9
    per_cluster: int = 40
    signal: float = 1.0
    completion_sd: float = 0.75
    scenario_shift_sd: float = 0.6
    probe_scenario_sd: float = 0.4
    probe_sd: float = 0.5


def simulate(design: Design, rng: np.random.Generator, probes: list[float]):
    """``(y, cluster, scores)``: labels, cluster ids and one ``[n]`` score vector per probe, each
    probe's own noise scaled by its entry of ``probes`` (1.0 = the design's ``probe_sd``)."""
    g = design.clusters
    sizes = rng.integers(design.per_cluster // 2, design.per_cluster * 3 // 2 + 1, g)
    cluster = np.repeat(np.arange(g), sizes)
    rate = np.clip(rng.beta(2, 2, g), 0.1, 0.9)
    y = (rng.uniform(size=cluster.size) < rate[cluster]).astype(int)
    for c in range(g):  # every scenario has both labels (as the book's decided scenarios do)
        idx = np.flatnonzero(cluster == c)
        y[idx[0]], y[idx[1]] = 1, 0
    shift = design.scenario_shift_sd * rng.standard_normal(g)
    z = (2 * y - 1) * design.signal + shift[cluster]
    z = z + design.completion_sd * rng.standard_normal(y.size)
    scores = []
    for scale in probes:
        own = design.probe_scenario_sd * rng.standard_normal(g)
        noise = design.probe_sd * scale * rng.standard_normal(y.size)
        scores.append(z + own[cluster] + noise)
    return y, cluster, scores


def simulate_features(
    design: Design, rng: np.random.Generator, layers: list[float], d: int = 32, sd: float = 1.5
):
    """``(y, cluster, features)``: like :func:`simulate`, but each "layer" is a matrix ``[n, d]``
    that a probe must be *fitted* to: the completions' shared reading ``z`` along a random unit
    direction plus isotropic noise of SD ``sd`` times the layer's entry of ``layers`` (1.0 =
    every layer alike). A probe fitted by cross-validation then carries the variance of its own
    fit, which score-level simulations leave out."""
    y, cluster, (z,) = simulate(design, rng, [0.0])
    out = []
    for scale in layers:
        u = rng.standard_normal(d)
        u /= np.linalg.norm(u)
        out.append(np.outer(z, u) + sd * scale * rng.standard_normal((y.size, d)))
    return y, cluster, out


def _fitted(
    design: Design, rng: np.random.Generator, layers: list[float], r: int, correction: bool
):
    """One simulated experiment with probes fitted by the book's CV: ``(y, clusters, S, f)``, the
    out-of-fold scores ``S`` ``[L, n]`` of every layer of :func:`simulate_features`, the clusters
    under held-out folds (else None) and the fit-variance factor ``f`` the book would use (1.0
    without ``correction``)."""
    y, cluster, X = simulate_features(design, rng, layers)
    clusters = cluster if design.clusters > 1 else None
    folds = cv_folds(y, clusters, "scenario" if clusters is not None else "stratified", r)
    S = np.stack([oof_scores_many(x, y, folds)[:, 0] for x in X])
    f = stats.cv_fit_inflation(len(np.unique(folds))) if correction else 1.0
    return y, clusters, S, f


def _correction_name(correction: bool) -> str:
    return "Nadeau-Bengio" if correction else "no fit variance"


def fitted_best_set(
    design: Design, reps: int, correction: bool, layers: list[float] | None = None, seed: int = 0
) -> dict:
    """The best-layer set with probes fitted by the book's CV (its solver, its folds).

    ``layers`` all 1.0 (default: 8 equal layers): the false-positive rate, how often some layer
    is called "below". Otherwise the layers with the largest entry are worse (noisier): the
    power, the mean share of them called below, with ``effect`` their mean gap in points.
    ``correction``: Nadeau and Bengio's fit-variance factor
    (:func:`lib.core.stats.cv_fit_inflation`) as the book uses it, or none."""
    layers = layers or [1.0] * 8
    worse = np.asarray(layers) > min(layers)
    rng = np.random.default_rng(seed)
    hits, found, gap = 0, 0.0, 0.0
    for r in range(reps):
        y, clusters, S, f = _fitted(design, rng, layers, r, correction)
        below = stats.best_set_pvalues(y, S, clusters, n_boot=1000, seed=r, fit_inflation=f) < ALPHA
        hits += bool(np.any(below[~worse]))
        if worse.any():
            found += below[worse].mean()
            acc = np.array([stats.balanced_accuracy(y, s) for s in S])
            gap += acc[~worse].mean() - acc[worse].mean()
    name = "best set, fitted probes, " + _correction_name(correction)
    if not worse.any():
        return _row("layer below peak", design, name, 0.0, "false-positive rate", hits, reps)
    effect = round(float(100 * gap / reps), 1)  # points of balanced accuracy, mean over runs
    # the mean share of worse layers found, with the binomial Monte-Carlo error of _row's rates
    return _row(
        "layer below peak", design, name, effect, "power (share of worse layers)", found, reps
    )


def fitted_vs_baseline(
    design: Design, reps: int, correction: bool, layers: int = 7, seed: int = 0
) -> dict:
    """The layer-vs-wording tests with probes fitted by the book's CV: ``layers`` layers as good
    as the baseline (one more equal feature matrix), each tested against it by
    :func:`lib.core.stats.paired_seed_test` with Holm over the layers, as notebook 05 counts
    "beats text": the family-wise rate of any layer called different from it. ``correction``
    as in :func:`fitted_best_set`."""
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        y, clusters, S, f = _fitted(design, rng, [1.0] * (layers + 1), r, correction)
        p = [
            stats.paired_seed_test(y, s, S[0], 1000, r, clusters, fit_inflation=f)["p_value"]
            for s in S[1:]
        ]
        hits += bool(np.any(stats.holm(p) < ALPHA))
    name = f"{layers} layers vs the baseline, fitted probes, Holm, " + _correction_name(correction)
    return _row(
        "layer vs wording", design, name, 0.0, "family-wise false-positive rate", hits, reps
    )


def _first(sim):
    """``(y, scores of the first probe)`` of a :func:`simulate` result."""
    y, _, scores = sim
    return y, scores[0]


def _rate(hits: float, reps: int) -> tuple[float, float]:
    p = hits / reps
    return p, float(np.sqrt(max(p * (1 - p), 1 / reps) / reps))


def coverage(design: Design, cluster_design: str, reps: int, seed: int = 0) -> dict:
    """Share of 95% intervals of the held-out (clustered) paired test that contain the true
    difference 0, for two equally good probes; its complement is the test's false-positive rate.
    """
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        y, cluster, (a, b) = simulate(design, rng, [1.0, 1.0])
        t = stats.paired_seed_test(
            y, a, b, 1000, r, clusters=cluster, cluster_design=cluster_design
        )
        hits += t["ci_low"] <= 0 <= t["ci_high"]
    return _row("held-out interval", design, cluster_design, 0.0, "coverage", hits, reps)


def below_peak_null(design: Design, method: str, reps: int, layers: int = 8, seed: int = 0):
    """Eight equally good layers: how often is some layer called "below the peak"? That is the
    family-wise false-positive rate of the peak region. ``method``: ``best_set`` (the book's:
    :func:`lib.core.stats.best_set_pvalues`), or every layer tested against the sample peak with
    Holm (the book's rule before, ``percentile`` or ``jackknife_t`` under held-out scenarios).
    """
    rng = np.random.default_rng(seed)
    wrong = 0
    for r in range(reps):
        y, cluster, scores = simulate(design, rng, [1.0] * layers)
        clusters = cluster if design.clusters > 1 else None
        if method == "best_set":
            p = stats.best_set_pvalues(y, np.stack(scores), clusters, n_boot=1000, seed=r)
            wrong += bool(np.any(p < ALPHA))
            continue
        acc = [stats.balanced_accuracy(y, s) for s in scores]
        peak = int(np.argmax(acc))
        p = [
            stats.paired_seed_test(
                y, scores[peak], s, 1000, r, clusters=clusters, cluster_design=method
            )["p_value"]
            for i, s in enumerate(scores)
            if i != peak
        ]
        wrong += bool(np.any(stats.holm(p) < ALPHA))
    name = "best set" if method == "best_set" else f"vs sample peak, {method}"
    return _row("layer below peak", design, name, 0.0, "false-positive rate", wrong, reps)


def peak_optimism(design: Design, reps: int, layers: int = 8, seed: int = 0) -> list[dict]:
    """Eight equally good layers: the mean error of the peak's balanced accuracy when the peak is
    chosen and scored on the same completions (the maximum's optimism) and when it is chosen on
    one half of the scenarios and scored on the other, both ways
    (:func:`lib.core.stats.split_sample_peak`).
    The truth is each probe's accuracy on a large sample of the same design."""
    rng = np.random.default_rng(seed)
    big = Design(**{**design.__dict__, "clusters": 400})
    # the truth: a probe's expected balanced accuracy, averaged over 40 large draws (one draw's
    # own error, about half a point, would otherwise sit in every row)
    truth = float(
        np.mean([stats.balanced_accuracy(*_first(simulate(big, rng, [1.0]))) for _ in range(40)])
    )
    same, split = [], []
    for _ in range(reps):
        y, cluster, scores = simulate(design, rng, [1.0] * layers)
        acc = [stats.balanced_accuracy(y, s) for s in scores]
        same.append(max(acc) - truth)
        split.append(stats.split_sample_peak(y, np.stack(scores), cluster, rng)["bal_acc"] - truth)
    rows = []
    for name, err in (("chosen and scored on the same data", same), ("split sample", split)):
        err = np.asarray(err)
        rows.append(
            {
                "family": "peak accuracy",
                "design": f"{design.clusters} scenarios, {name}",
                "effect": 0.0,
                "measure": "mean error (points)",
                "value": round(100 * float(err.mean()), 2),
                "mc_error": round(100 * float(err.std(ddof=1) / np.sqrt(len(err))), 2),
                "reps": reps,
            }
        )
    return rows


def sae_family(effect_sd: float, reps: int, family: int = 12, n: int = 300, seed: int = 0):
    """SAE vs raw under stratified folds, the book's design: one cell of a family of ``family``
    holds an SAE probe with 3 seeds whose own noise is ``effect_sd`` of the raw probe's (1.0 = the
    null: equally good), the other cells are null; the seed spread is pooled over the family.
    Power (planted) or family-wise false-positive rate (null) after Holm."""
    rng = np.random.default_rng(seed)
    b = stats.resamples_for_family(500, family)
    design = Design(clusters=1, per_cluster=n)
    seed_sd = 0.15  # each training seed's own noise
    # the SAE's own noise per seed is 0.8 * effect_sd, like the raw probe's 0.8 at effect_sd 1
    base_sd = np.sqrt(max((0.8 * effect_sd) ** 2 - seed_sd**2, 0.0))
    null = effect_sd == 1.0
    hits, deltas = 0, []
    for r in range(reps):
        y = rng.integers(0, 2, n)
        z = (2 * y - 1) * design.signal + design.completion_sd * rng.standard_normal(n)
        e = rng.standard_normal(y.size)
        raw = z + 0.8 * e

        def seeds(z=z, e=e, sd=base_sd):
            base = z + sd * (0.7 * e + np.sqrt(0.51) * rng.standard_normal(n))
            return np.stack([base + seed_sd * rng.standard_normal(n) for _ in range(3)])

        def null_seeds(z=z, e=e):
            return seeds(z, e, np.sqrt(0.8**2 - seed_sd**2))

        pooled = stats.pooled_seed_sd(
            [[stats.balanced_accuracy(y, s) for s in seeds()] for _ in range(family)]
        )
        t = stats.paired_seed_test(y, seeds(), raw[None], b, r, seed_sd_a=pooled)
        # the family's other cells are null cells, tested as the book tests them
        others = [
            stats.paired_seed_test(y, null_seeds(), raw[None], b, r + 1 + j, seed_sd_a=pooled)[
                "p_value"
            ]
            for j in range(family - 1)
        ]
        adjusted = stats.holm(np.r_[t["p_value"], others])
        if null:  # family-wise: any cell called different
            hits += bool(np.any(adjusted < ALPHA))
        else:  # power: the planted cell found, in its direction
            hits += bool(adjusted[0] < ALPHA and t["delta"] > 0)
        deltas.append(t["delta"])
    rate, mc = _rate(hits, reps)
    return {
        "family": "SAE vs raw",
        "design": f"stratified, n={n}, 3 seeds, Holm over {family}",
        "effect": round(100 * float(np.mean(deltas)), 1),
        "measure": "family-wise false-positive rate" if null else "power",
        "value": round(100 * rate, 1),
        "mc_error": round(100 * mc, 1),
        "reps": reps,
    }


def equivalence_rate(n: int, reps: int, seed: int = 0) -> dict:
    """Two equally good probes on ``n`` completions: how often the verdict is ``equivalent``
    within the book's margin (:data:`lib.core.stats.EQUIVALENCE_MARGIN`)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        one = Design(clusters=1, per_cluster=n, probe_scenario_sd=0.0)  # equal in expectation
        y, _, (a, b) = simulate(one, rng, [1.0, 1.0])
        t = stats.paired_seed_test(y, a, b, 1000, r)
        hits += stats.verdict_class(t["delta"], t["p_value"], t["eq_low"], t["eq_high"]) == (
            "equivalent"
        )
    rate, mc = _rate(hits, reps)
    return {
        "family": "equal probes",
        "design": f"stratified, n={n}",
        "effect": 0.0,
        "measure": "called equivalent",
        "value": round(100 * rate, 1),
        "mc_error": round(100 * mc, 1),
        "reps": reps,
    }


def _row(family, design: Design, method: str, effect, measure, hits: float, reps: int) -> dict:
    rate, mc = _rate(hits, reps)
    where = f"held-out, {design.clusters} scenarios" if design.clusters > 1 else "stratified"
    return {
        "family": family,
        "design": f"{where}, {method}",
        "effect": effect,
        "measure": measure,
        "value": round(100 * rate, 1),
        "mc_error": round(100 * mc, 1),
        "reps": reps,
    }


def simulation_table(reps: int = 400, progress: Callable[[str], None] | None = None):
    """Every row of the book's simulation table (values in percent or points)."""
    jobs: list[tuple[str, Callable[[], dict | list[dict]]]] = []
    for g in CLUSTER_COUNTS:
        d = Design(clusters=g, per_cluster=max(20, 360 // g))
        for method in ("percentile", "jackknife_t"):
            jobs.append((f"coverage {g} {method}", lambda d=d, m=method: coverage(d, m, reps)))
        for method in ("percentile", "jackknife_t", "best_set"):
            jobs.append(
                (
                    f"below peak {g} {method}",
                    lambda d=d, m=method: below_peak_null(d, m, max(reps // 2, 20)),
                )
            )
        jobs.append((f"peak {g}", lambda d=d: peak_optimism(d, reps)))
    strat = Design(clusters=1, per_cluster=360, probe_scenario_sd=0.0)
    jobs.append(("below peak stratified", lambda: below_peak_null(strat, "best_set", reps // 2)))
    fitted = Design(clusters=9, per_cluster=33)  # n ~ 300, as the organism's and SmolLM2's runs
    # the rows whose rates decide whether a test may report significance: 5x the replications,
    # so that their Monte-Carlo error is a few tenths of a point
    fit_reps = max(5 * reps, 20)
    for d in (Design(clusters=1, per_cluster=300, probe_scenario_sd=0.0), fitted):
        for corr in (False, True):
            jobs.append(
                (
                    f"fitted {d.clusters} {corr}",
                    lambda d=d, c=corr, n=fit_reps: fitted_best_set(d, n, c),
                )
            )
            jobs.append(
                (
                    f"fitted power {d.clusters} {corr}",
                    lambda d=d, c=corr, n=fit_reps: fitted_best_set(d, n, c, [1.0] * 4 + [2.0] * 4),
                )
            )
        for corr in (False, True):
            jobs.append(
                (
                    f"fitted wording {d.clusters} {corr}",
                    lambda d=d, c=corr, n=fit_reps: fitted_vs_baseline(d, n, c),
                )
            )
    jobs.append(("sae null", lambda: sae_family(1.0, max(reps // 8, 20))))
    for effect in (0.7, 0.5):
        jobs.append((f"sae {effect}", lambda e=effect: sae_family(e, max(reps // 8, 20))))
    for n in (400, 2000):
        jobs.append((f"equal {n}", lambda n=n: equivalence_rate(n, max(reps // 4, 20))))
    rows: list[dict] = []
    for name, job in jobs:
        if progress:
            progress(name)
        out = job()
        rows.extend(out if isinstance(out, list) else [out])
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.probing.power",
        description="Power, false-positive rates and coverage of the book's verdicts, simulated.",
    )
    parser.add_argument("--reps", type=int, default=400, help="replications per row (400)")
    parser.add_argument("--out", type=Path, help="also write the table as CSV here")
    args = parser.parse_args(argv)
    table = simulation_table(args.reps, progress=lambda s: print(f"... {s}", flush=True))
    print(to_markdown(table))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
