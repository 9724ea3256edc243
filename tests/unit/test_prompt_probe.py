"""The last-prompt-token probe's known answers (lib.probing.prompt_probe): it ties within every
prompt, matches the scenario prior under stratified folds, and sits at chance on held-out
families unless the prompt's own vector predicts how often its completions lie."""

from __future__ import annotations

import numpy as np

from lib.probing.prompt_probe import prompt_probe_metrics


def prompts(seed: int, rate_in_vector: bool, families: int = 20, per_prompt: int = 30, d: int = 12):
    """Two prompts per family, each with its own random vector and deception rate; with
    ``rate_in_vector`` the first coordinate of a prompt's vector is its rate (the wording
    predicts the behaviour), else the vectors know nothing of it."""
    rng = np.random.default_rng(seed)
    X, y, scenario, family = [], [], [], []
    for f in range(families):
        for v in range(2):
            rate = rng.uniform(0.1, 0.9)
            vec = rng.standard_normal(d)
            if rate_in_vector:
                vec[0] = 4 * (rate - 0.5)
            labels = (rng.uniform(size=per_prompt) < rate).astype(int)
            labels[:2] = (0, 1)
            X += [vec] * per_prompt
            y += list(labels)
            scenario += [f"f{f}-{v}"] * per_prompt
            family += [f"f{f}"] * per_prompt
    return np.array(X), np.array(y), np.array(scenario), np.array(family)


def test_the_prompt_probe_ties_within_prompts_and_reaches_only_the_scenario_prior():
    X, y, scenario, family = prompts(0, rate_in_vector=False)
    m = prompt_probe_metrics(X, y, scenario, family, n_boot=300, seed=1)
    assert m["within_scenario"] == 0.5
    assert m["prior"] > 0.65  # the prompts' rates differ: knowing the prompt is worth something
    assert m["stratified"] <= m["prior"] + 0.02, m
    assert abs(m["stratified"] - m["prior"]) < 0.08, m  # 40 prompts in 12 dimensions: close
    assert m["held_out_low"] <= 0.5 <= m["held_out_high"], m


def test_a_prompt_whose_vector_carries_its_rate_is_read_on_held_out_families():
    """The test can fail: when the prompt's vector predicts its deception rate, the held-out
    probe ranks new families' prompts and its interval leaves 0.5 (still no response read)."""
    X, y, scenario, family = prompts(2, rate_in_vector=True)
    m = prompt_probe_metrics(X, y, scenario, family, n_boot=300, seed=1)
    assert m["within_scenario"] == 0.5
    assert m["held_out_low"] > 0.5, m
