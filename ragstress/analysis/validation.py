"""Predicted against measured: does the model say what the service did?

``ragstress validate`` lines up a simulated run (the prediction) and a measured run of the same
workload, per load level, and reports for each figure the **signed relative error**

    rel_error = (predicted − measured) / measured

so **positive means the model predicts more** than was measured (slower, more errors, more
throughput) and negative means it predicts less. It is 0 when the two are equal (also when both
are 0) and undefined (NaN, null in JSON) when only the measured figure is 0.

Everything here is pure (RunResults in, figures out) except :func:`load_runs`, which reads
run folders.

Inputs and pairing
==================

Each side is a run folder, or a folder of run folders, one per load level. Two single runs
are compared with each other whatever their names. Sets are paired by **folder name** when
the names of one side are all found on the other, else by the scenario's **offered rate**
(a constant rate's ``rps``; the time average of any other rate shape). A run without an
offered rate (a replayed trace) or two runs of one side with the same rate make rate pairing
ambiguous: an error, not a guess. Runs left without a partner are named in the warnings.

A pair must describe the same workload: scenario name, seed, request count, measurement
window, stages and fault plan are checked, and every difference becomes a warning (in the
report and ``validation.json``). Requests are matched **by id**: where the ids differ (a
measured run that was interrupted lacks the requests it never finished) only the common
requests are compared, and a warning says how many were left out.

What is compared
================

Both runs are compared on the **same requests** over the same **measurement window**: the
common requests that *arrived* in the predicted run's ``[warmup_s, duration_s)``
(``analysis.summary.window_mask``, applied by id so the two sides see the same requests).

- ``latency_p50/p95/p99`` and ``ttft_p50/p95/p99``: quantiles over the window's *answered*
  requests (``ok``, ``ok_degraded``), each side its own answered set.
- ``throughput``: as ``summary.json`` defines it, answers that *finished* in the window per
  second of window (so for whole runs it equals the summaries' ``throughput_rps``).
- ``degraded_rate``: the share answered by a fallback (``ok_degraded``): where a fallback
  hides a brownout from the error rate, this is what the brownout did;
- ``error_rate``: the share of the window's requests not answered, and ``error_rate.<kind>``
  per failure outcome seen on either side. Besides the relative error (undefined where the
  measured rate is 0) each carries the absolute difference in percentage points.
- ``stage.<name>``: mean time a request spent at the stage, ``<stage>_wait_s +
  <stage>_service_s`` over the window's requests that reached it. A measured run only sees a
  stage from the gateway (its service column holds the whole stage time, the wait column is
  empty), so a missing (NaN) part counts as 0 on both sides and the **totals** are compared.
- With faults (either scenario has a fault plan): ``recovery.<k>``, the recovery time after
  the k-th fault window (``analysis.recovery``, both judged against the predicted scenario's
  SLO), and the error rate per 1 s window over time (by arrival time) for the timeline chart.

Confidence intervals
====================

The interval beside each relative error is a **seeded moving-block bootstrap over requests**:
the common requests, in arrival order, are resampled as contiguous blocks of ``n / 20``
requests (with replacement), the *same* resampled requests on both sides (paired: the two
runs share the workload, and pairing cancels the part of the noise that comes from which
requests were sent), every figure is recomputed on each side, and the 2.5 and 97.5
percentiles of the replicates' relative errors make the 95 % interval. Blocks rather than
single requests because queue latencies are autocorrelated (see ``analysis.stats``: the same
20 batches the batch-means intervals use); resampling single requests would give intervals far
too narrow. The random numbers come from an explicit ``numpy`` Generator seeded by the caller:
the same inputs and seed give the same intervals. An interval is left out (NaN) when more than
5 % of the replicates have an undefined relative error. Recovery times get no interval: they
are properties of the run's course over time, which resampling requests would destroy.

Tolerances
==========

Each figure is judged against a tolerance on ``|rel_error|`` (defaults:
:data:`DEFAULT_TOLERANCES`, from the issue: 5 % for latency and TTFT p50/p95 and throughput,
10 % for p99, error rate and recovery). ``error_rate`` and ``error_kind`` also take an
absolute tolerance in percentage points (``0.5pp``). Per-kind error rates and stage times are
reported but not judged unless a tolerance is given (``error_kind=``, ``stage=``): they are
small and noisy, and a mismatch shows in the total error rate and latency anyway. A figure is
judged by its **point estimate**; where its interval includes 0 but the point misses the
tolerance it still counts as a miss, with a note that the difference may be noise. A figure
missing on either side (no answers at all; no TTFT from an endpoint that does not stream) is
not judged, and the pair's warnings say so: a side with no answers already misses on its
error rate. A recovery time is within tolerance when the two differ by at most the tolerance or by
one step of the recovery grid (1 s), whichever is larger; two windows that both never recovered
agree, one recovered and one not is a miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import TypeAdapter, ValidationError

from ragstress.analysis.recovery import FaultWindow, Recovery, fault_windows, recovery_times
from ragstress.analysis.stats import BATCHES
from ragstress.config.scenario import RateShape
from ragstress.results.schema import ANSWERED, OUTCOMES, RunResult, stage_columns
from ragstress.results.store import ResultsError, read_run

__all__ = [
    "DEFAULT_REPLICATES",
    "DEFAULT_TOLERANCES",
    "SIGN_CONVENTION",
    "TOLERANCE_KEYS",
    "FaultComparison",
    "MetricComparison",
    "NamedRun",
    "PairValidation",
    "RunPair",
    "Tolerance",
    "Validation",
    "ValidationInputError",
    "compare_runs",
    "format_ci",
    "format_error",
    "format_tolerance",
    "format_value",
    "load_runs",
    "offered_rps",
    "pair_runs",
    "parse_tolerances",
    "relative_error",
    "validate",
]

SIGN_CONVENTION = (
    "rel_error = (predicted − measured) / measured: positive when the model predicts more "
    "than was measured (slower, more errors, more throughput), negative when it predicts less"
)
DEFAULT_REPLICATES = 400
"""Bootstrap replicates per pair: enough for a stable 95 % percentile interval."""
CI_LEVEL = 0.95
MAX_UNDEFINED_SHARE = 0.05
"""An interval is left out when more replicates than this have an undefined relative error."""
RECOVERY_RESOLUTION_S = 1.0
"""The recovery search's grid step (``analysis.recovery``): finer differences are not seen."""
TIMELINE_WIDTH_S = 1.0
RATE_MATCH = 1e-9  # relative: offered rates this close are the same rate
QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
_EPS = 1e-9  # relative slack when comparing an error with its tolerance (float rounding)

