"""Sweeps on a real Dask cluster (a scheduler and two worker processes on this machine): the
same rows as a serial run, and every way of getting ``--dask`` wrong is one line, exit 2."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ragstress.capacity import dask_backend, parse_set, plan_points, run_sweep
from ragstress.capacity.dask_backend import dask_executor
from ragstress.capacity.jobs import run_plan_job
from ragstress.capacity.planner import PlanSettings
from ragstress.capacity.search import SearchSettings
from ragstress.cli import main
from ragstress.config import ConfigError, Profile
from tests.builders import mmc_profile, poisson_scenario

distributed = pytest.importorskip("distributed")

# One pool stage: c = 2 servers, exponential service with mean 0.1 s (as in test_sweep.py).
PROFILE = mmc_profile(servers=2, mean_s=0.1)
SCENARIO = poisson_scenario(duration_s=20, warmup_s=2, seed=11, slo={"latency_s": {"p95": 0.5}})

SCENARIO_YAML = """\
name: tiny
duration_s: 10
seed: 5
arrivals: {kind: poisson, rate: 1}
"""
PROFILE_YAML = """\
name: one-pool
stages:
  - kind: pool
    name: generate
    concurrency: 2
    service: {kind: exponential, mean: 0.1}
"""


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a local cluster: a scheduler and two single-threaded worker processes."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    scenario = tmp_path / "scenario.yaml"
    profile = tmp_path / "profile.yaml"
    scenario.write_text(SCENARIO_YAML)
    profile.write_text(PROFILE_YAML)
    return scenario, profile


def _canon(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN ≠ NaN; compare rows with NaN as None (and everything else exactly)."""
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in rows
    ]


def _sweep(files: tuple[Path, Path], out: Path, *flags: str) -> tuple[int, str]:
    scenario, profile = files
    args = ["sweep", str(scenario), "--profile", str(profile), "--out", str(out), *flags]
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def _one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


class _Counting(Executor):
    """Passes calls on to another executor and counts them."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.calls = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        return self.inner.submit(fn, *args, **kwargs)


def test_dask_rows_equal_serial_rows_and_run_in_worker_processes(scheduler: str) -> None:
    overrides = [parse_set("stages.work.replicas=1,2")]
    points = plan_points(SCENARIO, PROFILE, [6.0, 12.0], overrides, replications=2)
    serial = run_sweep(points, SCENARIO, PROFILE, workers=1)
    seen: list[float] = []
    with dask_executor(scheduler) as executor:
        counting = _Counting(executor)
        rows = run_sweep(points, SCENARIO, PROFILE, executor=counting, progress=seen.append)
        pids = {executor.submit(os.getpid).result(timeout=30) for _ in range(6)}
    assert counting.calls == len(points) == 8  # every point went to the cluster
    assert _canon(rows) == _canon(serial)
    assert seen[-1] == 1.0
    # replications and configurations differ, so the comparison above is not vacuous
    assert serial[0]["latency_p95_s"] != serial[1]["latency_p95_s"]
    assert serial[0]["work_utilisation"] != serial[4]["work_utilisation"]
    # the executor runs calls in the cluster's worker processes, not here
    with distributed.Client(scheduler, set_as_default=False) as client:
        workers = set(client.run(os.getpid).values())
    assert len(workers) == 2
    assert os.getpid() not in workers
    assert pids <= workers


def test_cli_dask_writes_the_same_files_as_a_serial_run(
    scheduler: str, files: tuple[Path, Path], tmp_path: Path
) -> None:
    flags = ["--rates", "2,4", "--set", "stages.generate.replicas=1,2", "--replications", "2"]
    code, output = _sweep(files, tmp_path / "local", *flags, "--workers", "1", "-q")
    assert code == 0, output
    code, output = _sweep(files, tmp_path / "dask", *flags, "--dask", scheduler)
    assert code == 0, output
    assert "8 runs" in output
    for name in ("sweep.csv", "sweep.json", "capacity.csv"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_unreachable_scheduler_is_one_line_and_quick(
    files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dask_backend, "CONNECT_TIMEOUT_S", 0.5)
    started = time.monotonic()
    code, output = _sweep(files, tmp_path / "out", "--rates", "2", "--dask", "tcp://127.0.0.1:1")
    assert time.monotonic() - started < 10
    assert code == 2
    line = _one_line(output)
    # the reason depends on how the last retry failed: refused, or timed out on a busy machine
    assert line.startswith("--dask tcp://127.0.0.1:1: cannot reach the scheduler ("), line
    assert line.endswith(" 0.5 s)"), line
    assert not (tmp_path / "out").exists()


def test_a_port_that_accepts_but_never_answers_does_not_hang() -> None:
    # Client's own timeout covers the connection, not Dask's handshake after it
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; no one reads
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with (
            pytest.raises(ConfigError, match="accepted the connection but sent no Dask handshake"),
            dask_executor(address, timeout=0.3),
        ):
            pass
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "address", ["foo", "127.0.0.1:8786", "tcp://host", "http://host:8786", "tcp://host:0"]
)
def test_bad_address_is_one_line(files: tuple[Path, Path], tmp_path: Path, address: str) -> None:
    code, output = _sweep(files, tmp_path / "out", "--rates", "2", "--dask", address)
    assert code == 2
    assert _one_line(output) == (
        f"--dask {address}: not a scheduler address "
        "(allowed: tcp://host:port or tls://host:port, e.g. tcp://scheduler:8786)"
    )
    assert not (tmp_path / "out").exists()


def test_dask_and_workers_together_are_refused(files: tuple[Path, Path], tmp_path: Path) -> None:
    code, output = _sweep(
        files, tmp_path / "out", "--rates", "2", "--workers", "2", "--dask", "tcp://h:8786"
    )
    assert code == 2
    line = _one_line(output)
    assert "--dask" in line
    assert "--workers" in line


def test_missing_distributed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import now fails as if absent
    with (
        pytest.raises(ConfigError) as err,
        dask_executor("tcp://127.0.0.1:8786"),
    ):
        pass
    assert err.value.problems == ["--dask: needs the 'dask' extra: pip install 'ragstress[dask]'"]


def test_plan_on_dask_equals_the_serial_plan(scheduler: str, tmp_path: Path) -> None:
    profile = Profile.model_validate(
        {
            **PROFILE.model_dump(mode="json"),
            "knobs": [
                {"key": "stages.work.replicas", "values": [1, 2, 3, 4, 5, 6], "monotone": True}
            ],
        }
    )
    scenario = SCENARIO.model_copy(update={"duration_s": 60.0})
    settings = PlanSettings(
        peak_rps=20.0,
        headroom=0.2,
        top=2,
        search=SearchSettings(tolerance=0.1, replications=2, max_replications=4, seed=3),
    )
    local = run_plan_job(scenario, profile, settings, tmp_path / "local", workers=1)
    with dask_executor(scheduler) as executor:
        run_plan_job(scenario, profile, settings, tmp_path / "dask", executor=executor)
    assert local.chosen is not None
    assert local.evaluated < 6  # not vacuous: the planner pruned
    for name in ("plan.json", "plan.csv"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
