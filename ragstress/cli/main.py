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
from typing import TYPE_CHECKING, Any

import click

from ragstress import __version__
from ragstress.config import ConfigError, Profile, Scenario

if TYPE_CHECKING:
    from ragstress.capacity.planner import Plan

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


def _compose(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(fn: Any) -> Any:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


_QUIET_OPTION = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")


def _out_option(help_text: str) -> Callable[[Any], Any]:
    return click.option(
        "--out", "-o", type=click.Path(path_type=Path), required=True, help=help_text
    )


_SEARCH_OPTIONS = _compose(
    click.option(
        "--tolerance",
        type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
        default=0.02,
        show_default=True,
        help="Stop the rate search when its bracket is this narrow (relative).",
    ),
    click.option(
        "--probe-replications",
        type=click.IntRange(min=1),
        default=3,
        show_default=True,
        help="Seeds per search probe to start with.",
    ),
    click.option(
        "--max-probe-replications",
        type=click.IntRange(min=1),
        default=12,
        show_default=True,
        help="Seeds per probe at most, while its verdict is within noise of the SLO.",
    ),
)
_RUNNER_OPTIONS = _compose(
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Worker processes (default: every CPU; 1 runs serially).",
    ),
    click.option(
        "--dask",
        metavar="ADDRESS",
        default=None,
        help="Run on the Dask scheduler at ADDRESS (tcp://host:8786) instead of local processes.",
    ),
    click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=None,
        help="Base seed (default: the scenario's).",
    ),
)


def _one_runner(dask: str | None, workers: int | None) -> None:
    if dask is not None and workers is not None:
        raise UserError("--dask and --workers: give one or the other (Dask has its own workers)")


@contextmanager
def _executor(dask: str | None) -> Iterator[Any]:
    """A Dask cluster's executor for ``--dask``, else None (the local pool)."""
    if dask is None:
        yield None
        return
    from ragstress.capacity.dask_backend import dask_executor

    with dask_executor(dask) as executor:
        yield executor


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ragstress")
def main() -> None:
    """ragstress: predict and measure how a RAG service behaves under load and faults."""


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@_PROFILE_OPTION
@_out_option("Run folder to write (manifest.json, requests.csv, summary.json, ...).")
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, help="Override the scenario's seed."
)
@_QUIET_OPTION
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
    help="Runs per grid point; replication r uses seed + r.",
)
@_SEARCH_OPTIONS
@click.option(
    "--no-search",
    is_flag=True,
    help="Skip the maximum-sustainable-rate search (the knee still comes from the grid).",
)
@_RUNNER_OPTIONS
@_out_option("Folder to write sweep.csv, capacity.csv and their JSON into.")
@_QUIET_OPTION
def sweep(
    *,
    scenario: Path,
    profile: Path,
    rates: str,
    sets: tuple[str, ...],
    replications: int,
    tolerance: float,
    probe_replications: int,
    max_probe_replications: int,
    no_search: bool,
    workers: int | None,
    dask: str | None,
    seed: int | None,
    out: Path,
    quiet: bool,
) -> None:
    """Simulate SCENARIO at every offered rate and configuration (sweep.csv), then find each
    configuration's knee and maximum sustainable rate under the scenario's SLO (capacity.csv)."""
    from ragstress.api import load_pair
    from ragstress.capacity import SearchSettings, parse_rates, parse_set
    from ragstress.capacity.jobs import run_sweep_job

    _one_runner(dask, workers)
    try:
        rate_list = parse_rates(rates)
        overrides = [parse_set(text) for text in sets]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with _user_errors():
        sc, prof = load_pair(scenario, profile)
        search = None
        if not no_search:
            search = SearchSettings(tolerance, probe_replications, max_probe_replications)
        points = len(rate_list) * replications * math.prod(len(o.values) for o in overrides)
        with (
            _executor(dask) as executor,
            _progress(f"sweeping {points} runs", not quiet) as progress,
        ):
            job = run_sweep_job(
                sc,
                prof,
                rate_list,
                overrides,
                out,
                replications=replications,
                seed=seed,
                search=search,
                workers=workers,
                executor=executor,
                progress=progress,
            )
    if not quiet:
        click.echo(_capacity_table(job.capacity))
        click.echo(
            f"wrote {out}/sweep.csv ({len(job.rows)} runs), {out}/capacity.csv and their JSON "
            f"(ragstress report {out} draws the charts)"
        )


