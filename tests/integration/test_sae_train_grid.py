"""The SAE grid stage (notebook 04) on a tiny model: replacement hooks, LM metrics, resumable folders, two processes, seeds, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sae_fixtures import random_sae

from lib.core.fileio import RunDirError
from lib.core.rundir import init_run
from lib.sae.model import is_complete, load_sae, read_metrics
from lib.sae.train_grid import heldout_mask
from lib.sae.trainer import (
    NotConvergedWarning,
)


# ----- the grid stage on a tiny model -------------------------------------------------------------------
def test_heldout_mask_is_stratified_and_seeded():
    y = np.array([0] * 30 + [1] * 10)
    m = heldout_mask(y, 0.2, seed=0)
    assert m[y == 0].sum() == 6 and m[y == 1].sum() == 2
    assert np.array_equal(m, heldout_mask(y, 0.2, seed=0))
    assert not np.array_equal(m, heldout_mask(y, 0.2, seed=1))
    assert heldout_mask(y, 0.0, 0).sum() == 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run of an untrained 8-layer toy Llama: fake completions, labels, real captured activations."""
    from lib.capture.activations import capture_run
    from lib.core.config import load_config
    from lib.core.fileio import append_jsonl
    from lib.core.rundir import init_run
    from lib.core.scenarios import load_scenarios
    from lib.models.loading import load_model_path
    from lib.models.organism import build_organism

    root = tmp_path_factory.mktemp("sae_stage")
    model_dir = build_organism(root / "model", steps=0, progress=False)
    cfg = load_config(
        "organism",
        {
            "name": "t",
            "model": str(model_dir),
            "capture.layers": [1, 2],
            "capture.batch_size": 8,
            "sae.layers": [1],
            "sae.architectures": ["topk"],
            "features.saes": "all",
            "sae.ste_layers": [2],
            "sae.conditions": ["mixed", "honest_only"],
            "sae.steps": 30,
            "sae.heldout_fraction": 0.25,
            "sae.seeds": 1,
            "sae.n_jobs": 1,  # in this process: tests replace parts of it
        },
    )
    run = init_run(cfg, root / "runs")
    rng = np.random.default_rng(0)
    words = "yes no the money report i did not we should tell them everything hide it".split()
    scen = list(load_scenarios(cfg.scenario_path()).values())[:3]
    rows, labels = [], []
    for sc in scen:
        for i in range(8):
            text = " " + " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
            cid = f"{sc.id}-{i:03d}"
            rows.append(
                {"id": cid, "scenario": sc.id, "sample": i, "prompt": sc.prompt, "completion": text}
            )
            labels.append(
                {
                    "id": cid,
                    "judge": "keyword",
                    "label": ["honest", "deceptive", "ambiguous"][i % 3],
                }
            )
    append_jsonl(run.completions, rows)
    append_jsonl(run.labels, labels)
    lm = load_model_path(str(model_dir))
    capture_run(run, cfg, *lm, progress=False)
    return cfg, run, lm


def test_replacement_hook_identity_keeps_the_loss(tiny_run):
    from lib.core.fileio import read_jsonl
    from lib.models.loading import replace_resid
    from lib.sae.metrics import ce_with_replacement

    cfg, run, (model, tok) = tiny_run
    rows = read_jsonl(run.completions)[:5]
    clean, n = ce_with_replacement(model, tok, rows, 1, "clean")
    ids = tok(rows[0]["prompt"] + rows[0]["completion"], return_tensors="pt").input_ids
    with torch.no_grad():
        base = model(ids).logits
        with replace_resid(model, 1, lambda h: h.clone()):
            same = model(ids).logits
        with replace_resid(model, 1, torch.zeros_like):
            other = model(ids).logits
    assert torch.equal(base, same) and not torch.allclose(base, other)
    zero, _ = ce_with_replacement(model, tok, rows, 1, "zero")
    assert n > 0 and math.isfinite(clean) and zero != clean


