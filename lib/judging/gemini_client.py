"""A small Gemini client for JSON answers: retries, backoff, Retry-After, timeouts, a guarded key.

:class:`GeminiClient` sends one prompt and returns the model's JSON answer validated by a pydantic
model (``client.generate_json(prompt, Answer)``). Everything a paid, flaky service needs is here,
so every module that asks Gemini something (the judge of :mod:`lib.judging.gemini`, an auto-interpreter
of SAE latents) gets the same guarantees:

- the API key comes from the environment only (``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``) and
  its shape is checked before any call (whitespace or a line break is one clear error);
- the key never leaves the client: it is scrubbed (:meth:`GeminiClient.scrub`) from every string
  of an answer, every error body and every exception message before anyone sees it, and from
  every log record (the HTTP libraries log response headers at DEBUG level);
- 429, 408, 5xx, timeouts, dropped connections and unparseable answers are retried with
  exponential backoff and jitter, honouring the server's Retry-After or RetryInfo up to a cap;
  the SDK's own retry is off, so each attempt is one request;
- every request and its tokens are counted (:class:`Usage`).

``GEMINI_BASE_URL`` redirects the SDK (proxies, and the tests' loopback stub).
"""

from __future__ import annotations

import email.utils
import importlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

logger = logging.getLogger("lib.judging.gemini")

KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BASE_URL_ENV_VAR = "GEMINI_BASE_URL"
REDACTED = "[redacted]"
#: an echoed piece of the key at least this long is redacted too
MIN_SECRET_PIECE = 12
M = TypeVar("M", bound=BaseModel)


class GeminiError(RuntimeError):
    """The client cannot work at all: no key, a malformed key, a key the service refused.
    Never carries the key."""


class CallFailed(Exception):
    """No valid answer: retries exhausted, or a failure retrying cannot fix. ``reason`` is
    scrubbed."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


@dataclass
class Usage:
    """What a client sent and got back (thread-safe increments through the client)."""

    calls: int = 0  # requests sent (every attempt counts)
    retries: int = 0  # attempts after the first, for any reason
    rate_limited: int = 0  # HTTP 429 answers
    server_errors: int = 0  # HTTP 5xx answers
    timeouts: int = 0  # requests that hit the timeout or lost the connection
    unparseable: int = 0  # answers that did not validate
    prompt_tokens: int = 0
    response_tokens: int = 0
    thought_tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


# ----- the key ------------------------------------------------------------------------------------
def api_key_from_env() -> str:
    """The API key from ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``, checked for shape, never shown."""
    for var in KEY_ENV_VARS:
        value = os.environ.get(var)
        if value is None or value == "":
            continue
        if not value.strip() or re.search(r"\s", value):
            raise GeminiError(
                f"{var} contains whitespace or a line break (often pasted with a file's line end); "
                f"set it to the key alone, e.g. export {var}=\"$(tr -d '[:space:]' < keyfile)\""
            )
        if not re.fullmatch(r"[\x21-\x7e]+", value):
            raise GeminiError(
                f"{var} contains characters that are not printable ASCII; an API key has none"
            )
        return value
    raise GeminiError(
        "the gemini judge needs an API key in the environment variable GEMINI_API_KEY "
        "(or GOOGLE_API_KEY); it is read from the environment only, never from a config or a "
        "notebook parameter. Set it in the shell that starts Jupyter, or use judge.judges=[keyword]."
    )


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (also URL-quoted, and any echoed piece of at least
    :data:`MIN_SECRET_PIECE` characters), Google API keys and URL userinfo replaced."""
    text = str(text)
    if secret:
        for form in {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}:
            text = text.replace(form, REDACTED)
        if len(secret) >= MIN_SECRET_PIECE:
            pieces = {
                secret[i : i + MIN_SECRET_PIECE] for i in range(len(secret) - MIN_SECRET_PIECE + 1)
            }
            out, i = [], 0
            while i < len(text):
                if text[i : i + MIN_SECRET_PIECE] in pieces:
                    j = i + MIN_SECRET_PIECE
                    while j < len(text) and text[i : j + 1] in secret:
                        j += 1
                    out.append(REDACTED)
                    i = j
                else:
                    out.append(text[i])
                    i += 1
            text = "".join(out)
    text = re.sub(r"AIza[0-9A-Za-z_\-]{20,}", REDACTED, text)
    return re.sub(r"(://)[^/\s@]+@", rf"\1{REDACTED}@", text)  # URL userinfo


_SECRETS: set[str] = set()
_secrets_lock = threading.Lock()


def _install_log_redaction(secret: str) -> None:
    """Scrub ``secret`` from every log record from now on, whichever library logs it.

    The HTTP libraries under the SDK log response headers at DEBUG level, so a service that
    echoes the key in a header would put it in any debug log. A record factory sees every
    record that passes its logger's level, before any handler formats or stores it.
    """
    with _secrets_lock:
        first = not _SECRETS
        _SECRETS.add(secret)
    if not first:
        return
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is the logging module's business
            return record
        clean = text
        for sec in tuple(_SECRETS):
            clean = redact(clean, sec)
        if clean != text:
            record.msg, record.args = clean, ()
        return record

    logging.setLogRecordFactory(factory)


def _scrub_json(obj, secret: str | None):
    if isinstance(obj, str):
        return redact(obj, secret)
    if isinstance(obj, list):
        return [_scrub_json(v, secret) for v in obj]
    if isinstance(obj, dict):
        return {k: _scrub_json(v, secret) for k, v in obj.items()}
    return obj


# ----- what the server says about waiting and failing --------------------------------------------
def parse_retry_after(value: str | None) -> float | None:
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


