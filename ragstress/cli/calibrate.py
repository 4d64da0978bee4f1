"""``ragstress calibrate``: fit a profile's parameters from runs measured at low load.

A thin layer over :func:`ragstress.calibration.calibrate_files`: it prints one line per stage
(what was fitted, or why not), the warnings on stderr, and writes the calibrated profile.
Problems the user can fix (a folder that is not a run, a bad profile, a stage without data,
nothing to fit) exit 2 with one line each.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

__all__ = ["calibrate"]


def _command_line(
    *,
    runs: tuple[Path, ...],
    profile: Path,
    out: Path,
    empirical: bool,
    stages: tuple[str, ...],
    alpha: float,
) -> str:
    """The command as it could be typed again, for the written profile's header."""
    args = ["ragstress", "calibrate", *map(str, runs), "--profile", str(profile)]
    args += ["--out", str(out)]
    if empirical:
        args.append("--empirical")
    for stage in stages:
        args += ["--stage", stage]
    if alpha != 0.01:
        args += ["--alpha", f"{alpha:g}"]
    return shlex.join(args)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--profile",
    "-p",
    type=click.Path(path_type=Path),
    required=True,
    help="The profile to calibrate: its stages say what to fit; every other key is kept.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the calibrated profile (YAML with a comment on every fit).",
)
@click.option(
    "--empirical",
    is_flag=True,
    help="Write service times as empirical distributions (measured quantiles) whatever "
    "family fits.",
)
@click.option(
    "--stage",
    "stages",
    multiple=True,
    metavar="NAME",
    help="Fit only this stage (repeat for several) [default: every stage the runs time].",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=0.01,
    show_default=True,
    help="KS test level: a best-fitting family rejected at this level gives way to an "
    "empirical distribution.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but warnings and errors.")
def calibrate(
    *,
    runs: tuple[Path, ...],
    profile: Path,
    out: Path,
    empirical: bool,
    stages: tuple[str, ...],
    alpha: float,
    quiet: bool,
) -> None:
    """Fit the profile's service times, batching and LLM step model from RUNS measured at
    low load (ragstress run folders), and write the calibrated profile to --out.

    Each stage kind is fitted from the stage times of the requests answered in the runs'
    measurement windows: pool and cache service times as a distribution (lognormal, gamma,
    exponential or deterministic by AIC, empirical when none passes a KS test), a batcher's
    base and per-token time by least squares, an LLM engine's step time from answers at a
    few concurrencies, a hosted LLM's time to first token and per output token.
    """
    from ragstress.calibration import Options, calibrate_files
    from ragstress.cli.main import _user_errors

    options = Options(force_empirical=empirical, alpha=alpha, stages=stages or None)
    command = _command_line(
        runs=runs, profile=profile, out=out, empirical=empirical, stages=stages, alpha=alpha
    )
    with _user_errors():
        result = calibrate_files(runs, profile, out, options=options, command=command)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if quiet:
        return
    width = max(len(fit.stage) for fit in result.stages)
    for fit in result.stages:
        n = f"n={fit.n}" if fit.fitted else ""
        click.echo(f"{fit.stage:<{width}}  {fit.kind:<10} {n:<8} {fit.summary}")
    click.echo(f"wrote {out} (every fitted key has a comment with its data and quality)")
