"""SAE ids are made and read back in one place (:class:`lib.core.vocabulary.SAEKey`)."""

from __future__ import annotations

import pytest

from lib.core.config import load_config
from lib.core.vocabulary import ARCHITECTURES, CONDITIONS, SAEKey
from lib.latents.separating import LatentsError, sae_layer


def test_every_sae_of_a_grid_round_trips_through_its_id():
    cfg = load_config("organism")
    ids = [cfg.sae_id(*cell, seed) for cell in cfg.sae_grid() for seed in range(cfg.sae.seeds)]
    assert len(set(ids)) == len(ids) > 0
    for sae_id in ids:
        key = SAEKey.parse(sae_id)
        assert key.id == sae_id and key.model == cfg.model_tag
        assert sae_layer(cfg, sae_id) == key.layer


def test_the_first_seed_carries_no_suffix_as_the_studys_ids_do():
    assert SAEKey("smollm2-135m", "topk", 21, "deceptive_only").id == (
        "smollm2-135m_topk_L21_deceptive_only"
    )
    assert SAEKey("m", "jumprelu_ste", 3, "mixed", 2).id == "m_jumprelu_ste_L3_mixed_s2"
    # jumprelu_ste is not read as jumprelu followed by a condition "ste_..."
    assert SAEKey.parse("m_jumprelu_ste_L3_mixed_s2") == SAEKey("m", "jumprelu_ste", 3, "mixed", 2)


@pytest.mark.parametrize(
    "bad",
    ["m_topk_L3", "m_relu_L3_mixed", "m_topk_L3_mixed_s0", "M_topk_L3_mixed", "m_topk_3_mixed"],
)
def test_what_is_not_an_sae_id_is_refused(bad):
    with pytest.raises(ValueError, match="not an SAE id"):
        SAEKey.parse(bad)


def test_keys_refuse_names_outside_the_vocabulary():
    with pytest.raises(ValueError, match="allowed"):
        SAEKey("m", "relu", 1, "mixed")
    with pytest.raises(ValueError, match="allowed"):
        SAEKey("m", "topk", 1, "both")
    assert len(ARCHITECTURES) == 3 and len(CONDITIONS) == 3


def test_a_layer_comes_from_the_id_or_else_the_saes_metadata():
    cfg = load_config("organism")

    class Published:
        meta = {"hook_layer": 7}

    assert sae_layer(cfg, "blocks.7.hook_resid_post", Published()) == 7
    with pytest.raises(LatentsError, match="no hook_layer"):
        sae_layer(cfg, "blocks.7.hook_resid_post")
