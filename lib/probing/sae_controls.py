"""The wording controls on SAE features (notebook 11): does an SAE probe read more than the word?

The controls of :mod:`lib.probing.wording_controls` (polarity transfer, same-word AUROC, the
answer word, falsehood, the neutral-calibrated monitor) run here on the mean-pooled codes of each
SAE of the grid instead of the raw residual stream, with the same folds, CIs and verdict rule.
An SAE sees only what its layer holds, so an SAE probe can pass where its layer does not only by
chance; the table says whether any does. Each SAE is probed on the inputs it was trained on
(:func:`lib.sae.codes.sae_features`: token codes pooled per completion for token-trained SAEs).
The first seed of every grid cell is used. Output: ``results/sae_wording_controls.csv``, one row
per SAE.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.core.config import RunConfig
from lib.core.fileio import atomic_write_text
from lib.core.rundir import RunDir
from lib.core.runtime import progress
from lib.probing.wording_controls import ALPHA, ControlSet, layer_controls, verdict


def sae_controls(
    run: RunDir, cfg: RunConfig, cs: ControlSet, n_boot: int = 500, seed: int = 0
) -> pd.DataFrame:
    """One row per grid cell's first-seed SAE (``sae_id``, ``layer``, ``arch``, ``condition``,
    every control with its interval, ``verdict``); SAEs not trained yet get a ``note`` and no
    controls. Written to ``results/sae_wording_controls.csv``; a rerun reads it back once every
    SAE of the grid was trained (a table with a missing SAE is computed again)."""
    from lib.capture.labelled import read_layer  # lazy: torch
    from lib.sae.codes import sae_features  # lazy: torch
    from lib.sae.model import is_complete, load_sae  # lazy: torch

    path = run.result("sae_wording_controls.csv")
    if path.exists():
        old = pd.read_csv(path)
        if not old["note"].fillna("").astype(str).str.len().any():
            return old
    cells = list(cfg.sae_grid())
    done = {c: is_complete(run.sae_dir(cfg.sae_id(*c, 0))) for c in cells}
    level = 1 - ALPHA / max(sum(done.values()), 1)  # Bonferroni over the SAEs that are tested
    rows = []
    for layer, arch, cond in progress(cells, desc="SAE controls", unit="SAE"):
        sae_id = cfg.sae_id(layer, arch, cond, 0)
        base = {"sae_id": sae_id, "layer": layer, "arch": arch, "condition": cond}
        folder = run.sae_dir(sae_id)
        if not done[(layer, arch, cond)]:
            rows.append({**base, "note": "not trained (run 04_sae_training)"})
            continue
        sae = load_sae(folder)
        feats = sae_features(sae, read_layer(run, layer), cs.rows, None, ("mean",))
        F = feats.features.get("mean") if feats.ok else None
        if F is None:
            rows.append({**base, "note": feats.note})
            continue
        X = np.asarray(F, dtype=np.float32)
        rows.append({**base, **layer_controls(X, cs, n_boot, level, seed), "note": ""})
    df = pd.DataFrame(rows)
    df["level"] = level
    if "transfer_direct_to_swapped" in df:
        ok = df["note"] == ""
        df.loc[ok, "verdict"] = df[ok].apply(verdict, axis=1)
    atomic_write_text(path, df.to_csv(index=False))
    return df


def describe(table: pd.DataFrame) -> str:
    """One sentence per run: how many SAE probes read deception beyond the words."""
    if table.empty or "verdict" not in table:
        return "No SAE of the grid could be put through the wording controls."
    done = table[table["verdict"].notna()]
    beyond = done[done["verdict"] == "beyond the words"]
    words = done[done["verdict"] == "the words"]
    if len(done) <= 4:
        detail = "; ".join(
            f"{r.arch} L{int(r.layer)} {r.condition}: transfer "
            f"{r.transfer_direct_to_swapped:.2f}/{r.transfer_swapped_to_direct:.2f}, same word "
            f"{r.same_word_no:.2f}/{r.same_word_yes:.2f}"
            for r in done.itertuples()
        )
    else:
        t = done[["transfer_direct_to_swapped", "transfer_swapped_to_direct"]].to_numpy(float)
        w = done[["same_word_no", "same_word_yes"]].to_numpy(float)
        detail = (
            f"polarity transfer {np.nanmin(t):.2f}-{np.nanmax(t):.2f}, same-word AUROC "
            f"{np.nanmin(w):.2f}-{np.nanmax(w):.2f} across them"
        )
    return (
        f"On SAE features (mean-pooled codes, first seed of each of {len(done)} SAEs): "
        f"{len(beyond)} read deception beyond the words, {len(words)} read the words "
        f"(polarity transfer below 0.5), {len(done) - len(beyond) - len(words)} inconclusive "
        f"({detail}; AUROC, Bonferroni over the SAEs)."
    )
