"""Residual-stream capture (notebook 03): the true ``resid_post`` of every decoder layer.

For every completion, one teacher-forced forward pass over prompt + completion with a forward
hook on each decoder layer (``model.layers[i]`` for Llama). The hook sees the block's output, the
residual stream after layer ``i``. For the last layer this is *before* the final RMSNorm, unlike
``output_hidden_states[-1]``, which has the norm applied.

Per layer the stage writes ``activations/L{layer:02d}.safetensors``:

- ``last``  [N, d]  the residual at the last completion token,
- ``mean``  [N, d]  the mean over completion tokens,
- ``tokens`` [T, d] every completion-token vector (for SAE training), rows in completion order,
- ``token_owner`` [T] int64, the row of the completion each token vector belongs to,

and ``activations/index.json`` (completion ids in row order, model, hook names, progress).
A completion with no tokens (EOS at once) gets the residual of the last prompt position.

The files are written in place, batch by batch, at their final offsets (the safetensors header
is known in advance), so memory is bounded by one batch, not by the run; a killed capture
resumes from the batches it had finished.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.capture.labelled import read_index, read_layer
from lib.core.config import RunConfig
from lib.core.fileio import RunDirError, atomic_write_bytes, read_json, read_jsonl, write_json
from lib.core.rundir import RunDir, sha256_text
from lib.core.runtime import progress as progress_bar
from lib.models.loading import (
    after_prompt,
    hidden_size,
    hook_name,
    n_layers,
    pad_right,
    prefill_rows,
    resid_hooks,
    row_ids,
)

INDEX_VERSION = 1


@torch.inference_mode()
def capture_batch(
    model,
    tokenizer,
    seqs: list[tuple[list[int], int]],
    layers: list[int],
    prompt_cache: bool = False,
    store: dict | None = None,
) -> dict[int, dict]:
    """Teacher-forced capture for a batch of ``(ids, n_prompt)``.

    Returns per layer ``{"last": [B, d], "mean": [B, d], "tokens": [sum n_completion, d]}`` in
    float32 on the CPU, tokens in row order. ``prompt_cache``: the completion tokens run on their
    prompts' KV caches (:func:`_capture_cached`; ``store`` keeps the prefilled prompts), unless a
    completion is empty (its ``last`` is the prompt's).
    """
    if prompt_cache and all(len(s) > n for s, n in seqs):
        return _capture_cached(model, tokenizer, seqs, layers, store)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = pad_right([s for s, _ in seqs], pad, device)
    starts = [n_prompt for _, n_prompt in seqs]
    ends = [len(s) for s, _ in seqs]
    # positions gathered once per batch: completion tokens (flattened) and the last one per row
    tok_rows = torch.cat(
        [torch.full((e - s,), r) for r, (s, e) in enumerate(zip(starts, ends, strict=True))]
    )
    tok_cols = torch.cat([torch.arange(s, e) for s, e in zip(starts, ends, strict=True)])
    last_cols = torch.tensor([e - 1 for e in ends])
    counts = torch.tensor(
        [max(e - s, 0) for s, e in zip(starts, ends, strict=True)], dtype=torch.float32
    )
    tok_rows_d, tok_cols_d, last_cols_d = (
        tok_rows.to(device),
        tok_cols.to(device),
        last_cols.to(device),
    )
    out: dict[int, dict] = {}

    rows_d = torch.arange(len(seqs), device=device)
    counts_d = counts.to(device)[:, None]

    def sink(layer: int, h: torch.Tensor) -> None:
        # gather the completion positions first, convert only those to float32
        toks = h[tok_rows_d, tok_cols_d].float()
        last = h[rows_d, last_cols_d].float()
        sums = torch.zeros((h.shape[0], h.shape[2]), device=h.device).index_add_(
            0, tok_rows_d, toks
        )
        mean = torch.where(counts_d > 0, sums / counts_d.clamp_min(1), last)
        out[layer] = {"last": last.cpu(), "mean": mean.cpu(), "tokens": toks.cpu()}

    with resid_hooks(model, layers, sink):
        model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    return out


def _capture_cached(model, tokenizer, seqs, layers, store: dict | None = None) -> dict[int, dict]:
    """:func:`capture_batch` with each prompt prefilled once (:func:`lib.models.loading.prefill_rows`,
    kept in ``store`` across batches) and one pass over the batch's completion tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = prefill_rows(model, [tuple(s[:n]) for s, n in seqs], store)
    comps = [s[n:] for s, n in seqs]
    seen: dict[int, torch.Tensor] = {}
    with resid_hooks(model, layers, seen.__setitem__):
        after_prompt(model, rows, comps, pad, logits_to_keep=1)  # only the hooks are read
    out = {}
    for i in layers:
        toks = [seen[i][r, : len(c)].float() for r, c in enumerate(comps)]
        out[i] = {
            "last": torch.stack([t[-1] for t in toks]).cpu(),
            "mean": torch.stack([t.mean(0) for t in toks]).cpu(),
            "tokens": torch.cat(toks).cpu(),
        }
    return out


# ----- streaming safetensors writer ------------------------------------------------------------
_ST_DTYPES = {torch.float32: ("F32", 4), torch.int64: ("I64", 8)}


class PreallocatedSafetensors:
    """A safetensors file whose header is written first and tensors filled in by row ranges."""

    def __init__(
        self, path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict
    ):
        self.path = Path(path)
        header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
        offset = 0
        self.layout = {}
        for name, (dtype, shape) in specs.items():
            code, size = _ST_DTYPES[dtype]
            nbytes = int(np.prod(shape)) * size
            row_bytes = (int(np.prod(shape[1:])) if len(shape) > 1 else 1) * size
            header[name] = {
                "dtype": code,
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self.layout[name] = (offset, row_bytes, dtype)
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.total = self.data_start + offset
        self._header = struct.pack("<Q", len(raw)) + raw

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as f:
            f.write(self._header)
            f.truncate(self.total)

    def matches(self) -> bool:
        """True when the file on disk was created with this exact header."""
        if not self.path.exists() or self.path.stat().st_size != self.total:
            return False
        with open(self.path, "rb") as f:
            return f.read(len(self._header)) == self._header

    def write(self, f, name: str, row: int, tensor: torch.Tensor) -> None:
        offset, row_bytes, dtype = self.layout[name]
        f.seek(self.data_start + offset + row * row_bytes)
        f.write(tensor.to(dtype).contiguous().numpy().tobytes())


def _plan(rows: list[dict], tokenizer, batch_size: int):
    seqs = [row_ids(tokenizer, r) for r in rows]
    n_comp = [len(s) - n for s, n in seqs]
    tok_offsets = np.concatenate([[0], np.cumsum(n_comp)]).astype(int)
    batches = [
        list(range(i, min(i + batch_size, len(rows)))) for i in range(0, len(rows), batch_size)
    ]
    return seqs, tok_offsets, batches


def check_capture_inputs(run: RunDir) -> list[dict]:
    """The run's completions, or one line saying which stage to run first (01_sampling,
    02_classification): notebook 03 calls it before it loads the model or writes anything."""
    rows = read_jsonl(run.require(run.completions, "01_sampling"))
    if not rows:
        raise RunDirError(f"{run.completions} holds no completions; run 01_sampling first")
    run.require(run.labels, "02_classification")
    if not read_jsonl(run.labels):
        raise RunDirError(f"{run.labels} holds no labels; run 02_classification first")
    return rows


def capture_run(run: RunDir, cfg: RunConfig, model, tokenizer, progress: bool = True) -> dict:
    """Capture every completion of the run for the configured layers; resumes unfinished work.

    Returns the contents of ``activations/index.json``.
    """
    rows = check_capture_inputs(run)
    total_layers = n_layers(model)
    cfg.check_layers(total_layers)
    layers = cfg.capture_layers(total_layers)
    d = hidden_size(model)
    seqs, tok_offsets, batches = _plan(rows, tokenizer, cfg.capture.batch_size)
    n, t = len(rows), int(tok_offsets[-1])
    ids = [r["id"] for r in rows]
    index = {
        "version": INDEX_VERSION,
        "run": cfg.name,
        "model": cfg.model,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),  # what ran (auto)
        "stored_dtype": "float32",
        "d_model": d,
        "n_layers": total_layers,
        "layers": layers,
        "hook_names": {str(i): hook_name(model, i) for i in layers},
        "n_completions": n,
        "n_tokens": t,
        "completions_sha256": sha256_text("\n".join(ids)),
        "ids": ids,
    }
    meta = {"completions_sha256": index["completions_sha256"]}
    files = {
        i: PreallocatedSafetensors(
            run.activation_file(i),
            {
                "last": (torch.float32, (n, d)),
                "mean": (torch.float32, (n, d)),
                "tokens": (torch.float32, (t, d)),
                "token_owner": (torch.int64, (t,)),
            },
            {**meta, "layer": i, "hook_name": hook_name(model, i)},
        )
        for i in layers
    }
    progress_file = run.activations / ".progress.json"
    # files on disk belong to this capture when the index and every file header match it
    same = (
        run.activation_index.exists()
        and {k: read_json(run.activation_index).get(k) for k in index} == index
        and all(f.matches() for f in files.values())
    )
    if same and not progress_file.exists():
        write_input_embeddings(run, model, seqs, index["completions_sha256"])
        write_prompt_last(run, model, tokenizer, seqs, layers, index["completions_sha256"])
        return index  # finished before
    done: set[int] = set(read_json(progress_file)["batches_done"]) if same else set()
    if not done:
        for f in files.values():
            f.create()
        write_json(run.activation_index, index)
        write_json(progress_file, {"batches_done": []})

    handles = {i: open(f.path, "r+b") for i, f in files.items()}
    prompts: dict = {}  # prefilled prompts (prompt_cache)
    bar = progress_bar(total=n, desc="capturing resid_post", on=progress, unit="completion")
    finished = sum(len(batch) for b, batch in enumerate(batches) if b in done)
    if finished:
        bar.update(finished)  # at once: one line in a batch run, not one per skipped batch
    try:
        for b, batch in enumerate(batches):
            if b in done:
                continue
            acts = capture_batch(
                model, tokenizer, [seqs[r] for r in batch], layers, cfg.prompt_cache, prompts
            )
            first, t0 = batch[0], int(tok_offsets[batch[0]])
            owner = torch.cat(
                [torch.full((int(tok_offsets[r + 1] - tok_offsets[r]),), r) for r in batch]
            )
            for i in layers:
                fh, spec = handles[i], files[i]
                spec.write(fh, "last", first, acts[i]["last"])
                spec.write(fh, "mean", first, acts[i]["mean"])
                spec.write(fh, "tokens", t0, acts[i]["tokens"])
                spec.write(fh, "token_owner", t0, owner)
            for fh in handles.values():
                fh.flush()
                os.fsync(fh.fileno())
            done.add(b)
            write_json(progress_file, {"batches_done": sorted(done)})
            bar.update(len(batch))
    finally:
        bar.close()
        for fh in handles.values():
            fh.close()
    write_input_embeddings(run, model, seqs, index["completions_sha256"])
    write_prompt_last(run, model, tokenizer, seqs, layers, index["completions_sha256"])
    progress_file.unlink(missing_ok=True)
    return index


@torch.inference_mode()
def write_input_embeddings(run: RunDir, model, seqs, completions_sha256: str) -> None:
    """``activations/input_embeddings.safetensors``: ``mean`` [N, d], per completion the mean of
    the model's own input embeddings of its response tokens (the output of its input-embedding
    module: Gemma's sqrt(d) scale included), the ``embed`` wording baseline of notebook 05. A
    lookup, no forward pass; written atomically, skipped when current."""
    from safetensors import safe_open
    from safetensors.torch import save

    path = run.input_embeddings
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("completions_sha256") == completions_sha256:
                    return
        except (OSError, ValueError, RuntimeError):
            pass  # damaged: written again below
    emb = model.get_input_embeddings()
    device = next(model.parameters()).device
    rows = []
    for ids, n_prompt in seqs:
        toks = ids[n_prompt:] or ids[-1:]  # an empty completion: its last prompt token
        rows.append(emb(torch.tensor(toks, device=device)).float().mean(0).cpu())
    data = save({"mean": torch.stack(rows)}, {"completions_sha256": completions_sha256})
    atomic_write_bytes(path, data)


@torch.inference_mode()
def write_prompt_last(
    run: RunDir, model, tokenizer, seqs, layers: list[int], completions_sha256: str, batch: int = 8
) -> None:
    """``activations/prompt_last.safetensors``: for every distinct prompt, the residual stream
    after each captured layer at its last token (``L<i>`` [P, d]), and ``prompt_of`` [N], each
    completion's prompt. Same-prompt sampling makes that vector the same for all completions of
    a prompt: the input of the last-prompt-token probe (:mod:`lib.probing.prompt_probe`). One
    forward pass per prompt, no completion token; written atomically, skipped when current."""
    from safetensors import safe_open
    from safetensors.torch import save

    path = run.prompt_last
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("completions_sha256") == completions_sha256 and all(
                    f"L{i}" in f.keys() for i in layers
                ):
                    return
        except (OSError, ValueError, RuntimeError):
            pass  # damaged: written again below
    prompts = list(dict.fromkeys(tuple(ids[:n]) for ids, n in seqs))
    where = {p: k for k, p in enumerate(prompts)}
    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    for b in range(0, len(prompts), batch):
        chunk = [(list(p), len(p)) for p in prompts[b : b + batch]]
        acts = capture_batch(model, tokenizer, chunk, layers)
        for i in layers:
            out[i].append(acts[i]["last"])
    tensors = {f"L{i}": torch.cat(v).contiguous() for i, v in out.items()}
    tensors["prompt_of"] = torch.tensor([where[tuple(ids[:n])] for ids, n in seqs])
    atomic_write_bytes(path, save(tensors, {"completions_sha256": completions_sha256}))


def norm_table(run: RunDir) -> pd.DataFrame:
    """Mean L2 norm per layer of ``last``, ``mean`` and token vectors (a sanity profile)."""

    rows = []
    for layer in read_index(run)["layers"]:
        data = read_layer(run, layer)
        rows.append(
            {
                "layer": layer,
                "last": data.last.norm(dim=1).mean().item(),
                "mean": data.mean.norm(dim=1).mean().item(),
                "tokens": data.tokens.norm(dim=1).mean().item(),
            }
        )
    return pd.DataFrame(rows).set_index("layer")