Unit = Literal["s", "req/s", "share"]

# --------------------------------------------------------------------------------------------
# tolerances


@dataclass(frozen=True)
class Tolerance:
    """How far a figure may be off: ``value`` is a fraction of the measured figure
    (``unit="relative"``) or percentage points of an error rate (``unit="pp"``)."""

    value: float
    unit: Literal["relative", "pp"] = "relative"

    def __str__(self) -> str:
        if self.unit == "pp":
            return f"±{self.value:g} pp"
        return f"±{100 * self.value:g} %"


TOLERANCE_KEYS: tuple[str, ...] = (
    "p50",
    "p95",
    "p99",
    "ttft_p50",
    "ttft_p95",
    "ttft_p99",
    "throughput",
    "error_rate",
    "degraded_rate",
    "error_kind",
    "stage",
    "recovery",
)
DEFAULT_TOLERANCES: Mapping[str, Tolerance | None] = {
    "p50": Tolerance(0.05),
    "p95": Tolerance(0.05),
    "p99": Tolerance(0.10),
    "ttft_p50": Tolerance(0.05),
    "ttft_p95": Tolerance(0.05),
    "ttft_p99": Tolerance(0.10),
    "throughput": Tolerance(0.05),
    "error_rate": Tolerance(0.10),
    "degraded_rate": Tolerance(0.10),
    "error_kind": None,
    "stage": None,
    "recovery": Tolerance(0.10),
}
_ALIASES = {f"latency_{name}": name for name, _ in QUANTILES}
_PP_KEYS = frozenset({"error_rate", "degraded_rate", "error_kind"})


class ValidationInputError(ValueError):
    """Inputs that cannot be validated as given (bad tolerance, ambiguous pairing, no common
    requests): a one-line message the user can act on."""


def _tolerance_value(key: str, text: str) -> Tolerance | None:
    raw = text.strip().lower()
    if raw in ("off", "none"):
        return None
    unit: Literal["relative", "pp"] = "relative"
    number = raw
    if raw.endswith("pp"):
        if key not in _PP_KEYS:
            raise ValidationInputError(
                f"--tolerance {key}={text}: percentage points (pp) only for "
                f"{', '.join(sorted(_PP_KEYS))}; write a percentage like 5%"
            )
        unit, number = "pp", raw.removesuffix("pp")
    elif raw.endswith("%"):
        number = raw.removesuffix("%")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit == "relative":
        if raw.endswith("%"):
            value /= 100
        elif math.isfinite(value) and value >= 1:
            value = math.nan  # "5" is ambiguous: 5 % or 500 %?
    if not (math.isfinite(value) and value >= 0):
        raise ValidationInputError(
            f"--tolerance {key}={text}: allowed: a percentage like 5% (or a fraction, 0.05), "
            "pp for error rates (0.5pp), or off"
        )
    return Tolerance(value, unit)


def parse_tolerances(items: Sequence[str] = ()) -> dict[str, Tolerance | None]:
    """The defaults with ``items`` (``"p50=5%,p99=10%"``, one or more strings) applied.

    Raises :class:`ValidationInputError` naming the allowed keys for an unknown one."""
    out: dict[str, Tolerance | None] = dict(DEFAULT_TOLERANCES)
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            key = _ALIASES.get(key, key)
            if not sep or not value.strip():
                raise ValidationInputError(
                    f"--tolerance {part.strip()}: write KEY=VALUE, e.g. p95=5%"
                )
            if key not in TOLERANCE_KEYS:
                raise ValidationInputError(
                    f"--tolerance {part.strip()}: unknown key {key!r} "
                    f"(allowed: {', '.join(TOLERANCE_KEYS)})"
                )
            out[key] = _tolerance_value(key, value)
    return out


# --------------------------------------------------------------------------------------------
# loading and pairing


@dataclass(frozen=True, eq=False)
class NamedRun:
    """A run as pairing sees it: its folder's name and path, and the result."""

    name: str
    path: str
    result: RunResult

    @property
    def offered_rps(self) -> float | None:
        return offered_rps(self.result.manifest.scenario)


