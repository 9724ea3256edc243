"""Reading a run's captured activations joined with its labels.

Later stages (SAE training, probing) see completions only through :func:`labelled_rows`: the
completions the primary judge called ``deceptive`` or ``honest`` (ambiguous ones are dropped, as
in the study), in the row order of the activation files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lib.core.config import RunConfig
from lib.core.fileio import RunDirError, read_json, read_jsonl
from lib.core.rundir import RunDir, read_label_rows
from lib.core.scenarios import load_scenarios
from lib.core.vocabulary import CONDITION_CLASSES, DECEPTIVE, DECISIVE, HONEST


@dataclass
class LayerData:
    """One layer's capture: ``last``/``mean`` [N, d], ``tokens`` [T, d], ``token_owner`` [T]."""

    layer: int
    ids: list[str]
    last: torch.Tensor
    mean: torch.Tensor
    tokens: torch.Tensor
    token_owner: torch.Tensor

    @property
    def d(self) -> int:
        return int(self.last.shape[1])


@dataclass
class Labelled:
    """Decisive completions: ``rows`` index the activation files; ``y`` is 1 for deceptive."""

    ids: list[str]
    rows: np.ndarray
    y: np.ndarray
    scenario: np.ndarray
    judge: str

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, condition: str) -> np.ndarray:
        """Positions (into this object) of the completions a training condition uses."""
        return np.flatnonzero(np.isin(self.y, CONDITION_CLASSES[condition]))

    def stamp(self) -> list:
        """Everything a cached result computed from these completions depends on."""
        return [self.ids, self.y.tolist(), self.scenario.tolist(), self.judge]


def read_index(run: RunDir) -> dict:
    run.require(run.activation_index, "03_activation_capture")
    return read_json(run.activation_index)


def read_layer(run: RunDir, layer: int) -> LayerData:
    """Load one layer's activation file, checking it against ``activations/index.json``."""
    index = read_index(run)
    path = run.activation_file(layer)
    run.require(path, "03_activation_capture")
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunDirError(
            f"{path} is unreadable ({e}); delete it and rerun 03_activation_capture"
        ) from None
    need = {"last", "mean", "tokens", "token_owner"}
    if not need <= set(t):
        raise RunDirError(
            f"{path} lacks tensors {sorted(need - set(t))}; rerun 03_activation_capture"
        )
    n = len(index["ids"])
    if t["last"].shape[0] != n or t["mean"].shape[0] != n:
        raise RunDirError(
            f"{path} has {t['last'].shape[0]} rows but {run.activation_index} lists {n} completions; "
            "the files come from different captures: delete activations/ and rerun 03"
        )
    return LayerData(layer, list(index["ids"]), t["last"], t["mean"], t["tokens"], t["token_owner"])


def read_input_embeddings(run: RunDir) -> torch.Tensor | None:
    """``mean`` [N, d] of ``activations/input_embeddings.safetensors`` (rows in the activation
    files' order), or None for a run captured before the file existed."""
    if not run.input_embeddings.exists():
        return None
    try:
        return load_file(str(run.input_embeddings))["mean"]
    except (SafetensorError, OSError, KeyError) as e:
        raise RunDirError(
            f"{run.input_embeddings} is unreadable ({e}); delete it and rerun 03_activation_capture"
        ) from None


@dataclass
class PromptLast:
    """``activations/prompt_last.safetensors``: one vector per prompt and layer, and the prompt
    of every completion (rows in the activation files' order)."""

    vectors: dict[int, torch.Tensor]  # layer -> [P, d]
    prompt_of: torch.Tensor  # [N] index into the P prompts

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def per_completion(self, layer: int) -> np.ndarray:
        """``[N, d]``: every completion's prompt vector at ``layer`` (float32)."""
        return self.vectors[layer].float().numpy()[self.prompt_of.numpy()]


def read_prompt_last(run: RunDir) -> PromptLast:
    """:class:`PromptLast` of ``activations/prompt_last.safetensors`` (written by notebook 03)."""
    path = run.require(run.prompt_last, "03_activation_capture")
    try:
        data = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise RunDirError(
            f"{path} is unreadable ({e}); delete it and rerun 03_activation_capture"
        ) from None
    vectors = {int(k[1:]): v for k, v in data.items() if k.startswith("L")}
    return PromptLast(vectors, data["prompt_of"])


def read_labels(run: RunDir, judge: str) -> dict[str, str]:
    """``id -> label`` of one judge (the last row wins if a judge labelled an id twice)."""
    run.require(run.labels, "02_classification")
    return {cid: r["label"] for (cid, j), r in read_label_rows(run).items() if j == judge}


def scenario_groups(cfg: RunConfig):
    """``scenario id -> CV group``: the id itself, or its family under ``probe.groups: family``
    (so a held-out fold never trains on the swapped variant of the situation it tests)."""
    if cfg.probe.groups == "scenario":
        return lambda sid: sid
    families = {s.id: s.family for s in load_scenarios(cfg.scenario_path()).values()}
    return lambda sid: families.get(sid, sid)


def labelled_rows(run: RunDir, cfg: RunConfig, judge: str | None = None) -> Labelled:
    """Decisive completions of the primary judge, joined with the activation row order."""
    judge = judge or cfg.judge.primary
    index = read_index(run)
    labels = read_labels(run, judge)
    if not labels:
        raise RunDirError(f"{run.labels} has no labels from judge {judge!r}; run 02_classification")
    completions = {r["id"]: r for r in read_jsonl(run.completions)}
    unknown = [i for i in index["ids"] if i not in completions]
    if unknown:
        raise RunDirError(
            f"{run.activation_index} lists ids not in {run.completions} (e.g. {unknown[:3]}); "
            "the activations belong to another run: delete activations/ and rerun 03"
        )
    group = scenario_groups(cfg)
    ids, rows, y, scen = [], [], [], []
    for row, cid in enumerate(index["ids"]):
        lab = labels.get(cid)
        if lab in DECISIVE:
            ids.append(cid)
            rows.append(row)
            y.append(DECEPTIVE if lab == "deceptive" else HONEST)
            scen.append(group(completions[cid]["scenario"]))
    return Labelled(
        ids,
        np.asarray(rows, dtype=np.int64),
        np.asarray(y, dtype=np.int64),
        np.asarray(scen),
        judge,
    )


def pooled(layer: LayerData, labelled: Labelled, feature: str) -> np.ndarray:
    """``last`` or ``mean`` vectors of the labelled completions as float32 numpy [n, d]."""
    x = getattr(layer, feature)[torch.as_tensor(labelled.rows)]
    return x.float().numpy()


def token_vectors(layer: LayerData, rows: np.ndarray) -> torch.Tensor:
    """All completion-token vectors of the given activation rows, float32 [T', d]."""
    mask = torch.isin(layer.token_owner, torch.as_tensor(rows, dtype=layer.token_owner.dtype))
    return layer.tokens[mask].float()


def training_vectors(layer: LayerData, rows: np.ndarray, train_on: str) -> torch.Tensor:
    """The vectors an SAE trains on for the given activation rows: every completion token
    (``train_on="tokens"``) or one pooled vector per completion (``"last"`` / ``"mean"``)."""
    if train_on == "tokens":
        return token_vectors(layer, rows)
    return getattr(layer, train_on)[torch.as_tensor(rows, dtype=torch.long)].float()
