"""The checks of a finished organism book: ``pytest tests/book`` after ``make book``.

The run directory is ``$BOOK_RUN_DIR`` (default ``data/runs/default``); ``make test`` runs these
checks on the book it has just built and on the perturbed book (another thread layout), so every
check here must hold on any host: counts and ids exactly, numbers within the tolerances written
in ``expected_organism.yaml`` beside the measurement that justifies them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lib.core.config import REPO_ROOT, load_config
from lib.core.rundir import RunDir

EXPECTED = Path(__file__).with_name("expected_organism.yaml")


@pytest.fixture(scope="session")
def book():
    """``(cfg, run)`` of the finished book; a clear failure when it has not been built."""
    root = Path(os.environ.get("BOOK_RUN_DIR", REPO_ROOT / "data" / "runs" / "default"))
    if not (root / "results" / "summary.csv").exists():
        pytest.fail(f"no finished book at {root}: run `make book` (or set BOOK_RUN_DIR)")
    cfg = load_config("organism", run_name=root.name)
    return cfg, RunDir(root)


@pytest.fixture(scope="session")
def expected():
    return yaml.safe_load(EXPECTED.read_text())
