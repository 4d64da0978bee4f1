"""The control API and its synchronous client: load, add, remove, list, clear, counters,
metrics; refused plans change nothing and say why; faults expire when nobody clears them;
a fresh proxy has none. Property tests for plan validation and round trips."""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from ragstress.chaos import ChaosClient, ChaosError
from ragstress.chaos.faults import ProxyFault
from ragstress.config.faults import Fault
from tests.chaos.helpers import Background, Rig, in_thread, rig

STAGES = ("embed", "generate")
_SCENARIO_FAULT: TypeAdapter[Fault] = TypeAdapter(Fault)
_PROXY_FAULT: TypeAdapter[ProxyFault] = TypeAdapter(ProxyFault)


@pytest.fixture(scope="module")
def bg() -> Iterator[Background[Rig]]:
    with in_thread(lambda: rig(STAGES)) as background:
        yield background


@pytest.fixture
def client(bg: Background[Rig]) -> Iterator[ChaosClient]:
    c = ChaosClient(bg.value.control)
    c.clear()
    yield c
    c.clear()


def _post(url: str, body: object = None) -> int:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _error(stage: str = "generate", start: float = 0, end: float = 60, **kw: Any) -> dict[str, Any]:
    return {"kind": "error", "stage": stage, "start_s": start, "end_s": end, "status": 503, **kw}


def test_scenario_faults_load_as_they_are(client: ChaosClient, bg: Background[Rig]) -> None:
    faults = [
        _SCENARIO_FAULT.validate_python(_error()),
        _SCENARIO_FAULT.validate_python(
            {"kind": "hang", "stage": "embed", "start_s": 30, "end_s": 40, "percent": 5}
        ),
    ]
    start = time.time()
    entries = client.load_plan(faults, start)
    assert [e["id"] for e in entries] == [e["fault"]["id"] for e in entries]
    assert entries[0]["start_epoch"] == start
    assert entries[0]["end_epoch"] == start + 60
    assert [e["active"] for e in client.faults()] == [True, False]
    assert [e["kind"] for e in client.active()] == ["error"]
    url = bg.value.proxy.listen_urls["generate"] + "/v1/chat/completions"
    assert _post(url) == 503
    assert client.counters()["injected"]["generate"] == {"error": 1}


def test_add_remove_and_clear(client: ChaosClient) -> None:
    client.load_plan([_error()], time.time())
    fid = client.add(_error(stage="embed", id="mine"), time.time())
    assert fid == "mine"
    assert sorted(e["stage"] for e in client.active()) == ["embed", "generate"]
    assert client.remove("mine") is True
    assert client.remove("mine") is False
    first = client.faults()[0]["id"]
    with pytest.raises(ChaosError, match="already in use"):
        client.add(_error(id=first), time.time())
    assert client.clear() == 1
    assert client.faults() == []
    assert client.clear() == 0


def test_applied_clears_even_on_an_error(client: ChaosClient) -> None:
    def interrupted_run() -> None:
        with client.applied([_error()], time.time()):
            assert len(client.active()) == 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_run()
    assert client.faults() == []


def test_a_refused_plan_changes_nothing(client: ChaosClient) -> None:
    client.load_plan([_error()], time.time())
    before = client.faults()
    with pytest.raises(ChaosError) as info:
        client.load_plan([_error(), _error(stage="rerank"), _error(start=5, end=5)], time.time())
    assert info.value.status == 400
    # pydantic refuses the bad window first; the table's checks never see the plan
    assert info.value.problems == ["faults[2].end_s: end_s must be greater than start_s (5)"]
    assert client.faults() == before


