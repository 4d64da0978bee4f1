"""What to send for one replayed request, and how to read the answer, per endpoint kind.

Both halves are plain functions over bytes, so they are tested on recorded byte streams
without a network, Locust or gevent (this module imports none of them; the Locust process
only moves the bytes).

**Requests** (:func:`build_request`). ``rag``: the reference gateway's body. ``openai-chat``:
a system and a user message holding exactly the request's ``prompt_tokens`` tokens by the
stack's 4-characters rule (:data:`ragstress.reference.settings.CHARS_PER_TOKEN`): the user
message is the query followed by filler words, so no two prompts share more than the system
message as a prefix (a server's prefix cache sees what real retrieved contexts would give
it). ``template``: ``body_template`` with its placeholders filled in (:func:`check_template`
validates it once, before a run). Header values named in ``header_env`` come from the
environment; a missing one is :class:`MissingEnvError`, whose text names the header and the
variable, never a value.

**Answers** (:class:`ResponseReader`, one per request): fed the status and headers, then the
body line by line (a stream) or whole, then :meth:`ResponseReader.finish`. Outcomes use the
model's vocabulary (:data:`ragstress.results.schema.OUTCOMES`):

- 200: ``rag`` takes the outcome from ``x-ragstress-outcome`` (JSON answer) or the ``done``
  event (stream), default ``ok``; ``openai-chat`` answers are ``ok``, ``template`` answers
  too unless they carry ``x-ragstress-outcome`` (a template may front the reference
  gateway). A stream that ends without its end marker (``rag``: ``done``; ``openai-chat``:
  ``data: [DONE]``; a template stream has none) or carries an ``error`` event or an
  ``{"error": …}`` data object is ``error_stream`` (the ``rag`` ``error`` event with kind
  ``timeout`` is ``timeout``). A whole 200 body that is an ``{"error": …}`` object is
  ``error_5xx``; a ``rag`` or ``openai-chat`` body that is not a JSON object,
  ``error_stream``.
- Not 200: ``rag`` and ``template`` take the outcome the service states
  (``x-ragstress-outcome``, else the body's ``error.kind``) when it is a failure outcome;
  otherwise 429 is ``error_429``, 408 and 504 are ``timeout``, and every other status is
  ``error_5xx`` (the model has no 4xx outcome: a request a dependency refused failed like one
  it could not serve). ``error`` keeps ``HTTP <status>: <message>``, one line of at most
  :data:`ERROR_MAX_CHARS` characters.
- ``x-ragstress-attempts`` (``rag``, ``template``) or the ``done`` / ``error`` event's
  per-stage attempts, summed, give ``attempts``; else 1.
- Transport failures (:meth:`ResponseReader.on_transport_error`): ``timeout``,
  ``error_connect``, ``error_stream``; a connection lost after a 200 began is
  ``error_stream`` whatever the transport called it, and one lost after the answer's end
  marker does not change a complete answer.

Times: the first token is the first ``token`` event (``rag``), the first chunk with
non-empty ``delta.content`` (``openai-chat``) or the first ``data:`` event (``template``
stream), timed at the line that carried it. A whole (non-streamed) answer's first token is
its last byte: nothing of it was usable earlier, as the model counts an answer with no
streaming stage. Stage times (``rag``, ``template``) are ``Server-Timing``'s (or the
``done`` event's) ``embed``, ``retrieve``, ``generate``… in seconds; ``ttft`` and ``total``
are not stages, and a zero duration means the stage did not run (the gateway's convention).
A failed request keeps the first-token time it saw (a stream that broke after its first
token); the model's TTFT applies to answered requests only.

Tokens: the answer's usage (``rag``: ``usage``; ``openai-chat``: the usage chunk or the
body's ``usage``); without one, ``tokens_out`` counts content chunks (one token each, as
servers stream) and ``tokens_in`` stays 0 (unknown).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from ragstress.driver.spec import (
    DEFAULT_PATHS,
    EndpointKind,
    EndpointSettings,
    HttpRequest,
    ParsedResponse,
    ReplayRequest,
)
from ragstress.reference.settings import CHARS_PER_TOKEN, approx_tokens
from ragstress.results.schema import OUTCOMES

__all__ = [
    "ERROR_MAX_CHARS",
    "PLACEHOLDERS",
    "SYSTEM_PROMPT",
    "MissingEnvError",
    "ResponseReader",
    "build_request",
    "check_template",
    "endpoint_path",
    "new_reader",
    "outcome_for_status",
    "parse_server_timing",
    "prompt_messages",
    "prompt_text",
]

ERROR_MAX_CHARS: Final = 200
PLACEHOLDERS: Final = ("query", "top_k", "max_tokens", "prompt", "prompt_tokens", "id")
_STRING_PLACEHOLDERS: Final = frozenset({"query", "prompt"})
# Anything between double braces is meant as a placeholder: an unknown name is an error
# rather than text sent as written (a misspelt {{qeury}} would otherwise go unnoticed).
_PLACEHOLDER_RE: Final = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

# The system message of an openai-chat prompt (its tokens count towards prompt_tokens).
SYSTEM_PROMPT: Final = (
    "You are a helpful assistant. Answer the question using only the sources below."
)
# Filler words of exactly CHARS_PER_TOKEN characters with their space, as the reference
# LLM's answers: one token each by the 4-characters rule and about one for real tokenizers.
_FILLER: Final = ("the ", "and ", "for ", "you ", "are ", "not ", "all ", "can ", "was ", "one ")

_ANSWERED: Final = frozenset({"ok", "ok_degraded"})
_FAILED: Final = frozenset(OUTCOMES) - _ANSWERED
_TRANSPORT_OUTCOMES: Final = frozenset({"timeout", "error_connect", "error_stream"})
_NOT_STAGES: Final = frozenset({"ttft", "total"})


class MissingEnvError(ValueError):
    """A ``header_env`` variable is not set (or empty). Names the header and the variable,
    never a value, so the message is safe to print and log."""

    def __init__(self, header: str, variable: str) -> None:
        self.header = header
        self.variable = variable
        super().__init__(
            f"header {header!r} takes its value from the environment variable {variable}, "
            "which is not set (or empty)"
        )


# --- requests ------------------------------------------------------------------------------


def endpoint_path(endpoint: EndpointSettings) -> str:
    """The request path: ``endpoint.path`` or the kind's default (a template needs one)."""
    if endpoint.path is not None:
        return endpoint.path
    if endpoint.kind not in DEFAULT_PATHS:
        raise ValueError(f"endpoint kind {endpoint.kind!r} needs a path (e.g. /v1/generate)")
    return DEFAULT_PATHS[endpoint.kind]


