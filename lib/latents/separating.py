"""Which latents of one SAE carry deception, what they fire on (notebook 08).

For one SAE and the run's labels (:func:`analyse_sae`):

1. **Inputs on the SAE's own distribution.** :func:`lib.sae.codes.sae_features` encodes every
   response token and pools the codes per completion (``features.pooling``, default ``mean``;
   ``max`` is kept for examples). Token layout: ``tokens`` of ``activations/L{layer}.safetensors``
   holds the residual at every sampled response token, completion by completion in the row order
   of ``activations/index.json`` and in generation order inside a completion, so the token rows
   of a completion match its ``completion_token_ids`` in ``completions.jsonl`` one to one
   (checked here: a mismatch raises).
2. **Per-latent separation** (:mod:`lib.latents.auroc`): AUROC with a bootstrap CI, q-value,
   firing rate and mean per class, held-out-scenario AUROC.
3. **k-sparse probing** as SAEBench does it (:func:`k_sparse_table`): per CV fold, the k latents
   with the largest absolute difference of class means *on the training completions* feed the
   study's probe; beside it the dense SAE probe (every latent) and the raw probe (the pooled
   residual), both CV modes of :mod:`lib.probing.probe`, balanced accuracy with a bootstrap CI.
4. **Word control** (:mod:`lib.latents.word_control`): beside each latent's deception AUROC, its
   AUROC on "no"- vs "yes"-opening answers regardless of label and its deception AUROC within
   each answer word; a latent the word explains is named a *word latent* (``word_verdict``).
5. **Density and logit effects** (:mod:`lib.latents.effects`): the share of all response tokens
   of the run on which each latent fires, and (when the model's unembedding is given) the
   tokens each latent's decoder row promotes and suppresses.
6. **Examples** (:func:`select_examples`): for the top latents in both directions, the
   completions where the latent's largest token activation is highest, plus completions drawn
   from rank quantiles of that activation, each with its per-token activations and decoded
   tokens; and the histogram of the pooled value by class. Every other latent that fires on a
   labelled completion gets fewer (:data:`FEW_EXAMPLES`), so the dashboard reaches every one.

Files (per SAE, so the grid's parallel 08 cells never write one file together):
``results/latents/<sae_id>.csv`` (:data:`LATENTS_CSV_COLUMNS`), ``results/k_sparse/<sae_id>.csv``
(:data:`K_SPARSE_COLUMNS`), ``features/<sae_id>/report.json`` (top latents, examples, histograms,
keyed on everything they depend on, so a rerun does no work). They are notebook 08's outputs;
a reader that wants every SAE at once joins them with :func:`read_parts` (nothing writes a
combined copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.capture.labelled import Labelled, labelled_rows, pooled, read_layer
from lib.core import stats
from lib.core.config import RunConfig
from lib.core.fileio import RunDirError, atomic_write_text, read_jsonl
from lib.core.rundir import RunDir, file_stamp, fingerprint, read_cached, stable_seed, write_cached
from lib.core.runtime import torch_threads
from lib.core.vocabulary import CV_MODES, SAEKey
from lib.judging.judges import answer_word
from lib.latents.auroc import LATENT_COLUMNS, class_histograms, latent_table, top_latents
from lib.latents.effects import (
    activation_density,
    density_histogram,
    logit_effects,
    token_label,
    token_pieces,
)
from lib.latents.word_control import WORD_COLUMNS, verdict_counts, word_table
from lib.probing.probe import SOLVERS, cross_validate_folds, cv_folds, fold_problem
from lib.sae.codes import sae_features
from lib.sae.model import WEIGHTS_FILENAME, load_sae

CACHE_VERSION = 3  # 3: word-control verdicts by q-value
#: examples of a latent outside the top: (top examples, quantile bins, examples per bin)
FEW_EXAMPLES = (3, 2, 1)
#: promoted and suppressed tokens kept per latent
N_LOGITS = 10
#: the per-latent columns beyond :data:`lib.latents.auroc.LATENT_COLUMNS`
EXTRA_COLUMNS = ["density", *WORD_COLUMNS]
LATENTS_CSV_COLUMNS = [
    "sae_id",
    "latent",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "q_value",
    "rate_deceptive",
    "rate_honest",
    "mean_deceptive",
    "mean_honest",
    "loso_auroc",
    "label",
    "p_value",
    *EXTRA_COLUMNS,
]
K_SPARSE_COLUMNS = ["sae_id", "k", "cv", "bal_acc", "ci_low", "ci_high", "probe", "auroc", "n"]
K_SPARSE_COLUMNS += ["note"]


class LatentsError(RuntimeError):
    """An SAE that cannot be analysed (missing, or fed inputs off its training distribution)."""


def features_dir(run: RunDir, sae_id: str) -> Path:
    """``features/<sae_id>/``: the SAE's report and dashboard."""
    return run.feature_dir(sae_id)


