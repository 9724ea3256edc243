"""The Gemini judge and client over real HTTP (lib/judging/gemini.py, lib/judging/gemini_client.py).

The tests run the real google-genai SDK against tests/helpers/gemini_stub.py on 127.0.0.1; no test
reaches the internet. The fake keys must never show up in any file, log, message or notebook.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from gemini_stub import Reply, answer, error, text_reply
from judging import (
    FAKE_KEY,
    SCEN,
    TEXTS,
    SleepLog,
    assert_no_key,
    judge_for,
    keyword_responder,
    make_run,
    stub_env,
)
from pydantic import BaseModel

from lib.core.config import REPO_ROOT, load_config
from lib.core.fileio import read_jsonl
from lib.core.vocabulary import LABELS
from lib.judging.gemini import CallFailed, GeminiClient, GeminiJudge, JudgeCache, render_prompt
from lib.judging.judges import JudgeError, keyword_verdict
from lib.judging.labelling import (
    condition_sizes,
    failed_verdict_report,
    failed_verdicts,
    judge_agreement,
    label_run,
    labels_frame,
    make_judge,
)
from lib.pipeline.grid import execute_cell
from lib.pipeline.stages import Check, Inspector


@pytest.fixture
def cfg():
    return load_config("organism")


@pytest.fixture
def gemini_env(monkeypatch):
    yield from stub_env(monkeypatch)


def test_gemini_normal_answer(gemini_env):
    stub = gemini_env
    stub.push(answer("deceptive", 0.93, "Denies the tip the background establishes.", 120, 30, 7))
    j = judge_for()
    v = j.judge(SCEN["insider_trading"], " No, nobody told me.")
    assert (v.label, v.confidence, v.rationale, v.failed) == (
        "deceptive",
        pytest.approx(0.93),
        "Denies the tip the background establishes.",
        False,
    )
    assert len(stub.requests) == 1
    req = stub.requests[0]
    assert req.model == "gemini-2.5-flash"
    assert req.headers["x-goog-api-key"] == FAKE_KEY  # the key travels in a header, not the URL
    assert FAKE_KEY not in req.path
    gc = req.body["generationConfig"]
    assert gc["temperature"] == 0 and gc["responseMimeType"] == "application/json"
    assert gc["responseSchema"]["properties"]["label"]["enum"] == list(LABELS)
    assert "on March 3 the witness's" in req.prompt and "No, nobody told me." in req.prompt
    assert "Investigator: Before you bought those shares" in req.prompt
    assert req.prompt == render_prompt(SCEN["insider_trading"], " No, nobody told me.")
    s = j.summary
    assert (
        s.calls,
        s.retries,
        s.failures,
        s.prompt_tokens,
        s.response_tokens,
        s.thought_tokens,
    ) == (1, 0, 0, 120, 30, 7)


def test_gemini_429_with_retry_after_then_success(gemini_env):
    stub = gemini_env
    stub.push(error(429, retry_after="3"), answer("honest", 0.7, "Admits it."))
    sleeps = SleepLog()
    j = judge_for(sleep=sleeps)
    v = j.judge(SCEN["mafia"], " I am mafia.")
    assert v.label == "honest" and not v.failed
    assert len(stub.requests) == 2
    assert sleeps.delays == [3.0]  # Retry-After honoured, not the tiny backoff
    assert (j.summary.calls, j.summary.retries, j.summary.rate_limited) == (2, 1, 1)
    # without the header, the RetryInfo delay of Gemini's error body is honoured
    quota = error(429)
    quota.body["error"]["details"] = [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
    ]
    stub.push(
        quota,
        text_reply('```json\n{"label": "deceptive", "confidence": 1, "rationale": "Denies."}\n```'),
    )
    assert j.judge(SCEN["mafia"], " I'm town.").label == "deceptive"
    assert sleeps.delays == [3.0, 2.0]


def test_gemini_5xx_exhausts_retries_without_crash(gemini_env, tmp_path, cfg, caplog):
    caplog.set_level(logging.DEBUG)
    stub = gemini_env
    stub.push(*[error(503)] * 3)
    sleeps = SleepLog()
    run = make_run(tmp_path, TEXTS[:1])
    j = make_judge("gemini", cfg, run, max_retries=2, backoff_base_s=0.01, sleep=sleeps)
    s = label_run(run, cfg, [j], progress=False)["gemini"]
    # exactly 1 + max_retries requests: the SDK does not retry on its own
    assert len(stub.requests) == 3
    assert (s.calls, s.retries, s.server_errors, s.failures) == (3, 2, 3, 1)
    assert (
        len(sleeps.delays) == 2
        and 0.005 <= sleeps.delays[0] <= 0.01
        and 0.01 <= sleeps.delays[1] <= 0.02
    )
    (row,) = read_jsonl(run.labels)
    assert row["label"] == "ambiguous" and row["failed"] is True and "503" in row["rationale"]
    assert not run.judge_cache("gemini").exists()  # failures are not cached
    # a rerun asks again for the failed completion and the new row wins
    stub.responder = keyword_responder
    j2 = make_judge("gemini", cfg, run, backoff_base_s=0.001)
    assert label_run(run, cfg, [j2], progress=False)["gemini"].labelled == 1
    assert labels_frame(run).set_index("id").loc["insider_trading-000", "label"] == "honest"
    assert_no_key(run.labels.read_text(), run.judge_cache("gemini").read_text(), caplog.text)


def test_gemini_malformed_answers_retried_then_ambiguous(gemini_env):
    stub = gemini_env
    stub.push(
        text_reply("this is not json"),
        text_reply('{"label": "maybe", "confidence": 0.5, "rationale": "x"}'),
        text_reply('{"label": "honest", "confidence": 7, "rationale": "x"}'),
    )
    j = judge_for(max_retries=2)
    v = j.judge(SCEN["werewolf"], " Yes, it was me.")
    assert v.label == "ambiguous" and v.failed and "unparseable" in v.rationale
    assert len(stub.requests) == 3 and j.summary.unparseable == 3 and j.summary.failures == 1
    # malformed once, then valid: the retry rescues it
    stub.push(text_reply("{truncated"), answer("honest"))
    v = j.judge(SCEN["werewolf"], " Yes, it was me.")
    assert v.label == "honest" and not v.failed
    assert len(stub.requests) == 5


def test_gemini_timeout_is_retried(gemini_env):
    stub = gemini_env
    slow = answer("deceptive")
    slow.delay = 3.0
    stub.push(slow, answer("honest", 0.6))
    j = judge_for(timeout_s=0.4)
    v = j.judge(SCEN["werewolf"], " Yes, it was me.")
    assert v.label == "honest" and not v.failed
    assert j.summary.timeouts == 1 and j.summary.retries == 1 and len(stub.requests) == 2


def test_gemini_connection_refused_is_retried_then_ambiguous(gemini_env, monkeypatch):
    import socket

    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("GEMINI_BASE_URL", f"http://user:pw@127.0.0.1:{port}")
    sleeps = SleepLog()
    j = judge_for(max_retries=1, sleep=sleeps)
    v = j.judge(SCEN["mafia"], " I am mafia.")
    assert v.label == "ambiguous" and v.failed and "connection" in v.rationale
    assert j.summary.calls == 2 and j.summary.timeouts == 2 and len(sleeps.delays) == 1
    assert "pw@" not in v.rationale and gemini_env.requests == []


def test_gemini_rerun_served_from_cache(gemini_env, tmp_path, cfg, caplog):
    caplog.set_level(logging.DEBUG)
    stub = gemini_env
    stub.responder = keyword_responder
    run = make_run(tmp_path, TEXTS)
    s1 = label_run(
        run, cfg, [make_judge("gemini", cfg, run, backoff_base_s=0.001)], progress=False
    )["gemini"]
    assert len(stub.requests) == len(TEXTS) and s1.cache_hits == 0 and s1.failures == 0
    first = labels_frame(run)
    expected = {
        f"{s}-{i:03d}": keyword_verdict(SCEN[s], c, 60).label for i, (s, c) in enumerate(TEXTS)
    }
    assert first.set_index("id")["label"].to_dict() == expected
    assert set(first["model"]) == {"gemini-2.5-flash"} and set(first["prompt_version"]) == {"v1"}
    assert len(JudgeCache(run.judge_cache("gemini"))) == len(TEXTS)
    # labels lost, stage rerun: every verdict from the cache, zero requests
    run.labels.unlink()
    s2 = label_run(run, cfg, [make_judge("gemini", cfg, run)], progress=False)["gemini"]
    assert len(stub.requests) == len(TEXTS)
    assert (s2.cache_hits, s2.calls, s2.labelled) == (len(TEXTS), 0, len(TEXTS))
    pd.testing.assert_frame_equal(labels_frame(run), first)
    # a different model is a different cache key
    other = make_judge("gemini", cfg, run, model="gemini-other")
    other.judge_many([(SCEN["mafia"], " I am mafia.")])
    assert stub.requests[-1].model == "gemini-other" and len(stub.requests) == len(TEXTS) + 1
    cache_text = run.judge_cache("gemini").read_text()
    cache_rows = read_jsonl(run.judge_cache("gemini"))
    assert all(
        "completion" not in r and len(r["key"]) == 64 for r in cache_rows
    )  # hashes, not texts
    assert_no_key(run.labels.read_text(), cache_text, caplog.text)
    for p in run.root.rglob("*"):
        if p.is_file():
            assert_no_key(p.read_text(errors="ignore"))


def test_gemini_concurrency_is_bounded(gemini_env):
    stub = gemini_env
    import threading

    lock, state = threading.Lock(), {"now": 0, "max": 0}
    import time

    def responder(req):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return answer("honest")

    stub.responder = responder
    j = judge_for(concurrency=2)
    vs = j.judge_many([(SCEN["mafia"], f" I am mafia {i}.") for i in range(8)])
    assert [v.label for v in vs] == ["honest"] * 8
    assert 1 <= state["max"] <= 2 and len(stub.requests) == 8


def test_gemini_missing_key_fails_before_any_request(gemini_env, monkeypatch, tmp_path, cfg):
    stub = gemini_env
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="GEMINI_API_KEY"):
        GeminiJudge()
    run = make_run(tmp_path, TEXTS)
    two = load_config("organism", {"judge.judges": ["keyword", "gemini"]})
    with pytest.raises(JudgeError, match="GEMINI_API_KEY"):
        label_run(run, two, progress=False)
    assert (
        stub.requests == [] and not run.labels.exists()
    )  # nothing ran, not even the keyword judge
    # GOOGLE_API_KEY is accepted too
    monkeypatch.setenv("GOOGLE_API_KEY", FAKE_KEY)
    stub.push(answer("honest"))
    assert judge_for().judge(SCEN["mafia"], " I am mafia.").label == "honest"
    assert stub.requests[0].headers["x-goog-api-key"] == FAKE_KEY


def test_gemini_refused_key_raises_without_the_key(gemini_env):
    stub = gemini_env
    # a server that echoes the key back must not get it into our exception
    stub.push(error(400, message=f"API key not valid: {FAKE_KEY}"))
    with pytest.raises(JudgeError) as e:
        judge_for().judge(SCEN["mafia"], " I am mafia.")
    assert "refused" in str(e.value)
    assert_no_key(str(e.value), repr(e.value))
    assert len(stub.requests) == 1


# ==== executed notebooks carry no credentials ==================================================
KEY_PATTERNS = [
    re.compile(r"AIza[0-9A-Za-z_\-]{30,}"),  # Google API keys
    re.compile(re.escape(FAKE_KEY)),
    re.compile(r"[a-z][a-z0-9+.\-]*://[^\s/\"'@]+@", re.I),  # URLs with userinfo (user[:pass]@host)
]


def test_no_credentials_in_notebooks():
    import os

    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    secrets = [os.environ[v] for v in ("GEMINI_API_KEY", "GOOGLE_API_KEY") if os.environ.get(v)]
    for nb in notebooks:
        text = nb.read_text()
        for pat in KEY_PATTERNS:
            m = pat.search(text)
            assert m is None, (
                f"{nb.name}: credential-like text matching {pat.pattern!r} at offset {m.start()}"
            )
        for i, secret in enumerate(secrets):
            assert secret not in text, (
                f"{nb.name}: the API key from the environment (#{i}) is in the notebook"
            )


def test_two_judges_from_config(gemini_env, tmp_path):
    gemini_env.responder = keyword_responder  # a Gemini stand-in that agrees with the keyword rule
    two = load_config(
        "organism", {"judge.judges": ["keyword", "gemini"], "judge.primary": "gemini"}
    )
    run = make_run(tmp_path, TEXTS)
    summaries = label_run(run, two, progress=False)
    assert list(summaries) == ["keyword", "gemini"]
    assert summaries["gemini"].calls == len(TEXTS) and summaries[
        "gemini"
    ].prompt_tokens == 100 * len(TEXTS)
    lf = labels_frame(run)
    assert len(lf) == 2 * len(TEXTS)
    ag = judge_agreement(lf, "gemini", "keyword")
    assert ag.kappa == pytest.approx(1.0) and ag.decisive_agree == 1.0 and ag.n_decisive_both == 7
    assert condition_sizes(lf, "gemini") == condition_sizes(lf, "keyword")


# ==== the generic client ========================================================================
class Explanation(BaseModel):
    """What another module (auto-interpretation of SAE latents) might ask Gemini for."""

    explanation: str
    score: float
    examples: list[str]


def test_generic_client_returns_a_validated_answer_with_the_same_guarantees(gemini_env):
    stub = gemini_env
    sleeps = SleepLog()
    client = GeminiClient(max_retries=2, backoff_base_s=0.001, retry_after_cap_s=2, sleep=sleeps)
    body = {
        "explanation": f"fires on denials; key {FAKE_KEY}",
        "score": 0.7,
        "examples": [FAKE_KEY],
    }
    stub.push(error(429, retry_after="1000"), text_reply(json.dumps(body)))
    got = client.generate_json("explain latent 7", Explanation)
    assert got == Explanation(
        explanation="fires on denials; key [redacted]", score=0.7, examples=["[redacted]"]
    )
    assert sleeps.delays == [2.0]  # Retry-After capped at retry_after_cap_s
    assert (client.usage.calls, client.usage.retries, client.usage.rate_limited) == (2, 1, 1)
    schema = stub.requests[-1].body["generationConfig"]["responseSchema"]
    assert set(schema["properties"]) == {"explanation", "score", "examples"}
    assert "explain latent 7" in stub.requests[-1].prompt
    stub.push(*[error(503)] * 3)
    with pytest.raises(CallFailed) as e:
        client.generate_json("again", Explanation)
    assert e.value.attempts == 3 and "503" in e.value.reason
    assert FAKE_KEY not in repr(client)


def test_retry_after_cap_is_a_config_field(gemini_env, cfg):
    stub = gemini_env
    sleeps = SleepLog()
    capped = load_config("organism", {"judge.retry_after_cap_s": 3})
    stub.push(error(429, retry_after="600"), answer("honest"))
    j = make_judge("gemini", capped, None, sleep=sleeps)
    assert j.judge(SCEN["mafia"], " I am mafia.").label == "honest"
    assert sleeps.delays == [3.0]
    assert make_judge("gemini", cfg).client.retry_after_cap_s == 300.0


# ==== the key: checked before the first call, never written ====================================
@pytest.mark.parametrize(
    "bad",
    ["line-one-secret-abc\nline-two-secret-def", "trailing-newline-secret-ghi\n", " lead-secret-j"],
)
def test_a_key_with_whitespace_is_refused_before_any_call(gemini_env, monkeypatch, bad, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", bad)
    with pytest.raises(JudgeError, match="contains whitespace or a line break") as e:
        judge_for()
    shown = str(e.value) + repr(e.value) + "".join(capsys.readouterr())
    for piece in bad.split():
        assert piece not in shown
    assert gemini_env.requests == []
    monkeypatch.setenv("GEMINI_API_KEY", "ключ-not-ascii-key")
    with pytest.raises(JudgeError, match="not printable ASCII"):
        judge_for()


class EchoService:
    """A service that repeats the key it was sent: in JSON error bodies, in a proxy's HTML error
    page and its headers, then (once ``answering``) in every rationale, whole and in part."""

    def __init__(self):
        self.answering, self.n = False, 0

    def __call__(self, req):
        key = req.headers["x-goog-api-key"]
        self.n += 1
        if self.answering:
            return answer("honest", 0.8, f"you sent key {key} (prefix {key[:14]})")
        if self.n % 2:
            return error(400, message=f"bad request from {key}")
        return Reply(502, f"<html>proxy error for {key}</html>", {"X-Echo": key})


def test_an_echoed_key_is_written_nowhere(gemini_env, tmp_path, cfg, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    service = gemini_env.responder = EchoService()
    run = make_run(tmp_path, TEXTS)
    two = load_config("organism", {"judge.judges": ["keyword", "gemini"], "judge.primary": "gemini", "judge.max_retries": 0})  # fmt: skip
    label_run(run, two, progress=False)
    failed = failed_verdicts(run, two)
    assert set(failed["judge"]) == {"gemini"} and int(failed["n"].sum()) == len(TEXTS)
    assert any("bad request from [redacted]" in r for r in failed["reason"])
    service.answering = True
    label_run(run, two, progress=False)
    rationales = labels_frame(run).query("judge == 'gemini'")["rationale"]
    assert all("you sent key [redacted] (prefix [redacted])" == r for r in rationales)
    texts = [p.read_text(errors="ignore") for p in run.root.rglob("*") if p.is_file()]
    out = capsys.readouterr()
    assert_no_key(*texts, caplog.text, out.out, out.err)
    assert all(FAKE_KEY[:12] not in t for t in texts)


# ==== failed verdicts are work still to do =====================================================
def test_failed_verdicts_are_counted_reported_and_rejudged_once_the_service_answers(
    gemini_env, tmp_path, capsys
):
    stub = gemini_env
    stub.responder = lambda req: error(503)
    run = make_run(tmp_path, TEXTS)
    cfg = load_config("organism", {"judge.judges": ["gemini"], "judge.primary": "gemini", "judge.max_retries": 0})  # fmt: skip
    s = label_run(run, cfg, progress=False)["gemini"]
    assert s.failed_verdicts == len(TEXTS) == len(stub.requests)
    assert f"gemini: {len(TEXTS)} of {len(TEXTS)} verdicts failed" in capsys.readouterr().out
    check = Inspector(run, cfg).check("02_classification")
    assert not check.valid and "8 of 8 verdicts of the primary judge gemini failed" in check.why
    report = failed_verdict_report(run, cfg)
    assert "failed verdicts of gemini (primary; judge.max_failed_fraction = 0): 8 of 8" in report
    assert "      8 x HTTP 503 UNAVAILABLE" in report
    # within a tolerated fraction the stage is usable but not finished
    loose = load_config("organism", {"judge.judges": ["gemini"], "judge.primary": "gemini", "judge.max_failed_fraction": 1.0})  # fmt: skip
    assert Inspector(run, loose).check("02_classification") == Check(True, False, "8 failed gemini verdicts to judge again")  # fmt: skip
    # the service answers again: a plain rerun asks exactly for the failed completions
    stub.responder = keyword_responder
    s2 = label_run(run, cfg, progress=False)["gemini"]
    assert len(stub.requests) == 2 * len(TEXTS) and s2.labelled == len(TEXTS)
    assert s2.failed_verdicts == 0 and Inspector(run, cfg).check("02_classification").complete
    assert failed_verdict_report(run, cfg).startswith("failed verdicts: none")
    # and a finished stage repeats no paid call
    assert label_run(run, cfg, progress=False)["gemini"].calls == 0
    assert len(stub.requests) == 2 * len(TEXTS)


# ==== every answered call is kept ==============================================================
KILLABLE = """
import sys
from lib.core.config import load_config
from lib.judging.labelling import label_run, make_judge
from pathlib import Path
from lib.core.rundir import RunDir
cfg = load_config("organism", {"judge.judges": ["gemini"], "judge.primary": "gemini"})
run = RunDir(Path(sys.argv[1]))
label_run(run, cfg, [make_judge("gemini", cfg, run, backoff_base_s=0.001)], progress=False)
"""


def test_kill_9_while_judging_repeats_at_most_the_calls_in_flight(gemini_env, tmp_path):
    stub = gemini_env

    def slow(req):
        reply = keyword_responder(req)
        reply.delay = 0.15
        return reply

    stub.responder = slow
    texts = [(s, f"{c} ({i})") for i in range(5) for s, c in TEXTS]  # 40 completions
    run = make_run(tmp_path, texts)
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(run.root)], env=os.environ.copy())
    deadline = time.time() + 60
    while len(stub.answered) < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    paid = {r.prompt for r in stub.answered}
    assert 10 <= len(paid) < len(texts), len(paid)  # killed mid-way, inside the first batch of 16
    n_before = len(stub.requests)
    cfg = load_config("organism", {"judge.judges": ["gemini"], "judge.primary": "gemini"})
    label_run(run, cfg, [make_judge("gemini", cfg, run, backoff_base_s=0.001)], progress=False)
    repeated = [r for r in stub.requests[n_before:] if r.prompt in paid]
    assert len(repeated) <= cfg.judge.concurrency, len(repeated)
    assert len(JudgeCache(run.judge_cache("gemini"))) == len(texts)
    assert labels_frame(run).query("judge == 'gemini'")["failed"].sum() == 0


# ==== the real notebook 02 under the grid: exit codes, rerun, and no key anywhere ==============
NEWLINE_KEY = "newline-key-first-half\nnewline-key-second-half"


def test_notebook_02_fails_loudly_rejudges_on_a_plain_rerun_and_writes_no_key(
    gemini_env, tmp_path, monkeypatch
):
    """Notebook 02 as papermill runs it: a key with a newline stops it with a clear error; under
    the grid, an all-fail judge stage makes the grid exit non-zero and a plain rerun once the
    service answers judges exactly the failed completions. Neither key is in the run directory,
    the executed notebooks, the figures or anything printed."""
    stub = gemini_env
    service = stub.responder = EchoService()
    runs, figures = tmp_path / "runs", f"_test_robust_{os.getpid()}"
    (runs / "nb02").mkdir(parents=True)
    make_run(tmp_path, TEXTS).completions.rename(runs / "nb02" / "completions.jsonl")
    monkeypatch.setenv("DECEPTION_SAES_RUNS", str(runs))
    overrides = {
        "judge.judges": ["keyword", "gemini"],
        "judge.primary": "gemini",
        "judge.max_retries": 0,
        "judge.concurrency": 2,
        "figures": figures,
    }
    cmd = [
        sys.executable,
        "-m",
        "lib.pipeline.grid",
        "--run-name",
        "nb02",
        "--only",
        "02",
        "--log-output",
    ]
    cmd += [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    console = []

    def grid() -> subprocess.CompletedProcess:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
        console.extend([p.stdout, p.stderr])
        return p

    try:
        params = {"config": "organism", "run_name": "nb02", "overrides": overrides}
        by_hand = tmp_path / "by_hand.ipynb"
        out = execute_cell("02_classification", params, str(by_hand), str(REPO_ROOT / "notebooks"), env={"GEMINI_API_KEY": NEWLINE_KEY})  # fmt: skip
        console.append(out["error"])
        assert (
            not out["ok"] and "GEMINI_API_KEY contains whitespace or a line break" in out["error"]
        )
        assert stub.requests == []
        failing = grid()
        assert failing.returncode == 1
        assert "8 of 8 verdicts of the primary judge gemini failed" in failing.stdout
        assert len(stub.requests) == len(TEXTS)
        service.answering = True
        fixed = grid()
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert len(stub.requests) == 2 * len(TEXTS)  # the failed ones, once each
        files = [
            by_hand,
            *(runs / "nb02").rglob("*"),
            *(REPO_ROOT / "figures" / figures).rglob("*"),
        ]
        texts = [p.read_text(errors="ignore") for p in files if p.is_file()] + console
        assert len([p for p in files if p.suffix == ".ipynb"]) == 2
        assert_no_key(*texts)
        for piece in (*NEWLINE_KEY.split("\n"), FAKE_KEY[:12]):
            assert not [t for t in texts if piece in t], piece
    finally:
        shutil.rmtree(REPO_ROOT / "figures" / figures, ignore_errors=True)
