"""One driver process's open-loop ceiling, beside Locust's FastHttpUser and hey, on one server.

Usage: python benchmarks/driver_speed.py [--rates 500,1000,2000,3000,4000] [--seconds 10]
       [--connections 64] [--cpus-load 0] [--cpus-server LAST]
       [--profile FILE --profile-rate 2000 --profile-seconds 5]

The server is a trivial HTTP/1.1 loopback server in its own process (``asyncio.Protocol``:
every request, pipelined or split over reads, gets the same 11-byte JSON 200 answer on a
keep-alive connection), pinned to ``--cpus-server`` (default: the last CPU); every load
generator is pinned to ``--cpus-load`` (default: the first CPU), so on a 2-core machine the
server and the load never share a core. All three tools POST a small JSON body to it:

- ``ragstress run`` (one driver process: ``--workers 1``): for each of ``--rates`` a
  ``--seconds`` Poisson scenario at that constant rate, ``--endpoint-kind template
  --no-stream``. From the run's ``driver.json``: achieved against intended rate, the send lag
  (actual − intended send time) p50/p99 and the generator's CPU time while it sent (so CPU
  per request leaves out the imports and the plan); latency p50/p99 from ``requests.csv``
  (measured from the intended send time). A rate is *held* when the achieved rate is within
  1 % of the intended one and the send lag p99 is under 5 ms; the verdict is the highest
  rate held (goal: at least 2,000 req/s).
- Locust's plain ``FastHttpUser`` (one process, no ``--processes``): ``--connections`` users
  with no wait time, closed loop, for ``--seconds``; requests/s from the ``_stats.csv``
  Aggregated row, CPU from the locustfile's own ``getrusage`` between ``test_start`` and
  ``test_stop`` (the same window as the driver's figure).
- ``hey -z`` with ``--connections`` connections, closed loop; requests/s and latency from
  its summary, CPU from the process's resource usage (``os.wait4``). hey is also the check
  that the server is not the limit: it should answer several times the highest rate tried.

The phases run one after the other in one run (hey, Locust, then the driver's rates), so
the ratios compare tools under the same machine load; absolute figures on a shared machine
are noisy. The load average is printed before and after.

``--profile FILE`` adds a phase that runs the driver's process (``python -m
ragstress.driver.locust_process``) under cProfile at ``--profile-rate`` for
``--profile-seconds``, writes the stats to FILE and prints the top functions by own time
(cProfile slows the process down; use it to see where the time goes, not for the table).
Under gevent cProfile charges time spent in the event loop (idle included) to whatever frame
was on its stack at a greenlet switch (``_wait_in_flight`` shows seconds of "own" time): read
call counts and the leaf functions' own time, not cumulative times.

Traffic goes to 127.0.0.1 only; every phase is bounded (about ``--seconds`` + start-up) and
the server and the temporary folder are always removed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import math
import os
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ragstress.driver.spec import EndpointSettings, RunSettings
from ragstress.reference.processes import free_port, parse_cpus

ROOT = Path(__file__).resolve().parent.parent
PATH = "/x"
ANSWER = b'{"ok":true}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(ANSWER)).encode()
    + b"\r\n\r\n"
    + ANSWER
)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024
# The driver's body (placeholders filled per request) and the fixed body Locust and hey send,
# of the same shape and about the same size.
TEMPLATE = '{"id": {{id}}, "query": "{{query}}", "top_k": {{top_k}}, "max_tokens": {{max_tokens}}}'
FIXED_BODY = json.dumps(
    {"id": 1, "query": "how do I rotate the api keys", "top_k": 1, "max_tokens": 16}
)
HOLD_RATIO = 0.99
HOLD_LAG_S = 0.005
GOAL_RPS = 2000
PHASE_GRACE_S = 40.0  # start-up, the run folder and a timeout's worth, past --seconds

LOCUSTFILE = """\
import json
import resource
import time

from locust import FastHttpUser, constant, events, task

BODY = {body!r}
_window = {{}}


def _cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


