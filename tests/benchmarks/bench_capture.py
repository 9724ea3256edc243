"""Capture throughput vs the bare forward pass (issue 4's goal: hook overhead at most 10%).

Run: ``make bench`` or ``python tests/benchmarks/bench_capture.py``. Prints, per model, tokens per
second of the bare forward pass and of ``capture_batch`` over every layer, and the overhead.
Two models: the organism (float32) and a randomly initialised TinyLlama-shaped Llama (22 layers,
d=2048, 32 heads / 4 kv heads, SwiGLU 5632, vocab 32000) in float32, on 2 threads.
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lib.capture.activations import capture_batch
from lib.models.loading import decoder_layers, pad_right
from lib.models.random_models import PRESETS

TINYLLAMA = PRESETS["tinyllama"]["config"]  # the study model's shapes


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
def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(model, seqs, repeats: int) -> dict:
    layers = list(range(len(decoder_layers(model))))
    ids, mask = pad_right([s for s, _ in seqs], 0, "cpu")
    n_tokens = int(mask.sum())
    bare = _time(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False), repeats)
    cap = _time(lambda: capture_batch(model, _Tok(), seqs, layers), repeats)
    return {
        "tokens": n_tokens,
        "bare_tok_s": n_tokens / bare,
        "capture_tok_s": n_tokens / cap,
        "overhead": cap / bare - 1,
    }


def test_bench_capture():
    torch.set_num_threads(2)
    from lib.models.loading import load_model_path
    from lib.models.organism import ensure_organism

    org, _ = load_model_path(str(ensure_organism(progress=False)))
    results = {"organism (float32)": measure(org, _seqs(48, 110, 20, 1000), repeats=5)}
    torch.manual_seed(0)
    # float32: without bf16 instructions (AVX2-only CPUs) a bf16 forward is several times slower
    # (tests/benchmarks/bench_dtype.py); CPU runs of the book use float32
    tiny = LlamaForCausalLM(LlamaConfig(**TINYLLAMA)).eval()
    results["TinyLlama-shaped random (float32)"] = measure(
        tiny, _seqs(2, 120, 40, 32000), repeats=2
    )
    for name, r in results.items():
        print(
            f"capture {name}: bare {r['bare_tok_s']:.0f} tok/s, capture {r['capture_tok_s']:.0f} tok/s, "
            f"overhead {100 * r['overhead']:+.1f}% ({r['tokens']} tokens per pass)"
        )


if __name__ == "__main__":
    test_bench_capture()
