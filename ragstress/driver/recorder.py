"""Measured samples on disk, and the run folder they become.

**Never lost.** :class:`SampleWriter` appends each batch of finished requests to
``requests.csv`` and flushes it to the operating system at once, so a driver killed mid-run
(Ctrl-C twice, the OOM killer, a lost worker) leaves every sample it had finished on disk; a
torn last line is dropped on reading. Rows are in completion order. :func:`finalize_run` —
run by the CLI when the Locust process has ended, however it ended — reads them back, sorts
them by id, and writes the run folder the way a simulated run's is written
(:mod:`ragstress.results.store`): ``requests.csv`` (now in id order), ``summary.json``,
``driver.json`` and ``manifest.json`` last, each atomically, so a folder with a manifest is
whole. Requests the run never finished (it was interrupted) are absent, and the manifest
says so.

**The run's clock.** A measured run's times are on the replay clock, already divided by
``time_scale``; so are its ``duration_s`` and, in the manifest's copy of the scenario,
``duration_s`` and ``warmup_s``: every reader of the folder (summary, report, recovery)
takes its measurement window from there. The scenario's other times and rates are as
written (a note says so) and ``driver.json`` keeps the values as written.

**Cost.** :func:`make_cost_fn` prices a sample by the model's rule (``ragstress.model``:
a served call costs ``per_call_usd + tokens_in × input price + tokens_out × output price``,
summed over the stages a request's calls reached; replica-hours are the manifest's
``fixed_cost_usd`` for the run's duration). What a measurement can and cannot see:

- the answering LLM stage (the last LLM stage on the main path) is billed its per-call price
  and the answer's measured tokens (usage, or the counted chunks; input tokens fall back to
  the replayed prompt size when the answer reports none) whenever the answer shows the LLM
  produced tokens;
- every other main-path stage is billed once per request (× ``fan_out``) with the replayed
  request's tokens (query / context / prompt, as its ``input_tokens`` says) when the request
  reached it: when the answer reports stage times (``Server-Timing``), the stages it names;
  a cache stage, whenever the service answered at all; without stage times, every stage of
  an answered request (a cache hit that skipped a stage cannot be seen);
- not priced: retries (the model bills every served attempt), calls to fallback-only stages,
  output tokens of LLM stages other than the answering one, and calls a failed request made
  before it failed where the answer reports no stage times.

**Secrets.** Header values from the environment (``header_env``) never reach these files:
``driver.json`` records header names and variable names only, and any string in the written
files that contains such a value (a server echoing a key in an error) has it replaced.

**Generator health.** :func:`generator_health` says whether the load generator kept up (see
its docstring for the thresholds): a measurement from a generator that fell behind measures
the generator.

This module never imports Locust or gevent; the summary and the manifest's versions are
imported lazily, so the Locust process (which only writes samples) loads neither the model
nor the analysis code.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ragstress import __version__
from ragstress.config.profile import AnyStage, CacheStage, LlmApiStage, LlmEngineStage, Profile
from ragstress.driver.replay import ReplayPlan, answer_stage, system_prompt_tokens
from ragstress.driver.spec import SAMPLE_COLUMNS, ReplayRequest, RunSettings, Sample
from ragstress.results.schema import Manifest, RunResult, stage_columns
from ragstress.results.store import csv_bytes, json_bytes, write_atomic

__all__ = [
    "CPU_SHARE_MAX",
    "DRIVER_JSON",
    "LAG_FLOOR_S",
    "LAG_GAP_FRACTION",
    "LAG_P99_MAX_S",
    "RATE_RATIO_MIN",
    "REQUESTS_CSV",
    "CostFn",
    "SampleWriter",
    "finalize_run",
    "generator_health",
    "make_cost_fn",
    "read_samples",
    "sample_header",
]

REQUESTS_CSV: Final = "requests.csv"
DRIVER_JSON: Final = "driver.json"
SUMMARY_JSON: Final = "summary.json"
MANIFEST_JSON: Final = "manifest.json"

CostFn = Callable[[Sample], float]

_INT_COLUMNS: Final = frozenset({"id", "attempts", "tokens_in", "tokens_out", "status"})
_STR_COLUMNS: Final = frozenset({"outcome", "error"})
_ANSWERED: Final = frozenset({"ok", "ok_degraded"})
_ERROR_MAX_CHARS: Final = 1000
_SECRET_MIN_CHARS: Final = 4  # shorter values would be redacted out of ordinary words
_REDACTED: Final = "[redacted]"

# --- generator health thresholds (see generator_health) ------------------------------------
RATE_RATIO_MIN: Final = 0.99
LAG_P99_MAX_S: Final = 0.050
LAG_GAP_FRACTION: Final = 0.10
LAG_FLOOR_S: Final = 0.002
CPU_SHARE_MAX: Final = 0.90


def sample_header(stages: Sequence[str]) -> list[str]:
    """``requests.csv``'s columns: SAMPLE_COLUMNS, then ``<stage>_wait_s, <stage>_service_s``
    per stage."""
    header = list(SAMPLE_COLUMNS)
    for stage in stages:
        header.extend(stage_columns(stage))
    return header


# --- cost ----------------------------------------------------------------------------------


def _free(sample: Sample) -> float:
    del sample
    return 0.0


def _input_tokens(
    stage: AnyStage, req: ReplayRequest | None, context_tokens: int, query_tokens: int
) -> int:
    """A stage's input tokens as the model counts them (``model.service.tokens_of``)."""
    if req is None or isinstance(stage, CacheStage):
        return 0
    source = stage.input_tokens
    system = stage.system_prompt_tokens if isinstance(stage, LlmApiStage | LlmEngineStage) else 0
    if source == "none":
        return 0
    if source == "query":
        return query_tokens + system
    if source == "context":
        return context_tokens + system
    return query_tokens + context_tokens + system


