"""How a reference service runs as its own process: ``python -m ragstress.reference.X
--settings JSON``.

The supervisor passes each service its settings as one JSON argument (validated here, so a
bad value is a one-line error and exit code 2, never a traceback). The service then runs
its aiohttp application until SIGINT or SIGTERM; aiohttp's runner turns either signal into a
graceful shutdown that runs the application's cleanup hooks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

__all__ = ["parse_settings", "run_service"]

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
    web.run_app(
        build_app(settings),
        host=host,
        port=port,
        print=None,
        access_log=None,  # a log line per request would cost more than some stages
        handle_signals=True,
        shutdown_timeout=5.0,
    )
