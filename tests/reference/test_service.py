"""How a reference service runs as a process: settings errors, and the heap frozen once it
has started (a full garbage collection over the imports' objects is a 45-56 ms pause)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

from ragstress.reference.processes import free_port

# A service of the same shape as the reference ones, reporting what the collector sees.
_SERVICE = """
import gc, sys
from aiohttp import web
from pydantic import BaseModel, ConfigDict
from ragstress.reference.service import run_service

class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    port: int

def build_app(settings):
    app = web.Application()
    started = {}

    async def resources(app):
        started["objects_when_opened"] = len(gc.get_objects())
        yield

    async def state(request):
        return web.json_response(
            {"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects()), **started}
        )

    app.cleanup_ctx.append(resources)
    app.router.add_get("/gc", state)
    return app

run_service(sys.argv[1:], Settings, build_app, "probe", lambda s: ("127.0.0.1", s.port))
"""


def _get_json(url: str, deadline_s: float) -> dict[str, int]:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                result: dict[str, int] = json.load(resp)
                return result
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_started_service_has_frozen_its_heap() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVICE, "--settings", json.dumps({"port": port})],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        state = _get_json(f"http://127.0.0.1:{port}/gc", deadline_s=30.0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    # what was alive once the app's own start-up ran is frozen (less the garbage the last
    # collection freed): the imports and what the resources opened; a collection now only
    # walks what serving allocated since
    assert state["frozen"] > 0.9 * state["objects_when_opened"] > 9_000
    assert state["tracked"] < state["frozen"] // 10
    assert proc.returncode == 0, err.decode()


def test_bad_settings_are_one_line_and_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SERVICE, "--settings", json.dumps({"port": "x", "colour": 1})],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("probe: --settings: port:")
    assert "colour" in lines[0]
