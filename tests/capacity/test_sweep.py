"""Planning, running and writing sweeps on a tiny M/M/c pool (fast: seconds of sim time)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from ragstress.capacity import parse_set, plan_points, run_point, run_sweep, write_sweep
from ragstress.capacity.sweep import COLUMNS, SweepPoint, columns, config_label
from ragstress.config import ConfigError, Profile, Scenario
from tests.builders import mmc_profile, poisson_scenario

STAGE_COLUMNS = ["work_wait_mean_s", "work_service_mean_s", "work_utilisation", "work_mean_queue"]

# One pool stage: c = 2 servers, exponential service with mean 0.1 s → capacity 20 req/s.
PROFILE = mmc_profile(servers=2, mean_s=0.1)
SCENARIO = poisson_scenario(duration_s=20, warmup_s=2, seed=11, slo={"latency_s": {"p95": 0.5}})


def _canon(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN ≠ NaN; compare rows with NaN as None (and everything else exactly)."""
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in rows
    ]


def test_plan_is_the_product_of_configs_rates_and_replications_in_order() -> None:
    overrides = [
        parse_set("stages.work.replicas=1,2"),
        parse_set("scenario.requests.top_k=3,5,7"),
    ]
    points = plan_points(SCENARIO, PROFILE, [4.0, 8.0], overrides, replications=2, seed=100)
    assert len(points) == 2 * 3 * 2 * 2
    first, second, third = points[0], points[1], points[2]
    assert first == SweepPoint(
        "work.replicas=1 scenario.requests.top_k=3",
        {"stages.work.replicas": 1, "scenario.requests.top_k": 3},
        4.0,
        0,
        100,
    )
    assert (second.rate_rps, second.replication, second.seed) == (4.0, 1, 101)
    assert (third.rate_rps, third.replication, third.seed) == (8.0, 0, 100)
    # the last --set varies fastest among configurations, the first slowest
    assert [p.overrides["scenario.requests.top_k"] for p in points[::4]] == [3, 5, 7] * 2
    assert [p.overrides["stages.work.replicas"] for p in points[::12]] == [1, 2]
    assert {p.seed for p in points} == {100, 101}


def test_plan_defaults_to_the_scenario_seed_and_a_baseline_config() -> None:
    points = plan_points(SCENARIO, PROFILE, [5.0], replications=3)
    assert [(p.config, p.seed) for p in points] == [
        ("baseline", 11),
        ("baseline", 12),
        ("baseline", 13),
    ]


def test_plan_validates_every_configuration_before_running() -> None:
    with pytest.raises(ConfigError, match=r"--set stages\.work\.replicas=0: input should be"):
        plan_points(SCENARIO, PROFILE, [5.0], [parse_set("stages.work.replicas=2,0")])
    with pytest.raises(ConfigError, match="given twice"):
        plan_points(SCENARIO, PROFILE, [5.0], [parse_set("stages.work.replicas=2")] * 2)
    with pytest.raises(ConfigError, match="--replications"):
        plan_points(SCENARIO, PROFILE, [5.0], replications=0)


def test_config_label() -> None:
    assert config_label({}) == "baseline"
    assert config_label({"stages.generate.replicas": 4}) == "generate.replicas=4"
    assert config_label({"scenario.requests.locale": "de_DE", "stages.a.b": True}) == (
        "scenario.requests.locale=de_DE a.b=true"
    )


def test_run_point_returns_one_flat_row() -> None:
    (point,) = plan_points(SCENARIO, PROFILE, [8.0], [parse_set("stages.work.replicas=2")])
    row = run_point(point, SCENARIO, PROFILE)
    assert list(row) == columns(["stages.work.replicas"], ["work"])
    assert list(row)[-4:] == [
        "work_wait_mean_s",
        "work_service_mean_s",
        "work_utilisation",
        "work_mean_queue",
    ]
    assert row["config"] == "work.replicas=2"
    assert row["stages.work.replicas"] == 2
    assert (row["rate_rps"], row["replication"], row["seed"]) == (8.0, 0, 11)
    # 18 s of window at 8 req/s: about 144 requests
    assert 100 < row["requests"] < 200
    assert row["offered_rps"] == pytest.approx(8.0, rel=0.25)
    assert row["error_rate"] == 0.0
    assert row["latency_p95_ci_low_s"] <= row["latency_p95_s"] <= row["latency_p95_ci_high_s"]
    assert row["latency_p50_s"] < row["latency_p95_s"] < row["latency_p99_s"]
    assert isinstance(row["slo_met"], bool)
    assert row["slo_met"] == (row["slo_ratio"] <= 1.0)
    # 8 req/s on 2 servers of 10 req/s each: utilisation 0.4; the profile sets no prices
    assert row["work_utilisation"] == pytest.approx(0.4, abs=0.12)
    assert row["work_service_mean_s"] > 0
    assert row["cost_usd_per_hour"] == 0.0