@events.test_start.add_listener
def _start(**_):
    _window["cpu"], _window["t"] = _cpu(), time.perf_counter()


@events.test_stop.add_listener
def _stop(**_):
    if "cpu" in _window:
        with open({window!r}, "w") as f:
            elapsed = time.perf_counter() - _window["t"]
            json.dump({{"cpu_s": _cpu() - _window["cpu"], "elapsed_s": elapsed}}, f)


class Plain(FastHttpUser):
    wait_time = constant(0)

    @task
    def post(self):
        self.client.post({path!r}, data=BODY, headers={{"Content-Type": "application/json"}})
"""


# --- the server (its own process) ------------------------------------------------------------


class _Server(asyncio.Protocol):
    """Answers every complete request (head + Content-Length body) with RESPONSE."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        start = answers = 0
        close = False
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                if len(buf) - start > MAX_HEAD:
                    close = True
                break
            head = bytes(buf[start:end]).lower()
            length = _content_length(head)
            if length < 0:
                self.transport.write(RESPONSE * answers + BAD_REQUEST)
                self.transport.close()
                return
            stop = end + 4 + length
            if stop > len(buf):  # the body is still on its way
                break
            answers += 1
            start = stop
            if b"\r\nconnection: close" in head:
                close = True
                break
        if start:
            del buf[:start]
        if answers:
            self.transport.write(RESPONSE * answers)
        if close:
            self.transport.close()


def _content_length(head: bytes) -> int:
    """The body's length from a lower-cased request head; -1 when it cannot be served."""
    if b"\r\ntransfer-encoding:" in head:
        return -1  # chunked bodies: none of the three clients sends one
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at + 2)
    value = head[at + 17 : end if end > 0 else len(head)]
    try:
        length = int(value.strip())
    except ValueError:
        return -1
    return length if length >= 0 else -1


def serve(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Server, "127.0.0.1", port, backlog=4096)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gc.collect()
        gc.freeze()
        async with server:
            await stop.wait()

    asyncio.run(main())


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(
                    b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                    b"Connection: close\r\n\r\n{}"
                )
                if sock.recv(1024).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the server did not answer on port {port}")


# --- pinned children -------------------------------------------------------------------------


def _pinned(command: list[str], cpus: frozenset[int]) -> tuple[list[str], Any]:
    """The command pinned to ``cpus``: through taskset when there is one, else a preexec."""
    taskset = shutil.which("taskset")
    if taskset:
        return [taskset, "-c", ",".join(map(str, sorted(cpus))), *command], None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return command, pin


def _run_child(
    command: list[str], cpus: frozenset[int], timeout_s: float, env: dict[str, str] | None = None
) -> tuple[int, str, float]:
    """Run to its end (killed past ``timeout_s``): exit code, output, CPU seconds (its own
    and its reaped children's, from wait4)."""
    command, pin = _pinned(command, cpus)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,  # noqa: PLW1509 (one system call, no threads yet)
            start_new_session=True,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        status, usage = 0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    assert usage is not None
    return proc.returncode, text, usage.ru_utime + usage.ru_stime


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


# --- the phases ------------------------------------------------------------------------------


def _scenario(folder: Path, rate: float, seconds: float) -> Path:
    path = folder / f"poisson-{rate:g}.yaml"
    path.write_text(
        f"name: driver-speed-{rate:g}\n"
        f"duration_s: {seconds:g}\n"
        "seed: 7\n"
        f"arrivals: {{kind: poisson, rate: {{kind: constant, rps: {rate:g}}}}}\n"
        "requests:\n"
        "  query_tokens: {kind: deterministic, value: 8}\n"
        "  top_k: 1\n"
        "  chunk_tokens: {kind: deterministic, value: 16}\n"
        "  output_tokens: {kind: deterministic, value: 16}\n",
        encoding="utf-8",
    )
    return path


def _percentiles_ms(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50) * 1000, float(p99) * 1000


