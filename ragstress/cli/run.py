"""``ragstress run``: replay a scenario against a live endpoint and measure it.

The command checks every flag and file up front, then starts the load generator
(``python -m ragstress.driver.locust_process``) as a child process in its own process group:
Locust patches its whole process with gevent, so it never runs inside the CLI. The child
prints one JSON line a second (rendered here on stderr) and writes the run folder; this
command then prints the SLO verdict and the generator's health, and exits 3 when an SLO was
missed, 0 when all held, 130 after Ctrl-C (once the child wrote what it gathered).

Ctrl-C or SIGTERM is forwarded to the child once, as SIGINT (it stops sending, gives the
requests in flight 2 s, writes the partial result); a second one kills it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click
from pydantic import ValidationError

from ragstress.driver.spec import DEFAULT_PATHS, EndpointSettings, RunSettings

__all__ = ["run"]

EXIT_SLO_MISSED = 3
EXIT_INTERRUPTED = 130
STALL_TIMEOUT_S = 30.0  # the longest gap allowed inside a stream (at most --timeout)

_KINDS = ("rag", "openai-chat", "template")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# RunSettings fields → the flag that sets them and what it allows
_FLAGS: dict[tuple[str, ...], tuple[str, str]] = {
    ("endpoint", "target"): ("--target", "an http:// or https:// URL, e.g. http://127.0.0.1:8080"),
    ("endpoint", "timeout_s"): ("--timeout", "seconds, more than 0 and at most 3600"),
    ("time_scale",): ("--time-scale", "a factor more than 0 and at most 1000000"),
    ("max_requests",): ("--max-requests", "a whole number from 1 to 100000000"),
    ("max_in_flight",): ("--max-in-flight", "a whole number from 1 to 1000000"),
    ("seed",): ("--seed", "a whole number, 0 or more"),
    ("chaos",): ("--chaos", "the proxy's control URL, e.g. http://127.0.0.1:8474"),
}


def _default_out() -> Path:
    return Path("results") / time.strftime("run-%Y%m%d-%H%M%S")


@click.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--target", required=True, help="Base URL of the service, e.g. http://host:8080.")
@click.option(
    "--profile",
    "-p",
    type=click.Path(path_type=Path),
    default=None,
    help="The deployment's profile: stage columns, prices and system prompt size.",
)
@click.option(
    "--endpoint-kind",
    default="rag",
    show_default=True,
    help="What the target speaks: rag (the reference gateway's /v1/rag), openai-chat "
    "(/v1/chat/completions) or template (--body-template).",
)
@click.option("--path", "path", default=None, help="Request path [default: the kind's].")
@click.option(
    "--body-template",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON body with {{query}}, {{top_k}}, {{max_tokens}}, {{prompt}}, {{prompt_tokens}}, "
    "{{id}} (template kind).",
)
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'", help="Extra header.")
@click.option(
    "--header-env",
    "header_env",
    multiple=True,
    metavar="NAME=ENV_VAR",
    help="A header whose value is the environment variable ENV_VAR (never written anywhere).",
)
@click.option("--no-stream", is_flag=True, help="Ask for whole answers instead of streams.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds per request.")
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Load-generator processes on this machine; with --master, the remote workers to wait for.",
)
@click.option("--master", is_flag=True, help="Coordinate workers on other machines.")
@click.option("--worker", is_flag=True, help="Be a worker of the master at --master-host.")
@click.option("--master-host", default=None, help="The master's host (with --worker).")
@click.option("--master-port", type=int, default=5557, show_default=True, help="The master's port.")
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Replay this many times faster than the scenario's clock.",
)
@click.option(
    "--max-requests", type=int, default=1_000_000, show_default=True, help="Send at most these."
)
@click.option(
    "--max-in-flight",
    type=int,
    default=2000,
    show_default=True,
    help="Requests in flight at most; one due beyond that is recorded as shed.",
)
@click.option("--seed", type=int, default=None, help="Override the scenario's seed.")
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder to write [default: results/run-<date>-<time>].",
)
@click.option(
    "--chaos",
    "chaos",
    default=None,
    metavar="CONTROL_URL",
    help="The chaos proxy's control URL: the scenario's faults are played there in step with "
    "the load, and cleared at the end (also on Ctrl-C).",
)
@click.option("--web-ui", is_flag=True, help="Also serve Locust's web UI (for watching).")
@click.option("--web-port", type=int, default=8089, show_default=True, help="Port of the web UI.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but the verdict and errors.")
def run(
    *,
    scenario: Path,
    target: str,
    profile: Path | None,
    endpoint_kind: str,
    path: str | None,
    body_template: Path | None,
    headers: tuple[str, ...],
    header_env: tuple[str, ...],
    no_stream: bool,
    timeout: float,
    workers: int,
    master: bool,
    worker: bool,
    master_host: str | None,
    master_port: int,
    time_scale: float,
    max_requests: int,
    max_in_flight: int,
    seed: int | None,
    out: Path | None,
    chaos: str | None,
    web_ui: bool,
    web_port: int,
    quiet: bool,
) -> None:
    """Replay SCENARIO open loop against the service at --target and measure every request.

    Requests are sent at the scenario's arrival times whatever the service does (latency
    counts from when a request was due, not from when it was sent), streamed answers are
    timed to their first token, and every request becomes a row of requests.csv, as in
    `ragstress simulate`. Exits 3 when an SLO of the scenario was missed.
    """
    from ragstress.cli.main import UserError, _user_errors
    from ragstress.driver.endpoints import check_template
    from ragstress.driver.replay import load_run_inputs

    role = _role(workers=workers, master=master, worker=worker, master_host=master_host)
    if not 1 <= master_port <= 65535:
        raise UserError(f"--master-port {master_port}: allowed: a port from 1 to 65535")
    if web_ui and not 1 <= web_port <= 65535:
        raise UserError(f"--web-port {web_port}: allowed: a port from 1 to 65535")
    endpoint = _endpoint(
        target=target,
        kind=endpoint_kind,
        path=path,
        body_template=body_template,
        headers=headers,
        header_env=header_env,
        stream=not no_stream,
        timeout=timeout,
    )
    try:
        check_template(endpoint)
    except ValueError as exc:
        raise UserError(f"--body-template {body_template}: {exc}") from None
    settings = _settings(
        scenario=scenario,
        profile=profile,
        seed=seed,
        time_scale=time_scale,
        max_requests=max_requests,
        max_in_flight=max_in_flight,
        endpoint=endpoint,
        out=out or _default_out(),
        chaos=chaos.rstrip("/") if chaos else None,
    )
    with _user_errors():
        scenario_model, _ = load_run_inputs(settings)
    _check_chaos(settings, scenario_model.faults)
    command = [
        sys.executable,
        "-m",
        "ragstress.driver.locust_process",
        "--settings",
        settings.model_dump_json(),
        "--role",
        role,
        "--workers",
        str(workers),
        "--master-port",
        str(master_port),
    ]
    if role == "worker":
        command += ["--master-host", str(master_host)]
    if web_ui:
        command += ["--web-ui", "--web-port", str(web_port)]
    started = time.time()
    code, events, signals = _supervise(command, quiet=quiet)
    interrupted = code == EXIT_INTERRUPTED or signals > 0
    errors = [str(e.get("message")) for e in events if e.get("event") == "error"]
    if role == "worker":
        if code == 2 and errors:  # its files or flags
            raise UserError(errors[-1])
        if code not in (0, EXIT_INTERRUPTED):
            raise _GeneratorFailedError(code, errors[-1] if errors else None)
        sys.exit(code)
    finished = any(e.get("event") == "finished" for e in events)
    if not finished:
        if code == 2 and errors and not interrupted:  # its files or flags
            raise UserError(errors[-1])
        if not _salvage(settings, code=code, started=started, workers=workers):
            if interrupted:
                click.echo("interrupted before the run started: nothing was written", err=True)
                sys.exit(EXIT_INTERRUPTED)
            raise _GeneratorFailedError(code, errors[-1] if errors else None)
    missed = _verdict(settings.out, quiet=quiet)
    if interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if code != 0 or not finished:
        raise _GeneratorFailedError(code, errors[-1] if errors else None)
    if missed:
        sys.exit(EXIT_SLO_MISSED)


class _GeneratorFailedError(click.ClickException):
    """The load generator died or failed (not the user's doing): exit code 1."""

    exit_code = 1

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(
            message or f"the load generator failed (exit code {code}); see the messages above"
        )

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


def _check_chaos(settings: RunSettings, faults: Sequence[Any]) -> None:
    """--chaos: the proxy answers; without it, a scenario with faults is measured without
    them, which is worth one line of warning."""
    from ragstress.cli.main import UserError

    if settings.chaos is None:
        if faults:
            click.echo(
                f"note: the scenario has {len(faults)} fault(s); without --chaos they are not "
                "played (the run measures the service as it is)",
                err=True,
            )
        return
    from ragstress.chaos.client import ChaosClient, ChaosError

    try:
        ChaosClient(settings.chaos).wait_ready(timeout_s=5.0)
    except ChaosError as exc:
        raise UserError(f"--chaos {settings.chaos}: {exc}") from None


def _salvage(settings: RunSettings, *, code: int, started: float, workers: int) -> bool:
    """A generator that ended without writing its run folder (killed by a second Ctrl-C, or
    crashed) leaves its samples in requests.csv: make them a run folder, marked incomplete.
    False when there is nothing to keep."""
    from datetime import UTC, datetime

    from ragstress.config import ConfigError
    from ragstress.driver.recorder import REQUESTS_CSV, finalize_run
    from ragstress.driver.replay import build_replay, load_run_inputs

    if settings.chaos is not None:
        from ragstress.driver.chaos_link import clear_quietly

        problem = clear_quietly(settings.chaos)
        if problem is not None:
            click.echo(f"could not clear the chaos proxy's faults: {problem}", err=True)
    if not (Path(settings.out) / REQUESTS_CSV).is_file():
        return False
    endpoint = settings.endpoint
    try:
        scenario, profile = load_run_inputs(settings)
        plan = build_replay(settings, scenario, profile)
    except ConfigError as exc:  # a file changed during the run
        click.echo(f"cannot keep the samples: {'; '.join(exc.problems)}", err=True)
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty stage wait columns
        finalize_run(
            settings.out,
            plan,
            settings=settings,
            complete=False,
            started_at=datetime.fromtimestamp(started, tz=UTC).isoformat(),
            notes=[
                f"the load generator ended without finishing (exit code {code}); this folder "
                "holds the samples it had written, without its health figures"
            ],
            extra={
                "target": endpoint.target,
                "kind": endpoint.kind,
                "time_scale": settings.time_scale,
                "workers": workers,
            },
        )
    return True


# --- flags ---------------------------------------------------------------------------------


def _role(*, workers: int, master: bool, worker: bool, master_host: str | None) -> str:
    from ragstress.cli.main import UserError

    if workers < 1 or workers > 1024:
        raise UserError(f"--workers {workers}: allowed: a whole number from 1 to 1024")
    if master and worker:
        raise UserError("--master and --worker: give one or the other")
    if worker:
        if not master_host:
            raise UserError("--worker: needs --master-host (the machine running --master)")
        if workers != 1:
            raise UserError("--workers: not with --worker (start one worker per process)")
        return "worker"
    if master_host is not None:
        raise UserError("--master-host: only with --worker")
    return "master" if master else "local"


def _endpoint(
    *,
    target: str,
    kind: str,
    path: str | None,
    body_template: Path | None,
    headers: tuple[str, ...],
    header_env: tuple[str, ...],
    stream: bool,
    timeout: float,
) -> EndpointSettings:
    from ragstress.cli.main import UserError

    if kind not in _KINDS:
        raise UserError(f"--endpoint-kind {kind}: allowed: {', '.join(_KINDS)}")
    if path is not None and (not path.startswith("/") or any(c.isspace() for c in path)):
        raise UserError(f"--path {path}: allowed: a path starting with /, e.g. /v1/generate")
    if kind == "template":
        if path is None:
            raise UserError("--path: required with --endpoint-kind template")
        if body_template is None:
            raise UserError("--body-template: required with --endpoint-kind template")
    elif body_template is not None:
        raise UserError("--body-template: only with --endpoint-kind template")
    template = None
    if body_template is not None:
        try:
            template = body_template.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--body-template {body_template}: cannot read it ({exc})") from None
    fixed: dict[str, str] = {}
    for text in headers:
        name, sep, value = text.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.match(name) or "\n" in value or "\r" in value:
            raise UserError(f"--header {text}: allowed: 'Name: value', e.g. 'X-Team: search'")
        fixed[name] = value
    from_env: dict[str, str] = {}
    for text in header_env:
        name, sep, variable = text.partition("=")
        name, variable = name.strip(), variable.strip()
        if not sep or not _HEADER_NAME.match(name) or not _ENV_NAME.match(variable):
            raise UserError(
                f"--header-env {text}: allowed: Name=ENV_VAR, e.g. Authorization=API_KEY_HEADER"
            )
        if not os.environ.get(variable):
            raise UserError(f"--header-env {text}: the environment variable {variable} is not set")
        from_env[name] = variable
    if not (timeout > 0 and math.isfinite(timeout)):
        raise UserError(f"--timeout {timeout:g}: allowed: {_FLAGS[('endpoint', 'timeout_s')][1]}")
    try:
        return EndpointSettings(
            kind=kind,  # checked against _KINDS above
            target=target.rstrip("/"),
            path=path if path is not None else DEFAULT_PATHS.get(kind),
            stream=stream,
            body_template=template,
            headers=fixed,
            header_env=from_env,
            timeout_s=timeout,
            stall_timeout_s=min(STALL_TIMEOUT_S, timeout),
        )
    except ValidationError as exc:
        raise UserError(_flag_problem(exc, {"target": target, "timeout_s": timeout})) from None


def _settings(**fields: Any) -> RunSettings:
    from ragstress.cli.main import UserError

    try:
        return RunSettings(**fields)
    except ValidationError as exc:
        raise UserError(_flag_problem(exc, fields)) from None


def _flag_problem(exc: ValidationError, given: dict[str, Any]) -> str:
    """The first problem of a validation error, named by its flag."""
    error = exc.errors()[0]
    loc = tuple(str(p) for p in error["loc"])
    for key in (loc, ("endpoint", *loc)):
        if key in _FLAGS:
            flag, allowed = _FLAGS[key]
            value = given.get(key[-1], error.get("input"))
            return f"{flag} {value}: allowed: {allowed}"
    return f"{'.'.join(loc)}: {error['msg']}"


# --- the child -----------------------------------------------------------------------------


class _Forwarder:
    """Ctrl-C / SIGTERM → SIGINT to the child, once; a second one kills it."""

    def __init__(self, child: subprocess.Popen[str], quiet: bool) -> None:
        self.child = child
        self.quiet = quiet
        self.count = 0
        self.previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {
                s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)
            }

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        if self.child.poll() is not None:
            return
        if self.count == 1:
            click.echo(
                f"{signal.Signals(signum).name}: stopping the run and writing what was "
                "gathered (again to abandon it)",
                err=True,
            )
            self.child.send_signal(signal.SIGINT)
        else:
            click.echo("killing the load generator: the run folder may be incomplete", err=True)
            _kill_group(self.child)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _supervise(command: list[str], *, quiet: bool) -> tuple[int, list[dict[str, Any]], int]:
    """Run the child to its end, rendering its lines: its exit code, its events and the
    number of stop signals this process received meanwhile."""
    child = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,  # Ctrl-C at the terminal reaches this process only
    )
    forwarder = _Forwarder(child, quiet)
    assert child.stdout is not None
    assert child.stderr is not None
    relay = threading.Thread(target=_relay, args=(child.stderr,), daemon=True)
    relay.start()
    events: list[dict[str, Any]] = []
    live = _Live(enabled=not quiet)
    try:
        for raw in child.stdout:
            try:
                record = json.loads(raw)
            except ValueError:
                live.text(raw.rstrip("\n"))
                continue
            if not isinstance(record, dict):
                continue
            if "event" in record:
                events.append(record)
                live.event(record)
            else:
                live.progress(record)
        code = child.wait()
    finally:
        if child.poll() is None:  # an exception here: never leave the child behind
            _kill_group(child)
            child.wait()
        forwarder.restore()
        relay.join(2.0)
        live.close()
    return code, events, forwarder.count