def test_sae_lm_metrics_agree_with_separate_runs_and_a_direct_kl(tiny_run):
    from lib.core.fileio import read_jsonl
    from lib.models.loading import replace_resid, row_ids
    from lib.sae.metrics import ce_with_replacement, sae_lm_metrics

    cfg, run, (model, tok) = tiny_run
    rows = read_jsonl(run.completions)[:4]
    sae = random_sae("jumprelu", d_in=128, d_sae=256)
    with torch.no_grad():
        sae.W_dec.mul_(0.05)
    m = sae_lm_metrics(model, tok, rows, 1, sae, batch_size=3)
    clean, n = ce_with_replacement(model, tok, rows, 1, "clean")
    spliced, _ = ce_with_replacement(model, tok, rows, 1, "sae", sae=sae)
    assert m["n_tokens"] == n > 0
    assert m["ce_clean"] == pytest.approx(clean, rel=1e-6)
    assert m["ce_sae"] == pytest.approx(spliced, rel=1e-6)
    assert m["delta_ce"] == pytest.approx(spliced - clean, rel=1e-6) and m["delta_ce"] != 0
    # KL(clean || sae) of one completion, written out
    ids, n_prompt = row_ids(tok, rows[0])
    ids_t = torch.tensor([ids])
    comp = torch.zeros(1, len(ids), dtype=torch.bool)
    comp[0, n_prompt:] = True

    def splice(h):
        out = h.clone()
        out[comp] = sae(h[comp].float()).to(h.dtype)
        return out

    with torch.no_grad():
        p = torch.log_softmax(model(ids_t).logits[0, n_prompt - 1 : -1].float(), -1)
        with replace_resid(model, 1, splice):
            q = torch.log_softmax(model(ids_t).logits[0, n_prompt - 1 : -1].float(), -1)
    kl_one = float((p.exp() * (p - q)).sum(-1).mean())
    one = sae_lm_metrics(model, tok, rows[:1], 1, sae)
    assert one["kl"] == pytest.approx(kl_one, rel=1e-4) and kl_one > 0