def driver_phase(
    tmp: Path, url: str, rate: float, args: argparse.Namespace, template: Path
) -> dict[str, Any]:
    out = tmp / f"rate-{rate:g}"
    command = [
        sys.executable,
        "-m",
        "ragstress.cli",
        "run",
        str(_scenario(tmp, rate, args.seconds)),
        "--target",
        url,
        "--endpoint-kind",
        "template",
        "--path",
        PATH,
        "--body-template",
        str(template),
        "--no-stream",
        "--max-in-flight",
        "2000",
        "-q",
        "--out",
        str(out),
    ]
    code, text, _ = _run_child(command, args.cpus_load, args.seconds + PHASE_GRACE_S)
    row: dict[str, Any] = {"tool": "ragstress run", "mode": f"open loop at {rate:,.0f} req/s"}
    if code not in (0, 3):
        print(f"ragstress run at {rate:g} req/s failed (exit code {code}):\n{_tail(text)}")
        return {**row, "error": f"exit code {code}"}
    try:
        health = json.loads((out / "driver.json").read_text(encoding="utf-8"))
        with (out / "requests.csv").open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as exc:
        print(f"ragstress run at {rate:g} req/s: cannot read its run folder ({exc})")
        return {**row, "error": "no run folder"}
    ok = [r for r in rows if r["outcome"] == "ok"]
    latency = np.array([float(r["latency_s"] or "nan") for r in ok], dtype=float)
    sent = int(health.get("sent") or 0)
    cpu_s = float(health.get("cpu_seconds") or math.nan)
    p50, p99 = _percentiles_ms(latency)
    return {
        **row,
        "rate": rate,
        "rps": float(health["achieved_rps"]),
        "intended": float(health["intended_rps"]),
        "ratio": float(health["achieved_ratio"]),
        "lag50": float(health["send_lag_p50_s"]) * 1000,
        "lag99": float(health["send_lag_p99_s"]) * 1000,
        "p50": p50,
        "p99": p99,
        "cpu_ms": 1000 * cpu_s / sent if sent else math.nan,
        "cpu_share": float(health.get("cpu_share") or math.nan),
        "failed": len(rows) - len(ok),
        "reasons": health.get("reasons") or [],
    }


