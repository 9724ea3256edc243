"""Files that a kill at any moment cannot corrupt, and the checks that find damaged ones.

Whole files are written to a temporary sibling, flushed, fsynced and renamed into place
(:func:`atomic_write_bytes`): a reader sees the old file or the new one, never half of one.
Stage outputs that grow (completions, labels, judge answers) are JSON lines appended whole with
one ``write`` and an fsync (:func:`append_jsonl`); a line torn by a kill is the only line a
reader skips (:func:`read_jsonl`) and the next append cuts it off. Inside a run directory the
appending process must be the run's writer (:mod:`lib.core.runlock`).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lib.core.runlock import require_writer
from lib.core.runtime import umask


class RunDirError(RuntimeError):
    """A run directory is missing a file a stage needs, or holds files from another run."""


# ----- atomic file I/O -------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes files private (0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(
            f"{path} is not valid JSON ({e}); delete it and rerun its stage"
        ) from None


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file. A torn last line (a write killed mid-way) is ignored; others fail."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise RunDirError(f"{path}:{i + 1} is not valid JSON; the file is corrupt") from None
    return rows


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append whole JSON lines with one ``write`` (``O_APPEND``) and fsync: the one writer of a
    stage's JSONL output. A torn last line left by a killed writer is cut off first. Inside a
    run directory the caller must be the run's writer (:func:`lib.core.runlock.require_writer`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    require_writer(path)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if not payload:
        return
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            raw = path.read_bytes()
            atomic_write_bytes(path, raw[: raw.rfind(b"\n") + 1])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def safetensors_problem(path: Path | str) -> str | None:
    """Why a safetensors file is unusable (missing, bad header, truncated), or None when sound.

    Reads only the header: its length, its JSON, and the data offsets against the file's size.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path.name} is truncated ({size} bytes, the header alone says {n + 8})"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{path.name} has no valid safetensors header ({type(e).__name__})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"{path.name} is truncated ({size} of {need} bytes)"
    return None


def safetensors_shapes(path: Path | str) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header (call :func:`safetensors_problem` first)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
