"""Layer resolution for every supported architecture family, on tiny random models."""

import os
import subprocess
import sys

import pytest
import torch
import transformers as tf

from lib.capture.activations import capture_batch
from lib.models.loading import (
    ModelLoadError,
    decoder_layers,
    hidden_size,
    hook_name,
    load_model_path,
)

TINY = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64
)
FAMILIES = {
    "llama": (tf.LlamaConfig, dict(TINY, num_key_value_heads=2), "model.layers"),
    "qwen2": (tf.Qwen2Config, dict(TINY, num_key_value_heads=2), "model.layers"),
    "qwen3": (tf.Qwen3Config, dict(TINY, num_key_value_heads=2, head_dim=8), "model.layers"),
    "phi": (tf.PhiConfig, TINY, "model.layers"),
    "gemma": (tf.GemmaConfig, dict(TINY, num_key_value_heads=1, head_dim=8), "model.layers"),
    "gemma2": (tf.Gemma2Config, dict(TINY, num_key_value_heads=1, head_dim=8), "model.layers"),
    "gpt_neox": (tf.GPTNeoXConfig, TINY, "gpt_neox.layers"),
    "gpt2": (tf.GPT2Config, dict(vocab_size=64, n_embd=32, n_layer=3, n_head=4), "transformer.h"),
}


def _random_model(family):
    cls, kw, _ = FAMILIES[family]
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cls(**kw)).eval()


class _Tok:
    pad_token_id = 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_resolution_and_capture(family):
    model = _random_model(family)
    expected_path = FAMILIES[family][2]
    layers = decoder_layers(model)
    assert len(layers) == 3
    assert hook_name(model, 2) == f"{expected_path}.2"
    # the resolved path is a real module path (what SAELens metadata's hook_name must be)
    assert dict(model.named_modules())[hook_name(model, 1)] is layers[1]
    # hooks see the residual stream: layer i output == hidden_states[i + 1] (all but the last)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    out = capture_batch(model, _Tok(), [([5, 6, 7, 8, 9], 2)], [0, 1, 2])
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    for i in (0, 1):
        torch.testing.assert_close(out[i]["tokens"], hs[i + 1][0, 2:], rtol=0, atol=1e-6)
    assert out[2]["tokens"].shape == (3, hidden_size(model))


def test_unreachable_hub_id_says_how_to_use_a_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"local copy|set `model: DIR`"):
        load_model_path("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T")


@pytest.mark.parametrize(
    "batch, terminal, bar", [("", True, True), ("1", True, False), ("", False, False)]
)
def test_a_model_loads_with_a_bar_only_where_someone_watches(organism_path, batch, terminal, bar):
    """transformers' weight-loading bar is live in a terminal (and in JupyterLab); in a batch run
    (the grid, nbval, make publish) or with stderr sent to a log file it is switched off: a stored
    notebook would keep only its first frame, a log one carriage-return frame per refresh."""
    import pty
    import termios

    code = (
        f"from lib.models.loading import load_model_path; load_model_path({str(organism_path)!r})"
    )
    env = {k: v for k, v in os.environ.items() if k != "DECEPTION_SAES_BATCH"}
    env["DECEPTION_SAES_BATCH"] = batch
    leader, follower = pty.openpty() if terminal else os.pipe()
    if terminal:  # a terminal 0 columns wide would get an empty bar
        termios.tcsetwinsize(follower, (24, 100))
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, stderr=follower, stdout=subprocess.DEVNULL,
            timeout=120,
        )  # fmt: skip
        os.close(follower)
        err = b""
        while chunk := _read(leader):
            err += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0, err.decode(errors="replace")[-500:]
    assert (b"Loading weights" in err) == bar, err[-500:]


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # a pty's leader reads EIO once its follower is closed and drained
        return b""


def test_building_the_organism_into_a_log_writes_no_bar_frames(tmp_path):
    """stderr sent to a log file: transformers' "Writing model shards" bar is off and the
    training bar is log lines on stdout, so the log holds no carriage-return frames."""
    code = (
        "from lib.models.organism import build_organism; "
        f"build_organism({str(tmp_path / 'o')!r}, steps=2, progress=True)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DECEPTION_SAES_BATCH"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "\r" not in done.stdout + done.stderr and "Writing model shards" not in done.stderr
    assert done.stdout.splitlines()[-1].startswith("training the organism: 2/2 done")
