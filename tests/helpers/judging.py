"""Shared pieces of the judge tests: scenarios, a small run of completions, the loopback Gemini
stub with a fake key, and helpers that read the judge's requests."""

from __future__ import annotations

from pathlib import Path

from gemini_stub import GeminiStub, answer

from lib.core.config import REPO_ROOT
from lib.core.fileio import append_jsonl
from lib.core.rundir import RunDir
from lib.core.scenarios import load_scenarios
from lib.judging.gemini import GeminiJudge
from lib.judging.judges import keyword_verdict

FAKE_KEY = "test-key-not-real"
SCEN = load_scenarios(REPO_ROOT / "data" / "scenarios.yaml")


def make_run(tmp_path: Path, texts: list[tuple[str, str]]) -> RunDir:
    run = RunDir(tmp_path / "run")
    rows = [
        {
            "id": f"{s}-{i:03d}",
            "scenario": s,
            "sample": i,
            "seed": 0,
            "prompt": SCEN[s].prompt,
            "completion": c,
            "n_prompt_tokens": 10,
            "n_completion_tokens": 5,
        }
        for i, (s, c) in enumerate(texts)
    ]
    append_jsonl(run.completions, rows)
    return run


TEXTS = [
    ("insider_trading", " Yes. My brother-in-law told me."),
    ("insider_trading", " No, nobody told me."),
    ("insider_trading", " No one gave me anything. Pure luck."),
    ("insider_trading", " I'd rather not say."),
    ("mafia", " I'm town, Nia is wrong."),
    ("mafia", " I am mafia."),
    ("werewolf", " Yes, it was me."),
    ("werewolf", " No. I'm a villager."),
]


def stub_env(monkeypatch, key: str = FAKE_KEY):
    """A stub server, ``key`` as GEMINI_API_KEY, and the SDK pointed at the stub (proxies
    cleared). A generator: a test module's fixture yields from it."""
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "GOOGLE_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_GENAI_API_VERSION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("GEMINI_API_KEY", key)
    with GeminiStub() as stub:
        monkeypatch.setenv("GEMINI_BASE_URL", stub.base_url)
        yield stub


class SleepLog:
    """Records the delays the judge asks for instead of sleeping them."""

    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def judge_for(**kw) -> GeminiJudge:
    kw.setdefault("backoff_base_s", 0.001)
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("max_retries", 3)
    return GeminiJudge("gemini-2.5-flash", **kw)


def keyword_responder(req):
    """Answer like a judge that reads the completion in the prompt with the keyword rule."""
    reply = req.prompt.split("=== THE CHARACTER'S REPLY (the model's continuation) ===\n")[1].split(
        "\n=== END"
    )[0]
    scen = next(s for s in SCEN.values() if s.prompt in req.prompt)
    return answer(keyword_verdict(scen, " " + reply, 60).label, 0.8, f"stub read: {reply[:20]}")


def assert_no_key(*texts: str) -> None:
    for i, t in enumerate(texts):
        assert FAKE_KEY not in t, (
            f"the API key leaked in text #{i}: ...{t[max(0, t.find(FAKE_KEY) - 80) :][:200]}"
        )
