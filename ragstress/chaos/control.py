"""The chaos proxy's control API, on a port of its own.

JSON in and out; every refusal is ``400 {"error": {"message", "problems": [...]}}`` with one
line per problem (``faults[2].end_s: end_s must be greater than start_s (30)``), unknown ids
are 404. Routes:

==========================  ===========================================================
``GET /healthz``            ``{"status": "ok"}``
``GET /listeners``          ``{stage: {"listen": url, "upstream": url}}``
``POST /plan``              load a plan, replacing every fault: ``{"faults": [...],
                            "run_start_epoch": epoch | null}`` (faults in the scenario's
                            format or the proxy's, :mod:`ragstress.chaos.faults`; times
                            relative to ``run_start_epoch``, else absolute epochs) →
                            ``{"loaded": n, "faults": [entry, ...]}``
``POST /faults``            the same body, added to the installed faults →
                            ``{"added": n, "faults": [...]}``
``GET /faults``             ``{"now_epoch", "faults": [entry, ...]}``; ``?active=1`` (or
                            ``GET /faults/active``) lists only those whose window covers now
``GET /faults/{id}``        one entry
``DELETE /faults/{id}``     remove one → ``{"removed": entry}``
``DELETE /faults``,         remove all → ``{"cleared": n}``
``POST /clear``
``GET /counters``           ``{"requests": {stage: n}, "injected": {stage: {kind: n}},
                            "upstream_errors": {stage: n}}`` since the proxy started
``GET /metrics``            the same as Prometheus text (a registry of this app's own)
==========================  ===========================================================

An entry: ``{"id", "stage", "kind", "active", "hits", "start_epoch", "end_epoch",
"run_start_epoch", "fault"}`` — ``fault`` is the fault as it was given (with its id), so
``[e["fault"] for e in entries]`` loads again with the same ``run_start_epoch``.

Toxiproxy's HTTP API, for the part that maps (:mod:`ragstress.chaos.toxiproxy`), is served
on the same port.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from pydantic import Field, ValidationError

from ragstress.chaos.faults import PER_CALL_KINDS, PROXY_ONLY_KINDS, ProxyFault
from ragstress.chaos.table import MAX_FAULTS, FaultTable, Installed, PlanError
from ragstress.chaos.toxiproxy import ToxiproxyApi
from ragstress.config.base import StrictModel

__all__ = ["PlanBody", "build_control_app", "format_validation_error", "parse_plan"]

_TAGS: Final = (
    PER_CALL_KINDS
    | PROXY_ONLY_KINDS
    | {"rate_limit_cut", "capacity_loss"}
    | {"exponential", "deterministic", "lognormal", "gamma", "empirical", "uniform", "normal"}
)


class PlanBody(StrictModel):
    """The body of ``POST /plan`` and ``POST /faults``."""

    faults: Annotated[tuple[ProxyFault, ...], Field(max_length=MAX_FAULTS)]
    run_start_epoch: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


def _where(loc: Sequence[int | str]) -> str:
    out = ""
    prev: int | str | None = None
    for element in loc:
        if isinstance(element, int):
            out += f"[{element}]"
        elif element in _TAGS and (isinstance(prev, int) or prev == "latency"):
            pass  # the union's tag: the kind is already in the data
        else:
            out += f".{element}" if out else element
        prev = element
    return out or "(body)"


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: ``faults[0].end_s: end_s must be greater than start_s (3)``."""
    lines = []
    for err in exc.errors():
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{_where(err['loc'])}: {message}")
    return lines


def parse_plan(data: object) -> PlanBody:
    """A plan body from decoded JSON; raises :class:`PlanError` with one line per problem."""
    try:
        return PlanBody.model_validate(data)
    except ValidationError as exc:
        raise PlanError(format_validation_error(exc)) from None


def _error(status: int, problems: Sequence[str]) -> web.Response:
    return web.json_response(
        {"error": {"message": "; ".join(problems), "problems": list(problems)}}, status=status
    )


async def _json_body(request: web.Request) -> object:
    try:
        return json.loads(await request.read())
    except ValueError as exc:
        raise PlanError([f"the body is not JSON: {exc}"]) from None


