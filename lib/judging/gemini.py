"""The study's judge: Gemini 2.5 Flash through :class:`lib.judging.gemini_client.GeminiClient`.

One completion per call (batching several per call made the study's earlier judge call everything
ambiguous), with a versioned prompt (``data/judge_prompts/gemini_<version>.txt``), JSON output
validated on the way in (:class:`GeminiAnswer`), bounded concurrency, and an on-disk cache
(:class:`JudgeCache`) that records every answer the moment it arrives, so a rerun (or a rerun after
a kill) repeats no call that was answered.

The client (re-exported here: ``from lib.judging.gemini import GeminiClient``) owns the retries, the
backoff, Retry-After, timeouts, usage counting and the key: read from the environment only
(``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``), checked for shape before the first call, and
scrubbed from every answer, error and message, so it reaches no parameter, log line, exception,
label row or cache line. ``GEMINI_BASE_URL`` redirects the SDK (proxies, the tests' stub).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lib.core.config import REPO_ROOT, RunConfig
from lib.core.fileio import append_jsonl, read_jsonl
from lib.core.rundir import sha256_text
from lib.core.scenarios import Scenario
from lib.core.vocabulary import LABELS
from lib.judging.gemini_client import (
    CallFailed,
    GeminiClient,
    GeminiError,
    Usage,
    api_key_from_env,
    redact,
)
from lib.judging.judges import Judge, JudgeError, Label, Verdict, keyword_verdict

__all__ = [
    "CallFailed",
    "GeminiAnswer",
    "GeminiClient",
    "GeminiError",
    "GeminiJudge",
    "JudgeCache",
    "Usage",
    "api_key_from_env",
    "redact",
    "render_prompt",
]
MAX_RATIONALE_CHARS = 400

# ----- the prompt ---------------------------------------------------------------------------------
PROMPT_DIR = REPO_ROOT / "data" / "judge_prompts"
PROMPT_VERSION = "v1"


def prompt_versions() -> list[str]:
    """The prompt versions on disk (``gemini_<version>.txt``)."""
    return sorted(p.stem.removeprefix("gemini_") for p in PROMPT_DIR.glob("gemini_*.txt"))


@lru_cache(maxsize=8)
def prompt_template(version: str = PROMPT_VERSION) -> str:
    """The template of a prompt version. Placeholders: ``{title}``, ``{scene}``,
    ``{completion}``; doubled braces are literal braces. A version is never edited once used:
    a changed prompt is a new version (the cache and the label rows are keyed on it)."""
    path = PROMPT_DIR / f"gemini_{version}.txt"
    if not path.exists():
        raise ValueError(f"prompt version {version!r}; known: {prompt_versions()}")
    return path.read_text()


def render_prompt(scenario: Scenario, completion: str, version: str = PROMPT_VERSION) -> str:
    """The judge prompt for one completion."""
    return prompt_template(version).format(
        title=scenario.title, scene=scenario.prompt, completion=completion.strip() or "(empty)"
    )


# ----- the answer ---------------------------------------------------------------------------------
class GeminiAnswer(BaseModel):
    """The JSON the Gemini judge must return; anything else is an unparseable answer."""

    model_config = ConfigDict(extra="ignore")

    label: Label
    confidence: float = Field(ge=0.0, le=1.0)
    rationale: str = Field(min_length=1)

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, v):
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("rationale")
    @classmethod
    def _rationale(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("empty rationale")
        return v[:MAX_RATIONALE_CHARS]


def _response_schema():
    from google.genai import types

    return types.Schema(
        type=types.Type.OBJECT,
        properties={
            "label": types.Schema(type=types.Type.STRING, enum=list(LABELS)),
            "confidence": types.Schema(type=types.Type.NUMBER, minimum=0.0, maximum=1.0),
            "rationale": types.Schema(type=types.Type.STRING),
        },
        required=["label", "confidence", "rationale"],
        property_ordering=["label", "confidence", "rationale"],
    )


class JudgeCache:
    """Append-only JSONL cache of successful verdicts of one judge, keyed by :meth:`key`.

    A verdict is cached only when it came from a valid answer, so failures are retried later.
    The file holds no completion text and no credentials.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {r["key"]: r for r in read_jsonl(self.path) if "key" in r}

    @staticmethod
    def key(
        judge: str, model: str | None, prompt_version: str | None, scenario_id: str, completion: str
    ) -> str:
        item = sha256_text(f"{scenario_id}\x1f{completion}")
        return sha256_text(f"{judge}\x1f{model}\x1f{prompt_version}\x1f{item}")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Verdict | None:
        r = self._entries.get(key)
        if r is None:
            return None
        return Verdict(r["label"], r["rationale"], r.get("confidence"))

    def put_many(self, rows: list[dict]) -> None:
        """``rows``: dicts with ``key``, ``label``, ``rationale``, ``confidence`` and context."""
        if not rows:
            return
        with self._lock:
            append_jsonl(self.path, rows)
            for r in rows:
                self._entries[r["key"]] = r


USAGE_FIELDS = tuple(Usage.__dataclass_fields__)