def test_train_grid_cell_writes_a_complete_resumable_folder(tiny_run):
    from lib.capture.labelled import labelled_rows
    from lib.sae.train_grid import train_grid, train_grid_cell

    cfg, run, lm = tiny_run
    path = train_grid_cell(run, cfg, 2, "jumprelu_ste", "mixed", progress=False, lm=lm)
    assert path == run.sae_dir("organism_jumprelu_ste_L2_mixed") and is_complete(path)
    m = read_metrics(path)
    lab = labelled_rows(run, cfg)
    assert m["n_completions"] == len(lab.select("mixed")) == 18
    assert m["n_heldout_completions"] == 4 and m["evaluated_on"] == "heldout"
    assert m["d_in"] == 128 and m["d_sae"] == 512 and m["hook_name"] == "model.layers.2"
    assert 0 <= m["dead_fraction"] <= 1 and 0 < m["fvu"] < 2 and m["l0"] > 0
    for key in ("ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "ce_delta", "kl"):
        assert math.isfinite(m[key]), key
    assert m["ce_loss_recovered"] == pytest.approx(
        (m["ce_zero"] - m["ce_sae"]) / (m["ce_zero"] - m["ce_clean"])
    )
    assert m["ce_delta"] == pytest.approx(m["ce_sae"] - m["ce_clean"]) and m["kl"] > 0
    assert m["train_steps"] == 30 and m["budget"] == "steps"
    assert m["history"]["epoch_step"][-1] == 30 and isinstance(m["converged"], bool)
    sae = load_sae(path, d_in=128)
    assert sae.architecture == "jumprelu_ste" and sae.meta["training_condition"] == "mixed"
    assert "activation_scale" not in sae.meta  # the name that read like a factor to apply
    assert sae.meta["training_mean_norm"] == pytest.approx(m["training_mean_norm"])
    stamp = (path / "metrics.json").stat().st_mtime_ns
    train_grid_cell(run, cfg, 2, "jumprelu_ste", "mixed", progress=False, lm=lm)  # skipped
    assert (path / "metrics.json").stat().st_mtime_ns == stamp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = train_grid(run, cfg, progress=False)
    assert len(paths) == len(cfg.sae_grid()) == 4 and all(is_complete(p) for p in paths)
    # unconverged SAEs are named in one warning, not one warning each
    said = [str(w.message) for w in caught if issubclass(w.category, NotConvergedWarning)]
    trained = [p for p in paths if p != path]  # the first SAE was trained above
    late = [p.name for p in trained if read_metrics(p)["converged"] is False]
    assert len(said) == (1 if late else 0)
    honest = read_metrics(run.sae_dir("organism_topk_L1_honest_only"))
    assert honest["n_completions"] == 9 and honest["l0"] == pytest.approx(cfg.sae.k)
    # sae.steps: every condition trains for the same number of steps, whatever its size
    grid = [read_metrics(p) for p in paths]
    assert {g["train_steps"] for g in grid} == {30}
    assert len({g["n_train_vectors"] for g in grid}) > 1
    assert {g["condition"] for g in grid} == {"mixed", "honest_only"}
    # changed SAE settings must not silently reuse the old SAE
    cfg2 = cfg.model_copy(update={"sae": cfg.sae.model_copy(update={"steps": 12})})
    with pytest.raises(RunDirError, match="differ from the run's config.yaml"):
        train_grid_cell(run, cfg2, 2, "jumprelu_ste", "mixed", progress=False, lm=lm)
    init_run(cfg2, run.root.parent, write_config=True)  # what the grid does with new settings
    train_grid_cell(run, cfg2, 2, "jumprelu_ste", "mixed", progress=False, lm=lm)
    assert (path / "metrics.json").stat().st_mtime_ns != stamp
    assert read_metrics(path)["train_steps"] == 12


def test_train_grid_names_unconverged_saes_in_one_warning(tiny_run, monkeypatch):
    from lib.sae import train_grid as sae_training

    cfg, run, lm = tiny_run

    def fake_cell(run, cfg, layer, arch, condition, **kw):
        if arch == "jumprelu_ste":
            warnings.warn("has not converged", NotConvergedWarning, stacklevel=1)
        warnings.warn("another warning", UserWarning, stacklevel=1)
        return run.sae_dir(cfg.sae_id(layer, arch, condition, kw["seed_index"]))

    monkeypatch.setattr(sae_training, "train_grid_cell", fake_cell)
    monkeypatch.setattr(sae_training, "load_model", lambda cfg: lm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sae_training.train_grid(run, cfg, progress=False, force=True)
    said = [str(w.message) for w in caught if issubclass(w.category, NotConvergedWarning)]
    ste = [cfg.sae_id(*c) for c in cfg.sae_grid() if c[1] == "jumprelu_ste"]
    assert len(said) == 1 and ste
    assert said[0].startswith(f"{len(ste)} of {len(cfg.sae_grid())} SAEs had not converged")
    assert all(sae_id in said[0] for sae_id in ste)
    others = [w for w in caught if w.category is UserWarning]
    assert len(others) == len(cfg.sae_grid())  # other warnings pass through, one per cell


def test_the_grid_trained_by_two_processes_equals_one_process(tiny_run, tmp_path):
    """``sae.n_jobs: 2`` shares the layers out over two processes; every SAE file and metric
    (timing aside) is byte for byte what one process writes."""
    import shutil

    from lib.sae.train_grid import train_grid

    cfg, run, _ = tiny_run
    out = {}
    for jobs in (1, 2):
        root = tmp_path / f"jobs{jobs}"
        shutil.copytree(run.root, root / run.root.name, ignore=shutil.ignore_patterns("saes"))
        c = cfg.model_copy(update={"sae": cfg.sae.model_copy(update={"n_jobs": jobs})})
        copy = init_run(c, root, write_config=True)
        paths = train_grid(copy, c, progress=False)
        assert len({p.name.split("_L")[1][0] for p in paths}) == 2  # two layers: two processes
        out[jobs] = {
            p.name: (
                (p / "sae_weights.safetensors").read_bytes(),
                {k: v for k, v in read_metrics(p).items() if "second" not in k},
            )
            for p in paths
        }
    assert out[1].keys() == out[2].keys() and len(out[1]) == len(cfg.sae_grid())
    for name in out[1]:
        assert out[1][name][0] == out[2][name][0], name
        assert out[1][name][1] == out[2][name][1], name


def test_seeds_train_one_sae_each_under_their_own_ids(tiny_run):
    from lib.sae.train_grid import train_grid_cell

    cfg, run, lm = tiny_run
    cfg2 = cfg.model_copy(update={"sae": cfg.sae.model_copy(update={"seeds": 2, "steps": 5})})
    init_run(cfg2, run.root.parent, write_config=True)
    first = train_grid_cell(run, cfg2, 1, "topk", "mixed", progress=False, lm=lm)
    second = train_grid_cell(run, cfg2, 1, "topk", "mixed", progress=False, lm=lm, seed_index=1)
    assert first.name == "organism_topk_L1_mixed" and second.name == "organism_topk_L1_mixed_s1"
    a, b = read_metrics(first), read_metrics(second)
    assert a["seed"] == cfg.seed and b["seed"] == cfg2.sae_seed(1) != cfg.seed
    assert not torch.equal(load_sae(first).W_dec, load_sae(second).W_dec)


def test_a_grid_cell_typed_by_hand_gets_a_clear_error(tiny_run):
    from lib.core.config import ConfigError
    from lib.sae.train_grid import check_sae_cell

    cfg, run, _ = tiny_run
    check_sae_cell(run, cfg, 2, "jumprelu_ste", "mixed")  # a real cell passes
    with pytest.raises(
        ConfigError, match=r"arch='relu'.*allowed: \['topk', 'jumprelu', 'jumprelu_ste'\]"
    ):
        check_sae_cell(run, cfg, 2, "relu", "mixed")
    with pytest.raises(ConfigError, match="condition='lying'"):
        check_sae_cell(run, cfg, 2, "topk", "lying")
    with pytest.raises(ConfigError, match=r"layer=40: the model has layers 0..7"):
        check_sae_cell(run, cfg, 40, "topk", "mixed")
    with pytest.raises(
        ConfigError, match=r"layer=5: it was not captured; captured layers .*\[1, 2\]"
    ):
        check_sae_cell(run, cfg, 5, "topk", "mixed")
