"""What each stage promises (lib/pipeline/stages.py), checked on real outputs with injected damage, and the
clear message for a damaged model file (lib/models/loading.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import small_config

import lib.models.loading
from lib.capture.sampling import completion_id
from lib.core.fileio import append_jsonl, safetensors_problem
from lib.core.rundir import RunDir, init_run
from lib.core.runlock import release
from lib.models.loading import ModelLoadError, load_model_path
from lib.models.organism import ORGANISM_DIR
from lib.pipeline.stages import OK, Inspector, csv_problem


def test_sampling_is_done_when_every_planned_id_is_there_once(tmp_path):
    cfg = small_config(
        tmp_path, scenarios=["mafia", "werewolf"], **{"sampling.samples_per_scenario": 2}
    )
    run = RunDir(tmp_path / "run")
    ids = [completion_id(s, i) for s in ("mafia", "werewolf") for i in range(2)]
    check = lambda: Inspector(run, cfg).check("01_sampling")  # noqa: E731
    assert check().why == "completions.jsonl is missing"
    append_jsonl(run.completions, [{"id": i} for i in ids[:3]])
    assert check().why == "1 of 4 planned completions are missing"
    append_jsonl(run.completions, [{"id": ids[3]}])
    assert check() == OK
    append_jsonl(run.completions, [{"id": ids[0]}])  # what two writers did
    assert check().why == "completions.jsonl repeats 1 ids (two writers?)"
    run.completions.write_text("".join(json.dumps({"id": i}) + "\n" for i in [*ids, "mafia-0009"]))
    assert check().why == "completions.jsonl holds 1 ids the config does not plan"


def test_activations_and_saes_are_checked_file_by_file(sampled_run, organism, tmp_path):
    from lib.sae.train_grid import train_grid_cell

    cfg0, src = sampled_run
    run = RunDir(tmp_path / cfg0.name)
    shutil.copytree(src.root, run.root)
    cfg = small_config(
        tmp_path,
        **{
            "sae.steps": 5,
            "sae.seeds": 1,
            "sae.layers": [2],
            "sae.ste_layers": [],
            "features.saes": "all",
        },
    )
    assert init_run(cfg, tmp_path, write_config=True) == run  # the copy's settings are cfg's
    release(run.root)
    ins = Inspector(run, cfg)
    assert ins.check("03_activation_capture") == OK
    params = {"layer": 2, "arch": "topk", "condition": "mixed"}
    assert ins.check("04_sae_training", params).why.endswith("lacks cfg.json, sae_weights.safetensors, metrics.json")  # fmt: skip
    path = train_grid_cell(run, cfg, 2, "topk", "mixed", progress=False, lm=organism)
    assert ins.check("04_sae_training", params) == OK
    digest = ins.digest("04_sae_training", params)
    assert digest == ins.digest("04_sae_training", params)
    # an SAE of other settings is not this config's SAE
    other = small_config(
        tmp_path,
        **{
            "sae.steps": 6,
            "sae.seeds": 1,
            "sae.layers": [2],
            "sae.ste_layers": [],
            "features.saes": "all",
        },
    )
    assert "was trained with other settings" in Inspector(run, other).check("04_sae_training", params).why  # fmt: skip
    # damaged or deleted weights
    weights = path / "sae_weights.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    why = ins.check("04_sae_training", params).why
    assert why.startswith(f"saes/{path.name}/sae_weights.safetensors is truncated (")
    weights.unlink()
    assert ins.check("04_sae_training", params).why == f"saes/{path.name} lacks sae_weights.safetensors"  # fmt: skip
    # a truncated activation file
    layer = run.activation_file(3)
    layer.write_bytes(layer.read_bytes()[:-100])
    why = ins.check("03_activation_capture").why
    assert why.startswith("activations/L03.safetensors is truncated (") and "bytes)" in why
    (run.activations / ".progress.json").write_text("{}")
    assert "did not finish" in ins.check("03_activation_capture").why


def test_result_csvs_exist_parse_and_have_a_header(tmp_path):
    path = tmp_path / "layer_profile.csv"
    assert csv_problem(path) == "results/layer_profile.csv is missing"
    path.write_text("")
    assert csv_problem(path) == "results/layer_profile.csv has no header"
    path.write_text(" , \n")
    assert csv_problem(path) == "results/layer_profile.csv has no header"
    path.write_text("layer,value\n")
    assert csv_problem(path) is None


def test_a_truncated_model_file_names_itself_and_how_to_rebuild(tmp_path, monkeypatch):
    copy = tmp_path / "organism"
    shutil.copytree(ORGANISM_DIR, copy)
    weights = copy / "model.safetensors"
    assert safetensors_problem(weights) is None  # the committed file is sound
    weights.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(ModelLoadError) as e:
        load_model_path(str(copy))
    msg = str(e.value)
    assert msg.startswith(f"{weights} is damaged: model.safetensors is truncated (100000 of ")
    assert f"download {str(copy)!r} again" in msg
    monkeypatch.setattr(lib.models.loading, "ORGANISM_DIR", copy)  # the organism's own folder
    with pytest.raises(
        ModelLoadError, match=r"git checkout -- .*model\.safetensors.*organism\.json"
    ):
        load_model_path(str(copy))
    weights.write_bytes(b"\x07" * 64)
    with pytest.raises(ModelLoadError, match="model.safetensors is truncated|no valid safetensors"):
        load_model_path(str(copy))