def load_runs(path: str | Path) -> list[NamedRun]:
    """The run in folder ``path``, or the runs in its subfolders (a set: one per load level),
    in name order. The only function here that reads files.

    Raises ``ResultsError`` when ``path`` is neither (a sweep folder keeps no per-request rows,
    so it is named as such)."""
    folder = Path(path)
    if (folder / "manifest.json").is_file():
        return [NamedRun(folder.name, str(folder), read_run(folder))]
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such run folder")
    runs = [
        NamedRun(sub.name, str(sub), read_run(sub))
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and (sub / "manifest.json").is_file()
    ]
    if runs:
        return runs
    if (folder / "sweep.json").is_file():
        raise ResultsError(
            f"{folder}: a sweep folder keeps no per-request rows; simulate each load level "
            "into its own run folder (ragstress simulate --out SET/LEVEL) and validate the set"
        )
    raise ResultsError(f"{folder}: not a run folder, nor a folder of run folders")


_RATE_SHAPE: TypeAdapter[Any] = TypeAdapter(RateShape)


def offered_rps(scenario: Mapping[str, Any]) -> float | None:
    """The scenario's offered rate in req/s: a constant rate's ``rps``, the time average of any
    other rate shape over the run; None for a replayed trace or a malformed scenario."""
    arrivals = scenario.get("arrivals")
    if not isinstance(arrivals, Mapping):
        return None
    rate = arrivals.get("rate")
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        return float(rate)
    if not isinstance(rate, Mapping):
        return None
    if rate.get("kind") == "constant":
        rps = rate.get("rps")
        return float(rps) if isinstance(rps, int | float) else None
    try:
        shape = _RATE_SHAPE.validate_python(rate)
        duration = float(scenario["duration_s"])
    except (ValidationError, KeyError, TypeError, ValueError):
        return None
    grid = (np.arange(10_000) + 0.5) * duration / 10_000  # midpoints: the time average
    return float(np.mean(shape.rate(grid, duration)))


@dataclass(frozen=True, eq=False)
class RunPair:
    """A predicted and a measured run of one load level, and how they were paired."""

    predicted: NamedRun
    measured: NamedRun
    paired_by: Literal["single", "name", "rate"]

    @property
    def level(self) -> str:
        p, m = self.predicted.name, self.measured.name
        return p if p == m else f"{p} ↔ {m}"


def _fmt_rate(rate: float | None) -> str:
    return "no offered rate" if rate is None else f"{rate:g} req/s"


def _by_rate(runs: Sequence[NamedRun], side: str) -> dict[float, NamedRun]:
    out: dict[float, NamedRun] = {}
    for run in runs:
        rate = run.offered_rps
        if rate is None:
            raise ValidationInputError(
                f"cannot pair by offered rate: {side} run {run.path} has no single offered rate "
                "(a replayed trace?); give the two sets' run folders the same names"
            )
        for seen, other in out.items():
            if math.isclose(seen, rate, rel_tol=RATE_MATCH):
                raise ValidationInputError(
                    f"cannot pair by offered rate: {side} runs {other.name!r} and {run.name!r} "
                    f"both offer {rate:g} req/s; give the two sets' run folders the same names"
                )
        out[rate] = run
    return out


def pair_runs(
    predicted: Sequence[NamedRun], measured: Sequence[NamedRun]
) -> tuple[list[RunPair], list[str]]:
    """Pair the runs of the two sides (see the module docstring); returns the pairs, in order
    of offered rate, and warnings naming the runs left without a partner.

    Raises :class:`ValidationInputError` when the pairing is ambiguous or nothing pairs."""
    if not predicted or not measured:
        raise ValidationInputError("nothing to validate: a side has no runs")
    if len(predicted) == 1 and len(measured) == 1:
        return [RunPair(predicted[0], measured[0], "single")], []
    p_names = {r.name: r for r in predicted}
    m_names = {r.name: r for r in measured}
    pairs: list[RunPair] = []
    unpaired_p: list[NamedRun]
    unpaired_m: list[NamedRun]
    if set(p_names) <= set(m_names) or set(m_names) <= set(p_names):
        pairs = [RunPair(p_names[n], m_names[n], "name") for n in p_names if n in m_names]
        unpaired_p = [r for r in predicted if r.name not in m_names]
        unpaired_m = [r for r in measured if r.name not in p_names]
    else:
        p_rates, m_rates = _by_rate(predicted, "predicted"), _by_rate(measured, "measured")
        used: set[float] = set()
        unpaired_p = []
        for rate, run in p_rates.items():
            match = next((m for m in m_rates if math.isclose(m, rate, rel_tol=RATE_MATCH)), None)
            if match is None:
                unpaired_p.append(run)
            else:
                used.add(match)
                pairs.append(RunPair(run, m_rates[match], "rate"))
        unpaired_m = [run for rate, run in m_rates.items() if rate not in used]
        if not pairs:
            raise ValidationInputError(
                "no run pairs: folder names differ and no offered rate is on both sides "
                f"(predicted: {', '.join(_fmt_rate(r) for r in p_rates)}; "
                f"measured: {', '.join(_fmt_rate(r) for r in m_rates)})"
            )
    warnings = [
        f"predicted run {r.name!r} ({_fmt_rate(r.offered_rps)}) has no measured partner: "
        "not compared"
        for r in unpaired_p
    ] + [
        f"measured run {r.name!r} ({_fmt_rate(r.offered_rps)}) has no predicted partner: "
        "not compared"
        for r in unpaired_m
    ]
    pairs.sort(
        key=lambda p: (
            math.inf if p.predicted.offered_rps is None else p.predicted.offered_rps,
            p.level,
        )
    )
    return pairs, warnings


# --------------------------------------------------------------------------------------------
# per-figure comparison


