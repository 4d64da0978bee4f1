"""``ragstress validate``: does the model predict what the service did?

``ragstress validate --predicted SIM_RUN_OR_SET --measured RUN_OR_SET [--tolerance p95=5%,…]
[--out DIR]`` compares a simulated run (or a folder of them, one per load level) with the
measured run(s) of the same workload (:mod:`ragstress.analysis.validation` says how), prints a
table per load level, and writes ``validation.json``, the charts and ``validation.html`` /
``validation.md`` into ``--out``.

Exit codes, for CI pipelines: 0 when every judged figure is within its tolerance, 1 when any
is not, 2 for input that cannot be validated (a missing folder, a bad flag, an ambiguous
pairing), with one line saying why.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ragstress.analysis.validation import PairValidation, Validation

__all__ = ["validate"]

DEFAULT_OUT = Path("validation")
TABLE_HEADERS = ("metric", "predicted", "measured", "error", "tolerance", "ok")


def _table(pair: PairValidation) -> str:
    from ragstress.analysis.validation import (
        format_error,
        format_tolerance,
        format_value,
    )

    rows = [TABLE_HEADERS]
    for m in pair.metrics.values():
        ok = "—" if m.within is None else ("ok" if m.within else "MISS")
        rows.append(
            (
                m.label,
                format_value(m.predicted, m.unit),
                format_value(m.measured, m.unit),
                format_error(m),
                format_tolerance(m.tolerance),
                ok,
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(TABLE_HEADERS))]
    lines = []
    for row in rows:
        first = row[0].ljust(widths[0])
        rest = "  ".join(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        lines.append(f"  {first}  {rest}")
    return "\n".join(lines)


def format_validation(validation: Validation) -> str:
    """The console report: per load level its verdict, warnings and table; then the total."""
    out: list[str] = [f"warning: {w}" for w in validation.warnings]
    for pair in validation.pairs:
        rate = "" if pair.offered_rps is None else f" ({pair.offered_rps:g} req/s)"
        verdict = "pass" if pair.passed else f"FAIL ({len(pair.misses)} outside tolerance)"
        out.append(f"{pair.level}{rate}: {verdict}")
        out += [f"  warning: {w}" for w in pair.warnings]
        out.append(_table(pair))
    misses = len(validation.misses)
    out.append(
        "validation passed: every judged figure is within tolerance"
        if validation.passed
        else f"validation FAILED: {misses} figure(s) outside tolerance"
    )
    return "\n".join(out)


@click.command()
@click.option(
    "--predicted",
    type=click.Path(path_type=Path),
    required=True,
    help="Simulated run folder, or a folder of them (one per load level).",
)
@click.option(
    "--measured",
    type=click.Path(path_type=Path),
    required=True,
    help="Measured run folder, or a folder of them; paired by folder name, else by rate.",
)
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    metavar="KEY=VALUE[,...]",
    help="Override tolerances, e.g. p95=5%,p99=10%,error_rate=0.5pp,stage=20%,recovery=off. "
    "Keys: p50 p95 p99 ttft_p50 ttft_p95 ttft_p99 throughput error_rate error_kind stage "
    "recovery.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Folder to write validation.json, the charts and validation.html/.md into.",
)
@click.option(
    "--replicates",
    type=click.IntRange(min=0),
    default=None,
    help="Bootstrap replicates per load level for the intervals (0: none) [default: 400].",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the bootstrap.",
)
@click.option("--no-report", is_flag=True, help="Write validation.json only (no charts, HTML).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors and the verdict.")
def validate(
    *,
    predicted: Path,
    measured: Path,
    tolerances: tuple[str, ...],
    out: Path,
    replicates: int | None,
    seed: int,
    no_report: bool,
    quiet: bool,
) -> None:
    """Compare predicted (simulated) runs with measured runs of the same workload: latency
    and TTFT quantiles, throughput, error rates, stage times and recovery, each as a signed
    relative error (predicted − measured) / measured with a 95% interval. Exit code 1 when a
    figure misses its tolerance."""
    from ragstress.analysis.validation import (
        DEFAULT_REPLICATES,
        ValidationInputError,
        load_runs,
        pair_runs,
        parse_tolerances,
    )
    from ragstress.analysis.validation import validate as run_validation
    from ragstress.cli.main import UserError, _user_errors

    with _user_errors():
        try:
            tol = parse_tolerances(tolerances)
            pairs, warnings = pair_runs(load_runs(predicted), load_runs(measured))
            result = run_validation(
                pairs,
                tol,
                replicates=DEFAULT_REPLICATES if replicates is None else replicates,
                seed=seed,
                warnings=warnings,
                predicted=str(predicted),
                measured=str(measured),
            )
        except ValidationInputError as exc:
            raise UserError(str(exc)) from None
        written = _write(result, out, report=not no_report)
    if quiet:
        click.echo("validation passed" if result.passed else "validation FAILED")
    else:
        click.echo(format_validation(result))
        click.echo(f"wrote {written[0]}" + ("" if no_report else f" and the report in {out}/"))
    if not result.passed:
        click.get_current_context().exit(1)


def _write(result: Validation, out: Path, *, report: bool) -> list[Path]:
    from ragstress.report.validation_report import (
        write_validation_json,
        write_validation_report,
    )

    written = [write_validation_json(result, out)]
    if report:
        written += write_validation_report(result, out)
    return written