def make_cost_fn(profile: Profile | None, requests: Iterable[ReplayRequest] = ()) -> CostFn:
    """A sample's cost in USD by the profile's prices (see the module docstring for what a
    measurement can price). ``requests``: the replayed requests, for the token counts of
    stages other than the answering LLM (without them those stages are billed per call
    only). Without a profile every sample costs 0."""
    if profile is None:
        return _free
    answer = answer_stage(profile)
    system = system_prompt_tokens(profile)
    by_id = {r.id: r for r in requests}
    path = profile.path

    def cost(sample: Sample) -> float:
        req = by_id.get(sample.id)
        query = req.query_tokens if req is not None else 0
        context = max(req.prompt_tokens - req.query_tokens - system, 0) if req is not None else 0
        total = 0.0
        for stage in path:
            price = stage.price
            if stage is answer:
                if sample.tokens_out > 0:
                    tokens_in = sample.tokens_in or (req.prompt_tokens if req is not None else 0)
                    total += (
                        price.per_call_usd
                        + tokens_in * price.per_1m_input_tokens_usd / 1e6
                        + sample.tokens_out * price.per_1m_output_tokens_usd / 1e6
                    )
                continue
            if isinstance(stage, CacheStage):
                reached = sample.status != 0
            elif sample.stages:
                reached = stage.name in sample.stages
            else:
                reached = sample.outcome in _ANSWERED
            if reached:
                tokens = _input_tokens(stage, req, context, query)
                per = price.per_call_usd + tokens * price.per_1m_input_tokens_usd / 1e6
                total += stage.fan_out * per
        return total

    return cost


# --- writing -------------------------------------------------------------------------------


def _num(value: float) -> str:
    """A float cell at full precision (repr round-trips); NaN (did not apply) is empty."""
    x = float(value)
    return "" if math.isnan(x) else repr(x)


def _text(value: str) -> str:
    """One line of text (a CSV row is one line, so a torn last row can be told apart)."""
    flat = "".join(c if c.isprintable() else " " for c in value)
    return flat if len(flat) <= _ERROR_MAX_CHARS else flat[: _ERROR_MAX_CHARS - 1] + "…"