def test_problems_are_listed_one_per_line(client: ChaosClient) -> None:
    with pytest.raises(ChaosError) as info:
        client.load_plan([_error(stage="rerank"), _error(end=0.001)], 1.0)
    assert info.value.problems[0] == (
        "faults[0] (error): unknown stage 'rerank' (allowed: embed, generate)"
    )
    ended = [p for p in info.value.problems if "its window ended at" in p]
    assert [p[:18] for p in ended] == ["faults[0] (error):", "faults[1] (error):"]
    assert ended[1].endswith("run_start_epoch is 1970-01-01T00:00:01Z (1.000)")
    with pytest.raises(ChaosError, match=r"faults\[0\]\.colour: unknown key"):
        client.load_plan([{**_error(), "colour": "red"}], time.time())
    with pytest.raises(ChaosError, match=r"faults\[0\]\.latency: high must be at least low \(2\)"):
        client.load_plan(
            [
                {
                    "kind": "added_latency",
                    "stage": "embed",
                    "start_s": 0,
                    "end_s": 1,
                    "latency": {"kind": "uniform", "low": 2, "high": 1},
                }
            ],
            time.time(),
        )


def test_faults_expire_when_the_controller_dies(client: ChaosClient, bg: Background[Rig]) -> None:
    """Load a plan and never clear it (the driver was killed): the faults end by themselves."""
    start = time.time()
    client.load_plan([_error(end=0.4), _error(stage="embed", end=0.4)], start)
    url = bg.value.proxy.listen_urls["generate"] + "/v1/chat/completions"
    assert _post(url) == 503
    time.sleep(max(0.0, start + 0.45 - time.time()))
    assert client.active() == []
    assert client.faults() == []
    assert _post(url) == 200


def test_a_fresh_proxy_has_no_faults(client: ChaosClient, bg: Background[Rig]) -> None:
    client.load_plan([_error()], time.time())
    with in_thread(lambda: rig(STAGES)) as fresh:
        other = ChaosClient(fresh.value.control)
        assert other.faults() == []
        assert other.counters()["injected"] == {"embed": {}, "generate": {}}


def test_listings_counters_and_metrics(client: ChaosClient, bg: Background[Rig]) -> None:
    client.load_plan([_error(id="e1")], time.time())
    url = bg.value.proxy.listen_urls["generate"] + "/v1/chat/completions"
    _post(url)
    assert client.listeners()["generate"]["listen"] == bg.value.proxy.listen_urls["generate"]
    with urllib.request.urlopen(bg.value.control + "/faults/e1", timeout=5) as resp:
        assert json.loads(resp.read())["id"] == "e1"
    with urllib.request.urlopen(bg.value.control + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'ragstress_chaos_active_faults{stage="generate"} 1.0' in text
    assert 'ragstress_chaos_faults_injected_total{kind="error",stage="generate"}' in text
    assert "ragstress_chaos_requests_total" in text
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bg.value.control + "/nope", timeout=5)
    assert info.value.code == 404
    assert "GET /nope" in json.loads(info.value.read())["error"]["message"]


def test_unreachable_control_api_is_one_line() -> None:
    with pytest.raises(ChaosError, match="not reachable"):
        ChaosClient("http://127.0.0.1:9", timeout_s=1).clear()


# --- properties ----------------------------------------------------------------------------

_KINDS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "error": st.fixed_dictionaries(
        {"status": st.sampled_from([408, 429, 500, 502, 503, 504, 529])},
        optional={
            "retry_after_s": st.floats(0, 200),
            "after_service": st.booleans(),
            "style": st.sampled_from(["openai", "anthropic"]),
            "x_should_retry": st.booleans(),
        },
    ),
    "added_latency": st.fixed_dictionaries(
        {
            "latency": st.one_of(
                st.builds(lambda v: {"kind": "deterministic", "value": v}, st.floats(0, 10)),
                st.builds(
                    lambda m, c: {"kind": "lognormal", "mean": m, "cv": c},
                    st.floats(0.01, 5),
                    st.floats(0.1, 3),
                ),
            )
        },
        optional={"on": st.sampled_from(["request", "first_byte"])},
    ),
    "latency_multiplier": st.fixed_dictionaries({"factor": st.floats(1, 100)}),
    "outage": st.fixed_dictionaries({}, optional={"respond": st.sampled_from(["reset", "503"])}),
    "hang": st.just({}),
    "stream_stall": st.fixed_dictionaries(
        {"after_tokens": st.integers(0, 1000), "stall_s": st.floats(0.001, 100)}
    ),
    "stream_truncate": st.fixed_dictionaries({"after_tokens": st.integers(0, 1000)}),
    "stream_error": st.fixed_dictionaries({"after_tokens": st.integers(0, 1000)}),
    "bandwidth": st.fixed_dictionaries({"bytes_per_s": st.floats(1, 1e9)}),
}


