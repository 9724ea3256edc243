"""Sparse autoencoders of the study: the model, and its SAELens 6 on-disk format.

One class, :class:`SAE`, covers every registered architecture; what differs between them lives
in one module each under :mod:`lib.sae.architectures` (the registry by name):

``topk`` (:mod:`lib.sae.architectures.topk`)
    keep the ``k`` largest pre-activations of each input, then ReLU them (SAELens 6 selects
    first and applies the ReLU to the selected values, so a selected negative pre-activation
    gives 0).
``jumprelu`` (:mod:`lib.sae.architectures.jumprelu`)
    the study's original JumpReLU: ``relu(pre) * (pre > threshold)`` with the threshold fixed at
    0 and trained with an L1 penalty, i.e. a ReLU SAE (the "threshold bug" of the study).
``jumprelu_ste`` (:mod:`lib.sae.architectures.jumprelu_ste`)
    JumpReLU with a learned per-latent threshold (straight-through estimator and L0 penalty of
    Rajamanoharan et al. 2024). Same forward pass as ``jumprelu``; only training differs.

Encode and decode are SAELens 6's, term for term::

    pre = (x - b_dec) @ W_enc + b_enc            # b_dec is subtracted when apply_b_dec_to_input
    f   = activation(pre)                        # the architecture's: topk-then-relu | jumprelu
    x^  = f @ W_dec + b_dec

A folder written by :func:`save_sae` holds ``cfg.json`` and ``sae_weights.safetensors`` and loads
with ``sae_lens.SAE.load_from_disk``; the ``cfg.json`` architecture is the spec's SAELens name
(SAELens calls both JumpReLU kinds ``jumprelu``) and the study's own architecture name is kept
under ``metadata.study_architecture``. :func:`load_sae` reads our folders and folders SAELens
saved in an architecture some spec reads (``topk``, ``jumprelu``, and ``standard`` ReLU SAEs,
which are JumpReLU SAEs with a zero threshold).

Every export takes raw activations: ``normalize_activations`` is ``none``, and the trainer's
input scale is already folded into the weights. ``metadata.training_mean_norm`` (written by the
SAE stage) is the mean L2 norm of the raw training vectors, informational, for checking that new
inputs come from the training distribution; never a factor to apply (older exports wrote
``activation_scale = sqrt(d_in) / training_mean_norm`` instead). TopK exports have unit-norm
decoder rows and write ``rescale_acts_by_decoder_norm: true``, which for unit rows is the
identity, so SAELens's ``sae.fold_W_dec_norm()`` works on them.

The trainer lives in :mod:`lib.sae.trainer`, the grid stage of notebook 04 in
:mod:`lib.sae.train_grid` and evaluation in :mod:`lib.sae.metrics`; this module imports none of
them (the architectures' training steps are reached through their specs, by the trainer).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lib.core.runtime import temp_sibling, umask
from lib.sae.architectures import REGISTRY, default_for_saelens, get_spec, saelens_readable
from lib.sae.architectures.spec import BASE_TENSORS, UNIT_ROW_ATOL, ArchitectureSpec, has_unit_rows

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
METRICS_FILENAME = "metrics.json"
FORMAT_VERSION = "6.0.0"  # the SAELens on-disk format written here
#: SAELens input normalisations: a fixed scalar (foldable given the scale) and per-input ones
SCALAR_NORMALISATION = "expected_average_only_in"


class SAEFormatError(ValueError):
    """An SAE folder, config or weight file that cannot be read; the message names it."""


def sae_lens_version() -> str:
    """Version of the installed sae-lens (the format version when it is not installed)."""
    try:
        return _metadata.version("sae-lens")
    except _metadata.PackageNotFoundError:
        return FORMAT_VERSION


def check_architecture(architecture: str) -> str:
    """``architecture`` when it is registered (:mod:`lib.sae.architectures`); a ValueError else."""
    return get_spec(architecture).name


class SAE(nn.Module):
    """A sparse autoencoder in SAELens 6's parametrisation (see the module docstring).

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
    ``b_dec [d_in]`` and the architecture's ``latent_params``, each ``[d_sae]`` (both JumpReLU
    kinds: ``threshold``; ``threshold`` is None for an architecture without one). ``k`` is kept
    for architectures that use it (``spec.uses_k``). ``meta`` is a free dict of provenance (hook,
    layer, condition, training facts) written into ``cfg.json``.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str,
        k: int | None = None,
        apply_b_dec_to_input: bool = True,
        meta: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        spec = get_spec(architecture)
        self.architecture = spec.name
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"d_in={d_in} and d_sae={d_sae} must be positive")
        if spec.uses_k:
            if k is None or not 1 <= int(k) <= d_sae:
                raise ValueError(f"a {spec.name} SAE needs 1 <= k <= d_sae={d_sae}; got k={k!r}")
            k = int(k)
        else:
            k = None
        self.d_in, self.d_sae, self.k = int(d_in), int(d_sae), k
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.meta: dict[str, Any] = dict(meta or {})

        # Frozen by default: encode() then returns plain tensors (call requires_grad_() to tune).
        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape, dtype=dtype), requires_grad=False)

        self.W_enc = param(d_in, d_sae)
        self.b_enc = param(d_sae)
        self.W_dec = param(d_sae, d_in)
        self.b_dec = param(d_in)
        self.threshold: nn.Parameter | None = None
        for name in spec.latent_params:
            setattr(self, name, param(d_sae))

    # ----- the two maps ------------------------------------------------------------------------
    @property
    def spec(self) -> ArchitectureSpec:
        """The architecture's spec (:mod:`lib.sae.architectures`)."""
        return get_spec(self.architecture)

    @property
    def saelens_architecture(self) -> str:
        return self.spec.saelens_name

    def _check_input(self, x: torch.Tensor, width: int, what: str) -> None:
        if x.shape[-1] != width:
            raise ValueError(
                f"{what} has last dimension {x.shape[-1]} but this SAE expects {width} "
                f"(d_in={self.d_in}, d_sae={self.d_sae}); is it the right layer/model?"
            )

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` (without the b_dec term when not apply_b_dec_to_input)."""
        self._check_input(x, self.d_in, "input")
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The architecture's activation of pre-activations ``[..., d_sae]``."""
        return self.spec.activation(self, pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of inputs ``[..., d_in]`` (raw activations)."""
        return self.activation(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        self._check_input(f, self.d_sae, "latent tensor")
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x``."""
        return self.decode(self.encode(x))

    # ----- SAELens config ----------------------------------------------------------------------
    def saelens_cfg(self) -> dict[str, Any]:
        """The ``cfg.json`` dict (SAELens 6 keys plus the study's provenance in ``metadata``)."""
        meta = {
            "sae_lens_version": sae_lens_version(),
            "model_class_name": "AutoModelForCausalLM",
            **{k: v for k, v in self.meta.items() if k != "sae_lens_version"},
            "study_architecture": self.architecture,
        }
        cfg: dict[str, Any] = {
            "architecture": self.saelens_architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.W_enc.dtype).removeprefix("torch."),
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": meta,
        }
        cfg.update(self.spec.cfg_fields(self))
        return cfg

    def has_unit_decoder_rows(self, atol: float = UNIT_ROW_ATOL) -> bool:
        """Whether every row of ``W_dec`` has norm 1 within ``atol``."""
        return has_unit_rows(self.W_dec, atol)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Exactly the tensors SAELens loads (its loading is strict: nothing else)."""
        names = BASE_TENSORS + self.spec.latent_params
        return {name: getattr(self, name).detach().contiguous().cpu() for name in names}

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}{k}"


# ----- export -------------------------------------------------------------------------------------
def save_sae(sae: SAE, path: Path | str, extra_files: dict[str, Any] | None = None) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (+ JSON ``extra_files``) atomically.

    The folder is assembled in a temporary sibling and renamed into place, so ``path`` is either
    absent, the old complete folder, or the new complete folder; never half written. An existing
    folder at ``path`` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        save_file(sae.state_tensors(), str(tmp / WEIGHTS_FILENAME))
        (tmp / CFG_FILENAME).write_text(json.dumps(sae.saelens_cfg(), indent=2) + "\n")
        for name, obj in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask())  # safetensors writes its file private (0600)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----- loading ------------------------------------------------------------------------------------
def read_cfg_json(path: Path, folder: str = "a complete SAE folder") -> dict[str, Any]:
    """The JSON object of ``path/cfg.json``; :class:`SAEFormatError` naming the file when it is
    missing (``path`` is then not ``folder``), not JSON, or not an object."""
    cfg_path = path / CFG_FILENAME
    if not cfg_path.exists():
        raise SAEFormatError(f"{cfg_path} is missing; {path} is not {folder}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEFormatError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{cfg_path} must hold a JSON object")
    return cfg


def _read_cfg(path: Path) -> dict[str, Any]:
    cfg_path = path / CFG_FILENAME
    if not path.is_dir():
        raise SAEFormatError(f"{path} is not an SAE folder (no such directory)")
    cfg = read_cfg_json(path)
    for key in ("architecture", "d_in", "d_sae"):
        if key not in cfg:
            raise SAEFormatError(f"{cfg_path} lacks the key {key!r}")
    return cfg


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    wpath = path / WEIGHTS_FILENAME
    if not wpath.exists():
        raise SAEFormatError(f"{wpath} is missing; {path} is not a complete SAE folder")
    try:
        return load_file(str(wpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SAEFormatError(f"{wpath} is unreadable or corrupt ({e})") from None


def load_sae(
    path: Path | str,
    d_in: int | None = None,
    device: str = "cpu",
    input_scale: float | None = None,
) -> SAE:
    """Load an SAE folder written by :func:`save_sae` or by SAELens (``save_model``).

    The returned SAE takes raw activations. ``d_in``, when given, is checked against the SAE
    (e.g. a layer's width) and a mismatch raises. An SAE SAELens saved with
    ``normalize_activations="expected_average_only_in"`` expects its inputs multiplied by a fixed
    factor that its folder does not record: it is refused unless ``input_scale`` gives that
    factor (SAELens's ``norm_scaling_factor``, ``sqrt(d_in) / mean norm`` of its training
    activations), which is then folded into the weights as SAELens's
    ``fold_activation_norm_scaling_factor`` does (``W_enc * s``, ``W_dec / s``, ``b_dec / s``), so
    ``loaded.encode(x) == theirs.encode(x * s)``. Per-input normalisations (``layer_norm``,
    ``constant_norm_rescale``, ...) cannot be folded and are refused. Raises
    :class:`SAEFormatError` naming the file for a missing or corrupt file, an unknown
    architecture, or wrong tensor names or shapes.
    """
    path = Path(path)
    cfg = _read_cfg(path)
    cfg_path = path / CFG_FILENAME
    meta = dict(cfg.get("metadata") or {})
    sl_arch = cfg["architecture"]
    if sl_arch not in saelens_readable():
        raise SAEFormatError(
            f"{cfg_path}: architecture={sl_arch!r} is not supported; allowed: {saelens_readable()}"
        )
    arch = (
        meta.get("study_architecture")
        or cfg.get("study_architecture")
        or default_for_saelens(sl_arch)
    )
    if arch not in REGISTRY or sl_arch not in REGISTRY[arch].reads:
        raise SAEFormatError(
            f"{cfg_path}: study_architecture={arch!r} does not fit architecture={sl_arch!r}; "
            f"allowed: {[a for a, s in REGISTRY.items() if sl_arch in s.reads]}"
        )
    spec = REGISTRY[arch]
    scale = _input_scale(cfg.get("normalize_activations", "none"), input_scale, cfg_path)
    if cfg.get("reshape_activations", "none") != "none":
        raise SAEFormatError(
            f"{cfg_path}: reshape_activations={cfg['reshape_activations']!r} is not supported"
        )
    d_sae, width = int(cfg["d_sae"]), int(cfg["d_in"])
    if d_in is not None and int(d_in) != width:
        raise SAEFormatError(
            f"{cfg_path}: the SAE has d_in={width} but the activations have width {d_in}"
        )
    problem = spec.check_cfg(cfg)
    if problem:
        raise SAEFormatError(f"{cfg_path}: {problem}")
    t = _load_tensors(path)
    want = {"W_enc": (width, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, width), "b_dec": (width,)}
    want.update({name: (d_sae,) for name in spec.reads[sl_arch]})
    wpath = path / WEIGHTS_FILENAME
    if set(t) != set(want):
        raise SAEFormatError(
            f"{wpath} holds tensors {sorted(t)}; a {sl_arch} SAE needs exactly {sorted(want)}"
        )
    for name, shape in want.items():
        if tuple(t[name].shape) != shape:
            raise SAEFormatError(
                f"{wpath}: {name} has shape {tuple(t[name].shape)}, expected {shape} from {cfg_path}"
            )
    sae = SAE(
        width,
        d_sae,
        arch,
        k=cfg.get("k"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        meta=meta,
    )
    W_enc, b_enc, W_dec = t["W_enc"].float(), t["b_enc"].float(), t["W_dec"].float()
    b_dec = t["b_dec"].float()
    W_enc, b_enc, W_dec = spec.fold_loaded(cfg, W_enc, b_enc, W_dec)
    if scale is not None:
        W_enc, W_dec, b_dec = W_enc * scale, W_dec / scale, b_dec / scale
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        for (
            name
        ) in spec.latent_params:  # absent from the file: stays 0 (a standard SAE's threshold)
            if name in t:
                getattr(sae, name).copy_(t[name].float())
    if scale is not None:
        sae.meta["folded_input_scale"] = scale
    return sae.to(device).eval()


def _input_scale(norm: str, input_scale: float | None, cfg_path: Path) -> float | None:
    """The scale to fold for SAELens's ``normalize_activations=norm``; refuses what cannot load."""
    if norm == "none":
        if input_scale is not None:
            raise ValueError(
                f"{cfg_path}: this SAE takes raw activations (normalize_activations='none'); "
                f"input_scale={input_scale!r} must not be given"
            )
        return None
    if norm != SCALAR_NORMALISATION:
        raise SAEFormatError(
            f"{cfg_path}: normalize_activations={norm!r} normalises every input at run time and "
            f"cannot be folded into the weights; supported: 'none', {SCALAR_NORMALISATION!r}"
        )
    if input_scale is None:
        raise SAEFormatError(
            f"{cfg_path}: normalize_activations={norm!r}: this SAE expects inputs multiplied by "
            "a fixed factor that the folder does not record; pass input_scale=<factor> "
            "(SAELens's norm_scaling_factor, sqrt(d_in) / mean norm of its training activations) "
            "to fold it into the weights"
        )
    s = float(input_scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"input_scale={input_scale!r} must be a positive finite number")
    return s


def read_metrics(path: Path | str) -> dict[str, Any]:
    """``metrics.json`` of an SAE folder."""
    mpath = Path(path) / METRICS_FILENAME
    if not mpath.exists():
        raise SAEFormatError(f"{mpath} is missing; train the SAE (notebook 04) first")
    try:
        return json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEFormatError(f"{mpath} is not valid JSON ({e})") from None


def is_complete(path: Path | str) -> bool:
    """A folder with config, weights and metrics (written last) is a finished SAE."""
    path = Path(path)
    return all((path / f).exists() for f in (CFG_FILENAME, WEIGHTS_FILENAME, METRICS_FILENAME))
