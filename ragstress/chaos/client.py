"""A small synchronous client of the chaos proxy's control API, for the driver and the CLI.

Standard library only (``urllib``), so it works in any process — a Locust process patched by
gevent included — and each call is one short HTTP request with a timeout. Typical use around
a run::

    client = ChaosClient("http://127.0.0.1:8474")
    client.wait_ready()
    with client.applied(scenario.faults, run_start_epoch=time.time()):
        ...  # the run; on leaving (normally, on Ctrl-C, on an error) every fault is removed

or the same by hand: ``client.load_plan(scenario.faults, start)`` at the start, and
``client.clear()`` in a ``finally``. Faults carry absolute end times on the proxy, so even
when the driver dies without clearing, each fault ends by itself at its end.

Every failure raises :class:`ChaosError` with one readable line (the proxy's own message for
a refused plan, e.g. ``faults[1]: unknown stage 'rerank' (allowed: embed, generate)``).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel

__all__ = ["ChaosClient", "ChaosError"]


class ChaosError(RuntimeError):
    """The control API refused a request or could not be reached; ``status`` is the HTTP
    status (``None``: no answer) and ``problems`` the proxy's lines, if it sent any."""

    def __init__(
        self, message: str, *, status: int | None = None, problems: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or [message]


FaultLike = BaseModel | Mapping[str, Any]
"""A scenario fault (``scenario.faults`` items), a proxy fault, or its JSON as a mapping."""


def _fault_json(fault: FaultLike) -> dict[str, Any]:
    if isinstance(fault, BaseModel):
        data: dict[str, Any] = fault.model_dump(mode="json", exclude_none=True)
        return data
    return dict(fault)


class ChaosClient:
    """The control API at ``control_url`` (e.g. ``http://127.0.0.1:8474``)."""

    def __init__(self, control_url: str, *, timeout_s: float = 5.0) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.control_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                problems = list(json.loads(raw)["error"]["problems"])
            except (ValueError, KeyError, TypeError):
                problems = [f"HTTP {exc.code}: {raw[:300].decode('utf-8', 'replace')}"]
            raise ChaosError(
                f"chaos proxy {self.control_url}: {'; '.join(problems)}",
                status=exc.code,
                problems=problems,
            ) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ChaosError(
                f"the chaos proxy's control API at {self.control_url} is not reachable: {reason}"
            ) from None
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------ faults

    def load_plan(
        self, faults: Iterable[FaultLike], run_start_epoch: float | None
    ) -> list[dict[str, Any]]:
        """Replace every fault with ``faults`` — a scenario's ``faults`` as they are, or the
        proxy's format — whose ``start_s`` / ``end_s`` count from ``run_start_epoch`` (Unix
        seconds, e.g. ``time.time()`` when the run's clock started; ``None``: the times are
        absolute epochs). All or nothing: a refused plan changes nothing. Returns the
        installed entries (with their ids)."""
        body = {"faults": [_fault_json(f) for f in faults], "run_start_epoch": run_start_epoch}
        result: list[dict[str, Any]] = self._call("POST", "/plan", body)["faults"]
        return result

    def add(self, fault: FaultLike, run_start_epoch: float | None = None) -> str:
        """Add one fault to those installed; returns its id."""
        body = {"faults": [_fault_json(fault)], "run_start_epoch": run_start_epoch}
        entry = self._call("POST", "/faults", body)["faults"][0]
        return str(entry["id"])

    def remove(self, fault_id: str) -> bool:
        """Remove one fault; ``False`` when it was not installed (or had already ended)."""
        try:
            self._call("DELETE", "/faults/" + urllib.parse.quote(fault_id, safe=""))
        except ChaosError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def clear(self) -> int:
        """Remove every fault; returns how many were installed."""
        return int(self._call("DELETE", "/faults")["cleared"])

    def faults(self) -> list[dict[str, Any]]:
        """Every installed fault (pending and active), as control API entries."""
        result: list[dict[str, Any]] = self._call("GET", "/faults")["faults"]
        return result

    def active(self) -> list[dict[str, Any]]:
        """The faults whose window covers now."""
        result: list[dict[str, Any]] = self._call("GET", "/faults/active")["faults"]
        return result

    def counters(self) -> dict[str, Any]:
        """``{"requests": {stage: n}, "injected": {stage: {kind: n}}, "upstream_errors":
        {stage: n}}`` since the proxy started (diff two readings for one run)."""
        result: dict[str, Any] = self._call("GET", "/counters")
        return result

    def listeners(self) -> dict[str, dict[str, str]]:
        """``{stage: {"listen": url, "upstream": url}}``."""
        result: dict[str, dict[str, str]] = self._call("GET", "/listeners")
        return result

    # ------------------------------------------------------------ conveniences

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/healthz")["status"] == "ok")
        except ChaosError:
            return False

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until the control API answers (a proxy that was just started)."""
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if time.monotonic() >= deadline:
                raise ChaosError(
                    f"the chaos proxy's control API at {self.control_url} did not answer "
                    f"within {timeout_s:g} s"
                )
            time.sleep(0.05)

    @contextmanager
    def applied(
        self, faults: Iterable[FaultLike], run_start_epoch: float | None
    ) -> Iterator[list[dict[str, Any]]]:
        """``load_plan`` on entry, ``clear`` on exit — also on Ctrl-C or an error. When the
        block failed and the proxy cannot be reached to clear, the block's own exception is
        the one raised (the faults still end at their end times)."""
        entries = self.load_plan(faults, run_start_epoch)
        try:
            yield entries
        except BaseException:
            with contextlib.suppress(ChaosError):
                self.clear()
            raise
        self.clear()
