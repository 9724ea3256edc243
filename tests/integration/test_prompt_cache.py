"""The prompt cache (``prompt_cache: true``): each scenario prompt prefilled once, the completion
tokens run on its KV cache. Sampling draws the same tokens; capture and the SAE loss passes give
the same numbers up to float rounding; the switch is off by default (the TinyLlama grid keeps the
study's one full pass per row) and on in the organism book and the rehearsal."""

import torch
from conftest import small_config

from lib.capture.activations import capture_batch
from lib.capture.sampling import generate_batch, generate_rows, sample_run, sample_seed
from lib.core.config import load_config
from lib.core.fileio import read_jsonl
from lib.core.rundir import init_run
from lib.core.scenarios import scenarios_for
from lib.models.loading import decoder_layers, prefill_rows, row_ids, stack_prompts
from lib.sae.metrics import ce_with_replacement, sae_lm_metrics
from lib.sae.model import SAE

TWO = ["mafia", "surprise_party"]


def test_off_by_default_and_on_in_the_rehearsal_and_the_organism():
    assert load_config("organism").prompt_cache is True
    assert load_config("tinyllama").prompt_cache is False
    assert load_config("rehearsal").prompt_cache is True


def test_stacked_prompts_are_left_padded_and_reusable(organism):
    model, _ = organism
    store: dict = {}
    a, b = (1, 5, 6, 7), (1, 9)
    rows = prefill_rows(model, [a, b, a], store)
    assert len(store) == 2 and rows[0] is rows[2] and [n for *_, n in rows] == [4, 2, 4]
    past, mask = stack_prompts(rows)
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    keys = past.layers[0].keys
    assert keys.shape[0] == 3 and keys.shape[-2] == 4
    assert torch.equal(keys[1, :, 2:], rows[1][0].layers[0].keys[0])  # b's cache, left-padded
    assert torch.equal(keys[1, :, :2], torch.zeros_like(keys[1, :, :2]))
    assert rows[1][0].layers[0].keys.shape[-2] == 2  # the stored cache is unchanged
    assert stack_prompts([rows[0], rows[0]])[1] is None  # nothing padded: no mask


def test_sampling_draws_the_same_tokens(organism):
    model, tok = organism
    cfg = load_config("organism")
    for sc in scenarios_for(cfg)[:3]:
        seeds = [sample_seed(0, sc.id, i) for i in range(5)]
        full = generate_batch(model, tok, sc.prompt, seeds, cfg.sampling)
        cached = generate_batch(model, tok, sc.prompt, seeds, cfg.sampling, prompt_cache=True)
        assert cached == full, sc.id
        assert sum(map(len, full)) > 20


def test_several_prompts_decoded_together_draw_the_same_tokens(organism):
    model, tok = organism
    cfg = load_config("organism")
    scs = scenarios_for(cfg)[:4]  # prompts of different lengths: left padding is exercised
    assert len({len(tok(sc.prompt).input_ids) for sc in scs}) > 1
    rows = [(sc, i) for sc in scs for i in range(3)]
    seeds = [sample_seed(0, sc.id, i) for sc, i in rows]
    together = generate_rows(model, tok, [sc.prompt for sc, _ in rows], seeds, cfg.sampling)
    alone = []
    for sc in scs:
        alone += generate_batch(
            model, tok, sc.prompt, [sample_seed(0, sc.id, i) for i in range(3)], cfg.sampling
        )
    assert together == alone


def test_sampled_file_is_byte_identical(tmp_path, organism):
    model, tok = organism
    files = []
    for name, on in (("off", False), ("on", True)):
        kw = {"sampling.batch_size": 40} if on else {}  # on: both scenarios in one batch
        cfg = small_config(tmp_path, name=name, scenarios=TWO, prompt_cache=on, **kw)
        run = init_run(cfg, tmp_path)
        sample_run(run, cfg, model, tok, progress=False)
        files.append(run.completions.read_bytes())
    assert files[0] == files[1]


def _mixed_rows(run, n=7):
    rows = read_jsonl(run.completions)
    by_scenario = {}
    for r in rows:
        by_scenario.setdefault(r["scenario"], []).append(r)
    groups = [g for g in by_scenario.values() if len(g) >= 3][:3]
    picked = [r for g in groups for r in g[:3] if r["n_completion_tokens"] > 0]
    return picked[:n]


def test_capture_equals_full_passes_up_to_rounding(organism, sampled_run):
    model, tok = organism
    _, run = sampled_run
    rows = _mixed_rows(run)
    seqs = [row_ids(tok, r) for r in rows]
    assert len({n for _, n in seqs}) >= 2  # prompts of several lengths in one batch
    layers = list(range(len(decoder_layers(model))))
    full = capture_batch(model, tok, seqs, layers)
    cached = capture_batch(model, tok, seqs, layers, prompt_cache=True)
    for layer in layers:
        for key in ("last", "mean", "tokens"):
            assert cached[layer][key].shape == full[layer][key].shape
            torch.testing.assert_close(cached[layer][key], full[layer][key], rtol=1e-4, atol=1e-4)


