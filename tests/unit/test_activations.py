"""Activation capture: the true resid_post of every layer, proven against independent paths."""

import json

import pytest
import torch
from conftest import small_config
from safetensors.torch import load_file

from lib.capture.activations import capture_batch, capture_run
from lib.capture.labelled import labelled_rows, read_layer
from lib.core.config import ConfigError
from lib.core.fileio import RunDirError, read_jsonl
from lib.core.rundir import init_run
from lib.models.loading import decoder_layers, resid_hooks, row_ids


def _rows(run, n):
    return read_jsonl(run.completions)[:n]


def test_hooks_equal_hidden_states_and_last_layer_is_pre_norm(organism, sampled_run):
    model, tok = organism
    _, run = sampled_run
    ids, n_prompt = row_ids(tok, _rows(run, 1)[0])
    L = len(decoder_layers(model))
    out = capture_batch(model, tok, [(ids, n_prompt)], list(range(L)))
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for i in range(L - 1):
        assert torch.equal(out[i]["tokens"], hs[i + 1][0, n_prompt:].float()), i
    last = out[L - 1]["tokens"]
    assert not torch.allclose(last, hs[L][0, n_prompt:])  # hidden_states[-1] is normed
    torch.testing.assert_close(model.model.norm(last), hs[L][0, n_prompt:], rtol=0, atol=1e-5)


