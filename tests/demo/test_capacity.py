"""The demo's capacity figure without the stack: the measured bracket's search on a fake
probe, the document's error and verdict, the report section, and the model's search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ragstress.api import simulate_scenario
from ragstress.config import load_profile, load_scenario
from ragstress.demo.capacity import MeasuredCapacity, capacity_document, write_capacity_report
from ragstress.demo.loop import (
    BASE_SCENARIO,
    _measure_capacity,
    _scenario,
    level_seconds,
    predict_capacity,
)
from tests.builders import REFERENCE_PROFILE


def _probe_for(true_capacity: float) -> tuple[list[float], object]:
    asked: list[float] = []

    def probe(rps: float) -> float:
        asked.append(round(rps, 3))
        return rps / true_capacity  # crosses 1 exactly at the true capacity

    return asked, probe


def test_the_bracket_closes_around_a_right_prediction() -> None:
    asked, probe = _probe_for(8.2)
    ratios = {0.8: 0.1, 3.2: 0.4, 5.6: 0.7, 7.2: 0.9}  # the load levels, all held
    found = _measure_capacity(8.0, dict(ratios), probe, budget=3)  # type: ignore[arg-type]
    # ×0.95 = 7.6 holds, ×1.05 = 8.4 fails; one bisection at √(7.6·8.4) = 7.99 holds
    assert asked == [7.6, 8.4, 7.99]
    assert (found.low_rps, found.high_rps) == (7.99, 8.4)
    assert found.estimate_rps == pytest.approx(math.sqrt(7.99 * 8.4))
    assert found.low_rps <= 8.2 < found.high_rps


def test_the_bracket_widens_when_the_prediction_is_far_off() -> None:
    asked, probe = _probe_for(11.0)  # the stack holds far more than predicted
    found = _measure_capacity(8.0, {}, probe, budget=5)  # type: ignore[arg-type]
    # widened twice, then one bisection of [9.66, 11.109)
    assert asked == [7.6, 8.4, 9.66, 11.109, 10.359]
    assert (found.low_rps, found.high_rps) == (10.359, 11.109)

    asked, probe = _probe_for(4.0)  # far less: the lowest probe fails, widen downward
    found = _measure_capacity(8.0, {}, probe, budget=4)  # type: ignore[arg-type]
    assert asked == [7.6, 8.4, 6.609, 5.747]
    assert found.low_rps is None
    assert found.high_rps == 5.747
    assert "failed at every measured rate" in found.describe()


def test_the_probe_budget_bounds_the_search() -> None:
    asked, probe = _probe_for(11.0)
    found = _measure_capacity(8.0, {}, probe, budget=3)  # type: ignore[arg-type]
    assert asked == [7.6, 8.4, 9.66]  # the bracket stays open: the budget is spent
    assert found.high_rps is None
    assert "held at every measured rate, up to 9.66" in found.describe()


def test_document_reports_the_signed_error_and_the_verdict(tmp_path: Path) -> None:
    measured = MeasuredCapacity(7.6, 8.4, {7.6: 0.95, 8.4: 1.4})
    doc = capacity_document(8.5, None, measured, tolerance=0.05, predicted_ratios={8.4: 1.1})
    est = math.sqrt(7.6 * 8.4)
    assert doc["rel_error"] == pytest.approx((8.5 - est) / est)
    assert doc["within"] is False  # +6.6 %
    assert doc["measured"]["probes"][1] == {
        "rate_rps": 8.4,
        "slo_ratio": 1.4,
        "met": False,
        "predicted_slo_ratio": 1.1,
    }
    close = capacity_document(8.1, None, measured, tolerance=0.05)
    assert close["within"] is True
    open_ended = capacity_document(
        8.1, None, MeasuredCapacity(9.0, None, {9.0: 0.8}), tolerance=0.05
    )
    assert open_ended["within"] is False
    assert open_ended["rel_error"] is None
    assert "held at every measured rate" in open_ended["note"]
    json.dumps(doc)  # JSON-ready

    (tmp_path / "validation.md").write_text("# validation\n")
    (tmp_path / "validation.html").write_text("<html><body><h1>v</h1></body></html>")
    written = write_capacity_report(doc, tmp_path)
    assert (tmp_path / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    assert tmp_path / "capacity.svg" in written
    md = (tmp_path / "validation.md").read_text()
    assert "## Maximum sustainable rate" in md
    assert "+6.38%" in md
    assert "MISS" in md
    html = (tmp_path / "validation.html").read_text()
    assert html.index("Maximum sustainable rate") < html.index("</body>")
    assert "data:image/png;base64," in html


def test_the_models_search_brackets_its_own_crossing() -> None:
    base = load_scenario(BASE_SCENARIO)
    profile = load_profile(REFERENCE_PROFILE)
    capacity = predict_capacity(base, profile, seconds=30, seed=5)
    rate = capacity.max_rate_rps
    assert rate > 0
    assert capacity.high_rps is not None
    assert (capacity.high_rps - capacity.low_rps) / capacity.low_rps <= 0.02 + 1e-9
    held = simulate_scenario(_scenario(base, name="x", rps=0.8 * rate, seconds=30, seed=5), profile)
    assert held.summary["slo_ratio"] <= 1.0
    missed = simulate_scenario(
        _scenario(base, name="x", rps=1.3 * rate, seconds=30, seed=5), profile
    )
    assert missed.summary["slo_ratio"] > 1.0


def test_a_light_level_runs_until_it_has_enough_requests() -> None:
    base = load_scenario(BASE_SCENARIO)
    # 40 s runs keep 10 s of warm-up: at 3 req/s 90 requests follow it, at 0.75 only 22
    assert level_seconds(base, 3.0, 40, 40) == 40
    assert level_seconds(base, 0.75, 40, 40) == 64  # ⌈10 + 40 / 0.75⌉
    assert level_seconds(base, 0.75, 40, 0) == 40
