"""The chaos proxy's settings: one listener per upstream stage, a control port, a seed.

``python -m ragstress.chaos.proxy --settings JSON`` takes these as JSON, as the reference
services take theirs, so every value a proxy runs with is visible in ``ps``. Example::

    {"listeners": {"embed": {"port": 9001, "upstream": "http://127.0.0.1:8001"},
                   "generate": {"port": 9002, "upstream": "http://127.0.0.1:8002",
                                "rate_limit": {"rpm": 600, "tpm": 90000}, "units": 16}},
     "control_port": 8474, "seed": 7}
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from yarl import URL

from ragstress.chaos.faults import ErrorStyle
from ragstress.config.base import StrictModel
from ragstress.config.distributions import Positive
from ragstress.config.profile import RateLimit, StageName

__all__ = ["DEFAULT_CONTROL_PORT", "ChaosSettings", "ListenerSettings"]

DEFAULT_CONTROL_PORT = 8474  # Toxiproxy's, so its clients find the subset we speak
Port = Annotated[int, Field(ge=0, le=65_535)]
Host = Annotated[str, Field(min_length=1)]


class ListenerSettings(StrictModel):
    """One stage's listener: calls to ``host:port`` go to ``upstream`` (``http://host:port``
    with an optional base path, which is put in front of every request's path).

    ``rate_limit``: token buckets the proxy runs in front of the upstream for the whole run
    (the profile's ``rate_limit`` block; ``rate_limit_cut`` faults cut them), refused calls
    answered 429 in ``style``. ``units``: the stage's servers (replicas × concurrency, or an
    API's concurrency slots); only with it can ``capacity_loss`` be played, as a concurrency
    limit of ``units − down`` calls while a loss is active (no limit otherwise, so the proxy
    is never a hidden queue)."""

    upstream: Annotated[str, Field(min_length=1)]
    port: Port = 0
    host: Host = "127.0.0.1"
    rate_limit: RateLimit | None = None
    style: ErrorStyle = "openai"
    units: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, upstream: str) -> str:
        url = URL(upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream must be an http:// or https:// URL, got {upstream!r}")
        if url.query_string or url.fragment:
            raise ValueError("upstream must not have a query or fragment")
        return upstream.rstrip("/")


class ChaosSettings(StrictModel):
    """The whole proxy. ``listeners`` maps a stage name (the fault plan's) to its listener;
    ``control_port`` serves the control API; ``seed`` seeds each stage's draws
    (``ragstress.seeding.stream(seed, "chaos", stage)``); ``toxic_max_s`` is the lifetime
    of a fault added through the Toxiproxy API, whose toxics have no end of their own;
    ``connect_timeout_s`` bounds connecting to an upstream."""

    listeners: dict[StageName, ListenerSettings]
    control_host: Host = "127.0.0.1"
    control_port: Port = DEFAULT_CONTROL_PORT
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    toxic_max_s: Positive = 3600.0
    connect_timeout_s: Positive = 10.0

    @field_validator("listeners")
    @classmethod
    def _some(cls, listeners: dict[str, ListenerSettings]) -> dict[str, ListenerSettings]:
        if not listeners:
            raise ValueError("give at least one listener (stage → upstream)")
        return listeners
