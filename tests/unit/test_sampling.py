"""Same-prompt sampling: seeding, resumability, and true temperature sampling."""

import pytest
import torch
import transformers as tf
from conftest import small_config

import lib.capture.sampling as sampling
from lib.capture.sampling import filter_logits, regenerate, sample_run
from lib.core.rundir import init_run

TWO = ["mafia", "surprise_party"]


def _run(tmp_path, name, organism, **kw):
    cfg = small_config(tmp_path, name=name, scenarios=TWO, **kw)
    run = init_run(cfg, tmp_path)
    model, tok = organism
    sample_run(run, cfg, model, tok, progress=False)
    return cfg, run


def test_same_seed_same_file_other_seed_other_file(tmp_path, organism):
    _, a = _run(tmp_path, "a", organism)
    _, b = _run(tmp_path, "b", organism)
    _, c = _run(tmp_path, "c", organism, seed=1)
    assert a.completions.read_bytes() == b.completions.read_bytes()
    assert a.completions.read_bytes() != c.completions.read_bytes()


@pytest.mark.parametrize("prompt_cache", [False, True])
def test_interrupted_then_resumed_equals_uninterrupted(
    tmp_path, organism, monkeypatch, prompt_cache
):
    _, full = _run(tmp_path, "full", organism, prompt_cache=prompt_cache)
    cfg = small_config(tmp_path, name="cut", scenarios=TWO, prompt_cache=prompt_cache)
    run = init_run(cfg, tmp_path)
    model, tok = organism
    decode = "generate_rows" if prompt_cache else "generate_batch"  # what sample_run calls
    real, calls = getattr(sampling, decode), {"n": 0}

    def dies_on_third_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(sampling, decode, dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        sample_run(run, cfg, model, tok, progress=False)
    assert calls["n"] == 3
    # a kill in the middle of a write leaves a torn last line; resuming must repair it
    with open(run.completions, "a") as f:
        f.write('{"id": "mafia-00')
    monkeypatch.setattr(sampling, decode, real)
    rows = sample_run(run, cfg, model, tok, progress=False)
    assert len(rows) == 2 * cfg.sampling.samples_per_scenario
    assert run.completions.read_bytes() == full.completions.read_bytes()


def test_any_completion_regenerates_alone(tmp_path, organism):
    cfg, run = _run(tmp_path, "r", organism)
    from lib.core.fileio import read_jsonl

    rows = {r["id"]: r for r in read_jsonl(run.completions)}
    model, tok = organism
    for scenario, sample in [("mafia", 0), ("mafia", 5), ("surprise_party", 3)]:
        alone = regenerate(cfg, model, tok, scenario, sample)
        assert alone == rows[f"{scenario}-{sample:04d}"]


def _flat_model():
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    return tf.LlamaForCausalLM(cfg).eval()


def _top50_share(tokens, logits):
    top50 = set(torch.topk(logits, 50).indices.tolist())
    return sum(t in top50 for t in tokens) / len(tokens)


def test_top_k_zero_samples_beyond_the_top_50():
    model = _flat_model()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    s = small_config(None).sampling
    gens = [torch.Generator().manual_seed(i) for i in range(400)]
    ours = sampling.draw(filter_logits(logits.expand(400, -1), s), gens).tolist()
    # a near-flat distribution over 1000 tokens: the top 50 hold only ~5% of the mass
    assert _top50_share(ours, logits) < 0.2
    # with top_k=50 (what transformers' generate() applies unless told otherwise) nothing escapes
    s50 = s.model_copy(update={"top_k": 50})
    gens = [torch.Generator().manual_seed(i) for i in range(400)]
    assert (
        _top50_share(
            sampling.draw(filter_logits(logits.expand(400, -1), s50), gens).tolist(), logits
        )
        == 1.0
    )


def test_generate_default_silently_truncates_to_top_50():
    """The pitfall the book avoids: do_sample=True without top_k samples only from the top 50."""
    model = _flat_model()
    ids = torch.tensor([[1, 2, 3]]).expand(200, -1)
    with torch.no_grad():
        logits = model(ids[:1]).logits[0, -1]
        torch.manual_seed(0)
        out = model.generate(ids, do_sample=True, max_new_tokens=1, temperature=1.0, pad_token_id=0)
        assert _top50_share(out[:, -1].tolist(), logits) == 1.0
        torch.manual_seed(0)
        out = model.generate(
            ids,
            do_sample=True,
            max_new_tokens=1,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=0,
        )
        assert _top50_share(out[:, -1].tolist(), logits) < 0.2


def test_batch_progress_is_a_few_lines_and_one_for_a_resume(
    tmp_path, organism, monkeypatch, capsys
):
    """In batch runs (the grid, nbval, make publish) the bars are log lines: one per quarter, one
    for a resumed stage that skips its finished part at once; never a live bar's first frame."""
    from lib.core.runtime import LogProgress

    def shown(out: str) -> list[str]:
        return [line.split(" done")[0] for line in out.splitlines()]

    bar = LogProgress(total=8, desc="x")
    for _ in range(8):
        bar.update(1)
    bar.close()
    assert shown(capsys.readouterr().out) == ["x: 2/8", "x: 4/8", "x: 6/8", "x: 8/8"]
    bar = LogProgress(total=8, desc="x")
    bar.update(5)
    bar.update(3)
    bar.close()
    assert shown(capsys.readouterr().out) == ["x: 5/8", "x: 8/8"]

    monkeypatch.setenv("DECEPTION_SAES_BATCH", "1")
    cfg = small_config(tmp_path, name="b", scenarios=TWO)
    run = init_run(cfg, tmp_path)
    model, tok = organism
    sample_run(run, cfg, model, tok)
    first = capsys.readouterr()
    assert shown(first.out)[-1] == "sampling: 40/40" and "it/s" not in first.err + first.out
    sample_run(run, cfg, model, tok)  # finished: one line
    assert shown(capsys.readouterr().out) == ["sampling: 40/40"]
