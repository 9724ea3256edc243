"""The typed configuration of one run of the book.

A run is described by one YAML file in ``configs/`` (``organism.yaml`` for the embedded default,
``tinyllama.yaml`` for the real study). Every notebook's papermill parameters name a config and
may override single fields with dotted keys (``{"sae.epochs": 5}``). Unknown keys and wrong types
are rejected before any work starts, with the offending key and the allowed values in the message.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_SCENARIO_FILE = "data/scenarios.yaml"

# the book's vocabulary lives in lib.core.vocabulary; the config validates against it
from lib.core.vocabulary import (  # noqa: E402
    CONDITIONS,
    Architecture,
    Condition,
    SAEKey,
)


class ConfigError(ValueError):
    """A config that cannot describe a run. The message names the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SamplingConfig(_Strict):
    samples_per_scenario: int = Field(32, ge=1, description="completions drawn per scenario prompt")
    max_new_tokens: int = Field(48, ge=1, description="length cap of each completion")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (the study: 1.0)")
    top_k: int = Field(0, ge=0, description="0 disables top-k; transformers otherwise uses 50")
    top_p: float = Field(1.0, gt=0, le=1.0, description="1.0 disables nucleus sampling")
    batch_size: int = Field(16, ge=1, description="completions generated together")
    prompt_style: Literal["raw", "chat"] = Field(
        "raw",
        description="raw: the scenario text as it is (the study: base models, no template); chat: "
        "the scenario as one user turn in the tokenizer's chat template (instruct models)",
    )


class JudgeConfig(_Strict):
    judges: list[Literal["keyword", "first_word", "gemini"]] = Field(
        default_factory=lambda: ["keyword"], min_length=1, description="judges that label the run"
    )
    primary: Literal["keyword", "first_word", "gemini"] = Field(
        "keyword", description="the judge whose labels later stages use"
    )
    gemini_model: str = Field("gemini-2.5-flash", description="model id for the gemini judge")
    concurrency: int = Field(4, ge=1, description="parallel gemini calls")
    max_retries: int = Field(5, ge=0, description="retries on 429/5xx/timeouts/unparseable answers")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout of the gemini judge")
    keyword_window: int = Field(60, ge=1, description="characters the keyword judge reads first")
    retry_after_cap_s: float = Field(
        300.0, gt=0, description="longest wait a server's Retry-After may ask of the gemini judge"
    )
    max_failed_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the primary judge's verdicts that may fail before the grid stops",
    )

    @model_validator(mode="after")
    def _primary_is_run(self) -> JudgeConfig:
        if self.primary not in self.judges:
            raise ValueError(
                f"judge.primary={self.primary!r} must be one of judge.judges={self.judges}"
            )
        return self


class CaptureConfig(_Strict):
    layers: list[int] | Literal["all"] = Field("all", description="decoder layers to capture")
    batch_size: int = Field(16, ge=1, description="completions per teacher-forced forward pass")


class SteConfig(_Strict):
    kernel: Literal["rectangle", "gaussian"] = Field(
        "rectangle", description="STE pseudo-derivative"
    )
    bandwidth: float = Field(0.001, gt=0, description="kernel width (inputs at unit mean norm)")
    threshold_init: float = Field(0.001, gt=0, description="initial per-latent threshold")
    l0_coefficient: float = Field(1e-3, ge=0, description="weight of the L0 penalty")


class SAEConfig(_Strict):
    layers: list[int] = Field(default_factory=list, description="layers with topk/jumprelu SAEs")
    architectures: list[Architecture] = Field(
        default_factory=lambda: ["topk", "jumprelu"], description="architectures at `layers`"
    )
    conditions: list[Condition] = Field(
        default_factory=lambda: list(CONDITIONS), min_length=1, description="training conditions"
    )
    ste_layers: list[int] = Field(default_factory=list, description="layers with jumprelu_ste SAEs")
    expansion_factor: int = Field(4, ge=1, description="d_sae / d_in")
    k: int = Field(64, ge=1, description="active latents of a TopK SAE")
    epochs: int = Field(
        300, ge=1, description="passes over the training vectors (used only when steps is null)"
    )
    steps: int | None = Field(
        None,
        ge=1,
        description="optimiser steps per SAE, cycling through reshuffled epochs; when set it "
        "governs and epochs is ignored, so every condition trains for the same number of steps",
    )
    batch_size: int = Field(128, ge=1, description="training vectors per Adam step")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (constant)")
    l1_coefficient: float = Field(1e-3, ge=0, description="L1 penalty of threshold-0 JumpReLU")
    aux_k_coefficient: float = Field(1 / 32, ge=0, description="TopK dead-latent auxiliary loss")
    topk_variant: Literal["saelens", "openai"] = Field(
        "saelens",
        description="TopK training: SAELens 6's (AuxK scaled by the dead share) or the TopK paper's "
        "(decoder gradient projected off the rows, AuxK normalised by the residual variance)",
    )
    matmul_dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="dtype of the encoder/decoder matmuls; weights and Adam state stay float32; "
        "auto: bfloat16 on a GPU or a CPU with bfloat16 instructions, else float32",
    )
    train_on: Literal["tokens", "last", "mean"] = Field("tokens", description="training vectors")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="completions kept for metrics")
    seeds: int = Field(
        1, ge=1, description="training seeds per grid cell; ids gain _s{i} beyond the first"
    )
    fan_out: bool = Field(
        True,
        description="one notebook 04 per grid cell (parallel workers or GPUs); false: one "
        "notebook trains the whole grid and loads the model once",
    )
    n_jobs: int = Field(
        1,
        ge=1,
        description="processes that share out the layers when one notebook trains the whole grid "
        "(fan_out false): one per CPU core for small SAEs on the CPU; 1 on a GPU",
    )
    ste: SteConfig = Field(default_factory=SteConfig, description="the STE JumpReLU's settings")


