"""Run outputs are ordinary files: an atomic write or a folder renamed into place keeps the
permissions a plain write would give (mkstemp/mkdtemp make them private), so a colleague, a web
server or a docs build can read an SAE, a dashboard or a converted model."""

from __future__ import annotations

import os
import stat

import torch

from lib.core.fileio import atomic_write_text
from lib.sae.model import SAE, save_sae


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_and_saved_saes_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "index.html", "<html></html>")
        sae = SAE(8, 16, "topk", k=2)
        torch.nn.init.normal_(sae.W_dec)
        folder = save_sae(sae, tmp_path / "saes" / "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "index.html") == 0o644
    assert _mode(folder) == 0o755
    for f in folder.iterdir():
        assert _mode(f) & 0o044 == 0o044, (f.name, oct(_mode(f)))