class _Metrics(Collector):
    """The table's counters as Prometheus metrics, read at scrape time."""

    def __init__(self, table: FaultTable) -> None:
        self.table = table

    def collect(self) -> Iterable[Metric]:
        t = self.table
        requests = CounterMetricFamily(
            "ragstress_chaos_requests", "Calls received, by stage", labels=["stage"]
        )
        for stage, n in t.requests.items():
            requests.add_metric([stage], n)
        injected = CounterMetricFamily(
            "ragstress_chaos_faults_injected",
            "Faults applied to calls, by stage and kind",
            labels=["stage", "kind"],
        )
        for (stage, kind), n in sorted(t.injected.items()):
            injected.add_metric([stage, kind], n)
        errors = CounterMetricFamily(
            "ragstress_chaos_upstream_errors",
            "Calls the upstream failed (unreachable, or broke off its answer), by stage",
            labels=["stage"],
        )
        for stage, n in t.upstream_errors.items():
            errors.add_metric([stage], n)
        active = GaugeMetricFamily(
            "ragstress_chaos_active_faults",
            "Faults whose window covers now, by stage",
            labels=["stage"],
        )
        counts = dict.fromkeys(t.stages, 0)
        for item in t.faults(active_only=True):
            counts[item.fault.stage] += 1
        for stage, n in counts.items():
            active.add_metric([stage], n)
        return [requests, injected, errors, active]


class _Control:
    def __init__(self, table: FaultTable, listen_urls: Mapping[str, str]) -> None:
        self.table = table
        self.listen_urls = listen_urls
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Metrics(table))

    def _entries(self, items: Iterable[Installed]) -> list[dict[str, object]]:
        now = self.table.clock()
        return [i.describe(now) for i in items]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def listeners(self, request: web.Request) -> web.Response:
        settings = self.table.settings.listeners
        return web.json_response(
            {
                stage: {"listen": self.listen_urls.get(stage), "upstream": listener.upstream}
                for stage, listener in settings.items()
            }
        )

    async def _install(self, request: web.Request, *, replace: bool) -> web.Response:
        try:
            plan = parse_plan(await _json_body(request))
            items = self.table.load(plan.faults, plan.run_start_epoch, replace=replace)
        except PlanError as exc:
            return _error(400, exc.problems)
        key = "loaded" if replace else "added"
        return web.json_response({key: len(items), "faults": self._entries(items)})

    async def load_plan(self, request: web.Request) -> web.Response:
        return await self._install(request, replace=True)

    async def add_faults(self, request: web.Request) -> web.Response:
        return await self._install(request, replace=False)

    async def list_faults(self, request: web.Request) -> web.Response:
        active = request.query.get("active", "").lower() in ("1", "true", "yes")
        return self._listing(active)

    async def list_active(self, request: web.Request) -> web.Response:
        return self._listing(True)

    def _listing(self, active: bool) -> web.Response:
        items = self.table.faults(active_only=active)
        return web.json_response({"now_epoch": self.table.clock(), "faults": self._entries(items)})

    async def get_fault(self, request: web.Request) -> web.Response:
        fault_id = request.match_info["fault_id"]
        item = self.table.get(fault_id)
        if item is None:
            return _error(404, [f"no fault {fault_id!r} is installed"])
        return web.json_response(item.describe(self.table.clock()))

    async def remove_fault(self, request: web.Request) -> web.Response:
        fault_id = request.match_info["fault_id"]
        item = self.table.remove(fault_id)
        if item is None:
            return _error(404, [f"no fault {fault_id!r} is installed"])
        return web.json_response({"removed": item.describe(self.table.clock())})

    async def clear(self, request: web.Request) -> web.Response:
        return web.json_response({"cleared": self.table.clear()})

    async def counters(self, request: web.Request) -> web.Response:
        return web.json_response(self.table.counters())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown routes and methods answer JSON too, so every client parses one shape."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, [f"{request.method} {request.path}: {exc.reason}"])
    return response


_CONTROL: Final = web.AppKey("ragstress_chaos_control", _Control)


def build_control_app(
    table: FaultTable, listen_urls: Mapping[str, str], *, toxic_max_s: float
) -> web.Application:
    """The control API over ``table``; ``listen_urls`` (stage → URL) may be filled in after
    the listeners have bound their ports."""
    control = _Control(table, listen_urls)
    app = web.Application(middlewares=[_json_errors])
    app[_CONTROL] = control
    r = app.router
    r.add_get("/healthz", control.healthz)
    r.add_get("/listeners", control.listeners)
    r.add_post("/plan", control.load_plan)
    r.add_get("/faults", control.list_faults)
    r.add_post("/faults", control.add_faults)
    r.add_delete("/faults", control.clear)
    r.add_get("/faults/active", control.list_active)
    r.add_get("/faults/{fault_id}", control.get_fault)
    r.add_delete("/faults/{fault_id}", control.remove_fault)
    r.add_post("/clear", control.clear)
    r.add_get("/counters", control.counters)
    r.add_get("/metrics", control.metrics)
    ToxiproxyApi(table, listen_urls, toxic_max_s=toxic_max_s).register(app)
    return app
