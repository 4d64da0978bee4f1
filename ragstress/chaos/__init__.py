"""The chaos proxy: an HTTP reverse proxy that plays a scenario's fault plan on real traffic.

One listener per upstream stage (``embed → http://…``, ``generate → http://…``) passes calls
and streamed answers through unbuffered, and applies the faults of its stage with the same
semantics as the model (:mod:`ragstress.faults.plan`), decided per call when it arrives. A
control API on its own port loads plans, adds and removes faults, lists them, and counts what
was injected; every fault carries its absolute end time, so faults expire even if whoever
loaded them dies.

The library API, all that other parts need:

- :class:`ChaosSettings` / :class:`ListenerSettings`: stage → (port, upstream URL, optional
  rate limits and units), control port, seed;
- :func:`build_proxy_apps`: the aiohttp applications (to mount yourself);
  :func:`serve_proxy`: ``async with`` a started proxy; ``python -m ragstress.chaos.proxy
  --settings JSON``: a proxy process;
- :class:`ChaosClient`: the synchronous control client (``load_plan``, ``clear``, ``active``,
  ``counters``, ``applied``) for the driver and the CLI.
"""

from ragstress.chaos.client import ChaosClient, ChaosError
from ragstress.chaos.faults import ProxyFault
from ragstress.chaos.server import ProxyApps, RunningProxy, build_proxy_apps, serve_proxy
from ragstress.chaos.settings import DEFAULT_CONTROL_PORT, ChaosSettings, ListenerSettings
from ragstress.chaos.table import FaultTable, PlanError

__all__ = [
    "DEFAULT_CONTROL_PORT",
    "ChaosClient",
    "ChaosError",
    "ChaosSettings",
    "FaultTable",
    "ListenerSettings",
    "PlanError",
    "ProxyApps",
    "ProxyFault",
    "RunningProxy",
    "build_proxy_apps",
    "serve_proxy",
]