def relative_error(predicted: float, measured: float) -> float:
    """``(predicted − measured) / measured``; 0 when the two are equal (both 0 included),
    NaN when either is NaN or only the measured figure is 0."""
    if math.isnan(predicted) or math.isnan(measured):
        return math.nan
    if predicted == measured:
        return 0.0
    if measured == 0:
        return math.nan
    return (predicted - measured) / measured


def _relative(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """:func:`relative_error`, element-wise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (p - m) / m
    out = np.where(m == 0, math.nan, out)
    return np.where(p == m, 0.0, out)


@dataclass(frozen=True)
class MetricComparison:
    """One figure of one load level: both values, the relative error with its interval, and
    the verdict against the tolerance (None: not judged)."""

    name: str
    label: str
    unit: Unit
    predicted: float
    measured: float
    rel_error: float
    ci: tuple[float, float]
    tolerance: Tolerance | None
    within: bool | None
    abs_diff_pp: float | None = None
    """Error rates: ``100 × (predicted − measured)``, percentage points."""
    pp_ci: tuple[float, float] | None = None
    note: str = ""

    @property
    def missed(self) -> bool:
        return self.within is False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "unit": self.unit,
            "predicted": self.predicted,
            "measured": self.measured,
            "rel_error": self.rel_error,
            "ci": list(self.ci),
            "tolerance": None if self.tolerance is None else self.tolerance.value,
            "tolerance_unit": None if self.tolerance is None else self.tolerance.unit,
            "within": self.within,
        }
        if self.abs_diff_pp is not None:
            out["abs_diff_pp"] = self.abs_diff_pp
            out["abs_diff_pp_ci"] = list(self.pp_ci) if self.pp_ci is not None else None
        if self.note:
            out["note"] = self.note
        return out


def _judge(
    predicted: float, measured: float, rel: float, pp: float | None, tol: Tolerance | None
) -> bool | None:
    if tol is None:
        return None
    if math.isnan(predicted) or math.isnan(measured):
        # nothing to compare (a side with no answers, or a measured endpoint that does not
        # stream has no TTFT): not judged, and the pair's warnings say so
        return None
    if tol.unit == "pp":
        return pp is not None and abs(pp) <= tol.value * (1 + _EPS) + 1e-12
    if math.isnan(rel):
        return False  # measured 0, predicted not: an infinite relative error
    return abs(rel) <= tol.value * (1 + _EPS)


@dataclass(frozen=True)
class _Figure:
    name: str
    label: str
    unit: Unit
    key: str


def _figures(kinds: Sequence[str], stages: Sequence[str]) -> list[_Figure]:
    out = [_Figure(f"latency_{q}", f"latency {q}", "s", q) for q, _ in QUANTILES]
    out += [_Figure(f"ttft_{q}", f"TTFT {q}", "s", f"ttft_{q}") for q, _ in QUANTILES]
    out.append(_Figure("throughput", "throughput", "req/s", "throughput"))
    out.append(_Figure("error_rate", "error rate", "share", "error_rate"))
    # answered by a fallback (ok_degraded): where a fallback hides a brownout's errors from
    # the error rate, this share is what the brownout did
    out.append(_Figure("degraded_rate", "degraded rate", "share", "degraded_rate"))
    out += [_Figure(f"error_rate.{k}", f"error rate: {k}", "share", "error_kind") for k in kinds]
    out += [_Figure(f"stage.{s}", f"stage time: {s}", "s", "stage") for s in stages]
    return out


# --------------------------------------------------------------------------------------------
# one side of a pair, on the common requests


@dataclass(frozen=True)
class _Side:
    """One run's columns on the common requests (in the predicted run's arrival order), ready
    to be summarised on any resample of them."""

    latency: np.ndarray  # answered in the window, else NaN
    ttft: np.ndarray
    done: np.ndarray  # answered and finished inside the window (throughput)
    in_window: np.ndarray
    failed: np.ndarray
    degraded: np.ndarray
    kind_code: np.ndarray  # index into kinds; len(kinds) for answers and unlisted outcomes
    n_kinds: int
    stage_time: np.ndarray  # stages × requests, 0 where not reached
    stage_hit: np.ndarray
    span: float

    @classmethod
    def build(
        cls,
        result: RunResult,
        rows: np.ndarray,
        *,
        in_window: np.ndarray,
        window: tuple[float, float],
        kinds: Sequence[str],
        stages: Sequence[str],
    ) -> _Side:
        req = result.requests
        outcome = np.asarray(req["outcome"])[rows]
        answered = np.isin(outcome, list(ANSWERED))
        keep = answered & in_window
        latency = np.where(keep, np.asarray(req["latency_s"], dtype=float)[rows], math.nan)
        ttft = np.where(keep, np.asarray(req["ttft_s"], dtype=float)[rows], math.nan)
        finish = np.asarray(req["arrival_s"], dtype=float)[rows] + np.where(
            answered, np.asarray(req["latency_s"], dtype=float)[rows], math.nan
        )
        with np.errstate(invalid="ignore"):
            done = answered & (finish >= window[0]) & (finish < window[1])
        code = np.full(rows.size, len(kinds), dtype=np.int64)
        for k, kind in enumerate(kinds):
            code[outcome == kind] = k
        times = np.zeros((len(stages), rows.size))
        hit = np.zeros((len(stages), rows.size), dtype=bool)
        nan_column = np.full(len(result), math.nan)
        for s, stage in enumerate(stages):
            wait_col, service_col = stage_columns(stage)
            wait = np.asarray(req.get(wait_col, nan_column), dtype=float)[rows]
            service = np.asarray(req.get(service_col, nan_column), dtype=float)[rows]
            reached = (np.isfinite(wait) | np.isfinite(service)) & in_window
            hit[s] = reached
            times[s] = np.where(reached, np.nan_to_num(wait) + np.nan_to_num(service), 0.0)
        return cls(
            latency=latency,
            ttft=ttft,
            done=done,
            in_window=in_window,
            failed=~answered,
            degraded=outcome == "ok_degraded",
            kind_code=code,
            n_kinds=len(kinds),
            stage_time=times,
            stage_hit=hit,
            span=max(window[1] - window[0], 1e-12),
        )

    def figures(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Every figure (in :func:`_figures` order) over the requests ``idx`` (all: None)."""

        def take(a: np.ndarray) -> np.ndarray:
            return a if idx is None else a[..., idx]

        out: list[float] = []
        qs = [q for _, q in QUANTILES]
        for column in (self.latency, self.ttft):
            x = take(column)
            x = x[~np.isnan(x)]
            out += np.quantile(x, qs).tolist() if x.size else [math.nan] * len(qs)
        out.append(float(take(self.done).sum()) / self.span)
        window = take(self.in_window)
        n = int(window.sum())
        out.append(float(take(self.failed)[window].sum()) / n if n else math.nan)
        out.append(float(take(self.degraded)[window].sum()) / n if n else math.nan)
        counts = np.bincount(take(self.kind_code)[window], minlength=self.n_kinds + 1)
        out += (counts[: self.n_kinds] / n if n else np.full(self.n_kinds, math.nan)).tolist()
        hits = take(self.stage_hit).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = take(self.stage_time).sum(axis=1) / hits
        out += np.where(hits > 0, means, math.nan).tolist()
        return np.asarray(out, dtype=float)


