"""A loopback fake of the Gemini ``generateContent`` REST endpoint, for judge tests.

The real ``google-genai`` SDK talks to it over real HTTP on 127.0.0.1 (ephemeral port). Each
test scripts the answers: a queue of :class:`Reply` objects consumed one per request, then a
``responder`` callable (request -> Reply) when the queue is empty. Every request is recorded
(path, headers, JSON body) so tests can check what the judge sent, and every request whose
answer was written out whole is recorded again in ``answered`` (what the client was sent).
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The SDK (google-genai 3.x) defaults to API version v1; older clients and docs use v1beta.
PATH = re.compile(r"^/(?P<version>v1|v1beta)/models/(?P<model>[^/:]+):generateContent$")


@dataclass
class Reply:
    status: int = 200
    body: dict | str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (to provoke client timeouts)


@dataclass
class Request:
    path: str
    version: str
    model: str
    headers: dict[str, str]  # lower-case names
    body: dict

    @property
    def prompt(self) -> str:
        return "".join(
            p.get("text", "") for c in self.body.get("contents", []) for p in c.get("parts", [])
        )


def answer(
    label: str,
    confidence: float = 0.9,
    rationale: str = "stub rationale",
    prompt_tokens: int = 100,
    response_tokens: int = 20,
    thought_tokens: int = 5,
) -> Reply:
    """A well-formed 200 answer carrying the judge JSON as the model's text."""
    text = json.dumps({"label": label, "confidence": confidence, "rationale": rationale})
    return text_reply(text, prompt_tokens, response_tokens, thought_tokens)


def text_reply(
    text: str, prompt_tokens: int = 100, response_tokens: int = 20, thought_tokens: int = 0
) -> Reply:
    """A 200 answer whose model text is ``text`` (valid judge JSON or not)."""
    body = {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": response_tokens,
            "thoughtsTokenCount": thought_tokens,
            "totalTokenCount": prompt_tokens + response_tokens + thought_tokens,
        },
        "modelVersion": "stub",
    }
    return Reply(200, body)


def error(status: int, retry_after: str | None = None, message: str = "stub error") -> Reply:
    """A Google-style error body with ``status``; optional Retry-After header."""
    names = {
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
        400: "INVALID_ARGUMENT",
        403: "PERMISSION_DENIED",
    }
    body = {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status, body, headers)


class GeminiStub:
    """``with GeminiStub() as stub: ... stub.base_url ...``"""

    def __init__(self, responder: Callable[[Request], Reply] | None = None) -> None:
        self.script: deque[Reply] = deque()
        self.responder = responder
        self.requests: list[Request] = []
        self.answered: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                m = PATH.match(self.path.split("?", 1)[0])
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not m:
                    return self._send(error(404, message=f"no route {self.path}"))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    return self._send(error(400, message="request body is not JSON"))
                req = Request(
                    self.path,
                    m["version"],
                    m["model"],
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with stub._lock:
                    stub.requests.append(req)
                    reply = stub.script.popleft() if stub.script else None
                if reply is None:
                    reply = (
                        stub.responder(req)
                        if stub.responder
                        else error(500, message="stub script exhausted")
                    )
                if reply.delay and stub._stop.wait(reply.delay):
                    return
                if self._send(reply):
                    with stub._lock:
                        stub.answered.append(req)

            def _send(self, reply: Reply) -> bool:
                data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                payload = data.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return False  # the client gave up (timeout test)
                return True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def __enter__(self) -> GeminiStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
