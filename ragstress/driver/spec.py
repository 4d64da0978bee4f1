"""The driver's shared vocabulary: run settings, one request to replay, one measured sample.

This module never imports Locust or gevent: the CLI builds ``RunSettings`` here, hands them to
the Locust process as JSON, and reads the samples that process writes. Everything the Locust
process needs that is not about sending bytes (which requests, what to send, how to read an
answer, how to record it) lives in modules like this one, so it is tested without Locust.

Times: ``at_s`` and ``arrival_s`` are offsets from the run's start (the replay clock's zero),
already divided by ``time_scale``; latencies are measured from the *intended* arrival
(start + at_s), never from when the request was actually sent, so a slow target cannot hide
behind a slow generator (coordinated omission); ``send_lag_s`` is sent − intended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ragstress.config.base import StrictModel

__all__ = [
    "DEFAULT_PATHS",
    "SAMPLE_COLUMNS",
    "EndpointKind",
    "EndpointSettings",
    "HttpRequest",
    "ParsedResponse",
    "ReplayRequest",
    "RunSettings",
    "Sample",
]

EndpointKind = Literal["rag", "openai-chat", "template"]
DEFAULT_PATHS: dict[str, str] = {"rag": "/v1/rag", "openai-chat": "/v1/chat/completions"}


class EndpointSettings(StrictModel):
    """What to send and how to read the answer.

    - ``rag``: the reference gateway's ``POST /v1/rag`` ``{"query", "top_k", "stream",
      "max_tokens"}``; outcome from ``x-ragstress-outcome`` / the final ``done`` or ``error``
      event; stage times from ``Server-Timing`` / the ``done`` event's timings.
    - ``openai-chat``: ``POST /v1/chat/completions`` with ``messages`` made of
      ``prompt_tokens`` tokens of text (4 characters per token), ``max_tokens`` the
      workload's answer length, ``stream`` with ``stream_options.include_usage``.
    - ``template``: ``body_template`` is JSON text with placeholders ``{{query}}``,
      ``{{top_k}}``, ``{{max_tokens}}``, ``{{prompt}}``, ``{{prompt_tokens}}``, ``{{id}}``
      (string placeholders are JSON-escaped when substituted); the answer is read as SSE when
      the response's content type is ``text/event-stream`` (first ``data:`` event = first
      token), else as a whole body.

    ``headers`` are sent as written; ``header_env`` maps a header name to the *name* of an
    environment variable whose value is sent (API keys): values from the environment are
    never written to results, logs or the manifest.
    """

    kind: EndpointKind = "rag"
    target: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]
    path: str | None = None  # default: DEFAULT_PATHS[kind]; required for template
    stream: bool = True
    model: str = "ragstress-emulated"  # openai-chat's "model"
    body_template: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    header_env: dict[str, str] = Field(default_factory=dict)
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0  # whole request
    stall_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0  # longest gap in a stream


class RunSettings(StrictModel):
    """One ``ragstress run``: everything the Locust process needs, as JSON on its command line.

    The workload is rebuilt in every process from the scenario file and seed (it is
    deterministic), so distributed workers on other machines need only these settings and
    the same files; worker ``i`` of ``n`` replays the requests with ``id % n == i``.
    """

    scenario: Path
    profile: Path | None = None
    seed: int | None = None  # None: the scenario's own
    time_scale: Annotated[float, Field(gt=0, le=1e6)] = 1.0  # 4: four times faster
    max_requests: Annotated[int, Field(ge=1, le=100_000_000)] = 1_000_000
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    endpoint: EndpointSettings
    out: Path
    # The chaos proxy's control URL: the scenario's faults are loaded there at the run's
    # start (windows ÷ time_scale, counted from the run's clock) and cleared at its end.
    chaos: Annotated[str, Field(pattern=r"^https?://[^\s/]+/?$")] | None = None


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """One workload request, ready to send."""

    id: int
    at_s: float  # intended offset from the run's start, time-scaled
    query: str
    top_k: int
    query_tokens: int
    prompt_tokens: int  # system prompt + query + retrieved context, as the model counts it
    max_tokens: int  # the workload's answer length


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str] = field(repr=False)  # may hold API keys: never in a repr or log
    body: bytes = b""


@dataclass
class ParsedResponse:
    """What one answer said, read as it arrived. Times are on the caller's clock."""

    outcome: str  # one of ragstress.results.schema.OUTCOMES
    status: int  # HTTP status, 0 when no response arrived
    first_token_at: float | None = None
    last_byte_at: float | None = None
    attempts: int = 1
    tokens_in: int = 0
    tokens_out: int = 0
    stages: dict[str, float] = field(default_factory=dict)  # stage → seconds
    error: str = ""


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished request: a row of ``requests.csv``."""

    id: int
    arrival_s: float
    outcome: str
    latency_s: float  # intended arrival → last byte (NaN when no answer)
    ttft_s: float  # intended arrival → first token (NaN when none)
    send_lag_s: float  # actual send − intended send (NaN when shed)
    attempts: int
    tokens_in: int
    tokens_out: int
    status: int
    stages: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @staticmethod
    def shed(request: ReplayRequest) -> Sample:
        """A request the generator did not send because ``max_in_flight`` were in flight."""
        return Sample(
            id=request.id,
            arrival_s=request.at_s,
            outcome="shed",
            latency_s=math.nan,
            ttft_s=math.nan,
            send_lag_s=math.nan,
            attempts=0,
            tokens_in=0,
            tokens_out=0,
            status=0,
            error="max_in_flight reached",
        )


# requests.csv: the RunResult base columns, then the driver's own, then one
# ``<stage>_wait_s`` / ``<stage>_service_s`` pair per stage of the profile (a measured stage
# time from Server-Timing is wait + service as the gateway saw it; it goes into
# ``_service_s`` and ``_wait_s`` stays empty, since the two cannot be told apart from outside).
SAMPLE_COLUMNS: tuple[str, ...] = (
    "id",
    "arrival_s",
    "outcome",
    "latency_s",
    "ttft_s",
    "attempts",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "send_lag_s",
    "status",
    "error",
)