def locust_phase(tmp: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    window = tmp / "locust-window.json"
    locustfile = tmp / "locustfile_plain.py"
    locustfile.write_text(
        LOCUSTFILE.format(body=FIXED_BODY, window=str(window), path=PATH), encoding="utf-8"
    )
    prefix = tmp / "locust"
    locust = Path(sys.executable).with_name("locust")
    n = args.connections
    command = [
        str(locust) if locust.exists() else "locust",
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        str(n),
        "-r",
        str(n),
        "-t",
        f"{args.seconds:g}s",
        "--host",
        url,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    code, text, total_cpu = _run_child(command, args.cpus_load, args.seconds + PHASE_GRACE_S)
    row: dict[str, Any] = {"tool": "Locust FastHttpUser", "mode": f"closed loop, {n} users"}
    stats = Path(f"{prefix}_stats.csv")
    if not stats.is_file():
        print(f"locust failed (exit code {code}):\n{_tail(text)}")
        return {**row, "error": f"exit code {code}"}
    with stats.open(newline="", encoding="utf-8") as f:
        total = next((r for r in csv.DictReader(f) if r["Name"] == "Aggregated"), None)
    if total is None:
        print(f"locust wrote no Aggregated row (exit code {code}):\n{_tail(text)}")
        return {**row, "error": "no statistics"}
    count = int(total["Request Count"])
    failed = int(total["Failure Count"])
    try:
        cpu_s = float(json.loads(window.read_text(encoding="utf-8"))["cpu_s"])
    except (OSError, ValueError, KeyError):
        cpu_s = math.nan
    return {
        **row,
        "rps": float(total["Requests/s"]),
        "p50": float(total["50%"]),
        "p99": float(total["99%"]),
        "cpu_ms": 1000 * cpu_s / count if count else math.nan,
        "cpu_ms_whole": 1000 * total_cpu / count if count else math.nan,
        "failed": failed,
    }


def hey_phase(url: str, args: argparse.Namespace) -> dict[str, Any]:
    n = args.connections
    row: dict[str, Any] = {"tool": "hey", "mode": f"closed loop, {n} connections"}
    hey = shutil.which("hey")
    if hey is None:
        print("hey is not installed (Debian package hey): its row is left out")
        return {**row, "error": "not installed"}
    command = [
        hey,
        "-z",
        f"{args.seconds:g}s",
        "-c",
        str(n),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-d",
        FIXED_BODY,
        url,
    ]
    code, text, cpu_s = _run_child(command, args.cpus_load, args.seconds + PHASE_GRACE_S)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if code != 0 or rps is None:
        print(f"hey failed (exit code {code}):\n{_tail(text)}")
        return {**row, "error": f"exit code {code}"}
    latency = dict(re.findall(r"(\d+)% in ([\d.]+) secs", text))
    ok = sum(int(c) for c in re.findall(r"\[200\]\s+(\d+) responses", text))
    errors = re.search(r"Error distribution:(.*)", text, re.DOTALL)
    failed = sum(int(c) for c in re.findall(r"\[(\d+)\]", errors.group(1))) if errors else 0
    return {
        **row,
        "rps": float(rps.group(1)),
        "p50": float(latency.get("50", "nan")) * 1000,
        "p99": float(latency.get("99", "nan")) * 1000,
        "cpu_ms": 1000 * cpu_s / ok if ok else math.nan,
        "failed": failed,
    }


def profile_phase(tmp: Path, url: str, args: argparse.Namespace, template: Path) -> None:
    """The driver's own process under cProfile: stats to ``--profile``, the top printed."""
    settings = RunSettings(
        scenario=_scenario(tmp, args.profile_rate, args.profile_seconds),
        endpoint=EndpointSettings(
            kind="template",
            target=url,
            path=PATH,
            stream=False,
            body_template=template.read_text(encoding="utf-8"),
        ),
        max_in_flight=2000,
        out=tmp / "profiled",
    )
    command = [
        sys.executable,
        "-m",
        "cProfile",
        "-o",
        str(Path(args.profile).resolve()),
        "-m",
        "ragstress.driver.locust_process",
        "--settings",
        settings.model_dump_json(),
    ]
    code, text, _ = _run_child(command, args.cpus_load, args.profile_seconds + PHASE_GRACE_S)
    if code != 0:
        print(f"the profiled driver failed (exit code {code}):\n{_tail(text)}")
        return
    health = json.loads((tmp / "profiled" / "driver.json").read_text(encoding="utf-8"))
    sent = int(health.get("sent") or 0)
    print(
        f"\nprofiled driver at {args.profile_rate:g} req/s for {args.profile_seconds:g} s: "
        f"{sent} sent, {health['achieved_rps']:.0f} req/s, send lag p99 "
        f"{health['send_lag_p99_s'] * 1000:.1f} ms, CPU {health['cpu_seconds']:.2f} s "
        f"(under cProfile); stats in {args.profile}"
    )
    stats = pstats.Stats(str(Path(args.profile).resolve()))
    stats.sort_stats("tottime").print_stats(30)


# --- the table -------------------------------------------------------------------------------


def _f(value: Any, spec: str) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    return format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| tool | mode | req/s achieved | achieved / intended | send lag p99 | "
        "latency p50 | latency p99 | CPU per request |"
    )
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tool']} | {r['mode']} | {r['error']} | | | | | |")
            continue
        ratio = _f(r.get("ratio"), ".3f")
        lag = _f(r.get("lag99"), ".2f")
        lines.append(
            f"| {r['tool']} | {r['mode']} | {_f(r['rps'], ',.0f')} | {ratio} | "
            f"{lag}{' ms' if lag != '—' else ''} | {_f(r['p50'], '.2f')} ms | "
            f"{_f(r['p99'], '.2f')} ms | {_f(r['cpu_ms'], '.3f')} ms |"
        )
    return "\n".join(lines)


def _held(row: dict[str, Any]) -> bool:
    return "error" not in row and row["ratio"] >= HOLD_RATIO and row["lag99"] < HOLD_LAG_S * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="500,1000,2000,3000,4000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cpus-load", default=None, help="default: the first CPU")
    parser.add_argument("--cpus-server", default=None, help="default: the last CPU")
    parser.add_argument("--profile", default=None, help="cProfile the driver into this file")
    parser.add_argument("--profile-rate", type=float, default=2000.0)
    parser.add_argument("--profile-seconds", type=float, default=5.0)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    rates = [float(x) for x in args.rates.split(",")]
    allowed = sorted(os.sched_getaffinity(0))
    args.cpus_load = parse_cpus(args.cpus_load) if args.cpus_load else frozenset(allowed[:1])
    args.cpus_server = parse_cpus(args.cpus_server) if args.cpus_server else frozenset(allowed[-1:])
    if args.cpus_load & args.cpus_server:
        print("note: the load and the server share CPUs: the figures measure both")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    command, pin = _pinned([sys.executable, __file__, "--serve", str(port)], args.cpus_server)
    with tempfile.TemporaryDirectory(prefix="driver-speed-") as folder:
        tmp = Path(folder)
        template = tmp / "body.json"
        template.write_text(TEMPLATE, encoding="utf-8")
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pin,  # noqa: PLW1509 (one system call, no threads yet)
            start_new_session=True,
        )
        try:
            _wait_listening(port, server)
            rows.append(hey_phase(url + PATH, args))
            rows.append(locust_phase(tmp, url, args))
            rows.extend(driver_phase(tmp, url, rate, args, template) for rate in rates)
            if args.profile:
                profile_phase(tmp, url, args, template)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
    load_after = os.getloadavg()

    print(
        f"\none driver process vs Locust FastHttpUser and hey, {args.seconds:g} s each, "
        f"loopback server on CPU {_cpus(args.cpus_server)}, load on CPU "
        f"{_cpus(args.cpus_load)} ({os.cpu_count()} CPUs; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after)"
    )
    print(table(rows))
    driver = [r for r in rows if r["tool"] == "ragstress run"]
    held = [r for r in driver if _held(r)]
    best = max((r["rate"] for r in held), default=0.0)
    met = "met" if best >= GOAL_RPS else "MISSED"
    print(
        f"\nhighest open-loop rate held: {best:,.0f} req/s (goal ≥ {GOAL_RPS:,}: {met}; held = "
        f"achieved within {1 - HOLD_RATIO:.0%} of intended and send lag p99 < "
        f"{HOLD_LAG_S * 1000:g} ms)"
    )
    for name, row in (("Locust FastHttpUser", rows[1]), ("hey", rows[0])):
        if "error" not in row and row["rps"] > 0:
            print(f"  = {best / row['rps']:.2f}× {name}'s closed-loop {row['rps']:,.0f} req/s")
    for r in driver:
        if "error" not in r and not _held(r):
            why = []
            if r["ratio"] < HOLD_RATIO:
                why.append(f"achieved {r['ratio']:.1%} of intended")
            if r["lag99"] >= HOLD_LAG_S * 1000:
                why.append(f"send lag p99 {r['lag99']:.2f} ms (p50 {r['lag50']:.2f} ms)")
            print(
                f"  not held at {r['rate']:,.0f} req/s: {'; '.join(why)}; driver CPU "
                f"{r['cpu_share']:.0%} of one core"
            )
    if "error" not in rows[1]:
        print(
            f"Locust CPU per request counts its load window; with start-up and exit it is "
            f"{rows[1]['cpu_ms_whole']:.3f} ms"
        )
    hey_row, top = rows[0], max(rates)
    if "error" not in hey_row:
        verdict = "well above" if hey_row["rps"] >= 2 * top else "NOT well above"
        print(
            f"server check: hey got {hey_row['rps']:,.0f} req/s from it, {verdict} the highest "
            f"rate tried ({top:,.0f} req/s)"
        )
    failed = sum(int(r.get("failed") or 0) for r in rows)
    if failed:
        print(f"{failed} requests failed in all (see the tools' outputs)")


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


if __name__ == "__main__":
    main()
