"""``python -m ragstress.chaos.proxy --settings JSON``: the chaos proxy as its own process.

The settings are :class:`ragstress.chaos.settings.ChaosSettings` as JSON (a bad value is one
line on stderr and exit code 2, as for the reference services). When every port is bound the
process prints one JSON line to stdout, ``{"control": url, "listeners": {stage: url}}``, so a
supervisor that asked for port 0 learns the ports; ``GET {control}/healthz`` answers 200 from
then on. SIGINT or SIGTERM stops it after removing every fault.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence

from ragstress.chaos.server import RunningProxy, run_until_stopped
from ragstress.chaos.settings import ChaosSettings
from ragstress.reference.service import parse_settings

__all__ = ["main", "ready_line"]


def ready_line(proxy: RunningProxy) -> str:
    """The JSON line printed when the proxy is ready."""
    return json.dumps({"control": proxy.control_url, "listeners": proxy.listen_urls})


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv, ChaosSettings, "ragstress-chaos")

    def ready(proxy: RunningProxy) -> None:
        sys.stdout.write(ready_line(proxy) + "\n")
        sys.stdout.flush()

    try:
        asyncio.run(run_until_stopped(settings, ready))
    except OSError as exc:  # a port in use, an address not on this host
        sys.stderr.write(f"ragstress-chaos: {exc}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