def _block_indices(rng: np.random.Generator, n: int, replicates: int) -> Iterator[np.ndarray]:
    """Moving-block bootstrap resamples of ``range(n)``: blocks of ``n / BATCHES`` consecutive
    requests from random starts, concatenated and cut to ``n``."""
    block = max(1, math.ceil(n / BATCHES))
    count = math.ceil(n / block)
    offsets = np.arange(block)
    for _ in range(replicates):
        starts = rng.integers(0, n - block + 1, size=count)
        yield (starts[:, None] + offsets).ravel()[:n]


def _interval(samples: np.ndarray) -> tuple[float, float]:
    """Percentile interval of one figure's replicates; NaN when too many are undefined."""
    if samples.size == 0:
        return math.nan, math.nan
    finite = samples[np.isfinite(samples)]
    if finite.size < (1 - MAX_UNDEFINED_SHARE) * samples.size or finite.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - CI_LEVEL) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# faults


@dataclass(frozen=True)
class FaultComparison:
    """A fault scenario's recovery on both sides, window by window (plan order), and the error
    rate per ``width_s`` window over time (by arrival time; NaN where nothing arrived)."""

    windows: list[FaultWindow]
    recoveries: list[tuple[Recovery, Recovery]]
    t_s: np.ndarray
    predicted_error_rate: np.ndarray
    measured_error_rate: np.ndarray
    width_s: float = TIMELINE_WIDTH_S

    def to_json(self) -> dict[str, Any]:
        def side(r: Recovery) -> dict[str, Any]:
            return {
                "recovered": r.recovered,
                "recovered_at_s": r.recovered_at_s,
                "recovery_s": r.recovery_s,
                "reason": r.reason,
            }

        return {
            "windows": [
                {
                    "label": w.label,
                    "stage": w.stage,
                    "kind": w.kind,
                    "start_s": w.start_s,
                    "end_s": w.end_s,
                }
                for w in self.windows
            ],
            "recovery": [
                {"window": p.window.label, "predicted": side(p), "measured": side(m)}
                for p, m in self.recoveries
            ],
            "error_rate_over_time": {
                "width_s": self.width_s,
                "t_s": self.t_s.tolist(),
                "predicted": self.predicted_error_rate.tolist(),
                "measured": self.measured_error_rate.tolist(),
            },
        }


