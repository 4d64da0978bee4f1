"""``ragstress`` commands. Each one parses flags, calls the library, prints; nothing more.

Problems a user can fix (bad config, missing run folder) exit with code 2 and one line per
problem, never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ragstress import __version__
from ragstress.config import ConfigError, Profile, Scenario

__all__ = ["main"]

DEFAULT_SCENARIO = Path("scenarios/steady.yaml")
DEFAULT_PROFILE = Path("profiles/hosted-api.yaml")
PROGRESS_AFTER_S = 2.0  # runs shorter than this show no bar


class UserError(click.ClickException):
    """An error the user can fix: printed as is, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    from ragstress.results.store import ResultsError

    try:
        yield
    except ConfigError as exc:
        raise UserError("\n".join(exc.problems)) from None
    except ResultsError as exc:
        raise UserError(str(exc)) from None


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[float], None] | None]:
    """A progress callback that draws a bar only once the run has taken a couple of seconds."""
    if not enabled:
        yield None
        return
    started = time.monotonic()
    bars: list[Any] = []  # created lazily, once the run has lasted PROGRESS_AFTER_S
    done = [0]

    def update(fraction: float) -> None:
        if not bars:
            if time.monotonic() - started < PROGRESS_AFTER_S:
                return
            bars.append(click.progressbar(length=1000, label=label, file=sys.stderr))
            bars[0].__enter__()
        step = int(fraction * 1000)
        if step > done[0]:
            bars[0].update(step - done[0])
            done[0] = step

    try:
        yield update
    finally:
        for bar in bars:
            bar.__exit__(None, None, None)


# the same flag on every command that takes a deployment
_PROFILE_OPTION = click.option(
    "--profile",
    "-p",
    "profile",
    type=click.Path(path_type=Path),
    required=True,
    help="Deployment profile YAML.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ragstress")