class SampleWriter:
    """Appends samples to ``out/requests.csv`` as they finish; see the module docstring.

    ``stages``: the run's stage columns (``ReplayPlan.stages``); a sample's stage time goes
    into ``<stage>_service_s`` (``<stage>_wait_s`` stays empty: from outside the two cannot
    be told apart) and a stage the plan does not name is dropped. ``cost_fn`` prices each
    sample (:func:`make_cost_fn`; default free). Creates (truncates) the file at once, with
    its header, so even a run that dies before its first answer leaves a readable file."""

    def __init__(self, out: Path, stages: Sequence[str], cost_fn: CostFn | None = None) -> None:
        self.path = Path(out) / REQUESTS_CSV
        self.stages = tuple(stages)
        self._cost = cost_fn if cost_fn is not None else _free
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: io.TextIOWrapper | None = self.path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        self._csv.writerow(sample_header(self.stages))
        self._fh.flush()
        self.rows = 0

    def _row(self, s: Sample) -> list[str | int]:
        row: list[str | int] = [
            int(s.id),
            _num(s.arrival_s),
            s.outcome,
            _num(s.latency_s),
            _num(s.ttft_s),
            int(s.attempts),
            int(s.tokens_in),
            int(s.tokens_out),
            _num(self._cost(s)),
            _num(s.send_lag_s),
            int(s.status),
            _text(s.error),
        ]
        for stage in self.stages:
            row.extend(("", _num(s.stages.get(stage, math.nan))))
        return row

    def write(self, samples: Iterable[Sample]) -> int:
        """Append ``samples`` and flush them to the operating system. Returns rows written."""
        if self._fh is None:
            raise ValueError(f"{self.path}: the writer is closed")
        rows = [self._row(s) for s in samples]
        self._csv.writerows(rows)
        self._fh.flush()
        self.rows += len(rows)
        return len(rows)

    def close(self) -> None:
        """Flush, sync to disk and close. Idempotent."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        self.close()
        return False


# --- reading -------------------------------------------------------------------------------


def _cell(name: str, value: str) -> int | float | str:
    if name in _STR_COLUMNS:
        return value
    if name in _INT_COLUMNS:
        return int(float(value)) if value else 0
    return float(value) if value else math.nan


def read_samples(path: Path, stages: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The rows of a ``requests.csv`` the writer wrote (possibly while it was killed), sorted
    by id, as typed columns: ``sample_header(stages)``, a column the file lacks being empty.

    Returns the columns and what was skipped: ``torn`` (a last line cut off mid-write),
    ``malformed`` (a row that does not parse), ``duplicate`` (an id already read: the first
    counts). A missing file reads as no rows."""
    header = sample_header(stages)
    skipped = {"torn": 0, "malformed": 0, "duplicate": 0}
    rows: list[list[int | float | str]] = []
    if path.is_file():
        text = path.read_bytes().decode("utf-8", errors="replace")
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            skipped["torn"] = 1
        lines = csv.reader(io.StringIO(text, newline=""))
        file_header = next(lines, None) or []
        where = {name: k for k, name in enumerate(file_header)}
        if "id" not in where:
            file_header, where = [], {}
        seen: set[int] = set()
        for raw in lines:
            if len(raw) != len(file_header):
                skipped["malformed"] += 1
                continue
            try:
                row = [
                    _cell(name, raw[where[name]]) if name in where else _cell(name, "")
                    for name in header
                ]
            except ValueError:
                skipped["malformed"] += 1
                continue
            ident = int(row[0])
            if ident in seen:
                skipped["duplicate"] += 1
                continue
            seen.add(ident)
            rows.append(row)
    rows.sort(key=lambda r: int(r[0]))
    columns: dict[str, np.ndarray] = {}
    for k, name in enumerate(header):
        values = [r[k] for r in rows]
        if name in _STR_COLUMNS:
            columns[name] = np.asarray(values, dtype=str)
        elif name in _INT_COLUMNS:
            columns[name] = np.asarray(values, dtype=np.int64)
        else:
            columns[name] = np.asarray(values, dtype=float)
    return columns, skipped


