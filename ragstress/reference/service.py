"""How a reference service runs as its own process: ``python -m ragstress.reference.X
--settings JSON``.

The supervisor passes each service its settings as one JSON argument (validated here, so a
bad value is a one-line error and exit code 2, never a traceback). The service then runs
its aiohttp application until SIGINT or SIGTERM; aiohttp's runner turns either signal into a
graceful shutdown that runs the application's cleanup hooks.

Once a service has started (its resources opened, before it listens) it moves everything
allocated so far out of the garbage collector's reach (``gc.freeze()``), as the chaos proxy
does. The imports alone leave 60,000-80,000 long-lived objects per service, and a full
collection over them took 45-56 ms (gateway 56, embedder 46, LLM 44): a pause that every
request in flight wears. It showed in the demo as a 111 ms embedding and a 142 ms first
token for the same two trace requests in every run (allocation is deterministic, so the
collection fell at the same request).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

__all__ = ["freeze_heap", "parse_settings", "run_service"]

_S = TypeVar("_S", bound=BaseModel)


def parse_settings(argv: Sequence[str] | None, settings_type: type[_S], prog: str) -> _S:
    """The ``--settings`` JSON of ``argv`` as ``settings_type``; exits 2 with one line on error."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--settings", required=True, help="the service's settings as JSON")
    args = parser.parse_args(argv)
    try:
        return settings_type.model_validate(json.loads(args.settings))
    except json.JSONDecodeError as exc:
        sys.stderr.write(f"{prog}: --settings: not JSON: {exc}\n")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        sys.stderr.write(f"{prog}: --settings: {problems}\n")
    raise SystemExit(2)


async def freeze_heap(_app: web.Application) -> None:
    """An ``on_startup`` hook: collect once, then freeze what survives, so later full
    collections walk only what the service allocates while it serves."""
    gc.collect()
    gc.freeze()


def run_service(
    argv: Sequence[str] | None,
    settings_type: type[_S],
    build_app: Callable[[_S], web.Application],
    prog: str,
    host_port: Callable[[_S], tuple[str, int]],
) -> None:
    """Parse the settings, build the application and serve it until a signal stops it."""
    settings = parse_settings(argv, settings_type, prog)
    host, port = host_port(settings)
    app = build_app(settings)
    # appended last, so it runs after the app's own start-up (cleanup_ctx comes first)
    app.on_startup.append(freeze_heap)
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=None,  # a log line per request would cost more than some stages
        handle_signals=True,
        shutdown_timeout=5.0,
    )
