"""The whole reference stack as one object: start in order, watch, stop in reverse order.

Start order: PostgreSQL (embedded, unless a DSN is given) → embedder and LLM service (both
started, then both waited for, since the embedder's model load is the slow part) → corpus
(built through the embedder, or reused) → with ``chaos``, the fault-injecting proxy in front
of the embedder (stage ``embed``) and the LLM (stage ``generate``) → gateway, which then calls
its dependencies through the proxy. Stop order is the reverse, so the gateway stops taking
requests before its dependencies go away.

``ReferenceStack`` is a context manager; ``ragstress serve``, the tests and the demo all use
it, and whatever it started it stops — on exit, on an exception, on a failed start.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel

from ragstress.config.profile import Profile
from ragstress.reference.corpus import BuildReport, ensure_corpus
from ragstress.reference.postgres import EmbeddedPostgres, wait_for_postgres
from ragstress.reference.processes import (
    ServiceError,
    free_port,
    start_service,
    stop_process,
    wait_healthy,
)
from ragstress.reference.settings import (
    CorpusSettings,
    GatewaySettings,
    LlmSettings,
    embedder_settings,
    engine_settings,
    gateway_policies,
)

__all__ = ["ReferenceStack", "StackOptions", "StackUrls"]


@dataclass(frozen=True)
class StackOptions:
    """What ``ragstress serve`` was asked for. Ports of ``None`` are chosen free."""

    profile: Profile
    data_dir: Path
    gateway_port: int | None = 8080
    embed_port: int | None = None
    llm_port: int | None = None
    pg_port: int | None = None
    pg_dsn: str | None = None  # an external PostgreSQL with pgvector instead of the embedded one
    llm_url: str | None = None  # forward to this OpenAI-compatible server instead of the engine
    llm_api_key_env: str | None = None
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    cpus: frozenset[int] | None = None
    embed_threads: int = 1
    startup_timeout_s: float = 120.0
    # Put the chaos proxy between the gateway and its embedder and LLM (``ragstress run``
    # then plays the scenario's faults there); its control API on chaos_control_port.
    chaos: bool = False
    chaos_control_port: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class StackUrls:
    gateway: str
    embed: str  # the embedder itself (the gateway may call it through the proxy)
    llm: str
    pg_dsn: str
    chaos_control: str | None = None
    chaos_listeners: dict[str, str] = field(default_factory=dict)  # stage → proxy URL

    def lines(self) -> list[str]:
        out = [
            f"gateway   {self.gateway}/v1/rag   (health {self.gateway}/healthz, "
            f"metrics {self.gateway}/metrics)",
            f"embedder  {self.embed}/v1/embeddings",
            f"llm       {self.llm}/v1/chat/completions",
        ]
        if self.chaos_control is not None:
            out.append(f"chaos     {self.chaos_control}   (control API; ragstress run --chaos …)")
            out.extend(
                f"  {stage:<8}via {url}" for stage, url in sorted(self.chaos_listeners.items())
            )
        # postgres last: scripts wait for this line to know the stack is up
        out.append(f"postgres  {self.pg_dsn}")
        return out


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class ReferenceStack:
    """Start, watch and stop the reference stack (see the module docstring)."""

    def __init__(
        self, options: StackOptions, progress: Callable[[str], None] = lambda _m: None
    ) -> None:
        self.options = options
        self._progress = progress
        self._children: list[_Child] = []
        self._postgres: EmbeddedPostgres | None = None
        self.urls: StackUrls | None = None
        self.corpus_report: BuildReport | None = None
        self.startup_seconds: dict[str, float] = {}

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> ReferenceStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> StackUrls:
        """Start everything; on any failure stop what was started and re-raise."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _timed(self, what: str, since: float) -> None:
        self.startup_seconds[what] = time.monotonic() - since

    def _start(self) -> StackUrls:
        opts = self.options
        began = time.monotonic()
        logs = opts.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        t = time.monotonic()
        if opts.pg_dsn is None:
            self._progress("starting postgres (embedded, pgvector)")
            self._postgres = EmbeddedPostgres(
                opts.data_dir, opts.pg_port or free_port(), opts.cpus, logs / "postgres.log"
            )
            self._postgres.start(opts.startup_timeout_s)
            dsn = self._postgres.dsn
        else:
            self._progress("connecting to postgres")
            dsn = opts.pg_dsn
            wait_for_postgres(dsn, opts.startup_timeout_s, None)
        self._timed("postgres", t)

        t = time.monotonic()
        embed = embedder_settings(
            opts.profile, port=opts.embed_port or free_port(), threads=opts.embed_threads
        )
        if opts.llm_url is None:
            llm = LlmSettings(
                port=opts.llm_port or free_port(), engine=engine_settings(opts.profile)
            )
        else:
            llm = LlmSettings(
                port=opts.llm_port or free_port(),
                mode="forward",
                forward_url=opts.llm_url.rstrip("/"),
                forward_api_key_env=opts.llm_api_key_env,
            )
        embed_url = f"http://{embed.host}:{embed.port}"
        llm_url = f"http://{llm.host}:{llm.port}"
        self._progress("starting the embedder and the LLM service")
        self._spawn("embedder", "ragstress.reference.embedder", embed, logs)
        self._spawn("llm", "ragstress.reference.llm", llm, logs)
        for child, url in zip(self._children, (embed_url, llm_url), strict=True):
            wait_healthy(
                child.name, f"{url}/healthz", child.proc, child.log, opts.startup_timeout_s
            )
        self._timed("embedder+llm", t)

        t = time.monotonic()
        self.corpus_report = ensure_corpus(dsn, embed_url, opts.corpus, self._progress)
        self._timed("corpus", t)
        self._check_children()

        chaos_control: str | None = None
        via: dict[str, str] = {}
        if opts.chaos:
            t = time.monotonic()
            chaos_control, via = self._start_chaos(embed_url, llm_url, logs)
            self._timed("chaos", t)

        t = time.monotonic()
        gateway = GatewaySettings.model_validate(
            {
                "port": opts.gateway_port or free_port(),
                "embed_url": via.get("embed", embed_url),
                "llm_url": via.get("generate", llm_url),
                "pg_dsn": dsn,
                "llm_api_key_env": None,  # the LLM service holds the key in forward mode
                **gateway_policies(opts.profile),
            }
        )
        gateway_url = f"http://{gateway.host}:{gateway.port}"
        self._progress("starting the gateway")
        child = self._spawn("gateway", "ragstress.reference.gateway", gateway, logs)
        wait_healthy(child.name, f"{gateway_url}/healthz", child.proc, child.log, 60)
        self._timed("gateway", t)
        self.startup_seconds["total"] = time.monotonic() - began
        self.urls = StackUrls(
            gateway=gateway_url,
            embed=embed_url,
            llm=llm_url,
            pg_dsn=dsn,
            chaos_control=chaos_control,
            chaos_listeners=via,
        )
        return self.urls

    def _start_chaos(self, embed_url: str, llm_url: str, logs: Path) -> tuple[str, dict[str, str]]:
        from ragstress.chaos.client import ChaosClient
        from ragstress.chaos.settings import ChaosSettings, ListenerSettings

        opts = self.options
        settings = ChaosSettings(
            listeners={
                "embed": ListenerSettings(upstream=embed_url, port=free_port()),
                "generate": ListenerSettings(upstream=llm_url, port=free_port()),
            },
            control_port=opts.chaos_control_port or free_port(),
            seed=opts.seed,
        )
        self._progress("starting the chaos proxy")
        child = self._spawn("chaos", "ragstress.chaos.proxy", settings, logs)
        control = f"http://{settings.control_host}:{settings.control_port}"
        wait_healthy(child.name, f"{control}/healthz", child.proc, child.log, 30)
        client = ChaosClient(control)
        via = {stage: info["listen"] for stage, info in client.listeners().items()}
        return control, via

    def _spawn(self, name: str, module: str, settings: BaseModel, logs: Path) -> _Child:
        log = logs / f"{name}.log"
        child = _Child(name, start_service(module, settings, log, self.options.cpus), log)
        self._children.append(child)
        return child

    def _check_children(self) -> None:
        dead = self.dead_child()
        if dead is not None:
            raise ServiceError(dead)

    def dead_child(self) -> str | None:
        """A line naming the first child that has exited, or None while all run."""
        for child in self._children:
            code = child.proc.poll()
            if code is not None:
                return f"{child.name} exited with code {code} (log: {child.log})"
        pg = self._postgres
        if pg is not None and pg.proc is not None and pg.proc.poll() is not None:
            return f"postgres exited with code {pg.proc.returncode}"
        return None

    def pids(self) -> dict[str, int]:
        """Process ids of the running children (for checks that nothing is left behind)."""
        out = {c.name: c.proc.pid for c in self._children if c.proc.poll() is None}
        if self._postgres is not None and self._postgres.proc is not None:
            out["postgres"] = self._postgres.proc.pid
        return out

    def stop(self) -> None:
        """Stop every child, newest first, then PostgreSQL. Safe to call more than once."""
        while self._children:
            child = self._children.pop()
            stop_process(child.proc)
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
