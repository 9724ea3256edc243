"""SAE features on the SAE's own input distribution: encode every token, then pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.capture.labelled import LayerData
from lib.core.config import SAEConfig
from lib.probing.probe import cross_validate
from lib.sae.codes import sae_features, training_norm
from lib.sae.trainer import train_sae


def planted_layer(n=160, d=24, seed=0, strength=8.0):
    """Token vectors (4-12 per completion, plus one without tokens) with a label direction on
    every token of a deceptive completion; ``last``/``mean`` pooled as the capture stage does."""
    g = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    direction = g.normal(size=d)
    direction /= np.linalg.norm(direction)
    lengths = g.integers(4, 13, size=n)
    lengths[-1] = 0
    owner = np.repeat(np.arange(n), lengths)
    tokens = g.normal(size=(len(owner), d)) * 3 + 0.5 * g.normal(size=d)
    tokens += strength * np.outer(y[owner], direction)
    last = np.stack([tokens[owner == i][-1] if lengths[i] else g.normal(size=d) for i in range(n)])
    mean = np.stack([tokens[owner == i].mean(0) if lengths[i] else last[i] for i in range(n)])
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    data = LayerData(
        0, [f"c{i}" for i in range(n)], f32(last), f32(mean), f32(tokens), torch.tensor(owner)
    )
    return data, y


@pytest.fixture(scope="module")
def token_sae():
    data, y = planted_layer()
    cfg = SAEConfig(expansion_factor=4, k=8, epochs=30, batch_size=64, lr=3e-3)
    sae, hist = train_sae(data.tokens, "topk", cfg, seed=0, progress=False)
    sae.meta.update(train_on="tokens", activation_scale=hist["scale"])
    return sae, data, y


def test_pooled_token_codes_equal_a_per_completion_loop(token_sae):
    sae, data, _ = token_sae
    rows = np.array([5, 0, 159, 42])  # any order; 159 has no tokens
    out = sae_features(sae, data, rows, poolings=("mean", "max", "last"))
    assert out.ok and out.inputs == "tokens"
    for i, r in enumerate(rows):
        toks = data.tokens[data.token_owner == r]
        codes = sae.encode(toks if len(toks) else data.last[r : r + 1]).numpy()
        np.testing.assert_allclose(out.features["mean"][i], codes.mean(0), atol=1e-5)
        np.testing.assert_allclose(out.features["max"][i], codes.max(0), atol=1e-5)
        np.testing.assert_allclose(out.features["last"][i], codes[-1], atol=1e-5)
    assert out.input_l0 == pytest.approx(8.0, abs=0.01)  # TopK fires k on every token
    assert out.n_inputs == int(sum((data.token_owner == r).sum() for r in rows))


def test_planted_direction_is_found_by_encode_then_pool(token_sae):
    sae, data, y = token_sae
    rows = np.arange(len(y))
    out = sae_features(sae, data, rows)
    assert out.ok and 0.8 < out.norm_ratio < 1.25 and out.input_fvu < 0.5
    scen = np.array([f"s{i % 4}" for i in rows])
    res = cross_validate(out.features["mean"], y, scen, "stratified")
    assert res.value["bal_acc"] >= 0.9


def test_mean_pooled_vectors_fed_to_a_token_sae_are_refused(token_sae):
    sae, data, _ = token_sae
    rows = np.arange(40)
    out = sae_features(sae, data, rows, train_on="mean")  # what the study's probes did
    assert not out.ok and "refused" in out.note and out.features == {}
    assert out.norm_ratio < 0.5  # a mean of ~8 noisy tokens is much shorter than a token
    # asked to, the features are returned with the measurements that show the problem
    forced = sae_features(sae, data, rows, train_on="mean", check_norm=False)
    assert forced.features["mean"].shape == (40, sae.d_sae)


def test_training_norm_comes_from_the_activation_scale(token_sae):
    sae, data, _ = token_sae
    mean_norm = float(data.tokens.norm(dim=1).mean())
    assert training_norm(sae) == pytest.approx(mean_norm, rel=1e-4)
    with pytest.raises(ValueError, match="poolings"):
        sae_features(sae, data, np.arange(3), poolings=("median",))
