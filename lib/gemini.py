"""The study's judge: Gemini 2.5 Flash through the ``google-genai`` SDK.

One completion per call (batching several per call made the study's earlier judge call everything
ambiguous), with a versioned prompt (``data/judge_prompts/gemini_<version>.txt``), JSON output
validated on the way in (:class:`GeminiAnswer`), bounded concurrency, retries with backoff that
honour the server's Retry-After and RetryInfo, and an on-disk cache (:class:`JudgeCache`) so a
rerun repeats no call that was answered.

The API key is read from the environment only (``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``). It is
handed to the SDK and nowhere else: not to a parameter, a log line, an exception message, a label
row or the cache. ``GEMINI_BASE_URL`` redirects the SDK (proxies, and the tests' loopback stub).
"""

from __future__ import annotations

import email.utils
import importlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lib.config import LABELS, REPO_ROOT
from lib.judges import Judge, JudgeError, Label, Verdict
from lib.rundir import append_jsonl, read_jsonl, sha256_text
from lib.scenarios import Scenario

logger = logging.getLogger(__name__)

KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BASE_URL_ENV_VAR = "GEMINI_BASE_URL"
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


def api_key_from_env() -> str:
    """The Gemini API key from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``; a clear error if unset."""
    for var in KEY_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    raise JudgeError(
        "the gemini judge needs an API key in the environment variable GEMINI_API_KEY "
        "(or GOOGLE_API_KEY); it is read from the environment only, never from a config or a "
        "notebook parameter. Set it in the shell that starts Jupyter, or use judge.judges=[keyword]."
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


class _Retry(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _retry_delay_from_details(details) -> float | None:
    """The ``google.rpc.RetryInfo`` delay ("37s") that Gemini puts in 429 error bodies."""
    try:
        items = details.get("error", details).get("details", [])
    except AttributeError:
        return None
    for d in items or []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("RetryInfo"):
            m = re.fullmatch(r"\s*([0-9.]+)s\s*", str(d.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


def _transient_types() -> tuple[type, ...]:
    """Transport errors worth retrying, from httpx and from httpx2 (which google-genai 3.x uses)."""
    out: list[type] = [TimeoutError, ConnectionError]
    for name in ("httpx", "httpx2"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        out += [
            getattr(mod, n)
            for n in ("TimeoutException", "NetworkError", "RemoteProtocolError")
            if hasattr(mod, n)
        ]
    return tuple(out)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _transient_types()) or "Timeout" in type(exc).__name__


class _Fail(Exception):
    """One attempt failed in a way that retrying will not fix."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GeminiJudge(Judge):
    """Gemini through ``google-genai``: one completion per request, JSON out, retried, cached.

    Parameters: ``model`` (e.g. ``gemini-2.5-flash``), ``concurrency`` (parallel requests),
    ``max_retries`` (further attempts after the first, on 429, 5xx, timeouts and unparseable
    answers), ``timeout_s`` (per request), ``cache`` (a :class:`JudgeCache` or ``None``),
    ``backoff_base_s``/``backoff_max_s`` (exponential backoff with jitter: attempt ``n`` waits
    ``min(max, base * 2**n)`` times a factor in [0.5, 1]; a Retry-After from the server wins, up
    to ``retry_after_cap_s``), ``sleep`` (injectable for tests).

    The API key comes from the environment (see :func:`api_key_from_env`) and the endpoint from
    ``GEMINI_BASE_URL`` when set. The SDK's own retry is switched off (one attempt per call), so
    the retry loop here is the only one.
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
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.cache = cache
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_cap_s = retry_after_cap_s
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._client, self._secret = self._make_client()  # the key is checked before any call

    # ----- setup -------------------------------------------------------------------------------
    def _make_client(self):
        key = api_key_from_env()
        from google import genai
        from google.genai import types

        base_url = os.environ.get(BASE_URL_ENV_VAR, "").strip() or None
        http_options = types.HttpOptions(
            base_url=base_url,
            timeout=max(1, int(round(self.timeout_s * 1000))),  # the SDK takes milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # our loop retries, not the SDK
        )
        client = genai.Client(api_key=key, vertexai=False, http_options=http_options)
        # Kept privately only to scrub it out of any text this module records or raises.
        return client, key

    def _scrub(self, text: str) -> str:
        text = str(text)
        if self._secret:
            text = text.replace(self._secret, "[redacted]")
        text = re.sub(r"AIza[0-9A-Za-z_\-]{20,}", "[redacted]", text)
        return re.sub(r"(://)[^/\s@]+@", r"\1[redacted]@", text)[:300]  # URL userinfo

    def __repr__(self) -> str:  # never show the client (which holds the key)
        return f"GeminiJudge(model={self.model!r}, prompt_version={self.prompt_version!r})"

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                setattr(self.summary, k, getattr(self.summary, k) + v)

    # ----- one completion ----------------------------------------------------------------------
    def _config(self):
        from google.genai import types

        return types.GenerateContentConfig(
            temperature=0.0,
            candidate_count=1,
            response_mime_type="application/json",
            response_schema=_response_schema(),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    def _attempt(self, prompt: str) -> GeminiAnswer:
        """One request. Returns a valid answer, raises :class:`_Retry` or :class:`JudgeError`."""
        from google.genai import errors

        self._count(calls=1)
        try:
            response = self._client.models.generate_content(
                model=self.model, contents=prompt, config=self._config()
            )
        except errors.APIError as e:
            code = int(e.code or 0)
            reason = self._scrub(f"HTTP {code} {e.status or ''}".strip())
            if code == 429 or code == 408 or 500 <= code < 600:
                self._count(rate_limited=int(code == 429), server_errors=int(code >= 500))
                headers = getattr(getattr(e, "response", None), "headers", None) or {}
                after = _parse_retry_after(headers.get("retry-after"))
                if after is None:
                    after = _retry_delay_from_details(e.details)
                raise _Retry(reason, after) from None
            detail = self._scrub(e.message or "")
            if code in (401, 403) or "api key" in detail.lower():
                raise JudgeError(
                    f"the Gemini API refused the request ({reason}: {detail})"
                ) from None
            raise _Fail(f"{reason}: {detail}") from None
        except Exception as e:  # transport errors: timeouts, dropped connections
            if _is_transient(e):
                self._count(timeouts=1)
                raise _Retry(f"timeout or connection error ({type(e).__name__})") from None
            raise _Fail(self._scrub(f"{type(e).__name__}: {e}")) from None

        usage = getattr(response, "usage_metadata", None)
        if usage is not None:
            self._count(
                prompt_tokens=usage.prompt_token_count or 0,
                response_tokens=usage.candidates_token_count or 0,
                thought_tokens=usage.thoughts_token_count or 0,
            )
        text = None
        try:
            text = response.text
        except (ValueError, AttributeError):
            text = None
        if not text:
            finish = None
            try:
                finish = response.candidates[0].finish_reason
            except (AttributeError, IndexError, TypeError):
                pass
            self._count(unparseable=1)
            raise _Retry(f"empty answer (finish reason {finish})")
        fenced = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.S)  # a stray code fence
        try:
            return GeminiAnswer.model_validate_json(fenced.group(1) if fenced else text)
        except ValidationError as e:
            self._count(unparseable=1)
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "answer"
            raise _Retry(self._scrub(f"unparseable answer ({where}: {first.get('msg')})")) from None

    def _backoff(self, attempt: int) -> float:
        d = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        with self._lock:
            return d * (0.5 + 0.5 * self._rng.random())

    def judge(self, scenario: Scenario, completion: str) -> Verdict:
        """Judge one completion. Service trouble gives a failed verdict; only JudgeError raises."""
        return self.judge_many([(scenario, completion)])[0]

    def _judge_uncached(self, scenario: Scenario, completion: str) -> Verdict:
        prompt = render_prompt(scenario, completion, self.prompt_version)
        reasons: list[str] = []
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
            try:
                a = self._attempt(prompt)
                return Verdict(a.label, a.rationale, float(a.confidence))
            except _Retry as r:
                reasons.append(r.reason)
                if attempt == self.max_retries:
                    break
                if r.retry_after is not None:
                    delay = min(r.retry_after, self.retry_after_cap_s)
                else:
                    delay = self._backoff(attempt)
                logger.info(
                    "gemini: %s; retry %d/%d in %.2f s",
                    r.reason,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                self._sleep(delay)
            except _Fail as f:
                reasons.append(f.reason)
                break
        self._count(failures=1)
        last = reasons[-1] if reasons else "unknown error"
        logger.warning("gemini: no verdict after %d attempt(s): %s", len(reasons), last)
        return Verdict(
            "ambiguous", f"judge failed after {len(reasons)} attempt(s): {last}", None, failed=True
        )

    # ----- many completions --------------------------------------------------------------------
    def judge_many(self, items: Sequence[tuple[Scenario, str]]) -> list[Verdict]:
        """Verdicts in input order; cached ones first, the rest ``concurrency`` at a time.

        Successful new verdicts are added to the cache as soon as the batch is done.
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
        self._count(items=len(items), cache_hits=len(items) - len(todo))
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
                results = list(pool.map(lambda i: self._judge_uncached(*items[i]), todo))
            for i, v in zip(todo, results, strict=True):
                out[i] = v
            if self.cache is not None:
                self.cache.put_many(
                    [
                        {
                            "key": keys[i],
                            "judge": self.name,
                            "model": self.model,
                            "prompt_version": self.prompt_version,
                            "scenario": items[i][0].id,
                            "label": out[i].label,
                            "confidence": out[i].confidence,
                            "rationale": out[i].rationale,
                            "created": datetime.now(UTC).isoformat(timespec="seconds"),
                        }
                        for i in todo
                        if not out[i].failed
                    ]
                )
        with self._lock:
            self.summary.seconds += time.perf_counter() - t0
        return out  # type: ignore[return-value]