# --- the run folder ------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    """The simulator's version list, plus Locust's, read from its metadata (never imported:
    it monkey-patches the process it is imported into)."""
    from importlib import metadata

    from ragstress.api import library_versions

    out = library_versions()
    try:
        out["locust"] = metadata.version("locust")
    except metadata.PackageNotFoundError:
        out["locust"] = "unknown"
    return out


def _public_url(url: str) -> str:
    """``url`` without credentials (``user:password@``) and without a query string, which
    may carry an API key; neither belongs in a results folder."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # host[:port], without user:password@
    query = _REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _settings_record(settings: RunSettings) -> dict[str, Any]:
    """The settings as recorded: header *names* only, environment variable *names* only."""
    data = settings.model_dump(mode="json")
    endpoint = data["endpoint"]
    endpoint["target"] = _public_url(settings.endpoint.target)
    endpoint["headers"] = sorted(settings.endpoint.headers)
    endpoint["header_env"] = dict(settings.endpoint.header_env)
    return data


def _secrets(settings: RunSettings, environ: Mapping[str, str]) -> list[str]:
    values = {environ.get(var, "") for var in settings.endpoint.header_env.values()}
    return sorted((v for v in values if len(v) >= _SECRET_MIN_CHARS), key=len, reverse=True)


def _redact(obj: Any, secrets: Sequence[str]) -> Any:
    """``obj`` with every secret replaced inside its strings (numbers are left alone)."""
    if not secrets:
        return obj
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, _REDACTED)
        return obj
    if isinstance(obj, Mapping):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_redact(v, secrets) for v in obj]
    return obj


def _scaled_scenario(plan: ReplayPlan) -> dict[str, Any]:
    """The scenario on the run's clock: ``duration_s``, ``warmup_s`` and the fault windows
    divided by ``time_scale`` (as ``ragstress run --chaos`` plays them), so the summary's
    measurement window and the charts' shaded fault windows match the measured times."""
    data = plan.scenario.model_dump(mode="json")
    if plan.time_scale != 1.0:
        data["duration_s"] = plan.scenario.duration_s / plan.time_scale
        data["warmup_s"] = plan.scenario.warmup_s / plan.time_scale
        for fault in data.get("faults", []):
            fault["start_s"] = fault["start_s"] / plan.time_scale
            fault["end_s"] = fault["end_s"] / plan.time_scale
    return data


def _fixed_cost(profile: Profile | None, duration_s: float) -> float:
    """Replica-hour charges for ``duration_s``, as the model's manifest computes them."""
    if profile is None:
        return 0.0
    return sum(
        s.replicas * s.price.per_replica_hour_usd * duration_s / 3600.0 for s in profile.stages
    )


def _suspect_reasons(extra: Mapping[str, Any]) -> list[str]:
    """The reasons of a ``generator_health`` result found in ``extra`` (or nested one deep)."""
    for block in (extra, *(v for v in extra.values() if isinstance(v, Mapping))):
        if block.get("suspect") is True:
            return [str(r) for r in block.get("reasons") or ()] or ["reason not given"]
    return []


