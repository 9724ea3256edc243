"""The study's published numbers and SAEs, read as data.

Two readers:

:func:`published_for`
    the study's published raw-probe results per model (``data/published.yaml``, keyed by a
    config's ``model_tag``), validated on read: peak layer, depth, balanced accuracy, AUROC, and
    for TinyLlama and Llama-3.2-1B the SAE claims.
:func:`load_published_sae`
    one of the study's SAEs in the format it published them in: a folder with ``cfg.json`` and
    ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae,
    d_in]``, ``b_dec [d_in]``, ``threshold [d_sae]``, the threshold present even where it is all
    zeros). It returns a :class:`lib.sae.model.SAE`, so published SAEs are probed by the same code as
    ours.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file

from lib.core.config import REPO_ROOT
from lib.core.vocabulary import Architecture, Condition
from lib.sae.model import SAE, SAEFormatError, read_cfg_json

PUBLISHED_FILE = REPO_ROOT / "data" / "published.yaml"


class PublishedDataError(ValueError):
    """``data/published.yaml`` (or another file given) is malformed; the message names the key."""


# ----- the published numbers ----------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BestSAE(_Strict):
    bal_acc: float = Field(..., ge=0, le=1)
    architecture: Architecture | None = None
    layer: int | None = Field(None, ge=0)
    condition: Condition | None = None


class Count(_Strict):
    count: int = Field(..., ge=0)
    of: int = Field(..., ge=1)

    @model_validator(mode="after")
    def _count_le_of(self) -> Count:
        if self.count > self.of:
            raise ValueError(f"count={self.count} is larger than of={self.of}")
        return self


class Gain(_Strict):
    layer: int = Field(..., ge=0)
    condition: Condition
    value: float


class SteVsTopk(_Strict):
    ste_wins: int = Field(..., ge=0)
    of: int = Field(..., ge=1)
    ste_mean_bal_acc: float = Field(..., ge=0, le=1)
    topk_mean_bal_acc: float = Field(..., ge=0, le=1)
    gain_pp: Gain | None = None


class Profile(_Strict):
    shape: Literal["monotonic_rise"]
    from_layer: int = Field(..., ge=0)
    from_bal_acc: float = Field(..., ge=0, le=1)
    from_approximate: bool = False


class Claims(_Strict):
    sae_layers: list[int] | None = None
    best_sae: BestSAE | None = None
    saes_beating_raw: Count | None = None
    ste_vs_topk: SteVsTopk | None = None
    profile: Profile | None = None


class PublishedModel(_Strict):
    label: str
    n_layers: int = Field(..., ge=1, description="decoder layers of the real model")
    peak_layer: int = Field(..., ge=0, description="raw-probe peak layer")
    depth_pct: float = Field(
        ..., ge=0, le=100, description="the peak's depth as the card states it"
    )
    bal_acc: float = Field(..., ge=0, le=1, description="balanced accuracy at the peak")
    approximate: bool = Field(False, description="the card gives bal_acc with '~'")
    auroc: float | None = Field(None, ge=0, le=1)
    other_bal_acc: list[float] = Field(default_factory=list, description="other cards' values")
    note: str = ""
    claims: Claims | None = None

    @model_validator(mode="after")
    def _peak_inside(self) -> PublishedModel:
        if self.peak_layer >= self.n_layers:
            raise ValueError(
                f"peak_layer={self.peak_layer} outside a model of {self.n_layers} layers"
            )
        return self


class PublishedFile(_Strict):
    version: Literal[1]
    models: dict[str, PublishedModel]


@lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int) -> PublishedFile:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise PublishedDataError(f"{path} is not valid YAML ({e})") from None
    try:
        return PublishedFile.model_validate(data)
    except ValidationError as err:
        lines = [f"malformed {path}:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise PublishedDataError("\n".join(lines)) from None


def published_models(path: Path | str = PUBLISHED_FILE) -> dict[str, PublishedModel]:
    """Every model of the published file, validated, by ``model_tag``."""
    path = Path(path)
    if not path.exists():
        raise PublishedDataError(f"{path} not found")
    return dict(_read(str(path), path.stat().st_mtime_ns).models)


def published_for(model_tag: str, path: Path | str = PUBLISHED_FILE) -> dict | None:
    """The study's published numbers of the model with this ``model_tag`` (a plain dict), or
    ``None`` for a model the study did not publish (the organism, random-weight models).

    Keys: ``label``, ``n_layers``, ``peak_layer``, ``depth_pct``, ``bal_acc`` (0-1),
    ``approximate``, ``auroc`` (or None), ``other_bal_acc``, ``note``, ``claims`` (or None).
    Raises :class:`PublishedDataError` when the file is malformed.
    """
    model = published_models(path).get(model_tag)
    return None if model is None else model.model_dump()


NOT_REPORTED = "not reported"


def _pct(x: float, approximate: bool = False) -> str:
    return f"{'~' if approximate else ''}{100 * x:.1f}%"


def claim_texts(model_tag: str, path: Path | str = PUBLISHED_FILE) -> dict[str, str] | None:
    """The study's published claims of one model as the summary table prints them (keys as
    ``lib.report.summary.CLAIMS``), or None for a model the study did not publish."""
    m = published_models(path).get(model_tag)
    if m is None:
        return None
    c = m.claims or Claims()
    out = {
        "raw_peak_layer": f"L{m.peak_layer} (of {m.n_layers}; {m.depth_pct:g}% depth)",
        "raw_peak_bal_acc": _pct(m.bal_acc, m.approximate),
        "raw_peak_auroc": f"{m.auroc:.3f}" if m.auroc is not None else NOT_REPORTED,
        "profile": NOT_REPORTED,
        "text_baseline": NOT_REPORTED,
        "monitor": NOT_REPORTED,
        "best_sae": NOT_REPORTED,
        "saes_beating_raw": NOT_REPORTED,
        "ste_vs_topk": NOT_REPORTED,
        "ste_matched_l0": NOT_REPORTED,
        "leakage": "not measured (SAEs saw the test folds)",
    }
    if c.profile is not None:
        approx = "~" if c.profile.from_approximate else ""
        out["profile"] = (
            f"rises monotonically, {approx}{100 * c.profile.from_bal_acc:.0f}% at "
            f"L{c.profile.from_layer} to {_pct(m.bal_acc)} at L{m.peak_layer}"
        )
    if c.best_sae is not None:
        b = c.best_sae
        where = ", ".join(
            str(v)
            for v in (b.architecture, b.layer is not None and f"L{b.layer}", b.condition)
            if v
        )
        out["best_sae"] = _pct(b.bal_acc) + (f" ({where})" if where else "")
    if c.saes_beating_raw is not None:
        out["saes_beating_raw"] = f"{c.saes_beating_raw.count} of {c.saes_beating_raw.of}"
    if c.ste_vs_topk is not None:
        s = c.ste_vs_topk
        out["ste_vs_topk"] = (
            f"STE wins {s.ste_wins} of {s.of}; mean {_pct(s.ste_mean_bal_acc)} vs "
            f"{_pct(s.topk_mean_bal_acc)}"
        )
    return out


# ----- the published SAEs -------------------------------------------------------------------------
PUBLISHED_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
_HOOK = re.compile(r"^(?P<path>[A-Za-z_][\w.]*?)\.(?P<layer>\d+)(?:\.hook_resid_post)?$")


def normalise_hook(hook: str) -> tuple[str, int]:
    """``model.layers.12.hook_resid_post`` or ``model.layers.12`` -> ``("model.layers.12", 12)``.

    The study's card writes the hook both ways; only the module path resolves in a Hugging Face
    model, so that is what the loaded SAE carries.
    """
    m = _HOOK.match(hook)
    if m is None:
        raise ValueError(
            f"hook_name={hook!r}; expected '<layers path>.<L>' or '<layers path>.<L>.hook_resid_post'"
        )
    return f"{m['path']}.{m['layer']}", int(m["layer"])


def load_published_sae(path: Path | str, d_in: int | None = None, device: str = "cpu") -> SAE:
    """Load one of the study's published SAE folders as a :class:`lib.sae.model.SAE` (float32).

    ``d_in``: the width of the activations it will encode; a mismatch raises. The study's
    ``architecture`` maps to ours: ``topk`` -> ``topk`` (``k`` required), ``jumprelu`` with an
    all-zero threshold -> ``jumprelu`` (the study's threshold bug: a ReLU SAE), ``jumprelu`` with
    a learned threshold -> ``jumprelu_ste``. ``meta`` gets ``hook_name`` as a module path
    (``model.layers.{L}``), ``hook_layer``, ``training_condition``, the original hook spelling and
    the study's architecture name. Encoding follows SAELens (``apply_b_dec_to_input`` from
    ``cfg.json``, default true).

    Raises :class:`lib.sae.model.SAEFormatError` naming the file for: a missing or unreadable file, an
    unknown architecture, a topk SAE without ``k``, a hook or layer that cannot be read or that
    disagree, missing or extra tensors, wrong shapes, a learned threshold on a topk SAE, or a
    ``d_in`` mismatch.
    """
    path = Path(path)
    cfg_path, w_path = path / "cfg.json", path / "sae_weights.safetensors"
    cfg = read_cfg_json(path, "a published SAE folder")
    meta_in: dict[str, Any] = dict(cfg.get("metadata") or {})

    def key(name: str):
        return cfg.get(name, meta_in.get(name))

    for name in ("architecture", "d_in", "d_sae"):
        if key(name) is None:
            raise SAEFormatError(f"{cfg_path} lacks the key {name!r}")
    arch_in = key("architecture")
    if arch_in not in ("jumprelu", "topk"):
        raise SAEFormatError(
            f"{cfg_path}: architecture={arch_in!r} is not one the study published; allowed: 'jumprelu', 'topk'"
        )
    width, d_sae = int(key("d_in")), int(key("d_sae"))
    if d_in is not None and int(d_in) != width:
        raise SAEFormatError(
            f"{cfg_path}: the SAE has d_in={width} but the activations have width {d_in}; "
            "is it the right model and layer?"
        )
    k = key("k")
    if arch_in == "topk" and k is None:
        raise SAEFormatError(f"{cfg_path}: a topk SAE needs 'k' (SAELens would silently use 100)")
    norm = key("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise SAEFormatError(
            f"{cfg_path}: normalize_activations={norm!r} needs a run-time scale this loader "
            "cannot reproduce; allowed: 'none'"
        )

    hook_in, layer_in = key("hook_name"), key("hook_layer")
    try:
        hook, layer = normalise_hook(hook_in) if hook_in else (None, None)
    except ValueError as e:
        raise SAEFormatError(f"{cfg_path}: {e}") from None
    if layer_in is not None:
        if layer is not None and int(layer_in) != layer:
            raise SAEFormatError(
                f"{cfg_path}: hook_layer={layer_in} disagrees with hook_name={hook_in!r}"
            )
        layer = int(layer_in)
        hook = hook or f"model.layers.{layer}"
    if layer is None:
        raise SAEFormatError(f"{cfg_path} names no layer (neither 'hook_name' nor 'hook_layer')")

    if not w_path.exists():
        raise SAEFormatError(f"{w_path} is missing; {path} is not a complete SAE folder")
    try:
        t = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SAEFormatError(f"{w_path} is unreadable or corrupt ({e})") from None
    want = {
        "W_enc": (width, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, width),
        "b_dec": (width,),
        "threshold": (d_sae,),
    }
    optional = {"threshold"} if arch_in == "topk" else set()
    missing = sorted(set(want) - set(t) - optional)
    extra = sorted(set(t) - set(want))
    if missing or extra:
        raise SAEFormatError(
            f"{w_path}: missing tensors {missing}, unexpected tensors {extra}; the study's format "
            f"holds exactly {list(PUBLISHED_TENSORS)}"
        )
    for name, shape in want.items():
        if name in t and tuple(t[name].shape) != shape:
            raise SAEFormatError(
                f"{w_path}: {name} has shape {tuple(t[name].shape)}, expected {shape} "
                f"(d_in={width}, d_sae={d_sae} from {cfg_path.name})"
            )
    threshold = t["threshold"].float() if "threshold" in t else torch.zeros(d_sae)
    learned = bool(threshold.abs().max() > 0)
    if arch_in == "topk":
        if learned:
            raise SAEFormatError(f"{w_path}: a topk SAE with a non-zero threshold is undefined")
        arch = "topk"
    else:
        arch = "jumprelu_ste" if learned else "jumprelu"

    meta = {
        **meta_in,
        "hook_name": hook,
        "hook_layer": layer,
        "published_hook_name": hook_in,
        "published_architecture": arch_in,
        "training_condition": key("training_condition"),
        "source_format": "study",
    }
    try:
        sae = SAE(
            width,
            d_sae,
            arch,
            k=int(k) if k is not None else None,
            apply_b_dec_to_input=bool(
                key("apply_b_dec_to_input") if key("apply_b_dec_to_input") is not None else True
            ),
            meta=meta,
        )
    except ValueError as e:
        raise SAEFormatError(f"{cfg_path}: {e}") from None
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(t[name].float())
        if sae.threshold is not None:
            sae.threshold.copy_(threshold)
    sae.source = str(path)
    return sae.to(device).eval()
