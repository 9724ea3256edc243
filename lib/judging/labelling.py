"""The labelling stage (notebook 02) and what later stages read of the labels.

:func:`label_run` labels every completion of a run with each configured judge
(:mod:`lib.judging.judges`, :mod:`lib.judging.gemini`) and appends one row per (completion, judge) to
``labels.jsonl``. The helpers below it (:func:`labels_frame`, :func:`label_counts`,
:func:`condition_sizes`, :func:`judge_agreement`, :func:`planted_agreement`) are what the notebook
and later stages read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lib.core.config import JudgeConfig, RunConfig
from lib.core.fileio import RunDirError, append_jsonl, read_jsonl
from lib.core.rundir import RunDir, iter_batches, read_label_rows
from lib.core.runtime import progress as progress_bar
from lib.core.scenarios import load_scenarios
from lib.core.vocabulary import CONTROL_LABELS, DECISIVE, JUDGES, LABELS
from lib.judging.gemini import GeminiJudge, JudgeCache
from lib.judging.judges import FirstWordJudge, Judge, JudgeSummary, KeywordJudge
from lib.models.organism import planted_label as organism_planted_label


def make_judge(name: str, cfg: RunConfig | JudgeConfig, run: RunDir | None = None, **kw) -> Judge:
    """Build a configured judge. ``run`` gives the gemini judge its cache; ``kw`` overrides."""
    jc = cfg.judge if isinstance(cfg, RunConfig) else cfg
    if name == "keyword":
        return KeywordJudge(window=kw.pop("window", jc.keyword_window), **kw)
    if name == "first_word":
        return FirstWordJudge(**kw)
    if name == "gemini":
        opts = dict(
            model=jc.gemini_model,
            concurrency=jc.concurrency,
            max_retries=jc.max_retries,
            timeout_s=jc.timeout_s,
            retry_after_cap_s=jc.retry_after_cap_s,
            cache=JudgeCache(run.judge_cache("gemini")) if run is not None else None,
        )
        opts.update(kw)
        return GeminiJudge(opts.pop("model"), **opts)
    raise ValueError(f"unknown judge {name!r}; known: {list(JUDGES)}")


def label_run(
    run: RunDir,
    cfg: RunConfig,
    judges: Sequence[str | Judge] | None = None,
    progress: bool = True,
    batch_size: int | None = None,
) -> dict[str, JudgeSummary]:
    """Label every completion of ``run`` with each judge; append rows to ``labels.jsonl``.

    ``judges``: names (built from ``cfg.judge``) or ready :class:`Judge` objects; default
    ``cfg.judge.judges``. Every judge is built before any work, so a missing API key fails first.
    Resumable: a completion already labelled by the same judge version (and not failed) is
    skipped, so a plain rerun judges exactly the failed and the missing verdicts; rows are flushed
    per batch (a paid judge's answers are cached one by one as they arrive). Ends with one line
    per judge that still has failed verdicts. Returns one :class:`JudgeSummary` per judge.
    """
    run.require(run.completions, "01_sampling")
    completions = read_jsonl(run.completions)
    if not completions:
        raise RunDirError(f"{run.completions} is empty; rerun 01_sampling")
    scenarios = load_scenarios(cfg.scenario_path())
    unknown = sorted({c["scenario"] for c in completions} - set(scenarios))
    if unknown:
        raise RunDirError(
            f"{run.completions} has scenarios {unknown} that {cfg.scenario_path()} does not define"
        )
    built = [
        j if isinstance(j, Judge) else make_judge(j, cfg, run) for j in (judges or cfg.judge.judges)
    ]
    summaries: dict[str, JudgeSummary] = {}
    for judge in built:
        last = {k: r for k, r in read_label_rows(run).items() if k[1] == judge.name}
        done = {
            cid
            for (cid, _), r in last.items()
            if not r.get("failed")
            and r.get("model") == judge.model
            and r.get("prompt_version") == judge.prompt_version
        }
        todo = [c for c in completions if c["id"] not in done]
        judge.summary.skipped = len(completions) - len(todo)
        size = batch_size or (4 * judge.concurrency if isinstance(judge, GeminiJudge) else 256)
        t0 = time.perf_counter()
        bar = progress_bar(
            total=len(todo), desc=f"judge {judge.name}", on=progress, unit="completion"
        )
        for batch in iter_batches(todo, size):
            verdicts = judge.judge_many(
                [(scenarios[c["scenario"]], c["completion"]) for c in batch]
            )
            rows = [
                {
                    "id": c["id"],
                    "judge": judge.name,
                    "label": v.label,
                    "rationale": v.rationale,
                    "confidence": v.confidence,
                    "model": judge.model,
                    "prompt_version": judge.prompt_version,
                    "failed": v.failed,
                    **({"reason": v.reason} if v.failed else {}),
                }
                for c, v in zip(batch, verdicts, strict=True)
            ]
            append_jsonl(run.labels, rows)
            judge.summary.labelled += len(rows)
            bar.update(len(batch))
        bar.close()
        judge.summary.seconds = time.perf_counter() - t0
        failed = [
            r for (_, j), r in read_label_rows(run).items() if j == judge.name and r.get("failed")
        ]
        judge.summary.failed_verdicts = len(failed)
        if failed:
            print(
                f"{judge.name}: {len(failed)} of {len(completions)} verdicts failed; a plain rerun "
                "of 02_classification judges only those again"
            )
        summaries[judge.name] = judge.summary
    return summaries


def failed_verdicts(run: RunDir, cfg: RunConfig) -> pd.DataFrame:
    """Failed verdicts by judge and reason: ``judge``, ``reason``, ``n`` (most frequent first)."""
    rows = [
        {"judge": j, "reason": r.get("reason") or r.get("rationale", "")}
        for (_, j), r in read_label_rows(run).items()
        if r.get("failed") and j in cfg.judge.judges
    ]
    df = pd.DataFrame(rows, columns=["judge", "reason"])
    out = df.groupby(["judge", "reason"]).size().rename("n").reset_index()
    return out.sort_values(["judge", "n"], ascending=[True, False], ignore_index=True)


def failed_verdict_report(run: RunDir, cfg: RunConfig) -> str:
    """How many verdicts failed, per judge, and why (reasons grouped): notebook 02 prints it."""
    total = len(read_jsonl(run.completions))
    table = failed_verdicts(run, cfg)
    if table.empty:
        return f"failed verdicts: none ({total} completions, judges {cfg.judge.judges})"
    lines = []
    for judge, sub in table.groupby("judge", sort=False):
        n = int(sub["n"].sum())
        role = (
            f"primary; judge.max_failed_fraction = {cfg.judge.max_failed_fraction:g}"
            if judge == cfg.judge.primary
            else "not primary"
        )
        lines.append(f"failed verdicts of {judge} ({role}): {n} of {total}")
        lines += [f"  {int(r.n):>5} x {r.reason}" for r in sub.itertuples()]
    lines.append("a plain rerun of 02_classification judges only these again")
    return "\n".join(lines)


def summaries_frame(summaries: dict[str, JudgeSummary]) -> pd.DataFrame:
    """One row per judge: what :func:`label_run` did."""
    return pd.DataFrame([s.as_dict() for s in summaries.values()]).set_index("judge")


# ==== reading labels ===========================================================================
LABEL_COLUMNS = [
    "id",
    "scenario",
    "sample",
    "completion",
    "judge",
    "label",
    "confidence",
    "rationale",
    "model",
    "prompt_version",
    "failed",
]


def labels_frame(run: RunDir) -> pd.DataFrame:
    """Current labels joined with their completions: one row per (completion, judge).

    The last row written for a (completion, judge) pair wins, as in ``lib.capture.labelled.read_labels``.
    """
    run.require(run.labels, "02_classification")
    completions = {c["id"]: c for c in read_jsonl(run.completions)}
    rows = []
    for (cid, _), r in read_label_rows(run).items():
        c = completions.get(cid)
        if c is None:
            raise RunDirError(
                f"{run.labels} labels id {cid!r}, which {run.completions} does not hold; the labels "
                f"belong to another sampling: delete {run.labels} and rerun 02_classification"
            )
        rows.append(
            {
                "id": cid,
                "scenario": c["scenario"],
                "sample": c.get("sample"),
                "completion": c["completion"],
                "judge": r["judge"],
                "label": r["label"],
                "confidence": r.get("confidence"),
                "rationale": r.get("rationale", ""),
                "model": r.get("model"),
                "prompt_version": r.get("prompt_version"),
                "failed": bool(r.get("failed", False)),
            }
        )
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)


def _one_judge(labels: pd.DataFrame, judge: str) -> pd.DataFrame:
    sub = labels[labels["judge"] == judge]
    if sub.empty:
        raise ValueError(
            f"no labels from judge {judge!r}; judges present: {sorted(labels['judge'].unique())}"
        )
    return sub


def label_counts(labels: pd.DataFrame, judge: str, total: bool = False) -> pd.DataFrame:
    """Counts of each label per scenario (rows in order of first appearance), with a ``n`` column.

    ``total=True`` adds an ``all`` row.
    """
    sub = _one_judge(labels, judge)
    order = list(dict.fromkeys(sub["scenario"]))
    cols = list(LABELS) + [c for c in CONTROL_LABELS if c in set(sub["label"])]
    t = pd.crosstab(sub["scenario"], sub["label"]).reindex(index=order, columns=cols, fill_value=0)
    t.columns.name = None
    t["n"] = t[cols].sum(axis=1)
    if total:
        t.loc["all"] = t.sum(axis=0)
    return t.astype(int)


def condition_sizes(labels: pd.DataFrame, judge: str) -> dict[str, int]:
    """Completions each SAE training condition gets from ``judge``'s labels (ambiguous dropped)."""
    counts = _one_judge(labels, judge)["label"].value_counts()
    d, h = int(counts.get("deceptive", 0)), int(counts.get("honest", 0))
    return {"mixed": d + h, "deceptive_only": d, "honest_only": h}


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str] = LABELS) -> float:
    """Cohen's kappa of two raters over the same items; NaN when chance agreement is total."""
    if len(a) != len(b):
        raise ValueError(f"rater lengths differ: {len(a)} vs {len(b)}")
    if not len(a):
        return float("nan")
    idx = {lbl: i for i, lbl in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)))
    for x, y in zip(a, b, strict=True):
        m[idx[x], idx[y]] += 1
    n = m.sum()
    po = np.trace(m) / n
    pe = float((m.sum(axis=1) / n) @ (m.sum(axis=0) / n))
    if pe >= 1.0:
        return float("nan")
    return float((po - pe) / (1.0 - pe))


