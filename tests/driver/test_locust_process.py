"""The Locust process on its own (``python -m ragstress.driver.locust_process``): its JSON
lines, its worker processes and message protocol, transport failures and stopping.

It is only ever run as a subprocess: importing it would monkey-patch the test process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from ragstress.driver.spec import EndpointSettings, RunSettings
from ragstress.results.store import read_run
from tests.driver.targets import Target, running_target

ROOT = Path(__file__).resolve().parents[2]
ID_TEMPLATE = '{"id": {{id}}, "query": "{{query}}"}'
PROGRESS_KEYS = {"t", "sent", "done", "in_flight", "rate", "p95_s", "errors", "shed"}


@pytest.fixture(scope="module")
def server() -> Iterator[Target]:
    with running_target() as target:
        yield target


@pytest.fixture
def target(server: Target) -> Target:
    server.reset()
    return server


def settings(
    tmp_path: Path,
    name: str,
    url: str,
    *,
    duration_s: float,
    rate: float,
    arrivals: str = "constant",
    **endpoint: Any,
) -> RunSettings:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        f"name: process-test\nduration_s: {duration_s}\nseed: 4\n"
        f"arrivals: {{kind: {arrivals}, rate: {rate}}}\n"
    )
    return RunSettings(
        scenario=scenario,
        endpoint=EndpointSettings(target=url, **endpoint),
        out=tmp_path / name,
    )


def command(run: RunSettings, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ragstress.driver.locust_process",
        "--settings",
        run.model_dump_json(),
        *args,
    ]


def lines(stdout: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(events, progress lines) of the process's stdout; every line is JSON."""
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    events = [r for r in records if "event" in r]
    progress = [r for r in records if "event" not in r]
    return events, progress


def run_process(run: RunSettings, *args: str, timeout: float = 60) -> list[dict[str, Any]]:
    done = subprocess.run(
        command(run, *args), check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    events, progress = lines(done.stdout)
    assert progress, done.stdout
    for record in progress:
        assert set(record) == PROGRESS_KEYS
    assert events[-1]["event"] == "finished"
    return progress


def test_two_worker_processes_replay_exactly_the_single_process_requests(
    target: Target, tmp_path: Path
) -> None:
    kwargs: dict[str, Any] = {
        "kind": "template",
        "path": "/json?delay_ms=5",
        "body_template": ID_TEMPLATE,
        "stream": False,
    }
    one = settings(
        tmp_path, "one", target.url, duration_s=1.5, rate=30, arrivals="poisson", **kwargs
    )
    run_process(one)
    single_ids = sorted(target.ids)
    assert all(count == 1 for count in target.ids.values())
    target.reset()

    two = one.model_copy(update={"out": tmp_path / "two"})
    progress = run_process(two, "--workers", "2")
    assert all(count == 1 for count in target.ids.values())
    assert sorted(target.ids) == single_ids

    first, second = read_run(one.out), read_run(two.out)
    assert sorted(first.requests["id"].tolist()) == single_ids
    assert sorted(second.requests["id"].tolist()) == single_ids
    assert np.array_equal(first.requests["arrival_s"], second.requests["arrival_s"])
    assert set(second.requests["outcome"].tolist()) == {"ok"}
    assert second.manifest.complete
    driver = json.loads((two.out / "driver.json").read_text())
    assert driver["workers"] == 2
    assert len(driver["cpu_seconds_by_process"]) == 2
    assert progress[-1]["done"] == len(single_ids)
    assert float(np.percentile(second.requests["send_lag_s"], 99)) < 0.020


def test_refused_connections_are_error_connect(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = settings(tmp_path, "run", f"http://127.0.0.1:{port}", duration_s=1, rate=5)
    progress = run_process(run)
    result = read_run(run.out)
    assert len(result) == 5
    assert set(result.requests["outcome"].tolist()) == {"error_connect"}
    assert progress[-1]["errors"] == 5
    assert all(result.requests["status"] == 0)


def test_stalled_streams_and_slow_answers_time_out(target: Target, tmp_path: Path) -> None:
    stalled = settings(
        tmp_path,
        "stalled",
        target.url,
        duration_s=1,
        rate=3,
        path="/sse?first_ms=50&last_ms=3000&tokens=2",
        stall_timeout_s=0.4,
    )
    run_process(stalled)
    cols = read_run(stalled.out).requests
    assert set(cols["outcome"].tolist()) == {"error_stream"}
    assert all("stalled" in e for e in cols["error"].tolist())
    assert np.all(np.abs(cols["latency_s"] - 0.45) < 0.06)  # the stall timer, from the token

    slow = settings(
        tmp_path,
        "slow",
        target.url,
        duration_s=1,
        rate=3,
        path="/json?delay_ms=3000",
        stream=False,
        timeout_s=0.5,
    )
    run_process(slow)
    cols = read_run(slow.out).requests
    assert set(cols["outcome"].tolist()) == {"timeout"}
    assert np.all(np.abs(cols["latency_s"] - 0.5) < 0.05)


def test_sigterm_stops_a_distributed_run_and_its_workers(target: Target, tmp_path: Path) -> None:
    run = settings(
        tmp_path,
        "run",
        target.url,
        duration_s=30,
        rate=20,
        path="/json?delay_ms=200",
        stream=False,
    )
    proc = subprocess.Popen(
        command(run, "--workers", "2"), stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            if record.get("done", 0) > 0:
                break
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    events, _ = lines(stdout)
    assert events[-1]["event"] == "finished"
    assert events[-1]["complete"] is False
    time.sleep(0.2)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    result = read_run(run.out)
    assert result.manifest.complete is False
    assert 10 < len(result) < 600
    assert set(result.requests["outcome"].tolist()) == {"ok"}
    ids = result.requests["id"]
    assert len(set(ids.tolist())) == len(ids)
