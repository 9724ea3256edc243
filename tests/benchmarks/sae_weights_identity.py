"""Train a fixed set of SAEs with one checkout's ``lib`` and print the sha256 of every export.

Run it with two checkouts on the same host and compare the outputs: a refactoring of the SAE
code that keeps the weights byte-identical prints the same lines::

    python tests/benchmarks/sae_weights_identity.py OLD_CHECKOUT OUT_OLD > old.txt
    python tests/benchmarks/sae_weights_identity.py NEW_CHECKOUT OUT_NEW > new.txt
    diff old.txt new.txt

The set: every architecture (and the ``openai`` TopK variant, bfloat16 matmuls, both STE
kernels) on seeded ``torch.randn`` data, and, when the organism run exists
(``data/runs/default``), one SAE per (architecture, condition) of its layer-2 and layer-5 cells
on the run's own training vectors (the SAE stage's split and settings, without the language
model's losses), read-only. Each line: ``<name> <sha256 of sae_weights.safetensors> <sha256 of
cfg.json>``. (The organism lines also equal the run's own ``saes/<id>/sae_weights.safetensors``
when the run was trained on this host.)

The whole SAE stage (notebook 04's :func:`lib.sae.train_grid.train_grid`, every cell and seed,
with the language model's losses) on a copy of a run, then ``cmp`` against the original::

    mkdir -p COPY && cp -a RUN/{config.yaml,labels.jsonl,completions.jsonl,cache,activations} COPY/
    python tests/benchmarks/sae_weights_identity.py --stage CHECKOUT COPY
    for d in RUN/saes/*/; do cmp $d/sae_weights.safetensors COPY/saes/$(basename $d)/sae_weights.safetensors; done
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

STAGE = sys.argv[1] == "--stage"
ARGS = sys.argv[2:] if STAGE else sys.argv[1:]
CHECKOUT = Path(ARGS[0]).resolve()
OUT = Path(ARGS[1]).resolve()
RUN = Path(ARGS[2]) if len(ARGS) > 2 else Path(__file__).resolve().parents[2] / "data/runs/default"
sys.path.insert(0, str(CHECKOUT))

import torch  # noqa: E402

import lib  # noqa: E402
from lib.core.config import SAEConfig, SteConfig  # noqa: E402
from lib.sae.model import save_sae  # noqa: E402
from lib.sae.trainer import train_sae  # noqa: E402

assert Path(lib.__file__).resolve().is_relative_to(CHECKOUT), lib.__file__


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(name: str, x: torch.Tensor, arch: str, cfg: SAEConfig, seed: int) -> None:
    sae, _ = train_sae(x, arch, cfg, seed, progress=False, meta={"name": name})
    sae.meta["sae_lens_version"] = "fixed"  # the two venvs may differ; the weights may not
    folder = save_sae(sae, OUT / name)
    print(name, sha(folder / "sae_weights.safetensors"), sha(folder / "cfg.json"), flush=True)


def random_set() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(600, 24, generator=g) @ torch.randn(24, 24, generator=g) + 0.3
    base = {"expansion_factor": 4, "k": 6, "steps": 120, "batch_size": 64}
    variants = {
        "topk": ("topk", {}),
        "topk_openai": ("topk", {"topk_variant": "openai"}),
        "topk_bf16": ("topk", {"matmul_dtype": "bfloat16"}),
        "jumprelu": ("jumprelu", {"l1_coefficient": 3e-3}),
        "jumprelu_bf16": ("jumprelu", {"matmul_dtype": "bfloat16"}),
        "jumprelu_ste": ("jumprelu_ste", {}),
        "jumprelu_ste_gauss": ("jumprelu_ste", {"ste": SteConfig(kernel="gaussian")}),
    }
    for name, (arch, extra) in variants.items():
        for seed in (0, 3):
            export(f"randn_{name}_s{seed}", x, arch, SAEConfig(**base, **extra), seed)


def organism_set() -> None:
    from lib.capture.labelled import labelled_rows, read_layer, training_vectors
    from lib.core.rundir import RunDir
    from lib.sae.train_grid import split_condition

    if not (RUN / "activations" / "index.json").exists():
        print("# no organism run at", RUN)
        return
    run = RunDir(RUN)
    cfg = run.read_config()
    labelled = labelled_rows(run, cfg)
    cells = sorted({(layer, arch) for layer, arch, _ in cfg.sae_grid()})
    for layer in sorted({c[0] for c in cells}):
        data = read_layer(run, layer)
        for lay, arch in cells:
            if lay != layer:
                continue
            for cond in cfg.sae.conditions:
                pos, _ = split_condition(labelled, cond, cfg.sae.heldout_fraction, cfg.seed)
                x = training_vectors(data, labelled.rows[pos], cfg.sae.train_on)
                export(f"organism_{arch}_L{layer}_{cond}", x, arch, cfg.sae, cfg.sae_seed(0))


def stage(copy: Path) -> None:
    """Notebook 04's SAE stage, forced, on the run copy ``copy`` (one process)."""
    from lib.core.rundir import RunDir
    from lib.sae.train_grid import train_grid

    cfg = RunDir(copy).read_config()
    cfg = cfg.model_copy(update={"sae": cfg.sae.model_copy(update={"n_jobs": 1})})
    for path in train_grid(RunDir(copy), cfg, progress=False, force=True):
        print(path.name, sha(path / "sae_weights.safetensors"), flush=True)


if __name__ == "__main__":
    if STAGE:
        stage(OUT)
    else:
        torch.set_num_threads(1)
        random_set()
        organism_set()