def _error_timeline(result: RunResult, end: float, width: float) -> tuple[np.ndarray, np.ndarray]:
    edges = np.arange(0.0, math.ceil(end / width) * width + width / 2, width)
    if edges.size < 2:
        edges = np.array([0.0, width])
    arrival = np.asarray(result.requests["arrival_s"], dtype=float)
    failed = ~result.answered()
    arrivals, _ = np.histogram(arrival, bins=edges)
    failures, _ = np.histogram(arrival[failed], bins=edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(arrivals > 0, failures / arrivals, math.nan)
    return edges[:-1], share


def _windows_of(result: RunResult) -> tuple[list[FaultWindow], str]:
    try:
        return fault_windows(result.manifest.scenario), ""
    except ValidationError:
        return [], "its fault plan does not load"


def _compare_faults(
    predicted: RunResult, measured: RunResult, warnings: list[str]
) -> FaultComparison | None:
    p_windows, p_bad = _windows_of(predicted)
    m_windows, m_bad = _windows_of(measured)
    for side, bad in (("predicted", p_bad), ("measured", m_bad)):
        if bad:
            warnings.append(f"{side} run: {bad}; its recovery is not compared")
    if not p_windows and not m_windows:
        return None
    same = [(w.stage, w.kind, w.start_s, w.end_s) for w in p_windows] == [
        (w.stage, w.kind, w.start_s, w.end_s) for w in m_windows
    ]
    if not same:
        warnings.append(
            f"fault plans differ (predicted: {len(p_windows)} windows, measured: "
            f"{len(m_windows)}): recovery compared window by window in plan order"
        )
    slo = predicted.manifest.scenario.get("slo")
    p_rec = recovery_times(predicted, slo=slo) if p_windows else []
    m_rec = recovery_times(measured, slo=slo) if m_windows else []
    end = float(predicted.manifest.duration_s)
    t, p_err = _error_timeline(predicted, end, TIMELINE_WIDTH_S)
    _, m_err = _error_timeline(measured, end, TIMELINE_WIDTH_S)
    return FaultComparison(
        windows=p_windows or m_windows,
        recoveries=list(zip(p_rec, m_rec, strict=False)),
        t_s=t,
        predicted_error_rate=p_err,
        measured_error_rate=m_err,
    )


def _recovery_metrics(
    faults: FaultComparison, tol: Tolerance | None
) -> dict[str, MetricComparison]:
    out: dict[str, MetricComparison] = {}
    for k, (p, m) in enumerate(faults.recoveries, start=1):
        pv = math.nan if p.recovery_s is None else float(p.recovery_s)
        mv = math.nan if m.recovery_s is None else float(m.recovery_s)
        rel = relative_error(pv, mv)
        w = p.window
        label = f"recovery after {w.label} [{w.start_s:g} s, {w.end_s:g} s)"
        note = ""
        within: bool | None
        if not (p.judged and m.judged):
            within, note = None, "recovery could not be judged (no baseline and no SLO p95)"
        elif tol is None:
            within = None
        elif not p.recovered and not m.recovered:
            within, note = True, "neither side recovered before the load ended"
        elif p.recovered != m.recovered:
            within = False
            note = f"only the {'predicted' if p.recovered else 'measured'} side recovered"
        else:
            limit = max(tol.value * abs(mv), RECOVERY_RESOLUTION_S)
            within = abs(pv - mv) <= limit * (1 + _EPS)
            if (
                abs(pv - mv) <= RECOVERY_RESOLUTION_S
                and not math.isnan(rel)
                and abs(rel) > tol.value
            ):
                note = "within one step of the recovery grid (1 s)"
        out[f"recovery.{k}"] = MetricComparison(
            name=f"recovery.{k}",
            label=label,
            unit="s",
            predicted=pv,
            measured=mv,
            rel_error=rel,
            ci=(math.nan, math.nan),
            tolerance=tol,
            within=within,
            note=note,
        )
    return out


# --------------------------------------------------------------------------------------------
# a pair


@dataclass(frozen=True, eq=False)
class PairValidation:
    """One load level's comparison. ``samples`` holds the answered in-window latency and TTFT
    of both sides (sorted) for the CDF chart; it is not written to JSON."""

    level: str
    offered_rps: float | None
    predicted_path: str
    measured_path: str
    paired_by: str
    scenario: str
    window_s: tuple[float, float]
    requests: dict[str, int]
    metrics: dict[str, MetricComparison]
    warnings: list[str]
    notes: list[str]
    stages: list[str]
    faults: FaultComparison | None
    samples: dict[str, dict[str, np.ndarray]] = field(repr=False)

    @property
    def passed(self) -> bool:
        return not self.misses

    @property
    def misses(self) -> list[MetricComparison]:
        return [m for m in self.metrics.values() if m.missed]

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "offered_rps": self.offered_rps,
            "predicted": self.predicted_path,
            "measured": self.measured_path,
            "paired_by": self.paired_by,
            "scenario": self.scenario,
            "window_s": list(self.window_s),
            "requests": self.requests,
            "pass": self.passed,
            "warnings": self.warnings,
            "notes": self.notes,
            "metrics": {name: m.to_json() for name, m in self.metrics.items()},
            "faults": None if self.faults is None else self.faults.to_json(),
        }


def _workload_warnings(predicted: RunResult, measured: RunResult) -> tuple[list[str], list[str]]:
    """(warnings, notes): differences between the two runs' workloads, and remarks."""
    warnings: list[str] = []
    notes: list[str] = []
    p, m = predicted.manifest, measured.manifest
    p_sc, m_sc = p.scenario, m.scenario
    if p_sc.get("name") != m_sc.get("name"):
        warnings.append(
            f"scenario names differ: predicted {p_sc.get('name')!r}, measured {m_sc.get('name')!r}"
        )
    if p.seed != m.seed:
        warnings.append(f"seeds differ: predicted {p.seed}, measured {m.seed}")
    if len(predicted) != len(measured):
        warnings.append(
            f"request counts differ: predicted {len(predicted)}, measured {len(measured)}"
        )
    p_rate, m_rate = offered_rps(p_sc), offered_rps(m_sc)
    if (
        p_rate is not None
        and m_rate is not None
        and not math.isclose(p_rate, m_rate, rel_tol=RATE_MATCH)
    ):
        warnings.append(f"offered rates differ: predicted {p_rate:g} req/s, measured {m_rate:g}")
    p_win = (float(p_sc.get("warmup_s", 0.0) or 0.0), p.duration_s)
    m_win = (float(m_sc.get("warmup_s", 0.0) or 0.0), m.duration_s)
    if not np.allclose(p_win, m_win):
        warnings.append(
            f"measurement windows differ: predicted [{p_win[0]:g}, {p_win[1]:g}) s, measured "
            f"[{m_win[0]:g}, {m_win[1]:g}) s (a time-scaled replay?): both judged on the "
            "predicted window"
        )
    if set(p.stages) != set(m.stages):
        warnings.append(
            f"stages differ: predicted {', '.join(p.stages) or 'none'}, measured "
            f"{', '.join(m.stages) or 'none'}: stage times compared for the common ones"
        )
    for side, manifest in (("predicted", p), ("measured", m)):
        if not manifest.complete:
            warnings.append(f"the {side} run was interrupted (manifest: complete = false)")
    if p.source != "simulated":
        warnings.append(f"the predicted run is a {p.source} run (swapped --predicted/--measured?)")
    if m.source != "measured":
        notes.append(f"the measured side is a {m.source} run")
    return warnings, notes