def _fit(text: str, tokens: int) -> str:
    """``text`` as it is, cut, or followed by filler words: exactly ``tokens`` tokens by the
    4-characters rule."""
    size = max(tokens, 0) * CHARS_PER_TOKEN
    if len(text) >= size or approx_tokens(text) == tokens:
        return text[:size]
    head = f"{text} " if text else ""
    words = -(-(size - len(head)) // CHARS_PER_TOKEN) + 1
    filler = "".join(_FILLER[k % len(_FILLER)] for k in range(words))
    return (head + filler)[:size]


def prompt_text(req: ReplayRequest) -> str:
    """The whole prompt as one text (the template's ``{{prompt}}``): the query followed by
    filler words, ``req.prompt_tokens`` tokens by the 4-characters rule."""
    return _fit(req.query, req.prompt_tokens)


def prompt_messages(req: ReplayRequest) -> list[dict[str, str]]:
    """An openai-chat prompt of exactly ``req.prompt_tokens`` tokens (summed over messages, as
    the reference LLM counts them): the system message (:data:`SYSTEM_PROMPT`, cut where
    the prompt is shorter) and a user message of the query followed by filler words. The
    query is kept whole where the budget allows; a prompt of under 2 tokens is one user
    message."""
    total = req.prompt_tokens
    if total < 2:
        return [{"role": "user", "content": _fit(req.query, total)}]
    user = min(max(approx_tokens(req.query), total - approx_tokens(SYSTEM_PROMPT)), total - 1)
    return [
        {"role": "system", "content": _fit(SYSTEM_PROMPT, total - user)},
        {"role": "user", "content": _fit(req.query, user)},
    ]


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _substitute(template: str, req: ReplayRequest) -> str:
    values: dict[str, str] = {
        "query": req.query,
        "prompt": prompt_text(req),
        "top_k": str(req.top_k),
        "max_tokens": str(req.max_tokens),
        "prompt_tokens": str(req.prompt_tokens),
        "id": str(req.id),
    }

    def fill(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name not in values:
            known = ", ".join(f"{{{{{p}}}}}" for p in PLACEHOLDERS)
            raise ValueError(
                f"body_template: unknown placeholder {match.group(0)!r} (known: {known})"
            )
        if name in _STRING_PLACEHOLDERS:
            return json.dumps(values[name], ensure_ascii=False)[1:-1]  # escaped, unquoted
        return values[name]

    return _PLACEHOLDER_RE.sub(fill, template)


_DUMMY = ReplayRequest(
    id=7,
    at_s=0.0,
    # quotes, a backslash, a newline, a tab and non-ASCII text: what escaping must survive
    query='a "dummy" query \\ with\na line break,\ta tab and ünïcode',
    top_k=5,
    query_tokens=12,
    prompt_tokens=40,
    max_tokens=16,
)


def check_template(endpoint: EndpointSettings) -> None:
    """Validate a ``template`` endpoint once, before a run: it has a ``path`` and a
    ``body_template``, every placeholder is known, and the body is valid JSON once they are
    filled in (with a query that needs escaping). Raises ValueError saying what is wrong.
    Other kinds have nothing to check."""
    if endpoint.kind != "template":
        return
    if endpoint.path is None:
        raise ValueError("endpoint kind 'template' needs a path (e.g. /v1/generate)")
    if endpoint.body_template is None:
        raise ValueError("endpoint kind 'template' needs a body_template (JSON text)")
    body = _substitute(endpoint.body_template, _DUMMY)
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(
            "body_template is not valid JSON once its placeholders are filled in: "
            f"{exc.msg} at line {exc.lineno} column {exc.colno} (string placeholders such as "
            '{{query}} go inside quotes: "{{query}}"; numbers such as {{top_k}} do not)'
        ) from None


def _headers(endpoint: EndpointSettings, environ: Mapping[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {"content-type": "application/json"}
    if endpoint.stream:
        headers["accept"] = "text/event-stream"

    def put(name: str, value: str) -> None:
        for key in [k for k in headers if k.lower() == name.lower()]:
            del headers[key]  # header names are case-insensitive: the later one wins
        headers[name] = value

    for name, value in endpoint.headers.items():
        put(name, value)
    for name, variable in endpoint.header_env.items():
        secret = environ.get(variable)
        if not secret:
            raise MissingEnvError(name, variable)
        put(name, secret)
    return headers


def build_request(
    endpoint: EndpointSettings, req: ReplayRequest, environ: Mapping[str, str]
) -> HttpRequest:
    """The HTTP request for ``req`` (see the module docstring for each kind's body).

    Deterministic: the same request gives the same bytes. Raises MissingEnvError for a
    ``header_env`` variable that ``environ`` lacks, ValueError for a template placeholder
    that is not known (run :func:`check_template` first to fail before the run)."""
    body: bytes
    if endpoint.kind == "rag":
        body = _json(
            {
                "query": req.query,
                "top_k": req.top_k,
                "stream": endpoint.stream,
                "max_tokens": req.max_tokens,
            }
        )
    elif endpoint.kind == "openai-chat":
        payload: dict[str, Any] = {
            "model": endpoint.model,
            "messages": prompt_messages(req),
            "max_tokens": req.max_tokens,
            "stream": endpoint.stream,
        }
        if endpoint.stream:
            payload["stream_options"] = {"include_usage": True}
        body = _json(payload)
    else:
        if endpoint.body_template is None:
            raise ValueError("endpoint kind 'template' needs a body_template (JSON text)")
        body = _substitute(endpoint.body_template, req).encode("utf-8")
    return HttpRequest(
        method="POST",
        path=endpoint_path(endpoint),
        headers=_headers(endpoint, environ),
        body=body,
    )


# --- answers -------------------------------------------------------------------------------


def parse_server_timing(value: str) -> dict[str, float]:
    """``Server-Timing`` entries with a ``dur`` (milliseconds) as ``{name: seconds}``.

    Tolerant: parameters other than ``dur`` (``desc=…``), spaces, quoted values and upper
    case parameter names are accepted; an entry without a usable ``dur`` (missing, not a
    number, negative, not finite) is skipped; of repeated names the first counts."""
    out: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if not name or name in out:
            continue
        for param in params:
            key, sep, raw = param.partition("=")
            if not sep or key.strip().lower() != "dur":
                continue
            try:
                ms = float(raw.strip().strip('"'))
            except ValueError:
                break
            if math.isfinite(ms) and ms >= 0:
                out[name] = ms / 1000.0
            break
    return out


def outcome_for_status(status: int) -> str:
    """A failed HTTP status in the model's vocabulary: 429 → ``error_429``, 408 and 504 →
    ``timeout``, anything else → ``error_5xx`` (there is no 4xx outcome)."""
    if status == 429:
        return "error_429"
    if status in (408, 504):
        return "timeout"
    return "error_5xx"


def _clip(text: str) -> str:
    """One line of at most ERROR_MAX_CHARS characters (control characters become spaces)."""
    flat = "".join(c if c.isprintable() else " " for c in text).strip()
    return flat if len(flat) <= ERROR_MAX_CHARS else flat[: ERROR_MAX_CHARS - 1] + "…"


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _error_message(obj: Any) -> str | None:
    """The message of an ``{"error": …}`` object (OpenAI's or the gateway's shape)."""
    if not isinstance(obj, dict) or obj.get("error") is None:
        return None
    err = obj["error"]
    if isinstance(err, dict):
        for key in ("message", "kind", "type", "code"):
            if isinstance(err.get(key), str) and err[key]:
                return str(err[key])
        return json.dumps(err)
    return str(err)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _attempts(value: Any) -> int | None:
    """Attempts as a number, or summed over a per-stage mapping (the gateway's events)."""
    if isinstance(value, dict):
        counts = [_count(v) for v in value.values()]
        return sum(c for c in counts if c is not None) if counts else None
    return _count(value)


class ResponseReader:
    """Reads one answer as it arrives; see the module docstring for the rules.

    The transport calls :meth:`on_headers`, then :meth:`on_line` per line of a stream
    (:meth:`wants_lines`) or :meth:`on_body` with the whole body, then :meth:`finish`; on a
    transport failure it calls :meth:`on_transport_error`, then :meth:`finish`. ``now`` is
    the caller's clock (the same one for every call)."""

    def __init__(self, kind: EndpointKind) -> None:
        self.kind: EndpointKind = kind
        self._status = 0
        self._headers: dict[str, str] = {}
        self._sse = False
        self._first_token_at: float | None = None
        self._last_byte_at: float | None = None
        self._ended = False  # the stream's end marker (done / [DONE] / error) arrived
        self._answer_outcome: str | None = None  # what a rag answer says it was
        self._failure: tuple[str, str] | None = None  # (outcome, message) from the answer
        self._transport: tuple[str, str, float] | None = None
        self._attempts: int | None = None
        self._usage: tuple[int, int] | None = None
        self._chunks = 0
        self._stages: dict[str, float] = {}
        self._body = bytearray()
        self._event = ""
        self._data: list[str] = []
        self._event_at = 0.0
        self._result: ParsedResponse | None = None

    # -- transport callbacks --------------------------------------------------------------

    def on_headers(self, status: int, headers: Mapping[str, str], now: float) -> None:
        self._status = int(status)
        self._headers = {k.lower(): v for k, v in headers.items()}
        self._last_byte_at = now
        content_type = self._headers.get("content-type", "").lower()
        self._sse = content_type.startswith("text/event-stream")
        if self.kind == "openai-chat":
            return
        attempts = self._headers.get("x-ragstress-attempts")
        if attempts is not None and attempts.strip().isdigit():
            self._attempts = int(attempts.strip())
        timing = self._headers.get("server-timing")
        if timing is not None:
            self._add_stages(parse_server_timing(timing))

    def wants_lines(self) -> bool:
        """Whether the body should be read line by line (a ``text/event-stream`` answer)."""
        return self._sse

    def on_line(self, line: bytes, now: float) -> None:
        if self._status != 200 or not self._sse:
            self._last_byte_at = now
            self._body += line if line.endswith(b"\n") else line + b"\n"
            return
        if self._ended:
            return  # after the end marker nothing changes the answer (nor its last byte)
        self._last_byte_at = now
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text:
            self._dispatch()
            return
        if text.startswith(":"):
            return  # a comment (keep-alive)
        name, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            if not self._data:
                self._event_at = now
            self._data.append(value)
        elif name == "event":
            self._event = value

    def on_body(self, body: bytes, now: float) -> None:
        if self._status == 200 and self._sse:
            for line in body.splitlines(keepends=True):
                self.on_line(line, now)
        else:
            self._body += body
            self._last_byte_at = now

    def on_transport_error(self, outcome: str, message: str, now: float) -> None:
        if self._transport is None:
            self._transport = (outcome, message, now)

    def finish(self, now: float) -> ParsedResponse:
        """The answer as read. Idempotent: a second call returns the same result."""
        if self._result is None:
            self._result = self._finish(now)
        return self._result

    # -- reading --------------------------------------------------------------------------

    def _add_stages(self, stages: Mapping[str, float]) -> None:
        for name, seconds in stages.items():
            if name not in _NOT_STAGES and seconds > 0:
                self._stages.setdefault(name, seconds)

    def _fail(self, outcome: str, message: str) -> None:
        if self._failure is None:
            self._failure = (outcome, message)
        self._ended = True

    def _token(self, at: float) -> None:
        if self._first_token_at is None:
            self._first_token_at = at
        self._chunks += 1

    def _take_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        tin = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        tout = _count(usage.get("completion_tokens", usage.get("output_tokens")))
        if tin is not None or tout is not None:
            self._usage = (tin or 0, tout or 0)

    def _dispatch(self) -> None:
        event, data, at = self._event or "message", "\n".join(self._data), self._event_at
        had_data = bool(self._data)
        self._event, self._data = "", []
        if not had_data or self._ended:
            return
        if self.kind == "rag":
            self._rag_event(event, data, at)
        else:
            self._chunk_event(event, data, at)

    def _rag_event(self, event: str, data: str, at: float) -> None:
        if event == "token":
            self._token(at)
            return
        if event not in ("done", "error"):
            return  # sources, and anything newer
        obj = _loads(data)
        if not isinstance(obj, dict):
            self._fail("error_stream", f"malformed {event} event: {data}")
            return
        attempts = _attempts(obj.get("attempts"))
        if attempts is not None:
            self._attempts = attempts
        if event == "error":
            kind = obj.get("kind")
            message = obj.get("message") if isinstance(obj.get("message"), str) else data
            self._fail("timeout" if kind == "timeout" else "error_stream", f"{kind}: {message}")
            return
        self._ended = True
        self._last_byte_at = at
        outcome = obj.get("outcome")
        self._answer_outcome = outcome if outcome in OUTCOMES else "ok"
        self._take_usage(obj.get("usage"))
        timings = obj.get("timings")
        if isinstance(timings, dict):
            self._add_stages(
                {
                    key.removesuffix("_ms"): float(ms) / 1000.0
                    for key, ms in timings.items()
                    if key.endswith("_ms") and _count(ms) is not None
                }
            )

    def _chunk_event(self, event: str, data: str, at: float) -> None:
        """An openai-chat or template stream's event."""
        if not data.strip():
            return  # an empty event: nothing to read
        if data.strip() == "[DONE]":
            self._ended = True
            self._last_byte_at = at
            return
        obj = _loads(data)
        message = _error_message(obj)
        if event == "error" or message is not None:
            self._fail("error_stream", message or data)
            return
        if self.kind == "template":
            self._token(at)
            if isinstance(obj, dict):
                self._take_usage(obj.get("usage"))
            return
        if not isinstance(obj, dict):
            self._fail("error_stream", f"malformed chunk: {data}")
            return
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                self._token(at)
        self._take_usage(obj.get("usage"))

    def _whole_answer(self) -> tuple[str, str]:
        """(outcome, error) of a 200 answer read whole; counts its tokens."""
        raw = bytes(self._body)
        obj = _loads(raw)
        self._first_token_at = self._last_byte_at
        message = _error_message(obj)
        if message is not None:
            return "error_5xx", _clip(f"HTTP 200 with an error: {message}")
        stated = self._headers.get("x-ragstress-outcome", "").strip()
        if self.kind == "template":
            # the answer's shape is the service's own: any body is an answer
            if isinstance(obj, dict):
                self._take_usage(obj.get("usage"))
            return (stated if stated in OUTCOMES else "ok"), ""
        if not isinstance(obj, dict):
            return "error_stream", _clip(f"HTTP 200 with a body that is not a JSON object: {raw!r}")
        self._take_usage(obj.get("usage"))
        if self.kind == "rag":
            attempts = _attempts(obj.get("attempts"))
            if self._attempts is None and attempts is not None:
                self._attempts = attempts
            if stated in OUTCOMES:
                return stated, ""
            body_outcome = obj.get("outcome")
            return (body_outcome if body_outcome in OUTCOMES else "ok"), ""
        if self._usage is None:
            for choice in obj.get("choices") or ():
                msg = choice.get("message") if isinstance(choice, dict) else None
                if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                    self._chunks += approx_tokens(msg["content"])
        return "ok", ""

    def _refused(self) -> tuple[str, str]:
        """(outcome, error) of a non-200 answer."""
        raw = bytes(self._body)
        obj = _loads(raw)
        outcome = outcome_for_status(self._status)
        if self.kind != "openai-chat":
            stated = self._headers.get("x-ragstress-outcome", "").strip()
            err = obj.get("error") if isinstance(obj, dict) else None
            kind = err.get("kind") if isinstance(err, dict) else None
            if stated in _FAILED:
                outcome = stated
            elif kind in _FAILED:
                outcome = str(kind)
        message = _error_message(obj)
        if message is None:
            message = raw.decode("utf-8", errors="replace").strip() or "(empty body)"
        return outcome, _clip(f"HTTP {self._status}: {message}")

    def _finish(self, now: float) -> ParsedResponse:
        if self._sse and self._status == 200:
            self._dispatch()  # an event the stream ended without a blank line after
        if self._last_byte_at is None:
            self._last_byte_at = now
        error = ""
        if self._status == 0:
            outcome, message, at = self._transport or ("error_connect", "no response", now)
            outcome = outcome if outcome in _TRANSPORT_OUTCOMES else "error_connect"
            self._last_byte_at = at
            error = _clip(message)
        elif self._status != 200:
            outcome, error = self._refused()
            if self._transport is not None:
                self._last_byte_at = self._transport[2]
        elif self._sse:
            outcome, error = self._stream_outcome()
        elif self._transport is not None:
            outcome, message, at = self._transport
            outcome = "timeout" if outcome == "timeout" else "error_stream"
            self._last_byte_at = at
            error = _clip(message)
        else:
            outcome, error = self._whole_answer()
        tokens_in, tokens_out = self._usage if self._usage is not None else (0, self._chunks)
        return ParsedResponse(
            outcome=outcome,
            status=self._status,
            first_token_at=self._first_token_at,
            last_byte_at=self._last_byte_at,
            attempts=self._attempts if self._attempts is not None else 1,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            stages=dict(self._stages),
            error=error,
        )

    def _stream_outcome(self) -> tuple[str, str]:
        if self._failure is not None:
            outcome, message = self._failure
            return outcome, _clip(message)
        if self._ended:
            return (self._answer_outcome or "ok"), ""
        if self._transport is not None:
            outcome, message, at = self._transport
            self._last_byte_at = at
            return ("timeout" if outcome == "timeout" else "error_stream"), _clip(message)
        if self.kind == "rag":
            return "error_stream", "the stream ended without a done event"
        if self.kind == "openai-chat":
            return "error_stream", "the stream ended without data: [DONE]"
        return "ok", ""


def new_reader(endpoint: EndpointSettings) -> ResponseReader:
    """A reader for one answer from ``endpoint``."""
    return ResponseReader(endpoint.kind)