def _kill_group(child: subprocess.Popen[str]) -> None:
    """SIGKILL to the generator and its worker processes (its own process group)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:  # gone already, or not a group leader
        child.kill()


def _relay(stream: IO[str]) -> None:
    for line in stream:
        click.echo(line.rstrip("\n"), err=True)


class _Live:
    """Progress on stderr: in place on a terminal, one line a second elsewhere."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.open = False

    def progress(self, p: dict[str, Any]) -> None:
        if not self.enabled:
            return
        p95 = p.get("p95_s")
        p95_text = "—" if p95 is None else f"{p95:.3f} s"
        line = (
            f"{p.get('t', 0):7.1f} s  sent {p.get('sent', 0):>7}  done {p.get('done', 0):>7}  "
            f"in flight {p.get('in_flight', 0):>5}  {p.get('rate', 0):8.1f} req/s  "
            f"p95 {p95_text}  errors {p.get('errors', 0)}  shed {p.get('shed', 0)}"
        )
        if self.tty:
            click.echo(f"\r{line}\033[K", err=True, nl=False)
            self.open = True
        else:
            click.echo(line, err=True)

    def event(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        if kind == "error":
            self._line(f"error: {e.get('message')}", always=True)
        elif kind == "plan":
            cut = " (cut by --max-requests)" if e.get("truncated") else ""
            self._line(
                f"replaying {e.get('requests')} requests over {e.get('duration_s', 0):.4g} s"
                f"{cut} from {e.get('workers')} process(es)"
            )
        elif kind == "web_ui":
            self._line(f"Locust web UI (watching only): {e.get('url')}", always=True)
        elif kind == "waiting_workers":
            self._line(
                f"waiting for {e.get('workers')} worker(s) on port {e.get('port')} "
                "(ragstress run ... --worker --master-host THIS_HOST)",
                always=True,
            )

    def text(self, line: str) -> None:
        self._line(line, always=True)

    def _line(self, text: str, *, always: bool = False) -> None:
        if not (self.enabled or always):
            return
        if self.open:
            click.echo("", err=True)
            self.open = False
        click.echo(text, err=True)

    def close(self) -> None:
        if self.open:
            click.echo("", err=True)
            self.open = False


# --- the verdict ---------------------------------------------------------------------------


def _verdict(out: Path, *, quiet: bool) -> bool:
    """Print the run's counts, SLO table and generator health; True when an SLO was missed."""
    from ragstress.results.store import read_summary

    summary = read_summary(out) or {}
    manifest = _read_json(out / "manifest.json")
    driver = _read_json(out / "driver.json")
    rows = summary.get("slo") or []
    if not quiet:
        state = "complete" if manifest.get("complete", False) else "INCOMPLETE"
        click.echo(
            f"{summary.get('requests', '?')} requests, {summary.get('answered', '?')} answered "
            f"(run {state})"
        )
        for note in manifest.get("notes") or []:
            click.echo(f"note: {note}")
    if rows:
        click.echo(_slo_table(rows))
    health = _health_line(driver)
    if health:
        click.echo(health)
    if not quiet:
        click.echo(f"wrote {out}/ (ragstress report {out} draws the charts)")
    return any(not row.get("met", False) for row in rows)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: Any, unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    return f"{value:.4g}{unit}"


def _slo_table(rows: list[dict[str, Any]]) -> str:
    width = max(len("objective"), *(len(str(r.get("objective", ""))) for r in rows))
    lines = [f"{'objective':<{width}} {'target':>10} {'measured':>10}  met"]
    for r in rows:
        met = "yes" if r.get("met") else "MISSED"
        lines.append(
            f"{r.get('objective', ''):<{width}} {_number(r.get('target')):>10} "
            f"{_number(r.get('value')):>10}  {met}"
        )
    return "\n".join(lines)


def _health_line(driver: dict[str, Any]) -> str:
    """One line from driver.json's generator health: achieved against intended rate, the
    p99 send lag, CPU, and SUSPECT with the reasons when the generator may have been the
    bottleneck."""
    health = driver.get("driver") if isinstance(driver.get("driver"), dict) else driver
    assert isinstance(health, dict)
    achieved = _first(health, "achieved_rps")
    intended = _first(health, "intended_rps")
    lag = _first(health, "send_lag_p99_s")
    if lag is None and isinstance(health.get("send_lag_s"), dict):
        lag = health["send_lag_s"].get("p99")
    cpu = _first(health, "cpu_share")
    if achieved is None and intended is None and lag is None:
        return ""
    parts = [f"generator: {_number(achieved)} of {_number(intended)} req/s intended"]
    if lag is not None:
        parts.append(f"send lag p99 {_number(lag * 1000 if _real(lag) else lag, ' ms')}")
    if cpu is not None:
        parts.append(f"CPU {_number(cpu * 100 if _real(cpu) else cpu, ' %')} of one core")
    line = ", ".join(parts)
    if health.get("suspect"):
        reasons = health.get("reasons") or []
        why = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
        line += "  SUSPECT" + (f": {why}" if why else "")
    return line


def _first(mapping: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    return None


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
