"""A whole sweep job: grid, knee and capacity per configuration, and the fault timeline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ragstress.capacity import SearchSettings, parse_set
from ragstress.capacity.jobs import run_sweep_job
from ragstress.config import Scenario
from ragstress.results import read_run
from tests.builders import mmc_profile, poisson_scenario

# c = 1 or 2 servers, exponential service with mean 0.1 s: capacity 10 or 20 req/s.
PROFILE = mmc_profile(servers=2, mean_s=0.1)
SCENARIO = poisson_scenario(
    duration_s=60, warmup_s=5, seed=3, rate=5, slo={"latency_s": {"p95": 0.6}}
)
SEARCH = SearchSettings(tolerance=0.05, replications=2, max_replications=4)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_sweep_job_writes_grid_and_capacity_per_configuration(tmp_path: Path) -> None:
    rates = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0]
    job = run_sweep_job(
        SCENARIO,
        PROFILE,
        rates,
        [parse_set("stages.work.concurrency=1,2")],
        tmp_path,
        search=SEARCH,
        workers=1,
    )
    assert len(_read(tmp_path / "sweep.csv")) == 2 * len(rates)
    table = _read(tmp_path / "capacity.csv")
    assert [r["config"] for r in table] == ["work.concurrency=1", "work.concurrency=2"]
    assert [r["stages.work.concurrency"] for r in table] == ["1", "2"]
    one, two = (float(r["max_rate_rps"]) for r in table)
    # M/M/1 at μ = 10: p95 = ln 20 / (10 − λ) ≤ 0.6 s ⇔ λ ≤ 5.0; M/M/2 holds to about 15.4
    assert 4.0 < one < 6.0
    assert 13.0 < two < 17.5
    for row in table:
        low, high = float(row["bracket_low_rps"]), float(row["bracket_high_rps"])
        assert low == float(row["max_rate_rps"]) < high
        assert row["confident"] in {"True", "False"}
        assert int(row["runs"]) >= 2 * int(row["probes"]) > 0
    # twice the servers: the latency curve bends at a higher load
    knees = [float(r["knee_rps"]) for r in table]
    assert knees[0] < knees[1]
    document = json.loads((tmp_path / "capacity.json").read_text())
    assert document["slo"] == {"latency_s": {"p95": 0.6}}
    assert document["search"]["seed"] == SCENARIO.seed
    probes = document["probes"]["work.concurrency=2"]
    assert len(probes) == int(table[1]["probes"])
    assert job.timeline is None
    assert not (tmp_path / "timeline").exists()


def test_without_an_slo_there_is_a_knee_but_no_search(tmp_path: Path) -> None:
    scenario = SCENARIO.model_copy(
        update={"slo": SCENARIO.slo.model_copy(update={"latency_s": None})}
    )
    job = run_sweep_job(
        scenario, PROFILE, [2.0, 8.0, 14.0, 18.0], [], tmp_path, search=SEARCH, workers=1
    )
    assert job.capacities is None
    (row,) = _read(tmp_path / "capacity.csv")
    assert row["max_rate_rps"] == ""
    assert float(row["knee_rps"]) in {8.0, 14.0}


def test_fault_scenario_keeps_a_timeline_run(tmp_path: Path) -> None:
    scenario = Scenario.model_validate(
        {
            **SCENARIO.model_dump(mode="json"),
            "faults": [{"kind": "outage", "stage": "work", "start_s": 20, "end_s": 30}],
        }
    )
    job = run_sweep_job(scenario, PROFILE, [4.0, 8.0], [], tmp_path, search=None, workers=1)
    assert job.timeline == tmp_path / "timeline"
    run = read_run(job.timeline)
    # the scenario as written: its own 5 req/s, not a grid rate
    assert 200 < run.requests["arrival_s"].size < 400
    # an outage refuses connections: the window's requests fail, the others are answered
    outcomes = run.requests["outcome"].tolist()
    assert "error_connect" in outcomes
    assert "ok" in outcomes
