"""Shared fixtures: the organism (built once per machine into data/organism/) and small runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# the tests' helpers (tests/helpers: fake_book, gemini_stub, judging) import by their bare names
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs two pytest-xdist workers on two cores: one torch thread each, not two threads
# in each worker spinning against the other's (a 1.5 s test then took up to 34 s)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


# The slowest modules, longest first: the modules' summed test times in a `--durations` run of
# `make test`'s unit suite on 2 cores (2026-12-06, one torch thread per worker, a loaded machine):
# the real-model conversions and checks (~280 s: the Gemma reference load alone 133 s), the edge
# book (170 s), the grid's (155 s), the organism builds of test_models (100 s), notebook 02 under
# the Gemini stub (85 s), the wording profile (67 s); latents, sampling, probing and steering build
# organism runs in their fixtures. `make test` runs the suite with pytest-xdist's `--dist loadfile
# --no-loadscope-reorder`, which hands out modules in this order: the longest started first, no
# worker is left running one of them alone at the end (xdist's default order, most tests first,
# put the one-test edge book last; the largest, test_registry_models, came after fifteen others).
SLOW_FIRST = [
    "test_registry_models.py",
    "test_edge_book.py",
    "test_grid.py",
    "test_models.py",
    "test_gemini.py",
    "test_wording.py",
    "test_sae_train_grid.py",
    "test_verdicts.py",
    "test_latents.py",
    "test_probing.py",
    "test_prompt_cache.py",
    "test_sampling.py",
    "test_papermill_by_hand.py",
    "test_power.py",
    "test_organism.py",
    "test_empty_run.py",
    "test_sae_training.py",
    "test_steering.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest in order


@pytest.fixture(scope="session")
def organism_path():
    from lib.models.organism import ensure_organism

    return ensure_organism(progress=False)


@pytest.fixture(scope="session")
def organism(organism_path):
    from lib.models.loading import load_model_path

    return load_model_path(str(organism_path))


def small_config(tmp_path, **overrides):
    """The organism config, shrunk for tests, with its run directory under ``tmp_path``."""
    from lib.core.config import load_config

    base = {
        "name": "t",
        "sampling.samples_per_scenario": 20,
        "sampling.batch_size": 10,
        "sampling.max_new_tokens": 20,
        "capture.batch_size": 5,
    }
    base.update(overrides)
    return load_config("organism", base)


@pytest.fixture(scope="session")
def sampled_run(tmp_path_factory, organism):
    """A small organism run: sampled, labelled by the keyword judge, captured."""
    from lib.capture.activations import capture_run
    from lib.capture.sampling import sample_run
    from lib.core.rundir import init_run
    from lib.judging.labelling import label_run

    root = tmp_path_factory.mktemp("runs")
    cfg = small_config(root)
    run = init_run(cfg, root)
    model, tok = organism
    sample_run(run, cfg, model, tok, progress=False)
    label_run(run, cfg, progress=False)
    capture_run(run, cfg, model, tok, progress=False)
    return cfg, run
