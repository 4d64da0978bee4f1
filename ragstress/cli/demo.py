"""``ragstress demo`` (what ``make demo`` runs): the calibrate-predict-measure-validate loop on
the reference stack, end to end (:func:`ragstress.demo.run_demo`), with a line of progress
at every step; or, with ``--model-only``, a simulation of one scenario and its report (no
stack: for a machine that cannot run one).

A validation miss is a finding, printed and written down, and exits 0 unless ``--strict``
(then 1). A step that cannot be done (the stack does not start, a run fails) exits 1 with
its reason; bad flags exit 2. The loop function is a seam: a test passes its own through
click's ``obj`` (``{"run_demo": fn}``) instead of patching.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["demo"]

REFERENCE_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "reference.yaml"


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise click.BadParameter(f"got {value:g} (allowed: a number above 0)")
    return value


@click.command()
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("results/demo"),
    show_default=True,
    help="Where every run, the calibrated profile and the report go.",
)
@click.option(
    "--profile",
    "-p",
    type=click.Path(path_type=Path),
    default=None,
    help="The profile the stack runs and calibration starts from (default: "
    "profiles/reference.yaml; with --model-only: profiles/hosted-api.yaml).",
)
@click.option(
    "--documents",
    type=click.IntRange(10, 100_000),
    default=300,
    show_default=True,
    help="Corpus size of the reference stack (documents; ~3.7 chunks each).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(5, 3600),
    default=40.0,
    show_default=True,
    help="Length of each load level's run (and of the capacity probes).",
)
@click.option(
    "--capacity",
    type=float,
    default=None,
    callback=_positive,
    help="Use this capacity (req/s) for the load levels instead of the model's maximum "
    "sustainable rate.",
)
@click.option("--no-brownout", is_flag=True, help="Skip the 429 brownout scenario.")
@click.option("--no-trace", is_flag=True, help="Skip the Azure trace replay.")
@click.option(
    "--no-capacity-probes",
    is_flag=True,
    help="Do not measure the maximum sustainable rate on the stack.",
)
@click.option(
    "--pin-cpus",
    is_flag=True,
    help="Pin the stack to the last CPU and the load generator to the first.",
)
@click.option("--strict", is_flag=True, help="Exit 1 when a validated figure misses its tolerance.")
@click.option(
    "--model-only",
    is_flag=True,
    help="No stack: simulate --scenario on --profile and write its report.",
)
@click.option(
    "--scenario",
    type=click.Path(path_type=Path),
    default=Path("scenarios/steady.yaml"),
    show_default=True,
    help="With --model-only: the scenario to simulate.",
)
@click.pass_context
def demo(
    ctx: click.Context,
    *,
    out: Path,
    profile: Path | None,
    documents: int,
    seconds: float,
    capacity: float | None,
    no_brownout: bool,
    no_trace: bool,
    no_capacity_probes: bool,
    pin_cpus: bool,
    strict: bool,
    model_only: bool,
    scenario: Path,
) -> None:
    """Start the reference stack, calibrate from low load, predict and measure a sweep to
    its capacity, a 429 brownout and a trace replay, validate, and write one report
    (about 9 minutes on two cores)."""
    from ragstress.cli.main import UserError, _progress, _user_errors, format_summary

    if model_only:
        from ragstress.api import simulate_files
        from ragstress.report import write_report

        with _user_errors(), _progress("simulating", True) as progress:
            run = simulate_files(
                scenario, profile or Path("profiles/hosted-api.yaml"), out, progress=progress
            )
            click.echo(format_summary(run.summary))
            for path in write_report(out):
                click.echo(f"wrote {path}")
        return

    from ragstress.demo import DemoError, run_demo

    loop: Any = (ctx.obj or {}).get("run_demo", run_demo)
    profile_path = profile or REFERENCE_PROFILE
    if not profile_path.is_file():
        raise UserError(f"--profile: no such file: {profile_path}")
    try:
        with _user_errors():
            result = loop(
                out,
                profile_path=profile_path,
                corpus_documents=documents,
                seconds=seconds,
                capacity_rps=capacity,
                measure_capacity=not no_capacity_probes,
                brownout=not no_brownout,
                trace=not no_trace,
                pin_cpus=pin_cpus,
                progress=lambda line: click.echo(line, err=True),
            )
    except DemoError as exc:
        click.echo(f"demo: {exc}", err=True)
        ctx.exit(1)
    click.echo(result.table)
    cap = result.capacity
    if cap.get("measured") is not None:
        rel = cap.get("rel_error")
        click.echo(
            f"maximum sustainable rate: predicted {cap['predicted_rps']:.4g} req/s, "
            + cap["note"]
            + ("" if rel is None else f"; error {rel:+.1%} (tolerance ±{cap['tolerance']:.0%})")
        )
    click.echo(f"report: {result.out / 'validation.html'} (and validation.md, validation.json)")
    click.echo(f"took {result.wall_s / 60:.1f} min")
    if strict and not result.passed:
        ctx.exit(1)