class ProbeConfig(_Strict):
    features: list[Literal["last", "mean"]] = Field(
        default_factory=lambda: ["last", "mean"], description="pooled vectors the raw probes read"
    )
    n_bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of every CI")
    n_permutations: int = Field(200, ge=0, description="label permutations of every p-value")
    leakage_free: bool = Field(True, description="train SAEs inside each probe fold")
    leakage_seeds: int = Field(
        1, ge=1, description="SAE seeds (from the first) with leakage-free and reference SAEs"
    )
    leakage_conditions: list[Condition] | None = Field(
        None, description="training conditions with leakage-free SAEs (None: every condition)"
    )
    sae_pooling: Literal["mean", "max", "last"] = Field(
        "mean", description="how token-level SAE codes are pooled per completion"
    )
    fold_epochs: int | None = Field(
        None,
        ge=1,
        description="epochs of the leakage SAEs when sae.steps is unset (default: sae.epochs)",
    )
    fold_steps: int | None = Field(
        None,
        ge=1,
        description="optimiser steps of the leakage SAEs when sae.steps is set (default: sae.steps)",
    )
    text_baseline: bool = Field(True, description="probe TF-IDF of the completion text too")
    groups: Literal["scenario", "family"] = Field(
        "scenario",
        description="what held-out-scenario folds hold out: each prompt, or each scenario family "
        "(all variants of one situation; version 2 scenario files)",
    )
    inner_splits: int = Field(
        5, ge=2, description="inner folds that choose the monitor threshold on training data"
    )
    n_jobs: int = Field(
        2, ge=1, description="worker processes of the probing stage (each 1 thread)"
    )


class FeaturesConfig(_Strict):
    saes: list[str] | Literal["all"] = Field(
        "all", description="SAE ids notebook 08 analyses ('all': every SAE of the grid)"
    )
    fan_out: bool = Field(
        True, description="one notebook 08 per SAE; false: one notebook analyses them all"
    )
    pooling: Literal["mean", "max", "last"] = Field(
        "mean", description="how an SAE's token codes are pooled per completion for statistics"
    )
    n_top: int = Field(5, ge=1, description="top latents per direction given examples")
    k_values: list[int] = Field(
        default_factory=lambda: [1, 2, 5, 10, 20, 50],
        min_length=1,
        description="k of the k-sparse probes (top-k latents chosen on training folds only)",
    )
    n_examples: int = Field(6, ge=1, description="top-activating completions shown per latent")
    n_quantiles: int = Field(4, ge=1, description="activation quantile bins examples come from")
    n_per_quantile: int = Field(2, ge=0, description="completions drawn from each quantile bin")
    n_bootstrap: int = Field(500, ge=0, description="bootstrap resamples of each latent's AUROC CI")
    histogram_bins: int = Field(24, ge=2, description="bins of the per-latent histograms")
    autointerp: bool = Field(False, description="label the top latents with the Gemini client")
    autointerp_model: str = Field("gemini-2.5-flash", description="model id of the labeller")
    autointerp_random: int = Field(
        8, ge=0, description="random other latents labelled too (an unselected comparison set)"
    )

    @field_validator("k_values")
    @classmethod
    def _k_positive(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"k_values {v}: every k must be >= 1")
        return sorted(set(v))