def test_last_mean_and_owner_by_hand(organism, sampled_run):
    cfg, run = sampled_run
    model, tok = organism
    rows = read_jsonl(run.completions)
    layer = read_layer(run, 3)
    r = 4
    ids, n_prompt = row_ids(tok, rows[r])
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[4][0]
    comp = h[n_prompt:]
    torch.testing.assert_close(layer.last[r], comp[-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.mean[r], comp.mean(0), rtol=0, atol=1e-5)
    mine = layer.tokens[layer.token_owner == r]
    torch.testing.assert_close(mine, comp, rtol=0, atol=1e-5)
    counts = torch.bincount(layer.token_owner, minlength=len(rows))
    assert counts.tolist() == [x["n_completion_tokens"] for x in rows]
    assert layer.token_owner.tolist() == sorted(layer.token_owner.tolist())


def test_batched_capture_with_mixed_lengths_equals_one_by_one(organism, sampled_run):
    model, tok = organism
    _, run = sampled_run
    rows = read_jsonl(run.completions)
    picks = sorted(rows, key=lambda r: r["n_completion_tokens"])
    picks = [picks[0], picks[len(picks) // 2], picks[-1], rows[0], rows[-1]]
    seqs = [row_ids(tok, r) for r in picks]
    assert len({len(s) for s, _ in seqs}) > 2
    batched = capture_batch(model, tok, seqs, [0, 4, 7])
    for layer in (0, 4, 7):
        alone = [capture_batch(model, tok, [s], [layer])[layer] for s in seqs]
        for key in ("last", "mean"):
            torch.testing.assert_close(
                batched[layer][key], torch.cat([a[key] for a in alone]), rtol=0, atol=1e-5
            )
        torch.testing.assert_close(
            batched[layer]["tokens"], torch.cat([a["tokens"] for a in alone]), rtol=0, atol=1e-5
        )


def test_cached_generation_equals_teacher_forced(organism, sampled_run):
    """Residuals seen while generating with a KV cache equal the teacher-forced capture."""
    model, tok = organism
    _, run = sampled_run
    row = _rows(run, 1)[0]
    ids, n_prompt = row_ids(tok, row)
    seen = []
    with resid_hooks(model, [5], lambda _i, h: seen.append(h[0, -1].clone())), torch.no_grad():
        out = model(input_ids=torch.tensor([ids[:n_prompt]]), use_cache=True)
        past = out.past_key_values
        for pos in range(n_prompt, len(ids)):
            out = model(input_ids=torch.tensor([[ids[pos]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
    generated = torch.stack(
        seen[1:]
    )  # the residual at each completion token, computed step by step
    forced = capture_batch(model, tok, [(ids, n_prompt)], [5])[5]["tokens"]
    torch.testing.assert_close(generated, forced, rtol=0, atol=1e-5)


def test_index_and_files(sampled_run):
    cfg, run = sampled_run
    index = json.loads(run.activation_index.read_text())
    assert index["hook_names"]["3"] == "model.layers.3"
    assert index["layers"] == list(range(8))
    raw = load_file(str(run.activation_file(7)))
    assert raw["last"].shape == (index["n_completions"], 128)
    assert raw["tokens"].shape == (index["n_tokens"], 128)
    lab = labelled_rows(run, cfg)
    assert len(lab) > 0.7 * index["n_completions"] and set(lab.y) == {0, 1}


def test_resume_after_a_kill_equals_uninterrupted(tmp_path, organism, sampled_run, monkeypatch):
    cfg0, run0 = sampled_run
    cfg = small_config(tmp_path, name="kill")
    run = init_run(cfg, tmp_path)
    run.completions.write_bytes(run0.completions.read_bytes())
    run.labels.write_bytes(run0.labels.read_bytes())
    model, tok = organism
    import lib.capture.activations as act

    real, calls = act.capture_batch, {"n": 0}

    def dies(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(act, "capture_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        capture_run(run, cfg, model, tok, progress=False)
    monkeypatch.setattr(act, "capture_batch", real)
    capture_run(run, cfg, model, tok, progress=False)
    for layer in (0, 7):
        assert run.activation_file(layer).read_bytes() == run0.activation_file(layer).read_bytes()
    assert (
        json.loads(run.activation_index.read_text())["ids"]
        == json.loads(run0.activation_index.read_text())["ids"]
    )


def test_bad_inputs_are_clear(tmp_path, organism, sampled_run):
    model, tok = organism
    cfg = small_config(tmp_path, name="empty")
    run = init_run(cfg, tmp_path)
    with pytest.raises(RunDirError, match=r"completions\.jsonl is missing; run 01_sampling"):
        capture_run(run, cfg, model, tok, progress=False)
    _, run0 = sampled_run
    run.completions.write_bytes(run0.completions.read_bytes())
    with pytest.raises(RunDirError, match=r"labels\.jsonl is missing; run 02_classification"):
        capture_run(run, cfg, model, tok, progress=False)
    run.labels.write_bytes(run0.labels.read_bytes())
    bad = small_config(tmp_path, name="empty", **{"capture.layers": [0, 2, 5, 8]})
    with pytest.raises(
        ConfigError, match=r"capture\.layers: layer\(s\) \[8\] outside the model; allowed: 0\.\.7"
    ):
        capture_run(run, bad, model, tok, progress=False)


def test_corrupt_or_foreign_activation_files_are_refused(tmp_path, sampled_run):
    import shutil

    cfg, run0 = sampled_run
    run = init_run(small_config(tmp_path, name="corrupt"), tmp_path)
    shutil.copytree(run0.activations, run.activations)
    run.completions.write_bytes(run0.completions.read_bytes())
    run.labels.write_bytes(run0.labels.read_bytes())
    run.activation_file(2).write_bytes(b"\x00garbage")
    with pytest.raises(RunDirError, match=r"L02\.safetensors is unreadable"):
        read_layer(run, 2)
    # an index from another run (different ids) must not be joined with these completions
    index = json.loads(run.activation_index.read_text())
    index["ids"] = [f"other-{i}" for i in range(len(index["ids"]))]
    run.activation_index.write_text(json.dumps(index))
    with pytest.raises(RunDirError, match="belong to another run"):
        labelled_rows(run, cfg)


def test_prompt_last_is_the_last_prompt_tokens_resid_post_shared_by_its_completions(
    organism, sampled_run
):
    """``activations/prompt_last.safetensors``: one vector per prompt and layer, equal to the
    hidden state after that layer at the prompt's last token, and every completion points at
    its own prompt (the input of the last-prompt-token probe)."""
    from lib.capture.labelled import read_prompt_last

    model, tok = organism
    _, run = sampled_run
    rows = read_jsonl(run.completions)
    pl = read_prompt_last(run)
    assert pl.layers == list(range(8))
    assert len(pl.prompt_of) == len(rows)
    assert len(set(pl.prompt_of.tolist())) == len({r["scenario"] for r in rows})
    for r in (0, len(rows) - 1):
        ids, n_prompt = row_ids(tok, rows[r])
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids[:n_prompt]]), output_hidden_states=True)
        for layer in (0, 3, 6):
            want = hs.hidden_states[layer + 1][0, -1]
            got = pl.vectors[layer][pl.prompt_of[r]]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    same = [i for i, x in enumerate(rows) if x["scenario"] == rows[0]["scenario"]]
    assert len({int(pl.prompt_of[i]) for i in same}) == 1