@st.composite
def valid_fault(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(_KINDS)))
    start = draw(st.floats(0, 1000))
    length = draw(st.floats(5, 1000))  # long enough to outlast a slow load on a busy machine
    assume(start + length > start)
    fault = {
        "kind": kind,
        "stage": draw(st.sampled_from(STAGES)),
        "start_s": start,
        "end_s": start + length,
        "percent": draw(st.floats(0, 100)),
        **draw(_KINDS[kind]),
    }
    if draw(st.booleans()):
        fault["match"] = {"path_prefix": "/v1"}
    return fault


def _normal(fault: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _PROXY_FAULT.validate_python(fault).model_dump(
        mode="json", exclude_none=True
    )
    out.pop("id", None)
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(valid_fault(), min_size=1, max_size=6))
def test_valid_plans_round_trip(client: ChaosClient, faults: list[dict[str, Any]]) -> None:
    start = time.time()
    entries = client.load_plan(faults, start)
    listed = client.faults()
    assert [e["id"] for e in listed] == [e["id"] for e in entries]
    assert [{k: v for k, v in e["fault"].items() if k != "id"} for e in listed] == [
        _normal(f) for f in faults
    ]
    for entry, fault in zip(listed, faults, strict=True):
        assert entry["start_epoch"] == start + fault["start_s"]
        assert entry["end_epoch"] == start + fault["end_s"]
        assert entry["run_start_epoch"] == start
    # and the listing loads again as it is
    again = client.load_plan([e["fault"] for e in listed], start)
    assert [e["fault"] for e in again] == [e["fault"] for e in listed]


BAD = st.sampled_from(["window", "percent_high", "percent_low", "stage", "nan"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(valid_fault(), min_size=1, max_size=4), st.data(), BAD)
def test_bad_plans_are_refused_with_a_clear_message(
    client: ChaosClient, faults: list[dict[str, Any]], data: st.DataObject, bad: str
) -> None:
    client.load_plan([_error(id="keep")], time.time())
    i = data.draw(st.integers(0, len(faults) - 1))
    fault = dict(faults[i])
    if bad == "window":
        fault["end_s"] = data.draw(st.floats(0, fault["start_s"]))
        expected = f"faults[{i}].end_s: end_s must be greater than start_s"
    elif bad == "percent_high":
        fault["percent"] = data.draw(st.floats(100, 1e6, exclude_min=True))
        expected = f"faults[{i}].percent: Input should be less than or equal to 100"
    elif bad == "percent_low":
        fault["percent"] = data.draw(st.floats(-1e6, 0, exclude_max=True))
        expected = f"faults[{i}].percent: Input should be greater than or equal to 0"
    elif bad == "nan":
        fault["percent"] = math.nan
        expected = f"faults[{i}].percent: Input should be a finite number"
    else:
        fault["stage"] = data.draw(st.sampled_from(["rerank", "llm", "retrieve"]))
        expected = (
            f"faults[{i}] ({fault['kind']}): unknown stage {fault['stage']!r} "
            "(allowed: embed, generate)"
        )
    plan = [*faults[:i], fault, *faults[i + 1 :]]
    with pytest.raises(ChaosError) as info:
        client.load_plan(plan, time.time())
    assert info.value.status == 400
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    assert [e["id"] for e in client.faults()] == ["keep"]