def sae_layer(cfg: RunConfig, sae_id: str, sae=None) -> int:
    """The layer of an SAE: read from its id (:class:`SAEKey`), else its ``hook_layer`` metadata."""
    try:
        return SAEKey.parse(sae_id).layer
    except ValueError:
        pass
    meta = getattr(sae, "meta", None) or {}
    if "hook_layer" in meta:
        return int(meta["hook_layer"])
    raise LatentsError(
        f"SAE {sae_id!r}: not an id of the form {{model}}_{{arch}}_L{{layer}}_{{condition}}[_s{{seed}}] "
        "and no hook_layer in its metadata"
    )


# ----- k-sparse probing ---------------------------------------------------------------------------
def k_sparse_table(
    F: np.ndarray,
    X_raw: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    k_values: list[int],
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """k-sparse, dense-SAE and raw probes under both CV modes (columns :data:`K_SPARSE_COLUMNS`
    without ``sae_id``). ``F`` [n, d_sae] pooled codes, ``X_raw`` [n, d] pooled residuals.

    The top-k latents of each fold are ranked by ``|mean_deceptive - mean_honest|`` on that
    fold's training completions only; ``k`` of the dense row is ``d_sae``, of the raw row ``d``.
    ``bal_acc`` is as :func:`lib.probing.probe.value_columns` defines it; its CI is a stratified bootstrap
    of the pooled out-of-fold scores (as the layer profile's).
    """
    y = np.asarray(y).astype(np.int64)
    rows = []
    for mode in CV_MODES:
        problem = fold_problem(y, groups, mode)
        probes = [("k_sparse", k) for k in k_values if k <= F.shape[1]]
        probes += [("dense_sae", F.shape[1]), ("raw", X_raw.shape[1])]
        if problem:
            rows += [_k_row(p, k, mode, y, None, n_boot, seed, problem) for p, k in probes]
            continue
        folds = cv_folds(y, groups, mode)
        order = {}
        for f in np.unique(folds):
            tr = folds != f
            diff = np.abs(F[tr & (y == 1)].mean(0) - F[tr & (y == 0)].mean(0))
            order[f] = np.argsort(-diff, kind="stable")
        for probe, k in probes:
            if probe == "k_sparse":
                fn = lambda f, k=k, order=order: F[:, order[f][:k]]  # noqa: E731
            else:
                fn = lambda f, X=(F if probe == "dense_sae" else X_raw): X  # noqa: E731
            res = cross_validate_folds(fn, y, folds, mode, SOLVERS[mode])
            rows.append(_k_row(probe, k, mode, y, res, n_boot, seed, ""))
    return pd.DataFrame(rows, columns=K_SPARSE_COLUMNS[1:])


def _k_row(probe, k, mode, y, res, n_boot, seed, note) -> dict:
    nan = float("nan")
    lo = hi = nan
    if res is not None and n_boot > 0:
        lo, hi = stats.bootstrap_ci(y, res.scores, n_boot, seed)["bal_acc"]
    return {
        "k": int(k),
        "cv": mode,
        "bal_acc": res.value["bal_acc"] if res is not None else nan,
        "ci_low": lo,
        "ci_high": hi,
        "probe": probe,
        "auroc": res.value["auroc"] if res is not None else nan,
        "n": len(y),
        "note": note,
    }


# ----- examples -----------------------------------------------------------------------------------
def select_examples(
    fmax: np.ndarray,
    n_examples: int,
    n_quantiles: int,
    n_per_quantile: int,
    rng: np.random.Generator,
) -> list[tuple[int, str]]:
    """``(position, kind)`` of the example completions of one latent, from its per-completion
    largest token activation ``fmax`` [n]: the ``n_examples`` highest (``kind="top"``), then
    ``n_per_quantile`` drawn at random from each of ``n_quantiles`` equal-count rank bins of the
    completions where it fires (``kind="quantile q/Q"``, 1 = lowest), never repeating one."""
    firing = np.flatnonzero(fmax > 0)
    ranked = firing[np.argsort(-fmax[firing], kind="stable")]
    chosen = [(int(i), "top") for i in ranked[:n_examples]]
    taken = {i for i, _ in chosen}
    ascending = ranked[::-1]
    for q, part in enumerate(np.array_split(ascending, n_quantiles) if len(ascending) else []):
        left = [int(i) for i in part if int(i) not in taken]
        for i in rng.permutation(left)[:n_per_quantile]:
            chosen.append((int(i), f"quantile {q + 1}/{n_quantiles}"))
            taken.add(int(i))
    return chosen


def token_codes(sae, layer_data, rows: list[int], latents: list[int]) -> dict[int, np.ndarray]:
    """Activation row -> codes ``[T_row, len(latents)]`` of the selected latents at every response
    token of that completion (encoded in batches; only the selected columns are kept)."""
    owner = layer_data.token_owner
    want = torch.as_tensor(sorted(set(rows)), dtype=owner.dtype)
    idx = torch.nonzero(torch.isin(owner, want)).view(-1)
    cols = torch.as_tensor(latents, dtype=torch.long)
    parts = []
    with torch.no_grad(), torch_threads(1):
        for s in range(0, len(idx), 2048):
            parts.append(sae.encode(layer_data.tokens[idx[s : s + 2048]].float())[:, cols])
    codes = torch.cat(parts).numpy() if parts else np.zeros((0, len(latents)), np.float32)
    own = owner[idx].numpy()
    return {int(r): codes[own == r] for r in want.tolist()}


# ----- the report of one SAE ----------------------------------------------------------------------
@dataclass
class LatentReport:
    """Everything 08 shows about one SAE. ``table``: one row per latent
    (:data:`lib.latents.auroc.LATENT_COLUMNS`); ``k_sparse``: probe rows; ``top``: direction ->
    latent ids; ``examples``: latent -> example dicts (``id``, ``scenario``, ``label``, ``kind``,
    ``pooled``, ``max``, ``tokens``, ``acts``); ``histograms``: latent -> class histogram;
    ``labels``: latent -> auto-interpretation label; ``meta``: counts and input facts;
    ``logits``: latent -> ``{"top": [[token, value], ...], "bottom": [...]}`` (empty until
    :func:`add_logit_effects`); ``density_hist``: the SAE's log-density histogram."""

    sae_id: str
    layer: int
    table: pd.DataFrame
    k_sparse: pd.DataFrame
    top: dict[str, list[int]]
    examples: dict[int, list[dict]]
    histograms: dict[int, dict]
    meta: dict = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    key: str = ""  # the cache key of report.json (what the report was computed from)
    logits: dict[int, dict] = field(default_factory=dict)
    density_hist: dict = field(default_factory=dict)
    few: set[int] = field(default_factory=set)  # latents with FEW_EXAMPLES only

    def needs_examples(self, latents, few: bool = False) -> list[int]:
        """The ``latents`` without examples (``few``) or without the configured number of them."""
        return [
            int(i)
            for i in latents
            if int(i) not in self.examples or (not few and int(i) in self.few)
        ]

    @property
    def top_ids(self) -> list[int]:
        return self.top["deceptive"] + self.top["honest"]

    def top_table(self) -> pd.DataFrame:
        """The top latents' rows with their direction (and label when labelled)."""
        t = self.table.set_index("latent").loc[self.top_ids].reset_index()
        t.insert(
            1,
            "direction",
            ["deceptive"] * len(self.top["deceptive"]) + ["honest"] * len(self.top["honest"]),
        )
        t["label"] = [self.labels.get(int(i), "") for i in t["latent"]]
        return t

    def latents_csv(self) -> pd.DataFrame:
        t = self.table.copy()
        t.insert(0, "sae_id", self.sae_id)
        t["label"] = [self.labels.get(int(i), "") for i in t["latent"]]
        return t[LATENTS_CSV_COLUMNS]

    def payload(self) -> dict:
        return {
            "sae_id": self.sae_id,
            "layer": self.layer,
            "top": self.top,
            "examples": {str(k): v for k, v in self.examples.items()},
            "histograms": {str(k): v for k, v in self.histograms.items()},
            "meta": self.meta,
            "logits": {str(k): v for k, v in self.logits.items()},
            "density_hist": self.density_hist,
            "few_examples": sorted(self.few),
        }

    def firing_ids(self) -> list[int]:
        """Every latent that fires on a labelled completion, strongest separation first
        (``|auroc - 0.5|``, then q-value, then index): the dashboard's rank order."""
        t = self.table
        fires = (t["rate_deceptive"] > 0) | (t["rate_honest"] > 0)
        t = t[fires].assign(sep=(t["auroc"] - 0.5).abs())
        t = t.sort_values(["sep", "q_value", "latent"], ascending=[False, True, True])
        return [int(i) for i in t["latent"]]


def _cache_key(run: RunDir, cfg: RunConfig, sae_id: str, layer: int, lab: Labelled) -> str:
    fc = cfg.features.model_dump(mode="json")
    for k in ("autointerp", "autointerp_model", "autointerp_random", "saes"):
        fc.pop(k)
    sae_file = run.sae_dir(sae_id) / WEIGHTS_FILENAME
    return fingerprint(
        [CACHE_VERSION, sae_id, lab.stamp(), file_stamp(sae_file), fc, cfg.seed]
        + [file_stamp(run.activation_file(layer)), file_stamp(run.completions)]
    )


def analyse_sae(
    run: RunDir,
    cfg: RunConfig,
    sae_id: str,
    tokenizer,
    force: bool = False,
    unembed=None,
    all_examples: bool = True,
) -> LatentReport:
    """The :class:`LatentReport` of one SAE, computed once and cached (see the module docstring).

    ``tokenizer`` decodes example tokens (the run's model's tokenizer). ``unembed``: the
    model's ``W_U`` [d, vocab] (:func:`lib.latents.effects.unembedding`) for the logit effects
    (skipped when None). ``all_examples``: examples for every firing latent, not only the top.
    Raises :class:`LatentsError` for a missing SAE or inputs refused by :func:`sae_features`.
    """
    path = run.sae_dir(sae_id)
    if not (path / WEIGHTS_FILENAME).exists():
        raise LatentsError(f"{path} has no trained SAE; run 04_sae_training for {sae_id} first")
    sae = load_sae(path)
    layer = sae_layer(cfg, sae_id, sae)
    lab = labelled_rows(run, cfg)
    key = _cache_key(run, cfg, sae_id, layer, lab)
    out = features_dir(run, sae_id)
    parts = (run.result(f"latents/{sae_id}.csv"), run.result(f"k_sparse/{sae_id}.csv"))
    cached = None if force else read_cached(out / "report.json", key)
    if cached is not None and all(p.exists() for p in parts):
        report = _from_files(cached, parts)
    else:
        report = _compute(run, cfg, sae_id, sae, layer, lab, tokenizer)
        report.key = key
        write_report(run, report)
    changed = False
    if unembed is not None and not report.logits:
        add_logit_effects(report, sae, unembed, tokenizer)
        changed = True
    missing = report.needs_examples(report.firing_ids(), few=True) if all_examples else []
    if missing:
        extend_examples(run, cfg, report, missing, tokenizer, few=True, write=False)
        changed = True
    if changed:
        write_report(run, report)
    return report


def add_logit_effects(report: LatentReport, sae, unembed, tokenizer, k: int = N_LOGITS) -> None:
    """The ``k`` tokens each firing latent's decoder row promotes and suppresses most through
    the unembedding (:func:`lib.latents.effects.logit_effects`) into ``report.logits``."""
    ids = report.firing_ids()
    if not ids:
        return
    W_dec = sae.W_dec.detach().float()[torch.as_tensor(ids)]
    eff = logit_effects(W_dec, unembed, k)
    labels: dict[int, str] = {}

    def lab(t):
        t = int(t)
        if t not in labels:
            labels[t] = token_label(tokenizer, t) if tokenizer is not None else str(t)
        return labels[t]

    for r, lat in enumerate(ids):
        report.logits[lat] = {
            side: [
                [lab(t), round(float(v), 4)]
                for t, v in zip(eff[f"{side}_ids"][r], eff[f"{side}_values"][r], strict=True)
            ]
            for side in ("top", "bottom")
        }


def extend_examples(
    run: RunDir,
    cfg: RunConfig,
    report: LatentReport,
    latents,
    tokenizer,
    few: bool = False,
    write: bool = True,
) -> None:
    """Add examples and histograms of more ``latents`` (e.g. random ones for auto-interpretation)
    to ``report`` and rewrite its files (``write``); latents it already has are skipped. ``few``:
    :data:`FEW_EXAMPLES` per latent instead of the configured numbers (a latent that has only
    those gets the configured numbers when asked without ``few``)."""
    latents = report.needs_examples(latents, few)
    if not latents:
        return
    sae = load_sae(run.sae_dir(report.sae_id))
    lab = labelled_rows(run, cfg)
    data = read_layer(run, report.layer)
    pool = report.meta.get("pooling", cfg.features.pooling)
    feats = sae_features(sae, data, lab.rows, poolings=tuple(dict.fromkeys([pool, "max"])))
    F, fmax = feats.features[pool], feats.features["max"]
    for s in range(0, len(latents), 256):  # token codes of 256 latents at a time
        part = latents[s : s + 256]
        add_examples(report, run, cfg, sae, data, lab, F, fmax, part, tokenizer, few)
    if write:
        write_report(run, report)


def _compute(run, cfg, sae_id, sae, layer, lab, tokenizer) -> LatentReport:
    fc = cfg.features
    data = read_layer(run, layer)
    poolings = tuple(dict.fromkeys([fc.pooling, "max"]))
    feats = sae_features(sae, data, lab.rows, poolings=poolings)
    if not feats.ok:
        raise LatentsError(f"{sae_id}: {feats.note}")
    F, fmax = feats.features[fc.pooling], feats.features["max"]
    seed = stable_seed(cfg.seed, sae_id, "latents")
    table = latent_table(F, lab.y, lab.scenario, fc.n_bootstrap, seed)
    texts = {r["id"]: r["completion"] for r in read_jsonl(run.completions)}
    answers = np.array([answer_word(texts[i]) or "" for i in lab.ids], dtype=object)
    table["density"] = activation_density(sae, data.tokens)
    words = word_table(F, lab.y, answers, fc.n_bootstrap, stable_seed(seed, "words"))
    table = pd.concat([table, words], axis=1)
    X_raw = pooled(data, lab, "last" if fc.pooling == "last" else "mean")
    ks = k_sparse_table(F, X_raw, lab.y, lab.scenario, fc.k_values, fc.n_bootstrap, seed)
    ks.insert(0, "sae_id", sae_id)
    top = top_latents(table, fc.n_top)
    report = LatentReport(sae_id, layer, table, ks, top, {}, {})
    report.density_hist = density_histogram(table["density"].to_numpy())
    add_examples(report, run, cfg, sae, data, lab, F, fmax, report.top_ids, tokenizer)
    report.meta = {
        "n": len(lab),
        "n_deceptive": int(lab.y.sum()),
        "n_honest": int((lab.y == 0).sum()),
        "d_sae": int(sae.d_sae),
        "judge": lab.judge,
        "pooling": fc.pooling,
        "inputs": feats.inputs,
        "n_inputs": int(feats.n_inputs),
        "input_l0": float(feats.input_l0),
        "input_fvu": float(feats.input_fvu),
        "n_significant": int((table["q_value"] < 0.05).sum()),
        "n_tokens": int(len(data.tokens)),
        "answer_words": {w: int((answers == w).sum()) for w in ("no", "yes")},
        "word_verdicts": verdict_counts(table),
    }
    return report


def add_examples(report, run, cfg, sae, data, lab, F, fmax, latents, tokenizer, few=False) -> None:
    """Examples and histograms of ``latents`` into ``report`` (skips latents already there;
    ``few``: :data:`FEW_EXAMPLES` each)."""
    fc = cfg.features
    n_ex, n_q, n_per = FEW_EXAMPLES if few else (fc.n_examples, fc.n_quantiles, fc.n_per_quantile)
    latents = report.needs_examples(latents, few)
    if not latents:
        return
    completions = {r["id"]: r for r in read_jsonl(run.completions)}
    picks = {}
    for lat in latents:
        rng = np.random.default_rng(stable_seed(cfg.seed, report.sae_id, lat, "examples"))
        picks[lat] = select_examples(fmax[:, lat], n_ex, n_q, n_per, rng)
    rows = sorted({int(lab.rows[i]) for p in picks.values() for i, _ in p})
    codes = token_codes(sae, data, rows, latents)
    pieces: dict[int, list[str]] = {}
    for lat_col, lat in enumerate(latents):
        exs = []
        for i, kind in picks[lat]:
            row, cid = int(lab.rows[i]), lab.ids[i]
            comp = completions.get(cid)
            if comp is None:
                raise RunDirError(
                    f"completion {cid!r} is in the activations but not in {run.completions}"
                )
            ids = comp.get("completion_token_ids") or []
            if len(ids) != len(codes[row]):
                raise RunDirError(
                    f"{cid}: {len(codes[row])} token vectors in {run.activation_file(report.layer)} but "
                    f"{len(ids)} completion_token_ids in completions.jsonl; the token layout is broken: "
                    "rerun 03_activation_capture"
                )
            if row not in pieces:
                pieces[row] = (
                    token_pieces(tokenizer, ids) if tokenizer is not None else [str(t) for t in ids]
                )
            exs.append(
                {
                    "id": cid,
                    "scenario": str(lab.scenario[i]),
                    "label": "deceptive" if lab.y[i] == 1 else "honest",
                    "kind": kind,
                    "pooled": round(float(F[i, lat]), 5),
                    "max": round(float(fmax[i, lat]), 5),
                    "tokens": pieces[row],
                    "acts": [round(float(a), 4) for a in codes[row][:, lat_col]],
                }
            )
        report.examples[lat] = exs
        (report.few.add if few else report.few.discard)(lat)
        report.histograms[lat] = class_histograms(F[:, lat], lab.y, fc.histogram_bins)


def write_report(run: RunDir, report: LatentReport) -> None:
    """Write the per-SAE CSV parts, then ``features/<sae_id>/report.json`` (last: its key marks
    the whole report as complete)."""
    for name, df in (("latents", report.latents_csv()), ("k_sparse", report.k_sparse)):
        atomic_write_text(run.result(f"{name}/{report.sae_id}.csv"), df.to_csv(index=False))
    write_cached(features_dir(run, report.sae_id) / "report.json", report.key, report.payload())


def _from_files(cached: dict, parts) -> LatentReport:
    lat = pd.read_csv(parts[0], dtype={"label": object})
    labels = {int(i): s for i, s in zip(lat["latent"], lat["label"].fillna(""), strict=True) if s}
    table = lat[LATENT_COLUMNS + EXTRA_COLUMNS].fillna({"word_verdict": ""})
    return LatentReport(
        cached["sae_id"],
        cached["layer"],
        table,
        pd.read_csv(parts[1], dtype={"note": object}).fillna({"note": ""}),
        cached["top"],
        {int(k): v for k, v in cached["examples"].items()},
        {int(k): v for k, v in cached["histograms"].items()},
        cached["meta"],
        labels,
        cached["key"],
        {int(k): v for k, v in cached.get("logits", {}).items()},
        cached.get("density_hist", {}),
        set(cached.get("few_examples", [])),
    )


# ----- reading the per-SAE parts ---------------------------------------------------
def read_parts(run: RunDir, name: str, sae_ids: list[str] | None = None) -> pd.DataFrame:
    """``results/<name>/*.csv`` (``latents`` or ``k_sparse``) concatenated, in ``sae_ids`` order."""
    folder = run.result(name)
    files = sorted(folder.glob("*.csv")) if folder.exists() else []
    if sae_ids is not None:
        files = [folder / f"{s}.csv" for s in sae_ids if (folder / f"{s}.csv").exists()]
    if not files:
        raise RunDirError(f"{folder} has no per-SAE results; run 08_features first")
    return pd.concat(
        [pd.read_csv(f, dtype={"label": object, "note": object}) for f in files], ignore_index=True
    )