def _common_rows(
    predicted: RunResult, measured: RunResult
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Row indices of the common request ids in each run, in the predicted arrival order."""
    p_ids = np.asarray(predicted.requests["id"])
    m_ids = np.asarray(measured.requests["id"])
    for side, ids in (("predicted", p_ids), ("measured", m_ids)):
        if np.unique(ids).size != ids.size:
            raise ValidationInputError(f"the {side} run has duplicate request ids")
    _, ip, im = np.intersect1d(p_ids, m_ids, assume_unique=True, return_indices=True)
    if ip.size == 0:
        raise ValidationInputError(
            "the two runs have no request id in common: they are not the same workload"
        )
    order = np.argsort(np.asarray(predicted.requests["arrival_s"], dtype=float)[ip], kind="stable")
    ip, im = ip[order], im[order]
    warnings: list[str] = []
    only_p, only_m = p_ids.size - ip.size, m_ids.size - im.size
    if only_p or only_m:
        warnings.append(
            f"request ids differ ({only_p} only in the predicted run, {only_m} only in the "
            f"measured run): compared on the {ip.size} common requests only"
        )
    return ip, im, warnings


def _subset(result: RunResult, rows: np.ndarray) -> RunResult:
    return RunResult(
        manifest=result.manifest, requests={k: v[rows] for k, v in result.requests.items()}
    )


def _failure_kinds(outcomes: Sequence[np.ndarray]) -> list[str]:
    seen = {str(o) for values in outcomes for o in np.unique(values)} - ANSWERED
    return [o for o in OUTCOMES if o in seen] + sorted(seen - set(OUTCOMES))


def compare_runs(
    predicted: RunResult,
    measured: RunResult,
    tolerances: Mapping[str, Tolerance | None] | None = None,
    *,
    level: str = "run",
    paths: tuple[str, str] = ("", ""),
    paired_by: str = "single",
    replicates: int = DEFAULT_REPLICATES,
    rng: np.random.Generator | None = None,
) -> PairValidation:
    """Compare one predicted run with one measured run of the same workload (see the module
    docstring). ``rng`` draws the bootstrap (default: seed 0); ``replicates`` 0 gives no
    intervals. Raises :class:`ValidationInputError` when the runs share no request id."""
    tol = DEFAULT_TOLERANCES if tolerances is None else tolerances
    gen = np.random.default_rng(0) if rng is None else rng
    warnings, notes = _workload_warnings(predicted, measured)
    ip, im, id_warnings = _common_rows(predicted, measured)
    warnings += id_warnings
    warm = float(predicted.manifest.scenario.get("warmup_s", 0.0) or 0.0)
    window = (warm, float(predicted.manifest.duration_s))
    arrival = np.asarray(predicted.requests["arrival_s"], dtype=float)[ip]
    in_window = (arrival >= window[0]) & (arrival < window[1])
    stages = [s for s in predicted.stages if s in measured.stages]
    kinds = _failure_kinds(
        [
            np.asarray(predicted.requests["outcome"])[ip][in_window],
            np.asarray(measured.requests["outcome"])[im][in_window],
        ]
    )
    side_p = _Side.build(
        predicted, ip, in_window=in_window, window=window, kinds=kinds, stages=stages
    )
    side_m = _Side.build(
        measured, im, in_window=in_window, window=window, kinds=kinds, stages=stages
    )
    figures = _figures(kinds, stages)
    point_p, point_m = side_p.figures(), side_m.figures()
    rel = _relative(point_p, point_m)
    n = int(ip.size)
    boot_rel = np.empty((replicates, len(figures)))
    boot_pp = np.empty((replicates, len(figures)))
    for b, idx in enumerate(_block_indices(gen, n, replicates)):
        vp, vm = side_p.figures(idx), side_m.figures(idx)
        boot_rel[b] = _relative(vp, vm)
        boot_pp[b] = 100 * (vp - vm)
    metrics: dict[str, MetricComparison] = {}
    for j, fig in enumerate(figures):
        pv, mv, rv = float(point_p[j]), float(point_m[j]), float(rel[j])
        ci = _interval(boot_rel[:, j])
        share = fig.unit == "share"
        pp = 100 * (pv - mv) if share and math.isfinite(pv - mv) else None
        tolerance = tol.get(fig.key)
        within = _judge(pv, mv, rv, pp, tolerance)
        note = ""
        if within is False and math.isfinite(ci[0]) and ci[0] <= 0 <= ci[1]:
            note = "the interval includes 0: the difference may be noise (judged by the point)"
        elif math.isnan(pv) and math.isnan(mv):
            note = "no values on either side"
        elif math.isnan(pv) or math.isnan(mv):
            note = f"no values on the {'predicted' if math.isnan(pv) else 'measured'} side"
            if tolerance is not None:
                warnings.append(f"{fig.label}: {note}: not judged")
        metrics[fig.name] = MetricComparison(
            name=fig.name,
            label=fig.label,
            unit=fig.unit,
            predicted=pv,
            measured=mv,
            rel_error=rv,
            ci=ci,
            tolerance=tolerance,
            within=within,
            abs_diff_pp=pp,
            pp_ci=_interval(boot_pp[:, j]) if share else None,
            note=note,
        )
    faults = _compare_faults(_subset(predicted, ip), _subset(measured, im), warnings)
    if faults is not None:
        metrics.update(_recovery_metrics(faults, tol.get("recovery")))
    samples = {
        column: {
            "predicted": np.sort(side_p_col[~np.isnan(side_p_col)]),
            "measured": np.sort(side_m_col[~np.isnan(side_m_col)]),
        }
        for column, side_p_col, side_m_col in (
            ("latency_s", side_p.latency, side_m.latency),
            ("ttft_s", side_p.ttft, side_m.ttft),
        )
    }
    return PairValidation(
        level=level,
        offered_rps=offered_rps(predicted.manifest.scenario),
        predicted_path=paths[0],
        measured_path=paths[1],
        paired_by=paired_by,
        scenario=str(predicted.manifest.scenario.get("name", "")),
        window_s=window,
        requests={
            "predicted": len(predicted),
            "measured": len(measured),
            "common": n,
            "in_window": int(in_window.sum()),
            "answered_predicted": int(samples["latency_s"]["predicted"].size),
            "answered_measured": int(samples["latency_s"]["measured"].size),
        },
        metrics=metrics,
        warnings=warnings,
        notes=notes,
        stages=stages,
        faults=faults,
        samples=samples,
    )


# --------------------------------------------------------------------------------------------
# all pairs


@dataclass(frozen=True, eq=False)
class Validation:
    """Every pair's comparison, the settings they were judged with, and the verdict."""

    pairs: list[PairValidation]
    tolerances: Mapping[str, Tolerance | None]
    replicates: int
    seed: int
    warnings: list[str]
    predicted: str = ""
    measured: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.pairs) and all(p.passed for p in self.pairs)

    @property
    def misses(self) -> list[tuple[PairValidation, MetricComparison]]:
        return [(p, m) for p in self.pairs for m in p.misses]

    def to_json(self) -> dict[str, Any]:
        return {
            "predicted": self.predicted,
            "measured": self.measured,
            "pass": self.passed,
            "misses": [
                {
                    "level": p.level,
                    "metric": m.name,
                    "predicted": m.predicted,
                    "measured": m.measured,
                    "rel_error": m.rel_error,
                    "abs_diff_pp": m.abs_diff_pp,
                    "tolerance": None if m.tolerance is None else m.tolerance.value,
                    "tolerance_unit": None if m.tolerance is None else m.tolerance.unit,
                }
                for p, m in self.misses
            ],
            "sign_convention": SIGN_CONVENTION,
            "tolerances": {
                k: None if t is None else {"value": t.value, "unit": t.unit}
                for k, t in self.tolerances.items()
            },
            "bootstrap": {
                "method": "paired moving-block bootstrap over requests in arrival order, "
                f"blocks of n/{BATCHES} requests, percentile interval",
                "level": CI_LEVEL,
                "replicates": self.replicates,
                "seed": self.seed,
            },
            "warnings": self.warnings,
            "pairs": [p.to_json() for p in self.pairs],
        }