def finalize_run(
    out: Path,
    plan: ReplayPlan,
    *,
    settings: RunSettings,
    complete: bool,
    started_at: str | None,
    notes: Sequence[str],
    extra: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> tuple[RunResult, dict[str, Any]]:
    """Turn ``out/requests.csv`` into a run folder; returns the result and its summary.

    ``complete``: the run replayed its whole plan (False after an interruption: the requests
    not finished are absent and a note says so). ``notes`` go into the manifest as given.
    ``extra``: the driver's own figures (generator health, workers, …), merged over the
    ``"driver"`` block (endpoint kind, target without credentials or query, time scale,
    requests planned / recorded / missing) that goes into the summary and, with the settings
    as recorded under ``"settings"``, makes ``driver.json``. ``environ`` (default
    ``os.environ``) is where the ``header_env`` values are looked up, only to make sure none
    is written. A ``generator_health`` verdict of ``suspect`` in ``extra`` (at its top level
    or one level down) becomes a manifest note."""
    from ragstress.analysis.summary import summarize

    out = Path(out)
    environ = os.environ if environ is None else environ
    secrets = _secrets(settings, environ)
    columns, skipped = read_samples(out / REQUESTS_CSV, plan.stages)
    columns["error"] = np.asarray(_redact(columns["error"].tolist(), secrets), dtype=str)
    n = int(columns["id"].size)
    planned = len(plan.requests)
    planned_ids = {r.id for r in plan.requests}
    missing = len(planned_ids - set(columns["id"].tolist()))

    all_notes = list(notes)
    if not complete:
        all_notes.append(
            f"interrupted: {n} of {planned} planned requests finished; the requests not "
            "finished when the run stopped are absent from requests.csv"
        )
    if plan.time_scale != 1.0:
        all_notes.append(
            f"time_scale {plan.time_scale:g}: arrival times, duration_s and the scenario's "
            f"duration_s, warmup_s and fault windows (as written: {plan.scenario.duration_s:g} s "
            f"and {plan.scenario.warmup_s:g} s) are divided by {plan.time_scale:g}; the "
            "scenario's rates and other times are as written"
        )
    if plan.truncated:
        all_notes.append(
            f"replay truncated at max_requests: {planned} of {plan.workload_requests} requests"
        )
    if plan.workload_truncated:
        all_notes.append("workload truncated at scenario.max_requests")
    if plan.stages:
        all_notes.append(
            "measured stage times (Server-Timing) are the gateway's wait + service, in "
            "<stage>_service_s; <stage>_wait_s is empty"
        )
    for what, count in skipped.items():
        if count:
            all_notes.append(f"requests.csv: {count} {what} row(s) skipped")
    reasons = _suspect_reasons(extra)
    if reasons:
        all_notes.append("the load generator may have been the bottleneck: " + "; ".join(reasons))

    manifest = Manifest(
        source="measured",
        scenario=_scaled_scenario(plan),
        profile=None if plan.profile is None else plan.profile.model_dump(mode="json"),
        seed=plan.seed,
        stages=list(plan.stages),
        duration_s=plan.duration_s,
        ragstress_version=__version__,
        started_at=started_at,
        versions=_versions(),
        complete=complete,
        fixed_cost_usd=_fixed_cost(plan.profile, plan.duration_s),
        notes=_redact(all_notes, secrets),
    )
    result = RunResult(manifest=manifest, requests=columns)
    with warnings.catch_warnings():
        # a measured stage's wait column is all empty (see SampleWriter): its mean and p95
        # are NaN, as they should be, without numpy's warnings about empty slices
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        summary = summarize(result)

    endpoint = settings.endpoint
    driver: dict[str, Any] = {
        "endpoint": endpoint.kind,
        "target": _public_url(endpoint.target),
        "path": endpoint.path,
        "stream": endpoint.stream,
        "time_scale": plan.time_scale,
        "scenario_duration_s": plan.scenario.duration_s,
        "scenario_warmup_s": plan.scenario.warmup_s,
        "requests_planned": planned,
        "requests_recorded": n,
        "requests_missing": missing,
        "truncated": plan.truncated,
        "complete": complete,
        **dict(extra),
    }
    if isinstance(driver.get("target"), str):
        driver["target"] = _public_url(driver["target"])
    driver = _redact(driver, secrets)
    summary["driver"] = driver
    summary = _redact(summary, secrets)
    record = {**driver, "settings": _redact(_settings_record(settings), secrets)}

    names = list(columns)
    write_atomic(
        out / REQUESTS_CSV,
        csv_bytes(names, zip(*(columns[c].tolist() for c in names), strict=True)),
    )
    write_atomic(out / SUMMARY_JSON, json_bytes(summary))
    write_atomic(out / DRIVER_JSON, json_bytes(record))
    write_atomic(out / MANIFEST_JSON, json_bytes(manifest.model_dump(mode="json")))
    return result, summary


# --- generator health ----------------------------------------------------------------------


def _send_lags(source: Path | Sequence[float] | np.ndarray) -> tuple[np.ndarray, int]:
    """(send lags of the requests sent, requests not sent) from a requests.csv or an array
    of send lags (NaN: not sent)."""
    if isinstance(source, Path):
        columns, _ = read_samples(source, ())
        lags = columns["send_lag_s"]
        shed = int((columns["outcome"] == "shed").sum())
        sent = lags[~np.isnan(lags) & (columns["outcome"] != "shed")]
        return sent, shed
    lags = np.asarray(source, dtype=float).reshape(-1)
    sent = lags[~np.isnan(lags)]
    return sent, int(lags.size - sent.size)


def generator_health(
    source: Path | Sequence[float] | np.ndarray,
    *,
    intended_rps: float,
    duration_s: float,
    cpu_seconds: float,
) -> dict[str, Any]:
    """Did the load generator keep up? Figures and a verdict for one generator process.

    ``source``: a ``requests.csv`` or the send lags (actual − intended send time, seconds;
    NaN for a request not sent). ``intended_rps``: the requests the plan scheduled in the
    period over ``duration_s`` (not the scenario's nominal rate, so a perfect generator
    scores exactly 1); ``duration_s``: the period the requests were sent in (the run's
    elapsed replay time); ``cpu_seconds``: the process's CPU time (user + system) in it.

    Returns ``intended_rps``, ``achieved_rps``, ``achieved_ratio``, ``sent``, ``not_sent``,
    ``send_lag_p50_s`` / ``_p95_s`` / ``_p99_s`` / ``_max_s``, ``send_lag_limit_s``,
    ``cpu_seconds``, ``cpu_share`` (of one core), ``suspect`` and ``reasons``.

    ``suspect`` is True, with one ``reasons`` entry per failed check, when:

    - fewer than :data:`RATE_RATIO_MIN` (99 %) of the intended requests per second were sent
      (requests were shed at ``max_in_flight`` or never sent);
    - the p99 send lag exceeds ``max(LAG_FLOOR_S, min(LAG_P99_MAX_S, LAG_GAP_FRACTION × mean
      inter-arrival gap))``: 50 ms at low rates (lag that large shows in every latency
      figure), a tenth of the mean gap at higher ones (beyond it the arrival process is
      distorted: bursts smear and gaps close), but never under 2 ms (the timer resolution of
      a busy event loop, below which lag is noise);
    - the process used more than :data:`CPU_SHARE_MAX` (90 %) of one core: a gevent process
      runs on one core, and near it the lag is about to grow.
    """
    sent, not_sent = _send_lags(source)
    n_sent = int(sent.size)
    achieved = n_sent / duration_s if duration_s > 0 else math.nan
    ratio = achieved / intended_rps if intended_rps > 0 else math.nan
    gap = 1.0 / intended_rps if intended_rps > 0 else math.inf
    limit = max(LAG_FLOOR_S, min(LAG_P99_MAX_S, LAG_GAP_FRACTION * gap))
    if n_sent:
        p50, p95, p99 = (float(v) for v in np.percentile(sent, [50, 95, 99]))
        lag = {"p50": p50, "p95": p95, "p99": p99, "max": float(sent.max())}
    else:
        lag = dict.fromkeys(("p50", "p95", "p99", "max"), math.nan)
    lag_figures = {f"send_lag_{name}_s": value for name, value in lag.items()}
    cpu_share = cpu_seconds / duration_s if duration_s > 0 else math.nan
    reasons: list[str] = []
    if not math.isnan(ratio) and ratio < RATE_RATIO_MIN:
        reasons.append(
            f"sent {achieved:.4g} req/s of {intended_rps:.4g} intended ({ratio:.1%}; "
            f"{not_sent} not sent)"
        )
    if not math.isnan(lag["p99"]) and lag["p99"] > limit:
        reasons.append(f"p99 send lag {lag['p99'] * 1000:.3g} ms is over {limit * 1000:.3g} ms")
    if not math.isnan(cpu_share) and cpu_share > CPU_SHARE_MAX:
        reasons.append(f"driver CPU at {cpu_share:.0%} of one core")
    return {
        "intended_rps": intended_rps,
        "achieved_rps": achieved,
        "achieved_ratio": ratio,
        "sent": n_sent,
        "not_sent": not_sent,
        **lag_figures,
        "send_lag_limit_s": limit,
        "cpu_seconds": cpu_seconds,
        "cpu_share": cpu_share,
        "suspect": bool(reasons),
        "reasons": reasons,
    }