def test_capture_with_an_empty_completion_takes_the_full_pass(organism, sampled_run):
    model, tok = organism
    _, run = sampled_run
    row = _mixed_rows(run)[0]
    ids, n_prompt = row_ids(tok, row)
    seqs = [(ids, n_prompt), (ids[:n_prompt], n_prompt)]  # the second: EOS at once
    full = capture_batch(model, tok, seqs, [2])
    cached = capture_batch(model, tok, seqs, [2], prompt_cache=True)
    for key in ("last", "mean", "tokens"):
        assert torch.equal(cached[2][key], full[2][key])


def _sae(d: int, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, 4 * d, "topk", k=8)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, 4 * d, generator=g) / d**0.5)
        sae.W_dec.copy_(torch.randn(4 * d, d, generator=g) / d**0.5)
    return sae


def test_sae_losses_equal_full_passes_up_to_rounding(organism, sampled_run):
    model, tok = organism
    _, run = sampled_run
    rows = _mixed_rows(run)
    sae = _sae(model.config.hidden_size)
    prompts: dict = {}
    for mode in ("clean", "zero", "sae"):
        full = ce_with_replacement(model, tok, rows, 3, mode, sae, batch_size=4)
        cached = ce_with_replacement(model, tok, rows, 3, mode, sae, batch_size=4, prompts=prompts)
        assert cached[1] == full[1] == sum(r["n_completion_tokens"] for r in rows)
        assert abs(cached[0] - full[0]) < 1e-4 * abs(full[0]), mode
    assert len(prompts) == len({r["scenario"] for r in rows})  # one prefill per prompt, reused
    full = sae_lm_metrics(model, tok, rows, 3, sae, batch_size=4)
    for _ in range(2):  # the second call reuses the first's clean passes
        cached = sae_lm_metrics(model, tok, rows, 3, sae, batch_size=4, prompts=prompts)
        assert cached["n_tokens"] == full["n_tokens"]
        for key in ("ce_clean", "ce_sae", "delta_ce", "kl"):
            assert abs(cached[key] - full[key]) < 1e-4 * max(1.0, abs(full[key])), key
    assert sum(k[0] == "clean" for k in prompts) == 1
    assert full["delta_ce"] > 0.01  # the random SAE costs the model something


def test_rows_that_end_leave_the_batch_and_the_others_draw_the_same_tokens(organism):
    """A frequent token made EOS ends most rows early: the decode loop drops them from the batch
    (and their cache rows) once a quarter has ended; the rows left draw what they draw alone."""
    model, tok = organism
    cfg = load_config("organism")
    sc = scenarios_for(cfg)[0]
    seeds = [sample_seed(0, sc.id, i) for i in range(12)]
    full = generate_batch(model, tok, sc.prompt, seeds, cfg.sampling)
    counts = torch.bincount(torch.tensor([t for row in full for t in row[1:]]))
    frequent = int(counts.argmax())  # ends a row when drawn after its first token

    class EndsOften:
        eos_token_id = frequent
        __call__ = staticmethod(tok.__call__)

    def cut(row: list[int]) -> list[int]:
        return row[: row.index(frequent)] if frequent in row else row

    together = generate_rows(model, EndsOften(), [sc.prompt] * len(seeds), seeds, cfg.sampling)
    lengths = [len(r) for r in together]
    assert together == [cut(r) for r in full]
    assert sum(n < len(r) for n, r in zip(lengths, full, strict=True)) >= 3  # rows did end early
    assert max(lengths) > min(lengths)


def test_decode_steps_write_into_reserved_room(organism):
    model, tok = organism
    rows = prefill_rows(model, [(1, 5, 6, 7), (1, 9)])
    past, _ = stack_prompts(rows, reserve=3)
    layer = past.layers[0]
    buffer = layer._buffers[0]
    k = torch.randn(2, layer.keys.shape[1], 1, layer.keys.shape[-1])
    keys, _ = layer.update(k, k.clone())
    assert keys.shape[-2] == 5 and torch.equal(keys[:, :, -1:], k)
    assert keys.data_ptr() == buffer.data_ptr()  # a view of the buffer: nothing concatenated
    for _ in range(3):  # one past the room: grows as DynamicLayer does
        keys, _ = layer.update(k, k.clone())
    assert keys.shape[-2] == 8 and torch.equal(keys[:, :, -4:], k.expand(-1, -1, 4, -1))
    assert torch.equal(keys[0, :, :4], rows[0][0].layers[0].keys[0])  # the prompt kept its place
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.keys.shape[0] == 1
    assert torch.equal(layer.keys[0, :, 2:4], rows[1][0].layers[0].keys[0])


def test_auto_dtype_is_bfloat16_only_where_its_matmuls_are_fast(monkeypatch):
    import lib.models.loading as loading

    assert loading.resolve_dtype("float32", "cpu") == "float32"
    assert loading.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    for fast, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(loading, "fast_bf16", lambda d, fast=fast: d.type == "cuda" or fast)
        assert loading.resolve_dtype("auto", "cpu") == want


def test_bfloat16_decodes_with_eager_attention_and_gives_it_back(organism, organism_path):
    from lib.models.loading import decode_attention, load_model_path

    model, _ = organism
    assert model.config._attn_implementation == "sdpa"
    with decode_attention(model):  # float32: sdpa is the faster here and stays
        assert model.config._attn_implementation == "sdpa"
    bf16, _ = load_model_path(str(organism_path), dtype="bfloat16")
    with decode_attention(bf16):
        assert bf16.config._attn_implementation == "eager"
    assert bf16.config._attn_implementation == "sdpa"