class SteeringConfig(_Strict):
    layers: list[int] = Field(default_factory=list, description="layers 09 intervenes at")
    alphas: list[float] = Field(
        default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0],
        min_length=1,
        description="steering strengths in units of the layer's mean token norm (0: baseline)",
    )
    samples_per_scenario: int = Field(
        12, ge=1, description="completions per scenario and condition (the run's seeds)"
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="length cap of steered completions (default: sampling's)"
    )
    pooling: Literal["mean", "last"] = Field(
        "mean", description="pooled vectors the difference-of-means direction is taken from"
    )
    n_latents: int = Field(
        2, ge=0, description="top deceptive-high latents whose decoder rows are steered along"
    )
    n_random: int = Field(2, ge=0, description="random control directions of equal norm")
    ablate_top_k: int = Field(5, ge=1, description="deception latents zeroed in the ablation")
    scenarios: list[str] | Literal["all"] = Field(
        "all", description="scenario ids sampled under steering ('all': the run's scenarios)"
    )
    sae_arch: Architecture = Field("jumprelu_ste", description="architecture of the SAE used")
    sae_condition: Condition = Field("mixed", description="training condition of the SAE used")
    n_bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of every rate CI")


class RunConfig(_Strict):
    """Everything that defines one run; written resolved into ``<run>/config.yaml``."""

    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="run directory name")
    model: str = Field(..., description="Hugging Face id, local path, or 'organism'")
    model_tag: str = Field(..., pattern=r"^[a-z0-9-]+$", description="prefix of SAE ids")
    model_label: str = Field("", description="name printed on figures (defaults to model)")
    study_model: str = Field(
        "", pattern=r"^[a-z0-9-]*$", description="data/published.yaml model set beside this run"
    )
    figures: str = Field(
        "", pattern=r"^[A-Za-z0-9_.-]*$", description="folder under figures/ (default: name)"
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="dtype of the model's weights and forward passes (sampling, capture); auto: "
        "bfloat16 on a GPU or a CPU with bfloat16 instructions, else float32 (at temperature 1.0 "
        "bfloat16 samples other completions than float32: docs/costs.md)",
    )
    device: str = Field("auto", description="'auto' picks cuda when present, else cpu")
    scenario_file: str = Field(DEFAULT_SCENARIO_FILE, description="YAML file of scenario prompts")
    scenarios: list[str] | Literal["all"] = Field("all", description="scenario ids to sample")
    seed: int = Field(0, description="the run's seed: sampling, SAE training, resampling")
    prompt_cache: bool = Field(
        False,
        description="prefill each scenario prompt once and run only the completion tokens on its "
        "KV cache (sampling, capture, steering, the SAE loss metrics): the same numbers up to float "
        "rounding, several times fewer tokens through the model; off: every row a full pass",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="stage 01")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="stage 02")
    capture: CaptureConfig = Field(default_factory=CaptureConfig, description="stage 03")
    sae: SAEConfig = Field(default_factory=SAEConfig, description="stage 04")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="stages 05 and 06")
    features: FeaturesConfig = Field(default_factory=FeaturesConfig, description="stage 08")
    steering: SteeringConfig = Field(default_factory=SteeringConfig, description="stage 09")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "mps") and not (v == "cuda" or v.startswith("cuda:")):
            raise ValueError(f"device={v!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
        return v

    @field_validator("scenarios")
    @classmethod
    def _scenarios_nonempty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("scenarios is empty; list scenario ids or write 'all'")
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> RunConfig:
        """Fields that name something elsewhere in the config name something there: refused at
        load (and by ``--dry-run``), not by the notebook that would find out (08 waiting for
        an SAE that 04 never trains). A steering layer without a steering SAE is allowed: 09
        steers along the probe's and random directions there and says what it could not do."""
        cells, captured = self.sae_grid(), self.capture.layers
        missing = [] if captured == "all" else sorted({c[0] for c in cells} - set(captured))
        if missing:
            raise ValueError(f"sae layers {missing} not in capture.layers {list(captured)}")
        grid = {self.sae_id(*c, seed_index=i) for c in cells for i in range(self.sae.seeds)}
        named = [] if self.features.saes == "all" else self.features.saes
        if unknown := [s for s in named if s not in grid]:
            shown = sorted(grid)[:12] + (["..."] if len(grid) > 12 else [])
            raise ValueError(
                f"features.saes: {unknown} are not SAEs of this grid; allowed: {shown}"
            )
        return self

    # ----- derived values -------------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.model_label or self.model

    @property
    def study_key(self) -> str:
        """The key of ``data/published.yaml`` this run is compared with."""
        return self.study_model or self.model_tag

    @property
    def figures_name(self) -> str:
        """The folder under ``figures/`` this run's figures go to."""
        return self.figures or self.name

    def scenario_path(self) -> Path:
        p = Path(self.scenario_file)
        return p if p.is_absolute() else REPO_ROOT / p

    def capture_layers(self, n_layers: int) -> list[int]:
        return list(range(n_layers)) if self.capture.layers == "all" else list(self.capture.layers)

    def sae_grid(self) -> list[tuple[int, str, str]]:
        """Every (layer, architecture, condition) SAE of the grid, in a stable order."""
        cells = [
            (layer, arch, cond)
            for layer in self.sae.layers
            for arch in self.sae.architectures
            for cond in self.sae.conditions
        ]
        cells += [
            (layer, "jumprelu_ste", cond)
            for layer in self.sae.ste_layers
            for cond in self.sae.conditions
        ]
        seen, out = set(), []
        for c in cells:
            if c not in seen:
                seen.add(c)
                out.append(c)
        return out

    def sae_id(self, layer: int, arch: str, condition: str, seed_index: int = 0) -> str:
        """``{model_tag}_{arch}_L{layer}_{condition}``, plus ``_s{i}`` for seeds beyond the
        first (so the study's ids name seed 0)."""
        return SAEKey(self.model_tag, arch, layer, condition, seed_index).id

    def analysed_saes(self) -> list[str]:
        """SAE ids notebook 08 covers: ``features.saes``, or every SAE of the grid (``all``)."""
        if self.features.saes == "all":
            return [self.sae_id(*cell) for cell in self.sae_grid()]
        return list(self.features.saes)

    def sae_seed(self, seed_index: int) -> int:
        """The training seed of an SAE: the run seed for the first, a derived one for the rest."""
        if seed_index == 0:
            return self.seed
        digest = hashlib.sha256(f"{self.seed}/sae-seed/{seed_index}".encode()).hexdigest()
        return int(digest[:8], 16) & 0x7FFFFFFF

    def check_layers(self, n_layers: int) -> None:
        """Raise ConfigError when any configured layer is outside a model with ``n_layers``."""
        allowed = f"0..{n_layers - 1}"
        groups = {
            "sae.layers": self.sae.layers,
            "sae.ste_layers": self.sae.ste_layers,
            "steering.layers": self.steering.layers,
        }
        if self.capture.layers != "all":
            groups["capture.layers"] = self.capture.layers
        for key, layers in groups.items():
            bad = [layer for layer in layers if not 0 <= layer < n_layers]
            if bad:
                raise ConfigError(f"{key}: layer(s) {bad} outside the model; allowed: {allowed}")


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            section = RunConfig
            for p in e["loc"][:-1]:
                field = section.model_fields.get(str(p))
                ann = getattr(field, "annotation", None)
                section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else section
            allowed = ", ".join(sorted(section.model_fields))
            lines.append(f"  {key}: unknown key; allowed keys here: {allowed}")
        elif e["type"] == "value_error" and not e["loc"]:  # a cross-reference: names its fields
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def resolve_config_path(name: str | Path) -> Path:
    """``organism`` -> ``configs/organism.yaml``; a path is used as it is."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        p = p if p.is_absolute() or p.exists() else REPO_ROOT / p
    else:
        p = CONFIG_DIR / f"{name}.yaml"
    if not p.exists():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config {str(name)!r} not found (looked at {p}); known configs: {known}")
    return p


def config_from_dict(
    data: dict, overrides: dict | None = None, source: str = "<dict>"
) -> RunConfig:
    data = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(
    name: str | Path = "organism", overrides: dict | None = None, **kw: Any
) -> RunConfig:
    """Load ``configs/<name>.yaml`` (or a YAML path) and apply dotted-key ``overrides``.

    Keyword arguments are further overrides (``run_name=...`` sets ``name``).
    """
    path = resolve_config_path(name)
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    merged = dict(overrides or {})
    run_name = kw.pop("run_name", None)
    merged.update(kw)
    if run_name:
        merged["name"] = run_name
    return config_from_dict(data, merged, source=str(path))


def ignored_overrides(cfg: RunConfig, overrides: dict | None) -> list[str]:
    """One sentence per override that changes nothing because another field governs (a training
    length given in epochs while ``sae.steps`` is set, or in steps while it is null)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and prefix.count(".") < 1:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    for key, value in (overrides or {}).items():
        walk(key, value)
    sae, notes = cfg.sae, []
    by_steps = f"sae.steps={sae.steps} governs (set sae.steps=null to train by epochs)"
    if "sae.epochs" in flat and sae.steps is not None:
        notes.append(f"sae.epochs={flat['sae.epochs']} has no effect: {by_steps}")
    if "sae.fold_epochs" in flat and sae.steps is not None:
        notes.append(
            f"sae.fold_epochs={flat['sae.fold_epochs']} has no effect: {by_steps}; the leakage "
            "SAEs' length is sae.fold_steps"
        )
    if "sae.fold_steps" in flat and sae.steps is None:
        notes.append(
            f"sae.fold_steps={flat['sae.fold_steps']} has no effect while sae.steps is null: the "
            "leakage SAEs train for sae.fold_epochs (default: sae.epochs) passes"
        )
    return notes


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
