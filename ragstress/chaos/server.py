"""Building and running the chaos proxy: its applications, their sites, its lifetime.

Three ways to run it, smallest first:

- ``build_proxy_apps(settings)``: the aiohttp applications (one per listener, one for
  control) over one :class:`FaultTable`, to mount in a runner of your own — run it with
  ``handler_cancellation=True``, or a hung call outlives its caller until the fault ends;
- ``async with serve_proxy(settings) as proxy:``: started on their ports (``port: 0`` picks a
  free one; ``proxy.listen_urls`` / ``proxy.control_url`` say which), stopped on exit;
- ``python -m ragstress.chaos.proxy --settings JSON`` (:mod:`ragstress.chaos.proxy`): its own
  process until SIGINT or SIGTERM, printing one JSON line with its URLs when ready.

Every way starts with an empty table and keeps nothing on disk, so a restarted proxy has no
fault active; on the way out every fault is removed, which releases hung calls at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from ragstress.chaos.control import build_control_app
from ragstress.chaos.relay import build_listener_app
from ragstress.chaos.settings import ChaosSettings
from ragstress.chaos.table import FaultTable

__all__ = ["ProxyApps", "RunningProxy", "build_proxy_apps", "run_until_stopped", "serve_proxy"]

SHUTDOWN_TIMEOUT_S = 2.0  # streams in flight get this long when the proxy stops


@dataclass
class ProxyApps:
    """The proxy's applications. ``listen_urls`` (stage → ``http://host:port``) is filled in
    by whoever binds the listeners; the control API reads it for ``/listeners``."""

    table: FaultTable
    listeners: dict[str, web.Application]
    control: web.Application
    listen_urls: dict[str, str]


def build_proxy_apps(
    settings: ChaosSettings, *, clock: Callable[[], float] = time.time
) -> ProxyApps:
    """The listeners' and the control API's applications over one new, empty fault table.

    ``clock`` (Unix epoch seconds) is a seam for tests."""
    table = FaultTable(settings, clock=clock)
    urls: dict[str, str] = {}
    listeners = {
        stage: build_listener_app(
            stage, listener, table, connect_timeout_s=settings.connect_timeout_s
        )
        for stage, listener in settings.listeners.items()
    }
    control = build_control_app(table, urls, toxic_max_s=settings.toxic_max_s)
    return ProxyApps(table, listeners, control, urls)


@dataclass
class RunningProxy:
    """A started proxy: where it listens, and its table (for in-process use)."""

    apps: ProxyApps
    listen_urls: dict[str, str]
    control_url: str

    @property
    def table(self) -> FaultTable:
        return self.apps.table


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    return runner, f"http://{host}:{bound[1]}"


@contextlib.asynccontextmanager
async def serve_proxy(
    settings: ChaosSettings, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[RunningProxy]:
    """Start every listener and the control API; stop them (clearing every fault) on exit."""
    apps = build_proxy_apps(settings, clock=clock)
    runners: list[web.AppRunner] = []
    try:
        for stage, app in apps.listeners.items():
            listener = settings.listeners[stage]
            runner, url = await _start(app, listener.host, listener.port)
            runners.append(runner)
            apps.listen_urls[stage] = url
        runner, control_url = await _start(
            apps.control, settings.control_host, settings.control_port
        )
        runners.append(runner)
        yield RunningProxy(apps, dict(apps.listen_urls), control_url)
    finally:
        apps.table.clear()  # lets hung calls go before the runners wait for them
        for runner in reversed(runners):
            await runner.cleanup()


async def run_until_stopped(
    settings: ChaosSettings,
    on_ready: Callable[[RunningProxy], Awaitable[None] | None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; ``on_ready`` runs once everything listens (a coroutine
    function or a plain one).

    For a process of its own (the CLI, ``python -m ragstress.chaos.proxy``): once ready it
    moves every object allocated so far out of the garbage collector's reach
    (``gc.freeze()``). The imports (pydantic, numpy, aiohttp) leave some 60,000 long-lived
    objects, and a full collection over them takes 40–50 ms — a pause every proxied call in
    flight would wear as latency; frozen, a full collection only walks what the proxy has
    allocated since."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serve_proxy(settings) as proxy:
            if on_ready is not None:
                result = on_ready(proxy)
                if result is not None:
                    await result
            gc.collect()
            gc.freeze()
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