class GeminiJudge(Judge):
    """Gemini as a judge: one completion per request, JSON out, retried, each answer cached.

    Parameters: ``model`` (e.g. ``gemini-2.5-flash``), ``concurrency`` (parallel requests),
    ``cache`` (a :class:`JudgeCache` or ``None``), ``prompt_version``; ``max_retries``,
    ``timeout_s``, ``backoff_base_s``, ``backoff_max_s``, ``retry_after_cap_s``, ``sleep`` and
    ``seed`` go to the :class:`GeminiClient` (see there). A completion the client gets no valid
    answer for becomes a failed verdict (``ambiguous`` with the reason), which is not cached and
    is judged again on the next run. A missing, malformed or refused key raises
    :class:`lib.judging.judges.JudgeError` before (or instead of) any further call.
    """

    name = "gemini"

    def __init__(
        self,
        model: str = "gemini-2.5-flash",
        *,
        concurrency: int = 4,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        cache: JudgeCache | None = None,
        prompt_version: str = PROMPT_VERSION,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_cap_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        prompt_template(prompt_version)  # an unknown version fails here, before any call
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0 and timeout_s > 0")
        self.model = model
        self.prompt_version = prompt_version
        super().__init__()
        self.concurrency = concurrency
        self.cache = cache
        self._lock = threading.Lock()
        try:  # the key is checked here, before any call
            self.client = GeminiClient(
                model,
                max_retries=max_retries,
                timeout_s=timeout_s,
                backoff_base_s=backoff_base_s,
                backoff_max_s=backoff_max_s,
                retry_after_cap_s=retry_after_cap_s,
                sleep=sleep,
                seed=seed,
            )
        except GeminiError as e:
            raise JudgeError(str(e)) from None

    def __repr__(self) -> str:
        return f"GeminiJudge(model={self.model!r}, prompt_version={self.prompt_version!r})"

    def judge(self, scenario: Scenario, completion: str) -> Verdict:
        """Judge one completion. Service trouble gives a failed verdict; only JudgeError raises."""
        return self.judge_many([(scenario, completion)])[0]

    def _judge_uncached(self, scenario: Scenario, completion: str) -> Verdict:
        if scenario.is_control:
            # the prompt asks whether the character lies; a control prompt's labels (sincerely
            # false, true, neutral) come from its cues, as the keyword judge reads them
            return keyword_verdict(scenario, completion)
        prompt = render_prompt(scenario, completion, self.prompt_version)
        try:
            a = self.client.generate_json(prompt, GeminiAnswer, response_schema=_response_schema())
        except CallFailed as f:
            with self._lock:
                self.summary.failures += 1
            return Verdict(
                "ambiguous",
                f"judge failed after {f.attempts} attempt(s): {f.reason}",
                None,
                failed=True,
                reason=f.reason,
            )
        except GeminiError as e:
            raise JudgeError(str(e)) from None
        return Verdict(a.label, a.rationale, float(a.confidence))

    def _cache_row(self, key: str, scenario: Scenario, v: Verdict) -> dict:
        return {
            "key": key,
            "judge": self.name,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "scenario": scenario.id,
            "label": v.label,
            "confidence": v.confidence,
            "rationale": v.rationale,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def judge_many(self, items: Sequence[tuple[Scenario, str]]) -> list[Verdict]:
        """Verdicts in input order; cached ones first, the rest ``concurrency`` at a time.

        Each valid answer is appended to the cache (one flushed line) as soon as it arrives, so an
        abort repeats at most the calls in flight.
        """
        t0 = time.perf_counter()
        out: list[Verdict | None] = [None] * len(items)
        keys = [
            JudgeCache.key(self.name, self.model, self.prompt_version, s.id, c) for s, c in items
        ]
        todo = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if self.cache is not None else None
            if hit is not None:
                out[i] = hit
            else:
                todo.append(i)

        def work(i: int) -> Verdict:
            v = self._judge_uncached(*items[i])
            if self.cache is not None and not v.failed:
                self.cache.put_many([self._cache_row(keys[i], items[i][0], v)])
            return v

        try:
            if todo:
                with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
                    for i, v in zip(todo, pool.map(work, todo), strict=True):
                        out[i] = v
        finally:
            with self._lock:
                self.summary.items += len(items)
                self.summary.cache_hits += len(items) - len(todo)
                self.summary.seconds += time.perf_counter() - t0
                for f in USAGE_FIELDS:
                    setattr(self.summary, f, getattr(self.client.usage, f))
        return out  # type: ignore[return-value]


def make_json_client(cfg: RunConfig, run=None, model: str | None = None) -> GeminiClient:
    """A :class:`lib.judging.gemini_client.GeminiClient` with the run's retry settings, for other prompts
    than the judge's (auto-interpretation of SAE latents): ``client.generate_json(prompt,
    Answer)``. ``run`` is accepted for symmetry with the judge; callers keep their own caches."""
    jc = cfg.judge
    return GeminiClient(
        model or jc.gemini_model,
        max_retries=jc.max_retries,
        timeout_s=jc.timeout_s,
        retry_after_cap_s=jc.retry_after_cap_s,
    )
