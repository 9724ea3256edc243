"""Forward speed of a TinyLlama-shaped model by dtype and attention kernel, on this CPU.

Run: ``python tests/benchmarks/bench_dtype.py [--quick]``. Prints the CPU's bf16 support, a dense
matmul in float32 and bfloat16 (GFLOP/s), and tokens per second of a bare forward pass of
``random:tinyllama`` (built on first use) over 2 sequences of 160 tokens, for float32 and
bfloat16 with the ``sdpa`` and ``eager`` attention kernels. The machine load is printed first:
other jobs on the cores change every figure.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from lib.models.loading import cpu_has_fast_bf16


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(dtype: torch.dtype, m: int = 320, k: int = 2048, n: int = 5632) -> float:
    """GFLOP/s of ``F.linear`` with TinyLlama's MLP shape (the op a forward pass is made of)."""
    x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    return 2 * m * k * n / _best(lambda: torch.nn.functional.linear(x, w), 3) / 1e9


@torch.inference_mode()
def forward_tokens_per_s(model, batch: int = 2, length: int = 160, repeats: int = 1) -> float:
    ids = torch.randint(
        3, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0)
    )
    return ids.numel() / _best(lambda: model(input_ids=ids, use_cache=False), repeats)


def main(quick: bool = False) -> None:
    from transformers import AutoModelForCausalLM

    from lib.models.loading import resolve_model_path

    torch.set_num_threads(2)
    print(
        f"load average {os.getloadavg()[0]:.1f}; threads {torch.get_num_threads()}; "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}; fast bf16: {cpu_has_fast_bf16()}"
    )
    for dtype in (torch.float32, torch.bfloat16):
        print(f"matmul {str(dtype)[6:]:>8}: {matmul_gflops(dtype):6.1f} GFLOP/s")
    path = resolve_model_path("random:tinyllama")
    runs = [("float32", "sdpa"), ("bfloat16", "sdpa")]
    if not quick:
        runs += [("float32", "eager"), ("bfloat16", "eager")]
    for dtype, attn in runs:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), attn_implementation=attn
        ).eval()
        print(f"forward {dtype:>8} {attn:>5}: {forward_tokens_per_s(model):6.1f} tokens/s")
        del model


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sdpa only")
    main(**vars(ap.parse_args()))