def validate(
    pairs: Sequence[RunPair],
    tolerances: Mapping[str, Tolerance | None] | None = None,
    *,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    warnings: Sequence[str] = (),
    predicted: str = "",
    measured: str = "",
) -> Validation:
    """Compare every pair; pair ``k`` draws its bootstrap from the ``k``-th child of
    ``SeedSequence(seed)``, so adding a level does not change another level's intervals."""
    tol = dict(DEFAULT_TOLERANCES if tolerances is None else tolerances)
    children = np.random.SeedSequence(seed).spawn(len(pairs))
    out = [
        compare_runs(
            pair.predicted.result,
            pair.measured.result,
            tol,
            level=pair.level,
            paths=(pair.predicted.path, pair.measured.path),
            paired_by=pair.paired_by,
            replicates=replicates,
            rng=np.random.default_rng(child),
        )
        for pair, child in zip(pairs, children, strict=True)
    ]
    return Validation(out, tol, replicates, seed, list(warnings), predicted, measured)


# --------------------------------------------------------------------------------------------
# formatting, shared by the console table and the report


def format_value(value: float, unit: Unit) -> str:
    """A figure with its unit: ``1.23 s``, ``45 ms``, ``12.3 req/s``, ``0.5 %``; NaN as —."""
    if not math.isfinite(value):
        return "—"
    if unit == "share":
        return f"{100 * value:.3g} %"
    if unit == "req/s":
        return f"{value:.4g} req/s"
    if value == 0:
        return "0 s"
    if abs(value) >= 1:
        return f"{value:.4g} s"
    return f"{value * 1e3:.3g} ms"


def _signed(value: float) -> str:
    """``+10``, ``-9.09``, and a plain ``0`` for no difference at all."""
    return "0" if value == 0 else f"{value:+.3g}"


def format_error(metric: MetricComparison) -> str:
    """The signed error: relative (``+10 %``), and for error rates the percentage points."""
    rel = "—" if not math.isfinite(metric.rel_error) else f"{_signed(100 * metric.rel_error)} %"
    if metric.abs_diff_pp is None:
        return rel
    return f"{_signed(metric.abs_diff_pp)} pp ({rel})"


def format_ci(metric: MetricComparison) -> str:
    """The relative error's 95 % interval in percent; — where there is none."""
    lo, hi = metric.ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "—"
    return f"[{_signed(100 * lo)}, {_signed(100 * hi)}] %"


def format_tolerance(tolerance: Tolerance | None) -> str:
    return "not judged" if tolerance is None else str(tolerance)
