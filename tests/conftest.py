"""Shared fixtures: the organism (built once per machine into data/organism/) and small runs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def organism_path():
    from lib.organism import ensure_organism

    return ensure_organism(progress=False)


@pytest.fixture(scope="session")
def organism(organism_path):
    from lib.models import load_model_path

    return load_model_path(str(organism_path))


def small_config(tmp_path, **overrides):
    """The organism config, shrunk for tests, with its run directory under ``tmp_path``."""
    from lib.config import load_config

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
    from lib.activations import capture_run
    from lib.labelling import label_run
    from lib.rundir import init_run
    from lib.sampling import sample_run

    root = tmp_path_factory.mktemp("runs")
    cfg = small_config(root)
    run = init_run(cfg, root)
    model, tok = organism
    sample_run(run, cfg, model, tok, progress=False)
    label_run(run, cfg, progress=False)
    capture_run(run, cfg, model, tok, progress=False)
    return cfg, run