@dataclass
class Agreement:
    """How two judges agree on the completions both labelled."""

    judge_a: str
    judge_b: str
    n: int
    kappa: float  # over all labels (three; more where control prompts add theirs)
    percent_agree: float
    n_decisive_both: int  # completions both judges called deceptive or honest
    decisive_agree: float  # agreement on those (the study's "agreement on decisive samples")
    confusion: pd.DataFrame = field(repr=False)  # rows judge_a, columns judge_b


def judge_agreement(labels: pd.DataFrame, judge_a: str, judge_b: str) -> Agreement:
    a = _one_judge(labels, judge_a).set_index("id")["label"]
    b = _one_judge(labels, judge_b).set_index("id")["label"]
    both = a.index.intersection(b.index)
    a, b = a.loc[both], b.loc[both]
    # control prompts (version 2 scenario files) add their own labels
    cats = list(LABELS) + [c for c in CONTROL_LABELS if c in set(a) | set(b)]
    confusion = pd.crosstab(
        pd.Categorical(a, categories=cats), pd.Categorical(b, categories=cats), dropna=False
    )
    confusion.index.name, confusion.columns.name = judge_a, judge_b
    dec = a.isin(DECISIVE) & b.isin(DECISIVE)
    n_dec = int(dec.sum())
    return Agreement(
        judge_a,
        judge_b,
        len(both),
        cohen_kappa(list(a), list(b), cats),
        float((a.values == b.values).mean()) if len(both) else float("nan"),
        n_dec,
        float((a[dec].values == b[dec].values).mean()) if n_dec else float("nan"),
        confusion,
    )


