import pytest

from lib.core.config import ConfigError, config_from_dict, load_config
from lib.core.scenarios import load_scenarios, scenarios_for


def test_configs_load_and_describe_the_study():
    org = load_config("organism")
    tiny = load_config("tinyllama")
    assert tiny.model == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"
    assert (tiny.sampling.temperature, tiny.sampling.top_k, tiny.sampling.top_p) == (1.0, 0, 1.0)
    assert len(tiny.sae_grid()) == 39  # 5 layers x 2 archs x 3 conditions + 3 STE layers x 3
    assert sum(a == "jumprelu_ste" for _, a, _ in tiny.sae_grid()) == 9
    assert (
        tiny.sae_id(15, "jumprelu_ste", "honest_only") == "tinyllama_jumprelu_ste_L15_honest_only"
    )
    assert {a for _, a, _ in org.sae_grid()} == {"topk", "jumprelu", "jumprelu_ste"}
    tiny.check_layers(22)


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config("organism", {"sae.expansion": 8})
    msg = str(e.value)
    assert "sae.expansion" in msg and "unknown key" in msg and "expansion_factor" in msg


def test_unknown_top_level_key():
    with pytest.raises(
        ConfigError, match=r"temprature: unknown key; allowed keys here: .*sampling"
    ):
        config_from_dict({"model": "organism", "model_tag": "x", "temprature": 1.0})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"sampling\.samples_per_scenario"):
        load_config("organism", {"sampling.samples_per_scenario": "many"})
    with pytest.raises(ConfigError, match=r"sae\.architectures\.0"):
        load_config("organism", {"sae.architectures": ["gated"]})


def test_layer_outside_model_is_named():
    cfg = load_config("tinyllama", {"sae.layers": [3, 22]})
    with pytest.raises(
        ConfigError, match=r"sae\.layers: layer\(s\) \[22\] outside the model; allowed: 0\.\.21"
    ):
        cfg.check_layers(22)


def test_empty_or_unknown_scenarios():
    with pytest.raises(ConfigError, match="scenarios is empty"):
        load_config("organism", {"scenarios": []})
    cfg = load_config("organism", {"scenarios": ["mafia", "poker"]})
    with pytest.raises(ConfigError, match=r"unknown id\(s\) \['poker'\]; allowed: .*werewolf"):
        scenarios_for(cfg)


def test_judge_primary_must_be_run():
    with pytest.raises(ConfigError, match="judge.primary"):
        load_config("organism", {"judge.primary": "gemini"})


def test_unknown_config_name_lists_known():
    with pytest.raises(ConfigError, match=r"known configs: \[.*organism.*tinyllama"):
        load_config("tinyllamma")


def test_scenario_pool_is_the_studys_nine():
    pool = load_scenarios(load_config("organism").scenario_path())
    assert len(pool) == 9
    assert sum(s.kind == "incentive" for s in pool.values()) == 6
    assert {"secret_hitler", "mafia", "werewolf"} == {
        s.id for s in pool.values() if s.kind == "roleplay"
    }
    assert "round 6 of 10" in pool["secret_hitler"].prompt
    for s in pool.values():
        assert s.cues["deceptive"] and s.cues["honest"]


# ----- cross-references, checked when a config is loaded (and so by --dry-run) -------------------
def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsae:\n  layers: [2, 5\n  k: 16\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml is not valid YAML at line \d+, column \d+"
    ) as e:
        load_config(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"features.saes": ["organism_topk_L3_mixed"]},
            r"features\.saes: \['organism_topk_L3_mixed'\] are not SAEs of this grid",
        ),
        ({"sae.ste_layers": []}, r"features\.saes: \['organism_jumprelu_ste_L2_mixed'"),
        ({"capture.layers": [0, 1, 2]}, r"sae layers \[5\] not in capture\.layers \[0, 1, 2\]"),
    ],
)
def test_every_cross_reference_names_the_field_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("organism", overrides)


def test_the_dry_run_refuses_what_the_real_run_refuses(capsys):
    from lib.pipeline.grid import main

    assert main(["--config", "organism", "--dry-run", "--set", "sae.layers=[2, 5, 12]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sae.layers: layer(s) [12] outside the model" in err
    assert main(["--config", "organism", "--dry-run", "--set", "features.saes=[nope]"]) == 2
    assert "features.saes" in capsys.readouterr().err


def test_an_override_another_field_overrules_is_named():
    from lib.core.config import ignored_overrides

    steps = load_config("organism")
    assert steps.sae.steps == 500
    assert ignored_overrides(steps, {"sae.epochs": 5}) == [
        "sae.epochs=5 has no effect: sae.steps=500 governs (set sae.steps=null to train by epochs)"
    ]
    assert ignored_overrides(steps, {"sae": {"fold_epochs": 2}})[0].startswith(
        "sae.fold_epochs=2 has no effect: sae.steps=500 governs"
    )
    assert ignored_overrides(steps, {"sae.steps": 100, "sae.fold_steps": 50}) == []
    by_epochs = load_config("organism", {"sae.steps": None, "sae.epochs": 5})
    assert ignored_overrides(by_epochs, {"sae.steps": None, "sae.epochs": 5}) == []
    assert ignored_overrides(by_epochs, {"sae.fold_steps": 50}) == [
        "sae.fold_steps=50 has no effect while sae.steps is null: the leakage SAEs train for "
        "sae.fold_epochs (default: sae.epochs) passes"
    ]