def retry_delay_from_details(details) -> float | None:
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


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class _Fail(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ----- the client ---------------------------------------------------------------------------------
class GeminiClient:
    """One model, JSON answers, retried; the key checked first and never shown.

    ``max_retries``: further attempts after the first. ``timeout_s``: per request. Backoff: attempt
    ``n`` waits ``min(backoff_max_s, backoff_base_s * 2**n)`` times a factor in [0.5, 1]; a
    Retry-After (or RetryInfo) from the server wins, up to ``retry_after_cap_s``. ``sleep`` and
    ``seed`` make waits testable. Thread-safe: one client serves parallel calls.
    """

    def __init__(
        self,
        model: str = "gemini-2.5-flash",
        *,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_cap_s: float = 300.0,
        temperature: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if max_retries < 0 or timeout_s <= 0 or retry_after_cap_s < 0:
            raise ValueError("max_retries must be >= 0, timeout_s > 0 and retry_after_cap_s >= 0")
        self.model = model
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_cap_s = retry_after_cap_s
        self.temperature = temperature
        self.usage = Usage()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._secret = api_key_from_env()  # checked before any call
        _install_log_redaction(self._secret)
        self._sdk = self._make_sdk_client()

    def _make_sdk_client(self):
        from google import genai
        from google.genai import types

        base_url = os.environ.get(BASE_URL_ENV_VAR, "").strip() or None
        http_options = types.HttpOptions(
            base_url=base_url,
            timeout=max(1, int(round(self.timeout_s * 1000))),  # the SDK takes milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # our loop retries, not the SDK
        )
        try:
            return genai.Client(api_key=self._secret, vertexai=False, http_options=http_options)
        except Exception as e:
            raise GeminiError(self.scrub(f"cannot create the Gemini client: {e}")) from None

    def __repr__(self) -> str:  # never show the SDK client (which holds the key)
        return f"GeminiClient(model={self.model!r})"

    def scrub(self, text: str, limit: int | None = 300) -> str:
        """``text`` without the key (see :func:`redact`), cut to ``limit`` characters."""
        out = redact(text, self._secret)
        return out if limit is None else out[:limit]

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                setattr(self.usage, k, getattr(self.usage, k) + v)

    def _backoff(self, attempt: int) -> float:
        d = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        with self._lock:
            return d * (0.5 + 0.5 * self._rng.random())

    # ----- one request ---------------------------------------------------------------------------
    def _config(self, answer: type[BaseModel], response_schema):
        from google.genai import types

        return types.GenerateContentConfig(
            temperature=self.temperature,
            candidate_count=1,
            response_mime_type="application/json",
            response_schema=response_schema if response_schema is not None else answer,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    def _attempt(self, prompt: str, answer: type[M], response_schema) -> M:
        """One request: a valid answer, or :class:`_Retry` / :class:`_Fail` / :class:`GeminiError`."""
        from google.genai import errors

        self._count(calls=1)
        try:
            response = self._sdk.models.generate_content(
                model=self.model, contents=prompt, config=self._config(answer, response_schema)
            )
        except errors.APIError as e:
            code = int(e.code or 0)
            reason = self.scrub(f"HTTP {code} {e.status or ''}".strip())
            if code in (408, 429) or 500 <= code < 600:
                self._count(rate_limited=int(code == 429), server_errors=int(code >= 500))
                headers = getattr(getattr(e, "response", None), "headers", None) or {}
                after = parse_retry_after(headers.get("retry-after"))
                if after is None:
                    after = retry_delay_from_details(e.details)
                raise _Retry(reason, after) from None
            detail = self.scrub(e.message or "")
            if code in (401, 403) or "api key" in detail.lower():
                raise GeminiError(
                    f"the Gemini API refused the request ({reason}: {detail})"
                ) from None
            raise _Fail(f"{reason}: {detail}") from None
        except Exception as e:  # transport errors: timeouts, dropped connections
            if _is_transient(e):
                self._count(timeouts=1)
                raise _Retry(f"timeout or connection error ({type(e).__name__})") from None
            raise _Fail(self.scrub(f"{type(e).__name__}: {e}")) from None

        usage = getattr(response, "usage_metadata", None)
        if usage is not None:
            self._count(
                prompt_tokens=usage.prompt_token_count or 0,
                response_tokens=usage.candidates_token_count or 0,
                thought_tokens=usage.thoughts_token_count or 0,
            )
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
            data = _scrub_json(json.loads(fenced.group(1) if fenced else text), self._secret)
            return answer.model_validate(data)
        except json.JSONDecodeError as e:
            self._count(unparseable=1)
            raise _Retry(f"unparseable answer (not JSON: {e.msg})") from None
        except ValidationError as e:
            self._count(unparseable=1)
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "answer"
            raise _Retry(self.scrub(f"unparseable answer ({where}: {first.get('msg')})")) from None

    # ----- one prompt, retried -------------------------------------------------------------------
    def generate_json(self, prompt: str, answer: type[M], *, response_schema=None) -> M:
        """The model's answer to ``prompt`` as an ``answer`` instance (every string scrubbed).

        ``response_schema``: the schema the service enforces (default: ``answer`` itself).
        Raises :class:`CallFailed` when no valid answer came within the retries, and
        :class:`GeminiError` when the key was refused (retrying other prompts cannot help).
        """
        reasons: list[str] = []
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
            try:
                return self._attempt(prompt, answer, response_schema)
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
        last = reasons[-1] if reasons else "unknown error"
        logger.warning("gemini: no answer after %d attempt(s): %s", len(reasons), last)
        raise CallFailed(last, len(reasons))