def _capacity_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'configuration':<36} {'knee':>12} {'max sustainable rate':>30}"]
    for row in rows:
        knee = row["knee_rps"]
        rate = row["max_rate_rps"]
        knee_text = "none" if math.isnan(knee) else f"{knee:.4g} req/s"
        if math.isnan(rate):
            rate_text = "not searched"
        else:
            high = row["bracket_high_rps"]
            upper = "" if math.isnan(high) else f" (< {high:.4g})"
            unsure = "" if row["confident"] else " ~noise"
            rate_text = f"{rate:.4g} req/s{upper}{unsure}"
        lines.append(f"{row['config']:<36} {knee_text:>12} {rate_text:>30}")
    return "\n".join(lines)


def _headroom(text: str) -> float:
    raw = text.strip()
    try:
        value = float(raw.removesuffix("%"))
    except ValueError:
        value = math.nan
    if raw.endswith("%"):
        value /= 100
    elif math.isfinite(value) and value >= 1:
        value = math.nan  # "20" is ambiguous: 20 % or 2,000 %?
    if not (math.isfinite(value) and 0 <= value <= 10):
        raise UserError(f"--headroom {text}: allowed: a percentage like 20% (or a fraction, 0.2)")
    return value


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@_PROFILE_OPTION
@click.option(
    "--peak",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    help="The peak load to plan for, in req/s.",
)
@click.option(
    "--headroom",
    default="20%",
    show_default=True,
    help="Extra load the chosen configuration must hold: the SLO is checked at "
    "peak x (1 + headroom).",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Feasible configurations to rank (each gets its maximum sustainable rate searched).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Configurations probed side by side: more keeps a big cluster busy but may run "
    "configurations a smaller batch would skip; it never changes the choice.",
)
@_SEARCH_OPTIONS
@_RUNNER_OPTIONS
@_out_option("Folder to write plan.json and plan.csv into.")
@_QUIET_OPTION
def plan(
    *,
    scenario: Path,
    profile: Path,
    peak: float,
    headroom: str,
    top: int,
    batch: int,
    tolerance: float,
    probe_replications: int,
    max_probe_replications: int,
    workers: int | None,
    dask: str | None,
    seed: int | None,
    out: Path,
    quiet: bool,
) -> None:
    """Find the cheapest configuration of the profile's knobs whose SLO holds at the peak plus
    headroom; print the ranked configurations and write plan.json and plan.csv."""
    from ragstress.api import load_pair
    from ragstress.capacity import SearchSettings
    from ragstress.capacity.jobs import run_plan_job
    from ragstress.capacity.planner import PlanSettings

    _one_runner(dask, workers)
    fraction = _headroom(headroom)
    with _user_errors():
        sc, prof = load_pair(scenario, profile)
        search = SearchSettings(
            tolerance, probe_replications, max_probe_replications, sc.seed if seed is None else seed
        )
        settings = PlanSettings(
            peak_rps=peak, headroom=fraction, top=top, search=search, batch=batch
        )
        if not quiet:
            click.echo(
                f"planning for {settings.target_rps:.4g} req/s ({peak:g} peak + {fraction:.0%})",
                err=True,
            )
        with _executor(dask) as executor:
            result = run_plan_job(sc, prof, settings, out, workers=workers, executor=executor)
    if not quiet:
        click.echo(_plan_table(result))
        click.echo(
            f"wrote {out}/plan.json and {out}/plan.csv (ragstress report {out} draws the frontier)"
        )


def _plan_table(result: Plan) -> str:
    width = max([len("configuration"), *(len(c.config) for c in result.ranked)])
    lines = [
        f"{'#':>2} {'configuration':<{width}} {'$/hour':>9} {'$/1k answers':>13} {'p95':>8} "
        f"{'max rate':>12}"
    ]
    lines.extend(
        f"{cand.rank:>2} {cand.config:<{width}} {cand.usd_per_hour:>9.2f} "
        f"{cand.usd_per_1k_answers:>13.3f} {cand.latency_p95_s:>7.2f}s "
        f"{cand.max_rate_rps:>8.4g} r/s"
        for cand in result.ranked
    )
    if not result.ranked:
        lines.append("   no configuration of the knobs holds the SLO at this load")
    grid = len(result.candidates)
    lines.append(
        f"evaluated {result.evaluated} of {grid} configurations in {result.runs} runs "
        f"(pruned: {result.count('pruned-monotone')} below a failure, "
        f"{result.count('pruned-dominated')} above a success, "
        f"{result.count('pruned-cost')} by the cost bound)"
    )
    return "\n".join(lines)


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


def _register_commands() -> None:
    # Commands that live in their own modules (they import main's helpers lazily).
    from ragstress.cli.calibrate import calibrate
    from ragstress.cli.chaos import chaos
    from ragstress.cli.demo import demo
    from ragstress.cli.run import run
    from ragstress.cli.serve import serve
    from ragstress.cli.validate import validate

    for command in (demo, serve, run, chaos, validate, calibrate):
        main.add_command(command)


_register_commands()
