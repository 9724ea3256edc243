"""Capture throughput vs the bare forward pass (issue 4's goal: hook overhead at most 10%).

Run: ``make bench`` or ``python tests/benchmarks/bench_capture.py``. Prints, per model, tokens per
second of the bare forward pass and of ``capture_batch`` over every layer, and the overhead.
Three models on 2 threads: the organism (float32), a randomly initialised TinyLlama-shaped Llama
(22 layers, d=2048, 32 heads / 4 kv heads, SwiGLU 5632, vocab 32000) in float32, and
SmolLM2-135M-Instruct (the book's main model) as notebook 03 captures it (the prompt cache: 48
completions of 16 tokens after one 125-token prompt) in float32 and in bfloat16.

Writes ``tests/benchmarks/results/bench_capture.txt``: a header, one line per model
``capture <model> bare_tok_s <a> capture_tok_s <b> overhead <o>`` and
``bf16 capture speedup <r> kernel <name>`` (SmolLM2's capture in bfloat16 over float32; the kernel
as ``bench_sampler.bf16_kernel`` names it).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lib.capture.activations import capture_batch
from lib.models.loading import decoder_layers, pad_right
from lib.models.random_models import PRESETS

TINYLLAMA = PRESETS["tinyllama"]["config"]  # the study model's shapes
RESULTS = Path(__file__).resolve().parent / "results" / "bench_capture.txt"


class _Tok:
    pad_token_id = 0


def _seqs(n: int, prompt: int, completion: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        length = prompt + completion - (i % 5)  # mixed lengths, as in a real batch
        out.append((torch.randint(3, vocab, (length,), generator=g).tolist(), prompt))
    return out


@torch.inference_mode()
def _time_pair(a, b, repeats: int) -> tuple[float, float]:
    """Best seconds of ``a`` and of ``b``, timed in turns (A B A B ...) so that load from other
    processes falls on both alike."""
    a(), b()  # warm-up
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((a, b)):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], best[1]


def measure(model, seqs, repeats: int) -> dict:
    layers = list(range(len(decoder_layers(model))))
    ids, mask = pad_right([s for s, _ in seqs], 0, "cpu")
    n_tokens = int(mask.sum())

    def bare_pass():  # the same layers without hooks (the LM head of the last position only,
        # as capture_batch runs it)
        model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)

    bare, cap = _time_pair(bare_pass, lambda: capture_batch(model, _Tok(), seqs, layers), repeats)
    return {
        "tokens": n_tokens,
        "bare_tok_s": n_tokens / bare,
        "capture_tok_s": n_tokens / cap,
        "overhead": cap / bare - 1,
    }


def measure_cached(model, tok, repeats: int = 3) -> dict:
    """Notebook 03's capture on one scenario prompt's cache (``prompt_cache: true``), every layer,
    against the bare forward pass over the same completion tokens on the same cache."""
    from lib.core.config import REPO_ROOT
    from lib.core.scenarios import load_scenarios
    from lib.models.loading import after_prompt, prefill_rows

    prompt = tok(
        next(iter(load_scenarios(REPO_ROOT / "data" / "scenarios.yaml").values())).prompt
    ).input_ids
    g = torch.Generator().manual_seed(0)
    seqs = [(prompt + torch.randint(3, 40000, (16,), generator=g).tolist(), len(prompt))] * 48
    layers = list(range(len(decoder_layers(model))))
    store: dict = {}
    rows = prefill_rows(model, [tuple(prompt)] * len(seqs), store)
    comps = [s[n:] for s, n in seqs]
    n_tokens = sum(map(len, comps))
    bare, cap = _time_pair(
        lambda: after_prompt(model, rows, comps, 0, logits_to_keep=1),
        lambda: capture_batch(model, tok, seqs, layers, prompt_cache=True, store=store),
        repeats,
    )
    return {
        "tokens": n_tokens,
        "bare_tok_s": n_tokens / bare,
        "capture_tok_s": n_tokens / cap,
        "overhead": cap / bare - 1,
    }


def run() -> list[str]:
    from bench_sampler import SMOLLM2, bf16_kernel

    from lib.models.loading import load_model_path
    from lib.models.organism import ensure_organism

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    org, _ = load_model_path(str(ensure_organism(progress=False)))
    results = {"organism-float32": measure(org, _seqs(48, 110, 20, 1000), repeats=5)}
    torch.manual_seed(0)
    # float32: without bf16 instructions (AVX2-only CPUs) a bf16 forward is several times slower
    # (tests/benchmarks/bench_dtype.py)
    tiny = LlamaForCausalLM(LlamaConfig(**TINYLLAMA)).eval()
    results["tinyllama-random-float32"] = measure(tiny, _seqs(2, 120, 40, 32000), repeats=2)
    del tiny
    for dtype in ("float32", "bfloat16"):
        model, tok = load_model_path(SMOLLM2, dtype=dtype)
        results[f"SmolLM2-135M-Instruct-{dtype}"] = measure_cached(model, tok)
    lines = [
        f"# bench_capture {time.strftime('%Y-%m-%d')} host {platform.machine()} nproc "
        f"{os.cpu_count()} load {' '.join(f'{x:.2f}' for x in os.getloadavg()[:2])} "
        f"torch {torch.__version__}",
        "# goal: hook overhead at most 10% (issue 4)",
    ]
    for name, r in results.items():
        lines.append(
            f"capture {name} bare_tok_s {r['bare_tok_s']:.0f} capture_tok_s "
            f"{r['capture_tok_s']:.0f} overhead {r['overhead']:+.3f}"
        )
    f32, b16 = (results[f"SmolLM2-135M-Instruct-{d}"] for d in ("float32", "bfloat16"))
    lines.append(
        f"bf16 capture speedup {b16['capture_tok_s'] / f32['capture_tok_s']:.2f} kernel "
        f"{bf16_kernel()}"
    )
    return lines


def test_bench_capture():
    lines = run()
    print("\n".join(lines))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print("\n".join(run()))