def test_serial_and_parallel_give_identical_rows_in_point_order() -> None:
    overrides = [parse_set("stages.work.replicas=1,2")]
    points = plan_points(SCENARIO, PROFILE, [6.0, 12.0, 3.0], overrides, replications=2)
    seen: list[float] = []
    serial = run_sweep(points, SCENARIO, PROFILE, workers=1, progress=seen.append)
    parallel = run_sweep(points, SCENARIO, PROFILE, workers=2)
    assert _canon(serial) == _canon(parallel)
    assert len(serial) == len(points) == 12
    assert [(r["config"], r["rate_rps"], r["seed"]) for r in serial] == [
        (p.config, p.rate_rps, p.seed) for p in points
    ]
    assert seen[-1] == 1.0
    assert seen == sorted(seen)
    # replications differ (different seeds), so the comparison above is not vacuous
    assert serial[0]["latency_p95_s"] != serial[1]["latency_p95_s"]


def test_throughput_and_p95_latency_rise_with_rate_on_an_mmc_pool() -> None:
    # utilisation 0.2, 0.6, 0.9 of the 20 req/s capacity: M/M/2 theory puts p95 near
    # 0.31 s, 0.5 s and 1.4 s, far apart compared with the noise of two simulated minutes
    rates = [4.0, 12.0, 18.0]
    longer = SCENARIO.model_copy(update={"duration_s": 120.0})
    rows = run_sweep(plan_points(longer, PROFILE, rates), longer, PROFILE, workers=1)
    throughput = [r["throughput_rps"] for r in rows]
    p95 = [r["latency_p95_s"] for r in rows]
    assert throughput == sorted(throughput)
    assert throughput[-1] > 4 * throughput[0]
    assert p95 == sorted(p95)
    assert p95[-1] > 2.5 * p95[0]  # near saturation, queueing dominates
    assert rows[0]["slo_met"]
    assert not rows[-1]["slo_met"]


def test_write_sweep_writes_csv_and_inputs(tmp_path: Path) -> None:
    overrides = [parse_set("stages.work.replicas=1,2")]
    points = plan_points(SCENARIO, PROFILE, [4.0, 8.0], overrides, seed=7)
    rows = run_sweep(points, SCENARIO, PROFILE, workers=1)
    rows[0] = {**rows[0], "latency_p99_ci_low_s": math.nan}  # NaN → empty cell
    out = write_sweep(
        tmp_path / "sweep",
        rows,
        scenario=SCENARIO,
        profile=PROFILE,
        rates=[4.0, 8.0],
        overrides=overrides,
        replications=1,
        seed=7,
    )
    with (out / "sweep.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4
    assert list(table[0]) == ["config", "stages.work.replicas", *COLUMNS[1:], *STAGE_COLUMNS]
    assert [r["stages.work.replicas"] for r in table] == ["1", "1", "2", "2"]
    assert table[0]["latency_p99_ci_low_s"] == ""
    assert float(table[3]["latency_p95_s"]) == rows[3]["latency_p95_s"]  # full precision
    inputs = json.loads((out / "sweep.json").read_text())
    assert inputs["rates"] == [4.0, 8.0]
    assert inputs["overrides"] == [{"key": "stages.work.replicas", "values": [1, 2]}]
    assert (inputs["replications"], inputs["seed"]) == (1, 7)
    assert Scenario.model_validate(inputs["scenario"]) == SCENARIO
    assert Profile.model_validate(inputs["profile"]) == PROFILE
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
