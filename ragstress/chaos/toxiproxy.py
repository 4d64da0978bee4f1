"""The part of Toxiproxy's HTTP API that maps onto the proxy's faults, so its clients can drive
the chaos proxy unchanged.

Each listener is a Toxiproxy "proxy" named after its stage (``listen`` / ``upstream`` as
``host:port``). Routes: ``GET /version``, ``GET /proxies``, ``GET /proxies/{proxy}``,
``GET|POST /proxies/{proxy}/toxics``, ``GET|POST|DELETE /proxies/{proxy}/toxics/{toxic}``
(POST on a toxic updates it), ``POST /reset`` (removes every toxic; faults loaded through the
native API stay). Creating or deleting proxies is refused: the listeners are fixed by the
settings.

Toxics become faults of the listener's stage, starting now:

=============  =====================================================================
``latency``    ``added_latency``: ``latency`` ± ``jitter`` ms (uniform), on the first
               byte for ``stream: downstream`` (Toxiproxy delays the data coming back),
               on the request for ``upstream``
``timeout``    ``hang``; a ``timeout`` above 0 ms closes the connection that long after
               the call arrived (Toxiproxy closes it then), 0 holds it until the toxic goes
``reset_peer`` ``outage`` (reset), after ``timeout`` ms
``bandwidth``  ``bandwidth`` of ``rate`` KB/s (1 KB = 1000 bytes, as Toxiproxy counts),
               ``downstream`` only
=============  =====================================================================

Differences to know: ``toxicity`` is rolled **per call** (Toxiproxy rolls it once per
connection, so every keep-alive request on a connection shares one fate); a toxic has no end
in Toxiproxy, here it lasts at most ``toxic_max_s`` (settings) so it cannot outlive a
forgotten test; the other toxic types (``slow_close``, ``slicer``, ``limit_data``) are
refused with 400.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from pydantic import TypeAdapter, ValidationError
from yarl import URL

from ragstress.chaos.faults import ProxyFault
from ragstress.chaos.table import FaultTable, PlanError

__all__ = ["TOXIC_TYPES", "ToxiproxyApi"]

TOXIC_TYPES: Final = ("latency", "timeout", "reset_peer", "bandwidth")
_DEFAULTS: Final[dict[str, dict[str, float]]] = {
    "latency": {"latency": 0, "jitter": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "bandwidth": {"rate": 0},
}
_FAULT: Final[TypeAdapter[ProxyFault]] = TypeAdapter(ProxyFault)
VERSION: Final = "2.12.0 (ragstress chaos proxy subset)"


class _ToxicError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fail(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@dataclass
class _Toxic:
    fault_id: str
    body: dict[str, Any]


def _number(attrs: Mapping[str, Any], key: str) -> float:
    value = attrs.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _ToxicError(400, f"attribute {key} must be a number ≥ 0, got {value!r}")
    return float(value)


def toxic_fault(
    stage: str, toxic: Mapping[str, Any], fault_id: str, now: float, lifetime_s: float
) -> dict[str, Any]:
    """The proxy fault (as JSON) that plays ``toxic`` on ``stage`` from ``now``."""
    kind = toxic["type"]
    stream = toxic["stream"]
    attrs = toxic["attributes"]
    base: dict[str, Any] = {
        "id": fault_id,
        "stage": stage,
        "start_s": now,
        "end_s": now + lifetime_s,
        "percent": toxic["toxicity"] * 100.0,
    }
    if kind == "latency":
        latency = _number(attrs, "latency") / 1000.0
        jitter = _number(attrs, "jitter") / 1000.0
        dist: dict[str, Any] = (
            {"kind": "deterministic", "value": latency}
            if jitter == 0
            else {"kind": "uniform", "low": max(latency - jitter, 0.0), "high": latency + jitter}
        )
        on = "first_byte" if stream == "downstream" else "request"
        return {**base, "kind": "added_latency", "latency": dist, "on": on}
    if kind == "timeout":
        timeout = _number(attrs, "timeout") / 1000.0
        extra = {"close_after_s": timeout} if timeout > 0 else {}
        return {**base, "kind": "hang", **extra}
    if kind == "reset_peer":
        return {
            **base,
            "kind": "outage",
            "respond": "reset",
            "delay_s": _number(attrs, "timeout") / 1000.0,
        }
    if stream != "downstream":
        raise _ToxicError(400, "bandwidth: only stream downstream (the answer) is supported")
    rate = _number(attrs, "rate")
    if rate <= 0:
        raise _ToxicError(400, "bandwidth: rate must be above 0 KB/s")
    return {**base, "kind": "bandwidth", "bytes_per_s": rate * 1000.0}


class ToxiproxyApi:
    """Toxiproxy's routes over a :class:`FaultTable` (see the module docstring)."""

    def __init__(
        self, table: FaultTable, listen_urls: Mapping[str, str], *, toxic_max_s: float
    ) -> None:
        self.table = table
        self.listen_urls = listen_urls
        self.toxic_max_s = toxic_max_s
        self._toxics: dict[str, dict[str, _Toxic]] = {s: {} for s in table.stages}
        self._ids = itertools.count(1)

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/version", self.version)
        r.add_get("/proxies", self.proxies)
        r.add_post("/proxies", self.create_proxy)
        r.add_get("/proxies/{proxy}", self.proxy)
        r.add_get("/proxies/{proxy}/toxics", self.toxics)
        r.add_post("/proxies/{proxy}/toxics", self.add_toxic)
        r.add_get("/proxies/{proxy}/toxics/{toxic}", self.toxic)
        r.add_post("/proxies/{proxy}/toxics/{toxic}", self.update_toxic)
        r.add_delete("/proxies/{proxy}/toxics/{toxic}", self.remove_toxic)
        r.add_post("/reset", self.reset)

    # ------------------------------------------------------------ views

    def _live(self, stage: str) -> dict[str, _Toxic]:
        """The stage's toxics whose faults are still installed (a cleared or expired fault
        takes its toxic with it)."""
        installed = {i.id for i in self.table.faults()}
        toxics = self._toxics[stage]
        for name in [n for n, t in toxics.items() if t.fault_id not in installed]:
            del toxics[name]
        return toxics

    def _proxy_json(self, stage: str) -> dict[str, Any]:
        listen = URL(self.listen_urls.get(stage, "http://127.0.0.1:0"))
        upstream = URL(self.table.settings.listeners[stage].upstream)
        return {
            "name": stage,
            "listen": f"{listen.host}:{listen.port}",
            "upstream": f"{upstream.host}:{upstream.port}",
            "enabled": True,
            "toxics": [t.body for t in self._live(stage).values()],
        }

    def _stage(self, request: web.Request) -> str:
        stage = request.match_info["proxy"]
        if stage not in self._toxics:
            raise _ToxicError(404, "proxy not found")
        return stage

    # ------------------------------------------------------------ handlers

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def proxies(self, request: web.Request) -> web.Response:
        return web.json_response({s: self._proxy_json(s) for s in self._toxics})

    async def create_proxy(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            name = body.get("name") if isinstance(body, dict) else None
        except ValueError:
            name = None
        if name in self._toxics:
            return _fail(409, "proxy already exists")
        return _fail(400, "the chaos proxy's listeners are fixed by its settings")

    async def proxy(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self._proxy_json(self._stage(request)))
        except _ToxicError as exc:
            return _fail(exc.status, exc.message)

    async def toxics(self, request: web.Request) -> web.Response:
        try:
            stage = self._stage(request)
        except _ToxicError as exc:
            return _fail(exc.status, exc.message)
        return web.json_response([t.body for t in self._live(stage).values()])

    async def toxic(self, request: web.Request) -> web.Response:
        try:
            stage = self._stage(request)
            toxic = self._live(stage).get(request.match_info["toxic"])
        except _ToxicError as exc:
            return _fail(exc.status, exc.message)
        if toxic is None:
            return _fail(404, "toxic not found")
        return web.json_response(toxic.body)

    async def add_toxic(self, request: web.Request) -> web.Response:
        try:
            stage = self._stage(request)
            body = self._toxic_body(await request.read(), None)
            if body["name"] in self._live(stage):
                raise _ToxicError(409, "toxic already exists")
            self._install(stage, body)
        except _ToxicError as exc:
            return _fail(exc.status, exc.message)
        return web.json_response(body)

    async def update_toxic(self, request: web.Request) -> web.Response:
        try:
            stage = self._stage(request)
            name = request.match_info["toxic"]
            old = self._live(stage).get(name)
            if old is None:
                raise _ToxicError(404, "toxic not found")
            patch = json.loads(await request.read() or b"{}")
            if not isinstance(patch, dict):
                raise _ToxicError(400, "the body must be a JSON object")
            merged = {**old.body, **patch, "name": name}
            merged["attributes"] = {**old.body["attributes"], **patch.get("attributes", {})}
            body = self._toxic_body(json.dumps(merged).encode(), name)
            self.table.remove(old.fault_id)
            del self._toxics[stage][name]
            self._install(stage, body)
        except ValueError:
            return _fail(400, "the body is not JSON")
        except _ToxicError as exc:
            return _fail(exc.status, exc.message)
        return web.json_response(body)

    async def remove_toxic(self, request: web.Request) -> web.Response:
        try:
            stage = self._stage(request)
        except _ToxicError as exc:
            return _fail(exc.status, exc.message)
        toxic = self._live(stage).pop(request.match_info["toxic"], None)
        if toxic is None:
            return _fail(404, "toxic not found")
        self.table.remove(toxic.fault_id)
        return web.Response(status=204)

    async def reset(self, request: web.Request) -> web.Response:
        for toxics in self._toxics.values():
            for toxic in toxics.values():
                self.table.remove(toxic.fault_id)
            toxics.clear()
        return web.Response(status=204)

    # ------------------------------------------------------------ toxics

    def _toxic_body(self, raw: bytes, name: str | None) -> dict[str, Any]:
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise _ToxicError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise _ToxicError(400, "the body must be a JSON object")
        kind = data.get("type")
        if kind not in TOXIC_TYPES:
            raise _ToxicError(
                400, f"toxic type {kind!r} is not supported (supported: {', '.join(TOXIC_TYPES)})"
            )
        stream = data.get("stream", "downstream")
        if stream not in ("upstream", "downstream"):
            raise _ToxicError(400, "stream must be upstream or downstream")
        toxicity = data.get("toxicity", 1.0)
        if isinstance(toxicity, bool) or not isinstance(toxicity, int | float):
            raise _ToxicError(400, "toxicity must be a number from 0 to 1")
        if not 0.0 <= toxicity <= 1.0:
            raise _ToxicError(400, "toxicity must be a number from 0 to 1")
        attrs = data.get("attributes", {})
        if not isinstance(attrs, dict):
            raise _ToxicError(400, "attributes must be an object")
        unknown = sorted(set(attrs) - set(_DEFAULTS[kind]))
        if unknown:
            allowed = ", ".join(_DEFAULTS[kind])
            raise _ToxicError(
                400, f"unknown attributes {', '.join(unknown)} for {kind} (allowed: {allowed})"
            )
        toxic_name = name or data.get("name") or f"{kind}_{stream}"
        if not isinstance(toxic_name, str):
            raise _ToxicError(400, "name must be a string")
        return {
            "name": toxic_name,
            "type": kind,
            "stream": stream,
            "toxicity": float(toxicity),
            "attributes": {**_DEFAULTS[kind], **attrs},
        }

    def _install(self, stage: str, body: dict[str, Any]) -> None:
        fault_id = f"toxic.{stage}.{next(self._ids)}"
        data = toxic_fault(stage, body, fault_id, self.table.clock(), self.toxic_max_s)
        try:
            fault = _FAULT.validate_python(data)
            self.table.load([fault], None, replace=False)
        except (ValidationError, PlanError) as exc:
            raise _ToxicError(400, str(exc)) from None
        self._toxics[stage][body["name"]] = _Toxic(fault_id, body)