def main() -> None:
    """ragstress: predict and measure how a RAG service behaves under load and faults."""


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@_PROFILE_OPTION
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder to write (manifest.json, requests.csv, summary.json, ...).",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, help="Override the scenario's seed."
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def simulate(scenario: Path, profile: Path, out: Path, seed: int | None, quiet: bool) -> None:
    """Simulate SCENARIO against a profile with the discrete-event model."""
    from ragstress.api import simulate_files

    with _user_errors(), _progress("simulating", not quiet) as progress:
        run = simulate_files(scenario, profile, out, seed=seed, progress=progress)
    if not quiet:
        click.echo(format_summary(run.summary))
        click.echo(f"wrote {out}/ (ragstress report {out} draws the charts)")


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@_PROFILE_OPTION
@click.option(
    "--rates",
    required=True,
    help="Offered rates in req/s: START:STOP:STEP (stop included) or a list, e.g. 10,20,50.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=V1,V2",
    help="Sweep a profile key (stages.<stage>.<field>) or scenario key (scenario.<field>) "
    "over values; repeat for a cartesian product.",
)
@click.option(
    "--replications",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs per point; replication r uses seed + r.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default: every CPU; 1 runs serially).",
)
@click.option(
    "--dask",
    metavar="ADDRESS",
    default=None,
    help="Run on the Dask scheduler at ADDRESS (tcp://host:8786) instead of local processes.",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, help="Base seed (default: the scenario's)."
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to write sweep.csv and sweep.json into.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def sweep(
    *,
    scenario: Path,
    profile: Path,
    rates: str,
    sets: tuple[str, ...],
    replications: int,
    workers: int | None,
    dask: str | None,
    seed: int | None,
    out: Path,
    quiet: bool,
) -> None:
    """Simulate SCENARIO at every offered rate and configuration; write one row per run."""
    from contextlib import nullcontext

    from ragstress.api import load_pair
    from ragstress.capacity import parse_rates, parse_set, plan_points, run_sweep, write_sweep
    from ragstress.capacity.dask_backend import dask_executor

    if dask is not None and workers is not None:
        raise UserError("--dask and --workers: give one or the other (Dask has its own workers)")
    try:
        rate_list = parse_rates(rates)
        overrides = [parse_set(text) for text in sets]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with _user_errors():
        sc, prof = load_pair(scenario, profile)
        points = plan_points(sc, prof, rate_list, overrides, replications=replications, seed=seed)
        cluster = dask_executor(dask) if dask is not None else nullcontext(None)
        with cluster as executor, _progress(f"sweeping {len(points)} runs", not quiet) as progress:
            rows = run_sweep(
                points, sc, prof, workers=workers, executor=executor, progress=progress
            )
        write_sweep(
            out,
            rows,
            scenario=sc,
            profile=prof,
            rates=rate_list,
            overrides=overrides,
            replications=replications,
            seed=seed,
        )
    if not quiet:
        click.echo(f"wrote {out}/sweep.csv ({len(rows)} runs) and {out}/sweep.json")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
def report(folder: Path) -> None:
    """Write charts, report.html and report.md for the run, sweep or plan in FOLDER."""
    from ragstress.report import write_report

    with _user_errors():
        written = write_report(folder)
    for path in written:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("what", type=click.Choice(["all", "profile", "scenario"]), default="all")
def schema(what: str) -> None:
    """Print the JSON Schema of profiles and scenarios (for editor completion).

    With ``profile`` or ``scenario``, print just that one, ready to save as a schema file."""
    schemas = {
        "profile": Profile.model_json_schema(),
        "scenario": Scenario.model_json_schema(),
    }
    click.echo(json.dumps(schemas if what == "all" else schemas[what], indent=2))


@main.command()
@click.option(
    "--scenario", type=click.Path(path_type=Path), default=DEFAULT_SCENARIO, show_default=True
)
@click.option(
    "--profile", "-p", type=click.Path(path_type=Path), default=DEFAULT_PROFILE, show_default=True
)
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), default=Path("results/demo"), show_default=True
)
def demo(scenario: Path, profile: Path, out: Path) -> None:
    """Simulate the default scenario on the default profile and write its report."""
    from ragstress.api import simulate_files
    from ragstress.report import write_report

    with _user_errors(), _progress("simulating", True) as progress:
        run = simulate_files(scenario, profile, out, progress=progress)
        click.echo(format_summary(run.summary))
        for path in write_report(out):
            click.echo(f"wrote {path}")


def _fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}{unit}"
    return f"{value}{unit}"


def format_summary(summary: dict[str, Any]) -> str:
    """A short plain-text table of a run's summary."""
    lat, ttft = summary["latency_s"], summary["ttft_s"]

    def ci(block: dict[str, Any], key: str) -> str:
        lo, hi = block["ci95"][key]
        return f"{_fmt(block[key], ' s')}  [{_fmt(lo)}, {_fmt(hi)}]"

    rows = [
        ("requests", f"{summary['requests']}  ({summary['answered']} answered)"),
        ("offered", _fmt(summary["offered_rps"], " req/s")),
        ("throughput", _fmt(summary["throughput_rps"], " req/s")),
        ("goodput", _fmt(summary["goodput_rps"], " req/s")),
        ("error rate", _fmt(summary["error_rate"])),
        ("latency p50", _fmt(lat["p50"], " s")),
        ("latency p95", ci(lat, "p95")),
        ("latency p99", ci(lat, "p99")),
        ("TTFT p95", ci(ttft, "p95")),
        ("cost / 1k requests", "$" + _fmt(summary["cost_usd_per_1k"], digits=4)),
    ]
    for stage, info in summary["stages"].items():
        rows.append(
            (
                f"stage {stage}",
                f"util {_fmt(info['utilisation'], digits=2)}, "
                f"wait {_fmt(info['wait_s']['mean'], ' s')}, "
                f"service {_fmt(info['service_s']['mean'], ' s')}",
            )
        )
    for row in summary["slo"]:
        verdict = "met" if row["met"] else "MISSED"
        value = f"{_fmt(row['value'])} ≤ {row['target']}  {verdict}"
        rows.append((f"SLO {row['objective']}", value))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