@dataclass
class PlantedAgreement:
    """A judge against the organism's planted labels, on completions whose truth is decisive."""

    judge: str
    n: int  # completions labelled by the judge
    n_decisive: int  # of those, completions that start with a planted opener
    n_agree: int  # judge label == planted label
    n_judge_ambiguous: int  # decisive truth, judge said ambiguous
    agreement: float  # n_agree / n_decisive (ambiguous counts as a miss)
    agreement_when_decided: float  # among decisive truth the judge also decided
    confusion: pd.DataFrame = field(repr=False)  # rows planted truth, columns judge


def planted_agreement(
    labels: pd.DataFrame,
    judge: str = "keyword",
    planted: Callable[[str, str], str | None] | None = None,
) -> PlantedAgreement:
    """Agreement of ``judge`` with the organism's ground truth (``lib.models.organism.planted_label``)."""
    planted = planted or organism_planted_label
    sub = _one_judge(labels, judge)
    truth = [planted(s, c) for s, c in zip(sub["scenario"], sub["completion"], strict=True)]
    sub = sub.assign(truth=truth)
    dec = sub[sub["truth"].isin(DECISIVE)]
    agree = int((dec["truth"] == dec["label"]).sum())
    decided = dec[dec["label"].isin(DECISIVE)]
    confusion = pd.crosstab(
        pd.Categorical(dec["truth"], categories=DECISIVE),
        pd.Categorical(dec["label"], categories=LABELS),
        dropna=False,
    )
    confusion.index.name, confusion.columns.name = "planted", judge
    return PlantedAgreement(
        judge,
        len(sub),
        len(dec),
        agree,
        int((dec["label"] == "ambiguous").sum()),
        agree / len(dec) if len(dec) else float("nan"),
        float((decided["truth"] == decided["label"]).mean()) if len(decided) else float("nan"),
        confusion,
    )
