"""``ragstress chaos``: run the fault-injecting proxy, or talk to a running one.

Three modes:

- ``ragstress chaos --route embed=http://127.0.0.1:8001 --route generate=http://…
  [--listen embed=9001 …] [--control-port 8474] [--scenario S --start-now]``: run the proxy
  in the foreground until Ctrl-C (which removes every fault); prints where it listens. With
  ``--scenario … --start-now`` the scenario's faults are loaded with the run's clock starting
  now (otherwise ``ragstress run`` loads them when its run starts).
- ``ragstress chaos --clear [--control URL]``: remove every fault of a running proxy.
- ``ragstress chaos --status [--control URL]``: its active faults and counters.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["chaos"]

# ragstress.chaos.settings.DEFAULT_CONTROL_PORT, not imported here: the proxy's modules pull
# in aiohttp and prometheus, and every `ragstress` command would pay for them at start
DEFAULT_CONTROL_PORT = 8474
DEFAULT_CONTROL_URL = f"http://127.0.0.1:{DEFAULT_CONTROL_PORT}"


def _pairs(values: tuple[str, ...], option: str, what: str) -> dict[str, str]:
    from ragstress.cli.main import UserError

    out: dict[str, str] = {}
    for value in values:
        stage, sep, rest = value.partition("=")
        if not sep or not stage or not rest:
            raise UserError(f"{option} {value}: write STAGE={what}")
        if stage in out:
            raise UserError(f"{option}: stage {stage!r} is given twice")
        out[stage] = rest
    return out


def _numbers(
    values: tuple[str, ...], option: str, stages: dict[str, str], *, whole: bool = False
) -> dict[str, float]:
    from ragstress.cli.main import UserError

    out: dict[str, float] = {}
    for stage, text in _pairs(values, option, "NUMBER").items():
        if stage not in stages:
            raise UserError(
                f"{option} {stage}={text}: no --route for {stage!r} "
                f"(routes: {', '.join(stages) or 'none'})"
            )
        try:
            out[stage] = int(text) if whole else float(text)
        except ValueError:
            kind = "a whole number" if whole else "a number"
            raise UserError(f"{option} {stage}={text}: not {kind}") from None
    return out


def _settings(
    *,
    routes: tuple[str, ...],
    listens: tuple[str, ...],
    rpm: tuple[str, ...],
    tpm: tuple[str, ...],
    units: tuple[str, ...],
    host: str,
    control_port: int,
    seed: int,
) -> Any:
    from pydantic import ValidationError

    from ragstress.chaos.control import format_validation_error
    from ragstress.chaos.settings import ChaosSettings
    from ragstress.cli.main import UserError

    upstreams = _pairs(routes, "--route", "URL")
    ports = _numbers(listens, "--listen", upstreams, whole=True)
    rpms = _numbers(rpm, "--rpm", upstreams)
    tpms = _numbers(tpm, "--tpm", upstreams)
    unit_counts = _numbers(units, "--units", upstreams, whole=True)
    listeners: dict[str, dict[str, Any]] = {}
    for stage, url in upstreams.items():
        listener: dict[str, Any] = {"upstream": url, "host": host}
        if stage in ports:
            listener["port"] = ports[stage]
        if stage in rpms or stage in tpms:
            listener["rate_limit"] = {
                k: v for k, v in (("rpm", rpms.get(stage)), ("tpm", tpms.get(stage))) if v
            }
        if stage in unit_counts:
            listener["units"] = unit_counts[stage]
        listeners[stage] = listener
    try:
        return ChaosSettings.model_validate(
            {
                "listeners": listeners,
                "control_host": host,
                "control_port": control_port,
                "seed": seed,
            }
        )
    except ValidationError as exc:
        raise UserError("\n".join(format_validation_error(exc))) from None


def _scenario_faults(path: Path) -> list[Any]:
    from pydantic import TypeAdapter

    from ragstress.chaos.faults import ProxyFault
    from ragstress.cli.main import UserError
    from ragstress.config import ConfigError
    from ragstress.config.loader import load_scenario

    try:
        scenario = load_scenario(path)
    except ConfigError as exc:
        raise UserError("\n".join(exc.problems)) from None
    adapter: TypeAdapter[ProxyFault] = TypeAdapter(ProxyFault)
    return [adapter.validate_python(f.model_dump()) for f in scenario.faults]


async def _serve(settings: Any, faults: list[Any] | None, source: str) -> None:
    from ragstress.chaos.server import RunningProxy, run_until_stopped
    from ragstress.chaos.table import PlanError
    from ragstress.cli.main import UserError

    def ready(proxy: RunningProxy) -> None:
        width = max(len(s) for s in [*proxy.listen_urls, "control"])
        click.echo("chaos proxy ready (Ctrl-C stops it and removes every fault)")
        for stage, url in proxy.listen_urls.items():
            upstream = settings.listeners[stage].upstream
            click.echo(f"  {stage:<{width}}  {url}  →  {upstream}")
        click.echo(f"  {'control':<{width}}  {proxy.control_url}")
        if faults is not None:
            start = time.time()
            try:
                proxy.table.load(faults, start)
            except PlanError as exc:
                raise UserError(f"{source}: " + f"\n{source}: ".join(exc.problems)) from None
            click.echo(f"loaded {len(faults)} faults from {source}, run start {start:.3f}")

    await run_until_stopped(settings, ready)


def _status(control: str) -> None:
    from ragstress.chaos.client import ChaosClient

    client = ChaosClient(control)
    active = client.active()
    counters = client.counters()
    now = time.time()
    click.echo(f"chaos proxy {control}: {len(active)} active faults")
    for entry in active:
        left = entry["end_epoch"] - now
        click.echo(
            f"  {entry['id']:<12} {entry['stage']:<12} {entry['kind']:<18} "
            f"{left:8.1f} s left  hits {entry['hits']}"
        )
    for stage, n in counters["requests"].items():
        injected = counters["injected"].get(stage, {})
        faults = ", ".join(f"{kind} {count}" for kind, count in injected.items()) or "no faults"
        click.echo(f"  {stage}: {n} calls; {faults}")


@click.command()
@click.option("--route", "routes", multiple=True, metavar="STAGE=URL", help="An upstream to front.")
@click.option(
    "--listen", "listens", multiple=True, metavar="STAGE=PORT", help="Port (default: any free)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--control-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_CONTROL_PORT,
    show_default=True,
    help="The control API's port.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--rpm", multiple=True, metavar="STAGE=N", help="Requests/minute bucket on a stage.")
@click.option("--tpm", multiple=True, metavar="STAGE=N", help="Tokens/minute bucket on a stage.")
@click.option(
    "--units",
    multiple=True,
    metavar="STAGE=N",
    help="The stage's servers, so capacity_loss can be played as a concurrency limit.",
)
@click.option(
    "--scenario",
    type=click.Path(path_type=Path),
    default=None,
    help="Load this scenario's faults (needs --start-now).",
)
@click.option("--start-now", is_flag=True, help="The scenario's clock starts when the proxy does.")
@click.option("--clear", is_flag=True, help="Remove every fault of a running proxy.")
@click.option("--status", is_flag=True, help="Show a running proxy's active faults and counters.")
@click.option(
    "--control",
    default=DEFAULT_CONTROL_URL,
    show_default=True,
    metavar="URL",
    help="The control API of the running proxy (--clear, --status).",
)
def chaos(
    *,
    routes: tuple[str, ...],
    listens: tuple[str, ...],
    host: str,
    control_port: int,
    seed: int,
    rpm: tuple[str, ...],
    tpm: tuple[str, ...],
    units: tuple[str, ...],
    scenario: Path | None,
    start_now: bool,
    clear: bool,
    status: bool,
    control: str,
) -> None:
    """Run the fault-injecting proxy in front of a service's upstreams, or --clear / --status
    a running one."""
    from ragstress.chaos.client import ChaosClient, ChaosError
    from ragstress.cli.main import UserError

    if clear or status:
        if routes or scenario is not None:
            raise UserError("--clear and --status talk to a running proxy: give no --route")
        try:
            if clear:
                n = ChaosClient(control).clear()
                click.echo(f"cleared {n} faults at {control}")
            if status:
                _status(control)
        except ChaosError as exc:
            raise UserError(str(exc)) from None
        return
    if not routes:
        raise UserError("give at least one --route STAGE=URL (or --clear / --status)")
    if scenario is not None and not start_now:
        raise UserError(
            "--scenario needs --start-now (without it, `ragstress run` loads the plan when its "
            "run starts)"
        )
    if start_now and scenario is None:
        raise UserError("--start-now needs --scenario")
    settings = _settings(
        routes=routes,
        listens=listens,
        rpm=rpm,
        tpm=tpm,
        units=units,
        host=host,
        control_port=control_port,
        seed=seed,
    )
    faults = None if scenario is None else _scenario_faults(scenario)
    try:
        asyncio.run(_serve(settings, faults, str(scenario)))
    except OSError as exc:
        raise UserError(f"ragstress chaos: {exc}") from None
